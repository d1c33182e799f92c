//! The one leadership loop: given a [`Source`] of leadership and a [`Runner`] for the command,
//! run the command only while this replica leads. electd and both elect-run modes use it; they
//! only gather their own inputs (signals, control requests, timers) and decide what a stop
//! means for them.
//!
//! - [`Leadership::next`] waits for what happens next. A leadership deadline that has passed is
//!   handled **before anything else** (a `biased` select): a command exit or a restart must
//!   never be acted on by a leader whose time is up.
//! - [`Leadership::apply`] runs one event through the pure role [`Machine`] and carries out its
//!   actions in order — stop the command before giving up the lease, always — and whatever they
//!   raise (a command that cannot start yields an [`ExitPolicy`] decision at once).
//! - The command's `ELECTD_*` environment is built in one place, [`command_env`].
//! - Consumers of role changes (status and metrics, hooks) plug in as [`Observer`]s.

pub mod policy;
pub mod source;

use std::collections::VecDeque;
use std::time::Duration;

use nix::sys::signal::Signal;
use tokio::time::{Instant, sleep_until};
use tracing::{error, info, warn};

pub use policy::{Decision, ExitPolicy};
pub use source::{ElectionSource, SocketSource, Source};

use crate::election::role::{Action, Event, Machine, Role};
use crate::election::{LEADER_KEY_VAR, LeaderInfo, Position};
use crate::exit;
use crate::supervisor::watchdog::WatchdogHandle;
use crate::supervisor::{ExitInfo, Supervisor, SupervisorError};

/// Who this replica is, as its command is told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub id: String,
    pub election: String,
}

impl Identity {
    /// `ELECTD_ID` and `ELECTD_ELECTION`, which every process electd starts is given (the
    /// wrapped command, elect-run's job, health checks, role-change hooks).
    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            ("ELECTD_ID".to_string(), self.id.clone()),
            ("ELECTD_ELECTION".to_string(), self.election.clone()),
        ]
    }
}

/// The variable that carries the fencing token (the leader key's create revision) to the
/// wrapped command and to role-change hooks.
pub const FENCING_TOKEN_VAR: &str = "ELECTD_FENCING_TOKEN";

/// The command's environment: the one place the leader's `ELECTD_*` variables are written.
pub fn command_env(
    identity: &Identity,
    leader: &LeaderInfo,
    token: i64,
    extra: &[(String, String)],
) -> Vec<(String, String)> {
    let mut env = identity.env();
    env.push((LEADER_KEY_VAR.to_string(), leader.key.clone()));
    env.push((FENCING_TOKEN_VAR.to_string(), token.to_string()));
    env.extend(extra.iter().cloned());
    env
}

/// What runs the command. [`Supervisor`] is the real one; tests use a fake on a paused clock.
#[allow(async_fn_in_trait)] // the loop runs on one thread; no Send bound is needed
pub trait Runner {
    /// Start the command with `env` added; its pid.
    fn start(&mut self, env: &[(String, String)]) -> Result<u32, SupervisorError>;
    fn is_running(&self) -> bool;
    /// Wait for the running command to exit on its own (pending when none runs).
    async fn wait(&mut self) -> (ExitInfo, Duration);
    /// Stop the command (signal, grace, kill); how it ended, `None` if none ran.
    async fn stop(&mut self) -> Option<ExitInfo>;
    /// Kill the command at once (no grace), its whole tree; how it ended, `None` if none ran.
    async fn kill(&mut self) -> Option<ExitInfo>;
    fn forward(&self, signal: Signal);
    /// The latest moment the command may still run (the freeze watchdog's deadline).
    fn set_kill_deadline(&mut self, at: Instant);
}

impl Runner for Supervisor {
    fn start(&mut self, env: &[(String, String)]) -> Result<u32, SupervisorError> {
        Supervisor::start(self, env)
    }
    fn is_running(&self) -> bool {
        Supervisor::is_running(self)
    }
    async fn wait(&mut self) -> (ExitInfo, Duration) {
        Supervisor::wait(self).await
    }
    async fn stop(&mut self) -> Option<ExitInfo> {
        Supervisor::stop(self).await
    }
    async fn kill(&mut self) -> Option<ExitInfo> {
        Supervisor::kill(self).await
    }
    fn forward(&self, signal: Signal) {
        Supervisor::forward(self, signal)
    }
    fn set_kill_deadline(&mut self, at: Instant) {
        Supervisor::set_kill_deadline(self, at)
    }
}

/// One step of the role machine, as observers see it.
pub struct Step<'a> {
    pub from: &'a Role,
    pub to: &'a Role,
    pub event: &'a Event,
    pub now: Instant,
}

/// What happened to the command.
#[derive(Debug, Clone, PartialEq)]
pub enum CommandChange {
    /// A restart is due (the `restarts`th of this leadership); `Started` or `StartFailed`
    /// follows.
    Restarting {
        restarts: u64,
    },
    Started {
        pid: u32,
        restarts: u64,
    },
    /// It could not be started (counted as an exit with this code).
    StartFailed {
        exit: ExitInfo,
    },
    /// It exited on its own after running `ran`.
    Exited {
        exit: ExitInfo,
        ran: Duration,
    },
    /// It was stopped; how it ended (`None` if it was already gone).
    Stopped {
        exit: Option<ExitInfo>,
    },
}

/// A consumer of role changes: the daemon's status and metrics, role-change hooks.
pub trait Observer {
    /// After every step of the role machine (also when the role did not change).
    fn stepped(&mut self, _step: &Step<'_>) {}
    fn command(&mut self, _change: &CommandChange) {}
}

/// What [`Leadership::next`] returns.
#[derive(Debug)]
pub enum Next<X, E> {
    /// An event for the role machine: the source changed, a deadline passed, or the exit
    /// policy resigns. Hand it to [`Leadership::apply`].
    Event(Event),
    /// The command ended and the exit policy says stop (`--on-exit exit`, elect-run).
    CommandEnded(ExitInfo),
    /// The source ended for good.
    SourceEnded(E),
    /// The caller's own input completed first.
    Input(X),
}

/// What the exit policy raises for the caller.
enum Raised {
    Event(Event),
    Ended(ExitInfo),
}

impl<X, E> From<Raised> for Next<X, E> {
    fn from(r: Raised) -> Self {
        match r {
            Raised::Event(e) => Next::Event(e),
            Raised::Ended(exit) => Next::CommandEnded(exit),
        }
    }
}

/// Leadership was lost and the command stopped.
#[derive(Debug, Clone, PartialEq)]
pub struct Lost {
    pub reason: String,
    pub exit: Option<ExitInfo>,
}

/// What [`Leadership::apply`] did that the caller must know.
#[derive(Debug, Default)]
pub struct Applied {
    /// The machine says exit (after shutting down).
    pub exit: bool,
    /// Once mode: elected under this token; the command waits for
    /// [`Leadership::start_command`].
    pub elected: Option<(i64, LeaderInfo)>,
    /// Leadership was lost (or given up) and the command stopped. In once mode the rest of the
    /// machine's actions were skipped: the caller leaves the election.
    pub lost: Option<Lost>,
    /// The command could not start and the exit policy says stop.
    pub ended: Option<ExitInfo>,
}

/// The loop's state: the role machine, the command, the exit policy.
pub struct Leadership<S: Source, R: Runner> {
    source: S,
    command: Option<R>,
    machine: Machine,
    policy: ExitPolicy,
    identity: Identity,
    /// Added to the command's environment (elect-run's `ELECTD_SLOT`).
    extra_env: Vec<(String, String)>,
    /// elect-run: the command runs once; being elected is reported instead of starting it,
    /// and losing leadership ends the run.
    once: bool,
    restart_at: Option<Instant>,
    restarts: u64,
    observers: Vec<Box<dyn Observer>>,
    /// Without a command: the budgets handed to the app beside electd, which a stop waits out.
    app: Option<AppBudget>,
    /// The freeze watchdog's slot for this election: it learns the term to hand over should
    /// this process die (and, for a sidecar, until when the app may act).
    watchdog: Option<WatchdogHandle>,
}

/// The app beside a sidecar electd (no command): it acts as leader on the budgets `/role` hands
/// out (recorded in `claims`), and stops within `grace` once one runs out. Stopping it means
/// waiting until the last budget handed out has run out plus the grace, so the next leader
/// starts only once the app has stopped.
#[derive(Debug, Clone)]
pub struct AppBudget {
    pub claims: crate::status::Claims,
    pub grace: Duration,
}

impl AppBudget {
    /// Wait until every budget handed out (also one recorded while waiting, by an answer built
    /// from a snapshot taken just before this replica stopped leading) has run out, plus the
    /// grace.
    async fn wait_out(&self) {
        let mut logged = false;
        while let Some(until) = self.claims.until() {
            let done = until + self.grace;
            if Instant::now() >= done {
                return;
            }
            if !std::mem::replace(&mut logged, true) {
                info!(
                    wait = ?done.saturating_duration_since(Instant::now()),
                    "waiting for the app's leadership budget and stop grace to run out before giving up the lease"
                );
            }
            sleep_until(done).await;
        }
    }
}

impl<S: Source, R: Runner> Leadership<S, R> {
    /// A loop that starts `command` (if any) whenever this replica becomes leader.
    pub fn new(source: S, command: Option<R>, policy: ExitPolicy, identity: Identity) -> Self {
        Leadership {
            source,
            command,
            machine: Machine::new(),
            policy,
            identity,
            extra_env: Vec::new(),
            once: false,
            restart_at: None,
            restarts: 0,
            observers: Vec::new(),
            app: None,
            watchdog: None,
        }
    }

    /// Tell `watchdog` the term while this replica leads, so it can hand over when this
    /// process dies.
    pub fn with_watchdog(mut self, watchdog: WatchdogHandle) -> Self {
        self.watchdog = Some(watchdog);
        self
    }

    /// [`Leadership::with_watchdog`], once the loop runs (elect-run starts its watchdog only
    /// once elected).
    pub fn set_watchdog(&mut self, watchdog: WatchdogHandle) {
        self.watchdog = Some(watchdog);
        self.arm_watchdog();
    }

    /// Without a command: stopping waits out the budgets handed to the app (see
    /// [`AppBudget`]).
    pub fn with_app(mut self, app: AppBudget) -> Self {
        self.app = Some(app);
        self
    }

    /// Start out of the queue: the replica must first be found eligible ([`Event::Eligible`]).
    pub fn ineligible(mut self) -> Self {
        self.machine = self.machine.ineligible();
        self
    }

    /// elect-run's mode: report election instead of starting the command (the caller may claim
    /// a slot first, then calls [`Leadership::start_command`]); losing leadership ends the run.
    pub fn once(mut self) -> Self {
        self.once = true;
        self
    }

    /// The command to run, when it was not known at the start (elect-run starts its watchdog
    /// only once elected).
    pub fn set_command(&mut self, command: R) {
        self.command = Some(command);
    }

    pub fn observe(mut self, observer: Box<dyn Observer>) -> Self {
        self.observers.push(observer);
        self
    }

    pub fn add_observer(&mut self, observer: Box<dyn Observer>) {
        self.observers.push(observer);
    }

    pub fn role(&self) -> &Role {
        &self.machine.role
    }

    pub fn source(&self) -> &S {
        &self.source
    }

    pub fn into_source(self) -> S {
        self.source
    }

    /// Forward a signal to the command's process group (or say there is none).
    pub fn forward(&self, signal: Signal) {
        match &self.command {
            Some(c) => c.forward(signal),
            None => {
                info!(signal = %signal, "signal received with no command to forward it to; ignored")
            }
        }
    }

    /// Wait for what happens next: a passed deadline first, then a change of the source, the
    /// command's exit, a due restart, or `input`.
    pub async fn next<X>(&mut self, input: impl Future<Output = X>) -> Next<X, S::Ended> {
        let mut input = std::pin::pin!(input);
        loop {
            let deadline = self.machine.role.deadline();
            let running = self.command.as_ref().is_some_and(|c| c.is_running());
            let restart_at = self.restart_at;
            let exited = async {
                match self.command.as_mut() {
                    Some(c) => c.wait().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                biased;
                _ = sleep_until(deadline.unwrap_or_else(Instant::now)), if deadline.is_some() => {
                    return Next::Event(self.observed_event());
                }
                changed = self.source.changed() => {
                    return match changed {
                        Ok(()) => Next::Event(self.observed_event()),
                        Err(e) => Next::SourceEnded(e),
                    };
                }
                (exit, ran) = exited, if running => {
                    self.notify_command(CommandChange::Exited { exit, ran });
                    if self.once {
                        info!(status = %exit, ran = ?ran, "command ended");
                    } else {
                        warn!(status = %exit, ran = ?ran, policy = ?self.policy.on_exit, "command exited while this replica leads");
                    }
                    if let Some(raised) = self.exited(exit) {
                        return raised.into();
                    }
                }
                _ = sleep_until(restart_at.unwrap_or_else(Instant::now)), if restart_at.is_some() => {
                    self.restart_at = None;
                    if let Some(token) = self.leading_token() {
                        self.restarts += 1;
                        info!(restarts = self.restarts, "restarting the command");
                        self.notify_command(CommandChange::Restarting { restarts: self.restarts });
                        if let Some(raised) = self.start(token) {
                            return raised.into();
                        }
                    }
                }
                x = &mut input => return Next::Input(x),
            }
        }
    }

    /// Run `event` through the role machine and carry out its actions in order, then whatever
    /// they raise.
    pub async fn apply(&mut self, event: Event) -> Applied {
        let mut applied = Applied::default();
        let mut queue = VecDeque::from([event]);
        while let Some(event) = queue.pop_front() {
            let now = Instant::now();
            let (next, actions) = self.machine.step(&event, now);
            let from = std::mem::replace(&mut self.machine, next).role;
            log_step(&from, &self.machine.role, &event);
            let step = Step {
                from: &from,
                to: &self.machine.role,
                event: &event,
                now,
            };
            for o in &mut self.observers {
                o.stepped(&step);
            }
            if !self.machine.role.leads() {
                self.restart_at = None;
            }
            self.arm_watchdog();
            for action in actions {
                match action {
                    Action::StartChild { token } => {
                        let leader = self
                            .machine
                            .role
                            .leader()
                            .cloned()
                            .expect("invariant: a leading role knows its leader");
                        self.policy = self.policy.step(policy::Event::Elected, now).0;
                        self.restarts = 0;
                        if self.once {
                            info!(token, key = %leader.key, "elected");
                            applied.elected = Some((token, leader));
                        } else {
                            match self.start(token) {
                                Some(Raised::Event(e)) => queue.push_back(e),
                                Some(Raised::Ended(exit)) => applied.ended = Some(exit),
                                None => {}
                            }
                        }
                    }
                    Action::StopChild | Action::KillChild => {
                        self.restart_at = None;
                        let urgent = action == Action::KillChild;
                        let exit = match (self.command.as_mut(), &self.app) {
                            (Some(c), _) if urgent => c.kill().await,
                            (Some(c), _) => c.stop().await,
                            // Taken away: the key is gone, waiting would hold up nothing (the
                            // app heard of it when the role was published).
                            (None, Some(_)) if urgent => None,
                            (None, Some(app)) => {
                                app.wait_out().await;
                                None
                            }
                            (None, None) => None,
                        };
                        self.notify_command(CommandChange::Stopped { exit });
                        applied.lost = Some(Lost {
                            reason: lost_reason(&event),
                            exit,
                        });
                        if self.once {
                            return applied;
                        }
                    }
                    Action::Release(after) => self.source.release(after).await,
                    Action::ResumeElection => self.source.resume().await,
                    Action::Exit => applied.exit = true,
                }
            }
            if applied.exit {
                return applied;
            }
        }
        applied
    }

    /// Once mode: start the command under `token`, with `extra` added to its environment.
    /// When it cannot be started: the code a shell would give, and why.
    pub fn start_command(
        &mut self,
        token: i64,
        extra: Vec<(String, String)>,
    ) -> Result<u32, (i32, String)> {
        self.extra_env = extra;
        let env = self.env(token);
        let Some(command) = self.command.as_mut() else {
            return Err((exit::CANNOT_EXECUTE, "no command to run".into()));
        };
        match command.start(&env) {
            Ok(pid) => {
                info!(pid, token, "command started");
                self.arm_watchdog();
                self.notify_command(CommandChange::Started { pid, restarts: 0 });
                Ok(pid)
            }
            Err(e) => Err((spawn_code(&e), e.to_string())),
        }
    }

    /// Stop the command if it runs (the source ended under it).
    pub async fn stop_command(&mut self) -> Option<ExitInfo> {
        let exit = self.command.as_mut()?.stop().await;
        self.notify_command(CommandChange::Stopped { exit });
        exit
    }

    fn observed_event(&self) -> Event {
        Event::Observed(Box::new(self.source.observed()))
    }

    fn leading_token(&self) -> Option<i64> {
        match &self.machine.role {
            Role::Leader { token, .. } | Role::Suspect { token, .. } => Some(*token),
            _ => None,
        }
    }

    fn env(&self, token: i64) -> Vec<(String, String)> {
        let leader = self
            .machine
            .role
            .leader()
            .cloned()
            .expect("invariant: the command starts only while leading");
        command_env(&self.identity, &leader, token, &self.extra_env)
    }

    /// Start the command under `token`; a failure is decided by the exit policy at once.
    fn start(&mut self, token: i64) -> Option<Raised> {
        let env = self.env(token);
        let command = self.command.as_mut()?;
        match command.start(&env) {
            Ok(pid) => {
                info!(pid, token, "child started");
                self.arm_watchdog();
                let restarts = self.restarts;
                self.notify_command(CommandChange::Started { pid, restarts });
                None
            }
            Err(e) => {
                error!(error = %e, "cannot start the command");
                let exit = ExitInfo {
                    code: spawn_code(&e),
                    signal: None,
                };
                self.notify_command(CommandChange::StartFailed { exit });
                self.exited(exit)
            }
        }
    }

    /// The exit policy's decision on an exit while leading, as what the caller must handle
    /// (`None`: nothing now, perhaps a restart later).
    fn exited(&mut self, exit: ExitInfo) -> Option<Raised> {
        if !self.machine.role.leads() {
            return None;
        }
        let now = Instant::now();
        let (policy, decision) = self
            .policy
            .step(policy::Event::Exited { code: exit.code }, now);
        self.policy = policy;
        match decision.expect("invariant: an exit yields a decision") {
            Decision::Restart { after } => {
                info!(delay = ?after, "command will be restarted");
                self.restart_at = Some(now + after);
                None
            }
            Decision::Resign { rejoin_after } => {
                if self.policy.on_exit == crate::config::OnExit::Restart {
                    warn!(
                        exits = policy::RESTART_LIMIT,
                        window = ?policy::WINDOW,
                        "child keeps failing; resigning so another replica can try"
                    );
                }
                info!(rejoin_in = ?rejoin_after, "resigning; rejoining the election after a delay");
                Some(Raised::Event(Event::Resign { rejoin_after }))
            }
            Decision::Exit { .. } => Some(Raised::Ended(exit)),
        }
    }

    /// Keep the watchdog in step with the lease: the term to hand over while leading, the
    /// command's kill deadline (or, without a command, when the app must have stopped).
    fn arm_watchdog(&mut self) {
        let leads = self.machine.role.leads();
        if let Some(w) = &self.watchdog {
            w.lead(if leads { self.source.handover() } else { None });
            if self.command.is_none() {
                match (leads, self.source.kill_deadline()) {
                    (true, Some(at)) => w.arm(None, at, Vec::new()),
                    _ => w.disarm(),
                }
            }
        }
        if !leads {
            return;
        }
        if let (Some(c), Some(at)) = (self.command.as_mut(), self.source.kill_deadline()) {
            c.set_kill_deadline(at);
        }
    }

    fn notify_command(&mut self, change: CommandChange) {
        for o in &mut self.observers {
            o.command(&change);
        }
    }
}

/// The code a shell gives a command it cannot run: 127 not found, 126 otherwise.
fn spawn_code(e: &SupervisorError) -> i32 {
    match e {
        SupervisorError::Spawn { source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
            exit::NOT_FOUND
        }
        _ => exit::CANNOT_EXECUTE,
    }
}

/// One info line per role change (and per change of leader). A leader's loss is named by its
/// reason (a passed deadline is not an election).
fn log_step(from: &Role, to: &Role, event: &Event) {
    let token = to.leader().map(|l| l.create_revision);
    let leader = to.leader().map(|l| l.id.as_str());
    if from.kind() != to.kind() {
        let event = if from.leads() && !to.leads() {
            lost_reason(event)
        } else {
            event_name(event).to_string()
        };
        info!(from = %from.kind(), to = %to.kind(), token, leader, event, "role changed");
    } else if token != from.leader().map(|l| l.create_revision) && token.is_some() {
        info!(role = %to.kind(), token, leader, "leader changed");
    }
}

fn event_name(e: &Event) -> &'static str {
    match e {
        Event::Observed(o) => match (&o.position, o.reachable) {
            (_, false) => "etcd unreachable",
            (Position::Leading { .. }, _) => "elected",
            (Position::Guarded { .. }, _) => "start guard",
            (Position::Waiting { .. }, _) => "election read",
            (Position::Joining, _) => "session lost",
            (Position::Observing { .. }, _) => "observing",
            (Position::Paused, _) => "paused",
            (Position::Stopped, _) => "stopped",
        },
        Event::Resign { .. } => "resign",
        Event::Pause => "pause",
        Event::Resume => "resume",
        Event::Ineligible => "not eligible",
        Event::Eligible => "eligible",
        Event::Shutdown => "shutdown",
    }
}

/// Why the command was stopped, in words.
fn lost_reason(event: &Event) -> String {
    match event {
        Event::Observed(o) => match (&o.position, o.reachable) {
            (Position::Leading { .. }, _) if o.handoff.is_some() => format!(
                "handing leadership to {}",
                o.handoff.as_deref().unwrap_or_default()
            ),
            (Position::Waiting { leader: Some(l) }, _) => format!("{} leads now", l.id),
            (_, false) => {
                "no keepalive succeeded within the leader budget; etcd unreachable".into()
            }
            (Position::Leading { .. }, true) => "keepalive deadline passed".into(),
            _ => "the lease expired or was revoked at etcd".into(),
        },
        Event::Resign { .. } => "resigned".into(),
        Event::Pause => "paused".into(),
        Event::Resume => "resumed".into(),
        Event::Ineligible => "no longer eligible to lead".into(),
        Event::Eligible => "eligible".into(),
        Event::Shutdown => "shutting down".into(),
    }
}

#[cfg(test)]
mod tests;
