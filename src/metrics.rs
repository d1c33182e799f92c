//! Prometheus metrics, registered once per daemon in their own registry and rendered by
//! `GET /metrics`. Names carry units and counters end in `_total`. Every series of an
//! election carries its name in an `election` label ([`ElectionMetrics`]: a process may take
//! part in several elections); what the process does once for all of them (the keepalive of its
//! one lease, its etcd calls, its health check) does not. `electd_info{election,id,version,
//! commit}` is 1 for every election.

use std::time::Duration;

use prometheus::{
    Counter, CounterVec, Encoder, Gauge, Histogram, HistogramOpts, HistogramVec, IntCounter,
    IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};

use crate::election::Telemetry;
use crate::election::role::RoleKind;

/// Declares the metrics once each: the field, its type and how it is made. The macro writes
/// the struct and `Metrics::registered`, which makes every metric and registers it, so no name
/// is listed twice. The per-election metrics (`per_election { … }`) get their `election` label first,
/// and a field of the same name in [`ElectionMetrics`]: the child of one election, or (`=>
/// more`) the vector with the election given and the other labels left.
macro_rules! metrics {
    (
        process {
            $($field:ident: $ty:ty = $make:expr;)*
        }
        per_election {
            $($efield:ident: $ety:ty => $eone:ident $echild:ty = $emake:expr;)*
        }
    ) => {
        #[derive(Clone)]
        pub struct Metrics {
            registry: Registry,
            $(pub $field: $ty,)*
            $($efield: $ety,)*
        }

        impl Metrics {
            fn registered() -> Metrics {
                let registry = Registry::new();
                $(
                    let $field: $ty = $make.expect("invariant: valid metric");
                    registry
                        .register(Box::new($field.clone()))
                        .expect("invariant: metric names are unique");
                )*
                $(
                    let $efield: $ety = $emake.expect("invariant: valid metric");
                    registry
                        .register(Box::new($efield.clone()))
                        .expect("invariant: metric names are unique");
                )*
                Metrics { registry, $($field,)* $($efield,)* }
            }

            /// The series of `election`.
            pub fn election(&self, election: &str) -> ElectionMetrics {
                ElectionMetrics {
                    process: self.clone(),
                    name: election.to_string(),
                    $($efield: metrics!(@child $eone self.$efield, election),)*
                }
            }
        }

        /// The series of one election (its `election` label given).
        #[derive(Clone)]
        pub struct ElectionMetrics {
            /// What the process counts once for every election.
            pub process: Metrics,
            pub name: String,
            $(pub $efield: $echild,)*
        }
    };
    (@child one $vec:expr, $election:expr) => { $vec.with_label_values(&[$election]) };
    (@child more $vec:expr, $election:expr) => {
        ForElection { vec: $vec.clone(), election: $election.to_string() }
    };
}

/// A metric vector with its `election` label given: the other labels are added per use.
#[derive(Clone)]
pub struct ForElection<V> {
    vec: V,
    election: String,
}

impl ForElection<IntCounterVec> {
    pub fn with_label_values(&self, rest: &[&str]) -> IntCounter {
        let mut labels = vec![self.election.as_str()];
        labels.extend_from_slice(rest);
        self.vec.with_label_values(&labels)
    }
}

impl ForElection<IntGaugeVec> {
    pub fn with_label_values(&self, rest: &[&str]) -> IntGauge {
        let mut labels = vec![self.election.as_str()];
        labels.extend_from_slice(rest);
        self.vec.with_label_values(&labels)
    }
}

/// `Opts` for a metric of one election: its labels after `election`.
fn per_election(name: &str, help: &str) -> Opts {
    Opts::new(name, help)
}

metrics! {
    process {
    health_checks: IntCounterVec = IntCounterVec::new(
            Opts::new(
                "electd_health_checks_total",
                "Health checks of the app beside electd, by result (pass, fail)",
            ),
            &["result"],
        );
    health_transitions: IntCounterVec = IntCounterVec::new(
            Opts::new(
                "electd_health_transitions_total",
                "Changes of health after --health-rise passes or --health-fall failures in a row, by the state entered (healthy, unhealthy)",
            ),
            &["to"],
        );
    keepalive_rtt: Histogram = Histogram::with_opts(
            HistogramOpts::new(
                "electd_keepalive_rtt_seconds",
                "Round-trip time of successful lease keepalives",
            )
            .buckets(vec![
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
            ]),
        );
    keepalive_failures: IntCounter = IntCounter::new(
            "electd_keepalive_failures_total",
            "Lease keepalives that failed or timed out",
        );
    etcd_errors: IntCounterVec = IntCounterVec::new(
            Opts::new("electd_etcd_errors_total", "Failed etcd calls by kind"),
            &["kind"],
        );
    last_contact_age: Gauge = Gauge::new(
            "electd_etcd_last_contact_age_seconds",
            "Seconds since etcd last answered (at scrape time)",
        );
    info: IntGaugeVec = IntGaugeVec::new(
            Opts::new(
                "electd_info",
                "1 for every election this replica takes part in, labelled with the election, its id, version and commit",
            ),
            &["election", "id", "version", "commit"],
        );
    lease_ttl: Gauge = Gauge::new(
            "electd_lease_ttl_seconds",
            "The configured lease TTL (--ttl)",
        );
    }
    per_election {
        is_leader: IntGaugeVec => one IntGauge = IntGaugeVec::new(
                per_election("electd_is_leader", "1 while this replica leads the election, else 0"),
                &["election"],
            );
        role: IntGaugeVec => more ForElection<IntGaugeVec> = IntGaugeVec::new(
                per_election("electd_role", "1 for the current role of this replica"),
                &["election", "role"],
            );
        transitions: IntCounterVec => more ForElection<IntCounterVec> = IntCounterVec::new(
                per_election(
                    "electd_leader_transitions_total",
                    "Role changes of this replica",
                ),
                &["election", "from", "to"],
            );
        fencing_token: IntGaugeVec => one IntGauge = IntGaugeVec::new(
                per_election(
                    "electd_fencing_token",
                    "Create revision of the current leader's key (0 when unknown)",
                ),
                &["election"],
            );
        etcd_reachable: IntGaugeVec => one IntGauge = IntGaugeVec::new(
                per_election(
                    "electd_etcd_reachable",
                    "1 while the last etcd call succeeded",
                ),
                &["election"],
            );
        child_running: IntGaugeVec => one IntGauge = IntGaugeVec::new(
                per_election(
                    "electd_child_running",
                    "1 while the wrapped command runs",
                ),
                &["election"],
            );
        child_restarts: IntCounterVec => one IntCounter = IntCounterVec::new(
                per_election(
                    "electd_child_restarts_total",
                    "Restarts of the wrapped command after it exited on its own",
                ),
                &["election"],
            );
        child_exits: IntCounterVec => more ForElection<IntCounterVec> = IntCounterVec::new(
                per_election(
                    "electd_child_exits_total",
                    "Exits of the wrapped command by reason",
                ),
                &["election", "reason"],
            );
        predecessor_wakeups: IntCounterVec => one IntCounter = IntCounterVec::new(
                per_election(
                    "electd_predecessor_wakeups_total",
                    "Times this replica re-read the election because its predecessor's key went away",
                ),
                &["election"],
            );
        foreign_keys: IntCounterVec => one IntCounter = IntCounterVec::new(
                per_election(
                    "electd_foreign_keys_total",
                    "Keys under the election's prefix that are not candidates (written by hand, or a \
                     candidate key rewritten without its lease), each counted once when first seen",
                ),
                &["election"],
            );
        eligible: IntGaugeVec => one IntGauge = IntGaugeVec::new(
                per_election(
                    "electd_eligible",
                    "1 while this replica may lead (campaigns), 0 while it may not (a failing health check, priority 0)",
                ),
                &["election"],
            );
        history_rewound: IntGaugeVec => one IntGauge = IntGaugeVec::new(
                per_election(
                    "electd_history_rewound",
                    "1 while this replica refuses to lead because etcd answered below a revision it had seen (history rewound)",
                ),
                &["election"],
            );
        proxy_connections: IntCounterVec => one IntCounter = IntCounterVec::new(
                per_election(
                    "electd_proxy_connections_total",
                    "Connections accepted by the leader-following proxy (--proxy)",
                ),
                &["election"],
            );
        proxy_open: IntGaugeVec => one IntGauge = IntGaugeVec::new(
                per_election("electd_proxy_connections_open", "Proxied connections open now"),
                &["election"],
            );
        proxy_closed: IntCounterVec => more ForElection<IntCounterVec> = IntCounterVec::new(
                per_election(
                    "electd_proxy_closed_total",
                    "Proxied connections ended, by reason: closed (by either side), leader_changed, view_stale (cut off from etcd longer than the leader budget), no_leader (none within --proxy-wait), upstream_unreachable (the leader's app could not be reached within --proxy-wait), shutdown",
                ),
                &["election", "reason"],
            );
        proxy_bytes: IntCounterVec => more ForElection<IntCounterVec> = IntCounterVec::new(
                per_election(
                    "electd_proxy_bytes_total",
                    "Bytes forwarded by the proxy, by direction (to_leader, from_leader)",
                ),
                &["election", "direction"],
            );
        proxy_wait_seconds: HistogramVec => one Histogram = HistogramVec::new(
                HistogramOpts::new(
                    "electd_proxy_wait_seconds",
                    "Time a proxied connection waited for a leader to route to",
                )
                .buckets(vec![0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]),
                &["election"],
            );
        hooks: IntCounterVec => more ForElection<IntCounterVec> = IntCounterVec::new(
                per_election(
                    "electd_role_change_hooks_total",
                    "Role-change hooks (--on-role-change), by result: ok, failed, timeout, dropped (the queue was full)",
                ),
                &["election", "result"],
            );
        suspect_seconds: CounterVec => one Counter = CounterVec::new(
                per_election(
                    "electd_suspect_seconds_total",
                    "Time spent as a leader that lost contact with etcd (completed episodes)",
                ),
                &["election"],
            );
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let m = Metrics::registered();
        // Counters with known labels exist from the start, at 0, so rates see their first step.
        for result in ["pass", "fail"] {
            m.health_checks.with_label_values(&[result]);
        }
        for to in ["healthy", "unhealthy"] {
            m.health_transitions.with_label_values(&[to]);
        }
        // etcd out of space (its NOSPACE alarm) pages on the first refusal (ElectdEtcdNoSpace).
        m.etcd_errors.with_label_values(&["nospace"]);
        m
    }

    /// Publish that this replica takes part in `election` as `id`, and its lease TTL; the
    /// election's series start (at 0, candidate) so rates and `increase()` see their first step.
    pub fn set_identity(&self, election: &str, id: &str, ttl: Duration) {
        self.info
            .with_label_values(&[election, id, env!("CARGO_PKG_VERSION"), crate::GIT_COMMIT])
            .set(1);
        self.lease_ttl.set(ttl.as_secs_f64());
        let e = self.election(election);
        e.set_role(RoleKind::Candidate);
        for reason in ["closed", "leader_changed", "view_stale", "no_leader"] {
            e.proxy_closed.with_label_values(&[reason]);
        }
        for direction in ["to_leader", "from_leader"] {
            e.proxy_bytes.with_label_values(&[direction]);
        }
        for result in ["ok", "failed", "timeout", "dropped"] {
            e.hooks.with_label_values(&[result]);
        }
        // Winning the election is the only way into `leader`: start those series at 0 so that
        // `increase()` counts the first win too (a series that appears at 1 counts 0).
        for from in [RoleKind::Candidate, RoleKind::Follower] {
            e.transitions
                .with_label_values(&[from.as_str(), RoleKind::Leader.as_str()]);
        }
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        prometheus::TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .expect("invariant: text encoding into a Vec cannot fail");
        String::from_utf8(buf).expect("invariant: the text format is UTF-8")
    }
}

impl ElectionMetrics {
    pub fn set_role(&self, kind: RoleKind) {
        for k in RoleKind::ALL {
            self.role
                .with_label_values(&[k.as_str()])
                .set((k == kind) as i64);
        }
        self.is_leader.set(kind.leads() as i64);
    }
}

/// The election driver's reports, fed into the metrics (the election does not know metrics):
/// the process's lease and etcd calls.
impl Telemetry for Metrics {
    fn keepalive_ok(&self, rtt: Duration) {
        self.keepalive_rtt.observe(rtt.as_secs_f64());
    }

    fn keepalive_failed(&self) {
        self.keepalive_failures.inc();
    }

    fn backend_error(&self, kind: &'static str) {
        self.etcd_errors.with_label_values(&[kind]).inc();
    }
}

/// One election's driver reports: its queue's, under its label; its etcd calls, the process's.
impl Telemetry for ElectionMetrics {
    fn keepalive_ok(&self, rtt: Duration) {
        self.process.keepalive_ok(rtt);
    }

    fn keepalive_failed(&self) {
        self.process.keepalive_failed();
    }

    fn backend_error(&self, kind: &'static str) {
        self.process.backend_error(kind);
    }

    fn predecessor_woken(&self) {
        self.predecessor_wakeups.inc();
    }

    fn foreign_key(&self) {
        self.foreign_keys.inc();
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_and_first_wins_are_exported() {
        let m = Metrics::new();
        let before = m.render();
        assert!(!before.contains("electd_info{"), "{before}");
        m.set_identity("my-service", "replica-1", Duration::from_secs(10));
        let text = m.render();
        let info = format!(
            "electd_info{{commit=\"{}\",election=\"my-service\",id=\"replica-1\",version=\"{}\"}} 1",
            crate::GIT_COMMIT,
            env!("CARGO_PKG_VERSION")
        );
        for line in [
            info.as_str(),
            "electd_lease_ttl_seconds 10",
            "electd_leader_transitions_total{election=\"my-service\",from=\"candidate\",to=\"leader\"} 0",
            "electd_leader_transitions_total{election=\"my-service\",from=\"follower\",to=\"leader\"} 0",
            "electd_is_leader{election=\"my-service\"} 0",
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
        }
    }

    #[test]
    fn the_readme_lists_every_metric() {
        let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
            .expect("README.md");
        let m = Metrics::new();
        m.set_identity("e", "r", Duration::from_secs(3));
        let e = m.election("e");
        e.child_exits.with_label_values(&["exited"]);
        e.child_restarts.inc();
        e.suspect_seconds.inc_by(0.0);
        e.proxy_wait_seconds.observe(0.0);
        e.predecessor_wakeups.inc();
        e.foreign_keys.inc();
        m.etcd_errors.with_label_values(&["timeout"]);
        m.health_checks.with_label_values(&["pass"]);
        m.health_transitions.with_label_values(&["healthy"]);
        for line in m.render().lines() {
            if let Some(name) = line
                .strip_prefix("# TYPE ")
                .and_then(|l| l.split(' ').next())
            {
                assert!(
                    readme.contains(&format!("`{name}")),
                    "README.md does not list the metric {name}"
                );
            }
        }
    }
}
