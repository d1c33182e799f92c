//! Several elections in one electd (issue 24): the `[[elections]]` tables of a config file, one
//! lease and one keepalive stream per process for all of them, the API per election, and
//! balanced leadership — 3 processes × 6 elections with commands writing one ledger per
//! election: every election has one running command at any time, each process leads exactly 2
//! once things settle; kill -9 one and the other two lead 3 each; bring it back and they lead
//! 2 each again, no election moving more than once per change; a replica that serves a subset
//! of the elections is balanced only over what it serves.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;

const ELECTIONS: usize = 6;

fn names(prefix: &str) -> Vec<String> {
    (0..ELECTIONS).map(|i| format!("{prefix}-{i}")).collect()
}

fn ledger_of(dir: &Path, election: &str) -> PathBuf {
    dir.join(format!("ledger-{election}"))
}

/// A config file with one `[[elections]]` table per name, each wrapping a ticking command
/// that writes that election's ledger.
fn config(dir: &Path, file: &str, elections: &[String], balance: bool) -> PathBuf {
    let mut text = format!("balance = {balance}\nbalance_delay = \"1s\"\nstop_grace = \"1s\"\n");
    for e in elections {
        let script = ticking_script(&ledger_of(dir, e));
        let script = serde_json::to_string(&script).unwrap();
        text += &format!("\n[[elections]]\nname = \"{e}\"\ncommand = [\"sh\", \"-c\", {script}]\n");
    }
    let path = dir.join(file);
    std::fs::write(&path, text).unwrap();
    path
}

fn start(etcd: &Etcd, id: &str, config: &Path) -> Daemon {
    DaemonSpec::new(&etcd.endpoint(), "", id)
        .args(&["--config", config.to_str().unwrap()])
        .start()
}

/// How many elections each daemon leads (by /elections), once every election has exactly one
/// leader among them.
fn counts(daemons: &[&Daemon], elections: &[String]) -> Option<Vec<usize>> {
    let leads: Vec<Vec<String>> = daemons.iter().map(|d| d.leads()).collect::<Option<_>>()?;
    let mut held: BTreeMap<&str, usize> = BTreeMap::new();
    for l in &leads {
        for e in l {
            *held.entry(e.as_str()).or_default() += 1;
        }
    }
    let each_once = elections.iter().all(|e| held.get(e.as_str()) == Some(&1));
    each_once.then(|| leads.iter().map(Vec::len).collect())
}

/// Wait until the counts are `want` (in daemon order) and stay so for 3 s (longer than the
/// balance delay, so no move is pending).
fn settle(daemons: &[&Daemon], elections: &[String], want: &[usize], what: &str) {
    let stable_for = Duration::from_secs(3);
    let deadline = std::time::Instant::now() + Duration::from_secs(40);
    let mut since: Option<std::time::Instant> = None;
    loop {
        let c = counts(daemons, elections);
        if c.as_deref() == Some(want) {
            let s = *since.get_or_insert_with(std::time::Instant::now);
            if s.elapsed() >= stable_for {
                return;
            }
        } else {
            since = None;
        }
        if std::time::Instant::now() >= deadline {
            for d in daemons {
                eprintln!("--- {}:\n{}", d.id(), d.log_tail(60));
            }
            panic!("{what}: leaderships per daemon {c:?}, want {want:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The number of command runs (starts) in each election's ledger.
fn starts_per_election(dir: &Path, elections: &[String]) -> BTreeMap<String, usize> {
    elections
        .iter()
        .map(|e| (e.clone(), starts(&ledger(&ledger_of(dir, e))).len()))
        .collect()
}

fn moved(
    before: &BTreeMap<String, usize>,
    after: &BTreeMap<String, usize>,
) -> Vec<(String, usize)> {
    after
        .iter()
        .filter_map(|(e, n)| {
            let d = n - before.get(e).copied().unwrap_or(0);
            (d > 0).then(|| (e.clone(), d))
        })
        .collect()
}

#[test]
fn three_processes_share_six_elections_evenly_on_one_lease_each() {
    let etcd = Etcd::start();
    let dir = tempfile::tempdir().unwrap();
    let elections = names("bal");
    let file = config(dir.path(), "electd.toml", &elections, true);
    let mut a = start(&etcd, "a", &file);
    let b = start(&etcd, "b", &file);
    let c = start(&etcd, "c", &file);
    settle(&[&a, &b, &c], &elections, &[2, 2, 2], "three replicas");
    // One lease per process for all six elections.
    let leases = etcd.etcdctl_ok(&["lease", "list"]);
    assert_eq!(leases.lines().skip(1).count(), 3, "{leases}");
    // The API answers per election; the plain endpoints say what to ask instead.
    let (code, body) = http_get(&a.http, "/role").unwrap();
    assert_eq!(code, 409, "{body}");
    assert!(body.contains("/elections/NAME/role"), "{body}");
    let (code, body) = http_get(&a.http, &format!("/elections/{}/role", elections[0])).unwrap();
    assert_eq!(code, 200, "{body}");
    let (code, body) = http_get(&a.http, "/elections/nope/role").unwrap();
    assert_eq!(code, 404, "{body}");
    assert!(body.contains(&elections[5]), "names the elections: {body}");

    // kill -9 of one: its two elections move once each, the others stay.
    let before = starts_per_election(dir.path(), &elections);
    let a_led = a.leads().unwrap();
    a.kill9();
    settle(&[&b, &c], &elections, &[3, 3], "a killed");
    let m = moved(&before, &starts_per_election(dir.path(), &elections));
    let mut moved_names: Vec<&String> = m.iter().map(|(e, _)| e).collect();
    moved_names.sort();
    assert_eq!(
        moved_names,
        a_led.iter().collect::<Vec<_>>(),
        "only a's elections moved: {m:?}"
    );
    assert!(m.iter().all(|(_, n)| *n == 1), "each moved once: {m:?}");

    // a comes back: one election from each of b and c, each moving once.
    let before = starts_per_election(dir.path(), &elections);
    a.restart();
    settle(&[&a, &b, &c], &elections, &[2, 2, 2], "a back");
    let m = moved(&before, &starts_per_election(dir.path(), &elections));
    let runs: Vec<(String, Vec<(String, i64)>)> = elections
        .iter()
        .map(|e| {
            let r = starts(&ledger(&ledger_of(dir.path(), e)))
                .iter()
                .map(|s| (s.id.clone(), s.token))
                .collect();
            (e.clone(), r)
        })
        .collect();
    if m.len() != 2 {
        for d in [&a, &b, &c] {
            let log = d.log_text();
            let lines: Vec<&str> = log
                .lines()
                .filter(|l| {
                    l.contains("balance")
                        || l.contains("giving way")
                        || l.contains("role changed")
                        || l.contains("switchover")
                })
                .collect();
            eprintln!(
                "--- {}:\n{}",
                d.id(),
                lines[lines.len().saturating_sub(40)..].join("\n")
            );
        }
    }
    assert_eq!(m.len(), 2, "two elections moved back: {m:?}; runs {runs:?}");
    assert!(m.iter().all(|(_, n)| *n == 1), "each moved once: {m:?}");

    // One command per election at any time, throughout.
    for e in &elections {
        assert_no_overlap(&ledger(&ledger_of(dir.path(), e)));
    }
}

/// Regression: a leader that got an election by a balance switchover could never hand it on
/// by a switchover of its own (it kept, for itself, the protection against priorities that a
/// switchover's target gets), so a replica that joined — or came back after kill -9 — got
/// nothing from such a leader, which went on announcing and abandoning the same hand-over.
/// a leads all six before b joins, so b's three came to it by switchover and b must hand one
/// of them to c (fails every time without the fix); then the reported case: kill -9 a, back.
#[test]
fn elections_taken_by_switchover_are_handed_on_to_a_replica_that_joins_or_returns() {
    let etcd = Etcd::start();
    let dir = tempfile::tempdir().unwrap();
    let elections = names("ret");
    let file = config(dir.path(), "electd.toml", &elections, true);
    let mut a = start(&etcd, "a", &file);
    wait_until(Duration::from_secs(15), "a to lead all six", || {
        a.leads().is_some_and(|l| l.len() == ELECTIONS)
    });
    let b = start(&etcd, "b", &file);
    settle(&[&a, &b], &elections, &[3, 3], "b joined a");
    // settle's bound (40 s, then 3 s stable) is above 30 s + 6 × balance_delay.
    let c = start(&etcd, "c", &file);
    settle(&[&a, &b, &c], &elections, &[2, 2, 2], "c joined a and b");
    a.kill9();
    settle(&[&b, &c], &elections, &[3, 3], "a killed");
    a.restart();
    settle(&[&a, &b, &c], &elections, &[2, 2, 2], "a back");
    for e in &elections {
        assert_no_overlap(&ledger(&ledger_of(dir.path(), e)));
    }
}

#[test]
fn a_replica_serving_a_subset_is_balanced_only_over_what_it_serves() {
    let etcd = Etcd::start();
    let dir = tempfile::tempdir().unwrap();
    let elections = names("sub");
    let file = config(dir.path(), "electd.toml", &elections, true);
    let a = start(&etcd, "a", &file);
    let b = start(&etcd, "b", &file);
    settle(&[&a, &b], &elections, &[3, 3], "two replicas");
    // d serves two of the six: another set. The others' share stays 3 each, and nothing is
    // handed to d.
    let subset = config(dir.path(), "subset.toml", &elections[..2], true);
    let before = starts_per_election(dir.path(), &elections);
    let d = start(&etcd, "d", &subset);
    wait_until(Duration::from_secs(10), "d to follow its elections", || {
        d.leads().is_some_and(|l| l.is_empty())
            && http_get(&d.http, &format!("/elections/{}/role", elections[0]))
                .is_ok_and(|(c, b)| c == 200 && b.contains("\"follower\""))
    });
    std::thread::sleep(Duration::from_secs(4));
    settle(&[&a, &b], &elections, &[3, 3], "d joined");
    assert_eq!(d.leads(), Some(vec![]));
    assert!(
        moved(&before, &starts_per_election(dir.path(), &elections)).is_empty(),
        "nothing moved for d"
    );
    for e in &elections {
        assert_no_overlap(&ledger(&ledger_of(dir.path(), e)));
    }
}

#[test]
fn without_balance_the_elections_follow_the_queues_and_control_acts_per_election() {
    let etcd = Etcd::start();
    let dir = tempfile::tempdir().unwrap();
    let elections = names("nob");
    let file = config(dir.path(), "electd.toml", &elections, false);
    let a = start(&etcd, "a", &file);
    wait_until(Duration::from_secs(10), "a to lead all six", || {
        a.leads().is_some_and(|l| l.len() == ELECTIONS)
    });
    let b = start(&etcd, "b", &file);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        counts(&[&a, &b], &elections),
        Some(vec![6, 0]),
        "no balance asked"
    );
    // Resign one election over the socket: only it moves.
    let (code, reply) = a.control(&format!("/elections/{}/resign", elections[3]));
    assert_eq!(code, 200, "{reply}");
    assert_eq!(reply["resigned"], true, "{reply}");
    wait_until(Duration::from_secs(5), "b to lead that one", || {
        b.leads() == Some(vec![elections[3].clone()])
    });
    // Without a name: every election; the reply names each.
    let (code, reply) = a.control("/pause");
    assert_eq!(code, 200, "{reply}");
    assert_eq!(
        reply["replies"].as_array().map(Vec::len),
        Some(ELECTIONS),
        "{reply}"
    );
    wait_until(Duration::from_secs(5), "b to lead all six", || {
        b.leads().is_some_and(|l| l.len() == ELECTIONS)
    });
    // `electd status` shows every election.
    let out = std::process::Command::new(electd_binary())
        .args(["status", "--socket"])
        .arg(&a.socket)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    for e in &elections {
        assert!(text.contains(&format!("election:      {e}")), "{text}");
    }
    // Metrics carry the election.
    let (_, metrics) = http_get(&b.http, "/metrics").unwrap();
    for e in &elections {
        assert!(
            metrics.contains(&format!("electd_is_leader{{election=\"{e}\"}} 1")),
            "{metrics}"
        );
    }
}
