//! Graceful shutdown: `/ready` turns 503 for `drain_delay`, the listeners then stop accepting,
//! in-flight requests (HTTP/1 and HTTP/2) finish whole, and the binary exits 0 on SIGTERM.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use support::{
    Mode, Proxy, STEP, Upstream, client, get,
    h2raw::{H2Conn, Outcome, get_fields},
    one_route,
    process::Palisade,
    send,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_flight_requests_complete_and_new_connections_are_refused() {
    let up = Upstream::start_with("up", Mode::Slow(Duration::from_millis(1000))).await;
    let mut proxy = Proxy::start(&one_route(&[up.addr()])).await;
    let addr = proxy.addr();
    let c = client();
    let in_flight: Vec<_> = (0..5)
        .map(|i| tokio::spawn(send(c.get(proxy.url(&format!("/work/{i}"))))))
        .collect();
    up.wait_hits(5).await;

    let shutdown = tokio::spawn(proxy.take_running().shutdown());
    support::eventually("new connections to be refused", STEP, || async {
        tokio::net::TcpStream::connect(addr).await.is_err()
    })
    .await;
    assert!(
        in_flight.iter().any(|h| !h.is_finished()),
        "the listener should close while requests are still in flight"
    );

    for (i, h) in in_flight.into_iter().enumerate() {
        let r = h.await.unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.json()["target"], format!("/work/{i}"), "complete body");
    }
    support::within("shutdown to finish", STEP, shutdown)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_is_503_during_drain_delay_while_traffic_is_still_served() {
    let up = Upstream::start("up").await;
    let mut proxy = Proxy::start(&format!(
        "[shutdown]\ndrain_delay = \"1s\"\n{}",
        one_route(&[up.addr()])
    ))
    .await;
    assert_eq!(proxy.admin_get("/ready").await.status, 200);

    let shutdown = tokio::spawn(proxy.take_running().shutdown());
    support::eventually("/ready to answer 503", STEP, || async {
        proxy.admin_get("/ready").await.status == 503
    })
    .await;
    let info = proxy.admin_json("/server_info").await;
    let served = get(&proxy.url("/during-drain")).await;

    assert_eq!(info["state"], "draining");
    assert!(!shutdown.is_finished(), "drain_delay is 1s");
    assert_eq!(served.status, 200, "traffic is served during drain_delay");
    assert_eq!(proxy.admin_get("/healthz").await.status, 200);
    support::within("shutdown to finish", STEP, shutdown)
        .await
        .unwrap();
}

// Row 46.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_connection_gets_goaway_and_its_stream_still_completes() {
    let up = Upstream::start_with("up", Mode::Slow(Duration::from_millis(500))).await;
    let mut proxy = Proxy::start(&one_route(&[up.addr()])).await;
    let authority = proxy.addr().to_string();
    let mut c = H2Conn::connect(proxy.addr()).await;
    c.headers(1, &get_fields(&authority, "/h2-drain"), true)
        .await;
    up.wait_hits(1).await;

    let shutdown = tokio::spawn(proxy.take_running().shutdown());
    let goaway = c.goaway().await;
    let outcome = c.outcome(1).await;
    let (body, complete) = c.body(1).await;

    assert_eq!(goaway, Some(0), "GOAWAY with NO_ERROR");
    assert_eq!(outcome, Outcome::Response(Some(200)));
    assert!(complete, "the in-flight stream ended cleanly");
    assert!(String::from_utf8_lossy(&body).contains("/h2-drain"));
    support::within("shutdown to finish", STEP, shutdown)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_and_exits_zero() {
    let up = Upstream::start("up").await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("palisade.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[admin]
listen = "127.0.0.1:0"
[log]
format = "json"
[access_log]
enabled = false
[shutdown]
drain_delay = "0s"
[listeners.web]
listen = "127.0.0.1:0"
{}"#,
            one_route(&[up.addr()])
        ),
    )
    .unwrap();
    let mut p = Palisade::spawn(&["-c", config.to_str().unwrap()], dir.path());
    let web: std::net::SocketAddr = tokio::task::block_in_place(|| {
        p.wait_for(STEP, |_, line| {
            let v: serde_json::Value = serde_json::from_str(line).ok()?;
            let f = &v["fields"];
            (f["message"] == "listening" && f["listener"] == "web")
                .then(|| f["address"].as_str()?.parse().ok())
                .flatten()
        })
    });
    assert_eq!(get(&format!("http://{web}/")).await.status, 200);

    p.terminate();
    let status = tokio::task::block_in_place(|| p.wait_exit(STEP));

    assert_eq!(status.code(), Some(0), "{:?}", p.seen);
}
