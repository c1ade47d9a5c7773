//! The request path, in one place and in order:
//! load snapshot → check the request → route → build the upstream request (headers, rewrites) →
//! pick an endpoint → forward → shape the response → log.
//!
//! Every failure becomes a `ProxyError` and then a response here, so hyper never sees an error.
//! Later capabilities (health-aware picking, retries, limits, rate limits) slot in as steps of
//! `proxy`; the steps themselves live in their own modules.

use std::{
    convert::Infallible,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Instant, SystemTime},
};

use http::{HeaderValue, Request, Response, StatusCode, Uri, Version, header, uri::PathAndQuery};
use hyper::body::{Body as _, Incoming};

use crate::{
    access_log::{self, Entry},
    body::{BodyEnd, ProxyBody, RequestLimits},
    checks,
    config::UpstreamProtocol,
    error::{ProxyError, Side},
    headers::{
        forwarded::{ForwardingInfo, append_via, apply_forwarding, via_contains},
        hop_by_hop::{strip_hop_by_hop, upgrade_protocol},
        request_id::ensure_request_id,
    },
    overload::{
        InFlightGuard,
        gate::{GatePermit, Refused},
        shedder::Priority,
    },
    ratelimit::KeyInput,
    route::router::{LastResort, RouteRequest},
    server::listener::ConnInfo,
    snapshot::{Shared, Snapshot},
    upgrade,
    upstream::{
        attempt::{self, Payload, Verdict},
        cluster::{Cluster, HashKey, fnv1a},
        forward::UpstreamBody,
        limits::{Overflow, Permit},
        replay::Replay,
        stats::InFlight,
    },
};

/// What the access log and metrics need once the response is done.
struct Record {
    shared: Arc<Shared>,
    snapshot: Arc<Snapshot>,
    listener: usize,
    start: Instant,
    entry: Option<Box<Entry>>,
    route: Option<usize>,
    status: u16,
    flags: &'static str,
    upstream_secs: Option<f64>,
    bytes_in: Option<Arc<AtomicU64>>,
    /// Decremented when the record is finished, which happens exactly once however the request ends.
    requests: metrics::Gauge,
    _active: crate::server::deadline::ActiveGuard,
}

impl Record {
    fn finish(mut self, end: BodyEnd) {
        self.requests.decrement(1.0);
        let took = self.start.elapsed();
        let elapsed = took.as_secs_f64();
        self.shared
            .traffic
            .record(self.status, self.route.is_some(), took);
        let flags = match (self.flags, end.failure) {
            ("-", Some(f)) => f,
            (f, _) => f,
        };
        if let Some(m) = self.snapshot.request_metrics(self.listener, self.route) {
            m.record(self.status, elapsed);
        }
        if let Some(mut e) = self.entry.take() {
            e.status = self.status;
            e.bytes_out = end.bytes;
            e.bytes_in = self
                .bytes_in
                .as_ref()
                .map_or(0, |b| b.load(Ordering::Relaxed));
            e.duration_s = elapsed;
            e.upstream_duration_s = self.upstream_secs;
            e.flags = flags.to_owned();
            self.shared.access_log.write(&e);
        }
    }
}

/// What a response holds until its body ends: the endpoint's in-flight count and the cluster's
/// request and retry slots.
#[derive(Default)]
struct Hold {
    _in_flight: Option<InFlight>,
    _request: Option<Permit>,
    _retry: Option<Permit>,
    /// The cluster's adaptive-concurrency slot and the process's in-flight place.
    _gate: Option<GatePermit>,
    _overload: Option<InFlightGuard>,
    /// The answer's outcome, counted against its endpoint once the body has ended (a response
    /// can still fail mid-body).
    verdict: Option<Verdict>,
}

/// A record not yet attached to a response body: if the request future is dropped (the client went
/// away while we waited on the upstream) it still logs, flagged `DC`.
struct Pending(Option<Record>);

impl Drop for Pending {
    fn drop(&mut self) {
        if let Some(mut r) = self.0.take() {
            r.status = 499;
            r.flags = "DC";
            r.finish(BodyEnd {
                complete: false,
                bytes: 0,
                failure: Some("DC"),
            });
        }
    }
}

/// Serves one request. Never fails: errors become responses (`Infallible` is hyper's service
/// contract). Owns its arguments so hyper can box this future directly, without a wrapper that
/// would copy it once more.
pub async fn handle(
    mut req: Request<Incoming>,
    conn: Arc<ConnInfo>,
    shared: Arc<Shared>,
) -> Result<Response<ProxyBody>, Infallible> {
    let (conn, shared) = (&*conn, &shared);
    let snapshot = shared.load();
    let start = Instant::now();
    let request_id = ensure_request_id(req.headers_mut(), &snapshot.http.request_id_header);
    let entry = shared.access_log.enabled().then(|| {
        Box::new(Entry {
            ts: access_log::timestamp(SystemTime::now()),
            request_id: request_id.to_str().unwrap_or_default().to_owned(),
            peer: conn.peer.to_string(),
            listener: conn.listener.name.to_string(),
            method: req.method().to_string(),
            path: req.uri().path().to_owned(),
            // What routing will look at, so `validate --replay` can re-route this line.
            match_headers: access_log::match_headers(
                req.headers(),
                snapshot.router.match_header_names(),
            ),
            protocol: protocol_name(req.version()),
            bytes_in: 0,
            ..Entry::default()
        })
    });
    let mut pending = Pending(Some(Record {
        shared: Arc::clone(shared),
        snapshot: Arc::clone(&snapshot),
        listener: conn.listener.index,
        start,
        entry,
        route: None,
        status: 0,
        flags: "-",
        upstream_secs: None,
        bytes_in: None,
        requests: conn.listener.gauges.requests.clone(),
        _active: conn
            .activity
            .begin(conn.listener.config.max_requests_per_connection),
    }));
    conn.listener.gauges.requests.increment(1.0);
    let accept = req.headers().get(header::ACCEPT).cloned();
    let http1 = req.version() != http::Version::HTTP_2;
    let result = proxy(req, conn, shared, &snapshot, &mut pending, &request_id).await;
    let Some(mut record) = pending.0.take() else {
        return Ok(ProxyError::Internal.into_response(
            &request_id,
            &snapshot.http.request_id_header,
            snapshot.http.error_format,
            None,
        ));
    };
    let (mut rsp, mut hold): (Response<ProxyBody>, Hold) = match result {
        Ok(answer) => answer,
        Err(e) => {
            record.flags = e.flag();
            if e.side() == Side::Upstream {
                tracing::debug!(request_id = ?request_id, error = %e, "upstream failure");
            }
            let last_resort = record
                .route
                .and_then(|r| snapshot.router.routes().get(r))
                .and_then(|r| r.last_resort.as_ref().map(|l| (l, &r.name)))
                .filter(|_| e == ProxyError::NoHealthyUpstream || e.never_sent());
            let rsp = match last_resort {
                // Nothing could serve: the route's own answer (a maintenance page, a static
                // default) rather than a bare 503.
                Some((l, route)) => {
                    crate::metrics::degraded(route, "last_resort");
                    last_resort_response(l, &request_id, &snapshot.http.request_id_header)
                }
                None => e.into_response(
                    &request_id,
                    &snapshot.http.request_id_header,
                    snapshot.http.error_format,
                    accept.as_ref(),
                ),
            };
            (rsp, Hold::default())
        }
    };
    record.status = rsp.status().as_u16();
    // An upgrade is draining this HTTP/1 connection: say so on this response, so the client does
    // not send its next request on a connection about to close (see `listener::drive`).
    if http1 && conn.activity.closing() {
        rsp.headers_mut()
            .insert(header::CONNECTION, http::HeaderValue::from_static("close"));
    }
    if let Some(e) = record.entry.as_mut() {
        // Requests refused before forwarding never derived a client IP: log the peer.
        e.client_ip.get_or_insert(conn.peer.ip());
    }
    let body = std::mem::replace(rsp.body_mut(), ProxyBody::empty());
    *rsp.body_mut() = body.on_end(Box::new(move |end| {
        if let Some(v) = hold.verdict.take() {
            v.finish(end.failure);
        }
        // The endpoint's in-flight count and the cluster's slots last until the response body
        // ends. (The connection went back to the pool from the body itself, see `upstream::http1`.)
        drop(hold);
        record.finish(end);
    }));
    Ok(rsp)
}

async fn proxy(
    mut req: Request<Incoming>,
    conn: &ConnInfo,
    shared: &Arc<Shared>,
    snapshot: &Snapshot,
    pending: &mut Pending,
    request_id: &HeaderValue,
) -> Result<(Response<ProxyBody>, Hold), ProxyError> {
    // 1. Check what hyper let through but we refuse.
    let host = checks::check(&req, conn.listener.config.max_uri_bytes)?.map(str::to_owned);
    if let (Some(h), Some(e)) = (&host, pending.0.as_mut().and_then(|r| r.entry.as_mut())) {
        e.host.clone_from(h);
    }
    if let Some(via) = &snapshot.http.via
        && via_contains(req.headers(), via)
    {
        return Err(ProxyError::Loop);
    }

    // 2. Route.
    let route = snapshot
        .router
        .route(&RouteRequest {
            host: host.as_deref(),
            path: req.uri().path(),
            method: req.method(),
            headers: req.headers(),
        })
        .ok_or(ProxyError::NoRoute)?;
    let target = if route.targets.len() == 1 {
        0
    } else {
        route.pick_target(fastrand::u32(0..route.total_weight().max(1)))
    };
    let cluster = snapshot
        .route_targets
        .get(route.index)
        .and_then(|t| t.get(target))
        .ok_or(ProxyError::Internal)?;
    if let Some(r) = pending.0.as_mut() {
        r.route = Some(route.index);
    }
    // A cluster with nothing that can serve hands over to its fallback (if it names one).
    let cluster = serving(snapshot, cluster).ok_or(ProxyError::NoHealthyUpstream)?;
    if let Some(e) = pending.0.as_mut().and_then(|r| r.entry.as_mut()) {
        e.route = Some(route.name.to_string());
        e.cluster = Some(cluster.name.to_string());
    }
    // Overload: refused before any work for the request, lowest priority first.
    let admission = snapshot.route_policies.get(route.index);
    let priority = admission.map_or(Priority::Normal, |a| a.priority);
    let in_flight = shared
        .overload
        .admit(priority, &snapshot.config.overload, &snapshot.shed)
        .map_err(ProxyError::Shed)?;
    // 3. The upstream request: hop-by-hop out, forwarding headers in, route rewrites.
    let upgrade = upgrade_protocol(req.headers());
    // `TE: trailers` is hop-by-hop, but an upstream needs it to send trailers (gRPC above all);
    // it is restored below after stripping.
    let wants_trailers = req.headers().get_all(header::TE).iter().any(|v| {
        v.to_str()
            .is_ok_and(|s| s.to_ascii_lowercase().contains("trailers"))
    });
    let client_upgrade = upgrade.as_ref().map(|_| hyper::upgrade::on(&mut req));
    let (mut parts, body) = req.into_parts();
    strip_hop_by_hop(&mut parts.headers, upgrade.is_some())
        .map_err(|_| ProxyError::BadRequest("Connection names a header that frames the message"))?;
    let client_ip = apply_forwarding(
        &mut parts.headers,
        &ForwardingInfo {
            peer: conn.peer,
            scheme: if conn.tls { "https" } else { "http" },
            host: host.as_deref(),
            add_forwarded: snapshot.http.add_forwarded,
            via: snapshot.http.via.as_deref(),
            version: parts.version,
        },
        &snapshot.http.trusted,
    );
    if let Some(e) = pending.0.as_mut().and_then(|r| r.entry.as_mut()) {
        e.client_ip = Some(client_ip);
    }
    // The route's own admission: client networks, body size, rate limits (each refusal is
    // answered before anything reaches the upstream).
    let listener = &conn.listener.config;
    let max_body = admission
        .and_then(|a| a.max_body)
        .unwrap_or(listener.max_request_body_bytes);
    if let Some(a) = admission {
        if a.filter.as_ref().is_some_and(|f| !f.permits(client_ip)) {
            return Err(ProxyError::Forbidden);
        }
        if max_body > 0 && body.size_hint().lower() > max_body {
            return Err(ProxyError::PayloadTooLarge);
        }
        if !a.rate_limits.is_empty() {
            let input = KeyInput {
                client_ip,
                headers: &parts.headers,
                route: &route.name,
            };
            snapshot
                .rate_limits
                .check(&a.rate_limits, &input)
                .await
                .map_err(ProxyError::RateLimited)?;
        }
    }
    let hash = hash_of(cluster, &parts, client_ip);
    route.rewrite.apply_request_headers(&mut parts.headers);
    // The client's Host is kept as it was sent unless the route rewrites it (or it came as :authority).
    let upstream_host: Option<HeaderValue> = match route.rewrite.host() {
        Some(h) => Some(h.clone()),
        // An HTTP/2 client's `host` may differ from `:authority`, which routing used and wins.
        None if parts.headers.contains_key(header::HOST)
            && parts.version != Version::HTTP_2
            && cluster.protocol == UpstreamProtocol::Http1 =>
        {
            None
        }
        None => host.as_deref().and_then(|h| HeaderValue::from_str(h).ok()),
    };
    let path = match parts.uri.path_and_query() {
        Some(pq) => match route.rewrite.rewrite_path(pq.as_str()) {
            Some(new) => PathAndQuery::try_from(new)
                .map_err(|_| ProxyError::BadRequest("invalid request target"))?,
            None => pq.clone(),
        },
        None => PathAndQuery::from_static("/"),
    };
    let authority = upstream_host
        .as_ref()
        .or_else(|| parts.headers.get(header::HOST))
        .and_then(|h| h.to_str().ok());
    parts.uri = upstream_uri(cluster, path, authority)?;
    match cluster.protocol {
        UpstreamProtocol::Http1 => {
            parts.version = Version::HTTP_11;
            if let Some(h) = upstream_host {
                parts.headers.insert(header::HOST, h);
            }
        }
        UpstreamProtocol::H2 => {
            parts.version = Version::HTTP_2;
            parts.headers.remove(header::HOST);
        }
    }
    if wants_trailers {
        // The client accepts trailers: say so upstream, or an upstream may not send them.
        parts
            .headers
            .insert(header::TE, HeaderValue::from_static("trailers"));
    }
    let idempotent = parts.method.is_idempotent();
    let policy = &route.retry;
    let mut payload = if body.is_end_stream() {
        Payload::Empty
    } else {
        let idle = listener
            .request_body_timeout
            .get()
            .min(cluster.body_idle_timeout);
        let body = ProxyBody::streaming(body, idle).with_limits(RequestLimits {
            max_bytes: max_body,
            min_rate: listener.request_body_min_rate,
            grace: listener.request_body_timeout.get(),
            started: tokio::time::Instant::now(),
        });
        // The request body's size, for the access log (only counted when someone reads it).
        let body = match pending.0.as_mut().filter(|r| r.entry.is_some()) {
            Some(r) => {
                let counter = Arc::clone(r.bytes_in.get_or_insert_with(Default::default));
                body.on_end(Box::new(move |end| {
                    counter.store(end.bytes, Ordering::Relaxed);
                }))
            }
            None => body,
        };
        // A body that may fit the replay buffer is copied as it streams, so that a retry can
        // send it again; one known to be larger streams alone.
        let fits = body
            .size_hint()
            .exact()
            .is_none_or(|n| n <= policy.replay_buffer_bytes);
        if policy.attempts > 1 && fits {
            Payload::Replay(Replay::new(body, policy.replay_buffer_bytes))
        } else {
            Payload::Stream(Some(Box::new(body)))
        }
    };

    // 4. Pick an endpoint and forward; retry or hedge what the policy allows.
    // One clock read serves the retry budget's window, the route's deadline, the pool's idle
    // check and the upstream's latency (the microseconds spent building the request count towards
    // none of them).
    // A cluster with adaptive concurrency admits up to its learnt limit; the rest queue briefly,
    // critical first.
    let gate = match &cluster.adaptive {
        Some(a) => {
            if !a.may_queue(priority) {
                return Err(Overflow::AdaptiveQueueFull.error(&cluster.name));
            }
            let permit = a.gate.acquire(priority).await.map_err(|r| {
                match r {
                    Refused::QueueFull => Overflow::AdaptiveQueueFull,
                    Refused::Timeout => Overflow::AdaptiveQueueTimeout,
                    Refused::Evicted => Overflow::AdaptiveEvicted,
                }
                .error(&cluster.name)
            })?;
            a.record_queue_delay(permit.queued_for());
            shared.overload.record_queue_delay(permit.queued_for());
            Some((a, permit))
        }
        None => None,
    };
    let sent_at = Instant::now();
    let request_permit = cluster
        .limits
        .admit_request(sent_at)
        .map_err(|o| o.error(&cluster.name))?;
    let plan = attempt::Plan {
        cluster,
        parts: &parts,
        hash,
        policy,
        hedge: route.hedge.as_ref(),
        idempotent,
        deadline: tokio::time::Instant::from_std(sent_at) + route.timeout,
    };
    let answer = attempt::run(&plan, &mut payload, sent_at, |ep, n| {
        if let Some(e) = pending.0.as_mut().and_then(|r| r.entry.as_mut()) {
            e.upstream = Some(ep.id.to_string());
            e.attempts = n;
        }
    })
    .await;
    // The adaptive limit learns from every answer: a latency sample, or a loss when the upstream
    // failed or said it is overloaded.
    if let Some((a, permit)) = &gate {
        let now = Instant::now();
        match &answer {
            Ok(ok) if ok.sent.response.status() != StatusCode::SERVICE_UNAVAILABLE => {
                a.on_success(now, ok.upstream_time, permit.in_flight_at_start());
            }
            Err(e) if e.side() != Side::Upstream => {}
            _ => a.on_drop(now),
        }
    }
    let answer = answer?;
    if let Some(r) = pending.0.as_mut() {
        r.upstream_secs = Some(answer.upstream_time.as_secs_f64());
        if let Some(e) = r.entry.as_mut() {
            e.attempts = answer.attempts;
            if e.upstream.as_deref() != Some(&*answer.endpoint.id) {
                e.upstream = Some(answer.endpoint.id.to_string());
            }
        }
    }
    let hold = Hold {
        _gate: gate.map(|(_, p)| p),
        _overload: Some(in_flight),
        verdict: answer.verdict(cluster),
        _in_flight: Some(answer.in_flight),
        _request: Some(request_permit),
        _retry: answer.retry,
    };
    let sent = answer.sent;
    let response = sent.response;
    let status = response.status();

    // 5. The response: upgrade tunnel, hop-by-hop out, Via, rewrites, request id.
    let (mut parts, body) = response.into_parts();
    let tunnel = status == StatusCode::SWITCHING_PROTOCOLS;
    let body = match (tunnel, client_upgrade, body) {
        (false, _, body) => ProxyBody::upstream(body, cluster.body_idle_timeout),
        (true, Some(client), UpstreamBody::H1(body)) => {
            // Only a 101 answering the client's own Upgrade becomes a tunnel.
            let upstream = body.into_upgraded().ok_or(ProxyError::Internal)?;
            // From here the client connection is a tunnel: its request deadlines no longer apply.
            conn.activity.mark_upgraded();
            tokio::spawn(upgrade::tunnel(
                client,
                upstream,
                cluster.tunnel_idle_timeout,
            ));
            ProxyBody::empty()
        }
        // A 101 nobody asked for (or over HTTP/2, which has no such thing).
        (true, _, _) => return Err(ProxyError::UpstreamProtocol),
    };
    // Framed by Transfer-Encoding: a Content-Length beside it is stale (RFC 9112 §6.3) and would
    // make a truncated body look complete to the client (the connection is not reused either).
    if parts.headers.contains_key(header::TRANSFER_ENCODING) {
        parts.headers.remove(header::CONTENT_LENGTH);
    }
    if strip_hop_by_hop(&mut parts.headers, tunnel).is_err() {
        return Err(ProxyError::UpstreamProtocol);
    }
    if let Some(via) = &snapshot.http.via {
        append_via(&mut parts.headers, parts.version, via);
    }
    route.rewrite.apply_response_headers(&mut parts.headers);
    parts
        .headers
        .insert(snapshot.http.request_id_header.clone(), request_id.clone());
    parts.version = Version::HTTP_11;
    Ok((Response::from_parts(parts, body), hold))
}

/// The cluster that serves: `first`, or the first cluster down its `fallback` chain that has an
/// endpoint able to take traffic. `None` when none has (validation refuses loops; the bound is a
/// second guard).
fn serving<'a>(snapshot: &'a Snapshot, first: &'a Arc<Cluster>) -> Option<&'a Arc<Cluster>> {
    let mut cluster = first;
    for _ in 0..8 {
        if cluster.can_serve() {
            return Some(cluster);
        }
        let next = snapshot.clusters.get(cluster.fallback.as_deref()?)?;
        crate::metrics::degraded(&next.name, "fallback");
        tracing::debug!(cluster = %cluster.name, fallback = %next.name, "no endpoint can serve: using the fallback cluster");
        cluster = next;
    }
    None
}

fn last_resort_response(
    l: &LastResort,
    request_id: &HeaderValue,
    id_header: &http::HeaderName,
) -> Response<ProxyBody> {
    let mut rsp = Response::new(ProxyBody::full(l.body.clone()));
    *rsp.status_mut() = l.status;
    let h = rsp.headers_mut();
    h.insert(header::CONTENT_TYPE, l.content_type.clone());
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(id_header.clone(), request_id.clone());
    rsp
}

/// Origin-form for HTTP/1.1 upstreams; absolute (scheme + authority) for HTTP/2, which needs them.
fn upstream_uri(
    cluster: &Cluster,
    path: PathAndQuery,
    authority: Option<&str>,
) -> Result<Uri, ProxyError> {
    match cluster.protocol {
        UpstreamProtocol::Http1 => Ok(Uri::from(path)),
        UpstreamProtocol::H2 => {
            let scheme = if cluster.tls.is_some() {
                "https"
            } else {
                "http"
            };
            let authority = authority.unwrap_or("localhost");
            Uri::builder()
                .scheme(scheme)
                .authority(authority)
                .path_and_query(path)
                .build()
                .map_err(|_| ProxyError::BadRequest("invalid request target"))
        }
    }
}

/// The request's key for `balance = "hash"`; `client_ip` is the derived client (trusted proxies
/// skipped), so a fleet behind a load balancer still spreads by real client.
fn hash_of(
    cluster: &Cluster,
    req: &http::request::Parts,
    client_ip: std::net::IpAddr,
) -> Option<u64> {
    let key = cluster.hash_key.as_ref()?;
    match key {
        HashKey::ClientIp => Some(match client_ip {
            std::net::IpAddr::V4(v4) => fnv1a(&v4.octets()),
            std::net::IpAddr::V6(v6) => fnv1a(&v6.octets()),
        }),
        HashKey::Path => Some(fnv1a(req.uri.path().as_bytes())),
        HashKey::Header(name) => req.headers.get(name).map(|v| fnv1a(v.as_bytes())),
        HashKey::Cookie(name) => req
            .headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find_map(|c| {
                c.split(';').find_map(|kv| {
                    let (k, v) = kv.trim().split_once('=')?;
                    (k == name).then(|| fnv1a(v.as_bytes()))
                })
            }),
    }
}

fn protocol_name(v: Version) -> &'static str {
    match v {
        Version::HTTP_09 => "HTTP/0.9",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_11 => "HTTP/1.1",
        Version::HTTP_2 => "HTTP/2",
        Version::HTTP_3 => "HTTP/3",
        _ => "-",
    }
}
