//! `deploy/haproxy/haproxy.cfg` in front of three replicas (Debian's haproxy, installed by
//! scripts/setup.sh): HAProxy checks each electd's `/leader` and reaches the leader's app, and
//! follows a graceful handoff and a SIGKILLed leader.

mod common;

use std::time::{Duration, Instant};

use common::*;

struct Replica {
    d: Daemon,
    app: NameApp,
}

/// Who answers through `addr` now (`None`: nobody).
fn answer(addr: &str) -> Option<String> {
    ask_once(addr, Duration::from_secs(2)).ok()
}

#[test]
fn haproxy_checking_leader_reaches_the_leader_and_follows_failovers() {
    let etcd = Etcd::start();
    let mut rs: Vec<Replica> = (0..3)
        .map(|i| {
            let id = format!("r{i}");
            let app = NameApp::start(&id);
            let d = DaemonSpec::new(&etcd.endpoint(), "ha", &id)
                .args(&["--advertise", &app.addr().to_string()])
                .start();
            Replica { d, app }
        })
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let bind = format!("127.0.0.1:{}", free_port());
    let servers: Vec<(String, String, u16)> = rs
        .iter()
        .map(|r| {
            let port = r.d.http.rsplit(':').next().unwrap().parse().unwrap();
            (r.d.id().to_string(), r.app.addr().to_string(), port)
        })
        .collect();
    let _haproxy = Haproxy::from_example(dir.path(), &bind, &servers);

    let leader = |rs: &[Replica]| rs.iter().position(|r| r.d.is_leader());
    wait_until(Duration::from_secs(15), "a leader", || {
        leader(&rs).is_some()
    });
    let l = leader(&rs).unwrap();
    let first = rs[l].d.id().to_string();
    // HAProxy starts with every server up, until its checks fail (fall × inter): only then do
    // all clients reach the leader.
    let started = Instant::now();
    wait_until(
        Duration::from_secs(6),
        "HAProxy to reach only the leader",
        || (0..10).all(|_| answer(&bind).as_deref() == Some(first.as_str())),
    );
    eprintln!(
        "HAProxy reached only the leader {:?} after it started",
        started.elapsed()
    );
    for _ in 0..10 {
        assert_eq!(answer(&bind).as_deref(), Some(first.as_str()));
    }

    // A graceful handoff: an open connection to the old leader is shut when HAProxy marks it
    // down, and new connections reach the new leader.
    let mut open = connect(&bind, Duration::from_secs(10)).unwrap();
    assert_eq!(ask(&mut open).unwrap(), first);
    let (code, reply) = rs[l].d.control("/resign");
    assert_eq!(code, 200, "{reply}");
    let resigned = Instant::now();
    wait_until(Duration::from_secs(5), "a new leader", || {
        leader(&rs).is_some_and(|n| n != l)
    });
    let second = rs[leader(&rs).unwrap()].d.id().to_string();
    // The open connection is shut once HAProxy marks the old leader down (2 checks 1 s apart);
    // until then HAProxy may still send new clients to it.
    wait_until(
        Duration::from_secs(5),
        "HAProxy to shut the old connection",
        || ask(&mut open).is_err(),
    );
    eprintln!(
        "HAProxy shut the connection to the deposed leader {:?} after the resign",
        resigned.elapsed()
    );
    // The new leader is in service once HAProxy's checks have seen it answer 200 (`rise`).
    wait_until(
        Duration::from_secs(5),
        "HAProxy to reach the new leader",
        || answer(&bind).as_deref() == Some(second.as_str()),
    );
    for _ in 0..10 {
        assert_eq!(answer(&bind).as_deref(), Some(second.as_str()));
    }

    // The leader's host dies: electd and its app.
    let l2 = leader(&rs).unwrap();
    rs[l2].d.kill9();
    rs[l2].app.stop();
    let killed = Instant::now();
    wait_until(Duration::from_secs(10), "a third leader", || {
        leader(&rs).is_some_and(|n| n != l2)
    });
    let third = rs[leader(&rs).unwrap()].d.id().to_string();
    wait_until(
        Duration::from_secs(5),
        "HAProxy to follow the crash",
        || answer(&bind).as_deref() == Some(third.as_str()),
    );
    eprintln!(
        "HAProxy reached the leader {:?} after the SIGKILL",
        killed.elapsed()
    );
    for _ in 0..10 {
        assert_eq!(answer(&bind).as_deref(), Some(third.as_str()));
    }
}
