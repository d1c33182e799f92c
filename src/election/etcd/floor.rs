//! The floor record: the rewound-history guard ([`Clients::check`]) made to hold for the
//! election, not only for a process that remembers. A replica that finds etcd's history rewound
//! — rebuilt from empty, restored from an older snapshot — writes the highest revision it has
//! seen into `<election>.floor` (beside the prefix: [`keys::floor_key`]) and raises etcd's
//! revision past it by writing that key again and again, when the gap is at most
//! [`MAX_RAISE`]; every replica reads the record before it campaigns ([`gate`]).
//!
//! Invariants (for replicas of this version):
//! - the record only grows: it is written with a compare on its mod revision, to the highest
//!   of its value and the writer's;
//! - the write that raises the record to F deletes, in the same transaction, every candidate
//!   key created at a revision ≤ F (each guarded by its create revision): a key a replica that
//!   never saw the old history created in the rebuilt one, whose token would repeat;
//! - a candidate key is created only in a transaction that compares the record's mod revision
//!   with the one [`gate`] read, and only when etcd's revision had reached the record's value:
//!   so once the record holds F, no candidate key with a create revision ≤ F exists, nor will.
//!
//! What it cannot do: a replica that led with a repeated token before any replica that
//! remembers had written the record led with it (the window is the remembering replica's
//! reconnection, shortened by the start guard); and when no replica remembers (all restarted
//! without state after the rebuild) nothing is known to protect. docs/operations.md says how
//! the alert sees both.
//!
//! Writing the record into a healthy etcd at every leadership change would not help: it lives
//! in the same etcd, so a rebuild loses it and an older snapshot holds an older one. Only a
//! replica that knows more than etcd does writes it.

use std::time::Duration;

use etcd_client::{Compare, CompareOp, GetOptions, KeyValue, Txn, TxnOp, TxnOpResponse};
use tokio::task::JoinSet;
use tracing::{debug, error, info, warn};

use super::client::Clients;
use super::error::{Backoff, EtcdError};
use crate::election::keys::{self, KeyKind};

pub use super::client::{MAX_RAISE, too_far};

/// How many of those writes are in flight at once.
const IN_FLIGHT: usize = 16;

/// What a floor record holds: its value (0 when absent or unreadable) and its mod revision (0
/// when absent), which a candidate key's creation compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Record {
    value: i64,
    mod_revision: i64,
}

fn record(key: &str, kv: Option<&KeyValue>) -> Record {
    let Some(kv) = kv else {
        return Record {
            value: 0,
            mod_revision: 0,
        };
    };
    Record {
        value: value_of(key, kv.value()),
        mod_revision: kv.mod_revision(),
    }
}

/// A floor record's value: a revision in decimal; anything else counts as none (said).
fn value_of(key: &str, bytes: &[u8]) -> i64 {
    let text = String::from_utf8_lossy(bytes);
    match text.trim().parse::<i64>() {
        Ok(v) if v >= 0 => v,
        _ => {
            warn!(key, value = %text, "the floor record is not a revision (written by another tool?); ignoring its value, it is overwritten when a replica raises it");
            0
        }
    }
}

/// Before a campaign: read `election`'s floor record and check etcd's answer against the
/// highest of the revision this replica has seen and the record's value. `Ok`: the record's
/// mod revision (0 when absent), which the candidate key's creation compares, so a record
/// written meanwhile makes it fail. [`EtcdError::HistoryRewound`] when etcd is below the floor:
/// the rewind mark is raised, and the host's [`mender`] mends it.
pub(super) async fn gate(
    clients: &Clients,
    election: &str,
    after: Duration,
) -> Result<i64, EtcdError> {
    let key = keys::floor_key(election);
    let before = clients.max_revision();
    let k = key.clone();
    let resp = clients
        .call("floor read", after, 0, |mut c| async move {
            c.get(k, None).await
        })
        .await?;
    let r = record(&key, resp.kvs().first());
    if r.value > before {
        debug!(
            key,
            floor = r.value,
            seen = before,
            "the floor record is above the revision seen"
        );
        clients.saw(r.value);
    }
    clients.check(before.max(r.value), resp.header())?;
    Ok(r.mod_revision)
}

/// The host's mender: whenever a rewound history is found (the mark of [`Clients::rewinds`]
/// rises), mend it for `elections` ([`mend`]); transient errors are retried with backoff.
/// Runs until aborted (with the host).
pub(super) async fn mender(clients: Clients, elections: Vec<String>, after: Duration) {
    let mut marks = clients.rewinds();
    let mut mended = 0;
    let fresh = || Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
    let mut backoff = fresh();
    loop {
        let mark = *marks.borrow_and_update();
        if mark > mended {
            match mend(&clients, &elections, mark, after).await {
                Ok(()) => {
                    mended = mark;
                    backoff = fresh();
                }
                Err(e) if e.is_fatal() => {
                    error!(error = %e, hint = e.hint().unwrap_or(""), "cannot write the floor record: replicas that never saw the old etcd history may lead with repeated fencing tokens");
                    mended = mark;
                }
                Err(e) => {
                    debug!(error = %e, "mending the rewound history failed; retrying");
                    tokio::time::sleep(backoff.delay()).await;
                    continue;
                }
            }
        }
        if marks.changed().await.is_err() {
            return;
        }
    }
}

/// Mend a history rewound below `mark` (the highest revision seen before): raise each
/// election's floor record to the floor (the highest of `mark` and every record) deleting the
/// candidate keys at or below it, then raise etcd's revision past it — unless the gap exceeds
/// [`MAX_RAISE`], which the refusal then says, with what to do.
pub(super) async fn mend(
    clients: &Clients,
    elections: &[String],
    mark: i64,
    after: Duration,
) -> Result<(), EtcdError> {
    let Some(first) = elections.first() else {
        return Ok(());
    };
    let mut floor = mark;
    for _ in 0..20 {
        // Every record to the floor; a higher record raises the floor, and every record again.
        loop {
            let mut raised = false;
            for e in elections {
                let f = raise_record(clients, e, floor, after).await?;
                raised |= f > floor;
                floor = floor.max(f);
            }
            if !raised {
                break;
            }
        }
        clients.saw(floor);
        match raise_revision(clients, &keys::floor_key(first), floor, after).await? {
            Raised::Moved(v) => {
                debug!(
                    floor,
                    record = v,
                    "the floor record changed meanwhile; mending again"
                );
                floor = floor.max(v);
            }
            Raised::Done { from, to } => {
                if from < to {
                    info!(
                        from,
                        to,
                        floor,
                        "raised etcd's revision past the floor (the highest revision seen before its history was rewound): fencing tokens keep increasing"
                    );
                }
                // A checked read ends the refusal now, not at the next call.
                let before = clients.max_revision();
                let key = keys::floor_key(first);
                let resp = clients
                    .call("floor read", after, 0, |mut c| async move {
                        c.get(key, None).await
                    })
                    .await?;
                let _ = clients.check(before, resp.header());
                return Ok(());
            }
            Raised::TooFar { revision } => {
                for e in elections {
                    let why = too_far(e, floor, revision);
                    error!(election = %e, floor, revision, gap = floor - revision, "{why}");
                }
                return Ok(());
            }
        }
    }
    Err(EtcdError::Setup(
        "the floor record kept changing while this replica mended the rewound history".into(),
    ))
}

/// Raise `election`'s floor record to at least `floor`, deleting (in the same transaction)
/// every candidate key created at or below it. Returns the floor after: higher when the
/// record already was.
async fn raise_record(
    clients: &Clients,
    election: &str,
    floor: i64,
    after: Duration,
) -> Result<i64, EtcdError> {
    let key = keys::floor_key(election);
    let prefix = keys::election_prefix(election);
    for _ in 0..20 {
        // The record and the candidates in one read: one revision.
        let read = Txn::new().and_then([
            TxnOp::get(key.clone(), None),
            TxnOp::get(prefix.clone(), Some(GetOptions::new().with_prefix())),
        ]);
        let resp = clients
            .call("floor mend read", after, 0, |mut c| async move {
                c.txn(read).await
            })
            .await?;
        let mut gets = resp.op_responses().into_iter().filter_map(|op| match op {
            TxnOpResponse::Get(g) => Some(g),
            _ => None,
        });
        let (Some(rec), Some(under)) = (gets.next(), gets.next()) else {
            return Err(EtcdError::Setup(
                "etcd answered the floor read without its two results".into(),
            ));
        };
        let r = record(&key, rec.kvs().first());
        let f = floor.max(r.value);
        // At most 100 deletions a transaction (etcd allows 128 operations by default).
        let stale: Vec<(String, i64)> = under
            .kvs()
            .iter()
            .filter(|kv| kv.create_revision() <= f)
            .filter_map(|kv| {
                let k = String::from_utf8_lossy(kv.key()).into_owned();
                matches!(keys::read_key(election, &k), KeyKind::Candidate { .. })
                    .then_some((k, kv.create_revision()))
            })
            .take(100)
            .collect();
        if r.value >= f && stale.is_empty() {
            return Ok(f);
        }
        let mut when = vec![Compare::mod_revision(
            key.clone(),
            CompareOp::Equal,
            r.mod_revision,
        )];
        when.extend(
            stale
                .iter()
                .map(|(k, cr)| Compare::create_revision(k.clone(), CompareOp::Equal, *cr)),
        );
        let mut ops = vec![TxnOp::put(key.clone(), f.to_string(), None)];
        ops.extend(stale.iter().map(|(k, _)| TxnOp::delete(k.clone(), None)));
        let write = Txn::new().when(when).and_then(ops);
        let resp = clients
            .call("floor record update", after, 0, |mut c| async move {
                c.txn(write).await
            })
            .await?;
        if resp.succeeded() {
            let removed: Vec<&str> = stale.iter().map(|(k, _)| k.as_str()).collect();
            warn!(
                key,
                floor = f,
                was = r.value,
                removed = ?removed,
                "etcd's history was rewound: recorded the highest revision seen in the election's floor record, so that replicas which never saw it do not repeat fencing tokens; candidate keys created at or below it are removed"
            );
        }
        // Written or changed meanwhile: read again (to find what is left).
    }
    Err(EtcdError::Setup(format!(
        "the floor record {key} kept changing while this replica raised it"
    )))
}

/// How raising etcd's revision ended.
enum Raised {
    /// The revision reached the floor (`from`: where it was).
    Done { from: i64, to: i64 },
    /// The gap is larger than [`MAX_RAISE`]; etcd is at `revision`.
    TooFar { revision: i64 },
    /// The floor record no longer holds the floor (another replica raised it to this).
    Moved(i64),
}

/// Raise etcd's revision to at least `floor` by rewriting the floor record `key` (with the
/// value it holds, compared on it, so a higher floor written meanwhile stops the raise), each
/// write one revision, [`IN_FLIGHT`] at a time.
async fn raise_revision(
    clients: &Clients,
    key: &str,
    floor: i64,
    after: Duration,
) -> Result<Raised, EtcdError> {
    let k = key.to_string();
    let resp = clients
        .call("floor read", after, 0, |mut c| async move {
            c.get(k, None).await
        })
        .await?;
    let r = record(key, resp.kvs().first());
    if r.value != floor {
        return Ok(Raised::Moved(r.value));
    }
    let from = resp.header().map(|h| h.revision()).unwrap_or_default();
    if from >= floor {
        return Ok(Raised::Done { from, to: from });
    }
    if floor - from > MAX_RAISE {
        return Ok(Raised::TooFar { revision: from });
    }
    let value = floor.to_string();
    let mut at = from;
    let mut writes: JoinSet<Result<(bool, i64), EtcdError>> = JoinSet::new();
    while at < floor {
        while writes.len() < IN_FLIGHT && (writes.len() as i64) < floor - at {
            let (c, key, value) = (clients.clone(), key.to_string(), value.clone());
            writes.spawn(async move {
                let txn = Txn::new()
                    .when([Compare::value(key.clone(), CompareOp::Equal, value.clone())])
                    .and_then([TxnOp::put(key, value, None)]);
                let resp = c
                    .call(
                        "floor raise",
                        after,
                        0,
                        |mut c| async move { c.txn(txn).await },
                    )
                    .await?;
                let rev = resp.header().map(|h| h.revision()).unwrap_or_default();
                Ok((resp.succeeded(), rev))
            });
        }
        let Some(done) = writes.join_next().await else {
            break;
        };
        let (ok, rev) = done.map_err(|e| EtcdError::Setup(format!("floor raise: {e}")))??;
        if !ok {
            writes.abort_all();
            let k = key.to_string();
            let resp = clients
                .call("floor read", after, 0, |mut c| async move {
                    c.get(k, None).await
                })
                .await?;
            return Ok(Raised::Moved(record(key, resp.kvs().first()).value));
        }
        at = at.max(rev);
    }
    Ok(Raised::Done { from, to: at })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_absent_or_foreign_record_counts_as_no_floor() {
        assert_eq!(record("svc.floor", None).value, 0);
        for (text, want) in [("32", 32), (" 32\n", 32), ("abc", 0), ("-1", 0), ("", 0)] {
            assert_eq!(value_of("svc.floor", text.as_bytes()), want, "{text:?}");
        }
    }

    #[test]
    fn the_too_far_refusal_names_the_floor_the_revision_and_what_to_do() {
        let why = too_far("svc", 5_000_000, 12);
        for needed in [
            "revision 12 ",
            "below 5000000",
            "svc.floor",
            "--bump-revision 5000988",
            "--state-file",
            "docs/operations.md",
            &MAX_RAISE.to_string(),
        ] {
            assert!(why.contains(needed), "{needed:?} missing from {why:?}");
        }
    }
}
