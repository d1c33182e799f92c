//! The `--once-per` slot record in etcd: the fenced claim before CMD runs and the fenced
//! update when it ends. What the records mean and how they change is [`super::slots`]; this
//! module only writes them.
//!
//! Invariants: the claim is one transaction that requires the leader key's create revision to
//! equal our fencing token *and* the slot key to be absent; the final update requires the token
//! and the record's mod revision to be the one we wrote. Each record lives on a lease of its
//! own ([`Slot::retention`]), not on the election's.

use std::time::{Duration, SystemTime};

use tokio::time::{Instant, sleep};
use tracing::{debug, info, warn};

use super::RunError;
use super::slots::{End, EndLease, Found, Slot, SlotRecord, found};
use crate::election::etcd::{Backoff, EtcdBackend, SlotClaim};
use crate::election::keys;

/// Where one run's slot record goes, and how it is written.
pub(super) struct SlotStore {
    backend: EtcdBackend,
    pub(super) slot: Slot,
    key: String,
    /// The TTL of each record's lease.
    retention: Duration,
    /// Per-request deadline.
    timeout: Duration,
}

/// A claimed slot: the record we wrote and the revision and lease it was written with.
pub(super) struct Claimed {
    /// Our leader key: the fencing compare is on its create revision.
    leader_key: String,
    token: i64,
    record: SlotRecord,
    mod_revision: i64,
    lease: i64,
}

fn rfc3339_now() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

impl SlotStore {
    pub(super) fn new(
        backend: EtcdBackend,
        election: &str,
        slot: Slot,
        wait: Duration,
        timeout: Duration,
    ) -> SlotStore {
        SlotStore {
            backend,
            key: keys::slot_key(election, slot.start_unix),
            retention: slot.retention(wait),
            slot,
            timeout,
        }
    }

    /// Claim the slot for `id` under the fencing token on `leader_key`, retrying transient
    /// failures until `until` (while the role machine still lets us lead). `Ok(None)`: taken,
    /// or leadership already gone.
    pub(super) async fn claim(
        &self,
        id: &str,
        token: i64,
        leader_key: &str,
        until: Instant,
    ) -> Result<Option<Claimed>, RunError> {
        let host = nix::unistd::gethostname()
            .ok()
            .and_then(|h| h.into_string().ok());
        let record = SlotRecord::running(id, host, self.slot, token, rfc3339_now());
        let value = record.to_json();
        let (key, t) = (&self.key, self.timeout);
        let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_millis(500));
        loop {
            let attempt = async {
                let lease = self.backend.grant(self.retention, t).await?;
                let r = self
                    .backend
                    .claim_slot(key, &value, leader_key, token, lease, t)
                    .await;
                if !matches!(r, Ok(SlotClaim::Claimed { .. })) {
                    let _ = self.backend.revoke(lease, t).await;
                }
                r.map(|c| (c, lease))
            };
            let (mod_revision, lease) = match attempt.await {
                Ok((SlotClaim::Claimed { mod_revision }, lease)) => (mod_revision, lease),
                Ok((
                    SlotClaim::Exists {
                        value,
                        mod_revision,
                        lease,
                    },
                    _,
                )) => match found(&value, token) {
                    Found::Ours => (mod_revision, lease),
                    Found::Taken(Some(r)) => {
                        info!(
                            key, by = %r.id, state = ?r.state, started = %r.started,
                            exit_code = r.exit_code, "slot already taken; command not run"
                        );
                        return Ok(None);
                    }
                    Found::Taken(None) => {
                        info!(key, value = %value, "slot already taken; command not run");
                        return Ok(None);
                    }
                },
                Ok((SlotClaim::NotLeader, _)) => {
                    info!(
                        key,
                        token, "leadership gone before the slot was claimed; command not run"
                    );
                    return Ok(None);
                }
                Err(e) if e.is_fatal() || Instant::now() + backoff.clone().delay() >= until => {
                    return Err(RunError::SlotClaim {
                        key: key.clone(),
                        source: e,
                    });
                }
                Err(e) => {
                    debug!(error = %e, "slot claim failed; retrying");
                    sleep(backoff.delay()).await;
                    continue;
                }
            };
            info!(key, slot = self.slot.start_unix, token, "slot claimed");
            return Ok(Some(Claimed {
                leader_key: leader_key.to_string(),
                token,
                record,
                mod_revision,
                lease,
            }));
        }
    }

    /// Record how the claimed run ended (best effort, fenced); a failure is logged and the slot
    /// stays taken.
    pub(super) async fn finish(&self, claimed: Claimed, end: End) {
        let record = match claimed.record.ended(end, rfc3339_now()) {
            Ok(r) => r,
            Err(e) => {
                warn!(key = self.key, error = %e, "slot record not updated");
                return;
            }
        };
        let (key, t) = (&self.key, self.timeout);
        let lease = match end.lease() {
            EndLease::Fresh => self.backend.grant(self.retention, t).await.ok(),
            EndLease::Claim => None,
        };
        let done = match self
            .backend
            .update_slot(
                key,
                &record.to_json(),
                &claimed.leader_key,
                claimed.token,
                claimed.mod_revision,
                lease,
                t,
            )
            .await
        {
            Ok(true) => Ok(()),
            Ok(false) => Err("the fencing token or the record changed".to_string()),
            Err(e) => Err(e.to_string()),
        };
        match done {
            Ok(()) => {
                info!(key, state = ?record.state, exit_code = record.exit_code, "slot record updated");
                if lease.is_some() {
                    let _ = self.backend.revoke(claimed.lease, t).await;
                }
            }
            Err(why) => {
                if let Some(l) = lease {
                    let _ = self.backend.revoke(l, t).await;
                }
                warn!(key, reason = %why, "could not record the end of the run; the slot stays taken")
            }
        }
    }
}
