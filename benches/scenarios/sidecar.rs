//! Scenario: the app contract (issue 22) under faults. Sidecar electd replicas (no command),
//! each with the contract-following app beside it (tests/apps/contract_app.py on the reference
//! client), some on `/watch`, one long-polling `/role`. Rounds alternate SIGSTOP of the
//! leader's electd (longer than the TTL, then SIGCONT) and kill -9 of it (then a restart); each
//! round measures how long before the next leader's first claim the old term's app had stopped
//! acting — the margin, negative in a violation — and how long the next claim took.

use std::path::PathBuf;
use std::time::Duration;

use nix::sys::signal::Signal;

use super::failover::{Cols, Counts, temp_dir};
use super::report::{Cell, Page, ms, spec};
use super::{BenchConfig, Section, SectionData, Value, attempt, graced_spec, ms_between, now_ns};
use crate::common::{
    AppMode, ContractApp, Daemon, Etcd, claims, ledger, wait_one_leader, wait_until,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    Stop,
    Kill,
}

const FAULTS: [Fault; 2] = [Fault::Stop, Fault::Kill];

impl Fault {
    fn col(self) -> usize {
        match self {
            Fault::Stop => 0,
            Fault::Kill => 1,
        }
    }

    fn label(self) -> &'static str {
        match self {
            Fault::Stop => "SIGSTOP",
            Fault::Kill => "kill -9",
        }
    }
}

/// Replica `i`'s app: on the Unix socket with `/watch`, long-polling `/role` on the socket, on
/// TCP with `/watch`, and round again. The leader moves on by one replica each round, so with
/// three the deposed app and the fault vary independently.
fn mode(i: usize) -> AppMode {
    AppMode {
        watch: i % 3 != 1,
        over_tcp: i % 3 == 2,
        naive: false,
    }
}

fn describe(m: AppMode) -> &'static str {
    match (m.watch, m.over_tcp) {
        (true, false) => "`/watch` on the Unix socket",
        (false, false) => "long-polling `/role` on the Unix socket",
        (true, true) => "`/watch` over TCP",
        (false, true) => "long-polling `/role` over TCP",
    }
}

struct Files {
    ledger: PathBuf,
    claims: PathBuf,
    dir: tempfile::TempDir,
}

/// The replicas and their apps, once one app acts as leader.
fn start(cfg: &BenchConfig, etcd: &Etcd, files: &Files) -> (Vec<Daemon>, Vec<ContractApp>) {
    let ep = etcd.endpoint();
    let ids: Vec<String> = (0..cfg.sidecar_replicas.max(2))
        .map(|i| ((b'a' + i as u8) as char).to_string())
        .collect();
    let daemons: Vec<Daemon> = ids
        .iter()
        .map(|id| graced_spec(cfg, &ep, "sidecar", id).start())
        .collect();
    wait_one_leader(&daemons, Duration::from_secs(20));
    let grace = cfg.stop_grace.as_secs_f64() / 2.0;
    let apps = ids
        .iter()
        .enumerate()
        .map(|(i, id)| {
            let log = files.dir.path().join(format!("app-{id}.log"));
            let paths = (files.ledger.as_path(), files.claims.as_path());
            ContractApp::start(id, &daemons[i], paths, &log, grace, mode(i))
        })
        .collect();
    (daemons, apps)
}

/// Whether app `id` acted under `token` in the last 200 ms (it ticks every 20 ms).
fn acts(files: &Files, id: &str, token: i64) -> bool {
    let recent = now_ns().saturating_sub(200_000_000);
    ledger(&files.ledger)
        .iter()
        .any(|r| r.id == id && r.token == token && r.what == "tick" && r.at >= recent)
}

/// One round's figures (milliseconds).
struct Sample {
    margin: f64,
    fault_to_claim: f64,
    fault_to_stop: f64,
    /// The deposed app followed `/watch`.
    watch: bool,
}

fn round(cfg: &BenchConfig, daemons: &mut [Daemon], files: &Files, fault: Fault) -> Sample {
    let l = wait_one_leader(daemons, Duration::from_secs(20));
    let token = daemons[l]
        .fencing_token()
        .expect("the leader names its token");
    let id = daemons[l].id().to_string();
    wait_until(Duration::from_secs(10), "the leader's app to act", || {
        acts(files, &id, token)
    });
    let t = now_ns();
    match fault {
        Fault::Stop => daemons[l].signal(Signal::SIGSTOP),
        Fault::Kill => daemons[l].kill9(),
    }
    wait_until(
        cfg.ttl + Duration::from_secs(10),
        "the next leader's first claim",
        || claims(&files.claims).iter().any(|c| c.token > token),
    );
    match fault {
        Fault::Stop => {
            let thaw = t + cfg.sidecar_freeze.as_nanos();
            std::thread::sleep(Duration::from_nanos(
                thaw.saturating_sub(now_ns()).try_into().unwrap_or(0),
            ));
            daemons[l].signal(Signal::SIGCONT);
        }
        Fault::Kill => daemons[l].restart(),
    }
    daemons[l].wait_role("follower", Duration::from_secs(20));
    std::thread::sleep(cfg.sidecar_settle);

    let records = ledger(&files.ledger);
    let old: Vec<_> = records.iter().filter(|r| r.token == token).collect();
    if let Some(r) = old.iter().find(|r| r.id != id) {
        panic!("app {} acted under {id}'s token {token}: {r:?}", r.id);
    }
    let last = old
        .iter()
        .map(|r| r.at)
        .max()
        .expect("the old leader's app acted");
    let first = claims(&files.claims)
        .iter()
        .filter(|c| c.token > token)
        .map(|c| c.taken)
        .min()
        .expect("the next leader claimed");
    Sample {
        margin: ms_between(first, last),
        fault_to_claim: ms_between(first, t),
        fault_to_stop: ms_between(last, t),
        watch: mode(l).watch,
    }
}

pub fn sidecar(cfg: &BenchConfig) -> Section {
    let mut s = Section::new("sidecar");
    s.expected = cfg.iterations;
    let dir = temp_dir();
    let files = Files {
        ledger: dir.path().join("ledger"),
        claims: dir.path().join("claims"),
        dir,
    };
    let (mut margin, mut watch, mut poll) = (Cols::default(), Cols::default(), Cols::default());
    let (mut to_claim, mut to_stop) = (Cols::default(), Cols::default());
    let mut on_watch = Counts::default();
    let mut least: [Option<f64>; 2] = [None; 2];
    let etcd = Etcd::start();
    match attempt(|| start(cfg, &etcd, &files)) {
        Err(e) => s.failures.push(format!("setting up: {e}")),
        Ok((mut daemons, _apps)) => {
            for i in 0..cfg.iterations {
                for fault in FAULTS {
                    let c = fault.col();
                    match attempt(|| round(cfg, &mut daemons, &files, fault)) {
                        Ok(x) => {
                            cfg.progress(&format!(
                                "sidecar {} #{i}: margin {:.0} ms, next claim {:.0} ms after \
                                 the fault (deposed app on /watch: {})",
                                fault.label(),
                                x.margin,
                                x.fault_to_claim,
                                x.watch
                            ));
                            margin.put(c, x.margin);
                            if x.watch { &mut watch } else { &mut poll }.put(c, x.margin);
                            to_claim.put(c, x.fault_to_claim);
                            to_stop.put(c, x.fault_to_stop);
                            on_watch.put(c, x.watch);
                            least[c] = Some(least[c].map_or(x.margin, |m| m.min(x.margin)));
                        }
                        Err(e) => {
                            cfg.progress(&format!("sidecar {} #{i} failed: {e}", fault.label()));
                            s.failures.push(format!("{} #{i}: {e}", fault.label()));
                        }
                    }
                    // Whatever happened, every replica runs again.
                    for d in daemons.iter_mut() {
                        d.signal(Signal::SIGCONT);
                        if !d.is_running() {
                            d.restart();
                        }
                    }
                }
            }
        }
    }
    s.push("margin", margin.values());
    s.push(
        "margin_min",
        least.map(|m| m.map_or(Value::Missing, Value::Number)),
    );
    s.push("margin_watch", watch.values());
    s.push("margin_poll", poll.values());
    s.push("fault_to_stop", to_stop.values());
    s.push("fault_to_claim", to_claim.values());
    s.push("on_watch", on_watch.values());
    s
}

/// The smallest margin of column `col`, if measured.
fn margin_min(d: &SectionData, col: usize) -> Option<f64> {
    match d.cell("margin_min", col)? {
        Cell::Number(x) => Some(*x),
        _ => None,
    }
}

/// An app of an old term that was still acting when the next leader first claimed.
pub fn violations(d: &SectionData) -> Vec<String> {
    FAULTS
        .iter()
        .filter_map(|f| {
            // A tie counts: the old app acted at the moment the next leader claimed.
            let m = margin_min(d, f.col()).filter(|m| *m <= 0.0)?;
            Some(format!(
                "sidecar apps, {} of the leader's electd: an app of the old term acted {} after \
                 the next leader's first claim",
                f.label(),
                ms(0.0 - m) // +0 for a tie, not −0
            ))
        })
        .collect()
}

pub fn page(p: &BenchConfig, d: &SectionData) -> Page {
    let n = p.sidecar_replicas.max(2);
    let apps: Vec<String> = (0..n)
        .map(|i| format!("{} {}", (b'a' + i as u8) as char, describe(mode(i))))
        .collect();
    let mut notes = Vec::new();
    for fault in FAULTS {
        let c = fault.col();
        let (Some(m), Some(min)) = (d.cell("margin", c).and_then(Cell::median), margin_min(d, c))
        else {
            continue;
        };
        let claim = d
            .cell("fault_to_claim", c)
            .and_then(Cell::median)
            .map_or("?".into(), ms);
        let verdict = if min > 0.0 {
            "every app of the old term had stopped before the next leader's first claim"
        } else {
            "**an app of the old term was still acting when the next leader claimed: a \
             violation of the contract**"
        };
        notes.push(format!(
            "{}: margin p50 {}, min {}: {verdict}; the next leader's first claim came {claim} \
             (p50) after the fault.",
            fault.label(),
            ms(m),
            ms(min),
        ));
    }
    Page {
        title: "Sidecar apps under faults".into(),
        about: format!(
            "{n} sidecar electd replicas (no command; `--stop-grace {}ms`, electd's default \
             start guard), each with tests/apps/contract_app.py beside it (python3, on the \
             reference client clients/python/electd_client.py, stopping within `--grace {}` s): \
             {}. An app ticks every 20 ms while its budget runs, writes `stop` when it runs \
             out, and records every budget it takes (a claim). Rounds alternate, {} of each: \
             SIGSTOP of the leader's electd for {:.1} s (longer than the TTL), then SIGCONT; \
             kill -9 of it, then a restart. Leadership moves on by one replica each round. \
             After each fault has healed and the replica rejoined, everything is watched {:.1} \
             s more. Margin = the next leader's first claim minus the old term's last act (its \
             app's last `tick` or `stop`): negative would mean two apps acting at once.",
            p.stop_grace.as_millis(),
            p.stop_grace.as_secs_f64() / 2.0,
            apps.join("; "),
            p.iterations,
            p.sidecar_freeze.as_secs_f64(),
            p.sidecar_settle.as_secs_f64(),
        ),
        columns: FAULTS.map(|f| f.label().to_string()).to_vec(),
        rows: vec![
            spec(
                "margin",
                "margin: old term's last act → the next leader's first claim",
                "ms",
                true,
            ),
            spec("margin_min", "the smallest margin", "ms", true),
            spec(
                "margin_watch",
                "margin, rounds whose deposed app followed `/watch`",
                "ms",
                true,
            ),
            spec(
                "margin_poll",
                "margin, rounds whose deposed app long-polled `/role`",
                "ms",
                true,
            ),
            spec(
                "fault_to_stop",
                "fault → the old term's last act",
                "ms",
                false,
            ),
            spec(
                "fault_to_claim",
                "fault → the next leader's first claim",
                "ms",
                false,
            ),
            spec(
                "on_watch",
                "rounds whose deposed app followed `/watch`",
                "runs",
                false,
            ),
        ],
        notes,
    }
}
