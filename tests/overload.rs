//! Staying up under overload and abuse, black-box: rate limits (local, shared through a real
//! `redis-server`, degraded when it dies, shared again when it returns, dry run), `/limits`,
//! client networks, per-client connection caps, body size and rate, slow readers, requests per
//! connection, priority shedding and adaptive concurrency.
//!
//! Every wait is a bounded poll on a condition, never a bare sleep. Metrics are process-wide, so a
//! test that reads them names its policy or cluster uniquely.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::{
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use support::{
    EchoServer, Mode, Proxy, RawConn, Upstream, client, eventually, get, get_with, raw::Fate,
    redis::RedisServer, send,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// One route `r` (extra route keys in `route`) to one cluster `up`, plus any other tables.
fn config(up: SocketAddr, route: &str, rest: &str) -> String {
    format!(
        r#"
{rest}

[[routes]]
name = "r"
cluster = "up"
match = {{ path_prefix = "/" }}
{route}

[clusters.up]
endpoints = ["{up}"]
"#
    )
}

fn policy(name: &str, extra: &str) -> String {
    format!("[[rate_limits]]\nname = \"{name}\"\n{extra}\n")
}

// ---- rate limits ----

#[tokio::test]
async fn a_local_limit_answers_429_with_retry_after_and_ratelimit_headers() {
    let up = EchoServer::start("up").await;
    let proxy = Proxy::start(&config(
        up.addr(),
        r#"rate_limits = ["per-key"]"#,
        &policy(
            "per-key",
            "key = [\"header:x-api-key\"]\nrate = \"2/m\"\nburst = 2",
        ),
    ))
    .await;
    let url = proxy.url("/x");
    for _ in 0..2 {
        assert_eq!(get_with(&url, &[("x-api-key", "alpha")]).await.status, 200);
    }
    let limited = get_with(&url, &[("x-api-key", "alpha")]).await;
    assert_eq!(limited.status, 429, "{}", limited.text());
    let retry: u64 = limited.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=30).contains(&retry), "retry-after {retry}");
    assert_eq!(
        limited.header("ratelimit-policy"),
        Some("\"per-key\";q=2;w=60")
    );
    assert!(
        limited
            .header("ratelimit")
            .unwrap()
            .starts_with("\"per-key\";r=0;t="),
        "{:?}",
        limited.header("ratelimit")
    );
    // Another key has its own budget, and the refused requests never reached the upstream.
    assert_eq!(get_with(&url, &[("x-api-key", "beta")]).await.status, 200);
    assert_eq!(up.hits(), 3, "the upstream saw only the admitted requests");

    let limits = proxy.admin_json("/limits").await;
    let p = &limits["rate_limits"][0];
    assert_eq!(p["name"], "per-key");
    assert_eq!(p["mode"], "local");
    assert_eq!(p["most_limited"][0]["key"], "x-api-key=alph…");
    assert_eq!(p["most_limited"][0]["limited"], 1);
}

#[tokio::test]
async fn a_dry_run_limit_counts_but_refuses_nothing() {
    let up = EchoServer::start("up").await;
    let proxy = Proxy::start(&config(
        up.addr(),
        r#"rate_limits = ["dry-run-policy"]"#,
        &policy(
            "dry-run-policy",
            "key = [\"client_ip\"]\nrate = \"1/h\"\nburst = 1\ndry_run = true",
        ),
    ))
    .await;
    for _ in 0..4 {
        assert_eq!(get(&proxy.url("/")).await.status, 200);
    }
    let metrics = proxy.admin_get("/metrics").await.text();
    let line = metrics
        .lines()
        .find(|l| {
            l.starts_with("palisade_ratelimit_decisions_total")
                && l.contains("policy=\"dry-run-policy\"")
                && l.contains("result=\"dry_run\"")
        })
        .unwrap_or_else(|| panic!("no dry_run count:\n{metrics}"));
    assert!(line.ends_with(" 3"), "{line}");
}

/// Sends `n` requests with `key`, alternating between the proxies; returns (admitted, limited)
/// and panics on any other status.
async fn offer(proxies: &[&Proxy], key: &str, n: usize) -> (usize, usize) {
    let c = client();
    let (mut ok, mut limited) = (0, 0);
    for i in 0..n {
        let p = proxies[i % proxies.len()];
        let r = send(c.get(p.url("/")).header("x-api-key", key)).await;
        match r.status {
            200 => ok += 1,
            429 => limited += 1,
            s => panic!("status {s}: {}", r.text()),
        }
    }
    (ok, limited)
}

fn shared_config(up: SocketAddr, redis: &str, name: &str) -> String {
    config(
        up,
        &format!("rate_limits = [\"{name}\"]"),
        &format!(
            "[redis]\nurl = \"{redis}\"\ntimeout = \"200ms\"\ninstance_ttl = \"1s\"\n{}",
            policy(
                name,
                "key = [\"header:x-api-key\"]\nrate = \"10/h\"\nburst = 10\nscope = \"shared\"\non_store_failure = \"local\""
            )
        ),
    )
}

async fn mode(proxy: &Proxy) -> String {
    proxy.admin_json("/limits").await["rate_limits"][0]["mode"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

#[tokio::test]
async fn a_shared_limit_is_one_budget_for_two_instances_and_degrades_when_redis_dies() {
    let mut redis = RedisServer::start();
    let up = EchoServer::start("up").await;
    let a = Proxy::start(&shared_config(up.addr(), &redis.url(), "fleet")).await;
    let b = Proxy::start(&shared_config(up.addr(), &redis.url(), "fleet")).await;
    for p in [&a, &b] {
        eventually("the store is up", Duration::from_secs(5), || async {
            mode(p).await == "shared"
        })
        .await;
    }
    for p in [&a, &b] {
        eventually(
            "each instance sees both",
            Duration::from_secs(5),
            || async { p.admin_json("/limits").await["store"]["live_instances"] == 2 },
        )
        .await;
    }
    // One budget of 10 across both instances, not 10 each.
    let (ok, limited) = offer(&[&a, &b], "k1", 30).await;
    assert_eq!((ok, limited), (10, 20));

    // Redis dies: both keep serving, each with its share (10 / 2 instances = 5) of a fresh key.
    redis.stop();
    let (ok, limited) = offer(&[&a, &b], "k2", 30).await;
    assert_eq!(ok + limited, 30);
    assert!((8..=12).contains(&ok), "degraded admitted {ok}");
    assert_eq!(mode(&a).await, "degraded");

    // Redis returns: shared counting resumes (within 5 s).
    redis.restart();
    for p in [&a, &b] {
        eventually(
            "shared counting resumes",
            Duration::from_secs(5),
            || async {
                offer(&[p], "probe", 1).await;
                mode(p).await == "shared"
            },
        )
        .await;
    }
    let (ok, _) = offer(&[&a, &b], "k3", 30).await;
    assert_eq!(ok, 10);
}

// ---- client networks ----

#[tokio::test]
async fn a_denied_network_is_refused_by_the_route_and_at_accept() {
    let up = EchoServer::start("up").await;
    let proxy = Proxy::start(&config(up.addr(), r#"deny = ["127.0.0.0/8"]"#, "")).await;
    let r = get(&proxy.url("/")).await;
    assert_eq!(r.status, 403);
    assert_eq!(up.hits(), 0);

    let proxy = Proxy::start(&config(
        up.addr(),
        "",
        "[listeners.web]\nallow = [\"10.0.0.0/8\"]",
    ))
    .await;
    let mut conn = RawConn::connect(proxy.addr()).await;
    conn.send_lossy(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n").await;
    assert!(matches!(conn.fate(support::STEP).await, Fate::Closed));
    assert_eq!(up.hits(), 0);
}

#[tokio::test]
async fn a_client_over_its_connection_cap_is_cut_at_accept() {
    let up = EchoServer::start("up").await;
    let proxy = Proxy::start(&config(
        up.addr(),
        "",
        "[listeners.web]\nmax_connections_per_ip = 2",
    ))
    .await;
    let mut first = RawConn::connect(proxy.addr()).await;
    let mut second = RawConn::connect(proxy.addr()).await;
    for c in [&mut first, &mut second] {
        c.send(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n").await;
        assert_eq!(c.read_response().await.status, 200);
    }
    let mut third = RawConn::connect(proxy.addr()).await;
    third.send_lossy(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n").await;
    assert!(matches!(third.fate(support::STEP).await, Fate::Closed));
    // A place frees when a connection closes.
    drop(first);
    eventually("a place is free again", support::STEP, || async {
        let mut c = RawConn::connect(proxy.addr()).await;
        c.send_lossy(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n").await;
        c.try_read_response("GET")
            .await
            .is_ok_and(|r| r.status == 200)
    })
    .await;
}

#[tokio::test]
async fn a_client_opening_connections_too_fast_is_cut_and_so_is_one_over_the_global_cap() {
    let up = EchoServer::start("up").await;
    // Three new connections per hour from one client: the fourth is refused at accept.
    let proxy = Proxy::start(&config(
        up.addr(),
        "",
        "[listeners.web]\nconnection_rate_per_ip = \"3/h\"",
    ))
    .await;
    for _ in 0..3 {
        let mut c = RawConn::connect(proxy.addr()).await;
        c.send(b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            .await;
        assert_eq!(c.read_response().await.status, 200);
    }
    let mut fourth = RawConn::connect(proxy.addr()).await;
    fourth
        .send_lossy(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        .await;
    assert!(matches!(fourth.fate(support::STEP).await, Fate::Closed));

    // overload.max_connections counts every listener's connections together.
    let proxy = Proxy::start(&config(up.addr(), "", "[overload]\nmax_connections = 1")).await;
    let mut first = RawConn::connect(proxy.addr()).await;
    first.send(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n").await;
    assert_eq!(first.read_response().await.status, 200);
    let mut second = RawConn::connect(proxy.addr()).await;
    second
        .send_lossy(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        .await;
    assert!(matches!(second.fate(support::STEP).await, Fate::Closed));
    let metrics = proxy.admin_get("/metrics").await.text();
    for reason in ["per_ip_rate", "max_connections"] {
        assert!(
            metrics
                .lines()
                .any(|l| l.starts_with("palisade_connections_refused_total")
                    && l.contains(&format!("reason=\"{reason}\""))),
            "{reason}: {metrics}"
        );
    }
}

// ---- bodies, slow clients, connection reuse ----

#[tokio::test]
async fn a_body_over_the_limit_gets_413_by_length_or_while_streaming() {
    let up = EchoServer::start("up").await;
    let proxy = Proxy::start(&config(
        up.addr(),
        "",
        "[listeners.web]\nmax_request_body_bytes = 100",
    ))
    .await;
    let ok = send(client().post(proxy.url("/")).body(vec![b'a'; 100])).await;
    assert_eq!(ok.status, 200);
    let big = send(client().post(proxy.url("/")).body(vec![b'a'; 101])).await;
    assert_eq!(big.status, 413);
    assert_eq!(up.hits(), 1);

    // Chunked, so the size is known only as it streams.
    let mut conn = RawConn::connect(proxy.addr()).await;
    conn.send(b"POST / HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n64\r\n")
        .await;
    conn.send(&[b'a'; 100]).await;
    conn.send(b"\r\n64\r\n").await;
    conn.send_lossy(&[b'a'; 100]).await;
    conn.send_lossy(b"\r\n0\r\n\r\n").await;
    let r = conn.read_response_for("POST").await;
    assert_eq!(r.status, 413);
    assert_eq!(r.header("connection"), Some("close"));
}

#[tokio::test]
async fn a_body_slower_than_the_minimum_rate_gets_408() {
    let up = EchoServer::start("up").await;
    let proxy = Proxy::start(&config(
        up.addr(),
        "",
        "[listeners.web]\nrequest_body_timeout = \"300ms\"\nrequest_body_min_rate = 1000",
    ))
    .await;
    let mut conn = RawConn::connect(proxy.addr()).await;
    conn.send(b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 100000\r\n\r\n")
        .await;
    // A byte every 100 ms: never idle for the 300 ms timeout, but 10 B/s against 1000 B/s.
    let started = Instant::now();
    let response = loop {
        if !conn.send_lossy(b"a").await {
            break conn.read_response_for("POST").await;
        }
        if let Ok(r) =
            tokio::time::timeout(Duration::from_millis(100), conn.read_response_for("POST")).await
        {
            break r;
        }
        assert!(
            started.elapsed() < support::STEP,
            "no answer to a slow body"
        );
    };
    assert_eq!(response.status, 408);
}

#[tokio::test]
async fn a_connection_closes_after_its_max_requests() {
    let up = EchoServer::start("up").await;
    let proxy = Proxy::start(&config(
        up.addr(),
        "",
        "[listeners.web]\nmax_requests_per_connection = 3",
    ))
    .await;
    let mut conn = RawConn::connect(proxy.addr()).await;
    for i in 1..=3 {
        conn.send(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n").await;
        let r = conn.read_response().await;
        assert_eq!(r.status, 200);
        assert_eq!(
            r.header("connection") == Some("close"),
            i == 3,
            "request {i}"
        );
    }
    conn.expect_closed().await;
}

#[tokio::test]
async fn a_client_that_never_reads_is_cut_after_the_write_timeout() {
    // 8 MiB responses: far more than the socket buffers hold.
    let up = Upstream::start_with(
        "big",
        Mode::Raw(
            [
                b"HTTP/1.1 200 OK\r\ncontent-length: 8388608\r\n\r\n".to_vec(),
                vec![b'x'; 8 << 20],
            ]
            .concat(),
        ),
    )
    .await;
    let proxy = Proxy::start(&config(
        up.addr(),
        "",
        "[listeners.web]\nwrite_timeout = \"300ms\"",
    ))
    .await;
    let mut stream = tokio::net::TcpStream::connect(proxy.addr()).await.unwrap();
    stream
        .write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let metric = || async {
        proxy
            .admin_get("/metrics")
            .await
            .text()
            .lines()
            .any(|l| l.starts_with("palisade_write_timeouts_total") && !l.ends_with(" 0"))
    };
    eventually("the stalled write times out", support::STEP, metric).await;
    // Reading now finds the connection cut before the whole response.
    let mut got = Vec::new();
    let read = tokio::time::timeout(support::STEP, stream.read_to_end(&mut got)).await;
    assert!(read.is_ok(), "the connection was not closed");
    assert!(got.len() < 8 << 20, "the whole response arrived");
}

// ---- shedding ----

#[tokio::test]
async fn under_pressure_sheddable_goes_first_and_critical_last() {
    let up = Upstream::start_with("hang", Mode::Hang).await;
    let text = format!(
        r#"
[overload]
max_in_flight = 10
shed_sheddable_percent = 50
shed_normal_percent = 80

[[routes]]
name = "batch"
cluster = "up"
priority = "sheddable"
match = {{ path_prefix = "/batch" }}

[[routes]]
name = "pay"
cluster = "up"
priority = "critical"
match = {{ path_prefix = "/pay" }}

[[routes]]
name = "web"
cluster = "up"
match = {{ path_prefix = "/" }}
timeout = "60s"

[clusters.up]
endpoints = ["{}"]
"#,
        up.addr()
    );
    let proxy = Arc::new(Proxy::start(&text).await);
    // Five requests hang upstream: 50% of max_in_flight.
    let mut held = Vec::new();
    for _ in 0..5 {
        let url = proxy.url("/web");
        held.push(tokio::spawn(async move {
            let _ = client().get(url).send().await;
        }));
    }
    eventually("five requests in flight", support::STEP, || async {
        proxy.admin_json("/limits").await["overload"]["in_flight"] == 5
    })
    .await;
    let batch = get(&proxy.url("/batch")).await;
    assert_eq!(batch.status, 503);
    assert!(batch.header("retry-after").is_some());
    // Normal and critical still get through (to the hanging upstream: they count in flight).
    for path in ["/web", "/web", "/web", "/pay", "/pay"] {
        let url = proxy.url(path);
        held.push(tokio::spawn(async move {
            let _ = client().get(url).send().await;
        }));
    }
    eventually("ten requests in flight", support::STEP, || async {
        proxy.admin_json("/limits").await["overload"]["in_flight"] == 10
    })
    .await;
    assert_eq!(get(&proxy.url("/web")).await.status, 503);
    assert_eq!(get(&proxy.url("/pay")).await.status, 503);
    let metrics = proxy.admin_get("/metrics").await.text();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("palisade_shed_total") && l.contains("priority=\"sheddable\"")),
        "{metrics}"
    );
    for h in held {
        h.abort();
    }
}

#[tokio::test]
async fn adaptive_concurrency_queues_then_refuses_fast() {
    let up = Upstream::start_with("slow", Mode::Hang).await;
    let proxy = Arc::new(
        Proxy::start(&format!(
            "{}\n[clusters.up.adaptive_concurrency]\nmin_limit = 2\ninitial_limit = 2\nmax_limit = 10\nmax_queue = 1\nqueue_timeout = \"10s\"\n",
            config(up.addr(), "timeout = \"60s\"", "")
        ))
        .await,
    );
    let mut held = Vec::new();
    for _ in 0..3 {
        let url = proxy.url("/");
        held.push(tokio::spawn(async move {
            let _ = client().get(url).send().await;
        }));
    }
    eventually("two in flight and one queued", support::STEP, || async {
        let l = proxy.admin_json("/limits").await;
        let a = &l["adaptive_concurrency"][0];
        a["in_flight"] == 2 && a["queued"] == 1
    })
    .await;
    // The queue is full: refused at once, never waiting for the queue timeout.
    let started = Instant::now();
    let r = get(&proxy.url("/")).await;
    assert_eq!(r.status, 503);
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(up.hits(), 2);
    for h in held {
        h.abort();
    }
}

// ---- HTTP/2 floods, through Palisade's own listener ----

#[tokio::test]
async fn an_http2_ping_flood_gets_goaway_enhance_your_calm_and_a_normal_client_is_served() {
    use support::h2raw::{H2Conn, PING, get_fields};
    let up = EchoServer::start("up").await;
    let proxy = Proxy::start(&config(up.addr(), "", "")).await;
    let authority = proxy.addr().to_string();

    // A client that asks for something and pings now and then is served.
    let mut good = H2Conn::connect(proxy.addr()).await;
    good.headers(1, &get_fields(&authority, "/"), true).await;
    good.write_frame(PING, 0, 0, &1u64.to_be_bytes()).await;
    assert!(matches!(
        good.outcome(1).await,
        support::h2raw::Outcome::Response(Some(200))
    ));

    let mut flood = H2Conn::connect(proxy.addr()).await;
    for i in 0..500u64 {
        flood.write_frame(PING, 0, 0, &i.to_be_bytes()).await;
    }
    assert_eq!(flood.goaway().await, Some(0xb), "GOAWAY ENHANCE_YOUR_CALM");
    let metrics = proxy.admin_get("/metrics").await.text();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("palisade_h2_floods_total") && l.contains("reason=\"ping\"")),
        "{metrics}"
    );
}
