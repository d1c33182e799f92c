//! The election on etcd: one lease-bound candidate key per replica, lowest create revision
//! leads, each waiting replica watches only its predecessor.
//!
//! [`Driver`] runs the algorithm as one task and publishes what it knows as an
//! [`ElectionView`] on a `watch` channel; it never decides what the role *means* for the child
//! process — that is the [`role`] state machine's job, driven by the daemon's owner task.
//!
//! Invariants:
//! - A session's keepalive task runs before the candidate key is created, and its replies are
//!   always read; the view's `last_ok_sent` is when the last *successful* keepalive (or the
//!   grant itself) was sent, so `last_ok_sent + ttl` is a lower bound of the lease's expiry.
//! - `Position::Leading` is published only right after a read from etcd showed our key as the
//!   lowest create revision, and it carries that revision: the fencing token.
//! - Every write to a candidate key is guarded by a compare on its create revision.

pub mod etcd;
pub mod keys;
pub mod role;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use etcd_client::{Client, EventType, WatchOptions};
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, mpsc, oneshot, watch};
use tokio::time::{Instant, sleep, timeout};
use tracing::{debug, info, trace, warn};

use crate::config::Timing;
use crate::metrics::Metrics;
use etcd::{Backoff, Candidate, EtcdError};

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
        }
    }
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
#[derive(Debug, Clone, PartialEq)]
pub enum Position {
    /// No session yet (granting a lease or creating the key).
    Joining,
    /// Our key exists and is not the lowest; `leader` is the lowest one.
    Waiting { leader: Option<LeaderInfo> },
    /// Our key is the lowest; `token` is its create revision.
    Leading { token: i64, leader: LeaderInfo },
    /// Left the election on request and not campaigning.
    Paused,
    /// The driver has finished (shutdown).
    Stopped,
}

impl Position {
    /// The position once our session is gone: a follower keeps its last known leader (a stale
    /// view, flagged by `reachable`) until a fresh read replaces it; a leader knows nothing.
    fn without_session(&self) -> Position {
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
    /// Predecessor wake-ups: how often this replica re-read the election because the key it
    /// waited on went away (the "no thundering herd" figure).
    pub wakeups: u64,
}

impl ElectionView {
    fn new() -> ElectionView {
        ElectionView {
            lease: None,
            position: Position::Joining,
            last_ok_sent: None,
            reachable: false,
            last_contact: None,
            revision: 0,
            wakeups: 0,
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
}

/// A handle for sending commands to a running driver.
#[derive(Clone)]
pub struct DriverHandle {
    tx: mpsc::Sender<DriverCommand>,
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
}

/// Settings the driver needs.
#[derive(Debug, Clone)]
pub struct DriverConfig {
    pub election: String,
    pub member: MemberInfo,
    pub timing: Timing,
}

/// Keepalive task reports.
#[derive(Debug)]
enum KeepaliveEvent {
    Ok { sent: Instant },
    Failed(EtcdError),
    Gone,
}

/// Aborts a spawned task when dropped, so a session's keepalive never outlives it.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// How a campaign within one session ended.
#[derive(Debug)]
enum CampaignEnd {
    /// Our key or lease is gone at etcd.
    SessionLost(String),
    /// A non-retryable error.
    Fatal(EtcdError),
}

/// Runs the election for one replica.
pub struct Driver {
    client: Client,
    cfg: DriverConfig,
    view: watch::Sender<ElectionView>,
    commands: mpsc::Receiver<DriverCommand>,
    recheck: Arc<Notify>,
    metrics: Option<Metrics>,
    pace: Pace,
}

impl Driver {
    /// Create a driver; run it with [`Driver::run`]. The receiver observes its view.
    pub fn new(
        client: Client,
        cfg: DriverConfig,
    ) -> (Driver, DriverHandle, watch::Receiver<ElectionView>) {
        let (view, view_rx) = watch::channel(ElectionView::new());
        let (tx, commands) = mpsc::channel(8);
        let pace = Pace::new(&cfg.timing);
        (
            Driver {
                client,
                cfg,
                view,
                commands,
                recheck: Arc::new(Notify::new()),
                metrics: None,
                pace,
            },
            DriverHandle { tx },
            view_rx,
        )
    }

    /// Record keepalive round trips and etcd errors in `metrics`.
    pub fn with_metrics(mut self, metrics: Metrics) -> Driver {
        self.metrics = Some(metrics);
        self
    }

    /// Run until told to stop, or until an unrecoverable error (returned).
    pub async fn run(mut self) -> Result<(), EtcdError> {
        let mut after = After::Rejoin;
        loop {
            match after {
                After::Stop => {
                    self.view.send_modify(|v| {
                        v.position = Position::Stopped;
                        v.lease = None;
                    });
                    return Ok(());
                }
                After::Pause => {
                    self.view.send_modify(|v| {
                        v.position = Position::Paused;
                        v.lease = None;
                        v.last_ok_sent = None;
                    });
                    after = self.paused().await;
                    continue;
                }
                After::RejoinAfter(delay) => {
                    after = self.wait_to_rejoin(delay).await;
                    continue;
                }
                After::Rejoin => {}
            }
            after = self.session().await?;
        }
    }

    /// Stay out of the election for `delay`, answering commands meanwhile.
    /// (Entered only after a release, which already cleared the view's session.)
    async fn wait_to_rejoin(&mut self, delay: Duration) -> After {
        let until = Instant::now() + delay;
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(until) => return After::Rejoin,
                cmd = self.commands.recv() => {
                    if let Some(after) = answer_without_session(cmd) {
                        return after;
                    }
                }
            }
        }
    }

    /// Wait in the paused state for a resume or a stop.
    async fn paused(&mut self) -> After {
        loop {
            match self.commands.recv().await {
                Some(DriverCommand::Resume { reply }) => {
                    let _ = reply.send(());
                    return After::Rejoin;
                }
                cmd => {
                    if answer_without_session(cmd) == Some(After::Stop) {
                        return After::Stop;
                    }
                }
            }
        }
    }

    fn mark_error(&self, e: &EtcdError) {
        debug!(error = %e, kind = e.kind(), "etcd call failed");
        if let Some(m) = &self.metrics {
            m.etcd_errors.with_label_values(&[e.kind()]).inc();
        }
        self.view.send_if_modified(|v| {
            let was = v.reachable;
            v.reachable = false;
            was
        });
    }

    fn mark_contact(&self, revision: Option<i64>) {
        self.view.send_modify(|v| {
            v.reachable = true;
            v.last_contact = Some(Instant::now());
            if let Some(r) = revision {
                v.revision = v.revision.max(r);
            }
        });
    }

    /// Grant a lease, retrying with backoff; commands may interrupt.
    async fn grant(&mut self) -> Result<Result<(i64, Instant), After>, EtcdError> {
        let t = self.cfg.timing;
        let mut backoff = Backoff::new(
            Duration::from_millis(100),
            t.keepalive_interval.max(Duration::from_secs(1)),
        );
        loop {
            let sent = Instant::now();
            let attempt = etcd::grant(&self.client, t.ttl, self.pace.now());
            tokio::select! {
                r = attempt => match self.pace.note(sent, r) {
                    Ok(lease) => return Ok(Ok((lease, sent))),
                    Err(e) if e.is_fatal() => return Err(e),
                    Err(e) => self.mark_error(&e),
                },
                cmd = self.commands.recv() => if let Some(after) = answer_without_session(cmd) {
                    return Ok(Err(after));
                },
            }
            tokio::select! {
                _ = sleep(backoff.delay()) => {}
                cmd = self.commands.recv() => if let Some(after) = answer_without_session(cmd) {
                    return Ok(Err(after));
                },
            }
        }
    }

    /// One session: lease, keepalive, candidate key, campaign; returns what to do next.
    async fn session(&mut self) -> Result<After, EtcdError> {
        self.forget_session();
        let (lease, sent) = match self.grant().await? {
            Ok(g) => g,
            Err(after) => return Ok(after),
        };
        self.mark_contact(None);
        self.view.send_modify(|v| {
            v.lease = Some(lease);
            v.last_ok_sent = v.last_ok_sent.max(Some(sent));
        });
        let key = keys::candidate_key(&self.cfg.election, lease);
        debug!(lease = format!("{lease:x}"), key, "session started");

        let (ka_tx, mut ka_rx) = mpsc::channel(4);
        let _keepalive = AbortOnDrop(tokio::spawn(keepalive(
            self.client.clone(),
            lease,
            self.cfg.timing,
            self.pace.clone(),
            ka_tx,
        )));

        let ctx = CampaignCtx {
            client: &self.client,
            cfg: &self.cfg,
            pace: &self.pace,
            view: &self.view,
            metrics: self.metrics.as_ref(),
        };
        let campaign = campaign(ctx, lease, key.clone(), self.recheck.clone());
        tokio::pin!(campaign);
        let after = loop {
            tokio::select! {
                end = &mut campaign => match end {
                    CampaignEnd::SessionLost(why) => {
                        info!(lease = format!("{lease:x}"), reason = %why, "election session lost; rejoining with a fresh lease");
                        break After::Rejoin;
                    }
                    CampaignEnd::Fatal(e) => return Err(e),
                },
                ev = ka_rx.recv() => match ev {
                    Some(KeepaliveEvent::Ok { sent }) => {
                        if let Some(m) = &self.metrics {
                            m.keepalive_rtt.observe(sent.elapsed().as_secs_f64());
                        }
                        let restored = !self.view.borrow().reachable;
                        self.view.send_modify(|v| {
                            v.last_ok_sent = v.last_ok_sent.max(Some(sent));
                            v.reachable = true;
                            v.last_contact = Some(Instant::now());
                        });
                        if restored {
                            // Watches may have died with the connection: read afresh.
                            self.recheck.notify_one();
                        }
                    }
                    Some(KeepaliveEvent::Failed(e)) => {
                        if e.is_fatal() {
                            return Err(e);
                        }
                        if let Some(m) = &self.metrics {
                            m.keepalive_failures.inc();
                        }
                        self.mark_error(&e);
                    }
                    Some(KeepaliveEvent::Gone) | None => {
                        info!(lease = format!("{lease:x}"), "lease expired or revoked at etcd; rejoining with a fresh lease");
                        break After::Rejoin;
                    }
                },
                cmd = self.commands.recv() => match cmd {
                    None => break After::Stop,
                    Some(DriverCommand::Release { after, reply }) => {
                        self.release(lease).await;
                        let _ = reply.send(());
                        return Ok(after);
                    }
                    Some(DriverCommand::Resume { reply }) => { let _ = reply.send(()); }
                },
            }
        };
        // Session over: make sure the old lease is gone before a new one is granted.
        self.release(lease).await;
        Ok(after)
    }

    /// Revoke the session's lease, which deletes our candidate key with it in one step. Best
    /// effort and bounded: if etcd is unreachable the lease expires after its TTL.
    async fn release(&self, lease: i64) {
        match etcd::revoke(&self.client, lease, self.pace.now()).await {
            Ok(()) => debug!(lease = format!("{lease:x}"), "lease revoked"),
            Err(e) => {
                warn!(lease = format!("{lease:x}"), error = %e, "could not revoke lease; it expires after its TTL")
            }
        }
        self.forget_session();
    }

    /// The view without a session: no lease, no keepalive, no position that needs one.
    fn forget_session(&self) {
        self.view.send_modify(|v| {
            v.position = v.position.without_session();
            v.lease = None;
            v.last_ok_sent = None;
        });
    }
}

/// Answer a command received while no session exists (nothing to release); returns what to
/// do next if the command ends the attempt.
fn answer_without_session(cmd: Option<DriverCommand>) -> Option<After> {
    match cmd {
        None => Some(After::Stop),
        Some(DriverCommand::Release { after, reply }) => {
            let _ = reply.send(());
            Some(after)
        }
        Some(DriverCommand::Resume { reply }) => {
            let _ = reply.send(());
            None
        }
    }
}

/// How soon a failed keepalive is retried.
const KEEPALIVE_RETRY: Duration = Duration::from_millis(100);

/// How long to wait for a keepalive's reply: at least the request timeout and twice the last
/// round trip, doubled after each timeout, at most the leader budget. A late reply still proves
/// the lease was refreshed after its keepalive was sent, so a slow link keeps the lease (and the
/// role) instead of being mistaken for a lost one; a dead stream is still given up quickly.
#[derive(Debug, Clone, Copy)]
struct ReplyWait {
    floor: Duration,
    cap: Duration,
    now: Duration,
}

/// The [`ReplyWait`] of one replica, shared by its keepalive task and its campaign: a slow etcd
/// is slow for every call.
#[derive(Debug, Clone)]
struct Pace(Arc<std::sync::Mutex<ReplyWait>>);

impl Pace {
    fn new(t: &Timing) -> Pace {
        Pace(Arc::new(std::sync::Mutex::new(ReplyWait::new(t))))
    }

    fn with<T>(&self, f: impl FnOnce(&mut ReplyWait) -> T) -> T {
        // A poisoned lock only means a panic elsewhere; the value is still a valid wait.
        let mut w = self.0.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut w)
    }

    fn now(&self) -> Duration {
        self.with(|w| w.now)
    }

    fn cap(&self) -> Duration {
        self.with(|w| w.cap)
    }

    /// Learn from the outcome of a call sent at `sent`, and pass it on.
    fn note<T>(&self, sent: Instant, r: Result<T, EtcdError>) -> Result<T, EtcdError> {
        match &r {
            Ok(_) => self.with(|w| w.answered(sent.elapsed())),
            Err(EtcdError::Timeout { .. }) => self.with(ReplyWait::timed_out),
            Err(_) => {}
        }
        r
    }
}

impl ReplyWait {
    fn new(t: &Timing) -> ReplyWait {
        let floor = t.request_timeout;
        ReplyWait {
            floor,
            cap: t.leader_budget().max(floor),
            now: floor,
        }
    }

    fn answered(&mut self, rtt: Duration) {
        self.now = (rtt * 2).clamp(self.floor, self.cap);
    }

    fn timed_out(&mut self) {
        self.now = (self.now * 2).min(self.cap);
    }
}

type KeepaliveStream = (etcd_client::LeaseKeeper, etcd_client::LeaseKeepAliveStream);

/// One keepalive in flight: on an open stream or by opening one (opening sends the first
/// keepalive). It owns the stream and hands it back: `Ok(false)` means the lease is gone.
type Attempt = std::pin::Pin<
    Box<dyn Future<Output = (Result<bool, EtcdError>, Option<KeepaliveStream>)> + Send>,
>;

fn attempt(client: &Client, lease: i64, stream: Option<KeepaliveStream>) -> Attempt {
    let mut c = client.clone();
    let request = |e| EtcdError::Request {
        op: "lease keepalive",
        source: e,
    };
    Box::pin(async move {
        let Some((mut keeper, mut replies)) = stream else {
            return match c.lease_keep_alive(lease).await {
                Ok(s) => (Ok(true), Some(s)),
                Err(e) => match etcd::classify("lease keepalive", lease, e) {
                    EtcdError::LeaseGone { .. } => (Ok(false), None),
                    e => (Err(e), None),
                },
            };
        };
        if let Err(e) = keeper.keep_alive().await {
            return (Err(request(e)), None);
        }
        match replies.message().await {
            Ok(Some(resp)) => (Ok(resp.ttl() > 0), Some((keeper, replies))),
            Ok(None) => (
                Err(EtcdError::StreamClosed {
                    op: "lease keepalive",
                }),
                None,
            ),
            Err(e) => match etcd::classify("lease keepalive", lease, e) {
                EtcdError::LeaseGone { .. } => (Ok(false), None),
                e => (Err(e), None),
            },
        }
    })
}

/// An attempt whose reply timed out, still awaited: a late reply counts for the time that
/// keepalive was sent.
struct LateReply {
    attempt: Attempt,
    sent: Instant,
}

/// Wait for the late reply in `late` until `give_up` after its keepalive was sent, then drop
/// it. Returns the event a reply means, or `None` (nothing came, or an error).
async fn late_reply(late: &mut Option<LateReply>, give_up: Duration) -> Option<KeepaliveEvent> {
    let l = late.as_mut()?;
    let sent = l.sent;
    let done = tokio::time::timeout_at(sent + give_up, &mut l.attempt).await;
    *late = None;
    match done {
        Ok((Ok(true), _)) => Some(KeepaliveEvent::Ok { sent }),
        Ok((Ok(false), _)) => Some(KeepaliveEvent::Gone),
        _ => None,
    }
}

/// Keep `lease` alive: one keepalive every interval, each reply awaited for a [`ReplyWait`].
/// After a failure the next attempt goes out soon on a fresh stream (opening it is itself a
/// keepalive), which may reach another member; an attempt that merely timed out is still
/// awaited meanwhile, and its late reply counts for the time its keepalive was sent.
async fn keepalive(
    client: Client,
    lease: i64,
    t: Timing,
    pace: Pace,
    tx: mpsc::Sender<KeepaliveEvent>,
) {
    let mut stream: Option<KeepaliveStream> = None;
    let mut late: Option<LateReply> = None;
    let mut ticker = tokio::time::interval(t.keepalive_interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await; // the grant itself was the first keepalive
    loop {
        // Everything below waits on etcd; a late reply is taken whenever it comes.
        {
            let mut tick = std::pin::pin!(ticker.tick());
            loop {
                tokio::select! {
                    _ = &mut tick => break,
                    Some(ev) = late_reply(&mut late, pace.cap()), if late.is_some() => {
                        if !report(&tx, ev, &pace).await {
                            return;
                        }
                    }
                }
            }
        }
        let sent = Instant::now();
        let mut current = attempt(&client, lease, stream.take());
        let give_up = tokio::time::sleep(pace.now());
        tokio::pin!(give_up);
        let result = loop {
            tokio::select! {
                (r, s) = &mut current => {
                    stream = s;
                    break r;
                }
                _ = &mut give_up => {
                    let after = pace.now();
                    pace.with(ReplyWait::timed_out);
                    // A newer attempt replaces an older late one: its reply counts for more.
                    late = Some(LateReply { attempt: current, sent });
                    break Err(EtcdError::Timeout { op: "lease keepalive", after });
                }
                Some(ev) = late_reply(&mut late, pace.cap()), if late.is_some() => {
                    if !report(&tx, ev, &pace).await {
                        return;
                    }
                }
            }
        };
        let event = match result {
            Ok(true) => KeepaliveEvent::Ok { sent },
            Ok(false) => KeepaliveEvent::Gone,
            Err(e) => {
                // Retry soon instead of a whole interval later: the failed stream may have
                // been bound to a dead or frozen member, and a fresh one can go to another.
                ticker.reset_at(Instant::now() + KEEPALIVE_RETRY);
                KeepaliveEvent::Failed(e)
            }
        };
        if !report(&tx, event, &pace).await {
            return;
        }
    }
}

/// Hand a keepalive event to the session, adapting the reply wait to a success's round trip.
/// Returns false when the keepalive task should end.
async fn report(tx: &mpsc::Sender<KeepaliveEvent>, event: KeepaliveEvent, pace: &Pace) -> bool {
    if let KeepaliveEvent::Ok { sent } = &event {
        trace!(rtt = ?sent.elapsed(), "keepalive ok");
        pace.with(|w| w.answered(sent.elapsed()));
    }
    let gone = matches!(event, KeepaliveEvent::Gone);
    tx.send(event).await.is_ok() && !gone
}

/// What a campaign borrows from its driver.
struct CampaignCtx<'a> {
    client: &'a Client,
    cfg: &'a DriverConfig,
    pace: &'a Pace,
    view: &'a watch::Sender<ElectionView>,
    metrics: Option<&'a Metrics>,
}

/// Create our key, then repeatedly read the election and wait for the next relevant change.
/// Returns only when the session is lost or on a fatal error; transient errors are retried.
async fn campaign(
    ctx: CampaignCtx<'_>,
    lease: i64,
    key: String,
    recheck: Arc<Notify>,
) -> CampaignEnd {
    let CampaignCtx {
        client,
        cfg,
        pace,
        view,
        metrics,
    } = ctx;
    let t = cfg.timing;
    let prefix = keys::election_prefix(&cfg.election);
    let value = serde_json::to_string(&cfg.member).expect("invariant: MemberInfo serialises");
    let mut backoff = Backoff::new(
        Duration::from_millis(50),
        t.keepalive_interval.max(Duration::from_millis(500)),
    );
    let mark_error = |e: &EtcdError| {
        debug!(error = %e, kind = e.kind(), "etcd call failed during campaign");
        if let Some(m) = metrics {
            m.etcd_errors.with_label_values(&[e.kind()]).inc();
        }
        view.send_if_modified(|v| std::mem::replace(&mut v.reachable, false));
    };

    let own_revision = loop {
        let sent = Instant::now();
        let created = etcd::create_candidate(client, &key, &value, lease, pace.now()).await;
        match pace.note(sent, created) {
            Ok(rev) => break rev,
            Err(EtcdError::LeaseGone { .. }) => {
                return CampaignEnd::SessionLost("lease gone before the key was created".into());
            }
            Err(e) if e.is_fatal() => return CampaignEnd::Fatal(e),
            Err(e) => {
                mark_error(&e);
                sleep(backoff.delay()).await;
            }
        }
    };
    debug!(key, own_revision, "candidate key created");

    loop {
        let sent = Instant::now();
        let read = etcd::snapshot(client, &prefix, &key, own_revision, pace.now()).await;
        let snap = match pace.note(sent, read) {
            Ok(s) => s,
            Err(e) if e.is_fatal() => return CampaignEnd::Fatal(e),
            Err(e) => {
                mark_error(&e);
                sleep(backoff.delay()).await;
                continue;
            }
        };
        backoff = Backoff::new(
            Duration::from_millis(50),
            t.keepalive_interval.max(Duration::from_millis(500)),
        );
        let own = match &snap.own {
            Some(own) if own.create_revision == own_revision => own.clone(),
            _ => return CampaignEnd::SessionLost(format!("candidate key {key} is gone")),
        };
        let leader = snap.leader.as_ref().map(LeaderInfo::from_candidate);
        let position = match (&snap.predecessor, leader) {
            (None, _) => Position::Leading {
                token: own_revision,
                leader: LeaderInfo::from_candidate(&own),
            },
            (Some(_), leader) => Position::Waiting { leader },
        };
        view.send_modify(|v| {
            v.reachable = true;
            v.last_contact = Some(Instant::now());
            v.revision = v.revision.max(snap.revision);
            v.position = position.clone();
        });

        // Watch our key, our predecessor and (to report it) the leader, from just after the
        // revision we read, so no change in between is missed.
        let mut watch_keys = vec![key.clone()];
        if let Some(p) = &snap.predecessor {
            watch_keys.push(p.key.clone());
        }
        if let Some(l) = &snap.leader
            && !watch_keys.contains(&l.key)
        {
            watch_keys.push(l.key.clone());
        }
        let pred_key = snap.predecessor.as_ref().map(|p| p.key.clone());
        match wait_for_change(
            client,
            &watch_keys,
            snap.revision + 1,
            &key,
            pred_key.as_deref(),
            &recheck,
        )
        .await
        {
            Ok(Change::OwnKeyGone) => {
                return CampaignEnd::SessionLost(format!("candidate key {key} was deleted"));
            }
            Ok(Change::PredecessorGone) => {
                view.send_modify(|v| v.wakeups += 1);
                trace!("predecessor gone; re-reading the election");
            }
            Ok(Change::Other) => {}
            Err(e) if e.is_fatal() => return CampaignEnd::Fatal(e),
            Err(e) => {
                mark_error(&e);
                sleep(backoff.delay()).await;
            }
        }
    }
}

enum Change {
    OwnKeyGone,
    PredecessorGone,
    Other,
}

/// Watch `keys` from `start_revision` until one of them changes, or a recheck is requested.
async fn wait_for_change(
    client: &Client,
    keys: &[String],
    start_revision: i64,
    own_key: &str,
    pred_key: Option<&str>,
    recheck: &Notify,
) -> Result<Change, EtcdError> {
    let mut c = client.clone();
    let opts = WatchOptions::new().with_start_revision(start_revision);
    let t = Duration::from_secs(5);
    let open = async {
        let mut stream = c.watch(keys[0].as_str(), Some(opts.clone())).await?;
        for k in &keys[1..] {
            stream.watch(k.as_str(), Some(opts.clone())).await?;
        }
        Ok::<_, etcd_client::Error>(stream)
    };
    let mut stream = tokio::select! {
        r = timeout(t, open) => match r {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return Err(EtcdError::Request { op: "watch", source: e }),
            Err(_) => return Err(EtcdError::Timeout { op: "watch", after: t }),
        },
        _ = recheck.notified() => return Ok(Change::Other),
    };
    loop {
        let msg = tokio::select! {
            m = stream.message() => m,
            _ = recheck.notified() => return Ok(Change::Other),
        };
        let resp = match msg {
            Ok(Some(r)) => r,
            Ok(None) => return Err(EtcdError::StreamClosed { op: "watch" }),
            Err(e) => {
                return Err(EtcdError::Request {
                    op: "watch",
                    source: e,
                });
            }
        };
        if resp.canceled() {
            // Compacted or refused: read the election afresh.
            debug!(reason = resp.cancel_reason(), "watch canceled");
            return Ok(Change::Other);
        }
        let mut change = None;
        for ev in resp.events() {
            let Some(kv) = ev.kv() else { continue };
            let k = String::from_utf8_lossy(kv.key());
            let deleted = ev.event_type() == EventType::Delete;
            if k == own_key && deleted {
                return Ok(Change::OwnKeyGone);
            }
            if Some(k.as_ref()) == pred_key && deleted {
                change = Some(Change::PredecessorGone);
            } else if change.is_none() && k != own_key {
                change = Some(Change::Other);
            }
        }
        if let Some(c) = change {
            return Ok(c);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reply_wait_follows_the_round_trip_and_backs_off_within_the_leader_budget() {
        // TTL 3 s, grace 1 s: request timeout 500 ms, leader budget 1.7 s.
        let t = Timing::new(Duration::from_secs(3), Duration::from_secs(1));
        let mut w = ReplyWait::new(&t);
        assert_eq!(w.now, Duration::from_millis(500));
        // A fast link keeps the request timeout.
        w.answered(Duration::from_millis(5));
        assert_eq!(w.now, Duration::from_millis(500));
        // A slow link: the first slow reply is missed, the retry waits twice as long...
        w.timed_out();
        assert_eq!(w.now, Duration::from_secs(1));
        // ...and once one arrives, twice its round trip.
        w.answered(Duration::from_millis(600));
        assert_eq!(w.now, Duration::from_millis(1200));
        // Never beyond the budget: past it the role is lost anyway.
        w.timed_out();
        w.timed_out();
        assert_eq!(w.now, Duration::from_millis(1700));
        w.answered(Duration::from_secs(5));
        assert_eq!(w.now, Duration::from_millis(1700));
        // Back to the floor when the link is fast again.
        w.answered(Duration::from_millis(2));
        assert_eq!(w.now, Duration::from_millis(500));
    }

    #[test]
    fn pace_learns_from_timeouts_and_answers_but_not_from_other_errors() {
        let t = Timing::new(Duration::from_secs(3), Duration::from_secs(1));
        let pace = Pace::new(&t);
        let timeout = EtcdError::Timeout {
            op: "election read",
            after: pace.now(),
        };
        let refused = EtcdError::StreamClosed { op: "watch" };
        assert!(pace.note::<()>(Instant::now(), Err(timeout)).is_err());
        assert_eq!(pace.now(), Duration::from_secs(1));
        assert!(pace.note::<()>(Instant::now(), Err(refused)).is_err());
        assert_eq!(pace.now(), Duration::from_secs(1));
        assert_eq!(pace.note(Instant::now(), Ok(7)).unwrap(), 7);
        assert_eq!(pace.now(), Duration::from_millis(500));
        // Shared: a clone sees the same wait.
        let other = pace.clone();
        other.with(ReplyWait::timed_out);
        assert_eq!(pace.now(), Duration::from_secs(1));
        assert_eq!(pace.cap(), Duration::from_millis(1700));
    }
}
