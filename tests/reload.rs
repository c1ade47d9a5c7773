//! Hot reload in-process, through the admin API: apply, refuse, roll back (by hand and by the bake
//! judge), carry endpoint state over, change listeners without touching open connections, and
//! rotate certificates. The process-level triggers (SIGHUP, the file watch, `--fallback-last-good`,
//! the binary upgrade) are in `reload_process.rs`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use support::{
    Mode, Proxy, RawConn, STEP, Upstream, certs::Pki, client, complete_config, endpoint_list, get,
    send,
};

/// POSTs a config (completed like the harness does) to `/config`.
async fn post_config(proxy: &Proxy, toml: &str) -> support::Reply {
    post(proxy, "/config", complete_config(toml, None)).await
}

async fn post(proxy: &Proxy, path: &str, body: String) -> support::Reply {
    send(client().post(proxy.admin_url(path)).body(body)).await
}

async fn running_version(proxy: &Proxy) -> String {
    proxy.admin_json("/server_info").await["config_version"]
        .as_str()
        .unwrap()
        .to_owned()
}

async fn history(proxy: &Proxy) -> Vec<serde_json::Value> {
    proxy.admin_json("/config/history").await["entries"]
        .as_array()
        .unwrap()
        .clone()
}

/// Polls `cond` every 20 ms until it holds, or fails the test after `within`.
async fn eventually<F, Fut>(within: Duration, what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    while !cond().await {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn two_routes(a: SocketAddr, b: Option<SocketAddr>) -> String {
    let mut t = format!(
        r#"
[[routes]]
name = "a"
match = {{ path_prefix = "/a" }}
cluster = "a"

[clusters.a]
endpoints = ["{a}"]
"#
    );
    if let Some(b) = b {
        t.push_str(&format!(
            r#"
[[routes]]
name = "b"
match = {{ path_prefix = "/b" }}
cluster = "b"

[clusters.b]
endpoints = ["{b}"]
"#
        ));
    }
    t
}

#[tokio::test]
async fn a_posted_config_applies_and_is_recorded_with_its_diff() {
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    let proxy = Proxy::start(&two_routes(a.addr(), None)).await;
    assert_eq!(
        get(&proxy.url("/b")).await.status,
        404,
        "no route for /b yet"
    );
    let before = running_version(&proxy).await;

    let r = post_config(&proxy, &two_routes(a.addr(), Some(b.addr()))).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let report = r.json();
    assert_eq!(report["result"], "applied");
    assert_eq!(report["running"], before.as_str());
    assert_eq!(report["diff"]["routes"]["added"][0], "b");
    assert_eq!(report["diff"]["clusters"]["added"][0], "b");

    let rsp = get(&proxy.url("/b")).await;
    assert_eq!((rsp.status, rsp.upstream()), (200, "b"));
    assert_eq!(get(&proxy.url("/a")).await.upstream(), "a");
    let after = running_version(&proxy).await;
    assert_ne!(before, after);

    let h = history(&proxy).await;
    assert_eq!(h.len(), 2, "{h:?}");
    assert_eq!(h[0]["trigger"], "startup");
    assert_eq!(h[1]["trigger"], "api");
    assert_eq!(h[1]["outcome"], "applied");
    assert_eq!(h[1]["version"], after.as_str());
    assert_eq!(h[1]["previous"], before.as_str());

    let d = proxy.admin_json("/config/diff").await;
    assert_eq!(d["diff"]["routes"]["added"][0], "b", "{d}");
    let d = proxy
        .admin_json(&format!("/config/diff?from={after}&to={before}"))
        .await;
    assert_eq!(d["diff"]["routes"]["removed"][0], "b", "{d}");
}

#[tokio::test]
async fn an_invalid_config_is_refused_with_every_problem_and_nothing_changes() {
    let a = Upstream::start("a").await;
    let proxy = Proxy::start(&two_routes(a.addr(), None)).await;
    let before = running_version(&proxy).await;
    let bad = r#"
[[routes]]
name = "a"
match = { path_prefix = "/a" }
cluster = "nowhere"

[clusters.a]
endpoints = ["not an address"]
"#;
    let r = post_config(&proxy, bad).await;
    assert_eq!(r.status, 422, "{}", r.text());
    let report = r.json();
    assert_eq!(report["result"], "rejected");
    let problems: Vec<String> = report["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap().to_owned())
        .collect();
    assert!(
        problems.iter().any(|p| p.starts_with("routes[0]")),
        "{problems:?}"
    );
    assert!(
        problems
            .iter()
            .any(|p| p.starts_with("clusters.a.endpoints")),
        "{problems:?}"
    );
    // A syntax error is refused too, and reported.
    let r = post(&proxy, "/config", "[[routes]\nname =".into()).await;
    assert_eq!(r.status, 422);
    assert!(r.text().contains("TOML syntax"), "{}", r.text());

    assert_eq!(running_version(&proxy).await, before);
    assert_eq!(get(&proxy.url("/a")).await.upstream(), "a");
    let h = history(&proxy).await;
    let rejected: Vec<_> = h.iter().filter(|e| e["outcome"] == "rejected").collect();
    assert_eq!(rejected.len(), 2, "{h:?}");
    assert!(!rejected[0]["problems"].as_array().unwrap().is_empty());
    let metrics = proxy.admin_get("/metrics").await.text();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("palisade_config_reloads_total{result=\"failure\"}")),
        "{metrics}"
    );
}

#[tokio::test]
async fn validate_endpoint_checks_without_applying() {
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    let proxy = Proxy::start(&two_routes(a.addr(), None)).await;
    let before = running_version(&proxy).await;
    let r = post(
        &proxy,
        "/config/validate",
        complete_config(&two_routes(a.addr(), Some(b.addr())), None),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["result"], "valid");
    assert_eq!(running_version(&proxy).await, before);
    assert_eq!(get(&proxy.url("/b")).await.status, 404);
}

#[tokio::test]
async fn rollback_returns_to_the_previous_version_or_a_named_one() {
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    let proxy = Proxy::start(&two_routes(a.addr(), None)).await;
    let v1 = running_version(&proxy).await;
    assert_eq!(
        post_config(&proxy, &two_routes(a.addr(), Some(b.addr())))
            .await
            .status,
        200
    );
    let v2 = running_version(&proxy).await;
    assert_eq!(get(&proxy.url("/b")).await.upstream(), "b");

    let r = post(&proxy, "/config/rollback", String::new()).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(running_version(&proxy).await, v1);
    assert_eq!(get(&proxy.url("/b")).await.status, 404);

    let r = post(&proxy, &format!("/config/rollback?to={v2}"), String::new()).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(running_version(&proxy).await, v2);
    assert_eq!(get(&proxy.url("/b")).await.upstream(), "b");

    let r = post(&proxy, "/config/rollback?to=0123456789ab", String::new()).await;
    assert_eq!(r.status, 422, "{}", r.text());
    assert_eq!(running_version(&proxy).await, v2);

    // Rollbacks are an undo stack: v1 was undone (by going back to v2), so there is nothing
    // earlier to go back to, rather than flipping between the two.
    let r = post(&proxy, "/config/rollback", String::new()).await;
    assert_eq!(r.status, 422, "{}", r.text());
    assert_eq!(running_version(&proxy).await, v2);
    let h = history(&proxy).await;
    assert_eq!(
        h.iter().filter(|e| e["trigger"] == "rollback").count(),
        4,
        "{h:?}"
    );
}

#[tokio::test]
async fn unchanged_endpoints_keep_their_health_and_stats_across_a_reload() {
    let good = Upstream::start("good").await;
    let bad = Upstream::start_with("bad", Mode::Status(503)).await;
    let cluster = format!(
        r#"
[clusters.up]
endpoints = {}
balance = "round_robin"
outlier_detection = {{ consecutive_5xx = 2, base_ejection_time = "60s", max_ejection_percent = 50 }}
"#,
        endpoint_list(&[good.addr(), bad.addr()])
    );
    let route = |extra: &str| {
        format!(
            "[[routes]]\nname = \"all\"\nmatch = {{ path_prefix = \"/\" }}\ncluster = \"up\"\nretry = {{ attempts = 1 }}\n{extra}\n{cluster}"
        )
    };
    let proxy = Proxy::start(&route("")).await;
    // Until `bad` is ejected, about every other request reaches it.
    eventually(STEP, "the 503 endpoint is ejected", || async {
        get(&proxy.url("/")).await;
        proxy.endpoint_stats("up", bad.addr()).await["state"] == "ejected"
    })
    .await;
    let good_before = proxy.endpoint_stats("up", good.addr()).await["successes"]
        .as_u64()
        .unwrap();
    assert!(good_before > 0);

    // A reload that adds a route and leaves the cluster alone.
    let text = format!(
        "[[routes]]\nname = \"more\"\nmatch = {{ path_prefix = \"/more\" }}\ncluster = \"up\"\n{}",
        route("")
    );
    let r = post_config(&proxy, &text).await;
    assert_eq!(r.status, 200, "{}", r.text());

    let bad_after = proxy.endpoint_stats("up", bad.addr()).await;
    assert_eq!(bad_after["state"], "ejected", "{bad_after}");
    assert_eq!(bad_after["times_ejected"], 1, "{bad_after}");
    let good_after = proxy.endpoint_stats("up", good.addr()).await["successes"]
        .as_u64()
        .unwrap();
    assert!(good_after >= good_before, "{good_after} < {good_before}");
    // The ejected endpoint stays out of rotation on the new config.
    let hits = bad.hits();
    for _ in 0..10 {
        assert_eq!(get(&proxy.url("/more")).await.upstream(), "good");
    }
    assert_eq!(bad.hits(), hits);

    // A weight change makes a new endpoint object, but what it learnt stays.
    let reweighted = route("").replace(
        &endpoint_list(&[good.addr(), bad.addr()]),
        &format!(
            "[\"{}\", {{ address = \"{}\", weight = 3 }}]",
            good.addr(),
            bad.addr()
        ),
    );
    let r = post_config(&proxy, &reweighted).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.json()["diff"]["endpoints"][0]["changed"][0]["name"],
        bad.addr().to_string()
    );
    let bad_after = proxy.endpoint_stats("up", bad.addr()).await;
    assert_eq!(bad_after["state"], "ejected", "{bad_after}");
    assert_eq!(bad_after["weight"], 3, "{bad_after}");
    assert_eq!(bad_after["times_ejected"], 1, "{bad_after}");
}

#[tokio::test]
async fn listeners_come_and_go_without_touching_open_connections() {
    let a = Upstream::start("a").await;
    let base = |listeners: &str| {
        format!(
            "{listeners}\n[[routes]]\nname = \"all\"\nmatch = {{ path_prefix = \"/\" }}\ncluster = \"up\"\n[clusters.up]\nendpoints = [\"{}\"]\n",
            a.addr()
        )
    };
    let proxy = Proxy::start(&base("[listeners.web]\n[listeners.old]\n")).await;
    let web = proxy.listener("web").unwrap();
    let old = proxy.listener("old").unwrap();

    // A keep-alive connection on `web`, open across the reload.
    let mut conn = RawConn::connect(web).await;
    conn.send(b"GET /x HTTP/1.1\r\nHost: t\r\n\r\n").await;
    let rsp = conn.read_response().await;
    assert_eq!(rsp.status, 200);

    // Remove `old`, add `new`; `web` keeps its port (written explicitly now that it is known).
    let r = post_config(
        &proxy,
        &base(&format!(
            "[listeners.web]\nlisten = \"{web}\"\n[listeners.new]\n"
        )),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let addrs = proxy.running().reloader.listener_addrs().await;
    assert_eq!(addrs.get("web"), Some(&web));
    assert!(!addrs.contains_key("old"), "{addrs:?}");
    let new = *addrs.get("new").expect("the new listener is bound");

    conn.send(b"GET /y HTTP/1.1\r\nHost: t\r\n\r\n").await;
    let rsp = conn.read_response().await; // the open connection still serves
    assert_eq!(rsp.status, 200);
    let rsp = send(client().get(format!("http://{new}/z"))).await;
    assert_eq!(rsp.status, 200);
    eventually(STEP, "the removed listener refuses connections", || async {
        tokio::net::TcpStream::connect(old).await.is_err()
    })
    .await;
}

#[tokio::test]
async fn a_rotated_certificate_is_served_after_a_reload_of_the_same_config() {
    let pki = Pki::new("rotate");
    let first = pki.leaf("rotate.test");
    let up = Upstream::start("up").await;
    let toml = format!(
        "[listeners.tls]\n[[listeners.tls.tls.certificates]]\ncert = {:?}\nkey = {:?}\n{}",
        first.cert_file.display().to_string(),
        first.key_file.display().to_string(),
        support::one_route(&[up.addr()])
    );
    let proxy = Proxy::start(&toml).await;
    assert_eq!(served_cert(&proxy, &pki).await, first.der);

    // The same files, new contents (as cert-manager or certbot renew them).
    let second = pki.leaf("rotate.test");
    assert_eq!(second.cert_file, first.cert_file);
    assert_ne!(second.der, first.der);
    let r = post_config(&proxy, &toml).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["result"], "unchanged");
    assert_eq!(served_cert(&proxy, &pki).await, second.der);
}

async fn served_cert(proxy: &Proxy, pki: &Pki) -> rustls_pki_types::CertificateDer<'static> {
    let tcp = tokio::net::TcpStream::connect(proxy.listener("tls").unwrap())
        .await
        .unwrap();
    let connector = tokio_rustls::TlsConnector::from(pki.client_config(&[b"http/1.1"]));
    let tls = connector
        .connect(
            rustls_pki_types::ServerName::try_from("rotate.test").unwrap(),
            tcp,
        )
        .await
        .expect("TLS handshake");
    tls.get_ref().1.peer_certificates().unwrap()[0].clone()
}

#[tokio::test]
async fn a_change_that_breaks_traffic_is_rolled_back_by_itself() {
    let a = Upstream::start("a").await;
    let dead = support::refused_addr();
    let config = |target: SocketAddr| {
        format!(
            r#"
[reload.auto_rollback]
bake_time = "4s"
min_requests = 20

[[routes]]
name = "all"
match = {{ path_prefix = "/" }}
cluster = "up"

[clusters.up]
endpoints = ["{target}"]
"#
        )
    };
    let proxy = Proxy::start(&config(a.addr())).await;
    let v1 = running_version(&proxy).await;
    for _ in 0..20 {
        assert_eq!(get(&proxy.url("/")).await.status, 200);
    }
    let r = post_config(&proxy, &config(dead)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let applied = Instant::now();
    // Traffic goes on; every request now fails (503: nothing to connect to).
    eventually(Duration::from_secs(9), "an automatic rollback", || async {
        get(&proxy.url("/")).await;
        running_version(&proxy).await == v1
    })
    .await;
    assert!(applied.elapsed() < Duration::from_secs(4 + 5));
    assert_eq!(get(&proxy.url("/")).await.upstream(), "a");
    let h = history(&proxy).await;
    let bad = &h[1];
    assert_eq!(bad["outcome"], "rolled_back", "{h:?}");
    assert!(
        bad["reason"].as_str().unwrap().contains("failure rate"),
        "{bad}"
    );
    assert_eq!(h[2]["trigger"], "auto_rollback");
    assert_eq!(h[2]["version"], v1.as_str());
    let metrics = proxy.admin_get("/metrics").await.text();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("palisade_config_rollbacks_total{kind=\"auto\"} 1")),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_good_change_is_kept_after_its_bake() {
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    let config = |target: SocketAddr| {
        format!(
            "[reload.auto_rollback]\nbake_time = \"1s\"\nmin_requests = 5\n{}",
            support::one_route(&[target])
        )
    };
    let proxy = Proxy::start(&config(a.addr())).await;
    assert_eq!(post_config(&proxy, &config(b.addr())).await.status, 200);
    let v2 = running_version(&proxy).await;
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until {
        assert_eq!(get(&proxy.url("/")).await.upstream(), "b");
    }
    assert_eq!(running_version(&proxy).await, v2);
    assert_eq!(history(&proxy).await[1]["outcome"], "applied");
}

/// Acceptance (in small): reloads back and forth under load, adding and removing routes and
/// endpoints, lose no request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloads_under_load_lose_no_request() {
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    let one = two_routes(a.addr(), None);
    let two = format!(
        "[[routes]]\nname = \"a\"\nmatch = {{ path_prefix = \"/a\" }}\ncluster = \"a\"\n[clusters.a]\nendpoints = {}\n[[routes]]\nname = \"b\"\nmatch = {{ path_prefix = \"/b\" }}\ncluster = \"a\"\n",
        endpoint_list(&[a.addr(), b.addr()])
    );
    let proxy = Arc::new(Proxy::start(&one).await);
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let mut load = Vec::new();
    for _ in 0..4 {
        let (proxy, stop, ok, failed) = (
            Arc::clone(&proxy),
            Arc::clone(&stop),
            Arc::clone(&ok),
            Arc::clone(&failed),
        );
        load.push(tokio::spawn(async move {
            let c = client();
            while !stop.load(Ordering::Relaxed) {
                match c.get(proxy.url("/a")).send().await {
                    Ok(r) if r.status() == 200 => ok.fetch_add(1, Ordering::Relaxed),
                    _ => failed.fetch_add(1, Ordering::Relaxed),
                };
            }
        }));
    }
    // Endpoint `a` is in both configs: its statistics must survive every reload.
    let mut a_successes = 0;
    for i in 0..20 {
        let text = if i % 2 == 0 { &two } else { &one };
        let r = post_config(&proxy, text).await;
        assert_eq!(r.status, 200, "{}", r.text());
        let served = ok.load(Ordering::Relaxed);
        eventually(STEP, "traffic between reloads", || async {
            ok.load(Ordering::Relaxed) > served + 5
        })
        .await;
        let a_now = proxy.endpoint_stats("a", a.addr()).await;
        assert_eq!(a_now["state"], "healthy", "{a_now}");
        let n = a_now["successes"].as_u64().unwrap();
        assert!(
            n >= a_successes,
            "reload {i} reset the endpoint's stats: {n} < {a_successes}"
        );
        a_successes = n;
    }
    assert!(a_successes > 50, "{a_successes}");
    stop.store(true, Ordering::Relaxed);
    for l in load {
        l.await.unwrap();
    }
    assert_eq!(failed.load(Ordering::Relaxed), 0);
    assert!(ok.load(Ordering::Relaxed) > 100);
    // 21 applied configs, and the history keeps its bound (20 by default).
    let h = history(&proxy).await;
    assert_eq!(h.len(), 20, "{h:?}");
    assert!(h.iter().all(|e| e["outcome"] == "applied"), "{h:?}");
}

/// bad-inputs row 66: a request in flight during a reload finishes on the config it started
/// with, even when the new config removes its route and its cluster.
#[tokio::test]
async fn a_request_in_flight_finishes_on_the_config_it_started_with() {
    let slow = Upstream::start_with("slow", Mode::Slow(Duration::from_millis(400))).await;
    let other = Upstream::start("other").await;
    let proxy = Arc::new(Proxy::start(&two_routes(other.addr(), Some(slow.addr()))).await);
    let in_flight = {
        let proxy = Arc::clone(&proxy);
        tokio::spawn(async move { get(&proxy.url("/b")).await })
    };
    slow.wait_hits(1).await;
    let r = post_config(&proxy, &two_routes(other.addr(), None)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(get(&proxy.url("/b")).await.status, 404, "the route is gone");
    let rsp = in_flight.await.unwrap();
    assert_eq!((rsp.status, rsp.upstream()), (200, "slow"));
}
