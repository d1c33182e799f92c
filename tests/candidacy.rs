//! Who may lead, against a real etcd with real children writing a ledger: a health check gates
//! candidacy, priorities decide with a takeover delay, priority 0 only observes, and
//! `electd resign --to ID` hands leadership to a named replica.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

/// A replica wrapping a ticking child, with `--health-cmd "test -f FILE"`: healthy while the
/// file exists.
fn checked(etcd: &Etcd, election: &str, id: &str, ledger: &Path, health: &Path) -> DaemonSpec {
    DaemonSpec::new(&etcd.endpoint(), election, id)
        .args(&[
            "--health-cmd",
            &format!("test -f {}", health.display()),
            "--health-interval",
            "200ms",
            "--health-fall",
            "3",
            "--health-rise",
            "2",
        ])
        .sh(&ticking_script(ledger))
}

fn touch(p: &Path) {
    std::fs::write(p, b"ok").unwrap();
}

fn leader_id(d: &Daemon) -> Option<String> {
    d.role()
        .and_then(|r| r["leader"]["id"].as_str().map(str::to_string))
}

#[test]
fn a_failing_health_check_moves_leadership_away_and_the_replica_returns_as_a_follower() {
    let etcd = Etcd::start();
    let dir = tempfile::tempdir().unwrap();
    let l = dir.path().join("ledger");
    let health: Vec<_> = (0..2).map(|i| dir.path().join(format!("ok{i}"))).collect();
    health.iter().for_each(|h| touch(h));
    // TTL 10s: leadership that moved because the lease ran out (the leader just stopped
    // renewing) would take at least TTL − keepalive interval = 8.3 s, far above the bound below.
    let daemons: Vec<Daemon> = (0..2)
        .map(|i| {
            checked(&etcd, "hc", &format!("r{i}"), &l, &health[i])
                .ttl("10s")
                .start()
        })
        .collect();
    let old = wait_one_leader(&daemons, Duration::from_secs(15));
    let other = 1 - old;
    wait_until(Duration::from_secs(5), "the leader's child", || {
        !starts(&ledger(&l)).is_empty()
    });
    // The leader's app fails its check: three failures 200 ms apart (the first within one
    // interval of the removal), then the leader stops its command (it exits on SIGTERM at
    // once) and gives up its key, and the other replica leads.
    let failed_at = Instant::now();
    std::fs::remove_file(&health[old]).unwrap();
    wait_until(Duration::from_secs(6), "leadership to move", || {
        daemons[other].is_leader()
    });
    let moved = failed_at.elapsed();
    eprintln!("leadership moved {moved:?} after the check began failing");
    // (fall + 1) × interval, and 1 s for etcd round trips and a busy machine: a handover, not
    // a lease running out.
    assert!(
        moved < Duration::from_millis((3 + 1) * 200 + 1000),
        "leadership moved {moved:?} after the check began failing: a handover takes about 0.8 s"
    );
    let doc = daemons[old].role().unwrap();
    assert_eq!(doc["eligible"], false, "{doc}");
    assert!(
        doc["reason"]
            .as_str()
            .is_some_and(|r| r.starts_with("health check failing: exit 1")),
        "{doc}"
    );
    assert!(!daemons[old].is_leader());
    // It stays out while failing: no key in the queue, whatever happens to the leader.
    std::thread::sleep(Duration::from_secs(1));
    let members = daemons[other].role_socket().unwrap();
    assert_eq!(members["leader"]["id"], daemons[other].id());
    let keys = etcd.etcdctl_ok(&["get", "hc/", "--prefix", "--keys-only"]);
    assert_eq!(keys.lines().filter(|k| !k.is_empty()).count(), 1, "{keys}");
    // Healthy again: it comes back as a follower of the new leader.
    touch(&health[old]);
    wait_until(
        Duration::from_secs(5),
        "the replica to be eligible again",
        || {
            daemons[old]
                .role()
                .is_some_and(|r| r["eligible"] == true && r["role"] == "follower")
        },
    );
    assert_eq!(
        leader_id(&daemons[old]).as_deref(),
        Some(daemons[other].id())
    );
    assert!(daemons[other].is_leader());
    let keys = etcd.etcdctl_ok(&["get", "hc/", "--prefix", "--keys-only"]);
    assert_eq!(keys.lines().filter(|k| !k.is_empty()).count(), 2, "{keys}");
    assert_no_overlap(&ledger(&l));
    let m = http_get(&daemons[old].http, "/metrics").unwrap().1;
    assert!(
        m.contains("electd_health_transitions_total{to=\"unhealthy\"} 1"),
        "{m}"
    );
}

#[test]
fn a_replica_that_starts_unhealthy_never_leads_even_alone_until_its_check_passes() {
    let etcd = Etcd::start();
    let dir = tempfile::tempdir().unwrap();
    let l = dir.path().join("ledger");
    let health = dir.path().join("ok");
    let d = checked(&etcd, "alone", "r0", &l, &health).start();
    std::thread::sleep(Duration::from_secs(2));
    let doc = d.role().expect("answers");
    assert_eq!(doc["role"], "candidate", "{doc}");
    assert_eq!(doc["eligible"], false, "{doc}");
    assert!(
        doc["reason"]
            .as_str()
            .is_some_and(|r| r.contains("health check")),
        "{doc}"
    );
    assert!(!d.is_leader());
    assert!(ledger(&l).is_empty(), "the command must not run");
    let keys = etcd.etcdctl_ok(&["get", "alone/", "--prefix", "--keys-only"]);
    assert!(keys.trim().is_empty(), "no candidate key: {keys}");
    touch(&health);
    wait_until(Duration::from_secs(5), "the replica to lead", || {
        d.is_leader()
    });
    wait_until(Duration::from_secs(5), "its command", || {
        !starts(&ledger(&l)).is_empty()
    });
}

/// A replica with a ticking child and the given priority and takeover delay.
fn prioritised(etcd: &Etcd, id: &str, priority: &str, delay: &str, l: &Path) -> DaemonSpec {
    DaemonSpec::new(&etcd.endpoint(), "prio", id)
        .args(&["--priority", priority, "--takeover-delay", delay])
        .sh(&ticking_script(l))
}

#[test]
fn a_higher_priority_replica_takes_over_after_the_delay_and_not_before() {
    let etcd = Etcd::start();
    let dir = tempfile::tempdir().unwrap();
    let l = dir.path().join("ledger");
    let low = prioritised(&etcd, "low", "1", "2s", &l).start();
    wait_until(Duration::from_secs(10), "low to lead", || low.is_leader());
    let high = prioritised(&etcd, "high", "10", "2s", &l).start();
    let joined = Instant::now();
    wait_until(Duration::from_secs(5), "high to follow low", || {
        leader_id(&high).as_deref() == Some("low")
    });
    // Not before the delay.
    while joined.elapsed() < Duration::from_millis(1500) {
        assert!(low.is_leader(), "pre-empted after {:?}", joined.elapsed());
        std::thread::sleep(Duration::from_millis(50));
    }
    wait_until(Duration::from_secs(6), "high to lead", || high.is_leader());
    let took = joined.elapsed();
    assert!(took >= Duration::from_secs(2), "took over after {took:?}");
    eprintln!("high took over {took:?} after joining");
    wait_until(Duration::from_secs(5), "high's command", || {
        starts(&ledger(&l)).iter().any(|r| r.id == "high")
    });
    // A graceful handoff: low's command stopped before high's started.
    assert_no_overlap(&ledger(&l));
    // Low does not win it back.
    std::thread::sleep(Duration::from_secs(3));
    assert!(high.is_leader());
    assert_eq!(leader_id(&low).as_deref(), Some("high"));
}

#[test]
fn with_takeover_delay_off_a_higher_priority_replica_does_not_pre_empt() {
    let etcd = Etcd::start();
    let dir = tempfile::tempdir().unwrap();
    let l = dir.path().join("ledger");
    let mut low = prioritised(&etcd, "low", "1", "off", &l).start();
    wait_until(Duration::from_secs(10), "low to lead", || low.is_leader());
    let high = prioritised(&etcd, "high", "10", "off", &l).start();
    std::thread::sleep(Duration::from_secs(4));
    assert!(low.is_leader());
    assert_eq!(leader_id(&high).as_deref(), Some("low"));
    // Priority still decides when leadership is free.
    let mid = prioritised(&etcd, "mid", "5", "off", &l).start();
    wait_until(Duration::from_secs(5), "mid to follow", || {
        leader_id(&mid).as_deref() == Some("low")
    });
    low.signal(nix::sys::signal::Signal::SIGTERM);
    low.wait_exit(Duration::from_secs(10));
    wait_until(Duration::from_secs(5), "high to lead", || high.is_leader());
    assert!(!mid.is_leader());
    assert_no_overlap(&ledger(&l));
}

#[test]
fn a_priority_0_replica_never_leads_even_alone_and_shows_the_leader() {
    let etcd = Etcd::start();
    let observer = DaemonSpec::new(&etcd.endpoint(), "obs", "watcher")
        .args(&["--priority", "0"])
        .start();
    std::thread::sleep(Duration::from_secs(2));
    let doc = observer.role().unwrap();
    assert_eq!(doc["eligible"], false, "{doc}");
    assert_eq!(
        doc["reason"], "priority 0: this replica only observes",
        "{doc}"
    );
    assert!(!observer.is_leader());
    let keys = etcd.etcdctl_ok(&["get", "obs/", "--prefix", "--keys-only"]);
    assert!(keys.trim().is_empty(), "an observer holds no key: {keys}");
    let worker = DaemonSpec::new(&etcd.endpoint(), "obs", "worker").start();
    wait_until(Duration::from_secs(10), "the worker to lead", || {
        worker.is_leader()
    });
    wait_until(Duration::from_secs(5), "the observer to see it", || {
        observer
            .role()
            .is_some_and(|r| r["role"] == "follower" && r["leader"]["id"] == "worker")
    });
    let (code, _) = unix_http(&observer.socket, "GET", "/leader", None).unwrap();
    assert_eq!(code, 503);
}

/// `electd resign --socket S --to ID`: exit code, stdout, stderr.
fn resign_to(d: &Daemon, to: &str) -> (i32, String, String) {
    let out = Command::new(electd_binary())
        .args(["resign", "--socket"])
        .arg(&d.socket)
        .args(["--to", to])
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn resign_to_a_named_replica_hands_it_leadership_and_refuses_the_ineligible() {
    let etcd = Etcd::start();
    let dir = tempfile::tempdir().unwrap();
    let l = dir.path().join("ledger");
    let mut daemons: Vec<Daemon> = Vec::new();
    for i in 1..=3 {
        daemons.push(
            DaemonSpec::new(&etcd.endpoint(), "sw", &format!("r{i}"))
                .sh(&ticking_script(&l))
                .start(),
        );
        // Join in order: r1 leads, r2 is next, r3 last.
        wait_until(Duration::from_secs(10), "the replica to join", || {
            daemons[i - 1]
                .role()
                .is_some_and(|r| !r["leader"].is_null())
        });
    }
    // A fourth replica whose health check fails: not a candidate.
    let sick = DaemonSpec::new(&etcd.endpoint(), "sw", "sick")
        .args(&["--health-cmd", "exit 1", "--health-interval", "200ms"])
        .start();
    let l0 = wait_one_leader(&daemons, Duration::from_secs(10));
    assert_eq!(daemons[l0].id(), "r1");
    let token = daemons[l0].fencing_token().unwrap();

    for (to, needle) in [
        ("nobody", "no candidate with id nobody"),
        ("sick", "no candidate with id sick"),
        ("r1", "r1 is this replica"),
    ] {
        let (code, _, err) = resign_to(&daemons[l0], to);
        assert_eq!(code, 1, "resign --to {to}: {err}");
        assert!(err.contains(needle), "resign --to {to}: {err}");
        assert!(daemons[l0].is_leader(), "leadership stays after --to {to}");
        assert_eq!(daemons[l0].fencing_token(), Some(token));
    }
    // From a follower: refused too.
    let (code, _, err) = resign_to(&daemons[1], "r3");
    assert_eq!(code, 1, "{err}");
    assert!(daemons[0].is_leader());

    let (code, out, err) = resign_to(&daemons[l0], "r3");
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("leadership handed to r3"), "{out}");
    // r3 heads the queue once the old leader's key is marked released; its electd takes the
    // role a moment later.
    wait_until(Duration::from_secs(2), "r3 to lead", || {
        daemons[2].is_leader()
    });
    assert!(daemons[2].fencing_token().unwrap() > token);
    // r2 gave way, and the old leader does not win it back.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(leaders(&daemons), vec![2]);
    assert_no_overlap(&ledger(&l));
    drop(sick);
    // Leadership moved only once: r1's run, then r3's.
    let ids: Vec<String> = starts(&ledger(&l)).iter().map(|r| r.id.clone()).collect();
    assert_eq!(ids, vec!["r1", "r3"]);
    daemons.truncate(0);
}
