//! The safety checker. The children's own ledger is the source of truth for who ran when;
//! etcd's history says which key led when. A run is fine when:
//! - it overlaps no other run: no child found another alive when it started (`overlap`
//!   records), and each run's last sign of life comes before the next run's start;
//! - its token is the create revision of the leader key it names, and that key was the
//!   leader key: at the revision it became the lowest create revision under `<election>/`, a
//!   point-in-time read of etcd shows exactly that key with that create revision (for a key
//!   that did not wait in the queue, that revision *is* the token);
//! - the key is that replica's (its value's `id`);
//! - it did not start before its key led, nor outlive its key: its start is not before the
//!   earliest time its key can have become the leader key, and its last sign of life is not
//!   after the latest time the key can have been released with the clean-release mark — nor,
//!   for a key deleted without it (taken away: expired, revoked), later than the successor's
//!   start guard after that (the revision's wall-time bounds come from the clock in
//!   `history`);
//! - tokens strictly increase from run to run; a run may repeat the previous token only as a
//!   restart under the same key (one leadership, the command restarted inside it).

use std::collections::BTreeMap;

use crate::common::{Record, Run};

/// electd's default `--start-guard` (the chaos replicas run with it): how long a successor
/// waits after a leader's key vanished without the clean-release mark.
pub const START_GUARD_NS: u128 = 250_000_000;
use crate::history::{Clocked, Lead};

/// What the checker found out about one run.
#[derive(Clone, Debug)]
pub struct RunFacts {
    /// Index into the leads whose key the run names.
    pub lead: Option<usize>,
    /// The run's last sign of life minus the earliest time its key can have been deleted (ns;
    /// negative: the command was gone before its leadership ended at etcd).
    pub outlived_ns: Option<i128>,
    /// The same against the latest time the key can have been deleted: what the run
    /// certainly outlived its key by (must not be positive).
    pub outlived_surely_ns: Option<i128>,
    /// Its key waited in the queue: it became leader after it was created.
    pub queued: bool,
}

#[derive(Debug, Default)]
pub struct Verdict {
    pub violations: Vec<String>,
    pub facts: Vec<RunFacts>,
    /// Runs that repeated the previous run's token under the same key.
    pub restarts_in_term: usize,
}

/// Runs sorted by start.
pub fn sorted_runs(records: &[Record]) -> Vec<Run> {
    let mut rs = crate::common::runs(records);
    rs.sort_by_key(|r| r.start);
    rs
}

/// The overlap part alone (cheap; needs no etcd): `overlap` records and run intervals.
pub fn overlaps(records: &[Record], runs: &[Run]) -> Vec<String> {
    let mut out: Vec<String> = records
        .iter()
        .filter(|r| r.what == "overlap")
        .map(|r| {
            format!(
                "overlap: {} (token {}) started while another child of the election (pid {}) was alive",
                r.id, r.token, r.at
            )
        })
        .collect();
    for w in runs.windows(2) {
        if w[0].last >= w[1].start {
            out.push(format!(
                "overlap: {} (token {}) was alive at {} but {} (token {}) started at {} ({} ms earlier)",
                w[0].id,
                w[0].token,
                w[0].last,
                w[1].id,
                w[1].token,
                w[1].start,
                (w[0].last - w[1].start) / 1_000_000
            ));
        }
    }
    out
}

/// Token order alone: strictly increasing, or the same key again.
pub fn token_order(runs: &[Run]) -> (Vec<String>, usize) {
    let mut out = Vec::new();
    let mut restarts = 0;
    for w in runs.windows(2) {
        let (a, b) = (&w[0], &w[1]);
        if b.token > a.token {
            continue;
        }
        if b.token == a.token && b.key.is_some() && a.key == b.key && a.id == b.id {
            restarts += 1;
            continue;
        }
        out.push(format!(
            "token went backwards or was reused: {} ran with token {} (key {:?}), then {} with token {} (key {:?})",
            a.id, a.token, a.key, b.id, b.token, b.key
        ));
    }
    (out, restarts)
}

/// The whole check. `reads` holds the point-in-time reads at each lead's first revision.
pub fn check(
    records: &[Record],
    runs: &[Run],
    leads: &[Lead],
    reads: &BTreeMap<i64, Option<(String, i64)>>,
    clock: &Clocked,
) -> Verdict {
    let mut v = Verdict {
        violations: overlaps(records, runs),
        ..Verdict::default()
    };
    let (order, restarts) = token_order(runs);
    v.violations.extend(order);
    v.restarts_in_term = restarts;
    // A key's name is `<election>/<lease>`, and one lease serves a process across campaigns:
    // a leadership is a key name *and* its create revision.
    let by_key: BTreeMap<(&str, i64), usize> = leads
        .iter()
        .enumerate()
        .map(|(i, l)| ((l.key.as_str(), l.create_rev), i))
        .collect();
    for r in runs {
        let mut facts = RunFacts {
            lead: None,
            outlived_ns: None,
            outlived_surely_ns: None,
            queued: false,
        };
        let who = format!("{} (token {}, started {})", r.id, r.token, r.start);
        let Some(key) = r.key.as_deref() else {
            v.violations.push(format!(
                "{who}: its start record names no ELECTD_LEADER_KEY"
            ));
            v.facts.push(facts);
            continue;
        };
        let Some(&li) = by_key.get(&(key, r.token)).or_else(|| {
            // Not a leadership of that key with the run's token: report against the key's.
            by_key.iter().find(|((k, _), _)| *k == key).map(|(_, i)| i)
        }) else {
            v.violations.push(format!(
                "{who}: its key {key} was never the leader key at etcd"
            ));
            v.facts.push(facts);
            continue;
        };
        let lead = &leads[li];
        facts.lead = Some(li);
        facts.queued = lead.from_rev > lead.create_rev;
        if lead.create_rev != r.token {
            v.violations.push(format!(
                "{who}: token is not its key's create revision ({key} was created at {})",
                lead.create_rev
            ));
        }
        match reads.get(&lead.from_rev) {
            Some(Some((k, c))) if k == key && *c == r.token => {}
            other => v.violations.push(format!(
                "{who}: at revision {} etcd's lowest key under the prefix is {other:?}, not ({key}, {})",
                lead.from_rev, r.token
            )),
        }
        if lead.id.as_deref().is_some_and(|id| id != r.id) {
            v.violations
                .push(format!("{who}: its key {key} belongs to {:?}", lead.id));
        }
        if let Some(led) = clock.lower(lead.from_rev)
            && r.start < led
        {
            v.violations.push(format!(
                "{who}: started {} ms before its key {key} can have become the leader key (revision {})",
                (led - r.start) / 1_000_000,
                lead.from_rev
            ));
        }
        if let Some(until) = lead.until_rev {
            if let Some(lo) = clock.lower(until) {
                facts.outlived_ns = Some(r.last as i128 - lo as i128);
            }
            if let Some(hi) = clock.upper(until) {
                facts.outlived_surely_ns = Some(r.last as i128 - hi as i128);
            }
            // Released with the mark: its command was stopped before the mark was written.
            // Taken away (deleted without the mark): it is killed once its electd sees the
            // deletion, and the successor waits its start guard — it may outlive the key by
            // less than that, never more.
            let allowed = if lead.released { 0 } else { START_GUARD_NS };
            if let Some(hi) = clock.upper(until)
                && r.last > hi + allowed
            {
                v.violations.push(format!(
                    "{who}: alive {} ms after its key {key} was certainly {} (revision {until}){}",
                    (r.last - hi) / 1_000_000,
                    if lead.released { "released" } else { "deleted" },
                    if lead.released {
                        ""
                    } else {
                        ": longer than the successor's start guard"
                    }
                ));
            }
        }
        v.facts.push(facts);
    }
    v
}
