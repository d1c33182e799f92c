//! Children that record what they did: every wrapped test command appends lines
//! `WHAT ID TOKEN NANOS` (start, tick, stop; NANOS from `date +%s%N`) to a shared ledger, and
//! checkers read it back. A ticking child's `start` line also names its leader key
//! (`start ID TOKEN NANOS KEY`, from `ELECTD_LEADER_KEY`).

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

/// A child that records `start` (with its leader key), a `tick` every 50 ms while alive, and
/// `stop` on SIGTERM.
///
/// At start it also checks, exactly, the invariant "no other child is running": it registers
/// its pid under `<ledger>.pids/` and looks at every other registered pid in /proc. One that
/// is alive (not a zombie) and belongs to the same election makes it record `overlap`. This
/// covers children killed with SIGKILL, which leave no `stop` record.
pub fn ticking_script(ledger: &Path) -> String {
    let l = ledger.display();
    format!(
        "now() {{ date +%s%N; }}; \
         d={l}.pids; mkdir -p $d; touch $d/$$; \
         echo \"start $ELECTD_ID $ELECTD_FENCING_TOKEN $(now) $ELECTD_LEADER_KEY\" >> {l}; \
         for f in $d/*; do p=${{f##*/}}; [ \"$p\" = $$ ] && continue; \
           st=$(awk '{{print $3}}' /proc/$p/stat 2>/dev/null); \
           if [ -n \"$st\" ] && [ \"$st\" != Z ] && tr '\\0' '\\n' < /proc/$p/environ 2>/dev/null | grep -qx \"ELECTD_ELECTION=$ELECTD_ELECTION\"; then \
             echo \"overlap $ELECTD_ID $ELECTD_FENCING_TOKEN $p\" >> {l}; fi; done; \
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
    /// The leader key, on the `start` records of children that name it.
    pub key: Option<String>,
}

/// Parse the ledger. A torn last line (a child killed mid-write) is ignored.
pub fn ledger(path: &Path) -> Vec<Record> {
    read_lines(path)
        .iter()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            if f.len() != 4 && f.len() != 5 {
                return None;
            }
            Some(Record {
                what: f[0].into(),
                id: f[1].into(),
                token: f[2].parse().ok()?,
                at: f[3].parse().ok()?,
                key: f.get(4).map(|k| k.to_string()),
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
    /// The leader key its `start` record names, if it does.
    pub key: Option<String>,
    /// Ended with a `stop` record (a graceful stop); else it was killed and `last` is its
    /// last tick, shortly before its death.
    pub stopped: bool,
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
                key: r.key.clone(),
                stopped: false,
            });
        } else if let Some(run) = runs
            .iter_mut()
            .rev()
            .find(|run| run.id == r.id && run.token == r.token)
        {
            run.last = run.last.max(r.at);
            run.stopped |= r.what == "stop";
        }
    }
    runs
}

/// Assert that no two children ran at once and that fencing tokens never go backwards:
/// - no child found another one alive when it started (`overlap` records, exact);
/// - every run's last sign of life (its `stop`, or last `tick` if it was killed) comes before
///   the next run's start.
pub fn assert_no_overlap(records: &[Record]) {
    let overlaps: Vec<&Record> = records.iter().filter(|r| r.what == "overlap").collect();
    assert!(
        overlaps.is_empty(),
        "a child started while another child of the election was alive (record: overlap ID TOKEN OTHER_PID): {overlaps:?}"
    );
    let mut rs = runs(records);
    rs.sort_by_key(|r| r.start);
    for w in rs.windows(2) {
        assert!(
            w[0].last < w[1].start,
            "two children ran at once: {:?} (token {}) was alive at {} (stopped: {}) but {:?} (token {}) started at {}",
            w[0].id,
            w[0].token,
            w[0].last,
            w[0].stopped,
            w[1].id,
            w[1].token,
            w[1].start,
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

/// When the run of a ticking child under `token` ended: its `stop` record, or — killed with
/// SIGKILL, it leaves none — its last `tick` once no tick has come for 400 ms (it ticks every
/// 50 ms). Waits up to `within`; panics with the ledger if the run goes on.
pub fn wait_run_end(path: &Path, token: i64, within: std::time::Duration) -> u128 {
    let until = std::time::Instant::now() + within;
    loop {
        let records = ledger(path);
        let run = runs(&records).into_iter().rev().find(|r| r.token == token);
        if let Some(r) = &run {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos();
            if r.stopped || now.saturating_sub(r.last) > 400_000_000 {
                return r.last;
            }
        }
        assert!(
            std::time::Instant::now() < until,
            "the run under token {token} did not end within {within:?}: {records:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}
