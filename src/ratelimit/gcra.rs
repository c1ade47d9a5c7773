//! The generic cell rate algorithm (GCRA): one rate-limit decision from one stored number.
//!
//! Owns: [`Quota`] (a rate plus a burst, in integer nanoseconds), [`Decision`] (what the caller
//! needs for the verdict and the `RateLimit` headers) and the pure [`decide`].
//!
//! Does not own: where the per-key state lives (`table.rs` in process, `store.rs` in Redis), how
//! keys are built, the clock, or headers. Time is a plain `u64` of nanoseconds on whatever
//! monotonic scale the caller uses, so the same integer arithmetic can be mirrored elsewhere
//! (the Redis script runs it in microseconds) and tests need no clock.
//!
//! The whole state of a key is its theoretical arrival time (TAT): the instant at which the key
//! would be back to "no debt" if it sent nothing more. With emission interval `T` and burst `B`
//! (tolerance `τ = T·(B−1)`), a request at `now` is allowed iff `max(tat, now) + T − now ≤ T·B`,
//! i.e. iff `max(tat, now) − now ≤ τ`; an allowed request moves the TAT to `max(tat, now) + T`, a
//! refused one leaves it alone (refusals cost nothing, so a client hammering a closed door does
//! not push its own reopening further away).
//!
//! Window bound (pinned by a property test): if `n` requests are allowed at instants inside a
//! half-open window `[t, t+w)`, then `n·T < B·T + w`. Proof: the first of them leaves the TAT at
//! `≥ t + T`, each later one adds at least `T`, so after the last one `tat ≥ t + n·T`; that last
//! one was allowed at some `a < t + w`, so `tat − a ≤ B·T`, giving `t + n·T < t + w + B·T`.
//! Hence `n ≤ B + ⌈w/T⌉ − 1 ≤ B + ⌊w/T⌋` — no `+1` for the boundary is needed, and the bound is
//! attained (a full burst at `t`, then one request every `T`).

use std::time::Duration;

/// A rate limit: a sustained rate plus how many requests an idle key may send at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    /// Nanoseconds between requests at the sustained rate: `period / count`, rounded up so the
    /// admitted rate never exceeds the configured one, and at least 1.
    pub emission_ns: u64,
    /// Requests an idle key may send at once (at least 1).
    pub burst: u32,
}

impl Quota {
    /// `count` requests per `period`, with `burst` allowed back to back from an idle key.
    ///
    /// `burst` is clamped to at least 1 (a key that may never send is a deny rule, not a rate
    /// limit). A `count` of 0 is treated as 1: config validation should reject it, and the
    /// least surprising fallback is the slowest rate the period can express.
    pub fn new(count: u32, period: Duration, burst: u32) -> Quota {
        let period_ns = u64::try_from(period.as_nanos()).unwrap_or(u64::MAX);
        Quota {
            emission_ns: period_ns.div_ceil(u64::from(count.max(1))).max(1),
            burst: burst.max(1),
        }
    }

    /// The share of one instance when a fleet of `n` falls back to counting locally (the shared
    /// store is unreachable): `rate / n` and `burst / n` rounded down, so the fleet as a whole
    /// stays within the quota; burst at least 1. `n` of 0 is treated as 1.
    pub fn divided(&self, n: u32) -> Quota {
        let n = n.max(1);
        Quota {
            emission_ns: self.emission_ns.saturating_mul(u64::from(n)).max(1),
            burst: (self.burst / n).max(1),
        }
    }

    /// Tolerance `τ = T·(B−1)` in nanoseconds: how far ahead of `now` the TAT may be for a
    /// request to still be allowed.
    pub fn tolerance_ns(&self) -> u64 {
        self.emission_ns
            .saturating_mul(u64::from(self.burst.max(1).saturating_sub(1)))
    }
}

/// The outcome of one request against one key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// Whether the request may proceed.
    pub allowed: bool,
    /// How many more requests would be allowed right now, after this one (0 when refused).
    pub remaining: u32,
    /// Nanoseconds until the key is back to a full burst (its TAT minus now).
    pub reset_after_ns: u64,
    /// Nanoseconds until a request would be allowed again; 0 when allowed. Exact: a request at
    /// `now + retry_after_ns` is allowed, one a nanosecond earlier is not.
    pub retry_after_ns: u64,
}

/// Decides one request at `now_ns` for a key whose TAT is `tat_ns` (0 = never seen; any TAT at
/// or before `now_ns` is equivalent). Returns the decision and the TAT to store, which equals
/// `tat_ns` when the request is refused. All arithmetic saturates.
pub fn decide(q: &Quota, tat_ns: u64, now_ns: u64) -> (Decision, u64) {
    let emission = q.emission_ns.max(1);
    let burst = q.burst.max(1);
    // T·B: how far ahead of now the TAT may be *after* counting this request.
    let limit = emission.saturating_mul(u64::from(burst));
    let new_tat = tat_ns.max(now_ns).saturating_add(emission);
    let ahead = new_tat.saturating_sub(now_ns);
    if ahead <= limit {
        // k more fit iff ahead + k·T <= T·B. The cap only matters if T·B saturated.
        let more = (limit - ahead) / emission;
        let remaining = u32::try_from(more.min(u64::from(burst - 1))).unwrap_or(u32::MAX);
        let d = Decision {
            allowed: true,
            remaining,
            reset_after_ns: ahead,
            retry_after_ns: 0,
        };
        (d, new_tat)
    } else {
        // Allowed again at the first t with tat − t <= τ. Refused implies tat − now > τ, so
        // this is >= 1; the `max` only guards the saturated corner near u64::MAX.
        let retry = tat_ns
            .saturating_sub(q.tolerance_ns())
            .saturating_sub(now_ns)
            .max(1);
        let d = Decision {
            allowed: false,
            remaining: 0,
            reset_after_ns: tat_ns.saturating_sub(now_ns),
            retry_after_ns: retry,
        };
        (d, tat_ns)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn q(emission_ns: u64, burst: u32) -> Quota {
        Quota { emission_ns, burst }
    }

    #[test]
    fn new_divides_period_rounding_up_and_clamps() {
        assert_eq!(Quota::new(10, Duration::from_secs(1), 5), q(100_000_000, 5));
        // 1 s / 3 does not divide: round up so the rate is never above 3/s.
        assert_eq!(
            Quota::new(3, Duration::from_secs(1), 1).emission_ns,
            333_333_334
        );
        assert_eq!(Quota::new(10, Duration::from_secs(1), 0).burst, 1);
        assert_eq!(Quota::new(1000, Duration::from_nanos(1), 1).emission_ns, 1);
        assert_eq!(Quota::new(1000, Duration::ZERO, 1).emission_ns, 1);
        assert_eq!(
            Quota::new(0, Duration::from_secs(2), 1).emission_ns,
            2_000_000_000
        );
        assert_eq!(
            Quota::new(1, Duration::MAX, 1).emission_ns,
            u64::MAX,
            "periods beyond u64 nanoseconds saturate"
        );
    }

    #[test]
    fn divided_shares_rate_and_burst() {
        let full = q(1_000, 10);
        assert_eq!(full.divided(3), q(3_000, 3));
        assert_eq!(full.divided(20), q(20_000, 1), "burst at least 1");
        assert_eq!(full.divided(0), full);
        assert_eq!(full.divided(1), full);
        assert_eq!(q(u64::MAX, 4).divided(2).emission_ns, u64::MAX);
    }

    #[test]
    fn fresh_key_then_refusal_then_recovery() {
        let quota = q(100, 3);
        let now = 1_000;
        let (d, tat) = decide(&quota, 0, now);
        assert_eq!(
            d,
            Decision {
                allowed: true,
                remaining: 2,
                reset_after_ns: 100,
                retry_after_ns: 0
            }
        );
        assert_eq!(tat, 1_100);
        let (d, tat) = decide(&quota, tat, now);
        assert_eq!(
            (d.allowed, d.remaining, d.reset_after_ns, tat),
            (true, 1, 200, 1_200)
        );
        let (d, tat) = decide(&quota, tat, now);
        assert_eq!(
            (d.allowed, d.remaining, d.reset_after_ns, tat),
            (true, 0, 300, 1_300)
        );
        let (d, tat2) = decide(&quota, tat, now);
        assert_eq!(
            d,
            Decision {
                allowed: false,
                remaining: 0,
                reset_after_ns: 300,
                retry_after_ns: 100
            }
        );
        assert_eq!(tat2, tat, "a refusal does not move the TAT");
        // One emission later exactly one more fits.
        let (d, tat) = decide(&quota, tat, now + 100);
        assert_eq!((d.allowed, d.remaining), (true, 0));
        assert!(!decide(&quota, tat, now + 100).0.allowed);
        // After reset_after the key is as good as new.
        let (d, _) = decide(&quota, tat, tat);
        assert_eq!(d, decide(&quota, 0, tat).0);
    }

    #[test]
    fn burst_one_is_a_strict_interval() {
        let quota = q(50, 1);
        let (d, tat) = decide(&quota, 0, 10);
        assert!(d.allowed && d.remaining == 0);
        let (d, _) = decide(&quota, tat, 59);
        assert_eq!((d.allowed, d.retry_after_ns), (false, 1));
        assert!(decide(&quota, tat, 60).0.allowed);
    }

    #[test]
    fn saturates_instead_of_overflowing() {
        let quota = q(u64::MAX, u32::MAX);
        let (d, tat) = decide(&quota, 0, 5);
        assert!(d.allowed);
        assert_eq!(tat, u64::MAX);
        assert!(d.remaining < u32::MAX);
        // Near the end of time the TAT pins at u64::MAX rather than wrapping to the past.
        let (_, tat2) = decide(&q(10, 2), u64::MAX - 5, u64::MAX - 1);
        assert_eq!(tat2, u64::MAX);
        let (d, _) = decide(&q(7, 3), u64::MAX, 0);
        assert!(!d.allowed && d.retry_after_ns == u64::MAX - 14);
    }

    /// A key driven by arrivals at the given gaps; returns the instants that were allowed.
    fn run(quota: &Quota, start: u64, gaps: &[u64]) -> Vec<u64> {
        let (mut tat, mut now, mut allowed) = (0, start, Vec::new());
        for gap in gaps {
            now += gap;
            let (d, t) = decide(quota, tat, now);
            tat = t;
            if d.allowed {
                allowed.push(now);
            }
        }
        allowed
    }

    #[test]
    fn window_bound_is_attained() {
        // A full burst at t, then one request every T: B + k requests inside [t, t + k·T + 1).
        let quota = q(1_000, 4);
        let mut gaps = vec![0; 4];
        gaps.extend([1_000; 5]);
        let allowed = run(&quota, 7, &gaps);
        assert_eq!(allowed.len(), 9);
        let w = 5 * 1_000 + 1;
        assert_eq!(allowed.iter().filter(|&&a| a < 7 + w).count(), 4 + 5);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// In every half-open window [t, t+w): n·T < B·T + w, hence n <= B + floor(w/T).
        #[test]
        fn any_window_admits_at_most_burst_plus_rate(
            emission in 1u64..10_000,
            burst in 1u32..20,
            gaps in proptest::collection::vec(0u64..30_000, 1..400),
            w in 1u64..200_000,
        ) {
            let quota = q(emission, burst);
            let allowed = run(&quota, 1, &gaps);
            // The densest window starts at an allowed instant; slide over all of them.
            let mut end = 0;
            for (start, &a) in allowed.iter().enumerate() {
                while end < allowed.len() && allowed[end] < a + w {
                    end += 1;
                }
                let n = (end - start) as u64;
                prop_assert!(n * emission < u64::from(burst) * emission + w);
                prop_assert!(n <= u64::from(burst) + w / emission);
            }
        }

        /// Offered faster than the quota for a long time, the admitted rate is the quota's —
        /// given any tolerance (burst >= 2, so τ >= T > the offered interval and the TAT never
        /// falls behind an arrival). Burst 1 is the exception pinned by the next test.
        #[test]
        fn long_run_rate_converges_to_quota(
            count in 1u32..1_000,
            period_ms in 1u64..10_000,
            burst in 2u32..20,
            overload in 1.05f64..8.0,
        ) {
            let quota = Quota::new(count, Duration::from_millis(period_ms), burst);
            let configured_per_ns = f64::from(count) / (period_ms as f64 * 1e6);
            let interval = ((quota.emission_ns as f64 / overload) as u64).max(1);
            let duration = quota.emission_ns.saturating_mul(20_000);
            let (mut tat, mut now, mut admitted) = (0u64, 1u64, 0u64);
            while now < duration {
                let (d, t) = decide(&quota, tat, now);
                tat = t;
                admitted += u64::from(d.allowed);
                now += interval;
            }
            let ratio = admitted as f64 / (configured_per_ns * duration as f64);
            prop_assert!((0.99..=1.01).contains(&ratio), "ratio {ratio}");
        }

        /// With burst 1 (τ = 0) and strictly periodic arrivals every `i`, the time between the
        /// TAT and the next arrival is lost each cycle: one admit per ⌈T/i⌉ arrivals, i.e. a rate
        /// of 1/(⌈T/i⌉·i) — never above the quota, and only near it when `i` divides `T` or
        /// `i << T`.
        #[test]
        fn burst_one_rate_is_quantised_by_the_arrival_interval(
            emission in 1_000u64..1_000_000,
            overload in 1.05f64..8.0,
        ) {
            let quota = q(emission, 1);
            let interval = ((emission as f64 / overload) as u64).max(1);
            let arrivals = 20_000 * overload as u64;
            let (mut tat, mut admitted) = (0u64, 0u64);
            for k in 0..arrivals {
                let (d, t) = decide(&quota, tat, 1 + k * interval);
                tat = t;
                admitted += u64::from(d.allowed);
            }
            let per_cycle = emission.div_ceil(interval);
            prop_assert_eq!(admitted, arrivals.div_ceil(per_cycle));
        }

        /// An idle key (never seen, or last TAT in the past) admits exactly `burst` at once, with
        /// `remaining` counting down to 0, then refuses.
        #[test]
        fn idle_key_admits_exactly_burst(
            emission in 1u64..1_000_000,
            burst in 1u32..200,
            now in 0u64..1 << 50,
            old_tat_back in 0u64..1 << 40,
            seen in any::<bool>(),
        ) {
            let quota = q(emission, burst);
            let mut tat = if seen { now.saturating_sub(old_tat_back) } else { 0 };
            for i in 0..burst {
                let (d, t) = decide(&quota, tat, now);
                prop_assert!(d.allowed);
                prop_assert_eq!(d.remaining, burst - 1 - i);
                prop_assert_eq!(d.retry_after_ns, 0);
                prop_assert_eq!(d.reset_after_ns, u64::from(i + 1) * emission);
                tat = t;
            }
            for _ in 0..3 {
                let (d, t) = decide(&quota, tat, now);
                prop_assert!(!d.allowed);
                prop_assert_eq!(d.remaining, 0);
                prop_assert_eq!(d.retry_after_ns, emission);
                prop_assert_eq!(t, tat);
            }
        }

        /// retry_after is exact, whatever history led to the refusal.
        #[test]
        fn retry_after_is_exact(
            emission in 1u64..100_000,
            burst in 1u32..10,
            gaps in proptest::collection::vec(0u64..50_000, 1..100),
        ) {
            let quota = q(emission, burst);
            let (mut tat, mut now) = (0u64, 1_000u64);
            for gap in gaps {
                now += gap;
                let (d, t) = decide(&quota, tat, now);
                if d.allowed {
                    prop_assert_eq!(d.retry_after_ns, 0);
                    prop_assert_eq!(d.reset_after_ns, t - now);
                } else {
                    prop_assert!(d.retry_after_ns >= 1);
                    prop_assert_eq!(d.reset_after_ns, tat - now);
                    prop_assert!(decide(&quota, tat, now + d.retry_after_ns).0.allowed);
                    prop_assert!(!decide(&quota, tat, now + d.retry_after_ns - 1).0.allowed);
                }
                tat = t;
            }
        }

        /// `remaining` predicts exactly how many back-to-back requests still fit.
        #[test]
        fn remaining_is_exact(
            emission in 1u64..100_000,
            burst in 1u32..30,
            gaps in proptest::collection::vec(0u64..200_000, 1..50),
        ) {
            let quota = q(emission, burst);
            let (mut tat, mut now) = (0u64, 1u64);
            for gap in gaps {
                now += gap;
                let (d, t) = decide(&quota, tat, now);
                tat = t;
                if d.allowed {
                    let mut probe = tat;
                    for _ in 0..d.remaining {
                        let (e, t) = decide(&quota, probe, now);
                        prop_assert!(e.allowed);
                        probe = t;
                    }
                    prop_assert!(!decide(&quota, probe, now).0.allowed);
                }
            }
        }
    }
}
