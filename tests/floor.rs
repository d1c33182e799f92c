//! A wiped etcd never hands out an old fencing token (issue 25, item 2): a replica that
//! remembers the old history writes the election's floor record (`<election>.floor`) and
//! raises the rebuilt etcd's revision past it, so that a replica that never saw the old history
//! cannot lead with a token handed out before; `--state-file` makes a replica remember across
//! its own restarts. The case nothing can protect — every replica restarted without state
//! after the rebuild — is shown for what the alert sees.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;
use nix::sys::signal::Signal;
use serde_json::Value;

const EXIT_CONFIG: i32 = 78;

/// Every key under `prefix` with its create revision.
fn keys_under(etcd: &Etcd, prefix: &str) -> Vec<(String, i64)> {
    let out = etcd.etcdctl_ok(&["get", "--prefix", prefix, "-w", "json"]);
    let doc: Value = serde_json::from_str(&out).unwrap();
    doc["kvs"]
        .as_array()
        .map(|kvs| {
            kvs.iter()
                .map(|kv| {
                    let key = kv["key"].as_str().unwrap();
                    (
                        String::from_utf8(base64_decode(key)).unwrap(),
                        kv["create_revision"].as_i64().unwrap(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The floor record's value, if it exists.
fn floor_record(etcd: &Etcd, election: &str) -> Option<i64> {
    let out = etcd.etcdctl_ok(&["get", &format!("{election}.floor"), "--print-value-only"]);
    (!out.is_empty()).then(|| out.trim().parse().expect("the floor record is a revision"))
}

/// etcdctl's JSON prints keys in base64.
fn base64_decode(s: &str) -> Vec<u8> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = Vec::new();
    let (mut acc, mut bits) = (0u32, 0);
    for c in s.bytes().filter(|c| *c != b'=') {
        let v = ALPHABET.iter().position(|a| *a == c).expect("base64") as u32;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    out
}

fn logs(daemons: &[&Daemon]) -> String {
    daemons
        .iter()
        .map(|d| format!("==== {}\n{}", d.id(), d.log_tail(80)))
        .collect()
}

/// The one daemon that leads with a token above `old`, within `within`. A leader still
/// reporting `old` itself is the old leader within its budget (it has not noticed yet), not
/// a repeat; any other token must be above it.
fn wait_leader_above(daemons: &[&Daemon], old: i64, within: Duration) -> (usize, i64) {
    let mut found = None;
    let deadline = std::time::Instant::now() + within;
    while std::time::Instant::now() < deadline {
        let leading: Vec<(usize, i64)> = daemons
            .iter()
            .enumerate()
            .filter(|(_, d)| d.role_name().as_deref() == Some("leader"))
            .filter_map(|(i, d)| Some((i, d.fencing_token()?)))
            .filter(|(_, token)| *token != old)
            .collect();
        if let [(i, token)] = leading[..] {
            assert!(
                token > old,
                "{} leads with token {token}, not above {old}; logs:\n{}",
                daemons[i].id(),
                logs(daemons)
            );
            found = Some((i, token));
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    found.unwrap_or_else(|| {
        panic!(
            "no replica led within {within:?} after the rebuild; logs:\n{}",
            logs(daemons)
        )
    })
}

/// Wait for the command started with `token` to record its start, and return every start's
/// token.
fn started_tokens(l: &Path, token: i64) -> Vec<i64> {
    wait_until(Duration::from_secs(5), "the leader's command", || {
        starts(&ledger(l)).iter().any(|s| s.token == token)
    });
    starts(&ledger(l)).iter().map(|s| s.token).collect()
}

/// The reproduction, made deterministic. A leads at a token above 30; etcd is killed,
/// wiped and started again while A is frozen, so that B — started after the wipe, never having
/// seen the old history — meets the rebuilt etcd first and creates its candidate key at a
/// revision handed out before (B's start guard keeps it from leading at once, as a replica just
/// started does). When A thaws it finds the history rewound, writes the floor record, removes
/// B's key and raises the revision: whoever leads next has a token above A's old one, and no
/// command ever starts with a repeated token.
#[test]
fn a_replica_that_never_saw_the_old_history_does_not_repeat_a_token() {
    let mut etcd = Etcd::start();
    etcd.bump_revision(30);
    let dir = tempfile::tempdir().unwrap();
    let l = dir.path().join("ledger");
    let a = DaemonSpec::new(&etcd.endpoint(), "floor", "a")
        .sh(&ledger_script(&l))
        .start();
    a.wait_role("leader", Duration::from_secs(10));
    let old = a.fencing_token().unwrap();
    assert!(old > 30, "token {old}");
    assert_eq!(started_tokens(&l, old), [old]);

    a.signal(Signal::SIGSTOP);
    etcd.kill_and_rebuild_empty();
    assert!(etcd.revision() < old);
    let b = DaemonSpec::new(&etcd.endpoint(), "floor", "b")
        .sh(&ledger_script(&l))
        .args(&["--start-guard", "8s"])
        .start();
    wait_until(
        Duration::from_secs(10),
        "B's candidate key in the rebuilt etcd",
        || !keys_under(&etcd, "floor/").is_empty(),
    );
    let stale = keys_under(&etcd, "floor/");
    assert!(
        stale.iter().all(|(_, cr)| *cr <= old),
        "B's key repeats a revision handed out before: {stale:?} (old token {old})"
    );
    assert_eq!(floor_record(&etcd, "floor"), None);
    a.signal(Signal::SIGCONT);

    let (_, token) = wait_leader_above(&[&a, &b], old, Duration::from_secs(20));
    let tokens = started_tokens(&l, token);
    assert!(
        tokens[1..].iter().all(|t| *t > old),
        "a command started with a repeated token: {tokens:?} (old {old}); logs:\n{}",
        logs(&[&a, &b])
    );
    // The floor record holds what A had seen; B's old key is gone, every key is above it.
    let floor = floor_record(&etcd, "floor").expect("the floor record");
    assert!(floor >= old, "floor {floor}, old token {old}");
    let now = keys_under(&etcd, "floor/");
    assert!(
        now.iter().all(|(_, cr)| *cr > floor),
        "{now:?} (floor {floor})"
    );
    let a_log = a.log_text();
    assert!(a_log.contains("history was rewound"), "{a_log}");
    assert!(
        a_log.contains("recorded the highest revision seen in the election's floor record"),
        "{a_log}"
    );
    assert!(a_log.contains(&stale[0].0), "A names the key it removed");
    assert!(
        a_log.contains("raised etcd's revision past the floor"),
        "{a_log}"
    );
    // /role and the command's environment agree on the token.
    let leader = if a.role_name().as_deref() == Some("leader") {
        &a
    } else {
        &b
    };
    assert_eq!(leader.fencing_token(), Some(token));
    // The other follows the real leader: not a key the rebuilt etcd lost.
    let other = if leader.id() == "a" { &b } else { &a };
    wait_until(
        Duration::from_secs(5),
        "the other to follow the leader",
        || {
            other.role().is_some_and(|r| {
                r["role"] == "follower"
                    && r["leader"]["id"] == leader.id()
                    && r["leader"]["create_revision"] == token
            })
        },
    );
    assert_no_overlap(&ledger(&l));
}

/// A replica that remembers only through its state file: A leads at a token above 30 with
/// `--state-file`, is killed, etcd is wiped, and A starts again alone — nobody else remembers.
/// It reads the file, finds the rebuilt etcd below it, writes the floor record, raises the
/// revision and leads only with a token above its old one.
#[test]
fn a_replica_restarted_with_its_state_file_does_not_repeat_a_token() {
    let mut etcd = Etcd::start();
    etcd.bump_revision(30);
    let dir = tempfile::tempdir().unwrap();
    let l = dir.path().join("ledger");
    let state = dir.path().join("a.state");
    let mut a = DaemonSpec::new(&etcd.endpoint(), "floor2", "a")
        .sh(&ledger_script(&l))
        .args(&["--state-file", state.to_str().unwrap()])
        .start();
    a.wait_role("leader", Duration::from_secs(10));
    let old = a.fencing_token().unwrap();
    started_tokens(&l, old);
    // Written before the key could lead: the file covers the token.
    let doc: Value = serde_json::from_str(&std::fs::read_to_string(&state).unwrap()).unwrap();
    let kept = doc["revision"].as_i64().unwrap();
    assert!(kept >= old, "state {kept}, token {old}");

    a.kill9();
    etcd.kill_and_rebuild_empty();
    assert!(etcd.revision() < old);
    a.restart();
    let (_, token) = wait_leader_above(&[&a], old, Duration::from_secs(20));
    let tokens = started_tokens(&l, token);
    assert_eq!(tokens, [old, token], "{}", a.log_tail(40));
    assert!(floor_record(&etcd, "floor2").is_some_and(|f| f >= kept));
    let log = a.log_text();
    assert!(log.contains("state file read"), "{log}");
    assert!(
        log.contains("raised etcd's revision past the floor"),
        "{log}"
    );
    // The file keeps up: it covers the new token too.
    let doc: Value = serde_json::from_str(&std::fs::read_to_string(&state).unwrap()).unwrap();
    assert!(doc["revision"].as_i64().unwrap() >= token);
}

/// What cannot be protected: every replica restarted without a state file after the rebuild.
/// Nobody remembers, so the token starts again below the old one. electd says at start that it
/// keeps nothing, and `electd_fencing_token` shows the token going back: the alert compares it
/// with its own past (docs/operations.md).
#[test]
fn every_replica_restarted_without_state_after_a_rebuild_cannot_be_protected() {
    let mut etcd = Etcd::start();
    etcd.bump_revision(30);
    let mut daemons: Vec<Daemon> = ["a", "b"]
        .iter()
        .map(|id| DaemonSpec::new(&etcd.endpoint(), "floor3", id).start())
        .collect();
    let leader = wait_one_leader(&daemons, Duration::from_secs(10));
    let old = daemons[leader].fencing_token().unwrap();
    let (_, m) = http_get(&daemons[leader].http, "/metrics").unwrap();
    assert!(
        m.contains(&format!(
            "electd_fencing_token{{election=\"floor3\"}} {old}"
        )),
        "{m}"
    );
    for d in &mut daemons {
        d.kill9();
    }
    etcd.kill_and_rebuild_empty();
    for d in &mut daemons {
        d.restart();
    }
    let leader = wait_one_leader(&daemons, Duration::from_secs(20));
    let token = daemons[leader].fencing_token().unwrap();
    assert!(
        token < old,
        "token {token} after {old}: something remembered"
    );
    let (_, m) = http_get(&daemons[leader].http, "/metrics").unwrap();
    assert!(
        m.contains(&format!(
            "electd_fencing_token{{election=\"floor3\"}} {token}"
        )),
        "{m}"
    );
    assert!(
        m.contains("electd_history_rewound{election=\"floor3\"} 0"),
        "{m}"
    );
    assert_eq!(floor_record(&etcd, "floor3"), None);
    for d in &daemons {
        assert!(
            d.log_text().contains("no --state-file"),
            "{}",
            d.log_tail(20)
        );
    }
}

/// A floor record further above etcd's revision than electd closes by itself: the replica
/// refuses to lead and says why — the floor, the revision, what to do — in /role, the log and
/// `electd_history_rewound`.
#[test]
fn a_floor_too_far_above_the_revision_is_refused_with_what_to_do() {
    let etcd = Etcd::start();
    etcd.etcdctl_ok(&["put", "floor4.floor", "5000000"]);
    let dir = tempfile::tempdir().unwrap();
    let l = dir.path().join("ledger");
    let b = DaemonSpec::new(&etcd.endpoint(), "floor4", "b")
        .sh(&ledger_script(&l))
        .start();
    wait_until(Duration::from_secs(10), "B to refuse", || {
        b.role().is_some_and(|r| {
            r["eligible"] == false
                && r["reason"]
                    .as_str()
                    .is_some_and(|s| s.contains("--bump-revision"))
        })
    });
    let reason = b.role().unwrap()["reason"].as_str().unwrap().to_string();
    for needed in ["below 5000000", "floor4.floor", "--state-file", "100000"] {
        assert!(reason.contains(needed), "{needed:?} missing: {reason}");
    }
    std::thread::sleep(Duration::from_secs(2));
    assert_ne!(b.role_name().as_deref(), Some("leader"));
    assert!(ledger(&l).is_empty());
    let (_, m) = http_get(&b.http, "/metrics").unwrap();
    assert!(
        m.contains("electd_history_rewound{election=\"floor4\"} 1"),
        "{m}"
    );
    assert!(b.log_text().contains("more than electd closes by itself"));
    assert_eq!(floor_record(&etcd, "floor4"), Some(5_000_000));
    assert!(keys_under(&etcd, "floor4/").is_empty());
}

/// A state file electd cannot use stops it at start (exit 78), naming the file and what to do;
/// by flag, environment variable or config file key alike; and one it cannot write (its
/// directory missing) too, before it touches etcd.
#[test]
fn a_bad_state_file_is_a_clear_error_naming_the_file() {
    let etcd = Etcd::start();
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.state");
    std::fs::write(&bad, "revision = 12\n").unwrap();
    let config = dir.path().join("electd.toml");
    std::fs::write(&config, format!("state_file = \"{}\"\n", bad.display())).unwrap();
    let missing = dir.path().join("nowhere/a.state");
    let cases: Vec<(&str, DaemonSpec, &[&str])> = vec![
        (
            "flag",
            DaemonSpec::new(&etcd.endpoint(), "floor5", "f")
                .args(&["--state-file", bad.to_str().unwrap()]),
            &["bad.state", "--state-file", "not electd's", "revision"],
        ),
        (
            "environment",
            DaemonSpec::new(&etcd.endpoint(), "floor5", "e")
                .env("ELECTD_STATE_FILE", bad.to_str().unwrap()),
            &["bad.state", "--state-file", "not electd's"],
        ),
        (
            "config file",
            DaemonSpec::new(&etcd.endpoint(), "floor5", "c")
                .args(&["--config", config.to_str().unwrap()]),
            &["bad.state", "--state-file", "not electd's"],
        ),
        (
            "missing directory",
            DaemonSpec::new(&etcd.endpoint(), "floor5", "m")
                .args(&["--state-file", missing.to_str().unwrap()]),
            &[
                "cannot write the state file",
                "nowhere/a.state",
                "--state-file",
            ],
        ),
    ];
    for (name, spec, needles) in cases {
        let mut d = spec.start();
        let status = d.wait_exit(Duration::from_secs(10));
        let log = d.log_text();
        assert_eq!(status.code(), Some(EXIT_CONFIG), "{name}: {log}");
        for n in needles {
            assert!(log.contains(n), "{name}: {n:?} missing from {log}");
        }
        assert!(!log.contains("panicked"), "{name}: {log}");
    }
    // Nothing was written to etcd, and the bad file is left as it was.
    assert!(keys_under(&etcd, "floor5").is_empty());
    assert_eq!(std::fs::read_to_string(&bad).unwrap(), "revision = 12\n");
}
