//! Election core against a real etcd: agreement, failover on SIGTERM and SIGKILL, fencing
//! tokens, etcdctl interop, the socket's file handling.

mod common;

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::time::{Duration, Instant};

use common::*;
use nix::sys::signal::Signal;

fn three(etcd: &Etcd, election: &str) -> Vec<Daemon> {
    three_with_ttl(etcd, election, "3s")
}

#[test]
fn three_daemons_agree_on_one_leader_over_http_and_socket() {
    let etcd = Etcd::start();
    let daemons = three(&etcd, "agree");
    let l = wait_one_leader(&daemons, Duration::from_secs(10));
    let leader_id = daemons[l].id().to_string();
    let token = daemons[l].fencing_token().expect("leader has a token");

    for d in &daemons {
        for (how, doc) in [("http", d.role()), ("socket", d.role_socket())] {
            let doc = doc.unwrap_or_else(|| panic!("{} answers /role over {how}", d.id()));
            assert_eq!(doc["leader"]["id"], leader_id.as_str(), "{how}: {doc}");
            assert_eq!(doc["fencing_token"], token, "{how}: {doc}");
            assert_eq!(doc["election"], "agree");
            assert_eq!(doc["id"], d.id());
            let expected = if d.id() == leader_id {
                "leader"
            } else {
                "follower"
            };
            assert_eq!(doc["role"], expected, "{how}: {doc}");
            assert!(
                doc["since"].as_str().is_some_and(|s| s.ends_with('Z')),
                "{doc}"
            );
        }
        let (code, body) = http_get(&d.http, "/healthz").unwrap();
        assert_eq!((code, body.trim()), (200, "ok"));
        let (code, _) = unix_http(&d.socket, "GET", "/leader", None).unwrap();
        assert_eq!(code == 200, d.id() == leader_id);
        let mode = std::fs::metadata(&d.socket).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o660, "default socket mode");
    }
    // Control actions are refused over TCP, and a refusal changes nothing.
    let (code, body) = http_request(&daemons[l].http, "POST", "/resign", None).unwrap();
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("Unix socket"), "{body}");
    assert!(daemons[l].is_leader());
    assert_eq!(leaders(&daemons), vec![l]);
    // Logs to a file (not a terminal) carry no colour codes, and say who leads.
    let log = daemons[l].log_text();
    assert!(
        !log.contains('\u{1b}'),
        "ANSI escapes in a non-terminal log:\n{log}"
    );
    assert!(
        log.contains("role changed from=candidate to=leader"),
        "{log}"
    );

    // etcd agrees: the lowest create revision under the prefix is the leader's key.
    let out = etcd.etcdctl_ok(&[
        "get",
        "agree/",
        "--prefix",
        "--sort-by=CREATE",
        "--order=ASCEND",
        "-w",
        "json",
    ]);
    let doc: serde_json::Value = serde_json::from_str(&out).unwrap();
    let kvs = doc["kvs"].as_array().unwrap();
    assert_eq!(kvs.len(), 3, "one candidate key per replica: {out}");
    assert_eq!(kvs[0]["create_revision"], token);
}

fn three_with_ttl(etcd: &Etcd, election: &str, ttl: &str) -> Vec<Daemon> {
    (1..=3)
        .map(|i| {
            DaemonSpec::new(&etcd.endpoint(), election, &format!("r{i}"))
                .ttl(ttl)
                .start()
        })
        .collect()
}

/// Poll until one replica leads; returns its index and when it was first seen.
fn next_leader(daemons: &[Daemon], within: Duration, what: &str) -> (usize, Instant) {
    let mut new = None;
    wait_until(within, what, || {
        new = leaders(daemons).first().copied();
        new.is_some()
    });
    (new.unwrap(), Instant::now())
}

#[test]
fn sigterm_of_leader_hands_over_by_revoking_its_lease_not_by_expiry() {
    let etcd = Etcd::start();
    // TTL 10s: a handover long before it can only come from the revoked lease.
    let mut daemons = three_with_ttl(&etcd, "term", "10s");
    let l = wait_one_leader(&daemons, Duration::from_secs(10));
    let old_token = daemons[l].fencing_token().unwrap();

    daemons[l].signal(Signal::SIGTERM);
    let started = Instant::now();
    let status = daemons[l].wait_exit(Duration::from_secs(5));
    assert!(status.success(), "clean shutdown exits 0: {status:?}");
    let (n, at) = next_leader(
        &daemons,
        Duration::from_secs(5),
        "a new leader well before the 10 s TTL",
    );
    assert_ne!(n, l);
    assert!(daemons[n].fencing_token().unwrap() > old_token);
    eprintln!("handover took {:?}", at - started);
    assert!(!daemons[l].socket.exists(), "socket removed on exit");
}

#[test]
fn sigkill_of_leader_elects_a_new_leader_once_its_lease_expires() {
    let etcd = Etcd::start();
    let mut daemons = three(&etcd, "kill");
    let l = wait_one_leader(&daemons, Duration::from_secs(10));
    let old_token = daemons[l].fencing_token().unwrap();
    daemons[l].kill9();
    let started = Instant::now();
    let (n, at) = next_leader(
        &daemons,
        Duration::from_secs(10),
        "a new leader after the TTL (3 s)",
    );
    // The lease was refreshed at most one keepalive interval (0.5 s) before the kill, so it
    // cannot expire, and nobody may lead, sooner than 2.5 s after it.
    assert!(
        at - started >= Duration::from_millis(2400),
        "a new leader {:?} after SIGKILL, while the old lease was alive",
        at - started
    );
    assert_ne!(n, l);
    assert!(daemons[n].fencing_token().unwrap() > old_token);
    eprintln!("failover after SIGKILL took {:?}", at - started);
    // The survivors agree.
    let survivors: Vec<_> = daemons.iter().filter(|d| d.role().is_some()).collect();
    assert_eq!(survivors.len(), 2);
    for d in survivors {
        assert_eq!(d.role().unwrap()["leader"]["id"], daemons[n].id());
    }
}

#[test]
fn fencing_tokens_strictly_increase_over_five_leaders() {
    let etcd = Etcd::start();
    let mut daemons = three(&etcd, "tokens");
    let mut tokens = Vec::new();
    for round in 0..5 {
        let l = wait_one_leader(&daemons, Duration::from_secs(10));
        tokens.push(daemons[l].fencing_token().unwrap());
        daemons[l].signal(Signal::SIGTERM);
        daemons[l].wait_exit(Duration::from_secs(5));
        if round < 4 {
            daemons[l].restart();
        }
    }
    assert!(
        tokens.windows(2).all(|w| w[0] < w[1]),
        "fencing tokens must strictly increase: {tokens:?}"
    );
}

#[test]
fn etcdctl_elect_observes_our_leader() {
    let etcd = Etcd::start();
    let daemons = three(&etcd, "interop");
    let l = wait_one_leader(&daemons, Duration::from_secs(10));
    let role = daemons[l].role().unwrap();
    let key = role["leader"]["key"].as_str().unwrap().to_string();
    // `etcdctl elect -l` prints the leader's key and value, then keeps observing.
    let mut cmd = std::process::Command::new("timeout");
    cmd.args([
        "2",
        etcdctl_binary().to_str().unwrap(),
        "--endpoints",
        &etcd.endpoint(),
        "elect",
        "-l",
        "interop",
    ])
    .env("ETCDCTL_API", "3");
    let out = cmd.output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some(key.as_str()), "etcdctl output: {text}");
    let value: serde_json::Value = serde_json::from_str(lines.next().unwrap()).unwrap();
    assert_eq!(value["id"], daemons[l].id());
    assert_eq!(value["http"], daemons[l].http.as_str());
    assert!(key.starts_with("interop/"));
    let lease_hex = key.trim_start_matches("interop/");
    assert!(
        lease_hex
            .chars()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
    );
}

#[test]
fn socket_file_is_private_replaces_stale_files_and_is_removed_on_exit() {
    let etcd = Etcd::start();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("api.sock");
    // A stale socket file, as a crashed process leaves it.
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    assert!(path.exists());

    let mut a = DaemonSpec::new(&etcd.endpoint(), "sock", "a")
        .socket(&path)
        .args(&["--socket-mode", "0600"])
        .start();
    a.wait_role("leader", Duration::from_secs(10));
    let meta = std::fs::metadata(&path).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    assert_eq!(a.role_socket().unwrap()["id"], "a");

    // A second daemon on a live socket refuses to start and says why.
    let mut b = DaemonSpec::new(&etcd.endpoint(), "sock", "b")
        .socket(&path)
        .start();
    let status = b.wait_exit(Duration::from_secs(10));
    assert!(!status.success());
    assert!(
        b.log_text().contains("another process is listening"),
        "{}",
        b.log_tail(10)
    );
    assert_eq!(
        a.role_socket().unwrap()["id"],
        "a",
        "the live socket is untouched"
    );

    a.signal(Signal::SIGTERM);
    assert!(a.wait_exit(Duration::from_secs(5)).success());
    assert!(!path.exists(), "socket removed on exit");
}

/// With no API at all (`--http off`, no socket) the daemon still elects and idles: a closed
/// control channel must not turn the owner loop into a busy loop.
#[test]
fn without_any_api_the_daemon_leads_and_idles() {
    let etcd = Etcd::start();
    let mut cmd = std::process::Command::new(electd_binary());
    cmd.args([
        "--endpoints",
        &etcd.endpoint(),
        "--election",
        "noapi",
        "--id",
        "quiet",
        "--ttl",
        "3s",
        "--stop-grace",
        "1s",
        "--http",
        "off",
    ])
    .stderr(std::process::Stdio::null());
    // Tied to the test process: killed even if an assertion below fails.
    let mut child = spawn_tied(cmd).unwrap();
    wait_until(Duration::from_secs(10), "the daemon's key in etcd", || {
        etcd.etcdctl_ok(&["get", "noapi/", "--prefix", "--print-value-only"])
            .contains("\"quiet\"")
    });
    let ticks = |pid: u32| -> u64 {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        let f: Vec<&str> = stat
            .rsplit_once(") ")
            .unwrap()
            .1
            .split_whitespace()
            .collect();
        f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
    };
    let before = ticks(child.id());
    std::thread::sleep(Duration::from_secs(2));
    let used = ticks(child.id()) - before;
    // A busy loop would burn ~200 ticks (2 s of CPU at 100 Hz); idle is a handful.
    assert!(
        used < 50,
        "idle daemon used {used} clock ticks of CPU in 2 s"
    );
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        Signal::SIGTERM,
    )
    .unwrap();
    assert!(child.wait().unwrap().success());
}
