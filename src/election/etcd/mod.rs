//! The etcd backend: the only code that talks to etcd (and the only importer of
//! `etcd_client`). Split like etcd's own `client/v3/concurrency`:
//! - `session` — a lease, its keepalive task and the reply pacing every call shares;
//! - `observe` — one read and one watch of the whole prefix, feeding the local queue;
//! - `campaign` — the candidate key and its place in that queue;
//! - `host` — one lease and its keepalive for every election of the process;
//! - `driver` — per election: observation all the time, campaigns back to back under the
//!   host's lease, the published view, the owner's commands;
//! - `txn` — put-if-absent, the whole-election read, elect-run's fenced slot records;
//! - `client` — a client per endpoint (a call that times out moves to the next), TLS, auth,
//!   the rewound-history guard;
//! - `floor` — the floor record that makes that guard hold for the election (read before a
//!   campaign, written and passed by the host's mender when the history is rewound);
//! - `state` — the state file: the highest revision seen, kept across restarts;
//! - `probe` — the startup probe (misconfiguration told from an outage);
//! - `error` — what can go wrong, with a label and a hint, and the per-call deadline.
//!
//! [`EtcdBackend`] is the handle everything outside this folder uses.

mod campaign;
mod client;
mod driver;
mod error;
mod floor;
mod host;
mod observe;
mod probe;
mod session;
mod state;
mod txn;
mod wire;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

pub use client::Clients;
pub use driver::Driver;
pub use error::{Backoff, EtcdError, error_chain};
pub use floor::MAX_RAISE;
pub use host::{HostHandle, SessionView};
pub use state::{StateError, StateFile};
pub use txn::SlotClaim;

use crate::config::{Config, EtcdSettings, Timing};
use crate::election::{
    DriverConfig, DriverHandle, ElectionView, Handover, MemberList, MemberSource,
    MemberSourceFuture, Telemetry, keys,
};

/// Connections to etcd, one per endpoint (made lazily, shared by clones).
#[derive(Clone)]
pub struct EtcdBackend {
    clients: Clients,
}

impl EtcdBackend {
    /// A client for the configured endpoints, TLS and credentials; nothing is checked yet.
    pub async fn connect(config: &Config) -> Result<EtcdBackend, EtcdError> {
        EtcdBackend::connect_settings(&config.etcd_settings()).await
    }

    /// [`EtcdBackend::connect`] with only what a client needs (the freeze watchdog's).
    pub async fn connect_settings(settings: &EtcdSettings) -> Result<EtcdBackend, EtcdError> {
        Ok(EtcdBackend {
            clients: client::connect(settings).await?,
        })
    }

    /// Hand leadership over for a process that died: in `handover.key` (if it still has its
    /// create revision) the clean-release mark, then revoke the lease. Each step bounded by
    /// `after`.
    pub async fn hand_over(&self, handover: &Handover, after: Duration) -> Result<bool, EtcdError> {
        let marked = txn::update_candidate(
            &self.clients,
            &handover.key,
            &handover.mark,
            handover.lease,
            handover.revision,
            after,
        )
        .await?;
        session::revoke(&self.clients, handover.lease, after).await?;
        Ok(marked)
    }

    /// [`EtcdBackend::connect`], retrying while etcd is unreachable, then a startup read of the
    /// election's prefix: a misconfiguration (TLS trust, credentials, permissions) is returned
    /// at once instead of being retried for ever.
    pub async fn connect_and_probe(config: &Config) -> Result<EtcdBackend, EtcdError> {
        Ok(EtcdBackend {
            clients: probe::connect_and_probe(config).await?,
        })
    }

    /// A plain (no TLS, no auth) client for `endpoints`: for benchmarks and tests.
    pub async fn connect_endpoints(endpoints: &[String]) -> Result<EtcdBackend, EtcdError> {
        Ok(EtcdBackend {
            clients: Clients::plain(endpoints).await?,
        })
    }

    /// A driver campaigning in `cfg.election` with a lease of its own; run it with
    /// [`Driver::run`].
    pub fn driver(
        &self,
        cfg: DriverConfig,
    ) -> (Driver, DriverHandle, watch::Receiver<ElectionView>) {
        Driver::new(self.clients.clone(), cfg)
    }

    /// One lease (and one keepalive stream) for several elections: start its host, then a
    /// driver per election with [`EtcdBackend::driver_on`]. Stop it last, with
    /// [`HostHandle::stop`] (which revokes the lease). `elections`: every election of the
    /// process (their floor records are written when etcd's history is found rewound).
    pub fn host(
        &self,
        timing: Timing,
        telemetry: Arc<dyn Telemetry>,
        elections: Vec<String>,
    ) -> HostHandle {
        let (host, handle) = host::Host::new(self.clients.clone(), timing, telemetry, elections);
        tokio::spawn(host.run());
        handle
    }

    /// Remember the highest revision seen across restarts in `file`, which held `revision`
    /// (read at start): etcd's answers are judged against it from now on.
    pub fn remember(&self, file: StateFile, revision: i64) {
        self.clients.remember(file, revision);
    }

    /// Write the highest revision seen to the state file, if there is one (at shutdown).
    pub async fn persist(&self) {
        self.clients.persist().await;
    }

    /// A driver campaigning in `cfg.election` under `host`'s lease.
    pub fn driver_on(
        &self,
        host: &HostHandle,
        cfg: DriverConfig,
    ) -> (Driver, DriverHandle, watch::Receiver<ElectionView>) {
        Driver::on(self.clients.clone(), host, cfg)
    }

    /// Every candidate of `election` in queue order.
    pub async fn members(&self, election: &str, after: Duration) -> Result<MemberList, EtcdError> {
        let prefix = keys::election_prefix(election);
        let (revision, keys) = txn::candidates(&self.clients, &prefix, after).await?;
        Ok(MemberList::from_read(election, revision, keys))
    }

    /// `/members` for `election`, each read bounded by `after`.
    pub fn member_source(&self, election: &str, after: Duration) -> Arc<dyn MemberSource> {
        Arc::new(EtcdMembers {
            backend: self.clone(),
            election: election.to_string(),
            after,
        })
    }

    /// Grant a lease of `ttl` (whole seconds).
    pub async fn grant(&self, ttl: Duration, after: Duration) -> Result<i64, EtcdError> {
        session::grant(&self.clients, ttl, after).await
    }

    /// Revoke `lease`; a lease already gone counts as revoked.
    pub async fn revoke(&self, lease: i64, after: Duration) -> Result<(), EtcdError> {
        session::revoke(&self.clients, lease, after).await
    }

    /// Claim elect-run's slot record at `key`, fenced by `token` on `leader_key`.
    pub async fn claim_slot(
        &self,
        key: &str,
        value: &str,
        leader_key: &str,
        token: i64,
        lease: i64,
        after: Duration,
    ) -> Result<SlotClaim, EtcdError> {
        txn::claim_slot(&self.clients, key, value, leader_key, token, lease, after).await
    }

    /// Rewrite a claimed slot record, fenced by `token` and the record's `mod_revision`.
    #[allow(clippy::too_many_arguments)]
    pub async fn update_slot(
        &self,
        key: &str,
        value: &str,
        leader_key: &str,
        token: i64,
        mod_revision: i64,
        lease: Option<i64>,
        after: Duration,
    ) -> Result<bool, EtcdError> {
        txn::update_slot(
            &self.clients,
            key,
            value,
            leader_key,
            token,
            mod_revision,
            lease,
            after,
        )
        .await
    }
}

struct EtcdMembers {
    backend: EtcdBackend,
    election: String,
    after: Duration,
}

impl MemberSource for EtcdMembers {
    fn election(&self) -> &str {
        &self.election
    }

    fn members(&self) -> MemberSourceFuture<'_> {
        Box::pin(async move {
            self.backend
                .members(&self.election, self.after)
                .await
                .map_err(|e| e.to_string())
        })
    }
}
