//! The driver: one task per replica that runs sessions back to back — grant a lease, keep it
//! alive, campaign under it — publishes what it knows as an [`ElectionView`] and obeys the
//! owner's commands (release the session, then rejoin, wait, pause or stop). It never decides
//! what a view means for the wrapped command: that is the role machine's job.

use std::sync::Arc;
use std::time::Duration;

use etcd_client::Client;
use tokio::sync::{Notify, mpsc, watch};
use tokio::time::{Instant, sleep};
use tracing::{debug, info, warn};

use super::campaign::{CampaignCtx, CampaignEnd, campaign};
use super::error::{Backoff, EtcdError};
use super::session::{KeepaliveEvent, Pace, Session, grant, revoke};
use crate::election::{
    After, DriverCommand, DriverConfig, DriverHandle, ElectionView, NoTelemetry, Position,
    Telemetry, keys,
};

/// Runs the election for one replica.
pub struct Driver {
    client: Client,
    cfg: DriverConfig,
    view: watch::Sender<ElectionView>,
    commands: mpsc::Receiver<DriverCommand>,
    recheck: Arc<Notify>,
    telemetry: Arc<dyn Telemetry>,
    pace: Pace,
}

impl Driver {
    /// Create a driver; run it with [`Driver::run`]. The receiver observes its view.
    pub(super) fn new(
        client: Client,
        cfg: DriverConfig,
    ) -> (Driver, DriverHandle, watch::Receiver<ElectionView>) {
        let (view, view_rx) = watch::channel(ElectionView::new());
        let (handle, commands) = DriverHandle::channel();
        let pace = Pace::new(&cfg.timing);
        (
            Driver {
                client,
                cfg,
                view,
                commands,
                recheck: Arc::new(Notify::new()),
                telemetry: Arc::new(NoTelemetry),
                pace,
            },
            handle,
            view_rx,
        )
    }

    /// Report keepalive round trips and etcd errors to `telemetry`.
    pub fn with_telemetry(mut self, telemetry: Arc<dyn Telemetry>) -> Driver {
        self.telemetry = telemetry;
        self
    }

    /// Run until told to stop, or until an unrecoverable error (returned).
    pub async fn run(mut self) -> Result<(), EtcdError> {
        let mut after = After::Rejoin;
        loop {
            match after {
                After::Stop => {
                    self.view.send_modify(|v| {
                        v.position = Position::Stopped;
                        v.lease = None;
                    });
                    return Ok(());
                }
                After::Pause => {
                    self.view.send_modify(|v| {
                        v.position = Position::Paused;
                        v.lease = None;
                        v.last_ok_sent = None;
                    });
                    after = self.paused().await;
                    continue;
                }
                After::RejoinAfter(delay) => {
                    after = self.wait_to_rejoin(delay).await;
                    continue;
                }
                After::Rejoin => {}
            }
            after = self.session().await?;
        }
    }

    /// Stay out of the election for `delay`, answering commands meanwhile.
    /// (Entered only after a release, which already cleared the view's session.)
    async fn wait_to_rejoin(&mut self, delay: Duration) -> After {
        let until = Instant::now() + delay;
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(until) => return After::Rejoin,
                cmd = self.commands.recv() => {
                    if let Some(after) = answer_without_session(cmd) {
                        return after;
                    }
                }
            }
        }
    }

    /// Wait in the paused state for a resume or a stop.
    async fn paused(&mut self) -> After {
        loop {
            match self.commands.recv().await {
                Some(DriverCommand::Resume { reply }) => {
                    let _ = reply.send(());
                    return After::Rejoin;
                }
                cmd => {
                    if answer_without_session(cmd) == Some(After::Stop) {
                        return After::Stop;
                    }
                }
            }
        }
    }

    fn mark_error(&self, e: &EtcdError) {
        debug!(error = %e, kind = e.kind(), "etcd call failed");
        self.telemetry.backend_error(e.kind());
        self.view.send_if_modified(|v| {
            let was = v.reachable;
            v.reachable = false;
            was
        });
    }

    fn mark_contact(&self, revision: Option<i64>) {
        self.view.send_modify(|v| {
            v.reachable = true;
            v.last_contact = Some(Instant::now());
            if let Some(r) = revision {
                v.revision = v.revision.max(r);
            }
        });
    }

    /// Grant a lease, retrying with backoff; commands may interrupt.
    async fn grant(&mut self) -> Result<Result<(i64, Instant), After>, EtcdError> {
        let t = self.cfg.timing;
        let mut backoff = Backoff::new(
            Duration::from_millis(100),
            t.keepalive_interval.max(Duration::from_secs(1)),
        );
        loop {
            let sent = Instant::now();
            let attempt = grant(&self.client, t.ttl, self.pace.now());
            tokio::select! {
                r = attempt => match self.pace.note(sent, r) {
                    Ok(lease) => return Ok(Ok((lease, sent))),
                    Err(e) if e.is_fatal() => return Err(e),
                    Err(e) => self.mark_error(&e),
                },
                cmd = self.commands.recv() => if let Some(after) = answer_without_session(cmd) {
                    return Ok(Err(after));
                },
            }
            tokio::select! {
                _ = sleep(backoff.delay()) => {}
                cmd = self.commands.recv() => if let Some(after) = answer_without_session(cmd) {
                    return Ok(Err(after));
                },
            }
        }
    }

    /// One session: lease, keepalive, candidate key, campaign; returns what to do next.
    async fn session(&mut self) -> Result<After, EtcdError> {
        self.forget_session();
        let (lease, sent) = match self.grant().await? {
            Ok(g) => g,
            Err(after) => return Ok(after),
        };
        self.mark_contact(None);
        self.view.send_modify(|v| {
            v.lease = Some(lease);
            v.last_ok_sent = v.last_ok_sent.max(Some(sent));
        });
        let key = keys::candidate_key(&self.cfg.election, lease);
        debug!(lease = format!("{lease:x}"), key, "session started");

        let mut session = Session::keep_alive(&self.client, lease, self.cfg.timing, &self.pace);

        let ctx = CampaignCtx {
            client: &self.client,
            cfg: &self.cfg,
            pace: &self.pace,
            view: &self.view,
            telemetry: self.telemetry.as_ref(),
        };
        let campaign = campaign(ctx, lease, key.clone(), self.recheck.clone());
        tokio::pin!(campaign);
        let after = loop {
            tokio::select! {
                end = &mut campaign => match end {
                    CampaignEnd::SessionLost(why) => {
                        info!(lease = format!("{lease:x}"), reason = %why, "election session lost; rejoining with a fresh lease");
                        break After::Rejoin;
                    }
                    CampaignEnd::Fatal(e) => return Err(e),
                },
                ev = session.event() => match ev {
                    Some(KeepaliveEvent::Ok { sent }) => {
                        self.telemetry.keepalive_ok(sent.elapsed());
                        let restored = !self.view.borrow().reachable;
                        self.view.send_modify(|v| {
                            v.last_ok_sent = v.last_ok_sent.max(Some(sent));
                            v.reachable = true;
                            v.last_contact = Some(Instant::now());
                        });
                        if restored {
                            // Watches may have died with the connection: read afresh.
                            self.recheck.notify_one();
                        }
                    }
                    Some(KeepaliveEvent::Failed(e)) => {
                        if e.is_fatal() {
                            return Err(e);
                        }
                        self.telemetry.keepalive_failed();
                        self.mark_error(&e);
                    }
                    Some(KeepaliveEvent::Gone) | None => {
                        info!(lease = format!("{lease:x}"), "lease expired or revoked at etcd; rejoining with a fresh lease");
                        break After::Rejoin;
                    }
                },
                cmd = self.commands.recv() => match cmd {
                    None => break After::Stop,
                    Some(DriverCommand::Release { after, reply }) => {
                        self.release(lease).await;
                        let _ = reply.send(());
                        return Ok(after);
                    }
                    Some(DriverCommand::Resume { reply }) => { let _ = reply.send(()); }
                },
            }
        };
        // Session over: make sure the old lease is gone before a new one is granted.
        self.release(lease).await;
        Ok(after)
    }

    /// Revoke the session's lease, which deletes our candidate key with it in one step. Best
    /// effort and bounded: if etcd is unreachable the lease expires after its TTL.
    async fn release(&self, lease: i64) {
        match revoke(&self.client, lease, self.pace.now()).await {
            Ok(()) => debug!(lease = format!("{lease:x}"), "lease revoked"),
            Err(e) => {
                warn!(lease = format!("{lease:x}"), error = %e, "could not revoke lease; it expires after its TTL")
            }
        }
        self.forget_session();
    }

    /// The view without a session: no lease, no keepalive, no position that needs one.
    fn forget_session(&self) {
        self.view.send_modify(|v| {
            v.position = v.position.without_session();
            v.lease = None;
            v.last_ok_sent = None;
        });
    }
}

/// Answer a command received while no session exists (nothing to release); returns what to
/// do next if the command ends the attempt.
fn answer_without_session(cmd: Option<DriverCommand>) -> Option<After> {
    match cmd {
        None => Some(After::Stop),
        Some(DriverCommand::Release { after, reply }) => {
            let _ = reply.send(());
            Some(after)
        }
        Some(DriverCommand::Resume { reply }) => {
            let _ = reply.send(());
            None
        }
    }
}
