//! Real etcd processes (single member or a small loopback cluster).

use super::{PeerMesh, ProxyMode, http, wait_child_timeout};
use super::{etcd_binary, etcdctl_binary, file_tail, free_port, signal_pid, spawn_tied};
use nix::sys::signal::Signal;
use std::fs::OpenOptions;
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tempfile::TempDir;

/// How long `start`/`restart` wait for etcd to answer its health check.
pub const START_TIMEOUT: Duration = Duration::from_secs(20);
/// Lines of etcd's log quoted in panic messages.
const LOG_TAIL_LINES: usize = 40;

/// Options for [`Etcd::start_opts`] / [`EtcdCluster::start_opts`].
#[derive(Clone, Debug)]
pub struct EtcdOptions {
    /// Scheme of the client URLs: "http" (default) or "https". Peer URLs are
    /// always http. With "https" the caller must pass `--cert-file`/`--key-file`
    /// (and friends) in `extra_args`, and whatever etcdctl needs to talk to it
    /// (`--cacert`, `--cert`, `--key` or `--insecure-skip-tls-verify`) in
    /// `etcdctl_args`: the health check then runs `etcdctl endpoint health`.
    pub scheme: String,
    /// Extra etcd flags, appended after the harness's own (a repeated flag
    /// overrides: Go's flag package keeps the last value).
    pub extra_args: Vec<String>,
    /// Extra flags for every `etcdctl` call made through the harness
    /// (e.g. `--user=root:pw`, `--cacert=...`).
    pub etcdctl_args: Vec<String>,
    /// The loopback address etcd listens on, for clients and peers: 127.0.0.1 (default) or
    /// ::1 (URLs then read `http://[::1]:P`).
    pub loopback: IpAddr,
}

impl Default for EtcdOptions {
    fn default() -> Self {
        EtcdOptions {
            scheme: "http".into(),
            extra_args: Vec::new(),
            etcdctl_args: Vec::new(),
            loopback: IpAddr::V4(Ipv4Addr::LOCALHOST),
        }
    }
}

impl EtcdOptions {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn scheme(mut self, scheme: &str) -> Self {
        self.scheme = scheme.to_string();
        self
    }
    pub fn args(mut self, args: &[&str]) -> Self {
        self.extra_args.extend(args.iter().map(|s| s.to_string()));
        self
    }
    pub fn etcdctl_args(mut self, args: &[&str]) -> Self {
        self.etcdctl_args.extend(args.iter().map(|s| s.to_string()));
        self
    }
    /// Listen on this loopback address (see [`EtcdOptions::loopback`]).
    pub fn loopback(mut self, ip: IpAddr) -> Self {
        self.loopback = ip;
        self
    }
}

fn unique_token() -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "electd-test-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// One etcd member on loopback, with its own temp dir (data in `data/`, log in
/// `etcd.log`). SIGKILLed and reaped on drop; the temp dir is then removed
/// (set `ELECTD_TEST_KEEP_ETCD=1` to keep it for debugging).
pub struct Etcd {
    name: String,
    opts: EtcdOptions,
    client_port: u16,
    peer_port: u16,
    initial_cluster: String,
    cluster_token: String,
    cluster_member: bool,
    /// The peer URL other members reach this one at (a [`PeerMesh`] proxy), if not its own.
    advertise_peer_url: Option<String>,
    dir: TempDir,
    child: Option<Child>,
    paused: AtomicBool,
}

impl Etcd {
    /// Raise etcd's revision by `n` writes of a key outside any election.
    #[allow(dead_code)] // not every test binary raises it
    pub fn bump_revision(&self, n: usize) {
        let out = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "for i in $(seq {n}); do '{}' --endpoints {} put bump $i >/dev/null || exit 1; done",
                etcdctl_binary().display(),
                self.endpoint()
            ))
            .env("ETCDCTL_API", "3")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// etcd's current revision (`etcdctl endpoint status`).
    #[allow(dead_code)] // not every test binary reads it
    pub fn revision(&self) -> i64 {
        let out = self.etcdctl_ok(&["endpoint", "status", "-w", "json"]);
        let doc: serde_json::Value = serde_json::from_str(&out).unwrap();
        doc[0]["Status"]["header"]["revision"].as_i64().unwrap()
    }

    /// A single-member etcd on fresh loopback ports and a fresh data dir,
    /// healthy when this returns.
    pub fn start() -> Etcd {
        Self::start_opts(EtcdOptions::default())
    }

    /// Like [`Etcd::start`] with extra etcd flags (e.g. `--auth-token=simple`).
    pub fn start_with(extra_args: &[&str]) -> Etcd {
        Self::start_opts(EtcdOptions::new().args(extra_args))
    }

    /// Like [`Etcd::start_with`] with the given client URL scheme ("http" or
    /// "https"); see [`EtcdOptions::scheme`] for what "https" needs.
    pub fn start_with_scheme(scheme: &str, extra_args: &[&str]) -> Etcd {
        Self::start_opts(EtcdOptions::new().scheme(scheme).args(extra_args))
    }

    pub fn start_opts(opts: EtcdOptions) -> Etcd {
        let peer_port = free_port();
        let name = "default".to_string();
        let peer = SocketAddr::new(opts.loopback, peer_port);
        let initial_cluster = format!("{name}=http://{peer}");
        let mut etcd = Etcd::new(
            name,
            opts,
            free_port(),
            peer_port,
            initial_cluster,
            unique_token(),
            false,
        );
        etcd.spawn("new");
        etcd.wait_healthy(START_TIMEOUT);
        etcd
    }

    fn new(
        name: String,
        opts: EtcdOptions,
        client_port: u16,
        peer_port: u16,
        initial_cluster: String,
        cluster_token: String,
        cluster_member: bool,
    ) -> Etcd {
        let mut dir = tempfile::Builder::new()
            .prefix("electd-etcd-")
            .tempdir()
            .expect("create etcd temp dir");
        if std::env::var_os("ELECTD_TEST_KEEP_ETCD").is_some_and(|v| !v.is_empty() && v != "0") {
            dir.disable_cleanup(true);
        }
        Etcd {
            name,
            opts,
            client_port,
            peer_port,
            initial_cluster,
            cluster_token,
            cluster_member,
            advertise_peer_url: None,
            dir,
            child: None,
            paused: AtomicBool::new(false),
        }
    }

    /// "http://127.0.0.1:P" (or https with that scheme; `[::1]` on the IPv6 loopback).
    pub fn endpoint(&self) -> String {
        format!("{}://{}", self.opts.scheme, self.client_addr())
    }

    pub fn client_port(&self) -> u16 {
        self.client_port
    }

    /// 127.0.0.1:client_port (or [::1]), e.g. as a [`super::TcpProxy`] upstream.
    pub fn client_addr(&self) -> SocketAddr {
        SocketAddr::new(self.opts.loopback, self.client_port)
    }

    pub fn peer_port(&self) -> u16 {
        self.peer_port
    }

    pub fn peer_url(&self) -> String {
        format!(
            "http://{}",
            SocketAddr::new(self.opts.loopback, self.peer_port)
        )
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// etcd's stdout+stderr (zap JSON lines), appended to across restarts.
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("etcd.log")
    }

    pub fn log_tail(&self, lines: usize) -> String {
        file_tail(&self.log_path(), lines)
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Started and not killed/stopped by the harness (it may be paused).
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    pub fn is_paused(&self) -> bool {
        self.paused.load(Ordering::SeqCst)
    }

    /// Running and not paused.
    pub fn is_up(&self) -> bool {
        self.is_running() && !self.is_paused()
    }

    fn spawn(&mut self, cluster_state: &str) {
        assert!(
            self.child.is_none(),
            "etcd {} is already running",
            self.name
        );
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("open etcd log");
        let _ = writeln!(
            log,
            "==== electd test harness: starting etcd {} (initial-cluster-state {cluster_state}) ====",
            self.name
        );
        let client_url = self.endpoint();
        let peer_url = self.peer_url();
        let advertise_peer_url = self.advertise_peer_url.clone().unwrap_or(peer_url.clone());
        let mut cmd = Command::new(etcd_binary());
        // etcd also reads ETCD_* variables as flags (and refuses a flag given
        // both ways): keep the environment out of it.
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("ETCD_") {
                cmd.env_remove(key);
            }
        }
        cmd.arg("--name")
            .arg(&self.name)
            .arg("--data-dir")
            .arg(self.data_dir())
            .arg(format!("--listen-client-urls={client_url}"))
            .arg(format!("--advertise-client-urls={client_url}"))
            .arg(format!("--listen-peer-urls={peer_url}"))
            .arg(format!(
                "--initial-advertise-peer-urls={advertise_peer_url}"
            ))
            .arg(format!("--initial-cluster={}", self.initial_cluster))
            .arg(format!("--initial-cluster-state={cluster_state}"))
            .arg(format!("--initial-cluster-token={}", self.cluster_token))
            .args(["--heartbeat-interval=50", "--election-timeout=500"])
            .args(["--logger=zap", "--log-outputs=stderr"])
            .args(&self.opts.extra_args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log handle"))
            .stderr(log);
        let child = spawn_tied(cmd).unwrap_or_else(|e| {
            panic!("failed to spawn {}: {e}", etcd_binary().display());
        });
        self.child = Some(child);
        self.paused.store(false, Ordering::SeqCst);
    }

    /// One health probe: `GET /health` answers 200 `{"health":"true"}` (for
    /// https: `etcdctl endpoint health` succeeds). Needs a leader.
    pub fn is_healthy(&self) -> bool {
        if self.opts.scheme == "http" {
            let addr = self.client_addr().to_string();
            matches!(
                http::http_get_timeout(&addr, "/health", Duration::from_secs(1)),
                Ok((200, body)) if body.contains("\"true\"")
            )
        } else {
            self.etcdctl(&[
                "endpoint",
                "health",
                "--dial-timeout=1s",
                "--command-timeout=2s",
            ])
            .status
            .success()
        }
    }

    /// Whether this member currently believes it is the raft leader.
    pub fn is_leader(&self) -> bool {
        if self.opts.scheme == "http" {
            let addr = self.client_addr().to_string();
            matches!(
                http::http_get_timeout(&addr, "/metrics", Duration::from_secs(1)),
                Ok((200, body)) if body.lines().any(|l| l.trim() == "etcd_server_is_leader 1")
            )
        } else {
            let out = self.etcdctl(&["endpoint", "status", "-w", "json", "--dial-timeout=1s"]);
            let Ok(v) = serde_json::from_slice::<serde_json::Value>(&out.stdout) else {
                return false;
            };
            let status = &v[0]["Status"];
            let leader = status["leader"].as_u64();
            leader.is_some() && leader == status["header"]["member_id"].as_u64()
        }
    }

    /// Waits until the health probe passes; panics with the log tail if etcd
    /// exits or `timeout` passes.
    pub fn wait_healthy(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    self.child = None;
                    panic!(
                        "etcd {} exited ({status}) before becoming healthy; last log lines of {}:\n{}",
                        self.name,
                        self.log_path().display(),
                        self.log_tail(LOG_TAIL_LINES)
                    );
                }
            } else {
                panic!("etcd {} is not running", self.name);
            }
            if self.is_healthy() {
                return;
            }
            if Instant::now() >= deadline {
                panic!(
                    "etcd {} at {} not healthy after {timeout:?}; last log lines of {}:\n{}",
                    self.name,
                    self.endpoint(),
                    self.log_path().display(),
                    self.log_tail(LOG_TAIL_LINES)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGKILL and reap. No-op if not running.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.paused.store(false, Ordering::SeqCst);
    }

    /// SIGTERM (resuming it first if paused) and wait; SIGKILL after 10 s.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            signal_pid(child.id(), Signal::SIGCONT);
            signal_pid(child.id(), Signal::SIGTERM);
            if !wait_child_timeout(&mut child, Duration::from_secs(10)) {
                let _ = child.kill();
            }
            let _ = child.wait();
        }
        self.paused.store(false, Ordering::SeqCst);
    }

    /// Starts it again on the same ports and data dir (stopping it first if it
    /// is still running) and waits until healthy. A cluster member rejoins
    /// with `--initial-cluster-state=existing`.
    pub fn restart(&mut self) {
        if self.is_running() {
            self.stop();
        }
        let state = if self.cluster_member {
            "existing"
        } else {
            "new"
        };
        self.spawn(state);
        self.wait_healthy(START_TIMEOUT);
    }

    /// Like [`Etcd::restart`] but returns once the process is spawned, without waiting for
    /// it to be healthy (which a member cannot be while the cluster has no quorum).
    pub fn start_again(&mut self) {
        if self.is_running() {
            self.stop();
        }
        let state = if self.cluster_member {
            "existing"
        } else {
            "new"
        };
        self.spawn(state);
    }

    /// Stop, delete the data dir, and start a brand-new etcd on the same ports: its history
    /// starts over at revision 1 (same cluster token and peer URL: same cluster id).
    pub fn rebuild_empty(&mut self) {
        self.stop();
        std::fs::remove_dir_all(self.data_dir()).expect("remove the data dir");
        self.spawn("new");
        self.wait_healthy(START_TIMEOUT);
    }

    /// SIGKILL (no clean shutdown), delete the data dir, and start a brand-new etcd on the same
    /// ports: like [`Etcd::rebuild_empty`], as a crashed member replaced from scratch.
    pub fn kill_and_rebuild_empty(&mut self) {
        self.kill();
        std::fs::remove_dir_all(self.data_dir()).expect("remove the data dir");
        self.spawn("new");
        self.wait_healthy(START_TIMEOUT);
    }

    /// Stop, and start again from `snapshot` (`etcdctl snapshot save`) restored into a fresh
    /// data dir with a new cluster token (so a new cluster id), on the same ports.
    pub fn restore_snapshot(&mut self, snapshot: &Path) {
        self.stop();
        std::fs::remove_dir_all(self.data_dir()).expect("remove the data dir");
        self.cluster_token = unique_token();
        let out = Command::new(etcdctl_binary())
            .env("ETCDCTL_API", "3")
            .arg("snapshot")
            .arg("restore")
            .arg(snapshot)
            .arg("--name")
            .arg(&self.name)
            .arg("--data-dir")
            .arg(self.data_dir())
            .arg(format!("--initial-cluster={}", self.initial_cluster))
            .arg(format!("--initial-cluster-token={}", self.cluster_token))
            .arg(format!("--initial-advertise-peer-urls={}", self.peer_url()))
            .output()
            .expect("run etcdctl snapshot restore");
        assert!(
            out.status.success(),
            "snapshot restore failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        self.spawn("new");
        self.wait_healthy(START_TIMEOUT);
    }

    /// SIGSTOP: the process keeps its sockets but answers nothing.
    pub fn pause(&self) {
        if let Some(pid) = self.pid() {
            signal_pid(pid, Signal::SIGSTOP);
            self.paused.store(true, Ordering::SeqCst);
        }
    }

    /// SIGCONT.
    pub fn resume(&self) {
        if let Some(pid) = self.pid() {
            signal_pid(pid, Signal::SIGCONT);
            self.paused.store(false, Ordering::SeqCst);
        }
    }

    /// Runs `etcdctl --endpoints=<this member> <etcdctl_args> <args>` with
    /// ETCDCTL_API=3. If `args` contain `--endpoints` (e.g. a proxy's), the
    /// member's endpoint is left out: etcdctl appends repeated `--endpoints`.
    pub fn etcdctl(&self, args: &[&str]) -> Output {
        run_etcdctl(&[self.endpoint()], &self.opts.etcdctl_args, args)
    }

    /// [`Etcd::etcdctl`] that panics unless it succeeds; returns trimmed stdout.
    pub fn etcdctl_ok(&self, args: &[&str]) -> String {
        output_ok(self.etcdctl(args), args)
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.kill();
    }
}

fn run_etcdctl(endpoints: &[String], extra: &[String], args: &[&str]) -> Output {
    // `--endpoints` is a string-slice flag: repeating it *appends*, so only
    // pass ours when the caller did not choose the endpoints.
    let caller_chose = args
        .iter()
        .any(|a| *a == "--endpoints" || a.starts_with("--endpoints="));
    let mut cmd = Command::new(etcdctl_binary());
    cmd.env("ETCDCTL_API", "3");
    if !caller_chose {
        cmd.arg(format!("--endpoints={}", endpoints.join(",")));
    }
    cmd.args(extra)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("failed to run {}: {e}", etcdctl_binary().display()))
}

fn output_ok(out: Output, args: &[&str]) -> String {
    if !out.status.success() {
        panic!(
            "etcdctl {args:?} failed ({}):\nstdout: {}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// An n-member etcd cluster on loopback. Drop kills every member.
pub struct EtcdCluster {
    members: Vec<Etcd>,
    /// With [`EtcdCluster::start_peer_proxied`]: the proxies all peer traffic goes through.
    mesh: Option<PeerMesh>,
}

impl EtcdCluster {
    /// Starts `n` members and waits until all are healthy with one leader.
    pub fn start(n: usize) -> EtcdCluster {
        Self::start_opts(n, EtcdOptions::default())
    }

    pub fn start_with(n: usize, extra_args: &[&str]) -> EtcdCluster {
        Self::start_opts(n, EtcdOptions::new().args(extra_args))
    }

    pub fn start_opts(n: usize, opts: EtcdOptions) -> EtcdCluster {
        Self::start_inner(n, opts, false)
    }

    /// Like [`EtcdCluster::start`], with every member's peer (raft) traffic going through a
    /// [`PeerMesh`] of proxies, so members can be cut from each other ([`Self::isolate_peer`])
    /// while clients still reach all of them.
    pub fn start_peer_proxied(n: usize) -> EtcdCluster {
        Self::start_inner(n, EtcdOptions::default(), true)
    }

    fn start_inner(n: usize, opts: EtcdOptions, proxied: bool) -> EtcdCluster {
        assert!(n >= 1, "a cluster needs at least one member");
        let ports: Vec<(u16, u16)> = (0..n).map(|_| (free_port(), free_port())).collect();
        let mesh = proxied.then(|| {
            let upstreams: Vec<SocketAddr> = ports
                .iter()
                .map(|(_, peer)| SocketAddr::new(opts.loopback, *peer))
                .collect();
            PeerMesh::start(&upstreams)
        });
        let advertised = |i: usize| match &mesh {
            Some(mesh) => mesh.url(i),
            None => format!("http://{}", SocketAddr::new(opts.loopback, ports[i].1)),
        };
        let initial_cluster = (0..n)
            .map(|i| format!("m{i}={}", advertised(i)))
            .collect::<Vec<_>>()
            .join(",");
        let token = unique_token();
        let mut members: Vec<Etcd> = ports
            .iter()
            .enumerate()
            .map(|(i, &(client, peer))| {
                let mut m = Etcd::new(
                    format!("m{i}"),
                    opts.clone(),
                    client,
                    peer,
                    initial_cluster.clone(),
                    token.clone(),
                    true,
                );
                m.advertise_peer_url = mesh.as_ref().map(|mesh| mesh.url(i));
                m
            })
            .collect();
        // All members must be up before any of them can elect a leader.
        for m in &mut members {
            m.spawn("new");
        }
        let mut cluster = EtcdCluster { members, mesh };
        cluster.wait_healthy(START_TIMEOUT);
        cluster
    }

    pub fn len(&self) -> usize {
        self.members.len()
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Client endpoints of all members (including killed or paused ones).
    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(Etcd::endpoint).collect()
    }

    /// Client endpoints of the members that are running and not paused.
    pub fn live_endpoints(&self) -> Vec<String> {
        self.members
            .iter()
            .filter(|m| m.is_up())
            .map(Etcd::endpoint)
            .collect()
    }

    /// Member `i`, to kill/stop/restart/pause/resume it.
    pub fn member(&mut self, i: usize) -> &mut Etcd {
        &mut self.members[i]
    }

    pub fn members(&self) -> &[Etcd] {
        &self.members
    }

    /// The peer proxies (with [`EtcdCluster::start_peer_proxied`]).
    pub fn mesh(&self) -> Option<&PeerMesh> {
        self.mesh.as_ref()
    }

    /// Cuts member `m`'s peer links to every other member (`Blackhole` or `Reset`); clients
    /// still reach it. Needs [`EtcdCluster::start_peer_proxied`].
    pub fn isolate_peer(&self, m: usize, mode: ProxyMode) {
        self.mesh
            .as_ref()
            .expect("isolate_peer needs EtcdCluster::start_peer_proxied")
            .isolate(m, mode);
    }

    /// Every peer link back to `Pass`.
    pub fn heal_peers(&self) {
        if let Some(mesh) = &self.mesh {
            mesh.heal();
        }
    }

    /// Index of the member that currently reports itself leader (among the
    /// running, unpaused members).
    pub fn leader(&self) -> Option<usize> {
        self.members.iter().position(|m| m.is_up() && m.is_leader())
    }

    /// Waits until every running, unpaused member is healthy and exactly one
    /// of them is leader; panics with each member's log tail otherwise.
    pub fn wait_healthy(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        for m in self.members.iter_mut().filter(|m| m.is_up()) {
            m.wait_healthy(deadline.saturating_duration_since(Instant::now()));
        }
        loop {
            let up: Vec<&Etcd> = self.members.iter().filter(|m| m.is_up()).collect();
            let healthy = up.iter().all(|m| m.is_healthy());
            let leaders = up.iter().filter(|m| m.is_leader()).count();
            if healthy && leaders == 1 {
                return;
            }
            if Instant::now() >= deadline {
                let logs: String = self
                    .members
                    .iter()
                    .map(|m| {
                        format!(
                            "--- {} ({}) ---\n{}\n",
                            m.name,
                            m.endpoint(),
                            m.log_tail(15)
                        )
                    })
                    .collect();
                panic!(
                    "etcd cluster not healthy after {timeout:?} (all healthy: {healthy}, leaders: {leaders}); logs:\n{logs}"
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Runs etcdctl against all running, unpaused members.
    pub fn etcdctl(&self, args: &[&str]) -> Output {
        let extra = self
            .members
            .first()
            .map(|m| m.opts.etcdctl_args.clone())
            .unwrap_or_default();
        run_etcdctl(&self.live_endpoints(), &extra, args)
    }

    /// [`EtcdCluster::etcdctl`] that panics unless it succeeds; returns trimmed stdout.
    pub fn etcdctl_ok(&self, args: &[&str]) -> String {
        output_ok(self.etcdctl(args), args)
    }
}
