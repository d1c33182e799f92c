//! The election contract, backend-neutral: what a replica knows about the election
//! ([`ElectionView`], [`Position`], [`LeaderInfo`], [`MemberInfo`]), the commands a backend's
//! driver obeys ([`DriverHandle`], [`After`]), and the [`Telemetry`] a driver reports to. The
//! only backend today is etcd ([`etcd`]): lease-bound candidate keys, lowest create revision
//! leads, each waiting replica watches only its predecessor. What a view *means* for the
//! wrapped command is decided by the pure [`role`] state machine, run by
//! [`crate::leadership`].
//!
//! A backend's driver keeps these invariants:
//! - a session's lease is kept alive from before the candidate key exists, and the view's
//!   `last_ok_sent` is when the last *successful* keepalive (or the grant itself) was sent, so
//!   `last_ok_sent + ttl` is a lower bound of the lease's expiry;
//! - `Position::Leading` is published only when the backend showed our key as the lowest
//!   create revision, and it carries that revision: the fencing token;
//! - every write to a candidate key is guarded by a compare on its create revision.

pub mod candidacy;
pub mod etcd;
pub mod keys;
pub mod queue;
pub mod role;

use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::config::Timing;

/// A candidate key as read from the backend.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    pub key: String,
    pub value: String,
    pub create_revision: i64,
    pub lease: i64,
}

/// Every candidate in queue order (lowest create revision first), read at `revision`, and the
/// keys under the prefix that are not candidates.
#[derive(Debug, Clone, PartialEq)]
pub struct MemberList {
    pub revision: i64,
    pub candidates: Vec<Candidate>,
    pub foreign: Vec<(Candidate, queue::Foreign)>,
}

impl MemberList {
    /// Sort a read of the election's prefix the way the queue does.
    pub fn from_read(election: &str, revision: i64, keys: Vec<Candidate>) -> MemberList {
        let mut q = queue::Queue::new(election);
        q.reset(revision, keys);
        MemberList {
            revision,
            candidates: q.candidates().cloned().collect(),
            foreign: q.foreign().map(|(c, w)| (c.clone(), w)).collect(),
        }
    }
}

/// What a candidate key's value says about its replica (JSON).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MemberInfo {
    pub id: String,
    #[serde(default)]
    pub http: Option<String>,
    #[serde(default)]
    pub host: Option<String>,
    #[serde(default)]
    pub pid: Option<u32>,
    #[serde(default)]
    pub started: Option<String>,
    /// Among eligible candidates the highest leads (absent: [`candidacy::DEFAULT_PRIORITY`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<u32>,
    /// Written by a leader handing leadership to the candidate at this key (a switchover).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handoff_to: Option<String>,
    /// HOST:PORT of this replica's app (`--advertise`): where clients reach it when it leads.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub advertise: Option<String>,
    /// The clean-release mark: written into its own key by a leader that gives up leadership on
    /// purpose once its command is stopped (or, without one, its app's budget has run out), just
    /// before the lease is revoked. A key with it has left the queue; a successor starts at once.
    /// A leader's key that vanishes without it makes the successor wait its start guard.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub released: bool,
}

impl MemberInfo {
    pub fn new(id: &str, http: Option<String>) -> MemberInfo {
        MemberInfo {
            id: id.to_string(),
            http,
            host: nix::unistd::gethostname()
                .ok()
                .and_then(|h| h.into_string().ok()),
            pid: Some(std::process::id()),
            started: Some(humantime::format_rfc3339_seconds(SystemTime::now()).to_string()),
            priority: None,
            handoff_to: None,
            advertise: None,
            released: false,
        }
    }

    /// This member's value with the clean-release mark.
    pub fn released(&self) -> MemberInfo {
        MemberInfo {
            released: true,
            handoff_to: None,
            ..self.clone()
        }
    }

    /// Whether a candidate key's value carries the clean-release mark. Decided here, once.
    pub fn released_in(value: &str) -> bool {
        #[derive(Deserialize)]
        struct Mark {
            #[serde(default)]
            released: bool,
        }
        serde_json::from_str::<Mark>(value).is_ok_and(|m| m.released)
    }

    pub fn with_advertise(mut self, advertise: Option<String>) -> MemberInfo {
        self.advertise = advertise;
        self
    }

    pub fn with_priority(mut self, priority: u32) -> MemberInfo {
        self.priority = Some(priority);
        self
    }
}

/// The variable that names a term's leader key to the wrapped command. Every process of the
/// command's tree inherits it, so the freeze watchdog finds them by it.
pub const LEADER_KEY_VAR: &str = "ELECTD_LEADER_KEY";

/// What it takes to hand a leader's term over once its process has died: its lease, its
/// candidate key with that key's create revision (the fencing token), and the key's value with
/// the clean-release mark. The freeze watchdog holds it while this replica leads.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Handover {
    pub lease: i64,
    pub key: String,
    pub revision: i64,
    pub mark: String,
}

/// The current leader as seen in etcd.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LeaderInfo {
    /// The member id from the key's value (or the raw value if it is not our JSON).
    pub id: String,
    pub key: String,
    /// The fencing token: the leader key's create revision.
    pub create_revision: i64,
    pub member: Option<MemberInfo>,
}

impl LeaderInfo {
    pub fn from_candidate(c: &Candidate) -> LeaderInfo {
        let member = serde_json::from_str::<MemberInfo>(&c.value).ok();
        LeaderInfo {
            id: member
                .as_ref()
                .map(|m| m.id.clone())
                .unwrap_or_else(|| c.value.clone()),
            key: c.key.clone(),
            create_revision: c.create_revision,
            member,
        }
    }
}

/// Where this replica stands in the election, as last read from etcd.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum Position {
    /// No session yet (granting a lease or creating the key).
    #[default]
    Joining,
    /// Our key exists and is not the lowest; `leader` is the lowest one.
    Waiting { leader: Option<LeaderInfo> },
    /// Our key is the lowest; `token` is its create revision.
    Leading { token: i64, leader: LeaderInfo },
    /// Our key is the lowest, but the leader before it vanished without the clean-release mark
    /// (or this replica does not know how it left: it has just started): this replica does not
    /// lead before `until`, when the start guard ends — time for a deposed leader that saw its
    /// key go to have killed its command.
    Guarded { until: Instant },
    /// Out of the queue on purpose (not eligible: a failing health check, an observer), still
    /// watching who leads.
    Observing { leader: Option<LeaderInfo> },
    /// Left the election on request and not campaigning.
    Paused,
    /// The driver has finished (shutdown).
    Stopped,
}

impl Position {
    /// The position once our session is gone: a follower keeps its last known leader (a stale
    /// view, flagged by `reachable`) until a fresh read replaces it; a leader knows nothing.
    pub(crate) fn without_session(&self) -> Position {
        match self {
            Position::Waiting {
                leader: Some(leader),
            } => Position::Waiting {
                leader: Some(leader.clone()),
            },
            _ => Position::Joining,
        }
    }
}

/// Everything the driver knows, published on every change.
#[derive(Debug, Clone)]
pub struct ElectionView {
    /// The lease of the current session, if one was granted.
    pub lease: Option<i64>,
    pub position: Position,
    /// When the last successful keepalive for `lease` was sent.
    pub last_ok_sent: Option<Instant>,
    /// Whether the last etcd call succeeded.
    pub reachable: bool,
    /// When etcd last answered.
    pub last_contact: Option<Instant>,
    /// The last etcd revision seen.
    pub revision: i64,
    /// Predecessor wake-ups: how often the key right before this replica's went away.
    pub wakeups: u64,
    /// While leading: the candidate (member id) this leader should hand leadership to now — a
    /// switchover target, or a candidate of higher priority that waited its takeover delay.
    pub handoff: Option<String>,
    /// Why this replica must not lead whatever the queue says (etcd's history was rewound).
    pub refusal: Option<String>,
}

impl ElectionView {
    pub(crate) fn new() -> ElectionView {
        ElectionView {
            lease: None,
            position: Position::Joining,
            last_ok_sent: None,
            reachable: false,
            last_contact: None,
            revision: 0,
            wakeups: 0,
            handoff: None,
            refusal: None,
        }
    }
}

/// What to do after giving up the current session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum After {
    /// Campaign again with a fresh lease (at the back of the queue).
    Rejoin,
    /// Stay out of the election this long, then campaign again (a stop or a pause meanwhile
    /// is obeyed at once).
    RejoinAfter(Duration),
    /// Stay out of the election until resumed.
    Pause,
    /// Stay out of the queue, watching who leads, until resumed (this replica may not lead).
    Observe,
    /// Stop the driver.
    Stop,
}

/// Requests to the driver; each is answered once done.
#[derive(Debug)]
pub enum DriverCommand {
    /// Give up the current session (delete our key, revoke the lease), then do `after`.
    Release {
        after: After,
        reply: oneshot::Sender<()>,
    },
    /// Leave the paused state and campaign again.
    Resume { reply: oneshot::Sender<()> },
    /// While leading: announce, in our own candidate key, that leadership goes to the candidate
    /// whose member id is `to`; answered with its key, or why not (then nothing changed).
    HandOff {
        to: String,
        reply: oneshot::Sender<Result<String, String>>,
    },
}

/// A handle for sending commands to a running driver.
#[derive(Clone)]
pub struct DriverHandle {
    tx: mpsc::Sender<DriverCommand>,
}

impl DriverHandle {
    /// A handle and the receiver its driver reads commands from.
    pub(crate) fn channel() -> (DriverHandle, mpsc::Receiver<DriverCommand>) {
        let (tx, rx) = mpsc::channel(8);
        (DriverHandle { tx }, rx)
    }
}

impl DriverHandle {
    /// Release the session and wait until the driver has done it (or has gone).
    pub async fn release(&self, after: After) {
        let (reply, rx) = oneshot::channel();
        if self
            .tx
            .send(DriverCommand::Release { after, reply })
            .await
            .is_ok()
        {
            let _ = rx.await;
        }
    }

    pub async fn resume(&self) {
        let (reply, rx) = oneshot::channel();
        if self.tx.send(DriverCommand::Resume { reply }).await.is_ok() {
            let _ = rx.await;
        }
    }

    /// Announce a switchover to the candidate `to` (see [`DriverCommand::HandOff`]).
    pub async fn hand_off(&self, to: &str) -> Result<String, String> {
        let (reply, rx) = oneshot::channel();
        let to = to.to_string();
        if self
            .tx
            .send(DriverCommand::HandOff { to, reply })
            .await
            .is_err()
        {
            return Err("the election driver has stopped".into());
        }
        rx.await
            .unwrap_or_else(|_| Err("the election driver has stopped".into()))
    }
}

/// Settings a driver needs.
#[derive(Debug, Clone)]
pub struct DriverConfig {
    pub election: String,
    pub member: MemberInfo,
    pub timing: Timing,
    /// Start out of the queue, observing, until resumed (a replica that must first be found
    /// eligible: a health check to pass, an observer).
    pub observe_first: bool,
    /// Who may lead: this replica's priority and takeover delay.
    pub policy: candidacy::Policy,
    /// How long to wait before leading after the leader before us vanished without the
    /// clean-release mark (`--start-guard`).
    pub start_guard: Duration,
}

/// What a driver reports as it goes, for metrics. The election does not know who listens
/// (the daemon feeds Prometheus); every method defaults to doing nothing.
pub trait Telemetry: Send + Sync {
    /// A keepalive was answered after `rtt`.
    fn keepalive_ok(&self, _rtt: Duration) {}
    /// A keepalive failed or timed out.
    fn keepalive_failed(&self) {}
    /// A call to the backend failed; `kind` is a short label (`timeout`, `unavailable`, …).
    fn backend_error(&self, _kind: &'static str) {}
    /// The key right before this replica's in the queue went away.
    fn predecessor_woken(&self) {}
    /// A key under the election's prefix that is not a candidate was seen (reported once).
    fn foreign_key(&self) {}
}

/// Telemetry that goes nowhere (elect-run, benchmarks).
pub struct NoTelemetry;

impl Telemetry for NoTelemetry {}

/// The future [`MemberSource::members`] returns.
pub type MemberSourceFuture<'a> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<MemberList, String>> + Send + 'a>>;

/// Where `/members` reads every candidate of the election from.
pub trait MemberSource: Send + Sync {
    fn election(&self) -> &str;
    /// Every candidate in queue order, or why they cannot be read.
    fn members(&self) -> MemberSourceFuture<'_>;
}

/// Aborts a spawned task when dropped, so a task never outlives what it works for.
pub struct AbortOnDrop(pub tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
