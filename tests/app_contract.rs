//! The app contract (docs/app-contract.md) under real faults: sidecar replicas (no wrapped
//! command) whose apps follow it through the reference client (clients/python/electd_client.py,
//! driven by tests/apps/contract_app.py) write what they did to a ledger, and every budget they
//! took to a claims file. Under SIGSTOP of the leader's electd longer than the TTL, kill -9 of
//! it, a cut link to etcd and frozen etcd members: no two apps act as leader at once, and the
//! budget of every leader answer ends before the next leader's first one.
//!
//! Also: right after a SIGSTOP of 2 × TTL and SIGCONT, no `/role`, `/leader` or `/watch` answer
//! claims leadership with the old token; `elect-run --socket` stops its command when the budget
//! of electd's last good answer runs out; the shell recipe (clients/shell/leader-only.sh) runs a
//! job only within a budget.

mod common;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::*;
use nix::sys::signal::Signal;
use serde_json::Value;

const TTL: &str = "3s";
/// TTL − safety margin (300 ms) − stop grace (1 s): the longest budget an answer gives.
const BUDGET: Duration = Duration::from_millis(1700);

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// One contract-following app beside a sidecar electd (tests/common/contract.rs).
fn app(id: &str, daemon: &Daemon, files: &Files, mode: AppMode) -> ContractApp {
    let log = files.dir.join(format!("app-{id}.log"));
    ContractApp::start(id, daemon, (&files.ledger, &files.claims), &log, 0.5, mode)
}

struct Files {
    dir: PathBuf,
    ledger: PathBuf,
    claims: PathBuf,
    _tmp: tempfile::TempDir,
}

impl Files {
    fn new() -> Files {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        Files {
            ledger: dir.join("ledger"),
            claims: dir.join("claims"),
            dir,
            _tmp: tmp,
        }
    }

    fn app_logs(&self) -> String {
        let mut out = String::new();
        for e in std::fs::read_dir(&self.dir).unwrap().flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            if name.starts_with("app-") {
                out += &format!("--- {name}\n{}\n", file_tail(&e.path(), 30));
            }
        }
        out
    }
}

/// Every budget of a term ends before the first budget of any later term was taken.
fn assert_budgets_end_before_the_next_leader(claims: &[ClaimRecord]) {
    let mut tokens: Vec<i64> = claims.iter().map(|c| c.token).collect();
    tokens.sort();
    tokens.dedup();
    for w in tokens.windows(2) {
        let last_end = claims
            .iter()
            .filter(|c| c.token == w[0])
            .map(|c| (c.until, c))
            .max_by_key(|(u, _)| *u)
            .unwrap();
        let first_next = claims
            .iter()
            .filter(|c| c.token > w[0])
            .map(|c| (c.taken, c))
            .min_by_key(|(t, _)| *t)
            .unwrap();
        assert!(
            last_end.0 < first_next.0,
            "a budget of term {} ({:?}) ends {} ms after the next leader's first budget ({:?})",
            w[0],
            last_end.1,
            (last_end.0 - first_next.0) / 1_000_000,
            first_next.1
        );
        eprintln!(
            "term {} → {}: the last budget ended {} ms before the next leader's first",
            w[0],
            w[1],
            (first_next.0 - last_end.0) / 1_000_000
        );
    }
}

fn now_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

/// Which app acts as leader now, by the ledger's last records.
fn acting(files: &Files) -> Vec<String> {
    let recent = now_ns() - 200_000_000;
    let mut ids: Vec<String> = runs(&ledger(&files.ledger))
        .into_iter()
        .filter(|r| !r.stopped && r.last >= recent)
        .map(|r| r.id)
        .collect();
    ids.sort();
    ids.dedup();
    ids
}

/// Sidecar replicas `a`, `b`, `c` and their apps: `a` and `b` on the Unix socket (a streaming
/// /watch, b long-polling), `c` over TCP with /watch. `endpoint(i)` is replica i's etcd.
fn sidecars(
    election: &str,
    endpoint: impl Fn(usize) -> String,
    files: &Files,
) -> (Vec<Daemon>, Vec<ContractApp>) {
    let ids = ["a", "b", "c"];
    let daemons: Vec<Daemon> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| DaemonSpec::new(&endpoint(i), election, id).ttl(TTL).start())
        .collect();
    wait_one_leader(&daemons, Duration::from_secs(10));
    let apps = ids
        .iter()
        .enumerate()
        .map(|(i, id)| {
            let mode = AppMode {
                watch: i != 1,
                over_tcp: i == 2,
                naive: false,
            };
            app(id, &daemons[i], files, mode)
        })
        .collect();
    wait_until(Duration::from_secs(10), "one app to act as leader", || {
        acting(files).len() == 1
    });
    (daemons, apps)
}

fn check(files: &Files, daemons: &[Daemon], what: &str) {
    let records = ledger(&files.ledger);
    let starts = starts(&records).len();
    let result = std::panic::catch_unwind(|| {
        assert_no_overlap(&records);
        assert_budgets_end_before_the_next_leader(&claims(&files.claims));
    });
    if let Err(e) = result {
        for d in daemons {
            eprintln!("--- {}:\n{}", d.id(), d.log_tail(80));
        }
        eprintln!("{}", files.app_logs());
        std::panic::resume_unwind(e);
    }
    assert!(
        starts >= 2,
        "{what}: leadership should have moved to another app ({starts} runs)\n{}",
        files.app_logs()
    );
}

/// The index of the daemon whose app acts as leader.
fn leading_app(daemons: &[Daemon], files: &Files) -> usize {
    let id = acting(files).pop().expect("an app acts as leader");
    daemons.iter().position(|d| d.id() == id).unwrap()
}

#[test]
fn sigstop_of_the_leaders_electd_longer_than_the_ttl() {
    let etcd = Etcd::start();
    let files = Files::new();
    let (mut daemons, _apps) = sidecars("c-stop", |_| etcd.endpoint(), &files);
    for round in 0..2 {
        let l = leading_app(&daemons, &files);
        daemons[l].signal(Signal::SIGSTOP);
        wait_until(
            Duration::from_secs(10),
            "another app to act as leader",
            || acting(&files).iter().any(|id| id != daemons[l].id()),
        );
        std::thread::sleep(Duration::from_secs(3));
        daemons[l].signal(Signal::SIGCONT);
        std::thread::sleep(Duration::from_secs(1));
        check(&files, &daemons, &format!("round {round}"));
    }
    daemons.iter_mut().for_each(|d| d.kill9());
}

/// The checkers' self-test, through the whole scenario: apps that keep the last answer they got
/// (no budget) act beside the next leader while the old one's electd is frozen, and the ledger
/// shows it.
#[test]
fn an_app_that_ignores_the_budget_is_caught_acting_beside_the_next_leader() {
    let etcd = Etcd::start();
    let files = Files::new();
    let daemons: Vec<Daemon> = ["a", "b"]
        .iter()
        .map(|id| {
            DaemonSpec::new(&etcd.endpoint(), "c-naive", id)
                .ttl(TTL)
                .start()
        })
        .collect();
    let l = wait_one_leader(&daemons, Duration::from_secs(10));
    let _apps: Vec<ContractApp> = ["a", "b"]
        .iter()
        .enumerate()
        .map(|(i, id)| {
            let naive = AppMode {
                naive: true,
                ..AppMode::default()
            };
            app(id, &daemons[i], &files, naive)
        })
        .collect();
    wait_until(Duration::from_secs(10), "the naive app to act", || {
        acting(&files).len() == 1
    });
    daemons[l].signal(Signal::SIGSTOP);
    wait_until(Duration::from_secs(10), "the other app to act too", || {
        acting(&files).len() == 2
    });
    daemons[l].signal(Signal::SIGCONT);
    let records = ledger(&files.ledger);
    let caught = std::panic::catch_unwind(|| assert_no_overlap(&records));
    assert!(
        caught.is_err(),
        "the ledger checker missed two apps acting at once: {records:?}"
    );
}

#[test]
fn kill_9_of_the_leaders_electd() {
    let etcd = Etcd::start();
    let files = Files::new();
    let (mut daemons, _apps) = sidecars("c-kill", |_| etcd.endpoint(), &files);
    for round in 0..2 {
        let l = leading_app(&daemons, &files);
        daemons[l].kill9();
        wait_until(
            Duration::from_secs(10),
            "another app to act as leader",
            || acting(&files).iter().any(|id| id != daemons[l].id()),
        );
        // The app of the killed electd keeps asking; its electd comes back as a follower.
        daemons[l].restart();
        std::thread::sleep(Duration::from_secs(1));
        check(&files, &daemons, &format!("round {round}"));
    }
}

#[test]
fn a_cut_link_to_etcd() {
    let etcd = Etcd::start();
    let files = Files::new();
    let proxies: Vec<TcpProxy> = (0..3)
        .map(|_| TcpProxy::start(etcd.client_addr()))
        .collect();
    let (daemons, _apps) = sidecars("c-cut", |i| proxies[i].endpoint(), &files);
    for round in 0..2 {
        let l = leading_app(&daemons, &files);
        proxies[l].set_mode(ProxyMode::Blackhole);
        wait_until(
            Duration::from_secs(10),
            "another app to act as leader",
            || acting(&files).iter().any(|id| id != daemons[l].id()),
        );
        std::thread::sleep(Duration::from_secs(1));
        proxies[l].set_mode(ProxyMode::Pass);
        std::thread::sleep(Duration::from_secs(2));
        check(&files, &daemons, &format!("round {round}"));
    }
}

/// Each etcd member frozen for 5 s in turn. A frozen raft follower changes nothing a lease
/// promises, and the contract holds whole: no overlap, every budget ends before the next
/// leader's first. A frozen raft *leader* may, on resuming, revoke leases their owners still
/// renew (etcd-io/etcd#15247): a budget handed out before cannot hold then, but the deposed
/// leader's electd stops claiming at once, its app (on /watch or a long poll) stops within
/// milliseconds, and the successor waits its start guard: the ledger still shows no overlap.
#[test]
fn frozen_etcd_members() {
    let mut cluster = EtcdCluster::start(3);
    let endpoints = cluster.endpoints();
    let files = Files::new();
    // Each replica talks to another member first.
    let (daemons, _apps) = sidecars(
        "c-frozen",
        |i| {
            let mut e = endpoints.clone();
            e.rotate_left(i);
            e.join(",")
        },
        &files,
    );
    let freeze = |cluster: &mut EtcdCluster, m: usize| {
        cluster.member(m).pause();
        std::thread::sleep(Duration::from_secs(5));
        cluster.member(m).resume();
        cluster.wait_healthy(Duration::from_secs(20));
        std::thread::sleep(Duration::from_millis(500));
    };
    let raft_leader = cluster.leader().expect("a raft leader");
    for m in (0..3).filter(|m| *m != raft_leader) {
        freeze(&mut cluster, m);
    }
    assert_no_overlap(&ledger(&files.ledger));
    assert_budgets_end_before_the_next_leader(&claims(&files.claims));
    assert!(
        !claims(&files.claims).is_empty(),
        "the apps took no budget at all"
    );
    let leader_now = cluster.leader().expect("a raft leader");
    freeze(&mut cluster, leader_now);
    assert_no_overlap(&ledger(&files.ledger));
    drop(daemons);
}

/// Everything a reader got from one electd: (request sent at, answer received at, path, status,
/// document, CLOCK_MONOTONIC ns at receipt).
type Seen = Arc<Mutex<Vec<(Instant, Instant, &'static str, u16, Value, u64)>>>;

fn monotonic_ns() -> u64 {
    let ts = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).unwrap();
    ts.tv_sec() as u64 * 1_000_000_000 + ts.tv_nsec() as u64
}

#[test]
fn after_a_freeze_of_twice_the_ttl_no_answer_claims_the_old_term() {
    let etcd = Etcd::start();
    let a = DaemonSpec::new(&etcd.endpoint(), "thaw", "a")
        .ttl(TTL)
        .start();
    a.wait_role("leader", Duration::from_secs(10));
    let b = DaemonSpec::new(&etcd.endpoint(), "thaw", "b")
        .ttl(TTL)
        .start();
    b.wait_role("follower", Duration::from_secs(10));
    let old = a.fencing_token().unwrap();
    let seen: Seen = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let mut readers = Vec::new();
    // Readers that keep asking: the requests they send right after SIGCONT are answered while
    // the owner task may not have handled the passed deadline yet.
    for path in ["/role", "/leader", "/role", "/leader"] {
        let (http, seen, stop) = (a.http.clone(), seen.clone(), stop.clone());
        readers.push(std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let sent = Instant::now();
                if let Ok((code, body)) = http_get_timeout(&http, path, Duration::from_secs(30))
                    && let Ok(doc) = serde_json::from_str::<Value>(&body)
                {
                    let got = (Instant::now(), monotonic_ns());
                    seen.lock()
                        .unwrap()
                        .push((sent, got.0, path, code, doc, got.1));
                }
            }
        }));
    }
    // A /watch stream, read line by line.
    let watch = {
        let mut s = std::net::TcpStream::connect(&a.http).unwrap();
        use std::io::Write;
        write!(s, "GET /watch HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
        let (seen, stop) = (seen.clone(), stop.clone());
        let opened = Instant::now();
        std::thread::spawn(move || {
            let mut r = BufReader::new(s);
            let mut line = String::new();
            while !stop.load(Ordering::Relaxed) {
                line.clear();
                if r.read_line(&mut line).unwrap_or(0) == 0 {
                    return;
                }
                if let Some(data) = line.trim_end().strip_prefix("data:")
                    && let Ok(doc) = serde_json::from_str::<Value>(data.trim())
                {
                    let got = (Instant::now(), monotonic_ns());
                    seen.lock()
                        .unwrap()
                        .push((opened, got.0, "/watch", 200, doc, got.1));
                }
            }
        })
    };
    // Long polls pending across the freeze, whose waits end during it: they are answered right
    // after SIGCONT from the snapshot of that moment, the first answers electd builds.
    let version = a.role().unwrap()["version"].as_u64().unwrap();
    let mut polls = Vec::new();
    for i in 0..16u64 {
        let (http, seen) = (a.http.clone(), seen.clone());
        let uri = format!("/role?wait={}ms&after={version}", 1000 + 200 * i);
        polls.push(std::thread::spawn(move || {
            let sent = Instant::now();
            if let Ok((code, body)) = http_get_timeout(&http, &uri, Duration::from_secs(30))
                && let Ok(doc) = serde_json::from_str::<Value>(&body)
            {
                let got = (Instant::now(), monotonic_ns());
                seen.lock()
                    .unwrap()
                    .push((sent, got.0, "long poll", code, doc, got.1));
            }
        }));
    }
    std::thread::sleep(Duration::from_millis(500));
    a.signal(Signal::SIGSTOP);
    std::thread::sleep(Duration::from_secs(6));
    b.wait_role("leader", Duration::from_secs(1));
    let thawed = Instant::now();
    a.signal(Signal::SIGCONT);
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, Ordering::Relaxed);
    let logs = format!("--- a:\n{}\n--- b:\n{}", a.log_tail(60), b.log_tail(30));
    drop(a);
    for r in readers.into_iter().chain(polls) {
        let _ = r.join();
    }
    let _ = watch.join();
    let seen = seen.lock().unwrap();
    let fresh: Vec<_> = seen
        .iter()
        .filter(|(sent, _, p, ..)| *p != "/watch" && *sent >= thawed)
        .collect();
    let late: Vec<_> = seen
        .iter()
        .filter(|(sent, got, p, ..)| {
            !["/watch", "long poll"].contains(p) && *sent < thawed && *got >= thawed
        })
        .collect();
    let polled: Vec<_> = seen
        .iter()
        .filter(|(_, _, p, ..)| *p == "long poll")
        .collect();
    let events: Vec<_> = seen
        .iter()
        .filter(|(_, got, p, ..)| *p == "/watch" && *got >= thawed)
        .collect();
    assert!(
        fresh.len() >= 4,
        "requests sent after SIGCONT: {}",
        fresh.len()
    );
    assert!(
        !events.is_empty(),
        "the stream said something after SIGCONT"
    );
    let claims = |doc: &Value| {
        doc["fencing_token"].as_i64() == Some(old)
            && (matches!(doc["role"].as_str(), Some("leader" | "suspect"))
                || doc["valid_ms"].as_u64().is_some_and(|v| v > 0))
    };
    // A request sent after SIGCONT is never told the old term leads.
    for (_, _, path, code, doc, _) in &fresh {
        assert!(
            !claims(doc),
            "{path} answered {code} claiming the old term {old} to a request sent after SIGCONT: {doc}\n{logs}"
        );
        if *path == "/leader" {
            assert_eq!(*code, 503, "/leader after SIGCONT: {doc}");
        }
    }
    // A long poll whose wait ended during the freeze is answered from the snapshot of the
    // moment electd runs again: never a claim of the old term.
    assert_eq!(polled.len(), 16, "every long poll was answered");
    for (_, got, _, code, doc, _) in &polled {
        assert!(
            *got >= thawed,
            "a long poll answered during the freeze: {doc}"
        );
        assert!(
            !claims(doc),
            "a long poll answered {code} after SIGCONT claiming the old term {old}: {doc}\n{logs}"
        );
    }
    // One sent before the freeze and answered after it (its answer was built before the freeze)
    // gave a budget that, counted from when it was sent, ran out long before.
    for (sent, _, path, _, doc, _) in &late {
        if let Some(ms) = doc["valid_ms"].as_u64() {
            assert!(
                *sent + Duration::from_millis(ms) < thawed,
                "{path}: a budget of {ms} ms sent {:?} before SIGCONT still ran: {doc}",
                thawed - *sent
            );
        }
    }
    // A pushed event that names the old term carries a deadline, on this host's monotonic
    // clock, that had passed when it was read.
    for (_, _, _, _, doc, read_ns) in &events {
        if claims(doc) {
            let deadline = doc["deadline_monotonic_ns"].as_u64().unwrap_or(u64::MAX);
            assert!(
                deadline < *read_ns,
                "/watch claimed the old term {old} after SIGCONT with a live deadline: {doc}\n{logs}"
            );
        }
    }
    let before = seen.iter().filter(|(_, got, ..)| *got < thawed).count();
    assert!(before > 10, "answers before the freeze: {before}");
    eprintln!(
        "after SIGCONT: {} answers to requests sent after it, {} long polls, {} late answers to \
         earlier ones, {} /watch events; none claimed term {old} ({} answers before the freeze)",
        fresh.len(),
        polled.len(),
        late.len(),
        events.len(),
        before
    );
}

#[test]
fn elect_run_socket_stops_its_command_when_the_budget_runs_out() {
    let etcd = Etcd::start();
    let files = Files::new();
    let daemons: Vec<Daemon> = ["a", "b"]
        .iter()
        .map(|id| {
            DaemonSpec::new(&etcd.endpoint(), "c-run", id)
                .ttl(TTL)
                .start()
        })
        .collect();
    let l = wait_one_leader(&daemons, Duration::from_secs(10));
    let run = |d: &Daemon| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_elect-run"));
        cmd.arg("--socket")
            .arg(&d.socket)
            .args(["--stop-grace", "500ms", "--wait", "60s", "--"])
            .args(["sh", "-c", &ticking_script(&files.ledger)])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(files.dir.join(format!("app-{}.log", d.id()))).unwrap());
        spawn_tied(cmd).expect("elect-run")
    };
    let mut jobs: Vec<Child> = daemons.iter().map(run).collect();
    wait_until(Duration::from_secs(10), "the leader's job", || {
        starts(&ledger(&files.ledger)).len() == 1
    });
    let frozen = Instant::now();
    daemons[l].signal(Signal::SIGSTOP);
    let status = jobs[l].wait().unwrap();
    let stopped_after = frozen.elapsed();
    eprintln!("elect-run stopped {stopped_after:?} after electd froze: {status:?}");
    assert_eq!(
        status.code(),
        Some(76),
        "leadership lost while the command ran"
    );
    // The budget of the last answer (at most BUDGET) plus elect-run's 500 ms grace.
    assert!(
        stopped_after < BUDGET + Duration::from_millis(900),
        "{stopped_after:?}\n{}",
        files.app_logs()
    );
    wait_until(Duration::from_secs(10), "the other job", || {
        starts(&ledger(&files.ledger)).len() == 2
    });
    daemons[l].signal(Signal::SIGCONT);
    assert_no_overlap(&ledger(&files.ledger));
    for j in &mut jobs {
        let _ = j.kill();
        let _ = j.wait();
    }
}

#[test]
fn the_shell_recipe_runs_a_job_only_within_a_budget() {
    let etcd = Etcd::start();
    let a = DaemonSpec::new(&etcd.endpoint(), "c-sh", "a")
        .ttl(TTL)
        .start();
    a.wait_role("leader", Duration::from_secs(10));
    let b = DaemonSpec::new(&etcd.endpoint(), "c-sh", "b")
        .ttl(TTL)
        .start();
    b.wait_role("follower", Duration::from_secs(10));
    let recipe = repo().join("clients/shell/leader-only.sh");
    let run = |d: &Daemon, job: &str| {
        Command::new("sh")
            .arg(&recipe)
            .arg(&d.socket)
            .args(["sh", "-c", job])
            .output()
            .expect("run the recipe")
    };
    let out = run(&a, "echo \"token $ELECTD_FENCING_TOKEN\"");
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let token = a.fencing_token().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("token {token}")
    );
    let out = run(&b, "echo ran");
    assert_eq!(
        out.status.code(),
        Some(75),
        "a follower does not run the job: {out:?}"
    );
    assert!(out.stdout.is_empty(), "{out:?}");
    // A job that outlives the budget is stopped when it runs out.
    let t = Instant::now();
    let out = run(&a, "sleep 30");
    assert!(
        t.elapsed() < BUDGET + Duration::from_millis(700),
        "{:?}",
        t.elapsed()
    );
    assert_eq!(
        out.status.code(),
        Some(124),
        "timeout's code for a job stopped: {out:?}"
    );
}
