//! The monitoring examples stay in step with the metrics: every metric that the Grafana dashboard
//! (`deploy/grafana/electd.json`) and the alert rules (`deploy/prometheus/electd-rules.yml`)
//! query is one electd exports (taken from the library's own `/metrics` rendering), with labels
//! it has; recorded `electd:*` series are recorded by the rules file; every dashboard query is
//! filtered by the `$election` variable and parses (`promtool check rules`); the rules and every
//! query evaluate over processes with several elections each. The rules' behaviour is tested by
//! promtool itself (`deploy/prometheus/electd-rules.test.yml`, run by `.ci/run`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use electd::metrics::Metrics;
use serde_json::Value;

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// Labels Prometheus attaches to every scraped series.
const TARGET_LABELS: [&str; 2] = ["job", "instance"];
/// Series Prometheus makes itself, per scrape target.
const PROMETHEUS_SERIES: [&str; 1] = ["up"];

/// Every series name electd exports, with its label names: `Metrics::render()` of a daemon's
/// registry. A labelled family renders only once it has a child, so each is given one here; a
/// new labelled metric needs a line too, or a query using it is reported as not exported.
fn exported() -> BTreeMap<String, BTreeSet<String>> {
    let m = Metrics::new();
    m.set_identity("e", "r", Duration::from_secs(10));
    let e = m.election("e");
    e.child_exits.with_label_values(&["exited"]);
    e.child_restarts.inc();
    e.suspect_seconds.inc_by(0.0);
    e.proxy_wait_seconds.observe(0.0);
    e.predecessor_wakeups.inc();
    e.foreign_keys.inc();
    m.etcd_errors.with_label_values(&["keepalive"]);
    m.keepalive_rtt.observe(0.01);
    let text = m.render();
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut words = rest.split_whitespace();
            let (name, kind) = (words.next().unwrap(), words.next().unwrap());
            let suffixes: &[&str] = match kind {
                "histogram" => &["_bucket", "_sum", "_count"],
                "summary" => &["", "_sum", "_count"],
                _ => &[""],
            };
            for s in suffixes {
                out.entry(format!("{name}{s}")).or_default();
            }
        } else if !line.starts_with('#') && !line.is_empty() {
            let (series, _) = line.rsplit_once(' ').expect("name{labels} value");
            let (name, labels) = series.split_once('{').unwrap_or((series, ""));
            let entry = out
                .get_mut(name)
                .unwrap_or_else(|| panic!("{name} has no # TYPE line"));
            for pair in labels
                .trim_end_matches('}')
                .split(',')
                .filter(|p| !p.is_empty())
            {
                entry.insert(pair.split('=').next().unwrap().to_string());
            }
        }
    }
    assert!(out.contains_key("electd_is_leader"), "{text}");
    out
}

/// A series selector found in a PromQL expression: metric name and the label names matched.
#[derive(Debug, PartialEq)]
struct Selector {
    name: String,
    labels: Vec<String>,
}

const KEYWORDS: &[&str] = &[
    "and",
    "or",
    "unless",
    "bool",
    "offset",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "atan2",
    "inf",
    "nan",
];
const AGGREGATIONS: &[&str] = &[
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
    "limitk",
    "limit_ratio",
];
/// Keywords followed by a parenthesised list of label names, not expressions.
const LABEL_LISTS: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];

/// The series selectors of a PromQL expression (Grafana's `$variables` allowed). Strings,
/// ranges, numbers, functions, keywords and label lists are skipped; what remains are metric
/// names, each with the labels of its `{…}` matchers.
fn selectors(expr: &str) -> Vec<Selector> {
    let chars: Vec<char> = expr.chars().collect();
    let ident = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    let next_non_space = |mut i: usize| {
        while i < chars.len() && chars[i].is_whitespace() {
            i += 1;
        }
        i
    };
    // The index just past the bracket closing the one at `open`, skipping strings inside.
    let close = |open: usize| {
        let (o, c) = match chars[open] {
            '(' => ('(', ')'),
            '[' => ('[', ']'),
            '{' => ('{', '}'),
            other => panic!("not a bracket: {other}"),
        };
        let (mut depth, mut i, mut quote) = (0, open, None);
        while i < chars.len() {
            let ch = chars[i];
            match quote {
                Some(_) if ch == '\\' => i += 1,
                Some(q) if ch == q => quote = None,
                Some(_) => {}
                None if ch == '"' || ch == '\'' || ch == '`' => quote = Some(ch),
                None if ch == o => depth += 1,
                None if ch == c => {
                    depth -= 1;
                    if depth == 0 {
                        return i + 1;
                    }
                }
                None => {}
            }
            i += 1;
        }
        panic!("unbalanced {o} in {expr:?}");
    };
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let ch = chars[i];
        if ch == '"' || ch == '\'' || ch == '`' {
            i += 1;
            while i < chars.len() && chars[i] != ch {
                i += if chars[i] == '\\' { 2 } else { 1 };
            }
            i += 1;
        } else if ch == '[' {
            i = close(i);
        } else if ch == '{' {
            panic!("a selector without a metric name in {expr:?}: name the metric");
        } else if ch == '$' {
            i += 1;
            if chars.get(i) == Some(&'{') {
                i = close(i);
            }
            while i < chars.len() && ident(chars[i]) {
                i += 1;
            }
        } else if ch.is_ascii_digit()
            || (ch == '.' && chars.get(i + 1).is_some_and(|c| c.is_ascii_digit()))
        {
            while i < chars.len() && (ident(chars[i]) || chars[i] == '.') {
                i += 1;
            }
        } else if ident(ch) {
            let start = i;
            while i < chars.len() && ident(chars[i]) {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let after = next_non_space(i);
            let lower = word.to_ascii_lowercase();
            if LABEL_LISTS.contains(&lower.as_str()) {
                if chars.get(after) == Some(&'(') {
                    i = close(after);
                }
            } else if KEYWORDS.contains(&lower.as_str()) || AGGREGATIONS.contains(&lower.as_str()) {
            } else if chars.get(after) == Some(&'(') {
                // A function call: its arguments are expressions, scanned as the loop goes on.
            } else {
                let mut labels = Vec::new();
                if chars.get(i) == Some(&'{') {
                    let end = close(i);
                    let body: String = chars[i + 1..end - 1].iter().collect();
                    labels = matcher_labels(&body);
                    i = end;
                }
                out.push(Selector { name: word, labels });
            }
        } else {
            i += 1;
        }
    }
    out
}

/// The label names of `a="x", b=~"y|z"`.
fn matcher_labels(body: &str) -> Vec<String> {
    let mut labels = Vec::new();
    let mut rest = body.trim();
    while !rest.is_empty() {
        let name_end = rest
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(rest.len());
        labels.push(rest[..name_end].to_string());
        // Skip the operator and the quoted value.
        let quote_at = rest.find(['"', '\'', '`']).expect("a quoted label value");
        let q = rest[quote_at..].chars().next().unwrap();
        let mut j = quote_at + 1;
        let bytes = rest.as_bytes();
        while j < rest.len() && bytes[j] as char != q {
            j += if bytes[j] == b'\\' { 2 } else { 1 };
        }
        rest = rest[j + 1..]
            .trim_start()
            .trim_start_matches(',')
            .trim_start();
    }
    labels
}

/// What is wrong with the selectors of `expr` (from `source`), given what electd exports and
/// the series the rules record.
fn problems(
    source: &str,
    expr: &str,
    exported: &BTreeMap<String, BTreeSet<String>>,
    recorded: &BTreeSet<String>,
) -> Vec<String> {
    let mut out = Vec::new();
    for s in selectors(expr) {
        if s.name.contains(':') {
            if !recorded.contains(&s.name) {
                out.push(format!(
                    "{source}: {} is not recorded by the rules file",
                    s.name
                ));
            }
        } else if PROMETHEUS_SERIES.contains(&s.name.as_str()) {
        } else if let Some(labels) = exported.get(&s.name) {
            for l in &s.labels {
                if !labels.contains(l) && !TARGET_LABELS.contains(&l.as_str()) && l != "__name__" {
                    out.push(format!(
                        "{source}: {} has no label {l:?} (it has {labels:?})",
                        s.name
                    ));
                }
            }
        } else {
            out.push(format!(
                "{source}: {} is not a metric electd exports (a labelled family renders only \
                 once touched: see exported() in tests/monitoring.rs)",
                s.name
            ));
        }
    }
    out
}

struct Rules {
    /// (what, expr) of every rule.
    exprs: Vec<(String, String)>,
    recorded: BTreeSet<String>,
    alerts: BTreeSet<String>,
}

fn rules(path: &Path) -> Rules {
    let doc: serde_yaml::Value = serde_yaml::from_str(&read(path))
        .unwrap_or_else(|e| panic!("{}: not YAML: {e}", path.display()));
    let mut rules = Rules {
        exprs: Vec::new(),
        recorded: BTreeSet::new(),
        alerts: BTreeSet::new(),
    };
    let groups = doc["groups"].as_sequence().expect("groups:");
    for group in groups {
        for rule in group["rules"].as_sequence().expect("rules:") {
            let expr = rule["expr"].as_str().expect("every rule has an expr");
            let what = if let Some(r) = rule["record"].as_str() {
                rules.recorded.insert(r.to_string());
                format!("record {r}")
            } else {
                let a = rule["alert"].as_str().expect("record or alert");
                rules.alerts.insert(a.to_string());
                format!("alert {a}")
            };
            rules.exprs.push((what, expr.to_string()));
        }
    }
    rules
}

/// (panel title, expr) of every query in the dashboard, rows' nested panels included.
fn dashboard_queries(dashboard: &Value) -> Vec<(String, String)> {
    fn walk(panels: &Value, out: &mut Vec<(String, String)>) {
        for p in panels.as_array().into_iter().flatten() {
            let title = p["title"].as_str().unwrap_or("?").to_string();
            for t in p["targets"].as_array().into_iter().flatten() {
                let expr = t["expr"]
                    .as_str()
                    .unwrap_or_else(|| panic!("panel {title:?}: a target without expr"));
                out.push((title.clone(), expr.to_string()));
            }
            walk(&p["panels"], out);
        }
    }
    let mut out = Vec::new();
    walk(&dashboard["panels"], &mut out);
    out
}

fn dashboard() -> Value {
    let path = repo().join("deploy/grafana/electd.json");
    serde_json::from_str(&read(&path))
        .unwrap_or_else(|e| panic!("{}: not JSON: {e}", path.display()))
}

#[test]
fn the_checker_finds_metric_names_and_reports_unknown_ones() {
    let expr = r#"histogram_quantile(0.99, sum by (id, le) (rate(electd_keepalive_rtt_seconds_bucket{job="x"}[$__rate_interval]) * on (job, instance) group_left (election, id) electd_info{election="$election"})) > bool 2 and electd:election_leaders:sum offset 5m"#;
    assert_eq!(
        selectors(expr),
        [
            Selector {
                name: "electd_keepalive_rtt_seconds_bucket".into(),
                labels: vec!["job".into()]
            },
            Selector {
                name: "electd_info".into(),
                labels: vec!["election".into()]
            },
            Selector {
                name: "electd:election_leaders:sum".into(),
                labels: vec![]
            },
        ]
    );
    let exported = exported();
    let recorded = BTreeSet::from(["electd:election_leaders:sum".to_string()]);
    assert!(problems("ok", expr, &exported, &recorded).is_empty());
    let bad = r#"sum(electd_is_leadr) + max(electd_role{rol="leader"}) + electd:nope + up"#;
    let found = problems("bad", bad, &exported, &recorded);
    assert_eq!(found.len(), 3, "{found:#?}");
    assert!(
        found[0].contains("electd_is_leadr is not a metric"),
        "{found:#?}"
    );
    assert!(
        found[1].contains("electd_role has no label \"rol\""),
        "{found:#?}"
    );
    assert!(
        found[2].contains("electd:nope is not recorded"),
        "{found:#?}"
    );
}

#[test]
fn rules_and_dashboard_query_only_metrics_electd_exports() {
    let exported = exported();
    let rules = rules(&repo().join("deploy/prometheus/electd-rules.yml"));
    let dashboard = dashboard();
    let queries = dashboard_queries(&dashboard);
    assert!(queries.len() >= 10, "{} queries", queries.len());

    let mut found = Vec::new();
    let mut used = BTreeSet::new();
    for (what, expr) in rules.exprs.iter().chain(&queries) {
        found.extend(problems(what, expr, &exported, &rules.recorded));
        used.extend(selectors(expr).into_iter().map(|s| s.name));
    }
    // Template variables: label_values(metric, label).
    let vars = dashboard["templating"]["list"]
        .as_array()
        .expect("templating");
    for v in vars.iter().filter(|v| v["type"] == "query") {
        let q = v["query"]["query"]
            .as_str()
            .or(v["query"].as_str())
            .expect("a variable query");
        let args = q
            .strip_prefix("label_values(")
            .and_then(|a| a.strip_suffix(')'))
            .unwrap_or_else(|| panic!("variable query {q:?}: expected label_values(…)"));
        let (metric, label) = args.split_once(',').expect("label_values(metric, label)");
        found.extend(problems("variable", metric, &exported, &rules.recorded));
        let label = label.trim();
        assert!(
            exported
                .get(metric.trim())
                .is_some_and(|l| l.contains(label)),
            "variable {q:?}: {metric} has no label {label}"
        );
    }
    assert!(found.is_empty(), "{}", found.join("\n"));

    // The dashboard shows what the issue asks for.
    for metric in [
        "electd_is_leader",
        "electd_leader_transitions_total",
        "electd_keepalive_rtt_seconds_bucket",
        "electd_suspect_seconds_total",
        "electd_child_restarts_total",
    ] {
        assert!(used.contains(metric), "nothing queries {metric}");
    }
    for alert in [
        "ElectdNoLeader",
        "ElectdMultipleLeaders",
        "ElectdLeadershipFlapping",
        "ElectdLeaderSuspect",
        "ElectdEtcdUnreachable",
        "ElectdCommandRestartLoop",
    ] {
        assert!(rules.alerts.contains(alert), "no alert {alert}");
    }
}

/// Every dashboard query as a recording rule of one group, Grafana's variables filled in
/// (`$election` with `election`).
fn dashboard_rules(queries: &[(String, String)], election: &str) -> String {
    let mut file = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, (_, expr)) in queries.iter().enumerate() {
        let expr = expr
            .replace("$__rate_interval", "1m")
            .replace("$__range", "1h")
            .replace("$election", election);
        file.push_str(&format!(
            "      - record: dashboard:query_{i}\n        expr: {}\n",
            serde_json::to_string(&expr).unwrap()
        ));
    }
    file
}

#[test]
fn every_dashboard_query_is_filtered_by_the_election_and_parses() {
    let dashboard = dashboard();
    let vars = dashboard["templating"]["list"]
        .as_array()
        .expect("templating");
    let election = vars
        .iter()
        .find(|v| v["name"] == "election")
        .expect("an election variable");
    assert_eq!(election["type"], "query");
    assert_eq!(
        election["multi"], false,
        "queries match election=\"$election\""
    );
    let queries = dashboard_queries(&dashboard);
    for (title, expr) in &queries {
        assert!(
            expr.contains(r#"election="$election""#),
            "panel {title:?} is not filtered by the election: {expr}"
        );
    }

    // promtool parses each query (Grafana's variables filled in) as a recording rule.
    let file = dashboard_rules(&queries, "svc");
    let dir = tempfile::tempdir().unwrap();
    let path: PathBuf = dir.path().join("dashboard-rules.yml");
    std::fs::write(&path, file).unwrap();
    let out = Command::new("promtool")
        .args(["check", "rules"])
        .arg(&path)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "promtool is required ({e}): apt-get install -y --no-install-recommends \
                 prometheus (scripts/setup.sh installs it)"
            )
        });
    assert!(
        out.status.success(),
        "promtool rejects a dashboard query:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The rules and every dashboard query evaluate (promtool's unit tester fails on an evaluation
/// error such as a many-to-many join) over what two processes with two elections each export,
/// taken from the library's own rendering: a join that forgets the `election` label breaks as
/// soon as a process takes part in several elections. Replica a leads "svc", b leads "other".
#[test]
fn the_rules_and_every_dashboard_query_evaluate_over_processes_with_several_elections() {
    let mut input = String::new();
    for (id, leads) in [("a", "svc"), ("b", "other")] {
        let m = Metrics::new();
        for election in ["svc", "other"] {
            m.set_identity(election, id, Duration::from_secs(10));
            let e = m.election(election);
            e.child_exits.with_label_values(&["exited"]);
            e.suspect_seconds.inc_by(0.0);
            e.proxy_wait_seconds.observe(0.0);
            if election == leads {
                e.set_role(electd::election::role::RoleKind::Leader);
            }
        }
        m.keepalive_rtt.observe(0.01);
        m.etcd_errors.with_label_values(&["keepalive"]);
        input.push_str(&format!(
            "      - series: 'up{{job=\"electd\",instance=\"{id}:4040\"}}'\n        values: '1+0x20'\n"
        ));
        for line in m
            .render()
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
        {
            let (series, value) = line.rsplit_once(' ').expect("name{labels} value");
            let (name, labels) = series.split_once('{').unwrap_or((series, "}"));
            let labels = labels.trim_end_matches('}');
            let sep = if labels.is_empty() { "" } else { "," };
            input.push_str(&format!(
                "      - series: '{name}{{job=\"electd\",instance=\"{id}:4040\"{sep}{labels}}}'\n        values: '{value}+0x20'\n"
            ));
        }
    }
    assert!(input.contains("election=\"other\""), "{input}");

    let dir = tempfile::tempdir().unwrap();
    let queries = dashboard_rules(&dashboard_queries(&dashboard()), "other");
    std::fs::write(dir.path().join("dashboard-rules.yml"), queries).unwrap();
    std::fs::copy(
        repo().join("deploy/prometheus/electd-rules.yml"),
        dir.path().join("electd-rules.yml"),
    )
    .unwrap();
    let test = format!(
        "rule_files: [dashboard-rules.yml, electd-rules.yml]\nevaluation_interval: 15s\ntests:\n  \
         - interval: 15s\n    input_series:\n{input}    promql_expr_test:\n      \
         - expr: count(electd_info)\n        eval_time: 2m\n        exp_samples:\n          \
         - value: 4\n      \
         - expr: sum by (election) (electd:election_leaders:sum)\n        eval_time: 2m\n        exp_samples:\n          \
         - labels: '{{election=\"other\"}}'\n            value: 1\n          \
         - labels: '{{election=\"svc\"}}'\n            value: 1\n    \
         alert_rule_test:\n      - {{eval_time: 4m, alertname: ElectdMultipleLeaders, exp_alerts: []}}\n"
    );
    let path = dir.path().join("several-elections.test.yml");
    std::fs::write(&path, &test).unwrap();
    let out = Command::new("promtool")
        .args(["test", "rules"])
        .arg(&path)
        .output()
        .expect("promtool is required: apt-get install -y --no-install-recommends prometheus");
    assert!(
        out.status.success(),
        "a rule or dashboard query fails over several elections:\n{}{}\n{test}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
