//! Passive outlier detection: deciding, from the outcomes of live requests, when an endpoint is
//! ejected (taken out of balancing for a while) and when it comes back.
//!
//! Owns: the per-endpoint record ([`EndpointOutlier`]: consecutive-failure counters and a
//! sliding window of request/failure/latency buckets), the ejection rules (consecutive gateway
//! failures, consecutive 5xx, failure rate, latency outlier), the ejection duration (growing
//! multiplier, cap, jitter, decay) and the cluster-wide cap on how many endpoints are out at once
//! ([`evaluate`]).
//!
//! Does not own: classifying responses into [`Outcome`]s (the caller does, and filters client
//! aborts), locking, the background task that calls [`evaluate`] every `interval`, active health
//! checks (they only call [`EndpointOutlier::uneject`]), or metrics export. Everything here is
//! pure: `now` and the rng are arguments, so tests are deterministic.
//!
//! Unlike Envoy we also eject on latency (Envoy issue #288). The guard is the median: an endpoint is
//! only slow relative to its peers, so when every endpoint is slow the median is slow too and
//! nothing is ejected; a cluster that is uniformly slow needs capacity, not fewer endpoints.

use std::ops::DerefMut;
use std::time::{Duration, Instant};

/// Slots in the window ring. Fixed so that `record` never allocates; a window longer than this
/// many intervals gets wider buckets instead of more of them.
const MAX_BUCKETS: usize = 60;

/// Narrowest bucket: a zero `interval` would otherwise divide by zero, and sub-millisecond
/// buckets buy nothing for a detector evaluated on a timer.
const MIN_BUCKET_WIDTH: Duration = Duration::from_millis(1);

/// How one finished request to an endpoint went. Client aborts are never recorded (the caller
/// filters them): they say nothing about the endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Any response that is not a 5xx.
    Success,
    /// A 5xx that is not a gateway error (500, 501, 505, ...).
    ServerError,
    /// 502, 503 or 504 from the upstream.
    GatewayError,
    /// No usable response: connect refused or failed, reset, timeout, garbage. Counts as a
    /// gateway failure and as a 5xx.
    LocalFailure,
}

impl Outcome {
    /// Whether this outcome counts as a failure in the window (failure rate).
    fn is_failure(self) -> bool {
        !matches!(self, Outcome::Success)
    }
}

/// Why an endpoint was ejected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// `consecutive_gateway_failures` gateway errors or local failures in a row.
    ConsecutiveGatewayFailures,
    /// `consecutive_5xx` 5xx (any kind, including local failures) in a row.
    Consecutive5xx,
    /// Failure rate over the window at or above `failure_rate_percent`.
    FailureRate,
    /// Mean latency over the window far above the cluster median.
    Latency,
}

impl Reason {
    /// Stable snake_case name, for logs, metrics labels and the admin API.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::ConsecutiveGatewayFailures => "consecutive_gateway_failures",
            Reason::Consecutive5xx => "consecutive_5xx",
            Reason::FailureRate => "failure_rate",
            Reason::Latency => "latency",
        }
    }
}

/// Outlier detection settings for one cluster. Defaults follow Envoy where Envoy has the knob.
#[derive(Clone, Debug)]
pub struct Config {
    /// Evaluation period, and the width of one window bucket (at least 1 ms; widened when the
    /// window would need more than 60 buckets).
    pub interval: Duration,
    /// Span over which failure rate and latency are measured (sliding, bucketed by `interval`).
    pub window: Duration,
    /// Gateway errors / local failures in a row that eject an endpoint; 0 disables.
    pub consecutive_gateway_failures: u32,
    /// 5xx in a row (gateway errors and local failures included) that eject; 0 disables.
    pub consecutive_5xx: u32,
    /// Eject when `failures * 100 / requests >= this` over the window, in percent; 0 disables.
    pub failure_rate_percent: u32,
    /// Requests in the window (per endpoint) before its failure rate is judged.
    pub failure_rate_min_requests: u32,
    /// Eject when an endpoint's window mean latency is above this many times the cluster median
    /// (values in (0, 1) act as 1: only slower-than-median endpoints are outliers); 0 disables.
    pub latency_factor: f64,
    /// Requests in the window, per endpoint, for the endpoint itself and for each peer counted
    /// in the median.
    pub latency_min_requests: u32,
    /// Never eject for latency when the endpoint's mean is at or below this (1 ms vs 0.2 ms is
    /// noise, not an outage).
    pub latency_floor: Duration,
    /// Length of a first ejection; the n-th ejection lasts n times this (before the cap).
    pub base_ejection_time: Duration,
    /// Cap on an ejection's length before jitter (raised to `base_ejection_time` if below it),
    /// and how long an endpoint must stay in after a restore for its multiplier to reset.
    pub max_ejection_time: Duration,
    /// Each ejection lasts an extra uniform `[0, jitter)` so hosts ejected together do not
    /// return in lockstep; 0 disables.
    pub ejection_jitter: Duration,
    /// At most `max(1, floor(n * pct / 100))` of the cluster's `n` endpoints are ejected at
    /// once, in percent; 0 means no endpoint is ever ejected.
    pub max_ejection_percent: u32,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(1),
            window: Duration::from_secs(10),
            consecutive_gateway_failures: 5,
            consecutive_5xx: 5,
            failure_rate_percent: 50,
            failure_rate_min_requests: 20,
            latency_factor: 3.0,
            latency_min_requests: 20,
            latency_floor: Duration::from_millis(20),
            base_ejection_time: Duration::from_secs(30),
            max_ejection_time: Duration::from_secs(300),
            ejection_jitter: Duration::from_secs(1),
            max_ejection_percent: 50,
        }
    }
}

impl Config {
    /// Bucket width and the number of buckets the window spans (1..=`MAX_BUCKETS`).
    fn geometry(&self) -> (Duration, u64) {
        let width = self
            .interval
            .max(MIN_BUCKET_WIDTH)
            .max(self.window / MAX_BUCKETS as u32);
        (width, bucket_count(self.window, width))
    }

    /// The cap actually applied: never below the base, as in Envoy.
    fn effective_max_ejection(&self) -> Duration {
        self.max_ejection_time.max(self.base_ejection_time)
    }

    /// The latency factor actually applied, or `None` when latency ejection is off.
    fn effective_latency_factor(&self) -> Option<f64> {
        // NaN fails this test too, so it disables rather than poisoning every comparison.
        (self.latency_factor > 0.0).then(|| self.latency_factor.max(1.0))
    }
}

/// How many buckets of `width` (non-zero) cover `window`, clamped to the ring.
fn bucket_count(window: Duration, width: Duration) -> u64 {
    let n = window.as_nanos().div_ceil(width.as_nanos().max(1));
    u64::try_from(n)
        .unwrap_or(u64::MAX)
        .clamp(1, MAX_BUCKETS as u64)
}

/// Whole nanoseconds, saturating at `u64::MAX` (~584 years).
fn nanos_u64(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// How many endpoints of `n` may be ejected at once.
fn max_ejected(n: usize, percent: u32) -> usize {
    if percent == 0 || n == 0 {
        return 0;
    }
    let allowed = (n as u64).saturating_mul(u64::from(percent)) / 100;
    usize::try_from(allowed).unwrap_or(usize::MAX).max(1)
}

/// A current ejection.
#[derive(Clone, Debug, PartialEq)]
pub struct Ejection {
    /// The first rule that matched.
    pub reason: Reason,
    /// When the endpoint was ejected.
    pub since: Instant,
    /// When it becomes eligible to return (the next `evaluate` at or after this restores it).
    pub until: Instant,
    /// How many times this endpoint has been ejected, this one included (the multiplier used).
    pub count: u32,
}

/// Requests, failures and mean latency of one endpoint over the window.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct WindowStats {
    /// Requests recorded in the window.
    pub requests: u64,
    /// Of those, failures (any 5xx or local failure).
    pub failures: u64,
    /// Mean latency of every recorded request (failures included); `None` without requests.
    pub mean_latency: Option<Duration>,
}

/// Totals of one window bucket, tagged with the bucket's number since the window's origin.
#[derive(Clone, Copy, Debug, Default)]
struct Bucket {
    epoch: u64,
    requests: u32,
    failures: u32,
    latency_ns: u64,
}

/// Sliding window as a ring of epoch-tagged buckets. Rotation is lazy: a slot whose tag is not the
/// current bucket number is stale, reset when written and skipped when read. Slot = epoch mod
/// `MAX_BUCKETS` whatever the configured window, so changing `window` never aliases two live
/// buckets; changing the bucket width does, so that clears the ring.
#[derive(Clone, Debug)]
struct Window {
    origin: Instant,
    /// Width the tags were computed with; zero until the first write.
    width: Duration,
    /// Newest bucket number seen, so a `now` slightly in the past (taken before the lock) lands in
    /// the current bucket rather than resurrecting a recycled one.
    head: u64,
    buckets: [Bucket; MAX_BUCKETS],
}

impl Window {
    fn new(now: Instant) -> Self {
        Self {
            origin: now,
            width: Duration::ZERO,
            head: 0,
            buckets: [Bucket::default(); MAX_BUCKETS],
        }
    }

    fn epoch_at(&self, width: Duration, now: Instant) -> u64 {
        let elapsed = now.saturating_duration_since(self.origin).as_nanos();
        u64::try_from(elapsed / width.as_nanos().max(1)).unwrap_or(u64::MAX)
    }

    /// Brings the ring to `now` under `cfg`'s geometry; returns the current bucket number.
    fn sync(&mut self, cfg: &Config, now: Instant) -> u64 {
        let (width, _) = cfg.geometry();
        if width != self.width {
            self.width = width;
            self.head = 0;
            self.clear();
        }
        self.head = self.head.max(self.epoch_at(width, now));
        self.head
    }

    fn clear(&mut self) {
        self.buckets = [Bucket::default(); MAX_BUCKETS];
    }

    fn add(&mut self, cfg: &Config, failure: bool, latency: Duration, now: Instant) {
        let epoch = self.sync(cfg, now);
        let slot = (epoch % MAX_BUCKETS as u64) as usize;
        if let Some(bucket) = self.buckets.get_mut(slot) {
            if bucket.epoch != epoch {
                *bucket = Bucket {
                    epoch,
                    ..Bucket::default()
                };
            }
            bucket.requests = bucket.requests.saturating_add(1);
            bucket.failures = bucket.failures.saturating_add(u32::from(failure));
            bucket.latency_ns = bucket.latency_ns.saturating_add(nanos_u64(latency));
        }
    }

    /// Totals over the buckets inside `cfg.window` as of `now` (read-only: interprets the tags
    /// with the width they were written with).
    fn stats(&self, cfg: &Config, now: Instant) -> WindowStats {
        let mut requests = 0u64;
        let mut failures = 0u64;
        let mut latency_ns = 0u64;
        if !self.width.is_zero() {
            let span = bucket_count(cfg.window, self.width);
            let current = self.head.max(self.epoch_at(self.width, now));
            for b in &self.buckets {
                if b.epoch <= current && current - b.epoch < span {
                    requests += u64::from(b.requests);
                    failures += u64::from(b.failures);
                    latency_ns = latency_ns.saturating_add(b.latency_ns);
                }
            }
        }
        let mean_latency = latency_ns.checked_div(requests).map(Duration::from_nanos);
        WindowStats {
            requests,
            failures,
            mean_latency,
        }
    }
}

/// Outlier state of one endpoint. The owner keeps one per endpoint (behind its own lock), calls
/// [`record`](Self::record) for every finished request and [`evaluate`] for the whole cluster.
#[derive(Clone, Debug)]
pub struct EndpointOutlier {
    /// Gateway errors / local failures in a row.
    consecutive_gateway: u32,
    /// 5xx of any kind (local failures included) in a row.
    consecutive_5xx: u32,
    window: Window,
    ejection: Option<Ejection>,
    /// Ejections so far (the multiplier); decays to 0 after a quiet `max_ejection_time`.
    times_ejected: u32,
    /// When the last ejection ended (expiry seen by `evaluate`, or `uneject`).
    last_restored: Option<Instant>,
}

impl EndpointOutlier {
    /// A fresh, healthy endpoint with an empty window starting at `now`.
    pub fn new(now: Instant) -> Self {
        Self {
            consecutive_gateway: 0,
            consecutive_5xx: 0,
            window: Window::new(now),
            ejection: None,
            times_ejected: 0,
            last_restored: None,
        }
    }

    /// Records one finished request. Returns true when a consecutive-failure threshold was just
    /// reached and the endpoint is not ejected: the caller should run `evaluate` now rather than
    /// at the next tick.
    ///
    /// O(1), no allocation. A request that finishes while the endpoint is ejected (it was in
    /// flight) still counts, but never asks for an evaluation.
    pub fn record(
        &mut self,
        cfg: &Config,
        outcome: Outcome,
        latency: Duration,
        now: Instant,
    ) -> bool {
        self.window.add(cfg, outcome.is_failure(), latency, now);
        match outcome {
            Outcome::Success => {
                self.consecutive_gateway = 0;
                self.consecutive_5xx = 0;
            }
            Outcome::ServerError => {
                self.consecutive_gateway = 0;
                self.consecutive_5xx = self.consecutive_5xx.saturating_add(1);
            }
            Outcome::GatewayError | Outcome::LocalFailure => {
                self.consecutive_gateway = self.consecutive_gateway.saturating_add(1);
                self.consecutive_5xx = self.consecutive_5xx.saturating_add(1);
            }
        }
        if self.ejection.is_some() {
            return false;
        }
        // `==`, not `>=`: only the request that reaches the threshold asks for an evaluation; if
        // that evaluation could not eject (cluster cap), the regular tick retries.
        let reached = |count: u32, threshold: u32| threshold != 0 && count == threshold;
        reached(self.consecutive_gateway, cfg.consecutive_gateway_failures)
            || reached(self.consecutive_5xx, cfg.consecutive_5xx)
    }

    /// The current ejection, if any (even if `until` has passed and `evaluate` has not yet
    /// restored it).
    pub fn ejection(&self) -> Option<&Ejection> {
        self.ejection.as_ref()
    }

    /// Whether the endpoint is currently ejected (see [`ejection`](Self::ejection)).
    pub fn is_ejected(&self) -> bool {
        self.ejection.is_some()
    }

    /// How many times this endpoint has been ejected (the next ejection's multiplier minus one).
    pub fn times_ejected(&self) -> u32 {
        self.times_ejected
    }

    /// A passing active health check lifts an ejection early (Envoy's
    /// `successful_active_health_check_uneject_host`). The multiplier is kept; its decay starts
    /// now. Returns true if the endpoint was ejected.
    pub fn uneject(&mut self, now: Instant) -> bool {
        if self.ejection.take().is_some() {
            self.last_restored = Some(now);
            true
        } else {
            false
        }
    }

    /// Requests, failures and mean latency over the window as of `now` (for `/clusters`).
    pub fn window_stats(&self, cfg: &Config, now: Instant) -> WindowStats {
        self.window.stats(cfg, now)
    }

    /// Current run lengths: (gateway failures in a row, 5xx in a row).
    pub fn consecutive(&self) -> (u32, u32) {
        (self.consecutive_gateway, self.consecutive_5xx)
    }

    /// The first rule, in priority order, that this (not ejected) endpoint breaks.
    fn candidate(
        &self,
        cfg: &Config,
        stats: &WindowStats,
        latency_bar: Option<f64>,
    ) -> Option<Reason> {
        let breaks = |count: u32, threshold: u32| threshold != 0 && count >= threshold;
        if breaks(self.consecutive_gateway, cfg.consecutive_gateway_failures) {
            return Some(Reason::ConsecutiveGatewayFailures);
        }
        if breaks(self.consecutive_5xx, cfg.consecutive_5xx) {
            return Some(Reason::Consecutive5xx);
        }
        if cfg.failure_rate_percent != 0
            && stats.requests > 0
            && stats.requests >= u64::from(cfg.failure_rate_min_requests)
            && stats.failures.saturating_mul(100)
                >= stats
                    .requests
                    .saturating_mul(u64::from(cfg.failure_rate_percent))
        {
            return Some(Reason::FailureRate);
        }
        if let (Some(bar), Some(mean)) = (latency_bar, latency_sample(cfg, stats))
            && mean > cfg.latency_floor
            && nanos_u64(mean) as f64 > bar
        {
            return Some(Reason::Latency);
        }
        None
    }

    /// Ejects at `now`; returns the ejection for the event.
    fn eject(
        &mut self,
        cfg: &Config,
        reason: Reason,
        now: Instant,
        rng: &mut fastrand::Rng,
    ) -> Ejection {
        let count = self.times_ejected.saturating_add(1);
        self.times_ejected = count;
        let cap = cfg.effective_max_ejection();
        let jitter_ns = nanos_u64(cfg.ejection_jitter);
        let jitter = if jitter_ns == 0 {
            Duration::ZERO
        } else {
            Duration::from_nanos(rng.u64(0..jitter_ns))
        };
        let length = cfg
            .base_ejection_time
            .saturating_mul(count)
            .min(cap)
            .saturating_add(jitter);
        // Only absurd configs overflow `Instant`; fall back to the cap, then to "until the next
        // tick", rather than panic.
        let until = now
            .checked_add(length)
            .or_else(|| now.checked_add(cap))
            .unwrap_or(now);
        let ejection = Ejection {
            reason,
            since: now,
            until,
            count,
        };
        // It returns with a clean slate: the failures that got it ejected must not eject it again
        // the moment it is restored.
        self.consecutive_gateway = 0;
        self.consecutive_5xx = 0;
        self.window.clear();
        self.ejection = Some(ejection.clone());
        ejection
    }
}

/// The window mean of an endpoint with enough volume to take part in latency judgement.
fn latency_sample(cfg: &Config, stats: &WindowStats) -> Option<Duration> {
    let min = u64::from(cfg.latency_min_requests).max(1);
    stats.mean_latency.filter(|_| stats.requests >= min)
}

/// Lower median of `means` (in ns), or `None` with fewer than two: one endpoint has no peer to
/// be slower than. The lower median (not the average of the middle two) so that with exactly two
/// endpoints the slower one can still be an outlier of the faster one.
fn lower_median(means: &mut [u64]) -> Option<u64> {
    if means.len() < 2 {
        return None;
    }
    means.sort_unstable();
    means.get((means.len() - 1) / 2).copied()
}

/// One evaluation pass over a cluster's endpoints (all of them, in a stable order; `index` in
/// events is the position in the slice).
///
/// In order: restores every ejected endpoint whose `until <= now`; resets the multiplier of
/// endpoints in for a whole `max_ejection_time` since their last restore; then ejects, lowest
/// index first, endpoints breaking a rule (consecutive gateway failures, consecutive 5xx,
/// failure rate, latency: the first that matches is the reason) while the number ejected stays
/// within `max(1, floor(n * max_ejection_percent / 100))`. The latency median is taken once,
/// before any ejection of this pass, over endpoints that are in rotation and have volume.
pub fn evaluate<E: DerefMut<Target = EndpointOutlier>>(
    cfg: &Config,
    endpoints: &mut [E],
    now: Instant,
    rng: &mut fastrand::Rng,
) -> Vec<Event> {
    let mut events = Vec::new();
    let decay_after = cfg.effective_max_ejection();
    let mut ejected = 0usize;
    for (index, ep) in endpoints.iter_mut().enumerate() {
        let ep: &mut EndpointOutlier = ep;
        ep.window.sync(cfg, now);
        if ep.ejection.as_ref().is_some_and(|e| e.until <= now) {
            ep.ejection = None;
            ep.last_restored = Some(now);
            events.push(Event::Restored { index });
        }
        if ep.ejection.is_some() {
            ejected += 1;
        } else if ep.times_ejected > 0
            && ep
                .last_restored
                .is_some_and(|t| now.saturating_duration_since(t) >= decay_after)
        {
            ep.times_ejected = 0;
        }
    }

    let limit = max_ejected(endpoints.len(), cfg.max_ejection_percent);
    if ejected >= limit {
        return events;
    }

    let stats: Vec<WindowStats> = endpoints
        .iter()
        .map(|ep| ep.window.stats(cfg, now))
        .collect();
    let latency_bar = cfg.effective_latency_factor().and_then(|factor| {
        let mut means: Vec<u64> = endpoints
            .iter()
            .zip(&stats)
            .filter(|(ep, _)| ep.ejection.is_none())
            .filter_map(|(_, s)| latency_sample(cfg, s).map(nanos_u64))
            .collect();
        lower_median(&mut means).map(|median| factor * median as f64)
    });

    for (index, (ep, stats)) in endpoints.iter_mut().zip(&stats).enumerate() {
        if ejected >= limit {
            break;
        }
        if ep.ejection.is_some() {
            continue;
        }
        if let Some(reason) = ep.candidate(cfg, stats, latency_bar) {
            let ejection = ep.eject(cfg, reason, now, rng);
            ejected += 1;
            events.push(Event::Ejected { index, ejection });
        }
    }
    events
}

/// A change [`evaluate`] made, for logs, metrics and the balancer.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// The endpoint at `index` was taken out of balancing.
    Ejected {
        /// Position in the slice passed to [`evaluate`].
        index: usize,
        /// The new ejection.
        ejection: Ejection,
    },
    /// The endpoint at `index` is back (its ejection expired).
    Restored {
        /// Position in the slice passed to [`evaluate`].
        index: usize,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MS: Duration = Duration::from_millis(1);
    const SEC: Duration = Duration::from_secs(1);

    /// Defaults without jitter, so ejection lengths are exact.
    fn cfg() -> Config {
        Config {
            ejection_jitter: Duration::ZERO,
            ..Config::default()
        }
    }

    fn endpoints(n: usize, now: Instant) -> Vec<EndpointOutlier> {
        (0..n).map(|_| EndpointOutlier::new(now)).collect()
    }

    fn eval(
        cfg: &Config,
        eps: &mut [EndpointOutlier],
        now: Instant,
        rng: &mut fastrand::Rng,
    ) -> Vec<Event> {
        let mut refs: Vec<&mut EndpointOutlier> = eps.iter_mut().collect();
        evaluate(cfg, &mut refs, now, rng)
    }

    fn record_n(
        ep: &mut EndpointOutlier,
        cfg: &Config,
        outcome: Outcome,
        latency: Duration,
        n: u32,
        now: Instant,
    ) {
        for _ in 0..n {
            ep.record(cfg, outcome, latency, now);
        }
    }

    fn ejected_indices(events: &[Event]) -> Vec<(usize, Reason)> {
        events
            .iter()
            .filter_map(|e| match e {
                Event::Ejected { index, ejection } => Some((*index, ejection.reason)),
                Event::Restored { .. } => None,
            })
            .collect()
    }

    fn ejection_len(e: &Ejection) -> Duration {
        e.until.duration_since(e.since)
    }

    #[test]
    fn reason_names() {
        assert_eq!(
            Reason::ConsecutiveGatewayFailures.as_str(),
            "consecutive_gateway_failures"
        );
        assert_eq!(Reason::Consecutive5xx.as_str(), "consecutive_5xx");
        assert_eq!(Reason::FailureRate.as_str(), "failure_rate");
        assert_eq!(Reason::Latency.as_str(), "latency");
    }

    #[test]
    fn counters_follow_outcomes() {
        let cfg = cfg();
        let t = Instant::now();
        let mut ep = EndpointOutlier::new(t);
        ep.record(&cfg, Outcome::GatewayError, MS, t);
        ep.record(&cfg, Outcome::LocalFailure, MS, t);
        assert_eq!(ep.consecutive(), (2, 2));
        ep.record(&cfg, Outcome::ServerError, MS, t);
        assert_eq!(
            ep.consecutive(),
            (0, 3),
            "a plain 5xx breaks the gateway run only"
        );
        ep.record(&cfg, Outcome::LocalFailure, MS, t);
        assert_eq!(ep.consecutive(), (1, 4));
        ep.record(&cfg, Outcome::Success, MS, t);
        assert_eq!(ep.consecutive(), (0, 0));
    }

    #[test]
    fn record_asks_for_evaluation_exactly_at_the_threshold() {
        let cfg = Config {
            consecutive_5xx: 0,
            ..cfg()
        };
        let t = Instant::now();
        let mut ep = EndpointOutlier::new(t);
        let asks: Vec<bool> = (0..7)
            .map(|_| ep.record(&cfg, Outcome::GatewayError, MS, t))
            .collect();
        assert_eq!(asks, [false, false, false, false, true, false, false]);

        let cfg = Config {
            consecutive_gateway_failures: 0,
            consecutive_5xx: 3,
            ..cfg
        };
        let mut ep = EndpointOutlier::new(t);
        let asks: Vec<bool> = (0..4)
            .map(|_| ep.record(&cfg, Outcome::ServerError, MS, t))
            .collect();
        assert_eq!(asks, [false, false, true, false]);
    }

    #[test]
    fn disabled_thresholds_never_ask_nor_eject() {
        let cfg = Config {
            consecutive_gateway_failures: 0,
            consecutive_5xx: 0,
            failure_rate_percent: 0,
            ..cfg()
        };
        let t = Instant::now();
        let mut eps = endpoints(1, t);
        for _ in 0..100 {
            assert!(!eps[0].record(&cfg, Outcome::LocalFailure, MS, t));
        }
        assert!(eval(&cfg, &mut eps, t, &mut fastrand::Rng::with_seed(1)).is_empty());
    }

    #[test]
    fn consecutive_gateway_failures_threshold_is_exact() {
        let cfg = cfg();
        let t = Instant::now();
        let mut rng = fastrand::Rng::with_seed(1);
        let mut eps = endpoints(2, t);
        record_n(&mut eps[0], &cfg, Outcome::GatewayError, MS, 4, t);
        assert!(eval(&cfg, &mut eps, t, &mut rng).is_empty());
        eps[0].record(&cfg, Outcome::GatewayError, MS, t);
        let events = eval(&cfg, &mut eps, t, &mut rng);
        assert_eq!(
            ejected_indices(&events),
            [(0, Reason::ConsecutiveGatewayFailures)]
        );
        let e = eps[0].ejection().cloned().unwrap();
        assert_eq!((e.since, e.until, e.count), (t, t + 30 * SEC, 1));
        assert!(eps[0].is_ejected() && !eps[1].is_ejected());
    }

    #[test]
    fn consecutive_5xx_counts_every_kind_of_5xx() {
        let cfg = cfg();
        let t = Instant::now();
        let mut rng = fastrand::Rng::with_seed(1);
        let mut eps = endpoints(2, t);
        // Gateway run 2 (broken by the plain 5xx, restarted), 5xx run 5.
        for o in [
            Outcome::GatewayError,
            Outcome::LocalFailure,
            Outcome::ServerError,
            Outcome::GatewayError,
        ] {
            eps[0].record(&cfg, o, MS, t);
        }
        assert!(eval(&cfg, &mut eps, t, &mut rng).is_empty());
        assert!(eps[0].record(&cfg, Outcome::LocalFailure, MS, t));
        assert_eq!(eps[0].consecutive(), (2, 5));
        let events = eval(&cfg, &mut eps, t, &mut rng);
        assert_eq!(ejected_indices(&events), [(0, Reason::Consecutive5xx)]);
    }

    #[test]
    fn a_success_breaks_the_run() {
        let cfg = cfg();
        let t = Instant::now();
        let mut eps = endpoints(2, t);
        record_n(&mut eps[0], &cfg, Outcome::GatewayError, MS, 4, t);
        eps[0].record(&cfg, Outcome::Success, MS, t);
        record_n(&mut eps[0], &cfg, Outcome::GatewayError, MS, 4, t);
        assert!(eval(&cfg, &mut eps, t, &mut fastrand::Rng::with_seed(1)).is_empty());
    }

    #[test]
    fn reasons_are_checked_in_order() {
        let t = Instant::now();
        let mut rng = fastrand::Rng::with_seed(1);

        // Gateway errors are 5xx too: both runs are at 5, the gateway rule wins.
        let cfg = cfg();
        let mut eps = endpoints(2, t);
        record_n(&mut eps[0], &cfg, Outcome::GatewayError, MS, 5, t);
        let ev = eval(&cfg, &mut eps, t, &mut rng);
        assert_eq!(
            ejected_indices(&ev),
            [(0, Reason::ConsecutiveGatewayFailures)]
        );

        // With the gateway rule off, the same run is caught as 5xx.
        let no_gw = Config {
            consecutive_gateway_failures: 0,
            ..cfg.clone()
        };
        let mut eps = endpoints(2, t);
        record_n(&mut eps[0], &no_gw, Outcome::GatewayError, MS, 5, t);
        let ev = eval(&no_gw, &mut eps, t, &mut rng);
        assert_eq!(ejected_indices(&ev), [(0, Reason::Consecutive5xx)]);

        // Consecutive 5xx beats failure rate (5 of 25 = 20% >= 10%).
        let rate10 = Config {
            failure_rate_percent: 10,
            ..cfg.clone()
        };
        let mut eps = endpoints(2, t);
        record_n(&mut eps[0], &rate10, Outcome::Success, MS, 20, t);
        record_n(&mut eps[0], &rate10, Outcome::ServerError, MS, 5, t);
        let ev = eval(&rate10, &mut eps, t, &mut rng);
        assert_eq!(ejected_indices(&ev), [(0, Reason::Consecutive5xx)]);

        // Failure rate beats latency: endpoint 2 is both slow and failing half the time.
        let mut eps = endpoints(3, t);
        for ep in &mut eps[..2] {
            record_n(ep, &cfg, Outcome::Success, 30 * MS, 20, t);
        }
        for _ in 0..10 {
            eps[2].record(&cfg, Outcome::ServerError, SEC, t);
            eps[2].record(&cfg, Outcome::Success, SEC, t);
        }
        let ev = eval(&cfg, &mut eps, t, &mut rng);
        assert_eq!(ejected_indices(&ev), [(2, Reason::FailureRate)]);
    }

    #[test]
    fn failure_rate_threshold_and_volume_are_exact() {
        let cfg = cfg();
        let t = Instant::now();
        let mut rng = fastrand::Rng::with_seed(1);
        let alternate = |ep: &mut EndpointOutlier, failures: u32, successes: u32| {
            for i in 0..failures.max(successes) {
                if i < failures {
                    ep.record(&cfg, Outcome::ServerError, MS, t);
                }
                if i < successes {
                    ep.record(&cfg, Outcome::Success, MS, t);
                }
            }
        };
        // 10/20 = 50%: ejected.
        let mut eps = endpoints(2, t);
        alternate(&mut eps[0], 10, 10);
        let ev = eval(&cfg, &mut eps, t, &mut rng);
        assert_eq!(ejected_indices(&ev), [(0, Reason::FailureRate)]);
        // 10/21 < 50%: kept.
        let mut eps = endpoints(2, t);
        alternate(&mut eps[0], 10, 11);
        assert!(eval(&cfg, &mut eps, t, &mut rng).is_empty());
        // 10/19 > 50% but below the volume of 20: kept.
        let mut eps = endpoints(2, t);
        alternate(&mut eps[0], 10, 9);
        assert_eq!(eps[0].window_stats(&cfg, t).requests, 19);
        assert!(eval(&cfg, &mut eps, t, &mut rng).is_empty());
        // Rate rule off: 100% failures (no runs, since the consecutive rules are off too) kept.
        let off = Config {
            failure_rate_percent: 0,
            consecutive_5xx: 0,
            consecutive_gateway_failures: 0,
            ..cfg.clone()
        };
        let mut eps = endpoints(2, t);
        record_n(&mut eps[0], &off, Outcome::ServerError, MS, 40, t);
        assert!(eval(&off, &mut eps, t, &mut rng).is_empty());
    }

    #[test]
    fn window_slides_and_old_failures_fall_out() {
        let cfg = Config {
            consecutive_5xx: 0,
            consecutive_gateway_failures: 0,
            ..cfg()
        };
        let t = Instant::now();
        let mut ep = EndpointOutlier::new(t);
        record_n(&mut ep, &cfg, Outcome::ServerError, 10 * MS, 10, t);
        record_n(&mut ep, &cfg, Outcome::Success, 30 * MS, 10, t + 5 * SEC);
        assert_eq!(
            ep.window_stats(&cfg, t + 5 * SEC),
            WindowStats {
                requests: 20,
                failures: 10,
                mean_latency: Some(20 * MS)
            }
        );
        // The first bucket is [t, t+1s); it is in the 10 s window until t+10s.
        assert_eq!(
            ep.window_stats(&cfg, t + 10 * SEC - Duration::from_nanos(1))
                .failures,
            10
        );
        assert_eq!(
            ep.window_stats(&cfg, t + 10 * SEC),
            WindowStats {
                requests: 10,
                failures: 0,
                mean_latency: Some(30 * MS)
            }
        );
        assert_eq!(
            ep.window_stats(&cfg, t + 15 * SEC),
            WindowStats {
                requests: 0,
                failures: 0,
                mean_latency: None
            }
        );

        // The same history judged before / after the failures slide out.
        let mut rng = fastrand::Rng::with_seed(1);
        let mut early = vec![ep.clone(), EndpointOutlier::new(t)];
        let mut late = vec![ep, EndpointOutlier::new(t)];
        assert_eq!(
            ejected_indices(&eval(&cfg, &mut early, t + 9 * SEC, &mut rng)),
            [(0, Reason::FailureRate)]
        );
        assert!(eval(&cfg, &mut late, t + 10 * SEC, &mut rng).is_empty());
    }

    #[test]
    fn long_windows_use_wider_buckets_not_more() {
        let cfg = Config {
            window: Duration::from_secs(120),
            ..cfg()
        };
        let t = Instant::now();
        let mut ep = EndpointOutlier::new(t);
        ep.record(&cfg, Outcome::ServerError, MS, t);
        assert_eq!(ep.window_stats(&cfg, t + 119 * SEC).failures, 1);
        assert_eq!(ep.window_stats(&cfg, t + 120 * SEC).failures, 0);
        // A recycled slot (t + 120 s lands where t did) starts from zero.
        ep.record(&cfg, Outcome::Success, MS, t + 120 * SEC);
        assert_eq!(ep.window_stats(&cfg, t + 120 * SEC).requests, 1);
    }

    #[test]
    fn a_late_timestamp_lands_in_the_current_bucket() {
        let cfg = cfg();
        let t = Instant::now();
        let mut ep = EndpointOutlier::new(t + 5 * SEC);
        ep.record(&cfg, Outcome::Success, MS, t + 20 * SEC);
        // Earlier than the last record, and even earlier than the origin.
        ep.record(&cfg, Outcome::ServerError, MS, t + 8 * SEC);
        ep.record(&cfg, Outcome::ServerError, MS, t);
        let s = ep.window_stats(&cfg, t + 20 * SEC);
        assert_eq!((s.requests, s.failures), (3, 2));
        assert_eq!(ep.window_stats(&cfg, t + 30 * SEC).requests, 0);
    }

    #[test]
    fn changing_the_bucket_width_restarts_the_window() {
        let t = Instant::now();
        let cfg = cfg();
        let mut ep = EndpointOutlier::new(t);
        record_n(&mut ep, &cfg, Outcome::Success, MS, 3, t);
        let wider = Config {
            interval: 2 * SEC,
            ..cfg.clone()
        };
        ep.record(&wider, Outcome::Success, MS, t);
        assert_eq!(ep.window_stats(&wider, t).requests, 1);
        // Changing only the window keeps the data.
        let shorter = Config {
            window: 4 * SEC,
            ..wider.clone()
        };
        ep.record(&shorter, Outcome::Success, MS, t);
        assert_eq!(ep.window_stats(&shorter, t).requests, 2);
    }

    #[test]
    fn latency_of_failures_counts() {
        let cfg = cfg();
        let t = Instant::now();
        let mut ep = EndpointOutlier::new(t);
        ep.record(&cfg, Outcome::Success, 10 * MS, t);
        ep.record(&cfg, Outcome::LocalFailure, 5 * SEC, t);
        assert_eq!(
            ep.window_stats(&cfg, t).mean_latency,
            Some(Duration::from_millis(2505))
        );
    }

    /// Three endpoints with 20 requests each at the given latencies.
    fn latency_cluster(cfg: &Config, lat: [Duration; 3], t: Instant) -> Vec<EndpointOutlier> {
        let mut eps = endpoints(3, t);
        for (ep, l) in eps.iter_mut().zip(lat) {
            record_n(ep, cfg, Outcome::Success, l, 20, t);
        }
        eps
    }

    #[test]
    fn latency_outlier_is_ejected_strictly_above_factor_times_median() {
        let cfg = cfg();
        let t = Instant::now();
        let mut rng = fastrand::Rng::with_seed(1);
        let mut eps = latency_cluster(&cfg, [30 * MS, 30 * MS, 91 * MS], t);
        assert_eq!(
            ejected_indices(&eval(&cfg, &mut eps, t, &mut rng)),
            [(2, Reason::Latency)]
        );
        let mut eps = latency_cluster(&cfg, [30 * MS, 30 * MS, 90 * MS], t);
        assert!(eval(&cfg, &mut eps, t, &mut rng).is_empty());
        // The median, not the mean: one very slow peer does not shield another slow one.
        let mut eps = endpoints(5, t);
        for (ep, l) in eps.iter_mut().zip([30, 30, 30, 200, 5000]) {
            record_n(ep, &cfg, Outcome::Success, l * MS, 20, t);
        }
        let cap_all = Config {
            max_ejection_percent: 100,
            ..cfg.clone()
        };
        let ev = eval(&cap_all, &mut eps, t, &mut rng);
        assert_eq!(
            ejected_indices(&ev),
            [(3, Reason::Latency), (4, Reason::Latency)]
        );
    }

    #[test]
    fn no_latency_ejection_when_all_are_slow() {
        let cfg = cfg();
        let t = Instant::now();
        let mut eps = latency_cluster(&cfg, [2 * SEC, 2 * SEC, 2 * SEC], t);
        assert!(eval(&cfg, &mut eps, t, &mut fastrand::Rng::with_seed(1)).is_empty());
    }

    #[test]
    fn latency_needs_two_endpoints_with_volume() {
        let cfg = cfg();
        let t = Instant::now();
        let mut rng = fastrand::Rng::with_seed(1);
        // Alone: no peer to be slower than.
        let mut eps = endpoints(1, t);
        record_n(&mut eps[0], &cfg, Outcome::Success, 5 * SEC, 100, t);
        assert!(eval(&cfg, &mut eps, t, &mut rng).is_empty());
        // The fast peer has 19 requests: still no median.
        let mut eps = endpoints(2, t);
        record_n(&mut eps[0], &cfg, Outcome::Success, 500 * MS, 20, t);
        record_n(&mut eps[1], &cfg, Outcome::Success, 30 * MS, 19, t);
        assert!(eval(&cfg, &mut eps, t, &mut rng).is_empty());
        // One more request and the slow one is judged against it.
        eps[1].record(&cfg, Outcome::Success, 30 * MS, t);
        assert_eq!(
            ejected_indices(&eval(&cfg, &mut eps, t, &mut rng)),
            [(0, Reason::Latency)]
        );
    }

    #[test]
    fn the_slow_endpoint_itself_needs_volume() {
        let cfg = cfg();
        let t = Instant::now();
        let mut eps = latency_cluster(&cfg, [30 * MS, 30 * MS, 30 * MS], t);
        eps.push(EndpointOutlier::new(t));
        record_n(&mut eps[3], &cfg, Outcome::Success, 5 * SEC, 19, t);
        let mut rng = fastrand::Rng::with_seed(1);
        assert!(eval(&cfg, &mut eps, t, &mut rng).is_empty());
        eps[3].record(&cfg, Outcome::Success, 5 * SEC, t);
        assert_eq!(
            ejected_indices(&eval(&cfg, &mut eps, t, &mut rng)),
            [(3, Reason::Latency)]
        );
    }

    #[test]
    fn latency_floor_protects_fast_endpoints() {
        let cfg = cfg();
        let t = Instant::now();
        let mut rng = fastrand::Rng::with_seed(1);
        // 20x the median but only 20 ms: noise.
        let mut eps = latency_cluster(&cfg, [MS, MS, 20 * MS], t);
        assert!(eval(&cfg, &mut eps, t, &mut rng).is_empty());
        let mut eps = latency_cluster(&cfg, [MS, MS, 21 * MS], t);
        assert_eq!(
            ejected_indices(&eval(&cfg, &mut eps, t, &mut rng)),
            [(2, Reason::Latency)]
        );
    }

    #[test]
    fn latency_factor_zero_disables_and_below_one_acts_as_one() {
        let t = Instant::now();
        let mut rng = fastrand::Rng::with_seed(1);
        let off = Config {
            latency_factor: 0.0,
            ..cfg()
        };
        let mut eps = latency_cluster(&off, [30 * MS, 30 * MS, 10 * SEC], t);
        assert!(eval(&off, &mut eps, t, &mut rng).is_empty());
        let nan = Config {
            latency_factor: f64::NAN,
            ..cfg()
        };
        let mut eps = latency_cluster(&nan, [30 * MS, 30 * MS, 10 * SEC], t);
        assert!(eval(&nan, &mut eps, t, &mut rng).is_empty());
        // 0.5 would eject the median itself; it acts as 1: only the slower one goes.
        let half = Config {
            latency_factor: 0.5,
            max_ejection_percent: 100,
            ..cfg()
        };
        let mut eps = latency_cluster(&half, [30 * MS, 30 * MS, 31 * MS], t);
        assert_eq!(
            ejected_indices(&eval(&half, &mut eps, t, &mut rng)),
            [(2, Reason::Latency)]
        );
    }

    /// `n` endpoints that all break the gateway rule.
    fn failing(cfg: &Config, n: usize, t: Instant) -> Vec<EndpointOutlier> {
        let mut eps = endpoints(n, t);
        for ep in &mut eps {
            record_n(ep, cfg, Outcome::GatewayError, MS, 5, t);
        }
        eps
    }

    #[test]
    fn max_percent_ejects_at_least_one_host() {
        let cfg = Config {
            max_ejection_percent: 10,
            ..cfg()
        };
        let t = Instant::now();
        let mut rng = fastrand::Rng::with_seed(1);
        let mut eps = failing(&cfg, 3, t);
        let ev = eval(&cfg, &mut eps, t, &mut rng);
        assert_eq!(
            ejected_indices(&ev),
            [(0, Reason::ConsecutiveGatewayFailures)]
        );
        // Still capped on the next pass; the others keep their runs for later.
        assert!(eval(&cfg, &mut eps, t + SEC, &mut rng).is_empty());
        assert_eq!(eps[1].consecutive(), (5, 5));
    }

    #[test]
    fn max_percent_caps_and_counts_endpoints_already_out() {
        let t = Instant::now();
        let mut rng = fastrand::Rng::with_seed(1);
        let cfg20 = Config {
            max_ejection_percent: 20,
            ..cfg()
        };
        let mut eps = failing(&cfg20, 10, t);
        let ev = eval(&cfg20, &mut eps, t, &mut rng);
        let idx: Vec<usize> = ejected_indices(&ev).into_iter().map(|(i, _)| i).collect();
        assert_eq!(idx, [0, 1], "lowest index first, at most floor(10 * 20%)");

        let cfg50 = cfg();
        let mut eps = failing(&cfg50, 1, t);
        eps.extend(endpoints(3, t));
        assert_eq!(eval(&cfg50, &mut eps, t, &mut rng).len(), 1);
        for ep in &mut eps[1..] {
            record_n(ep, &cfg50, Outcome::GatewayError, MS, 5, t);
        }
        let ev = eval(&cfg50, &mut eps, t, &mut rng);
        assert_eq!(
            ejected_indices(&ev),
            [(1, Reason::ConsecutiveGatewayFailures)]
        );
    }

    #[test]
    fn max_percent_zero_never_ejects() {
        let cfg = Config {
            max_ejection_percent: 0,
            ..cfg()
        };
        let t = Instant::now();
        let mut eps = failing(&cfg, 3, t);
        assert!(eval(&cfg, &mut eps, t, &mut fastrand::Rng::with_seed(1)).is_empty());
        assert!(eps.iter().all(|e| !e.is_ejected()));
    }

    #[test]
    fn max_ejected_formula() {
        assert_eq!(max_ejected(3, 10), 1);
        assert_eq!(max_ejected(10, 25), 2);
        assert_eq!(max_ejected(10, 100), 10);
        assert_eq!(max_ejected(10, 0), 0);
        assert_eq!(max_ejected(0, 50), 0);
    }

    /// Ejects the single endpoint of `eps` through `evaluate`, lets it expire, and returns the
    /// ejection together with the time it was restored.
    fn eject_and_restore(
        cfg: &Config,
        eps: &mut [EndpointOutlier],
        t: Instant,
        rng: &mut fastrand::Rng,
    ) -> (Ejection, Instant) {
        record_n(&mut eps[0], cfg, Outcome::GatewayError, MS, 5, t);
        let ev = eval(cfg, eps, t, rng);
        let Some(Event::Ejected { ejection, .. }) = ev.into_iter().next() else {
            panic!("not ejected at {t:?}");
        };
        let back = ejection.until;
        assert_eq!(eval(cfg, eps, back, rng), [Event::Restored { index: 0 }]);
        (ejection, back)
    }

    #[test]
    fn multiplier_grows_and_is_capped() {
        let cfg = cfg();
        let mut t = Instant::now();
        let mut rng = fastrand::Rng::with_seed(1);
        let mut eps = endpoints(1, t);
        let mut lengths = Vec::new();
        for n in 1..=12u32 {
            let (e, back) = eject_and_restore(&cfg, &mut eps, t, &mut rng);
            assert_eq!(e.count, n);
            assert_eq!(eps[0].times_ejected(), n);
            lengths.push(ejection_len(&e).as_secs());
            t = back;
        }
        assert_eq!(
            lengths,
            [30, 60, 90, 120, 150, 180, 210, 240, 270, 300, 300, 300]
        );
    }

    #[test]
    fn max_below_base_acts_as_base() {
        let cfg = Config {
            base_ejection_time: 60 * SEC,
            max_ejection_time: 10 * SEC,
            ..cfg()
        };
        let mut t = Instant::now();
        let mut rng = fastrand::Rng::with_seed(1);
        let mut eps = endpoints(1, t);
        for _ in 0..3 {
            let (e, back) = eject_and_restore(&cfg, &mut eps, t, &mut rng);
            assert_eq!(ejection_len(&e), 60 * SEC);
            t = back;
        }
    }

    #[test]
    fn jitter_stays_within_bound_and_varies() {
        let cfg = Config::default();
        let t = Instant::now();
        let mut rng = fastrand::Rng::with_seed(7);
        let mut lengths = Vec::new();
        for _ in 0..200 {
            let mut ep = EndpointOutlier::new(t);
            let e = ep.eject(&cfg, Reason::Latency, t, &mut rng);
            let len = ejection_len(&e);
            assert!(len >= 30 * SEC && len < 31 * SEC, "{len:?}");
            lengths.push(len);
        }
        lengths.sort();
        lengths.dedup();
        assert!(
            lengths.len() > 100,
            "jitter should spread returns: {}",
            lengths.len()
        );
    }

    #[test]
    fn multiplier_decays_after_a_quiet_max_ejection_time() {
        let cfg = cfg();
        let t = Instant::now();
        let mut rng = fastrand::Rng::with_seed(1);
        let mut eps = endpoints(1, t);
        let (_, back) = eject_and_restore(&cfg, &mut eps, t, &mut rng);
        let (_, back) = eject_and_restore(&cfg, &mut eps, back, &mut rng);
        assert_eq!(eps[0].times_ejected(), 2);
        eval(&cfg, &mut eps, back + 300 * SEC - MS, &mut rng);
        assert_eq!(eps[0].times_ejected(), 2);
        let later = back + 300 * SEC;
        eval(&cfg, &mut eps, later, &mut rng);
        assert_eq!(eps[0].times_ejected(), 0);
        let (e, _) = eject_and_restore(&cfg, &mut eps, later, &mut rng);
        assert_eq!((e.count, ejection_len(&e)), (1, 30 * SEC));
    }

    #[test]
    fn decay_is_applied_before_ejecting_in_the_same_pass() {
        let cfg = cfg();
        let t = Instant::now();
        let mut rng = fastrand::Rng::with_seed(1);
        let mut eps = endpoints(1, t);
        let (_, back) = eject_and_restore(&cfg, &mut eps, t, &mut rng);
        let (e, _) = eject_and_restore(&cfg, &mut eps, back + 400 * SEC, &mut rng);
        assert_eq!(e.count, 1);
    }

    #[test]
    fn restored_exactly_at_until() {
        let cfg = cfg();
        let t = Instant::now();
        let mut rng = fastrand::Rng::with_seed(1);
        let mut eps = failing(&cfg, 2, t);
        eval(&cfg, &mut eps, t, &mut rng);
        let until = eps[0].ejection().unwrap().until;
        assert!(eval(&cfg, &mut eps, until - Duration::from_nanos(1), &mut rng).is_empty());
        // Past `until` but not yet evaluated: still reported.
        assert!(eps[0].is_ejected());
        let ev = eval(&cfg, &mut eps, until, &mut rng);
        // Restored; endpoint 1 (still at its threshold) takes the freed slot in the same pass.
        assert_eq!(ev[0], Event::Restored { index: 0 });
        assert_eq!(
            ejected_indices(&ev),
            [(1, Reason::ConsecutiveGatewayFailures)]
        );
        assert!(eps[0].ejection().is_none());
        assert_eq!(
            eps[0].times_ejected(),
            1,
            "restoring does not reset the multiplier"
        );
    }

    #[test]
    fn uneject_lifts_early_and_keeps_the_multiplier() {
        let cfg = cfg();
        let t = Instant::now();
        let mut rng = fastrand::Rng::with_seed(1);
        let mut eps = failing(&cfg, 1, t);
        assert!(!EndpointOutlier::new(t).uneject(t));
        eval(&cfg, &mut eps, t, &mut rng);
        assert!(eps[0].uneject(t + SEC));
        assert!(!eps[0].is_ejected());
        assert!(!eps[0].uneject(t + SEC));
        // No Restored event later: it is already back.
        assert!(eval(&cfg, &mut eps, t + 60 * SEC, &mut rng).is_empty());
        // The decay counts from the uneject.
        eval(&cfg, &mut eps, t + 300 * SEC, &mut rng);
        assert_eq!(eps[0].times_ejected(), 1);
        let (e, _) = eject_and_restore(&cfg, &mut eps, t + 300 * SEC, &mut rng);
        assert_eq!((e.count, ejection_len(&e)), (2, 60 * SEC));
    }

    #[test]
    fn ejection_clears_counters_and_window() {
        let cfg = cfg();
        let t = Instant::now();
        let mut eps = failing(&cfg, 1, t);
        eval(&cfg, &mut eps, t, &mut fastrand::Rng::with_seed(1));
        assert_eq!(eps[0].consecutive(), (0, 0));
        assert_eq!(eps[0].window_stats(&cfg, t).requests, 0);
    }

    #[test]
    fn records_while_ejected_count_but_never_ask() {
        let cfg = cfg();
        let t = Instant::now();
        let mut eps = failing(&cfg, 1, t);
        eval(&cfg, &mut eps, t, &mut fastrand::Rng::with_seed(1));
        for _ in 0..10 {
            assert!(!eps[0].record(&cfg, Outcome::GatewayError, MS, t));
        }
        assert_eq!(eps[0].consecutive(), (10, 10));
        assert_eq!(eps[0].window_stats(&cfg, t).failures, 10);
    }

    #[test]
    fn works_through_mutex_guards() {
        let cfg = cfg();
        let t = Instant::now();
        let locks: Vec<std::sync::Mutex<EndpointOutlier>> = (0..2)
            .map(|_| std::sync::Mutex::new(EndpointOutlier::new(t)))
            .collect();
        let mut guards: Vec<_> = locks.iter().map(|m| m.lock().unwrap()).collect();
        record_n(&mut guards[1], &cfg, Outcome::LocalFailure, MS, 5, t);
        let ev = evaluate(&cfg, &mut guards, t, &mut fastrand::Rng::with_seed(1));
        assert_eq!(
            ejected_indices(&ev),
            [(1, Reason::ConsecutiveGatewayFailures)]
        );
    }

    #[derive(Clone, Debug)]
    enum Op {
        Record(usize, Outcome, u64),
        Advance(u64),
        Evaluate,
        Uneject(usize),
    }

    fn outcome() -> impl Strategy<Value = Outcome> {
        prop_oneof![
            3 => Just(Outcome::Success),
            1 => Just(Outcome::ServerError),
            1 => Just(Outcome::GatewayError),
            1 => Just(Outcome::LocalFailure),
        ]
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            6 => (0usize..8, outcome(), 0u64..400).prop_map(|(i, o, l)| Op::Record(i, o, l)),
            2 => (0u64..40_000).prop_map(Op::Advance),
            2 => Just(Op::Evaluate),
            1 => (0usize..8).prop_map(Op::Uneject),
        ]
    }

    /// Small thresholds so that ejections (and the caps) are exercised often.
    fn aggressive() -> impl Strategy<Value = Config> {
        (
            (1u32..6, 1u32..6, 0u32..80, 1u32..10),
            (1u32..5, 0u64..60_000, 0u64..120_000, 0u64..3_000),
            0u32..=120,
        )
            .prop_map(
                |((gw, fxx, rate, rate_min), (lat_min, base, max, jitter), pct)| Config {
                    consecutive_gateway_failures: gw,
                    consecutive_5xx: fxx,
                    failure_rate_percent: rate,
                    failure_rate_min_requests: rate_min,
                    latency_min_requests: lat_min,
                    latency_floor: Duration::ZERO,
                    base_ejection_time: Duration::from_millis(base),
                    max_ejection_time: Duration::from_millis(max),
                    ejection_jitter: Duration::from_millis(jitter),
                    max_ejection_percent: pct,
                    ..Config::default()
                },
            )
    }

    /// Plays `ops` like the owner would (evaluating when `record` asks), calling `check` on every
    /// event and the endpoints after every evaluation.
    fn play(
        cfg: &Config,
        n: usize,
        ops: &[Op],
        seed: u64,
        mut check: impl FnMut(&[EndpointOutlier], &Event, Instant),
    ) -> Result<(), TestCaseError> {
        let mut now = Instant::now();
        let mut rng = fastrand::Rng::with_seed(seed);
        let mut eps = endpoints(n, now);
        let limit = max_ejected(n, cfg.max_ejection_percent);
        for op in ops {
            let run = match *op {
                Op::Record(i, o, l) => eps[i % n].record(cfg, o, Duration::from_millis(l), now),
                Op::Advance(ms) => {
                    now += Duration::from_millis(ms);
                    false
                }
                Op::Evaluate => true,
                Op::Uneject(i) => {
                    eps[i % n].uneject(now);
                    false
                }
            };
            if run {
                for ev in eval(cfg, &mut eps, now, &mut rng) {
                    check(&eps, &ev, now);
                }
                let out = eps.iter().filter(|e| e.is_ejected()).count();
                prop_assert!(out <= limit, "{out} ejected of {n}, limit {limit}");
            }
        }
        Ok(())
    }

    proptest! {
        #[test]
        fn never_more_ejected_than_the_cap(
            cfg in aggressive(),
            n in 1usize..=8,
            ops in proptest::collection::vec(op(), 0..300),
            seed in any::<u64>(),
        ) {
            play(&cfg, n, &ops, seed, |_, _, _| {})?;
            if cfg.max_ejection_percent == 0 {
                prop_assert_eq!(max_ejected(n, 0), 0);
            }
        }

        #[test]
        fn ejection_length_is_within_base_and_max_plus_jitter(
            cfg in aggressive(),
            n in 1usize..=8,
            ops in proptest::collection::vec(op(), 0..300),
            seed in any::<u64>(),
        ) {
            let base = cfg.base_ejection_time;
            let max = cfg.max_ejection_time.max(base);
            let jitter = cfg.ejection_jitter;
            let mut bad = None;
            play(&cfg, n, &ops, seed, |_, ev, now| {
                if let Event::Ejected { ejection, .. } = ev {
                    let len = ejection.until.duration_since(ejection.since);
                    let ok = ejection.since == now
                        && len >= base
                        && if jitter.is_zero() { len <= max } else { len < max + jitter };
                    if !ok && bad.is_none() {
                        bad = Some(len);
                    }
                }
            })?;
            prop_assert!(bad.is_none(), "length {:?} outside [{:?}, {:?} + {:?})", bad, base, max, jitter);
        }

        #[test]
        fn identical_latencies_never_eject_for_latency(
            n in 2usize..=8,
            factor in 0.0f64..6.0,
            min in 1u32..5,
            steps in proptest::collection::vec((outcome(), 0u64..3_000, 0u64..2_000, 1u32..4), 1..200),
            seed in any::<u64>(),
        ) {
            let cfg = Config {
                consecutive_gateway_failures: 0,
                consecutive_5xx: 0,
                failure_rate_percent: 0,
                latency_factor: factor,
                latency_min_requests: min,
                latency_floor: Duration::ZERO,
                max_ejection_percent: 100,
                ..Config::default()
            };
            let mut now = Instant::now();
            let mut rng = fastrand::Rng::with_seed(seed);
            let mut eps = endpoints(n, now);
            for (o, latency_ms, advance_ms, repeat) in steps {
                for ep in &mut eps {
                    record_n(ep, &cfg, o, Duration::from_millis(latency_ms), repeat, now);
                }
                let events = eval(&cfg, &mut eps, now, &mut rng);
                prop_assert!(events.is_empty(), "{:?}", events);
                now += Duration::from_millis(advance_ms);
            }
        }
    }

    #[test]
    fn latency_property_has_teeth() {
        // The same harness with one endpoint getting different samples does eject.
        let cfg = Config {
            latency_floor: Duration::ZERO,
            latency_min_requests: 1,
            ..cfg()
        };
        let t = Instant::now();
        let mut eps = endpoints(3, t);
        for (i, ep) in eps.iter_mut().enumerate() {
            let l = if i == 2 { 400 * MS } else { 100 * MS };
            ep.record(&cfg, Outcome::Success, l, t);
        }
        let ev = eval(&cfg, &mut eps, t, &mut fastrand::Rng::with_seed(1));
        assert_eq!(ejected_indices(&ev), [(2, Reason::Latency)]);
    }
}
