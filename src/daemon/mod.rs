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
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tracing::{error, info};

use crate::api::doc::ControlReply;
use crate::api::{self, ApiState, Control, ElectionApi};
use crate::config::Config;
use crate::config::elections::Election;
use crate::election::candidacy::Policy;
use crate::election::etcd::{EtcdBackend, EtcdError, HostHandle, StateError, StateFile};
use crate::election::role::{Event, Role};
use crate::election::{DriverConfig, MemberInfo};
use crate::exit;
use crate::health;
use crate::leadership::{AppBudget, ElectionSource, ExitPolicy, Identity, Leadership, Next};
use crate::metrics::{ElectionMetrics, Metrics};
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
    #[error(transparent)]
    State(#[from] StateError),
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
            DaemonError::State(_) => exit::CONFIG,
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
    let elections = config.elections(command);
    let metrics = Metrics::new();
    for e in &elections {
        metrics.set_identity(&e.name, &config.id, config.ttl);
    }
    // The state file first: a bad one stops electd before it touches etcd.
    let state = remembered(&config)?;
    let backend = EtcdBackend::connect_and_probe(&config).await?;
    if let Some((file, revision)) = state {
        backend.remember(file, revision);
    }
    // Listeners first, so a bad address fails before we campaign.
    let listeners = Listeners::bind(&config).await?;
    // The watchdog holds every command's deadline, and hands the terms over if electd dies; a
    // replica that never leads needs none.
    let watchdog = match elections
        .iter()
        .any(|e| e.priority > 0 || !e.command.is_empty())
    {
        true => {
            Some(Watchdog::spawn(Some(&config.etcd_settings())).map_err(DaemonError::Watchdog)?)
        }
        false => None,
    };
    // One lease for every election, kept alive as the most demanding one needs (the shortest
    // budget bounds how long a keepalive may wait for its reply).
    let host_timing = elections
        .iter()
        .map(|e| e.timing(config.ttl))
        .min_by_key(|t| t.leader_budget())
        .expect("invariant: at least one election");
    let names: Vec<String> = elections.iter().map(|e| e.name.clone()).collect();
    let host = backend.host(host_timing, Arc::new(metrics.clone()), names.clone());
    let (inputs, _) = broadcast::channel::<Input>(16);
    // Balancing: one board for every election of this process, and the set it serves in each
    // candidate key (the replicas that serve the same set share its leaderships).
    let board = config.balance.then(|| {
        Arc::new(crate::election::balance::Board::new(
            &config.id,
            crate::election::balance::serves(&names),
            elections.first().map_or(1, |e| e.priority),
            config.balance_delay,
        ))
    });
    let mut runs = Vec::new();
    let mut apis = Vec::new();
    for (i, e) in elections.into_iter().enumerate() {
        let (run, api) = ElectionRun::start(
            &config,
            e,
            Shared {
                backend: &backend,
                host: &host,
                http: listeners.http_addr(),
                watchdog: watchdog.as_ref().map(|w| w.slot(i as u32)),
                metrics: &metrics,
                board: board.clone(),
                serves: board
                    .as_ref()
                    .map(|_| crate::election::balance::serves(&names)),
            },
            inputs.subscribe(),
        );
        runs.push(run);
        apis.push(api);
    }
    drop(watchdog);
    let api = serve_api(
        listeners,
        &config,
        ApiState {
            elections: apis,
            metrics: metrics.clone(),
            allow: api::socket::AllowList {
                uids: config.control_uids.clone(),
                gids: config.control_gids.clone(),
            },
        },
    );
    let identity = Identity {
        id: config.id.clone(),
        election: config.election.clone(),
    };
    let health = config
        .health
        .clone()
        .map(|check| start_health(check, &identity, &metrics));
    let (code, runs) = run_elections(runs, inputs, health, &metrics).await;

    // Stop order: the commands are already stopped and the keys released; now the API and the
    // proxy, then the lease (revoked: anything still under it goes). The hooks already queued
    // run to their end (each bounded by its timeout).
    api.stop().await;
    let mut driver_result = Ok(());
    let mut hooks = Vec::new();
    for run in runs {
        let r = run.owner.lead.into_source().shutdown().await;
        driver_result = driver_result.and(r);
        hooks.extend(run.hooks);
    }
    host.stop().await;
    backend.persist().await;
    for task in hooks {
        let limit = config.on_role_change_timeout * 2 + Duration::from_secs(1);
        let _ = tokio::time::timeout(limit, task).await;
    }
    let code = code?;
    driver_result?;
    Ok(code)
}

/// The state file (`--state-file`) and the revision it holds (0 when it does not exist yet),
/// written back at once so a file that cannot be written stops electd now, not after etcd is
/// rebuilt. Without one, said once: nothing is kept across restarts.
fn remembered(config: &Config) -> Result<Option<(StateFile, i64)>, DaemonError> {
    let Some(path) = &config.state_file else {
        info!(
            "no --state-file: the highest etcd revision seen is not kept across restarts (after etcd is rebuilt from empty, a restarted replica knows it only from a floor record written by a replica that remembers; see docs/operations.md)"
        );
        return Ok(None);
    };
    let file = StateFile::new(path);
    let revision = match file.read()? {
        Some(r) => {
            info!(path = %path.display(), revision = r, "state file read: etcd's answers below this revision are refused");
            r
        }
        None => {
            info!(path = %path.display(), "no state file yet; it is written from now on");
            0
        }
    };
    file.write(revision)?;
    Ok(Some((file, revision)))
}

/// One election of this electd: its owner task and its hook runner.
struct ElectionRun {
    owner: Owner,
    control: mpsc::Receiver<Control>,
    inputs: broadcast::Receiver<Input>,
    hooks: Option<tokio::task::JoinHandle<()>>,
}

/// What every election of the process shares, or takes its part of.
struct Shared<'a> {
    backend: &'a EtcdBackend,
    host: &'a HostHandle,
    http: Option<String>,
    /// This election's slot of the freeze watchdog.
    watchdog: Option<WatchdogHandle>,
    metrics: &'a Metrics,
    board: Option<Arc<crate::election::balance::Board>>,
    serves: Option<String>,
}

impl ElectionRun {
    /// Campaign in `e` under the shared lease; what its owner runs, and what the API knows of
    /// it.
    fn start(
        config: &Config,
        e: Election,
        shared: Shared<'_>,
        inputs: broadcast::Receiver<Input>,
    ) -> (ElectionRun, ElectionApi) {
        let Shared {
            backend,
            host,
            http,
            watchdog,
            metrics,
            board,
            serves,
        } = shared;
        let timing = e.timing(config.ttl);
        let eligibility = Eligibility::new(e.priority, config.health.is_some());
        let metrics = &metrics.election(&e.name);
        let source = ElectionSource::start_on(
            backend,
            host,
            DriverConfig {
                election: e.name.clone(),
                member: MemberInfo {
                    serves,
                    ..MemberInfo::new(&config.id, http)
                        .with_priority(e.priority)
                        .with_advertise(config.advertise.clone())
                },
                timing,
                observe_first: !eligibility.eligible(),
                policy: Policy {
                    priority: e.priority,
                    takeover_delay: config.takeover_delay,
                },
                start_guard: config.start_guard,
                balance: board,
            },
            Arc::new(metrics.clone()),
        );
        let sidecar = e.command.is_empty();
        let mut status = Status::new(&config.id, &e.name, !sidecar);
        status.priority = e.priority;
        status.ineligible = eligibility.reason();
        metrics.eligible.set(eligibility.eligible() as i64);
        let (status_tx, status_rx) = watch::channel(status);
        let (control_tx, control_rx) = mpsc::channel(8);
        let claims = crate::status::Claims::default();
        let api = ElectionApi {
            name: e.name.clone(),
            status: status_rx,
            control: control_tx,
            members: Some(
                backend.member_source(&e.name, timing.request_timeout.max(Duration::from_secs(2))),
            ),
            ready: api::Ready {
                own: config.advertise.clone(),
                budget: timing.leader_budget(),
            },
            claims: claims.clone(),
        };
        let supervisor = (!sidecar).then(|| {
            Supervisor::new(
                ChildSpec {
                    argv: e.command.clone(),
                    stop_signal: config.stop_signal,
                    stop_grace: e.stop_grace,
                },
                watchdog.clone(),
            )
        });
        let publisher = Publisher {
            status: status_tx.clone(),
            metrics: metrics.clone(),
            view: source.view(),
        };
        let identity = Identity {
            id: config.id.clone(),
            election: e.name.clone(),
        };
        let mut lead = Leadership::new(
            source,
            supervisor,
            ExitPolicy::new(e.on_exit),
            identity.clone(),
        )
        .observe(Box::new(publisher));
        if sidecar {
            lead = lead.with_app(AppBudget {
                claims,
                grace: e.stop_grace,
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
        let owner = Owner {
            lead,
            exit_code: 0,
            driver_failed: false,
            eligibility,
            status: status_tx,
            metrics: metrics.clone(),
            switchover_within: timing.ttl * 2,
        };
        (
            ElectionRun {
                owner,
                control: control_rx,
                inputs,
                hooks,
            },
            api,
        )
    }
}

/// Run every election's owner until all have ended: signals and health changes go to every
/// one; when one ends on its own (its command's exit under `--on-exit exit`, a failed driver),
/// the others are shut down too. The exit code is the first one that ended on its own (0 after
/// a signal).
async fn run_elections(
    runs: Vec<ElectionRun>,
    inputs: broadcast::Sender<Input>,
    mut health: Option<mpsc::Receiver<health::Change>>,
    metrics: &Metrics,
) -> (Result<i32, DaemonError>, Vec<ElectionRun>) {
    let local = tokio::task::LocalSet::new();
    local
        .run_until(async move {
            let (done_tx, mut done_rx) = mpsc::channel::<usize>(runs.len().max(1));
            let mut tasks = Vec::new();
            for (i, mut run) in runs.into_iter().enumerate() {
                let done = done_tx.clone();
                tasks.push(tokio::task::spawn_local(async move {
                    let r = run.owner.run(&mut run.control, &mut run.inputs).await;
                    let _ = done.send(i).await;
                    (r, run)
                }));
            }
            drop(done_tx);
            let mut signals = match Signals::install() {
                Ok(s) => s,
                Err(e) => {
                    let _ = inputs.send(Input::Shutdown("signal handlers failed"));
                    let mut runs = Vec::new();
                    for t in tasks {
                        if let Ok((_, run)) = t.await {
                            runs.push(run);
                        }
                    }
                    return (Err(e), runs);
                }
            };
            let mut first_done = None;
            let mut remaining = tasks.len();
            while remaining > 0 {
                let health_change = async {
                    match health.as_mut() {
                        Some(rx) => rx.recv().await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    Some(i) = done_rx.recv() => {
                        remaining -= 1;
                        if first_done.is_none() {
                            first_done = Some(i);
                            // One ended on its own: stop the others.
                            let _ = inputs.send(Input::Shutdown("another election ended"));
                        }
                    }
                    Some(change) = health_change => {
                        let to = match change {
                            health::Change::Healthy => "healthy",
                            health::Change::Unhealthy(_) => "unhealthy",
                        };
                        metrics.health_transitions.with_label_values(&[to]).inc();
                        let _ = inputs.send(Input::Health(change));
                    }
                    _ = signals.term.recv() => { let _ = inputs.send(Input::Shutdown("SIGTERM")); }
                    _ = signals.int.recv() => { let _ = inputs.send(Input::Shutdown("SIGINT")); }
                    _ = signals.hup.recv() => { let _ = inputs.send(Input::Forward(Signal::SIGHUP)); }
                    _ = signals.usr1.recv() => { let _ = inputs.send(Input::Forward(Signal::SIGUSR1)); }
                    _ = signals.usr2.recv() => { let _ = inputs.send(Input::Forward(Signal::SIGUSR2)); }
                }
            }
            let mut code = Ok(0);
            let mut runs = Vec::new();
            let mut results = Vec::new();
            for t in tasks {
                let (r, run) = t.await.expect("invariant: an election's owner does not panic");
                results.push(r);
                runs.push(run);
            }
            // The first that ended decides, then any other failure.
            if let Some(i) = first_done {
                let r = std::mem::replace(&mut results[i], Ok(0));
                results.insert(0, r);
            }
            for r in results {
                match (&code, r) {
                    (Ok(0), r) => code = r,
                    (Ok(_), Err(e)) => code = Err(e),
                    _ => {}
                }
            }
            (code, runs)
        })
        .await
}

/// Serve the API and the proxy (which follows the only election) until [`Api::stop`].
fn serve_api(listeners: Listeners, config: &Config, state: ApiState) -> Api {
    let budget = state.elections[0].ready.budget;
    listeners.serve(
        state,
        api::serve::Limits {
            read_header_timeout: config.read_header_timeout,
            max_connections: api::serve::MAX_CONNECTIONS,
        },
        crate::proxy::ProxyConfig {
            own: config.advertise.clone(),
            wait: config.proxy_wait,
            budget,
        },
    )
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

/// What an election's owner waits for besides its leadership loop's own events: what the
/// dispatcher hands every election (signals, health), and its own control requests.
#[derive(Debug, Clone)]
enum Input {
    Shutdown(&'static str),
    Forward(Signal),
    Health(health::Change),
}

/// An input for one owner.
enum Received {
    Input(Input),
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

/// The dispatcher's inputs and this election's control requests, whichever comes first.
async fn input(
    inputs: &mut broadcast::Receiver<Input>,
    control: &mut mpsc::Receiver<Control>,
    control_open: bool,
) -> Received {
    loop {
        tokio::select! {
            i = inputs.recv() => match i {
                Ok(i) => return Received::Input(i),
                // Fell behind (a burst of signals): what matters is the latest; go on.
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => return Received::Input(Input::Shutdown("the daemon stopped")),
            },
            c = control.recv(), if control_open => return match c {
                Some(c) => Received::Control(c),
                None => Received::ControlClosed,
            },
        }
    }
}

struct Owner {
    lead: Leadership<ElectionSource, Supervisor>,
    exit_code: i32,
    driver_failed: bool,
    eligibility: Eligibility,
    status: watch::Sender<Status>,
    metrics: ElectionMetrics,
    /// How long a switchover may take before the queue's order decides again.
    switchover_within: Duration,
}

impl Owner {
    async fn run(
        &mut self,
        control: &mut mpsc::Receiver<Control>,
        dispatched: &mut broadcast::Receiver<Input>,
    ) -> Result<i32, DaemonError> {
        let mut control_open = true;
        loop {
            let inputs = input(dispatched, control, control_open);
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
                Next::Input(Received::Input(Input::Shutdown(why))) => {
                    info!(election = %self.lead.identity().election, "{why}; shutting down");
                    Event::Shutdown
                }
                Next::Input(Received::Input(Input::Forward(sig))) => {
                    self.lead.forward(sig);
                    continue;
                }
                Next::Input(Received::ControlClosed) => {
                    control_open = false;
                    continue;
                }
                Next::Input(Received::Control(c)) => match self.control_event(c).await {
                    Some((event, r)) => {
                        reply = Some(r);
                        event
                    }
                    None => continue,
                },
                Next::Input(Received::Input(Input::Health(change))) => {
                    match self.health_changed(&change) {
                        Some(event) => event,
                        None => continue,
                    }
                }
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
