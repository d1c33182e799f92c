//! The role state machine: what this replica *is*, given what the election driver last saw in
//! etcd, the monotonic clock and operator commands. Pure: [`Machine::step`] does no I/O and
//! returns the actions for the owner task to carry out, in order.
//!
//! The machine is level-triggered: every [`Event::Observed`] carries the driver's whole current
//! view, so a missed intermediate view (say, a lease lost and a new one granted in between) is
//! still handled correctly.
//!
//! Safety invariant: `Leader`/`Suspect` hold only while `now < deadline`, where the source
//! computes `deadline` (for an election of this process: last successful keepalive sent + `ttl −
//! margin − stop grace`, [`crate::config::Timing::deadline`]). Past it, the machine stops the
//! child *before* anything else; the child is then dead before the lease can expire at etcd, so
//! no other replica can have been elected meanwhile. Whoever shows the role to others reads it
//! through [`Role::at`] and [`Role::budget_at`], so no answer claims leadership past the deadline
//! even before the machine has handled it.

use std::borrow::Cow;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use super::{After, LeaderInfo, Position};

/// What this replica is.
#[derive(Debug, Clone, PartialEq)]
pub enum Role {
    /// Campaigning; no leader known yet.
    Candidate,
    /// Another replica leads; `leader` is as last read from etcd.
    Follower { leader: LeaderInfo },
    /// This replica leads under fencing `token` with session `lease`, until `deadline` unless a
    /// keepalive succeeds first.
    Leader {
        token: i64,
        lease: i64,
        leader: LeaderInfo,
        deadline: Instant,
    },
    /// A leader that has lost contact with etcd since `since`: it keeps its role and child
    /// until `deadline`, then stops the child and rejoins.
    Suspect {
        token: i64,
        lease: i64,
        leader: LeaderInfo,
        deadline: Instant,
        since: Instant,
    },
    /// Out of the election on an operator's request.
    Paused,
    /// Shutting down: child stopped, lease released, then exit.
    Stopping,
}

/// The name of a role, as shown on `/role` and in metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RoleKind {
    Candidate,
    Follower,
    Leader,
    Suspect,
    Paused,
    Stopping,
}

impl RoleKind {
    pub const ALL: [RoleKind; 6] = [
        RoleKind::Candidate,
        RoleKind::Follower,
        RoleKind::Leader,
        RoleKind::Suspect,
        RoleKind::Paused,
        RoleKind::Stopping,
    ];

    /// Whether a replica in this role leads: its command runs, `/leader` answers 200. The one
    /// place this is decided.
    pub fn leads(self) -> bool {
        matches!(self, RoleKind::Leader | RoleKind::Suspect)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            RoleKind::Candidate => "candidate",
            RoleKind::Follower => "follower",
            RoleKind::Leader => "leader",
            RoleKind::Suspect => "suspect",
            RoleKind::Paused => "paused",
            RoleKind::Stopping => "stopping",
        }
    }
}

impl std::fmt::Display for RoleKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Role {
    pub fn kind(&self) -> RoleKind {
        match self {
            Role::Candidate => RoleKind::Candidate,
            Role::Follower { .. } => RoleKind::Follower,
            Role::Leader { .. } => RoleKind::Leader,
            Role::Suspect { .. } => RoleKind::Suspect,
            Role::Paused => RoleKind::Paused,
            Role::Stopping => RoleKind::Stopping,
        }
    }

    /// Whether this replica's work (the child) should be running.
    pub fn leads(&self) -> bool {
        self.kind().leads()
    }

    /// The leader known to this replica, if any.
    pub fn leader(&self) -> Option<&LeaderInfo> {
        match self {
            Role::Follower { leader }
            | Role::Leader { leader, .. }
            | Role::Suspect { leader, .. } => Some(leader),
            _ => None,
        }
    }

    /// The deadline by which the owner must re-evaluate (leaders only).
    pub fn deadline(&self) -> Option<Instant> {
        match self {
            Role::Leader { deadline, .. } | Role::Suspect { deadline, .. } => Some(*deadline),
            _ => None,
        }
    }

    /// The role as an answer built at `now` may state it: a leading role whose deadline has
    /// passed is a candidate — what the machine makes of it, whether or not the owner has run
    /// since (it may have been frozen, or busy stopping the command).
    pub fn at(&self, now: Instant) -> Cow<'_, Role> {
        match self.deadline() {
            Some(deadline) if now >= deadline => Cow::Owned(Role::Candidate),
            _ => Cow::Borrowed(self),
        }
    }

    /// The leadership budget an answer built at `now` gives: the time left until the deadline
    /// while this role leads, `None` otherwise (also once the deadline has passed). The one place
    /// the budget handed to apps (`valid_ms`) is computed.
    pub fn budget_at(&self, now: Instant) -> Option<Duration> {
        self.deadline()
            .filter(|d| now < *d)
            .map(|d| d.saturating_duration_since(now))
    }
}

/// The facts from the election driver that the machine decides on.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Observed {
    pub lease: Option<i64>,
    pub position: Position,
    /// Until when this replica may lead under `lease`, as its source computes it (for an
    /// election of this process: last successful keepalive sent + the leader budget; for the
    /// local electd's socket: the last good answer's `valid_ms` from when it was asked).
    pub deadline: Option<Instant>,
    pub reachable: bool,
    /// While leading: hand leadership to this candidate now (see `ElectionView::handoff`).
    pub handoff: Option<String>,
    /// Why this replica must not lead whatever the queue says (`ElectionView::refusal`); its
    /// owner turns it into [`Event::Ineligible`].
    pub refusal: Option<String>,
    /// A leadership this view ends was taken away at the source (its key deleted, its lease
    /// expired or revoked at etcd): the command is killed at once, since a successor starts
    /// after its start guard. Otherwise (the local electd said it stopped leading, for
    /// `elect-run --socket`) it gets its stop grace.
    pub taken_away: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// The driver's current view (also sent when a deadline timer fires).
    Observed(Box<Observed>),
    /// Hand leadership off now (operator, or the child's exit policy), and stay out of the
    /// election `rejoin_after` before campaigning again.
    Resign {
        rejoin_after: Duration,
    },
    Pause,
    Resume,
    /// This replica may not lead (a failing health check, an observer): leave the queue.
    Ineligible,
    /// It may lead again: rejoin the queue (unless paused).
    Eligible,
    Shutdown,
}

impl Event {
    /// An operator's resignation: rejoin at once, at the back of the queue.
    pub const RESIGN: Event = Event::Resign {
        rejoin_after: Duration::ZERO,
    };
}

/// Side effects, carried out by the owner in order; each finishes before the next starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    StartChild {
        token: i64,
    },
    /// Stop the child: signal, grace, kill the process group; wait until it is gone.
    StopChild,
    /// Kill the child at once (SIGKILL to its group and tree, no grace) and wait until it is
    /// gone: leadership was lost without this replica giving it up — its key deleted, its lease
    /// expired or revoked at etcd — so a successor may start after its start guard.
    KillChild,
    /// Tell the driver to give up its session (revoke the lease), then do `After`.
    Release(After),
    ResumeElection,
    Exit,
}

/// The role plus what the machine must remember across events.
#[derive(Debug, Clone, PartialEq)]
pub struct Machine {
    pub role: Role,
    /// A lease this replica gave up leadership under; a view still showing it leading (the
    /// driver has not caught up yet) must not make us leader again.
    pub abandoned: Option<i64>,
    /// This replica may not lead now (see [`Event::Ineligible`]).
    pub ineligible: bool,
}

impl Default for Machine {
    fn default() -> Machine {
        Machine::new()
    }
}

impl Machine {
    pub fn new() -> Machine {
        Machine {
            role: Role::Candidate,
            abandoned: None,
            ineligible: false,
        }
    }

    /// A machine for a replica that starts out of the queue (it must first be found eligible).
    pub fn ineligible(mut self) -> Machine {
        self.ineligible = true;
        self
    }

    /// The transition function. `now` is the monotonic time of the event.
    pub fn step(&self, event: &Event, now: Instant) -> (Machine, Vec<Action>) {
        let mut next = self.clone();
        let leads = self.role.leads();
        let stop_if_leading = || {
            if leads {
                vec![Action::StopChild]
            } else {
                vec![]
            }
        };
        let actions = match (&self.role, event) {
            (Role::Stopping, _) => vec![],

            (_, Event::Shutdown) => {
                next.role = Role::Stopping;
                let mut a = stop_if_leading();
                a.extend([Action::Release(After::Stop), Action::Exit]);
                a
            }

            (Role::Paused, Event::Resume) => {
                next.role = Role::Candidate;
                next.abandoned = None;
                if self.ineligible {
                    vec![Action::Release(After::Observe)]
                } else {
                    vec![Action::ResumeElection]
                }
            }
            (Role::Paused, Event::Ineligible) => {
                next.ineligible = true;
                vec![]
            }
            (Role::Paused, Event::Eligible) => {
                next.ineligible = false;
                vec![]
            }
            (Role::Paused, _) => vec![],
            (_, Event::Resume) => vec![],

            (_, Event::Pause) => {
                next.role = Role::Paused;
                let mut a = stop_if_leading();
                a.push(Action::Release(After::Pause));
                a
            }

            (
                Role::Leader { lease, .. } | Role::Suspect { lease, .. },
                Event::Resign { rejoin_after },
            ) => {
                next.role = Role::Candidate;
                next.abandoned = Some(*lease);
                let after = if rejoin_after.is_zero() {
                    After::Rejoin
                } else {
                    After::RejoinAfter(*rejoin_after)
                };
                vec![Action::StopChild, Action::Release(after)]
            }
            (_, Event::Resign { .. }) => vec![],

            (Role::Leader { lease, .. } | Role::Suspect { lease, .. }, Event::Ineligible) => {
                next.ineligible = true;
                next.role = Role::Candidate;
                next.abandoned = Some(*lease);
                vec![Action::StopChild, Action::Release(After::Observe)]
            }
            (_, Event::Ineligible) if self.ineligible => vec![],
            (_, Event::Ineligible) => {
                next.ineligible = true;
                vec![Action::Release(After::Observe)]
            }
            (_, Event::Eligible) if !self.ineligible => vec![],
            (_, Event::Eligible) => {
                next.ineligible = false;
                vec![Action::ResumeElection]
            }

            (
                Role::Leader {
                    token,
                    lease,
                    leader,
                    ..
                }
                | Role::Suspect {
                    token,
                    lease,
                    leader,
                    ..
                },
                Event::Observed(o),
            ) => {
                let still_leading = o.lease == Some(*lease)
                    && matches!(&o.position, Position::Leading { token: t, .. } if t == token);
                if !still_leading {
                    // Not given up but taken away (the key or lease is gone at etcd): the next
                    // leader waits only its start guard, not this command's stop grace.
                    next.role = follower_role(o);
                    if o.taken_away {
                        vec![Action::KillChild]
                    } else {
                        vec![Action::StopChild]
                    }
                } else {
                    let deadline = o.deadline.unwrap_or(now);
                    if now >= deadline || o.handoff.is_some() {
                        // Out of time, or handing leadership to another candidate: stop, then
                        // rejoin at the back of the queue.
                        next.role = Role::Candidate;
                        next.abandoned = Some(*lease);
                        vec![Action::StopChild, Action::Release(After::Rejoin)]
                    } else if o.reachable {
                        next.role = Role::Leader {
                            token: *token,
                            lease: *lease,
                            leader: leader.clone(),
                            deadline,
                        };
                        vec![]
                    } else {
                        let since = match &self.role {
                            Role::Suspect { since, .. } => *since,
                            _ => now,
                        };
                        next.role = Role::Suspect {
                            token: *token,
                            lease: *lease,
                            leader: leader.clone(),
                            deadline,
                            since,
                        };
                        vec![]
                    }
                }
            }

            (Role::Candidate | Role::Follower { .. }, Event::Observed(o)) => {
                let elected = match (&o.position, o.lease, o.deadline) {
                    (Position::Leading { token, leader }, Some(lease), Some(deadline))
                        if self.abandoned != Some(lease) && !self.ineligible && now < deadline =>
                    {
                        Some((*token, lease, leader.clone(), deadline))
                    }
                    _ => None,
                };
                match elected {
                    Some((token, lease, leader, deadline)) => {
                        next.role = Role::Leader {
                            token,
                            lease,
                            leader,
                            deadline,
                        };
                        vec![Action::StartChild { token }]
                    }
                    None => {
                        next.role = follower_role(o);
                        vec![]
                    }
                }
            }
        };
        (next, actions)
    }
}

/// The non-leading role a view implies.
fn follower_role(o: &Observed) -> Role {
    match &o.position {
        Position::Waiting {
            leader: Some(leader),
        }
        | Position::Observing {
            leader: Some(leader),
        } => Role::Follower {
            leader: leader.clone(),
        },
        _ => Role::Candidate,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BUDGET: Duration = Duration::from_secs(2);

    fn info(id: &str, rev: i64) -> LeaderInfo {
        LeaderInfo {
            id: id.into(),
            key: format!("e/{rev:x}"),
            create_revision: rev,
            member: None,
        }
    }

    fn leading(lease: i64, token: i64, sent: Instant, reachable: bool) -> Event {
        Event::Observed(Box::new(Observed {
            lease: Some(lease),
            position: Position::Leading {
                token,
                leader: info("me", token),
            },
            deadline: Some(sent + BUDGET),
            reachable,
            handoff: None,
            refusal: None,
            taken_away: true,
        }))
    }

    /// Leading, and the driver says hand leadership to `to`.
    fn handing(lease: i64, token: i64, sent: Instant, to: &str) -> Event {
        let Event::Observed(mut o) = leading(lease, token, sent, true) else {
            unreachable!()
        };
        o.handoff = Some(to.into());
        Event::Observed(o)
    }

    fn waiting(lease: i64, leader: Option<LeaderInfo>, sent: Instant) -> Event {
        Event::Observed(Box::new(Observed {
            lease: Some(lease),
            position: Position::Waiting { leader },
            deadline: Some(sent + BUDGET),
            reachable: true,
            handoff: None,
            refusal: None,
            taken_away: true,
        }))
    }

    fn observing(leader: Option<LeaderInfo>) -> Event {
        Event::Observed(Box::new(Observed {
            position: Position::Observing { leader },
            reachable: true,
            ..Observed::default()
        }))
    }

    fn joining() -> Event {
        Event::Observed(Box::new(Observed {
            lease: None,
            position: Position::Joining,
            deadline: None,
            reachable: false,
            handoff: None,
            refusal: None,
            taken_away: true,
        }))
    }

    fn machine(role: Role) -> Machine {
        Machine {
            role,
            abandoned: None,
            ineligible: false,
        }
    }

    fn leader_role(t0: Instant) -> Role {
        Role::Leader {
            token: 10,
            lease: 7,
            leader: info("me", 10),
            deadline: t0 + BUDGET,
        }
    }

    fn suspect_role(t0: Instant) -> Role {
        Role::Suspect {
            token: 10,
            lease: 7,
            leader: info("me", 10),
            deadline: t0 + BUDGET,
            since: t0,
        }
    }

    /// What an answer may say of a role at an instant: a leader's budget counts down to its
    /// deadline; at and past it the role reads as a candidate with no budget.
    #[test]
    fn answers_never_claim_leadership_past_the_deadline() {
        let t0 = Instant::now();
        let deadline = t0 + BUDGET;
        let follower = Role::Follower {
            leader: info("other", 5),
        };
        #[rustfmt::skip]
        let cases: Vec<(&str, Role, Instant, RoleKind, Option<Duration>)> = vec![
            ("leader before its deadline", leader_role(t0), t0, RoleKind::Leader, Some(BUDGET)),
            ("leader 1 ms before", leader_role(t0), deadline - Duration::from_millis(1), RoleKind::Leader, Some(Duration::from_millis(1))),
            ("leader at its deadline", leader_role(t0), deadline, RoleKind::Candidate, None),
            ("leader past it (owner frozen)", leader_role(t0), deadline + BUDGET, RoleKind::Candidate, None),
            ("suspect before", suspect_role(t0), t0 + Duration::from_millis(500), RoleKind::Suspect, Some(BUDGET - Duration::from_millis(500))),
            ("suspect past", suspect_role(t0), deadline, RoleKind::Candidate, None),
            ("follower: never a budget", follower, t0, RoleKind::Follower, None),
            ("paused", Role::Paused, t0, RoleKind::Paused, None),
        ];
        for (name, role, now, kind, budget) in cases {
            assert_eq!(role.at(now).kind(), kind, "{name}");
            assert_eq!(role.budget_at(now), budget, "{name}");
            assert_eq!(role.at(now).leads(), budget.is_some(), "{name}");
        }
    }

    /// Every (state, event) pair: the resulting role kind and actions.
    #[test]
    fn transition_table() {
        let t0 = Instant::now();
        let now = t0 + Duration::from_millis(500);
        let late = t0 + BUDGET + Duration::from_millis(1);
        let follower = Role::Follower {
            leader: info("other", 5),
        };
        use Action::*;
        use RoleKind as K;
        type Case = (&'static str, Role, Event, Instant, K, Vec<Action>);
        let cases: Vec<Case> = vec![
            // Candidate
            (
                "cand elected",
                Role::Candidate,
                leading(7, 10, t0, true),
                now,
                K::Leader,
                vec![StartChild { token: 10 }],
            ),
            (
                "cand elected too late",
                Role::Candidate,
                leading(7, 10, t0, true),
                late,
                K::Candidate,
                vec![],
            ),
            (
                "cand sees leader",
                Role::Candidate,
                waiting(7, Some(info("other", 5)), t0),
                now,
                K::Follower,
                vec![],
            ),
            (
                "cand no leader",
                Role::Candidate,
                waiting(7, None, t0),
                now,
                K::Candidate,
                vec![],
            ),
            (
                "cand joining",
                Role::Candidate,
                joining(),
                now,
                K::Candidate,
                vec![],
            ),
            (
                "cand resign",
                Role::Candidate,
                Event::RESIGN,
                now,
                K::Candidate,
                vec![],
            ),
            (
                "cand pause",
                Role::Candidate,
                Event::Pause,
                now,
                K::Paused,
                vec![Release(After::Pause)],
            ),
            (
                "cand resume",
                Role::Candidate,
                Event::Resume,
                now,
                K::Candidate,
                vec![],
            ),
            (
                "cand shutdown",
                Role::Candidate,
                Event::Shutdown,
                now,
                K::Stopping,
                vec![Release(After::Stop), Exit],
            ),
            // Follower
            (
                "fol elected",
                follower.clone(),
                leading(7, 10, t0, true),
                now,
                K::Leader,
                vec![StartChild { token: 10 }],
            ),
            (
                "fol new leader",
                follower.clone(),
                waiting(7, Some(info("third", 6)), t0),
                now,
                K::Follower,
                vec![],
            ),
            (
                "fol observing sees leader",
                follower.clone(),
                observing(Some(info("third", 6))),
                now,
                K::Follower,
                vec![],
            ),
            (
                "fol session lost",
                follower.clone(),
                joining(),
                now,
                K::Candidate,
                vec![],
            ),
            (
                "fol resign",
                follower.clone(),
                Event::RESIGN,
                now,
                K::Follower,
                vec![],
            ),
            (
                "fol pause",
                follower.clone(),
                Event::Pause,
                now,
                K::Paused,
                vec![Release(After::Pause)],
            ),
            (
                "fol resume",
                follower.clone(),
                Event::Resume,
                now,
                K::Follower,
                vec![],
            ),
            (
                "fol shutdown",
                follower.clone(),
                Event::Shutdown,
                now,
                K::Stopping,
                vec![Release(After::Stop), Exit],
            ),
            // Leader
            (
                "lead keepalive",
                leader_role(t0),
                leading(7, 10, now, true),
                now,
                K::Leader,
                vec![],
            ),
            (
                "lead contact lost",
                leader_role(t0),
                leading(7, 10, t0, false),
                now,
                K::Suspect,
                vec![],
            ),
            (
                "lead deadline",
                leader_role(t0),
                leading(7, 10, t0, true),
                late,
                K::Candidate,
                vec![StopChild, Release(After::Rejoin)],
            ),
            (
                "lead lease changed",
                leader_role(t0),
                leading(8, 11, now, true),
                now,
                K::Candidate,
                vec![KillChild],
            ),
            (
                "lead key lost",
                leader_role(t0),
                joining(),
                now,
                K::Candidate,
                vec![KillChild],
            ),
            (
                "lead demoted",
                leader_role(t0),
                waiting(7, Some(info("other", 5)), t0),
                now,
                K::Follower,
                vec![KillChild],
            ),
            (
                "lead hands over",
                leader_role(t0),
                handing(7, 10, now, "other"),
                now,
                K::Candidate,
                vec![StopChild, Release(After::Rejoin)],
            ),
            (
                "lead resign",
                leader_role(t0),
                Event::RESIGN,
                now,
                K::Candidate,
                vec![StopChild, Release(After::Rejoin)],
            ),
            (
                "lead pause",
                leader_role(t0),
                Event::Pause,
                now,
                K::Paused,
                vec![StopChild, Release(After::Pause)],
            ),
            (
                "lead resume",
                leader_role(t0),
                Event::Resume,
                now,
                K::Leader,
                vec![],
            ),
            (
                "lead shutdown",
                leader_role(t0),
                Event::Shutdown,
                now,
                K::Stopping,
                vec![StopChild, Release(After::Stop), Exit],
            ),
            // Suspect
            (
                "susp restored",
                suspect_role(t0),
                leading(7, 10, now, true),
                now,
                K::Leader,
                vec![],
            ),
            (
                "susp still cut",
                suspect_role(t0),
                leading(7, 10, t0, false),
                now,
                K::Suspect,
                vec![],
            ),
            (
                "susp deadline",
                suspect_role(t0),
                leading(7, 10, t0, false),
                late,
                K::Candidate,
                vec![StopChild, Release(After::Rejoin)],
            ),
            (
                "susp lease gone",
                suspect_role(t0),
                joining(),
                now,
                K::Candidate,
                vec![KillChild],
            ),
            (
                "susp hands over",
                suspect_role(t0),
                handing(7, 10, t0, "other"),
                now,
                K::Candidate,
                vec![StopChild, Release(After::Rejoin)],
            ),
            (
                "susp resign",
                suspect_role(t0),
                Event::RESIGN,
                now,
                K::Candidate,
                vec![StopChild, Release(After::Rejoin)],
            ),
            (
                "susp pause",
                suspect_role(t0),
                Event::Pause,
                now,
                K::Paused,
                vec![StopChild, Release(After::Pause)],
            ),
            (
                "susp resume",
                suspect_role(t0),
                Event::Resume,
                now,
                K::Suspect,
                vec![],
            ),
            (
                "susp shutdown",
                suspect_role(t0),
                Event::Shutdown,
                now,
                K::Stopping,
                vec![StopChild, Release(After::Stop), Exit],
            ),
            // Paused
            (
                "paused view",
                Role::Paused,
                leading(7, 10, t0, true),
                now,
                K::Paused,
                vec![],
            ),
            (
                "paused resign",
                Role::Paused,
                Event::RESIGN,
                now,
                K::Paused,
                vec![],
            ),
            (
                "paused pause",
                Role::Paused,
                Event::Pause,
                now,
                K::Paused,
                vec![],
            ),
            (
                "paused resume",
                Role::Paused,
                Event::Resume,
                now,
                K::Candidate,
                vec![ResumeElection],
            ),
            (
                "paused shutdown",
                Role::Paused,
                Event::Shutdown,
                now,
                K::Stopping,
                vec![Release(After::Stop), Exit],
            ),
            // Stopping
            (
                "stop view",
                Role::Stopping,
                leading(7, 10, t0, true),
                now,
                K::Stopping,
                vec![],
            ),
            (
                "stop resign",
                Role::Stopping,
                Event::RESIGN,
                now,
                K::Stopping,
                vec![],
            ),
            (
                "stop pause",
                Role::Stopping,
                Event::Pause,
                now,
                K::Stopping,
                vec![],
            ),
            (
                "stop resume",
                Role::Stopping,
                Event::Resume,
                now,
                K::Stopping,
                vec![],
            ),
            (
                "stop shutdown",
                Role::Stopping,
                Event::Shutdown,
                now,
                K::Stopping,
                vec![],
            ),
        ];
        for (name, role, event, at, kind, actions) in cases {
            let (next, got) = machine(role).step(&event, at);
            assert_eq!(next.role.kind(), kind, "{name}: role");
            assert_eq!(got, actions, "{name}: actions");
        }
    }

    /// Every role and eligibility against `Ineligible`, `Eligible`, `Resume` and a view that
    /// would elect: the role kind, actions, and whether the machine is ineligible after.
    #[test]
    fn eligibility_table() {
        let t0 = Instant::now();
        let now = t0 + Duration::from_millis(500);
        let follower = Role::Follower {
            leader: info("other", 5),
        };
        use Action::*;
        use RoleKind as K;
        type Case = (&'static str, Role, bool, Event, K, Vec<Action>, bool);
        let cases: Vec<Case> = vec![
            (
                "cand ineligible",
                Role::Candidate,
                false,
                Event::Ineligible,
                K::Candidate,
                vec![Release(After::Observe)],
                true,
            ),
            (
                "cand ineligible again",
                Role::Candidate,
                true,
                Event::Ineligible,
                K::Candidate,
                vec![],
                true,
            ),
            (
                "cand eligible",
                Role::Candidate,
                true,
                Event::Eligible,
                K::Candidate,
                vec![ResumeElection],
                false,
            ),
            (
                "cand eligible already",
                Role::Candidate,
                false,
                Event::Eligible,
                K::Candidate,
                vec![],
                false,
            ),
            (
                "cand ineligible not elected",
                Role::Candidate,
                true,
                leading(7, 10, t0, true),
                K::Candidate,
                vec![],
                true,
            ),
            (
                "fol ineligible keeps its leader",
                follower.clone(),
                false,
                Event::Ineligible,
                K::Follower,
                vec![Release(After::Observe)],
                true,
            ),
            (
                "fol eligible",
                follower.clone(),
                true,
                Event::Eligible,
                K::Follower,
                vec![ResumeElection],
                false,
            ),
            (
                "lead ineligible stops first",
                leader_role(t0),
                false,
                Event::Ineligible,
                K::Candidate,
                vec![StopChild, Release(After::Observe)],
                true,
            ),
            (
                "susp ineligible stops first",
                suspect_role(t0),
                false,
                Event::Ineligible,
                K::Candidate,
                vec![StopChild, Release(After::Observe)],
                true,
            ),
            (
                "lead eligible",
                leader_role(t0),
                false,
                Event::Eligible,
                K::Leader,
                vec![],
                false,
            ),
            (
                "paused ineligible stays paused",
                Role::Paused,
                false,
                Event::Ineligible,
                K::Paused,
                vec![],
                true,
            ),
            (
                "paused eligible stays paused",
                Role::Paused,
                true,
                Event::Eligible,
                K::Paused,
                vec![],
                false,
            ),
            (
                "paused resume while ineligible observes",
                Role::Paused,
                true,
                Event::Resume,
                K::Candidate,
                vec![Release(After::Observe)],
                true,
            ),
            (
                "paused resume while eligible campaigns",
                Role::Paused,
                false,
                Event::Resume,
                K::Candidate,
                vec![ResumeElection],
                false,
            ),
            (
                "stopping ignores ineligible",
                Role::Stopping,
                false,
                Event::Ineligible,
                K::Stopping,
                vec![],
                false,
            ),
            (
                "stopping ignores eligible",
                Role::Stopping,
                true,
                Event::Eligible,
                K::Stopping,
                vec![],
                true,
            ),
        ];
        for (name, role, ineligible, event, kind, actions, after) in cases {
            let mut m = machine(role);
            m.ineligible = ineligible;
            let (next, got) = m.step(&event, now);
            assert_eq!(next.role.kind(), kind, "{name}: role");
            assert_eq!(got, actions, "{name}: actions");
            assert_eq!(next.ineligible, after, "{name}: ineligible after");
        }
    }

    #[test]
    fn suspect_keeps_token_and_original_since() {
        let t0 = Instant::now();
        let m = machine(suspect_role(t0));
        let (next, _) = m.step(&leading(7, 10, t0, false), t0 + Duration::from_secs(1));
        match next.role {
            Role::Suspect {
                token,
                since,
                deadline,
                ..
            } => {
                assert_eq!(token, 10);
                assert_eq!(since, t0);
                assert_eq!(deadline, t0 + BUDGET);
            }
            other => panic!("expected suspect, got {other:?}"),
        }
    }

    #[test]
    fn deadline_counts_from_last_keepalive_sent() {
        let t0 = Instant::now();
        let sent = t0 + Duration::from_millis(700);
        let (next, _) = machine(leader_role(t0)).step(&leading(7, 10, sent, true), sent);
        assert_eq!(next.role.deadline(), Some(sent + BUDGET));
    }

    #[test]
    fn a_resignation_with_a_rejoin_delay_releases_for_that_long() {
        let t0 = Instant::now();
        let delay = Duration::from_secs(2);
        let resign = Event::Resign {
            rejoin_after: delay,
        };
        let (next, actions) = machine(leader_role(t0)).step(&resign, t0);
        assert_eq!(next.role.kind(), RoleKind::Candidate);
        assert_eq!(
            actions,
            vec![
                Action::StopChild,
                Action::Release(After::RejoinAfter(delay))
            ]
        );
    }

    #[test]
    fn abandoned_lease_does_not_lead_again() {
        let t0 = Instant::now();
        let (after_resign, _) = machine(leader_role(t0)).step(&Event::RESIGN, t0);
        assert_eq!(after_resign.abandoned, Some(7));
        // The driver has not released yet and still reports Leading on lease 7.
        let (next, actions) = after_resign.step(&leading(7, 10, t0, true), t0);
        assert_eq!(next.role.kind(), RoleKind::Candidate);
        assert!(actions.is_empty());
        // A fresh session that wins leads again with its own token.
        let (next, actions) = next.step(&leading(9, 12, t0, true), t0);
        assert_eq!(next.role.kind(), RoleKind::Leader);
        assert_eq!(actions, vec![Action::StartChild { token: 12 }]);
    }
}
