//! Upstream faults (bad-inputs rows 47–60): what the client gets, how the access log flags it, and
//! what the passive stats in `/clusters` count.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use support::{
    EchoServer, Mode, Proxy, STEP, Upstream, get, get_with, h2c_client,
    raw::{Fate, RawConn},
    refused_addr, send,
};

/// One route to one endpoint with short timeouts, access log on; `route` and `cluster` add keys.
/// One route to one endpoint, with retries off: this suite is about how a single failed attempt is
/// answered (retries have their own suite, tests/resilience.rs).
async fn proxy_to(addr: SocketAddr, route: &str, cluster: &str) -> Proxy {
    Proxy::start_logged(&format!(
        r#"
[[routes]]
name = "all"
cluster = "up"
retry = {{ attempts = 1 }}
{route}
[routes.match]
path_prefix = "/"

[clusters.up]
endpoints = ["{addr}"]
connect_timeout = "200ms"
{cluster}
"#
    ))
    .await
}

/// A GET with a fresh request id; returns the reply and the id.
async fn traced_get(proxy: &Proxy, id: &str) -> support::Reply {
    get_with(&proxy.url("/"), &[("x-request-id", id)]).await
}

async fn flags(proxy: &Proxy, id: &str) -> String {
    proxy.access_log_entry(id).await["flags"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

#[tokio::test]
async fn refused_connection_is_502_flagged_uf_and_counted_as_a_failure() {
    let addr = refused_addr();
    let proxy = proxy_to(addr, "", "").await;

    let r = traced_get(&proxy, "refused-1").await;

    assert_eq!(r.status, 502);
    assert_eq!(flags(&proxy, "refused-1").await, "UF");
    assert_eq!(proxy.endpoint_stats("up", addr).await["failures"], 1);
}

// Row 48: a connect that never completes (SYNs dropped because the accept queue is full).
#[tokio::test]
async fn connect_timeout_is_504_flagged_uf_ut() {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
        .unwrap();
    sock.listen(0).unwrap();
    let addr = sock.local_addr().unwrap().as_socket().unwrap();
    let mut fillers = Vec::new();
    for _ in 0..16 {
        match tokio::time::timeout(
            Duration::from_millis(300),
            tokio::net::TcpStream::connect(addr),
        )
        .await
        {
            Ok(Ok(s)) => fillers.push(s),
            _ => break,
        }
    }
    let proxy = proxy_to(addr, "timeout = \"3s\"", "").await;

    let started = Instant::now();
    let r = traced_get(&proxy, "blackhole-1").await;
    let took = started.elapsed();

    assert_eq!(r.status, 504);
    assert!(
        took < Duration::from_millis(1500),
        "cut by connect_timeout (200ms), not the route timeout (3s): {took:?}"
    );
    assert_eq!(flags(&proxy, "blackhole-1").await, "UF,UT");
    drop(sock);
}

// Row 49.
#[tokio::test]
async fn hanging_upstream_is_504_after_the_route_timeout_and_its_connection_closed() {
    let up = Upstream::start_with("up", Mode::Hang).await;
    let proxy = proxy_to(up.addr(), "timeout = \"300ms\"", "").await;

    let started = Instant::now();
    let r = traced_get(&proxy, "hang-1").await;
    let took = started.elapsed();

    assert_eq!(r.status, 504);
    assert!(
        took >= Duration::from_millis(280) && took < Duration::from_secs(2),
        "{took:?}"
    );
    assert_eq!(flags(&proxy, "hang-1").await, "UT");
    // The connection the request is stuck on is not reusable: it must be closed.
    up.wait_no_open_connections().await;
}

#[tokio::test]
async fn response_header_timeout_is_shorter_than_the_route_timeout() {
    let up = Upstream::start_with("up", Mode::Hang).await;
    let proxy = proxy_to(
        up.addr(),
        "timeout = \"5s\"",
        "response_header_timeout = \"300ms\"",
    )
    .await;

    let started = Instant::now();
    let r = traced_get(&proxy, "rht-1").await;
    let took = started.elapsed();

    assert_eq!(r.status, 504);
    assert!(
        took >= Duration::from_millis(280) && took < Duration::from_secs(2),
        "{took:?}"
    );
}

#[tokio::test]
async fn a_head_that_arrives_too_slowly_is_504() {
    let up = Upstream::start_with("up", Mode::SlowHeaders(Duration::from_secs(3))).await;
    let proxy = proxy_to(
        up.addr(),
        "timeout = \"5s\"",
        "response_header_timeout = \"300ms\"",
    )
    .await;

    let started = Instant::now();
    let r = traced_get(&proxy, "slowhead-1").await;

    assert_eq!(r.status, 504);
    assert!(started.elapsed() < Duration::from_secs(2));
}

// Row 52.
#[tokio::test]
async fn garbage_response_is_502_flagged_upe() {
    let up = Upstream::start_with("up", Mode::Garbage).await;
    let proxy = proxy_to(up.addr(), "", "").await;

    let r = traced_get(&proxy, "garbage-1").await;

    assert_eq!(r.status, 502);
    assert_eq!(flags(&proxy, "garbage-1").await, "UPE");
}

// Row 52.
#[tokio::test]
async fn malformed_response_heads_are_502() {
    let up = Upstream::start("up").await;
    let proxy = proxy_to(up.addr(), "", "").await;
    let bad: [&[u8]; 5] = [
        b"HTTP/1.1 2OO OK\r\ncontent-length: 2\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nno colon here\r\ncontent-length: 2\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\ncontent-length: abc\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 3\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nx-folded: a\r\n b\r\ncontent-length: 2\r\n\r\nok",
    ];
    for b in bad {
        up.push(Mode::RawClose(b.to_vec()));
        let r = get(&proxy.url("/")).await;
        assert_eq!(r.status, 502, "{:?}", String::from_utf8_lossy(b));
    }
    // And the upstream is used normally afterwards.
    assert_eq!(get(&proxy.url("/")).await.status, 200);
}

// Row 50.
#[tokio::test]
async fn upstream_closing_or_resetting_before_any_response_is_502_flagged_uc() {
    let up = Upstream::start("up").await;
    let proxy = proxy_to(up.addr(), "", "").await;

    up.push(Mode::Reset);
    let reset = traced_get(&proxy, "reset-1").await;
    up.push(Mode::Close);
    let closed = traced_get(&proxy, "close-1").await;

    assert_eq!(reset.status, 502);
    assert_eq!(flags(&proxy, "reset-1").await, "UC");
    assert_eq!(closed.status, 502);
    assert_eq!(flags(&proxy, "close-1").await, "UC");
}

// Row 51, HTTP/1 with Content-Length.
#[tokio::test]
async fn upstream_dying_mid_body_truncates_the_response_before_its_content_length() {
    let up = Upstream::start_with("up", Mode::ResetMidBody).await;
    let proxy = proxy_to(up.addr(), "", "").await;

    let mut c = RawConn::connect(proxy.addr()).await;
    c.send(b"GET / HTTP/1.1\r\nhost: a.test\r\n\r\n").await;
    let r = c.read_response().await;

    assert_eq!(r.status, 200);
    if r.chunked {
        assert!(!r.complete, "a chunked body must lack its last chunk");
    } else {
        assert_eq!(r.header("content-length"), Some("1000"));
        assert!(!r.complete && r.body.len() < 1000, "{} bytes", r.body.len());
    }
    assert_eq!(c.fate(STEP).await, Fate::Closed);
}

// Row 51, HTTP/1 chunked.
#[tokio::test]
async fn upstream_dying_mid_chunked_body_never_gets_a_last_chunk() {
    let up = Upstream::start_with("up", Mode::ChunkedResetMidBody).await;
    let proxy = proxy_to(up.addr(), "", "").await;

    let mut c = RawConn::connect(proxy.addr()).await;
    c.send(b"GET / HTTP/1.1\r\nhost: a.test\r\n\r\n").await;
    let r = c.read_response().await;

    assert_eq!(r.status, 200);
    assert!(r.chunked, "{:?}", r.headers);
    assert!(
        !r.complete,
        "the truncated body looks complete: {:?}",
        r.text()
    );
    assert_eq!(c.fate(STEP).await, Fate::Closed);
}

// Row 51, HTTP/2 downstream: the stream is reset, never ended cleanly.
#[tokio::test]
async fn upstream_dying_mid_body_resets_the_http2_stream() {
    let up = Upstream::start_with("up", Mode::ResetMidBody).await;
    let proxy = proxy_to(up.addr(), "", "").await;

    let rsp = h2c_client().get(proxy.url("/")).send().await.unwrap();
    assert_eq!(rsp.version(), http::Version::HTTP_2);
    assert_eq!(rsp.status(), 200);
    let body = rsp.bytes().await;

    assert!(
        body.is_err(),
        "a truncated body was delivered as complete: {body:?}"
    );
}

// Row 59.
#[tokio::test]
async fn trickling_body_beyond_body_idle_timeout_is_cut() {
    let up = Upstream::start_with(
        "up",
        Mode::Trickle {
            gap: Duration::from_secs(3),
            bytes: 10,
        },
    )
    .await;
    let proxy = proxy_to(up.addr(), "", "body_idle_timeout = \"300ms\"").await;

    let started = Instant::now();
    let mut c = RawConn::connect(proxy.addr()).await;
    c.send(b"GET / HTTP/1.1\r\nhost: a.test\r\n\r\n").await;
    let r = c.read_response().await;

    assert_eq!(r.status, 200);
    assert!(!r.complete && r.body.len() < 10, "{} bytes", r.body.len());
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(c.fate(STEP).await, Fate::Closed);
}

// Row 59: the idle timeout is between reads, not a total.
#[tokio::test]
async fn slow_but_steady_body_within_the_idle_timeout_completes() {
    let up = Upstream::start_with(
        "up",
        Mode::Trickle {
            gap: Duration::from_millis(60),
            bytes: 10,
        },
    )
    .await;
    let proxy = proxy_to(up.addr(), "", "body_idle_timeout = \"400ms\"").await;

    let r = get(&proxy.url("/")).await;

    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "xxxxxxxxxx");
}

// Row 60, the common case: the upstream closed an idle pooled connection.
#[tokio::test]
async fn pooled_connection_closed_by_the_upstream_while_idle_is_not_reused() {
    let up = Upstream::start("up").await;
    let proxy = proxy_to(up.addr(), "", "").await;

    assert_eq!(get(&proxy.url("/a")).await.status, 200);
    up.close_idle_connections();
    up.wait_no_open_connections().await;
    let r = get(&proxy.url("/b")).await;

    assert_eq!(r.status, 200);
    assert_eq!(up.connections(), 2);
}

// Rows 50 and 60, the race: the upstream closes the pooled connection as our request arrives.
#[tokio::test]
async fn idempotent_request_lost_on_a_stale_pooled_connection_is_retried() {
    let up = Upstream::start_with("up", Mode::CloseIfReused).await;
    let proxy = proxy_to(up.addr(), "", "").await;

    assert_eq!(get(&proxy.url("/a")).await.status, 200);
    let r = get(&proxy.url("/b")).await;

    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(up.connections(), 2);
}

#[tokio::test]
async fn upstream_5xx_is_passed_through_untouched() {
    let up = Upstream::start_with("up", Mode::Status(503)).await;
    let proxy = proxy_to(up.addr(), "", "").await;

    let r = get(&proxy.url("/")).await;

    assert_eq!(r.status, 503);
    assert_eq!(r.text(), "status 503 from up\n");
}

// Row 55.
#[tokio::test]
async fn upstream_1xx_responses_are_never_taken_as_final() {
    let up = Upstream::start_with(
        "up",
        Mode::Raw(
            b"HTTP/1.1 103 Early Hints\r\nlink: </s.css>; rel=preload\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"
                .to_vec(),
        ),
    )
    .await;
    let proxy = proxy_to(up.addr(), "", "").await;

    let r = get(&proxy.url("/")).await;

    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "ok");
}

// Row 53: framed by Transfer-Encoding; the Content-Length is dropped.
#[tokio::test]
async fn upstream_response_with_both_te_and_cl_is_framed_by_te() {
    let up = Upstream::start("up").await;
    let proxy = proxy_to(up.addr(), "", "").await;
    up.push(Mode::Raw(
        b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
            .to_vec(),
    ));

    let mut c = RawConn::connect(proxy.addr()).await;
    c.send(b"GET /a HTTP/1.1\r\nhost: a.test\r\n\r\n").await;
    let r = c.read_response().await;
    c.send(b"GET /b HTTP/1.1\r\nhost: a.test\r\n\r\n").await;
    let next = c.read_response().await;

    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "hello");
    assert!(
        !(r.chunked && r.has("content-length")),
        "both framings sent to the client: {:?}",
        r.headers
    );
    assert_eq!(next.status, 200);
    assert!(next.text().contains("\"/b\""), "{}", next.text());
}

// Row 53: bytes after the response (response splitting) are never forwarded, on this request or
// as the answer to the next one.
#[tokio::test]
async fn bytes_after_an_upstream_response_are_never_forwarded() {
    let up = Upstream::start("up").await;
    let proxy = proxy_to(up.addr(), "", "").await;
    up.push(Mode::Raw(
        b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhelloHTTP/1.1 200 OK\r\ncontent-length: 8\r\n\r\nsmuggled"
            .to_vec(),
    ));

    let mut c = RawConn::connect(proxy.addr()).await;
    c.send(b"GET /a HTTP/1.1\r\nhost: a.test\r\n\r\n").await;
    let r = c.read_response().await;
    c.send(b"GET /b HTTP/1.1\r\nhost: a.test\r\n\r\n").await;
    let next = c.read_response().await;

    assert_eq!(r.text(), "hello");
    assert_ne!(
        next.text(),
        "smuggled",
        "a split response answered the next request"
    );
    assert_eq!(next.status, 200);
    assert!(next.text().contains("\"/b\""), "{}", next.text());
}

// Row 56: after a GOAWAY the next request opens a new HTTP/2 connection.
#[tokio::test]
async fn h2_upstream_goaway_then_the_next_request_uses_a_new_connection() {
    let echo = EchoServer::start("h2").await;
    let proxy = proxy_to(echo.addr(), "", "protocol = \"h2\"").await;

    assert_eq!(get(&proxy.url("/one")).await.status, 200);
    echo.goaway();
    support::eventually("the upstream to close its connection", STEP, || async {
        echo.open_connections() == 0
    })
    .await;
    let r = get(&proxy.url("/two")).await;

    assert_eq!(r.status, 200);
    assert_eq!(echo.connections(), 2);
}

// Row 35: a client that goes away is the client's doing.
#[tokio::test]
async fn client_disconnect_while_waiting_is_flagged_dc_and_not_an_upstream_failure() {
    let up = Upstream::start_with("up", Mode::Hang).await;
    let proxy = proxy_to(up.addr(), "timeout = \"5s\"", "").await;

    let mut c = RawConn::connect(proxy.addr()).await;
    c.send(b"GET / HTTP/1.1\r\nhost: a.test\r\nx-request-id: gone-1\r\n\r\n")
        .await;
    up.wait_hits(1).await;
    drop(c);

    let entry = proxy.access_log_entry("gone-1").await;
    assert_eq!(entry["flags"], "DC");
    assert_eq!(entry["status"], 499);
    let stats = proxy.endpoint_stats("up", up.addr()).await;
    assert_eq!(stats["failures"], 0, "{stats}");
    assert_eq!(stats["in_flight"], 0, "{stats}");
    // The abandoned upstream request is cancelled, not left hanging.
    up.wait_no_open_connections().await;
}

// Row 35, mid-response.
#[tokio::test]
async fn client_disconnect_mid_response_is_not_an_upstream_failure() {
    let up = Upstream::start_with(
        "up",
        Mode::Trickle {
            gap: Duration::from_millis(50),
            bytes: 200,
        },
    )
    .await;
    let proxy = proxy_to(up.addr(), "", "").await;

    let mut c = RawConn::connect(proxy.addr()).await;
    c.send(b"GET / HTTP/1.1\r\nhost: a.test\r\nx-request-id: gone-2\r\n\r\n")
        .await;
    // Wait for the head (the body trickles on), then leave.
    let mut rsp = tokio::time::timeout(STEP, async {
        let mut raw = Vec::new();
        loop {
            match c.fate(STEP).await {
                Fate::Data(d) => raw.extend_from_slice(&d),
                other => panic!("connection ended early: {other:?}"),
            }
            if raw.windows(4).any(|w| w == b"\r\n\r\n") {
                break raw;
            }
        }
    })
    .await
    .unwrap();
    rsp.truncate(12);
    assert_eq!(&rsp, b"HTTP/1.1 200");
    drop(c);

    let entry = proxy.access_log_entry("gone-2").await;
    assert_ne!(
        entry["flags"], "-",
        "an incomplete response is flagged: {entry}"
    );
    let stats = proxy.endpoint_stats("up", up.addr()).await;
    assert_eq!(stats["failures"], 0, "{stats}");
    up.wait_no_open_connections().await;
}

#[tokio::test]
async fn no_route_is_flagged_nr() {
    let up = Upstream::start("up").await;
    let proxy = Proxy::start_logged(&format!(
        r#"
[[routes]]
name = "only"
cluster = "up"
[routes.match]
host = "only.test"

[clusters.up]
endpoints = ["{}"]
"#,
        up.addr()
    ))
    .await;

    let r = get_with(
        &proxy.url("/"),
        &[("host", "other.test"), ("x-request-id", "nr-1")],
    )
    .await;

    assert_eq!(r.status, 404);
    assert_eq!(flags(&proxy, "nr-1").await, "NR");
}

#[tokio::test]
async fn successful_requests_are_logged_with_route_cluster_and_upstream() {
    let up = Upstream::start("up").await;
    let proxy = proxy_to(up.addr(), "", "").await;

    let r = send(
        support::client()
            .post(proxy.url("/logged?q=1"))
            .header("x-request-id", "ok-1")
            .header("host", "shop.example")
            .body("hello"),
    )
    .await;

    assert_eq!(r.status, 200);
    let e = proxy.access_log_entry("ok-1").await;
    assert_eq!(e["flags"], "-");
    assert_eq!(e["status"], 200);
    assert_eq!(e["method"], "POST");
    assert_eq!(e["path"], "/logged");
    assert_eq!(e["host"], "shop.example");
    assert_eq!(e["route"], "all");
    assert_eq!(e["cluster"], "up");
    assert_eq!(e["bytes_in"], 5);
    assert_eq!(e["bytes_out"], r.body.len());
}
