//! Role-change hooks (`--on-role-change`) against a real etcd: they run in order with their
//! environment, and a hook that hangs delays neither the election nor the wrapped command.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::*;

/// A hook that appends one line per change: role, previous role, id, election, leader, token.
fn recording(file: &Path) -> String {
    format!(
        "echo \"$ELECTD_ROLE $ELECTD_PREV_ROLE $ELECTD_ID $ELECTD_ELECTION \
         ${{ELECTD_LEADER_ID:--}} ${{ELECTD_FENCING_TOKEN:--}}\" >> {}",
        file.display()
    )
}

fn hook_metric(d: &Daemon, result: &str) -> f64 {
    let (_, page) = http_get(&d.http, "/metrics").unwrap();
    metric_sum(
        &page,
        "electd_role_change_hooks_total",
        &[&format!("result=\"{result}\"")],
    )
}

#[test]
fn hooks_run_in_order_with_the_role_change_in_their_environment() {
    let etcd = Etcd::start();
    let dir = tempfile::tempdir().unwrap();
    let (fa, fb) = (dir.path().join("a"), dir.path().join("b"));
    let a = DaemonSpec::new(&etcd.endpoint(), "hooks", "a")
        .args(&["--on-role-change", &recording(&fa)])
        .start();
    wait_until(Duration::from_secs(10), "a to lead", || a.is_leader());
    let t1 = a.fencing_token().unwrap();
    let b = DaemonSpec::new(&etcd.endpoint(), "hooks", "b")
        .args(&["--on-role-change", &recording(&fb)])
        .start();
    wait_until(Duration::from_secs(5), "b's hook", || {
        !read_lines(&fb).is_empty()
    });
    assert_eq!(
        read_lines(&fb),
        [format!("follower candidate b hooks a {t1}")],
        "b found a leading"
    );
    // A replica that has just started does not know how the leader before it left: it would
    // wait its start guard (250 ms) before leading, and pass through `candidate`.
    std::thread::sleep(Duration::from_millis(300));
    let (code, reply) = a.control("/resign");
    assert_eq!(code, 200, "{reply}");
    wait_until(Duration::from_secs(5), "b to lead", || b.is_leader());
    let t2 = b.fencing_token().unwrap();
    assert!(t2 > t1);
    wait_until(Duration::from_secs(5), "the hooks of the handoff", || {
        read_lines(&fb).len() == 2
            && read_lines(&fa)
                .last()
                .is_some_and(|l| l.starts_with("follower"))
    });
    assert_eq!(
        read_lines(&fb),
        [
            format!("follower candidate b hooks a {t1}"),
            format!("leader follower b hooks b {t2}"),
        ]
    );
    // a: elected, then out of the lead; whatever it passed through on the way back (a short
    // spell as candidate), its changes are consecutive and end as b's follower.
    let la = read_lines(&fa);
    assert_eq!(la[0], format!("leader candidate a hooks a {t1}"), "{la:?}");
    assert_eq!(
        la.last().unwrap(),
        &format!("follower {} a hooks b {t2}", prev_role(&la))
    );
    for w in la.windows(2) {
        let role = w[0].split(' ').next().unwrap();
        let prev = w[1].split(' ').nth(1).unwrap();
        assert_eq!(
            role, prev,
            "each hook's previous role is the role before: {la:?}"
        );
    }
    // Shutdown is a change too: the hook runs before electd exits.
    let mut b = b;
    b.signal(nix::sys::signal::Signal::SIGTERM);
    assert!(b.wait_exit(Duration::from_secs(10)).success());
    assert_eq!(
        read_lines(&fb).last().unwrap(),
        "stopping leader b hooks - -",
        "{:?}",
        read_lines(&fb)
    );
    assert!(hook_metric(&a, "ok") >= 2.0);
}

/// The previous role on the last line of a hook file.
fn prev_role(lines: &[String]) -> String {
    lines
        .last()
        .and_then(|l| l.split(' ').nth(1))
        .unwrap_or_default()
        .to_string()
}

#[test]
fn a_hook_that_hangs_delays_nothing_and_is_killed_after_its_timeout() {
    let etcd = Etcd::start();
    let dir = tempfile::tempdir().unwrap();
    let ledger = dir.path().join("ledger");
    let pids = dir.path().join("hook-pids");
    let hook = format!(
        "echo \"$ELECTD_ID $$\" >> {}; exec sleep 1000",
        pids.display()
    );
    let spec = |id: &str| {
        DaemonSpec::new(&etcd.endpoint(), "hang", id)
            .args(&["--on-role-change", &hook, "--on-role-change-timeout", "2s"])
            .sh(&format!(
                "echo \"$ELECTD_ID start\" >> {}; exec sleep 1000",
                ledger.display()
            ))
    };
    let a = spec("a").start();
    wait_until(Duration::from_secs(10), "a to lead", || a.is_leader());
    // The command starts with its hook still hanging.
    wait_until(Duration::from_secs(2), "a's command", || {
        read_lines(&ledger).contains(&"a start".to_string())
    });
    let b = spec("b").start();
    wait_until(Duration::from_secs(5), "b to follow", || {
        b.role().is_some_and(|r| r["role"] == "follower")
    });
    // A handoff with every hook hanging is as quick as without: a stops its command (1 s
    // grace at most; `sleep` stops at once on SIGTERM), b leads and starts its own.
    let asked = Instant::now();
    let (code, reply) = a.control("/resign");
    assert_eq!(code, 200, "{reply}");
    wait_until(Duration::from_secs(5), "b's command", || {
        read_lines(&ledger).contains(&"b start".to_string())
    });
    let took = asked.elapsed();
    eprintln!("handoff with hanging hooks: {took:?}");
    assert!(took < Duration::from_millis(1500), "{took:?}");
    // The hanging hooks are killed after their timeout and counted.
    wait_until(Duration::from_secs(8), "a hook timeout counted", || {
        hook_metric(&a, "timeout") >= 1.0
    });
    // The first hook (a's, on being elected) is gone, killed.
    let pid_of = |line: &str| -> i32 { line.split(' ').nth(1).unwrap().parse().unwrap() };
    let first = pid_of(&read_lines(&pids)[0]);
    assert!(!alive(first), "hook {first} still runs after its timeout");
    assert!(
        a.log_text()
            .contains("role-change hook killed after its timeout")
    );
    // electd killed with SIGKILL takes its running hook with it.
    let mut a = a;
    wait_until(Duration::from_secs(5), "a hook of a's to run", || {
        read_lines(&pids)
            .iter()
            .filter(|l| l.starts_with("a "))
            .any(|l| alive(pid_of(l)))
    });
    a.kill9();
    let a_hooks: Vec<i32> = read_lines(&pids)
        .iter()
        .filter(|l| l.starts_with("a "))
        .map(|l| pid_of(l))
        .collect();
    wait_until(Duration::from_secs(2), "a's hooks to die with it", || {
        !a_hooks.iter().any(|p| alive(*p))
    });
}

/// Whether process `pid` exists and is not a zombie.
fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit(')')
                .next()
                .and_then(|r| r.trim_start().chars().next())
        })
        .is_some_and(|state| state != 'Z')
}

/// With several elections in one electd, each election's changes run the hook with its own
/// name in `ELECTD_ELECTION`: the replica leads both, then resigns one, whose hook alone says so.
#[test]
fn with_several_elections_each_hook_names_its_election() {
    let etcd = Etcd::start();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("hooks");
    let config = dir.path().join("electd.toml");
    std::fs::write(
        &config,
        "[[elections]]\nname = \"hk-0\"\n\n[[elections]]\nname = \"hk-1\"\n",
    )
    .unwrap();
    let a = DaemonSpec::new(&etcd.endpoint(), "", "a")
        .args(&[
            "--config",
            config.to_str().unwrap(),
            "--on-role-change",
            &recording(&file),
        ])
        .start();
    wait_until(Duration::from_secs(10), "a to lead both", || {
        a.leads().is_some_and(|l| l.len() == 2)
    });
    wait_until(Duration::from_secs(5), "both hooks", || {
        read_lines(&file).len() == 2
    });
    let mut lines = read_lines(&file);
    lines.sort();
    let token = |e: &str| {
        let (_, body) = http_get(&a.http, &format!("/elections/{e}/role")).unwrap();
        serde_json::from_str::<serde_json::Value>(&body).unwrap()["fencing_token"]
            .as_i64()
            .unwrap()
    };
    let (t0, t1) = (token("hk-0"), token("hk-1"));
    assert_ne!(t0, t1, "each election has its own key");
    assert_eq!(
        lines,
        [
            format!("leader candidate a hk-0 a {t0}"),
            format!("leader candidate a hk-1 a {t1}"),
        ]
    );
    let (code, reply) = a.control("/elections/hk-1/pause");
    assert_eq!(code, 200, "{reply}");
    wait_until(Duration::from_secs(5), "the hook of the pause", || {
        read_lines(&file).len() >= 3
    });
    std::thread::sleep(Duration::from_millis(300));
    let after: Vec<String> = read_lines(&file).into_iter().skip(2).collect();
    assert!(
        after.iter().all(|l| l.split(' ').nth(3) == Some("hk-1")),
        "only hk-1 changed: {after:?}"
    );
    assert!(
        after.last().is_some_and(|l| l.starts_with("paused ")),
        "{after:?}"
    );
}
