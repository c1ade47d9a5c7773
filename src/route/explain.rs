//! `palisade validate --explain`: the compiled routing table as plain text, for a person at a
//! terminal. Routes in match order (what each matches, where it goes, its deadline, retries, hedge
//! and last resort), then each cluster they reach (balancer, endpoints, health, budget, fallback),
//! then what no request can reach: shadowed routes and clusters no route uses.
//!
//! Owns the rendering only. It does not validate (the caller has: `config::validate` found no
//! error before this runs) nor decide anything; the routes are compiled with [`Router::compile`]
//! so that what is printed is what will run (a route that does not compile is an `Err`, not a
//! guess). Output is deterministic: same config, same text, byte for byte.

use std::{fmt::Write as _, time::Duration};

use crate::{
    config::{
        BalanceConfig, ClusterConfig, Config, Dur, HeaderMatch, HeaderRewrite, ProbeKind,
        RouteConfig, RouteMatch, UpstreamProtocol,
    },
    route::router::{Route, Router},
    upstream::retry::RetryPolicy,
};

/// Width of the label column ("retry budget", "last resort").
const LABEL: usize = 14;
const INDENT: &str = "    ";

/// Renders the routing table of `config`; `Err` when the routes do not compile.
pub fn explain(config: &Config) -> Result<String, String> {
    let router = Router::compile(&config.routes)?;
    let mut out = Out(String::new());
    let routes = router.routes();
    out.line(format!(
        "Routing table: {} route{}, first match wins; a request no route matches gets 404.",
        routes.len(),
        plural(routes.len())
    ));
    for route in routes {
        let Some(rc) = config.routes.get(route.index) else {
            continue;
        };
        out.blank();
        write_route(&mut out, route, rc);
    }

    let order = clusters_in_order(config);
    if !order.is_empty() {
        out.blank();
        out.line("Clusters, in order of first use:");
    }
    for name in &order {
        out.blank();
        write_cluster(&mut out, config, name);
    }

    let shadowed: Vec<(usize, usize)> = (0..config.routes.len())
        .filter_map(|i| shadowed_by(&config.routes, i).map(|j| (i, j)))
        .collect();
    if !shadowed.is_empty() {
        out.blank();
        out.line("Unreachable routes (an earlier route takes every request they would match):");
        for (i, j) in shadowed {
            out.line(format!(
                "{INDENT}{} is shadowed by {}",
                route_ref(&config.routes, i),
                route_ref(&config.routes, j)
            ));
        }
    }
    let unused: Vec<&str> = config
        .clusters
        .keys()
        .map(String::as_str)
        .filter(|c| !order.contains(c))
        .collect();
    if !unused.is_empty() {
        out.blank();
        out.line("Clusters no route uses:");
        out.line(format!("{INDENT}{}", unused.join(", ")));
    }
    Ok(out.0)
}

/// A `String` being written. Writing to a `String` cannot fail, so the `fmt::Result`s are
/// dropped; trailing spaces (from padding an empty last column) never reach the terminal.
struct Out(String);

impl Out {
    fn line(&mut self, text: impl AsRef<str>) {
        let _ = writeln!(self.0, "{}", text.as_ref().trim_end());
    }

    fn blank(&mut self) {
        self.0.push('\n');
    }

    /// `label` before the first of `lines`, the others under the first one's column.
    fn field(&mut self, label: &str, lines: &[String]) {
        for (k, l) in lines.iter().enumerate() {
            let label = if k == 0 { label } else { "" };
            self.line(format!("{INDENT}{label:<LABEL$}{l}"));
        }
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

fn route_ref(routes: &[RouteConfig], i: usize) -> String {
    match routes.get(i) {
        Some(r) => format!("routes[{i}] {:?}", r.name),
        None => format!("routes[{i}]"),
    }
}

fn show(d: Duration) -> Dur {
    Dur(d)
}

fn write_route(out: &mut Out, route: &Route, rc: &RouteConfig) {
    out.line(format!("routes[{}] {:?}", route.index, &*route.name));
    out.field("match", &match_lines(&rc.matches));
    out.field("to", &target_lines(route, rc));
    let rewrite = rewrite_lines(rc);
    if !rewrite.is_empty() {
        out.field("rewrite", &rewrite);
    }
    out.field("timeout", &[show(route.timeout).to_string()]);
    out.field("retry", &retry_lines(&route.retry));
    if let Some(h) = &rc.hedge
        && route.hedge.is_some()
    {
        out.field(
            "hedge",
            &[format!(
                "after {} (at least {}), idempotent requests without a body",
                h.delay.trim(),
                h.min_delay
            )],
        );
    }
    if let Some(l) = &route.last_resort {
        out.field(
            "last resort",
            &[format!(
                "{} {:?}, {}-byte body",
                l.status.as_u16(),
                l.content_type.to_str().unwrap_or("(not text)"),
                l.body.len()
            )],
        );
    }
}

fn match_lines(m: &RouteMatch) -> Vec<String> {
    let mut lines = Vec::new();
    if let Some(hosts) = m
        .host
        .as_ref()
        .map(|h| h.as_slice())
        .filter(|h| !h.is_empty())
    {
        lines.push(format!("host     {}", hosts.join(", ")));
    }
    if let Some(p) = &m.path {
        lines.push(format!("path     = {p:?}"));
    }
    if let Some(p) = &m.path_prefix {
        lines.push(format!("path     starts with {p:?}"));
    }
    if let Some(p) = &m.path_regex {
        lines.push(format!("path     matches {p:?} (whole path)"));
    }
    if !m.methods.is_empty() {
        lines.push(format!("methods  {}", m.methods.join(", ")));
    }
    for h in &m.headers {
        lines.push(format!("header   {}", header_condition(h)));
    }
    if lines.is_empty() {
        lines.push("every request".to_owned());
    }
    lines
}

fn header_condition(h: &HeaderMatch) -> String {
    match (&h.value, h.present, &h.regex) {
        (Some(v), _, _) => format!("{} = {v:?}", h.name),
        (None, Some(true), _) => format!("{} present", h.name),
        (None, Some(false), _) => format!("{} absent", h.name),
        (None, None, Some(re)) => format!("{} matches {re:?} (whole value)", h.name),
        (None, None, None) => h.name.clone(),
    }
}

/// One cluster, or the split with each target's weight and share of requests.
fn target_lines(route: &Route, rc: &RouteConfig) -> Vec<String> {
    match route.targets.as_slice() {
        [(cluster, _)] if rc.split.is_none() => vec![format!("cluster  {cluster}")],
        targets => {
            let total = u64::from(route.total_weight());
            let name_w = targets.iter().map(|(c, _)| c.len()).max().unwrap_or(0);
            let weight_w = targets
                .iter()
                .map(|(_, w)| w.to_string().len())
                .max()
                .unwrap_or(1);
            targets
                .iter()
                .enumerate()
                .map(|(k, (cluster, weight))| {
                    let head = if k == 0 { "split   " } else { "        " };
                    let share = percent(u64::from(*weight), total);
                    let never = if *weight == 0 { "  (never chosen)" } else { "" };
                    format!(
                        "{head} {cluster:<name_w$}  weight {weight:>weight_w$}  {share:>6}{never}"
                    )
                })
                .collect()
        }
    }
}

/// `part / total` as a percentage with one decimal, rounded half up, in integers so it prints
/// the same everywhere.
fn percent(part: u64, total: u64) -> String {
    if total == 0 {
        return "0.0%".to_owned();
    }
    let per_mille = part
        .saturating_mul(1000)
        .saturating_add(total / 2)
        .checked_div(total)
        .unwrap_or(0);
    format!("{}.{}%", per_mille / 10, per_mille % 10)
}

fn rewrite_lines(rc: &RouteConfig) -> Vec<String> {
    let mut lines = Vec::new();
    if let Some(p) = &rc.strip_prefix {
        lines.push(format!("strip prefix {p:?}"));
    }
    if let Some(h) = &rc.host_rewrite {
        lines.push(format!("Host: {h}"));
    }
    for (side, edits) in [
        ("request", &rc.request_headers),
        ("response", &rc.response_headers),
    ] {
        if let Some(l) = header_edits(side, edits) {
            lines.push(l);
        }
    }
    lines
}

fn header_edits(side: &str, r: &HeaderRewrite) -> Option<String> {
    if r.is_empty() {
        return None;
    }
    let mut parts = Vec::new();
    if !r.remove.is_empty() {
        parts.push(format!("remove {}", r.remove.join(", ")));
    }
    if !r.set.is_empty() {
        let set: Vec<String> = r.set.iter().map(|(k, v)| format!("{k}: {v}")).collect();
        parts.push(format!("set {}", set.join(", ")));
    }
    if !r.add.is_empty() {
        let add: Vec<String> = r.add.iter().map(|(k, v)| format!("{k}: {v}")).collect();
        parts.push(format!("add {}", add.join(", ")));
    }
    Some(format!("{side} headers: {}", parts.join("; ")))
}

fn retry_lines(p: &RetryPolicy) -> Vec<String> {
    if p.attempts <= 1 {
        return vec!["off (1 attempt)".to_owned()];
    }
    let on = &p.on;
    let mut reasons: Vec<String> = [
        (on.connect_failure, "connect_failure"),
        (on.refused_stream, "refused_stream"),
        (on.reset, "reset"),
        (on.gateway_error, "gateway_error"),
        (on.server_error, "5xx"),
        (on.timeout, "timeout"),
    ]
    .into_iter()
    .filter(|(set, _)| *set)
    .map(|(_, name)| name.to_owned())
    .collect();
    reasons.extend(p.statuses.iter().map(|s| format!("status {s}")));
    let reasons = if reasons.is_empty() {
        "nothing (no failure is retried)".to_owned()
    } else {
        reasons.join(", ")
    };
    let mut second = Vec::new();
    if let Some(t) = p.per_try_timeout {
        second.push(format!("per try {}", show(t)));
    }
    second.push(format!(
        "backoff {}..{}",
        show(p.backoff_base),
        show(p.backoff_max)
    ));
    if p.non_idempotent {
        second.push("non-idempotent requests too".to_owned());
    }
    vec![
        format!("{} attempts, on {reasons}", p.attempts),
        second.join(", "),
    ]
}

/// Clusters as routes reach them: each route's targets in match order, each followed by its
/// fallback chain. Names are the config's (a missing one is kept, and shown as not defined).
fn clusters_in_order(config: &Config) -> Vec<&str> {
    let mut order: Vec<&str> = Vec::new();
    let named = config.routes.iter().flat_map(|r| {
        r.cluster
            .as_deref()
            .into_iter()
            .chain(r.split.iter().flatten().map(|t| t.cluster.as_str()))
    });
    for first in named {
        let mut next = Some(first);
        // A fallback loop (refused by validation) ends at the first name seen twice.
        while let Some(name) = next.filter(|n| !order.contains(n)) {
            order.push(name);
            next = config
                .clusters
                .get(name)
                .and_then(|c| c.fallback.as_deref());
        }
    }
    order
}

fn write_cluster(out: &mut Out, config: &Config, name: &str) {
    let routes: Vec<String> = config
        .routes
        .iter()
        .enumerate()
        .filter(|(_, r)| {
            r.cluster.as_deref() == Some(name)
                || r.split.iter().flatten().any(|t| t.cluster == name)
        })
        .map(|(i, _)| format!("routes[{i}]"))
        .collect();
    let fallback_of: Vec<&str> = config
        .clusters
        .iter()
        .filter(|(_, c)| c.fallback.as_deref() == Some(name))
        .map(|(other, _)| other.as_str())
        .collect();
    let mut users = Vec::new();
    if !routes.is_empty() {
        users.push(format!("used by {}", routes.join(", ")));
    }
    if !fallback_of.is_empty() {
        users.push(format!("fallback of {}", fallback_of.join(", ")));
    }
    let users = users.join("; ");
    let Some(c) = config.clusters.get(name) else {
        out.line(format!("{name}  (NOT DEFINED; {users})"));
        return;
    };
    out.line(format!("{name}  ({users})"));
    out.field("balance", &[balance(c)]);
    out.field("protocol", &[protocol(c)]);
    out.field("endpoints", &endpoint_table(c));
    out.field("health", &health(c));
    out.field("outlier", &outlier(c));
    out.field(
        "retry budget",
        &[format!(
            "{}% of requests + {}/s, at most {} retries and hedges in flight",
            c.retry_budget.percent, c.retry_budget.min_per_second, c.limits.max_retries
        )],
    );
    if let Some(f) = &c.fallback {
        out.field("fallback", std::slice::from_ref(f));
    }
}

fn balance(c: &ClusterConfig) -> String {
    match c.balance {
        BalanceConfig::RoundRobin => "round_robin".to_owned(),
        BalanceConfig::LeastRequest => "least_request".to_owned(),
        BalanceConfig::PeakEwma => "peak_ewma".to_owned(),
        BalanceConfig::Random => "random".to_owned(),
        BalanceConfig::Hash => {
            let key = c.hash_key.as_deref().unwrap_or("(no key)");
            if c.hash_balance_factor == 0.0 {
                format!("hash on {key}")
            } else {
                format!(
                    "hash on {key}, at most {}× the mean load per endpoint",
                    c.hash_balance_factor
                )
            }
        }
    }
}

fn protocol(c: &ClusterConfig) -> String {
    let proto = match c.protocol {
        UpstreamProtocol::Http1 => "http1",
        UpstreamProtocol::H2 => "h2",
    };
    let tls = match &c.tls {
        None => String::new(),
        Some(t) if t.insecure_skip_verify => " over TLS (certificates NOT verified)".to_owned(),
        Some(t) => match &t.sni {
            Some(sni) => format!(" over TLS (sni {sni})"),
            None => " over TLS".to_owned(),
        },
    };
    let rht = c
        .response_header_timeout
        .map(|t| format!(", response head within {t}"))
        .unwrap_or_default();
    format!("{proto}{tls}, connect within {}{rht}", c.connect_timeout)
}

fn endpoint_table(c: &ClusterConfig) -> Vec<String> {
    let addr_w = c
        .endpoints
        .iter()
        .map(|e| e.address().len())
        .chain(std::iter::once("ADDRESS".len()))
        .max()
        .unwrap_or(0);
    let mut rows = vec![format!("{:<addr_w$}  WEIGHT  PRIORITY  ZONE", "ADDRESS")];
    rows.extend(c.endpoints.iter().map(|e| {
        format!(
            "{:<addr_w$}  {:>6}  {:>8}  {}",
            e.address(),
            e.weight(),
            e.priority(),
            e.zone().unwrap_or("-")
        )
    }));
    rows
}

fn health(c: &ClusterConfig) -> Vec<String> {
    let Some(h) = &c.health_check else {
        return vec!["no active checks".to_owned()];
    };
    let probe = match h.kind {
        ProbeKind::Http => format!("{} {}", h.method, h.path),
        ProbeKind::Tcp => "tcp connect".to_owned(),
    };
    vec![
        format!("{probe} every {}, timeout {}", h.interval, h.timeout),
        format!(
            "healthy after {} pass{}, unhealthy after {} failure{}",
            h.healthy_threshold,
            if h.healthy_threshold == 1 { "" } else { "es" },
            h.unhealthy_threshold,
            plural(h.unhealthy_threshold as usize)
        ),
    ]
}

fn outlier(c: &ClusterConfig) -> Vec<String> {
    let o = &c.outlier_detection;
    if !o.enabled {
        return vec!["off".to_owned()];
    }
    let mut when = Vec::new();
    match (o.consecutive_gateway_failures, o.consecutive_5xx) {
        (0, 0) => {}
        (g, 0) => when.push(format!("{g} gateway failures in a row")),
        (0, x) => when.push(format!("{x} 5xx in a row")),
        (g, x) => when.push(format!("{g} gateway failures or {x} 5xx in a row")),
    }
    if o.failure_rate_percent > 0 {
        when.push(format!(
            "{}% failures over {}",
            o.failure_rate_percent, o.window
        ));
    }
    if o.latency_factor > 0.0 {
        when.push(format!("latency over {}× the peers'", o.latency_factor));
    }
    if when.is_empty() {
        return vec!["on, but every trigger is 0: never ejects".to_owned()];
    }
    vec![
        format!("eject on {}", when.join(", ")),
        format!(
            "for {}..{}, at most {}% of endpoints at once",
            o.base_ejection_time, o.max_ejection_time, o.max_ejection_percent
        ),
    ]
}

/// The first earlier route that matches every request route `i` would (conservative: `None`
/// when unsure): validation's shadowing rule.
fn shadowed_by(routes: &[RouteConfig], i: usize) -> Option<usize> {
    let later = &routes.get(i)?.matches;
    routes
        .get(..i)?
        .iter()
        .position(|earlier| crate::config::validate::covers(&earlier.matches, later))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn explain_text(text: &str) -> String {
        let src = crate::config::parse(text, ".".into()).unwrap();
        let d = crate::config::validate(&src.config, std::path::Path::new("."));
        assert!(d.is_ok(), "{:#?}", d.errors);
        explain(&src.config).unwrap()
    }

    const SAMPLE: &str = r#"
[listeners.web]
listen = "127.0.0.1:0"

[[routes]]
name = "api"
match = { host = ["api.example.com", "*.api.example.com"], path_prefix = "/v1/", methods = ["GET", "HEAD"], headers = [{ name = "x-canary", value = "1" }, { name = "x-debug", present = false }] }
split = [{ cluster = "api-v1", weight = 9 }, { cluster = "api-v2", weight = 1 }]
timeout = "5s"
strip_prefix = "/v1"
request_headers = { set = { "x-env" = "prod" }, remove = ["x-internal"] }
retry = { attempts = 3, per_try_timeout = "1s", statuses = [429] }
hedge = { delay = "p95" }

[[routes]]
name = "static"
match = { path_regex = "/assets/.*" }
cluster = "static"
retry = { attempts = 1 }
last_resort = { status = 503, body = "maintenance" }

[[routes]]
name = "rest"
match = { path_prefix = "/" }
cluster = "api-v1"

[[routes]]
name = "old"
match = { path_prefix = "/old/", methods = ["GET"] }
cluster = "api-v1"

[clusters.api-v1]
endpoints = ["127.0.0.1:9001", { address = "127.0.0.1:9002", weight = 3 }, { address = "127.0.0.1:9003", priority = 1 }]
health_check = { path = "/healthz", interval = "5s" }
fallback = "sorry"

[clusters.api-v2]
balance = "least_request"
endpoints = ["127.0.0.1:9011", "127.0.0.1:9012"]
outlier_detection = { enabled = false }

[clusters.static]
balance = "hash"
hash_key = "path"
endpoints = ["127.0.0.1:9021", "127.0.0.1:9022"]
health_check = { kind = "tcp", healthy_threshold = 1 }

[clusters.sorry]
endpoints = ["127.0.0.1:9031"]

[clusters.spare]
endpoints = ["127.0.0.1:9041"]
"#;

    #[test]
    fn the_routing_table_reads_well() {
        insta::assert_snapshot!(explain_text(SAMPLE));
    }

    #[test]
    fn split_percentages_follow_the_weights() {
        let text = explain_text(
            r#"
[listeners.web]
listen = "127.0.0.1:0"
[[routes]]
name = "canary"
split = [{ cluster = "a", weight = 1 }, { cluster = "b", weight = 2 }, { cluster = "c", weight = 0 }, { cluster = "d", weight = 997 }]
[clusters.a]
endpoints = ["127.0.0.1:9001"]
[clusters.b]
endpoints = ["127.0.0.1:9002"]
[clusters.c]
endpoints = ["127.0.0.1:9003"]
[clusters.d]
endpoints = ["127.0.0.1:9004"]
"#,
        );
        let share = |cluster: &str| -> String {
            let line = text
                .lines()
                .find(|l| l.contains(&format!(" {cluster}  weight")))
                .unwrap_or_else(|| panic!("no split line for {cluster} in\n{text}"));
            line.split_whitespace()
                .find(|w| w.ends_with('%'))
                .unwrap()
                .to_owned()
        };
        assert_eq!(share("a"), "0.1%");
        assert_eq!(share("b"), "0.2%");
        assert_eq!(share("c"), "0.0%");
        assert_eq!(share("d"), "99.7%");
        assert!(text.contains("(never chosen)"), "{text}");
    }

    #[test]
    fn percentages_round_half_up_in_integers() {
        assert_eq!(percent(1, 3), "33.3%");
        assert_eq!(percent(2, 3), "66.7%");
        assert_eq!(percent(1, 8), "12.5%");
        assert_eq!(percent(1, 2000), "0.1%");
        assert_eq!(percent(1, 2001), "0.0%");
        assert_eq!(percent(5, 5), "100.0%");
        assert_eq!(percent(u64::from(u32::MAX), u64::from(u32::MAX)), "100.0%");
        assert_eq!(percent(1, 0), "0.0%");
    }

    #[test]
    fn output_is_deterministic_and_a_broken_route_is_an_error() {
        assert_eq!(explain_text(SAMPLE), explain_text(SAMPLE));
        let mut config = crate::config::parse(SAMPLE, ".".into()).unwrap().config;
        config.routes[0].matches.path_regex = Some("(".into());
        let err = explain(&config).unwrap_err();
        assert!(err.starts_with("routes[0]"), "{err}");
    }
}
