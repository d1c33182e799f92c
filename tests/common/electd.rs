//! Running the `electd` binary under test: one [`Daemon`] per replica, with its own HTTP port,
//! Unix socket and log file; SIGKILLed on drop.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use nix::sys::signal::Signal;
use serde_json::Value;
use tempfile::TempDir;

use super::{file_tail, free_port, http_get, signal_pid, spawn_tied, unix_http, wait_until};

pub fn electd_binary() -> &'static str {
    env!("CARGO_BIN_EXE_electd")
}

/// How to start one replica.
#[derive(Clone, Debug)]
pub struct DaemonSpec {
    pub endpoints: String,
    pub election: String,
    pub id: String,
    pub ttl: String,
    pub extra: Vec<String>,
    pub command: Vec<String>,
    /// Socket path; default: a fresh one in the daemon's temp dir.
    pub socket: Option<PathBuf>,
    /// Extra environment variables for the electd process.
    pub env: Vec<(String, String)>,
    /// `--log-level` (default `debug`).
    pub log_level: String,
    /// The loopback address of the HTTP API (`--http`): 127.0.0.1 (default) or ::1.
    pub loopback: IpAddr,
}

impl DaemonSpec {
    pub fn new(endpoints: &str, election: &str, id: &str) -> DaemonSpec {
        DaemonSpec {
            endpoints: endpoints.to_string(),
            election: election.to_string(),
            id: id.to_string(),
            ttl: "3s".to_string(),
            extra: Vec::new(),
            command: Vec::new(),
            socket: None,
            env: Vec::new(),
            log_level: "debug".to_string(),
            loopback: IpAddr::V4(Ipv4Addr::LOCALHOST),
        }
    }

    /// Serve the HTTP API on this loopback address.
    pub fn loopback(mut self, ip: IpAddr) -> Self {
        self.loopback = ip;
        self
    }

    pub fn log_level(mut self, level: &str) -> Self {
        self.log_level = level.to_string();
        self
    }

    pub fn ttl(mut self, ttl: &str) -> Self {
        self.ttl = ttl.to_string();
        self
    }

    pub fn args(mut self, args: &[&str]) -> Self {
        self.extra.extend(args.iter().map(|s| s.to_string()));
        self
    }

    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_string(), value.to_string()));
        self
    }

    pub fn socket(mut self, path: &Path) -> Self {
        self.socket = Some(path.to_path_buf());
        self
    }

    /// Wrap `sh -c SCRIPT`.
    pub fn sh(mut self, script: &str) -> Self {
        self.command = vec!["sh".into(), "-c".into(), script.into()];
        self
    }

    pub fn start(self) -> Daemon {
        Daemon::start(self)
    }
}

/// One running electd.
pub struct Daemon {
    pub spec: DaemonSpec,
    pub http: String,
    pub socket: PathBuf,
    pub log: PathBuf,
    child: Option<Child>,
    _dir: TempDir,
}

impl Daemon {
    pub fn start(spec: DaemonSpec) -> Daemon {
        let dir = tempfile::Builder::new()
            .prefix("electd-test-")
            .tempdir()
            .expect("temp dir");
        let http = SocketAddr::new(spec.loopback, free_port()).to_string();
        let socket = spec
            .socket
            .clone()
            .unwrap_or_else(|| dir.path().join("electd.sock"));
        let log = dir.path().join("electd.log");
        let mut d = Daemon {
            spec,
            http,
            socket,
            log,
            child: None,
            _dir: dir,
        };
        d.spawn();
        d
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("open daemon log");
        let mut cmd = Command::new(electd_binary());
        // An empty election name: the elections come from a config file (`[[elections]]`,
        // given with `.args(&["--config", …])`).
        if !self.spec.election.is_empty() {
            cmd.args(["--election", &self.spec.election]);
        }
        cmd.args([
            "--endpoints",
            &self.spec.endpoints,
            "--id",
            &self.spec.id,
            "--ttl",
            &self.spec.ttl,
            "--http",
            &self.http,
            "--socket",
        ])
        .arg(&self.socket)
        .args(["--log-level", &self.spec.log_level])
        .args(&self.spec.extra)
        .env_remove("RUST_LOG")
        .envs(self.spec.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("clone log fd"))
        .stderr(log);
        // The default stop grace (3s) does not fit the tests' 3s TTL (with a command, or
        // without one: the app's budget leaves it the grace to stop).
        if !self.spec.extra.iter().any(|a| a == "--stop-grace") {
            cmd.args(["--stop-grace", "1s"]);
        }
        if !self.spec.command.is_empty() {
            cmd.arg("--").args(&self.spec.command);
        }
        self.child = Some(spawn_tied(cmd).expect("spawn electd"));
    }

    /// Start again with the same id, ports and socket (after a kill or exit).
    pub fn restart(&mut self) {
        assert!(!self.is_running(), "restart of a running daemon");
        self.spawn();
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("daemon was started").id()
    }

    pub fn id(&self) -> &str {
        &self.spec.id
    }

    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// The pid of this daemon's freeze watchdog (its child `<exe> __watchdog`), if one runs.
    pub fn watchdog_pid(&self) -> Option<u32> {
        let me = self.child.as_ref()?.id();
        std::fs::read_dir("/proc")
            .ok()?
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
            .find(|pid| {
                let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
                let ppid = stat
                    .rsplit_once(')')
                    .and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<u32>().ok());
                let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                ppid == Some(me) && cmdline.split(|b| *b == 0).any(|a| a == b"__watchdog")
            })
    }

    pub fn signal(&self, sig: Signal) {
        signal_pid(self.pid(), sig);
    }

    /// SIGKILL and reap.
    pub fn kill9(&mut self) {
        if let Some(c) = self.child.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Wait for the daemon to exit on its own.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let child = self.child.as_mut().expect("daemon was started");
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                return status;
            }
            if std::time::Instant::now() >= deadline {
                panic!(
                    "{} did not exit within {timeout:?}; log:\n{}",
                    self.spec.id,
                    self.log_tail(40)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log_tail(&self, lines: usize) -> String {
        file_tail(&self.log, lines)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `/role` over HTTP, if the daemon answers. Asked as an observer (`?claim=false`): a test
    /// does not act as leader on it, so no budget is handed out (it would make a sidecar's
    /// graceful handover wait it out).
    pub fn role(&self) -> Option<Value> {
        let (code, body) = http_get(&self.http, "/role?claim=false").ok()?;
        (code == 200).then(|| serde_json::from_str(&body).expect("/role is JSON"))
    }

    /// `/role` over the Unix socket, if the daemon answers (as an observer, like [`Daemon::role`]).
    pub fn role_socket(&self) -> Option<Value> {
        let (code, body) = unix_http(&self.socket, "GET", "/role?claim=false", None).ok()?;
        (code == 200).then(|| serde_json::from_str(&body).expect("/role is JSON"))
    }

    pub fn role_name(&self) -> Option<String> {
        self.role()
            .and_then(|r| r["role"].as_str().map(str::to_string))
    }

    /// The elections this daemon leads now (`GET /elections`), sorted; `None` when it does
    /// not answer.
    pub fn leads(&self) -> Option<Vec<String>> {
        let (code, body) = http_get(&self.http, "/elections").ok()?;
        if code != 200 {
            return None;
        }
        let doc: Value = serde_json::from_str(&body).expect("/elections is JSON");
        let mut out: Vec<String> = doc["elections"]
            .as_array()?
            .iter()
            .filter(|e| matches!(e["role"].as_str(), Some("leader" | "suspect")))
            .filter_map(|e| e["election"].as_str().map(str::to_string))
            .collect();
        out.sort();
        Some(out)
    }

    /// Whether `/leader` answers 200.
    pub fn is_leader(&self) -> bool {
        matches!(http_get(&self.http, "/leader"), Ok((200, _)))
    }

    pub fn fencing_token(&self) -> Option<i64> {
        self.role().and_then(|r| r["fencing_token"].as_i64())
    }

    /// POST a control action over the Unix socket.
    pub fn control(&self, action: &str) -> (u16, Value) {
        let (code, body) = unix_http(&self.socket, "POST", action, None)
            .unwrap_or_else(|e| panic!("{action} over the socket failed: {e}"));
        (code, serde_json::from_str(&body).unwrap_or(Value::Null))
    }

    pub fn wait_role(&self, role: &str, timeout: Duration) {
        let what = format!("{} to become {role}", self.spec.id);
        let mut last = None;
        let deadline = std::time::Instant::now() + timeout;
        while std::time::Instant::now() < deadline {
            last = self.role_name();
            if last.as_deref() == Some(role) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "timed out after {timeout:?} waiting for {what} (last: {last:?}); log:\n{}",
            self.log_tail(30)
        );
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Indexes of the daemons whose `/leader` answers 200.
pub fn leaders(daemons: &[Daemon]) -> Vec<usize> {
    daemons
        .iter()
        .enumerate()
        .filter(|(_, d)| d.is_leader())
        .map(|(i, _)| i)
        .collect()
}

/// Wait until exactly one daemon leads and every live one names it; returns its index.
pub fn wait_one_leader(daemons: &[Daemon], timeout: Duration) -> usize {
    let mut found = None;
    wait_until(
        timeout,
        "exactly one leader that every replica agrees on",
        || {
            let l = leaders(daemons);
            if l.len() != 1 {
                return false;
            }
            let leader_id = daemons[l[0]].id().to_string();
            let agree = daemons.iter().all(|d| match d.role() {
                None => true, // not running
                Some(r) => r["leader"]["id"].as_str() == Some(leader_id.as_str()),
            });
            if agree {
                found = Some(l[0]);
            }
            agree
        },
    );
    found.expect("set when the wait succeeded")
}

/// Read a file of lines written by test children (missing file = no lines).
pub fn read_lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}
