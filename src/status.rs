//! The published snapshot of this replica: written only by the daemon's owner task, read by
//! everyone else through a `tokio::sync::watch` receiver. Rendered to JSON at read time so
//! ages (`last_contact_ms`, the suspect deadline) are current.

use std::time::SystemTime;

use serde::Serialize;
use serde_json::{Value, json};
use tokio::time::Instant;

use crate::election::role::{Role, RoleKind};
use crate::supervisor::ExitInfo;

/// The wrapped command's state, when there is one.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ChildStatus {
    pub running: bool,
    pub pid: Option<u32>,
    pub restarts: u64,
    pub last_exit: Option<ExitInfo>,
}

#[derive(Debug, Clone)]
pub struct Status {
    pub id: String,
    pub election: String,
    pub role: Role,
    /// Wall-clock time of the last role change (display only).
    pub since: SystemTime,
    pub reachable: bool,
    pub last_contact: Option<Instant>,
    pub child: Option<ChildStatus>,
    /// Bumped on every published change.
    pub version: u64,
}

impl Status {
    pub fn new(id: &str, election: &str, has_child: bool) -> Status {
        Status {
            id: id.to_string(),
            election: election.to_string(),
            role: Role::Candidate,
            since: SystemTime::now(),
            reachable: false,
            last_contact: None,
            child: has_child.then(ChildStatus::default),
            version: 0,
        }
    }

    pub fn kind(&self) -> RoleKind {
        self.role.kind()
    }

    /// The fencing token of the leader this replica knows of.
    pub fn fencing_token(&self) -> Option<i64> {
        self.role.leader().map(|l| l.create_revision)
    }

    /// The `/role` document.
    pub fn to_json(&self, now: Instant) -> Value {
        let leader = self.role.leader().map(|l| {
            json!({
                "id": l.id,
                "key": l.key,
                "create_revision": l.create_revision,
                "member": l.member,
            })
        });
        let mut doc = json!({
            "role": self.kind(),
            "id": self.id,
            "election": self.election,
            "leader": leader,
            "fencing_token": self.fencing_token(),
            "since": humantime::format_rfc3339_millis(self.since).to_string(),
            "etcd_reachable": self.reachable,
            "last_contact_ms": self.last_contact.map(|t| now.saturating_duration_since(t).as_millis() as u64),
            "version": self.version,
        });
        if let Role::Suspect {
            deadline, since, ..
        } = &self.role
        {
            doc["suspect"] = json!({
                "contact_lost_ms": now.saturating_duration_since(*since).as_millis() as u64,
                "deadline_in_ms": deadline.saturating_duration_since(now).as_millis() as u64,
            });
        }
        if let Some(child) = &self.child {
            doc["child"] = serde_json::to_value(child).expect("invariant: ChildStatus serialises");
        }
        doc
    }
}
