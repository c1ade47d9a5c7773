//! The set of traffic listeners and how it follows the config: at start and at every reload, the
//! wanted listeners are compared with the running ones by name and address. New ones are bound,
//! removed ones stop accepting and drain their own connections, and changed settings (limits,
//! timeouts, certificates) reach the accept loop without closing its socket or touching open
//! connections.
//!
//! A change is prepared first (`prepare`: bind, load certificates) and applied only after the new
//! snapshot is in place (`apply`), so a listener that cannot bind refuses the whole reload and the
//! running set is untouched. One accept loop (`listener::serve`) runs per listener.

use std::{
    collections::{BTreeMap, HashMap},
    net::SocketAddr,
    os::fd::{AsFd, BorrowedFd},
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, SystemTime},
};

use tokio::{net::TcpListener, sync::watch};
use tokio_rustls::TlsAcceptor;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use super::listener::{self, ListenerCtx};
use crate::{
    config::{Config, ListenerConfig, Problem},
    snapshot::Shared,
    tls,
};

/// One running listener.
struct Running {
    /// As configured (port 0 stays 0: the same config keeps the same socket).
    configured: SocketAddr,
    /// As bound.
    addr: SocketAddr,
    socket: Arc<TcpListener>,
    ctx: watch::Sender<Arc<ListenerCtx>>,
    stop: CancellationToken,
}

/// The running listeners, by name.
pub struct ListenerSet {
    running: BTreeMap<String, Running>,
    tasks: TaskTracker,
    /// Cancels every accept loop (shutdown).
    stop: CancellationToken,
    /// Read by every accept loop when it stops: whether idle connections linger for one more
    /// request (upgrade) or close at once (see `listener::serve`).
    linger: Arc<AtomicBool>,
}

impl std::fmt::Debug for ListenerSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map()
            .entries(self.running.iter().map(|(n, r)| (n, r.addr)))
            .finish()
    }
}

/// A prepared change: sockets bound and contexts built, nothing running yet.
pub struct Prepared {
    wanted: Vec<(String, SocketAddr, Arc<ListenerCtx>, Socket)>,
}

enum Socket {
    /// The running listener of the same name and address keeps its socket and loop.
    Keep,
    /// A socket that is already listening (another name had this address, or it was inherited
    /// from the process being upgraded).
    Reuse(Arc<TcpListener>),
    New(Arc<TcpListener>),
}

impl Default for ListenerSet {
    fn default() -> Self {
        Self {
            running: BTreeMap::new(),
            tasks: TaskTracker::new(),
            stop: CancellationToken::new(),
            linger: Arc::new(AtomicBool::new(false)),
        }
    }
}

impl ListenerSet {
    /// Builds every listener of `config` and binds what is not running yet. `inherited` sockets
    /// (a binary upgrade's) are used for their names before anything is bound. Every problem is
    /// reported, each with its path.
    pub fn prepare(
        &self,
        config: &Config,
        base_dir: &Path,
        inherited: &mut HashMap<String, std::net::TcpListener>,
    ) -> Result<Prepared, Vec<Problem>> {
        let mut problems = Vec::new();
        let mut wanted = Vec::new();
        for (name, l) in &config.listeners {
            let acceptor = match tls_acceptor(name, l, base_dir) {
                Ok(a) => a,
                Err(mut p) => {
                    problems.append(&mut p);
                    continue;
                }
            };
            let Ok(addr) = l.listen.parse::<SocketAddr>() else {
                continue; // validation reported it
            };
            let previous = self.running.get(name).map(|r| Arc::clone(&r.ctx.borrow()));
            let ctx = Arc::new(ListenerCtx::new(
                name,
                l.clone(),
                acceptor,
                previous.as_deref(),
            ));
            // An inherited socket serves only if it is still the configured address (the new
            // config may have moved the listener); otherwise it is dropped and a new one bound.
            let inherited = inherited
                .remove(name)
                .filter(|s| s.local_addr().is_ok_and(|a| addr.port() == 0 || a == addr));
            let socket = if let Some(std) = inherited {
                match TcpListener::from_std(std) {
                    Ok(s) => Socket::Reuse(Arc::new(s)),
                    Err(e) => {
                        problems.push(bind_problem(name, addr, &e));
                        continue;
                    }
                }
            } else if self
                .running
                .get(name)
                .is_some_and(|r| r.configured == addr || r.addr == addr)
            {
                Socket::Keep
            } else if let Some(r) = self
                .running
                .values()
                .find(|r| addr.port() != 0 && r.addr == addr)
            {
                Socket::Reuse(Arc::clone(&r.socket))
            } else {
                match listener::bind(addr) {
                    Ok(s) => Socket::New(Arc::new(s)),
                    Err(e) => {
                        problems.push(bind_problem(name, addr, &e));
                        continue;
                    }
                }
            };
            wanted.push((name.clone(), addr, ctx, socket));
        }
        if problems.is_empty() {
            Ok(Prepared { wanted })
        } else {
            Err(problems)
        }
    }

    /// Makes the running set what `prepared` describes. Listeners not in it stop accepting and
    /// drain their connections (bounded by `drain_timeout`); the others are untouched apart from
    /// their settings. Returns the bound address of every listener.
    pub fn apply(
        &mut self,
        prepared: Prepared,
        shared: &Arc<Shared>,
        drain_timeout: Duration,
    ) -> BTreeMap<String, SocketAddr> {
        let mut next = BTreeMap::new();
        let mut old = std::mem::take(&mut self.running);
        for (name, addr, ctx, socket) in prepared.wanted {
            let socket = match socket {
                Socket::Keep => match old.remove(&name) {
                    Some(r) => {
                        if !Arc::ptr_eq(&r.ctx.borrow(), &ctx) {
                            r.ctx.send_replace(ctx);
                        }
                        next.insert(name, r);
                        continue;
                    }
                    // Cannot happen (prepare saw it running), but binding again is the safe answer.
                    None => match listener::bind(addr) {
                        Ok(s) => Arc::new(s),
                        Err(e) => {
                            tracing::error!(listener = %name, error = %e, "cannot listen");
                            continue;
                        }
                    },
                },
                Socket::Reuse(s) | Socket::New(s) => s,
            };
            let local = socket.local_addr().unwrap_or(addr);
            let (tx, rx) = watch::channel(ctx);
            let stop = self.stop.child_token();
            self.tasks.spawn(listener::serve(
                Arc::clone(&socket),
                rx,
                Arc::clone(shared),
                stop.clone(),
                Arc::clone(&self.linger),
                drain_timeout,
            ));
            tracing::info!(listener = %name, address = %local, "listening");
            next.insert(
                name,
                Running {
                    configured: addr,
                    addr: local,
                    socket,
                    ctx: tx,
                    stop,
                },
            );
        }
        for (name, r) in old {
            tracing::info!(listener = %name, address = %r.addr, "listener removed; draining its connections");
            r.stop.cancel();
        }
        self.running = next;
        self.addrs()
    }

    pub fn addrs(&self) -> BTreeMap<String, SocketAddr> {
        self.running
            .iter()
            .map(|(n, r)| (n.clone(), r.addr))
            .collect()
    }

    /// The listening sockets, for a binary upgrade's handoff.
    pub fn sockets(&self) -> Vec<(String, BorrowedFd<'_>)> {
        self.running
            .iter()
            .map(|(n, r)| (n.clone(), r.socket.as_fd()))
            .collect()
    }

    /// Stops every accept loop and waits for their connections to drain (each loop bounds its own
    /// drain by `drain_timeout`). `linger`: idle HTTP/1 connections stay open for one more request
    /// (a binary upgrade, where clients are still sending) instead of closing at once.
    pub async fn shutdown(&mut self, linger: bool) {
        self.linger.store(linger, Ordering::Release);
        self.stop.cancel();
        self.running.clear();
        self.tasks.close();
        self.tasks.wait().await;
    }
}

fn bind_problem(name: &str, addr: SocketAddr, e: &std::io::Error) -> Problem {
    Problem {
        path: format!("listeners.{name}.listen"),
        message: format!("cannot listen on {addr}: {e}"),
    }
}

/// Loads the listener's certificates (read from disk each time, so a reload picks up rotated PEM
/// files even when the config text did not change).
fn tls_acceptor(
    name: &str,
    l: &ListenerConfig,
    base_dir: &Path,
) -> Result<Option<TlsAcceptor>, Vec<Problem>> {
    let Some(t) = &l.tls else { return Ok(None) };
    let mut problems = Vec::new();
    let mut certs = Vec::new();
    for (i, c) in t.certificates.iter().enumerate() {
        match tls::server::load_cert(
            &base_dir.join(&c.cert),
            &base_dir.join(&c.key),
            SystemTime::now(),
        ) {
            Ok(c) => certs.push(c),
            Err(ms) => problems.extend(ms.into_iter().map(|m| Problem {
                path: format!("listeners.{name}.tls.certificates[{i}]"),
                message: m,
            })),
        }
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    match tls::server::server_config(&certs, l.http2.enabled) {
        Ok(cfg) => Ok(Some(TlsAcceptor::from(cfg))),
        Err(m) => Err(vec![Problem {
            path: format!("listeners.{name}.tls"),
            message: m,
        }]),
    }
}
