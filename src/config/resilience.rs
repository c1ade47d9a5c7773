//! The failure-handling tables of the config: what a cluster does when its endpoints fail
//! (`health_check`, `outlier_detection`, `slow_start`, `limits`, `retry_budget`, failover tiers) and
//! what a route does about it (`retry`, `hedge`, `last_resort`).
//!
//! Like `model.rs`, this owns what can be written and what an omitted key means; `validate` judges the
//! values and `snapshot` turns them into the pure state machines' own settings. The defaults follow
//! the peers (HAProxy's `inter 2s rise 2 fall 3`, Envoy's outlier and circuit-breaker defaults) except
//! where the note on a field says why Palisade differs.

use serde::{Deserialize, Serialize};

use super::duration::Dur;

/// `[clusters.NAME.health_check]`: active probes. Absent = no active checks (passive outlier
/// detection still runs).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheckConfig {
    /// `http` (a request whose answer is judged) or `tcp` (a connect is enough).
    #[serde(default)]
    pub kind: ProbeKind,
    /// Request path of an HTTP probe.
    #[serde(default = "default_probe_path")]
    pub path: String,
    /// Method of an HTTP probe (`GET` or `HEAD`).
    #[serde(default = "default_probe_method")]
    pub method: String,
    /// Host header of an HTTP probe; default: the endpoint's configured host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// Statuses that pass, as `"200"` or ranges `"200-399"`.
    #[serde(default = "default_expected_statuses")]
    pub expected_statuses: Vec<String>,
    /// When set, an HTTP probe passes only if the body (first 64 KiB) contains this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body_contains: Option<String>,
    /// Gap between probes of one endpoint.
    #[serde(default = "default_probe_interval")]
    pub interval: Dur,
    /// A probe that has not passed by then fails.
    #[serde(default = "default_probe_timeout")]
    pub timeout: Dur,
    /// Consecutive passes that make an unhealthy endpoint healthy.
    #[serde(default = "default_healthy_threshold")]
    pub healthy_threshold: u32,
    /// Consecutive failures that make a healthy endpoint unhealthy.
    #[serde(default = "default_unhealthy_threshold")]
    pub unhealthy_threshold: u32,
    /// Gap while an endpoint is changing state (a streak has begun), so a verdict comes sooner.
    #[serde(default = "default_edge_interval")]
    pub edge_interval: Dur,
    /// Gap while an endpoint is unhealthy; default: `interval`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unhealthy_interval: Option<Dur>,
    /// Gap when the cluster had no traffic since the last probe (idle clusters are probed less).
    #[serde(default = "default_no_traffic_interval")]
    pub no_traffic_interval: Dur,
    /// Each gap is randomised by ± this percent, so probes never run in lockstep.
    #[serde(default = "default_jitter_percent")]
    pub jitter_percent: u32,
    /// Keep one probe connection open between probes. Off by default: a fresh connection each time
    /// sees what a new client connection would (firewalls and L4 balancers hide behind open ones).
    #[serde(default)]
    pub reuse_connection: bool,
    /// A probe that turns the endpoint healthy again lifts its outlier ejection early (a probe
    /// passing while the endpoint is already healthy does not: a flaky endpoint would flap).
    #[serde(default = "yes")]
    pub uneject_on_pass: bool,
}

impl Default for HealthCheckConfig {
    fn default() -> Self {
        Self {
            kind: ProbeKind::default(),
            path: default_probe_path(),
            method: default_probe_method(),
            host: None,
            expected_statuses: default_expected_statuses(),
            body_contains: None,
            interval: default_probe_interval(),
            timeout: default_probe_timeout(),
            healthy_threshold: default_healthy_threshold(),
            unhealthy_threshold: default_unhealthy_threshold(),
            edge_interval: default_edge_interval(),
            unhealthy_interval: None,
            no_traffic_interval: default_no_traffic_interval(),
            jitter_percent: default_jitter_percent(),
            reuse_connection: false,
            uneject_on_pass: true,
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProbeKind {
    #[default]
    Http,
    Tcp,
}

fn yes() -> bool {
    true
}
fn default_probe_path() -> String {
    "/".into()
}
fn default_probe_method() -> String {
    "GET".into()
}
fn default_expected_statuses() -> Vec<String> {
    vec!["200-399".into()]
}
fn default_probe_interval() -> Dur {
    Dur::secs(2)
}
fn default_probe_timeout() -> Dur {
    Dur::secs(1)
}
fn default_healthy_threshold() -> u32 {
    2
}
fn default_unhealthy_threshold() -> u32 {
    3
}
fn default_edge_interval() -> Dur {
    Dur::millis(500)
}
fn default_no_traffic_interval() -> Dur {
    Dur::secs(10)
}
fn default_jitter_percent() -> u32 {
    10
}

/// `[clusters.NAME.outlier_detection]`: ejection on live traffic. On by default, unlike Envoy: a
/// proxy that keeps sending to an endpoint that fails every request is the failure users page about.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutlierConfig {
    #[serde(default = "yes")]
    pub enabled: bool,
    /// How often rates and latencies are judged (and the width of one window bucket).
    #[serde(default = "default_outlier_interval")]
    pub interval: Dur,
    /// Failure rate and latency are measured over this sliding window.
    #[serde(default = "default_outlier_window")]
    pub window: Dur,
    /// Consecutive gateway failures (connect error, reset, timeout, 502/503/504) that eject; 0 disables.
    #[serde(default = "default_consecutive")]
    pub consecutive_gateway_failures: u32,
    /// Consecutive 5xx (gateway failures included) that eject; 0 disables.
    #[serde(default = "default_consecutive")]
    pub consecutive_5xx: u32,
    /// Failure percentage over the window that ejects; 0 disables.
    #[serde(default = "default_failure_rate_percent")]
    pub failure_rate_percent: u32,
    /// Requests in the window before the failure rate is judged.
    #[serde(default = "default_min_requests")]
    pub failure_rate_min_requests: u32,
    /// Eject when an endpoint's mean latency exceeds this factor × the median of its peers'; 0 disables.
    #[serde(default = "default_latency_factor")]
    pub latency_factor: f64,
    /// Requests in the window an endpoint (and each peer in the median) needs for latency to count.
    #[serde(default = "default_min_requests")]
    pub latency_min_requests: u32,
    /// Never eject for a mean latency below this.
    #[serde(default = "default_latency_floor")]
    pub latency_floor: Dur,
    /// First ejection's length; the n-th lasts n × this, up to `max_ejection_time`.
    #[serde(default = "default_base_ejection")]
    pub base_ejection_time: Dur,
    #[serde(default = "default_max_ejection")]
    pub max_ejection_time: Dur,
    /// Each ejection lasts up to this much longer, at random, so ejected endpoints don't return together.
    #[serde(default = "default_ejection_jitter")]
    pub ejection_jitter: Dur,
    /// At most this percent of the cluster's endpoints ejected at once (at least one may always be).
    #[serde(default = "default_max_ejection_percent")]
    pub max_ejection_percent: u32,
}

impl Default for OutlierConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            interval: default_outlier_interval(),
            window: default_outlier_window(),
            consecutive_gateway_failures: default_consecutive(),
            consecutive_5xx: default_consecutive(),
            failure_rate_percent: default_failure_rate_percent(),
            failure_rate_min_requests: default_min_requests(),
            latency_factor: default_latency_factor(),
            latency_min_requests: default_min_requests(),
            latency_floor: default_latency_floor(),
            base_ejection_time: default_base_ejection(),
            max_ejection_time: default_max_ejection(),
            ejection_jitter: default_ejection_jitter(),
            max_ejection_percent: default_max_ejection_percent(),
        }
    }
}

fn default_outlier_interval() -> Dur {
    Dur::secs(1)
}
fn default_outlier_window() -> Dur {
    Dur::secs(10)
}
fn default_consecutive() -> u32 {
    5
}
fn default_failure_rate_percent() -> u32 {
    50
}
fn default_min_requests() -> u32 {
    20
}
fn default_latency_factor() -> f64 {
    3.0
}
fn default_latency_floor() -> Dur {
    Dur::millis(20)
}
fn default_base_ejection() -> Dur {
    Dur::secs(30)
}
fn default_max_ejection() -> Dur {
    Dur::secs(300)
}
fn default_ejection_jitter() -> Dur {
    Dur::secs(1)
}
fn default_max_ejection_percent() -> u32 {
    50
}

/// `[clusters.NAME.slow_start]`: a newly healthy endpoint's share ramps up over `window`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlowStartConfig {
    /// 0 disables.
    #[serde(default = "default_slow_start_window")]
    pub window: Dur,
    /// 1.0 ramps linearly; above 1 the share grows faster early on.
    #[serde(default = "default_aggression")]
    pub aggression: f64,
    /// The share an endpoint starts at, in percent of its weight.
    #[serde(default = "default_min_weight_percent")]
    pub min_weight_percent: u32,
}

impl Default for SlowStartConfig {
    fn default() -> Self {
        Self {
            window: default_slow_start_window(),
            aggression: default_aggression(),
            min_weight_percent: default_min_weight_percent(),
        }
    }
}

fn default_slow_start_window() -> Dur {
    Dur::secs(10)
}
fn default_aggression() -> f64 {
    1.0
}
fn default_min_weight_percent() -> u32 {
    10
}

/// `[clusters.NAME.limits]`: concurrency caps that answer 503 at once when exceeded (Envoy's
/// circuit-breaker thresholds, with its defaults).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// Upstream connections open at once, across the cluster.
    #[serde(default = "default_limit")]
    pub max_connections: u32,
    /// Upstream connections open at once to one endpoint; 0 = only the cluster's cap.
    #[serde(default)]
    pub max_connections_per_endpoint: u32,
    /// Requests waiting for a connection (every allowed one is busy) at once.
    #[serde(default = "default_limit")]
    pub max_pending: u32,
    /// Requests in flight to the cluster at once.
    #[serde(default = "default_limit")]
    pub max_requests: u32,
    /// Retries and hedges in flight at once (besides the retry budget).
    #[serde(default = "default_max_retries")]
    pub max_retries: u32,
    /// A request waiting for a connection gives up after this (503).
    #[serde(default = "default_queue_timeout")]
    pub queue_timeout: Dur,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_connections: default_limit(),
            max_connections_per_endpoint: 0,
            max_pending: default_limit(),
            max_requests: default_limit(),
            max_retries: default_max_retries(),
            queue_timeout: default_queue_timeout(),
        }
    }
}

fn default_limit() -> u32 {
    1024
}
fn default_max_retries() -> u32 {
    64
}
fn default_queue_timeout() -> Dur {
    Dur::secs(1)
}

/// `[clusters.NAME.retry_budget]`: retries and hedges may be at most `percent` of the cluster's
/// requests over the last 10 seconds, plus `min_per_second`. On by default, so retries can never
/// multiply an overload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryBudgetConfig {
    #[serde(default = "default_budget_percent")]
    pub percent: u32,
    /// Retries allowed per second whatever the traffic, so a quiet cluster can still retry.
    #[serde(default = "default_min_per_second")]
    pub min_per_second: u32,
}

impl Default for RetryBudgetConfig {
    fn default() -> Self {
        Self {
            percent: default_budget_percent(),
            min_per_second: default_min_per_second(),
        }
    }
}

fn default_budget_percent() -> u32 {
    20
}
fn default_min_per_second() -> u32 {
    10
}

/// `[routes.retry]`: another attempt after a failure. On by default for the failures that are safe.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryConfig {
    /// Attempts in all, the first included; 1 disables retries.
    #[serde(default = "default_attempts")]
    pub attempts: u32,
    /// Which failures are retried: `connect_failure`, `refused_stream`, `reset`, `gateway_error`
    /// (502/503/504), `5xx`, `timeout` (a per-try timeout). The default is all but `5xx`, like
    /// nginx's `proxy_next_upstream error timeout` plus gateway errors.
    #[serde(default = "default_retry_on")]
    pub on: Vec<String>,
    /// Further statuses that are retried (for example 409 or 429).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub statuses: Vec<u16>,
    /// Limit for one attempt's response head; default: only the route's `timeout`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_try_timeout: Option<Dur>,
    /// Backoff before a retry: full jitter in [0, base × 2^(n-1)], at most `backoff_max`.
    #[serde(default = "default_backoff_base")]
    pub backoff_base: Dur,
    #[serde(default = "default_backoff_max")]
    pub backoff_max: Dur,
    /// A `Retry-After` up to this long is waited out before the retry; a longer one is passed to the
    /// client instead of retried.
    #[serde(default = "default_max_retry_after")]
    pub max_retry_after: Dur,
    /// Retry non-idempotent requests (POST, PATCH) even after they may have reached the upstream.
    /// Off: they are retried only when the request provably never reached it.
    #[serde(default)]
    pub non_idempotent: bool,
    /// Request bodies up to this many bytes are kept for replay; a larger one is not retried once
    /// sent.
    #[serde(default = "default_replay_buffer")]
    pub replay_buffer_bytes: usize,
    /// While a retry is still possible, a response whose `Content-Length` is at most this many
    /// bytes is read whole before it is passed on, so an upstream that resets mid-body is
    /// retried instead of cutting the client's response. 0 streams every response at once.
    #[serde(default = "default_replay_buffer")]
    pub response_buffer_bytes: usize,
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self {
            attempts: default_attempts(),
            on: default_retry_on(),
            statuses: Vec::new(),
            per_try_timeout: None,
            backoff_base: default_backoff_base(),
            backoff_max: default_backoff_max(),
            max_retry_after: default_max_retry_after(),
            non_idempotent: false,
            replay_buffer_bytes: default_replay_buffer(),
            response_buffer_bytes: default_replay_buffer(),
        }
    }
}

fn default_attempts() -> u32 {
    3
}
fn default_retry_on() -> Vec<String> {
    [
        "connect_failure",
        "refused_stream",
        "reset",
        "gateway_error",
        "timeout",
    ]
    .into_iter()
    .map(String::from)
    .collect()
}
fn default_backoff_base() -> Dur {
    Dur::millis(25)
}
fn default_backoff_max() -> Dur {
    Dur::millis(250)
}
fn default_max_retry_after() -> Dur {
    Dur::secs(1)
}
fn default_replay_buffer() -> usize {
    64 * 1024
}

/// `[routes.hedge]`: for idempotent requests, a second attempt to another endpoint when the first
/// has not answered within `delay`; the first answer wins. Absent = no hedging.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HedgeConfig {
    /// A duration (`"50ms"`) or `"p95"`: the cluster's observed 95th percentile.
    pub delay: String,
    /// The delay never goes below this (with `p95`, a fast cluster would hedge everything).
    #[serde(default = "default_hedge_min_delay")]
    pub min_delay: Dur,
}

fn default_hedge_min_delay() -> Dur {
    Dur::millis(5)
}

/// `[routes.last_resort]`: the response when no endpoint (and no fallback cluster) can serve,
/// instead of a bare 503.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LastResortConfig {
    #[serde(default = "default_last_resort_status")]
    pub status: u16,
    #[serde(default)]
    pub body: String,
    #[serde(default = "default_last_resort_type")]
    pub content_type: String,
}

fn default_last_resort_status() -> u16 {
    503
}
fn default_last_resort_type() -> String {
    "text/plain; charset=utf-8".into()
}

/// Parses `expected_statuses` (`"200"`, `"200-399"`) into inclusive ranges.
pub fn status_ranges(list: &[String]) -> Result<Vec<(u16, u16)>, String> {
    let one = |s: &str| -> Result<u16, String> {
        match s.trim().parse::<u16>() {
            Ok(n) if (100..=599).contains(&n) => Ok(n),
            _ => Err(format!("{s:?} is not a status between 100 and 599")),
        }
    };
    list.iter()
        .map(|item| match item.split_once('-') {
            None => one(item).map(|n| (n, n)),
            Some((lo, hi)) => {
                let (lo, hi) = (one(lo)?, one(hi)?);
                if lo > hi {
                    Err(format!("{item:?} is an empty range"))
                } else {
                    Ok((lo, hi))
                }
            }
        })
        .collect()
}

/// What a retry policy retries, parsed from `retry.on`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[allow(clippy::struct_excessive_bools)] // a set of independent switches, as written in the config
pub struct RetryOn {
    pub connect_failure: bool,
    pub refused_stream: bool,
    pub reset: bool,
    pub gateway_error: bool,
    pub server_error: bool,
    pub timeout: bool,
}

impl RetryOn {
    pub const NAMES: &[&str] = &[
        "connect_failure",
        "refused_stream",
        "reset",
        "gateway_error",
        "5xx",
        "timeout",
    ];

    /// Every unknown name is an error, listed.
    pub fn parse(names: &[String]) -> Result<Self, Vec<String>> {
        let mut on = Self::default();
        let mut bad = Vec::new();
        for n in names {
            match n.as_str() {
                "connect_failure" => on.connect_failure = true,
                "refused_stream" => on.refused_stream = true,
                "reset" => on.reset = true,
                "gateway_error" => on.gateway_error = true,
                "5xx" => on.server_error = true,
                "timeout" => on.timeout = true,
                _ => bad.push(n.clone()),
            }
        }
        if bad.is_empty() { Ok(on) } else { Err(bad) }
    }
}

/// `hedge.delay`, parsed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum HedgeDelay {
    Fixed(std::time::Duration),
    /// The cluster's observed latency at this quantile (0.5 ..= 0.999).
    Quantile(f64),
}

impl HedgeConfig {
    pub fn parse_delay(&self) -> Result<HedgeDelay, String> {
        let s = self.delay.trim();
        if let Some(q) = s.strip_prefix('p') {
            return match q.parse::<f64>() {
                Ok(q) if (50.0..=99.9).contains(&q) => Ok(HedgeDelay::Quantile(q / 100.0)),
                _ => Err(format!(
                    "{s:?}: a quantile is written p50 to p99.9 (or give a duration)"
                )),
            };
        }
        match s.parse::<Dur>() {
            Ok(d) if !d.is_zero() => Ok(HedgeDelay::Fixed(d.get())),
            Ok(_) => Err("must be more than 0 (a hedge at once doubles every request)".into()),
            Err(e) => Err(e),
        }
    }
}
