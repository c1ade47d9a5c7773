//! Validation of the failure-handling tables (`config::resilience`): health checks, outlier
//! detection, slow start, limits, the retry budget, failover tiers and fallbacks on clusters; retry,
//! hedge and last-resort on routes. Same contract as the parent: every problem, with its path.

use std::{collections::HashSet, time::Duration};

use http::{HeaderValue, StatusCode};

use super::super::{
    ClusterConfig, Config, Diagnostics, Dur, RetryOn, RouteConfig, resilience::status_ranges,
};

/// The failure-handling parts of `clusters.NAME`.
pub(super) fn check_cluster(d: &mut Diagnostics, config: &Config, name: &str, c: &ClusterConfig) {
    let p = format!("clusters.{name}");
    if let Some(h) = &c.health_check {
        let p = format!("{p}.health_check");
        if !h.path.starts_with('/') {
            d.error(format!("{p}.path"), "must start with /");
        }
        if !matches!(h.method.as_str(), "GET" | "HEAD") {
            d.error(
                format!("{p}.method"),
                "GET or HEAD (a probe must not change anything)",
            );
        }
        if let Some(host) = &h.host
            && (host.is_empty() || HeaderValue::from_str(host).is_err())
        {
            d.error(format!("{p}.host"), format!("{host:?} is not a Host value"));
        }
        match status_ranges(&h.expected_statuses) {
            Ok(r) if r.is_empty() => d.error(format!("{p}.expected_statuses"), "must not be empty"),
            Ok(_) => {}
            Err(e) => d.error(format!("{p}.expected_statuses"), e),
        }
        positive(d, &format!("{p}.interval"), h.interval);
        positive(d, &format!("{p}.timeout"), h.timeout);
        positive(d, &format!("{p}.edge_interval"), h.edge_interval);
        positive(
            d,
            &format!("{p}.no_traffic_interval"),
            h.no_traffic_interval,
        );
        if let Some(u) = h.unhealthy_interval {
            positive(d, &format!("{p}.unhealthy_interval"), u);
        }
        if h.timeout > h.interval {
            d.error(
                format!("{p}.timeout"),
                format!(
                    "{} is longer than interval ({}): probes of one endpoint would overlap",
                    h.timeout, h.interval
                ),
            );
        }
        for (key, v) in [
            ("healthy_threshold", h.healthy_threshold),
            ("unhealthy_threshold", h.unhealthy_threshold),
        ] {
            if !(1..=100).contains(&v) {
                d.error(
                    format!("{p}.{key}"),
                    format!("{v} must be between 1 and 100"),
                );
            }
        }
        percent(d, &format!("{p}.jitter_percent"), h.jitter_percent, 0);
    }

    let o = &c.outlier_detection;
    if o.enabled {
        let p = format!("{p}.outlier_detection");
        positive(d, &format!("{p}.interval"), o.interval);
        if o.window < o.interval {
            d.error(
                format!("{p}.window"),
                format!("{} is shorter than interval ({})", o.window, o.interval),
            );
        } else if !o.interval.is_zero() && o.window.get() > o.interval.get() * 60 {
            d.error(
                format!("{p}.window"),
                "at most 60 × interval (the window is kept as that many buckets)",
            );
        }
        percent(
            d,
            &format!("{p}.failure_rate_percent"),
            o.failure_rate_percent,
            0,
        );
        percent(
            d,
            &format!("{p}.max_ejection_percent"),
            o.max_ejection_percent,
            0,
        );
        if !(o.latency_factor == 0.0 || (1.1..=1000.0).contains(&o.latency_factor)) {
            d.error(
                format!("{p}.latency_factor"),
                "must be 0 (off) or between 1.1 and 1000",
            );
        }
        positive(d, &format!("{p}.base_ejection_time"), o.base_ejection_time);
        if o.max_ejection_time < o.base_ejection_time {
            d.error(
                format!("{p}.max_ejection_time"),
                format!(
                    "{} is shorter than base_ejection_time ({})",
                    o.max_ejection_time, o.base_ejection_time
                ),
            );
        }
    }

    let s = &c.slow_start;
    if !(s.aggression.is_finite() && s.aggression > 0.0 && s.aggression <= 100.0) {
        d.error(
            format!("{p}.slow_start.aggression"),
            "must be more than 0 and at most 100 (1.0 = linear)",
        );
    }
    percent(
        d,
        &format!("{p}.slow_start.min_weight_percent"),
        s.min_weight_percent,
        1,
    );

    let l = &c.limits;
    for (key, v) in [
        ("max_connections", l.max_connections),
        ("max_pending", l.max_pending),
        ("max_requests", l.max_requests),
    ] {
        if v == 0 {
            d.error(
                format!("{p}.limits.{key}"),
                "must be at least 1 (0 would refuse every request)",
            );
        }
    }
    positive(d, &format!("{p}.limits.queue_timeout"), l.queue_timeout);
    percent(
        d,
        &format!("{p}.retry_budget.percent"),
        c.retry_budget.percent,
        0,
    );

    percent(d, &format!("{p}.panic_threshold"), c.panic_threshold, 0);
    if !(1.0..=10.0).contains(&c.overprovisioning) {
        d.error(
            format!("{p}.overprovisioning"),
            "must be between 1.0 (no headroom) and 10",
        );
    }
    percent(
        d,
        &format!("{p}.zone_min_healthy_percent"),
        c.zone_min_healthy_percent,
        1,
    );
    if config.runtime.local_zone.is_none() && c.endpoints.iter().any(|e| e.zone().is_some()) {
        d.warn(
            format!("{p}.endpoints"),
            "endpoints name a zone but runtime.local_zone is not set: zones are ignored",
        );
    }
    if c.endpoints.iter().all(|e| e.priority() > 0) && !c.endpoints.is_empty() {
        d.warn(
            format!("{p}.endpoints"),
            "no endpoint has priority 0: the lowest tier present acts as the primary",
        );
    }

    if let Some(f) = &c.fallback {
        if f == name {
            d.error(
                format!("{p}.fallback"),
                "a cluster cannot be its own fallback",
            );
        } else if !config.clusters.contains_key(f) {
            d.error(format!("{p}.fallback"), format!("unknown cluster {f:?}"));
        } else {
            // A chain is fine (a → b → c), a loop is not: it would never end.
            let mut seen = HashSet::from([name]);
            let mut next = Some(f.as_str());
            while let Some(n) = next {
                if !seen.insert(n) {
                    d.error(
                        format!("{p}.fallback"),
                        format!("fallbacks form a loop through {n:?}"),
                    );
                    break;
                }
                next = config.clusters.get(n).and_then(|c| c.fallback.as_deref());
            }
        }
    }
}

/// The failure-handling parts of `routes[i]`.
pub(super) fn check_route(d: &mut Diagnostics, p: &str, r: &RouteConfig) {
    let rt = &r.retry;
    let rp = format!("{p}.retry");
    if !(1..=10).contains(&rt.attempts) {
        d.error(
            format!("{rp}.attempts"),
            format!("{} must be between 1 (no retries) and 10", rt.attempts),
        );
    }
    if let Err(bad) = RetryOn::parse(&rt.on) {
        for b in bad {
            d.error(
                format!("{rp}.on"),
                format!("{b:?} is not one of {}", RetryOn::NAMES.join(", ")),
            );
        }
    }
    for s in &rt.statuses {
        if !(100..=599).contains(s) {
            d.error(format!("{rp}.statuses"), format!("{s} is not a status"));
        }
    }
    if let Some(t) = rt.per_try_timeout {
        positive(d, &format!("{rp}.per_try_timeout"), t);
        if rt.attempts > 1 && t >= r.timeout {
            d.warn(
                format!("{rp}.per_try_timeout"),
                format!(
                    "{t} is not shorter than the route's timeout ({}): a timed-out try leaves no time to retry",
                    r.timeout
                ),
            );
        }
    }
    if rt.backoff_base > rt.backoff_max {
        d.error(
            format!("{rp}.backoff_base"),
            format!(
                "{} is longer than backoff_max ({})",
                rt.backoff_base, rt.backoff_max
            ),
        );
    }
    for (key, v) in [
        ("replay_buffer_bytes", rt.replay_buffer_bytes),
        ("response_buffer_bytes", rt.response_buffer_bytes),
    ] {
        if v > 16 * 1024 * 1024 {
            d.error(
                format!("{rp}.{key}"),
                "at most 16 MiB (every retried request may hold this much)",
            );
        }
    }

    if let Some(h) = &r.hedge {
        if let Err(e) = h.parse_delay() {
            d.error(format!("{p}.hedge.delay"), e);
        }
        if h.min_delay.get() >= r.timeout.get() {
            d.error(
                format!("{p}.hedge.min_delay"),
                "must be shorter than the route's timeout",
            );
        }
    }

    if let Some(l) = &r.last_resort {
        let lp = format!("{p}.last_resort");
        if StatusCode::from_u16(l.status).map_or(true, |s| s.as_u16() < 200) {
            d.error(
                format!("{lp}.status"),
                format!("{} is not a final status (200-599)", l.status),
            );
        }
        if HeaderValue::from_str(&l.content_type).is_err() {
            d.error(format!("{lp}.content_type"), "not a header value");
        }
        if l.body.len() > 64 * 1024 {
            d.error(format!("{lp}.body"), "at most 64 KiB");
        }
    }
}

pub(super) fn positive(d: &mut Diagnostics, path: &str, v: Dur) {
    if v.get() == Duration::ZERO {
        d.error(path, "must be more than 0");
    }
}

pub(super) fn percent(d: &mut Diagnostics, path: &str, v: u32, min: u32) {
    if !(min..=100).contains(&v) {
        d.error(path, format!("{v} must be between {min} and 100"));
    }
}
