//! The role API: one [`router`] served on TCP and on the Unix socket.
//!
//! Read endpoints (`/role`, `/leader`, `/healthz`, `/metrics`) answer on both. Control
//! endpoints (`/resign`, `/pause`, `/resume`) act only when the request came over the Unix
//! socket (whose file mode limits who can connect); over TCP they answer 403.

pub mod socket;

use std::time::Duration;

use axum::extract::{Extension, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

use crate::election::role::RoleKind;
use crate::metrics::Metrics;
use crate::status::Status;

/// Which listener a request arrived on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Tcp,
    Unix,
}

/// Operator requests for the owner task; each is answered with a short JSON document.
#[derive(Debug)]
pub enum Control {
    Resign(oneshot::Sender<serde_json::Value>),
    Pause(oneshot::Sender<serde_json::Value>),
    Resume(oneshot::Sender<serde_json::Value>),
}

#[derive(Clone)]
pub struct ApiState {
    pub status: watch::Receiver<Status>,
    pub control: mpsc::Sender<Control>,
    pub metrics: Metrics,
}

/// The router for one listener.
pub fn router(state: ApiState, transport: Transport) -> Router {
    Router::new()
        .route("/role", get(role))
        .route("/leader", get(leader))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/resign", post(resign))
        .route("/pause", post(pause))
        .route("/resume", post(resume))
        .layer(Extension(transport))
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            Duration::from_secs(10),
        ))
        .layer(axum::extract::DefaultBodyLimit::max(4096))
        .with_state(state)
}

async fn role(State(s): State<ApiState>) -> Json<serde_json::Value> {
    Json(s.status.borrow().to_json(Instant::now()))
}

async fn leader(State(s): State<ApiState>) -> Response {
    let st = s.status.borrow().clone();
    let doc = st.to_json(Instant::now());
    let code = match st.kind() {
        RoleKind::Leader | RoleKind::Suspect => StatusCode::OK,
        _ => StatusCode::SERVICE_UNAVAILABLE,
    };
    (code, Json(doc)).into_response()
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn metrics(State(s): State<ApiState>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        s.metrics.render(),
    )
        .into_response()
}

async fn control(
    s: ApiState,
    transport: Transport,
    make: fn(oneshot::Sender<serde_json::Value>) -> Control,
) -> Response {
    if transport != Transport::Unix {
        return (
            StatusCode::FORBIDDEN,
            Json(json!({"error": "control actions are accepted only over the Unix socket (--socket)"})),
        )
            .into_response();
    }
    let (tx, rx) = oneshot::channel();
    if s.control.send(make(tx)).await.is_err() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"error": "electd is shutting down"})),
        )
            .into_response();
    }
    match rx.await {
        Ok(doc) => Json(doc).into_response(),
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"error": "electd is shutting down"})),
        )
            .into_response(),
    }
}

async fn resign(State(s): State<ApiState>, Extension(t): Extension<Transport>) -> Response {
    control(s, t, Control::Resign).await
}

async fn pause(State(s): State<ApiState>, Extension(t): Extension<Transport>) -> Response {
    control(s, t, Control::Pause).await
}

async fn resume(State(s): State<ApiState>, Extension(t): Extension<Transport>) -> Response {
    control(s, t, Control::Resume).await
}
