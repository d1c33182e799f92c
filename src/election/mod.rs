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
}

impl Driver {
    /// Create a driver; run it with [`Driver::run`]. The receiver observes its view.
    pub fn new(
        client: Client,
        cfg: DriverConfig,
    ) -> (Driver, DriverHandle, watch::Receiver<ElectionView>) {
        let (view, view_rx) = watch::channel(ElectionView::new());
        let (tx, commands) = mpsc::channel(8);
        (
            Driver {
                client,
                cfg,
                view,
                commands,
                recheck: Arc::new(Notify::new()),
                metrics: None,
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
    async fn wait_to_rejoin(&mut self, delay: Duration) -> After {
        self.view.send_modify(|v| {
            v.position = v.position.without_session();
            v.lease = None;
            v.last_ok_sent = None;
        });
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
            let attempt = etcd::grant(&self.client, t.ttl, t.request_timeout);
            tokio::select! {
                r = attempt => match r {
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
        self.view.send_modify(|v| {
            v.position = v.position.without_session();
            v.lease = None;
            v.last_ok_sent = None;
        });
        let (lease, sent) = match self.grant().await? {
            Ok(g) => g,
            Err(after) => return Ok(after),
        };
        self.mark_contact(None);
        self.view.send_modify(|v| {
            v.lease = Some(lease);
            v.last_ok_sent = Some(sent);
        });
        let key = keys::candidate_key(&self.cfg.election, lease);
        debug!(lease = format!("{lease:x}"), key, "session started");

        let (ka_tx, mut ka_rx) = mpsc::channel(4);
        let _keepalive = AbortOnDrop(tokio::spawn(keepalive(
            self.client.clone(),
            lease,
            self.cfg.timing,
            ka_tx,
        )));

        let campaign = campaign(
            &self.client,
            &self.cfg,
            &self.view,
            lease,
            key.clone(),
            self.recheck.clone(),
            self.metrics.as_ref(),
        );
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
                            v.last_ok_sent = Some(sent);
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
        let t = self.cfg.timing.request_timeout;
        match etcd::revoke(&self.client, lease, t).await {
            Ok(()) => debug!(lease = format!("{lease:x}"), "lease revoked"),
            Err(e) => {
                warn!(lease = format!("{lease:x}"), error = %e, "could not revoke lease; it expires after its TTL")
            }
        }
        self.view.send_modify(|v| {
            v.lease = None;
            v.last_ok_sent = None;
            v.position = v.position.without_session();
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

/// Keep `lease` alive: one keepalive every interval, each reply awaited with a deadline. The
/// reply stream is re-opened after any failure (opening it is itself a keepalive).
async fn keepalive(client: Client, lease: i64, t: Timing, tx: mpsc::Sender<KeepaliveEvent>) {
    let mut stream: Option<(etcd_client::LeaseKeeper, etcd_client::LeaseKeepAliveStream)> = None;
    let mut ticker = tokio::time::interval(t.keepalive_interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await; // the grant itself was the first keepalive
    loop {
        ticker.tick().await;
        let sent = Instant::now();
        let result = match stream.as_mut() {
            None => {
                let mut c = client.clone();
                let open = c.lease_keep_alive(lease);
                match etcd::bounded("lease keepalive", t.request_timeout, lease, open).await {
                    Ok(s) => {
                        stream = Some(s);
                        Ok(true)
                    }
                    Err(EtcdError::LeaseGone { .. }) => Ok(false),
                    Err(e) => Err(e),
                }
            }
            Some((keeper, replies)) => match keeper.keep_alive().await {
                Err(e) => Err(EtcdError::Request {
                    op: "lease keepalive",
                    source: e,
                }),
                Ok(()) => {
                    let reply = replies.message();
                    match etcd::bounded("lease keepalive", t.request_timeout, lease, reply).await {
                        Ok(Some(resp)) => Ok(resp.ttl() > 0),
                        Ok(None) => Err(EtcdError::StreamClosed {
                            op: "lease keepalive",
                        }),
                        Err(EtcdError::LeaseGone { .. }) => Ok(false),
                        Err(e) => Err(e),
                    }
                }
            },
        };
        let event = match result {
            Ok(true) => {
                trace!(lease = format!("{lease:x}"), "keepalive ok");
                KeepaliveEvent::Ok { sent }
            }
            Ok(false) => KeepaliveEvent::Gone,
            Err(e) => {
                stream = None;
                // Retry soon instead of a whole interval later: the failed stream may have
                // been bound to a dead or frozen member, and a fresh one can go to another.
                ticker.reset_at(Instant::now() + KEEPALIVE_RETRY);
                KeepaliveEvent::Failed(e)
            }
        };
        let gone = matches!(event, KeepaliveEvent::Gone);
        if tx.send(event).await.is_err() || gone {
            return;
        }
    }
}

/// Create our key, then repeatedly read the election and wait for the next relevant change.
/// Returns only when the session is lost or on a fatal error; transient errors are retried.
async fn campaign(
    client: &Client,
    cfg: &DriverConfig,
    view: &watch::Sender<ElectionView>,
    lease: i64,
    key: String,
    recheck: Arc<Notify>,
    metrics: Option<&Metrics>,
) -> CampaignEnd {
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
        match etcd::create_candidate(client, &key, &value, lease, t.request_timeout).await {
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
        let snap =
            match etcd::snapshot(client, &prefix, &key, own_revision, t.request_timeout).await {
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
