//! Adaptive concurrency: a per-cluster limit on requests in flight that finds the upstream's
//! capacity from latency instead of a hand-set number (Envoy's `adaptive_concurrency` gradient
//! controller, Netflix concurrency-limits' Gradient2).
//!
//! Owns: the limit estimate, the no-load latency baseline (`min_rtt`) and its periodic
//! re-measurement, and the per-window latency summary. Does not own: counting requests in flight
//! or refusing them (the caller compares its own in-flight count with [`Adaptive::limit`]),
//! deciding which outcomes are failures (the caller reports them through [`Adaptive::on_drop`]),
//! metrics export, or sharing the state between tasks (the caller wraps it as it sees fit). Pure:
//! time comes in as `now`, randomness from the `fastrand::Rng` handed to [`Adaptive::new`].
//!
//! # Algorithm
//!
//! - **Baseline.** `min_rtt` is the latency of `min_rtt_samples` requests admitted while the
//!   limit is pinned to `min_limit`, i.e. while this proxy is not queueing at the upstream,
//!   summarised like a window (below). It is measured at start and again every
//!   `min_rtt_interval` (+ up to `jitter` of it, so that proxies sharing an upstream do not all
//!   pin at once), and whenever the limit has sat at `min_limit` for
//!   [`FLOOR_WINDOWS_BEFORE_PROBE`] windows (the baseline is likely stale: the upstream became
//!   slower for good). Only samples whose `in_flight_at_start` is at most `min_limit` count, so
//!   requests admitted before the pin (which still queue) cannot inflate it. The prior limit is
//!   restored afterwards.
//!
//!   Why pin rather than track a decaying minimum: this controller deliberately keeps the
//!   upstream about `buffer` over its no-load latency, so under sustained load *every* sample
//!   carries that queueing. A minimum over the last interval then drifts up to `(1 + buffer) ×`
//!   the true baseline, the next interval tolerates `buffer` on top of that, and the limit
//!   ratchets upward without bound. Pinning drains the queue; it costs about
//!   `min_rtt_samples / min_limit` service times of reduced concurrency per interval (≈ 90 ms of
//!   30 s with the defaults and a 10 ms upstream, ~0.3% of goodput).
//! - **Windows.** Every `sample_window` the mean latency of the window's successful requests
//!   (`sample_rtt`) is compared with the tolerated latency `min_rtt × (1 + buffer)`:
//!   `gradient = clamp(tolerated / sample_rtt, 0.5, 1.0)`, `target = limit × gradient`. The mean,
//!   not the median: by Little's law the mean latency of a saturated upstream is exactly
//!   `in_flight / throughput`, so `min_rtt / mean` *is* `capacity / in_flight`; a median stays at
//!   the service time until half the requests queue, which lets the limit overshoot to 1.5 ×
//!   capacity when service times are regular. Each sample counts for at most
//!   `(1 + buffer) / 0.5 × min_rtt` (where the gradient reaches its floor anyway), so one
//!   pathological request cannot drag a window; the baseline is the mean of its samples under the
//!   same cap (taken relative to their median), so a skewed latency distribution does not read as
//!   queueing. Running sums: nothing is allocated per sample.
//! - **Growth.** `sqrt(limit)` of headroom is added only when the window's mean is below the
//!   tolerated latency *and* the window used at least half the limit (Gradient2's app-limited
//!   rule: an idle cluster's limit stays within twice its real use). Envoy adds the headroom
//!   unconditionally, which settles the limit at `(1 + buffer) × C + sqrt(limit)`: 1.6 × capacity
//!   for a 10-wide upstream. Conditional headroom settles it at about `(1 + buffer) × C`, i.e.
//!   admitted requests see about `buffer` of queueing at full goodput.
//! - **Drops.** Failures and timeouts scale the target by `1 − 0.5 × drop_fraction` (at most one
//!   multiplicative cut per window, proportional so that a trickle of unrelated errors does not
//!   grind the limit down).
//! - **Smoothing.** `limit ← (1 − α) × limit + α × target` with α = [`SMOOTHING`], so one window
//!   cuts the limit by at most 25%; together with the capped mean and the gradient floor this
//!   keeps noise from collapsing the limit to `min_limit`, and re-measuring at the floor gets it
//!   out again if the baseline was wrong.
//!
//! Window arithmetic happens inside [`Adaptive::on_sample`] and [`Adaptive::on_drop`]: a window
//! closes at the first event after its end, so no timer is needed and an idle cluster costs
//! nothing (with no samples there is nothing to learn).

use std::time::{Duration, Instant};

/// Lowest gradient a window can apply: a single window at most halves the target.
const GRADIENT_FLOOR: f64 = 0.5;
/// Weight of a window's target in the new limit.
pub const SMOOTHING: f64 = 0.5;
/// Share of the limit a window consisting only of drops takes away (before smoothing).
const DROP_BACKOFF: f64 = 0.5;
/// Consecutive windows at `min_limit` after which the baseline is re-measured (Envoy: 5).
pub const FLOOR_WINDOWS_BEFORE_PROBE: u32 = 5;
/// Upper bound of `min_rtt_samples`, which sizes the one buffer allocated in `new`.
const MAX_MIN_RTT_SAMPLES: u32 = 1000;
/// Shortest accepted `sample_window`.
const MIN_SAMPLE_WINDOW: Duration = Duration::from_millis(1);
/// Baseline floor, so that ratios never divide by zero.
const MIN_RTT_FLOOR: Duration = Duration::from_micros(1);

/// Configuration of one cluster's adaptive limit. [`Adaptive::new`] normalises it (see each
/// field); [`Adaptive::config`] returns the values in effect.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdaptiveConfig {
    /// Lowest limit, in requests in flight per cluster; also the concurrency while the baseline
    /// is measured. 0 acts as 1.
    pub min_limit: u32,
    /// Highest limit, in requests in flight per cluster. Values below `min_limit` act as
    /// `min_limit`.
    pub max_limit: u32,
    /// Limit restored after the first baseline measurement, clamped to `[min_limit, max_limit]`.
    pub initial_limit: u32,
    /// Tolerated latency increase over the baseline, as a fraction (0.25: 25%). Values that are
    /// not finite and positive use the default; capped at 10.
    pub buffer: f64,
    /// How often the limit is recomputed. At least 1 ms.
    pub sample_window: Duration,
    /// How often the baseline is re-measured (plus jitter). At least `sample_window`.
    pub min_rtt_interval: Duration,
    /// Successful requests that make the baseline. Clamped to `[1, 1000]`.
    pub min_rtt_samples: u32,
    /// Random extra delay before each re-measurement, as a fraction of `min_rtt_interval`.
    /// Clamped to `[0, 1]`; not finite acts as 0.
    pub jitter: f64,
}

impl Default for AdaptiveConfig {
    /// Envoy's gradient-controller defaults, with a 30 s re-measurement interval.
    fn default() -> Self {
        Self {
            min_limit: 3,
            max_limit: 1000,
            initial_limit: 20,
            buffer: 0.25,
            sample_window: Duration::from_millis(100),
            min_rtt_interval: Duration::from_secs(30),
            min_rtt_samples: 25,
            jitter: 0.15,
        }
    }
}

impl AdaptiveConfig {
    fn normalized(self) -> Self {
        let d = Self::default();
        let min_limit = self.min_limit.max(1);
        let max_limit = self.max_limit.max(min_limit);
        let sample_window = self.sample_window.max(MIN_SAMPLE_WINDOW);
        Self {
            min_limit,
            max_limit,
            initial_limit: self.initial_limit.clamp(min_limit, max_limit),
            buffer: if self.buffer.is_finite() && self.buffer > 0.0 {
                self.buffer.min(10.0)
            } else {
                d.buffer
            },
            sample_window,
            min_rtt_interval: self.min_rtt_interval.max(sample_window),
            min_rtt_samples: self.min_rtt_samples.clamp(1, MAX_MIN_RTT_SAMPLES),
            jitter: if self.jitter.is_finite() {
                self.jitter.clamp(0.0, 1.0)
            } else {
                0.0
            },
        }
    }
}

/// What one window has seen so far.
#[derive(Clone, Copy, Debug, Default)]
struct Window {
    samples: u32,
    drops: u32,
    /// Highest `in_flight_at_start` among the samples.
    peak_in_flight: u32,
    /// Sum of `rtt / min_rtt`, each capped where the gradient reaches its floor.
    capped_ratios: f64,
    /// Sum of the latencies in seconds, uncapped (for [`Adaptive::sample_rtt`]).
    seconds: f64,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Phase {
    /// Measuring the baseline with the limit pinned to `min_limit`; `resume` is restored after.
    Probing { resume: f64 },
    /// Adjusting the limit window by window.
    Tracking,
}

/// The adaptive concurrency limit of one cluster. See the module docs for the algorithm.
#[derive(Clone, Debug)]
pub struct Adaptive {
    cfg: AdaptiveConfig,
    /// The limit as a real number, so that sub-integer growth of small limits accumulates.
    /// Always within `[min_limit, max_limit]`.
    estimate: f64,
    phase: Phase,
    min_rtt: Option<Duration>,
    /// When the next baseline measurement starts; `None` when that lies beyond `Instant`'s range.
    next_probe: Option<Instant>,
    /// Baseline samples; allocated once with `min_rtt_samples` capacity and never grown.
    probe: Vec<Duration>,
    window_start: Instant,
    window: Window,
    sample_rtt: Option<Duration>,
    floor_windows: u32,
    rng: fastrand::Rng,
}

impl Adaptive {
    /// A limiter that starts by measuring the baseline (limit pinned to `min_limit`), then
    /// continues from `initial_limit`. `rng` seeds the jitter of the re-measurements (the limiter
    /// keeps a fork of it, so that its window arithmetic can run inside `on_sample`).
    pub fn new(cfg: AdaptiveConfig, now: Instant, rng: &mut fastrand::Rng) -> Self {
        let cfg = cfg.normalized();
        Self {
            cfg,
            estimate: f64::from(cfg.initial_limit),
            phase: Phase::Probing {
                resume: f64::from(cfg.initial_limit),
            },
            min_rtt: None,
            next_probe: None,
            probe: Vec::with_capacity(cfg.min_rtt_samples as usize),
            window_start: now,
            window: Window::default(),
            sample_rtt: None,
            floor_windows: 0,
            rng: rng.fork(),
        }
    }

    /// The configuration in effect (normalised).
    pub fn config(&self) -> &AdaptiveConfig {
        &self.cfg
    }

    /// How many requests may be in flight to the cluster now. Always within
    /// `[min_limit, max_limit]`; `min_limit` while the baseline is measured.
    pub fn limit(&self) -> u32 {
        match self.phase {
            Phase::Probing { .. } => self.cfg.min_limit,
            // `estimate` is kept within `[min_limit, max_limit]`, so the saturating `as` is exact.
            Phase::Tracking => {
                (self.estimate.round() as u32).clamp(self.cfg.min_limit, self.cfg.max_limit)
            }
        }
    }

    /// The no-load latency baseline; `None` until the first measurement completes.
    pub fn min_rtt(&self) -> Option<Duration> {
        self.min_rtt
    }

    /// Mean latency of the successful requests of the last closed window (uncapped; the
    /// gradient uses the capped mean); `None` before the first such window.
    pub fn sample_rtt(&self) -> Option<Duration> {
        self.sample_rtt
    }

    /// Whether the baseline is being measured (the limit is pinned to `min_limit`).
    pub fn probing(&self) -> bool {
        matches!(self.phase, Phase::Probing { .. })
    }

    /// A successful request's latency. `in_flight_at_start` is the number of requests to this
    /// cluster in flight when it was admitted, counting itself.
    pub fn on_sample(&mut self, now: Instant, rtt: Duration, in_flight_at_start: u32) {
        self.roll(now);
        match self.phase {
            Phase::Probing { resume } => {
                // Requests admitted before the pin still queued at the upstream: not a baseline.
                if in_flight_at_start <= self.cfg.min_limit
                    && self.probe.len() < self.cfg.min_rtt_samples as usize
                {
                    self.probe.push(rtt);
                }
                if self.probe.len() >= self.cfg.min_rtt_samples as usize {
                    self.finish_probe(now, resume);
                }
            }
            Phase::Tracking => {
                let base = self.min_rtt.unwrap_or(MIN_RTT_FLOOR).as_secs_f64();
                let cap = self.ratio_cap();
                let w = &mut self.window;
                let secs = rtt.as_secs_f64();
                w.samples = w.samples.saturating_add(1);
                w.peak_in_flight = w.peak_in_flight.max(in_flight_at_start);
                w.capped_ratios += (secs / base).min(cap);
                w.seconds += secs;
            }
        }
    }

    /// A failed or timed-out request (a loss signal). Lowers the limit at the end of the window,
    /// in proportion to the window's share of drops. Ignored while the baseline is measured.
    pub fn on_drop(&mut self, now: Instant) {
        self.roll(now);
        if self.phase == Phase::Tracking {
            self.window.drops = self.window.drops.saturating_add(1);
        }
    }

    /// Closes the window if it is due, then starts a baseline measurement if that is due.
    fn roll(&mut self, now: Instant) {
        if self.phase != Phase::Tracking {
            return;
        }
        if now.saturating_duration_since(self.window_start) >= self.cfg.sample_window {
            self.close_window(now);
        }
        if self.next_probe.is_some_and(|at| now >= at) {
            self.phase = Phase::Probing {
                resume: self.estimate,
            };
            self.probe.clear();
            self.reset_window(now);
        }
    }

    /// Latency ratio (to `min_rtt`) at which the gradient reaches its floor; a sample counts for
    /// at most this much in a window's mean, so one pathological request cannot drag it.
    fn ratio_cap(&self) -> f64 {
        (1.0 + self.cfg.buffer) / GRADIENT_FLOOR
    }

    fn close_window(&mut self, now: Instant) {
        let Window {
            samples,
            drops,
            peak_in_flight,
            capped_ratios,
            seconds,
        } = self.window;
        let limit = self.estimate;
        if samples.saturating_add(drops) > 0 {
            let mut target = limit;
            let mut grow = false;
            if samples > 0 && self.min_rtt.is_some() {
                let n = f64::from(samples);
                self.sample_rtt = Duration::try_from_secs_f64(seconds / n).ok();
                let ratio = capped_ratios / n;
                let tolerated = 1.0 + self.cfg.buffer;
                target *= (tolerated / ratio).clamp(GRADIENT_FLOOR, 1.0);
                grow = ratio < tolerated;
            }
            if grow && f64::from(peak_in_flight) * 2.0 >= limit {
                target += limit.sqrt();
            }
            if drops > 0 {
                let share = f64::from(drops) / (f64::from(samples) + f64::from(drops));
                target *= 1.0 - DROP_BACKOFF * share;
            }
            let target = target.max(limit * GRADIENT_FLOOR);
            self.estimate = ((1.0 - SMOOTHING) * limit + SMOOTHING * target)
                .clamp(f64::from(self.cfg.min_limit), f64::from(self.cfg.max_limit));
            if self.limit() <= self.cfg.min_limit {
                self.floor_windows = self.floor_windows.saturating_add(1);
                if self.floor_windows >= FLOOR_WINDOWS_BEFORE_PROBE {
                    self.next_probe = Some(now);
                }
            } else {
                self.floor_windows = 0;
            }
        }
        self.reset_window(now);
    }

    fn finish_probe(&mut self, now: Instant, resume: f64) {
        let mid = self.probe.len().saturating_sub(1) / 2;
        if !self.probe.is_empty() {
            // The same statistic as the windows' (a mean with the same cap, taken relative to
            // the probe's median), so that a skewed latency distribution does not read as
            // queueing once the limit is released.
            let ratio_cap = self.ratio_cap();
            let (_, median, _) = self.probe.select_nth_unstable(mid);
            let median = *median;
            let cap = median.as_secs_f64() * ratio_cap;
            let sum: f64 = self.probe.iter().map(|d| d.as_secs_f64().min(cap)).sum();
            let mean = sum / self.probe.len() as f64;
            let mean = Duration::try_from_secs_f64(mean).unwrap_or(median);
            self.min_rtt = Some(mean.max(MIN_RTT_FLOOR));
        }
        self.probe.clear();
        self.estimate = resume;
        self.phase = Phase::Tracking;
        self.floor_windows = 0;
        let extra = self.cfg.min_rtt_interval.as_secs_f64() * self.cfg.jitter * self.rng.f64();
        self.next_probe = now
            .checked_add(self.cfg.min_rtt_interval)
            .and_then(|t| t.checked_add(Duration::try_from_secs_f64(extra).ok()?));
        self.reset_window(now);
    }

    fn reset_window(&mut self, now: Instant) {
        self.window_start = now;
        self.window = Window::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::cmp::Reverse;
    use std::collections::{BinaryHeap, VecDeque};

    const MS: Duration = Duration::from_millis(1);

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn rng() -> fastrand::Rng {
        fastrand::Rng::with_seed(7)
    }

    fn no_jitter() -> AdaptiveConfig {
        AdaptiveConfig {
            jitter: 0.0,
            ..AdaptiveConfig::default()
        }
    }

    /// A limiter whose baseline (10 ms) is measured; returns it with the current time.
    fn measured(cfg: AdaptiveConfig) -> (Adaptive, Instant) {
        let t0 = Instant::now();
        let mut a = Adaptive::new(cfg, t0, &mut rng());
        let mut t = t0;
        for _ in 0..cfg.min_rtt_samples.max(1) {
            t += MS;
            a.on_sample(t, ms(10), 1);
        }
        assert!(!a.probing());
        (a, t)
    }

    /// Feeds one window of `n` samples at `rtt` with `in_flight`, then closes it with one more
    /// sample just after the window's end (which opens the next window).
    fn window(a: &mut Adaptive, t: &mut Instant, rtt: Duration, in_flight: u32, n: u32) {
        for _ in 0..n {
            a.on_sample(*t, rtt, in_flight);
        }
        *t += a.config().sample_window;
        a.on_sample(*t, rtt, in_flight);
    }

    #[test]
    fn starts_pinned_and_measures_a_capped_mean_baseline() {
        let t0 = Instant::now();
        let mut a = Adaptive::new(no_jitter(), t0, &mut rng());
        assert!(a.probing());
        assert_eq!(a.limit(), 3);
        assert_eq!(a.min_rtt(), None);
        // 24 samples of 10-12 ms and one outlier, which counts as 2.5 × the median (27.5 ms).
        for i in 0..24u64 {
            a.on_sample(t0 + ms(i), ms(10 + i % 3), 2);
        }
        assert!(a.probing());
        a.on_sample(t0 + ms(30), ms(5000), 1);
        assert!(!a.probing());
        assert_eq!(a.min_rtt(), Some(Duration::from_micros(11_660)));
        assert_eq!(a.limit(), 20);
    }

    #[test]
    fn probe_ignores_requests_admitted_before_the_pin() {
        let t0 = Instant::now();
        let mut a = Adaptive::new(no_jitter(), t0, &mut rng());
        for i in 0..100 {
            a.on_sample(t0 + ms(i), ms(50), 4);
        }
        assert!(a.probing());
        for i in 0..25 {
            a.on_sample(t0 + ms(200 + i), ms(10), 3);
        }
        assert_eq!(a.min_rtt(), Some(ms(10)));
    }

    #[test]
    fn grows_by_sqrt_when_saturated_and_below_tolerance() {
        let (mut a, mut t) = measured(no_jitter());
        assert_eq!(a.limit(), 20);
        window(&mut a, &mut t, ms(10), 20, 50);
        // 20 + 0.5 × sqrt(20) = 22.24
        assert_eq!(a.limit(), 22);
        assert!(a.sample_rtt().is_some_and(|d| d >= ms(10) && d < ms(11)));
    }

    #[test]
    fn idle_cluster_does_not_grow() {
        let (mut a, mut t) = measured(no_jitter());
        for _ in 0..50 {
            window(&mut a, &mut t, ms(10), 9, 50);
        }
        assert_eq!(a.limit(), 20);
        // Using half the limit is enough to grow.
        window(&mut a, &mut t, ms(10), 10, 50);
        assert_eq!(a.limit(), 22);
    }

    #[test]
    fn latency_over_tolerance_cuts_by_the_gradient() {
        let (mut a, mut t) = measured(AdaptiveConfig {
            initial_limit: 100,
            ..no_jitter()
        });
        // 15 ms over a 10 ms baseline: gradient 12.5 / 15 = 0.833, smoothed: 91.7.
        window(&mut a, &mut t, ms(15), 100, 50);
        assert!((91..=92).contains(&a.limit()), "{}", a.limit());
        assert!(a.sample_rtt().is_some_and(|d| d > ms(14) && d < ms(16)));
    }

    #[test]
    fn gradient_is_floored_at_one_half() {
        let (mut a, mut t) = measured(AdaptiveConfig {
            initial_limit: 100,
            ..no_jitter()
        });
        window(&mut a, &mut t, ms(10_000), 100, 50);
        // 0.5 × 100 + 0.5 × 50
        assert_eq!(a.limit(), 75);
    }

    #[test]
    fn outliers_are_capped() {
        let (mut a, mut t) = measured(AdaptiveConfig {
            initial_limit: 100,
            ..no_jitter()
        });
        a.on_sample(t, ms(50_000), 100);
        window(&mut a, &mut t, ms(10), 100, 49);
        // Counted as 25 ms: a mean ratio of 1.03, still growth.
        assert!(a.limit() > 100);
        assert!(a.sample_rtt().is_some_and(|d| d > ms(1000)));
        // A fifth of the window at 2.5× or more is a cut.
        for _ in 0..10 {
            a.on_sample(t, ms(50_000), 100);
        }
        let before = a.limit();
        window(&mut a, &mut t, ms(10), 100, 39);
        assert!(a.limit() < before);
    }

    #[test]
    fn within_tolerance_is_growth_above_it_a_cut() {
        let (mut a, mut t) = measured(AdaptiveConfig {
            initial_limit: 400,
            ..no_jitter()
        });
        window(&mut a, &mut t, ms(12), 400, 50);
        assert_eq!(a.limit(), 410);
        // Just above the tolerance (12.5 ms): no headroom, a gradient of 0.992.
        window(&mut a, &mut t, Duration::from_micros(12_600), 410, 50);
        assert_eq!(a.limit(), 409);
    }

    #[test]
    fn drops_cut_in_proportion() {
        let (mut a, mut t) = measured(AdaptiveConfig {
            initial_limit: 100,
            ..no_jitter()
        });
        // All drops: target 50, smoothed 75.
        for _ in 0..10 {
            a.on_drop(t);
        }
        t += ms(100);
        a.on_drop(t);
        assert_eq!(a.limit(), 75);
        // 1 drop in 100: (75 + sqrt 75) × 0.995, smoothed: 79.1.
        a.on_sample(t, ms(10), 75);
        for _ in 0..98 {
            a.on_sample(t, ms(10), 75);
        }
        t += ms(100);
        a.on_sample(t, ms(10), 75);
        assert_eq!(a.limit(), 79);
    }

    #[test]
    fn drops_while_probing_are_ignored() {
        let t0 = Instant::now();
        let mut a = Adaptive::new(no_jitter(), t0, &mut rng());
        for i in 0..100 {
            a.on_drop(t0 + ms(i * 10));
        }
        for i in 0..25 {
            a.on_sample(t0 + ms(2000 + i), ms(10), 1);
        }
        assert_eq!(a.limit(), 20);
    }

    #[test]
    fn no_events_no_change() {
        let (mut a, mut t) = measured(no_jitter());
        t += ms(5000);
        a.on_sample(t, ms(10), 20);
        assert_eq!(a.limit(), 20);
    }

    #[test]
    fn remeasures_every_interval_and_restores_the_limit() {
        let cfg = AdaptiveConfig {
            min_rtt_interval: Duration::from_secs(2),
            initial_limit: 100,
            ..no_jitter()
        };
        let (mut a, mut t) = measured(cfg);
        let start = t;
        while t < start + Duration::from_millis(1900) {
            window(&mut a, &mut t, ms(12), 0, 10);
            assert!(!a.probing());
        }
        t = start + Duration::from_secs(2);
        a.on_sample(t, ms(12), 100);
        assert!(a.probing());
        assert_eq!(a.limit(), 3);
        // The upstream got faster: the new baseline is 8 ms.
        for _ in 0..25 {
            t += MS;
            a.on_sample(t, ms(8), 2);
        }
        assert!(!a.probing());
        assert_eq!(a.min_rtt(), Some(ms(8)));
        assert_eq!(a.limit(), 100);
    }

    #[test]
    fn jitter_delays_the_remeasurement_within_bounds() {
        let cfg = AdaptiveConfig {
            min_rtt_interval: Duration::from_secs(10),
            jitter: 0.5,
            ..AdaptiveConfig::default()
        };
        let mut starts = Vec::new();
        for seed in 0..8 {
            let t0 = Instant::now();
            let mut a = Adaptive::new(cfg, t0, &mut fastrand::Rng::with_seed(seed));
            for _ in 0..25 {
                a.on_sample(t0, ms(10), 1);
            }
            let mut t = t0;
            while !a.probing() {
                t += ms(50);
                a.on_sample(t, ms(10), 1);
            }
            let after = t - t0;
            assert!(after >= Duration::from_secs(10) && after <= Duration::from_millis(15_050));
            starts.push(after);
        }
        starts.dedup();
        assert!(starts.len() > 1, "jitter must vary the start: {starts:?}");
    }

    #[test]
    fn sitting_at_the_floor_triggers_a_remeasurement() {
        let (mut a, mut t) = measured(no_jitter());
        // The upstream became 4× slower for good: the limit falls to the floor...
        let mut windows = 0;
        while !a.probing() {
            window(&mut a, &mut t, ms(40), 20, 20);
            windows += 1;
            assert!(windows < 30, "never re-measured");
        }
        // ...then the new baseline lets it grow again instead of staying pinned.
        for _ in 0..25 {
            t += MS;
            a.on_sample(t, ms(40), 1);
        }
        assert_eq!(a.min_rtt(), Some(ms(40)));
        let floor = a.limit();
        for _ in 0..10 {
            let in_flight = a.limit();
            window(&mut a, &mut t, ms(40), in_flight, 20);
        }
        assert!(a.limit() > floor + 5, "{}", a.limit());
    }

    #[test]
    fn config_is_normalised() {
        let a = Adaptive::new(
            AdaptiveConfig {
                min_limit: 0,
                max_limit: 0,
                initial_limit: 50,
                buffer: f64::NAN,
                sample_window: Duration::ZERO,
                min_rtt_interval: Duration::ZERO,
                min_rtt_samples: 0,
                jitter: f64::INFINITY,
            },
            Instant::now(),
            &mut rng(),
        );
        let c = a.config();
        assert_eq!((c.min_limit, c.max_limit, c.initial_limit), (1, 1, 1));
        assert_eq!(c.buffer, 0.25);
        assert_eq!(c.sample_window, MS);
        assert_eq!(c.min_rtt_interval, MS);
        assert_eq!(c.min_rtt_samples, 1);
        assert_eq!(c.jitter, 0.0);
    }

    // ----- Simulation: a fixed-capacity upstream behind the limiter -----

    #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
    enum Ev {
        /// Open loop: the next request arrives.
        Arrival,
        /// Closed loop: client `usize` sends.
        Send(usize),
        /// A server finishes the request admitted at `admitted` (ns) with `in_flight` at start.
        Done {
            admitted: u64,
            in_flight: u32,
            client: Option<usize>,
        },
    }

    type Queue = BinaryHeap<Reverse<(u64, u64, Ev)>>;

    #[derive(Clone, Copy)]
    enum Load {
        /// Poisson arrivals at `factor` × capacity.
        Open { factor: f64 },
        /// `clients` clients that send again as soon as they get an answer; a refused client
        /// retries after `backoff`.
        Closed { clients: usize, backoff: Duration },
    }

    #[derive(Clone, Copy)]
    struct Scenario {
        capacity: u32,
        service: Duration,
        /// Each service time is `service × (1 ± spread)`, uniformly.
        spread: f64,
        load: Load,
        duration: Duration,
        warmup: Duration,
        /// At this time the capacity changes to `.1`.
        change: Option<(Duration, u32)>,
        cfg: AdaptiveConfig,
        seed: u64,
    }

    impl Scenario {
        fn new(capacity: u32, load: Load) -> Self {
            Self {
                capacity,
                service: ms(10),
                spread: 0.0,
                load,
                duration: Duration::from_secs(16),
                warmup: Duration::from_secs(8),
                change: None,
                cfg: AdaptiveConfig::default(),
                seed: 1,
            }
        }
    }

    #[derive(Debug, Default)]
    struct Outcome {
        /// `(time, limit)` at every window boundary, after warm-up, outside probes.
        limits: Vec<(Duration, u32)>,
        /// Latencies of requests admitted after warm-up.
        latencies: Vec<Duration>,
        /// Requests completed after warm-up.
        completed: u64,
        probes: u32,
    }

    impl Outcome {
        fn limit_range(&self) -> (u32, u32) {
            let min = self.limits.iter().map(|l| l.1).min().unwrap();
            let max = self.limits.iter().map(|l| l.1).max().unwrap();
            (min, max)
        }

        fn percentile(&mut self, p: usize) -> Duration {
            self.latencies.sort_unstable();
            self.latencies[self.latencies.len() * p / 100]
        }

        fn goodput_share(&self, s: &Scenario, capacity: u32) -> f64 {
            let secs = (s.duration - s.warmup).as_secs_f64();
            self.completed as f64 / secs / (f64::from(capacity) / s.service.as_secs_f64())
        }
    }

    fn simulate(s: &Scenario) -> Outcome {
        let t0 = Instant::now();
        let ns = |d: Duration| d.as_nanos() as u64;
        let mut rng = fastrand::Rng::with_seed(s.seed);
        let mut a = Adaptive::new(s.cfg, t0, &mut rng);
        let mut q = Queue::new();
        let mut seq = 0u64;
        let mut push = |q: &mut Queue, at: u64, ev: Ev| {
            seq += 1;
            q.push(Reverse((at, seq, ev)));
        };
        match s.load {
            Load::Open { .. } => push(&mut q, 0, Ev::Arrival),
            Load::Closed { clients, .. } => {
                for c in 0..clients {
                    push(&mut q, c as u64, Ev::Send(c));
                }
            }
        }
        let mut capacity = s.capacity;
        let mut busy = 0u32;
        let mut waiting: VecDeque<Ev> = VecDeque::new();
        let mut in_flight = 0u32;
        let mut out = Outcome::default();
        let (end, warm) = (ns(s.duration), ns(s.warmup));
        let mut next_mark = 0u64;
        let mark = ns(s.cfg.sample_window);
        let mut service_rng = fastrand::Rng::with_seed(s.seed ^ 0x5eed);
        let mut service = move || {
            let f = 1.0 + s.spread * (2.0 * service_rng.f64() - 1.0);
            (s.service.as_secs_f64() * f * 1e9) as u64
        };
        while let Some(Reverse((now_ns, _, ev))) = q.pop() {
            if now_ns >= end {
                break;
            }
            if let Some((at, c)) = s.change
                && now_ns >= ns(at)
            {
                capacity = c;
            }
            let now = t0 + Duration::from_nanos(now_ns);
            while now_ns >= next_mark {
                if next_mark >= warm && !a.probing() {
                    out.limits
                        .push((Duration::from_nanos(next_mark), a.limit()));
                }
                next_mark += mark;
            }
            let mut admit =
                |client: Option<usize>,
                 q: &mut Queue,
                 push: &mut dyn FnMut(&mut Queue, u64, Ev)| {
                    if in_flight >= a.limit() {
                        return false;
                    }
                    in_flight += 1;
                    let req = Ev::Done {
                        admitted: now_ns,
                        in_flight,
                        client,
                    };
                    if busy < capacity {
                        busy += 1;
                        push(q, now_ns + service(), req);
                    } else {
                        waiting.push_back(req);
                    }
                    true
                };
            match ev {
                Ev::Arrival => {
                    let Load::Open { factor } = s.load else {
                        unreachable!()
                    };
                    admit(None, &mut q, &mut push);
                    // Offered load stays put when the capacity changes.
                    let rate = factor * f64::from(s.capacity) / s.service.as_secs_f64();
                    let gap = -(1.0 - rng.f64()).ln() / rate;
                    push(&mut q, now_ns + (gap * 1e9) as u64 + 1, Ev::Arrival);
                }
                Ev::Send(c) => {
                    if !admit(Some(c), &mut q, &mut push) {
                        let Load::Closed { backoff, .. } = s.load else {
                            unreachable!()
                        };
                        push(&mut q, now_ns + ns(backoff), Ev::Send(c));
                    }
                }
                Ev::Done {
                    admitted,
                    in_flight: at_start,
                    client,
                } => {
                    let rtt = Duration::from_nanos(now_ns - admitted);
                    let was_probing = a.probing();
                    a.on_sample(now, rtt, at_start);
                    in_flight -= 1;
                    busy -= 1;
                    if admitted >= warm {
                        out.latencies.push(rtt);
                    }
                    if now_ns >= warm {
                        out.completed += 1;
                    }
                    // A capacity cut takes effect as servers free up.
                    while busy < capacity {
                        let Some(next) = waiting.pop_front() else {
                            break;
                        };
                        busy += 1;
                        push(&mut q, now_ns + service(), next);
                    }
                    if let Some(c) = client {
                        push(&mut q, now_ns, Ev::Send(c));
                    }
                    if !was_probing && a.probing() && now_ns >= warm {
                        out.probes += 1;
                    }
                }
            }
        }
        out
    }

    fn assert_converges(s: &Scenario) {
        let c = s.capacity;
        let mut out = simulate(s);
        let (lo, hi) = out.limit_range();
        assert!(
            f64::from(lo) >= 0.8 * f64::from(c) && f64::from(hi) <= 1.5 * f64::from(c),
            "C={c}: limit in [{lo}, {hi}]"
        );
        let p99 = out.percentile(99);
        assert!(p99 <= s.service * 2, "C={c}: p99 {p99:?}");
        // Queueing stays around the buffer (25%), not just under the p99 bound.
        let p50 = out.percentile(50);
        assert!(p50 <= s.service.mul_f64(1.5), "C={c}: p50 {p50:?}");
        let share = out.goodput_share(s, c);
        assert!(share >= 0.9, "C={c}: goodput {share:.3} of capacity");
    }

    #[test]
    fn converges_to_capacity_under_open_loop_overload() {
        for c in [10, 50, 200] {
            assert_converges(&Scenario::new(c, Load::Open { factor: 3.0 }));
        }
    }

    #[test]
    fn converges_to_capacity_in_a_closed_loop() {
        for c in [10, 50, 200] {
            let load = Load::Closed {
                clients: 3 * c as usize,
                backoff: ms(5),
            };
            assert_converges(&Scenario::new(c, load));
        }
    }

    #[test]
    fn noisy_service_times_neither_collapse_nor_overshoot() {
        for load in [
            Load::Open { factor: 3.0 },
            Load::Closed {
                clients: 150,
                backoff: ms(5),
            },
        ] {
            let mut s = Scenario::new(50, load);
            s.spread = 0.3;
            assert_converges(&s);
        }
    }

    #[test]
    fn periodic_remeasurement_keeps_goodput() {
        let mut s = Scenario::new(50, Load::Open { factor: 3.0 });
        s.cfg.min_rtt_interval = Duration::from_secs(2);
        s.duration = Duration::from_secs(20);
        let mut out = simulate(&s);
        assert!(out.probes >= 4, "{}", out.probes);
        let (lo, hi) = out.limit_range();
        assert!(lo >= 40 && hi <= 75, "[{lo}, {hi}]");
        assert!(out.percentile(99) <= ms(20));
        assert!(out.goodput_share(&s, 50) >= 0.9);
    }

    #[test]
    fn follows_a_capacity_cut() {
        let mut s = Scenario::new(100, Load::Open { factor: 3.0 });
        s.change = Some((Duration::from_secs(10), 50));
        s.duration = Duration::from_secs(14);
        let out = simulate(&s);
        let after = |d: Duration| out.limits.iter().filter(move |l| l.0 >= d).map(|l| l.1);
        // Within 10 windows of the cut the limit is within the band of the new capacity.
        let settled = Duration::from_secs(10) + 10 * s.cfg.sample_window;
        assert!(after(settled).all(|l| (40..=75).contains(&l)));
    }

    fn windows_strategy() -> impl Strategy<Value = Vec<(u32, u32, bool)>> {
        // (latency increment in 0.1% of the baseline, in-flight, with a drop)
        prop::collection::vec((0u32..400, 4u32..2000, any::<bool>()), 1..40)
    }

    proptest! {
        #[test]
        fn limit_stays_within_bounds(
            min in 0u32..40, max in 0u32..400, initial in 0u32..1000,
            buffer in prop_oneof![0.0f64..3.0, Just(f64::NAN), Just(-1.0)],
            samples in 0u32..30,
            ops in prop::collection::vec((0u64..300, 0u64..200_000, 0u32..3000, 0u8..4), 1..400),
        ) {
            let cfg = AdaptiveConfig {
                min_limit: min, max_limit: max, initial_limit: initial, buffer,
                min_rtt_interval: Duration::from_secs(3), min_rtt_samples: samples,
                ..AdaptiveConfig::default()
            };
            let t0 = Instant::now();
            let mut a = Adaptive::new(cfg, t0, &mut rng());
            let (lo, hi) = (a.config().min_limit, a.config().max_limit);
            prop_assert!(lo >= min.max(1) && hi >= lo && (hi == max || max < lo));
            let mut t = t0;
            for (dt, rtt_us, in_flight, kind) in ops {
                t += ms(dt);
                if kind == 0 {
                    a.on_drop(t);
                } else {
                    a.on_sample(t, Duration::from_micros(rtt_us), in_flight);
                }
                prop_assert!((lo..=hi).contains(&a.limit()));
            }
        }

        /// Within one baseline, windows whose latency never decreases and starts above the
        /// tolerated latency never raise the limit, however saturated.
        #[test]
        fn rising_latency_never_raises_the_limit(
            initial in 3u32..1000,
            start in 1u32..1000,
            windows in windows_strategy(),
        ) {
            let (mut a, mut t) = measured(AdaptiveConfig { initial_limit: initial, ..no_jitter() });
            let tolerated = 12.5f64;
            let mut latency_ms = tolerated * (1.0 + f64::from(start) / 1000.0);
            let mut last = a.limit();
            for (step, in_flight, drop) in windows {
                latency_ms *= 1.0 + f64::from(step) / 1000.0;
                if drop {
                    a.on_drop(t);
                }
                window(&mut a, &mut t, Duration::from_secs_f64(latency_ms / 1000.0), in_flight, 20);
                prop_assert!(a.limit() <= last, "{} -> {}", last, a.limit());
                last = a.limit();
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]

        /// After the capacity halves the limit is back within [0.8, 1.5] × the new capacity in
        /// at most 20 windows, and stays there.
        #[test]
        fn follows_capacity_halving(capacity in 20u32..120, seed in any::<u64>(), closed in any::<bool>()) {
            let load = if closed {
                Load::Closed { clients: 3 * capacity as usize, backoff: ms(5) }
            } else {
                Load::Open { factor: 3.0 }
            };
            let mut s = Scenario::new(capacity, load);
            s.seed = seed;
            s.warmup = Duration::from_secs(6);
            s.change = Some((Duration::from_secs(6), capacity / 2));
            s.duration = Duration::from_secs(9);
            let out = simulate(&s);
            let half = f64::from(capacity / 2);
            let settled = Duration::from_secs(6) + 20 * s.cfg.sample_window;
            for &(at, l) in out.limits.iter().filter(|l| l.0 >= settled) {
                prop_assert!(f64::from(l) >= 0.8 * half && f64::from(l) <= 1.5 * half,
                    "C {} -> {}: limit {} at {:?}", capacity, capacity / 2, l, at);
            }
        }
    }
}
