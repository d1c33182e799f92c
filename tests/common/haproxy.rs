//! Debian's `haproxy` in front of replicas, configured from the shipped example
//! (`deploy/haproxy/haproxy.cfg`) with loopback addresses and ports swapped in; used by
//! tests/haproxy.rs and the routing benchmark. Killed on drop.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use super::{is_executable, on_path, spawn_tied};

/// One `server` line: its name, the app's address, the electd HTTP port HAProxy checks.
pub type Server = (String, String, u16);

/// Path of `haproxy`: `PATH`, else Debian's /usr/sbin/haproxy.
pub fn haproxy_path() -> Option<PathBuf> {
    on_path("haproxy").or_else(|| {
        let debian = PathBuf::from("/usr/sbin/haproxy");
        is_executable(&debian).then_some(debian)
    })
}

/// [`haproxy_path`]; panics (never skips) when missing, saying how to install it.
pub fn haproxy_binary() -> PathBuf {
    haproxy_path().unwrap_or_else(|| {
        panic!(
            "haproxy not found: the HAProxy test and the routing benchmark run Debian's haproxy \
             in front of the replicas; install it with `apt-get install -y haproxy` \
             (scripts/setup.sh does)"
        )
    })
}

/// The shipped configuration with loopback addresses: HAProxy listens on `bind`, and each
/// `server` line of the example becomes one replica's (app address, electd HTTP port), with
/// the example's check options unchanged.
pub fn haproxy_config(example: &str, bind: &str, servers: &[Server]) -> String {
    let mut out = String::new();
    let mut template: Option<Vec<String>> = None;
    for line in example.lines() {
        let t = line.trim_start();
        if t.starts_with("bind ") {
            out.push_str(&format!("    bind {bind}\n"));
        } else if t.starts_with("server ") {
            // server NAME ADDR OPTIONS...: keep OPTIONS, swap the port after `port`.
            template
                .get_or_insert_with(|| t.split_whitespace().skip(3).map(String::from).collect());
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    let options = template.expect("the example has server lines");
    assert!(
        options.iter().any(|o| o == "port"),
        "the example's server lines check electd's port: {options:?}"
    );
    for (name, app, port) in servers {
        let opts: Vec<String> = options
            .iter()
            .enumerate()
            .map(|(i, o)| {
                if i > 0 && options[i - 1] == "port" {
                    port.to_string()
                } else {
                    o.clone()
                }
            })
            .collect();
        out.push_str(&format!("    server {name} {app} {}\n", opts.join(" ")));
    }
    out
}

/// A running `haproxy -db` (one process, in the foreground) with its configuration and log in
/// `dir`.
pub struct Haproxy {
    child: Child,
    pub bind: String,
    pub log: PathBuf,
}

impl Haproxy {
    /// `deploy/haproxy/haproxy.cfg` for `servers`, listening on `bind`: written to `dir`,
    /// checked with `haproxy -c` (panics with its complaint), then started.
    pub fn from_example(dir: &Path, bind: &str, servers: &[Server]) -> Haproxy {
        let example = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/haproxy/haproxy.cfg"),
        )
        .expect("read deploy/haproxy/haproxy.cfg");
        let cfg = dir.join("haproxy.cfg");
        std::fs::write(&cfg, haproxy_config(&example, bind, servers)).expect("write haproxy.cfg");
        let check = Command::new(haproxy_binary())
            .args(["-c", "-f"])
            .arg(&cfg)
            .output()
            .expect("run haproxy -c");
        assert!(
            check.status.success(),
            "haproxy -c rejects the configuration: {}",
            String::from_utf8_lossy(&check.stderr)
        );
        let log = dir.join("haproxy.log");
        let out = std::fs::File::create(&log).expect("create haproxy.log");
        let mut cmd = Command::new(haproxy_binary());
        cmd.args(["-db", "-f"])
            .arg(&cfg)
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("clone log fd"))
            .stderr(out);
        Haproxy {
            child: spawn_tied(cmd).expect("start haproxy"),
            bind: bind.to_string(),
            log,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
