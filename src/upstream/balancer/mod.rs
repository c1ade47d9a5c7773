//! Load-balancing algorithms: given an upstream's endpoint list, pick one.
//!
//! Owns: the [`Balancer`] enum and its per-algorithm state, the [`Candidate`]
//! trait (what a balancer may read of an endpoint) and [`PickContext`]
//! (per-request inputs: hash key, endpoints already tried).
//!
//! Does not own: the endpoint list itself, health (callers pass only the
//! endpoints they consider eligible), retries (callers fill
//! [`PickContext::exclude`]), or the live stats behind [`Candidate`] (see
//! `upstream::stats`).
//!
//! A `Balancer` is built for one immutable endpoint list and is shared by all
//! worker threads (`Send + Sync`; `pick` takes `&self`). When the list
//! changes, callers build a new one. Weights are snapshotted by
//! [`Balancer::new`] for the algorithms whose state is built from them
//! (round robin, weighted sampling, the hash ring); the P2C cost functions
//! read [`Candidate::weight`] live.
//!
//! `pick` must receive the same list the balancer was built for. Passing a
//! list of another length is a caller bug, but it never panics: indices the
//! list lacks are treated as excluded, extra entries are never chosen.

pub mod hash;
pub mod least_request;
pub mod peak_ewma;
pub mod random;
pub mod round_robin;

use std::time::Instant;

pub use hash::ConsistentHash;
pub use least_request::LeastRequest;
pub use peak_ewma::PeakEwma;
pub use random::Random;
pub use round_robin::RoundRobin;

/// Which algorithm a [`Balancer`] runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BalanceKind {
    /// Smooth weighted round robin (nginx).
    RoundRobin,
    /// Power of two choices on in-flight requests, weight-aware.
    LeastRequest,
    /// Power of two choices on peak-EWMA latency × load (Finagle, linkerd).
    PeakEwma,
    /// Weighted random.
    Random,
    /// Consistent hashing with bounded loads.
    Hash,
}

/// What a balancer may read of an endpoint.
pub trait Candidate {
    /// Relative weight, >= 1 (a 0 is treated as 1).
    fn weight(&self) -> u32;
    /// Requests in flight to this endpoint right now.
    fn in_flight(&self) -> u32;
    /// Peak-EWMA latency estimate at `now`, NOT multiplied by load. Any unit
    /// works as long as every endpoint uses the same one;
    /// `EndpointStats::load_cost` returns nanoseconds.
    fn load_cost(&self, now: Instant) -> f64;
    /// Stable hash of the endpoint's identity (e.g. its address), used to
    /// place it on the consistent-hash ring. Must not change across rebuilds
    /// or keys get remapped.
    fn identity_hash(&self) -> u64;
}

/// Lets callers pass `&[Arc<Endpoint>]` or `&[&Endpoint]` directly.
impl<T: Candidate + ?Sized> Candidate for std::sync::Arc<T> {
    fn weight(&self) -> u32 {
        (**self).weight()
    }
    fn in_flight(&self) -> u32 {
        (**self).in_flight()
    }
    fn load_cost(&self, now: Instant) -> f64 {
        (**self).load_cost(now)
    }
    fn identity_hash(&self) -> u64 {
        (**self).identity_hash()
    }
}

impl<T: Candidate + ?Sized> Candidate for &T {
    fn weight(&self) -> u32 {
        (**self).weight()
    }
    fn in_flight(&self) -> u32 {
        (**self).in_flight()
    }
    fn load_cost(&self, now: Instant) -> f64 {
        (**self).load_cost(now)
    }
    fn identity_hash(&self) -> u64 {
        (**self).identity_hash()
    }
}

/// Per-request inputs to [`Balancer::pick`].
#[derive(Debug, Clone, Copy, Default)]
pub struct PickContext<'a> {
    /// For `Hash`: the request's key hash; `None` => behave like `Random`.
    /// Ignored by the other algorithms.
    pub hash_key: Option<u64>,
    /// Indices already tried for this request: never picked; when nothing
    /// else is left, `pick` returns `None`.
    pub exclude: &'a [usize],
}

impl PickContext<'_> {
    /// Whether `index` must not be picked. `exclude` holds the handful of
    /// endpoints one request has already tried, so a linear scan beats any
    /// set structure.
    fn excludes(&self, index: usize) -> bool {
        self.exclude.contains(&index)
    }
}

/// A load balancer built for one endpoint list.
// No `derive(Debug)`: `upstream::cluster` implements a terse one (the ring
// and round-robin state are noise in a `Members` dump).
pub enum Balancer {
    /// See [`RoundRobin`].
    RoundRobin(RoundRobin),
    /// See [`LeastRequest`].
    LeastRequest(LeastRequest),
    /// See [`PeakEwma`].
    PeakEwma(PeakEwma),
    /// See [`Random`].
    Random(Random),
    /// See [`ConsistentHash`].
    Hash(ConsistentHash),
}

impl Balancer {
    /// Builds the balancer's state for this endpoint list (the list is
    /// immutable for the balancer's life; when it changes the caller builds a
    /// new Balancer). `hash_balance_factor` only matters for
    /// [`BalanceKind::Hash`]: see [`ConsistentHash::new`].
    pub fn new<C: Candidate>(kind: BalanceKind, endpoints: &[C], hash_balance_factor: f64) -> Self {
        match kind {
            BalanceKind::RoundRobin => Self::RoundRobin(RoundRobin::new(endpoints)),
            BalanceKind::LeastRequest => Self::LeastRequest(LeastRequest::new(endpoints)),
            BalanceKind::PeakEwma => Self::PeakEwma(PeakEwma::new(endpoints)),
            BalanceKind::Random => Self::Random(Random::new(endpoints)),
            BalanceKind::Hash => Self::Hash(ConsistentHash::new(endpoints, hash_balance_factor)),
        }
    }

    /// Which algorithm this is.
    pub fn kind(&self) -> BalanceKind {
        match self {
            Self::RoundRobin(_) => BalanceKind::RoundRobin,
            Self::LeastRequest(_) => BalanceKind::LeastRequest,
            Self::PeakEwma(_) => BalanceKind::PeakEwma,
            Self::Random(_) => BalanceKind::Random,
            Self::Hash(_) => BalanceKind::Hash,
        }
    }

    /// Index of the chosen endpoint, or None when every endpoint is excluded
    /// or the list is empty.
    pub fn pick<C: Candidate>(
        &self,
        endpoints: &[C],
        ctx: &PickContext<'_>,
        now: Instant,
        rng: &mut fastrand::Rng,
    ) -> Option<usize> {
        match self {
            Self::RoundRobin(b) => b.pick(endpoints.len(), ctx),
            Self::LeastRequest(b) => b.pick(endpoints, ctx, rng),
            Self::PeakEwma(b) => b.pick(endpoints, ctx, now, rng),
            Self::Random(b) => b.pick(endpoints.len(), ctx, rng),
            Self::Hash(b) => b.pick(endpoints, ctx, rng),
        }
    }
}

/// A weight as the algorithms use it: the trait promises >= 1, and a 0 would
/// otherwise divide by zero or make an endpoint unreachable by accident.
fn weight_of<C: Candidate>(c: &C) -> u32 {
    c.weight().max(1)
}

/// How many times [`WeightedSampler::sample`] redraws after hitting a
/// disallowed index before switching to an exact O(n) draw. Exclusions are
/// rare (retries only) and few, so almost every pick succeeds on try one.
const REJECTION_TRIES: usize = 4;

/// Weighted index sampler over a weight snapshot, shared by `Random`, the
/// P2C balancers and `Hash`'s keyless fallback.
#[derive(Debug, Clone)]
struct WeightedSampler {
    /// Each endpoint's weight (>= 1) at build time.
    weights: Vec<u32>,
    /// Running sums of `weights` (`cumulative[i] = w[0] + ... + w[i]`);
    /// empty when all weights are equal, which selects the uniform fast path.
    cumulative: Vec<u64>,
}

impl WeightedSampler {
    fn new<C: Candidate>(endpoints: &[C]) -> Self {
        let weights: Vec<u32> = endpoints.iter().map(weight_of).collect();
        let uniform = weights.windows(2).all(|w| w[0] == w[1]);
        let cumulative = if uniform {
            Vec::new()
        } else {
            weights
                .iter()
                .scan(0u64, |acc, &w| {
                    *acc += u64::from(w);
                    Some(*acc)
                })
                .collect()
        };
        Self {
            weights,
            cumulative,
        }
    }

    /// Whether all weights are equal.
    fn is_uniform(&self) -> bool {
        self.cumulative.is_empty()
    }

    /// One weighted draw over all indices, ignoring exclusions.
    /// Precondition: `weights` is non-empty.
    fn draw(&self, rng: &mut fastrand::Rng) -> usize {
        match self.cumulative.last() {
            None => rng.usize(0..self.weights.len()),
            Some(&total) => {
                let r = rng.u64(0..total);
                // First running sum strictly above `r`: always < len because
                // the last one is `total > r`.
                self.cumulative.partition_point(|&c| c <= r)
            }
        }
    }

    /// A weighted draw among indices `< limit` that `ctx` does not exclude
    /// and that are not `also` (the P2C's first choice), or `None` when no
    /// index qualifies. Exact: rejection sampling is conditioned on
    /// acceptance, and the fallback draws exactly from the allowed set.
    fn sample(
        &self,
        rng: &mut fastrand::Rng,
        limit: usize,
        ctx: &PickContext<'_>,
        also: Option<usize>,
    ) -> Option<usize> {
        let n = self.weights.len().min(limit);
        if n == 0 {
            return None;
        }
        let allowed = |i: usize| i < n && Some(i) != also && !ctx.excludes(i);
        for _ in 0..REJECTION_TRIES {
            let i = self.draw(rng);
            if allowed(i) {
                return Some(i);
            }
        }
        let total: u64 = (0..n)
            .filter(|&i| allowed(i))
            .map(|i| u64::from(self.weights[i]))
            .sum();
        if total == 0 {
            return None;
        }
        let mut r = rng.u64(0..total);
        for i in (0..n).filter(|&i| allowed(i)) {
            let w = u64::from(self.weights[i]);
            if r < w {
                return Some(i);
            }
            r -= w;
        }
        None
    }

    /// Two distinct allowed indices for power-of-two-choices: `None` when
    /// none is allowed, `(a, None)` when only one is.
    fn sample_two(
        &self,
        rng: &mut fastrand::Rng,
        limit: usize,
        ctx: &PickContext<'_>,
    ) -> Option<(usize, Option<usize>)> {
        let n = self.weights.len();
        if self.is_uniform() && ctx.exclude.is_empty() && limit >= n && n >= 2 {
            // Common case: two distinct uniform draws, no rejection loop.
            let a = rng.usize(0..n);
            let b = rng.usize(0..n - 1);
            return Some((a, Some(if b >= a { b + 1 } else { b })));
        }
        let a = self.sample(rng, limit, ctx, None)?;
        if n.min(limit) == 1 {
            // Nothing else exists; skip the doomed rejection loop.
            return Some((a, None));
        }
        Some((a, self.sample(rng, limit, ctx, Some(a))))
    }
}

#[cfg(test)]
pub(crate) mod test_support {
    //! A plain `Candidate` for the balancer tests.

    use super::Candidate;
    use std::time::Instant;

    #[derive(Debug, Clone)]
    pub struct TestEndpoint {
        pub weight: u32,
        pub in_flight: u32,
        /// Load cost in arbitrary units.
        pub cost: f64,
        pub id: u64,
    }

    impl TestEndpoint {
        pub fn new(id: u64, weight: u32) -> Self {
            Self {
                weight,
                in_flight: 0,
                cost: 1.0,
                id,
            }
        }
    }

    impl Candidate for TestEndpoint {
        fn weight(&self) -> u32 {
            self.weight
        }
        fn in_flight(&self) -> u32 {
            self.in_flight
        }
        fn load_cost(&self, _now: Instant) -> f64 {
            self.cost
        }
        fn identity_hash(&self) -> u64 {
            // Deliberately weak (sequential ids): the ring must mix it.
            self.id
        }
    }

    pub fn endpoints(weights: &[u32]) -> Vec<TestEndpoint> {
        weights
            .iter()
            .enumerate()
            .map(|(i, &w)| TestEndpoint::new(i as u64, w))
            .collect()
    }

    /// Closed-loop load simulation: keeps `concurrency` requests in flight;
    /// each step completes one in-flight request chosen uniformly (so an
    /// endpoint finishes work in proportion to what it holds, i.e. equal
    /// service rates) and picks an endpoint for a new one. Returns how many
    /// picks each endpoint got.
    pub fn closed_loop(
        eps: &mut [TestEndpoint],
        concurrency: u32,
        steps: usize,
        rng: &mut fastrand::Rng,
        mut pick: impl FnMut(&[TestEndpoint], &mut fastrand::Rng) -> usize,
    ) -> Vec<u64> {
        let mut counts = vec![0u64; eps.len()];
        for _ in 0..concurrency {
            let i = pick(eps, rng);
            eps[i].in_flight += 1;
        }
        for _ in 0..steps {
            let total: u32 = eps.iter().map(|e| e.in_flight).sum();
            let mut r = rng.u32(0..total);
            for e in eps.iter_mut() {
                if r < e.in_flight {
                    e.in_flight -= 1;
                    break;
                }
                r -= e.in_flight;
            }
            let i = pick(eps, rng);
            eps[i].in_flight += 1;
            counts[i] += 1;
        }
        counts
    }

    /// Per-index pick shares over `picks` draws.
    pub fn shares(counts: &[u64]) -> Vec<f64> {
        let total: u64 = counts.iter().sum();
        counts.iter().map(|&c| c as f64 / total as f64).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::test_support::*;
    use super::*;
    use proptest::prelude::*;

    const ALL_KINDS: [BalanceKind; 5] = [
        BalanceKind::RoundRobin,
        BalanceKind::LeastRequest,
        BalanceKind::PeakEwma,
        BalanceKind::Random,
        BalanceKind::Hash,
    ];

    #[test]
    fn balancer_is_send_and_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Balancer>();
    }

    #[test]
    fn kind_round_trips() {
        let eps = endpoints(&[1, 2]);
        for kind in ALL_KINDS {
            assert_eq!(Balancer::new(kind, &eps, 1.25).kind(), kind);
        }
    }

    #[test]
    fn arc_and_ref_lists_pick_like_the_owned_list() {
        let eps = endpoints(&[1, 2, 3]);
        let arcs: Vec<std::sync::Arc<TestEndpoint>> =
            eps.iter().cloned().map(std::sync::Arc::new).collect();
        let refs: Vec<&TestEndpoint> = eps.iter().collect();
        for kind in ALL_KINDS {
            let (a, b, c) = (
                Balancer::new(kind, &eps, 1.25),
                Balancer::new(kind, &arcs, 1.25),
                Balancer::new(kind, &refs, 1.25),
            );
            let (mut r1, mut r2, mut r3) = (
                fastrand::Rng::with_seed(9),
                fastrand::Rng::with_seed(9),
                fastrand::Rng::with_seed(9),
            );
            let now = Instant::now();
            for k in 0..50u64 {
                let ctx = PickContext {
                    hash_key: Some(k),
                    exclude: &[],
                };
                let want = a.pick(&eps, &ctx, now, &mut r1);
                assert_eq!(b.pick(&arcs, &ctx, now, &mut r2), want, "{kind:?}");
                assert_eq!(c.pick(&refs, &ctx, now, &mut r3), want, "{kind:?}");
            }
        }
    }

    #[test]
    fn empty_list_picks_none() {
        let eps: Vec<TestEndpoint> = Vec::new();
        let mut rng = fastrand::Rng::with_seed(1);
        for kind in ALL_KINDS {
            let b = Balancer::new(kind, &eps, 1.25);
            for key in [None, Some(7)] {
                let ctx = PickContext {
                    hash_key: key,
                    exclude: &[],
                };
                assert_eq!(
                    b.pick(&eps, &ctx, Instant::now(), &mut rng),
                    None,
                    "{kind:?}"
                );
            }
        }
    }

    #[test]
    fn single_endpoint_is_always_picked() {
        let eps = endpoints(&[3]);
        let mut rng = fastrand::Rng::with_seed(2);
        for kind in ALL_KINDS {
            let b = Balancer::new(kind, &eps, 1.25);
            for _ in 0..10 {
                let ctx = PickContext {
                    hash_key: Some(rng.u64(..)),
                    exclude: &[],
                };
                assert_eq!(
                    b.pick(&eps, &ctx, Instant::now(), &mut rng),
                    Some(0),
                    "{kind:?}"
                );
            }
        }
    }

    #[test]
    fn shorter_list_than_built_for_never_panics_or_overflows() {
        let built = endpoints(&[1, 2, 3, 4]);
        let passed = endpoints(&[1, 2]);
        let mut rng = fastrand::Rng::with_seed(3);
        for kind in ALL_KINDS {
            let b = Balancer::new(kind, &built, 1.25);
            for i in 0..200u64 {
                let ctx = PickContext {
                    hash_key: Some(i),
                    exclude: &[],
                };
                let got = b.pick(&passed, &ctx, Instant::now(), &mut rng);
                assert!(matches!(got, Some(0 | 1)), "{kind:?} {got:?}");
            }
        }
    }

    #[test]
    fn zero_weight_is_treated_as_one() {
        let eps = endpoints(&[0, 0]);
        let mut rng = fastrand::Rng::with_seed(4);
        for kind in ALL_KINDS {
            let b = Balancer::new(kind, &eps, 1.25);
            let mut seen = [false; 2];
            for i in 0..200u64 {
                let ctx = PickContext {
                    hash_key: Some(i),
                    exclude: &[],
                };
                if let Some(p) = b.pick(&eps, &ctx, Instant::now(), &mut rng) {
                    seen[p] = true;
                }
            }
            assert_eq!(seen, [true, true], "{kind:?}");
        }
    }

    #[test]
    fn sampler_is_exact_with_exclusions() {
        let eps = endpoints(&[1, 2, 3, 4]);
        let s = WeightedSampler::new(&eps);
        let mut rng = fastrand::Rng::with_seed(5);
        let ctx = PickContext {
            hash_key: None,
            exclude: &[3],
        };
        let mut counts = [0u64; 4];
        for _ in 0..60_000 {
            if let Some(i) = s.sample(&mut rng, 4, &ctx, None) {
                counts[i] += 1;
            }
        }
        assert_eq!(counts[3], 0);
        let sh = shares(&counts);
        for (i, want) in [1.0 / 6.0, 2.0 / 6.0, 3.0 / 6.0].iter().enumerate() {
            assert!((sh[i] - want).abs() < 0.015, "{sh:?}");
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Every algorithm honours exclusions and returns None exactly when
        /// everything is excluded.
        #[test]
        fn exclusions_are_honoured(
            weights in prop::collection::vec(1u32..10, 1..10),
            excl_mask in any::<u16>(),
            seed in any::<u64>(),
            loads in prop::collection::vec(0u32..20, 10),
        ) {
            let mut eps = endpoints(&weights);
            for (e, l) in eps.iter_mut().zip(&loads) {
                e.in_flight = *l;
            }
            let n = eps.len();
            let exclude: Vec<usize> = (0..n).filter(|i| excl_mask & (1 << i) != 0).collect();
            let mut rng = fastrand::Rng::with_seed(seed);
            for kind in ALL_KINDS {
                let b = Balancer::new(kind, &eps, 1.25);
                for k in 0..30u64 {
                    let ctx = PickContext { hash_key: (k % 3 != 0).then_some(k), exclude: &exclude };
                    let got = b.pick(&eps, &ctx, Instant::now(), &mut rng);
                    if exclude.len() == n {
                        prop_assert_eq!(got, None, "{:?}", kind);
                    } else {
                        let i = got.ok_or_else(|| TestCaseError::fail(format!("{kind:?} picked None")))?;
                        prop_assert!(i < n && !exclude.contains(&i), "{:?} picked {}", kind, i);
                    }
                }
            }
        }
    }
}
