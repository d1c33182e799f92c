//! Scenario: many candidates in one election (issue 17), side by side: real electd processes,
//! and many `electd::election::Driver`s in one process (each count in a helper process of its
//! own, so its memory growth is its own). Every candidate keeps the queue from one watch of the
//! whole prefix, so a leader change should cost no read at etcd, whatever the count; each join
//! is one event for every watcher.
//!
//! On each leader change (SIGTERM to the leading process; `release(After::Stop)` in process):
//! etcd's completed `Range` and `Txn` calls, the events it sent to watchers and its CPU time
//! in a window after the change, and when the new leader and every follower named it. Then a
//! new candidate joins at the back, and the same is counted for the join.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use electd::config::Timing;
use electd::election::etcd::EtcdBackend;
use electd::election::{After, DriverConfig, DriverHandle, ElectionView, MemberInfo, Position};
use nix::sys::signal::Signal;
use tokio::sync::watch;
use tokio::time::{Instant, sleep, sleep_until, timeout};

use super::report::{Cell, Page, spec};
use super::trace::{EtcdCounters, rss_mb};
use super::{BenchConfig, Section, SectionData, Value, attempt, electd_spec, start_helper};
use crate::common::{Daemon, Etcd, http_get, wait_child_timeout, wait_until};

/// What one column measured. Times in milliseconds, memory in MB.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Figures {
    pub n: usize,
    /// From starting every candidate to one leader that every other one names, in seconds.
    pub settle_s: Option<f64>,
    /// Memory per candidate: in process, the RSS growth over N; else each process's RSS.
    pub memory: Vec<f64>,
    /// In process: the whole RSS growth for N candidates.
    pub memory_total: Option<f64>,
    /// Per leader change.
    pub to_leader: Vec<f64>,
    pub all_follow: Vec<f64>,
    pub release: Vec<f64>,
    pub reads: Vec<f64>,
    pub writes: Vec<f64>,
    pub events: Vec<f64>,
    pub cpu_ms: Vec<f64>,
    pub window_ms: Vec<f64>,
    pub wakeups: Vec<f64>,
    /// etcd's CPU, and the reads it served, in windows of the same length without any change.
    pub idle_cpu_ms: Vec<f64>,
    pub idle_reads: Vec<f64>,
    /// Per join.
    pub join_range: Vec<f64>,
    pub join_txn: Vec<f64>,
    pub join_grant: Vec<f64>,
    pub join_events: Vec<f64>,
    pub join_cpu_ms: Vec<f64>,
    pub join_seen: Vec<f64>,
    pub failures: Vec<String>,
}

impl Figures {
    fn change(&mut self, d: &EtcdCounters) {
        self.reads.push(d.reads());
        self.writes.push(d.writes());
        self.events.push(d.events);
        self.cpu_ms.push(d.cpu * 1e3);
    }

    fn join(&mut self, d: &EtcdCounters) {
        self.join_range.push(d.range);
        self.join_txn.push(d.txn);
        self.join_grant.push(d.lease_grant);
        self.join_events.push(d.events);
        self.join_cpu_ms.push(d.cpu * 1e3);
    }
}

/// etcd's CPU (milliseconds) and the reads it served in `k` windows of `window` without any
/// change.
fn idle_windows(etcd: &Etcd, window: Duration, k: usize) -> (Vec<f64>, Vec<f64>) {
    (0..k)
        .map(|_| {
            let a = EtcdCounters::read(etcd);
            std::thread::sleep(window);
            let d = EtcdCounters::read(etcd).since(&a);
            (d.cpu * 1e3, d.reads())
        })
        .unzip()
}

// ---------------------------------------------------------------------------
// Real electd processes
// ---------------------------------------------------------------------------

/// `GET /role` as JSON, if the daemon answers.
fn role(addr: &str, path: &str) -> Option<serde_json::Value> {
    let (code, body) = http_get(addr, path).ok()?;
    (code == 200).then(|| serde_json::from_str(&body).ok())?
}

/// Wait until every daemon answers, exactly one leads and every other one names it; its index.
fn wait_all_agree(daemons: &[Daemon], within: Duration) -> usize {
    let mut found = None;
    wait_until(within, "one leader that every replica names", || {
        let docs: Option<Vec<serde_json::Value>> =
            daemons.iter().map(|d| role(&d.http, "/role")).collect();
        let Some(docs) = docs else { return false };
        let leaders: Vec<usize> = (0..docs.len())
            .filter(|i| docs[*i]["role"] == "leader")
            .collect();
        let [l] = leaders[..] else { return false };
        let token = &docs[l]["fencing_token"];
        found = Some(l);
        docs.iter().all(|d| d["fencing_token"] == *token)
    });
    found.expect("set when the wait succeeded")
}

/// Long-poll `/role` on `addr` until it names a leader other than `old`; when, and whether this
/// replica says it leads.
fn wait_new_leader(
    addr: String,
    old: i64,
    deadline: std::time::Instant,
) -> Option<(std::time::Instant, i64, bool)> {
    let mut version = role(&addr, "/role")?["version"].as_u64()?;
    while std::time::Instant::now() < deadline {
        let Some(doc) = role(&addr, &format!("/role?wait=1500ms&after={version}")) else {
            std::thread::sleep(Duration::from_millis(20));
            continue;
        };
        let at = std::time::Instant::now();
        if let Some(token) = doc["fencing_token"].as_i64()
            && token != old
        {
            return Some((at, token, doc["role"] == "leader"));
        }
        version = doc["version"].as_u64().unwrap_or(version);
    }
    None
}

fn processes(cfg: &BenchConfig) -> Figures {
    let n = cfg.scale_processes;
    let etcd = Etcd::start();
    let ttl = format!("{}s", cfg.scale_ttl.as_secs());
    let spec =
        |i: usize| electd_spec(cfg, &etcd.endpoint(), "scale", &format!("r{i:03}")).ttl(&ttl);
    let mut f = Figures {
        n,
        ..Figures::default()
    };
    let t = std::time::Instant::now();
    let mut daemons: Vec<Daemon> = (0..n).map(|i| spec(i).start()).collect();
    let mut next = n;
    wait_all_agree(&daemons, Duration::from_secs(120));
    f.settle_s = Some(t.elapsed().as_secs_f64());
    cfg.progress(&format!(
        "scale: {n} electd processes settled in {:.1} s",
        t.elapsed().as_secs_f64()
    ));
    std::thread::sleep(Duration::from_secs(1));
    f.memory = daemons.iter().filter_map(|d| rss_mb(d.pid())).collect();
    (f.idle_cpu_ms, f.idle_reads) = idle_windows(&etcd, cfg.scale_window, 3);
    for i in 0..cfg.iterations {
        let step = attempt(|| {
            let l = wait_all_agree(&daemons, Duration::from_secs(30));
            let old = daemons[l].fencing_token().expect("the leader has a token");
            let deadline = std::time::Instant::now() + Duration::from_secs(20);
            let pollers: Vec<_> = daemons
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != l)
                .map(|(_, d)| {
                    let addr = d.http.clone();
                    std::thread::spawn(move || wait_new_leader(addr, old, deadline))
                })
                .collect();
            // Let every long poll reach its daemon before the change.
            std::thread::sleep(Duration::from_millis(200));
            let before = EtcdCounters::read(&etcd);
            let t0 = std::time::Instant::now();
            daemons[l].signal(Signal::SIGTERM);
            daemons[l].wait_exit(Duration::from_secs(10));
            let exited = t0.elapsed();
            let seen: Vec<_> = pollers
                .into_iter()
                .map(|p| {
                    p.join()
                        .ok()
                        .flatten()
                        .expect("a follower named a new leader")
                })
                .collect();
            let tokens: Vec<i64> = seen.iter().map(|s| s.1).collect();
            assert!(
                tokens.iter().all(|t| *t == tokens[0]),
                "the followers named different leaders: {tokens:?}"
            );
            let ms = |at: std::time::Instant| at.duration_since(t0).as_secs_f64() * 1e3;
            let leader_at = seen.iter().find(|s| s.2).expect("the new leader says so").0;
            let all = seen.iter().map(|s| s.0).max().expect("followers");
            let window = cfg
                .scale_window
                .max(all.duration_since(t0) + Duration::from_millis(200));
            std::thread::sleep(window.saturating_sub(t0.elapsed()));
            let d = EtcdCounters::read(&etcd).since(&before);
            f.to_leader.push(ms(leader_at));
            f.all_follow.push(ms(all));
            f.release.push(exited.as_secs_f64() * 1e3);
            f.window_ms.push(t0.elapsed().as_secs_f64() * 1e3);
            f.change(&d);
            daemons.remove(l);

            // A new replica joins at the back.
            let before = EtcdCounters::read(&etcd);
            let t1 = std::time::Instant::now();
            let joined = spec(next).start();
            next += 1;
            joined.wait_role("follower", Duration::from_secs(20));
            let window = cfg
                .scale_window
                .max(t1.elapsed() + Duration::from_millis(200));
            std::thread::sleep(window.saturating_sub(t1.elapsed()));
            let dj = EtcdCounters::read(&etcd).since(&before);
            f.join(&dj);
            daemons.push(joined);
            format!(
                "new leader after {:.1} ms, every follower after {:.1} ms; {} reads, {} \
                 events at etcd; the join cost {} events",
                ms(leader_at),
                ms(all),
                d.reads(),
                d.events,
                dj.events
            )
        });
        match step {
            Ok(summary) => cfg.progress(&format!("scale processes #{i}: {summary}")),
            Err(e) => {
                f.failures
                    .push(format!("{n} processes, leader change #{i}: {e}"));
                break;
            }
        }
    }
    f
}

// ---------------------------------------------------------------------------
// In-process drivers (in a helper process of their own)
// ---------------------------------------------------------------------------

/// Set in the environment of an in-process scale helper: a directory holding `job.json`; the
/// helper writes `figures.json` there.
const SCALE_ENV: &str = "ELECTD_BENCH_SCALE";

#[derive(Debug, Serialize, Deserialize)]
struct Job {
    n: usize,
    iterations: usize,
    ttl_ms: u64,
    window_ms: u64,
    verbose: bool,
}

struct Candidate {
    /// Member id `c{id:04}`, in joining order.
    id: usize,
    handle: DriverHandle,
    view: watch::Receiver<ElectionView>,
    task: tokio::task::JoinHandle<()>,
}

fn spawn(backend: &EtcdBackend, timing: Timing, n: usize) -> Candidate {
    let (driver, handle, view) = backend.driver(DriverConfig {
        election: "scale".into(),
        member: MemberInfo::new(&format!("c{n:04}"), None),
        timing,
        observe_first: false,
        policy: electd::election::candidacy::Policy {
            priority: 1,
            takeover_delay: None,
        },
        start_guard: Duration::from_millis(250),
    });
    let task = tokio::spawn(async move {
        let _ = driver.run().await;
    });
    Candidate {
        id: n,
        handle,
        view,
        task,
    }
}

fn leading(v: &ElectionView) -> bool {
    matches!(v.position, Position::Leading { .. })
}

/// Whether `v` names a leader other than the one with token `old` (or leads itself).
fn names_new(v: &ElectionView, old: i64) -> bool {
    match &v.position {
        Position::Leading { token, .. } => *token != old,
        Position::Waiting { leader: Some(l) } => l.create_revision != old,
        _ => false,
    }
}

/// Exactly one leads and every other one waits behind that leader; its index and token.
fn settled(cands: &[Candidate]) -> Option<(usize, i64)> {
    let views: Vec<ElectionView> = cands.iter().map(|c| c.view.borrow().clone()).collect();
    let leaders: Vec<usize> = (0..views.len()).filter(|i| leading(&views[*i])).collect();
    let [l] = leaders[..] else { return None };
    let Position::Leading { token, .. } = views[l].position else {
        return None;
    };
    views
        .iter()
        .enumerate()
        .all(|(i, v)| {
            i == l
                || matches!(&v.position, Position::Waiting { leader: Some(x) } if x.create_revision == token)
        })
        .then_some((l, token))
}

async fn wait_settled(cands: &[Candidate], within: Duration) -> (usize, i64) {
    let end = Instant::now() + within;
    loop {
        if let Some(l) = settled(cands) {
            return l;
        }
        assert!(
            Instant::now() < end,
            "{} candidates did not settle on one leader within {within:?}",
            cands.len()
        );
        sleep(Duration::from_millis(20)).await;
    }
}

/// etcd's counters, read off the runtime's worker threads.
async fn counters(etcd: &Etcd) -> EtcdCounters {
    tokio::task::block_in_place(|| EtcdCounters::read(etcd))
}

async fn run_drivers(job: &Job, etcd: &Etcd) -> Figures {
    let n = job.n;
    let window = Duration::from_millis(job.window_ms);
    let progress = |m: String| {
        if job.verbose {
            eprintln!("[bench] {m}");
        }
    };
    let timing = Timing::new(Duration::from_millis(job.ttl_ms), Duration::ZERO);
    let mut f = Figures {
        n,
        ..Figures::default()
    };
    let rss0 = rss_mb(std::process::id());
    let backend = EtcdBackend::connect_endpoints(&[etcd.endpoint()])
        .await
        .expect("connect to etcd");
    let t = Instant::now();
    let mut cands: Vec<Candidate> = (0..n).map(|i| spawn(&backend, timing, i)).collect();
    let mut next = n;
    wait_settled(&cands, Duration::from_secs(300)).await;
    f.settle_s = Some(t.elapsed().as_secs_f64());
    progress(format!(
        "scale: {n} in-process candidates settled in {:.1} s",
        t.elapsed().as_secs_f64()
    ));
    sleep(Duration::from_secs(1)).await;
    if let (Some(a), Some(b)) = (rss0, rss_mb(std::process::id())) {
        f.memory = vec![(b - a) / n as f64];
        f.memory_total = Some(b - a);
    }
    (f.idle_cpu_ms, f.idle_reads) = tokio::task::block_in_place(|| idle_windows(etcd, window, 3));
    for i in 0..job.iterations {
        let it = async {
            let (l, old) = wait_settled(&cands, Duration::from_secs(60)).await;
            let wakeups_before: Vec<u64> = cands.iter().map(|c| c.view.borrow().wakeups).collect();
            let (tx, mut rx) = tokio::sync::mpsc::channel(cands.len());
            let mut waiters = tokio::task::JoinSet::new();
            for (j, c) in cands.iter().enumerate() {
                if j == l {
                    continue;
                }
                let (mut view, tx) = (c.view.clone(), tx.clone());
                waiters.spawn(async move {
                    let lead = match view.wait_for(|v| names_new(v, old)).await {
                        Ok(v) => leading(&v),
                        Err(_) => return,
                    };
                    let _ = tx.send((j, Instant::now(), lead)).await;
                });
            }
            drop(tx);
            let before = counters(etcd).await;
            let t0 = Instant::now();
            cands[l].handle.release(After::Stop).await;
            let released = t0.elapsed();
            let mut leader_at = None;
            let mut all = t0;
            for _ in 0..cands.len() - 1 {
                let (_, at, lead) = timeout(Duration::from_secs(60), rx.recv())
                    .await
                    .expect("every follower names the new leader within 60 s")
                    .expect("waiters alive");
                if lead {
                    leader_at = Some(at);
                }
                all = all.max(at);
            }
            let w = window.max(all.duration_since(t0) + Duration::from_millis(200));
            sleep_until(t0 + w).await;
            let d = counters(etcd).await.since(&before);
            let window_ms = t0.elapsed().as_secs_f64() * 1e3;
            let gone = cands.remove(l);
            let _ = gone.task.await;
            let (_, token) = wait_settled(&cands, Duration::from_secs(5)).await;
            assert_ne!(token, old, "the old leader still leads");
            let ms = |at: Instant| at.duration_since(t0).as_secs_f64() * 1e3;
            let leader_at = leader_at.expect("the new leader saw itself lead");
            let wakeups: u64 = cands
                .iter()
                .zip(wakeups_before.iter().enumerate().filter(|(j, _)| *j != l))
                .map(|(c, (_, before))| c.view.borrow().wakeups - before)
                .sum();
            f.to_leader.push(ms(leader_at));
            f.all_follow.push(ms(all));
            f.release.push(released.as_secs_f64() * 1e3);
            f.window_ms.push(window_ms);
            f.wakeups.push(wakeups as f64);
            f.change(&d);

            // A new candidate joins at the back; every other one sees it when its view reaches
            // the join's revision (nothing else writes to this etcd meanwhile).
            let before = counters(etcd).await;
            let joined_at = before.revision as i64 + 1;
            let t1 = Instant::now();
            cands.push(spawn(&backend, timing, next));
            next += 1;
            loop {
                if cands.iter().all(|c| c.view.borrow().revision >= joined_at) {
                    break;
                }
                assert!(
                    t1.elapsed() < Duration::from_secs(60),
                    "the join was not seen by all"
                );
                sleep(Duration::from_millis(1)).await;
            }
            let seen = t1.elapsed();
            sleep_until(t1 + window.max(seen + Duration::from_millis(200))).await;
            let dj = counters(etcd).await.since(&before);
            f.join_seen.push(seen.as_secs_f64() * 1e3);
            f.join(&dj);
            progress(format!(
                "scale {n} #{i}: new leader c{:04} after {:.1} ms, every follower after {:.1} \
                 ms; {} reads, {} events, {:.0} ms etcd CPU; the join: seen by all after \
                 {:.1} ms, {} events",
                cands
                    .iter()
                    .find(|c| leading(&c.view.borrow()))
                    .map_or(0, |c| c.id),
                ms(leader_at),
                ms(all),
                d.reads(),
                d.events,
                d.cpu * 1e3,
                seen.as_secs_f64() * 1e3,
                dj.events,
            ));
        };
        if let Err(e) = timeout(Duration::from_secs(180), it).await {
            f.failures
                .push(format!("{n} candidates, leader change #{i}: {e}"));
            break;
        }
    }
    for c in &cands {
        c.handle.release(After::Stop).await;
    }
    f
}

/// In a helper process started by [`in_process`]: run the drivers, write the figures and
/// return true. Anywhere else: return false at once.
pub fn run_helper_if_asked() -> bool {
    let Some(dir) = std::env::var_os(SCALE_ENV).map(PathBuf::from) else {
        return false;
    };
    let job: Job = serde_json::from_slice(&std::fs::read(dir.join("job.json")).expect("job"))
        .expect("job.json");
    let f = match attempt(|| {
        let etcd = Etcd::start();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let f = rt.block_on(run_drivers(&job, &etcd));
        rt.shutdown_timeout(Duration::from_secs(5));
        f
    }) {
        Ok(f) => f,
        Err(e) => Figures {
            n: job.n,
            failures: vec![format!("{} candidates: {e}", job.n)],
            ..Figures::default()
        },
    };
    let tmp = dir.join("figures.tmp");
    std::fs::write(&tmp, serde_json::to_vec(&f).expect("figures serialise")).expect("write");
    std::fs::rename(&tmp, dir.join("figures.json")).expect("publish figures");
    true
}

/// `n` drivers in a helper process of its own.
fn in_process(cfg: &BenchConfig, n: usize, dir: &Path) -> Figures {
    let dir = dir.join(format!("scale-{n}"));
    std::fs::create_dir_all(&dir).expect("scale dir");
    let job = Job {
        n,
        iterations: cfg.iterations,
        ttl_ms: cfg.scale_ttl.as_millis() as u64,
        window_ms: cfg.scale_window.as_millis() as u64,
        verbose: cfg.verbose,
    };
    std::fs::write(dir.join("job.json"), serde_json::to_vec(&job).expect("job")).expect("write");
    let mut child = start_helper(cfg, &[(SCALE_ENV, &dir)], std::process::Stdio::null());
    let limit = Duration::from_secs(300) + cfg.iterations as u32 * Duration::from_secs(60);
    if !wait_child_timeout(&mut child, limit) {
        let _ = child.kill();
        let _ = child.wait();
        panic!("the {n}-candidate helper did not finish within {limit:?}");
    }
    let text = std::fs::read(dir.join("figures.json"))
        .unwrap_or_else(|e| panic!("the {n}-candidate helper left no figures: {e}"));
    serde_json::from_slice(&text).expect("figures.json")
}

/// The columns: the processes, then each in-process count.
pub fn columns(p: &BenchConfig) -> Vec<String> {
    let mut columns = vec![format!("{} electd processes", p.scale_processes)];
    columns.extend(
        p.scale_in_process
            .iter()
            .map(|n| format!("{n} in-process candidates")),
    );
    columns
}

pub fn scale(cfg: &BenchConfig) -> Section {
    let mut s = Section::new("scale");
    s.expected = cfg.iterations;
    let dir = tempfile::Builder::new()
        .prefix("electd-bench-scale-")
        .tempdir()
        .expect("temp dir");
    let mut figs: Vec<Figures> = Vec::new();
    let procs = attempt(|| processes(cfg)).unwrap_or_else(|e| Figures {
        failures: vec![format!("{} processes: {e}", cfg.scale_processes)],
        ..Figures::default()
    });
    figs.push(procs);
    for n in &cfg.scale_in_process {
        cfg.progress(&format!("scale: {n} in-process candidates"));
        figs.push(
            attempt(|| in_process(cfg, *n, dir.path())).unwrap_or_else(|e| Figures {
                failures: vec![format!("{n} candidates: {e}")],
                ..Figures::default()
            }),
        );
    }
    for f in &mut figs {
        s.failures.append(&mut f.failures);
    }
    let row = |get: &dyn Fn(&Figures) -> Vec<f64>| -> Vec<Value> {
        figs.iter().map(|f| Value::Samples(get(f))).collect()
    };
    let inproc_only = |get: &dyn Fn(&Figures) -> Vec<f64>| -> Vec<Value> {
        figs.iter()
            .enumerate()
            .map(|(i, f)| {
                if i == 0 {
                    Value::Missing
                } else {
                    Value::Samples(get(f))
                }
            })
            .collect()
    };
    s.push("reads", row(&|f| f.reads.clone()));
    s.push("to_leader", row(&|f| f.to_leader.clone()));
    s.push("all_follow", row(&|f| f.all_follow.clone()));
    s.push("release", row(&|f| f.release.clone()));
    s.push("writes", row(&|f| f.writes.clone()));
    s.push("events", row(&|f| f.events.clone()));
    s.push("wakeups", inproc_only(&|f| f.wakeups.clone()));
    s.push("cpu", row(&|f| f.cpu_ms.clone()));
    s.push("window", row(&|f| f.window_ms.clone()));
    s.push("idle_cpu", row(&|f| f.idle_cpu_ms.clone()));
    s.push("idle_reads", row(&|f| f.idle_reads.clone()));
    s.push("join_seen", inproc_only(&|f| f.join_seen.clone()));
    s.push("join_range", row(&|f| f.join_range.clone()));
    s.push("join_txn", row(&|f| f.join_txn.clone()));
    s.push("join_grant", row(&|f| f.join_grant.clone()));
    s.push("join_events", row(&|f| f.join_events.clone()));
    s.push("join_cpu", row(&|f| f.join_cpu_ms.clone()));
    s.push("memory", row(&|f| f.memory.clone()));
    s.push(
        "memory_total",
        inproc_only(&|f| f.memory_total.into_iter().collect()),
    );
    s.push(
        "settle",
        figs.iter()
            .map(|f| f.settle_s.map_or(Value::Missing, Value::Number))
            .collect::<Vec<_>>(),
    );
    // Memory per in-process candidate = a + b × N (every driver keeps all N entries).
    let mem: Vec<(f64, f64)> = figs[1..]
        .iter()
        .filter_map(|f| Some((f.n as f64, *f.memory.first()?)))
        .collect();
    if let [(n1, m1), .., (n2, m2)] = mem[..]
        && n2 > n1
    {
        let per_entry = (m2 - m1) / (n2 - n1);
        s.fact("memory_from_n", n1);
        s.fact("memory_to_n", n2);
        s.fact("memory_fixed_kb", (m1 - per_entry * n1) * 1e3);
        s.fact("memory_per_entry_bytes", per_entry * 1e6);
    }
    s
}

pub fn page(p: &BenchConfig, d: &SectionData) -> Page {
    let window = p.scale_window.as_secs_f64();
    let mut notes = Vec::new();
    if let (Some(n1), Some(n2), Some(fixed), Some(per)) = (
        d.facts.get("memory_from_n"),
        d.facts.get("memory_to_n"),
        d.facts.get("memory_fixed_kb"),
        d.facts.get("memory_per_entry_bytes"),
    ) {
        notes.push(format!(
            "In process, memory per candidate grows with N: every driver keeps the whole queue, \
             so N drivers hold N² entries. From the {n1:.0} and {n2:.0} columns: about {fixed:.0} \
             KB per driver plus {per:.0} bytes per queue entry it keeps, so one electd process in \
             an election of N candidates holds about {per:.0} bytes × N of queue."
        ));
    }
    let no_reads = d
        .row("reads")
        .is_some_and(|r| !r.cells.is_empty() && r.cells.iter().all(|c| c.max() == Some(0.0)));
    let one_write = d.row("writes").is_some_and(|r| {
        r.cells
            .iter()
            .all(|c| matches!(c, Cell::Stats { max: Some(x), .. } if *x <= 1.0))
    });
    if no_reads && one_write {
        notes.push(
            "A leader change is one delete event (the leaving key's lease revoked) sent to \
             every watcher; each follower learns the next leader from the queue it keeps, and \
             the successor knows it leads, without a read. The joiner's own reads and put are \
             fixed (a process also reads the prefix once at startup to check its \
             configuration); its key is one event for every watcher."
                .to_string(),
        );
    }
    Page {
        title: "Scale".into(),
        about: format!(
            "One election, TTL {} s. Processes: electd replicas started by the test harness \
             (no command), logging at info. In process: `electd::election::Driver`s on one \
             multi-thread tokio runtime with one etcd client, in a helper process of their own \
             (the benchmark executable re-run) so its memory growth is theirs alone. {} times, \
             the leader leaves (SIGTERM; in process `release(After::Stop)`, which revokes its \
             lease) and then a new candidate joins at the back. Who names the new leader when: \
             each process's `/role` long poll (`?wait=&after=`), each driver's `ElectionView`. \
             etcd's figures are deltas of its own counters over a window from just before the \
             change: {window:.1} s, or until 200 ms after the last follower named the new \
             leader if that is later. Reads are completed `Range` and `Txn` calls \
             (`grpc_server_handled_total`); events are `etcd_debugging_mvcc_events_total` \
             (one per event per watcher); etcd's CPU is `utime + stime` of its process, in \
             10 ms ticks.",
            p.scale_ttl.as_secs(),
            p.iterations,
        ),
        columns: columns(p),
        rows: vec![
            spec(
                "reads",
                "etcd reads per leader change (`Range` + `Txn`)",
                "requests",
                false,
            ),
            spec(
                "to_leader",
                "leader leaves → the new leader knows it leads",
                "ms",
                false,
            ),
            spec(
                "all_follow",
                "leader leaves → every follower names the new leader",
                "ms",
                false,
            ),
            spec(
                "release",
                "the leaving: SIGTERM → process exit; in process, the `release` call",
                "ms",
                false,
            ),
            spec(
                "writes",
                "etcd writes per leader change (`Txn`, `Put`, `DeleteRange`, lease grant and \
                 revoke)",
                "requests",
                false,
            ),
            spec(
                "events",
                "watch events etcd sent per leader change",
                "events",
                false,
            ),
            spec(
                "wakeups",
                "candidates whose predecessor left (`ElectionView.wakeups`)",
                "candidates",
                false,
            ),
            spec(
                "cpu",
                "etcd CPU in the window after a leader change",
                "ms",
                false,
            ),
            spec("window", "… that window", "ms", false),
            spec(
                "idle_cpu",
                &format!(
                    "etcd CPU in {window:.1} s without any change (keepalives, watch progress)"
                ),
                "ms",
                false,
            ),
            spec(
                "idle_reads",
                &format!("etcd reads in {window:.1} s without any change"),
                "requests",
                false,
            ),
            spec(
                "join_seen",
                "join: a new candidate starts → every other one has seen its key",
                "ms",
                false,
            ),
            spec(
                "join_range",
                "join: etcd `Range` calls (the joiner's reads)",
                "requests",
                false,
            ),
            spec(
                "join_txn",
                "join: etcd `Txn` calls (the joiner's put-if-absent)",
                "requests",
                false,
            ),
            spec("join_grant", "join: etcd lease grants", "requests", false),
            spec(
                "join_events",
                "join: watch events etcd sent",
                "events",
                false,
            ),
            spec(
                "join_cpu",
                "join: etcd CPU in the window after it",
                "ms",
                false,
            ),
            spec(
                "memory",
                "memory per candidate: RSS of each electd process; in process, RSS growth ÷ N",
                "MB",
                false,
            ),
            spec(
                "memory_total",
                "in process: RSS growth for all N candidates",
                "MB",
                false,
            ),
            spec(
                "settle",
                "all N started → one leader that every other one names",
                "s",
                false,
            ),
        ],
        notes,
    }
}
