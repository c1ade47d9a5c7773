//! `Cluster` and `Endpoint`: the runtime form of `[clusters.NAME]`.
//!
//! An endpoint's identity is its cluster, its configured address and the IP it resolved to; that
//! identity is stable, so the state that outlives a config snapshot (pool, live stats, and later health)
//! can be carried across reloads and DNS changes by looking it up. The endpoint list and its balancer
//! change together (one `ArcSwap`), because a balancer's state is only meaningful for its list.
//! This module does not send requests (`forward.rs`) nor open connections (`connect.rs`).

use std::{
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use arc_swap::ArcSwap;
use rustls_pki_types::ServerName;

use super::{
    balancer::{BalanceKind, Balancer, Candidate, PickContext},
    pool::Pool,
    stats::EndpointStats,
};
use crate::config::{BalanceConfig, ClusterConfig, UpstreamProtocol};

/// One address to send requests to.
#[derive(Debug)]
pub struct Endpoint {
    /// Stable identity: `address` as configured, plus `@ip:port` when it was a DNS name.
    pub id: Arc<str>,
    pub addr: SocketAddr,
    /// The configured host part (for SNI and `/clusters`).
    pub host: Arc<str>,
    pub weight: u32,
    pub stats: Arc<EndpointStats>,
    pub pool: Pool,
    pub metrics: crate::metrics::UpstreamMetrics,
    identity_hash: u64,
}

impl Endpoint {
    pub fn new(
        cluster: &str,
        id: Arc<str>,
        addr: SocketAddr,
        host: Arc<str>,
        weight: u32,
        pool: Pool,
        now: Instant,
    ) -> Self {
        let identity_hash = fnv1a(id.as_bytes());
        let metrics = crate::metrics::UpstreamMetrics::new(cluster, &id);
        Self {
            id,
            addr,
            host,
            weight,
            stats: Arc::new(EndpointStats::new(now)),
            pool,
            metrics,
            identity_hash,
        }
    }
}

impl Candidate for Arc<Endpoint> {
    fn weight(&self) -> u32 {
        self.weight
    }
    fn in_flight(&self) -> u32 {
        self.stats.in_flight()
    }
    fn load_cost(&self, now: Instant) -> f64 {
        self.stats.load_cost(now)
    }
    fn identity_hash(&self) -> u64 {
        self.identity_hash
    }
}

/// FNV-1a: a stable (across processes and versions) hash for identities and hash keys, so that
/// consistent hashing maps a key the same way on every instance of a fleet.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// The endpoints and the balancer built for exactly them.
#[derive(Debug)]
pub struct Members {
    pub endpoints: Vec<Arc<Endpoint>>,
    pub balancer: Balancer,
}

impl std::fmt::Debug for Balancer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Balancer")
    }
}

/// What the request's hash key is read from (`balance = "hash"`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashKey {
    ClientIp,
    Path,
    Header(http::HeaderName),
    Cookie(String),
}

impl HashKey {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "client_ip" => Some(Self::ClientIp),
            "path" => Some(Self::Path),
            _ => {
                if let Some(h) = s.strip_prefix("header:") {
                    http::HeaderName::from_bytes(h.as_bytes())
                        .ok()
                        .map(Self::Header)
                } else {
                    s.strip_prefix("cookie:")
                        .map(|c| Self::Cookie(c.to_owned()))
                }
            }
        }
    }
}

/// Upstream TLS as the cluster uses it.
#[derive(Debug, Clone)]
pub struct UpstreamTls {
    pub config: Arc<rustls::ClientConfig>,
    /// Fixed SNI; otherwise the endpoint's host name.
    pub sni: Option<ServerName<'static>>,
}

#[derive(Debug)]
pub struct Cluster {
    pub name: Arc<str>,
    pub protocol: UpstreamProtocol,
    pub connect_timeout: Duration,
    pub response_header_timeout: Option<Duration>,
    pub body_idle_timeout: Duration,
    pub tunnel_idle_timeout: Duration,
    pub hash_key: Option<HashKey>,
    pub tls: Option<UpstreamTls>,
    pub dns_refresh: Duration,
    pub kind: BalanceKind,
    pub hash_balance_factor: f64,
    /// The configured endpoints (host:port, weight) that DNS refresh re-resolves.
    pub specs: Vec<(String, u32)>,
    members: ArcSwap<Members>,
}

impl Cluster {
    pub fn new(
        name: &str,
        cfg: &ClusterConfig,
        tls: Option<UpstreamTls>,
        endpoints: Vec<Arc<Endpoint>>,
    ) -> Self {
        let kind = balance_kind(cfg.balance);
        let balancer = Balancer::new(kind, &endpoints, cfg.hash_balance_factor);
        Self {
            name: name.into(),
            protocol: cfg.protocol,
            connect_timeout: cfg.connect_timeout.get(),
            response_header_timeout: cfg.response_header_timeout.map(|d| d.get()),
            body_idle_timeout: cfg.body_idle_timeout.get(),
            tunnel_idle_timeout: cfg.tunnel_idle_timeout.get(),
            hash_key: cfg.hash_key.as_deref().and_then(HashKey::parse),
            tls,
            dns_refresh: cfg.dns_refresh.get(),
            kind,
            hash_balance_factor: cfg.hash_balance_factor,
            specs: cfg
                .endpoints
                .iter()
                .map(|e| (e.address().to_owned(), e.weight()))
                .collect(),
            members: ArcSwap::from_pointee(Members {
                endpoints,
                balancer,
            }),
        }
    }

    /// The balancer as written in the config.
    pub fn balance_name(&self) -> &'static str {
        match self.kind {
            BalanceKind::RoundRobin => "round_robin",
            BalanceKind::LeastRequest => "least_request",
            BalanceKind::PeakEwma => "peak_ewma",
            BalanceKind::Random => "random",
            BalanceKind::Hash => "hash",
        }
    }

    pub fn members(&self) -> Arc<Members> {
        self.members.load_full()
    }

    /// Replaces the endpoint list (DNS changed), rebuilding the balancer for it.
    pub fn set_endpoints(&self, endpoints: Vec<Arc<Endpoint>>) {
        let balancer = Balancer::new(self.kind, &endpoints, self.hash_balance_factor);
        self.members.store(Arc::new(Members {
            endpoints,
            balancer,
        }));
    }

    /// Chooses an endpoint, avoiding `exclude` (ids already tried by this request).
    pub fn pick(
        &self,
        members: &Members,
        hash: Option<u64>,
        exclude: &[usize],
        now: Instant,
    ) -> Option<usize> {
        RNG.with(|rng| {
            let mut rng = rng.borrow_mut();
            members.balancer.pick(
                &members.endpoints,
                &PickContext {
                    hash_key: hash,
                    exclude,
                },
                now,
                &mut rng,
            )
        })
    }
}

thread_local! {
    static RNG: std::cell::RefCell<fastrand::Rng> = std::cell::RefCell::new(fastrand::Rng::new());
}

pub fn balance_kind(b: BalanceConfig) -> BalanceKind {
    match b {
        BalanceConfig::RoundRobin => BalanceKind::RoundRobin,
        BalanceConfig::LeastRequest => BalanceKind::LeastRequest,
        BalanceConfig::PeakEwma => BalanceKind::PeakEwma,
        BalanceConfig::Random => BalanceKind::Random,
        BalanceConfig::Hash => BalanceKind::Hash,
    }
}
