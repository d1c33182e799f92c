//! `elect-run`: run one command on exactly one replica, through the same [`Leadership`] loop
//! as the daemon, in its once mode: being elected is reported instead of starting the command,
//! and losing leadership ends the run.
//!
//! Flow with its own election: campaign; if another replica leads (at the first election read,
//! or when `--wait` runs out) exit [`exit::NOT_ELECTED`]; once
//! elected, optionally claim the `--once-per` schedule slot; run CMD while the role machine
//! says we lead; when CMD ends, record the result, resign at once and exit with CMD's code. If
//! the machine says leadership is lost, CMD's process group is stopped first, then the lease
//! released, and the exit code is [`exit::LOST`]. With `--socket` the
//! source of leadership is the local electd ([`SocketSource`]) instead.
//!
//! Invariants:
//! - CMD runs only after the machine emitted `StartChild` (and, with `--once-per`, after the
//!   slot claim committed under the fencing token); it is stopped before the lease is given up.
//! - Slot records are written only in transactions that compare the leader key's create
//!   revision with our fencing token; the claim also requires the slot key to be absent, the
//!   final update that its mod revision is the one we wrote.
//! - "Unreachable" is decided on the monotonic clock: no election read within
//!   `max(--wait, 5s)` ([`CONTACT_WAIT`]).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use nix::sys::signal::Signal;
use serde::{Deserialize, Serialize};
use tokio::signal::unix::{SignalKind, signal};
use tokio::time::{Instant, sleep, sleep_until};
use tracing::{debug, info, warn};

use crate::config::{Config, ConfigError, OnExit, Origin, Timing, parse_duration};
use crate::election::candidacy::{DEFAULT_PRIORITY, Policy};
use crate::election::etcd::{Backoff, EtcdBackend, EtcdError, SlotClaim};
use crate::election::{DriverConfig, LeaderInfo, MemberInfo, NoTelemetry, Position, keys};
use crate::exit;
use crate::leadership::source::Source;
use crate::leadership::{ElectionSource, ExitPolicy, Identity, Leadership, Next, SocketSource};
use crate::supervisor::{ChildSpec, Supervisor, watchdog::Watchdog};

/// The longest `--once-per` slot (a slot record lives on a lease of two periods).
pub const MAX_ONCE_PER: Duration = Duration::from_secs(366 * 24 * 3600);

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
    /// Validate elect-run's own flags; errors name the flag like [`ConfigError`] does.
    pub fn from_flags(
        wait: Option<&str>,
        once_per: Option<&str>,
        socket: Option<PathBuf>,
        command: Vec<String>,
    ) -> Result<RunOptions, ConfigError> {
        let invalid = |field: &'static str, flag: &'static str, value: &str, expected: &str| {
            ConfigError::Invalid {
                field,
                value: value.to_string(),
                origin: Origin::Flag(flag.to_string()),
                expected: expected.to_string(),
            }
        };
        let wait = match wait {
            Some(v) => parse_duration(v).map_err(|e| {
                invalid(
                    "wait",
                    "--wait",
                    v,
                    &format!("expected a duration such as `0s`, `30s` or `5m` ({e})"),
                )
            })?,
            None => Duration::ZERO,
        };
        let once_per = match once_per {
            Some(v) => {
                let d = parse_duration(v).map_err(|e| {
                    invalid(
                        "once_per",
                        "--once-per",
                        v,
                        &format!("expected a duration such as `1m`, `1h` or `24h` ({e})"),
                    )
                })?;
                if d < Duration::from_secs(1) || d > MAX_ONCE_PER || d.subsec_nanos() != 0 {
                    return Err(invalid(
                        "once_per",
                        "--once-per",
                        v,
                        "must be a whole number of seconds, at least 1s and at most 366d (e.g. \
                         `1m`, `1h`, `24h`): a slot record is kept for two periods, on an etcd \
                         lease",
                    ));
                }
                Some(d)
            }
            None => None,
        };
        if once_per.is_some() && socket.is_some() {
            return Err(ConfigError::Inconsistent(
                "--once-per cannot be combined with --socket: slot records are written under \
                 elect-run's own fencing token; drop --socket to campaign directly"
                    .into(),
            ));
        }
        if command.is_empty() {
            return Err(ConfigError::Inconsistent(
                "no command given: put it after `--`, e.g. `elect-run --election e -- ./job`"
                    .into(),
            ));
        }
        Ok(RunOptions {
            wait,
            once_per,
            socket,
            election_given: true,
            command,
        })
    }
}

/// One `--once-per` schedule slot: wall-clock time floored to the period.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slot {
    pub start_unix: u64,
    pub period: Duration,
}

impl Slot {
    /// The slot containing `now`.
    pub fn containing(now: SystemTime, period: Duration) -> Slot {
        let secs = now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
        let p = period.as_secs().max(1);
        Slot {
            start_unix: secs - secs % p,
            period,
        }
    }

    /// How long a slot record is kept after it was last written (it is bound to a lease of
    /// this TTL): two periods plus the wait, at least a minute, so every replica whose timer
    /// fired in this slot still finds the record however long it waited.
    pub fn retention(&self, wait: Duration) -> Duration {
        (self.period * 2 + wait).max(Duration::from_secs(60))
    }
}

/// The state of a slot's run, as recorded in etcd.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SlotState {
    Running,
    Done,
    /// Leadership was lost mid-run and CMD was stopped (best effort: written only while our
    /// leader key still exists).
    Lost,
}

/// The JSON value at [`keys::slot_key`]: who ran the slot, when, and how it ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SlotRecord {
    pub id: String,
    #[serde(default)]
    pub host: Option<String>,
    /// Slot start, unix seconds.
    pub slot: u64,
    /// Slot length in seconds.
    pub period_s: u64,
    /// The fencing token the run was made under.
    pub token: i64,
    pub started: String,
    pub state: SlotState,
    #[serde(default)]
    pub ended: Option<String>,
    #[serde(default)]
    pub exit_code: Option<i32>,
    #[serde(default)]
    pub signal: Option<i32>,
}

fn rfc3339_now() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

/// Run elect-run; returns the exit code for outcomes that are not errors (CMD's code, 75).
pub async fn run(config: Config, opts: RunOptions) -> Result<i32, RunError> {
    let mut signals = Signals::install()?;
    crate::supervisor::tree::become_subreaper();
    match opts.socket.clone() {
        Some(path) => via_socket(&config, &opts, &path, &mut signals).await,
        None => via_etcd(&config, &opts, &mut signals).await,
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

fn child_spec(config: &Config, opts: &RunOptions) -> ChildSpec {
    ChildSpec {
        argv: opts.command.clone(),
        stop_signal: config.stop_signal,
        stop_grace: config.stop_grace,
    }
}

/// The command's supervisor, with its freeze watchdog (started only once elected).
fn supervisor(config: &Config, opts: &RunOptions) -> Result<Supervisor, RunError> {
    let watchdog = Watchdog::spawn().map_err(RunError::Watchdog)?;
    Ok(Supervisor::new(child_spec(config, opts), Some(watchdog)))
}

/// How the campaign ended.
enum Campaign {
    Elected { token: i64, leader: Box<LeaderInfo> },
    NotElected,
}

/// Campaigns with its own lease; the election is always left before returning.
async fn via_etcd(
    config: &Config,
    opts: &RunOptions,
    signals: &mut Signals,
) -> Result<i32, RunError> {
    let started = Instant::now();
    let slot = opts
        .once_per
        .map(|p| Slot::containing(SystemTime::now(), p));
    let timing = config.timing();
    let backend = match EtcdBackend::connect(config).await {
        Ok(b) => b,
        Err(e) if e.is_fatal() => return Err(RunError::Etcd(e)),
        Err(e) => {
            debug!(error = %e, "etcd connect failed");
            return Err(RunError::Unreachable {
                endpoints: config.endpoints.join(","),
                within: Duration::from_millis(started.elapsed().as_millis() as u64),
            });
        }
    };
    let source = ElectionSource::start(
        &backend,
        DriverConfig {
            election: config.election.clone(),
            member: MemberInfo::new(&config.id, None),
            timing,
            observe_first: false,
            // One run: no preferences, and never handing a running job over.
            policy: Policy {
                priority: DEFAULT_PRIORITY,
                takeover_delay: None,
            },
        },
        Arc::new(NoTelemetry),
    );
    let identity = Identity {
        id: config.id.clone(),
        election: config.election.clone(),
    };
    let lead = Leadership::new(source, None, ExitPolicy::new(OnExit::Exit), identity).once();
    let mut run = EtcdRun {
        config,
        opts,
        timing,
        backend,
        lead,
        slot,
    };
    let result = run.go(started, signals).await;
    // Resign at once (CMD is already stopped or done): the next replica need not wait a TTL.
    match run.lead.into_source().shutdown().await {
        Ok(()) => debug!("election released"),
        Err(e) => debug!(error = %e, "election driver ended with an error"),
    }
    result
}

struct EtcdRun<'a> {
    config: &'a Config,
    opts: &'a RunOptions,
    timing: Timing,
    backend: EtcdBackend,
    lead: Leadership<ElectionSource, Supervisor>,
    slot: Option<Slot>,
}

/// A claimed slot: where the record is and the revision we last wrote it at.
struct Claimed {
    key: String,
    /// Our leader key: the fencing compare is on its create revision.
    leader_key: String,
    record: SlotRecord,
    mod_revision: i64,
    lease: i64,
}

impl EtcdRun<'_> {
    async fn go(&mut self, started: Instant, signals: &mut Signals) -> Result<i32, RunError> {
        let (token, leader) = match self.campaign(started, signals).await? {
            Campaign::Elected { token, leader } => (token, *leader),
            Campaign::NotElected => return Ok(exit::NOT_ELECTED),
        };
        let claimed = match self.slot {
            Some(slot) => match self.claim(slot, token, &leader).await? {
                Some(c) => Some(c),
                None => return Ok(exit::NOT_ELECTED),
            },
            None => None,
        };
        self.supervise(token, claimed, signals).await
    }

    /// Wait until elected, or until it is clear we will not be.
    async fn campaign(
        &mut self,
        started: Instant,
        signals: &mut Signals,
    ) -> Result<Campaign, RunError> {
        let give_up_at = started + self.opts.wait;
        let unreachable_at = started + self.opts.wait.max(CONTACT_WAIT);
        let mut read_once = false;
        loop {
            let position = self.lead.source().observed().position;
            if matches!(
                position,
                Position::Waiting { .. } | Position::Leading { .. }
            ) {
                read_once = true;
            }
            if read_once && Instant::now() >= give_up_at {
                not_elected(&position, self.opts.wait);
                return Ok(Campaign::NotElected);
            }
            let timer = if read_once {
                give_up_at
            } else {
                unreachable_at
            };
            match self.lead.next(signals.until(timer)).await {
                Next::Event(event) => {
                    if let Some((token, leader)) = self.lead.apply(event).await.elected {
                        return Ok(Campaign::Elected {
                            token,
                            leader: Box::new(leader),
                        });
                    }
                }
                Next::Input(Some(sig)) => {
                    info!(signal = %sig, "signal received before the command started; giving up");
                    return Ok(Campaign::NotElected);
                }
                Next::Input(None) if !read_once => {
                    return Err(RunError::Unreachable {
                        endpoints: self.config.endpoints.join(","),
                        within: self.opts.wait.max(CONTACT_WAIT),
                    });
                }
                Next::Input(None) => {}
                Next::SourceEnded(e) => return Err(RunError::Etcd(e)),
                Next::CommandEnded(_) => unreachable!("no command runs before the election"),
            }
        }
    }

    /// Claim the slot under the fencing token. `Ok(None)`: taken (or leadership already gone).
    async fn claim(
        &mut self,
        slot: Slot,
        token: i64,
        leader: &LeaderInfo,
    ) -> Result<Option<Claimed>, RunError> {
        let key = keys::slot_key(&self.config.election, slot.start_unix);
        let record = SlotRecord {
            id: self.config.id.clone(),
            host: nix::unistd::gethostname()
                .ok()
                .and_then(|h| h.into_string().ok()),
            slot: slot.start_unix,
            period_s: slot.period.as_secs(),
            token,
            started: rfc3339_now(),
            state: SlotState::Running,
            ended: None,
            exit_code: None,
            signal: None,
        };
        let value = serde_json::to_string(&record).expect("invariant: SlotRecord serialises");
        let retention = slot.retention(self.opts.wait);
        let t = self.timing.request_timeout;
        // Retry transient failures only while the role machine still lets us lead.
        let until = self.lead.role().deadline().unwrap_or_else(Instant::now);
        let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_millis(500));
        loop {
            let attempt = async {
                let lease = self.backend.grant(retention, t).await?;
                let r = self
                    .backend
                    .claim_slot(&key, &value, &leader.key, token, lease, t)
                    .await;
                if !matches!(r, Ok(SlotClaim::Claimed { .. })) {
                    let _ = self.backend.revoke(lease, t).await;
                }
                r.map(|c| (c, lease))
            };
            let (mod_revision, lease) = match attempt.await {
                Ok((SlotClaim::Claimed { mod_revision }, lease)) => (mod_revision, lease),
                Ok((
                    SlotClaim::Exists {
                        value,
                        mod_revision,
                        lease,
                    },
                    _,
                )) => {
                    // An earlier attempt of ours that committed, its reply lost?
                    let existing = serde_json::from_str::<SlotRecord>(&value);
                    match existing {
                        Ok(r) if r.token == token && r.state == SlotState::Running => {
                            (mod_revision, lease)
                        }
                        Ok(r) => {
                            info!(
                                key, by = %r.id, state = ?r.state, started = %r.started,
                                exit_code = r.exit_code, "slot already taken; command not run"
                            );
                            return Ok(None);
                        }
                        Err(_) => {
                            info!(key, value = %value, "slot already taken; command not run");
                            return Ok(None);
                        }
                    }
                }
                Ok((SlotClaim::NotLeader, _)) => {
                    info!(
                        key,
                        token, "leadership gone before the slot was claimed; command not run"
                    );
                    return Ok(None);
                }
                Err(e) if e.is_fatal() || Instant::now() + backoff.clone().delay() >= until => {
                    return Err(RunError::SlotClaim { key, source: e });
                }
                Err(e) => {
                    debug!(error = %e, "slot claim failed; retrying");
                    sleep(backoff.delay()).await;
                    continue;
                }
            };
            info!(key, slot = slot.start_unix, token, "slot claimed");
            return Ok(Some(Claimed {
                key,
                leader_key: leader.key.clone(),
                record,
                mod_revision,
                lease,
            }));
        }
    }

    /// Run CMD while we lead; returns its exit code, or [`RunError::Lost`] after stopping it.
    async fn supervise(
        &mut self,
        token: i64,
        mut claimed: Option<Claimed>,
        signals: &mut Signals,
    ) -> Result<i32, RunError> {
        self.lead.set_command(supervisor(self.config, self.opts)?);
        let extra = match self.slot {
            Some(slot) => vec![("ELECTD_SLOT".into(), slot.start_unix.to_string())],
            None => Vec::new(),
        };
        if let Err((code, why)) = self.lead.start_command(token, extra) {
            eprintln!("elect-run: {why}");
            self.finish(&mut claimed, token, SlotState::Done, Some(code), None)
                .await;
            return Ok(code);
        }
        loop {
            match self.lead.next(signals.recv()).await {
                Next::Event(event) => {
                    if let Some(lost) = self.lead.apply(event).await.lost {
                        warn!(
                            reason = lost.reason,
                            "leadership lost; the command was stopped"
                        );
                        let (code, signal) =
                            (lost.exit.map(|e| e.code), lost.exit.and_then(|e| e.signal));
                        self.finish(&mut claimed, token, SlotState::Lost, code, signal)
                            .await;
                        return Err(RunError::Lost {
                            reason: lost.reason,
                        });
                    }
                }
                Next::Input(sig) => self.lead.forward(sig),
                Next::CommandEnded(exit) => {
                    self.finish(
                        &mut claimed,
                        token,
                        SlotState::Done,
                        Some(exit.code),
                        exit.signal,
                    )
                    .await;
                    return Ok(exit.code);
                }
                Next::SourceEnded(e) => {
                    self.lead.stop_command().await;
                    return Err(RunError::Lost {
                        reason: format!("the election driver stopped: {e}"),
                    });
                }
            }
        }
    }

    /// Record how the slot's run ended (best effort, fenced); a failure is logged.
    async fn finish(
        &self,
        claimed: &mut Option<Claimed>,
        token: i64,
        state: SlotState,
        exit_code: Option<i32>,
        signal: Option<i32>,
    ) {
        let Some(c) = claimed.take() else { return };
        let mut record = c.record;
        record.state = state;
        record.ended = Some(rfc3339_now());
        record.exit_code = exit_code;
        record.signal = signal;
        let value = serde_json::to_string(&record).expect("invariant: SlotRecord serialises");
        let t = self.timing.request_timeout;
        let retention = self
            .slot
            .map(|s| s.retention(self.opts.wait))
            .unwrap_or_default();
        // A finished record gets a fresh lease, so it is kept `retention` after the end of the
        // run; a lost run's record keeps the claim's lease (etcd is likely unreachable anyway).
        let lease = match state {
            SlotState::Done => self.backend.grant(retention, t).await.ok(),
            _ => None,
        };
        let done = match self
            .backend
            .update_slot(
                &c.key,
                &value,
                &c.leader_key,
                token,
                c.mod_revision,
                lease,
                t,
            )
            .await
        {
            Ok(true) => Ok(()),
            Ok(false) => Err("the fencing token or the record changed".to_string()),
            Err(e) => Err(e.to_string()),
        };
        match done {
            Ok(()) => {
                info!(key = c.key, state = ?state, exit_code, "slot record updated");
                if lease.is_some() {
                    let _ = self.backend.revoke(c.lease, t).await;
                }
            }
            Err(why) => {
                if let Some(l) = lease {
                    let _ = self.backend.revoke(l, t).await;
                }
                warn!(key = c.key, reason = %why, "could not record the end of the run; the slot stays taken")
            }
        }
    }
}

fn not_elected(position: &Position, wait: Duration) {
    let waited = humantime::format_duration(wait);
    match position {
        Position::Waiting {
            leader: Some(leader),
        } => info!(
            leader = %leader.id, token = leader.create_revision, waited = %waited,
            "not elected: another replica leads; command not run"
        ),
        _ => info!(waited = %waited, "not elected; command not run"),
    }
}

/// Ask the local electd and run CMD only while it leads. No lease is held here: the
/// guarantee is electd's; the [`SocketSource`] re-asks every half second and the command is
/// stopped when electd no longer leads under the same fencing token.
async fn via_socket(
    config: &Config,
    opts: &RunOptions,
    path: &Path,
    signals: &mut Signals,
) -> Result<i32, RunError> {
    let give_up_at = Instant::now() + opts.wait;
    let socket_err = |reason: String| RunError::Socket {
        path: path.to_path_buf(),
        reason,
    };
    let source = SocketSource::connect(path, config.stop_grace)
        .await
        .map_err(socket_err)?;
    let first = source.last().expect("invariant: connect read an answer");
    let identity = Identity {
        id: first.id.to_string(),
        election: first.election.to_string(),
    };
    if opts.election_given && config.election != identity.election {
        return Err(RunError::Config(format!(
            "the electd at {} serves election {:?}, not {:?} (from --election); \
             point --socket at the right electd or drop --election",
            path.display(),
            identity.election,
            config.election
        )));
    }
    let mut lead = Leadership::new(source, None, ExitPolicy::new(OnExit::Exit), identity).once();
    let token = loop {
        match lead.next(signals.until(give_up_at)).await {
            Next::Event(event) => {
                if let Err(e) = lead.source().last() {
                    return Err(socket_err(e.to_string()));
                }
                if let Some((token, leader)) = lead.apply(event).await.elected {
                    info!(token, key = %leader.key, "local electd leads");
                    break token;
                }
                if Instant::now() >= give_up_at {
                    socket_not_leading(lead.source());
                    return Ok(exit::NOT_ELECTED);
                }
            }
            Next::Input(Some(sig)) => {
                info!(signal = %sig, "signal received before the command started; giving up");
                return Ok(exit::NOT_ELECTED);
            }
            Next::Input(None) => {
                socket_not_leading(lead.source());
                return Ok(exit::NOT_ELECTED);
            }
            Next::SourceEnded(never) => match never {},
            Next::CommandEnded(_) => unreachable!("no command runs before electd leads"),
        }
    };
    lead.set_command(supervisor(config, opts)?);
    if let Err((code, why)) = lead.start_command(token, Vec::new()) {
        eprintln!("elect-run: {why}");
        return Ok(code);
    }
    loop {
        match lead.next(signals.recv()).await {
            Next::Event(event) => {
                if lead.apply(event).await.lost.is_some() {
                    let reason = match lead.source().last() {
                        Ok(doc) => format!(
                            "the local electd is now {} (leader: {})",
                            doc.role,
                            doc.leader.as_ref().map_or("none", |l| &l.id)
                        ),
                        Err(e) => format!("the local electd stopped answering: {e}"),
                    };
                    warn!(reason, "leadership lost; the command was stopped");
                    return Err(RunError::Lost { reason });
                }
            }
            Next::Input(sig) => lead.forward(sig),
            Next::CommandEnded(exit) => {
                return Ok(exit.code);
            }
            Next::SourceEnded(never) => match never {},
        }
    }
}

fn socket_not_leading(source: &SocketSource) {
    if let Ok(doc) = source.last() {
        info!(
            role = %doc.role, leader = doc.leader.as_ref().map_or("none", |l| &l.id),
            "local electd is not the leader; command not run"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_floor_wall_clock_to_the_period() {
        let t = UNIX_EPOCH + Duration::from_secs(1_700_000_059);
        let s = Slot::containing(t, Duration::from_secs(60));
        assert_eq!(s.start_unix, 1_700_000_040);
        let s = Slot::containing(t, Duration::from_secs(3600));
        assert_eq!(s.start_unix, 1_699_999_200);
        assert_eq!(
            Slot::containing(t, Duration::from_secs(60)).retention(Duration::ZERO),
            Duration::from_secs(120)
        );
        assert_eq!(
            Slot::containing(t, Duration::from_secs(1)).retention(Duration::ZERO),
            Duration::from_secs(60)
        );
    }

    #[test]
    fn flags_are_validated_with_the_flag_named() {
        let cmd = || vec!["true".to_string()];
        let err = RunOptions::from_flags(Some("soon"), None, None, cmd())
            .unwrap_err()
            .to_string();
        assert!(err.contains("--wait") && err.contains("soon"), "{err}");
        let err = RunOptions::from_flags(None, Some("1500ms"), None, cmd())
            .unwrap_err()
            .to_string();
        assert!(err.contains("--once-per") && err.contains("whole"), "{err}");
        let err = RunOptions::from_flags(None, Some("1000000000000s"), None, cmd())
            .unwrap_err()
            .to_string();
        assert!(err.contains("--once-per") && err.contains("366d"), "{err}");
        let err = RunOptions::from_flags(None, Some("1m"), Some("/s".into()), cmd())
            .unwrap_err()
            .to_string();
        assert!(err.contains("--socket"), "{err}");
        let o = RunOptions::from_flags(Some("30s"), Some("1h"), None, cmd()).unwrap();
        assert_eq!(o.wait, Duration::from_secs(30));
        assert_eq!(o.once_per, Some(Duration::from_secs(3600)));
    }
}
