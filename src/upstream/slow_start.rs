//! Slow start: the weight ramp of an endpoint that just became healthy or just joined (Envoy's
//! `slow_start_config`, HAProxy's `slowstart`).
//!
//! Owns: the ramp curve, i.e. which fraction of its configured weight an endpoint gets a given time
//! after it became eligible. Does not own: remembering *when* that was (the caller keeps `since`
//! per endpoint), health verdicts, or re-weighting the balancer (callers re-evaluate periodically
//! while [`SlowStart::ramping`] is true).
//!
//! A cold endpoint (empty caches, JIT not warmed, pools not filled) that immediately receives its
//! full share tends to time out and get ejected again; ramping it up lets it warm on a trickle.
//! Pure: time comes in as an explicit `now`.

use std::time::{Duration, Instant};

/// Envoy floors the elapsed time at 1 ms so that the ramp never starts from exactly zero, even
/// when `min_weight_percent` is 0.
const MIN_ELAPSED: Duration = Duration::from_millis(1);

/// The slow-start ramp of one cluster.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SlowStart {
    /// Length of the ramp after an endpoint becomes healthy or joins; 0 disables slow start.
    pub window: Duration,
    /// Curve shape: 1.0 is linear, > 1.0 ramps faster early, < 1.0 slower early. Must be > 0 and
    /// finite; anything else is treated as 1.0.
    pub aggression: f64,
    /// Floor of the ramp, in percent of the endpoint's weight (values above 100 act as 100).
    pub min_weight_percent: u32,
}

impl Default for SlowStart {
    /// Disabled (`window` 0), with Envoy's defaults for the rest (linear, 10% floor).
    fn default() -> Self {
        Self {
            window: Duration::ZERO,
            aggression: 1.0,
            min_weight_percent: 10,
        }
    }
}

impl SlowStart {
    /// Fraction of its weight an endpoint that became healthy (or joined) at `since` gets at
    /// `now`: Envoy's `max(min_weight_percent/100, (elapsed/window)^(1/aggression))`, 1.0 once the
    /// window has passed or when disabled. Always in (0, 1]; never NaN. `now < since` counts as
    /// elapsed 0.
    pub fn factor(&self, since: Instant, now: Instant) -> f64 {
        let elapsed = now.saturating_duration_since(since);
        if !self.in_window(elapsed) {
            return 1.0;
        }
        let time_factor = elapsed.max(MIN_ELAPSED).as_secs_f64() / self.window.as_secs_f64();
        let ramp =
            if self.aggression == 1.0 || !self.aggression.is_finite() || self.aggression <= 0.0 {
                // The linear case skips `powf` so it is exact, which keeps the midpoint at 0.5.
                time_factor
            } else {
                time_factor.powf(self.aggression.recip())
            };
        let floor = f64::from(self.min_weight_percent.min(100)) / 100.0;
        // `min_weight_percent` 0 with a huge window or a tiny aggression can underflow the ramp
        // to 0; the lower clamp keeps the promise of a strictly positive factor.
        ramp.max(floor).clamp(f64::MIN_POSITIVE, 1.0)
    }

    /// Whether the ramp is still in progress at `now` (callers re-evaluate periodically while
    /// true). Always false when disabled.
    pub fn ramping(&self, since: Instant, now: Instant) -> bool {
        self.in_window(now.saturating_duration_since(since))
    }

    /// `weight` scaled by [`factor`](Self::factor), rounded to nearest, at least 1 (so a weight
    /// of 0 also comes out as 1, matching "zero weights count as 1" elsewhere).
    pub fn weight(&self, weight: u32, since: Instant, now: Instant) -> u32 {
        let factor = self.factor(since, now);
        if factor >= 1.0 {
            return weight.max(1);
        }
        // factor < 1, so the product is below `u32::MAX` and the saturating `as` never clips.
        let scaled = (f64::from(weight) * factor).round() as u32;
        scaled.max(1)
    }

    fn in_window(&self, elapsed: Duration) -> bool {
        !self.window.is_zero() && elapsed < self.window
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn cfg(window_secs: u64, aggression: f64, min: u32) -> SlowStart {
        SlowStart {
            window: Duration::from_secs(window_secs),
            aggression,
            min_weight_percent: min,
        }
    }

    fn at(t0: Instant, ms: u64) -> Instant {
        t0 + Duration::from_millis(ms)
    }

    #[test]
    fn linear_midpoint_is_half() {
        let s = cfg(10, 1.0, 10);
        let t0 = Instant::now();
        assert_eq!(s.factor(t0, at(t0, 5_000)), 0.5);
        assert_eq!(s.weight(100, t0, at(t0, 5_000)), 50);
        assert!((s.factor(t0, at(t0, 2_500)) - 0.25).abs() < 1e-12);
    }

    #[test]
    fn aggression_above_one_ramps_faster_early() {
        let linear = cfg(10, 1.0, 0);
        let fast = cfg(10, 2.0, 0);
        let slow = cfg(10, 0.5, 0);
        let t0 = Instant::now();
        let t = at(t0, 2_500);
        // (0.25)^(1/2) = 0.5 and (0.25)^2 = 0.0625.
        assert!((fast.factor(t0, t) - 0.5).abs() < 1e-12);
        assert!((slow.factor(t0, t) - 0.0625).abs() < 1e-12);
        assert!(fast.factor(t0, t) > linear.factor(t0, t));
        assert!(slow.factor(t0, t) < linear.factor(t0, t));
    }

    #[test]
    fn floor_by_min_weight_percent() {
        let s = cfg(10, 1.0, 10);
        let t0 = Instant::now();
        assert_eq!(s.factor(t0, t0), 0.1);
        assert_eq!(s.factor(t0, at(t0, 500)), 0.1);
        // Past the floor the ramp takes over.
        assert!((s.factor(t0, at(t0, 3_000)) - 0.3).abs() < 1e-12);
        assert_eq!(s.weight(50, t0, t0), 5);
        // Tiny weights still get at least 1.
        assert_eq!(s.weight(3, t0, t0), 1);
        // A floor above 100% acts as 100%.
        assert_eq!(cfg(10, 1.0, 250).factor(t0, t0), 1.0);
    }

    #[test]
    fn zero_floor_stays_positive() {
        let t0 = Instant::now();
        let f = cfg(10, 1.0, 0).factor(t0, t0);
        assert!(f > 0.0 && f < 0.001, "{f}");
        // Tiny aggression would underflow (1e-4)^(1e300) to 0 without the clamp.
        let f = cfg(10, 1e-300, 0).factor(t0, at(t0, 1));
        assert!(f > 0.0, "{f}");
        assert_eq!(cfg(10, 1.0, 0).weight(0, t0, t0), 1);
    }

    #[test]
    fn disabled_is_full_weight() {
        let s = SlowStart::default();
        let t0 = Instant::now();
        assert_eq!(s.factor(t0, t0), 1.0);
        assert!(!s.ramping(t0, t0));
        assert_eq!(s.weight(7, t0, t0), 7);
        assert_eq!(s.weight(0, t0, t0), 1);
    }

    #[test]
    fn window_end_is_full_weight_and_stops_ramping() {
        let s = cfg(10, 1.0, 10);
        let t0 = Instant::now();
        assert!(s.ramping(t0, at(t0, 9_999)));
        assert!(s.factor(t0, at(t0, 9_999)) < 1.0);
        assert!(!s.ramping(t0, at(t0, 10_000)));
        assert_eq!(s.factor(t0, at(t0, 10_000)), 1.0);
        assert_eq!(s.weight(u32::MAX, t0, at(t0, 60_000)), u32::MAX);
    }

    #[test]
    fn now_before_since_counts_as_elapsed_zero() {
        let s = cfg(10, 1.0, 10);
        let t0 = Instant::now();
        let later = at(t0, 5_000);
        assert_eq!(s.factor(later, t0), 0.1);
        assert!(s.ramping(later, t0));
    }

    #[test]
    fn bad_aggression_is_linear() {
        let t0 = Instant::now();
        let t = at(t0, 5_000);
        for a in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            assert_eq!(cfg(10, a, 10).factor(t0, t), 0.5, "aggression {a}");
        }
    }

    proptest! {
        #[test]
        fn factor_in_unit_interval_and_monotonic(
            window_ms in 0u64..100_000,
            aggression in prop_oneof![0.01f64..20.0, Just(1.0), Just(0.0), Just(f64::NAN)],
            min in 0u32..150,
            a_ms in 0u64..200_000,
            b_ms in 0u64..200_000,
            since_ms in 0u64..50_000,
            weight in any::<u32>(),
        ) {
            let s = SlowStart { window: Duration::from_millis(window_ms), aggression, min_weight_percent: min };
            let t0 = Instant::now();
            let since = at(t0, since_ms);
            let (lo, hi) = (a_ms.min(b_ms), a_ms.max(b_ms));
            let f_lo = s.factor(since, at(t0, lo));
            let f_hi = s.factor(since, at(t0, hi));
            prop_assert!(f_lo > 0.0 && f_lo <= 1.0, "{}", f_lo);
            prop_assert!(f_hi > 0.0 && f_hi <= 1.0, "{}", f_hi);
            prop_assert!(f_lo <= f_hi, "{} > {}", f_lo, f_hi);
            let w = s.weight(weight, since, at(t0, lo));
            prop_assert!(w >= 1 && w <= weight.max(1));
            if !s.ramping(since, at(t0, lo)) {
                prop_assert_eq!(f_lo, 1.0);
            }
        }
    }
}
