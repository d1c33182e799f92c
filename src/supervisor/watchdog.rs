//! The freeze watchdog: a tiny separate process that holds the child group's kill deadline.
//!
//! electd cannot stop its child in time if electd itself is frozen (SIGSTOP, a paused VM, a
//! stuck runtime) or killed with SIGKILL (`PR_SET_PDEATHSIG` reaches only the direct child,
//! not a `sh -c` wrapper's grandchildren). So at start electd re-executes itself as
//! `<exe> __watchdog`, connected by a pipe on the watchdog's stdin, and tells it:
//!
//! - `arm PGID DEADLINE_NS` — kill process group PGID with SIGKILL once CLOCK_MONOTONIC passes
//!   DEADLINE_NS (extended after every successful keepalive);
//! - `disarm` — the group is gone or stopped by electd itself.
//!
//! When the pipe closes (electd exited or died) while armed, the watchdog kills the group at
//! once and exits. It sits in its own process group and ignores SIGINT/SIGHUP/SIGTERM so a
//! terminal's Ctrl-C or a stop signal aimed at electd does not take it down before electd has
//! stopped the child. CLOCK_MONOTONIC is system-wide, so both processes agree on deadlines.

use std::io::{BufRead, Write};
use std::process::{ChildStdin, Stdio};
use std::time::Duration;

use crate::clock::monotonic_ns;
use nix::sys::signal::{SigHandler, Signal, killpg, signal};
use nix::unistd::Pid;
use tokio::time::Instant;
use tracing::warn;

/// The hidden argument that turns either binary into the watchdog.
pub const WATCHDOG_ARG: &str = "__watchdog";

/// electd's end of the watchdog.
pub struct Watchdog {
    stdin: Option<ChildStdin>,
    process: std::process::Child,
    armed: Option<(Pid, Instant)>,
}

impl Watchdog {
    /// Start the watchdog from this process's own executable.
    pub fn spawn() -> std::io::Result<Watchdog> {
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
        Ok(Watchdog {
            stdin: Some(stdin),
            process,
            armed: None,
        })
    }

    pub fn pid(&self) -> u32 {
        self.process.id()
    }

    fn send(&mut self, line: &str) {
        let Some(stdin) = self.stdin.as_mut() else {
            return;
        };
        if let Err(e) = stdin.write_all(line.as_bytes()).and_then(|_| stdin.flush()) {
            warn!(error = %e, "watchdog pipe failed; the freeze watchdog is not protecting the child");
        }
    }

    /// Kill group `pgid` unless extended before `deadline`.
    pub fn arm(&mut self, pgid: Pid, deadline: Instant) {
        if self.armed == Some((pgid, deadline)) {
            return;
        }
        self.armed = Some((pgid, deadline));
        let at = crate::clock::monotonic_ns_at(deadline);
        self.send(&format!("arm {} {at}\n", pgid.as_raw()));
    }

    pub fn disarm(&mut self) {
        if self.armed.take().is_some() {
            self.send("disarm\n");
        }
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        // Disarmed first, closing the pipe ends the watchdog quietly; reap it.
        self.disarm();
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
    let mut armed: Option<(i32, i128)> = None;
    loop {
        let wait = match armed {
            Some((_, at)) => {
                let left = at - monotonic_ns();
                if left <= 0 {
                    Duration::ZERO
                } else {
                    Duration::from_nanos(left as u64)
                }
            }
            None => Duration::from_secs(3600),
        };
        match rx.recv_timeout(wait) {
            Ok(Some(line)) => {
                let parts: Vec<&str> = line.split_whitespace().collect();
                match parts.as_slice() {
                    ["arm", pgid, at] => {
                        if let (Ok(p), Ok(a)) = (pgid.parse::<i32>(), at.parse::<i128>()) {
                            armed = Some((p, a));
                        }
                    }
                    ["disarm"] => armed = None,
                    _ => {}
                }
            }
            Ok(None) | Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                // electd is gone: its child must not outlive it.
                if let Some((pgid, _)) = armed {
                    eprintln!("electd watchdog: electd exited; killing process group {pgid}");
                    let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
                }
                return 0;
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                if let Some((pgid, at)) = armed
                    && monotonic_ns() >= at
                {
                    eprintln!(
                        "electd watchdog: electd did not extend the deadline (frozen?); killing process group {pgid} before the lease can expire"
                    );
                    let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
                    armed = None;
                }
            }
        }
    }
}
