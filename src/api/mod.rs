//! The role API: one [`router`] served on TCP and on the Unix socket.
//!
//! Read endpoints (`/role`, `/leader`, `/healthz`, `/metrics`, `/watch`, `/members`) answer on
//! both. Control endpoints (`/resign`, `/pause`, `/resume`) act only when the request came
//! over the Unix socket *and* the peer's credentials (SO_PEERCRED) are on the allow-list; over
//! TCP they answer 403.

pub mod client;
pub mod serve;
pub mod socket;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::connect_info::ConnectInfo;
use axum::extract::{Extension, Query, Request, State};
use axum::http::{StatusCode, header};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use etcd_client::Client;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::WatchStream;

use crate::election::role::RoleKind;
use crate::election::{LeaderInfo, etcd, keys};
use crate::metrics::Metrics;
use crate::status::Status;
use socket::{AllowList, Peer};

/// Which listener a request arrived on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Tcp,
    Unix,
}

/// Operator requests for the owner task; each is answered with a short JSON document.
#[derive(Debug)]
pub enum Control {
    Resign(oneshot::Sender<Value>),
    Pause(oneshot::Sender<Value>),
    Resume(oneshot::Sender<Value>),
}

/// Where `/members` reads the election from.
#[derive(Clone)]
pub struct EtcdSource {
    pub client: Client,
    pub election: String,
    pub timeout: Duration,
}

#[derive(Clone)]
pub struct ApiState {
    pub status: watch::Receiver<Status>,
    pub control: mpsc::Sender<Control>,
    pub metrics: Metrics,
    pub etcd: Option<EtcdSource>,
    pub allow: AllowList,
}

/// The longest `/role?wait=` honoured.
const MAX_WAIT: Duration = Duration::from_secs(60);

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
        .route("/metrics", get(metrics))
        .route("/members", get(members))
        .route("/resign", post(resign))
        .route("/pause", post(pause))
        .route("/resume", post(resume))
        .route("/watch", get(watch_role))
        .layer(Extension(transport))
        // Shared, not cloned per request: ApiState holds an etcd client and the metrics.
        .with_state(Arc::new(state))
}

#[derive(Debug, Deserialize)]
struct RoleQuery {
    /// Long-poll: wait up to this long for a change...
    wait: Option<String>,
    /// ...after this version (default: the current one).
    after: Option<u64>,
}

async fn role(State(s): State<Arc<ApiState>>, Query(q): Query<RoleQuery>) -> Response {
    let Some(wait) = q.wait else {
        return role_response(&s.status.borrow(), StatusCode::OK);
    };
    let wait = match crate::config::parse_duration(&wait) {
        Ok(d) => d.min(MAX_WAIT),
        Err(_) => {
            return (
                StatusCode::BAD_REQUEST,
                Json(json!({"error": format!("invalid wait {wait:?}: expected a duration such as 30s")})),
            )
                .into_response();
        }
    };
    let mut rx = s.status.clone();
    let after = q.after.unwrap_or_else(|| rx.borrow().version);
    let _ = tokio::time::timeout(wait, rx.wait_for(|st| st.version > after)).await;
    role_response(&rx.borrow(), StatusCode::OK)
}

/// Serialise the `/role` document straight from the snapshot (no intermediate JSON tree).
fn role_response(st: &Status, code: StatusCode) -> Response {
    // Sized for a typical document (~350 bytes) so serialising does not regrow the buffer.
    let mut body = Vec::with_capacity(512);
    serde_json::to_writer(&mut body, &st.doc(Instant::now()))
        .expect("invariant: RoleDoc serialises");
    (code, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

async fn leader(State(s): State<Arc<ApiState>>) -> Response {
    let st = s.status.borrow();
    let code = match st.kind() {
        RoleKind::Leader | RoleKind::Suspect => StatusCode::OK,
        _ => StatusCode::SERVICE_UNAVAILABLE,
    };
    role_response(&st, code)
}

async fn healthz() -> &'static str {
    "ok\n"
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

/// Server-Sent Events: the current state first, then one event per change.
async fn watch_role(
    State(s): State<Arc<ApiState>>,
) -> Sse<impl tokio_stream::Stream<Item = Result<SseEvent, Infallible>>> {
    let stream = WatchStream::new(s.status.clone()).map(|st| {
        let doc = st.to_json(Instant::now());
        Ok(SseEvent::default()
            .event("role")
            .id(st.version.to_string())
            .data(doc.to_string()))
    });
    Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
}

/// Every candidate in queue order, read from etcd.
async fn members(State(s): State<Arc<ApiState>>) -> Response {
    let Some(src) = &s.etcd else {
        return (
            StatusCode::NOT_FOUND,
            Json(json!({"error": "no etcd source"})),
        )
            .into_response();
    };
    let prefix = keys::election_prefix(&src.election);
    match etcd::candidates(&src.client, &prefix, src.timeout).await {
        Ok((revision, list)) => Json(members_doc(&src.election, revision, &list)).into_response(),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"error": format!("cannot read the election from etcd: {e}")})),
        )
            .into_response(),
    }
}

/// The `/members` document: every candidate in queue order; the first one leads.
pub fn members_doc(election: &str, revision: i64, list: &[etcd::Candidate]) -> Value {
    let members: Vec<Value> = list
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let info = LeaderInfo::from_candidate(c);
            json!({
                "position": i + 1,
                "id": info.id,
                "key": c.key,
                "create_revision": c.create_revision,
                "lease": format!("{:x}", c.lease),
                "leader": i == 0,
                "member": info.member,
            })
        })
        .collect();
    json!({"election": election, "revision": revision, "members": members})
}

async fn control(
    s: &ApiState,
    req: Request,
    make: fn(oneshot::Sender<Value>) -> Control,
) -> Response {
    let transport = req.extensions().get::<Transport>().copied();
    if transport != Some(Transport::Unix) {
        return (
            StatusCode::FORBIDDEN,
            Json(json!({"error": "control actions are accepted only over the Unix socket (--socket)"})),
        )
            .into_response();
    }
    let peer = req.extensions().get::<ConnectInfo<Peer>>().map(|c| c.0);
    match peer {
        Some(p) if s.allow.allows(&p) => {}
        p => {
            tracing::warn!(peer = ?p, path = %req.uri().path(), "control request refused: peer not allowed");
            return (
                StatusCode::FORBIDDEN,
                Json(json!({"error": "this user may not send control actions (see --control-uids / --control-gids)"})),
            )
                .into_response();
        }
    }
    let (tx, rx) = oneshot::channel();
    let gone = || {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"error": "electd is shutting down"})),
        )
            .into_response()
    };
    if s.control.send(make(tx)).await.is_err() {
        return gone();
    }
    match rx.await {
        Ok(doc) => Json(doc).into_response(),
        Err(_) => gone(),
    }
}

async fn resign(State(s): State<Arc<ApiState>>, req: Request) -> Response {
    control(&s, req, Control::Resign).await
}

async fn pause(State(s): State<Arc<ApiState>>, req: Request) -> Response {
    control(&s, req, Control::Pause).await
}

async fn resume(State(s): State<Arc<ApiState>>, req: Request) -> Response {
    control(&s, req, Control::Resume).await
}
