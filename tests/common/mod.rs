//! Shared integration-test harness: real etcd processes, a fault-injecting TCP
//! proxy and tiny blocking HTTP helpers.
//!
//! Every integration test file pulls this in with `mod common;`. The API is
//! synchronous (std) so it can be used from plain `#[test]`s as well as from
//! `#[tokio::test]`s; the proxy runs its own runtime on a background thread.
#![allow(dead_code, unused_imports)]

mod app;
mod contract;
mod electd;
mod etcd;
mod haproxy;
mod http;
mod ledger;
mod proxy;
pub mod reports;
mod tls;

pub use app::{NameApp, Replica, ask, ask_once, connect};
pub use contract::{AppMode, ClaimRecord, ContractApp, claims, python};
pub use electd::{Daemon, DaemonSpec, electd_binary, leaders, read_lines, wait_one_leader};
pub use etcd::{Etcd, EtcdCluster, EtcdOptions};
pub use haproxy::{Haproxy, Server, haproxy_binary, haproxy_config, haproxy_path};
pub use http::{PendingGet, http_get, http_get_timeout, http_request, unix_http};
pub use ledger::*;
pub use proxy::{PeerMesh, ProxyMode, TcpProxy};
pub use tls::*;

use std::collections::HashSet;
use std::fs::OpenOptions;
use std::io;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Polls `f` every 20 ms until it returns true; panics with
/// "timed out after {timeout:?} waiting for {what}" otherwise.
pub fn wait_until<F: FnMut() -> bool>(timeout: Duration, what: &str, mut f: F) {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

// ---------------------------------------------------------------------------
// Ports
// ---------------------------------------------------------------------------

/// How long a port handed out by [`free_port`] stays reserved for *other* test
/// processes (nextest runs every test in its own process).
const PORT_RESERVATION_TTL: Duration = Duration::from_secs(20 * 60);

/// Returns a free loopback TCP port that no earlier call handed out.
///
/// Uniqueness holds within the process (a process-wide set) and, best effort,
/// across concurrently running test processes (a reservation file per port
/// under `$TMPDIR/electd-test-ports`, valid for 20 minutes). Ports are taken
/// below the kernel's ephemeral range when possible, so an outgoing connection
/// cannot grab a port between this call and the server binding it; the port is
/// always checked by binding 127.0.0.1 to it. Falls back to binding port 0.
pub fn free_port() -> u16 {
    static HANDED_OUT: Mutex<Option<HashSet<u16>>> = Mutex::new(None);
    let mut handed = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
    let handed = handed.get_or_insert_with(HashSet::new);
    let range = non_ephemeral_range();
    for attempt in 0..5000 {
        let port = match range {
            Some((lo, hi)) if attempt < 4000 => lo + (next_random() % u64::from(hi - lo)) as u16,
            _ => match TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()) {
                Ok(addr) => addr.port(),
                Err(_) => continue,
            },
        };
        if handed.contains(&port) || TcpListener::bind(("127.0.0.1", port)).is_err() {
            continue;
        }
        if !reserve_port_across_processes(port) {
            continue;
        }
        handed.insert(port);
        return port;
    }
    panic!("free_port: could not find a free loopback port");
}

/// `[20000, first ephemeral port)` when that leaves a usable range.
fn non_ephemeral_range() -> Option<(u16, u16)> {
    let text = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").ok()?;
    let low: u16 = text.split_whitespace().next()?.parse().ok()?;
    (low >= 25_000).then_some((20_000, low))
}

fn next_random() -> u64 {
    static STATE: AtomicU64 = AtomicU64::new(0);
    let mut x = STATE.load(Ordering::Relaxed);
    if x == 0 {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1);
        x = (nanos ^ (u64::from(std::process::id()) << 32)) | 1;
    }
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    STATE.store(x, Ordering::Relaxed);
    x
}

fn reserve_port_across_processes(port: u16) -> bool {
    let dir = std::env::temp_dir().join("electd-test-ports");
    if std::fs::create_dir_all(&dir).is_err() {
        return true; // cannot coordinate; the in-process set still applies
    }
    let path = dir.join(port.to_string());
    for _ in 0..2 {
        match OpenOptions::new().write(true).create_new(true).open(&path) {
            Ok(_) => return true,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                let stale = std::fs::metadata(&path)
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| t.elapsed().ok())
                    .is_some_and(|age| age > PORT_RESERVATION_TTL);
                if !stale {
                    return false;
                }
                let _ = std::fs::remove_file(&path);
            }
            Err(_) => return true,
        }
    }
    false
}

// ---------------------------------------------------------------------------
// Binaries
// ---------------------------------------------------------------------------

/// Path of the `etcd` binary: from `$ELECTD_TEST_ETCD` (the directory `scripts/etcd.sh VERSION`
/// prints, holding `etcd` and `etcdctl`, or the `etcd` binary itself), else `PATH`, else
/// /usr/bin/etcd or /usr/local/bin/etcd. Panics (never skips) when missing.
pub fn etcd_binary() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(
        || match std::env::var_os("ELECTD_TEST_ETCD").filter(|v| !v.is_empty()) {
            Some(chosen) => chosen_binary("etcd", "ELECTD_TEST_ETCD", Path::new(&chosen)),
            None => on_path("etcd").unwrap_or_else(|| {
                panic!(
                    "etcd is required for the integration tests; install it with \
                 `sudo apt-get install -y etcd-server etcd-client` (Debian/Ubuntu), or fetch \
                 another version with `scripts/etcd.sh 3.5` and set ELECTD_TEST_ETCD to the \
                 directory it prints"
                )
            }),
        },
    )
    .clone()
}

/// Path of the `etcdctl` binary: `$ELECTD_TEST_ETCDCTL`, else the one beside the etcd that
/// `$ELECTD_TEST_ETCD` chose (never one of another version from `PATH`), else `PATH`, else
/// /usr/bin or /usr/local/bin. Panics (never skips) when missing.
pub fn etcdctl_binary() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(chosen) = std::env::var_os("ELECTD_TEST_ETCDCTL").filter(|v| !v.is_empty()) {
            return chosen_binary("etcdctl", "ELECTD_TEST_ETCDCTL", Path::new(&chosen));
        }
        if std::env::var_os("ELECTD_TEST_ETCD").is_some_and(|v| !v.is_empty()) {
            let etcd = etcd_binary();
            let dir = etcd.parent().unwrap_or(Path::new("."));
            return chosen_binary("etcdctl", "ELECTD_TEST_ETCD", dir);
        }
        on_path("etcdctl").unwrap_or_else(|| {
            panic!(
                "etcdctl is required for the integration tests; install it with \
                 `sudo apt-get install -y etcd-server etcd-client` (Debian/Ubuntu), or fetch \
                 another version with `scripts/etcd.sh 3.5` and set ELECTD_TEST_ETCD to the \
                 directory it prints"
            )
        })
    })
    .clone()
}

/// `name` as a variable chose it: `chosen` is the binary, or a directory holding it. An explicit
/// choice is honoured or the test fails; it never falls back to another etcd silently.
fn chosen_binary(name: &str, variable: &str, chosen: &Path) -> PathBuf {
    let path = if chosen.is_dir() {
        chosen.join(name)
    } else {
        chosen.to_path_buf()
    };
    if !is_executable(&path) {
        panic!(
            "{variable}={} holds no executable {name} (looked for {}); `scripts/etcd.sh VERSION` \
             (e.g. 3.5, 3.5.16, 3.4) fetches Debian's etcd-server and etcd-client of that version \
             and prints the directory to set {variable} to",
            chosen.display(),
            path.display()
        );
    }
    path
}

/// `name` on `PATH`, else in /usr/bin or /usr/local/bin.
fn on_path(name: &str) -> Option<PathBuf> {
    let from_path = std::env::var_os("PATH")
        .map(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join(name))
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    from_path
        .into_iter()
        .chain([
            PathBuf::from("/usr/bin").join(name),
            PathBuf::from("/usr/local/bin").join(name),
        ])
        .find(|p| is_executable(p))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

// ---------------------------------------------------------------------------
// Child processes tied to the test process
// ---------------------------------------------------------------------------

type SpawnRequest = (Command, mpsc::Sender<io::Result<Child>>);

/// Spawns `cmd` so that it is SIGKILLed when the test process dies, even if
/// the test is killed before `Drop` runs (nextest timeout, abort, SIGKILL).
///
/// `PR_SET_PDEATHSIG` fires when the *thread* that forked the child exits, so
/// all spawns go through one dedicated thread that lives as long as the
/// process. Long-running helpers (etcd, the daemon under test) should use this.
pub fn spawn_tied(cmd: Command) -> io::Result<Child> {
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<SpawnRequest>>> = OnceLock::new();
    let spawner = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnRequest>();
        std::thread::Builder::new()
            .name("test-child-spawner".into())
            .spawn(move || {
                for (mut cmd, reply) in rx {
                    let _ = reply.send(spawn_with_pdeathsig(&mut cmd));
                }
            })
            .expect("spawn the child-spawner thread");
        Mutex::new(tx)
    });
    let (reply_tx, reply_rx) = mpsc::channel();
    spawner
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .send((cmd, reply_tx))
        .map_err(|_| io::Error::other("child-spawner thread is gone"))?;
    reply_rx
        .recv()
        .map_err(|_| io::Error::other("child-spawner thread is gone"))?
}

fn spawn_with_pdeathsig(cmd: &mut Command) -> io::Result<Child> {
    use nix::sys::signal::Signal;
    use std::os::unix::process::CommandExt;
    let parent = nix::unistd::getpid();
    // SAFETY: the closure only makes async-signal-safe syscalls (prctl, getppid).
    unsafe {
        cmd.pre_exec(move || {
            nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(io::Error::from)?;
            if nix::unistd::getppid() != parent {
                // The parent already died between fork and prctl.
                return Err(io::Error::other("test process exited during spawn"));
            }
            Ok(())
        });
    }
    cmd.spawn()
}

/// Sends `sig` to a child process id (errors are ignored: it may be gone).
pub fn signal_pid(pid: u32, sig: nix::sys::signal::Signal) {
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), sig);
}

/// Waits up to `timeout` for `child` to exit; returns whether it did.
pub fn wait_child_timeout(child: &mut Child, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(_)) | Err(_) => return true,
            Ok(None) if Instant::now() >= deadline => return false,
            Ok(None) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
}

/// The last `lines` lines of a text file (for panic messages).
pub fn file_tail(path: &Path, lines: usize) -> String {
    match std::fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        }
        Err(e) => format!("<cannot read {}: {e}>", path.display()),
    }
}

/// The sum of a Prometheus metric's samples on a `/metrics` page, over the series whose labels
/// contain every one of `labels` (e.g. `grpc_method="Range"`).
pub fn metric_sum(page: &str, metric: &str, labels: &[&str]) -> f64 {
    page.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.strip_prefix(metric)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter(|l| labels.iter().all(|lab| l.contains(lab)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The `/metrics` page of the etcd listening on loopback `port`.
pub fn etcd_metrics(port: u16) -> String {
    let addr = format!("127.0.0.1:{port}");
    match http_get(&addr, "/metrics") {
        Ok((200, body)) => body,
        other => panic!("cannot read etcd's /metrics: {other:?}"),
    }
}
