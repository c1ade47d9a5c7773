//! `LatencyHistogram`: a cluster's recent response-head latencies, cheap enough to feed from every
//! request, for the quantile a hedge waits (`hedge.delay = "p95"`).
//!
//! Log-linear buckets (four per power of two, from 16 µs to about 70 s: at most 19% error, plenty
//! for a delay) of relaxed atomic counters: recording is one `fetch_add`. "Recent" comes from
//! `decay`, which the cluster's health task calls every few seconds and which halves every count,
//! so old latencies fade instead of being forgotten at once.

use std::{
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

const SUB: u32 = 4;
const MIN_LOG2: u32 = 4; // 16 µs
const BUCKETS: usize = 96;

#[derive(Debug)]
pub struct LatencyHistogram {
    counts: [AtomicU64; BUCKETS],
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        Self {
            counts: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

/// Bucket of a latency in microseconds: `SUB` buckets per power of two above 2^MIN_LOG2.
fn bucket(us: u64) -> usize {
    let us = us.max(1 << MIN_LOG2);
    let log2 = 63 - us.leading_zeros();
    // The two bits below the leading one pick the sub-bucket.
    let frac = ((us >> (log2 - 2)) & 0b11) as u32;
    let i = (log2 - MIN_LOG2) * SUB + frac;
    (i as usize).min(BUCKETS - 1)
}

/// The upper bound of bucket `i`, in microseconds.
fn upper_us(i: usize) -> u64 {
    let i = i as u32;
    let log2 = i / SUB + MIN_LOG2;
    let frac = u64::from(i % SUB);
    // Bucket covers [(4 + frac) << (log2 - 2), (5 + frac) << (log2 - 2)).
    (5 + frac) << (log2 - 2)
}

impl LatencyHistogram {
    pub fn record(&self, d: Duration) {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        if let Some(c) = self.counts.get(bucket(us)) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The latency below which a fraction `q` of the recorded ones fall (the bucket's upper
    /// bound, so it errs long), or `None` with fewer than `min_samples` recorded.
    pub fn quantile(&self, q: f64, min_samples: u64) -> Option<Duration> {
        let counts: Vec<u64> = self
            .counts
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .collect();
        let total: u64 = counts.iter().sum();
        if total < min_samples.max(1) {
            return None;
        }
        // Rank of the quantile sample, 1-based; `q` is clamped so a bad value can't overrun.
        let rank = ((total as f64) * q.clamp(0.0, 1.0)).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, c) in counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return Some(Duration::from_micros(upper_us(i)));
            }
        }
        None
    }

    /// Halves every count: what was recorded long ago weighs less and less.
    pub fn decay(&self) {
        for c in &self.counts {
            // Not atomic as a whole; a record racing with this loses nothing that matters.
            let v = c.load(Ordering::Relaxed);
            c.store(v / 2, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn quantiles_of_a_known_mix() {
        let h = LatencyHistogram::default();
        for _ in 0..90 {
            h.record(Duration::from_millis(1));
        }
        for _ in 0..10 {
            h.record(Duration::from_millis(100));
        }
        let p50 = h.quantile(0.5, 1).unwrap();
        let p95 = h.quantile(0.95, 1).unwrap();
        assert!(
            p50 >= Duration::from_millis(1) && p50 < Duration::from_micros(1250),
            "{p50:?}"
        );
        assert!(
            p95 >= Duration::from_millis(100) && p95 < Duration::from_millis(125),
            "{p95:?}"
        );
        assert_eq!(h.quantile(0.5, 101), None, "too few samples");
    }

    #[test]
    fn decay_lets_recent_latencies_win() {
        let h = LatencyHistogram::default();
        for _ in 0..100 {
            h.record(Duration::from_millis(50));
        }
        for _ in 0..6 {
            h.decay();
        }
        for _ in 0..10 {
            h.record(Duration::from_millis(2));
        }
        assert!(h.quantile(0.5, 1).unwrap() < Duration::from_millis(3));
    }

    proptest! {
        /// Every latency lands in a bucket whose upper bound is at or above it and less than
        /// 25% above it (within the covered range).
        #[test]
        fn buckets_bound_their_latencies(us in 16u64..60_000_000) {
            let i = bucket(us);
            let up = upper_us(i);
            prop_assert!(up > us, "{} -> bucket {} up {}", us, i, up);
            prop_assert!(up as f64 <= us as f64 * 1.25 + 1.0, "{} -> {}", us, up);
        }
    }
}
