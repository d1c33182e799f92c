//! A minimal client for the local electd API over its Unix socket (HTTP/1.0, one request per
//! connection), for `electd status|resign|pause|resume` and `elect-run --socket`.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach electd at {path}: {source} (is electd running with --socket {path}?)")]
    Connect {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("electd at {path} gave a malformed answer: {reason}")]
    Malformed { path: PathBuf, reason: String },
}

/// Send `method uri` to the socket at `path`; returns the status code and body.
pub fn request(path: &Path, method: &str, uri: &str) -> Result<(u16, String), ClientError> {
    request_within(path, method, uri, Duration::from_secs(30))
}

/// [`request`] with a deadline for each read and write.
pub fn request_within(
    path: &Path,
    method: &str,
    uri: &str,
    deadline: Duration,
) -> Result<(u16, String), ClientError> {
    let connect = |source| ClientError::Connect {
        path: path.to_path_buf(),
        source,
    };
    let mut stream = UnixStream::connect(path).map_err(connect)?;
    stream
        .set_read_timeout(Some(deadline))
        .and_then(|_| stream.set_write_timeout(Some(deadline)))
        .map_err(connect)?;
    write!(
        stream,
        "{method} {uri} HTTP/1.0\r\nHost: electd\r\nContent-Length: 0\r\n\r\n"
    )
    .map_err(connect)?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).map_err(connect)?;
    let text = String::from_utf8_lossy(&raw);
    let malformed = |reason: &str| ClientError::Malformed {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    };
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| malformed("no header terminator"))?;
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse::<u16>().ok())
        .ok_or_else(|| malformed("no status code"))?;
    Ok((code, body.to_string()))
}
