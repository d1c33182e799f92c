//! Thin, deadline-bound wrappers over the etcd calls the election needs. Every call here has its
//! own timeout (etcd-client has none per request and does not retry); callers decide whether to
//! retry with [`Backoff`].

use std::time::Duration;

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, GetOptions, PutOptions, SortOrder, SortTarget, Txn,
    TxnOp, TxnOpResponse,
};
use tokio::time::timeout;

use crate::config::Config;

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
}

impl EtcdError {
    /// A short label for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            EtcdError::Timeout { .. } => "timeout",
            EtcdError::Request { source, .. } => {
                let text = error_chain(source).to_ascii_lowercase();
                if text.contains("authentication failed")
                    || text.contains("invalid auth token")
                    || text.contains("user name is empty")
                {
                    return "unauthenticated";
                }
                if text.contains("permission denied") {
                    return "permission_denied";
                }
                if text.contains("certificate")
                    || text.contains("handshake")
                    || text.contains("tls")
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
fn classify(op: &'static str, lease: i64, source: etcd_client::Error) -> EtcdError {
    let text = source.to_string();
    if text.contains("lease not found") {
        EtcdError::LeaseGone { lease }
    } else {
        EtcdError::Request { op, source }
    }
}

async fn bounded<T>(
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
            let pem = std::fs::read(ca).map_err(|e| {
                EtcdError::Setup(format!("cannot read --etcd-ca {}: {e}", ca.display()))
            })?;
            t = t.ca_certificate(etcd_client::Certificate::from_pem(pem));
        }
        if let (Some(cert), Some(key)) = (&tls.cert, &tls.key) {
            let c = std::fs::read(cert).map_err(|e| {
                EtcdError::Setup(format!("cannot read --etcd-cert {}: {e}", cert.display()))
            })?;
            let k = std::fs::read(key).map_err(|e| {
                EtcdError::Setup(format!("cannot read --etcd-key {}: {e}", key.display()))
            })?;
            t = t.identity(etcd_client::Identity::from_pem(c, k));
        }
        options = options.with_tls(t);
    }
    if let Some(auth) = &config.etcd_auth {
        options = options.with_user(auth.user.clone(), auth.password.clone());
    }
    let after = timing.request_timeout.max(Duration::from_secs(3));
    bounded(
        "connect",
        after,
        0,
        Client::connect(config.endpoints.clone(), Some(options)),
    )
    .await
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

/// Create `key` bound to `lease` if absent; return its create revision (ours, or the existing
/// key's if we created it in an earlier attempt whose reply was lost).
pub async fn create_candidate(
    client: &Client,
    key: &str,
    value: &str,
    lease: i64,
    after: Duration,
) -> Result<i64, EtcdError> {
    let txn = Txn::new()
        .when([Compare::create_revision(key, CompareOp::Equal, 0)])
        .and_then([TxnOp::put(
            key,
            value,
            Some(PutOptions::new().with_lease(lease)),
        )])
        .or_else([TxnOp::get(key, None)]);
    let mut c = client.clone();
    let resp = bounded("campaign txn", after, lease, c.txn(txn)).await?;
    if resp.succeeded() {
        let rev = resp.header().map(|h| h.revision()).unwrap_or_default();
        return Ok(rev);
    }
    for op in resp.op_responses() {
        if let TxnOpResponse::Get(g) = op
            && let Some(kv) = g.kvs().first()
        {
            if kv.lease() != lease {
                return Err(EtcdError::Setup(format!(
                    "candidate key {key} exists with another lease {:x}",
                    kv.lease()
                )));
            }
            return Ok(kv.create_revision());
        }
    }
    // Deleted between compare and get: cannot happen inside one txn.
    Err(EtcdError::LeaseGone { lease })
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
            Ok(client) => match candidates(&client, &prefix, t).await {
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
