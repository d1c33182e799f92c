//! The freeze watchdog: a tiny separate process that holds the commands' kill deadlines, and
//! hands leadership over when electd dies.
//!
//! electd cannot stop its command in time if electd itself is frozen (SIGSTOP, a paused VM, a
//! stuck runtime) or killed with SIGKILL (`PR_SET_PDEATHSIG` reaches only the direct child,
//! not a `sh -c` wrapper's grandchildren, and nothing reaches a process that left the group).
//! So at start electd re-executes itself as `<exe> __watchdog`, connected by a pipe on the
//! watchdog's stdin, and tells it, as JSON lines ([`Message`]), per election (a *slot*):
//!
//! - how to reach etcd (once: endpoints, TLS files, credentials — over the private pipe, never
//!   on a command line or in an environment);
//! - while it leads, its [`Handover`]: lease, candidate key, create revision, and the key's
//!   value with the clean-release mark;
//! - `arm`: the command's process group (none for a sidecar) and when it must be dead at the
//!   latest (extended after every successful keepalive), and the command's processes that left
//!   its group (`setsid`, a daemonising fork), with their start times;
//! - `disarm`: the command is gone or stopped by electd itself.
//!
//! **A frozen electd** (the deadline passes while the pipe is open): the watchdog kills the
//! command's group and every process of its tree, and disarms. It does not revoke: electd may
//! thaw at any moment, and its own role machine handles the passed deadline first.
//!
//! **A dead electd** (the pipe closes — electd exited or was killed; the pipe is close-on-exec,
//! so no other process holds it): the watchdog kills every armed command's whole tree (its
//! group, the processes electd reported, and every process whose environment names the term's
//! leader key), confirms nothing of it is alive, and — for a sidecar, once the last budget its
//! app can hold has run out (the armed deadline) — writes the clean-release mark into each
//! leading key and revokes the lease, within [`HANDOVER_WITHIN`]. The next leader then starts
//! at once instead of after the TTL. If etcd cannot be reached in time, the lease expires as it
//! would have. A clean exit of electd disarms and forgets every slot first.
//!
//! The watchdog sits in its own process group and ignores SIGINT/SIGHUP/SIGTERM so a terminal's
//! Ctrl-C or a stop signal aimed at electd does not take it down before electd has stopped the
//! command. CLOCK_MONOTONIC is system-wide, so both processes agree on deadlines.

use std::collections::BTreeMap;
use std::io::{BufRead, Write};
use std::process::{ChildStdin, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::sys::signal::{SigHandler, Signal, killpg, signal};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use tracing::warn;

use super::tree;
use crate::clock::{monotonic_ns, monotonic_ns_at};
use crate::config::EtcdSettings;
use crate::election::Handover;

/// The hidden argument that turns either binary into the watchdog.
pub const WATCHDOG_ARG: &str = "__watchdog";

/// How long the watchdog tries to hand over (mark, revoke) after electd died.
pub const HANDOVER_WITHIN: Duration = Duration::from_secs(3);

/// How long it waits for a killed command's processes to be gone.
const CONFIRM_WITHIN: Duration = Duration::from_secs(2);

/// One line from electd to its watchdog.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Message {
    /// How to reach etcd for a handover.
    Etcd(EtcdSettings),
    /// Slot `slot` leads (`Some`) or no longer does.
    Lead {
        slot: u32,
        handover: Option<Handover>,
    },
    /// Kill group `pgid` (a command's; none for a sidecar) and the processes `tree` (pid, start
    /// time) once CLOCK_MONOTONIC passes `kill_ns`, unless extended.
    Arm {
        slot: u32,
        pgid: Option<i32>,
        kill_ns: i64,
        tree: Vec<(i32, u64)>,
    },
    Disarm {
        slot: u32,
    },
}

/// What a slot is armed with: the command's process group (none for a sidecar), when it must
/// be dead (CLOCK_MONOTONIC ns), and its processes outside the group (pid, start time).
type Armed = (Option<i32>, i64, Vec<(i32, u64)>);

/// What electd last told the watchdog about one slot.
#[derive(Debug, Clone, Default, PartialEq)]
struct Slot {
    armed: Option<Armed>,
    lead: Option<Handover>,
}

/// A handover asked of the etcd helper, and where its outcome goes (how many keys marked).
type Job = (
    Vec<Handover>,
    std::sync::mpsc::Sender<Result<usize, String>>,
);

/// electd's end of the watchdog, shared by every slot's handle.
pub struct Watchdog {
    stdin: Option<ChildStdin>,
    process: std::process::Child,
    sent: BTreeMap<u32, Slot>,
}

/// One slot of the watchdog: an election's command (or app) and its term.
#[derive(Clone)]
pub struct WatchdogHandle {
    inner: Arc<Mutex<Watchdog>>,
    slot: u32,
}

impl Watchdog {
    /// Start the watchdog from this process's own executable; with `etcd`, it can hand over
    /// when this process dies.
    pub fn spawn(etcd: Option<&EtcdSettings>) -> std::io::Result<WatchdogHandle> {
        // /proc/self/exe, not the path it names: after a package upgrade replaced the binary
        // that path ends in " (deleted)", but the running executable can still be started.
        let exe = std::path::PathBuf::from("/proc/self/exe");
        let mut cmd = std::process::Command::new(exe);
        cmd.arg(WATCHDOG_ARG)
            .stdin(Stdio::piped())
            .stdout(Stdio::null());
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let mut process = cmd.spawn()?;
        super::tree::own::register(process.id());
        let stdin = process.stdin.take().expect("invariant: stdin was piped");
        let mut w = Watchdog {
            stdin: Some(stdin),
            process,
            sent: BTreeMap::new(),
        };
        if let Some(settings) = etcd {
            w.send(&Message::Etcd(settings.clone()));
        }
        Ok(WatchdogHandle {
            inner: Arc::new(Mutex::new(w)),
            slot: 0,
        })
    }

    fn send(&mut self, m: &Message) {
        let Some(stdin) = self.stdin.as_mut() else {
            return;
        };
        let mut line = serde_json::to_string(m).expect("invariant: watchdog messages serialise");
        line.push('\n');
        if let Err(e) = stdin.write_all(line.as_bytes()).and_then(|_| stdin.flush()) {
            warn!(error = %e, "watchdog pipe failed; the freeze watchdog is not protecting the command");
        }
    }

    /// Tell slot `slot`'s new state, if it changed.
    fn update(&mut self, slot: u32, f: impl FnOnce(&mut Slot)) {
        let old = self.sent.get(&slot).cloned().unwrap_or_default();
        let mut new = old.clone();
        f(&mut new);
        if new.lead != old.lead {
            self.send(&Message::Lead {
                slot,
                handover: new.lead.clone(),
            });
        }
        if new.armed != old.armed {
            match &new.armed {
                Some((pgid, kill_ns, tree)) => self.send(&Message::Arm {
                    slot,
                    pgid: *pgid,
                    kill_ns: *kill_ns,
                    tree: tree.clone(),
                }),
                None => self.send(&Message::Disarm { slot }),
            }
        }
        self.sent.insert(slot, new);
    }
}

impl WatchdogHandle {
    /// The same watchdog for slot `slot`.
    pub fn slot(&self, slot: u32) -> WatchdogHandle {
        WatchdogHandle {
            inner: self.inner.clone(),
            slot,
        }
    }

    pub fn pid(&self) -> u32 {
        self.lock().process.id()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Watchdog> {
        // A poisoned lock only means a panic elsewhere; what was sent is still valid.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Kill group `pgid` (if any) and the processes `tree` unless extended before `deadline`.
    pub fn arm(&self, pgid: Option<Pid>, deadline: Instant, tree: Vec<(i32, u64)>) {
        let kill_ns = monotonic_ns_at(deadline) as i64;
        self.lock().update(self.slot, |s| {
            s.armed = Some((pgid.map(|p| p.as_raw()), kill_ns, tree));
        });
    }

    /// Whether the slot is armed with a process group.
    pub fn armed_group(&self) -> bool {
        self.lock()
            .sent
            .get(&self.slot)
            .and_then(|s| s.armed.as_ref())
            .is_some_and(|(pgid, ..)| pgid.is_some())
    }

    pub fn disarm(&self) {
        self.lock().update(self.slot, |s| s.armed = None);
    }

    /// This slot leads under `handover` (or no longer leads).
    pub fn lead(&self, handover: Option<Handover>) {
        self.lock().update(self.slot, |s| s.lead = handover);
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        // A clean exit: forget every slot first, so closing the pipe ends the watchdog quietly;
        // reap it.
        let slots: Vec<u32> = self.sent.keys().copied().collect();
        for slot in slots {
            self.update(slot, |s| *s = Slot::default());
        }
        drop(self.stdin.take());
        let _ = self.process.wait();
    }
}

/// The watchdog process's main loop. Returns the exit code.
pub fn run_watchdog() -> i32 {
    for sig in [
        Signal::SIGINT,
        Signal::SIGHUP,
        Signal::SIGTERM,
        Signal::SIGPIPE,
    ] {
        // SAFETY: installing SIG_IGN has no handler code to be unsafe.
        unsafe {
            let _ = signal(sig, SigHandler::SigIgn);
        }
    }
    let (tx, rx) = std::sync::mpsc::channel::<Option<String>>();
    std::thread::spawn(move || {
        let stdin = std::io::stdin();
        for line in stdin.lock().lines() {
            match line {
                Ok(l) => {
                    if tx.send(Some(l)).is_err() {
                        return;
                    }
                }
                Err(_) => break,
            }
        }
        let _ = tx.send(None);
    });
    let mut slots: BTreeMap<u32, Slot> = BTreeMap::new();
    let mut etcd: Option<EtcdHelper> = None;
    loop {
        // Only a command has something to kill at its deadline; a sidecar's app stops itself.
        let next_kill = slots
            .values()
            .filter_map(|s| match &s.armed {
                Some((Some(_), at, _)) => Some(*at),
                _ => None,
            })
            .min();
        let wait = match next_kill {
            Some(at) => Duration::from_nanos((at as i128 - monotonic_ns()).max(0) as u64),
            None => Duration::from_secs(3600),
        };
        match rx.recv_timeout(wait) {
            Ok(Some(line)) => match serde_json::from_str::<Message>(&line) {
                Ok(Message::Etcd(settings)) => etcd = Some(EtcdHelper::start(settings)),
                Ok(Message::Lead { slot, handover }) => {
                    slots.entry(slot).or_default().lead = handover;
                }
                Ok(Message::Arm {
                    slot,
                    pgid,
                    kill_ns,
                    tree,
                }) => slots.entry(slot).or_default().armed = Some((pgid, kill_ns, tree)),
                Ok(Message::Disarm { slot }) => {
                    slots.entry(slot).or_default().armed = None;
                }
                Err(e) => eprintln!("electd watchdog: ignoring a message it cannot read: {e}"),
            },
            Ok(None) | Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                electd_died(&slots, etcd.as_ref());
                return 0;
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                let now = monotonic_ns();
                for s in slots.values_mut() {
                    if let Some((Some(pgid), at, tree)) = &s.armed
                        && now >= *at as i128
                    {
                        eprintln!(
                            "electd watchdog: electd did not extend the deadline (frozen?); killing process group {pgid} and its tree before the lease can expire"
                        );
                        kill_tree(*pgid, tree, s.lead.as_ref());
                        s.armed = None;
                    }
                }
            }
        }
    }
}

/// electd is gone: kill every armed command's tree, confirm it is gone, wait out a sidecar's
/// budget, then hand over every term that still leads.
fn electd_died(slots: &BTreeMap<u32, Slot>, etcd: Option<&EtcdHelper>) {
    let t0 = std::time::Instant::now();
    let mut handovers = Vec::new();
    let mut wait_until: Option<i64> = None;
    for (slot, s) in slots {
        let mut clean = true;
        match &s.armed {
            Some((Some(pgid), _, tree)) => {
                eprintln!(
                    "electd watchdog: {} electd exited; killing process group {pgid} and its tree",
                    humantime::format_rfc3339_micros(std::time::SystemTime::now())
                );
                clean = kill_tree(*pgid, tree, s.lead.as_ref());
                if !clean {
                    eprintln!(
                        "electd watchdog: processes of slot {slot}'s command survived SIGKILL; its lease is left to expire"
                    );
                }
            }
            // A sidecar: its app may act until the budget it was given, plus the grace, runs out.
            Some((None, at, _)) if s.lead.is_some() => {
                wait_until = Some(wait_until.map_or(*at, |w| w.max(*at)));
            }
            _ => {}
        }
        if clean && let Some(h) = &s.lead {
            handovers.push(h.clone());
        }
    }
    let (Some(etcd), false) = (etcd, handovers.is_empty()) else {
        return;
    };
    let killed = t0.elapsed();
    if let Some(at) = wait_until {
        let left = at as i128 - monotonic_ns();
        if left > 0 {
            std::thread::sleep(Duration::from_nanos(left as u64));
        }
    }
    let asked = std::time::Instant::now();
    match etcd.hand_over(handovers) {
        Ok(n) => eprintln!(
            "electd watchdog: electd exited while leading; released leadership ({n} term(s) marked, lease revoked): commands dead after {killed:?}, etcd answered in {:?}",
            asked.elapsed()
        ),
        Err(e) => eprintln!(
            "electd watchdog: could not release leadership ({e}); the lease expires after its TTL"
        ),
    }
}

/// SIGKILL to group `pgid`, to the reported processes of its tree (still the same processes:
/// their start times match) and their descendants, and to every process whose environment names
/// the term's leader key; true once none of them is alive (zombies count as gone), within
/// [`CONFIRM_WITHIN`].
fn kill_tree(pgid: i32, reported: &[(i32, u64)], lead: Option<&Handover>) -> bool {
    let marker = lead.map(|h| format!("{}={}", crate::election::LEADER_KEY_VAR, h.key));
    let until = std::time::Instant::now() + CONFIRM_WITHIN;
    loop {
        // The tree first, while it is intact (the command's root was only stopped when electd
        // died): killing the root first would orphan its children out of reach.
        let left = tree::command_tree(pgid, reported, marker.as_deref());
        if left.is_empty() {
            return true;
        }
        if std::time::Instant::now() >= until {
            return false;
        }
        tree::signal_all(&left, Signal::SIGKILL);
        let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// A thread with its own runtime and an etcd client made while electd lives, for the handover.
struct EtcdHelper {
    jobs: std::sync::mpsc::Sender<Job>,
}

impl EtcdHelper {
    fn start(settings: EtcdSettings) -> EtcdHelper {
        let (jobs, rx) = std::sync::mpsc::channel::<Job>();
        std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            let connect = || async {
                tokio::time::timeout(
                    HANDOVER_WITHIN,
                    crate::election::etcd::EtcdBackend::connect_settings(&settings),
                )
                .await
                .map_err(|_| "connecting to etcd timed out".to_string())?
                .map_err(|e| e.to_string())
            };
            // Connected (and authenticated) now, so a handover costs two requests.
            let mut backend = rt.block_on(connect()).ok();
            while let Ok((handovers, reply)) = rx.recv() {
                let r = rt.block_on(async {
                    tokio::time::timeout(HANDOVER_WITHIN, async {
                        let b = match backend.take() {
                            Some(b) => b,
                            None => connect().await?,
                        };
                        let mut marked = 0;
                        for h in &handovers {
                            if b.hand_over(h, HANDOVER_WITHIN)
                                .await
                                .map_err(|e| e.to_string())?
                            {
                                marked += 1;
                            }
                        }
                        backend = Some(b);
                        Ok::<_, String>(marked)
                    })
                    .await
                    .map_err(|_| format!("etcd did not answer within {HANDOVER_WITHIN:?}"))?
                });
                let _ = reply.send(r);
            }
        });
        EtcdHelper { jobs }
    }

    /// Mark and revoke every term; how many keys were marked.
    fn hand_over(&self, handovers: Vec<Handover>) -> Result<usize, String> {
        let (tx, rx) = std::sync::mpsc::channel();
        self.jobs
            .send((handovers, tx))
            .map_err(|_| "the etcd helper thread ended".to_string())?;
        rx.recv_timeout(HANDOVER_WITHIN * 3)
            .map_err(|_| "the etcd helper did not answer".to_string())?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip() {
        let m = Message::Arm {
            slot: 2,
            pgid: Some(41),
            kill_ns: 9_000_000_000,
            tree: vec![(42, 1234)],
        };
        let line = serde_json::to_string(&m).unwrap();
        let back = serde_json::to_string(&serde_json::from_str::<Message>(&line).unwrap()).unwrap();
        assert_eq!(back, line);
        let h = Handover {
            lease: 7,
            key: "e/7".into(),
            revision: 9,
            mark: "{\"id\":\"a\",\"released\":true}".into(),
        };
        let m = Message::Lead {
            slot: 0,
            handover: Some(h),
        };
        let line = serde_json::to_string(&m).unwrap();
        let back = serde_json::to_string(&serde_json::from_str::<Message>(&line).unwrap()).unwrap();
        assert_eq!(back, line);
    }
}
