//! The leadership loop on tokio's paused clock, with an in-memory source and command: the exit
//! policy's restart backoff, the rejoin delays, a command that cannot start, the deadline taking
//! precedence over a command's exit, and once mode. (Real processes against real etcd:
//! tests/supervisor.rs and tests/elect_run.rs.)

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use nix::sys::signal::Signal;
use tokio::time::{Instant, sleep_until};

use super::*;
use crate::config::OnExit;
use crate::election::role::{Observed, RoleKind};
use crate::election::{After, LeaderInfo, Position};

const BUDGET: Duration = Duration::from_secs(2);
const KEEPALIVE: Duration = Duration::from_millis(500);

/// What the fakes record, shared with the test.
#[derive(Default)]
struct Log {
    /// When the command was started, and its environment.
    starts: Vec<(Instant, Vec<(String, String)>)>,
    stops: Vec<Instant>,
    /// Releases and when they were asked for.
    releases: Vec<(Instant, After)>,
}

type Shared = Rc<RefCell<Log>>;

/// A lone replica's election: it leads under a new token whenever it (re)joins; keepalives
/// succeed every [`KEEPALIVE`] until `cut_at`.
struct FakeSource {
    log: Shared,
    lease: i64,
    leading: bool,
    last_ok_sent: Option<Instant>,
    /// When a session is granted next (after a release with a delay).
    join_at: Option<Instant>,
    next_keepalive: Instant,
    /// From then on no keepalive succeeds (etcd cut off).
    cut_at: Option<Instant>,
}

impl FakeSource {
    fn new(log: &Shared) -> FakeSource {
        let now = Instant::now();
        FakeSource {
            log: log.clone(),
            lease: 0,
            leading: false,
            last_ok_sent: None,
            join_at: Some(now),
            next_keepalive: now + KEEPALIVE,
            cut_at: None,
        }
    }
}

fn me(token: i64) -> LeaderInfo {
    LeaderInfo {
        id: "me".into(),
        key: format!("e/{token:x}"),
        create_revision: token,
        member: None,
    }
}

impl Source for FakeSource {
    type Ended = String;

    fn observed(&self) -> Observed {
        let cut = self.cut_at.is_some_and(|c| Instant::now() >= c);
        Observed {
            lease: self.leading.then_some(self.lease),
            position: if self.leading {
                Position::Leading {
                    token: self.lease * 10,
                    leader: me(self.lease * 10),
                }
            } else {
                Position::Joining
            },
            deadline: self.last_ok_sent.map(|s| s + BUDGET),
            reachable: !cut,
            handoff: None,
            refusal: None,
            taken_away: true,
        }
    }

    async fn changed(&mut self) -> Result<(), String> {
        let at = match self.join_at {
            Some(j) => j.min(self.next_keepalive),
            None => self.next_keepalive,
        };
        sleep_until(at).await;
        let now = Instant::now();
        if self.join_at.is_some_and(|j| now >= j) {
            self.join_at = None;
            self.lease += 1;
            self.leading = true;
            self.last_ok_sent = Some(now);
        }
        if now >= self.next_keepalive {
            self.next_keepalive = now + KEEPALIVE;
            if self.leading && self.cut_at.is_none_or(|c| now < c) {
                self.last_ok_sent = Some(now);
            }
        }
        Ok(())
    }

    fn kill_deadline(&self) -> Option<Instant> {
        self.last_ok_sent.map(|s| s + BUDGET)
    }

    async fn release(&mut self, after: After) {
        let now = Instant::now();
        self.log.borrow_mut().releases.push((now, after));
        self.leading = false;
        self.last_ok_sent = None;
        self.join_at = match after {
            After::Rejoin => Some(now),
            After::RejoinAfter(d) => Some(now + d),
            After::Pause | After::Observe | After::Stop => None,
        };
    }

    async fn resume(&mut self) {
        self.join_at = Some(Instant::now());
    }
}

/// A command that exits with `code` after `runs_for`, or cannot be started at all.
struct FakeCommand {
    log: Shared,
    runs_for: Duration,
    code: i32,
    cannot_start: bool,
    running_since: Option<Instant>,
}

impl FakeCommand {
    fn exiting(log: &Shared, runs_for: Duration, code: i32) -> FakeCommand {
        FakeCommand {
            log: log.clone(),
            runs_for,
            code,
            cannot_start: false,
            running_since: None,
        }
    }

    fn missing(log: &Shared) -> FakeCommand {
        FakeCommand {
            cannot_start: true,
            ..FakeCommand::exiting(log, Duration::ZERO, 0)
        }
    }
}

impl Runner for FakeCommand {
    fn start(&mut self, env: &[(String, String)]) -> Result<u32, SupervisorError> {
        if self.cannot_start {
            return Err(SupervisorError::Spawn {
                program: "missing".into(),
                source: std::io::Error::from(std::io::ErrorKind::NotFound),
            });
        }
        let now = Instant::now();
        self.log.borrow_mut().starts.push((now, env.to_vec()));
        self.running_since = Some(now);
        Ok(4242)
    }

    fn is_running(&self) -> bool {
        self.running_since.is_some()
    }

    async fn wait(&mut self) -> (ExitInfo, Duration) {
        let Some(since) = self.running_since else {
            return std::future::pending().await;
        };
        sleep_until(since + self.runs_for).await;
        self.running_since = None;
        let exit = ExitInfo {
            code: self.code,
            signal: None,
        };
        (exit, self.runs_for)
    }

    async fn kill(&mut self) -> Option<ExitInfo> {
        self.running_since.take()?;
        self.log.borrow_mut().stops.push(Instant::now());
        Some(ExitInfo {
            code: 137,
            signal: Some(9),
        })
    }

    async fn stop(&mut self) -> Option<ExitInfo> {
        self.running_since.take()?;
        self.log.borrow_mut().stops.push(Instant::now());
        Some(ExitInfo {
            code: 143,
            signal: Some(15),
        })
    }

    fn forward(&self, _signal: Signal) {}

    fn set_kill_deadline(&mut self, _at: Instant) {}
}

fn identity() -> Identity {
    Identity {
        id: "me".into(),
        election: "e".into(),
    }
}

/// Run the loop as the daemon does (every event applied) until `until`; the command's ends
/// under `--on-exit exit` and the source's end stop it early.
async fn drive(lead: &mut Leadership<FakeSource, FakeCommand>, until: Instant) -> Option<i32> {
    loop {
        match lead.next(sleep_until(until)).await {
            Next::Event(e) => {
                if let Some(exit) = lead.apply(e).await.ended {
                    return Some(exit.code);
                }
            }
            Next::CommandEnded(exit) => return Some(exit.code),
            Next::SourceEnded(e) => panic!("source ended: {e}"),
            Next::Input(()) => return None,
        }
    }
}

/// Offsets from `t0` in milliseconds.
fn offsets(t0: Instant, at: impl IntoIterator<Item = Instant>) -> Vec<u128> {
    at.into_iter()
        .map(|t| t.duration_since(t0).as_millis())
        .collect()
}

#[tokio::test(start_paused = true)]
async fn restart_backs_off_then_resigns_and_rejoins_after_a_second() {
    let log = Shared::default();
    let t0 = Instant::now();
    let mut lead = Leadership::new(
        FakeSource::new(&log),
        Some(FakeCommand::exiting(&log, Duration::ZERO, 1)),
        ExitPolicy::new(OnExit::Restart),
        identity(),
    );
    drive(&mut lead, t0 + Duration::from_millis(4500)).await;
    let log = log.borrow();
    // Elected at once; restarts after 0.2, 0.4, 0.8 s; the fifth exit (at 3.0 s, after 1.6 s)
    // resigns for 1 s; a new leadership at 4.0 s starts the command at once, and backs off
    // from 0.2 s again.
    assert_eq!(
        offsets(t0, log.starts.iter().map(|s| s.0)),
        vec![0, 200, 600, 1400, 3000, 4000, 4200]
    );
    assert_eq!(
        log.releases.iter().map(|r| r.1).collect::<Vec<_>>(),
        vec![After::RejoinAfter(Duration::from_secs(1))]
    );
    assert_eq!(offsets(t0, log.releases.iter().map(|r| r.0)), vec![3000]);
    // Each leadership has its own token.
    let token = |env: &Vec<(String, String)>| {
        env.iter()
            .find(|(k, _)| k == "ELECTD_FENCING_TOKEN")
            .map(|(_, v)| v.clone())
    };
    assert_eq!(token(&log.starts[0].1).as_deref(), Some("10"));
    assert_eq!(token(&log.starts[5].1).as_deref(), Some("20"));
}

#[tokio::test(start_paused = true)]
async fn resign_rejoins_after_growing_delays() {
    let log = Shared::default();
    let t0 = Instant::now();
    let mut lead = Leadership::new(
        FakeSource::new(&log),
        Some(FakeCommand::exiting(&log, Duration::from_millis(100), 0)),
        ExitPolicy::new(OnExit::Resign),
        identity(),
    );
    drive(&mut lead, t0 + Duration::from_secs(20)).await;
    let log = log.borrow();
    let delays: Vec<After> = log.releases.iter().map(|r| r.1).collect();
    let secs = |s| After::RejoinAfter(Duration::from_secs(s));
    assert_eq!(delays, vec![secs(1), secs(2), secs(4), secs(8), secs(16)]);
    // Each run lasts 0.1 s; each rejoin waits its delay: 0, 1.1, 3.2, 7.3, 15.4.
    assert_eq!(
        offsets(t0, log.starts.iter().map(|s| s.0)),
        vec![0, 1100, 3200, 7300, 15400]
    );
}

#[tokio::test(start_paused = true)]
async fn a_command_that_cannot_start_is_decided_by_the_policy_at_once() {
    // restart: retried with the backoff, then resigned.
    let log = Shared::default();
    let t0 = Instant::now();
    let mut lead = Leadership::new(
        FakeSource::new(&log),
        Some(FakeCommand::missing(&log)),
        ExitPolicy::new(OnExit::Restart),
        identity(),
    );
    drive(&mut lead, t0 + Duration::from_millis(3500)).await;
    let releases = log.borrow().releases.clone();
    assert_eq!(
        releases,
        vec![(
            t0 + Duration::from_secs(3),
            After::RejoinAfter(Duration::from_secs(1))
        )]
    );
    // exit: the loop ends with the shell's code for a missing command.
    let log = Shared::default();
    let mut lead = Leadership::new(
        FakeSource::new(&log),
        Some(FakeCommand::missing(&log)),
        ExitPolicy::new(OnExit::Exit),
        identity(),
    );
    let code = drive(&mut lead, Instant::now() + Duration::from_secs(5)).await;
    assert_eq!(code, Some(crate::exit::NOT_FOUND));
}

#[tokio::test(start_paused = true)]
async fn a_passed_deadline_is_handled_before_the_command_exit_due_at_the_same_time() {
    let log = Shared::default();
    let t0 = Instant::now();
    let mut source = FakeSource::new(&log);
    // Cut from etcd right after the grant: the deadline is t0 + budget.
    source.cut_at = Some(t0 + Duration::from_millis(1));
    let mut lead = Leadership::new(
        source,
        Some(FakeCommand::exiting(&log, BUDGET, 1)),
        ExitPolicy::new(OnExit::Restart),
        identity(),
    );
    // Elected at t0 (the grant), command started.
    let Next::Event(e) = lead.next(std::future::pending::<()>()).await else {
        panic!("expected the first view");
    };
    lead.apply(e).await;
    assert_eq!(lead.role().kind(), RoleKind::Leader);
    // Keepalive views (suspect) until the deadline: both the deadline and the command's exit
    // are due at t0 + budget; the deadline must win.
    loop {
        match lead.next(std::future::pending::<()>()).await {
            Next::Event(e) => {
                let at = Instant::now();
                let applied = lead.apply(e).await;
                if applied.lost.is_some() {
                    assert_eq!(at, t0 + BUDGET);
                    break;
                }
            }
            other => panic!("the command's exit came before the deadline: {other:?}"),
        }
    }
    assert!(!lead.role().leads());
    assert_eq!(log.borrow().stops, vec![t0 + BUDGET]);
    assert_eq!(log.borrow().releases, vec![(t0 + BUDGET, After::Rejoin)]);
}

#[tokio::test(start_paused = true)]
async fn once_mode_reports_the_election_and_ends_at_the_loss() {
    let log = Shared::default();
    let t0 = Instant::now();
    let mut source = FakeSource::new(&log);
    source.cut_at = Some(t0 + Duration::from_millis(700));
    let mut lead = Leadership::new(source, None, ExitPolicy::new(OnExit::Exit), identity()).once();
    let Next::Event(e) = lead.next(std::future::pending::<()>()).await else {
        panic!("expected the first view");
    };
    let (token, leader) = lead.apply(e).await.elected.expect("elected");
    assert_eq!((token, leader.key.as_str()), (10, "e/a"));
    assert!(
        log.borrow().starts.is_empty(),
        "once mode must not start by itself"
    );
    lead.set_command(FakeCommand::exiting(&log, Duration::from_secs(60), 0));
    let slot = vec![("ELECTD_SLOT".to_string(), "60".to_string())];
    lead.start_command(token, slot).unwrap();
    let env = log.borrow().starts[0].1.clone();
    assert!(
        env.contains(&("ELECTD_SLOT".into(), "60".into())),
        "{env:?}"
    );
    assert!(
        env.contains(&("ELECTD_LEADER_KEY".into(), "e/a".into())),
        "{env:?}"
    );
    // The last keepalive before the cut was sent at 0.5 s: the deadline is 2.5 s.
    loop {
        match lead.next(std::future::pending::<()>()).await {
            Next::Event(e) => {
                if let Some(lost) = lead.apply(e).await.lost {
                    assert_eq!(Instant::now(), t0 + Duration::from_millis(500) + BUDGET);
                    assert_eq!(
                        lost.reason,
                        "no keepalive succeeded within the leader budget; etcd unreachable"
                    );
                    break;
                }
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    // The rest of the machine's actions (the release) is left to the caller.
    assert!(log.borrow().releases.is_empty());
}

#[test]
fn the_command_environment_names_this_replica_the_election_and_the_token() {
    let env = command_env(&identity(), &me(42), 42, &[]);
    assert_eq!(
        env,
        vec![
            ("ELECTD_ID".to_string(), "me".to_string()),
            ("ELECTD_ELECTION".to_string(), "e".to_string()),
            ("ELECTD_LEADER_KEY".to_string(), "e/2a".to_string()),
            ("ELECTD_FENCING_TOKEN".to_string(), "42".to_string()),
        ]
    );
}

/// A sidecar (no command) that resigns gives up its lease only once the last budget handed to
/// its app has run out plus the stop grace — also a budget recorded while it waits — and at
/// once when none was handed out.
#[tokio::test(start_paused = true)]
async fn a_sidecar_releases_only_after_the_app_budget_and_grace() {
    let grace = Duration::from_millis(300);
    for handed_out in [false, true] {
        let log = Shared::default();
        let t0 = Instant::now();
        let claims = crate::status::Claims::default();
        let mut lead: Leadership<FakeSource, FakeCommand> = Leadership::new(
            FakeSource::new(&log),
            None,
            ExitPolicy::new(OnExit::Restart),
            identity(),
        )
        .with_app(AppBudget {
            claims: claims.clone(),
            grace,
        });
        drive(&mut lead, t0 + Duration::from_millis(100)).await;
        assert!(lead.role().leads(), "{:?}", lead.role());
        if handed_out {
            // An answer at 100 ms gave the app the budget up to the deadline (keepalive at 0 ms
            // + BUDGET), and a stream built from an older snapshot records it again later.
            claims.record(lead.role().deadline().unwrap());
            let late = claims.clone();
            tokio::spawn(async move {
                sleep_until(t0 + Duration::from_millis(2200)).await;
                late.record(t0 + Duration::from_millis(2400));
            });
        }
        let applied = lead.apply(Event::RESIGN).await;
        assert!(applied.lost.is_some());
        let log = log.borrow();
        let released = offsets(t0, log.releases.iter().map(|r| r.0));
        let want = if handed_out {
            // The first budget ends at 2000 ms (+300 ms grace); meanwhile one to 2400 ms was
            // recorded: 2700 ms.
            vec![2700]
        } else {
            vec![100]
        };
        assert_eq!(released, want, "handed out: {handed_out}");
    }
}
