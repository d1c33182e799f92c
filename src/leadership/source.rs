//! Sources of leadership: what the [`super::Leadership`] loop decides on. A source turns what
//! it sees into the role machine's [`Observed`] facts and carries out the machine's
//! `Release`/`ResumeElection` actions.
//!
//! - [`ElectionSource`]: this process's own election (a backend driver), for electd and
//!   elect-run.
//! - [`SocketSource`]: the local electd's `/role` over its socket, for `elect-run --socket`:
//!   no lease is held here; electd's leadership term (its fencing token) stands in for the
//!   lease, and the budget of electd's last good answer (`valid_ms`, counted from when it was
//!   asked) is the deadline — the app contract of docs/app-contract.md, followed by elect-run.

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
use crate::election::{
    After, DriverConfig, DriverHandle, ElectionView, Handover, LeaderInfo, Position, Telemetry,
};

/// What the leadership loop decides on.
#[allow(async_fn_in_trait)] // the loop runs on one thread; no Send bound is needed
pub trait Source {
    /// Why a source ended for good.
    type Ended: std::fmt::Display;

    /// The facts the role machine decides on, as of now.
    fn observed(&self) -> Observed;

    /// Wait until what the source sees may have changed. Cancel-safe.
    async fn changed(&mut self) -> Result<(), Self::Ended>;

    /// The latest moment the command may still run, while leading: the freeze watchdog kills
    /// it then even if this process is frozen.
    fn kill_deadline(&self) -> Option<Instant>;

    /// While leading under a lease of this process: what the freeze watchdog needs to hand the
    /// term over (mark the key, revoke the lease) should this process die.
    fn handover(&self) -> Option<Handover> {
        None
    }

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
    /// This replica's candidate value with the clean-release mark.
    mark: String,
}

impl ElectionSource {
    /// Start campaigning in `cfg.election` on `backend`.
    pub fn start(
        backend: &EtcdBackend,
        cfg: DriverConfig,
        telemetry: Arc<dyn Telemetry>,
    ) -> ElectionSource {
        let timing = cfg.timing;
        let mark = serde_json::to_string(&cfg.member.released())
            .expect("invariant: MemberInfo serialises");
        let (driver, handle, view) = backend.driver(cfg);
        let driver = tokio::spawn(driver.with_telemetry(telemetry).run());
        ElectionSource {
            view,
            handle,
            timing,
            driver: Some(driver),
            mark,
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

/// The role machine's facts from a backend view: the deadline counts from the last successful
/// keepalive sent ([`Timing::deadline`]).
pub fn observed(v: &ElectionView, timing: &Timing) -> Observed {
    Observed {
        lease: v.lease,
        position: v.position.clone(),
        deadline: v.last_ok_sent.map(|sent| timing.deadline(sent)),
        reachable: v.reachable,
        handoff: v.handoff.clone(),
        refusal: v.refusal.clone(),
        taken_away: true,
    }
}

impl Source for ElectionSource {
    type Ended = EtcdError;

    fn observed(&self) -> Observed {
        observed(&self.view.borrow(), &self.timing)
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

    fn kill_deadline(&self) -> Option<Instant> {
        self.view
            .borrow()
            .last_ok_sent
            .map(|sent| self.timing.kill_deadline(sent))
    }

    fn handover(&self) -> Option<Handover> {
        let v = self.view.borrow();
        match (&v.position, v.lease) {
            (Position::Leading { token, leader }, Some(lease)) => Some(Handover {
                lease,
                key: leader.key.clone(),
                revision: *token,
                mark: self.mark.clone(),
            }),
            _ => None,
        }
    }

    async fn release(&mut self, after: After) {
        self.handle.release(after).await;
    }

    async fn resume(&mut self) {
        self.handle.resume().await;
    }
}

/// How long one long poll of electd's `/role` waits for a change before it answers anyway (with
/// a fresh budget): a change is seen at once, a renewal at least this often.
pub const SOCKET_POLL: Duration = Duration::from_millis(500);
/// How long an answer may take beyond the long poll's wait before the ask counts as failed.
pub const SOCKET_TIMEOUT: Duration = Duration::from_secs(2);
/// How soon a failed ask is tried again.
const SOCKET_RETRY: Duration = Duration::from_millis(200);

/// What electd's last good answer allows: lead under `token` until `until` (the answer's
/// `valid_ms` from when it was asked).
#[derive(Debug, Clone)]
struct Claim {
    token: i64,
    leader: LeaderInfo,
    until: Instant,
}

/// The local electd's role, long-polled over its socket.
pub struct SocketSource {
    path: PathBuf,
    /// The last answer and when its request was sent.
    last: (Instant, Result<RoleDoc<'static>, String>),
    /// The budget of the last good answer that said electd leads; cleared by a good answer
    /// that says it does not. A failed ask leaves it: leadership ends when it runs out.
    claim: Option<Claim>,
    /// Whether `last` has not yet been reported by [`Source::changed`].
    fresh: bool,
    next_ask: Instant,
    /// The term (fencing token) electd was last seen `leader` in: a `suspect` electd keeps a
    /// command of that term running, but does not start one.
    term: Option<i64>,
    /// elect-run's own stop grace: the command is dead at the latest this long after the
    /// claim's end (the freeze watchdog's deadline).
    stop_grace: Duration,
}

impl SocketSource {
    /// Ask electd at `path` once; an error means electd cannot be reached, or it is too old to
    /// give a leadership budget.
    pub async fn connect(path: &Path, stop_grace: Duration) -> Result<SocketSource, String> {
        let sent = Instant::now();
        let doc = ask_role(path, None).await?;
        if doc.role.leads() && doc.valid_ms.is_none() {
            return Err(
                "electd answers without a leadership budget (`valid_ms` in /role): it is older \
                 than this elect-run; upgrade electd"
                    .into(),
            );
        }
        let mut source = SocketSource {
            path: path.to_path_buf(),
            last: (sent, Err("not asked yet".into())),
            claim: None,
            fresh: true,
            next_ask: sent,
            term: None,
            stop_grace,
        };
        source.take(sent, Ok(doc));
        Ok(source)
    }

    /// Take in an answer to the ask sent at `sent`.
    fn take(&mut self, sent: Instant, answer: Result<RoleDoc<'static>, String>) {
        if let Ok(doc) = &answer {
            if doc.role == RoleKind::Leader {
                self.term = doc.fencing_token;
            }
            self.claim = claim_of(doc, sent, self.term);
            self.next_ask = Instant::now();
        } else {
            self.next_ask = Instant::now() + SOCKET_RETRY;
        }
        self.last = (sent, answer);
    }

    /// The last answer, or why the last ask failed.
    pub fn last(&self) -> Result<&RoleDoc<'static>, &str> {
        self.last.1.as_ref().map_err(|e| e.as_str())
    }
}

/// The leadership an answer to an ask sent at `sent` allows: electd leads (a `suspect` electd
/// only in the term it was seen `leader` in) with a positive budget.
fn claim_of(doc: &RoleDoc<'_>, sent: Instant, term: Option<i64>) -> Option<Claim> {
    let leads = match doc.role {
        RoleKind::Leader => true,
        RoleKind::Suspect => doc.fencing_token.is_some() && doc.fencing_token == term,
        _ => false,
    };
    match (leads, doc.fencing_token, &doc.leader, doc.valid_ms) {
        (true, Some(token), Some(leader), Some(ms)) if ms > 0 => Some(Claim {
            token,
            leader: leader.to_info(),
            until: sent + Duration::from_millis(ms),
        }),
        _ => None,
    }
}

impl Source for SocketSource {
    type Ended = std::convert::Infallible;

    fn observed(&self) -> Observed {
        // electd's leadership term stands in for a lease: a new term is a new lease.
        let (lease, position, deadline) = match &self.claim {
            Some(c) => (
                Some(c.token),
                Position::Leading {
                    token: c.token,
                    leader: c.leader.clone(),
                },
                Some(c.until),
            ),
            None => {
                let leader = match &self.last.1 {
                    Ok(doc) => doc.leader.as_ref().map(LeaderDoc::to_info),
                    Err(_) => None,
                };
                (Some(0), Position::Waiting { leader }, None)
            }
        };
        Observed {
            lease,
            position,
            deadline,
            reachable: self.last.1.is_ok(),
            handoff: None,
            refusal: None,
            // electd gave it up, or will hand its successor a start guard: the command gets
            // its stop grace (keep it short).
            taken_away: false,
        }
    }

    async fn changed(&mut self) -> Result<(), Self::Ended> {
        if std::mem::take(&mut self.fresh) {
            return Ok(());
        }
        sleep_until(self.next_ask).await;
        let sent = Instant::now();
        let after = self.last.1.as_ref().ok().map(|d| d.version);
        let answer = ask_role(&self.path, after).await;
        if let Err(e) = &answer {
            debug!(error = %e, "the local electd did not answer");
        }
        self.take(sent, answer);
        Ok(())
    }

    fn kill_deadline(&self) -> Option<Instant> {
        // The lease is electd's; what elect-run guarantees is that the command is dead within
        // its stop grace after the budget it was given ran out, even if elect-run is frozen.
        self.claim.as_ref().map(|c| c.until + self.stop_grace)
    }

    async fn release(&mut self, _after: After) {}

    async fn resume(&mut self) {}
}

/// `GET /role` from the local electd over its socket (blocking I/O off the runtime, bounded): a
/// long poll for a change from `after`, when given.
pub async fn ask_role(path: &Path, after: Option<u64>) -> Result<RoleDoc<'static>, String> {
    let path = path.to_path_buf();
    let (uri, within) = match after {
        Some(v) => (
            format!("/role?wait={}ms&after={v}", SOCKET_POLL.as_millis()),
            SOCKET_POLL + SOCKET_TIMEOUT,
        ),
        None => ("/role".to_string(), SOCKET_TIMEOUT),
    };
    let answer = tokio::task::spawn_blocking(move || {
        crate::api::client::request_within(&path, "GET", &uri, within)
    })
    .await
    .map_err(|e| format!("socket client task failed: {e}"))?
    .map_err(|e| e.to_string())?;
    match answer {
        (200, body) => serde_json::from_str(&body).map_err(|e| format!("/role is not JSON: {e}")),
        (code, _) => Err(format!("GET /role answered {code}")),
    }
}
