//! What counts as a candidate: only keys of exactly the candidate form, `<election>/<lease id
//! in hex>`, bound to the lease their name says. Nested elections, their slot records, keys
//! written by hand and candidate keys rewritten by another writer are never followed as leader.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

fn leader_id(d: &Daemon) -> Option<String> {
    d.role()
        .and_then(|r| r["leader"]["id"].as_str().map(str::to_string))
}

#[test]
fn nested_elections_and_their_slot_records_are_not_candidates() {
    let etcd = Etcd::start();
    // The nested election and elect-run's records for `svc/job` exist before `svc`'s replica:
    // their keys have the lowest create revisions under `svc/`.
    let sub = DaemonSpec::new(&etcd.endpoint(), "svc/sub", "sub").start();
    sub.wait_role("leader", Duration::from_secs(10));
    let job = Command::new(env!("CARGO_BIN_EXE_elect-run"))
        .args([
            "--endpoints",
            &etcd.endpoint(),
            "--election",
            "svc/job",
            "--id",
            "job",
            "--ttl",
            "3s",
            "--stop-grace",
            "1s",
            "--once-per",
            "60s",
            "--",
            "true",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    assert_eq!(
        job.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&job.stderr)
    );
    let slots = etcd.etcdctl_ok(&["get", "svc/job.slots/", "--prefix", "--keys-only"]);
    assert!(
        !slots.trim().is_empty(),
        "a slot record under svc/: {slots}"
    );

    let top = DaemonSpec::new(&etcd.endpoint(), "svc", "top").start();
    top.wait_role("leader", Duration::from_secs(10));
    assert_eq!(leader_id(&top).as_deref(), Some("top"));
    assert!(top.is_leader());
    assert_eq!(leader_id(&sub).as_deref(), Some("sub"));
    assert!(sub.is_leader());
    let (code, body) = http_get(&top.http, "/members").unwrap();
    assert_eq!(code, 200);
    let m: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(m["members"].as_array().unwrap().len(), 1, "{m}");
    assert_eq!(
        m["foreign"].as_array().unwrap().len(),
        0,
        "nested keys are theirs: {m}"
    );
}

/// A rewrite of the leader's key by another writer is, like a delete by hand, a change from
/// outside: the leader notices at once (not at its TTL) and stops its command, and the next
/// leader does not wait for that stop — the fencing token is what protects against the overlap
/// (docs/operations.md).
#[test]
fn foreign_and_overwritten_keys_are_ignored_and_an_overwritten_leader_steps_down() {
    let etcd = Etcd::start();
    let dir = tempfile::tempdir().unwrap();
    let l = dir.path().join("ledger");
    // A key written by hand, without a lease, at the head of the queue.
    etcd.etcdctl_ok(&["put", "fk/zzz", "foo"]);
    let a = DaemonSpec::new(&etcd.endpoint(), "fk", "a")
        .ttl("10s")
        .sh(&ticking_script(&l))
        .start();
    a.wait_role("leader", Duration::from_secs(10));
    assert_eq!(leader_id(&a).as_deref(), Some("a"));
    wait_until(
        Duration::from_secs(5),
        "a warning about the foreign key",
        || a.log_text().contains("not a candidate"),
    );
    let (_, metrics) = http_get(&a.http, "/metrics").unwrap();
    assert!(
        metrics.contains("electd_foreign_keys_total{election=\"fk\"} 1"),
        "{metrics}"
    );
    let (_, body) = http_get(&a.http, "/members").unwrap();
    let m: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(m["foreign"][0]["key"], "fk/zzz", "{m}");
    assert_eq!(m["members"][0]["id"], "a", "{m}");

    let b = DaemonSpec::new(&etcd.endpoint(), "fk", "b")
        .ttl("10s")
        .sh(&ticking_script(&l))
        .start();
    b.wait_role("follower", Duration::from_secs(10));
    assert_eq!(leader_id(&b).as_deref(), Some("a"));
    wait_until(Duration::from_secs(5), "a's command", || {
        !starts(&ledger(&l)).is_empty()
    });
    let token = a.fencing_token().unwrap();

    // Another writer rewrites the leader's key, dropping its lease.
    let key = a.role().unwrap()["key"].as_str().unwrap().to_string();
    let rewritten = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    etcd.etcdctl_ok(&["put", &key, "foo"]);
    wait_until(Duration::from_secs(10), "b to lead", || b.is_leader());
    assert!(b.fencing_token().unwrap() > token);
    wait_until(Duration::from_secs(5), "a to follow b", || {
        leader_id(&a).as_deref() == Some("b")
    });
    assert!(!a.is_leader());
    // Nobody follows the rewritten key; a rejoined under a new key (its lease survived the
    // rewrite, so the key has the same name and a new create revision).
    let members = http_get(&b.http, "/members").unwrap().1;
    let members: serde_json::Value = serde_json::from_str(&members).unwrap();
    let a_key = members["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["id"] == "a")
        .expect("a is a candidate again")
        .clone();
    assert!(
        a_key["create_revision"].as_i64().unwrap() > token,
        "{a_key}"
    );
    let _ = &key;
    wait_until(Duration::from_secs(5), "b's command", || {
        starts(&ledger(&l)).iter().any(|r| r.id == "b")
    });
    // Taken away, not given up: a's command is killed at once (no stop record), before b's
    // starts (b waited its start guard).
    let ended = wait_run_end(&l, token, Duration::from_secs(2));
    let b_start = starts(&ledger(&l))
        .iter()
        .find(|r| r.id == "b")
        .map(|r| r.at)
        .unwrap();
    assert!(ended < b_start, "a's command was alive when b's started");
    // At once: well inside the 10 s TTL.
    let took = Duration::from_nanos(ended.saturating_sub(rewritten) as u64);
    assert!(
        took < Duration::from_millis(2500),
        "stopped {took:?} after the rewrite"
    );
    // The key rewritten without a lease stays, ignored.
    let left = etcd.etcdctl_ok(&["get", &key, "--print-value-only"]);
    assert_eq!(left.trim(), "foo");
}
