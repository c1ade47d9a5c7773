//! Starting and stopping a Palisade: compile the config, bind every listener and the admin port,
//! serve, and on shutdown drain in the order load balancers expect (`/ready` → 503, wait
//! `drain_delay`, stop accepting, let in-flight requests finish up to `drain_timeout`).
//!
//! `listeners.rs` keeps the set of listeners in line with the config (at start and on reload);
//! `listener.rs` owns one socket's accept loop and connections; `deadline.rs` the per-connection
//! timer; `handoff.rs` passes the listening sockets to a new binary during an upgrade.

pub mod admission;
pub mod deadline;
pub mod h2_guard;
pub mod handoff;
pub mod listener;
pub mod listeners;
pub mod succession;

use std::{
    collections::{BTreeMap, HashMap},
    net::SocketAddr,
    path::PathBuf,
    sync::Arc,
    time::Duration,
};

use tokio_util::sync::CancellationToken;

use self::listeners::ListenerSet;
use crate::{
    access_log::AccessLog,
    admin,
    config::{ConfigError, Problem, Source},
    reload::{
        Reloader,
        history::{History, Outcome, Record, Trigger},
    },
    snapshot::{self, Shared, State},
};

/// A running proxy.
#[derive(Debug)]
pub struct Running {
    /// Bound address of each listener at start, by name (port 0 in the config becomes the real
    /// port here). After a reload, ask `reloader.listener_addrs()`.
    pub listeners: BTreeMap<String, SocketAddr>,
    pub admin: SocketAddr,
    pub shared: Arc<Shared>,
    pub reloader: Arc<Reloader>,
    /// A duplicate of the admin socket, for a binary upgrade's handoff.
    pub admin_socket: std::os::fd::OwnedFd,
    admin_stop: CancellationToken,
    background: CancellationToken,
}

/// How to start beyond the config itself.
#[derive(Debug, Default)]
pub struct Options {
    /// The file reloads read (SIGHUP, `POST /reload`, the watch). `None`: an embedded config.
    pub config_path: Option<PathBuf>,
    /// Listening sockets handed over by the process being upgraded, by listener name (`admin`
    /// for the admin port).
    pub inherited: HashMap<String, std::net::TcpListener>,
    /// How the config was chosen, for the history (`startup`, or `last_good`).
    pub trigger: Option<Trigger>,
}

/// Compiles `source`, binds everything and starts serving. Any problem (bad config, a port in use,
/// a certificate that does not load) is returned before anything serves.
pub async fn start(source: &Source) -> Result<Running, ConfigError> {
    start_with(source, Options::default()).await
}

/// [`start`], with a config file to reload from and sockets inherited from an upgrade.
pub async fn start_with(source: &Source, mut options: Options) -> Result<Running, ConfigError> {
    crate::tls::install_crypto_provider();
    crate::metrics::init();
    let snapshot = snapshot::compile(source, None).await?;
    let config = Arc::clone(&snapshot.config);
    // Relative log paths resolve like every other path in the file: from the config's directory.
    let mut log_cfg = config.access_log.clone();
    if log_cfg.path != "-" {
        log_cfg.path = source
            .base_dir
            .join(&log_cfg.path)
            .to_string_lossy()
            .into_owned();
    }
    let access_log = AccessLog::open(&log_cfg)
        .map_err(|e| ConfigError::one("access_log.path", format!("cannot open: {e}")))?;

    let mut listeners = ListenerSet::default();
    let prepared = listeners.prepare(&config, &source.base_dir, &mut options.inherited);
    let mut problems = prepared.as_ref().err().cloned().unwrap_or_default();
    let admin_addr: SocketAddr = config
        .admin
        .listen
        .parse()
        .map_err(|_| ConfigError::one("admin.listen", "not an address"))?;
    let inherited_admin = options
        .inherited
        .remove(succession::ADMIN)
        .filter(|s| s.local_addr().is_ok_and(|a| a == admin_addr));
    let admin_sock = match inherited_admin {
        Some(s) => tokio::net::TcpListener::from_std(s),
        None => admin::bind(admin_addr),
    };
    let admin_sock = match admin_sock {
        Ok(s) => Some(s),
        Err(e) => {
            problems.push(Problem {
                path: "admin.listen".into(),
                message: format!("cannot listen on {admin_addr}: {e}"),
            });
            None
        }
    };
    let (Ok(prepared), Some(admin_sock)) = (prepared, admin_sock.filter(|_| problems.is_empty()))
    else {
        return Err(ConfigError { problems });
    };
    // Everything that can fail, or needs a descriptor, happens before the listeners accept: once
    // they do, a flood of connections can take every descriptor (tests/listener.rs does).
    let admin = admin_sock
        .local_addr()
        .map_err(|e| ConfigError::one("admin.listen", e.to_string()))?;
    let admin_socket = std::os::fd::AsFd::as_fd(&admin_sock)
        .try_clone_to_owned()
        .map_err(|e| ConfigError::one("admin.listen", e.to_string()))?;
    let state_dir = (!config.reload.state_dir.is_empty())
        .then(|| source.base_dir.join(&config.reload.state_dir));
    let (mut history, warnings) = History::open(state_dir.as_deref(), config.reload.history);
    for w in warnings {
        tracing::warn!(warning = %w, "config history");
    }

    crate::metrics::config_version(None, &snapshot.version);
    let version = snapshot.version.clone();
    record_start(
        &mut history,
        source,
        &version,
        options.trigger.unwrap_or(Trigger::Startup),
    );
    let shared = Arc::new(Shared::new(snapshot, access_log));
    let bound = listeners.apply(prepared, &shared, config.shutdown.drain_timeout.get());
    let reloader = Reloader::new(
        Arc::clone(&shared),
        source.clone(),
        listeners,
        history,
        options.config_path.clone(),
    );
    let background = CancellationToken::new();
    tokio::spawn(bake_ticker(Arc::clone(&reloader), background.clone()));
    tokio::spawn(crate::overload::observe_loop(
        Arc::clone(&shared),
        background.clone(),
    ));
    if let (Some(path), true) = (&options.config_path, config.reload.watch) {
        tokio::spawn(crate::reload::watch::run(
            Arc::clone(&reloader),
            path.clone(),
            source.text.clone(),
            config.reload.watch_debounce.get(),
            background.clone(),
        ));
    }
    let admin_stop = CancellationToken::new();
    tokio::spawn(admin::serve(
        admin_sock,
        Arc::clone(&shared),
        Arc::clone(&reloader),
        admin_stop.clone(),
    ));
    tracing::info!(address = %admin, config_version = %version, "admin listening; Palisade is live");
    shared.set_state(State::Live);
    Ok(Running {
        listeners: bound,
        admin,
        shared,
        reloader,
        admin_socket,
        admin_stop,
        background,
    })
}

/// The first history entry of this run, and the last known good config.
fn record_start(history: &mut History, source: &Source, version: &str, trigger: Trigger) {
    let previous = history
        .entries()
        .iter()
        .rev()
        .find(|e| e.outcome == Outcome::Applied)
        .map(|e| e.version.clone());
    if let Err(e) = history.record(
        std::time::SystemTime::now(),
        Record {
            version,
            trigger,
            outcome: Outcome::Applied,
            previous: previous.as_deref(),
            problems: Vec::new(),
            reason: None,
            text: Some(&source.text),
        },
    ) {
        tracing::warn!(error = %e, "cannot write the config history");
    }
    if let Err(e) = history.save_last_good(version, &source.base_dir, &source.text) {
        tracing::warn!(error = %e, "cannot save the last known good config");
    }
}

/// Feeds the bake judge once a second.
async fn bake_ticker(reloader: Arc<Reloader>, stop: CancellationToken) {
    let mut every = tokio::time::interval(Duration::from_secs(1));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = every.tick() => reloader.tick(tokio::time::Instant::now().into_std()).await,
        }
    }
}

impl Running {
    pub fn addr(&self, listener: &str) -> Option<SocketAddr> {
        self.listeners.get(listener).copied()
    }

    /// Graceful shutdown: not ready → wait `drain_delay` → stop accepting → drain (each listener
    /// bounded by `drain_timeout`) → stop the admin port.
    pub async fn shutdown(self) {
        self.shared.set_state(State::Draining);
        let drain_delay = self.shared.load().config.shutdown.drain_delay.get();
        tracing::info!(?drain_delay, "draining: /ready now answers 503");
        tokio::time::sleep(drain_delay).await;
        self.background.cancel();
        self.reloader.shutdown_listeners(false).await;
        self.admin_stop.cancel();
        self.shared.load().retire();
        tracing::info!("drained; exiting");
    }

    /// Stops accepting at once (the sockets now belong to an upgraded process), then drains.
    /// The admin loop stops first: the new process answers the shared admin socket, so `/ready`
    /// probes never meet this one's "draining".
    pub async fn hand_off(self) {
        self.admin_stop.cancel();
        self.shared.set_state(State::Draining);
        self.background.cancel();
        self.reloader.shutdown_listeners(true).await;
        self.shared.load().retire();
        tracing::info!("handed over to the new process and drained; exiting");
    }
}
