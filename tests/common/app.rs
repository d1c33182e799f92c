//! The app beside each replica in the routing tests: a small TCP server that answers every line
//! it reads with its replica's name, so a client knows which replica's app it reached; and a
//! replica that routes clients (electd with `--advertise` and `--proxy`, and its app).

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use super::{Daemon, DaemonSpec, free_port};

/// A name server on a free loopback port; stopped (listener and open connections) on drop.
pub struct NameApp {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    /// The open connections (a clone of each, to close them at [`NameApp::stop`]).
    open: Arc<Mutex<HashMap<u64, TcpStream>>>,
    thread: Option<JoinHandle<()>>,
}

impl NameApp {
    pub fn start(name: &str) -> NameApp {
        Self::start_on(name, std::net::Ipv4Addr::LOCALHOST.into())
    }

    /// [`NameApp::start`] on the given loopback address (127.0.0.1 or ::1).
    pub fn start_on(name: &str, ip: std::net::IpAddr) -> NameApp {
        let listener = TcpListener::bind((ip, 0)).expect("bind the app");
        let addr = listener.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let open = Arc::new(Mutex::new(HashMap::new()));
        let (name, s, o) = (name.to_string(), stop.clone(), open.clone());
        let ids = AtomicU64::new(0);
        let thread = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if s.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(conn) = conn else { continue };
                let id = ids.fetch_add(1, Ordering::Relaxed);
                if let Ok(c) = conn.try_clone() {
                    o.lock().unwrap().insert(id, c);
                }
                let (name, o) = (name.clone(), o.clone());
                std::thread::spawn(move || {
                    answer(conn, &name);
                    o.lock().unwrap().remove(&id);
                });
            }
        });
        NameApp {
            addr,
            stop,
            open,
            thread: Some(thread),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stop listening and close every open connection, as a crashed app would.
    pub fn stop(&mut self) {
        if self.stop.swap(true, Ordering::SeqCst) {
            return;
        }
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        for (_, c) in self.open.lock().unwrap().drain() {
            let _ = c.shutdown(Shutdown::Both);
        }
    }
}

impl Drop for NameApp {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One replica that routes clients: electd publishing its app's address (`--advertise`) and
/// forwarding connections to the leader's app (`--proxy`), and the app, named after the id.
pub struct Replica {
    pub d: Daemon,
    pub app: NameApp,
    /// The proxy's listening address.
    pub proxy: String,
}

impl Replica {
    /// Start the app, then electd from `spec` with `--advertise` and `--proxy` on a free port.
    pub fn start(spec: DaemonSpec) -> Replica {
        let app = NameApp::start(&spec.id);
        let proxy = format!("127.0.0.1:{}", free_port());
        let d = spec
            .args(&["--advertise", &app.addr().to_string(), "--proxy", &proxy])
            .start();
        Replica { d, app, proxy }
    }
}

fn answer(conn: TcpStream, name: &str) {
    let mut out = match conn.try_clone() {
        Ok(c) => c,
        Err(_) => return,
    };
    let _ = out.set_nodelay(true);
    // One write per answer (`writeln!` would write the name and the newline apart).
    let reply = format!("{name}\n");
    for line in BufReader::new(conn).lines() {
        if line.is_err() || out.write_all(reply.as_bytes()).is_err() {
            return;
        }
    }
}

/// One request/response on an open connection: the name of the app that answered, or why
/// there was none.
pub fn ask(conn: &mut BufReader<TcpStream>) -> Result<String, String> {
    conn.get_mut()
        .write_all(b"?\n")
        .map_err(|e| format!("write: {e}"))?;
    let mut line = String::new();
    match conn.read_line(&mut line) {
        Ok(0) => Err("closed".into()),
        Ok(_) => Ok(line.trim().to_string()),
        Err(e) => Err(format!("read: {e}")),
    }
}

/// Connect to `addr` (a proxy), with a read timeout.
pub fn connect(addr: &str, read_timeout: Duration) -> Result<BufReader<TcpStream>, String> {
    let s = TcpStream::connect(addr).map_err(|e| format!("connect {addr}: {e}"))?;
    s.set_read_timeout(Some(read_timeout)).unwrap();
    let _ = s.set_nodelay(true);
    Ok(BufReader::new(s))
}

/// Connect to `addr` and ask once: the name of the app that answered.
pub fn ask_once(addr: &str, read_timeout: Duration) -> Result<String, String> {
    ask(&mut connect(addr, read_timeout)?)
}
