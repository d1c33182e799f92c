//! The leader-following TCP proxy (`--proxy ADDR`): every replica forwards each connection it
//! accepts to the current leader's advertised address (`--advertise`), on the leader to its own
//! app — clients reach the leader through any replica, with no Kubernetes API access, the way
//! stolon's proxy does.
//!
//! - A connection is closed, both sides, as soon as the leader it goes to is no longer the
//!   leader in this replica's view.
//! - A replica cut off from etcd stops routing once its view is older than the leader budget
//!   (TTL − safety margin − stop grace, the arithmetic of the leader's own deadline): it never
//!   routes to a deposed leader longer than that leader's command could still run.
//! - While no leader is known, new connections wait (up to `--proxy-wait`) instead of being
//!   refused: a graceful handoff costs clients a pause, not an error.
//! - Bounded: at most [`MAX_CONNECTIONS`] proxied connections (more wait in the listen backlog),
//!   fixed buffers, every connection task owned by the server and gone when it stops.
//!
//! [`route`] is the pure "may I route, and where?" (table-tested); `GET /ready` answers it too.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::pin;
use std::time::Duration;

use prometheus::IntCounter;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::{Instant, sleep_until, timeout, timeout_at};
use tracing::{debug, info};

use crate::election::role::Role;
use crate::metrics::Metrics;
use crate::status::Status;

/// Open proxied connections at most; further clients wait in the listen backlog.
pub const MAX_CONNECTIONS: usize = 1024;
/// Buffer per direction and connection.
const BUFFER: usize = 16 * 1024;
/// How long connecting to the leader's app may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Why a follower cut off from etcd holds.
const STALE: &str = "this replica's view is older than the leader budget (cut off from etcd)";

/// Where connections go now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// To this address, the app of the leader whose fencing token is `token`.
    To { addr: String, token: i64 },
    /// Nowhere: new connections wait, open ones are closed. Why, in words.
    Hold(&'static str),
}

impl Route {
    pub fn routes(&self) -> bool {
        matches!(self, Route::To { .. })
    }
}

/// What [`route`] decides on.
#[derive(Debug, Clone, Copy)]
pub struct RouteInput<'a> {
    pub role: &'a Role,
    /// This replica's own `--advertise` address.
    pub own: Option<&'a str>,
    /// When etcd last answered this replica.
    pub last_contact: Option<Instant>,
    /// The leader budget: how long a view may go without contact and still be followed.
    pub budget: Duration,
    pub now: Instant,
}

/// Where connections may go now.
pub fn route(i: &RouteInput<'_>) -> Route {
    let role = i.role.at(i.now);
    let leader = match role.as_ref() {
        // The leader routes to its own app until its deadline (past it, it is a candidate).
        Role::Leader { token, .. } | Role::Suspect { token, .. } => {
            return match i.own {
                Some(addr) => Route::To {
                    addr: addr.to_string(),
                    token: *token,
                },
                None => Route::Hold("this replica leads but has no --advertise address"),
            };
        }
        Role::Follower { leader } => leader,
        _ => return Route::Hold("no leader known"),
    };
    let fresh = i
        .last_contact
        .is_some_and(|t| i.now.saturating_duration_since(t) <= i.budget);
    if !fresh {
        return Route::Hold(STALE);
    }
    match leader.member.as_ref().and_then(|m| m.advertise.as_deref()) {
        Some(addr) => Route::To {
            addr: addr.to_string(),
            token: leader.create_revision,
        },
        None => Route::Hold("the leader has no advertised address (--advertise)"),
    }
}

/// The route of a status snapshot now.
pub fn route_of(status: &Status, own: Option<&str>, budget: Duration) -> Route {
    route(&RouteInput {
        role: &status.role,
        own,
        last_contact: status.last_contact,
        budget,
        now: Instant::now(),
    })
}

/// The proxy's settings.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    /// This replica's `--advertise` address.
    pub own: Option<String>,
    /// How long a new connection waits for a leader.
    pub wait: Duration,
    pub budget: Duration,
}

/// Keep `routes` at the route of `status`, re-deciding on every change of the snapshot and
/// when a follower's view would turn stale, until `stop`.
async fn follow(
    mut status: watch::Receiver<Status>,
    cfg: ProxyConfig,
    routes: watch::Sender<Route>,
    stop: impl Future<Output = ()>,
) {
    let mut stop = pin!(stop);
    loop {
        let (route, stale_at) = {
            let st = status.borrow_and_update();
            let r = route_of(&st, cfg.own.as_deref(), cfg.budget);
            // The contact time moves silently: look again when the view would turn stale.
            let stale_at = match (&st.role, st.last_contact) {
                (Role::Follower { .. }, Some(t)) => Some(t + cfg.budget + Duration::from_millis(1)),
                // A leader's own deadline, should the owner not handle it in time.
                (r, _) if r.leads() => r.deadline(),
                _ => None,
            };
            (r, stale_at)
        };
        routes.send_if_modified(|r| {
            let changed = *r != route;
            if changed {
                info!(from = ?r, to = ?route, "proxy route changed");
                *r = route;
            }
            changed
        });
        tokio::select! {
            _ = &mut stop => return,
            changed = status.changed() => if changed.is_err() { return },
            _ = sleep_until(stale_at.unwrap_or_else(Instant::now)), if stale_at.is_some() => {}
        }
    }
}

/// Serve the proxy on `listener` until `stop`.
pub async fn serve(
    listener: TcpListener,
    status: watch::Receiver<Status>,
    cfg: ProxyConfig,
    metrics: Metrics,
    stop: impl Future<Output = ()>,
) {
    let (routes_tx, routes) = watch::channel(Route::Hold("starting"));
    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let mut conns = JoinSet::new();
    conns.spawn(follow(
        status,
        cfg.clone(),
        routes_tx,
        stopped(stop_rx.clone()),
    ));
    let mut stop = pin!(stop);
    loop {
        tokio::select! {
            _ = &mut stop => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            accepted = listener.accept(), if conns.len() <= MAX_CONNECTIONS => {
                let Ok((client, peer)) = accepted else { continue };
                metrics.proxy_connections.inc();
                metrics.proxy_open.inc();
                let m = metrics.clone();
                let routes = routes.clone();
                let wait = cfg.wait;
                let stop = stopped(stop_rx.clone());
                conns.spawn(async move {
                    let reason = tokio::select! {
                        r = proxy_one(client, peer, routes, wait, &m) => r,
                        () = stop => "shutdown",
                    };
                    m.proxy_closed.with_label_values(&[reason]).inc();
                    m.proxy_open.dec();
                });
            }
        }
    }
    let _ = stop_tx.send(true);
    let _ = timeout(Duration::from_secs(1), async {
        while conns.join_next().await.is_some() {}
    })
    .await;
}

/// Forward one client to the leader while the route stays; why it ended.
async fn proxy_one(
    mut client: TcpStream,
    peer: SocketAddr,
    mut routes: watch::Receiver<Route>,
    wait: Duration,
    metrics: &Metrics,
) -> &'static str {
    let (mut upstream, addr, token) = match connect_leader(peer, &mut routes, wait, metrics).await {
        Ok(c) => c,
        Err(why) => return why,
    };
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    let moved = routes.wait_for(|r| !same_route(r, &addr, token));
    let to_leader = metrics.proxy_bytes.with_label_values(&["to_leader"]);
    let from_leader = metrics.proxy_bytes.with_label_values(&["from_leader"]);
    let (client_rx, client_tx) = client.split();
    let (upstream_rx, upstream_tx) = upstream.split();
    let copied = async {
        tokio::try_join!(
            pipe(client_rx, upstream_tx, &to_leader),
            pipe(upstream_rx, client_tx, &from_leader)
        )
    };
    tokio::select! {
        _ = copied => "closed",
        changed = moved => match changed.as_deref() {
            Ok(Route::Hold(why)) if *why == STALE => "view_stale",
            _ => "leader_changed",
        },
    }
}

/// Connect to the leader's app, waiting up to `wait` (from now) for a leader to route to. An
/// app that cannot be reached (the leader's host died; its lease has not expired yet) is tried
/// again when the route changes, within the same wait: a crash costs clients a pause, not an
/// error. The stream and the route it follows; when the wait runs out, why (`no_leader`, or
/// `upstream_unreachable` when the last leader's app could not be reached).
async fn connect_leader(
    peer: SocketAddr,
    routes: &mut watch::Receiver<Route>,
    wait: Duration,
    metrics: &Metrics,
) -> Result<(TcpStream, String, i64), &'static str> {
    let started = Instant::now();
    let deadline = started + wait;
    let mut why = "no_leader";
    loop {
        let route = match timeout_at(deadline, routes.wait_for(Route::routes)).await {
            Ok(Ok(r)) => r.clone(),
            _ => return Err(why),
        };
        let Route::To { addr, token } = route else {
            return Err(why);
        };
        let left = deadline.saturating_duration_since(Instant::now());
        match timeout(CONNECT_TIMEOUT.min(left), TcpStream::connect(&addr)).await {
            Ok(Ok(s)) => {
                metrics
                    .proxy_wait_seconds
                    .observe(started.elapsed().as_secs_f64());
                return Ok((s, addr, token));
            }
            Ok(Err(e)) => debug!(%peer, %addr, error = %e, "cannot reach the leader's app"),
            Err(_) => debug!(%peer, %addr, "connecting to the leader's app timed out"),
        }
        why = "upstream_unreachable";
        // Try again once the route moves on (a new leader, or a hold), within the wait.
        let moved = routes.wait_for(|r| !same_route(r, &addr, token));
        if !matches!(timeout_at(deadline, moved).await, Ok(Ok(_))) {
            return Err(why);
        }
    }
}

fn same_route(r: &Route, addr: &str, token: i64) -> bool {
    matches!(r, Route::To { token: t, addr: a } if *t == token && a == addr)
}

/// Copy one direction until its end (then half-close the other side), counting the bytes as
/// they pass.
async fn pipe(
    mut from: impl AsyncRead + Unpin,
    mut to: impl AsyncWrite + Unpin,
    bytes: &IntCounter,
) -> std::io::Result<()> {
    let mut buf = vec![0u8; BUFFER];
    loop {
        let n = from.read(&mut buf).await?;
        if n == 0 {
            return to.shutdown().await;
        }
        to.write_all(&buf[..n]).await?;
        bytes.inc_by(n as u64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::election::{LeaderInfo, MemberInfo};

    fn leader(id: &str, token: i64, advertise: Option<&str>) -> LeaderInfo {
        let mut m = MemberInfo::new(id, None);
        m.advertise = advertise.map(str::to_string);
        LeaderInfo {
            id: id.into(),
            key: format!("e/{token:x}"),
            create_revision: token,
            member: Some(m),
        }
    }

    #[test]
    fn route_table() {
        let now = Instant::now() + Duration::from_secs(100);
        let budget = Duration::from_secs(2);
        let ago = |ms: u64| Some(now - Duration::from_millis(ms));
        let to = |addr: &str, token| Route::To {
            addr: addr.into(),
            token,
        };
        let follower = |l: LeaderInfo| Role::Follower { leader: l };
        let leading_until = |deadline| Role::Leader {
            token: 9,
            lease: 1,
            leader: leader("me", 9, Some("10.0.0.1:80")),
            deadline,
        };
        let leading = leading_until(now + Duration::from_millis(1));
        let suspect = Role::Suspect {
            token: 9,
            lease: 1,
            leader: leader("me", 9, Some("10.0.0.1:80")),
            deadline: now + Duration::from_millis(1),
            since: now,
        };
        type Case = (
            &'static str,
            Role,
            Option<&'static str>,
            Option<Instant>,
            Route,
        );
        let cases: Vec<Case> = vec![
            (
                "a follower routes to the leader's app",
                follower(leader("a", 7, Some("10.0.0.2:80"))),
                Some("10.0.0.1:80"),
                ago(100),
                to("10.0.0.2:80", 7),
            ),
            (
                "a leader routes to its own app",
                leading.clone(),
                Some("10.0.0.1:80"),
                None,
                to("10.0.0.1:80", 9),
            ),
            (
                "also while suspect: its deadline bounds it",
                suspect,
                Some("10.0.0.1:80"),
                ago(5000),
                to("10.0.0.1:80", 9),
            ),
            (
                "a leader past its deadline (its owner frozen) holds",
                leading_until(now),
                Some("10.0.0.1:80"),
                ago(0),
                Route::Hold("no leader known"),
            ),
            (
                "a leader without an address holds",
                leading,
                None,
                ago(0),
                Route::Hold("this replica leads but has no --advertise address"),
            ),
            (
                "a follower whose view is older than the budget holds",
                follower(leader("a", 7, Some("10.0.0.2:80"))),
                None,
                ago(2001),
                Route::Hold(
                    "this replica's view is older than the leader budget (cut off from etcd)",
                ),
            ),
            (
                "at the budget it still routes",
                follower(leader("a", 7, Some("10.0.0.2:80"))),
                None,
                ago(2000),
                to("10.0.0.2:80", 7),
            ),
            (
                "never in contact: holds",
                follower(leader("a", 7, Some("10.0.0.2:80"))),
                None,
                None,
                Route::Hold(
                    "this replica's view is older than the leader budget (cut off from etcd)",
                ),
            ),
            (
                "a leader without an advertised address cannot be routed to",
                follower(leader("a", 7, None)),
                None,
                ago(0),
                Route::Hold("the leader has no advertised address (--advertise)"),
            ),
            (
                "no leader known: hold",
                Role::Candidate,
                Some("10.0.0.1:80"),
                ago(0),
                Route::Hold("no leader known"),
            ),
            (
                "paused: hold",
                Role::Paused,
                Some("10.0.0.1:80"),
                ago(0),
                Route::Hold("no leader known"),
            ),
        ];
        for (name, role, own, last_contact, want) in cases {
            let got = route(&RouteInput {
                role: &role,
                own,
                last_contact,
                budget,
                now,
            });
            assert_eq!(got, want, "{name}");
        }
    }
}
