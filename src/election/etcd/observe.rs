//! Observe, as etcd's own `concurrency` `Observe` does: one read of the whole election prefix,
//! then one watch of it from the revision after that read, feeding the [`Queue`]. Every
//! replica keeps the queue this way, so a leader change costs no read at all: the delete event
//! itself says who leads next, and the successor knows it leads. A compacted or cancelled watch
//! costs one re-read; a broken one is reopened from the last revision seen, without a read.
//!
//! A watch can also go silently stale: its member frozen (a stalled disk, a paused VM) while
//! the connection stays up. When the watch has been quiet for a keepalive interval it asks for
//! a progress report; if none comes within the reply wait, the watch is given up and reopened
//! on the next endpoint, so a follower's view never lags without it being seen.

use std::time::Duration;

use etcd_client::{EventType, GetOptions, SortOrder, SortTarget, WatchOptions, WatchStream};
use tokio::time::{Instant, sleep_until};
use tracing::debug;

use super::client::Clients;
use super::error::{Backoff, EtcdError};
use super::session::Pace;
use super::txn::candidate;
use crate::election::keys;
use crate::election::queue::{Delta, Queue};

/// What one call of [`Observe::next`] saw.
#[derive(Debug, Default)]
pub(super) struct Seen {
    /// What changed in the queue (nothing, for a progress report).
    pub delta: Delta,
    /// The revision etcd answered at.
    pub revision: i64,
}

/// A watch and the endpoint it was opened on.
struct Watching {
    endpoint: usize,
    stream: WatchStream,
    last_message: Instant,
    progress_asked: Option<Instant>,
}

pub(super) struct Observe {
    clients: Clients,
    prefix: String,
    queue: Queue,
    watch: Option<Watching>,
    /// The prefix must be read (afresh) before watching: at the start, after a compaction.
    need_read: bool,
    /// After a failure: when the next attempt may go out.
    retry_at: Option<Instant>,
    backoff: Backoff,
    /// How long the watch may be quiet before it is asked for progress.
    quiet: Duration,
    /// A read of the prefix in flight, kept across cancellations of [`Observe::next`]: a
    /// caller's `select!` that picks another branch first must not make etcd serve the read
    /// again.
    reading: Option<PendingRead>,
}

type ReadResult = Result<etcd_client::GetResponse, EtcdError>;

struct PendingRead {
    sent: Instant,
    /// The highest revision seen when it was sent (see [`Clients::check`]).
    floor: i64,
    /// (In a mutex only to make the driver `Sync`; reached with `get_mut`, never locked.)
    answer:
        std::sync::Mutex<std::pin::Pin<Box<dyn std::future::Future<Output = ReadResult> + Send>>>,
}

impl Observe {
    pub fn new(clients: Clients, election: &str, keepalive_interval: Duration) -> Observe {
        Observe {
            clients,
            prefix: keys::election_prefix(election),
            queue: Queue::new(election),
            watch: None,
            need_read: true,
            retry_at: None,
            backoff: fresh_backoff(),
            quiet: keepalive_interval,
            reading: None,
        }
    }

    pub fn queue(&self) -> &Queue {
        &self.queue
    }

    /// Drop the watch (after contact with etcd came back): the next call reopens it from the
    /// last revision seen, in case the old one died silently with its connection.
    pub fn reopen(&mut self) {
        self.watch = None;
    }

    /// Read the election afresh before watching again: after etcd's history was found rewound
    /// (a watch reopened on the rebuilt etcd would never say that the old keys are gone) or
    /// passed again.
    pub fn reread(&mut self) {
        self.need_read = true;
        self.watch = None;
    }

    /// Wait for the next change of the queue or report of progress. Cancel-safe: nothing is
    /// lost when the future is dropped. After an error the next call first waits a backoff.
    pub async fn next(&mut self, pace: &Pace) -> Result<Seen, EtcdError> {
        if let Some(at) = self.retry_at {
            sleep_until(at).await;
            self.retry_at = None;
        }
        let r = self.step(pace).await;
        match &r {
            Ok(_) => self.backoff = fresh_backoff(),
            Err(e) => {
                debug!(error = %e, "observing the election failed");
                self.watch = None;
                self.retry_at = Some(Instant::now() + self.backoff.delay());
            }
        }
        r
    }

    async fn step(&mut self, pace: &Pace) -> Result<Seen, EtcdError> {
        if self.need_read {
            return self.read(pace).await;
        }
        if self.watch.is_none() {
            self.open(pace).await?;
        }
        let w = self.watch.as_mut().expect("invariant: opened above");
        loop {
            let quiet_until = match w.progress_asked {
                Some(asked) => asked + pace.now(),
                None => w.last_message + self.quiet,
            };
            tokio::select! {
                m = w.stream.message() => {
                    let resp = match m {
                        Ok(Some(resp)) => resp,
                        Ok(None) => return Err(self.failed(EtcdError::StreamClosed { op: "watch" })),
                        Err(source) => {
                            return Err(self.failed(EtcdError::Request { op: "watch", source }));
                        }
                    };
                    let w = self.watch.as_mut().expect("invariant: still watching");
                    w.last_message = Instant::now();
                    w.progress_asked = None;
                    return Ok(self.apply(resp));
                }
                _ = sleep_until(quiet_until) => {
                    if w.progress_asked.is_some() {
                        // A stuck watch is a frozen member, not a slow link: it does not lengthen
                        // the reply wait the keepalives share (that would let a hung keepalive
                        // outlast the leader's budget).
                        let after = pace.now();
                        return Err(self.failed(EtcdError::Timeout { op: "watch progress", after }));
                    }
                    if self.clients.answered_within(w.endpoint, self.quiet * 2) {
                        // The watch's member answered one of the last two keepalives in time:
                        // it is not frozen, and asking it for progress would only double an
                        // idle replica's messages to etcd.
                        w.last_message = Instant::now();
                        continue;
                    }
                    if let Err(source) = w.stream.request_progress().await {
                        return Err(self.failed(EtcdError::Request { op: "watch", source }));
                    }
                    w.progress_asked = Some(Instant::now());
                }
            }
        }
    }

    /// The watch failed on its endpoint: move on to the next one when another member may do
    /// better.
    fn failed(&mut self, e: EtcdError) -> EtcdError {
        if let Some(w) = self.watch.take()
            && e.moves_endpoint()
        {
            self.clients.failed(w.endpoint);
        }
        e
    }

    /// Read every key under the prefix and start the queue over from it. Cancel-safe without
    /// waste: a read already sent is awaited again, not sent again.
    async fn read(&mut self, pace: &Pace) -> Result<Seen, EtcdError> {
        let pending = self.reading.get_or_insert_with(|| {
            let opts = GetOptions::new()
                .with_prefix()
                .with_sort(SortTarget::Create, SortOrder::Ascend);
            let (clients, prefix, wait) = (self.clients.clone(), self.prefix.clone(), pace.now());
            PendingRead {
                sent: Instant::now(),
                floor: self.clients.max_revision(),
                answer: std::sync::Mutex::new(Box::pin(async move {
                    clients
                        .call("election read", wait, 0, |mut c| async move {
                            c.get(prefix, Some(opts)).await
                        })
                        .await
                })),
            }
        });
        let answer = pending.answer.get_mut().unwrap_or_else(|p| p.into_inner());
        let resp = answer.as_mut().await;
        let PendingRead { sent, floor, .. } = self.reading.take().expect("invariant: set above");
        let resp = pace.note(sent, resp)?;
        self.clients.check(floor, resp.header())?;
        let revision = resp.header().map(|h| h.revision()).unwrap_or_default();
        let delta = self.queue.reset(revision, resp.kvs().iter().map(candidate));
        self.need_read = false;
        self.watch = None;
        Ok(Seen { delta, revision })
    }

    /// Watch the prefix from just after the last revision seen, on the current endpoint.
    async fn open(&mut self, pace: &Pace) -> Result<(), EtcdError> {
        let opts = WatchOptions::new()
            .with_prefix()
            .with_start_revision(self.queue.revision() + 1);
        let prefix = self.prefix.clone();
        let (endpoint, _) = self.clients.pick();
        let stream = self
            .clients
            .call("watch", pace.now(), 0, |mut c| async move {
                c.watch(prefix, Some(opts)).await
            })
            .await?;
        self.watch = Some(Watching {
            endpoint,
            stream,
            last_message: Instant::now(),
            progress_asked: None,
        });
        Ok(())
    }

    /// Apply one watch response to the queue.
    fn apply(&mut self, resp: etcd_client::WatchResponse) -> Seen {
        let revision = resp.header().map(|h| h.revision()).unwrap_or_default();
        let mut delta = Delta::default();
        if resp.canceled() {
            // Compacted (or refused): read the election afresh.
            debug!(
                reason = resp.cancel_reason(),
                compact_revision = resp.compact_revision(),
                "watch canceled; reading the election afresh"
            );
            self.need_read = true;
            self.watch = None;
            return Seen { delta, revision };
        }
        if resp.created() {
            // Its header says where the store is, not how far the events sent so far reach.
            return Seen { delta, revision };
        }
        if resp.events().is_empty() {
            // A progress report: every event up to `revision` has been sent. Below a revision
            // already seen, the member is behind — or etcd's history was rewound (a watch from a
            // revision it has not reached waits silently): a read, which a quorum confirms, tells.
            if revision < self.clients.max_revision() {
                self.need_read = true;
                self.watch = None;
                return Seen { delta, revision };
            }
            self.queue.advance(revision);
            self.clients.saw(revision);
            return Seen { delta, revision };
        }
        // The queue is as of the last event applied: a batch's header may already be ahead of
        // events still to come.
        for ev in resp.events() {
            let Some(kv) = ev.kv() else { continue };
            let c = candidate(kv);
            let d = match ev.event_type() {
                EventType::Put => self.queue.put(kv.mod_revision(), c),
                EventType::Delete => self.queue.delete(kv.mod_revision(), &c.key),
            };
            delta.merge(d);
        }
        self.clients.saw(self.queue.revision());
        Seen { delta, revision }
    }
}

fn fresh_backoff() -> Backoff {
    Backoff::new(Duration::from_millis(50), Duration::from_secs(2))
}
