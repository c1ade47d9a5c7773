//! Health: the verdict on each endpoint, from active probes and from passive outlier detection on
//! live traffic, and the task that turns verdicts into the cluster's routing plan.
//!
//! In the order a verdict forms: `probe` (one active check) → `active` (the probe-driven state
//! machine) and `outlier` (the traffic-driven one) → `endpoint` (both, plus the operator's word, per
//! endpoint) → `monitor` (the per-cluster task that runs probes, judges outliers, ramps slow start
//! and rebuilds the plan). The state machines are pure (explicit `now`, no I/O); only `probe` and
//! `monitor` touch sockets and timers. Choosing among admitted endpoints is `upstream::priority`'s
//! and the balancers' business, not this module's.

pub mod active;
pub mod endpoint;
pub mod monitor;
pub mod outlier;
pub mod probe;

use crate::{config::ClusterConfig, upstream::slow_start::SlowStart};

/// A cluster's health settings, compiled from its config.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Active checks; `None` when the cluster has none.
    pub probe: Option<probe::ProbeSpec>,
    pub schedule: active::Schedule,
    /// A passing probe lifts an outlier ejection.
    pub uneject_on_pass: bool,
    /// Outlier detection; `None` when disabled.
    pub outlier: Option<outlier::Config>,
    pub slow_start: SlowStart,
}

impl Settings {
    pub fn from_config(c: &ClusterConfig) -> Self {
        let h = c.health_check.clone().unwrap_or_default();
        let o = &c.outlier_detection;
        Self {
            probe: c
                .health_check
                .as_ref()
                .and_then(probe::ProbeSpec::from_config),
            schedule: active::Schedule {
                interval: h.interval.get(),
                edge_interval: h.edge_interval.get(),
                unhealthy_interval: h.unhealthy_interval.unwrap_or(h.interval).get(),
                no_traffic_interval: h.no_traffic_interval.get(),
                jitter_percent: h.jitter_percent,
                healthy_threshold: h.healthy_threshold,
                unhealthy_threshold: h.unhealthy_threshold,
            },
            uneject_on_pass: h.uneject_on_pass,
            outlier: o.enabled.then(|| outlier::Config {
                interval: o.interval.get(),
                window: o.window.get(),
                consecutive_gateway_failures: o.consecutive_gateway_failures,
                consecutive_5xx: o.consecutive_5xx,
                failure_rate_percent: o.failure_rate_percent,
                failure_rate_min_requests: o.failure_rate_min_requests,
                latency_factor: o.latency_factor,
                latency_min_requests: o.latency_min_requests,
                latency_floor: o.latency_floor.get(),
                base_ejection_time: o.base_ejection_time.get(),
                max_ejection_time: o.max_ejection_time.get(),
                ejection_jitter: o.ejection_jitter.get(),
                max_ejection_percent: o.max_ejection_percent,
            }),
            slow_start: SlowStart {
                window: c.slow_start.window.get(),
                aggression: c.slow_start.aggression,
                min_weight_percent: c.slow_start.min_weight_percent,
            },
        }
    }
}
