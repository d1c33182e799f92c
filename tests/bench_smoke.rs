//! The benchmark in miniature (`benches/electd.rs` runs it in full): one short iteration of
//! every scenario, so it keeps working. Asserts that each produced sane figures, never how
//! fast anything was.

mod common;
#[path = "../benches/scenarios/mod.rs"]
mod scenarios;

use scenarios::{BenchConfig, Data, SCENARIOS, Value};

#[test]
fn every_benchmark_scenario_produces_sane_figures() {
    let cfg = BenchConfig::smoke();
    let report = scenarios::run(&cfg);
    // The data file's round trip, and the page rendered from what was read back.
    let data = Data::from_json(&report.data().to_json()).expect("the data reads back");
    let text = scenarios::report::markdown(&data).expect("the page renders");
    println!("{text}");

    for key in SCENARIOS {
        let s = report
            .section(key)
            .unwrap_or_else(|| panic!("no section for scenario {key}"));
        assert!(
            s.failures.is_empty(),
            "scenario {key} failed: {:?}",
            s.failures
        );
        assert!(!s.rows.is_empty(), "scenario {key} has no figures");
        let page = scenarios::page(key, &cfg, data.section(key).unwrap()).unwrap();
        for r in &s.rows {
            let signed = page
                .spec(&r.id)
                .unwrap_or_else(|| panic!("{key}/{} has no label", r.id))
                .signed;
            for (col, v) in r.cols.iter().enumerate() {
                match v {
                    Value::Samples(xs) => {
                        for x in xs {
                            assert!(x.is_finite(), "{key}/{} col {col}: {x}", r.id);
                            assert!(
                                signed || *x >= 0.0,
                                "{key}/{} col {col} is negative: {x}",
                                r.id
                            );
                        }
                    }
                    Value::Count { hits, of } => {
                        assert!(hits <= of, "{key}/{} col {col}: {hits} of {of}", r.id);
                    }
                    Value::Number(x) => assert!(x.is_finite(), "{key}/{}: {x}", r.id),
                    Value::Missing => {}
                }
            }
        }
    }

    // Every side-by-side failover scenario measured both tools once.
    for (key, row) in [
        ("handoff", "handoff"),
        ("crash", "failover"),
        ("partition", "overlap"),
    ] {
        let r = report.section(key).unwrap().row(row).unwrap();
        for v in &r.cols {
            assert_eq!(v.samples().len(), 1, "{key}/{row}: {v:?}");
        }
    }
    // Crash failover ran at both TTLs, each tool once at each, and watched the old child's
    // process group; the rows minus the TTL are the failovers minus their own TTL.
    let crash = report.section("crash").unwrap();
    for (ttl, sfx) in scenarios::failover::crash_ttls(&cfg) {
        for row in ["failover", "old_end", "overlap", "group_end"] {
            let id = format!("{row}{sfx}");
            for v in &crash.row(&id).unwrap().cols {
                assert_eq!(v.samples().len(), 1, "crash/{id}: {v:?}");
            }
        }
        let failover = &crash.row(&format!("failover{sfx}")).unwrap().cols;
        let minus = &crash.row(&format!("failover_minus_ttl{sfx}")).unwrap().cols;
        for (f, m) in failover.iter().zip(minus) {
            let diff = f.samples()[0] - m.samples()[0];
            assert!(
                (diff - ttl.as_secs_f64() * 1e3).abs() < 1e-6,
                "crash at TTL {ttl:?}: {f:?} − {m:?}"
            );
        }
        let alive = &crash.row(&format!("old_alive{sfx}")).unwrap().cols;
        assert!(
            alive
                .iter()
                .all(|v| matches!(v, Value::Count { of: 1, .. })),
            "{alive:?}"
        );
    }

    // The start guard: every row has its sample in both columns (default guard, 0s); with the
    // default guard the successor waited the guard after seeing the unmarked deletion, so it
    // started at least that long after the deletion was sent; the p99 rows are numbers.
    let guard = report.section("guard").unwrap();
    for row in [
        "del_rtt",
        "del_death",
        "del_start",
        "del_start_minus_guard",
        "del_overlap",
        "term_handoff",
        "term_start",
    ] {
        for v in &guard.row(row).unwrap().cols {
            assert_eq!(v.samples().len(), 1, "guard/{row}: {v:?}");
        }
    }
    let start = guard.row("del_start").unwrap().cols[0].samples()[0];
    assert!(
        start >= cfg.start_guard.as_secs_f64() * 1e3,
        "the successor started {start} ms after an unmarked deletion, inside its start guard \
         of {:?}",
        cfg.start_guard
    );
    for (v, death) in guard
        .row("del_death_p99")
        .unwrap()
        .cols
        .iter()
        .zip(&guard.row("del_death").unwrap().cols)
    {
        assert!(
            matches!(v, Value::Number(x) if *x == death.samples()[0]),
            "guard/del_death_p99 of one sample is that sample: {v:?} vs {death:?}"
        );
    }
    for v in &guard.row("term_graceful").unwrap().cols {
        assert!(matches!(v, Value::Count { of: 1, .. }), "guard: {v:?}");
    }

    // Sidecar apps: one round of each fault; its margin is the time from the old term's last act
    // to the next claim, split by the deposed app's way of asking, and its smallest is the one.
    let sidecar = report.section("sidecar").unwrap();
    let row = |id: &str| &sidecar.row(id).unwrap().cols;
    for col in 0..2 {
        let margin = row("margin")[col].samples();
        assert_eq!(margin.len(), 1, "sidecar/margin col {col}: {margin:?}");
        let (stop, claim) = (
            row("fault_to_stop")[col].samples()[0],
            row("fault_to_claim")[col].samples()[0],
        );
        assert!(
            (claim - stop - margin[0]).abs() < 1e-6,
            "sidecar col {col}: claim {claim} − last act {stop} ≠ margin {margin:?}"
        );
        assert!(
            matches!(row("margin_min")[col], Value::Number(m) if m == margin[0]),
            "sidecar/margin_min col {col}: {:?}",
            row("margin_min")[col]
        );
        let split =
            row("margin_watch")[col].samples().len() + row("margin_poll")[col].samples().len();
        assert_eq!(
            split, 1,
            "sidecar col {col}: the round is on /watch or long-polling"
        );
        assert!(
            matches!(row("on_watch")[col], Value::Count { of: 1, .. }),
            "{:?}",
            row("on_watch")[col]
        );
    }

    for row in ["stopped", "restarted", "moved"] {
        let r = report.section("flap").unwrap().row(row).unwrap();
        for v in &r.cols {
            assert!(matches!(v, Value::Count { of: 1, .. }), "flap/{row}: {v:?}");
        }
    }
    let api = report.section("api").unwrap();
    for row in ["rps_http", "rps_unix"] {
        for v in &api.row(row).unwrap().cols {
            assert!(v.median().is_some_and(|x| x > 0.0), "api/{row}: {v:?}");
        }
    }
    for row in ["cpu_http", "cpu_unix", "oneshot"] {
        for v in &api.row(row).unwrap().cols {
            assert!(v.median().is_some_and(|x| x > 0.0), "api/{row}: {v:?}");
        }
    }
    let fp = report.section("footprint").unwrap();
    let rss = fp.row("rss").unwrap();
    assert!(rss.cols[0].median().is_some_and(|x| x > 0.0), "{rss:?}");
    // At the default TTL the smoke window may hold no keepalive at all: a rate, not a speed.
    for row in ["dflt_msgs", "dflt_keepalives", "dflt_etcd_cpu"] {
        for v in &fp.row(row).unwrap().cols {
            assert!(
                matches!(v, Value::Number(x) if *x >= 0.0),
                "footprint/{row}: {v:?}"
            );
        }
    }

    // The handoff counted etcd's calls for both tools and traced electd's.
    let handoff = report.section("handoff").unwrap();
    for row in ["reads", "writes", "trace_start", "trace_child_exit"] {
        for v in &handoff.row(row).unwrap().cols {
            assert_eq!(v.samples().len(), 1, "handoff/{row}: {v:?}");
        }
    }
    for row in [
        "trace_stopping",
        "trace_reaped",
        "trace_elected",
        "trace_spawned",
    ] {
        let v = &handoff.row(row).unwrap().cols[0];
        assert_eq!(v.samples().len(), 1, "handoff/{row}: {v:?}");
    }

    // Health-check failover: once, to the next replica.
    let health = report.section("health").unwrap();
    for row in ["old_stop", "new_start"] {
        let v = &health.row(row).unwrap().cols[0];
        assert_eq!(v.samples().len(), 1, "health/{row}: {v:?}");
    }
    let next = &health.row("next").unwrap().cols[0];
    assert!(matches!(next, Value::Count { hits: 1, of: 1 }), "{next:?}");

    // Routing: every path carried traffic; through the follower's proxy, the new leader's app
    // answered after each kind of stop, and nothing sent after the follower saw the change
    // reached the deposed leader (its proxy closes and re-routes at once).
    let routing = report.section("routing").unwrap();
    for row in ["rps", "p50", "p99"] {
        for v in &routing.row(row).unwrap().cols {
            assert!(v.median().is_some_and(|x| x > 0.0), "routing/{row}: {v:?}");
        }
    }
    for row in ["term_reach", "kill_reach", "term_stale", "kill_stale"] {
        for v in &routing.row(row).unwrap().cols[..2] {
            assert_eq!(v.samples().len(), 1, "routing/{row}: {v:?}");
        }
    }
    for row in ["term_after_seen", "kill_after_seen"] {
        let v = &routing.row(row).unwrap().cols[0];
        assert!(
            matches!(v, Value::Count { hits: 0, of } if *of > 0),
            "routing/{row}: {v:?}"
        );
    }

    // Scale: every column (processes and each in-process count) changed leader once and
    // counted etcd's reads.
    let scale = report.section("scale").unwrap();
    assert_eq!(
        scenarios::scale::columns(&cfg).len(),
        1 + cfg.scale_in_process.len()
    );
    for row in ["to_leader", "all_follow", "reads", "events", "join_txn"] {
        for v in &scale.row(row).unwrap().cols {
            assert_eq!(v.samples().len(), 1, "scale/{row}: {v:?}");
        }
    }

    // The page names the goals, every scenario and every row it has figures for.
    assert!(text.contains("## Goals"), "{text}");
    for s in &data.sections {
        let page = scenarios::page(&s.key, &cfg, s).unwrap();
        assert!(
            text.contains(&format!(". {}\n", page.title)),
            "no section {:?} in:\n{text}",
            page.title
        );
        for r in &s.rows {
            let figure = &page.spec(&r.id).unwrap().figure;
            assert!(
                text.contains(figure.as_str()),
                "no row {figure:?} in:\n{text}"
            );
        }
    }
    assert!(!text.contains("NaN"), "{text}");
}

/// Not a check: the scenarios re-run this executable with this test selected for work in a
/// process of its own (the role API's bare axum baseline, an in-process scale run). Without
/// that, it returns at once.
#[test]
#[ignore = "started by the benchmark scenarios as a helper process"]
fn bench_helper_process() {
    scenarios::helper_if_asked();
}
