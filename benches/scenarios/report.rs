//! The benchmark's figures as data, and the page rendered from them.
//!
//! A run collects each scenario's raw samples in a [`Section`] ([`Report`]), then writes them as
//! [`Data`] (`docs/benchmarks.json`: the electd commit it ran, its parameters, the machine, and
//! every figure the page shows — medians, p95s, maxima, counts, and the numbers the paragraphs
//! quote) and renders `docs/benchmarks.md` from that data alone with [`markdown`]. Titles,
//! labels and paragraphs are the scenarios' [`Page`]s: code, fed with the data's parameters and
//! figures, so a paragraph never claims what the data does not say, and a page edited by hand
//! differs from its rendering (the test `committed_page_is_rendered_from_its_data` fails).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::process::Command;
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};

use super::{BenchConfig, elections, failover, guard, scale, sidecar};

/// The data file's format; a renderer refuses other formats.
pub const FORMAT: u32 = 1;

// ---------------------------------------------------------------------------
// During the run: raw samples
// ---------------------------------------------------------------------------

/// One cell of a row, as measured.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// One sample per iteration; shown as `median / p95 / max`.
    Samples(Vec<f64>),
    /// `hits` of `of` runs.
    Count { hits: usize, of: usize },
    /// One figure (an average, a bound).
    Number(f64),
    /// Not applicable to this column.
    Missing,
}

// The smoke test (tests/bench_smoke.rs) reads the raw samples; the benchmark only writes them.
#[allow(dead_code)]
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

    /// What the data file keeps of it.
    fn cell(&self) -> Cell {
        match self {
            Value::Samples(s) => Cell::Stats {
                n: Some(s.len()),
                median: quantile(s, 0.5),
                p95: quantile(s, 0.95),
                max: quantile(s, 1.0),
            },
            Value::Count { hits, of } => Cell::Count {
                hits: *hits,
                of: *of,
            },
            Value::Number(x) => Cell::Number(*x),
            Value::Missing => Cell::Missing,
        }
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

/// A figure, one value per column of its scenario.
#[derive(Debug, Clone)]
pub struct Row {
    pub id: String,
    pub cols: Vec<Value>,
}

/// One scenario's results.
#[derive(Debug, Clone)]
pub struct Section {
    pub key: &'static str,
    /// Samples a row has when no iteration failed.
    pub expected: usize,
    pub rows: Vec<Row>,
    /// Numbers the scenario's paragraphs quote (a byte count, a median of differences).
    pub facts: BTreeMap<String, f64>,
    pub failures: Vec<String>,
    pub seconds: f64,
}

impl Section {
    pub fn new(key: &'static str) -> Section {
        Section {
            key,
            expected: 0,
            rows: Vec::new(),
            facts: BTreeMap::new(),
            failures: Vec::new(),
            seconds: 0.0,
        }
    }

    /// Add a row (its label is the scenario's [`Page`]); values fill the columns from the left.
    pub fn push(&mut self, id: impl Into<String>, cols: impl Into<Vec<Value>>) {
        self.rows.push(Row {
            id: id.into(),
            cols: cols.into(),
        });
    }

    /// Record a number a paragraph quotes; `None` is left out (the page says `?`).
    pub fn fact(&mut self, name: &str, x: impl Into<Option<f64>>) {
        if let Some(x) = x.into() {
            self.facts.insert(name.to_string(), x);
        }
    }

    #[allow(dead_code)] // read by the smoke test
    pub fn row(&self, id: &str) -> Option<&Row> {
        self.rows.iter().find(|r| r.id == id)
    }

    fn data(&self) -> SectionData {
        SectionData {
            key: self.key.to_string(),
            seconds: self.seconds,
            expected: self.expected,
            rows: self
                .rows
                .iter()
                .map(|r| RowData {
                    id: r.id.clone(),
                    cells: r.cols.iter().map(Value::cell).collect(),
                })
                .collect(),
            facts: self.facts.clone(),
            failures: self.failures.clone(),
        }
    }
}

/// The whole run, as it goes.
pub struct Report {
    pub sections: Vec<Section>,
    cfg: BenchConfig,
    machine: Machine,
    date: String,
    load_start: String,
    other_start: Option<f64>,
    run_start: Option<CpuTicks>,
    started: Instant,
    load: Option<Load>,
    elapsed: Duration,
}

impl Report {
    /// Record the machine and versions before anything runs.
    pub fn begin(cfg: &BenchConfig) -> Report {
        Report {
            sections: Vec::new(),
            cfg: cfg.clone(),
            machine: Machine::probe(cfg),
            date: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
            load_start: loadavg(),
            other_start: cpu_busy(cfg.quiet),
            run_start: cpu_ticks(),
            started: Instant::now(),
            load: None,
            elapsed: Duration::ZERO,
        }
    }

    pub fn finish(&mut self) {
        let other_during = self
            .run_start
            .zip(cpu_ticks())
            .and_then(|(a, b)| others_share(a, b));
        self.elapsed = self.started.elapsed();
        self.load = Some(Load {
            other_start: self.other_start,
            other_during,
            other_end: cpu_busy(self.cfg.quiet),
            load_start: self.load_start.clone(),
            load_end: loadavg(),
        });
    }

    #[allow(dead_code)] // read by the smoke test
    pub fn section(&self, key: &str) -> Option<&Section> {
        self.sections.iter().find(|s| s.key == key)
    }

    /// The data file's contents.
    pub fn data(&self) -> Data {
        Data {
            format: FORMAT,
            converted: None,
            commit: electd::GIT_COMMIT.to_string(),
            date: self.date.clone(),
            elapsed_s: self.elapsed.as_secs_f64(),
            full_iterations: BenchConfig::full().iterations,
            params: self.cfg.clone(),
            machine: self.machine.clone(),
            load: self.load.clone().unwrap_or_default(),
            sections: self.sections.iter().map(Section::data).collect(),
        }
    }
}

// ---------------------------------------------------------------------------
// The data file
// ---------------------------------------------------------------------------

/// `docs/benchmarks.json`: everything the page shows, and nothing it does not need.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Data {
    pub format: u32,
    /// Set when these figures were converted from an earlier run's page, not written by a run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub converted: Option<Converted>,
    /// The commit electd was built from (`-dirty`: with changes).
    pub commit: String,
    /// When the run started (RFC 3339) and how long it took.
    pub date: String,
    pub elapsed_s: f64,
    /// Iterations of the full benchmark when the run was made (a run with fewer is reduced).
    pub full_iterations: usize,
    pub params: BenchConfig,
    pub machine: Machine,
    pub load: Load,
    pub sections: Vec<SectionData>,
}

/// Where converted figures came from.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Converted {
    /// The page they were read from, at the commit that committed it.
    pub page: String,
    pub page_commit: String,
    /// What was lost in the conversion.
    pub precision: String,
}

/// The machine and the versions of everything measured.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Machine {
    pub cpus: usize,
    pub cpu_model: String,
    pub mem_gib: f64,
    pub kernel: String,
    /// First lines of `etcd --version`, `etcdctl version`, `electd --version`, `haproxy -v`.
    pub etcd: String,
    pub etcdctl: String,
    pub electd: String,
    /// `git describe --always --dirty` of the checkout.
    pub git: String,
    /// Whether the benchmark itself was a release build.
    pub release: bool,
    /// `None`: not installed, or not asked for (another `--only`).
    #[serde(default)]
    pub haproxy: Option<String>,
}

impl Machine {
    fn probe(cfg: &BenchConfig) -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let mem_kb: f64 = std::fs::read_to_string("/proc/meminfo")
            .unwrap_or_default()
            .lines()
            .find(|l| l.starts_with("MemTotal:"))
            .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
            .unwrap_or(0.0);
        Machine {
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
            cpu_model: cpuinfo
                .lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map_or("unknown".to_string(), |(_, m)| m.trim().to_string()),
            mem_gib: mem_kb / 1024.0 / 1024.0,
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .unwrap_or_default()
                .trim()
                .to_string(),
            etcd: first_line(crate::common::etcd_binary().as_os_str(), &["--version"]),
            etcdctl: first_line(crate::common::etcdctl_binary().as_os_str(), &["version"]),
            electd: first_line(crate::common::electd_binary().as_ref(), &["--version"]),
            git: first_line("git".as_ref(), &["describe", "--always", "--dirty"]),
            release: !cfg!(debug_assertions),
            haproxy: cfg
                .only
                .as_deref()
                .is_none_or(|o| o == "routing")
                .then(crate::common::haproxy_path)
                .flatten()
                .map(|h| first_line(h.as_os_str(), &["-v"])),
        }
    }
}

/// What else the machine was doing.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Load {
    /// Share of the CPUs other processes kept busy just before, during and just after the run.
    pub other_start: Option<f64>,
    pub other_during: Option<f64>,
    pub other_end: Option<f64>,
    /// `/proc/loadavg` at start and end.
    pub load_start: String,
    pub load_end: String,
}

/// One scenario's figures.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SectionData {
    pub key: String,
    pub seconds: f64,
    /// Samples a row has when no iteration failed.
    pub expected: usize,
    pub rows: Vec<RowData>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub facts: BTreeMap<String, f64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failures: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RowData {
    pub id: String,
    pub cells: Vec<Cell>,
}

/// One cell as kept: the statistics of its samples, a count, one number, or nothing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Cell {
    Missing,
    Number(f64),
    Count {
        hits: usize,
        of: usize,
    },
    Stats {
        /// How many samples (`None`: not known, in figures converted from a page that did not
        /// show it).
        n: Option<usize>,
        #[serde(default)]
        median: Option<f64>,
        #[serde(default)]
        p95: Option<f64>,
        #[serde(default)]
        max: Option<f64>,
    },
}

impl Cell {
    pub fn median(&self) -> Option<f64> {
        match self {
            Cell::Stats { median, .. } => *median,
            _ => None,
        }
    }

    pub fn max(&self) -> Option<f64> {
        match self {
            Cell::Stats { max, .. } => *max,
            _ => None,
        }
    }

    pub fn number(&self) -> Option<f64> {
        match self {
            Cell::Number(x) => Some(*x),
            _ => None,
        }
    }

    /// A cell's text; `signed` figures show their sign (`+` = e.g. an overlap).
    fn text(&self, expected: usize, signed: bool) -> String {
        match self {
            Cell::Stats { n: Some(0), .. } => "no samples".into(),
            Cell::Stats {
                n,
                median,
                p95,
                max,
            } => {
                let q = |x: &Option<f64>| {
                    let x = x.unwrap_or(f64::NAN);
                    let t = num(x);
                    if signed && x > 0.0 {
                        format!("+{t}")
                    } else {
                        t
                    }
                };
                let mut t = format!("{} / {} / {}", q(median), q(p95), q(max));
                if let Some(n) = n.filter(|n| expected > 0 && *n != expected) {
                    let _ = write!(t, " (n={n})");
                }
                t
            }
            Cell::Count { hits, of } => format!("{hits} of {of}"),
            Cell::Number(x) => num(*x),
            Cell::Missing => "—".into(),
        }
    }
}

impl SectionData {
    pub fn row(&self, id: &str) -> Option<&RowData> {
        self.rows.iter().find(|r| r.id == id)
    }

    /// The cell of `row` in column `col`.
    pub fn cell(&self, row: &str, col: usize) -> Option<&Cell> {
        self.row(row)?.cells.get(col)
    }

    /// A quoted number, as the page shows it (`?` when the run did not get it).
    pub fn fact(&self, name: &str, show: impl Fn(f64) -> String) -> String {
        self.facts.get(name).map_or("?".into(), |x| show(*x))
    }
}

impl Data {
    pub fn section(&self, key: &str) -> Option<&SectionData> {
        self.sections.iter().find(|s| s.key == key)
    }

    pub fn to_json(&self) -> String {
        crate::common::reports::to_json(self)
    }

    pub fn from_json(text: &str) -> Result<Data, String> {
        crate::common::reports::from_json(text, FORMAT)
    }
}

/// Durations in the data file: seconds, as a number.
pub mod secs {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let x = f64::deserialize(d)?;
        Duration::try_from_secs_f64(x).map_err(serde::de::Error::custom)
    }
}

// ---------------------------------------------------------------------------
// The page
// ---------------------------------------------------------------------------

/// What a scenario's section of the page says, given the run's parameters and figures.
pub struct Page {
    pub title: String,
    /// How it was measured.
    pub about: String,
    pub columns: Vec<String>,
    /// Every row the scenario can push, in page order.
    pub rows: Vec<RowSpec>,
    pub notes: Vec<String>,
}

/// A row's label.
pub struct RowSpec {
    pub id: String,
    pub figure: String,
    pub unit: &'static str,
    /// Whether a negative value is meaningful (an overlap, a time minus the TTL).
    pub signed: bool,
}

/// A row's label, for [`Page::rows`].
pub fn spec(id: &str, figure: &str, unit: &'static str, signed: bool) -> RowSpec {
    RowSpec {
        id: id.to_string(),
        figure: figure.to_string(),
        unit,
        signed,
    }
}

impl Page {
    pub fn spec(&self, id: &str) -> Option<&RowSpec> {
        self.rows.iter().find(|r| r.id == id)
    }
}

/// One goal: what it is, what this run measured, whether it was met (`None`: not measured).
pub struct Goal {
    pub goal: String,
    pub measured: String,
    pub met: Option<bool>,
}

/// Whether other processes kept more than a fifth of the CPUs busy before or during the run.
fn busy(load: &Load) -> bool {
    [load.other_start, load.other_during]
        .iter()
        .any(|b| b.is_some_and(|b| b > 0.2))
}

/// The project's goals next to what the run measured (reported, not asserted).
pub fn goals(d: &Data) -> Vec<Goal> {
    let mut out = Vec::new();
    let mut goal = |goal: &str, m: Option<(String, bool)>| {
        let (measured, met) = match m {
            Some((m, ok)) => (m, Some(ok)),
            None => ("not measured in this run".into(), None),
        };
        out.push(Goal {
            goal: goal.to_string(),
            measured,
            met,
        });
    };
    let cell = |sec: &str, row: &str, col: usize| d.section(sec)?.cell(row, col).cloned();
    let electd = |sec: &str, row: &str| cell(sec, row, 0);
    let median = |sec: &str, row: &str, col: usize| cell(sec, row, col)?.median();

    goal(
        "graceful handoff p50 under 50 ms",
        median("handoff", "handoff", 0).map(|m| (format!("p50 {}", ms(m)), m < 50.0)),
    );
    goal(
        "graceful handoff no slower than `etcdctl lock`'s (p50, same run)",
        median("handoff", "handoff", 0)
            .zip(median("handoff", "handoff", 1))
            .map(|(e, l)| {
                (
                    format!("p50 {} vs `etcdctl lock`'s {}", ms(e), ms(l)),
                    e <= l,
                )
            }),
    );
    let crash_ttls = failover::crash_ttls(&d.params);
    let p50s: Vec<(u64, Option<f64>)> = crash_ttls
        .iter()
        .map(|(ttl, sfx)| (ttl.as_secs(), median("crash", &format!("failover{sfx}"), 0)))
        .collect();
    goal(
        "crash failover (kill -9 of the leader's electd) median under 50 ms at any TTL",
        p50s.iter().any(|(_, m)| m.is_some()).then(|| {
            let each: Vec<String> = p50s
                .iter()
                .map(|(secs, m)| match m {
                    Some(m) => format!("p50 {} at TTL {secs} s", ms(*m)),
                    None => format!("not measured at TTL {secs} s"),
                })
                .collect();
            let ok = p50s.iter().all(|(_, m)| m.is_some_and(|m| m < 50.0));
            (each.join(", "), ok)
        }),
    );
    // Per TTL measured: the old child's last tick and its group's last sign of life after the
    // new start (maxima), and the runs in which it outlived the watch.
    let outlived: Vec<(u64, f64, Option<f64>, usize, usize)> = crash_ttls
        .iter()
        .filter_map(|(ttl, sfx)| {
            let tick = electd("crash", &format!("overlap{sfx}"))?.max()?;
            let group = electd("crash", &format!("group_end{sfx}")).and_then(|c| c.max());
            let (hits, of) = match electd("crash", &format!("old_alive{sfx}"))? {
                Cell::Count { hits, of } => (hits, of),
                _ => return None,
            };
            Some((ttl.as_secs(), tick, group, hits, of))
        })
        .collect();
    goal(
        "after kill -9 of the leader's electd, nothing of the old command alive once the new \
         one started, in every run",
        (!outlived.is_empty()).then(|| {
            let each: Vec<String> = outlived
                .iter()
                .map(|(secs, tick, group, hits, of)| {
                    let group = group.map_or(String::new(), |g| {
                        format!(", its process group's last sign of life {}", ms(g))
                    });
                    format!(
                        "TTL {secs} s: the old child's last tick {}{group} after the new start \
                         (max); still running after the watch in {hits} of {of} runs",
                        ms(*tick)
                    )
                })
                .collect();
            let ok = outlived.iter().all(|(_, tick, group, hits, _)| {
                *tick < 0.0 && group.is_none_or(|g| g < 0.0) && *hits == 0
            });
            (each.join("; "), ok)
        }),
    );
    goal(
        "partition overlap zero in every run",
        match (
            electd("partition", "overlapped"),
            electd("partition", "overlap"),
        ) {
            (Some(Cell::Count { hits, of }), Some(o)) if of > 0 => Some((
                format!(
                    "{hits} of {of} runs overlapped; max {}",
                    o.max().map_or("?".into(), ms)
                ),
                hits == 0,
            )),
            _ => None,
        },
    );
    for (row, cpu, what) in [
        ("ratio_http", "cpu_ratio_http", "HTTP"),
        ("ratio_unix", "cpu_ratio_unix", "Unix socket"),
    ] {
        let by_cpu = median("api", cpu, 0).map_or(String::new(), |c| {
            format!("; by server CPU per request {:.0}%", c * 100.0)
        });
        goal(
            &format!("`/role` throughput at least 80% of bare axum ({what})"),
            median("api", row, 0).map(|r| {
                (
                    format!("{:.0}% of axum (median of rounds{by_cpu})", r * 100.0),
                    r >= 0.8,
                )
            }),
        );
    }
    let routing = |row: &str, col: usize| median("routing", row, col);
    goal(
        "proxy throughput through a follower at least 90% of HAProxy's (TCP, small requests)",
        routing("ratio_haproxy", 0).map(|r| {
            (
                format!(
                    "{:.0}% of HAProxy's (median of rounds; {} vs {} req/s)",
                    r * 100.0,
                    routing("rps", 0).map_or("?".into(), |x| format!("{x:.0}")),
                    routing("rps", 1).map_or("?".into(), |x| format!("{x:.0}")),
                ),
                r >= 0.9,
            )
        }),
    );
    goal(
        "proxy p99 latency within 0.1 ms of HAProxy's",
        routing("p99_diff", 0).map(|diff| {
            (
                format!(
                    "p99 {} vs HAProxy's {} (medians of rounds); electd − HAProxy within a \
                     round: median {}",
                    routing("p99", 0).map_or("?".into(), ms),
                    routing("p99", 1).map_or("?".into(), ms),
                    ms(diff)
                ),
                diff <= 0.1,
            )
        }),
    );
    let reach: Vec<(&str, Cell)> = [("SIGTERM", "term_reach"), ("SIGKILL", "kill_reach")]
        .into_iter()
        .filter_map(|(what, row)| Some((what, electd("routing", row)?)))
        .filter(|(_, c)| c.median().is_some())
        .collect();
    goal(
        "the new leader reachable through a follower's proxy within 50 ms of its election",
        (!reach.is_empty()).then(|| {
            let q = |x: Option<f64>| x.map_or("?".into(), ms);
            let each: Vec<String> = reach
                .iter()
                .map(|(what, c)| format!("{what} p50 {}, max {}", q(c.median()), q(c.max())))
                .collect();
            let ok = reach
                .iter()
                .all(|(_, c)| c.max().is_some_and(|x| x <= 50.0));
            (each.join("; "), ok)
        }),
    );
    let after_seen: Vec<(usize, usize)> = ["term_after_seen", "kill_after_seen"]
        .into_iter()
        .filter_map(|row| match electd("routing", row)? {
            Cell::Count { hits, of } => Some((hits, of)),
            _ => None,
        })
        .collect();
    goal(
        "no routing to a deposed leader after a replica has seen the change",
        (!after_seen.is_empty()).then(|| {
            let (hits, of) = after_seen
                .iter()
                .fold((0, 0), |(h, o), (x, y)| (h + x, o + y));
            (
                format!(
                    "{hits} of {of} requests sent through the follower's proxy after it saw the \
                     change reached the deposed leader (SIGTERM and SIGKILL)"
                ),
                hits == 0,
            )
        }),
    );
    let watchdog = electd("footprint", "rss_watchdog").and_then(|c| c.max());
    goal(
        "idle RSS under 20 MB",
        electd("footprint", "rss").and_then(|c| c.max()).map(|mb| {
            (
                format!(
                    "max {mb:.1} MB (the electd process; its watchdog process adds {})",
                    watchdog.map_or("?".into(), |w| format!("{w:.1} MB"))
                ),
                mb < 20.0,
            )
        }),
    );
    let scale = d.section("scale");
    let columns = scale::columns(&d.params);
    let reads: Vec<(String, f64)> = scale
        .and_then(|s| s.row("reads"))
        .map(|r| {
            columns
                .iter()
                .zip(&r.cells)
                .filter_map(|(c, v)| Some((c.clone(), v.max()?)))
                .collect()
        })
        .unwrap_or_default();
    goal(
        "at most 2 reads at etcd per leader change, whatever the number of candidates",
        (!reads.is_empty()).then(|| {
            let worst = reads.iter().map(|(_, x)| *x).fold(f64::MIN, f64::max);
            let each: Vec<String> = reads.iter().map(|(c, x)| format!("{c}: {x:.0}")).collect();
            (
                format!("max {worst:.0} ({})", each.join(", ")),
                worst <= 2.0,
            )
        }),
    );
    let [_, n] = elections::columns(&d.params);
    let one_many = electd("elections", "msgs")
        .zip(cell("elections", "msgs", 1))
        .and_then(|(a, b)| Some((a.number()?, b.number()?)));
    goal(
        &format!(
            "etcd's idle load per process with {n} elections the same as with one (within 10%)"
        ),
        one_many.map(|(one, many)| {
            (
                format!("{many:.2} msg/s per process vs {one:.2} with one election"),
                many <= one * 1.1,
            )
        }),
    );
    out
}

/// The safety violations the figures show, for the page's first lines (each scenario that
/// can see one says what it saw).
pub fn violations(d: &Data) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(s) = d.section("guard") {
        out.extend(guard::violations(s));
    }
    if let Some(s) = d.section("sidecar") {
        out.extend(sidecar::violations(s));
    }
    out
}

/// The page for `d`, from the data alone. An error names a row the data has and no scenario
/// labels (a data file from another version of the benchmark).
pub fn markdown(d: &Data) -> Result<String, String> {
    let p = &d.params;
    let mut pages = Vec::new();
    for s in &d.sections {
        let page = super::page(&s.key, p, s)
            .ok_or_else(|| format!("the data has a scenario `{}` this benchmark lacks", s.key))?;
        if let Some(r) = s.rows.iter().find(|r| page.spec(&r.id).is_none()) {
            return Err(format!(
                "row `{}` of scenario `{}` has no label in its page",
                r.id, s.key
            ));
        }
        pages.push(page);
    }
    let mut o = String::new();
    let _ = writeln!(o, "# Benchmarks\n");
    let violations = violations(d);
    if !violations.is_empty() {
        let _ = writeln!(o, "**Violations**: {}.\n", violations.join("; "));
    }

    // First what went wrong, if anything.
    let goals = goals(d);
    let measured = goals.iter().filter(|g| g.met.is_some()).count();
    let missed: Vec<&Goal> = goals.iter().filter(|g| g.met == Some(false)).collect();
    let failed: Vec<(&str, usize)> = d
        .sections
        .iter()
        .zip(&pages)
        .filter(|(s, _)| !s.failures.is_empty())
        .map(|(s, page)| (page.title.as_str(), s.failures.len()))
        .collect();
    if missed.is_empty() {
        let _ = write!(o, "**{measured} of {measured} goals measured were met**");
    } else {
        let each: Vec<String> = missed
            .iter()
            .map(|g| format!("{} — {}", g.goal, g.measured))
            .collect();
        let _ = write!(
            o,
            "**Missed {} of {measured} goals measured**: {}",
            missed.len(),
            each.join("; ")
        );
    }
    if failed.is_empty() {
        let _ = writeln!(o, "; no iteration failed.\n");
    } else {
        let each: Vec<String> = failed.iter().map(|(t, n)| format!("{n} in {t}")).collect();
        let _ = writeln!(o, ". **Failed iterations**: {}.\n", each.join(", "));
    }

    match &d.converted {
        None => {
            let _ = writeln!(
                o,
                "Generated by `cargo bench --bench electd` on {} in {:.0} s, from electd at commit \
                 `{}`; the figures are in [benchmarks.json](benchmarks.json), which this page is \
                 rendered from (a test checks that it is): rerun the benchmark rather than \
                 editing either. Each scenario starts its own etcd and replicas on this machine; \
                 electd and `etcdctl lock` (the tool one would otherwise use) run against the same \
                 etcd with the same TTL, in the same run.\n",
                d.date, d.elapsed_s, d.commit
            );
        }
        Some(c) => {
            let _ = writeln!(
                o,
                "The figures of `cargo bench --bench electd` on {} ({:.0} s, electd at commit \
                 `{}`), **converted** from that run's page ({} as committed in {}; {}) into \
                 [benchmarks.json](benchmarks.json), which this page is rendered from (a test \
                 checks that it is): rerun the benchmark rather than editing either. Each \
                 scenario starts its own etcd and replicas on this machine; electd and `etcdctl \
                 lock` (the tool one would otherwise use) run against the same etcd with the same \
                 TTL, in the same run.\n",
                d.date, d.elapsed_s, d.commit, c.page, c.page_commit, c.precision
            );
        }
    }
    if p.iterations < d.full_iterations {
        let _ = writeln!(
            o,
            "**A reduced run** ({} iteration(s) where the full benchmark runs {}): its \
             figures check that the benchmark works; quote those of a full run on a quiet \
             machine.\n",
            p.iterations, d.full_iterations
        );
    }
    let m = &d.machine;
    let _ = writeln!(o, "| setup | |\n|---|---|");
    let _ = writeln!(
        o,
        "| machine | {} CPUs ({}), {:.1} GiB RAM, Linux {} |",
        m.cpus, m.cpu_model, m.mem_gib, m.kernel
    );
    let _ = writeln!(
        o,
        "| etcd | {}; one member on loopback started by the test harness (heartbeat 50 ms, \
         election timeout 500 ms), a fresh one per scenario |",
        m.etcd
    );
    let _ = writeln!(o, "| etcdctl | {} |", m.etcdctl);
    let _ = writeln!(
        o,
        "| electd | {} (git {}), {} build; replicas are separate processes started by the test \
         harness, logging text at electd's default level (info) to a file (debug in the \
         handoff, for its trace) |",
        m.electd,
        m.git,
        if m.release {
            "release (bench profile)"
        } else {
            "debug (test profile)"
        }
    );
    let _ = writeln!(
        o,
        "| TTL | {} s for both tools (`electd --ttl {}s --stop-grace {}ms`, `etcdctl lock --ttl \
         {}`) |",
        p.ttl.as_secs(),
        p.ttl.as_secs(),
        p.stop_grace.as_millis(),
        p.ttl.as_secs()
    );
    let _ = writeln!(
        o,
        "| iterations | {} per tool and failover scenario, interleaved electd / etcdctl lock |",
        p.iterations
    );
    if p.only.as_deref().is_none_or(|o| o == "routing") {
        let _ = writeln!(
            o,
            "| HAProxy | {} |",
            m.haproxy.as_ref().map_or(
                "not installed (`apt-get install -y haproxy`)".into(),
                |h| format!(
                    "{h} (the routing scenario: one `haproxy -db` process with its default \
                     threads)"
                )
            )
        );
    }
    let pct = |b: Option<f64>| b.map_or("?".to_string(), |b| format!("{:.0}%", b * 100.0));
    let l = &d.load;
    let _ = writeln!(
        o,
        "| other load | other processes kept {} of the CPUs busy during the run (all CPU time \
         in /proc/stat minus this benchmark's own and its reaped children's, approximately), \
         {} in the {:.1} s just before it and {} just after it; 1-minute load average `{}` at \
         start, `{}` at end{} |",
        pct(l.other_during),
        pct(l.other_start),
        p.quiet.as_secs_f64(),
        pct(l.other_end),
        l.load_start,
        l.load_end,
        if busy(l) {
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
    for g in &goals {
        let met = match g.met {
            Some(true) => "yes",
            Some(false) => "no",
            None => "—",
        };
        let _ = writeln!(o, "| {} | {} | {met} |", g.goal, g.measured);
    }

    for (i, (s, page)) in d.sections.iter().zip(&pages).enumerate() {
        let _ = writeln!(o, "\n## {}. {}\n", i + 1, page.title);
        let _ = writeln!(o, "{}\n", page.about);
        let _ = writeln!(
            o,
            "| figure | unit | {} |\n|---|---|{}",
            page.columns.join(" | "),
            "---|".repeat(page.columns.len())
        );
        for r in &page.rows {
            let Some(data) = s.row(&r.id) else { continue };
            let cells: Vec<String> = (0..page.columns.len().max(data.cells.len()))
                .map(|c| {
                    data.cells
                        .get(c)
                        .unwrap_or(&Cell::Missing)
                        .text(s.expected, r.signed)
                })
                .collect();
            let _ = writeln!(o, "| {} | {} | {} |", r.figure, r.unit, cells.join(" | "));
        }
        if !page.notes.is_empty() || !s.failures.is_empty() {
            let _ = writeln!(o);
        }
        for n in &page.notes {
            let _ = writeln!(o, "- {n}");
        }
        for f in &s.failures {
            let _ = writeln!(o, "- **failed iteration**: {f}");
        }
        let _ = writeln!(o, "\n<sub>{:.0} s</sub>", s.seconds);
    }
    Ok(o)
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

pub fn ms(x: f64) -> String {
    format!("{} ms", num(x))
}

// ---------------------------------------------------------------------------
// The machine's load
// ---------------------------------------------------------------------------

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

/// The committed pair: `docs/benchmarks.md` is what `docs/benchmarks.json` renders to, and the
/// data survives a round trip.
#[test]
fn committed_page_is_rendered_from_its_data() {
    crate::common::reports::check_committed(
        "benchmarks",
        |text| {
            let d = Data::from_json(text)?;
            assert_eq!(
                Data::from_json(&d.to_json()).map(|d2| d2.to_json()),
                Ok(d.to_json()),
                "the data survives a round trip"
            );
            markdown(&d)
        },
        "rerun `cargo bench --bench electd`",
    );
}

/// A safety violation the figures show heads the page: an app of an old term acting at the next
/// leader's first claim (sidecar), a successor started beside the deposed command with the
/// default start guard; a positive overlap without the guard (`--start-guard 0s`) is none.
#[test]
fn violations_head_the_page() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/benchmarks.json");
    let base = Data::from_json(&std::fs::read_to_string(path).expect("the committed data"))
        .expect("it reads");
    let stats = |max: f64| Cell::Stats {
        n: Some(1),
        median: Some(max),
        p95: Some(max),
        max: Some(max),
    };
    let section = |key: &str, rows: Vec<(&str, Vec<Cell>)>| SectionData {
        key: key.into(),
        seconds: 1.0,
        expected: 1,
        rows: rows
            .into_iter()
            .map(|(id, cells)| RowData {
                id: id.into(),
                cells,
            })
            .collect(),
        facts: BTreeMap::new(),
        failures: Vec::new(),
    };
    let page = |margins: [f64; 2], overlaps: [f64; 2]| {
        // The committed run's own guard and sidecar sections give way to these.
        let mut d = base.clone();
        d.sections
            .retain(|s| s.key != "guard" && s.key != "sidecar");
        d.sections.push(section(
            "guard",
            vec![("del_overlap", overlaps.map(stats).to_vec())],
        ));
        d.sections.push(section(
            "sidecar",
            vec![
                ("margin", margins.map(stats).to_vec()),
                ("margin_min", margins.map(Cell::Number).to_vec()),
            ],
        ));
        let text = markdown(&d).expect("it renders");
        text.lines().nth(2).expect("a first line").to_string()
    };
    // Figures without a violation: the head names none (the goals are the committed run's).
    let clean = page([1626.0, 1003.0], [-251.0, 0.67]);
    assert!(
        clean.starts_with("**Missed ") || clean.contains(" goals measured were met**"),
        "{clean}"
    );
    assert_eq!(
        page([-12.0, 1003.0], [-251.0, -2.0]),
        "**Violations**: sidecar apps, SIGSTOP of the leader's electd: an app of the old term \
         acted 12.0 ms after the next leader's first claim."
    );
    let both = page([5.0, 0.0], [3.5, -2.0]);
    assert!(
        both.starts_with("**Violations**: start guard: after an unmarked deletion of the leader's key, the successor's command started 3.50 ms before the deposed one was dead, with the default start guard; sidecar apps, kill -9 of the leader's electd: an app of the old term acted 0.00 ms after"),
        "{both}"
    );
}
