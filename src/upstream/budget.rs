//! `RetryBudget`: retries and hedges may be at most a share of a cluster's recent requests, plus a
//! small floor, so retries can never multiply an overload.
//!
//! The share is counted over a sliding window (ten one-second buckets) rather than over the
//! requests in flight at one instant (Envoy's form). Both bound a sustained retry rate the same
//! way (at 20%, an outage costs the upstreams at most 1.2× the load), but the concurrency form
//! starves the onset of an ordinary failure: when one endpoint of three starts failing, a third
//! of the requests in flight need a retry at the same moment, more than 20% allows, and those
//! clients get errors although two healthy endpoints are idle (measured: 4–8 client errors per
//! fault onset with `bench/faults.sh`). The window has the credit for that burst; a full outage
//! spends it in a moment and is then held to the share.
//!
//! The counters are relaxed atomics tagged with their second, so the request path pays one
//! `fetch_add` (and a load) per request; a rotation that races with a count may lose that count,
//! which a budget can afford. `now` is an explicit argument (seconds on the cluster's own clock).

use std::sync::atomic::{AtomicU64, Ordering};

/// Buckets, one second each: the window the share is measured over.
pub const WINDOW_SECS: u64 = 10;
const BUCKETS: usize = WINDOW_SECS as usize;

#[derive(Debug, Default)]
struct Bucket {
    /// The second this bucket counts, plus one (0 = never used).
    second: AtomicU64,
    requests: AtomicU64,
    retries: AtomicU64,
}

impl Bucket {
    /// This bucket, made current for `now` (cleared if it held an older second).
    fn at(&self, now: u64) -> &Self {
        let tag = now + 1;
        if self.second.load(Ordering::Acquire) != tag {
            // Whoever swaps the tag clears the counts; a racer sees the new tag and just counts.
            if self.second.swap(tag, Ordering::AcqRel) != tag {
                self.requests.store(0, Ordering::Relaxed);
                self.retries.store(0, Ordering::Relaxed);
            }
        }
        self
    }

    /// The counts, if this bucket is within the window ending at `now`.
    fn counts(&self, now: u64) -> (u64, u64) {
        let tag = self.second.load(Ordering::Acquire);
        if tag == 0 || tag + WINDOW_SECS <= now + 1 {
            return (0, 0);
        }
        (
            self.requests.load(Ordering::Relaxed),
            self.retries.load(Ordering::Relaxed),
        )
    }
}

#[derive(Debug)]
pub struct RetryBudget {
    /// Retries allowed per 100 requests in the window.
    pub percent: u32,
    /// Retries allowed per second whatever the traffic (so a quiet cluster can retry at all).
    pub min_per_second: u32,
    buckets: [Bucket; BUCKETS],
}

impl RetryBudget {
    pub fn new(percent: u32, min_per_second: u32) -> Self {
        Self {
            percent,
            min_per_second,
            buckets: Default::default(),
        }
    }

    fn bucket(&self, now: u64) -> &Bucket {
        // `now % BUCKETS` is below BUCKETS: the index is always in range.
        &self.buckets[(now % WINDOW_SECS) as usize]
    }

    /// Counts one request (a first attempt) at `now`.
    pub fn request(&self, now: u64) {
        self.bucket(now)
            .at(now)
            .requests
            .fetch_add(1, Ordering::Relaxed);
    }

    /// Takes budget for one retry or hedge at `now`, if the window has room: retries so far
    /// (this one included) at most `percent` of the requests plus `min_per_second` × the window.
    pub fn try_retry(&self, now: u64) -> bool {
        // Take the retry first, then check: with a check before the take, two threads could both
        // see one retry left and both take it (the budget went over by one under load).
        let bucket = self.bucket(now).at(now);
        bucket.retries.fetch_add(1, Ordering::AcqRel);
        let (requests, retries) = self
            .buckets
            .iter()
            .map(|b| b.counts(now))
            .fold((0, 0), |(r, t), (r2, t2)| (r + r2, t + t2));
        let allowed = requests.saturating_mul(u64::from(self.percent)) / 100
            + u64::from(self.min_per_second) * WINDOW_SECS;
        if retries > allowed {
            // Give it back (never below zero, should the bucket have been reset meanwhile).
            let _ = bucket
                .retries
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| v.checked_sub(1));
            return false;
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn concurrent_retries_never_exceed_the_budget() {
        let budget = std::sync::Arc::new(RetryBudget::new(0, 1));
        let taken: u64 = (0..8)
            .map(|_| {
                let b = std::sync::Arc::clone(&budget);
                std::thread::spawn(move || (0..2000).filter(|_| b.try_retry(5)).count() as u64)
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|h| h.join().unwrap())
            .sum();
        assert!((1..=WINDOW_SECS).contains(&taken), "{taken} retries taken");
    }

    #[test]
    fn retries_follow_the_share_of_recent_requests() {
        let b = RetryBudget::new(20, 0);
        for _ in 0..100 {
            b.request(5);
        }
        let granted = (0..50).filter(|_| b.try_retry(5)).count();
        assert_eq!(granted, 20);
    }

    #[test]
    fn the_floor_lets_a_quiet_cluster_retry() {
        let b = RetryBudget::new(20, 1);
        assert_eq!((0..50).filter(|_| b.try_retry(0)).count(), 10);
    }

    #[test]
    fn old_requests_leave_the_window() {
        let b = RetryBudget::new(50, 0);
        for _ in 0..10 {
            b.request(0);
        }
        assert!(b.try_retry(9), "still in the window");
        assert!(!b.try_retry(10), "second 0 has left a window ending at 10");
        // Four new requests allow two retries, one of which (at 9) is still in the window.
        for _ in 0..4 {
            b.request(10);
        }
        assert!(b.try_retry(10));
        assert!(!b.try_retry(10));
    }

    #[test]
    fn a_burst_after_steady_traffic_has_credit() {
        // 1000 requests/s for 5 s; then a third of one second's requests fail at once.
        let b = RetryBudget::new(20, 10);
        for s in 0..5 {
            for _ in 0..1000 {
                b.request(s);
            }
        }
        assert_eq!((0..333).filter(|_| b.try_retry(5)).count(), 333);
    }

    proptest! {
        /// In any run, retries granted within the window never exceed the share of requests in
        /// it plus the floor.
        #[test]
        fn grants_never_exceed_the_budget(
            percent in 0u32..=100,
            floor in 0u32..5,
            events in prop::collection::vec((0u64..40, prop::bool::weighted(0.6)), 0..400),
        ) {
            let b = RetryBudget::new(percent, floor);
            let mut events = events;
            events.sort_by_key(|e| e.0);
            let mut log: Vec<(u64, bool)> = Vec::new(); // (second, granted retry) / requests
            for (now, is_request) in events {
                if is_request {
                    b.request(now);
                    log.push((now, false));
                } else if b.try_retry(now) {
                    log.push((now, true));
                    let in_window = |&&(t, _): &&(u64, bool)| t + WINDOW_SECS > now;
                    let reqs = log.iter().filter(in_window).filter(|e| !e.1).count() as u64;
                    let rets = log.iter().filter(in_window).filter(|e| e.1).count() as u64;
                    prop_assert!(
                        rets <= reqs * u64::from(percent) / 100 + u64::from(floor) * WINDOW_SECS,
                        "{} retries for {} requests at {}", rets, reqs, now
                    );
                }
            }
        }
    }
}
