//! The nemesis: a schedule of real faults drawn from a seed. Each fault kind is one entry of
//! [`KINDS`] (a name, a weight, what it does, and a `plan` that draws its targets and
//! timings); a new kind is one more entry. With a seeded probability an episode holds two or
//! three faults whose windows overlap.
//!
//! Targets are relative to the roles at the moment a fault starts (the electd leader, the raft
//! leader) or fixed indices, so the schedule is a function of the seed alone: [`plan`] draws
//! every episode before anything runs, and the same seed replays the same decisions.

use std::fmt;
use std::time::Duration;

use crate::common::ProxyMode;

/// xorshift64*: a tiny seeded generator, so a schedule can be replayed exactly.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        // xorshift needs a non-zero state; the multiply keeps seeds that differ in one bit apart.
        Rng((seed ^ 0x9E37_79B9_7F4A_7C15).wrapping_mul(0xBF58_476D_1CE4_E5B9) | 1)
    }
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    pub fn millis(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(lo + self.below(hi - lo + 1))
    }
    /// True with probability `percent`/100.
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

pub const REPLICAS: usize = 5;
pub const MEMBERS: usize = 3;

/// An electd replica, named by role or index.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Replica {
    /// The replica that led when the episode started.
    Leader,
    Index(usize),
}

/// An etcd member, named by role or index.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Member {
    /// The member that is raft leader when the fault starts.
    RaftLeader,
    Index(usize),
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Target {
    Replica(Replica),
    Member(Member),
}

/// One thing the nemesis does to a fault's target.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Op {
    /// SIGKILL of electd (its watchdog then kills the command).
    Kill9,
    /// Start a killed electd again.
    Restart,
    /// SIGSTOP / SIGCONT of electd.
    Freeze,
    Thaw,
    /// SIGTERM of electd: it stops its command and revokes its lease (a graceful handoff).
    Term,
    /// Start again once the SIGTERMed electd has exited.
    StartWhenExited,
    /// Every proxy of the replica's links to etcd in this mode.
    Link(ProxyMode),
    /// Latency on the replica's links: client to etcd, etcd to client.
    Delay(Duration, Duration),
    /// `electd resign|pause|resume --socket …`.
    Control(&'static str),
    /// SIGKILL / start again of an etcd member.
    MemberKill,
    MemberStart,
    /// SIGSTOP / SIGCONT of an etcd member.
    MemberFreeze,
    MemberThaw,
    /// Cut the member's raft links to its peers (clients still reach it); heal all of them.
    Isolate(ProxyMode),
    HealPeers,
    /// Make the replica's health check fail / pass again.
    HealthFail,
    HealthPass,
    /// Once the SIGTERMed electd has exited, start it again with this priority.
    Reprioritize(u32),
    /// `electd resign --to n<J> --socket …` on the replica.
    SwitchTo(usize),
}

/// What a fault holds while it runs; two faults of one episode never hold the same one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Resource {
    Process(usize),
    Link(usize),
    Member(usize),
    Peers,
    Health(usize),
}

impl Op {
    /// What this op holds when done to replica or member `i`.
    pub fn resources(self, i: usize) -> Vec<Resource> {
        match self {
            Op::Kill9
            | Op::Restart
            | Op::Freeze
            | Op::Thaw
            | Op::Term
            | Op::StartWhenExited
            | Op::Reprioritize(_) => vec![Resource::Process(i)],
            Op::Link(_) | Op::Delay(..) => vec![Resource::Link(i)],
            Op::Control(_) | Op::SwitchTo(_) => vec![],
            Op::HealthFail | Op::HealthPass => vec![Resource::Health(i)],
            Op::MemberKill | Op::MemberStart | Op::MemberFreeze | Op::MemberThaw => {
                vec![Resource::Member(i)]
            }
            Op::Isolate(_) | Op::HealPeers => vec![Resource::Peers, Resource::Member(i)],
        }
    }
}

/// `op` on `targets[slot]`, `at` after the fault starts.
#[derive(Clone, Debug)]
pub struct Step {
    pub at: Duration,
    pub slot: usize,
    pub op: Op,
}

/// One fault: a kind, its targets and timed steps, starting `offset` into its episode.
#[derive(Clone, Debug)]
pub struct Fault {
    pub kind: &'static str,
    pub offset: Duration,
    pub targets: Vec<Target>,
    pub steps: Vec<Step>,
    /// Parameters for people (durations, modes).
    pub detail: String,
}

impl Fault {
    fn new(kind: &'static str, detail: String) -> Fault {
        Fault {
            kind,
            offset: Duration::ZERO,
            targets: Vec::new(),
            steps: Vec::new(),
            detail,
        }
    }
    fn target(mut self, t: Target) -> Self {
        self.targets.push(t);
        self
    }
    fn step(mut self, at: Duration, slot: usize, op: Op) -> Self {
        self.steps.push(Step { at, slot, op });
        self
    }
    /// From its start to its last step.
    pub fn span(&self) -> Duration {
        self.steps.iter().map(|s| s.at).max().unwrap_or_default()
    }
}

/// Faults injected together; the first starts at once, the others inside its window.
#[derive(Clone, Debug)]
pub struct Episode {
    pub n: usize,
    pub faults: Vec<Fault>,
}

impl Episode {
    pub fn kinds(&self) -> Vec<&'static str> {
        self.faults.iter().map(|f| f.kind).collect()
    }
}

/// A kind of fault: one entry here is all a new kind needs (plus, if it acts on something
/// new, an [`Op`] and its execution in `World::perform`).
pub struct Kind {
    pub name: &'static str,
    pub weight: u64,
    /// For the report.
    pub what: &'static str,
    pub plan: fn(&mut Rng) -> Fault,
}

pub const KINDS: &[Kind] = &[
    Kind {
        name: "daemon-kill9",
        weight: 10,
        what: "kill -9 of electd (the leader half the time), restarted after 0.5–2.5 s",
        plan: |rng| {
            let r = replica(rng);
            let down = rng.millis(500, 2500);
            Fault::new("daemon-kill9", format!("down {down:?}"))
                .target(Target::Replica(r))
                .step(Duration::ZERO, 0, Op::Kill9)
                .step(down, 0, Op::Restart)
        },
    },
    Kind {
        name: "daemon-freeze",
        weight: 10,
        what: "SIGSTOP of electd for 0.5–5 s, then SIGCONT",
        plan: |rng| {
            let r = replica(rng);
            let frozen = rng.millis(500, 5000);
            Fault::new("daemon-freeze", format!("frozen {frozen:?}"))
                .target(Target::Replica(r))
                .step(Duration::ZERO, 0, Op::Freeze)
                .step(frozen, 0, Op::Thaw)
        },
    },
    Kind {
        name: "daemon-restart",
        weight: 8,
        what: "SIGTERM of electd (graceful handoff), started again 0.2–2 s after it exited",
        plan: |rng| {
            let r = replica(rng);
            let after = rng.millis(200, 2000);
            Fault::new("daemon-restart", format!("restart after {after:?}"))
                .target(Target::Replica(r))
                .step(Duration::ZERO, 0, Op::Term)
                .step(after, 0, Op::StartWhenExited)
        },
    },
    Kind {
        name: "link-flap",
        weight: 8,
        what: "blackhole of a replica's links to etcd for 0.2–0.7 s (shorter than the flap budget)",
        plan: |rng| {
            let r = replica(rng);
            let cut = rng.millis(200, 700);
            Fault::new("link-flap", format!("cut {cut:?}"))
                .target(Target::Replica(r))
                .step(Duration::ZERO, 0, Op::Link(ProxyMode::Blackhole))
                .step(cut, 0, Op::Link(ProxyMode::Pass))
        },
    },
    Kind {
        name: "link-partition",
        weight: 10,
        what: "a replica cut from every etcd member for 3.5–6 s (blackhole, or reset 1 in 4)",
        plan: |rng| {
            let r = replica(rng);
            let cut = rng.millis(3500, 6000);
            let mode = if rng.chance(25) {
                ProxyMode::Reset
            } else {
                ProxyMode::Blackhole
            };
            Fault::new("link-partition", format!("{mode:?} {cut:?}"))
                .target(Target::Replica(r))
                .step(Duration::ZERO, 0, Op::Link(mode))
                .step(cut, 0, Op::Link(ProxyMode::Pass))
        },
    },
    Kind {
        name: "link-slow",
        weight: 10,
        what: "a replica's links to etcd slowed to 100–800 ms round trips, split unevenly \
               between the two directions, for 2–8 s",
        plan: |rng| {
            let r = replica(rng);
            let rtt = rng.below(701) + 100;
            let up = Duration::from_millis(rng.below(rtt + 1));
            let down = Duration::from_millis(rtt) - up;
            let lasting = rng.millis(2000, 8000);
            Fault::new(
                "link-slow",
                format!("up {up:?} down {down:?} for {lasting:?}"),
            )
            .target(Target::Replica(r))
            .step(Duration::ZERO, 0, Op::Delay(up, down))
            .step(lasting, 0, Op::Delay(Duration::ZERO, Duration::ZERO))
        },
    },
    Kind {
        name: "member-kill",
        weight: 8,
        what: "kill -9 of an etcd member (the raft leader half the time), restarted after 1–4 s",
        plan: |rng| {
            let m = member(rng);
            let down = rng.millis(1000, 4000);
            Fault::new("member-kill", format!("down {down:?}"))
                .target(Target::Member(m))
                .step(Duration::ZERO, 0, Op::MemberKill)
                .step(down, 0, Op::MemberStart)
        },
    },
    Kind {
        name: "member-freeze",
        weight: 8,
        what: "SIGSTOP of an etcd member (the raft leader half the time) for 1–5 s, then SIGCONT",
        plan: |rng| {
            let m = member(rng);
            let frozen = rng.millis(1000, 5000);
            Fault::new("member-freeze", format!("frozen {frozen:?}"))
                .target(Target::Member(m))
                .step(Duration::ZERO, 0, Op::MemberFreeze)
                .step(frozen, 0, Op::MemberThaw)
        },
    },
    Kind {
        name: "raft-isolated",
        weight: 8,
        what: "the raft leader's peer links cut (blackhole, or reset 1 in 4) for 1–5 s; \
               clients still reach it",
        plan: |rng| {
            let cut = rng.millis(1000, 5000);
            let mode = if rng.chance(25) {
                ProxyMode::Reset
            } else {
                ProxyMode::Blackhole
            };
            Fault::new("raft-isolated", format!("{mode:?} {cut:?}"))
                .target(Target::Member(Member::RaftLeader))
                .step(Duration::ZERO, 0, Op::Isolate(mode))
                .step(cut, 0, Op::HealPeers)
        },
    },
    Kind {
        name: "control-storm",
        weight: 8,
        what: "3–8 of `electd resign|pause|resume` on random replicas 50–400 ms apart; \
               replicas left paused are resumed at the end",
        plan: |rng| {
            let n = 3 + rng.below(6) as usize;
            let mut f = Fault::new("control-storm", String::new());
            let mut at = Duration::ZERO;
            let mut actions = Vec::new();
            for slot in 0..n {
                let action = match rng.below(4) {
                    0 | 1 => "resign",
                    2 => "pause",
                    _ => "resume",
                };
                f = f
                    .target(Target::Replica(replica(rng)))
                    .step(at, slot, Op::Control(action));
                actions.push(action);
                at += rng.millis(50, 400);
            }
            f.detail = actions.join(",");
            f
        },
    },
    Kind {
        name: "health-flap",
        weight: 8,
        what: "a replica's health check (the leader's half the time) failing for 0.3–4 s, then \
               passing (checked every 200 ms; 2 failures make it ineligible, 2 passes eligible)",
        plan: |rng| {
            let r = replica(rng);
            let failing = rng.millis(300, 4000);
            Fault::new("health-flap", format!("failing {failing:?}"))
                .target(Target::Replica(r))
                .step(Duration::ZERO, 0, Op::HealthFail)
                .step(failing, 0, Op::HealthPass)
        },
    },
    Kind {
        name: "priority-shift",
        weight: 6,
        what: "SIGTERM of electd, started again 0.2–1 s after it exited with another priority: \
               0 (an observer; at most two at once), 1, 2 or 3 (a higher one takes over from a \
               running leader after the 1 s takeover delay)",
        plan: |rng| {
            let r = replica(rng);
            let after = rng.millis(200, 1000);
            let priority = rng.below(4) as u32;
            Fault::new(
                "priority-shift",
                format!("priority {priority} after {after:?}"),
            )
            .target(Target::Replica(r))
            .step(Duration::ZERO, 0, Op::Term)
            .step(after, 0, Op::Reprioritize(priority))
        },
    },
    Kind {
        name: "switchover",
        weight: 6,
        what: "`electd resign --to nJ` on the leader, to any replica (refused, exit 1, when nJ \
               is the leader itself or not an eligible candidate)",
        plan: |rng| {
            let to = rng.below(REPLICAS as u64) as usize;
            Fault::new("switchover", format!("to n{to}"))
                .target(Target::Replica(Replica::Leader))
                .step(Duration::ZERO, 0, Op::SwitchTo(to))
        },
    },
];

fn replica(rng: &mut Rng) -> Replica {
    // Drawn either way, so the sequence does not depend on the branch.
    let leader = rng.chance(50);
    let i = rng.below(REPLICAS as u64) as usize;
    if leader {
        Replica::Leader
    } else {
        Replica::Index(i)
    }
}

fn member(rng: &mut Rng) -> Member {
    let leader = rng.chance(50);
    let i = rng.below(MEMBERS as u64) as usize;
    if leader {
        Member::RaftLeader
    } else {
        Member::Index(i)
    }
}

fn draw_kind(kinds: &'static [Kind], rng: &mut Rng) -> &'static Kind {
    let total: u64 = kinds.iter().map(|k| k.weight).sum();
    let mut x = rng.below(total);
    for k in kinds {
        if x < k.weight {
            return k;
        }
        x -= k.weight;
    }
    unreachable!("weights add up")
}

/// Per cent of episodes with more than one fault, and of those, with three.
pub const COMBINED_PERCENT: u64 = 35;
pub const TRIPLE_PERCENT: u64 = 30;

/// The kinds the nemesis had before health flaps, priority shifts and switchovers (new kinds go
/// at the end of [`KINDS`]): seeds found with them replay with `plan_with(&KINDS[..FIRST_KINDS], …)`.
pub const FIRST_KINDS: usize = 10;

/// The whole schedule for `faults` faults.
pub fn plan(seed: u64, faults: usize) -> Vec<Episode> {
    plan_with(KINDS, seed, faults)
}

/// The schedule drawn from `kinds` only.
pub fn plan_with(kinds: &'static [Kind], seed: u64, faults: usize) -> Vec<Episode> {
    let mut rng = Rng::new(seed);
    let mut episodes = Vec::new();
    let mut planned = 0;
    while planned < faults {
        let first = (draw_kind(kinds, &mut rng).plan)(&mut rng);
        let extra = if rng.chance(COMBINED_PERCENT) {
            if rng.chance(TRIPLE_PERCENT) { 2 } else { 1 }
        } else {
            0
        };
        let window = first
            .span()
            .clamp(Duration::from_millis(200), Duration::from_secs(3));
        let mut ep = Episode {
            n: episodes.len(),
            faults: vec![first],
        };
        for _ in 0..extra.min(faults - planned - 1) {
            let mut f = (draw_kind(kinds, &mut rng).plan)(&mut rng);
            f.offset = rng.millis(0, window.as_millis() as u64);
            ep.faults.push(f);
        }
        planned += ep.faults.len();
        episodes.push(ep);
    }
    episodes
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Replica(Replica::Leader) => write!(f, "leader"),
            Target::Replica(Replica::Index(i)) => write!(f, "n{i}"),
            Target::Member(Member::RaftLeader) => write!(f, "raft-leader"),
            Target::Member(Member::Index(i)) => write!(f, "m{i}"),
        }
    }
}

impl fmt::Display for Episode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "episode {}:", self.n)?;
        for (i, fault) in self.faults.iter().enumerate() {
            let targets: Vec<String> = fault.targets.iter().map(ToString::to_string).collect();
            write!(
                f,
                "{} {} [{}] ({}) at +{:?}",
                if i == 0 { "" } else { " +" },
                fault.kind,
                targets.join(","),
                fault.detail,
                fault.offset
            )?;
        }
        Ok(())
    }
}

#[test]
fn the_schedule_is_a_function_of_the_seed() {
    let a: Vec<String> = plan(42, 60).iter().map(ToString::to_string).collect();
    let b: Vec<String> = plan(42, 60).iter().map(ToString::to_string).collect();
    let c: Vec<String> = plan(43, 60).iter().map(ToString::to_string).collect();
    assert_eq!(a, b);
    assert_ne!(a, c);
    let eps = plan(42, 60);
    assert_eq!(eps.iter().map(|e| e.faults.len()).sum::<usize>(), 60);
    assert!(
        eps.iter().any(|e| e.faults.len() > 1),
        "no combination in 60 faults"
    );
    // Every kind shows up in a long schedule, and later faults start inside the first's window.
    let long = plan(7, 400);
    for k in KINDS {
        assert!(
            long.iter().any(|e| e.kinds().contains(&k.name)),
            "{}",
            k.name
        );
    }
    for e in &long {
        let window = e.faults[0].span().max(Duration::from_millis(200));
        assert!(e.faults.iter().all(|f| f.offset <= window), "{e}");
    }
    let combined = long.iter().filter(|e| e.faults.len() > 1).count() * 100 / long.len();
    eprintln!("{combined}% of {} episodes combined", long.len());
    assert!(
        (COMBINED_PERCENT - 10..=COMBINED_PERCENT + 10).contains(&(combined as u64)),
        "{combined}% of episodes combined"
    );
}
