//! `elect-run`: run one command on exactly one replica — a single-shot version of the daemon's
//! owner task, built from the same pieces (election [`Driver`], role [`Machine`],
//! [`Supervisor`] with its freeze [`Watchdog`]).
//!
//! Flow with its own election: campaign; if another replica leads (at the first election read,
//! or when `--wait` runs out) exit [`exit::NOT_ELECTED`](crate::exit::NOT_ELECTED); once elected, optionally claim the
//! `--once-per` schedule slot; run CMD while the role machine says we lead; when CMD ends,
//! record the result, resign at once and exit with CMD's code. If the machine says leadership
//! is lost, CMD's process group is stopped first, then the lease released, and the exit code is
//! [`exit::LOST`](crate::exit::LOST).
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
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use etcd_client::{Client, Compare, CompareOp, PutOptions, Txn, TxnOp};
use nix::sys::signal::Signal;
use serde::{Deserialize, Serialize};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep, sleep_until, timeout};
use tracing::{debug, info, warn};

use crate::config::{Config, ConfigError, Origin, Timing, parse_duration};
use crate::election::etcd::{self, Backoff, EtcdError, PutIfAbsent};
use crate::election::role::{Action, Event, Machine, Observed};
use crate::election::{
    After, Driver, DriverConfig, DriverHandle, ElectionView, LeaderInfo, MemberInfo, Position, keys,
};
use crate::exit;
use crate::supervisor::{ChildSpec, Supervisor, SupervisorError, watchdog::Watchdog};

/// The least time etcd gets to answer before elect-run calls it unreachable.
pub const CONTACT_WAIT: Duration = Duration::from_secs(5);
/// How often `--socket` mode re-asks electd while waiting or while CMD runs.
pub const SOCKET_POLL: Duration = Duration::from_millis(500);
/// Deadline of one request to electd's socket.
const SOCKET_TIMEOUT: Duration = Duration::from_secs(2);

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
                if d < Duration::from_secs(1) || d.subsec_nanos() != 0 {
                    return Err(invalid(
                        "once_per",
                        "--once-per",
                        v,
                        "must be a whole number of seconds, at least 1s (e.g. `1m`, `1h`, `24h`)",
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
}

fn observed(v: &ElectionView) -> Event {
    Event::Observed(Box::new(Observed {
        lease: v.lease,
        position: v.position.clone(),
        last_ok_sent: v.last_ok_sent,
        reachable: v.reachable,
    }))
}

/// How the campaign ended.
enum Campaign {
    Elected { token: i64, leader: LeaderInfo },
    NotElected,
}

/// Campaigns with its own lease; the driver is always released before returning.
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
    let client = match etcd::connect(config).await {
        Ok(c) => c,
        Err(e) if e.is_fatal() => return Err(RunError::Etcd(e)),
        Err(e) => {
            debug!(error = %e, "etcd connect failed");
            return Err(RunError::Unreachable {
                endpoints: config.endpoints.join(","),
                within: Duration::from_millis(started.elapsed().as_millis() as u64),
            });
        }
    };
    let (driver, handle, view_rx) = Driver::new(
        client.clone(),
        DriverConfig {
            election: config.election.clone(),
            member: MemberInfo::new(&config.id, None),
            timing,
        },
    );
    let driver_task = tokio::spawn(driver.run());
    let mut run = EtcdRun {
        config,
        opts,
        timing,
        client,
        machine: Machine::new(timing.leader_budget()),
        view_rx,
        driver_task: Some(driver_task),
        slot,
    };
    let result = run.go(started, signals).await;
    // Resign at once (CMD is already stopped or done): the next replica need not wait a TTL.
    release(&handle, run.driver_task).await;
    result
}

async fn release(handle: &DriverHandle, driver_task: Option<JoinHandle<Result<(), EtcdError>>>) {
    handle.release(After::Stop).await;
    let Some(task) = driver_task else { return };
    match timeout(Duration::from_secs(2), task).await {
        Ok(Ok(Err(e))) => debug!(error = %e, "election driver ended with an error"),
        Ok(_) => debug!("election released"),
        Err(_) => warn!("election driver did not stop within 2s"),
    }
}

struct EtcdRun<'a> {
    config: &'a Config,
    opts: &'a RunOptions,
    timing: Timing,
    client: Client,
    machine: Machine,
    view_rx: watch::Receiver<ElectionView>,
    /// Taken once the driver has ended on its own.
    driver_task: Option<JoinHandle<Result<(), EtcdError>>>,
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
            Campaign::Elected { token, leader } => (token, leader),
            Campaign::NotElected => return Ok(exit::NOT_ELECTED),
        };
        let claimed = match self.slot {
            Some(slot) => match self.claim(slot, token, &leader).await? {
                Some(c) => Some(c),
                None => return Ok(exit::NOT_ELECTED),
            },
            None => None,
        };
        self.supervise(token, &leader, claimed, signals).await
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
            let view = self.view_rx.borrow_and_update().clone();
            if matches!(
                view.position,
                Position::Waiting { .. } | Position::Leading { .. }
            ) {
                read_once = true;
            }
            let (next, actions) = self.machine.step(&observed(&view), Instant::now());
            self.machine = next;
            for action in actions {
                if let Action::StartChild { token } = action {
                    let leader = self
                        .machine
                        .role
                        .leader()
                        .cloned()
                        .expect("invariant: a leader role knows its leader");
                    info!(token, key = %leader.key, "elected");
                    return Ok(Campaign::Elected { token, leader });
                }
            }
            if read_once && Instant::now() >= give_up_at {
                not_elected(&view.position, self.opts.wait);
                return Ok(Campaign::NotElected);
            }
            let timer = if read_once {
                give_up_at
            } else {
                unreachable_at
            };
            tokio::select! {
                changed = self.view_rx.changed() => {
                    if changed.is_err() {
                        return Err(self.driver_error().await);
                    }
                }
                _ = sleep_until(timer) => {
                    if !read_once {
                        return Err(RunError::Unreachable {
                            endpoints: self.config.endpoints.join(","),
                            within: self.opts.wait.max(CONTACT_WAIT),
                        });
                    }
                    not_elected(&self.view_rx.borrow().position, self.opts.wait);
                    return Ok(Campaign::NotElected);
                }
                sig = signals.recv() => {
                    info!(signal = %sig, "signal received before the command started; giving up");
                    return Ok(Campaign::NotElected);
                }
            }
        }
    }

    /// The driver ended on its own: it returns only unrecoverable errors.
    async fn driver_error(&mut self) -> RunError {
        let ended = match self.driver_task.take() {
            Some(task) => task.await.ok(),
            None => None,
        };
        match ended {
            Some(Err(e)) => RunError::Etcd(e),
            _ => RunError::Etcd(EtcdError::Setup("the election driver stopped".into())),
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
        let until = self.machine.role.deadline().unwrap_or_else(Instant::now);
        let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_millis(500));
        loop {
            let attempt = async {
                let lease = etcd::grant(&self.client, retention, t).await?;
                let r = claim_txn(&self.client, &key, &value, &leader.key, token, lease, t).await;
                if !matches!(r, Ok(ClaimResult::Claimed { .. })) {
                    let _ = etcd::revoke(&self.client, lease, t).await;
                }
                r.map(|c| (c, lease))
            };
            match attempt.await {
                Ok((ClaimResult::Claimed { mod_revision }, lease))
                | Ok((
                    ClaimResult::Mine {
                        mod_revision,
                        lease,
                    },
                    _,
                )) => {
                    info!(key, slot = slot.start_unix, token, "slot claimed");
                    return Ok(Some(Claimed {
                        key,
                        leader_key: leader.key.clone(),
                        record,
                        mod_revision,
                        lease,
                    }));
                }
                Ok((ClaimResult::Taken(existing), _)) => {
                    match serde_json::from_str::<SlotRecord>(&existing) {
                        Ok(r) => info!(
                            key, by = %r.id, state = ?r.state, started = %r.started,
                            exit_code = r.exit_code, "slot already taken; command not run"
                        ),
                        Err(_) => {
                            info!(key, value = %existing, "slot already taken; command not run")
                        }
                    }
                    return Ok(None);
                }
                Ok((ClaimResult::NotLeader, _)) => {
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
                }
            }
        }
    }

    /// Run CMD while we lead; returns its exit code, or [`RunError::Lost`] after stopping it.
    async fn supervise(
        &mut self,
        token: i64,
        leader: &LeaderInfo,
        mut claimed: Option<Claimed>,
        signals: &mut Signals,
    ) -> Result<i32, RunError> {
        let watchdog = Watchdog::spawn().map_err(RunError::Watchdog)?;
        let mut sup = Supervisor::new(child_spec(self.config, self.opts), Some(watchdog));
        let mut env = child_env(&self.config.id, &self.config.election, &leader.key, token);
        if let Some(slot) = self.slot {
            env.push(("ELECTD_SLOT".into(), slot.start_unix.to_string()));
        }
        if let Err(code) = start(&mut sup, &env) {
            self.finish(&mut claimed, token, SlotState::Done, Some(code), None)
                .await;
            return Ok(code);
        }
        loop {
            if self.machine.role.leads()
                && let Some(sent) = self.view_rx.borrow().last_ok_sent
            {
                sup.set_kill_deadline(sent + self.timing.kill_budget());
            }
            let deadline = self.machine.role.deadline();
            let event = tokio::select! {
                (exit, ran) = sup.wait() => {
                    info!(status = %exit, ran = ?ran, "command ended");
                    self.finish(&mut claimed, token, SlotState::Done, Some(exit.code), exit.signal).await;
                    return Ok(exit.code);
                }
                changed = self.view_rx.changed() => {
                    if changed.is_err() {
                        let e = self.driver_error().await;
                        sup.stop().await;
                        return Err(RunError::Lost { reason: format!("the election driver stopped: {e}") });
                    }
                    observed(&self.view_rx.borrow_and_update().clone())
                }
                _ = sleep_until(deadline.unwrap_or_else(Instant::now)), if deadline.is_some() => {
                    observed(&self.view_rx.borrow().clone())
                }
                sig = signals.recv() => {
                    sup.forward(sig);
                    continue;
                }
            };
            let (next, actions) = self.machine.step(&event, Instant::now());
            self.machine = next;
            if actions.contains(&Action::StopChild) {
                let reason = lost_reason(&event);
                warn!(reason, "leadership lost; stopping the command");
                let exit = sup.stop().await;
                self.finish(
                    &mut claimed,
                    token,
                    SlotState::Lost,
                    exit.map(|e| e.code),
                    exit.and_then(|e| e.signal),
                )
                .await;
                return Err(RunError::Lost { reason });
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
            SlotState::Done => etcd::grant(&self.client, retention, t).await.ok(),
            _ => None,
        };
        let put = match lease {
            Some(l) => PutOptions::new().with_lease(l),
            None => PutOptions::new().with_ignore_lease(),
        };
        let txn = Txn::new()
            .when([
                Compare::create_revision(c.leader_key.as_str(), CompareOp::Equal, token),
                Compare::mod_revision(c.key.as_str(), CompareOp::Equal, c.mod_revision),
            ])
            .and_then([TxnOp::put(c.key.as_str(), value, Some(put))]);
        let mut client = self.client.clone();
        let done = match etcd::bounded("slot record update", t, c.lease, client.txn(txn)).await {
            Ok(r) if r.succeeded() => Ok(()),
            Ok(_) => Err("the fencing token or the record changed".to_string()),
            Err(e) => Err(e.to_string()),
        };
        match done {
            Ok(()) => {
                info!(key = c.key, state = ?state, exit_code, "slot record updated");
                if lease.is_some() {
                    let _ = etcd::revoke(&self.client, c.lease, t).await;
                }
            }
            Err(why) => {
                if let Some(l) = lease {
                    let _ = etcd::revoke(&self.client, l, t).await;
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

fn lost_reason(event: &Event) -> String {
    let Event::Observed(o) = event else {
        return "resigned".into();
    };
    match (&o.position, o.reachable) {
        (Position::Waiting { leader: Some(l) }, _) => format!("{} leads now", l.id),
        (_, false) => "no keepalive succeeded within the leader budget; etcd unreachable".into(),
        (Position::Leading { .. }, true) => "keepalive deadline passed".into(),
        _ => "the lease expired or was revoked at etcd".into(),
    }
}

enum ClaimResult {
    Claimed {
        mod_revision: i64,
    },
    /// An earlier attempt of ours committed but its reply was lost.
    Mine {
        mod_revision: i64,
        lease: i64,
    },
    Taken(String),
    NotLeader,
}

/// The claim: put the record iff our leader key still has create revision `token` and the
/// slot key does not exist; otherwise read the slot key to tell "taken" from "not leader".
async fn claim_txn(
    client: &Client,
    key: &str,
    value: &str,
    leader_key: &str,
    token: i64,
    lease: i64,
    after: Duration,
) -> Result<ClaimResult, EtcdError> {
    let fenced = [Compare::create_revision(
        leader_key,
        CompareOp::Equal,
        token,
    )];
    let found =
        etcd::put_if_absent(client, "slot claim txn", key, value, lease, fenced, after).await?;
    match found {
        PutIfAbsent::Created(rev) => Ok(ClaimResult::Claimed { mod_revision: rev }),
        PutIfAbsent::Exists(kv) => {
            let existing = String::from_utf8_lossy(kv.value()).into_owned();
            let ours = serde_json::from_str::<SlotRecord>(&existing)
                .is_ok_and(|r| r.token == token && r.state == SlotState::Running);
            if ours {
                Ok(ClaimResult::Mine {
                    mod_revision: kv.mod_revision(),
                    lease: kv.lease(),
                })
            } else {
                Ok(ClaimResult::Taken(existing))
            }
        }
        PutIfAbsent::ConditionFailed => Ok(ClaimResult::NotLeader),
    }
}

fn child_spec(config: &Config, opts: &RunOptions) -> ChildSpec {
    ChildSpec {
        argv: opts.command.clone(),
        stop_signal: config.stop_signal,
        stop_grace: config.stop_grace,
    }
}

fn child_env(id: &str, election: &str, leader_key: &str, token: i64) -> Vec<(String, String)> {
    vec![
        ("ELECTD_ID".into(), id.into()),
        ("ELECTD_ELECTION".into(), election.into()),
        ("ELECTD_LEADER_KEY".into(), leader_key.into()),
        ("ELECTD_FENCING_TOKEN".into(), token.to_string()),
    ]
}

/// Start CMD; on failure print why and return the shell's code (127 not found, 126 otherwise).
fn start(sup: &mut Supervisor, env: &[(String, String)]) -> Result<u32, i32> {
    match sup.start(env) {
        Ok(pid) => {
            info!(pid, "command started");
            Ok(pid)
        }
        Err(e) => {
            let code = match &e {
                SupervisorError::Spawn { source, .. }
                    if source.kind() == std::io::ErrorKind::NotFound =>
                {
                    127
                }
                _ => 126,
            };
            eprintln!("elect-run: {e}");
            Err(code)
        }
    }
}

/// Ask the local electd and run CMD only while it leads. No lease is held here: the
/// guarantee is electd's; elect-run re-asks every [`SOCKET_POLL`] and stops CMD when electd
/// no longer leads under the same fencing token.
async fn via_socket(
    config: &Config,
    opts: &RunOptions,
    path: &Path,
    signals: &mut Signals,
) -> Result<i32, RunError> {
    let started = Instant::now();
    let give_up_at = started + opts.wait;
    let socket_err = |reason: String| RunError::Socket {
        path: path.to_path_buf(),
        reason,
    };
    let mut doc = ask_role(path).await.map_err(socket_err)?;
    let election = doc["election"].as_str().unwrap_or_default().to_string();
    if opts.election_given && config.election != election {
        return Err(RunError::Config(format!(
            "the electd at {} serves election {election:?}, not {:?} (from --election); \
             point --socket at the right electd or drop --election",
            path.display(),
            config.election
        )));
    }
    loop {
        if doc["role"] == "leader" {
            break;
        }
        if Instant::now() >= give_up_at {
            info!(
                role = %doc["role"], leader = %doc["leader"]["id"],
                "local electd is not the leader; command not run"
            );
            return Ok(exit::NOT_ELECTED);
        }
        tokio::select! {
            _ = sleep(SOCKET_POLL) => {}
            sig = signals.recv() => {
                info!(signal = %sig, "signal received before the command started; giving up");
                return Ok(exit::NOT_ELECTED);
            }
        }
        doc = ask_role(path).await.map_err(socket_err)?;
    }
    let Some(token) = doc["fencing_token"].as_i64() else {
        return Err(socket_err(format!("/role has no fencing_token: {doc}")));
    };
    let leader_key = doc["leader"]["key"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let id = doc["id"].as_str().unwrap_or(&config.id).to_string();
    info!(token, key = %leader_key, "local electd leads");

    let watchdog = Watchdog::spawn().map_err(RunError::Watchdog)?;
    let mut sup = Supervisor::new(child_spec(config, opts), Some(watchdog));
    let env = child_env(&id, &election, &leader_key, token);
    if let Err(code) = start(&mut sup, &env) {
        return Ok(code);
    }
    let mut next_poll = Instant::now() + SOCKET_POLL;
    loop {
        // The watchdog here only covers elect-run's own death; the lease is electd's.
        sup.set_kill_deadline(Instant::now() + Duration::from_secs(86_400));
        let poll = async {
            sleep_until(next_poll).await;
            ask_role(path).await
        };
        let lost = tokio::select! {
            (exit, ran) = sup.wait() => {
                info!(status = %exit, ran = ?ran, "command ended");
                return Ok(exit.code);
            }
            answer = poll => {
                next_poll = Instant::now() + SOCKET_POLL;
                match answer {
                    Ok(d) if matches!(d["role"].as_str(), Some("leader" | "suspect"))
                        && d["fencing_token"].as_i64() == Some(token) => None,
                    Ok(d) => Some(format!("the local electd is now {} (leader: {})", d["role"], d["leader"]["id"])),
                    Err(e) => Some(format!("the local electd stopped answering: {e}")),
                }
            }
            sig = signals.recv() => {
                sup.forward(sig);
                None
            }
        };
        if let Some(reason) = lost {
            warn!(reason, "leadership lost; stopping the command");
            sup.stop().await;
            return Err(RunError::Lost { reason });
        }
    }
}

/// `GET /role` from the local electd over its socket (blocking I/O off the runtime, bounded).
pub async fn ask_role(path: &Path) -> Result<serde_json::Value, String> {
    let path = path.to_path_buf();
    let answer = tokio::task::spawn_blocking(move || {
        crate::api::client::request_within(&path, "GET", "/role", SOCKET_TIMEOUT)
    })
    .await
    .map_err(|e| format!("socket client task failed: {e}"))?
    .map_err(|e| e.to_string())?;
    match answer {
        (200, body) => serde_json::from_str(&body).map_err(|e| format!("/role is not JSON: {e}")),
        (code, _) => Err(format!("GET /role answered {code}")),
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
        let err = RunOptions::from_flags(None, Some("1m"), Some("/s".into()), cmd())
            .unwrap_err()
            .to_string();
        assert!(err.contains("--socket"), "{err}");
        let o = RunOptions::from_flags(Some("30s"), Some("1h"), None, cmd()).unwrap();
        assert_eq!(o.wait, Duration::from_secs(30));
        assert_eq!(o.once_per, Some(Duration::from_secs(3600)));
    }
}
