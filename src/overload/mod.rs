//! Load shedding: refuse early and cheaply the work Palisade cannot carry, lowest priority first.
//!
//! Two layers, each a pure state machine driven from here:
//! - the whole process ([`Overload`], in `Shared`): a cap on requests in flight, checked inline per
//!   request against the route's priority ([`shedder`]), plus a shed level that a once-every-250 ms
//!   task derives from queueing delay and resident memory, with hysteresis;
//! - each cluster with `adaptive_concurrency` ([`Adaptive`]): an in-flight limit that follows the
//!   upstream's latency ([`adaptive`]), enforced by a priority queue with a timeout ([`gate`]).
//!
//! A refusal is a 503 with `Retry-After` that costs an atomic or two and the response: no upstream
//! work, no lock, nothing allocated before the response itself.

pub mod adaptive;
pub mod gate;
pub mod shedder;

use std::{
    sync::{
        Arc, Mutex, OnceLock, PoisonError,
        atomic::{AtomicU8, AtomicU32, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use metrics::{Counter, Gauge, counter, gauge};

use crate::config::{AdaptiveConcurrencyConfig, OverloadConfig, RoutePriority};
use shedder::{Level, Priority, ShedConfig, Shedder, Signals};

impl From<RoutePriority> for Priority {
    fn from(p: RoutePriority) -> Self {
        match p {
            RoutePriority::Sheddable => Priority::Sheddable,
            RoutePriority::Normal => Priority::Normal,
            RoutePriority::Critical => Priority::Critical,
        }
    }
}

/// The process's overload state, shared by every request and the observer task.
#[derive(Debug)]
pub struct Overload {
    in_flight: AtomicU32,
    /// The observed shed level (`Level` as u8), written by the observer task.
    level: AtomicU8,
    /// The signal behind that level (an index into `REASONS`).
    level_reason: AtomicU8,
    /// Recent queueing delay in adaptive-concurrency queues (microseconds, smoothed).
    queue_delay_us: AtomicU64,
    shedder: Mutex<Shedder>,
    sheds: OnceLock<[[Counter; 3]; 4]>,
    gauges: OnceLock<(Gauge, Gauge)>,
}

/// Shed reasons, indexing the counters.
const REASONS: [&str; 4] = ["in_flight", "queue_delay", "memory", "max_in_flight"];

fn level_from(v: u8) -> Level {
    match v {
        1 => Level::Sheddable,
        2 => Level::Normal,
        _ => Level::None,
    }
}

fn level_to(l: Level) -> u8 {
    match l {
        Level::None => 0,
        Level::Sheddable => 1,
        Level::Normal => 2,
    }
}

/// One request counted in flight; dropping it (the response ended) frees its place.
#[derive(Debug)]
#[must_use]
pub struct InFlightGuard(Arc<Overload>);

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

pub fn shed_config(c: &OverloadConfig) -> ShedConfig {
    ShedConfig {
        sheddable_at: f64::from(c.shed_sheddable_percent) / 100.0,
        normal_at: f64::from(c.shed_normal_percent) / 100.0,
        ..ShedConfig::default()
    }
}

impl Default for Overload {
    fn default() -> Self {
        Self::new(&OverloadConfig::default())
    }
}

impl Overload {
    pub fn new(c: &OverloadConfig) -> Self {
        Self {
            in_flight: AtomicU32::new(0),
            level: AtomicU8::new(0),
            queue_delay_us: AtomicU64::new(0),
            level_reason: AtomicU8::new(0),
            shedder: Mutex::new(Shedder::new(shed_config(c))),
            sheds: OnceLock::new(),
            gauges: OnceLock::new(),
        }
    }

    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }

    pub fn level(&self) -> Level {
        level_from(self.level.load(Ordering::Relaxed))
    }

    /// Admits one request of priority `p`, or says why not (the reason is a metric label).
    pub fn admit(
        self: &Arc<Self>,
        p: Priority,
        c: &OverloadConfig,
        shed: &ShedConfig,
    ) -> Result<InFlightGuard, &'static str> {
        let now = self.in_flight.fetch_add(1, Ordering::AcqRel);
        let guard = InFlightGuard(Arc::clone(self));
        let level = self.level();
        match shedder::admits_now(level, p, now, c.max_in_flight, shed) {
            Ok(()) => Ok(guard),
            Err(rule) => {
                let reason = match rule {
                    shedder::REFUSED_CAP => "max_in_flight",
                    shedder::REFUSED_LEVEL => REASONS
                        .get(usize::from(self.level_reason.load(Ordering::Relaxed)))
                        .copied()
                        .unwrap_or("in_flight"),
                    _ => "in_flight",
                };
                self.count_shed(reason, p);
                Err(reason)
            }
        }
    }

    fn count_shed(&self, reason: &'static str, p: Priority) {
        let sheds = self.sheds.get_or_init(|| {
            REASONS.map(|r| {
                [Priority::Sheddable, Priority::Normal, Priority::Critical].map(
                    |p| counter!("palisade_shed_total", "reason" => r, "priority" => p.as_str()),
                )
            })
        });
        let r = REASONS.iter().position(|x| *x == reason).unwrap_or(0);
        let p = match p {
            Priority::Sheddable => 0,
            Priority::Normal => 1,
            Priority::Critical => 2,
        };
        if let Some(c) = sheds.get(r).and_then(|row| row.get(p)) {
            c.increment(1);
        }
    }

    /// A request waited `d` in an adaptive-concurrency queue.
    pub fn record_queue_delay(&self, d: Duration) {
        smooth(&self.queue_delay_us, d);
    }

    pub fn queue_delay(&self) -> Duration {
        Duration::from_micros(self.queue_delay_us.load(Ordering::Relaxed))
    }

    /// One observation of the slow signals (queueing delay, memory): updates the shed level.
    pub fn observe(&self, now: Instant, c: &OverloadConfig, rss_bytes: Option<u64>) -> Level {
        let signals = Signals {
            // In flight is judged per request (`admit`) against its own thresholds; fed here too,
            // one sample at a threshold would hold a shed level for the hold time after the load
            // has gone (the overload benchmark lost half its goodput that way).
            in_flight: 0.0,
            queue_delay: self.queue_delay().as_secs_f64()
                / c.queue_delay_target.get().as_secs_f64().max(1e-6),
            memory: match (rss_bytes, c.memory_limit_bytes) {
                (Some(rss), limit) if limit > 0 => rss as f64 / limit as f64,
                _ => 0.0,
            },
        };
        let mut s = self.shedder.lock().unwrap_or_else(PoisonError::into_inner);
        let wanted = shed_config(c);
        if *s.config() != wanted {
            // A reload changed the thresholds: keep the level, judge by the new ones.
            let level = s.level();
            *s = Shedder::new(wanted);
            if level != Level::None {
                s.observe(now, signals);
            }
        }
        let before = s.level();
        let level = s.observe(now, signals);
        let reason = REASONS.iter().position(|r| *r == s.reason()).unwrap_or(0);
        self.level_reason
            .store(u8::try_from(reason).unwrap_or(0), Ordering::Relaxed);
        if level != before {
            tracing::warn!(from = ?before, to = ?level, reason = s.reason(), "overload shed level changed");
        }
        self.level.store(level_to(level), Ordering::Relaxed);
        let (lg, qg) = self.gauges.get_or_init(|| {
            (
                gauge!("palisade_overload_shed_level"),
                gauge!("palisade_overload_queue_delay_seconds"),
            )
        });
        lg.set(f64::from(level_to(level)));
        qg.set(self.queue_delay().as_secs_f64());
        level
    }
}

/// The queue length worth waiting in: the gate frees about `limit` slots per `latency`, so a
/// waiter at position q waits about q × latency / limit. Half the timeout's worth, so that most
/// waiters are served rather than refused late; at most `max_queue`.
fn useful_queue(limit: u32, latency: Duration, timeout: Duration, max_queue: u32) -> u32 {
    let per_slot = latency.as_secs_f64() / f64::from(limit.max(1));
    if per_slot <= 0.0 {
        return max_queue;
    }
    let n = (timeout.as_secs_f64() / 2.0 / per_slot).floor();
    if n >= f64::from(max_queue) {
        max_queue
    } else {
        n.max(0.0) as u32
    }
}

/// Folds `d` into a smoothed microsecond figure (1/8 of each new sample). Racing updates may
/// lose a sample; the figure only steers shedding and a gauge.
fn smooth(cell: &AtomicU64, d: Duration) {
    let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
    let old = cell.load(Ordering::Relaxed);
    cell.store(old - old / 8 + us / 8, Ordering::Relaxed);
}

/// Resident memory of this process, from `/proc/self/status` (`VmRSS`, in kB whatever the page
/// size).
pub fn rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Observes the slow signals every 250 ms until `stop`; sweeps idle rate-limit keys every second.
pub async fn observe_loop(
    shared: Arc<crate::snapshot::Shared>,
    stop: tokio_util::sync::CancellationToken,
) {
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut n: u64 = 0;
    loop {
        n = n.wrapping_add(1);
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let snapshot = shared.load();
        let c = &snapshot.config.overload;
        let rss = if c.memory_limit_bytes > 0 {
            rss_bytes()
        } else {
            None
        };
        shared.overload.observe(Instant::now(), c, rss);
        let now = Instant::now();
        if n.is_multiple_of(4) {
            snapshot.rate_limits.sweep(now, n.is_multiple_of(40));
        }
        for cluster in snapshot.clusters.values() {
            if let Some(a) = &cluster.adaptive {
                a.publish();
            }
        }
    }
}

/// A cluster's adaptive concurrency: the limiter and the gate that enforces it. Carried over a
/// reload (by cluster name) while its settings are unchanged, so the learned limit survives.
#[derive(Debug)]
pub struct Adaptive {
    pub config: AdaptiveConcurrencyConfig,
    limiter: Mutex<adaptive::Adaptive>,
    pub gate: Arc<gate::Gate>,
    /// Recent wait at the gate (microseconds, smoothed like `Overload::queue_delay_us`).
    queue_delay_us: AtomicU64,
    /// How many waiters can be served within the queue timeout at the current limit and
    /// latency (see `useful_queue`).
    useful_queue: AtomicU32,
    limit_gauge: Gauge,
    min_rtt_gauge: Gauge,
    queue_delay_gauge: Gauge,
}

impl Adaptive {
    pub fn new(cluster: &str, c: &AdaptiveConcurrencyConfig, now: Instant) -> Self {
        let cfg = adaptive::AdaptiveConfig {
            min_limit: c.min_limit,
            max_limit: c.max_limit,
            initial_limit: c.initial_limit,
            buffer: f64::from(c.buffer_percent) / 100.0,
            sample_window: c.sample_window.get(),
            min_rtt_interval: c.min_rtt_interval.get(),
            ..adaptive::AdaptiveConfig::default()
        };
        let limiter = adaptive::Adaptive::new(cfg, now, &mut fastrand::Rng::new());
        let gate = Arc::new(gate::Gate::new(
            limiter.limit(),
            c.max_queue,
            c.queue_timeout.get(),
        ));
        Self {
            config: c.clone(),
            limiter: Mutex::new(limiter),
            gate,
            queue_delay_us: AtomicU64::new(0),
            useful_queue: AtomicU32::new(c.max_queue),
            limit_gauge: gauge!("palisade_adaptive_limit", "cluster" => cluster.to_owned()),
            min_rtt_gauge: gauge!("palisade_adaptive_min_rtt_seconds", "cluster" => cluster.to_owned()),
            queue_delay_gauge: gauge!("palisade_adaptive_queue_delay_seconds", "cluster" => cluster.to_owned()),
        }
    }

    /// A response head arrived after `rtt` (the request started with `in_flight` in flight).
    pub fn on_success(&self, now: Instant, rtt: Duration, in_flight: u32) {
        let (limit, latency) = {
            let mut l = self.limiter.lock().unwrap_or_else(PoisonError::into_inner);
            l.on_sample(now, rtt, in_flight);
            (l.limit(), l.sample_rtt().or_else(|| l.min_rtt()))
        };
        self.gate.set_limit(limit);
        if let Some(latency) = latency {
            self.useful_queue.store(
                useful_queue(
                    limit,
                    latency,
                    self.config.queue_timeout.get(),
                    self.config.max_queue,
                ),
                Ordering::Relaxed,
            );
        }
    }

    /// Whether a request of priority `p` that finds no free slot should join the queue: only
    /// while the queue is short enough to drain within about half its timeout. A request that
    /// would time out in the queue anyway is refused at once instead (a fast 503 rather than a
    /// slow one). Critical requests always try: the gate may evict a lower-priority waiter.
    pub fn may_queue(&self, p: Priority) -> bool {
        p == Priority::Critical
            || self.gate.in_flight() < self.gate.limit()
            || self.gate.queued() < self.useful_queue.load(Ordering::Relaxed)
    }

    /// The request failed upstream (timeout, reset, 5xx from overload): a loss signal.
    pub fn on_drop(&self, now: Instant) {
        let limit = {
            let mut l = self.limiter.lock().unwrap_or_else(PoisonError::into_inner);
            l.on_drop(now);
            l.limit()
        };
        self.gate.set_limit(limit);
    }

    pub fn limit(&self) -> u32 {
        self.gate.limit()
    }

    /// A request waited `d` at this cluster's gate.
    pub fn record_queue_delay(&self, d: Duration) {
        smooth(&self.queue_delay_us, d);
    }

    pub fn queue_delay(&self) -> Duration {
        Duration::from_micros(self.queue_delay_us.load(Ordering::Relaxed))
    }

    pub fn min_rtt(&self) -> Option<Duration> {
        self.limiter
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .min_rtt()
    }

    /// Exports the limit and minimum latency (the observer task calls this).
    pub fn publish(&self) {
        self.limit_gauge.set(f64::from(self.limit()));
        self.queue_delay_gauge.set(self.queue_delay().as_secs_f64());
        if let Some(m) = self.min_rtt() {
            self.min_rtt_gauge.set(m.as_secs_f64());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(max: u32) -> OverloadConfig {
        OverloadConfig {
            max_in_flight: max,
            ..OverloadConfig::default()
        }
    }

    #[test]
    fn in_flight_sheds_sheddable_first_and_critical_last() {
        let c = config(100);
        let shed = shed_config(&c);
        let o = Arc::new(Overload::new(&c));
        let mut held = Vec::new();
        // Up to 80% every priority is admitted.
        for _ in 0..80 {
            held.push(o.admit(Priority::Normal, &c, &shed).unwrap());
        }
        assert_eq!(
            o.admit(Priority::Sheddable, &c, &shed).unwrap_err(),
            "in_flight"
        );
        assert!(o.admit(Priority::Normal, &c, &shed).is_ok());
        for _ in 0..15 {
            held.push(o.admit(Priority::Critical, &c, &shed).unwrap());
        }
        assert!(o.admit(Priority::Normal, &c, &shed).is_err());
        for _ in 0..5 {
            held.push(o.admit(Priority::Critical, &c, &shed).unwrap());
        }
        assert_eq!(
            o.admit(Priority::Critical, &c, &shed).unwrap_err(),
            "max_in_flight"
        );
        // Refusals did not leak places; dropping the admitted frees them all.
        assert_eq!(o.in_flight(), 100);
        held.clear();
        assert_eq!(o.in_flight(), 0);
        assert!(o.admit(Priority::Sheddable, &c, &shed).is_ok());
    }

    #[test]
    fn the_useful_queue_is_what_drains_within_half_the_timeout() {
        let ms = Duration::from_millis;
        // 20 slots each 10 ms: one frees every 0.5 ms; 10 ms of timeout, half of it: 10 waiters.
        assert_eq!(useful_queue(20, ms(10), ms(10), 50), 10);
        assert_eq!(useful_queue(20, ms(10), ms(10), 4), 4);
        // A slow upstream: nobody should wait.
        assert_eq!(useful_queue(2, ms(1000), ms(10), 50), 0);
        assert_eq!(useful_queue(0, ms(10), ms(10), 50), 0);
        assert_eq!(useful_queue(20, Duration::ZERO, ms(10), 50), 50);
    }

    #[test]
    fn requests_in_flight_never_raise_the_observed_level() {
        let c = config(10);
        let shed = shed_config(&c);
        let o = Arc::new(Overload::new(&c));
        let held: Vec<_> = (0..9)
            .map(|_| o.admit(Priority::Critical, &c, &shed).unwrap())
            .collect();
        assert_eq!(o.observe(Instant::now(), &c, None), Level::None);
        drop(held);
        // With the load gone, every priority is admitted at once.
        assert!(o.admit(Priority::Sheddable, &c, &shed).is_ok());
    }

    #[test]
    fn queue_delay_drives_the_shed_level() {
        let c = OverloadConfig {
            queue_delay_target: crate::config::Dur::millis(10),
            ..config(1000)
        };
        let o = Overload::new(&c);
        for _ in 0..64 {
            o.record_queue_delay(Duration::from_millis(50));
        }
        let level = o.observe(Instant::now(), &c, None);
        assert_ne!(level, Level::None);
        assert!(!o.level().admits(Priority::Sheddable));
        assert!(o.level().admits(Priority::Critical));
    }

    #[test]
    fn memory_over_its_limit_drives_the_shed_level() {
        let c = OverloadConfig {
            memory_limit_bytes: 1000,
            ..config(1000)
        };
        let o = Overload::new(&c);
        assert_eq!(o.observe(Instant::now(), &c, Some(500)), Level::None);
        assert_eq!(o.observe(Instant::now(), &c, Some(2000)), Level::Normal);
    }
}
