//! Logical validation: every problem in a parsed config, each with its path, never stopping at the first.
//!
//! Syntax and types were checked by serde; this module checks meaning: names that must exist or be
//! unique, addresses, regexes, header names, certificates, DNS, and values that contradict each other.
//! It reads files and DNS (that is what "will this config work" needs) but builds nothing that runs.

use std::{
    collections::{BTreeSet, HashMap, HashSet},
    net::{SocketAddr, ToSocketAddrs},
    path::Path,
    time::SystemTime,
};

use http::{HeaderName, HeaderValue, Method};

use super::{ClusterConfig, Config, Diagnostics, RouteConfig, RouteMatch};

/// Header names a route may not set or remove: they frame the message or belong to the proxy.
const RESERVED_HEADERS: &[&str] = &[
    "connection",
    "content-length",
    "transfer-encoding",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "upgrade",
    "host",
];

/// Checks a config; `base_dir` resolves relative certificate and CA paths.
pub fn validate(config: &Config, base_dir: &Path) -> Diagnostics {
    let mut d = Diagnostics::default();
    let mut addrs: HashMap<SocketAddr, String> = HashMap::new();

    if let Some(addr) = check_addr(&mut d, "admin.listen", &config.admin.listen) {
        addrs.insert(addr, "admin.listen".into());
    }
    if matches!(config.admin.auth_token.as_deref(), Some("")) {
        d.error(
            "admin.auth_token",
            "must not be empty (omit it to disable admin authentication)",
        );
    }
    if config.runtime.workers == Some(0) {
        d.error("runtime.workers", "must be at least 1");
    }
    if tracing_subscriber::EnvFilter::builder()
        .parse(&config.log.level)
        .is_err()
    {
        d.error(
            "log.level",
            format!(
                "{:?} is not a log level or filter (try \"info\" or \"debug\")",
                config.log.level
            ),
        );
    }
    if config.access_log.enabled && config.access_log.path.trim().is_empty() {
        d.error("access_log.path", "must be \"-\" (stdout) or a file path");
    }
    check_http(&mut d, config);
    if config.shutdown.drain_timeout.is_zero() {
        d.warn(
            "shutdown.drain_timeout",
            "0s: in-flight requests are cut at shutdown",
        );
    }

    if config.listeners.is_empty() {
        d.error("listeners", "at least one listener is required");
    }
    for (name, l) in &config.listeners {
        let p = format!("listeners.{name}");
        if let Some(addr) = check_addr(&mut d, &format!("{p}.listen"), &l.listen) {
            // Port 0 (tests) never collides.
            if addr.port() != 0
                && let Some(other) = addrs.insert(addr, format!("{p}.listen"))
            {
                d.error(
                    format!("{p}.listen"),
                    format!("{addr} is already used by {other}"),
                );
            }
        }
        if l.max_connections == 0 {
            d.error(format!("{p}.max_connections"), "must be at least 1");
        }
        if l.header_read_timeout.is_zero() {
            d.error(format!("{p}.header_read_timeout"), "must be more than 0s");
        }
        if l.idle_timeout.is_zero() {
            d.error(format!("{p}.idle_timeout"), "must be more than 0s");
        }
        // hyper's HTTP/1 read buffer cannot be smaller than 8 KiB.
        if l.max_header_bytes < 8192 {
            d.error(format!("{p}.max_header_bytes"), "must be at least 8192");
        }
        if l.max_headers == 0 {
            d.error(format!("{p}.max_headers"), "must be at least 1");
        }
        if l.max_uri_bytes < 16 {
            d.error(format!("{p}.max_uri_bytes"), "must be at least 16");
        } else if l.max_uri_bytes > l.max_header_bytes {
            d.warn(
                format!("{p}.max_uri_bytes"),
                "larger than max_header_bytes: long URIs get 431 before they can get 414",
            );
        }
        if l.http2.max_concurrent_streams == 0 {
            d.error(
                format!("{p}.http2.max_concurrent_streams"),
                "must be at least 1",
            );
        }
        if l.http2.max_header_list_size < 1024 {
            d.error(
                format!("{p}.http2.max_header_list_size"),
                "must be at least 1024",
            );
        }
        if let Some(tls) = &l.tls {
            if tls.certificates.is_empty() {
                d.error(
                    format!("{p}.tls.certificates"),
                    "at least one certificate is required",
                );
            }
            let now = SystemTime::now();
            for (i, c) in tls.certificates.iter().enumerate() {
                let cp = format!("{p}.tls.certificates[{i}]");
                if let Err(problems) = crate::tls::server::load_cert(
                    &base_dir.join(&c.cert),
                    &base_dir.join(&c.key),
                    now,
                ) {
                    for m in problems {
                        d.error(cp.clone(), m);
                    }
                }
            }
        }
    }

    let mut used_clusters = HashSet::new();
    check_routes(&mut d, config, &mut used_clusters);

    // A fallback is used when its cluster is.
    let mut fallbacks: Vec<&str> = used_clusters.iter().copied().collect();
    while let Some(c) = fallbacks.pop() {
        if let Some(f) = config.clusters.get(c).and_then(|c| c.fallback.as_deref())
            && used_clusters.insert(f)
        {
            fallbacks.push(f);
        }
    }
    for (name, c) in &config.clusters {
        check_cluster(&mut d, config, name, c, base_dir);
        resilience::check_cluster(&mut d, config, name, c);
        if !used_clusters.contains(name.as_str()) {
            d.warn(format!("clusters.{name}"), "not used by any route");
        }
    }
    overload::check(&mut d, config);
    logic::check(&mut d, config);
    reload::check(&mut d, config);
    d
}

fn check_addr(d: &mut Diagnostics, path: &str, s: &str) -> Option<SocketAddr> {
    match s.parse::<SocketAddr>() {
        Ok(a) => Some(a),
        Err(_) => {
            d.error(
                path,
                format!("{s:?} is not an IP:port address (e.g. \"0.0.0.0:8080\" or \"[::]:8080\")"),
            );
            None
        }
    }
}

fn check_http(d: &mut Diagnostics, config: &Config) {
    for (i, net) in config.http.trusted_proxies.iter().enumerate() {
        if parse_net(net).is_none() {
            d.error(
                format!("http.trusted_proxies[{i}]"),
                format!("{net:?} is not an IP address or CIDR"),
            );
        }
    }
    let via = config.http.via.as_deref().unwrap_or("palisade");
    if !via.is_empty()
        && !via
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b))
    {
        d.error("http.via", "must be a token (letters, digits, - . _)");
    }
    if HeaderName::from_bytes(config.http.request_id_header.as_bytes()).is_err() {
        d.error(
            "http.request_id_header",
            format!("{:?} is not a header name", config.http.request_id_header),
        );
    }
}

/// An IP network from "10.0.0.0/8" or a single address.
pub fn parse_net(s: &str) -> Option<ipnet::IpNet> {
    s.parse::<ipnet::IpNet>()
        .ok()
        .or_else(|| s.parse::<std::net::IpAddr>().ok().map(ipnet::IpNet::from))
}

fn check_routes<'a>(d: &mut Diagnostics, config: &'a Config, used: &mut HashSet<&'a str>) {
    if config.routes.is_empty() {
        d.warn("routes", "no routes: every request gets 404");
    }
    let mut names = HashSet::new();
    for (i, r) in config.routes.iter().enumerate() {
        let p = format!("routes[{i}]");
        resilience::check_route(d, &p, r);
        if r.name.is_empty() {
            d.error(format!("{p}.name"), "must not be empty");
        } else if !names.insert(r.name.as_str()) {
            d.error(
                format!("{p}.name"),
                format!("duplicate route name {:?}", r.name),
            );
        }
        match (&r.cluster, &r.split) {
            (Some(_), Some(_)) => d.error(&p, "set either `cluster` or `split`, not both"),
            (None, None) => d.error(&p, "needs a `cluster` or a `split`"),
            (Some(c), None) => {
                used.insert(c);
                if !config.clusters.contains_key(c) {
                    d.error(format!("{p}.cluster"), format!("unknown cluster {c:?}"));
                }
            }
            (None, Some(split)) => {
                if split.is_empty() {
                    d.error(format!("{p}.split"), "must name at least one cluster");
                }
                if split.iter().map(|s| u64::from(s.weight)).sum::<u64>() == 0 && !split.is_empty()
                {
                    d.error(
                        format!("{p}.split"),
                        "weights sum to 0: no cluster would ever be chosen",
                    );
                }
                for (j, s) in split.iter().enumerate() {
                    used.insert(&s.cluster);
                    if !config.clusters.contains_key(&s.cluster) {
                        d.error(
                            format!("{p}.split[{j}].cluster"),
                            format!("unknown cluster {:?}", s.cluster),
                        );
                    }
                }
            }
        }
        check_match(d, &p, &r.matches);
        if r.timeout.is_zero() {
            d.error(format!("{p}.timeout"), "must be more than 0s");
        }
        if let Some(prefix) = &r.strip_prefix {
            if !prefix.starts_with('/') {
                d.error(format!("{p}.strip_prefix"), "must start with '/'");
            }
            let covered = r
                .matches
                .path_prefix
                .as_deref()
                .is_some_and(|pp| pp.starts_with(prefix.as_str()))
                || r.matches
                    .path
                    .as_deref()
                    .is_some_and(|pp| pp.starts_with(prefix.as_str()));
            if !covered && r.matches.path_regex.is_none() {
                d.warn(format!("{p}.strip_prefix"), "the route's match does not guarantee this prefix; paths without it are sent unchanged");
            }
        }
        if let Some(h) = &r.host_rewrite
            && (h.is_empty() || HeaderValue::from_str(h).is_err() || h.contains(['/', ' ']))
        {
            d.error(
                format!("{p}.host_rewrite"),
                format!("{h:?} is not a host name"),
            );
        }
        check_rewrite(d, &format!("{p}.request_headers"), &r.request_headers);
        check_rewrite(d, &format!("{p}.response_headers"), &r.response_headers);
        for cluster in route_clusters(r) {
            if let Some(c) = config.clusters.get(cluster) {
                if let Some(rht) = c.response_header_timeout
                    && rht > r.timeout
                {
                    d.error(
                            format!("{p}.timeout"),
                            format!(
                                "{} is shorter than clusters.{cluster}.response_header_timeout ({rht}): the route would always time out first",
                                r.timeout
                            ),
                        );
                }
                if c.connect_timeout > r.timeout {
                    d.error(
                        format!("{p}.timeout"),
                        format!(
                            "{} is shorter than clusters.{cluster}.connect_timeout ({})",
                            r.timeout, c.connect_timeout
                        ),
                    );
                }
            }
        }
    }
    // Shadowing: a route no request can reach because an earlier one matches everything it matches.
    for (i, later) in config.routes.iter().enumerate() {
        if let Some((j, earlier)) = config.routes[..i]
            .iter()
            .enumerate()
            .find(|(_, e)| covers(&e.matches, &later.matches))
        {
            d.warn(
                format!("routes[{i}]"),
                format!(
                    "route {:?} is unreachable: routes[{j}] ({:?}) matches every request it would",
                    later.name, earlier.name
                ),
            );
        }
    }
}

fn route_clusters(r: &RouteConfig) -> Vec<&str> {
    match (&r.cluster, &r.split) {
        (Some(c), _) => vec![c.as_str()],
        (None, Some(s)) => s.iter().map(|t| t.cluster.as_str()).collect(),
        (None, None) => Vec::new(),
    }
}

fn check_match(d: &mut Diagnostics, p: &str, m: &RouteMatch) {
    if let Some(hosts) = &m.host {
        for (k, h) in hosts.as_slice().iter().enumerate() {
            if !valid_host_pattern(h) {
                d.error(
                    format!("{p}.match.host[{k}]"),
                    format!("{h:?} is not a host name or a *.suffix wildcard"),
                );
            }
        }
    }
    let path_kinds = [
        m.path.is_some(),
        m.path_prefix.is_some(),
        m.path_regex.is_some(),
    ]
    .iter()
    .filter(|b| **b)
    .count();
    if path_kinds > 1 {
        d.error(
            format!("{p}.match"),
            "use only one of `path`, `path_prefix`, `path_regex`",
        );
    }
    for (key, v) in [("path", &m.path), ("path_prefix", &m.path_prefix)] {
        if let Some(v) = v
            && !v.starts_with('/')
        {
            d.error(
                format!("{p}.match.{key}"),
                format!("{v:?} must start with '/'"),
            );
        }
    }
    if let Some(re) = &m.path_regex
        && let Err(e) = regex::Regex::new(re)
    {
        d.error(
            format!("{p}.match.path_regex"),
            format!("invalid regex: {}", first_line(&e.to_string())),
        );
    }
    for (k, method) in m.methods.iter().enumerate() {
        if method.is_empty()
            || Method::from_bytes(method.as_bytes()).is_err()
            || method.bytes().any(|b| b.is_ascii_lowercase())
        {
            d.error(
                format!("{p}.match.methods[{k}]"),
                format!("{method:?} is not an HTTP method (methods are case-sensitive: \"GET\")"),
            );
        }
    }
    for (k, h) in m.headers.iter().enumerate() {
        let hp = format!("{p}.match.headers[{k}]");
        if HeaderName::from_bytes(h.name.as_bytes()).is_err() {
            d.error(
                format!("{hp}.name"),
                format!("{:?} is not a header name", h.name),
            );
        }
        let kinds = [h.value.is_some(), h.present.is_some(), h.regex.is_some()]
            .iter()
            .filter(|b| **b)
            .count();
        if kinds != 1 {
            d.error(&hp, "set exactly one of `value`, `present`, `regex`");
        }
        if let Some(re) = &h.regex
            && let Err(e) = regex::Regex::new(re)
        {
            d.error(
                format!("{hp}.regex"),
                format!("invalid regex: {}", first_line(&e.to_string())),
            );
        }
    }
}

fn first_line(s: &str) -> String {
    s.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

fn valid_host_pattern(h: &str) -> bool {
    let name = h.strip_prefix("*.").unwrap_or(h);
    !name.is_empty()
        && !name.contains('*')
        && name.split('.').all(|label| {
            !label.is_empty()
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

fn check_rewrite(d: &mut Diagnostics, p: &str, r: &super::HeaderRewrite) {
    let names = r
        .set
        .keys()
        .map(|n| ("set", n))
        .chain(r.add.keys().map(|n| ("add", n)))
        .chain(r.remove.iter().map(|n| ("remove", n)));
    for (kind, name) in names {
        let lower = name.to_ascii_lowercase();
        if HeaderName::from_bytes(name.as_bytes()).is_err() {
            d.error(
                format!("{p}.{kind}"),
                format!("{name:?} is not a header name"),
            );
        } else if RESERVED_HEADERS.contains(&lower.as_str()) {
            let hint = if lower == "host" {
                " (use the route's `host_rewrite`)"
            } else {
                ""
            };
            d.error(
                format!("{p}.{kind}"),
                format!("{name:?} is managed by the proxy and cannot be rewritten{hint}"),
            );
        }
    }
    for (kind, map) in [("set", &r.set), ("add", &r.add)] {
        for (name, value) in map {
            if HeaderValue::from_str(value).is_err() {
                d.error(
                    format!("{p}.{kind}.{name}"),
                    "value has characters not allowed in a header",
                );
            }
        }
    }
}

/// True if every request matched by `b` is also matched by `a` (conservative: false when unsure).
pub(crate) fn covers(a: &RouteMatch, b: &RouteMatch) -> bool {
    if a.path_regex.is_some() || !a.headers.is_empty() {
        return false;
    }
    let hosts_cover = match (&a.host, &b.host) {
        (None, _) => true,
        (Some(_), None) => false,
        (Some(ah), Some(bh)) => {
            let ah: BTreeSet<String> = ah
                .as_slice()
                .iter()
                .map(|h| h.to_ascii_lowercase())
                .collect();
            bh.as_slice().iter().all(|h| {
                let h = h.to_ascii_lowercase();
                ah.contains(&h)
                    || ah.iter().any(|p| {
                        p.strip_prefix("*.").is_some_and(|suffix| {
                            !h.starts_with("*.")
                                && h.strip_suffix(suffix)
                                    .and_then(|rest| rest.strip_suffix('.'))
                                    .is_some_and(|l| !l.is_empty() && !l.contains('.'))
                        })
                    })
            })
        }
    };
    let methods_cover = a.methods.is_empty()
        || (!b.methods.is_empty() && b.methods.iter().all(|m| a.methods.contains(m)));
    let paths_cover = match (&a.path, &a.path_prefix) {
        (None, None) => true,
        (Some(ap), _) => b.path.as_ref() == Some(ap),
        (None, Some(prefix)) => {
            b.path
                .as_deref()
                .is_some_and(|p| p.starts_with(prefix.as_str()))
                || b.path_prefix
                    .as_deref()
                    .is_some_and(|p| p.starts_with(prefix.as_str()))
        }
    };
    hosts_cover && methods_cover && paths_cover
}

fn check_cluster(
    d: &mut Diagnostics,
    config: &Config,
    name: &str,
    c: &ClusterConfig,
    base_dir: &Path,
) {
    let p = format!("clusters.{name}");
    if name.is_empty()
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
    {
        d.error(
            &p,
            "cluster names may use letters, digits, - _ . only (they become metric labels)",
        );
    }
    if c.endpoints.is_empty() {
        d.error(
            format!("{p}.endpoints"),
            "at least one endpoint is required",
        );
    }
    let mut seen = HashSet::new();
    let mut resolvable = 0usize;
    for (i, e) in c.endpoints.iter().enumerate() {
        let ep = format!("{p}.endpoints[{i}]");
        let addr = e.address();
        if !seen.insert(addr) {
            d.error(&ep, format!("duplicate endpoint {addr:?}"));
        }
        if e.weight() == 0 || e.weight() > 10_000 {
            d.error(
                format!("{ep}.weight"),
                format!("{} must be between 1 and 10000", e.weight()),
            );
        }
        match split_host_port(addr) {
            None => d.error(&ep, format!("{addr:?} is not host:port")),
            Some((host, _port)) => {
                if addr.parse::<SocketAddr>().is_ok() {
                    resolvable += 1;
                } else if !valid_host_pattern(host) || host.starts_with("*.") {
                    d.error(&ep, format!("{host:?} is not a host name"));
                } else {
                    match addr.to_socket_addrs().map(|mut it| it.next().is_some()) {
                        Ok(true) => resolvable += 1,
                        _ => d.warn(
                            &ep,
                            format!("{host:?} does not resolve now (it is retried at run time)"),
                        ),
                    }
                }
            }
        }
    }
    if !c.endpoints.is_empty() && resolvable == 0 {
        d.error(
            format!("{p}.endpoints"),
            "no endpoint resolves to an address: the cluster could not serve",
        );
    }
    match c.balance {
        super::BalanceConfig::Hash => match c.hash_key.as_deref() {
            None => d.error(
                format!("{p}.hash_key"),
                "required when balance = \"hash\" (client_ip, path, header:NAME, cookie:NAME)",
            ),
            Some(k) if !valid_hash_key(k) => {
                d.error(
                    format!("{p}.hash_key"),
                    format!("{k:?} is not one of client_ip, path, header:NAME, cookie:NAME"),
                );
            }
            Some(_) => {}
        },
        _ if c.hash_key.is_some() => {
            d.warn(format!("{p}.hash_key"), "ignored unless balance = \"hash\"");
        }
        _ => {}
    }
    if !(c.hash_balance_factor == 0.0 || (1.0..=100.0).contains(&c.hash_balance_factor)) {
        d.error(
            format!("{p}.hash_balance_factor"),
            "must be 0 (no bound) or between 1.0 and 100",
        );
    }
    for (key, v) in [
        ("connect_timeout", c.connect_timeout),
        ("body_idle_timeout", c.body_idle_timeout),
        ("tunnel_idle_timeout", c.tunnel_idle_timeout),
        ("dns_refresh", c.dns_refresh),
    ] {
        if v.is_zero() {
            d.error(format!("{p}.{key}"), "must be more than 0s");
        }
    }
    if let Some(rht) = c.response_header_timeout
        && rht.is_zero()
    {
        d.error(
            format!("{p}.response_header_timeout"),
            "must be more than 0s (omit it to use the route timeout)",
        );
    }
    if c.pool.idle_timeout.is_zero() && c.pool.max_idle_per_endpoint > 0 {
        d.error(
            format!("{p}.pool.idle_timeout"),
            "must be more than 0s (set max_idle_per_endpoint = 0 to disable pooling)",
        );
    }
    if let Some(tls) = &c.tls {
        if tls.insecure_skip_verify {
            d.warn(
                format!("{p}.tls.insecure_skip_verify"),
                "upstream certificates are NOT verified",
            );
        }
        if let Some(ca) = &tls.ca_file {
            let opts = crate::tls::client::UpstreamTlsOptions {
                ca_file: Some(&base_dir.join(ca)),
                verify: !tls.insecure_skip_verify,
                alpn_h2: c.protocol == super::UpstreamProtocol::H2,
            };
            if let Err(e) = crate::tls::client::client_config(&opts) {
                d.error(format!("{p}.tls.ca_file"), e);
            }
        }
        if let Some(sni) = &tls.sni
            && (!valid_host_pattern(sni) || sni.starts_with("*."))
        {
            d.error(
                format!("{p}.tls.sni"),
                format!("{sni:?} is not a host name"),
            );
        }
    }
    let _ = config;
}

fn valid_hash_key(k: &str) -> bool {
    match k {
        "client_ip" | "path" => true,
        _ => k
            .strip_prefix("header:")
            .or_else(|| k.strip_prefix("cookie:"))
            .is_some_and(|n| !n.is_empty() && HeaderName::from_bytes(n.as_bytes()).is_ok()),
    }
}

/// Splits "host:port" / "[v6]:port"; None without a valid port.
pub fn split_host_port(s: &str) -> Option<(&str, u16)> {
    let (host, port) = s.rsplit_once(':')?;
    let port: u16 = port.parse().ok()?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if host.is_empty() || port == 0 {
        return None;
    }
    Some((host, port))
}

mod logic;
mod overload;
mod reload;
mod resilience;
#[cfg(test)]
mod tests;
