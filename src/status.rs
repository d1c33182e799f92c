//! The published snapshot of this replica: written only by the daemon's owner task, read by
//! everyone else through a `tokio::sync::watch` receiver. Rendered to a [`RoleDoc`] at read
//! time so ages (`last_contact_ms`, the suspect deadline) are current.

use std::borrow::Cow;
use std::time::SystemTime;

use tokio::time::Instant;

pub use crate::api::doc::ChildStatus;
use crate::api::doc::{LeaderDoc, Rfc3339, RoleDoc, SuspectDoc};
use crate::election::role::{Role, RoleKind};

#[derive(Debug, Clone)]
pub struct Status {
    pub id: String,
    pub election: String,
    pub role: Role,
    /// This replica's own candidate key, while it is in the queue.
    pub key: Option<String>,
    /// Wall-clock time of the last role change (display only).
    pub since: SystemTime,
    pub reachable: bool,
    pub last_contact: Option<Instant>,
    pub child: Option<ChildStatus>,
    /// Why this replica may not lead now, if it may not (it is out of the queue).
    pub ineligible: Option<String>,
    pub priority: u32,
    /// Bumped on every published change. It starts at the time this electd started, in
    /// milliseconds since the epoch, so a restarted electd does not reuse its predecessor's
    /// versions (a long poll `after=` an old version answers at once).
    pub version: u64,
}

impl Status {
    pub fn new(id: &str, election: &str, has_child: bool) -> Status {
        Status {
            id: id.to_string(),
            election: election.to_string(),
            role: Role::Candidate,
            key: None,
            since: SystemTime::now(),
            reachable: false,
            last_contact: None,
            child: has_child.then(ChildStatus::default),
            ineligible: None,
            priority: crate::election::candidacy::DEFAULT_PRIORITY,
            version: SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(1, |d| d.as_millis() as u64),
        }
    }

    pub fn kind(&self) -> RoleKind {
        self.role.kind()
    }

    /// The fencing token of the leader this replica knows of.
    pub fn fencing_token(&self) -> Option<i64> {
        self.role.leader().map(|l| l.create_revision)
    }

    /// Whether an answer built at `now` may say this replica leads (never past its deadline).
    pub fn leads_at(&self, now: Instant) -> bool {
        self.role.at(now).leads()
    }

    /// The `/role` document at `now`, borrowing from this snapshot (serialise it while
    /// borrowed). A leader whose deadline has passed is shown as what it is about to become (a
    /// candidate), whether or not the owner task has handled the deadline yet.
    pub fn doc(&self, now: Instant) -> RoleDoc<'_> {
        let ms = |d: std::time::Duration| d.as_millis() as u64;
        let role = match self.role.at(now) {
            Cow::Borrowed(r) => r,
            Cow::Owned(_) => &Role::Candidate,
        };
        RoleDoc {
            role: role.kind(),
            id: Cow::Borrowed(&self.id),
            election: Cow::Borrowed(&self.election),
            key: self.key.as_deref().map(Cow::Borrowed),
            leader: role.leader().map(LeaderDoc::of),
            fencing_token: role.leader().map(|l| l.create_revision),
            valid_ms: role.budget_at(now).map(ms),
            deadline_monotonic_ns: None,
            since: Rfc3339(self.since),
            etcd_reachable: self.reachable,
            last_contact_ms: self
                .last_contact
                .map(|t| ms(now.saturating_duration_since(t))),
            version: self.version,
            eligible: self.ineligible.is_none(),
            reason: self.ineligible.as_deref().map(Cow::Borrowed),
            priority: self.priority,
            suspect: match role {
                Role::Suspect {
                    deadline, since, ..
                } => Some(SuspectDoc {
                    contact_lost_ms: ms(now.saturating_duration_since(*since)),
                    deadline_in_ms: ms(deadline.saturating_duration_since(now)),
                }),
                _ => None,
            },
            child: self.child.as_ref().map(Cow::Borrowed),
        }
    }
}

/// The end of the latest leadership budget this replica handed out (`valid_ms` in an answer,
/// counted from when it was built): the API records every one, and a sidecar leader that gives
/// up leadership waits for it (plus the stop grace) before it releases, so an app never acts on
/// a budget beside the next leader. Shared by clones; recording is one atomic `fetch_max`.
#[derive(Debug, Clone, Default)]
pub struct Claims(std::sync::Arc<std::sync::atomic::AtomicU64>);

/// The instant [`Claims`] counts nanoseconds from (the first use in this process).
fn claims_epoch() -> Instant {
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *EPOCH.get_or_init(|| Instant::now() - std::time::Duration::from_secs(1))
}

impl Claims {
    /// A budget that ends at `until` was handed out.
    pub fn record(&self, until: Instant) {
        let ns = until.saturating_duration_since(claims_epoch()).as_nanos() as u64;
        self.0.fetch_max(ns, std::sync::atomic::Ordering::AcqRel);
    }

    /// When the latest budget handed out ends (`None`: none was).
    pub fn until(&self) -> Option<Instant> {
        match self.0.load(std::sync::atomic::Ordering::Acquire) {
            0 => None,
            ns => Some(claims_epoch() + std::time::Duration::from_nanos(ns)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn claims_remember_the_latest_end_whatever_the_order() {
        let c = Claims::default();
        assert_eq!(c.until(), None);
        let t = Instant::now() + Duration::from_secs(5);
        let other = c.clone();
        other.record(t);
        c.record(t - Duration::from_secs(1));
        let until = c.until().unwrap();
        assert!(
            until.max(t) - until.min(t) < Duration::from_micros(1),
            "{until:?} vs {t:?}"
        );
        c.record(t + Duration::from_millis(250));
        let until = other.until().unwrap();
        assert!(until >= t + Duration::from_millis(249), "{until:?}");
    }
}
