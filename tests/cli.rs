//! The command line: `validate` / `-t`, every problem of a bad config with its path, `--version`,
//! and the `demo`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::{collections::BTreeSet, path::Path};

use support::{
    STEP,
    process::{Palisade, Stream, run},
};

const GOOD: &str = r#"
[admin]
listen = "127.0.0.1:0"

[listeners.web]
listen = "127.0.0.1:0"

[[routes]]
name = "default"
cluster = "web"
[routes.match]
path_prefix = "/"

[clusters.web]
endpoints = ["127.0.0.1:9001", "127.0.0.1:9002"]
"#;

/// Semantically wrong in every section (syntax and types are fine, so validation sees it all).
const BAD: &str = r#"
[admin]
listen = "localhost:99999"
auth_token = ""

[runtime]
workers = 0

[log]
level = "loud[["

[http]
trusted_proxies = ["10.0.0.0/33", "not-an-ip"]
via = "pal isade"
request_id_header = "bad header"

[listeners.web]
listen = "0.0.0.0:http"
max_connections = 0
header_read_timeout = "0s"
max_header_bytes = 100
max_uri_bytes = 4

[listeners.secure]
listen = "127.0.0.1:8443"
[listeners.secure.tls]
certificates = []

[[routes]]
name = "dup"
cluster = "nowhere"
timeout = "0s"
[routes.match]
host = "*.*.bad"
path = "no-slash"
path_prefix = "/also"
path_regex = "(unclosed"
methods = ["get"]

[[routes]]
name = "dup"
split = [{ cluster = "web", weight = 0 }]
strip_prefix = "x"
host_rewrite = "a/b"
[routes.request_headers]
set = { "content-length" = "1" }
remove = ["host"]

[clusters.web]
endpoints = ["127.0.0.1", "bad host:80", { address = "127.0.0.1:80", weight = 0 }, "127.0.0.1:80"]
balance = "hash"
connect_timeout = "0s"
[clusters.web.tls]
ca_file = "missing-ca.pem"
sni = "*.x"
"#;

fn write(dir: &Path, name: &str, text: &str) {
    std::fs::write(dir.join(name), text).unwrap();
}

fn expected_version(text: &str) -> String {
    let source = palisade::config::parse(text, ".".into()).unwrap();
    palisade::config::version_of(&source.config)
}

#[test]
fn validate_accepts_a_good_config_and_prints_its_version() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "good.toml", GOOD);

    let (code, stdout, stderr) = run(&["validate", "-c", "good.toml"], dir.path());

    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert_eq!(
        stdout,
        format!("configuration ok (version {})\n", expected_version(GOOD))
    );
}

#[test]
fn dash_t_is_validate() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "good.toml", GOOD);

    let (code, stdout, _) = run(&["-t", "-c", "good.toml"], dir.path());
    let (_, validate_out, _) = run(&["validate", "-c", "good.toml"], dir.path());

    assert_eq!(code, Some(0));
    assert_eq!(stdout, validate_out);
    let version = stdout
        .trim()
        .strip_prefix("configuration ok (version ")
        .and_then(|v| v.strip_suffix(')'))
        .unwrap_or_else(|| panic!("{stdout}"));
    assert_eq!(version.len(), 12);
    assert!(version.bytes().all(|b| b.is_ascii_hexdigit()));
}

#[test]
fn validate_lists_every_problem_with_its_path_and_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "bad.toml", BAD);

    let (code, stdout, stderr) = run(&["validate", "-c", "bad.toml"], dir.path());

    assert_eq!(code, Some(1), "{stdout}{stderr}");
    for line in stdout
        .lines()
        .filter(|l| !l.starts_with("configuration invalid"))
    {
        let (path, message) = line
            .split_once(": ")
            .unwrap_or_else(|| panic!("not `path: message`: {line:?}"));
        assert!(!path.is_empty() && !message.is_empty(), "{line:?}");
    }
    insta::assert_snapshot!("invalid_config", stdout);
}

#[test]
fn a_type_error_is_reported_with_its_path() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "typo.toml",
        "[listeners.web]\nlisten = \"127.0.0.1:0\"\nidle_timeout = \"soon\"\n",
    );

    let (code, stdout, _) = run(&["validate", "-c", "typo.toml"], dir.path());

    assert_eq!(code, Some(1));
    assert!(
        stdout.starts_with("listeners.web.idle_timeout: "),
        "{stdout}"
    );
}

#[test]
fn run_refuses_a_config_that_does_not_validate_and_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "unknown.toml",
        &GOOD.replace("cluster = \"web\"", "cluster = \"nowhere\""),
    );

    let (code, stdout, stderr) = run(&["-c", "unknown.toml"], dir.path());

    assert_eq!(code, Some(1), "{stdout}{stderr}");
    assert!(
        stdout.contains("routes[0].cluster: unknown cluster \"nowhere\""),
        "{stdout}"
    );
}

#[test]
fn run_refuses_a_bad_config_and_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "bad.toml", BAD);

    let (code, stdout, stderr) = run(&["-c", "bad.toml"], dir.path());

    assert_eq!(code, Some(1), "{stdout}{stderr}");
    assert!(stdout.contains("routes[0].cluster: "), "{stdout}");
}

#[test]
fn a_missing_config_file_is_reported() {
    let dir = tempfile::tempdir().unwrap();

    let (code, stdout, _) = run(&["validate", "-c", "nope.toml"], dir.path());

    assert_eq!(code, Some(1));
    assert!(stdout.contains("cannot read"), "{stdout}");
}

#[test]
fn version_flag_prints_the_package_version() {
    let dir = tempfile::tempdir().unwrap();

    let (code, stdout, _) = run(&["--version"], dir.path());

    assert_eq!(code, Some(0));
    assert_eq!(
        stdout.trim(),
        format!("palisade {}", env!("CARGO_PKG_VERSION"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_serves_three_upstreams_round_robin_then_exits_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let mut demo = Palisade::spawn(
        &[
            "demo",
            "--listen",
            "127.0.0.1:0",
            "--admin",
            "127.0.0.1:0",
            "--chaos",
            "127.0.0.1:0",
        ],
        dir.path(),
    );
    let (web, admin) = tokio::task::block_in_place(|| {
        demo.wait_for(STEP, |stream, line| {
            let rest = line.split("proxy on http://").nth(1)?;
            let (web, rest) = rest.split_once(", admin on http://")?;
            (stream == Stream::Stdout).then(|| (web.to_owned(), rest.trim().to_owned()))
        })
    });

    let mut names = BTreeSet::new();
    for _ in 0..6 {
        let r = support::get(&format!("http://{web}/")).await;
        assert_eq!(r.status, 200);
        names.insert(r.header("x-upstream").unwrap().to_owned());
    }
    let health = support::get(&format!("http://{admin}/healthz")).await;

    assert_eq!(
        names,
        BTreeSet::from(["alpha".to_owned(), "bravo".to_owned(), "charlie".to_owned()])
    );
    assert_eq!(health.status, 200);
    demo.terminate();
    let status = tokio::task::block_in_place(|| demo.wait_exit(STEP));
    assert_eq!(status.code(), Some(0));
}

/// Two routes: `/api` to `api`, the rest to `web`; `with_api = false` drops the `/api` route.
fn routed(with_api: bool) -> String {
    let api = if with_api {
        "[[routes]]\nname = \"api\"\ncluster = \"api\"\n[routes.match]\npath_prefix = \"/api/\"\n\n[clusters.api]\nendpoints = [\"127.0.0.1:9003\"]\n"
    } else {
        ""
    };
    format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n[listeners.web]\nlisten = \"127.0.0.1:0\"\n{api}\n[[routes]]\nname = \"web\"\ncluster = \"web\"\n[routes.match]\npath_prefix = \"/\"\nhost = \"www.example.com\"\n\n[clusters.web]\nendpoints = [\"127.0.0.1:9001\", {{ address = \"127.0.0.1:9002\", weight = 3 }}]\n"
    )
}

#[test]
fn validate_explain_prints_the_routing_table_in_match_order() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "p.toml", &routed(true));
    let (code, stdout, stderr) = run(&["validate", "-c", "p.toml", "--explain"], dir.path());
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    let api = stdout.find("api").unwrap_or_else(|| panic!("{stdout}"));
    let web = stdout
        .find("www.example.com")
        .unwrap_or_else(|| panic!("{stdout}"));
    assert!(api < web, "routes in match order:\n{stdout}");
    assert!(stdout.contains("/api/"), "{stdout}");
    assert!(stdout.contains("127.0.0.1:9002"), "{stdout}");
}

/// An access log of what the old config served, written as Palisade writes it.
fn access_log(dir: &Path) -> std::path::PathBuf {
    let mut text = String::new();
    for (i, (host, path, route, cluster)) in [
        ("www.example.com", "/api/users", "api", "api"),
        ("www.example.com", "/api/orders", "api", "api"),
        ("www.example.com", "/index.html", "web", "web"),
    ]
    .into_iter()
    .enumerate()
    {
        let e = palisade::access_log::Entry {
            request_id: format!("r{i}"),
            method: "GET".into(),
            host: host.into(),
            path: path.into(),
            status: 200,
            route: Some(route.into()),
            cluster: Some(cluster.into()),
            flags: "-".into(),
            ..palisade::access_log::Entry::default()
        };
        text.push_str(&serde_json::to_string(&e).unwrap());
        text.push('\n');
    }
    text.push_str("not json\n");
    let path = dir.join("access.log");
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn validate_replay_catches_a_change_that_drops_routed_traffic() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "current.toml", &routed(true));
    write(dir.path(), "new.toml", &routed(false));
    access_log(dir.path());

    // The new config sends /api/ to the catch-all route: a different route, not lost.
    let (code, stdout, stderr) = run(
        &[
            "validate",
            "-c",
            "new.toml",
            "--replay",
            "access.log",
            "--against",
            "current.toml",
        ],
        dir.path(),
    );
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert!(stdout.contains("replayed 3 request(s)"), "{stdout}");
    assert!(stdout.contains("1 unparsable"), "{stdout}");
    assert!(
        stdout.contains("/api/users"),
        "an example is shown:\n{stdout}"
    );

    // A config whose only route wants another host loses every request: exit 2.
    write(
        dir.path(),
        "lost.toml",
        &routed(false).replace("www.example.com", "other.example.com"),
    );
    let (code, stdout, stderr) = run(
        &[
            "validate",
            "-c",
            "lost.toml",
            "--replay",
            "access.log",
            "--against",
            "current.toml",
        ],
        dir.path(),
    );
    assert_eq!(code, Some(2), "{stdout}{stderr}");

    // The same config against itself changes nothing.
    let (code, stdout, _) = run(
        &[
            "validate",
            "-c",
            "current.toml",
            "--replay",
            "access.log",
            "--against",
            "current.toml",
        ],
        dir.path(),
    );
    assert_eq!(code, Some(0), "{stdout}");
}
