//! The published snapshot of this replica: written only by the daemon's owner task, read by
//! everyone else through a `tokio::sync::watch` receiver. Rendered to JSON at read time so
//! ages (`last_contact_ms`, the suspect deadline) are current.

use std::time::SystemTime;

use serde::Serialize;
use serde_json::Value;
use tokio::time::Instant;

use crate::election::MemberInfo;
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

    /// The `/role` document, borrowing from this snapshot (serialise it while borrowed).
    pub fn doc(&self, now: Instant) -> RoleDoc<'_> {
        let ms = |d: std::time::Duration| d.as_millis() as u64;
        RoleDoc {
            role: self.kind(),
            id: &self.id,
            election: &self.election,
            leader: self.role.leader().map(|l| LeaderDoc {
                id: &l.id,
                key: &l.key,
                create_revision: l.create_revision,
                member: l.member.as_ref(),
            }),
            fencing_token: self.fencing_token(),
            since: Rfc3339(self.since),
            etcd_reachable: self.reachable,
            last_contact_ms: self
                .last_contact
                .map(|t| ms(now.saturating_duration_since(t))),
            version: self.version,
            suspect: match &self.role {
                Role::Suspect {
                    deadline, since, ..
                } => Some(SuspectDoc {
                    contact_lost_ms: ms(now.saturating_duration_since(*since)),
                    deadline_in_ms: ms(deadline.saturating_duration_since(now)),
                }),
                _ => None,
            },
            child: self.child.as_ref(),
        }
    }

    /// The `/role` document as a JSON value.
    pub fn to_json(&self, now: Instant) -> Value {
        serde_json::to_value(self.doc(now)).expect("invariant: RoleDoc serialises")
    }
}

/// The `/role` document. Serialised straight from the snapshot: `/role` is the hot path.
#[derive(Debug, Serialize)]
pub struct RoleDoc<'a> {
    pub role: RoleKind,
    pub id: &'a str,
    pub election: &'a str,
    pub leader: Option<LeaderDoc<'a>>,
    pub fencing_token: Option<i64>,
    pub since: Rfc3339,
    pub etcd_reachable: bool,
    pub last_contact_ms: Option<u64>,
    pub version: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub suspect: Option<SuspectDoc>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub child: Option<&'a ChildStatus>,
}

#[derive(Debug, Serialize)]
pub struct LeaderDoc<'a> {
    pub id: &'a str,
    pub key: &'a str,
    pub create_revision: i64,
    pub member: Option<&'a MemberInfo>,
}

#[derive(Debug, Serialize)]
pub struct SuspectDoc {
    pub contact_lost_ms: u64,
    pub deadline_in_ms: u64,
}

/// A wall-clock time written as RFC 3339 with milliseconds, without an intermediate String.
#[derive(Debug, Clone, Copy)]
pub struct Rfc3339(pub SystemTime);

impl Serialize for Rfc3339 {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&humantime::format_rfc3339_millis(self.0))
    }
}
