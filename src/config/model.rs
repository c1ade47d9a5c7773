//! The configuration file's shape: one serde struct per TOML table, with every default.
//!
//! This module owns *what can be written* and what an omitted key means. It does not judge whether the
//! values make sense together (that is `validate.rs`) nor turn them into runtime objects (`snapshot.rs`).
//! Addresses, regexes and header names stay strings here so that validation can report every bad one
//! with its path instead of stopping at the first.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{
    duration::Dur,
    overload::{
        AdaptiveConcurrencyConfig, OverloadConfig, Rate, RateLimitConfig, RedisConfig,
        RoutePriority,
    },
    resilience::{
        HealthCheckConfig, HedgeConfig, LastResortConfig, LimitsConfig, OutlierConfig,
        RetryBudgetConfig, RetryConfig, SlowStartConfig,
    },
};

/// The whole file. Maps are `BTreeMap` so that the canonical form (and so the version hash) does not
/// depend on the order keys were written in.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub admin: AdminConfig,
    #[serde(default)]
    pub runtime: RuntimeConfig,
    #[serde(default)]
    pub log: LogConfig,
    #[serde(default)]
    pub access_log: AccessLogConfig,
    #[serde(default)]
    pub http: HttpConfig,
    #[serde(default)]
    pub shutdown: ShutdownConfig,
    #[serde(default)]
    pub listeners: BTreeMap<String, ListenerConfig>,
    /// First match wins, in file order.
    #[serde(default)]
    pub routes: Vec<RouteConfig>,
    #[serde(default)]
    pub clusters: BTreeMap<String, ClusterConfig>,
    #[serde(default)]
    pub reload: super::reload::ReloadConfig,
    #[serde(default)]
    pub overload: OverloadConfig,
    /// The shared store for `scope = "shared"` rate limits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redis: Option<RedisConfig>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rate_limits: Vec<RateLimitConfig>,
}

/// The operator interface: its own listener, loopback by default because it is unauthenticated unless
/// `auth_token` is set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    #[serde(default = "default_admin_listen")]
    pub listen: String,
    /// When set, every admin request must carry `Authorization: Bearer <token>`. Redacted in `/config`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth_token: Option<String>,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            listen: default_admin_listen(),
            auth_token: None,
        }
    }
}

fn default_admin_listen() -> String {
    "127.0.0.1:9901".to_owned()
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuntimeConfig {
    /// Worker threads. Default: the number of cores.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workers: Option<usize>,
    /// The zone this instance runs in: endpoints with the same `zone` are preferred.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local_zone: Option<String>,
}

/// Diagnostic logs (stderr). `RUST_LOG` and `-v` override `level`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    #[serde(default = "default_log_level")]
    pub level: String,
    #[serde(default)]
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            level: default_log_level(),
            format: LogFormat::Text,
        }
    }
}

fn default_log_level() -> String {
    "info".to_owned()
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// One JSON line per request, written by a background thread.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccessLogConfig {
    #[serde(default = "yes")]
    pub enabled: bool,
    /// `-` for stdout, or a file path (appended to).
    #[serde(default = "default_access_log_path")]
    pub path: String,
}

impl Default for AccessLogConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            path: default_access_log_path(),
        }
    }
}

fn default_access_log_path() -> String {
    "-".to_owned()
}

fn yes() -> bool {
    true
}

/// How Palisade presents itself and the client to upstreams (all listeners).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// CIDRs whose `X-Forwarded-*`/`Forwarded` headers are believed. Others' are overwritten.
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
    /// Also send RFC 7239 `Forwarded`.
    #[serde(default)]
    pub add_forwarded: bool,
    /// Pseudonym in `Via` (both directions); also detects loops (508). Empty disables `Via`.
    /// Default: `palisade-<hostname>`, so two tiers of Palisade on different hosts are not a loop.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub via: Option<String>,
    /// Header carrying the request id (kept when valid, generated otherwise, echoed to the client).
    #[serde(default = "default_request_id_header")]
    pub request_id_header: String,
    /// Error bodies: "auto" follows `Accept` (JSON for `application/json`), or force "text" / "json".
    #[serde(default)]
    pub error_format: ErrorFormat,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            trusted_proxies: Vec::new(),
            add_forwarded: false,
            via: None,
            request_id_header: default_request_id_header(),
            error_format: ErrorFormat::Auto,
        }
    }
}

/// The `Via` pseudonym used when `http.via` is not set.
pub fn default_via() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let host: String = host
        .trim()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
        .collect();
    if host.is_empty() {
        "palisade".to_owned()
    } else {
        format!("palisade-{host}")
    }
}

fn default_request_id_header() -> String {
    "x-request-id".to_owned()
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorFormat {
    #[default]
    Auto,
    Text,
    Json,
}

/// SIGTERM/SIGINT: `/ready` → 503, wait `drain_delay` (so load balancers notice), stop accepting, let
/// in-flight requests finish for up to `drain_timeout`, exit 0.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShutdownConfig {
    #[serde(default = "default_drain_delay")]
    pub drain_delay: Dur,
    #[serde(default = "default_drain_timeout")]
    pub drain_timeout: Dur,
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        Self {
            drain_delay: default_drain_delay(),
            drain_timeout: default_drain_timeout(),
        }
    }
}

fn default_drain_delay() -> Dur {
    Dur::secs(2)
}

fn default_drain_timeout() -> Dur {
    Dur::secs(30)
}

/// One listening socket (HTTP/1.1 and HTTP/2 on the same port; TLS when `tls` is present).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    pub listen: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<ListenerTlsConfig>,
    /// Open connections on this listener at once; beyond it new connections wait in the kernel backlog.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// The whole request head must arrive within this, from its first byte (or the TLS handshake must
    /// finish within it); otherwise 408 and close. Slowloris gets nothing from trickling.
    #[serde(default = "default_header_read_timeout")]
    pub header_read_timeout: Dur,
    /// A keep-alive connection with no request in flight is closed after this long.
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout: Dur,
    /// Request head size (request line + fields), in bytes; beyond it 431.
    #[serde(default = "default_max_header_bytes")]
    pub max_header_bytes: usize,
    /// Number of request header fields; beyond it 431.
    #[serde(default = "default_max_headers")]
    pub max_headers: usize,
    /// Request-target length in bytes; beyond it 414.
    #[serde(default = "default_max_uri_bytes")]
    pub max_uri_bytes: usize,
    #[serde(default)]
    pub http2: Http2Config,
    /// Open connections from one client address (IPv6: its /64) at once; 0 = no cap.
    #[serde(default)]
    pub max_connections_per_ip: u32,
    /// New connections one client address may open (GCRA: `"20/s"`); absent = no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection_rate_per_ip: Option<Rate>,
    /// Connections a client may open at once before `connection_rate_per_ip` applies. Default: the
    /// rate's count.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection_burst_per_ip: Option<u32>,
    /// Only these client networks may connect (CIDRs or addresses); empty = everyone.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow: Vec<String>,
    /// These client networks are refused at accept (wins over `allow`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deny: Vec<String>,
    /// Requests served on one connection before it is closed (HTTP/1 `Connection: close`, HTTP/2
    /// GOAWAY); 0 = no cap (the default, as in HAProxy and Envoy: a long-lived gRPC connection
    /// is not cut every thousand calls).
    #[serde(default)]
    pub max_requests_per_connection: u32,
    /// A response write that makes no progress for this long cuts the connection (a client that
    /// never reads cannot hold buffers or an upstream connection).
    #[serde(default = "default_write_timeout")]
    pub write_timeout: Dur,
    /// Request body size in bytes; beyond it 413. 0 = no limit. A route may set its own.
    #[serde(default)]
    pub max_request_body_bytes: u64,
    /// Longest silence between two reads of a request body; then 408.
    #[serde(default = "default_request_body_timeout")]
    pub request_body_timeout: Dur,
    /// Slowest average request-body rate (bytes/s) tolerated after the first
    /// `request_body_timeout`; then 408. 0 = no minimum.
    #[serde(default)]
    pub request_body_min_rate: u32,
}

fn default_write_timeout() -> Dur {
    Dur::secs(60)
}
fn default_request_body_timeout() -> Dur {
    Dur::secs(60)
}

fn default_max_connections() -> usize {
    10_000
}
fn default_header_read_timeout() -> Dur {
    Dur::secs(10)
}
fn default_idle_timeout() -> Dur {
    Dur::secs(60)
}
fn default_max_header_bytes() -> usize {
    64 * 1024
}
fn default_max_headers() -> usize {
    100
}
fn default_max_uri_bytes() -> usize {
    8 * 1024
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerTlsConfig {
    /// Chosen by SNI from each certificate's DNS names; the first is the default.
    pub certificates: Vec<CertificateConfig>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertificateConfig {
    /// PEM chain, leaf first.
    pub cert: String,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: String,
}

/// Explicit HTTP/2 limits (hyper's defaults change between versions; we set every one).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Http2Config {
    #[serde(default = "yes")]
    pub enabled: bool,
    #[serde(default = "default_max_concurrent_streams")]
    pub max_concurrent_streams: u32,
    /// Decoded header list size (bytes) a client may send; bigger heads are refused (CONTINUATION floods).
    #[serde(default = "default_max_header_list_size")]
    pub max_header_list_size: u32,
    /// Streams a client may reset before we answer: rapid reset (CVE-2023-44487) gets GOAWAY beyond it.
    #[serde(default = "default_max_pending_accept_reset_streams")]
    pub max_pending_accept_reset_streams: usize,
    /// Streams *we* may reset because of client errors (CVE-2025-8671, "MadeYouReset").
    #[serde(default = "default_max_local_error_reset_streams")]
    pub max_local_error_reset_streams: usize,
    /// PING interval to detect dead peers; `0s` disables.
    #[serde(default = "default_h2_keepalive")]
    pub keepalive_interval: Dur,
}

impl Default for Http2Config {
    fn default() -> Self {
        Self {
            enabled: true,
            max_concurrent_streams: default_max_concurrent_streams(),
            max_header_list_size: default_max_header_list_size(),
            max_pending_accept_reset_streams: default_max_pending_accept_reset_streams(),
            max_local_error_reset_streams: default_max_local_error_reset_streams(),
            keepalive_interval: default_h2_keepalive(),
        }
    }
}

fn default_max_concurrent_streams() -> u32 {
    100
}
fn default_max_header_list_size() -> u32 {
    64 * 1024
}
fn default_max_pending_accept_reset_streams() -> usize {
    20
}
fn default_max_local_error_reset_streams() -> usize {
    1024
}
fn default_h2_keepalive() -> Dur {
    Dur::secs(30)
}

/// A route: which requests (`match`) go where (`cluster` or `split`), and how they are rewritten.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    pub name: String,
    #[serde(rename = "match", default)]
    pub matches: RouteMatch,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
    /// Weighted choice among clusters (a traffic canary); exclusive with `cluster`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub split: Option<Vec<SplitTarget>>,
    /// Deadline for the upstream's response head, counted from routing (a stale-connection retry
    /// included). A streaming body is bounded by the cluster's `body_idle_timeout` instead.
    #[serde(default = "default_route_timeout")]
    pub timeout: Dur,
    /// Removed from the start of the path before forwarding (`/api` + `/api/x` → `/x`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strip_prefix: Option<String>,
    /// Host sent upstream instead of the client's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_rewrite: Option<String>,
    #[serde(default)]
    pub request_headers: HeaderRewrite,
    #[serde(default)]
    pub response_headers: HeaderRewrite,
    /// Retries (on by default for failures that are safe to retry).
    #[serde(default)]
    pub retry: RetryConfig,
    /// Hedged requests (off unless present).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hedge: Option<HedgeConfig>,
    /// The response when nothing can serve, instead of a bare 503.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_resort: Option<LastResortConfig>,
    /// `[[rate_limits]]` policies applied, by name, in order (every one must allow).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rate_limits: Vec<String>,
    /// Who is refused first under load.
    #[serde(default)]
    pub priority: RoutePriority,
    /// Only these client networks may use the route (else 403); empty = everyone.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow: Vec<String>,
    /// These client networks get 403 (wins over `allow`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deny: Vec<String>,
    /// Overrides the listener's `max_request_body_bytes` (0 = no limit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_request_body_bytes: Option<u64>,
}

fn default_route_timeout() -> Dur {
    Dur::secs(15)
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteMatch {
    /// Exact (`api.example.com`) or one-label wildcard (`*.example.com`); one name or a list. Port ignored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<OneOrMany>,
    /// Exact path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_prefix: Option<String>,
    /// Regex over the whole path (anchored).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_regex: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<HeaderMatch>,
}

/// One condition on a request header: `value` (equals), `present`, or `regex` (exactly one).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderMatch {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub present: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regex: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    pub fn as_slice(&self) -> &[String] {
        match self {
            Self::One(s) => std::slice::from_ref(s),
            Self::Many(v) => v,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SplitTarget {
    pub cluster: String,
    pub weight: u32,
}

/// Header edits: `set` replaces, `add` appends, `remove` deletes (applied remove → set → add).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderRewrite {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub set: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub add: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remove: Vec<String>,
}

impl HeaderRewrite {
    pub fn is_empty(&self) -> bool {
        self.set.is_empty() && self.add.is_empty() && self.remove.is_empty()
    }
}

/// A set of interchangeable endpoints and how to reach them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    #[serde(default)]
    pub balance: BalanceConfig,
    pub endpoints: Vec<EndpointConfig>,
    /// For `balance = "hash"`: `client_ip`, `path`, `header:NAME` or `cookie:NAME`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash_key: Option<String>,
    /// For `balance = "hash"`: an endpoint takes at most this factor × the mean in-flight load before
    /// its keys spill to the next one (bounded-load consistent hashing). 0 disables the bound.
    #[serde(default = "default_hash_balance_factor")]
    pub hash_balance_factor: f64,
    #[serde(default)]
    pub protocol: UpstreamProtocol,
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout: Dur,
    /// Time for one attempt from pool checkout (including connecting) to the response head;
    /// default: only the route's `timeout` applies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_header_timeout: Option<Dur>,
    /// Longest silence between two reads of a response (or request) body; the stream is cut after it.
    #[serde(default = "default_body_idle_timeout")]
    pub body_idle_timeout: Dur,
    /// Idle tunnel (WebSocket/Upgrade) lifetime without traffic either way.
    #[serde(default = "default_tunnel_idle_timeout")]
    pub tunnel_idle_timeout: Dur,
    #[serde(default)]
    pub pool: PoolConfig,
    /// Present (even empty) = speak TLS to the endpoints.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<UpstreamTlsConfig>,
    /// How often DNS names are re-resolved at most (their TTL is used when shorter, down to 1 s).
    #[serde(default = "default_dns_refresh")]
    pub dns_refresh: Dur,
    /// Active health checks; absent = none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<HealthCheckConfig>,
    #[serde(default)]
    pub outlier_detection: OutlierConfig,
    #[serde(default)]
    pub slow_start: SlowStartConfig,
    #[serde(default)]
    pub limits: LimitsConfig,
    #[serde(default)]
    pub retry_budget: RetryBudgetConfig,
    /// Present = on: the in-flight limit follows the upstream's latency.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adaptive_concurrency: Option<AdaptiveConcurrencyConfig>,
    /// Below this percent of healthy capacity, traffic spreads over every endpoint, healthy or not,
    /// rather than crush the survivors; 0 disables.
    #[serde(default = "default_panic_threshold")]
    pub panic_threshold: u32,
    /// A tier takes all its share while this factor × its healthy fraction is at least 1 (1.4: down to
    /// 71% healthy); below, the rest spills to the next `priority`.
    #[serde(default = "default_overprovisioning")]
    pub overprovisioning: f64,
    /// With `runtime.local_zone` set: the local zone takes all of a tier's traffic while at least
    /// this percent of its endpoints are healthy, a proportional share below.
    #[serde(default = "default_zone_min_healthy")]
    pub zone_min_healthy_percent: u32,
    /// Cluster used when this one has no endpoint that can serve.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback: Option<String>,
}

fn default_panic_threshold() -> u32 {
    50
}
fn default_overprovisioning() -> f64 {
    1.4
}
fn default_zone_min_healthy() -> u32 {
    70
}

fn default_hash_balance_factor() -> f64 {
    1.25
}
fn default_connect_timeout() -> Dur {
    Dur::secs(1)
}
fn default_body_idle_timeout() -> Dur {
    Dur::secs(30)
}
fn default_tunnel_idle_timeout() -> Dur {
    Dur::secs(300)
}
fn default_dns_refresh() -> Dur {
    Dur::secs(30)
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BalanceConfig {
    RoundRobin,
    LeastRequest,
    /// The default: it sees latency and load, so a slow endpoint loses traffic before any ejection.
    #[default]
    PeakEwma,
    Random,
    Hash,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UpstreamProtocol {
    #[default]
    Http1,
    H2,
}

/// An endpoint: `"host:port"`, or a table with its weight, tier and zone.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum EndpointConfig {
    Address(String),
    Detailed(EndpointSpec),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointSpec {
    pub address: String,
    #[serde(default = "default_weight")]
    pub weight: u32,
    /// Failover tier: 0 = primary, 1 = first backup, …
    #[serde(default, skip_serializing_if = "is_zero")]
    pub priority: u8,
    /// The zone the endpoint runs in (compared with `runtime.local_zone`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
}

/// By hand rather than `untagged`: an untagged enum reports "did not match any variant" for a
/// misspelt key, where this passes on `EndpointSpec`'s own error (`unknown field `wieght``).
impl<'de> Deserialize<'de> for EndpointConfig {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = EndpointConfig;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("\"host:port\" or { address = \"host:port\", weight = N }")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<EndpointConfig, E> {
                Ok(EndpointConfig::Address(v.to_owned()))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<EndpointConfig, A::Error> {
                EndpointSpec::deserialize(serde::de::value::MapAccessDeserializer::new(map))
                    .map(EndpointConfig::Detailed)
            }
        }
        d.deserialize_any(V)
    }
}

#[allow(clippy::trivially_copy_pass_by_ref)] // serde's skip_serializing_if passes a reference
fn is_zero(n: &u8) -> bool {
    *n == 0
}

fn default_weight() -> u32 {
    1
}

impl EndpointConfig {
    pub fn address(&self) -> &str {
        match self {
            Self::Address(a) | Self::Detailed(EndpointSpec { address: a, .. }) => a,
        }
    }
    pub fn weight(&self) -> u32 {
        match self {
            Self::Address(_) => 1,
            Self::Detailed(e) => e.weight,
        }
    }
    pub fn priority(&self) -> u8 {
        match self {
            Self::Address(_) => 0,
            Self::Detailed(e) => e.priority,
        }
    }
    pub fn zone(&self) -> Option<&str> {
        match self {
            Self::Address(_) => None,
            Self::Detailed(e) => e.zone.as_deref(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolConfig {
    /// Idle keep-alive connections kept per endpoint.
    #[serde(default = "default_max_idle")]
    pub max_idle_per_endpoint: usize,
    /// An idle pooled connection is closed after this (keep it below the upstream's own keep-alive).
    #[serde(default = "default_pool_idle_timeout")]
    pub idle_timeout: Dur,
}

impl Default for PoolConfig {
    fn default() -> Self {
        Self {
            max_idle_per_endpoint: default_max_idle(),
            idle_timeout: default_pool_idle_timeout(),
        }
    }
}

fn default_max_idle() -> usize {
    128
}
fn default_pool_idle_timeout() -> Dur {
    Dur::secs(30)
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamTlsConfig {
    /// SNI and the name verified; default: the endpoint's host name (or none for IP addresses).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sni: Option<String>,
    /// PEM CA bundle that *replaces* the public roots (for internal CAs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<String>,
    /// Turning verification off must be explicit; it is logged at every load.
    #[serde(default)]
    pub insecure_skip_verify: bool,
}
