//! Hot reload: read → parse → validate → compile → swap → tell background tasks, one change at a
//! time, whatever asked for it (SIGHUP, the file watch, the admin API, a rollback, the bake
//! judge).
//!
//! This module owns the pipeline and the running config's bookkeeping: the current and previous
//! sources, the history (`history.rs`), the bake after each change (`bake.rs` judges, fed by
//! `traffic.rs`), and the listener set. A change that fails anywhere before the swap leaves
//! everything as it was; after the swap, the old snapshot's background tasks stop and requests in
//! flight finish on it. State worth keeping (endpoint health, ejections, latency, pools) carries
//! over inside `snapshot::compile`, by the endpoints' identity.

pub mod bake;
pub mod diff;
pub mod history;
pub mod traffic;
pub mod watch;

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Instant, SystemTime},
};

use serde::Serialize;
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

use self::{
    bake::{Bake, Judgement, Series},
    diff::ConfigDiff,
    history::{History, Outcome, Record, Trigger},
};
use crate::{
    config::{self, Config, Problem, Source},
    server::listeners::ListenerSet,
    snapshot::{self, Shared},
};

/// What one reload did: the admin API's answer and the log line's fields.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// `applied`; `unchanged` (same version: the files it names, certificates and CA files, were
    /// re-read); `valid` (`POST /config/validate`: it would apply); or `rejected`.
    pub result: &'static str,
    /// The history entry, when one was written.
    pub seq: Option<u64>,
    /// The version of the config offered (absent when it did not parse).
    pub version: Option<String>,
    /// The version running before (and still running, when rejected).
    pub running: String,
    pub problems: Vec<String>,
    /// Accepted, but worth knowing: validation's warnings, and settings that only apply at the
    /// next start.
    pub warnings: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub diff: Option<ConfigDiff>,
}

impl Report {
    /// Anything but `rejected`.
    pub fn ok(&self) -> bool {
        self.result != "rejected"
    }
}

/// Owns the running config and changes it.
pub struct Reloader {
    shared: Arc<Shared>,
    /// The file SIGHUP, `POST /reload` and the watch read; `None` for an embedded config (demo).
    config_path: Option<PathBuf>,
    state: Mutex<State>,
    /// Set by `POST /drain`: the process drains and exits.
    pub drain_requested: CancellationToken,
    /// `POST /upgrade` (SIGUSR2 is the other way): start the new binary and hand over.
    pub upgrade_requested: tokio::sync::Notify,
    /// An upgrade is under way (a second request is refused rather than queued).
    pub upgrading: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for Reloader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reloader")
            .field("config_path", &self.config_path)
            .finish_non_exhaustive()
    }
}

struct State {
    source: Source,
    listeners: ListenerSet,
    history: Store,
    /// The change being watched, if any.
    baking: Option<Baking>,
    /// Once-a-second samples of the traffic counters (the bake's baseline comes from here).
    series: Series,
    /// Set when the listeners stop for good (shutdown, upgrade): no change applies after it, or
    /// a reload would bind them again in a process that is leaving.
    closed: bool,
}

struct Baking {
    bake: Bake,
    /// The history entry of the change.
    seq: u64,
    version: String,
    /// What to go back to.
    previous: Source,
}

impl Reloader {
    pub fn new(
        shared: Arc<Shared>,
        source: Source,
        listeners: ListenerSet,
        history: History,
        config_path: Option<PathBuf>,
    ) -> Arc<Self> {
        Arc::new(Self {
            shared,
            config_path,
            state: Mutex::new(State {
                series: Series::new(Series::capacity_for(
                    &source.config.reload.auto_rollback,
                    std::time::Duration::from_secs(1),
                )),
                source,
                listeners,
                history: Store(Arc::new(std::sync::Mutex::new(history))),
                baking: None,
                closed: false,
            }),
            drain_requested: CancellationToken::new(),
            upgrade_requested: tokio::sync::Notify::new(),
            upgrading: std::sync::atomic::AtomicBool::new(false),
        })
    }

    pub fn config_path(&self) -> Option<&Path> {
        self.config_path.as_deref()
    }

    /// Re-reads the config file and applies it.
    pub async fn reload_file(&self, trigger: Trigger) -> Report {
        let Some(path) = &self.config_path else {
            return self
                .refuse_unparsed(
                    trigger,
                    vec!["this instance runs an embedded config: there is no file to reload; POST /config instead".into()],
                )
                .await;
        };
        match config::load_file(path) {
            Ok(source) => self.apply(source, trigger, None).await,
            Err(e) => self.refuse_unparsed(trigger, lines(&e.problems)).await,
        }
    }

    /// Applies a config given as text (`POST /config`). Relative paths in it resolve like the
    /// file's.
    pub async fn apply_text(&self, text: &str, trigger: Trigger) -> Report {
        match config::parse(text, self.base_dir().await) {
            Ok(source) => self.apply(source, trigger, None).await,
            Err(e) => self.refuse_unparsed(trigger, lines(&e.problems)).await,
        }
    }

    /// Checks a config given as text without applying it (`POST /config/validate`).
    pub async fn check_text(&self, text: &str) -> Report {
        let running = self.shared.load().version.clone();
        let (version, problems, warnings) = match config::parse(text, self.base_dir().await) {
            Ok(source) => {
                let d = config::validate(&source.config, &source.base_dir);
                (
                    Some(config::version_of(&source.config)),
                    lines(&d.errors),
                    lines(&d.warnings),
                )
            }
            Err(e) => (None, lines(&e.problems), Vec::new()),
        };
        Report {
            result: if problems.is_empty() {
                "valid"
            } else {
                "rejected"
            },
            seq: None,
            version,
            running,
            problems,
            warnings,
            diff: None,
        }
    }

    /// Goes back to `to`, or to the version applied before the running one.
    pub async fn rollback(&self, to: Option<&str>) -> Report {
        let mut state = self.state.lock().await;
        let running = self.shared.load().version.clone();
        let target = match to {
            Some(v) => Some(v.to_owned()),
            None => state
                .history
                .read(|h| h.previous_applied(&running).map(|e| e.version.clone())),
        };
        let Some(target) = target else {
            drop(state);
            return self
                .refuse_unparsed(
                    Trigger::Rollback,
                    vec!["no earlier applied version in the history".into()],
                )
                .await;
        };
        let wanted = target.clone();
        let text = state
            .history
            .blocking(move |h| h.text_of(&wanted))
            .await
            .flatten();
        let Some(text) = text else {
            drop(state);
            return self
                .refuse_unparsed(
                    Trigger::Rollback,
                    vec![format!("version {target} is not in the history")],
                )
                .await;
        };
        let base_dir = state.source.base_dir.clone();
        match config::parse(&text, base_dir) {
            Ok(source) => {
                let reason = format!("rollback to {target} requested");
                // Every entry that applied the version being undone (it may have applied more
                // than once): none of them may be a rollback target again.
                let undone: Vec<u64> = state.history.read(|h| {
                    h.entries()
                        .iter()
                        .filter(|e| e.outcome == Outcome::Applied && e.version == running)
                        .map(|e| e.seq)
                        .collect()
                });
                let report = apply_locked(
                    &self.shared,
                    &mut state,
                    source,
                    Trigger::Rollback,
                    Some(reason.clone()),
                )
                .await;
                if report.result == "applied" {
                    metrics::counter!("palisade_config_rollbacks_total", "kind" => "manual")
                        .increment(1);
                    // The undone change leaves the undo stack: the next rollback goes further back.
                    for seq in undone {
                        state.history.mark_rolled_back(seq, reason.clone()).await;
                    }
                }
                report
            }
            Err(e) => {
                drop(state);
                self.refuse_unparsed(Trigger::Rollback, lines(&e.problems))
                    .await
            }
        }
    }

    /// Applies a parsed config.
    pub async fn apply(&self, source: Source, trigger: Trigger, reason: Option<String>) -> Report {
        let mut state = self.state.lock().await;
        apply_locked(&self.shared, &mut state, source, trigger, reason).await
    }

    /// Samples the traffic counters and judges the change being baked; rolls it back when it
    /// regressed. Called once a second.
    pub async fn tick(&self, now: Instant) {
        let mut state = self.state.lock().await;
        let sample = self.shared.traffic.sample();
        state.series.push(now, sample.clone());
        let Some(b) = &state.baking else { return };
        match b.bake.judge(now, &sample) {
            Judgement::Waiting => {}
            Judgement::Passed { quiet } => {
                tracing::info!(version = %b.version, quiet, "config change baked without regression");
                state.baking = None;
                // Only now is it "known good".
                save_last_good(&state).await;
            }
            Judgement::Regressed { reason } => {
                let Some(b) = state.baking.take() else { return };
                tracing::error!(version = %b.version, back_to = %config::version_of(&b.previous.config), %reason, "config change regressed traffic: rolling back");
                let report = apply_locked(
                    &self.shared,
                    &mut state,
                    b.previous,
                    Trigger::AutoRollback,
                    Some(reason.clone()),
                )
                .await;
                if report.ok() {
                    metrics::counter!("palisade_config_rollbacks_total", "kind" => "auto")
                        .increment(1);
                    state.history.mark_rolled_back(b.seq, reason).await;
                } else {
                    tracing::error!(problems = ?report.problems, "automatic rollback failed; the regressed config stays");
                }
            }
        }
    }

    /// The history, oldest first.
    pub async fn history(&self) -> Vec<history::Entry> {
        self.state
            .lock()
            .await
            .history
            .read(|h| h.entries().to_vec())
    }

    /// The diff between two versions of the history (`to` defaults to the running one, `from`
    /// to the one applied before it).
    pub async fn diff(&self, from: Option<&str>, to: Option<&str>) -> Result<ConfigDiff, String> {
        let state = self.state.lock().await;
        let running = self.shared.load();
        let to = to.unwrap_or(&running.version).to_owned();
        let from = match from {
            Some(f) => f.to_owned(),
            None => state
                .history
                .read(|h| {
                    h.previous_applied(&running.version)
                        .map(|e| e.version.clone())
                })
                .ok_or("no earlier applied version in the history")?,
        };
        let base_dir = state.source.base_dir.clone();
        let mut configs = Vec::new();
        for v in [from, to] {
            if v == running.version {
                configs.push((*running.config).clone());
                continue;
            }
            let wanted = v.clone();
            let text = state
                .history
                .blocking(move |h| h.text_of(&wanted))
                .await
                .flatten()
                .ok_or_else(|| format!("version {v} is not in the history"))?;
            let source = config::parse(&text, base_dir.clone())
                .map_err(|e| format!("version {v} no longer parses: {e}"))?;
            configs.push(source.config);
        }
        match &configs[..] {
            [a, b] => Ok(diff::diff(a, b)),
            _ => Err("internal: two configs expected".into()),
        }
    }

    /// Where each listener is bound now.
    pub async fn listener_addrs(&self) -> std::collections::BTreeMap<String, std::net::SocketAddr> {
        self.state.lock().await.listeners.addrs()
    }

    /// The listening sockets as they are now (for a binary upgrade). The descriptors are duplicated,
    /// so they stay valid whatever the listener set does next.
    pub async fn listener_sockets(&self) -> std::io::Result<Vec<(String, std::os::fd::OwnedFd)>> {
        let state = self.state.lock().await;
        state
            .listeners
            .sockets()
            .into_iter()
            .map(|(n, fd)| Ok((n, fd.try_clone_to_owned()?)))
            .collect()
    }

    /// Stops accepting on every listener and waits for their connections to drain (`linger`:
    /// see `ListenerSet::shutdown`).
    pub async fn shutdown_listeners(&self, linger: bool) {
        let mut listeners = {
            let mut state = self.state.lock().await;
            state.closed = true;
            std::mem::take(&mut state.listeners)
        };
        listeners.shutdown(linger).await;
    }

    async fn base_dir(&self) -> PathBuf {
        self.state.lock().await.source.base_dir.clone()
    }

    /// Records a config that never reached validation (unreadable, unparsable, not found).
    async fn refuse_unparsed(&self, trigger: Trigger, problems: Vec<String>) -> Report {
        let mut state = self.state.lock().await;
        let running = self.shared.load().version.clone();
        refused(&mut state, trigger, None, &running, problems, Vec::new()).await
    }
}

/// The pipeline, with the state lock held (one change at a time).
async fn apply_locked(
    shared: &Arc<Shared>,
    state: &mut State,
    source: Source,
    trigger: Trigger,
    reason: Option<String>,
) -> Report {
    let current = shared.load();
    if state.closed {
        return Report {
            result: "rejected",
            seq: None,
            version: Some(config::version_of(&source.config)),
            running: current.version.clone(),
            problems: vec!["Palisade is shutting down: no config change applies now".into()],
            warnings: Vec::new(),
            diff: None,
        };
    }
    let drain_timeout = source.config.shutdown.drain_timeout.get();
    let snapshot = match snapshot::compile(&source, Some(&current)).await {
        Ok(s) => s,
        Err(e) => {
            return refused(
                state,
                trigger,
                Some(config::version_of(&source.config)),
                &current.version,
                lines(&e.problems),
                Vec::new(),
            )
            .await;
        }
    };
    // The version compile computed (the hash of the canonical form is not free at 1,000 routes).
    let version = snapshot.version.clone();
    let unchanged = version == current.version;
    let prepared =
        match state
            .listeners
            .prepare(&source.config, &source.base_dir, &mut HashMap::new())
        {
            Ok(p) => p,
            Err(problems) => {
                snapshot.retire();
                return refused(
                    state,
                    trigger,
                    Some(version),
                    &current.version,
                    lines(&problems),
                    Vec::new(),
                )
                .await;
            }
        };
    let mut warnings = lines(&snapshot.warnings);
    warnings.extend(restart_only(&current.config, &source.config));

    // The point of no return: from here the new config serves.
    let old = shared.swap(snapshot);
    old.retire();
    state.listeners.apply(prepared, shared, drain_timeout);
    if unchanged {
        // Same config: only the files it names can have changed (rotated certificates, CA
        // files), and they were just read again. Not a change for the history or the bake.
        tracing::info!(%version, ?trigger, "config unchanged; certificates and CA files re-read");
        state.source = source;
        return Report {
            result: "unchanged",
            seq: None,
            version: Some(version),
            running: old.version.clone(),
            problems: Vec::new(),
            warnings,
            diff: None,
        };
    }
    let change = diff::diff(&current.config, &source.config);
    crate::metrics::config_version(Some(&old.version), &version);
    metrics::counter!("palisade_config_reloads_total", "result" => "success").increment(1);
    metrics::gauge!("palisade_config_last_reload_success_timestamp_seconds").set(unix_now());

    let seq = {
        let (version, previous, reason, text) = (
            version.clone(),
            old.version.clone(),
            reason.clone(),
            source.text.clone(),
        );
        state
            .history
            .blocking(move |h| {
                h.record(
                    SystemTime::now(),
                    Record {
                        version: &version,
                        trigger,
                        outcome: Outcome::Applied,
                        previous: Some(&previous),
                        problems: Vec::new(),
                        reason,
                        text: Some(&text),
                    },
                )
                .map(|e| e.seq)
                .or_else(|e| {
                    // The entry is in memory even when the disk refused it.
                    tracing::warn!(error = %e, "cannot write the config history");
                    h.entries().last().map(|e| e.seq).ok_or(())
                })
                .ok()
            })
            .await
            .flatten()
    };
    tracing::info!(%version, previous = %old.version, ?trigger, reason = reason.as_deref().unwrap_or("-"), changes = %change.summary(), "config applied");
    for w in &warnings {
        tracing::warn!(warning = %w, "config change applied with a warning");
    }

    let previous = std::mem::replace(&mut state.source, source);
    let auto = &state.source.config.reload.auto_rollback;
    state.baking = match (auto.enabled, trigger, seq) {
        (true, Trigger::File | Trigger::Signal | Trigger::Api, Some(seq)) => {
            let now = Instant::now();
            let at_change = shared.traffic.sample();
            let baseline = state.series.baseline(now, auto.baseline.get(), &at_change);
            Some(Baking {
                bake: Bake::start(auto, now, baseline, at_change),
                seq,
                version: version.clone(),
                previous,
            })
        }
        _ => None,
    };
    // A change under bake becomes the last known good config when it passes (`tick`).
    if state.baking.is_none() {
        save_last_good(state).await;
    }
    Report {
        result: "applied",
        seq,
        version: Some(version),
        running: old.version.clone(),
        problems: Vec::new(),
        warnings,
        diff: Some(change),
    }
}

async fn refused(
    state: &mut State,
    trigger: Trigger,
    version: Option<String>,
    running: &str,
    problems: Vec<String>,
    warnings: Vec<String>,
) -> Report {
    metrics::counter!("palisade_config_reloads_total", "result" => "failure").increment(1);
    metrics::gauge!("palisade_config_last_reload_failure_timestamp_seconds").set(unix_now());
    tracing::warn!(version = version.as_deref().unwrap_or("-"), ?trigger, problems = %problems.join("; "), "config refused; the running config stays");
    let seq = {
        let (v, previous, problems) = (
            version.clone().unwrap_or_default(),
            running.to_owned(),
            problems.clone(),
        );
        state
            .history
            .blocking(move |h| {
                h.record(
                    SystemTime::now(),
                    Record {
                        version: &v,
                        trigger,
                        outcome: Outcome::Rejected,
                        previous: Some(&previous),
                        problems,
                        reason: None,
                        text: None,
                    },
                )
                .map(|e| e.seq)
                .or_else(|e| {
                    // The entry is in memory even when the disk refused it.
                    tracing::warn!(error = %e, "cannot write the config history");
                    h.entries().last().map(|e| e.seq).ok_or(())
                })
                .ok()
            })
            .await
            .flatten()
    };
    Report {
        result: "rejected",
        seq,
        version,
        running: running.to_owned(),
        problems,
        warnings,
        diff: None,
    }
}

/// Records the running config as the last known good one.
async fn save_last_good(state: &State) {
    let source = &state.source;
    let (version, base_dir, text) = (
        config::version_of(&source.config),
        source.base_dir.clone(),
        source.text.clone(),
    );
    state
        .history
        .blocking(move |h| {
            if let Err(e) = h.save_last_good(&version, &base_dir, &text) {
                tracing::warn!(error = %e, "cannot save the last known good config");
            }
        })
        .await;
}

/// The history, behind a lock that blocking threads take: writing it means fsync, and on a busy
/// disk an fsync takes seconds, which must never stall a runtime worker (measured: a reload under
/// load stalled every request for 5 s while the disk was busy with a build).
#[derive(Clone)]
struct Store(Arc<std::sync::Mutex<History>>);

impl Store {
    /// Reads what is in memory (no I/O) on this thread.
    fn read<R>(&self, f: impl FnOnce(&History) -> R) -> R {
        f(&self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner))
    }

    /// Runs `f` (which may read or write files) on a blocking thread; `None` if it panicked.
    async fn blocking<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut History) -> R + Send + 'static,
    ) -> Option<R> {
        let history = Arc::clone(&self.0);
        tokio::task::spawn_blocking(move || {
            f(&mut history
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner))
        })
        .await
        .ok()
    }

    async fn mark_rolled_back(&self, seq: u64, reason: String) {
        self.blocking(move |h| {
            if let Err(e) = h.mark_rolled_back(seq, &reason) {
                tracing::warn!(error = %e, "cannot write the config history");
            }
        })
        .await;
    }
}

/// Settings read once at start: a change to them is accepted but waits for a restart (or an
/// upgrade), and the operator is told so.
fn restart_only(old: &Config, new: &Config) -> Vec<String> {
    let mut w = Vec::new();
    if old.admin.listen != new.admin.listen {
        w.push("admin.listen: the admin listener moves at the next start".to_owned());
    }
    if old.runtime.workers != new.runtime.workers {
        w.push("runtime.workers: the worker count changes at the next start".to_owned());
    }
    if old.access_log != new.access_log {
        w.push("access_log: the access log is reopened at the next start".to_owned());
    }
    if old.log != new.log {
        w.push("log: the log level and format change at the next start".to_owned());
    }
    let (a, b) = (&old.reload, &new.reload);
    if (&a.watch, &a.watch_debounce, &a.state_dir, &a.history)
        != (&b.watch, &b.watch_debounce, &b.state_dir, &b.history)
    {
        w.push(
            "reload: watch, watch_debounce, state_dir and history change at the next start"
                .to_owned(),
        );
    }
    if old.shutdown.drain_timeout != new.shutdown.drain_timeout {
        w.push(
            "shutdown.drain_timeout: listeners that keep running keep the one they started with"
                .to_owned(),
        );
    }
    w
}

fn lines(problems: &[Problem]) -> Vec<String> {
    problems.iter().map(ToString::to_string).collect()
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}
