//! `EndpointHealth`: everything known about one endpoint's health, shared by the request path
//! (which records outcomes) and the cluster's health task (which probes, judges and publishes).
//!
//! The request path touches only the outlier record (one uncontended lock per request) and reads
//! nothing here: whether an endpoint may be picked is decided by the health task, which rebuilds the
//! cluster's routing plan when a verdict changes (`upstream::cluster`). So a request never waits on a
//! health decision, and a decision is never half-applied.

use std::{
    sync::{
        Mutex, MutexGuard, PoisonError,
        atomic::{AtomicU8, Ordering},
    },
    time::{Duration, Instant},
};

use super::{
    active::{ActiveHealth, Status},
    outlier::{EndpointOutlier, Outcome},
};

/// What the operator said about an endpoint through the admin API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum AdminMode {
    /// Health checks and outlier detection decide.
    Auto = 0,
    /// No new requests; those in flight finish. For taking an endpoint out gracefully.
    Drain = 1,
    /// No requests at all, not even in panic mode.
    Down = 2,
}

impl AdminMode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Drain => "drain",
            Self::Down => "down",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "auto" | "up" => Some(Self::Auto),
            "drain" => Some(Self::Drain),
            "down" => Some(Self::Down),
            _ => None,
        }
    }
}

/// The health task's own view of an endpoint, behind one lock nobody on the request path takes.
#[derive(Debug, Clone)]
pub struct Verdict {
    /// Active checks' state; `None` when the cluster has none.
    pub active: Option<ActiveHealth>,
    /// Whether the endpoint could take traffic when the plan was last built.
    pub admitted: bool,
    /// When it last became admitted (slow start ramps from here); `None` for endpoints that were
    /// admitted from the start, which never ramp (like HAProxy, no slow start when the proxy starts).
    pub ramp_from: Option<Instant>,
    /// Last probe outcome worth showing (`"HTTP 503"`, `"connect refused"`, `"timeout"`).
    pub last_probe_detail: Option<String>,
}

#[derive(Debug)]
pub struct EndpointHealth {
    outlier: Mutex<EndpointOutlier>,
    verdict: Mutex<Verdict>,
    admin: AtomicU8,
}

impl EndpointHealth {
    pub fn new(now: Instant, active: bool) -> Self {
        Self {
            outlier: Mutex::new(EndpointOutlier::new(now)),
            verdict: Mutex::new(Verdict {
                active: active.then(|| ActiveHealth::new(now)),
                admitted: true,
                ramp_from: None,
                last_probe_detail: None,
            }),
            admin: AtomicU8::new(AdminMode::Auto as u8),
        }
    }

    /// Records one finished request (never a client abort). True when the health task should judge
    /// the cluster now rather than at its next tick.
    pub fn record(
        &self,
        cfg: &super::outlier::Config,
        outcome: Outcome,
        latency: Duration,
        now: Instant,
    ) -> bool {
        self.outlier().record(cfg, outcome, latency, now)
    }

    /// The outlier record (the health task locks every endpoint's in turn to evaluate a cluster).
    pub fn outlier(&self) -> MutexGuard<'_, EndpointOutlier> {
        // Plain data that no method leaves half-updated: a poisoned lock still holds a usable value.
        self.outlier.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn verdict(&self) -> MutexGuard<'_, Verdict> {
        self.verdict.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn admin(&self) -> AdminMode {
        match self.admin.load(Ordering::Relaxed) {
            1 => AdminMode::Drain,
            2 => AdminMode::Down,
            _ => AdminMode::Auto,
        }
    }

    pub fn set_admin(&self, mode: AdminMode) {
        self.admin.store(mode as u8, Ordering::Relaxed);
    }

    /// Whether the endpoint may take traffic now: not ejected, not failing its active checks, not
    /// taken out by the operator. (`now` decides nothing here: an ejection whose time is up stays
    /// until the health task restores it, so the plan and this answer agree.)
    pub fn admits(&self) -> bool {
        if self.admin() != AdminMode::Auto || self.outlier().is_ejected() {
            return false;
        }
        self.verdict()
            .active
            .as_ref()
            .is_none_or(ActiveHealth::admits)
    }

    /// The state `/clusters` shows in one word.
    pub fn state_name(&self) -> &'static str {
        match self.admin() {
            AdminMode::Drain => return "draining",
            AdminMode::Down => return "down",
            AdminMode::Auto => {}
        }
        if self.outlier().is_ejected() {
            return "ejected";
        }
        match self.verdict().active.as_ref().map(ActiveHealth::status) {
            Some(Status::Unhealthy) => "unhealthy",
            Some(Status::Unknown) => "unknown",
            Some(Status::Healthy) | None => "healthy",
        }
    }
}
