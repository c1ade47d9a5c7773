//! Zero-downtime binary upgrade, both halves of the process succession.
//!
//! The old process (SIGUSR2 or `POST /upgrade`) offers its listening sockets on a private Unix
//! socket and starts the binary at the path it was started from (which now holds the new build)
//! with `--upgrade-from SOCKET`. The new process takes the sockets (`handoff.rs` owns the
//! transport), starts on them (both processes accept for a moment, which is harmless: each
//! connection is served whole by one of them), waits for its first health checks, and says it is
//! ready. Only then does the old process stop accepting, drain and exit. If anything fails before
//! that, the old process keeps serving and the upgrade is logged as failed: an upgrade can never
//! leave the port without a server, and a connection queued in the shared socket is never lost
//! because the socket itself is never closed.

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    time::{Duration, Instant},
};

use super::{Running, handoff};
use crate::snapshot::Shared;

/// How long the new process may take to connect, and then to become ready.
const HANDOFF_TIMEOUT: Duration = Duration::from_secs(60);
/// The longest the new process waits for its first health checks before it takes over anyway
/// (endpoints still unknown are treated as the config says: admitted until proven otherwise).
const FIRST_CHECKS_TIMEOUT: Duration = Duration::from_secs(10);
/// The name the admin socket travels under.
pub const ADMIN: &str = "admin";

/// What the old process needs to start its successor.
#[derive(Debug, Clone)]
pub struct Succession {
    /// The binary's path as it was started (`/proc/self/exe` would name the replaced file).
    pub exe: PathBuf,
    /// The arguments to start it with, before `--upgrade-from`.
    pub args: Vec<String>,
}

impl Succession {
    /// The running binary's path and the arguments that run it with the same config file. The
    /// path is the one it was started by (`argv[0]`, looked up in `PATH` again if it has no `/`),
    /// not `/proc/self/exe`: a deployment that points a symlink at the new build must start the new
    /// build.
    pub fn current(config: &Path, verbose: u8) -> std::io::Result<Self> {
        let exe = match std::env::args_os().next() {
            Some(argv0) if !argv0.is_empty() => PathBuf::from(argv0),
            _ => std::env::current_exe()?,
        };
        let mut args = vec![
            "run".to_owned(),
            "-c".to_owned(),
            config.to_string_lossy().into_owned(),
        ];
        if verbose > 0 {
            args.push(format!("-{}", "v".repeat(usize::from(verbose))));
        }
        Ok(Self { exe, args })
    }

    /// Starts the new binary and hands the sockets over. `Ok` means the new process serves and
    /// this one must drain and exit; `Err`, that this one goes on serving.
    pub async fn hand_over(&self, running: &Running) -> std::io::Result<()> {
        // An unpredictable name: another user cannot block upgrades by creating it first.
        let sock = std::env::temp_dir().join(format!(
            "palisade-upgrade-{}-{:016x}.sock",
            std::process::id(),
            fastrand::u64(..)
        ));
        let offer = handoff::Offer::bind(&sock)?;
        let mut sockets = running.reloader.listener_sockets().await?;
        sockets.push((ADMIN.to_owned(), running.admin_socket.try_clone()?));
        let mut child = tokio::process::Command::new(&self.exe)
            .args(&self.args)
            .arg("--upgrade-from")
            .arg(&sock)
            .stdin(Stdio::null())
            .kill_on_drop(false)
            .spawn()?;
        tracing::warn!(exe = %self.exe.display(), pid = child.id(), "binary upgrade: new process started");
        let borrowed: Vec<_> = sockets
            .iter()
            .map(|(n, fd)| (n.clone(), std::os::fd::AsFd::as_fd(fd)))
            .collect();
        let result = tokio::select! {
            r = offer.hand_over(&borrowed, HANDOFF_TIMEOUT) => r,
            // The new binary died before it was ready (bad config, crash): say so at once.
            status = child.wait() => Err(std::io::Error::other(format!(
                "the new process exited before it was ready ({})",
                status.map_or_else(|e| e.to_string(), |s| s.to_string())
            ))),
        };
        if result.is_err() {
            // This process goes on serving: a new one that half-started must not serve beside
            // it (nor hold the sockets and the state directory) until someone notices.
            let _ = child.start_kill();
        }
        result
    }
}

/// The new process's side: takes the sockets from `path`.
pub async fn take(path: &Path) -> std::io::Result<handoff::Taken> {
    handoff::take(path, HANDOFF_TIMEOUT).await
}

/// Waits until every endpoint under active health checks has had its first verdict, bounded by
/// [`FIRST_CHECKS_TIMEOUT`], so the new process takes over knowing which upstreams are up.
pub async fn first_checks(shared: &Shared) {
    let deadline = Instant::now() + FIRST_CHECKS_TIMEOUT;
    loop {
        let snapshot = shared.load();
        let pending = snapshot
            .clusters
            .values()
            .flat_map(|c| c.members().endpoints.clone())
            .filter(|e| e.health.state_name() == "unknown")
            .count();
        if pending == 0 {
            return;
        }
        if Instant::now() >= deadline {
            tracing::warn!(
                pending,
                "taking over before every first health check answered"
            );
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
