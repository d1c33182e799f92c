//! The daemon: listeners, the election, the supervisor, and the owner task — the only writer of
//! the role. The owner gathers what the leadership loop does not know about (signals, control
//! requests) and dispatches: everything else, from deadlines to the command's exits, is the
//! [`Leadership`] loop's. A `Publisher` observer turns every step into the [`Status`] snapshot
//! the API reads, and into metrics.

mod eligibility;
mod listeners;
mod publisher;

use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::Signal;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{error, info};

use crate::api::doc::ControlReply;
use crate::api::{self, ApiState, Control};
use crate::config::Config;
use crate::election::candidacy::Policy;
use crate::election::etcd::{EtcdBackend, EtcdError};
use crate::election::role::{Event, Role};
use crate::election::{DriverConfig, MemberInfo};
use crate::exit;
use crate::health;
use crate::leadership::{AppBudget, ElectionSource, ExitPolicy, Identity, Leadership, Next};
use crate::metrics::Metrics;
use crate::status::Status;
use crate::supervisor::watchdog::{Watchdog, WatchdogHandle};
use crate::supervisor::{ChildSpec, Supervisor};
use eligibility::Eligibility;
use listeners::{Api, Listeners};
use publisher::Publisher;

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
    #[error("cannot listen on proxy address {addr}: {source}")]
    Proxy {
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

/// Raise the soft limit of open files to the hard one (at most 65536): each API connection is a
/// file, and the API keeps room for probes by accepting beyond its cap (see `api::serve`).
fn raise_open_files_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        let want = hard.min(65_536);
        if soft < want
            && let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, want, hard)
        {
            tracing::debug!(error = %e, "cannot raise the open files limit");
        }
    }
}

/// Run the daemon until SIGTERM/SIGINT; returns the process exit code.
pub async fn run(config: Config, command: Vec<String>) -> Result<i32, DaemonError> {
    raise_open_files_limit();
    crate::supervisor::tree::become_subreaper();
    // Orphans adopted as a subreaper (from health checks, say) are reaped even with no command.
    let reaper = tokio::spawn(async {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            crate::supervisor::tree::reap_adopted();
        }
    });
    let _reaper = crate::election::AbortOnDrop(reaper);
    let timing = config.timing();
    let metrics = Metrics::new();
    metrics.set_identity(&config.election, &config.id, config.ttl);
    let backend = EtcdBackend::connect_and_probe(&config).await?;
    // Listeners first, so a bad address fails before we campaign.
    let listeners = Listeners::bind(&config).await?;
    let eligibility = Eligibility::new(config.priority, config.health.is_some());
    let source = ElectionSource::start(
        &backend,
        DriverConfig {
            election: config.election.clone(),
            member: MemberInfo::new(&config.id, listeners.http_addr())
                .with_priority(config.priority)
                .with_advertise(config.advertise.clone()),
            timing,
            observe_first: !eligibility.eligible(),
            policy: Policy {
                priority: config.priority,
                takeover_delay: config.takeover_delay,
            },
            start_guard: config.start_guard,
        },
        Arc::new(metrics.clone()),
    );
    let mut status = Status::new(&config.id, &config.election, !command.is_empty());
    status.priority = config.priority;
    status.ineligible = eligibility.reason();
    metrics.eligible.set(eligibility.eligible() as i64);
    let (status_tx, status_rx) = watch::channel(status);
    let (control_tx, control_rx) = mpsc::channel(8);
    let claims = crate::status::Claims::default();
    let api = serve_api(
        listeners,
        &config,
        &backend,
        ApiState {
            status: status_rx,
            control: control_tx,
            metrics: metrics.clone(),
            members: None,
            allow: api::socket::AllowList {
                uids: config.control_uids.clone(),
                gids: config.control_gids.clone(),
            },
            ready: api::Ready {
                own: config.advertise.clone(),
                budget: timing.leader_budget(),
            },
            claims: claims.clone(),
        },
    );
    let sidecar = command.is_empty();
    // The watchdog holds the command's deadline, and hands the term over if electd dies; a
    // replica that never leads needs none.
    let watchdog = match config.priority > 0 || !sidecar {
        true => {
            Some(Watchdog::spawn(Some(&config.etcd_settings())).map_err(DaemonError::Watchdog)?)
        }
        false => None,
    };
    let supervisor = supervisor_for(&config, command, watchdog.clone());
    let publisher = Publisher {
        status: status_tx.clone(),
        metrics: metrics.clone(),
        view: source.view(),
    };
    let identity = Identity {
        id: config.id.clone(),
        election: config.election.clone(),
    };
    let health = config
        .health
        .clone()
        .map(|check| start_health(check, &identity, &metrics));
    let mut lead = Leadership::new(
        source,
        supervisor,
        ExitPolicy::new(config.on_exit),
        identity.clone(),
    )
    .observe(Box::new(publisher));
    if sidecar {
        lead = lead.with_app(AppBudget {
            claims,
            grace: config.stop_grace,
        });
    }
    if let Some(w) = watchdog {
        lead = lead.with_watchdog(w);
    }
    if !eligibility.eligible() {
        lead = lead.ineligible();
    }
    let hooks = config.on_role_change.clone().map(|cmd| {
        let (observer, task) = crate::hooks::start(
            cmd,
            config.on_role_change_timeout,
            identity,
            metrics.clone(),
        );
        lead.add_observer(Box::new(observer));
        task
    });
    let mut owner = Owner {
        lead,
        exit_code: 0,
        driver_failed: false,
        eligibility,
        health,
        status: status_tx,
        metrics,
        switchover_within: timing.ttl * 2,
    };
    let result = owner.run(control_rx).await;

    // Stop order: the command is already stopped and the lease released; now the API and the
    // proxy. The hooks already queued run to their end (each bounded by its timeout).
    api.stop().await;
    let driver_result = owner.lead.into_source().shutdown().await;
    if let Some(task) = hooks {
        let limit = config.on_role_change_timeout * 2 + Duration::from_secs(1);
        let _ = tokio::time::timeout(limit, task).await;
    }
    let code = result?;
    driver_result?;
    Ok(code)
}

/// Serve the API (with `/members` read through `backend`) and the proxy until [`Api::stop`].
fn serve_api(listeners: Listeners, config: &Config, backend: &EtcdBackend, state: ApiState) -> Api {
    let timing = config.timing();
    let state = ApiState {
        members: Some(backend.member_source(
            &config.election,
            timing.request_timeout.max(Duration::from_secs(2)),
        )),
        ..state
    };
    listeners.serve(
        state,
        api::serve::Limits {
            read_header_timeout: config.read_header_timeout,
            max_connections: api::serve::MAX_CONNECTIONS,
        },
        crate::proxy::ProxyConfig {
            own: config.advertise.clone(),
            wait: config.proxy_wait,
            budget: timing.leader_budget(),
        },
    )
}

/// The supervisor of the wrapped command, with its freeze watchdog; none without a command.
fn supervisor_for(
    config: &Config,
    command: Vec<String>,
    watchdog: Option<WatchdogHandle>,
) -> Option<Supervisor> {
    if command.is_empty() {
        return None;
    }
    Some(Supervisor::new(
        ChildSpec {
            argv: command,
            stop_signal: config.stop_signal,
            stop_grace: config.stop_grace,
        },
        watchdog,
    ))
}

/// Run the health check, reporting changes on a bounded channel and every check to metrics.
fn start_health(
    check: health::HealthCheck,
    identity: &Identity,
    metrics: &Metrics,
) -> mpsc::Receiver<health::Change> {
    let (tx, rx) = mpsc::channel(4);
    let env = identity.env();
    let m = metrics.clone();
    health::spawn(check, env, tx, move |outcome| {
        let result = match outcome {
            health::Outcome::Pass => "pass",
            health::Outcome::Fail(_) => "fail",
        };
        m.health_checks.with_label_values(&[result]).inc();
    });
    rx
}

/// What the owner waits for besides the leadership loop's own events.
enum Input {
    Shutdown(&'static str),
    Forward(Signal),
    Control(Control),
    /// No API listener holds a control sender (HTTP off, no socket).
    ControlClosed,
    Health(health::Change),
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

/// Signals, control requests and health changes, whichever comes first.
async fn input(
    signals: &mut Signals,
    control: &mut mpsc::Receiver<Control>,
    control_open: bool,
    health: Option<&mut mpsc::Receiver<health::Change>>,
) -> Input {
    let health = async {
        match health {
            Some(rx) => rx.recv().await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        Some(change) = health => Input::Health(change),
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
    eligibility: Eligibility,
    health: Option<mpsc::Receiver<health::Change>>,
    status: watch::Sender<Status>,
    metrics: Metrics,
    /// How long a switchover may take before the queue's order decides again.
    switchover_within: Duration,
}

impl Owner {
    async fn run(&mut self, mut control: mpsc::Receiver<Control>) -> Result<i32, DaemonError> {
        let mut signals = Signals::install()?;
        let mut control_open = true;
        loop {
            let inputs = input(
                &mut signals,
                &mut control,
                control_open,
                self.health.as_mut(),
            );
            let next = self.lead.next(inputs).await;
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
                Next::Input(Input::Control(c)) => match self.control_event(c).await {
                    Some((event, r)) => {
                        reply = Some(r);
                        event
                    }
                    None => continue,
                },
                Next::Input(Input::Health(change)) => match self.health_changed(&change) {
                    Some(event) => event,
                    None => continue,
                },
            };
            // etcd's history rewound (or mended): leave (or rejoin) the queue right after.
            let refusal = match &event {
                Event::Observed(o) => self.refusal_changed(o.refusal.as_deref()),
                _ => None,
            };
            let mut applied = self.lead.apply(event).await;
            if let Some(then) = refusal
                && !applied.exit
            {
                applied = self.lead.apply(then).await;
            }
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

    /// The driver's refusal to lead (etcd's history rewound) as seen in a view: publish the
    /// eligibility; the event for the role machine when it changed.
    fn refusal_changed(&mut self, refusal: Option<&str>) -> Option<Event> {
        let (next, event) = self.eligibility.refusal(refusal);
        if next == self.eligibility {
            return None;
        }
        self.eligibility = next;
        self.metrics.history_rewound.set(refusal.is_some() as i64);
        self.publish_eligibility();
        event
    }

    fn publish_eligibility(&self) {
        self.metrics
            .eligible
            .set(self.eligibility.eligible() as i64);
        let reason = self.eligibility.reason();
        self.status.send_if_modified(|s| {
            let changed = s.ineligible != reason;
            if changed {
                s.ineligible = reason;
                s.version += 1;
            }
            changed
        });
    }

    /// A change of health: publish the eligibility; the event for the role machine when it
    /// changed.
    fn health_changed(&mut self, change: &health::Change) -> Option<Event> {
        let to = match change {
            health::Change::Healthy => "healthy",
            health::Change::Unhealthy(_) => "unhealthy",
        };
        self.metrics
            .health_transitions
            .with_label_values(&[to])
            .inc();
        let (next, event) = self.eligibility.health(change);
        self.eligibility = next;
        self.publish_eligibility();
        event
    }

    /// Map an operator request to an event (with the reply to send once it is carried out),
    /// or answer it at once when it changes nothing.
    #[allow(clippy::type_complexity)]
    async fn control_event(
        &mut self,
        c: Control,
    ) -> Option<(Event, (oneshot::Sender<ControlReply>, ControlReply))> {
        let role = self.lead.role();
        let kind = role.kind();
        let leads = role.leads();
        let (tx, event, reply) = match c {
            Control::Resign {
                to: Some(to),
                reply,
            } if leads => match self.lead.source().hand_off(&to).await {
                Ok(_) => (
                    reply,
                    Some(Event::RESIGN),
                    ControlReply {
                        resigned: Some(true),
                        previous_role: Some(kind),
                        to: Some(to),
                        within_ms: Some(self.switchover_within.as_millis() as u64),
                        ..ControlReply::default()
                    },
                ),
                Err(why) => (
                    reply,
                    None,
                    ControlReply {
                        resigned: Some(false),
                        reason: Some(why),
                        role: Some(kind),
                        ..ControlReply::default()
                    },
                ),
            },
            Control::Resign { reply: tx, .. } if leads => (
                tx,
                Some(Event::RESIGN),
                ControlReply {
                    resigned: Some(true),
                    previous_role: Some(kind),
                    ..ControlReply::default()
                },
            ),
            Control::Resign { reply: tx, .. } => (
                tx,
                None,
                ControlReply {
                    resigned: Some(false),
                    reason: Some("not the leader; nothing to resign".into()),
                    role: Some(kind),
                    ..ControlReply::default()
                },
            ),
            Control::Pause(tx) if matches!(self.lead.role(), Role::Paused | Role::Stopping) => (
                tx,
                None,
                ControlReply {
                    paused: Some(matches!(self.lead.role(), Role::Paused)),
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
            Control::Resume(tx) if matches!(self.lead.role(), Role::Paused) => (
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
