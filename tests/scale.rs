//! No herd on a leader change: every replica keeps the election's queue from one watch of the
//! whole prefix, so a leader change costs no read at etcd — the delete event says who leads
//! next. Counted at etcd (`grpc_server_handled_total` for Range and Txn), with 30 replica
//! processes, over a settle window after each change: reads that follow the change late count
//! too.

mod common;

use std::time::Duration;

use common::*;
use nix::sys::signal::Signal;

const REPLICAS: usize = 30;
const TTL: &str = "10s";
/// How long after a leader change (or a join) the reads are still counted: two keepalive
/// intervals at this TTL (TTL/6 = 1.67 s) and more, so a replica that learns of the change late
/// (at its next keepalive, or from a watch that lagged) and reads then is counted too.
const SETTLE: Duration = Duration::from_secs(4);

/// Range and Txn calls etcd has completed.
fn reads(etcd: &Etcd) -> f64 {
    calls(etcd, &["Range", "Txn"])
}

/// Calls of these gRPC methods etcd has completed.
fn calls(etcd: &Etcd, methods: &[&str]) -> f64 {
    let page = etcd_metrics(etcd.client_port());
    methods
        .iter()
        .map(|m| {
            metric_sum(
                &page,
                "grpc_server_handled_total",
                &[&format!("grpc_method=\"{m}\"")],
            )
        })
        .sum()
}

#[test]
fn a_leader_change_costs_at_most_two_reads_at_etcd_with_30_replicas() {
    let etcd = Etcd::start();
    let mut daemons: Vec<Daemon> = (0..REPLICAS)
        .map(|i| {
            DaemonSpec::new(&etcd.endpoint(), "herd", &format!("r{i:02}"))
                .ttl(TTL)
                .start()
        })
        .collect();
    let mut leader = wait_one_leader(&daemons, Duration::from_secs(60));
    for change in 1..=3 {
        let before = reads(&etcd);
        let old = daemons[leader].id().to_string();
        daemons[leader].signal(Signal::SIGTERM);
        daemons[leader].wait_exit(Duration::from_secs(10));
        daemons.remove(leader);
        leader = wait_one_leader(&daemons, Duration::from_secs(20));
        assert_ne!(daemons[leader].id(), old);
        std::thread::sleep(SETTLE);
        assert_eq!(
            wait_one_leader(&daemons, Duration::from_secs(1)),
            leader,
            "leadership moved again within the settle window"
        );
        let after = reads(&etcd);
        assert!(
            after - before <= 2.0,
            "leader change {change} ({old} → {}) cost {} reads at etcd with {} replicas",
            daemons[leader].id(),
            after - before,
            daemons.len() + 1
        );
        eprintln!(
            "leader change {change}: {old} → {}, {} reads at etcd",
            daemons[leader].id(),
            after - before
        );
    }
    // A replica joining reads the prefix once and the election's floor record once (besides
    // its start-up probe, which reads both: a role without the floor grant is refused there),
    // however the grant, the key's creation and its first keepalive interleave with those
    // reads: 4 in all, whatever the number of replicas (the 29 others read nothing).
    let leader_id = daemons[leader].id().to_string();
    for join in 1..=3 {
        let before = calls(&etcd, &["Range"]);
        let new = DaemonSpec::new(&etcd.endpoint(), "herd", &format!("late{join}"))
            .ttl(TTL)
            .start();
        let follows = || {
            new.role()
                .is_some_and(|r| r["role"] == "follower" && r["leader"]["id"] == leader_id.as_str())
        };
        wait_until(
            Duration::from_secs(10),
            "the new replica to follow",
            follows,
        );
        std::thread::sleep(SETTLE);
        assert!(
            follows(),
            "the new replica stopped following within the settle window"
        );
        let ranges = calls(&etcd, &["Range"]) - before;
        eprintln!("join {join}: {ranges} range reads at etcd");
        assert!(
            ranges <= 4.0,
            "join {join} cost {ranges} range reads at etcd"
        );
        daemons.push(new);
    }
}
