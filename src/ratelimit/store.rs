//! The Redis-backed store behind `scope = "shared"` rate-limit policies: one GCRA counter per
//! (policy, key) in Redis, so a fleet of Palisades enforces one limit, and a registry of live
//! instances so the integrator can split a limit when it has to count locally.
//!
//! Owns: the connection ([`redis::aio::ConnectionManager`]), the atomic Lua script that applies
//! the GCRA on the Redis server's clock, the up/down state with its probe loop, and the instance
//! heartbeat. It does not own the GCRA's semantics (those are [`super::gcra::decide`], which turns
//! the script's reply into a [`Decision`], so shared and local limits answer alike), what to do
//! while Redis is down (the caller falls back to local counting on any `Err`), config, or metrics.
//!
//! The request path never waits on a sick Redis: once marked down, [`SharedStore::check`] answers
//! [`StoreError::Down`] without touching the network until the background probe sees Redis again.
//!
//! One Redis node (or anything speaking to one, like a Sentinel-managed primary behind a stable
//! address); Redis Cluster is not supported (the instance set and counters carry no hash tags).

use std::{
    fmt,
    sync::{
        Arc,
        atomic::{AtomicU8, AtomicU32, Ordering},
    },
    time::{Duration, Instant},
};

use arc_swap::ArcSwapOption;
use redis::{
    Script, Value,
    aio::{ConnectionManager, ConnectionManagerConfig},
};
use tokio::sync::Notify;
use tokio_util::sync::{CancellationToken, DropGuard};

use super::gcra::{self, Decision, Quota};

/// How often a down store probes Redis: counting resumes within about this long (plus one
/// round trip) of Redis coming back.
pub const PROBE_EVERY: Duration = Duration::from_millis(250);

/// The smallest effective [`StoreSettings::instance_ttl`] (a heartbeat every 10 ms at most).
pub const MIN_INSTANCE_TTL: Duration = Duration::from_millis(30);

/// The GCRA of [`super::gcra`] on the server's clock, in microseconds (public so tests can run
/// it on a clock of their own).
///
/// `KEYS[1]`: the counter. `ARGV`: emission interval (µs, ≥ 1), burst (≥ 1), and, for tests only,
/// the instant to use instead of the server's `TIME` (µs). Replies
/// `{allowed (0|1), tat before this request (µs, 0 when unset), now (µs)}`; the caller derives the
/// rest of the decision from these with `gcra::decide`. A refused request writes nothing (abuse
/// does not turn into write load); an admitted one stores the new TAT, expiring when it stops
/// mattering (a missing key and a TAT in the past mean the same: a full burst).
/// `replicate_commands` lets Redis < 5 accept a write after `TIME`; later versions always do.
/// Numbers are written with `%.0f` because Lua 5.1 prints larger ones in exponent form. Lua
/// numbers are doubles: exact while TATs stay below 2^53 µs (the year 2255).
pub const GCRA_LUA: &str = r"
if redis.replicate_commands then redis.replicate_commands() end
local emission = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local now = tonumber(ARGV[3])
if not now then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000000 + tonumber(t[2])
end
local tat = tonumber(redis.call('GET', KEYS[1]) or '0') or 0
local base = tat
if base < now then base = now end
local new_tat = base + emission
if new_tat - now <= emission * burst then
  redis.call('SET', KEYS[1], string.format('%.0f', new_tat), 'PX', math.ceil((new_tat - now) / 1000))
  return {1, tat, now}
end
return {0, tat, now}
";

/// The heartbeat: `KEYS[1]` the instance set, `ARGV`: this instance's id, ttl (ms). Scores are
/// the server's clock in ms, so proxies' clock skew does not matter. Replies the live count.
const ANNOUNCE_LUA: &str = r"
if redis.replicate_commands then redis.replicate_commands() end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[2])
redis.call('ZADD', KEYS[1], string.format('%.0f', now), ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. string.format('%.0f', now - ttl))
redis.call('PEXPIRE', KEYS[1], ttl)
return redis.call('ZCARD', KEYS[1])
";

/// How a [`SharedStore`] reaches Redis.
#[derive(Clone)]
pub struct StoreSettings {
    /// `redis://[user:password@]host:port[/db]` (or `rediss://` if the crate is built with TLS).
    pub url: String,
    /// The budget of one decision, round trip included (e.g. 5 ms). Past it the request is
    /// answered without Redis and the store is marked down.
    pub timeout: Duration,
    /// Budget of one connection attempt; also bounds each background command (heartbeat, probe).
    pub connect_timeout: Duration,
    /// Prepended to every key (e.g. `palisade:`), so fleets or environments can share a Redis.
    pub key_prefix: String,
    /// An instance not heard from for this long is no longer counted live; heartbeats go every
    /// third of it. Raised to [`MIN_INSTANCE_TTL`] if smaller.
    pub instance_ttl: Duration,
    /// This proxy's name in the instance set: must be unique in the fleet (see [`instance_id`]).
    pub instance_id: String,
}

impl StoreSettings {
    /// The usual settings for `url`: 5 ms per decision, 1 s to connect, prefix `palisade:`,
    /// instances live for 5 s, and a random instance id.
    pub fn new(url: impl Into<String>, rng: &mut fastrand::Rng) -> StoreSettings {
        StoreSettings {
            url: url.into(),
            timeout: Duration::from_millis(5),
            connect_timeout: Duration::from_secs(1),
            key_prefix: "palisade:".into(),
            instance_ttl: Duration::from_secs(5),
            instance_id: instance_id(rng),
        }
    }
}

impl fmt::Debug for StoreSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The URL may carry a password.
        let url = match self.url.rsplit_once('@') {
            Some((_, host)) => format!("<credentials>@{host}"),
            None => self.url.clone(),
        };
        f.debug_struct("StoreSettings")
            .field("url", &url)
            .field("timeout", &self.timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("key_prefix", &self.key_prefix)
            .field("instance_ttl", &self.instance_ttl)
            .field("instance_id", &self.instance_id)
            .finish()
    }
}

/// A fleet-unique instance id: the process id and 64 random bits (pids repeat across hosts).
pub fn instance_id(rng: &mut fastrand::Rng) -> String {
    format!("{}-{:016x}", std::process::id(), rng.u64(..))
}

/// Why a shared decision could not be made; the caller counts locally instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The store is marked down (or has never been up); no request was sent.
    #[error("shared rate-limit store is down")]
    Down,
    /// Redis did not answer within [`StoreSettings::timeout`].
    #[error("shared rate-limit store timed out")]
    Timeout,
    /// Redis answered with an error, the connection failed, or the reply was malformed.
    #[error("shared rate-limit store error: {0}")]
    Redis(String),
}

impl StoreError {
    /// A fixed label for metrics: `down`, `timeout` or `redis`.
    pub fn as_str(&self) -> &'static str {
        match self {
            StoreError::Down => "down",
            StoreError::Timeout => "timeout",
            StoreError::Redis(_) => "redis",
        }
    }
}

/// `state` values. `NEVER_UP` differs from `DOWN` only in what gets logged.
const NEVER_UP: u8 = 0;
const UP: u8 = 1;
const DOWN: u8 = 2;

/// What the request path and the background task share.
struct Shared {
    state: AtomicU8,
    /// Last known live instance count; 0 until first known.
    live: AtomicU32,
    /// The connection in use; replaced by the probe when it had to reconnect from scratch.
    conn: ArcSwapOption<ConnectionManager>,
    /// Tells the background task that the request path marked the store down.
    went_down: Notify,
    gcra: Script,
    timeout: Duration,
    key_prefix: String,
}

impl Shared {
    fn is_up(&self) -> bool {
        self.state.load(Ordering::Acquire) == UP
    }

    fn mark_down(&self, error: &dyn fmt::Display) {
        match self.state.swap(DOWN, Ordering::AcqRel) {
            UP => {
                tracing::warn!(error = %error, "shared rate-limit store is down; shared policies count locally until it is back");
                self.went_down.notify_one();
            }
            NEVER_UP => {
                tracing::warn!(error = %error, "shared rate-limit store unreachable; shared policies count locally until it answers");
            }
            _ => {}
        }
    }

    fn mark_up(&self) {
        if self.state.swap(UP, Ordering::AcqRel) != UP {
            tracing::info!(
                live_instances = self.live.load(Ordering::Relaxed),
                "shared rate-limit store is up; shared policies count in Redis"
            );
        }
    }
}

/// The shared counters of every `scope = "shared"` policy, one per process (or per config).
///
/// Dropping the last `Arc<SharedStore>` stops its background task (it holds a [`DropGuard`]),
/// which then removes this instance from the live set, best effort.
pub struct SharedStore {
    shared: Arc<Shared>,
    _stop: DropGuard,
}

impl fmt::Debug for SharedStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedStore")
            .field("up", &self.is_up())
            .field("live_instances", &self.live_instances())
            .finish_non_exhaustive()
    }
}

impl SharedStore {
    /// Starts the store: returns at once, marked down until the background task has reached
    /// Redis. Never fails: a bad URL or an unreachable Redis is logged and leaves it down (a bad
    /// URL for good). Called outside a Tokio runtime it stays down, with an error logged.
    pub fn start(settings: StoreSettings) -> Arc<SharedStore> {
        let shared = Arc::new(Shared {
            state: AtomicU8::new(NEVER_UP),
            live: AtomicU32::new(0),
            conn: ArcSwapOption::empty(),
            went_down: Notify::new(),
            gcra: Script::new(GCRA_LUA),
            timeout: settings.timeout,
            key_prefix: settings.key_prefix.clone(),
        });
        let stop = CancellationToken::new();
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn(background(shared.clone(), settings, stop.clone()));
            }
            Err(_) => tracing::error!(
                "shared rate-limit store started outside a Tokio runtime; it stays down"
            ),
        }
        Arc::new(SharedStore {
            shared,
            _stop: stop.drop_guard(),
        })
    }

    /// One rate-limit decision for `key_hash` under `policy`, counted across the fleet.
    ///
    /// Returns the decision and the store's latency (the round trip, for the integrator's
    /// histogram). Any `Err` means "decide locally": [`StoreError::Down`] comes back at once
    /// without I/O; a timeout or an error takes at most [`StoreSettings::timeout`] and marks the
    /// store down. The quota's emission interval is rounded up to whole microseconds (at least 1),
    /// the script's unit; the decision is computed on that rounded quota.
    pub async fn check(
        &self,
        policy: &str,
        key_hash: u64,
        quota: &Quota,
    ) -> Result<(Decision, Duration), StoreError> {
        if !self.shared.is_up() {
            return Err(StoreError::Down);
        }
        let Some(mut conn) = self.shared.conn.load().as_deref().cloned() else {
            return Err(StoreError::Down);
        };
        let (emission_us, q) = micro_quota(quota);
        let key = counter_key(&self.shared.key_prefix, policy, key_hash);
        let mut call = self.shared.gcra.key(key);
        call.arg(emission_us).arg(q.burst);
        let started = Instant::now();
        let reply =
            tokio::time::timeout(self.shared.timeout, call.invoke_async::<Value>(&mut conn)).await;
        let elapsed = started.elapsed();
        let reply = match reply {
            Ok(Ok(v)) => v,
            Ok(Err(e)) => {
                self.shared.mark_down(&e);
                return Err(StoreError::Redis(e.to_string()));
            }
            Err(_) => {
                self.shared.mark_down(&StoreError::Timeout);
                return Err(StoreError::Timeout);
            }
        };
        let Some(r) = parse_reply(&reply) else {
            let e = StoreError::Redis("malformed script reply".into());
            self.shared.mark_down(&e);
            return Err(e);
        };
        let (mut decision, _) = gcra::decide(&q, r.tat_us.saturating_mul(1000), r.now_ns());
        // Both apply the same rule to the same integers, so they agree; if they ever did not,
        // the script's verdict is what Redis recorded, so it wins.
        if decision.allowed != r.allowed {
            decision.allowed = r.allowed;
            if !r.allowed {
                decision.remaining = 0;
            }
        }
        Ok((decision, elapsed))
    }

    /// True while shared decisions go to Redis (false before the first successful probe).
    pub fn is_up(&self) -> bool {
        self.shared.is_up()
    }

    /// Instances heard from within `instance_ttl`, this one included: the last count seen while
    /// up (kept while down), 1 if never known.
    pub fn live_instances(&self) -> u32 {
        self.shared.live.load(Ordering::Relaxed).max(1)
    }

    /// The Redis key of `policy`'s counter for `key_hash` (for tests and debugging tools).
    pub fn counter_key(&self, policy: &str, key_hash: u64) -> String {
        counter_key(&self.shared.key_prefix, policy, key_hash)
    }
}

/// `<prefix>rl:<policy>:<key_hash as 16 hex digits>`.
fn counter_key(prefix: &str, policy: &str, key_hash: u64) -> String {
    use fmt::Write as _;
    let mut k = String::with_capacity(prefix.len() + policy.len() + 20);
    k.push_str(prefix);
    k.push_str("rl:");
    k.push_str(policy);
    let _ = write!(k, ":{key_hash:016x}");
    k
}

/// `<prefix>instances`.
fn instances_key(prefix: &str) -> String {
    format!("{prefix}instances")
}

/// The quota in the script's unit: (emission in µs rounded up, at least 1; the same quota in ns,
/// burst at least 1 as `decide` treats it, so the script and `decide` see the same numbers).
fn micro_quota(q: &Quota) -> (u64, Quota) {
    let us = q.emission_ns.div_ceil(1000).max(1);
    (
        us,
        Quota {
            emission_ns: us.saturating_mul(1000),
            burst: q.burst.max(1),
        },
    )
}

/// The GCRA script's reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Reply {
    allowed: bool,
    /// The TAT before this request, µs on the server's clock (0: none).
    tat_us: u64,
    /// The server's clock, µs.
    now_us: u64,
}

impl Reply {
    fn now_ns(&self) -> u64 {
        self.now_us.saturating_mul(1000)
    }
}

/// `{allowed, tat, now}` as three non-negative integers.
fn parse_reply(v: &Value) -> Option<Reply> {
    let Value::Array(items) = v else {
        return None;
    };
    let [Value::Int(allowed), Value::Int(tat), Value::Int(now)] = items.as_slice() else {
        return None;
    };
    let allowed = match allowed {
        0 => false,
        1 => true,
        _ => return None,
    };
    Some(Reply {
        allowed,
        tat_us: u64::try_from(*tat).ok()?,
        now_us: u64::try_from(*now).ok()?,
    })
}

/// The background task: heartbeat while up, probe while down, until `stop`.
async fn background(shared: Arc<Shared>, settings: StoreSettings, stop: CancellationToken) {
    let client = match redis::Client::open(settings.url.as_str()) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "shared rate-limit store: invalid Redis URL; shared policies always count locally");
            return;
        }
    };
    // The request path's budget is enforced by `check`; this one bounds background commands.
    let background_budget = settings.connect_timeout.max(settings.timeout);
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(settings.connect_timeout))
        .set_response_timeout(Some(background_budget))
        // The probe loop is the retry: a manager retrying on its own would hold probes up.
        .set_number_of_retries(0);
    let ttl = settings.instance_ttl.max(MIN_INSTANCE_TTL);
    let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
    let heartbeat = Heartbeat {
        script: Script::new(ANNOUNCE_LUA),
        key: instances_key(&settings.key_prefix),
        id: settings.instance_id,
        ttl_ms,
    };
    // Connect, PING, announce, and the script loads: a few round trips, each bounded by the
    // manager's own timeouts; this is the backstop.
    let op_budget = background_budget.saturating_mul(2);
    let mut conn: Option<ConnectionManager> = None;
    let mut first_probe = true;
    loop {
        if shared.is_up() {
            tokio::select! {
                () = stop.cancelled() => break,
                () = shared.went_down.notified() => continue,
                () = tokio::time::sleep(ttl / 3) => {}
            }
            let Some(c) = conn.as_mut() else {
                shared.mark_down(&"no connection");
                continue;
            };
            let beat = tokio::select! {
                () = stop.cancelled() => break,
                r = tokio::time::timeout(op_budget, heartbeat.beat(c)) => r,
            };
            match beat {
                Ok(Ok(n)) => shared.live.store(n, Ordering::Relaxed),
                Ok(Err(e)) => shared.mark_down(&e),
                Err(_) => shared.mark_down(&StoreError::Timeout),
            }
            continue;
        }
        // Down: wait first (except at start), so a Redis that keeps blowing the per-decision
        // budget flips at most a few times a second instead of on every request.
        if !first_probe {
            tokio::select! {
                () = stop.cancelled() => break,
                () = tokio::time::sleep(PROBE_EVERY) => {}
            }
        }
        first_probe = false;
        let mut c = match conn.take() {
            Some(c) => c,
            None => match ConnectionManager::new_lazy_with_config(client.clone(), config.clone()) {
                Ok(c) => c,
                Err(e) => {
                    shared.mark_down(&e);
                    continue;
                }
            },
        };
        let probed = tokio::select! {
            () = stop.cancelled() => break,
            r = tokio::time::timeout(op_budget, probe(&mut c, &heartbeat, &shared.gcra)) => r,
        };
        match probed {
            Ok(Ok(n)) => {
                shared.live.store(n, Ordering::Relaxed);
                shared.conn.store(Some(Arc::new(c.clone())));
                conn = Some(c);
                shared.mark_up();
            }
            // Dropping `c` means the next probe starts from a fresh connection: a manager whose
            // reconnect failed in some ways never tries again by itself.
            Ok(Err(e)) => shared.mark_down(&e),
            Err(_) => shared.mark_down(&StoreError::Timeout),
        }
    }
    if shared.is_up()
        && let Some(c) = conn.as_mut()
    {
        let _ = tokio::time::timeout(op_budget, heartbeat.leave(c)).await;
    }
}

/// PING, then the heartbeat (which exercises Lua, `TIME` and a write, so a read-only or
/// out-of-memory Redis stays down instead of flapping), then load the GCRA script so the first
/// decision after a Redis restart does not pay for `NOSCRIPT`.
async fn probe(
    c: &mut ConnectionManager,
    heartbeat: &Heartbeat,
    gcra: &Script,
) -> redis::RedisResult<u32> {
    redis::cmd("PING").query_async::<()>(c).await?;
    let n = heartbeat.beat(c).await?;
    gcra.load_async(c).await?;
    Ok(n)
}

/// This instance's entry in the live set.
struct Heartbeat {
    script: Script,
    key: String,
    id: String,
    ttl_ms: u64,
}

impl Heartbeat {
    /// Announces this instance; returns the live count (at least 1: this one).
    async fn beat(&self, c: &mut ConnectionManager) -> redis::RedisResult<u32> {
        let n: u64 = self
            .script
            .key(self.key.as_str())
            .arg(self.id.as_str())
            .arg(self.ttl_ms)
            .invoke_async(c)
            .await?;
        Ok(u32::try_from(n).unwrap_or(u32::MAX).max(1))
    }

    async fn leave(&self, c: &mut ConnectionManager) -> redis::RedisResult<()> {
        redis::cmd("ZREM")
            .arg(self.key.as_str())
            .arg(self.id.as_str())
            .query_async(c)
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ints(v: &[i64]) -> Value {
        Value::Array(v.iter().map(|i| Value::Int(*i)).collect())
    }

    #[test]
    fn counter_key_is_prefix_rl_policy_and_16_hex_digits() {
        assert_eq!(
            counter_key("palisade:", "api", 0xab),
            "palisade:rl:api:00000000000000ab"
        );
        assert_eq!(counter_key("", "p", u64::MAX), "rl:p:ffffffffffffffff");
    }

    #[test]
    fn different_policies_and_keys_never_share_a_counter() {
        assert_ne!(counter_key("x:", "a", 1), counter_key("x:", "b", 1));
        assert_ne!(counter_key("x:", "a", 1), counter_key("x:", "a", 2));
        assert_ne!(counter_key("x:", "a", 1), counter_key("y:", "a", 1));
    }

    #[test]
    fn instances_key_uses_the_prefix() {
        assert_eq!(instances_key("palisade:"), "palisade:instances");
    }

    #[test]
    fn a_well_formed_reply_parses() {
        assert_eq!(
            parse_reply(&ints(&[1, 0, 1_700_000_000_123_456])),
            Some(Reply {
                allowed: true,
                tat_us: 0,
                now_us: 1_700_000_000_123_456
            })
        );
        let r = parse_reply(&ints(&[0, 1_700_000_000_200_000, 1_700_000_000_100_000]));
        assert_eq!(
            r,
            Some(Reply {
                allowed: false,
                tat_us: 1_700_000_000_200_000,
                now_us: 1_700_000_000_100_000
            })
        );
        assert_eq!(r.map(|r| r.now_ns()), Some(1_700_000_000_100_000_000));
    }

    #[test]
    fn malformed_replies_are_refused() {
        assert_eq!(parse_reply(&ints(&[1, 0])), None);
        assert_eq!(parse_reply(&ints(&[1, 0, 5, 6])), None);
        assert_eq!(parse_reply(&ints(&[2, 0, 5])), None);
        assert_eq!(parse_reply(&ints(&[1, -1, 5])), None);
        assert_eq!(parse_reply(&ints(&[1, 0, -5])), None);
        assert_eq!(parse_reply(&Value::Int(1)), None);
        assert_eq!(parse_reply(&Value::Nil), None);
        let bulk = Value::Array(vec![
            Value::Int(1),
            Value::BulkString(b"0".to_vec()),
            Value::Int(5),
        ]);
        assert_eq!(parse_reply(&bulk), None);
    }

    #[test]
    fn quotas_round_up_to_whole_microseconds() {
        let (us, q) = micro_quota(&Quota {
            emission_ns: 10_000_000,
            burst: 10,
        });
        assert_eq!((us, q.emission_ns, q.burst), (10_000, 10_000_000, 10));
        // 3/s: 333_333_333 ns → 333_334 µs, never a faster rate than asked.
        let (us, q) = micro_quota(&Quota {
            emission_ns: 333_333_333,
            burst: 1,
        });
        assert_eq!((us, q.emission_ns), (333_334, 333_334_000));
        // Faster than 1/µs would be 0 µs, i.e. unlimited: clamped to 1 µs.
        let (us, q) = micro_quota(&Quota {
            emission_ns: 0,
            burst: 0,
        });
        assert_eq!((us, q.emission_ns, q.burst), (1, 1000, 1));
        let (us, _) = micro_quota(&Quota {
            emission_ns: u64::MAX,
            burst: 1,
        });
        assert_eq!(us, u64::MAX.div_ceil(1000));
    }

    #[test]
    fn error_labels_are_fixed() {
        assert_eq!(StoreError::Down.as_str(), "down");
        assert_eq!(StoreError::Timeout.as_str(), "timeout");
        assert_eq!(StoreError::Redis("x".into()).as_str(), "redis");
    }

    #[test]
    fn settings_debug_hides_credentials() {
        let mut rng = fastrand::Rng::with_seed(7);
        let s = StoreSettings::new("redis://user:secret@10.0.0.1:6379/0", &mut rng);
        let d = format!("{s:?}");
        assert!(!d.contains("secret"), "{d}");
        assert!(d.contains("10.0.0.1:6379/0"), "{d}");
    }

    #[test]
    fn instance_ids_differ() {
        let mut rng = fastrand::Rng::with_seed(1);
        assert_ne!(instance_id(&mut rng), instance_id(&mut rng));
    }

    proptest::proptest! {
        #[test]
        fn micro_quota_never_speeds_up_and_stays_within_a_microsecond(
            ns in 0u64..u64::MAX / 2,
            burst in 0u32..1000,
        ) {
            let (us, q) = micro_quota(&Quota { emission_ns: ns, burst });
            proptest::prop_assert_eq!(q.emission_ns, us * 1000);
            proptest::prop_assert!(q.emission_ns >= ns);
            proptest::prop_assert!(q.emission_ns - ns < 1000 || ns == 0);
            proptest::prop_assert_eq!(q.burst, burst.max(1));
        }

        #[test]
        fn counter_keys_are_injective_in_the_hash(a: u64, b: u64) {
            proptest::prop_assume!(a != b);
            proptest::prop_assert_ne!(counter_key("p:", "x", a), counter_key("p:", "x", b));
        }
    }
}
