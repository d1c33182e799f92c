//! The daemon's observer of the leadership loop: every step becomes the [`Status`] snapshot
//! the API reads, and metrics.

use std::time::SystemTime;

use tokio::sync::watch;

use crate::election::ElectionView;
use crate::election::role::{Event, Role};
use crate::leadership::{CommandChange, Observer, Step};
use crate::metrics::Metrics;
use crate::status::{ChildStatus, Status};

/// Publishes every step as the [`Status`] snapshot the API reads, and as metrics.
pub(super) struct Publisher {
    pub status: watch::Sender<Status>,
    pub metrics: Metrics,
    pub view: watch::Receiver<ElectionView>,
}

impl Publisher {
    fn update_child(&self, f: impl FnOnce(&mut ChildStatus)) {
        self.status.send_modify(|s| {
            if let Some(c) = s.child.as_mut() {
                f(c);
            }
            s.version += 1;
        });
    }

    fn publish(&self, role: &Role, role_changed: bool) {
        let view = self.view.borrow();
        let (reachable, last_contact) = (view.reachable, view.last_contact);
        let lease = view.lease;
        drop(view);
        // Only what a watcher acts on bumps the version; the last contact time is refreshed
        // silently (it is rendered at read time). A leader's renewed deadline wakes readers
        // without a new version: `/watch` sends it as a `lease` event, a long poll sleeps on.
        self.status.send_if_modified(|s| {
            let key = lease.map(|l| crate::election::keys::candidate_key(&s.election, l));
            let changed = role_changed
                || s.role.kind() != role.kind()
                || s.role.leader() != role.leader()
                || s.reachable != reachable
                || s.key != key;
            let renewed = role.leads() && s.role.deadline() != role.deadline();
            s.key = key;
            if role_changed {
                s.since = SystemTime::now();
            }
            s.role = role.clone();
            s.reachable = reachable;
            s.last_contact = last_contact;
            if changed {
                s.version += 1;
            }
            changed || renewed
        });
    }
}

impl Observer for Publisher {
    fn stepped(&mut self, step: &Step<'_>) {
        let (from, to) = (step.from.kind(), step.to.kind());
        if let Role::Suspect { since, .. } = step.from
            && !matches!(step.to, Role::Suspect { .. })
        {
            self.metrics
                .suspect_seconds
                .inc_by(step.now.saturating_duration_since(*since).as_secs_f64());
        }
        if from != to {
            self.metrics
                .transitions
                .with_label_values(&[from.as_str(), to.as_str()])
                .inc();
            self.metrics.set_role(to);
        }
        if let Event::Observed(o) = step.event {
            self.metrics.etcd_reachable.set(o.reachable as i64);
        }
        self.metrics
            .fencing_token
            .set(step.to.leader().map_or(0, |l| l.create_revision));
        self.publish(step.to, from != to);
    }

    fn command(&mut self, change: &CommandChange) {
        let ended = |exit: &crate::supervisor::ExitInfo, reason: &str| {
            self.metrics.child_exits.with_label_values(&[reason]).inc();
            self.metrics.child_running.set(0);
            let exit = *exit;
            self.update_child(|c| {
                c.running = false;
                c.pid = None;
                c.last_exit = Some(exit);
            });
        };
        match change {
            CommandChange::Restarting { .. } => self.metrics.child_restarts.inc(),
            CommandChange::Started { pid, restarts } => {
                self.metrics.child_running.set(1);
                let (pid, restarts) = (*pid, *restarts);
                self.update_child(|c| {
                    c.running = true;
                    c.pid = Some(pid);
                    c.restarts = restarts;
                });
            }
            CommandChange::StartFailed { exit } => ended(exit, "failed"),
            CommandChange::Exited { exit, .. } => {
                ended(exit, if exit.success() { "exited" } else { "failed" })
            }
            CommandChange::Stopped { exit: Some(exit) } => ended(exit, "stopped"),
            CommandChange::Stopped { exit: None } => {}
        }
    }
}
