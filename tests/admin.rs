//! The admin API: probes, metrics, the effective (redacted) config, live cluster stats, server
//! info, and the bearer token.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use support::{Proxy, Upstream, client, get, one_route, send};

const TOKEN: &str = "s3cr3t-admin-token";

async fn admin_get(proxy: &Proxy, path: &str, token: Option<&str>) -> support::Reply {
    let mut req = client().get(proxy.admin_url(path));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    send(req).await
}

#[tokio::test]
async fn healthz_and_ready_answer_200_when_live() {
    let up = Upstream::start("up").await;
    let proxy = Proxy::start(&one_route(&[up.addr()])).await;

    assert_eq!(proxy.admin_get("/healthz").await.status, 200);
    assert_eq!(proxy.admin_get("/ready").await.status, 200);
}

#[tokio::test]
async fn metrics_expose_the_core_series_without_raw_paths() {
    let up = Upstream::start("up").await;
    let proxy = Proxy::start(&one_route(&[up.addr()])).await;
    assert_eq!(
        get(&proxy.url("/secret-path-9f8e7d?token=abc"))
            .await
            .status,
        200
    );

    let r = proxy.admin_get("/metrics").await;

    assert_eq!(r.status, 200);
    assert!(r.header("content-type").unwrap().starts_with("text/plain"));
    let text = r.text();
    for name in [
        "palisade_requests_total",
        "palisade_request_duration_seconds",
        "palisade_upstream_requests_total",
        "palisade_build_info",
        "palisade_process_resident_memory_bytes",
    ] {
        assert!(text.contains(name), "{name} missing from /metrics");
    }
    assert!(
        !text.contains("secret-path-9f8e7d"),
        "a raw path leaked into a label"
    );
    assert!(!text.contains("path=\""), "a path label exists");
}

#[tokio::test]
async fn config_shows_its_version_and_hides_the_admin_token() {
    let up = Upstream::start("up").await;
    let proxy = Proxy::start(&format!(
        "[admin]\nauth_token = \"{TOKEN}\"\n{}",
        one_route(&[up.addr()])
    ))
    .await;

    let r = admin_get(&proxy, "/config", Some(TOKEN)).await;

    assert_eq!(r.status, 200);
    assert!(!r.text().contains(TOKEN), "the token leaked: {}", r.text());
    let v = r.json();
    let version = v["version"].as_str().unwrap();
    assert_eq!(version.len(), 12);
    assert!(version.bytes().all(|b| b.is_ascii_hexdigit()), "{version}");
    assert_eq!(v["config"]["admin"]["auth_token"], "<redacted>");
}

#[tokio::test]
async fn with_an_auth_token_requests_without_it_are_401() {
    let up = Upstream::start("up").await;
    let proxy = Proxy::start(&format!(
        "[admin]\nauth_token = \"{TOKEN}\"\n{}",
        one_route(&[up.addr()])
    ))
    .await;

    for path in ["/config", "/metrics", "/clusters", "/server_info"] {
        assert_eq!(admin_get(&proxy, path, None).await.status, 401, "{path}");
        assert_eq!(
            admin_get(&proxy, path, Some("wrong-token")).await.status,
            401,
            "{path}"
        );
        assert_eq!(
            admin_get(&proxy, path, Some(TOKEN)).await.status,
            200,
            "{path}"
        );
    }
    // Probes stay open so orchestrators need no secret.
    assert_eq!(admin_get(&proxy, "/healthz", None).await.status, 200);
    assert_eq!(admin_get(&proxy, "/ready", None).await.status, 200);
}

#[tokio::test]
async fn clusters_list_endpoints_with_live_counters() {
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    let proxy = Proxy::start(&one_route(&[a.addr(), b.addr()])).await;
    for _ in 0..4 {
        assert_eq!(get(&proxy.url("/")).await.status, 200);
    }

    let v = proxy.admin_json("/clusters").await;

    let clusters = v["clusters"].as_array().unwrap();
    assert_eq!(clusters.len(), 1);
    assert_eq!(clusters[0]["name"], "up");
    let endpoints = clusters[0]["endpoints"].as_array().unwrap();
    assert_eq!(endpoints.len(), 2);
    let mut total = 0;
    for e in endpoints {
        for field in ["address", "in_flight", "successes", "failures"] {
            assert!(!e[field].is_null(), "{field} missing: {e}");
        }
        assert_eq!(e["in_flight"], 0);
        assert_eq!(e["failures"], 0);
        total += e["successes"].as_u64().unwrap();
    }
    assert_eq!(total, 4);
}

#[tokio::test]
async fn server_info_reports_version_config_version_state_and_uptime() {
    let up = Upstream::start("up").await;
    let proxy = Proxy::start(&one_route(&[up.addr()])).await;

    let info = proxy.admin_json("/server_info").await;
    let config = proxy.admin_json("/config").await;

    assert_eq!(info["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(info["config_version"], config["version"]);
    assert_eq!(info["state"], "live");
    assert!(info["uptime_seconds"].is_u64(), "{info}");
}

#[tokio::test]
async fn unknown_admin_paths_are_404_and_other_methods_are_refused() {
    let up = Upstream::start("up").await;
    let proxy = Proxy::start(&one_route(&[up.addr()])).await;

    assert_eq!(proxy.admin_get("/nope").await.status, 404);
    let put = send(client().put(proxy.admin_url("/config")).body("{}")).await;
    assert_eq!(put.status, 405);
    let post = send(client().post(proxy.admin_url("/nope")).body("")).await;
    assert_eq!(post.status, 404);
    // A config that is not TOML is refused and changes nothing (reload.rs covers the rest).
    let post = send(client().post(proxy.admin_url("/config")).body("{}")).await;
    assert_eq!(post.status, 422);
}
