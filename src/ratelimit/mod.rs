//! Rate limiting: the `[[rate_limits]]` policies a route names, and the one decision per request
//! they make together.
//!
//! A policy counts requests per key (client address, a header, the route, or a combination) with
//! GCRA ([`gcra`]): in this process ([`table`], bounded memory, idle keys expire) or in Redis for
//! the whole fleet ([`store`]). When Redis is unreachable or slower than its budget, a shared
//! policy falls back per `on_store_failure`: `local` counts here with this instance's share of the
//! rate (the rate divided by the instances Redis last said were alive), `allow` lets everything
//! through, `deny` refuses. A refusal is a 429 with `Retry-After` and the IETF `RateLimit-Policy`
//! / `RateLimit` headers ([`headers`]); a `dry_run` policy counts and logs and refuses nothing.
//!
//! The policies' state outlives a reload when the policy's name and counting are unchanged, and
//! the Redis connection when `[redis]` is unchanged.

pub mod gcra;
pub mod headers;
pub mod store;
pub mod table;

use std::{
    cell::RefCell,
    collections::HashMap,
    fmt::Write as _,
    net::IpAddr,
    sync::{Arc, OnceLock},
    time::{Duration, Instant},
};

use http::{HeaderMap, HeaderName, HeaderValue};
use metrics::{Counter, Gauge, Histogram, counter, gauge, histogram};
use sha2::{Digest, Sha256};

use crate::config::{Config, OnStoreFailure, RateLimitConfig, Scope};
use gcra::{Decision, Quota};
use store::{SharedStore, StoreSettings};
use table::{KeyTable, TopKeys};

/// One part of a policy's key.
#[derive(Debug, Clone, PartialEq, Eq)]
enum KeyPart {
    ClientIp,
    Header(HeaderName),
    Route,
}

/// What a key is built from.
pub struct KeyInput<'a> {
    pub client_ip: IpAddr,
    pub headers: &'a HeaderMap,
    pub route: &'a str,
}

/// A refused request's headers (boxed in the error: refusals are the rare path).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limited {
    pub policy: HeaderValue,
    pub limit: HeaderValue,
    pub retry_after: HeaderValue,
}

/// Decisions by result, resolved once per policy.
#[derive(Debug)]
struct Counters {
    allowed: Counter,
    limited: Counter,
    store_error: Counter,
    dry_run: Counter,
    degraded: Gauge,
    store_latency: Histogram,
}

impl Counters {
    fn new(policy: &str) -> Self {
        let c = |result: &'static str| counter!("palisade_ratelimit_decisions_total", "policy" => policy.to_owned(), "result" => result);
        Self {
            allowed: c("allowed"),
            limited: c("limited"),
            store_error: c("store_error"),
            dry_run: c("dry_run"),
            degraded: gauge!("palisade_ratelimit_degraded", "policy" => policy.to_owned()),
            store_latency: histogram!("palisade_ratelimit_store_seconds", "policy" => policy.to_owned()),
        }
    }
}

/// One compiled policy.
pub struct Policy {
    pub name: Arc<str>,
    key: Vec<KeyPart>,
    pub quota: Quota,
    pub rate: crate::config::Rate,
    pub scope: Scope,
    pub on_store_failure: OnStoreFailure,
    pub dry_run: bool,
    /// Local counting (scope local, or a shared policy's degraded mode).
    table: Arc<KeyTable>,
    top: Arc<TopKeys>,
    policy_header: HeaderValue,
    counters: Arc<Counters>,
    /// What this policy was compiled from, to decide whether its state carries over a reload.
    source: RateLimitConfig,
}

impl std::fmt::Debug for Policy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Policy")
            .field("name", &self.name)
            .field("rate", &self.rate)
            .field("scope", &self.scope)
            .finish_non_exhaustive()
    }
}

/// Every policy of a snapshot, and the shared store they use.
#[derive(Debug, Default)]
pub struct RateLimits {
    policies: Vec<Arc<Policy>>,
    store: Option<Arc<SharedStore>>,
    /// The `[redis]` table the store was started with.
    store_config: Option<crate::config::RedisConfig>,
}

/// Nanoseconds since the process's first decision: GCRA's clock for local counting.
fn now_ns(now: Instant) -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    let epoch = *EPOCH.get_or_init(Instant::now);
    // Offset by a second so that 0 ("never seen") is never a real time.
    u64::try_from(now.saturating_duration_since(epoch).as_nanos())
        .unwrap_or(u64::MAX)
        .saturating_add(1_000_000_000)
}

/// GCRA time for local counting now (connection admission uses it too).
pub fn monotonic_ns() -> u64 {
    now_ns(Instant::now())
}

/// This process's name in Redis's instance list.
fn instance_id() -> String {
    let host = crate::config::model::default_via();
    format!("{host}-{}-{:08x}", std::process::id(), fastrand::u32(..))
}

impl RateLimits {
    /// Compiles the policies, carrying over the state of unchanged ones (and the Redis connection
    /// when `[redis]` is unchanged) from `previous`.
    pub fn compile(config: &Config, previous: Option<&RateLimits>) -> Self {
        let store = match (&config.redis, previous) {
            (None, _) => None,
            (Some(r), Some(p)) if p.store.is_some() && p.store_config.as_ref() == Some(r) => {
                p.store.clone()
            }
            (Some(r), _) if config.rate_limits.iter().any(|p| p.scope == Scope::Shared) => {
                Some(SharedStore::start(StoreSettings {
                    url: r.url.clone(),
                    timeout: r.timeout.get(),
                    connect_timeout: r.connect_timeout.get(),
                    key_prefix: r.key_prefix.clone(),
                    instance_ttl: r.instance_ttl.get(),
                    instance_id: instance_id(),
                }))
            }
            (Some(_), _) => None,
        };
        let mut old: HashMap<&str, &Arc<Policy>> = HashMap::new();
        if let Some(p) = previous {
            for policy in &p.policies {
                old.insert(&policy.name, policy);
            }
        }
        let policies = config
            .rate_limits
            .iter()
            .map(|c| Arc::new(Policy::compile(c, old.get(c.name.as_str()).copied())))
            .collect();
        Self {
            policies,
            store,
            store_config: config.redis.clone(),
        }
    }

    /// Policy indexes for a route's `rate_limits` names (validation made sure they exist).
    pub fn indexes(&self, names: &[String]) -> Vec<usize> {
        names
            .iter()
            .filter_map(|n| self.policies.iter().position(|p| &*p.name == n))
            .collect()
    }

    pub fn policies(&self) -> &[Arc<Policy>] {
        &self.policies
    }

    pub fn store(&self) -> Option<&Arc<SharedStore>> {
        self.store.as_ref()
    }

    /// Runs every listed policy; the first that refuses decides (later ones are not charged).
    pub async fn check(&self, listed: &[usize], input: &KeyInput<'_>) -> Result<(), Box<Limited>> {
        for &i in listed {
            let Some(p) = self.policies.get(i) else {
                continue;
            };
            p.check(self.store.as_deref(), input).await?;
        }
        Ok(())
    }

    /// Drops expired keys (run about once a second) and, with `age`, halves the most-limited
    /// counts (about every 10 s), so `/limits` shows who is limited now, not since start.
    pub fn sweep(&self, now: Instant, age: bool) {
        let now = now_ns(now);
        for p in &self.policies {
            p.table.sweep(now);
            if age {
                p.top.decay();
            }
        }
    }
}

impl Policy {
    fn compile(c: &RateLimitConfig, previous: Option<&Arc<Policy>>) -> Self {
        let quota = Quota::new(c.rate.count, c.rate.period, c.burst());
        let key = c
            .key
            .iter()
            .filter_map(|part| match part.split_once(':') {
                None if part == "client_ip" => Some(KeyPart::ClientIp),
                None if part == "route" => Some(KeyPart::Route),
                Some(("header", name)) => HeaderName::from_bytes(name.as_bytes())
                    .ok()
                    .map(KeyPart::Header),
                _ => None,
            })
            .collect();
        // Same counting and same bound: the buckets (and their history) carry over a reload.
        let same = previous.filter(|p| {
            p.source.key == c.key
                && p.source.rate == c.rate
                && p.source.burst() == c.burst()
                && p.source.max_keys == c.max_keys
        });
        let (table, top) = match same {
            Some(p) => (Arc::clone(&p.table), Arc::clone(&p.top)),
            None => (
                Arc::new(KeyTable::new(c.max_keys)),
                Arc::new(TopKeys::new(TOP_KEYS)),
            ),
        };
        let counters = match previous {
            Some(p) => Arc::clone(&p.counters),
            None => Arc::new(Counters::new(&c.name)),
        };
        Self {
            name: c.name.as_str().into(),
            key,
            quota,
            rate: c.rate,
            scope: c.scope,
            on_store_failure: c.on_store_failure,
            dry_run: c.dry_run,
            table,
            top,
            // Validation allows only token characters in names, so this always builds.
            policy_header: headers::policy_value(&c.name, c.rate.count, c.rate.period_secs())
                .unwrap_or_else(|| HeaderValue::from_static("")),
            counters,
            source: c.clone(),
        }
    }

    /// The most-limited keys right now (display form: header values shortened).
    pub fn top_limited(&self, n: usize) -> Vec<(String, u64)> {
        self.top.list(n)
    }

    /// Keys tracked locally now.
    pub fn tracked_keys(&self) -> usize {
        self.table.len()
    }

    /// "shared", "degraded" (shared, counting locally while Redis is lost) or "local".
    pub fn mode(&self, store: Option<&SharedStore>) -> &'static str {
        match (self.scope, store) {
            (Scope::Local, _) => "local",
            (Scope::Shared, Some(s)) if s.is_up() => "shared",
            (Scope::Shared, _) => "degraded",
        }
    }

    async fn check(
        &self,
        store: Option<&SharedStore>,
        input: &KeyInput<'_>,
    ) -> Result<(), Box<Limited>> {
        // The key is built once, in a reused buffer; both hashes come from it.
        let (local_hash, shared_hash) = KEY_BUF.with(|buf| {
            let mut buf = buf.borrow_mut();
            buf.clear();
            self.write_key(input, &mut buf);
            let shared = (self.scope == Scope::Shared).then(|| stable_hash(&buf));
            (self.table.hash(&buf), shared)
        });
        let decision = match shared_hash {
            None => self
                .table
                .check(local_hash, &self.quota, now_ns(Instant::now())),
            Some(shared_hash) => self.check_shared(store, shared_hash, local_hash).await,
        };
        if decision.allowed {
            self.counters.allowed.increment(1);
            return Ok(());
        }
        self.top.record(local_hash, || self.display(input));
        if self.dry_run {
            self.counters.dry_run.increment(1);
            tracing::info!(policy = %self.name, key = %self.display(input), "rate limit exceeded (dry run: allowed)");
            return Ok(());
        }
        self.counters.limited.increment(1);
        Err(Box::new(Limited {
            policy: self.policy_header.clone(),
            limit: headers::limit_value(&self.name, &decision),
            retry_after: headers::retry_after_value(&decision),
        }))
    }

    async fn check_shared(
        &self,
        store: Option<&SharedStore>,
        shared_hash: u64,
        local_hash: u64,
    ) -> Decision {
        let failed = match store {
            Some(s) => match s.check(&self.name, shared_hash, &self.quota).await {
                Ok((d, took)) => {
                    self.counters.store_latency.record(took.as_secs_f64());
                    self.counters.degraded.set(0.0);
                    return d;
                }
                Err(e) => e.as_str(),
            },
            None => "no_store",
        };
        self.counters.store_error.increment(1);
        self.counters.degraded.set(1.0);
        tracing::debug!(policy = %self.name, error = failed, "rate-limit store unavailable; falling back");
        match self.on_store_failure {
            OnStoreFailure::Local => {
                let share = store.map_or(1, SharedStore::live_instances).max(1);
                self.table.check(
                    local_hash,
                    &self.quota.divided(share),
                    now_ns(Instant::now()),
                )
            }
            OnStoreFailure::Allow => Decision {
                allowed: true,
                remaining: 0,
                reset_after_ns: 0,
                retry_after_ns: 0,
            },
            OnStoreFailure::Deny => Decision {
                allowed: false,
                remaining: 0,
                reset_after_ns: 0,
                retry_after_ns: Duration::from_secs(1).as_nanos() as u64,
            },
        }
    }

    /// The key's bytes: each part, separated by a byte no header value contains.
    fn write_key(&self, input: &KeyInput<'_>, buf: &mut Vec<u8>) {
        for part in &self.key {
            match part {
                // An IPv6 client is counted by its /64 (one host usually holds a whole /64, so
                // rotating addresses inside it must not buy a fresh budget).
                KeyPart::ClientIp => match input.client_ip {
                    IpAddr::V4(v4) => buf.extend_from_slice(&v4.octets()),
                    IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                        Some(v4) => buf.extend_from_slice(&v4.octets()),
                        None => buf.extend_from_slice(&v6.octets()[..8]),
                    },
                },
                KeyPart::Header(name) => {
                    if let Some(v) = input.headers.get(name) {
                        buf.extend_from_slice(v.as_bytes());
                    }
                }
                KeyPart::Route => buf.extend_from_slice(input.route.as_bytes()),
            }
            buf.push(0);
        }
    }

    /// How `/limits` shows a key: the client address in full, a header's value shortened to its
    /// first 4 characters (API keys are credentials), the route by name.
    fn display(&self, input: &KeyInput<'_>) -> String {
        let mut s = String::new();
        for part in &self.key {
            if !s.is_empty() {
                s.push(' ');
            }
            match part {
                KeyPart::ClientIp => {
                    let _ = write!(s, "client_ip={}", input.client_ip);
                }
                KeyPart::Header(name) => {
                    let v = input
                        .headers
                        .get(name)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("");
                    let shown: String = v.chars().take(4).collect();
                    let more = if v.chars().count() > 4 { "…" } else { "" };
                    let _ = write!(s, "{name}={shown}{more}");
                }
                KeyPart::Route => {
                    let _ = write!(s, "route={}", input.route);
                }
            }
        }
        s
    }
}

/// Keys shown by `/limits` per policy.
const TOP_KEYS: usize = 32;

thread_local! {
    /// One key buffer per worker thread: building a key allocates nothing after warm-up.
    static KEY_BUF: RefCell<Vec<u8>> = RefCell::new(Vec::with_capacity(128));
}

/// The key's name in Redis: the same on every instance and every build (a process-random hash
/// would give each instance its own bucket), and not the key itself (API keys are credentials).
fn stable_hash(key: &[u8]) -> u64 {
    let d = Sha256::digest(key);
    let mut b = [0u8; 8];
    b.copy_from_slice(&d[..8]);
    u64::from_le_bytes(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(toml: &str) -> Config {
        crate::config::parse(toml, std::path::PathBuf::from("."))
            .unwrap()
            .config
    }

    const BASE: &str = r#"
        [listeners.web]
        listen = "127.0.0.1:0"
        [clusters.c]
        endpoints = ["127.0.0.1:1"]
        [[routes]]
        name = "r"
        match = { path_prefix = "/" }
        cluster = "c"
        rate_limits = ["p"]
    "#;

    fn input<'a>(headers: &'a HeaderMap, ip: [u8; 4]) -> KeyInput<'a> {
        KeyInput {
            client_ip: IpAddr::from(ip),
            headers,
            route: "r",
        }
    }

    #[tokio::test]
    async fn a_local_policy_allows_its_burst_then_answers_with_headers() {
        let c = config(&format!(
            "{BASE}\n[[rate_limits]]\nname = \"p\"\nkey = [\"client_ip\"]\nrate = \"1/h\"\nburst = 2\n"
        ));
        let rl = RateLimits::compile(&c, None);
        let listed = rl.indexes(&["p".to_owned()]);
        let h = HeaderMap::new();
        assert!(rl.check(&listed, &input(&h, [10, 0, 0, 1])).await.is_ok());
        assert!(rl.check(&listed, &input(&h, [10, 0, 0, 1])).await.is_ok());
        let limited = rl
            .check(&listed, &input(&h, [10, 0, 0, 1]))
            .await
            .unwrap_err();
        assert_eq!(limited.policy, "\"p\";q=1;w=3600");
        assert!(limited.limit.to_str().unwrap().starts_with("\"p\";r=0;t="));
        // Another client has its own bucket.
        assert!(rl.check(&listed, &input(&h, [10, 0, 0, 2])).await.is_ok());
        assert_eq!(
            rl.policies()[0].top_limited(5),
            vec![("client_ip=10.0.0.1".to_owned(), 1)]
        );
    }

    #[tokio::test]
    async fn dry_run_counts_but_never_refuses() {
        let c = config(&format!(
            "{BASE}\n[[rate_limits]]\nname = \"p\"\nkey = [\"route\"]\nrate = \"1/h\"\nburst = 1\ndry_run = true\n"
        ));
        let rl = RateLimits::compile(&c, None);
        let listed = rl.indexes(&["p".to_owned()]);
        let h = HeaderMap::new();
        for _ in 0..5 {
            assert!(rl.check(&listed, &input(&h, [10, 0, 0, 1])).await.is_ok());
        }
        assert_eq!(rl.policies()[0].top_limited(1)[0].1, 4);
    }

    #[tokio::test]
    async fn header_keys_count_per_value_and_display_shortened() {
        let c = config(&format!(
            "{BASE}\n[[rate_limits]]\nname = \"p\"\nkey = [\"header:x-api-key\"]\nrate = \"1/h\"\nburst = 1\n"
        ));
        let rl = RateLimits::compile(&c, None);
        let listed = rl.indexes(&["p".to_owned()]);
        let mut a = HeaderMap::new();
        a.insert("x-api-key", HeaderValue::from_static("secret-a"));
        let mut b = HeaderMap::new();
        b.insert("x-api-key", HeaderValue::from_static("secret-b"));
        assert!(rl.check(&listed, &input(&a, [10, 0, 0, 1])).await.is_ok());
        assert!(rl.check(&listed, &input(&b, [10, 0, 0, 1])).await.is_ok());
        assert!(rl.check(&listed, &input(&a, [10, 0, 0, 9])).await.is_err());
        assert_eq!(rl.policies()[0].top_limited(1)[0].0, "x-api-key=secr…");
    }

    #[tokio::test]
    async fn unchanged_policies_keep_their_buckets_across_a_reload() {
        let text = format!(
            "{BASE}\n[[rate_limits]]\nname = \"p\"\nkey = [\"client_ip\"]\nrate = \"1/h\"\nburst = 1\n"
        );
        let first = RateLimits::compile(&config(&text), None);
        let listed = first.indexes(&["p".to_owned()]);
        let h = HeaderMap::new();
        assert!(
            first
                .check(&listed, &input(&h, [10, 0, 0, 1]))
                .await
                .is_ok()
        );
        let second = RateLimits::compile(&config(&text), Some(&first));
        assert!(
            second
                .check(&listed, &input(&h, [10, 0, 0, 1]))
                .await
                .is_err()
        );
        let changed = RateLimits::compile(&config(&text.replace("1/h", "2/h")), Some(&second));
        assert!(
            changed
                .check(&listed, &input(&h, [10, 0, 0, 1]))
                .await
                .is_ok()
        );
    }

    #[tokio::test]
    async fn a_shared_policy_without_its_store_follows_on_store_failure() {
        // Redis on a closed port: the store is down from the start.
        let shared = |mode: &str| {
            config(&format!(
                "{BASE}\n[redis]\nurl = \"redis://127.0.0.1:1\"\n[[rate_limits]]\nname = \"p\"\nkey = [\"client_ip\"]\nrate = \"1/h\"\nburst = 1\nscope = \"shared\"\non_store_failure = \"{mode}\"\n"
            ))
        };
        let h = HeaderMap::new();
        for (mode, expect) in [
            ("allow", [true, true, true]),
            ("deny", [false, false, false]),
            ("local", [true, false, false]),
        ] {
            let rl = RateLimits::compile(&shared(mode), None);
            let listed = rl.indexes(&["p".to_owned()]);
            for want in expect {
                let got = rl.check(&listed, &input(&h, [10, 0, 0, 1])).await.is_ok();
                assert_eq!(got, want, "{mode}");
            }
            assert_eq!(rl.policies()[0].mode(rl.store().map(|s| &**s)), "degraded");
        }
    }
}
