//! The `[reload]` table: how Palisade takes a new config while it runs (file watch), where it keeps
//! the history of applied configs and the last known good one, and when it undoes a change by itself.
//!
//! This module owns what can be written and the defaults. The reload pipeline is `reload/`; which
//! values make sense is `validate/reload.rs`.

use serde::{Deserialize, Serialize};

use super::duration::Dur;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReloadConfig {
    /// Reload when the config file changes (its directory is watched, so atomic renames and
    /// symlink swaps are seen). SIGHUP and the admin API work either way.
    #[serde(default = "yes")]
    pub watch: bool,
    /// Changes closer together than this are applied once, after the last one.
    #[serde(default = "default_debounce")]
    pub watch_debounce: Dur,
    /// Where the history of applied configs and the last known good config are kept. Relative paths
    /// resolve from the config file's directory; `""` keeps the history in memory only.
    #[serde(default = "default_state_dir")]
    pub state_dir: String,
    /// How many history entries (applied, refused and rolled-back changes) are kept.
    #[serde(default = "default_history")]
    pub history: usize,
    #[serde(default)]
    pub auto_rollback: AutoRollbackConfig,
}

impl Default for ReloadConfig {
    fn default() -> Self {
        Self {
            watch: true,
            watch_debounce: default_debounce(),
            state_dir: default_state_dir(),
            history: default_history(),
            auto_rollback: AutoRollbackConfig::default(),
        }
    }
}

/// Behavioural rollback: after a change applies, its traffic is compared with the traffic before it
/// for `bake_time`; a clear regression restores the previous version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AutoRollbackConfig {
    #[serde(default = "yes")]
    pub enabled: bool,
    /// How long a change is watched after it applies.
    #[serde(default = "default_bake_time")]
    pub bake_time: Dur,
    /// How much traffic before the change is the baseline it is compared with.
    #[serde(default = "default_baseline")]
    pub baseline: Dur,
    /// Requests the change must have served before it is judged (fewer: no verdict yet).
    #[serde(default = "default_min_requests")]
    pub min_requests: u64,
    /// The failure share (5xx, no-route 404) may exceed the baseline's by at most this many
    /// percentage points...
    #[serde(default = "default_error_rate_increase")]
    pub error_rate_increase_percent: f64,
    /// ...or this factor, whichever allows more.
    #[serde(default = "default_factor")]
    pub error_rate_factor: f64,
    /// p99 latency may exceed the baseline's p99 by at most this factor...
    #[serde(default = "default_factor")]
    pub latency_factor: f64,
    /// ...or by this much, whichever allows more (small absolute changes are noise).
    #[serde(default = "default_latency_min_increase")]
    pub latency_min_increase: Dur,
}

impl Default for AutoRollbackConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            bake_time: default_bake_time(),
            baseline: default_baseline(),
            min_requests: default_min_requests(),
            error_rate_increase_percent: default_error_rate_increase(),
            error_rate_factor: default_factor(),
            latency_factor: default_factor(),
            latency_min_increase: default_latency_min_increase(),
        }
    }
}

fn yes() -> bool {
    true
}
fn default_debounce() -> Dur {
    Dur::millis(500)
}
fn default_state_dir() -> String {
    "palisade-state".to_owned()
}
fn default_history() -> usize {
    20
}
fn default_bake_time() -> Dur {
    Dur::secs(60)
}
fn default_baseline() -> Dur {
    Dur::secs(300)
}
fn default_min_requests() -> u64 {
    100
}
fn default_error_rate_increase() -> f64 {
    5.0
}
fn default_factor() -> f64 {
    2.0
}
fn default_latency_min_increase() -> Dur {
    Dur::millis(100)
}
