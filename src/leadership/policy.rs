//! The `--on-exit` policy as a pure value: what a command's own exit (or failure to start) while
//! this replica leads means — restart after a growing delay, resign and stay out of the election
//! for a growing delay, or stop. [`ExitPolicy::step`] does no I/O and reads no clock: every
//! instant is given, so the table test below drives it through minutes in microseconds.
//!
//! - `restart`: back off 0.2 s, 0.4 s, …; the [`RESTART_LIMIT`]th exit within
//!   [`WINDOW`] resigns instead, so another replica gets a chance.
//! - `resign`: resign at once.
//! - `exit`: stop with the command's code (electd exits; elect-run's one run is over).
//!
//! A replica that resigns because its command exited stays out of the election 1 s, doubling
//! for each such resignation within [`WINDOW`] of the last, up to 30 s: a command that fails
//! everywhere must not spin leadership around, or re-elect a lone replica in a tight loop.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

use crate::config::OnExit;

pub const RESTART_FIRST_DELAY: Duration = Duration::from_millis(200);
/// The longest restart delay (with [`RESTART_LIMIT`] 5 the fourth exit's 1.6 s is the longest
/// reached; the cap keeps a larger limit sane).
pub const RESTART_MAX_DELAY: Duration = Duration::from_secs(10);
/// This many exits within [`WINDOW`] make a restarting replica resign.
pub const RESTART_LIMIT: usize = 5;
/// How far back exits (and resignations for exits) are remembered.
pub const WINDOW: Duration = Duration::from_secs(60);
pub const REJOIN_FIRST_DELAY: Duration = Duration::from_secs(1);
pub const REJOIN_MAX_DELAY: Duration = Duration::from_secs(30);

/// What a command's exit means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Start it again after this long (if still leading then).
    Restart { after: Duration },
    /// Give up leadership; stay out of the election this long before rejoining.
    Resign { rejoin_after: Duration },
    /// Stop, with the command's exit code.
    Exit { code: i32 },
}

/// What the policy is told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// This replica became leader: earlier exits belong to an earlier leadership.
    Elected,
    /// The command exited (or could not start: code 126/127) while this replica led.
    Exited { code: i32 },
}

/// The policy and what it remembers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExitPolicy {
    pub on_exit: OnExit,
    /// Exits in the current leadership within [`WINDOW`] (restart only).
    exits: VecDeque<Instant>,
    /// Resignations for exits in a row, and when the last one was.
    resigns: u32,
    last_resign: Option<Instant>,
}

impl ExitPolicy {
    pub fn new(on_exit: OnExit) -> ExitPolicy {
        ExitPolicy {
            on_exit,
            exits: VecDeque::new(),
            resigns: 0,
            last_resign: None,
        }
    }

    /// The transition function: the next policy and, for an exit, what to do.
    pub fn step(&self, event: Event, now: Instant) -> (ExitPolicy, Option<Decision>) {
        let mut next = self.clone();
        let code = match event {
            Event::Elected => {
                next.exits.clear();
                return (next, None);
            }
            Event::Exited { code } => code,
        };
        let decision = match self.on_exit {
            OnExit::Exit => Decision::Exit { code },
            OnExit::Resign => next.resign(now),
            OnExit::Restart => {
                next.exits.push_back(now);
                while next
                    .exits
                    .front()
                    .is_some_and(|t| now.duration_since(*t) > WINDOW)
                {
                    next.exits.pop_front();
                }
                if next.exits.len() >= RESTART_LIMIT {
                    next.exits.clear();
                    next.resign(now)
                } else {
                    let n = next.exits.len() as u32;
                    Decision::Restart {
                        after: (RESTART_FIRST_DELAY * 2u32.pow(n.saturating_sub(1)))
                            .min(RESTART_MAX_DELAY),
                    }
                }
            }
        };
        (next, Some(decision))
    }

    /// Count a resignation for an exit and say how long to stay out.
    fn resign(&mut self, now: Instant) -> Decision {
        let streak = match self.last_resign {
            Some(t) if now.duration_since(t) < WINDOW => self.resigns + 1,
            _ => 1,
        };
        self.resigns = streak;
        self.last_resign = Some(now);
        Decision::Resign {
            rejoin_after: (REJOIN_FIRST_DELAY * 2u32.pow(streak.min(16) - 1)).min(REJOIN_MAX_DELAY),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    /// Sequences of (event at offset) and the decision each must produce, per policy.
    #[test]
    fn decision_table() {
        use Decision::*;
        let exited = |code| Event::Exited { code };
        type Case = (
            &'static str,
            OnExit,
            Vec<(Duration, Event, Option<Decision>)>,
        );
        let cases: Vec<Case> = vec![
            (
                "restart backs off 0.2 s doubling",
                OnExit::Restart,
                vec![
                    (secs(0), exited(1), Some(Restart { after: ms(200) })),
                    (secs(1), exited(1), Some(Restart { after: ms(400) })),
                    (secs(2), exited(0), Some(Restart { after: ms(800) })),
                    (secs(3), exited(1), Some(Restart { after: ms(1600) })),
                ],
            ),
            (
                "the fifth exit within a minute resigns for 1 s",
                OnExit::Restart,
                vec![
                    (secs(0), exited(1), Some(Restart { after: ms(200) })),
                    (secs(10), exited(1), Some(Restart { after: ms(400) })),
                    (secs(20), exited(1), Some(Restart { after: ms(800) })),
                    (secs(30), exited(1), Some(Restart { after: ms(1600) })),
                    (
                        secs(40),
                        exited(1),
                        Some(Resign {
                            rejoin_after: secs(1),
                        }),
                    ),
                    // The window starts over after the resignation.
                    (secs(41), exited(1), Some(Restart { after: ms(200) })),
                ],
            ),
            (
                "exits older than the window are forgotten",
                OnExit::Restart,
                vec![
                    (secs(0), exited(1), Some(Restart { after: ms(200) })),
                    (secs(30), exited(1), Some(Restart { after: ms(400) })),
                    (secs(61), exited(1), Some(Restart { after: ms(400) })),
                    (secs(92), exited(1), Some(Restart { after: ms(400) })),
                ],
            ),
            (
                "a new leadership restarts the backoff",
                OnExit::Restart,
                vec![
                    (secs(0), exited(1), Some(Restart { after: ms(200) })),
                    (secs(1), exited(1), Some(Restart { after: ms(400) })),
                    (secs(2), Event::Elected, None),
                    (secs(3), exited(1), Some(Restart { after: ms(200) })),
                ],
            ),
            (
                "resign rejoins after 1 s, doubling within a minute, up to 30 s",
                OnExit::Resign,
                vec![
                    (
                        secs(0),
                        exited(1),
                        Some(Resign {
                            rejoin_after: secs(1),
                        }),
                    ),
                    (
                        secs(5),
                        exited(1),
                        Some(Resign {
                            rejoin_after: secs(2),
                        }),
                    ),
                    (
                        secs(15),
                        exited(0),
                        Some(Resign {
                            rejoin_after: secs(4),
                        }),
                    ),
                    (
                        secs(30),
                        exited(1),
                        Some(Resign {
                            rejoin_after: secs(8),
                        }),
                    ),
                    (
                        secs(50),
                        exited(1),
                        Some(Resign {
                            rejoin_after: secs(16),
                        }),
                    ),
                    (
                        secs(80),
                        exited(1),
                        Some(Resign {
                            rejoin_after: secs(30),
                        }),
                    ),
                    // A minute of quiet: the streak is over.
                    (
                        secs(141),
                        exited(1),
                        Some(Resign {
                            rejoin_after: secs(1),
                        }),
                    ),
                ],
            ),
            (
                "a new leadership does not reset the rejoin streak",
                OnExit::Resign,
                vec![
                    (
                        secs(0),
                        exited(1),
                        Some(Resign {
                            rejoin_after: secs(1),
                        }),
                    ),
                    (secs(2), Event::Elected, None),
                    (
                        secs(3),
                        exited(1),
                        Some(Resign {
                            rejoin_after: secs(2),
                        }),
                    ),
                ],
            ),
            (
                "exit stops with the command's code, also 127 for a missing command",
                OnExit::Exit,
                vec![
                    (secs(0), exited(3), Some(Exit { code: 3 })),
                    (secs(1), exited(127), Some(Exit { code: 127 })),
                ],
            ),
        ];
        let t0 = Instant::now();
        for (name, on_exit, steps) in cases {
            let mut p = ExitPolicy::new(on_exit);
            for (i, (at, event, want)) in steps.into_iter().enumerate() {
                let (next, got) = p.step(event, t0 + at);
                assert_eq!(got, want, "{name}: step {i} ({event:?} at {at:?})");
                p = next;
            }
        }
    }
}
