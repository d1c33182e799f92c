//! The API's listeners (TCP and the Unix socket), bound before the campaign starts so a bad
//! address fails first, and the servers on them until the daemon stops.

use std::time::Duration;

use tokio::sync::watch;
use tracing::info;

use super::DaemonError;
use crate::api::{self, ApiState, Transport};
use crate::config::Config;

/// The API's listeners and the proxy's, bound before the campaign starts.
pub(super) struct Listeners {
    http: Option<tokio::net::TcpListener>,
    socket: Option<(tokio::net::UnixListener, api::socket::SocketGuard)>,
    proxy: Option<tokio::net::TcpListener>,
}

impl Listeners {
    pub(super) async fn bind(config: &Config) -> Result<Listeners, DaemonError> {
        let http = match config.http {
            Some(addr) => Some(
                tokio::net::TcpListener::bind(addr)
                    .await
                    .map_err(|source| DaemonError::Http { addr, source })?,
            ),
            None => None,
        };
        let socket = match &config.socket {
            Some(path) => Some(api::socket::bind(
                path,
                config.socket_mode,
                config.socket_group,
            )?),
            None => None,
        };
        let proxy = match config.proxy {
            Some(addr) => Some(
                tokio::net::TcpListener::bind(addr)
                    .await
                    .map_err(|source| DaemonError::Proxy { addr, source })?,
            ),
            None => None,
        };
        Ok(Listeners {
            http,
            socket,
            proxy,
        })
    }

    /// The HTTP API's address, published in the member info.
    pub(super) fn http_addr(&self) -> Option<String> {
        self.http
            .as_ref()
            .and_then(|l| l.local_addr().ok())
            .map(|a| a.to_string())
    }

    /// Serve one router per listener, and the proxy, until [`Api::stop`].
    pub(super) fn serve(
        self,
        state: ApiState,
        limits: api::serve::Limits,
        proxy: crate::proxy::ProxyConfig,
    ) -> Api {
        let (stop_tx, stop_rx) = watch::channel(false);
        let stopped = |mut stop: watch::Receiver<bool>| async move {
            let _ = stop.wait_for(|s| *s).await;
        };
        let mut servers = Vec::new();
        if let Some(listener) = self.http {
            info!(addr = ?listener.local_addr().ok(), "HTTP API listening");
            let app = api::router(state.clone(), Transport::Tcp);
            let stop = stopped(stop_rx.clone());
            servers.push(tokio::spawn(api::serve::serve(listener, app, limits, stop)));
        }
        if let Some(listener) = self.proxy {
            info!(addr = ?listener.local_addr().ok(), "proxy listening");
            let stop = stopped(stop_rx.clone());
            // The proxy follows the only election (the configuration allows no more with it).
            let e = &state.elections[0];
            let (status, metrics) = (e.status.clone(), state.metrics.election(&e.name));
            servers.push(tokio::spawn(crate::proxy::serve(
                listener, status, proxy, metrics, stop,
            )));
        }
        let mut guard = None;
        if let Some((listener, g)) = self.socket {
            info!(path = ?listener.local_addr().ok(), "socket API listening");
            let app = api::router(state, Transport::Unix);
            let stop = stopped(stop_rx.clone());
            servers.push(tokio::spawn(api::serve::serve(listener, app, limits, stop)));
            guard = Some(g);
        }
        Api {
            stop: stop_tx,
            servers,
            _socket: guard,
        }
    }
}

/// The running API servers; the socket file is removed when this is dropped.
pub(super) struct Api {
    stop: watch::Sender<bool>,
    servers: Vec<tokio::task::JoinHandle<()>>,
    _socket: Option<api::socket::SocketGuard>,
}

impl Api {
    /// Stop accepting, let in-flight requests finish (bounded), remove the socket file.
    pub(super) async fn stop(self) {
        let _ = self.stop.send(true);
        for s in self.servers {
            let _ = tokio::time::timeout(Duration::from_secs(2), s).await;
        }
    }
}
