//! The command lines of both binaries (clap definitions, also used to generate the man pages and
//! shell completions) and logging set-up. Setting flags are generated from
//! [`crate::config::table`], so each setting is declared once; [`crate::config`] merges and
//! validates the layers.

use std::path::{Path, PathBuf};

use clap::{ArgMatches, Args, Parser, Subcommand};

use crate::config::table::{SETTINGS, Scope, Spec};
use crate::config::{self, ConfigError, Layers, LogFormat, Raw, Settings};
use crate::exit;

/// The setting flags of one command line: which table settings it takes, by [`Scope`].
#[derive(Debug, Clone, Default)]
pub struct Flags<const FOR: u8> {
    pub settings: Settings,
}

/// [`Flags`] for `electd`: every setting but elect-run's own.
pub const ELECTD: u8 = 0;
/// [`Flags`] for `electd status`: the settings both binaries share.
pub const SHARED: u8 = 1;
/// [`Flags`] for `elect-run`: the shared settings and its own.
pub const ELECT_RUN: u8 = 2;

/// `electd`'s setting flags.
pub type DaemonFlags = Flags<ELECTD>;
/// The setting flags `electd status` shares with both binaries.
pub type SharedFlags = Flags<SHARED>;
/// `elect-run`'s setting flags.
pub type RunFlags = Flags<ELECT_RUN>;

impl<const FOR: u8> Flags<FOR> {
    /// Whether this command line takes the settings of `scope` as flags.
    pub fn takes(scope: Scope) -> bool {
        matches!(
            (FOR, scope),
            (_, Scope::Both) | (ELECTD, Scope::Daemon) | (ELECT_RUN, Scope::Run)
        )
    }

    fn specs() -> impl Iterator<Item = &'static Spec> {
        SETTINGS.iter().filter(|s| Self::takes(s.scope))
    }
}

impl<const FOR: u8> clap::FromArgMatches for Flags<FOR> {
    fn from_arg_matches(m: &ArgMatches) -> Result<Self, clap::Error> {
        let mut settings = Settings::default();
        for spec in Self::specs() {
            if let Some(v) = m.get_one::<String>(spec.key) {
                settings.insert(spec.key, Raw::One(v.clone()));
            }
        }
        Ok(Flags { settings })
    }

    fn update_from_arg_matches(&mut self, m: &ArgMatches) -> Result<(), clap::Error> {
        *self = Self::from_arg_matches(m)?;
        Ok(())
    }
}

impl<const FOR: u8> Args for Flags<FOR> {
    fn augment_args(cmd: clap::Command) -> clap::Command {
        Self::specs().fold(cmd, |cmd, spec| {
            cmd.arg(
                clap::Arg::new(spec.key)
                    .long(spec.key.replace('_', "-"))
                    .value_name(spec.value_name)
                    .help(spec.help_with_default())
                    .action(clap::ArgAction::Set),
            )
        })
    }

    fn augment_args_for_update(cmd: clap::Command) -> clap::Command {
        Self::augment_args(cmd)
    }
}

/// The config file flag, shared by every command that reads settings.
#[derive(Debug, Clone, Args)]
pub struct ConfigFile {
    /// TOML config file; flags and ELECTD_* variables override its values.
    #[arg(long, value_name = "PATH", env = "ELECTD_CONFIG")]
    pub config: Option<PathBuf>,
}

impl ConfigFile {
    /// The three layers: `flags`, the environment, the config file.
    pub fn layers(&self, flags: Settings) -> Result<Layers, ConfigError> {
        layers(self.config.as_deref(), flags)
    }
}

/// The layers for `flags`, the process environment and the config file at `file`.
pub fn layers(file: Option<&Path>, flags: Settings) -> Result<Layers, ConfigError> {
    let file = match file {
        Some(path) => Some((path.to_path_buf(), config::load_file(path)?)),
        None => None,
    };
    Ok(Layers {
        flags,
        env: config::from_env(|k| std::env::var(k).ok()),
        file,
    })
}

/// Elect exactly one leader among replicas through etcd; optionally run CMD only while leader.
#[derive(Debug, Parser)]
#[command(
    name = "electd",
    version = crate::VERSION,
    args_conflicts_with_subcommands = true,
    after_help = "Exit codes: 0 after a clean shutdown; the command's code with --on-exit exit; \
                  64 usage error; 69 etcd refused us (credentials, permissions); 71 cannot \
                  listen or start the watchdog; 78 configuration error."
)]
pub struct ElectdCli {
    #[command(subcommand)]
    pub sub: Option<Sub>,
    #[command(flatten)]
    pub config: ConfigFile,
    #[command(flatten)]
    pub flags: DaemonFlags,
    /// The command to run while this replica leads.
    #[arg(last = true, value_name = "CMD")]
    pub command: Vec<String>,
}

#[derive(Debug, Subcommand)]
pub enum Sub {
    /// Show the election: leader, fencing token, every member in queue order, this replica.
    Status(Box<StatusArgs>),
    /// Hand leadership off now (stop the command first); a no-op on a follower. With --to,
    /// hand it to that candidate and wait until it leads.
    Resign(ResignArgs),
    /// Leave the election (stopping the command if leading) until resumed.
    Pause(SocketArg),
    /// Rejoin the election after a pause.
    Resume(SocketArg),
}

#[derive(Debug, Args)]
pub struct SocketArg {
    /// The local electd's socket.
    #[arg(long, value_name = "PATH", env = "ELECTD_SOCKET")]
    pub socket: PathBuf,
}

#[derive(Debug, Args)]
pub struct ResignArgs {
    #[command(flatten)]
    pub socket: SocketArg,
    /// Hand leadership to the candidate with this id (a switchover), even when it is not next
    /// in the queue; exits 1 when it is not an eligible candidate, or does not take over in time.
    #[arg(long, value_name = "ID")]
    pub to: Option<String>,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Ask the local electd over its socket; without it, read the election from etcd
    /// (--endpoints/--election, ELECTD_* or --config).
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// Print the status document as JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub config: ConfigFile,
    #[command(flatten)]
    pub flags: SharedFlags,
}

/// Run CMD on exactly one replica: campaign in the etcd election, run CMD if elected, resign
/// when it ends. Every replica's cron can fire `elect-run --election nightly -- ./job`.
#[derive(Debug, Parser)]
#[command(name = "elect-run", version = crate::VERSION, after_help = crate::run::EXIT_CODES_HELP)]
pub struct ElectRunCli {
    #[command(flatten)]
    pub config: ConfigFile,
    #[command(flatten)]
    pub flags: RunFlags,
    /// Instead of campaigning, ask the local electd on this Unix socket and run CMD only if it
    /// leads right now (stopped, exit 76, when it stops leading). No lease is held by
    /// elect-run: the guarantee is electd's.
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// Log what was decided and why, to stderr (at info; without -v or --log-level only
    /// warnings and errors are printed).
    #[arg(short, long)]
    pub verbose: bool,
    /// The command to run on the elected replica.
    #[arg(last = true, required = true, value_name = "CMD")]
    pub command: Vec<String>,
}

/// The start of both binaries' `main`: become the freeze watchdog when asked to (the hidden
/// first argument), else parse the arguments, exiting 64 on a usage error (0 for --help).
pub fn watchdog_or_parse<P: Parser>() -> P {
    use crate::supervisor::watchdog::{WATCHDOG_ARG, run_watchdog};
    if std::env::args().nth(1).as_deref() == Some(WATCHDOG_ARG) {
        std::process::exit(run_watchdog());
    }
    match P::try_parse() {
        Ok(p) => p,
        Err(e) => {
            let code = if e.use_stderr() { exit::USAGE } else { 0 };
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

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn every_setting_is_a_flag_of_the_binaries_in_its_scope() {
        let electd = ElectdCli::command();
        let run = ElectRunCli::command();
        for spec in SETTINGS {
            let long = spec.key.replace('_', "-");
            // By flag and help text: elect-run's own --socket means something else.
            let help = spec.help_with_default();
            let has = |c: &clap::Command| {
                c.get_arguments().any(|a| {
                    a.get_long() == Some(&long)
                        && a.get_help().map(|h| h.to_string()) == Some(help.clone())
                })
            };
            assert_eq!(
                has(&electd),
                spec.scope != Scope::Run,
                "electd and {}",
                spec.flag()
            );
            assert_eq!(
                has(&run),
                spec.scope != Scope::Daemon,
                "elect-run and {}",
                spec.flag()
            );
        }
        ElectdCli::command().debug_assert();
        ElectRunCli::command().debug_assert();
    }

    #[test]
    fn flags_become_the_top_layer() {
        let cli = ElectdCli::try_parse_from(["electd", "--ttl", "5s", "--election", "e"]).unwrap();
        assert_eq!(cli.flags.settings.get("ttl"), Some(&Raw::One("5s".into())));
        assert_eq!(
            cli.flags.settings.get("election"),
            Some(&Raw::One("e".into()))
        );
        assert!(!cli.flags.settings.contains("id"));
    }
}
