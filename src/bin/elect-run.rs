//! `elect-run`: run a cron-style job on exactly one replica. Parses arguments and hands over to
//! [`electd::run`].

use std::path::PathBuf;

use clap::Parser;
use electd::cli::{CommonArgs, init_logging};
use electd::config::EXIT_CONFIG;
use electd::run::{EXIT_CODES_HELP, RunOptions};

/// Run CMD on exactly one replica: campaign in the etcd election, run CMD if elected, resign
/// when it ends. Every replica's cron can fire `elect-run --election nightly -- ./job`.
#[derive(Debug, Parser)]
#[command(name = "elect-run", version, after_help = EXIT_CODES_HELP)]
struct Cli {
    #[command(flatten)]
    common: CommonArgs,
    /// How long to wait to become leader. 0 (default): decide at the first election read; if
    /// another replica leads, exit 75 at once. etcd counts as unreachable (69) when no
    /// election read succeeds within max(--wait, 5s).
    #[arg(long, value_name = "DURATION")]
    wait: Option<String>,
    /// Run at most once per schedule slot (wall-clock time floored to DURATION, e.g. 1m, 1h,
    /// 24h), recorded in etcd at `<election>.slots/<slot start, unix seconds>`. A replica that
    /// finds its slot taken (running or done) exits 75.
    #[arg(long, value_name = "DURATION")]
    once_per: Option<String>,
    /// Instead of campaigning, ask the local electd on this Unix socket and run CMD only if it
    /// leads right now (stopped, exit 76, when it stops leading). No lease is held by
    /// elect-run: the guarantee is electd's.
    #[arg(long, value_name = "PATH")]
    socket: Option<PathBuf>,
    /// Log what was decided and why, to stderr (at info; without -v or --log-level only
    /// warnings and errors are printed).
    #[arg(short, long)]
    verbose: bool,
    /// The command to run on the elected replica.
    #[arg(last = true, required = true, value_name = "CMD")]
    command: Vec<String>,
}

fn main() {
    let cli: Cli = electd::cli::watchdog_or_parse();
    let config_error = |e: &dyn std::fmt::Display| -> ! {
        eprintln!("elect-run: configuration error: {e}");
        std::process::exit(EXIT_CONFIG);
    };
    let mut opts = RunOptions::from_flags(
        cli.wait.as_deref(),
        cli.once_per.as_deref(),
        cli.socket.clone(),
        cli.command.clone(),
    )
    .unwrap_or_else(|e| config_error(&e));
    let mut layers = cli
        .common
        .layers(|_| {})
        .unwrap_or_else(|e| config_error(&e));
    let given = |get: fn(&electd::config::Settings) -> bool| {
        get(&layers.flags) || get(&layers.env) || layers.file.as_ref().is_some_and(|(_, f)| get(f))
    };
    let level_given = given(|s| s.log_level.is_some());
    opts.election_given = given(|s| s.election.is_some());
    if opts.socket.is_some() && !opts.election_given {
        // With --socket the election is electd's; this placeholder only satisfies validation.
        layers.flags.election = Some("electd".into());
    }
    let config = layers.resolve(true).unwrap_or_else(|e| config_error(&e));
    let level = match (level_given, cli.verbose) {
        (true, _) => config.log_level.as_str(),
        (false, true) => "info",
        (false, false) => "warn",
    };
    init_logging(level, config.log_format);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("invariant: a current-thread runtime can be built");
    let code = match runtime.block_on(electd::run::run(config, opts)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("elect-run: {e}");
            e.exit_code()
        }
    };
    std::process::exit(code);
}
