//! Scenario 6: idle footprint. RSS (`VmRSS`) and CPU (`utime + stime`) of an idle leader and
//! follower, and the load each replica puts on etcd (deltas of etcd's gRPC counters) with one
//! and with three replicas; electd next to `etcdctl lock` holding and waiting for a lock.

use std::time::{Duration, Instant};

use super::report::num;
use super::{BenchConfig, LockProcess, Section, Value, attempt, electd_spec, queued};
use crate::common::{Daemon, Etcd, etcd_metrics, metric_sum, wait_until};

/// VmRSS in MB (10^6 bytes).
fn rss_mb(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: f64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(kb * 1024.0 / 1e6)
}

/// (parent pid, utime + stime in clock ticks) from /proc/PID/stat.
fn stat(pid: u32) -> Option<(u32, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = text.rsplit_once(')')?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After the command: state(3) ppid(4) … utime(14) stime(15).
    let ppid = f.get(1)?.parse().ok()?;
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    Some((ppid, utime + stime))
}

fn clock_ticks_per_second() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

/// electd's freeze watchdog: its child running `<exe> __watchdog`.
fn watchdog_of(pid: u32) -> Option<u32> {
    std::fs::read_dir("/proc")
        .ok()?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .find(|p| {
            stat(*p).is_some_and(|(ppid, _)| ppid == pid)
                && std::fs::read(format!("/proc/{p}/cmdline"))
                    .is_ok_and(|c| String::from_utf8_lossy(&c).contains("__watchdog"))
        })
}

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

pub fn footprint(cfg: &BenchConfig) -> Section {
    let mut s = Section::new(
        "footprint",
        "Footprint",
        &format!(
            "One idle leader wrapping `sleep` (electd: {:.0} s; etcdctl lock: {:.0} s), then \
             two more replicas queued behind it ({:.0} s), each after {:.1} s of warm-up. \
             Sampled every second (a third of the window when shorter): RSS is `VmRSS` from \
             /proc/PID/status in MB (10^6 bytes); CPU is the `utime + stime` delta from \
             /proc/PID/stat over the whole window. etcd's load is the delta of its own gRPC counters divided by the \
             number of replicas: `grpc_server_msg_received_total` counts every message, \
             including each lease keepalive on its long-lived stream; \
             `grpc_server_handled_total` counts RPCs when they complete (unary calls). The other \
             cells are over the per-second samples.",
            cfg.footprint_idle.as_secs_f64(),
            cfg.footprint_window.as_secs_f64(),
            cfg.footprint_window.as_secs_f64(),
            cfg.footprint_warmup.as_secs_f64(),
        ),
        ["electd", "etcdctl lock"],
    );
    let result = attempt(|| {
        let etcd = Etcd::start();
        let e = electd_side(cfg, &etcd);
        cfg.progress("footprint: electd done");
        std::thread::sleep(Duration::from_millis(500));
        let c = etcdctl_side(cfg, &etcd);
        (e, c)
    });
    let (e, c) = match result {
        Ok(x) => x,
        Err(err) => {
            s.failures.push(err);
            return s;
        }
    };
    let both = |f: &dyn Fn(&Measured) -> Vec<f64>| [Value::Samples(f(&e)), Value::Samples(f(&c))];
    s.push(
        "rss",
        "RSS of the idle leader's wrapper process",
        "MB",
        false,
        both(&|m| m.leader.rss[0].clone()),
    );
    s.push(
        "rss_watchdog",
        "RSS of electd's freeze watchdog process",
        "MB",
        false,
        [Value::Samples(e.watchdog_rss.clone()), Value::Missing],
    );
    s.push(
        "rss_follower",
        "RSS of an idle follower (waiter)",
        "MB",
        false,
        both(&|m| m.follower.rss[0].clone()),
    );
    let avg = |f: &dyn Fn(&Measured) -> f64| [&e, &c].map(|m| Value::Text(num(f(m))));
    s.push(
        "cpu",
        "CPU of the idle leader's wrapper process (average over the window)",
        "% of a core",
        false,
        avg(&|m| m.leader.cpu[0]),
    );
    s.push(
        "cpu_watchdog",
        "CPU of electd's freeze watchdog process (average over the window)",
        "% of a core",
        false,
        [
            e.leader
                .cpu
                .get(1)
                .map_or(Value::Missing, |x| Value::Text(num(*x))),
            Value::Missing,
        ],
    );
    s.push(
        "cpu_follower",
        "CPU of an idle follower (waiter) (average over the window)",
        "% of a core",
        false,
        avg(&|m| m.follower.cpu[0]),
    );
    s.push(
        "msgs_1",
        "etcd gRPC messages per second per replica, 1 replica",
        "msg/s",
        false,
        both(&|m| m.leader.msgs.clone()),
    );
    s.push(
        "msgs_3",
        "etcd gRPC messages per second per replica, 3 replicas",
        "msg/s",
        false,
        both(&|m| m.follower.msgs.clone()),
    );
    s.push(
        "rpcs_1",
        "etcd completed RPCs per second per replica, 1 replica",
        "RPC/s",
        false,
        both(&|m| m.leader.rpcs.clone()),
    );
    s.push(
        "rpcs_3",
        "etcd completed RPCs per second per replica, 3 replicas",
        "RPC/s",
        false,
        both(&|m| m.follower.rpcs.clone()),
    );
    s
}
