//! The app beside a sidecar electd that follows the app contract (docs/app-contract.md):
//! tests/apps/contract_app.py, on the reference client. It writes `start`/`tick`/`stop` records
//! to a ledger (the harness's format) and every budget it took to a claims file
//! (`claim ID TOKEN TAKEN_NS UNTIL_NS`, wall-clock nanoseconds).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use super::{Daemon, read_lines, spawn_tied};

/// The Python interpreter the app needs; panics (never skips) with how to install it.
pub fn python() -> &'static str {
    static PY: std::sync::OnceLock<&'static str> = std::sync::OnceLock::new();
    PY.get_or_init(|| {
        let ok = Command::new("python3")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success());
        assert!(
            ok,
            "python3 is needed to run the reference client: apt-get install -y python3"
        );
        "python3"
    })
}

/// How an app asks its electd.
#[derive(Debug, Clone, Copy, Default)]
pub struct AppMode {
    /// Keep the budget fresh from `/watch` (else long-poll `/role`).
    pub watch: bool,
    /// Over TCP (else the Unix socket).
    pub over_tcp: bool,
    /// Break the contract on purpose (the checkers' self-test): act on the last answer.
    pub naive: bool,
}

/// One running app; killed on drop.
pub struct ContractApp {
    child: Child,
}

impl ContractApp {
    /// Start app `id` beside `daemon`, writing `ledger` and `claims`, its stderr to `log`; it
    /// stops its work within `grace` seconds of the end of its budget.
    pub fn start(
        id: &str,
        daemon: &Daemon,
        (ledger, claims): (&Path, &Path),
        log: &Path,
        grace: f64,
        mode: AppMode,
    ) -> ContractApp {
        let app = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/apps/contract_app.py");
        let mut cmd = Command::new(python());
        cmd.arg(app)
            .arg(id)
            .arg(ledger)
            .arg(claims)
            .args(["--grace", &grace.to_string()]);
        if mode.over_tcp {
            cmd.args(["--url", &format!("http://{}", daemon.http)]);
        } else {
            cmd.arg("--socket").arg(&daemon.socket);
        }
        if mode.watch {
            cmd.arg("--watch");
        }
        if mode.naive {
            cmd.arg("--naive");
        }
        cmd.stdout(Stdio::null())
            .stderr(std::fs::File::create(log).expect("create the app's log"));
        ContractApp {
            child: spawn_tied(cmd).expect("start the contract app"),
        }
    }
}

impl Drop for ContractApp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A budget an app took: (id, token, taken at, until), wall-clock nanoseconds.
#[derive(Debug, Clone)]
pub struct ClaimRecord {
    pub id: String,
    pub token: i64,
    pub taken: u128,
    pub until: u128,
}

/// The claims file's records (a torn last line is ignored).
pub fn claims(path: &Path) -> Vec<ClaimRecord> {
    read_lines(path)
        .iter()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            if f.len() != 5 || f[0] != "claim" {
                return None;
            }
            Some(ClaimRecord {
                id: f[1].into(),
                token: f[2].parse().ok()?,
                taken: f[3].parse().ok()?,
                until: f[4].parse().ok()?,
            })
        })
        .collect()
}
