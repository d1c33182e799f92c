//! `electd`: the leader-election daemon. Parses arguments and hands over to the library.

use clap::Parser;
use electd::cli::{CommonArgs, init_logging};
use electd::config::{EXIT_CONFIG, EXIT_USAGE};
use electd::supervisor::watchdog::{WATCHDOG_ARG, run_watchdog};

/// Elect exactly one leader among replicas through etcd; optionally run CMD only while leader.
#[derive(Debug, Parser)]
#[command(
    name = "electd",
    version,
    after_help = "Exit codes: 0 after a clean shutdown; the command's code with --on-exit exit; \
                  64 usage error; 69 etcd refused us (credentials, permissions); 78 configuration error."
)]
struct Cli {
    #[command(flatten)]
    common: CommonArgs,
    /// HTTP API address HOST:PORT, or `off` [default: 127.0.0.1:4040].
    #[arg(long, value_name = "ADDR")]
    http: Option<String>,
    /// Unix socket for the API, including control actions (resign, pause, resume).
    #[arg(long, value_name = "PATH")]
    socket: Option<String>,
    /// File mode of the socket, octal [default: 0660].
    #[arg(long, value_name = "MODE")]
    socket_mode: Option<String>,
    /// When the command exits while leader: restart, resign or exit [default: restart].
    #[arg(long, value_name = "POLICY")]
    on_exit: Option<String>,
    /// The command to run while this replica leads.
    #[arg(last = true, value_name = "CMD")]
    command: Vec<String>,
}

fn main() {
    if std::env::args().nth(1).as_deref() == Some(WATCHDOG_ARG) {
        std::process::exit(run_watchdog());
    }
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { EXIT_USAGE } else { 0 };
            let _ = e.print();
            std::process::exit(code);
        }
    };
    let config = cli
        .common
        .layers(|s| {
            s.http = cli.http.clone();
            s.socket = cli.socket.clone();
            s.socket_mode = cli.socket_mode.clone();
            s.on_exit = cli.on_exit.clone();
        })
        .and_then(|layers| layers.resolve(!cli.command.is_empty()));
    let config = match config {
        Ok(c) => c,
        Err(e) => {
            eprintln!("electd: configuration error: {e}");
            std::process::exit(EXIT_CONFIG);
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
            e.exit_code()
        }
    };
    std::process::exit(code);
}
