//! The session, as in etcd's `concurrency/session.go`: a lease, the task that keeps it alive,
//! and the reply pacing every call of the replica shares ([`Pace`]). Keepalive replies are
//! always read; the view's `last_ok_sent` is fed from the *send* time of each answered
//! keepalive, which is what the leader's deadline counts from.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::trace;

use super::client::Clients;
use super::error::{EtcdError, classify};
use crate::config::Timing;

/// Grant a lease of `ttl` seconds.
pub(super) async fn grant(
    clients: &Clients,
    ttl: Duration,
    after: Duration,
) -> Result<i64, EtcdError> {
    let secs = ttl.as_secs() as i64;
    let floor = clients.max_revision();
    let resp = clients
        .call("lease grant", after, 0, |mut c| async move {
            c.lease_grant(secs, None).await
        })
        .await?;
    clients.check(floor, resp.header())?;
    Ok(resp.id())
}

/// Revoke a lease; a lease already gone counts as revoked. An endpoint that does not answer
/// within `after` (or refuses the connection) is given up for the next one, each endpoint
/// once: a dead member must not make the next replica wait out the TTL.
pub async fn revoke(clients: &Clients, lease: i64, after: Duration) -> Result<(), EtcdError> {
    let mut tries = clients.endpoints();
    loop {
        tries -= 1;
        let r = clients
            .call("lease revoke", after, lease, |mut c| async move {
                c.lease_revoke(lease).await
            })
            .await;
        match r {
            Ok(_) | Err(EtcdError::LeaseGone { .. }) => return Ok(()),
            Err(e) if e.moves_endpoint() && tries > 0 => {}
            Err(e) => return Err(e),
        }
    }
}

/// Keepalive task reports.
#[derive(Debug)]
pub(super) enum KeepaliveEvent {
    Ok { sent: Instant },
    Failed(EtcdError),
    Gone,
}

use crate::election::AbortOnDrop;

/// One session: a granted lease and the task that keeps it alive, reporting on a channel whose
/// events the owner must keep reading. Dropping the session stops the keepalive (the lease then
/// expires after its TTL unless revoked first, see [`revoke`]).
pub(super) struct Session {
    events: mpsc::Receiver<KeepaliveEvent>,
    _keepalive: AbortOnDrop,
}

impl Session {
    /// Keep `lease` alive from now on, paced by `pace`.
    pub fn keep_alive(clients: &Clients, lease: i64, timing: Timing, pace: &Pace) -> Session {
        let (tx, events) = mpsc::channel(4);
        let task = tokio::spawn(keepalive(clients.clone(), lease, timing, pace.clone(), tx));
        Session {
            events,
            _keepalive: AbortOnDrop(task),
        }
    }

    /// The next keepalive report; `None` once the keepalive task has ended (lease gone).
    pub async fn event(&mut self) -> Option<KeepaliveEvent> {
        self.events.recv().await
    }
}

/// How soon a failed keepalive is retried.
const KEEPALIVE_RETRY: Duration = Duration::from_millis(100);

/// How long to wait for a keepalive's reply: at least the request timeout and twice the last
/// round trip, doubled after each timeout, at most the leader budget. A late reply still proves
/// the lease was refreshed after its keepalive was sent, so a slow link keeps the lease (and the
/// role) instead of being mistaken for a lost one; a dead stream is still given up quickly.
#[derive(Debug, Clone, Copy)]
pub(super) struct ReplyWait {
    floor: Duration,
    cap: Duration,
    now: Duration,
}

/// The [`ReplyWait`] of one replica, shared by its keepalive task and its campaign: a slow etcd
/// is slow for every call.
#[derive(Debug, Clone)]
pub(super) struct Pace(Arc<std::sync::Mutex<ReplyWait>>);

impl Pace {
    pub(super) fn new(t: &Timing) -> Pace {
        Pace(Arc::new(std::sync::Mutex::new(ReplyWait::new(t))))
    }

    pub(super) fn with<T>(&self, f: impl FnOnce(&mut ReplyWait) -> T) -> T {
        // A poisoned lock only means a panic elsewhere; the value is still a valid wait.
        let mut w = self.0.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut w)
    }

    pub(super) fn now(&self) -> Duration {
        self.with(|w| w.now)
    }

    pub(super) fn cap(&self) -> Duration {
        self.with(|w| w.cap)
    }

    /// Learn from the outcome of a call sent at `sent`, and pass it on.
    pub(super) fn note<T>(&self, sent: Instant, r: Result<T, EtcdError>) -> Result<T, EtcdError> {
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

    pub(super) fn answered(&mut self, rtt: Duration) {
        self.now = (rtt * 2).clamp(self.floor, self.cap);
    }

    pub(super) fn timed_out(&mut self) {
        self.now = (self.now * 2).min(self.cap);
    }
}

/// A keepalive stream and the endpoint it was opened on.
struct KeepaliveStream {
    endpoint: usize,
    keeper: etcd_client::LeaseKeeper,
    replies: etcd_client::LeaseKeepAliveStream,
}

/// One keepalive in flight: on an open stream or by opening one on the current endpoint
/// (opening sends the first keepalive and reads its reply). It owns the stream and hands it
/// back: `Ok(false)` means the lease is gone.
type Attempt = std::pin::Pin<
    Box<dyn Future<Output = (Result<bool, EtcdError>, Option<KeepaliveStream>)> + Send>,
>;

fn attempt(clients: &Clients, lease: i64, stream: Option<KeepaliveStream>) -> Attempt {
    let (endpoint, mut c) = clients.pick();
    let clients = clients.clone();
    let request = |e| EtcdError::Request {
        op: "lease keepalive",
        source: e,
    };
    Box::pin(async move {
        let Some(KeepaliveStream {
            endpoint,
            mut keeper,
            mut replies,
        }) = stream
        else {
            return match c.lease_keep_alive(lease).await {
                Ok((keeper, replies)) => (
                    Ok(true),
                    Some(KeepaliveStream {
                        endpoint,
                        keeper,
                        replies,
                    }),
                ),
                Err(e) => match classify("lease keepalive", lease, e) {
                    EtcdError::LeaseGone { .. } => (Ok(false), None),
                    e => (Err(e), None),
                },
            };
        };
        if let Err(e) = keeper.keep_alive().await {
            return (Err(request(e)), None);
        }
        match replies.message().await {
            Ok(Some(resp)) => (
                {
                    // The member's revision raises the mark a rewound history is judged
                    // against (never lowers it: a stale member answers below it), so an idle
                    // replica knows etcd's revision without reading.
                    if let Some(h) = resp.header() {
                        clients.saw(h.revision());
                    }
                    Ok(resp.ttl() > 0)
                },
                Some(KeepaliveStream {
                    endpoint,
                    keeper,
                    replies,
                }),
            ),
            Ok(None) => (
                Err(EtcdError::StreamClosed {
                    op: "lease keepalive",
                }),
                None,
            ),
            Err(e) => match classify("lease keepalive", lease, e) {
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
pub(super) async fn keepalive(
    clients: Clients,
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
                        if !report(&tx, ev, None).await {
                            return;
                        }
                    }
                }
            }
        }
        let sent = Instant::now();
        // The endpoint this attempt goes to: its stream's, or the current one for a new stream.
        let endpoint = stream
            .as_ref()
            .map_or_else(|| clients.pick().0, |s| s.endpoint);
        let mut current = attempt(&clients, lease, stream.take());
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
                    if !report(&tx, ev, None).await {
                        return;
                    }
                }
            }
        };
        let event = match result {
            Ok(true) => {
                clients.answered(endpoint);
                KeepaliveEvent::Ok { sent }
            }
            Ok(false) => KeepaliveEvent::Gone,
            Err(e) => {
                // Retry soon instead of a whole interval later, on a fresh stream to the next
                // endpoint when this one timed out or is unavailable: the failed stream may
                // have been bound to a dead or frozen member.
                if e.moves_endpoint() {
                    clients.failed(endpoint);
                }
                ticker.reset_at(Instant::now() + KEEPALIVE_RETRY);
                KeepaliveEvent::Failed(e)
            }
        };
        if !report(&tx, event, Some(&pace)).await {
            return;
        }
    }
}

/// Hand a keepalive event to the session, adapting the reply wait to a success's round trip
/// (`pace`; `None` for a late reply: an answer that came after its wait timed out tells of a
/// stalled member — frozen, or thawed just now — not of the link's round trip, and learning
/// from it would let the next stalled keepalive outlast the leader's budget). Returns false when
/// the keepalive task should end.
async fn report(
    tx: &mpsc::Sender<KeepaliveEvent>,
    event: KeepaliveEvent,
    pace: Option<&Pace>,
) -> bool {
    if let KeepaliveEvent::Ok { sent } = &event {
        trace!(rtt = ?sent.elapsed(), late = pace.is_none(), "keepalive ok");
        if let Some(pace) = pace {
            pace.with(|w| w.answered(sent.elapsed()));
        }
    }
    let gone = matches!(event, KeepaliveEvent::Gone);
    tx.send(event).await.is_ok() && !gone
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
