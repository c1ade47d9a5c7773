//! Validation of the `[reload]` table (`config::reload`): history size, watch debounce and the
//! automatic-rollback thresholds. Same contract as the parent: every problem, with its path.
//!
//! It owns which values make sense; defaults and meaning are `config/reload.rs`, the judge that uses
//! the thresholds is `reload/bake.rs`.

use std::time::Duration;

use super::super::{Config, Diagnostics, Dur};

/// More history than this is a memory and disk sink, not an audit trail.
const MAX_HISTORY: usize = 1000;
/// Longer than this and a saved file looks ignored.
const MAX_DEBOUNCE: Duration = Duration::from_secs(60);
/// Upper bound for `bake_time` and `baseline`: the sample series behind them is kept in memory.
const MAX_SPAN: Duration = Duration::from_secs(3600);
/// Less baseline than this is a handful of requests, too noisy to compare with.
const MIN_BASELINE: Duration = Duration::from_secs(10);

/// Checks `config.reload`.
pub(super) fn check(d: &mut Diagnostics, config: &Config) {
    let r = &config.reload;
    if !(1..=MAX_HISTORY).contains(&r.history) {
        d.error(
            "reload.history",
            format!("{} must be between 1 and {MAX_HISTORY}", r.history),
        );
    }
    if r.watch_debounce.get() > MAX_DEBOUNCE {
        d.error(
            "reload.watch_debounce",
            format!("{} is longer than {}", r.watch_debounce, Dur(MAX_DEBOUNCE)),
        );
    }

    let a = &r.auto_rollback;
    let p = "reload.auto_rollback";
    if a.enabled && a.bake_time.is_zero() {
        d.error(
            format!("{p}.bake_time"),
            "must be more than 0s (set enabled = false to turn automatic rollback off)",
        );
    }
    for (key, v) in [("bake_time", a.bake_time), ("baseline", a.baseline)] {
        if v.get() > MAX_SPAN {
            d.error(
                format!("{p}.{key}"),
                format!("{v} is longer than {}", Dur(MAX_SPAN)),
            );
        }
    }
    if a.baseline.get() < MIN_BASELINE {
        d.error(
            format!("{p}.baseline"),
            format!("{} is shorter than {}", a.baseline, Dur(MIN_BASELINE)),
        );
    }
    if a.min_requests == 0 {
        d.error(format!("{p}.min_requests"), "must be at least 1");
    }
    if !(0.0..=100.0).contains(&a.error_rate_increase_percent) {
        d.error(
            format!("{p}.error_rate_increase_percent"),
            format!(
                "{} must be between 0 and 100",
                a.error_rate_increase_percent
            ),
        );
    }
    for (key, v) in [
        ("error_rate_factor", a.error_rate_factor),
        ("latency_factor", a.latency_factor),
    ] {
        if !(v.is_finite() && v >= 1.0) {
            d.error(
                format!("{p}.{key}"),
                format!("{v} must be a number of at least 1.0"),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Diagnostics;

    /// The minimal valid config with `reload` appended.
    fn check(reload: &str) -> Diagnostics {
        super::super::tests::check(&format!("{}\n{reload}", super::super::tests::OK))
    }

    fn error_paths(d: &Diagnostics) -> Vec<&str> {
        super::super::tests::paths(&d.errors)
    }

    #[test]
    fn defaults_and_sane_values_are_valid() {
        let d = check("");
        assert!(d.is_ok(), "{:?}", d.errors);
        let d = check(
            r#"
[reload]
history = 1000
watch_debounce = "1m"

[reload.auto_rollback]
bake_time = "1h"
baseline = "10s"
min_requests = 1
error_rate_increase_percent = 0.0
error_rate_factor = 1.0
latency_factor = 1.0
latency_min_increase = "0s"
"#,
        );
        assert!(d.is_ok(), "{:?}", d.errors);
    }

    #[test]
    fn history_must_be_between_1_and_1000() {
        for v in [0, 1001] {
            let d = check(&format!("[reload]\nhistory = {v}\n"));
            assert_eq!(error_paths(&d), ["reload.history"], "history = {v}");
        }
    }

    #[test]
    fn debounce_is_at_most_a_minute() {
        let d = check("[reload]\nwatch_debounce = \"61s\"\n");
        assert_eq!(error_paths(&d), ["reload.watch_debounce"]);
    }

    #[test]
    fn bake_time_must_be_positive_only_when_enabled() {
        let d = check("[reload.auto_rollback]\nbake_time = \"0s\"\n");
        assert_eq!(error_paths(&d), ["reload.auto_rollback.bake_time"]);
        let d = check("[reload.auto_rollback]\nenabled = false\nbake_time = \"0s\"\n");
        assert!(d.is_ok(), "{:?}", d.errors);
    }

    #[test]
    fn spans_are_bounded() {
        let d = check("[reload.auto_rollback]\nbake_time = \"61m\"\nbaseline = \"2h\"\n");
        assert_eq!(
            error_paths(&d),
            [
                "reload.auto_rollback.bake_time",
                "reload.auto_rollback.baseline"
            ]
        );
        let d = check("[reload.auto_rollback]\nbaseline = \"9s\"\n");
        assert_eq!(error_paths(&d), ["reload.auto_rollback.baseline"]);
    }

    #[test]
    fn min_requests_must_be_at_least_1() {
        let d = check("[reload.auto_rollback]\nmin_requests = 0\n");
        assert_eq!(error_paths(&d), ["reload.auto_rollback.min_requests"]);
    }

    #[test]
    fn percentages_are_0_to_100() {
        for v in ["-0.5", "100.5", "nan"] {
            let d = check(&format!(
                "[reload.auto_rollback]\nerror_rate_increase_percent = {v}\n"
            ));
            assert_eq!(
                error_paths(&d),
                ["reload.auto_rollback.error_rate_increase_percent"],
                "{v}"
            );
        }
        let d = check("[reload.auto_rollback]\nerror_rate_increase_percent = 100.0\n");
        assert!(d.is_ok(), "{:?}", d.errors);
    }

    #[test]
    fn factors_are_finite_and_at_least_1() {
        for v in ["0.99", "inf", "nan", "-2.0"] {
            let d = check(&format!(
                "[reload.auto_rollback]\nerror_rate_factor = {v}\nlatency_factor = {v}\n"
            ));
            assert_eq!(
                error_paths(&d),
                [
                    "reload.auto_rollback.error_rate_factor",
                    "reload.auto_rollback.latency_factor"
                ],
                "{v}"
            );
        }
    }
}
