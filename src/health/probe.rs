//! One active health probe against one endpoint: a TCP (and TLS) connect, or an HTTP request whose
//! status and, optionally, body are judged. It goes through the same connect and client code as
//! live traffic, so a probe fails exactly when a request would (TLS verification included).
//!
//! What a result does to the endpoint is `active`'s business; when probes run is the health task's.

use std::{sync::Arc, time::Duration};

use bytes::Bytes;
use http::{HeaderValue, Method, Request, header, uri::PathAndQuery};
use http_body_util::BodyExt;

use crate::{
    body::ProxyBody,
    config::{HealthCheckConfig, ProbeKind, UpstreamProtocol, status_ranges},
    error::ProxyError,
    upstream::{
        cluster::{Cluster, Endpoint},
        connect::{Fresh, connect_within},
        forward::{UpstreamBody, respond},
        http1,
    },
};

/// Largest probe response body read when `body_contains` is set.
const MAX_PROBE_BODY: usize = 64 * 1024;

/// A probe, compiled from `[clusters.NAME.health_check]`.
#[derive(Debug, Clone)]
pub struct ProbeSpec {
    pub http: Option<HttpProbe>,
    pub timeout: Duration,
    /// Draw the connection from (and return it to) the endpoint's pool instead of opening one.
    pub reuse_connection: bool,
}

#[derive(Debug, Clone)]
pub struct HttpProbe {
    pub method: Method,
    pub path: PathAndQuery,
    pub host: Option<HeaderValue>,
    /// Inclusive ranges of passing statuses.
    pub statuses: Vec<(u16, u16)>,
    pub body_contains: Option<Bytes>,
}

impl ProbeSpec {
    /// `None` when the config is invalid (validation has refused it already).
    pub fn from_config(c: &HealthCheckConfig) -> Option<Self> {
        let http = match c.kind {
            ProbeKind::Tcp => None,
            ProbeKind::Http => Some(HttpProbe {
                method: Method::from_bytes(c.method.as_bytes()).ok()?,
                path: PathAndQuery::try_from(c.path.as_str()).ok()?,
                host: match &c.host {
                    Some(h) => Some(HeaderValue::from_str(h).ok()?),
                    None => None,
                },
                statuses: status_ranges(&c.expected_statuses).ok()?,
                body_contains: c
                    .body_contains
                    .as_ref()
                    .map(|s| Bytes::copy_from_slice(s.as_bytes())),
            }),
        };
        Some(Self {
            http,
            timeout: c.timeout.get(),
            reuse_connection: c.reuse_connection,
        })
    }
}

/// Runs one probe. `Err` carries what an operator wants to read in `/clusters` and the log
/// (`"HTTP 503"`, `"connect refused"`, `"timeout"`), never more.
pub async fn probe(cluster: &Cluster, ep: &Arc<Endpoint>, spec: &ProbeSpec) -> Result<(), String> {
    match tokio::time::timeout(spec.timeout, run(cluster, ep, spec)).await {
        Ok(r) => r,
        Err(_) => Err("timeout".into()),
    }
}

async fn run(cluster: &Cluster, ep: &Arc<Endpoint>, spec: &ProbeSpec) -> Result<(), String> {
    let Some(http) = &spec.http else {
        return connect_within(cluster, ep, spec.timeout)
            .await
            .map(drop)
            .map_err(|e| connect_detail(&e));
    };
    let mut req = Request::new(ProxyBody::empty());
    *req.method_mut() = http.method.clone();
    let host = match &http.host {
        Some(h) => h.clone(),
        None => HeaderValue::from_str(&host_header(ep)).map_err(|_| "bad host".to_owned())?,
    };
    req.headers_mut().insert(
        header::USER_AGENT,
        HeaderValue::from_static("palisade-health-check"),
    );
    let status;
    let body = match cluster.protocol {
        UpstreamProtocol::Http1 => {
            *req.uri_mut() = http.path.clone().into();
            req.headers_mut().insert(header::HOST, host);
            if !spec.reuse_connection {
                // A fresh connection per probe; nobody will use it again.
                req.headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            let pooled = if spec.reuse_connection {
                ep.pool.checkout(std::time::Instant::now())
            } else {
                None
            };
            let mut conn = match pooled {
                Some(c) => c,
                None => match connect_within(cluster, ep, spec.timeout).await {
                    Ok(Fresh::H1(c)) => c,
                    Ok(Fresh::H2(_)) => return Err("protocol mismatch".into()),
                    Err(e) => return Err(connect_detail(&e)),
                },
            };
            let (parts, body) = req.into_parts();
            let mut head = std::mem::take(&mut conn.wbuf);
            head.clear();
            let framing = http1::encode_head(&parts, &body, &mut head);
            let mut outgoing = http1::Outgoing::new(body, framing);
            conn.wbuf = head;
            let mut sent_all = true;
            let head = http1::exchange(
                &mut conn,
                parts.method == Method::HEAD,
                &mut outgoing,
                &mut sent_all,
            )
            .await
            .map_err(|e| match e {
                http1::SendError::Invalid(_) => "invalid response".to_owned(),
                _ => "connection closed".to_owned(),
            })?;
            let sent = respond(conn, head, outgoing, sent_all, ep);
            status = sent.response.status();
            sent.response.into_body()
        }
        UpstreamProtocol::H2 => {
            let scheme = if cluster.tls.is_some() {
                "https"
            } else {
                "http"
            };
            *req.uri_mut() = http::Uri::builder()
                .scheme(scheme)
                .authority(host.to_str().unwrap_or("localhost"))
                .path_and_query(http.path.clone())
                .build()
                .map_err(|_| "bad probe target".to_owned())?;
            *req.version_mut() = http::Version::HTTP_2;
            let pooled = if spec.reuse_connection {
                ep.pool.h2()
            } else {
                None
            };
            let mut sender = match pooled {
                Some(s) => s,
                None => match connect_within(cluster, ep, spec.timeout).await {
                    Ok(Fresh::H2(s)) => s,
                    Ok(Fresh::H1(_)) => return Err("protocol mismatch".into()),
                    Err(e) => return Err(connect_detail(&e)),
                },
            };
            sender
                .ready()
                .await
                .map_err(|_| "connection closed".to_owned())?;
            let rsp = sender
                .send_request(req)
                .await
                .map_err(|_| "connection closed".to_owned())?;
            status = rsp.status();
            UpstreamBody::H2(rsp.into_body())
        }
    };
    let code = status.as_u16();
    if !http
        .statuses
        .iter()
        .any(|&(lo, hi)| (lo..=hi).contains(&code))
    {
        return Err(format!("HTTP {code}"));
    }
    // The body is read too (its first 64 KiB): an upstream that sends a head and then dies
    // mid-body fails its clients, so it fails its probe.
    let bytes = read_body(body)
        .await
        .map_err(|()| format!("HTTP {code}, body failed"))?;
    if let Some(needle) = &http.body_contains
        && !contains(&bytes, needle)
    {
        return Err(format!("HTTP {code}, body lacks the expected text"));
    }
    Ok(())
}

/// The body's first `MAX_PROBE_BODY` bytes; a body that fails before its end or that limit is an
/// error, a longer one is simply not read further.
async fn read_body(body: UpstreamBody) -> Result<Vec<u8>, ()> {
    let mut body = ProxyBody::upstream(body, Duration::from_secs(3600));
    let mut out = Vec::new();
    while out.len() < MAX_PROBE_BODY {
        match body.frame().await {
            None => break,
            Some(Err(_)) => return Err(()),
            Some(Ok(f)) => {
                if let Ok(d) = f.into_data() {
                    out.extend_from_slice(&d);
                }
            }
        }
    }
    Ok(out)
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || hay.windows(needle.len()).any(|w| w == needle)
}

/// `host[:port]` for the Host header: the configured host name, with the port unless it is the
/// scheme's default.
fn host_header(ep: &Endpoint) -> String {
    let port = ep.addr.port();
    let host: &str = &ep.host;
    let host = if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]")
    } else {
        host.to_owned()
    };
    if port == 80 || port == 443 {
        host
    } else {
        format!("{host}:{port}")
    }
}

fn connect_detail(e: &ProxyError) -> String {
    match e {
        ProxyError::ConnectRefused => "connect refused",
        ProxyError::ConnectTimeout => "connect timeout",
        ProxyError::UpstreamTls => "TLS handshake failed",
        _ => "connect failed",
    }
    .to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_search() {
        assert!(contains(b"status: ok\n", b"ok"));
        assert!(!contains(b"status: degraded", b"ok\n"));
        assert!(contains(b"", b""));
        assert!(!contains(b"o", b"ok"));
    }

    #[test]
    fn spec_from_config() {
        let c = HealthCheckConfig {
            path: "/healthz?deep=1".into(),
            expected_statuses: vec!["200".into(), "300-301".into()],
            body_contains: Some("ok".into()),
            ..HealthCheckConfig::default()
        };
        let s = ProbeSpec::from_config(&c).unwrap();
        let h = s.http.unwrap();
        assert_eq!(h.path.as_str(), "/healthz?deep=1");
        assert_eq!(h.statuses, vec![(200, 200), (300, 301)]);
        assert_eq!(h.body_contains.as_deref(), Some(&b"ok"[..]));
        let tcp = ProbeSpec::from_config(&HealthCheckConfig {
            kind: ProbeKind::Tcp,
            ..HealthCheckConfig::default()
        })
        .unwrap();
        assert!(tcp.http.is_none());
    }
}
