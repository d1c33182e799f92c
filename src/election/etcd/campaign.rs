//! Campaign and observe, as in etcd's `concurrency/election.go`: create this session's
//! candidate key (put-if-absent, bound to the lease), then repeatedly read the election in one
//! transaction (own key, leader, predecessor) and watch only what can change this replica's
//! position — its own key, its predecessor, and (to name it) the leader.

use std::sync::Arc;
use std::time::Duration;

use etcd_client::{
    Client, EventType, GetOptions, SortOrder, SortTarget, Txn, TxnOp, TxnOpResponse, WatchOptions,
};
use tokio::sync::{Notify, watch};
use tokio::time::{Instant, sleep, timeout};
use tracing::{debug, trace};

use super::error::{Backoff, EtcdError, bounded};
use super::session::Pace;
use super::txn::{PutIfAbsent, candidate, put_if_absent};
use crate::election::{
    Candidate, DriverConfig, ElectionView, LeaderInfo, Position, Telemetry, keys,
};

/// How a campaign within one session ended.
#[derive(Debug)]
pub(super) enum CampaignEnd {
    /// Our key or lease is gone at etcd.
    SessionLost(String),
    /// A non-retryable error.
    Fatal(EtcdError),
}

/// What a campaign borrows from its driver.
pub(super) struct CampaignCtx<'a> {
    pub client: &'a Client,
    pub cfg: &'a DriverConfig,
    pub pace: &'a Pace,
    pub view: &'a watch::Sender<ElectionView>,
    pub telemetry: &'a dyn Telemetry,
}

/// Create our key, then repeatedly read the election and wait for the next relevant change.
/// Returns only when the session is lost or on a fatal error; transient errors are retried.
pub(super) async fn campaign(
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
        telemetry,
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
        telemetry.backend_error(e.kind());
        view.send_if_modified(|v| std::mem::replace(&mut v.reachable, false));
    };

    let own_revision = loop {
        let sent = Instant::now();
        let created = create_candidate(client, &key, &value, lease, pace.now()).await;
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
        let read = snapshot(client, &prefix, &key, own_revision, pace.now()).await;
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
                telemetry.predecessor_woken();
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

/// One consistent read of the election, at `revision`.
#[derive(Debug, Clone)]
struct Snapshot {
    pub revision: i64,
    /// Our own key, if it still exists.
    pub own: Option<Candidate>,
    /// The candidate with the lowest create revision.
    pub leader: Option<Candidate>,
    /// The candidate with the greatest create revision below ours.
    pub predecessor: Option<Candidate>,
}

/// Create `key` bound to `lease` if absent; return its create revision (ours, or the existing
/// key's if we created it in an earlier attempt whose reply was lost).
async fn create_candidate(
    client: &Client,
    key: &str,
    value: &str,
    lease: i64,
    after: Duration,
) -> Result<i64, EtcdError> {
    match put_if_absent(client, "campaign txn", key, value, lease, [], after).await? {
        PutIfAbsent::Created(revision) => Ok(revision),
        PutIfAbsent::Exists(kv) if kv.lease() == lease => Ok(kv.create_revision()),
        PutIfAbsent::Exists(kv) => Err(EtcdError::Setup(format!(
            "candidate key {key} exists with another lease {:x}",
            kv.lease()
        ))),
        // No extra condition, so absent means written: cannot happen inside one txn.
        PutIfAbsent::ConditionFailed => Err(EtcdError::LeaseGone { lease }),
    }
}

/// Read our key, the leader and our predecessor in one transaction.
async fn snapshot(
    client: &Client,
    prefix: &str,
    own_key: &str,
    own_revision: i64,
    after: Duration,
) -> Result<Snapshot, EtcdError> {
    let first = GetOptions::new()
        .with_prefix()
        .with_sort(SortTarget::Create, SortOrder::Ascend)
        .with_limit(1);
    let mut ops = vec![TxnOp::get(own_key, None), TxnOp::get(prefix, Some(first))];
    if own_revision > 1 {
        let pred = GetOptions::new()
            .with_prefix()
            .with_sort(SortTarget::Create, SortOrder::Descend)
            .with_max_create_revision(own_revision - 1)
            .with_limit(1);
        ops.push(TxnOp::get(prefix, Some(pred)));
    }
    let mut c = client.clone();
    let resp = bounded("election read", after, 0, c.txn(Txn::new().and_then(ops))).await?;
    let revision = resp.header().map(|h| h.revision()).unwrap_or_default();
    let mut gets = resp.op_responses().into_iter().filter_map(|op| match op {
        TxnOpResponse::Get(g) => Some(g.kvs().first().map(candidate)),
        _ => None,
    });
    let own = gets.next().flatten();
    let leader = gets.next().flatten();
    let predecessor = gets.next().flatten();
    Ok(Snapshot {
        revision,
        own,
        leader,
        predecessor,
    })
}
