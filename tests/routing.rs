//! Routing clients to the leader through electd's proxy (`--advertise`, `--proxy`, `/ready`),
//! against a real etcd. Each replica has an app beside it that answers with the replica's name,
//! so a client knows whose app it reached.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

fn replica(endpoints: &str, election: &str, id: &str, extra: &[&str]) -> Replica {
    Replica::start(DaemonSpec::new(endpoints, election, id).args(extra))
}

fn replicas(etcd: &Etcd, election: &str, n: usize) -> Vec<Replica> {
    (0..n)
        .map(|i| replica(&etcd.endpoint(), election, &format!("r{i}"), &[]))
        .collect()
}

fn one_leader(rs: &[Replica]) -> usize {
    let daemons: Vec<&Daemon> = rs.iter().map(|r| &r.d).collect();
    wait_until(Duration::from_secs(15), "one leader all agree on", || {
        let leaders: Vec<_> = daemons.iter().filter(|d| d.is_leader()).collect();
        leaders.len() == 1
            && daemons.iter().all(|d| {
                d.role()
                    .is_some_and(|r| r["leader"]["id"] == leaders[0].id())
            })
    });
    rs.iter().position(|r| r.d.is_leader()).unwrap()
}

fn ready(d: &Daemon) -> (u16, Value) {
    match http_get(&d.http, "/ready") {
        Ok((code, body)) => (code, serde_json::from_str(&body).expect("/ready is JSON")),
        Err(_) => (0, Value::Null),
    }
}

fn leader_id(d: &Daemon) -> Option<String> {
    d.role()
        .and_then(|r| r["leader"]["id"].as_str().map(str::to_string))
}

fn proxy_metric(d: &Daemon, metric: &str, labels: &[&str]) -> f64 {
    let (_, page) = http_get(&d.http, "/metrics").unwrap();
    metric_sum(&page, metric, labels)
}

/// Wait on a proxied connection until it is closed; when.
fn closed_at(mut conn: BufReader<TcpStream>) -> std::thread::JoinHandle<Option<Instant>> {
    std::thread::spawn(move || {
        conn.get_ref()
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let mut buf = [0u8; 64];
        loop {
            match conn.read(&mut buf) {
                Ok(0) => return Some(Instant::now()),
                Ok(_) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                    return Some(Instant::now());
                }
                Err(_) => return None,
            }
        }
    })
}

/// Follow `/watch` on `d` and note when it first names a leader other than `old`.
fn leader_seen_changing(d: &Daemon, old: &str) -> std::thread::JoinHandle<Option<Instant>> {
    let mut s = TcpStream::connect(&d.http).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(s, "GET /watch HTTP/1.1\r\nHost: electd\r\n\r\n").unwrap();
    let old = old.to_string();
    let (tx, rx) = std::sync::mpsc::channel();
    let t = std::thread::spawn(move || {
        let mut first = Some(tx);
        for line in BufReader::new(s).lines() {
            let Ok(line) = line else { return None };
            let Some(data) = line.strip_prefix("data: ") else {
                continue;
            };
            if let Some(tx) = first.take() {
                let _ = tx.send(());
            }
            let doc: Value = serde_json::from_str(data).unwrap();
            if doc["leader"]["id"].as_str().is_some_and(|id| id != old) {
                return Some(Instant::now());
            }
        }
        None
    });
    rx.recv_timeout(Duration::from_secs(5))
        .expect("the watch stream's first event");
    t
}

#[test]
fn every_replicas_proxy_reaches_the_leader_and_every_replica_is_ready() {
    let etcd = Etcd::start();
    let rs = replicas(&etcd, "route", 3);
    let l = one_leader(&rs);
    let want = rs[l].d.id().to_string();
    let leader_app = rs[l].app.addr().to_string();
    for r in &rs {
        wait_until(Duration::from_secs(5), "the proxy to route", || {
            ready(&r.d).0 == 200
        });
        let (_, doc) = ready(&r.d);
        assert_eq!(doc["leader"], leader_app.as_str(), "{}: {doc}", r.d.id());
        assert_eq!(doc["fencing_token"], rs[l].d.fencing_token().unwrap());
        for _ in 0..3 {
            assert_eq!(
                ask_once(&r.proxy, Duration::from_secs(2)).unwrap(),
                want,
                "through {}",
                r.d.id()
            );
        }
        // The advertised address is published: /role's leader and /members.
        let role = r.d.role().unwrap();
        assert_eq!(role["leader"]["member"]["advertise"], leader_app.as_str());
    }
    let (_, members) = http_get(&rs[0].d.http, "/members").unwrap();
    let members: Value = serde_json::from_str(&members).unwrap();
    let advertised: Vec<_> = members["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["member"]["advertise"].as_str().unwrap().to_string())
        .collect();
    let mut apps: Vec<_> = rs.iter().map(|r| r.app.addr().to_string()).collect();
    let mut got = advertised.clone();
    apps.sort();
    got.sort();
    assert_eq!(got, apps);
    assert!(proxy_metric(&rs[0].d, "electd_proxy_connections_total", &[]) >= 3.0);
    assert!(
        proxy_metric(
            &rs[0].d,
            "electd_proxy_bytes_total",
            &["direction=\"from_leader\""]
        ) >= 9.0
    );
}

#[test]
fn a_graceful_handoff_closes_connections_through_a_follower_at_once_and_new_ones_reach_the_new_leader()
 {
    let etcd = Etcd::start();
    let rs = replicas(&etcd, "handoff", 3);
    for round in 0..3 {
        let l = one_leader(&rs);
        let old = rs[l].d.id().to_string();
        // Any follower: one that stays a follower re-routes to the new leader, one that becomes
        // the leader to its own app; either way its connections to the old leader close.
        let f = (l + 1) % rs.len();
        wait_until(Duration::from_secs(5), "the follower to route", || {
            ready(&rs[f].d).0 == 200
        });
        let mut conn = connect(&rs[f].proxy, Duration::from_secs(2)).unwrap();
        assert_eq!(ask(&mut conn).unwrap(), old);
        let closed = closed_at(conn);
        let seen = leader_seen_changing(&rs[f].d, &old);
        let (code, reply) = rs[l].d.control("/resign");
        assert_eq!(code, 200, "{reply}");
        let seen = seen
            .join()
            .unwrap()
            .expect("the follower sees the new leader");
        let closed = closed
            .join()
            .unwrap()
            .expect("the proxied connection to the old leader is closed");
        let late = closed.saturating_duration_since(seen);
        eprintln!(
            "round {round}: closed {:?} {} the handoff was seen",
            if closed > seen { late } else { seen - closed },
            if closed > seen { "after" } else { "before" }
        );
        assert!(
            late <= Duration::from_millis(100),
            "round {round}: the connection to the deposed leader closed {late:?} after the \
             follower saw the handoff"
        );
        let new = leader_id(&rs[f].d).unwrap();
        assert_ne!(new, old);
        assert_eq!(ask_once(&rs[f].proxy, Duration::from_secs(2)).unwrap(), new);
    }
    let f = &rs[0].d;
    assert!(
        proxy_metric(
            f,
            "electd_proxy_closed_total",
            &["reason=\"leader_changed\""]
        ) >= 1.0,
        "the closes are counted as leader_changed"
    );
}

#[test]
fn clients_in_a_tight_loop_through_a_follower_are_never_refused_during_graceful_handoffs() {
    let etcd = Etcd::start();
    let rs = replicas(&etcd, "loop", 3);
    let l = one_leader(&rs);
    // The clients go through one follower (which may itself lead after a handoff).
    let f = (l + 2) % rs.len();
    let via = rs[f].proxy.clone();
    let stop = Arc::new(AtomicBool::new(false));
    let answers = Arc::new(Mutex::new(Vec::<(Instant, Result<String, String>)>::new()));
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let (via, stop, answers) = (via.clone(), stop.clone(), answers.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    let a = ask_once(&via, Duration::from_secs(5));
                    answers.lock().unwrap().push((Instant::now(), a));
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let mut handoffs = Vec::new();
    let mut leader = l;
    for _ in 0..3 {
        let old = rs[leader].d.id().to_string();
        let (code, reply) = rs[leader].d.control("/resign");
        assert_eq!(code, 200, "{reply}");
        wait_until(
            Duration::from_secs(5),
            "the follower to see the new leader",
            || leader_id(&rs[f].d).is_some_and(|id| id != old),
        );
        handoffs.push(Instant::now());
        std::thread::sleep(Duration::from_millis(500));
        leader = one_leader(&rs);
    }
    stop.store(true, Ordering::SeqCst);
    clients.into_iter().for_each(|c| c.join().unwrap());
    let answers = answers.lock().unwrap();
    let t0 = answers[0].0;
    for (at, a) in answers.iter().filter(|(_, a)| a.is_err()) {
        eprintln!("{:?}: {a:?}", *at - t0);
    }
    for h in &handoffs {
        eprintln!("handoff seen {:?}", *h - t0);
    }
    if answers
        .iter()
        .any(|(_, a)| a.as_ref().is_err_and(|e| !e.contains("closed")))
    {
        eprintln!("{}", rs[f].d.log_tail(80));
    }
    let refused: Vec<_> = answers
        .iter()
        .filter(|(_, a)| a.as_ref().is_err_and(|e| e.starts_with("connect")))
        .collect();
    let cut: Vec<_> = answers.iter().filter(|(_, a)| a.is_err()).collect();
    eprintln!(
        "{} requests through {}, {} cut at a handoff, {} refused",
        answers.len(),
        rs[f].d.id(),
        cut.len(),
        refused.len()
    );
    assert!(answers.len() > 100, "the clients ran: {}", answers.len());
    assert!(refused.is_empty(), "refused: {refused:?}");
    // A request in flight to the deposed leader may be cut; never more than one per client
    // and handoff.
    assert!(cut.len() <= 4 * handoffs.len(), "{cut:?}");
    // After the last handoff settled, every answer came from the leader.
    let last = rs[leader].d.id().to_string();
    let settled = *handoffs.last().unwrap() + Duration::from_millis(100);
    for (at, a) in answers.iter().filter(|(at, _)| *at > settled) {
        assert_eq!(a.as_deref(), Ok(last.as_str()), "at {at:?}");
    }
}

#[test]
fn after_a_sigkilled_leader_new_connections_reach_the_new_leader_once_it_is_elected() {
    let etcd = Etcd::start();
    // A wait longer than the TTL, so a client can ride out the whole failover.
    let mut rs: Vec<Replica> = (0..3)
        .map(|i| {
            replica(
                &etcd.endpoint(),
                "crash",
                &format!("r{i}"),
                &["--proxy-wait", "10s"],
            )
        })
        .collect();
    let l = one_leader(&rs);
    let old = rs[l].d.id().to_string();
    let f = (l + 1) % rs.len();
    assert_eq!(ask_once(&rs[f].proxy, Duration::from_secs(2)).unwrap(), old);
    // The leader's host dies: electd and its app.
    rs[l].d.kill9();
    rs[l].app.stop();
    // A client connecting now, while the dead leader's lease still runs (its app refuses), is
    // held until the new leader's app can take it: a pause, not an error.
    let via = rs[f].proxy.clone();
    let early = std::thread::spawn(move || ask_once(&via, Duration::from_secs(15)));
    let others: Vec<usize> = (0..rs.len()).filter(|i| *i != l).collect();
    wait_until(Duration::from_secs(10), "a new leader", || {
        others.iter().any(|i| rs[*i].d.is_leader())
    });
    let new_leader = *others.iter().find(|i| rs[**i].d.is_leader()).unwrap();
    let new = rs[new_leader].d.id().to_string();
    wait_until(Duration::from_secs(2), "the follower to see it", || {
        others
            .iter()
            .all(|i| leader_id(&rs[*i].d).as_deref() == Some(new.as_str()))
    });
    for i in &others {
        for _ in 0..5 {
            assert_eq!(
                ask_once(&rs[*i].proxy, Duration::from_secs(2)).as_deref(),
                Ok(new.as_str()),
                "through {}",
                rs[*i].d.id()
            );
        }
    }
    assert_eq!(early.join().unwrap().as_deref(), Ok(new.as_str()));
}

#[test]
fn a_follower_cut_off_from_etcd_stops_routing_within_the_leader_budget() {
    let etcd = Etcd::start();
    let leader = replica(&etcd.endpoint(), "cut", "r0", &[]);
    wait_until(Duration::from_secs(10), "r0 to lead", || {
        leader.d.is_leader()
    });
    let link = TcpProxy::start_to(&etcd.endpoint());
    let f = replica(&link.endpoint(), "cut", "r1", &[]);
    wait_until(Duration::from_secs(5), "the follower to route", || {
        ready(&f.d).0 == 200
    });
    let mut conn = connect(&f.proxy, Duration::from_secs(2)).unwrap();
    assert_eq!(ask(&mut conn).unwrap(), "r0");
    let closed = closed_at(conn);
    // TTL 3s without a command: budget = TTL − safety margin (300 ms) = 2.7 s after the last
    // contact, which is at most this moment.
    let budget = Duration::from_millis(2700);
    let cut = Instant::now();
    link.set_mode(ProxyMode::Blackhole);
    let closed = closed
        .join()
        .unwrap()
        .expect("the proxied connection is closed");
    let after = closed - cut;
    eprintln!("closed {after:?} after the cut (budget {budget:?})");
    assert!(
        after <= budget + Duration::from_millis(200),
        "closed {after:?} after the cut"
    );
    // Not merely at the first hiccup: the view stays usable for most of the budget.
    assert!(
        after >= Duration::from_millis(1500),
        "closed {after:?} after the cut"
    );
    let (code, doc) = ready(&f.d);
    assert_eq!(code, 503, "{doc}");
    assert!(
        doc["reason"]
            .as_str()
            .unwrap()
            .contains("cut off from etcd"),
        "{doc}"
    );
    // New connections wait, then are closed without reaching anyone (proxy wait: the TTL).
    let started = Instant::now();
    let a = ask_once(&f.proxy, Duration::from_secs(10));
    assert!(a.is_err(), "{a:?}");
    assert!(
        started.elapsed() >= Duration::from_millis(2500),
        "{:?}",
        started.elapsed()
    );
    assert!(
        proxy_metric(
            &f.d,
            "electd_proxy_closed_total",
            &["reason=\"view_stale\""]
        ) >= 1.0
    );
    assert!(proxy_metric(&f.d, "electd_proxy_closed_total", &["reason=\"no_leader\""]) >= 1.0);
    // Healed: it routes again.
    link.set_mode(ProxyMode::Pass);
    wait_until(Duration::from_secs(10), "routing again", || {
        ready(&f.d).0 == 200
    });
    assert_eq!(ask_once(&f.proxy, Duration::from_secs(2)).unwrap(), "r0");
    drop(leader);
}

#[test]
fn a_connection_waiting_for_a_leader_goes_through_once_one_is_elected() {
    let etcd = Etcd::start();
    // An observer's proxy (priority 0, no app of its own) with no leader yet.
    let proxy = format!("127.0.0.1:{}", free_port());
    let observer = DaemonSpec::new(&etcd.endpoint(), "wait", "obs")
        .args(&["--priority", "0", "--proxy", &proxy, "--proxy-wait", "10s"])
        .start();
    wait_until(Duration::from_secs(5), "the observer up", || {
        observer.role().is_some()
    });
    let (code, doc) = ready(&observer);
    assert_eq!(code, 503, "{doc}");
    let p = proxy.clone();
    let client = std::thread::spawn(move || ask_once(&p, Duration::from_secs(15)));
    std::thread::sleep(Duration::from_millis(500));
    let leader = replica(&etcd.endpoint(), "wait", "r0", &[]);
    assert_eq!(client.join().unwrap().as_deref(), Ok("r0"));
    wait_until(Duration::from_secs(2), "r0 to know it leads", || {
        leader.d.is_leader()
    });
    assert_eq!(ready(&observer).0, 200);
    assert!(
        proxy_metric(&observer, "electd_proxy_wait_seconds_count", &[]) >= 1.0,
        "the wait is measured"
    );
}
