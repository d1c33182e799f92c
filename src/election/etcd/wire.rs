//! What an etcd endpoint speaks, asked on a raw TCP connection: the startup probe's evidence
//! before it calls dropped connections a TLS mismatch. A connection that is reset or closed
//! before any answer says nothing about the server (a proxy or firewall resetting connections,
//! a load balancer with no backend up, etcd restarting): only a TLS record or an HTTP/2
//! SETTINGS frame in answer to our greeting names the protocol.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

use crate::config::parse::endpoint_authority;

/// The protocol an endpoint answered in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Spoken {
    /// A TLS record (a ServerHello, or an alert refusing our hello).
    Tls,
    /// An HTTP/2 frame to a clear-text HTTP/2 preface (etcd without TLS).
    PlainHttp2,
}

/// What the first endpoint that answered spoke, asking each in turn (TLS first, then clear
/// HTTP/2), each exchange bounded by `within`; None when none answered in either.
pub async fn spoken(endpoints: &[String], within: Duration) -> Option<Spoken> {
    for endpoint in endpoints {
        let Some(addr) = endpoint_authority(endpoint) else {
            continue;
        };
        for (hello, spoken) in [
            (client_hello(), Spoken::Tls),
            (h2_preface(), Spoken::PlainHttp2),
        ] {
            if let Some(reply) = exchange(addr, &hello, within).await
                && classify(&reply) == Some(spoken)
            {
                return Some(spoken);
            }
        }
    }
    None
}

/// Send `hello` on a new connection to `addr` and return the first bytes of the answer (up to
/// a frame header's 9); None if the connection failed, was closed or reset before any byte,
/// or nothing came within `within`.
async fn exchange(addr: &str, hello: &[u8], within: Duration) -> Option<Vec<u8>> {
    timeout(within, async {
        let mut stream = TcpStream::connect(addr).await.ok()?;
        stream.write_all(hello).await.ok()?;
        let mut reply = vec![0u8; 9];
        let mut got = 0;
        while got < reply.len() {
            match stream.read(&mut reply[got..]).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got += n,
            }
        }
        reply.truncate(got);
        (!reply.is_empty()).then_some(reply)
    })
    .await
    .ok()
    .flatten()
}

/// The protocol the first bytes of an answer are in: a TLS record header (content type 22
/// handshake or 21 alert, then major version 3), or an HTTP/2 frame header whose type is
/// SETTINGS (a server's first frame must be one).
fn classify(reply: &[u8]) -> Option<Spoken> {
    match reply {
        [0x15 | 0x16, 0x03, ..] => Some(Spoken::Tls),
        [_, _, _, 0x04, ..] if reply.len() >= 9 => Some(Spoken::PlainHttp2),
        _ => None,
    }
}

/// The clear-text HTTP/2 connection preface and an empty SETTINGS frame.
fn h2_preface() -> Vec<u8> {
    let mut b = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    b.extend_from_slice(&[0, 0, 0, 0x04, 0, 0, 0, 0, 0]);
    b
}

/// A TLS 1.2 ClientHello any TLS server answers, with a ServerHello or an alert: the common
/// ECDHE and RSA suites, the groups and signature algorithms they need, no server name.
fn client_hello() -> Vec<u8> {
    fn vec16(body: &[u8]) -> Vec<u8> {
        let mut v = (body.len() as u16).to_be_bytes().to_vec();
        v.extend_from_slice(body);
        v
    }
    fn extension(kind: u16, body: &[u8]) -> Vec<u8> {
        let mut v = kind.to_be_bytes().to_vec();
        v.extend(vec16(body));
        v
    }
    let suites: Vec<u8> = [
        0xc02f_u16, 0xc02b, 0xc030, 0xc02c, 0xcca8, 0xcca9, 0x009c, 0x002f, 0x1301, 0x1302,
    ]
    .iter()
    .flat_map(|s| s.to_be_bytes())
    .collect();
    let groups: Vec<u8> = [0x001d_u16, 0x0017, 0x0018]
        .iter()
        .flat_map(|g| g.to_be_bytes())
        .collect();
    let signatures: Vec<u8> = [
        0x0403_u16, 0x0804, 0x0401, 0x0503, 0x0805, 0x0501, 0x0806, 0x0601,
    ]
    .iter()
    .flat_map(|s| s.to_be_bytes())
    .collect();
    let mut extensions = extension(0x000a, &vec16(&groups));
    extensions.extend(extension(0x000b, &[1, 0]));
    extensions.extend(extension(0x000d, &vec16(&signatures)));

    let mut hello = vec![0x03, 0x03]; // TLS 1.2
    hello.extend_from_slice(&[0x5a; 32]); // random: nothing is negotiated on it
    hello.push(0); // no session id
    hello.extend(vec16(&suites));
    hello.extend_from_slice(&[1, 0]); // compression: null only
    hello.extend(vec16(&extensions));

    let mut handshake = vec![0x01]; // ClientHello
    handshake.extend_from_slice(&(hello.len() as u32).to_be_bytes()[1..]);
    handshake.extend(hello);
    let mut record = vec![0x16, 0x03, 0x01];
    record.extend(vec16(&handshake));
    record
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_classified_by_their_first_bytes() {
        #[rustfmt::skip]
        let table: &[(&str, &[u8], Option<Spoken>)] = &[
            ("ServerHello record",    &[0x16, 0x03, 0x03, 0x00, 0x5a], Some(Spoken::Tls)),
            ("alert record",          &[0x15, 0x03, 0x01, 0x00, 0x02], Some(Spoken::Tls)),
            ("HTTP/2 SETTINGS frame", &[0, 0, 6, 0x04, 0, 0, 0, 0, 0], Some(Spoken::PlainHttp2)),
            ("a cut SETTINGS header", &[0, 0, 6, 0x04, 0],             None),
            ("HTTP/2 GOAWAY first",   &[0, 0, 8, 0x07, 0, 0, 0, 0, 0], None),
            ("HTTP/1.1 answer",       b"HTTP/1.1 400 Bad",             None),
            ("one byte",              &[0x16],                         None),
            ("nothing",               &[],                             None),
        ];
        for (what, reply, want) in table {
            assert_eq!(classify(reply), *want, "{what}");
        }
    }

    #[test]
    fn the_client_hello_is_one_well_formed_record() {
        let r = client_hello();
        assert_eq!(&r[..3], &[0x16, 0x03, 0x01]);
        let record_len = u16::from_be_bytes([r[3], r[4]]) as usize;
        assert_eq!(record_len, r.len() - 5, "record length");
        assert_eq!(r[5], 0x01, "handshake type ClientHello");
        let handshake_len = u32::from_be_bytes([0, r[6], r[7], r[8]]) as usize;
        assert_eq!(handshake_len, r.len() - 9, "handshake length");
        assert_eq!(&r[9..11], &[0x03, 0x03], "client version TLS 1.2");
    }
}
