//! `Cluster` and `Endpoint`: the runtime form of `[clusters.NAME]`.
//!
//! An endpoint's identity is its cluster, its configured address and the IP it resolved to; that
//! identity is stable, so the state that outlives a config snapshot (pool, live stats, and later health)
//! can be carried across reloads and DNS changes by looking it up. The endpoint list and its balancer
//! change together (one `ArcSwap`), because a balancer's state is only meaningful for its list.
//! This module does not send requests (`forward.rs`) nor open connections (`connect.rs`).

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU32, Ordering},
    },
    time::{Duration, Instant},
};

use arc_swap::ArcSwap;
use rustls_pki_types::ServerName;
use tokio::sync::Notify;

use super::{
    balancer::{BalanceKind, Balancer, Candidate, PickContext},
    latency::LatencyHistogram,
    limits::Limits,
    pool::Pool,
    priority::{self, MemberView, Plan, PlanConfig},
    stats::EndpointStats,
};
use crate::{
    config::{BalanceConfig, ClusterConfig, UpstreamProtocol},
    health::{
        self,
        endpoint::{AdminMode, EndpointHealth},
    },
};

/// Balancers see weights in hundredths, so that slow start can ramp even a weight-1 endpoint
/// smoothly (integer weights could only jump from 1 to 1).
pub const WEIGHT_SCALE: u32 = 100;

/// What the config says about one endpoint, kept so DNS refresh can re-create its endpoints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spec {
    /// `host:port` as configured.
    pub address: String,
    pub weight: u32,
    pub priority: u8,
    pub zone: Option<Arc<str>>,
    /// The cluster's `limits.max_connections_per_endpoint` (0 = none).
    pub max_connections: u32,
}

impl Spec {
    pub fn from_config(e: &crate::config::EndpointConfig, cluster: &ClusterConfig) -> Self {
        Self {
            address: e.address().to_owned(),
            weight: e.weight(),
            priority: e.priority(),
            zone: e.zone().map(Arc::from),
            max_connections: cluster.limits.max_connections_per_endpoint,
        }
    }
}

/// One address to send requests to.
#[derive(Debug)]
pub struct Endpoint {
    /// Stable identity: `address` as configured, plus `@ip:port` when it was a DNS name.
    pub id: Arc<str>,
    pub addr: SocketAddr,
    /// The configured host part (for SNI and `/clusters`).
    pub host: Arc<str>,
    pub weight: u32,
    /// Failover tier (0 = primary).
    pub priority: u8,
    pub zone: Option<Arc<str>>,
    /// `weight` scaled by slow start: what the balancers read. Written by the health task.
    effective_weight: AtomicU32,
    /// This endpoint's connection cap, when it has one (`limits.max_connections_per_endpoint`).
    pub connection_slots: Option<Arc<tokio::sync::Semaphore>>,
    max_connections: u32,
    pub stats: Arc<EndpointStats>,
    /// Shared with the endpoint it replaces on reload (`carried_over`), like `stats` and `pool`.
    pub health: Arc<EndpointHealth>,
    pub pool: Arc<Pool>,
    pub metrics: crate::metrics::UpstreamMetrics,
    identity_hash: u64,
}

impl Endpoint {
    pub fn new(
        cluster: &str,
        spec: &Spec,
        id: Arc<str>,
        addr: SocketAddr,
        pool: Pool,
        active_checks: bool,
        now: Instant,
    ) -> Self {
        let identity_hash = fnv1a(id.as_bytes());
        let metrics = crate::metrics::UpstreamMetrics::new(cluster, &id);
        let host = crate::config::validate::split_host_port(&spec.address)
            .map_or(spec.address.as_str(), |(h, _)| h);
        Self {
            id,
            addr,
            host: host.into(),
            weight: spec.weight,
            priority: spec.priority,
            zone: spec.zone.clone(),
            effective_weight: AtomicU32::new(spec.weight.max(1).saturating_mul(WEIGHT_SCALE)),
            connection_slots: (spec.max_connections > 0)
                .then(|| Arc::new(tokio::sync::Semaphore::new(spec.max_connections as usize))),
            max_connections: spec.max_connections,
            stats: Arc::new(EndpointStats::new(now)),
            health: Arc::new(EndpointHealth::new(now, active_checks)),
            pool: Arc::new(pool),
            metrics,
            identity_hash,
        }
    }

    /// The same endpoint under a changed `spec` (weight, tier, zone or connection cap): what it
    /// has learnt (health, ejection, statistics, latency) and its pooled connections carry over,
    /// so a weight change does not make a known-bad host look new. `pool`: a fresh pool when the
    /// pool settings changed, else `None` to keep the old one.
    pub fn carried_over(old: &Self, spec: &Spec, pool: Option<Pool>) -> Self {
        Self {
            id: Arc::clone(&old.id),
            addr: old.addr,
            host: Arc::clone(&old.host),
            weight: spec.weight,
            priority: spec.priority,
            zone: spec.zone.clone(),
            // The health task rescales it (slow start) at its next step.
            effective_weight: AtomicU32::new(spec.weight.max(1).saturating_mul(WEIGHT_SCALE)),
            connection_slots: if spec.max_connections == old.max_connections {
                old.connection_slots.clone()
            } else {
                (spec.max_connections > 0)
                    .then(|| Arc::new(tokio::sync::Semaphore::new(spec.max_connections as usize)))
            },
            max_connections: spec.max_connections,
            stats: Arc::clone(&old.stats),
            health: Arc::clone(&old.health),
            pool: pool.map_or_else(|| Arc::clone(&old.pool), Arc::new),
            metrics: old.metrics.clone(),
            identity_hash: old.identity_hash,
        }
    }

    /// Whether this very endpoint can stand for `spec` in a new config (else `carried_over`).
    pub fn matches(&self, spec: &Spec) -> bool {
        self.weight == spec.weight
            && self.priority == spec.priority
            && self.zone == spec.zone
            && self.max_connections == spec.max_connections
    }

    /// The weight balancers use now, in hundredths (slow start lowers it for a while).
    pub fn effective_weight(&self) -> u32 {
        self.effective_weight.load(Ordering::Relaxed)
    }

    pub fn set_effective_weight(&self, w: u32) {
        self.effective_weight.store(w.max(1), Ordering::Relaxed);
    }
}

impl Candidate for Arc<Endpoint> {
    fn weight(&self) -> u32 {
        self.effective_weight()
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

/// An endpoint as the hash ring sees it: its configured weight.
struct ConfigWeight<'a>(&'a Arc<Endpoint>);

impl Candidate for ConfigWeight<'_> {
    fn weight(&self) -> u32 {
        self.0.weight
    }
    fn in_flight(&self) -> u32 {
        self.0.in_flight()
    }
    fn load_cost(&self, now: Instant) -> f64 {
        self.0.load_cost(now)
    }
    fn identity_hash(&self) -> u64 {
        self.0.identity_hash
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

/// The endpoints and how requests are spread over them right now: the routing plan (which tiers
/// and zones take what share, built from health) and one balancer per group of the plan. Rebuilt as
/// a whole when health or the endpoint list changes, so a request sees one consistent picture.
#[derive(Debug)]
pub struct Members {
    pub endpoints: Vec<Arc<Endpoint>>,
    pub plan: Plan,
    /// Parallel to `plan.groups`.
    groups: Vec<GroupBalancer>,
}

#[derive(Debug)]
struct GroupBalancer {
    /// The group's endpoints, in `Plan` order (`global[i]` is `endpoints[i]`'s index in `Members`).
    endpoints: Vec<Arc<Endpoint>>,
    global: Vec<usize>,
    balancer: Balancer,
}

impl std::fmt::Debug for Balancer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Balancer")
    }
}

impl Members {
    /// How many endpoints could take a request now (for `/clusters` and logs).
    pub fn routable(&self) -> usize {
        self.groups.iter().map(|g| g.endpoints.len()).sum()
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
    /// The configured endpoints that DNS refresh re-resolves.
    pub specs: Vec<Spec>,
    /// Active checks, outlier detection, slow start.
    pub health: health::Settings,
    /// How tiers, zones and panic mode shape the plan.
    pub plan_config: PlanConfig,
    /// This instance's zone, when set: endpoints in it are preferred.
    pub local_zone: Option<Arc<str>>,
    /// The cluster used when this one has no endpoint that can serve.
    pub fallback: Option<Arc<str>>,
    /// Caps that answer 503 at once, and the retry budget.
    pub limits: Limits,
    /// Wakes the health task (an endpoint just crossed a failure threshold, or the operator acted).
    pub wake: Notify,
    /// Recent response-head latencies (a hedge's `p95`), recorded only when `track_latency`;
    /// shared with the cluster of the same name in the previous snapshot, so a reload keeps it.
    pub latency: Arc<LatencyHistogram>,
    /// Set at compile when a route hedges on this cluster's quantile.
    pub track_latency: AtomicBool,
    /// The in-flight limit that follows the upstream's latency, when `adaptive_concurrency` is set.
    pub adaptive: Option<Arc<crate::overload::Adaptive>>,
    /// Whether the last plan was in panic mode (so the change is logged once, not per rebuild).
    panic: AtomicBool,
    members: ArcSwap<Members>,
}

impl Cluster {
    pub fn new(
        name: &str,
        cfg: &ClusterConfig,
        local_zone: Option<&str>,
        tls: Option<UpstreamTls>,
        endpoints: Vec<Arc<Endpoint>>,
    ) -> Self {
        let kind = balance_kind(cfg.balance);
        let plan_config = PlanConfig {
            // Validation bounds it to 1.0..=10.0, so the product fits.
            overprovisioning_percent: (cfg.overprovisioning * 100.0).round() as u32,
            panic_threshold_percent: cfg.panic_threshold,
            zone_aware: local_zone.is_some(),
            zone_min_healthy_percent: cfg.zone_min_healthy_percent,
        };
        let local_zone: Option<Arc<str>> = local_zone.map(Arc::from);
        let members = build_members(
            kind,
            cfg.hash_balance_factor,
            &plan_config,
            local_zone.as_deref(),
            endpoints,
        );
        // The gauges exist from the start, not from the first change.
        crate::metrics::cluster_plan(
            name,
            members.plan.panic,
            members.plan.healthy_percent(),
            members.routable(),
        );
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
                .map(|e| Spec::from_config(e, cfg))
                .collect(),
            health: health::Settings::from_config(cfg),
            plan_config,
            local_zone,
            fallback: cfg.fallback.as_deref().map(Arc::from),
            limits: Limits::new(&cfg.limits, &cfg.retry_budget),
            wake: Notify::new(),
            latency: Arc::default(),
            track_latency: AtomicBool::new(false),
            adaptive: cfg.adaptive_concurrency.as_ref().map(|a| {
                Arc::new(crate::overload::Adaptive::new(
                    name,
                    a,
                    std::time::Instant::now(),
                ))
            }),
            panic: AtomicBool::new(members.plan.panic),
            members: ArcSwap::from_pointee(members),
        }
    }

    /// The balancer as written in the config.
    /// Takes over what the previous snapshot's cluster of this name learnt (its latency
    /// histogram, its adaptive limit), at compile, before the cluster is shared.
    pub fn carry_over(&mut self, previous: &Self) {
        self.latency = Arc::clone(&previous.latency);
        // The learnt limit and the requests queued at the gate stay while the settings do.
        if let (Some(new), Some(old)) = (&self.adaptive, &previous.adaptive)
            && new.config == old.config
        {
            self.adaptive = Some(Arc::clone(old));
        }
    }

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

    /// The current members for a moment (no reference count taken: the request path's way).
    pub fn members_now(&self) -> arc_swap::Guard<Arc<Members>> {
        self.members.load()
    }

    /// Whether any endpoint can take traffic now.
    pub fn can_serve(&self) -> bool {
        !self.members.load().plan.is_empty()
    }

    /// Replaces the endpoint list (DNS changed), rebuilding the plan and balancers for it.
    pub fn set_endpoints(&self, endpoints: Vec<Arc<Endpoint>>) {
        self.publish(build_members(
            self.kind,
            self.hash_balance_factor,
            &self.plan_config,
            self.local_zone.as_deref(),
            endpoints,
        ));
    }

    /// Rebuilds the plan for the same endpoints after their health changed.
    pub fn replan(&self) {
        let endpoints = self.members().endpoints.clone();
        self.set_endpoints(endpoints);
    }

    fn publish(&self, members: Members) {
        let panic = members.plan.panic;
        if self.panic.swap(panic, Ordering::Relaxed) != panic {
            if panic {
                tracing::warn!(cluster = %self.name, healthy_percent = members.plan.healthy_percent(), panic_threshold = self.plan_config.panic_threshold_percent, "too few healthy endpoints: panic mode, spreading over all of them");
            } else {
                tracing::info!(cluster = %self.name, healthy_percent = members.plan.healthy_percent(), "enough healthy endpoints again: panic mode over");
            }
        }
        crate::metrics::cluster_plan(
            &self.name,
            members.plan.panic,
            members.plan.healthy_percent(),
            members.routable(),
        );
        self.members.store(Arc::new(members));
    }

    /// Chooses an endpoint (an index into `members.endpoints`), never one in `exclude` (those this
    /// request already tried). The plan's group for a random draw goes first; when it has nothing
    /// left, the other groups in order of preference.
    pub fn pick(
        &self,
        members: &Members,
        hash: Option<u64>,
        exclude: &[usize],
        now: Instant,
    ) -> Option<usize> {
        RNG.with(|rng| {
            let mut rng = rng.borrow_mut();
            let r = if members.groups.len() > 1 {
                rng.u32(0..10_000)
            } else {
                0
            };
            for group in members.plan.fallbacks(r) {
                let Some(g) = members
                    .plan
                    .groups
                    .iter()
                    .position(|x| std::ptr::eq(x, group))
                    .and_then(|i| members.groups.get(i))
                else {
                    continue;
                };
                // Retries are rare and exclude a handful: translating them is cheaper than
                // keeping per-group index maps.
                let mut local = [0usize; 8];
                let mut n = 0;
                for (i, gi) in g.global.iter().enumerate() {
                    if exclude.contains(gi) && n < local.len() {
                        local[n] = i;
                        n += 1;
                    }
                }
                let ctx = PickContext {
                    hash_key: hash,
                    exclude: &local[..n],
                };
                if let Some(i) = g.balancer.pick(&g.endpoints, &ctx, now, &mut rng) {
                    return g.global.get(i).copied();
                }
            }
            None
        })
    }
}

/// The plan and one balancer per group, for these endpoints as their health stands now.
fn build_members(
    kind: BalanceKind,
    hash_balance_factor: f64,
    plan_config: &PlanConfig,
    local_zone: Option<&str>,
    endpoints: Vec<Arc<Endpoint>>,
) -> Members {
    let views: Vec<MemberView> = endpoints
        .iter()
        .map(|e| MemberView {
            priority: e.priority,
            local: local_zone.is_some() && e.zone.as_deref() == local_zone,
            admitted: e.health.admits(),
            available: e.health.admin() == AdminMode::Auto,
            weight: e.weight,
        })
        .collect();
    let plan = priority::plan(&views, plan_config);
    let groups = plan
        .groups
        .iter()
        .map(|g| {
            let members: Vec<Arc<Endpoint>> = g
                .members
                .iter()
                .filter_map(|&i| endpoints.get(i).cloned())
                .collect();
            let balancer = if kind == BalanceKind::Hash {
                // The ring is built from configured weights: slow start does not apply to
                // consistent hashing (as in Envoy), and hundredths would only bloat the ring.
                let by_config: Vec<ConfigWeight<'_>> = members.iter().map(ConfigWeight).collect();
                Balancer::new(kind, &by_config, hash_balance_factor)
            } else {
                Balancer::new(kind, &members, hash_balance_factor)
            };
            GroupBalancer {
                balancer,
                endpoints: members,
                global: g.members.clone(),
            }
        })
        .collect();
    Members {
        endpoints,
        plan,
        groups,
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
