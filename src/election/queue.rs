//! The election's queue as this replica knows it: every key under the election's prefix from
//! one read, kept current by the events of one watch of the whole prefix (what etcd's own
//! `Observe` does). Pure: the backend feeds it reads and events; it answers who leads, who
//! stands right before a key, and which keys are not candidates.
//!
//! Only keys of exactly the candidate form ([`keys::read_key`]) whose lease is the one their
//! name says count as candidates. A key written by hand (`<election>/zzz`, no lease) or a
//! candidate key overwritten by another writer (its lease dropped) is *foreign*: never followed
//! as leader, reported once. Keys of nested elections (`<election>/sub/…`) are theirs and
//! ignored.

use std::collections::BTreeMap;

use super::Candidate;
use super::keys::{self, KeyKind};

/// Why a key under the prefix is not a candidate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Foreign {
    /// Not of the form `<election>/<lease id in hex>`.
    NotACandidateKey,
    /// Of that form, but bound to another lease (or none): rewritten by another writer.
    LeaseMismatch,
}

impl Foreign {
    pub fn as_str(self) -> &'static str {
        match self {
            Foreign::NotACandidateKey => "not a candidate key (<election>/<lease id in hex>)",
            Foreign::LeaseMismatch => "bound to another lease than its name says",
        }
    }
}

/// The leader (the head of the queue) left it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Departure {
    pub key: String,
    /// With the clean-release mark ([`super::MemberInfo::released`]): it stopped its command
    /// first. Without it (deleted, expired, revoked, rewritten, or gone between two reads) it
    /// may still be stopping.
    pub marked: bool,
}

/// What one event changed.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Delta {
    /// A candidate joined, left or changed its value.
    pub candidates: bool,
    /// Keys that became foreign that were not before (report each once).
    pub new_foreign: Vec<(String, Foreign)>,
    /// Keys that left the queue of candidates (deleted, or rewritten into foreign keys).
    pub left: Vec<String>,
    /// Keys that joined it.
    pub joined: Vec<String>,
    /// Leaders that left, in order.
    pub head_left: Vec<Departure>,
}

/// The queue at [`Queue::revision`].
#[derive(Debug, Clone, PartialEq)]
pub struct Queue {
    election: String,
    revision: i64,
    /// Candidates by create revision: the first one leads.
    candidates: BTreeMap<i64, Candidate>,
    /// Each candidate key's create revision.
    by_key: BTreeMap<String, i64>,
    foreign: BTreeMap<String, (Candidate, Foreign)>,
}

impl Delta {
    /// This delta, then `later`.
    pub fn merge(&mut self, later: Delta) {
        self.candidates |= later.candidates;
        self.new_foreign.extend(later.new_foreign);
        self.left.extend(later.left);
        self.joined.extend(later.joined);
        self.head_left.extend(later.head_left);
    }
}

impl Queue {
    pub fn new(election: &str) -> Queue {
        Queue {
            election: election.to_string(),
            revision: 0,
            candidates: BTreeMap::new(),
            by_key: BTreeMap::new(),
            foreign: BTreeMap::new(),
        }
    }

    /// Start over from a read of the whole prefix at `revision`. A candidate is its key and
    /// its create revision: a key deleted and created again (under the same lease) between two
    /// reads has left the queue and joined it, though its name is the same.
    pub fn reset(&mut self, revision: i64, keys: impl IntoIterator<Item = Candidate>) -> Delta {
        let before = std::mem::take(&mut self.by_key);
        let head = self.leader().map(|c| (c.key.clone(), c.create_revision));
        let mut released = Vec::new();
        let known_foreign = std::mem::take(&mut self.foreign);
        self.candidates.clear();
        self.revision = revision;
        let mut delta = Delta {
            candidates: true,
            ..Delta::default()
        };
        for c in keys {
            if crate::election::MemberInfo::released_in(&c.value) {
                released.push((c.key.clone(), c.create_revision));
            }
            let d = self.put(revision, c);
            delta.joined.extend(
                d.joined
                    .into_iter()
                    .filter(|k| before.get(k) != self.by_key.get(k)),
            );
            delta.new_foreign.extend(
                d.new_foreign
                    .into_iter()
                    .filter(|(key, _)| !known_foreign.contains_key(key)),
            );
        }
        delta.left = before
            .iter()
            .filter(|(k, rev)| self.by_key.get(*k) != Some(*rev))
            .map(|(k, _)| k.clone())
            .collect();
        // The leader before the read is gone: marked only if the read shows its mark.
        if let Some((key, rev)) = head.filter(|(k, rev)| self.by_key.get(k) != Some(rev)) {
            let marked = released.contains(&(key.clone(), rev));
            delta.head_left.push(Departure { key, marked });
        }
        delta
    }

    /// A key was written at `revision` (created or updated).
    pub fn put(&mut self, revision: i64, c: Candidate) -> Delta {
        self.revision = self.revision.max(revision);
        let mut delta = Delta::default();
        // A key recreated under another create revision, or rewritten: drop what it was.
        if let Some(rev) = self.by_key.get(&c.key).copied()
            && rev != c.create_revision
        {
            self.remove(&c.key, &mut delta, false);
        }
        let kind = match keys::read_key(&self.election, &c.key) {
            KeyKind::Candidate { lease } if lease == c.lease => None,
            KeyKind::Candidate { .. } => Some(Foreign::LeaseMismatch),
            KeyKind::Foreign => Some(Foreign::NotACandidateKey),
            KeyKind::Nested | KeyKind::Outside => return delta,
        };
        match kind {
            // Released by its owner (its command stopped): it leaves the queue now, before its
            // lease is revoked, and is never a candidate again.
            None if super::MemberInfo::released_in(&c.value) => {
                self.remove(&c.key, &mut delta, true);
                self.foreign.remove(&c.key);
            }
            None => {
                delta.candidates = true;
                self.foreign.remove(&c.key);
                if self
                    .by_key
                    .insert(c.key.clone(), c.create_revision)
                    .is_none()
                {
                    delta.joined.push(c.key.clone());
                }
                self.candidates.insert(c.create_revision, c);
            }
            Some(why) => {
                self.remove(&c.key, &mut delta, false);
                let was = self.foreign.insert(c.key.clone(), (c.clone(), why));
                if was.is_none_or(|(_, w)| w != why) {
                    delta.new_foreign.push((c.key, why));
                }
            }
        }
        delta
    }

    /// A key was deleted at `revision`.
    pub fn delete(&mut self, revision: i64, key: &str) -> Delta {
        self.revision = self.revision.max(revision);
        let mut delta = Delta::default();
        self.remove(key, &mut delta, false);
        self.foreign.remove(key);
        delta
    }

    /// Nothing changed up to `revision` (a progress notification).
    pub fn advance(&mut self, revision: i64) {
        self.revision = self.revision.max(revision);
    }

    /// Take `key` out of the queue (`marked`: by its clean-release mark).
    fn remove(&mut self, key: &str, delta: &mut Delta, marked: bool) {
        if let Some(rev) = self.by_key.remove(key) {
            let was_head = self.candidates.keys().next() == Some(&rev);
            self.candidates.remove(&rev);
            delta.candidates = true;
            delta.left.push(key.to_string());
            if was_head {
                delta.head_left.push(Departure {
                    key: key.to_string(),
                    marked,
                });
            }
        }
    }

    /// The revision the queue is as of.
    pub fn revision(&self) -> i64 {
        self.revision
    }

    /// The candidate with the lowest create revision.
    pub fn leader(&self) -> Option<&Candidate> {
        self.candidates.values().next()
    }

    /// The candidate at `key`, if it is one.
    pub fn get(&self, key: &str) -> Option<&Candidate> {
        self.by_key.get(key).and_then(|r| self.candidates.get(r))
    }

    /// The candidate right before the one created at `create_revision`.
    pub fn predecessor(&self, create_revision: i64) -> Option<&Candidate> {
        self.candidates
            .range(..create_revision)
            .next_back()
            .map(|(_, c)| c)
    }

    /// Every candidate in queue order.
    pub fn candidates(&self) -> impl Iterator<Item = &Candidate> {
        self.candidates.values()
    }

    pub fn len(&self) -> usize {
        self.candidates.len()
    }

    pub fn is_empty(&self) -> bool {
        self.candidates.is_empty()
    }

    /// Keys under the prefix that are not candidates, and why.
    pub fn foreign(&self) -> impl Iterator<Item = (&Candidate, Foreign)> {
        self.foreign.values().map(|(c, w)| (c, *w))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cand(key: &str, rev: i64, lease: i64) -> Candidate {
        Candidate {
            key: key.into(),
            value: format!("{{\"id\":\"{key}\"}}"),
            create_revision: rev,
            lease,
        }
    }

    enum Op {
        Reset(Vec<Candidate>),
        Put(Candidate),
        Del(&'static str),
    }

    /// Named sequences of events: the leader and foreign keys after each, and what changed.
    #[test]
    fn queue_table() {
        use Op::*;
        type Case = (
            &'static str,
            Vec<(Op, Option<&'static str>, Vec<&'static str>, Delta)>,
        );
        let d = |candidates: bool, new_foreign: Option<(&str, Foreign)>, left: &[&str]| Delta {
            candidates,
            new_foreign: new_foreign
                .map(|(k, w)| (k.to_string(), w))
                .into_iter()
                .collect(),
            left: left.iter().map(|s| s.to_string()).collect(),
            joined: Vec::new(),
            head_left: Vec::new(),
        };
        let cases: Vec<Case> = vec![
            (
                "lowest create revision leads; a delete makes the next one leader",
                vec![
                    (
                        Reset(vec![cand("e/b", 5, 0xb), cand("e/a", 4, 0xa)]),
                        Some("e/a"),
                        vec![],
                        d(true, None, &[]),
                    ),
                    (
                        Put(cand("e/c", 9, 0xc)),
                        Some("e/a"),
                        vec![],
                        d(true, None, &[]),
                    ),
                    (Del("e/a"), Some("e/b"), vec![], d(true, None, &["e/a"])),
                    (Del("e/zz"), Some("e/b"), vec![], d(false, None, &[])),
                ],
            ),
            (
                "a key without a lease is foreign and never leads",
                vec![
                    (
                        Reset(vec![cand("e/zzz", 2, 0), cand("e/b", 5, 0xb)]),
                        Some("e/b"),
                        vec!["e/zzz"],
                        d(true, Some(("e/zzz", Foreign::NotACandidateKey)), &[]),
                    ),
                    (Del("e/zzz"), Some("e/b"), vec![], d(false, None, &[])),
                ],
            ),
            (
                "a candidate key rewritten without its lease leaves the queue",
                vec![
                    (
                        Reset(vec![cand("e/a", 4, 0xa), cand("e/b", 5, 0xb)]),
                        Some("e/a"),
                        vec![],
                        d(true, None, &[]),
                    ),
                    (
                        Put(cand("e/a", 4, 0)),
                        Some("e/b"),
                        vec!["e/a"],
                        d(true, Some(("e/a", Foreign::LeaseMismatch)), &["e/a"]),
                    ),
                    // Reported once: writing it again is not news.
                    (
                        Put(cand("e/a", 4, 0)),
                        Some("e/b"),
                        vec!["e/a"],
                        d(false, None, &[]),
                    ),
                ],
            ),
            (
                "nested elections and their slot records are not ours",
                vec![(
                    Reset(vec![
                        cand("e/sub/1", 2, 1),
                        cand("e/job.slots/60", 3, 0x7),
                        cand("e/b", 5, 0xb),
                    ]),
                    Some("e/b"),
                    vec![],
                    d(true, None, &[]),
                )],
            ),
            (
                "a key deleted and created again counts at its new place",
                vec![
                    (
                        Reset(vec![cand("e/a", 4, 0xa), cand("e/b", 5, 0xb)]),
                        Some("e/a"),
                        vec![],
                        d(true, None, &[]),
                    ),
                    // The delete was missed (a compacted watch); the put tells.
                    (
                        Put(cand("e/a", 7, 0xa)),
                        Some("e/b"),
                        vec![],
                        d(true, None, &["e/a"]),
                    ),
                ],
            ),
            (
                "a re-read drops what is gone and reports only new foreign keys",
                vec![
                    (
                        Reset(vec![cand("e/a", 4, 0xa), cand("e/x", 3, 0)]),
                        Some("e/a"),
                        vec!["e/x"],
                        d(true, Some(("e/x", Foreign::NotACandidateKey)), &[]),
                    ),
                    (
                        Reset(vec![cand("e/b", 5, 0xb), cand("e/x", 3, 0)]),
                        Some("e/b"),
                        vec!["e/x"],
                        d(true, None, &["e/a"]),
                    ),
                ],
            ),
        ];
        for (name, ops) in cases {
            let mut q = Queue::new("e");
            for (i, (op, leader, foreign, want)) in ops.into_iter().enumerate() {
                let rev = 10 + i as i64;
                let got = match op {
                    Reset(keys) => q.reset(rev, keys),
                    Put(c) => q.put(rev, c),
                    Del(k) => q.delete(rev, k),
                };
                let got = Delta {
                    joined: Vec::new(),
                    head_left: Vec::new(),
                    ..got
                };
                assert_eq!(got, want, "{name}: step {i} delta");
                assert_eq!(
                    q.leader().map(|c| c.key.as_str()),
                    leader,
                    "{name}: step {i} leader"
                );
                let f: Vec<&str> = q.foreign().map(|(c, _)| c.key.as_str()).collect();
                assert_eq!(f, foreign, "{name}: step {i} foreign");
                assert_eq!(q.revision(), rev, "{name}: step {i} revision");
            }
        }
    }

    #[test]
    fn joins_are_reported_once_and_a_reread_reports_only_new_keys() {
        let mut q = Queue::new("e");
        let d = q.reset(9, [cand("e/a", 4, 0xa), cand("e/x", 3, 0)]);
        assert_eq!(d.joined, vec!["e/a"]);
        assert_eq!(q.put(10, cand("e/b", 10, 0xb)).joined, vec!["e/b"]);
        // A value update is not a join.
        let mut b = cand("e/b", 10, 0xb);
        b.value = "new".into();
        assert!(q.put(11, b).joined.is_empty());
        let d = q.reset(12, [cand("e/a", 4, 0xa), cand("e/c", 12, 0xc)]);
        assert_eq!(
            (d.joined, d.left),
            (vec!["e/c".to_string()], vec!["e/b".to_string()])
        );
        // Deleted and created again under the same lease between two reads: the same name, a
        // new candidate.
        let d = q.reset(20, [cand("e/a", 4, 0xa), cand("e/c", 19, 0xc)]);
        assert_eq!(
            (d.joined, d.left),
            (vec!["e/c".to_string()], vec!["e/c".to_string()])
        );
    }

    /// Which leaders left, and whether with the clean-release mark.
    #[test]
    fn leaders_leave_marked_or_unmarked() {
        let marked = |key: &str, rev, lease| Candidate {
            value: format!("{{\"id\":\"{key}\",\"released\":true}}"),
            ..cand(key, rev, lease)
        };
        let dep = |key: &str, marked| Departure {
            key: key.into(),
            marked,
        };
        let mut q = Queue::new("e");
        q.reset(
            9,
            [
                cand("e/a", 4, 0xa),
                cand("e/b", 5, 0xb),
                cand("e/c", 6, 0xc),
            ],
        );
        // A follower leaving is no departure of the leader.
        assert!(q.delete(10, "e/c").head_left.is_empty());
        // The leader marks its key: it leaves the queue at once, before its lease goes.
        let d = q.put(11, marked("e/a", 4, 0xa));
        assert_eq!(d.head_left, vec![dep("e/a", true)]);
        assert_eq!(d.left, vec!["e/a".to_string()]);
        assert_eq!(q.leader().map(|c| c.key.as_str()), Some("e/b"));
        // ...and its deletion afterwards changes nothing.
        assert_eq!(q.delete(12, "e/a"), Delta::default());
        assert_eq!(q.foreign().count(), 0, "a released key is not foreign");
        // A leader deleted (expired, revoked, by hand) leaves unmarked.
        let d = q.delete(13, "e/b");
        assert_eq!(d.head_left, vec![dep("e/b", false)]);
        // So does one rewritten without its lease.
        q.put(14, cand("e/d", 14, 0xd));
        assert_eq!(
            q.put(15, cand("e/d", 14, 0)).head_left,
            vec![dep("e/d", false)]
        );
        // Across a re-read: gone unmarked, or still there with its mark.
        q.put(16, cand("e/f", 16, 0xf));
        let d = q.reset(17, [cand("e/1a", 17, 0x1a)]);
        assert_eq!(d.head_left, vec![dep("e/f", false)]);
        let d = q.reset(18, [marked("e/1a", 17, 0x1a), cand("e/1b", 18, 0x1b)]);
        assert_eq!(d.head_left, vec![dep("e/1a", true)]);
        assert_eq!(q.leader().map(|c| c.key.as_str()), Some("e/1b"));
        // The leader's key deleted (by hand) and created again by its owner under the same
        // lease, both between two reads: the leader left, unmarked, though the name is back.
        let d = q.reset(20, [cand("e/1b", 20, 0x1b), cand("e/1c", 19, 0x1c)]);
        assert_eq!(d.head_left, vec![dep("e/1b", false)]);
        assert_eq!(q.leader().map(|c| c.key.as_str()), Some("e/1c"));
        // Its mark read on the new key says nothing of the old one's departure.
        q.reset(21, [cand("e/2a", 21, 0x2a)]);
        let d = q.reset(23, [marked("e/2a", 22, 0x2a), cand("e/2b", 23, 0x2b)]);
        assert_eq!(d.head_left, vec![dep("e/2a", false)]);
    }

    #[test]
    fn predecessor_is_the_candidate_right_before() {
        let mut q = Queue::new("e");
        q.reset(
            9,
            [
                cand("e/a", 4, 0xa),
                cand("e/b", 5, 0xb),
                cand("e/c", 8, 0xc),
            ],
        );
        assert_eq!(q.predecessor(8).map(|c| c.key.as_str()), Some("e/b"));
        assert_eq!(q.predecessor(5).map(|c| c.key.as_str()), Some("e/a"));
        assert_eq!(q.predecessor(4), None);
        assert_eq!(q.get("e/b").map(|c| c.create_revision), Some(5));
        assert_eq!(q.len(), 3);
    }
}
