//! Palisade's own HTTP/1.1 client (`upstream::http1`) on the wire: connection reuse across every
//! message shape, request framing and trailers as the upstream receives them, what must never be
//! replayed, oversized heads, and an upstream that answers before the request body is all sent.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::net::SocketAddr;

use support::{Mode, Proxy, Upstream, client, get, get_with, one_route, raw::RawConn, send};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
};

async fn proxy_to(addr: SocketAddr) -> Proxy {
    Proxy::start(&one_route(&[addr])).await
}

#[tokio::test]
async fn one_upstream_connection_carries_requests_and_responses_of_every_shape() {
    let up = Upstream::start("up").await;
    let proxy = proxy_to(up.addr()).await;
    let chunked_ok = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n";

    assert_eq!(get(&proxy.url("/get")).await.status, 200);
    let head = send(client().head(proxy.url("/head"))).await;
    assert_eq!((head.status, head.body.len()), (200, 0));
    let post = send(client().post(proxy.url("/post")).body("sized body")).await;
    assert_eq!(post.json()["body_len"], 10);
    let stream = futures_util::stream::iter([Ok::<_, std::io::Error>("chunk one, "), Ok("two")]);
    let chunked = send(
        client()
            .put(proxy.url("/put"))
            .body(reqwest::Body::wrap_stream(stream)),
    )
    .await;
    assert_eq!(chunked.json()["body_len"], 14);
    up.push(Mode::Status(204));
    assert_eq!(get(&proxy.url("/204")).await.status, 204);
    up.push(Mode::Raw(chunked_ok.to_vec()));
    assert_eq!(get(&proxy.url("/chunked")).await.text(), "abc");
    assert_eq!(get(&proxy.url("/last")).await.status, 200);

    let seen = up.seen();
    assert_eq!(seen.len(), 7);
    assert_eq!(
        up.connections(),
        1,
        "every request reused the one connection"
    );
    assert_eq!(seen[6].nth_on_conn, 6);
}

#[tokio::test]
async fn request_bodies_keep_their_length_or_chunking_and_trailers() {
    let up = Upstream::start("up").await;
    let proxy = proxy_to(up.addr()).await;

    let mut c = RawConn::connect(proxy.addr()).await;
    c.send(b"POST /sized HTTP/1.1\r\nhost: a.test\r\ncontent-length: 5\r\n\r\nhello")
        .await;
    assert_eq!(c.read_response().await.status, 200);
    c.send(
        b"POST /chunked HTTP/1.1\r\nhost: a.test\r\ntransfer-encoding: chunked\r\n\r\n\
          5\r\nhello\r\n6\r\n world\r\n0\r\nx-checksum: 42\r\n\r\n",
    )
    .await;
    assert_eq!(c.read_response().await.status, 200);

    let seen = up.seen();
    assert_eq!(seen[0].content_length.as_deref(), Some("5"));
    assert!(!seen[0].chunked);
    assert_eq!(seen[0].body, b"hello");
    assert!(seen[1].chunked, "{:?}", seen[1].headers);
    assert_eq!(seen[1].content_length, None);
    assert_eq!(seen[1].body, b"hello world");
    assert_eq!(
        seen[1].trailers,
        vec![("x-checksum".to_owned(), "42".to_owned())]
    );
}

#[tokio::test]
async fn a_post_lost_on_a_stale_pooled_connection_is_not_replayed() {
    let up = Upstream::start_with("up", Mode::CloseIfReused).await;
    let proxy = proxy_to(up.addr()).await;

    assert_eq!(get(&proxy.url("/a")).await.status, 200);
    let r = send(client().post(proxy.url("/b")).body("once only")).await;

    assert_eq!(r.status, 502);
    assert_eq!(up.hits(), 2, "the POST reached the upstream once");
    assert_eq!(up.connections(), 1, "and was never sent again");
}

#[tokio::test]
async fn an_upstream_head_over_the_size_limit_is_502() {
    let mut head = b"HTTP/1.1 200 OK\r\n".to_vec();
    for i in 0..700 {
        head.extend_from_slice(format!("x-filler-{i:04}: {}\r\n", "v".repeat(90)).as_bytes());
    }
    head.extend_from_slice(b"content-length: 2\r\n\r\nok");
    assert!(head.len() > palisade::upstream::http1::MAX_HEAD_BYTES);
    let up = Upstream::start_with("up", Mode::RawClose(head)).await;
    let proxy = proxy_to(up.addr()).await;

    assert_eq!(get(&proxy.url("/")).await.status, 502);
}

#[tokio::test]
async fn a_response_framed_by_the_close_is_relayed_whole() {
    let up = Upstream::start_with(
        "up",
        Mode::RawClose(b"HTTP/1.1 200 OK\r\nx-a: b\r\n\r\nuntil the very end".to_vec()),
    )
    .await;
    let proxy = proxy_to(up.addr()).await;

    let r = get(&proxy.url("/")).await;

    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "until the very end");
}

/// An upstream that refuses an upload after its head, without reading the body (as a server does
/// for a 413), then drains what still comes so its answer is not lost to a reset.
async fn early_answering_upstream() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 65536];
                let mut seen = Vec::new();
                while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => seen.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = s
                    .write_all(
                        b"HTTP/1.1 413 Content Too Large\r\ncontent-length: 8\r\n\r\ntoo big!",
                    )
                    .await;
                while matches!(s.read(&mut buf).await, Ok(n) if n > 0) {}
            });
        }
    });
    addr
}

#[tokio::test]
async fn an_answer_before_the_request_body_is_all_sent_is_relayed() {
    let addr = early_answering_upstream().await;
    let proxy = proxy_to(addr).await;
    // Big enough that it cannot all sit in socket buffers before the answer arrives.
    let body = vec![b'x'; 16 * 1024 * 1024];

    let r = send(client().post(proxy.url("/upload")).body(body)).await;

    assert_eq!(r.status, 413);
    assert_eq!(r.text(), "too big!");
}

#[tokio::test]
async fn a_response_ending_in_trailers_frees_its_connection_and_is_logged_complete() {
    let with_trailers = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ntrailer: x-sum\r\n\r\n\
        3\r\nabc\r\n0\r\nx-sum: 1\r\n\r\n";
    let up = Upstream::start_with("up", Mode::Raw(with_trailers.to_vec())).await;
    let proxy = Proxy::start_logged(&one_route(&[up.addr()])).await;

    for id in ["trailers-1", "trailers-2"] {
        let r = get_with(&proxy.url("/"), &[("x-request-id", id), ("te", "trailers")]).await;
        assert_eq!(r.text(), "abc");
    }

    assert_eq!(up.connections(), 1, "the connection went back to the pool");
    for id in ["trailers-1", "trailers-2"] {
        assert_eq!(proxy.access_log_entry(id).await["flags"], "-");
    }
}
