//! HTTP/2: h2c with prior knowledge downstream, HTTP/2 to upstreams, many streams on one
//! connection, and the HTTP/2-specific bad inputs (bad-inputs rows 41–45) on raw frames.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use support::{
    EchoServer, Mode, Proxy, Upstream, h2c_client,
    h2raw::{Fields, H2Conn, Outcome, PROTOCOL_ERROR, REFUSED_STREAM, get_fields},
    one_route, one_route_with, send,
};

#[tokio::test]
async fn h2c_prior_knowledge_client_is_served_over_an_http1_upstream() {
    let up = Upstream::start("up").await;
    let proxy = Proxy::start(&format!(
        "[http]\nvia = \"palisade\"\n{}",
        one_route(&[up.addr()])
    ))
    .await;

    let r = send(h2c_client().get(proxy.url("/h2?x=1"))).await;

    assert_eq!(r.version, http::Version::HTTP_2);
    assert_eq!(r.status, 200);
    let seen = up.last();
    assert_eq!(seen.version, "HTTP/1.1");
    assert_eq!(seen.target, "/h2?x=1");
    assert_eq!(seen.header("host"), Some(proxy.addr().to_string().as_str()));
    assert_eq!(seen.header("via"), Some("2 palisade"));
}

#[tokio::test]
async fn http2_on_both_sides() {
    let echo = EchoServer::start("h2").await;
    let proxy = Proxy::start(&one_route_with(&[echo.addr()], "protocol = \"h2\"")).await;

    let r = send(h2c_client().get(proxy.url("/both"))).await;

    assert_eq!(r.version, http::Version::HTTP_2);
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["version"], "HTTP/2.0");
    assert_eq!(echo.versions(), vec![http::Version::HTTP_2]);
}

#[tokio::test]
async fn http1_client_to_an_h2_upstream_with_a_body() {
    let echo = EchoServer::start("h2").await;
    let proxy = Proxy::start(&one_route_with(&[echo.addr()], "protocol = \"h2\"")).await;

    let r = send(support::client().post(proxy.url("/echo")).body("over h2")).await;

    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "over h2");
    assert_eq!(echo.versions(), vec![http::Version::HTTP_2]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_concurrent_streams_on_one_connection_all_succeed() {
    let echo = EchoServer::start("h2").await;
    let proxy = Proxy::start(&one_route_with(&[echo.addr()], "protocol = \"h2\"")).await;

    let tcp = tokio::net::TcpStream::connect(proxy.addr()).await.unwrap();
    let (sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(conn);
    let started = Instant::now();
    let requests = (0..50).map(|i| {
        let mut sender = sender.clone();
        async move {
            let req = Request::get(format!("http://a.test/slow?ms=300&i={i}"))
                .body(Empty::<Bytes>::new())
                .unwrap();
            let rsp = sender.send_request(req).await.unwrap();
            let status = rsp.status().as_u16();
            let body = rsp.into_body().collect().await.unwrap().to_bytes();
            (status, body)
        }
    });
    let results = support::within(
        "50 concurrent streams",
        Duration::from_secs(20),
        futures_util::future::join_all(requests),
    )
    .await;
    let took = started.elapsed();

    assert!(results.iter().all(|(s, b)| *s == 200 && !b.is_empty()));
    assert_eq!(echo.hits(), 50);
    // 50 × 300 ms one after another would take 15 s.
    assert!(
        took < Duration::from_secs(5),
        "the streams did not run concurrently: {took:?}"
    );
}

/// Sends one request as raw HEADERS on a fresh connection and reports what happened to it.
async fn raw_outcome(proxy: &Proxy, fields: &[(&[u8], &[u8])]) -> Outcome {
    let mut c = H2Conn::connect(proxy.addr()).await;
    c.headers(1, fields, true).await;
    c.outcome(1).await
}

/// Refused as malformed: a stream reset with PROTOCOL_ERROR, a connection error, or a 400.
fn refused(o: &Outcome) -> bool {
    matches!(
        o,
        Outcome::Reset(PROTOCOL_ERROR)
            | Outcome::GoAway(PROTOCOL_ERROR)
            | Outcome::Response(Some(400))
    )
}

// Row 41.
#[tokio::test]
async fn streams_beyond_max_concurrent_streams_are_refused() {
    let up = Upstream::start_with("up", Mode::Hang).await;
    let proxy = Proxy::start(&format!(
        "[listeners.web.http2]\nmax_concurrent_streams = 2\n{}",
        one_route(&[up.addr()])
    ))
    .await;
    let authority = proxy.addr().to_string();

    let mut c = H2Conn::connect(proxy.addr()).await;
    c.headers(1, &get_fields(&authority, "/1"), true).await;
    c.headers(3, &get_fields(&authority, "/3"), true).await;
    up.wait_hits(2).await;
    c.headers(5, &get_fields(&authority, "/5"), true).await;
    let third = c.outcome(5).await;

    assert!(
        matches!(third, Outcome::Reset(REFUSED_STREAM | PROTOCOL_ERROR)),
        "{third:?}"
    );
    assert_eq!(up.hits(), 2);
}

// Rows 42 and 44.
#[tokio::test]
async fn malformed_http2_requests_are_refused_and_never_forwarded() {
    let up = Upstream::start("up").await;
    let proxy = Proxy::start(&one_route(&[up.addr()])).await;
    let a = proxy.addr().to_string();
    let a = a.as_bytes();
    let base: [(&[u8], &[u8]); 4] = [
        (b":method", b"GET"),
        (b":scheme", b"http"),
        (b":authority", a),
        (b":path", b"/"),
    ];
    let with = |extra: (&'static [u8], &'static [u8])| {
        let mut v = base.to_vec();
        v.push(extra);
        v
    };
    let cases: Vec<(&str, Fields)> = vec![
        ("missing :path", base[..3].to_vec()),
        ("duplicate :path", with((b":path", b"/again"))),
        ("unknown pseudo-header", with((b":foo", b"bar"))),
        ("pseudo-header after a field", {
            let mut v = base[..3].to_vec();
            v.push((b"x-a", b"b"));
            v.push((b":path", b"/"));
            v
        }),
        ("uppercase field name", with((b"X-Upper", b"1"))),
        ("connection", with((b"connection", b"keep-alive"))),
        (
            "transfer-encoding",
            with((b"transfer-encoding", b"chunked")),
        ),
        ("keep-alive", with((b"keep-alive", b"timeout=5"))),
        ("upgrade", with((b"upgrade", b"websocket"))),
        (
            "proxy-connection",
            with((b"proxy-connection", b"keep-alive")),
        ),
        ("te other than trailers", with((b"te", b"gzip"))),
        ("CRLF in a value", with((b"x-a", b"b\r\nx-injected: 1"))),
        ("LF in a value", with((b"x-a", b"b\nx-injected: 1"))),
        ("NUL in a value", with((b"x-a", b"b\0c"))),
        ("CR in a name", with((b"x-a\r\nx-b", b"c"))),
    ];

    let mut failures = Vec::new();
    for (what, fields) in &cases {
        let o = raw_outcome(&proxy, fields).await;
        if !refused(&o) {
            failures.push(format!("{what}: {o:?}"));
        }
    }

    assert!(failures.is_empty(), "not refused:\n{}", failures.join("\n"));
    assert_eq!(
        up.hits(),
        0,
        "a malformed request reached the upstream: {:?}",
        up.seen()
    );
    // A well-formed request still works.
    assert_eq!(
        raw_outcome(&proxy, &base).await,
        Outcome::Response(Some(200))
    );
}

// Row 42: `te: trailers` is the one allowed value.
#[tokio::test]
async fn te_trailers_is_accepted() {
    let up = Upstream::start("up").await;
    let proxy = Proxy::start(&one_route(&[up.addr()])).await;
    let a = proxy.addr().to_string();
    let mut fields = get_fields(&a, "/te");
    fields.push((b"te", b"trailers"));

    assert_eq!(
        raw_outcome(&proxy, &fields).await,
        Outcome::Response(Some(200))
    );
}

// Row 43: a content-length that disagrees with the DATA never reaches an HTTP/1 upstream as a
// complete request.
#[tokio::test]
async fn content_length_disagreeing_with_data_is_refused() {
    let up = Upstream::start("up").await;
    let proxy = Proxy::start(&one_route(&[up.addr()])).await;
    let a = proxy.addr().to_string();

    for (cl, data) in [
        ("10", b"hello".as_slice()),
        (
            "5",
            b"helloGET /smuggled HTTP/1.1\r\nhost: x\r\n\r\n".as_slice(),
        ),
    ] {
        let mut fields = get_fields(&a, "/cl");
        fields[0] = (b":method", b"POST");
        fields.push((b"content-length", cl.as_bytes()));
        let mut c = H2Conn::connect(proxy.addr()).await;
        c.headers(1, &fields, false).await;
        c.data(1, data, true).await;
        let o = c.outcome(1).await;
        assert!(
            matches!(
                o,
                Outcome::Reset(_) | Outcome::GoAway(_) | Outcome::Response(Some(400 | 502))
            ),
            "content-length {cl} with {} bytes: {o:?}",
            data.len()
        );
    }

    assert!(
        up.seen().iter().all(|s| s.target != "/smuggled"),
        "{:?}",
        up.seen()
    );
    assert_eq!(
        up.hits(),
        0,
        "a complete request with a wrong length was forwarded"
    );
}

// Row 45.
#[tokio::test]
async fn authority_wins_over_a_different_host_header() {
    let up = Upstream::start("up").await;
    let proxy = Proxy::start(&one_route(&[up.addr()])).await;

    let mut fields = get_fields("a.example.test", "/");
    fields.push((b"host", b"b.example.test"));
    let o = raw_outcome(&proxy, &fields).await;

    assert_eq!(o, Outcome::Response(Some(200)));
    let seen = up.last();
    assert_eq!(seen.all("host"), vec!["a.example.test"]);
}

#[tokio::test]
async fn h2c_client_gets_errors_as_http2_responses() {
    let proxy = Proxy::start(&one_route(&[support::refused_addr()])).await;

    let r = send(h2c_client().get(proxy.url("/"))).await;

    assert_eq!(r.version, http::Version::HTTP_2);
    assert_eq!(r.status, 502);
}
