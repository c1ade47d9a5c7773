//! `palisade demo`: three upstreams in-process and Palisade in front of them, so a newcomer sees
//! routing, load balancing and failover within seconds of the build.
//!
//! The upstreams are the chaos kit's (`crate::chaos`): they answer with their name, echo request
//! headers on `/echo`, sleep on `/slow?ms=N`, and can be told to fail in every way (and heal)
//! through a small control API, so failover can be watched in `/clusters` and a curl loop. This
//! module owns the demo only; nothing else depends on it.

use std::net::SocketAddr;

use crate::{
    chaos::{ChaosUpstream, Control},
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

/// The three running demo upstreams and the control API that breaks and heals them.
#[derive(Debug)]
pub struct Upstreams {
    pub addrs: Vec<SocketAddr>,
    /// Where faults are switched (`POST /bravo/hang`).
    pub control: SocketAddr,
    _upstreams: Vec<ChaosUpstream>,
    _control: Control,
}

impl Upstreams {
    /// Starts alpha, bravo and charlie on ephemeral ports and the fault control API on `control`.
    pub async fn start(control: SocketAddr) -> std::io::Result<Self> {
        let mut upstreams = Vec::new();
        for name in ["alpha", "bravo", "charlie"] {
            upstreams
                .push(ChaosUpstream::start(name, SocketAddr::from(([127, 0, 0, 1], 0))).await?);
        }
        let ctl = Control::start(control, upstreams.clone()).await?;
        Ok(Self {
            addrs: upstreams.iter().map(ChaosUpstream::addr).collect(),
            control: ctl.addr(),
            _upstreams: upstreams,
            _control: ctl,
        })
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
        // The history keeps the text, and a rollback parses it: it must name the real upstreams.
        if let Ok(text) = toml::to_string(&source.config) {
            source.text = text;
        }
        source
    }
}

/// What to try, printed once the demo is live.
pub fn print_tour(running: &Running, upstreams: &Upstreams) {
    let control = upstreams.control;
    let bravo = upstreams
        .addrs
        .get(1)
        .map_or_else(|| "ADDR".to_owned(), ToString::to_string);
    let web = running
        .addr("web")
        .map_or_else(|| "127.0.0.1:8080".to_owned(), |a| a.to_string());
    let admin = running.admin;
    println!(
        "\nPalisade demo is live: proxy on http://{web}, admin on http://{admin}\n\
         Fault control for the demo upstreams on http://{control}\n\n\
         Try:\n\
         \x20 for i in 1 2 3 4 5 6; do curl -s http://{web}/; done      # round robin over alpha, bravo, charlie\n\
         \x20 curl -s http://{web}/api/users                            # route \"api\": prefix stripped, least_request\n\
         \x20 curl -s http://{web}/echo                                 # what the upstream received (X-Forwarded-For, Via, X-Request-Id)\n\
         \x20 curl -s -H 'x-canary: 1' http://{web}/                     # a 50/50 split between two clusters\n\
         \x20 curl -s http://{web}/slow?ms=300                           # a slow upstream answer\n\
         \x20 curl -s http://{admin}/clusters                           # every endpoint's health, ejections, live stats\n\
         \x20 curl -s http://{admin}/metrics | grep palisade_requests     # Prometheus metrics\n\n\
         Watch failover: keep a loop running in another terminal,\n\
         \x20 while true; do curl -s -o /dev/null -w '%{{http_code}} ' http://{web}/; sleep 0.1; done\n\
         then break an upstream (refuse, hang, slow=500ms, 5xx, reset, flaky=30) and heal it:\n\
         \x20 curl -s -X POST http://{control}/bravo/hang                # clients keep getting 200: retried, then bravo is out\n\
         \x20 curl -s http://{admin}/clusters                           # bravo: unhealthy / ejected, and why\n\
         \x20 curl -s -X POST http://{control}/bravo/ok                  # back after its health checks pass, ramping up\n\
         \x20 curl -s -X POST http://{admin}/clusters/web/endpoints/{bravo}/drain   # take bravo out by hand (then .../auto)\n\n\
         Access log lines (JSON) follow below. Ctrl-C drains and exits.\n"
    );
}
