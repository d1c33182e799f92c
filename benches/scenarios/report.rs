//! Figures, their statistics and the Markdown report (`docs/benchmarks.md`).

use std::fmt::Write as _;
use std::process::Command;
use std::time::{Duration, Instant, SystemTime};

use super::BenchConfig;

/// One cell of a row.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// One sample per iteration; shown as `median / p95 / max`.
    Samples(Vec<f64>),
    /// `hits` of `of` runs.
    Count {
        hits: usize,
        of: usize,
    },
    Text(String),
    /// Not applicable to this column.
    Missing,
}

impl Value {
    pub fn samples(&self) -> &[f64] {
        match self {
            Value::Samples(v) => v,
            _ => &[],
        }
    }

    pub fn median(&self) -> Option<f64> {
        quantile(self.samples(), 0.5)
    }

    pub fn max(&self) -> Option<f64> {
        self.samples().iter().copied().reduce(f64::max)
    }
}

/// Nearest-rank quantile of `v` (`q` in 0..=1); for the median of an even count, the mean
/// of the two middle samples.
pub fn quantile(v: &[f64], q: f64) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    if q == 0.5 && s.len().is_multiple_of(2) {
        return Some((s[s.len() / 2 - 1] + s[s.len() / 2]) / 2.0);
    }
    let rank = ((q * s.len() as f64).ceil() as usize).clamp(1, s.len());
    Some(s[rank - 1])
}

/// A figure, side by side for the section's columns (one value per column).
#[derive(Debug, Clone)]
pub struct Row {
    pub id: &'static str,
    pub figure: String,
    pub unit: &'static str,
    /// Whether a negative value is meaningful (an overlap, a time minus the TTL).
    pub signed: bool,
    pub cols: Vec<Value>,
}

/// One scenario's results.
#[derive(Debug, Clone)]
pub struct Section {
    pub key: &'static str,
    pub title: String,
    /// How it was measured.
    pub about: String,
    pub columns: Vec<String>,
    /// Samples a row has when no iteration failed.
    pub expected: usize,
    pub rows: Vec<Row>,
    pub notes: Vec<String>,
    pub failures: Vec<String>,
    pub seconds: f64,
}

impl Section {
    pub fn new<'a>(
        key: &'static str,
        title: &str,
        about: &str,
        columns: impl IntoIterator<Item = &'a str>,
    ) -> Section {
        Section {
            key,
            title: title.to_string(),
            about: about.to_string(),
            columns: columns.into_iter().map(str::to_string).collect(),
            expected: 0,
            rows: Vec::new(),
            notes: Vec::new(),
            failures: Vec::new(),
            seconds: 0.0,
        }
    }

    /// Add a row; its values fill the columns from the left (missing ones read `—`).
    pub fn push(
        &mut self,
        id: &'static str,
        figure: &str,
        unit: &'static str,
        signed: bool,
        cols: impl Into<Vec<Value>>,
    ) {
        let mut cols = cols.into();
        cols.resize(self.columns.len().max(cols.len()), Value::Missing);
        self.rows.push(Row {
            id,
            figure: figure.to_string(),
            unit,
            signed,
            cols,
        });
    }

    pub fn row(&self, id: &str) -> Option<&Row> {
        self.rows.iter().find(|r| r.id == id)
    }
}

/// The whole run.
pub struct Report {
    pub setup: Vec<(String, String)>,
    pub sections: Vec<Section>,
    ttl: Duration,
    /// Iterations of this run, and of the full benchmark.
    iterations: usize,
    full_iterations: usize,
    date: String,
    load_start: String,
    load_end: String,
    /// Share of the CPUs other processes kept busy just before and just after the run.
    other_start: Option<f64>,
    other_during: Option<f64>,
    other_end: Option<f64>,
    run_start: Option<CpuTicks>,
    quiet: Duration,
    started: Instant,
    elapsed: Duration,
}

impl Report {
    /// Record the machine and versions before anything runs.
    pub fn begin(cfg: &BenchConfig) -> Report {
        let nproc = std::thread::available_parallelism().map_or(1, |n| n.get());
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let model = cpuinfo
            .lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split_once(':'))
            .map_or("unknown".to_string(), |(_, m)| m.trim().to_string());
        let mem_kb: f64 = std::fs::read_to_string("/proc/meminfo")
            .unwrap_or_default()
            .lines()
            .find(|l| l.starts_with("MemTotal:"))
            .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
            .unwrap_or(0.0);
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
            .to_string();
        let etcd = first_line(crate::common::etcd_binary().as_os_str(), &["--version"]);
        let etcdctl = first_line(crate::common::etcdctl_binary().as_os_str(), &["version"]);
        let electd = first_line(crate::common::electd_binary().as_ref(), &["--version"]);
        let git = first_line("git".as_ref(), &["describe", "--always", "--dirty"]);
        let mut setup = vec![
            (
                "machine".into(),
                format!(
                    "{nproc} CPUs ({model}), {:.1} GiB RAM, Linux {kernel}",
                    mem_kb / 1024.0 / 1024.0
                ),
            ),
            (
                "etcd".into(),
                format!(
                    "{etcd}; one member on loopback started by the test harness \
                     (heartbeat 50 ms, election timeout 500 ms), a fresh one per scenario"
                ),
            ),
            ("etcdctl".into(), etcdctl),
            (
                "electd".into(),
                format!(
                    "{electd} (git {git}), {} build; replicas are separate processes \
                     started by the test harness, logging text at electd's default level \
                     (info) to a file (debug in the handoff, for its trace)",
                    if cfg!(debug_assertions) {
                        "debug (test profile)"
                    } else {
                        "release (bench profile)"
                    }
                ),
            ),
            (
                "TTL".into(),
                format!(
                    "{} s for both tools (`electd --ttl {}s --stop-grace {}ms`, \
                     `etcdctl lock --ttl {}`)",
                    cfg.ttl.as_secs(),
                    cfg.ttl.as_secs(),
                    cfg.stop_grace.as_millis(),
                    cfg.ttl.as_secs()
                ),
            ),
            (
                "iterations".into(),
                format!(
                    "{} per tool and failover scenario, interleaved electd / etcdctl lock",
                    cfg.iterations
                ),
            ),
        ];
        if cfg.only.as_deref().is_none_or(|o| o == "routing") {
            setup.push((
                "HAProxy".into(),
                crate::common::haproxy_path().map_or(
                    "not installed (`apt-get install -y haproxy`)".into(),
                    |h| {
                        format!(
                            "{} (the routing scenario: one `haproxy -db` process with its \
                             default threads)",
                            first_line(h.as_os_str(), &["-v"])
                        )
                    },
                ),
            ));
        }
        Report {
            setup,
            sections: Vec::new(),
            ttl: cfg.ttl,
            iterations: cfg.iterations,
            full_iterations: BenchConfig::full().iterations,
            date: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
            load_start: loadavg(),
            load_end: String::new(),
            other_start: cpu_busy(cfg.quiet),
            other_during: None,
            other_end: None,
            run_start: cpu_ticks(),
            quiet: cfg.quiet,
            started: Instant::now(),
            elapsed: Duration::ZERO,
        }
    }

    pub fn finish(&mut self) {
        self.load_end = loadavg();
        self.other_during = self
            .run_start
            .zip(cpu_ticks())
            .and_then(|(a, b)| others_share(a, b));
        self.other_end = cpu_busy(self.quiet);
        self.elapsed = self.started.elapsed();
    }

    pub fn section(&self, key: &str) -> Option<&Section> {
        self.sections.iter().find(|s| s.key == key)
    }

    /// Whether other processes kept more than a fifth of the CPUs busy before or during the
    /// run.
    pub fn busy(&self) -> bool {
        [self.other_start, self.other_during]
            .iter()
            .any(|b| b.is_some_and(|b| b > 0.2))
    }

    /// The project's goals next to what this run measured (reported, not asserted).
    pub fn goals(&self) -> Vec<[String; 3]> {
        let ttl_ms = self.ttl.as_secs_f64() * 1e3;
        let mut out = Vec::new();
        let electd = |sec: &str, row: &str| -> Option<Value> {
            Some(self.section(sec)?.row(row)?.cols[0].clone())
        };
        let verdict = |ok: bool| if ok { "yes" } else { "no" }.to_string();
        let none = || ["not measured in this run".to_string(), "—".to_string()];

        let [m, v] = match electd("handoff", "handoff").and_then(|v| v.median()) {
            Some(med) => [format!("p50 {}", ms(med)), verdict(med < 50.0)],
            None => none(),
        };
        out.push(["graceful handoff p50 under 50 ms".into(), m, v]);

        let lock = self
            .section("handoff")
            .and_then(|s| s.row("handoff"))
            .and_then(|r| r.cols.get(1)?.median());
        let [m, v] = match (electd("handoff", "handoff").and_then(|v| v.median()), lock) {
            (Some(e), Some(l)) => [
                format!("p50 {} vs `etcdctl lock`'s {}", ms(e), ms(l)),
                verdict(e <= l),
            ],
            _ => none(),
        };
        out.push([
            "graceful handoff no slower than `etcdctl lock`'s (p50, same run)".into(),
            m,
            v,
        ]);

        let [m, v] = match electd("crash", "failover").and_then(|v| v.max()) {
            Some(max) => [
                format!(
                    "max {} (TTL {} {})",
                    ms(max),
                    if max < ttl_ms { "−" } else { "+" },
                    ms((max - ttl_ms).abs())
                ),
                verdict(max <= ttl_ms + 1000.0),
            ],
            None => none(),
        };
        out.push(["crash failover within TTL + 1 s".into(), m, v]);

        let [m, v] = match electd("partition", "overlap") {
            Some(Value::Samples(s)) if !s.is_empty() => {
                let positive = s.iter().filter(|x| **x > 0.0).count();
                let max = s.iter().copied().fold(f64::MIN, f64::max);
                [
                    format!("{positive} of {} runs overlapped; max {}", s.len(), ms(max)),
                    verdict(positive == 0),
                ]
            }
            _ => none(),
        };
        out.push(["partition overlap zero in every run".into(), m, v]);

        for (row, cpu, what) in [
            ("ratio_http", "cpu_ratio_http", "HTTP"),
            ("ratio_unix", "cpu_ratio_unix", "Unix socket"),
        ] {
            let by_cpu = electd("api", cpu)
                .and_then(|v| v.median())
                .map_or(String::new(), |c| {
                    format!("; by server CPU per request {:.0}%", c * 100.0)
                });
            let [m, v] = match electd("api", row).and_then(|v| v.median()) {
                Some(r) => [
                    format!("{:.0}% of axum (median of rounds{by_cpu})", r * 100.0),
                    verdict(r >= 0.8),
                ],
                None => none(),
            };
            out.push([
                format!("`/role` throughput at least 80% of bare axum ({what})"),
                m,
                v,
            ]);
        }

        let routing = |row: &str, col: usize| -> Option<f64> {
            self.section("routing")?.row(row)?.cols.get(col)?.median()
        };
        let [m, v] = match routing("ratio_haproxy", 0) {
            Some(r) => [
                format!(
                    "{:.0}% of HAProxy's (median of rounds; {} vs {} req/s)",
                    r * 100.0,
                    routing("rps", 0).map_or("?".into(), |x| format!("{x:.0}")),
                    routing("rps", 1).map_or("?".into(), |x| format!("{x:.0}")),
                ),
                verdict(r >= 0.9),
            ],
            None => none(),
        };
        out.push([
            "proxy throughput through a follower at least 90% of HAProxy's (TCP, small requests)"
                .into(),
            m,
            v,
        ]);
        let [m, v] = match routing("p99_diff", 0) {
            Some(d) => [
                format!(
                    "p99 {} vs HAProxy's {} (medians of rounds); electd − HAProxy within a \
                     round: median {}",
                    routing("p99", 0).map_or("?".into(), ms),
                    routing("p99", 1).map_or("?".into(), ms),
                    ms(d)
                ),
                verdict(d <= 0.1),
            ],
            None => none(),
        };
        out.push(["proxy p99 latency within 0.1 ms of HAProxy's".into(), m, v]);
        let reach: Vec<(&str, Value)> = [("SIGTERM", "term_reach"), ("SIGKILL", "kill_reach")]
            .into_iter()
            .filter_map(|(what, row)| Some((what, electd("routing", row)?)))
            .filter(|(_, v)| !v.samples().is_empty())
            .collect();
        let [m, v] = if reach.is_empty() {
            none()
        } else {
            let each: Vec<String> = reach
                .iter()
                .map(|(what, v)| {
                    let q = |x: Option<f64>| x.map_or("?".into(), ms);
                    format!("{what} p50 {}, max {}", q(v.median()), q(v.max()))
                })
                .collect();
            let ok = reach
                .iter()
                .all(|(_, v)| v.max().is_some_and(|x| x <= 50.0));
            [each.join("; "), verdict(ok)]
        };
        out.push([
            "the new leader reachable through a follower's proxy within 50 ms of its election"
                .into(),
            m,
            v,
        ]);
        let after_seen: Vec<(usize, usize)> = ["term_after_seen", "kill_after_seen"]
            .into_iter()
            .filter_map(|row| match electd("routing", row)? {
                Value::Count { hits, of } => Some((hits, of)),
                _ => None,
            })
            .collect();
        let [m, v] = if after_seen.is_empty() {
            none()
        } else {
            let (hits, of) = after_seen
                .iter()
                .fold((0, 0), |(h, o), (x, y)| (h + x, o + y));
            [
                format!(
                    "{hits} of {of} requests sent through the follower's proxy after it saw the \
                     change reached the deposed leader (SIGTERM and SIGKILL)"
                ),
                verdict(hits == 0),
            ]
        };
        out.push([
            "no routing to a deposed leader after a replica has seen the change".into(),
            m,
            v,
        ]);

        let watchdog = electd("footprint", "rss_watchdog").and_then(|v| v.max());
        let [m, v] = match electd("footprint", "rss").and_then(|v| v.max()) {
            Some(mb) => [
                format!(
                    "max {mb:.1} MB (the electd process; its watchdog process adds {})",
                    watchdog.map_or("?".into(), |w| format!("{w:.1} MB"))
                ),
                verdict(mb < 20.0),
            ],
            None => none(),
        };
        out.push(["idle RSS under 20 MB".into(), m, v]);

        let scale = self.section("scale");
        let reads: Vec<(String, f64)> = scale
            .and_then(|s| {
                let r = s.row("reads")?;
                Some(
                    s.columns
                        .iter()
                        .zip(&r.cols)
                        .filter_map(|(c, v)| Some((c.clone(), v.max()?)))
                        .collect(),
                )
            })
            .unwrap_or_default();
        let [m, v] = if reads.is_empty() {
            none()
        } else {
            let worst = reads.iter().map(|(_, x)| *x).fold(f64::MIN, f64::max);
            let each: Vec<String> = reads.iter().map(|(c, x)| format!("{c}: {x:.0}")).collect();
            [
                format!("max {worst:.0} ({})", each.join(", ")),
                verdict(worst <= 2.0),
            ]
        };
        out.push([
            "at most 2 reads at etcd per leader change, whatever the number of candidates".into(),
            m,
            v,
        ]);
        out
    }

    pub fn markdown(&self) -> String {
        let mut o = String::new();
        let _ = writeln!(o, "# Benchmarks\n");
        let _ = writeln!(
            o,
            "Generated by `cargo bench --bench electd` on {} in {:.0} s; rerun it rather than \
             editing this file. Each scenario starts its own etcd and replicas on this machine; \
             electd and `etcdctl lock` (the tool one would otherwise use) run against the same \
             etcd with the same TTL, in the same run.\n",
            self.date,
            self.elapsed.as_secs_f64()
        );
        if self.iterations < self.full_iterations {
            let _ = writeln!(
                o,
                "**A reduced run** ({} iteration(s) where the full benchmark runs {}): its \
                 figures check that the benchmark works; quote those of a full run on a quiet \
                 machine.\n",
                self.iterations, self.full_iterations
            );
        }
        let _ = writeln!(o, "| setup | |\n|---|---|");
        for (k, v) in &self.setup {
            let _ = writeln!(o, "| {k} | {v} |");
        }
        let pct = |b: Option<f64>| b.map_or("?".to_string(), |b| format!("{:.0}%", b * 100.0));
        let _ = writeln!(
            o,
            "| other load | other processes kept {} of the CPUs busy during the run (all CPU time \
             in /proc/stat minus this benchmark's own and its reaped children's, approximately), \
             {} in the {:.1} s just before it and {} just after it; 1-minute load average `{}` at \
             start, `{}` at end{} |",
            pct(self.other_during),
            pct(self.other_start),
            self.quiet.as_secs_f64(),
            pct(self.other_end),
            self.load_start,
            self.load_end,
            if self.busy() {
                ". **Other work was competing for the CPUs**, so timings are noisier than on \
                 an idle host"
            } else {
                ""
            }
        );
        let _ = writeln!(
            o,
            "\nCells with numbers read `median / p95 / max` over the iterations (nearest-rank \
             p95; with fewer than 20 samples p95 is close to the max). `(n=K)` marks a figure \
             with fewer samples than iterations. Children append `start`/`tick`/`stop` \
             records with `date +%s%N` to a ledger; ticks are 50 ms apart, so a killed child's \
             end is known to within 50 ms.\n"
        );

        let _ = writeln!(
            o,
            "## Goals\n\nWhat the project holds itself to, next to this run's figures \
             (reported, not asserted by any test).\n"
        );
        let _ = writeln!(o, "| goal | measured (electd) | met |\n|---|---|---|");
        for [g, m, v] in self.goals() {
            let _ = writeln!(o, "| {g} | {m} | {v} |");
        }

        for (i, s) in self.sections.iter().enumerate() {
            let _ = writeln!(o, "\n## {}. {}\n", i + 1, s.title);
            let _ = writeln!(o, "{}\n", s.about);
            let _ = writeln!(
                o,
                "| figure | unit | {} |\n|---|---|{}",
                s.columns.join(" | "),
                "---|".repeat(s.columns.len())
            );
            for r in &s.rows {
                let cells: Vec<String> = r
                    .cols
                    .iter()
                    .map(|v| cell(v, s.expected, r.signed))
                    .collect();
                let _ = writeln!(o, "| {} | {} | {} |", r.figure, r.unit, cells.join(" | "));
            }
            if !s.notes.is_empty() || !s.failures.is_empty() {
                let _ = writeln!(o);
            }
            for n in &s.notes {
                let _ = writeln!(o, "- {n}");
            }
            for f in &s.failures {
                let _ = writeln!(o, "- **failed iteration**: {f}");
            }
            let _ = writeln!(o, "\n<sub>{:.0} s</sub>", s.seconds);
        }
        o
    }
}

/// A cell's text; `signed` figures show their sign (`+` = e.g. an overlap).
fn cell(v: &Value, expected: usize, signed: bool) -> String {
    match v {
        Value::Samples(s) if s.is_empty() => "no samples".into(),
        Value::Samples(s) => {
            let q = |q| {
                let x = quantile(s, q).expect("non-empty");
                let t = num(x);
                if signed && x > 0.0 {
                    format!("+{t}")
                } else {
                    t
                }
            };
            let mut t = format!("{} / {} / {}", q(0.5), q(0.95), q(1.0));
            if expected > 0 && s.len() != expected {
                let _ = write!(t, " (n={})", s.len());
            }
            t
        }
        Value::Count { hits, of } => format!("{hits} of {of}"),
        Value::Text(t) => t.clone(),
        Value::Missing => "—".into(),
    }
}

/// Three significant digits or so, without noise.
pub fn num(x: f64) -> String {
    let a = x.abs();
    if a >= 100.0 {
        format!("{x:.0}")
    } else if a >= 10.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.2}")
    }
}

fn ms(x: f64) -> String {
    format!("{} ms", num(x))
}

/// CPU time in clock ticks: all CPUs (/proc/stat), and this process with its reaped children
/// (/proc/self/stat).
#[derive(Debug, Clone, Copy)]
struct CpuTicks {
    total: u64,
    idle: u64,
    own: u64,
}

fn cpu_ticks() -> Option<CpuTicks> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    // user nice system idle iowait irq softirq steal
    let f: Vec<u64> = stat
        .lines()
        .next()?
        .split_whitespace()
        .skip(1)
        .take(8)
        .filter_map(|x| x.parse().ok())
        .collect();
    let me = std::fs::read_to_string("/proc/self/stat").ok()?;
    let (_, rest) = me.rsplit_once(')')?;
    // After the command: state(3) … utime(14) stime(15) cutime(16) cstime(17).
    let own = rest
        .split_whitespace()
        .skip(11)
        .take(4)
        .filter_map(|x| x.parse::<u64>().ok())
        .sum();
    Some(CpuTicks {
        total: f.iter().sum(),
        idle: f.get(3)? + f.get(4)?,
        own,
    })
}

/// The share of all CPUs that processes other than this one (and its reaped children) kept
/// busy between `a` and `b`.
fn others_share(a: CpuTicks, b: CpuTicks) -> Option<f64> {
    let total = b.total.checked_sub(a.total).filter(|t| *t > 0)?;
    let busy = total.saturating_sub(b.idle.saturating_sub(a.idle));
    let others = busy.saturating_sub(b.own.saturating_sub(a.own));
    Some(others as f64 / total as f64)
}

/// [`others_share`] over `window`, while the benchmark runs nothing.
fn cpu_busy(window: Duration) -> Option<f64> {
    let a = cpu_ticks()?;
    std::thread::sleep(window);
    others_share(a, cpu_ticks()?)
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

fn first_line(program: &std::ffi::OsStr, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .map(str::to_string)
        })
        .unwrap_or_else(|| "unknown".into())
}
