//! `electd`: the leader-election daemon. Parses arguments and hands over to the library.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use electd::cli::{CommonArgs, init_logging};
use electd::config::{EXIT_CONFIG, Endpoints};

/// Elect exactly one leader among replicas through etcd; optionally run CMD only while leader.
#[derive(Debug, Parser)]
#[command(
    name = "electd",
    version,
    args_conflicts_with_subcommands = true,
    after_help = "Exit codes: 0 after a clean shutdown; the command's code with --on-exit exit; \
                  64 usage error; 69 etcd refused us (credentials, permissions); 78 configuration error."
)]
struct Cli {
    #[command(subcommand)]
    sub: Option<Sub>,
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
    /// Group that owns the socket file (name or gid).
    #[arg(long, value_name = "GROUP")]
    socket_group: Option<String>,
    /// Time an API client has to send a request's headers; also closes idle connections
    /// [default: 10s].
    #[arg(long, value_name = "DURATION")]
    read_header_timeout: Option<String>,
    /// Extra uids allowed to send control requests over the socket (own uid and root always may).
    #[arg(long, value_name = "UIDS")]
    control_uids: Option<String>,
    /// Gids allowed to send control requests over the socket.
    #[arg(long, value_name = "GIDS")]
    control_gids: Option<String>,
    /// When the command exits while leader: restart, resign or exit [default: restart].
    #[arg(long, value_name = "POLICY")]
    on_exit: Option<String>,
    /// The command to run while this replica leads.
    #[arg(last = true, value_name = "CMD")]
    command: Vec<String>,
}

#[derive(Debug, Subcommand)]
enum Sub {
    /// Show the election: leader, fencing token, every member in queue order, this replica.
    Status(Box<StatusArgs>),
    /// Hand leadership off now (stop the command first); a no-op on a follower.
    Resign(SocketArg),
    /// Leave the election (stopping the command if leading) until resumed.
    Pause(SocketArg),
    /// Rejoin the election after a pause.
    Resume(SocketArg),
}

#[derive(Debug, Args)]
struct SocketArg {
    /// The local electd's socket.
    #[arg(long, value_name = "PATH", env = "ELECTD_SOCKET")]
    socket: PathBuf,
}

#[derive(Debug, Args)]
struct StatusArgs {
    /// Ask the local electd over its socket; without it, read the election from etcd
    /// (--endpoints/--election, ELECTD_* or --config).
    #[arg(long, value_name = "PATH")]
    socket: Option<PathBuf>,
    /// Print the status document as JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    common: CommonArgs,
}

fn subcommand(sub: Sub) -> i32 {
    use electd::ctl;
    let fail = |e: ctl::CtlError| {
        eprintln!("electd: {e}");
        e.exit_code()
    };
    match sub {
        Sub::Status(a) => {
            let doc = match &a.socket {
                Some(path) => ctl::status_from_socket(path),
                None => {
                    let config = match a.common.layers(|_| {}).and_then(|l| l.resolve(false)) {
                        Ok(c) => c,
                        Err(e) => {
                            eprintln!("electd: configuration error: {e}");
                            return EXIT_CONFIG;
                        }
                    };
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .expect("invariant: a current-thread runtime can be built");
                    rt.block_on(ctl::status_from_etcd(&config))
                }
            };
            match doc {
                Ok(doc) if a.json => {
                    println!("{doc:#}");
                    0
                }
                Ok(doc) => {
                    print!("{}", ctl::render_status(&doc));
                    0
                }
                Err(e) => fail(e),
            }
        }
        Sub::Resign(a) => action(&a.socket, "resign"),
        Sub::Pause(a) => action(&a.socket, "pause"),
        Sub::Resume(a) => action(&a.socket, "resume"),
    }
}

/// Send a control action; exit 0 when it took effect, 1 when it changed nothing.
fn action(socket: &std::path::Path, name: &str) -> i32 {
    match electd::ctl::control(socket, name) {
        Ok(doc) => {
            println!("{doc}");
            let acted = ["resigned", "paused", "resumed"]
                .iter()
                .any(|k| doc[*k] == true);
            if acted { 0 } else { 1 }
        }
        Err(e) => {
            eprintln!("electd: {e}");
            e.exit_code()
        }
    }
}

fn main() {
    let cli: Cli = electd::cli::watchdog_or_parse();
    if let Some(sub) = cli.sub {
        std::process::exit(subcommand(sub));
    }
    let config = cli
        .common
        .layers(|s| {
            s.http = cli.http.clone();
            s.socket = cli.socket.clone();
            s.socket_mode = cli.socket_mode.clone();
            s.socket_group = cli.socket_group.clone();
            s.read_header_timeout = cli.read_header_timeout.clone();
            s.control_uids = cli.control_uids.clone().map(Endpoints::One);
            s.control_gids = cli.control_gids.clone().map(Endpoints::One);
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
            if let Some(hint) = e.hint() {
                eprintln!("electd: hint: {hint}");
            }
            e.exit_code()
        }
    };
    std::process::exit(code);
}
