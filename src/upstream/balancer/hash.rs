//! Consistent hashing with bounded loads.
//!
//! Owns: the hash ring for one endpoint list and the bounded-load walk.
//! Does not own: deriving the request's key (callers hash whatever they key
//! on — header, cookie, client IP — into [`PickContext::hash_key`]) or the
//! endpoints' identities ([`Candidate::identity_hash`]).
//!
//! Ring: ketama-style virtual nodes, 160 per unit of weight, each placed at
//! `mix(identity_hash, replica index)`. Positions depend only on the
//! endpoint's own identity and weight, never on the rest of the list or its
//! order, so adding or removing one endpoint only moves the keys that land
//! on its arcs (about `1/n` of them). The ring is capped at
//! [`MAX_RING_POINTS`]; above that every endpoint's share is scaled down
//! proportionally (at least one point each), which gives up that stability
//! only for very large or very heavily weighted lists.
//!
//! Bounded loads (Mirrokni, Thorup, Zadimoghaddam, "Consistent Hashing with
//! Bounded Loads", 2017; HAProxy's `hash-balance-factor`): with `T` requests
//! in flight across `n` endpoints, an endpoint may take a new request only if
//! its in-flight count is below `ceil(c · (T + 1) / n)`. The walk goes
//! clockwise from the key's point to the first endpoint under that bound, so
//! a hot key spills onto its ring neighbours instead of melting one endpoint,
//! while unloaded keys stay exactly where plain consistent hashing puts them.
//! Computing `T` reads every endpoint's in-flight count: O(n) per pick.
//!
//! Requests without a key are spread by weighted random.

use super::{Candidate, PickContext, WeightedSampler, weight_of};

/// Virtual nodes per unit of weight (libketama's 40 × 4).
pub const VNODES_PER_WEIGHT: u64 = 160;

/// Upper bound on ring size (points), keeping it at ~1.5 MiB at most.
pub const MAX_RING_POINTS: u64 = 1 << 17;

/// Consistent-hash balancer with bounded loads.
#[derive(Debug)]
pub struct ConsistentHash {
    /// Ring positions, ascending.
    points: Vec<u64>,
    /// `owners[i]` is the endpoint index owning `points[i]` (u32 keeps the
    /// ring compact; lists beyond 4 billion endpoints are not a concern).
    owners: Vec<u32>,
    /// Endpoint count at build time.
    len: usize,
    /// Bounded-load factor `c` (>= 1); `None` disables the bound.
    factor: Option<f64>,
    /// For requests without a hash key.
    fallback: WeightedSampler,
}

impl ConsistentHash {
    /// Default `hash_balance_factor`: no endpoint takes a new request while
    /// it is 25% or more above the average load.
    pub const DEFAULT_BALANCE_FACTOR: f64 = 1.25;

    /// Builds the ring. `balance_factor` is the bounded-load `c`; values
    /// below 1.0 (and NaN) disable the bound (pure consistent hashing).
    pub fn new<C: Candidate>(endpoints: &[C], balance_factor: f64) -> Self {
        let weights: Vec<u64> = endpoints.iter().map(|c| u64::from(weight_of(c))).collect();
        let ideal: u64 = weights
            .iter()
            .fold(0u64, |acc, w| acc.saturating_add(w * VNODES_PER_WEIGHT));
        let scale = if ideal > MAX_RING_POINTS {
            MAX_RING_POINTS as f64 / ideal as f64
        } else {
            1.0
        };
        let mut ring: Vec<(u64, u64, u32)> = Vec::new();
        for (index, (c, w)) in endpoints.iter().zip(&weights).enumerate() {
            let Ok(index) = u32::try_from(index) else {
                break;
            };
            let replicas = ((w * VNODES_PER_WEIGHT) as f64 * scale).max(1.0) as u64;
            let id = c.identity_hash();
            ring.extend((0..replicas).map(|r| (point(id, r), id, index)));
        }
        // Sorting by identity after position makes the rare collision
        // resolve the same way whatever order the list comes in.
        ring.sort_unstable();
        Self {
            points: ring.iter().map(|&(p, _, _)| p).collect(),
            owners: ring.iter().map(|&(_, _, i)| i).collect(),
            len: endpoints.len(),
            factor: (balance_factor >= 1.0).then_some(balance_factor),
            fallback: WeightedSampler::new(endpoints),
        }
    }

    /// The endpoint for `ctx.hash_key`: the first non-excluded endpoint
    /// clockwise from the key whose load is within the bound, else the first
    /// non-excluded one (only possible when exclusions remove every endpoint
    /// under the bound). Weighted random when there is no key.
    pub fn pick<C: Candidate>(
        &self,
        endpoints: &[C],
        ctx: &PickContext<'_>,
        rng: &mut fastrand::Rng,
    ) -> Option<usize> {
        let Some(key) = ctx.hash_key else {
            return self.fallback.sample(rng, endpoints.len(), ctx, None);
        };
        let n = endpoints.len().min(self.len);
        let ring_len = self.points.len();
        if n == 0 || ring_len == 0 {
            return None;
        }
        let bound = self.factor.map(|c| {
            let total: u64 = endpoints[..n]
                .iter()
                .map(|e| u64::from(e.in_flight()))
                .sum();
            (c * (total as f64 + 1.0) / n as f64).ceil()
        });
        // Keys are mixed too: callers' hashes may be weak (sequential ids).
        let start = self.points.partition_point(|&p| p < mix64(key));
        let mut first_allowed = None;
        for step in 0..ring_len {
            let owner = self.owners[(start + step) % ring_len] as usize;
            if owner >= n || ctx.excludes(owner) {
                continue;
            }
            let Some(bound) = bound else {
                return Some(owner);
            };
            first_allowed.get_or_insert(owner);
            if f64::from(endpoints[owner].in_flight()) < bound {
                return Some(owner);
            }
        }
        first_allowed
    }
}

/// `SplitMix64`'s finalizer: a bijective 64-bit mixer with full avalanche.
fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Ring position of virtual node `replica` of the endpoint `identity`.
/// Mixing the identity first decorrelates endpoints whose identity hashes
/// are close; the golden-ratio multiply spreads replica indices across all
/// bits before the final mix.
fn point(identity: u64, replica: u64) -> u64 {
    mix64(mix64(identity) ^ replica.wrapping_mul(0x9e37_79b9_7f4a_7c15))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // In tests a failed unwrap is a failed assertion.
mod tests {
    use super::super::test_support::{TestEndpoint, endpoints, shares};
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;

    fn keyed(key: u64) -> PickContext<'static> {
        PickContext {
            hash_key: Some(key),
            exclude: &[],
        }
    }

    /// Endpoints with random distinct identities.
    fn with_ids(weights: &[u32], rng: &mut fastrand::Rng) -> Vec<TestEndpoint> {
        let mut eps = endpoints(weights);
        for e in &mut eps {
            e.id = rng.u64(..);
        }
        eps
    }

    /// key -> identity of the endpoint it maps to.
    fn mapping(eps: &[TestEndpoint], keys: u64) -> HashMap<u64, u64> {
        let h = ConsistentHash::new(eps, 1.25);
        let mut rng = fastrand::Rng::with_seed(0);
        (0..keys)
            .map(|k| {
                let i = h.pick(eps, &keyed(k), &mut rng).unwrap();
                (k, eps[i].id)
            })
            .collect()
    }

    #[test]
    fn ring_size_follows_weight_and_cap() {
        let h = ConsistentHash::new(&endpoints(&[1, 3]), 1.25);
        assert_eq!(h.points.len(), 4 * 160);
        assert_eq!(h.owners.iter().filter(|&&o| o == 1).count(), 3 * 160);
        assert!(h.points.windows(2).all(|w| w[0] <= w[1]));
        let big = ConsistentHash::new(&endpoints(&[10_000, 1]), 1.25);
        assert!(big.points.len() as u64 <= MAX_RING_POINTS + 1);
        assert!(big.owners.contains(&1), "light endpoint keeps a point");
    }

    #[test]
    fn key_lands_on_first_point_clockwise() {
        let eps = endpoints(&[1, 1, 1]);
        let h = ConsistentHash::new(&eps, 0.0);
        let mut rng = fastrand::Rng::with_seed(30);
        for key in 0..200u64 {
            let kp = mix64(key);
            let want = h
                .points
                .iter()
                .position(|&p| p >= kp)
                .map_or(h.owners[0], |i| h.owners[i]);
            assert_eq!(h.pick(&eps, &keyed(key), &mut rng), Some(want as usize));
        }
    }

    #[test]
    fn overloaded_primary_spills_like_an_exclusion() {
        let eps = endpoints(&[1; 5]);
        let h = ConsistentHash::new(&eps, 1.25);
        let mut rng = fastrand::Rng::with_seed(31);
        for key in 0..200u64 {
            let Some(primary) = h.pick(&eps, &keyed(key), &mut rng) else {
                panic!("no pick");
            };
            // Pile load on the primary: ceil(1.25 × 21 / 5) = 6 <= 20.
            let mut loaded = eps.clone();
            loaded[primary].in_flight = 20;
            let spilled = h.pick(&loaded, &keyed(key), &mut rng);
            let exclude = [primary];
            let ctx = PickContext {
                hash_key: Some(key),
                exclude: &exclude,
            };
            assert_ne!(spilled, Some(primary));
            assert_eq!(spilled, h.pick(&eps, &ctx, &mut rng));
        }
    }

    #[test]
    fn factor_below_one_disables_the_bound() {
        let mut eps = endpoints(&[1; 4]);
        for factor in [0.0, 0.99, f64::NAN] {
            let h = ConsistentHash::new(&eps, factor);
            let mut rng = fastrand::Rng::with_seed(32);
            let primary = h.pick(&eps, &keyed(42), &mut rng).unwrap();
            eps[primary].in_flight = 1_000;
            assert_eq!(h.pick(&eps, &keyed(42), &mut rng), Some(primary));
            eps[primary].in_flight = 0;
        }
    }

    #[test]
    fn all_allowed_overloaded_falls_back_to_first_allowed() {
        let mut eps = endpoints(&[1; 3]);
        let h = ConsistentHash::new(&eps, 1.0);
        let mut rng = fastrand::Rng::with_seed(33);
        // Excluding the idle endpoint leaves only overloaded ones.
        eps[0].in_flight = 30;
        eps[1].in_flight = 30;
        let ctx = PickContext {
            hash_key: Some(9),
            exclude: &[2],
        };
        let unbounded = ConsistentHash::new(&eps, 0.0);
        let want = unbounded.pick(&eps, &ctx, &mut rng);
        assert!(want.is_some());
        assert_eq!(h.pick(&eps, &ctx, &mut rng), want);
    }

    #[test]
    fn keyless_requests_are_weighted_random() {
        let eps = endpoints(&[1, 3]);
        let h = ConsistentHash::new(&eps, 1.25);
        let mut rng = fastrand::Rng::with_seed(34);
        let mut counts = [0u64; 2];
        for _ in 0..20_000 {
            counts[h.pick(&eps, &PickContext::default(), &mut rng).unwrap()] += 1;
        }
        assert!((shares(&counts)[1] - 0.75).abs() < 0.02, "{counts:?}");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        /// Unloaded, a key always maps to the same endpoint, whatever the
        /// RNG and whatever order the list was given in.
        #[test]
        fn same_key_same_endpoint(
            weights in prop::collection::vec(1u32..5, 1..12),
            seed in any::<u64>(),
        ) {
            let mut rng = fastrand::Rng::with_seed(seed);
            let eps = with_ids(&weights, &mut rng);
            let before = mapping(&eps, 2_000);
            let mut shuffled = eps;
            rng.shuffle(&mut shuffled);
            let h = ConsistentHash::new(&shuffled, 1.25);
            for k in 0..2_000u64 {
                let i = h.pick(&shuffled, &keyed(k), &mut rng).unwrap();
                prop_assert_eq!(shuffled[i].id, before[&k]);
            }
        }

        /// Removing one endpoint remaps exactly the keys that were on it, and
        /// those are about its weight share of all keys.
        #[test]
        fn removal_remaps_only_its_keys(
            weights in prop::collection::vec(1u32..4, 3..16),
            victim in any::<prop::sample::Index>(),
            seed in any::<u64>(),
        ) {
            let mut rng = fastrand::Rng::with_seed(seed);
            let eps = with_ids(&weights, &mut rng);
            let keys = 20_000u64;
            let before = mapping(&eps, keys);
            let v = victim.index(eps.len());
            let gone = eps[v].id;
            let mut rest = eps;
            rest.remove(v);
            let after = mapping(&rest, keys);
            let mut moved = 0u64;
            for k in 0..keys {
                if before[&k] == gone {
                    moved += 1;
                } else {
                    prop_assert_eq!(before[&k], after[&k], "key {} moved off a surviving endpoint", k);
                }
            }
            let total: u32 = weights.iter().sum();
            let want = f64::from(weights[v]) / f64::from(total);
            let got = moved as f64 / keys as f64;
            prop_assert!((got - want).abs() < 0.4 * want, "moved {} want ~{}", got, want);
        }

        /// Keys are spread roughly by weight.
        #[test]
        fn keys_spread_by_weight(
            weights in prop::collection::vec(1u32..5, 2..10),
            seed in any::<u64>(),
        ) {
            let mut rng = fastrand::Rng::with_seed(seed);
            let eps = with_ids(&weights, &mut rng);
            let h = ConsistentHash::new(&eps, 1.25);
            let mut counts = vec![0u64; eps.len()];
            for _ in 0..20_000 {
                counts[h.pick(&eps, &keyed(rng.u64(..)), &mut rng).unwrap()] += 1;
            }
            let total: u32 = weights.iter().sum();
            for (i, s) in shares(&counts).into_iter().enumerate() {
                let want = f64::from(weights[i]) / f64::from(total);
                prop_assert!((s - want).abs() < 0.4 * want, "endpoint {} share {} want {}", i, s, want);
            }
        }

        /// Bounded load: simulate arrivals (random keys, some of them hot)
        /// and departures; every assignment leaves the chosen endpoint at or
        /// under ceil(c · (T + 1) / n), and while only arrivals happen no
        /// endpoint ever exceeds ceil(c · T / n).
        #[test]
        fn bounded_load_is_never_exceeded(
            n in 2usize..12,
            factor in 1.0f64..2.0,
            hot_keys in 1u64..4,
            seed in any::<u64>(),
        ) {
            let mut rng = fastrand::Rng::with_seed(seed);
            let mut eps = with_ids(&vec![1; n], &mut rng);
            let h = ConsistentHash::new(&eps, factor);
            let cap = |total: u32| (factor * f64::from(total) / n as f64).ceil();
            let mut arrivals_only = true;
            for step in 0..3_000 {
                // First 500 steps: arrivals only. Then mix in departures.
                if step >= 500 && rng.bool() {
                    arrivals_only = false;
                    let busy: Vec<usize> = (0..n).filter(|&i| eps[i].in_flight > 0).collect();
                    if !busy.is_empty() {
                        eps[busy[rng.usize(0..busy.len())]].in_flight -= 1;
                    }
                    continue;
                }
                // Half the traffic on a few hot keys to stress the bound.
                let key = if rng.bool() { rng.u64(0..hot_keys) } else { rng.u64(..) };
                let total: u32 = eps.iter().map(|e| e.in_flight).sum();
                let i = h.pick(&eps, &keyed(key), &mut rng).ok_or_else(|| TestCaseError::fail("None"))?;
                eps[i].in_flight += 1;
                prop_assert!(f64::from(eps[i].in_flight) <= cap(total + 1));
                if arrivals_only {
                    for e in &eps {
                        prop_assert!(f64::from(e.in_flight) <= cap(total + 1));
                    }
                }
            }
        }
    }
}
