//! What an operator sees and does: metrics, push updates (/watch, long poll), /members,
//! control over the socket (resign, pause, resume) and `electd status`.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::process::Command;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::*;
use nix::sys::signal::Signal;
use serde_json::Value;

fn three(etcd: &Etcd, election: &str) -> Vec<Daemon> {
    (1..=3)
        .map(|i| DaemonSpec::new(&etcd.endpoint(), election, &format!("r{i}")).start())
        .collect()
}

/// The value of an unlabelled (or exactly labelled) metric line.
fn metric(d: &Daemon, series: &str) -> Option<f64> {
    let (code, body) = http_get(&d.http, "/metrics").ok()?;
    assert_eq!(code, 200);
    body.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// Follow `/watch` on `addr` in a thread; every event arrives on the channel with the time
/// it was read.
fn follow_watch(addr: &str) -> mpsc::Receiver<(Instant, Value)> {
    let (tx, rx) = mpsc::channel();
    let mut stream = TcpStream::connect(addr).unwrap();
    write!(
        stream,
        "GET /watch HTTP/1.1\r\nHost: t\r\nAccept: text/event-stream\r\n\r\n"
    )
    .unwrap();
    std::thread::spawn(move || {
        let reader = BufReader::new(stream);
        for line in reader.lines() {
            let Ok(line) = line else { return };
            if let Some(data) = line.strip_prefix("data: ")
                && let Ok(doc) = serde_json::from_str::<Value>(data)
                && tx.send((Instant::now(), doc)).is_err()
            {
                return;
            }
        }
    });
    rx
}

#[test]
fn metrics_move_on_failover_and_watch_pushes_the_change() {
    let etcd = Etcd::start();
    let mut daemons = three(&etcd, "obs");
    let l = wait_one_leader(&daemons, Duration::from_secs(10));
    let f = (l + 1) % 3;
    assert_eq!(
        metric(&daemons[l], "electd_is_leader{election=\"obs\"}"),
        Some(1.0)
    );
    assert_eq!(
        metric(&daemons[f], "electd_is_leader{election=\"obs\"}"),
        Some(0.0)
    );
    assert_eq!(
        metric(&daemons[l], "electd_role{election=\"obs\",role=\"leader\"}"),
        Some(1.0)
    );
    assert_eq!(
        metric(&daemons[l], "electd_fencing_token{election=\"obs\"}"),
        daemons[l].fencing_token().map(|t| t as f64)
    );
    let (_, text) = http_get(&daemons[l].http, "/metrics").unwrap();
    for name in [
        "electd_leader_transitions_total",
        "electd_keepalive_rtt_seconds_bucket",
        "electd_etcd_reachable{election=\"obs\"} 1",
        "electd_etcd_last_contact_age_seconds",
        "# HELP electd_is_leader",
        "# TYPE electd_leader_transitions_total counter",
    ] {
        assert!(text.contains(name), "/metrics lacks {name}:\n{text}");
    }
    // The info metric the alert rules and dashboard join on, and the TTL they compare with.
    let info = format!(
        "electd_info{{commit=\"{}\",election=\"obs\",id=\"{}\",version=\"{}\"}}",
        electd::GIT_COMMIT,
        daemons[l].id(),
        env!("CARGO_PKG_VERSION")
    );
    assert_eq!(metric(&daemons[l], &info), Some(1.0), "{text}");
    assert_eq!(metric(&daemons[l], "electd_lease_ttl_seconds"), Some(3.0));
    let (code, sock_metrics) = unix_http(&daemons[l].socket, "GET", "/metrics", None).unwrap();
    assert_eq!(code, 200);
    assert!(sock_metrics.contains("electd_is_leader{election=\"obs\"} 1"));

    // Every follower streams role changes; the first event is the current state.
    let watchers: Vec<_> = (0..3)
        .filter(|i| *i != l)
        .map(|i| (i, follow_watch(&daemons[i].http)))
        .collect();
    for (i, rx) in &watchers {
        let (_, first) = rx
            .recv_timeout(Duration::from_secs(2))
            .expect("current state first");
        assert_eq!(first["role"], "follower", "{i}: {first}");
    }
    let before = metric(
        &daemons[f],
        "electd_leader_transitions_total{election=\"obs\",from=\"follower\",to=\"leader\"}",
    )
    .unwrap_or(0.0);

    daemons[l].signal(Signal::SIGTERM);
    let t0 = Instant::now();
    daemons[l].wait_exit(Duration::from_secs(5));
    let n = wait_one_leader(&daemons, Duration::from_secs(3));
    let mut latencies = Vec::new();
    for (i, rx) in &watchers {
        // Each follower's stream reports the new leader.
        let deadline = Instant::now() + Duration::from_secs(3);
        loop {
            let (at, ev) = rx
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                .unwrap_or_else(|_| panic!("{i}: no /watch event naming the new leader"));
            if ev["leader"]["id"] == daemons[n].id() {
                latencies.push(at.duration_since(t0));
                let expected = if *i == n { "leader" } else { "follower" };
                assert_eq!(ev["role"], expected, "{ev}");
                break;
            }
        }
    }
    eprintln!("/watch delivered the failover {latencies:?} after SIGTERM of the leader");
    assert!(
        latencies.iter().all(|d| *d < Duration::from_secs(2)),
        "{latencies:?}"
    );

    assert_eq!(
        metric(&daemons[n], "electd_is_leader{election=\"obs\"}"),
        Some(1.0)
    );
    if n == f {
        let after = metric(
            &daemons[f],
            "electd_leader_transitions_total{election=\"obs\",from=\"follower\",to=\"leader\"}",
        )
        .unwrap();
        assert_eq!(after, before + 1.0);
    }
}

#[test]
fn long_poll_returns_on_change_or_after_the_wait() {
    let etcd = Etcd::start();
    let a = DaemonSpec::new(&etcd.endpoint(), "poll", "a").start();
    a.wait_role("leader", Duration::from_secs(10));
    let version = a.role().unwrap()["version"].as_u64().unwrap();

    let t = Instant::now();
    // As an observer: a's resign below must not wait out a budget handed to this test.
    let (code, body) = http_get(
        &a.http,
        &format!("/role?wait=1s&after={version}&claim=false"),
    )
    .unwrap();
    assert_eq!(code, 200);
    assert!(
        t.elapsed() >= Duration::from_millis(900),
        "no change: waited the full second"
    );
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["version"],
        version
    );

    let (code, body) = http_get(&a.http, "/role?wait=1s&after=0&claim=false").unwrap();
    assert_eq!(code, 200, "a newer version answers at once: {body}");

    let (code, body) = http_get(&a.http, "/role?wait=soon").unwrap();
    assert_eq!(code, 400);
    assert!(body.contains("invalid wait"), "{body}");

    // A change during the wait answers at once: the poll is waiting at b (read by the server,
    // not answered) before a resigns.
    let b = DaemonSpec::new(&etcd.endpoint(), "poll", "b").start();
    b.wait_role("follower", Duration::from_secs(10));
    let version = b.role().unwrap()["version"].as_u64().unwrap();
    let poll = PendingGet::send(
        &b.http,
        &format!("/role?wait=20s&after={version}"),
        Duration::from_secs(25),
    );
    poll.wait_parked(Duration::from_secs(5));
    let resigned = Instant::now();
    a.control("/resign");
    let (code, body) = poll.answer().unwrap();
    let took = resigned.elapsed();
    assert_eq!(code, 200, "{body}");
    let doc: Value = serde_json::from_str(&body).unwrap();
    // The first change b saw: a is no longer its leader (b then leads, or is on its way).
    assert!(doc["version"].as_u64() > Some(version), "{doc}");
    assert_ne!(doc["leader"]["id"], "a", "{doc}");
    assert!(
        took < Duration::from_secs(5),
        "the waiting poll answered {took:?} after the resign"
    );
    b.wait_role("leader", Duration::from_secs(5));
    eprintln!(
        "the poll answered {took:?} after the resign ({}), b led {:?} after it",
        doc["role"],
        resigned.elapsed()
    );
}

#[test]
fn members_resign_pause_resume_and_status() {
    let etcd = Etcd::start();
    // One at a time, so the queue order is known.
    let daemons: Vec<Daemon> = (1..=3)
        .map(|i| {
            let d = DaemonSpec::new(&etcd.endpoint(), "ops", &format!("r{i}")).start();
            d.wait_role(
                if i == 1 { "leader" } else { "follower" },
                Duration::from_secs(10),
            );
            d
        })
        .collect();
    let l = wait_one_leader(&daemons, Duration::from_secs(10));

    // /members: every replica in create-revision order, the first leads.
    let (code, body) = http_get(&daemons[0].http, "/members").unwrap();
    assert_eq!(code, 200);
    let doc: Value = serde_json::from_str(&body).unwrap();
    let members = doc["members"].as_array().unwrap();
    assert_eq!(members.len(), 3);
    let ids: Vec<&str> = members.iter().map(|m| m["id"].as_str().unwrap()).collect();
    assert_eq!(ids, vec!["r1", "r2", "r3"], "started in this order");
    let revs: Vec<i64> = members
        .iter()
        .map(|m| m["create_revision"].as_i64().unwrap())
        .collect();
    assert!(revs.windows(2).all(|w| w[0] < w[1]), "{revs:?}");
    assert_eq!(members[0]["leader"], true);
    assert_eq!(members[0]["id"], daemons[l].id());
    assert_eq!(
        members[0]["create_revision"].as_i64(),
        daemons[l].fencing_token()
    );

    // `electd status` over the socket: the table with the values above.
    let out = Command::new(electd_binary())
        .args(["status", "--socket"])
        .arg(&daemons[1].socket)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.contains("election:      ops"), "{table}");
    assert!(
        table.contains(&format!(
            "leader:        {} (fencing token {})",
            daemons[l].id(),
            revs[0]
        )),
        "{table}"
    );
    assert!(table.contains("this replica:  r2 is "), "{table}");
    assert!(table.contains("#   ID  ROLE      CREATE REV"), "{table}");
    assert!(
        table.contains(&format!(
            "2*  r2  {}",
            if l == 1 { "leader  " } else { "follower" }
        )),
        "{table}"
    );
    // ...and straight from etcd, as JSON.
    let out = Command::new(electd_binary())
        .args([
            "status",
            "--json",
            "--endpoints",
            &etcd.endpoint(),
            "--election",
            "ops",
        ])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["members"]["members"].as_array().unwrap().len(), 3);
    // etcd unreachable: 69 and a clear message.
    let out = Command::new(electd_binary())
        .args([
            "status",
            "--endpoints",
            &format!("http://127.0.0.1:{}", free_port()),
            "--election",
            "ops",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(69));

    // Resign over the socket moves leadership; over TCP it is refused.
    let (code, _) = http_request(&daemons[l].http, "POST", "/resign", None).unwrap();
    assert_eq!(code, 403);
    let f = (l + 1) % 3;
    let (code, doc) = daemons[f].control("/resign");
    assert_eq!(
        (code, &doc["resigned"]),
        (200, &Value::Bool(false)),
        "a follower has nothing to resign: {doc}"
    );
    let out = Command::new(electd_binary())
        .args(["resign", "--socket"])
        .arg(&daemons[l].socket)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let n = wait_one_leader(&daemons, Duration::from_secs(3));
    assert_ne!(n, l);
    // The resigned replica rejoined at the back of the queue.
    let (_, body) = http_get(&daemons[l].http, "/members").unwrap();
    let doc: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(doc["members"][2]["id"], daemons[l].id(), "{doc}");

    // Pause: the leader leaves the election; resume: it rejoins as a candidate.
    let (code, doc) = daemons[n].control("/pause");
    assert_eq!((code, &doc["paused"]), (200, &Value::Bool(true)), "{doc}");
    daemons[n].wait_role("paused", Duration::from_secs(3));
    // A paused replica is out of the election (it reports no leader); the others elect one.
    let mut m = n;
    wait_until(
        Duration::from_secs(3),
        "a leader among the two others",
        || {
            let l = leaders(&daemons);
            if l.len() == 1 {
                m = l[0];
            }
            l.len() == 1 && m != n
        },
    );
    let (_, body) = http_get(&daemons[m].http, "/members").unwrap();
    let doc: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        doc["members"].as_array().unwrap().len(),
        2,
        "a paused replica has no key: {doc}"
    );
    assert!(!daemons[n].is_leader());
    let (_, doc) = daemons[n].control("/resume");
    assert_eq!(doc["resumed"], true, "{doc}");
    daemons[n].wait_role("follower", Duration::from_secs(5));
    let (_, doc) = daemons[n].control("/resume");
    assert_eq!(
        doc["resumed"], false,
        "resume when not paused changes nothing: {doc}"
    );
}

#[test]
fn control_is_refused_to_other_users_unless_allowed() {
    let etcd = Etcd::start();
    // Mode 0666 lets anyone connect; the peer-credential check still decides.
    let mut d = DaemonSpec::new(&etcd.endpoint(), "peers", "p")
        .args(&["--socket-mode", "0666", "--socket-group", "65534"])
        .start();
    d.wait_role("leader", Duration::from_secs(10));
    use std::os::unix::fs::MetadataExt;
    assert_eq!(
        std::fs::metadata(&d.socket).unwrap().gid(),
        65534,
        "--socket-group owns the socket"
    );
    if !nix::unistd::geteuid().is_root() {
        panic!(
            "this test switches to uid 65534 to act as another user; run the suite as root (CI does)"
        );
    }
    let socket = d.socket.clone();
    let as_nobody = |action: &str| {
        use std::os::unix::process::CommandExt;
        Command::new(electd_binary())
            .args([action, "--socket"])
            .arg(&socket)
            .uid(65534)
            .gid(65534)
            .output()
            .unwrap()
    };
    let out = as_nobody("pause");
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("403"),
        "{out:?}"
    );
    assert!(d.is_leader(), "a refused pause changes nothing");
    // Reading is fine for anyone who can connect.
    let out = Command::new(electd_binary())
        .args(["status", "--socket"])
        .arg(&d.socket)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));

    d.signal(Signal::SIGTERM);
    d.wait_exit(Duration::from_secs(5));
    d.spec
        .extra
        .extend(["--control-uids".to_string(), "65534".to_string()]);
    d.restart();
    d.wait_role("leader", Duration::from_secs(10));
    let out = as_nobody("pause");
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    d.wait_role("paused", Duration::from_secs(3));
}

#[test]
fn a_long_poll_from_before_a_restart_or_ahead_answers_at_once() {
    let etcd = Etcd::start();
    let mut a = DaemonSpec::new(&etcd.endpoint(), "restartpoll", "a").start();
    a.wait_role("leader", Duration::from_secs(10));
    let old = a.role().unwrap()["version"].as_u64().unwrap();
    a.signal(Signal::SIGTERM);
    a.wait_exit(Duration::from_secs(10));
    a.restart();
    a.wait_role("leader", Duration::from_secs(10));
    let now = a.role().unwrap()["version"].as_u64().unwrap();
    assert!(
        now > old,
        "versions go on after a restart: {old} then {now}"
    );
    for after in [old, now + 1000] {
        let t = Instant::now();
        let (code, body) = http_get(&a.http, &format!("/role?wait=10s&after={after}")).unwrap();
        assert_eq!(code, 200, "{body}");
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "after={after} (current {now}) waited {:?}",
            t.elapsed()
        );
    }
}

#[test]
fn status_into_a_closed_pipe_exits_cleanly() {
    let etcd = Etcd::start();
    let a = DaemonSpec::new(&etcd.endpoint(), "pipe", "a").start();
    a.wait_role("leader", Duration::from_secs(10));
    // `electd status --json | true`: the reader is gone before electd writes (as with `| head`
    // once it has read enough): the write fails with EPIPE, which is not a reason to panic.
    for args in ["status --json", "status"] {
        let out = Command::new("bash")
            .arg("-c")
            .arg(format!(
                "'{}' {args} --socket '{}' | true; exit ${{PIPESTATUS[0]}}",
                electd_binary(),
                a.socket.display()
            ))
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{args}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args}: {stderr}");
    }
}

#[test]
fn two_replicas_with_one_id_are_warned_and_status_marks_only_this_one() {
    let etcd = Etcd::start();
    let a = DaemonSpec::new(&etcd.endpoint(), "twins", "same").start();
    a.wait_role("leader", Duration::from_secs(10));
    let b = DaemonSpec::new(&etcd.endpoint(), "twins", "same").start();
    b.wait_role("follower", Duration::from_secs(10));
    wait_until(
        Duration::from_secs(5),
        "a warning about the shared id",
        || {
            a.log_text()
                .contains("another candidate uses this replica's id")
                && b.log_text()
                    .contains("another candidate uses this replica's id")
        },
    );
    let out = Command::new(electd_binary())
        .args(["status", "--socket"])
        .arg(&b.socket)
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    let starred: Vec<&str> = table.lines().filter(|l| l.contains("* ")).collect();
    assert_eq!(starred.len(), 1, "{table}");
    assert!(starred[0].starts_with("2*"), "{table}");
}
