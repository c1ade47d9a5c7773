//! The black-box harness shared by every integration suite.
//!
//! - [`Proxy`]: Palisade started in-process from a TOML fragment, with every listener, the admin port
//!   and the access log made test-friendly (ports 0, no drain delay, log off or to a temp file).
//! - [`upstream`]: a scripted raw-TCP HTTP/1.1 upstream whose behaviour is switched at run time.
//! - [`servers`]: real servers for the rest (hyper echo over HTTP/1.1 and h2c, TLS, WebSocket).
//! - [`raw`]: exact-bytes HTTP/1 client; [`h2raw`]: exact-frames HTTP/2 client.
//! - [`certs`]: a test CA and leaves made with rcgen.
//!
//! Each suite compiles this module separately and uses a different part of it.
#![allow(dead_code, unused_imports, clippy::unwrap_used, clippy::expect_used)]

pub mod certs;
pub mod h2raw;
pub mod process;
pub mod raw;
pub mod redis;
pub mod servers;
pub mod upstream;

use std::{
    future::Future,
    net::SocketAddr,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use bytes::Bytes;
use palisade::{config::ConfigError, server::Running};
use toml::{Table, Value};

pub use raw::{RawConn, RawResponse};
pub use servers::{EchoServer, WsEcho};
pub use upstream::{Mode, Seen, Upstream};

/// How long any single step of a test may take before it is called hung.
pub const STEP: Duration = Duration::from_secs(10);

/// A running in-process Palisade.
pub struct Proxy {
    running: Option<Running>,
    admin: SocketAddr,
    listeners: Vec<(String, SocketAddr)>,
    access_log: Option<PathBuf>,
    _dir: Option<tempfile::TempDir>,
}

impl Proxy {
    /// Starts Palisade from a TOML fragment (routes, clusters, listener options). See
    /// [`complete_config`] for what is filled in.
    pub async fn start(toml: &str) -> Proxy {
        match Self::try_start(toml, false).await {
            Ok(p) => p,
            Err(e) => panic!("the test config was refused:\n{e}\n--- config ---\n{toml}"),
        }
    }

    /// Like [`Proxy::start`], with the access log written to a temp file ([`Proxy::access_log`]).
    pub async fn start_logged(toml: &str) -> Proxy {
        match Self::try_start(toml, true).await {
            Ok(p) => p,
            Err(e) => panic!("the test config was refused:\n{e}\n--- config ---\n{toml}"),
        }
    }

    pub async fn try_start(toml: &str, access_log: bool) -> Result<Proxy, ConfigError> {
        let dir = access_log.then(|| tempfile::tempdir().expect("temp dir"));
        let log_path = dir.as_ref().map(|d| d.path().join("access.log"));
        let text = complete_config(toml, log_path.as_deref());
        let source = palisade::config::parse(&text, PathBuf::from("."))?;
        let running = palisade::server::start(&source).await?;
        let listeners = running
            .listeners
            .iter()
            .map(|(n, a)| (n.clone(), *a))
            .collect();
        Ok(Proxy {
            admin: running.admin,
            running: Some(running),
            listeners,
            access_log: log_path,
            _dir: dir,
        })
    }

    /// The `web` listener (or the only one).
    pub fn addr(&self) -> SocketAddr {
        self.listener("web")
            .or_else(|| self.listeners.first().map(|(_, a)| *a))
            .expect("the proxy has a listener")
    }

    pub fn listener(&self, name: &str) -> Option<SocketAddr> {
        self.listeners
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, a)| *a)
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr())
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin)
    }

    pub fn running(&self) -> &Running {
        self.running.as_ref().expect("still running")
    }

    /// Hands the `Running` out (to call `shutdown()` from a spawned task).
    pub fn take_running(&mut self) -> Running {
        self.running.take().expect("still running")
    }

    pub async fn shutdown(mut self) {
        if let Some(r) = self.running.take() {
            r.shutdown().await;
        }
    }

    /// GET on the admin port, with an optional bearer token.
    pub async fn admin_get(&self, path: &str) -> Reply {
        send(client().get(self.admin_url(path))).await
    }

    pub async fn admin_json(&self, path: &str) -> serde_json::Value {
        let r = self.admin_get(path).await;
        assert_eq!(r.status, 200, "admin {path}: {}", r.text());
        r.json()
    }

    /// The endpoint entry of `/clusters` for `cluster` whose address is `addr`.
    pub async fn endpoint_stats(&self, cluster: &str, addr: SocketAddr) -> serde_json::Value {
        let v = self.admin_json("/clusters").await;
        let clusters = v["clusters"].as_array().expect("clusters list");
        let c = clusters
            .iter()
            .find(|c| c["name"] == cluster)
            .unwrap_or_else(|| panic!("cluster {cluster} in /clusters: {v}"));
        c["endpoints"]
            .as_array()
            .expect("endpoints list")
            .iter()
            .find(|e| e["address"] == addr.to_string())
            .cloned()
            .unwrap_or_else(|| panic!("endpoint {addr} in /clusters: {v}"))
    }

    /// Every access-log line written so far.
    pub fn access_log_lines(&self) -> Vec<serde_json::Value> {
        let path = self
            .access_log
            .as_ref()
            .expect("started with Proxy::start_logged");
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).expect("access log lines are JSON"))
            .collect()
    }

    /// Waits for the access-log line of `request_id` (the log is written by a background thread).
    pub async fn access_log_entry(&self, request_id: &str) -> serde_json::Value {
        let deadline = Instant::now() + STEP;
        loop {
            if let Some(l) = self
                .access_log_lines()
                .into_iter()
                .find(|l| l["request_id"] == request_id)
            {
                return l;
            }
            assert!(
                Instant::now() < deadline,
                "no access log line for request {request_id}; have: {:?}",
                self.access_log_lines()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// Fills a test's TOML fragment with what every test wants, keeping whatever the fragment says:
/// - `admin.listen` is always `127.0.0.1:0`;
/// - without any `[listeners.*]`, one `[listeners.web]`; every listener without `listen` gets
///   `127.0.0.1:0`;
/// - `shutdown.drain_delay = "0s"` unless given;
/// - the access log off, or to `access_log` when given;
/// - `reload.state_dir = ""` unless given (the history stays in memory, not in the checkout).
pub fn complete_config(text: &str, access_log: Option<&Path>) -> String {
    let mut t: Table = text
        .parse()
        .unwrap_or_else(|e| panic!("test config is not TOML: {e}\n{text}"));
    table(&mut t, "admin").insert("listen".into(), "127.0.0.1:0".into());
    {
        let listeners = table(&mut t, "listeners");
        if listeners.is_empty() {
            listeners.insert("web".into(), Value::Table(Table::new()));
        }
        for (_, l) in listeners.iter_mut() {
            if let Value::Table(l) = l {
                l.entry("listen").or_insert_with(|| "127.0.0.1:0".into());
            }
        }
    }
    table(&mut t, "shutdown")
        .entry("drain_delay")
        .or_insert_with(|| "0s".into());
    table(&mut t, "reload")
        .entry("state_dir")
        .or_insert_with(|| "".into());
    let log = table(&mut t, "access_log");
    match access_log {
        Some(p) => {
            log.insert("enabled".into(), true.into());
            log.insert("path".into(), p.to_string_lossy().into_owned().into());
        }
        None => {
            log.entry("enabled").or_insert(false.into());
        }
    }
    toml::to_string(&t).expect("config serialises")
}

fn table<'a>(t: &'a mut Table, key: &str) -> &'a mut Table {
    match t.entry(key).or_insert_with(|| Value::Table(Table::new())) {
        Value::Table(x) => x,
        other => panic!("{key} must be a table, got {other}"),
    }
}

/// The common case: one route for everything to one cluster `up` of the given endpoints.
pub fn one_route(endpoints: &[SocketAddr]) -> String {
    one_route_with(endpoints, "")
}

/// [`one_route`] with extra keys for `[clusters.up]` (e.g. `body_idle_timeout = "200ms"`). Other
/// tables (`[http]`, `[listeners.web]`…) go before it in the test's own text.
pub fn one_route_with(endpoints: &[SocketAddr], cluster_extra: &str) -> String {
    format!(
        r#"
[[routes]]
name = "all"
cluster = "up"
[routes.match]
path_prefix = "/"

[clusters.up]
endpoints = {}
{cluster_extra}
"#,
        endpoint_list(endpoints)
    )
}

/// `["127.0.0.1:1", …]` as TOML.
pub fn endpoint_list(endpoints: &[SocketAddr]) -> String {
    let items: Vec<String> = endpoints.iter().map(|a| format!("\"{a}\"")).collect();
    format!("[{}]", items.join(", "))
}

/// `N` different addresses with nothing listening on them: all are bound before any is closed, so
/// the system cannot hand the same port out twice.
pub fn refused_addrs<const N: usize>() -> [SocketAddr; N] {
    let held: Vec<std::net::TcpListener> = (0..N)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("bind"))
        .collect();
    std::array::from_fn(|i| held[i].local_addr().expect("addr"))
}

/// An address with nothing listening on it (bound, then closed).
pub fn refused_addr() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let a = l.local_addr().expect("addr");
    drop(l);
    a
}

/// A plain HTTP client (no proxy from the environment, HTTP/1.1 unless the server is h2).
pub fn client() -> reqwest::Client {
    palisade::tls::install_crypto_provider();
    reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(STEP)
        .build()
        .expect("client")
}

/// An HTTP/2 client with prior knowledge (h2c): every request shares one connection.
pub fn h2c_client() -> reqwest::Client {
    palisade::tls::install_crypto_provider();
    reqwest::Client::builder()
        .no_proxy()
        .http2_prior_knowledge()
        .timeout(STEP)
        .build()
        .expect("h2c client")
}

/// A response read whole.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub version: http::Version,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", self.text()))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Which scripted upstream answered (its `x-upstream` header).
    pub fn upstream(&self) -> &str {
        self.header("x-upstream").unwrap_or("-")
    }
}

/// Sends a reqwest request and reads the whole response.
pub async fn send(req: reqwest::RequestBuilder) -> Reply {
    let rsp = req.send().await.expect("request sent and answered");
    let status = rsp.status().as_u16();
    let version = rsp.version();
    let headers = rsp.headers().clone();
    let body = rsp.bytes().await.expect("complete body");
    Reply {
        status,
        version,
        headers,
        body,
    }
}

pub async fn get(url: &str) -> Reply {
    send(client().get(url)).await
}

/// A GET with extra headers (a `Host` given here replaces the URL's).
pub async fn get_with(url: &str, headers: &[(&str, &str)]) -> Reply {
    let mut req = client().get(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    send(req).await
}

/// Polls `check` every 10 ms until it holds, failing the test after `within`.
pub async fn eventually<F, Fut>(what: &str, within: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    loop {
        if check().await {
            return;
        }
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Runs `fut`, failing the test if it takes longer than `within`.
pub async fn within<T>(what: &str, within: Duration, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(within, fut).await {
        Ok(v) => v,
        Err(_) => panic!("timed out after {within:?}: {what}"),
    }
}

/// True if an error body leaks a backend address (any `127.0.0.1:<port>` of the given upstreams).
pub fn leaks_address(body: &str, addrs: &[SocketAddr]) -> bool {
    addrs
        .iter()
        .any(|a| body.contains(&a.to_string()) || body.contains(&format!(":{}", a.port())))
}
