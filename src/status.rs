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

    /// The `/role` document, borrowing from this snapshot (serialise it while borrowed).
    pub fn doc(&self, now: Instant) -> RoleDoc<'_> {
        let ms = |d: std::time::Duration| d.as_millis() as u64;
        RoleDoc {
            role: self.kind(),
            id: Cow::Borrowed(&self.id),
            election: Cow::Borrowed(&self.election),
            key: self.key.as_deref().map(Cow::Borrowed),
            leader: self.role.leader().map(LeaderDoc::of),
            fencing_token: self.fencing_token(),
            since: Rfc3339(self.since),
            etcd_reachable: self.reachable,
            last_contact_ms: self
                .last_contact
                .map(|t| ms(now.saturating_duration_since(t))),
            version: self.version,
            eligible: self.ineligible.is_none(),
            reason: self.ineligible.as_deref().map(Cow::Borrowed),
            priority: self.priority,
            suspect: match &self.role {
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
