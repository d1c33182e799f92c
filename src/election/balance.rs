//! Balanced leadership across several elections (`balance = true`): among the replicas that
//! serve the same set of elections, none leads more than its share, ⌈N / R⌉ (N elections, R
//! such replicas), once things settle. Replicas agree on the share from the election queues
//! alone: each candidate's member info says which set it serves (a digest of the names) and
//! the queues say who leads what. No coordinator, no key beyond the candidate keys.
//!
//! Two rules, both pure ([`may_take`], [`move_now`]) over a [`Board`] of what this process
//! sees:
//! - a replica that is about to lead one more election than its share gives way (re-queues)
//!   when a replica of its group below its share waits in that election's queue: when a
//!   replica dies, its elections spread over the others, each moving once;
//! - a replica above its share hands one election at a time to a replica of its group below
//!   its share that waits in that election's queue (a switchover: command stopped first, then
//!   released with the clean-release mark), no sooner than the settle delay after the last
//!   change of leadership it saw: when a replica returns, elections move back only as far as
//!   the share requires, and leadership never bounces.
//!
//! Health and priority keep their meaning: an unhealthy replica or an observer is in no queue,
//! so it is no candidate for anything; only candidates of this replica's own priority count.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use super::queue::Queue;
use super::{Candidate, MemberInfo};

/// Which set of elections a replica serves, as its member info carries it: a digest of the
/// sorted names (FNV-1a, 64 bits, hex) and their number.
pub fn serves(names: &[String]) -> String {
    let mut sorted: Vec<&str> = names.iter().map(String::as_str).collect();
    sorted.sort_unstable();
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for n in &sorted {
        for b in n.bytes().chain(std::iter::once(0)) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    format!("{}:{h:016x}", sorted.len())
}

/// ⌈n / r⌉: the most any replica of a group of `r` should lead of `n` elections.
pub fn share(n: usize, r: usize) -> usize {
    n.div_ceil(r.max(1))
}

/// A candidate, as the balance reads it from its key's value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub id: String,
    pub serves: Option<String>,
    pub priority: u32,
    /// Its candidate key.
    pub key: String,
}

impl Member {
    fn of(c: &Candidate) -> Member {
        let info = serde_json::from_str::<MemberInfo>(&c.value).ok();
        Member {
            id: info
                .as_ref()
                .map_or_else(|| c.value.clone(), |m| m.id.clone()),
            serves: info.as_ref().and_then(|m| m.serves.clone()),
            priority: info
                .and_then(|m| m.priority)
                .unwrap_or(super::candidacy::DEFAULT_PRIORITY),
            key: c.key.clone(),
        }
    }
}

/// One election as this process sees it: its candidates in queue order (the first leads).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Seen {
    pub candidates: Vec<Member>,
}

impl Seen {
    pub fn of(queue: &Queue) -> Seen {
        Seen {
            candidates: queue.candidates().map(Member::of).collect(),
        }
    }

    fn leader(&self) -> Option<&Member> {
        self.candidates.first()
    }
}

/// What this process knows for the balance: who it is, its group, every election it serves,
/// which of them it leads (or is about to), and when leadership last changed.
#[derive(Debug, Clone)]
pub struct BoardState {
    pub me: String,
    pub serves: String,
    pub priority: u32,
    pub elections: BTreeMap<String, Seen>,
    /// Elections this process leads, or has decided to take.
    pub mine: BTreeSet<String>,
    pub last_change: Instant,
    pub delay: Duration,
    /// The election being handed over now, and until when it may take (one at a time).
    pub moving: Option<(String, Instant)>,
}

impl BoardState {
    /// The replicas of this one's group (itself included) seen in its elections' queues.
    fn group(&self) -> BTreeSet<&str> {
        let mut g: BTreeSet<&str> = self
            .elections
            .values()
            .flat_map(|s| &s.candidates)
            .filter(|m| self.peer(m))
            .map(|m| m.id.as_str())
            .collect();
        g.insert(self.me.as_str());
        g
    }

    fn peer(&self, m: &Member) -> bool {
        m.serves.as_deref() == Some(self.serves.as_str()) && m.priority == self.priority
    }

    fn share(&self) -> usize {
        share(self.elections.len(), self.group().len())
    }

    /// How many of this group's elections each replica of the group leads (this one: by what
    /// it holds or takes; the others: by the queues).
    fn counts(&self) -> BTreeMap<&str, usize> {
        let mut c: BTreeMap<&str, usize> = self.group().into_iter().map(|id| (id, 0)).collect();
        for (name, seen) in &self.elections {
            if self.mine.contains(name) {
                continue;
            }
            if let Some(l) = seen.leader().filter(|l| l.id != self.me && self.peer(l)) {
                *c.entry(l.id.as_str()).or_insert(0) += 1;
            }
        }
        c.insert(self.me.as_str(), self.mine.len());
        c
    }

    /// A replica of the group below its share waiting in `election`'s queue (the fewest
    /// elections first, then the lowest id).
    fn below_share_in(&self, election: &str, counts: &BTreeMap<&str, usize>) -> Option<Member> {
        let share = self.share();
        self.elections
            .get(election)?
            .candidates
            .iter()
            .filter(|m| m.id != self.me && self.peer(m))
            .filter(|m| counts.get(m.id.as_str()).copied().unwrap_or(0) < share)
            .min_by_key(|m| {
                (
                    counts.get(m.id.as_str()).copied().unwrap_or(0),
                    m.id.clone(),
                )
            })
            .cloned()
    }
}

/// About to lead `election` (our key heads its queue): `Ok` to take it, or the candidate to
/// give way to — one of our group below its share, when taking it would put us above ours.
pub fn may_take(b: &BoardState, election: &str) -> Result<(), Member> {
    if b.mine.contains(election) {
        return Ok(());
    }
    let counts = b.counts();
    if b.mine.len() < b.share() {
        return Ok(());
    }
    match b.below_share_in(election, &counts) {
        Some(m) => Err(m),
        None => Ok(()),
    }
}

/// Above our share: the one election to hand over now, and to whom — none before the settle
/// delay after the last change of leadership. Deterministic: the first (by name) of the
/// elections we lead where a replica of our group below its share waits.
pub fn move_now(b: &BoardState, now: Instant) -> Option<(String, Member)> {
    let moving = b.moving.as_ref().is_some_and(|(_, until)| now < *until);
    if moving || now < b.last_change + b.delay || b.mine.len() <= b.share() {
        return None;
    }
    let counts = b.counts();
    b.mine
        .iter()
        .find_map(|e| Some((e.clone(), b.below_share_in(e, &counts)?)))
}

impl std::fmt::Debug for Board {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Board").finish_non_exhaustive()
    }
}

/// The board every election's driver of one process shares.
pub struct Board {
    state: Mutex<BoardState>,
    /// Bumped on every change: drivers re-decide.
    version: watch::Sender<u64>,
}

impl Board {
    pub fn new(me: &str, serves: String, priority: u32, delay: Duration) -> Board {
        Board {
            state: Mutex::new(BoardState {
                me: me.to_string(),
                serves,
                priority,
                elections: BTreeMap::new(),
                mine: BTreeSet::new(),
                last_change: Instant::now(),
                delay,
                moving: None,
            }),
            version: watch::channel(0).0,
        }
    }

    fn with<T>(&self, f: impl FnOnce(&mut BoardState) -> T) -> T {
        // A poisoned lock only means a panic elsewhere; the state is still valid.
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut s)
    }

    /// Notified on every change of the board.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.version.subscribe()
    }

    fn bump(&self) {
        self.version.send_modify(|v| *v += 1);
    }

    /// `election`'s queue as it stands now.
    pub fn saw(&self, election: &str, queue: &Queue) {
        let seen = Seen::of(queue);
        let changed = self.with(|s| {
            let old = s.elections.get(election);
            let leader_changed =
                old.and_then(|o| o.leader()).map(|l| &l.id) != seen.leader().map(|l| &l.id);
            if leader_changed {
                s.last_change = Instant::now();
            }
            let changed = old != Some(&seen);
            s.elections.insert(election.to_string(), seen);
            changed
        });
        if changed {
            self.bump();
        }
    }

    /// An election this process serves, before its queue is read (so the share counts it).
    pub fn serve(&self, election: &str) {
        self.with(|s| {
            s.elections.entry(election.to_string()).or_default();
        });
    }

    /// About to lead `election`: take it (recorded), or the candidate to give way to.
    pub fn take(&self, election: &str) -> Result<(), Member> {
        let r = self.with(|s| {
            let r = may_take(s, election);
            if r.is_ok() && s.mine.insert(election.to_string()) {
                s.last_change = Instant::now();
            }
            r
        });
        self.bump();
        r
    }

    /// No longer leading `election` (a hand-over of it is done).
    pub fn drop_lead(&self, election: &str) {
        let changed = self.with(|s| {
            if s.moving.as_ref().is_some_and(|(e, _)| e == election) {
                s.moving = None;
            }
            let had = s.mine.remove(election);
            if had {
                s.last_change = Instant::now();
            }
            had
        });
        if changed {
            self.bump();
        }
    }

    /// `election` is being handed over (announced): no other move before it is done, or
    /// before `until`.
    pub fn moving(&self, election: &str, until: Instant) {
        self.with(|s| s.moving = Some((election.to_string(), until)));
    }

    /// The election to hand over now, and to whom; and, when none is due yet because of the
    /// settle delay, when to look again.
    pub fn move_now(&self, now: Instant) -> (Option<(String, Member)>, Option<Instant>) {
        self.with(|s| {
            let m = move_now(s, now);
            let later = s.mine.len() > s.share();
            let settled = match &s.moving {
                Some((_, until)) => (*until).max(s.last_change + s.delay),
                None => s.last_change + s.delay,
            };
            let review = (m.is_none() && later && now < settled).then_some(settled);
            (m, review)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(id: &str, serves: &str) -> Member {
        Member {
            id: id.into(),
            serves: Some(serves.into()),
            priority: 1,
            key: format!("k/{id}"),
        }
    }

    /// `queues`: per election, the candidates' ids in queue order; all serve `S` unless
    /// named `x…` (another set).
    fn board(
        me: &str,
        mine: &[&str],
        queues: &[(&str, &[&str])],
        delay_passed: bool,
    ) -> BoardState {
        let now = Instant::now();
        BoardState {
            me: me.into(),
            serves: "S".into(),
            priority: 1,
            elections: queues
                .iter()
                .map(|(e, ids)| {
                    let candidates = ids
                        .iter()
                        .map(|id| m(id, if id.starts_with('x') { "T" } else { "S" }))
                        .collect();
                    (e.to_string(), Seen { candidates })
                })
                .collect(),
            mine: mine.iter().map(|s| s.to_string()).collect(),
            last_change: if delay_passed {
                now - Duration::from_secs(10)
            } else {
                now
            },
            delay: Duration::from_secs(5),
            moving: None,
        }
    }

    #[test]
    fn the_share_is_rounded_up() {
        assert_eq!(share(6, 3), 2);
        assert_eq!(share(7, 3), 3);
        assert_eq!(share(6, 2), 3);
        assert_eq!(share(100, 3), 34);
        assert_eq!(share(3, 0), 3);
        assert_eq!(
            serves(&["b".into(), "a".into()]),
            serves(&["a".into(), "b".into()])
        );
        assert_ne!(serves(&["a".into(), "b".into()]), serves(&["ab".into()]));
    }

    type Queues<'a> = &'a [(&'a str, &'a [&'a str])];

    /// (name, me, elections I hold, queues, election at stake, may I take it)
    #[test]
    fn take_table() {
        type Case<'a> = (
            &'a str,
            &'a str,
            &'a [&'a str],
            Queues<'a>,
            &'a str,
            Result<(), &'a str>,
        );
        #[rustfmt::skip]
        let cases: &[Case] = &[
            ("below the share: take", "a", &["e1"],
             &[("e1", &["a", "b"]), ("e2", &["a", "b"]), ("e3", &["b", "a"]), ("e4", &["b", "a"])],
             "e2", Ok(())),
            ("at the share, b below it waits: give way to b", "a", &["e1", "e2"],
             &[("e1", &["a", "b", "c"]), ("e2", &["a", "c"]), ("e3", &["a", "b", "c"]), ("e4", &["c", "b"]), ("e5", &["c"]), ("e6", &["c"])],
             "e3", Err("b")),
            ("at the share, nobody below it waits here: take (leadership must not go begging)", "a", &["e1", "e2"],
             &[("e1", &["a"]), ("e2", &["a"]), ("e3", &["a", "c"]), ("e4", &["c", "b"]), ("e5", &["b", "c"]), ("e6", &["c"])],
             "e3", Ok(())),
            ("a replica of another set does not count", "a", &["e1", "e2", "e3"],
             &[("e1", &["a"]), ("e2", &["a"]), ("e3", &["a"]), ("e4", &["a", "x1"])],
             "e4", Ok(())),
            ("one already held is kept", "a", &["e1", "e2", "e3"],
             &[("e1", &["a", "b"]), ("e2", &["a", "b"]), ("e3", &["a", "b"]), ("e4", &["b"])],
             "e3", Ok(())),
        ];
        for (name, me, mine, queues, e, want) in cases {
            let b = board(me, mine, queues, true);
            let got = may_take(&b, e).map_err(|m| m.id);
            assert_eq!(got, want.map_err(|s| s.to_string()), "{name}");
        }
    }

    /// (name, me, elections I lead, queues, settle delay passed, the move)
    #[test]
    fn move_table() {
        type Case<'a> = (
            &'a str,
            &'a str,
            &'a [&'a str],
            Queues<'a>,
            bool,
            Option<(&'a str, &'a str)>,
        );
        #[rustfmt::skip]
        let cases: &[Case] = &[
            ("3 of 6 with 3 replicas: hand one to the replica with none", "a", &["e1", "e2", "e3"],
             &[("e1", &["a", "c"]), ("e2", &["a", "c"]), ("e3", &["a", "b", "c"]), ("e4", &["b", "a"]), ("e5", &["b"]), ("e6", &["b"])],
             true, Some(("e1", "c"))),
            ("not before the settle delay", "a", &["e1", "e2", "e3"],
             &[("e1", &["a", "c"]), ("e2", &["a", "c"]), ("e3", &["a", "b", "c"]), ("e4", &["b", "a"]), ("e5", &["b"]), ("e6", &["b"])],
             false, None),
            ("at the share: stay", "a", &["e1", "e2"],
             &[("e1", &["a", "c"]), ("e2", &["a", "c"]), ("e3", &["c", "a"]), ("e4", &["b", "a"]), ("e5", &["b"]), ("e6", &["c"])],
             true, None),
            ("above, but no replica below its share waits where I lead: stay", "a", &["e1", "e2", "e3"],
             &[("e1", &["a"]), ("e2", &["a"]), ("e3", &["a", "b"]), ("e4", &["b", "c"]), ("e5", &["b"]), ("e6", &["c"])],
             true, None),
            ("above, and b below its share waits where I lead: hand it that one", "a", &["e1", "e2", "e3"],
             &[("e1", &["a"]), ("e2", &["a"]), ("e3", &["a", "b"]), ("e4", &["b", "c"]), ("e5", &["c"]), ("e6", &["c"])],
             true, Some(("e3", "b"))),
            ("7 over 3: a share of 3, so 3 is fine", "a", &["e1", "e2", "e3"],
             &[("e1", &["a", "c"]), ("e2", &["a", "c"]), ("e3", &["a", "c"]), ("e4", &["b", "c"]), ("e5", &["b"]), ("e6", &["b"]), ("e7", &["c"])],
             true, None),
            ("the replica with the fewest goes first", "a", &["e1", "e2", "e3", "e4"],
             &[("e1", &["a", "b", "c"]), ("e2", &["a"]), ("e3", &["a"]), ("e4", &["a"]), ("e5", &["b"]), ("e6", &["b"])],
             true, Some(("e1", "c"))),
        ];
        for (name, me, mine, queues, passed, want) in cases {
            let b = board(me, mine, queues, *passed);
            let got = move_now(&b, Instant::now()).map(|(e, m)| (e, m.id));
            assert_eq!(
                got,
                want.map(|(e, id)| (e.to_string(), id.to_string())),
                "{name}"
            );
        }
        // One at a time: while a hand-over is under way, no other.
        let mut b = board(
            "a",
            &["e1", "e2", "e3", "e4"],
            &[
                ("e1", &["a", "c"]),
                ("e2", &["a", "c"]),
                ("e3", &["a"]),
                ("e4", &["a"]),
                ("e5", &["b"]),
                ("e6", &["b"]),
            ],
            true,
        );
        assert!(move_now(&b, Instant::now()).is_some());
        b.moving = Some(("e1".into(), Instant::now() + Duration::from_secs(6)));
        assert_eq!(move_now(&b, Instant::now()), None);
        b.moving = Some(("e1".into(), Instant::now() - Duration::from_secs(1)));
        assert!(
            move_now(&b, Instant::now()).is_some(),
            "a hand-over that did not complete in time no longer blocks"
        );
    }
}
