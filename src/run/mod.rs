//! `elect-run`: run one command on exactly one replica, through the same [`Leadership`](crate::leadership::Leadership) loop
//! as the daemon, in its once mode: being elected is reported instead of starting the command,
//! and losing leadership ends the run.
//!
//! # Layout
//! - `etcd` — with an election of its own: campaign, claim the slot, run CMD while leading,
//!   resign at once.
//! - `socket` — `--socket`: the local electd is the source of leadership
//!   ([`SocketSource`](crate::leadership::SocketSource)).
//! - [`slots`] — the `--once-per` slot as pure values: slot arithmetic, the record and its
//!   transitions (running → done / lost).
//! - `claim` — the slot record's fenced writes in etcd.
//!
//! elect-run's settings (`wait`, `once_per`) are validated with every other setting
//! ([`crate::config::Layers::elect_run`]); [`RunOptions`] adds its `--socket` and CMD.
//!
//! Invariants, in both modes: CMD runs only after the role machine emitted `StartChild`; it is
//! stopped before leadership is given up; every outcome has its own exit code
//! ([`EXIT_CODES_HELP`]).

mod claim;
mod etcd;
pub mod slots;
mod socket;

use std::path::PathBuf;
use std::time::Duration;

use nix::sys::signal::Signal;
use tokio::signal::unix::{SignalKind, signal};
use tokio::time::{Instant, sleep_until};

use crate::config::{Config, ConfigError, Layers};
use crate::election::etcd::EtcdError;
use crate::exit;
use crate::supervisor::watchdog::{Watchdog, WatchdogHandle};
use crate::supervisor::{ChildSpec, Supervisor};

pub use slots::{Slot, SlotRecord, SlotState};

/// The least time etcd gets to answer before elect-run calls it unreachable.
pub const CONTACT_WAIT: Duration = Duration::from_secs(5);

/// The exit-code table, for `--help` and the README.
pub const EXIT_CODES_HELP: &str = "\
Exit codes:
  CMD's own code   CMD ran (128+N if it was killed by signal N)
  75               not elected (another replica leads, or --wait ran out), or the --once-per
                   slot was already taken; CMD did not run
  76               leadership lost while CMD ran; CMD was stopped
  69               etcd unreachable (no election read within max(--wait, 5s)), or the electd
                   socket did not answer; CMD did not run
  78               configuration error;  64 usage error
  71               the OS refused the freeze watchdog or signal handlers; CMD did not run

Quiet unless -v: only CMD's output and real errors are printed.";

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(
        "etcd unreachable at {endpoints}: no election read succeeded within {}; the command did not run",
        humantime::format_duration(*within)
    )]
    Unreachable { endpoints: String, within: Duration },
    #[error("etcd refused us: {0}; the command did not run")]
    Etcd(#[source] EtcdError),
    #[error("could not claim the --once-per slot {key}: {source}; the command did not run")]
    SlotClaim {
        key: String,
        #[source]
        source: EtcdError,
    },
    #[error("electd socket {}: {reason}; the command did not run", path.display())]
    Socket { path: PathBuf, reason: String },
    #[error("leadership lost while the command ran ({reason}); the command was stopped")]
    Lost { reason: String },
    #[error("{0}")]
    Config(String),
    #[error("cannot start the freeze watchdog: {0}")]
    Watchdog(#[source] std::io::Error),
    #[error("cannot install signal handlers: {0}")]
    Signals(#[source] std::io::Error),
}

impl RunError {
    pub fn exit_code(&self) -> i32 {
        match self {
            RunError::Unreachable { .. }
            | RunError::Etcd(_)
            | RunError::SlotClaim { .. }
            | RunError::Socket { .. } => exit::UNAVAILABLE,
            RunError::Lost { .. } => exit::LOST,
            RunError::Config(_) => exit::CONFIG,
            RunError::Watchdog(_) | RunError::Signals(_) => exit::OSERR,
        }
    }
}

/// What elect-run was asked to do, beyond the shared [`Config`].
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// How long to wait to become leader; zero = decide at the first election read.
    pub wait: Duration,
    /// Run at most once per slot of this length (whole seconds).
    pub once_per: Option<Duration>,
    /// Ask this electd socket instead of campaigning.
    pub socket: Option<PathBuf>,
    /// In `--socket` mode: whether `--election` (or its variable or file key) was given, so
    /// electd's election must match it.
    pub election_given: bool,
    pub command: Vec<String>,
}

impl RunOptions {
    /// elect-run's settings from `layers` (flags, variables and file keys, validated by
    /// [`Layers::elect_run`]), its `--socket` and CMD.
    pub fn from_layers(
        layers: &Layers,
        socket: Option<PathBuf>,
        command: Vec<String>,
    ) -> Result<RunOptions, ConfigError> {
        let settings = layers.elect_run(socket.is_some())?;
        if command.is_empty() {
            return Err(ConfigError::Inconsistent(
                "no command given: put it after `--`, e.g. `elect-run --election e -- ./job`"
                    .into(),
            ));
        }
        Ok(RunOptions {
            wait: settings.wait,
            once_per: settings.once_per,
            socket,
            election_given: layers.given("election"),
            command,
        })
    }
}

/// Run elect-run; returns the exit code for outcomes that are not errors (CMD's code, 75).
pub async fn run(config: Config, opts: RunOptions) -> Result<i32, RunError> {
    let mut signals = Signals::install()?;
    crate::supervisor::tree::become_subreaper();
    match opts.socket.clone() {
        Some(path) => socket::run(&config, &opts, &path, &mut signals).await,
        None => etcd::run(&config, &opts, &mut signals).await,
    }
}

/// TERM, INT and HUP: forwarded to CMD while it runs; before that they abort the run.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> Result<Signals, RunError> {
        let mk = |k| signal(k).map_err(RunError::Signals);
        Ok(Signals {
            term: mk(SignalKind::terminate())?,
            int: mk(SignalKind::interrupt())?,
            hup: mk(SignalKind::hangup())?,
        })
    }

    async fn recv(&mut self) -> Signal {
        tokio::select! {
            _ = self.term.recv() => Signal::SIGTERM,
            _ = self.int.recv() => Signal::SIGINT,
            _ = self.hup.recv() => Signal::SIGHUP,
        }
    }

    /// A signal, or `None` when `until` comes first.
    async fn until(&mut self, until: Instant) -> Option<Signal> {
        tokio::select! {
            sig = self.recv() => Some(sig),
            _ = sleep_until(until) => None,
        }
    }
}

/// The command's supervisor, with its freeze watchdog (started only once elected). With `etcd`
/// (elect-run's own lease) the watchdog can also hand the term over if elect-run dies.
fn supervisor(
    config: &Config,
    opts: &RunOptions,
    etcd: bool,
) -> Result<(Supervisor, WatchdogHandle), RunError> {
    let settings = etcd.then(|| config.etcd_settings());
    let watchdog = Watchdog::spawn(settings.as_ref()).map_err(RunError::Watchdog)?;
    let spec = ChildSpec {
        argv: opts.command.clone(),
        stop_signal: config.stop_signal,
        stop_grace: config.stop_grace,
    };
    Ok((Supervisor::new(spec, Some(watchdog.clone())), watchdog))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Settings;

    #[test]
    fn options_come_from_the_layers_with_the_setting_named() {
        let cmd = || vec!["true".to_string()];
        let layers = |flags: Settings| Layers {
            flags,
            env: Settings::default(),
            file: None,
        };
        let err = RunOptions::from_layers(
            &layers(Settings::default().set("wait", "soon")),
            None,
            cmd(),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("--wait") && err.contains("soon"), "{err}");
        let err = RunOptions::from_layers(
            &layers(Settings::default().set("once_per", "1m")),
            Some("/s".into()),
            cmd(),
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("--once-per") && err.contains("--socket"),
            "{err}"
        );
        let err = RunOptions::from_layers(&layers(Settings::default()), None, Vec::new())
            .unwrap_err()
            .to_string();
        assert!(err.contains("no command"), "{err}");
        let flags = Settings::default()
            .set("wait", "30s")
            .set("once_per", "1h")
            .set("election", "e");
        let o = RunOptions::from_layers(&layers(flags), None, cmd()).unwrap();
        assert_eq!(o.wait, Duration::from_secs(30));
        assert_eq!(o.once_per, Some(Duration::from_secs(3600)));
        assert!(o.election_given);
        let o = RunOptions::from_layers(&layers(Settings::default()), None, cmd()).unwrap();
        assert_eq!(
            (o.wait, o.once_per, o.election_given),
            (Duration::ZERO, None, false)
        );
    }
}
