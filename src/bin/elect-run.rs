//! `elect-run`: run a cron-style job on exactly one replica. Parses arguments and hands over to
//! [`electd::run`].

use electd::cli::{ElectRunCli, init_logging};
use electd::exit;
use electd::run::RunOptions;

fn main() {
    let cli: ElectRunCli = electd::cli::watchdog_or_parse();
    let config_error = |e: &dyn std::fmt::Display| -> ! {
        eprintln!("elect-run: configuration error: {e}");
        std::process::exit(exit::CONFIG);
    };
    let mut layers = cli
        .config
        .layers(cli.flags.settings)
        .map(electd::config::Layers::for_elect_run)
        .unwrap_or_else(|e| config_error(&e));
    let opts = RunOptions::from_layers(&layers, cli.socket.clone(), cli.command.clone())
        .unwrap_or_else(|e| config_error(&e));
    let level_given = layers.given("log_level");
    if opts.socket.is_some() && !opts.election_given {
        // With --socket the election is electd's; this placeholder only satisfies validation.
        layers
            .flags
            .insert("election", electd::config::Raw::One("electd".into()));
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
