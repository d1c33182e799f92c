//! Who may lead among the candidates in the queue: priorities with a takeover delay, and
//! switchover to a named candidate. Pure: [`verdict`] reads the queue and what this replica
//! remembers, and says what its driver should do.
//!
//! Leadership itself never changes meaning: the candidate with the lowest create revision
//! leads and its create revision is the fencing token, so tokens still strictly increase and a
//! mixed queue with `etcdctl elect` candidates keeps working. Preferences act by *moving* in the
//! queue — a candidate gives way by leaving and joining again at the back:
//! - a waiting candidate with a candidate of higher priority (or the switchover target) behind
//!   it re-queues behind it, so the queue stays sorted by priority and the preferred candidate
//!   is next when leadership comes free;
//! - a candidate that reaches the head while a preferred candidate waits does not lead: it
//!   re-queues at once (leadership is free, so no delay applies);
//! - a *running* leader hands over (its command stops first, through the role machine) to the
//!   switchover target at once, or to a candidate of higher priority once that candidate has
//!   been eligible — in the queue — for the takeover delay (`None`: never);
//! - the target of a switchover, once it leads, is not pre-empted by priority until it leaves:
//!   the old leader does not win leadership back. It still hands over by a switchover of its
//!   own (a balance move, `electd resign --to`).
//!
//! Candidates written by other tools (`etcdctl elect`) count as [`DEFAULT_PRIORITY`].

use std::time::Duration;

use tokio::time::Instant;

use super::queue::Queue;
use super::{Candidate, MemberInfo};

/// The priority of a candidate that does not say.
pub const DEFAULT_PRIORITY: u32 = 1;

/// The member info in a candidate's value, if it is ours.
pub fn member(c: &Candidate) -> Option<MemberInfo> {
    serde_json::from_str::<MemberInfo>(&c.value).ok()
}

pub fn priority(c: &Candidate) -> u32 {
    member(c)
        .and_then(|m| m.priority)
        .unwrap_or(DEFAULT_PRIORITY)
}

/// This replica's settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    pub priority: u32,
    pub takeover_delay: Option<Duration>,
}

/// What this replica knows beyond the queue.
pub struct Context<'a> {
    /// Our candidate key (in the queue).
    pub own: &'a str,
    /// Whether we lead under this key (our command may run): we hand over rather than re-queue.
    pub leading: bool,
    /// The key a pending switchover hands leadership to.
    pub switchover: Option<&'a str>,
    /// The key that took leadership by switchover: not pre-empted by priority while it leads.
    pub protected: Option<&'a str>,
    /// When this replica first saw a key in the queue.
    pub first_seen: &'a dyn Fn(&str) -> Option<Instant>,
    pub now: Instant,
}

/// What the driver should do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Nothing now; decide again at `review_at` (a takeover delay ends) if given.
    Stay { review_at: Option<Instant> },
    /// Not leading: leave the queue and join at its back, behind the preferred `key`.
    Requeue { key: String },
    /// Leading: hand leadership to the candidate at `key` now.
    HandOver { key: String },
}

/// See the module documentation.
pub fn verdict(queue: &Queue, policy: &Policy, ctx: &Context<'_>) -> Verdict {
    let stay = Verdict::Stay { review_at: None };
    let Some(own) = queue.get(ctx.own) else {
        return stay;
    };
    // The switchover's target takes leadership whatever the priorities.
    if ctx.switchover == Some(ctx.own) {
        return stay;
    }
    let head = queue.leader().map(|c| c.key.as_str());
    let target = ctx
        .switchover
        .and_then(|k| queue.get(k))
        .filter(|t| t.key != own.key);
    if head == Some(ctx.own) {
        // A switchover is only ever announced by the head, so this one is ours: honour it
        // even if we took leadership by an earlier switchover ourselves.
        if let Some(t) = target {
            return give_way(ctx, &t.key);
        }
        // A leader that took over by switchover keeps it against priorities.
        if ctx.protected == Some(ctx.own) {
            return stay;
        }
        // The first candidate of the highest priority.
        let Some(best) = queue
            .candidates()
            .fold(None::<(&Candidate, u32)>, |best, c| {
                let p = priority(c);
                match best {
                    Some((_, bp)) if bp >= p => best,
                    _ => Some((c, p)),
                }
            })
            .filter(|(_, p)| *p > policy.priority)
            .map(|(c, _)| c)
        else {
            return stay;
        };
        if !ctx.leading {
            return Verdict::Requeue {
                key: best.key.clone(),
            };
        }
        let Some(delay) = policy.takeover_delay else {
            return stay;
        };
        let due = (ctx.first_seen)(&best.key).unwrap_or(ctx.now) + delay;
        return if ctx.now >= due {
            Verdict::HandOver {
                key: best.key.clone(),
            }
        } else {
            Verdict::Stay {
                review_at: Some(due),
            }
        };
    }
    // Waiting: give way to the switchover target or a candidate of higher priority behind us.
    if let Some(t) = target
        && t.create_revision > own.create_revision
    {
        return give_way(ctx, &t.key);
    }
    if ctx.protected == Some(ctx.own) {
        return stay;
    }
    let behind = queue
        .candidates()
        .filter(|c| c.create_revision > own.create_revision)
        .find(|c| priority(c) > policy.priority);
    match behind {
        Some(c) => give_way(ctx, &c.key),
        None => stay,
    }
}

fn give_way(ctx: &Context<'_>, key: &str) -> Verdict {
    if ctx.leading {
        Verdict::HandOver { key: key.into() }
    } else {
        Verdict::Requeue { key: key.into() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cand(key: &str, rev: i64, priority: Option<u32>) -> Candidate {
        let lease = i64::from_str_radix(key.trim_start_matches("e/"), 16).unwrap();
        let value = match priority {
            Some(p) => format!(r#"{{"id":"{key}","priority":{p}}}"#),
            // Written by another tool (etcdctl elect): not our JSON.
            None => "some-host".into(),
        };
        Candidate {
            key: key.into(),
            value,
            create_revision: rev,
            lease,
        }
    }

    const DELAY: Duration = Duration::from_secs(30);

    /// (name, queue, own key, own priority, leading, switchover, protected, seen ago, verdict)
    #[test]
    fn verdict_table() {
        let t0 = Instant::now() + Duration::from_secs(100);
        let ago = |s: u64| t0 - Duration::from_secs(s);
        let stay = Verdict::Stay { review_at: None };
        let requeue = |k: &str| Verdict::Requeue { key: k.into() };
        let hand = |k: &str| Verdict::HandOver { key: k.into() };
        type Case = (
            &'static str,
            Vec<Candidate>,
            &'static str,
            u32,
            bool,
            Option<&'static str>,
            Option<&'static str>,
            u64,
            Verdict,
        );
        let q1 = vec![cand("e/a", 4, Some(1)), cand("e/b", 5, Some(1))];
        let lo_hi = vec![cand("e/a", 4, Some(1)), cand("e/b", 5, Some(10))];
        let three = vec![
            cand("e/a", 4, Some(1)),
            cand("e/b", 5, Some(5)),
            cand("e/c", 6, Some(10)),
        ];
        let cases: Vec<Case> = vec![
            (
                "equal priorities keep queue order",
                q1.clone(),
                "e/a",
                1,
                true,
                None,
                None,
                60,
                stay.clone(),
            ),
            (
                "equal: the waiting one waits",
                q1.clone(),
                "e/b",
                1,
                false,
                None,
                None,
                60,
                stay.clone(),
            ),
            (
                "a running leader waits out the takeover delay",
                lo_hi.clone(),
                "e/a",
                1,
                true,
                None,
                None,
                10,
                Verdict::Stay {
                    review_at: Some(ago(10) + DELAY),
                },
            ),
            (
                "then hands over",
                lo_hi.clone(),
                "e/a",
                1,
                true,
                None,
                None,
                30,
                hand("e/b"),
            ),
            (
                "a head that does not lead yet gives way at once",
                lo_hi.clone(),
                "e/a",
                1,
                false,
                None,
                None,
                0,
                requeue("e/b"),
            ),
            (
                "the preferred one waits for its turn",
                lo_hi.clone(),
                "e/b",
                10,
                false,
                None,
                None,
                60,
                stay.clone(),
            ),
            (
                "a waiting candidate re-queues behind a higher one",
                three.clone(),
                "e/b",
                5,
                false,
                None,
                None,
                0,
                requeue("e/c"),
            ),
            (
                "the leader then hands over to the highest",
                three.clone(),
                "e/a",
                1,
                true,
                None,
                None,
                31,
                hand("e/c"),
            ),
            (
                "a higher leader is never pre-empted by a lower one",
                vec![cand("e/a", 4, Some(10)), cand("e/b", 5, Some(1))],
                "e/a",
                10,
                true,
                None,
                None,
                60,
                stay.clone(),
            ),
            (
                "etcdctl elect candidates count as priority 1",
                vec![cand("e/a", 4, None), cand("e/b", 5, Some(2))],
                "e/b",
                2,
                false,
                None,
                None,
                0,
                stay.clone(),
            ),
            (
                "and do not pre-empt",
                vec![cand("e/a", 4, Some(1)), cand("e/b", 5, None)],
                "e/a",
                1,
                true,
                None,
                None,
                60,
                stay.clone(),
            ),
            (
                "switchover: the leader hands over at once",
                q1.clone(),
                "e/a",
                1,
                true,
                Some("e/b"),
                None,
                0,
                hand("e/b"),
            ),
            (
                "switchover: candidates ahead of the target give way",
                vec![
                    cand("e/a", 4, Some(1)),
                    cand("e/b", 5, Some(1)),
                    cand("e/c", 6, Some(1)),
                ],
                "e/b",
                1,
                false,
                Some("e/c"),
                None,
                0,
                requeue("e/c"),
            ),
            (
                "switchover: a head that does not lead yet gives way",
                q1.clone(),
                "e/a",
                1,
                false,
                Some("e/b"),
                None,
                0,
                requeue("e/b"),
            ),
            (
                "switchover: candidates behind the target stay",
                three.clone(),
                "e/c",
                10,
                false,
                Some("e/b"),
                None,
                0,
                stay.clone(),
            ),
            (
                "switchover to a candidate gone from the queue changes nothing",
                q1.clone(),
                "e/a",
                1,
                true,
                Some("e/9"),
                None,
                0,
                stay.clone(),
            ),
            (
                "the switchover's target is not pre-empted by priority",
                lo_hi.clone(),
                "e/a",
                1,
                true,
                None,
                Some("e/a"),
                60,
                stay.clone(),
            ),
            (
                "the switchover's target does not give way to a higher one behind it",
                lo_hi.clone(),
                "e/a",
                1,
                false,
                Some("e/a"),
                None,
                0,
                stay.clone(),
            ),
            (
                "a leader that took over by switchover hands over by its own next switchover",
                three.clone(),
                "e/a",
                1,
                true,
                Some("e/b"),
                Some("e/a"),
                0,
                hand("e/b"),
            ),
            (
                "and is still not pre-empted by priority meanwhile",
                three.clone(),
                "e/a",
                1,
                true,
                None,
                Some("e/a"),
                60,
                stay.clone(),
            ),
            (
                "off: never pre-empt a running leader",
                lo_hi.clone(),
                "e/a",
                1,
                true,
                None,
                None,
                3600,
                stay.clone(),
            ),
        ];
        for (name, keys, own, prio, leading, switchover, protected, seen, want) in cases {
            let mut q = Queue::new("e");
            q.reset(9, keys);
            let first_seen = |_: &str| Some(ago(seen));
            let ctx = Context {
                own,
                leading,
                switchover,
                protected,
                first_seen: &first_seen,
                now: t0,
            };
            let delay = if name.starts_with("off:") {
                None
            } else {
                Some(DELAY)
            };
            let policy = Policy {
                priority: prio,
                takeover_delay: delay,
            };
            assert_eq!(verdict(&q, &policy, &ctx), want, "{name}");
        }
    }
}
