//! `deploy/haproxy/haproxy.cfg` in front of three replicas (Debian's haproxy, installed by
//! scripts/setup.sh): HAProxy checks each electd's `/leader` and reaches the leader's app, and
//! follows a graceful handoff and a SIGKILLed leader.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

struct Replica {
    d: Daemon,
    app: NameApp,
}

/// The shipped configuration with loopback addresses: HAProxy listens on `bind`, and each
/// `server` line of the example becomes one replica's (app address, electd HTTP port), with
/// the example's check options unchanged.
fn config(example: &str, bind: &str, replicas: &[(String, String, u16)]) -> String {
    let mut out = String::new();
    let mut template: Option<Vec<String>> = None;
    for line in example.lines() {
        let t = line.trim_start();
        if t.starts_with("bind ") {
            out.push_str(&format!("    bind {bind}\n"));
        } else if t.starts_with("server ") {
            // server NAME ADDR OPTIONS...: keep OPTIONS, swap the port after `port`.
            template
                .get_or_insert_with(|| t.split_whitespace().skip(3).map(String::from).collect());
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    let options = template.expect("the example has server lines");
    assert!(
        options.iter().any(|o| o == "port"),
        "the example's server lines check electd's port: {options:?}"
    );
    for (name, app, port) in replicas {
        let opts: Vec<String> = options
            .iter()
            .enumerate()
            .map(|(i, o)| {
                if i > 0 && options[i - 1] == "port" {
                    port.to_string()
                } else {
                    o.clone()
                }
            })
            .collect();
        out.push_str(&format!("    server {name} {app} {}\n", opts.join(" ")));
    }
    out
}

fn haproxy_binary() -> PathBuf {
    which("haproxy").unwrap_or_else(|| {
        panic!(
            "haproxy not found: this test runs Debian's haproxy in front of the replicas; \
             install it with `apt-get install -y haproxy` (scripts/setup.sh does)"
        )
    })
}

fn which(bin: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(bin))
        .find(|p| p.is_file())
}

struct Haproxy(Child);

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_haproxy(cfg: &Path, log: &Path) -> Haproxy {
    let out = std::fs::File::create(log).unwrap();
    let mut cmd = Command::new(haproxy_binary());
    cmd.args(["-db", "-f"])
        .arg(cfg)
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out);
    Haproxy(spawn_tied(cmd).expect("start haproxy"))
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
    let example = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/haproxy/haproxy.cfg"),
    )
    .unwrap();
    let cfg = dir.path().join("haproxy.cfg");
    std::fs::write(&cfg, config(&example, &bind, &servers)).unwrap();
    let check = Command::new(haproxy_binary())
        .args(["-c", "-f"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    let log = dir.path().join("haproxy.log");
    let _haproxy = start_haproxy(&cfg, &log);

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
