//! Cross-table validation: values that are each fine alone but defeat one another across a route,
//! the clusters it sends to and the `[reload]` table. A per-try timeout the route's deadline cannot
//! fit, a hedge that can never be sent or that eats the retry budget, a health check slower than
//! the ejection it should confirm, failover tiers nothing can ever trigger.
//!
//! Owns only those interactions. It does not own single values or the rules the parent and
//! `resilience.rs` already make (split weights summing to 0, a route timeout shorter than
//! `connect_timeout` or `response_header_timeout`, shadowed routes, fallback loops, a cluster
//! without priority 0, `per_try_timeout` ≥ the route's timeout, `hedge.min_delay` ≥ the route's
//! timeout): each rule here skips the cases those already report, so one mistake is one finding.
//!
//! Severity: an error only where the setting can never take effect *and* a neighbouring rule
//! already refuses the same shape (a hedge delay ≥ the route timeout, like `min_delay`). Everything
//! else serves traffic and is a warning: an operator may mean it (a zero retry budget is a valid
//! incident kill switch), and refusing it would block that reload.

use std::{fmt::Write as _, net::SocketAddr, time::Duration};

use super::super::{
    ClusterConfig, Config, Diagnostics, Dur, EndpointConfig, HedgeDelay, RetryOn, RouteConfig,
};

/// Routes named in one message before "and N more".
const LISTED_ROUTES: usize = 3;

pub(super) fn check(d: &mut Diagnostics, config: &Config) {
    for (i, r) in config.routes.iter().enumerate() {
        let p = format!("routes[{i}]");
        retry_fits_deadline(d, &p, r);
        hedge_can_fire(d, &p, r, config);
        hedge_has_another_endpoint(d, &p, r, config);
        hedge_budget(d, &p, r, config);
    }
    for (name, c) in &config.clusters {
        retries_forbidden(d, config, name, c);
        probes_outlast_ejection(d, name, c);
        failover_without_health(d, name, c);
    }
    bake_outlasts_health_checks(d, config);
}

/// The clusters a route sends traffic to: its `cluster`, or the split targets with a weight (a
/// weight-0 target gets nothing from this route). Each once.
fn targets(r: &RouteConfig) -> Vec<&str> {
    let mut out: Vec<&str> = Vec::new();
    let named = r.cluster.as_deref().into_iter().chain(
        r.split
            .iter()
            .flatten()
            .filter(|t| t.weight > 0)
            .map(|t| t.cluster.as_str()),
    );
    for c in named {
        if !out.contains(&c) {
            out.push(c);
        }
    }
    out
}

/// One endpoint given as an address: exactly one upstream (a DNS name may resolve to several).
fn single_endpoint(c: &ClusterConfig) -> bool {
    matches!(c.endpoints.as_slice(), [only] if only.address().parse::<SocketAddr>().is_ok())
}

fn can_never_retry(c: &ClusterConfig) -> bool {
    c.limits.max_retries == 0 || (c.retry_budget.percent == 0 && c.retry_budget.min_per_second == 0)
}

/// Shown with the same grammar the file uses (`"1s 500ms"`).
fn show(d: Duration) -> Dur {
    Dur(d)
}

/// Rounded down to whole milliseconds, so advice reads `1s 666ms`, not nanoseconds.
fn whole_ms(d: Duration) -> Dur {
    Dur(Duration::from_millis(
        u64::try_from(d.as_millis()).unwrap_or(u64::MAX),
    ))
}

/// `retry.per_try_timeout × attempts` beyond the route's timeout: when tries time out (the case a
/// per-try timeout exists for), the last ones are cut short or never sent. `per_try_timeout` ≥
/// `timeout` is `resilience.rs`'s; without `timeout` in `retry.on` a timed-out try is not retried,
/// so the product is never reached that way.
fn retry_fits_deadline(d: &mut Diagnostics, p: &str, r: &RouteConfig) {
    let rt = &r.retry;
    let Some(per_try) = rt.per_try_timeout.map(Dur::get) else {
        return;
    };
    let timeout = r.timeout.get();
    if rt.attempts < 2 || per_try.is_zero() || per_try >= timeout {
        return;
    }
    if !RetryOn::parse(&rt.on).is_ok_and(|on| on.timeout) {
        return;
    }
    let total = per_try.saturating_mul(rt.attempts);
    if total <= timeout {
        return;
    }
    let fit = timeout.as_nanos() / per_try.as_nanos();
    let even = whole_ms(timeout.checked_div(rt.attempts).unwrap_or_default());
    d.warn(
        format!("{p}.retry.per_try_timeout"),
        format!(
            "{} attempts × {} = {} exceed the route's timeout ({}): when tries time out, only {fit} \
             get their whole per-try time and the rest are cut short or never sent; lower \
             per_try_timeout to {even} or less, lower retry.attempts, or raise timeout",
            rt.attempts,
            show(per_try),
            show(total),
            r.timeout
        ),
    );
}

/// A hedge is sent only while the first try is still waiting: a delay the route's deadline or the
/// try's own limit (`retry.per_try_timeout`, the cluster's `response_header_timeout`) ends first
/// means no hedge, ever. `min_delay` ≥ the route timeout is `resilience.rs`'s (an error), and so,
/// for the same reason, is a fixed `delay` ≥ it here.
fn hedge_can_fire(d: &mut Diagnostics, p: &str, r: &RouteConfig, config: &Config) {
    let Some(h) = &r.hedge else { return };
    let Ok(delay) = h.parse_delay() else { return };
    let (min, timeout) = (h.min_delay.get(), r.timeout.get());
    if min >= timeout {
        return;
    }
    // The shortest wait before a hedge, and the key that sets it.
    let (key, wait) = match delay {
        HedgeDelay::Fixed(fixed) if fixed >= timeout => {
            d.error(
                format!("{p}.hedge.delay"),
                format!(
                    "{} is not shorter than the route's timeout ({timeout}): the request ends \
                     before a hedge could be sent; use a delay well below timeout (or a quantile \
                     such as \"p95\")",
                    show(fixed),
                    timeout = r.timeout
                ),
            );
            return;
        }
        HedgeDelay::Fixed(fixed) if fixed >= min => ("delay", fixed),
        _ => ("min_delay", min),
    };
    let per_try = r
        .retry
        .per_try_timeout
        .filter(|t| !t.is_zero())
        .map(|t| (t, "retry.per_try_timeout".to_owned()));
    let header_timeouts = targets(r).into_iter().filter_map(|name| {
        let rht = config.clusters.get(name)?.response_header_timeout?;
        Some((rht, format!("clusters.{name}.response_header_timeout")))
    });
    // The first limit that ends the try before the hedge; one finding is enough to fix.
    if let Some((limit, what)) = per_try
        .into_iter()
        .chain(header_timeouts)
        .find(|(limit, _)| !limit.is_zero() && wait >= limit.get())
    {
        d.warn(
            format!("{p}.hedge.{key}"),
            format!(
                "{} is not shorter than {what} ({limit}): the first try ends before a hedge is \
                 sent, so none ever is (a retry follows instead); hedge earlier than the try's \
                 limit",
                show(wait)
            ),
        );
    }
}

/// A hedge goes to a different endpoint than the first try (a second request to the same one
/// would only add load), so a hedge on a single-endpoint cluster is never sent.
fn hedge_has_another_endpoint(d: &mut Diagnostics, p: &str, r: &RouteConfig, config: &Config) {
    if r.hedge.is_none() {
        return;
    }
    for name in targets(r) {
        if config.clusters.get(name).is_some_and(single_endpoint) {
            d.warn(
                format!("{p}.hedge"),
                format!(
                    "clusters.{name} has a single endpoint: a hedge only goes to a different \
                     endpoint, so none is ever sent; add endpoints or remove the hedge"
                ),
            );
        }
    }
}

/// Hedges spend the cluster's retry budget. "Hedging without a budget" has two faces here: a
/// budget with no share of traffic (percent 0: held to the per-second floor, so at real load
/// almost nothing is hedged) and a budget that bounds nothing (percent 100: hedging fires exactly
/// when the cluster is slow, and doubles its load). A quantile delay also predicts the hedge rate:
/// `p80` hedges a fifth of the requests, which can spend the default 20% before any retry. A budget
/// that allows nothing at all is [`retries_forbidden`]'s, a single endpoint
/// [`hedge_has_another_endpoint`]'s.
fn hedge_budget(d: &mut Diagnostics, p: &str, r: &RouteConfig, config: &Config) {
    let Some(h) = &r.hedge else { return };
    let delay = h.parse_delay().ok();
    for name in targets(r) {
        let Some(c) = config.clusters.get(name) else {
            continue;
        };
        if single_endpoint(c) || can_never_retry(c) {
            continue;
        }
        let b = &c.retry_budget;
        if b.percent == 0 {
            d.warn(
                format!("{p}.hedge"),
                format!(
                    "clusters.{name}.retry_budget.percent is 0: hedges (and retries) are held to \
                     min_per_second ({}/s) whatever the traffic, so at real load almost no \
                     request is hedged; give the budget a share above the hedge rate (a p95 delay \
                     hedges about 5%)",
                    b.min_per_second
                ),
            );
        } else if b.percent >= 100 {
            d.warn(
                format!("{p}.hedge"),
                format!(
                    "clusters.{name}.retry_budget.percent is {}: the budget allows a hedge for \
                     every request, so when the cluster slows down (when hedges fire) hedging \
                     doubles its load; keep the share well below 100 (default 20)",
                    b.percent
                ),
            );
        } else if let Some(HedgeDelay::Quantile(q)) = delay {
            // Per mille, rounded: p80 is exactly 200, whatever 1 - 0.8 is in binary.
            let share = ((1.0 - q) * 1000.0).round() as u32;
            if share >= b.percent.saturating_mul(10) {
                d.warn(
                    format!("{p}.hedge.delay"),
                    format!(
                        "{:?} hedges about {}.{}% of requests, as much as \
                         clusters.{name}.retry_budget.percent ({}) allows: hedges alone can spend \
                         the whole budget and leave no retry for failing endpoints; hedge later \
                         (p95, p99) or raise the budget",
                        h.delay.trim(),
                        share / 10,
                        share % 10,
                        b.percent
                    ),
                );
            }
        }
    }
}

/// `limits.max_retries = 0`, or a retry budget of 0% and 0/s, allows no retry and no hedge at all,
/// while routes using the cluster ask for them (retries are on by default: `attempts = 3`). Valid
/// as a deliberate kill switch, so a warning that names the routes to change to say so.
fn retries_forbidden(d: &mut Diagnostics, config: &Config, name: &str, c: &ClusterConfig) {
    let (key, what) = if c.limits.max_retries == 0 {
        ("limits.max_retries", "0")
    } else if can_never_retry(c) {
        ("retry_budget", "percent = 0 and min_per_second = 0")
    } else {
        return;
    };
    let users: Vec<String> = config
        .routes
        .iter()
        .enumerate()
        .filter(|(_, r)| (r.retry.attempts > 1 || r.hedge.is_some()) && targets(r).contains(&name))
        .map(|(i, r)| format!("routes[{i}] ({:?})", r.name))
        .collect();
    let Some(first) = users.first() else { return };
    let mut list = first.clone();
    for u in users.iter().take(LISTED_ROUTES).skip(1) {
        let _ = write!(list, ", {u}");
    }
    if users.len() > LISTED_ROUTES {
        let _ = write!(list, " and {} more", users.len() - LISTED_ROUTES);
    }
    d.warn(
        format!("clusters.{name}.{key}"),
        format!(
            "{what}: no retry or hedge is ever made on this cluster, yet {list} retry or hedge; if \
             that is meant, say so on the routes (retry.attempts = 1, no hedge), otherwise allow \
             some (defaults: max_retries = 64, retry_budget.percent = 20)"
        ),
    );
}

/// An outlier-ejected endpoint returns after `base_ejection_time` on its own; with probes further
/// apart than that, it is back before any probe could confirm it recovered (or keep it out).
fn probes_outlast_ejection(d: &mut Diagnostics, name: &str, c: &ClusterConfig) {
    let (Some(h), o) = (&c.health_check, &c.outlier_detection) else {
        return;
    };
    if !o.enabled || o.base_ejection_time.is_zero() || h.interval <= o.base_ejection_time {
        return;
    }
    d.warn(
        format!("clusters.{name}.health_check.interval"),
        format!(
            "{} is longer than outlier_detection.base_ejection_time ({}): an ejected endpoint \
             comes back before a probe could confirm it has recovered; probe at least as often \
             as endpoints are ejected, or lengthen base_ejection_time",
            h.interval, o.base_ejection_time
        ),
    );
}

/// Backup tiers and a fallback cluster take over when endpoints are found unhealthy. With no
/// `health_check` and outlier detection off, nothing ever finds one: every endpoint stays admitted,
/// the backups get no share of the plan (not even retries) and the fallback is used only when the
/// operator marks every endpoint down.
fn failover_without_health(d: &mut Diagnostics, name: &str, c: &ClusterConfig) {
    if c.health_check.is_some() || c.outlier_detection.enabled {
        return;
    }
    let tiers = c.endpoints.iter().map(EndpointConfig::priority);
    let several_tiers = tiers.clone().min() != tiers.max();
    let what = match (several_tiers, &c.fallback) {
        (false, None) => return,
        (true, None) => "the backup tier (priority ≥ 1) takes traffic".to_owned(),
        (false, Some(f)) => format!("fallback {f:?} is used"),
        (true, Some(f)) => {
            format!("the backup tier (priority ≥ 1) and fallback {f:?} take traffic")
        }
    };
    d.warn(
        format!("clusters.{name}.outlier_detection.enabled"),
        format!(
            "false with no health_check: no endpoint is ever found unhealthy, so {what} only when \
             the operator marks endpoints down; add [clusters.{name}.health_check] or enable \
             outlier detection"
        ),
    );
}

/// Auto-rollback judges a change over `bake_time`; health checks need time to act on what the
/// change did to endpoints: a first probe within `interval` (`unhealthy_interval` if longer), then
/// the rest of the streak at `edge_interval`. A bake that ends sooner judges the change before the
/// health checks have taken broken endpoints out or healed ones back in. The slowest cluster is
/// named (one finding: there is one `bake_time`).
fn bake_outlasts_health_checks(d: &mut Diagnostics, config: &Config) {
    let ar = &config.reload.auto_rollback;
    if !ar.enabled {
        return;
    }
    let slowest = config
        .clusters
        .iter()
        .filter_map(|(name, c)| {
            let h = c.health_check.as_ref()?;
            let first = h.interval.max(h.unhealthy_interval.unwrap_or(h.interval));
            let streak = h.healthy_threshold.max(h.unhealthy_threshold).max(1);
            let settle = first
                .get()
                .saturating_add(h.edge_interval.get().saturating_mul(streak - 1));
            Some((settle, name, first, streak, h.edge_interval))
        })
        .max_by_key(|(settle, ..)| *settle);
    let Some((settle, name, first, streak, edge)) = slowest else {
        return;
    };
    if ar.bake_time.get() >= settle {
        return;
    }
    d.warn(
        "reload.auto_rollback.bake_time",
        format!(
            "{} ends before health checks on clusters.{name} can settle (up to {}: a first probe \
             within {first}, then {} more at edge_interval {edge}): a change is judged before the \
             health checks have acted on it; raise bake_time to at least {}",
            ar.bake_time,
            show(settle),
            streak - 1,
            show(settle)
        ),
    );
}

#[cfg(test)]
mod tests {
    use crate::config::{Diagnostics, Problem};

    /// Realistic and clean, with the boundaries exact: 3 × 1s = the 3s timeout, probes every 2s.
    const BASE: &str = r#"
[listeners.web]
listen = "127.0.0.1:0"

[reload]
state_dir = ""

[[routes]]
name = "api"
match = { path_prefix = "/" }
cluster = "api"
timeout = "3s"
retry = { attempts = 3, per_try_timeout = "1s" }
hedge = { delay = "p99" }

[clusters.api]
endpoints = ["127.0.0.1:9001", "127.0.0.1:9002", { address = "127.0.0.1:9003", priority = 1 }]
fallback = "spare"
health_check = { interval = "2s" }

[clusters.spare]
endpoints = ["127.0.0.1:9004"]
"#;

    use super::super::tests::check;

    /// `BASE` with `from` replaced (which must be there, or the test would test nothing).
    fn with(from: &str, to: &str) -> Diagnostics {
        assert!(BASE.contains(from), "{from:?} is not in BASE");
        check(&BASE.replacen(from, to, 1))
    }

    fn has(list: &[Problem], path: &str, fragment: &str) -> bool {
        list.iter()
            .any(|p| p.path == path && p.message.contains(fragment))
    }

    #[track_caller]
    fn warns(d: &Diagnostics, path: &str, fragment: &str) {
        assert!(
            has(&d.warnings, path, fragment),
            "no warning {path}: …{fragment}… in {:#?} (errors {:#?})",
            d.warnings,
            d.errors
        );
        assert!(d.is_ok(), "{:#?}", d.errors);
    }

    #[test]
    fn a_clean_config_has_no_findings() {
        let d = check(BASE);
        assert!(d.errors.is_empty(), "{:#?}", d.errors);
        assert!(d.warnings.is_empty(), "{:#?}", d.warnings);
    }

    #[test]
    fn per_try_timeouts_that_overrun_the_route_timeout_warn() {
        let d = with("per_try_timeout = \"1s\"", "per_try_timeout = \"1200ms\"");
        warns(&d, "routes[0].retry.per_try_timeout", "only 2 get");
        warns(&d, "routes[0].retry.per_try_timeout", "= 3s 600ms exceed");
        warns(&d, "routes[0].retry.per_try_timeout", "to 1s or less");
        // Without `timeout` in retry.on a timed-out try is not retried: nothing to overrun.
        let d = with(
            "per_try_timeout = \"1s\"",
            "per_try_timeout = \"1200ms\", on = [\"connect_failure\"]",
        );
        assert!(d.warnings.is_empty(), "{:#?}", d.warnings);
        // per_try ≥ timeout is resilience.rs's warning, not a second one here.
        let d = with("per_try_timeout = \"1s\"", "per_try_timeout = \"3s\"");
        assert_eq!(d.warnings.len(), 1, "{:#?}", d.warnings);
        assert!(
            !d.warnings[0].message.contains("exceed"),
            "{}",
            d.warnings[0]
        );
    }

    #[test]
    fn a_hedge_delay_the_deadline_or_the_try_ends_first_is_refused_or_warned() {
        let d = with("delay = \"p99\"", "delay = \"3s\"");
        assert!(
            has(&d.errors, "routes[0].hedge.delay", "route's timeout"),
            "{:#?}",
            d.errors
        );
        let d = with("delay = \"p99\"", "delay = \"1s\"");
        warns(&d, "routes[0].hedge.delay", "retry.per_try_timeout (1s)");
        let d = with("delay = \"p99\"", "delay = \"p99\", min_delay = \"1500ms\"");
        warns(
            &d,
            "routes[0].hedge.min_delay",
            "retry.per_try_timeout (1s)",
        );
        // The cluster's response_header_timeout also ends a try.
        let rht = "fallback = \"spare\"\nresponse_header_timeout = \"400ms\"";
        let d = check(
            &BASE
                .replace("delay = \"p99\"", "delay = \"500ms\"")
                .replace("fallback = \"spare\"", rht),
        );
        warns(
            &d,
            "routes[0].hedge.delay",
            "clusters.api.response_header_timeout (400ms)",
        );
        let d = with("delay = \"p99\"", "delay = \"500ms\"");
        assert!(d.warnings.is_empty(), "{:#?}", d.warnings);
    }

    #[test]
    fn hedging_against_a_budget_that_cannot_bound_it_warns() {
        let d = with(
            "fallback = \"spare\"",
            "fallback = \"spare\"\nretry_budget = { percent = 0 }",
        );
        warns(&d, "routes[0].hedge", "percent is 0");
        let d = with(
            "fallback = \"spare\"",
            "fallback = \"spare\"\nretry_budget = { percent = 100 }",
        );
        warns(&d, "routes[0].hedge", "doubles its load");
        let d = with("delay = \"p99\"", "delay = \"p80\"");
        warns(&d, "routes[0].hedge.delay", "about 20.0% of requests");
        let d = with("delay = \"p99\"", "delay = \"p81\"");
        assert!(d.warnings.is_empty(), "p81 is 19%: {:#?}", d.warnings);
    }

    #[test]
    fn a_hedge_to_a_single_endpoint_is_never_sent() {
        let d = with(
            "endpoints = [\"127.0.0.1:9001\", \"127.0.0.1:9002\", { address = \"127.0.0.1:9003\", priority = 1 }]",
            "endpoints = [\"127.0.0.1:9001\"]",
        );
        warns(&d, "routes[0].hedge", "single endpoint");
    }

    #[test]
    fn a_cluster_that_allows_no_retry_names_the_routes_that_retry() {
        let d = with(
            "fallback = \"spare\"",
            "fallback = \"spare\"\nlimits = { max_retries = 0 }",
        );
        warns(&d, "clusters.api.limits.max_retries", "routes[0] (\"api\")");
        let d = with(
            "fallback = \"spare\"",
            "fallback = \"spare\"\nretry_budget = { percent = 0, min_per_second = 0 }",
        );
        warns(&d, "clusters.api.retry_budget", "no retry or hedge");
        assert_eq!(
            d.warnings.len(),
            1,
            "not also a hedge warning: {:#?}",
            d.warnings
        );
        // Routes that neither retry nor hedge are what the switch means: nothing to say.
        let d = check(
            &BASE
                .replace("attempts = 3", "attempts = 1")
                .replace("hedge = { delay = \"p99\" }\n", "")
                .replace(
                    "fallback = \"spare\"",
                    "fallback = \"spare\"\nlimits = { max_retries = 0 }",
                ),
        );
        assert!(d.warnings.is_empty(), "{:#?}", d.warnings);
    }

    #[test]
    fn probes_slower_than_the_ejection_warn() {
        let d = with(
            "health_check = { interval = \"2s\" }",
            "health_check = { interval = \"45s\" }",
        );
        warns(
            &d,
            "clusters.api.health_check.interval",
            "base_ejection_time (30s)",
        );
        let d = with(
            "health_check = { interval = \"2s\" }",
            "health_check = { interval = \"45s\" }\noutlier_detection = { base_ejection_time = \"45s\", max_ejection_time = \"5m\" }",
        );
        assert!(d.warnings.is_empty(), "equal is fine: {:#?}", d.warnings);
    }

    #[test]
    fn failover_with_no_health_signal_warns() {
        let d = with(
            "health_check = { interval = \"2s\" }",
            "outlier_detection = { enabled = false }",
        );
        warns(
            &d,
            "clusters.api.outlier_detection.enabled",
            "backup tier (priority ≥ 1) and fallback \"spare\"",
        );
        // The fallback cluster has one tier and no fallback: nothing to fail over to.
        assert_eq!(d.warnings.len(), 1, "{:#?}", d.warnings);
    }

    #[test]
    fn a_bake_shorter_than_health_checks_take_warns() {
        let slow = BASE.replace(
            "health_check = { interval = \"2s\" }",
            "health_check = { interval = \"10s\" }",
        );
        // 10s to the first probe, then 2 more at 500ms: 11s.
        let d = check(&format!(
            "{slow}\n[reload.auto_rollback]\nbake_time = \"10s\"\n"
        ));
        warns(&d, "reload.auto_rollback.bake_time", "at least 11s");
        let d = check(&format!(
            "{slow}\n[reload.auto_rollback]\nbake_time = \"11s\"\n"
        ));
        assert!(d.warnings.is_empty(), "{:#?}", d.warnings);
        let d = check(&format!(
            "{slow}\n[reload.auto_rollback]\nbake_time = \"10s\"\nenabled = false\n"
        ));
        assert!(d.warnings.is_empty(), "{:#?}", d.warnings);
    }
}
