//! Route matching micro-benchmarks: `Router::route` with 10 and 1,000 routes, hitting the first, a
//! middle and the last route, and missing.
//!
//! This file owns only measurement. The route set mixes what real configs hold — exact hosts (some
//! with two names), wildcard hosts, host-less routes, exact paths, prefixes, a few regexes, method
//! and header conditions — so that the host index, the host-less fallback list and the per-route
//! checks are all on the measured path. Every case first checks it reaches the route it claims to.
#![allow(clippy::unwrap_used)]

use divan::{Bencher, black_box};
use http::{HeaderMap, HeaderValue, Method};
use palisade::{
    config::{Dur, HeaderMatch, HeaderRewrite, OneOrMany, RouteConfig, RouteMatch},
    route::router::{RouteRequest, Router},
};

fn main() {
    divan::main();
}

const SIZES: [usize; 2] = [10, 1000];

/// The kind of route at position `i`: one route in 50 is a regex, the rest cycle through six
/// shapes. Names carry `i` as four digits, so both sizes hash and compare strings of one length.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    TwoHostsPrefix,
    HostlessExact,
    Wildcard,
    HostMethods,
    HostHeader,
    HostPrefixAbsentHeader,
    HostRegex,
}

fn kind(i: usize) -> Kind {
    if i % 50 == 5 {
        return Kind::HostRegex;
    }
    match i % 6 {
        0 => Kind::TwoHostsPrefix,
        1 => Kind::HostlessExact,
        2 => Kind::Wildcard,
        3 => Kind::HostMethods,
        4 => Kind::HostHeader,
        _ => Kind::HostPrefixAbsentHeader,
    }
}

fn host(name: String) -> Option<OneOrMany> {
    Some(OneOrMany::One(name))
}

fn route_config(i: usize) -> RouteConfig {
    let svc = format!("svc{i:04}.example.com");
    let matches = match kind(i) {
        Kind::TwoHostsPrefix => RouteMatch {
            host: Some(OneOrMany::Many(vec![svc, format!("svc{i:04}.example.net")])),
            path_prefix: Some("/".into()),
            ..RouteMatch::default()
        },
        Kind::HostlessExact => RouteMatch {
            path: Some(format!("/internal/{i:04}/health")),
            ..RouteMatch::default()
        },
        Kind::Wildcard => RouteMatch {
            host: host(format!("*.tenant{i:04}.example.com")),
            path_prefix: Some("/api/".into()),
            ..RouteMatch::default()
        },
        Kind::HostMethods => RouteMatch {
            host: host(svc),
            path_prefix: Some("/write/".into()),
            methods: vec!["POST".into(), "PUT".into()],
            ..RouteMatch::default()
        },
        Kind::HostHeader => RouteMatch {
            host: host(svc),
            headers: vec![HeaderMatch {
                name: "x-canary".into(),
                value: Some("on".into()),
                present: None,
                regex: None,
            }],
            ..RouteMatch::default()
        },
        Kind::HostPrefixAbsentHeader => RouteMatch {
            host: host(svc),
            path_prefix: Some("/static/".into()),
            headers: vec![HeaderMatch {
                name: "x-debug".into(),
                value: None,
                present: Some(false),
                regex: None,
            }],
            ..RouteMatch::default()
        },
        Kind::HostRegex => RouteMatch {
            host: host(svc),
            path_regex: Some("/users/[0-9]+/orders(/[a-z0-9-]+)?".into()),
            ..RouteMatch::default()
        },
    };
    RouteConfig {
        name: format!("route-{i}"),
        matches,
        cluster: Some(format!("cluster-{}", i % 7)),
        split: None,
        timeout: Dur::secs(15),
        strip_prefix: None,
        host_rewrite: None,
        request_headers: HeaderRewrite::default(),
        response_headers: HeaderRewrite::default(),
        retry: palisade::config::RetryConfig::default(),
        hedge: None,
        last_resort: None,
        rate_limits: Vec::new(),
        priority: palisade::config::RoutePriority::Normal,
        allow: Vec::new(),
        deny: Vec::new(),
        max_request_body_bytes: None,
    }
}

/// An owned request; `as_route_request` borrows it the way the proxy does.
struct Request {
    host: Option<String>,
    path: String,
    method: Method,
    headers: HeaderMap,
}

impl Request {
    fn new(host: Option<String>, path: String, method: Method) -> Request {
        let mut headers = HeaderMap::new();
        headers.insert("user-agent", HeaderValue::from_static("bench/1.0"));
        headers.insert("accept", HeaderValue::from_static("*/*"));
        Request {
            host,
            path,
            method,
            headers,
        }
    }

    fn as_route_request(&self) -> RouteRequest<'_> {
        RouteRequest {
            host: self.host.as_deref(),
            path: &self.path,
            method: &self.method,
            headers: &self.headers,
        }
    }
}

/// A request that route `i` matches (and, hosts and paths being unique per route, no earlier one).
/// Hosts carry a port and mixed case, as clients send them.
fn request_for(i: usize) -> Request {
    let svc = Some(format!("Svc{i:04}.Example.com:443"));
    match kind(i) {
        Kind::TwoHostsPrefix => Request::new(
            Some(format!("svc{i:04}.example.net")),
            "/index.html".into(),
            Method::GET,
        ),
        Kind::HostlessExact => Request::new(
            Some("ops.example.org".into()),
            format!("/internal/{i:04}/health"),
            Method::GET,
        ),
        Kind::Wildcard => Request::new(
            Some(format!("acme.tenant{i:04}.example.com")),
            "/api/v2/items".into(),
            Method::GET,
        ),
        Kind::HostMethods => Request::new(svc, "/write/items/7".into(), Method::POST),
        Kind::HostHeader => {
            let mut r = Request::new(svc, "/".into(), Method::GET);
            r.headers.insert("x-canary", HeaderValue::from_static("on"));
            r
        }
        Kind::HostPrefixAbsentHeader => Request::new(svc, "/static/app.js".into(), Method::GET),
        Kind::HostRegex => Request::new(svc, "/users/12345/orders/ab-12".into(), Method::GET),
    }
}

fn setup(n: usize, target: Option<usize>) -> (Router, Request) {
    let configs: Vec<RouteConfig> = (0..n).map(route_config).collect();
    let router = Router::compile(&configs).unwrap();
    let request = match target {
        Some(i) => request_for(i),
        None => Request::new(
            Some("nowhere.example.org".into()),
            "/nothing/here".into(),
            Method::GET,
        ),
    };
    let got = router.route(&request.as_route_request()).map(|r| r.index);
    assert_eq!(
        got, target,
        "the benchmark request does not reach the route it is meant to"
    );
    (router, request)
}

fn run(bencher: Bencher<'_, '_>, n: usize, target: Option<usize>) {
    let (router, request) = setup(n, target);
    bencher.bench_local(|| {
        router
            .route(black_box(&request.as_route_request()))
            .map(|r| r.index)
    });
}

#[divan::bench(args = SIZES)]
fn first(bencher: Bencher<'_, '_>, n: usize) {
    run(bencher, n, Some(0));
}

/// The first route from the middle on that has the same kind as the 10-route middle (route 5, a
/// regex), so the two sizes compare the same work.
#[divan::bench(args = SIZES)]
fn middle(bencher: Bencher<'_, '_>, n: usize) {
    let mid = (n / 2..n).find(|&i| kind(i) == kind(5)).unwrap_or(n / 2);
    run(bencher, n, Some(mid));
}

#[divan::bench(args = SIZES)]
fn last(bencher: Bencher<'_, '_>, n: usize) {
    run(bencher, n, Some(n - 1));
}

#[divan::bench(args = SIZES)]
fn miss(bencher: Bencher<'_, '_>, n: usize) {
    run(bencher, n, None);
}
