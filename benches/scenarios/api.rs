//! Scenario 5: `GET /role` throughput and latency over HTTP and over the Unix socket, next to
//! a bare axum server (in this process, on a current-thread runtime like electd's) that
//! answers the same bytes as a constant JSON body.
//!
//! The load generator is raw HTTP/1.1 with keep-alive on tokio: each client sends one request
//! at a time on its own connection and reads the response by its Content-Length.

use std::future::IntoFuture;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use axum::Router;
use axum::http::header;
use axum::routing::get;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;

use electd::api::serve::{Limits, MAX_CONNECTIONS, serve};
use electd::api::socket::AllowList;
use electd::api::{ApiState, Transport};
use electd::election::role::Role;
use electd::election::{LeaderInfo, MemberInfo};
use electd::metrics::Metrics;
use electd::status::Status;

use super::report::{num, quantile};
use super::{BenchConfig, Section, Value, attempt, electd_spec};
use crate::common::{Etcd, http_get, spawn_tied, wait_child_timeout, wait_until};

#[derive(Debug, Clone)]
enum Target {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

/// What one load run measured.
#[derive(Debug, Default)]
struct Load {
    requests: u64,
    errors: u64,
    seconds: f64,
    /// Per-request latency in milliseconds.
    latencies: Vec<f64>,
}

impl Load {
    fn rps(&self) -> f64 {
        self.requests as f64 / self.seconds
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

/// One client: requests back to back; counts and times those that start inside the window.
async fn client<S: AsyncRead + AsyncWrite + Unpin>(
    mut s: S,
    path: &str,
    from: Instant,
    until: Instant,
) -> Load {
    let mut load = Load::default();
    let mut buf = Vec::with_capacity(8192);
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nAccept: */*\r\n\r\n");
    loop {
        let t = Instant::now();
        if t >= until {
            break;
        }
        let ok = http_get_keepalive(&mut s, request.as_bytes(), &mut buf)
            .await
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

/// `clients` concurrent keep-alive clients GETting `path` for `warmup + duration`; measures
/// `duration`.
async fn run_load(
    target: Target,
    path: &'static str,
    clients: usize,
    warmup: Duration,
    duration: Duration,
) -> Load {
    let from = Instant::now() + warmup;
    let until = from + duration;
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let target = target.clone();
        tasks.push(tokio::spawn(async move {
            match target {
                Target::Tcp(addr) => match tokio::net::TcpStream::connect(addr).await {
                    Ok(s) => {
                        let _ = s.set_nodelay(true);
                        client(s, path, from, until).await
                    }
                    Err(_) => Load {
                        errors: 1,
                        ..Load::default()
                    },
                },
                Target::Unix(socket) => match tokio::net::UnixStream::connect(&socket).await {
                    Ok(s) => client(s, path, from, until).await,
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
    total
}

/// A server on a current-thread runtime on its own thread in this process (electd's runtime
/// is current-thread too), listening on loopback TCP and on a Unix socket.
struct InProcess {
    tcp: SocketAddr,
    socket: PathBuf,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl InProcess {
    /// `serve` spawns the servers on the two listeners (it runs inside the runtime).
    fn start(
        name: &str,
        socket: &Path,
        serve: impl FnOnce(tokio::net::TcpListener, tokio::net::UnixListener) + Send + 'static,
    ) -> InProcess {
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").expect("bind loopback");
        tcp.set_nonblocking(true).expect("nonblocking");
        let addr = tcp.local_addr().expect("local addr");
        let unix = std::os::unix::net::UnixListener::bind(socket).expect("bind socket");
        unix.set_nonblocking(true).expect("nonblocking");
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("server runtime");
                rt.block_on(async move {
                    let tcp = tokio::net::TcpListener::from_std(tcp).expect("listener");
                    let unix = tokio::net::UnixListener::from_std(unix).expect("listener");
                    serve(tcp, unix);
                    let _ = rx.await;
                });
            })
            .expect("spawn server thread");
        InProcess {
            tcp: addr,
            socket: socket.to_path_buf(),
            shutdown: Some(tx),
            thread: Some(thread),
        }
    }

    /// The bare axum baseline: `GET /role` answers `body` as `application/json`.
    fn baseline(body: String, socket: &Path) -> InProcess {
        let body: &'static str = body.leak();
        let app = Router::new().route(
            "/role",
            get(move || async move { ([(header::CONTENT_TYPE, "application/json")], body) }),
        );
        InProcess::start("axum-baseline", socket, move |tcp, unix| {
            tokio::spawn(axum::serve(tcp, app.clone()).into_future());
            tokio::spawn(axum::serve(unix, app).into_future());
        })
    }

    /// electd's own API router (`electd::api::router`), served as the daemon serves it, over
    /// a fixed leader status.
    fn electd_router(socket: &Path) -> InProcess {
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
            allow: AllowList {
                uids: Vec::new(),
                gids: Vec::new(),
            },
        };
        InProcess::start("electd-router", socket, move |tcp, unix| {
            // Served the way the daemon serves it: same router, same limits.
            let http = electd::api::router(state.clone(), Transport::Tcp);
            let sock = electd::api::router(state, Transport::Unix);
            let limits = Limits {
                read_header_timeout: Duration::from_secs(10),
                max_connections: MAX_CONNECTIONS,
            };
            let forever = std::future::pending::<()>;
            tokio::spawn(async move {
                // Keep the owner's ends alive as long as the servers.
                let _keep = (status_tx, control_rx);
                tokio::join!(
                    serve(tcp, http, limits, forever()),
                    serve(unix, sock, limits, forever())
                );
            });
        })
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
    let server = InProcess::baseline(body, &dir.join("baseline.sock"));
    let tmp = dir.join("addr.tmp");
    std::fs::write(&tmp, server.tcp.to_string()).expect("write baseline address");
    std::fs::rename(&tmp, dir.join("addr")).expect("publish baseline address");
    let _ = std::io::copy(&mut std::io::stdin(), &mut std::io::sink());
    true
}

/// The bare axum baseline in a process of its own, as electd is: this executable re-run with
/// `args` and [`BASELINE_ENV`]; it stops when its stdin closes.
struct BaselineProcess {
    child: std::process::Child,
    tcp: SocketAddr,
    socket: PathBuf,
}

impl BaselineProcess {
    fn start(args: &[String], body: &str, dir: &Path) -> BaselineProcess {
        let dir = dir.join("baseline-process");
        std::fs::create_dir_all(&dir).expect("baseline dir");
        std::fs::write(dir.join("body"), body).expect("write baseline body");
        let mut cmd = std::process::Command::new(std::env::current_exe().expect("own executable"));
        cmd.args(args)
            .env(BASELINE_ENV, &dir)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null());
        let child = spawn_tied(cmd).expect("start the baseline process");
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

/// Everything the role API scenario measured.
#[derive(Default)]
struct Measured {
    /// [transport: HTTP, Unix][target: electd, axum process, electd's router in-process,
    /// axum in-process]
    rps: [[Vec<f64>; 4]; 2],
    lat: [[Vec<f64>; 4]; 2],
    healthz: Vec<f64>,
    errors: u64,
    body_len: usize,
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
    let process = BaselineProcess::start(&cfg.baseline_args, &body, dir.path());
    let baseline = InProcess::baseline(body, &dir.path().join("baseline.sock"));
    let router = InProcess::electd_router(&dir.path().join("router.sock"));
    let targets = [
        [
            Target::Tcp(d.http.parse().expect("electd http addr")),
            Target::Tcp(process.tcp),
            Target::Tcp(router.tcp),
            Target::Tcp(baseline.tcp),
        ],
        [
            Target::Unix(d.socket.clone()),
            Target::Unix(process.socket.clone()),
            Target::Unix(router.socket.clone()),
            Target::Unix(baseline.socket.clone()),
        ],
    ];
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("load runtime");
    let warmup = Duration::from_millis(300);
    let load = |t: &Target, path| {
        rt.block_on(run_load(
            t.clone(),
            path,
            cfg.api_clients,
            warmup,
            cfg.api_duration,
        ))
    };
    for round in 0..cfg.api_rounds {
        for (ti, ts) in targets.iter().enumerate() {
            for (k, t) in ts.iter().enumerate() {
                let l = load(t, "/role");
                cfg.progress(&format!(
                    "api round {round} {} {}: {:.0} req/s",
                    ["http", "unix"][ti],
                    [
                        "electd",
                        "axum process",
                        "electd router in-process",
                        "axum in-process"
                    ][k],
                    l.rps()
                ));
                m.errors += l.errors;
                m.rps[ti][k].push(l.rps());
                m.lat[ti][k].extend(l.latencies);
            }
        }
        let l = load(&targets[0][0], "/healthz");
        cfg.progress(&format!(
            "api round {round} http electd /healthz: {:.0} req/s",
            l.rps()
        ));
        m.errors += l.errors;
        m.healthz.push(l.rps());
    }
    m
}

pub fn role_api(cfg: &BenchConfig) -> Section {
    let mut s = Section::new(
        "api",
        "Role API",
        &format!(
            "`GET /role` from {} concurrent keep-alive HTTP/1.1 clients (raw tokio, one request \
             in flight per connection) for {:.1} s per target after a {} ms warm-up, {} \
             round(s) alternating targets; the generator shares the machine with the servers. \
             electd is a leader with no command. The baseline is a bare axum 0.8 router on a \
             current-thread runtime like electd's, answering the bytes electd's `/role` \
             returned as a constant `application/json` body, in a process of its own (the \
             benchmark executable re-run) like electd. To tell the router's cost from the \
             process's, electd's own `api::router` (over a fixed leader status) and the \
             baseline are also both served inside the benchmark process. Throughput cells are \
             over rounds; latency percentiles over every request of all rounds.",
            cfg.api_clients,
            cfg.api_duration.as_secs_f64(),
            300,
            cfg.api_rounds
        ),
        ["electd", "bare axum"],
    );
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
    for (ti, what) in ["HTTP (TCP)", "Unix socket"].into_iter().enumerate() {
        let [rps, p50, p99, ratio_id, inproc, inproc_ratio] = [
            ["rps_http", "rps_unix"],
            ["p50_http", "p50_unix"],
            ["p99_http", "p99_unix"],
            ["ratio_http", "ratio_unix"],
            ["inproc_http", "inproc_unix"],
            ["inproc_ratio_http", "inproc_ratio_unix"],
        ]
        .map(|ids| ids[ti]);
        let samples = |k: usize| Value::Samples(m.rps[ti][k].clone());
        s.push(
            rps,
            &format!("{what}: requests per second"),
            "req/s",
            false,
            [samples(0), samples(1)],
        );
        for (id, q, name) in [(p50, 0.5, "p50"), (p99, 0.99, "p99")] {
            let cols = [0, 1].map(|k| {
                quantile(&m.lat[ti][k], q).map_or(Value::Missing, |x| Value::Text(num(x)))
            });
            s.push(id, &format!("{what}: {name} latency"), "ms", false, cols);
        }
        s.push(
            ratio_id,
            &format!("{what}: electd ÷ bare axum throughput"),
            "ratio",
            false,
            [
                Value::Samples(ratio(&m.rps[ti][0], &m.rps[ti][1])),
                Value::Missing,
            ],
        );
        s.push(
            inproc,
            &format!(
                "{what}: requests per second with electd's router and bare axum both served \
                 in the benchmark process"
            ),
            "req/s",
            false,
            [samples(2), samples(3)],
        );
        s.push(
            inproc_ratio,
            &format!(
                "{what}: electd's router ÷ bare axum throughput, both in the benchmark process"
            ),
            "ratio",
            false,
            [
                Value::Samples(ratio(&m.rps[ti][2], &m.rps[ti][3])),
                Value::Missing,
            ],
        );
    }
    s.push(
        "rps_healthz",
        "HTTP (TCP): electd's `GET /healthz` (3-byte constant body), requests per second",
        "req/s",
        false,
        [Value::Samples(m.healthz.clone()), Value::Missing],
    );
    s.notes.push(format!(
        "electd's `/role` body is {} bytes; {} request errors in all runs.",
        m.body_len, m.errors
    ));
    s
}
