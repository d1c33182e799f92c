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
    delay: Duration,
    /// Bumped by every `set_mode(Reset)`; a connection dies when it changes.
    reset_gen: u64,
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
        let (state, state_rx) = watch::channel(State {
            mode: ProxyMode::Pass,
            delay: Duration::ZERO,
            reset_gen: 0,
        });
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
        self.state.send_modify(|s| {
            s.mode = mode;
            if mode == ProxyMode::Reset {
                s.reset_gen += 1;
            }
        });
    }

    /// Added latency before forwarding each chunk, in each direction.
    pub fn set_delay(&self, delay: Duration) {
        self.state.send_modify(|s| s.delay = delay);
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

async fn handle(
    mut client: TcpStream,
    upstream: SocketAddr,
    state: watch::Receiver<State>,
    generation: u64,
    _guard: OpenGuard,
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
            tokio::try_join!(pump(cr, sw, state.clone()), pump(sr, cw, state.clone())).is_ok()
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
/// delay adds latency without limiting throughput.
async fn pump(
    mut from: tokio::net::tcp::ReadHalf<'_>,
    mut to: tokio::net::tcp::WriteHalf<'_>,
    state: watch::Receiver<State>,
) -> std::io::Result<()> {
    // `None` marks EOF.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<(tokio::time::Instant, Option<Vec<u8>>)>(64);
    let mut read_state = state.clone();
    let reader = async move {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            pass(&mut read_state).await;
            let n = from.read(&mut buf).await?;
            let due = tokio::time::Instant::now() + read_state.borrow().delay;
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
