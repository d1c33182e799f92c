//! Health-gated candidacy: a check of the app beside electd (`--health-cmd` or `--health-url`)
//! runs every interval on every replica; `fall` failures in a row make the replica unhealthy —
//! it leaves the election (a leader stops its command first) — and `rise` passes in a row make
//! it healthy again. A replica with a check starts unhealthy: it campaigns only once the check
//! has passed. The check is about this replica's app; the wrapped command, which runs only on
//! the leader, is watched by `--on-exit`.
//!
//! [`Health::step`] is the pure rise/fall counter (table-tested); [`spawn`] runs the probe and
//! reports changes to the owner task on a bounded channel.

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::time::{Instant, sleep_until, timeout};
use tracing::{debug, info, warn};

/// How a replica's health is checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheck {
    pub probe: Probe,
    pub interval: Duration,
    pub timeout: Duration,
    pub rise: u32,
    pub fall: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    /// `sh -c CMD`; exit 0 passes.
    Command(String),
    /// GET; a 2xx answer passes.
    Url(HttpUrl),
}

/// A plain `http://HOST:PORT/PATH` URL (the app beside electd).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpUrl {
    pub host: String,
    pub port: u16,
    pub path: String,
}

impl HttpUrl {
    pub fn parse(v: &str) -> Result<HttpUrl, String> {
        let expected = "expected a URL such as http://127.0.0.1:8080/healthz";
        let rest = match v.strip_prefix("http://") {
            Some(r) => r,
            None if v.starts_with("https://") => {
                return Err(format!(
                    "{expected} (https is not supported: the check talks to the app beside electd)"
                ));
            }
            None => return Err(format!("{expected} (scheme must be http)")),
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) => (
                h,
                p.parse::<u16>()
                    .ok()
                    .filter(|p| *p != 0)
                    .ok_or_else(|| format!("{expected} (bad port {p:?})"))?,
            ),
            None => (authority, 80),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty()
            || host.contains(char::is_whitespace)
            || path.contains(char::is_whitespace)
        {
            return Err(format!("{expected} (bad host or path)"));
        }
        Ok(HttpUrl {
            host: host.to_string(),
            port,
            path: path.to_string(),
        })
    }
}

/// One check's result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Pass,
    /// Why it failed, in a line.
    Fail(String),
}

/// A change of health.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Healthy,
    /// The reason of the last failure.
    Unhealthy(String),
}

/// The rise/fall counter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Health {
    pub healthy: bool,
    /// Passes (while unhealthy) or failures (while healthy) in a row.
    streak: u32,
    rise: u32,
    fall: u32,
    /// Why the replica is unhealthy.
    pub reason: String,
}

impl Health {
    /// Unhealthy until `rise` passes in a row.
    pub fn new(rise: u32, fall: u32) -> Health {
        Health {
            healthy: false,
            streak: 0,
            rise: rise.max(1),
            fall: fall.max(1),
            reason: "health check has not passed yet".into(),
        }
    }

    /// Count one outcome; the change it makes, if any.
    pub fn step(&self, outcome: &Outcome) -> (Health, Option<Change>) {
        let mut next = self.clone();
        let change = match (self.healthy, outcome) {
            (true, Outcome::Pass) => {
                next.streak = 0;
                None
            }
            (true, Outcome::Fail(why)) => {
                next.streak += 1;
                (next.streak >= self.fall).then(|| {
                    next.healthy = false;
                    next.streak = 0;
                    next.reason = format!("health check failing: {why}");
                    Change::Unhealthy(next.reason.clone())
                })
            }
            (false, Outcome::Pass) => {
                next.streak += 1;
                (next.streak >= self.rise).then(|| {
                    next.healthy = true;
                    next.streak = 0;
                    Change::Healthy
                })
            }
            (false, Outcome::Fail(why)) => {
                next.streak = 0;
                next.reason = format!("health check failing: {why}");
                None
            }
        };
        (next, change)
    }
}

/// Run `check` every interval until the receiver is dropped, sending each change of health
/// (and `on_check` hears every outcome, for metrics). The first check runs at once.
pub fn spawn(
    check: HealthCheck,
    env: Vec<(String, String)>,
    changes: mpsc::Sender<Change>,
    on_check: impl Fn(&Outcome) + Send + 'static,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut health = Health::new(check.rise, check.fall);
        let mut next = Instant::now();
        loop {
            sleep_until(next).await;
            next = Instant::now() + check.interval;
            let outcome = run(&check, &env).await;
            debug!(?outcome, "health check");
            on_check(&outcome);
            let (h, change) = health.step(&outcome);
            health = h;
            if let Some(change) = change {
                match &change {
                    Change::Healthy => info!("health check passing; this replica may lead"),
                    Change::Unhealthy(why) => {
                        warn!(reason = %why, "this replica is unhealthy; it leaves the election")
                    }
                }
                if changes.send(change).await.is_err() {
                    return;
                }
            }
        }
    })
}

/// Run the probe once, bounded by the check's timeout.
pub async fn run(check: &HealthCheck, env: &[(String, String)]) -> Outcome {
    match &check.probe {
        Probe::Command(cmd) => run_command(cmd, env, check.timeout).await,
        Probe::Url(url) => match timeout(check.timeout, get(url)).await {
            Ok(o) => o,
            Err(_) => Outcome::Fail(format!(
                "no answer from {}:{} within {}",
                url.host,
                url.port,
                humantime::format_duration(check.timeout)
            )),
        },
    }
}

/// `sh -c CMD` in its own process group, killed (the whole group) after `limit`.
async fn run_command(cmd: &str, env: &[(String, String)], limit: Duration) -> Outcome {
    let mut command = tokio::process::Command::new("sh");
    command
        .args(["-c", cmd])
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    crate::supervisor::die_with_electd(&mut command);
    let child = match command.spawn() {
        Ok(c) => c,
        Err(e) => return Outcome::Fail(format!("cannot run sh: {e}")),
    };
    let pid = child.id();
    if let Some(p) = pid {
        crate::supervisor::tree::own::register(p);
    }
    let pgid = pid.map(|p| nix::unistd::Pid::from_raw(p as i32));
    let result = timeout(limit, child.wait_with_output()).await;
    if let Some(p) = pid {
        crate::supervisor::tree::own::unregister(p);
    }
    match result {
        Ok(Ok(out)) if out.status.success() => Outcome::Pass,
        Ok(Ok(out)) => {
            let status = crate::supervisor::ExitInfo::from_status(out.status);
            let line = first_line(&out.stdout)
                .or_else(|| first_line(&out.stderr))
                .unwrap_or_default();
            Outcome::Fail(
                format!("exit {}: {line}", status.code)
                    .trim_end()
                    .trim_end_matches(':')
                    .to_string(),
            )
        }
        Ok(Err(e)) => Outcome::Fail(format!("waiting for the check failed: {e}")),
        Err(_) => {
            if let Some(pgid) = pgid {
                let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGKILL);
            }
            Outcome::Fail(format!(
                "timed out after {}",
                humantime::format_duration(limit)
            ))
        }
    }
}

/// The first non-empty line of a command's output, at most 200 characters.
fn first_line(bytes: &[u8]) -> Option<String> {
    String::from_utf8_lossy(bytes)
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .map(|l| l.chars().take(200).collect())
}

/// `GET path` with HTTP/1.0; 2xx passes.
async fn get(url: &HttpUrl) -> Outcome {
    let mut stream = match tokio::net::TcpStream::connect((url.host.as_str(), url.port)).await {
        Ok(s) => s,
        Err(e) => return Outcome::Fail(format!("{}:{}: {e}", url.host, url.port)),
    };
    let request = format!(
        "GET {} HTTP/1.0\r\nHost: {}\r\nUser-Agent: electd-health\r\n\r\n",
        url.path, url.host
    );
    if let Err(e) = stream.write_all(request.as_bytes()).await {
        return Outcome::Fail(format!("{}:{}: {e}", url.host, url.port));
    }
    let mut head = [0u8; 64];
    let mut n = 0;
    while n < 12 {
        match stream.read(&mut head[n..]).await {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) => return Outcome::Fail(format!("{}:{}: {e}", url.host, url.port)),
        }
    }
    let line = String::from_utf8_lossy(&head[..n]);
    match line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse::<u16>().ok())
    {
        Some(code) if (200..300).contains(&code) => Outcome::Pass,
        Some(code) => Outcome::Fail(format!("HTTP {code}")),
        None => Outcome::Fail("not an HTTP answer".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fail(why: &str) -> Outcome {
        Outcome::Fail(why.into())
    }

    /// Outcomes in a row and the change each makes (rise 2, fall 3).
    #[test]
    fn rise_fall_table() {
        use Outcome::Pass;
        let unhealthy = |why: &str| Some(Change::Unhealthy(format!("health check failing: {why}")));
        type Case = (&'static str, Vec<(Outcome, Option<Change>)>);
        let cases: Vec<Case> = vec![
            (
                "starts unhealthy and needs two passes in a row",
                vec![(Pass, None), (Pass, Some(Change::Healthy)), (Pass, None)],
            ),
            (
                "a failure before the second pass starts the count over",
                vec![
                    (Pass, None),
                    (fail("exit 1"), None),
                    (Pass, None),
                    (Pass, Some(Change::Healthy)),
                ],
            ),
            (
                "three failures in a row make it unhealthy, with the last reason",
                vec![
                    (Pass, None),
                    (Pass, Some(Change::Healthy)),
                    (fail("a"), None),
                    (fail("b"), None),
                    (fail("exit 1: down"), unhealthy("exit 1: down")),
                    (fail("c"), None),
                ],
            ),
            (
                "a pass between failures keeps it healthy",
                vec![
                    (Pass, None),
                    (Pass, Some(Change::Healthy)),
                    (fail("a"), None),
                    (fail("b"), None),
                    (Pass, None),
                    (fail("c"), None),
                    (fail("d"), None),
                    (fail("e"), unhealthy("e")),
                ],
            ),
        ];
        for (name, steps) in cases {
            let mut h = Health::new(2, 3);
            for (i, (outcome, want)) in steps.into_iter().enumerate() {
                let (next, got) = h.step(&outcome);
                assert_eq!(got, want, "{name}: step {i}");
                h = next;
            }
        }
    }

    #[test]
    fn urls_are_plain_http_with_host_port_and_path() {
        let u = HttpUrl::parse("http://127.0.0.1:8080/healthz?x=1").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.path.as_str()),
            ("127.0.0.1", 8080, "/healthz?x=1")
        );
        let u = HttpUrl::parse("http://app").unwrap();
        assert_eq!((u.port, u.path.as_str()), (80, "/"));
        assert!(
            HttpUrl::parse("https://app/")
                .unwrap_err()
                .contains("https is not supported")
        );
        assert!(HttpUrl::parse("app:80").unwrap_err().contains("scheme"));
        assert!(
            HttpUrl::parse("http://app:0/")
                .unwrap_err()
                .contains("bad port")
        );
    }

    #[tokio::test]
    async fn a_command_passes_fails_with_its_first_line_or_times_out() {
        let check = |cmd: &str, ms| HealthCheck {
            probe: Probe::Command(cmd.into()),
            interval: Duration::from_secs(1),
            timeout: Duration::from_millis(ms),
            rise: 1,
            fall: 1,
        };
        let env = vec![("ELECTD_ID".to_string(), "r1".to_string())];
        assert_eq!(
            run(&check("test \"$ELECTD_ID\" = r1", 2000), &env).await,
            Outcome::Pass
        );
        assert_eq!(
            run(
                &check("echo; echo 'db down'; echo more; exit 3", 2000),
                &env
            )
            .await,
            fail("exit 3: db down")
        );
        assert_eq!(run(&check("exit 1", 2000), &env).await, fail("exit 1"));
        let started = std::time::Instant::now();
        assert_eq!(
            run(&check("sleep 5", 200), &env).await,
            fail("timed out after 200ms")
        );
        assert!(started.elapsed() < Duration::from_secs(2));
    }
}
