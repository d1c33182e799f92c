//! Thin, deadline-bound wrappers over the etcd calls the election needs. Every call here has its
//! own timeout (etcd-client has none per request and does not retry); callers decide whether to
//! retry with [`Backoff`].

use std::time::Duration;

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, GetOptions, PutOptions, SortOrder, SortTarget, Txn,
    TxnOp, TxnOpResponse,
};
use tokio::time::timeout;

use crate::config::{Config, Pem};

#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    #[error("etcd {op} timed out after {after:?}")]
    Timeout { op: &'static str, after: Duration },
    #[error("etcd {op} failed: {}", error_chain(source))]
    Request {
        op: &'static str,
        #[source]
        source: etcd_client::Error,
    },
    #[error("lease {lease:x} is gone at etcd (expired or revoked)")]
    LeaseGone { lease: i64 },
    #[error("etcd {op} stream closed")]
    StreamClosed { op: &'static str },
    #[error("cannot set up the etcd client: {0}")]
    Setup(String),
    #[error(
        "etcd closed {tries} TLS connections in a row during or right after the handshake: it \
         most likely refuses our client certificate, or does not serve TLS on that port (last \
         error: {last})"
    )]
    TlsDropped { tries: u32, last: String },
}

impl EtcdError {
    /// A short label for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            EtcdError::Timeout { .. } => "timeout",
            EtcdError::Request { source, .. } => {
                let text = error_chain(source).to_ascii_lowercase();
                // A token etcd no longer knows (restarted member, expired TTL) is not a
                // credentials problem: the client authenticates again, so keep retrying.
                if text.contains("invalid auth token") {
                    return "auth_token";
                }
                if text.contains("authentication failed") || text.contains("user name is empty") {
                    return "unauthenticated";
                }
                if text.contains("permission denied") {
                    return "permission_denied";
                }
                // Only what a retry cannot fix: a certificate refused either way, a TLS alert
                // from the server, plain text where TLS was expected, TLS files with an
                // http:// endpoint. A connection cut mid-TLS (etcd restarting: "peer closed
                // connection without sending TLS close_notify", "tls handshake eof") is an
                // outage; the startup probe tells a persistent one apart.
                if [
                    "certificate",
                    "received fatal alert",
                    "corrupt message",
                    "peer is incompatible",
                    "http/2 was not negotiated",
                    "only supported with https",
                ]
                .iter()
                .any(|s| text.contains(s))
                {
                    return "tls";
                }
                match source {
                    etcd_client::Error::GRpcStatus(s) => match s.code() {
                        tonic::Code::Unavailable => "unavailable",
                        tonic::Code::DeadlineExceeded => "deadline",
                        tonic::Code::Unauthenticated => "unauthenticated",
                        tonic::Code::PermissionDenied => "permission_denied",
                        _ => "grpc",
                    },
                    etcd_client::Error::TransportError(_) => "transport",
                    _ => "client",
                }
            }
            EtcdError::LeaseGone { .. } => "lease_gone",
            EtcdError::StreamClosed { .. } => "stream_closed",
            EtcdError::Setup(_) => "setup",
            EtcdError::TlsDropped { .. } => "tls",
        }
    }

    /// Errors that no amount of retrying fixes (TLS trust, bad credentials, denied permission).
    pub fn is_fatal(&self) -> bool {
        matches!(
            self.kind(),
            "unauthenticated" | "permission_denied" | "setup" | "tls"
        )
    }

    /// What the operator should check, for fatal errors.
    pub fn hint(&self) -> Option<&'static str> {
        match self.kind() {
            "tls" => Some(
                "check --etcd-ca (the CA that signed etcd's server certificate) and --etcd-cert/--etcd-key, and that the endpoints use https://",
            ),
            "unauthenticated" => Some(
                "check --etcd-user and its password (--etcd-password-file or ELECTD_ETCD_PASSWORD)",
            ),
            "permission_denied" => Some(
                "the etcd user's role needs readwrite on the election's key prefix `<election>/` (see docs/operations.md)",
            ),
            _ => None,
        }
    }
}

/// The error and all its sources, joined: etcd-client's Display hides the cause (a TLS alert,
/// a refused connection) that tells the operator what is wrong.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        let t = s.to_string();
        if !text.contains(&t) {
            text.push_str(": ");
            text.push_str(&t);
        }
        cur = s.source();
    }
    text
}

/// Map an etcd-client error, recognising "lease not found" as [`EtcdError::LeaseGone`].
pub(crate) fn classify(op: &'static str, lease: i64, source: etcd_client::Error) -> EtcdError {
    let text = source.to_string();
    if text.contains("lease not found") {
        EtcdError::LeaseGone { lease }
    } else {
        EtcdError::Request { op, source }
    }
}

/// Run one etcd call with a deadline, mapping its error ("lease not found" becomes
/// [`EtcdError::LeaseGone`]).
pub async fn bounded<T>(
    op: &'static str,
    after: Duration,
    lease: i64,
    fut: impl Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T, EtcdError> {
    match timeout(after, fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(classify(op, lease, e)),
        Err(_) => Err(EtcdError::Timeout { op, after }),
    }
}

/// Build a client for the configured endpoints. The connection is made lazily; HTTP/2 pings go
/// out every 5 s (etcd refuses clients that ping more often by default).
pub async fn connect(config: &Config) -> Result<Client, EtcdError> {
    let timing = config.timing();
    let mut options = ConnectOptions::new()
        .with_keep_alive(Duration::from_secs(5), Duration::from_secs(3))
        .with_keep_alive_while_idle(true)
        .with_connect_timeout(timing.request_timeout.max(Duration::from_secs(1)));
    if let Some(tls) = &config.etcd_tls {
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
    if let Some(auth) = &config.etcd_auth {
        // Re-authenticate when etcd refuses the token (simple tokens die with an etcd restart,
        // JWTs expire) instead of failing every call until electd gives up.
        options = options
            .with_user(auth.user.clone(), auth.password.clone())
            .with_auto_token_refresh(true);
    }
    let after = timing.request_timeout.max(Duration::from_secs(3));
    bounded(
        "connect",
        after,
        0,
        Client::connect(config.endpoints.clone(), Some(options)),
    )
    .await
    .map_err(|e| match e {
        // Only building an endpoint's TLS settings fails this way (requests fail with a gRPC
        // status): a configuration problem that no retry fixes. etcd-client's Display hides
        // tonic's cause, so quote that.
        EtcdError::Request {
            source: etcd_client::Error::TransportError(t),
            ..
        } => EtcdError::Setup(format!(
            "invalid TLS settings (--etcd-ca/--etcd-cert/--etcd-key): {}",
            error_chain(&t)
        )),
        e => e,
    })
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

/// A candidate key as read from etcd.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    pub key: String,
    pub value: String,
    pub create_revision: i64,
    pub lease: i64,
}

impl Candidate {
    fn from_kv(kv: &etcd_client::KeyValue) -> Candidate {
        Candidate {
            key: String::from_utf8_lossy(kv.key()).into_owned(),
            value: String::from_utf8_lossy(kv.value()).into_owned(),
            create_revision: kv.create_revision(),
            lease: kv.lease(),
        }
    }
}

/// One consistent read of the election, at `revision`.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub revision: i64,
    /// Our own key, if it still exists.
    pub own: Option<Candidate>,
    /// The candidate with the lowest create revision.
    pub leader: Option<Candidate>,
    /// The candidate with the greatest create revision below ours.
    pub predecessor: Option<Candidate>,
}

/// Grant a lease of `ttl` seconds.
pub async fn grant(client: &Client, ttl: Duration, after: Duration) -> Result<i64, EtcdError> {
    let mut c = client.clone();
    let resp = bounded(
        "lease grant",
        after,
        0,
        c.lease_grant(ttl.as_secs() as i64, None),
    )
    .await?;
    Ok(resp.id())
}

/// Revoke a lease (best effort callers ignore `LeaseGone`).
pub async fn revoke(client: &Client, lease: i64, after: Duration) -> Result<(), EtcdError> {
    let mut c = client.clone();
    match bounded("lease revoke", after, lease, c.lease_revoke(lease)).await {
        Ok(_) | Err(EtcdError::LeaseGone { .. }) => Ok(()),
        Err(e) => Err(e),
    }
}

/// What [`put_if_absent`] found.
pub enum PutIfAbsent {
    /// Written, at this revision.
    Created(i64),
    /// Not written: the key exists, as it is now.
    Exists(etcd_client::KeyValue),
    /// Not written: the key is absent but one of the extra conditions failed.
    ConditionFailed,
}

/// In one transaction: if `key` is absent and every condition in `also` holds, put `value`
/// bound to `lease`; otherwise read `key`.
pub async fn put_if_absent(
    client: &Client,
    op: &'static str,
    key: &str,
    value: &str,
    lease: i64,
    also: impl IntoIterator<Item = Compare>,
    after: Duration,
) -> Result<PutIfAbsent, EtcdError> {
    let mut when: Vec<Compare> = also.into_iter().collect();
    when.push(Compare::create_revision(key, CompareOp::Equal, 0));
    let txn = Txn::new()
        .when(when)
        .and_then([TxnOp::put(
            key,
            value,
            Some(PutOptions::new().with_lease(lease)),
        )])
        .or_else([TxnOp::get(key, None)]);
    let mut c = client.clone();
    let resp = bounded(op, after, lease, c.txn(txn)).await?;
    if resp.succeeded() {
        return Ok(PutIfAbsent::Created(
            resp.header().map(|h| h.revision()).unwrap_or_default(),
        ));
    }
    let existing = resp.op_responses().into_iter().find_map(|op| match op {
        TxnOpResponse::Get(g) => g.kvs().first().cloned(),
        _ => None,
    });
    Ok(existing.map_or(PutIfAbsent::ConditionFailed, PutIfAbsent::Exists))
}

/// Create `key` bound to `lease` if absent; return its create revision (ours, or the existing
/// key's if we created it in an earlier attempt whose reply was lost).
pub async fn create_candidate(
    client: &Client,
    key: &str,
    value: &str,
    lease: i64,
    after: Duration,
) -> Result<i64, EtcdError> {
    match put_if_absent(client, "campaign txn", key, value, lease, [], after).await? {
        PutIfAbsent::Created(revision) => Ok(revision),
        PutIfAbsent::Exists(kv) if kv.lease() == lease => Ok(kv.create_revision()),
        PutIfAbsent::Exists(kv) => Err(EtcdError::Setup(format!(
            "candidate key {key} exists with another lease {:x}",
            kv.lease()
        ))),
        // No extra condition, so absent means written: cannot happen inside one txn.
        PutIfAbsent::ConditionFailed => Err(EtcdError::LeaseGone { lease }),
    }
}

/// Read our key, the leader and our predecessor in one transaction.
pub async fn snapshot(
    client: &Client,
    prefix: &str,
    own_key: &str,
    own_revision: i64,
    after: Duration,
) -> Result<Snapshot, EtcdError> {
    let first = GetOptions::new()
        .with_prefix()
        .with_sort(SortTarget::Create, SortOrder::Ascend)
        .with_limit(1);
    let mut ops = vec![TxnOp::get(own_key, None), TxnOp::get(prefix, Some(first))];
    if own_revision > 1 {
        let pred = GetOptions::new()
            .with_prefix()
            .with_sort(SortTarget::Create, SortOrder::Descend)
            .with_max_create_revision(own_revision - 1)
            .with_limit(1);
        ops.push(TxnOp::get(prefix, Some(pred)));
    }
    let mut c = client.clone();
    let resp = bounded("election read", after, 0, c.txn(Txn::new().and_then(ops))).await?;
    let revision = resp.header().map(|h| h.revision()).unwrap_or_default();
    let mut gets = resp.op_responses().into_iter().filter_map(|op| match op {
        TxnOpResponse::Get(g) => Some(g.kvs().first().map(Candidate::from_kv)),
        _ => None,
    });
    let own = gets.next().flatten();
    let leader = gets.next().flatten();
    let predecessor = gets.next().flatten();
    Ok(Snapshot {
        revision,
        own,
        leader,
        predecessor,
    })
}

/// Connect, retrying with backoff while etcd is unreachable; returns at once on a fatal
/// error (TLS trust, credentials, permissions), which a startup read of the election's prefix
/// also checks, so a misconfiguration is reported at start instead of as an endless retry.
pub async fn connect_and_probe(config: &Config) -> Result<Client, EtcdError> {
    let t = config.timing().request_timeout.max(Duration::from_secs(2));
    let prefix = crate::election::keys::election_prefix(&config.election);
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
    let mut warned = false;
    loop {
        let err = match connect(config).await {
            Ok(client) => match probe(&client, &prefix, t, config.etcd_tls.is_some()).await {
                Ok(_) => return Ok(client),
                // Unreachable but well configured so far: the driver keeps retrying.
                Err(e) if !e.is_fatal() => {
                    tracing::warn!(error = %e, "etcd is not reachable yet; campaigning once it is");
                    return Ok(client);
                }
                Err(e) => e,
            },
            Err(e) => e,
        };
        if err.is_fatal() {
            return Err(err);
        }
        if !warned {
            tracing::warn!(error = %err, "cannot connect to etcd yet; retrying");
            warned = true;
        }
        tokio::time::sleep(backoff.delay()).await;
    }
}

/// How long the startup probe keeps retrying TLS connections that etcd drops before
/// concluding that the drops are a misconfiguration rather than an outage.
const PROBE_DROPPED_FOR: Duration = Duration::from_secs(3);

/// The startup read of the election's prefix. Over TLS 1.3 the server checks our client
/// certificate only after our side of the handshake is done, so a refused certificate shows up
/// either as the server's alert (a fatal "tls" error) or, when the connection dies before our
/// request is under way, as a dropped connection ("connection closed", "broken pipe") that
/// tells nothing; an https:// endpoint on a plain-HTTP port ends in "tls handshake eof". Those
/// are also what an etcd restart looks like, so they are not fatal in themselves: retry them
/// here until the alert is seen, and if every connection is dropped for [`PROBE_DROPPED_FOR`],
/// report [`EtcdError::TlsDropped`] rather than letting the driver retry for ever.
async fn probe(client: &Client, prefix: &str, t: Duration, tls: bool) -> Result<(), EtcdError> {
    let started = tokio::time::Instant::now();
    let mut tries = 0;
    loop {
        match candidates(client, prefix, t).await {
            Ok(_) => return Ok(()),
            Err(e) if tls && dropped_in_tls(&e) => {
                tries += 1;
                if started.elapsed() >= PROBE_DROPPED_FOR {
                    return Err(EtcdError::TlsDropped {
                        tries,
                        last: e.to_string(),
                    });
                }
                tracing::debug!(error = %e, "etcd dropped the TLS connection; probing again");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => return Err(e),
        }
    }
}

/// A connection that etcd accepted and then dropped, during the TLS handshake or right after
/// it, before an answer (not one refused or timed out: that is etcd being down).
fn dropped_in_tls(e: &EtcdError) -> bool {
    let EtcdError::Request { source, .. } = e else {
        return false;
    };
    if e.is_fatal() {
        return false;
    }
    let text = error_chain(source).to_ascii_lowercase();
    [
        "connection closed",
        "broken pipe",
        "connection reset",
        "tls handshake eof",
    ]
    .iter()
    .any(|s| text.contains(s))
}

/// Every candidate in queue order (lowest create revision first).
pub async fn candidates(
    client: &Client,
    prefix: &str,
    after: Duration,
) -> Result<(i64, Vec<Candidate>), EtcdError> {
    let opts = GetOptions::new()
        .with_prefix()
        .with_sort(SortTarget::Create, SortOrder::Ascend);
    let mut c = client.clone();
    let resp = bounded("election list", after, 0, c.get(prefix, Some(opts))).await?;
    let revision = resp.header().map(|h| h.revision()).unwrap_or_default();
    Ok((
        revision,
        resp.kvs().iter().map(Candidate::from_kv).collect(),
    ))
}

/// Exponential backoff with a cap, for retrying `Unavailable` and timeouts.
#[derive(Debug, Clone)]
pub struct Backoff {
    next: Duration,
    max: Duration,
}

impl Backoff {
    pub fn new(first: Duration, max: Duration) -> Backoff {
        Backoff { next: first, max }
    }

    /// The delay before the next attempt; doubles up to the cap, with ±20% jitter.
    pub fn delay(&mut self) -> Duration {
        let base = self.next;
        self.next = (self.next * 2).min(self.max);
        base.mul_f64(0.8 + fastrand::f64() * 0.4)
    }
}
