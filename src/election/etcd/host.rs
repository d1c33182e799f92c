//! The host: one lease for every election of this process, kept alive by one keepalive stream
//! — as etcd's `concurrency.Session` serves many `Election`s. It grants the lease (again, after
//! one is lost), keeps it alive, and publishes what it knows as a [`SessionView`]; each
//! election's driver creates its candidate key under that lease and reads its deadline from
//! the view. On shutdown it revokes the lease, which deletes every key still under it. Beside
//! it runs the mender (`super::floor`): when etcd's history is found rewound, it writes the
//! floor record of every election of the process and raises etcd's revision past it.
//!
//! Invariants (the election contract's, `election/mod.rs`):
//! - the lease is kept alive from before any candidate key exists under it;
//! - `last_ok_sent` is when the last *successful* keepalive (or the grant) was sent, so
//!   `last_ok_sent + ttl` is a lower bound of the lease's expiry.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::{Instant, sleep_until};
use tracing::{debug, info, warn};

use super::client::Clients;
use super::error::{Backoff, EtcdError};
use super::session::{KeepaliveEvent, Pace, Session, grant, revoke};
use crate::config::Timing;
use crate::election::Telemetry;

/// What the host knows of its lease, published on every change.
#[derive(Debug, Clone, Default)]
pub struct SessionView {
    /// The lease every election's key is bound to, while one is granted.
    pub lease: Option<i64>,
    /// When the last successful keepalive for `lease` (or the grant) was sent.
    pub last_ok_sent: Option<Instant>,
    /// Whether the last keepalive (or grant) succeeded.
    pub reachable: bool,
    /// When etcd last answered the host.
    pub last_contact: Option<Instant>,
    /// Why the host stopped for good (an unrecoverable error), once it has.
    pub failed: Option<String>,
}

enum HostCommand {
    /// Revoke the lease and end.
    Stop { reply: oneshot::Sender<()> },
    /// Give up `lease` (if it is still the current one) and grant a fresh one: a candidate key
    /// cannot be created under it.
    Renew { lease: i64 },
}

/// A running host: its view, and how to stop it.
#[derive(Clone)]
pub struct HostHandle {
    view: watch::Receiver<SessionView>,
    commands: mpsc::Sender<HostCommand>,
    pace: Pace,
}

impl HostHandle {
    pub fn view(&self) -> watch::Receiver<SessionView> {
        self.view.clone()
    }

    pub(super) fn pace(&self) -> Pace {
        self.pace.clone()
    }

    /// Revoke `lease`, if it is still the host's, and grant a fresh one: every election of the
    /// process campaigns again under it. For a lease whose candidate key name another writer
    /// has taken.
    pub async fn renew(&self, lease: i64) {
        let _ = self.commands.send(HostCommand::Renew { lease }).await;
    }

    /// Revoke the lease (every candidate key of this process goes with it) and end the host;
    /// waits up to 2 s.
    pub async fn stop(&self) {
        let (reply, rx) = oneshot::channel();
        if self
            .commands
            .send(HostCommand::Stop { reply })
            .await
            .is_ok()
        {
            let _ = tokio::time::timeout(Duration::from_secs(2), rx).await;
        }
    }
}

/// The host task's state.
pub(super) struct Host {
    clients: Clients,
    timing: Timing,
    pace: Pace,
    telemetry: Arc<dyn Telemetry>,
    view: watch::Sender<SessionView>,
    commands: mpsc::Receiver<HostCommand>,
    /// Every election of the process (their floor records, when the history is rewound).
    elections: Vec<String>,
}

impl Host {
    /// A host and its handle; run it with [`Host::run`].
    pub(super) fn new(
        clients: Clients,
        timing: Timing,
        telemetry: Arc<dyn Telemetry>,
        elections: Vec<String>,
    ) -> (Host, HostHandle) {
        let (view, view_rx) = watch::channel(SessionView::default());
        let (tx, commands) = mpsc::channel(4);
        let pace = Pace::new(&timing);
        (
            Host {
                clients,
                timing,
                pace: pace.clone(),
                telemetry,
                view,
                commands,
                elections,
            },
            HostHandle {
                view: view_rx,
                commands: tx,
                pace,
            },
        )
    }

    /// Report keepalive round trips and etcd errors to `telemetry`.
    pub(super) fn with_telemetry(mut self, telemetry: Arc<dyn Telemetry>) -> Host {
        self.telemetry = telemetry;
        self
    }

    /// Grant, keep alive, grant again after a loss, until stopped (the lease revoked) or an
    /// unrecoverable error (published, and returned).
    pub(super) async fn run(mut self) -> Result<(), EtcdError> {
        let _mender = crate::election::AbortOnDrop(tokio::spawn(super::floor::mender(
            self.clients.clone(),
            self.elections.clone(),
            self.timing.request_timeout.max(Duration::from_secs(2)),
        )));
        let r = self.serve().await;
        if let Err(e) = &r {
            let why = e.to_string();
            self.view.send_modify(|v| {
                v.lease = None;
                v.last_ok_sent = None;
                v.failed = Some(why);
            });
        }
        r
    }

    async fn serve(&mut self) -> Result<(), EtcdError> {
        loop {
            let Some((lease, sent)) = self.grant().await? else {
                return Ok(());
            };
            self.view.send_modify(|v| {
                v.lease = Some(lease);
                v.last_ok_sent = Some(sent);
                v.reachable = true;
                v.last_contact = Some(Instant::now());
            });
            debug!(lease = format!("{lease:x}"), "session started");
            let mut session = Session::keep_alive(&self.clients, lease, self.timing, &self.pace);
            loop {
                tokio::select! {
                    ev = session.event() => {
                        if !self.keepalive_answered(ev)? {
                            info!(lease = format!("{lease:x}"), "lease expired or revoked at etcd; granting a fresh one");
                            break;
                        }
                    }
                    cmd = self.commands.recv() => match cmd {
                        Some(HostCommand::Renew { lease: l }) if l == lease => {
                            warn!(lease = format!("{lease:x}"), "a candidate key of this lease was taken by another writer; granting a fresh lease (every election campaigns again)");
                            break;
                        }
                        Some(HostCommand::Renew { .. }) => {}
                        Some(HostCommand::Stop { reply }) => {
                            self.revoke(lease).await;
                            let _ = reply.send(());
                            return Ok(());
                        }
                        None => {
                            self.revoke(lease).await;
                            return Ok(());
                        }
                    },
                }
            }
            self.view.send_modify(|v| {
                v.lease = None;
                v.last_ok_sent = None;
            });
            // Make sure the old lease is gone before a new one is granted.
            self.revoke(lease).await;
        }
    }

    /// Grant a lease, retrying with backoff; `None` when told to stop first.
    async fn grant(&mut self) -> Result<Option<(i64, Instant)>, EtcdError> {
        let t = self.timing;
        let mut backoff = Backoff::new(
            Duration::from_millis(100),
            t.keepalive_interval.max(Duration::from_secs(1)),
        );
        let mut retry_at = Instant::now();
        loop {
            tokio::select! {
                _ = sleep_until(retry_at) => {
                    let sent = Instant::now();
                    let granted = grant(&self.clients, t.ttl, self.pace.now()).await;
                    match self.pace.note(sent, granted) {
                        Ok(lease) => return Ok(Some((lease, sent))),
                        Err(e) if e.is_fatal() => return Err(e),
                        Err(e) => {
                            self.failed(&e);
                            retry_at = Instant::now() + backoff.delay();
                        }
                    }
                }
                cmd = self.commands.recv() => match cmd {
                    Some(HostCommand::Renew { .. }) => {}
                    Some(HostCommand::Stop { reply }) => {
                        let _ = reply.send(());
                        return Ok(None);
                    }
                    None => return Ok(None),
                },
            }
        }
    }

    fn failed(&self, e: &EtcdError) {
        debug!(error = %e, kind = e.kind(), "etcd call failed");
        self.telemetry.backend_error(e.kind());
        self.view
            .send_if_modified(|v| std::mem::replace(&mut v.reachable, false));
    }

    /// Take in what the keepalive stream said: false when the lease is gone at etcd (expired
    /// or revoked), an error when it cannot heal.
    fn keepalive_answered(&mut self, ev: Option<KeepaliveEvent>) -> Result<bool, EtcdError> {
        match ev {
            Some(KeepaliveEvent::Ok { sent }) => {
                self.telemetry.keepalive_ok(sent.elapsed());
                self.view.send_modify(|v| {
                    v.last_ok_sent = v.last_ok_sent.max(Some(sent));
                    v.reachable = true;
                    v.last_contact = Some(Instant::now());
                });
                Ok(true)
            }
            Some(KeepaliveEvent::Failed(e)) if e.is_fatal() => Err(e),
            Some(KeepaliveEvent::Failed(e)) => {
                self.telemetry.keepalive_failed();
                self.failed(&e);
                Ok(true)
            }
            Some(KeepaliveEvent::Gone) | None => Ok(false),
        }
    }

    /// Revoke `lease`, which deletes every key bound to it. Best effort and bounded: if etcd is
    /// unreachable the lease expires after its TTL.
    async fn revoke(&self, lease: i64) {
        match revoke(&self.clients, lease, self.pace.now()).await {
            Ok(()) => debug!(lease = format!("{lease:x}"), "lease revoked"),
            Err(e) => {
                warn!(lease = format!("{lease:x}"), error = %e, "could not revoke lease; it expires after its TTL")
            }
        }
    }
}
