//! The wrapped command: spawned in its own process group while this replica leads, stopped
//! (signal, grace, SIGKILL of the whole group, reap) when it must not run any more.
//!
//! Invariants:
//! - The child is the leader of a new process group; every signal goes to the group, so a
//!   `sh -c` wrapper's grandchildren are stopped with it.
//! - [`Supervisor::stop`] returns only when the group leader is reaped and no process of the
//!   group is left (or after a bounded wait past the SIGKILL, which is logged).
//! - The child gets SIGKILL if electd dies (`PR_SET_PDEATHSIG`), and the [`watchdog`] process
//!   kills the whole group if electd dies or stops extending its deadline.
//! - Processes that left the group (`setsid`, a daemonising fork) are stopped with it: electd
//!   is a child subreaper, and every stop or exit also kills the command's descendants and the
//!   orphans electd adopted, and reaps them at once ([`tree`]).

pub mod tree;
pub mod watchdog;

use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;
use std::time::Duration;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};
use tokio::process::{Child, Command};
use tokio::time::{Instant, sleep, timeout};
use tracing::{debug, info, warn};

#[derive(Debug, thiserror::Error)]
pub enum SupervisorError {
    #[error("cannot start {program:?}: {source}")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
}

/// What to run and how to stop it.
#[derive(Debug, Clone)]
pub struct ChildSpec {
    pub argv: Vec<String>,
    pub stop_signal: Signal,
    pub stop_grace: Duration,
}

/// How a child ended, as shown on `/role` and logged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitInfo {
    /// The exit code, or `128 + signal` when killed by a signal (shell convention).
    pub code: i32,
    pub signal: Option<i32>,
}

impl ExitInfo {
    pub fn from_status(status: ExitStatus) -> ExitInfo {
        match (status.code(), status.signal()) {
            (Some(code), _) => ExitInfo { code, signal: None },
            (None, Some(sig)) => ExitInfo {
                code: 128 + sig,
                signal: Some(sig),
            },
            (None, None) => ExitInfo {
                code: 255,
                signal: None,
            },
        }
    }

    pub fn success(&self) -> bool {
        self.code == 0
    }
}

impl std::fmt::Display for ExitInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.signal {
            Some(sig) => {
                let name = Signal::try_from(sig).map(|s| s.as_str()).unwrap_or("?");
                write!(f, "killed by {name} (code {})", self.code)
            }
            None => write!(f, "exit code {}", self.code),
        }
    }
}

/// A running child.
struct Running {
    child: Child,
    pgid: Pid,
    started: Instant,
}

/// Starts, stops and reaps one child at a time.
pub struct Supervisor {
    spec: ChildSpec,
    running: Option<Running>,
    watchdog: Option<watchdog::WatchdogHandle>,
}

impl Supervisor {
    pub fn new(spec: ChildSpec, watchdog: Option<watchdog::WatchdogHandle>) -> Supervisor {
        Supervisor {
            spec,
            running: None,
            watchdog,
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.running.as_ref().and_then(|r| r.child.id())
    }

    pub fn is_running(&self) -> bool {
        self.running.is_some()
    }

    /// Tell the watchdog the latest moment the child may still run (extended after each
    /// successful keepalive), and which of its processes left its group: the watchdog must
    /// learn them while electd lives (once electd is dead, an escapee's parent may be gone and
    /// nothing ties it to the command any more).
    pub fn set_kill_deadline(&mut self, deadline: Instant) {
        if let (Some(w), Some(r)) = (self.watchdog.as_ref(), self.running.as_ref()) {
            let mut out = tree::escapees_with_start(r.pgid);
            out.extend(tree::adopted_with_start());
            w.arm(Some(r.pgid), deadline, out);
        }
    }

    /// Spawn the child with `env` added to electd's environment, in a new process group.
    pub fn start(&mut self, env: &[(String, String)]) -> Result<u32, SupervisorError> {
        let (program, args) = self
            .spec
            .argv
            .split_first()
            .expect("invariant: a ChildSpec has a program");
        let mut cmd = Command::new(program);
        cmd.args(args)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .process_group(0)
            .kill_on_drop(false);
        // With a watchdog, the command is only stopped (SIGSTOP) when electd dies: it does no
        // work, and its tree stays intact — its children still its children — until the
        // watchdog, which walks the tree, has killed all of it. (SIGKILL would orphan a
        // `setsid` escapee at once, out of reach.) Without one, it is killed.
        let on_death = match self.watchdog {
            Some(_) => Signal::SIGSTOP,
            None => Signal::SIGKILL,
        };
        on_parent_death(&mut cmd, on_death);
        let child = cmd.spawn().map_err(|source| SupervisorError::Spawn {
            program: program.clone(),
            source,
        })?;
        let pid = child
            .id()
            .expect("invariant: a just-spawned child has a pid");
        tree::own::register(pid);
        let pgid = Pid::from_raw(pid as i32);
        self.running = Some(Running {
            child,
            pgid,
            started: Instant::now(),
        });
        Ok(pid)
    }

    /// Wait for the child to exit on its own. Pending forever when none runs (for `select!`).
    /// Once it returns, the group's leftovers have been killed and the child is reaped.
    pub async fn wait(&mut self) -> (ExitInfo, Duration) {
        let Some(running) = self.running.as_mut() else {
            return std::future::pending().await;
        };
        let status = running.child.wait().await;
        let running = self.running.take().expect("invariant: checked above");
        tree::own::unregister(running.pgid.as_raw() as u32);
        let ran = running.started.elapsed();
        // The leader exited; anything it left, in its group or out of it, must not keep working.
        kill_group(running.pgid, Signal::SIGKILL);
        tree::signal_all(&tree::adopted(), Signal::SIGKILL);
        wait_group_gone(running.pgid, Duration::from_secs(1)).await;
        if let Some(w) = self.watchdog.as_ref() {
            w.disarm();
        }
        let info = match status {
            Ok(s) => ExitInfo::from_status(s),
            Err(e) => {
                warn!(error = %e, "waiting for the child failed");
                ExitInfo {
                    code: 255,
                    signal: None,
                }
            }
        };
        (info, ran)
    }

    /// Stop the child: stop signal to the group, wait the grace, SIGKILL the group, reap.
    /// Returns how it ended, or `None` if nothing was running.
    pub async fn stop(&mut self) -> Option<ExitInfo> {
        self.end(self.spec.stop_signal, self.spec.stop_grace).await
    }

    /// Kill the child at once: SIGKILL to its group and every process of its tree, reap.
    pub async fn kill(&mut self) -> Option<ExitInfo> {
        self.end(Signal::SIGKILL, Duration::ZERO).await
    }

    async fn end(&mut self, signal: Signal, grace: Duration) -> Option<ExitInfo> {
        let mut running = self.running.take()?;
        let pid = running.child.id();
        info!(pid, signal = %signal, grace = ?grace, "stopping child");
        // The group first: the walk over /proc costs a millisecond or more on a busy host, and
        // the command should not wait for it. Then the processes of its tree that left the
        // group, while the tree is still (nearly) intact; one whose parent has already exited
        // was reparented to electd (a subreaper) and is found among the adopted below.
        kill_group(running.pgid, signal);
        debug!(pgid = running.pgid.as_raw(), "stop signal sent");
        let tree = tree::escapees(running.pgid);
        tree::signal_all(&tree, signal);
        let status = match timeout(grace, running.child.wait()).await {
            Ok(s) => s.ok(),
            Err(_) => {
                if !grace.is_zero() {
                    warn!(pid, grace = ?grace, "child did not stop within the grace; killing its process group");
                }
                kill_group(running.pgid, Signal::SIGKILL);
                running.child.wait().await.ok()
            }
        };
        tree::own::unregister(running.pgid.as_raw() as u32);
        // The group leader is gone; make sure its group and every escaped process are too.
        kill_group(running.pgid, Signal::SIGKILL);
        tree::signal_all(&tree, Signal::SIGKILL);
        tree::signal_all(&tree::adopted(), Signal::SIGKILL);
        wait_group_gone(running.pgid, Duration::from_secs(1)).await;
        if let Some(w) = self.watchdog.as_ref() {
            w.disarm();
        }
        let info = status.map(ExitInfo::from_status);
        if let Some(i) = info {
            info!(pid, status = %i, "child stopped");
        }
        info
    }

    /// Forward a signal to the child's process group.
    pub fn forward(&self, signal: Signal) {
        if let Some(r) = &self.running {
            info!(signal = %signal, pgid = r.pgid.as_raw(), "forwarding signal to child");
            kill_group(r.pgid, signal);
        }
    }
}

fn kill_group(pgid: Pid, signal: Signal) {
    // ESRCH (group already empty) is the expected outcome late in a stop.
    let _ = killpg(pgid, signal);
}

/// Poll until no process is left in the group (signal 0 fails with ESRCH) and every adopted
/// orphan is reaped, up to `limit`. Orphans of the group are reparented to electd (a child
/// subreaper), so their zombies are reaped here, at once.
async fn wait_group_gone(pgid: Pid, limit: Duration) {
    let until = Instant::now() + limit;
    while tree::reap_adopted() > 0 || killpg(pgid, None).is_ok() {
        if Instant::now() >= until {
            warn!(
                pgid = pgid.as_raw(),
                "processes of the child's group are still present after SIGKILL"
            );
            return;
        }
        sleep(Duration::from_millis(10)).await;
    }
}

/// Make a process electd starts (the command, a health check, a hook) get SIGKILL when electd
/// dies, even by SIGKILL (`PR_SET_PDEATHSIG`; processes it starts in turn are the watchdog's and
/// the subreaper's business).
pub fn die_with_electd(cmd: &mut Command) {
    on_parent_death(cmd, Signal::SIGKILL);
}

/// Have the process `cmd` starts get `signal` when electd dies (`PR_SET_PDEATHSIG`).
fn on_parent_death(cmd: &mut Command, signal: Signal) {
    let parent = nix::unistd::getpid();
    // SAFETY: only async-signal-safe calls (prctl, getppid) run between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            nix::sys::prctl::set_pdeathsig(signal)?;
            if nix::unistd::getppid() != parent {
                // electd died between fork and prctl.
                return Err(std::io::Error::other("parent died"));
            }
            Ok(())
        });
    }
}
