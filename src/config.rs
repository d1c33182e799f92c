//! Configuration: a TOML file, `ELECTD_*` environment variables and command-line flags merged
//! into one validated [`Config`] (flags win over the environment, which wins over the file).
//!
//! Invariants of a `Config` that left [`Settings::resolve`]:
//! - the TTL is a whole number of seconds, at least 2 s (etcd's minimum);
//! - with a wrapped command, stop grace + keepalive interval + safety margin fit inside the TTL,
//!   so a leader that loses etcd can have its child dead before its lease can expire;
//! - every endpoint is an `http://` or `https://` URL with a host and a port.
//!
//! Every rejected value is reported with where it came from (`--ttl`, `ELECTD_TTL`, or
//! `ttl in electd.toml`) and what would be accepted. Durations are written `5s`, `500ms`, `1m`.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// Exit code for a configuration error (sysexits `EX_CONFIG`).
pub const EXIT_CONFIG: i32 = 78;
/// Exit code for a command-line usage error (sysexits `EX_USAGE`).
pub const EXIT_USAGE: i32 = 64;

/// Etcd's smallest lease TTL.
pub const MIN_TTL: Duration = Duration::from_secs(2);
/// Bounds of `read_header_timeout`.
pub const MIN_HEADER_TIMEOUT: Duration = Duration::from_millis(100);
pub const MAX_HEADER_TIMEOUT: Duration = Duration::from_secs(600);

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("invalid {field} {value:?} in {origin}: {expected}")]
    Invalid {
        field: &'static str,
        value: String,
        origin: Origin,
        expected: String,
    },
    #[error("missing {field}: set {flag}, {env} or `{field}` in the config file")]
    Missing {
        field: &'static str,
        flag: &'static str,
        env: &'static str,
    },
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{0}")]
    Inconsistent(String),
}

/// Where a setting came from, for error messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    Flag(&'static str),
    Env(&'static str),
    File(PathBuf),
    Default,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Flag(flag) => write!(f, "flag {flag}"),
            Origin::Env(var) => write!(f, "environment variable {var}"),
            Origin::File(path) => write!(f, "{}", path.display()),
            Origin::Default => write!(f, "the built-in default"),
        }
    }
}

/// What to do when the wrapped command exits on its own while this replica leads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OnExit {
    /// Restart with exponential backoff; resign after too many quick failures.
    Restart,
    /// Give up leadership and rejoin at the back of the queue.
    Resign,
    /// Exit electd with the command's exit code.
    Exit,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// Settings as given, before validation: one optional string per field. Flags, environment and
/// file each produce one of these; [`Settings::resolve`] merges and validates them.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub endpoints: Option<Endpoints>,
    pub election: Option<String>,
    pub id: Option<String>,
    pub ttl: Option<String>,
    pub http: Option<String>,
    pub socket: Option<String>,
    pub socket_mode: Option<String>,
    pub socket_group: Option<String>,
    pub read_header_timeout: Option<String>,
    pub control_uids: Option<Endpoints>,
    pub control_gids: Option<Endpoints>,
    pub log_level: Option<String>,
    pub log_format: Option<String>,
    pub stop_signal: Option<String>,
    pub stop_grace: Option<String>,
    pub on_exit: Option<String>,
    pub etcd_ca: Option<String>,
    pub etcd_cert: Option<String>,
    pub etcd_key: Option<String>,
    pub etcd_user: Option<String>,
    pub etcd_password_file: Option<String>,
}

/// Lists (endpoints, uids, gids) are a comma-separated string on the command line and in the
/// environment, and either form in TOML.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Endpoints {
    List(Vec<String>),
    One(String),
}

impl Endpoints {
    fn items(&self) -> Vec<String> {
        match self {
            Endpoints::List(list) => list.clone(),
            Endpoints::One(s) => s.split(',').map(|e| e.trim().to_string()).collect(),
        }
    }
}

fn flag_name(field: &'static str) -> &'static str {
    FIELD_FLAGS
        .iter()
        .find(|(f, _, _)| *f == field)
        .map(|(_, flag, _)| *flag)
        .unwrap_or("")
}

fn env_name(field: &'static str) -> &'static str {
    FIELD_FLAGS
        .iter()
        .find(|(f, _, _)| *f == field)
        .map(|(_, _, env)| *env)
        .unwrap_or("")
}

/// (TOML key, flag, environment variable) for every setting.
pub const FIELD_FLAGS: &[(&str, &str, &str)] = &[
    ("endpoints", "--endpoints", "ELECTD_ENDPOINTS"),
    ("election", "--election", "ELECTD_ELECTION"),
    ("id", "--id", "ELECTD_ID"),
    ("ttl", "--ttl", "ELECTD_TTL"),
    ("http", "--http", "ELECTD_HTTP"),
    ("socket", "--socket", "ELECTD_SOCKET"),
    ("socket_mode", "--socket-mode", "ELECTD_SOCKET_MODE"),
    ("socket_group", "--socket-group", "ELECTD_SOCKET_GROUP"),
    (
        "read_header_timeout",
        "--read-header-timeout",
        "ELECTD_READ_HEADER_TIMEOUT",
    ),
    ("control_uids", "--control-uids", "ELECTD_CONTROL_UIDS"),
    ("control_gids", "--control-gids", "ELECTD_CONTROL_GIDS"),
    ("log_level", "--log-level", "ELECTD_LOG_LEVEL"),
    ("log_format", "--log-format", "ELECTD_LOG_FORMAT"),
    ("stop_signal", "--stop-signal", "ELECTD_STOP_SIGNAL"),
    ("stop_grace", "--stop-grace", "ELECTD_STOP_GRACE"),
    ("on_exit", "--on-exit", "ELECTD_ON_EXIT"),
    ("etcd_ca", "--etcd-ca", "ELECTD_ETCD_CA"),
    ("etcd_cert", "--etcd-cert", "ELECTD_ETCD_CERT"),
    ("etcd_key", "--etcd-key", "ELECTD_ETCD_KEY"),
    ("etcd_user", "--etcd-user", "ELECTD_ETCD_USER"),
    (
        "etcd_password_file",
        "--etcd-password-file",
        "ELECTD_ETCD_PASSWORD_FILE",
    ),
];

/// A validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub endpoints: Vec<String>,
    pub election: String,
    pub id: String,
    pub ttl: Duration,
    pub http: Option<SocketAddr>,
    pub socket: Option<PathBuf>,
    pub socket_mode: u32,
    /// Group that owns the socket file (so its members can connect with mode 0660).
    pub socket_group: Option<u32>,
    /// Time an API client (TCP or socket) has to send a request's headers; also how long an
    /// idle keep-alive connection stays open.
    pub read_header_timeout: Duration,
    /// Peers (by SO_PEERCRED) allowed to send control requests over the socket, besides
    /// electd's own uid and root.
    pub control_uids: Vec<u32>,
    pub control_gids: Vec<u32>,
    pub log_level: String,
    pub log_format: LogFormat,
    pub stop_signal: nix::sys::signal::Signal,
    pub stop_grace: Duration,
    pub on_exit: OnExit,
    pub etcd_tls: Option<TlsFiles>,
    pub etcd_auth: Option<Auth>,
    /// Whether a command is wrapped (`-- CMD`); tightens the timing checks.
    pub has_command: bool,
}

#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub ca: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

#[derive(Clone)]
pub struct Auth {
    pub user: String,
    pub password: String,
}

impl fmt::Debug for Auth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Auth")
            .field("user", &self.user)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// Timings derived from the TTL and stop grace; see [`Config::timing`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    pub ttl: Duration,
    /// How often a keepalive is sent.
    pub keepalive_interval: Duration,
    /// Per-request deadline for every etcd call.
    pub request_timeout: Duration,
    /// Held back from the lease's expiry for clock-rate drift and scheduling delay.
    pub safety_margin: Duration,
    pub stop_grace: Duration,
}

impl Timing {
    /// Compute the timings for a TTL and stop grace. Keepalives go out six times per TTL (at
    /// most every 2 s) so one lost reply costs a small part of the flap budget; each request
    /// may take one keepalive interval.
    pub fn new(ttl: Duration, stop_grace: Duration) -> Timing {
        let keepalive_interval = (ttl / 6).min(Duration::from_secs(2));
        let safety_margin = (ttl / 10).max(Duration::from_millis(250));
        Timing {
            ttl,
            keepalive_interval,
            request_timeout: keepalive_interval.max(Duration::from_millis(500)),
            safety_margin,
            stop_grace,
        }
    }

    /// How long after the last successful keepalive was *sent* a leader may keep its role
    /// before it must begin stopping its child: `ttl − margin − stop grace`.
    pub fn leader_budget(&self) -> Duration {
        self.ttl
            .saturating_sub(self.safety_margin)
            .saturating_sub(self.stop_grace)
    }

    /// When the child must be dead at the latest, after the last successful keepalive was sent.
    pub fn kill_budget(&self) -> Duration {
        self.ttl.saturating_sub(self.safety_margin)
    }
}

impl Config {
    /// The timings in force: the stop grace counts only when a command is wrapped.
    pub fn timing(&self) -> Timing {
        let grace = if self.has_command {
            self.stop_grace
        } else {
            Duration::ZERO
        };
        Timing::new(self.ttl, grace)
    }
}

/// Parse a duration like `5s`, `500ms`, `1m30s`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    if t.is_empty() {
        return Err("empty duration".into());
    }
    humantime::parse_duration(t).map_err(|e| e.to_string())
}

/// Read the TOML config file into [`Settings`]. Syntax errors carry line and column.
pub fn load_file(path: &Path) -> Result<Settings, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse_file(path, &text)
}

fn parse_file(path: &Path, text: &str) -> Result<Settings, ConfigError> {
    toml::from_str::<Settings>(text).map_err(|e| {
        let mut message = e.message().to_string();
        if let Some(span) = e.span() {
            let (line, col) = line_col(text, span.start);
            message = format!("line {line}, column {col}: {message}");
        }
        if message.contains("unknown field") {
            let known: Vec<&str> = FIELD_FLAGS.iter().map(|(k, _, _)| *k).collect();
            if !message.contains("expected one of") {
                message.push_str(&format!("; known keys: {}", known.join(", ")));
            }
        }
        ConfigError::Parse {
            path: path.to_path_buf(),
            message,
        }
    })
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

/// Settings from `ELECTD_*` environment variables, read through `lookup` (tests pass a map).
pub fn from_env(lookup: impl Fn(&str) -> Option<String>) -> Settings {
    let get = |field: &'static str| lookup(env_name(field)).filter(|v| !v.is_empty());
    Settings {
        endpoints: get("endpoints").map(Endpoints::One),
        election: get("election"),
        id: get("id"),
        ttl: get("ttl"),
        http: get("http"),
        socket: get("socket"),
        socket_mode: get("socket_mode"),
        socket_group: get("socket_group"),
        read_header_timeout: get("read_header_timeout"),
        control_uids: get("control_uids").map(Endpoints::One),
        control_gids: get("control_gids").map(Endpoints::One),
        log_level: get("log_level"),
        log_format: get("log_format"),
        stop_signal: get("stop_signal"),
        stop_grace: get("stop_grace"),
        on_exit: get("on_exit"),
        etcd_ca: get("etcd_ca"),
        etcd_cert: get("etcd_cert"),
        etcd_key: get("etcd_key"),
        etcd_user: get("etcd_user"),
        etcd_password_file: get("etcd_password_file"),
    }
}

/// The three layers, highest precedence first.
pub struct Layers {
    pub flags: Settings,
    pub env: Settings,
    pub file: Option<(PathBuf, Settings)>,
}

/// A value picked from the layers with its origin.
struct Picked<T> {
    value: T,
    origin: Origin,
}

impl Layers {
    fn pick<T: Clone>(
        &self,
        field: &'static str,
        get: impl Fn(&Settings) -> &Option<T>,
    ) -> Option<Picked<T>> {
        if let Some(v) = get(&self.flags) {
            return Some(Picked {
                value: v.clone(),
                origin: Origin::Flag(flag_name(field)),
            });
        }
        if let Some(v) = get(&self.env) {
            return Some(Picked {
                value: v.clone(),
                origin: Origin::Env(env_name(field)),
            });
        }
        if let Some((path, file)) = &self.file
            && let Some(v) = get(file)
        {
            return Some(Picked {
                value: v.clone(),
                origin: Origin::File(path.clone()),
            });
        }
        None
    }

    /// Merge and validate into a [`Config`]. `has_command` says whether `-- CMD` was given.
    pub fn resolve(&self, has_command: bool) -> Result<Config, ConfigError> {
        let invalid = |field: &'static str, value: &str, origin: &Origin, expected: &str| {
            ConfigError::Invalid {
                field,
                value: value.to_string(),
                origin: origin.clone(),
                expected: expected.to_string(),
            }
        };
        let in_file = |origin: &Origin, field: &str| -> Origin {
            // Name the key too when the value came from the file.
            match origin {
                Origin::File(p) => {
                    Origin::File(PathBuf::from(format!("{} (key `{field}`)", p.display())))
                }
                o => o.clone(),
            }
        };

        // endpoints
        let endpoints = match self.pick("endpoints", |s| &s.endpoints) {
            Some(p) => {
                let items = p.value.items();
                let origin = in_file(&p.origin, "endpoints");
                if items.is_empty() || items.iter().all(|e| e.is_empty()) {
                    return Err(invalid(
                        "endpoints",
                        "",
                        &origin,
                        "give at least one etcd URL such as http://127.0.0.1:2379",
                    ));
                }
                for e in &items {
                    validate_endpoint(e).map_err(|why| invalid("endpoints", e, &origin, &why))?;
                }
                items
            }
            None => vec!["http://127.0.0.1:2379".to_string()],
        };

        // election
        let election = match self.pick("election", |s| &s.election) {
            Some(p) => {
                let origin = in_file(&p.origin, "election");
                let v = p.value;
                if v.trim().is_empty() {
                    return Err(invalid(
                        "election",
                        &v,
                        &origin,
                        "must be a non-empty name such as `my-service`",
                    ));
                }
                if v.ends_with('/') || v.chars().any(|c| c.is_whitespace() || c.is_control()) {
                    return Err(invalid(
                        "election",
                        &v,
                        &origin,
                        "must not end with `/` or contain whitespace or control characters",
                    ));
                }
                v
            }
            None => {
                return Err(ConfigError::Missing {
                    field: "election",
                    flag: "--election",
                    env: "ELECTD_ELECTION",
                });
            }
        };

        // id
        let id = match self.pick("id", |s| &s.id) {
            Some(p) => {
                if p.value.trim().is_empty() {
                    return Err(invalid(
                        "id",
                        &p.value,
                        &in_file(&p.origin, "id"),
                        "must be non-empty (default: the host name)",
                    ));
                }
                p.value
            }
            None => nix::unistd::gethostname()
                .ok()
                .and_then(|h| h.into_string().ok())
                .filter(|h| !h.is_empty())
                .ok_or_else(|| {
                    ConfigError::Inconsistent(
                        "cannot determine the host name for the member id; set --id".into(),
                    )
                })?,
        };

        let duration = |field: &'static str,
                        get: fn(&Settings) -> &Option<String>,
                        default: Duration|
         -> Result<(Duration, Origin), ConfigError> {
            match self.pick(field, get) {
                Some(p) => {
                    let origin = in_file(&p.origin, field);
                    let d = parse_duration(&p.value).map_err(|_| {
                        invalid(
                            field,
                            &p.value,
                            &origin,
                            "expected a duration such as `5s`, `500ms` or `1m`",
                        )
                    })?;
                    Ok((d, origin))
                }
                None => Ok((default, Origin::Default)),
            }
        };

        // ttl
        let (ttl, ttl_origin) = duration("ttl", |s| &s.ttl, Duration::from_secs(10))?;
        if ttl < MIN_TTL {
            return Err(invalid(
                "ttl",
                &humantime::format_duration(ttl).to_string(),
                &ttl_origin,
                "must be at least 2s (etcd's minimum lease TTL)",
            ));
        }
        if ttl.subsec_nanos() != 0 {
            return Err(invalid(
                "ttl",
                &humantime::format_duration(ttl).to_string(),
                &ttl_origin,
                "must be a whole number of seconds (etcd leases count in seconds), e.g. `3s`",
            ));
        }

        // http
        let http = match self.pick("http", |s| &s.http) {
            Some(p) => {
                let v = p.value.trim();
                if v == "off" || v == "none" {
                    None
                } else {
                    Some(v.parse::<SocketAddr>().map_err(|_| {
                        invalid(
                            "http",
                            v,
                            &in_file(&p.origin, "http"),
                            "expected HOST:PORT with a numeric address such as 127.0.0.1:4040, or `off`",
                        )
                    })?)
                }
            }
            None => Some(SocketAddr::from(([127, 0, 0, 1], 4040))),
        };

        // socket
        let socket = match self.pick("socket", |s| &s.socket) {
            Some(p) if p.value.trim().is_empty() => {
                return Err(invalid(
                    "socket",
                    "",
                    &in_file(&p.origin, "socket"),
                    "expected a file path such as /run/electd/electd.sock",
                ));
            }
            Some(p) => Some(PathBuf::from(p.value)),
            None => None,
        };
        let socket_mode = match self.pick("socket_mode", |s| &s.socket_mode) {
            Some(p) => {
                let v = p.value.trim();
                u32::from_str_radix(v.trim_start_matches("0o"), 8)
                    .ok()
                    .filter(|m| *m <= 0o777)
                    .ok_or_else(|| {
                        invalid(
                            "socket_mode",
                            v,
                            &in_file(&p.origin, "socket_mode"),
                            "expected an octal file mode such as 0660 or 0600",
                        )
                    })?
            }
            None => 0o660,
        };
        let (read_header_timeout, origin) = duration(
            "read_header_timeout",
            |s| &s.read_header_timeout,
            Duration::from_secs(10),
        )?;
        if !(MIN_HEADER_TIMEOUT..=MAX_HEADER_TIMEOUT).contains(&read_header_timeout) {
            return Err(invalid(
                "read_header_timeout",
                &humantime::format_duration(read_header_timeout).to_string(),
                &origin,
                "must be between 100ms and 10m",
            ));
        }

        let socket_group = match self.pick("socket_group", |s| &s.socket_group) {
            Some(p) => {
                let v = p.value.trim();
                let gid = match v.parse::<u32>() {
                    Ok(gid) => Some(gid),
                    Err(_) => nix::unistd::Group::from_name(v)
                        .ok()
                        .flatten()
                        .map(|g| g.gid.as_raw()),
                };
                Some(gid.ok_or_else(|| {
                    invalid(
                        "socket_group",
                        v,
                        &in_file(&p.origin, "socket_group"),
                        "expected an existing group name or a numeric gid",
                    )
                })?)
            }
            None => None,
        };
        let id_list = |field: &'static str, get: fn(&Settings) -> &Option<Endpoints>| match self
            .pick(field, get)
        {
            Some(p) => p
                .value
                .items()
                .iter()
                .filter(|s| !s.is_empty())
                .map(|s| {
                    s.parse::<u32>().map_err(|_| {
                        invalid(
                            field,
                            s,
                            &in_file(&p.origin, field),
                            "expected numeric ids, comma-separated, e.g. `1000,1001`",
                        )
                    })
                })
                .collect::<Result<Vec<u32>, _>>(),
            None => Ok(Vec::new()),
        };
        let control_uids = id_list("control_uids", |s| &s.control_uids)?;
        let control_gids = id_list("control_gids", |s| &s.control_gids)?;

        // logging
        let log_level = match self.pick("log_level", |s| &s.log_level) {
            Some(p) => {
                let v = p.value.trim().to_ascii_lowercase();
                if !["error", "warn", "info", "debug", "trace"].contains(&v.as_str()) {
                    return Err(invalid(
                        "log_level",
                        &p.value,
                        &in_file(&p.origin, "log_level"),
                        "expected one of error, warn, info, debug, trace",
                    ));
                }
                v
            }
            None => "info".to_string(),
        };
        let log_format = match self.pick("log_format", |s| &s.log_format) {
            Some(p) => match p.value.trim() {
                "text" => LogFormat::Text,
                "json" => LogFormat::Json,
                other => {
                    return Err(invalid(
                        "log_format",
                        other,
                        &in_file(&p.origin, "log_format"),
                        "expected `text` or `json`",
                    ));
                }
            },
            None => LogFormat::Text,
        };

        // supervisor
        let stop_signal = match self.pick("stop_signal", |s| &s.stop_signal) {
            Some(p) => parse_signal(&p.value).ok_or_else(|| {
                invalid(
                    "stop_signal",
                    &p.value,
                    &in_file(&p.origin, "stop_signal"),
                    "expected a signal name such as SIGTERM, TERM, SIGINT, SIGQUIT or a number",
                )
            })?,
            None => nix::sys::signal::Signal::SIGTERM,
        };
        let (stop_grace, grace_origin) =
            duration("stop_grace", |s| &s.stop_grace, Duration::from_secs(3))?;
        let on_exit = match self.pick("on_exit", |s| &s.on_exit) {
            Some(p) => match p.value.trim() {
                "restart" => OnExit::Restart,
                "resign" => OnExit::Resign,
                "exit" => OnExit::Exit,
                other => {
                    return Err(invalid(
                        "on_exit",
                        other,
                        &in_file(&p.origin, "on_exit"),
                        "expected `restart`, `resign` or `exit`",
                    ));
                }
            },
            None => OnExit::Restart,
        };

        if has_command {
            let t = Timing::new(ttl, stop_grace);
            let needed = t.keepalive_interval + t.safety_margin + stop_grace;
            if needed >= ttl {
                return Err(ConfigError::Inconsistent(format!(
                    "stop grace {} (from {grace_origin}) does not fit inside the lease TTL {} (from {ttl_origin}): \
                     a leader that loses etcd must have its command dead before the lease can expire, so \
                     keepalive interval ({}) + safety margin ({}) + stop grace must be less than the TTL; \
                     lower --stop-grace or raise --ttl (e.g. --ttl 3s with --stop-grace 1s)",
                    humantime::format_duration(stop_grace),
                    humantime::format_duration(ttl),
                    humantime::format_duration(t.keepalive_interval),
                    humantime::format_duration(t.safety_margin),
                )));
            }
        }

        // etcd TLS and auth
        let file_opt = |field: &'static str, get: fn(&Settings) -> &Option<String>, want: Pem| {
            self.pick(field, get).map(|p| {
                let path = PathBuf::from(&p.value);
                let origin = in_file(&p.origin, field);
                if !path.is_file() {
                    return Err(invalid(
                        field,
                        &p.value,
                        &origin,
                        "file does not exist or is not a regular file",
                    ));
                }
                let bytes = std::fs::read(&path).map_err(|e| {
                    invalid(field, &p.value, &origin, &format!("cannot read it: {e}"))
                })?;
                if let Some(problem) = pem_problem(&bytes, want) {
                    return Err(invalid(field, &p.value, &origin, problem));
                }
                Ok(path)
            })
        };
        let ca = file_opt("etcd_ca", |s| &s.etcd_ca, Pem::Certificate).transpose()?;
        let cert = file_opt("etcd_cert", |s| &s.etcd_cert, Pem::Certificate).transpose()?;
        let key = file_opt("etcd_key", |s| &s.etcd_key, Pem::PrivateKey).transpose()?;
        if cert.is_some() != key.is_some() {
            return Err(ConfigError::Inconsistent(
                "--etcd-cert and --etcd-key must be given together (client certificate and its key)"
                    .into(),
            ));
        }
        let etcd_tls = (ca.is_some() || cert.is_some()).then_some(TlsFiles { ca, cert, key });
        let etcd_auth = match self.pick("etcd_user", |s| &s.etcd_user) {
            Some(user) => {
                let password = match self.pick("etcd_password_file", |s| &s.etcd_password_file) {
                    Some(p) => std::fs::read_to_string(&p.value)
                        .map_err(|e| {
                            invalid(
                                "etcd_password_file",
                                &p.value,
                                &in_file(&p.origin, "etcd_password_file"),
                                &format!("cannot read the password file: {e}"),
                            )
                        })?
                        .trim_end_matches(['\n', '\r'])
                        .to_string(),
                    None => std::env::var("ELECTD_ETCD_PASSWORD").map_err(|_| {
                        ConfigError::Inconsistent(
                            "--etcd-user is set but no password: give --etcd-password-file PATH or the ELECTD_ETCD_PASSWORD environment variable"
                                .into(),
                        )
                    })?,
                };
                Some(Auth {
                    user: user.value,
                    password,
                })
            }
            None => None,
        };

        Ok(Config {
            endpoints,
            election,
            id,
            ttl,
            http,
            socket,
            socket_mode,
            socket_group,
            read_header_timeout,
            control_uids,
            control_gids,
            log_level,
            log_format,
            stop_signal,
            stop_grace,
            on_exit,
            etcd_tls,
            etcd_auth,
            has_command,
        })
    }
}

fn validate_endpoint(e: &str) -> Result<(), String> {
    let expected = "expected a URL such as http://127.0.0.1:2379 or https://etcd-0:2379";
    let rest = e
        .strip_prefix("http://")
        .or_else(|| e.strip_prefix("https://"))
        .ok_or_else(|| format!("{expected} (scheme must be http or https)"))?;
    let rest = rest.trim_end_matches('/');
    let (host, port) = rest
        .rsplit_once(':')
        .ok_or_else(|| format!("{expected} (missing port)"))?;
    if host.is_empty() || host.contains('/') || host.contains(char::is_whitespace) {
        return Err(format!("{expected} (bad host)"));
    }
    port.parse::<u16>()
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| format!("{expected} (bad port {port:?})"))?;
    Ok(())
}

/// What a PEM file given for TLS must hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pem {
    Certificate,
    PrivateKey,
}

/// Why `bytes` is not the PEM `want`ed, if it is not: a wrong or garbage file is reported by
/// field and path at start (tonic would only say "transport error", and only when the first
/// connection is made).
pub fn pem_problem(bytes: &[u8], want: Pem) -> Option<&'static str> {
    let text = String::from_utf8_lossy(bytes);
    let labels: Vec<&str> = text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("-----BEGIN "))
        .filter_map(|l| l.strip_suffix("-----"))
        .collect();
    match want {
        Pem::Certificate if labels.contains(&"CERTIFICATE") => None,
        Pem::Certificate => Some("no PEM certificate (-----BEGIN CERTIFICATE-----) found"),
        Pem::PrivateKey if labels.contains(&"ENCRYPTED PRIVATE KEY") => {
            Some("the PEM private key is encrypted; give an unencrypted key")
        }
        Pem::PrivateKey if labels.iter().any(|l| l.ends_with("PRIVATE KEY")) => None,
        Pem::PrivateKey => {
            Some("no PEM private key (-----BEGIN PRIVATE KEY-----, RSA or EC PRIVATE KEY) found")
        }
    }
}

/// Parse `SIGTERM`, `TERM`, `term` or `15`.
pub fn parse_signal(s: &str) -> Option<nix::sys::signal::Signal> {
    use std::str::FromStr;
    let t = s.trim();
    if let Ok(n) = t.parse::<i32>() {
        return nix::sys::signal::Signal::try_from(n).ok();
    }
    let upper = t.to_ascii_uppercase();
    let name = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    nix::sys::signal::Signal::from_str(&name).ok()
}

/// Every known TOML key, for documentation checks.
pub fn known_keys() -> Vec<&'static str> {
    FIELD_FLAGS.iter().map(|(k, _, _)| *k).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flags(pairs: &[(&str, &str)]) -> Settings {
        let mut s = Settings::default();
        for (k, v) in pairs {
            if *k == "endpoints" {
                s.endpoints = Some(Endpoints::One(v.to_string()));
                continue;
            }
            let v = Some(v.to_string());
            match *k {
                "election" => s.election = v,
                "id" => s.id = v,
                "ttl" => s.ttl = v,
                "http" => s.http = v,
                "socket" => s.socket = v,
                "socket_mode" => s.socket_mode = v,
                "read_header_timeout" => s.read_header_timeout = v,
                "log_level" => s.log_level = v,
                "log_format" => s.log_format = v,
                "stop_signal" => s.stop_signal = v,
                "stop_grace" => s.stop_grace = v,
                "on_exit" => s.on_exit = v,
                other => panic!("unknown test key {other}"),
            }
        }
        s
    }

    fn resolve(pairs: &[(&str, &str)], has_command: bool) -> Result<Config, ConfigError> {
        Layers {
            flags: flags(pairs),
            env: Settings::default(),
            file: None,
        }
        .resolve(has_command)
    }

    fn error(pairs: &[(&str, &str)], has_command: bool) -> String {
        resolve(pairs, has_command)
            .expect_err("configuration should be rejected")
            .to_string()
    }

    #[test]
    fn defaults() {
        let c = resolve(&[("election", "svc"), ("id", "a")], false).unwrap();
        assert_eq!(c.endpoints, vec!["http://127.0.0.1:2379"]);
        assert_eq!(c.ttl, Duration::from_secs(10));
        assert_eq!(c.http, Some("127.0.0.1:4040".parse().unwrap()));
        assert_eq!(c.socket, None);
        assert_eq!(c.socket_mode, 0o660);
        assert_eq!(c.read_header_timeout, Duration::from_secs(10));
        assert_eq!(c.on_exit, OnExit::Restart);
        assert_eq!(c.stop_signal, nix::sys::signal::Signal::SIGTERM);
    }

    #[test]
    fn bad_values_name_the_field_source_and_accepted_values() {
        type Case<'a> = (&'a [(&'a str, &'a str)], &'a [&'a str]);
        let cases: &[Case] = &[
            (
                &[("ttl", "0s")],
                &["invalid ttl", "flag --ttl", "at least 2s"],
            ),
            (&[("ttl", "1s")], &["invalid ttl", "at least 2s"]),
            (
                &[("ttl", "2500ms")],
                &["invalid ttl", "whole number of seconds"],
            ),
            (
                &[("ttl", "five")],
                &["invalid ttl \"five\"", "duration such as `5s`"],
            ),
            (&[("election", "")], &["invalid election", "non-empty"]),
            (&[("election", "a b")], &["invalid election", "whitespace"]),
            (
                &[("endpoints", "127.0.0.1:2379")],
                &["invalid endpoints", "scheme must be http or https"],
            ),
            (
                &[("endpoints", "http://host")],
                &["invalid endpoints", "missing port"],
            ),
            (
                &[("endpoints", "http://h:99999")],
                &["invalid endpoints", "bad port"],
            ),
            (&[("http", "localhost")], &["invalid http", "HOST:PORT"]),
            (&[("socket_mode", "999")], &["invalid socket_mode", "octal"]),
            (
                &[("read_header_timeout", "0s")],
                &[
                    "invalid read_header_timeout",
                    "flag --read-header-timeout",
                    "between 100ms and 10m",
                ],
            ),
            (
                &[("read_header_timeout", "1h")],
                &["invalid read_header_timeout", "between 100ms and 10m"],
            ),
            (
                &[("read_header_timeout", "later")],
                &["invalid read_header_timeout", "duration such as `5s`"],
            ),
            (
                &[("log_level", "loud")],
                &["invalid log_level", "error, warn, info, debug, trace"],
            ),
            (
                &[("log_format", "xml")],
                &["invalid log_format", "`text` or `json`"],
            ),
            (
                &[("stop_signal", "SIGNOPE")],
                &["invalid stop_signal", "SIGTERM"],
            ),
            (
                &[("stop_grace", "soon")],
                &["invalid stop_grace", "duration"],
            ),
            (
                &[("on_exit", "panic")],
                &["invalid on_exit", "`restart`, `resign` or `exit`"],
            ),
        ];
        for (pairs, needles) in cases {
            let mut all = vec![("election", "svc"), ("id", "a")];
            all.extend_from_slice(pairs);
            let msg = error(&all, false);
            for n in *needles {
                assert!(msg.contains(n), "{pairs:?}: {msg:?} lacks {n:?}");
            }
        }
    }

    #[test]
    fn missing_election_says_how_to_set_it() {
        let msg = error(&[("id", "a")], false);
        assert!(
            msg.contains("--election") && msg.contains("ELECTD_ELECTION"),
            "{msg}"
        );
    }

    #[test]
    fn stop_grace_must_fit_inside_ttl_with_a_command() {
        // Without a command the grace is irrelevant.
        resolve(
            &[
                ("election", "e"),
                ("id", "a"),
                ("ttl", "3s"),
                ("stop_grace", "5s"),
            ],
            false,
        )
        .unwrap();
        let msg = error(
            &[
                ("election", "e"),
                ("id", "a"),
                ("ttl", "3s"),
                ("stop_grace", "5s"),
            ],
            true,
        );
        assert!(msg.contains("does not fit inside the lease TTL"), "{msg}");
        assert!(msg.contains("keepalive interval"), "{msg}");
        // The fast-failover setup stays valid.
        let c = resolve(
            &[
                ("election", "e"),
                ("id", "a"),
                ("ttl", "3s"),
                ("stop_grace", "1s"),
            ],
            true,
        )
        .unwrap();
        let t = c.timing();
        assert!(t.leader_budget() > Duration::from_secs(1), "{t:?}");
        assert!(t.keepalive_interval * 3 <= t.leader_budget(), "{t:?}");
    }

    #[test]
    fn precedence_flags_over_env_over_file() {
        let path = PathBuf::from("electd.toml");
        let file = parse_file(
            &path,
            "election = \"from-file\"\nttl = \"7s\"\nid = \"f\"\n",
        )
        .unwrap();
        let env = from_env(|k| match k {
            "ELECTD_TTL" => Some("5s".into()),
            "ELECTD_ID" => Some("e".into()),
            _ => None,
        });
        let layers = Layers {
            flags: flags(&[("id", "flag")]),
            env,
            file: Some((path, file)),
        };
        let c = layers.resolve(false).unwrap();
        assert_eq!(c.election, "from-file");
        assert_eq!(c.ttl, Duration::from_secs(5));
        assert_eq!(c.id, "flag");
    }

    #[test]
    fn file_errors_have_line_and_column_and_known_keys() {
        let path = PathBuf::from("electd.toml");
        let err = parse_file(&path, "election = \"a\"\nttl = 5s\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("electd.toml") && err.contains("line 2"),
            "{err}"
        );
        let err = parse_file(&path, "election = \"a\"\ntll = \"5s\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("tll") && err.contains("ttl"), "{err}");
        let bad = parse_file(&path, "ttl = \"1s\"\nelection = \"a\"\n").unwrap();
        let err = Layers {
            flags: Settings::default(),
            env: Settings::default(),
            file: Some((path, bad)),
        }
        .resolve(false)
        .unwrap_err()
        .to_string();
        assert!(err.contains("electd.toml (key `ttl`)"), "{err}");
    }

    #[test]
    fn example_config_documents_every_key_and_parses() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/electd.example.toml");
        let text = std::fs::read_to_string(&path).unwrap();
        let settings = parse_file(&path, &text).unwrap();
        for key in known_keys() {
            assert!(
                text.contains(&format!("{key} =")),
                "config/electd.example.toml does not document `{key}`"
            );
        }
        let c = Layers {
            flags: Settings::default(),
            env: Settings::default(),
            file: Some((path, settings)),
        }
        .resolve(true)
        .unwrap();
        assert_eq!(c.election, "my-service");
    }

    #[test]
    fn signals_parse_in_every_spelling() {
        use nix::sys::signal::Signal;
        assert_eq!(parse_signal("SIGTERM"), Some(Signal::SIGTERM));
        assert_eq!(parse_signal("int"), Some(Signal::SIGINT));
        assert_eq!(parse_signal("9"), Some(Signal::SIGKILL));
        assert_eq!(parse_signal("nope"), None);
    }
}
