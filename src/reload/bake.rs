//! The bake: after a change applies, its traffic is compared with the traffic before it, and a clear
//! regression is a verdict to roll back.
//!
//! This module owns the judgement and the short history of traffic samples it needs (a pure state
//! machine: time and samples come in as arguments). It does not own sampling the counters (a
//! background task pushes the process's [`super::traffic::Traffic`] sample into a [`Series`] once a
//! second), the rollback itself, the history entry or the metrics: the reload pipeline does those with
//! the [`Judgement`].
//!
//! Rules:
//! - The baseline is the traffic in `baseline` before the change ([`Series::baseline`]); with less
//!   history than that (Palisade started recently), whatever history there is.
//! - The change is judged on the cumulative window since it applied, on every call, once that window
//!   has at least `min_requests` requests; before that the verdict is [`Judgement::Waiting`].
//! - Failure regression: after% > max(before% × `error_rate_factor`, before% +
//!   `error_rate_increase_percent`). A baseline without requests counts as 0%, so a change that
//!   breaks a proxy that had no traffic yet is still caught. A baseline with some requests but fewer
//!   than `min_requests` is used as measured: the judge never blames a change for a failure share
//!   that was already there.
//! - Latency regression: after p99 > max(before p99 × `latency_factor`, before p99 +
//!   `latency_min_increase`), only if the baseline had at least `min_requests` requests (a p99 of
//!   a handful of requests is noise, so no latency verdict without one).
//! - Factors below 1 (or NaN) act as 1 and negative increases as 0, so a change is never blamed for
//!   doing as well as before, whatever the config says.
//! - Once `bake_time` has passed without regression the verdict is [`Judgement::Passed`], with
//!   `quiet` set if the change never served `min_requests`: too little traffic is
//!   not evidence of a regression, and rolling back on silence would undo every change made at
//!   night. A call at or after the deadline still reports a regression it sees.
//! - Disabled (`enabled = false`): [`Bake::judge`] says `Passed` at once, so callers need no
//!   special case.

use std::{
    collections::VecDeque,
    fmt,
    time::{Duration, Instant},
};

use crate::config::AutoRollbackConfig;

use super::traffic::{Sample, Window};

/// The quantile compared for latency.
const QUANTILE: f64 = 0.99;
/// Most samples a [`Series`] keeps, whatever it is asked for (validation allows 1h of baseline
/// plus 1h of bake: 7 200 at one a second).
pub const MAX_SERIES: usize = 8192;

/// Recent samples of the cumulative counters, oldest first; bounded (the oldest is dropped).
#[derive(Debug, Clone)]
pub struct Series {
    samples: VecDeque<(Instant, Sample)>,
    /// Samples kept, 1..=[`MAX_SERIES`].
    capacity: usize,
}

impl Series {
    /// Keeps at most `capacity` samples (at least 1, at most [`MAX_SERIES`]).
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.clamp(1, MAX_SERIES);
        Self {
            // Grows as samples come: a long capacity costs memory only once the process has run that long.
            samples: VecDeque::new(),
            capacity,
        }
    }

    /// The capacity that covers `baseline + bake_time` when a sample is pushed every `tick`
    /// (0 counts as 1s), plus one sample of slack at each end.
    pub fn capacity_for(cfg: &AutoRollbackConfig, tick: Duration) -> usize {
        let span = cfg.baseline.get().saturating_add(cfg.bake_time.get());
        let tick = if tick.is_zero() {
            Duration::from_secs(1)
        } else {
            tick
        };
        let n = span.as_nanos().div_ceil(tick.as_nanos()).saturating_add(2);
        usize::try_from(n).unwrap_or(MAX_SERIES).min(MAX_SERIES)
    }

    /// Adds a sample taken at `now`. A sample older than the newest is ignored: the series stays in
    /// time order, which the look-ups rely on.
    pub fn push(&mut self, now: Instant, s: Sample) {
        if self.samples.back().is_some_and(|(t, _)| *t > now) {
            return;
        }
        while self.samples.len() >= self.capacity {
            self.samples.pop_front();
        }
        self.samples.push_back((now, s));
    }

    /// The newest sample taken at or before `t`.
    pub fn at_or_before(&self, t: Instant) -> Option<&(Instant, Sample)> {
        let after = self.samples.partition_point(|(at, _)| *at <= t);
        after.checked_sub(1).and_then(|i| self.samples.get(i))
    }

    /// The oldest sample kept.
    pub fn oldest(&self) -> Option<&(Instant, Sample)> {
        self.samples.front()
    }

    /// The newest sample kept.
    pub fn newest(&self) -> Option<&(Instant, Sample)> {
        self.samples.back()
    }

    pub fn len(&self) -> usize {
        self.samples.len()
    }

    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }

    /// The traffic from `span` before `now` up to `current` (the counters at `now`): the baseline
    /// for a change applied at `now`. With less history than `span`, from the oldest sample; with
    /// none, an empty window.
    pub fn baseline(&self, now: Instant, span: Duration, current: &Sample) -> Window {
        let from = now
            .checked_sub(span)
            .and_then(|t| self.at_or_before(t))
            .or_else(|| self.oldest());
        match from {
            Some((_, s)) => current.since(s),
            None => Window::default(),
        }
    }
}

/// The verdict on a change at one moment.
#[derive(Clone, Debug, PartialEq)]
pub enum Judgement {
    /// The bake is still running and nothing regressed yet (or the change has served fewer than
    /// `min_requests`).
    Waiting,
    /// Roll back. `reason` is for people (history, log), with the numbers; it starts with
    /// `failure rate` or `p99 latency`.
    Regressed { reason: String },
    /// `bake_time` passed without regression (or the bake is disabled). `quiet`: the change served
    /// fewer than `min_requests`, so it is kept unjudged.
    Passed { quiet: bool },
}

/// The watch over one applied change.
#[derive(Debug, Clone)]
pub struct Bake {
    enabled: bool,
    /// When the change applied.
    started: Instant,
    /// When it stops being watched: `started + bake_time` (`started` if that overflows `Instant`).
    deadline: Instant,
    /// The counters when it applied.
    at_change: Sample,
    /// Requests the change must serve before it is judged (at least 1).
    min_requests: u64,
    /// Requests in the baseline.
    before_requests: u64,
    /// The baseline's failure share, percent (0 without requests).
    before_failures: f64,
    /// The highest failure share, percent, the change may have.
    failure_limit: f64,
    /// The baseline's p99 and the highest p99 the change may have; `None`: baseline too thin.
    latency: Option<(Duration, Duration)>,
}

impl Bake {
    /// Starts watching a change applied at `now`. `baseline`: the traffic in `cfg.baseline` before
    /// it (see [`Series::baseline`]); `at_change`: the counters at `now`.
    pub fn start(
        cfg: &AutoRollbackConfig,
        now: Instant,
        baseline: Window,
        at_change: Sample,
    ) -> Bake {
        let min_requests = cfg.min_requests.max(1);
        let before_failures = baseline.failure_percent().unwrap_or(0.0);
        let failure_limit = (before_failures * at_least_one(cfg.error_rate_factor))
            .max(before_failures + cfg.error_rate_increase_percent.max(0.0));
        let latency = (baseline.requests >= min_requests)
            .then(|| baseline.quantile(QUANTILE))
            .flatten()
            .map(|p99| {
                let scaled = Duration::try_from_secs_f64(
                    p99.as_secs_f64() * at_least_one(cfg.latency_factor),
                )
                .unwrap_or(Duration::MAX);
                let added = p99.saturating_add(cfg.latency_min_increase.get());
                (p99, scaled.max(added))
            });
        Bake {
            enabled: cfg.enabled,
            started: now,
            deadline: now.checked_add(cfg.bake_time.get()).unwrap_or(now),
            at_change,
            min_requests,
            before_requests: baseline.requests,
            before_failures,
            failure_limit,
            latency,
        }
    }

    /// When the change applied.
    pub fn started(&self) -> Instant {
        self.started
    }

    /// When the bake ends.
    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    /// The verdict at `now`, given the counters at `now`. Cheap enough to call every second.
    pub fn judge(&self, now: Instant, current: &Sample) -> Judgement {
        if !self.enabled {
            return Judgement::Passed { quiet: false };
        }
        let after = current.since(&self.at_change);
        if after.requests >= self.min_requests {
            if let Some(j) = self.failure_verdict(&after) {
                return j;
            }
            if let Some(j) = self.latency_verdict(&after) {
                return j;
            }
        }
        if now < self.deadline {
            Judgement::Waiting
        } else {
            Judgement::Passed {
                quiet: after.requests < self.min_requests,
            }
        }
    }

    fn failure_verdict(&self, after: &Window) -> Option<Judgement> {
        let pct = after.failure_percent()?;
        (pct > self.failure_limit).then(|| {
            let before = if self.before_requests == 0 {
                "no traffic before".to_owned()
            } else {
                format!("{:.1}% before", self.before_failures)
            };
            Judgement::Regressed {
                reason: format!(
                    "failure rate {pct:.1}% after the change vs {before} (limit {:.1}%) over {} requests",
                    self.failure_limit, after.requests
                ),
            }
        })
    }

    fn latency_verdict(&self, after: &Window) -> Option<Judgement> {
        let (before, limit) = self.latency?;
        let p99 = after.quantile(QUANTILE)?;
        (p99 > limit).then(|| Judgement::Regressed {
            reason: format!(
                "p99 latency {} after the change vs {} before (limit {}) over {} requests",
                Shown(p99),
                Shown(before),
                Shown(limit),
                after.requests
            ),
        })
    }
}

/// NaN and factors below 1 act as 1; +∞ stays (the limit becomes unreachable).
fn at_least_one(f: f64) -> f64 {
    if f >= 1.0 { f } else { 1.0 }
}

/// A latency as people read it: `850µs`, `12.5ms`, `2.50s`; `Duration::MAX` (the histogram's
/// overflow bucket) as `>105s`.
struct Shown(Duration);

impl fmt::Display for Shown {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = self.0;
        if d == Duration::MAX {
            let last = super::traffic::bucket_bound(super::traffic::BUCKETS.saturating_sub(2));
            write!(f, ">{}s", last.as_secs())
        } else if d < Duration::from_millis(1) {
            write!(f, "{}µs", d.as_micros())
        } else if d < Duration::from_secs(1) {
            write!(f, "{:.1}ms", d.as_secs_f64() * 1000.0)
        } else {
            write!(f, "{:.2}s", d.as_secs_f64())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{config::Dur, reload::traffic::Traffic};
    use proptest::prelude::*;

    fn cfg() -> AutoRollbackConfig {
        AutoRollbackConfig::default()
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    /// Records `n` requests, `failing` of them 502, all taking `latency`.
    fn serve(t: &Traffic, n: u64, failing: u64, latency: Duration) {
        for i in 0..n {
            let status = if i < failing { 502 } else { 200 };
            t.record(status, true, latency);
        }
    }

    /// A bake over a clean baseline of `n` requests at `latency` with `failing` failures.
    fn baked(
        c: &AutoRollbackConfig,
        t0: Instant,
        n: u64,
        failing: u64,
        latency: Duration,
    ) -> (Traffic, Bake) {
        let t = Traffic::new();
        let start = t.sample();
        serve(&t, n, failing, latency);
        let at_change = t.sample();
        let bake = Bake::start(c, t0, at_change.since(&start), at_change);
        (t, bake)
    }

    fn regressed(j: &Judgement) -> Option<&str> {
        match j {
            Judgement::Regressed { reason } => Some(reason.as_str()),
            _ => None,
        }
    }

    const PASSED: Judgement = Judgement::Passed { quiet: false };

    #[test]
    fn an_all_failing_change_regresses_as_soon_as_it_has_min_requests() {
        let c = cfg();
        let t0 = Instant::now();
        let (t, bake) = baked(&c, t0, 1000, 0, ms(5));
        serve(&t, c.min_requests - 1, c.min_requests - 1, ms(1));
        assert_eq!(bake.judge(t0 + secs(1), &t.sample()), Judgement::Waiting);
        serve(&t, 1, 1, ms(1));
        let j = bake.judge(t0 + secs(2), &t.sample());
        let reason = regressed(&j).expect("regressed");
        assert_eq!(
            reason,
            "failure rate 100.0% after the change vs 0.0% before (limit 5.0%) over 100 requests"
        );
    }

    #[test]
    fn unrouted_404s_count_as_failures() {
        let c = cfg();
        let t0 = Instant::now();
        let (t, bake) = baked(&c, t0, 1000, 0, ms(5));
        for _ in 0..200 {
            t.record(404, false, ms(1));
        }
        assert!(regressed(&bake.judge(t0 + secs(1), &t.sample())).is_some());
    }

    #[test]
    fn a_small_bump_within_thresholds_passes_at_the_end() {
        let c = cfg();
        let t0 = Instant::now();
        // 2% before; limit max(4%, 7%) = 7%.
        let (t, bake) = baked(&c, t0, 1000, 20, ms(5));
        serve(&t, 1000, 60, ms(8));
        assert_eq!(bake.judge(t0 + secs(30), &t.sample()), Judgement::Waiting);
        assert_eq!(bake.judge(t0 + c.bake_time.get(), &t.sample()), PASSED);
    }

    #[test]
    fn the_failure_limit_is_the_more_lenient_of_factor_and_increase() {
        let t0 = Instant::now();
        // 10% before: factor 2 → 20% beats +5 → 15%.
        let (t, bake) = baked(&cfg(), t0, 1000, 100, ms(5));
        serve(&t, 100, 19, ms(5));
        assert_eq!(bake.judge(t0 + secs(1), &t.sample()), Judgement::Waiting);
        serve(&t, 100, 30, ms(5)); // 49/200 = 24.5%
        let j = bake.judge(t0 + secs(2), &t.sample());
        assert!(reason_has(&j, "limit 20.0%"), "{j:?}");
    }

    fn reason_has(j: &Judgement, s: &str) -> bool {
        regressed(j).is_some_and(|r| r.contains(s))
    }

    #[test]
    fn latency_regression_is_caught() {
        let c = cfg();
        let t0 = Instant::now();
        let (t, bake) = baked(&c, t0, 1000, 0, ms(50));
        // 2× 50ms = 100ms vs 50ms + 100ms = 150ms: the limit is ~150ms (bucket bounds).
        serve(&t, 200, 0, ms(120));
        assert_eq!(bake.judge(t0 + secs(1), &t.sample()), Judgement::Waiting);
        serve(&t, 200, 0, ms(900));
        let j = bake.judge(t0 + secs(2), &t.sample());
        let reason = regressed(&j).expect("regressed");
        assert!(reason.starts_with("p99 latency "), "{reason}");
        assert!(reason.contains("over 400 requests"), "{reason}");
    }

    #[test]
    fn latency_factor_wins_for_slow_baselines() {
        let c = cfg();
        let t0 = Instant::now();
        let (t, bake) = baked(&c, t0, 1000, 0, secs(2));
        // 2s → limit max(4s, 2.1s) ≈ 4s: 3s is fine.
        serve(&t, 500, 0, secs(3));
        let end = t0 + c.bake_time.get();
        assert_eq!(bake.judge(end, &t.sample()), PASSED);
        serve(&t, 5000, 0, secs(6));
        let j = bake.judge(end, &t.sample());
        assert!(reason_has(&j, "p99 latency 6.55s after"), "{j:?}");
    }

    #[test]
    fn without_baseline_traffic_failures_are_judged_but_latency_is_not() {
        let c = cfg();
        let t0 = Instant::now();
        let (t, bake) = baked(&c, t0, 0, 0, ms(1));
        serve(&t, 500, 0, secs(30));
        let end = t0 + c.bake_time.get();
        assert_eq!(bake.judge(end, &t.sample()), PASSED, "no latency verdict");
        serve(&t, 500, 500, ms(1));
        let j = bake.judge(end, &t.sample());
        assert!(reason_has(&j, "vs no traffic before (limit 5.0%)"), "{j:?}");
    }

    #[test]
    fn a_thin_baseline_gives_no_latency_verdict_but_its_failure_share_counts() {
        let c = cfg();
        let t0 = Instant::now();
        let (t, bake) = baked(&c, t0, c.min_requests - 1, 0, ms(1));
        serve(&t, 500, 0, secs(30));
        let end = t0 + c.bake_time.get();
        assert_eq!(bake.judge(end, &t.sample()), PASSED);
        serve(&t, 500, 100, ms(1)); // 10% > 5%
        assert!(reason_has(&bake.judge(end, &t.sample()), "0.0% before"));
    }

    #[test]
    fn waits_until_min_requests_and_passes_quietly_without_them() {
        let c = AutoRollbackConfig {
            min_requests: 50,
            ..cfg()
        };
        let t0 = Instant::now();
        let (t, bake) = baked(&c, t0, 1000, 0, ms(5));
        serve(&t, 49, 49, ms(5));
        assert_eq!(bake.judge(t0 + secs(59), &t.sample()), Judgement::Waiting);
        assert_eq!(
            bake.judge(t0 + secs(60), &t.sample()),
            Judgement::Passed { quiet: true }
        );
        assert_eq!(bake.deadline(), t0 + secs(60));
        assert_eq!(bake.started(), t0);
    }

    #[test]
    fn a_regression_seen_after_the_deadline_still_counts() {
        let c = cfg();
        let t0 = Instant::now();
        let (t, bake) = baked(&c, t0, 1000, 0, ms(5));
        serve(&t, 300, 300, ms(5));
        assert!(regressed(&bake.judge(t0 + secs(61), &t.sample())).is_some());
    }

    #[test]
    fn disabled_passes_at_once() {
        let c = AutoRollbackConfig {
            enabled: false,
            ..cfg()
        };
        let t0 = Instant::now();
        let (t, bake) = baked(&c, t0, 1000, 0, ms(5));
        serve(&t, 1000, 1000, ms(5));
        assert_eq!(bake.judge(t0, &t.sample()), PASSED);
    }

    #[test]
    fn invalid_factors_never_make_the_limit_stricter_than_the_baseline() {
        let c = AutoRollbackConfig {
            error_rate_factor: f64::NAN,
            error_rate_increase_percent: -50.0,
            latency_factor: 0.1,
            latency_min_increase: Dur::millis(0),
            ..cfg()
        };
        let t0 = Instant::now();
        let (t, bake) = baked(&c, t0, 1000, 100, ms(50));
        serve(&t, 1000, 100, ms(50));
        assert_eq!(bake.judge(t0 + secs(60), &t.sample()), PASSED);
        serve(&t, 100, 100, ms(50));
        assert!(regressed(&bake.judge(t0 + secs(60), &t.sample())).is_some());
    }

    #[test]
    fn nan_or_negative_factors_act_as_1_not_as_off() {
        for f in [f64::NAN, -1.0] {
            let c = AutoRollbackConfig {
                error_rate_factor: f,
                latency_factor: f,
                ..cfg()
            };
            let t0 = Instant::now();
            let (t, bake) = baked(&c, t0, 1000, 0, ms(50));
            serve(&t, 1000, 0, ms(900));
            let j = bake.judge(t0 + secs(1), &t.sample());
            assert!(reason_has(&j, "p99 latency"), "factor {f}: {j:?}");
        }
    }

    #[test]
    fn a_counter_reset_reads_as_no_traffic_not_as_a_regression() {
        let c = cfg();
        let t0 = Instant::now();
        let (_, bake) = baked(&c, t0, 1000, 0, ms(5));
        assert_eq!(
            bake.judge(t0 + secs(60), &Sample::default()),
            Judgement::Passed { quiet: true }
        );
    }

    #[test]
    fn series_finds_the_sample_at_or_before_and_builds_the_baseline() {
        let t0 = Instant::now();
        let mut s = Series::new(10);
        assert!(s.is_empty());
        let sample = |n| Sample {
            requests: n,
            ..Sample::default()
        };
        assert_eq!(s.baseline(t0, secs(5), &sample(9)), Window::default());
        for i in 0..5 {
            s.push(t0 + secs(i), sample(i * 10));
        }
        assert!(s.at_or_before(t0 - ms(1)).is_none());
        assert_eq!(s.at_or_before(t0 + ms(2500)).unwrap().1.requests, 20);
        assert_eq!(s.at_or_before(t0 + secs(3)).unwrap().1.requests, 30);
        assert_eq!(s.at_or_before(t0 + secs(100)).unwrap().1.requests, 40);
        // 2s before t0+4s is the sample at t0+2s (20).
        assert_eq!(s.baseline(t0 + secs(4), secs(2), &sample(45)).requests, 25);
        // Less history than asked: from the oldest.
        assert_eq!(
            s.baseline(t0 + secs(4), secs(300), &sample(45)).requests,
            45
        );
        // Out of order: ignored.
        s.push(t0, sample(1000));
        assert_eq!(s.len(), 5);
        assert_eq!(s.newest().unwrap().1.requests, 40);
    }

    #[test]
    fn series_capacity_covers_baseline_and_bake() {
        let c = cfg();
        assert_eq!(Series::capacity_for(&c, secs(1)), 362);
        assert_eq!(Series::capacity_for(&c, Duration::ZERO), 362);
        let huge = AutoRollbackConfig {
            baseline: Dur::secs(u64::MAX),
            ..cfg()
        };
        assert_eq!(Series::capacity_for(&huge, ms(1)), MAX_SERIES);
        assert_eq!(Series::new(0).capacity, 1);
    }

    #[test]
    fn latencies_are_shown_readably() {
        assert_eq!(Shown(Duration::from_micros(850)).to_string(), "850µs");
        assert_eq!(Shown(Duration::from_micros(12_500)).to_string(), "12.5ms");
        assert_eq!(Shown(ms(2500)).to_string(), "2.50s");
        assert_eq!(Shown(Duration::MAX).to_string(), ">104s");
    }

    proptest! {
        #[test]
        fn series_stays_bounded(cap in 0usize..50, steps in prop::collection::vec(0u64..3, 0..200)) {
            let t0 = Instant::now();
            let mut s = Series::new(cap);
            let mut t = t0;
            for (i, dt) in steps.iter().enumerate() {
                t += secs(*dt);
                s.push(t, Sample { requests: i as u64, ..Sample::default() });
                prop_assert!(s.len() <= cap.max(1));
                prop_assert_eq!(s.newest().map(|e| e.1.requests), Some(i as u64));
            }
        }

        /// Whatever the thresholds, a change whose failure share and p99 are no worse than the
        /// baseline's is never rolled back.
        #[test]
        fn no_worse_is_never_regressed(
            before_n in 0u64..2000,
            before_fail_pm in 0u64..=1000,
            before_lat in prop::collection::vec(0u64..5_000_000, 1..8),
            after_n in 1u64..2000,
            // The edges (same as before, thresholds that allow nothing) are where a `>=` for a
            // `>` would show, so they are drawn often.
            fail_scale_pm in prop_oneof![Just(1000u64), 0u64..=1000],
            lat_scale_pm in prop_oneof![Just(1000u64), 0u64..=1000],
            min_requests in 0u64..300,
            increase in prop_oneof![Just(0.0), -10.0f64..50.0],
            factor in prop_oneof![Just(1.0), 0.0f64..4.0],
            lat_factor in prop_oneof![Just(1.0), 0.0f64..4.0],
            lat_inc in prop_oneof![Just(0u64), 0u64..500],
            elapsed in 0u64..120,
        ) {
            let c = AutoRollbackConfig {
                min_requests,
                error_rate_increase_percent: increase,
                error_rate_factor: factor,
                latency_factor: lat_factor,
                latency_min_increase: Dur::millis(lat_inc),
                ..cfg()
            };
            // The after-traffic is the baseline scaled down (fewer failures, faster), so most cases
            // are "no worse"; rounding can still make one worse, and those are skipped below.
            let after_fail_pm = before_fail_pm * fail_scale_pm / 1000;
            let after_lat: Vec<u64> = before_lat.iter().map(|us| us * lat_scale_pm / 1000).collect();
            let t = Traffic::new();
            let serve_mix = |n: u64, fail_pm: u64, lats: &[u64]| {
                let failing = n * fail_pm / 1000;
                for i in 0..n {
                    let us = lats[(i as usize) % lats.len()];
                    t.record(if i < failing { 503 } else { 200 }, true, Duration::from_micros(us));
                }
            };
            let zero = t.sample();
            serve_mix(before_n, before_fail_pm, &before_lat);
            let at_change = t.sample();
            let baseline = at_change.since(&zero);
            serve_mix(after_n, after_fail_pm, &after_lat);
            let current = t.sample();
            let after = current.since(&at_change);

            let fail_no_worse = match baseline.failure_percent() {
                Some(b) => after.failure_percent().unwrap() <= b,
                None => after.failures == 0,
            };
            let lat_no_worse = match (baseline.quantile(0.99), after.quantile(0.99)) {
                (Some(b), Some(a)) => a <= b,
                _ => true,
            };
            if !(fail_no_worse && lat_no_worse) {
                return Ok(());
            }

            let t0 = Instant::now();
            let bake = Bake::start(&c, t0, baseline, at_change);
            let j = bake.judge(t0 + secs(elapsed), &current);
            prop_assert!(regressed(&j).is_none(), "{:?}", j);
        }
    }
}
