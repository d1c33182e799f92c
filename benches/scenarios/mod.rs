//! The scenarios of the benchmark (issue 8), shared by `benches/electd.rs` (the full run) and
//! `tests/bench_smoke.rs` (one short iteration of each, so it keeps working).
//!
//! Every scenario starts its own etcd through the integration-test harness (`crate::common`),
//! runs electd and `etcdctl lock` against it with the same TTL, and returns a [`Section`] of
//! figures. Wrapped children are shell scripts that append `start`/`tick`/`stop` records with
//! `date +%s%N` to a ledger (the harness's format), so both tools are timed by the same clock.
//! A failed iteration is recorded in its section and the run goes on.

pub mod api;
pub mod elections;
pub mod failover;
pub mod footprint;
pub mod guard;
pub mod health;
pub mod report;
pub mod routing;
pub mod scale;
pub mod sidecar;
pub mod trace;

use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;

use crate::common::{Daemon, DaemonSpec, Etcd, etcdctl_binary, pid_alive, spawn_tied};
pub use report::{Data, Page, Report, Section, SectionData, Value};

/// Scenario keys, in report order (`--only` takes one of them).
pub const SCENARIOS: [&str; 12] = [
    "handoff",
    "crash",
    "guard",
    "sidecar",
    "partition",
    "flap",
    "health",
    "api",
    "routing",
    "footprint",
    "scale",
    "elections",
];

/// How long and how often everything runs; kept in the data file as the run's parameters
/// (durations in seconds), which the page's words are rendered from.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct BenchConfig {
    /// Iterations per tool of each failover scenario, and leader changes in `scale`.
    pub iterations: usize,
    /// The lease TTL of both tools (whole seconds).
    #[serde(with = "report::secs")]
    pub ttl: Duration,
    /// electd's `--stop-grace`.
    #[serde(with = "report::secs")]
    pub stop_grace: Duration,
    /// After the new child started: how long to keep watching the old one.
    #[serde(with = "report::secs")]
    pub observe: Duration,
    /// Flap: how long to watch after the link is restored, beyond one TTL.
    #[serde(with = "report::secs")]
    pub flap_settle: Duration,
    /// Crash failover runs at the TTL and at this longer one (electd's default), both tools.
    #[serde(with = "report::secs", default = "defaults::crash_long_ttl")]
    pub crash_long_ttl: Duration,
    /// electd's default `--start-guard` (its settings table's), which the guard scenario runs
    /// beside `--start-guard 0s`.
    #[serde(with = "report::secs", default = "defaults::start_guard")]
    pub start_guard: Duration,
    /// Sidecar: replicas without a command, each with a contract-following app; how long the
    /// leader's electd stays SIGSTOPped (longer than the TTL); how long to watch after a fault
    /// has healed.
    #[serde(default = "defaults::sidecar_replicas")]
    pub sidecar_replicas: usize,
    #[serde(with = "report::secs", default = "defaults::sidecar_freeze")]
    pub sidecar_freeze: Duration,
    #[serde(with = "report::secs", default = "defaults::sidecar_settle")]
    pub sidecar_settle: Duration,
    /// Health-check failover: replicas, each with its own health file, and their
    /// `--health-interval`, `--health-fall` and `--health-rise`.
    pub health_replicas: usize,
    #[serde(with = "report::secs")]
    pub health_interval: Duration,
    pub health_fall: u32,
    pub health_rise: u32,
    /// Role API: concurrent keep-alive clients, warm-up and measured duration per target,
    /// rounds (each round measures every target once, in alternating order).
    pub api_clients: usize,
    #[serde(with = "report::secs")]
    pub api_warmup: Duration,
    #[serde(with = "report::secs")]
    pub api_duration: Duration,
    pub api_rounds: usize,
    /// Routing: replicas (each with its app and proxy),
    pub routing_replicas: usize,
    /// concurrent clients on kept connections, warm-up and measured duration per path
    /// (one round per iteration); after a failover, how long clients keep going after the new
    /// leader's election (HAProxy marks a deposed leader down after fall × inter = 2 s).
    pub routing_clients: usize,
    #[serde(with = "report::secs")]
    pub routing_warmup: Duration,
    #[serde(with = "report::secs")]
    pub routing_duration: Duration,
    #[serde(with = "report::secs")]
    pub routing_watch: Duration,
    /// Footprint: the idle electd window (RSS, CPU), and the other windows.
    #[serde(with = "report::secs")]
    pub footprint_idle: Duration,
    #[serde(with = "report::secs")]
    pub footprint_window: Duration,
    #[serde(with = "report::secs")]
    pub footprint_warmup: Duration,
    /// Footprint: electd's default TTL, and the window over which etcd's load per idle replica
    /// is averaged at it.
    #[serde(with = "report::secs")]
    pub footprint_default_ttl: Duration,
    #[serde(with = "report::secs")]
    pub footprint_default_ttl_window: Duration,
    /// Scale: electd processes in one election, in-process candidate counts (each in a
    /// helper process of its own), their TTL, and the window etcd is watched after each
    /// leader change or join.
    pub scale_processes: usize,
    pub scale_in_process: Vec<usize>,
    #[serde(with = "report::secs")]
    pub scale_ttl: Duration,
    #[serde(with = "report::secs")]
    pub scale_window: Duration,
    /// Several elections: elections per process (beside one), the `balance_delay` they run
    /// with, and the idle window etcd's load is averaged over.
    #[serde(default = "defaults::elections_count")]
    pub elections_count: usize,
    #[serde(with = "report::secs", default = "defaults::elections_balance_delay")]
    pub elections_balance_delay: Duration,
    #[serde(with = "report::secs", default = "defaults::elections_idle")]
    pub elections_idle: Duration,
    /// Arguments that make this executable a helper process (with one of the helper
    /// variables set; see [`helper_if_asked`]): the role API's baseline server, an in-process
    /// scale run.
    #[serde(skip)]
    pub helper_args: Vec<String>,
    /// Run only this scenario.
    pub only: Option<String>,
    /// How long to watch /proc/stat for other work before and after the run.
    #[serde(with = "report::secs")]
    pub quiet: Duration,
    /// Progress lines on stderr.
    #[serde(skip)]
    pub verbose: bool,
}

impl BenchConfig {
    /// The full benchmark (`cargo bench --bench electd`).
    pub fn full() -> BenchConfig {
        BenchConfig {
            iterations: 20,
            ttl: Duration::from_secs(3),
            stop_grace: Duration::from_secs(1),
            observe: Duration::from_secs(2),
            flap_settle: Duration::from_secs(2),
            crash_long_ttl: defaults::crash_long_ttl(),
            start_guard: defaults::start_guard(),
            sidecar_replicas: defaults::sidecar_replicas(),
            sidecar_freeze: defaults::sidecar_freeze(),
            sidecar_settle: defaults::sidecar_settle(),
            health_replicas: 3,
            health_interval: Duration::from_millis(200),
            health_fall: 3,
            health_rise: 2,
            api_clients: 16,
            api_warmup: Duration::from_millis(200),
            api_duration: Duration::from_secs(1),
            api_rounds: 10,
            routing_replicas: 3,
            routing_clients: 16,
            routing_warmup: Duration::from_millis(200),
            routing_duration: Duration::from_secs(1),
            routing_watch: Duration::from_secs(3),
            footprint_idle: Duration::from_secs(60),
            footprint_window: Duration::from_secs(20),
            footprint_warmup: Duration::from_secs(3),
            footprint_default_ttl: Duration::from_secs(10),
            footprint_default_ttl_window: Duration::from_secs(30),
            scale_processes: 30,
            scale_in_process: vec![200, 1000],
            scale_ttl: Duration::from_secs(10),
            scale_window: Duration::from_secs(1),
            elections_count: defaults::elections_count(),
            elections_balance_delay: defaults::elections_balance_delay(),
            elections_idle: defaults::elections_idle(),
            helper_args: Vec::new(),
            only: None,
            quiet: Duration::from_secs(3),
            verbose: true,
        }
    }

    /// One short iteration of everything, for the test suite.
    #[allow(dead_code)] // used by the smoke test only
    pub fn smoke() -> BenchConfig {
        BenchConfig {
            iterations: 1,
            observe: Duration::from_millis(400),
            flap_settle: Duration::from_millis(300),
            sidecar_settle: Duration::from_millis(500),
            health_replicas: 2,
            api_clients: 8,
            api_warmup: Duration::from_millis(100),
            api_duration: Duration::from_millis(250),
            api_rounds: 1,
            routing_clients: 4,
            routing_warmup: Duration::from_millis(100),
            routing_duration: Duration::from_millis(250),
            routing_watch: Duration::from_millis(1500),
            footprint_idle: Duration::from_secs(3),
            footprint_window: Duration::from_millis(1500),
            footprint_warmup: Duration::from_millis(500),
            footprint_default_ttl_window: Duration::from_millis(1500),
            scale_processes: 3,
            scale_in_process: vec![10, 20],
            scale_window: Duration::from_millis(500),
            elections_count: 6,
            elections_balance_delay: Duration::from_millis(300),
            elections_idle: Duration::from_millis(1500),
            // tests/bench_smoke.rs: run its ignored test that calls helper_if_asked.
            helper_args: [
                "bench_helper_process",
                "--exact",
                "--ignored",
                "--test-threads=1",
            ]
            .map(String::from)
            .to_vec(),
            verbose: false,
            quiet: Duration::from_millis(300),
            // The second TTL of the crash scenario: `etcdctl lock` waits it out once.
            crash_long_ttl: Duration::from_secs(5),
            ..BenchConfig::full()
        }
    }

    pub fn ttl_ms(&self) -> f64 {
        self.ttl.as_secs_f64() * 1e3
    }

    pub fn progress(&self, msg: &str) {
        if self.verbose {
            eprintln!("[bench] {msg}");
        }
    }
}

/// The full run's values of the parameters added after data files were written without them
/// (a data file that lacks one was written before its scenario existed).
mod defaults {
    use std::time::Duration;

    use electd::config::parse_duration;
    use electd::config::table::{Default, SETTINGS};

    pub fn crash_long_ttl() -> Duration {
        electd_default("ttl")
    }

    pub fn start_guard() -> Duration {
        electd_default("start_guard")
    }

    pub fn sidecar_replicas() -> usize {
        3
    }

    /// The TTL (3 s) and one second more.
    pub fn sidecar_freeze() -> Duration {
        Duration::from_secs(4)
    }

    pub fn sidecar_settle() -> Duration {
        Duration::from_secs(1)
    }

    pub fn elections_count() -> usize {
        100
    }

    pub fn elections_balance_delay() -> Duration {
        Duration::from_secs(1)
    }

    pub fn elections_idle() -> Duration {
        Duration::from_secs(20)
    }

    /// The default of electd's setting `key`, from its settings table.
    fn electd_default(key: &str) -> Duration {
        SETTINGS
            .iter()
            .find(|s| s.key == key)
            .and_then(|s| match s.default {
                Default::Value(v) => parse_duration(v).ok(),
                _ => None,
            })
            .unwrap_or_else(|| panic!("invariant: electd's setting {key} has a duration default"))
    }
}

/// Run every scenario (or the one chosen with `only`) and collect the report.
pub fn run(cfg: &BenchConfig) -> Report {
    let mut report = Report::begin(cfg);
    for key in SCENARIOS {
        if cfg.only.as_deref().is_some_and(|o| o != key) {
            continue;
        }
        cfg.progress(&format!("scenario {key}"));
        let started = Instant::now();
        let mut section = match key {
            "handoff" => failover::handoff(cfg),
            "crash" => failover::crash(cfg),
            "guard" => guard::guard(cfg),
            "sidecar" => sidecar::sidecar(cfg),
            "partition" => failover::partition(cfg),
            "flap" => failover::flap(cfg),
            "health" => health::health(cfg),
            "api" => api::role_api(cfg),
            "routing" => routing::routing(cfg),
            "footprint" => footprint::footprint(cfg),
            "scale" => scale::scale(cfg),
            "elections" => elections::elections(cfg),
            _ => unreachable!("every scenario key is handled"),
        };
        section.seconds = started.elapsed().as_secs_f64();
        report.sections.push(section);
    }
    report.finish();
    report
}

/// The words of scenario `key`'s section for a run's parameters and figures (`None`: no such
/// scenario).
pub fn page(key: &str, p: &BenchConfig, d: &SectionData) -> Option<Page> {
    Some(match key {
        "handoff" => failover::handoff_page(p, d),
        "crash" => failover::crash_page(p, d),
        "guard" => guard::page(p, d),
        "sidecar" => sidecar::page(p, d),
        "partition" => failover::partition_page(p, d),
        "flap" => failover::flap_page(p, d),
        "health" => health::page(p, d),
        "api" => api::page(p, d),
        "routing" => routing::page(p, d),
        "footprint" => footprint::page(p, d),
        "scale" => scale::page(p, d),
        "elections" => elections::page(p, d),
        _ => return None,
    })
}

/// In a helper process the benchmark started (this executable re-run with
/// [`BenchConfig::helper_args`]): do the helper's work and return true. Anywhere else: return
/// false at once.
pub fn helper_if_asked() -> bool {
    api::serve_baseline_if_asked() || scale::run_helper_if_asked() || api::profile_if_asked()
}

/// This executable re-run as a helper process with `env` set, tied to this process (it dies
/// with it); its stdout is discarded, its stderr (progress) is ours.
pub fn start_helper(cfg: &BenchConfig, env: &[(&str, &Path)], stdin: Stdio) -> Child {
    let mut cmd = Command::new(std::env::current_exe().expect("own executable"));
    cmd.args(&cfg.helper_args)
        .stdin(stdin)
        .stdout(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    spawn_tied(cmd).expect("start a helper process")
}

/// Run `f`, turning a panic (a harness timeout, say) into an error message.
pub fn attempt<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    std::panic::catch_unwind(AssertUnwindSafe(f)).map_err(|e| {
        e.downcast_ref::<String>()
            .cloned()
            .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "panic".into())
            .lines()
            .next()
            .unwrap_or_default()
            .to_string()
    })
}

/// Wall-clock nanoseconds, the clock of the ledger's `date +%s%N`.
pub fn now_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default()
}

/// `a − b` in milliseconds, for two ledger/wall-clock timestamps in nanoseconds.
pub fn ms_between(a: u128, b: u128) -> f64 {
    (a as i128 - b as i128) as f64 / 1e6
}

// ---------------------------------------------------------------------------
// The two tools
// ---------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tool {
    Electd,
    EtcdctlLock,
}

impl Tool {
    pub const BOTH: [Tool; 2] = [Tool::Electd, Tool::EtcdctlLock];

    pub fn label(self) -> &'static str {
        match self {
            Tool::Electd => "electd",
            Tool::EtcdctlLock => "etcdctl lock",
        }
    }

    pub fn slug(self) -> &'static str {
        match self {
            Tool::Electd => "electd",
            Tool::EtcdctlLock => "etcdctl",
        }
    }

    /// Column of this tool in a side-by-side row.
    pub fn col(self) -> usize {
        match self {
            Tool::Electd => 0,
            Tool::EtcdctlLock => 1,
        }
    }
}

/// `etcdctl lock --ttl N NAME -- CMD…` in its own process group, so that (as the issue found)
/// a graceful stop can signal the group: etcdctl itself ignores SIGTERM while CMD runs.
pub struct LockProcess {
    child: Child,
}

impl LockProcess {
    pub fn start(
        endpoint: &str,
        name: &str,
        id: &str,
        ttl: Duration,
        command: &[String],
        log: &Path,
    ) -> LockProcess {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .expect("open etcdctl log");
        let mut cmd = Command::new(etcdctl_binary());
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("ETCDCTL_") {
                cmd.env_remove(key);
            }
        }
        cmd.env("ETCDCTL_API", "3")
            .env("ELECTD_ID", id)
            .env("ELECTD_ELECTION", name)
            .arg(format!("--endpoints={endpoint}"))
            .args(["lock", "--ttl", &ttl.as_secs().to_string(), name, "--"])
            .args(command)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log fd"))
            .stderr(log);
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        LockProcess {
            child: spawn_tied(cmd).expect("spawn etcdctl lock"),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    fn group(&self) -> Pid {
        Pid::from_raw(self.child.id() as i32)
    }
}

impl Drop for LockProcess {
    fn drop(&mut self) {
        let _ = killpg(self.group(), Signal::SIGKILL);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An electd replica with the benchmark's TTL, logging as deployed: the harness passes
/// `--log-level debug`, and `RUST_LOG` (which wins over it) restores electd's default filter.
pub fn electd_spec(cfg: &BenchConfig, endpoint: &str, name: &str, id: &str) -> DaemonSpec {
    DaemonSpec::new(endpoint, name, id)
        .ttl(&format!("{}s", cfg.ttl.as_secs()))
        .env("RUST_LOG", "warn,electd=info")
}

/// [`electd_spec`] with the benchmark's `--stop-grace`.
pub fn graced_spec(cfg: &BenchConfig, endpoint: &str, name: &str, id: &str) -> DaemonSpec {
    electd_spec(cfg, endpoint, name, id)
        .args(&["--stop-grace", &format!("{}ms", cfg.stop_grace.as_millis())])
}

/// How an electd replica runs beyond the benchmark's TTL and stop grace.
#[derive(Debug, Clone, Copy, Default)]
pub struct Tuning<'a> {
    /// `RUST_LOG`, if not as deployed (see [`electd_spec`]).
    pub log: Option<&'a str>,
    /// More flags.
    pub args: &'a [&'a str],
}

/// One replica of the wrapped job, under either tool.
pub enum Wrapper {
    Electd(Box<Daemon>),
    Lock(LockProcess),
}

impl Wrapper {
    /// Start `sh SCRIPT` under `tool` as replica `id` of election `name`; electd with
    /// `tuning` (ignored by `etcdctl lock`).
    pub fn start(
        tool: Tool,
        cfg: &BenchConfig,
        endpoint: &str,
        name: &str,
        id: &str,
        script: &Path,
        tuning: Tuning,
    ) -> Wrapper {
        let command = vec!["sh".to_string(), script.display().to_string()];
        match tool {
            Tool::Electd => {
                let mut spec = graced_spec(cfg, endpoint, name, id).args(tuning.args);
                if let Some(filter) = tuning.log {
                    spec = spec.env("RUST_LOG", filter);
                }
                spec.command = command;
                Wrapper::Electd(Box::new(spec.start()))
            }
            Tool::EtcdctlLock => {
                let log = script.with_extension(format!("{id}.log"));
                Wrapper::Lock(LockProcess::start(
                    endpoint, name, id, cfg.ttl, &command, &log,
                ))
            }
        }
    }

    pub fn pid(&self) -> u32 {
        match self {
            Wrapper::Electd(d) => d.pid(),
            Wrapper::Lock(l) => l.pid(),
        }
    }

    /// The tool's graceful stop: SIGTERM to electd; SIGTERM to etcdctl's whole process group.
    pub fn stop_gracefully(&self) {
        match self {
            Wrapper::Electd(d) => d.signal(Signal::SIGTERM),
            Wrapper::Lock(l) => {
                let _ = killpg(l.group(), Signal::SIGTERM);
            }
        }
    }

    /// SIGKILL of the wrapper process only (not its child).
    pub fn crash(&self) {
        let _ = kill(Pid::from_raw(self.pid() as i32), Signal::SIGKILL);
    }

    pub fn daemon(&self) -> Option<&Daemon> {
        match self {
            Wrapper::Electd(d) => Some(d),
            Wrapper::Lock(_) => None,
        }
    }
}

// ---------------------------------------------------------------------------
// The wrapped child and its ledger
// ---------------------------------------------------------------------------

/// Where one election's children write: the ledger and a `ID PID` file for clean-up.
pub struct Ledger {
    pub path: PathBuf,
    pub pids: PathBuf,
    pub script: PathBuf,
}

impl Ledger {
    /// Write the child script for election `name` into `dir`.
    ///
    /// The child records `start`, a `tick` every 50 ms and `stop` on SIGTERM (lines `WHAT ID
    /// TOKEN NANOS`). The token is electd's `ELECTD_FENCING_TOKEN`, else etcdctl's
    /// `ETCD_LOCK_REV`; etcdctl children get `ELECTD_ID` from etcdctl's environment.
    pub fn new(dir: &Path, name: &str) -> Ledger {
        let path = dir.join(format!("{name}.ledger"));
        let pids = dir.join(format!("{name}.pids"));
        let script = dir.join(format!("{name}.sh"));
        let (l, p) = (path.display(), pids.display());
        let text = format!(
            ": \"${{ELECTD_FENCING_TOKEN:=${{ETCD_LOCK_REV:-0}}}}\"\n\
             now() {{ date +%s%N; }}\n\
             echo \"$ELECTD_ID $$\" >> {p}\n\
             echo \"start $ELECTD_ID $ELECTD_FENCING_TOKEN $(now)\" >> {l}\n\
             trap 'echo \"stop $ELECTD_ID $ELECTD_FENCING_TOKEN $(now)\" >> {l}; exit 0' TERM\n\
             while :; do echo \"tick $ELECTD_ID $ELECTD_FENCING_TOKEN $(now)\" >> {l}; sleep 0.05; done\n"
        );
        std::fs::write(&script, text).expect("write child script");
        Ledger { path, pids, script }
    }

    pub fn records(&self) -> Vec<crate::common::Record> {
        crate::common::ledger(&self.path)
    }

    pub fn starts_of(&self, id: &str) -> usize {
        self.records()
            .iter()
            .filter(|r| r.what == "start" && r.id == id)
            .count()
    }

    /// The runs of replica `id`'s children, in start order.
    pub fn runs_of(&self, id: &str) -> Vec<crate::common::Run> {
        crate::common::runs(&self.records())
            .into_iter()
            .filter(|r| r.id == id)
            .collect()
    }

    /// `(id, pid)` of every child that started.
    pub fn children(&self) -> Vec<(String, i32)> {
        crate::common::read_lines(&self.pids)
            .iter()
            .filter_map(|l| {
                let (id, pid) = l.split_once(' ')?;
                Some((id.to_string(), pid.trim().parse().ok()?))
            })
            .collect()
    }

    /// Whether `pid` is alive and still runs our script (pids are reused once reaped).
    fn runs_script(&self, pid: i32) -> bool {
        let script = self.script.display().to_string();
        pid_alive(pid)
            && std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains(&script))
    }

    /// The pid of replica `id`'s first child.
    pub fn first_child(&self, id: &str) -> Option<i32> {
        self.children()
            .into_iter()
            .find(|(i, _)| i == id)
            .map(|(_, pid)| pid)
    }

    /// Whether replica `id`'s first child is still alive.
    pub fn first_child_alive(&self, id: &str) -> bool {
        self.first_child(id)
            .is_some_and(|pid| self.runs_script(pid))
    }

    /// SIGKILL every child still alive (an `etcdctl lock` child outlives its etcdctl); returns
    /// how many were.
    pub fn kill_leftovers(&self) -> usize {
        let mut n = 0;
        for (_, pid) in self.children() {
            if self.runs_script(pid) {
                n += 1;
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
        }
        n
    }
}

impl Drop for Ledger {
    fn drop(&mut self) {
        self.kill_leftovers();
    }
}

/// How many candidate keys are under `name/` (electd's election and etcdctl's lock share the
/// layout `<name>/<lease hex>`).
pub fn queued(etcd: &Etcd, name: &str) -> usize {
    let out = etcd.etcdctl(&["get", "--prefix", &format!("{name}/"), "--keys-only"]);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .count()
}
