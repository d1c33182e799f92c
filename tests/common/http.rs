//! Minimal blocking HTTP/1.1 client over TCP and Unix sockets (no extra crates).
//!
//! Requests are sent with `Connection: close`; the response is read until its
//! body is complete (Content-Length, chunked, or EOF), within an overall
//! timeout. Bodies are returned as (lossy) UTF-8 text.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);
const CONTROL_TIMEOUT: Duration = Duration::from_secs(15);

/// `GET path` on `addr` ("127.0.0.1:8080"; an "http://" prefix is accepted).
/// Returns (status, body). 2 s timeout.
pub fn http_get(addr: &str, path: &str) -> Result<(u16, String), String> {
    http_get_timeout(addr, path, DEFAULT_TIMEOUT)
}

pub fn http_get_timeout(
    addr: &str,
    path: &str,
    timeout: Duration,
) -> Result<(u16, String), String> {
    request_tcp(addr, "GET", path, None, timeout)
}

/// Any method over TCP; a body is sent as `application/json`. 2 s timeout.
pub fn http_request(
    addr: &str,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> Result<(u16, String), String> {
    request_tcp(addr, method, path, body, DEFAULT_TIMEOUT)
}

/// `method uri` over the Unix socket at `path`; a body is sent as
/// `application/json`. Returns (status, body). 2 s timeout (15 s for control actions).
pub fn unix_http(
    path: &Path,
    method: &str,
    uri: &str,
    body: Option<&str>,
) -> Result<(u16, String), String> {
    let stream =
        UnixStream::connect(path).map_err(|e| format!("connect {}: {e}", path.display()))?;
    // A control action is answered once it is carried out: a sidecar leader's resign or pause
    // waits out the budget it handed to its app (up to TTL − margin).
    let timeout = if method == "GET" {
        DEFAULT_TIMEOUT
    } else {
        CONTROL_TIMEOUT
    };
    let deadline = Instant::now() + timeout;
    stream
        .set_write_timeout(Some(timeout))
        .and_then(|_| stream.set_read_timeout(Some(timeout)))
        .map_err(|e| e.to_string())?;
    exchange(stream, "localhost", method, uri, body, deadline)
        .map_err(|e| format!("{method} {uri} on {}: {e}", path.display()))
}

fn request_tcp(
    addr: &str,
    method: &str,
    path: &str,
    body: Option<&str>,
    timeout: Duration,
) -> Result<(u16, String), String> {
    let host = addr
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string();
    let deadline = Instant::now() + timeout;
    let sock = host
        .to_socket_addrs()
        .map_err(|e| format!("resolve {host}: {e}"))?
        .next()
        .ok_or_else(|| format!("resolve {host}: no address"))?;
    let stream =
        TcpStream::connect_timeout(&sock, timeout).map_err(|e| format!("connect {host}: {e}"))?;
    let _ = stream.set_nodelay(true);
    let left = deadline
        .saturating_duration_since(Instant::now())
        .max(Duration::from_millis(1));
    stream
        .set_write_timeout(Some(left))
        .and_then(|_| stream.set_read_timeout(Some(left)))
        .map_err(|e| e.to_string())?;
    exchange(stream, &host, method, path, body, deadline)
        .map_err(|e| format!("{method} http://{host}{path}: {e}"))
}

fn exchange<S: Read + Write>(
    mut stream: S,
    host: &str,
    method: &str,
    uri: &str,
    body: Option<&str>,
    deadline: Instant,
) -> Result<(u16, String), String> {
    write_request(&mut stream, host, method, uri, body)?;
    read_response(&mut stream, method == "HEAD", deadline)
}

fn write_request<S: Write>(
    stream: &mut S,
    host: &str,
    method: &str,
    uri: &str,
    body: Option<&str>,
) -> Result<(), String> {
    let mut req =
        format!("{method} {uri} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nAccept: */*\r\n");
    if let Some(b) = body {
        req.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            b.len()
        ));
    } else if !matches!(method, "GET" | "HEAD" | "DELETE" | "OPTIONS") {
        req.push_str("Content-Length: 0\r\n");
    }
    req.push_str("\r\n");
    if let Some(b) = body {
        req.push_str(b);
    }
    stream
        .write_all(req.as_bytes())
        .and_then(|_| stream.flush())
        .map_err(|e| format!("write request: {e}"))
}

fn read_response<S: Read>(
    stream: &mut S,
    head_only: bool,
    deadline: Instant,
) -> Result<(u16, String), String> {
    let mut buf = Vec::with_capacity(4096);
    let mut chunk = [0u8; 8192];
    loop {
        if let Some(resp) = parse_response(&buf, false, head_only)? {
            return Ok(resp);
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "timed out reading response ({} bytes so far)",
                buf.len()
            ));
        }
        match stream.read(&mut chunk) {
            Ok(0) => {
                return parse_response(&buf, true, head_only)?
                    .ok_or_else(|| format!("connection closed after {} bytes", buf.len()));
            }
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("read response: {e}")),
        }
    }
}

/// A GET on its own TCP connection whose answer is read later: for a long poll that must be
/// waiting at the server before the test makes the change it waits for (a sleep cannot tell).
pub struct PendingGet {
    stream: TcpStream,
    what: String,
    deadline: Instant,
}

impl PendingGet {
    /// Connects to `addr` and sends `GET path`; the answer must come within `timeout`.
    pub fn send(addr: &str, path: &str, timeout: Duration) -> PendingGet {
        let host = addr.trim_start_matches("http://").trim_end_matches('/');
        let what = format!("GET http://{host}{path}");
        let mut stream =
            TcpStream::connect(host).unwrap_or_else(|e| panic!("{what}: connect: {e}"));
        let _ = stream.set_nodelay(true);
        write_request(&mut stream, host, "GET", path, None)
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        PendingGet {
            stream,
            what,
            deadline: Instant::now() + timeout,
        }
    }

    /// Waits until the server has taken the whole request off the connection (its end's
    /// receive queue in /proc/net/tcp{,6} is empty) and has not answered: the request is being
    /// handled. Panics after `within`, or when an answer came back first.
    pub fn wait_parked(&self, within: Duration) {
        let server = self.stream.peer_addr().expect("peer address");
        let client = self.stream.local_addr().expect("local address");
        let until = Instant::now() + within;
        loop {
            self.stream.set_nonblocking(true).expect("non-blocking");
            let mut byte = [0u8; 1];
            let answered = match self.stream.peek(&mut byte) {
                Ok(_) => true,
                Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
            };
            self.stream.set_nonblocking(false).expect("blocking");
            assert!(
                !answered,
                "{}: answered (or closed) before the test went on: it did not wait",
                self.what
            );
            if receive_queue(server, client) == Some(0) {
                return;
            }
            assert!(
                Instant::now() < until,
                "{}: the server had not read the request after {within:?}",
                self.what
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Reads the answer: (status, body).
    pub fn answer(mut self) -> Result<(u16, String), String> {
        let left = self
            .deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(1));
        self.stream
            .set_read_timeout(Some(left))
            .map_err(|e| e.to_string())?;
        read_response(&mut self.stream, false, self.deadline)
            .map_err(|e| format!("{}: {e}", self.what))
    }
}

/// Bytes waiting in the kernel's receive queue of the TCP socket `local` ↔ `remote` of this
/// host (/proc/net/tcp or tcp6); None when there is no such socket.
fn receive_queue(local: std::net::SocketAddr, remote: std::net::SocketAddr) -> Option<u64> {
    fn hex(addr: std::net::SocketAddr) -> String {
        // The kernel prints each 32-bit word of the address in host byte order.
        let words: Vec<[u8; 4]> = match addr.ip() {
            std::net::IpAddr::V4(ip) => vec![ip.octets()],
            std::net::IpAddr::V6(ip) => ip
                .octets()
                .chunks(4)
                .map(|c| [c[0], c[1], c[2], c[3]])
                .collect(),
        };
        let ip: String = words
            .iter()
            .map(|w| format!("{:08X}", u32::from_ne_bytes(*w)))
            .collect();
        format!("{ip}:{:04X}", addr.port())
    }
    let table = if local.is_ipv4() {
        "/proc/net/tcp"
    } else {
        "/proc/net/tcp6"
    };
    let (local, remote) = (hex(local), hex(remote));
    std::fs::read_to_string(table)
        .ok()?
        .lines()
        .skip(1)
        .find_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            (f.len() > 4 && f[1] == local && f[2] == remote)
                .then(|| u64::from_str_radix(f[4].split_once(':')?.1, 16).ok())
                .flatten()
        })
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// `Ok(None)`: need more bytes. At `eof`, an incomplete body is an error
/// except for close-delimited bodies.
fn parse_response(buf: &[u8], eof: bool, head_only: bool) -> Result<Option<(u16, String)>, String> {
    let Some(head_end) = find(buf, b"\r\n\r\n") else {
        return if eof {
            Err(format!(
                "incomplete response head: {:?}",
                String::from_utf8_lossy(buf)
            ))
        } else {
            Ok(None)
        };
    };
    let head = String::from_utf8_lossy(&buf[..head_end]);
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line: {status_line:?}"))?;
    let mut content_length = None;
    let mut chunked = false;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            content_length = Some(
                value
                    .parse::<usize>()
                    .map_err(|_| format!("bad Content-Length: {value:?}"))?,
            );
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value.to_ascii_lowercase().contains("chunked");
        }
    }
    let rest = &buf[head_end + 4..];
    if (100..200).contains(&status) {
        // Interim response (e.g. 100 Continue): skip it.
        return parse_response(rest, eof, head_only);
    }
    if head_only || status == 204 || status == 304 {
        return Ok(Some((status, String::new())));
    }
    if chunked {
        return match decode_chunked(rest)? {
            Some(body) => Ok(Some((status, String::from_utf8_lossy(&body).into_owned()))),
            None if eof => Err("connection closed inside a chunked body".into()),
            None => Ok(None),
        };
    }
    if let Some(len) = content_length {
        if rest.len() >= len {
            return Ok(Some((
                status,
                String::from_utf8_lossy(&rest[..len]).into_owned(),
            )));
        }
        return if eof {
            Err(format!("body truncated: {} of {len} bytes", rest.len()))
        } else {
            Ok(None)
        };
    }
    // No length: the body runs until the server closes the connection.
    Ok(eof.then(|| (status, String::from_utf8_lossy(rest).into_owned())))
}

/// `Ok(None)` until the terminating zero-size chunk has arrived.
fn decode_chunked(mut data: &[u8]) -> Result<Option<Vec<u8>>, String> {
    let mut body = Vec::new();
    loop {
        let Some(line_end) = find(data, b"\r\n") else {
            return Ok(None);
        };
        let size_line = String::from_utf8_lossy(&data[..line_end]);
        let size_hex = size_line.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_hex, 16)
            .map_err(|_| format!("bad chunk size line: {size_line:?}"))?;
        data = &data[line_end + 2..];
        if size == 0 {
            // Trailers (if any) are ignored.
            return Ok(Some(body));
        }
        if data.len() < size + 2 {
            return Ok(None);
        }
        body.extend_from_slice(&data[..size]);
        data = &data[size + 2..];
    }
}
