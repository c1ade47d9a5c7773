use super::*;
use crate::config::parse;

/// Parses and validates `text` (the sibling modules' tests use it too).
pub(super) fn check(text: &str) -> Diagnostics {
    let source = parse(text, ".".into()).unwrap();
    validate(&source.config, Path::new("."))
}

pub(super) fn paths(d: &[crate::config::Problem]) -> Vec<&str> {
    d.iter().map(|p| p.path.as_str()).collect()
}

/// A minimal valid config.
pub(super) const OK: &str = r#"
[listeners.web]
listen = "127.0.0.1:0"

[[routes]]
name = "all"
match = { path_prefix = "/" }
cluster = "web"

[clusters.web]
endpoints = ["127.0.0.1:9001"]
"#;

#[test]
fn a_minimal_config_is_valid() {
    let d = check(OK);
    assert!(d.is_ok(), "{:?}", d.errors);
    assert!(d.warnings.is_empty(), "{:?}", d.warnings);
}

#[test]
fn every_problem_is_reported_at_once() {
    let d = check(
        r#"
[admin]
listen = "localhost"

[listeners.web]
listen = "0.0.0.0:99999"
max_header_bytes = 100

[[routes]]
name = "a"
match = { path_prefix = "v1", path_regex = "(" , methods = ["get"] }
cluster = "nope"

[[routes]]
name = "a"
split = [{ cluster = "web", weight = 0 }]

[clusters.web]
endpoints = ["127.0.0.1", { address = "127.0.0.1:1", weight = 0 }]
"#,
    );
    let p = paths(&d.errors);
    for expected in [
        "admin.listen",
        "listeners.web.listen",
        "listeners.web.max_header_bytes",
        "routes[0].cluster",
        "routes[0].match",
        "routes[0].match.path_prefix",
        "routes[0].match.path_regex",
        "routes[0].match.methods[0]",
        "routes[1].name",
        "routes[1].split",
        "clusters.web.endpoints[0]",
        "clusters.web.endpoints[1].weight",
    ] {
        assert!(p.contains(&expected), "missing {expected} in {p:#?}");
    }
}

#[test]
fn shadowed_route_is_a_warning_not_an_error() {
    let d = check(&format!(
        "{OK}\n[[routes]]\nname = \"later\"\nmatch = {{ path_prefix = \"/api/\", methods = [\"GET\"] }}\ncluster = \"web\"\n"
    ));
    assert!(d.is_ok(), "{:?}", d.errors);
    assert_eq!(paths(&d.warnings), vec!["routes[1]"]);
    assert!(d.warnings[0].message.contains("unreachable"));
}

#[test]
fn narrower_earlier_route_does_not_shadow() {
    let d = check(
        r#"
[listeners.web]
listen = "127.0.0.1:0"
[[routes]]
name = "api"
match = { host = "api.example.com", path_prefix = "/v1/" }
cluster = "web"
[[routes]]
name = "rest"
match = { path_prefix = "/" }
cluster = "web"
[clusters.web]
endpoints = ["127.0.0.1:9001"]
"#,
    );
    assert!(d.warnings.is_empty(), "{:?}", d.warnings);
}

#[test]
fn wildcard_host_covers_one_label_only() {
    let a = RouteMatch {
        host: Some(crate::config::OneOrMany::One("*.example.com".into())),
        ..RouteMatch::default()
    };
    let b = RouteMatch {
        host: Some(crate::config::OneOrMany::One("a.example.com".into())),
        ..RouteMatch::default()
    };
    let c = RouteMatch {
        host: Some(crate::config::OneOrMany::One("a.b.example.com".into())),
        ..RouteMatch::default()
    };
    assert!(covers(&a, &b));
    assert!(!covers(&a, &c));
    assert!(!covers(&b, &a));
}

#[test]
fn contradicting_timeouts_are_errors() {
    let d = check(&OK.replace(
        "endpoints = [\"127.0.0.1:9001\"]",
        "endpoints = [\"127.0.0.1:9001\"]\nresponse_header_timeout = \"30s\"\nconnect_timeout = \"20s\"",
    ));
    let msgs: Vec<String> = d.errors.iter().map(ToString::to_string).collect();
    assert_eq!(d.errors.len(), 2, "{msgs:#?}");
    assert!(
        msgs.iter().all(|m| m.starts_with("routes[0].timeout")),
        "{msgs:#?}"
    );
}

#[test]
fn reserved_headers_cannot_be_rewritten() {
    let d = check(&OK.replace("cluster = \"web\"", "cluster = \"web\"\nrequest_headers = { set = { host = \"x\", \"x-ok\" = \"1\" }, remove = [\"content-length\"] }"));
    let p = paths(&d.errors);
    assert_eq!(
        p,
        vec![
            "routes[0].request_headers.set",
            "routes[0].request_headers.remove"
        ],
        "{:?}",
        d.errors
    );
}

#[test]
fn missing_certificate_files_are_reported_per_certificate() {
    let d = check(&OK.replace(
        "listen = \"127.0.0.1:0\"",
        "listen = \"127.0.0.1:0\"\ntls = { certificates = [{ cert = \"/nonexistent/a.pem\", key = \"/nonexistent/a.key\" }] }",
    ));
    assert!(
        paths(&d.errors).contains(&"listeners.web.tls.certificates[0]"),
        "{:?}",
        d.errors
    );
}

#[test]
fn unknown_and_unused_clusters() {
    let d = check(&format!(
        "{OK}\n[clusters.spare]\nendpoints = [\"127.0.0.1:9002\"]\n"
    ));
    assert!(d.is_ok());
    assert_eq!(paths(&d.warnings), vec!["clusters.spare"]);
}

#[test]
fn host_port_splitting() {
    assert_eq!(split_host_port("a.example:80"), Some(("a.example", 80)));
    assert_eq!(split_host_port("[::1]:8080"), Some(("::1", 8080)));
    assert_eq!(split_host_port("a.example"), None);
    assert_eq!(split_host_port("a:0"), None);
    assert_eq!(split_host_port(":80"), None);
}
