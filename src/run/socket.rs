//! elect-run `--socket`: ask the local electd and run CMD only while it leads. No lease is held
//! here: the guarantee is electd's, under the app contract (docs/app-contract.md). The
//! [`SocketSource`] long-polls electd (a change is seen at once, a fresh budget at least every
//! half second), and the command is stopped when electd no longer leads under the same fencing
//! token or when the budget of its last good answer runs out without a fresh one.

use std::path::Path;

use tokio::time::Instant;
use tracing::{info, warn};

use super::{RunError, RunOptions, Signals, supervisor};
use crate::config::{Config, OnExit};
use crate::exit;
use crate::leadership::{ExitPolicy, Identity, Leadership, Next, SocketSource};

pub(super) async fn run(
    config: &Config,
    opts: &RunOptions,
    path: &Path,
    signals: &mut Signals,
) -> Result<i32, RunError> {
    let give_up_at = Instant::now() + opts.wait;
    let socket_err = |reason: String| RunError::Socket {
        path: path.to_path_buf(),
        reason,
    };
    let source = SocketSource::connect(path, config.stop_grace)
        .await
        .map_err(socket_err)?;
    let first = source.last().expect("invariant: connect read an answer");
    let identity = Identity {
        id: first.id.to_string(),
        election: first.election.to_string(),
    };
    if opts.election_given && config.election != identity.election {
        return Err(RunError::Config(format!(
            "the electd at {} serves election {:?}, not {:?} (from --election); \
             point --socket at the right electd or drop --election",
            path.display(),
            identity.election,
            config.election
        )));
    }
    let mut lead = Leadership::new(source, None, ExitPolicy::new(OnExit::Exit), identity).once();
    let token = loop {
        match lead.next(signals.until(give_up_at)).await {
            Next::Event(event) => {
                if let Err(e) = lead.source().last() {
                    return Err(socket_err(e.to_string()));
                }
                if let Some((token, leader)) = lead.apply(event).await.elected {
                    info!(token, key = %leader.key, "local electd leads");
                    break token;
                }
                if Instant::now() >= give_up_at {
                    not_leading(lead.source());
                    return Ok(exit::NOT_ELECTED);
                }
            }
            Next::Input(Some(sig)) => {
                info!(signal = %sig, "signal received before the command started; giving up");
                return Ok(exit::NOT_ELECTED);
            }
            Next::Input(None) => {
                not_leading(lead.source());
                return Ok(exit::NOT_ELECTED);
            }
            Next::SourceEnded(never) => match never {},
            Next::CommandEnded(_) => unreachable!("no command runs before electd leads"),
        }
    };
    lead.set_command(supervisor(config, opts, false)?.0);
    if let Err((code, why)) = lead.start_command(token, Vec::new()) {
        eprintln!("elect-run: {why}");
        return Ok(code);
    }
    loop {
        match lead.next(signals.recv()).await {
            Next::Event(event) => {
                if lead.apply(event).await.lost.is_some() {
                    let reason = match lead.source().last() {
                        Ok(doc) => format!(
                            "the local electd is now {} (leader: {})",
                            doc.role,
                            doc.leader.as_ref().map_or("none", |l| &l.id)
                        ),
                        Err(e) => format!("the local electd stopped answering: {e}"),
                    };
                    warn!(reason, "leadership lost; the command was stopped");
                    return Err(RunError::Lost { reason });
                }
            }
            Next::Input(sig) => lead.forward(sig),
            Next::CommandEnded(exit) => {
                return Ok(exit.code);
            }
            Next::SourceEnded(never) => match never {},
        }
    }
}

fn not_leading(source: &SocketSource) {
    if let Ok(doc) = source.last() {
        info!(
            role = %doc.role, leader = doc.leader.as_ref().map_or("none", |l| &l.id),
            "local electd is not the leader; command not run"
        );
    }
}
