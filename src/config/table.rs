//! The settings table: every setting declared once — its file key, from which its flag
//! (`--read-header-timeout`) and variable (`ELECTD_READ_HEADER_TIMEOUT`) are derived, which
//! binaries take it as a flag, its help text and its default. Flags, the environment, the TOML
//! file, `--help`, the man pages and the example file's check all read this table;
//! [`super::Layers::resolve`] parses each value with its parser in one line.

/// Which binaries take a setting as a flag. The file and the environment accept every key in
/// both binaries, so one `electd.toml` and one environment file serve both.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// `electd` and `elect-run` (and `electd status`, which reads etcd directly).
    Both,
    /// `electd` only.
    Daemon,
    /// `elect-run` only (what it waits for, how often it runs).
    Run,
}

/// Whether a setting holds one value or a list (comma-separated on the command line and in
/// the environment; either form in TOML).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    One,
    List,
}

/// What happens when no layer sets a value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Default {
    /// This text, parsed by the setting's own parser (so the default is valid by the same rules).
    Value(&'static str),
    /// Computed at resolution; the text says what it is (for `--help`).
    Computed(&'static str),
    /// Unset: the feature is off.
    Unset,
    /// Must be given.
    Required,
}

/// One setting.
#[derive(Debug, Clone, Copy)]
pub struct Spec {
    /// The TOML key; the flag and the environment variable are derived from it.
    pub key: &'static str,
    pub value_name: &'static str,
    pub help: &'static str,
    pub default: Default,
    pub scope: Scope,
    pub shape: Shape,
}

impl Spec {
    /// `--read-header-timeout` for `read_header_timeout`.
    pub fn flag(&self) -> String {
        format!("--{}", self.key.replace('_', "-"))
    }

    /// `ELECTD_READ_HEADER_TIMEOUT` for `read_header_timeout`.
    pub fn env(&self) -> String {
        format!("ELECTD_{}", self.key.to_ascii_uppercase())
    }

    /// The help line with its default, as `--help` and the man pages show it.
    pub fn help_with_default(&self) -> String {
        match self.default {
            Default::Value(v) | Default::Computed(v) => format!("{} [default: {v}]", self.help),
            Default::Required => format!("{} (required)", self.help),
            Default::Unset => self.help.to_string(),
        }
    }
}

const fn spec(
    key: &'static str,
    value_name: &'static str,
    default: Default,
    scope: Scope,
    help: &'static str,
) -> Spec {
    Spec {
        key,
        value_name,
        help,
        default,
        scope,
        shape: Shape::One,
    }
}

const fn list(
    key: &'static str,
    value_name: &'static str,
    default: Default,
    scope: Scope,
    help: &'static str,
) -> Spec {
    Spec {
        shape: Shape::List,
        ..spec(key, value_name, default, scope, help)
    }
}

use self::Default::{Computed, Required, Unset, Value};
use Scope::{Both, Daemon, Run};

/// Every setting, in the order `--help` lists them.
pub const SETTINGS: &[Spec] = &[
    list(
        "endpoints",
        "URLS",
        Value("http://127.0.0.1:2379"),
        Both,
        "Comma-separated etcd URLs (http:// or https://)",
    ),
    spec(
        "election",
        "NAME",
        Required,
        Both,
        "Election name: the etcd key prefix every replica shares",
    ),
    spec(
        "id",
        "ID",
        Computed("the host name"),
        Both,
        "This member's id",
    ),
    spec(
        "ttl",
        "DURATION",
        Value("10s"),
        Both,
        "Lease TTL, whole seconds, at least 2s",
    ),
    spec(
        "http",
        "ADDR",
        Value("127.0.0.1:4040"),
        Daemon,
        "HTTP API address HOST:PORT, or `off`",
    ),
    spec(
        "socket",
        "PATH",
        Unset,
        Daemon,
        "Unix socket for the API, including control actions (resign, pause, resume)",
    ),
    spec(
        "socket_mode",
        "MODE",
        Value("0660"),
        Daemon,
        "File mode of the socket, octal",
    ),
    spec(
        "socket_group",
        "GROUP",
        Unset,
        Daemon,
        "Group that owns the socket file (name or gid)",
    ),
    spec(
        "read_header_timeout",
        "DURATION",
        Value("10s"),
        Daemon,
        "Time an API client has to send a request's headers; also closes idle connections (100ms to 10m)",
    ),
    list(
        "control_uids",
        "UIDS",
        Unset,
        Daemon,
        "Extra uids allowed to send control requests over the socket (own uid and root always may)",
    ),
    list(
        "control_gids",
        "GIDS",
        Unset,
        Daemon,
        "Gids allowed to send control requests over the socket",
    ),
    spec(
        "stop_signal",
        "SIGNAL",
        Value("SIGTERM"),
        Both,
        "Signal that asks the command to stop",
    ),
    spec(
        "stop_grace",
        "DURATION",
        Value("3s"),
        Both,
        "How long the command may take to stop before its process group is killed",
    ),
    spec(
        "on_exit",
        "POLICY",
        Value("restart"),
        Daemon,
        "When the command exits while leader: restart, resign or exit",
    ),
    spec(
        "health_cmd",
        "CMD",
        Unset,
        Daemon,
        "Check this replica's app with `sh -c CMD` (exit 0 = pass); an unhealthy replica leaves the election",
    ),
    spec(
        "health_url",
        "URL",
        Unset,
        Daemon,
        "Check this replica's app with GET URL (http://HOST:PORT/PATH; 2xx = pass), instead of --health-cmd",
    ),
    spec(
        "health_interval",
        "DURATION",
        Value("2s"),
        Daemon,
        "How often the health check runs",
    ),
    spec(
        "health_timeout",
        "DURATION",
        Value("2s"),
        Daemon,
        "A health check that takes longer fails (a command is killed)",
    ),
    spec(
        "health_rise",
        "N",
        Value("2"),
        Daemon,
        "Passes in a row that make an unhealthy replica healthy (it starts unhealthy)",
    ),
    spec(
        "health_fall",
        "N",
        Value("3"),
        Daemon,
        "Failures in a row that make a healthy replica unhealthy",
    ),
    spec(
        "priority",
        "N",
        Value("1"),
        Daemon,
        "0 to 1000: among eligible candidates the highest leads; 0 never campaigns (an observer)",
    ),
    spec(
        "takeover_delay",
        "DURATION",
        Value("30s"),
        Daemon,
        "How long a candidate of higher priority waits before a running leader hands over to it, or `off` (never pre-empt)",
    ),
    spec(
        "start_guard",
        "DURATION",
        Value("250ms"),
        Both,
        "How long to wait before leading when the leader before us vanished without a clean release (its lease expired or was revoked, its key deleted): time for a deposed leader to have killed its command; `0s` to start at once",
    ),
    spec(
        "balance",
        "BOOL",
        Value("false"),
        Daemon,
        "With several elections ([[elections]] in the config file): spread leadership evenly over the replicas that serve the same elections",
    ),
    spec(
        "balance_delay",
        "DURATION",
        Value("5s"),
        Daemon,
        "With --balance: how long after a change of leadership a replica above its share waits before it hands an election over",
    ),
    spec(
        "state_file",
        "PATH",
        Unset,
        Daemon,
        "File where electd keeps the highest etcd revision it has seen across its own restarts, so that after etcd is rebuilt from empty it never leads with a fencing token handed out before (its directory must exist); without it nothing is kept",
    ),
    spec(
        "advertise",
        "HOST:PORT",
        Unset,
        Daemon,
        "Address of this replica's app, published to the others: where clients reach it when it leads",
    ),
    spec(
        "proxy",
        "ADDR",
        Unset,
        Daemon,
        "Listen on ADDR (HOST:PORT) and forward each connection to the current leader's advertised address",
    ),
    spec(
        "proxy_wait",
        "DURATION",
        Computed("the TTL"),
        Daemon,
        "How long a proxied connection waits for a leader before it is closed",
    ),
    spec(
        "on_role_change",
        "CMD",
        Unset,
        Daemon,
        "Run `sh -c CMD` on every change of this replica's role (ELECTD_ROLE, ELECTD_PREV_ROLE, ... in its environment)",
    ),
    spec(
        "on_role_change_timeout",
        "DURATION",
        Value("10s"),
        Daemon,
        "A role-change hook still running after this long is killed",
    ),
    spec(
        "etcd_ca",
        "PATH",
        Unset,
        Both,
        "CA certificate (PEM) to verify etcd's TLS certificate",
    ),
    spec(
        "etcd_cert",
        "PATH",
        Unset,
        Both,
        "Client certificate (PEM) for mutual TLS with etcd",
    ),
    spec(
        "etcd_key",
        "PATH",
        Unset,
        Both,
        "Client private key (PEM) for mutual TLS with etcd",
    ),
    spec(
        "etcd_user",
        "USER",
        Unset,
        Both,
        "etcd user name; the password comes from --etcd-password-file or ELECTD_ETCD_PASSWORD",
    ),
    spec(
        "etcd_password_file",
        "PATH",
        Unset,
        Both,
        "File holding the etcd password (never pass passwords as flag values)",
    ),
    spec(
        "log_level",
        "LEVEL",
        Value("info"),
        Both,
        "Log level: error, warn, info, debug, trace",
    ),
    spec(
        "log_format",
        "FORMAT",
        Value("text"),
        Both,
        "Log format: text or json",
    ),
    spec(
        "wait",
        "DURATION",
        Value("0s"),
        Run,
        "How long to wait to become leader. 0: decide at the first election read; if another \
         replica leads, exit 75 at once. etcd counts as unreachable (69) when no election read \
         succeeds within max(--wait, 5s)",
    ),
    spec(
        "once_per",
        "DURATION",
        Unset,
        Run,
        "Run at most once per schedule slot (wall-clock time floored to DURATION, e.g. 1m, 1h, \
         24h), recorded in etcd at `<election>.slots/<slot start, unix seconds>`. A replica \
         that finds its slot taken (running or done) exits 75",
    ),
];

/// The spec of `key`. Every key [`super::Layers::resolve`] reads is in the table (a unit test
/// checks both directions), so a miss is a programming error.
pub fn spec_of(key: &str) -> &'static Spec {
    SETTINGS
        .iter()
        .find(|s| s.key == key)
        .unwrap_or_else(|| panic!("invariant: setting `{key}` is in config::table::SETTINGS"))
}

/// Every TOML key, in table order.
pub fn known_keys() -> Vec<&'static str> {
    SETTINGS.iter().map(|s| s.key).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_and_variables_follow_the_key() {
        let s = spec_of("read_header_timeout");
        assert_eq!(s.flag(), "--read-header-timeout");
        assert_eq!(s.env(), "ELECTD_READ_HEADER_TIMEOUT");
        assert_eq!(spec_of("etcd_password_file").flag(), "--etcd-password-file");
    }

    #[test]
    fn keys_are_unique_and_snake_case() {
        let mut seen = std::collections::BTreeSet::new();
        for s in SETTINGS {
            assert!(seen.insert(s.key), "duplicate key {}", s.key);
            assert!(
                s.key
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'),
                "{}",
                s.key
            );
        }
    }
}
