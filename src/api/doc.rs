//! The documents that cross a process boundary, as types both sides (de)serialise: the server
//! renders them, `electd status|resign|pause|resume` and `elect-run --socket` read them.
//! Strings are `Cow`: the server serialises straight from its snapshot (`/role` is the hot
//! path) and clients own what they read (`RoleDoc<'static>`).

use std::borrow::Cow;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::election::role::RoleKind;
use crate::election::{Candidate, LeaderInfo, MemberInfo, MemberList};
use crate::supervisor::ExitInfo;

/// `GET /role` (also each `/watch` event and `/leader`'s body).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RoleDoc<'a> {
    pub role: RoleKind,
    pub id: Cow<'a, str>,
    pub election: Cow<'a, str>,
    /// This replica's own candidate key, while it is in the queue.
    #[serde(default)]
    pub key: Option<Cow<'a, str>>,
    pub leader: Option<LeaderDoc<'a>>,
    /// The current leader's create revision (null while no leader is known).
    pub fencing_token: Option<i64>,
    /// While this replica leads (`leader`, `suspect`): how many milliseconds from when this
    /// answer was built it may act as leader without a fresh answer — until the leader's deadline
    /// (last keepalive sent + TTL − safety margin − stop grace). Counted from when the request was
    /// *sent*, on the app's own monotonic clock, it ends before the lease can expire at etcd with
    /// the stop grace to spare (docs/app-contract.md). Null on every other role.
    #[serde(default)]
    pub valid_ms: Option<u64>,
    /// On `/watch` only, beside `valid_ms`: the leader's deadline in nanoseconds of the host's
    /// `CLOCK_MONOTONIC`. An app on the same host (a sidecar's) takes its budget from this, so an
    /// event that waited in the socket (the app was frozen, say) is not counted from when it was
    /// read; `valid_ms` alone cannot tell how old a pushed event is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline_monotonic_ns: Option<u64>,
    /// When the role last changed.
    pub since: Rfc3339,
    pub etcd_reachable: bool,
    pub last_contact_ms: Option<u64>,
    /// Bumped on every change a watcher acts on (long polls wait for it).
    pub version: u64,
    /// Whether this replica may lead (campaigns); if not, `reason` says why.
    pub eligible: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<Cow<'a, str>>,
    /// Among eligible candidates the highest leads; 0 only observes.
    pub priority: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suspect: Option<SuspectDoc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub child: Option<Cow<'a, ChildStatus>>,
}

/// The wrapped command's state, when there is one.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ChildStatus {
    pub running: bool,
    pub pid: Option<u32>,
    pub restarts: u64,
    pub last_exit: Option<ExitInfo>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LeaderDoc<'a> {
    pub id: Cow<'a, str>,
    pub key: Cow<'a, str>,
    pub create_revision: i64,
    pub member: Option<Cow<'a, MemberInfo>>,
}

impl<'a> LeaderDoc<'a> {
    pub fn of(l: &'a LeaderInfo) -> LeaderDoc<'a> {
        LeaderDoc {
            id: Cow::Borrowed(&l.id),
            key: Cow::Borrowed(&l.key),
            create_revision: l.create_revision,
            member: l.member.as_ref().map(Cow::Borrowed),
        }
    }

    pub fn to_info(&self) -> LeaderInfo {
        LeaderInfo {
            id: self.id.to_string(),
            key: self.key.to_string(),
            create_revision: self.create_revision,
            member: self.member.as_ref().map(|m| m.as_ref().clone()),
        }
    }
}

/// A `lease` event of `GET /watch`: a leader's keepalive succeeded and its budget was renewed
/// (the role, and so the version, did not change).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseDoc {
    /// As in `/role`: milliseconds from when the event was built until the leader's deadline.
    pub valid_ms: u64,
    /// As in `/watch`'s role events: the deadline on the host's `CLOCK_MONOTONIC`.
    pub deadline_monotonic_ns: u64,
    pub fencing_token: i64,
    /// The version of the `/role` document this renews.
    pub version: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SuspectDoc {
    pub contact_lost_ms: u64,
    pub deadline_in_ms: u64,
}

/// A wall-clock time written as RFC 3339 with milliseconds, without an intermediate String.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rfc3339(pub SystemTime);

impl Serialize for Rfc3339 {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&humantime::format_rfc3339_millis(self.0))
    }
}

impl<'de> Deserialize<'de> for Rfc3339 {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = Cow::<str>::deserialize(d)?;
        humantime::parse_rfc3339(&s)
            .map(Rfc3339)
            .map_err(serde::de::Error::custom)
    }
}

impl std::fmt::Display for Rfc3339 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", humantime::format_rfc3339_millis(self.0))
    }
}

/// `GET /members`: every candidate in queue order; the first one leads.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MembersDoc {
    pub election: String,
    pub revision: i64,
    pub members: Vec<MemberDoc>,
    /// Keys under the election's prefix that are not candidates, and why they are ignored.
    #[serde(default)]
    pub foreign: Vec<ForeignDoc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ForeignDoc {
    pub key: String,
    pub reason: String,
    /// The lease id the key is bound to, in hex (0: none).
    pub lease: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MemberDoc {
    /// 1-based place in the queue.
    pub position: usize,
    pub id: String,
    pub key: String,
    pub create_revision: i64,
    /// The lease id in hex, as in the key.
    pub lease: String,
    pub leader: bool,
    /// The candidate's priority (1 for candidates that do not say, e.g. `etcdctl elect`).
    pub priority: u32,
    pub member: Option<MemberInfo>,
}

impl MembersDoc {
    pub fn new(election: &str, list: &MemberList) -> MembersDoc {
        MembersDoc {
            election: election.to_string(),
            revision: list.revision,
            members: list
                .candidates
                .iter()
                .enumerate()
                .map(|(i, c)| MemberDoc::new(i, c))
                .collect(),
            foreign: list
                .foreign
                .iter()
                .map(|(c, why)| ForeignDoc {
                    key: c.key.clone(),
                    reason: why.as_str().to_string(),
                    lease: format!("{:x}", c.lease),
                })
                .collect(),
        }
    }
}

impl MemberDoc {
    fn new(i: usize, c: &Candidate) -> MemberDoc {
        let info = LeaderInfo::from_candidate(c);
        MemberDoc {
            position: i + 1,
            id: info.id,
            key: c.key.clone(),
            create_revision: c.create_revision,
            lease: format!("{:x}", c.lease),
            leader: i == 0,
            priority: crate::election::candidacy::priority(c),
            member: info.member,
        }
    }
}

/// The answer to a control action (`POST /resign`, `/pause`, `/resume`): whether it acted
/// (under the action's own name), and the role before, or why nothing changed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ControlReply {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resigned: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paused: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resumed: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_role: Option<RoleKind>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<RoleKind>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// A switchover: the candidate leadership goes to...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
    /// ...within this long, or the queue's order decides again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub within_ms: Option<u64>,
}

impl ControlReply {
    /// Whether the action took effect.
    pub fn acted(&self) -> bool {
        [self.resigned, self.paused, self.resumed].contains(&Some(true))
    }
}

/// `GET /ready`: whether this replica can route clients to the leader (200) or not (503).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadyDoc {
    pub ready: bool,
    /// Where clients are routed: the leader's advertised address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leader: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fencing_token: Option<i64>,
    /// Why not, when not ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// An error answer: `{"error": "..."}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorDoc {
    pub error: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn role_doc_round_trips_and_keeps_its_wire_names() {
        let member = MemberInfo::new("r1", Some("127.0.0.1:4040".into()));
        let info = LeaderInfo {
            id: "r1".into(),
            key: "svc/1a".into(),
            create_revision: 7,
            member: Some(member),
        };
        let child = ChildStatus::default();
        let doc = RoleDoc {
            role: RoleKind::Suspect,
            id: "r1".into(),
            election: "svc".into(),
            key: Some("svc/1a".into()),
            leader: Some(LeaderDoc::of(&info)),
            fencing_token: Some(7),
            valid_ms: Some(850),
            deadline_monotonic_ns: None,
            since: Rfc3339(SystemTime::UNIX_EPOCH + std::time::Duration::from_millis(1_500)),
            etcd_reachable: false,
            last_contact_ms: Some(120),
            version: 3,
            eligible: false,
            reason: Some("health check failing: exit 1".into()),
            priority: 1,
            suspect: Some(SuspectDoc {
                contact_lost_ms: 10,
                deadline_in_ms: 900,
            }),
            child: Some(Cow::Borrowed(&child)),
        };
        let text = serde_json::to_string(&doc).unwrap();
        assert!(
            text.contains(r#""role":"suspect""#)
                && text.contains(r#""since":"1970-01-01T00:00:01.500Z""#)
                && text.contains(r#""deadline_in_ms":900"#)
                && text.contains(r#""valid_ms":850"#),
            "{text}"
        );
        let back: RoleDoc<'static> = serde_json::from_str(&text).unwrap();
        assert_eq!(back, doc);
        assert!(back.role.leads());
    }

    #[test]
    fn control_reply_says_whether_it_acted() {
        let r: ControlReply = serde_json::from_str(
            r#"{"resigned":false,"reason":"not the leader","role":"follower"}"#,
        )
        .unwrap();
        assert!(!r.acted());
        assert_eq!(r.role, Some(RoleKind::Follower));
        let r = ControlReply {
            paused: Some(true),
            previous_role: Some(RoleKind::Leader),
            ..ControlReply::default()
        };
        assert_eq!(
            serde_json::to_string(&r).unwrap(),
            r#"{"paused":true,"previous_role":"leader"}"#
        );
        assert!(r.acted());
    }
}
