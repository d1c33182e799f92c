//! A fault-injecting TCP proxy for partition tests.
//!
//! It runs on its own thread with its own (current-thread) tokio runtime, so
//! its API is plain synchronous Rust usable from `#[test]` and
//! `#[tokio::test]` alike.
//!
//! Semantics of the modes (switchable at any time with [`TcpProxy::set_mode`]):
//! - [`ProxyMode::Pass`]: bytes are forwarded both ways (after the optional
//!   per-chunk delay); half-closes are forwarded.
//! - [`ProxyMode::Blackhole`]: a silent partition. Existing connections stay
//!   open but the proxy stops reading from either side, so nothing is
//!   forwarded (at most one chunk read just before the switch is held back).
//!   New connections are accepted but not connected upstream. Nothing is
//!   dropped: when the mode goes back to `Pass`, **blackholed connections
//!   resume intact** (like a healed partition where TCP retransmits), and
//!   connections accepted during the blackhole are connected upstream then.
//!   Clients that gave up meanwhile simply see their old connection resume or
//!   close. Connections sitting in a blackhole still count in
//!   [`TcpProxy::connections`].
//! - [`ProxyMode::Reset`]: every current connection is aborted at once (both
//!   sockets closed with SO_LINGER 0, so peers get an RST) and new
//!   connections are accepted and immediately reset. Switching back to `Pass`
//!   makes new connections work again; aborted ones are gone for good.

use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, watch};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProxyMode {
    Pass,
    Blackhole,
    Reset,
}

#[derive(Clone, Copy, Debug)]
struct State {
    mode: ProxyMode,
    /// Latency added to bytes from the client to the upstream.
    delay_up: Duration,
    /// Latency added to bytes from the upstream back to the client.
    delay_down: Duration,
    /// Bumped by every `set_mode(Reset)`; a connection dies when it changes.
    reset_gen: u64,
}

impl State {
    const PASS: State = State {
        mode: ProxyMode::Pass,
        delay_up: Duration::ZERO,
        delay_down: Duration::ZERO,
        reset_gen: 0,
    };
}

/// Which way bytes flow through a proxied connection.
#[derive(Clone, Copy, Debug)]
enum Dir {
    /// From the client to the upstream.
    Up,
    /// From the upstream back to the client.
    Down,
}

impl State {
    fn delay(&self, dir: Dir) -> Duration {
        match dir {
            Dir::Up => self.delay_up,
            Dir::Down => self.delay_down,
        }
    }

    fn set_mode(&mut self, mode: ProxyMode) {
        self.mode = mode;
        if mode == ProxyMode::Reset {
            self.reset_gen += 1;
        }
    }
}

pub struct TcpProxy {
    addr: SocketAddr,
    upstream: SocketAddr,
    state: watch::Sender<State>,
    open: Arc<AtomicUsize>,
    accepted: Arc<AtomicUsize>,
    shutdown: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl TcpProxy {
    /// Listens on a free 127.0.0.1 port and forwards to `upstream`, in `Pass` mode.
    pub fn start(upstream: SocketAddr) -> TcpProxy {
        let listener =
            std::net::TcpListener::bind("127.0.0.1:0").expect("bind proxy listener on 127.0.0.1");
        listener
            .set_nonblocking(true)
            .expect("set proxy listener non-blocking");
        let addr = listener.local_addr().expect("proxy local addr");
        let (state, state_rx) = watch::channel(State::PASS);
        let (shutdown, shutdown_rx) = oneshot::channel();
        let open = Arc::new(AtomicUsize::new(0));
        let accepted = Arc::new(AtomicUsize::new(0));
        let (open2, accepted2) = (open.clone(), accepted.clone());
        let thread = std::thread::Builder::new()
            .name(format!("tcp-proxy-{}", addr.port()))
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("build proxy runtime");
                rt.block_on(async move {
                    let listener = TcpListener::from_std(listener).expect("register listener");
                    accept_loop(listener, upstream, state_rx, open2, accepted2, shutdown_rx).await;
                });
                // Dropping the runtime drops every connection task and socket.
            })
            .expect("spawn proxy thread");
        TcpProxy {
            addr,
            upstream,
            state,
            open,
            accepted,
            shutdown: Some(shutdown),
            thread: Some(thread),
        }
    }

    /// Proxy to an endpoint given as "http://host:port" or "host:port".
    pub fn start_to(endpoint: &str) -> TcpProxy {
        let hostport = endpoint
            .split_once("://")
            .map_or(endpoint, |(_, rest)| rest)
            .trim_end_matches('/');
        let upstream = hostport
            .to_socket_addrs()
            .ok()
            .and_then(|mut a| a.next())
            .unwrap_or_else(|| panic!("cannot resolve proxy upstream {endpoint:?}"));
        Self::start(upstream)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    pub fn upstream(&self) -> SocketAddr {
        self.upstream
    }

    /// "http://127.0.0.1:P".
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn mode(&self) -> ProxyMode {
        self.state.borrow().mode
    }

    pub fn set_mode(&self, mode: ProxyMode) {
        self.state.send_modify(|s| s.set_mode(mode));
    }

    /// Added latency before forwarding each chunk, in each direction.
    pub fn set_delay(&self, delay: Duration) {
        self.set_delays(delay, delay);
    }

    /// Asymmetric latency: `up` for bytes from the client to the upstream, `down` for the
    /// replies. A round trip then takes `up + down` more.
    pub fn set_delays(&self, up: Duration, down: Duration) {
        self.state.send_modify(|s| {
            s.delay_up = up;
            s.delay_down = down;
        });
    }

    /// Client connections currently open through the proxy.
    pub fn connections(&self) -> usize {
        self.open.load(Ordering::SeqCst)
    }

    /// Client connections accepted since start (including reset ones).
    pub fn total_connections(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn accept_loop(
    listener: TcpListener,
    upstream: SocketAddr,
    state: watch::Receiver<State>,
    open: Arc<AtomicUsize>,
    accepted: Arc<AtomicUsize>,
    mut shutdown: oneshot::Receiver<()>,
) {
    loop {
        let client = tokio::select! {
            _ = &mut shutdown => return,
            res = listener.accept() => match res {
                Ok((client, _)) => client,
                Err(_) => {
                    // e.g. EMFILE: back off instead of spinning.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
        };
        accepted.fetch_add(1, Ordering::SeqCst);
        let now = *state.borrow();
        if now.mode == ProxyMode::Reset {
            abort(client);
            continue;
        }
        let guard = OpenGuard::new(open.clone());
        tokio::spawn(handle(
            client,
            upstream,
            state.clone(),
            now.reset_gen,
            guard,
            Vec::new(),
        ));
    }
}

struct OpenGuard(Arc<AtomicUsize>);

impl OpenGuard {
    fn new(counter: Arc<AtomicUsize>) -> Self {
        counter.fetch_add(1, Ordering::SeqCst);
        OpenGuard(counter)
    }
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Close with an RST instead of a FIN.
fn abort(stream: TcpStream) {
    let _ = stream.set_zero_linger();
    drop(stream);
}

/// Resolves once a `Reset` happened after generation `gen`.
async fn reset_after(mut state: watch::Receiver<State>, generation: u64) {
    loop {
        if state.borrow_and_update().reset_gen != generation {
            return;
        }
        if state.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// Resolves once the mode is `Pass` (never, while it is Blackhole or Reset).
async fn pass(state: &mut watch::Receiver<State>) {
    loop {
        if state.borrow_and_update().mode == ProxyMode::Pass {
            return;
        }
        if state.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// Forwards one accepted connection; `initial` holds bytes already read from the client
/// (they go upstream first).
async fn handle(
    mut client: TcpStream,
    upstream: SocketAddr,
    state: watch::Receiver<State>,
    generation: u64,
    _guard: OpenGuard,
    initial: Vec<u8>,
) {
    let reset = reset_after(state.clone(), generation);
    tokio::pin!(reset);
    let mut st = state.clone();
    let connect = async {
        pass(&mut st).await;
        TcpStream::connect(upstream).await
    };
    let mut server = tokio::select! {
        _ = &mut reset => return abort(client),
        res = connect => match res {
            Ok(s) => s,
            Err(_) => return abort(client),
        },
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let clean = {
        let (cr, cw) = client.split();
        let (sr, sw) = server.split();
        let both = async {
            tokio::try_join!(
                pump(cr, sw, state.clone(), Dir::Up, initial),
                pump(sr, cw, state.clone(), Dir::Down, Vec::new())
            )
            .is_ok()
        };
        tokio::select! {
            _ = &mut reset => false,
            ok = both => ok,
        }
    };
    if !clean {
        abort(client);
        abort(server);
    }
}

/// Copies `from` to `to` chunk by chunk while the mode is `Pass`, forwarding
/// EOF as a write shutdown. With a delay, each chunk is written that long after
/// it was read, like a link with that latency: chunks in flight overlap, so the
/// delay adds latency without limiting throughput. `initial` (bytes already read) goes first.
async fn pump(
    mut from: tokio::net::tcp::ReadHalf<'_>,
    mut to: tokio::net::tcp::WriteHalf<'_>,
    state: watch::Receiver<State>,
    dir: Dir,
    initial: Vec<u8>,
) -> std::io::Result<()> {
    // `None` marks EOF.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<(tokio::time::Instant, Option<Vec<u8>>)>(64);
    let mut read_state = state.clone();
    let reader = async move {
        if !initial.is_empty() {
            let due = tokio::time::Instant::now() + read_state.borrow().delay(dir);
            if tx.send((due, Some(initial))).await.is_err() {
                return Ok(());
            }
        }
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            pass(&mut read_state).await;
            let n = from.read(&mut buf).await?;
            let due = tokio::time::Instant::now() + read_state.borrow().delay(dir);
            let chunk = (n > 0).then(|| buf[..n].to_vec());
            if tx.send((due, chunk)).await.is_err() || n == 0 {
                return Ok::<_, std::io::Error>(());
            }
        }
    };
    let mut write_state = state;
    let writer = async move {
        while let Some((due, chunk)) = rx.recv().await {
            tokio::time::sleep_until(due).await;
            pass(&mut write_state).await;
            match chunk {
                Some(bytes) => to.write_all(&bytes).await?,
                None => {
                    let _ = to.shutdown().await;
                    break;
                }
            }
        }
        Ok::<_, std::io::Error>(())
    };
    tokio::try_join!(reader, writer).map(|_| ())
}

// ---------------------------------------------------------------------------
// Peer links of an etcd cluster
// ---------------------------------------------------------------------------

/// A proxy in front of one etcd member's *peer* port that tells the sending members apart, so
/// the link from member A to member B can be cut while C still reaches B.
///
/// Every connection etcd's raft transport opens (streams, pipeline posts, snapshots) starts
/// with an HTTP request whose `X-PeerURLs` header lists the sending member's advertised peer
/// URLs, which are these proxies' URLs. The proxy reads the request head, looks the URL up,
/// and forwards the connection under that sender's link state ([`ProxyMode`] as for
/// [`TcpProxy`]). A connection that names no known member (etcd's version probes) follows the
/// `unknown` state. Raft messages between A and B travel over connections A opened to B
/// (through B's proxy) *and* connections B opened to A (through A's proxy): to part them,
/// cut both links ([`PeerMesh::isolate`] does).
pub struct PeerProxy {
    addr: SocketAddr,
    /// Link state per sending member, indexed like the mesh.
    links: Vec<watch::Sender<State>>,
    unknown: watch::Sender<State>,
    unclassified: Arc<AtomicUsize>,
    shutdown: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

/// The peer proxies of a whole cluster: member `i` advertises `proxies[i]`'s URL.
pub struct PeerMesh {
    proxies: Vec<PeerProxy>,
}

impl PeerMesh {
    /// One proxy per member, forwarding to `upstreams[i]` (the members' real peer ports).
    pub fn start(upstreams: &[SocketAddr]) -> PeerMesh {
        let listeners: Vec<std::net::TcpListener> = upstreams
            .iter()
            .map(|_| {
                let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind peer proxy");
                l.set_nonblocking(true).expect("non-blocking peer proxy");
                l
            })
            .collect();
        let urls: Vec<String> = listeners
            .iter()
            .map(|l| format!("http://{}", l.local_addr().expect("peer proxy addr")))
            .collect();
        let proxies = listeners
            .into_iter()
            .zip(upstreams)
            .map(|(l, up)| PeerProxy::start(l, *up, urls.clone()))
            .collect();
        PeerMesh { proxies }
    }

    /// The URL member `i` must advertise as its peer URL.
    pub fn url(&self, i: usize) -> String {
        format!("http://{}", self.proxies[i].addr)
    }

    pub fn len(&self) -> usize {
        self.proxies.len()
    }

    pub fn is_empty(&self) -> bool {
        self.proxies.is_empty()
    }

    /// Sets the link from member `from` to member `to` (bytes of connections `from` opened
    /// to `to`, both ways).
    pub fn set_link(&self, from: usize, to: usize, mode: ProxyMode) {
        self.proxies[to].links[from].send_modify(|s| s.set_mode(mode));
    }

    /// Cuts member `m` from every other member, both ways (`Blackhole` or `Reset`); its client
    /// port is untouched.
    pub fn isolate(&self, m: usize, mode: ProxyMode) {
        for other in (0..self.len()).filter(|o| *o != m) {
            self.set_link(m, other, mode);
            self.set_link(other, m, mode);
        }
        self.proxies[m].unknown.send_modify(|s| s.set_mode(mode));
    }

    /// Every link back to `Pass`.
    pub fn heal(&self) {
        for p in &self.proxies {
            for l in p.links.iter().chain([&p.unknown]) {
                l.send_modify(|s| s.set_mode(ProxyMode::Pass));
            }
        }
    }

    /// Connections (since start, all proxies) whose request named no member of the mesh.
    pub fn unclassified(&self) -> usize {
        self.proxies
            .iter()
            .map(|p| p.unclassified.load(Ordering::SeqCst))
            .sum()
    }
}

impl PeerProxy {
    fn start(listener: std::net::TcpListener, upstream: SocketAddr, urls: Vec<String>) -> Self {
        let addr = listener.local_addr().expect("peer proxy addr");
        let (links, rxs): (Vec<_>, Vec<_>) =
            urls.iter().map(|_| watch::channel(State::PASS)).unzip();
        let (unknown, unknown_rx) = watch::channel(State::PASS);
        let (shutdown, mut shutdown_rx) = oneshot::channel::<()>();
        let unclassified = Arc::new(AtomicUsize::new(0));
        let unclassified2 = unclassified.clone();
        let thread = std::thread::Builder::new()
            .name(format!("peer-proxy-{}", addr.port()))
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("build peer proxy runtime");
                rt.block_on(async move {
                    let listener = TcpListener::from_std(listener).expect("register listener");
                    let open = Arc::new(AtomicUsize::new(0));
                    loop {
                        let client = tokio::select! {
                            _ = &mut shutdown_rx => return,
                            res = listener.accept() => match res {
                                Ok((c, _)) => c,
                                Err(_) => {
                                    tokio::time::sleep(Duration::from_millis(10)).await;
                                    continue;
                                }
                            },
                        };
                        let (rxs, unknown_rx) = (rxs.clone(), unknown_rx.clone());
                        let (urls, open, unclassified) =
                            (urls.clone(), open.clone(), unclassified2.clone());
                        tokio::spawn(async move {
                            let mut client = client;
                            let head = read_request_head(&mut client).await;
                            let state = match sender_of(&head, &urls) {
                                Some(i) => rxs[i].clone(),
                                None => {
                                    unclassified.fetch_add(1, Ordering::SeqCst);
                                    unknown_rx
                                }
                            };
                            let now = *state.borrow();
                            if now.mode == ProxyMode::Reset {
                                return abort(client);
                            }
                            let guard = OpenGuard::new(open);
                            handle(client, upstream, state, now.reset_gen, guard, head).await;
                        });
                    }
                });
            })
            .expect("spawn peer proxy thread");
        PeerProxy {
            addr,
            links,
            unknown,
            unclassified,
            shutdown: Some(shutdown),
            thread: Some(thread),
        }
    }
}

impl Drop for PeerProxy {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Reads until the end of an HTTP request head (or 16 KiB, EOF, or 2 s of silence) and
/// returns what was read; the caller forwards it before anything else.
async fn read_request_head(client: &mut TcpStream) -> Vec<u8> {
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 * 1024 {
        match tokio::time::timeout_at(deadline, client.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => head.extend_from_slice(&buf[..n]),
            _ => break,
        }
    }
    head
}

/// Index of the member whose URL the request's `X-PeerURLs` header names.
fn sender_of(head: &[u8], urls: &[String]) -> Option<usize> {
    let text = String::from_utf8_lossy(head);
    let value = text.lines().find_map(|l| {
        let (name, value) = l.split_once(':')?;
        name.trim()
            .eq_ignore_ascii_case("x-peerurls")
            .then(|| value.trim().to_string())
    })?;
    value
        .split(',')
        .find_map(|u| urls.iter().position(|known| known == u.trim()))
}
