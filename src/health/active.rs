//! Active health checking: the verdict state machine for ONE upstream endpoint and the rule that
//! says when to probe it next.
//!
//! Owns: the `Unknown`/`Healthy`/`Unhealthy` status, the success/failure streaks and their
//! thresholds (HAProxy `rise`/`fall`, Envoy `healthy_threshold`/`unhealthy_threshold`), and the
//! probe gap (`interval`, edge/unhealthy/no-traffic intervals, jitter, first-probe spread).
//!
//! Does not own: performing the probe (HTTP GET / TCP connect), sleeping, parsing config, passive
//! outlier detection (`super::outlier`), or combining verdicts into a routing decision. Everything
//! here is pure: time comes in as `now`, randomness as a `fastrand::Rng`.

use std::time::{Duration, Instant};

/// Gaps never go below this, so a zero or tiny configured interval cannot turn the prober into a
/// busy loop against the upstream.
const MIN_DELAY: Duration = Duration::from_millis(1);

const NANOS_PER_SEC: u128 = 1_000_000_000;

/// Health verdict of one endpoint as seen by active probing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Status {
    /// No probe result yet (fresh endpoint, or reset by [`ActiveHealth::force`]).
    Unknown,
    /// Probes succeed; the endpoint takes traffic.
    Healthy,
    /// Probes fail; the endpoint gets no traffic.
    Unhealthy,
}

impl Status {
    /// Stable lowercase name for logs, metrics labels and the admin API.
    pub const fn as_str(self) -> &'static str {
        match self {
            Status::Unknown => "unknown",
            Status::Healthy => "healthy",
            Status::Unhealthy => "unhealthy",
        }
    }
}

/// Active health-check timing and thresholds, already parsed from config.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Schedule {
    /// Normal gap between probes of one endpoint (default 2s).
    pub interval: Duration,
    /// Gap while a streak against the current status is in progress, and while `Unknown`
    /// (default 500ms): a pending verdict should be settled quickly.
    pub edge_interval: Duration,
    /// Gap while `Unhealthy` with no success streak (default 2s, i.e. `interval`).
    pub unhealthy_interval: Duration,
    /// Gap while `Healthy` with no streak and no traffic to the cluster since the last probe
    /// (default 10s). Never used while `Unknown`, `Unhealthy`, or a streak is in progress.
    pub no_traffic_interval: Duration,
    /// Each gap is randomised uniformly by +/- this percent (default 10; 0 disables; values above
    /// 100 act as 100).
    pub jitter_percent: u32,
    /// Consecutive successes to go `Unhealthy` -> `Healthy` (default 2; 0 acts as 1).
    pub healthy_threshold: u32,
    /// Consecutive failures to go `Healthy` -> `Unhealthy` (default 3; 0 acts as 1).
    pub unhealthy_threshold: u32,
}

impl Default for Schedule {
    fn default() -> Self {
        let interval = Duration::from_secs(2);
        Schedule {
            interval,
            edge_interval: Duration::from_millis(500),
            unhealthy_interval: interval,
            no_traffic_interval: Duration::from_secs(10),
            jitter_percent: 10,
            healthy_threshold: 2,
            unhealthy_threshold: 3,
        }
    }
}

impl Schedule {
    fn rise(&self) -> u32 {
        self.healthy_threshold.max(1)
    }

    fn fall(&self) -> u32 {
        self.unhealthy_threshold.max(1)
    }
}

/// A status change, returned so the caller can log it and bump metrics exactly once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Transition {
    /// Status before the change.
    pub from: Status,
    /// Status after the change.
    pub to: Status,
}

/// Active-health state of one endpoint.
#[derive(Clone, Debug)]
pub struct ActiveHealth {
    status: Status,
    since: Instant,
    /// Consecutive successes since the last failure or transition (saturating).
    successes: u32,
    /// Consecutive failures since the last success or transition (saturating).
    failures: u32,
    last_probe: Option<(Instant, bool)>,
}

impl ActiveHealth {
    /// A fresh endpoint: `Unknown`, no probes yet, `since == now`.
    pub fn new(now: Instant) -> Self {
        ActiveHealth {
            status: Status::Unknown,
            since: now,
            successes: 0,
            failures: 0,
            last_probe: None,
        }
    }

    /// Current verdict.
    pub fn status(&self) -> Status {
        self.status
    }

    /// When the current status began (creation time while still `Unknown`).
    pub fn since(&self) -> Instant {
        self.since
    }

    /// Whether the endpoint may take traffic. `Unknown` admits: a proxy that 503s everything for
    /// its first probe interval after a restart would be worse than one that trusts its config.
    pub fn admits(&self) -> bool {
        !matches!(self.status, Status::Unhealthy)
    }

    /// Feed one probe result. Returns the transition if the status changed.
    ///
    /// From `Unknown` the first result decides at once; otherwise the opposing streak must reach
    /// its threshold. A transition resets both streaks.
    pub fn on_probe(&mut self, ok: bool, sched: &Schedule, now: Instant) -> Option<Transition> {
        self.last_probe = Some((now, ok));
        if ok {
            self.successes = self.successes.saturating_add(1);
            self.failures = 0;
        } else {
            self.failures = self.failures.saturating_add(1);
            self.successes = 0;
        }
        let to = match self.status {
            Status::Unknown if ok => Status::Healthy,
            Status::Unknown => Status::Unhealthy,
            // `>=` rather than `==` so a threshold lowered by a config reload mid-streak still
            // takes effect on the next result.
            Status::Healthy if !ok && self.failures >= sched.fall() => Status::Unhealthy,
            Status::Unhealthy if ok && self.successes >= sched.rise() => Status::Healthy,
            Status::Healthy | Status::Unhealthy => return None,
        };
        Some(self.switch(to, now))
    }

    /// Time and outcome of the most recent probe, if any (kept across [`force`](Self::force)).
    pub fn last_probe(&self) -> Option<(Instant, bool)> {
        self.last_probe
    }

    /// Current streaks as `(successes, failures)`; at most one is non-zero.
    pub fn consecutive(&self) -> (u32, u32) {
        (self.successes, self.failures)
    }

    /// Delay before the very first probe: uniform in `[0, interval)` (zero if `interval` is zero),
    /// so many endpoints starting together never probe in lockstep.
    pub fn first_delay(sched: &Schedule, rng: &mut fastrand::Rng) -> Duration {
        let n = sched.interval.as_nanos();
        if n == 0 {
            return Duration::ZERO;
        }
        duration_from_nanos(rng.u128(0..n))
    }

    /// Gap until the next probe, jittered by `sched.jitter_percent` and never below 1ms.
    ///
    /// `had_traffic`: whether the cluster has served any request since the last probe.
    pub fn next_delay(
        &self,
        sched: &Schedule,
        had_traffic: bool,
        rng: &mut fastrand::Rng,
    ) -> Duration {
        jitter(
            self.base_delay(sched, had_traffic),
            sched.jitter_percent,
            rng,
        )
    }

    /// Set the status by fiat (e.g. `Unknown` on config change). Always resets both streaks;
    /// returns `None` and keeps `since` if the status is unchanged.
    pub fn force(&mut self, to: Status, now: Instant) -> Option<Transition> {
        self.successes = 0;
        self.failures = 0;
        if to == self.status {
            return None;
        }
        Some(self.switch(to, now))
    }

    fn switch(&mut self, to: Status, now: Instant) -> Transition {
        let from = self.status;
        self.status = to;
        self.since = now;
        self.successes = 0;
        self.failures = 0;
        Transition { from, to }
    }

    fn base_delay(&self, sched: &Schedule, had_traffic: bool) -> Duration {
        match self.status {
            Status::Unknown => sched.edge_interval,
            Status::Healthy if self.failures > 0 => sched.edge_interval,
            Status::Unhealthy if self.successes > 0 => sched.edge_interval,
            Status::Unhealthy => sched.unhealthy_interval,
            Status::Healthy if !had_traffic => sched.no_traffic_interval,
            Status::Healthy => sched.interval,
        }
    }
}

/// Uniform in `[d*(1-j), d*(1+j)]` with `j = min(percent, 100) / 100`, floored at [`MIN_DELAY`]
/// and saturating at `Duration::MAX`. Works in u128 nanoseconds, which cannot overflow: a
/// `Duration` is below 2^94 ns.
fn jitter(d: Duration, percent: u32, rng: &mut fastrand::Rng) -> Duration {
    let j = u128::from(percent.min(100));
    let out = if j == 0 {
        d
    } else {
        let ns = d.as_nanos();
        let span = ns * j / 100;
        duration_from_nanos(rng.u128(ns - span..=ns + span))
    };
    out.max(MIN_DELAY)
}

fn duration_from_nanos(ns: u128) -> Duration {
    let secs = ns / NANOS_PER_SEC;
    // `% NANOS_PER_SEC` is below 10^9, so the cast is lossless and `Duration::new` cannot carry.
    let sub = (ns % NANOS_PER_SEC) as u32;
    match u64::try_from(secs) {
        Ok(s) => Duration::new(s, sub),
        Err(_) => Duration::MAX,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MS: Duration = Duration::from_millis(1);

    fn sched(rise: u32, fall: u32) -> Schedule {
        Schedule {
            interval: Duration::from_secs(2),
            edge_interval: Duration::from_millis(500),
            unhealthy_interval: Duration::from_secs(5),
            no_traffic_interval: Duration::from_secs(60),
            jitter_percent: 0,
            healthy_threshold: rise,
            unhealthy_threshold: fall,
        }
    }

    fn at(t0: Instant, secs: u64) -> Instant {
        t0 + Duration::from_secs(secs)
    }

    /// An endpoint driven to `status` by probes (no `force`).
    fn in_state(status: Status, s: &Schedule, t0: Instant) -> ActiveHealth {
        let mut h = ActiveHealth::new(t0);
        match status {
            Status::Unknown => {}
            Status::Healthy => {
                h.on_probe(true, s, t0);
            }
            Status::Unhealthy => {
                h.on_probe(false, s, t0);
            }
        }
        assert_eq!(h.status(), status);
        h
    }

    #[test]
    fn as_str_names() {
        assert_eq!(Status::Unknown.as_str(), "unknown");
        assert_eq!(Status::Healthy.as_str(), "healthy");
        assert_eq!(Status::Unhealthy.as_str(), "unhealthy");
    }

    #[test]
    fn defaults_match_spec() {
        let s = Schedule::default();
        assert_eq!(s.interval, Duration::from_secs(2));
        assert_eq!(s.edge_interval, Duration::from_millis(500));
        assert_eq!(s.unhealthy_interval, s.interval);
        assert_eq!(s.no_traffic_interval, Duration::from_secs(10));
        assert_eq!(s.jitter_percent, 10);
        assert_eq!((s.healthy_threshold, s.unhealthy_threshold), (2, 3));
    }

    #[test]
    fn new_is_unknown_and_admits() {
        let t0 = Instant::now();
        let h = ActiveHealth::new(t0);
        assert_eq!(h.status(), Status::Unknown);
        assert_eq!(h.since(), t0);
        assert!(h.admits());
        assert_eq!(h.last_probe(), None);
        assert_eq!(h.consecutive(), (0, 0));
    }

    #[test]
    fn unknown_first_success_is_healthy_at_once() {
        let t0 = Instant::now();
        let s = sched(5, 5);
        let mut h = ActiveHealth::new(t0);
        let t = h.on_probe(true, &s, at(t0, 1));
        assert_eq!(
            t,
            Some(Transition {
                from: Status::Unknown,
                to: Status::Healthy
            })
        );
        assert_eq!(h.status(), Status::Healthy);
        assert_eq!(h.since(), at(t0, 1));
        assert!(h.admits());
    }

    #[test]
    fn unknown_first_failure_is_unhealthy_at_once() {
        let t0 = Instant::now();
        let s = sched(5, 5);
        let mut h = ActiveHealth::new(t0);
        let t = h.on_probe(false, &s, at(t0, 1));
        assert_eq!(
            t,
            Some(Transition {
                from: Status::Unknown,
                to: Status::Unhealthy
            })
        );
        assert_eq!(h.since(), at(t0, 1));
        assert!(!h.admits());
    }

    #[test]
    fn healthy_flips_after_exactly_fall_failures() {
        let t0 = Instant::now();
        let s = sched(2, 3);
        let mut h = in_state(Status::Healthy, &s, t0);
        assert_eq!(h.on_probe(false, &s, at(t0, 1)), None);
        assert_eq!(h.on_probe(false, &s, at(t0, 2)), None);
        assert_eq!(h.status(), Status::Healthy);
        assert_eq!(h.consecutive(), (0, 2));
        assert!(h.admits());
        assert_eq!(
            h.on_probe(false, &s, at(t0, 3)),
            Some(Transition {
                from: Status::Healthy,
                to: Status::Unhealthy
            })
        );
        assert_eq!(h.since(), at(t0, 3));
    }

    #[test]
    fn unhealthy_flips_after_exactly_rise_successes() {
        let t0 = Instant::now();
        let s = sched(4, 1);
        let mut h = in_state(Status::Unhealthy, &s, t0);
        for i in 1..4 {
            assert_eq!(h.on_probe(true, &s, at(t0, i)), None);
        }
        assert_eq!(h.status(), Status::Unhealthy);
        assert_eq!(h.consecutive(), (3, 0));
        assert!(!h.admits());
        assert_eq!(
            h.on_probe(true, &s, at(t0, 4)),
            Some(Transition {
                from: Status::Unhealthy,
                to: Status::Healthy
            })
        );
    }

    #[test]
    fn zero_thresholds_act_as_one() {
        let t0 = Instant::now();
        let s = sched(0, 0);
        let mut h = in_state(Status::Healthy, &s, t0);
        assert!(h.on_probe(false, &s, at(t0, 1)).is_some());
        assert_eq!(h.status(), Status::Unhealthy);
        assert!(h.on_probe(true, &s, at(t0, 2)).is_some());
        assert_eq!(h.status(), Status::Healthy);
    }

    #[test]
    fn lowered_threshold_applies_mid_streak() {
        let t0 = Instant::now();
        let mut h = in_state(Status::Healthy, &sched(1, 5), t0);
        h.on_probe(false, &sched(1, 5), at(t0, 1));
        h.on_probe(false, &sched(1, 5), at(t0, 2));
        assert_eq!(h.status(), Status::Healthy);
        assert!(h.on_probe(false, &sched(1, 2), at(t0, 3)).is_some());
        assert_eq!(h.status(), Status::Unhealthy);
    }

    #[test]
    fn success_resets_failure_streak_while_healthy() {
        let t0 = Instant::now();
        let s = sched(1, 3);
        let mut h = in_state(Status::Healthy, &s, t0);
        h.on_probe(false, &s, at(t0, 1));
        h.on_probe(false, &s, at(t0, 2));
        h.on_probe(true, &s, at(t0, 3));
        assert_eq!(h.consecutive(), (1, 0));
        h.on_probe(false, &s, at(t0, 4));
        h.on_probe(false, &s, at(t0, 5));
        assert_eq!(h.status(), Status::Healthy);
        h.on_probe(false, &s, at(t0, 6));
        assert_eq!(h.status(), Status::Unhealthy);
    }

    #[test]
    fn failure_resets_success_streak_while_unhealthy() {
        let t0 = Instant::now();
        let s = sched(3, 1);
        let mut h = in_state(Status::Unhealthy, &s, t0);
        h.on_probe(true, &s, at(t0, 1));
        h.on_probe(true, &s, at(t0, 2));
        h.on_probe(false, &s, at(t0, 3));
        assert_eq!(h.consecutive(), (0, 1));
        h.on_probe(true, &s, at(t0, 4));
        h.on_probe(true, &s, at(t0, 5));
        assert_eq!(h.status(), Status::Unhealthy);
        h.on_probe(true, &s, at(t0, 6));
        assert_eq!(h.status(), Status::Healthy);
    }

    #[test]
    fn transition_resets_both_streaks() {
        let t0 = Instant::now();
        let s = sched(2, 2);
        let mut h = ActiveHealth::new(t0);
        h.on_probe(true, &s, t0);
        assert_eq!(h.consecutive(), (0, 0));
        h.on_probe(false, &s, at(t0, 1));
        h.on_probe(false, &s, at(t0, 2));
        assert_eq!(h.status(), Status::Unhealthy);
        assert_eq!(h.consecutive(), (0, 0));
        // A reset streak means one success is not enough to come back with rise = 2.
        h.on_probe(true, &s, at(t0, 3));
        assert_eq!(h.status(), Status::Unhealthy);
    }

    #[test]
    fn last_probe_records_time_and_outcome() {
        let t0 = Instant::now();
        let s = sched(2, 2);
        let mut h = ActiveHealth::new(t0);
        h.on_probe(true, &s, at(t0, 1));
        assert_eq!(h.last_probe(), Some((at(t0, 1), true)));
        h.on_probe(false, &s, at(t0, 7));
        assert_eq!(h.last_probe(), Some((at(t0, 7), false)));
    }

    #[test]
    fn delay_unknown_uses_edge_even_without_traffic() {
        let t0 = Instant::now();
        let s = sched(2, 2);
        let mut rng = fastrand::Rng::with_seed(1);
        let h = ActiveHealth::new(t0);
        assert_eq!(h.next_delay(&s, false, &mut rng), s.edge_interval);
        assert_eq!(h.next_delay(&s, true, &mut rng), s.edge_interval);
    }

    #[test]
    fn delay_healthy_with_traffic_uses_interval() {
        let t0 = Instant::now();
        let s = sched(2, 2);
        let mut rng = fastrand::Rng::with_seed(1);
        let h = in_state(Status::Healthy, &s, t0);
        assert_eq!(h.next_delay(&s, true, &mut rng), s.interval);
    }

    #[test]
    fn delay_healthy_without_traffic_uses_no_traffic_interval() {
        let t0 = Instant::now();
        let s = sched(2, 2);
        let mut rng = fastrand::Rng::with_seed(1);
        let h = in_state(Status::Healthy, &s, t0);
        assert_eq!(h.next_delay(&s, false, &mut rng), s.no_traffic_interval);
    }

    #[test]
    fn delay_failure_streak_uses_edge_even_without_traffic() {
        let t0 = Instant::now();
        let s = sched(2, 3);
        let mut rng = fastrand::Rng::with_seed(1);
        let mut h = in_state(Status::Healthy, &s, t0);
        h.on_probe(false, &s, at(t0, 1));
        assert_eq!(h.next_delay(&s, true, &mut rng), s.edge_interval);
        assert_eq!(h.next_delay(&s, false, &mut rng), s.edge_interval);
    }

    #[test]
    fn delay_unhealthy_uses_unhealthy_interval_regardless_of_traffic() {
        let t0 = Instant::now();
        let s = sched(2, 2);
        let mut rng = fastrand::Rng::with_seed(1);
        let h = in_state(Status::Unhealthy, &s, t0);
        assert_eq!(h.next_delay(&s, true, &mut rng), s.unhealthy_interval);
        assert_eq!(h.next_delay(&s, false, &mut rng), s.unhealthy_interval);
    }

    #[test]
    fn delay_success_streak_while_unhealthy_uses_edge() {
        let t0 = Instant::now();
        let s = sched(3, 2);
        let mut rng = fastrand::Rng::with_seed(1);
        let mut h = in_state(Status::Unhealthy, &s, t0);
        h.on_probe(true, &s, at(t0, 1));
        assert_eq!(h.next_delay(&s, false, &mut rng), s.edge_interval);
    }

    #[test]
    fn jitter_zero_is_exact() {
        let mut rng = fastrand::Rng::with_seed(9);
        let d = Duration::from_millis(1234);
        for _ in 0..100 {
            assert_eq!(jitter(d, 0, &mut rng), d);
        }
    }

    #[test]
    fn jitter_stays_in_bounds_and_varies() {
        let mut rng = fastrand::Rng::with_seed(3);
        let d = Duration::from_secs(2);
        let (lo, hi) = (Duration::from_millis(1800), Duration::from_millis(2200));
        let (mut min, mut max) = (Duration::MAX, Duration::ZERO);
        for _ in 0..2000 {
            let x = jitter(d, 10, &mut rng);
            assert!(lo <= x && x <= hi, "{x:?}");
            min = min.min(x);
            max = max.max(x);
        }
        // Uses most of the band on both sides, so jitter is actually applied and symmetric.
        assert!(min < Duration::from_millis(1820), "{min:?}");
        assert!(max > Duration::from_millis(2180), "{max:?}");
    }

    #[test]
    fn jitter_percent_clamps_to_100() {
        let mut rng = fastrand::Rng::with_seed(5);
        let d = Duration::from_secs(1);
        for _ in 0..1000 {
            let x = jitter(d, 1000, &mut rng);
            assert!(x >= MS && x <= Duration::from_secs(2), "{x:?}");
        }
    }

    #[test]
    fn delay_never_below_one_ms() {
        let t0 = Instant::now();
        let mut s = sched(1, 1);
        s.edge_interval = Duration::ZERO;
        s.jitter_percent = 50;
        let mut rng = fastrand::Rng::with_seed(2);
        let h = ActiveHealth::new(t0);
        assert_eq!(h.next_delay(&s, true, &mut rng), MS);
        s.edge_interval = Duration::from_micros(1500);
        for _ in 0..500 {
            assert!(h.next_delay(&s, true, &mut rng) >= MS);
        }
    }

    #[test]
    fn huge_durations_saturate_without_panic() {
        let mut rng = fastrand::Rng::with_seed(4);
        for _ in 0..200 {
            let x = jitter(Duration::MAX, 100, &mut rng);
            assert!(x <= Duration::MAX);
        }
        assert_eq!(jitter(Duration::MAX, 0, &mut rng), Duration::MAX);
        let s = Schedule {
            interval: Duration::MAX,
            ..Schedule::default()
        };
        assert!(ActiveHealth::first_delay(&s, &mut rng) < Duration::MAX);
    }

    #[test]
    fn first_delay_spreads_below_interval() {
        let s = Schedule::default();
        let mut rng = fastrand::Rng::with_seed(11);
        let (mut min, mut max) = (Duration::MAX, Duration::ZERO);
        for _ in 0..2000 {
            let d = ActiveHealth::first_delay(&s, &mut rng);
            assert!(d < s.interval, "{d:?}");
            min = min.min(d);
            max = max.max(d);
        }
        assert!(min < Duration::from_millis(50), "{min:?}");
        assert!(max > Duration::from_millis(1950), "{max:?}");
    }

    #[test]
    fn first_delay_zero_interval_is_zero() {
        let s = Schedule {
            interval: Duration::ZERO,
            ..Schedule::default()
        };
        let mut rng = fastrand::Rng::with_seed(1);
        assert_eq!(ActiveHealth::first_delay(&s, &mut rng), Duration::ZERO);
    }

    #[test]
    fn force_changes_status_and_resets_streaks() {
        let t0 = Instant::now();
        let s = sched(2, 3);
        let mut h = in_state(Status::Healthy, &s, t0);
        h.on_probe(false, &s, at(t0, 1));
        assert_eq!(
            h.force(Status::Unknown, at(t0, 2)),
            Some(Transition {
                from: Status::Healthy,
                to: Status::Unknown
            })
        );
        assert_eq!(h.status(), Status::Unknown);
        assert_eq!(h.since(), at(t0, 2));
        assert_eq!(h.consecutive(), (0, 0));
        assert_eq!(h.last_probe(), Some((at(t0, 1), false)));
        // Back in Unknown, one result decides again.
        assert!(h.on_probe(false, &s, at(t0, 3)).is_some());
        assert_eq!(h.status(), Status::Unhealthy);
    }

    #[test]
    fn force_to_same_status_resets_streaks_only() {
        let t0 = Instant::now();
        let s = sched(2, 3);
        let mut h = in_state(Status::Healthy, &s, t0);
        h.on_probe(false, &s, at(t0, 1));
        h.on_probe(false, &s, at(t0, 2));
        assert_eq!(h.force(Status::Healthy, at(t0, 3)), None);
        assert_eq!(h.since(), t0);
        assert_eq!(h.consecutive(), (0, 0));
        // The two earlier failures no longer count.
        h.on_probe(false, &s, at(t0, 4));
        h.on_probe(false, &s, at(t0, 5));
        assert_eq!(h.status(), Status::Healthy);
    }

    /// Expected base gap, restated from the spec rather than shared with the implementation.
    fn expected_base(h: &ActiveHealth, s: &Schedule, had_traffic: bool) -> Duration {
        let (ok, fail) = h.consecutive();
        let streak_against = match h.status() {
            Status::Unknown => return s.edge_interval,
            Status::Healthy => fail > 0,
            Status::Unhealthy => ok > 0,
        };
        if streak_against {
            s.edge_interval
        } else if h.status() == Status::Unhealthy {
            s.unhealthy_interval
        } else if !had_traffic {
            s.no_traffic_interval
        } else {
            s.interval
        }
    }

    fn any_duration() -> impl Strategy<Value = Duration> {
        prop_oneof![
            (0u64..5_000_000_000).prop_map(Duration::from_nanos),
            (0u64..=u64::MAX, 0u32..1_000_000_000).prop_map(|(s, n)| Duration::new(s, n)),
            Just(Duration::ZERO),
            Just(Duration::MAX),
        ]
    }

    proptest! {
        #[test]
        fn prop_status_changes_only_at_threshold(
            rise in 0u32..5,
            fall in 0u32..5,
            results in proptest::collection::vec(any::<bool>(), 0..64),
        ) {
            let t0 = Instant::now();
            let s = sched(rise, fall);
            let mut h = ActiveHealth::new(t0);
            let (mut ok_run, mut fail_run) = (0u32, 0u32);
            for (i, &ok) in results.iter().enumerate() {
                let before = h.status();
                if ok { ok_run += 1; fail_run = 0; } else { fail_run += 1; ok_run = 0; }
                let now = at(t0, i as u64);
                let t = h.on_probe(ok, &s, now);
                let after = h.status();
                prop_assert_eq!(t.is_some(), before != after);
                if let Some(t) = t {
                    prop_assert_eq!(t, Transition { from: before, to: after });
                    prop_assert_eq!(h.since(), now);
                    let justified = match before {
                        Status::Unknown => true,
                        Status::Healthy => !ok && fail_run == fall.max(1),
                        Status::Unhealthy => ok && ok_run == rise.max(1),
                    };
                    prop_assert!(justified, "{:?} -> {:?} ok={} runs=({}, {})", before, after, ok, ok_run, fail_run);
                    ok_run = 0;
                    fail_run = 0;
                } else {
                    prop_assert!(before != Status::Unknown);
                    prop_assert!(fail_run < fall.max(1) || before == Status::Unhealthy);
                    prop_assert!(ok_run < rise.max(1) || before == Status::Healthy);
                }
                prop_assert_eq!(h.consecutive(), (ok_run, fail_run));
                prop_assert_eq!(h.last_probe(), Some((now, ok)));
            }
        }

        #[test]
        fn prop_next_delay_within_jitter_bounds(
            results in proptest::collection::vec(any::<bool>(), 0..8),
            rise in 0u32..4,
            fall in 0u32..4,
            interval in any_duration(),
            edge in any_duration(),
            unhealthy in any_duration(),
            no_traffic in any_duration(),
            jitter_percent in prop_oneof![0u32..=100, any::<u32>()],
            had_traffic in any::<bool>(),
            seed in any::<u64>(),
        ) {
            let t0 = Instant::now();
            let s = Schedule {
                interval,
                edge_interval: edge,
                unhealthy_interval: unhealthy,
                no_traffic_interval: no_traffic,
                jitter_percent,
                healthy_threshold: rise,
                unhealthy_threshold: fall,
            };
            let mut h = ActiveHealth::new(t0);
            for &ok in &results {
                h.on_probe(ok, &s, t0);
            }
            let mut rng = fastrand::Rng::with_seed(seed);
            let d = h.next_delay(&s, had_traffic, &mut rng);
            let base = expected_base(&h, &s, had_traffic).as_nanos();
            let j = u128::from(jitter_percent.min(100));
            let x = d.as_nanos();
            let ms = MS.as_nanos();
            prop_assert!(d >= MS);
            // x in [base*(1-j/100), base*(1+j/100)], cross-multiplied to stay exact, except where
            // the 1ms floor or the Duration::MAX ceiling took over.
            let low_ok = x * 100 >= base * (100 - j) || (x == ms && ms * 100 >= base * (100 - j));
            let high_ok = x * 100 <= base * (100 + j) || (x == ms && base * (100 + j) < ms * 100);
            prop_assert!(low_ok && high_ok, "d={:?} base={} j={}", d, base, j);
            if j == 0 {
                prop_assert_eq!(x, base.max(ms));
            }
        }

        #[test]
        fn prop_first_delay_below_interval(interval in any_duration(), seed in any::<u64>()) {
            let s = Schedule { interval, ..Schedule::default() };
            let mut rng = fastrand::Rng::with_seed(seed);
            let d = ActiveHealth::first_delay(&s, &mut rng);
            prop_assert!(d < interval || (interval.is_zero() && d.is_zero()));
        }

        #[test]
        fn prop_verdict_agrees_with_last_result_when_thresholds_are_one(
            results in proptest::collection::vec(any::<bool>(), 1..64),
        ) {
            let t0 = Instant::now();
            let s = sched(1, 1);
            let mut h = ActiveHealth::new(t0);
            for &ok in &results {
                h.on_probe(ok, &s, t0);
            }
            let last_ok = results.last().copied();
            match h.status() {
                Status::Healthy => prop_assert_eq!(last_ok, Some(true)),
                Status::Unhealthy => prop_assert_eq!(last_ok, Some(false)),
                Status::Unknown => prop_assert!(false, "still Unknown after a probe"),
            }
        }

        #[test]
        fn prop_verdict_disagrees_with_last_result_only_mid_streak(
            rise in 0u32..5,
            fall in 0u32..5,
            results in proptest::collection::vec(any::<bool>(), 1..64),
        ) {
            let t0 = Instant::now();
            let s = sched(rise, fall);
            let mut h = ActiveHealth::new(t0);
            for &ok in &results {
                h.on_probe(ok, &s, t0);
            }
            let last_ok = results.last().copied().unwrap_or(true);
            let (oks, fails) = h.consecutive();
            match h.status() {
                Status::Healthy => prop_assert!(last_ok || (fails >= 1 && fails < fall.max(1))),
                Status::Unhealthy => prop_assert!(!last_ok || (oks >= 1 && oks < rise.max(1))),
                Status::Unknown => prop_assert!(false, "still Unknown after a probe"),
            }
        }
    }
}
