//! Scenario: routing clients to the leader (issue 14), electd's proxy beside HAProxy 2.6 in TCP
//! mode checking each replica's `/leader` (`deploy/haproxy/haproxy.cfg`), in one run.
//!
//! Three replicas publish their own name app (`NameApp`: one line in, the replica's name out)
//! with `--advertise` and run a proxy; one HAProxy process has a `server` line per replica.
//! Throughput: clients on kept connections to the leader's app directly, through the last
//! follower's proxy and through HAProxy, in rounds of alternating order (as the role API's).
//! Failover: the leader gets SIGTERM or SIGKILL while one client per path connects in a tight
//! loop; every answer is stamped with the wall clock and set beside the new leader's
//! `role changed … to=leader` line and the follower's `proxy route changed` line.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use electd::api::doc::MembersDoc;
use nix::sys::signal::Signal;

use super::api::{CpuOf, Exchange, Target, run_load};
use super::report::{Cell, Page, RowSpec, num, quantile, spec};
use super::trace::log_time_after;
use super::{BenchConfig, Section, SectionData, Value, attempt, electd_spec, ms_between, now_ns};
use crate::common::{
    Etcd, Haproxy, Replica, ask_once, free_port, haproxy_binary, http_get, wait_until,
};

/// How long a looping client waits for an answer: longer than electd's `--proxy-wait` (the
/// TTL), which holds a connection while no leader is known.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);
/// A looping client's pause after a failed request, as a client's retry would (a path that
/// refuses at once would otherwise spin on the two CPUs).
const RETRY_PAUSE: Duration = Duration::from_millis(1);

/// The throughput targets, in the order of [`Throughput`]'s arrays and the section's columns.
const PATHS: [&str; 3] = [
    "electd's proxy (a follower's)",
    "HAProxy 2.6",
    "direct to the app",
];

/// The replicas, each with its app and proxy, and HAProxy in front of them.
struct Cluster {
    rs: Vec<Replica>,
    haproxy: Haproxy,
    _dir: tempfile::TempDir,
    /// Dropped last: everything above talks to it.
    _etcd: Etcd,
}

impl Cluster {
    fn start(cfg: &BenchConfig) -> Cluster {
        // Say how to install it before anything starts.
        haproxy_binary();
        let etcd = Etcd::start();
        let dir = tempfile::Builder::new()
            .prefix("electd-bench-routing-")
            .tempdir()
            .expect("temp dir");
        // One at a time, so the queue's order is the start order.
        let rs: Vec<Replica> = (0..cfg.routing_replicas)
            .map(|i| {
                let id = format!("r{i}");
                let r = Replica::start(electd_spec(cfg, &etcd.endpoint(), "routing", &id));
                let role = if i == 0 { "leader" } else { "follower" };
                r.d.wait_role(role, Duration::from_secs(20));
                r
            })
            .collect();
        let servers: Vec<_> = rs
            .iter()
            .map(|r| {
                let port = r.d.http.rsplit(':').next().and_then(|p| p.parse().ok());
                let port = port.expect("invariant: the harness's --http is HOST:PORT");
                (r.d.id().to_string(), r.app.addr().to_string(), port)
            })
            .collect();
        let bind = format!("127.0.0.1:{}", free_port());
        let haproxy = Haproxy::from_example(dir.path(), &bind, &servers);
        Cluster {
            rs,
            haproxy,
            _dir: dir,
            _etcd: etcd,
        }
    }

    /// Restart any replica that is down, then wait until one leads, every replica names it
    /// and routes to it, and HAProxy reaches only its app. The replicas' indexes in queue order.
    fn settle(&mut self) -> Vec<usize> {
        for r in &mut self.rs {
            if !r.d.is_running() {
                r.d.restart();
            }
        }
        let rs = &self.rs;
        let mut queue = Vec::new();
        wait_until(
            Duration::from_secs(20),
            "one leader that every replica names and routes to",
            || {
                let Some(order) = queue_order(rs).filter(|o| !o.is_empty()) else {
                    return false;
                };
                let leader = rs[order[0]].d.id();
                queue = order;
                queue.len() == rs.len()
                    && rs[queue[0]].d.is_leader()
                    && rs.iter().all(|r| {
                        r.d.role()
                            .is_some_and(|doc| doc["leader"]["id"].as_str() == Some(leader))
                            && ask_once(&r.proxy, ANSWER_TIMEOUT).as_deref() == Ok(leader)
                    })
            },
        );
        let leader = self.rs[queue[0]].d.id();
        // HAProxy balances over every server it counts as up: a deposed leader is marked down
        // once its electd is gone, and stays down as a follower (its check never passes).
        wait_until(
            Duration::from_secs(10),
            "HAProxy to reach only the leader's app",
            || {
                (0..6)
                    .all(|_| ask_once(&self.haproxy.bind, ANSWER_TIMEOUT).as_deref() == Ok(leader))
            },
        );
        queue
    }
}

/// Replica indexes in the election's queue order, from one replica's `/members`.
fn queue_order(rs: &[Replica]) -> Option<Vec<usize>> {
    let (code, body) = http_get(
        &rs.iter().find(|r| r.d.role().is_some())?.d.http,
        "/members",
    )
    .ok()?;
    if code != 200 {
        return None;
    }
    let doc: MembersDoc = serde_json::from_str(&body).ok()?;
    doc.members
        .iter()
        .map(|m| rs.iter().position(|r| r.d.id() == m.id))
        .collect()
}

// ---------------------------------------------------------------------------
// Throughput and latency
// ---------------------------------------------------------------------------

/// Per path (see [`PATHS`]), one sample per round.
#[derive(Default)]
struct Throughput {
    rps: [Vec<f64>; 3],
    p50: [Vec<f64>; 3],
    p99: [Vec<f64>; 3],
    /// The proxy's CPU per request (µs): electd's process and HAProxy's.
    cpu_us: [Vec<f64>; 2],
    errors: u64,
}

fn throughput(cfg: &BenchConfig, c: &Cluster, leader: usize, via: usize) -> Throughput {
    let addr = |a: &str| Target::Tcp(a.parse().expect("a loopback address"));
    let targets = [
        (
            addr(&c.rs[via].proxy),
            Some(CpuOf::Process(c.rs[via].d.pid())),
        ),
        (addr(&c.haproxy.bind), Some(CpuOf::Process(c.haproxy.pid()))),
        (Target::Tcp(c.rs[leader].app.addr()), None),
    ];
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("load runtime");
    let mut m = Throughput::default();
    for round in 0..cfg.iterations {
        // Alternate the order from round to round, so no path always goes first.
        let mut order = [0, 1, 2];
        if round % 2 == 1 {
            order.reverse();
        }
        for k in order {
            let (target, cpu) = &targets[k];
            let l = rt.block_on(run_load(
                target.clone(),
                *cpu,
                Exchange::Line,
                cfg.routing_clients,
                cfg.routing_warmup,
                cfg.routing_duration,
            ));
            cfg.progress(&format!(
                "routing round {round} {}: {:.0} req/s, p99 {} ms",
                PATHS[k],
                l.rps(),
                quantile(&l.latencies, 0.99).map_or("?".into(), num),
            ));
            m.errors += l.errors;
            m.rps[k].push(l.rps());
            m.p50[k].extend(quantile(&l.latencies, 0.5));
            m.p99[k].extend(quantile(&l.latencies, 0.99));
            if let (Some(c), Some(slot)) = (l.cpu_us(), m.cpu_us.get_mut(k)) {
                slot.push(c);
            }
        }
    }
    m
}

// ---------------------------------------------------------------------------
// Failover
// ---------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    Term,
    Kill,
}

impl Stop {
    const BOTH: [Stop; 2] = [Stop::Term, Stop::Kill];

    fn label(self) -> &'static str {
        match self {
            Stop::Term => "SIGTERM",
            Stop::Kill => "SIGKILL",
        }
    }
}

/// One request of a looping client: when it was sent and answered (wall-clock ns), and by
/// whom (or why not).
struct Answer {
    sent: u128,
    at: u128,
    from: Result<String, String>,
}

/// A client that connects, asks once and closes, again and again, until stopped.
struct ClientLoop {
    stop: Arc<AtomicBool>,
    answers: Arc<Mutex<Vec<Answer>>>,
    thread: Option<JoinHandle<()>>,
}

impl ClientLoop {
    fn start(addr: &str) -> ClientLoop {
        let stop = Arc::new(AtomicBool::new(false));
        let answers = Arc::new(Mutex::new(Vec::new()));
        let (addr, s, a) = (addr.to_string(), stop.clone(), answers.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::SeqCst) {
                let sent = now_ns();
                let from = ask_once(&addr, ANSWER_TIMEOUT);
                let failed = from.is_err();
                let at = now_ns();
                a.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(Answer { sent, at, from });
                if failed {
                    std::thread::sleep(RETRY_PAUSE);
                }
            }
        });
        ClientLoop {
            stop,
            answers,
            thread: Some(thread),
        }
    }

    /// Whether an answer from `id` came to a request sent after `t`.
    fn reached(&self, id: &str, t: u128) -> bool {
        let answers = self.answers.lock().unwrap_or_else(|e| e.into_inner());
        answers
            .iter()
            .rev()
            .take_while(|a| a.sent > t)
            .any(|a| a.from.as_deref() == Ok(id))
    }

    /// Stop the loop (its request in flight ends within [`ANSWER_TIMEOUT`]) and wait for it.
    fn stop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }

    fn finish(mut self) -> Vec<Answer> {
        self.stop();
        std::mem::take(&mut *self.answers.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

impl Drop for ClientLoop {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `hits` of `of` requests.
#[derive(Debug, Clone, Copy, Default)]
struct Tally {
    hits: usize,
    of: usize,
}

impl Tally {
    fn of<'a>(answers: impl Iterator<Item = &'a Answer>, hit: impl Fn(&Answer) -> bool) -> Tally {
        answers.fold(Tally::default(), |t, a| Tally {
            hits: t.hits + usize::from(hit(a)),
            of: t.of + 1,
        })
    }

    fn add(&mut self, other: Tally) {
        self.hits += other.hits;
        self.of += other.of;
    }

    fn value(self) -> Value {
        Value::Count {
            hits: self.hits,
            of: self.of,
        }
    }
}

/// What one path's clients saw in one failover, in milliseconds after the new leader's
/// election unless said otherwise.
struct PathFigures {
    /// First answer from the new leader's app.
    reach: f64,
    /// Last answer from the deposed leader's app (negative: before the election).
    stale: f64,
    /// Requests sent after the election that the deposed leader's app answered.
    stale_after_election: Tally,
    /// The first answer from the new leader's app minus the last from the deposed leader's
    /// (negative: both answered for a while).
    switch: f64,
    /// Requests sent after the signal that got no answer.
    failed: Tally,
}

fn path_figures(answers: &[Answer], t: u128, elected: u128, old: &str, new: &str) -> PathFigures {
    let by = |id: &str, a: &Answer| a.from.as_deref() == Ok(id);
    let first_new = answers
        .iter()
        .filter(|a| a.sent > t && by(new, a))
        .map(|a| a.at)
        .min()
        .expect("invariant: the caller waited until this path reached the new leader");
    let last_old = answers
        .iter()
        .filter(|a| by(old, a))
        .map(|a| a.at)
        .max()
        .unwrap_or(t);
    let after = |from: u128| answers.iter().filter(move |a| a.sent > from);
    PathFigures {
        reach: ms_between(first_new, elected),
        stale: ms_between(last_old, elected),
        stale_after_election: Tally::of(after(elected), |a| by(old, a)),
        switch: ms_between(first_new, last_old),
        failed: Tally::of(after(t), |a| a.from.is_err()),
    }
}

/// One failover's figures: per path (electd's proxy, HAProxy), and the follower's view.
struct Failover {
    /// Signal → the new leader's election.
    elected: f64,
    paths: [PathFigures; 2],
    /// The new leader's election → the follower's proxy leaving the old route.
    seen: f64,
    /// Requests through the follower's proxy, sent after that proxy left the old route, that
    /// the deposed leader's app answered.
    after_seen: Tally,
}

fn failover(cfg: &BenchConfig, c: &mut Cluster, stop: Stop) -> Failover {
    let queue = c.settle();
    // The last in the queue stays a follower: the realistic path, follower proxy → leader.
    let (old, new, via) = (queue[0], queue[1], queue[queue.len() - 1]);
    let (old_id, new_id) = (c.rs[old].d.id().to_string(), c.rs[new].d.id().to_string());
    let old_app = c.rs[old].app.addr().to_string();
    let clients = [
        ClientLoop::start(&c.rs[via].proxy),
        ClientLoop::start(&c.haproxy.bind),
    ];
    std::thread::sleep(Duration::from_millis(200));
    let t = now_ns();
    match stop {
        Stop::Term => c.rs[old].d.signal(Signal::SIGTERM),
        // electd only: its app keeps answering, so a misrouting would show.
        Stop::Kill => c.rs[old].d.kill9(),
    }
    wait_until(
        cfg.ttl + Duration::from_secs(10),
        "the next replica in the queue to lead",
        || c.rs[new].d.is_leader(),
    );
    let log = &c.rs[new].d.log;
    let mut elected = None;
    wait_until(Duration::from_secs(2), "the new leader's log line", || {
        elected = log_time_after(log, &["role changed", "to=leader"], t);
        elected.is_some()
    });
    let elected = elected.expect("set when the wait succeeded");
    wait_until(
        Duration::from_secs(10),
        "both paths to reach the new leader's app",
        || clients.iter().all(|cl| cl.reached(&new_id, t)),
    );
    // HAProxy marks a deposed leader down after fall × inter: keep the clients going past it.
    let watched = Duration::from_nanos(now_ns().saturating_sub(elected) as u64);
    std::thread::sleep(cfg.routing_watch.saturating_sub(watched));
    let [electd, haproxy] = clients.map(ClientLoop::finish);
    if stop == Stop::Term {
        c.rs[old].d.wait_exit(Duration::from_secs(10));
    }
    let route_left = format!("from=To {{ addr: \"{old_app}\"");
    let seen = log_time_after(&c.rs[via].d.log, &["proxy route changed", &route_left], t)
        .expect("the follower's proxy logged leaving the old route");
    Failover {
        elected: ms_between(elected, t),
        seen: ms_between(seen, elected),
        after_seen: Tally::of(electd.iter().filter(|a| a.sent > seen), |a| {
            a.from.as_deref() == Ok(old_id.as_str())
        }),
        paths: [
            path_figures(&electd, t, elected, &old_id, &new_id),
            path_figures(&haproxy, t, elected, &old_id, &new_id),
        ],
    }
}

/// Samples per path of one kind of stop, and the follower's view; tallies are summed over
/// the iterations.
#[derive(Default)]
struct Failovers {
    elected: Vec<f64>,
    reach: [Vec<f64>; 2],
    stale: [Vec<f64>; 2],
    stale_n: [Tally; 2],
    switch: [Vec<f64>; 2],
    failed: [Tally; 2],
    seen: Vec<f64>,
    after_seen: Tally,
}

impl Failovers {
    fn push(&mut self, f: &Failover) {
        self.elected.push(f.elected);
        for (k, p) in f.paths.iter().enumerate() {
            self.reach[k].push(p.reach);
            self.stale[k].push(p.stale);
            self.stale_n[k].add(p.stale_after_election);
            self.switch[k].push(p.switch);
            self.failed[k].add(p.failed);
        }
        self.seen.push(f.seen);
        self.after_seen.add(f.after_seen);
    }
}

fn both(v: &[Vec<f64>; 2]) -> [Value; 2] {
    [Value::Samples(v[0].clone()), Value::Samples(v[1].clone())]
}

fn electd_only(v: Value) -> [Value; 2] {
    [v, Value::Missing]
}

// ---------------------------------------------------------------------------
// The section
// ---------------------------------------------------------------------------

/// Row ids per kind of stop (the report's goals and the smoke test read them), in the order
/// [`push_failovers`] pushes them.
pub const ROWS: [[&str; 8]; 2] = [
    [
        "term_elected",
        "term_reach",
        "term_stale",
        "term_stale_n",
        "term_seen",
        "term_after_seen",
        "term_switch",
        "term_failed",
    ],
    [
        "kill_elected",
        "kill_reach",
        "kill_stale",
        "kill_stale_n",
        "kill_seen",
        "kill_after_seen",
        "kill_switch",
        "kill_failed",
    ],
];

pub fn routing(cfg: &BenchConfig) -> Section {
    let mut s = Section::new("routing");
    s.expected = cfg.iterations;
    let mut c = match attempt(|| Cluster::start(cfg)) {
        Ok(c) => c,
        Err(e) => {
            s.failures.push(e);
            return s;
        }
    };
    let m = match attempt(|| {
        let queue = c.settle();
        throughput(cfg, &c, queue[0], queue[queue.len() - 1])
    }) {
        Ok(m) => m,
        Err(e) => {
            s.failures.push(format!("throughput: {e}"));
            Throughput::default()
        }
    };
    let mut runs: [Failovers; 2] = Default::default();
    for i in 0..cfg.iterations {
        for (k, stop) in Stop::BOTH.into_iter().enumerate() {
            match attempt(|| failover(cfg, &mut c, stop)) {
                Ok(f) => {
                    cfg.progress(&format!(
                        "routing {} #{i}: the new leader reached {} ms (electd's proxy) and {} \
                         ms (HAProxy) after its election; the deposed leader's last answer {} \
                         ms and {} ms after it",
                        stop.label(),
                        num(f.paths[0].reach),
                        num(f.paths[1].reach),
                        num(f.paths[0].stale),
                        num(f.paths[1].stale),
                    ));
                    runs[k].push(&f);
                }
                Err(e) => {
                    cfg.progress(&format!("routing {} #{i} failed: {e}", stop.label()));
                    s.failures.push(format!("{} #{i}: {e}", stop.label()));
                }
            }
        }
    }
    drop(c);
    push_throughput(&mut s, &m);
    for (k, f) in runs.iter().enumerate() {
        push_failovers(&mut s, f, k);
    }
    s.fact("request_errors", m.errors as f64);
    s
}

pub fn page(p: &BenchConfig, d: &SectionData) -> Page {
    let mut rows = vec![
        spec("rps", "throughput: requests per second", "req/s", false),
        spec("p50", "throughput: p50 latency", "ms", false),
        spec("p99", "throughput: p99 latency", "ms", false),
        spec(
            "ratio_haproxy",
            "throughput: electd's proxy ÷ HAProxy",
            "ratio",
            false,
        ),
        spec(
            "ratio_direct",
            "throughput: ÷ direct to the app",
            "ratio",
            false,
        ),
        spec(
            "p99_diff",
            "throughput: electd's proxy's p99 − HAProxy's",
            "ms",
            true,
        ),
        spec(
            "cpu",
            "throughput: the proxy's CPU per request (the whole process)",
            "µs",
            false,
        ),
    ];
    for (k, stop) in Stop::BOTH.into_iter().enumerate() {
        rows.extend(failover_rows(stop, &ROWS[k]));
    }
    // HAProxy's defaults: one thread per CPU.
    let mut notes = vec![format!(
        "electd's runtime is current-thread: its proxy forwards on one thread, where HAProxy \
         runs {} threads (one per CPU, its default). {} request errors in the throughput runs.",
        d.fact("haproxy_threads", |x| format!("{x:.0}")),
        d.fact("request_errors", |x| format!("{x:.0}")),
    )];
    notes.push(
        "One client per path asks one request at a time: the failover times are as fine as \
         the time between two of its answers."
            .to_string(),
    );
    let median = |row: &str, col: usize| d.cell(row, col).and_then(Cell::median);
    // HAProxy after SIGTERM: both apps answered for a while (a negative outage)?
    if median("term_switch", 1).is_some_and(|x| x < 0.0) {
        notes.push(
            "After SIGTERM the deposed leader's electd revokes its lease and exits at once; \
             HAProxy counts it up until two checks 1 s apart have failed, and once the new \
             leader's check has passed (rise 1) it balances new connections over both apps: \
             both answer for a while (a negative outage), and the deposed one is reached for up \
             to fall × inter after the election."
                .to_string(),
        );
    }
    if median("kill_switch", 1).is_some_and(|x| x > 0.0) {
        notes.push(
            "SIGKILL kills electd only: the deposed leader's app keeps answering, so a proxy \
             that still routes to it shows. Its lease lives until the TTL runs out, and until \
             then etcd (and so every electd) still names it the leader: electd's proxies keep \
             routing to its app, while HAProxy marks it down fall × inter after its electd \
             stopped answering the check, before the lease expired, and has no server up until \
             the new leader's check passes."
                .to_string(),
        );
    }
    Page {
        title: "Routing clients to the leader".into(),
        about: format!(
            "{} replicas, each with its own app (a TCP server answering every line with \
             its replica's name), run `electd --advertise APP --proxy ADDR`; one HAProxy 2.6 \
             process in TCP mode runs `deploy/haproxy/haproxy.cfg` with loopback addresses \
             swapped in (a check of each electd's `GET /leader` every 1 s, fall 2, rise 1, \
             `on-marked-down shutdown-sessions`). **Throughput**: {} clients, each on one kept \
             connection sending a 2-byte line and reading the 3-byte answer back to back, for \
             {:.1} s per path after a {} ms warm-up: to the leader's app directly, through the \
             proxy of the last replica in the queue (a follower: follower proxy → leader's \
             app), and through HAProxy; one round per iteration measures every path once, in \
             an order that alternates from round to round; every cell is over rounds (latency \
             percentiles are per round). The load generator and the apps share the machine \
             with the proxies. CPU per request is the proxy process's `utime + stime` over the \
             measured window divided by the requests. **Failover**: one client per path \
             connects, asks once and closes in a tight loop (1 ms pause after a failed \
             request), through that follower's proxy and through HAProxy, while the leader's \
             electd gets SIGTERM or SIGKILL (each iteration does both, the cluster settled in \
             between: the stopped electd restarts at the back of the queue). Answers are \
             stamped with the wall clock, the clock of electd's log lines: the election is the \
             new leader's `role changed … to=leader` line, the follower's view of the change \
             its `proxy route changed` line leaving the old leader's address. Clients keep \
             going until {:.1} s after the election, past HAProxy's fall × inter.",
            p.routing_replicas,
            p.routing_clients,
            p.routing_duration.as_secs_f64(),
            p.routing_warmup.as_millis(),
            p.routing_watch.as_secs_f64(),
        ),
        columns: PATHS.map(str::to_string).to_vec(),
        rows,
        notes,
    }
}

fn push_throughput(s: &mut Section, m: &Throughput) {
    let three = |v: &[Vec<f64>; 3]| v.clone().map(Value::Samples);
    let per_round = |a: &[f64], b: &[f64], f: fn(f64, f64) -> f64| -> Vec<f64> {
        a.iter().zip(b).map(|(x, y)| f(*x, *y)).collect()
    };
    s.push("rps", three(&m.rps));
    s.push("p50", three(&m.p50));
    s.push("p99", three(&m.p99));
    s.push(
        "ratio_haproxy",
        [
            Value::Samples(per_round(&m.rps[0], &m.rps[1], |a, b| a / b)),
            Value::Missing,
        ],
    );
    s.push(
        "ratio_direct",
        [0, 1].map(|k| Value::Samples(per_round(&m.rps[k], &m.rps[2], |a, b| a / b))),
    );
    s.push(
        "p99_diff",
        [
            Value::Samples(per_round(&m.p99[0], &m.p99[1], |a, b| a - b)),
            Value::Missing,
        ],
    );
    s.push(
        "cpu",
        [
            Value::Samples(m.cpu_us[0].clone()),
            Value::Samples(m.cpu_us[1].clone()),
        ],
    );
    s.fact(
        "haproxy_threads",
        std::thread::available_parallelism().map_or(1.0, |n| n.get() as f64),
    );
}

fn push_failovers(s: &mut Section, f: &Failovers, k: usize) {
    let [
        elected,
        reach,
        stale,
        stale_n,
        seen,
        after_seen,
        switch,
        failed,
    ] = ROWS[k];
    s.push(elected, electd_only(Value::Samples(f.elected.clone())));
    s.push(reach, both(&f.reach));
    s.push(stale, both(&f.stale));
    s.push(stale_n, f.stale_n.map(Tally::value));
    s.push(seen, electd_only(Value::Samples(f.seen.clone())));
    s.push(after_seen, electd_only(f.after_seen.value()));
    s.push(switch, both(&f.switch));
    s.push(failed, f.failed.map(Tally::value));
}

/// The labels of [`push_failovers`]'s rows for `stop`.
fn failover_rows(stop: Stop, ids: &[&str; 8]) -> Vec<RowSpec> {
    let l = stop.label();
    let [
        elected,
        reach,
        stale,
        stale_n,
        seen,
        after_seen,
        switch,
        failed,
    ] = *ids;
    vec![
        spec(
            elected,
            &format!("{l}: signal → the next replica's election (one event for both paths)"),
            "ms",
            false,
        ),
        spec(
            reach,
            &format!("{l}: election → first answer from the new leader's app"),
            "ms",
            true,
        ),
        spec(
            stale,
            &format!(
                "{l}: last answer from the deposed leader's app − the election (+: it was still \
                 reached after)"
            ),
            "ms",
            true,
        ),
        spec(
            stale_n,
            &format!(
                "{l}: requests sent after the election that the deposed leader's app answered \
                 (all iterations)"
            ),
            "requests",
            false,
        ),
        spec(
            seen,
            &format!("{l}: election → the follower's proxy leaves the old route"),
            "ms",
            true,
        ),
        spec(
            after_seen,
            &format!(
                "{l}: requests sent after the follower's proxy left the old route that the \
                 deposed leader's app answered (all iterations)"
            ),
            "requests",
            false,
        ),
        spec(
            switch,
            &format!(
                "{l}: first answer from the new leader's app − last from the deposed leader's \
                 (the clients' outage; −: both answered for a while)"
            ),
            "ms",
            true,
        ),
        spec(
            failed,
            &format!(
                "{l}: requests sent after the signal that got no answer (refused, cut or \
                 closed; all iterations)"
            ),
            "requests",
            false,
        ),
    ]
}
