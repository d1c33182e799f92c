//! Campaign, as etcd's `concurrency/election.go` does: create this session's candidate key
//! (put-if-absent, bound to the lease), then read this replica's place from the queue that
//! [`super::observe`] keeps — no read of its own, and nothing to watch but the one watch of the
//! whole prefix. The key is created only while the election's floor record is as
//! `super::floor::gate` read it (a record written meanwhile may put the key's revision below
//! the floor).

use std::time::Duration;

use etcd_client::{Compare, CompareOp};
use tokio::time::{Instant, sleep};

use super::client::Clients;
use super::error::{Backoff, EtcdError};
use super::session::Pace;
use super::txn::{PutIfAbsent, put_if_absent};
use crate::election::queue::{Foreign, Queue};
use crate::election::{LeaderInfo, Position};

/// How a campaign within one session ended.
#[derive(Debug)]
pub(super) enum CampaignEnd {
    /// Our key or lease is gone at etcd.
    SessionLost(String),
    /// Our key's name (`<election>/<lease>`) is taken by a key another writer put there: no
    /// candidate key can be created under this lease.
    Blocked(String),
    /// A non-retryable error.
    Fatal(EtcdError),
}

/// The floor record a candidate key's creation compares: its key and the mod revision read.
pub(super) struct FloorSeen {
    pub key: String,
    pub mod_revision: i64,
}

/// Create `key` bound to `lease` while the floor record is as `floor` says, retrying transient
/// failures with backoff (`on_error` hears of each); its create revision, or why the session
/// is over.
#[allow(clippy::too_many_arguments)]
pub(super) async fn create_key(
    clients: Clients,
    pace: Pace,
    key: String,
    value: String,
    lease: i64,
    floor: FloorSeen,
    retry_max: Duration,
    on_error: impl Fn(&EtcdError),
) -> Result<i64, CampaignEnd> {
    let mut backoff = Backoff::new(Duration::from_millis(50), retry_max);
    loop {
        let sent = Instant::now();
        let created = create_candidate(&clients, &key, &value, lease, &floor, pace.now()).await;
        match pace.note(sent, created) {
            Ok(Some(rev)) => return Ok(rev),
            Ok(None) => {
                return Err(CampaignEnd::SessionLost(format!(
                    "the floor record {} changed before the key was created (etcd's history was rewound?)",
                    floor.key
                )));
            }
            Err(EtcdError::LeaseGone { .. }) => {
                return Err(CampaignEnd::SessionLost(
                    "lease gone before the key was created".into(),
                ));
            }
            Err(EtcdError::KeyTaken { key, lease }) => {
                return Err(CampaignEnd::Blocked(format!(
                    "candidate key {key} exists, bound to another lease ({lease:x}): written by another writer"
                )));
            }
            Err(e) if e.is_fatal() => return Err(CampaignEnd::Fatal(e)),
            Err(e) => {
                on_error(&e);
                sleep(backoff.delay()).await;
            }
        }
    }
}

/// Create `key` bound to `lease` if absent and the floor record unchanged; return its create
/// revision (ours, or the existing key's if we created it in an earlier attempt whose reply was
/// lost), or `None` when the floor record changed.
async fn create_candidate(
    clients: &Clients,
    key: &str,
    value: &str,
    lease: i64,
    floor: &FloorSeen,
    after: Duration,
) -> Result<Option<i64>, EtcdError> {
    let unchanged = [Compare::mod_revision(
        floor.key.as_str(),
        CompareOp::Equal,
        floor.mod_revision,
    )];
    match put_if_absent(clients, "campaign txn", key, value, lease, unchanged, after).await? {
        PutIfAbsent::Created(revision) => Ok(Some(revision)),
        PutIfAbsent::Exists(kv) if kv.lease() == lease => Ok(Some(kv.create_revision())),
        PutIfAbsent::Exists(kv) => Err(EtcdError::KeyTaken {
            key: key.to_string(),
            lease: kv.lease(),
        }),
        PutIfAbsent::ConditionFailed => Ok(None),
    }
}

/// Where the key `own` created at `own_revision` stands in `queue`: leading (the lowest create
/// revision: its own revision is the fencing token), waiting behind the leader, not yet seen
/// (the watch has not reached its creation), or gone — deleted, or rewritten by another writer.
///
/// A key of the same name under another create revision is not ours: an older one is the key
/// this lease held before (its deletion not seen yet, e.g. behind a stalled watch: never lead
/// under its token), a newer one was created after ours was deleted.
pub(super) fn position(queue: &Queue, own: &str, own_revision: i64) -> Result<Position, String> {
    match queue.get(own) {
        Some(c) if c.create_revision < own_revision && queue.revision() < own_revision => {
            Ok(Position::Joining)
        }
        Some(c) if c.create_revision != own_revision => Err(format!(
            "candidate key {own} was created again (create revision {}, ours {own_revision})",
            c.create_revision
        )),
        Some(c) if queue.leader().map(|l| l.create_revision) == Some(c.create_revision) => {
            Ok(Position::Leading {
                token: c.create_revision,
                leader: LeaderInfo::from_candidate(c),
            })
        }
        Some(_) => Ok(Position::Waiting {
            leader: queue.leader().map(LeaderInfo::from_candidate),
        }),
        None if queue.revision() < own_revision => Ok(Position::Joining),
        None => match queue.foreign().find(|(c, _)| c.key == own) {
            Some((_, Foreign::LeaseMismatch)) => Err(format!(
                "candidate key {own} was rewritten by another writer (its lease dropped)"
            )),
            _ => Err(format!("candidate key {own} was deleted")),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::election::Candidate;

    fn cand(key: &str, rev: i64, lease: i64) -> Candidate {
        Candidate {
            key: key.into(),
            value: String::new(),
            create_revision: rev,
            lease,
        }
    }

    #[test]
    fn position_table() {
        // (name, keys, read at, own key, its create revision, what it is)
        type Case = (
            &'static str,
            Vec<Candidate>,
            i64,
            &'static str,
            i64,
            Result<&'static str, &'static str>,
        );
        let cases: Vec<Case> = vec![
            (
                "first leads",
                vec![cand("e/a", 4, 0xa), cand("e/b", 5, 0xb)],
                9,
                "e/a",
                4,
                Ok("leading 4"),
            ),
            (
                "second waits",
                vec![cand("e/a", 4, 0xa), cand("e/b", 5, 0xb)],
                9,
                "e/b",
                5,
                Ok("waiting e/a"),
            ),
            (
                "not yet seen",
                vec![cand("e/a", 4, 0xa)],
                4,
                "e/b",
                5,
                Ok("joining"),
            ),
            (
                "deleted",
                vec![cand("e/a", 4, 0xa)],
                9,
                "e/b",
                5,
                Err("deleted"),
            ),
            (
                "rewritten",
                vec![cand("e/a", 4, 0xa), cand("e/b", 5, 0)],
                9,
                "e/b",
                5,
                Err("rewritten"),
            ),
            (
                "a foreign key ahead does not lead",
                vec![cand("e/x", 2, 0), cand("e/b", 5, 0xb)],
                9,
                "e/b",
                5,
                Ok("leading 5"),
            ),
            (
                "the lease's earlier key, its deletion not seen yet, does not lead for us",
                vec![cand("e/a", 4, 0xa), cand("e/b", 5, 0xb)],
                9,
                "e/a",
                12,
                Ok("joining"),
            ),
            (
                "the earlier key still there after our creation was seen",
                vec![cand("e/a", 4, 0xa)],
                12,
                "e/a",
                12,
                Err("created again"),
            ),
            (
                "a key of our name created after ours",
                vec![cand("e/a", 14, 0xa)],
                15,
                "e/a",
                12,
                Err("created again"),
            ),
        ];
        for (name, keys, at, own, own_rev, want) in cases {
            let mut q = Queue::new("e");
            q.reset(at, keys);
            let got = match position(&q, own, own_rev) {
                Ok(Position::Leading { token, .. }) => Ok(format!("leading {token}")),
                Ok(Position::Waiting { leader }) => Ok(format!(
                    "waiting {}",
                    leader.map(|l| l.key).unwrap_or_default()
                )),
                Ok(Position::Joining) => Ok("joining".to_string()),
                Ok(other) => Ok(format!("{other:?}")),
                Err(why) => Err(why),
            };
            match (got, want) {
                (Ok(g), Ok(w)) => assert_eq!(g, w, "{name}"),
                (Err(g), Err(w)) => assert!(g.contains(w), "{name}: {g}"),
                (g, w) => panic!("{name}: got {g:?}, want {w:?}"),
            }
        }
    }
}
