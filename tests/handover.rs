//! Handing leadership over (issue 23): when the leader's electd dies, its freeze watchdog kills
//! the command's whole tree — a `setsid` escapee too —, marks the key and revokes the lease, so
//! the next leader starts at once instead of after the TTL (also with TLS and auth, and for a
//! sidecar only once the budget its app was given has run out). A leader that gives up on
//! purpose marks its key, and its successor starts at once; a leader's key that vanishes
//! without the mark (deleted or revoked by hand) makes the successor wait `--start-guard`, and
//! the deposed command is dead before the new one starts.

mod common;

use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::*;

/// A command that records `start` and a tick every 50 ms under its id, and starts a `setsid`
/// escapee (out of its group and session, its environment scrubbed of electd's variables, so
/// only what electd reported to the watchdog ties it to the command) that ticks as `ID.esc`.
fn escaping_script(ledger: &Path) -> String {
    let l = ledger.display();
    format!(
        "now() {{ date +%s%N; }}; id=$ELECTD_ID; t=$ELECTD_FENCING_TOKEN; \
         echo \"start $id $t $(now)\" >> {l}; \
         setsid env -u ELECTD_LEADER_KEY -u ELECTD_ID -u ELECTD_FENCING_TOKEN sh -c \
           \"echo start $id.esc $t \\$(date +%s%N) >> {l}; \
             while :; do echo tick $id.esc $t \\$(date +%s%N) >> {l}; sleep 0.05; done\" & \
         while :; do echo \"tick $id $t $(now)\" >> {l}; sleep 0.05; done"
    )
}

fn now_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

/// Per fencing token: the first start and the last sign of life of every process of that term
/// (the command and its escapee).
fn terms(path: &Path) -> Vec<(i64, u128, u128)> {
    let mut out: Vec<(i64, u128, u128)> = Vec::new();
    for r in runs(&ledger(path)) {
        match out.iter_mut().find(|t| t.0 == r.token) {
            Some(t) => {
                t.1 = t.1.min(r.start);
                t.2 = t.2.max(r.last);
            }
            None => out.push((r.token, r.start, r.last)),
        }
    }
    out.sort();
    out
}

/// No process of a term was alive when the next term started.
fn assert_terms_apart(path: &Path) {
    let t = terms(path);
    for w in t.windows(2) {
        assert!(
            w[0].2 < w[1].1,
            "term {} was still alive {} ms after term {} started: {:?}",
            w[0].0,
            (w[0].2 - w[1].1) / 1_000_000,
            w[1].0,
            ledger(path)
        );
    }
}

/// Both ids of term `token` have ticked (the command and its escapee run).
fn wait_term_running(path: &Path, token: i64) {
    wait_until(
        Duration::from_secs(5),
        "the command and its escapee",
        || {
            let rs = runs(&ledger(path));
            rs.iter()
                .filter(|r| r.token == token && r.last > r.start)
                .count()
                >= 2
        },
    );
}

/// kill -9 of the leader's electd, `rounds` times, with TTL 10 s: the next leader's command
/// starts within 1 s, and every process of the old one (the escapee too) was dead before.
fn kill_9_rounds(specs: Vec<DaemonSpec>, rounds: usize) {
    let dir = tempfile::tempdir().unwrap();
    let l = dir.path().join("ledger");
    let mut daemons: Vec<Daemon> = specs
        .into_iter()
        .map(|s| s.ttl("10s").sh(&escaping_script(&l)).start())
        .collect();
    let mut took = Vec::new();
    for round in 0..rounds {
        let leader = wait_one_leader(&daemons, Duration::from_secs(15));
        let token = daemons[leader].fencing_token().unwrap();
        wait_term_running(&l, token);
        let killed = now_ns();
        let at = Instant::now();
        daemons[leader].kill9();
        wait_until(Duration::from_secs(5), "the next leader's command", || {
            terms(&l).iter().any(|t| t.0 > token)
        });
        let next = terms(&l).into_iter().find(|t| t.0 > token).unwrap();
        let after = Duration::from_nanos((next.1 - killed) as u64);
        took.push(after);
        assert!(
            after < Duration::from_secs(1),
            "round {round}: the next command started {after:?} after kill -9 (TTL 10 s)\n{}",
            daemons[1 - leader].log_tail(40)
        );
        assert!(at.elapsed() < Duration::from_secs(5));
        assert_terms_apart(&l);
        daemons[leader].restart();
        daemons[leader].wait_role("follower", Duration::from_secs(10));
    }
    took.sort();
    eprintln!(
        "kill -9 → next leader's command, {rounds} rounds: median {:?}, max {:?}",
        took[took.len() / 2],
        took.last().unwrap()
    );
    // Nothing of any term outlived it: every escapee is gone.
    std::thread::sleep(Duration::from_millis(300));
    let last_token = terms(&l).last().unwrap().0;
    let late = terms(&l)
        .into_iter()
        .filter(|t| t.0 != last_token && t.2 > now_ns() - 250_000_000)
        .collect::<Vec<_>>();
    assert!(
        late.is_empty(),
        "processes of old terms still tick: {late:?}"
    );
}

#[test]
fn kill_9_of_the_leaders_electd_hands_over_within_a_second_and_nothing_escapes() {
    let etcd = Etcd::start();
    let specs = ["a", "b"]
        .iter()
        .map(|id| DaemonSpec::new(&etcd.endpoint(), "k9", id))
        .collect();
    kill_9_rounds(specs, 10);
}

#[test]
fn kill_9_hands_over_with_tls_and_auth_too() {
    let pki = Pki::generate();
    let etcd = Etcd::start_opts(
        EtcdOptions::new()
            .scheme("https")
            .args(&strs(&pki.etcd_args()))
            .etcdctl_args(&strs(&pki.etcdctl_args())),
    );
    etcd.etcdctl_ok(&["user", "add", "root", "--new-user-password=root-pw"]);
    etcd.etcdctl_ok(&["role", "add", "svc"]);
    etcd.etcdctl_ok(&[
        "role",
        "grant-permission",
        "svc",
        "--prefix=true",
        "readwrite",
        "k9tls/",
    ]);
    etcd.etcdctl_ok(&[
        "role",
        "grant-permission",
        "svc",
        "readwrite",
        "k9tls.floor",
    ]);
    etcd.etcdctl_ok(&["user", "add", "svc", "--new-user-password=svc-pw"]);
    etcd.etcdctl_ok(&["user", "grant-role", "svc", "svc"]);
    etcd.etcdctl_ok(&["auth", "enable"]);
    let dir = tempfile::tempdir().unwrap();
    let pw = dir.path().join("pw");
    std::fs::write(&pw, "svc-pw\n").unwrap();
    let tls = pki.electd_args();
    let specs = ["a", "b"]
        .iter()
        .map(|id| {
            DaemonSpec::new(&etcd.endpoint(), "k9tls", id)
                .args(&strs(&tls))
                .args(&["--etcd-user", "svc", "--etcd-password-file"])
                .args(&[pw.to_str().unwrap()])
        })
        .collect();
    kill_9_rounds(specs, 3);
    // The credentials never reached another process's command line or environment.
    for p in std::fs::read_dir("/proc").unwrap().flatten() {
        let path = p.path();
        for what in ["cmdline", "environ"] {
            if let Ok(bytes) = std::fs::read(path.join(what)) {
                let text = String::from_utf8_lossy(&bytes);
                assert!(
                    !text.contains("svc-pw"),
                    "{} {what} holds the password",
                    path.display()
                );
            }
        }
    }
}

/// Delete the leader's key, or revoke its lease, by hand — no clean-release mark — 10 times:
/// the successor waits its start guard (1 s here) from the deletion, and the deposed command
/// (killed at once) was dead before the new one started.
#[test]
fn a_key_deleted_or_a_lease_revoked_by_hand_makes_the_successor_wait_the_guard() {
    let etcd = Etcd::start();
    let dir = tempfile::tempdir().unwrap();
    let l = dir.path().join("ledger");
    let daemons: Vec<Daemon> = ["a", "b"]
        .iter()
        .map(|id| {
            DaemonSpec::new(&etcd.endpoint(), "unmarked", id)
                .ttl("10s")
                .args(&["--start-guard", "1s"])
                .sh(&escaping_script(&l))
                .start()
        })
        .collect();
    let mut waited = Vec::new();
    let mut deaths = Vec::new();
    for round in 0..10 {
        let leader = wait_one_leader(&daemons, Duration::from_secs(15));
        let token = daemons[leader].fencing_token().unwrap();
        wait_term_running(&l, token);
        let key = daemons[leader].role().unwrap()["key"]
            .as_str()
            .unwrap()
            .to_string();
        let at = now_ns();
        if round % 2 == 0 {
            etcd.etcdctl_ok(&["del", &key]);
        } else {
            let lease = key.rsplit('/').next().unwrap().to_string();
            etcd.etcdctl_ok(&["lease", "revoke", &lease]);
        }
        wait_until(Duration::from_secs(5), "the successor's command", || {
            terms(&l).iter().any(|t| t.0 > token)
        });
        let next = terms(&l).into_iter().find(|t| t.0 > token).unwrap();
        let after = Duration::from_nanos((next.1 - at) as u64);
        waited.push(after);
        assert!(
            after >= Duration::from_millis(1000),
            "round {round}: the successor started {after:?} after the unmarked deletion, inside its 1 s start guard"
        );
        assert!(after < Duration::from_secs(4), "round {round}: {after:?}");
        assert_terms_apart(&l);
        // The deposed command died at once, not after its stop grace.
        let old = terms(&l).into_iter().find(|t| t.0 == token).unwrap();
        let died = Duration::from_nanos(old.2.saturating_sub(at) as u64);
        assert!(died < Duration::from_millis(500), "round {round}: {died:?}");
        deaths.push(died);
    }
    waited.sort();
    deaths.sort();
    eprintln!(
        "unmarked deletion → successor's command: min {:?}, max {:?} (start guard 1 s); \
         the deposed command's last sign of life: median {:?}, max {:?} after the deletion",
        waited[0],
        waited.last().unwrap(),
        deaths[deaths.len() / 2],
        deaths.last().unwrap()
    );
}

/// A leader that gives up on purpose marks its key: the successor starts at once, with no
/// start guard to wait (2 s here).
#[test]
fn a_clean_release_is_not_guarded() {
    let etcd = Etcd::start();
    let dir = tempfile::tempdir().unwrap();
    let l = dir.path().join("ledger");
    let daemons: Vec<Daemon> = ["a", "b"]
        .iter()
        .map(|id| {
            DaemonSpec::new(&etcd.endpoint(), "marked", id)
                .ttl("10s")
                .args(&["--start-guard", "2s"])
                .sh(&ticking_script(&l))
                .start()
        })
        .collect();
    for round in 0..3 {
        let leader = wait_one_leader(&daemons, Duration::from_secs(15));
        let token = daemons[leader].fencing_token().unwrap();
        wait_until(Duration::from_secs(5), "the command", || {
            starts(&ledger(&l)).iter().any(|r| r.token == token)
        });
        let (code, body) = daemons[leader].control("/resign");
        assert_eq!(code, 200, "{body}");
        wait_until(Duration::from_secs(5), "the successor's command", || {
            starts(&ledger(&l)).iter().any(|r| r.token > token)
        });
        let records = ledger(&l);
        let stopped = runs(&records)
            .into_iter()
            .find(|r| r.token == token)
            .unwrap();
        assert!(stopped.stopped, "round {round}: a graceful stop");
        let next = starts(&records)
            .into_iter()
            .find(|r| r.token > token)
            .unwrap()
            .at;
        let gap = Duration::from_nanos((next - stopped.last) as u64);
        assert!(
            gap < Duration::from_secs(1),
            "round {round}: {gap:?} from the old command's stop to the new one's start (guard 2 s)"
        );
        assert_no_overlap(&records);
    }
}

/// A sidecar leader's electd killed: its watchdog revokes only once the budget the app was
/// given has run out plus the stop grace — before the lease would have expired.
#[test]
fn kill_9_of_a_sidecar_hands_over_once_the_apps_budget_has_run_out() {
    let etcd = Etcd::start();
    let mut daemons: Vec<Daemon> = ["a", "b"]
        .iter()
        .map(|id| {
            DaemonSpec::new(&etcd.endpoint(), "k9side", id)
                .ttl("10s")
                .start()
        })
        .collect();
    let leader = wait_one_leader(&daemons, Duration::from_secs(15));
    // The app asks (a claim): its budget, counted from the request.
    let asked = Instant::now();
    let (code, body) = http_get(&daemons[leader].http, "/role").unwrap();
    assert_eq!(code, 200);
    let doc: serde_json::Value = serde_json::from_str(&body).unwrap();
    let valid = Duration::from_millis(doc["valid_ms"].as_u64().unwrap());
    let grace = Duration::from_secs(1);
    daemons[leader].kill9();
    let other = 1 - leader;
    wait_until(Duration::from_secs(12), "the other replica to lead", || {
        daemons[other].is_leader()
    });
    let after = asked.elapsed();
    eprintln!("sidecar: led again {after:?} after the claim (budget {valid:?} + grace {grace:?})");
    assert!(
        after >= valid + grace,
        "led {after:?} after a claim of {valid:?} (+ {grace:?} grace): the app could still act"
    );
    // The lease could expire no sooner than the margin (1 s) after the budget and grace:
    // the handover came before that.
    assert!(
        after < valid + grace + Duration::from_millis(900),
        "led {after:?} after the claim: the lease was left to expire"
    );
}
