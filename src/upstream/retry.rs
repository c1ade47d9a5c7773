//! Retry policy: which failed attempts deserve another, and how long to wait before it.
//!
//! The rules are the safe ones by default (RFC 9110 §9.2.2): a request that provably never reached
//! the upstream (the connection was refused or failed) may be retried whatever its method; one that
//! may have reached it (a reset, a timeout, a 502/503/504 answer) only when its method is
//! idempotent, or when the route opts in. Whether a retry may be *made now* (the budget, the caps)
//! is `limits`'s decision; choosing a different endpoint is the balancer's (the handler passes the
//! endpoints already tried). This module decides and computes, it does not send.

use std::time::Duration;

use http::{HeaderMap, StatusCode, header};

use super::latency::LatencyHistogram;
use crate::{
    config::{HedgeConfig, HedgeDelay, RetryConfig, RetryOn},
    error::ProxyError,
};

/// A route's retry policy, compiled.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Attempts in all (1 = no retries).
    pub attempts: u32,
    pub on: RetryOn,
    /// Further statuses that are retried.
    pub statuses: Vec<u16>,
    pub per_try_timeout: Option<Duration>,
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    pub max_retry_after: Duration,
    pub non_idempotent: bool,
    /// Request bodies up to this size are buffered so they can be sent again.
    pub replay_buffer_bytes: u64,
    /// Responses up to this size are read whole while a retry is possible (0: never).
    pub response_buffer_bytes: u64,
}

/// What went wrong with one attempt.
#[derive(Debug, Clone, Copy)]
pub enum Failure<'a> {
    /// No usable response.
    Error(&'a ProxyError),
    /// A response whose status may deserve a retry.
    Status(StatusCode),
}

impl RetryPolicy {
    pub fn from_config(c: &RetryConfig) -> Self {
        Self {
            attempts: c.attempts.max(1),
            on: RetryOn::parse(&c.on).unwrap_or_default(),
            statuses: c.statuses.clone(),
            per_try_timeout: c.per_try_timeout.map(|d| d.get()),
            backoff_base: c.backoff_base.get(),
            backoff_max: c.backoff_max.get(),
            max_retry_after: c.max_retry_after.get(),
            non_idempotent: c.non_idempotent,
            replay_buffer_bytes: c.replay_buffer_bytes as u64,
            response_buffer_bytes: c.response_buffer_bytes as u64,
        }
    }

    /// Whether a response with this status is a failure worth retrying (before the method rules).
    pub fn retries_status(&self, status: StatusCode) -> bool {
        let s = status.as_u16();
        (self.on.gateway_error && matches!(s, 502..=504))
            || (self.on.server_error && status.is_server_error())
            || self.statuses.contains(&s)
    }

    /// Whether `failure` deserves another attempt for a request with this method safety.
    pub fn wants(&self, failure: Failure<'_>, idempotent: bool) -> bool {
        let may_have_reached = idempotent || self.non_idempotent;
        match failure {
            Failure::Error(e) if e.never_sent() => self.on.connect_failure,
            // HTTP/2 REFUSED_STREAM guarantees the request was not processed (RFC 9113 §8.7).
            Failure::Error(ProxyError::RefusedStream) => self.on.refused_stream,
            Failure::Error(ProxyError::UpstreamReset | ProxyError::UpstreamProtocol) => {
                self.on.reset && may_have_reached
            }
            Failure::Error(ProxyError::UpstreamTimeout) => self.on.timeout && may_have_reached,
            Failure::Error(_) => false,
            Failure::Status(s) => self.retries_status(s) && may_have_reached,
        }
    }

    /// The wait before retry number `retry` (1-based): "full jitter", uniform in
    /// `[0, min(max, base × 2^(retry-1))]`, so retries from many clients spread out instead of
    /// arriving together.
    pub fn backoff(&self, retry: u32, rng: &mut fastrand::Rng) -> Duration {
        let factor = 1u32 << retry.saturating_sub(1).min(16);
        let ceiling = self
            .backoff_base
            .saturating_mul(factor)
            .min(self.backoff_max);
        let nanos = u64::try_from(ceiling.as_nanos()).unwrap_or(u64::MAX);
        if nanos == 0 {
            return Duration::ZERO;
        }
        Duration::from_nanos(rng.u64(0..=nanos))
    }
}

/// A route's hedging, compiled.
#[derive(Debug, Clone, Copy)]
pub struct Hedge {
    pub delay: HedgeDelay,
    pub min_delay: Duration,
}

/// Samples a quantile needs before hedging trusts it.
const MIN_HEDGE_SAMPLES: u64 = 20;

impl Hedge {
    pub fn from_config(c: &HedgeConfig) -> Option<Self> {
        Some(Self {
            delay: c.parse_delay().ok()?,
            min_delay: c.min_delay.get(),
        })
    }

    /// How long the first attempt may go unanswered before the hedge; `None` (no hedge) while
    /// the cluster has too few latencies for a quantile.
    pub fn delay(&self, latency: &LatencyHistogram) -> Option<Duration> {
        let d = match self.delay {
            HedgeDelay::Fixed(d) => d,
            HedgeDelay::Quantile(q) => latency.quantile(q, MIN_HEDGE_SAMPLES)?,
        };
        Some(d.max(self.min_delay))
    }
}

/// The delay a `Retry-After` header asks for, in seconds form only (an HTTP date from an upstream
/// is rare and would need its clock to agree with ours).
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    headers
        .get(header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse::<u64>()
        .ok()
        .map(Duration::from_secs)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn policy() -> RetryPolicy {
        RetryPolicy::from_config(&RetryConfig::default())
    }

    #[test]
    fn connect_failures_are_retried_for_any_method() {
        let p = policy();
        for e in [
            ProxyError::ConnectRefused,
            ProxyError::ConnectFailed,
            ProxyError::ConnectTimeout,
            ProxyError::UpstreamTls,
        ] {
            assert!(p.wants(Failure::Error(&e), false), "{e:?}");
            assert!(p.wants(Failure::Error(&e), true), "{e:?}");
        }
    }

    #[test]
    fn what_may_have_reached_the_upstream_is_retried_only_when_idempotent() {
        let p = policy();
        for f in [
            Failure::Error(&ProxyError::UpstreamReset),
            Failure::Error(&ProxyError::UpstreamProtocol),
            Failure::Error(&ProxyError::UpstreamTimeout),
            Failure::Status(StatusCode::BAD_GATEWAY),
            Failure::Status(StatusCode::SERVICE_UNAVAILABLE),
            Failure::Status(StatusCode::GATEWAY_TIMEOUT),
        ] {
            assert!(p.wants(f, true), "{f:?}");
            assert!(!p.wants(f, false), "{f:?}");
        }
        let opt_in = RetryPolicy {
            non_idempotent: true,
            ..policy()
        };
        assert!(opt_in.wants(Failure::Status(StatusCode::BAD_GATEWAY), false));
    }

    #[test]
    fn refused_streams_are_retried_for_any_method() {
        assert!(policy().wants(Failure::Error(&ProxyError::RefusedStream), false));
    }

    #[test]
    fn other_statuses_and_client_faults_are_not_retried_by_default() {
        let p = policy();
        for s in [500, 501, 404, 429, 200] {
            assert!(
                !p.wants(Failure::Status(StatusCode::from_u16(s).unwrap()), true),
                "{s}"
            );
        }
        for e in [
            ProxyError::ClientTimeout,
            ProxyError::BadRequest("x"),
            ProxyError::ClientAbort,
            ProxyError::NoHealthyUpstream,
        ] {
            assert!(!p.wants(Failure::Error(&e), true), "{e:?}");
        }
    }

    #[test]
    fn listed_statuses_and_5xx_when_asked() {
        let p = RetryPolicy::from_config(&RetryConfig {
            on: vec!["5xx".into()],
            statuses: vec![429],
            ..RetryConfig::default()
        });
        assert!(p.wants(Failure::Status(StatusCode::INTERNAL_SERVER_ERROR), true));
        assert!(p.wants(Failure::Status(StatusCode::TOO_MANY_REQUESTS), true));
        assert!(!p.wants(Failure::Error(&ProxyError::ConnectRefused), true));
    }

    #[test]
    fn retry_after_seconds() {
        let mut h = HeaderMap::new();
        assert_eq!(retry_after(&h), None);
        h.insert(header::RETRY_AFTER, "2".parse().unwrap());
        assert_eq!(retry_after(&h), Some(Duration::from_secs(2)));
        h.insert(
            header::RETRY_AFTER,
            "Wed, 21 Oct 2015 07:28:00 GMT".parse().unwrap(),
        );
        assert_eq!(retry_after(&h), None);
    }

    proptest! {
        /// Backoff is never above min(max, base × 2^(n-1)).
        #[test]
        fn backoff_is_bounded(retry in 0u32..40, base_ms in 0u64..1000, max_ms in 0u64..5000, seed: u64) {
            let p = RetryPolicy {
                backoff_base: Duration::from_millis(base_ms),
                backoff_max: Duration::from_millis(max_ms),
                ..policy()
            };
            let mut rng = fastrand::Rng::with_seed(seed);
            let d = p.backoff(retry, &mut rng);
            let ceiling = Duration::from_millis(base_ms)
                .saturating_mul(1 << retry.saturating_sub(1).min(16))
                .min(Duration::from_millis(max_ms));
            prop_assert!(d <= ceiling);
        }
    }
}
