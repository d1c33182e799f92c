//! `electd status`, `electd resign|pause|resume`: the operator's client side, talking to the
//! local daemon's socket or straight to etcd.

use std::path::Path;

use serde_json::{Value, json};

use crate::api::client;
use crate::cli::{StatusArgs, Sub};
use crate::config::Config;
use crate::election::{etcd, keys};
use crate::exit;

#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    #[error(transparent)]
    Client(#[from] client::ClientError),
    #[error(transparent)]
    Etcd(#[from] etcd::EtcdError),
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

/// Run a subcommand of `electd`; returns its exit code.
pub fn run(sub: Sub) -> i32 {
    match sub {
        Sub::Status(a) => status(&a),
        Sub::Resign(a) => action(&a.socket, "resign"),
        Sub::Pause(a) => action(&a.socket, "pause"),
        Sub::Resume(a) => action(&a.socket, "resume"),
    }
}

fn fail(e: CtlError) -> i32 {
    eprintln!("electd: {e}");
    e.exit_code()
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
            println!("{doc:#}");
            0
        }
        Ok(doc) => {
            print!("{}", render_status(&doc));
            0
        }
        Err(e) => fail(e),
    }
}

/// Send a control action; exit 0 when it took effect, 1 when it changed nothing.
fn action(socket: &Path, name: &str) -> i32 {
    match control(socket, name) {
        Ok(doc) => {
            println!("{doc}");
            let acted = ["resigned", "paused", "resumed"]
                .iter()
                .any(|k| doc[*k] == true);
            if acted { 0 } else { exit::REFUSED }
        }
        Err(e) => fail(e),
    }
}

fn get_json(socket: &Path, uri: &str) -> Result<Value, CtlError> {
    let (code, body) = client::request(socket, "GET", uri)?;
    if code != 200 {
        return Err(CtlError::Refused { code, body });
    }
    serde_json::from_str(&body).map_err(|e| CtlError::Refused {
        code,
        body: format!("not JSON ({e}): {body}"),
    })
}

/// The status document from the local daemon: `{"this": /role, "members": /members}`.
pub fn status_from_socket(socket: &Path) -> Result<Value, CtlError> {
    let this = get_json(socket, "/role")?;
    let members = get_json(socket, "/members").unwrap_or_else(|e| json!({"error": e.to_string()}));
    Ok(json!({"this": this, "members": members}))
}

/// The status document read straight from etcd (no "this replica").
pub async fn status_from_etcd(config: &Config) -> Result<Value, CtlError> {
    let client = etcd::connect(config).await?;
    let t = config
        .timing()
        .request_timeout
        .max(std::time::Duration::from_secs(2));
    let (revision, list) =
        etcd::candidates(&client, &keys::election_prefix(&config.election), t).await?;
    Ok(json!({
        "this": null,
        "members": crate::api::members_doc(&config.election, revision, &list),
        "etcd_reachable": true,
    }))
}

/// The human-readable table for a status document.
pub fn render_status(doc: &Value) -> String {
    let this = &doc["this"];
    let members = &doc["members"];
    let list = members["members"].as_array().cloned().unwrap_or_default();
    let election = this["election"]
        .as_str()
        .or(members["election"].as_str())
        .unwrap_or("?");
    let mut out = String::new();
    out.push_str(&format!("election:      {election}\n"));
    let leader = list.iter().find(|m| m["leader"] == true);
    match leader {
        Some(l) => out.push_str(&format!(
            "leader:        {} (fencing token {})\n",
            l["id"].as_str().unwrap_or("?"),
            l["create_revision"]
        )),
        None => match this["leader"]["id"].as_str() {
            Some(id) => out.push_str(&format!(
                "leader:        {id} (fencing token {}, as last seen)\n",
                this["fencing_token"]
            )),
            None => out.push_str("leader:        none\n"),
        },
    }
    if this.is_object() {
        let reach = if this["etcd_reachable"] == true {
            format!(
                "reachable (last contact {} ms ago)",
                this["last_contact_ms"]
            )
        } else {
            format!(
                "UNREACHABLE (last contact {} ms ago)",
                this["last_contact_ms"]
            )
        };
        out.push_str(&format!("etcd:          {reach}\n"));
        out.push_str(&format!(
            "this replica:  {} is {} since {}\n",
            this["id"].as_str().unwrap_or("?"),
            this["role"].as_str().unwrap_or("?"),
            this["since"].as_str().unwrap_or("?")
        ));
        if let Some(child) = this.get("child") {
            let state = if child["running"] == true {
                format!("running (pid {})", child["pid"])
            } else {
                "not running".to_string()
            };
            out.push_str(&format!(
                "command:       {state}, {} restarts, last exit {}\n",
                child["restarts"], child["last_exit"]["code"]
            ));
        }
    } else {
        out.push_str(&format!(
            "etcd:          {}\n",
            if doc["etcd_reachable"] == true {
                "reachable"
            } else {
                "unknown"
            }
        ));
    }
    if let Some(err) = members["error"].as_str() {
        out.push_str(&format!("members:       unavailable: {err}\n"));
        return out;
    }
    let this_id = this["id"].as_str();
    let rows: Vec<[String; 6]> = list
        .iter()
        .map(|m| {
            let id = m["id"].as_str().unwrap_or("?").to_string();
            let role = if m["leader"] == true {
                "leader"
            } else {
                "follower"
            };
            let mark = if Some(id.as_str()) == this_id {
                "*"
            } else {
                ""
            };
            [
                format!("{}{mark}", m["position"]),
                id,
                role.to_string(),
                m["create_revision"].to_string(),
                m["lease"].as_str().unwrap_or("").to_string(),
                m["member"]["http"].as_str().unwrap_or("-").to_string(),
            ]
        })
        .collect();
    let header = ["#", "ID", "ROLE", "CREATE REV", "LEASE", "HTTP"];
    let mut widths = header.map(str::len);
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.len());
        }
    }
    out.push('\n');
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
    out.push_str(&line(&header.map(String::from)));
    for r in &rows {
        out.push_str(&line(r));
    }
    out
}

/// POST a control action to the local daemon; returns the answer document.
pub fn control(socket: &Path, action: &str) -> Result<Value, CtlError> {
    let (code, body) = client::request(socket, "POST", &format!("/{action}"))?;
    if code != 200 {
        return Err(CtlError::Refused { code, body });
    }
    Ok(serde_json::from_str(&body).unwrap_or(Value::String(body)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_table_layout() {
        let doc = json!({
            "this": {
                "role": "follower", "id": "r2", "election": "svc",
                "leader": {"id": "r1"}, "fencing_token": 7,
                "since": "2026-11-22T05:00:00.000Z", "etcd_reachable": true,
                "last_contact_ms": 120, "version": 3
            },
            "members": {"election": "svc", "revision": 9, "members": [
                {"position": 1, "id": "r1", "create_revision": 7, "lease": "1a", "leader": true,
                 "member": {"http": "127.0.0.1:4041"}},
                {"position": 2, "id": "r2", "create_revision": 8, "lease": "1b", "leader": false,
                 "member": {"http": "127.0.0.1:4042"}},
                {"position": 3, "id": "replica-three", "create_revision": 9, "lease": "1c",
                 "leader": false, "member": null}
            ]}
        });
        let expected = "\
election:      svc
leader:        r1 (fencing token 7)
etcd:          reachable (last contact 120 ms ago)
this replica:  r2 is follower since 2026-11-22T05:00:00.000Z

#   ID             ROLE      CREATE REV  LEASE  HTTP
1   r1             leader    7           1a     127.0.0.1:4041
2*  r2             follower  8           1b     127.0.0.1:4042
3   replica-three  follower  9           1c     -
";
        assert_eq!(render_status(&doc), expected);
    }
}
