//! Micro-benchmarks of each balancer's `pick` at 8 and 64 endpoints.
//!
//! Owns: a bench-only `Candidate` backed by real `EndpointStats` (so
//! `PeakEwma` pays for the EWMA lock, and in-flight counts are live atomics)
//! with some load on it. Does not measure building balancers or anything on
//! the request path beyond `pick`.
//!
//! Run with `cargo bench --bench balancers`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use divan::{Bencher, black_box};
use palisade::upstream::balancer::{BalanceKind, Balancer, Candidate, PickContext};
use palisade::upstream::stats::{EndpointStats, InFlight};

fn main() {
    divan::main();
}

/// Endpoint counts every benchmark runs at.
const SIZES: [usize; 2] = [8, 64];

struct BenchEndpoint {
    weight: u32,
    id: u64,
    stats: Arc<EndpointStats>,
}

impl Candidate for BenchEndpoint {
    fn weight(&self) -> u32 {
        self.weight
    }
    fn in_flight(&self) -> u32 {
        self.stats.in_flight()
    }
    fn load_cost(&self, now: Instant) -> f64 {
        self.stats.load_cost(now)
    }
    fn identity_hash(&self) -> u64 {
        self.id
    }
}

/// `n` endpoints with varied latency history and in-flight counts; weights
/// all 1 or cycling 1..=4. The guards keep the in-flight counts up for as
/// long as they live.
fn fixture(n: usize, weighted: bool, now: Instant) -> (Vec<BenchEndpoint>, Vec<InFlight>) {
    let mut guards = Vec::new();
    let eps = (0..n)
        .map(|i| {
            let stats = Arc::new(EndpointStats::new(now));
            stats.record_success(Duration::from_millis(5 + (i as u64 * 7) % 40), now);
            guards.extend((0..i % 5).map(|_| stats.start()));
            BenchEndpoint {
                weight: if weighted { 1 + (i as u32 % 4) } else { 1 },
                id: (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15),
                stats,
            }
        })
        .collect();
    (eps, guards)
}

fn bench_pick(bencher: Bencher, kind: BalanceKind, n: usize, weighted: bool, keyed: bool) {
    let now = Instant::now();
    let (eps, _guards) = fixture(n, weighted, now);
    let balancer = Balancer::new(kind, &eps, 1.25);
    let mut rng = fastrand::Rng::with_seed(0x5eed);
    let mut key = 0u64;
    bencher.bench_local(|| {
        key = key.wrapping_add(1);
        let ctx = PickContext {
            hash_key: keyed.then_some(key),
            exclude: &[],
        };
        black_box(balancer.pick(black_box(&eps), &ctx, now, &mut rng))
    });
}

#[divan::bench(args = SIZES)]
fn round_robin(bencher: Bencher, n: usize) {
    bench_pick(bencher, BalanceKind::RoundRobin, n, false, false);
}

#[divan::bench(args = SIZES)]
fn round_robin_weighted(bencher: Bencher, n: usize) {
    bench_pick(bencher, BalanceKind::RoundRobin, n, true, false);
}

#[divan::bench(args = SIZES)]
fn least_request(bencher: Bencher, n: usize) {
    bench_pick(bencher, BalanceKind::LeastRequest, n, true, false);
}

#[divan::bench(args = SIZES)]
fn peak_ewma(bencher: Bencher, n: usize) {
    bench_pick(bencher, BalanceKind::PeakEwma, n, true, false);
}

#[divan::bench(args = SIZES)]
fn random(bencher: Bencher, n: usize) {
    bench_pick(bencher, BalanceKind::Random, n, true, false);
}

#[divan::bench(args = SIZES)]
fn hash_bounded(bencher: Bencher, n: usize) {
    bench_pick(bencher, BalanceKind::Hash, n, true, true);
}

/// A retry: one endpoint already tried, so keys that land on it walk on.
#[divan::bench(args = SIZES)]
fn hash_with_exclusion(bencher: Bencher, n: usize) {
    let now = Instant::now();
    let (eps, _guards) = fixture(n, true, now);
    let balancer = Balancer::new(BalanceKind::Hash, &eps, 1.25);
    let mut rng = fastrand::Rng::with_seed(0x5eed);
    let mut key = 0u64;
    bencher.bench_local(|| {
        key = key.wrapping_add(1);
        let ctx = PickContext {
            hash_key: Some(key),
            exclude: &[0],
        };
        black_box(balancer.pick(black_box(&eps), &ctx, now, &mut rng))
    });
}
