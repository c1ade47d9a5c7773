//! Priority-aware load shedding: which request priorities the proxy refuses under overload.
//!
//! Owns: the shed [`Level`] derived from overload pressure with hysteresis and a minimum hold
//! time ([`Shedder`], driven by a periodic task), and the cheap per-request decision
//! ([`admits_now`]) that combines that level with the in-flight count, which moves per request
//! and so is checked inline. Does not own: measuring the signals (the caller turns in-flight
//! counts, queueing delay and process memory into ratios), the hard caps' bookkeeping, queueing
//! ([`super::gate`]), or the response a refusal becomes. Pure: time comes in as `now`.
//!
//! Escalation is immediate (overload is urgent); a level ends only once pressure has fallen below
//! its threshold minus `hysteresis` *and* it has been held for `min_hold`, so a pressure that
//! oscillates around a threshold cannot make the level flap.

use std::time::{Duration, Instant};

/// How much a request matters when the proxy must refuse some. Ordered: `Sheddable < Normal <
/// Critical`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Priority {
    /// Refused first (prefetches, analytics, batch work).
    Sheddable,
    /// Ordinary traffic.
    #[default]
    Normal,
    /// Never refused by the shedder; only hard caps refuse it.
    Critical,
}

impl Priority {
    /// Label for logs and metrics: `"sheddable"`, `"normal"` or `"critical"`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Sheddable => "sheddable",
            Self::Normal => "normal",
            Self::Critical => "critical",
        }
    }
}

/// What is being refused. Ordered by severity.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Level {
    /// Nothing is refused.
    #[default]
    None,
    /// Sheddable requests are refused.
    Sheddable,
    /// Sheddable and normal requests are refused.
    Normal,
}

impl Level {
    /// Whether a request of priority `p` passes this level. Critical always does.
    pub const fn admits(self, p: Priority) -> bool {
        match self {
            Self::None => true,
            Self::Sheddable => !matches!(p, Priority::Sheddable),
            Self::Normal => matches!(p, Priority::Critical),
        }
    }

    /// Label for logs and metrics: `"none"`, `"sheddable"` or `"normal"`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Sheddable => "sheddable",
            Self::Normal => "normal",
        }
    }
}

/// Thresholds on the pressure ratios (1.0 = at the configured target or limit).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ShedConfig {
    /// Pressure at which sheddable requests are refused. NaN disables; values above `normal_at`
    /// act as `normal_at` (sheddable is always refused when normal is).
    pub sheddable_at: f64,
    /// Pressure at which normal requests are refused too. NaN disables.
    pub normal_at: f64,
    /// A level ends when pressure falls below its threshold minus this. Capped at half the
    /// threshold, so that a level always ends once pressure falls to 0; NaN or negative is 0.
    pub hysteresis: f64,
    /// Shortest time a level is held once entered before it may be lowered (escalating is
    /// immediate). 0 lowers it at the first observation below the exit point.
    pub min_hold: Duration,
}

impl Default for ShedConfig {
    fn default() -> Self {
        Self {
            sheddable_at: 0.8,
            normal_at: 0.95,
            hysteresis: 0.1,
            min_hold: Duration::from_secs(1),
        }
    }
}

impl ShedConfig {
    fn normalized(self) -> Self {
        let threshold = |t: f64| {
            if t.is_nan() {
                f64::INFINITY
            } else {
                t.max(0.0)
            }
        };
        let normal_at = threshold(self.normal_at);
        Self {
            sheddable_at: threshold(self.sheddable_at).min(normal_at),
            normal_at,
            hysteresis: if self.hysteresis >= 0.0 {
                self.hysteresis
            } else {
                0.0
            },
            min_hold: self.min_hold,
        }
    }

    fn enter_at(&self, level: Level) -> f64 {
        match level {
            Level::None => 0.0,
            Level::Sheddable => self.sheddable_at,
            Level::Normal => self.normal_at,
        }
    }

    fn exit_at(&self, level: Level) -> f64 {
        let t = self.enter_at(level);
        t - self.hysteresis.min(t / 2.0)
    }
}

/// Overload pressures as ratios (`0.0..`, 1.0 = at the target or limit), computed by the caller.
/// 0 when a signal is off; NaN and negative values count as 0.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Signals {
    /// Requests in flight / the global cap.
    pub in_flight: f64,
    /// Queueing delay / its target.
    pub queue_delay: f64,
    /// Process memory / its limit.
    pub memory: f64,
}

impl Signals {
    /// The highest pressure and its signal's label (the first one on ties).
    fn strongest(self) -> (f64, &'static str) {
        let clean = |v: f64| if v > 0.0 { v.min(f64::MAX) } else { 0.0 };
        [
            (clean(self.in_flight), REASON_IN_FLIGHT),
            (clean(self.queue_delay), REASON_QUEUE_DELAY),
            (clean(self.memory), REASON_MEMORY),
        ]
        .into_iter()
        .fold(
            (0.0, REASON_IN_FLIGHT),
            |best, s| {
                if s.0 > best.0 { s } else { best }
            },
        )
    }
}

/// [`Shedder::reason`] when the in-flight ratio drives the level; also the [`admits_now`]
/// refusal label for a per-priority in-flight threshold.
pub const REASON_IN_FLIGHT: &str = "in_flight";
/// [`Shedder::reason`] when the queueing delay drives the level.
pub const REASON_QUEUE_DELAY: &str = "queue_delay";
/// [`Shedder::reason`] when process memory drives the level.
pub const REASON_MEMORY: &str = "memory";
/// [`Shedder::reason`] while nothing is shed.
pub const REASON_NONE: &str = "none";
/// [`admits_now`] refusal label: the hard in-flight cap (refuses every priority).
pub const REFUSED_CAP: &str = "cap";
/// [`admits_now`] refusal label: the observed [`Level`] refuses this priority (see
/// [`Shedder::reason`] for the signal behind it).
pub const REFUSED_LEVEL: &str = "level";

/// The shed level of the process, updated by a periodic task from [`Signals`].
#[derive(Clone, Debug)]
pub struct Shedder {
    cfg: ShedConfig,
    level: Level,
    /// When the current level was entered; `None` before the first change.
    entered: Option<Instant>,
    reason: &'static str,
    pressure: f64,
}

impl Shedder {
    /// A shedder at [`Level::None`]. The configuration is normalised (see [`ShedConfig`]).
    pub fn new(cfg: ShedConfig) -> Self {
        Self {
            cfg: cfg.normalized(),
            level: Level::None,
            entered: None,
            reason: REASON_NONE,
            pressure: 0.0,
        }
    }

    /// The configuration in effect (normalised).
    pub fn config(&self) -> &ShedConfig {
        &self.cfg
    }

    /// Updates the level from the strongest of `s` and returns it.
    pub fn observe(&mut self, now: Instant, s: Signals) -> Level {
        let (pressure, driver) = s.strongest();
        self.pressure = pressure;
        let entering = [Level::Normal, Level::Sheddable]
            .into_iter()
            .find(|&l| pressure >= self.cfg.enter_at(l))
            .unwrap_or(Level::None);
        if entering > self.level {
            self.set(now, entering, driver);
            return self.level;
        }
        // Levels at or below the current one persist down to their exit points.
        let sustained = [Level::Normal, Level::Sheddable]
            .into_iter()
            .find(|&l| l <= self.level && pressure >= self.cfg.exit_at(l))
            .unwrap_or(Level::None);
        if sustained == self.level {
            if self.level != Level::None {
                self.reason = driver;
            }
        } else {
            let held = self
                .entered
                .is_some_and(|at| now.saturating_duration_since(at) < self.cfg.min_hold);
            if !held {
                self.set(now, sustained, driver);
            }
        }
        self.level
    }

    fn set(&mut self, now: Instant, level: Level, driver: &'static str) {
        self.level = level;
        self.entered = Some(now);
        self.reason = if level == Level::None {
            REASON_NONE
        } else {
            driver
        };
    }

    /// The current level.
    pub fn level(&self) -> Level {
        self.level
    }

    /// The signal behind the current level: [`REASON_IN_FLIGHT`], [`REASON_QUEUE_DELAY`] or
    /// [`REASON_MEMORY`] (the strongest at the last observation that entered or sustained the
    /// level; kept while the level is only held by `min_hold`), [`REASON_NONE`] at
    /// [`Level::None`].
    pub fn reason(&self) -> &'static str {
        self.reason
    }

    /// The strongest pressure at the last observation (for metrics).
    pub fn pressure(&self) -> f64 {
        self.pressure
    }
}

/// The per-request decision: refuses every priority when `in_flight` (requests in flight before
/// this one) is at `cap`, non-critical ones at `normal_at × cap`, sheddable ones at
/// `min(sheddable_at, normal_at) × cap`, and whatever `level` refuses. `cap` 0 disables the
/// in-flight checks. The error is the label of the first rule that refused: [`REFUSED_CAP`],
/// [`REASON_IN_FLIGHT`] or [`REFUSED_LEVEL`].
pub fn admits_now(
    level: Level,
    p: Priority,
    in_flight: u32,
    cap: u32,
    cfg: &ShedConfig,
) -> Result<(), &'static str> {
    if cap > 0 {
        if in_flight >= cap {
            return Err(REFUSED_CAP);
        }
        let (n, cap) = (f64::from(in_flight), f64::from(cap));
        // NaN thresholds compare false, i.e. disabled, without normalising per request.
        let over = |at: f64| n >= at * cap;
        let refused = match p {
            Priority::Critical => false,
            Priority::Normal => over(cfg.normal_at),
            Priority::Sheddable => over(cfg.sheddable_at) || over(cfg.normal_at),
        };
        if refused {
            return Err(REASON_IN_FLIGHT);
        }
    }
    if level.admits(p) {
        Ok(())
    } else {
        Err(REFUSED_LEVEL)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const PRIOS: [Priority; 3] = [Priority::Sheddable, Priority::Normal, Priority::Critical];
    const LEVELS: [Level; 3] = [Level::None, Level::Sheddable, Level::Normal];

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn in_flight(p: f64) -> Signals {
        Signals {
            in_flight: p,
            ..Signals::default()
        }
    }

    #[test]
    fn priorities_order_label_and_default() {
        assert!(Priority::Sheddable < Priority::Normal && Priority::Normal < Priority::Critical);
        assert_eq!(Priority::default(), Priority::Normal);
        let labels: Vec<_> = PRIOS.iter().map(|p| p.as_str()).collect();
        assert_eq!(labels, ["sheddable", "normal", "critical"]);
        let labels: Vec<_> = LEVELS.iter().map(|l| l.as_str()).collect();
        assert_eq!(labels, ["none", "sheddable", "normal"]);
    }

    #[test]
    fn levels_admit_by_priority() {
        let table: Vec<Vec<bool>> = LEVELS
            .iter()
            .map(|l| PRIOS.iter().map(|&p| l.admits(p)).collect())
            .collect();
        assert_eq!(
            table,
            [
                [true, true, true],
                [false, true, true],
                [false, false, true]
            ]
        );
    }

    #[test]
    fn enters_levels_at_their_thresholds_immediately() {
        let t = Instant::now();
        let mut s = Shedder::new(ShedConfig::default());
        assert_eq!(s.observe(t, in_flight(0.79)), Level::None);
        assert_eq!(s.reason(), REASON_NONE);
        assert_eq!(s.observe(t, in_flight(0.8)), Level::Sheddable);
        assert_eq!(s.reason(), REASON_IN_FLIGHT);
        assert_eq!(s.observe(t, in_flight(0.95)), Level::Normal);
        // Straight from none to normal.
        let mut s = Shedder::new(ShedConfig::default());
        assert_eq!(s.observe(t, in_flight(3.0)), Level::Normal);
        assert_eq!(s.pressure(), 3.0);
    }

    #[test]
    fn ends_only_below_threshold_minus_hysteresis() {
        let t = Instant::now();
        let mut s = Shedder::new(ShedConfig::default());
        s.observe(t, in_flight(0.85));
        assert_eq!(s.observe(t + ms(5000), in_flight(0.71)), Level::Sheddable);
        assert_eq!(s.observe(t + ms(6000), in_flight(0.701)), Level::Sheddable);
        assert_eq!(s.observe(t + ms(7000), in_flight(0.699)), Level::None);
        assert_eq!(s.reason(), REASON_NONE);
    }

    #[test]
    fn level_is_held_for_min_hold() {
        let t = Instant::now();
        let mut s = Shedder::new(ShedConfig::default());
        s.observe(t, in_flight(0.9));
        assert_eq!(s.observe(t + ms(999), in_flight(0.0)), Level::Sheddable);
        assert_eq!(s.observe(t + ms(1000), in_flight(0.0)), Level::None);
        // Time going backwards never releases a level.
        s.observe(t + ms(2000), in_flight(0.9));
        assert_eq!(s.observe(t, in_flight(0.0)), Level::Sheddable);
    }

    #[test]
    fn escalation_restarts_the_hold_and_steps_down_through_sustained_levels() {
        let t = Instant::now();
        let mut s = Shedder::new(ShedConfig::default());
        s.observe(t, in_flight(0.8));
        s.observe(t + ms(900), in_flight(1.0));
        // Normal was entered at 900 ms: held until 1900 ms.
        assert_eq!(s.observe(t + ms(1800), in_flight(0.75)), Level::Normal);
        // 0.75 is below normal's exit (0.85) but above sheddable's (0.7).
        assert_eq!(s.observe(t + ms(1900), in_flight(0.75)), Level::Sheddable);
        assert_eq!(s.observe(t + ms(2800), in_flight(0.0)), Level::Sheddable);
        assert_eq!(s.observe(t + ms(2900), in_flight(0.0)), Level::None);
        // From normal straight to none when pressure is gone.
        s.observe(t + ms(3000), in_flight(1.0));
        assert_eq!(s.observe(t + ms(4000), in_flight(0.1)), Level::None);
    }

    #[test]
    fn no_flapping_around_a_threshold() {
        let t = Instant::now();
        for min_hold in [Duration::ZERO, ms(1000)] {
            let mut s = Shedder::new(ShedConfig {
                min_hold,
                ..ShedConfig::default()
            });
            let mut changes = 0;
            let mut last = Level::None;
            for i in 0..1000u64 {
                let p = if i % 2 == 0 { 0.81 } else { 0.79 };
                let l = s.observe(t + ms(i * 10), in_flight(p));
                changes += u32::from(l != last);
                last = l;
            }
            assert_eq!(changes, 1, "hold {min_hold:?}");
        }
    }

    #[test]
    fn hold_bounds_changes_when_pressure_swings_across_both_exits() {
        let t = Instant::now();
        let mut s = Shedder::new(ShedConfig::default());
        let mut changes = 0;
        let mut last = Level::None;
        // Every 100 ms between 0 and 0.9 for 10 s.
        for i in 0..100u64 {
            let p = if i % 2 == 0 { 0.9 } else { 0.0 };
            let l = s.observe(t + ms(i * 100), in_flight(p));
            changes += u32::from(l != last);
            last = l;
        }
        // Each episode is 1 s held plus one 200 ms swing: at most 2 changes per 1.1 s.
        assert!(changes <= 2 * 10, "{changes}");
        assert!(changes >= 10, "{changes}");
    }

    #[test]
    fn reason_names_the_strongest_signal() {
        let t = Instant::now();
        let mut s = Shedder::new(ShedConfig::default());
        let sig = |i, q, m| Signals {
            in_flight: i,
            queue_delay: q,
            memory: m,
        };
        s.observe(t, sig(0.5, 0.3, 0.9));
        assert_eq!((s.level(), s.reason()), (Level::Sheddable, REASON_MEMORY));
        s.observe(t + ms(10), sig(0.5, 1.2, 0.9));
        assert_eq!((s.level(), s.reason()), (Level::Normal, REASON_QUEUE_DELAY));
        // Below every exit point but held: the reason stays the one that drove the level.
        s.observe(t + ms(20), sig(0.1, 0.0, 0.0));
        assert_eq!((s.level(), s.reason()), (Level::Normal, REASON_QUEUE_DELAY));
        // Sustained by a different signal: that one becomes the reason.
        s.observe(t + ms(30), sig(0.9, 0.0, 0.0));
        assert_eq!((s.level(), s.reason()), (Level::Normal, REASON_IN_FLIGHT));
    }

    #[test]
    fn bad_signals_and_config_are_tamed() {
        let t = Instant::now();
        let mut s = Shedder::new(ShedConfig::default());
        let nan = Signals {
            in_flight: f64::NAN,
            queue_delay: -3.0,
            memory: 0.5,
        };
        assert_eq!(s.observe(t, nan), Level::None);
        assert_eq!(s.pressure(), 0.5);
        assert_eq!(s.observe(t, in_flight(f64::INFINITY)), Level::Normal);
        // Hysteresis larger than the threshold is capped at half of it.
        let mut s = Shedder::new(ShedConfig {
            hysteresis: 5.0,
            min_hold: Duration::ZERO,
            ..ShedConfig::default()
        });
        s.observe(t, in_flight(0.8));
        assert_eq!(s.observe(t, in_flight(0.41)), Level::Sheddable);
        assert_eq!(s.observe(t, in_flight(0.39)), Level::None);
        // Disabled and inverted thresholds.
        let c = Shedder::new(ShedConfig {
            sheddable_at: f64::NAN,
            normal_at: 0.5,
            hysteresis: f64::NAN,
            ..ShedConfig::default()
        });
        assert_eq!(c.config().sheddable_at, 0.5);
        assert_eq!(c.config().hysteresis, 0.0);
        let mut off = Shedder::new(ShedConfig {
            sheddable_at: f64::NAN,
            normal_at: f64::NAN,
            ..ShedConfig::default()
        });
        assert_eq!(off.observe(t, in_flight(f64::INFINITY)), Level::None);
    }

    #[test]
    fn admits_now_applies_cap_thresholds_and_level() {
        let cfg = ShedConfig::default();
        let check = |level, p, n| admits_now(level, p, n, 100, &cfg);
        assert_eq!(check(Level::None, Priority::Sheddable, 79), Ok(()));
        assert_eq!(
            check(Level::None, Priority::Sheddable, 80),
            Err("in_flight")
        );
        assert_eq!(check(Level::None, Priority::Normal, 94), Ok(()));
        assert_eq!(check(Level::None, Priority::Normal, 95), Err("in_flight"));
        assert_eq!(check(Level::None, Priority::Critical, 99), Ok(()));
        assert_eq!(check(Level::None, Priority::Critical, 100), Err("cap"));
        assert_eq!(check(Level::Normal, Priority::Normal, 0), Err("level"));
        assert_eq!(check(Level::Normal, Priority::Critical, 0), Ok(()));
        assert_eq!(
            check(Level::Sheddable, Priority::Sheddable, 0),
            Err("level")
        );
        // The cap wins over the level, the in-flight threshold over the level.
        assert_eq!(check(Level::Normal, Priority::Normal, 100), Err("cap"));
        assert_eq!(check(Level::Normal, Priority::Normal, 96), Err("in_flight"));
        // Cap 0 disables the in-flight checks but not the level.
        assert_eq!(
            admits_now(Level::None, Priority::Sheddable, u32::MAX, 0, &cfg),
            Ok(())
        );
        assert_eq!(
            admits_now(Level::Normal, Priority::Normal, 0, 0, &cfg),
            Err("level")
        );
    }

    proptest! {
        /// Whatever the inputs, admitting a priority admits every higher one, and sheddable is
        /// refused exactly when the cap, a threshold at or below the in-flight count, or the
        /// level says so.
        #[test]
        fn admission_respects_priority_order(
            level in prop::sample::select(LEVELS.to_vec()),
            n in 0u32..300, cap in 0u32..300,
            sheddable_at in prop_oneof![0.0f64..1.5, Just(f64::NAN)],
            normal_at in prop_oneof![0.0f64..1.5, Just(f64::NAN)],
        ) {
            let cfg = ShedConfig { sheddable_at, normal_at, ..ShedConfig::default() };
            let ok = |p| admits_now(level, p, n, cap, &cfg).is_ok();
            if ok(Priority::Sheddable) { prop_assert!(ok(Priority::Normal)); }
            if ok(Priority::Normal) { prop_assert!(ok(Priority::Critical)); }
            let (nf, cf) = (f64::from(n), f64::from(cap));
            let expect_refused = (cap > 0 && (n >= cap || nf >= sheddable_at * cf || nf >= normal_at * cf))
                || level >= Level::Sheddable;
            prop_assert_eq!(!ok(Priority::Sheddable), expect_refused);
            prop_assert_eq!(ok(Priority::Critical), cap == 0 || n < cap);
            // Fewer in flight never turns an admission into a refusal.
            for p in PRIOS {
                if ok(p) && n > 0 {
                    prop_assert!(admits_now(level, p, n - 1, cap, &cfg).is_ok());
                }
            }
        }

        /// For any pressure sequence: the level is at least what the pressure enters, never
        /// drops while pressure is at or above its exit point, and never drops within
        /// `min_hold` of being entered.
        #[test]
        fn level_follows_pressure_with_hysteresis_and_hold(
            steps in prop::collection::vec((0u64..400, 0.0f64..1.3), 1..200),
        ) {
            let cfg = ShedConfig::default();
            let mut s = Shedder::new(cfg);
            let t0 = Instant::now();
            let mut t = t0;
            let mut entered = t0;
            let mut last = Level::None;
            for (dt, p) in steps {
                t += ms(dt);
                let l = s.observe(t, in_flight(p));
                let entering = if p >= 0.95 { Level::Normal } else if p >= 0.8 { Level::Sheddable } else { Level::None };
                prop_assert!(l >= entering);
                if l < last {
                    prop_assert!(t - entered >= cfg.min_hold);
                    let exit = if last == Level::Normal { 0.85 } else { 0.7 };
                    prop_assert!(p < exit);
                }
                if l != last {
                    entered = t;
                }
                prop_assert_eq!(l == Level::None, s.reason() == REASON_NONE);
                last = l;
            }
        }
    }
}
