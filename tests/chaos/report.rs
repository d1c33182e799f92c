//! The chaos run's report. The run's records become data (`safety.json`, [`SafetyData`]: the
//! electd commit, the seed and parameters, the fault mix, the figures per fault kind and per
//! combination, every violation with its episode, every episode), `safety.md` is rendered from
//! that data alone ([`render`]), and the timeline pictures (`safety-timeline.svg`: the whole run
//! in strips of [`FAULTS_PER_STRIP`] faults; `safety-zoom.svg`: the densest combination up
//! close) are drawn with plotters from the run itself: who led at etcd, each command's run as a
//! bar on its replica's row, faults shaded on the rows of what they hit. The findings are the
//! violations the run recorded, grouped by episode; the page's first lines say how many.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::Path;

use plotters::prelude::*;
use serde::{Deserialize, Serialize};

use crate::check::Verdict;
use crate::common::Run;
use crate::history::{Clocked, Lead};
use crate::nemesis::{self, KINDS, MEMBERS, REPLICAS};

/// The data file's format; the renderer refuses others.
pub const FORMAT: u32 = 1;

/// What happened to one fault.
#[derive(Clone, Debug)]
pub struct FaultTrace {
    pub kind: &'static str,
    pub detail: String,
    /// The replicas (nX) or members (mX) it hit.
    pub targets: String,
    pub hit_leader: bool,
    pub start_ns: u128,
    pub end_ns: u128,
    /// Every possible target was held by another fault of its episode.
    pub skipped: bool,
}

#[derive(Clone, Debug)]
pub struct EpisodeTrace {
    pub n: usize,
    pub start_ns: u128,
    pub steps_done_ns: u128,
    /// When one agreed leader was back after healing.
    pub healed_ns: u128,
    pub leader_before: usize,
    pub faults: Vec<FaultTrace>,
    pub note: String,
}

impl EpisodeTrace {
    fn injected(&self) -> impl Iterator<Item = &FaultTrace> {
        self.faults.iter().filter(|f| !f.skipped)
    }
    fn signature(&self) -> String {
        let mut k: Vec<&str> = self.injected().map(|f| f.kind).collect();
        k.sort();
        k.join(" + ")
    }
}

pub struct Trace {
    pub seed: u64,
    pub faults: usize,
    pub started_ns: u128,
    pub ended_ns: u128,
    pub episodes: Vec<EpisodeTrace>,
    pub control_outcomes: BTreeMap<String, usize>,
}

pub const FAULTS_PER_STRIP: usize = 20;

/// Figures for a set of episodes.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Figures {
    pub episodes: usize,
    pub faults: usize,
    pub runs: usize,
    pub overlaps: usize,
    /// Longest time no command ran (ms), among gaps that began in these episodes' windows.
    pub max_gap_ms: Option<i64>,
    /// Largest "outlived" (ms, negative: dead before its key was deleted) among leaderships
    /// that ended in these windows.
    pub max_outlived_ms: Option<i64>,
    /// The same against the latest bound: what a command certainly outlived its key by.
    pub max_outlived_surely_ms: Option<i64>,
}

fn max_opt(a: Option<i64>, b: Option<i64>) -> Option<i64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    }
}

impl Figures {
    fn add(&mut self, w: &WindowFigures, faults: usize) {
        self.episodes += 1;
        self.faults += faults;
        self.runs += w.runs;
        self.overlaps += w.overlaps;
        self.max_gap_ms = self.max_gap_ms.max(w.max_gap_ms);
        self.max_outlived_ms = max_opt(self.max_outlived_ms, w.max_outlived_ms);
        self.max_outlived_surely_ms =
            max_opt(self.max_outlived_surely_ms, w.max_outlived_surely_ms);
    }
}

#[derive(Clone, Debug, Default)]
struct WindowFigures {
    runs: usize,
    overlaps: usize,
    max_gap_ms: Option<i64>,
    max_outlived_ms: Option<i64>,
    max_outlived_surely_ms: Option<i64>,
}

pub struct Summary {
    pub total: Figures,
    pub per_kind: Vec<(&'static str, Figures, usize, usize)>,
    pub per_combination: Vec<(String, Figures)>,
    pub by_size: BTreeMap<usize, Figures>,
    pub violations: usize,
    pub queued_runs: usize,
    pub restarts_in_term: usize,
    pub leads: usize,
    pub clock_median_ms: u128,
    pub clock_p99_ms: u128,
    pub clock_max_ms: u128,
    pub duration_s: f64,
}

/// Each episode's window: from its start to the next episode's start (or the end).
fn windows(trace: &Trace) -> Vec<(u128, u128)> {
    let eps = &trace.episodes;
    (0..eps.len())
        .map(|i| {
            let end = eps.get(i + 1).map_or(trace.ended_ns, |e| e.start_ns);
            (eps[i].start_ns, end)
        })
        .collect()
}

fn ms_of(ns: i128) -> i64 {
    (ns / 1_000_000) as i64
}

impl Summary {
    pub fn new(
        trace: &Trace,
        runs: &[Run],
        leads: &[Lead],
        clock: &Clocked,
        verdict: &Verdict,
    ) -> Summary {
        let wins = windows(trace);
        let mut per_window = vec![WindowFigures::default(); wins.len()];
        let find = |t: u128| wins.iter().position(|(a, b)| *a <= t && t < *b);
        for r in runs {
            if let Some(w) = find(r.start) {
                per_window[w].runs += 1;
            }
        }
        for pair in runs.windows(2) {
            let (a, b) = (&pair[0], &pair[1]);
            let Some(w) = find(a.last) else { continue };
            if a.last >= b.start {
                per_window[w].overlaps += 1;
            } else {
                let gap = ms_of((b.start - a.last) as i128);
                per_window[w].max_gap_ms = per_window[w].max_gap_ms.max(Some(gap));
            }
        }
        for (r, f) in runs.iter().zip(&verdict.facts) {
            let (Some(li), Some(o)) = (f.lead, f.outlived_ns) else {
                continue;
            };
            let ended = leads[li].until_rev.and_then(|u| clock.lower(u));
            if let Some(w) = ended.and_then(find).or_else(|| find(r.last)) {
                let pw = &mut per_window[w];
                pw.max_outlived_ms = max_opt(pw.max_outlived_ms, Some(ms_of(o)));
                let surely = f.outlived_surely_ns.map(ms_of);
                pw.max_outlived_surely_ms = max_opt(pw.max_outlived_surely_ms, surely);
            }
        }
        let mut total = Figures::default();
        let mut per_kind: Vec<(&'static str, Figures, usize, usize)> = KINDS
            .iter()
            .map(|k| (k.name, Figures::default(), 0, 0))
            .collect();
        let mut per_combination: BTreeMap<String, Figures> = BTreeMap::new();
        let mut by_size: BTreeMap<usize, Figures> = BTreeMap::new();
        for (ep, w) in trace.episodes.iter().zip(&per_window) {
            let n = ep.injected().count();
            total.add(w, n);
            by_size.entry(n).or_default().add(w, n);
            for (name, fig, alone, combined) in per_kind.iter_mut() {
                let hits = ep.injected().filter(|f| f.kind == *name).count();
                if hits > 0 {
                    fig.add(w, hits);
                    if n == 1 {
                        *alone += 1;
                    } else {
                        *combined += hits;
                    }
                }
            }
            if n > 1 {
                per_combination.entry(ep.signature()).or_default().add(w, n);
            }
        }
        // Runs before the first episode count in the total too.
        total.runs = runs.len();
        let mut per_combination: Vec<(String, Figures)> = per_combination.into_iter().collect();
        per_combination.sort_by(|a, b| b.1.episodes.cmp(&a.1.episodes).then(a.0.cmp(&b.0)));
        let mut res = clock.resolution();
        res.sort();
        let pick = |q: f64| {
            res.get(((res.len() as f64 - 1.0) * q) as usize)
                .map_or(0, |ns| ns / 1_000_000)
        };
        Summary {
            total,
            per_kind,
            per_combination,
            by_size,
            violations: verdict.violations.len(),
            queued_runs: verdict.facts.iter().filter(|f| f.queued).count(),
            restarts_in_term: verdict.restarts_in_term,
            leads: leads.len(),
            clock_median_ms: pick(0.5),
            clock_p99_ms: pick(0.99),
            clock_max_ms: pick(1.0),
            duration_s: (trace.ended_ns - trace.started_ns) as f64 / 1e9,
        }
    }

    pub fn one_line(&self) -> String {
        format!(
            "chaos: {} faults in {} episodes ({} combined), {} child runs, {} overlaps, {} violations; longest leaderless gap {}, outlived at most {} / surely {}; {} leader keys, {} runs waited in the queue",
            self.total.faults,
            self.total.episodes,
            self.by_size
                .iter()
                .filter(|(n, _)| **n > 1)
                .map(|(_, f)| f.episodes)
                .sum::<usize>(),
            self.total.runs,
            self.total.overlaps,
            self.violations,
            secs(self.total.max_gap_ms),
            secs(self.total.max_outlived_ms),
            secs(self.total.max_outlived_surely_ms),
            self.leads,
            self.queued_runs
        )
    }
}

fn secs(v: Option<i64>) -> String {
    match v {
        None => "–".into(),
        Some(v) => format!("{:.2} s", v as f64 / 1000.0),
    }
}

// ---------------------------------------------------------------------------
// The data file
// ---------------------------------------------------------------------------

/// `safety.json`: everything `safety.md` shows.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SafetyData {
    pub format: u32,
    /// Set when these records were converted from an earlier run's page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub converted: Option<Converted>,
    /// The electd commit the run tested (`None`: not recorded).
    pub commit: Option<String>,
    pub seed: u64,
    /// Faults the schedule was asked for (`scripts/chaos.sh FAULTS SEED`).
    pub faults_asked: usize,
    pub duration_s: f64,
    pub setup: Setup,
    pub mix: Mix,
    /// What `safety-zoom.svg` shows, if there was a combination.
    pub zoom: Option<Zoom>,
    pub total: Figures,
    pub per_kind: Vec<KindFigures>,
    pub by_size: Vec<SizeFigures>,
    pub per_combination: Vec<CombinationFigures>,
    pub checks: Checks,
    /// Every violation of the checks, in the order the checker reported them.
    pub violations: Vec<Violation>,
    /// `electd resign|pause|resume` outcomes: "action → exit code" and how often.
    pub control: BTreeMap<String, usize>,
    pub episodes: Vec<EpisodeRecord>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Converted {
    pub page: String,
    pub page_commit: String,
    /// What was lost, and where what the page did not say was found.
    pub precision: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Setup {
    pub election: String,
    pub replicas: usize,
    pub members: usize,
    pub ttl_s: f64,
    pub stop_grace_s: f64,
    /// TTL − safety margin − stop grace.
    pub leader_budget_s: f64,
    /// `etcd --version`'s first line.
    pub etcd: String,
    /// electd's build: "debug" (the test profile) or "release".
    pub build: String,
    pub faults_per_strip: usize,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Mix {
    pub combined_percent: u64,
    pub triple_percent: u64,
    pub kinds: Vec<KindMix>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct KindMix {
    pub name: String,
    pub what: String,
    pub weight: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Zoom {
    pub episode: usize,
    pub from_s: f64,
    pub to_s: f64,
}

impl Zoom {
    fn caption(&self) -> String {
        format!(
            "episode {}: {:.1}–{:.1} s",
            self.episode, self.from_s, self.to_s
        )
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct KindFigures {
    pub kind: String,
    /// Episodes where it was the only fault, and faults of it in combinations.
    pub alone: usize,
    pub combined: usize,
    #[serde(flatten)]
    pub figures: Figures,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SizeFigures {
    pub at_once: usize,
    #[serde(flatten)]
    pub figures: Figures,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CombinationFigures {
    pub combination: String,
    #[serde(flatten)]
    pub figures: Figures,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Checks {
    /// Width of the clock's bounds on a revision's time: median, p99, worst (ms).
    pub clock_median_ms: u64,
    pub clock_p99_ms: u64,
    pub clock_max_ms: u64,
    /// Runs whose key waited in the queue, and runs that restarted under the same key.
    pub queued_runs: usize,
    pub restarts_in_term: usize,
}

/// One violation the checker reported, and the episode it happened in.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Violation {
    /// The episode whose window holds the violating run's last sign of life (`None`: the
    /// violation names no run, or the run ended outside every episode).
    pub episode: Option<usize>,
    pub replica: Option<String>,
    pub token: Option<i64>,
    /// The checker's words.
    pub what: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EpisodeRecord {
    pub n: usize,
    /// Seconds after the run started.
    pub at_s: f64,
    pub faults: Vec<FaultRecord>,
    pub leader_before: usize,
    /// From the last step to one agreed leader again.
    pub healed_after_s: f64,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub note: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FaultRecord {
    pub kind: String,
    pub targets: String,
    pub detail: String,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub skipped: bool,
}

/// The run a violation names: the checker's messages name a run as `ID (token N, …` or
/// `ID (token N)`, the id after a space or at the start.
fn run_named<'a>(violation: &str, runs: &'a [Run]) -> Option<&'a Run> {
    runs.iter().find(|r| {
        let name = format!("{} (token {}", r.id, r.token);
        violation.match_indices(&name).any(|(at, _)| {
            let before = violation[..at].chars().next_back();
            let after = violation[at + name.len()..].chars().next();
            before.is_none_or(|c| c == ' ') && matches!(after, Some(',' | ')'))
        })
    })
}

impl SafetyData {
    /// The data of a finished run.
    pub fn new(
        trace: &Trace,
        runs: &[Run],
        verdict: &Verdict,
        s: &Summary,
        zoom: Option<Zoom>,
    ) -> SafetyData {
        let wins = windows(trace);
        let episode_at = |t: u128| {
            wins.iter()
                .position(|(a, b)| *a <= t && t < *b)
                .map(|i| trace.episodes[i].n)
        };
        let violations = verdict
            .violations
            .iter()
            .map(|v| {
                let run = run_named(v, runs);
                Violation {
                    episode: run.and_then(|r| episode_at(r.last).or_else(|| episode_at(r.start))),
                    replica: run.map(|r| r.id.clone()),
                    token: run.map(|r| r.token),
                    what: v.clone(),
                }
            })
            .collect();
        let etcd = std::process::Command::new(crate::common::etcd_binary())
            .arg("--version")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|v| v.lines().next().map(str::to_string))
            .unwrap_or_default();
        let since = |ns: u128| ns.saturating_sub(trace.started_ns) as f64 / 1e9;
        SafetyData {
            format: FORMAT,
            converted: None,
            commit: Some(electd::GIT_COMMIT.to_string()),
            seed: trace.seed,
            faults_asked: trace.faults,
            duration_s: s.duration_s,
            setup: Setup {
                election: crate::ELECTION.to_string(),
                replicas: REPLICAS,
                members: MEMBERS,
                ttl_s: crate::TTL.as_secs_f64(),
                stop_grace_s: crate::STOP_GRACE.as_secs_f64(),
                leader_budget_s: crate::LEADER_BUDGET.as_secs_f64(),
                etcd,
                build: if cfg!(debug_assertions) {
                    "debug"
                } else {
                    "release"
                }
                .into(),
                faults_per_strip: FAULTS_PER_STRIP,
            },
            mix: Mix {
                combined_percent: nemesis::COMBINED_PERCENT,
                triple_percent: nemesis::TRIPLE_PERCENT,
                kinds: KINDS
                    .iter()
                    .map(|k| KindMix {
                        name: k.name.into(),
                        what: k.what.into(),
                        weight: k.weight,
                    })
                    .collect(),
            },
            zoom,
            total: s.total.clone(),
            per_kind: s
                .per_kind
                .iter()
                .map(|(kind, figures, alone, combined)| KindFigures {
                    kind: kind.to_string(),
                    alone: *alone,
                    combined: *combined,
                    figures: figures.clone(),
                })
                .collect(),
            by_size: s
                .by_size
                .iter()
                .map(|(n, figures)| SizeFigures {
                    at_once: *n,
                    figures: figures.clone(),
                })
                .collect(),
            per_combination: s
                .per_combination
                .iter()
                .map(|(c, figures)| CombinationFigures {
                    combination: c.clone(),
                    figures: figures.clone(),
                })
                .collect(),
            checks: Checks {
                clock_median_ms: s.clock_median_ms as u64,
                clock_p99_ms: s.clock_p99_ms as u64,
                clock_max_ms: s.clock_max_ms as u64,
                queued_runs: s.queued_runs,
                restarts_in_term: s.restarts_in_term,
            },
            violations,
            control: trace.control_outcomes.clone(),
            episodes: trace
                .episodes
                .iter()
                .map(|e| EpisodeRecord {
                    n: e.n,
                    at_s: since(e.start_ns),
                    faults: e
                        .faults
                        .iter()
                        .map(|f| FaultRecord {
                            kind: f.kind.into(),
                            targets: f.targets.clone(),
                            detail: f.detail.clone(),
                            skipped: f.skipped,
                        })
                        .collect(),
                    leader_before: e.leader_before,
                    healed_after_s: (e.healed_ns.saturating_sub(e.steps_done_ns)) as f64 / 1e9,
                    note: e.note.clone(),
                })
                .collect(),
        }
    }

    pub fn to_json(&self) -> String {
        crate::common::reports::to_json(self)
    }

    pub fn from_json(text: &str) -> Result<SafetyData, String> {
        crate::common::reports::from_json(text, FORMAT)
    }

    fn combined_episodes(&self) -> usize {
        self.by_size
            .iter()
            .filter(|s| s.at_once > 1)
            .map(|s| s.figures.episodes)
            .sum()
    }
}

// ---------------------------------------------------------------------------
// The page
// ---------------------------------------------------------------------------

fn row(f: &Figures) -> String {
    format!(
        "{} | {} | {} | {} | {} | {} | {}",
        f.episodes,
        f.faults,
        f.runs,
        f.overlaps,
        secs(f.max_gap_ms),
        secs(f.max_outlived_ms),
        secs(f.max_outlived_surely_ms)
    )
}

/// `a`, `a and b`, `a, b and c`.
fn and_list(items: &[String]) -> String {
    match items {
        [] => String::new(),
        [a] => a.clone(),
        [init @ .., last] => format!("{} and {last}", init.join(", ")),
    }
}

fn fault_text(f: &FaultRecord) -> String {
    format!(
        "`{}` {} {}{}",
        f.kind,
        f.targets,
        f.detail,
        if f.skipped { " (skipped)" } else { "" }
    )
}

/// The findings: the violations the run recorded, by episode, and what their episodes had in
/// common.
fn findings(d: &SafetyData, w: &mut String) {
    let _ = writeln!(w, "\n## Findings\n");
    if d.violations.is_empty() {
        let _ = writeln!(
            w,
            "No violations: every check above held for all {} runs, in every episode.",
            d.total.runs
        );
        return;
    }
    let by_episode: BTreeMap<Option<usize>, Vec<&Violation>> =
        d.violations.iter().fold(BTreeMap::new(), |mut m, v| {
            m.entry(v.episode).or_insert_with(Vec::new).push(v);
            m
        });
    let episodes: Vec<&EpisodeRecord> = by_episode
        .keys()
        .filter_map(|n| d.episodes.iter().find(|e| Some(e.n) == *n))
        .collect();
    let _ = writeln!(
        w,
        "{} violation{} of the checks above, in {} episode{}{}:\n",
        d.violations.len(),
        if d.violations.len() == 1 { "" } else { "s" },
        episodes.len(),
        if episodes.len() == 1 { "" } else { "s" },
        if by_episode.contains_key(&None) {
            " (and some that name no episode)"
        } else {
            ""
        }
    );
    for (n, vs) in &by_episode {
        let head = match n.and_then(|n| d.episodes.iter().find(|e| e.n == n)) {
            Some(e) => format!(
                "**Episode {}** (at {:.1} s; leader before: n{}; {})",
                e.n,
                e.at_s,
                e.leader_before,
                e.faults
                    .iter()
                    .map(fault_text)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            None => "**No episode**".to_string(),
        };
        let _ = writeln!(w, "- {head}:");
        for v in vs {
            let _ = writeln!(w, "  - {}", v.what);
        }
    }
    // What every episode with a violation had.
    let kinds = |e: &EpisodeRecord| -> BTreeSet<String> {
        e.faults
            .iter()
            .filter(|f| !f.skipped)
            .map(|f| f.kind.clone())
            .collect()
    };
    let common = episodes
        .iter()
        .map(|e| kinds(e))
        .reduce(|a, b| a.intersection(&b).cloned().collect())
        .unwrap_or_default();
    let all_overlap_free = d.total.overlaps == 0;
    let _ = writeln!(w);
    if episodes.len() > 1 && !common.is_empty() {
        let names: Vec<String> = common.iter().map(|k| format!("`{k}`")).collect();
        let _ = write!(w, "Every one of these episodes had {}. ", and_list(&names));
    }
    if common.contains("member-freeze") {
        let _ = write!(
            w,
            "etcd revokes live leases when a raft leader frozen for longer than the lease TTL \
             ({:.0} s) thaws (etcd-io/etcd#15247; see docs/operations.md, and \
             `chaos_regression_thawed_raft_leader`, which provokes it): the run's kept logs say \
             whether that happened here. ",
            d.setup.ttl_s
        );
    }
    if all_overlap_free {
        let _ = write!(
            w,
            "The children's ledger shows no overlap in this run: the etcd checks are what \
             flagged these. "
        );
    }
    let _ = writeln!(
        w,
        "Replay the schedule with `scripts/chaos.sh {} {}`.",
        d.faults_asked, d.seed
    );
}

/// The page for `d`, from the data alone.
pub fn render(d: &SafetyData) -> String {
    let mut md = String::new();
    let w = &mut md;
    let st = &d.setup;
    let margin = st.ttl_s - st.stop_grace_s - st.leader_budget_s;
    let _ = writeln!(w, "# Safety under combined faults\n");
    if d.violations.is_empty() && d.total.overlaps == 0 {
        let _ = writeln!(
            w,
            "**No violations and no overlaps** in {} child runs under {} faults.\n",
            d.total.runs, d.total.faults
        );
    } else {
        let mut eps: Vec<String> = d
            .violations
            .iter()
            .filter_map(|v| v.episode)
            .collect::<BTreeSet<_>>()
            .iter()
            .map(|n| n.to_string())
            .collect();
        if eps.is_empty() {
            eps.push("none named".into());
        }
        let _ = writeln!(
            w,
            "**{} violation{} of the checks** (episode{} {}) and **{} overlap{}** in {} child \
             runs under {} faults: see [Findings](#findings).\n",
            d.violations.len(),
            if d.violations.len() == 1 { "" } else { "s" },
            if eps.len() == 1 { "" } else { "s" },
            and_list(&eps),
            d.total.overlaps,
            if d.total.overlaps == 1 { "" } else { "s" },
            d.total.runs,
            d.total.faults
        );
    }
    let source = match &d.converted {
        None => format!(
            "Written by `scripts/chaos.sh {} {}` (the `chaos_report` test in `tests/chaos/`) from \
             electd at commit `{}`; the records are in [safety.json](safety.json), which this \
             page is rendered from (a test checks that it is): rerun rather than editing either.",
            d.faults_asked,
            d.seed,
            d.commit.as_deref().unwrap_or("unknown")
        ),
        Some(c) => format!(
            "The records of `scripts/chaos.sh {} {}` (the `chaos_report` test in \
             `tests/chaos/`), **converted** from that run's page ({} as committed in {}; {}) \
             into [safety.json](safety.json), which this page is rendered from (a test checks \
             that it is): rerun rather than editing either.",
            d.faults_asked, d.seed, c.page, c.page_commit, c.precision
        ),
    };
    let _ = writeln!(
        w,
        "{source} **{} faults** in {} episodes ({} of them two or three faults at once) over \
         {:.0} min: **{} child runs, {} overlaps, {} violations** of the checks below.\n",
        d.total.faults,
        d.total.episodes,
        d.combined_episodes(),
        d.duration_s / 60.0,
        d.total.runs,
        d.total.overlaps,
        d.violations.len()
    );
    let _ = writeln!(w, "![timeline](safety-timeline.svg)\n");
    let _ = writeln!(
        w,
        "*Each strip covers {} faults. Rows from the top: the episodes (darker: two or three \
         faults at once), the leader key at etcd (coloured by the replica that owns it), each \
         replica's command runs (one bar per run, in the replica's colour) over the faults that \
         hit it (shaded by kind), each etcd member's faults, and a row that would turn red \
         wherever two commands ran at once. Safety at a glance: bars on different replica rows \
         never overlap in time, and every bar sits under its own replica's stretch of the \
         leader-key row.*\n",
        st.faults_per_strip
    );
    if let Some(z) = &d.zoom {
        let _ = writeln!(w, "The densest combination up close ({}):\n", z.caption());
        let _ = writeln!(w, "![zoom](safety-zoom.svg)\n");
    }
    let _ = writeln!(w, "## Setup\n");
    let _ = writeln!(
        w,
        "- {} electd replicas (`n0`–`n{}`), election `{}`, `--ttl {}s`, `--stop-grace {}s` \
         (leader budget {:.1} s: TTL − safety margin {:.1} s − stop grace; the command must be \
         dead by TTL − margin = {:.1} s after the last successful keepalive was sent). Each \
         replica reaches the etcd members through its own TCP proxies (one per member).\n\
         - {} etcd members (`m0`–`m{}`, heartbeat 50 ms, election timeout 500 ms, no \
         compaction) whose raft (peer) traffic goes through proxies that tell senders apart, so \
         the raft leader can be cut from its peers while clients still reach it.\n\
         - Each replica wraps `sh -c` children that append `start` (with \
         `ELECTD_FENCING_TOKEN` and `ELECTD_LEADER_KEY`), a `tick` every 50 ms and `stop` to a \
         shared ledger, and that record `overlap` if another child of the election is alive \
         when they start.\n\
         - After each episode every fault is healed; the next starts once all members are \
         healthy and all replicas agree on one leader.",
        st.replicas,
        st.replicas.saturating_sub(1),
        st.election,
        st.ttl_s,
        st.stop_grace_s,
        st.leader_budget_s,
        margin,
        st.ttl_s - margin,
        st.members,
        st.members.saturating_sub(1),
    );
    let _ = writeln!(w, "- {}; electd's {} build.", st.etcd, st.build);
    let _ = writeln!(w, "\n## Fault mix\n");
    let _ = writeln!(
        w,
        "Seeded schedule (`nemesis::plan`): a kind drawn by weight; {}% of episodes add one \
         more fault, {}% of those two more, each starting inside the first one's window. \
         Targets are the electd leader or the raft leader half the time. Two faults of one \
         episode never hold the same daemon process, link or member.\n",
        d.mix.combined_percent, d.mix.triple_percent
    );
    let _ = writeln!(w, "| kind | what | weight |\n|---|---|---|");
    for k in &d.mix.kinds {
        let _ = writeln!(w, "| `{}` | {} | {} |", k.name, k.what, k.weight);
    }
    let _ = writeln!(w, "\n## Results\n");
    let _ = writeln!(
        w,
        "Per episode window (from an episode's first fault to the next episode's): *runs* \
         started in it, *overlaps* (a run's last sign of life at or after the next run's \
         start), *longest gap* (no command running anywhere, from one run's last sign of \
         life to the next run's start), *outlived, at most* and *outlived, surely* (the \
         largest, see below; negative: the command was gone that long before its leadership \
         ended at etcd).\n"
    );
    let head = "| episodes | faults | runs | overlaps | longest gap | outlived, at most | outlived, surely |";
    let _ = writeln!(w, "### Per fault kind\n");
    let _ = writeln!(
        w,
        "| kind | alone | in combinations {head}\n|---|---|---|---|---|---|---|---|---|---|"
    );
    for k in &d.per_kind {
        let _ = writeln!(
            w,
            "| `{}` | {} | {} | {} |",
            k.kind,
            k.alone,
            k.combined,
            row(&k.figures)
        );
    }
    let _ = writeln!(w, "| **all** | | | {} |", row(&d.total));
    let _ = writeln!(w, "\n### By number of simultaneous faults\n");
    let _ = writeln!(
        w,
        "| faults at once {head}\n|---|---|---|---|---|---|---|---|"
    );
    for s in &d.by_size {
        let _ = writeln!(w, "| {} | {} |", s.at_once, row(&s.figures));
    }
    let _ = writeln!(w, "\n### Combinations\n");
    let _ = writeln!(w, "| combination {head}\n|---|---|---|---|---|---|---|---|");
    for c in &d.per_combination {
        let _ = writeln!(w, "| {} | {} |", c.combination, row(&c.figures));
    }
    let c = &d.checks;
    let _ = writeln!(w, "\n## What is checked, and how\n");
    let _ = writeln!(
        w,
        "The children's own ledger is the source of truth for who ran when; etcd's history \
         (read back after the run with a watch from revision 1, and point-in-time reads) for \
         which key led when. etcd keeps no timestamps, so a clock thread puts a key straight to \
         the members every 50 ms and notes send time, reply time and revision: a revision R \
         happened after the latest send of a put with a smaller revision and before the earliest \
         reply of a put with a larger one (bounds {} ms wide at the median, {} ms at p99, {} ms \
         at worst in this run).\n\n\
         - **No overlap**: no child found another alive when it started, and each run's last \
         sign of life (its `stop`, or its last `tick` if it was killed) comes before the next \
         run's start. Also checked after every episode.\n\
         - **Tokens are leader revisions**: a run's token is the create revision of the key in \
         its `ELECTD_LEADER_KEY`; that key was the leader key: at the revision it became the \
         lowest create revision under `{}/`, `get {}/ --prefix --rev=R --sort-by=create \
         --limit=1` shows exactly that key and create revision; its value names the run's \
         replica. For a key that did not wait in the queue R is the token itself; {} of {} runs \
         had keys that waited behind another and became leader later than their token (a read \
         at `--rev=TOKEN` shows the previous leader there).\n\
         - **Inside its leadership**: no run starts before the earliest time its key can have \
         become the leader key, nor shows life after the latest time its key can have been \
         deleted.\n\
         - **Tokens increase**: strictly from run to run; the same token again only as a \
         restart of the command under the same key ({} such restarts).\n\n\
         **Outlived** = the run's last sign of life − the moment its key stopped being the \
         leader key at etcd (the key's delete revision: the moment another replica's key \
         became the leader key, or none did). That moment is known only within the clock's \
         bounds, so two figures: *at most* uses the earliest bound (it over-states by up to the \
         bound's width, which grows while etcd commits nothing), *surely* uses the latest \
         bound and must never be positive (checked: a positive value is a violation). electd's \
         design keeps both below zero: the command is dead by TTL − margin after the last \
         keepalive was sent, while the lease cannot expire before TTL after etcd received it. \
         In a graceful handoff (resign, pause, SIGTERM) electd stops the command and only then \
         revokes the lease, so there *surely* sits just below zero (the revoke follows the \
         command's `stop` by milliseconds); crashes, freezes and partitions leave a wider \
         margin. Largest in this run: at most {}, surely {}. The budget this is held against: the \
         leader may keep its role {:.1} s (leader budget) and its command {:.1} s (+ stop \
         grace) after its last successful keepalive was sent; the lease lives {} s from when \
         etcd received it. A run that still leads at the end has no end yet and is not counted.",
        c.clock_median_ms,
        c.clock_p99_ms,
        c.clock_max_ms,
        st.election,
        st.election,
        c.queued_runs,
        d.total.runs,
        c.restarts_in_term,
        secs(d.total.max_outlived_ms),
        secs(d.total.max_outlived_surely_ms),
        st.leader_budget_s,
        st.leader_budget_s + st.stop_grace_s,
        st.ttl_s
    );
    findings(d, w);
    let _ = writeln!(w, "\n## Control commands\n");
    let _ = writeln!(w, "| command → exit code | count |\n|---|---|");
    for (k, n) in &d.control {
        let _ = writeln!(w, "| `{k}` | {n} |");
    }
    let _ = writeln!(w, "\n## Seeds and episodes\n");
    let _ = writeln!(
        w,
        "Replay: `scripts/chaos.sh {} {}` (or, in the normal suite's form, \
         `ELECTD_CHAOS_FAULTS={} ELECTD_CHAOS_SEED={} cargo nextest run --test chaos \
         chaos_combined_nemesis` for short schedules).\n",
        d.faults_asked, d.seed, d.faults_asked, d.seed
    );
    let _ = writeln!(
        w,
        "<details><summary>All {} episodes</summary>\n",
        d.episodes.len()
    );
    let _ = writeln!(
        w,
        "| # | at (s) | faults | leader before | healed after (s) | note |\n|---|---|---|---|---|---|"
    );
    for e in &d.episodes {
        let faults: Vec<String> = e.faults.iter().map(fault_text).collect();
        let _ = writeln!(
            w,
            "| {} | {:.1} | {} | n{} | {:.1} | {} |",
            e.n,
            e.at_s,
            faults.join("<br>"),
            e.leader_before,
            e.healed_after_s,
            e.note
        );
    }
    let _ = writeln!(w, "\n</details>");
    md
}

/// Writes `safety.json`, `safety.md` (rendered from it), `safety-timeline.svg` and
/// `safety-zoom.svg` into `dir`.
pub fn write(
    dir: &Path,
    trace: &Trace,
    runs: &[Run],
    leads: &[Lead],
    clock: &Clocked,
    verdict: &Verdict,
    s: &Summary,
) {
    std::fs::create_dir_all(dir).expect("create the report directory");
    let timeline = Timeline::new(trace, runs, leads, clock);
    timeline.draw_strips(&dir.join("safety-timeline.svg"));
    let zoom = timeline.draw_zoom(&dir.join("safety-zoom.svg"));
    let data = SafetyData::new(trace, runs, verdict, s, zoom);
    std::fs::write(dir.join("safety.json"), data.to_json()).expect("write safety.json");
    std::fs::write(dir.join("safety.md"), render(&data)).expect("write safety.md");
}

/// Whether the page at `page` is what the data at `data` renders to.
pub fn check_rendered(data: &Path, page: &Path) -> Result<(), String> {
    crate::common::reports::check_rendered(data, page, |text| {
        SafetyData::from_json(text).map(|d| render(&d))
    })
}

/// The committed pair: `docs/safety.md` is what `docs/safety.json` renders to.
#[test]
fn committed_safety_page_is_rendered_from_its_data() {
    crate::common::reports::check_committed(
        "safety",
        |text| SafetyData::from_json(text).map(|d| render(&d)),
        "rerun `scripts/chaos.sh FAULTS SEED`",
    );
}

/// Findings come from the recorded violations: none, one episode, several with a fault kind
/// in common; each violation under its episode, and the first lines say so.
#[test]
fn findings_are_the_recorded_violations_by_episode() {
    let text =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/safety.json"))
            .expect("read docs/safety.json");
    let base = SafetyData::from_json(&text).expect("docs/safety.json");
    let fault = |kind: &str| FaultRecord {
        kind: kind.into(),
        targets: "m0".into(),
        detail: "x".into(),
        skipped: false,
    };
    let episode = |n: usize, kinds: &[&str]| EpisodeRecord {
        n,
        at_s: n as f64,
        faults: kinds.iter().map(|k| fault(k)).collect(),
        leader_before: 0,
        healed_after_s: 0.1,
        note: String::new(),
    };
    let violation = |episode: Option<usize>, what: &str| Violation {
        episode,
        replica: Some("n1".into()),
        token: Some(7),
        what: what.into(),
    };
    let with = |violations: Vec<Violation>, overlaps: usize| SafetyData {
        violations,
        total: Figures {
            overlaps,
            ..base.total.clone()
        },
        episodes: vec![
            episode(1, &["member-freeze", "link-slow"]),
            episode(2, &["member-freeze"]),
            episode(3, &["daemon-kill9"]),
        ],
        ..base.clone()
    };
    let first_lines = |d: &SafetyData| render(d).lines().nth(2).unwrap_or_default().to_string();
    let findings = |d: &SafetyData| {
        let page = render(d);
        let at = page.find("## Findings").expect("a findings section");
        let end = page[at..]
            .find("\n## Control")
            .map_or(page.len(), |e| at + e);
        page[at..end].to_string()
    };

    let clean = with(Vec::new(), 0);
    assert!(first_lines(&clean).starts_with("**No violations and no overlaps**"));
    assert!(
        findings(&clean).contains("No violations"),
        "{}",
        findings(&clean)
    );

    let two = with(
        vec![
            violation(
                Some(1),
                "n1 (token 7, started 1): alive 11 ms after its key",
            ),
            violation(
                Some(2),
                "n2 (token 9, started 2): alive 12 ms after its key",
            ),
        ],
        0,
    );
    let f = findings(&two);
    assert!(
        first_lines(&two).starts_with("**2 violations of the checks** (episodes 1 and 2)"),
        "{}",
        first_lines(&two)
    );
    assert!(
        f.contains("**Episode 1**") && f.contains("**Episode 2**"),
        "{f}"
    );
    assert!(
        f.contains("alive 11 ms") && f.contains("alive 12 ms"),
        "{f}"
    );
    assert!(
        f.contains("Every one of these episodes had `member-freeze`."),
        "{f}"
    );
    assert!(f.contains("etcd-io/etcd#15247"), "{f}");
    assert!(!f.contains("**Episode 3**"), "{f}");

    let other = with(
        vec![
            violation(Some(3), "n1 (token 7, started 1): token is not its key's"),
            violation(None, "token went backwards or was reused"),
        ],
        1,
    );
    let f = findings(&other);
    assert!(
        first_lines(&other).contains("**1 overlap**"),
        "{}",
        first_lines(&other)
    );
    assert!(
        f.contains("**Episode 3**") && f.contains("**No episode**"),
        "{f}"
    );
    assert!(!f.contains("etcd-io/etcd#15247"), "{f}");
    assert!(!f.contains("no overlap"), "{f}");

    // A run is found by the checker's `ID (token N` and placed by its last sign of life.
    let runs = [Run {
        id: "n1".into(),
        token: 7,
        key: None,
        start: 10,
        last: 20,
        stopped: true,
    }];
    assert_eq!(
        run_named("n1 (token 7, started 10): alive 1 ms after", &runs).map(|r| r.last),
        Some(20)
    );
    assert!(run_named("n1 (token 70, started 10)", &runs).is_none());
    assert!(run_named("xn1 (token 7, started 10)", &runs).is_none());
    assert_eq!(
        run_named("overlap: n1 (token 7) started while another", &runs).map(|r| r.start),
        Some(10)
    );
}

// ---------------------------------------------------------------------------
// Pictures
// ---------------------------------------------------------------------------

const REPLICA_COLOURS: [RGBColor; REPLICAS] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
];

fn kind_colour(kind: &str) -> RGBColor {
    const C: [RGBColor; 13] = [
        RGBColor(214, 39, 40),
        RGBColor(127, 127, 127),
        RGBColor(23, 190, 207),
        RGBColor(188, 189, 34),
        RGBColor(227, 119, 194),
        RGBColor(255, 187, 120),
        RGBColor(152, 223, 138),
        RGBColor(174, 199, 232),
        RGBColor(197, 176, 213),
        RGBColor(247, 182, 210),
        RGBColor(140, 86, 75),
        RGBColor(31, 119, 180),
        RGBColor(219, 219, 141),
    ];
    let i = KINDS.iter().position(|k| k.name == kind).unwrap_or(0);
    C[i % C.len()]
}

/// Everything drawn, in seconds since the run started.
struct Timeline {
    /// (episode, start, end, number of faults)
    episodes: Vec<(usize, f64, f64, usize)>,
    /// (replica index, from, to) of each leader key at etcd.
    leads: Vec<(Option<usize>, f64, f64)>,
    /// (replica, start, last, token)
    runs: Vec<(usize, f64, f64, i64)>,
    /// (row, kind, start, end) of each fault on what it hit.
    faults: Vec<(Row, &'static str, f64, f64)>,
    /// Intervals where two runs overlapped.
    overlaps: Vec<(f64, f64)>,
    /// (fault count so far, time) at each episode start, to cut strips.
    cuts: Vec<(usize, f64)>,
    end: f64,
    /// Start of the densest combination episode and its window.
    densest: Option<(usize, f64, f64)>,
}

#[derive(Clone, Copy, PartialEq)]
enum Row {
    Replica(usize),
    Member(usize),
}

const ROWS: usize = 2 + REPLICAS + MEMBERS + 1;

/// Row index from the bottom, and its label.
fn row_of(r: Row) -> usize {
    match r {
        Row::Replica(i) => ROWS - 3 - i,
        Row::Member(m) => ROWS - 3 - REPLICAS - m,
    }
}

fn row_label(y: usize) -> String {
    match ROWS - 1 - y {
        0 => "episodes".into(),
        1 => "etcd leader".into(),
        i if i < 2 + REPLICAS => format!("n{}", i - 2),
        i if i < 2 + REPLICAS + MEMBERS => format!("etcd m{}", i - 2 - REPLICAS),
        _ => "2 at once".into(),
    }
}

impl Timeline {
    fn new(trace: &Trace, runs: &[Run], leads: &[Lead], clock: &Clocked) -> Timeline {
        let t0 = trace.started_ns;
        let s = |ns: u128| ns.saturating_sub(t0) as f64 / 1e9;
        let end = s(trace.ended_ns);
        let replica = |id: &str| id.strip_prefix('n').and_then(|n| n.parse::<usize>().ok());
        let rev_time = |rev: i64| match (clock.lower(rev), clock.upper(rev)) {
            (Some(a), Some(b)) => Some(s((a + b) / 2)),
            (a, b) => a.or(b).map(s),
        };
        let leads = leads
            .iter()
            .filter_map(|l| {
                let from = rev_time(l.from_rev)?;
                let to = l.until_rev.and_then(rev_time).unwrap_or(end);
                Some((l.id.as_deref().and_then(replica), from, to))
            })
            .collect();
        let runs_drawn = runs
            .iter()
            .filter_map(|r| Some((replica(&r.id)?, s(r.start), s(r.last.max(r.start)), r.token)))
            .collect();
        let mut faults = Vec::new();
        let mut episodes = Vec::new();
        let mut cuts = Vec::new();
        let mut count = 0;
        let mut densest: Option<(usize, usize, f64, f64)> = None;
        for e in &trace.episodes {
            cuts.push((count, s(e.start_ns)));
            let n = e.injected().count();
            count += n;
            episodes.push((e.n, s(e.start_ns), s(e.healed_ns.max(e.steps_done_ns)), n));
            if n > 1 && densest.is_none_or(|(m, ..)| n > m) {
                densest = Some((n, e.n, s(e.start_ns), s(e.healed_ns.max(e.steps_done_ns))));
            }
            for f in e.injected() {
                let (a, b) = (
                    s(f.start_ns),
                    s(f.end_ns.max(f.start_ns)).max(s(f.start_ns) + 0.05),
                );
                for t in f.targets.split(',') {
                    let row = match (t.chars().next(), t[1..].parse::<usize>()) {
                        (Some('n'), Ok(i)) if i < REPLICAS => Row::Replica(i),
                        (Some('m'), Ok(i)) if i < MEMBERS => Row::Member(i),
                        _ => continue,
                    };
                    faults.push((row, f.kind, a, b));
                }
            }
        }
        let overlaps = runs
            .windows(2)
            .filter(|w| w[0].last >= w[1].start)
            .map(|w| (s(w[1].start), s(w[0].last)))
            .collect();
        Timeline {
            episodes,
            leads,
            runs: runs_drawn,
            faults,
            overlaps,
            cuts,
            end,
            densest: densest.map(|(_, n, a, b)| (n, a, b)),
        }
    }

    fn draw_strips(&self, path: &Path) {
        let mut ranges: Vec<(f64, f64)> = Vec::new();
        let mut next_cut = FAULTS_PER_STRIP;
        let mut from = 0.0;
        for (count, t) in &self.cuts {
            if *count >= next_cut {
                ranges.push((from, *t));
                from = *t;
                next_cut = count + FAULTS_PER_STRIP;
            }
        }
        ranges.push((from, self.end));
        let (w, strip_h, legend_h) = (1600u32, 290u32, 60u32);
        let h = legend_h + strip_h * (ranges.len() as u32 + 1);
        let root = SVGBackend::new(path, (w, h)).into_drawing_area();
        root.fill(&WHITE).expect("fill");
        let (legend, rest) = root.split_vertically(legend_h);
        self.draw_legend(&legend);
        let strips = rest.split_evenly((ranges.len() + 1, 1));
        self.draw_strip(&strips[0], 0.0, self.end, "whole run", false);
        for (i, (a, b)) in ranges.iter().enumerate() {
            let title = format!("part {} of {}", i + 1, ranges.len());
            self.draw_strip(&strips[i + 1], *a, *b, &title, true);
        }
        root.present().expect("write the timeline SVG");
    }

    /// The densest combination episode, 3 s either side; returns what it shows.
    fn draw_zoom(&self, path: &Path) -> Option<Zoom> {
        let (n, a, b) = self.densest?;
        let (a, b) = ((a - 3.0).max(0.0), (b + 3.0).min(self.end));
        let root = SVGBackend::new(path, (1600, 360)).into_drawing_area();
        root.fill(&WHITE).expect("fill");
        let zoom = Zoom {
            episode: n,
            from_s: a,
            to_s: b,
        };
        self.draw_strip(&root, a, b, &zoom.caption(), true);
        root.present().expect("write the zoom SVG");
        Some(zoom)
    }

    fn draw_legend(&self, area: &DrawingArea<SVGBackend<'_>, plotters::coord::Shift>) {
        let font = ("sans-serif", 13).into_font();
        let mut x = 10;
        for (i, c) in REPLICA_COLOURS.iter().enumerate() {
            let _ = area.draw(&Rectangle::new([(x, 8), (x + 14, 20)], c.filled()));
            let _ = area.draw(&Text::new(format!("n{i}"), (x + 18, 8), font.clone()));
            x += 60;
        }
        x += 20;
        for (i, k) in KINDS.iter().enumerate() {
            let (xx, yy) = (x + (i as i32 % 5) * 230, 8 + (i as i32 / 5) * 22);
            let _ = area.draw(&Rectangle::new(
                [(xx, yy), (xx + 14, yy + 12)],
                kind_colour(k.name).mix(0.5).filled(),
            ));
            let _ = area.draw(&Text::new(k.name, (xx + 18, yy), font.clone()));
        }
    }

    fn draw_strip(
        &self,
        area: &DrawingArea<SVGBackend<'_>, plotters::coord::Shift>,
        a: f64,
        b: f64,
        title: &str,
        labels: bool,
    ) {
        let b = b.max(a + 1.0);
        let mut chart = ChartBuilder::on(area)
            .caption(title, ("sans-serif", 14))
            .margin(6)
            .x_label_area_size(22)
            .y_label_area_size(80)
            .build_cartesian_2d(a..b, 0f64..ROWS as f64)
            .expect("chart");
        chart
            .configure_mesh()
            .disable_y_mesh()
            .y_labels(0)
            .x_desc("seconds since start")
            .x_label_style(("sans-serif", 11))
            .draw()
            .expect("mesh");
        let clip = |x0: f64, x1: f64| (x0.max(a), x1.min(b));
        let visible = |x0: f64, x1: f64| x1 >= a && x0 <= b;
        let band = |y: usize, lo: f64, hi: f64| (y as f64 + lo, y as f64 + hi);
        // Faults: shaded on the rows of what they hit.
        for (row, kind, x0, x1) in self.faults.iter().filter(|f| visible(f.2, f.3)) {
            let (x0, x1) = clip(*x0, *x1);
            let (y0, y1) = band(row_of(*row), 0.02, 0.98);
            let _ = chart.draw_series(std::iter::once(Rectangle::new(
                [(x0, y0), (x1, y1)],
                kind_colour(kind).mix(0.45).filled(),
            )));
        }
        // Episodes.
        let ey = ROWS - 1;
        for (n, x0, x1, faults) in self.episodes.iter().filter(|e| visible(e.1, e.2)) {
            let (x0, x1) = clip(*x0, *x1);
            let shade = if *faults > 1 { 0.75 } else { 0.3 };
            let (y0, y1) = band(ey, 0.15, 0.85);
            let _ = chart.draw_series(std::iter::once(Rectangle::new(
                [(x0, y0), (x1, y1)],
                BLACK.mix(shade).filled(),
            )));
            if labels {
                let _ = chart.draw_series(std::iter::once(Text::new(
                    format!("{n}"),
                    (x0, ey as f64 + 0.95),
                    ("sans-serif", 10).into_font(),
                )));
            }
        }
        // Leader key at etcd.
        let ly = ROWS - 2;
        for (owner, x0, x1) in self.leads.iter().filter(|l| visible(l.1, l.2)) {
            let (x0, x1) = clip(*x0, *x1);
            let c = owner.map_or(BLACK, |i| REPLICA_COLOURS[i % REPLICAS]);
            let (y0, y1) = band(ly, 0.2, 0.8);
            let _ = chart.draw_series(std::iter::once(Rectangle::new(
                [(x0, y0), (x1, y1)],
                c.filled(),
            )));
        }
        // Command runs.
        for (i, x0, x1, token) in self.runs.iter().filter(|r| visible(r.1, r.2)) {
            let (x0, x1) = clip(*x0, *x1);
            let (y0, y1) = band(row_of(Row::Replica(*i)), 0.25, 0.75);
            let _ = chart.draw_series(std::iter::once(Rectangle::new(
                [(x0, y0), (x1.max(x0 + (b - a) / 2000.0), y1)],
                REPLICA_COLOURS[i % REPLICAS].filled(),
            )));
            if labels && (x1 - x0) > (b - a) / 40.0 {
                let _ = chart.draw_series(std::iter::once(Text::new(
                    format!("{token}"),
                    (x0 + (b - a) / 400.0, y1 + 0.2),
                    ("sans-serif", 9).into_font(),
                )));
            }
        }
        // Overlaps (none expected).
        for (x0, x1) in self.overlaps.iter().filter(|o| visible(o.0, o.1)) {
            let (x0, x1) = clip(*x0, *x1);
            let _ = chart.draw_series(std::iter::once(Rectangle::new(
                [(x0, 0.05), (x1.max(x0 + (b - a) / 500.0), 0.95)],
                RED.filled(),
            )));
        }
        // Row labels.
        let font = ("sans-serif", 12).into_font();
        let (bx, by) = area.get_base_pixel();
        for y in 0..ROWS {
            let (px, py) = chart.backend_coord(&(a, y as f64 + 0.5));
            let at = (px - bx - 76, py - by - 6);
            let _ = area.draw(&Text::new(row_label(y), at, font.clone()));
        }
    }
}
