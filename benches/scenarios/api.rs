//! Scenario: `GET /role` throughput, latency and server CPU per request over HTTP and over the
//! Unix socket, next to a bare axum server that answers the same bytes as a constant JSON body.
//!
//! The load generator is raw HTTP/1.1 with keep-alive on tokio: each client sends one request
//! at a time on its own connection and reads the response by its Content-Length. Every round
//! measures every target once, for a short while, in an order that alternates from round to
//! round; ratios are taken within a round and reported as the median over rounds, so drift in
//! what else the machine does cancels out.
//!
//! To tell where electd's extra time per request goes, the in-process targets cross the two
//! things that differ from the baseline: the router (electd's `api::router`, which renders
//! `/role` from the status snapshot per request, or a bare one with a constant body) and the
//! connection loop (electd's `api::serve::serve` with its limits, or `axum::serve`). The
//! router is also timed without any socket (`tower` oneshot), and the render on its own.

use std::future::IntoFuture;
use std::hint::black_box;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use axum::Router;
use axum::http::header;
use axum::routing::get;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;
use tower::ServiceExt;

use electd::api::serve::{Limits, MAX_CONNECTIONS, serve};
use electd::api::socket::AllowList;
use electd::api::{ApiState, Transport};
use electd::election::role::Role;
use electd::election::{LeaderInfo, MemberInfo};
use electd::metrics::Metrics;
use electd::status::Status;

use super::report::{Page, RowSpec, num, quantile, spec};
use super::trace::{clock_ticks_per_second, stat_at};
use super::{BenchConfig, Section, SectionData, Value, attempt, electd_spec, start_helper};
use crate::common::{Etcd, http_get, wait_child_timeout, wait_until};

#[derive(Debug, Clone)]
pub enum Target {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

/// What a load client sends and waits for, one at a time on its connection.
#[derive(Debug, Clone, Copy)]
pub enum Exchange {
    /// `GET path` over HTTP/1.1 keep-alive; the response is read by its Content-Length.
    HttpGet(&'static str),
    /// One line out, one line back (the routing scenario's name app).
    Line,
}

/// What one load run measured.
#[derive(Debug, Default)]
pub struct Load {
    pub requests: u64,
    pub errors: u64,
    pub seconds: f64,
    /// Per-request latency in milliseconds.
    pub latencies: Vec<f64>,
    /// The server's CPU time over the measured window, in seconds.
    pub server_cpu: Option<f64>,
}

impl Load {
    pub fn rps(&self) -> f64 {
        self.requests as f64 / self.seconds
    }

    /// The server's CPU time per answered request, in microseconds.
    pub fn cpu_us(&self) -> Option<f64> {
        let cpu = self.server_cpu?;
        (self.requests > 0).then(|| cpu / self.requests as f64 * 1e6)
    }
}

/// Whose CPU time a load run charges to the server.
#[derive(Debug, Clone, Copy)]
pub enum CpuOf {
    Process(u32),
    /// A thread of this process (an in-process server's runtime thread).
    Thread(i32),
}

impl CpuOf {
    fn seconds(self) -> Option<f64> {
        let path = match self {
            CpuOf::Process(pid) => pid.to_string(),
            CpuOf::Thread(tid) => format!("{}/task/{tid}", std::process::id()),
        };
        stat_at(&path).map(|(_, t)| t as f64 / clock_ticks_per_second())
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// One GET of `request` (a whole request head) on a keep-alive connection; `buf` keeps bytes
/// read past the response.
async fn http_get_keepalive<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    request: &[u8],
    buf: &mut Vec<u8>,
) -> std::io::Result<()> {
    let bad = |m: String| std::io::Error::new(std::io::ErrorKind::InvalidData, m);
    s.write_all(request).await?;
    loop {
        if let Some(end) = find(buf, b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_string();
            if !head.starts_with("HTTP/1.1 200") {
                return Err(bad(format!("unexpected response: {head:?}")));
            }
            let len: usize = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse().ok())?
                })
                .ok_or_else(|| bad(format!("no Content-Length: {head:?}")))?;
            let need = end + 4 + len;
            while buf.len() < need {
                buf.reserve(4096);
                if s.read_buf(buf).await? == 0 {
                    return Err(std::io::ErrorKind::UnexpectedEof.into());
                }
            }
            buf.drain(..need);
            return Ok(());
        }
        buf.reserve(4096);
        if s.read_buf(buf).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
    }
}

/// One line out, one line back on a kept connection; `buf` keeps bytes read past the line.
async fn line_exchange<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    buf: &mut Vec<u8>,
) -> std::io::Result<()> {
    s.write_all(b"?\n").await?;
    loop {
        if let Some(end) = buf.iter().position(|b| *b == b'\n') {
            buf.drain(..=end);
            return Ok(());
        }
        buf.reserve(4096);
        if s.read_buf(buf).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
    }
}

/// One client: requests back to back; counts and times those that start inside the window.
async fn client<S: AsyncRead + AsyncWrite + Unpin>(
    mut s: S,
    exchange: Exchange,
    from: Instant,
    until: Instant,
) -> Load {
    let mut load = Load::default();
    let mut buf = Vec::with_capacity(8192);
    let request = match exchange {
        Exchange::HttpGet(path) => {
            format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nAccept: */*\r\n\r\n")
        }
        Exchange::Line => String::new(),
    };
    loop {
        let t = Instant::now();
        if t >= until {
            break;
        }
        let ok = match exchange {
            Exchange::HttpGet(_) => http_get_keepalive(&mut s, request.as_bytes(), &mut buf).await,
            Exchange::Line => line_exchange(&mut s, &mut buf).await,
        }
        .is_ok();
        if t < from {
            if !ok {
                break;
            }
            continue;
        }
        if ok {
            load.requests += 1;
            load.latencies.push(t.elapsed().as_secs_f64() * 1e3);
        } else {
            load.errors += 1;
            break;
        }
    }
    load
}

/// `clients` concurrent clients, each on one kept connection, doing `exchange` back to back
/// for `warmup + duration`; measures `duration`, and the CPU time of `cpu` if given.
pub async fn run_load(
    target: Target,
    cpu: Option<CpuOf>,
    exchange: Exchange,
    clients: usize,
    warmup: Duration,
    duration: Duration,
) -> Load {
    let from = Instant::now() + warmup;
    let until = from + duration;
    let cpu_probe = tokio::spawn(async move {
        let cpu = cpu?;
        tokio::time::sleep_until(from).await;
        let a = cpu.seconds();
        tokio::time::sleep_until(until).await;
        Some(cpu.seconds()? - a?)
    });
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let target = target.clone();
        tasks.push(tokio::spawn(async move {
            match target {
                Target::Tcp(addr) => match tokio::net::TcpStream::connect(addr).await {
                    Ok(s) => {
                        let _ = s.set_nodelay(true);
                        client(s, exchange, from, until).await
                    }
                    Err(_) => Load {
                        errors: 1,
                        ..Load::default()
                    },
                },
                Target::Unix(socket) => match tokio::net::UnixStream::connect(&socket).await {
                    Ok(s) => client(s, exchange, from, until).await,
                    Err(_) => Load {
                        errors: 1,
                        ..Load::default()
                    },
                },
            }
        }));
    }
    let mut total = Load {
        seconds: duration.as_secs_f64(),
        ..Load::default()
    };
    for t in tasks {
        let l = t.await.unwrap_or_default();
        total.requests += l.requests;
        total.errors += l.errors;
        total.latencies.extend(l.latencies);
    }
    total.server_cpu = cpu_probe.await.ok().flatten();
    total
}

/// Which router an in-process server serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RouterKind {
    /// `electd::api::router` over a fixed leader status (renders `/role` per request).
    Electd,
    /// A bare axum router answering `/role` with a constant body.
    Bare,
}

/// Which connection loop an in-process server runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Loop {
    /// `electd::api::serve::serve`: header timeout, size and connection limits, peer
    /// credentials on the Unix socket.
    Electd,
    /// `axum::serve`.
    Axum,
}

/// A fixed leader's status, as electd publishes it, and its API state.
fn fixed_state() -> (ApiState, Box<dyn std::any::Any + Send>) {
    let now = Instant::now();
    let leader = LeaderInfo {
        id: "a".into(),
        key: "api/694d8a1c2f0b3e05".into(),
        create_revision: 42,
        member: Some(MemberInfo::new("a", Some("127.0.0.1:4040".into()))),
    };
    let mut status = Status::new("a", "api", false);
    status.role = Role::Leader {
        token: 42,
        lease: 0x694d_8a1c_2f0b_3e05,
        leader,
        deadline: now + Duration::from_secs(24 * 3600),
    };
    status.reachable = true;
    status.last_contact = Some(now);
    status.version = 3;
    let (status_tx, status_rx) = tokio::sync::watch::channel(status);
    let (control_tx, control_rx) = tokio::sync::mpsc::channel(8);
    let state = ApiState {
        status: status_rx,
        control: control_tx,
        metrics: Metrics::new(),
        members: None,
        ready: electd::api::Ready::default(),
        claims: Default::default(),
        allow: AllowList {
            uids: Vec::new(),
            gids: Vec::new(),
        },
    };
    // The owner's ends must live as long as the routers.
    (state, Box::new((status_tx, control_rx)))
}

/// The bare baseline router: `GET /role` answers `body` as `application/json`.
fn bare_router(body: &'static str) -> Router {
    Router::new().route(
        "/role",
        get(move || async move { ([(header::CONTENT_TYPE, "application/json")], body) }),
    )
}

/// The routers for the TCP and the Unix listener, and what must outlive them.
fn routers(
    kind: RouterKind,
    body: &'static str,
) -> (Router, Router, Box<dyn std::any::Any + Send>) {
    match kind {
        RouterKind::Bare => (bare_router(body), bare_router(body), Box::new(())),
        RouterKind::Electd => {
            let (state, keep) = fixed_state();
            (
                electd::api::router(state.clone(), Transport::Tcp),
                electd::api::router(state, Transport::Unix),
                keep,
            )
        }
    }
}

/// A server on a current-thread runtime on its own thread in this process (electd's runtime
/// is current-thread too), listening on loopback TCP and on a Unix socket.
struct InProcess {
    tcp: SocketAddr,
    socket: PathBuf,
    /// The server thread, whose CPU time is the server's.
    tid: i32,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl InProcess {
    fn start(kind: RouterKind, serve_loop: Loop, body: &'static str, socket: &Path) -> InProcess {
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").expect("bind loopback");
        tcp.set_nonblocking(true).expect("nonblocking");
        let addr = tcp.local_addr().expect("local addr");
        let unix = std::os::unix::net::UnixListener::bind(socket).expect("bind socket");
        unix.set_nonblocking(true).expect("nonblocking");
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let (tid_tx, tid_rx) = std::sync::mpsc::channel();
        let thread = std::thread::Builder::new()
            .name(format!("{kind:?}-{serve_loop:?}").to_lowercase())
            .spawn(move || {
                let _ = tid_tx.send(nix::unistd::gettid().as_raw());
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("server runtime");
                rt.block_on(async move {
                    let tcp = tokio::net::TcpListener::from_std(tcp).expect("listener");
                    let unix = tokio::net::UnixListener::from_std(unix).expect("listener");
                    let (http, sock, keep) = routers(kind, body);
                    match serve_loop {
                        Loop::Axum => {
                            tokio::spawn(axum::serve(tcp, http).into_future());
                            tokio::spawn(axum::serve(unix, sock).into_future());
                        }
                        Loop::Electd => {
                            // Served the way the daemon serves it: same limits.
                            let limits = Limits {
                                read_header_timeout: Duration::from_secs(10),
                                max_connections: MAX_CONNECTIONS,
                            };
                            let forever = std::future::pending::<()>;
                            tokio::spawn(serve(tcp, http, limits, forever()));
                            tokio::spawn(serve(unix, sock, limits, forever()));
                        }
                    }
                    let _ = rx.await;
                    drop(keep);
                });
            })
            .expect("spawn server thread");
        InProcess {
            tcp: addr,
            socket: socket.to_path_buf(),
            tid: tid_rx.recv().expect("server thread id"),
            shutdown: Some(tx),
            thread: Some(thread),
        }
    }
}

impl Drop for InProcess {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Set in the environment of the baseline's own process: a directory holding `body`; the
/// process listens on `baseline.sock` there and writes its TCP address to `addr`.
pub const BASELINE_ENV: &str = "ELECTD_BENCH_AXUM_BASELINE";

/// In a process started as the baseline (see [`BASELINE_ENV`]): serve until stdin closes and
/// return true. Anywhere else: return false at once.
pub fn serve_baseline_if_asked() -> bool {
    let Some(dir) = std::env::var_os(BASELINE_ENV).map(PathBuf::from) else {
        return false;
    };
    let body = std::fs::read_to_string(dir.join("body")).expect("baseline body");
    let server = InProcess::start(
        RouterKind::Bare,
        Loop::Axum,
        body.leak(),
        &dir.join("baseline.sock"),
    );
    let tmp = dir.join("addr.tmp");
    std::fs::write(&tmp, server.tcp.to_string()).expect("write baseline address");
    std::fs::rename(&tmp, dir.join("addr")).expect("publish baseline address");
    let _ = std::io::copy(&mut std::io::stdin(), &mut std::io::sink());
    true
}

/// The bare axum baseline in a process of its own, as electd is: this executable re-run as a
/// helper with [`BASELINE_ENV`]; it stops when its stdin closes.
struct BaselineProcess {
    child: std::process::Child,
    tcp: SocketAddr,
    socket: PathBuf,
}

impl BaselineProcess {
    fn start(cfg: &BenchConfig, body: &str, dir: &Path) -> BaselineProcess {
        let dir = dir.join("baseline-process");
        std::fs::create_dir_all(&dir).expect("baseline dir");
        std::fs::write(dir.join("body"), body).expect("write baseline body");
        let child = start_helper(cfg, &[(BASELINE_ENV, &dir)], std::process::Stdio::piped());
        let addr = dir.join("addr");
        wait_until(
            Duration::from_secs(20),
            "the baseline process to listen",
            || addr.exists(),
        );
        let tcp = std::fs::read_to_string(&addr)
            .expect("read baseline address")
            .parse()
            .expect("baseline address");
        BaselineProcess {
            child,
            tcp,
            socket: dir.join("baseline.sock"),
        }
    }
}

impl Drop for BaselineProcess {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        if !wait_child_timeout(&mut self.child, Duration::from_secs(5)) {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// The targets, in the order of [`Measured::rps`]'s inner index.
const TARGETS: [&str; 6] = [
    "electd",
    "axum process",
    "electd router on electd serve, in-process",
    "bare router on axum::serve, in-process",
    "electd router on axum::serve, in-process",
    "bare router on electd serve, in-process",
];

/// Everything the role API scenario measured.
#[derive(Default)]
struct Measured {
    /// [transport: HTTP, Unix][target: see TARGETS], one sample per round.
    rps: [[Vec<f64>; 6]; 2],
    /// Server CPU per request (µs), one sample per round.
    cpu_us: [[Vec<f64>; 6]; 2],
    lat: [[Vec<f64>; 6]; 2],
    healthz: Vec<f64>,
    errors: u64,
    body_len: usize,
    micro: Micro,
}

/// Nanoseconds per operation, one sample per repetition.
#[derive(Default)]
struct Micro {
    /// One `GET /role` through electd's router and through the bare router (tower oneshot,
    /// no socket, response body collected).
    oneshot: [Vec<f64>; 2],
    /// `GET /healthz` through electd's router.
    oneshot_healthz: Vec<f64>,
    /// `Status::doc(now)` serialised with serde_json into a fresh buffer, as `/role` does.
    render: Vec<f64>,
    /// The same document with the `since` field alone formatted (RFC 3339, milliseconds).
    since: Vec<f64>,
    /// `Instant::now()`.
    now: Vec<f64>,
}

/// Time `op` over `n` calls; nanoseconds per call.
fn per_call(n: u32, mut op: impl FnMut()) -> f64 {
    let t = std::time::Instant::now();
    for _ in 0..n {
        op();
    }
    t.elapsed().as_secs_f64() * 1e9 / f64::from(n)
}

/// Time the router and the render without any socket, on a current-thread runtime.
fn micro(body: &'static str, reps: usize, n: u32) -> Micro {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut m = Micro::default();
    rt.block_on(async {
        let (state, _keep) = fixed_state();
        let electd = electd::api::router(state.clone(), Transport::Tcp);
        let bare = bare_router(body);
        let get = |path: &str| {
            axum::http::Request::get(path)
                .body(axum::body::Body::empty())
                .expect("request")
        };
        async fn timed(
            router: &Router,
            n: u32,
            req: impl Fn() -> axum::http::Request<axum::body::Body>,
        ) -> f64 {
            let t = std::time::Instant::now();
            for _ in 0..n {
                let resp = router.clone().oneshot(req()).await.expect("infallible");
                let b = axum::body::to_bytes(resp.into_body(), usize::MAX)
                    .await
                    .expect("body");
                black_box(b);
            }
            t.elapsed().as_secs_f64() * 1e9 / f64::from(n)
        }
        let status = state.status.borrow().clone();
        for _ in 0..reps {
            m.oneshot[0].push(timed(&electd, n, || get("/role")).await);
            m.oneshot[1].push(timed(&bare, n, || get("/role")).await);
            m.oneshot_healthz
                .push(timed(&electd, n, || get("/healthz")).await);
            m.render.push(per_call(n, || {
                let mut buf = Vec::with_capacity(512);
                serde_json::to_writer(&mut buf, &status.doc(Instant::now())).expect("serialises");
                black_box(buf);
            }));
            m.since.push(per_call(n, || {
                let mut buf = Vec::with_capacity(32);
                serde_json::to_writer(&mut buf, &status.doc(Instant::now()).since)
                    .expect("serialises");
                black_box(buf);
            }));
            m.now.push(per_call(n, || {
                black_box(Instant::now());
            }));
        }
    });
    m
}

/// Set to `electd-role`, `bare-role`, `electd-healthz` or `render`, optionally with `:N`
/// (default 200000): run N `GET`s through that router without any socket (or N renders of the
/// `/role` body), then exit. A loop to profile: `scripts/profile-role.sh` runs it under
/// callgrind, collecting only inside [`profile_loop`].
pub const PROFILE_ENV: &str = "ELECTD_BENCH_PROFILE";

/// In a process started with [`PROFILE_ENV`]: run the loop and return true.
pub fn profile_if_asked() -> bool {
    let Ok(what) = std::env::var(PROFILE_ENV) else {
        return false;
    };
    let (what, n) = match what.split_once(':') {
        Some((w, n)) => (w.to_string(), n.parse().expect("a request count")),
        None => (what, 200_000u32),
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let _guard = rt.enter();
    let (state, _keep) = fixed_state();
    let status = state.status.borrow().clone();
    let body: &'static str = {
        let mut b = Vec::new();
        serde_json::to_writer(&mut b, &status.doc(Instant::now())).expect("serialises");
        String::from_utf8(b).expect("JSON is UTF-8").leak()
    };
    let (router, path) = match what.as_str() {
        "electd-role" => (electd::api::router(state, Transport::Tcp), "/role"),
        "electd-healthz" => (electd::api::router(state, Transport::Tcp), "/healthz"),
        "bare-role" => (bare_router(body), "/role"),
        "render" => {
            let t = std::time::Instant::now();
            render_loop(&status, n);
            eprintln!(
                "{what}: {:.0} ns per render",
                t.elapsed().as_nanos() as f64 / f64::from(n)
            );
            return true;
        }
        other => panic!("{PROFILE_ENV}: unknown loop {other:?}"),
    };
    // Warm up outside the profiled function.
    rt.block_on(async {
        for _ in 0..1_000 {
            one_request(&router, path).await;
        }
    });
    let t = std::time::Instant::now();
    profile_loop(&rt, &router, path, n);
    eprintln!(
        "{what}: {:.0} ns per request",
        t.elapsed().as_nanos() as f64 / f64::from(n)
    );
    true
}

/// The profiled loop (callgrind collects only inside it): `n` requests for `path`, driven on
/// `rt` from here so that every poll runs under this function.
#[inline(never)]
fn profile_loop(rt: &tokio::runtime::Runtime, router: &Router, path: &str, n: u32) {
    rt.block_on(async {
        for _ in 0..n {
            one_request(router, path).await;
        }
    });
}

/// One request for `path` through `router`, its response body collected.
async fn one_request(router: &Router, path: &str) {
    let req = axum::http::Request::get(path)
        .body(axum::body::Body::empty())
        .expect("request");
    let resp = router.clone().oneshot(req).await.expect("infallible");
    let b = axum::body::to_bytes(resp.into_body(), usize::MAX)
        .await
        .expect("body");
    black_box(b);
}

/// `n` renders of the `/role` body, as the handler does.
#[inline(never)]
fn render_loop(status: &Status, n: u32) {
    for _ in 0..n {
        let mut buf = Vec::with_capacity(512);
        serde_json::to_writer(&mut buf, &status.doc(Instant::now())).expect("serialises");
        black_box(buf);
    }
}

fn measure(cfg: &BenchConfig) -> Measured {
    let etcd = Etcd::start();
    let dir = tempfile::Builder::new()
        .prefix("electd-bench-api-")
        .tempdir()
        .expect("temp dir");
    let d = electd_spec(cfg, &etcd.endpoint(), "api", "a").start();
    d.wait_role("leader", Duration::from_secs(20));
    let (code, body) = http_get(&d.http, "/role").expect("GET /role");
    assert_eq!(code, 200, "GET /role: {body}");
    let mut m = Measured {
        body_len: body.len(),
        ..Measured::default()
    };
    let process = BaselineProcess::start(cfg, &body, dir.path());
    let body: &'static str = body.leak();
    let inproc = [
        (RouterKind::Electd, Loop::Electd),
        (RouterKind::Bare, Loop::Axum),
        (RouterKind::Electd, Loop::Axum),
        (RouterKind::Bare, Loop::Electd),
    ]
    .iter()
    .enumerate()
    .map(|(i, (k, l))| InProcess::start(*k, *l, body, &dir.path().join(format!("s{i}.sock"))))
    .collect::<Vec<_>>();
    let mut targets: [Vec<(Target, CpuOf)>; 2] = [
        vec![
            (
                Target::Tcp(d.http.parse().expect("electd http addr")),
                CpuOf::Process(d.pid()),
            ),
            (Target::Tcp(process.tcp), CpuOf::Process(process.child.id())),
        ],
        vec![
            (Target::Unix(d.socket.clone()), CpuOf::Process(d.pid())),
            (
                Target::Unix(process.socket.clone()),
                CpuOf::Process(process.child.id()),
            ),
        ],
    ];
    for s in &inproc {
        targets[0].push((Target::Tcp(s.tcp), CpuOf::Thread(s.tid)));
        targets[1].push((Target::Unix(s.socket.clone()), CpuOf::Thread(s.tid)));
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("load runtime");
    let load = |(t, cpu): &(Target, CpuOf), path| {
        rt.block_on(run_load(
            t.clone(),
            Some(*cpu),
            Exchange::HttpGet(path),
            cfg.api_clients,
            cfg.api_warmup,
            cfg.api_duration,
        ))
    };
    for round in 0..cfg.api_rounds {
        // Alternate the order from round to round, so neither side of a pair always goes first.
        let mut order: Vec<(usize, usize)> = (0..2)
            .flat_map(|ti| (0..TARGETS.len()).map(move |k| (ti, k)))
            .collect();
        if round % 2 == 1 {
            order.reverse();
        }
        for (ti, k) in order {
            let l = load(&targets[ti][k], "/role");
            cfg.progress(&format!(
                "api round {round} {} {}: {:.0} req/s, {} µs CPU per request",
                ["http", "unix"][ti],
                TARGETS[k],
                l.rps(),
                l.cpu_us().map_or("?".into(), num),
            ));
            m.errors += l.errors;
            m.rps[ti][k].push(l.rps());
            if let Some(c) = l.cpu_us() {
                m.cpu_us[ti][k].push(c);
            }
            m.lat[ti][k].extend(l.latencies);
        }
        let l = load(&targets[0][0], "/healthz");
        m.errors += l.errors;
        m.healthz.push(l.rps());
    }
    drop(rt);
    let reps = if cfg.api_rounds >= 5 { 5 } else { 1 };
    m.micro = micro(body, reps, micro_calls(cfg));
    m
}

/// Calls per repetition of the no-socket loops: fewer in a short run.
fn micro_calls(cfg: &BenchConfig) -> u32 {
    if cfg.api_rounds >= 5 { 100_000 } else { 2_000 }
}

pub fn role_api(cfg: &BenchConfig) -> Section {
    let mut s = Section::new("api");
    s.expected = cfg.api_rounds;
    let m = match attempt(|| measure(cfg)) {
        Ok(m) => m,
        Err(e) => {
            s.failures.push(e);
            return s;
        }
    };
    let ratio =
        |a: &[f64], b: &[f64]| -> Vec<f64> { a.iter().zip(b).map(|(x, y)| x / y).collect() };
    let diff = |a: &[f64], b: &[f64]| -> Vec<f64> { a.iter().zip(b).map(|(x, y)| x - y).collect() };
    for (ti, t) in TRANSPORTS.iter().enumerate() {
        let id = |row: &str| format!("{row}_{}", t.suffix);
        let rps = |k: usize| Value::Samples(m.rps[ti][k].clone());
        let cpu = |k: usize| Value::Samples(m.cpu_us[ti][k].clone());
        let only = |v: Vec<f64>| [Value::Samples(v), Value::Missing];
        s.push(id("rps"), [rps(0), rps(1)]);
        for (row, q) in [("p50", 0.5), ("p99", 0.99)] {
            let cols =
                [0, 1].map(|k| quantile(&m.lat[ti][k], q).map_or(Value::Missing, Value::Number));
            s.push(id(row), cols);
        }
        s.push(id("ratio"), only(ratio(&m.rps[ti][0], &m.rps[ti][1])));
        s.push(id("cpu"), [cpu(0), cpu(1)]);
        s.push(
            id("cpu_ratio"),
            only(ratio(&m.cpu_us[ti][1], &m.cpu_us[ti][0])),
        );
        s.push(
            id("cpu_extra"),
            only(diff(&m.cpu_us[ti][0], &m.cpu_us[ti][1])),
        );
        s.push(id("inproc"), [rps(2), rps(3)]);
        s.push(
            id("inproc_ratio"),
            only(ratio(&m.rps[ti][2], &m.rps[ti][3])),
        );
        s.push(id("inproc_cpu"), [cpu(2), cpu(3)]);
        s.push(
            id("router_ratio"),
            only(ratio(&m.rps[ti][4], &m.rps[ti][3])),
        );
        s.push(
            id("router_cpu"),
            only(diff(&m.cpu_us[ti][4], &m.cpu_us[ti][3])),
        );
        s.push(id("serve_ratio"), only(ratio(&m.rps[ti][5], &m.rps[ti][3])));
        s.push(
            id("serve_cpu"),
            only(diff(&m.cpu_us[ti][5], &m.cpu_us[ti][3])),
        );
    }
    s.push(
        "rps_healthz",
        [Value::Samples(m.healthz.clone()), Value::Missing],
    );
    let mi = &m.micro;
    s.push(
        "oneshot",
        [
            Value::Samples(mi.oneshot[0].clone()),
            Value::Samples(mi.oneshot[1].clone()),
        ],
    );
    s.push(
        "oneshot_healthz",
        [Value::Samples(mi.oneshot_healthz.clone()), Value::Missing],
    );
    s.push(
        "render",
        [Value::Samples(mi.render.clone()), Value::Missing],
    );
    s.push(
        "render_since",
        [Value::Samples(mi.since.clone()), Value::Missing],
    );
    s.push(
        "render_now",
        [Value::Samples(mi.now.clone()), Value::Missing],
    );
    s.fact("body_bytes", m.body_len as f64);
    s.fact("request_errors", m.errors as f64);
    s.fact("micro_repetitions", mi.render.len() as f64);
    s.fact("micro_calls", micro_calls(cfg) as f64);
    s
}

/// The two transports, as the rows name them.
struct RowsOf {
    suffix: &'static str,
    label: &'static str,
}

const TRANSPORTS: [RowsOf; 2] = [
    RowsOf {
        suffix: "http",
        label: "HTTP (TCP)",
    },
    RowsOf {
        suffix: "unix",
        label: "Unix socket",
    },
];

pub fn page(p: &BenchConfig, d: &SectionData) -> Page {
    let mut rows: Vec<RowSpec> = Vec::new();
    for t in &TRANSPORTS {
        let what = t.label;
        let mut row = |r: &str, figure: String, unit: &'static str, signed: bool| {
            rows.push(spec(&format!("{r}_{}", t.suffix), &figure, unit, signed));
        };
        row(
            "rps",
            format!("{what}: requests per second"),
            "req/s",
            false,
        );
        row("p50", format!("{what}: p50 latency"), "ms", false);
        row("p99", format!("{what}: p99 latency"), "ms", false);
        row(
            "ratio",
            format!("{what}: electd ÷ bare axum throughput"),
            "ratio",
            false,
        );
        row(
            "cpu",
            format!("{what}: server CPU per request (the whole process)"),
            "µs",
            false,
        );
        row(
            "cpu_ratio",
            format!(
                "{what}: bare axum's server CPU per request ÷ electd's (the throughput ratio of \
                 a server bound by its CPU)"
            ),
            "ratio",
            false,
        );
        row(
            "cpu_extra",
            format!("{what}: electd's extra server CPU per request over bare axum"),
            "µs",
            true,
        );
        row(
            "inproc",
            format!(
                "{what}, in-process: requests per second, electd's router on electd's serve \
                 vs bare router on axum::serve"
            ),
            "req/s",
            false,
        );
        row(
            "inproc_ratio",
            format!("{what}, in-process: electd's router and serve ÷ bare axum throughput"),
            "ratio",
            false,
        );
        row(
            "inproc_cpu",
            format!("{what}, in-process: server thread CPU per request"),
            "µs",
            false,
        );
        row(
            "router_ratio",
            format!(
                "{what}, in-process: electd's router on axum::serve ÷ bare (the router's share)"
            ),
            "ratio",
            false,
        );
        row(
            "router_cpu",
            format!(
                "{what}, in-process: extra CPU per request of electd's router (on axum::serve)"
            ),
            "µs",
            true,
        );
        row(
            "serve_ratio",
            format!(
                "{what}, in-process: bare router on electd's serve ÷ bare (the connection \
                 loop's share)"
            ),
            "ratio",
            false,
        );
        row(
            "serve_cpu",
            format!("{what}, in-process: extra CPU per request of electd's serve (bare router)"),
            "µs",
            true,
        );
    }
    rows.extend([
        spec(
            "rps_healthz",
            "HTTP (TCP): electd's `GET /healthz` (3-byte constant body), requests per second",
            "req/s",
            false,
        ),
        spec(
            "oneshot",
            "no socket: one `GET /role` through the router (tower oneshot, body collected)",
            "ns",
            false,
        ),
        spec(
            "oneshot_healthz",
            "no socket: one `GET /healthz` through electd's router",
            "ns",
            false,
        ),
        spec(
            "render",
            "no socket: rendering the `/role` body (`Status::doc` + serde_json into a new buffer)",
            "ns",
            false,
        ),
        spec(
            "render_since",
            "no socket: … of which could be the `since` field alone (RFC 3339 with milliseconds)",
            "ns",
            false,
        ),
        spec(
            "render_now",
            "no socket: `Instant::now()` (each render reads the clock once)",
            "ns",
            false,
        ),
    ]);
    let whole = |x: f64| format!("{x:.0}");
    Page {
        title: "Role API".into(),
        about: format!(
            "`GET /role` from {} concurrent keep-alive HTTP/1.1 clients (raw tokio, one request \
             in flight per connection) for {:.1} s per target after a {} ms warm-up, in {} \
             rounds; each round measures every target once, in an order that alternates from \
             round to round. The generator shares the machine with the servers. electd is a \
             leader with no command. The baseline is a bare axum 0.8 router on a current-thread \
             runtime like electd's, answering the bytes electd's `/role` returned as a constant \
             `application/json` body, in a process of its own (the benchmark executable re-run) \
             like electd. Ratios are taken within a round; every cell with numbers is over \
             rounds (its median is the median of rounds), except latency percentiles, which are \
             over every request of all rounds. Server CPU per request is the server's \
             `utime + stime` over the measured window (the process; for in-process servers, \
             their runtime's thread) divided by the requests it answered. In-process, electd's \
             `api::router` (over a fixed leader status) and the bare router are each served both \
             by electd's `api::serve::serve` and by `axum::serve`, to tell the router's cost \
             from the connection loop's.",
            p.api_clients,
            p.api_duration.as_secs_f64(),
            p.api_warmup.as_millis(),
            p.api_rounds
        ),
        columns: vec!["electd".into(), "bare axum".into()],
        rows,
        notes: vec![
            "The gap splits along the crossed in-process rows: the connection loop (electd's \
             serve against axum::serve) and the router with its handler. \
             `scripts/profile-role.sh` counts the instructions per request of the no-socket \
             loops under callgrind, function by function (the render, JSON string escaping, the \
             router's extension layers)."
                .to_string(),
            format!(
                "electd's `/role` body is {} bytes; {} request errors in all runs. The no-socket \
                 figures are {} repetitions of {} calls each on a current-thread runtime.",
                d.fact("body_bytes", whole),
                d.fact("request_errors", whole),
                d.fact("micro_repetitions", whole),
                d.fact("micro_calls", whole),
            ),
        ],
    }
}
