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
use crate::status::{Claims, Status};
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
    /// Every leadership budget handed out is recorded here (see [`Claims`]).
    pub claims: Claims,
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

/// The `/role` document of the latest status version, serialised once: the bytes around the
/// numbers that change between versions — `valid_ms` (a leader's budget, counted down at read
/// time) and `last_contact_ms` — are kept, the numbers spliced in per request. A suspect
/// leader's documents, and a leader's past its deadline, are rendered afresh. Serialising on
/// every request was most of `/role`'s cost.
#[derive(Default)]
struct RoleCache(std::sync::Mutex<Option<Arc<Rendered>>>);

struct Rendered {
    /// The status version, and whether a budget and a last contact time were rendered.
    key: (u64, bool, bool),
    /// The document cut at each spliced number, and which number follows each cut.
    parts: Vec<(Vec<u8>, Option<Spliced>)>,
}

/// A number spliced into a cached document.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Spliced {
    ValidMs,
    LastContactMs,
}

/// What each spliced number is rendered as in the cached document, to cut it around.
const MARKS: [(&[u8], &[u8], Spliced); 2] = [
    (b"\"valid_ms\":", b"18446744073709551614", Spliced::ValidMs),
    (
        b"\"last_contact_ms\":",
        b"18446744073709551615",
        Spliced::LastContactMs,
    ),
];

impl RoleCache {
    /// The `/role` body of `st` at `now`; with its budget when `claim` (else `valid_ms` is
    /// null).
    fn body(&self, st: &Status, now: Instant, claim: bool) -> Vec<u8> {
        let budget = st.role.budget_at(now);
        let fresh_only = matches!(st.role, crate::election::role::Role::Suspect { .. })
            || (st.role.leads() && budget.is_none());
        if fresh_only {
            let mut doc = st.doc(now);
            if !claim {
                doc.valid_ms = None;
            }
            return render(&doc);
        }
        let key = (st.version, budget.is_some(), st.last_contact.is_some());
        let cached = {
            let c = self.0.lock().unwrap_or_else(|p| p.into_inner());
            c.as_ref().filter(|r| r.key == key).cloned()
        };
        let r = match cached {
            Some(r) => r,
            None => {
                let r = Arc::new(Rendered {
                    key,
                    parts: cut(st, now),
                });
                *self.0.lock().unwrap_or_else(|p| p.into_inner()) = Some(r.clone());
                r
            }
        };
        let mut body = Vec::with_capacity(512);
        for (bytes, spliced) in &r.parts {
            body.extend_from_slice(bytes);
            let value = match spliced {
                Some(Spliced::ValidMs) if !claim => {
                    body.extend_from_slice(b"null");
                    None
                }
                Some(Spliced::ValidMs) => budget.map(|b| b.as_millis() as u64),
                Some(Spliced::LastContactMs) => st
                    .last_contact
                    .map(|t| now.saturating_duration_since(t).as_millis() as u64),
                None => None,
            };
            if let Some(v) = value {
                use std::io::Write;
                let _ = write!(body, "{v}");
            }
        }
        body
    }
}

/// The document of `st` rendered with marks for the spliced numbers, cut around them.
fn cut(st: &Status, now: Instant) -> Vec<(Vec<u8>, Option<Spliced>)> {
    let mut doc = st.doc(now);
    if doc.valid_ms.is_some() {
        doc.valid_ms = Some(u64::MAX - 1);
    }
    if doc.last_contact_ms.is_some() {
        doc.last_contact_ms = Some(u64::MAX);
    }
    let mut rest = render(&doc);
    let mut parts = Vec::new();
    for (field, mark, what) in MARKS {
        let needle = [field, mark].concat();
        if let Some(at) = find(&rest, &needle) {
            let tail = rest.split_off(at + needle.len());
            rest.truncate(at + field.len());
            parts.push((std::mem::replace(&mut rest, tail), Some(what)));
        }
    }
    parts.push((rest, None));
    parts
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
    /// `false`: a reader that will not act as leader on this answer (monitoring, `electd
    /// status`): it gets no budget (`valid_ms` null) and none is recorded as handed out.
    claim: Option<bool>,
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
    let answer = match q.as_ref().and_then(|q| q.claim) {
        Some(false) => Answer::Observe,
        _ => Answer::Claim,
    };
    let Some((wait, after)) = q.and_then(|q| Some((q.wait?, q.after))) else {
        return role_response(&l, &s.status.borrow(), answer);
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
    role_response(&l, &rx.borrow(), answer)
}

/// What kind of `/role` document an answer is.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Answer {
    /// For an app that may act on it: 200, with the budget, which is recorded as handed out.
    Claim,
    /// For a reader that does not act on it (`?claim=false`): 200, no budget.
    Observe,
    /// `/leader`, the probe: 200 while this replica leads, 503 otherwise; no budget.
    Probe,
}

/// The `/role` document of the snapshot, built now. A claim's budget, if any, is recorded as
/// handed out.
fn role_response(l: &Listener, st: &Status, answer: Answer) -> Response {
    let now = Instant::now();
    let claim = answer == Answer::Claim;
    if claim
        && st.role.budget_at(now).is_some()
        && let Some(deadline) = st.role.deadline()
    {
        l.api.claims.record(deadline);
    }
    let code = match answer {
        Answer::Probe if !st.leads_at(now) => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::OK,
    };
    let body = l.role.body(st, now, claim);
    (code, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

async fn leader(State(l): State<Listener>) -> Response {
    role_response(&l, &l.api.status.borrow(), Answer::Probe)
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

/// Server-Sent Events: the current state first, then one `role` event per change (the `/role`
/// document, its version as the event id), and while this replica leads a `lease` event after
/// every successful keepalive (`valid_ms`, `fencing_token`, `version`): a stream that stays
/// silent past the last budget means stop. At most [`MAX_STREAMS`] per listener: the stream
/// holds its permit while open.
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
    let claims = s.claims.clone();
    let mut last_version = None;
    let stream = WatchStream::new(s.status.clone()).filter_map(move |st| {
        let _held = &permit;
        let now = Instant::now();
        let budget = st.role.budget_at(now);
        if budget.is_some()
            && let Some(deadline) = st.role.deadline()
        {
            claims.record(deadline);
        }
        let deadline_ns = budget
            .and(st.role.deadline())
            .map(|d| crate::clock::monotonic_ns_at(d).max(0) as u64);
        let event = if last_version != Some(st.version) {
            last_version = Some(st.version);
            let mut doc = st.doc(now);
            doc.deadline_monotonic_ns = deadline_ns;
            let doc = serde_json::to_string(&doc).expect("invariant: RoleDoc serialises");
            SseEvent::default()
                .event("role")
                .id(st.version.to_string())
                .data(doc)
        } else {
            // A renewal of the same version: only a leader's budget moved.
            let doc = doc::LeaseDoc {
                valid_ms: budget?.as_millis() as u64,
                deadline_monotonic_ns: deadline_ns?,
                fencing_token: st.fencing_token()?,
                version: st.version,
            };
            SseEvent::default()
                .event("lease")
                .data(serde_json::to_string(&doc).expect("invariant: LeaseDoc serialises"))
        };
        Some(Ok::<_, Infallible>(event))
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
                String::from_utf8(cache.body(st, now, true)).unwrap(),
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
            deadline: now + Duration::from_millis(1500),
        };
        st.version += 1;
        same(&st, "a new version");
        let body = String::from_utf8(cache.body(&st, now, true)).unwrap();
        assert!(body.contains(r#""valid_ms":1500,"#), "{body}");
        st.last_contact = Some(now - Duration::from_millis(3));
        same(&st, "the contact time moved silently");
        st.role = Role::Leader {
            token: 7,
            lease: 1,
            leader: leader.clone(),
            deadline: now + Duration::from_millis(1700),
        };
        same(&st, "a keepalive renewed the budget silently");
        let mut observed = st.doc(now);
        observed.valid_ms = None;
        assert_eq!(
            String::from_utf8(cache.body(&st, now, false)).unwrap(),
            String::from_utf8(render(&observed)).unwrap(),
            "an answer that is not a claim carries no budget"
        );
        let body = String::from_utf8(cache.body(&st, now, true)).unwrap();
        assert!(body.contains(r#""valid_ms":1700,"#), "{body}");
        st.role = Role::Leader {
            token: 7,
            lease: 1,
            leader: leader.clone(),
            deadline: now,
        };
        same(&st, "past the deadline: no claim, whatever the cache holds");
        let body = String::from_utf8(cache.body(&st, now, true)).unwrap();
        assert!(
            body.contains(r#""role":"candidate""#)
                && body.contains(r#""valid_ms":null"#)
                && body.contains(r#""fencing_token":null"#),
            "{body}"
        );
        st.role = Role::Suspect {
            token: 7,
            lease: 1,
            leader,
            deadline: now + Duration::from_secs(1),
            since: now - Duration::from_millis(500),
        };
        st.version += 1;
        same(&st, "suspect: rendered afresh");
        let body = String::from_utf8(cache.body(&st, now, true)).unwrap();
        assert!(body.contains(r#""valid_ms":1000,"#), "{body}");
        st.last_contact = None;
        st.role = Role::Candidate;
        st.version += 1;
        same(&st, "no contact");
    }
}
