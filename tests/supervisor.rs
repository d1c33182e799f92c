//! The wrapped command against a real etcd and real processes: it runs only on the leader, is
//! stopped (group signal, grace, SIGKILL) before another replica's starts, dies with electd,
//! and its exits follow the --on-exit policy.

mod common;

use std::time::{Duration, Instant};

use common::*;
use nix::sys::signal::Signal;

/// Assert the ledger alternates start/stop: every start comes after the previous child's stop.
fn assert_one_at_a_time(records: &[Record]) {
    let mut running: Option<&Record> = None;
    for r in records {
        match r.what.as_str() {
            "start" => {
                assert!(
                    running.is_none(),
                    "{} started while {:?} ran: {records:#?}",
                    r.id,
                    running
                );
                running = Some(r);
            }
            "stop" => {
                let s = running
                    .take()
                    .unwrap_or_else(|| panic!("stop without start: {records:#?}"));
                assert_eq!((s.id.as_str(), s.token), (r.id.as_str(), r.token));
            }
            other => panic!("unknown record {other}"),
        }
    }
}

#[test]
fn one_child_at_a_time_and_the_old_one_stops_before_the_new_one_starts() {
    let etcd = Etcd::start();
    let dir = tempfile::tempdir().unwrap();
    let ledger_path = dir.path().join("ledger");
    let mut daemons: Vec<Daemon> = (1..=3)
        .map(|i| {
            DaemonSpec::new(&etcd.endpoint(), "sup", &format!("r{i}"))
                .args(&["--stop-grace", "1s"])
                .sh(&ledger_script(&ledger_path))
                .start()
        })
        .collect();
    let l = wait_one_leader(&daemons, Duration::from_secs(10));
    wait_until(
        Duration::from_secs(5),
        "the leader's child to start",
        || ledger(&ledger_path).len() == 1,
    );
    let first = ledger(&ledger_path)[0].clone();
    assert_eq!(first.id, daemons[l].id());
    assert_eq!(Some(first.token), daemons[l].fencing_token());
    // The child's state and environment are visible on /role.
    let role = daemons[l].role().unwrap();
    assert_eq!(role["child"]["running"], true, "{role}");
    assert!(role["child"]["pid"].as_u64().is_some(), "{role}");
    for (i, d) in daemons.iter().enumerate() {
        if i != l {
            assert_eq!(d.role().unwrap()["child"]["running"], false);
        }
    }

    daemons[l].signal(Signal::SIGTERM);
    assert!(daemons[l].wait_exit(Duration::from_secs(5)).success());
    let until = Instant::now() + Duration::from_secs(5);
    while ledger(&ledger_path).len() < 3 {
        if Instant::now() > until {
            for d in &daemons {
                eprintln!("==== {}\n{}", d.id(), d.log_tail(30));
            }
            panic!("no new leader's child: {:?}", ledger(&ledger_path));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let records = ledger(&ledger_path);
    assert_eq!(records[1].what, "stop");
    assert_eq!(records[1].id, first.id);
    assert_eq!(records[2].what, "start");
    assert_ne!(records[2].id, first.id);
    assert!(records[2].token > first.token);
    assert_one_at_a_time(&records);
    // Nothing else started meanwhile.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(ledger(&ledger_path).len(), 3);
}

#[test]
fn child_ignoring_sigterm_is_killed_after_the_grace_and_grandchildren_die_too() {
    let etcd = Etcd::start();
    let dir = tempfile::tempdir().unwrap();
    let pids = dir.path().join("pids");
    // sh ignores TERM; its background sleep is a grandchild of electd.
    let script = format!(
        "trap '' TERM; sleep 1000 & echo $! >> {p}; echo $$ >> {p}; while :; do sleep 0.05; done",
        p = pids.display()
    );
    let mut d = DaemonSpec::new(&etcd.endpoint(), "grace", "g")
        .args(&["--stop-grace", "1s"])
        .sh(&script)
        .start();
    d.wait_role("leader", Duration::from_secs(10));
    wait_until(Duration::from_secs(5), "child pids", || {
        read_lines(&pids).len() == 2
    });
    let p: Vec<i32> = read_lines(&pids)
        .iter()
        .map(|l| l.parse().unwrap())
        .collect();
    assert!(p.iter().all(|pid| pid_alive(*pid)));

    let t = Instant::now();
    d.signal(Signal::SIGTERM);
    assert!(d.wait_exit(Duration::from_secs(5)).success());
    let took = t.elapsed();
    assert!(
        took >= Duration::from_millis(900),
        "waited the grace before SIGKILL: {took:?}"
    );
    for pid in &p {
        assert!(!pid_alive(*pid), "pid {pid} survived the stop");
    }
    assert!(
        d.log_text().contains("did not stop within the grace"),
        "{}",
        d.log_tail(20)
    );
}

#[test]
fn sigkill_of_the_daemon_kills_its_child_and_the_watchdog_hands_over_at_once() {
    let etcd = Etcd::start();
    let dir = tempfile::tempdir().unwrap();
    let pids = dir.path().join("pids");
    let ledger_path = dir.path().join("ledger");
    let script = format!(
        "sleep 1000 & echo $! >> {p}; echo $$ >> {p}; {ledger}",
        p = pids.display(),
        ledger = ledger_script(&ledger_path)
    );
    let mut daemons: Vec<Daemon> = (1..=2)
        .map(|i| {
            DaemonSpec::new(&etcd.endpoint(), "crash", &format!("c{i}"))
                .args(&["--stop-grace", "1s"])
                .sh(&script)
                .start()
        })
        .collect();
    let l = wait_one_leader(&daemons, Duration::from_secs(10));
    // The child writes its pids, then its `start` record: wait for both, or a kill in between
    // leaves the first run unrecorded.
    wait_until(
        Duration::from_secs(5),
        "child pids and start record",
        || read_lines(&pids).len() == 2 && !ledger(&ledger_path).is_empty(),
    );
    let p: Vec<i32> = read_lines(&pids)
        .iter()
        .map(|l| l.parse().unwrap())
        .collect();

    daemons[l].kill9();
    let killed = Instant::now();
    wait_until(
        Duration::from_secs(1),
        "the child and grandchild to die with electd",
        || p.iter().all(|pid| !pid_alive(*pid)),
    );
    let started = || {
        ledger(&ledger_path)
            .iter()
            .filter(|r| r.what == "start")
            .count()
            == 2
    };
    while !started() && killed.elapsed() < Duration::from_secs(8) {
        std::thread::sleep(Duration::from_millis(20));
    }
    let survivor = &daemons[1 - l];
    assert!(
        started(),
        "no new child {:?} after the kill; the survivor's log:\n{}",
        killed.elapsed(),
        survivor.log_tail(30)
    );
    let took = killed.elapsed();
    eprintln!("new child {took:?} after the kill");
    // The watchdog killed the command, marked the key and revoked the lease: no TTL (3 s) to
    // wait out. (How fast is a benchmark figure: `cargo bench --bench electd`, crash failover;
    // tests/handover.rs holds it to 1 s at TTL 10 s.)
    assert!(
        took < Duration::from_secs(2),
        "new child only {took:?} after the kill: the lease was left to expire"
    );
    let starts: Vec<_> = ledger(&ledger_path)
        .into_iter()
        .filter(|r| r.what == "start")
        .collect();
    assert_ne!(starts[0].id, starts[1].id);
    assert!(starts[1].token > starts[0].token);
}

#[test]
fn crash_loop_backs_off_then_hands_leadership_to_another_replica() {
    let etcd = Etcd::start();
    let dir = tempfile::tempdir().unwrap();
    let runs = dir.path().join("runs");
    let script = format!(
        "echo \"$ELECTD_ID $(date +%s%N)\" >> {}; exit 1",
        runs.display()
    );
    let daemons: Vec<Daemon> = (1..=2)
        .map(|i| {
            DaemonSpec::new(&etcd.endpoint(), "loop", &format!("l{i}"))
                .sh(&script)
                .start()
        })
        .collect();
    let l = wait_one_leader(&daemons, Duration::from_secs(10));
    let first = daemons[l].id().to_string();
    wait_until(
        Duration::from_secs(15),
        "the other replica to take over",
        || read_lines(&runs).iter().any(|r| !r.starts_with(&first)),
    );
    let lines = read_lines(&runs);
    let by_first: Vec<u128> = lines
        .iter()
        .take_while(|r| r.starts_with(&first))
        .map(|r| r.split_whitespace().nth(1).unwrap().parse().unwrap())
        .collect();
    assert_eq!(
        by_first.len(),
        5,
        "restarted until the limit of 5 exits: {lines:?}"
    );
    let gaps: Vec<u128> = by_first
        .windows(2)
        .map(|w| (w[1] - w[0]) / 1_000_000)
        .collect();
    assert!(
        gaps.windows(2).all(|g| g[1] > g[0]),
        "restart delays must grow (exponential backoff): {gaps:?} ms"
    );
    assert!(
        daemons[l]
            .log_text()
            .contains("child keeps failing; resigning")
    );
}

#[test]
fn on_exit_exit_propagates_the_exit_code_and_signal() {
    let etcd = Etcd::start();
    let mut d = DaemonSpec::new(&etcd.endpoint(), "exitcode", "x")
        .args(&["--on-exit", "exit"])
        .sh("sleep 0.3; exit 7")
        .start();
    assert_eq!(d.wait_exit(Duration::from_secs(10)).code(), Some(7));
    assert!(d.log_text().contains("exit code 7"), "{}", d.log_tail(10));

    let mut d = DaemonSpec::new(&etcd.endpoint(), "exitcode", "y")
        .args(&["--on-exit", "exit"])
        .sh("sleep 0.3; kill -TERM $$")
        .start();
    assert_eq!(d.wait_exit(Duration::from_secs(10)).code(), Some(128 + 15));
}

#[test]
fn on_exit_resign_hands_over_without_restarting() {
    let etcd = Etcd::start();
    let dir = tempfile::tempdir().unwrap();
    let runs = dir.path().join("runs");
    let go = dir.path().join("go");
    // r1's child exits cleanly once told to; r2's keeps running.
    let script = format!(
        "echo \"$ELECTD_ID\" >> {runs}; \
         if [ \"$ELECTD_ID\" = r1 ]; then while [ ! -f {go} ]; do sleep 0.05; done; exit 0; fi; \
         sleep 1000",
        runs = runs.display(),
        go = go.display()
    );
    let a = DaemonSpec::new(&etcd.endpoint(), "resign-policy", "r1")
        .args(&["--on-exit", "resign"])
        .sh(&script)
        .start();
    a.wait_role("leader", Duration::from_secs(10));
    let b = DaemonSpec::new(&etcd.endpoint(), "resign-policy", "r2")
        .args(&["--on-exit", "resign"])
        .sh(&script)
        .start();
    b.wait_role("follower", Duration::from_secs(10));
    std::fs::write(&go, "").unwrap();
    b.wait_role("leader", Duration::from_secs(5));
    a.wait_role("follower", Duration::from_secs(5));
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        read_lines(&runs),
        vec!["r1", "r2"],
        "r1's child was not restarted"
    );
    assert_eq!(a.role().unwrap()["child"]["last_exit"]["code"], 0);
}

#[test]
fn a_lone_replica_whose_command_keeps_exiting_rejoins_after_growing_delays() {
    let etcd = Etcd::start();
    let dir = tempfile::tempdir().unwrap();
    let runs = dir.path().join("runs");
    let script = format!(
        "echo \"$ELECTD_FENCING_TOKEN $(date +%s%N)\" >> {}; exit 0",
        runs.display()
    );
    let d = DaemonSpec::new(&etcd.endpoint(), "resign-alone", "solo")
        .args(&["--on-exit", "resign"])
        .sh(&script)
        .start();
    wait_until(Duration::from_secs(10), "the first run", || {
        !read_lines(&runs).is_empty()
    });
    std::thread::sleep(Duration::from_millis(4500));
    let lines = read_lines(&runs);
    let runs: Vec<(i64, u128)> = lines
        .iter()
        .map(|l| {
            let mut f = l.split_whitespace();
            (
                f.next().unwrap().parse().unwrap(),
                f.next().unwrap().parse().unwrap(),
            )
        })
        .collect();
    // Resigning alone re-elects this replica; without a delay that is a tight loop of
    // elections and runs. With 1 s, 2 s, 4 s: three runs in these 4.5 s.
    assert!(
        (2..=4).contains(&runs.len()),
        "{} runs in 4.5 s; the first: {:?}",
        runs.len(),
        &lines[..lines.len().min(5)]
    );
    let gaps: Vec<u128> = runs
        .windows(2)
        .map(|w| (w[1].1 - w[0].1) / 1_000_000)
        .collect();
    assert!(gaps[0] >= 1000, "rejoined after {gaps:?} ms");
    assert!(gaps.windows(2).all(|g| g[1] > g[0]), "{gaps:?} ms");
    assert!(
        runs.windows(2).all(|w| w[1].0 > w[0].0),
        "each run leads with a new, higher fencing token: {lines:?}"
    );
    assert!(
        d.log_text()
            .contains("resigning; rejoining the election after a delay"),
        "{}",
        d.log_tail(20)
    );
}

#[test]
fn a_lone_replica_whose_command_cannot_start_backs_off_too() {
    let etcd = Etcd::start();
    let mut spec = DaemonSpec::new(&etcd.endpoint(), "cannot-start", "solo").args(&[
        "--on-exit",
        "resign",
        "--stop-grace",
        "1s",
    ]);
    spec.command = vec!["/nonexistent/electd-test-command".to_string()];
    let d = spec.start();
    let failures = || d.log_text().matches("cannot start the command").count();
    wait_until(Duration::from_secs(10), "the first attempt", || {
        failures() > 0
    });
    std::thread::sleep(Duration::from_millis(4500));
    let n = failures();
    assert!(
        (2..=4).contains(&n),
        "{n} attempts in 4.5 s (1 s, 2 s, 4 s apart expected); log:\n{}",
        d.log_tail(12)
    );
    assert!(d.log_text().contains("/nonexistent/electd-test-command"));
}

#[test]
fn a_command_that_vanishes_after_its_first_run_is_retried_then_handed_over() {
    use std::os::unix::fs::PermissionsExt;
    let etcd = Etcd::start();
    let dir = tempfile::tempdir().unwrap();
    // Runs once: deletes itself and fails, so every restart finds nothing to execute.
    let job = dir.path().join("job.sh");
    std::fs::write(&job, "#!/bin/sh\nrm -f \"$0\"\nexit 1\n").unwrap();
    std::fs::set_permissions(&job, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut spec = DaemonSpec::new(&etcd.endpoint(), "vanish", "a");
    spec.command = vec![job.display().to_string()];
    let a = spec.start();
    a.wait_role("leader", Duration::from_secs(10));
    let b = DaemonSpec::new(&etcd.endpoint(), "vanish", "b")
        .sh("sleep 1000")
        .start();
    // One real run, then restarts that cannot start (0.2 s, 0.4 s, 0.8 s, 1.6 s apart) until
    // the fifth exit makes a resign; b takes over.
    b.wait_role("leader", Duration::from_secs(15));
    let log = a.log_text();
    assert_eq!(
        log.matches("cannot start the command").count(),
        4,
        "{}",
        a.log_tail(30)
    );
    assert!(
        log.contains("child keeps failing; resigning"),
        "{}",
        a.log_tail(30)
    );
    assert_eq!(b.role().unwrap()["child"]["running"], true);
}

#[test]
fn signals_are_forwarded_and_the_environment_carries_the_fencing_token() {
    let etcd = Etcd::start();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let o = out.display();
    let script = format!(
        "echo \"env $ELECTD_ID $ELECTD_ELECTION $ELECTD_LEADER_KEY $ELECTD_FENCING_TOKEN\" >> {o}; \
         trap 'echo hup >> {o}' HUP; trap 'echo usr1 >> {o}' USR1; trap 'echo usr2 >> {o}' USR2; \
         while :; do sleep 0.05; done"
    );
    let d = DaemonSpec::new(&etcd.endpoint(), "fwd", "f")
        .sh(&script)
        .start();
    d.wait_role("leader", Duration::from_secs(10));
    wait_until(Duration::from_secs(5), "child env line", || {
        !read_lines(&out).is_empty()
    });
    let role = d.role().unwrap();
    let env_line = format!(
        "env f fwd {} {}",
        role["leader"]["key"].as_str().unwrap(),
        role["fencing_token"]
    );
    assert_eq!(read_lines(&out)[0], env_line);
    for (sig, word) in [
        (Signal::SIGHUP, "hup"),
        (Signal::SIGUSR1, "usr1"),
        (Signal::SIGUSR2, "usr2"),
    ] {
        d.signal(sig);
        wait_until(
            Duration::from_secs(3),
            &format!("{word} to reach the child"),
            || read_lines(&out).iter().any(|l| l == word),
        );
    }
    assert!(
        d.is_leader(),
        "forwarded signals do not affect electd itself"
    );
}

/// Whether a file keeps growing over `over`.
fn grows(file: &std::path::Path, over: Duration) -> bool {
    let size = || std::fs::metadata(file).map(|m| m.len()).unwrap_or(0);
    let before = size();
    std::thread::sleep(over);
    size() > before
}

/// Kills whatever still writes to the file on drop: an escapee outlives a SIGKILLed electd
/// (the watchdog kills the command's group, which the escapee left), so a failing test must
/// not leave it running.
struct Reap<'a>(&'a std::path::Path);

impl Drop for Reap<'_> {
    fn drop(&mut self) {
        let _ = std::process::Command::new("pkill")
            .args(["-f", &self.0.display().to_string()])
            .status();
    }
}

/// A process that leaves the command's process group and session, writing to `file`.
fn escapee(file: &std::path::Path) -> String {
    format!(
        "setsid sh -c 'while :; do date >> {}; sleep 0.1; done' &",
        file.display()
    )
}

#[test]
fn a_process_that_escapes_the_group_with_setsid_is_stopped_with_the_command() {
    let etcd = Etcd::start();
    let dir = tempfile::tempdir().unwrap();
    // The command's shell stays: the escapee is found in its tree.
    let kept = dir.path().join("kept");
    let _reap = Reap(&kept);
    let d = DaemonSpec::new(&etcd.endpoint(), "escape", "a")
        .sh(&format!("{} sleep 1000", escapee(&kept)))
        .start();
    d.wait_role("leader", Duration::from_secs(10));
    wait_until(Duration::from_secs(5), "the escapee to write", || {
        grows(&kept, Duration::from_millis(300))
    });
    // Paused, it stops its command and does not start another.
    let (code, _) = d.control("/pause");
    assert_eq!(code, 200);
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        !grows(&kept, Duration::from_millis(600)),
        "the setsid'd process outlived the command's stop"
    );
}

#[test]
fn an_orphan_that_escaped_the_group_is_adopted_and_stopped_when_the_command_ends() {
    let etcd = Etcd::start();
    let dir = tempfile::tempdir().unwrap();
    // The command's shell exits at once: the escapee is orphaned and reparented to electd.
    let orphan = dir.path().join("orphan");
    let _reap = Reap(&orphan);
    let d = DaemonSpec::new(&etcd.endpoint(), "orphan", "a")
        .args(&["--on-exit", "exit"])
        .sh(&format!("{} sleep 0.5", escapee(&orphan)))
        .start();
    let mut d = d;
    let status = d.wait_exit(Duration::from_secs(10));
    assert_eq!(status.code(), Some(0), "{}", d.log_tail(20));
    assert!(
        !grows(&orphan, Duration::from_millis(600)),
        "the orphan outlived the command: {}",
        d.log_tail(20)
    );
}

#[test]
fn stopping_a_command_with_background_children_reaps_them_at_once() {
    let etcd = Etcd::start();
    let d = DaemonSpec::new(&etcd.endpoint(), "reap", "a")
        .sh("trap '' TERM; sleep 1000 & sleep 1000 & wait")
        .args(&["--stop-grace", "500ms"])
        .start();
    d.wait_role("leader", Duration::from_secs(10));
    std::thread::sleep(Duration::from_millis(300));
    let t = Instant::now();
    let (code, _) = d.control("/pause");
    assert_eq!(code, 200);
    // The grace (the shell ignores SIGTERM), then SIGKILL and the reaping: well under a second
    // more — not the 1 s wait for a group whose orphans nobody reaped.
    assert!(
        t.elapsed() < Duration::from_millis(1300),
        "{:?}",
        t.elapsed()
    );
    assert!(
        !d.log_text().contains("still present after SIGKILL"),
        "{}",
        d.log_tail(20)
    );
}
