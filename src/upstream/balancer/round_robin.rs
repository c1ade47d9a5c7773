//! Smooth weighted round robin (nginx's `ngx_http_upstream_get_peer`).
//!
//! Owns: the rotation state for one endpoint list. Does not own: weights
//! (snapshotted at build time), health, or retry policy.
//!
//! Each pick adds every eligible endpoint's weight to its `current`, picks the
//! largest `current`, and subtracts the eligible total from the winner. Over
//! any `W = Σ weights` consecutive picks from the initial state each endpoint
//! is picked exactly `weight` times, and heavy endpoints are interleaved
//! rather than bunched: after `k` picks no endpoint has been picked more than
//! `ceil(k · weight / W)` times (`{5,1,1}` gives `a a b a c a a`, not
//! `a a a a a b c`).
//!
//! When all weights are equal the algorithm degenerates to plain rotation, so
//! that case is a single lock-free atomic counter.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError};

use super::{Candidate, PickContext, weight_of};

/// Smooth weighted round robin balancer.
#[derive(Debug)]
pub struct RoundRobin {
    inner: Inner,
}

#[derive(Debug)]
enum Inner {
    /// All weights equal: rotate a shared counter.
    Uniform {
        /// Monotonic pick counter (wraps; the hiccup at `usize::MAX` is
        /// harmless).
        next: AtomicUsize,
        /// Endpoint count at build time.
        len: usize,
    },
    /// Unequal weights: nginx's smooth algorithm.
    Weighted {
        /// Each endpoint's weight at build time.
        weights: Vec<i64>,
        /// Each endpoint's running `current_weight`. The whole vector is
        /// read and written on every pick, so one lock over it is both the
        /// simplest and the cheapest option.
        current: Mutex<Vec<i64>>,
    },
}

impl RoundRobin {
    /// Snapshots the endpoints' weights.
    pub fn new<C: Candidate>(endpoints: &[C]) -> Self {
        let weights: Vec<i64> = endpoints.iter().map(|c| i64::from(weight_of(c))).collect();
        let inner = if weights.windows(2).all(|w| w[0] == w[1]) {
            Inner::Uniform {
                next: AtomicUsize::new(0),
                len: weights.len(),
            }
        } else {
            Inner::Weighted {
                current: Mutex::new(vec![0; weights.len()]),
                weights,
            }
        };
        Self { inner }
    }

    /// Next endpoint index among the first `len` (the list `pick` was
    /// given), skipping excluded ones.
    pub fn pick(&self, len: usize, ctx: &PickContext<'_>) -> Option<usize> {
        match &self.inner {
            Inner::Uniform { next, len: built } => {
                let n = len.min(*built);
                if n == 0 {
                    return None;
                }
                // Relaxed: only the counter's own atomicity matters.
                let start = next.fetch_add(1, Ordering::Relaxed) % n;
                // Excluded slots fall through to the next in rotation.
                (0..n)
                    .map(|off| (start + off) % n)
                    .find(|&i| !ctx.excludes(i))
            }
            Inner::Weighted { weights, current } => {
                let n = len.min(weights.len());
                // The state is plain integers updated in place; a panic
                // elsewhere cannot leave it unusable, so poison is ignored.
                let mut current = current.lock().unwrap_or_else(PoisonError::into_inner);
                let mut total = 0i64;
                let mut best: Option<usize> = None;
                for i in 0..n {
                    // nginx skips already-tried peers entirely: they neither
                    // gain credit this round nor count toward `total`, so a
                    // repeatedly excluded endpoint does not build up a burst.
                    if ctx.excludes(i) {
                        continue;
                    }
                    current[i] = current[i].saturating_add(weights[i]);
                    total += weights[i];
                    // Strictly greater: ties go to the lowest index (nginx).
                    if best.is_none_or(|b| current[i] > current[b]) {
                        best = Some(i);
                    }
                }
                let b = best?;
                current[b] = current[b].saturating_sub(total);
                Some(b)
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // In tests a failed unwrap is a failed assertion.
mod tests {
    use super::super::test_support::endpoints;
    use super::*;
    use proptest::prelude::*;

    fn run(rr: &RoundRobin, n: usize, picks: usize, exclude: &[usize]) -> Vec<usize> {
        let ctx = PickContext {
            hash_key: None,
            exclude,
        };
        (0..picks).filter_map(|_| rr.pick(n, &ctx)).collect()
    }

    #[test]
    fn nginx_reference_sequence() {
        // The sequence documented in nginx's commit introducing smooth WRR.
        let rr = RoundRobin::new(&endpoints(&[5, 1, 1]));
        assert_eq!(
            run(&rr, 3, 14, &[]),
            [0, 0, 1, 0, 2, 0, 0, 0, 0, 1, 0, 2, 0, 0]
        );
    }

    #[test]
    fn uniform_rotates() {
        let rr = RoundRobin::new(&endpoints(&[2, 2, 2]));
        assert!(matches!(rr.inner, Inner::Uniform { .. }));
        assert_eq!(run(&rr, 3, 7, &[]), [0, 1, 2, 0, 1, 2, 0]);
    }

    #[test]
    fn uniform_skips_excluded() {
        let rr = RoundRobin::new(&endpoints(&[1, 1, 1, 1]));
        assert_eq!(run(&rr, 4, 4, &[1, 2]), [0, 3, 3, 3]);
        assert_eq!(run(&rr, 4, 3, &[0, 1, 2, 3]), Vec::<usize>::new());
    }

    #[test]
    fn excluded_endpoint_does_not_build_up_credit() {
        let rr = RoundRobin::new(&endpoints(&[1, 2]));
        // 100 picks with the light endpoint excluded...
        run(&rr, 2, 100, &[0]);
        // ...must not make it win a streak afterwards.
        let seq = run(&rr, 2, 3, &[]);
        assert_eq!(seq.iter().filter(|&&i| i == 0).count(), 1, "{seq:?}");
    }

    #[test]
    fn concurrent_picks_keep_exact_shares() {
        let rr = RoundRobin::new(&endpoints(&[3, 1]));
        let counts: Vec<Vec<usize>> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..2)
                .map(|_| s.spawn(|| run(&rr, 2, 4_000, &[])))
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let zeros = counts.iter().flatten().filter(|&&i| i == 0).count();
        // 8000 picks is 2000 whole cycles of 4: exactly 3/4 to index 0.
        assert_eq!(zeros, 6_000);
    }

    proptest! {
        /// One full cycle gives each endpoint exactly its weight, and the
        /// state returns to the start (the next cycle is identical).
        #[test]
        fn full_cycle_gives_exact_weight_share(weights in prop::collection::vec(1u32..12, 1..8)) {
            let n = weights.len();
            let total: u32 = weights.iter().sum();
            let rr = RoundRobin::new(&endpoints(&weights));
            let first = run(&rr, n, total as usize, &[]);
            for (i, &w) in weights.iter().enumerate() {
                prop_assert_eq!(first.iter().filter(|&&p| p == i).count(), w as usize);
            }
            let second = run(&rr, n, total as usize, &[]);
            prop_assert_eq!(first, second);
        }

        /// Smoothness: after any k picks, endpoint i has been picked at most
        /// ceil(k·w_i/W) times, so no endpoint runs ahead of its share.
        #[test]
        fn never_runs_ahead_of_share(weights in prop::collection::vec(1u32..20, 1..8)) {
            let n = weights.len();
            let total = u64::from(weights.iter().sum::<u32>());
            let rr = RoundRobin::new(&endpoints(&weights));
            let seq = run(&rr, n, 2 * total as usize, &[]);
            let mut counts = vec![0u64; n];
            for (k, &p) in seq.iter().enumerate() {
                counts[p] += 1;
                let k = k as u64 + 1;
                for (i, &w) in weights.iter().enumerate() {
                    let cap = (k * u64::from(w)).div_ceil(total);
                    prop_assert!(counts[i] <= cap, "after {} picks endpoint {} has {} > {}: {:?}", k, i, counts[i], cap, seq);
                }
            }
        }

        /// Exclusions are never picked; with some excluded, the rest still
        /// share picks by weight over a cycle of their total weight.
        #[test]
        fn exclusions_skip_and_keep_shares(
            weights in prop::collection::vec(1u32..8, 2..8),
            excl_mask in any::<u8>(),
        ) {
            let n = weights.len();
            let exclude: Vec<usize> = (0..n).filter(|i| excl_mask & (1 << i) != 0).collect();
            let rr = RoundRobin::new(&endpoints(&weights));
            let allowed_total: u32 = (0..n).filter(|i| !exclude.contains(i)).map(|i| weights[i]).sum();
            let seq = run(&rr, n, allowed_total as usize, &exclude);
            prop_assert_eq!(seq.len(), allowed_total as usize);
            let uniform = weights.windows(2).all(|w| w[0] == w[1]);
            for (i, &w) in weights.iter().enumerate() {
                let c = seq.iter().filter(|&&p| p == i).count();
                if exclude.contains(&i) {
                    prop_assert_eq!(c, 0);
                } else if !uniform {
                    prop_assert_eq!(c, w as usize);
                }
            }
        }
    }
}
