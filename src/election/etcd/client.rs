//! Connecting to etcd: one client per endpoint ([`Clients`]) so a call that times out on a
//! frozen member is retried on another, TLS and authentication from the configuration, and the
//! guard against a rewound history ([`Clients::check`]) with what mends it (the rewind mark the
//! host's mender follows, `super::floor`) and what this process remembers of that history across
//! restarts (`super::state`). The startup probe is `super::probe`'s.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use etcd_client::{Client, ConnectOptions};
use tracing::{debug, info};

use super::error::{EtcdError, NOSPACE_HINT, bounded, error_chain};
use super::state::StateFile;
use crate::config::{EtcdSettings, Pem};
use crate::election::keys;

/// One client per endpoint, and the endpoint calls go to now. A call that times out, or finds
/// its member unavailable, moves the calls after it to the next endpoint: a frozen member (a
/// stalled disk, a paused VM) costs one retry instead of a failover. A balanced channel over
/// every endpoint would keep sending retries to the frozen member; streams (keepalive, watch)
/// stay on the member they were opened on until they fail.
#[derive(Clone)]
pub struct Clients(Arc<Inner>);

struct Inner {
    clients: Vec<Client>,
    endpoints: Vec<String>,
    current: AtomicUsize,
    history: std::sync::Mutex<History>,
    /// etcd refused a write for lack of space (its NOSPACE alarm), and no write succeeded since.
    out_of_space: AtomicBool,
    /// The highest revision seen before a rewound history was found (0: never found): what
    /// the host's mender must raise etcd past (`super::floor::mend`).
    rewinds: tokio::sync::watch::Sender<i64>,
    /// Counts the changes of [`Clients::refusal`] (a rewound history found, or passed).
    refusals: tokio::sync::watch::Sender<u64>,
    /// The state file (`--state-file`), once given.
    state: OnceLock<Persist>,
}

/// The state file's writer: the revision to write, the revision written.
struct Persist {
    want: tokio::sync::watch::Sender<i64>,
    written: tokio::sync::watch::Receiver<i64>,
    _writer: crate::election::AbortOnDrop,
}

/// Write each raised `want` to `file` (atomically, off the runtime's threads), publishing what
/// is on disk in `written`. A failed write is said once, at warn, and retried every second.
async fn write_state(
    file: StateFile,
    mut want: tokio::sync::watch::Receiver<i64>,
    written: tokio::sync::watch::Sender<i64>,
) {
    let mut failing = false;
    loop {
        let target = *want.borrow_and_update();
        if target > *written.borrow() {
            let f = file.clone();
            match tokio::task::spawn_blocking(move || f.write(target)).await {
                Ok(Ok(())) => {
                    if std::mem::replace(&mut failing, false) {
                        info!(path = %file.path().display(), "the state file is written again");
                    }
                    written.send_replace(target);
                }
                Ok(Err(e)) => {
                    if !std::mem::replace(&mut failing, true) {
                        tracing::warn!(error = %e, "cannot record the highest etcd revision seen: after etcd is rebuilt, a restart of this replica may not know it; retrying");
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
                Err(e) => debug!(error = %e, "the state file write did not finish"),
            }
        }
        if want.changed().await.is_err() {
            return;
        }
    }
}

/// The calls that write (so a NOSPACE alarm refuses them, and their success shows it cleared).
const WRITES: &[&str] = &[
    "lease grant",
    "campaign txn",
    "candidate update",
    "slot claim txn",
    "slot record update",
];

/// What this process has seen of etcd's history: the highest revision, and the cluster.
#[derive(Debug, Default)]
struct History {
    max_revision: i64,
    cluster_id: Option<u64>,
    /// The last answer below `max_revision`, until one passes it.
    rewound: Option<i64>,
    /// The endpoint that last answered a keepalive in time, and when.
    answered: Option<(usize, tokio::time::Instant)>,
}

impl Clients {
    /// A plain client per endpoint (no TLS, no auth): for benchmarks and tests.
    pub async fn plain(endpoints: &[String]) -> Result<Clients, EtcdError> {
        let mut clients = Vec::new();
        for e in endpoints {
            let c = Client::connect([e.as_str()], None)
                .await
                .map_err(|source| EtcdError::Request {
                    op: "connect",
                    source,
                })?;
            clients.push(c);
        }
        Ok(Clients::new(clients, endpoints.to_vec()))
    }

    fn new(clients: Vec<Client>, endpoints: Vec<String>) -> Clients {
        Clients(Arc::new(Inner {
            clients,
            endpoints,
            current: AtomicUsize::new(0),
            history: std::sync::Mutex::new(History::default()),
            out_of_space: AtomicBool::new(false),
            rewinds: tokio::sync::watch::Sender::new(0),
            refusals: tokio::sync::watch::Sender::new(0),
            state: OnceLock::new(),
        }))
    }

    /// The endpoint calls go to now, and its client.
    pub fn pick(&self) -> (usize, Client) {
        let i = self.0.current.load(Ordering::Relaxed) % self.0.clients.len();
        (i, self.0.clients[i].clone())
    }

    /// A call on endpoint `i` failed in a way another member may not: move on, unless another
    /// call already did.
    pub fn failed(&self, i: usize) {
        let n = self.0.clients.len();
        if n > 1
            && self
                .0
                .current
                .compare_exchange(i, (i + 1) % n, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            info!(
                from = %self.0.endpoints[i],
                to = %self.0.endpoints[(i + 1) % n],
                "etcd endpoint did not answer in time; trying the next one"
            );
        }
    }

    /// How many endpoints there are (at least one).
    pub fn endpoints(&self) -> usize {
        self.0.clients.len()
    }

    /// The highest revision seen so far.
    pub fn max_revision(&self) -> i64 {
        self.history().max_revision
    }

    fn history(&self) -> std::sync::MutexGuard<'_, History> {
        // A poisoned lock only means a panic elsewhere; the value is still valid.
        self.0.history.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Check a linearizable answer (a read, a transaction, a grant: each confirmed by a quorum)
    /// against `floor`, the highest revision seen before the request was sent
    /// ([`Clients::max_revision`]): a linearizable request sent after revision R was seen
    /// answers at R or later. Below means etcd's history was rewound — rebuilt from empty, or
    /// restored from an older snapshot — and fencing tokens would repeat:
    /// [`EtcdError::HistoryRewound`], until the revision passes the highest seen. (Not against
    /// the highest revision seen *now*: a watch event can raise that while the request is in
    /// flight, and the answer is then older than the event yet perfectly fine.) A changed
    /// cluster id with a history that goes on (a restore of the latest snapshot) is fine.
    /// (Keepalive and watch answers are not checked: a member that was frozen can answer those
    /// from its stale state.)
    pub fn check(
        &self,
        floor: i64,
        header: Option<&etcd_client::ResponseHeader>,
    ) -> Result<(), EtcdError> {
        let Some(h) = header else { return Ok(()) };
        let mut history = self.history();
        if rewound(
            floor,
            h.revision(),
            history.max_revision,
            history.rewound.is_some(),
        ) {
            if history.rewound.is_none() {
                self.0.refusals.send_modify(|n| *n += 1);
                tracing::error!(
                    seen = history.max_revision,
                    now = h.revision(),
                    "etcd's history was rewound (rebuilt from empty, or restored from an older snapshot?): refusing to lead until its revision passes the one seen"
                );
            }
            history.rewound = Some(h.revision());
            let mark = history.max_revision;
            self.0.rewinds.send_if_modified(|m| {
                let raised = mark > *m;
                *m = (*m).max(mark);
                raised
            });
            return Err(EtcdError::HistoryRewound {
                seen: history.max_revision,
                now: h.revision(),
            });
        }
        if history.rewound.take().is_some() {
            self.0.refusals.send_modify(|n| *n += 1);
            tracing::info!(
                revision = h.revision(),
                "etcd's revision passed the one seen before its history was rewound: leading is safe again"
            );
        }
        if let Some(old) = history.cluster_id
            && old != h.cluster_id()
        {
            tracing::warn!(
                old = format!("{old:x}"),
                new = format!("{:x}", h.cluster_id()),
                revision = h.revision(),
                "etcd's cluster id changed, its history goes on (restored from a snapshot?); fencing tokens keep increasing"
            );
        }
        history.cluster_id = Some(h.cluster_id());
        history.max_revision = history.max_revision.max(h.revision());
        Ok(())
    }

    /// Why leading is refused now, while etcd's history is rewound (the text stays the same
    /// until the revision passes the one seen).
    /// Named for `election` (its floor record) when the gap is more than electd closes.
    pub fn refusal(&self, election: &str) -> Option<String> {
        let h = self.history();
        h.rewound.map(|now| {
            if h.max_revision - now > MAX_RAISE {
                too_far(election, h.max_revision, now)
            } else {
                refusal(h.max_revision)
            }
        })
    }

    /// The highest revision seen before a rewound history was last found (0: never), as it
    /// changes: what the host's mender follows.
    pub(super) fn rewinds(&self) -> tokio::sync::watch::Receiver<i64> {
        self.0.rewinds.subscribe()
    }

    /// Changes whenever [`Clients::refusal`] starts or ends (the driver's view follows it).
    pub(super) fn refusals(&self) -> tokio::sync::watch::Receiver<u64> {
        self.0.refusals.subscribe()
    }

    /// Remember across restarts in `file`, which held `revision` (the highest revision seen
    /// before this process started): raise the mark a rewound history is judged against to it,
    /// and start the writer that keeps the file up to date ([`Clients::persist`]).
    pub fn remember(&self, file: StateFile, revision: i64) {
        self.saw(revision);
        let (want, want_rx) = tokio::sync::watch::channel(revision);
        let (written_tx, written) = tokio::sync::watch::channel(revision);
        let task = tokio::spawn(write_state(file, want_rx, written_tx));
        let _ = self.0.state.set(Persist {
            want,
            written,
            _writer: crate::election::AbortOnDrop(task),
        });
    }

    /// Have the highest revision seen written to the state file soon, if there is one and it
    /// holds less (a leader seen: its token is covered).
    pub fn persist_soon(&self) {
        let Some(p) = self.0.state.get() else { return };
        let now = self.max_revision();
        p.want.send_if_modified(|w| {
            let raised = now > *w;
            *w = (*w).max(now);
            raised
        });
    }

    /// [`Clients::persist_soon`], and return once it is on disk: before this replica's own key
    /// can lead. A disk that does not take it within 2 s is not waited for (the writer said so).
    pub async fn persist(&self) {
        let Some(p) = self.0.state.get() else { return };
        self.persist_soon();
        let target = *p.want.borrow();
        let mut written = p.written.clone();
        let _ =
            tokio::time::timeout(Duration::from_secs(2), written.wait_for(|w| *w >= target)).await;
    }

    /// Endpoint `i` answered a keepalive in time: its member is neither frozen nor cut off
    /// from the raft leader.
    pub fn answered(&self, i: usize) {
        self.history().answered = Some((i, tokio::time::Instant::now()));
    }

    /// Whether endpoint `i` answered a keepalive in time within the last `within`.
    pub fn answered_within(&self, i: usize, within: Duration) -> bool {
        self.history()
            .answered
            .is_some_and(|(e, at)| e == i && at.elapsed() <= within)
    }

    /// Note a revision seen on a watch (not confirmed by a quorum: it only raises the mark).
    pub fn saw(&self, revision: i64) {
        let mut history = self.history();
        history.max_revision = history.max_revision.max(revision);
    }

    /// Run one call on the current endpoint with a deadline; a timeout or an unavailable
    /// member moves later calls to the next endpoint.
    pub async fn call<T, F, Fut>(
        &self,
        op: &'static str,
        after: Duration,
        lease: i64,
        f: F,
    ) -> Result<T, EtcdError>
    where
        F: FnOnce(Client) -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        let (i, client) = self.pick();
        let r = bounded(op, after, lease, f(client)).await;
        match &r {
            Err(e) if e.moves_endpoint() => {
                debug!(error = %e, endpoint = %self.0.endpoints[i], "etcd call failed on this endpoint");
                self.failed(i);
            }
            Err(e) if e.kind() == "nospace" => self.refused_for_space(op, e),
            Ok(_) if WRITES.contains(&op) => self.wrote(op),
            _ => {}
        }
        r
    }

    /// etcd refused a write for lack of space: said once at error level, with what to do, until
    /// a write succeeds again. Not fatal: the operator clears the alarm without touching electd,
    /// and every replica then joins by itself within one retry.
    fn refused_for_space(&self, op: &'static str, e: &EtcdError) {
        if !self.0.out_of_space.swap(true, Ordering::Relaxed) {
            tracing::error!(op, error = %e, hint = NOSPACE_HINT, "etcd is out of space: it refuses this replica's writes, so it cannot join the election (a leader keeps leading while its keepalives work); retrying");
        }
    }

    fn wrote(&self, op: &'static str) {
        if self.0.out_of_space.swap(false, Ordering::Relaxed) {
            info!(
                op,
                "etcd accepts writes again (its NOSPACE alarm was cleared)"
            );
        }
    }
}

/// Whether an answer at `revision`, to a linearizable request sent when `floor` was the highest
/// revision seen, shows etcd's history rewound; `max_seen` is the highest revision seen now and
/// `already` whether the history is known to be rewound (then only passing `max_seen` ends it).
fn rewound(floor: i64, revision: i64, max_seen: i64, already: bool) -> bool {
    revision < floor || (already && revision < max_seen)
}

/// Why a replica does not lead while etcd's history is rewound below `seen`.
pub fn refusal(seen: i64) -> String {
    format!(
        "etcd's history was rewound below revision {seen} seen before (by this replica, or in an \
         election's floor record by one that remembers it; etcd rebuilt from empty, or restored \
         from an older snapshot?): fencing tokens would repeat, so this replica does not lead \
         until the revision passes {seen}, which electd brings about itself when the gap is at \
         most {} revisions (see docs/operations.md)",
        MAX_RAISE
    )
}

/// A client per configured endpoint (see [`Clients`]). Connections are made lazily; HTTP/2
/// pings go out every 5 s (etcd refuses clients that ping more often by default). With
/// authentication, connecting asks etcd for a token: an endpoint that does not answer then gets
/// a client balanced over all endpoints in its place.
pub async fn connect(config: &EtcdSettings) -> Result<Clients, EtcdError> {
    let options = options(config)?;
    let after = config.request_timeout.max(Duration::from_secs(3));
    let one = |endpoints: Vec<String>| {
        let options = options.clone();
        async move {
            bounded(
                "connect",
                after,
                0,
                Client::connect(endpoints, Some(options)),
            )
            .await
            .map_err(setup_error)
        }
    };
    if config.endpoints.len() == 1 {
        let client = one(config.endpoints.clone()).await?;
        return Ok(Clients::new(vec![client], config.endpoints.clone()));
    }
    let mut clients = Vec::new();
    let mut balanced: Option<Client> = None;
    for e in &config.endpoints {
        match one(vec![e.clone()]).await {
            Ok(c) => clients.push(c),
            Err(err) if err.is_fatal() => return Err(err),
            Err(err) => {
                debug!(endpoint = %e, error = %err, "cannot connect to this endpoint yet; using all of them in its place");
                let b = match &balanced {
                    Some(b) => b.clone(),
                    None => one(config.endpoints.clone()).await?,
                };
                balanced = Some(b.clone());
                clients.push(b);
            }
        }
    }
    Ok(Clients::new(clients, config.endpoints.clone()))
}

/// Only building an endpoint's TLS settings fails with a transport error at connect (requests
/// fail with a gRPC status): a configuration problem that no retry fixes. etcd-client's Display
/// hides tonic's cause, so quote that.
fn setup_error(e: EtcdError) -> EtcdError {
    match e {
        EtcdError::Request {
            source: etcd_client::Error::TransportError(t),
            ..
        } => EtcdError::Setup(format!(
            "invalid TLS settings (--etcd-ca/--etcd-cert/--etcd-key): {}",
            error_chain(&t)
        )),
        e => e,
    }
}

fn options(config: &EtcdSettings) -> Result<ConnectOptions, EtcdError> {
    let mut options = ConnectOptions::new()
        .with_keep_alive(Duration::from_secs(5), Duration::from_secs(3))
        .with_keep_alive_while_idle(true)
        .with_connect_timeout(config.request_timeout.max(Duration::from_secs(1)));
    if let Some(tls) = &config.tls {
        let mut t = etcd_client::TlsOptions::new();
        if let Some(ca) = &tls.ca {
            let pem = read_pem("--etcd-ca", ca, Pem::Certificate)?;
            t = t.ca_certificate(etcd_client::Certificate::from_pem(pem));
        }
        if let (Some(cert), Some(key)) = (&tls.cert, &tls.key) {
            let c = read_pem("--etcd-cert", cert, Pem::Certificate)?;
            let k = read_pem("--etcd-key", key, Pem::PrivateKey)?;
            t = t.identity(etcd_client::Identity::from_pem(c, k));
        }
        options = options.with_tls(t);
    }
    if let Some(auth) = &config.auth {
        // Re-authenticate when etcd refuses the token (simple tokens die with an etcd restart,
        // JWTs expire) instead of failing every call until electd gives up.
        options = options
            .with_user(auth.user.clone(), auth.password.clone())
            .with_auto_token_refresh(true);
    }
    Ok(options)
}

/// Read a PEM file given with `flag`. Its content was checked when the configuration was
/// validated ([`crate::config::pem_problem`]); it is checked again in case it changed since.
fn read_pem(flag: &str, path: &std::path::Path, want: Pem) -> Result<Vec<u8>, EtcdError> {
    let bytes = std::fs::read(path)
        .map_err(|e| EtcdError::Setup(format!("cannot read {flag} {}: {e}", path.display())))?;
    match crate::config::pem_problem(&bytes, want) {
        Some(p) => Err(EtcdError::Setup(format!("{flag} {}: {p}", path.display()))),
        None => Ok(bytes),
    }
}

/// The largest gap between the floor and etcd's revision that electd closes by itself, with
/// one write of the floor record per revision. Beyond it the replica refuses to lead until the
/// operator raises the revision (docs/operations.md).
pub const MAX_RAISE: i64 = 100_000;

/// Why a replica does not lead while etcd's `revision` is too far below `floor` to raise.
pub fn too_far(election: &str, floor: i64, revision: i64) -> String {
    let gap = floor - revision;
    format!(
        "etcd's history was rewound: its revision {revision} is {gap} revisions below {floor}, \
         the highest revision seen before (by this replica, or recorded in {key} by one that \
         remembers it; etcd rebuilt from empty, or restored from an older snapshot?). Fencing \
         tokens would repeat, and the gap is more than electd closes by itself ({MAX_RAISE} \
         revisions), so this replica does not lead. Raise etcd's revision past {floor} (restore \
         the snapshot with `etcdutl snapshot restore --bump-revision {bump} --mark-compacted`, \
         etcd 3.5.10 or later), or, if whatever checks the tokens may see them start again, \
         delete {key} and every replica's --state-file and restart the replicas (see \
         docs/operations.md)",
        key = keys::floor_key(election),
        bump = gap + 1000,
    )
}

#[cfg(test)]
mod tests {
    use super::rewound;

    #[test]
    fn rewound_table() {
        #[rustfmt::skip]
        let cases: &[(&str, i64, i64, i64, bool, bool)] = &[
            // name, floor, revision, max seen now, already rewound, want
            ("at the floor", 8, 8, 8, false, false),
            ("past it", 8, 12, 8, false, false),
            ("below it: rewound", 8, 3, 8, false, true),
            ("a watch event raised the mark while the request was in flight: fine", 7, 7, 8, false, false),
            ("still below the mark once rewound", 3, 5, 8, true, true),
            ("passing the mark ends it", 3, 8, 8, true, false),
        ];
        for (name, floor, revision, max_seen, already, want) in cases {
            assert_eq!(
                rewound(*floor, *revision, *max_seen, *already),
                *want,
                "{name}"
            );
        }
    }
}
