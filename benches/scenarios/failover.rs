//! Scenarios 1–4: graceful handoff, crash failover, partition and flap, each with two
//! replicas (`a` leads, `b` waits) under electd and under `etcdctl lock`, iterations
//! interleaved between the tools. Every iteration uses a fresh election name and ledger.

use std::path::Path;
use std::time::Duration;

use electd::config::Timing;

use super::{
    BenchConfig, Ledger, Section, Tool, Value, Wrapper, attempt, ms_between, now_ns, queued,
};
use crate::common::{Etcd, ProxyMode, Run, TcpProxy, wait_until};

/// Two replicas of one election: `a` leads (its child runs), `b` is queued behind it.
struct Pair {
    a: Wrapper,
    /// Kept running until the pair is dropped.
    _b: Wrapper,
    ledger: Ledger,
    /// With [`Pair::start_proxied`]: each replica's link to etcd (dropped after the replicas).
    proxies: Option<[TcpProxy; 2]>,
}

impl Pair {
    fn start(
        cfg: &BenchConfig,
        etcd: &Etcd,
        tool: Tool,
        name: &str,
        endpoints: [&str; 2],
        dir: &Path,
    ) -> Pair {
        let ledger = Ledger::new(dir, name);
        let a = Wrapper::start(tool, cfg, endpoints[0], name, "a", &ledger.script);
        wait_until(
            Duration::from_secs(20),
            "replica a's child to start",
            || ledger.starts_of("a") == 1,
        );
        let b = Wrapper::start(tool, cfg, endpoints[1], name, "b", &ledger.script);
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
            _b: b,
            ledger,
            proxies: None,
        }
    }

    /// Like [`Pair::start`], each replica reaching etcd through its own [`TcpProxy`].
    fn start_proxied(cfg: &BenchConfig, etcd: &Etcd, tool: Tool, name: &str, dir: &Path) -> Pair {
        let ep = etcd.endpoint();
        let proxies = [TcpProxy::start_to(&ep), TcpProxy::start_to(&ep)];
        let endpoints = [proxies[0].endpoint(), proxies[1].endpoint()];
        let mut pair = Pair::start(cfg, etcd, tool, name, [&endpoints[0], &endpoints[1]], dir);
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

    fn wait_new_child(&self, timeout: Duration) {
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

/// Per-tool sample columns.
#[derive(Default)]
struct Cols {
    v: [Vec<f64>; 2],
}

impl Cols {
    fn push(&mut self, tool: Tool, x: f64) {
        self.v[tool.col()].push(x);
    }

    fn values(&self) -> [Value; 2] {
        [
            Value::Samples(self.v[0].clone()),
            Value::Samples(self.v[1].clone()),
        ]
    }
}

#[derive(Default)]
struct Counts {
    hits: [usize; 2],
    of: [usize; 2],
}

impl Counts {
    fn push(&mut self, tool: Tool, hit: bool) {
        self.of[tool.col()] += 1;
        self.hits[tool.col()] += usize::from(hit);
    }

    fn values(&self) -> [Value; 2] {
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
    section.expected = cfg.iterations;
    for i in 0..cfg.iterations {
        for tool in Tool::BOTH {
            let name = format!("{}-{}-{i}", section.key, tool.slug());
            match attempt(|| iteration(tool, i, &name)) {
                Ok(summary) => {
                    cfg.progress(&format!("{} {} #{i}: {summary}", section.key, tool.label()))
                }
                Err(e) => {
                    cfg.progress(&format!(
                        "{} {} #{i} failed: {e}",
                        section.key,
                        tool.label()
                    ));
                    section.failures.push(format!("{} #{i}: {e}", tool.label()));
                }
            }
        }
    }
}

fn temp_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("electd-bench-")
        .tempdir()
        .expect("temp dir")
}

/// 1. SIGTERM the leader's wrapper: from the old child's exit to the new child's start.
pub fn handoff(cfg: &BenchConfig) -> Section {
    let mut s = Section::new(
        "handoff",
        "Graceful handoff",
        "The leader's wrapper gets its tool's graceful stop: SIGTERM to electd; for `etcdctl \
         lock`, which ignores SIGTERM while its command runs, SIGTERM to its process group \
         (the child exits, etcdctl deletes its key). Handoff = the new leader's child `start` \
         record minus the old child's `stop` record (written in its SIGTERM trap, just before \
         it exits).",
        ["electd", "etcdctl lock"],
    );
    let etcd = Etcd::start();
    let ep = etcd.endpoint();
    let dir = temp_dir();
    let (mut handoff, mut total) = (Cols::default(), Cols::default());
    let mut graceful = Counts::default();
    iterate(cfg, &mut s, |tool, _, name| {
        let p = Pair::start(cfg, &etcd, tool, name, [&ep, &ep], dir.path());
        let t = now_ns();
        p.a.stop_gracefully();
        p.wait_new_child(cfg.ttl + Duration::from_secs(10));
        let (a, b) = p.runs();
        let b = b.expect("b started");
        let h = ms_between(b.start, a.last);
        handoff.push(tool, h);
        total.push(tool, ms_between(b.start, t));
        graceful.push(tool, a.stopped);
        format!("handoff {h:.1} ms")
    });
    s.push(
        "handoff",
        "old child's exit → new leader's child start",
        "ms",
        false,
        handoff.values(),
    );
    s.push(
        "signal_to_start",
        "stop signal sent → new leader's child start",
        "ms",
        false,
        total.values(),
    );
    s.push(
        "graceful",
        "old child stopped by its SIGTERM trap",
        "runs",
        false,
        graceful.values(),
    );
    s
}

/// 2. SIGKILL the leader's wrapper: time until the new child starts, and minus the TTL.
pub fn crash(cfg: &BenchConfig) -> Section {
    let obs = cfg.observe.as_secs_f64();
    let mut s = Section::new(
        "crash",
        "Crash failover",
        &format!(
            "SIGKILL of the leader's wrapper process only (electd; etcdctl, not its process \
             group). Failover = the new child's `start` record minus the moment of the kill; \
             the lease must expire first, so it is bounded below by what was left of the TTL. \
             The old child is then watched for {obs:.1} s more: its last `tick` after the kill \
             and after the new start (positive = both children ran at once)."
        ),
        ["electd", "etcdctl lock"],
    );
    let etcd = Etcd::start();
    let ep = etcd.endpoint();
    let dir = temp_dir();
    let ttl_ms = cfg.ttl_ms();
    let mut failover = Cols::default();
    let mut minus_ttl = Cols::default();
    let mut old_end = Cols::default();
    let mut overlap = Cols::default();
    let mut alive = Counts::default();
    iterate(cfg, &mut s, |tool, _, name| {
        let p = Pair::start(cfg, &etcd, tool, name, [&ep, &ep], dir.path());
        let t = now_ns();
        p.a.crash();
        p.wait_new_child(cfg.ttl + Duration::from_secs(15));
        std::thread::sleep(cfg.observe);
        let still = p.ledger.first_child_alive("a");
        let (a, b) = p.runs();
        let b = b.expect("b started");
        let f = ms_between(b.start, t);
        failover.push(tool, f);
        minus_ttl.push(tool, f - ttl_ms);
        old_end.push(tool, ms_between(a.last, t));
        overlap.push(tool, ms_between(a.last, b.start));
        alive.push(tool, still);
        format!("failover {f:.0} ms, old child alive at the end: {still}")
    });
    s.push(
        "failover",
        "SIGKILL of the leader's wrapper → new child starts",
        "ms",
        false,
        failover.values(),
    );
    s.push(
        "failover_minus_ttl",
        "the same, minus the TTL",
        "ms",
        true,
        minus_ttl.values(),
    );
    s.push(
        "old_end",
        "old child's last sign of life after the kill (−50 ms … 0: it died at once)",
        "ms",
        true,
        old_end.values(),
    );
    s.push(
        "overlap",
        "overlap: old child's last sign of life − new child's start",
        "ms",
        true,
        overlap.values(),
    );
    s.push(
        "old_alive",
        &format!("old child still running {obs:.1} s after the new one started"),
        "runs",
        false,
        alive.values(),
    );
    s.notes.push(format!(
        "electd's child is killed by its freeze watchdog (and PR_SET_PDEATHSIG) when electd \
         dies; `etcdctl lock` starts its command without either, so the old child survives \
         etcdctl's death and keeps running after the next holder started (PITFALLS items 1 \
         and 8). Its figures are then lower bounds set by the {obs:.1} s watch; the benchmark \
         kills the orphan afterwards."
    ));
    s
}

/// 3. Blackhole the leader's link to etcd: when the old child stopped, when the new started.
pub fn partition(cfg: &BenchConfig) -> Section {
    let obs = cfg.observe.as_secs_f64();
    let timing = Timing::new(cfg.ttl, cfg.stop_grace);
    let mut s = Section::new(
        "partition",
        "Partition",
        &format!(
            "Each replica reaches etcd through its own TCP proxy; the leader's proxy starts to \
             blackhole (connections stay open, nothing is forwarded). Times are from the cut. \
             Overlap = the old child's last sign of life (its `stop` record, else its last \
             `tick`) minus the new child's `start`: positive means two children ran at once. \
             The old child is watched for {obs:.1} s after the new one started."
        ),
        ["electd", "etcdctl lock"],
    );
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
    s.push(
        "old_stop",
        "old child's last sign of life after the cut",
        "ms",
        false,
        old_stop.values(),
    );
    s.push(
        "new_start",
        "new child's start after the cut",
        "ms",
        false,
        new_start.values(),
    );
    s.push(
        "overlap",
        "overlap (positive = two children ran at once)",
        "ms",
        true,
        overlap.values(),
    );
    s.push(
        "overlapped",
        "runs with a positive overlap",
        "runs",
        false,
        positive.values(),
    );
    s.push(
        "old_alive",
        &format!("old child still running {obs:.1} s after the new one started"),
        "runs",
        false,
        alive.values(),
    );
    s.notes.push(format!(
        "electd stops its child once its leader budget is spent: TTL − safety margin − stop \
         grace = {} − {} − {} = {} ms after the last successful keepalive was sent \
         (keepalives every {} ms), so the child is gone before the lease can expire at etcd.",
        timing.ttl.as_millis(),
        timing.safety_margin.as_millis(),
        timing.stop_grace.as_millis(),
        timing.leader_budget().as_millis(),
        timing.keepalive_interval.as_millis(),
    ));
    s.notes.push(format!(
        "`etcdctl lock` does not watch its session while the command runs: the cut-off \
         holder's child keeps running after the lease expired and the next holder started, \
         so its overlap is a lower bound set by the {obs:.1} s watch."
    ));
    s
}

/// 4. Cut the leader's link for half the TTL, then restore: restart? leadership moved?
pub fn flap(cfg: &BenchConfig) -> Section {
    let cut = cfg.ttl / 2;
    let timing = Timing::new(cfg.ttl, cfg.stop_grace);
    let watch = cfg.ttl + cfg.flap_settle;
    let mut s = Section::new(
        "flap",
        "Flap",
        &format!(
            "The leader's proxy blackholes for half the TTL ({} ms), then passes again; the \
             replicas are watched for {:.1} s more. A good outcome: the child keeps running \
             and leadership stays put.",
            cut.as_millis(),
            watch.as_secs_f64()
        ),
        ["electd", "etcdctl lock"],
    );
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
    s.push(
        "stopped",
        "leader's child stopped",
        "runs",
        false,
        stopped.values(),
    );
    s.push(
        "restarted",
        "child restarted on the same replica",
        "runs",
        false,
        restarted.values(),
    );
    s.push(
        "moved",
        "leadership moved to the other replica",
        "runs",
        false,
        moved.values(),
    );
    s.push(
        "stop_after",
        "when stopped: old child's last sign of life after the cut",
        "ms",
        false,
        stop_after.values(),
    );
    s.expected = 0;
    s.notes.push(format!(
        "With TTL {} ms and stop grace {} ms electd's leader keeps its role for {} ms after \
         the last successful keepalive was *sent* (keepalives every {} ms), so a {} ms cut \
         outlasts that budget whenever the last keepalive before the cut went out more than \
         {} ms before it; past the budget electd stops the child and rejoins the queue, as its \
         safety bound requires. A longer \
         TTL or a shorter stop grace widens the tolerated flap (the budget table in \
         docs/operations.md).",
        timing.ttl.as_millis(),
        timing.stop_grace.as_millis(),
        timing.leader_budget().as_millis(),
        timing.keepalive_interval.as_millis(),
        cut.as_millis(),
        timing.leader_budget().saturating_sub(cut).as_millis(),
    ));
    s
}
