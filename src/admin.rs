//! The admin listener: liveness, readiness, metrics, the effective config and live cluster state.
//!
//! It has its own port (loopback by default) so that an operator can still look inside when the
//! traffic listeners are saturated, and it is unauthenticated unless `admin.auth_token` is set.
//! It reads state and changes three things: an endpoint's admin mode (drain, down, auto), with
//! `POST /clusters/NAME/endpoints/ID/MODE`; the config (`POST /config`, `/config/validate`,
//! `/reload`, `/config/rollback`, through `reload::Reloader`, which owns the pipeline); and the
//! process (`POST /drain`, `POST /upgrade`).

use std::{convert::Infallible, net::SocketAddr, sync::Arc, time::Instant};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::{body::Incoming, service::service_fn};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::json;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::{
    health::endpoint::AdminMode,
    reload::{Reloader, history::Trigger},
    snapshot::{Shared, State},
    upstream::cluster::Cluster,
};

/// The largest config `POST /config` takes.
const MAX_CONFIG_BYTES: usize = 4 << 20;

/// Serves the admin API until `stop`.
pub async fn serve(
    listener: TcpListener,
    shared: Arc<Shared>,
    reloader: Arc<Reloader>,
    stop: CancellationToken,
) {
    loop {
        let (stream, _) = tokio::select! {
            () = stop.cancelled() => return,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                    continue;
                }
            },
        };
        let (shared, reloader, stop) = (Arc::clone(&shared), Arc::clone(&reloader), stop.clone());
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let (shared, reloader) = (Arc::clone(&shared), Arc::clone(&reloader));
                async move { Ok::<_, Infallible>(respond(req, &shared, &reloader).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(std::time::Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), svc);
            tokio::pin!(conn);
            // Stopping the admin port ends its keep-alive connections too (after an upgrade,
            // a scraper or probe must reach the new process, not linger on this one).
            tokio::select! {
                _ = conn.as_mut() => return,
                () = stop.cancelled() => {}
            }
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        });
    }
}

async fn respond(
    req: Request<Incoming>,
    shared: &Shared,
    reloader: &Arc<Reloader>,
) -> Response<Full<Bytes>> {
    let snapshot = shared.load();
    // Liveness and readiness stay open: orchestrators and load balancers probe them without secrets.
    let probe = matches!(req.uri().path(), "/healthz" | "/ready");
    if let (false, Some(token)) = (probe, &snapshot.config.admin.auth_token) {
        let ok = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .is_some_and(|t| constant_time_eq(t.as_bytes(), token.as_bytes()));
        if !ok {
            return text(StatusCode::UNAUTHORIZED, "admin token required\n");
        }
    }
    if req.method() == Method::POST {
        return post(req, shared, reloader).await;
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(
            StatusCode::METHOD_NOT_ALLOWED,
            "only GET and POST are supported\n",
        );
    }
    match req.uri().path() {
        "/healthz" => text(StatusCode::OK, "ok\n"),
        "/ready" => match shared.state() {
            State::Live => text(StatusCode::OK, "ready\n"),
            s => text(
                StatusCode::SERVICE_UNAVAILABLE,
                &format!("{}\n", s.as_str()),
            ),
        },
        "/metrics" => {
            for c in snapshot.clusters.values() {
                crate::metrics::pool_idle(
                    &c.name,
                    c.members()
                        .endpoints
                        .iter()
                        .map(|e| e.pool.idle_count())
                        .sum(),
                );
            }
            let mut r = text(StatusCode::OK, &crate::metrics::render());
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                http::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            r
        }
        "/config" => json_response(&json!({
            "version": snapshot.version,
            "config": snapshot.config.redacted(),
        })),
        "/config/history" => json_response(&json!({
            "running": snapshot.version,
            "entries": reloader.history().await,
        })),
        "/config/diff" => {
            let q = query(&req);
            match reloader
                .diff(
                    q.get("from").map(String::as_str),
                    q.get("to").map(String::as_str),
                )
                .await
            {
                Ok(d) => json_response(&json!({ "diff": d, "summary": d.summary() })),
                Err(e) => text(StatusCode::NOT_FOUND, &format!("{e}\n")),
            }
        }
        "/clusters" => json_response(&clusters(shared)),
        "/limits" => json_response(&limits(shared)),
        "/server_info" => json_response(&json!({
            "version": env!("CARGO_PKG_VERSION"),
            "config_version": snapshot.version,
            "state": shared.state().as_str(),
            "uptime_seconds": shared.started.elapsed().as_secs(),
            "pid": std::process::id(),
        })),
        _ => text(
            StatusCode::NOT_FOUND,
            "unknown admin path; try /healthz /ready /metrics /config /config/history \
             /config/diff /clusters /server_info\n",
        ),
    }
}

/// The POST endpoints: the ones that change something.
async fn post(
    req: Request<Incoming>,
    shared: &Shared,
    reloader: &Arc<Reloader>,
) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_owned();
    if let Some(rest) = path.strip_prefix("/clusters/") {
        return set_endpoint_mode(shared, rest);
    }
    match path.as_str() {
        "/reload" => {
            let r = Arc::clone(reloader);
            detached(async move { r.reload_file(Trigger::Api).await }).await
        }
        "/config" | "/config/validate" => {
            let body = match read_body(req).await {
                Ok(b) => b,
                Err(r) => return r,
            };
            let r = Arc::clone(reloader);
            if path == "/config" {
                detached(async move { r.apply_text(&body, Trigger::Api).await }).await
            } else {
                detached(async move { r.check_text(&body).await }).await
            }
        }
        "/config/rollback" => {
            let to = query(&req).get("to").cloned();
            let r = Arc::clone(reloader);
            detached(async move { r.rollback(to.as_deref()).await }).await
        }
        "/drain" => {
            tracing::warn!("drain requested through the admin API");
            reloader.drain_requested.cancel();
            json_response(&json!({ "state": "draining" }))
        }
        "/upgrade" => {
            if reloader.config_path().is_none() {
                return text(
                    StatusCode::CONFLICT,
                    "this instance runs an embedded config (demo): there is no binary upgrade\n",
                );
            }
            if reloader
                .upgrading
                .load(std::sync::atomic::Ordering::Acquire)
            {
                return text(StatusCode::CONFLICT, "an upgrade is already under way\n");
            }
            tracing::warn!("binary upgrade requested through the admin API");
            reloader.upgrade_requested.notify_one();
            json_response(&json!({ "upgrade": "started" }))
        }
        _ => text(
            StatusCode::NOT_FOUND,
            "unknown admin path; POST to /reload /config /config/validate /config/rollback \
             /drain /upgrade /clusters/NAME/endpoints/ID/MODE\n",
        ),
    }
}

/// Runs a config change in its own task: a client that hangs up mid-reload must not cancel it
/// halfway (after the swap, before the history and the bake are set up).
async fn detached(
    change: impl std::future::Future<Output = crate::reload::Report> + Send + 'static,
) -> Response<Full<Bytes>> {
    match tokio::spawn(change).await {
        Ok(r) => report(&r),
        Err(_) => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the reload task failed; see the log\n",
        ),
    }
}

/// A reload's report: 200 when it applied (or would), 422 with every problem when it did not.
fn report(r: &crate::reload::Report) -> Response<Full<Bytes>> {
    let mut resp = json_response(&serde_json::to_value(r).unwrap_or_default());
    if !r.ok() {
        *resp.status_mut() = StatusCode::UNPROCESSABLE_ENTITY;
    }
    resp
}

async fn read_body(req: Request<Incoming>) -> Result<String, Response<Full<Bytes>>> {
    let limited = http_body_util::Limited::new(req.into_body(), MAX_CONFIG_BYTES);
    let bytes = match http_body_util::BodyExt::collect(limited).await {
        Ok(c) => c.to_bytes(),
        Err(_) => {
            return Err(text(
                StatusCode::PAYLOAD_TOO_LARGE,
                "a config is at most 4 MiB\n",
            ));
        }
    };
    String::from_utf8(bytes.to_vec())
        .map_err(|_| text(StatusCode::BAD_REQUEST, "the config is not UTF-8\n"))
}

fn query(req: &Request<Incoming>) -> std::collections::HashMap<String, String> {
    req.uri()
        .query()
        .unwrap_or("")
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// `NAME/endpoints/ID/MODE`: sets an endpoint's admin mode and replans its cluster at once. `ID`
/// is the endpoint's id or its `ip:port`, as `/clusters` shows them.
fn set_endpoint_mode(shared: &Shared, rest: &str) -> Response<Full<Bytes>> {
    let parts: Vec<&str> = rest.split('/').collect();
    let [cluster, "endpoints", id, mode] = parts[..] else {
        return text(
            StatusCode::NOT_FOUND,
            "expected /clusters/NAME/endpoints/ID/{drain,down,auto}\n",
        );
    };
    let Some(mode) = AdminMode::parse(mode) else {
        return text(
            StatusCode::BAD_REQUEST,
            "mode must be drain, down or auto\n",
        );
    };
    let snapshot = shared.load();
    let Some(c) = snapshot.clusters.get(cluster) else {
        return text(StatusCode::NOT_FOUND, "unknown cluster\n");
    };
    let members = c.members();
    let matched: Vec<_> = members
        .endpoints
        .iter()
        .filter(|e| &*e.id == id || e.addr.to_string() == id)
        .collect();
    if matched.is_empty() {
        return text(StatusCode::NOT_FOUND, "unknown endpoint\n");
    }
    for e in &matched {
        e.health.set_admin(mode);
        if mode == AdminMode::Down {
            // Down: nothing more will be sent, so its idle connections go now (drain lets the
            // requests in flight finish and keeps nothing else either way).
            e.pool.clear();
        }
        tracing::warn!(cluster = %c.name, endpoint = %e.id, mode = mode.as_str(), "endpoint mode set through the admin API");
    }
    c.replan();
    c.wake.notify_one();
    json_response(&json!({
        "cluster": &*c.name,
        "endpoints": matched.iter().map(|e| &*e.id).collect::<Vec<_>>(),
        "mode": mode.as_str(),
    }))
}

/// `GET /limits`: the rate-limit policies (mode: shared, degraded or local; the keys limited most
/// right now), the overload state, and each cluster's adaptive limit.
fn limits(shared: &Shared) -> serde_json::Value {
    let snapshot = shared.load();
    let store = snapshot.rate_limits.store();
    let policies: Vec<_> = snapshot
        .rate_limits
        .policies()
        .iter()
        .map(|p| {
            let top: Vec<_> = p
                .top_limited(10)
                .into_iter()
                .map(|(key, limited)| json!({ "key": key, "limited": limited }))
                .collect();
            json!({
                "name": &*p.name,
                "rate": p.rate.to_string(),
                "burst": p.quota.burst,
                "scope": match p.scope { crate::config::Scope::Local => "local", crate::config::Scope::Shared => "shared" },
                "mode": p.mode(store.map(|s| &**s)),
                "dry_run": p.dry_run,
                "tracked_keys": p.tracked_keys(),
                "most_limited": top,
            })
        })
        .collect();
    let o = &snapshot.config.overload;
    let mut names: Vec<_> = snapshot.clusters.keys().collect();
    names.sort();
    let adaptive: Vec<_> = names
        .into_iter()
        .filter_map(|n| snapshot.clusters.get(n))
        .filter_map(|c| {
            let a = c.adaptive.as_ref()?;
            Some(json!({
                "cluster": &*c.name,
                "limit": a.limit(),
                "in_flight": a.gate.in_flight(),
                "queued": a.gate.queued(),
                "queue_delay_s": a.queue_delay().as_secs_f64(),
                "min_rtt_s": a.min_rtt().map(|d| d.as_secs_f64()),
            }))
        })
        .collect();
    json!({
        "config_version": snapshot.version,
        "rate_limits": policies,
        "store": store.map(|s| json!({ "up": s.is_up(), "live_instances": s.live_instances() })),
        "overload": {
            "in_flight": shared.overload.in_flight(),
            "max_in_flight": o.max_in_flight,
            "shed_level": format!("{:?}", shared.overload.level()).to_ascii_lowercase(),
            "queue_delay_s": shared.overload.queue_delay().as_secs_f64(),
            "connections": shared.connections.load(std::sync::atomic::Ordering::Relaxed),
            "max_connections": o.max_connections,
        },
        "adaptive_concurrency": adaptive,
    })
}

fn clusters(shared: &Shared) -> serde_json::Value {
    let snapshot = shared.load();
    let now = Instant::now();
    let mut names: Vec<_> = snapshot.clusters.keys().collect();
    names.sort();
    let list: Vec<_> = names
        .into_iter()
        .filter_map(|n| snapshot.clusters.get(n))
        .map(|c| cluster_json(c, now))
        .collect();
    json!({ "config_version": snapshot.version, "clusters": list })
}

fn cluster_json(c: &Cluster, now: Instant) -> serde_json::Value {
    let members = c.members();
    let outlier_cfg = c.health.outlier.as_ref();
    let endpoints: Vec<_> = members
        .endpoints
        .iter()
        .map(|e| {
            let verdict = e.health.verdict().clone();
            let outlier = e.health.outlier().clone();
            let active = verdict.active.as_ref().map(|a| {
                let (ok, fail) = a.consecutive();
                json!({
                    "status": a.status().as_str(),
                    "since_s": now.saturating_duration_since(a.since()).as_secs_f64(),
                    "last_probe": a.last_probe().map(|(_, ok)| if ok { "pass" } else { "fail" }),
                    "last_failure": verdict.last_probe_detail,
                    "consecutive_passes": ok,
                    "consecutive_failures": fail,
                })
            });
            let ejection = outlier.ejection().map(|j| {
                json!({
                    "reason": j.reason.as_str(),
                    "for_s": now.saturating_duration_since(j.since).as_secs_f64(),
                    "remaining_s": j.until.saturating_duration_since(now).as_secs_f64(),
                    "count": j.count,
                })
            });
            let window = outlier_cfg.map(|cfg| {
                let w = outlier.window_stats(cfg, now);
                json!({
                    "requests": w.requests,
                    "failures": w.failures,
                    "mean_latency_ms": w.mean_latency.map(|d| d.as_secs_f64() * 1000.0),
                })
            });
            let slow_start = verdict
                .ramp_from
                .filter(|&since| c.health.slow_start.ramping(since, now))
                .map(|since| {
                    json!({
                        "progress": c.health.slow_start.factor(since, now),
                        "effective_weight": f64::from(e.effective_weight()) / f64::from(crate::upstream::cluster::WEIGHT_SCALE),
                    })
                });
            json!({
                "id": &*e.id,
                "address": e.addr.to_string(),
                "weight": e.weight,
                "priority": e.priority,
                "zone": e.zone.as_deref(),
                "state": e.health.state_name(),
                "admin": e.health.admin().as_str(),
                "active_check": active,
                "ejection": ejection,
                "times_ejected": outlier.times_ejected(),
                "outlier_window": window,
                "slow_start": slow_start,
                "in_flight": e.stats.in_flight(),
                "ewma_latency_ms": e.stats.ewma_latency(now).as_secs_f64() * 1000.0,
                "successes": e.stats.successes(),
                "failures": e.stats.failures(),
                "idle_connections": e.pool.idle_count(),
            })
        })
        .collect();
    let plan: Vec<_> = members
        .plan
        .groups
        .iter()
        .map(|g| {
            json!({
                "priority": g.priority,
                "local": g.local,
                "share_percent": f64::from(g.share) / 100.0,
                "endpoints": g.members.iter().filter_map(|&i| members.endpoints.get(i)).map(|e| &*e.id).collect::<Vec<_>>(),
            })
        })
        .collect();
    json!({
        "name": &*c.name,
        "balance": c.balance_name(),
        "protocol": match c.protocol { crate::config::UpstreamProtocol::Http1 => "http1", crate::config::UpstreamProtocol::H2 => "h2" },
        "panic": members.plan.panic,
        "healthy_percent": members.plan.healthy_percent(),
        "routable_endpoints": members.routable(),
        "plan": plan,
        "fallback": c.fallback.as_deref(),
        "limits": {
            "requests": c.limits.requests(),
            "max_requests": c.limits.max_requests,
            "retries": c.limits.retries(),
            "max_retries": c.limits.max_retries,
            "overflows": c.limits.overflows(),
            "connections": c.limits.connections(),
            "max_connections": c.limits.max_connections,
            "pending": c.limits.pending(),
            "max_pending": c.limits.max_pending,
        },
        "endpoints": endpoints,
    })
}

fn text(status: StatusCode, body: &str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body.to_owned())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

fn json_response(v: &serde_json::Value) -> Response<Full<Bytes>> {
    let body = serde_json::to_vec_pretty(v).unwrap_or_default();
    let mut r = Response::new(Full::new(Bytes::from(body)));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    r
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Binds the admin address.
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    crate::server::listener::bind(addr)
}
