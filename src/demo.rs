//! `palisade demo`: three small upstreams in-process and Palisade in front of them, so a newcomer
//! sees routing and load balancing within seconds of the build.
//!
//! The upstreams answer with their name (a header and the body), echo request headers on `/echo`,
//! and sleep on `/slow?ms=N`. This module owns the demo only; nothing else depends on it.

use std::{convert::Infallible, net::SocketAddr, time::Duration};

use bytes::Bytes;
use http::{Request, Response, header};
use http_body_util::Full;
use hyper::{body::Incoming, service::service_fn};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::{
    config::{self, EndpointConfig, EndpointSpec, Source},
    server::Running,
};

const TEMPLATE: &str = include_str!("demo.toml");

/// The embedded config with the requested addresses (endpoints are placeholders until `fill`).
pub fn source(listen: &str, admin: &str) -> Source {
    let text = TEMPLATE
        .replace(
            "listen = \"127.0.0.1:8080\"",
            &format!("listen = {listen:?}"),
        )
        .replace(
            "listen = \"127.0.0.1:9901\"",
            &format!("listen = {admin:?}"),
        );
    config::parse(&text, ".".into()).unwrap_or_else(|e| Source {
        config: config::Config::default(),
        base_dir: ".".into(),
        text: e.to_string(),
    })
}

/// The three running demo upstreams.
#[derive(Debug)]
pub struct Upstreams {
    pub addrs: Vec<SocketAddr>,
}

impl Upstreams {
    pub async fn start() -> std::io::Result<Self> {
        let mut addrs = Vec::new();
        for n in 1..=3 {
            let listener = TcpListener::bind("127.0.0.1:0").await?;
            addrs.push(listener.local_addr()?);
            tokio::spawn(serve(listener, n));
        }
        Ok(Self { addrs })
    }

    /// Points the config's placeholder endpoints (`127.0.0.1:1..3`) at the real upstreams.
    pub fn fill(&self, mut source: Source) -> Source {
        for c in source.config.clusters.values_mut() {
            for e in &mut c.endpoints {
                let n: usize = e
                    .address()
                    .rsplit(':')
                    .next()
                    .and_then(|p| p.parse().ok())
                    .unwrap_or(1);
                let addr = self
                    .addrs
                    .get(n.saturating_sub(1))
                    .map_or_else(String::new, ToString::to_string);
                *e = EndpointConfig::Detailed(EndpointSpec {
                    address: addr,
                    weight: e.weight(),
                    priority: e.priority(),
                    zone: e.zone().map(str::to_owned),
                });
            }
        }
        source
    }
}

async fn serve(listener: TcpListener, n: usize) {
    let name = ["", "alpha", "bravo", "charlie"]
        .get(n)
        .copied()
        .unwrap_or("demo");
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        tokio::spawn(async move {
            let svc = service_fn(move |req: Request<Incoming>| async move {
                Ok::<_, Infallible>(answer(&req, n, name).await)
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .with_upgrades()
                .await;
        });
    }
}

async fn answer(req: &Request<Incoming>, n: usize, name: &str) -> Response<Full<Bytes>> {
    let path = req.uri().path();
    let body = if path == "/echo" {
        let headers: serde_json::Map<String, serde_json::Value> = req
            .headers()
            .iter()
            .map(|(k, v)| {
                (
                    k.to_string(),
                    serde_json::Value::from(String::from_utf8_lossy(v.as_bytes()).into_owned()),
                )
            })
            .collect();
        serde_json::to_string_pretty(&serde_json::json!({ "upstream": name, "method": req.method().as_str(), "uri": req.uri().to_string(), "headers": headers }))
            .unwrap_or_default()
            + "\n"
    } else {
        if path == "/slow" {
            let ms = req
                .uri()
                .query()
                .and_then(|q| q.strip_prefix("ms="))
                .and_then(|v| v.parse().ok())
                .unwrap_or(500u64);
            tokio::time::sleep(Duration::from_millis(ms.min(60_000))).await;
        }
        format!(
            "upstream {n} ({name}) answered {} {}\n",
            req.method(),
            req.uri()
        )
    };
    let mut rsp = Response::new(Full::new(Bytes::from(body)));
    rsp.headers_mut().insert(
        "x-demo-upstream",
        http::HeaderValue::from_static(match n {
            1 => "alpha",
            2 => "bravo",
            _ => "charlie",
        }),
    );
    rsp.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    rsp
}

/// What to try, printed once the demo is live.
pub fn print_tour(running: &Running) {
    let web = running
        .addr("web")
        .map_or_else(|| "127.0.0.1:8080".to_owned(), |a| a.to_string());
    let admin = running.admin;
    println!(
        "\nPalisade demo is live: proxy on http://{web}, admin on http://{admin}\n\n\
         Try:\n\
         \x20 for i in 1 2 3 4 5 6; do curl -s http://{web}/; done      # round robin over alpha, bravo, charlie\n\
         \x20 curl -s http://{web}/api/users                            # route \"api\": prefix stripped, least_request\n\
         \x20 curl -s http://{web}/echo                                 # what the upstream received (X-Forwarded-For, Via, X-Request-Id)\n\
         \x20 curl -s -H 'x-canary: 1' http://{web}/                     # a 50/50 split between two clusters\n\
         \x20 curl -s http://{web}/slow?ms=300                           # a slow upstream answer\n\
         \x20 curl -s http://{admin}/clusters                           # every endpoint's live stats\n\
         \x20 curl -s http://{admin}/metrics | grep palisade_requests     # Prometheus metrics\n\
         \x20 curl -s http://{admin}/server_info\n\n\
         Access log lines (JSON) follow below. Ctrl-C drains and exits.\n"
    );
}
