//! The config file watch: reload when the file, or a certificate, key or CA file it names,
//! changes.
//!
//! It watches directories, not files: editors and `kubectl` replace files by rename, and
//! Kubernetes swaps a ConfigMap's `..data` symlink, which a watch on the file itself never sees.
//! Any event in a watched directory starts a debounce; when the directory has been quiet for
//! `watch_debounce`, the watch hashes the config file and the PEM files it names, and reloads only
//! when that fingerprint differs from the last one it acted on (so touching a file, or an event for
//! an unrelated file in the same directory, does nothing). A slow poll does the same in case the
//! platform drops events (network file systems). A file that is half-written when read is simply
//! refused, and the next event, once it is complete, applies it.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use notify::{RecursiveMode, Watcher as _};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{Reloader, history::Trigger};

/// How often the files are hashed even without events.
const POLL: Duration = Duration::from_secs(10);

/// Runs until `stop`. Without a working watcher (no inotify), the poll alone carries on.
/// `applied`: the text the running config was parsed from, so that an edit made between start-up
/// and this task's first look is seen as a change.
pub async fn run(
    reloader: Arc<Reloader>,
    path: PathBuf,
    applied: String,
    debounce: Duration,
    stop: CancellationToken,
) {
    let (tx, mut rx) = mpsc::unbounded_channel();
    // The file names worth waking for (the config, the PEM files, Kubernetes' `..data` links):
    // other files in the same directories (an access log) and reads (our own fingerprinting opens
    // the files) must not keep the debounce from settling, or wake the watch forever.
    let names: Arc<std::sync::Mutex<BTreeSet<std::ffi::OsString>>> = Arc::default();
    let wanted = Arc::clone(&names);
    let mut watcher = match notify::recommended_watcher(
        move |event: notify::Result<notify::Event>| {
            let Ok(event) = event else { return };
            if matches!(event.kind, notify::EventKind::Access(_)) {
                return;
            }
            let wanted = wanted
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let relevant = event.paths.iter().any(|p| {
                p.file_name()
                    .is_some_and(|n| wanted.contains(n) || n.as_encoded_bytes().starts_with(b".."))
            });
            if relevant {
                let _ = tx.send(());
            }
        },
    ) {
        Ok(w) => Some(w),
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch the config directory; polling every 10s instead");
            None
        }
    };
    let mut watched = BTreeSet::new();
    let mut last = fingerprint_of(&path, applied.into_bytes()).0;
    loop {
        // The set of directories follows the config (certificates may move).
        let (_, files) = fingerprint(&path);
        let dirs: BTreeSet<PathBuf> = files.iter().map(|f| parent(f)).collect();
        *names
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = files
            .iter()
            .filter_map(|f| f.file_name().map(ToOwned::to_owned))
            .collect();
        if let Some(w) = watcher.as_mut() {
            for d in dirs.difference(&watched) {
                if let Err(e) = w.watch(d, RecursiveMode::NonRecursive) {
                    tracing::warn!(dir = %d.display(), error = %e, "cannot watch directory");
                }
            }
            for d in watched.difference(&dirs) {
                let _ = w.unwatch(d);
            }
        }
        watched = dirs;

        tokio::select! {
            () = stop.cancelled() => return,
            Some(()) = rx.recv() => {
                // Debounce: wait until the directory has been quiet for `debounce`.
                loop {
                    tokio::select! {
                        () = stop.cancelled() => return,
                        () = tokio::time::sleep(debounce) => break,
                        Some(()) = rx.recv() => {}
                    }
                }
            }
            () = tokio::time::sleep(POLL) => {}
        }
        let (now, _) = fingerprint(&path);
        if now != last {
            last = now;
            let report = reloader.reload_file(Trigger::File).await;
            tracing::info!(result = report.result, "reload after a file change");
        }
    }
}

/// A hash of the config file and of every certificate, key and CA file it names, and those files'
/// paths (the config's first). Unreadable files hash as empty (a deleted file is a change too).
fn fingerprint(path: &Path) -> (Vec<u8>, BTreeSet<PathBuf>) {
    fingerprint_of(path, std::fs::read(path).unwrap_or_default())
}

/// [`fingerprint`] of the config text `text` (as if read from `path`).
fn fingerprint_of(path: &Path, text: Vec<u8>) -> (Vec<u8>, BTreeSet<PathBuf>) {
    let mut h = Sha256::new();
    let mut files = BTreeSet::new();
    files.insert(path.to_path_buf());
    h.update(&text);
    let parsed = String::from_utf8(text)
        .ok()
        .and_then(|t| crate::config::parse(&t, parent(path)).ok());
    if let Some(source) = parsed {
        let c = &source.config;
        let certs = c
            .listeners
            .values()
            .flat_map(|l| l.tls.iter().flat_map(|t| &t.certificates))
            .flat_map(|c| [&c.cert, &c.key]);
        let cas = c
            .clusters
            .values()
            .filter_map(|c| c.tls.as_ref()?.ca_file.as_ref());
        for f in certs.chain(cas) {
            let p = source.base_dir.join(f);
            h.update(p.as_os_str().as_encoded_bytes());
            h.update(std::fs::read(&p).unwrap_or_default());
            files.insert(p);
        }
    }
    (h.finalize().to_vec(), files)
}

fn parent(p: &Path) -> PathBuf {
    match p.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    }
}
