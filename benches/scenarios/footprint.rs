//! Scenario: idle footprint. RSS (`VmRSS`) and CPU (`utime + stime`) of an idle leader and
//! follower, and the load each replica puts on etcd (deltas of etcd's gRPC counters) with one
//! and with three replicas, at the benchmark's TTL and at the default TTL (10 s); electd next
//! to `etcdctl lock` holding and waiting for a lock.

use std::time::{Duration, Instant};

use super::report::{Page, spec};
use super::trace::{EtcdCounters, clock_ticks_per_second, rss_mb, stat, watchdog_of};
use super::{BenchConfig, LockProcess, Section, SectionData, Value, attempt, electd_spec, queued};
use crate::common::{Daemon, Etcd, etcd_metrics, metric_sum, wait_until};

/// Per-interval samples over one window.
struct Window {
    /// Per watched process: RSS samples (MB) and CPU over the whole window (% of one core).
    rss: Vec<Vec<f64>>,
    cpu: Vec<f64>,
    /// etcd gRPC messages received / RPCs completed per second, per replica.
    msgs: Vec<f64>,
    rpcs: Vec<f64>,
}

fn counters(etcd: &Etcd) -> (f64, f64) {
    let page = etcd_metrics(etcd.client_port());
    (
        metric_sum(&page, "grpc_server_msg_received_total", &[]),
        metric_sum(&page, "grpc_server_handled_total", &[]),
    )
}

fn watch(etcd: &Etcd, pids: &[u32], replicas: usize, window: Duration) -> Window {
    let step = if window >= Duration::from_secs(4) {
        Duration::from_secs(1)
    } else {
        window / 3
    };
    let hz = clock_ticks_per_second();
    let mut w = Window {
        rss: vec![Vec::new(); pids.len()],
        cpu: Vec::new(),
        msgs: Vec::new(),
        rpcs: Vec::new(),
    };
    let ticks = |p: u32| stat(p).map(|(_, t)| t).unwrap_or(0);
    let first_ticks: Vec<u64> = pids.iter().map(|p| ticks(*p)).collect();
    let mut prev_counters = counters(etcd);
    let mut prev = Instant::now();
    let start = prev;
    let end = prev + window;
    while Instant::now() + step / 2 < end {
        std::thread::sleep(step);
        let now = Instant::now();
        let secs = now.duration_since(prev).as_secs_f64();
        for (i, p) in pids.iter().enumerate() {
            if let Some(r) = rss_mb(*p) {
                w.rss[i].push(r);
            }
        }
        let c = counters(etcd);
        w.msgs
            .push((c.0 - prev_counters.0) / secs / replicas as f64);
        w.rpcs
            .push((c.1 - prev_counters.1) / secs / replicas as f64);
        prev_counters = c;
        prev = now;
    }
    let secs = prev.duration_since(start).as_secs_f64();
    w.cpu = pids
        .iter()
        .zip(first_ticks)
        .map(|(p, t0)| ticks(*p).saturating_sub(t0) as f64 / hz / secs * 100.0)
        .collect();
    w
}

struct Measured {
    leader: Window,
    follower: Window,
    watchdog_rss: Vec<f64>,
}

fn electd_side(cfg: &BenchConfig, etcd: &Etcd) -> Measured {
    let spec =
        |id: &str| electd_spec(cfg, &etcd.endpoint(), "footprint", id).sh("exec sleep 100000");
    let a = spec("a").start();
    a.wait_role("leader", Duration::from_secs(20));
    let watchdog = watchdog_of(a.pid());
    std::thread::sleep(cfg.footprint_warmup);
    let mut pids = vec![a.pid()];
    pids.extend(watchdog);
    let leader = watch(etcd, &pids, 1, cfg.footprint_idle);
    let watchdog_rss = leader.rss.get(1).cloned().unwrap_or_default();
    let others: Vec<Daemon> = ["b", "c"].iter().map(|id| spec(id).start()).collect();
    for d in &others {
        d.wait_role("follower", Duration::from_secs(20));
    }
    std::thread::sleep(cfg.footprint_warmup);
    let follower = watch(etcd, &[others[0].pid()], 3, cfg.footprint_window);
    Measured {
        leader,
        follower,
        watchdog_rss,
    }
}

fn etcdctl_side(cfg: &BenchConfig, etcd: &Etcd) -> Measured {
    let dir = tempfile::Builder::new()
        .prefix("electd-bench-fp-")
        .tempdir()
        .expect("temp dir");
    let cmd = ["sleep".to_string(), "100000".to_string()];
    let start = |id: &str| {
        LockProcess::start(
            &etcd.endpoint(),
            "footprint-lock",
            id,
            cfg.ttl,
            &cmd,
            &dir.path().join(format!("{id}.log")),
        )
    };
    let a = start("a");
    wait_until(
        Duration::from_secs(20),
        "etcdctl lock to hold the lock",
        || queued(etcd, "footprint-lock") == 1,
    );
    std::thread::sleep(cfg.footprint_warmup);
    let leader = watch(etcd, &[a.pid()], 1, cfg.footprint_window);
    let others: Vec<LockProcess> = ["b", "c"].iter().map(|id| start(id)).collect();
    wait_until(Duration::from_secs(20), "two etcdctl lock waiters", || {
        queued(etcd, "footprint-lock") == 3
    });
    std::thread::sleep(cfg.footprint_warmup);
    let follower = watch(etcd, &[others[0].pid()], 3, cfg.footprint_window);
    Measured {
        leader,
        follower,
        watchdog_rss: Vec::new(),
    }
}

/// etcd's load from three idle replicas (a leader and two waiting) at the default TTL, per
/// replica and second, averaged over the whole window.
struct DefaultTtlLoad {
    msgs: f64,
    keepalives: f64,
    watch_in: f64,
    watch_out: f64,
    rpcs: f64,
    /// etcd's own CPU over the window, % of one core (not per replica).
    etcd_cpu: f64,
}

fn default_ttl_window(cfg: &BenchConfig, etcd: &Etcd) -> DefaultTtlLoad {
    std::thread::sleep(cfg.footprint_warmup);
    let a = EtcdCounters::read(etcd);
    let t = Instant::now();
    std::thread::sleep(cfg.footprint_default_ttl_window);
    let d = EtcdCounters::read(etcd).since(&a);
    let per = |x: f64| x / t.elapsed().as_secs_f64() / 3.0;
    DefaultTtlLoad {
        msgs: per(d.msgs_in),
        keepalives: per(d.keepalive_msgs),
        watch_in: per(d.watch_msgs_in),
        watch_out: per(d.watch_msgs_out),
        rpcs: per(d.handled),
        etcd_cpu: d.cpu / t.elapsed().as_secs_f64() * 100.0,
    }
}

fn electd_default_ttl(cfg: &BenchConfig, etcd: &Etcd) -> DefaultTtlLoad {
    let spec = |id: &str| {
        electd_spec(cfg, &etcd.endpoint(), "footprint-default-ttl", id)
            .ttl(&format!("{}s", cfg.footprint_default_ttl.as_secs()))
            .args(&["--stop-grace", "3s"])
            .sh("exec sleep 100000")
    };
    let a = spec("a").start();
    a.wait_role("leader", Duration::from_secs(20));
    let others: Vec<Daemon> = ["b", "c"].iter().map(|id| spec(id).start()).collect();
    for d in &others {
        d.wait_role("follower", Duration::from_secs(20));
    }
    default_ttl_window(cfg, etcd)
}

fn etcdctl_default_ttl(cfg: &BenchConfig, etcd: &Etcd) -> DefaultTtlLoad {
    let dir = tempfile::Builder::new()
        .prefix("electd-bench-fp-")
        .tempdir()
        .expect("temp dir");
    let cmd = ["sleep".to_string(), "100000".to_string()];
    let name = "footprint-lock-default-ttl";
    let _holders: Vec<LockProcess> = ["a", "b", "c"]
        .iter()
        .map(|id| {
            let l = LockProcess::start(
                &etcd.endpoint(),
                name,
                id,
                cfg.footprint_default_ttl,
                &cmd,
                &dir.path().join(format!("{id}.log")),
            );
            let n = 1 + ["a", "b", "c"].iter().position(|x| x == id).unwrap_or(0);
            wait_until(Duration::from_secs(20), "etcdctl lock to queue", || {
                queued(etcd, name) == n
            });
            l
        })
        .collect();
    default_ttl_window(cfg, etcd)
}

pub fn footprint(cfg: &BenchConfig) -> Section {
    let mut s = Section::new("footprint");
    let result = attempt(|| {
        let etcd = Etcd::start();
        let e = electd_side(cfg, &etcd);
        cfg.progress("footprint: electd done");
        std::thread::sleep(Duration::from_millis(500));
        let c = etcdctl_side(cfg, &etcd);
        cfg.progress("footprint: etcdctl lock done");
        drop(etcd);
        // At the default TTL, each tool on an etcd of its own (nothing else keeps it busy).
        let etcd = Etcd::start();
        let ed = electd_default_ttl(cfg, &etcd);
        drop(etcd);
        cfg.progress("footprint: electd at the default TTL done");
        let etcd = Etcd::start();
        let cd = etcdctl_default_ttl(cfg, &etcd);
        (e, c, [ed, cd])
    });
    let (e, c, dflt) = match result {
        Ok(x) => x,
        Err(err) => {
            s.failures.push(err);
            return s;
        }
    };
    let both = |f: &dyn Fn(&Measured) -> Vec<f64>| [Value::Samples(f(&e)), Value::Samples(f(&c))];
    s.push("rss", both(&|m| m.leader.rss[0].clone()));
    s.push(
        "rss_watchdog",
        [Value::Samples(e.watchdog_rss.clone()), Value::Missing],
    );
    s.push("rss_follower", both(&|m| m.follower.rss[0].clone()));
    let avg = |f: &dyn Fn(&Measured) -> f64| [&e, &c].map(|m| Value::Number(f(m)));
    s.push("cpu", avg(&|m| m.leader.cpu[0]));
    s.push(
        "cpu_watchdog",
        [
            e.leader
                .cpu
                .get(1)
                .map_or(Value::Missing, |x| Value::Number(*x)),
            Value::Missing,
        ],
    );
    s.push("cpu_follower", avg(&|m| m.follower.cpu[0]));
    s.push("msgs_1", both(&|m| m.leader.msgs.clone()));
    s.push("msgs_3", both(&|m| m.follower.msgs.clone()));
    s.push("rpcs_1", both(&|m| m.leader.rpcs.clone()));
    s.push("rpcs_3", both(&|m| m.follower.rpcs.clone()));
    let rate = |f: &dyn Fn(&DefaultTtlLoad) -> f64| dflt.each_ref().map(|d| Value::Number(f(d)));
    s.push("dflt_msgs", rate(&|d| d.msgs));
    s.push("dflt_keepalives", rate(&|d| d.keepalives));
    s.push("dflt_watch_in", rate(&|d| d.watch_in));
    s.push("dflt_watch_out", rate(&|d| d.watch_out));
    s.push("dflt_rpcs", rate(&|d| d.rpcs));
    s.push("dflt_etcd_cpu", rate(&|d| d.etcd_cpu));
    s
}

pub fn page(p: &BenchConfig, _: &SectionData) -> Page {
    let ttl = p.footprint_default_ttl.as_secs();
    Page {
        title: "Footprint".into(),
        about: format!(
            "One idle leader wrapping `sleep` (electd: {:.0} s; etcdctl lock: {:.0} s), then \
             two more replicas queued behind it ({:.0} s), each after {:.1} s of warm-up. \
             Sampled every second (a third of the window when shorter): RSS is `VmRSS` from \
             /proc/PID/status in MB (10^6 bytes); CPU is the `utime + stime` delta from \
             /proc/PID/stat over the whole window. etcd's load is the delta of its own gRPC \
             counters divided by the number of replicas: `grpc_server_msg_received_total` \
             counts every message, including each lease keepalive on its long-lived stream; \
             `grpc_server_handled_total` counts RPCs when they complete (unary calls). The \
             other cells are over the per-second samples.",
            p.footprint_idle.as_secs_f64(),
            p.footprint_window.as_secs_f64(),
            p.footprint_window.as_secs_f64(),
            p.footprint_warmup.as_secs_f64(),
        ),
        columns: vec!["electd".into(), "etcdctl lock".into()],
        rows: vec![
            spec(
                "rss",
                "RSS of the idle leader's wrapper process",
                "MB",
                false,
            ),
            spec(
                "rss_watchdog",
                "RSS of electd's freeze watchdog process",
                "MB",
                false,
            ),
            spec(
                "rss_follower",
                "RSS of an idle follower (waiter)",
                "MB",
                false,
            ),
            spec(
                "cpu",
                "CPU of the idle leader's wrapper process (average over the window)",
                "% of a core",
                false,
            ),
            spec(
                "cpu_watchdog",
                "CPU of electd's freeze watchdog process (average over the window)",
                "% of a core",
                false,
            ),
            spec(
                "cpu_follower",
                "CPU of an idle follower (waiter) (average over the window)",
                "% of a core",
                false,
            ),
            spec(
                "msgs_1",
                "etcd gRPC messages per second per replica, 1 replica",
                "msg/s",
                false,
            ),
            spec(
                "msgs_3",
                "etcd gRPC messages per second per replica, 3 replicas",
                "msg/s",
                false,
            ),
            spec(
                "rpcs_1",
                "etcd completed RPCs per second per replica, 1 replica",
                "RPC/s",
                false,
            ),
            spec(
                "rpcs_3",
                "etcd completed RPCs per second per replica, 3 replicas",
                "RPC/s",
                false,
            ),
            spec(
                "dflt_msgs",
                &format!(
                    "TTL {ttl} s, 3 replicas: etcd gRPC messages received per second per replica"
                ),
                "msg/s",
                false,
            ),
            spec(
                "dflt_keepalives",
                &format!("TTL {ttl} s: … of which lease keepalives"),
                "msg/s",
                false,
            ),
            spec(
                "dflt_watch_in",
                &format!(
                    "TTL {ttl} s: … of which on watch streams (progress requests, watch creation)"
                ),
                "msg/s",
                false,
            ),
            spec(
                "dflt_watch_out",
                &format!("TTL {ttl} s: watch responses etcd sent per second per replica"),
                "msg/s",
                false,
            ),
            spec(
                "dflt_rpcs",
                &format!("TTL {ttl} s: etcd completed RPCs per second per replica"),
                "RPC/s",
                false,
            ),
            spec(
                "dflt_etcd_cpu",
                &format!(
                    "TTL {ttl} s: etcd's own CPU with 3 idle replicas (whole etcd, not per \
                     replica)"
                ),
                "% of a core",
                false,
            ),
        ],
        notes: vec![format!(
            "At the default TTL ({ttl} s) each tool runs a leader and two waiters on an etcd of \
             its own; the rates are averaged over {:.0} s after {:.1} s of warm-up. electd keeps \
             its lease alive every TTL/6 (at most 2 s) and, when its watch has been quiet that \
             long, asks it for a progress report; `etcdctl lock` keeps its lease alive every \
             TTL/3 and its waiters watch only their predecessor's key, without progress \
             requests.",
            p.footprint_default_ttl_window.as_secs_f64(),
            p.footprint_warmup.as_secs_f64(),
        )],
    }
}
