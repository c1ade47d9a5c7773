//! The overload and abuse tables: `[redis]`, `[[rate_limits]]`, `[overload]` and a cluster's
//! `[clusters.NAME.adaptive_concurrency]`, plus the `Rate` type (`"1000/s"`) they share with the
//! listeners' per-client connection rate.
//!
//! Like `model.rs` this owns what can be written and what an omitted key means; whether the values
//! make sense together is `validate/overload.rs`'s business, and the runtime objects are built in
//! `ratelimit` and `overload`.

use std::{fmt, str::FromStr, time::Duration};

use serde::{Deserialize, Deserializer, Serialize, Serializer, de};

use super::duration::Dur;

/// A rate as operators write it: `"1000/s"`, `"60/m"`, `"500/h"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub count: u32,
    pub period: Duration,
}

impl Rate {
    /// The period's unit letter, for printing.
    fn unit(self) -> &'static str {
        match self.period.as_secs() {
            3600 => "h",
            60 => "m",
            _ => "s",
        }
    }

    /// Seconds in the period (1, 60 or 3600).
    pub fn period_secs(self) -> u64 {
        self.period.as_secs().max(1)
    }
}

impl FromStr for Rate {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || {
            format!(
                "invalid rate {s:?}: write a count per unit, e.g. \"1000/s\", \"60/m\", \"500/h\""
            )
        };
        let (count, unit) = s.trim().split_once('/').ok_or_else(bad)?;
        let count: u32 = count.trim().parse().map_err(|_| bad())?;
        let period = match unit.trim() {
            "s" => Duration::from_secs(1),
            "m" => Duration::from_secs(60),
            "h" => Duration::from_secs(3600),
            _ => return Err(bad()),
        };
        Ok(Rate { count, period })
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.count, self.unit())
    }
}

impl Serialize for Rate {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Rate {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl de::Visitor<'_> for V {
            type Value = Rate;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a rate string such as \"1000/s\" or \"60/m\"")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Rate, E> {
                v.parse().map_err(E::custom)
            }
        }
        d.deserialize_str(V)
    }
}

/// `[redis]`: the shared store for `scope = "shared"` rate limits. Absent: no shared store, and a
/// shared policy is refused by validation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisConfig {
    /// `redis://[:password@]host:port[/db]`; the password is redacted in `/config`.
    pub url: String,
    /// Budget for one rate-limit decision; beyond it the policy's `on_store_failure` decides.
    #[serde(default = "default_redis_timeout")]
    pub timeout: Dur,
    #[serde(default = "default_redis_connect_timeout")]
    pub connect_timeout: Dur,
    /// Prefix of every key Palisade writes (several fleets can share one Redis).
    #[serde(default = "default_key_prefix")]
    pub key_prefix: String,
    /// Each instance announces itself this often (÷3) and is forgotten this long after its last
    /// announcement; the live count divides a shared rate when Redis is lost.
    #[serde(default = "default_instance_ttl")]
    pub instance_ttl: Dur,
}

fn default_redis_timeout() -> Dur {
    // 5 ms timed out often enough on a busy 2-core machine for the store to flap, and every flap
    // admits a burst from the fresh local buckets (bench/shared_limit.sh: +8.8% at 5 ms, exact at
    // 25 ms). A round trip on a LAN is well under 1 ms.
    Dur::millis(25)
}
fn default_redis_connect_timeout() -> Dur {
    Dur::secs(1)
}
fn default_key_prefix() -> String {
    "palisade:".to_owned()
}
fn default_instance_ttl() -> Dur {
    Dur::secs(5)
}

/// Where a policy's counters live.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// In this process only.
    #[default]
    Local,
    /// In Redis, one count for the whole fleet.
    Shared,
}

/// What a shared policy does when Redis is unreachable or slower than `redis.timeout`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnStoreFailure {
    /// Count locally, allowing this instance the rate divided by the live instances.
    #[default]
    Local,
    /// Let every request through (fail open).
    Allow,
    /// Refuse every request with 429 (fail closed).
    Deny,
}

/// `[[rate_limits]]`: one policy, attached to routes by name.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitConfig {
    pub name: String,
    /// What one bucket counts: any of `client_ip`, `header:NAME`, `route`, combined. A request
    /// without a named header is counted under the empty value (one bucket for all such).
    pub key: Vec<String>,
    pub rate: Rate,
    /// Requests an idle key may send at once. Default: the rate's count (one period's worth).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u32>,
    #[serde(default)]
    pub scope: Scope,
    #[serde(default)]
    pub on_store_failure: OnStoreFailure,
    /// Count and log, never refuse.
    #[serde(default)]
    pub dry_run: bool,
    /// Keys tracked in memory at once (local counting); idle keys expire by themselves.
    #[serde(default = "default_max_keys")]
    pub max_keys: usize,
}

fn default_max_keys() -> usize {
    100_000
}

impl RateLimitConfig {
    pub fn burst(&self) -> u32 {
        self.burst.unwrap_or(self.rate.count).max(1)
    }
}

/// `[overload]`: the whole process's limits and when to shed which priority.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OverloadConfig {
    /// Requests in flight across all listeners; beyond it 503 for every priority.
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight: u32,
    /// Client connections open across all listeners; 0 = only each listener's cap.
    #[serde(default)]
    pub max_connections: u32,
    /// Share of `max_in_flight` (percent) from which `sheddable` routes are refused.
    #[serde(default = "default_shed_sheddable")]
    pub shed_sheddable_percent: u32,
    /// Share of `max_in_flight` (percent) from which `normal` routes are refused too.
    #[serde(default = "default_shed_normal")]
    pub shed_normal_percent: u32,
    /// Resident memory (bytes) treated as full pressure; 0 = memory does not drive shedding.
    #[serde(default)]
    pub memory_limit_bytes: u64,
    /// Queueing delay (adaptive-concurrency queues) treated as full pressure.
    #[serde(default = "default_queue_delay_target")]
    pub queue_delay_target: Dur,
}

impl Default for OverloadConfig {
    fn default() -> Self {
        Self {
            max_in_flight: default_max_in_flight(),
            max_connections: 0,
            shed_sheddable_percent: default_shed_sheddable(),
            shed_normal_percent: default_shed_normal(),
            memory_limit_bytes: 0,
            queue_delay_target: default_queue_delay_target(),
        }
    }
}

fn default_max_in_flight() -> u32 {
    10_000
}
fn default_shed_sheddable() -> u32 {
    80
}
fn default_shed_normal() -> u32 {
    95
}
fn default_queue_delay_target() -> Dur {
    Dur::millis(100)
}

/// `[clusters.NAME.adaptive_concurrency]`: present = on. The cluster's in-flight limit follows its
/// measured latency (gradient), so Palisade finds the upstream's capacity without a hand-set
/// number; requests beyond it wait in a bounded queue, critical first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdaptiveConcurrencyConfig {
    #[serde(default = "default_min_limit")]
    pub min_limit: u32,
    #[serde(default = "default_max_limit")]
    pub max_limit: u32,
    #[serde(default = "default_initial_limit")]
    pub initial_limit: u32,
    /// Latency above the minimum tolerated before the limit comes down (percent).
    #[serde(default = "default_buffer_percent")]
    pub buffer_percent: u32,
    /// How often the limit is recomputed.
    #[serde(default = "default_sample_window")]
    pub sample_window: Dur,
    /// How often the minimum latency is measured afresh.
    #[serde(default = "default_min_rtt_interval")]
    pub min_rtt_interval: Dur,
    /// Requests waiting for a slot at once; beyond it 503 at once. 0 = no queue.
    #[serde(default = "default_max_queue")]
    pub max_queue: u32,
    /// How long a request waits for a slot before 503.
    #[serde(default = "default_ac_queue_timeout")]
    pub queue_timeout: Dur,
}

impl Default for AdaptiveConcurrencyConfig {
    fn default() -> Self {
        Self {
            min_limit: default_min_limit(),
            max_limit: default_max_limit(),
            initial_limit: default_initial_limit(),
            buffer_percent: default_buffer_percent(),
            sample_window: default_sample_window(),
            min_rtt_interval: default_min_rtt_interval(),
            max_queue: default_max_queue(),
            queue_timeout: default_ac_queue_timeout(),
        }
    }
}

fn default_min_limit() -> u32 {
    3
}
fn default_max_limit() -> u32 {
    1000
}
fn default_initial_limit() -> u32 {
    20
}
fn default_buffer_percent() -> u32 {
    25
}
fn default_sample_window() -> Dur {
    Dur::millis(100)
}
fn default_min_rtt_interval() -> Dur {
    Dur::secs(30)
}
fn default_max_queue() -> u32 {
    50
}
fn default_ac_queue_timeout() -> Dur {
    // Short: an admitted request's wait adds to its latency, which the limit exists to protect
    // (bench/overload.sh: p99 5.2x the unloaded one with 50 ms, 2.1x with 20 ms).
    Dur::millis(10)
}

/// Route priority under load: `sheddable` is refused first, `critical` last.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RoutePriority {
    Sheddable,
    #[default]
    Normal,
    Critical,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_parse_and_print_as_written() {
        assert_eq!(
            "1000/s".parse::<Rate>(),
            Ok(Rate {
                count: 1000,
                period: Duration::from_secs(1)
            })
        );
        assert_eq!("60/m".parse::<Rate>().map(|r| r.period_secs()), Ok(60));
        assert_eq!(
            "5/h".parse::<Rate>().map(|r| r.to_string()),
            Ok("5/h".to_owned())
        );
        for bad in ["1000", "x/s", "10/d", "-1/s", "/s"] {
            assert!(bad.parse::<Rate>().is_err(), "{bad} must be refused");
        }
    }
}
