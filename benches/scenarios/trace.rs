//! Measuring from outside: etcd's own counters and CPU, the processes' /proc entries, and the
//! timestamps of electd's log lines (same wall clock as the ledger's `date +%s%N`).

use std::path::Path;
use std::time::SystemTime;

use crate::common::{Etcd, etcd_metrics, metric_sum};

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
