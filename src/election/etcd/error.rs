//! What can go wrong talking to etcd ([`EtcdError`], with a label for logs and metrics and a
//! hint for the operator), the deadline every call runs under ([`bounded`]: etcd-client has
//! none per request and does not retry) and the [`Backoff`] callers retry with.

use std::time::Duration;

use tokio::time::timeout;

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
    #[error("candidate key {key} exists, bound to another lease ({lease:x})")]
    KeyTaken { key: String, lease: i64 },
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
    #[error(
        "etcd closed {tries} plain-text connections in a row right after they were made: it most \
         likely serves TLS on that port, so --endpoints must use https:// (last error: {last})"
    )]
    PlainDropped { tries: u32, last: String },
    #[error(
        "etcd's history was rewound: it answered at revision {now}, below revision {seen} seen \
         before (etcd rebuilt from empty, or restored from an older snapshot?); fencing tokens \
         would repeat, so this replica does not lead until the revision passes {seen} (see \
         docs/operations.md)"
    )]
    HistoryRewound { seen: i64, now: i64 },
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
                // etcd's NOSPACE alarm is raised (its backend reached --quota-backend-bytes):
                // it refuses every write — a lease grant, a put — on every member, and still
                // serves reads, deletes and keepalives.
                if text.contains("database space exceeded") {
                    return "nospace";
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
                        // The connection under the call closed (an endpoint going away).
                        tonic::Code::Cancelled => "cancelled",
                        tonic::Code::Unauthenticated => "unauthenticated",
                        tonic::Code::PermissionDenied => "permission_denied",
                        _ => "grpc",
                    },
                    etcd_client::Error::TransportError(_) => "transport",
                    _ => "client",
                }
            }
            EtcdError::LeaseGone { .. } => "lease_gone",
            EtcdError::KeyTaken { .. } => "key_taken",
            EtcdError::StreamClosed { .. } => "stream_closed",
            EtcdError::Setup(_) => "setup",
            EtcdError::TlsDropped { .. } | EtcdError::PlainDropped { .. } => "tls",
            EtcdError::HistoryRewound { .. } => "history",
        }
    }

    /// Errors another etcd member may not give: no answer in time, the member unavailable or
    /// the connection to it broken. The next call goes to another endpoint.
    pub fn moves_endpoint(&self) -> bool {
        matches!(
            self.kind(),
            "timeout"
                | "unavailable"
                | "deadline"
                | "cancelled"
                | "transport"
                | "stream_closed"
                | "grpc"
        )
    }

    /// Errors that no amount of retrying fixes (TLS trust, bad credentials, denied permission).
    pub fn is_fatal(&self) -> bool {
        matches!(
            self.kind(),
            "unauthenticated" | "permission_denied" | "setup" | "tls"
        )
    }

    /// What the operator should check, for fatal errors and for etcd out of space.
    pub fn hint(&self) -> Option<&'static str> {
        match self.kind() {
            "nospace" => Some(NOSPACE_HINT),
            "tls" => Some(
                "check --etcd-ca (the CA that signed etcd's server certificate) and --etcd-cert/--etcd-key, and that the endpoints use https://",
            ),
            "unauthenticated" => Some(
                "check --etcd-user and its password (--etcd-password-file or ELECTD_ETCD_PASSWORD)",
            ),
            "permission_denied" => Some(
                "the etcd user's role needs readwrite on the election's key prefix `<election>/` and on its floor record, the key `<election>.floor` (see docs/operations.md)",
            ),
            _ => None,
        }
    }
}

/// What to do when etcd's NOSPACE alarm is raised (docs/operations.md, "etcd out of space").
pub const NOSPACE_HINT: &str = "etcd's NOSPACE alarm is raised (its database reached \
     --quota-backend-bytes) and it refuses every write: free space with `etcdctl compact <current \
     revision>` and `etcdctl defrag` on every member (or raise --quota-backend-bytes), then clear \
     the alarm with `etcdctl alarm disarm`; electd keeps retrying and joins once writes succeed";

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

#[cfg(test)]
mod tests {
    use super::*;

    fn grpc(code: tonic::Code, message: &str) -> EtcdError {
        EtcdError::Request {
            op: "lease grant",
            source: etcd_client::Error::GRpcStatus(tonic::Status::new(code, message)),
        }
    }

    /// How each error etcd gives is classified: its label, whether the next call moves to
    /// another endpoint, whether retrying is pointless, and whether the operator gets a hint.
    #[test]
    fn errors_are_classified() {
        #[rustfmt::skip]
        let table: &[(&str, EtcdError, &str, bool, bool, bool)] = &[
            // name, error, kind, moves endpoint, fatal, hint
            ("no space", grpc(tonic::Code::ResourceExhausted, "etcdserver: mvcc: database space exceeded"),
             "nospace", false, false, true),
            ("other exhaustion", grpc(tonic::Code::ResourceExhausted, "etcdserver: too many requests"),
             "grpc", true, false, false),
            ("unavailable", grpc(tonic::Code::Unavailable, "etcdserver: leader changed"),
             "unavailable", true, false, false),
            ("denied", grpc(tonic::Code::PermissionDenied, "etcdserver: permission denied"),
             "permission_denied", false, true, true),
            ("bad password", grpc(tonic::Code::InvalidArgument, "etcdserver: authentication failed, invalid user ID or password"),
             "unauthenticated", false, true, true),
            ("stale token", grpc(tonic::Code::Unauthenticated, "etcdserver: invalid auth token"),
             "auth_token", false, false, false),
            ("timeout", EtcdError::Timeout { op: "lease grant", after: Duration::from_secs(1) },
             "timeout", true, false, false),
        ];
        for (name, e, kind, moves, fatal, hint) in table {
            assert_eq!(e.kind(), *kind, "{name}");
            assert_eq!(e.moves_endpoint(), *moves, "{name}: moves endpoint");
            assert_eq!(e.is_fatal(), *fatal, "{name}: fatal");
            assert_eq!(e.hint().is_some(), *hint, "{name}: hint");
        }
    }

    /// The operator learns from the error itself which alarm and what clears it.
    #[test]
    fn the_nospace_hint_names_the_alarm_and_the_cure() {
        let e = grpc(
            tonic::Code::ResourceExhausted,
            "etcdserver: mvcc: database space exceeded",
        );
        assert!(e.to_string().contains("database space exceeded"), "{e}");
        let hint = e.hint().expect("a hint");
        for needed in [
            "NOSPACE",
            "etcdctl compact",
            "etcdctl defrag",
            "etcdctl alarm disarm",
        ] {
            assert!(hint.contains(needed), "{needed:?} missing from {hint:?}");
        }
    }
}
