//! `electd`: the leader-election daemon. Parses arguments and hands over to the library.

use electd::cli::{ElectdCli, init_logging};
use electd::exit;

fn main() {
    let cli: ElectdCli = electd::cli::watchdog_or_parse();
    if let Some(sub) = cli.sub {
        std::process::exit(electd::ctl::run(sub));
    }
    let has_command = !cli.command.is_empty();
    let config = cli
        .config
        .layers(cli.flags.settings)
        .and_then(|layers| layers.resolve(has_command));
    let config = match config {
        Ok(c) => c,
        Err(e) => {
            eprintln!("electd: configuration error: {e}");
            std::process::exit(exit::CONFIG);
        }
    };
    init_logging(&config.log_level, config.log_format);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("invariant: a current-thread runtime can be built");
    let code = match runtime.block_on(electd::daemon::run(config, cli.command)) {
        Ok(code) => code,
        Err(e) => {
            tracing::error!(error = %e, "electd failed");
            eprintln!("electd: {e}");
            if let Some(hint) = e.hint() {
                eprintln!("electd: hint: {hint}");
            }
            e.exit_code()
        }
    };
    std::process::exit(code);
}
