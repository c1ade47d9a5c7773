//! `Router`: which route a request takes — the first one, in file order, whose every condition
//! holds — and `Route`, the compiled route with its targets, deadline and rewrites.
//!
//! This module owns the matching rules (host, path, methods, headers), their compiled form and the
//! host index that keeps matching cheap with many routes. It does not look at the request itself
//! (the caller extracts a [`RouteRequest`] once), resolve cluster names (the snapshot does), draw
//! the random number for a split (the caller passes it, so this stays pure and testable), nor apply
//! rewrites (`rewrite.rs` compiles them; the forwarding code applies them).
//!
//! Rules, chosen to match what nginx and Envoy users expect:
//! - **host**: case-insensitive, any `:port` removed (`[::1]:8080` → `[::1]`), one trailing dot
//!   ignored. A pattern is an exact name or `*.example.com`, which matches exactly one more label
//!   (`a.example.com`, not `example.com`, not `a.b.example.com`). A route with a host condition
//!   never matches a request without a host. An empty list (`host = []`) is no condition, like
//!   `methods`.
//! - **path**: `path` is exact; `path_prefix` is a plain string prefix, so `"/v1/"` does *not*
//!   match `/v1` and `"/v1"` *does* match `/v1beta` (Envoy's `prefix`); `path_regex` must match the
//!   *whole* path. Paths are compared raw (case-sensitive, still percent-encoded, no query).
//! - **methods**: any of them; empty means every method.
//! - **headers**: every condition must hold; `value` = some value equals it exactly (bytes),
//!   `present` = the header is (or is not) there, `regex` = some value matches it entirely.

use std::{collections::HashMap, sync::Arc, time::Duration};

use http::{HeaderMap, HeaderName, Method};

use crate::{
    config::{HeaderMatch, RouteConfig},
    route::rewrite::Rewrite,
    upstream::retry::{Hedge, RetryPolicy},
};

/// What a route is matched on, borrowed from the request (the caller extracts these once).
#[derive(Debug, Clone, Copy)]
pub struct RouteRequest<'a> {
    /// `Host` (HTTP/1) or `:authority` (HTTP/2) as sent: may carry a port and any case.
    pub host: Option<&'a str>,
    /// The path only, without the query.
    pub path: &'a str,
    pub method: &'a Method,
    pub headers: &'a HeaderMap,
}

/// A compiled route: where matching requests go and how they are changed on the way.
#[derive(Debug, Clone)]
pub struct Route {
    pub name: Arc<str>,
    /// Position in the config's `routes` (indexes per-route tables elsewhere, e.g. resolved
    /// clusters).
    pub index: usize,
    /// `(cluster name, weight)`; a plain `cluster = ...` is one entry of weight 1.
    pub targets: Vec<(String, u32)>,
    pub timeout: Duration,
    pub rewrite: Rewrite,
    pub retry: RetryPolicy,
    pub hedge: Option<Hedge>,
    /// The answer when nothing can serve, instead of a bare 503.
    pub last_resort: Option<LastResort>,
}

/// `routes.last_resort`, compiled.
#[derive(Debug, Clone)]
pub struct LastResort {
    pub status: http::StatusCode,
    pub content_type: http::HeaderValue,
    pub body: bytes::Bytes,
}

impl LastResort {
    fn compile(c: &crate::config::LastResortConfig) -> Result<Self, String> {
        Ok(Self {
            status: http::StatusCode::from_u16(c.status)
                .map_err(|_| format!("last_resort.status {} is not a status", c.status))?,
            content_type: http::HeaderValue::from_str(&c.content_type)
                .map_err(|_| "last_resort.content_type is not a header value".to_owned())?,
            body: bytes::Bytes::from(c.body.clone()),
        })
    }
}

impl Route {
    /// Sum of the targets' weights; the caller draws `roll` uniformly in `0..total_weight()`.
    /// Compilation guarantees it is at least 1 and does not overflow.
    pub fn total_weight(&self) -> u32 {
        self.targets
            .iter()
            .fold(0u32, |sum, (_, w)| sum.saturating_add(*w))
    }

    /// Index into `targets` of the cluster for this request. With one target, that one; with a
    /// split, the target whose cumulative-weight interval contains `roll`, so weight-0 targets (an
    /// empty interval) are never chosen. A `roll` beyond the total is reduced modulo it rather than
    /// trusted.
    pub fn pick_target(&self, roll: u32) -> usize {
        let total = self.total_weight();
        if self.targets.len() <= 1 || total == 0 {
            return 0;
        }
        let mut roll = roll % total;
        for (i, (_, weight)) in self.targets.iter().enumerate() {
            if roll < *weight {
                return i;
            }
            roll -= weight;
        }
        // Unreachable: `roll < total` is the sum of the weights walked above.
        0
    }
}

/// Every route of a config, compiled, with a host index over them.
///
/// Routes are looked up by the request's host in two maps (exact names, and wildcard suffixes: the
/// host minus its first label). Routes without a host condition are indexed by path where their
/// path allows it: an exact path in one map, a prefix that spans a whole first segment (`/api/…`)
/// in another, by that segment; the rest (`/`, `/ap`, regexes, no path) stay in one list that every
/// request scans. Each list holds route indexes in increasing order, and lookup walks the (at most
/// five) lists merged by index, so the first route that matches is exactly the first one a linear
/// scan of the file would find, and a config of a thousand routes costs about what ten do.
#[derive(Debug)]
pub struct Router {
    routes: Vec<Route>,
    /// Parallel to `routes`: everything but the host, which the index has already settled.
    matchers: Vec<Matcher>,
    /// Lowercase name without trailing dot → routes listing it.
    exact_hosts: HashMap<Box<str>, Vec<usize>>,
    /// Lowercase `example.com` for `*.example.com` → routes listing that wildcard.
    wildcard_suffixes: HashMap<Box<str>, Vec<usize>>,
    /// Host-less routes with an exact path, by that path.
    any_host_exact: HashMap<Box<str>, Vec<usize>>,
    /// Host-less routes whose prefix spans a whole first segment (`/api/…`), by that segment
    /// (`api`): only a path with that first segment can start with the prefix.
    any_host_segment: HashMap<Box<str>, Vec<usize>>,
    /// The other host-less routes: candidates for every request.
    any_host: Vec<usize>,
    /// Every header some route matches on, lowercase, once each, in first-use order: what the
    /// access log records so a log can be re-routed (`route::whatif`). Empty in the usual case.
    header_names: Vec<HeaderName>,
}

/// Hosts are at most 253 bytes (DNS), so a mixed-case one is lowercased on the stack without
/// allocating; longer ones (which cannot be DNS names but may still be configured) use the heap.
const HOST_BUF: usize = 256;

impl Router {
    /// Compiles the config's routes, in order. Validation has normally refused bad input already;
    /// this still returns `Err` (never panics) for anything that cannot be compiled, naming the
    /// route.
    pub fn compile(routes: &[RouteConfig]) -> Result<Router, String> {
        let mut router = Router {
            routes: Vec::with_capacity(routes.len()),
            matchers: Vec::with_capacity(routes.len()),
            exact_hosts: HashMap::new(),
            wildcard_suffixes: HashMap::new(),
            any_host_exact: HashMap::new(),
            any_host_segment: HashMap::new(),
            any_host: Vec::new(),
            header_names: Vec::new(),
        };
        for (index, config) in routes.iter().enumerate() {
            let context = |e: String| format!("routes[{index}] ({:?}): {e}", config.name);
            let hosts = compile_hosts(config).map_err(context)?;
            router
                .matchers
                .push(Matcher::compile(config).map_err(context)?);
            router.routes.push(Route {
                name: Arc::from(config.name.as_str()),
                index,
                targets: compile_targets(config).map_err(context)?,
                timeout: config.timeout.get(),
                rewrite: Rewrite::compile(config).map_err(context)?,
                retry: RetryPolicy::from_config(&config.retry),
                hedge: config.hedge.as_ref().and_then(Hedge::from_config),
                last_resort: config
                    .last_resort
                    .as_ref()
                    .map(LastResort::compile)
                    .transpose()
                    .map_err(context)?,
            });
            if hosts.is_empty() {
                let list = match router.matchers.last().map(|m| &m.path) {
                    Some(PathMatch::Exact(p)) => {
                        router.any_host_exact.entry(p.clone()).or_default()
                    }
                    Some(PathMatch::Prefix(p)) => match whole_first_segment(p) {
                        Some(seg) => router.any_host_segment.entry(seg.into()).or_default(),
                        None => &mut router.any_host,
                    },
                    _ => &mut router.any_host,
                };
                list.push(index);
            }
            for host in hosts {
                let bucket = match host {
                    HostPattern::Exact(name) => router.exact_hosts.entry(name).or_default(),
                    HostPattern::Wildcard(suffix) => {
                        router.wildcard_suffixes.entry(suffix).or_default()
                    }
                };
                // A route listing one name twice ("a.com", "A.com.") is still one candidate.
                if bucket.last() != Some(&index) {
                    bucket.push(index);
                }
            }
        }
        for condition in router.matchers.iter().flat_map(|m| &m.headers) {
            if !router.header_names.contains(&condition.name) {
                router.header_names.push(condition.name.clone());
            }
        }
        Ok(router)
    }

    /// The header names any route matches on (lowercase, deduplicated, in first-use order); empty
    /// when no route looks at headers.
    pub fn match_header_names(&self) -> &[HeaderName] {
        &self.header_names
    }

    /// The first route in file order whose every condition holds, or `None` (the caller's 404).
    pub fn route(&self, req: &RouteRequest<'_>) -> Option<&Route> {
        let host = req.host.map(normalize_host).filter(|h| !h.is_empty());
        // Host-less candidates by path (the maps are empty, and skipped, in most configs).
        let by_path = if self.any_host_exact.is_empty() {
            &[][..]
        } else {
            self.any_host_exact
                .get(req.path)
                .map_or(&[][..], Vec::as_slice)
        };
        let by_segment = if self.any_host_segment.is_empty() {
            &[][..]
        } else {
            first_segment(req.path)
                .and_then(|seg| self.any_host_segment.get(seg))
                .map_or(&[][..], Vec::as_slice)
        };
        let ok = |i| self.matches_rest(i, req);
        let found = match host {
            // No host: only routes without a host condition can match.
            None => first_in_order([by_path, by_segment, &self.any_host], ok),
            Some(host) => {
                let mut buf: [u8; HOST_BUF];
                let owned: String;
                let host = if !host.bytes().any(|b| b.is_ascii_uppercase()) {
                    host
                } else if host.len() <= HOST_BUF {
                    buf = [0; HOST_BUF];
                    match buf.get_mut(..host.len()) {
                        Some(lower) => {
                            lower.copy_from_slice(host.as_bytes());
                            lower.make_ascii_lowercase();
                            // ASCII lowercasing keeps UTF-8 valid, so the fallback is never taken.
                            std::str::from_utf8(lower).unwrap_or(host)
                        }
                        None => host,
                    }
                } else {
                    owned = host.to_ascii_lowercase();
                    &owned
                };
                let exact = self.exact_hosts.get(host).map_or(&[][..], Vec::as_slice);
                // `*.example.com` matches `a.example.com`: look the host up minus its first label,
                // which must be non-empty (`.example.com` is not one more label).
                let wildcard = match host.split_once('.') {
                    Some((label, suffix)) if !label.is_empty() => self
                        .wildcard_suffixes
                        .get(suffix)
                        .map_or(&[][..], Vec::as_slice),
                    _ => &[][..],
                };
                first_in_order([exact, wildcard, by_path, by_segment, &self.any_host], ok)
            }
        };
        found.and_then(|i| self.routes.get(i))
    }

    /// Every route, in config order (`routes()[i].index == i`).
    pub fn routes(&self) -> &[Route] {
        &self.routes
    }

    fn matches_rest(&self, i: usize, req: &RouteRequest<'_>) -> bool {
        self.matchers.get(i).is_some_and(|m| m.matches(req))
    }
}

/// Returns the first route index, in increasing order over the union of `lists` (each sorted),
/// that `ok` accepts. A route may be in several lists (it names `x.a.com` and `*.a.com`); it is
/// tried once. Walking the lists merged, instead of scanning every route, is what lets the indexes
/// skip routes while keeping first-match-in-file-order exact.
fn first_in_order<const N: usize>(
    mut lists: [&[usize]; N],
    ok: impl Fn(usize) -> bool,
) -> Option<usize> {
    loop {
        let next = lists.iter().filter_map(|l| l.first().copied()).min()?;
        for list in &mut lists {
            if let Some((&head, rest)) = list.split_first()
                && head == next
            {
                *list = rest;
            }
        }
        if ok(next) {
            return Some(next);
        }
    }
}

/// `api` for a prefix `/api/…` (the first segment, when the prefix spans all of it, up to its
/// closing `/`); `None` for `/`, `/api` or anything not starting with `/`.
fn whole_first_segment(prefix: &str) -> Option<&str> {
    let (seg, _) = prefix.strip_prefix('/')?.split_once('/')?;
    Some(seg)
}

/// A request path's first segment (`api` for `/api/users` and for `/api`).
fn first_segment(path: &str) -> Option<&str> {
    let rest = path.strip_prefix('/')?;
    Some(rest.split_once('/').map_or(rest, |(seg, _)| seg))
}

/// The host as routes see it: without a port, without one trailing dot (case is handled by the
/// caller). `[v6]:port` keeps the bracketed literal; a bare IPv6 address (several colons, no
/// brackets) has no port to remove.
fn normalize_host(host: &str) -> &str {
    let name = if host.starts_with('[') {
        host.split_inclusive(']').next().unwrap_or(host)
    } else {
        match host.split_once(':') {
            Some((name, port)) if !port.contains(':') => name,
            _ => host,
        }
    };
    name.strip_suffix('.').unwrap_or(name)
}

/// One compiled host pattern, lowercase and without trailing dot.
#[derive(Debug)]
enum HostPattern {
    Exact(Box<str>),
    /// The part after `*.`.
    Wildcard(Box<str>),
}

fn compile_hosts(config: &RouteConfig) -> Result<Vec<HostPattern>, String> {
    let Some(hosts) = &config.matches.host else {
        return Ok(Vec::new());
    };
    hosts
        .as_slice()
        .iter()
        .map(|pattern| {
            let lower = pattern.to_ascii_lowercase();
            let lower = lower.strip_suffix('.').unwrap_or(&lower);
            let (wildcard, name) = match lower.strip_prefix("*.") {
                Some(suffix) => (true, suffix),
                None => (false, lower),
            };
            // A '*' anywhere else, or nothing to compare, would silently never match: refuse it.
            if name.is_empty() || name.contains('*') || name.starts_with('.') {
                return Err(format!(
                    "match.host {pattern:?} is not a host name or a *.suffix wildcard"
                ));
            }
            Ok(if wildcard {
                HostPattern::Wildcard(name.into())
            } else {
                HostPattern::Exact(name.into())
            })
        })
        .collect()
}

fn compile_targets(config: &RouteConfig) -> Result<Vec<(String, u32)>, String> {
    match (&config.cluster, &config.split) {
        (Some(cluster), None) => Ok(vec![(cluster.clone(), 1)]),
        (None, Some(split)) => {
            let total = split
                .iter()
                .try_fold(0u32, |sum, t| sum.checked_add(t.weight));
            match total {
                None => Err("split weights add up to more than 4294967295".to_owned()),
                // pick_target could only return a target that must never be chosen.
                Some(0) => {
                    Err("split must name at least one cluster with a weight above 0".to_owned())
                }
                Some(_) => Ok(split
                    .iter()
                    .map(|t| (t.cluster.clone(), t.weight))
                    .collect()),
            }
        }
        (Some(_), Some(_)) => Err("set either `cluster` or `split`, not both".to_owned()),
        (None, None) => Err("needs a `cluster` or a `split`".to_owned()),
    }
}

/// A route's conditions other than the host.
#[derive(Debug)]
struct Matcher {
    path: PathMatch,
    methods: Vec<Method>,
    headers: Vec<HeaderCondition>,
}

#[derive(Debug)]
enum PathMatch {
    Any,
    Exact(Box<str>),
    Prefix(Box<str>),
    /// Compiled anchored, so it is a whole-path match.
    Regex(regex::Regex),
}

#[derive(Debug)]
struct HeaderCondition {
    name: HeaderName,
    test: HeaderTest,
}

#[derive(Debug)]
enum HeaderTest {
    Equals(Box<[u8]>),
    Present(bool),
    /// Over bytes, anchored: header values need not be UTF-8. The pattern keeps Unicode mode (so it
    /// means what validation's `regex::Regex` check accepted); a non-UTF-8 byte is matched only by
    /// a byte escape such as `(?-u:\xE9)`, never by `.` or a class.
    Regex(regex::bytes::Regex),
}

impl Matcher {
    fn compile(config: &RouteConfig) -> Result<Matcher, String> {
        let m = &config.matches;
        let path = match (&m.path, &m.path_prefix, &m.path_regex) {
            (None, None, None) => PathMatch::Any,
            (Some(p), None, None) => PathMatch::Exact(p.as_str().into()),
            (None, Some(p), None) => PathMatch::Prefix(p.as_str().into()),
            (None, None, Some(re)) => PathMatch::Regex(
                anchored(re, regex::Regex::new)
                    .map_err(|e| format!("match.path_regex: invalid regex: {e}"))?,
            ),
            _ => {
                return Err("match: use only one of `path`, `path_prefix`, `path_regex`".to_owned());
            }
        };
        let methods = m
            .methods
            .iter()
            .map(|s| {
                Method::from_bytes(s.as_bytes())
                    .map_err(|_| format!("match.methods: {s:?} is not an HTTP method"))
            })
            .collect::<Result<_, _>>()?;
        let headers = m
            .headers
            .iter()
            .map(HeaderCondition::compile)
            .collect::<Result<_, _>>()?;
        Ok(Matcher {
            path,
            methods,
            headers,
        })
    }

    /// Cheapest test first: method, then path, then headers (hash lookups, maybe a regex).
    fn matches(&self, req: &RouteRequest<'_>) -> bool {
        (self.methods.is_empty() || self.methods.contains(req.method))
            && match &self.path {
                PathMatch::Any => true,
                PathMatch::Exact(p) => req.path == &**p,
                PathMatch::Prefix(p) => req.path.starts_with(&**p),
                PathMatch::Regex(re) => re.is_match(req.path),
            }
            && self.headers.iter().all(|h| h.matches(req.headers))
    }
}

impl HeaderCondition {
    fn compile(h: &HeaderMatch) -> Result<HeaderCondition, String> {
        let name = HeaderName::from_bytes(h.name.as_bytes())
            .map_err(|_| format!("match.headers: {:?} is not a header name", h.name))?;
        let test = match (&h.value, h.present, &h.regex) {
            (Some(v), None, None) => HeaderTest::Equals(v.as_bytes().into()),
            (None, Some(p), None) => HeaderTest::Present(p),
            (None, None, Some(re)) => HeaderTest::Regex(
                anchored(re, regex::bytes::Regex::new)
                    .map_err(|e| format!("match.headers {:?}: invalid regex: {e}", h.name))?,
            ),
            _ => {
                return Err(format!(
                    "match.headers {:?}: set exactly one of `value`, `present`, `regex`",
                    h.name
                ));
            }
        };
        Ok(HeaderCondition { name, test })
    }

    fn matches(&self, headers: &HeaderMap) -> bool {
        match &self.test {
            HeaderTest::Present(present) => headers.contains_key(&self.name) == *present,
            HeaderTest::Equals(want) => headers
                .get_all(&self.name)
                .iter()
                .any(|v| v.as_bytes() == &**want),
            HeaderTest::Regex(re) => headers
                .get_all(&self.name)
                .iter()
                .any(|v| re.is_match(v.as_bytes())),
        }
    }
}

/// Compiles `re` so that it must match the whole input: `^(?:re)$`.
///
/// The pattern is first compiled on its own, so that an invalid one cannot become valid by wrapping
/// (`a)|(b` would). A valid pattern that ends inside a verbose-mode comment (`(?x)a # note`) would
/// swallow the closing `)$`; a newline ends the comment, so that form is tried next.
fn anchored<R>(re: &str, build: impl Fn(&str) -> Result<R, regex::Error>) -> Result<R, String> {
    build(re).map_err(|e| first_line(&e.to_string()))?;
    build(&format!("^(?:{re})$"))
        .or_else(|e| build(&format!("^(?:{re}\n)$")).map_err(|_| first_line(&e.to_string())))
}

/// regex's messages draw the pattern over several lines; one line reads better in a problem list.
fn first_line(s: &str) -> String {
    s.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;
    use proptest::prelude::*;

    use super::*;
    use crate::config::{Dur, HeaderRewrite, OneOrMany, RouteMatch, SplitTarget};

    fn route(name: &str, m: RouteMatch) -> RouteConfig {
        RouteConfig {
            name: name.into(),
            matches: m,
            cluster: Some("c".into()),
            split: None,
            timeout: Dur::secs(15),
            strip_prefix: None,
            host_rewrite: None,
            request_headers: HeaderRewrite::default(),
            response_headers: HeaderRewrite::default(),
            retry: crate::config::RetryConfig::default(),
            hedge: None,
            last_resort: None,
            rate_limits: Vec::new(),
            priority: crate::config::RoutePriority::Normal,
            allow: Vec::new(),
            deny: Vec::new(),
            max_request_body_bytes: None,
        }
    }

    fn hosts(h: &[&str]) -> RouteMatch {
        RouteMatch {
            host: Some(OneOrMany::Many(h.iter().map(|s| (*s).to_owned()).collect())),
            ..RouteMatch::default()
        }
    }

    fn header(
        name: &str,
        value: Option<&str>,
        present: Option<bool>,
        regex: Option<&str>,
    ) -> HeaderMatch {
        HeaderMatch {
            name: name.into(),
            value: value.map(Into::into),
            present,
            regex: regex.map(Into::into),
        }
    }

    /// A request builder so tests read as "this host, this path".
    struct Req {
        host: Option<&'static str>,
        path: &'static str,
        method: Method,
        headers: HeaderMap,
    }

    fn req(host: Option<&'static str>, path: &'static str) -> Req {
        Req {
            host,
            path,
            method: Method::GET,
            headers: HeaderMap::new(),
        }
    }

    impl Req {
        fn method(mut self, m: Method) -> Self {
            self.method = m;
            self
        }
        fn header(mut self, name: &'static str, value: &'static str) -> Self {
            self.headers.append(name, HeaderValue::from_static(value));
            self
        }
        fn as_route_request(&self) -> RouteRequest<'_> {
            RouteRequest {
                host: self.host,
                path: self.path,
                method: &self.method,
                headers: &self.headers,
            }
        }
    }

    /// The name of the route `r` takes, or None.
    fn routed(router: &Router, r: &Req) -> Option<String> {
        router
            .route(&r.as_route_request())
            .map(|route| route.name.to_string())
    }

    fn one(m: RouteMatch) -> Router {
        Router::compile(&[route("r", m)]).unwrap()
    }

    fn hits(router: &Router, r: &Req) -> bool {
        routed(router, r).is_some()
    }

    #[test]
    fn host_ignores_port_case_and_trailing_dot() {
        let r = one(hosts(&["API.example.com"]));
        for h in [
            "api.example.com",
            "API.EXAMPLE.COM",
            "api.example.com:8080",
            "Api.Example.Com.:443",
            "api.example.com.",
        ] {
            assert!(hits(&r, &req(Some(h), "/")), "{h} should match");
        }
        for h in [
            "example.com",
            "api.example.org",
            "api.example.com.evil",
            "xapi.example.com",
            "api.example.com..",
        ] {
            assert!(!hits(&r, &req(Some(h), "/")), "{h} should not match");
        }
        // A pattern written with a trailing dot is the same name.
        let dotted = one(hosts(&["api.example.com."]));
        assert!(hits(&dotted, &req(Some("api.example.com:80"), "/")));
    }

    #[test]
    fn long_mixed_case_hosts_are_lowercased_too() {
        let long = format!("{}.example.com", "a".repeat(300));
        let r = Router::compile(&[route("r", hosts(&[long.as_str()]))]).unwrap();
        let upper: &'static str = Box::leak(long.to_ascii_uppercase().into_boxed_str());
        assert!(hits(&r, &req(Some(upper), "/")));
        let just_fits: &'static str =
            Box::leak(format!("{}.COM", "B".repeat(HOST_BUF - 4)).into_boxed_str());
        assert_eq!(just_fits.len(), HOST_BUF);
        let r = Router::compile(&[route("r", hosts(&[&just_fits.to_ascii_lowercase()]))]).unwrap();
        assert!(hits(&r, &req(Some(just_fits), "/")));
    }

    #[test]
    fn ipv6_literal_keeps_its_colons() {
        assert_eq!(normalize_host("[::1]:8080"), "[::1]");
        assert_eq!(normalize_host("[::1]"), "[::1]");
        assert_eq!(normalize_host("[2001:db8::1]:443"), "[2001:db8::1]");
        assert_eq!(
            normalize_host("::1"),
            "::1",
            "bare IPv6 has no port to strip"
        );
        assert_eq!(normalize_host("example.com:80"), "example.com");
        assert_eq!(normalize_host("example.com."), "example.com");
        assert_eq!(normalize_host("127.0.0.1:80"), "127.0.0.1");
        let r = one(hosts(&["[::1]"]));
        assert!(hits(&r, &req(Some("[::1]:8080"), "/")));
        assert!(hits(&r, &req(Some("[::1]"), "/")));
        assert!(!hits(&r, &req(Some("[::2]:8080"), "/")));
        // Cutting at the first colon would leave "[", at the last "[::1]" only by luck of the port.
        let cut = one(hosts(&["["]));
        assert!(!hits(&cut, &req(Some("[::1]:8080"), "/")));
        assert!(!hits(&cut, &req(Some("[::1]"), "/")));
    }

    #[test]
    fn wildcard_matches_exactly_one_more_label() {
        let r = one(hosts(&["*.example.com"]));
        for h in ["a.example.com", "A.Example.COM:8443", "a-b.example.com."] {
            assert!(hits(&r, &req(Some(h), "/")), "{h} should match");
        }
        for h in [
            "example.com",
            "a.b.example.com",
            ".example.com",
            "aexample.com",
            "a.example.com.x",
        ] {
            assert!(!hits(&r, &req(Some(h), "/")), "{h} should not match");
        }
    }

    #[test]
    fn host_condition_needs_a_host() {
        let r = one(hosts(&["example.com"]));
        assert!(!hits(&r, &req(None, "/")));
        assert!(!hits(&r, &req(Some(""), "/")));
        assert!(!hits(&r, &req(Some(":80"), "/")));
        let any = one(RouteMatch::default());
        assert!(hits(&any, &req(None, "/")));
        assert!(hits(&any, &req(Some("whatever"), "/")));
        let empty_list = one(hosts(&[]));
        assert!(
            hits(&empty_list, &req(None, "/")),
            "host = [] is no condition, like methods = []"
        );
    }

    #[test]
    fn one_of_several_hosts() {
        let r = one(hosts(&["a.com", "*.b.com"]));
        assert!(hits(&r, &req(Some("a.com"), "/")));
        assert!(hits(&r, &req(Some("x.b.com"), "/")));
        assert!(!hits(&r, &req(Some("b.com"), "/")));
        assert!(!hits(&r, &req(Some("x.a.com"), "/")));
    }

    #[test]
    fn exact_path() {
        let r = one(RouteMatch {
            path: Some("/health".into()),
            ..RouteMatch::default()
        });
        assert!(hits(&r, &req(None, "/health")));
        assert!(!hits(&r, &req(None, "/health/")));
        assert!(!hits(&r, &req(None, "/healthz")));
        assert!(!hits(&r, &req(None, "/Health")));
    }

    #[test]
    fn prefix_is_a_plain_string_prefix() {
        let r = one(RouteMatch {
            path_prefix: Some("/v1/".into()),
            ..RouteMatch::default()
        });
        assert!(hits(&r, &req(None, "/v1/")));
        assert!(hits(&r, &req(None, "/v1/users")));
        assert!(
            !hits(&r, &req(None, "/v1")),
            "like Envoy's prefix, \"/v1/\" does not match \"/v1\""
        );
        let r = one(RouteMatch {
            path_prefix: Some("/v1".into()),
            ..RouteMatch::default()
        });
        assert!(hits(&r, &req(None, "/v1")));
        assert!(
            hits(&r, &req(None, "/v1beta")),
            "no segment boundary for matching"
        );
        assert!(!hits(&r, &req(None, "/V1")));
    }

    #[test]
    fn regex_must_match_the_whole_path() {
        let r = one(RouteMatch {
            path_regex: Some("/users/[0-9]+".into()),
            ..RouteMatch::default()
        });
        assert!(hits(&r, &req(None, "/users/42")));
        assert!(
            !hits(&r, &req(None, "/users/42/posts")),
            "anchored at the end"
        );
        assert!(
            !hits(&r, &req(None, "/api/users/42")),
            "anchored at the start"
        );
        // Alternation must not escape the anchors: ^a|b$ would match "xa..." unanchored.
        let alt = one(RouteMatch {
            path_regex: Some("/a|/b".into()),
            ..RouteMatch::default()
        });
        assert!(hits(&alt, &req(None, "/a")));
        assert!(hits(&alt, &req(None, "/b")));
        assert!(!hits(&alt, &req(None, "/ab")));
        assert!(!hits(&alt, &req(None, "/a/x")));
        assert!(!hits(&alt, &req(None, "/x/b")));
    }

    #[test]
    fn regex_anchoring_survives_verbose_comments_and_refuses_bad_patterns() {
        let verbose = one(RouteMatch {
            path_regex: Some("(?x) /v [0-9]+ # a version".into()),
            ..RouteMatch::default()
        });
        assert!(hits(&verbose, &req(None, "/v2")));
        assert!(!hits(&verbose, &req(None, "/v2/x")));
        // Invalid alone, valid once wrapped: must still be refused.
        let sneaky = Router::compile(&[route(
            "r",
            RouteMatch {
                path_regex: Some("/a)|(/b".into()),
                ..RouteMatch::default()
            },
        )]);
        assert!(sneaky.is_err());
        let err = Router::compile(&[
            route("ok", RouteMatch::default()),
            route(
                "bad",
                RouteMatch {
                    path_regex: Some("(".into()),
                    ..RouteMatch::default()
                },
            ),
        ])
        .unwrap_err();
        assert!(
            err.starts_with("routes[1] (\"bad\"): match.path_regex"),
            "{err}"
        );
        assert!(!err.contains('\n'), "{err}");
    }

    #[test]
    fn methods_are_any_of() {
        let r = one(RouteMatch {
            methods: vec!["GET".into(), "HEAD".into()],
            ..RouteMatch::default()
        });
        assert!(hits(&r, &req(None, "/")));
        assert!(hits(&r, &req(None, "/").method(Method::HEAD)));
        assert!(!hits(&r, &req(None, "/").method(Method::POST)));
        let custom = one(RouteMatch {
            methods: vec!["PURGE".into()],
            ..RouteMatch::default()
        });
        assert!(hits(
            &custom,
            &req(None, "/").method(Method::from_bytes(b"PURGE").unwrap())
        ));
        assert!(!hits(&custom, &req(None, "/")));
    }

    #[test]
    fn header_equals_some_value_exactly() {
        let r = one(RouteMatch {
            headers: vec![header("X-Canary", Some("yes"), None, None)],
            ..RouteMatch::default()
        });
        assert!(hits(&r, &req(None, "/").header("x-canary", "yes")));
        assert!(
            hits(
                &r,
                &req(None, "/")
                    .header("x-canary", "no")
                    .header("x-canary", "yes")
            ),
            "any value"
        );
        assert!(
            !hits(&r, &req(None, "/").header("x-canary", "Yes")),
            "values are case-sensitive"
        );
        assert!(!hits(&r, &req(None, "/").header("x-canary", "yes ")));
        assert!(
            !hits(&r, &req(None, "/").header("x-canary", "yes, no")),
            "not list-split"
        );
        assert!(!hits(&r, &req(None, "/")));
    }

    #[test]
    fn header_present_and_absent() {
        let present = one(RouteMatch {
            headers: vec![header("x-debug", None, Some(true), None)],
            ..RouteMatch::default()
        });
        assert!(hits(&present, &req(None, "/").header("x-debug", "")));
        assert!(!hits(&present, &req(None, "/")));
        let absent = one(RouteMatch {
            headers: vec![header("x-debug", None, Some(false), None)],
            ..RouteMatch::default()
        });
        assert!(!hits(&absent, &req(None, "/").header("x-debug", "1")));
        assert!(hits(&absent, &req(None, "/").header("x-other", "1")));
    }

    #[test]
    fn header_regex_fully_matches_some_value() {
        let r = one(RouteMatch {
            headers: vec![header("x-user", None, None, Some("[0-9]+"))],
            ..RouteMatch::default()
        });
        assert!(hits(&r, &req(None, "/").header("x-user", "123")));
        assert!(hits(
            &r,
            &req(None, "/").header("x-user", "abc").header("x-user", "7")
        ));
        assert!(
            !hits(&r, &req(None, "/").header("x-user", "12a")),
            "anchored"
        );
        assert!(
            !hits(&r, &req(None, "/").header("x-user", "a12")),
            "anchored"
        );
        assert!(!hits(&r, &req(None, "/")));
        // Non-UTF-8 values (obs-text) are matched as bytes, neither skipped nor panicked on:
        // Unicode classes such as `.` do not match a lone 0xE9, a byte escape does.
        let mut h = HeaderMap::new();
        h.insert("x-user", HeaderValue::from_bytes(b"caf\xe9").unwrap());
        let m = Method::GET;
        let rr = RouteRequest {
            host: None,
            path: "/",
            method: &m,
            headers: &h,
        };
        let dot = one(RouteMatch {
            headers: vec![header("x-user", None, None, Some("caf.*"))],
            ..RouteMatch::default()
        });
        assert!(dot.route(&rr).is_none());
        let byte = one(RouteMatch {
            headers: vec![header("x-user", None, None, Some(r"caf(?-u:\xE9)"))],
            ..RouteMatch::default()
        });
        assert!(byte.route(&rr).is_some());
    }

    #[test]
    fn match_header_names_are_lowercase_deduplicated_in_first_use_order() {
        let router = Router::compile(&[
            route("plain", RouteMatch::default()),
            route(
                "canary",
                RouteMatch {
                    headers: vec![
                        header("X-Canary", Some("1"), None, None),
                        header("x-canary", None, Some(true), None),
                    ],
                    ..RouteMatch::default()
                },
            ),
            route(
                "beta",
                RouteMatch {
                    headers: vec![
                        header("X-Beta", None, None, Some("y.*")),
                        header("X-CANARY", None, Some(false), None),
                    ],
                    ..RouteMatch::default()
                },
            ),
        ])
        .unwrap();
        let names: Vec<&str> = router
            .match_header_names()
            .iter()
            .map(HeaderName::as_str)
            .collect();
        assert_eq!(names, ["x-canary", "x-beta"]);
        let none = one(hosts(&["a.com"]));
        assert!(none.match_header_names().is_empty());
    }

    #[test]
    fn every_condition_must_hold() {
        let r = one(RouteMatch {
            host: Some(OneOrMany::One("a.com".into())),
            path_prefix: Some("/api".into()),
            methods: vec!["POST".into()],
            headers: vec![
                header("x-a", Some("1"), None, None),
                header("x-b", None, Some(false), None),
            ],
            ..RouteMatch::default()
        });
        let full = || {
            req(Some("a.com"), "/api/x")
                .method(Method::POST)
                .header("x-a", "1")
        };
        assert!(hits(&r, &full()));
        assert!(!hits(
            &r,
            &req(Some("b.com"), "/api/x")
                .method(Method::POST)
                .header("x-a", "1")
        ));
        assert!(!hits(
            &r,
            &req(Some("a.com"), "/x")
                .method(Method::POST)
                .header("x-a", "1")
        ));
        assert!(!hits(&r, &req(Some("a.com"), "/api/x").header("x-a", "1")));
        assert!(!hits(
            &r,
            &req(Some("a.com"), "/api/x").method(Method::POST)
        ));
        assert!(!hits(&r, &full().header("x-b", "1")));
    }

    #[test]
    fn first_match_in_file_order_wins_across_index_buckets() {
        let router = Router::compile(&[
            route(
                "catch-api",
                RouteMatch {
                    path_prefix: Some("/api".into()),
                    ..RouteMatch::default()
                },
            ),
            route("wild", hosts(&["*.example.com"])),
            route("exact", hosts(&["www.example.com"])),
            route("fallback", RouteMatch::default()),
        ])
        .unwrap();
        assert_eq!(
            routed(&router, &req(Some("www.example.com"), "/api/x")).as_deref(),
            Some("catch-api")
        );
        assert_eq!(
            routed(&router, &req(Some("www.example.com"), "/")).as_deref(),
            Some("wild")
        );
        assert_eq!(
            routed(&router, &req(Some("example.com"), "/")).as_deref(),
            Some("fallback")
        );
        assert_eq!(
            routed(&router, &req(None, "/")).as_deref(),
            Some("fallback")
        );
        let exact_first = Router::compile(&[
            route("exact", hosts(&["www.example.com"])),
            route("wild", hosts(&["*.example.com"])),
        ])
        .unwrap();
        assert_eq!(
            routed(&exact_first, &req(Some("WWW.example.com"), "/")).as_deref(),
            Some("exact")
        );
        assert_eq!(
            routed(&exact_first, &req(Some("api.example.com"), "/")).as_deref(),
            Some("wild")
        );
    }

    #[test]
    fn no_match_is_none() {
        let router = Router::compile(&[
            route("a", hosts(&["a.com"])),
            route(
                "b",
                RouteMatch {
                    path: Some("/b".into()),
                    ..RouteMatch::default()
                },
            ),
        ])
        .unwrap();
        assert_eq!(routed(&router, &req(Some("c.com"), "/c")), None);
        assert_eq!(
            routed(&Router::compile(&[]).unwrap(), &req(Some("a.com"), "/")),
            None
        );
    }

    #[test]
    fn routes_keep_config_order_and_settings() {
        let mut split = route("s", RouteMatch::default());
        split.cluster = None;
        split.split = Some(vec![
            SplitTarget {
                cluster: "a".into(),
                weight: 90,
            },
            SplitTarget {
                cluster: "b".into(),
                weight: 10,
            },
        ]);
        split.timeout = Dur::millis(250);
        let router = Router::compile(&[route("first", hosts(&["x.com"])), split]).unwrap();
        let routes = router.routes();
        assert_eq!(routes.len(), 2);
        assert_eq!((&*routes[0].name, routes[0].index), ("first", 0));
        assert_eq!(routes[0].targets, [("c".to_owned(), 1)]);
        assert_eq!(routes[1].index, 1);
        assert_eq!(routes[1].timeout, Duration::from_millis(250));
        assert_eq!(
            routes[1].targets,
            [("a".to_owned(), 90), ("b".to_owned(), 10)]
        );
        assert_eq!(routes[1].total_weight(), 100);
    }

    fn split_route(weights: &[u32]) -> Route {
        let mut r = route("s", RouteMatch::default());
        r.cluster = None;
        r.split = Some(
            weights
                .iter()
                .enumerate()
                .map(|(i, w)| SplitTarget {
                    cluster: format!("c{i}"),
                    weight: *w,
                })
                .collect(),
        );
        let router = Router::compile(&[r]).unwrap();
        router.routes()[0].clone()
    }

    #[test]
    fn split_picks_by_roll_and_never_a_zero_weight_target() {
        let r = split_route(&[0, 3, 0, 1, 0]);
        assert_eq!(r.total_weight(), 4);
        assert_eq!([0, 1, 2, 3].map(|roll| r.pick_target(roll)), [1, 1, 1, 3]);
        for roll in 0..1000 {
            let t = r.pick_target(roll);
            assert!(t == 1 || t == 3, "roll {roll} chose weight-0 target {t}");
        }
        let single = Router::compile(&[route("r", RouteMatch::default())]).unwrap();
        assert_eq!(single.routes()[0].total_weight(), 1);
        assert_eq!(single.routes()[0].pick_target(0), 0);
        assert_eq!(single.routes()[0].pick_target(u32::MAX), 0);
        assert_eq!(split_route(&[5]).pick_target(4), 0);
        // Proportions follow the weights when rolls are uniform.
        let r = split_route(&[1, 2, 7]);
        let mut counts = [0; 3];
        for roll in 0..r.total_weight() {
            counts[r.pick_target(roll)] += 1;
        }
        assert_eq!(counts, [1, 2, 7]);
    }

    #[test]
    fn compile_refuses_what_cannot_work() {
        let bad = |m: RouteMatch| Router::compile(&[route("r", m)]).is_err();
        assert!(bad(RouteMatch {
            path: Some("/a".into()),
            path_prefix: Some("/a".into()),
            ..RouteMatch::default()
        }));
        assert!(bad(RouteMatch {
            methods: vec!["G T".into()],
            ..RouteMatch::default()
        }));
        assert!(bad(hosts(&[""])));
        assert!(bad(hosts(&["*."])));
        assert!(bad(hosts(&["a.*.com"])));
        assert!(bad(hosts(&["*.*.com"])));
        assert!(bad(RouteMatch {
            headers: vec![header("bad name", Some("1"), None, None)],
            ..RouteMatch::default()
        }));
        assert!(bad(RouteMatch {
            headers: vec![header("x", Some("1"), Some(true), None)],
            ..RouteMatch::default()
        }));
        assert!(bad(RouteMatch {
            headers: vec![header("x", None, None, None)],
            ..RouteMatch::default()
        }));
        assert!(bad(RouteMatch {
            headers: vec![header("x", None, None, Some("["))],
            ..RouteMatch::default()
        }));
        let mut neither = route("r", RouteMatch::default());
        neither.cluster = None;
        assert!(Router::compile(&[neither.clone()]).is_err());
        neither.split = Some(vec![SplitTarget {
            cluster: "a".into(),
            weight: 0,
        }]);
        assert!(
            Router::compile(&[neither.clone()]).is_err(),
            "all weights 0"
        );
        neither.split = Some(vec![]);
        assert!(Router::compile(&[neither.clone()]).is_err(), "empty split");
        neither.split = Some(vec![
            SplitTarget {
                cluster: "a".into(),
                weight: u32::MAX,
            },
            SplitTarget {
                cluster: "b".into(),
                weight: 1,
            },
        ]);
        assert!(Router::compile(&[neither.clone()]).is_err(), "overflow");
        neither.cluster = Some("c".into());
        neither.split = Some(vec![SplitTarget {
            cluster: "a".into(),
            weight: 1,
        }]);
        assert!(Router::compile(&[neither]).is_err(), "both");
    }

    // ---- The index against a naive linear matcher written independently from the rules. ----

    /// The rules, spelled out the slow and obvious way, straight from the config.
    fn naive(routes: &[RouteConfig], r: &RouteRequest<'_>) -> Option<usize> {
        routes
            .iter()
            .position(|route| naive_matches(&route.matches, r))
    }

    fn naive_matches(m: &RouteMatch, r: &RouteRequest<'_>) -> bool {
        let host_ok = match m.host.as_ref().map(OneOrMany::as_slice) {
            None | Some([]) => true,
            Some(patterns) => r.host.is_some_and(|raw| {
                let raw = raw.to_ascii_lowercase();
                let no_port = if raw.starts_with('[') {
                    match raw.find(']') {
                        Some(end) => raw[..=end].to_owned(),
                        None => raw.clone(),
                    }
                } else if raw.matches(':').count() == 1 {
                    raw.split(':').next().unwrap_or_default().to_owned()
                } else {
                    raw
                };
                let host = no_port.strip_suffix('.').unwrap_or(&no_port).to_owned();
                patterns.iter().any(|p| {
                    let p = p.to_ascii_lowercase();
                    let p = p.strip_suffix('.').unwrap_or(&p);
                    match p.strip_prefix("*.") {
                        Some(suffix) => {
                            let dotted = format!(".{suffix}");
                            host.ends_with(&dotted) && {
                                let label = &host[..host.len() - dotted.len()];
                                !label.is_empty() && !label.contains('.')
                            }
                        }
                        None => host == p,
                    }
                })
            }),
        };
        let full = |re: &str, s: &str| {
            regex::Regex::new(&format!("^(?:{re})$"))
                .unwrap()
                .is_match(s)
        };
        let path_ok = if let Some(p) = &m.path {
            r.path == p
        } else if let Some(p) = &m.path_prefix {
            r.path.starts_with(p.as_str())
        } else if let Some(re) = &m.path_regex {
            full(re, r.path)
        } else {
            true
        };
        let methods_ok = m.methods.is_empty() || m.methods.iter().any(|x| x == r.method.as_str());
        let headers_ok = m.headers.iter().all(|h| {
            let name = h.name.to_ascii_lowercase();
            let values: Vec<&str> = r
                .headers
                .get_all(name.as_str())
                .iter()
                .map(|v| v.to_str().unwrap())
                .collect();
            match (&h.value, h.present, &h.regex) {
                (Some(v), _, _) => values.contains(&v.as_str()),
                (_, Some(p), _) => values.is_empty() != p,
                (_, _, Some(re)) => values.iter().any(|v| full(re, v)),
                _ => unreachable!(),
            }
        });
        host_ok && path_ok && methods_ok && headers_ok
    }

    const HOST_PATTERNS: &[&str] = &[
        "a.com",
        "A.Com.",
        "b.com",
        "*.a.com",
        "*.A.COM",
        "x.a.com",
        "*.com",
        "*.x.a.com",
        "[::1]",
        "10.0.0.1",
    ];
    const REQUEST_HOSTS: &[&str] = &[
        "a.com",
        "A.COM:80",
        "a.com.",
        "b.com",
        "x.a.com",
        "X.A.com:8443",
        "y.a.com",
        "z.x.a.com",
        ".a.com",
        "com",
        "",
        ":80",
        "[::1]:8080",
        "[::1]",
        "::1",
        "10.0.0.1:80",
        "c.org",
    ];
    const PATHS: &[&str] = &["/", "/v1", "/v1/", "/v1/x", "/v10", "/v2/x", "/x"];
    const PATH_REGEXES: &[&str] = &["/v[0-9]+", "/v1/.*", ".*x", "/", "/v1/?"];

    fn arb_match() -> impl Strategy<Value = RouteMatch> {
        let host = prop::option::weighted(
            0.6,
            prop::collection::vec(prop::sample::select(HOST_PATTERNS), 0..3)
                .prop_map(|v| OneOrMany::Many(v.into_iter().map(str::to_owned).collect())),
        );
        let path = prop_oneof![
            3 => Just((None, None, None)),
            1 => prop::sample::select(PATHS).prop_map(|p| (Some(p.to_owned()), None, None)),
            2 => prop::sample::select(PATHS).prop_map(|p| (None, Some(p.to_owned()), None)),
            1 => prop::sample::select(PATH_REGEXES).prop_map(|p| (None, None, Some(p.to_owned()))),
        ];
        let methods = prop::collection::vec(prop::sample::select(&["GET", "POST"][..]), 0..2)
            .prop_map(|v| v.into_iter().map(str::to_owned).collect());
        let header = (
            prop::sample::select(&["x-a", "X-B"][..]),
            prop_oneof![
                prop::sample::select(&["1", "2"][..]).prop_map(|v| (
                    Some(v.to_owned()),
                    None,
                    None
                )),
                any::<bool>().prop_map(|p| (None, Some(p), None)),
                prop::sample::select(&["[0-9]", "1|2", "x.*"][..]).prop_map(|r| (
                    None,
                    None,
                    Some(r.to_owned())
                )),
            ],
        )
            .prop_map(|(name, (value, present, regex))| HeaderMatch {
                name: name.to_owned(),
                value,
                present,
                regex,
            });
        let headers = prop::collection::vec(header, 0..3);
        (host, path, methods, headers).prop_map(
            |(host, (path, path_prefix, path_regex), methods, headers)| RouteMatch {
                host,
                path,
                path_prefix,
                path_regex,
                methods,
                headers,
            },
        )
    }

    #[derive(Debug, Clone)]
    struct ArbRequest {
        host: Option<&'static str>,
        path: &'static str,
        method: Method,
        headers: Vec<(&'static str, &'static str)>,
    }

    fn arb_request() -> impl Strategy<Value = ArbRequest> {
        (
            prop::option::weighted(0.9, prop::sample::select(REQUEST_HOSTS)),
            prop::sample::select(PATHS),
            prop::sample::select(vec![Method::GET, Method::POST, Method::PUT]),
            prop::collection::vec(
                (
                    prop::sample::select(&["x-a", "x-b"][..]),
                    prop::sample::select(&["1", "2", "x9", "3"][..]),
                ),
                0..3,
            ),
        )
            .prop_map(|(host, path, method, headers)| ArbRequest {
                host,
                path,
                method,
                headers,
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn indexed_router_equals_linear_scan(
            matches in prop::collection::vec(arb_match(), 0..12),
            requests in prop::collection::vec(arb_request(), 1..16),
        ) {
            let configs: Vec<RouteConfig> =
                matches.into_iter().enumerate().map(|(i, m)| route(&format!("r{i}"), m)).collect();
            let router = Router::compile(&configs).unwrap();
            for r in &requests {
                let mut headers = HeaderMap::new();
                for (n, v) in &r.headers {
                    headers.append(*n, HeaderValue::from_static(v));
                }
                let rr =
                    RouteRequest { host: r.host, path: r.path, method: &r.method, headers: &headers };
                let got = router.route(&rr).map(|route| route.index);
                prop_assert_eq!(got, naive(&configs, &rr), "request {:?}", r);
            }
        }

        #[test]
        fn compile_never_panics_on_arbitrary_input(
            host in prop::option::of(".{0,12}"),
            path_regex in prop::option::of(prop_oneof![Just("/v[0-9]+".to_owned()), ".{0,12}"]),
            header_name in prop_oneof![Just("x-a".to_owned()), ".{0,8}"],
            header_regex in prop::option::of(prop_oneof![Just("a|b".to_owned()), ".{0,8}"]),
            method in prop_oneof![Just("GET".to_owned()), ".{0,6}"],
            weights in prop::collection::vec(any::<u32>(), 0..4),
            request_host in ".{0,16}",
        ) {
            let mut r = route("r", RouteMatch {
                host: host.map(OneOrMany::One),
                path_regex,
                methods: vec![method],
                headers: vec![header(&header_name, None, None, header_regex.as_deref())],
                ..RouteMatch::default()
            });
            if !weights.is_empty() {
                r.cluster = None;
                let split = weights.iter().map(|w| SplitTarget { cluster: "c".into(), weight: *w });
                r.split = Some(split.collect());
            }
            if let Ok(router) = Router::compile(&[r]) {
                let m = Method::GET;
                let h = HeaderMap::new();
                let rr = RouteRequest { host: Some(&request_host), path: "/", method: &m, headers: &h };
                let _ = router.route(&rr);
                let route = &router.routes()[0];
                prop_assert!(route.total_weight() > 0);
                for roll in [0, 1, u32::MAX / 2, u32::MAX] {
                    let t = route.pick_target(roll);
                    prop_assert!(route.targets[t].1 > 0);
                }
            }
        }

        #[test]
        fn arbitrary_request_hosts_route_like_the_linear_scan(
            patterns in prop::collection::vec(prop::sample::select(HOST_PATTERNS), 0..3),
            host in prop::option::of(prop_oneof![
                "[a-zA-Z0-9.:\\[\\]*_-]{0,20}",
                ".{0,12}",
                prop::sample::select(REQUEST_HOSTS).prop_map(str::to_owned),
            ]),
        ) {
            let configs = vec![
                route("hosted", hosts(&patterns)),
                route("other", hosts(&["*.a.com", "b.com"])),
            ];
            let router = Router::compile(&configs).unwrap();
            let (m, h) = (Method::GET, HeaderMap::new());
            let rr = RouteRequest { host: host.as_deref(), path: "/", method: &m, headers: &h };
            prop_assert_eq!(router.route(&rr).map(|r| r.index), naive(&configs, &rr));
        }

        #[test]
        fn split_choice_is_always_a_positive_weight_target(
            weights in prop::collection::vec(0u32..5, 1..6),
            roll in any::<u32>(),
        ) {
            prop_assume!(weights.iter().sum::<u32>() > 0);
            let r = split_route(&weights);
            let t = r.pick_target(roll % r.total_weight());
            prop_assert!(weights[t] > 0);
            // And it is the target whose cumulative interval holds the roll.
            let roll = roll % r.total_weight();
            let before: u32 = weights[..t].iter().sum();
            prop_assert!(before <= roll && roll < before + weights[t]);
        }
    }
}
