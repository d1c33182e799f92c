//! The driver: one task per election that observes it all the time (one read, one watch of
//! its prefix) and runs campaigns back to back — create the candidate key under the host's
//! lease (`super::host`: one lease and one keepalive stream for every election of the process),
//! follow the queue — publishing what it knows as an [`ElectionView`] and obeying the owner's
//! commands (release the key, then rejoin, wait, pause or stop). It never decides what a view
//! means for the wrapped command: that is the role machine's job.
//!
//! Giving up one election deletes its key only (with the clean-release mark first when it
//! leads); the lease stays for the process's other elections and for rejoining. When the
//! lease is lost, every election's key goes with it, and each driver campaigns again under the
//! host's next lease.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::time::{Instant, sleep_until};
use tracing::{debug, info, warn};

use super::campaign::{CampaignEnd, FloorSeen, create_key, position};
use super::client::Clients;
use super::error::EtcdError;
use super::host::{Host, HostHandle, SessionView};
use super::observe::{Observe, Seen};
use super::session::Pace;
use super::txn::{delete_candidate, update_candidate};
use crate::election::candidacy;
use crate::election::queue::{Delta, Queue};
use crate::election::{
    After, DriverCommand, DriverConfig, DriverHandle, ElectionView, LeaderInfo, NoTelemetry,
    Position, Telemetry, keys,
};

/// Runs one election for one replica.
pub struct Driver {
    /// The host whose lease this election's key is bound to, and — when this driver has a
    /// host of its own (one election per process) — the host to run beside it.
    host: HostHandle,
    own_host: Option<Host>,
    session: watch::Receiver<SessionView>,
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
    /// A key of ours whose deletion failed: deleted before the next campaign (a key of a
    /// lease that stays must not linger in the queue).
    stale: Option<(String, i64, i64)>,
    /// With balancing: the board's changes (the other elections' queues moved).
    board: Option<watch::Receiver<u64>>,
    /// With balancing: a hand-over to this candidate was announced in our key.
    balancing_to: Option<String>,
    /// The highest leader's token seen (the state file is written when it rises).
    leader_seen: i64,
    /// Changes of the process's refusal to lead (a rewound history found or passed).
    refusals: watch::Receiver<u64>,
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

/// What this replica remembers for [`candidacy::verdict`]. A candidate is its key *and* its
/// create revision: a replica that leaves the queue and joins again under the same lease gets
/// a key of the same name, and a re-read of the queue (after a watch failed) can hold both the
/// deletion and the new key without an event for either.
#[derive(Default)]
struct Prefs {
    /// When each candidate (key, create revision) was first seen (for the takeover delay).
    first_seen: HashMap<String, (i64, Instant)>,
    /// A switchover announced by a leader: the target key, and until when it may take over.
    switchover: Option<(String, Instant)>,
    /// The candidate (key, create revision) that took leadership by switchover, while it stays.
    protected: Option<(String, i64)>,
    /// When to decide again (a takeover delay or a switchover ends).
    review_at: Option<Instant>,
}

impl Prefs {
    /// Keep track of joins, leaves and switchovers in `queue` as it stands at `now`.
    fn note(&mut self, queue: &Queue, now: Instant, bound: Duration) {
        self.first_seen
            .retain(|k, (rev, _)| queue.get(k).is_some_and(|c| c.create_revision == *rev));
        for c in queue.candidates() {
            self.first_seen
                .entry(c.key.clone())
                .or_insert((c.create_revision, now));
        }
        let head = queue.leader();
        if let Some(target) = head.and_then(candidacy::member).and_then(|m| m.handoff_to)
            && self.switchover.as_ref().is_none_or(|(t, _)| *t != target)
        {
            info!(to = %target, within = ?bound, "the leader hands leadership over (switchover)");
            self.switchover = Some((target, now + bound));
        }
        if let Some((target, until)) = &self.switchover {
            if let Some(h) = head.filter(|h| h.key == *target) {
                self.protected = Some((h.key.clone(), h.create_revision));
                self.switchover = None;
            } else if now >= *until || queue.get(target).is_none() {
                info!(to = %target, "switchover did not complete; the queue's order decides again");
                self.switchover = None;
            }
        }
        if self.protected.is_some() && self.protected_in(queue).is_none() {
            self.protected = None;
        }
    }

    /// The key that took leadership by switchover, if that candidate is still in `queue`
    /// (the same key with another create revision is a new candidate, not protected).
    fn protected_in(&self, queue: &Queue) -> Option<&str> {
        let (key, rev) = self.protected.as_ref()?;
        queue
            .get(key)
            .filter(|c| c.create_revision == *rev)
            .map(|_| key.as_str())
    }

    /// When the candidate at `key` (as it is in `queue`) was first seen.
    fn first_seen_in(&self, queue: &Queue, key: &str) -> Option<Instant> {
        let (rev, at) = self.first_seen.get(key)?;
        queue
            .get(key)
            .filter(|c| c.create_revision == *rev)
            .map(|_| *at)
    }
}

impl Driver {
    /// A driver with a host of its own (the process's only election); run it with
    /// [`Driver::run`]. The receiver observes its view.
    pub(super) fn new(
        clients: Clients,
        cfg: DriverConfig,
    ) -> (Driver, DriverHandle, watch::Receiver<ElectionView>) {
        let (host, handle) = Host::new(
            clients.clone(),
            cfg.timing,
            Arc::new(NoTelemetry),
            vec![cfg.election.clone()],
        );
        let (mut driver, h, view) = Driver::on(clients, &handle, cfg);
        driver.own_host = Some(host);
        (driver, h, view)
    }

    /// A driver for one election on `host`'s lease.
    pub(super) fn on(
        clients: Clients,
        host: &HostHandle,
        cfg: DriverConfig,
    ) -> (Driver, DriverHandle, watch::Receiver<ElectionView>) {
        let (view, view_rx) = watch::channel(ElectionView::new());
        let (handle, commands) = DriverHandle::channel();
        let pace = host.pace();
        let board = cfg.balance.as_ref().map(|b| {
            b.serve(&cfg.election);
            b.subscribe()
        });
        let refusals = clients.refusals();
        let observe = Observe::new(
            clients.clone(),
            &cfg.election,
            cfg.timing.keepalive_interval,
        );
        (
            Driver {
                host: host.clone(),
                own_host: None,
                session: host.view(),
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
                stale: None,
                board,
                balancing_to: None,
                leader_seen: 0,
                refusals,
            },
            handle,
            view_rx,
        )
    }

    /// Report keepalive round trips and etcd errors to `telemetry` (the host's too, when it is
    /// this driver's own).
    pub fn with_telemetry(mut self, telemetry: Arc<dyn Telemetry>) -> Driver {
        if let Some(host) = self.own_host.take() {
            self.own_host = Some(host.with_telemetry(telemetry.clone()));
        }
        self.telemetry = telemetry;
        self
    }

    /// Run until told to stop, or until an unrecoverable error (returned). A host of its own
    /// runs beside it, and is stopped (its lease revoked) at the end.
    pub async fn run(mut self) -> Result<(), EtcdError> {
        let Some(host) = self.own_host.take() else {
            return self.elect().await;
        };
        let handle = self.host.clone();
        let host = tokio::spawn(host.run());
        let _host = crate::election::AbortOnDrop(tokio::spawn(async move {
            let _ = host.await;
        }));
        let r = self.elect().await;
        handle.stop().await;
        r
    }

    async fn elect(mut self) -> Result<(), EtcdError> {
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
            after = self.campaign().await?;
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
                        self.note();
                        let _ = self.follow(None, &delta);
                        self.sweep().await;
                    }
                }
                _ = self.refusals.changed() => self.refusal_changed(),
            }
        }
    }

    /// How long a switchover may take before the queue's order decides again.
    fn switchover_bound(&self) -> Duration {
        self.cfg.timing.ttl * 2
    }

    fn note(&mut self) {
        let bound = self.switchover_bound();
        self.prefs.note(self.observe.queue(), Instant::now(), bound);
    }

    /// The process's refusal to lead changed (found rewound by another call, or mended by
    /// the host's mender): the view says so now, and the queue is read afresh (a watch does
    /// not see the keys a rebuilt etcd lost).
    fn refusal_changed(&mut self) {
        self.observe.reread();
        let refusal = self.clients.refusal(&self.cfg.election);
        self.view.send_if_modified(|v| {
            let changed = v.refusal != refusal;
            v.refusal = refusal;
            changed
        });
    }

    fn mark_error(&self, e: &EtcdError) {
        mark_error(
            &self.view,
            self.telemetry.as_ref(),
            &self.clients,
            &self.cfg.election,
            e,
        );
    }

    fn mark_contact(&self, revision: Option<i64>) {
        let refusal = self.clients.refusal(&self.cfg.election);
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
        if let Some(head) = queue.leader()
            && head.create_revision > self.leader_seen
        {
            // A leader's token is at most the revision seen now: the state file covers it.
            self.leader_seen = head.create_revision;
            self.clients.persist_soon();
        }
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
        if let Some(b) = &self.cfg.balance {
            b.saw(&self.cfg.election, queue);
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
        let first_seen = |k: &str| self.prefs.first_seen_in(queue, k);
        let ctx = candidacy::Context {
            own: &own.key,
            leading: own.leading,
            switchover: self.prefs.switchover.as_ref().map(|(k, _)| k.as_str()),
            protected: self.prefs.protected_in(queue),
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
        // Balance: about to lead one election more than our share while a replica of our
        // group below its share waits here: give way to it.
        if let (Position::Leading { .. }, false, Some(b)) =
            (&position, own.leading, &self.cfg.balance)
            && handoff.is_none()
            && let Err(m) = b.take(&self.cfg.election)
        {
            return Err(format!(
                "giving way to {} (balance: this replica leads its share)",
                m.id
            ));
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

    /// Wait until the host has a lease, observing the election and answering commands
    /// meanwhile; `Err(after)` when a command ends the attempt first.
    async fn lease(&mut self) -> Result<Result<i64, After>, EtcdError> {
        loop {
            let lease = self.session_changed()?;
            if let Some(lease) = lease {
                return Ok(Ok(lease));
            }
            tokio::select! {
                changed = self.session.changed() => if changed.is_err() {
                    return Err(self.host_gone());
                },
                cmd = self.commands.recv() => if let Some(after) = answer_without_session(cmd) {
                    return Ok(Err(after));
                },
                seen = self.observe.next(&self.pace) => {
                    if let Some(delta) = self.take(seen)? {
                        self.note();
                        let _ = self.follow(None, &delta);
                    }
                }
                _ = self.refusals.changed() => self.refusal_changed(),
            }
        }
    }

    /// The host stopped (an unrecoverable error, or shutdown).
    fn host_gone(&self) -> EtcdError {
        let why = self.session.borrow().failed.clone();
        EtcdError::Setup(why.unwrap_or_else(|| "the election's session ended".into()))
    }

    /// Take in the host's view: this election's deadline counts from its keepalives. Returns
    /// the host's lease now, or the host's fatal error.
    fn session_changed(&mut self) -> Result<Option<i64>, EtcdError> {
        let s = self.session.borrow_and_update().clone();
        if s.failed.is_some() {
            return Err(self.host_gone());
        }
        let restored = s.reachable && !self.view.borrow().reachable;
        self.view.send_if_modified(|v| {
            let next = (
                v.lease.is_some().then_some(s.last_ok_sent).flatten(),
                s.reachable,
                s.last_contact,
            );
            let changed = (v.last_ok_sent, v.reachable, v.last_contact) != next;
            if v.lease.is_some() {
                v.last_ok_sent = s.last_ok_sent;
            }
            v.reachable = s.reachable;
            v.last_contact = v.last_contact.max(s.last_contact);
            changed
        });
        if restored {
            // The watch may have died silently with the connection: reopen it from the last
            // revision seen.
            self.observe.reopen();
        }
        Ok(s.lease)
    }

    /// One campaign: our candidate key under the host's lease, and its place in the queue;
    /// returns what to do next.
    async fn campaign(&mut self) -> Result<After, EtcdError> {
        self.forget_session();
        // The key of an earlier campaign that could not be deleted goes first: created again,
        // it would be adopted at its old place in the queue.
        while self.stale.is_some() {
            self.sweep().await;
            if self.stale.is_none() {
                break;
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                cmd = self.commands.recv() => if let Some(after) = answer_without_session(cmd) {
                    return Ok(after);
                },
            }
        }
        let lease = match self.lease().await? {
            Ok(l) => l,
            Err(after) => return Ok(after),
        };
        self.view.send_modify(|v| {
            v.lease = Some(lease);
        });
        self.balancing_to = None;
        self.session_changed()?;
        let floor = match self.floor_gate(lease).await? {
            Ok(f) => f,
            Err(after) => return Ok(after),
        };
        let key = keys::candidate_key(&self.cfg.election, lease);
        debug!(lease = format!("{lease:x}"), key, "campaign started");
        let value =
            serde_json::to_string(&self.cfg.member).expect("invariant: MemberInfo serialises");
        let (view, telemetry, clients, election) = (
            self.view.clone(),
            self.telemetry.clone(),
            self.clients.clone(),
            self.cfg.election.clone(),
        );
        let create = create_key(
            self.clients.clone(),
            self.pace.clone(),
            key.clone(),
            value,
            lease,
            floor,
            self.cfg
                .timing
                .keepalive_interval
                .max(Duration::from_millis(500)),
            move |e| mark_error(&view, telemetry.as_ref(), &clients, &election, e),
        );
        tokio::pin!(create);
        let mut own: Option<Own> = None;
        let after = loop {
            let lost = tokio::select! {
                created = &mut create, if own.is_none() => match created {
                    Ok(revision) => {
                        debug!(key, revision, "candidate key created");
                        // Its token on disk before it can lead (with --state-file).
                        self.clients.persist().await;
                        let mut o = Own { key: key.clone(), revision, predecessor: None, leading: false };
                        // Place it with what the queue knows already (perhaps not our key yet).
                        let lost = self.place(Some(&mut o), &Delta::default());
                        own = Some(o);
                        lost
                    }
                    Err(CampaignEnd::SessionLost(why)) => Some(why),
                    Err(CampaignEnd::Blocked(why)) => {
                        warn!(reason = %why, "cannot campaign under this lease; asking for a fresh one");
                        self.forget_session();
                        self.host.renew(lease).await;
                        // Campaign again once the host's lease changed.
                        let _ = tokio::time::timeout(
                            self.cfg.timing.keepalive_interval.max(Duration::from_millis(500)),
                            self.session.wait_for(|s| s.lease != Some(lease)),
                        )
                        .await;
                        return Ok(After::Rejoin);
                    }
                    Err(CampaignEnd::Fatal(e)) => return Err(e),
                },
                seen = self.observe.next(&self.pace) => match self.take(seen)? {
                    Some(delta) => {
                        self.note();
                        self.place(own.as_mut(), &delta)
                    }
                    None => None,
                },
                _ = sleep_until(self.prefs.review_at.unwrap_or_else(Instant::now)), if self.prefs.review_at.is_some() => {
                    self.prefs.review_at = None;
                    self.note();
                    self.place(own.as_mut(), &Delta::default())
                }
                _ = board_changed(&mut self.board) => {
                    self.place(own.as_mut(), &Delta::default())
                }
                _ = self.refusals.changed() => {
                    self.refusal_changed();
                    None
                }
                changed = self.session.changed() => {
                    if changed.is_err() {
                        return Err(self.host_gone());
                    }
                    if self.session_changed()? != Some(lease) {
                        info!(lease = format!("{lease:x}"), "lease expired or revoked at etcd; campaigning again under the next one");
                        self.forget_session();
                        return Ok(After::Rejoin);
                    }
                    None
                }
                cmd = self.commands.recv() => match cmd {
                    None => break After::Stop,
                    Some(DriverCommand::Release { after, reply }) => {
                        // Given up on purpose (the command is stopped): mark it, so the
                        // successor starts at once; then delete the key (the lease stays).
                        self.mark_released(own.as_ref(), lease).await;
                        self.release(own.as_ref(), lease).await;
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
                info!(key, reason = %why, "campaign lost; joining again at the back of the queue");
                break After::Rejoin;
            }
            if let Some(at) = self.balance(own.as_ref(), lease).await {
                self.prefs.review_at = Some(self.prefs.review_at.map_or(at, |r| r.min(at)));
            }
        };
        // Campaign over. Say so first — the role machine stops a running command on it, and
        // must not wait for etcd (the key is gone already, or etcd is slow) — then make sure
        // the old key is gone before a new one is created.
        self.forget_session();
        self.release(own.as_ref(), lease).await;
        Ok(after)
    }

    /// Before creating a candidate key: read the election's floor record (`super::floor`),
    /// retrying until etcd's revision is at the floor — a rewound history is refused meanwhile
    /// (the view's refusal; the host's mender raises the revision when it can) — observing the
    /// election and answering commands meanwhile. `Err(after)` when a command ends the attempt
    /// first, or the lease changes.
    async fn floor_gate(&mut self, lease: i64) -> Result<Result<FloorSeen, After>, EtcdError> {
        let key = keys::floor_key(&self.cfg.election);
        let mut backoff = super::error::Backoff::new(
            Duration::from_millis(50),
            self.cfg
                .timing
                .keepalive_interval
                .max(Duration::from_millis(500)),
        );
        loop {
            let sent = Instant::now();
            let read = super::floor::gate(&self.clients, &self.cfg.election, self.pace.now()).await;
            match self.pace.note(sent, read) {
                Ok(mod_revision) => return Ok(Ok(FloorSeen { key, mod_revision })),
                Err(e) if e.is_fatal() => return Err(e),
                Err(e) => self.mark_error(&e),
            }
            let retry_at = Instant::now() + backoff.delay();
            loop {
                tokio::select! {
                    _ = sleep_until(retry_at) => break,
                    changed = self.session.changed() => {
                        if changed.is_err() {
                            return Err(self.host_gone());
                        }
                        if self.session_changed()? != Some(lease) {
                            self.forget_session();
                            return Ok(Err(After::Rejoin));
                        }
                    }
                    cmd = self.commands.recv() => if let Some(after) = answer_without_session(cmd) {
                        self.forget_session();
                        return Ok(Err(after));
                    },
                    seen = self.observe.next(&self.pace) => {
                        if let Some(delta) = self.take(seen)? {
                            self.note();
                            let _ = self.follow(None, &delta);
                        }
                    }
                    _ = self.refusals.changed() => self.refusal_changed(),
                }
            }
        }
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

    /// Delete our candidate key, if it still has its create revision (the lease stays, for the
    /// process's other elections and for rejoining). Best effort and bounded: if etcd is
    /// unreachable the key goes with the lease, after its TTL at the latest.
    async fn release(&mut self, own: Option<&Own>, lease: i64) {
        if let Some(own) = own {
            match delete_candidate(
                &self.clients,
                &own.key,
                own.revision,
                lease,
                self.pace.now(),
            )
            .await
            {
                Ok(_) => debug!(key = %own.key, "candidate key deleted"),
                Err(e) => {
                    warn!(key = %own.key, lease = format!("{lease:x}"), error = %e, "could not delete the candidate key yet; retrying before the next campaign");
                    self.stale = Some((own.key.clone(), own.revision, lease));
                }
            }
        }
        self.forget_session();
    }

    /// Delete a key of ours that should not be in the queue: one whose deletion failed, or
    /// one created after its campaign was given up (its reply lost, or still in flight). Best
    /// effort: tried again on the next change of the queue.
    async fn sweep(&mut self) {
        let lease = self.session.borrow().lease;
        let stray = self.stale.clone().or_else(|| {
            let lease = lease?;
            let key = keys::candidate_key(&self.cfg.election, lease);
            let c = self.observe.queue().get(&key)?;
            Some((key, c.create_revision, lease))
        });
        let Some((key, revision, lease)) = stray else {
            return;
        };
        match delete_candidate(&self.clients, &key, revision, lease, self.pace.now()).await {
            Ok(_) => {
                debug!(key, "stray candidate key deleted");
                self.stale = None;
            }
            Err(e) => debug!(key, error = %e, "could not delete a stray candidate key yet"),
        }
    }

    /// The view without a session: no lease, no keepalive, no position that needs one.
    fn forget_session(&self) {
        self.view.send_modify(|v| {
            v.position = v.position.without_session();
            v.lease = None;
            v.last_ok_sent = None;
        });
        if let Some(b) = &self.cfg.balance {
            b.drop_lead(&self.cfg.election);
        }
    }

    /// With balancing, while we lead: hand this election over now if it is the one the
    /// balance moves (announced in our key, as a switchover: the role machine stops the
    /// command, then releases); when to look again otherwise.
    async fn balance(&mut self, own: Option<&Own>, lease: i64) -> Option<Instant> {
        let b = self.cfg.balance.clone()?;
        let own = own.filter(|o| o.leading)?;
        let (mv, review) = b.move_now(Instant::now());
        match mv {
            Some((election, to))
                if election == self.cfg.election
                    && self.balancing_to.as_deref() != Some(to.id.as_str()) =>
            {
                info!(to = %to.id, "this replica leads more than its share: handing the election over (balance)");
                b.moving(&election, Instant::now() + self.switchover_bound());
                match self.announce_handoff(Some(own), lease, &to.id).await {
                    Ok(_) => self.balancing_to = Some(to.id),
                    Err(why) => {
                        debug!(reason = %why, "the balance hand-over was not announced");
                        b.moving(&election, Instant::now());
                    }
                }
                None
            }
            _ => review,
        }
    }
}

/// The next change of the balance board (pending for ever without balancing).
async fn board_changed(board: &mut Option<watch::Receiver<u64>>) {
    match board {
        Some(b) => {
            if b.changed().await.is_err() {
                std::future::pending::<()>().await
            }
        }
        None => std::future::pending().await,
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
fn mark_error(
    view: &watch::Sender<ElectionView>,
    telemetry: &dyn Telemetry,
    clients: &Clients,
    election: &str,
    e: &EtcdError,
) {
    debug!(error = %e, kind = e.kind(), "etcd call failed");
    telemetry.backend_error(e.kind());
    if let EtcdError::HistoryRewound { seen, .. } = e {
        let refusal = clients
            .refusal(election)
            .or_else(|| Some(super::client::refusal(*seen)));
        view.send_if_modified(|v| {
            let changed = v.refusal != refusal;
            v.refusal = refusal;
            changed
        });
        return;
    }
    view.send_if_modified(|v| std::mem::replace(&mut v.reachable, false));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::election::candidacy::{Context, Policy, Verdict};
    use crate::election::{Candidate, MemberInfo};

    fn cand(lease: i64, revision: i64, id: &str, priority: u32, to: Option<&str>) -> Candidate {
        let info = MemberInfo {
            priority: Some(priority),
            handoff_to: to.map(String::from),
            ..MemberInfo::new(id, None)
        };
        Candidate {
            key: keys::candidate_key("e", lease),
            value: serde_json::to_string(&info).unwrap(),
            create_revision: revision,
            lease,
        }
    }

    /// What the replica leading under `own` decides with `prefs` (takeover delay 1 s).
    fn verdict(queue: &Queue, prefs: &Prefs, own: &str, priority: u32, now: Instant) -> Verdict {
        let first_seen = |k: &str| prefs.first_seen_in(queue, k);
        let ctx = Context {
            own,
            leading: true,
            switchover: prefs.switchover.as_ref().map(|(k, _)| k.as_str()),
            protected: prefs.protected_in(queue),
            first_seen: &first_seen,
            now,
        };
        let policy = Policy {
            priority,
            takeover_delay: Some(Duration::from_secs(1)),
        };
        candidacy::verdict(queue, &policy, &ctx)
    }

    /// Chaos seed 1796309459891838409, episode 424: n1 (priority 1) took leadership by
    /// switchover; it gave it up and joined again under the same lease (a key of the same
    /// name) while its watch failed, so the re-read held the deletion and the new key without
    /// an event for either; when it led again, it still took itself for the switchover's
    /// target and kept leadership from n2 (priority 2) for good.
    #[test]
    fn protection_by_switchover_ends_when_the_key_is_created_again_under_the_same_name() {
        let bound = Duration::from_secs(6);
        let t0 = Instant::now();
        let n1 = keys::candidate_key("e", 0x1);
        let mut q = Queue::new("e");
        let mut prefs = Prefs::default();

        // n0 leads and hands over to n1; n2 (priority 2) waits behind.
        q.reset(
            10,
            [
                cand(0x0, 5, "n0", 1, Some(&n1)),
                cand(0x1, 6, "n1", 1, None),
                cand(0x2, 7, "n2", 2, None),
            ],
        );
        prefs.note(&q, t0, bound);
        assert_eq!(prefs.switchover, Some((n1.clone(), t0 + bound)));
        q.delete(11, &keys::candidate_key("e", 0x0));
        prefs.note(&q, t0, bound);
        assert_eq!(prefs.protected, Some((n1.clone(), 6)));
        let later = t0 + Duration::from_secs(5);
        assert_eq!(
            verdict(&q, &prefs, &n1, 1, later),
            Verdict::Stay { review_at: None },
            "the switchover's target keeps leadership against priorities"
        );

        // n1's key deleted and created again under its lease, seen only through a re-read;
        // n2 rejoined meanwhile, behind it.
        q.reset(
            20,
            [cand(0x1, 15, "n1", 1, None), cand(0x2, 18, "n2", 2, None)],
        );
        let t1 = later + Duration::from_millis(10);
        prefs.note(&q, t1, bound);
        assert_eq!(prefs.protected, None, "a new candidate of the same name");
        assert_eq!(
            verdict(&q, &prefs, &n1, 1, t1),
            Verdict::Stay {
                review_at: Some(t1 + Duration::from_secs(1))
            },
            "n2 is due after its takeover delay, counted from its new key"
        );
        assert_eq!(
            verdict(&q, &prefs, &n1, 1, t1 + Duration::from_secs(1)),
            Verdict::HandOver {
                key: keys::candidate_key("e", 0x2)
            }
        );
    }
}
