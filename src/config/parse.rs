//! One parser per kind of value. Each takes the text as given and returns the value or what
//! would be accepted; [`super::Layers`] adds the setting's name, the value and where it came
//! from to the message.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::{LogFormat, MAX_ONCE_PER, MAX_TTL, MIN_TTL, OnExit};

/// Parse a duration like `5s`, `500ms`, `1m30s`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    if t.is_empty() {
        return Err("empty duration".into());
    }
    humantime::parse_duration(t).map_err(|e| e.to_string())
}

pub fn duration(s: &str) -> Result<Duration, String> {
    parse_duration(s).map_err(|_| "expected a duration such as `5s`, `500ms` or `1m`".into())
}

/// A duration within `lo..=hi`.
pub fn duration_between(lo: &str, hi: &str) -> impl Fn(&str) -> Result<Duration, String> {
    let (lo_d, hi_d) = (
        parse_duration(lo).expect("invariant: a valid bound"),
        parse_duration(hi).expect("invariant: a valid bound"),
    );
    let (lo, hi) = (lo.to_string(), hi.to_string());
    move |s| {
        let d = duration(s)?;
        if (lo_d..=hi_d).contains(&d) {
            Ok(d)
        } else {
            Err(format!("must be between {lo} and {hi}"))
        }
    }
}

/// The lease TTL: whole seconds, at least etcd's minimum.
pub fn ttl(s: &str) -> Result<Duration, String> {
    let d = duration(s)?;
    if d < MIN_TTL {
        return Err("must be at least 2s (etcd's minimum lease TTL)".into());
    }
    if d.subsec_nanos() != 0 {
        return Err(
            "must be a whole number of seconds (etcd leases count in seconds), e.g. `3s`".into(),
        );
    }
    if d > MAX_TTL {
        return Err(format!(
            "must be at most {}s (etcd's largest lease TTL)",
            MAX_TTL.as_secs()
        ));
    }
    Ok(d)
}

/// elect-run's `--once-per` slot: whole seconds, 1 s to [`MAX_ONCE_PER`].
pub fn once_per(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)
        .map_err(|e| format!("expected a duration such as `1m`, `1h` or `24h` ({e})"))?;
    if d < Duration::from_secs(1) || d > MAX_ONCE_PER || d.subsec_nanos() != 0 {
        return Err(
            "must be a whole number of seconds, at least 1s and at most 366d (e.g. \
                    `1m`, `1h`, `24h`): a slot record is kept for two periods, on an etcd lease"
                .into(),
        );
    }
    Ok(d)
}

pub fn endpoint(e: &str) -> Result<String, String> {
    let expected =
        "expected a URL such as http://127.0.0.1:2379, https://etcd-0:2379 or http://[::1]:2379";
    let rest = endpoint_authority(e)
        .ok_or_else(|| format!("{expected} (scheme must be http or https)"))?;
    split_host_port(rest).map_err(|why| format!("{expected} ({why})"))?;
    Ok(e.to_string())
}

/// `HOST:PORT` of an `http://` or `https://` endpoint, trailing slashes dropped; None for
/// another scheme. [`endpoint`] checks the rest.
pub fn endpoint_authority(e: &str) -> Option<&str> {
    e.strip_prefix("http://")
        .or_else(|| e.strip_prefix("https://"))
        .map(|rest| rest.trim_end_matches('/'))
}

/// `HOST:PORT` into host and port: a name, an IPv4 address, or an IPv6 address in brackets
/// (`[::1]:2379`; without them the port could not be told from the address), and a port
/// 1–65535. The reason when it is not, in words.
fn split_host_port(v: &str) -> Result<(&str, u16), String> {
    let (host, port) = if let Some(inner) = v.strip_prefix('[') {
        let (addr, after) = inner
            .split_once(']')
            .ok_or("bad host: `[` without `]` around an IPv6 address")?;
        addr.parse::<std::net::Ipv6Addr>()
            .map_err(|_| format!("bad host: [{addr}] is not an IPv6 address"))?;
        let port = after
            .strip_prefix(':')
            .ok_or("missing port after the IPv6 address")?;
        (addr, port)
    } else {
        let (host, port) = v.rsplit_once(':').ok_or("missing port")?;
        if host.contains(':') {
            return Err(format!(
                "bad host: an IPv6 address goes in brackets, as in [{host}]:{port}"
            ));
        }
        (host, port)
    };
    if host.is_empty() || host.contains('/') || host.contains(char::is_whitespace) {
        return Err("bad host".into());
    }
    let port = port
        .parse::<u16>()
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| format!("bad port {port:?}"))?;
    Ok((host, port))
}

/// The longest election name: it is part of every key, and etcd refuses large requests.
pub const MAX_ELECTION_BYTES: usize = 512;
/// The longest member id: it is in every candidate key's value.
pub const MAX_ID_BYTES: usize = 256;

pub fn election(v: &str) -> Result<String, String> {
    if v.len() > MAX_ELECTION_BYTES {
        return Err(format!(
            "must be at most {MAX_ELECTION_BYTES} bytes (it is part of every key); got {} bytes",
            v.len()
        ));
    }
    if v.trim().is_empty() {
        return Err("must be a non-empty name such as `my-service`".into());
    }
    if v.ends_with('/') || v.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("must not end with `/` or contain whitespace or control characters".into());
    }
    Ok(v.to_string())
}

pub fn id(v: &str) -> Result<String, String> {
    if v.trim().is_empty() {
        return Err("must be non-empty (default: the host name)".into());
    }
    if v.len() > MAX_ID_BYTES {
        return Err(format!(
            "must be at most {MAX_ID_BYTES} bytes; got {} bytes",
            v.len()
        ));
    }
    Ok(v.to_string())
}

/// `HOST:PORT`, or `off`/`none` for no listener.
pub fn listen_addr_or_off(v: &str) -> Result<Option<SocketAddr>, String> {
    let v = v.trim();
    if v == "off" || v == "none" {
        return Ok(None);
    }
    v.parse::<SocketAddr>().map(Some).map_err(|_| {
        "expected HOST:PORT with a numeric address such as 127.0.0.1:4040 or [::1]:4040, or `off`"
            .into()
    })
}

/// `HOST:PORT` of an app: a host name or address, and a port.
pub fn host_port(v: &str) -> Result<String, String> {
    let expected = "expected HOST:PORT such as 10.0.0.5:5432, db-0.db:5432 or [fd00::5]:5432";
    let v = v.trim();
    split_host_port(v).map_err(|why| format!("{expected} ({why})"))?;
    Ok(v.to_string())
}

/// A listen address `HOST:PORT` with a numeric address.
pub fn listen_addr(v: &str) -> Result<SocketAddr, String> {
    v.trim().parse::<SocketAddr>().map_err(|_| {
        "expected HOST:PORT with a numeric address such as 0.0.0.0:5433 or [::]:5433".into()
    })
}

pub fn path(v: &str) -> Result<PathBuf, String> {
    if v.trim().is_empty() {
        return Err("expected a file path such as /run/electd/electd.sock".into());
    }
    Ok(PathBuf::from(v))
}

/// A state file's path: a file, not a directory. Whether its directory exists is checked when
/// electd starts (it writes the file at once), not here: a configuration is also checked on
/// hosts it does not run on.
pub fn state_file(v: &str) -> Result<PathBuf, String> {
    if v.trim().is_empty() || v.ends_with('/') {
        return Err("expected a file path such as /var/lib/electd/state.json".into());
    }
    Ok(PathBuf::from(v))
}

pub fn file_mode(v: &str) -> Result<u32, String> {
    u32::from_str_radix(v.trim().trim_start_matches("0o"), 8)
        .ok()
        .filter(|m| *m <= 0o777)
        .ok_or_else(|| "expected an octal file mode such as 0660 or 0600".into())
}

pub fn group(v: &str) -> Result<u32, String> {
    let v = v.trim();
    let gid = match v.parse::<u32>() {
        Ok(gid) => Some(gid),
        Err(_) => nix::unistd::Group::from_name(v)
            .ok()
            .flatten()
            .map(|g| g.gid.as_raw()),
    };
    gid.ok_or_else(|| "expected an existing group name or a numeric gid".into())
}

pub fn numeric_id(v: &str) -> Result<u32, String> {
    v.trim()
        .parse::<u32>()
        .map_err(|_| "expected numeric ids, comma-separated, e.g. `1000,1001`".into())
}

pub fn log_level(v: &str) -> Result<String, String> {
    let l = v.trim().to_ascii_lowercase();
    if ["error", "warn", "info", "debug", "trace"].contains(&l.as_str()) {
        Ok(l)
    } else {
        Err("expected one of error, warn, info, debug, trace".into())
    }
}

pub fn log_format(v: &str) -> Result<LogFormat, String> {
    match v.trim() {
        "text" => Ok(LogFormat::Text),
        "json" => Ok(LogFormat::Json),
        _ => Err("expected `text` or `json`".into()),
    }
}

pub fn stop_signal(v: &str) -> Result<nix::sys::signal::Signal, String> {
    signal(v).ok_or_else(|| {
        "expected a signal name such as SIGTERM, TERM, SIGINT, SIGQUIT or a number".into()
    })
}

/// `true` or `false` (also `yes`/`no`, `on`/`off`, `1`/`0`).
pub fn boolean(v: &str) -> Result<bool, String> {
    match v.trim().to_ascii_lowercase().as_str() {
        "true" | "yes" | "on" | "1" => Ok(true),
        "false" | "no" | "off" | "0" => Ok(false),
        _ => Err("expected `true` or `false`".into()),
    }
}

pub fn on_exit(v: &str) -> Result<OnExit, String> {
    match v.trim() {
        "restart" => Ok(OnExit::Restart),
        "resign" => Ok(OnExit::Resign),
        "exit" => Ok(OnExit::Exit),
        _ => Err("expected `restart`, `resign` or `exit`".into()),
    }
}

/// A whole number within `lo..=hi`.
pub fn number_between(lo: u32, hi: u32) -> impl Fn(&str) -> Result<u32, String> {
    move |v| {
        v.trim()
            .parse::<u32>()
            .ok()
            .filter(|n| (lo..=hi).contains(n))
            .ok_or_else(|| format!("expected a whole number from {lo} to {hi}"))
    }
}

/// A duration, or `off`.
pub fn duration_or_off(v: &str) -> Result<Option<Duration>, String> {
    match v.trim() {
        "off" | "none" => Ok(None),
        t => parse_duration(t)
            .map(Some)
            .map_err(|_| "expected a duration such as `30s` or `2m`, or `off`".into()),
    }
}

/// A non-empty shell command.
pub fn command(v: &str) -> Result<String, String> {
    if v.trim().is_empty() {
        return Err("expected a shell command such as `curl -fsS localhost:8080/healthz`".into());
    }
    Ok(v.to_string())
}

/// `http://HOST:PORT/PATH` (the app beside electd, so plain HTTP).
pub fn http_url(v: &str) -> Result<crate::health::HttpUrl, String> {
    crate::health::HttpUrl::parse(v.trim())
}

pub fn text(v: &str) -> Result<String, String> {
    Ok(v.to_string())
}

/// Parse `SIGTERM`, `TERM`, `term` or `15`.
pub fn signal(s: &str) -> Option<nix::sys::signal::Signal> {
    use std::str::FromStr;
    let t = s.trim();
    if let Ok(n) = t.parse::<i32>() {
        return nix::sys::signal::Signal::try_from(n).ok();
    }
    let upper = t.to_ascii_uppercase();
    let name = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    nix::sys::signal::Signal::from_str(&name).ok()
}

/// What a PEM file given for TLS must hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pem {
    Certificate,
    PrivateKey,
}

/// Why `bytes` is not the PEM `want`ed, if it is not: a wrong or garbage file is reported by
/// field and path at start (tonic would only say "transport error", and only when the first
/// connection is made).
pub fn pem_problem(bytes: &[u8], want: Pem) -> Option<&'static str> {
    let text = String::from_utf8_lossy(bytes);
    let labels: Vec<&str> = text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("-----BEGIN "))
        .filter_map(|l| l.strip_suffix("-----"))
        .collect();
    match want {
        Pem::Certificate if labels.contains(&"CERTIFICATE") => None,
        Pem::Certificate => Some("no PEM certificate (-----BEGIN CERTIFICATE-----) found"),
        Pem::PrivateKey if labels.contains(&"ENCRYPTED PRIVATE KEY") => {
            Some("the PEM private key is encrypted; give an unencrypted key")
        }
        Pem::PrivateKey if labels.iter().any(|l| l.ends_with("PRIVATE KEY")) => None,
        Pem::PrivateKey => {
            Some("no PEM private key (-----BEGIN PRIVATE KEY-----, RSA or EC PRIVATE KEY) found")
        }
    }
}

/// A readable PEM file of the wanted kind.
pub fn pem_file(want: Pem) -> impl Fn(&str) -> Result<PathBuf, String> {
    move |v| {
        let path = PathBuf::from(v);
        if !path.is_file() {
            return Err("file does not exist or is not a regular file".into());
        }
        let bytes = std::fs::read(&path).map_err(|e| format!("cannot read it: {e}"))?;
        match pem_problem(&bytes, want) {
            Some(problem) => Err(problem.into()),
            None => Ok(path),
        }
    }
}

/// The first line of a password file (a trailing newline is not part of the password).
pub fn password_file(v: &str) -> Result<String, String> {
    std::fs::read_to_string(v)
        .map(|s| s.trim_end_matches(['\n', '\r']).to_string())
        .map_err(|e| format!("cannot read the password file: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authorities_of_endpoints() {
        let table = [
            ("http://127.0.0.1:2379", Some("127.0.0.1:2379")),
            ("https://[::1]:2379/", Some("[::1]:2379")),
            ("https://etcd-0.etcd:2379", Some("etcd-0.etcd:2379")),
            ("unix:///run/etcd.sock", None),
        ];
        for (endpoint, want) in table {
            assert_eq!(endpoint_authority(endpoint), want, "{endpoint}");
        }
    }

    #[test]
    fn signals_parse_in_every_spelling() {
        use nix::sys::signal::Signal;
        assert_eq!(signal("SIGTERM"), Some(Signal::SIGTERM));
        assert_eq!(signal("int"), Some(Signal::SIGINT));
        assert_eq!(signal("9"), Some(Signal::SIGKILL));
        assert_eq!(signal("nope"), None);
    }
}
