//! `elect-run` against a real etcd with real processes: one run among concurrent replicas,
//! `--once-per` slot records, CMD's exit codes and signals, leadership lost mid-run (lease
//! revoked, link cut), etcd down, bad flags, `--wait`, and `--socket` against a running electd.

mod common;

use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::*;
use nix::sys::signal::Signal;

const TTL: &str = "3s";

fn elect_run_binary() -> &'static str {
    env!("CARGO_BIN_EXE_elect-run")
}

/// An `elect-run` command line with a clean environment (no `ELECTD_*`, no `RUST_LOG`, no
/// colours) and captured stdout/stderr.
fn elect_run(args: &[&str]) -> Command {
    let mut c = Command::new(elect_run_binary());
    c.args(args)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    c
}

/// `elect-run --endpoints EP --election E --id ID --ttl 3s --stop-grace 1s EXTRA -- sh -c SCRIPT`.
fn replica(endpoint: &str, election: &str, id: &str, extra: &[&str], script: &str) -> Command {
    let mut args = vec![
        "--endpoints",
        endpoint,
        "--election",
        election,
        "--id",
        id,
        "--ttl",
        TTL,
        "--stop-grace",
        "1s",
    ];
    args.extend_from_slice(extra);
    args.extend_from_slice(&["--", "sh", "-c", script]);
    elect_run(&args)
}

struct Finished {
    code: i32,
    stdout: String,
    stderr: String,
    took: Duration,
}

/// A started elect-run; a thread reaps it as soon as it exits, so `took` is exact even when
/// several are collected one after the other.
struct Running {
    pid: u32,
    done: std::sync::mpsc::Receiver<(std::io::Result<std::process::Output>, Duration)>,
}

impl Running {
    fn pid(&self) -> u32 {
        self.pid
    }

    /// Wait for the exit (panics after `limit`) and collect the output.
    fn finish(self, limit: Duration) -> Finished {
        let (out, took) = self
            .done
            .recv_timeout(limit)
            .unwrap_or_else(|_| panic!("elect-run did not exit within {limit:?}"));
        let out = out.expect("wait for elect-run");
        Finished {
            code: out
                .status
                .code()
                .unwrap_or_else(|| panic!("elect-run was killed: {:?}", out.status)),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            took,
        }
    }
}

fn start(cmd: Command) -> Running {
    let started = Instant::now();
    let child = spawn_tied(cmd).expect("spawn elect-run");
    let pid = child.id();
    let (tx, done) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let out = child.wait_with_output();
        let _ = tx.send((out, started.elapsed()));
    });
    Running { pid, done }
}

fn run(cmd: Command, limit: Duration) -> Finished {
    start(cmd).finish(limit)
}

fn sh_quote(p: &Path) -> String {
    format!("'{}'", p.display())
}

/// A script that records `started`, ticks every 0.1 s, and records `stopped` on SIGTERM.
fn stoppable_script(file: &Path) -> String {
    let f = sh_quote(file);
    format!(
        "trap 'echo stopped >> {f}; exit 0' TERM; echo started >> {f}; \
         while :; do echo tick >> {f}; sleep 0.1; done"
    )
}

fn count(lines: &[String], what: &str) -> usize {
    lines.iter().filter(|l| *l == what).count()
}

/// Candidate keys left under the election's prefix.
fn candidate_keys(etcd: &Etcd, election: &str) -> Vec<String> {
    etcd.etcdctl_ok(&["get", &format!("{election}/"), "--prefix", "--keys-only"])
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(str::to_string)
        .collect()
}

fn libc_sigkill() -> i32 {
    Signal::SIGKILL as i32
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[test]
fn five_started_at_once_run_the_command_exactly_once_and_four_exit_75() {
    let etcd = Etcd::start();
    let dir = tempfile::tempdir().unwrap();
    let runs = dir.path().join("runs");
    // CMD outlasts the others' start-up, so none of them can win after the first resigns.
    let script = format!(
        "echo \"$ELECTD_ID $ELECTD_FENCING_TOKEN\" >> {}; sleep 2",
        sh_quote(&runs)
    );
    let replicas: Vec<(String, Running)> = (1..=5)
        .map(|i| {
            let id = format!("r{i}");
            let r = start(replica(&etcd.endpoint(), "five", &id, &[], &script));
            (id, r)
        })
        .collect();
    let results: Vec<(String, Finished)> = replicas
        .into_iter()
        .map(|(id, r)| (id, r.finish(Duration::from_secs(15))))
        .collect();

    let lines = read_lines(&runs);
    assert_eq!(lines.len(), 1, "exactly one run: {lines:?}");
    let mut codes: Vec<i32> = results.iter().map(|(_, f)| f.code).collect();
    codes.sort();
    assert_eq!(codes, vec![0, 75, 75, 75, 75], "stderr: {:?}", {
        results.iter().map(|(_, f)| &f.stderr).collect::<Vec<_>>()
    });
    let (winner, _) = results.iter().find(|(_, f)| f.code == 0).unwrap();
    let (ran_id, token) = lines[0].split_once(' ').unwrap();
    assert_eq!(ran_id, winner);
    assert!(token.parse::<i64>().unwrap() > 0, "{lines:?}");
    for (id, f) in &results {
        // Quiet by default: cron mails whatever is printed.
        assert_eq!((f.stdout.as_str(), f.stderr.as_str()), ("", ""), "{id}");
        if f.code == 75 {
            assert!(
                f.took < Duration::from_secs(2),
                "{id} decided at once: {:?}",
                f.took
            );
        }
    }
    assert!(
        candidate_keys(&etcd, "five").is_empty(),
        "every replica resigned"
    );
}

#[test]
fn once_per_minute_two_replicas_two_seconds_apart_run_once_and_record_the_slot() {
    let etcd = Etcd::start();
    let dir = tempfile::tempdir().unwrap();
    let runs = dir.path().join("runs");
    // Both replicas must fire in the same minute.
    while unix_now() % 60 > 54 {
        std::thread::sleep(Duration::from_millis(200));
    }
    let slot = unix_now() / 60 * 60;
    let script = format!(
        "echo \"$ELECTD_ID $ELECTD_SLOT\" >> {}; sleep 0.5; exit 3",
        sh_quote(&runs)
    );
    let args = ["--once-per", "1m", "-v"];
    let a = start(replica(&etcd.endpoint(), "cron", "a", &args, &script));
    std::thread::sleep(Duration::from_secs(2));
    let b = run(
        replica(&etcd.endpoint(), "cron", "b", &args, &script),
        Duration::from_secs(10),
    );
    let a = a.finish(Duration::from_secs(10));
    assert!(
        unix_now() / 60 * 60 == slot,
        "test straddled a minute boundary"
    );

    assert_eq!(a.code, 3, "a ran and exited 3: {}", a.stderr);
    assert_eq!(b.code, 75, "b found the slot taken: {}", b.stderr);
    assert!(
        b.stderr.contains("slot already taken") && b.stderr.contains("by=a"),
        "-v says who had the slot: {}",
        b.stderr
    );
    assert_eq!(read_lines(&runs), vec![format!("a {slot}")]);

    let out = etcd.etcdctl_ok(&["get", "cron.slots/", "--prefix"]);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "one slot record: {out}");
    assert_eq!(lines[0], format!("cron.slots/{slot}"));
    let record: serde_json::Value = serde_json::from_str(lines[1]).unwrap();
    assert_eq!(record["id"], "a", "{record}");
    assert_eq!(record["slot"], slot, "{record}");
    assert_eq!(record["state"], "done", "{record}");
    assert_eq!(record["exit_code"], 3, "{record}");
    assert!(record["token"].as_i64().unwrap() > 0, "{record}");
    assert!(
        record["started"].as_str().unwrap().ends_with('Z'),
        "{record}"
    );
    assert!(record["ended"].as_str().unwrap().ends_with('Z'), "{record}");
    // Outside the election's prefix: the record is not a candidate.
    assert!(candidate_keys(&etcd, "cron").is_empty());
}

#[test]
fn command_exit_codes_output_and_environment_come_back_as_documented() {
    let etcd = Etcd::start();
    let dir = tempfile::tempdir().unwrap();
    let env_file = dir.path().join("env");
    let ep = etcd.endpoint();

    let script = format!(
        "echo hello-from-cmd; echo \"$ELECTD_ID|$ELECTD_ELECTION|$ELECTD_LEADER_KEY|$ELECTD_FENCING_TOKEN\" > {}",
        sh_quote(&env_file)
    );
    let ok = run(
        replica(&ep, "codes", "x", &[], &script),
        Duration::from_secs(10),
    );
    assert_eq!(ok.code, 0, "{}", ok.stderr);
    assert_eq!(ok.stdout, "hello-from-cmd\n", "stdout passes through");
    let env = std::fs::read_to_string(&env_file).unwrap();
    let parts: Vec<&str> = env.trim().split('|').collect();
    assert_eq!(&parts[..2], &["x", "codes"]);
    assert!(parts[2].starts_with("codes/"), "{env}");
    assert!(parts[3].parse::<i64>().unwrap() > 0, "{env}");
    assert!(
        candidate_keys(&etcd, "codes").is_empty(),
        "resigned when CMD ended"
    );

    let three = run(
        replica(&ep, "codes", "x", &[], "exit 3"),
        Duration::from_secs(10),
    );
    assert_eq!(three.code, 3, "{}", three.stderr);

    let killed = run(
        replica(&ep, "codes", "x", &[], "kill -TERM $$"),
        Duration::from_secs(10),
    );
    assert_eq!(killed.code, 143, "128 + SIGTERM: {}", killed.stderr);

    // SIGTERM to elect-run is forwarded to CMD's group.
    let marks = dir.path().join("marks");
    let r = start(replica(
        &ep,
        "codes",
        "x",
        &[],
        &format!("echo started >> {}; sleep 30", sh_quote(&marks)),
    ));
    wait_until(Duration::from_secs(5), "CMD to start", || {
        read_lines(&marks) == ["started"]
    });
    signal_pid(r.pid(), Signal::SIGTERM);
    let fwd = r.finish(Duration::from_secs(5));
    assert_eq!(fwd.code, 143, "{}", fwd.stderr);
    assert!(candidate_keys(&etcd, "codes").is_empty());
}

#[test]
fn lease_revoked_mid_run_stops_the_command_and_exits_76_and_the_slot_stays_taken() {
    let etcd = Etcd::start();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("cmd");
    // Both runs below must fall in the same hour slot.
    while unix_now() % 3600 > 3590 {
        std::thread::sleep(Duration::from_millis(200));
    }
    let r = start(replica(
        &etcd.endpoint(),
        "revoke",
        "x",
        &["--once-per", "1h"],
        &stoppable_script(&file),
    ));
    wait_until(Duration::from_secs(5), "CMD to start", || {
        read_lines(&file).first().map(String::as_str) == Some("started")
    });
    let keys = candidate_keys(&etcd, "revoke");
    assert_eq!(keys.len(), 1, "{keys:?}");
    let lease_hex = keys[0].trim_start_matches("revoke/");
    etcd.etcdctl_ok(&["lease", "revoke", lease_hex]);
    let revoked = Instant::now();

    let f = r.finish(Duration::from_secs(5));
    assert_eq!(f.code, 76, "{}", f.stderr);
    assert!(f.stderr.contains("leadership lost"), "{}", f.stderr);
    assert!(
        revoked.elapsed() < Duration::from_secs(3),
        "stopped promptly: {:?}",
        revoked.elapsed()
    );
    // Taken away (not given up): CMD is killed at once, with no chance to trap a signal — a
    // successor may start after its start guard.
    assert_eq!(count(&read_lines(&file), "stopped"), 0, "CMD got SIGKILL");

    // The deposed run could not write its record any more (fenced): the slot stays taken.
    let out = etcd.etcdctl_ok(&["get", "revoke.slots/", "--prefix", "--print-value-only"]);
    let record: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(record["state"], "running", "{record}");
    let again = run(
        replica(
            &etcd.endpoint(),
            "revoke",
            "y",
            &["--once-per", "1h"],
            "true",
        ),
        Duration::from_secs(10),
    );
    assert_eq!(again.code, 75, "{}", again.stderr);
}

#[test]
fn sigkill_of_elect_run_kills_the_command_group() {
    let etcd = Etcd::start();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("cmd");
    let r = start(replica(
        &etcd.endpoint(),
        "sigkill",
        "x",
        &[],
        // The ticker is a grandchild: PR_SET_PDEATHSIG reaches only the direct child.
        &format!(
            "(while :; do echo tick >> {}; sleep 0.1; done) & wait",
            sh_quote(&file)
        ),
    ));
    wait_until(Duration::from_secs(5), "CMD to start", || {
        count(&read_lines(&file), "tick") >= 2
    });
    signal_pid(r.pid(), Signal::SIGKILL);
    let (out, _) = r.done.recv_timeout(Duration::from_secs(5)).unwrap();
    assert_eq!(out.unwrap().status.signal(), Some(libc_sigkill()));
    std::thread::sleep(Duration::from_millis(500));
    let ticks = count(&read_lines(&file), "tick");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        count(&read_lines(&file), "tick"),
        ticks,
        "the watchdog killed CMD's whole group"
    );
}

#[test]
fn etcd_link_cut_longer_than_the_ttl_stops_the_command_before_the_lease_can_expire() {
    let etcd = Etcd::start();
    let proxy = TcpProxy::start(etcd.client_addr());
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("cmd");
    let r = start(replica(
        &proxy.endpoint(),
        "cut",
        "x",
        &[],
        &stoppable_script(&file),
    ));
    wait_until(Duration::from_secs(5), "CMD to start", || {
        read_lines(&file).first().map(String::as_str) == Some("started")
    });
    std::thread::sleep(Duration::from_millis(300));
    proxy.set_mode(ProxyMode::Blackhole);
    let cut = Instant::now();
    // Budget: TTL 3 s − margin 0.3 s, counted from the last keepalive sent before the cut.
    wait_until(
        Duration::from_millis(2700),
        "CMD stopped before the lease can expire",
        || read_lines(&file).iter().any(|l| l == "stopped"),
    );
    eprintln!("CMD stopped {:?} after the cut", cut.elapsed());
    let f = r.finish(Duration::from_secs(6));
    assert_eq!(f.code, 76, "{}", f.stderr);
    assert!(f.stderr.contains("leadership lost"), "{}", f.stderr);
    // The whole group is gone: no more ticks.
    let ticks = count(&read_lines(&file), "tick");
    std::thread::sleep(Duration::from_millis(400));
    assert_eq!(count(&read_lines(&file), "tick"), ticks);
}

#[test]
fn etcd_down_exits_69_and_never_runs_the_command() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("ran");
    let ep = format!("http://127.0.0.1:{}", free_port());
    let f = run(
        replica(
            &ep,
            "down",
            "x",
            &[],
            &format!("echo ran >> {}", sh_quote(&file)),
        ),
        Duration::from_secs(15),
    );
    assert_eq!(f.code, 69, "{}", f.stderr);
    assert!(!file.exists(), "CMD never ran");
    assert_eq!(f.stdout, "");
    assert!(
        f.stderr.contains("etcd unreachable") && f.stderr.contains(&ep),
        "{}",
        f.stderr
    );
    assert_eq!(f.stderr.lines().count(), 1, "one clear line: {}", f.stderr);
    assert!(
        f.took >= Duration::from_secs(4) && f.took < Duration::from_secs(10),
        "decided after max(--wait, 5s): {:?}",
        f.took
    );
}

#[test]
fn bad_flags_exit_64_or_78_and_name_the_field() {
    let cases: &[(&[&str], i32, &[&str])] = &[
        (
            &["--election", "e", "--bogus", "--", "true"],
            64,
            &["--bogus"],
        ),
        (&["--election", "e"], 64, &["<CMD>"]),
        (
            &["--election", "e", "--wait", "soon", "--", "true"],
            78,
            &["invalid wait \"soon\"", "--wait"],
        ),
        (
            &["--election", "e", "--once-per", "0s", "--", "true"],
            78,
            &["invalid once_per", "--once-per", "at least 1s"],
        ),
        (
            &[
                "--election",
                "e",
                "--once-per",
                "1000000000000s",
                "--",
                "true",
            ],
            78,
            &["invalid once_per", "--once-per", "at most 366d"],
        ),
        (
            &["--election", "e", "--ttl", "1s", "--", "true"],
            78,
            &["invalid ttl", "--ttl", "at least 2s"],
        ),
        (
            &[
                "--election",
                "e",
                "--ttl",
                "3s",
                "--stop-grace",
                "3s",
                "--",
                "true",
            ],
            78,
            &["does not fit inside the lease TTL"],
        ),
        (&["--", "true"], 78, &["missing election", "--election"]),
        (
            &["--once-per", "1m", "--socket", "/nonexistent", "--", "true"],
            78,
            &["--once-per", "--socket"],
        ),
    ];
    for (args, code, needles) in cases {
        let f = run(elect_run(args), Duration::from_secs(5));
        assert_eq!(f.code, *code, "{args:?}: {}", f.stderr);
        assert!(!f.stderr.contains("panicked"), "{}", f.stderr);
        for n in *needles {
            assert!(f.stderr.contains(n), "{args:?}: {:?} lacks {n:?}", f.stderr);
        }
    }
    let help = run(elect_run(&["--help"]), Duration::from_secs(5));
    assert_eq!(help.code, 0);
    for n in [
        "Exit codes:",
        "75",
        "76",
        "69",
        "78",
        "64",
        "max(--wait, 5s)",
    ] {
        assert!(help.stdout.contains(n), "--help lacks {n:?}");
    }
}

#[test]
fn wait_runs_after_the_holder_finishes_and_gives_up_when_it_runs_out() {
    let etcd = Etcd::start();
    let dir = tempfile::tempdir().unwrap();
    let runs = dir.path().join("runs");
    let ep = etcd.endpoint();
    let record = |name: &str, then: &str| format!("echo {name} >> {}; {then}", sh_quote(&runs));
    let a = start(replica(&ep, "wait", "a", &[], &record("a", "sleep 2.5")));
    wait_until(Duration::from_secs(5), "a to run", || {
        read_lines(&runs) == ["a"]
    });
    let b = start(replica(
        &ep,
        "wait",
        "b",
        &["--wait", "1s"],
        &record("b", "true"),
    ));
    let c = start(replica(
        &ep,
        "wait",
        "c",
        &["--wait", "10s"],
        &record("c", "true"),
    ));
    let b = b.finish(Duration::from_secs(5));
    assert_eq!(b.code, 75, "{}", b.stderr);
    assert!(
        b.took >= Duration::from_secs(1) && b.took < Duration::from_millis(2300),
        "b waited its 1 s, not for a: {:?}",
        b.took
    );
    let c = c.finish(Duration::from_secs(10));
    assert_eq!(c.code, 0, "{}", c.stderr);
    assert_eq!(a.finish(Duration::from_secs(5)).code, 0);
    assert_eq!(read_lines(&runs), ["a", "c"]);
}

fn two_daemons(etcd: &Etcd, election: &str) -> (Vec<Daemon>, usize) {
    let daemons: Vec<Daemon> = ["d1", "d2"]
        .iter()
        .map(|id| DaemonSpec::new(&etcd.endpoint(), election, id).start())
        .collect();
    let l = wait_one_leader(&daemons, Duration::from_secs(10));
    (daemons, l)
}

fn socket_run(socket: &Path, extra: &[&str], script: &str) -> Command {
    let socket = socket.to_str().unwrap();
    let mut args = vec!["--socket", socket, "--stop-grace", "1s"];
    args.extend_from_slice(extra);
    args.extend_from_slice(&["--", "sh", "-c", script]);
    elect_run(&args)
}

#[test]
fn socket_mode_runs_on_the_leader_and_skips_on_a_follower() {
    let etcd = Etcd::start();
    let (daemons, l) = two_daemons(&etcd, "viasock");
    let (leader, follower) = (&daemons[l], &daemons[1 - l]);
    let dir = tempfile::tempdir().unwrap();
    let runs = dir.path().join("runs");
    let script = format!(
        "echo \"$ELECTD_ID $ELECTD_FENCING_TOKEN $ELECTD_LEADER_KEY\" >> {}",
        sh_quote(&runs)
    );

    let on_leader = run(
        socket_run(&leader.socket, &[], &script),
        Duration::from_secs(5),
    );
    assert_eq!(on_leader.code, 0, "{}", on_leader.stderr);
    let role = leader.role().unwrap();
    assert_eq!(
        read_lines(&runs),
        vec![format!(
            "{} {} {}",
            leader.id(),
            role["fencing_token"],
            role["leader"]["key"].as_str().unwrap()
        )]
    );

    let on_follower = run(
        socket_run(&follower.socket, &[], &script),
        Duration::from_secs(5),
    );
    assert_eq!(on_follower.code, 75, "{}", on_follower.stderr);
    assert_eq!(on_follower.stderr, "", "quiet by default");
    assert_eq!(read_lines(&runs).len(), 1, "not run on the follower");

    // --election, when given, must be electd's.
    let wrong = run(
        socket_run(&leader.socket, &["--election", "other"], &script),
        Duration::from_secs(5),
    );
    assert_eq!(wrong.code, 78, "{}", wrong.stderr);
    assert!(wrong.stderr.contains("\"viasock\""), "{}", wrong.stderr);
    let right = run(
        socket_run(&leader.socket, &["--election", "viasock"], "true"),
        Duration::from_secs(5),
    );
    assert_eq!(right.code, 0, "{}", right.stderr);

    let missing = dir.path().join("no.sock");
    let gone = run(socket_run(&missing, &[], &script), Duration::from_secs(5));
    assert_eq!(gone.code, 69, "{}", gone.stderr);
    assert!(gone.stderr.contains("no.sock"), "{}", gone.stderr);
    assert_eq!(read_lines(&runs).len(), 1);
}

#[test]
fn socket_mode_stops_the_command_when_electd_stops_leading() {
    let etcd = Etcd::start();
    let (daemons, l) = two_daemons(&etcd, "sockloss");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("cmd");
    let r = start(socket_run(
        &daemons[l].socket,
        &[],
        &stoppable_script(&file),
    ));
    wait_until(Duration::from_secs(5), "CMD to start", || {
        read_lines(&file).first().map(String::as_str) == Some("started")
    });
    let (code, body) = daemons[l].control("/resign");
    assert_eq!(code, 200, "{body}");
    let f = r.finish(Duration::from_secs(5));
    assert_eq!(f.code, 76, "{}", f.stderr);
    assert!(f.stderr.contains("leadership lost"), "{}", f.stderr);
    assert_eq!(count(&read_lines(&file), "stopped"), 1);
}
