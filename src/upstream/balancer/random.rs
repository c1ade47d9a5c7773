//! Weighted random selection.
//!
//! Owns: the weight snapshot for one endpoint list. Does not own: the RNG
//! (callers pass a per-worker `fastrand::Rng`, so there is no shared state
//! and nothing to lock).
//!
//! Each endpoint is chosen with probability `weight / Σ weight` over the
//! non-excluded endpoints: O(1) when weights are equal, O(log n) otherwise,
//! O(n) only on a retry whose draws keep hitting excluded endpoints.

use super::{Candidate, PickContext, WeightedSampler};

/// Weighted random balancer.
#[derive(Debug)]
pub struct Random {
    sampler: WeightedSampler,
}

impl Random {
    /// Snapshots the endpoints' weights.
    pub fn new<C: Candidate>(endpoints: &[C]) -> Self {
        Self {
            sampler: WeightedSampler::new(endpoints),
        }
    }

    /// A weighted random index among the first `len`, skipping excluded ones.
    pub fn pick(
        &self,
        len: usize,
        ctx: &PickContext<'_>,
        rng: &mut fastrand::Rng,
    ) -> Option<usize> {
        self.sampler.sample(rng, len, ctx, None)
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{endpoints, shares};
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        /// Pick shares match weight shares among the non-excluded endpoints.
        #[test]
        fn distribution_follows_weights(
            weights in prop::collection::vec(1u32..10, 1..8),
            excluded in prop::option::of(0usize..8),
            seed in any::<u64>(),
        ) {
            let n = weights.len();
            let exclude: Vec<usize> = excluded.filter(|&e| e < n && n > 1).into_iter().collect();
            let r = Random::new(&endpoints(&weights));
            let mut rng = fastrand::Rng::with_seed(seed);
            let ctx = PickContext { hash_key: None, exclude: &exclude };
            let mut counts = vec![0u64; n];
            for _ in 0..20_000 {
                let i = r.pick(n, &ctx, &mut rng).ok_or_else(|| TestCaseError::fail("None"))?;
                counts[i] += 1;
            }
            let allowed_total: u32 = (0..n).filter(|i| !exclude.contains(i)).map(|i| weights[i]).sum();
            for (i, share) in shares(&counts).into_iter().enumerate() {
                let want = if exclude.contains(&i) { 0.0 } else { f64::from(weights[i]) / f64::from(allowed_total) };
                // 20k draws: one standard deviation is at most 0.0036.
                prop_assert!((share - want).abs() < 0.025, "endpoint {} share {} want {}", i, share, want);
            }
        }
    }
}
