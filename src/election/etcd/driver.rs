//! The driver: one task per replica that observes the election all the time (one read, one
//! watch of the whole prefix) and runs sessions back to back — grant a lease, keep it alive,
//! create the candidate key — publishing what it knows as an [`ElectionView`] and obeying the
//! owner's commands (release the session, then rejoin, wait, pause or stop). It never decides
//! what a view means for the wrapped command: that is the role machine's job.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::time::{Instant, sleep_until};
use tracing::{debug, info, warn};

use super::campaign::{CampaignEnd, create_key, position};
use super::client::Clients;
use super::error::{Backoff, EtcdError};
use super::observe::{Observe, Seen};
use super::session::{KeepaliveEvent, Pace, Session, grant, revoke};
use super::txn::update_candidate;
use crate::election::candidacy;
use crate::election::queue::{Delta, Queue};
use crate::election::{
    After, DriverCommand, DriverConfig, DriverHandle, ElectionView, LeaderInfo, NoTelemetry,
    Position, Telemetry, keys,
};

/// Runs the election for one replica.
pub struct Driver {
    clients: Clients,
    cfg: DriverConfig,
    view: watch::Sender<ElectionView>,
    commands: mpsc::Receiver<DriverCommand>,
    telemetry: Arc<dyn Telemetry>,
    pace: Pace,
    observe: Observe,
    prefs: Prefs,
    /// When a leader last left the queue without the clean-release mark (from the start: how
    /// the leader before this process left is unknown). Leading waits the start guard after it.
    unmarked_loss: Instant,
    /// When this driver started (an `unmarked_loss` of then is only not knowing).
    started: Instant,
}

/// This session's candidate key, once created.
struct Own {
    key: String,
    revision: i64,
    /// The key right before ours, if any (its leaving wakes us).
    predecessor: Option<String>,
    /// Whether `Leading` was published for it: the command may run, so giving way goes
    /// through the role machine (a hand-over), never by leaving the queue under it.
    leading: bool,
}

/// What this replica remembers for [`candidacy::verdict`].
#[derive(Default)]
struct Prefs {
    /// When each candidate key was first seen (for the takeover delay).
    first_seen: HashMap<String, Instant>,
    /// A switchover announced by a leader: the target key, and until when it may take over.
    switchover: Option<(String, Instant)>,
    /// The key that took leadership by switchover, until it leaves the queue.
    protected: Option<String>,
    /// When to decide again (a takeover delay or a switchover ends).
    review_at: Option<Instant>,
}

impl Prefs {
    /// Keep track of joins, leaves and switchovers after `delta`.
    fn note(&mut self, queue: &Queue, delta: &Delta, now: Instant, bound: Duration) {
        for k in &delta.joined {
            self.first_seen.entry(k.clone()).or_insert(now);
        }
        for k in &delta.left {
            self.first_seen.remove(k);
        }
        let head = queue.leader();
        if let Some(target) = head.and_then(candidacy::member).and_then(|m| m.handoff_to)
            && self.switchover.as_ref().is_none_or(|(t, _)| *t != target)
        {
            info!(to = %target, within = ?bound, "the leader hands leadership over (switchover)");
            self.switchover = Some((target, now + bound));
        }
        if let Some((target, until)) = &self.switchover {
            if head.is_some_and(|h| h.key == *target) {
                self.protected = Some(target.clone());
                self.switchover = None;
            } else if now >= *until || queue.get(target).is_none() {
                info!(to = %target, "switchover did not complete; the queue's order decides again");
                self.switchover = None;
            }
        }
        if let Some(p) = &self.protected
            && queue.get(p).is_none()
        {
            self.protected = None;
        }
    }
}

impl Driver {
    /// Create a driver; run it with [`Driver::run`]. The receiver observes its view.
    pub(super) fn new(
        clients: Clients,
        cfg: DriverConfig,
    ) -> (Driver, DriverHandle, watch::Receiver<ElectionView>) {
        let (view, view_rx) = watch::channel(ElectionView::new());
        let (handle, commands) = DriverHandle::channel();
        let pace = Pace::new(&cfg.timing);
        let observe = Observe::new(
            clients.clone(),
            &cfg.election,
            cfg.timing.keepalive_interval,
        );
        (
            Driver {
                clients,
                cfg,
                view,
                commands,
                telemetry: Arc::new(NoTelemetry),
                pace,
                observe,
                prefs: Prefs::default(),
                unmarked_loss: Instant::now(),
                started: Instant::now(),
            },
            handle,
            view_rx,
        )
    }

    /// Report keepalive round trips and etcd errors to `telemetry`.
    pub fn with_telemetry(mut self, telemetry: Arc<dyn Telemetry>) -> Driver {
        self.telemetry = telemetry;
        self
    }

    /// Run until told to stop, or until an unrecoverable error (returned).
    pub async fn run(mut self) -> Result<(), EtcdError> {
        let mut after = if self.cfg.observe_first {
            After::Observe
        } else {
            After::Rejoin
        };
        loop {
            match after {
                After::Stop => {
                    self.view.send_modify(|v| {
                        v.position = Position::Stopped;
                        v.lease = None;
                    });
                    return Ok(());
                }
                After::Pause | After::Observe => {
                    let leader = self
                        .observe
                        .queue()
                        .leader()
                        .map(LeaderInfo::from_candidate);
                    self.view.send_modify(|v| {
                        v.position = if after == After::Pause {
                            Position::Paused
                        } else {
                            Position::Observing { leader }
                        };
                        v.lease = None;
                        v.last_ok_sent = None;
                        v.handoff = None;
                    });
                    after = self.out_of_the_election(None).await?;
                    continue;
                }
                After::RejoinAfter(delay) => {
                    after = self
                        .out_of_the_election(Some(Instant::now() + delay))
                        .await?;
                    continue;
                }
                After::Rejoin => {}
            }
            after = self.session().await?;
        }
    }

    /// Stay out of the election — paused or observing (`until` is `None`: until resumed), or
    /// waiting to rejoin — observing it and answering commands meanwhile. (Entered only after a
    /// release, which already cleared the view's session.)
    async fn out_of_the_election(&mut self, until: Option<Instant>) -> Result<After, EtcdError> {
        loop {
            tokio::select! {
                _ = sleep_until(until.unwrap_or_else(Instant::now)), if until.is_some() => {
                    return Ok(After::Rejoin);
                }
                cmd = self.commands.recv() => match cmd {
                    Some(DriverCommand::Resume { reply }) if until.is_none() => {
                        let _ = reply.send(());
                        return Ok(After::Rejoin);
                    }
                    cmd => {
                        if let Some(after) = answer_without_session(cmd) {
                            return Ok(after);
                        }
                    }
                },
                seen = self.observe.next(&self.pace) => {
                    if let Some(delta) = self.take(seen)? {
                        self.note(&delta);
                        let _ = self.follow(None, &delta);
                    }
                }
            }
        }
    }

    /// How long a switchover may take before the queue's order decides again.
    fn switchover_bound(&self) -> Duration {
        self.cfg.timing.ttl * 2
    }

    fn note(&mut self, delta: &Delta) {
        let bound = self.switchover_bound();
        self.prefs
            .note(self.observe.queue(), delta, Instant::now(), bound);
    }

    fn mark_error(&self, e: &EtcdError) {
        mark_error(&self.view, self.telemetry.as_ref(), e);
    }

    fn mark_contact(&self, revision: Option<i64>) {
        let refusal = self.clients.refusal();
        self.view.send_modify(|v| {
            v.reachable = true;
            v.last_contact = Some(Instant::now());
            if let Some(r) = revision {
                v.revision = v.revision.max(r);
            }
            v.refusal = refusal;
        });
    }

    /// Take what the observer saw: contact, and foreign keys (each reported once). `None`
    /// after a transient error (marked; the observer retries after a backoff).
    fn take(&mut self, seen: Result<Seen, EtcdError>) -> Result<Option<Delta>, EtcdError> {
        let seen = match seen {
            Ok(s) => s,
            Err(e) if e.is_fatal() => return Err(e),
            Err(e) => {
                self.mark_error(&e);
                return Ok(None);
            }
        };
        self.mark_contact(Some(seen.revision));
        let queue = self.observe.queue();
        for key in &seen.delta.joined {
            let twin = queue
                .get(key)
                .and_then(candidacy::member)
                .is_some_and(|m| m.id == self.cfg.member.id);
            let ours = self
                .view
                .borrow()
                .lease
                .is_some_and(|l| keys::candidate_key(&self.cfg.election, l) == *key);
            if twin && !ours {
                warn!(id = %self.cfg.member.id, key, "another candidate uses this replica's id: give every replica its own --id");
            }
        }
        for d in &seen.delta.head_left {
            if d.marked {
                debug!(key = %d.key, "the leader released its key cleanly");
            } else {
                debug!(key = %d.key, "the leader's key vanished without a clean release");
                self.unmarked_loss = Instant::now();
            }
        }
        for (key, why) in &seen.delta.new_foreign {
            warn!(
                key,
                reason = why.as_str(),
                "ignoring a key under the election's prefix that is not a candidate"
            );
            self.telemetry.foreign_key();
        }
        Ok(Some(seen.delta))
    }

    /// Follow the queue after `delta`: this replica's place when it has a key, else the last
    /// known leader of a follower. `Err`: the session is over — the key is gone, or it gives
    /// way to a preferred candidate behind it. `Ok`: when to decide again, if ever.
    fn follow(&self, own: Option<&mut Own>, delta: &Delta) -> Result<Option<Instant>, String> {
        let queue = self.observe.queue();
        let Some(own) = own else {
            self.view.send_if_modified(|v| match &mut v.position {
                Position::Waiting { leader } | Position::Observing { leader } => {
                    let now = queue.leader().map(LeaderInfo::from_candidate);
                    std::mem::replace(leader, now.clone()) != now
                }
                _ => false,
            });
            return Ok(None);
        };
        if let Some(p) = &own.predecessor
            && delta.left.contains(p)
        {
            self.view.send_modify(|v| v.wakeups += 1);
            self.telemetry.predecessor_woken();
        }
        let mut position = position(queue, &own.key, own.revision)?;
        let mut review_at = self.prefs.switchover.as_ref().map(|(_, until)| *until);
        let guard_ends = self.unmarked_loss + self.cfg.start_guard;
        if matches!(position, Position::Leading { .. }) && !own.leading {
            let now = Instant::now();
            if now < guard_ends {
                if !matches!(self.view.borrow().position, Position::Guarded { .. }) {
                    if self.unmarked_loss > self.started {
                        info!(
                            guard = ?guard_ends - now,
                            "the leader before us left without a clean release: waiting the start guard before leading"
                        );
                    } else {
                        debug!(guard = ?guard_ends - now, "just started: waiting the start guard before leading");
                    }
                }
                position = Position::Guarded { until: guard_ends };
                review_at = Some(review_at.map_or(guard_ends, |r| r.min(guard_ends)));
            }
        }
        own.predecessor = queue
            .get(&own.key)
            .and_then(|c| queue.predecessor(c.create_revision))
            .map(|c| c.key.clone());
        let first_seen = |k: &str| self.prefs.first_seen.get(k).copied();
        let ctx = candidacy::Context {
            own: &own.key,
            leading: own.leading,
            switchover: self.prefs.switchover.as_ref().map(|(k, _)| k.as_str()),
            protected: self.prefs.protected.as_deref(),
            first_seen: &first_seen,
            now: Instant::now(),
        };
        let id_of = |key: &str| {
            queue
                .get(key)
                .map(|c| LeaderInfo::from_candidate(c).id)
                .unwrap_or_else(|| key.to_string())
        };
        let mut handoff = None;
        match candidacy::verdict(queue, &self.cfg.policy, &ctx) {
            candidacy::Verdict::Requeue { key } => {
                return Err(format!("giving way to {} in the queue", id_of(&key)));
            }
            candidacy::Verdict::HandOver { key } => handoff = Some(id_of(&key)),
            candidacy::Verdict::Stay { review_at: r } => {
                review_at = review_at.min(r).or(review_at).or(r);
            }
        }
        own.leading |= matches!(position, Position::Leading { .. });
        self.view.send_if_modified(|v| {
            let changed = v.position != position || v.handoff != handoff;
            v.position = position;
            v.handoff = handoff;
            changed
        });
        Ok(review_at)
    }

    /// Grant a lease, retrying with backoff; commands may interrupt.
    async fn grant(&mut self) -> Result<Result<(i64, Instant), After>, EtcdError> {
        let t = self.cfg.timing;
        let mut backoff = Backoff::new(
            Duration::from_millis(100),
            t.keepalive_interval.max(Duration::from_secs(1)),
        );
        let mut retry_at = Instant::now();
        loop {
            tokio::select! {
                _ = sleep_until(retry_at) => {
                    let sent = Instant::now();
                    let granted = grant(&self.clients, t.ttl, self.pace.now()).await;
                    match self.pace.note(sent, granted) {
                        Ok(lease) => return Ok(Ok((lease, sent))),
                        Err(e) if e.is_fatal() => return Err(e),
                        Err(e) => {
                            self.mark_error(&e);
                            retry_at = Instant::now() + backoff.delay();
                        }
                    }
                }
                cmd = self.commands.recv() => if let Some(after) = answer_without_session(cmd) {
                    return Ok(Err(after));
                },
                seen = self.observe.next(&self.pace) => {
                    if let Some(delta) = self.take(seen)? {
                        self.note(&delta);
                        let _ = self.follow(None, &delta);
                    }
                }
            }
        }
    }

    /// One session: lease, keepalive, candidate key, place in the queue; returns what to do
    /// next.
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
        let mut session = Session::keep_alive(&self.clients, lease, self.cfg.timing, &self.pace);

        let value =
            serde_json::to_string(&self.cfg.member).expect("invariant: MemberInfo serialises");
        let (view, telemetry) = (self.view.clone(), self.telemetry.clone());
        let create = create_key(
            self.clients.clone(),
            self.pace.clone(),
            key.clone(),
            value,
            lease,
            self.cfg
                .timing
                .keepalive_interval
                .max(Duration::from_millis(500)),
            move |e| mark_error(&view, telemetry.as_ref(), e),
        );
        tokio::pin!(create);
        let mut own: Option<Own> = None;
        let after = loop {
            let lost = tokio::select! {
                created = &mut create, if own.is_none() => match created {
                    Ok(revision) => {
                        debug!(key, revision, "candidate key created");
                        let mut o = Own { key: key.clone(), revision, predecessor: None, leading: false };
                        // Place it with what the queue knows already (perhaps not our key yet).
                        let lost = self.place(Some(&mut o), &Delta::default());
                        own = Some(o);
                        lost
                    }
                    Err(CampaignEnd::SessionLost(why)) => Some(why),
                    Err(CampaignEnd::Fatal(e)) => return Err(e),
                },
                seen = self.observe.next(&self.pace) => match self.take(seen)? {
                    Some(delta) => {
                        self.note(&delta);
                        self.place(own.as_mut(), &delta)
                    }
                    None => None,
                },
                _ = sleep_until(self.prefs.review_at.unwrap_or_else(Instant::now)), if self.prefs.review_at.is_some() => {
                    self.prefs.review_at = None;
                    self.note(&Delta::default());
                    self.place(own.as_mut(), &Delta::default())
                }
                ev = session.event() => {
                    if !self.keepalive_answered(ev)? {
                        info!(lease = format!("{lease:x}"), "lease expired or revoked at etcd; rejoining with a fresh lease");
                        break After::Rejoin;
                    }
                    None
                }
                cmd = self.commands.recv() => match cmd {
                    None => break After::Stop,
                    Some(DriverCommand::Release { after, reply }) => {
                        // Given up on purpose (the command is stopped): mark it, so the
                        // successor starts at once.
                        self.mark_released(own.as_ref(), lease).await;
                        self.release(lease).await;
                        let _ = reply.send(());
                        return Ok(after);
                    }
                    Some(DriverCommand::Resume { reply }) => {
                        let _ = reply.send(());
                        None
                    }
                    Some(DriverCommand::HandOff { to, reply }) => {
                        let _ = reply.send(self.announce_handoff(own.as_ref(), lease, &to).await);
                        None
                    }
                },
            };
            if let Some(why) = lost {
                info!(lease = format!("{lease:x}"), reason = %why, "election session lost; rejoining with a fresh lease");
                break After::Rejoin;
            }
        };
        // Session over. Say so first — the role machine stops a running command on it, and must
        // not wait for etcd (the key is gone already, or etcd is slow) — then make sure the old
        // lease is gone before a new one is granted.
        self.forget_session();
        self.release(lease).await;
        Ok(after)
    }

    /// Place our key (if any) in the queue as it stands now: when to review the queue again,
    /// or why the session is lost.
    fn place(&mut self, own: Option<&mut Own>, delta: &Delta) -> Option<String> {
        match self.follow(own, delta) {
            Ok(review_at) => {
                self.prefs.review_at = review_at;
                None
            }
            Err(why) => Some(why),
        }
    }

    /// Take in what the keepalive stream said: false when the lease is gone at etcd (expired
    /// or revoked), an error when it cannot heal.
    fn keepalive_answered(&mut self, ev: Option<KeepaliveEvent>) -> Result<bool, EtcdError> {
        match ev {
            Some(KeepaliveEvent::Ok { sent }) => {
                self.telemetry.keepalive_ok(sent.elapsed());
                let restored = !self.view.borrow().reachable;
                self.view.send_modify(|v| {
                    v.last_ok_sent = v.last_ok_sent.max(Some(sent));
                    v.reachable = true;
                    v.last_contact = Some(Instant::now());
                });
                if restored {
                    // The watch may have died silently with the connection: reopen it from the
                    // last revision seen.
                    self.observe.reopen();
                }
                Ok(true)
            }
            Some(KeepaliveEvent::Failed(e)) if e.is_fatal() => Err(e),
            Some(KeepaliveEvent::Failed(e)) => {
                self.telemetry.keepalive_failed();
                self.mark_error(&e);
                Ok(true)
            }
            Some(KeepaliveEvent::Gone) | None => Ok(false),
        }
    }

    /// Write into our own candidate key (same lease, guarded by its create revision) that
    /// leadership goes to the candidate whose member id is `to`; its key.
    async fn announce_handoff(
        &self,
        own: Option<&Own>,
        lease: i64,
        to: &str,
    ) -> Result<String, String> {
        let Some(own) = own.filter(|o| o.leading) else {
            return Err("this replica is not the leader".into());
        };
        if to == self.cfg.member.id {
            return Err(format!("{to} is this replica, the leader"));
        }
        let queue = self.observe.queue();
        let targets: Vec<_> = queue
            .candidates()
            .filter(|c| candidacy::member(c).is_some_and(|m| m.id == to))
            .collect();
        let target = match targets[..] {
            [t] => t.key.clone(),
            [] => {
                return Err(format!(
                    "no candidate with id {to} is in the election: it is not running, not \
                     eligible to lead (a failing health check, priority 0) or paused"
                ));
            }
            _ => {
                return Err(format!(
                    "{} candidates have id {to}; give every replica its own --id",
                    targets.len()
                ));
            }
        };
        let mut member = self.cfg.member.clone();
        member.handoff_to = Some(target.clone());
        let value = serde_json::to_string(&member).expect("invariant: MemberInfo serialises");
        match update_candidate(
            &self.clients,
            &own.key,
            &value,
            lease,
            own.revision,
            self.pace.now(),
        )
        .await
        {
            Ok(true) => Ok(target),
            Ok(false) => Err("this replica's candidate key changed meanwhile; try again".into()),
            Err(e) => Err(format!("cannot announce the switchover in etcd: {e}")),
        }
    }

    /// Write the clean-release mark into our key if it leads the queue (guarded by its create
    /// revision): the role machine asks for a release only once the command is stopped, so
    /// the successor may start at once. Best effort, bounded: without it the successor waits
    /// its start guard.
    async fn mark_released(&self, own: Option<&Own>, lease: i64) {
        let Some(own) = own else { return };
        if self.observe.queue().leader().map(|c| c.key.as_str()) != Some(own.key.as_str()) {
            return;
        }
        let value = serde_json::to_string(&self.cfg.member.released())
            .expect("invariant: MemberInfo serialises");
        match update_candidate(
            &self.clients,
            &own.key,
            &value,
            lease,
            own.revision,
            self.pace.now(),
        )
        .await
        {
            Ok(true) => debug!(key = %own.key, "clean release marked"),
            Ok(false) => {
                debug!(key = %own.key, "our key changed before the clean release was marked")
            }
            Err(e) => {
                warn!(key = %own.key, error = %e, "could not mark the clean release; the successor waits its start guard")
            }
        }
    }

    /// Revoke the session's lease, which deletes our candidate key with it in one step. Best
    /// effort and bounded: if etcd is unreachable the lease expires after its TTL.
    async fn release(&self, lease: i64) {
        match revoke(&self.clients, lease, self.pace.now()).await {
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
        Some(DriverCommand::HandOff { reply, .. }) => {
            let _ = reply.send(Err("this replica is not the leader".into()));
            None
        }
    }
}

/// A failed call: count it and mark etcd unreachable until the next success — unless etcd
/// answered with a rewound history, which makes this replica refuse to lead instead.
fn mark_error(view: &watch::Sender<ElectionView>, telemetry: &dyn Telemetry, e: &EtcdError) {
    debug!(error = %e, kind = e.kind(), "etcd call failed");
    telemetry.backend_error(e.kind());
    if let EtcdError::HistoryRewound { seen, .. } = e {
        let refusal = Some(super::client::refusal(*seen));
        view.send_if_modified(|v| {
            let changed = v.refusal != refusal;
            v.refusal = refusal;
            changed
        });
        return;
    }
    view.send_if_modified(|v| std::mem::replace(&mut v.reachable, false));
}
