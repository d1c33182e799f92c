//! The daemon: listeners, the election, the supervisor, and the owner task — the only writer of
//! the role. The owner gathers what the leadership loop does not know about (signals, control
//! requests) and dispatches: everything else, from deadlines to the command's exits, is the
//! [`Leadership`] loop's. A `Publisher` observer turns every step into the [`Status`] snapshot
//! the API reads, and into metrics.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use nix::sys::signal::Signal;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{error, info};

use crate::api::doc::ControlReply;
use crate::api::{self, ApiState, Control, Transport};
use crate::config::Config;
use crate::election::etcd::{EtcdBackend, EtcdError};
use crate::election::role::{Event, Role};
use crate::election::{DriverConfig, ElectionView, MemberInfo};
use crate::exit;
use crate::leadership::{
    CommandChange, ElectionSource, ExitPolicy, Identity, Leadership, Next, Observer, Step,
};
use crate::metrics::Metrics;
use crate::status::{ChildStatus, Status};
use crate::supervisor::{ChildSpec, Supervisor, watchdog::Watchdog};

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Etcd(#[from] EtcdError),
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
    let backend = EtcdBackend::connect_and_probe(&config).await?;
    // Listeners first, so a bad address fails before we campaign.
    let listeners = Listeners::bind(&config).await?;
    let source = ElectionSource::start(
        &backend,
        DriverConfig {
            election: config.election.clone(),
            member: MemberInfo::new(&config.id, listeners.http_addr()),
            timing,
        },
        Arc::new(metrics.clone()),
    );
    let (status_tx, status_rx) = watch::channel(Status::new(
        &config.id,
        &config.election,
        !command.is_empty(),
    ));
    let (control_tx, control_rx) = mpsc::channel(8);
    let api = listeners.serve(
        ApiState {
            status: status_rx,
            control: control_tx,
            metrics: metrics.clone(),
            members: Some(backend.member_source(
                &config.election,
                timing.request_timeout.max(Duration::from_secs(2)),
            )),
            allow: api::socket::AllowList {
                uids: config.control_uids.clone(),
                gids: config.control_gids.clone(),
            },
        },
        api::serve::Limits {
            read_header_timeout: config.read_header_timeout,
            max_connections: api::serve::MAX_CONNECTIONS,
        },
    );

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
    let publisher = Publisher {
        status: status_tx,
        metrics,
        view: source.view(),
    };
    let identity = Identity {
        id: config.id.clone(),
        election: config.election.clone(),
    };
    let lead = Leadership::new(
        source,
        supervisor,
        ExitPolicy::new(config.on_exit),
        identity,
    )
    .observe(Box::new(publisher));
    let mut owner = Owner {
        lead,
        exit_code: 0,
        driver_failed: false,
    };
    let result = owner.run(control_rx).await;

    // Stop order: the command is already stopped and the lease released; now the API.
    api.stop().await;
    let driver_result = owner.lead.into_source().shutdown().await;
    let code = result?;
    driver_result?;
    Ok(code)
}

/// The API's listeners, bound before the campaign starts.
struct Listeners {
    http: Option<tokio::net::TcpListener>,
    socket: Option<(tokio::net::UnixListener, api::socket::SocketGuard)>,
}

impl Listeners {
    async fn bind(config: &Config) -> Result<Listeners, DaemonError> {
        let http = match config.http {
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
        Ok(Listeners { http, socket })
    }

    /// The HTTP API's address, published in the member info.
    fn http_addr(&self) -> Option<String> {
        self.http
            .as_ref()
            .and_then(|l| l.local_addr().ok())
            .map(|a| a.to_string())
    }

    /// Serve one router per listener until [`Api::stop`].
    fn serve(self, state: ApiState, limits: api::serve::Limits) -> Api {
        let (stop_tx, stop_rx) = watch::channel(false);
        let stopped = |mut stop: watch::Receiver<bool>| async move {
            let _ = stop.wait_for(|s| *s).await;
        };
        let mut servers = Vec::new();
        if let Some(listener) = self.http {
            info!(addr = ?listener.local_addr().ok(), "HTTP API listening");
            let app = api::router(state.clone(), Transport::Tcp);
            let stop = stopped(stop_rx.clone());
            servers.push(tokio::spawn(api::serve::serve(listener, app, limits, stop)));
        }
        let mut guard = None;
        if let Some((listener, g)) = self.socket {
            info!(path = ?listener.local_addr().ok(), "socket API listening");
            let app = api::router(state, Transport::Unix);
            let stop = stopped(stop_rx.clone());
            servers.push(tokio::spawn(api::serve::serve(listener, app, limits, stop)));
            guard = Some(g);
        }
        Api {
            stop: stop_tx,
            servers,
            _socket: guard,
        }
    }
}

/// The running API servers; the socket file is removed when this is dropped.
struct Api {
    stop: watch::Sender<bool>,
    servers: Vec<tokio::task::JoinHandle<()>>,
    _socket: Option<api::socket::SocketGuard>,
}

impl Api {
    /// Stop accepting, let in-flight requests finish (bounded), remove the socket file.
    async fn stop(self) {
        let _ = self.stop.send(true);
        for s in self.servers {
            let _ = tokio::time::timeout(Duration::from_secs(2), s).await;
        }
    }
}

/// What the owner waits for besides the leadership loop's own events.
enum Input {
    Shutdown(&'static str),
    Forward(Signal),
    Control(Control),
    /// No API listener holds a control sender (HTTP off, no socket).
    ControlClosed,
}

struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
    usr1: tokio::signal::unix::Signal,
    usr2: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> Result<Signals, DaemonError> {
        let mk = |k| signal(k).map_err(DaemonError::Signals);
        Ok(Signals {
            term: mk(SignalKind::terminate())?,
            int: mk(SignalKind::interrupt())?,
            hup: mk(SignalKind::hangup())?,
            usr1: mk(SignalKind::user_defined1())?,
            usr2: mk(SignalKind::user_defined2())?,
        })
    }
}

/// Signals and control requests, whichever comes first.
async fn input(
    signals: &mut Signals,
    control: &mut mpsc::Receiver<Control>,
    control_open: bool,
) -> Input {
    tokio::select! {
        _ = signals.term.recv() => Input::Shutdown("SIGTERM"),
        _ = signals.int.recv() => Input::Shutdown("SIGINT"),
        _ = signals.hup.recv() => Input::Forward(Signal::SIGHUP),
        _ = signals.usr1.recv() => Input::Forward(Signal::SIGUSR1),
        _ = signals.usr2.recv() => Input::Forward(Signal::SIGUSR2),
        c = control.recv(), if control_open => match c {
            Some(c) => Input::Control(c),
            None => Input::ControlClosed,
        },
    }
}

struct Owner {
    lead: Leadership<ElectionSource, Supervisor>,
    exit_code: i32,
    driver_failed: bool,
}

impl Owner {
    async fn run(&mut self, mut control: mpsc::Receiver<Control>) -> Result<i32, DaemonError> {
        let mut signals = Signals::install()?;
        let mut control_open = true;
        loop {
            let next = self
                .lead
                .next(input(&mut signals, &mut control, control_open))
                .await;
            let mut reply = None;
            let event = match next {
                Next::Event(e) => e,
                Next::CommandEnded(exit) => {
                    self.exit_code = exit.code;
                    Event::Shutdown
                }
                Next::SourceEnded(e) => {
                    // The driver ended on its own: an unrecoverable etcd error.
                    error!(error = %e, "election driver stopped; shutting down");
                    self.driver_failed = true;
                    Event::Shutdown
                }
                Next::Input(Input::Shutdown(name)) => {
                    info!("{name} received; shutting down");
                    Event::Shutdown
                }
                Next::Input(Input::Forward(sig)) => {
                    self.lead.forward(sig);
                    continue;
                }
                Next::Input(Input::ControlClosed) => {
                    control_open = false;
                    continue;
                }
                Next::Input(Input::Control(c)) => match self.control_event(c) {
                    Some((event, r)) => {
                        reply = Some(r);
                        event
                    }
                    None => continue,
                },
            };
            let mut applied = self.lead.apply(event).await;
            if let Some(exit) = applied.ended {
                // The command could not start and the policy says stop.
                self.exit_code = exit.code;
                applied = self.lead.apply(Event::Shutdown).await;
            }
            // Replies go out once the actions they caused are done.
            if let Some((tx, doc)) = reply {
                let _ = tx.send(doc);
            }
            if applied.exit {
                return Ok(if self.driver_failed && self.exit_code == 0 {
                    exit::UNAVAILABLE
                } else {
                    self.exit_code
                });
            }
        }
    }

    /// Map an operator request to an event (with the reply to send once it is carried out),
    /// or answer it at once when it changes nothing.
    #[allow(clippy::type_complexity)]
    fn control_event(
        &mut self,
        c: Control,
    ) -> Option<(Event, (oneshot::Sender<ControlReply>, ControlReply))> {
        let role = self.lead.role();
        let kind = role.kind();
        let (tx, event, reply) = match c {
            Control::Resign(tx) if role.leads() => (
                tx,
                Some(Event::RESIGN),
                ControlReply {
                    resigned: Some(true),
                    previous_role: Some(kind),
                    ..ControlReply::default()
                },
            ),
            Control::Resign(tx) => (
                tx,
                None,
                ControlReply {
                    resigned: Some(false),
                    reason: Some("not the leader; nothing to resign".into()),
                    role: Some(kind),
                    ..ControlReply::default()
                },
            ),
            Control::Pause(tx) if matches!(role, Role::Paused | Role::Stopping) => (
                tx,
                None,
                ControlReply {
                    paused: Some(matches!(role, Role::Paused)),
                    reason: Some(format!("already {kind}")),
                    ..ControlReply::default()
                },
            ),
            Control::Pause(tx) => (
                tx,
                Some(Event::Pause),
                ControlReply {
                    paused: Some(true),
                    previous_role: Some(kind),
                    ..ControlReply::default()
                },
            ),
            Control::Resume(tx) if matches!(role, Role::Paused) => (
                tx,
                Some(Event::Resume),
                ControlReply {
                    resumed: Some(true),
                    ..ControlReply::default()
                },
            ),
            Control::Resume(tx) => (
                tx,
                None,
                ControlReply {
                    resumed: Some(false),
                    reason: Some("not paused".into()),
                    role: Some(kind),
                    ..ControlReply::default()
                },
            ),
        };
        match event {
            Some(ev) => Some((ev, (tx, reply))),
            None => {
                let _ = tx.send(reply);
                None
            }
        }
    }
}

/// Publishes every step as the [`Status`] snapshot the API reads, and as metrics.
struct Publisher {
    status: watch::Sender<Status>,
    metrics: Metrics,
    view: watch::Receiver<ElectionView>,
}

impl Publisher {
    fn update_child(&self, f: impl FnOnce(&mut ChildStatus)) {
        self.status.send_modify(|s| {
            if let Some(c) = s.child.as_mut() {
                f(c);
            }
            s.version += 1;
        });
    }

    fn publish(&self, role: &Role, role_changed: bool) {
        let view = self.view.borrow();
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
            s.role = role.clone();
            s.reachable = reachable;
            s.last_contact = last_contact;
            if changed {
                s.version += 1;
            }
            changed
        });
    }
}

impl Observer for Publisher {
    fn stepped(&mut self, step: &Step<'_>) {
        let (from, to) = (step.from.kind(), step.to.kind());
        if let Role::Suspect { since, .. } = step.from
            && !matches!(step.to, Role::Suspect { .. })
        {
            self.metrics
                .suspect_seconds
                .inc_by(step.now.saturating_duration_since(*since).as_secs_f64());
        }
        if from != to {
            self.metrics
                .transitions
                .with_label_values(&[from.as_str(), to.as_str()])
                .inc();
            self.metrics.set_role(to);
        }
        if let Event::Observed(o) = step.event {
            self.metrics.etcd_reachable.set(o.reachable as i64);
        }
        self.metrics
            .fencing_token
            .set(step.to.leader().map_or(0, |l| l.create_revision));
        self.publish(step.to, from != to);
    }

    fn command(&mut self, change: &CommandChange) {
        let ended = |exit: &crate::supervisor::ExitInfo, reason: &str| {
            self.metrics.child_exits.with_label_values(&[reason]).inc();
            self.metrics.child_running.set(0);
            let exit = *exit;
            self.update_child(|c| {
                c.running = false;
                c.pid = None;
                c.last_exit = Some(exit);
            });
        };
        match change {
            CommandChange::Restarting { .. } => self.metrics.child_restarts.inc(),
            CommandChange::Started { pid, restarts } => {
                self.metrics.child_running.set(1);
                let (pid, restarts) = (*pid, *restarts);
                self.update_child(|c| {
                    c.running = true;
                    c.pid = Some(pid);
                    c.restarts = restarts;
                });
            }
            CommandChange::StartFailed { exit } => ended(exit, "failed"),
            CommandChange::Exited { exit, .. } => {
                ended(exit, if exit.success() { "exited" } else { "failed" })
            }
            CommandChange::Stopped { exit: Some(exit) } => ended(exit, "stopped"),
            CommandChange::Stopped { exit: None } => {}
        }
    }
}
