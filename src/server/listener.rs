//! One listening socket: accept (under a connection cap), TLS handshake when configured, then HTTP/1.1
//! and HTTP/2 on the same connection through hyper-util's `auto` builder, with every limit set
//! explicitly.
//!
//! Accept errors (EMFILE when descriptors run out, or a connection reset before accept) never end the
//! loop and never spin: resource errors back off and count. Requests themselves are `handler.rs`'s.

use std::{convert::Infallible, io, net::SocketAddr, sync::Arc, time::Duration};

use hyper::{Request, body::Incoming, service::service_fn};
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::{conn::auto, graceful::GracefulShutdown},
};
use tokio::{net::TcpListener, sync::Semaphore};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use super::deadline::{Activity, DeadlineIo};
use crate::{config::ListenerConfig, handler, metrics::ListenerGauges, snapshot::Shared};

/// What a listener's connections share.
pub struct ListenerCtx {
    pub name: Arc<str>,
    /// Position among the configured listeners (indexes per-listener metrics in the snapshot).
    pub index: usize,
    pub config: ListenerConfig,
    pub tls: Option<TlsAcceptor>,
    pub gauges: Arc<ListenerGauges>,
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
    pub fn new(name: &str, index: usize, config: ListenerConfig, tls: Option<TlsAcceptor>) -> Self {
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            // Our DeadlineIo answers 408 itself; hyper's own timer would close silently first.
            .header_read_timeout(None)
            .max_buf_size(config.max_header_bytes.max(8192))
            .max_headers(config.max_headers)
            .keep_alive(true)
            .half_close(false);
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
            builder,
        }
    }
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
pub async fn serve(
    listener: TcpListener,
    ctx: Arc<ListenerCtx>,
    shared: Arc<Shared>,
    stop: CancellationToken,
    drain_timeout: Duration,
) {
    let cap = Arc::new(Semaphore::new(ctx.config.max_connections));
    let graceful = GracefulShutdown::new();
    loop {
        let permit = tokio::select! {
            () = stop.cancelled() => break,
            p = Arc::clone(&cap).acquire_owned() => match p { Ok(p) => p, Err(_) => break },
        };
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
        let _ = stream.set_nodelay(true);
        let ctx = Arc::clone(&ctx);
        let shared = Arc::clone(&shared);
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let _permit = permit;
            ctx.gauges.connections.increment(1.0);
            serve_connection(stream, peer, &ctx, shared, watcher).await;
            ctx.gauges.connections.decrement(1.0);
        });
    }
    drop(listener);
    tracing::info!(listener = %ctx.name, "stopped accepting; draining connections");
    if tokio::time::timeout(drain_timeout, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(listener = %ctx.name, "drain timeout reached; closing remaining connections");
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
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    ctx: &Arc<ListenerCtx>,
    shared: Arc<Shared>,
    watcher: hyper_util::server::graceful::Watcher,
) {
    let activity = Arc::new(Activity::default());
    let cfg = &ctx.config;
    let (header, idle) = (cfg.header_read_timeout.get(), cfg.idle_timeout.get());
    match &ctx.tls {
        None => {
            let info = Arc::new(ConnInfo {
                peer,
                listener: Arc::clone(ctx),
                tls: false,
                activity: Arc::clone(&activity),
            });
            let io = DeadlineIo::new(stream, activity, header, idle, None);
            run_http(io, info, shared, ctx, watcher).await;
        }
        Some(acceptor) => {
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
            let info = Arc::new(ConnInfo {
                peer,
                listener: Arc::clone(ctx),
                tls: true,
                activity: Arc::clone(&activity),
            });
            let io = DeadlineIo::new(tls, activity, header, idle, Some(h2));
            run_http(io, info, shared, ctx, watcher).await;
        }
    }
}

async fn run_http<T>(
    io: DeadlineIo<T>,
    info: Arc<ConnInfo>,
    shared: Arc<Shared>,
    ctx: &ListenerCtx,
    watcher: hyper_util::server::graceful::Watcher,
) where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let svc = service_fn(move |req: Request<Incoming>| {
        let info = Arc::clone(&info);
        let shared = Arc::clone(&shared);
        // Boxed so an idle keep-alive connection does not carry the (large) request future inline.
        Box::pin(async move { Ok::<_, Infallible>(handler::handle(req, &info, &shared).await) })
    });
    let conn = ctx
        .builder
        .serve_connection_with_upgrades(TokioIo::new(io), svc);
    if let Err(e) = watcher.watch(conn.into_owned()).await {
        tracing::trace!(listener = %ctx.name, error = %e, "connection ended with an error");
    }
}
