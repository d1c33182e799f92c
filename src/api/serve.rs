//! Serving a router on a listener, with the limits `axum::serve` does not offer: a deadline for
//! a request's headers (slow or idle clients are cut off), caps on header and body size and on
//! open connections. Unix-socket connections carry the peer's credentials as `ConnectInfo<Peer>`.
//!
//! Probes must be answered whatever other clients do. So the connection cap is soft: at the cap a
//! new connection is still accepted, and the oldest open one is asked to close — at once if it
//! is idle, after its request if one is in flight. Only twice the cap stops accepting (clients
//! then wait in the listen backlog). Event streams, which never end on their own, are capped
//! apart (see `api::MAX_STREAMS`), so they cannot hold the room probes need.

use std::future::Future;
use std::pin::pin;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::connect_info::ConnectInfo;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::serve::Listener;
use hyper::body::{Body as _, Incoming};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use serde_json::json;
use std::collections::VecDeque;
use tokio::net::{TcpStream, UnixStream};

use tokio::sync::{oneshot, watch};
use tokio::task::JoinSet;
use tower::ServiceExt;
use tracing::{debug, warn};

use super::socket::Peer;

/// Largest request head (request line and headers) accepted; larger ones get 431.
pub const MAX_HEADER_BYTES: usize = 16 * 1024;

/// Largest request body accepted. No endpoint takes a body; this only tolerates clients that
/// send a small one anyway.
pub const MAX_BODY_BYTES: u64 = 4096;

/// Open connections per listener before the oldest are asked to close (the default for
/// [`Limits::max_connections`]).
pub const MAX_CONNECTIONS: usize = 512;

/// How long in-flight requests may run on after shutdown begins (a long poll or an event stream
/// is cut then).
const SHUTDOWN_GRACE: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Time a client has to send a request's headers, counted from the first byte it may send
    /// (so it also closes idle keep-alive connections).
    pub read_header_timeout: Duration,
    /// Open connections before the oldest are asked to close; at twice this, further clients
    /// wait in the listen backlog.
    pub max_connections: usize,
}

/// What a connection tells the handlers about its peer.
pub trait PeerInfo {
    fn peer(&self) -> Option<Peer>;
}

impl PeerInfo for TcpStream {
    fn peer(&self) -> Option<Peer> {
        None
    }
}

impl PeerInfo for UnixStream {
    fn peer(&self) -> Option<Peer> {
        Some(Peer::of(self))
    }
}

/// The response for a request whose body is refused before any handler runs: larger than
/// [`MAX_BODY_BYTES`] (413), or of unknown length (411: chunked bodies are not accepted).
fn body_refusal(req: &hyper::Request<Incoming>) -> Option<Response> {
    let refuse = |code: StatusCode, why: &str| {
        let body = json!({ "error": why });
        Some((code, axum::Json(body)).into_response())
    };
    match req.body().size_hint().upper() {
        Some(n) if n <= MAX_BODY_BYTES => None,
        Some(_) => refuse(
            StatusCode::PAYLOAD_TOO_LARGE,
            "request body larger than 4096 bytes (no endpoint takes a body)",
        ),
        None => refuse(
            StatusCode::LENGTH_REQUIRED,
            "request body without Content-Length (no endpoint takes a body)",
        ),
    }
}

/// Serve `router` on `listener` until `stop` completes, then let in-flight requests finish for up
/// to `SHUTDOWN_GRACE` and close the rest.
pub async fn serve<L>(
    mut listener: L,
    router: Router,
    limits: Limits,
    stop: impl Future<Output = ()>,
) where
    L: Listener,
    L::Io: PeerInfo,
{
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.read_header_timeout)
        .max_header_size(MAX_HEADER_BYTES);
    let (closing_tx, closing_rx) = watch::channel(false);
    let mut conns = JoinSet::new();
    // Each open connection's "please close", oldest first.
    let mut open: VecDeque<oneshot::Sender<()>> = VecDeque::new();
    let mut stop = pin!(stop);
    loop {
        tokio::select! {
            _ = &mut stop => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            (io, _) = listener.accept(), if conns.len() < 2 * limits.max_connections => {
                open.retain(|c| !c.is_closed());
                if conns.len() >= limits.max_connections {
                    // Make room: the oldest connection closes (at once if idle).
                    if let Some(oldest) = open.pop_front() {
                        let _ = oldest.send(());
                    }
                }
                let (close_tx, close_rx) = oneshot::channel::<()>();
                open.push_back(close_tx);
                let peer = io.peer();
                let router = router.clone();
                let service = tower::service_fn(move |req: hyper::Request<Incoming>| {
                    let refusal = body_refusal(&req);
                    let mut req = req.map(Body::new);
                    if let Some(peer) = peer {
                        req.extensions_mut().insert(ConnectInfo(peer));
                    }
                    let router = router.clone();
                    async move {
                        match refusal {
                            Some(response) => Ok(response),
                            None => router.oneshot(req).await,
                        }
                    }
                });
                let conn = http.serve_connection(TokioIo::new(io), TowerToHyperService::new(service));
                let mut closing = closing_rx.clone();
                conns.spawn(async move {
                    let mut conn = pin!(conn);
                    let closing = async move {
                        tokio::select! {
                            _ = closing.wait_for(|c| *c) => {}
                            Ok(()) = close_rx => {}
                        }
                    };
                    let result = tokio::select! {
                        r = conn.as_mut() => r,
                        () = closing => {
                            conn.as_mut().graceful_shutdown();
                            conn.await
                        }
                    };
                    if let Err(e) = result {
                        debug!(error = %e, "API connection closed");
                    }
                });
            }
        }
    }
    drop(listener);
    let _ = closing_tx.send(true);
    let drained = tokio::time::timeout(SHUTDOWN_GRACE, async {
        while conns.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        warn!(
            open = conns.len(),
            "API connections still busy at shutdown; closing them"
        );
    }
    // Dropping the set aborts what is left.
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use axum::routing::get;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, UnixListener};
    use tokio::sync::oneshot;

    use super::*;

    fn app() -> Router {
        Router::new()
            .route("/", get(|| async { "ok" }))
            .route(
                "/slow",
                get(|| async {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    "ok"
                }),
            )
            .route(
                "/peer",
                get(
                    |peer: Option<axum::Extension<ConnectInfo<Peer>>>| async move {
                        match peer {
                            Some(p) => format!("uid={}", p.0.0.uid),
                            None => "none".to_string(),
                        }
                    },
                ),
            )
    }

    struct Server {
        addr: std::net::SocketAddr,
        stop: Option<oneshot::Sender<()>>,
        task: tokio::task::JoinHandle<()>,
    }

    async fn start(read_header_timeout: Duration, max_connections: usize) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = oneshot::channel::<()>();
        let limits = Limits {
            read_header_timeout,
            max_connections,
        };
        let task = tokio::spawn(serve(listener, app(), limits, async move {
            let _ = rx.await;
        }));
        Server {
            addr,
            stop: Some(tx),
            task,
        }
    }

    const GET: &[u8] = b"GET / HTTP/1.1\r\nHost: t\r\n\r\n";

    /// Read until the response to one request is complete (`ok` body) or the peer closes.
    async fn read_response(s: &mut (impl AsyncReadExt + Unpin)) -> String {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 1024];
        loop {
            let n = s.read(&mut chunk).await.unwrap_or(0);
            buf.extend_from_slice(&chunk[..n]);
            let text = String::from_utf8_lossy(&buf).to_string();
            if n == 0 || text.ends_with("\r\n\r\nok") {
                return text;
            }
        }
    }

    /// Wait for the server to close `s`; returns what it sent before closing.
    async fn read_to_close(s: &mut TcpStream, within: Duration) -> String {
        let mut buf = Vec::new();
        tokio::time::timeout(within, s.read_to_end(&mut buf))
            .await
            .expect("the server should have closed the connection")
            .ok();
        String::from_utf8_lossy(&buf).to_string()
    }

    #[tokio::test]
    async fn a_client_that_stalls_in_its_headers_is_cut_off_after_the_timeout() {
        let server = start(Duration::from_millis(300), 8).await;
        let mut slow = TcpStream::connect(server.addr).await.unwrap();
        let began = Instant::now();
        slow.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n")
            .await
            .unwrap();
        let sent = read_to_close(&mut slow, Duration::from_secs(5)).await;
        assert!(
            began.elapsed() >= Duration::from_millis(300),
            "closed after {:?}, before the timeout",
            began.elapsed()
        );
        assert!(!sent.contains("200 OK"), "{sent}");
        // Other clients are served meanwhile and after.
        let mut fine = TcpStream::connect(server.addr).await.unwrap();
        fine.write_all(GET).await.unwrap();
        assert!(read_response(&mut fine).await.starts_with("HTTP/1.1 200"));
    }

    #[tokio::test]
    async fn a_request_whose_headers_arrive_in_pieces_within_the_timeout_is_answered() {
        let server = start(Duration::from_secs(2), 8).await;
        let mut s = TcpStream::connect(server.addr).await.unwrap();
        s.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        s.write_all(b"Host: t\r\n\r\n").await.unwrap();
        let response = read_response(&mut s).await;
        assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    }

    #[tokio::test]
    async fn an_idle_keep_alive_connection_is_closed_after_the_timeout() {
        let server = start(Duration::from_millis(300), 8).await;
        let mut s = TcpStream::connect(server.addr).await.unwrap();
        s.write_all(GET).await.unwrap();
        assert!(read_response(&mut s).await.starts_with("HTTP/1.1 200"));
        let idle = Instant::now();
        let after = read_to_close(&mut s, Duration::from_secs(5)).await;
        assert!(after.is_empty(), "{after}");
        assert!(idle.elapsed() >= Duration::from_millis(300));
    }

    #[tokio::test]
    async fn oversized_headers_are_refused_with_431() {
        let server = start(Duration::from_secs(5), 8).await;
        let mut s = TcpStream::connect(server.addr).await.unwrap();
        let big = "x".repeat(MAX_HEADER_BYTES + 1);
        let request = format!("GET / HTTP/1.1\r\nHost: t\r\nX-Big: {big}\r\n\r\n");
        let _ = s.write_all(request.as_bytes()).await;
        let response = read_to_close(&mut s, Duration::from_secs(5)).await;
        assert!(response.starts_with("HTTP/1.1 431"), "{response}");
        // Headers just under the cap are fine.
        let mut s = TcpStream::connect(server.addr).await.unwrap();
        let ok = "x".repeat(MAX_HEADER_BYTES / 2);
        let request = format!("GET / HTTP/1.1\r\nHost: t\r\nX-Big: {ok}\r\n\r\n");
        s.write_all(request.as_bytes()).await.unwrap();
        assert!(read_response(&mut s).await.starts_with("HTTP/1.1 200"));
    }

    #[tokio::test]
    async fn bodies_over_the_cap_or_without_a_length_are_refused_before_routing() {
        let server = start(Duration::from_secs(5), 8).await;
        let send = |request: String| async move {
            let mut s = TcpStream::connect(server.addr).await.unwrap();
            s.write_all(request.as_bytes()).await.unwrap();
            let mut response = String::new();
            let _ = s.read_to_string(&mut response).await;
            response
        };
        let with_length = |n: usize| {
            format!(
                "GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\nContent-Length: {n}\r\n\r\n{}",
                "x".repeat(n)
            )
        };
        let limit = MAX_BODY_BYTES as usize;
        assert!(send(with_length(limit)).await.starts_with("HTTP/1.1 200"));
        let too_big = send(with_length(limit + 1)).await;
        assert!(too_big.starts_with("HTTP/1.1 413"), "{too_big}");
        assert!(too_big.contains("4096 bytes"), "{too_big}");
        let chunked = send(
            "GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nx\r\n0\r\n\r\n"
                .to_string(),
        )
        .await;
        assert!(chunked.starts_with("HTTP/1.1 411"), "{chunked}");
    }

    #[tokio::test]
    async fn at_the_cap_the_oldest_connection_closes_and_a_new_client_is_served_at_once() {
        let server = start(Duration::from_secs(30), 2).await;
        // Two idle keep-alive connections fill the cap.
        let mut idle = Vec::new();
        for _ in 0..2 {
            let mut s = TcpStream::connect(server.addr).await.unwrap();
            s.write_all(GET).await.unwrap();
            assert!(read_response(&mut s).await.starts_with("HTTP/1.1 200"));
            idle.push(s);
        }
        // A probe is served at once, not after the idle ones' header timeout (30 s).
        let began = Instant::now();
        let mut probe = TcpStream::connect(server.addr).await.unwrap();
        probe.write_all(GET).await.unwrap();
        let answer = tokio::time::timeout(Duration::from_secs(1), read_response(&mut probe))
            .await
            .expect("answered within a second at the cap");
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(began.elapsed() < Duration::from_secs(1));
        // ...and the oldest idle connection was closed to make room, the other one kept.
        let closed = read_to_close(&mut idle[0], Duration::from_secs(2)).await;
        assert!(closed.is_empty(), "{closed}");
        idle[1].write_all(GET).await.unwrap();
        assert!(
            read_response(&mut idle[1])
                .await
                .starts_with("HTTP/1.1 200")
        );
    }

    #[tokio::test]
    async fn at_twice_the_cap_clients_wait_until_one_closes() {
        let server = start(Duration::from_secs(30), 1).await;
        // A request in flight: asked to close, its connection finishes the request first.
        let mut busy = TcpStream::connect(server.addr).await.unwrap();
        busy.write_all(b"GET /slow HTTP/1.1\r\nHost: t\r\n\r\n")
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        let _quiet = TcpStream::connect(server.addr).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        // Twice the cap: the kernel completes the handshake, but electd does not take it yet.
        let began = Instant::now();
        let mut waiting = TcpStream::connect(server.addr).await.unwrap();
        waiting.write_all(GET).await.unwrap();
        let response = tokio::time::timeout(Duration::from_secs(5), read_response(&mut waiting))
            .await
            .expect("served once the busy connection finished and closed");
        assert!(response.starts_with("HTTP/1.1 200"), "{response}");
        assert!(
            began.elapsed() >= Duration::from_millis(500),
            "taken beyond twice the cap after {:?}",
            began.elapsed()
        );
        let slow = read_to_close(&mut busy, Duration::from_secs(2)).await;
        assert!(
            slow.contains("200 OK"),
            "the request in flight was finished: {slow}"
        );
    }

    #[tokio::test]
    async fn shutdown_stops_accepting_and_closes_idle_connections() {
        let mut server = start(Duration::from_secs(30), 8).await;
        let mut idle = TcpStream::connect(server.addr).await.unwrap();
        idle.write_all(GET).await.unwrap();
        assert!(read_response(&mut idle).await.starts_with("HTTP/1.1 200"));
        server.stop.take().unwrap().send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(5), &mut server.task)
            .await
            .expect("serve returns after the stop signal")
            .unwrap();
        let after = read_to_close(&mut idle, Duration::from_secs(5)).await;
        assert!(after.is_empty(), "{after}");
        assert!(TcpStream::connect(server.addr).await.is_err());
    }

    #[tokio::test]
    async fn socket_connections_carry_the_peer_credentials_and_tcp_ones_none() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let limits = Limits {
            read_header_timeout: Duration::from_secs(5),
            max_connections: 8,
        };
        tokio::spawn(serve(listener, app(), limits, std::future::pending()));
        let mut s = UnixStream::connect(&path).await.unwrap();
        s.write_all(b"GET /peer HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut response = String::new();
        s.read_to_string(&mut response).await.unwrap();
        let uid = nix::unistd::geteuid().as_raw();
        assert!(response.ends_with(&format!("uid={uid}")), "{response}");

        let server = start(Duration::from_secs(5), 8).await;
        let mut s = TcpStream::connect(server.addr).await.unwrap();
        s.write_all(b"GET /peer HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut response = String::new();
        s.read_to_string(&mut response).await.unwrap();
        assert!(response.ends_with("none"), "{response}");
    }
}
