//! Scenarios 1–4: graceful handoff, crash failover, partition and flap, each with two
//! replicas (`a` leads, `b` waits) under electd and under `etcdctl lock`, iterations
//! interleaved between the tools (crash failover: and between two TTLs). Every iteration uses
//! a fresh election name and ledger. The pair and the iteration loop serve the guard scenario
//! too.

use std::path::Path;
use std::time::Duration;

use electd::config::Timing;

use super::report::{Cell, Page, RowSpec, ms, num, quantile, spec};
use super::trace::{AliveWatch, EtcdCounters, group_of, log_time_after, proc_scan_ms};
use super::{
    BenchConfig, Ledger, Section, SectionData, Tool, Tuning, Value, Wrapper, attempt, ms_between,
    now_ns, queued,
};
use crate::common::{Etcd, ProxyMode, Run, TcpProxy, wait_until};

/// Two replicas of one election: `a` leads (its child runs), `b` is queued behind it.
pub(super) struct Pair {
    pub a: Wrapper,
    /// Kept running until the pair is dropped.
    pub b: Wrapper,
    pub ledger: Ledger,
    /// With [`Pair::start_proxied`]: each replica's link to etcd (dropped after the replicas).
    proxies: Option<[TcpProxy; 2]>,
}

impl Pair {
    pub fn start(
        cfg: &BenchConfig,
        etcd: &Etcd,
        tool: Tool,
        name: &str,
        endpoints: [&str; 2],
        dir: &Path,
        tuning: Tuning,
    ) -> Pair {
        let ledger = Ledger::new(dir, name);
        let a = Wrapper::start(tool, cfg, endpoints[0], name, "a", &ledger.script, tuning);
        wait_until(
            Duration::from_secs(20),
            "replica a's child to start",
            || ledger.starts_of("a") == 1,
        );
        let b = Wrapper::start(tool, cfg, endpoints[1], name, "b", &ledger.script, tuning);
        wait_until(
            Duration::from_secs(20),
            "replica b to queue behind a",
            || queued(etcd, name) == 2,
        );
        if let Some(d) = b.daemon() {
            d.wait_role("follower", Duration::from_secs(10));
        }
        // Let b's watch settle and a's child tick.
        std::thread::sleep(Duration::from_millis(300));
        Pair {
            a,
            b,
            ledger,
            proxies: None,
        }
    }

    /// Like [`Pair::start`], each replica reaching etcd through its own [`TcpProxy`].
    fn start_proxied(cfg: &BenchConfig, etcd: &Etcd, tool: Tool, name: &str, dir: &Path) -> Pair {
        let ep = etcd.endpoint();
        let proxies = [TcpProxy::start_to(&ep), TcpProxy::start_to(&ep)];
        let endpoints = [proxies[0].endpoint(), proxies[1].endpoint()];
        let mut pair = Pair::start(
            cfg,
            etcd,
            tool,
            name,
            [&endpoints[0], &endpoints[1]],
            dir,
            Tuning::default(),
        );
        pair.proxies = Some(proxies);
        pair
    }

    /// The leader's (a's) link to etcd; only for a pair from [`Pair::start_proxied`].
    fn leader_link(&self) -> &TcpProxy {
        &self
            .proxies
            .as_ref()
            .expect("invariant: started with proxies")[0]
    }

    pub fn wait_new_child(&self, timeout: Duration) {
        wait_until(timeout, "the new leader's child to start", || {
            self.ledger.starts_of("b") >= 1
        });
    }

    /// The first runs of a's and b's children.
    fn runs(&self) -> (Run, Option<Run>) {
        let a = self.ledger.runs_of("a").remove(0);
        let b = self.ledger.runs_of("b").into_iter().next();
        (a, b)
    }
}

/// Per-tool sample columns (or per column of another pair of variants).
#[derive(Default)]
pub(super) struct Cols {
    v: [Vec<f64>; 2],
}

impl Cols {
    fn push(&mut self, tool: Tool, x: f64) {
        self.put(tool.col(), x);
    }

    pub fn put(&mut self, col: usize, x: f64) {
        self.v[col].push(x);
    }

    /// Each column's p99 (nearest rank), as a number.
    pub fn p99s(&self) -> [Value; 2] {
        self.v
            .each_ref()
            .map(|v| quantile(v, 0.99).map_or(Value::Missing, Value::Number))
    }

    pub fn values(&self) -> [Value; 2] {
        [
            Value::Samples(self.v[0].clone()),
            Value::Samples(self.v[1].clone()),
        ]
    }
}

#[derive(Default)]
pub(super) struct Counts {
    hits: [usize; 2],
    of: [usize; 2],
}

impl Counts {
    fn push(&mut self, tool: Tool, hit: bool) {
        self.put(tool.col(), hit);
    }

    pub fn put(&mut self, col: usize, hit: bool) {
        self.of[col] += 1;
        self.hits[col] += usize::from(hit);
    }

    pub fn values(&self) -> [Value; 2] {
        [0, 1].map(|i| Value::Count {
            hits: self.hits[i],
            of: self.of[i],
        })
    }
}

/// Run `iteration` for every (iteration, tool), recording failures in `section`.
fn iterate(
    cfg: &BenchConfig,
    section: &mut Section,
    mut iteration: impl FnMut(Tool, usize, &str) -> String,
) {
    let names = |t: Tool| (t.slug().to_string(), t.label().to_string());
    iterate_each(cfg, section, &Tool::BOTH, names, |t, i, name| {
        iteration(t, i, name)
    });
}

/// Run `iteration` for every (iteration, variant), the variants interleaved within each
/// iteration, recording failures in `section`. `names` gives a variant's slug (in election
/// names) and label (in progress lines and failures).
pub(super) fn iterate_each<V: Copy>(
    cfg: &BenchConfig,
    section: &mut Section,
    variants: &[V],
    names: impl Fn(V) -> (String, String),
    mut iteration: impl FnMut(V, usize, &str) -> String,
) {
    section.expected = cfg.iterations;
    for i in 0..cfg.iterations {
        for v in variants {
            let (slug, label) = names(*v);
            let name = format!("{}-{slug}-{i}", section.key);
            match attempt(|| iteration(*v, i, &name)) {
                Ok(summary) => cfg.progress(&format!("{} {label} #{i}: {summary}", section.key)),
                Err(e) => {
                    cfg.progress(&format!("{} {label} #{i} failed: {e}", section.key));
                    section.failures.push(format!("{label} #{i}: {e}"));
                }
            }
        }
    }
}

pub(super) fn temp_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("electd-bench-")
        .tempdir()
        .expect("temp dir")
}

/// Milestones of one electd handoff, in milliseconds after the SIGTERM, from the two
/// replicas' logs and the ledger (`None`: the line was not found).
const MILESTONES: [(&str, &str); 8] = [
    (
        "trace_sig",
        "old electd logs the signal (`SIGTERM received`)",
    ),
    (
        "trace_stopping",
        "old electd begins to stop its child (`stopping child`)",
    ),
    (
        "trace_child_exit",
        "old child's `stop` record (its SIGTERM trap ran)",
    ),
    (
        "trace_reaped",
        "old electd has reaped the child's group (`child stopped`)",
    ),
    (
        "trace_revoked",
        "old electd's lease revoke answered (`lease revoked`, debug)",
    ),
    (
        "trace_elected",
        "new leader's electd leads (`role changed … to=leader`)",
    ),
    (
        "trace_spawned",
        "new leader's electd spawned the child (`child started`)",
    ),
    ("trace_start", "new child's `start` record"),
];

/// Where a handoff's milliseconds go: (label, from milestone (`None`: the signal), to).
const STAGES: [(&str, Option<usize>, usize); 7] = [
    ("the signal reaches electd's owner task", None, 0),
    ("the role machine decides to stop the child", Some(0), 1),
    (
        "the child's stop signal, its trap and its `stop` record",
        Some(1),
        2,
    ),
    ("the child's exit, reap and the group's checks", Some(2), 3),
    (
        "lease revoke and the delete event reaching the next replica",
        Some(3),
        5,
    ),
    ("the new leader spawns its child", Some(5), 6),
    ("the child's shell starts and writes its record", Some(6), 7),
];

fn electd_milestones(p: &Pair, t: u128, a_stop: u128, b_start: u128) -> [Option<f64>; 8] {
    let (Some(a), Some(b)) = (p.a.daemon(), p.b.daemon()) else {
        return [None; 8];
    };
    let at =
        |log: &Path, needles: &[&str]| log_time_after(log, needles, t).map(|x| ms_between(x, t));
    [
        at(&a.log, &["SIGTERM received"]),
        at(&a.log, &["stopping child"]),
        Some(ms_between(a_stop, t)),
        at(&a.log, &["child stopped"]),
        at(&a.log, &["lease revoked"]),
        at(&b.log, &["role changed", "to=leader"]),
        at(&b.log, &["child started"]),
        Some(ms_between(b_start, t)),
    ]
}

/// How long `spawn` of `sh -c :` takes, `n` times each: with a `pre_exec` hook (which makes std
/// fork) and without (std may posix_spawn). Milliseconds.
fn spawn_costs(n: usize) -> (Vec<f64>, Vec<f64>) {
    use std::os::unix::process::CommandExt;
    let timed = |hook: bool| {
        let mut cmd = std::process::Command::new("sh");
        cmd.args(["-c", ":"]).process_group(0);
        if hook {
            // SAFETY: the hook makes no call at all.
            unsafe {
                cmd.pre_exec(|| Ok(()));
            }
        }
        let t = std::time::Instant::now();
        let child = cmd.spawn();
        let ms = t.elapsed().as_secs_f64() * 1e3;
        if let Ok(mut c) = child {
            let _ = c.wait();
        }
        ms
    };
    let (mut forked, mut spawned) = (Vec::new(), Vec::new());
    for _ in 0..n {
        forked.push(timed(true));
        spawned.push(timed(false));
    }
    (forked, spawned)
}

/// Scenario 1, SIGTERM to the leader's wrapper: from the old child's exit to the new child's
/// start, what etcd did meanwhile, and (electd) where the milliseconds went.
pub fn handoff(cfg: &BenchConfig) -> Section {
    let mut s = Section::new("handoff");
    let etcd = Etcd::start();
    let ep = etcd.endpoint();
    let dir = temp_dir();
    let (mut handoff, mut total) = (Cols::default(), Cols::default());
    let mut graceful = Counts::default();
    let (mut reads, mut writes, mut fsyncs, mut fsync_ms) = (
        Cols::default(),
        Cols::default(),
        Cols::default(),
        Cols::default(),
    );
    // [tool][milestone]: etcdctl lock has only the ledger's two (2 and 7).
    let mut trace: [[Vec<f64>; 8]; 2] = Default::default();
    let mut stages: [Vec<f64>; 7] = Default::default();
    iterate(cfg, &mut s, |tool, _, name| {
        let tuning = Tuning {
            log: (tool == Tool::Electd).then_some("warn,electd=debug"),
            args: &[],
        };
        let p = Pair::start(cfg, &etcd, tool, name, [&ep, &ep], dir.path(), tuning);
        let before = EtcdCounters::read(&etcd);
        let t = now_ns();
        p.a.stop_gracefully();
        p.wait_new_child(cfg.ttl + Duration::from_secs(10));
        std::thread::sleep(Duration::from_millis(300));
        let d = EtcdCounters::read(&etcd).since(&before);
        let (a, b) = p.runs();
        let b = b.expect("b started");
        let h = ms_between(b.start, a.last);
        handoff.push(tool, h);
        total.push(tool, ms_between(b.start, t));
        graceful.push(tool, a.stopped);
        reads.push(tool, d.reads());
        writes.push(tool, d.writes());
        fsyncs.push(tool, d.fsyncs);
        if let Some(m) = d.fsync_mean_ms() {
            fsync_ms.push(tool, m);
        }
        match tool {
            Tool::Electd => {
                let m = electd_milestones(&p, t, a.last, b.start);
                for (k, x) in m.iter().enumerate() {
                    trace[0][k].extend(*x);
                }
                for (k, (_, from, to)) in STAGES.iter().enumerate() {
                    let x = match from {
                        None => m[*to],
                        Some(f) => m[*to].zip(m[*f]).map(|(b, a)| b - a),
                    };
                    stages[k].extend(x);
                }
            }
            Tool::EtcdctlLock => {
                trace[1][2].push(ms_between(a.last, t));
                trace[1][7].push(ms_between(b.start, t));
            }
        }
        format!(
            "handoff {h:.1} ms; etcd: {} reads, {} writes ({} DeleteRange, {} LeaseRevoke), {} \
             fsyncs",
            d.reads(),
            d.writes(),
            d.delete_range,
            d.lease_revoke,
            d.fsyncs
        )
    });
    s.push("handoff", handoff.values());
    s.push("signal_to_start", total.values());
    s.push("graceful", graceful.values());
    s.push("reads", reads.values());
    s.push("writes", writes.values());
    s.push("fsyncs", fsyncs.values());
    s.push("fsync_ms", fsync_ms.values());
    for (k, (id, _)) in MILESTONES.iter().enumerate() {
        let cols = trace.each_ref().map(|t| {
            if t[k].is_empty() {
                Value::Missing
            } else {
                Value::Samples(t[k].clone())
            }
        });
        s.push(*id, cols);
    }
    let scans: Vec<(f64, usize)> = (0..20).map(|_| proc_scan_ms()).collect();
    s.fact("proc_scan_processes", scans.last().map(|x| x.1 as f64));
    s.push(
        "proc_scan",
        [
            Value::Samples(scans.iter().map(|x| x.0).collect()),
            Value::Missing,
        ],
    );
    let (forked, spawned) = spawn_costs(20);
    s.push("spawn_fork", [Value::Samples(forked), Value::Missing]);
    s.push("spawn_plain", [Value::Samples(spawned), Value::Missing]);
    for (k, v) in stages.iter().enumerate() {
        s.fact(&format!("stage_{k}_ms"), quantile(v, 0.5));
    }
    s
}

pub fn handoff_page(_: &BenchConfig, d: &SectionData) -> Page {
    let mut rows = vec![
        spec(
            "handoff",
            "old child's exit → new leader's child start",
            "ms",
            false,
        ),
        spec(
            "signal_to_start",
            "stop signal sent → new leader's child start",
            "ms",
            false,
        ),
        spec(
            "graceful",
            "old child stopped by its SIGTERM trap",
            "runs",
            false,
        ),
        spec(
            "reads",
            "etcd reads during the handoff (`Range` + `Txn`)",
            "requests",
            false,
        ),
        spec(
            "writes",
            "etcd writes during the handoff (`Txn`, `Put`, `DeleteRange`, lease grant and revoke)",
            "requests",
            false,
        ),
        spec(
            "fsyncs",
            "etcd WAL fsyncs during the handoff",
            "fsyncs",
            false,
        ),
        spec(
            "fsync_ms",
            "etcd's mean WAL fsync during the handoff",
            "ms",
            false,
        ),
    ];
    for (id, what) in MILESTONES {
        rows.push(spec(id, &format!("trace: SIGTERM → {what}"), "ms", false));
    }
    rows.push(spec(
        "proc_scan",
        &format!(
            "one walk over every process's `/proc/PID/stat` here ({} processes), the shape of \
             the supervisor's tree walk",
            d.fact("proc_scan_processes", |x| format!("{x:.0}"))
        ),
        "ms",
        false,
    ));
    rows.push(spec(
        "spawn_fork",
        "spawning `sh -c :` from the benchmark process with a `pre_exec` hook (fork, as \
         electd's supervisor does), until `spawn` returns",
        "ms",
        false,
    ));
    rows.push(spec(
        "spawn_plain",
        "… the same without a `pre_exec` hook (std may use posix_spawn)",
        "ms",
        false,
    ));
    let parts: Vec<String> = STAGES
        .iter()
        .enumerate()
        .map(|(k, (what, _, _))| {
            format!(
                "{what} {}",
                d.fact(&format!("stage_{k}_ms"), |x| format!("{} ms", num(x)))
            )
        })
        .collect();
    let mut note = format!(
        "Where electd's milliseconds go, stage by stage (medians of per-iteration differences \
         between the trace's milestones): {}. The revoke stage is one round trip to etcd that \
         commits through raft (a WAL fsync, row above) and whose delete event etcd then sends \
         to the watcher",
        parts.join("; ")
    );
    let reads_max = |col| d.cell("reads", col).and_then(Cell::max);
    if reads_max(0) == Some(0.0) {
        note += "; no read follows it";
    }
    note += ".";
    if reads_max(1).is_some_and(|r| r > 0.0) {
        note += " `etcdctl lock`'s holder deletes its key (`DeleteRange`; it leaves its lease \
                 to expire), and its waiter, woken by that delete, reads the prefix again before \
                 it runs its command.";
    }
    Page {
        title: "Graceful handoff".into(),
        about: "The leader's wrapper gets its tool's graceful stop: SIGTERM to electd; for \
                `etcdctl lock`, which ignores SIGTERM while its command runs, SIGTERM to its \
                process group (the child exits, etcdctl deletes its key). Handoff = the new \
                leader's child `start` record minus the old child's `stop` record (written in \
                its SIGTERM trap, just before it exits). etcd's calls are deltas of its counters \
                from just before the signal to 300 ms after the new child started. The trace \
                rows are milliseconds after the signal, from the ledger and (electd) the two \
                replicas' log lines, which carry microsecond timestamps of the same clock; \
                electd logs at debug here (`RUST_LOG=warn,electd=debug`) for its `lease \
                revoked` line."
            .into(),
        columns: two_tools(),
        rows,
        notes: vec![note],
    }
}

fn two_tools() -> Vec<String> {
    Tool::BOTH.map(|t| t.label().to_string()).to_vec()
}

/// Whether `etcdctl lock`'s old child was still running at the end of the watch in some run.
fn etcdctl_orphans(d: &SectionData) -> bool {
    ["old_alive", "old_alive_long"]
        .iter()
        .any(|row| matches!(d.cell(row, 1), Some(Cell::Count { hits, .. }) if *hits > 0))
}

/// The TTLs crash failover runs at, and the suffix of their rows' ids: the benchmark's, then
/// the longer one.
pub fn crash_ttls(p: &BenchConfig) -> [(Duration, &'static str); 2] {
    [(p.ttl, ""), (p.crash_long_ttl, "_long")]
}

/// One TTL's rows of the crash scenario.
#[derive(Default)]
struct CrashRows {
    failover: Cols,
    minus_ttl: Cols,
    old_end: Cols,
    overlap: Cols,
    group_end: Cols,
    alive: Counts,
}

/// Scenario 2, SIGKILL of the leader's wrapper at two TTLs: time until the new child starts,
/// and whether anything of the old child was still alive then (its ticks, and its process group
/// polled in /proc).
pub fn crash(cfg: &BenchConfig) -> Section {
    let mut s = Section::new("crash");
    let etcd = Etcd::start();
    let ep = etcd.endpoint();
    let dir = temp_dir();
    let ttls = crash_ttls(cfg);
    let mut rows: [CrashRows; 2] = Default::default();
    let mut periods = Vec::new();
    let variants: Vec<(usize, Tool)> = (0..ttls.len())
        .flat_map(|k| Tool::BOTH.map(|t| (k, t)))
        .collect();
    let names = |(k, t): (usize, Tool)| {
        let secs = ttls[k].0.as_secs();
        (
            format!("{}-{secs}s", t.slug()),
            format!("{} (TTL {secs} s)", t.label()),
        )
    };
    iterate_each(cfg, &mut s, &variants, names, |(k, tool), _, name| {
        let c = BenchConfig {
            ttl: ttls[k].0,
            ..cfg.clone()
        };
        let p = Pair::start(
            &c,
            &etcd,
            tool,
            name,
            [&ep, &ep],
            dir.path(),
            Tuning::default(),
        );
        let child = p
            .ledger
            .first_child("a")
            .expect("a's child registered its pid");
        let group = group_of(child).expect("a's child runs");
        let watch = AliveWatch::group(group);
        watch.wait_first_look(Duration::from_secs(2));
        let t = now_ns();
        p.a.crash();
        p.wait_new_child(c.ttl + Duration::from_secs(15));
        std::thread::sleep(cfg.observe);
        let seen = watch.stop();
        let still = !seen.dead() || p.ledger.first_child_alive("a");
        let (a, b) = p.runs();
        let b = b.expect("b started");
        let f = ms_between(b.start, t);
        let last = seen
            .last_alive
            .expect("the group was alive before the kill");
        let r = &mut rows[k];
        r.failover.push(tool, f);
        r.minus_ttl.push(tool, f - c.ttl_ms());
        r.old_end.push(tool, ms_between(a.last, t));
        r.overlap.push(tool, ms_between(a.last, b.start));
        r.group_end.push(tool, ms_between(last, b.start));
        r.alive.push(tool, still);
        periods.extend(seen.period_ms());
        format!("failover {f:.0} ms, old child alive at the end: {still}")
    });
    for id in CRASH_ROWS.map(|(id, ..)| id) {
        for ((_, suffix), r) in ttls.iter().zip(&rows) {
            let values = match id {
                "failover" => r.failover.values(),
                "failover_minus_ttl" => r.minus_ttl.values(),
                "old_end" => r.old_end.values(),
                "overlap" => r.overlap.values(),
                "group_end" => r.group_end.values(),
                "old_alive" => r.alive.values(),
                _ => unreachable!("every crash row is pushed"),
            };
            s.push(format!("{id}{suffix}"), values);
        }
    }
    s.fact("group_poll_ms", quantile(&periods, 0.5));
    s
}

/// The crash rows (each at both TTLs): id, label, unit, signed.
const CRASH_ROWS: [(&str, &str, &str, bool); 6] = [
    (
        "failover",
        "SIGKILL of the leader's wrapper → new child starts",
        "ms",
        false,
    ),
    ("failover_minus_ttl", "the same, minus the TTL", "ms", true),
    (
        "old_end",
        "old child's last tick after the kill (−50 ms … 0: it died at once)",
        "ms",
        true,
    ),
    (
        "overlap",
        "overlap: old child's last tick − new child's start",
        "ms",
        true,
    ),
    (
        "group_end",
        "overlap: last process of the old child's group seen alive − new child's start",
        "ms",
        true,
    ),
    ("old_alive", "", "runs", false),
];

/// `p50 X at TTL N s` for each TTL whose `row` has a median in column `col`.
fn medians_by_ttl(p: &BenchConfig, d: &SectionData, row: &str, col: usize) -> Vec<(f64, String)> {
    crash_ttls(p)
        .iter()
        .filter_map(|(ttl, suffix)| {
            let m = d.cell(&format!("{row}{suffix}"), col)?.median()?;
            Some((
                m / (ttl.as_secs_f64() * 1e3),
                format!("p50 {} at TTL {} s", ms(m), ttl.as_secs()),
            ))
        })
        .collect()
}

pub fn crash_page(p: &BenchConfig, d: &SectionData) -> Page {
    let obs = p.observe.as_secs_f64();
    let ttls = crash_ttls(p);
    let measured: Vec<u64> = ttls
        .iter()
        .filter(|(_, suffix)| d.row(&format!("failover{suffix}")).is_some())
        .map(|(ttl, _)| ttl.as_secs())
        .collect();
    let at = match measured.as_slice() {
        [one] => format!("at TTL {one} s"),
        [a, b] => format!("at TTL {a} s and at TTL {b} s, iterations interleaved"),
        _ => "at no TTL".into(),
    };
    let mut notes = Vec::new();
    // Whether a tool waited for its lease: the failover medians against their TTLs.
    for tool in Tool::BOTH {
        let each = medians_by_ttl(p, d, "failover", tool.col());
        if each.is_empty() {
            continue;
        }
        let list = each
            .iter()
            .map(|(_, t)| t.as_str())
            .collect::<Vec<_>>()
            .join(", ");
        let waited = each.iter().any(|(share, _)| *share >= 0.5);
        notes.push(match (tool, waited) {
            (Tool::Electd, false) => format!(
                "electd's next leader started without waiting for the lease ({list}): when \
                 electd dies, its freeze watchdog kills the command's process group, confirms \
                 none of it is alive, writes the clean-release mark into the leader key and \
                 revokes the lease, and the next replica leads at once."
            ),
            (Tool::Electd, true) => format!(
                "electd's next leader started only once the old lease had expired ({list}): \
                 bounded below by what was left of the TTL."
            ),
            (Tool::EtcdctlLock, true) => format!(
                "`etcdctl lock`'s next holder waited for the old lease to expire ({list}): \
                 bounded below by what was left of the TTL."
            ),
            (Tool::EtcdctlLock, false) => {
                format!("`etcdctl lock`'s next holder started {list} after the kill.")
            }
        });
    }
    let mut alive_note = String::new();
    for (ttl, suffix) in ttls {
        if let Some(Cell::Count { hits, of }) = d.cell(&format!("old_alive{suffix}"), 0)
            && *hits > 0
        {
            let group = if d.row(&format!("group_end{suffix}")).is_some() {
                " (or a process of its group)"
            } else {
                ""
            };
            alive_note += &format!(
                "**At TTL {} s electd's old child{group} was still running {obs:.1} s after the \
                 new one started in {hits} of {of} runs**, although its freeze watchdog (and \
                 PR_SET_PDEATHSIG) should kill it when electd dies. ",
                ttl.as_secs()
            );
        }
    }
    if etcdctl_orphans(d) {
        alive_note += &format!(
            "`etcdctl lock` starts its command without a watchdog or PR_SET_PDEATHSIG, so the \
             old child survives etcdctl's death and keeps running after the next holder \
             started (PITFALLS items 1 and 8). Its figures are then lower bounds set by the \
             {obs:.1} s watch; the benchmark kills the orphan afterwards."
        );
    }
    if !alive_note.is_empty() {
        notes.push(alive_note.trim_end().to_string());
    }
    let mut rows: Vec<RowSpec> = Vec::new();
    for (id, what, unit, signed) in CRASH_ROWS {
        for (ttl, suffix) in ttls {
            // Runs before the group was watched looked at the old child's own pid only.
            let what = match id {
                "old_alive" if d.row(&format!("group_end{suffix}")).is_some() => format!(
                    "old child (or a process of its group) still running {obs:.1} s after the new \
                     one started"
                ),
                "old_alive" => {
                    format!("old child still running {obs:.1} s after the new one started")
                }
                _ => what.to_string(),
            };
            rows.push(spec(
                &format!("{id}{suffix}"),
                &format!("{what}, TTL {} s", ttl.as_secs()),
                unit,
                signed,
            ));
        }
    }
    let group = if d.row("group_end").is_some() {
        format!(
            ", and its process group, polled in /proc from just before the kill (a walk every \
             {} ms, p50): the last walk that found a process of it alive (not a zombie; a \
             stopped one counts), minus the new child's start",
            d.fact("group_poll_ms", num)
        )
    } else {
        String::new()
    };
    Page {
        title: "Crash failover".into(),
        about: format!(
            "SIGKILL of the leader's wrapper process only (electd; etcdctl, not its process \
             group), {at}. Failover = the new child's `start` record minus the moment of the \
             kill. The old child is then watched for {obs:.1} s more: its last `tick` after the \
             kill and after the new start (positive = both children ran at once){group}."
        ),
        columns: two_tools(),
        rows,
        notes,
    }
}

/// 3. Blackhole the leader's link to etcd: when the old child stopped, when the new started.
pub fn partition(cfg: &BenchConfig) -> Section {
    let mut s = Section::new("partition");
    let etcd = Etcd::start();
    let dir = temp_dir();
    let mut old_stop = Cols::default();
    let mut new_start = Cols::default();
    let mut overlap = Cols::default();
    let mut positive = Counts::default();
    let mut alive = Counts::default();
    iterate(cfg, &mut s, |tool, _, name| {
        let p = Pair::start_proxied(cfg, &etcd, tool, name, dir.path());
        let t = now_ns();
        p.leader_link().set_mode(ProxyMode::Blackhole);
        p.wait_new_child(cfg.ttl + Duration::from_secs(15));
        std::thread::sleep(cfg.observe);
        let still = p.ledger.first_child_alive("a");
        let (a, b) = p.runs();
        let b = b.expect("b started");
        let o = ms_between(a.last, b.start);
        old_stop.push(tool, ms_between(a.last, t));
        new_start.push(tool, ms_between(b.start, t));
        overlap.push(tool, o);
        positive.push(tool, o > 0.0);
        alive.push(tool, still);
        format!("overlap {o:.0} ms, old child still running: {still}")
    });
    s.push("old_stop", old_stop.values());
    s.push("new_start", new_start.values());
    s.push("overlap", overlap.values());
    s.push("overlapped", positive.values());
    s.push("old_alive", alive.values());
    s
}

pub fn partition_page(p: &BenchConfig, d: &SectionData) -> Page {
    let obs = p.observe.as_secs_f64();
    let timing = Timing::new(p.ttl, p.stop_grace);
    let mut notes = vec![format!(
        "electd stops its child once its leader budget is spent: TTL − safety margin − stop \
         grace = {} − {} − {} = {} ms after the last successful keepalive was sent \
         (keepalives every {} ms), so the child is gone before the lease can expire at etcd.",
        timing.ttl.as_millis(),
        timing.safety_margin.as_millis(),
        timing.stop_grace.as_millis(),
        timing.leader_budget().as_millis(),
        timing.keepalive_interval.as_millis(),
    )];
    if etcdctl_orphans(d) {
        notes.push(format!(
            "`etcdctl lock` does not watch its session while the command runs: the cut-off \
             holder's child keeps running after the lease expired and the next holder started, \
             so its overlap is a lower bound set by the {obs:.1} s watch."
        ));
    }
    Page {
        title: "Partition".into(),
        about: format!(
            "Each replica reaches etcd through its own TCP proxy; the leader's proxy starts to \
             blackhole (connections stay open, nothing is forwarded). Times are from the cut. \
             Overlap = the old child's last sign of life (its `stop` record, else its last \
             `tick`) minus the new child's `start`: positive means two children ran at once. \
             The old child is watched for {obs:.1} s after the new one started."
        ),
        columns: two_tools(),
        rows: vec![
            spec(
                "old_stop",
                "old child's last sign of life after the cut",
                "ms",
                false,
            ),
            spec("new_start", "new child's start after the cut", "ms", false),
            spec(
                "overlap",
                "overlap (positive = two children ran at once)",
                "ms",
                true,
            ),
            spec("overlapped", "runs with a positive overlap", "runs", false),
            spec(
                "old_alive",
                &format!("old child still running {obs:.1} s after the new one started"),
                "runs",
                false,
            ),
        ],
        notes,
    }
}

/// 4. Cut the leader's link for half the TTL, then restore: restart? leadership moved?
pub fn flap(cfg: &BenchConfig) -> Section {
    let cut = cfg.ttl / 2;
    let watch = cfg.ttl + cfg.flap_settle;
    let mut s = Section::new("flap");
    let etcd = Etcd::start();
    let dir = temp_dir();
    let mut stopped = Counts::default();
    let mut restarted = Counts::default();
    let mut moved = Counts::default();
    let mut stop_after = Cols::default();
    iterate(cfg, &mut s, |tool, _, name| {
        let p = Pair::start_proxied(cfg, &etcd, tool, name, dir.path());
        let t = now_ns();
        p.leader_link().set_mode(ProxyMode::Blackhole);
        std::thread::sleep(cut);
        p.leader_link().set_mode(ProxyMode::Pass);
        std::thread::sleep(watch);
        let a_runs = p.ledger.runs_of("a");
        let first_alive = p.ledger.first_child_alive("a");
        let was_stopped = !first_alive;
        let was_restarted = a_runs.len() > 1;
        let was_moved = p.ledger.starts_of("b") > 0;
        stopped.push(tool, was_stopped);
        restarted.push(tool, was_restarted);
        moved.push(tool, was_moved);
        if was_stopped {
            stop_after.push(tool, ms_between(a_runs[0].last, t));
        }
        format!("stopped {was_stopped}, restarted {was_restarted}, moved {was_moved}")
    });
    s.push("stopped", stopped.values());
    s.push("restarted", restarted.values());
    s.push("moved", moved.values());
    s.push("stop_after", stop_after.values());
    s.expected = 0;
    s
}

pub fn flap_page(p: &BenchConfig, _: &SectionData) -> Page {
    let cut = p.ttl / 2;
    let timing = Timing::new(p.ttl, p.stop_grace);
    let watch = p.ttl + p.flap_settle;
    Page {
        title: "Flap".into(),
        about: format!(
            "The leader's proxy blackholes for half the TTL ({} ms), then passes again; the \
             replicas are watched for {:.1} s more. A good outcome: the child keeps running \
             and leadership stays put.",
            cut.as_millis(),
            watch.as_secs_f64()
        ),
        columns: two_tools(),
        rows: vec![
            spec("stopped", "leader's child stopped", "runs", false),
            spec(
                "restarted",
                "child restarted on the same replica",
                "runs",
                false,
            ),
            spec(
                "moved",
                "leadership moved to the other replica",
                "runs",
                false,
            ),
            spec(
                "stop_after",
                "when stopped: old child's last sign of life after the cut",
                "ms",
                false,
            ),
        ],
        notes: vec![format!(
            "With TTL {} ms and stop grace {} ms electd's leader keeps its role for {} ms after \
             the last successful keepalive was *sent* (keepalives every {} ms), so a {} ms cut \
             outlasts that budget whenever the last keepalive before the cut went out more than \
             {} ms before it; past the budget electd stops the child and rejoins the queue, as \
             its safety bound requires. A longer TTL or a shorter stop grace widens the \
             tolerated flap (the budget table in docs/operations.md).",
            timing.ttl.as_millis(),
            timing.stop_grace.as_millis(),
            timing.leader_budget().as_millis(),
            timing.keepalive_interval.as_millis(),
            cut.as_millis(),
            timing.leader_budget().saturating_sub(cut).as_millis(),
        )],
    }
}
