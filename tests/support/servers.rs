//! Real upstream servers: a hyper echo server (HTTP/1.1 and h2c prior knowledge on one port, or over
//! TLS) and a WebSocket echo server.

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{Request, Response};
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::{body::Incoming, service::service_fn};
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::TcpListener,
    sync::watch,
    task::JoinHandle,
};
use tokio_tungstenite::tungstenite::{
    Message,
    handshake::server::{ErrorResponse, Request as WsRequest, Response as WsResponse},
};

type Body = BoxBody<Bytes, hyper::Error>;

struct Ctx {
    name: String,
    hits: AtomicUsize,
    connections: AtomicUsize,
    open: AtomicUsize,
    body_bytes: AtomicU64,
    versions: Mutex<Vec<http::Version>>,
}

/// A hyper upstream. Paths:
/// - `/echo…`: streams the request body straight back (counting bytes as they arrive);
/// - `/slow?ms=N`: waits N ms, then as below;
/// - anything else: a JSON echo `{upstream, method, uri, version, headers, body_len}`.
///
/// Every response carries `x-upstream: <name>`.
pub struct EchoServer {
    addr: SocketAddr,
    ctx: Arc<Ctx>,
    goaway: watch::Sender<u64>,
    task: JoinHandle<()>,
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl EchoServer {
    /// Plain TCP: HTTP/1.1, or HTTP/2 with prior knowledge (h2c).
    pub async fn start(name: &str) -> EchoServer {
        Self::spawn(name, None).await
    }

    /// TLS with this rustls config (its ALPN decides h2 or http/1.1).
    pub async fn start_tls(name: &str, tls: Arc<rustls::ServerConfig>) -> EchoServer {
        Self::spawn(name, Some(tokio_rustls::TlsAcceptor::from(tls))).await
    }

    async fn spawn(name: &str, tls: Option<tokio_rustls::TlsAcceptor>) -> EchoServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let ctx = Arc::new(Ctx {
            name: name.to_owned(),
            hits: AtomicUsize::new(0),
            connections: AtomicUsize::new(0),
            open: AtomicUsize::new(0),
            body_bytes: AtomicU64::new(0),
            versions: Mutex::new(Vec::new()),
        });
        let (goaway, _) = watch::channel(0u64);
        let c = Arc::clone(&ctx);
        let g = goaway.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                c.connections.fetch_add(1, Ordering::SeqCst);
                c.open.fetch_add(1, Ordering::SeqCst);
                let c = Arc::clone(&c);
                let mut rx = g.subscribe();
                rx.mark_unchanged();
                let tls = tls.clone();
                tokio::spawn(async move {
                    match tls {
                        None => serve_conn(stream, Arc::clone(&c), rx).await,
                        Some(acceptor) => {
                            if let Ok(s) = acceptor.accept(stream).await {
                                serve_conn(s, Arc::clone(&c), rx).await;
                            }
                        }
                    }
                    c.open.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        EchoServer {
            addr,
            ctx,
            goaway,
            task,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn hits(&self) -> usize {
        self.ctx.hits.load(Ordering::SeqCst)
    }

    pub fn connections(&self) -> usize {
        self.ctx.connections.load(Ordering::SeqCst)
    }

    /// Connections open right now.
    pub fn open_connections(&self) -> usize {
        self.ctx.open.load(Ordering::SeqCst)
    }

    /// Request-body bytes received so far on `/echo` (counted as they arrive, not at the end).
    pub fn body_bytes(&self) -> u64 {
        self.ctx.body_bytes.load(Ordering::SeqCst)
    }

    /// The HTTP versions of the requests received, in order.
    pub fn versions(&self) -> Vec<http::Version> {
        self.ctx.versions.lock().unwrap().clone()
    }

    /// Gracefully shuts down every open connection (HTTP/2: GOAWAY); new ones are still accepted.
    pub fn goaway(&self) {
        self.goaway.send_modify(|g| *g += 1);
    }
}

async fn serve_conn<T>(io: T, ctx: Arc<Ctx>, mut goaway: watch::Receiver<u64>)
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let builder = auto::Builder::new(TokioExecutor::new());
    let svc = service_fn(move |req| handle(req, Arc::clone(&ctx)));
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), svc);
    tokio::pin!(conn);
    let mut shutting = false;
    loop {
        tokio::select! {
            _ = conn.as_mut() => return,
            r = goaway.changed(), if !shutting => {
                if r.is_ok() {
                    conn.as_mut().graceful_shutdown();
                }
                shutting = true;
            }
        }
    }
}

fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into()).map_err(|never| match never {}).boxed()
}

async fn handle(req: Request<Incoming>, ctx: Arc<Ctx>) -> Result<Response<Body>, Infallible> {
    ctx.hits.fetch_add(1, Ordering::SeqCst);
    ctx.versions.lock().unwrap().push(req.version());
    let name = ctx.name.clone();
    if req.uri().path().starts_with("/echo") {
        let counter = Arc::clone(&ctx);
        let body = req
            .into_body()
            .map_frame(move |f| {
                if let Some(d) = f.data_ref() {
                    counter
                        .body_bytes
                        .fetch_add(d.len() as u64, Ordering::SeqCst);
                }
                f
            })
            .boxed();
        let rsp = Response::builder()
            .header("x-upstream", name)
            .body(body)
            .expect("response");
        return Ok(rsp);
    }
    if req.uri().path() == "/slow" {
        let ms = req
            .uri()
            .query()
            .and_then(|q| q.strip_prefix("ms="))
            .and_then(|v| v.parse().ok())
            .unwrap_or(500u64);
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    let method = req.method().to_string();
    let uri = req.uri().to_string();
    let version = format!("{:?}", req.version());
    let headers: Vec<(String, String)> = req
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let body_len = match req.into_body().collect().await {
        Ok(b) => b.to_bytes().len(),
        Err(_) => 0,
    };
    let json = serde_json::json!({
        "upstream": name,
        "method": method,
        "uri": uri,
        "version": version,
        "headers": headers,
        "body_len": body_len,
    });
    let rsp = Response::builder()
        .header("x-upstream", name)
        .header("content-type", "application/json")
        .body(full(json.to_string()))
        .expect("response");
    Ok(rsp)
}

/// One upgrade request as the WebSocket server saw it: (path, headers).
pub type UpgradeRequest = (String, Vec<(String, String)>);

/// A WebSocket echo server (tungstenite): echoes text and binary messages, records each upgrade
/// request's path and headers.
pub struct WsEcho {
    addr: SocketAddr,
    requests: Arc<Mutex<Vec<UpgradeRequest>>>,
    task: JoinHandle<()>,
}

impl Drop for WsEcho {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl WsEcho {
    pub async fn start() -> WsEcho {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let requests = Arc::new(Mutex::new(Vec::new()));
        let r = Arc::clone(&requests);
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let r = Arc::clone(&r);
                tokio::spawn(async move {
                    #[allow(clippy::result_large_err)] // the type tungstenite's callback returns
                    let callback = move |req: &WsRequest,
                                         rsp: WsResponse|
                          -> Result<WsResponse, ErrorResponse> {
                        let headers = req
                            .headers()
                            .iter()
                            .map(|(k, v)| {
                                (
                                    k.to_string(),
                                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                                )
                            })
                            .collect();
                        r.lock()
                            .unwrap()
                            .push((req.uri().path().to_owned(), headers));
                        Ok(rsp)
                    };
                    let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(stream, callback).await
                    else {
                        return;
                    };
                    while let Some(Ok(msg)) = ws.next().await {
                        let echo = matches!(msg, Message::Text(_) | Message::Binary(_));
                        if matches!(msg, Message::Close(_)) || (echo && ws.send(msg).await.is_err())
                        {
                            return;
                        }
                    }
                });
            }
        });
        WsEcho {
            addr,
            requests,
            task,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Each upgrade request: (path, headers).
    pub fn requests(&self) -> Vec<UpgradeRequest> {
        self.requests.lock().unwrap().clone()
    }
}
