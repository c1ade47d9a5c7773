//! Prometheus metrics: names (`palisade_*`, base units, `_total` counters), the recorder, and handles
//! resolved ahead of time so the request path does not hash label sets.
//!
//! Labels are bounded by the config (listener, route, cluster, endpoint, a status class, a reason):
//! never a raw path or a client address. Process figures (memory, descriptors, CPU) are read from
//! `/proc` when `/metrics` is scraped. Serving `/metrics` is the admin module's job.

use std::sync::{Arc, OnceLock};

use metrics::{Counter, Gauge, Histogram, counter, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs the process-wide recorder once (later calls reuse it; tests start many proxies).
pub fn init() -> Option<&'static PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let latency = [
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                10.0, 30.0,
            ];
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &latency);
            match builder.and_then(PrometheusBuilder::install_recorder) {
                Ok(h) => {
                    gauge!("palisade_build_info", "version" => env!("CARGO_PKG_VERSION")).set(1.0);
                    // Histogram samples are buffered until drained: without periodic upkeep an
                    // unscraped proxy would grow without bound.
                    let upkeep = h.clone();
                    let spawned = std::thread::Builder::new()
                        .name("palisade-metrics".into())
                        .spawn(move || {
                            loop {
                                std::thread::sleep(std::time::Duration::from_secs(5));
                                upkeep.run_upkeep();
                            }
                        });
                    if let Err(e) = spawned {
                        tracing::warn!(error = %e, "metrics upkeep thread not started");
                    }
                    Some(h)
                }
                Err(e) => {
                    tracing::warn!(error = %e, "metrics recorder not installed");
                    None
                }
            }
        })
        .as_ref()
}

/// Renders the exposition text, with process figures refreshed first.
pub fn render() -> String {
    process::update();
    init().map(PrometheusHandle::render).unwrap_or_default()
}

/// Status classes as label values, indexed by `status / 100 - 1`.
const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

fn class_index(status: u16) -> usize {
    usize::from((status / 100).clamp(1, 5) - 1)
}

/// Per (listener, route) request metrics.
#[derive(Debug)]
pub struct RequestMetrics {
    by_class: [Counter; 5],
    duration: Histogram,
}

impl RequestMetrics {
    pub fn new(listener: &str, route: &str) -> Self {
        let (l, r) = (listener.to_owned(), route.to_owned());
        Self {
            by_class: CLASSES.map(|c| counter!("palisade_requests_total", "listener" => l.clone(), "route" => r.clone(), "class" => c)),
            duration: histogram!("palisade_request_duration_seconds", "listener" => l, "route" => r),
        }
    }

    pub fn record(&self, status: u16, seconds: f64) {
        self.by_class[class_index(status)].increment(1);
        self.duration.record(seconds);
    }
}

/// Per endpoint upstream metrics.
#[derive(Debug, Clone)]
pub struct UpstreamMetrics {
    by_class: [Counter; 5],
    duration: Histogram,
}

impl UpstreamMetrics {
    pub fn new(cluster: &str, endpoint: &str) -> Self {
        let (c, e) = (cluster.to_owned(), endpoint.to_owned());
        Self {
            by_class: CLASSES.map(|k| counter!("palisade_upstream_requests_total", "cluster" => c.clone(), "endpoint" => e.clone(), "class" => k)),
            duration: histogram!("palisade_upstream_request_duration_seconds", "cluster" => c, "endpoint" => e),
        }
    }

    pub fn record(&self, status: u16, seconds: f64) {
        self.by_class[class_index(status)].increment(1);
        self.duration.record(seconds);
    }
}

/// A failed attempt to open an upstream connection (`reason`: refused, timeout, tls, other).
pub fn upstream_connect_error(cluster: &str, reason: &'static str) {
    counter!("palisade_upstream_connect_errors_total", "cluster" => cluster.to_owned(), "reason" => reason).increment(1);
}

/// An upstream request that failed before a response head (by the access-log flag).
pub fn upstream_failure(cluster: &str, flag: &'static str) {
    counter!("palisade_upstream_failures_total", "cluster" => cluster.to_owned(), "flag" => flag)
        .increment(1);
}

/// An endpoint's active-check status changed (`to`: healthy, unhealthy).
pub fn health_transition(cluster: &str, to: &'static str) {
    counter!("palisade_health_transitions_total", "cluster" => cluster.to_owned(), "to" => to)
        .increment(1);
}

/// An endpoint was ejected by outlier detection (`reason`: consecutive_gateway_failures,
/// consecutive_5xx, failure_rate, latency).
pub fn outlier_ejected(cluster: &str, reason: &'static str) {
    counter!("palisade_outlier_ejections_total", "cluster" => cluster.to_owned(), "reason" => reason)
        .increment(1);
    gauge!("palisade_outlier_ejected", "cluster" => cluster.to_owned()).increment(1.0);
}

/// An ejection ended (its time was up, or an active check passed).
pub fn outlier_restored(cluster: &str) {
    gauge!("palisade_outlier_ejected", "cluster" => cluster.to_owned()).decrement(1.0);
}

/// The routing plan was rebuilt: whether it is in panic mode, the cluster's healthy capacity (%)
/// and how many endpoints can take traffic.
pub fn cluster_plan(cluster: &str, panic: bool, healthy_percent: u32, routable: usize) {
    let c = cluster.to_owned();
    gauge!("palisade_cluster_panic", "cluster" => c.clone()).set(if panic { 1.0 } else { 0.0 });
    gauge!("palisade_cluster_healthy_percent", "cluster" => c.clone())
        .set(f64::from(healthy_percent));
    gauge!("palisade_cluster_routable_endpoints", "cluster" => c).set(routable as f64);
}

/// A retry or hedge (`kind`: retry, hedge) and how it went (`outcome`: attempted, succeeded,
/// budget_exhausted).
pub fn retry(cluster: &str, kind: &'static str, outcome: &'static str) {
    counter!("palisade_retries_total", "cluster" => cluster.to_owned(), "kind" => kind, "outcome" => outcome)
        .increment(1);
}

/// A request refused by a cluster limit (`limit`: max_requests, max_retries, retry_budget).
pub fn limit_overflow(cluster: &str, limit: &'static str) {
    counter!("palisade_limit_overflows_total", "cluster" => cluster.to_owned(), "limit" => limit)
        .increment(1);
}

/// A request served by a fallback cluster or a route's last-resort response (`kind`: fallback,
/// last_resort).
pub fn degraded(route_or_cluster: &str, kind: &'static str) {
    counter!("palisade_degraded_responses_total", "target" => route_or_cluster.to_owned(), "kind" => kind)
        .increment(1);
}

/// Connections and requests in flight on one listener.
#[derive(Debug, Clone)]
pub struct ListenerGauges {
    pub connections: Gauge,
    pub requests: Gauge,
    pub accept_errors: Counter,
    pub handshake_errors: Counter,
    /// Connections refused at accept, by reason (`REFUSAL_REASONS` order): resolved once, so a
    /// connection flood being refused costs no registry lookup per connection.
    refused: [Counter; 4],
}

/// `palisade_connections_refused_total`'s reasons.
pub const REFUSAL_REASONS: [&str; 4] = [
    "denied",
    "per_ip_connections",
    "per_ip_rate",
    "max_connections",
];

impl ListenerGauges {
    pub fn new(listener: &str) -> Arc<Self> {
        let l = listener.to_owned();
        Arc::new(Self {
            connections: gauge!("palisade_active_connections", "listener" => l.clone()),
            requests: gauge!("palisade_active_requests", "listener" => l.clone()),
            accept_errors: counter!("palisade_accept_errors_total", "listener" => l.clone()),
            handshake_errors: counter!("palisade_tls_handshake_errors_total", "listener" => l.clone()),
            refused: REFUSAL_REASONS.map(|r| counter!("palisade_connections_refused_total", "listener" => l.clone(), "reason" => r)),
        })
    }

    /// Counts a connection refused at accept (`reason` is one of `REFUSAL_REASONS`).
    pub fn refused(&self, reason: &str) {
        if let Some(i) = REFUSAL_REASONS.iter().position(|r| *r == reason)
            && let Some(c) = self.refused.get(i)
        {
            c.increment(1);
        }
    }
}

/// Marks which config version is live (`palisade_config_info{version} 1`), clearing the previous one.
pub fn config_version(previous: Option<&str>, current: &str) {
    if let Some(p) = previous {
        gauge!("palisade_config_info", "version" => p.to_owned()).set(0.0);
    }
    gauge!("palisade_config_info", "version" => current.to_owned()).set(1.0);
}

/// Idle pooled connections per cluster, refreshed at scrape time.
pub fn pool_idle(cluster: &str, idle: usize) {
    gauge!("palisade_upstream_pool_idle_connections", "cluster" => cluster.to_owned())
        .set(idle as f64);
}

mod process {
    //! Process figures from `/proc/self` (Linux), the names the Prometheus client libraries use.
    use metrics::gauge;

    pub fn update() {
        if let Ok(statm) = std::fs::read_to_string("/proc/self/statm") {
            let page = 4096.0;
            let mut it = statm
                .split_whitespace()
                .filter_map(|v| v.parse::<f64>().ok());
            if let (Some(vsize), Some(rss)) = (it.next(), it.next()) {
                gauge!("palisade_process_virtual_memory_bytes").set(vsize * page);
                gauge!("palisade_process_resident_memory_bytes").set(rss * page);
            }
        }
        if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
            gauge!("palisade_process_open_fds").set(dir.count() as f64);
        }
        if let Ok(stat) = std::fs::read_to_string("/proc/self/stat") {
            // Fields after the command name (which may contain spaces) start after the last ')'.
            if let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) {
                let f: Vec<&str> = rest.split_whitespace().collect();
                let ticks = 100.0;
                if let (Some(u), Some(s)) = (
                    f.get(11).and_then(|v| v.parse::<f64>().ok()),
                    f.get(12).and_then(|v| v.parse::<f64>().ok()),
                ) {
                    gauge!("palisade_process_cpu_seconds_total").set((u + s) / ticks);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_classes() {
        assert_eq!(CLASSES[class_index(200)], "2xx");
        assert_eq!(CLASSES[class_index(101)], "1xx");
        assert_eq!(CLASSES[class_index(503)], "5xx");
        assert_eq!(CLASSES[class_index(499)], "4xx");
        assert_eq!(CLASSES[class_index(0)], "1xx");
        assert_eq!(CLASSES[class_index(999)], "5xx");
    }
}
