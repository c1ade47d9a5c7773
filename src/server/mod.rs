//! Starting and stopping a Palisade: compile the config, bind every listener and the admin port,
//! serve, and on shutdown drain in the order load balancers expect (`/ready` → 503, wait
//! `drain_delay`, stop accepting, let in-flight requests finish up to `drain_timeout`).
//!
//! `listener.rs` owns one socket's accept loop and connections; `deadline.rs` the per-connection timer.

pub mod deadline;
pub mod listener;

use std::{collections::BTreeMap, net::SocketAddr, sync::Arc, time::Duration};

use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::{
    access_log::AccessLog,
    admin,
    config::{ConfigError, Problem, Source},
    snapshot::{self, Shared, State},
    tls,
};

/// A running proxy.
#[derive(Debug)]
pub struct Running {
    /// Bound address of each listener, by name (port 0 in the config becomes the real port here).
    pub listeners: BTreeMap<String, SocketAddr>,
    pub admin: SocketAddr,
    pub shared: Arc<Shared>,
    stop: CancellationToken,
    admin_stop: CancellationToken,
    tasks: JoinSet<()>,
    drain_delay: Duration,
}

/// Compiles `source`, binds everything and starts serving. Any problem (bad config, a port in use,
/// a certificate that does not load) is returned before anything serves.
pub async fn start(source: &Source) -> Result<Running, ConfigError> {
    crate::tls::install_crypto_provider();
    crate::metrics::init();
    let snapshot = snapshot::compile(source, None).await?;
    let config = Arc::clone(&snapshot.config);
    // Relative log paths resolve like every other path in the file: from the config's directory.
    let mut log_cfg = config.access_log.clone();
    if log_cfg.path != "-" {
        log_cfg.path = source
            .base_dir
            .join(&log_cfg.path)
            .to_string_lossy()
            .into_owned();
    }
    let access_log = AccessLog::open(&log_cfg)
        .map_err(|e| ConfigError::one("access_log.path", format!("cannot open: {e}")))?;

    let mut problems = Vec::new();
    let mut bound = Vec::new();
    for (index, (name, l)) in config.listeners.iter().enumerate() {
        let acceptor = match &l.tls {
            None => None,
            Some(t) => {
                let mut certs = Vec::new();
                for (i, c) in t.certificates.iter().enumerate() {
                    match tls::server::load_cert(
                        &source.base_dir.join(&c.cert),
                        &source.base_dir.join(&c.key),
                        std::time::SystemTime::now(),
                    ) {
                        Ok(c) => certs.push(c),
                        Err(ms) => problems.extend(ms.into_iter().map(|m| Problem {
                            path: format!("listeners.{name}.tls.certificates[{i}]"),
                            message: m,
                        })),
                    }
                }
                match tls::server::server_config(&certs, l.http2.enabled) {
                    Ok(cfg) => Some(TlsAcceptor::from(cfg)),
                    Err(m) => {
                        problems.push(Problem {
                            path: format!("listeners.{name}.tls"),
                            message: m,
                        });
                        None
                    }
                }
            }
        };
        let addr: SocketAddr = match l.listen.parse() {
            Ok(a) => a,
            Err(_) => continue, // validate reported it
        };
        match listener::bind(addr) {
            Ok(sock) => bound.push((name.clone(), index, l.clone(), acceptor, sock)),
            Err(e) => problems.push(Problem {
                path: format!("listeners.{name}.listen"),
                message: format!("cannot listen on {addr}: {e}"),
            }),
        }
    }
    let admin_addr: SocketAddr = config
        .admin
        .listen
        .parse()
        .map_err(|_| ConfigError::one("admin.listen", "not an address"))?;
    let admin_sock = match admin::bind(admin_addr) {
        Ok(s) => Some(s),
        Err(e) => {
            problems.push(Problem {
                path: "admin.listen".into(),
                message: format!("cannot listen on {admin_addr}: {e}"),
            });
            None
        }
    };
    let Some(admin_sock) = admin_sock.filter(|_| problems.is_empty()) else {
        return Err(ConfigError { problems });
    };

    crate::metrics::config_version(None, &snapshot.version);
    let version = snapshot.version.clone();
    let shared = Arc::new(Shared::new(snapshot, access_log));
    let stop = CancellationToken::new();
    let admin_stop = CancellationToken::new();
    let mut tasks = JoinSet::new();
    let mut listeners = BTreeMap::new();
    let drain_timeout = config.shutdown.drain_timeout.get();
    for (name, index, l, acceptor, sock) in bound {
        let local = sock
            .local_addr()
            .map_err(|e| ConfigError::one(format!("listeners.{name}.listen"), e.to_string()))?;
        listeners.insert(name.clone(), local);
        let ctx = Arc::new(listener::ListenerCtx::new(&name, index, l, acceptor));
        tasks.spawn(listener::serve(
            sock,
            ctx,
            Arc::clone(&shared),
            stop.clone(),
            drain_timeout,
        ));
        tracing::info!(listener = %name, address = %local, "listening");
    }
    let admin = admin_sock
        .local_addr()
        .map_err(|e| ConfigError::one("admin.listen", e.to_string()))?;
    tokio::spawn(admin::serve(
        admin_sock,
        Arc::clone(&shared),
        admin_stop.clone(),
    ));
    tracing::info!(address = %admin, config_version = %version, "admin listening; Palisade is live");
    shared.set_state(State::Live);
    Ok(Running {
        listeners,
        admin,
        shared,
        stop,
        admin_stop,
        tasks,
        drain_delay: config.shutdown.drain_delay.get(),
    })
}

impl Running {
    pub fn addr(&self, listener: &str) -> Option<SocketAddr> {
        self.listeners.get(listener).copied()
    }

    /// Graceful shutdown: not ready → wait `drain_delay` → stop accepting → drain (each listener
    /// bounded by `drain_timeout`) → stop the admin port.
    pub async fn shutdown(mut self) {
        self.shared.set_state(State::Draining);
        tracing::info!(drain_delay = ?self.drain_delay, "draining: /ready now answers 503");
        tokio::time::sleep(self.drain_delay).await;
        self.stop.cancel();
        while self.tasks.join_next().await.is_some() {}
        self.admin_stop.cancel();
        tracing::info!("drained; exiting");
    }
}
