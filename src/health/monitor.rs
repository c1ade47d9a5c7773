//! The per-cluster health task: it runs active probes on their schedule, judges outliers every
//! interval (or at once when the request path reports a crossed threshold), ramps slow start, and
//! rebuilds the cluster's routing plan whenever an endpoint's admission changes. Every change is
//! logged with its reason and counted.
//!
//! One task per cluster per snapshot, stopped with the snapshot (a reload starts a new one, which
//! finds the endpoints' state where the old one left it: that state lives in the endpoints). The
//! decisions themselves are the pure state machines' (`active`, `outlier`, `slow_start`); this task
//! only feeds them time and results.

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
    time::{Duration, Instant},
};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{
    active::{ActiveHealth, Status},
    outlier::{self, Event},
    probe,
};
use crate::{
    metrics,
    upstream::cluster::{Cluster, Endpoint, WEIGHT_SCALE},
};

/// How often slow-start weights are refreshed while a ramp is in progress.
const RAMP_STEP: Duration = Duration::from_millis(250);
/// How often the cluster's latency histogram halves (a hedge's quantile follows the last ~10 s).
const LATENCY_DECAY: Duration = Duration::from_secs(5);

/// Runs until `stop`.
pub async fn run(cluster: Arc<Cluster>, stop: CancellationToken) {
    let mut m = Monitor::new(Arc::clone(&cluster));
    let (tx, mut rx) = mpsc::unbounded_channel();
    loop {
        let now = clock();
        m.start_due_probes(now, &tx, &stop);
        let wake = m.tick(now);
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep_until(wake.into()) => {}
            () = cluster.wake.notified() => m.judge_now = true,
            Some((id, result)) = rx.recv() => m.on_probe(&id, &result, clock()),
        }
    }
}

/// `tokio`'s clock as a std `Instant`, so tests on paused time drive this task too.
fn clock() -> Instant {
    tokio::time::Instant::now().into_std()
}

struct Monitor {
    cluster: Arc<Cluster>,
    rng: fastrand::Rng,
    /// When each endpoint (by id) is due for its next probe.
    next_probe: HashMap<Arc<str>, Instant>,
    probing: HashSet<Arc<str>>,
    /// Requests the cluster had finished at each endpoint's last probe (to tell an idle cluster).
    seen_requests: HashMap<Arc<str>, u64>,
    next_judge: Instant,
    judge_now: bool,
    /// When the cluster's latency histogram next fades.
    next_decay: Instant,
}

impl Monitor {
    fn new(cluster: Arc<Cluster>) -> Self {
        let now = clock();
        let interval = cluster
            .health
            .outlier
            .as_ref()
            .map_or(Duration::from_secs(1), |o| o.interval);
        Self {
            cluster,
            rng: fastrand::Rng::new(),
            next_probe: HashMap::new(),
            probing: HashSet::new(),
            seen_requests: HashMap::new(),
            next_judge: now + interval,
            judge_now: false,
            next_decay: now + LATENCY_DECAY,
        }
    }

    fn start_due_probes(
        &mut self,
        now: Instant,
        tx: &mpsc::UnboundedSender<(Arc<str>, Result<(), String>)>,
        stop: &CancellationToken,
    ) {
        let Some(spec) = &self.cluster.health.probe else {
            return;
        };
        let schedule = &self.cluster.health.schedule;
        for ep in &self.cluster.members().endpoints {
            let due = *self
                .next_probe
                .entry(Arc::clone(&ep.id))
                // Spread the first probes over one interval so a fleet never probes in lockstep.
                .or_insert_with(|| now + ActiveHealth::first_delay(schedule, &mut self.rng));
            if due > now || self.probing.contains(&ep.id) {
                continue;
            }
            self.probing.insert(Arc::clone(&ep.id));
            let (cluster, ep, spec, tx) = (
                Arc::clone(&self.cluster),
                Arc::clone(ep),
                spec.clone(),
                tx.clone(),
            );
            let stop = stop.clone();
            tokio::spawn(async move {
                tokio::select! {
                    () = stop.cancelled() => {}
                    r = probe::probe(&cluster, &ep, &spec) => { let _ = tx.send((Arc::clone(&ep.id), r)); }
                }
            });
        }
    }

    fn on_probe(&mut self, id: &Arc<str>, result: &Result<(), String>, now: Instant) {
        self.probing.remove(id);
        let members = self.cluster.members();
        let Some(ep) = members.endpoints.iter().find(|e| e.id == *id) else {
            return;
        };
        let schedule = &self.cluster.health.schedule;
        // Idle means the whole cluster had no traffic since this endpoint's last probe (an
        // endpoint out of rotation gets none, yet its cluster is busy).
        let finished: u64 = members
            .endpoints
            .iter()
            .map(|e| e.stats.successes() + e.stats.failures())
            .sum();
        let had_traffic = self
            .seen_requests
            .insert(Arc::clone(id), finished)
            .is_none_or(|before| before != finished);
        let (transition, delay) = {
            let mut v = ep.health.verdict();
            let Some(active) = v.active.as_mut() else {
                return;
            };
            let t = active.on_probe(result.is_ok(), schedule, now);
            let delay = active.next_delay(schedule, had_traffic, &mut self.rng);
            v.last_probe_detail = result.as_ref().err().cloned();
            (t, delay)
        };
        self.next_probe.insert(Arc::clone(id), now + delay);
        tracing::debug!(cluster = %self.cluster.name, endpoint = %ep.id, result = ?result, next_in = ?delay, "probe");
        if let Some(t) = transition {
            let to = t.to.as_str();
            metrics::health_transition(&self.cluster.name, to);
            match (result, t.to) {
                (Err(detail), _) => {
                    tracing::warn!(cluster = %self.cluster.name, endpoint = %ep.id, from = t.from.as_str(), to, probe = %detail, "active check: endpoint unhealthy");
                }
                (Ok(()), _) => {
                    tracing::info!(cluster = %self.cluster.name, endpoint = %ep.id, from = t.from.as_str(), to, "active check: endpoint healthy");
                }
            }
        }
        if result.is_ok()
            && self.cluster.health.uneject_on_pass
            && transition.is_some_and(|t| t.to == Status::Healthy)
            && ep.health.outlier().uneject(now)
        {
            metrics::outlier_restored(&self.cluster.name);
            tracing::info!(cluster = %self.cluster.name, endpoint = %ep.id, "active check passed: ejection lifted");
        }
    }

    /// Judges outliers when due, refreshes admissions and slow start, replans when anything
    /// changed; returns when to wake next.
    fn tick(&mut self, now: Instant) -> Instant {
        let members = self.cluster.members();
        if now >= self.next_decay {
            self.cluster.latency.decay();
            self.next_decay = now + LATENCY_DECAY;
        }
        if let Some(cfg) = &self.cluster.health.outlier
            && (self.judge_now || now >= self.next_judge)
        {
            self.judge_now = false;
            self.next_judge = now + cfg.interval;
            let events = {
                // Locked in list order; the request path holds at most one of these at a time.
                let mut guards: Vec<_> = members
                    .endpoints
                    .iter()
                    .map(|e| e.health.outlier())
                    .collect();
                outlier::evaluate(cfg, &mut guards, now, &mut self.rng)
            };
            for e in events {
                self.report(&members.endpoints, &e, now);
            }
        }

        let slow = self.cluster.health.slow_start;
        let mut changed = false;
        let mut ramping = false;
        for ep in &members.endpoints {
            let admits = ep.health.admits();
            let mut v = ep.health.verdict();
            if admits != v.admitted {
                changed = true;
                v.admitted = admits;
                // An endpoint coming back ramps up; one present from the start does not.
                v.ramp_from = admits.then_some(now);
            }
            let full = ep.weight.max(1).saturating_mul(WEIGHT_SCALE);
            let weight = match v.ramp_from {
                Some(since) if slow.ramping(since, now) => {
                    ramping = true;
                    slow.weight(full, since, now)
                }
                _ => full,
            };
            if weight != ep.effective_weight() {
                ep.set_effective_weight(weight);
                // Round robin and hashing snapshot weights when built.
                changed = true;
            }
        }
        if changed {
            self.cluster.replan();
        }

        let mut wake = self.next_judge.min(self.next_decay);
        if self.cluster.health.outlier.is_none() {
            wake = self.next_decay;
        }
        if ramping {
            wake = wake.min(now + RAMP_STEP);
        }
        for (id, at) in &self.next_probe {
            if !self.probing.contains(id) {
                wake = wake.min(*at);
            }
        }
        // An endpoint not yet scheduled (new after DNS) gets its first probe time next round.
        if self.cluster.health.probe.is_some()
            && members
                .endpoints
                .iter()
                .any(|e| !self.next_probe.contains_key(&e.id))
        {
            wake = now;
        }
        wake.max(now)
    }

    fn report(&self, endpoints: &[Arc<Endpoint>], event: &Event, now: Instant) {
        let name = &self.cluster.name;
        match event {
            Event::Ejected { index, ejection } => {
                let id = endpoints.get(*index).map_or("?", |e| &*e.id);
                metrics::outlier_ejected(name, ejection.reason.as_str());
                tracing::warn!(cluster = %name, endpoint = %id, reason = ejection.reason.as_str(), times = ejection.count, for_s = ejection.until.saturating_duration_since(now).as_secs_f64(), "outlier ejected");
            }
            Event::Restored { index } => {
                let id = endpoints.get(*index).map_or("?", |e| &*e.id);
                metrics::outlier_restored(name);
                tracing::info!(cluster = %name, endpoint = %id, "ejection over: endpoint back in rotation");
            }
        }
    }
}
