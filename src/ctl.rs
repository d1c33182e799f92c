//! `electd status`, `electd resign|pause|resume`: the operator's client side, talking to the
//! local daemon's socket or straight to etcd. Every answer is read into the typed documents of
//! [`crate::api::doc`].

use std::io::Write;
use std::path::Path;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::api::client;
use crate::api::doc::{ControlReply, ErrorDoc, MembersDoc, RoleDoc};
use crate::cli::{StatusArgs, Sub};
use crate::config::Config;
use crate::election::etcd::{EtcdBackend, EtcdError};
use crate::exit;

#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    #[error(transparent)]
    Client(#[from] client::ClientError),
    #[error(transparent)]
    Etcd(#[from] EtcdError),
    #[error("electd answered {code}: {body}")]
    Refused { code: u16, body: String },
}

impl CtlError {
    /// 1 when electd answered but refused; 69 when electd or etcd could not be reached.
    pub fn exit_code(&self) -> i32 {
        match self {
            CtlError::Refused { .. } => exit::REFUSED,
            _ => exit::UNAVAILABLE,
        }
    }
}

/// What `electd status` shows: this replica (when asked over its socket) and every member.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusDoc {
    pub this: Option<RoleDoc<'static>>,
    pub members: Members,
    /// Set when read straight from etcd (there is no "this replica" then).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etcd_reachable: Option<bool>,
}

/// The members, or why they could not be read.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Members {
    List(MembersDoc),
    Error(ErrorDoc),
}

/// Run a subcommand of `electd`; returns its exit code.
pub fn run(sub: Sub) -> i32 {
    match sub {
        Sub::Status(a) => status(&a),
        Sub::Resign(a) => match &a.to {
            Some(to) => switchover(&a.socket.socket, to),
            None => action(&a.socket.socket, "resign"),
        },
        Sub::Pause(a) => action(&a.socket, "pause"),
        Sub::Resume(a) => action(&a.socket, "resume"),
    }
}

fn fail(e: CtlError) -> i32 {
    eprintln!("electd: {e}");
    e.exit_code()
}

/// Print `text` to stdout; a closed pipe (`electd status | head`) is not an error.
fn print(text: &str) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes()).and_then(|_| out.flush());
}

fn status(a: &StatusArgs) -> i32 {
    let doc = match &a.socket {
        Some(path) => status_from_socket(path),
        None => {
            let config = match a
                .config
                .layers(a.flags.settings.clone())
                .and_then(|l| l.resolve(false))
            {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("electd: configuration error: {e}");
                    return exit::CONFIG;
                }
            };
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("invariant: a current-thread runtime can be built");
            rt.block_on(status_from_etcd(&config))
        }
    };
    match doc {
        Ok(doc) if a.json => {
            let text = serde_json::to_string_pretty(&doc).expect("invariant: StatusDoc serialises");
            print(&format!("{text}\n"));
            0
        }
        Ok(doc) => {
            print(&render_status(&doc));
            0
        }
        Err(e) => fail(e),
    }
}

/// Send a control action; exit 0 when it took effect, 1 when it changed nothing.
fn action(socket: &Path, name: &str) -> i32 {
    match control(socket, name) {
        Ok(reply) => {
            let text = serde_json::to_string(&reply).expect("invariant: ControlReply serialises");
            print(&format!("{text}\n"));
            if reply.acted() { 0 } else { exit::REFUSED }
        }
        Err(e) => fail(e),
    }
}

/// `resign --to ID`: ask the leader to hand leadership to ID, then wait until the local electd
/// sees ID lead. Exit 0 once it does; 1 when refused (ID is not an eligible candidate, this
/// replica does not lead) or when ID does not take over within the bound electd gives.
fn switchover(socket: &Path, to: &str) -> i32 {
    let reply: ControlReply = match get(socket, "POST", &format!("/resign?to={}", encode(to))) {
        Ok(r) => r,
        Err(e) => return fail(e),
    };
    if !reply.acted() {
        eprintln!(
            "electd: leadership stays where it is: {}",
            reply.reason.as_deref().unwrap_or("refused")
        );
        return exit::REFUSED;
    }
    let within = std::time::Duration::from_millis(reply.within_ms.unwrap_or(10_000));
    let until = std::time::Instant::now() + within;
    let mut last = None;
    while std::time::Instant::now() < until {
        if let Ok(doc) = get::<RoleDoc<'static>>(socket, "GET", "/role?claim=false") {
            if let Some(l) = &doc.leader
                && l.id == to
            {
                print(&format!(
                    "leadership handed to {to} (fencing token {})\n",
                    l.create_revision
                ));
                return 0;
            }
            last = doc.leader.map(|l| l.id.to_string());
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    eprintln!(
        "electd: {to} did not take over within {}; {} leads now (the queue's order decides again)",
        humantime::format_duration(within),
        last.as_deref().unwrap_or("nobody")
    );
    exit::REFUSED
}

/// Percent-encode a query value.
fn encode(v: &str) -> String {
    v.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn get<T: DeserializeOwned>(socket: &Path, method: &str, uri: &str) -> Result<T, CtlError> {
    let (code, body) = client::request(socket, method, uri)?;
    if code != 200 {
        return Err(CtlError::Refused { code, body });
    }
    serde_json::from_str(&body).map_err(|e| CtlError::Refused {
        code,
        body: format!("unexpected answer ({e}): {body}"),
    })
}

/// The status document from the local daemon: this replica's `/role` and `/members`.
pub fn status_from_socket(socket: &Path) -> Result<StatusDoc, CtlError> {
    let this: RoleDoc<'static> = get(socket, "GET", "/role?claim=false")?;
    let members = match get::<MembersDoc>(socket, "GET", "/members") {
        Ok(m) => Members::List(m),
        Err(e) => Members::Error(ErrorDoc {
            error: e.to_string(),
        }),
    };
    Ok(StatusDoc {
        this: Some(this),
        members,
        etcd_reachable: None,
    })
}

/// The status document read straight from etcd (no "this replica").
pub async fn status_from_etcd(config: &Config) -> Result<StatusDoc, CtlError> {
    let backend = EtcdBackend::connect(config).await?;
    let t = config
        .timing()
        .request_timeout
        .max(std::time::Duration::from_secs(2));
    let list = backend.members(&config.election, t).await?;
    Ok(StatusDoc {
        this: None,
        members: Members::List(MembersDoc::new(&config.election, &list)),
        etcd_reachable: Some(true),
    })
}

/// POST a control action to the local daemon; returns its answer.
pub fn control(socket: &Path, action: &str) -> Result<ControlReply, CtlError> {
    get(socket, "POST", &format!("/{action}"))
}

/// The human-readable table for a status document.
pub fn render_status(doc: &StatusDoc) -> String {
    let this = doc.this.as_ref();
    let list = match &doc.members {
        Members::List(m) => m.members.as_slice(),
        Members::Error(_) => &[],
    };
    let election = match (this, &doc.members) {
        (Some(t), _) => t.election.as_ref(),
        (None, Members::List(m)) => m.election.as_str(),
        (None, Members::Error(_)) => "?",
    };
    let mut out = String::new();
    out.push_str(&format!("election:      {election}\n"));
    match (
        list.iter().find(|m| m.leader),
        this.and_then(|t| t.leader.as_ref()),
    ) {
        (Some(l), _) => out.push_str(&format!(
            "leader:        {} (fencing token {})\n",
            l.id, l.create_revision
        )),
        (None, Some(l)) => out.push_str(&format!(
            "leader:        {} (fencing token {}, as last seen)\n",
            l.id, l.create_revision
        )),
        (None, None) => out.push_str("leader:        none\n"),
    }
    match this {
        Some(this) => {
            let ago = this
                .last_contact_ms
                .map_or("never".to_string(), |ms| format!("{ms} ms ago"));
            let reach = if this.etcd_reachable {
                format!("reachable (last contact {ago})")
            } else {
                format!("UNREACHABLE (last contact {ago})")
            };
            out.push_str(&format!("etcd:          {reach}\n"));
            out.push_str(&format!(
                "this replica:  {} is {} since {}\n",
                this.id, this.role, this.since
            ));
            if let Some(why) = &this.reason {
                out.push_str(&format!("not eligible:  {why}\n"));
            }
            if let Some(child) = &this.child {
                let state = match (child.running, child.pid) {
                    (true, Some(pid)) => format!("running (pid {pid})"),
                    _ => "not running".to_string(),
                };
                let last = child
                    .last_exit
                    .map_or("none".to_string(), |e| e.code.to_string());
                out.push_str(&format!(
                    "command:       {state}, {} restarts, last exit {last}\n",
                    child.restarts
                ));
            }
        }
        None => out.push_str(&format!(
            "etcd:          {}\n",
            if doc.etcd_reachable == Some(true) {
                "reachable"
            } else {
                "unknown"
            }
        )),
    }
    if let Members::Error(e) = &doc.members {
        out.push_str(&format!("members:       unavailable: {}\n", e.error));
        return out;
    }
    // This replica is the row of its own key (ids may repeat by mistake).
    let this_key = this.and_then(|t| t.key.as_deref());
    let rows: Vec<[String; 8]> = list.iter().map(|m| member_row(m, this_key)).collect();
    if let Members::List(m) = &doc.members {
        for f in &m.foreign {
            out.push_str(&format!("ignored key:   {} ({})\n", f.key, f.reason));
        }
    }
    out.push('\n');
    out.push_str(&table(
        &[
            "#",
            "ID",
            "ROLE",
            "CREATE REV",
            "PRIO",
            "LEASE",
            "HTTP",
            "ADVERTISE",
        ],
        &rows,
    ));
    out
}

/// One member's row of the status table; `*` marks this replica's own key.
fn member_row(m: &crate::api::doc::MemberDoc, this_key: Option<&str>) -> [String; 8] {
    let role = if m.leader { "leader" } else { "follower" };
    let mark = if Some(m.key.as_str()) == this_key {
        "*"
    } else {
        ""
    };
    let info = |f: fn(&crate::election::MemberInfo) -> Option<String>| {
        m.member.as_ref().and_then(f).unwrap_or_else(|| "-".into())
    };
    [
        format!("{}{mark}", m.position),
        m.id.clone(),
        role.to_string(),
        m.create_revision.to_string(),
        m.priority.to_string(),
        m.lease.clone(),
        info(|i| i.http.clone()),
        info(|i| i.advertise.clone()),
    ]
}

/// Columns padded to their widest cell, two spaces apart; the last column unpadded.
fn table<const N: usize>(header: &[&str; N], rows: &[[String; N]]) -> String {
    let mut widths = header.map(str::len);
    for r in rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.len());
        }
    }
    let line = |cells: &[String]| {
        let mut l = String::new();
        for (i, (c, w)) in cells.iter().zip(widths).enumerate() {
            if i + 1 == cells.len() {
                l.push_str(c);
            } else {
                l.push_str(&format!("{c:<w$}  "));
            }
        }
        l.trim_end().to_string() + "\n"
    };
    let mut out = line(&header.map(String::from));
    for r in rows {
        out.push_str(&line(r));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_table_layout() {
        let doc: StatusDoc = serde_json::from_value(serde_json::json!({
            "this": {
                "role": "follower", "id": "r2", "election": "svc", "key": "svc/1b",
                "leader": {"id": "r1", "key": "svc/1a", "create_revision": 7, "member": null},
                "fencing_token": 7,
                "since": "2026-11-22T05:00:00.000Z", "etcd_reachable": true,
                "last_contact_ms": 120, "version": 3, "eligible": true, "priority": 1
            },
            "members": {"election": "svc", "revision": 9, "members": [
                {"position": 1, "id": "r1", "key": "svc/1a", "create_revision": 7, "lease": "1a",
                 "leader": true, "priority": 10, "member": {"id": "r1", "http": "127.0.0.1:4041", "advertise": "10.0.0.1:5432"}},
                {"position": 2, "id": "r2", "key": "svc/1b", "create_revision": 8, "lease": "1b",
                 "leader": false, "priority": 1, "member": {"id": "r2", "http": "127.0.0.1:4042"}},
                {"position": 3, "id": "replica-three", "key": "svc/1c", "create_revision": 9,
                 "lease": "1c", "leader": false, "priority": 1, "member": null}
            ]}
        }))
        .unwrap();
        let expected = "\
election:      svc
leader:        r1 (fencing token 7)
etcd:          reachable (last contact 120 ms ago)
this replica:  r2 is follower since 2026-11-22T05:00:00.000Z

#   ID             ROLE      CREATE REV  PRIO  LEASE  HTTP            ADVERTISE
1   r1             leader    7           10    1a     127.0.0.1:4041  10.0.0.1:5432
2*  r2             follower  8           1     1b     127.0.0.1:4042  -
3   replica-three  follower  9           1     1c     -               -
";
        assert_eq!(render_status(&doc), expected);
    }
}
