//! The startup probe: connect, then read the election's prefix and its floor record once, telling a misconfiguration
//! (refused certificate, bad credentials, denied permission) from an outage, so the former is
//! reported at start instead of retried for ever.

use std::time::Duration;

use super::client::{Clients, connect};
use super::error::{Backoff, EtcdError, error_chain};
use super::txn::candidates;
use super::wire::{self, Spoken};
use crate::config::Config;

/// Connect, retrying with backoff while etcd is unreachable; returns at once on a fatal
/// error (TLS trust, credentials, permissions), which a startup read of the election's prefix
/// also checks, so a misconfiguration is reported at start instead of as an endless retry.
pub async fn connect_and_probe(config: &Config) -> Result<Clients, EtcdError> {
    let t = config.timing().request_timeout.max(Duration::from_secs(2));
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
    let mut warned = false;
    loop {
        let err = match connect(&config.etcd_settings()).await {
            Ok(client) => match probe(&client, config, t).await {
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

/// Whether electd talks TLS to etcd: TLS files given, or an https:// endpoint.
fn expects_tls(config: &Config) -> bool {
    config.etcd_tls.is_some() || config.endpoints.iter().any(|e| e.starts_with("https://"))
}

/// How long the startup probe keeps retrying connections that etcd drops before concluding
/// that the drops are a misconfiguration rather than an outage.
const PROBE_DROPPED_FOR: Duration = Duration::from_secs(3);

/// The startup read of the election's prefix. Over TLS 1.3 the server checks our client
/// certificate only after our side of the handshake is done, so a refused certificate shows up
/// either as the server's alert (a fatal "tls" error) or, when the connection dies before our
/// request is under way, as a dropped connection ("connection closed", "broken pipe") that
/// tells nothing; an https:// endpoint on a plain-HTTP port ends in "tls handshake eof", and an
/// http:// endpoint on a TLS port in "broken pipe". Those are also what an etcd restart looks
/// like, so they are not fatal in themselves: retry them here until the alert is seen, and if
/// connections are still dropped after [`PROBE_DROPPED_FOR`], ask the endpoints on a raw
/// connection what they speak ([`wire::spoken`]): a TLS server behind an http:// endpoint
/// gives [`EtcdError::PlainDropped`]; with TLS expected, any server that answers (a TLS one
/// dropping our certificate, or a clear-text one) gives [`EtcdError::TlsDropped`] — rather
/// than letting the driver retry for ever. Connections reset before any answer (a proxy or
/// firewall resetting them, a load balancer with no backend) prove nothing: that is an outage,
/// and the driver keeps trying. Other
/// errors (a timeout, a refused connection) are probed through the same window, so one slow
/// first answer does not hide the misconfiguration; if the last one is such an error, it is
/// returned (etcd unreachable: the driver keeps trying).
async fn probe(client: &Clients, config: &Config, t: Duration) -> Result<(), EtcdError> {
    let tls = expects_tls(config);
    let started = tokio::time::Instant::now();
    let mut tries = 0;
    let prefix = crate::election::keys::election_prefix(&config.election);
    let key = crate::election::keys::floor_key(&config.election);
    // Set once an endpoint answered in a protocol that explains the drops: one more read
    // decides (etcd may have come back meanwhile).
    let mut mismatch = None;
    loop {
        let read = async {
            candidates(client, &prefix, t).await?;
            // The floor record too: a role granted the prefix alone is refused here, at start.
            let k = key.clone();
            client
                .call(
                    "floor read",
                    t,
                    0,
                    |mut c| async move { c.get(k, None).await },
                )
                .await
        };
        let e = match read.await {
            Ok(_) => return Ok(()),
            Err(e) if e.is_fatal() => return Err(e),
            Err(e) => e,
        };
        let was_dropped = dropped(&e);
        tries += was_dropped as u32;
        if let Some(spoken) = mismatch {
            if !was_dropped {
                return Err(e);
            }
            let last = e.to_string();
            tracing::debug!(?spoken, "etcd's endpoint answered a raw greeting");
            return Err(if tls {
                EtcdError::TlsDropped { tries, last }
            } else {
                EtcdError::PlainDropped { tries, last }
            });
        }
        if started.elapsed() >= PROBE_DROPPED_FOR {
            // Judged by the last answer: a connection that etcd still drops after the whole
            // window (a timeout or a refusal on the way, as on a busy machine, changes nothing).
            if !was_dropped {
                return Err(e);
            }
            let spoken = wire::spoken(&config.endpoints, t.min(Duration::from_secs(1))).await;
            match (tls, spoken) {
                (false, Some(Spoken::Tls)) | (true, Some(_)) => mismatch = spoken,
                _ => {
                    tracing::warn!(
                        tries,
                        error = %e,
                        "etcd's connections keep being closed before any answer, and no \
                         endpoint's answer to a raw greeting shows a TLS mismatch: an outage (a \
                         proxy or firewall resetting connections?), not a TLS mismatch; retrying"
                    );
                    return Err(e);
                }
            }
        }
        tracing::debug!(error = %e, "etcd dropped the connection or did not answer; probing again");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A connection that etcd accepted and then dropped, during the TLS handshake or right after
/// it, before an answer (not one refused or timed out: that is etcd being down).
fn dropped(e: &EtcdError) -> bool {
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
