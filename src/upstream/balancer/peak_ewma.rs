//! Peak-EWMA via power of two choices (Finagle's `Balancers.p2cPeakEwma`,
//! linkerd2-proxy, tower's `PeakEwma`).
//!
//! Owns: the weighted sampler for one endpoint list and the cost comparison.
//! Does not own: the latency estimate (`Candidate::load_cost`, backed by
//! `upstream::stats::EwmaEstimator`) or the in-flight counts.
//!
//! Draw two distinct non-excluded endpoints (weighted, as in `LeastRequest`)
//! and keep the lower `load_cost(now) × (in_flight + 1) / weight`: expected
//! latency scaled by the queue a new request would join. Because the
//! estimate is a *peak* EWMA, an endpoint that suddenly slows down is
//! avoided at once, and it is retried gradually as the estimate decays.
//!
//! Equal costs (including both zero, e.g. endpoints idle for hours whose
//! estimate decayed to nothing) fall back to the least-request comparison,
//! so in-flight counts still matter when latency says nothing; this plays
//! the role of Finagle's "penalty for pending requests at zero cost".

use std::cmp::Ordering;
use std::time::Instant;

use super::least_request::cmp_request_load;
use super::{Candidate, PickContext, WeightedSampler, weight_of};

/// Power-of-two-choices peak-EWMA balancer.
#[derive(Debug)]
pub struct PeakEwma {
    sampler: WeightedSampler,
}

impl PeakEwma {
    /// Snapshots the endpoints' weights for candidate sampling.
    pub fn new<C: Candidate>(endpoints: &[C]) -> Self {
        Self {
            sampler: WeightedSampler::new(endpoints),
        }
    }

    /// The cheaper of two weighted-random non-excluded endpoints at `now`
    /// (the only one if just one is left; full ties go to the first draw,
    /// which is itself random).
    pub fn pick<C: Candidate>(
        &self,
        endpoints: &[C],
        ctx: &PickContext<'_>,
        now: Instant,
        rng: &mut fastrand::Rng,
    ) -> Option<usize> {
        let (a, b) = self.sampler.sample_two(rng, endpoints.len(), ctx)?;
        let ca = endpoints.get(a)?;
        let Some((b, cb)) = b.and_then(|b| Some((b, endpoints.get(b)?))) else {
            return Some(a);
        };
        let order = cost(cb, now)
            .partial_cmp(&cost(ca, now))
            // NaN (a broken `load_cost`) compares as a tie.
            .unwrap_or(Ordering::Equal)
            .then_with(|| cmp_request_load(cb, ca));
        Some(match order {
            Ordering::Less => b,
            Ordering::Equal | Ordering::Greater => a,
        })
    }
}

/// `load_cost(now) × (in_flight + 1) / weight`; lower is better.
fn cost<C: Candidate>(c: &C, now: Instant) -> f64 {
    c.load_cost(now) * (f64::from(c.in_flight()) + 1.0) / f64::from(weight_of(c))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // In tests a failed unwrap is a failed assertion.
mod tests {
    use super::super::test_support::{TestEndpoint, closed_loop, endpoints, shares};
    use super::*;
    use crate::upstream::stats::EndpointStats;
    use proptest::prelude::*;
    use std::sync::Arc;
    use std::time::Duration;

    fn ctx() -> PickContext<'static> {
        PickContext::default()
    }

    #[test]
    fn slower_endpoint_loses_at_equal_load() {
        let mut eps = endpoints(&[1, 1]);
        eps[0].cost = 100.0;
        eps[1].cost = 10.0;
        let p = PeakEwma::new(&eps);
        let mut rng = fastrand::Rng::with_seed(21);
        for _ in 0..50 {
            assert_eq!(p.pick(&eps, &ctx(), Instant::now(), &mut rng), Some(1));
        }
    }

    #[test]
    fn load_outweighs_latency_when_queue_is_long() {
        let mut eps = endpoints(&[1, 1]);
        eps[0].cost = 20.0; // 20 × (0 + 1) = 20
        eps[1].cost = 10.0; // 10 × (4 + 1) = 50
        eps[1].in_flight = 4;
        let p = PeakEwma::new(&eps);
        let mut rng = fastrand::Rng::with_seed(22);
        assert_eq!(p.pick(&eps, &ctx(), Instant::now(), &mut rng), Some(0));
    }

    #[test]
    fn zero_cost_tie_falls_back_to_in_flight() {
        let mut eps = endpoints(&[1, 1]);
        eps[0].cost = 0.0;
        eps[1].cost = 0.0;
        eps[0].in_flight = 9;
        let p = PeakEwma::new(&eps);
        let mut rng = fastrand::Rng::with_seed(23);
        for _ in 0..50 {
            assert_eq!(p.pick(&eps, &ctx(), Instant::now(), &mut rng), Some(1));
        }
    }

    #[test]
    fn nan_cost_does_not_panic() {
        let mut eps = endpoints(&[1, 1]);
        eps[0].cost = f64::NAN;
        let p = PeakEwma::new(&eps);
        let mut rng = fastrand::Rng::with_seed(24);
        assert!(p.pick(&eps, &ctx(), Instant::now(), &mut rng).is_some());
    }

    /// End to end with real `EndpointStats`: a latency spike on one endpoint
    /// diverts traffic immediately, and idle decay brings it back.
    #[test]
    fn reacts_to_spike_then_recovers_with_real_stats() {
        struct Ep(Arc<EndpointStats>);
        impl Candidate for Ep {
            fn weight(&self) -> u32 {
                1
            }
            fn in_flight(&self) -> u32 {
                self.0.in_flight()
            }
            fn load_cost(&self, now: Instant) -> f64 {
                self.0.load_cost(now)
            }
            fn identity_hash(&self) -> u64 {
                0
            }
        }
        let t0 = Instant::now();
        let eps = [
            Ep(Arc::new(EndpointStats::new(t0))),
            Ep(Arc::new(EndpointStats::new(t0))),
        ];
        let ms = Duration::from_millis;
        eps[0].0.record_success(ms(20), t0);
        eps[1].0.record_success(ms(2_000), t0 + ms(1));
        let p = PeakEwma::new(&eps);
        let mut rng = fastrand::Rng::with_seed(25);
        let now = t0 + ms(2);
        assert_eq!(p.pick(&eps, &ctx(), now, &mut rng), Some(0));
        // Endpoint 0 keeps answering in 20 ms with work queued on it; the
        // spiked endpoint goes idle and its estimate decays below.
        let _queued: Vec<_> = (0..3).map(|_| eps[0].0.start()).collect();
        let later = t0 + ms(60_000);
        eps[0].0.record_success(ms(20), later);
        assert_eq!(p.pick(&eps, &ctx(), later, &mut rng), Some(1));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// With two candidates, the strictly costlier one is never picked.
        #[test]
        fn never_picks_strictly_costlier_of_two(
            w in (1u32..10, 1u32..10),
            f in (0u32..50, 0u32..50),
            c in (0.1f64..100.0, 0.1f64..100.0),
            seed in any::<u64>(),
        ) {
            let mut eps = endpoints(&[w.0, w.1]);
            eps[0].in_flight = f.0;
            eps[1].in_flight = f.1;
            eps[0].cost = c.0;
            eps[1].cost = c.1;
            let p = PeakEwma::new(&eps);
            let mut rng = fastrand::Rng::with_seed(seed);
            let now = Instant::now();
            let full = |e: &TestEndpoint| e.cost * f64::from(e.in_flight + 1) / f64::from(e.weight);
            for _ in 0..20 {
                let i = p.pick(&eps, &ctx(), now, &mut rng).ok_or_else(|| TestCaseError::fail("None"))?;
                prop_assert!(full(&eps[i]) <= full(&eps[1 - i]));
            }
        }

        /// With equal latency, sustained load is shared by weight.
        #[test]
        fn loaded_distribution_follows_weights(
            weights in prop::collection::vec(1u32..8, 2..7),
            seed in any::<u64>(),
        ) {
            let mut eps = endpoints(&weights);
            let p = PeakEwma::new(&eps);
            let mut rng = fastrand::Rng::with_seed(seed);
            let n = eps.len() as u32;
            let now = Instant::now();
            let counts = closed_loop(&mut eps, 60 * n, 30_000, &mut rng, |eps, rng| {
                p.pick(eps, &PickContext::default(), now, rng).unwrap()
            });
            let total: u32 = weights.iter().sum();
            for (i, s) in shares(&counts).into_iter().enumerate() {
                let want = f64::from(weights[i]) / f64::from(total);
                prop_assert!((s - want).abs() < 0.04, "endpoint {} share {} want {} ({:?})", i, s, want, weights);
            }
        }
    }
}
