//! Measuring from outside: etcd's own counters and CPU, the processes' /proc entries, and the
//! timestamps of electd's log lines (same wall clock as the ledger's `date +%s%N`).

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use super::now_ns;
use crate::common::{Etcd, etcd_metrics, metric_sum, pid_alive, wait_until};

/// A snapshot of what etcd has done so far: completed unary calls by method, watch traffic,
/// WAL fsyncs and its CPU time. Subtract two with [`EtcdCounters::since`].
#[derive(Debug, Clone, Copy, Default)]
pub struct EtcdCounters {
    pub range: f64,
    pub txn: f64,
    pub put: f64,
    pub delete_range: f64,
    pub lease_grant: f64,
    pub lease_revoke: f64,
    /// Messages etcd received on lease keepalive streams (one per keepalive).
    pub keepalive_msgs: f64,
    /// Messages etcd received on watch streams (watch creation, progress requests, cancels).
    pub watch_msgs_in: f64,
    /// Watch responses etcd sent (each carries one or more events, or a progress report).
    pub watch_msgs_out: f64,
    /// Events etcd sent to watchers: one per event per watcher.
    pub events: f64,
    /// Every gRPC message etcd received, and every unary call it completed.
    pub msgs_in: f64,
    pub handled: f64,
    pub fsyncs: f64,
    pub fsync_seconds: f64,
    /// etcd's CPU time (user + system), in seconds.
    pub cpu: f64,
    pub revision: f64,
}

const KV: &str = "grpc_service=\"etcdserverpb.KV\"";
const LEASE: &str = "grpc_service=\"etcdserverpb.Lease\"";
const WATCH: &str = "grpc_service=\"etcdserverpb.Watch\"";

impl EtcdCounters {
    pub fn read(etcd: &Etcd) -> EtcdCounters {
        let page = etcd_metrics(etcd.client_port());
        let handled = |service: &str, method: &str| {
            metric_sum(
                &page,
                "grpc_server_handled_total",
                &[service, &format!("grpc_method=\"{method}\"")],
            )
        };
        let msgs = |name: &str, service: &str, method: &str| {
            metric_sum(
                &page,
                name,
                &[service, &format!("grpc_method=\"{method}\"")],
            )
        };
        EtcdCounters {
            range: handled(KV, "Range"),
            txn: handled(KV, "Txn"),
            put: handled(KV, "Put"),
            delete_range: handled(KV, "DeleteRange"),
            lease_grant: handled(LEASE, "LeaseGrant"),
            lease_revoke: handled(LEASE, "LeaseRevoke"),
            keepalive_msgs: msgs("grpc_server_msg_received_total", LEASE, "LeaseKeepAlive"),
            watch_msgs_in: msgs("grpc_server_msg_received_total", WATCH, "Watch"),
            watch_msgs_out: msgs("grpc_server_msg_sent_total", WATCH, "Watch"),
            events: metric_sum(&page, "etcd_debugging_mvcc_events_total", &[]),
            msgs_in: metric_sum(&page, "grpc_server_msg_received_total", &[]),
            handled: metric_sum(&page, "grpc_server_handled_total", &[]),
            fsyncs: metric_sum(&page, "etcd_disk_wal_fsync_duration_seconds_count", &[]),
            fsync_seconds: metric_sum(&page, "etcd_disk_wal_fsync_duration_seconds_sum", &[]),
            cpu: etcd
                .pid()
                .and_then(cpu_seconds)
                .unwrap_or_else(|| metric_sum(&page, "process_cpu_seconds_total", &[])),
            revision: metric_sum(&page, "etcd_debugging_mvcc_current_revision", &[]),
        }
    }

    /// What etcd did between `earlier` and this snapshot.
    pub fn since(&self, earlier: &EtcdCounters) -> EtcdCounters {
        EtcdCounters {
            range: self.range - earlier.range,
            txn: self.txn - earlier.txn,
            put: self.put - earlier.put,
            delete_range: self.delete_range - earlier.delete_range,
            lease_grant: self.lease_grant - earlier.lease_grant,
            lease_revoke: self.lease_revoke - earlier.lease_revoke,
            keepalive_msgs: self.keepalive_msgs - earlier.keepalive_msgs,
            watch_msgs_in: self.watch_msgs_in - earlier.watch_msgs_in,
            watch_msgs_out: self.watch_msgs_out - earlier.watch_msgs_out,
            events: self.events - earlier.events,
            msgs_in: self.msgs_in - earlier.msgs_in,
            handled: self.handled - earlier.handled,
            fsyncs: self.fsyncs - earlier.fsyncs,
            fsync_seconds: self.fsync_seconds - earlier.fsync_seconds,
            cpu: self.cpu - earlier.cpu,
            revision: self.revision - earlier.revision,
        }
    }

    /// Reads of the election: `Range` and `Txn` calls (electd's reads were `Txn`s before the
    /// queue was kept from the watch; a candidate's put-if-absent is a `Txn` too).
    pub fn reads(&self) -> f64 {
        self.range + self.txn
    }

    /// Writes: everything that goes through raft.
    pub fn writes(&self) -> f64 {
        self.txn + self.put + self.delete_range + self.lease_grant + self.lease_revoke
    }

    /// Mean WAL fsync in milliseconds, if any happened.
    pub fn fsync_mean_ms(&self) -> Option<f64> {
        (self.fsyncs > 0.0).then(|| self.fsync_seconds / self.fsyncs * 1e3)
    }
}

/// VmRSS of `pid` in MB (10^6 bytes).
pub fn rss_mb(pid: u32) -> Option<f64> {
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

/// (parent pid, utime + stime in clock ticks) from `/proc/{path}/stat` (`path` is a pid, or
/// `PID/task/TID` for one thread).
pub fn stat_at(path: &str) -> Option<(u32, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{path}/stat")).ok()?;
    let (_, rest) = text.rsplit_once(')')?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After the command: state(3) ppid(4) … utime(14) stime(15).
    let ppid = f.get(1)?.parse().ok()?;
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    Some((ppid, utime + stime))
}

pub fn stat(pid: u32) -> Option<(u32, u64)> {
    stat_at(&pid.to_string())
}

pub fn clock_ticks_per_second() -> f64 {
    static HZ: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *HZ.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// CPU time (user + system) of `pid` so far, in seconds (clock-tick resolution, 10 ms).
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    stat(pid).map(|(_, t)| t as f64 / clock_ticks_per_second())
}

/// electd's freeze watchdog: its child running `<exe> __watchdog`.
pub fn watchdog_of(pid: u32) -> Option<u32> {
    std::fs::read_dir("/proc")
        .ok()?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .find(|p| {
            stat(*p).is_some_and(|(ppid, _)| ppid == pid)
                && std::fs::read(format!("/proc/{p}/cmdline"))
                    .is_ok_and(|c| String::from_utf8_lossy(&c).contains("__watchdog"))
        })
}

/// Wall-clock nanoseconds of every line of electd's text log at `path` that contains each of
/// `needles`. Lines start with an RFC 3339 timestamp in microseconds (tracing's default).
pub fn log_times(path: &Path, needles: &[&str]) -> Vec<u128> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter(|l| needles.iter().all(|n| l.contains(n)))
        .filter_map(|l| {
            let stamp = l.split_whitespace().next()?;
            let t = humantime::parse_rfc3339(stamp).ok()?;
            Some(t.duration_since(SystemTime::UNIX_EPOCH).ok()?.as_nanos())
        })
        .collect()
}

/// The first line at or after `from` (wall-clock nanoseconds) that contains each of
/// `needles`.
pub fn log_time_after(path: &Path, needles: &[&str], from: u128) -> Option<u128> {
    log_times(path, needles).into_iter().find(|t| *t >= from)
}

/// How long one walk over every process's `/proc/PID/stat` takes here, in milliseconds (the
/// shape of electd's supervisor tree walk: list /proc, read each stat, parse the parent), and
/// over how many processes.
pub fn proc_scan_ms() -> (f64, usize) {
    let t = std::time::Instant::now();
    let mut n = 0;
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for e in dir.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            if stat(pid).is_some() {
                n += 1;
            }
        }
    }
    (t.elapsed().as_secs_f64() * 1e3, n)
}

/// What an [`AliveWatch`] saw: the last check that found its processes alive began at
/// `last_alive`, and the first check after it that found none ended at `dead_since` (so they
/// died in between); wall-clock nanoseconds.
#[derive(Debug, Clone, Copy, Default)]
pub struct Seen {
    pub last_alive: Option<u128>,
    pub dead_since: Option<u128>,
    /// Checks made, and the time they took from the first to the last.
    pub checks: u64,
    pub span_ns: u128,
}

impl Seen {
    /// Whether the last check found them dead.
    pub fn dead(&self) -> bool {
        self.dead_since.is_some()
    }

    /// The mean time from one check to the next, in milliseconds: how precise the times are.
    pub fn period_ms(&self) -> Option<f64> {
        (self.checks > 1).then(|| self.span_ns as f64 / (self.checks - 1) as f64 / 1e6)
    }
}

/// A thread that checks `alive()` again and again (`pause` apart) until stopped: the moment a
/// process (or a process group) died, seen from outside without waiting for a tick.
pub struct AliveWatch {
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Seen>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl AliveWatch {
    pub fn start(pause: Duration, mut alive: impl FnMut() -> bool + Send + 'static) -> AliveWatch {
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(Seen::default()));
        let (s, out) = (stop.clone(), seen.clone());
        let thread = std::thread::spawn(move || {
            let first = now_ns();
            while !s.load(Ordering::SeqCst) {
                let before = now_ns();
                let yes = alive();
                let after = now_ns();
                {
                    let mut o = out.lock().unwrap_or_else(|e| e.into_inner());
                    if yes {
                        o.last_alive = Some(before);
                        o.dead_since = None;
                    } else if o.dead_since.is_none() {
                        o.dead_since = Some(after);
                    }
                    o.checks += 1;
                    o.span_ns = before - first;
                }
                std::thread::sleep(pause);
            }
        });
        AliveWatch {
            stop,
            seen,
            thread: Some(thread),
        }
    }

    /// Polls one pid: alive while it exists and is not a zombie.
    pub fn pid(pid: i32) -> AliveWatch {
        AliveWatch::start(Duration::from_micros(100), move || pid_alive(pid))
    }

    /// Polls a process group by walking /proc: alive while any member is (not a zombie).
    pub fn group(pgid: i32) -> AliveWatch {
        AliveWatch::start(Duration::from_millis(1), move || group_alive(pgid))
    }

    /// Waits until the watch has looked once (its thread may not have run yet on a busy
    /// machine): a fault injected before that could find the process gone at the first look.
    pub fn wait_first_look(&self, within: Duration) {
        wait_until(within, "the watch's first look", || self.seen().checks > 0);
    }

    pub fn seen(&self) -> Seen {
        *self.seen.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn stop(mut self) -> Seen {
        self.halt();
        self.seen()
    }

    fn halt(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for AliveWatch {
    fn drop(&mut self) {
        self.halt();
    }
}

/// `(state, process group)` of `pid` from `/proc/PID/stat`.
fn state_and_group(pid: &str) -> Option<(char, i32)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = text.rsplit_once(')')?;
    let mut f = rest.split_whitespace();
    // After the command: state(3) ppid(4) pgrp(5).
    let state = f.next()?.chars().next()?;
    Some((state, f.nth(1)?.parse().ok()?))
}

/// The process group of `pid`.
pub fn group_of(pid: i32) -> Option<i32> {
    state_and_group(&pid.to_string()).map(|(_, g)| g)
}

/// Whether any process of group `pgid` is alive (a stopped one counts; a zombie does not).
pub fn group_alive(pgid: i32) -> bool {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return false;
    };
    dir.flatten().any(|e| {
        e.file_name()
            .to_str()
            .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
            .and_then(state_and_group)
            .is_some_and(|(state, g)| g == pgid && state != 'Z')
    })
}
