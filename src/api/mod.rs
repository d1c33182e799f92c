//! The role API: one [`router`] served on TCP and on the Unix socket.
//!
//! Read endpoints (`/role`, `/leader`, `/healthz`, `/metrics`, `/watch`, `/members`) answer on
//! both. Control endpoints (`/resign`, `/pause`, `/resume`) act only when the request came
//! over the Unix socket *and* the peer's credentials (SO_PEERCRED) are on the allow-list; over
//! TCP they answer 403.

pub mod client;
pub mod doc;
pub mod serve;
pub mod socket;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::connect_info::ConnectInfo;
use axum::extract::{FromRef, Query, Request, State};
use axum::http::{StatusCode, header};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::WatchStream;

use crate::election::MemberSource;
use crate::metrics::Metrics;
use crate::status::Status;
use doc::{ControlReply, ErrorDoc, MembersDoc, ReadyDoc};
use socket::{AllowList, Peer};

/// Which listener a request arrived on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Tcp,
    Unix,
}

/// Operator requests for the owner task; each is answered with a [`ControlReply`].
#[derive(Debug)]
pub enum Control {
    /// Hand leadership off now; to the candidate whose member id is `to`, if given (a
    /// switchover).
    Resign {
        to: Option<String>,
        reply: oneshot::Sender<ControlReply>,
    },
    Pause(oneshot::Sender<ControlReply>),
    Resume(oneshot::Sender<ControlReply>),
}

#[derive(Clone)]
pub struct ApiState {
    pub status: watch::Receiver<Status>,
    pub control: mpsc::Sender<Control>,
    pub metrics: Metrics,
    /// Where `/members` reads the election from.
    pub members: Option<Arc<dyn MemberSource>>,
    pub allow: AllowList,
    /// What `/ready` decides with: this replica's app address, the leader budget.
    pub ready: Ready,
}

/// What `GET /ready` needs beyond the snapshot.
#[derive(Debug, Clone, Default)]
pub struct Ready {
    /// This replica's `--advertise` address.
    pub own: Option<String>,
    pub budget: Duration,
}

/// An error document with `code`.
fn error(code: StatusCode, message: impl Into<String>) -> Response {
    (
        code,
        Json(ErrorDoc {
            error: message.into(),
        }),
    )
        .into_response()
}

/// The longest `/role?wait=` honoured.
const MAX_WAIT: Duration = Duration::from_secs(60);

/// Open `/watch` streams per listener at most; more are refused with 503. Streams never end on
/// their own, so without a cap of their own they could hold every connection probes need.
pub const MAX_STREAMS: usize = 64;

/// One listener's state: the shared API state, the transport and the `/watch` streams it may
/// still open. (Router state, not request extensions: inserting those cost every request a
/// tenth of `/role`'s time.)
#[derive(Clone)]
struct Listener {
    api: Arc<ApiState>,
    transport: Transport,
    streams: Arc<tokio::sync::Semaphore>,
    role: Arc<RoleCache>,
}

/// The `/role` document of the latest status version, serialised once: the bytes before and
/// after the `last_contact_ms` number, the one field that changes between versions (besides a
/// suspect leader's, whose documents are never cached). Serialising on every request was most
/// of `/role`'s cost.
#[derive(Default)]
struct RoleCache(std::sync::Mutex<Option<Arc<Rendered>>>);

struct Rendered {
    /// The status version, and whether a last contact time was known.
    key: (u64, bool),
    head: Vec<u8>,
    tail: Vec<u8>,
}

/// What `last_contact_ms` is rendered as in the cached halves, to split them around.
const CONTACT_MARK: &[u8] = b"\"last_contact_ms\":18446744073709551615";

impl RoleCache {
    /// The `/role` body of `st` at `now`.
    fn body(&self, st: &Status, now: Instant) -> Vec<u8> {
        if matches!(st.role, crate::election::role::Role::Suspect { .. }) {
            return render(&st.doc(now));
        }
        let key = (st.version, st.last_contact.is_some());
        let cached = {
            let c = self.0.lock().unwrap_or_else(|p| p.into_inner());
            c.as_ref().filter(|r| r.key == key).cloned()
        };
        let r = match cached {
            Some(r) => r,
            None => {
                let mut doc = st.doc(now);
                if doc.last_contact_ms.is_some() {
                    doc.last_contact_ms = Some(u64::MAX);
                }
                let full = render(&doc);
                let (head, tail) = match find(&full, CONTACT_MARK) {
                    Some(at) => {
                        let split = at + CONTACT_MARK.len() - "18446744073709551615".len();
                        (
                            full[..split].to_vec(),
                            full[at + CONTACT_MARK.len()..].to_vec(),
                        )
                    }
                    None => (full, Vec::new()),
                };
                let r = Arc::new(Rendered { key, head, tail });
                *self.0.lock().unwrap_or_else(|p| p.into_inner()) = Some(r.clone());
                r
            }
        };
        let mut body = Vec::with_capacity(r.head.len() + 20 + r.tail.len());
        body.extend_from_slice(&r.head);
        if let Some(t) = st.last_contact {
            use std::io::Write;
            let _ = write!(
                body,
                "{}",
                now.saturating_duration_since(t).as_millis() as u64
            );
        }
        body.extend_from_slice(&r.tail);
        body
    }
}

fn render(doc: &doc::RoleDoc<'_>) -> Vec<u8> {
    // Sized for a typical document (~350 bytes) so serialising does not regrow the buffer.
    let mut body = Vec::with_capacity(512);
    serde_json::to_writer(&mut body, doc).expect("invariant: RoleDoc serialises");
    body
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

impl FromRef<Listener> for Arc<ApiState> {
    fn from_ref(l: &Listener) -> Arc<ApiState> {
        l.api.clone()
    }
}

/// The router for one listener.
pub fn router(state: ApiState, transport: Transport) -> Router {
    // Limits on connections, headers and bodies are applied in `serve`, before routing.
    // Every handler is bounded by construction: long polls are capped at MAX_WAIT, /members
    // by the etcd request timeout, control actions by the stop grace. (A per-request timeout
    // layer cost a fifth of /role's throughput and guarded nothing these bounds don't.)
    Router::new()
        .route("/role", get(role))
        .route("/leader", get(leader))
        .route("/healthz", get(healthz))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
        .route("/members", get(members))
        .route("/resign", post(resign))
        .route("/pause", post(pause))
        .route("/resume", post(resume))
        .route("/watch", get(watch_role))
        // Shared, not cloned per request: ApiState holds an etcd client and the metrics.
        .with_state(Listener {
            api: Arc::new(state),
            transport,
            streams: Arc::new(tokio::sync::Semaphore::new(MAX_STREAMS)),
            role: Arc::default(),
        })
}

#[derive(Debug, Deserialize)]
struct RoleQuery {
    /// Long-poll: wait up to this long for a change...
    wait: Option<String>,
    /// ...from this version (default: the current one); any other answers at once.
    after: Option<u64>,
}

async fn role(State(l): State<Listener>, uri: axum::http::Uri) -> Response {
    let s = &l.api;
    // Most requests carry no query: skip its parsing then.
    let q = match uri.query() {
        None => None,
        Some(_) => match Query::<RoleQuery>::try_from_uri(&uri) {
            Ok(Query(q)) => Some(q),
            Err(e) => return error(StatusCode::BAD_REQUEST, e.body_text()),
        },
    };
    let Some((wait, after)) = q.and_then(|q| Some((q.wait?, q.after))) else {
        return role_response(&l.role, &s.status.borrow(), StatusCode::OK);
    };
    let wait = match crate::config::parse_duration(&wait) {
        Ok(d) => d.min(MAX_WAIT),
        Err(_) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("invalid wait {wait:?}: expected a duration such as 30s"),
            );
        }
    };
    let mut rx = s.status.clone();
    let after = after.unwrap_or_else(|| rx.borrow().version);
    // Any other version answers at once, also one from before a restart of this electd (its
    // versions start at the time it started, so they are not reused).
    let _ = tokio::time::timeout(wait, rx.wait_for(|st| st.version != after)).await;
    role_response(&l.role, &rx.borrow(), StatusCode::OK)
}

/// The `/role` document of the snapshot.
fn role_response(cache: &RoleCache, st: &Status, code: StatusCode) -> Response {
    let body = cache.body(st, Instant::now());
    (code, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

async fn leader(State(l): State<Listener>) -> Response {
    let st = l.api.status.borrow();
    let code = if st.kind().leads() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    role_response(&l.role, &st, code)
}

async fn healthz() -> &'static str {
    "ok\n"
}

/// 200 when this replica can route clients to the leader (a leader with an advertised address
/// is known and the view is fresh, or it leads itself), else 503 with the reason: the readiness
/// probe of every pod whose clients go through the proxy.
async fn ready(State(s): State<Arc<ApiState>>) -> Response {
    let route = crate::proxy::route_of(&s.status.borrow(), s.ready.own.as_deref(), s.ready.budget);
    let (code, doc) = match route {
        crate::proxy::Route::To { addr, token } => (
            StatusCode::OK,
            ReadyDoc {
                ready: true,
                leader: Some(addr),
                fencing_token: Some(token),
                reason: None,
            },
        ),
        crate::proxy::Route::Hold(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            ReadyDoc {
                ready: false,
                leader: None,
                fencing_token: None,
                reason: Some(why.to_string()),
            },
        ),
    };
    (code, Json(doc)).into_response()
}

async fn metrics(State(s): State<Arc<ApiState>>) -> Response {
    if let Some(t) = s.status.borrow().last_contact {
        s.metrics.last_contact_age.set(t.elapsed().as_secs_f64());
    }
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        s.metrics.render(),
    )
        .into_response()
}

/// Server-Sent Events: the current state first, then one event per change. At most
/// [`MAX_STREAMS`] per listener: the stream holds its permit while open.
async fn watch_role(State(l): State<Listener>) -> Response {
    let s = &l.api;
    let Ok(permit) = l.streams.clone().try_acquire_owned() else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "too many /watch streams open ({MAX_STREAMS}); close one, or long-poll GET /role?wait=30s"
            ),
        );
    };
    let stream = WatchStream::new(s.status.clone()).map(move |st| {
        let _held = &permit;
        let doc =
            serde_json::to_string(&st.doc(Instant::now())).expect("invariant: RoleDoc serialises");
        Ok::<_, Infallible>(
            SseEvent::default()
                .event("role")
                .id(st.version.to_string())
                .data(doc),
        )
    });
    Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response()
}

/// Every candidate in queue order, read from etcd.
async fn members(State(s): State<Arc<ApiState>>) -> Response {
    let Some(src) = &s.members else {
        return error(StatusCode::NOT_FOUND, "no etcd source");
    };
    match src.members().await {
        Ok(list) => Json(MembersDoc::new(src.election(), &list)).into_response(),
        Err(e) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("cannot read the election from etcd: {e}"),
        ),
    }
}

async fn control(
    l: &Listener,
    req: Request,
    make: impl FnOnce(oneshot::Sender<ControlReply>) -> Control,
) -> Response {
    let s = &l.api;
    if l.transport != Transport::Unix {
        return error(
            StatusCode::FORBIDDEN,
            "control actions are accepted only over the Unix socket (--socket)",
        );
    }
    let peer = req.extensions().get::<ConnectInfo<Peer>>().map(|c| c.0);
    match peer {
        Some(p) if s.allow.allows(&p) => {}
        p => {
            tracing::warn!(peer = ?p, path = %req.uri().path(), "control request refused: peer not allowed");
            return error(
                StatusCode::FORBIDDEN,
                "this user may not send control actions (see --control-uids / --control-gids)",
            );
        }
    }
    let (tx, rx) = oneshot::channel();
    let gone = || error(StatusCode::SERVICE_UNAVAILABLE, "electd is shutting down");
    if s.control.send(make(tx)).await.is_err() {
        return gone();
    }
    match rx.await {
        Ok(reply) => Json(reply).into_response(),
        Err(_) => gone(),
    }
}

#[derive(Debug, Deserialize)]
struct ResignQuery {
    /// Hand leadership to this candidate (member id).
    to: Option<String>,
}

async fn resign(State(l): State<Listener>, Query(q): Query<ResignQuery>, req: Request) -> Response {
    let to = q.to.filter(|t| !t.is_empty());
    control(&l, req, |reply| Control::Resign { to, reply }).await
}

async fn pause(State(l): State<Listener>, req: Request) -> Response {
    control(&l, req, Control::Pause).await
}

async fn resume(State(l): State<Listener>, req: Request) -> Response {
    control(&l, req, Control::Resume).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::election::LeaderInfo;
    use crate::election::role::Role;

    /// The cached `/role` body is byte for byte the document rendered afresh, whatever changed
    /// silently (the contact time) or with a new version.
    #[test]
    fn cached_role_bodies_are_the_fresh_ones() {
        let now = Instant::now() + Duration::from_secs(100);
        let leader = LeaderInfo {
            id: "a\"18446744073709551615".into(),
            key: "e/1".into(),
            create_revision: 7,
            member: None,
        };
        let mut st = Status::new("a", "e", false);
        let cache = RoleCache::default();
        let same = |st: &Status, what: &str| {
            assert_eq!(
                String::from_utf8(cache.body(st, now)).unwrap(),
                String::from_utf8(render(&st.doc(now))).unwrap(),
                "{what}"
            );
        };
        same(&st, "no contact yet");
        st.last_contact = Some(now - Duration::from_millis(120));
        same(&st, "first contact, no new version");
        st.role = Role::Leader {
            token: 7,
            lease: 1,
            leader: leader.clone(),
            deadline: now,
        };
        st.version += 1;
        same(&st, "a new version");
        st.last_contact = Some(now - Duration::from_millis(3));
        same(&st, "the contact time moved silently");
        st.role = Role::Suspect {
            token: 7,
            lease: 1,
            leader,
            deadline: now + Duration::from_secs(1),
            since: now - Duration::from_millis(500),
        };
        st.version += 1;
        same(&st, "suspect: rendered afresh");
        st.last_contact = None;
        st.role = Role::Candidate;
        st.version += 1;
        same(&st, "no contact");
    }
}
