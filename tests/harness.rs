//! Self-tests of the integration-test harness in `tests/common`.

mod common;

use common::{
    Etcd, EtcdCluster, PendingGet, ProxyMode, TcpProxy, etcd_binary, etcdctl_binary, free_port,
    http_get, unix_http, wait_until,
};
use std::collections::HashSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::net::UnixListener;
use std::time::{Duration, Instant};

#[test]
fn free_port_never_repeats() {
    let ports: Vec<u16> = (0..50).map(|_| free_port()).collect();
    let unique: HashSet<u16> = ports.iter().copied().collect();
    assert_eq!(unique.len(), ports.len(), "duplicate ports: {ports:?}");
    for p in ports {
        TcpListener::bind(("127.0.0.1", p)).expect("handed-out port is bindable");
    }
}

/// The etcd the suite runs on is the one asked for: with `ELECTD_TEST_ETCD=DIR` (what
/// `scripts/etcd.sh VERSION` prints) both binaries come from DIR, and the server that answers
/// is that build, with an etcdctl of the same version.
#[test]
fn the_etcd_under_test_is_the_one_chosen() {
    let version_of = |bin: &std::path::Path, arg: &str, prefix: &str| -> String {
        let out = std::process::Command::new(bin)
            .arg(arg)
            .env("ETCDCTL_API", "3")
            .output()
            .unwrap_or_else(|e| panic!("run {} {arg}: {e}", bin.display()));
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        text.lines()
            .find_map(|l| l.strip_prefix(prefix))
            .unwrap_or_else(|| panic!("{} {arg} printed no {prefix:?}: {text}", bin.display()))
            .trim()
            .to_string()
    };
    let (etcd_bin, etcdctl_bin) = (etcd_binary(), etcdctl_binary());
    if let Some(dir) = std::env::var_os("ELECTD_TEST_ETCD").filter(|d| !d.is_empty()) {
        let dir = std::path::PathBuf::from(dir);
        let dir = if dir.is_dir() {
            dir
        } else {
            dir.parent().unwrap().into()
        };
        assert_eq!(
            etcd_bin.parent(),
            Some(dir.as_path()),
            "etcd from ELECTD_TEST_ETCD"
        );
        if std::env::var_os("ELECTD_TEST_ETCDCTL").is_none() {
            assert_eq!(
                etcdctl_bin.parent(),
                Some(dir.as_path()),
                "etcdctl beside it"
            );
        }
    }
    let built = version_of(&etcd_bin, "--version", "etcd Version:");
    let client = version_of(&etcdctl_bin, "version", "etcdctl version:");
    let etcd = Etcd::start();
    let (status, body) = http_get(&etcd.endpoint(), "/version").expect("GET /version");
    assert_eq!(status, 200, "{body}");
    let served: serde_json::Value = serde_json::from_str(&body).expect("/version is JSON");
    eprintln!(
        "etcd under test: {} (server {body}, etcdctl {client})",
        etcd_bin.display()
    );
    assert_eq!(
        served["etcdserver"].as_str(),
        Some(built.as_str()),
        "{body}"
    );
    assert_eq!(client, built, "etcdctl and etcd of one version");
}

/// `PendingGet::wait_parked` returns once the server has read the request and not answered,
/// and fails while the request sits unread or when the answer came at once.
#[test]
fn a_pending_get_is_parked_only_once_the_server_has_read_it() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let unread = PendingGet::send(&addr, "/slow", Duration::from_secs(5));
    let (conn, _) = listener.accept().unwrap();
    let waited = std::panic::catch_unwind(|| unread.wait_parked(Duration::from_millis(300)));
    assert!(waited.is_err(), "an unread request counted as parked");

    let parked = PendingGet::send(&addr, "/slow", Duration::from_secs(5));
    let (mut conn2, _) = listener.accept().unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        conn2.read_exact(&mut byte).unwrap();
        head.push(byte[0]);
    }
    parked.wait_parked(Duration::from_secs(2));
    conn2
        .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        .unwrap();
    assert_eq!(parked.answer().unwrap(), (200, "ok".to_string()));

    let answered = PendingGet::send(&addr, "/fast", Duration::from_secs(5));
    let (mut conn3, _) = listener.accept().unwrap();
    let mut buf = [0u8; 512];
    let _ = conn3.read(&mut buf).unwrap();
    conn3
        .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        .unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let waited = std::panic::catch_unwind(|| answered.wait_parked(Duration::from_secs(2)));
    assert!(waited.is_err(), "an answered request counted as parked");
    drop(conn);
}

#[test]
fn single_etcd_put_get_kill_restart_pause() {
    let mut etcd = Etcd::start();
    assert_eq!(
        etcd.endpoint(),
        format!("http://127.0.0.1:{}", etcd.client_port())
    );
    assert_eq!(etcd.etcdctl_ok(&["put", "greeting", "hello"]), "OK");
    assert_eq!(
        etcd.etcdctl_ok(&["get", "greeting", "--print-value-only"]),
        "hello"
    );
    let (status, body) = http_get(&etcd.endpoint(), "/health").expect("GET /health");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("true"), "{body}");
    assert!(etcd.is_leader());

    // Data survives SIGKILL + restart on the same ports and data dir.
    etcd.kill();
    assert!(!etcd.is_running());
    assert!(http_get(&etcd.endpoint(), "/health").is_err());
    etcd.restart();
    assert_eq!(
        etcd.etcdctl_ok(&["get", "greeting", "--print-value-only"]),
        "hello"
    );

    // A paused (SIGSTOPped) etcd accepts connections but answers nothing.
    etcd.pause();
    let started = Instant::now();
    let out = etcd.etcdctl(&["get", "greeting", "--command-timeout=1s"]);
    assert!(
        !out.status.success(),
        "etcdctl succeeded against paused etcd"
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    etcd.resume();
    wait_until(Duration::from_secs(10), "etcd healthy after resume", || {
        etcd.is_healthy()
    });

    // Graceful stop, then restart.
    etcd.stop();
    etcd.restart();
    assert_eq!(
        etcd.etcdctl_ok(&["get", "greeting", "--print-value-only"]),
        "hello"
    );
}

#[test]
fn cluster_survives_killing_the_leader_and_member_rejoins() {
    let mut cluster = EtcdCluster::start(3);
    assert_eq!(cluster.endpoints().len(), 3);
    cluster.etcdctl_ok(&["put", "k1", "v1"]);

    let leader = cluster.leader().expect("a leader");
    cluster.member(leader).kill();
    assert_eq!(cluster.live_endpoints().len(), 2);
    cluster.wait_healthy(Duration::from_secs(20));
    let new_leader = cluster.leader().expect("a new leader");
    assert_ne!(new_leader, leader);

    // The remaining two members still accept writes.
    cluster.etcdctl_ok(&["put", "k2", "v2"]);
    assert_eq!(
        cluster.etcdctl_ok(&["get", "k1", "--print-value-only"]),
        "v1"
    );

    // The killed member rejoins with its old data dir and catches up.
    cluster.member(leader).restart();
    cluster.wait_healthy(Duration::from_secs(20));
    let rejoined = &cluster.members()[leader];
    wait_until(Duration::from_secs(10), "rejoined member sees k2", || {
        let out = rejoined.etcdctl(&["get", "k2", "--print-value-only", "--consistency=s"]);
        String::from_utf8_lossy(&out.stdout).trim() == "v2"
    });
}

#[test]
fn proxy_pass_blackhole_heal_against_etcd() {
    let etcd = Etcd::start();
    let proxy = TcpProxy::start(etcd.client_addr());
    let via_proxy = format!("--endpoints={}", proxy.endpoint());

    assert_eq!(etcd.etcdctl_ok(&[&via_proxy, "put", "p", "1"]), "OK");
    assert!(proxy.total_connections() >= 1, "etcdctl bypassed the proxy");

    proxy.set_mode(ProxyMode::Blackhole);
    let started = Instant::now();
    let out = etcd.etcdctl(&[
        &via_proxy,
        "--dial-timeout=1s",
        "--command-timeout=1s",
        "put",
        "p",
        "2",
    ]);
    assert!(
        !out.status.success(),
        "etcdctl through a blackhole succeeded: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(started.elapsed() < Duration::from_secs(5));

    proxy.set_mode(ProxyMode::Pass);
    assert_eq!(etcd.etcdctl_ok(&[&via_proxy, "put", "p", "3"]), "OK");
    assert_eq!(etcd.etcdctl_ok(&["get", "p", "--print-value-only"]), "3");
    assert!(proxy.total_connections() >= 3);
}

/// A one-connection-per-thread echo server for proxy tests without etcd.
fn echo_server() -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut writer = stream;
                let mut line = String::new();
                while reader.read_line(&mut line).is_ok_and(|n| n > 0) {
                    if writer.write_all(line.as_bytes()).is_err() {
                        break;
                    }
                    line.clear();
                }
            });
        }
    });
    addr
}

fn echo_roundtrip(stream: &mut TcpStream, msg: &str) -> std::io::Result<String> {
    stream.write_all(format!("{msg}\n").as_bytes())?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    Ok(line.trim_end().to_string())
}

fn connect(proxy: &TcpProxy) -> TcpStream {
    let s = TcpStream::connect(proxy.addr()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    s
}

#[test]
fn proxy_blackhole_resumes_reset_aborts_delay_delays() {
    let proxy = TcpProxy::start(echo_server());

    let mut a = connect(&proxy);
    assert_eq!(echo_roundtrip(&mut a, "one").unwrap(), "one");
    wait_until(Duration::from_secs(2), "1 open connection", || {
        proxy.connections() == 1
    });

    // Blackhole: nothing comes back, but the connection stays open...
    proxy.set_mode(ProxyMode::Blackhole);
    a.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    a.write_all(b"two\n").unwrap();
    let mut buf = [0u8; 16];
    let err = a.read(&mut buf).expect_err("no bytes through a blackhole");
    assert!(
        matches!(
            err.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
        "{err}"
    );
    // ...and new connections are accepted but silent.
    let mut b = connect(&proxy);
    b.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    b.write_all(b"bee\n").unwrap();
    assert!(b.read(&mut buf).is_err());

    // Healing resumes both, with nothing lost.
    proxy.set_mode(ProxyMode::Pass);
    a.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    b.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut line = String::new();
    BufReader::new(a.try_clone().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line, "two\n");
    line.clear();
    BufReader::new(b.try_clone().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line, "bee\n");

    // Reset: existing connections are aborted, new ones closed at once.
    proxy.set_mode(ProxyMode::Reset);
    for s in [&mut a, &mut b] {
        match s.read(&mut buf) {
            Ok(0) => {}
            Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}"),
            Ok(n) => panic!("read {n} bytes after reset"),
        }
    }
    wait_until(Duration::from_secs(2), "0 open connections", || {
        proxy.connections() == 0
    });
    let mut c = connect(&proxy);
    assert!(echo_roundtrip(&mut c, "sea").is_err() || c.read(&mut buf).is_err());

    // Pass again heals for new connections; delay applies per direction.
    proxy.set_mode(ProxyMode::Pass);
    let mut d = connect(&proxy);
    assert_eq!(echo_roundtrip(&mut d, "dee").unwrap(), "dee");
    proxy.set_delay(Duration::from_millis(150));
    let started = Instant::now();
    assert_eq!(echo_roundtrip(&mut d, "slow").unwrap(), "slow");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(300),
        "round trip took {took:?}"
    );
    proxy.set_delay(Duration::ZERO);
}

/// Serves one canned HTTP response on a fresh TCP listener.
fn canned_tcp_server(response: &'static str) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        read_request_head(&mut s);
        s.write_all(response.as_bytes()).unwrap();
    });
    addr
}

fn read_request_head(s: &mut impl Read) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") && s.read(&mut byte).unwrap_or(0) == 1 {
        head.push(byte[0]);
    }
    String::from_utf8(head).unwrap()
}

#[test]
fn http_helpers_handle_length_chunked_and_unix_sockets() {
    let addr = canned_tcp_server(
        "HTTP/1.1 200 OK\r\ncontent-length: 5\r\nconnection: keep-alive\r\n\r\nhello",
    );
    assert_eq!(http_get(&addr, "/x").unwrap(), (200, "hello".to_string()));

    let addr = canned_tcp_server(
        "HTTP/1.1 503 Service Unavailable\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nnot \r\n5;x=y\r\nready\r\n0\r\n\r\n",
    );
    assert_eq!(
        http_get(&format!("http://{addr}"), "/").unwrap(),
        (503, "not ready".to_string())
    );

    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("api.sock");
    let listener = UnixListener::bind(&sock).unwrap();
    let server = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let head = read_request_head(&mut s);
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("Content-Length: "))
            .map_or(0, |v| v.trim().parse().unwrap());
        let mut body = vec![0u8; len];
        s.read_exact(&mut body).unwrap();
        let reply = format!(
            "{}|{}",
            head.lines().next().unwrap(),
            String::from_utf8(body).unwrap()
        );
        let resp = format!(
            "HTTP/1.1 202 Accepted\r\nContent-Length: {}\r\n\r\n{reply}",
            reply.len()
        );
        s.write_all(resp.as_bytes()).unwrap();
    });
    let (status, body) = unix_http(&sock, "POST", "/v1/resign", Some(r#"{"a":1}"#)).unwrap();
    server.join().unwrap();
    assert_eq!(status, 202);
    assert_eq!(body, r#"POST /v1/resign HTTP/1.1|{"a":1}"#);

    assert!(http_get(&format!("127.0.0.1:{}", free_port()), "/").is_err());
}

/// `set_delays(up, down)` delays each direction on its own: the server sees a request late
/// only when the upstream direction is slow, and the round trip pays both.
#[test]
fn proxy_delays_each_direction_separately() {
    // An echo server that reports when each line arrived.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let upstream = listener.local_addr().unwrap();
    let (arrived_tx, arrived) = std::sync::mpsc::channel::<Instant>();
    std::thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        let mut writer = stream;
        let mut line = String::new();
        while reader.read_line(&mut line).is_ok_and(|n| n > 0) {
            let _ = arrived_tx.send(Instant::now());
            if writer.write_all(line.as_bytes()).is_err() {
                break;
            }
            line.clear();
        }
    });
    let proxy = TcpProxy::start(upstream);
    let mut s = connect(&proxy);
    let slow = Duration::from_millis(300);
    for (up, down) in [(slow, Duration::ZERO), (Duration::ZERO, slow)] {
        proxy.set_delays(up, down);
        let sent = Instant::now();
        assert_eq!(echo_roundtrip(&mut s, "x").unwrap(), "x");
        let round_trip = sent.elapsed();
        let one_way = arrived.recv().unwrap() - sent;
        assert!(
            round_trip >= slow,
            "up {up:?} down {down:?}: {round_trip:?}"
        );
        assert!(
            round_trip < slow * 2,
            "up {up:?} down {down:?}: {round_trip:?}"
        );
        if up > down {
            assert!(one_way >= slow, "the request was not held: {one_way:?}");
        } else {
            assert!(one_way < slow / 2, "the request was held: {one_way:?}");
        }
    }
}

/// With its peer traffic through a [`common::PeerMesh`], the raft leader can be cut from the
/// other two members: they elect a new leader while the isolated member still accepts client
/// connections (and has no leader); after healing it rejoins and catches up.
#[test]
fn peer_proxied_cluster_isolates_the_raft_leader() {
    let cluster = EtcdCluster::start_peer_proxied(3);
    cluster.etcdctl_ok(&["put", "k1", "v1"]);
    let old = cluster.leader().expect("a raft leader");
    cluster.isolate_peer(old, ProxyMode::Blackhole);
    let mut new = None;
    wait_until(Duration::from_secs(10), "a leader among the others", || {
        new = (0..3).find(|i| *i != old && cluster.members()[*i].is_leader());
        new.is_some()
    });
    let isolated = &cluster.members()[old];
    wait_until(
        Duration::from_secs(10),
        "the isolated member to step down",
        || !isolated.is_leader(),
    );
    // Its client port still answers (its metrics), but it cannot serve a linearizable read.
    assert!(!isolated.is_healthy());
    let out = isolated.etcdctl(&["get", "k1", "--command-timeout=1s"]);
    assert!(
        !out.status.success(),
        "a cut-off member served a quorum read"
    );
    let others = new.map(|n| cluster.members()[n].etcdctl_ok(&["put", "k2", "v2"]));
    assert_eq!(others.as_deref(), Some("OK"));

    cluster.heal_peers();
    wait_until(Duration::from_secs(10), "the healed member sees k2", || {
        let out = isolated.etcdctl(&["get", "k2", "--print-value-only", "--command-timeout=1s"]);
        String::from_utf8_lossy(&out.stdout).trim() == "v2"
    });
    let mesh = cluster.mesh().expect("peer proxied");
    assert_eq!(mesh.len(), 3);
}
