//! Role-change hooks (`--on-role-change CMD`): on every change of this replica's role, `sh -c
//! CMD` runs with `ELECTD_ROLE`, `ELECTD_PREV_ROLE`, `ELECTD_ID`, `ELECTD_ELECTION`,
//! `ELECTD_LEADER_ID` and `ELECTD_FENCING_TOKEN` in its environment (the last two empty when
//! no leader is known) — for VIPs, DNS, load balancers, as Patroni's `on_role_change` and
//! keepalived's `notify_master` do.
//!
//! Hooks run one at a time, in order, each killed (its whole process group) after the timeout.
//! A failing or slow hook is logged and counted and never blocks or delays the election, the
//! command or the proxy: the [`Hooks`] observer only queues the change (a bounded queue; a
//! change that finds it full is dropped, logged and counted), and a task of its own runs them.

use std::process::Stdio;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::timeout;
use tracing::{info, warn};

use crate::election::role::{Role, RoleKind};
use crate::leadership::{FENCING_TOKEN_VAR, Identity, Observer, Step};
use crate::metrics::ElectionMetrics;
use crate::supervisor::tree;

/// Changes waiting for their hook at most.
const QUEUE: usize = 64;

/// One change of role, as its hook is told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoleChange {
    pub role: RoleKind,
    pub prev: RoleKind,
    pub leader_id: Option<String>,
    pub token: Option<i64>,
}

impl RoleChange {
    /// The hook's environment.
    pub fn env(&self, identity: &Identity) -> Vec<(String, String)> {
        let mut env = vec![
            ("ELECTD_ROLE".into(), self.role.to_string()),
            ("ELECTD_PREV_ROLE".into(), self.prev.to_string()),
        ];
        env.extend(identity.env());
        env.push((
            "ELECTD_LEADER_ID".into(),
            self.leader_id.clone().unwrap_or_default(),
        ));
        env.push((
            FENCING_TOKEN_VAR.into(),
            self.token.map(|t| t.to_string()).unwrap_or_default(),
        ));
        env
    }
}

/// The observer that queues role changes for the hook runner.
pub struct Hooks {
    queue: mpsc::Sender<RoleChange>,
    metrics: ElectionMetrics,
}

/// The role a hook is told: a suspect leader (riding out a flap, its command still running)
/// is still the leader, so a flap moves no VIP and rewrites no DNS record.
fn told(role: &Role) -> RoleKind {
    match role.kind() {
        RoleKind::Suspect => RoleKind::Leader,
        k => k,
    }
}

/// The change a step makes, if the role (as hooks are told it) changed.
pub fn change(from: &Role, to: &Role) -> Option<RoleChange> {
    (told(from) != told(to)).then(|| RoleChange {
        role: told(to),
        prev: told(from),
        leader_id: to.leader().map(|l| l.id.clone()),
        token: to.leader().map(|l| l.create_revision),
    })
}

impl Observer for Hooks {
    fn stepped(&mut self, step: &Step<'_>) {
        let Some(c) = change(step.from, step.to) else {
            return;
        };
        if let Err(e) = self.queue.try_send(c) {
            warn!(error = %e, "role-change hook queue full; this change's hook is dropped");
            self.metrics.hooks.with_label_values(&["dropped"]).inc();
        }
    }
}

/// Start the hook runner for `command`; the observer to add to the leadership loop, and the
/// runner task (it ends when the observer is dropped).
pub fn start(
    command: String,
    limit: Duration,
    identity: Identity,
    metrics: ElectionMetrics,
) -> (Hooks, tokio::task::JoinHandle<()>) {
    let (tx, mut rx) = mpsc::channel::<RoleChange>(QUEUE);
    let m = metrics.clone();
    let task = tokio::spawn(async move {
        while let Some(c) = rx.recv().await {
            let result = run(&command, &c.env(&identity), limit).await;
            m.hooks.with_label_values(&[result]).inc();
        }
    });
    (Hooks { queue: tx, metrics }, task)
}

/// Run one hook; `ok`, `failed` or `timeout`.
async fn run(command: &str, env: &[(String, String)], limit: Duration) -> &'static str {
    let mut cmd = tokio::process::Command::new("sh");
    cmd.args(["-c", command])
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .process_group(0)
        .kill_on_drop(true);
    crate::supervisor::die_with_electd(&mut cmd);
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            warn!(error = %e, "cannot run the role-change hook");
            return "failed";
        }
    };
    let pid = child.id();
    if let Some(p) = pid {
        tree::own::register(p);
    }
    let role = env
        .iter()
        .find(|(k, _)| k == "ELECTD_ROLE")
        .map(|(_, v)| v.as_str())
        .unwrap_or_default();
    let result = match timeout(limit, child.wait()).await {
        Ok(Ok(status)) if status.success() => {
            info!(role, "role-change hook done");
            "ok"
        }
        Ok(Ok(status)) => {
            warn!(role, %status, "role-change hook failed");
            "failed"
        }
        Ok(Err(e)) => {
            warn!(role, error = %e, "waiting for the role-change hook failed");
            "failed"
        }
        Err(_) => {
            if let Some(p) = pid {
                let _ = nix::sys::signal::killpg(
                    nix::unistd::Pid::from_raw(p as i32),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            let _ = child.wait().await;
            warn!(role, limit = ?limit, "role-change hook killed after its timeout");
            "timeout"
        }
    };
    if let Some(p) = pid {
        tree::own::unregister(p);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::election::LeaderInfo;
    use tokio::time::Instant;

    #[test]
    fn only_a_change_of_role_is_a_change() {
        let l = |id: &str, t| LeaderInfo {
            id: id.into(),
            key: format!("e/{t:x}"),
            create_revision: t,
            member: None,
        };
        let follower = |id, t| Role::Follower { leader: l(id, t) };
        let leader = Role::Leader {
            token: 7,
            lease: 1,
            leader: l("me", 7),
            deadline: Instant::now(),
        };
        let suspect = Role::Suspect {
            token: 7,
            lease: 1,
            leader: l("me", 7),
            deadline: Instant::now(),
            since: Instant::now(),
        };
        use RoleKind::*;
        /// role, prev, leader id, token
        type Told = (RoleKind, RoleKind, Option<&'static str>, Option<i64>);
        #[rustfmt::skip]
        let table: &[(&str, Role, Role, Option<Told>)] = &[
            ("a new leader is not a new role", follower("a", 5), follower("b", 6), None),
            ("elected", follower("a", 5), leader.clone(), Some((Leader, Follower, Some("me"), Some(7)))),
            ("a flap is no change", leader.clone(), suspect.clone(), None),
            ("nor is its end", suspect.clone(), leader.clone(), None),
            ("a flap that ends in a loss is the leader's loss", suspect.clone(), Role::Candidate, Some((Candidate, Leader, None, None))),
            ("stepped down", leader.clone(), follower("b", 9), Some((Follower, Leader, Some("b"), Some(9)))),
            ("paused", follower("a", 5), Role::Paused, Some((Paused, Follower, None, None))),
            ("shutdown", leader.clone(), Role::Stopping, Some((Stopping, Leader, None, None))),
        ];
        for (name, from, to, want) in table {
            let got = change(from, to).map(|c| (c.role, c.prev, c.leader_id.clone(), c.token));
            let want = want.map(|(r, p, id, t)| (r, p, id.map(String::from), t));
            assert_eq!(got, want, "{name}");
        }
        let env = change(&leader, &Role::Candidate).unwrap().env(&Identity {
            id: "me".into(),
            election: "e".into(),
        });
        assert!(env.contains(&("ELECTD_PREV_ROLE".into(), "leader".into())));
        assert!(env.contains(&("ELECTD_ROLE".into(), "candidate".into())));
        assert!(env.contains(&("ELECTD_ID".into(), "me".into())));
        assert!(env.contains(&("ELECTD_FENCING_TOKEN".into(), String::new())));
    }

    #[tokio::test]
    async fn a_hook_that_hangs_is_killed_after_its_timeout() {
        let t = std::time::Instant::now();
        assert_eq!(
            run("sleep 30", &[], Duration::from_millis(200)).await,
            "timeout"
        );
        assert!(t.elapsed() < Duration::from_secs(2));
        assert_eq!(run("exit 3", &[], Duration::from_secs(2)).await, "failed");
        assert_eq!(run("true", &[], Duration::from_secs(2)).await, "ok");
    }
}
