//! `Limits`: a cluster's concurrency caps and its retry budget (`budget.rs`), the "fail fast" half
//! of failure handling. A request over a cap is answered 503 at once instead of queueing behind a
//! struggling cluster (Envoy's circuit-breaker thresholds); a retry or hedge beyond the budget or
//! `max_retries` is simply not made, so retries can never multiply an overload. Upstream connections are capped too: a
//! request that needs a new connection when all are taken waits, as one of at most `max_pending`,
//! up to `queue_timeout` (HAProxy's `maxconn` + `maxqueue` + `timeout queue`).
//!
//! Each admission is a permit (a drop guard), so a cancelled request can never leak a count. The
//! counters are atomics updated with compare-and-swap loops: a cap is never exceeded even when
//! workers race for the last slot. Deciding *whether* a failure deserves a retry is
//! `upstream::retry`'s job; this module only says whether one may be made now.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU32, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::budget::RetryBudget;

use crate::config::{LimitsConfig, RetryBudgetConfig};

/// Why an admission was refused (the access-log flag and the metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overflow {
    /// `limits.max_requests`.
    Requests,
    /// `limits.max_retries`.
    Retries,
    /// The retry budget (`retry_budget.percent` of recent requests).
    Budget,
    /// `limits.max_pending`: too many requests already wait for a connection.
    Pending,
    /// `limits.queue_timeout`: no connection became free in time.
    QueueTimeout,
    /// `adaptive_concurrency`: its queue is full (or would not drain in time).
    AdaptiveQueueFull,
    /// `adaptive_concurrency.queue_timeout`: no slot became free in time.
    AdaptiveQueueTimeout,
    /// `adaptive_concurrency`: a higher-priority request took this one's place in the queue.
    AdaptiveEvicted,
}

impl Overflow {
    /// The error answered (503 at once), counted in the cluster's metrics.
    pub fn error(self, cluster: &str) -> crate::error::ProxyError {
        crate::metrics::limit_overflow(cluster, self.as_str());
        crate::error::ProxyError::Overflow(self.as_str())
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Requests => "max_requests",
            Self::Retries => "max_retries",
            Self::Budget => "retry_budget",
            Self::Pending => "max_pending",
            Self::QueueTimeout => "queue_timeout",
            Self::AdaptiveQueueFull => "adaptive_queue_full",
            Self::AdaptiveQueueTimeout => "adaptive_queue_timeout",
            Self::AdaptiveEvicted => "adaptive_evicted",
        }
    }
}

#[derive(Debug, Default)]
struct Live {
    requests: AtomicU32,
    retries: AtomicU32,
    /// Refusals since start, for `/clusters`.
    overflows: AtomicU64,
}

#[derive(Debug)]
pub struct Limits {
    pub max_requests: u32,
    pub max_retries: u32,
    pub budget: RetryBudget,
    /// The budget's clock starts here.
    epoch: Instant,
    pub max_connections: u32,
    pub max_pending: u32,
    pub queue_timeout: Duration,
    /// Per endpoint; 0 = only the cluster's cap.
    pub max_connections_per_endpoint: u32,
    connections: Arc<Semaphore>,
    pending: AtomicU32,
    live: Arc<Live>,
}

/// A connection's place under the caps; dropping it (the connection closed) frees the place.
#[derive(Debug)]
pub struct ConnSlot {
    _cluster: OwnedSemaphorePermit,
    _endpoint: Option<OwnedSemaphorePermit>,
}

/// One request waiting for a connection; dropping it leaves the queue.
#[derive(Debug)]
pub struct Waiting<'a> {
    pending: &'a AtomicU32,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.pending.fetch_sub(1, Ordering::AcqRel);
    }
}

/// One admitted request or retry; dropping it gives the slot back.
#[derive(Debug)]
#[must_use = "dropping the permit gives its slot back at once"]
pub struct Permit {
    live: Arc<Live>,
    retry: bool,
}

impl Drop for Permit {
    fn drop(&mut self) {
        let counter = if self.retry {
            &self.live.retries
        } else {
            &self.live.requests
        };
        counter.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Limits {
    pub fn new(limits: &LimitsConfig, budget: &RetryBudgetConfig) -> Self {
        Self {
            max_requests: limits.max_requests,
            max_retries: limits.max_retries,
            budget: RetryBudget::new(budget.percent, budget.min_per_second),
            epoch: Instant::now(),
            max_connections: limits.max_connections,
            max_pending: limits.max_pending,
            queue_timeout: limits.queue_timeout.get(),
            max_connections_per_endpoint: limits.max_connections_per_endpoint,
            connections: Arc::new(Semaphore::new(limits.max_connections as usize)),
            pending: AtomicU32::new(0),
            live: Arc::default(),
        }
    }

    /// A slot for a new connection now, if the cluster and `endpoint` (its own semaphore, when
    /// it has a cap) both have room.
    pub fn try_connection(&self, endpoint: Option<&Arc<Semaphore>>) -> Option<ConnSlot> {
        let ep = match endpoint {
            Some(s) => Some(Arc::clone(s).try_acquire_owned().ok()?),
            None => None,
        };
        let cluster = Arc::clone(&self.connections).try_acquire_owned().ok()?;
        Some(ConnSlot {
            _cluster: cluster,
            _endpoint: ep,
        })
    }

    /// Waits for a connection slot (cluster and endpoint), as long as the caller polls it.
    pub async fn connection(&self, endpoint: Option<&Arc<Semaphore>>) -> Option<ConnSlot> {
        let ep = match endpoint {
            Some(s) => Some(Arc::clone(s).acquire_owned().await.ok()?),
            None => None,
        };
        let cluster = Arc::clone(&self.connections).acquire_owned().await.ok()?;
        Some(ConnSlot {
            _cluster: cluster,
            _endpoint: ep,
        })
    }

    /// A place in the queue for a connection, unless `max_pending` requests already wait.
    pub fn wait(&self) -> Result<Waiting<'_>, Overflow> {
        if take(&self.pending, self.max_pending) {
            Ok(Waiting {
                pending: &self.pending,
            })
        } else {
            self.live.overflows.fetch_add(1, Ordering::Relaxed);
            Err(Overflow::Pending)
        }
    }

    /// Counts a request that waited `queue_timeout` in vain.
    pub fn queue_timed_out(&self) -> Overflow {
        self.live.overflows.fetch_add(1, Ordering::Relaxed);
        Overflow::QueueTimeout
    }

    /// Requests waiting for a connection now.
    pub fn pending(&self) -> u32 {
        self.pending.load(Ordering::Relaxed)
    }

    /// Upstream connections open now (HTTP/1.1; an HTTP/2 endpoint uses one connection).
    pub fn connections(&self) -> u32 {
        let free = u32::try_from(self.connections.available_permits()).unwrap_or(u32::MAX);
        self.max_connections.saturating_sub(free)
    }

    fn second(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.epoch).as_secs()
    }

    /// A slot for one request to the cluster, held until its response ends; it also counts
    /// towards the retry budget.
    pub fn admit_request(&self, now: Instant) -> Result<Permit, Overflow> {
        if take(&self.live.requests, self.max_requests) {
            self.budget.request(self.second(now));
            Ok(Permit {
                live: Arc::clone(&self.live),
                retry: false,
            })
        } else {
            self.live.overflows.fetch_add(1, Ordering::Relaxed);
            Err(Overflow::Requests)
        }
    }

    /// A slot for one retry or hedge: within `max_retries` in flight and the retry budget.
    pub fn admit_retry(&self, now: Instant) -> Result<Permit, Overflow> {
        if !take(&self.live.retries, self.max_retries) {
            self.live.overflows.fetch_add(1, Ordering::Relaxed);
            return Err(Overflow::Retries);
        }
        let permit = Permit {
            live: Arc::clone(&self.live),
            retry: true,
        };
        if self.budget.try_retry(self.second(now)) {
            Ok(permit)
        } else {
            self.live.overflows.fetch_add(1, Ordering::Relaxed);
            Err(Overflow::Budget)
        }
    }

    pub fn requests(&self) -> u32 {
        self.live.requests.load(Ordering::Relaxed)
    }

    pub fn retries(&self) -> u32 {
        self.live.retries.load(Ordering::Relaxed)
    }

    pub fn overflows(&self) -> u64 {
        self.live.overflows.load(Ordering::Relaxed)
    }
}

/// Increments `counter` unless it is already at `cap`.
fn take(counter: &AtomicU32, cap: u32) -> bool {
    counter
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
            (n < cap).then_some(n + 1)
        })
        .is_ok()
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn limits(max_requests: u32, max_retries: u32, percent: u32, min: u32) -> Limits {
        Limits::new(
            &LimitsConfig {
                max_requests,
                max_retries,
                ..LimitsConfig::default()
            },
            &RetryBudgetConfig {
                percent,
                min_per_second: min,
            },
        )
    }

    #[test]
    fn requests_are_capped_and_permits_give_slots_back() {
        let l = limits(2, 10, 20, 3);
        let now = Instant::now();
        let a = l.admit_request(now).unwrap();
        let _b = l.admit_request(now).unwrap();
        assert_eq!(l.admit_request(now).unwrap_err(), Overflow::Requests);
        drop(a);
        assert!(l.admit_request(now).is_ok());
        assert_eq!(l.overflows(), 1);
    }

    #[test]
    fn retries_need_both_a_slot_and_budget() {
        let now = Instant::now();
        // Budget: 0% and no floor: nothing, whatever the slots.
        let l = limits(1000, 10, 0, 0);
        let _r = l.admit_request(now).unwrap();
        assert_eq!(l.admit_retry(now).unwrap_err(), Overflow::Budget);
        assert_eq!(l.retries(), 0, "a refused retry gives its slot back");
        // Plenty of budget, two slots.
        let l = limits(1000, 2, 100, 100);
        let held: Vec<_> = (0..2).map(|_| l.admit_retry(now).unwrap()).collect();
        assert_eq!(l.admit_retry(now).unwrap_err(), Overflow::Retries);
        drop(held);
        assert_eq!(l.retries(), 0);
        assert!(l.admit_retry(now).is_ok());
    }

    #[derive(Debug, Clone)]
    enum Op {
        Request,
        Retry,
        DropRequest(usize),
        DropRetry(usize),
    }

    proptest! {
        /// Whatever the interleaving, requests in flight never exceed max_requests and retries
        /// in flight never exceed max_retries, and the counts match the permits held.
        #[test]
        fn caps_are_never_exceeded(
            max_requests in 1u32..50,
            max_retries in 0u32..20,
            ops in prop::collection::vec(prop_oneof![
                Just(Op::Request), Just(Op::Retry),
                (0usize..64).prop_map(Op::DropRequest), (0usize..64).prop_map(Op::DropRetry),
            ], 0..200),
        ) {
            let l = limits(max_requests, max_retries, 100, 1000);
            let now = Instant::now();
            let (mut reqs, mut retries) = (Vec::new(), Vec::new());
            for op in ops {
                match op {
                    Op::Request => if let Ok(p) = l.admit_request(now) { reqs.push(p) },
                    Op::Retry => if let Ok(p) = l.admit_retry(now) { retries.push(p) },
                    Op::DropRequest(i) => if !reqs.is_empty() { drop(reqs.swap_remove(i % reqs.len())); },
                    Op::DropRetry(i) => if !retries.is_empty() { drop(retries.swap_remove(i % retries.len())); },
                }
                prop_assert!(l.requests() <= max_requests);
                prop_assert!(l.retries() <= max_retries);
                prop_assert_eq!(l.requests() as usize, reqs.len());
                prop_assert_eq!(l.retries() as usize, retries.len());
            }
        }
    }
}
