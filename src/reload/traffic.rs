//! Process-wide traffic counters for behavioural rollback: how many requests ended, how many of them
//! failed, and a latency histogram, all cumulative since start.
//!
//! This module owns the counters, what counts as a failure, and the arithmetic on snapshots
//! ([`Sample`] → [`Window`] → failure share, quantiles). It does not own sampling them over time or
//! judging a change: that is `bake.rs`. One [`Traffic`] lives for the whole process (in
//! `snapshot::Shared`, not in a snapshot, so it survives reloads). The request path calls [`Traffic::record`] once per request,
//! so recording is relaxed atomic adds only (no lock, no allocation, no clock read).
//!
//! Latency buckets are log-scale with four steps per doubling (×1.25, ×1.2, ×1.17, ×1.14) from
//! 100µs to ~105s, plus an overflow bucket; a quantile is reported as its bucket's upper bound, so it
//! over-states by at most 25%, which is far below any useful rollback threshold.

use std::{
    fmt,
    sync::atomic::{AtomicU64, Ordering::Relaxed},
    time::Duration,
};

/// Doublings covered by the histogram above its first bound (100µs × 2^20 ≈ 105s).
const OCTAVES: usize = 20;
/// Steps per doubling.
const STEPS: usize = 4;
/// Finite buckets: `≤ 100µs`, then four per doubling.
const FINITE: usize = 1 + OCTAVES * STEPS;
/// Latency buckets, the last one being "beyond the last bound".
pub const BUCKETS: usize = FINITE + 1;

/// Inclusive upper bound of each finite bucket, in microseconds: 100, 125, 150, 175, 200, 250, ...
const BOUNDS_US: [u64; FINITE] = bounds();

const fn bounds() -> [u64; FINITE] {
    let mut b = [0u64; FINITE];
    b[0] = 100;
    let mut k = 0;
    while k < OCTAVES {
        let mut j = 0;
        while j < STEPS {
            // 100 is divisible by 4, so every bound is exact.
            b[1 + k * STEPS + j] = ((100u64 << k) / 4) * (5 + j as u64);
            j += 1;
        }
        k += 1;
    }
    b
}

/// The bucket a duration falls in (`BUCKETS - 1` beyond the last bound).
fn bucket_of(d: Duration) -> usize {
    let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
    BOUNDS_US.partition_point(|&b| b < us)
}

/// The upper bound of a bucket; `Duration::MAX` for the overflow bucket.
pub fn bucket_bound(bucket: usize) -> Duration {
    BOUNDS_US
        .get(bucket)
        .map_or(Duration::MAX, |&us| Duration::from_micros(us))
}

/// Whether a request counts against a change: the proxy generated or relayed a 5xx, or no route
/// matched (404 with `routed == false`). A 404 from an upstream is the application's answer, not a
/// broken config, and 4xx are the client's doing.
pub fn is_failure(status: u16, routed: bool) -> bool {
    (500..=599).contains(&status) || (status == 404 && !routed)
}

/// Cumulative counters. Cheap to update from many threads; read with [`Traffic::sample`].
pub struct Traffic {
    /// Requests that ended, since start.
    requests: AtomicU64,
    /// Of those, failures per [`is_failure`].
    failures: AtomicU64,
    /// Requests per latency bucket.
    latency: [AtomicU64; BUCKETS],
}

impl fmt::Debug for Traffic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Traffic")
            .field("requests", &self.requests.load(Relaxed))
            .field("failures", &self.failures.load(Relaxed))
            .finish_non_exhaustive()
    }
}

impl Default for Traffic {
    fn default() -> Self {
        Self::new()
    }
}

impl Traffic {
    pub const fn new() -> Self {
        Self {
            requests: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            latency: [const { AtomicU64::new(0) }; BUCKETS],
        }
    }

    /// Counts one finished request. `routed`: a route matched it; `duration`: as the caller
    /// measured it (from the request's arrival to its response's end or failure).
    pub fn record(&self, status: u16, routed: bool, duration: Duration) {
        self.requests.fetch_add(1, Relaxed);
        if is_failure(status, routed) {
            self.failures.fetch_add(1, Relaxed);
        }
        if let Some(b) = self.latency.get(bucket_of(duration)) {
            b.fetch_add(1, Relaxed);
        }
    }

    /// A snapshot of the counters. The counters are read one by one while requests keep ending, so
    /// a snapshot may be off by the few requests in flight; windows clamp rather than trust it.
    pub fn sample(&self) -> Sample {
        let mut latency = [0u64; BUCKETS];
        for (out, c) in latency.iter_mut().zip(&self.latency) {
            *out = c.load(Relaxed);
        }
        Sample {
            requests: self.requests.load(Relaxed),
            failures: self.failures.load(Relaxed),
            latency,
        }
    }
}

/// The counters at one moment (cumulative since start).
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub requests: u64,
    pub failures: u64,
    /// Requests per latency bucket (see [`bucket_bound`]).
    pub latency: [u64; BUCKETS],
}

impl Default for Sample {
    fn default() -> Self {
        Self {
            requests: 0,
            failures: 0,
            latency: [0; BUCKETS],
        }
    }
}

impl Sample {
    /// The traffic between `earlier` and this sample. Differences saturate at 0, so a sample taken
    /// "before" by mistake, or counters from another process, give an empty window, not garbage.
    pub fn since(&self, earlier: &Sample) -> Window {
        let mut latency = [0u64; BUCKETS];
        for ((out, now), then) in latency.iter_mut().zip(&self.latency).zip(&earlier.latency) {
            *out = now.saturating_sub(*then);
        }
        Window {
            requests: self.requests.saturating_sub(earlier.requests),
            failures: self.failures.saturating_sub(earlier.failures),
            latency,
        }
    }
}

/// The traffic between two samples. `Copy`: it is a plain array, handed from the series to the
/// bake once per change.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Window {
    pub requests: u64,
    pub failures: u64,
    /// Requests per latency bucket (see [`bucket_bound`]).
    pub latency: [u64; BUCKETS],
}

impl Default for Window {
    fn default() -> Self {
        Self {
            requests: 0,
            failures: 0,
            latency: [0; BUCKETS],
        }
    }
}

impl Window {
    /// Failures as a percentage of requests (0–100); `None` without requests.
    pub fn failure_percent(&self) -> Option<f64> {
        if self.requests == 0 {
            return None;
        }
        // A snapshot read mid-update may see a failure before its request.
        let failures = self.failures.min(self.requests);
        Some(failures as f64 * 100.0 / self.requests as f64)
    }

    /// The `q` quantile (0.0–1.0, clamped) of latency, as the upper bound of the bucket it falls
    /// in (`Duration::MAX` if beyond the last bound); `None` without requests or if `q` is NaN.
    pub fn quantile(&self, q: f64) -> Option<Duration> {
        if q.is_nan() {
            return None;
        }
        let total: u64 = self.latency.iter().fold(0u64, |a, &n| a.saturating_add(n));
        if total == 0 {
            return None;
        }
        // The rank of the wanted request, 1-based: the smallest n with n ≥ q × total.
        let rank = ((q.clamp(0.0, 1.0) * total as f64).ceil() as u64).clamp(1, total);
        let mut seen = 0u64;
        for (i, &n) in self.latency.iter().enumerate() {
            seen = seen.saturating_add(n);
            if seen >= rank {
                return Some(bucket_bound(i));
            }
        }
        Some(Duration::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn failures_are_5xx_and_unrouted_404s() {
        for s in [500, 502, 503, 504, 599] {
            assert!(is_failure(s, true), "{s} routed");
            assert!(is_failure(s, false), "{s} unrouted");
        }
        assert!(is_failure(404, false), "no route is a broken config");
        assert!(!is_failure(404, true), "an upstream's 404 is its answer");
        for s in [200, 204, 301, 400, 401, 403, 429, 499, 600] {
            assert!(!is_failure(s, true), "{s}");
            assert!(!is_failure(s, false), "{s} unrouted");
        }
    }

    #[test]
    fn bounds_grow_by_at_most_a_quarter_and_reach_a_minute() {
        assert_eq!(&BOUNDS_US[..6], &[100, 125, 150, 175, 200, 250]);
        for w in BOUNDS_US.windows(2) {
            assert!(w[1] > w[0], "{w:?}");
            assert!(w[1] * 4 <= w[0] * 5, "step too coarse: {w:?}");
        }
        assert!(bucket_bound(FINITE - 1) >= Duration::from_secs(60));
        assert_eq!(bucket_bound(BUCKETS - 1), Duration::MAX);
    }

    #[test]
    fn a_duration_lands_in_the_first_bucket_whose_bound_holds_it() {
        assert_eq!(bucket_of(Duration::ZERO), 0);
        assert_eq!(bucket_of(Duration::from_micros(100)), 0);
        assert_eq!(bucket_of(Duration::from_micros(101)), 1);
        assert_eq!(bucket_of(Duration::from_micros(125)), 1);
        assert_eq!(bucket_of(Duration::from_micros(126)), 2);
        assert_eq!(bucket_of(Duration::from_secs(3600)), BUCKETS - 1);
        assert_eq!(bucket_of(Duration::MAX), BUCKETS - 1);
    }

    #[test]
    fn record_counts_requests_failures_and_latency() {
        let t = Traffic::new();
        t.record(200, true, ms(1));
        t.record(503, true, ms(1));
        t.record(404, false, Duration::from_micros(50));
        t.record(404, true, ms(2000));
        let s = t.sample();
        assert_eq!(s.requests, 4);
        assert_eq!(s.failures, 2);
        assert_eq!(s.latency.iter().sum::<u64>(), 4);
        assert_eq!(s.latency[0], 1);
        assert_eq!(s.latency[bucket_of(ms(1))], 2);
    }

    #[test]
    fn a_window_is_the_difference_and_never_underflows() {
        let t = Traffic::new();
        t.record(200, true, ms(1));
        let a = t.sample();
        t.record(500, true, ms(1));
        t.record(200, true, ms(1));
        let b = t.sample();
        let w = b.since(&a);
        assert_eq!((w.requests, w.failures), (2, 1));
        assert_eq!(w.failure_percent(), Some(50.0));
        let back = a.since(&b);
        assert_eq!(
            back,
            Window::default(),
            "an earlier minus a later sample is empty"
        );
        let wrapped = Sample {
            requests: 5,
            failures: 1,
            ..Sample::default()
        }
        .since(&Sample {
            requests: u64::MAX,
            failures: u64::MAX,
            latency: [u64::MAX; BUCKETS],
        });
        assert_eq!(wrapped, Window::default());
    }

    #[test]
    fn failure_percent_needs_requests_and_is_clamped() {
        assert_eq!(Window::default().failure_percent(), None);
        let w = Window {
            requests: 4,
            failures: 9,
            ..Window::default()
        };
        assert_eq!(w.failure_percent(), Some(100.0));
        let w = Window {
            requests: 8,
            failures: 0,
            ..Window::default()
        };
        assert_eq!(w.failure_percent(), Some(0.0));
    }

    #[test]
    fn quantiles_come_from_bucket_upper_bounds() {
        let t = Traffic::new();
        for _ in 0..98 {
            t.record(200, true, ms(1));
        }
        t.record(200, true, ms(90));
        t.record(200, true, ms(3000));
        let w = t.sample().since(&Sample::default());
        let b1 = bucket_bound(bucket_of(ms(1)));
        assert!(b1 >= ms(1) && b1 < ms(2), "{b1:?}");
        assert_eq!(w.quantile(0.5), Some(b1));
        assert_eq!(w.quantile(0.98), Some(b1));
        let p99 = w.quantile(0.99).unwrap();
        assert!(p99 >= ms(90) && p99 <= ms(113), "{p99:?}");
        let max = w.quantile(1.0).unwrap();
        assert!(max >= ms(3000) && max <= ms(3750), "{max:?}");
        assert_eq!(w.quantile(0.0), Some(b1), "q = 0 is the fastest request");
        assert_eq!(w.quantile(7.0), w.quantile(1.0), "q is clamped");
        assert_eq!(w.quantile(f64::NAN), None);
        assert_eq!(Window::default().quantile(0.99), None);
    }

    #[test]
    fn the_overflow_bucket_reports_max() {
        let t = Traffic::new();
        t.record(200, true, Duration::from_secs(600));
        let w = t.sample().since(&Sample::default());
        assert_eq!(w.quantile(0.99), Some(Duration::MAX));
    }

    proptest! {
        #[test]
        fn a_recorded_duration_never_exceeds_its_bucket_bound(us in 0u64..200_000_000) {
            let d = Duration::from_micros(us);
            let b = bucket_of(d);
            prop_assert!(d <= bucket_bound(b));
            if b > 0 {
                prop_assert!(d > bucket_bound(b - 1));
            }
        }

        #[test]
        fn quantiles_are_monotonic(durs in prop::collection::vec(0u64..10_000_000, 1..200),
                                   q1 in 0.0f64..=1.0, q2 in 0.0f64..=1.0) {
            let t = Traffic::new();
            for &us in &durs {
                t.record(200, true, Duration::from_micros(us));
            }
            let w = t.sample().since(&Sample::default());
            let (lo, hi) = if q1 <= q2 { (q1, q2) } else { (q2, q1) };
            prop_assert!(w.quantile(lo).unwrap() <= w.quantile(hi).unwrap());
            let max = Duration::from_micros(*durs.iter().max().unwrap());
            prop_assert!(w.quantile(1.0).unwrap() >= max);
        }
    }
}
