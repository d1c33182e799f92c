//! Scenario: the start guard (issue 23). A leader key that vanishes without the clean-release
//! mark — deleted by hand here — makes the successor wait `--start-guard` before it leads, so
//! that the deposed leader (which kills its command at once) is done first; a leader that gives
//! up on purpose marks its key, and its successor does not wait. Two electd replicas wrap the
//! ledger-writing child, with electd's default guard and with `--start-guard 0s`, in
//! alternating iterations: each deletes the leader's key (the deposed command's death timed by
//! polling its pid), then hands over gracefully back (SIGTERM to the new leader).

use std::time::Duration;

use super::failover::{Cols, Counts, Pair, iterate_each, temp_dir};
use super::report::{Cell, Page, ms, num, quantile, spec};
use super::trace::AliveWatch;
use super::{BenchConfig, Section, SectionData, Tool, Tuning, ms_between, now_ns, queued};
use crate::common::{Etcd, http_request, wait_until};

/// The columns: electd's default start guard, and none.
const GUARDS: [usize; 2] = [0, 1];

fn guard_args(col: usize) -> &'static [&'static str] {
    match col {
        0 => &[],
        _ => &["--start-guard", "0s"],
    }
}

/// Delete `key` without the clean-release mark: the `DeleteRange` that `etcdctl del` sends,
/// through etcd's JSON gateway so that it is timed in this process. Returns when the request
/// was sent and when it was answered (wall-clock nanoseconds).
fn delete_key(etcd: &Etcd, key: &str) -> (u128, u128) {
    let body = format!("{{\"key\":\"{}\"}}", base64(key.as_bytes()));
    let addr = etcd.client_addr().to_string();
    let sent = now_ns();
    let answer = http_request(&addr, "POST", "/v3/kv/deleterange", Some(&body));
    let answered = now_ns();
    match answer {
        Ok((200, text)) if text.contains("\"deleted\":\"1\"") => (sent, answered),
        other => panic!("deleting {key} through etcd's gateway: {other:?}"),
    }
}

/// Standard base64 with padding (etcd's gateway takes keys so).
fn base64(bytes: &[u8]) -> String {
    const ABC: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for k in 0..4 {
            if k <= chunk.len() {
                out.push(ABC[(n >> (18 - 6 * k) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[derive(Default)]
struct Rows {
    rtt: Cols,
    death: Cols,
    start: Cols,
    start_minus_guard: Cols,
    overlap: Cols,
    term_handoff: Cols,
    term_start: Cols,
    graceful: Counts,
}

pub fn guard(cfg: &BenchConfig) -> Section {
    let mut s = Section::new("guard");
    let etcd = Etcd::start();
    let ep = etcd.endpoint();
    let dir = temp_dir();
    let guard_ms = |col: usize| match col {
        0 => cfg.start_guard.as_secs_f64() * 1e3,
        _ => 0.0,
    };
    let mut r = Rows::default();
    let mut periods = Vec::new();
    let names = |col: usize| match col {
        0 => ("default".to_string(), "default start guard".to_string()),
        _ => ("zero".to_string(), "--start-guard 0s".to_string()),
    };
    iterate_each(cfg, &mut s, &GUARDS, names, |col, _, name| {
        let tuning = Tuning {
            log: None,
            args: guard_args(col),
        };
        let p = Pair::start(
            cfg,
            &etcd,
            Tool::Electd,
            name,
            [&ep, &ep],
            dir.path(),
            tuning,
        );
        let a = p.a.daemon().expect("electd");
        // 1. The leader's key deleted by hand: no mark.
        let key = a.role().expect("a answers")["key"]
            .as_str()
            .expect("the leader's /role names its key")
            .to_string();
        let pid = p
            .ledger
            .first_child("a")
            .expect("a's child registered its pid");
        let watch = AliveWatch::pid(pid);
        watch.wait_first_look(Duration::from_secs(2));
        let (t, answered) = delete_key(&etcd, &key);
        p.wait_new_child(Duration::from_secs(10));
        wait_until(
            Duration::from_secs(10),
            "the deposed command's death",
            || watch.seen().dead(),
        );
        let seen = watch.stop();
        let died = seen.dead_since.expect("seen dead");
        let new = p.ledger.runs_of("b").remove(0);
        let death = ms_between(died, t);
        let start = ms_between(new.start, t);
        r.rtt.put(col, ms_between(answered, t));
        r.death.put(col, death);
        r.start.put(col, start);
        r.start_minus_guard.put(col, start - guard_ms(col));
        r.overlap.put(col, ms_between(died, new.start));
        periods.extend(seen.period_ms());

        // 2. Back to a, gracefully: b's SIGTERM writes the mark before the revoke.
        a.wait_role("follower", Duration::from_secs(10));
        wait_until(Duration::from_secs(10), "a to queue behind b", || {
            queued(&etcd, name) == 2
        });
        std::thread::sleep(Duration::from_millis(300));
        let t = now_ns();
        p.b.stop_gracefully();
        wait_until(Duration::from_secs(10), "a's child to start again", || {
            p.ledger.starts_of("a") >= 2
        });
        let old = p.ledger.runs_of("b").remove(0);
        let back = p.ledger.runs_of("a").remove(1);
        let handoff = ms_between(back.start, old.last);
        r.term_handoff.put(col, handoff);
        r.term_start.put(col, ms_between(back.start, t));
        r.graceful.put(col, old.stopped);
        format!(
            "deposed command dead {death:.1} ms after the deletion, successor's started after \
             {start:.0} ms; graceful handoff {handoff:.1} ms"
        )
    });
    s.push("del_rtt", r.rtt.values());
    s.push("del_death", r.death.values());
    s.push("del_death_p99", r.death.p99s());
    s.push("del_start", r.start.values());
    s.push("del_start_minus_guard", r.start_minus_guard.values());
    s.push("del_overlap", r.overlap.values());
    s.push("term_handoff", r.term_handoff.values());
    s.push("term_start", r.term_start.values());
    s.push("term_graceful", r.graceful.values());
    s.fact("pid_poll_ms", quantile(&periods, 0.5));
    s
}

/// A successor that started beside the deposed command with electd's default start guard.
pub fn violations(d: &SectionData) -> Vec<String> {
    d.cell("del_overlap", 0)
        .and_then(Cell::max)
        .filter(|o| *o >= 0.0)
        .map(|o| {
            format!(
                "start guard: after an unmarked deletion of the leader's key, the successor's \
                 command started {} before the deposed one was dead, with the default start guard",
                ms(o)
            )
        })
        .into_iter()
        .collect()
}

pub fn page(p: &BenchConfig, d: &SectionData) -> Page {
    let g = p.start_guard.as_millis();
    let cell = |row: &str, col: usize| d.cell(row, col);
    let q = |x: Option<f64>| x.map_or("?".to_string(), ms);
    let mut notes = Vec::new();
    if let Some(death) = cell("del_death", 0) {
        let p99 = match cell("del_death_p99", 0) {
            Some(Cell::Number(x)) => Some(*x),
            _ => None,
        };
        let worst = death.max().zip(cell("del_death", 1).and_then(Cell::max));
        let within = worst.is_some_and(|(a, b)| a.max(b) < g as f64);
        let mut note = format!(
            "The deposed leader kills its command as soon as it sees its key gone: dead {} \
             (p50), {} (p99), {} (max) after the deletion was sent, with the default guard",
            q(death.median()),
            q(p99),
            q(death.max()),
        );
        if let Some(zero) = cell("del_death", 1) {
            note += &format!(
                " ({} / {} with `--start-guard 0s`)",
                q(zero.median()),
                q(zero.max())
            );
        }
        note += &if within {
            format!(
                ". Every one of those deaths came within the default start guard of {g} ms, \
                 which the successor waits from when it sees the deletion: that is the room the \
                 guard leaves for a deposed leader that hears of it later than this one, on a \
                 loaded host or across a slower link."
            )
        } else {
            format!(
                ". **Some deaths came later than the default start guard of {g} ms**: the \
                 successor may then start beside a command that still runs."
            )
        };
        notes.push(note);
    }
    if let Some(o) = cell("del_overlap", 1).and_then(Cell::max) {
        notes.push(if o > 0.0 {
            format!(
                "With `--start-guard 0s` the successor's command started before the deposed one \
                 was dead in some runs (by up to {}): the race the guard is there to close.",
                ms(o)
            )
        } else {
            format!(
                "With `--start-guard 0s` the deposed command was dead before the successor's \
                 started in every run here ({} ahead at the closest), both replicas on one host \
                 hearing of the deletion from the same etcd.",
                ms(-o)
            )
        });
    }
    if let (Some(a), Some(b)) = (
        cell("term_handoff", 0).and_then(Cell::median),
        cell("term_handoff", 1).and_then(Cell::median),
    ) {
        let close = (a - b).abs() < g as f64 / 2.0;
        let verdict = if close {
            ".".to_string()
        } else {
            format!(
                " — **{} apart: the guard was waited on a clean release**.",
                ms((a - b).abs())
            )
        };
        notes.push(format!(
            "A graceful handoff writes the clean-release mark before the revoke, so the guard \
             does not apply: handoff p50 {} with the default guard, {} with `--start-guard \
             0s`{verdict}",
            ms(a),
            ms(b),
        ));
    }
    Page {
        title: "Start guard".into(),
        about: format!(
            "Two electd replicas wrap the ledger-writing child (`--stop-grace {}ms`): both with \
             electd's default start guard ({g} ms), or both with `--start-guard 0s`, in \
             alternating iterations of one run. Each iteration first deletes the leader's key \
             by hand, without the clean-release mark — the `DeleteRange` `etcdctl del` sends, \
             through etcd's JSON gateway, timed from when the request was sent —, while a \
             thread polls the deposed leader's command's pid (every {} ms, p50; dead = gone or \
             a zombie); then, once the deposed replica has rejoined the queue, the new leader \
             gets SIGTERM: a graceful handoff back, which marks its key.",
            p.stop_grace.as_millis(),
            d.fact("pid_poll_ms", num),
        ),
        columns: vec![
            format!("default start guard ({g} ms)"),
            "`--start-guard 0s`".into(),
        ],
        rows: vec![
            spec(
                "del_rtt",
                "the deletion: request sent → etcd's answer",
                "ms",
                false,
            ),
            spec(
                "del_death",
                "deletion sent → the deposed leader's command dead (pid polled)",
                "ms",
                false,
            ),
            spec("del_death_p99", "the same, p99", "ms", false),
            spec(
                "del_start",
                "deletion sent → the successor's command start",
                "ms",
                false,
            ),
            spec(
                "del_start_minus_guard",
                "the same, minus the start guard",
                "ms",
                true,
            ),
            spec(
                "del_overlap",
                "overlap: the deposed command's death − the successor's command start",
                "ms",
                true,
            ),
            spec(
                "term_handoff",
                "graceful handoff (SIGTERM): old child's `stop` record → new child's start",
                "ms",
                false,
            ),
            spec(
                "term_start",
                "SIGTERM sent → new child's start",
                "ms",
                false,
            ),
            spec(
                "term_graceful",
                "old child stopped by its SIGTERM trap",
                "runs",
                false,
            ),
        ],
        notes,
    }
}

#[test]
fn base64_is_the_standard_alphabet_with_padding() {
    for (plain, coded) in [
        ("", ""),
        ("f", "Zg=="),
        ("fo", "Zm8="),
        ("foo", "Zm9v"),
        ("foob", "Zm9vYg=="),
        (
            "guard-default-0/694d9a3b7c1e2f05",
            "Z3VhcmQtZGVmYXVsdC0wLzY5NGQ5YTNiN2MxZTJmMDU=",
        ),
    ] {
        assert_eq!(base64(plain.as_bytes()), coded, "{plain:?}");
    }
}
