//! One listening socket: accept (under a connection cap), TLS handshake when configured, then HTTP/1.1
//! and HTTP/2 on the same connection through hyper-util's `auto` builder, with every limit set
//! explicitly.
//!
//! Accept errors (EMFILE when descriptors run out, or a connection reset before accept) never end the
//! loop and never spin: resource errors back off and count. Requests themselves are `handler.rs`'s.

use std::{
    io,
    net::SocketAddr,
    sync::{
        Arc, PoisonError,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use hyper::{Request, body::Incoming, service::service_fn};
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::conn::auto,
};
use tokio::{
    net::{TcpListener, TcpStream},
    sync::{Semaphore, watch},
};
use tokio_rustls::TlsAcceptor;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use super::{
    admission::{IpFilter, PerIp},
    deadline::{Activity, DeadlineIo, Slot},
    h2_guard::{FloodLimits, H2Guard},
};
use crate::ratelimit::gcra::Quota;
use crate::{config::ListenerConfig, handler, metrics::ListenerGauges, snapshot::Shared};

/// What a listener's connections share.
pub struct ListenerCtx {
    pub name: Arc<str>,
    /// This listener name's slot for the process's lifetime (indexes per-listener metrics in every
    /// snapshot, so a connection opened before a reload still finds its own).
    pub index: usize,
    pub config: ListenerConfig,
    pub tls: Option<TlsAcceptor>,
    pub gauges: Arc<ListenerGauges>,
    /// Client networks allowed or denied at accept.
    pub filter: Option<IpFilter>,
    /// Per-client connection cap and new-connection rate; carried over a reload while those
    /// settings are unchanged (so open connections stay counted).
    pub per_ip: Option<Arc<PerIp>>,
    /// What an HTTP/2 client may send that carries no request before it is cut.
    pub flood: FloodLimits,
    builder: auto::Builder<TokioExecutor>,
}

/// The client connection a request arrived on.
#[derive(Debug)]
pub struct ConnInfo {
    pub peer: SocketAddr,
    pub listener: Arc<ListenerCtx>,
    pub tls: bool,
    pub activity: Arc<Activity>,
}

impl std::fmt::Debug for ListenerCtx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ListenerCtx")
            .field("name", &self.name)
            .field("tls", &self.tls.is_some())
            .finish_non_exhaustive()
    }
}

impl ListenerCtx {
    pub fn new(
        name: &str,
        config: ListenerConfig,
        tls: Option<TlsAcceptor>,
        previous: Option<&ListenerCtx>,
    ) -> Self {
        let index = crate::snapshot::listener_slot(name);
        let filter = crate::snapshot::ip_filter(&config.allow, &config.deny);
        let same_per_ip = |p: &ListenerCtx| {
            p.config.max_connections_per_ip == config.max_connections_per_ip
                && p.config.connection_rate_per_ip == config.connection_rate_per_ip
                && p.config.connection_burst_per_ip == config.connection_burst_per_ip
        };
        let per_ip = match previous.filter(|p| same_per_ip(p)) {
            Some(p) => p.per_ip.clone(),
            None if config.max_connections_per_ip > 0
                || config.connection_rate_per_ip.is_some() =>
            {
                let rate = config.connection_rate_per_ip.map(|r| {
                    Quota::new(
                        r.count,
                        r.period,
                        config.connection_burst_per_ip.unwrap_or(r.count),
                    )
                });
                Some(Arc::new(PerIp::new(
                    config.max_connections_per_ip,
                    rate,
                    PER_IP_TRACKED,
                )))
            }
            None => None,
        };
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            // Our DeadlineIo answers 408 itself; hyper's own timer would close silently first.
            .header_read_timeout(None)
            .max_buf_size(config.max_header_bytes.max(8192))
            .max_headers(config.max_headers)
            .keep_alive(true)
            .half_close(false)
            // One `write` per small response: hyper copies a small body in beside the head
            // instead of a `writev` of both (measured: about 0.3 us less per request).
            .writev(false);
        let h2 = &config.http2;
        builder
            .http2()
            .timer(TokioTimer::new())
            .max_concurrent_streams(h2.max_concurrent_streams)
            .max_header_list_size(h2.max_header_list_size)
            .max_pending_accept_reset_streams(h2.max_pending_accept_reset_streams)
            .max_local_error_reset_streams(h2.max_local_error_reset_streams)
            .keep_alive_interval(
                (!h2.keepalive_interval.is_zero()).then(|| h2.keepalive_interval.get()),
            )
            .keep_alive_timeout(Duration::from_secs(20));
        if !h2.enabled {
            builder = builder.http1_only();
        }
        let gauges = ListenerGauges::new(name);
        Self {
            name: name.into(),
            index,
            config,
            tls,
            gauges,
            filter,
            per_ip,
            flood: FloodLimits::default(),
            builder,
        }
    }
}

/// Client addresses a listener tracks at once for its per-client limits.
const PER_IP_TRACKED: usize = 100_000;

/// Why a connection was refused at accept: closed at once, before TLS or HTTP, and counted.
fn refuse(ctx: &ListenerCtx, reason: &'static str) {
    ctx.gauges.refused(reason);
}

/// Binds with SO_REUSEADDR and a deep backlog (connections beyond the cap wait there, as in HAProxy).
pub fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    socket.set_reuse_address(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(false).ok();
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(4096)?;
    TcpListener::from_std(socket.into())
}

/// Accepts until `stop`, then drains this listener's connections (up to `drain_timeout`).
///
/// `ctx` changes on reload: each new connection takes the latest settings, connections already open
/// keep the ones they started with, and a new `max_connections` resizes the cap in place.
///
/// `linger` (read when `stop` fires) chooses how idle HTTP/1 connections drain: closed at once
/// (shutdown: the load balancer has stopped sending already), or kept until their next request,
/// which is answered with `Connection: close` (binary upgrade: the client is still sending, and
/// closing an idle keep-alive connection races with its next request, which would be lost).
pub async fn serve(
    listener: Arc<TcpListener>,
    mut ctx_rx: watch::Receiver<Arc<ListenerCtx>>,
    shared: Arc<Shared>,
    stop: CancellationToken,
    linger: Arc<AtomicBool>,
    drain_timeout: Duration,
) {
    let mut ctx = Arc::clone(&ctx_rx.borrow_and_update());
    let mut cap_size = ctx.config.max_connections;
    let cap = Arc::new(Semaphore::new(cap_size));
    let connections = TaskTracker::new();
    // Tells every connection to finish: HTTP/1 after its current response (`Connection: close`),
    // HTTP/2 with GOAWAY, idle ones at once (or after one more request: `linger`).
    let drain = Drain {
        token: CancellationToken::new(),
        linger: Arc::clone(&linger),
    };
    loop {
        if ctx_rx.has_changed().unwrap_or(false) {
            ctx = Arc::clone(&ctx_rx.borrow_and_update());
        }
        if cap_size != ctx.config.max_connections {
            resize(&cap, &mut cap_size, ctx.config.max_connections);
        }
        let permit = tokio::select! {
            () = stop.cancelled() => break,
            p = Arc::clone(&cap).acquire_owned() => match p { Ok(p) => p, Err(_) => break },
            // A reload while the cap is full must still be able to raise it.
            Ok(()) = ctx_rx.changed() => continue,
        };
        if cap_size > ctx.config.max_connections {
            // The cap was lowered while full: this freed slot goes, not to a new connection.
            permit.forget();
            cap_size -= 1;
            continue;
        }
        let (stream, peer) = tokio::select! {
            () = stop.cancelled() => break,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    if !is_per_connection(&e) {
                        ctx.gauges.accept_errors.increment(1);
                        tracing::error!(listener = %ctx.name, error = %e, "accept failed; pausing accepts for 500ms");
                        // Out of descriptors (or similar): wait instead of spinning; existing
                        // connections keep being served meanwhile.
                        tokio::select! {
                            () = stop.cancelled() => break,
                            () = tokio::time::sleep(Duration::from_millis(500)) => {}
                        }
                    }
                    continue;
                }
            },
        };
        // A reload while this loop waited in accept: the connection gets the new settings.
        if ctx_rx.has_changed().unwrap_or(false) {
            ctx = Arc::clone(&ctx_rx.borrow_and_update());
        }
        // Abuse limits, before any TLS or HTTP work: a refused connection is closed at once (the
        // kernel sends RST for unread data; nothing is written to it).
        let ip = peer.ip();
        if ctx.filter.as_ref().is_some_and(|f| !f.permits(ip)) {
            refuse(&ctx, "denied");
            continue;
        }
        let ip_slot = match &ctx.per_ip {
            Some(p) => match p.admit(ip, crate::ratelimit::monotonic_ns()) {
                Ok(slot) => Some(slot),
                Err(r) => {
                    refuse(&ctx, r.as_str());
                    continue;
                }
            },
            None => None,
        };
        let Some(global) = GlobalSlot::take(&shared) else {
            refuse(&ctx, "max_connections");
            continue;
        };
        let _ = stream.set_nodelay(true);
        let ctx = Arc::clone(&ctx);
        let shared = Arc::clone(&shared);
        let drain = drain.clone();
        connections.spawn(async move {
            let _permit = permit;
            let _slots = (ip_slot, global);
            ctx.gauges.connections.increment(1.0);
            serve_connection(stream, peer, &ctx, shared, &drain).await;
            ctx.gauges.connections.decrement(1.0);
        });
    }
    drop(listener);
    tracing::info!(listener = %ctx.name, linger = drain.lingers(), "stopped accepting; draining connections");
    drain.token.cancel();
    connections.close();
    if tokio::time::timeout(drain_timeout, connections.wait())
        .await
        .is_err()
    {
        tracing::warn!(listener = %ctx.name, "drain timeout reached; closing remaining connections");
    }
}

/// One connection counted against `overload.max_connections` (all listeners together).
struct GlobalSlot(Arc<std::sync::atomic::AtomicU32>);

impl GlobalSlot {
    fn take(shared: &Shared) -> Option<Self> {
        let max = shared.load().config.overload.max_connections;
        let n = shared.connections.fetch_add(1, Ordering::AcqRel);
        let slot = GlobalSlot(Arc::clone(&shared.connections));
        (max == 0 || n < max).then_some(slot)
    }
}

impl Drop for GlobalSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// How a listener's connections are told to finish.
#[derive(Clone)]
struct Drain {
    token: CancellationToken,
    linger: Arc<AtomicBool>,
}

impl Drain {
    fn lingers(&self) -> bool {
        self.linger.load(Ordering::Acquire)
    }

    /// Resolves when a connection that is idle now must close: at once, or (lingering) never
    /// (it closes after its next request or at its idle timeout).
    async fn closes_idle(&self) {
        self.token.cancelled().await;
        if self.lingers() {
            std::future::pending::<()>().await;
        }
    }
}

/// Grows or shrinks the connection cap. Shrinking takes back only free permits (`forget_permits`
/// never blocks), so open connections stay open; the accept loop forgets each slot that frees up
/// until the cap fits.
fn resize(cap: &Semaphore, current: &mut usize, wanted: usize) {
    if wanted > *current {
        cap.add_permits(wanted - *current);
        *current = wanted;
    } else if wanted < *current {
        let taken = cap.forget_permits(*current - wanted);
        *current -= taken;
    }
}

/// Errors that concern one connection only (the client reset before we accepted it).
fn is_per_connection(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    ctx: &Arc<ListenerCtx>,
    shared: Arc<Shared>,
    drain: &Drain,
) {
    let activity = Arc::new(Activity::default());
    let tls = ctx.tls.is_some();
    let info = Arc::new(ConnInfo {
        peer,
        listener: Arc::clone(ctx),
        tls,
        activity: Arc::clone(&activity),
    });
    match &ctx.tls {
        None => serve_plain(stream, info, ctx, &shared, drain).await,
        // Boxed: a TLS session is large, and the connection task would otherwise be sized for it
        // even on plaintext listeners, where idle connections are meant to cost almost nothing.
        Some(acceptor) => Box::pin(serve_tls(stream, acceptor, info, ctx, &shared, drain)).await,
    }
}

async fn serve_tls(
    stream: TcpStream,
    acceptor: &TlsAcceptor,
    info: Arc<ConnInfo>,
    ctx: &ListenerCtx,
    shared: &Arc<Shared>,
    drain: &Drain,
) {
    let cfg = &ctx.config;
    let (header, idle) = (cfg.header_read_timeout.get(), cfg.idle_timeout.get());
    let peer = info.peer;
    let tls = match tokio::time::timeout(header, acceptor.accept(stream)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            ctx.gauges.handshake_errors.increment(1);
            tracing::debug!(listener = %ctx.name, %peer, error = %e, "TLS handshake failed");
            return;
        }
        Err(_) => {
            ctx.gauges.handshake_errors.increment(1);
            tracing::debug!(listener = %ctx.name, %peer, "TLS handshake timed out");
            return;
        }
    };
    let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
    let io = DeadlineIo::new(tls, Arc::clone(&info.activity), header, idle, Some(h2))
        .with_write_timeout(cfg.write_timeout.get());
    drive(io, &info, shared, ctx, drain, Some(h2)).await;
}

/// Plaintext connections: served by hyper while in use, and held with no buffer at all while idle
/// (see `deadline.rs`): hyper hands the socket back after a second of idleness and gets a fresh
/// connection state when the next request's first bytes arrive.
async fn serve_plain(
    mut stream: TcpStream,
    info: Arc<ConnInfo>,
    ctx: &ListenerCtx,
    shared: &Arc<Shared>,
    drain: &Drain,
) {
    let cfg = &ctx.config;
    let (header, idle) = (cfg.header_read_timeout.get(), cfg.idle_timeout.get());
    let mut h2 = None;
    loop {
        let slot: Slot<TcpStream> = Arc::default();
        let io = DeadlineIo::new(stream, Arc::clone(&info.activity), header, idle, h2)
            .with_release(Arc::clone(&slot))
            .with_write_timeout(cfg.write_timeout.get());
        drive(io, &info, shared, ctx, drain, h2).await;
        let Some((idle_stream, idle_since)) =
            slot.lock().unwrap_or_else(PoisonError::into_inner).take()
        else {
            return; // closed for real
        };
        metrics::counter!("palisade_idle_connections_released_total").increment(1);
        let left = idle.saturating_sub(idle_since.elapsed());
        tokio::select! {
            r = idle_stream.readable() => if r.is_err() { return },
            () = tokio::time::sleep(left) => return,
            () = drain.closes_idle() => return,
        }
        stream = idle_stream;
        h2 = Some(false);
    }
}

/// Runs hyper on one connection until it ends, or until drain asks it to finish gracefully.
/// `h2`: the protocol when already known (ALPN, or HTTP/1 after an idle release).
///
/// The stream goes through `H2Guard` first: an HTTP/2 client flooding frames that carry no request
/// (PING, SETTINGS, empty DATA, CONTINUATION…) gets GOAWAY `ENHANCE_YOUR_CALM` and is closed.
async fn drive<T>(
    io: DeadlineIo<T>,
    info: &Arc<ConnInfo>,
    shared: &Arc<Shared>,
    ctx: &ListenerCtx,
    drain: &Drain,
    h2: Option<bool>,
) where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let io = H2Guard::new(io, ctx.flood, h2);
    let flag = io.flag();
    // An inner block so that every way the connection ends passes the flood check below.
    async {
        let activity = Arc::clone(&info.activity);
        let (info, shared) = (Arc::clone(info), Arc::clone(shared));
        let svc = service_fn(move |req: Request<Incoming>| {
            // Boxed so an idle keep-alive connection does not carry the (large) request future inline.
            Box::pin(handler::handle(req, Arc::clone(&info), Arc::clone(&shared)))
        });
        // Boxed so that its memory is freed when an idle connection leaves hyper.
        let mut conn = Box::pin(
            ctx.builder
                .serve_connection_with_upgrades(TokioIo::new(io), svc),
        );
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    tracing::trace!(listener = %ctx.name, error = %e, "connection ended with an error");
                }
                return;
            }
            () = drain.token.cancelled() => {}
            // `max_requests_per_connection` served: HTTP/1 closes after this response (hyper says
            // `Connection: close`), HTTP/2 sends GOAWAY and finishes its streams.
            () = activity.retired() => {
                conn.as_mut().graceful_shutdown();
                let _ = conn.await;
                return;
            }
        }
        // Lingering, an HTTP/1 connection is shut only once a request that began after the drain is
        // under way, so that request is answered with `Connection: close` and nothing is cut: an
        // idle connection (or one accepted a moment before the drain) is never closed under a request
        // the client is sending, and a response already on its way without `close` is followed by one
        // more that says it. HTTP/2's GOAWAY has no such race.
        if drain.lingers() && h2 != Some(true) {
            // Lingering (upgrade), an HTTP/1 connection is not shut from outside: every response
            // the handler builds from here on says `Connection: close`, and hyper closes after
            // writing it. So the client is told before the close, whether the connection was idle,
            // just accepted, or busy with a response already on its way (the next one says it), and
            // no request it sends is cut. One that never sends again ends at its idle timeout.
            activity.set_closing();
            if let Err(e) = conn.await {
                tracing::trace!(listener = %ctx.name, error = %e, "connection ended with an error");
            }
            return;
        }
        conn.as_mut().graceful_shutdown();
        let _ = conn.await;
    }
    .await;
    if let Some(reason) = flag.get() {
        metrics::counter!("palisade_h2_floods_total", "listener" => ctx.name.to_string(), "reason" => *reason).increment(1);
        tracing::info!(listener = %ctx.name, peer = %info.peer, reason, "HTTP/2 flood: sent GOAWAY ENHANCE_YOUR_CALM and closed");
    }
}
