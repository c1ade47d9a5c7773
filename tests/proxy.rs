//! The proxying core, black-box: bodies, balancing, routing, rewrites, forwarding headers,
//! hop-by-hop hygiene, error bodies, bodyless responses, `Expect`, loops.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::{collections::HashMap, sync::Arc};

use support::{
    EchoServer, Mode, Proxy, STEP, Upstream, client, get, get_with, one_route, one_route_with,
    raw::RawConn, refused_addr, send,
};

/// A proxy whose clusters are named after the given upstreams (`[clusters.<name>]`, one endpoint
/// each), with the routes given.
async fn routed(routes: &str, names: &[&str]) -> (Proxy, HashMap<String, Upstream>) {
    let mut ups = HashMap::new();
    let mut toml = routes.to_owned();
    for n in names {
        let u = Upstream::start(n).await;
        toml.push_str(&format!(
            "\n[clusters.{n}]\nendpoints = [\"{}\"]\n",
            u.addr()
        ));
        ups.insert((*n).to_owned(), u);
    }
    (Proxy::start(&toml).await, ups)
}

/// Which upstream answers a GET of `path` with these headers.
async fn who(proxy: &Proxy, path: &str, headers: &[(&str, &str)]) -> String {
    let r = get_with(&proxy.url(path), headers).await;
    if r.status != 200 {
        return format!("status {}", r.status);
    }
    r.upstream().to_owned()
}

#[tokio::test]
async fn get_is_proxied_and_the_upstream_sees_method_path_and_query() {
    let up = Upstream::start("a").await;
    let proxy = Proxy::start(&one_route(&[up.addr()])).await;

    let r = get(&proxy.url("/hello/world?x=1&y=two")).await;

    assert_eq!(r.status, 200);
    assert_eq!(r.upstream(), "a");
    let body = r.json();
    assert_eq!(body["method"], "GET");
    assert_eq!(body["target"], "/hello/world?x=1&y=two");
    assert_eq!(up.hits(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_post_body_is_echoed_back_intact() {
    let echo = EchoServer::start("echo").await;
    let proxy = Proxy::start(&one_route(&[echo.addr()])).await;
    let body: Vec<u8> = (0..8 * 1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();

    let r = send(client().post(proxy.url("/echo")).body(body.clone())).await;

    assert_eq!(r.status, 200);
    assert_eq!(r.body.len(), body.len(), "echoed length");
    assert!(r.body[..] == body[..], "echoed bytes differ");
    assert_eq!(echo.body_bytes(), body.len() as u64);
}

#[tokio::test]
async fn response_body_streams_to_the_client_before_the_upstream_finishes() {
    let gate = Arc::new(tokio::sync::Notify::new());
    let up = Upstream::start_with("a", Mode::Gate(Arc::clone(&gate))).await;
    let proxy = Proxy::start(&one_route(&[up.addr()])).await;

    let mut rsp = client().get(proxy.url("/")).send().await.unwrap();
    assert_eq!(rsp.status(), 200);
    let first = support::within(
        "the first chunk while the upstream holds the rest",
        STEP,
        rsp.chunk(),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(&first[..], b"first");
    gate.notify_one();
    let mut rest = Vec::new();
    while let Some(c) = rsp.chunk().await.unwrap() {
        rest.extend_from_slice(&c);
    }
    assert_eq!(rest, b"second");
}

#[tokio::test]
async fn request_body_streams_to_the_upstream_before_the_client_finishes() {
    let echo = EchoServer::start("echo").await;
    let proxy = Proxy::start(&one_route(&[echo.addr()])).await;

    let mut c = RawConn::connect(proxy.addr()).await;
    c.send(b"POST /echo HTTP/1.1\r\nhost: a.test\r\ncontent-length: 10\r\n\r\nhello")
        .await;
    support::eventually(
        "the upstream to receive the first half of the body",
        STEP,
        || async { echo.body_bytes() >= 5 },
    )
    .await;
    c.send(b"world").await;
    let r = c.read_response().await;

    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "helloworld");
}

#[tokio::test]
async fn round_robin_spreads_requests_evenly_over_three_endpoints() {
    let ups = [
        Upstream::start("a").await,
        Upstream::start("b").await,
        Upstream::start("c").await,
    ];
    let addrs: Vec<_> = ups.iter().map(Upstream::addr).collect();
    let proxy = Proxy::start(&one_route_with(&addrs, "balance = \"round_robin\"")).await;

    for _ in 0..30 {
        assert_eq!(get(&proxy.url("/")).await.status, 200);
    }

    let hits: Vec<usize> = ups.iter().map(Upstream::hits).collect();
    assert_eq!(hits, vec![10, 10, 10]);
}

#[tokio::test]
async fn weighted_endpoints_receive_traffic_in_proportion_to_their_weights() {
    let heavy = Upstream::start("heavy").await;
    let light = Upstream::start("light").await;
    let proxy = Proxy::start(&format!(
        r#"
[[routes]]
name = "all"
cluster = "up"
[routes.match]
path_prefix = "/"

[clusters.up]
balance = "round_robin"
endpoints = [{{ address = "{}", weight = 2 }}, {{ address = "{}", weight = 1 }}]
"#,
        heavy.addr(),
        light.addr()
    ))
    .await;

    for _ in 0..30 {
        assert_eq!(get(&proxy.url("/")).await.status, 200);
    }

    assert_eq!((heavy.hits(), light.hits()), (20, 10));
}

const HOST_ROUTES: &str = r#"
[[routes]]
name = "exact"
cluster = "api"
[routes.match]
host = "api.example.test"

[[routes]]
name = "wildcard"
cluster = "wild"
[routes.match]
host = "*.example.test"

[[routes]]
name = "default"
cluster = "fallback"
[routes.match]
path_prefix = "/"
"#;

#[tokio::test]
async fn routes_match_exact_hosts_ignoring_port_and_case() {
    let (proxy, _ups) = routed(HOST_ROUTES, &["api", "wild", "fallback"]).await;

    assert_eq!(
        who(&proxy, "/", &[("host", "api.example.test")]).await,
        "api"
    );
    assert_eq!(
        who(&proxy, "/", &[("host", "api.example.test:8080")]).await,
        "api"
    );
    assert_eq!(
        who(&proxy, "/", &[("host", "API.Example.TEST")]).await,
        "api"
    );
    assert_eq!(
        who(&proxy, "/", &[("host", "other.test")]).await,
        "fallback"
    );
}

#[tokio::test]
async fn routes_match_one_label_wildcard_hosts() {
    let (proxy, _ups) = routed(HOST_ROUTES, &["api", "wild", "fallback"]).await;

    assert_eq!(
        who(&proxy, "/", &[("host", "www.example.test")]).await,
        "wild"
    );
    assert_eq!(
        who(&proxy, "/", &[("host", "www.example.test:81")]).await,
        "wild"
    );
    // One label only, and the bare domain is not a subdomain of itself.
    assert_eq!(
        who(&proxy, "/", &[("host", "a.b.example.test")]).await,
        "fallback"
    );
    assert_eq!(
        who(&proxy, "/", &[("host", "example.test")]).await,
        "fallback"
    );
    assert_eq!(
        who(&proxy, "/", &[("host", "wwwexample.test")]).await,
        "fallback"
    );
}

#[tokio::test]
async fn routes_match_exact_prefix_and_anchored_regex_paths() {
    let (proxy, _ups) = routed(
        r#"
[[routes]]
name = "exact"
cluster = "exact"
[routes.match]
path = "/exact"

[[routes]]
name = "prefix"
cluster = "prefix"
[routes.match]
path_prefix = "/pre/"

[[routes]]
name = "regex"
cluster = "regex"
[routes.match]
path_regex = "/items/[0-9]+"

[[routes]]
name = "default"
cluster = "fallback"
[routes.match]
path_prefix = "/"
"#,
        &["exact", "prefix", "regex", "fallback"],
    )
    .await;

    assert_eq!(who(&proxy, "/exact", &[]).await, "exact");
    assert_eq!(who(&proxy, "/exact?q=1", &[]).await, "exact");
    assert_eq!(who(&proxy, "/exact/more", &[]).await, "fallback");
    assert_eq!(who(&proxy, "/pre/x/y", &[]).await, "prefix");
    assert_eq!(who(&proxy, "/items/42", &[]).await, "regex");
    assert_eq!(who(&proxy, "/items/42/x", &[]).await, "fallback");
    assert_eq!(who(&proxy, "/x/items/42", &[]).await, "fallback");
    assert_eq!(who(&proxy, "/items/abc", &[]).await, "fallback");
}

#[tokio::test]
async fn routes_match_methods_and_headers_and_the_first_match_wins() {
    let (proxy, _ups) = routed(
        r#"
[[routes]]
name = "writes"
cluster = "writes"
[routes.match]
path_prefix = "/"
methods = ["POST", "PUT"]

[[routes]]
name = "blue"
cluster = "blue"
[routes.match]
path_prefix = "/"
headers = [{ name = "x-tenant", value = "blue" }]

[[routes]]
name = "debug"
cluster = "debug"
[routes.match]
path_prefix = "/"
headers = [{ name = "x-debug", present = true }]

[[routes]]
name = "curl"
cluster = "curl"
[routes.match]
path_prefix = "/"
headers = [{ name = "user-agent", regex = "curl/.*" }]

[[routes]]
name = "default"
cluster = "fallback"
[routes.match]
path_prefix = "/"
"#,
        &["writes", "blue", "debug", "curl", "fallback"],
    )
    .await;

    let post = send(client().post(proxy.url("/")).body("x")).await;
    assert_eq!(post.upstream(), "writes");
    let put = send(client().put(proxy.url("/")).body("x")).await;
    assert_eq!(put.upstream(), "writes");
    assert_eq!(who(&proxy, "/", &[]).await, "fallback");
    assert_eq!(who(&proxy, "/", &[("x-tenant", "blue")]).await, "blue");
    assert_eq!(who(&proxy, "/", &[("x-tenant", "green")]).await, "fallback");
    assert_eq!(who(&proxy, "/", &[("x-debug", "")]).await, "debug");
    assert_eq!(
        who(&proxy, "/", &[("user-agent", "curl/8.5")]).await,
        "curl"
    );
    assert_eq!(
        who(&proxy, "/", &[("user-agent", "xcurl/8.5")]).await,
        "fallback"
    );
    // Both `blue` and `debug` match: the earlier route wins.
    assert_eq!(
        who(&proxy, "/", &[("x-tenant", "blue"), ("x-debug", "1")]).await,
        "blue"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn split_route_divides_traffic_between_clusters_by_weight() {
    let (proxy, ups) = routed(
        r#"
[[routes]]
name = "canary"
split = [{ cluster = "stable", weight = 3 }, { cluster = "canary", weight = 1 }]
[routes.match]
path_prefix = "/"
"#,
        &["stable", "canary"],
    )
    .await;

    let c = client();
    for _ in 0..200 {
        assert_eq!(send(c.get(proxy.url("/"))).await.status, 200);
    }

    let canary = ups["canary"].hits();
    assert_eq!(ups["stable"].hits() + canary, 200);
    // Expected 50 (σ ≈ 6): far outside either bound means the weights are not honoured.
    assert!((20..=80).contains(&canary), "canary got {canary} of 200");
}

#[tokio::test]
async fn no_route_is_404_naming_the_reason_and_the_request_id() {
    let (proxy, ups) = routed(
        r#"
[[routes]]
name = "only"
cluster = "only"
[routes.match]
host = "only.test"
"#,
        &["only"],
    )
    .await;

    let r = get_with(&proxy.url("/"), &[("host", "elsewhere.test")]).await;

    assert_eq!(r.status, 404);
    let id = r
        .header("x-request-id")
        .expect("request id header")
        .to_owned();
    let text = r.text();
    assert!(text.contains("no route"), "{text}");
    assert!(text.contains(&id), "body names the request id {id}: {text}");
    assert_eq!(ups["only"].hits(), 0);
}

#[tokio::test]
async fn strip_prefix_removes_the_route_prefix_and_keeps_the_query() {
    let up = Upstream::start("api").await;
    let proxy = Proxy::start(&format!(
        r#"
[[routes]]
name = "api"
cluster = "api"
strip_prefix = "/api"
[routes.match]
path_prefix = "/api/"

[clusters.api]
endpoints = ["{}"]
"#,
        up.addr()
    ))
    .await;

    let r = get(&proxy.url("/api/users/7?full=1")).await;

    assert_eq!(r.status, 200);
    assert_eq!(up.last().target, "/users/7?full=1");
}

#[tokio::test]
async fn route_rewrites_request_headers_response_headers_and_host() {
    let up = Upstream::start("up").await;
    let proxy = Proxy::start(&format!(
        r#"
[[routes]]
name = "rw"
cluster = "up"
host_rewrite = "internal.test"
[routes.match]
path_prefix = "/"
[routes.request_headers]
set = {{ "x-set" = "proxy" }}
add = {{ "x-add" = "proxy" }}
remove = ["x-remove"]
[routes.response_headers]
set = {{ "x-resp-set" = "proxy" }}
add = {{ "x-resp-add" = "proxy" }}
remove = ["x-resp-remove"]

[clusters.up]
endpoints = ["{}"]
"#,
        up.addr()
    ))
    .await;
    up.set_mode(Mode::Raw(
        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nx-resp-set: upstream\r\nx-resp-add: upstream\r\nx-resp-remove: secret\r\n\r\nok"
            .to_vec(),
    ));

    let mut c = RawConn::connect(proxy.addr()).await;
    c.send(b"GET / HTTP/1.1\r\nhost: public.test\r\nx-set: client\r\nx-add: client\r\nx-remove: client\r\n\r\n")
        .await;
    let r = c.read_response().await;

    let seen = up.last();
    assert_eq!(seen.all("x-set"), vec!["proxy"]);
    assert_eq!(seen.all("x-add"), vec!["client", "proxy"]);
    assert!(!seen.has("x-remove"));
    assert_eq!(seen.header("host"), Some("internal.test"));
    assert_eq!(seen.header("x-forwarded-host"), Some("public.test"));

    assert_eq!(r.status, 200);
    let all = |n: &str| -> Vec<String> {
        r.headers
            .iter()
            .filter(|(k, _)| k == n)
            .map(|(_, v)| v.clone())
            .collect()
    };
    assert_eq!(all("x-resp-set"), vec!["proxy"]);
    assert_eq!(all("x-resp-add"), vec!["upstream", "proxy"]);
    assert!(!r.has("x-resp-remove"));
}

#[tokio::test]
async fn host_is_preserved_by_default() {
    let up = Upstream::start("a").await;
    let proxy = Proxy::start(&one_route(&[up.addr()])).await;

    get_with(&proxy.url("/"), &[("host", "Custom.Example.test:1234")]).await;

    assert_eq!(up.last().header("host"), Some("Custom.Example.test:1234"));
}

#[tokio::test]
async fn forwarding_headers_and_via_are_added_in_both_directions() {
    let up = Upstream::start("a").await;
    let proxy = Proxy::start(&format!(
        "[http]\nvia = \"palisade\"\n{}",
        one_route(&[up.addr()])
    ))
    .await;

    let r = get_with(&proxy.url("/"), &[("host", "site.test")]).await;

    let seen = up.last();
    assert_eq!(seen.header("x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(seen.header("x-forwarded-proto"), Some("http"));
    assert_eq!(seen.header("x-forwarded-host"), Some("site.test"));
    assert_eq!(seen.header("via"), Some("1.1 palisade"));
    let via = r.header("via").expect("Via on the response");
    assert!(via.contains("1.1 palisade"), "{via}");
}

#[tokio::test]
async fn default_via_pseudonym_names_palisade_and_detects_its_own_loops() {
    let up = Upstream::start("a").await;
    let proxy = Proxy::start(&one_route(&[up.addr()])).await;

    get(&proxy.url("/")).await;
    let via = up
        .last()
        .header("via")
        .expect("Via sent upstream")
        .to_owned();
    let looped = get_with(&proxy.url("/"), &[("via", via.as_str())]).await;

    assert!(via.starts_with("1.1 palisade"), "{via}");
    assert_eq!(looped.status, 508);
    assert_eq!(up.hits(), 1);
}

#[tokio::test]
async fn request_id_is_kept_when_sent_and_echoed_on_the_response() {
    let up = Upstream::start("a").await;
    let proxy = Proxy::start(&one_route(&[up.addr()])).await;

    let r = get_with(&proxy.url("/"), &[("x-request-id", "client-id-123")]).await;

    assert_eq!(up.last().header("x-request-id"), Some("client-id-123"));
    assert_eq!(r.header("x-request-id"), Some("client-id-123"));
}

#[tokio::test]
async fn request_id_is_generated_when_missing_and_echoed_on_the_response() {
    let up = Upstream::start("a").await;
    let proxy = Proxy::start(&one_route(&[up.addr()])).await;

    let r1 = get(&proxy.url("/")).await;
    let sent = up.last();
    let r2 = get(&proxy.url("/")).await;

    let id = r1.header("x-request-id").expect("generated id");
    assert_eq!(sent.header("x-request-id"), Some(id));
    assert!(
        id.len() >= 16 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'),
        "{id}"
    );
    assert_ne!(r2.header("x-request-id"), Some(id), "ids are unique");
}

#[tokio::test]
async fn spoofed_forwarding_headers_from_an_untrusted_peer_are_overwritten() {
    let up = Upstream::start("a").await;
    let proxy = Proxy::start(&one_route(&[up.addr()])).await;

    get_with(
        &proxy.url("/"),
        &[
            ("host", "real.test"),
            ("x-forwarded-for", "6.6.6.6"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "evil.test"),
        ],
    )
    .await;

    let seen = up.last();
    assert_eq!(seen.all("x-forwarded-for"), vec!["127.0.0.1"]);
    assert_eq!(seen.header("x-forwarded-proto"), Some("http"));
    assert_eq!(seen.header("x-forwarded-host"), Some("real.test"));
}

#[tokio::test]
async fn forwarding_headers_from_a_trusted_proxy_are_extended() {
    let up = Upstream::start("a").await;
    let proxy = Proxy::start(&format!(
        "[http]\ntrusted_proxies = [\"127.0.0.1/32\"]\n{}",
        one_route(&[up.addr()])
    ))
    .await;

    get_with(
        &proxy.url("/"),
        &[
            ("x-forwarded-for", "203.0.113.9"),
            ("x-forwarded-proto", "https"),
        ],
    )
    .await;

    let seen = up.last();
    assert_eq!(
        seen.header("x-forwarded-for"),
        Some("203.0.113.9, 127.0.0.1")
    );
    assert_eq!(seen.header("x-forwarded-proto"), Some("https"));
}

#[tokio::test]
async fn hop_by_hop_request_headers_never_reach_the_upstream() {
    let up = Upstream::start("a").await;
    let proxy = Proxy::start(&one_route(&[up.addr()])).await;

    let mut c = RawConn::connect(proxy.addr()).await;
    c.send(
        b"GET /hop HTTP/1.1\r\nhost: a.test\r\nconnection: keep-alive, X-Custom-Hop\r\nx-custom-hop: secret\r\n\
keep-alive: timeout=5\r\nte: trailers, deflate\r\nproxy-connection: keep-alive\r\nproxy-authorization: Basic Zm9vOmJhcg==\r\n\
x-normal: stays\r\n\r\n",
    )
    .await;
    assert_eq!(c.read_response().await.status, 200);

    let seen = up.last();
    for h in [
        "x-custom-hop",
        "keep-alive",
        "proxy-connection",
        "proxy-authorization",
    ] {
        assert!(!seen.has(h), "{h} reached the upstream: {:?}", seen.headers);
    }
    // TE is hop-by-hop: the client's codings stop here; Palisade sends only its own
    // `TE: trailers` (it relays trailers), because the client said it accepts them.
    assert_eq!(seen.header("te"), Some("trailers"), "{:?}", seen.headers);
    if let Some(conn) = seen.header("connection") {
        assert!(
            !conn.to_ascii_lowercase().contains("x-custom-hop"),
            "{conn}"
        );
    }
    assert_eq!(seen.header("x-normal"), Some("stays"));
}

#[tokio::test]
async fn hop_by_hop_response_headers_never_reach_the_client() {
    let up = Upstream::start_with(
        "a",
        Mode::Raw(
            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: x-up-hop\r\nx-up-hop: secret\r\n\
keep-alive: timeout=5\r\nproxy-connection: keep-alive\r\nte: trailers\r\nupgrade: h2c\r\nx-normal: stays\r\n\r\nok"
                .to_vec(),
        ),
    )
    .await;
    let proxy = Proxy::start(&one_route(&[up.addr()])).await;

    let mut c = RawConn::connect(proxy.addr()).await;
    c.send(b"GET / HTTP/1.1\r\nhost: a.test\r\n\r\n").await;
    let r = c.read_response().await;

    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "ok");
    for h in [
        "x-up-hop",
        "keep-alive",
        "proxy-connection",
        "te",
        "upgrade",
    ] {
        assert!(!r.has(h), "{h} reached the client: {:?}", r.headers);
    }
    if let Some(conn) = r.header("connection") {
        assert!(!conn.to_ascii_lowercase().contains("x-up-hop"), "{conn}");
    }
    assert_eq!(r.header("x-normal"), Some("stays"));
}

#[tokio::test]
async fn error_body_is_json_when_the_client_accepts_json() {
    let proxy = Proxy::start(&one_route(&[refused_addr()])).await;

    let r = get_with(&proxy.url("/"), &[("accept", "application/json")]).await;

    assert_eq!(r.status, 502);
    assert_eq!(r.header("content-type"), Some("application/json"));
    let v = r.json();
    assert_eq!(v["status"], 502);
    assert!(v["error"].as_str().is_some_and(|e| !e.is_empty()), "{v}");
    assert_eq!(
        v["request_id"].as_str(),
        r.header("x-request-id"),
        "the body names the request id"
    );
}

#[tokio::test]
async fn error_responses_never_reveal_a_backend_address() {
    let refused = refused_addr();
    let hang = Upstream::start_with("hang", Mode::Hang).await;
    let garbage = Upstream::start_with("garbage", Mode::Garbage).await;
    let reset = Upstream::start_with("reset", Mode::Reset).await;
    let proxy = Proxy::start(&format!(
        r#"
[[routes]]
name = "refused"
cluster = "refused"
[routes.match]
path = "/refused"

[[routes]]
name = "hang"
cluster = "hang"
timeout = "300ms"
[routes.match]
path = "/hang"

[[routes]]
name = "garbage"
cluster = "garbage"
[routes.match]
path = "/garbage"

[[routes]]
name = "reset"
cluster = "reset"
[routes.match]
path = "/reset"

[clusters.refused]
endpoints = ["{refused}"]
connect_timeout = "200ms"
[clusters.hang]
endpoints = ["{}"]
connect_timeout = "200ms"
[clusters.garbage]
endpoints = ["{}"]
[clusters.reset]
endpoints = ["{}"]
"#,
        hang.addr(),
        garbage.addr(),
        reset.addr()
    ))
    .await;
    let backends = [refused, hang.addr(), garbage.addr(), reset.addr()];

    for (path, statuses) in [
        // 503 once the only endpoint is ejected and a request reached none at all.
        ("/refused", &[502, 503][..]),
        ("/hang", &[504][..]),
        ("/garbage", &[502][..]),
        ("/reset", &[502][..]),
    ] {
        for accept in ["text/html", "application/json"] {
            let r = get_with(&proxy.url(path), &[("accept", accept)]).await;
            assert!(statuses.contains(&r.status), "{path}: {}", r.status);
            let mut everything = r.text();
            for (k, v) in &r.headers {
                everything.push_str(&format!("\n{k}: {}", v.to_str().unwrap_or("")));
            }
            assert!(
                !support::leaks_address(&everything, &backends),
                "{path} leaks a backend address: {everything}"
            );
        }
    }
}

#[tokio::test]
async fn head_response_has_no_body_and_the_connection_stays_usable() {
    let up = Upstream::start("a").await;
    let proxy = Proxy::start(&one_route(&[up.addr()])).await;

    let mut c = RawConn::connect(proxy.addr()).await;
    c.send(b"HEAD / HTTP/1.1\r\nhost: a.test\r\n\r\n").await;
    let head = c.read_response_for("HEAD").await;
    c.send(b"GET /next HTTP/1.1\r\nhost: a.test\r\n\r\n").await;
    let next = c.read_response().await;

    assert_eq!(head.status, 200);
    assert!(head.body.is_empty());
    assert_eq!(up.seen()[0].method, "HEAD");
    assert_eq!(next.status, 200);
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&next.body).unwrap()["target"],
        "/next"
    );
}

#[tokio::test]
async fn no_content_and_not_modified_pass_through_without_a_body() {
    let up = Upstream::start("a").await;
    let proxy = Proxy::start(&one_route(&[up.addr()])).await;
    up.push(Mode::Status(204));
    up.push(Mode::Status(304));

    let mut c = RawConn::connect(proxy.addr()).await;
    c.send(b"GET /a HTTP/1.1\r\nhost: a.test\r\n\r\n").await;
    let no_content = c.read_response().await;
    c.send(b"GET /b HTTP/1.1\r\nhost: a.test\r\nif-none-match: \"x\"\r\n\r\n")
        .await;
    let not_modified = c.read_response().await;
    c.send(b"GET /c HTTP/1.1\r\nhost: a.test\r\n\r\n").await;
    let next = c.read_response().await;

    assert_eq!((no_content.status, no_content.body.len()), (204, 0));
    assert_eq!((not_modified.status, not_modified.body.len()), (304, 0));
    assert_eq!(next.status, 200);
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&next.body).unwrap()["target"],
        "/c"
    );
}

/// Bad-inputs row 54: a body after a HEAD or 204 response is not part of the message; it must not
/// reach the client nor be read as the next response on a reused upstream connection.
#[tokio::test]
async fn stray_body_after_bodyless_upstream_responses_is_dropped() {
    let up = Upstream::start("a").await;
    let proxy = Proxy::start(&one_route(&[up.addr()])).await;
    up.push(Mode::Raw(
        b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello".to_vec(),
    ));
    up.push(Mode::Ok);
    up.push(Mode::Raw(
        b"HTTP/1.1 204 No Content\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 8\r\n\r\nsmuggled"
            .to_vec(),
    ));
    up.push(Mode::Ok);

    let mut c = RawConn::connect(proxy.addr()).await;
    c.send(b"HEAD / HTTP/1.1\r\nhost: a.test\r\n\r\n").await;
    let head = c.read_response_for("HEAD").await;
    c.send(b"GET /after-head HTTP/1.1\r\nhost: a.test\r\n\r\n")
        .await;
    let after_head = c.read_response().await;
    c.send(b"GET /no-content HTTP/1.1\r\nhost: a.test\r\n\r\n")
        .await;
    let no_content = c.read_response().await;
    c.send(b"GET /after-204 HTTP/1.1\r\nhost: a.test\r\n\r\n")
        .await;
    let after_204 = c.read_response().await;

    assert_eq!((head.status, head.body.len()), (200, 0));
    assert_eq!(after_head.status, 200, "{}", after_head.text());
    assert!(
        after_head.text().contains("/after-head"),
        "{}",
        after_head.text()
    );
    assert_eq!((no_content.status, no_content.body.len()), (204, 0));
    assert_eq!(after_204.status, 200, "{}", after_204.text());
    assert!(
        after_204.text().contains("/after-204"),
        "{}",
        after_204.text()
    );
}

#[tokio::test]
async fn chunked_response_trailers_are_relayed_to_a_client_that_accepts_them() {
    let up = Upstream::start_with(
        "a",
        Mode::Raw(
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ntrailer: x-checksum\r\n\r\n5\r\nhello\r\n0\r\nx-checksum: abc\r\n\r\n"
                .to_vec(),
        ),
    )
    .await;
    let proxy = Proxy::start(&one_route(&[up.addr()])).await;

    let mut c = RawConn::connect(proxy.addr()).await;
    c.send(b"GET / HTTP/1.1\r\nhost: a.test\r\nte: trailers\r\n\r\n")
        .await;
    let r = c.read_response().await;

    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "hello");
    assert!(r.chunked, "trailers need chunked framing: {:?}", r.headers);
    assert_eq!(
        r.trailers,
        vec![("x-checksum".to_owned(), "abc".to_owned())]
    );
}

#[tokio::test]
async fn expect_100_continue_gets_an_interim_100_then_the_response() {
    let up = Upstream::start("a").await;
    let proxy = Proxy::start(&one_route(&[up.addr()])).await;

    let mut c = RawConn::connect(proxy.addr()).await;
    c.send(b"POST /upload HTTP/1.1\r\nhost: a.test\r\ncontent-length: 5\r\nexpect: 100-continue\r\n\r\n")
        .await;
    let interim = c.read_response().await;
    assert_eq!(
        interim.status, 100,
        "interim response before the body is sent"
    );
    c.send(b"hello").await;
    let r = c.read_response().await;

    assert_eq!(r.status, 200);
    assert_eq!(up.last().body, b"hello");
}

#[tokio::test]
async fn a_request_that_already_passed_through_this_proxy_is_a_508_loop() {
    let up = Upstream::start("a").await;
    let proxy = Proxy::start(&format!(
        "[http]\nvia = \"palisade\"\n{}",
        one_route(&[up.addr()])
    ))
    .await;

    let direct = get_with(&proxy.url("/"), &[("via", "1.1 palisade")]).await;
    let chained = get_with(&proxy.url("/"), &[("via", "1.0 edge, 1.1 Palisade")]).await;
    let other = get_with(&proxy.url("/"), &[("via", "1.1 someone-else")]).await;

    assert_eq!(direct.status, 508);
    assert_eq!(chained.status, 508);
    assert_eq!(other.status, 200);
    assert_eq!(up.hits(), 1, "a looping request is never forwarded");
}
