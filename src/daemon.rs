//! The daemon's owner task: the only writer of the role. It turns the election driver's view,
//! operator commands, signals and child exits into [`Event`]s, runs the pure state machine and
//! carries out the resulting actions in order (stop the child before giving up the lease,
//! always), then publishes a [`Status`] snapshot for the API.

use std::collections::VecDeque;
use std::time::{Duration, SystemTime};

use nix::sys::signal::Signal;
use serde_json::json;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::{mpsc, watch};
use tokio::time::{Instant, sleep_until};
use tracing::{error, info, warn};

use crate::api::{self, ApiState, Control, Transport};
use crate::config::{Config, OnExit, Timing};
use crate::election::role::{Action, Event, Machine, Observed, Role};
use crate::election::{
    Driver, DriverConfig, DriverHandle, ElectionView, MemberInfo, Position, etcd,
};
use crate::exit;
use crate::metrics::Metrics;
use crate::status::Status;
use crate::supervisor::{ChildSpec, ExitInfo, Supervisor, watchdog::Watchdog};

/// Restart policy for a command that exits on its own while we lead.
const RESTART_FIRST_DELAY: Duration = Duration::from_millis(200);
const RESTART_MAX_DELAY: Duration = Duration::from_secs(10);
/// This many exits within [`RESTART_WINDOW`] make the replica resign.
const RESTART_LIMIT: usize = 5;
const RESTART_WINDOW: Duration = Duration::from_secs(60);
/// After resigning because its command exited, a replica stays out of the election this long
/// before it rejoins, doubling for each such resignation within [`RESTART_WINDOW`] of the last:
/// a command that fails everywhere must not spin leadership around (or, alone, re-elect itself
/// in a tight loop).
const REJOIN_FIRST_DELAY: Duration = Duration::from_secs(1);
const REJOIN_MAX_DELAY: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Etcd(#[from] etcd::EtcdError),
    #[error("cannot listen on HTTP address {addr}: {source}")]
    Http {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Socket(#[from] api::socket::SocketError),
    #[error("cannot start the freeze watchdog: {0}")]
    Watchdog(#[source] std::io::Error),
    #[error("cannot install signal handlers: {0}")]
    Signals(#[source] std::io::Error),
}

impl DaemonError {
    /// What to check, when the error says.
    pub fn hint(&self) -> Option<&'static str> {
        match self {
            DaemonError::Etcd(e) => e.hint(),
            _ => None,
        }
    }

    pub fn exit_code(&self) -> i32 {
        match self {
            DaemonError::Etcd(_) => exit::UNAVAILABLE,
            _ => exit::OSERR,
        }
    }
}

/// Run the daemon until SIGTERM/SIGINT; returns the process exit code.
pub async fn run(config: Config, command: Vec<String>) -> Result<i32, DaemonError> {
    let timing = config.timing();
    let metrics = Metrics::new();
    metrics.set_identity(&config.election, &config.id, config.ttl);
    let client = etcd::connect_and_probe(&config).await?;

    // Listeners first, so a bad address fails before we campaign.
    let http_listener = match config.http {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|source| DaemonError::Http { addr, source })?,
        ),
        None => None,
    };
    let socket = match &config.socket {
        Some(path) => Some(api::socket::bind(
            path,
            config.socket_mode,
            config.socket_group,
        )?),
        None => None,
    };

    let http_addr = http_listener
        .as_ref()
        .and_then(|l| l.local_addr().ok())
        .map(|a| a.to_string());
    let member = MemberInfo::new(&config.id, http_addr);
    let (driver, handle, view_rx) = Driver::new(
        client.clone(),
        DriverConfig {
            election: config.election.clone(),
            member,
            timing,
        },
    );
    let driver_task = tokio::spawn(driver.with_metrics(metrics.clone()).run());

    let (status_tx, status_rx) = watch::channel(Status::new(
        &config.id,
        &config.election,
        !command.is_empty(),
    ));
    let (control_tx, control_rx) = mpsc::channel(8);
    let api_state = ApiState {
        status: status_rx,
        control: control_tx,
        metrics: metrics.clone(),
        etcd: Some(api::EtcdSource {
            client: client.clone(),
            election: config.election.clone(),
            timeout: timing.request_timeout.max(Duration::from_secs(2)),
        }),
        allow: api::socket::AllowList {
            uids: config.control_uids.clone(),
            gids: config.control_gids.clone(),
        },
    };
    let (api_stop_tx, api_stop_rx) = watch::channel(false);
    let limits = api::serve::Limits {
        read_header_timeout: config.read_header_timeout,
        max_connections: api::serve::MAX_CONNECTIONS,
    };
    let stopped = |mut stop: watch::Receiver<bool>| async move {
        let _ = stop.wait_for(|s| *s).await;
    };
    let mut servers = Vec::new();
    if let Some(listener) = http_listener {
        info!(addr = ?listener.local_addr().ok(), "HTTP API listening");
        let app = api::router(api_state.clone(), Transport::Tcp);
        let stop = stopped(api_stop_rx.clone());
        servers.push(tokio::spawn(api::serve::serve(listener, app, limits, stop)));
    }
    let mut socket_guard = None;
    if let Some((listener, guard)) = socket {
        info!(path = ?config.socket, "socket API listening");
        let app = api::router(api_state.clone(), Transport::Unix);
        let stop = stopped(api_stop_rx.clone());
        servers.push(tokio::spawn(api::serve::serve(listener, app, limits, stop)));
        socket_guard = Some(guard);
    }
    drop(api_state);

    let supervisor = if command.is_empty() {
        None
    } else {
        let watchdog = Watchdog::spawn().map_err(DaemonError::Watchdog)?;
        Some(Supervisor::new(
            ChildSpec {
                argv: command,
                stop_signal: config.stop_signal,
                stop_grace: config.stop_grace,
            },
            Some(watchdog),
        ))
    };

    let owner = Owner {
        config,
        timing,
        machine: Machine::new(timing.leader_budget()),
        view_rx,
        driver: handle,
        status: status_tx,
        metrics,
        supervisor,
        restart_at: None,
        recent_exits: VecDeque::new(),
        restarts: 0,
        exit_resigns: 0,
        last_exit_resign: None,
        exit_code: 0,
        pending_replies: Vec::new(),
        pending_event: None,
    };
    let result = owner.run(control_rx).await;

    // Stop order: the child is already stopped and the lease released; now the API.
    let _ = api_stop_tx.send(true);
    for s in servers {
        let _ = tokio::time::timeout(Duration::from_secs(2), s).await;
    }
    drop(socket_guard);
    let driver_result = match tokio::time::timeout(Duration::from_secs(2), driver_task).await {
        Ok(Ok(r)) => r,
        _ => Ok(()),
    };
    let code = result?;
    driver_result?;
    Ok(code)
}

struct Owner {
    config: Config,
    timing: Timing,
    machine: Machine,
    view_rx: watch::Receiver<ElectionView>,
    driver: DriverHandle,
    status: watch::Sender<Status>,
    metrics: Metrics,
    supervisor: Option<Supervisor>,
    /// When the child is due to be restarted after exiting on its own.
    restart_at: Option<Instant>,
    recent_exits: VecDeque<Instant>,
    restarts: u64,
    /// Resignations because the command exited, in a row, and when the last one was.
    exit_resigns: u32,
    last_exit_resign: Option<Instant>,
    exit_code: i32,
    /// Control replies to send once the actions they caused are done.
    pending_replies: Vec<(
        tokio::sync::oneshot::Sender<serde_json::Value>,
        serde_json::Value,
    )>,
    /// An event raised while carrying out actions (a command that could not start).
    pending_event: Option<Event>,
}

fn observed(v: &ElectionView) -> Box<Observed> {
    Box::new(Observed {
        lease: v.lease,
        position: v.position.clone(),
        last_ok_sent: v.last_ok_sent,
        reachable: v.reachable,
    })
}

impl Owner {
    async fn run(mut self, mut control: mpsc::Receiver<Control>) -> Result<i32, DaemonError> {
        let mut term = signal(SignalKind::terminate()).map_err(DaemonError::Signals)?;
        let mut int = signal(SignalKind::interrupt()).map_err(DaemonError::Signals)?;
        let mut hup = signal(SignalKind::hangup()).map_err(DaemonError::Signals)?;
        let mut usr1 = signal(SignalKind::user_defined1()).map_err(DaemonError::Signals)?;
        let mut usr2 = signal(SignalKind::user_defined2()).map_err(DaemonError::Signals)?;
        let mut driver_failed = false;
        let mut control_open = true;

        loop {
            let deadline = self.machine.role.deadline();
            let child_running = self.supervisor.as_ref().is_some_and(|s| s.is_running());
            // Biased: a passed leadership deadline is handled before anything else (a child
            // exit or restart must never be acted on by a leader whose time is up).
            let event = tokio::select! {
                biased;
                _ = sleep_until(deadline.unwrap_or_else(Instant::now)), if deadline.is_some() => {
                    Event::Observed(observed(&self.view_rx.borrow()))
                }
                _ = term.recv() => { info!("SIGTERM received; shutting down"); Event::Shutdown }
                _ = int.recv() => { info!("SIGINT received; shutting down"); Event::Shutdown }
                _ = hup.recv() => { self.forward(Signal::SIGHUP); continue; }
                _ = usr1.recv() => { self.forward(Signal::SIGUSR1); continue; }
                _ = usr2.recv() => { self.forward(Signal::SIGUSR2); continue; }
                changed = self.view_rx.changed() => {
                    if changed.is_err() {
                        // The driver ended on its own: an unrecoverable etcd error.
                        error!("election driver stopped; shutting down");
                        driver_failed = true;
                        Event::Shutdown
                    } else {
                        let v = self.view_rx.borrow_and_update().clone();
                        self.note_view(&v);
                        Event::Observed(observed(&v))
                    }
                }
                exit = async { self.supervisor.as_mut().expect("invariant: guarded").wait().await }, if child_running => {
                    match self.child_exited(exit.0, exit.1) {
                        Some(ev) => ev,
                        None => continue,
                    }
                }
                _ = sleep_until(self.restart_at.unwrap_or_else(Instant::now)), if self.restart_at.is_some() => {
                    self.restart_at = None;
                    if let Some(token) = self.leading_token() {
                        self.restarts += 1;
                        self.metrics.child_restarts.inc();
                        info!(restarts = self.restarts, "restarting child");
                        self.start_child(token);
                    }
                    // A command that could not start raises its own event (the policy's).
                    match self.pending_event.take() {
                        Some(ev) => ev,
                        None => continue,
                    }
                }
                cmd = control.recv(), if control_open => match cmd {
                    Some(c) => match self.control_event(c) {
                        Some(ev) => ev,
                        None => continue,
                    },
                    // No API listener holds a sender (HTTP off, no socket).
                    None => {
                        control_open = false;
                        continue;
                    }
                },
            };
            let exit = self.apply(event).await;
            for (reply, doc) in self.pending_replies.drain(..) {
                let _ = reply.send(doc);
            }
            if exit {
                return Ok(if driver_failed && self.exit_code == 0 {
                    exit::UNAVAILABLE
                } else {
                    self.exit_code
                });
            }
        }
    }

    fn leading_token(&self) -> Option<i64> {
        match &self.machine.role {
            Role::Leader { token, .. } | Role::Suspect { token, .. } => Some(*token),
            _ => None,
        }
    }

    fn forward(&self, sig: Signal) {
        match &self.supervisor {
            Some(s) => s.forward(sig),
            None => {
                info!(signal = %sig, "signal received with no command to forward it to; ignored")
            }
        }
    }

    fn note_view(&mut self, v: &ElectionView) {
        self.metrics.etcd_reachable.set(v.reachable as i64);
        let seen = self.metrics.predecessor_wakeups.get();
        if v.wakeups > seen {
            self.metrics.predecessor_wakeups.inc_by(v.wakeups - seen);
        }
    }

    /// Map an operator request to an event, or answer it at once when it changes nothing.
    fn control_event(&mut self, c: Control) -> Option<Event> {
        let role = self.machine.role.kind();
        let (reply, event, doc) = match c {
            Control::Resign(r) if self.machine.role.leads() => (
                r,
                Some(Event::RESIGN),
                json!({"resigned": true, "previous_role": role}),
            ),
            Control::Resign(r) => (
                r,
                None,
                json!({"resigned": false, "reason": "not the leader; nothing to resign", "role": role}),
            ),
            Control::Pause(r) if matches!(self.machine.role, Role::Paused | Role::Stopping) => (
                r,
                None,
                json!({"paused": matches!(self.machine.role, Role::Paused), "reason": format!("already {role}")}),
            ),
            Control::Pause(r) => (
                r,
                Some(Event::Pause),
                json!({"paused": true, "previous_role": role}),
            ),
            Control::Resume(r) if matches!(self.machine.role, Role::Paused) => {
                (r, Some(Event::Resume), json!({"resumed": true}))
            }
            Control::Resume(r) => (
                r,
                None,
                json!({"resumed": false, "reason": "not paused", "role": role}),
            ),
        };
        match event {
            Some(ev) => {
                self.pending_replies.push((reply, doc));
                Some(ev)
            }
            None => {
                let _ = reply.send(doc);
                None
            }
        }
    }

    /// Decide what a child's own exit means under the `--on-exit` policy.
    fn child_exited(&mut self, exit: ExitInfo, ran: Duration) -> Option<Event> {
        let reason = if exit.success() { "exited" } else { "failed" };
        self.metrics.child_exits.with_label_values(&[reason]).inc();
        self.metrics.child_running.set(0);
        self.update_child(|c| {
            c.running = false;
            c.pid = None;
            c.last_exit = Some(exit);
        });
        warn!(status = %exit, ran = ?ran, policy = ?self.config.on_exit, "child exited while this replica leads");
        if !self.machine.role.leads() {
            return None;
        }
        match self.config.on_exit {
            OnExit::Exit => {
                self.exit_code = exit.code;
                Some(Event::Shutdown)
            }
            OnExit::Resign => Some(self.resign_for_exit()),
            OnExit::Restart => {
                let now = Instant::now();
                self.recent_exits.push_back(now);
                while self
                    .recent_exits
                    .front()
                    .is_some_and(|t| now.duration_since(*t) > RESTART_WINDOW)
                {
                    self.recent_exits.pop_front();
                }
                if self.recent_exits.len() >= RESTART_LIMIT {
                    warn!(
                        exits = self.recent_exits.len(),
                        window = ?RESTART_WINDOW,
                        "child keeps failing; resigning so another replica can try"
                    );
                    self.recent_exits.clear();
                    return Some(self.resign_for_exit());
                }
                let n = self.recent_exits.len() as u32;
                let delay =
                    (RESTART_FIRST_DELAY * 2u32.pow(n.saturating_sub(1))).min(RESTART_MAX_DELAY);
                info!(delay = ?delay, "child will be restarted");
                self.restart_at = Some(now + delay);
                None
            }
        }
    }

    /// Resign because the command exited; the rejoin waits a growing delay (see
    /// [`REJOIN_FIRST_DELAY`]).
    fn resign_for_exit(&mut self) -> Event {
        let now = Instant::now();
        let streak = match self.last_exit_resign {
            Some(t) if now.duration_since(t) < RESTART_WINDOW => self.exit_resigns + 1,
            _ => 1,
        };
        self.exit_resigns = streak;
        self.last_exit_resign = Some(now);
        let delay = (REJOIN_FIRST_DELAY * 2u32.pow(streak.min(16) - 1)).min(REJOIN_MAX_DELAY);
        info!(rejoin_in = ?delay, "resigning; rejoining the election after a delay");
        Event::Resign {
            rejoin_after: delay,
        }
    }

    fn update_child(&self, f: impl FnOnce(&mut crate::status::ChildStatus)) {
        self.status.send_modify(|s| {
            if let Some(c) = s.child.as_mut() {
                f(c);
            }
            s.version += 1;
        });
    }

    fn start_child(&mut self, token: i64) {
        let Some(sup) = self.supervisor.as_mut() else {
            return;
        };
        let leader_key = self
            .machine
            .role
            .leader()
            .map(|l| l.key.clone())
            .unwrap_or_default();
        let env = vec![
            ("ELECTD_ID".to_string(), self.config.id.clone()),
            ("ELECTD_ELECTION".to_string(), self.config.election.clone()),
            ("ELECTD_LEADER_KEY".to_string(), leader_key),
            ("ELECTD_FENCING_TOKEN".to_string(), token.to_string()),
        ];
        match sup.start(&env) {
            Ok(pid) => {
                info!(pid, token, "child started");
                if let Some(sent) = self.view_rx.borrow().last_ok_sent {
                    sup.set_kill_deadline(sent + self.timing.kill_budget());
                }
                self.metrics.child_running.set(1);
                self.update_child(|c| {
                    c.running = true;
                    c.pid = Some(pid);
                    c.restarts = self.restarts;
                });
            }
            Err(e) => {
                error!(error = %e, "cannot start the command");
                let exit = ExitInfo {
                    code: 127,
                    signal: None,
                };
                self.update_child(|c| c.last_exit = Some(exit));
                // Treated like an immediate exit: the policy decides (restart backs off, then
                // resigns).
                if let Some(ev) = self.child_exited(exit, Duration::ZERO) {
                    self.pending_event = Some(ev);
                }
            }
        }
    }

    /// Run one event through the machine and carry out its actions. Returns true on exit.
    async fn apply(&mut self, event: Event) -> bool {
        let mut next_event = Some(event);
        while let Some(event) = next_event.take() {
            let now = Instant::now();
            let old_kind = self.machine.role.kind();
            let (next, actions) = self.machine.step(&event, now);
            let new_kind = next.role.kind();
            let old_token = self.machine.role.leader().map(|l| l.create_revision);
            if let Role::Suspect { since, .. } = &self.machine.role
                && !matches!(next.role, Role::Suspect { .. })
            {
                self.metrics
                    .suspect_seconds
                    .inc_by(now.saturating_duration_since(*since).as_secs_f64());
            }
            self.machine = next;
            let token = self.machine.role.leader().map(|l| l.create_revision);
            let leader = self.machine.role.leader().map(|l| l.id.clone());
            if old_kind != new_kind {
                info!(from = %old_kind, to = %new_kind, token, leader, event = event_name(&event), "role changed");
                self.metrics
                    .transitions
                    .with_label_values(&[old_kind.as_str(), new_kind.as_str()])
                    .inc();
                self.metrics.set_role(new_kind);
            } else if token != old_token && token.is_some() {
                info!(role = %new_kind, token, leader, "leader changed");
            }
            if !self.machine.role.leads() {
                self.restart_at = None;
            }
            self.metrics
                .fencing_token
                .set(self.machine.role.leader().map_or(0, |l| l.create_revision));
            self.publish(old_kind != new_kind);

            // Keep the watchdog's kill deadline in step with the lease.
            if self.machine.role.leads()
                && let (Some(sup), Some(sent)) =
                    (self.supervisor.as_mut(), self.view_rx.borrow().last_ok_sent)
            {
                sup.set_kill_deadline(sent + self.timing.kill_budget());
            }

            let mut exit = false;
            for action in actions {
                match action {
                    Action::StartChild { token } => {
                        self.recent_exits.clear();
                        self.restarts = 0;
                        self.start_child(token);
                    }
                    Action::StopChild => {
                        self.restart_at = None;
                        if let Some(sup) = self.supervisor.as_mut()
                            && let Some(exit) = sup.stop().await
                        {
                            self.metrics
                                .child_exits
                                .with_label_values(&["stopped"])
                                .inc();
                            self.metrics.child_running.set(0);
                            self.update_child(|c| {
                                c.running = false;
                                c.pid = None;
                                c.last_exit = Some(exit);
                            });
                        }
                    }
                    Action::Release(after) => self.driver.release(after).await,
                    Action::ResumeElection => self.driver.resume().await,
                    Action::Exit => exit = true,
                }
            }
            if exit {
                return true;
            }
            next_event = self.pending_event.take();
        }
        false
    }

    fn publish(&self, role_changed: bool) {
        let view = self.view_rx.borrow();
        let role = self.machine.role.clone();
        let (reachable, last_contact) = (view.reachable, view.last_contact);
        drop(view);
        // Only what a watcher acts on bumps the version and wakes readers; deadlines and the
        // last contact time are refreshed silently (they are rendered at read time).
        self.status.send_if_modified(|s| {
            let changed = role_changed
                || s.role.kind() != role.kind()
                || s.role.leader() != role.leader()
                || s.reachable != reachable;
            if role_changed {
                s.since = SystemTime::now();
            }
            s.role = role;
            s.reachable = reachable;
            s.last_contact = last_contact;
            if changed {
                s.version += 1;
            }
            changed
        });
    }
}

fn event_name(e: &Event) -> &'static str {
    match e {
        Event::Observed(o) => match (&o.position, o.reachable) {
            (_, false) => "etcd unreachable",
            (Position::Leading { .. }, _) => "elected",
            (Position::Waiting { .. }, _) => "election read",
            (Position::Joining, _) => "session lost",
            (Position::Paused, _) => "paused",
            (Position::Stopped, _) => "stopped",
        },
        Event::Resign { .. } => "resign",
        Event::Pause => "pause",
        Event::Resume => "resume",
        Event::Shutdown => "shutdown",
    }
}
