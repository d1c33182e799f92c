//! Configuration: a TOML file, `ELECTD_*` environment variables and command-line flags merged
//! into one validated [`Config`] (flags win over the environment, which wins over the file).
//!
//! Every setting is declared once, in [`table::SETTINGS`] (key, flag, variable, help, default);
//! each layer is a [`Settings`] map keyed by it, and [`Layers::resolve`] parses every value with
//! its parser from [`parse`] through one helper, [`Layers::get`].
//!
//! Invariants of a `Config` that left [`Layers::resolve`]:
//! - the TTL is a whole number of seconds, at least 2 s (etcd's minimum);
//! - on a replica that may lead (a wrapped command, or priority above 0), stop grace +
//!   keepalive interval + safety margin fit inside the TTL, so a leader that loses etcd can have
//!   its child (or its app, following `/role`'s budget) stopped before its lease can expire;
//! - every endpoint is an `http://` or `https://` URL with a host and a port.
//!
//! Every rejected value is reported with where it came from (`--ttl`, `ELECTD_TTL`, or
//! `ttl in electd.toml`) and what would be accepted. Durations are written `5s`, `500ms`, `1m`.

pub mod elections;
pub mod parse;
pub mod table;

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use parse::{Pem, parse_duration, pem_problem};
use table::{Shape, spec_of};

/// Etcd's smallest lease TTL.
pub const MIN_TTL: Duration = Duration::from_secs(2);
/// Etcd's largest lease TTL (`MaxLeaseTTL`): a longer one is refused by every grant.
pub const MAX_TTL: Duration = Duration::from_secs(9_000_000_000);
/// The longest `elect-run --once-per` slot (a slot record lives on a lease of two periods).
pub const MAX_ONCE_PER: Duration = Duration::from_secs(366 * 24 * 3600);

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
        flag: String,
        env: String,
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
    Flag(String),
    Env(String),
    /// A key of the config file.
    File {
        path: PathBuf,
        key: &'static str,
    },
    /// A key of the config file's `number`th `[[elections]]` table.
    Table {
        path: PathBuf,
        number: usize,
        key: &'static str,
    },
    Default,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Flag(flag) => write!(f, "flag {flag}"),
            Origin::Env(var) => write!(f, "environment variable {var}"),
            Origin::File { path, key } => write!(f, "{} (key `{key}`)", path.display()),
            Origin::Table { path, number, key } => write!(
                f,
                "{} ([[elections]] #{number}, key `{key}`)",
                path.display()
            ),
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

/// One value as given: a single string, or a list (TOML arrays). Single strings of list
/// settings are split at commas.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Raw {
    One(String),
    List(Vec<String>),
}

impl Raw {
    /// The items of a list setting.
    fn items(&self) -> Vec<String> {
        match self {
            Raw::List(list) => list.clone(),
            Raw::One(s) => s.split(',').map(|e| e.trim().to_string()).collect(),
        }
    }

    pub fn text(&self) -> String {
        match self {
            Raw::One(s) => s.clone(),
            Raw::List(l) => l.join(","),
        }
    }
}

/// One layer of settings as given, before validation, keyed by [`table::Spec::key`]; and, in
/// the config file only, its `[[elections]]` tables.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Settings(BTreeMap<&'static str, Raw>, Vec<elections::Table>);

impl Settings {
    /// Set `key` (which must be in the table) to a single value.
    pub fn set(mut self, key: &str, value: &str) -> Settings {
        self.insert(key, Raw::One(value.to_string()));
        self
    }

    pub fn insert(&mut self, key: &str, value: Raw) {
        self.0.insert(spec_of(key).key, value);
    }

    pub fn get(&self, key: &str) -> Option<&Raw> {
        self.0.get(key)
    }

    pub fn contains(&self, key: &str) -> bool {
        self.0.contains_key(key)
    }
}

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
    /// The check that gates this replica's candidacy, if any.
    pub health: Option<crate::health::HealthCheck>,
    /// Among eligible candidates the highest leads; 0 never campaigns.
    pub priority: u32,
    /// How long a candidate of higher priority waits before a running leader hands over to
    /// it; `None`: never pre-empt a running leader.
    pub takeover_delay: Option<Duration>,
    /// How long to wait before leading after the leader before us vanished without the
    /// clean-release mark (`--start-guard`).
    pub start_guard: Duration,
    /// This replica's app, published to the others (`--advertise`).
    pub advertise: Option<String>,
    /// Where the leader-following proxy listens, if it runs.
    pub proxy: Option<SocketAddr>,
    /// How long a proxied connection waits for a leader.
    pub proxy_wait: Duration,
    /// Run on every change of this replica's role.
    pub on_role_change: Option<String>,
    pub on_role_change_timeout: Duration,
    pub etcd_tls: Option<TlsFiles>,
    pub etcd_auth: Option<Auth>,
    /// Whether a command is wrapped (`-- CMD`); tightens the timing checks.
    pub has_command: bool,
    /// The config file's `[[elections]]`, resolved; empty: the one election of `election` (and
    /// `-- CMD`). See [`Config::elections`].
    pub tables: Vec<elections::Election>,
    /// Spread leadership evenly over the replicas that serve the same elections.
    pub balance: bool,
    /// How long after a change of leadership a replica above its share waits before it hands
    /// an election over.
    pub balance_delay: Duration,
    /// Where the highest etcd revision seen is kept across restarts (`--state-file`).
    pub state_file: Option<PathBuf>,
}

/// How to reach etcd: what a client needs of the configuration (also handed, over a private
/// pipe, to the freeze watchdog, which releases leadership when electd dies).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct EtcdSettings {
    pub endpoints: Vec<String>,
    pub tls: Option<TlsFiles>,
    pub auth: Option<Auth>,
    /// The first wait for a reply ([`Timing::request_timeout`]).
    pub request_timeout: Duration,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct TlsFiles {
    pub ca: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

#[derive(Clone, serde::Serialize, serde::Deserialize)]
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

    /// The leader's deadline after a successful keepalive sent at `last_ok_sent`: when a wrapped
    /// command gets its stop signal, and when the budget handed to apps (`/role`'s `valid_ms`)
    /// runs out. The one place this arithmetic is done.
    pub fn deadline(&self, last_ok_sent: tokio::time::Instant) -> tokio::time::Instant {
        last_ok_sent + self.leader_budget()
    }

    /// When the command (or an app following the budget) must be stopped at the latest, after a
    /// successful keepalive sent at `last_ok_sent`: the deadline plus the stop grace.
    pub fn kill_deadline(&self, last_ok_sent: tokio::time::Instant) -> tokio::time::Instant {
        last_ok_sent + self.kill_budget()
    }
}

impl Config {
    /// The timings in force. The stop grace counts with or without a wrapped command: without
    /// one it is the time the app beside electd needs to stop its leader-only work once the
    /// budget `/role` gave it runs out (docs/app-contract.md).
    pub fn timing(&self) -> Timing {
        Timing::new(self.ttl, self.stop_grace)
    }

    /// Every election this electd takes part in: the `[[elections]]` tables, or the one of
    /// `--election` wrapping `command` (`-- CMD`).
    pub fn elections(&self, command: Vec<String>) -> Vec<elections::Election> {
        if !self.tables.is_empty() {
            return self.tables.clone();
        }
        vec![elections::Election {
            name: self.election.clone(),
            command,
            stop_grace: self.stop_grace,
            on_exit: self.on_exit,
            priority: self.priority,
        }]
    }

    /// How to reach etcd.
    pub fn etcd_settings(&self) -> EtcdSettings {
        EtcdSettings {
            endpoints: self.endpoints.clone(),
            tls: self.etcd_tls.clone(),
            auth: self.etcd_auth.clone(),
            request_timeout: self.timing().request_timeout,
        }
    }
}

/// elect-run's own settings ([`table::Scope::Run`]), validated by [`Layers::elect_run`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunSettings {
    /// How long to wait to become leader; zero = decide at the first election read.
    pub wait: Duration,
    /// Run at most once per slot of this length (whole seconds).
    pub once_per: Option<Duration>,
}

/// Read the TOML config file into [`Settings`]. Syntax errors carry line and column.
pub fn load_file(path: &Path) -> Result<Settings, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse_file(path, &text)
}

/// Parse the config file's text: only keys of the table, each a string, a number, a boolean
/// or (for list settings) an array of those.
pub fn parse_file(path: &Path, text: &str) -> Result<Settings, ConfigError> {
    let err = |message: String| ConfigError::Parse {
        path: path.to_path_buf(),
        message,
    };
    let at = |span: std::ops::Range<usize>| {
        let (line, col) = line_col(text, span.start);
        format!("line {line}, column {col}")
    };
    let table: BTreeMap<toml::Spanned<String>, toml::Spanned<toml::Value>> = toml::from_str(text)
        .map_err(|e| {
        let mut message = e.message().to_string();
        if let Some(span) = e.span() {
            message = format!("{}: {message}", at(span));
        }
        err(message)
    })?;
    let mut settings = Settings::default();
    for (key, value) in table {
        if key.get_ref() == "elections" {
            settings.1 = elections::read(path, value.get_ref())?;
            continue;
        }
        let Some(spec) = table::SETTINGS.iter().find(|s| s.key == key.get_ref()) else {
            return Err(err(format!(
                "{}: unknown key `{}`; known keys: {}, and [[elections]] tables",
                at(key.span()),
                key.get_ref(),
                table::known_keys().join(", ")
            )));
        };
        let scalar = |v: &toml::Value| match v {
            toml::Value::String(s) => Some(s.clone()),
            toml::Value::Integer(i) => Some(i.to_string()),
            toml::Value::Float(f) => Some(f.to_string()),
            toml::Value::Boolean(b) => Some(b.to_string()),
            _ => None,
        };
        let span = value.span();
        let raw = match (value.into_inner(), spec.shape) {
            (toml::Value::Array(items), Shape::List) => Raw::List(
                items
                    .iter()
                    .map(&scalar)
                    .collect::<Option<Vec<_>>>()
                    .ok_or_else(|| {
                        err(format!(
                            "{}: `{}` must be a list of strings or numbers",
                            at(span.clone()),
                            spec.key
                        ))
                    })?,
            ),
            (v, _) => Raw::One(scalar(&v).ok_or_else(|| {
                err(format!(
                    "{}: `{}` must be a string such as \"{}\"",
                    at(span.clone()),
                    spec.key,
                    match spec.default {
                        table::Default::Value(d) => d,
                        _ => "…",
                    }
                ))
            })?),
        };
        settings.0.insert(spec.key, raw);
    }
    Ok(settings)
}

/// A value as quoted in an error: long ones cut to their first 60 characters.
fn shorten(v: &str) -> String {
    if v.chars().count() <= 80 {
        return v.to_string();
    }
    let head: String = v.chars().take(60).collect();
    format!("{head}… ({} bytes)", v.len())
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

/// Settings from `ELECTD_*` environment variables, read through `lookup` (tests pass a map).
/// Empty variables count as unset.
pub fn from_env(lookup: impl Fn(&str) -> Option<String>) -> Settings {
    let mut s = Settings::default();
    for spec in table::SETTINGS {
        if let Some(v) = lookup(&spec.env()).filter(|v| !v.is_empty()) {
            s.0.insert(spec.key, Raw::One(v));
        }
    }
    s
}

/// The three layers, highest precedence first.
pub struct Layers {
    pub flags: Settings,
    pub env: Settings,
    pub file: Option<(PathBuf, Settings)>,
}

/// A value and where it came from.
#[derive(Debug, Clone)]
pub struct Got<T> {
    pub value: T,
    pub origin: Origin,
}

impl Layers {
    /// Only the settings elect-run uses: a config file or environment shared with electd
    /// never fails elect-run on a value only the daemon reads (its proxy, health check, ...).
    pub fn for_elect_run(mut self) -> Layers {
        let daemon_only = |k: &str| {
            table::SETTINGS
                .iter()
                .any(|s| s.key == k && s.scope == table::Scope::Daemon)
        };
        self.env.0.retain(|k, _| !daemon_only(k));
        if let Some((_, file)) = self.file.as_mut() {
            file.0.retain(|k, _| !daemon_only(k));
            // elect-run runs one job in the election its --election names.
            file.1.clear();
        }
        self
    }

    /// The raw value of `key` from the highest layer that sets it.
    fn pick(&self, key: &'static str) -> Option<(Raw, Origin)> {
        let spec = spec_of(key);
        #[cfg(test)]
        tests::READ.with(|r| r.borrow_mut().insert(spec.key));
        if let Some(v) = self.flags.get(key) {
            return Some((v.clone(), Origin::Flag(spec.flag())));
        }
        if let Some(v) = self.env.get(key) {
            return Some((v.clone(), Origin::Env(spec.env())));
        }
        let (path, file) = self.file.as_ref()?;
        file.get(key).map(|v| {
            (
                v.clone(),
                Origin::File {
                    path: path.clone(),
                    key: spec.key,
                },
            )
        })
    }

    /// Whether any layer sets `key`.
    pub fn given(&self, key: &'static str) -> bool {
        self.pick(key).is_some()
    }

    /// The value of `key` parsed by `parse`, from the highest layer that sets it, else from the
    /// table's default (parsed the same way); `None` when unset and without a default. A list
    /// setting is parsed item by item into a `Vec` by [`Layers::get_list`] instead.
    pub fn get<T>(
        &self,
        key: &'static str,
        parse: impl Fn(&str) -> Result<T, String>,
    ) -> Result<Option<Got<T>>, ConfigError> {
        let spec = spec_of(key);
        debug_assert_eq!(spec.shape, Shape::One, "{key} is a list: use get_list");
        let (text, origin) = match self.pick(key) {
            Some((raw, origin)) => (raw.text(), origin),
            None => match spec.default {
                table::Default::Value(v) => (v.to_string(), Origin::Default),
                table::Default::Required => {
                    return Err(ConfigError::Missing {
                        field: spec.key,
                        flag: spec.flag(),
                        env: spec.env(),
                    });
                }
                _ => return Ok(None),
            },
        };
        match parse(&text) {
            Ok(value) => Ok(Some(Got { value, origin })),
            Err(expected) => Err(ConfigError::Invalid {
                field: spec.key,
                value: shorten(&text),
                origin,
                expected,
            }),
        }
    }

    /// [`Layers::get`] for a setting with a default or required: always a value.
    pub fn value<T>(
        &self,
        key: &'static str,
        parse: impl Fn(&str) -> Result<T, String>,
    ) -> Result<Got<T>, ConfigError> {
        Ok(self
            .get(key, parse)?
            .unwrap_or_else(|| panic!("invariant: `{key}` has a default or is required")))
    }

    /// [`Layers::get`] without the origin.
    pub fn optional<T>(
        &self,
        key: &'static str,
        parse: impl Fn(&str) -> Result<T, String>,
    ) -> Result<Option<T>, ConfigError> {
        Ok(self.get(key, parse)?.map(|g| g.value))
    }

    /// A list setting, every item parsed by `parse`; an error names the bad item. Empty items
    /// are skipped; an empty list falls back to the default.
    pub fn get_list<T>(
        &self,
        key: &'static str,
        parse: impl Fn(&str) -> Result<T, String>,
    ) -> Result<Vec<T>, ConfigError> {
        let spec = spec_of(key);
        debug_assert_eq!(spec.shape, Shape::List, "{key} is not a list: use get");
        let (items, origin) = match self.pick(key) {
            Some((raw, origin)) => (raw.items(), origin),
            None => match spec.default {
                table::Default::Value(v) => (Raw::One(v.into()).items(), Origin::Default),
                _ => return Ok(Vec::new()),
            },
        };
        items
            .iter()
            .filter(|i| !i.is_empty())
            .map(|i| {
                parse(i).map_err(|expected| ConfigError::Invalid {
                    field: spec.key,
                    value: i.clone(),
                    origin: origin.clone(),
                    expected,
                })
            })
            .collect()
    }

    /// Merge and validate into a [`Config`]. `has_command` says whether `-- CMD` was given.
    pub fn resolve(&self, has_command: bool) -> Result<Config, ConfigError> {
        let endpoints = self.get_list("endpoints", parse::endpoint)?;
        if endpoints.is_empty() {
            let origin = self.pick("endpoints").map_or(Origin::Default, |p| p.1);
            return Err(ConfigError::Invalid {
                field: "endpoints",
                value: String::new(),
                origin,
                expected: "give at least one etcd URL such as http://127.0.0.1:2379".into(),
            });
        }
        let tables = self.file.as_ref().filter(|(_, f)| !f.1.is_empty());
        let ttl = self.value("ttl", parse::ttl)?;
        let stop_grace = self.value("stop_grace", parse::duration)?;
        let priority = self.value("priority", parse::number_between(0, 1000))?;
        let on_exit = self.value("on_exit", parse::on_exit)?.value;
        let (election, tables) = match tables {
            None => (self.value("election", parse::election)?.value, Vec::new()),
            Some((path, file)) => {
                if self.flags.contains("election") || self.env.contains("election") {
                    return Err(ConfigError::Inconsistent(format!(
                        "--election (or ELECTD_ELECTION) and the [[elections]] tables of {}                          exclude each other: name the elections in the file, or give one with                          --election",
                        path.display()
                    )));
                }
                if has_command {
                    return Err(ConfigError::Inconsistent(format!(
                        "`-- CMD` and the [[elections]] tables of {} exclude each other: give                          each election its `command = [\"program\", \"arg\"]` in the file",
                        path.display()
                    )));
                }
                let defaults = elections::Election {
                    name: String::new(),
                    command: Vec::new(),
                    stop_grace: stop_grace.value,
                    on_exit,
                    priority: priority.value,
                };
                let tables = elections::resolve(path, &file.1, &defaults)?;
                for e in &tables {
                    if !e.command.is_empty() || e.priority > 0 {
                        let grace = Got {
                            value: e.stop_grace,
                            origin: Origin::Table {
                                path: path.clone(),
                                number: 1 + tables.iter().position(|t| t == e).unwrap_or(0),
                                key: "stop_grace",
                            },
                        };
                        check_grace_fits(&ttl, &grace, !e.command.is_empty())?;
                    }
                }
                (tables[0].name.clone(), tables)
            }
        };
        // A replica that may lead must have its command — or, without one, the app following
        // `/role`'s budget — stopped before its lease can expire. An observer never leads.
        if tables.is_empty() && (has_command || priority.value > 0) {
            check_grace_fits(&ttl, &stop_grace, has_command)?;
        }
        let config = Config {
            endpoints,
            election,
            id: match self.optional("id", parse::id)? {
                Some(id) => id,
                None => host_name().ok_or_else(|| {
                    ConfigError::Inconsistent(
                        "cannot determine the host name for the member id; set --id".into(),
                    )
                })?,
            },
            ttl: ttl.value,
            http: self.value("http", parse::listen_addr_or_off)?.value,
            socket: self.optional("socket", parse::path)?,
            socket_mode: self.value("socket_mode", parse::file_mode)?.value,
            socket_group: self.optional("socket_group", parse::group)?,
            read_header_timeout: self
                .value(
                    "read_header_timeout",
                    parse::duration_between("100ms", "10m"),
                )?
                .value,
            control_uids: self.get_list("control_uids", parse::numeric_id)?,
            control_gids: self.get_list("control_gids", parse::numeric_id)?,
            log_level: self.value("log_level", parse::log_level)?.value,
            log_format: self.value("log_format", parse::log_format)?.value,
            stop_signal: self.value("stop_signal", parse::stop_signal)?.value,
            stop_grace: stop_grace.value,
            on_exit,
            health: self.health()?,
            priority: priority.value,
            takeover_delay: self.value("takeover_delay", parse::duration_or_off)?.value,
            start_guard: self
                .value("start_guard", parse::duration_between("0s", "1m"))?
                .value,
            advertise: self.optional("advertise", parse::host_port)?,
            proxy: self.optional("proxy", parse::listen_addr)?,
            proxy_wait: self
                .optional("proxy_wait", parse::duration_between("0s", "10m"))?
                .unwrap_or(ttl.value),
            on_role_change: self.optional("on_role_change", parse::command)?,
            on_role_change_timeout: self
                .value(
                    "on_role_change_timeout",
                    parse::duration_between("100ms", "1h"),
                )?
                .value,
            etcd_tls: self.tls()?,
            etcd_auth: self.auth()?,
            has_command,
            balance: self.value("balance", parse::boolean)?.value,
            balance_delay: self
                .value("balance_delay", parse::duration_between("0s", "1h"))?
                .value,
            state_file: self.optional("state_file", parse::state_file)?,
            tables,
        };
        check_routing(&config)?;
        Ok(config)
    }

    /// elect-run's own settings. `socket`: whether elect-run's `--socket` (ask the local
    /// electd instead of campaigning) was given, which `--once-per` cannot go with.
    pub fn elect_run(&self, socket: bool) -> Result<RunSettings, ConfigError> {
        let wait = self.value("wait", parse::duration)?.value;
        let once_per = self.get("once_per", parse::once_per)?;
        if let (Some(once_per), true) = (&once_per, socket) {
            return Err(ConfigError::Inconsistent(format!(
                "once_per (from {}) cannot be combined with --socket: slot records are \
                 written under elect-run's own fencing token; drop --socket to campaign directly",
                once_per.origin
            )));
        }
        Ok(RunSettings {
            wait,
            once_per: once_per.map(|g| g.value),
        })
    }

    fn health(&self) -> Result<Option<crate::health::HealthCheck>, ConfigError> {
        use crate::health::{HealthCheck, Probe};
        let cmd = self.optional("health_cmd", parse::command)?;
        let url = self.optional("health_url", parse::http_url)?;
        let probe = match (cmd, url) {
            (Some(_), Some(_)) => {
                return Err(ConfigError::Inconsistent(
                    "--health-cmd and --health-url exclude each other: give one check".into(),
                ));
            }
            (Some(c), None) => Probe::Command(c),
            (None, Some(u)) => Probe::Url(u),
            (None, None) => {
                // Still validate the tuning settings, so a typo never waits for a check.
                self.health_tuning()?;
                return Ok(None);
            }
        };
        let (interval, timeout, rise, fall) = self.health_tuning()?;
        Ok(Some(HealthCheck {
            probe,
            interval,
            timeout,
            rise,
            fall,
        }))
    }

    fn health_tuning(&self) -> Result<(Duration, Duration, u32, u32), ConfigError> {
        Ok((
            self.value("health_interval", parse::duration_between("100ms", "1h"))?
                .value,
            self.value("health_timeout", parse::duration_between("100ms", "10m"))?
                .value,
            self.value("health_rise", parse::number_between(1, 100))?
                .value,
            self.value("health_fall", parse::number_between(1, 100))?
                .value,
        ))
    }

    fn tls(&self) -> Result<Option<TlsFiles>, ConfigError> {
        let ca = self.optional("etcd_ca", parse::pem_file(Pem::Certificate))?;
        let cert = self.optional("etcd_cert", parse::pem_file(Pem::Certificate))?;
        let key = self.optional("etcd_key", parse::pem_file(Pem::PrivateKey))?;
        if cert.is_some() != key.is_some() {
            return Err(ConfigError::Inconsistent(
                "--etcd-cert and --etcd-key must be given together (client certificate and its key)"
                    .into(),
            ));
        }
        Ok((ca.is_some() || cert.is_some()).then_some(TlsFiles { ca, cert, key }))
    }

    fn auth(&self) -> Result<Option<Auth>, ConfigError> {
        let Some(user) = self.optional("etcd_user", parse::text)? else {
            return Ok(None);
        };
        let password = match self.optional("etcd_password_file", parse::password_file)? {
            Some(p) => p,
            None => std::env::var("ELECTD_ETCD_PASSWORD").map_err(|_| {
                ConfigError::Inconsistent(
                    "--etcd-user is set but no password: give --etcd-password-file PATH or the \
                     ELECTD_ETCD_PASSWORD environment variable"
                        .into(),
                )
            })?,
        };
        Ok(Some(Auth { user, password }))
    }
}

/// The proxy forwards to the leader's advertised address, its own when it leads: a replica
/// that may lead needs one, and it must not be the proxy itself.
fn check_routing(c: &Config) -> Result<(), ConfigError> {
    let Some(proxy) = c.proxy else { return Ok(()) };
    if c.tables.len() > 1 {
        return Err(ConfigError::Inconsistent(format!(
            "--proxy follows one election's leader, and this configuration has {} \
             ([[elections]]): run the proxy in an electd of its own for the election clients \
             reach through it",
            c.tables.len()
        )));
    }
    match c.advertise.as_deref() {
        None if c.priority > 0 => Err(ConfigError::Inconsistent(
            "--proxy needs --advertise HOST:PORT, the address of this replica's app, where \
             the proxies send clients while it leads (only an observer, --priority 0, may run \
             a proxy without one)"
                .into(),
        )),
        Some(a) if a.parse::<SocketAddr>().ok() == Some(proxy) => {
            Err(ConfigError::Inconsistent(format!(
                "--advertise {a} is the proxy's own address (--proxy): advertise the app's \
                 address, which the proxy forwards to"
            )))
        }
        _ => Ok(()),
    }
}

/// A leader that loses etcd must have its command dead (or, without one, the app that follows
/// `/role`'s budget stopped) before the lease can expire: keepalive interval + safety margin +
/// stop grace must be less than the TTL.
fn check_grace_fits(
    ttl: &Got<Duration>,
    grace: &Got<Duration>,
    has_command: bool,
) -> Result<(), ConfigError> {
    let t = Timing::new(ttl.value, grace.value);
    let needed = t.keepalive_interval + t.safety_margin + grace.value;
    if needed < ttl.value {
        return Ok(());
    }
    let show = |d: Duration| humantime::format_duration(d).to_string();
    let what = if has_command {
        "its command dead"
    } else {
        "the app beside it (which follows the budget `/role` gives it, docs/app-contract.md) \
         stopped"
    };
    Err(ConfigError::Inconsistent(format!(
        "stop grace {} (from {}) does not fit inside the lease TTL {} (from {}): a leader that \
         loses etcd must have {what} before the lease can expire, so keepalive interval ({}) + \
         safety margin ({}) + stop grace must be less than the TTL; lower --stop-grace or raise \
         --ttl (e.g. --ttl 3s with --stop-grace 1s)",
        show(grace.value),
        grace.origin,
        show(ttl.value),
        ttl.origin,
        show(t.keepalive_interval),
        show(t.safety_margin),
    )))
}

fn host_name() -> Option<String> {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .filter(|h| !h.is_empty())
}

/// Parse `SIGTERM`, `TERM`, `term` or `15`.
pub fn parse_signal(s: &str) -> Option<nix::sys::signal::Signal> {
    parse::signal(s)
}

/// Every known TOML key, for documentation checks.
pub fn known_keys() -> Vec<&'static str> {
    table::known_keys()
}

#[cfg(test)]
mod tests;
