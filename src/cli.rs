//! Command-line flags shared by `electd` and `elect-run`, and logging set-up. Flags are turned
//! into a [`Settings`] layer; [`crate::config`] merges and validates.

use std::path::PathBuf;

use clap::Args;

use crate::config::{self, ConfigError, Endpoints, Layers, LogFormat, Settings};

/// Flags that mean the same in both binaries.
#[derive(Debug, Clone, Args)]
pub struct CommonArgs {
    /// TOML config file; flags and ELECTD_* variables override its values.
    #[arg(long, value_name = "PATH", env = "ELECTD_CONFIG")]
    pub config: Option<PathBuf>,
    /// Comma-separated etcd URLs [default: http://127.0.0.1:2379].
    #[arg(long, value_name = "URLS")]
    pub endpoints: Option<String>,
    /// Election name: the etcd key prefix every replica shares (required).
    #[arg(long, value_name = "NAME")]
    pub election: Option<String>,
    /// This member's id [default: the host name].
    #[arg(long, value_name = "ID")]
    pub id: Option<String>,
    /// Lease TTL, whole seconds, at least 2s [default: 10s].
    #[arg(long, value_name = "DURATION")]
    pub ttl: Option<String>,
    /// Signal that asks the command to stop [default: SIGTERM].
    #[arg(long, value_name = "SIGNAL")]
    pub stop_signal: Option<String>,
    /// How long the command may take to stop before its process group is killed [default: 3s].
    #[arg(long, value_name = "DURATION")]
    pub stop_grace: Option<String>,
    /// CA certificate (PEM) to verify etcd's TLS certificate.
    #[arg(long, value_name = "PATH")]
    pub etcd_ca: Option<String>,
    /// Client certificate (PEM) for mutual TLS with etcd.
    #[arg(long, value_name = "PATH")]
    pub etcd_cert: Option<String>,
    /// Client private key (PEM) for mutual TLS with etcd.
    #[arg(long, value_name = "PATH")]
    pub etcd_key: Option<String>,
    /// etcd user name; the password comes from --etcd-password-file or ELECTD_ETCD_PASSWORD.
    #[arg(long, value_name = "USER")]
    pub etcd_user: Option<String>,
    /// File holding the etcd password (never pass passwords as flag values).
    #[arg(long, value_name = "PATH")]
    pub etcd_password_file: Option<String>,
    /// Log level: error, warn, info, debug, trace [default: info].
    #[arg(long, value_name = "LEVEL")]
    pub log_level: Option<String>,
    /// Log format: text or json [default: text].
    #[arg(long, value_name = "FORMAT")]
    pub log_format: Option<String>,
}

impl CommonArgs {
    /// This flag layer as settings.
    pub fn settings(&self) -> Settings {
        Settings {
            endpoints: self.endpoints.clone().map(Endpoints::One),
            election: self.election.clone(),
            id: self.id.clone(),
            ttl: self.ttl.clone(),
            stop_signal: self.stop_signal.clone(),
            stop_grace: self.stop_grace.clone(),
            etcd_ca: self.etcd_ca.clone(),
            etcd_cert: self.etcd_cert.clone(),
            etcd_key: self.etcd_key.clone(),
            etcd_user: self.etcd_user.clone(),
            etcd_password_file: self.etcd_password_file.clone(),
            log_level: self.log_level.clone(),
            log_format: self.log_format.clone(),
            ..Settings::default()
        }
    }

    /// Build the three layers: these flags (plus `extra`), the environment, the config file.
    pub fn layers(&self, extra: impl FnOnce(&mut Settings)) -> Result<Layers, ConfigError> {
        let mut flags = self.settings();
        extra(&mut flags);
        let file = match &self.config {
            Some(path) => Some((path.clone(), config::load_file(path)?)),
            None => None,
        };
        Ok(Layers {
            flags,
            env: config::from_env(|k| std::env::var(k).ok()),
            file,
        })
    }
}

/// The start of both binaries' `main`: become the freeze watchdog when asked to (the hidden
/// first argument), else parse the arguments, exiting 64 on a usage error (0 for --help).
pub fn watchdog_or_parse<P: clap::Parser>() -> P {
    use crate::supervisor::watchdog::{WATCHDOG_ARG, run_watchdog};
    if std::env::args().nth(1).as_deref() == Some(WATCHDOG_ARG) {
        std::process::exit(run_watchdog());
    }
    match P::try_parse() {
        Ok(p) => p,
        Err(e) => {
            let code = if e.use_stderr() {
                crate::config::EXIT_USAGE
            } else {
                0
            };
            let _ = e.print();
            std::process::exit(code);
        }
    }
}

/// Install the tracing subscriber on stderr. `level` is the configured default; `RUST_LOG`
/// refines it when set.
pub fn init_logging(level: &str, format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(format!("warn,electd={level}")));
    // Colours only on a terminal: logs collected by journald, Kubernetes or cron mail stay
    // plain.
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Text => builder.init(),
    }
}
