//! Least request via power of two choices (P2C).
//!
//! Owns: the weighted sampler for one endpoint list and the request-count
//! comparison (also `PeakEwma`'s tie-breaker). Does not own: the in-flight
//! counts (read live through [`Candidate::in_flight`]).
//!
//! Draw two distinct non-excluded endpoints, keep the one with the lower
//! `(in_flight + 1) / weight`. P2C avoids the herd behaviour of "global
//! least" (every worker piling onto the same momentarily idle endpoint) while
//! staying O(1).
//!
//! Weights enter twice, on purpose: the two candidates are drawn with
//! probability proportional to weight (uniformly when all weights are equal),
//! and the cost divides by weight. Uniform draws alone cannot honour skewed
//! weights: an endpoint that should get 60% of traffic is only ever a
//! candidate in about `2/n` of picks. The cost term then drives in-flight
//! counts toward proportionality with weight under load.

use std::cmp::Ordering;

use super::{Candidate, PickContext, WeightedSampler, weight_of};

/// Power-of-two-choices least-request balancer.
#[derive(Debug)]
pub struct LeastRequest {
    sampler: WeightedSampler,
}

impl LeastRequest {
    /// Snapshots the endpoints' weights for candidate sampling.
    pub fn new<C: Candidate>(endpoints: &[C]) -> Self {
        Self {
            sampler: WeightedSampler::new(endpoints),
        }
    }

    /// The less loaded of two weighted-random non-excluded endpoints (the
    /// only one if just one is left; ties go to the first draw, which is
    /// itself random).
    pub fn pick<C: Candidate>(
        &self,
        endpoints: &[C],
        ctx: &PickContext<'_>,
        rng: &mut fastrand::Rng,
    ) -> Option<usize> {
        let (a, b) = self.sampler.sample_two(rng, endpoints.len(), ctx)?;
        let ca = endpoints.get(a)?;
        let Some((b, cb)) = b.and_then(|b| Some((b, endpoints.get(b)?))) else {
            return Some(a);
        };
        Some(match cmp_request_load(cb, ca) {
            Ordering::Less => b,
            Ordering::Equal | Ordering::Greater => a,
        })
    }
}

/// Compares `(in_flight + 1) / weight` exactly, by cross-multiplying in
/// `u64` (no float rounding, no overflow: both factors fit in 33 bits).
pub(super) fn cmp_request_load<C: Candidate>(a: &C, b: &C) -> Ordering {
    let la = (u64::from(a.in_flight()) + 1) * u64::from(weight_of(b));
    let lb = (u64::from(b.in_flight()) + 1) * u64::from(weight_of(a));
    la.cmp(&lb)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // In tests a failed unwrap is a failed assertion.
mod tests {
    use super::super::test_support::{TestEndpoint, closed_loop, endpoints, shares};
    use super::*;
    use proptest::prelude::*;

    fn ctx() -> PickContext<'static> {
        PickContext::default()
    }

    #[test]
    fn idle_equal_weights_spread_uniformly() {
        let eps = endpoints(&[1; 4]);
        let lr = LeastRequest::new(&eps);
        let mut rng = fastrand::Rng::with_seed(11);
        let mut counts = [0u64; 4];
        for _ in 0..40_000 {
            counts[lr.pick(&eps, &ctx(), &mut rng).unwrap()] += 1;
        }
        for s in shares(&counts) {
            assert!((s - 0.25).abs() < 0.02, "{counts:?}");
        }
    }

    #[test]
    fn clearly_idle_endpoint_is_preferred() {
        let mut eps = endpoints(&[1; 8]);
        for (i, e) in eps.iter_mut().enumerate() {
            e.in_flight = if i == 5 { 0 } else { 50 };
        }
        let lr = LeastRequest::new(&eps);
        let mut rng = fastrand::Rng::with_seed(12);
        let hits = (0..10_000)
            .filter(|_| lr.pick(&eps, &ctx(), &mut rng) == Some(5))
            .count();
        // P(endpoint 5 is one of the two candidates) = 2/8.
        assert!((2_300..2_700).contains(&hits), "{hits}");
    }

    #[test]
    fn one_left_after_exclusions_is_returned() {
        let mut eps = endpoints(&[1, 1, 1]);
        eps[1].in_flight = 1_000;
        let lr = LeastRequest::new(&eps);
        let mut rng = fastrand::Rng::with_seed(13);
        let c = PickContext {
            hash_key: None,
            exclude: &[0, 2],
        };
        assert_eq!(lr.pick(&eps, &c, &mut rng), Some(1));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// With exactly two candidates, the strictly more loaded one (by
        /// `(in_flight + 1) / weight`) is never picked.
        #[test]
        fn never_picks_strictly_more_loaded_of_two(
            w in (1u32..10, 1u32..10),
            f in (0u32..50, 0u32..50),
            seed in any::<u64>(),
        ) {
            let mut eps = endpoints(&[w.0, w.1]);
            eps[0].in_flight = f.0;
            eps[1].in_flight = f.1;
            let lr = LeastRequest::new(&eps);
            let mut rng = fastrand::Rng::with_seed(seed);
            let load = |e: &TestEndpoint| f64::from(e.in_flight + 1) / f64::from(e.weight);
            for _ in 0..20 {
                let i = lr.pick(&eps, &ctx(), &mut rng).ok_or_else(|| TestCaseError::fail("None"))?;
                prop_assert!(load(&eps[i]) <= load(&eps[1 - i]));
            }
        }

        /// Under sustained load, picks are shared in proportion to weight.
        #[test]
        fn loaded_distribution_follows_weights(
            weights in prop::collection::vec(1u32..8, 2..7),
            seed in any::<u64>(),
        ) {
            let mut eps = endpoints(&weights);
            let lr = LeastRequest::new(&eps);
            let mut rng = fastrand::Rng::with_seed(seed);
            let n = eps.len() as u32;
            let counts = closed_loop(&mut eps, 60 * n, 30_000, &mut rng, |eps, rng| {
                lr.pick(eps, &PickContext::default(), rng).unwrap()
            });
            let total: u32 = weights.iter().sum();
            for (i, s) in shares(&counts).into_iter().enumerate() {
                let want = f64::from(weights[i]) / f64::from(total);
                prop_assert!((s - want).abs() < 0.04, "endpoint {} share {} want {} ({:?})", i, s, want, weights);
            }
        }
    }
}
