//! `Snapshot`: one immutable, consistent runtime view compiled from a validated config, and `Shared`,
//! which holds the current one behind an `ArcSwap`.
//!
//! A request loads the snapshot once and uses it to the end, so a reload (a later issue) is a pointer
//! swap: requests in flight finish on the view they started with. Everything that must change together
//! (routes, the clusters they name, their TLS settings, header policy) lives in one snapshot. State that
//! must outlive a snapshot (pools, endpoint stats) is keyed by stable identity and carried over by
//! `compile(.., previous)`. This module compiles; it does not serve.

use std::{
    collections::HashMap,
    sync::{
        Arc,
        atomic::{AtomicU8, Ordering},
    },
    time::Instant,
};

use arc_swap::ArcSwap;
use http::HeaderName;
use tokio_util::sync::{CancellationToken, DropGuard};

use crate::{
    config::{self, Config, ConfigError, ErrorFormat, Problem, Source},
    headers::forwarded::TrustedProxies,
    route::router::Router,
    tls,
    upstream::{
        cluster::{Cluster, Endpoint, Spec, UpstreamTls},
        dns,
        pool::Pool,
    },
};

/// Per-snapshot header policy, pre-parsed.
#[derive(Debug)]
pub struct HttpPolicy {
    pub trusted: TrustedProxies,
    pub add_forwarded: bool,
    pub via: Option<Arc<str>>,
    pub request_id_header: HeaderName,
    pub error_format: ErrorFormat,
}

#[derive(Debug)]
pub struct Snapshot {
    pub version: String,
    /// What validation accepted but warned about (a reload reports them).
    pub warnings: Vec<Problem>,
    pub config: Arc<Config>,
    pub router: Router,
    pub clusters: HashMap<Arc<str>, Arc<Cluster>>,
    /// `route_targets[route.index][target]`: the route's clusters, resolved.
    pub route_targets: Vec<Vec<Arc<Cluster>>>,
    pub http: HttpPolicy,
    /// Rate-limit policies (their buckets and the Redis connection carry over reloads).
    pub rate_limits: crate::ratelimit::RateLimits,
    /// `route_policies[route.index]`: what the route applies before forwarding.
    pub route_policies: Vec<RoutePolicy>,
    pub shed: crate::overload::shedder::ShedConfig,
    /// `request_metrics[listener slot][0]` for requests no route matched, `[slot][1 + route]`
    /// otherwise; empty for the slot of a listener this config does not have.
    request_metrics: Vec<Vec<crate::metrics::RequestMetrics>>,
    /// Stops this snapshot's background tasks (health, DNS refresh) when the snapshot is dropped.
    _tasks: DropGuard,
    /// The same, on demand: a reload retires the old snapshot's tasks at once, because the new
    /// snapshot's tasks take over the carried endpoints while requests still hold the old one.
    tasks: CancellationToken,
}

impl Snapshot {
    pub fn request_metrics(
        &self,
        listener: usize,
        route: Option<usize>,
    ) -> Option<&crate::metrics::RequestMetrics> {
        self.request_metrics
            .get(listener)?
            .get(route.map_or(0, |r| r + 1))
    }

    /// Stops this snapshot's background tasks; requests still holding it are served as before.
    pub fn retire(&self) {
        self.tasks.cancel();
    }
}

/// A route's admission policies, compiled.
#[derive(Debug)]
pub struct RoutePolicy {
    /// Indexes into `Snapshot::rate_limits`, in the route's order.
    pub rate_limits: Vec<usize>,
    pub priority: crate::overload::shedder::Priority,
    /// Client networks allowed or denied; `None` when the route lists neither.
    pub filter: Option<crate::server::admission::IpFilter>,
    /// Request body cap for this route (0 = none); `None` = the listener's.
    pub max_body: Option<u64>,
}

/// Builds a snapshot. `previous` lends endpoints (pools, stats) whose identity is unchanged.
pub async fn compile(
    source: &Source,
    previous: Option<&Snapshot>,
) -> Result<Snapshot, ConfigError> {
    let config = &source.config;
    let diagnostics = config::validate(config, &source.base_dir);
    for w in &diagnostics.warnings {
        tracing::warn!(config_warning = %w, "config warning");
    }
    if !diagnostics.is_ok() {
        return Err(ConfigError {
            problems: diagnostics.errors,
        });
    }
    let mut problems = Vec::new();
    let router = Router::compile(&config.routes).map_err(|m| ConfigError::one("routes", m))?;

    // Endpoints of the previous snapshot by (cluster, identity): their pools and stats carry over.
    let mut old: HashMap<(Arc<str>, Arc<str>), Arc<Endpoint>> = HashMap::new();
    if let Some(prev) = previous {
        for c in prev.clusters.values() {
            for e in &c.members().endpoints {
                old.insert((Arc::clone(&c.name), Arc::clone(&e.id)), Arc::clone(e));
            }
        }
    }

    let stop = CancellationToken::new();
    let mut clusters = HashMap::new();
    let now = Instant::now();
    for (name, c) in &config.clusters {
        let tls = match &c.tls {
            None => None,
            Some(t) => {
                let ca = t.ca_file.as_ref().map(|f| source.base_dir.join(f));
                let opts = tls::client::UpstreamTlsOptions {
                    ca_file: ca.as_deref(),
                    verify: !t.insecure_skip_verify,
                    alpn_h2: c.protocol == config::UpstreamProtocol::H2,
                };
                match tls::client::client_config(&opts) {
                    Ok(cfg) => Some(UpstreamTls {
                        config: cfg,
                        sni: t
                            .sni
                            .as_ref()
                            .and_then(|s| rustls_pki_types::ServerName::try_from(s.clone()).ok()),
                    }),
                    Err(e) => {
                        problems.push(Problem {
                            path: format!("clusters.{name}.tls"),
                            message: e,
                        });
                        None
                    }
                }
            }
        };
        let mut endpoints = Vec::new();
        let active_checks = c.health_check.is_some();
        for e in &c.endpoints {
            let spec = Spec::from_config(e, c);
            for addr in dns::resolve_now(&spec.address).await {
                let id = dns::endpoint_id(&spec.address, addr);
                let (max_idle, idle_timeout) =
                    (c.pool.max_idle_per_endpoint, c.pool.idle_timeout.get());
                let reused = old
                    .get(&(Arc::<str>::from(name.as_str()), Arc::clone(&id)))
                    .map(|pe| {
                        let same_pool = pe.pool.has_settings(max_idle, idle_timeout);
                        if pe.matches(&spec) && same_pool {
                            Arc::clone(pe)
                        } else {
                            let pool = (!same_pool).then(|| Pool::new(max_idle, idle_timeout));
                            Arc::new(Endpoint::carried_over(pe, &spec, pool))
                        }
                    });
                endpoints.push(reused.unwrap_or_else(|| {
                    Arc::new(Endpoint::new(
                        name,
                        &spec,
                        id,
                        addr,
                        Pool::new(max_idle, idle_timeout),
                        active_checks,
                        now,
                    ))
                }));
            }
        }
        if endpoints.is_empty() {
            problems.push(Problem {
                path: format!("clusters.{name}.endpoints"),
                message: "no endpoint resolves to an address".into(),
            });
        }
        let mut cluster = Cluster::new(
            name,
            c,
            config.runtime.local_zone.as_deref(),
            tls,
            endpoints,
        );
        if let Some(prev) = previous.and_then(|p| p.clusters.get(name.as_str())) {
            cluster.carry_over(prev);
        }
        let cluster = Arc::new(cluster);
        // Every cluster has one: besides health, it ramps slow start and ages the latency
        // histogram that hedging reads.
        tokio::spawn(crate::health::monitor::run(
            Arc::clone(&cluster),
            stop.child_token(),
        ));
        if dns::has_names(&cluster) {
            tokio::spawn(dns::refresh_loop(
                Arc::clone(&cluster),
                c.pool.max_idle_per_endpoint,
                c.pool.idle_timeout.get(),
                stop.child_token(),
            ));
        }
        clusters.insert(Arc::<str>::from(name.as_str()), cluster);
    }

    let mut route_targets = Vec::new();
    for r in router.routes() {
        let mut v = Vec::new();
        for (name, _) in &r.targets {
            match clusters.get(name.as_str()) {
                Some(c) => {
                    // Only clusters a quantile hedge reads pay for the latency histogram.
                    if r.hedge
                        .is_some_and(|h| matches!(h.delay, config::HedgeDelay::Quantile(_)))
                    {
                        c.track_latency
                            .store(true, std::sync::atomic::Ordering::Relaxed);
                    }
                    v.push(Arc::clone(c));
                }
                None => problems.push(Problem {
                    path: format!("routes[{}]", r.index),
                    message: format!("unknown cluster {name:?}"),
                }),
            }
        }
        route_targets.push(v);
    }
    if !problems.is_empty() {
        stop.cancel();
        return Err(ConfigError { problems });
    }

    let trusted = config
        .http
        .trusted_proxies
        .iter()
        .filter_map(|s| config::validate::parse_net(s))
        .collect();
    let http = HttpPolicy {
        trusted: TrustedProxies::new(trusted),
        add_forwarded: config.http.add_forwarded,
        via: match config.http.via.as_deref() {
            Some("") => None,
            Some(v) => Some(v.into()),
            None => Some(config::model::default_via().into()),
        },
        request_id_header: HeaderName::from_bytes(config.http.request_id_header.as_bytes())
            .map_err(|_| ConfigError::one("http.request_id_header", "not a header name"))?,
        error_format: config.http.error_format,
    };
    let rate_limits =
        crate::ratelimit::RateLimits::compile(config, previous.map(|p| &p.rate_limits));
    let route_policies = config
        .routes
        .iter()
        .map(|r| RoutePolicy {
            rate_limits: rate_limits.indexes(&r.rate_limits),
            priority: r.priority.into(),
            filter: ip_filter(&r.allow, &r.deny),
            max_body: r.max_request_body_bytes,
        })
        .collect();
    let mut request_metrics: Vec<Vec<crate::metrics::RequestMetrics>> = Vec::new();
    for l in config.listeners.keys() {
        let slot = listener_slot(l);
        if request_metrics.len() <= slot {
            request_metrics.resize_with(slot + 1, Vec::new);
        }
        if let Some(m) = request_metrics.get_mut(slot) {
            *m = std::iter::once(crate::metrics::RequestMetrics::new(l, "-"))
                .chain(
                    router
                        .routes()
                        .iter()
                        .map(|r| crate::metrics::RequestMetrics::new(l, &r.name)),
                )
                .collect();
        }
    }
    Ok(Snapshot {
        warnings: diagnostics.warnings,
        request_metrics,
        version: config::version_of(config),
        config: Arc::new(config.clone()),
        router,
        clusters,
        route_targets,
        http,
        rate_limits,
        route_policies,
        shed: crate::overload::shed_config(&config.overload),
        tasks: stop.clone(),
        _tasks: stop.drop_guard(),
    })
}

/// An allow/deny filter from config strings (validated already), or `None` when both are empty.
pub fn ip_filter(allow: &[String], deny: &[String]) -> Option<crate::server::admission::IpFilter> {
    if allow.is_empty() && deny.is_empty() {
        return None;
    }
    let nets = |l: &[String]| -> Vec<ipnet::IpNet> {
        l.iter()
            .filter_map(|s| config::validate::parse_net(s))
            .collect()
    };
    Some(crate::server::admission::IpFilter::new(
        &nets(allow),
        &nets(deny),
    ))
}

/// A listener name's slot, stable for the life of the process (names are few and never forgotten,
/// so a slot is never reused by another listener).
pub fn listener_slot(name: &str) -> usize {
    static SLOTS: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
    let mut slots = SLOTS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(i) = slots.iter().position(|n| n == name) {
        return i;
    }
    slots.push(name.to_owned());
    slots.len() - 1
}

/// Lifecycle states, as `/ready` and `/server_info` report them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum State {
    Starting = 0,
    Live = 1,
    Draining = 2,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Starting => "starting",
            Self::Live => "live",
            Self::Draining => "draining",
        }
    }
}

/// What every connection and request shares: the current snapshot and the process state.
#[derive(Debug)]
pub struct Shared {
    current: ArcSwap<Snapshot>,
    state: AtomicU8,
    pub started: Instant,
    pub access_log: crate::access_log::AccessLog,
    /// Requests, failures and latency since start: the bake after a config change reads them.
    pub traffic: crate::reload::traffic::Traffic,
    /// Requests in flight and the shed level, process-wide.
    pub overload: Arc<crate::overload::Overload>,
    /// Client connections open across every listener (`overload.max_connections`).
    pub connections: Arc<std::sync::atomic::AtomicU32>,
}

impl Shared {
    pub fn new(snapshot: Snapshot, access_log: crate::access_log::AccessLog) -> Self {
        Self {
            current: ArcSwap::from_pointee(snapshot),
            state: AtomicU8::new(State::Starting as u8),
            started: Instant::now(),
            access_log,
            traffic: crate::reload::traffic::Traffic::new(),
            overload: Arc::default(),
            connections: Arc::default(),
        }
    }

    /// The snapshot for one request (an `Arc`, so a swap cannot pull it away mid-request).
    pub fn load(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// Installs a new snapshot and returns the one it replaced (requests in flight keep theirs).
    pub fn swap(&self, snapshot: Snapshot) -> Arc<Snapshot> {
        self.current.swap(Arc::new(snapshot))
    }

    pub fn state(&self) -> State {
        match self.state.load(Ordering::Acquire) {
            0 => State::Starting,
            1 => State::Live,
            _ => State::Draining,
        }
    }

    pub fn set_state(&self, s: State) {
        self.state.store(s as u8, Ordering::Release);
    }
}
