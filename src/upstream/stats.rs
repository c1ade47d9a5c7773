//! Live per-endpoint statistics: in-flight count, success/failure counters and
//! the peak-EWMA latency estimate the `PeakEwma` balancer reads.
//!
//! Owns: [`EndpointStats`] (shared by every request to one endpoint), the
//! [`InFlight`] guard that keeps the in-flight count honest, and the pure
//! [`EwmaEstimator`].
//!
//! Does not own: deciding what counts as a success or failure, health
//! checking / outlier ejection, or metrics export. Callers report outcomes;
//! this module only records them.
//!
//! The request path touches this module twice per request (`start`, then one
//! `record_*`), plus one `load_cost` read per P2C candidate. Counters are
//! relaxed atomics; the EWMA is a small struct behind an uncontended std
//! `Mutex` (the same trade-off tower's `PeakEwma` makes), because packing an
//! `f64` estimate and its timestamp into one atomic word would lose precision
//! for no measurable gain.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Nanoseconds in a [`Duration`], as `f64` (exact up to ~104 days, which is
/// far beyond any latency we will see).
fn nanos(d: Duration) -> f64 {
    d.as_nanos() as f64
}

/// Pure peak-EWMA latency estimator driven by explicit time, with the same
/// semantics as Finagle's / linkerd's / tower's `PeakEwma`:
///
/// - A sample above the stored estimate replaces it at once ("peak"), so a
///   suddenly slow endpoint is penalised immediately.
/// - A sample at or below it is blended in with weight `1 - exp(-Δt/τ)`,
///   where `Δt` is the time since the previous sample: samples arriving in a
///   burst barely move the estimate, a sample after a long pause dominates.
/// - While idle the estimate decays toward zero, exactly as if a zero-RTT
///   sample arrived at read time (tower's `decay`). Reads do not mutate, so
///   the value never depends on how often it is read; an idle endpoint
///   gradually looks cheap again and gets probed.
///
/// Consequences the tests pin down: right after `observe(x, t)`,
/// `estimate(t) >= x`; `estimate` is non-increasing in `now` between samples.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EwmaEstimator {
    /// Estimate as of `updated`, in nanoseconds.
    estimate_ns: f64,
    /// When the last sample (or construction) happened.
    updated: Instant,
    /// Decay time constant τ, in nanoseconds (>= 1 so `Δt/τ` is never NaN).
    tau_ns: f64,
}

impl EwmaEstimator {
    /// Default decay time constant τ (Finagle and linkerd use 10 s).
    pub const DEFAULT_TAU: Duration = Duration::from_secs(10);
    /// Default initial estimate before any sample (a plausible LAN/regional
    /// RTT: pessimistic enough that a fresh endpoint is not flooded, optimistic
    /// enough that it is tried).
    pub const DEFAULT_RTT: Duration = Duration::from_millis(30);

    /// Estimator that starts at `default_rtt` at `now` and decays with time
    /// constant `tau` (a zero `tau` is treated as 1 ns: every sample replaces
    /// the estimate).
    pub fn new(default_rtt: Duration, tau: Duration, now: Instant) -> Self {
        Self {
            estimate_ns: nanos(default_rtt),
            updated: now,
            tau_ns: nanos(tau).max(1.0),
        }
    }

    /// Weight the old estimate keeps after `now - self.updated` has elapsed.
    /// A `now` earlier than the last update (callers take `now` before taking
    /// the lock, so samples can arrive slightly out of order) counts as zero
    /// elapsed time.
    fn decay(&self, now: Instant) -> f64 {
        let elapsed = nanos(now.saturating_duration_since(self.updated));
        (-elapsed / self.tau_ns).exp()
    }

    /// Feeds one round-trip time observed at `now`.
    pub fn observe(&mut self, rtt: Duration, now: Instant) {
        let rtt = nanos(rtt);
        if rtt > self.estimate_ns {
            self.estimate_ns = rtt;
        } else {
            let decay = self.decay(now);
            self.estimate_ns = self.estimate_ns * decay + rtt * (1.0 - decay);
        }
        // Never move time backwards: an out-of-order sample must not make the
        // next one look like it arrived after a longer pause.
        self.updated = self.updated.max(now);
    }

    /// Current estimate at `now`, in nanoseconds, including idle decay.
    pub fn estimate(&self, now: Instant) -> f64 {
        self.estimate_ns * self.decay(now)
    }
}

/// Live stats of one endpoint, shared by all requests (atomics; cheap on the
/// request path). Share it as `Arc<EndpointStats>`.
#[derive(Debug)]
pub struct EndpointStats {
    /// Requests currently in flight (incremented by [`EndpointStats::start`],
    /// decremented when the [`InFlight`] guard drops).
    in_flight: AtomicU32,
    /// Requests recorded as successful, since creation.
    successes: AtomicU64,
    /// Requests recorded as failed, since creation.
    failures: AtomicU64,
    /// Peak-EWMA latency of successes and failures alike.
    ewma: Mutex<EwmaEstimator>,
}

impl EndpointStats {
    /// Fresh stats with the default EWMA parameters
    /// ([`EwmaEstimator::DEFAULT_RTT`], [`EwmaEstimator::DEFAULT_TAU`]).
    pub fn new(now: Instant) -> Self {
        Self::with_ewma(EwmaEstimator::DEFAULT_RTT, EwmaEstimator::DEFAULT_TAU, now)
    }

    /// Fresh stats whose EWMA starts at `default_rtt` and decays with `tau`.
    pub fn with_ewma(default_rtt: Duration, tau: Duration, now: Instant) -> Self {
        Self {
            in_flight: AtomicU32::new(0),
            successes: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            ewma: Mutex::new(EwmaEstimator::new(default_rtt, tau, now)),
        }
    }

    /// Requests in flight right now.
    pub fn in_flight(&self) -> u32 {
        // Relaxed: this is a load-balancing hint, not a synchronisation point.
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Marks one request as in flight until the returned guard drops, so a
    /// request whose future is cancelled or panics never leaks a count.
    pub fn start(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight {
            stats: Arc::clone(self),
        }
    }

    /// Records a successful request that took `rtt`, finishing at `now`.
    pub fn record_success(&self, rtt: Duration, now: Instant) {
        self.successes.fetch_add(1, Ordering::Relaxed);
        self.observe(rtt, now);
    }

    /// Records a failed request that took `rtt`, finishing at `now`. Its
    /// latency still feeds the EWMA: a timeout is the strongest "slow" signal
    /// there is. (A fast failure lowers the estimate; ejecting endpoints that
    /// fail fast is the outlier detector's job, not the balancer's.)
    pub fn record_failure(&self, rtt: Duration, now: Instant) {
        self.failures.fetch_add(1, Ordering::Relaxed);
        self.observe(rtt, now);
    }

    /// Successful requests recorded so far.
    pub fn successes(&self) -> u64 {
        self.successes.load(Ordering::Relaxed)
    }

    /// Failed requests recorded so far.
    pub fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }

    /// Current peak-EWMA latency estimate (saturates at `Duration::MAX`).
    pub fn ewma_latency(&self, now: Instant) -> Duration {
        // `as u64` saturates (and maps NaN to 0), so this cannot panic.
        Duration::from_nanos(self.load_cost(now) as u64)
    }

    /// What `Candidate::load_cost` returns: the peak-EWMA estimate in
    /// nanoseconds, not multiplied by load.
    pub fn load_cost(&self, now: Instant) -> f64 {
        self.lock_ewma().estimate(now)
    }

    fn observe(&self, rtt: Duration, now: Instant) {
        self.lock_ewma().observe(rtt, now);
    }

    /// The estimator is plain data that `observe` never leaves half-updated,
    /// so a poisoned lock still holds a usable value.
    fn lock_ewma(&self) -> std::sync::MutexGuard<'_, EwmaEstimator> {
        self.ewma.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Guard for one in-flight request; dropping it decrements the endpoint's
/// in-flight count.
#[derive(Debug)]
#[must_use = "dropping the guard immediately ends the request's in-flight count"]
pub struct InFlight {
    stats: Arc<EndpointStats>,
}

impl InFlight {
    /// The endpoint this request is counted against (e.g. to record the
    /// outcome before the guard drops).
    pub fn stats(&self) -> &Arc<EndpointStats> {
        &self.stats
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        // Each guard matches exactly one increment, so this cannot underflow.
        self.stats.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MS: Duration = Duration::from_millis(1);

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn est_ms(e: &EwmaEstimator, now: Instant) -> f64 {
        e.estimate(now) / 1e6
    }

    #[test]
    fn starts_at_default_rtt() {
        let t0 = Instant::now();
        let e = EwmaEstimator::new(ms(30), EwmaEstimator::DEFAULT_TAU, t0);
        assert!((est_ms(&e, t0) - 30.0).abs() < 1e-9);
        let s = EndpointStats::new(t0);
        assert_eq!(s.ewma_latency(t0), EwmaEstimator::DEFAULT_RTT);
    }

    #[test]
    fn peak_jumps_up_immediately() {
        let t0 = Instant::now();
        let mut e = EwmaEstimator::new(ms(30), ms(10_000), t0);
        e.observe(ms(500), t0 + MS);
        assert!((est_ms(&e, t0 + MS) - 500.0).abs() < 1e-9);
    }

    #[test]
    fn lower_sample_moves_toward_it_by_elapsed_weight() {
        let t0 = Instant::now();
        let tau = ms(10_000);
        let mut e = EwmaEstimator::new(ms(100), tau, t0);
        let t1 = t0 + ms(5_000);
        e.observe(ms(10), t1);
        let w = (-0.5f64).exp();
        let expected = 100.0 * w + 10.0 * (1.0 - w);
        assert!(
            (est_ms(&e, t1) - expected).abs() < 1e-6,
            "{}",
            est_ms(&e, t1)
        );
    }

    #[test]
    fn burst_of_samples_at_one_instant_barely_moves_estimate() {
        let t0 = Instant::now();
        let mut e = EwmaEstimator::new(ms(100), ms(10_000), t0);
        for _ in 0..1000 {
            e.observe(ms(1), t0);
        }
        assert!((est_ms(&e, t0) - 100.0).abs() < 1e-9);
    }

    #[test]
    fn repeated_lower_samples_converge() {
        let t0 = Instant::now();
        let mut e = EwmaEstimator::new(ms(1_000), ms(1_000), t0);
        let mut now = t0;
        for _ in 0..20 {
            now += ms(1_000);
            e.observe(ms(10), now);
        }
        let v = est_ms(&e, now);
        assert!((v - 10.0).abs() < 0.01, "{v}");
    }

    #[test]
    fn out_of_order_sample_does_not_rewind_time() {
        let t0 = Instant::now();
        let mut e = EwmaEstimator::new(ms(100), ms(1_000), t0 + ms(1_000));
        // Sample stamped before construction: zero elapsed, so no movement.
        e.observe(ms(10), t0);
        assert!((est_ms(&e, t0 + ms(1_000)) - 100.0).abs() < 1e-9);
        // Reading before the last update shows no decay either.
        assert!((est_ms(&e, t0) - 100.0).abs() < 1e-9);
    }

    #[test]
    fn zero_tau_replaces_estimate() {
        let t0 = Instant::now();
        let mut e = EwmaEstimator::new(ms(100), Duration::ZERO, t0);
        e.observe(ms(7), t0 + MS);
        assert!((est_ms(&e, t0 + MS) - 7.0).abs() < 1e-9);
        assert!(e.estimate(t0 + MS).is_finite());
    }

    #[test]
    fn in_flight_guard_counts_and_releases() {
        let t0 = Instant::now();
        let s = Arc::new(EndpointStats::new(t0));
        let a = s.start();
        let b = s.start();
        assert_eq!(s.in_flight(), 2);
        assert!(Arc::ptr_eq(a.stats(), &s));
        drop(a);
        assert_eq!(s.in_flight(), 1);
        drop(b);
        assert_eq!(s.in_flight(), 0);
    }

    #[test]
    fn in_flight_is_released_on_panic_unwind() {
        let s = Arc::new(EndpointStats::new(Instant::now()));
        let s2 = Arc::clone(&s);
        let r = std::panic::catch_unwind(move || {
            let _g = s2.start();
            panic!("request handler blew up");
        });
        assert!(r.is_err());
        assert_eq!(s.in_flight(), 0);
    }

    #[test]
    fn concurrent_guards_balance_out() {
        let s = Arc::new(EndpointStats::new(Instant::now()));
        std::thread::scope(|scope| {
            for _ in 0..2 {
                scope.spawn(|| {
                    for _ in 0..10_000 {
                        let _g = s.start();
                    }
                });
            }
        });
        assert_eq!(s.in_flight(), 0);
    }

    #[test]
    fn outcomes_are_counted_and_feed_the_ewma() {
        let t0 = Instant::now();
        let s = EndpointStats::new(t0);
        s.record_success(ms(10), t0 + MS);
        s.record_failure(ms(900), t0 + ms(2));
        s.record_failure(ms(5), t0 + ms(3));
        assert_eq!(s.successes(), 1);
        assert_eq!(s.failures(), 2);
        // The slow failure's latency was taken as a peak.
        let lat = s.ewma_latency(t0 + ms(3));
        assert!(lat >= ms(899), "{lat:?}");
        assert!((s.load_cost(t0 + ms(3)) - lat.as_nanos() as f64).abs() < 1.0);
    }

    #[test]
    fn poisoned_lock_is_still_usable() {
        let t0 = Instant::now();
        let s = Arc::new(EndpointStats::new(t0));
        let s2 = Arc::clone(&s);
        let _ = std::thread::spawn(move || {
            let _guard = s2.ewma.lock();
            panic!("poison it");
        })
        .join();
        assert!(s.ewma.is_poisoned());
        s.record_success(ms(400), t0 + MS);
        assert!(s.ewma_latency(t0 + MS) >= ms(399));
    }

    #[test]
    fn stats_are_send_and_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<EndpointStats>();
        assert_send_sync::<InFlight>();
    }

    proptest! {
        /// Right after observing `x`, the estimate is at least `x`, and exactly
        /// `x` when `x` exceeded the previous estimate (peak).
        #[test]
        fn never_below_latest_sample(
            samples in prop::collection::vec((0u64..2_000, 0u64..5_000), 1..50),
            initial in 0u64..2_000,
        ) {
            let t0 = Instant::now();
            let mut e = EwmaEstimator::new(ms(initial), ms(1_000), t0);
            let mut now = t0;
            for (rtt, gap) in samples {
                now += ms(gap);
                let before = e.estimate_ns;
                e.observe(ms(rtt), now);
                let after = e.estimate(now);
                let x = nanos(ms(rtt));
                prop_assert!(after >= x - 1e-6);
                if x > before {
                    prop_assert!((after - x).abs() < 1e-6);
                } else {
                    // Moved toward the lower sample, never past it or up.
                    prop_assert!(after <= before + 1e-6);
                }
            }
        }

        /// Idle decay is monotone non-increasing and heads to zero.
        #[test]
        fn idle_decay_is_monotone(
            initial in 1u64..10_000,
            mut offsets in prop::collection::vec(0u64..100_000, 2..30),
        ) {
            offsets.sort_unstable();
            let t0 = Instant::now();
            let e = EwmaEstimator::new(ms(initial), ms(10_000), t0);
            let mut last = e.estimate(t0);
            for off in offsets {
                let v = e.estimate(t0 + ms(off));
                prop_assert!(v <= last);
                last = v;
            }
            // One τ of idleness loses ~63%.
            let tau_later = e.estimate(t0 + ms(10_000));
            prop_assert!(tau_later < e.estimate(t0) * 0.37);
        }

        /// A lower sample after a pause lands strictly between the sample and
        /// the old estimate.
        #[test]
        fn lower_sample_decays_toward_it(
            old in 100u64..10_000,
            frac in 0.0f64..0.99,
            gap in 1u64..60_000,
        ) {
            let t0 = Instant::now();
            let mut e = EwmaEstimator::new(ms(old), ms(10_000), t0);
            let low = ((old as f64) * frac) as u64;
            e.observe(ms(low), t0 + ms(gap));
            let v = e.estimate(t0 + ms(gap));
            prop_assert!(v < nanos(ms(old)));
            prop_assert!(v > nanos(ms(low)));
        }
    }
}
