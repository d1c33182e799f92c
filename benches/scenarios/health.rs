//! Scenario: health-check failover (issue 13). Replicas wrap the ledger-writing child, each
//! with `--health-cmd "test -f FILE"` on a file of its own; the leader's file is removed, and
//! the leader must stop its command and give way to the next healthy replica. Timed from the
//! removal, beside the bound the settings set: `--health-fall` failed checks
//! `--health-interval` apart ([`BenchConfig::health_interval`] and the others).

use std::path::Path;
use std::time::Duration;

use super::report::{Page, spec};
use super::trace::log_time_after;
use super::{
    BenchConfig, Ledger, Section, SectionData, Value, attempt, graced_spec, ms_between, now_ns,
};
use crate::common::{Daemon, Etcd, wait_until};

/// One iteration's figures (milliseconds from the removal, unless said otherwise).
struct Sample {
    detected: Option<f64>,
    old_stop: f64,
    new_start: f64,
    handoff: f64,
    next_in_queue: bool,
    moved_once: bool,
    graceful: bool,
}

fn iteration(cfg: &BenchConfig, etcd: &Etcd, dir: &Path, name: &str) -> Sample {
    let ledger = Ledger::new(dir, name);
    let ids: Vec<String> = (0..cfg.health_replicas.max(2))
        .map(|i| ((b'a' + i as u8) as char).to_string())
        .collect();
    let file = |id: &str| dir.join(format!("{name}.{id}.healthy"));
    let start = |id: &str| -> Daemon {
        std::fs::write(file(id), b"").expect("create the health file");
        let mut spec = graced_spec(cfg, &etcd.endpoint(), name, id).args(&[
            "--health-cmd",
            &format!("test -f {}", file(id).display()),
            "--health-interval",
            &format!("{}ms", cfg.health_interval.as_millis()),
            "--health-fall",
            &cfg.health_fall.to_string(),
            "--health-rise",
            &cfg.health_rise.to_string(),
        ]);
        spec.command = vec!["sh".into(), ledger.script.display().to_string()];
        spec.start()
    };
    let a = start(&ids[0]);
    wait_until(
        Duration::from_secs(20),
        "replica a's child to start",
        || ledger.starts_of(&ids[0]) == 1,
    );
    // One at a time: each joins the queue once its check has passed `rise` times, so started
    // together they would queue in whichever order their checks passed.
    let others: Vec<Daemon> = ids[1..]
        .iter()
        .map(|id| {
            let d = start(id);
            d.wait_role("follower", Duration::from_secs(20));
            d
        })
        .collect();
    // Then at a random phase of the check period, as a failure would come.
    std::thread::sleep(Duration::from_millis(
        300 + fastrand::u64(0..cfg.health_interval.as_millis() as u64),
    ));

    let t = now_ns();
    std::fs::remove_file(file(&ids[0])).expect("remove the leader's health file");
    wait_until(
        cfg.ttl + Duration::from_secs(10),
        "another replica's child to start",
        || ids[1..].iter().any(|id| ledger.starts_of(id) > 0),
    );
    std::thread::sleep(cfg.observe);

    let old = ledger.runs_of(&ids[0]).remove(0);
    let mut starts: Vec<_> = ids[1..]
        .iter()
        .flat_map(|id| ledger.runs_of(id))
        .filter(|r| r.start > t)
        .collect();
    starts.sort_by_key(|r| r.start);
    let new = starts.first().expect("a new child started").clone();
    let detected = log_time_after(&a.log, &["this replica is unhealthy"], t);
    drop(others);
    drop(a);
    Sample {
        detected: detected.map(|d| ms_between(d, t)),
        old_stop: ms_between(old.last, t),
        new_start: ms_between(new.start, t),
        handoff: ms_between(new.start, old.last),
        next_in_queue: new.id == ids[1],
        moved_once: starts.len() == 1 && ledger.runs_of(&ids[0]).len() == 1,
        graceful: old.stopped,
    }
}

pub fn health(cfg: &BenchConfig) -> Section {
    let bound = cfg.health_interval * cfg.health_fall;
    let mut s = Section::new("health");
    s.expected = cfg.iterations;
    let etcd = Etcd::start();
    let dir = tempfile::Builder::new()
        .prefix("electd-bench-health-")
        .tempdir()
        .expect("temp dir");
    let mut detected = Vec::new();
    let mut old_stop = Vec::new();
    let mut new_start = Vec::new();
    let mut handoff = Vec::new();
    let (mut next, mut once, mut graceful) = (0, 0, 0);
    let mut done = 0;
    for i in 0..cfg.iterations {
        let name = format!("health-{i}");
        match attempt(|| iteration(cfg, &etcd, dir.path(), &name)) {
            Ok(x) => {
                cfg.progress(&format!(
                    "health #{i}: unhealthy after {}, old child stopped after {:.0} ms, new \
                     child started after {:.0} ms",
                    x.detected.map_or("?".into(), |d| format!("{d:.0} ms")),
                    x.old_stop,
                    x.new_start
                ));
                detected.extend(x.detected);
                old_stop.push(x.old_stop);
                new_start.push(x.new_start);
                handoff.push(x.handoff);
                next += usize::from(x.next_in_queue);
                once += usize::from(x.moved_once);
                graceful += usize::from(x.graceful);
                done += 1;
            }
            Err(e) => {
                cfg.progress(&format!("health #{i} failed: {e}"));
                s.failures.push(format!("#{i}: {e}"));
            }
        }
    }
    let bound_ms = Value::Number(bound.as_millis() as f64);
    s.push("detected", [Value::Samples(detected), bound_ms.clone()]);
    s.push("old_stop", [Value::Samples(old_stop), bound_ms.clone()]);
    s.push("new_start", [Value::Samples(new_start), bound_ms]);
    s.push("handoff", [Value::Samples(handoff), Value::Missing]);
    let count = |hits| [Value::Count { hits, of: done }, Value::Missing];
    s.push("next", count(next));
    s.push("once", count(once));
    s.push("graceful", count(graceful));
    s
}

pub fn page(p: &BenchConfig, _: &SectionData) -> Page {
    let (interval, fall, rise) = (p.health_interval, p.health_fall, p.health_rise);
    let bound = interval * fall;
    Page {
        title: "Health-check failover".into(),
        about: format!(
            "{} electd replicas wrap the ledger-writing child, each with `--health-cmd \"test \
             -f FILE\" --health-interval {}ms --health-fall {fall} --health-rise {rise}` on a \
             file of its own (and `--stop-grace {}ms`). Once the first leads and the others \
             follow, the leader's file is removed; times are from the removal, which comes at a \
             random phase of the check period. The bound is fall × interval = {} ms: the leader \
             acts after {fall} failed checks in a row, the first within one interval of the \
             removal. `etcdctl lock` has no health check, so there is nothing to compare it \
             with.",
            p.health_replicas.max(2),
            interval.as_millis(),
            p.stop_grace.as_millis(),
            bound.as_millis(),
        ),
        columns: vec!["electd".into(), "bound".into()],
        rows: vec![
            spec(
                "detected",
                "health file removed → the leader logs that it is unhealthy",
                "ms",
                false,
            ),
            spec(
                "old_stop",
                "health file removed → old child's `stop` record",
                "ms",
                false,
            ),
            spec(
                "new_start",
                "health file removed → new leader's child start",
                "ms",
                false,
            ),
            spec(
                "handoff",
                "old child's `stop` record → new leader's child start",
                "ms",
                false,
            ),
            spec(
                "next",
                "the next replica in the queue took over",
                "runs",
                false,
            ),
            spec(
                "once",
                &format!(
                    "leadership moved once (no other start within {:.1} s)",
                    p.observe.as_secs_f64()
                ),
                "runs",
                false,
            ),
            spec(
                "graceful",
                "old child stopped by its SIGTERM trap",
                "runs",
                false,
            ),
        ],
        notes: vec![format!(
            "The removal lands anywhere in the check period, so the {fall} failed checks end \
             between {} and {} ms after it, plus the check's own run time (a `sh -c` fork and \
             exec); the leader then stops its child (stop signal, the child's trap) and revokes \
             its lease, and the next replica starts its child when the delete event reaches it \
             — the graceful handoff's path (section 1).",
            (interval * (fall - 1)).as_millis(),
            bound.as_millis(),
        )],
    }
}
