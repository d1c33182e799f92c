//! Children that record what they did: every wrapped test command appends lines
//! `WHAT ID TOKEN NANOS` (start, tick, stop; NANOS from `date +%s%N`) to a shared ledger, and
//! checkers read it back.

use std::path::Path;

use super::read_lines;

/// A child that records `start`, then (on SIGTERM) `stop`.
pub fn ledger_script(ledger: &Path) -> String {
    let l = ledger.display();
    format!(
        "now() {{ date +%s%N; }}; \
         echo \"start $ELECTD_ID $ELECTD_FENCING_TOKEN $(now)\" >> {l}; \
         trap 'echo \"stop $ELECTD_ID $ELECTD_FENCING_TOKEN $(now)\" >> {l}; exit 0' TERM; \
         while :; do sleep 0.05; done"
    )
}

/// A child that records `start`, a `tick` every 50 ms while alive (so its death time is known
/// even when it is SIGKILLed), and `stop` on SIGTERM.
pub fn ticking_script(ledger: &Path) -> String {
    let l = ledger.display();
    format!(
        "now() {{ date +%s%N; }}; \
         echo \"start $ELECTD_ID $ELECTD_FENCING_TOKEN $(now)\" >> {l}; \
         trap 'echo \"stop $ELECTD_ID $ELECTD_FENCING_TOKEN $(now)\" >> {l}; exit 0' TERM; \
         while :; do echo \"tick $ELECTD_ID $ELECTD_FENCING_TOKEN $(now)\" >> {l}; sleep 0.05; done"
    )
}

#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    pub what: String,
    pub id: String,
    pub token: i64,
    pub at: u128,
}

/// Parse the ledger. A torn last line (a child killed mid-write) is ignored.
pub fn ledger(path: &Path) -> Vec<Record> {
    read_lines(path)
        .iter()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            if f.len() != 4 {
                return None;
            }
            Some(Record {
                what: f[0].into(),
                id: f[1].into(),
                token: f[2].parse().ok()?,
                at: f[3].parse().ok()?,
            })
        })
        .collect()
}

pub fn starts(records: &[Record]) -> Vec<&Record> {
    records.iter().filter(|r| r.what == "start").collect()
}

/// One run of a child: from its start to its last sign of life.
#[derive(Debug, Clone)]
pub struct Run {
    pub id: String,
    pub token: i64,
    pub start: u128,
    pub last: u128,
}

/// Group the records into runs, keyed by (id, token, start order).
pub fn runs(records: &[Record]) -> Vec<Run> {
    let mut runs: Vec<Run> = Vec::new();
    for r in records {
        if r.what == "start" {
            runs.push(Run {
                id: r.id.clone(),
                token: r.token,
                start: r.at,
                last: r.at,
            });
        } else if let Some(run) = runs
            .iter_mut()
            .rev()
            .find(|run| run.id == r.id && run.token == r.token)
        {
            run.last = run.last.max(r.at);
        }
    }
    runs
}

/// Assert that no two runs overlap in time and that tokens strictly increase from run to run.
pub fn assert_no_overlap(records: &[Record]) {
    let mut rs = runs(records);
    rs.sort_by_key(|r| r.start);
    for w in rs.windows(2) {
        assert!(
            w[0].last < w[1].start,
            "two children ran at once: {:?} was alive until {} but {:?} started at {} ({} ms overlap)",
            w[0].id,
            w[0].last,
            w[1].id,
            w[1].start,
            (w[0].last - w[1].start) / 1_000_000
        );
        assert!(
            w[0].token <= w[1].token,
            "fencing token went backwards: {:?} then {:?}",
            w[0],
            w[1]
        );
    }
}

/// Whether a process exists and is not a zombie.
pub fn pid_alive(pid: i32) -> bool {
    if nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_err() {
        return false;
    }
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    !stat.contains(") Z ")
}
