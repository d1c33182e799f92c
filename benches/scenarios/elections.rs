//! Scenario: many elections in one electd (issue 24). Three electd processes, each taking part in
//! the same N sidecar elections (`[[elections]]` tables, `balance = true`), beside the same three
//! processes with one election: etcd's load per idle process (deltas of its gRPC counters), RSS
//! and CPU per process, and with N elections how long leadership takes to spread evenly (none
//! leads more than ⌈N / R⌉) after the third process joins, after one is killed with kill -9 and
//! after it returns, with the number of elections that changed hands on the return.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use super::report::{Page, spec};
use super::trace::{EtcdCounters, clock_ticks_per_second, rss_mb, stat};
use super::{BenchConfig, Section, SectionData, Value, attempt};
use crate::common::{Daemon, DaemonSpec, Etcd};

const PROCESSES: usize = 3;

/// The two columns: one election per process, and `elections_count`.
pub fn columns(p: &BenchConfig) -> [usize; 2] {
    [1, p.elections_count]
}

fn names(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("shard-{i}")).collect()
}

fn config(dir: &Path, p: &BenchConfig, n: usize) -> std::path::PathBuf {
    let mut text = format!(
        "balance = true\nbalance_delay = \"{}ms\"\n",
        p.elections_balance_delay.as_millis()
    );
    for e in names(n) {
        text += &format!("\n[[elections]]\nname = \"{e}\"\n");
    }
    let path = dir.join(format!("electd-{n}.toml"));
    std::fs::write(&path, text).expect("write the config file");
    path
}

fn daemon(p: &BenchConfig, etcd: &Etcd, config: &Path, id: &str) -> DaemonSpec {
    DaemonSpec::new(&etcd.endpoint(), "", id)
        .ttl(&format!("{}s", p.ttl.as_secs()))
        .env("RUST_LOG", "warn,electd=info")
        .args(&["--config", config.to_str().expect("a UTF-8 path")])
}

/// How many elections each daemon leads, once every one of the `n` has exactly one leader
/// among them.
fn counts(daemons: &[&Daemon], n: usize) -> Option<Vec<usize>> {
    let leads: Vec<Vec<String>> = daemons.iter().map(|d| d.leads()).collect::<Option<_>>()?;
    let mut led: BTreeMap<&str, usize> = BTreeMap::new();
    for l in &leads {
        for e in l {
            *led.entry(e).or_default() += 1;
        }
    }
    (led.len() == n && led.values().all(|c| *c == 1)).then(|| leads.iter().map(Vec::len).collect())
}

/// Who leads each election (by name), once every one has one leader among `daemons`.
fn leaders(daemons: &[&Daemon], n: usize) -> Option<BTreeMap<String, usize>> {
    counts(daemons, n)?;
    let mut out = BTreeMap::new();
    for (i, d) in daemons.iter().enumerate() {
        for e in d.leads()? {
            out.insert(e, i);
        }
    }
    Some(out)
}

/// Milliseconds from `from` until `done` holds (polled every 20 ms), or an error after `within`.
fn until(from: Instant, within: Duration, what: &str, mut done: impl FnMut() -> bool) -> f64 {
    loop {
        if done() {
            return from.elapsed().as_secs_f64() * 1e3;
        }
        if from.elapsed() > within {
            panic!("{what}: not within {within:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn balanced(daemons: &[&Daemon], n: usize) -> bool {
    let share = n.div_ceil(daemons.len());
    counts(daemons, n).is_some_and(|c| c.iter().all(|x| *x <= share))
}

/// What one configuration (n elections per process) measured.
#[derive(Default)]
struct Measured {
    /// etcd per idle process and second: messages received, completed RPCs, keepalives, watch
    /// messages received.
    msgs: f64,
    rpcs: f64,
    keepalives: f64,
    watch_in: f64,
    /// Whether the idle window was measured (the rates above are then figures, zeros included).
    idle: bool,
    rss: Vec<f64>,
    cpu: Vec<f64>,
    /// Milliseconds: the third process's start → balanced; kill -9 of one → every election led
    /// again, → balanced over the two left; its return → balanced over three.
    join: Option<f64>,
    death_led: Option<f64>,
    death_balanced: Option<f64>,
    rejoin: Option<f64>,
    /// Elections whose leader changed between before and after the return, and the fewest that
    /// balance needed (what the returned process leads at the end).
    moved: Option<usize>,
    needed: Option<usize>,
}

/// Measure `n` elections per process into `m`, step by step: a step that fails (panics) leaves
/// the later figures unmeasured.
fn measure(p: &BenchConfig, n: usize, m: &mut Measured) {
    let etcd = Etcd::start();
    let dir = tempfile::Builder::new()
        .prefix("electd-bench-elections-")
        .tempdir()
        .expect("temp dir");
    let config = config(dir.path(), p, n);
    let within = Duration::from_secs(60) + p.elections_balance_delay * (n as u32 + 2);
    let ids = ["a", "b", "c"];
    let mut daemons: Vec<Daemon> = Vec::new();
    for id in &ids[..PROCESSES - 1] {
        daemons.push(daemon(p, &etcd, &config, id).start());
    }
    let two: Vec<&Daemon> = daemons.iter().collect();
    until(Instant::now(), within, "two processes to balance", || {
        balanced(&two, n)
    });
    let t = Instant::now();
    daemons.push(daemon(p, &etcd, &config, ids[PROCESSES - 1]).start());
    let all: Vec<&Daemon> = daemons.iter().collect();
    m.join = Some(until(
        t,
        within,
        "the third process to be balanced in",
        || balanced(&all, n),
    ));

    // Idle: the load each process puts on etcd, and its own footprint.
    std::thread::sleep(p.footprint_warmup);
    let pids: Vec<u32> = daemons.iter().map(Daemon::pid).collect();
    let ticks = |pid: u32| stat(pid).map(|(_, t)| t).unwrap_or(0);
    let t0: Vec<u64> = pids.iter().map(|p| ticks(*p)).collect();
    let a = EtcdCounters::read(&etcd);
    let start = Instant::now();
    let mut rss = Vec::new();
    while start.elapsed() < p.elections_idle {
        std::thread::sleep(Duration::from_millis(500).min(p.elections_idle));
        rss.extend(pids.iter().filter_map(|p| rss_mb(*p)));
    }
    let d = EtcdCounters::read(&etcd).since(&a);
    let secs = start.elapsed().as_secs_f64();
    let per = |x: f64| x / secs / PROCESSES as f64;
    let hz = clock_ticks_per_second();
    m.cpu = pids
        .iter()
        .zip(t0)
        .map(|(p, t0)| ticks(*p).saturating_sub(t0) as f64 / hz / secs * 100.0)
        .collect();
    m.msgs = per(d.msgs_in);
    m.rpcs = per(d.handled);
    m.keepalives = per(d.keepalive_msgs);
    m.watch_in = per(d.watch_msgs_in);
    m.rss = rss;
    m.idle = true;

    // kill -9 of one process: its elections move (its watchdog releases them at once), then
    // spread over the two left.
    let t = Instant::now();
    daemons[0].kill9();
    let left: Vec<&Daemon> = daemons[1..].iter().collect();
    m.death_led = Some(until(
        t,
        within,
        "every election led after the kill",
        || counts(&left, n).is_some(),
    ));
    m.death_balanced = Some(until(
        t,
        within,
        "two processes balanced after the kill",
        || balanced(&left, n),
    ));
    let before = leaders(&left, n).expect("balanced means every election is led");
    let t = Instant::now();
    daemons[0] = daemon(p, &etcd, &config, ids[0]).start();
    let all: Vec<&Daemon> = daemons.iter().collect();
    m.rejoin = Some(until(
        t,
        within,
        "the returned process to be balanced in",
        || balanced(&all, n),
    ));
    let after = leaders(&all, n).expect("balanced means every election is led");
    m.moved = Some(
        after
            .iter()
            .filter(|(e, i)| before.get(*e).map(|b| b + 1) != Some(**i))
            .count(),
    );
    m.needed = Some(after.values().filter(|i| **i == 0).count());
}

pub fn elections(p: &BenchConfig) -> Section {
    let mut s = Section::new("elections");
    let mut measured = Vec::new();
    for n in columns(p) {
        p.progress(&format!("elections: {PROCESSES} processes × {n}"));
        let mut m = Measured::default();
        if let Err(e) = attempt(|| measure(p, n, &mut m)) {
            s.failures.push(format!("{n} elections: {e}"));
        }
        measured.push(m);
    }
    let [one, many] = [&measured[0], &measured[1]];
    let both = |f: &dyn Fn(&Measured) -> f64| {
        [one, many].map(|m| {
            if m.idle {
                Value::Number(f(m))
            } else {
                Value::Missing
            }
        })
    };
    s.push("msgs", both(&|m| m.msgs));
    s.push("keepalives", both(&|m| m.keepalives));
    s.push("watch_in", both(&|m| m.watch_in));
    s.push("rpcs", both(&|m| m.rpcs));
    s.push(
        "rss",
        [
            Value::Samples(one.rss.clone()),
            Value::Samples(many.rss.clone()),
        ],
    );
    let mean = |v: &[f64]| (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64);
    let n = p.elections_count as f64;
    s.push(
        "rss_per_election",
        [
            Value::Missing,
            mean(&many.rss)
                .zip(mean(&one.rss))
                .map_or(Value::Missing, |(m, o)| {
                    Value::Number((m - o) * 1e3 / (n - 1.0).max(1.0))
                }),
        ],
    );
    s.push(
        "cpu",
        [
            Value::Samples(one.cpu.clone()),
            Value::Samples(many.cpu.clone()),
        ],
    );
    let ms = |f: &dyn Fn(&Measured) -> Option<f64>| {
        [one, many].map(|m| f(m).map_or(Value::Missing, |x| Value::Samples(vec![x])))
    };
    s.push("join", ms(&|m| m.join));
    s.push("death_led", ms(&|m| m.death_led));
    s.push("death_balanced", ms(&|m| m.death_balanced));
    s.push("rejoin", ms(&|m| m.rejoin));
    let count = |f: &dyn Fn(&Measured) -> Option<usize>| {
        [one, many].map(|m| f(m).map_or(Value::Missing, |x| Value::Number(x as f64)))
    };
    s.push("moved", count(&|m| m.moved));
    s.push("needed", count(&|m| m.needed));
    s
}

pub fn page(p: &BenchConfig, _: &SectionData) -> Page {
    let [_, n] = columns(p);
    Page {
        title: "Several elections".into(),
        about: format!(
            "{PROCESSES} electd processes (TTL {} s), each in the same elections without a \
             command (sidecar mode), `balance = true`, `balance_delay = \"{}ms\"`: one election \
             each, then {n} each, every configuration on an etcd of its own. Two processes \
             start and balance, then the third joins; after {:.1} s of warm-up, {:.0} s idle: \
             etcd's load is the delta of its own gRPC counters divided by the {PROCESSES} \
             processes, RSS (`VmRSS`, MB) is sampled every half second from every process, CPU \
             is each process's `utime + stime` over the window. Then one process gets kill -9 \
             and comes back with the same id. Times are polled every 20 ms from `/elections` \
             of each live process; balanced means every election has exactly one leader and no \
             process leads more than its share (⌈N / R⌉).",
            p.ttl.as_secs(),
            p.elections_balance_delay.as_millis(),
            p.footprint_warmup.as_secs_f64(),
            p.elections_idle.as_secs_f64(),
        ),
        columns: columns(p)
            .iter()
            .map(|c| format!("{c} election{} per process", if *c == 1 { "" } else { "s" }))
            .collect(),
        rows: vec![
            spec(
                "msgs",
                "etcd gRPC messages received per second per idle process",
                "msg/s",
                false,
            ),
            spec("keepalives", "… of which lease keepalives", "msg/s", false),
            spec(
                "watch_in",
                "… of which on watch streams (progress requests, watch creation)",
                "msg/s",
                false,
            ),
            spec(
                "rpcs",
                "etcd completed RPCs per second per idle process",
                "RPC/s",
                false,
            ),
            spec("rss", "RSS of an idle process", "MB", false),
            spec(
                "rss_per_election",
                &format!(
                    "RSS per election (mean RSS with {n} minus with 1, over {})",
                    n - 1
                ),
                "kB",
                false,
            ),
            spec("cpu", "CPU of an idle process", "% of a core", false),
            spec("join", "third process started → balanced", "ms", false),
            spec(
                "death_led",
                "kill -9 of one process → every election led again",
                "ms",
                false,
            ),
            spec(
                "death_balanced",
                "kill -9 of one process → balanced over the two left",
                "ms",
                false,
            ),
            spec(
                "rejoin",
                "the killed process back (same id) → balanced over three",
                "ms",
                false,
            ),
            spec(
                "moved",
                "elections whose leader changed between before and after its return",
                "elections",
                false,
            ),
            spec(
                "needed",
                "… the fewest that balance needed (what the returned process leads at the end)",
                "elections",
                false,
            ),
        ],
        notes: vec![format!(
            "Every process holds one lease and one keepalive stream for all its elections; each \
             election has its own watch. A process above its share hands one election at a \
             time, no sooner than `balance_delay` ({} ms) after the last change, so the time \
             to balance grows with the number of elections to move.",
            p.elections_balance_delay.as_millis()
        )],
    }
}
