//! Sources of leadership: what the [`super::Leadership`] loop decides on. A source turns what
//! it sees into the role machine's [`Observed`] facts and carries out the machine's
//! `Release`/`ResumeElection` actions.
//!
//! - [`ElectionSource`]: this process's own election (a backend driver), for electd and
//!   elect-run.
//! - [`SocketSource`]: the local electd's `/role` over its socket, for `elect-run --socket`:
//!   no lease is held here; electd's leadership term (its fencing token) stands in for the
//!   lease, and a poll that fails counts as leadership lost.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep_until};
use tracing::{debug, warn};

use crate::api::doc::{LeaderDoc, RoleDoc};
use crate::config::Timing;
use crate::election::etcd::{EtcdBackend, EtcdError};
use crate::election::role::{Observed, RoleKind};
use crate::election::{After, DriverConfig, DriverHandle, ElectionView, Position, Telemetry};

/// What the leadership loop decides on.
#[allow(async_fn_in_trait)] // the loop runs on one thread; no Send bound is needed
pub trait Source {
    /// Why a source ended for good.
    type Ended: std::fmt::Display;

    /// The facts the role machine decides on, as of now.
    fn observed(&self) -> Observed;

    /// Wait until what the source sees may have changed. Cancel-safe.
    async fn changed(&mut self) -> Result<(), Self::Ended>;

    /// How long after `last_ok_sent` this replica may lead (the role machine's budget).
    fn leader_budget(&self) -> Duration;

    /// The latest moment the command may still run, while leading: the freeze watchdog kills
    /// it then even if this process is frozen.
    fn kill_deadline(&self) -> Option<Instant>;

    /// Give up the current session (if any), then do `after`.
    async fn release(&mut self, after: After);

    /// Campaign again after a pause.
    async fn resume(&mut self);
}

/// This process's own election, run by a backend driver task.
pub struct ElectionSource {
    view: watch::Receiver<ElectionView>,
    handle: DriverHandle,
    timing: Timing,
    driver: Option<JoinHandle<Result<(), EtcdError>>>,
}

impl ElectionSource {
    /// Start campaigning in `cfg.election` on `backend`.
    pub fn start(
        backend: &EtcdBackend,
        cfg: DriverConfig,
        telemetry: Arc<dyn Telemetry>,
    ) -> ElectionSource {
        let timing = cfg.timing;
        let (driver, handle, view) = backend.driver(cfg);
        let driver = tokio::spawn(driver.with_telemetry(telemetry).run());
        ElectionSource {
            view,
            handle,
            timing,
            driver: Some(driver),
        }
    }

    /// The driver's current view.
    pub fn view(&self) -> watch::Receiver<ElectionView> {
        self.view.clone()
    }

    /// While leading: announce that leadership goes to the candidate `to` (a switchover); its
    /// key, or why not.
    pub async fn hand_off(&self, to: &str) -> Result<String, String> {
        self.handle.hand_off(to).await
    }

    /// Leave the election (revoke the lease, so the next replica need not wait a TTL) and wait
    /// up to 2 s for the driver to end; its error, if it ended with one.
    pub async fn shutdown(mut self) -> Result<(), EtcdError> {
        self.handle.release(After::Stop).await;
        match self.driver.take() {
            Some(task) => match tokio::time::timeout(Duration::from_secs(2), task).await {
                Ok(Ok(r)) => r,
                Ok(Err(_)) => Ok(()),
                Err(_) => {
                    warn!("election driver did not stop within 2s");
                    Ok(())
                }
            },
            None => Ok(()),
        }
    }
}

/// The role machine's facts from a backend view.
pub fn observed(v: &ElectionView) -> Observed {
    Observed {
        lease: v.lease,
        position: v.position.clone(),
        last_ok_sent: v.last_ok_sent,
        reachable: v.reachable,
        handoff: v.handoff.clone(),
        refusal: v.refusal.clone(),
    }
}

impl Source for ElectionSource {
    type Ended = EtcdError;

    fn observed(&self) -> Observed {
        observed(&self.view.borrow())
    }

    async fn changed(&mut self) -> Result<(), EtcdError> {
        if self.view.changed().await.is_ok() {
            self.view.borrow_and_update();
            return Ok(());
        }
        // The driver ends on its own only with an unrecoverable error.
        let ended = match self.driver.take() {
            Some(task) => task.await.ok(),
            None => None,
        };
        Err(match ended {
            Some(Err(e)) => e,
            _ => EtcdError::Setup("the election driver stopped".into()),
        })
    }

    fn leader_budget(&self) -> Duration {
        self.timing.leader_budget()
    }

    fn kill_deadline(&self) -> Option<Instant> {
        self.view
            .borrow()
            .last_ok_sent
            .map(|sent| sent + self.timing.kill_budget())
    }

    async fn release(&mut self, after: After) {
        self.handle.release(after).await;
    }

    async fn resume(&mut self) {
        self.handle.resume().await;
    }
}

/// How often [`SocketSource`] asks electd.
pub const SOCKET_POLL: Duration = Duration::from_millis(500);
/// Deadline of one request to electd's socket.
pub const SOCKET_TIMEOUT: Duration = Duration::from_secs(2);
/// How long after a poll that showed electd leading the command may run without a newer
/// answer: a poll and its timeout, plus slack. A failed poll ends leadership at once; this is
/// the backstop for one that never returns.
pub const SOCKET_BUDGET: Duration = Duration::from_millis(3000);

/// The local electd's role, polled over its socket.
pub struct SocketSource {
    path: PathBuf,
    /// The last answer and when its request was sent.
    last: (Instant, Result<RoleDoc<'static>, String>),
    /// Whether `last` has not yet been reported by [`Source::changed`].
    fresh: bool,
    next_poll: Instant,
    /// The term (fencing token) electd was last seen `leader` in: a `suspect` electd keeps a
    /// command of that term running, but does not start one.
    term: Option<i64>,
}

impl SocketSource {
    /// Ask electd at `path` once; an error means electd cannot be reached.
    pub async fn connect(path: &Path) -> Result<SocketSource, String> {
        let sent = Instant::now();
        let doc = ask_role(path).await?;
        Ok(SocketSource {
            path: path.to_path_buf(),
            last: (sent, Ok(doc)),
            fresh: true,
            next_poll: sent + SOCKET_POLL,
            term: None,
        }
        .seen())
    }

    fn seen(mut self) -> SocketSource {
        self.note_term();
        self
    }

    /// Remember the term of a `leader` answer.
    fn note_term(&mut self) {
        if let Ok(doc) = &self.last.1
            && doc.role == RoleKind::Leader
        {
            self.term = doc.fencing_token;
        }
    }

    /// The last answer, or why the last poll failed.
    pub fn last(&self) -> Result<&RoleDoc<'static>, &str> {
        self.last.1.as_ref().map_err(|e| e.as_str())
    }
}

impl Source for SocketSource {
    type Ended = std::convert::Infallible;

    fn observed(&self) -> Observed {
        let (sent, answer) = &self.last;
        let doc = match answer {
            Ok(doc) => doc,
            Err(_) => {
                return Observed::default();
            }
        };
        let leader = doc.leader.as_ref().map(LeaderDoc::to_info);
        // electd's leadership term stands in for a lease: a new term is a new lease. A
        // suspect electd leads only for a command of a term it was seen leader in.
        let leads = match doc.role {
            RoleKind::Leader => true,
            RoleKind::Suspect => doc.fencing_token.is_some() && doc.fencing_token == self.term,
            _ => false,
        };
        let (lease, position) = match (leads, doc.fencing_token, leader) {
            (true, Some(token), Some(leader)) => (Some(token), Position::Leading { token, leader }),
            (_, _, leader) => (Some(0), Position::Waiting { leader }),
        };
        Observed {
            lease,
            position,
            last_ok_sent: Some(*sent),
            reachable: true,
            handoff: None,
            refusal: None,
        }
    }

    async fn changed(&mut self) -> Result<(), Self::Ended> {
        if std::mem::take(&mut self.fresh) {
            return Ok(());
        }
        sleep_until(self.next_poll).await;
        let sent = Instant::now();
        let answer = ask_role(&self.path).await;
        if let Err(e) = &answer {
            debug!(error = %e, "the local electd did not answer");
        }
        self.last = (sent, answer);
        self.next_poll = sent + SOCKET_POLL;
        self.note_term();
        Ok(())
    }

    fn leader_budget(&self) -> Duration {
        SOCKET_BUDGET
    }

    fn kill_deadline(&self) -> Option<Instant> {
        // The lease is electd's (and so is the guarantee); the watchdog here only covers
        // elect-run's own death.
        Some(Instant::now() + Duration::from_secs(86_400))
    }

    async fn release(&mut self, _after: After) {}

    async fn resume(&mut self) {}
}

/// `GET /role` from the local electd over its socket (blocking I/O off the runtime, bounded).
pub async fn ask_role(path: &Path) -> Result<RoleDoc<'static>, String> {
    let path = path.to_path_buf();
    let answer = tokio::task::spawn_blocking(move || {
        crate::api::client::request_within(&path, "GET", "/role", SOCKET_TIMEOUT)
    })
    .await
    .map_err(|e| format!("socket client task failed: {e}"))?
    .map_err(|e| e.to_string())?;
    match answer {
        (200, body) => serde_json::from_str(&body).map_err(|e| format!("/role is not JSON: {e}")),
        (code, _) => Err(format!("GET /role answered {code}")),
    }
}
