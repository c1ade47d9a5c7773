//! WebSocket through the proxy: the upgrade is forwarded, the 101 becomes a byte tunnel both ways,
//! idle tunnels are closed, and a refused upgrade stays an ordinary response.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use support::{Mode, Proxy, STEP, Upstream, WsEcho, one_route, one_route_with};
use tokio_tungstenite::{connect_async, tungstenite::Message};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_messages_flow_both_ways_through_the_proxy() {
    let echo = WsEcho::start().await;
    let proxy = Proxy::start(&one_route(&[echo.addr()])).await;

    let (mut ws, rsp) = connect_async(format!("ws://{}/chat?room=1", proxy.addr()))
        .await
        .expect("upgrade through the proxy");
    assert_eq!(rsp.status(), 101);
    for i in 0..5 {
        let text = format!("hello {i}");
        ws.send(Message::text(text.clone())).await.unwrap();
        let back = support::within("the echo", STEP, ws.next())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(back, Message::text(text));
        let bytes = vec![i as u8; 1000 * (i + 1)];
        ws.send(Message::binary(bytes.clone())).await.unwrap();
        let back = support::within("the echo", STEP, ws.next())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(back, Message::binary(bytes));
    }
    ws.close(None).await.unwrap();

    let requests = echo.requests();
    assert_eq!(requests.len(), 1);
    let (path, headers) = &requests[0];
    assert_eq!(path, "/chat");
    assert!(
        headers
            .iter()
            .any(|(k, v)| k == "x-forwarded-for" && v == "127.0.0.1"),
        "{headers:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_tunnel_is_closed_after_tunnel_idle_timeout() {
    let echo = WsEcho::start().await;
    let proxy = Proxy::start(&one_route_with(
        &[echo.addr()],
        "tunnel_idle_timeout = \"300ms\"",
    ))
    .await;

    let (mut ws, _) = connect_async(format!("ws://{}/idle", proxy.addr()))
        .await
        .unwrap();
    ws.send(Message::text("ping")).await.unwrap();
    assert!(ws.next().await.unwrap().is_ok());
    let idle_from = Instant::now();

    let end = support::within("the idle tunnel to close", STEP, ws.next()).await;
    let idle = idle_from.elapsed();

    assert!(
        !matches!(end, Some(Ok(Message::Text(_) | Message::Binary(_)))),
        "{end:?}"
    );
    assert!(idle >= Duration::from_millis(250), "closed after {idle:?}");
}

#[tokio::test]
async fn upgrade_refused_by_the_upstream_is_an_ordinary_response() {
    let up = Upstream::start_with("up", Mode::Status(400)).await;
    let proxy = Proxy::start(&one_route(&[up.addr()])).await;

    let err = connect_async(format!("ws://{}/ws", proxy.addr()))
        .await
        .expect_err("no tunnel without a 101");

    match err {
        tokio_tungstenite::tungstenite::Error::Http(rsp) => assert_eq!(rsp.status(), 400),
        other => panic!("expected the upstream's 400, got {other:?}"),
    }
    let seen = up.last();
    assert_eq!(seen.header("upgrade"), Some("websocket"));
    assert!(seen.has("sec-websocket-key"));
}
