//! HTTP/2 frame floods (bad-inputs row 40): a hyper-util `auto` server whose connections are
//! wrapped in `H2Guard` answers each flood with GOAWAY(ENHANCE_YOUR_CALM) and closes, and never
//! cuts a well-behaved client (real h2 and hyper clients, with pings, window updates and uploads).
//!
//! The server here is a bare hyper server on loopback, not Palisade's listener: the guard is
//! tested on its own (the end-to-end test belongs with the listener wiring).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::{body::Incoming, service::service_fn};
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::conn::auto,
};
use palisade::server::h2_guard::{FloodFlag, FloodLimits, H2Guard};
use support::{
    STEP,
    h2raw::{
        DATA, END_STREAM, H2Conn, HEADERS, PING, RST_STREAM, SETTINGS, WINDOW_UPDATE, header_block,
    },
};
use tokio::{net::TcpListener, sync::mpsc, task::JoinHandle};

const PRIORITY: u8 = 0x2;
const CONTINUATION: u8 = 0x9;
const ENHANCE_YOUR_CALM: u32 = 0xb;

/// Size of `/big`'s response body.
const BIG: usize = 1 << 20;

/// One accepted connection: its flood flag and how it ended (`Err` = hyper's error).
struct Conn {
    flag: FloodFlag,
    done: JoinHandle<Result<(), String>>,
}

struct Server {
    addr: SocketAddr,
    conns: mpsc::UnboundedReceiver<Conn>,
    task: JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Server {
    /// `max_header_list_size`: raised to keep h2's own CONTINUATION cap (which scales with it)
    /// out of the way, so that the guard's is the one that answers.
    async fn start(max_header_list_size: Option<u32>) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, conns) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                tcp.set_nodelay(true).ok();
                let guard = H2Guard::new(tcp, FloodLimits::default(), None);
                let flag = guard.flag();
                let done = tokio::spawn(async move {
                    let mut builder = auto::Builder::new(TokioExecutor::new());
                    builder.http2().timer(TokioTimer::new());
                    if let Some(size) = max_header_list_size {
                        builder.http2().max_header_list_size(size);
                    }
                    builder
                        .serve_connection(TokioIo::new(guard), service_fn(handle))
                        .await
                        .map_err(|e| e.to_string())
                });
                if tx.send(Conn { flag, done }).is_err() {
                    return;
                }
            }
        });
        Server { addr, conns, task }
    }

    async fn next_conn(&mut self) -> Conn {
        tokio::time::timeout(STEP, self.conns.recv())
            .await
            .expect("a connection")
            .expect("server running")
    }
}

/// `/big`: 1 MiB; a request with a body: its length; anything else: `ok`.
async fn handle(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, hyper::Error> {
    if req.uri().path() == "/big" {
        return Ok(Response::new(Full::new(Bytes::from(vec![b'x'; BIG]))));
    }
    let body = req.into_body().collect().await?.to_bytes();
    Ok(Response::new(Full::new(Bytes::from(
        body.len().to_string(),
    ))))
}

fn post_fields(authority: &str) -> Vec<(&[u8], &[u8])> {
    vec![
        (b":method".as_slice(), b"POST".as_slice()),
        (b":scheme", b"http"),
        (b":authority", authority.as_bytes()),
        (b":path", b"/upload"),
    ]
}

/// Asserts the client was sent GOAWAY(ENHANCE_YOUR_CALM), the connection then ended on both
/// sides, and the guard recorded `reason`.
async fn assert_cut(client: &mut H2Conn, conn: Conn, reason: &str) {
    assert_eq!(client.goaway().await, Some(ENHANCE_YOUR_CALM));
    let started = Instant::now();
    while client.read_frame(STEP).await.is_some() {}
    assert!(
        started.elapsed() < STEP / 2,
        "the connection must close, not idle"
    );
    let ended = tokio::time::timeout(STEP, conn.done)
        .await
        .expect("the server's connection must end")
        .unwrap();
    assert!(
        ended.is_err(),
        "hyper ends the connection on the guard's error"
    );
    assert_eq!(conn.flag.get(), Some(&reason));
}

/// A guarded server and one raw HTTP/2 client connection to it (client side, server side).
async fn guarded_connection() -> (Server, H2Conn, Conn) {
    let mut server = Server::start(None).await;
    let c = H2Conn::connect(server.addr).await;
    let conn = server.next_conn().await;
    (server, c, conn)
}

#[tokio::test]
async fn ping_flood_gets_goaway_enhance_your_calm() {
    let (_server, mut c, conn) = guarded_connection().await;
    for i in 0..500u64 {
        c.write_frame(PING, 0, 0, &i.to_be_bytes()).await;
    }
    assert_cut(&mut c, conn, "ping").await;
}

#[tokio::test]
async fn settings_flood_gets_goaway_enhance_your_calm() {
    let (_server, mut c, conn) = guarded_connection().await;
    for _ in 0..500 {
        c.write_frame(SETTINGS, 0, 0, &[]).await;
    }
    assert_cut(&mut c, conn, "settings").await;
}

#[tokio::test]
async fn empty_data_frames_get_goaway_enhance_your_calm() {
    let (server, mut c, conn) = guarded_connection().await;
    let authority = server.addr.to_string();
    // An upload the server waits on, then DATA frames that carry nothing and never end it.
    c.headers(1, &post_fields(&authority), false).await;
    for _ in 0..1000 {
        c.data(1, &[], false).await;
    }
    assert_cut(&mut c, conn, "empty_frames").await;
}

#[tokio::test]
async fn continuation_flood_gets_goaway_enhance_your_calm() {
    let mut server = Server::start(Some(16 << 20)).await;
    let mut c = H2Conn::connect(server.addr).await;
    let conn = server.next_conn().await;
    let authority = server.addr.to_string();
    let long = vec![b'a'; 1000];
    let mut fields = support::h2raw::get_fields(&authority, "/");
    fields.push((b"x-long", &long));
    let block = header_block(&fields);
    // A header block dribbled out a byte per CONTINUATION, never ended.
    c.write_frame(HEADERS, END_STREAM, 1, &block[..8]).await;
    for b in block[8..].chunks(1).take(500) {
        c.write_frame(CONTINUATION, 0, 1, b).await;
    }
    assert_cut(&mut c, conn, "continuation").await;
}

#[tokio::test]
async fn window_update_flood_gets_goaway_enhance_your_calm() {
    let (_server, mut c, conn) = guarded_connection().await;
    for _ in 0..3000 {
        c.write_frame(WINDOW_UPDATE, 0, 0, &1u32.to_be_bytes())
            .await;
    }
    assert_cut(&mut c, conn, "window_update").await;
}

#[tokio::test]
async fn priority_flood_gets_goaway_enhance_your_calm() {
    let (_server, mut c, conn) = guarded_connection().await;
    for i in 0..3000u32 {
        // Exclusive-free dependency on the root, on ever new idle streams.
        c.write_frame(PRIORITY, 0, 2 * i + 1, &[0, 0, 0, 0, 16])
            .await;
    }
    assert_cut(&mut c, conn, "priority").await;
}

#[tokio::test]
async fn resets_of_a_finished_stream_get_goaway_enhance_your_calm() {
    let (server, mut c, conn) = guarded_connection().await;
    let authority = server.addr.to_string();
    c.headers(1, &support::h2raw::get_fields(&authority, "/"), true)
        .await;
    assert_eq!(c.body(1).await, (b"0".to_vec(), true));
    for _ in 0..3000 {
        c.write_frame(RST_STREAM, 0, 1, &8u32.to_be_bytes()).await;
    }
    assert_cut(&mut c, conn, "reset").await;
}

#[tokio::test]
async fn flooding_one_connection_leaves_the_others_served() {
    let mut server = Server::start(None).await;
    let mut good = H2Conn::connect(server.addr).await;
    let good_conn = server.next_conn().await;
    let mut bad = H2Conn::connect(server.addr).await;
    let bad_conn = server.next_conn().await;
    for _ in 0..500 {
        bad.write_frame(SETTINGS, 0, 0, &[]).await;
    }
    assert_cut(&mut bad, bad_conn, "settings").await;
    let authority = server.addr.to_string();
    good.headers(1, &support::h2raw::get_fields(&authority, "/"), true)
        .await;
    assert_eq!(good.body(1).await, (b"0".to_vec(), true));
    assert!(good_conn.flag.get().is_none());
    assert!(!good_conn.done.is_finished());
}

/// The h2 client with small windows (a WINDOW_UPDATE every few frames), user PINGs between
/// requests, downloads and uploads, sequential and concurrent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_h2_client_is_never_cut() {
    let mut server = Server::start(None).await;
    let tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let (client, mut connection) = h2::client::Builder::new()
        .initial_window_size(16_384)
        .initial_connection_window_size(32_768)
        .handshake::<_, Bytes>(tcp)
        .await
        .unwrap();
    let mut ping_pong = connection.ping_pong().expect("ping_pong");
    let driver = tokio::spawn(connection);
    let conn = server.next_conn().await;
    let url = format!("http://{}/", server.addr);

    async fn download(client: &h2::client::SendRequest<Bytes>, url: &str) -> usize {
        let mut client = client.clone().ready().await.unwrap();
        let req = Request::get(format!("{url}big")).body(()).unwrap();
        let (resp, _) = client.send_request(req, true).unwrap();
        let mut body = resp.await.unwrap().into_body();
        let mut n = 0;
        while let Some(chunk) = body.data().await {
            let chunk = chunk.unwrap();
            n += chunk.len();
            body.flow_control().release_capacity(chunk.len()).unwrap();
        }
        n
    }
    async fn upload(client: &h2::client::SendRequest<Bytes>, url: &str, len: usize) -> Bytes {
        let mut client = client.clone().ready().await.unwrap();
        let req = Request::post(format!("{url}up")).body(()).unwrap();
        let (resp, mut send) = client.send_request(req, false).unwrap();
        for chunk in vec![b'u'; len].chunks(10_000) {
            send.send_data(Bytes::copy_from_slice(chunk), false)
                .unwrap();
        }
        send.send_data(Bytes::new(), true).unwrap();
        let mut body = resp.await.unwrap().into_body();
        let mut out = Vec::new();
        while let Some(chunk) = body.data().await {
            out.extend_from_slice(&chunk.unwrap());
        }
        out.into()
    }

    for _ in 0..10 {
        assert_eq!(download(&client, &url).await, BIG);
        assert_eq!(upload(&client, &url, 100_000).await, "100000");
        ping_pong.ping(h2::Ping::opaque()).await.unwrap();
    }
    let many = (0..20).map(|i| {
        let (client, url) = (client.clone(), url.clone());
        tokio::spawn(async move {
            if i % 2 == 0 {
                assert_eq!(download(&client, &url).await, BIG);
            } else {
                assert_eq!(upload(&client, &url, 50_000).await, "50000");
            }
        })
    });
    for t in many {
        t.await.unwrap();
    }
    // Keepalive-style pings while idle, a few a second.
    for _ in 0..10 {
        ping_pong.ping(h2::Ping::opaque()).await.unwrap();
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    assert_eq!(download(&client, &url).await, BIG);
    assert!(conn.flag.get().is_none(), "cut for {:?}", conn.flag.get());
    assert!(!conn.done.is_finished());
    drop((client, ping_pong));
    driver.abort();
}

/// hyper's client with BDP pings (adaptive window) and keepalive pings, many concurrent streams.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hyper_client_with_adaptive_window_and_keepalive_is_never_cut() {
    let mut server = Server::start(None).await;
    let tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let (sender, connection) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .adaptive_window(true)
        .keep_alive_interval(Duration::from_millis(200))
        .keep_alive_while_idle(true)
        .handshake::<_, Full<Bytes>>(TokioIo::new(tcp))
        .await
        .unwrap();
    let driver = tokio::spawn(connection);
    let conn = server.next_conn().await;
    let requests = (0..40).map(|i| {
        let mut sender = sender.clone();
        async move {
            let req = if i % 2 == 0 {
                Request::get("http://a.test/big").body(Full::default())
            } else {
                Request::post("http://a.test/up").body(Full::new(Bytes::from(vec![b'p'; 200_000])))
            }
            .unwrap();
            let resp = sender.send_request(req).await.unwrap();
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            if i % 2 == 0 {
                assert_eq!(body.len(), BIG);
            } else {
                assert_eq!(body, "200000");
            }
        }
    });
    futures_util::future::join_all(requests).await;
    // Idle with keepalive pings for a second, then one more request.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut s = sender.clone();
    let resp = s
        .send_request(
            Request::get("http://a.test/big")
                .body(Full::default())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(
        resp.into_body().collect().await.unwrap().to_bytes().len(),
        BIG
    );
    assert!(conn.flag.get().is_none(), "cut for {:?}", conn.flag.get());
    assert!(!conn.done.is_finished());
    drop((sender, s));
    driver.abort();
}

#[tokio::test]
async fn http1_through_the_guard_is_untouched() {
    let mut server = Server::start(None).await;
    let tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(connection);
    let conn = server.next_conn().await;
    for _ in 0..3 {
        let req = Request::post("/up")
            .header("host", "a.test")
            .body(Full::new(Bytes::from_static(b"PRI * HTTP/2.0")))
            .unwrap();
        let resp = sender.send_request(req).await.unwrap();
        assert_eq!(resp.into_body().collect().await.unwrap().to_bytes(), "14");
        let resp = sender
            .send_request(
                Request::get("/big")
                    .header("host", "a.test")
                    .body(Full::default())
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(
            resp.into_body().collect().await.unwrap().to_bytes().len(),
            BIG
        );
    }
    assert!(conn.flag.get().is_none());
}

/// DATA frames themselves are never counted, only empty ones: a big upload in tiny frames passes.
#[tokio::test]
async fn an_upload_in_many_small_data_frames_is_not_a_flood() {
    let (server, mut c, conn) = guarded_connection().await;
    let authority = server.addr.to_string();
    c.headers(1, &post_fields(&authority), false).await;
    for _ in 0..5000 {
        c.write_frame(DATA, 0, 1, b"ab").await;
    }
    c.data(1, &[], true).await;
    assert_eq!(c.body(1).await, (b"10000".to_vec(), true));
    assert!(conn.flag.get().is_none());
}
