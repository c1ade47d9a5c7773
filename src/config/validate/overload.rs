//! Validation of the overload and abuse tables (`config::overload`): the Redis store, rate-limit
//! policies and the routes that name them, `[overload]`, adaptive concurrency, and the listeners'
//! and routes' client limits. Same contract as the parent: every problem, with its path.

use std::collections::HashSet;

use http::HeaderName;

use super::{
    super::{Config, Diagnostics, Scope},
    parse_net,
    resilience::{percent, positive},
};

pub(super) fn check(d: &mut Diagnostics, config: &Config) {
    if let Some(r) = &config.redis {
        if !r.url.starts_with("redis://") {
            d.error(
                "redis.url",
                "must start with redis:// (rediss:// is not supported yet: put Redis on a trusted network or a local stunnel)",
            );
        } else if r.url.len() <= "redis://".len() {
            d.error("redis.url", "names no host");
        }
        positive(d, "redis.timeout", r.timeout);
        positive(d, "redis.connect_timeout", r.connect_timeout);
        if r.instance_ttl.get() < std::time::Duration::from_secs(1) {
            d.error(
                "redis.instance_ttl",
                "must be at least 1s (instances announce themselves every third of it)",
            );
        }
    }

    let mut names = HashSet::new();
    let mut used: HashSet<&str> = HashSet::new();
    for r in &config.routes {
        used.extend(r.rate_limits.iter().map(String::as_str));
    }
    for (i, p) in config.rate_limits.iter().enumerate() {
        let path = format!("rate_limits[{i}]");
        if p.name.is_empty()
            || !p
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            d.error(
                format!("{path}.name"),
                format!("{:?}: use letters, digits, - and _", p.name),
            );
        }
        if !names.insert(p.name.as_str()) {
            d.error(
                format!("{path}.name"),
                format!("{:?} is defined twice", p.name),
            );
        }
        if p.key.is_empty() {
            d.error(
                format!("{path}.key"),
                "at least one part is required (client_ip, header:NAME, route)",
            );
        }
        let mut parts = HashSet::new();
        for (k, part) in p.key.iter().enumerate() {
            let ok = match part.split_once(':') {
                None => matches!(part.as_str(), "client_ip" | "route"),
                Some(("header", name)) => HeaderName::from_bytes(name.as_bytes()).is_ok(),
                Some(_) => false,
            };
            if !ok {
                d.error(
                    format!("{path}.key[{k}]"),
                    format!("{part:?}: want client_ip, route or header:NAME"),
                );
            } else if !parts.insert(part.to_ascii_lowercase()) {
                d.error(
                    format!("{path}.key[{k}]"),
                    format!("{part:?} is listed twice"),
                );
            }
        }
        if p.rate.count == 0 {
            d.error(
                format!("{path}.rate"),
                "must allow at least 1 request per period",
            );
        }
        if p.burst == Some(0) {
            d.error(format!("{path}.burst"), "must be at least 1");
        }
        if p.max_keys == 0 {
            d.error(format!("{path}.max_keys"), "must be at least 1");
        }
        if p.scope == Scope::Shared && config.redis.is_none() {
            d.error(
                format!("{path}.scope"),
                "\"shared\" needs a [redis] table (the shared store)",
            );
        }
        if !used.contains(p.name.as_str()) {
            d.warn(path, format!("{:?} is not used by any route", p.name));
        }
    }

    for (i, r) in config.routes.iter().enumerate() {
        let path = format!("routes[{i}]");
        let mut seen = HashSet::new();
        for (k, name) in r.rate_limits.iter().enumerate() {
            if !names.contains(name.as_str()) {
                d.error(
                    format!("{path}.rate_limits[{k}]"),
                    format!("no rate_limits policy is named {name:?}"),
                );
            } else if !seen.insert(name) {
                d.error(
                    format!("{path}.rate_limits[{k}]"),
                    format!("{name:?} is listed twice"),
                );
            }
        }
        nets(d, &format!("{path}.allow"), &r.allow);
        nets(d, &format!("{path}.deny"), &r.deny);
    }

    let o = &config.overload;
    if o.max_in_flight == 0 {
        d.error("overload.max_in_flight", "must be at least 1");
    }
    percent(
        d,
        "overload.shed_sheddable_percent",
        o.shed_sheddable_percent,
        1,
    );
    percent(d, "overload.shed_normal_percent", o.shed_normal_percent, 1);
    if o.shed_sheddable_percent > o.shed_normal_percent {
        d.error(
            "overload.shed_sheddable_percent",
            format!(
                "{} is above shed_normal_percent ({}): sheddable traffic must go first",
                o.shed_sheddable_percent, o.shed_normal_percent
            ),
        );
    }
    positive(d, "overload.queue_delay_target", o.queue_delay_target);

    for (name, l) in &config.listeners {
        let p = format!("listeners.{name}");
        nets(d, &format!("{p}.allow"), &l.allow);
        nets(d, &format!("{p}.deny"), &l.deny);
        if l.max_connections_per_ip as usize > l.max_connections {
            d.warn(
                format!("{p}.max_connections_per_ip"),
                "above max_connections: only the listener's cap applies",
            );
        }
        if let Some(r) = l.connection_rate_per_ip
            && r.count == 0
        {
            d.error(
                format!("{p}.connection_rate_per_ip"),
                "must allow at least 1 connection per period",
            );
        }
        if l.connection_burst_per_ip == Some(0) {
            d.error(format!("{p}.connection_burst_per_ip"), "must be at least 1");
        }
        if l.connection_burst_per_ip.is_some() && l.connection_rate_per_ip.is_none() {
            d.warn(
                format!("{p}.connection_burst_per_ip"),
                "has no effect without connection_rate_per_ip",
            );
        }
        positive(d, &format!("{p}.write_timeout"), l.write_timeout);
        positive(
            d,
            &format!("{p}.request_body_timeout"),
            l.request_body_timeout,
        );
    }

    for (name, c) in &config.clusters {
        let Some(a) = &c.adaptive_concurrency else {
            continue;
        };
        let p = format!("clusters.{name}.adaptive_concurrency");
        if a.min_limit == 0 {
            d.error(format!("{p}.min_limit"), "must be at least 1");
        }
        if a.min_limit > a.max_limit {
            d.error(
                format!("{p}.min_limit"),
                format!("{} is above max_limit ({})", a.min_limit, a.max_limit),
            );
        }
        if !(a.min_limit..=a.max_limit).contains(&a.initial_limit) {
            d.error(
                format!("{p}.initial_limit"),
                format!("{} is outside min_limit..=max_limit", a.initial_limit),
            );
        }
        if a.buffer_percent > 1000 {
            d.error(format!("{p}.buffer_percent"), "must be at most 1000");
        }
        positive(d, &format!("{p}.sample_window"), a.sample_window);
        if a.min_rtt_interval <= a.sample_window {
            d.error(
                format!("{p}.min_rtt_interval"),
                "must be longer than sample_window",
            );
        }
        if a.max_queue > 0 {
            positive(d, &format!("{p}.queue_timeout"), a.queue_timeout);
        }
        if a.max_limit > c.limits.max_requests {
            d.warn(
                format!("{p}.max_limit"),
                format!(
                    "above limits.max_requests ({}): the static cap stops the limit first",
                    c.limits.max_requests
                ),
            );
        }
    }
}

fn nets(d: &mut Diagnostics, path: &str, list: &[String]) {
    for (i, s) in list.iter().enumerate() {
        if parse_net(s).is_none() {
            d.error(
                format!("{path}[{i}]"),
                format!("{s:?} is not an address or CIDR"),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{OK, check, paths};

    #[test]
    fn a_config_using_every_table_well_is_clean() {
        let d = check(&format!(
            r#"{OK}
[redis]
url = "redis://127.0.0.1:6379"

[[rate_limits]]
name = "per-key"
key = ["header:x-api-key", "route"]
rate = "1000/s"
burst = 100
scope = "shared"

[overload]
max_in_flight = 5000
max_connections = 20000
memory_limit_bytes = 2000000000

[clusters.web.adaptive_concurrency]
max_limit = 500
"#
        )
        .replace(
            "cluster = \"web\"",
            "cluster = \"web\"\nrate_limits = [\"per-key\"]\npriority = \"critical\"\ndeny = [\"10.0.0.0/8\"]",
        ));
        assert!(d.is_ok(), "{:?}", d.errors);
        assert!(d.warnings.is_empty(), "{:?}", d.warnings);
    }

    #[test]
    fn every_overload_problem_is_reported_with_its_path() {
        let d = check(&format!(
            r#"{OK}
[redis]
url = "rediss://db:6379"
timeout = "0s"
instance_ttl = "500ms"

[[rate_limits]]
name = "bad name"
key = ["cookie:x", "client_ip", "client_ip"]
rate = "0/s"
burst = 0
max_keys = 0

[[rate_limits]]
name = "bad name"
key = []
rate = "1/s"

[overload]
max_in_flight = 0
shed_sheddable_percent = 99
shed_normal_percent = 90

[clusters.web.adaptive_concurrency]
min_limit = 10
max_limit = 5
initial_limit = 1
min_rtt_interval = "50ms"
max_queue = 5
queue_timeout = "0s"
"#
        )
        .replace(
            "[listeners.web]",
            "[listeners.web]\nallow = [\"10.0.0.0/33\"]\nconnection_burst_per_ip = 0\nwrite_timeout = \"0s\"",
        )
        .replace(
            "cluster = \"web\"",
            "cluster = \"web\"\nrate_limits = [\"missing\"]\ndeny = [\"nope\"]",
        ));
        let p = paths(&d.errors);
        for expected in [
            "redis.url",
            "redis.timeout",
            "redis.instance_ttl",
            "rate_limits[0].name",
            "rate_limits[0].key[0]",
            "rate_limits[0].key[2]",
            "rate_limits[0].rate",
            "rate_limits[0].burst",
            "rate_limits[0].max_keys",
            "rate_limits[1].name",
            "rate_limits[1].key",
            "routes[0].rate_limits[0]",
            "routes[0].deny[0]",
            "overload.max_in_flight",
            "overload.shed_sheddable_percent",
            "listeners.web.allow[0]",
            "listeners.web.connection_burst_per_ip",
            "listeners.web.write_timeout",
            "clusters.web.adaptive_concurrency.min_limit",
            "clusters.web.adaptive_concurrency.initial_limit",
            "clusters.web.adaptive_concurrency.min_rtt_interval",
            "clusters.web.adaptive_concurrency.queue_timeout",
        ] {
            assert!(p.contains(&expected), "missing {expected} in {p:?}");
        }
    }

    #[test]
    fn a_shared_policy_needs_redis_and_an_unused_one_is_a_warning() {
        let d = check(&format!(
            "{OK}\n[[rate_limits]]\nname = \"p\"\nkey = [\"client_ip\"]\nrate = \"1/s\"\nscope = \"shared\"\n"
        ));
        assert_eq!(paths(&d.errors), vec!["rate_limits[0].scope"]);
        assert_eq!(paths(&d.warnings), vec!["rate_limits[0]"]);
    }
}
