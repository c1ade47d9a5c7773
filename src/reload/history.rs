//! The history of config changes and the last known good config, kept in the reload state directory.
//!
//! Owns: the entries (applied, refused and rolled-back changes with their sequence numbers, times,
//! triggers and problems), the stored TOML texts of applied versions (so a rollback or a diff can
//! find them), the last known good config, and the files that hold all of this:
//! `history.json`, `configs/<version>.toml` and `last-good.json`.
//!
//! Does not own: deciding what to apply, when a config counts as good, when to roll back (the
//! reload pipeline and `bake`), parsing or versioning configs (`config`), or how the admin API shows
//! the history. It is synchronous std::fs on purpose: the reload task calls it rarely, under its
//! lock, and every write must be on disk before the change is reported.
//!
//! Config texts carry secrets (the admin token), so files are created 0600 and directories 0700,
//! and a version is checked before it becomes part of a file name.

use std::collections::HashMap;
use std::ffi::OsString;
use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// How many entries are kept when the config does not say.
pub const DEFAULT_KEEP: usize = 20;

const HISTORY_FILE: &str = "history.json";
const LAST_GOOD_FILE: &str = "last-good.json";
const CONFIGS_DIR: &str = "configs";
/// Longest accepted version string (a full SHA-256 in hex).
const MAX_VERSION_LEN: usize = 64;

/// What asked for a change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Trigger {
    /// The config the process started with.
    Startup,
    /// The watched config file changed.
    File,
    /// SIGHUP.
    Signal,
    /// `POST /config` (or similar) on the admin API.
    Api,
    /// A rollback someone asked for.
    Rollback,
    /// A rollback the bake watch decided on.
    AutoRollback,
    /// Started from the last known good config because the file was invalid.
    LastGood,
}

impl Trigger {
    /// The serde name (`"auto_rollback"`), for logs and metrics labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Startup => "startup",
            Trigger::File => "file",
            Trigger::Signal => "signal",
            Trigger::Api => "api",
            Trigger::Rollback => "rollback",
            Trigger::AutoRollback => "auto_rollback",
            Trigger::LastGood => "last_good",
        }
    }
}

/// What became of a change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// It is (or was) running.
    Applied,
    /// It was refused; `problems` says why. Nothing changed.
    Rejected,
    /// It applied and was later undone; `reason` says why.
    RolledBack,
}

impl Outcome {
    /// The serde name (`"rolled_back"`), for logs and metrics labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Applied => "applied",
            Outcome::Rejected => "rejected",
            Outcome::RolledBack => "rolled_back",
        }
    }

    /// Applied and rolled-back changes ran, so their texts are kept for rollback and diff.
    fn holds_text(self) -> bool {
        matches!(self, Outcome::Applied | Outcome::RolledBack)
    }
}

/// One change in the history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// 1, 2, 3 ... continuing across restarts.
    pub seq: u64,
    /// The config's version; `""` for a config that did not even parse.
    pub version: String,
    /// When it was recorded, RFC 3339 UTC with milliseconds.
    pub at: String,
    /// The same instant, milliseconds since the Unix epoch.
    pub unix_ms: u64,
    pub trigger: Trigger,
    pub outcome: Outcome,
    /// The version that was running before; `None` at startup.
    #[serde(default)]
    pub previous: Option<String>,
    /// `"path: message"` lines, for rejected changes.
    #[serde(default)]
    pub problems: Vec<String>,
    /// Why it was rolled back, or what asked for it.
    #[serde(default)]
    pub reason: Option<String>,
}

/// The arguments of [`History::record`].
#[derive(Debug, Clone)]
pub struct Record<'a> {
    pub version: &'a str,
    pub trigger: Trigger,
    pub outcome: Outcome,
    pub previous: Option<&'a str>,
    pub problems: Vec<String>,
    pub reason: Option<String>,
    /// The config's TOML source; stored only for [`Outcome::Applied`].
    pub text: Option<&'a str>,
}

impl<'a> Record<'a> {
    /// An applied change and its TOML source.
    pub fn applied(version: &'a str, trigger: Trigger, text: &'a str) -> Self {
        Self {
            version,
            trigger,
            outcome: Outcome::Applied,
            previous: None,
            problems: Vec::new(),
            reason: None,
            text: Some(text),
        }
    }

    /// A refused change and its problems (`version` may be `""`).
    pub fn rejected(version: &'a str, trigger: Trigger, problems: Vec<String>) -> Self {
        Self {
            version,
            trigger,
            outcome: Outcome::Rejected,
            previous: None,
            problems,
            reason: None,
            text: None,
        }
    }

    /// Sets the version that was running before.
    pub fn previous(mut self, previous: Option<&'a str>) -> Self {
        self.previous = previous;
        self
    }

    /// Sets why the change happened.
    pub fn reason(mut self, reason: impl Into<String>) -> Self {
        self.reason = Some(reason.into());
        self
    }
}

/// The last config that applied and served, enough to start from it again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastGood {
    pub version: String,
    /// The directory the config's relative paths (certificates, files) resolve from.
    pub base_dir: PathBuf,
    /// The TOML source.
    pub text: String,
}

/// `history.json`. `last_seq` is kept apart from the entries so numbering continues even when
/// every entry has been trimmed away.
#[derive(Deserialize)]
struct Stored {
    last_seq: u64,
    entries: Vec<Entry>,
}

#[derive(Serialize)]
struct StoredRef<'a> {
    last_seq: u64,
    entries: &'a [Entry],
}

/// The history store. Not thread-safe by itself: the reload task owns it under its lock.
#[derive(Debug)]
pub struct History {
    /// `None`: memory only.
    dir: Option<PathBuf>,
    /// Entries kept (0 keeps none, but numbering still advances).
    keep: usize,
    last_seq: u64,
    /// Oldest first, seqs strictly increasing.
    entries: Vec<Entry>,
    /// Texts of applied versions referenced by `entries`; at most `keep` of them. After a restart
    /// this starts empty and `text_of` falls back to the disk.
    texts: HashMap<String, String>,
    last_good: Option<LastGood>,
}

impl History {
    /// Opens the history in `dir` (created 0700 if missing), or in memory only when `dir` is
    /// `None`. Nothing here is fatal: a missing, corrupt or unreadable file starts that part empty
    /// and adds a warning for the caller to log.
    pub fn open(dir: Option<&Path>, keep: usize) -> (History, Vec<String>) {
        let mut history = History {
            dir: dir.map(Path::to_path_buf),
            keep,
            last_seq: 0,
            entries: Vec::new(),
            texts: HashMap::new(),
            last_good: None,
        };
        let mut warnings = Vec::new();
        let Some(dir) = dir else {
            return (history, warnings);
        };

        match ensure_dir(dir) {
            // Create failures are retried by every write, so the history may still persist later.
            Err(e) => warnings.push(format!("reload state dir {}: {e}", dir.display())),
            Ok(()) => {
                if let Ok(meta) = fs::metadata(dir) {
                    let mode = meta.permissions().mode() & 0o777;
                    if mode & 0o077 != 0 {
                        warnings.push(format!(
                            "reload state dir {} has mode {mode:o}: other users may read stored \
                             configs (they contain secrets); 0700 is recommended",
                            dir.display()
                        ));
                    }
                }
            }
        }

        let path = dir.join(HISTORY_FILE);
        match load_history(&path) {
            Ok(None) => {}
            Ok(Some(mut stored)) => {
                // A hand-edited file must not break the strictly increasing seqs.
                stored.entries.sort_by_key(|e| e.seq);
                stored.entries.dedup_by_key(|e| e.seq);
                let newest = stored.entries.last().map_or(0, |e| e.seq);
                history.last_seq = stored.last_seq.max(newest);
                history.entries = stored.entries;
                history.trim();
            }
            Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                // Keep the evidence: the next write would otherwise overwrite it.
                let mut aside = path.clone().into_os_string();
                aside.push(".corrupt");
                let kept = match fs::rename(&path, &aside) {
                    Ok(()) => format!(" (kept as {})", Path::new(&aside).display()),
                    Err(_) => String::new(),
                };
                warnings.push(format!(
                    "{} is corrupt ({e}); starting with an empty history{kept}",
                    path.display()
                ));
            }
            Err(e) => warnings.push(format!(
                "cannot read {} ({e}); starting with an empty history",
                path.display()
            )),
        }

        match Self::read_last_good(dir) {
            Ok(last_good) => history.last_good = last_good,
            Err(e) => warnings.push(format!(
                "cannot use {} ({e}); there is no last known good config",
                dir.join(LAST_GOOD_FILE).display()
            )),
        }

        (history, warnings)
    }

    /// Appends an entry numbered `last + 1` at `now`, stores the text of an applied version,
    /// trims to `keep` entries (dropping texts no entry references any more, except the last good
    /// one) and writes it all to disk atomically.
    ///
    /// Errors: `InvalidInput` when a text would be stored under an invalid version (nothing is
    /// recorded then); any other error is a failed write, and the in-memory history is already
    /// updated (the caller logs it; the entry is `entries().last()` unless `keep` is 0).
    pub fn record(&mut self, now: SystemTime, rec: Record<'_>) -> io::Result<Entry> {
        let text = match (rec.outcome, rec.text) {
            (Outcome::Applied, Some(text)) => Some(text),
            _ => None,
        };
        if text.is_some() && !valid_version(rec.version) {
            return Err(invalid_version(rec.version));
        }

        self.last_seq = self.last_seq.saturating_add(1);
        let unix_ms = now
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        let entry = Entry {
            seq: self.last_seq,
            version: rec.version.to_owned(),
            at: crate::access_log::timestamp(now),
            unix_ms,
            trigger: rec.trigger,
            outcome: rec.outcome,
            previous: rec.previous.map(str::to_owned),
            problems: rec.problems,
            reason: rec.reason,
        };
        self.entries.push(entry.clone());
        if let Some(text) = text {
            self.texts.insert(entry.version.clone(), text.to_owned());
        }
        self.trim();

        let Some(dir) = self.dir.as_deref() else {
            return Ok(entry);
        };
        let mut first_err = None;
        if let Some(text) = text {
            // With keep = 0 the entry is already gone, and so is the reason to store its text.
            if self.texts.contains_key(&entry.version) {
                let configs = dir.join(CONFIGS_DIR);
                let written = ensure_dir(&configs).and_then(|()| {
                    write_atomic(&config_path(&configs, &entry.version), text.as_bytes())
                });
                note(&mut first_err, written);
            }
        }
        note(&mut first_err, self.persist_entries(dir));
        note(&mut first_err, self.prune_disk(dir));
        match first_err {
            Some(e) => Err(e),
            None => Ok(entry),
        }
    }

    /// Marks the entry `seq` as rolled back, with why, and persists it. `NotFound` when no kept
    /// entry has that seq, `InvalidInput` when it was rejected (it never ran, so cannot be undone).
    pub fn mark_rolled_back(&mut self, seq: u64, reason: &str) -> io::Result<()> {
        let Some(entry) = self.entries.iter_mut().find(|e| e.seq == seq) else {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("no history entry {seq}"),
            ));
        };
        if entry.outcome == Outcome::Rejected {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("history entry {seq} was rejected, not applied"),
            ));
        }
        entry.outcome = Outcome::RolledBack;
        entry.reason = Some(reason.to_owned());
        match self.dir.as_deref() {
            Some(dir) => self.persist_entries(dir),
            None => Ok(()),
        }
    }

    /// The kept entries, oldest first.
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// How many entries are kept.
    pub fn keep(&self) -> usize {
        self.keep
    }

    /// The stored TOML text of an applied version (memory, the last good, or the disk), for
    /// rollback and diff. `None` for unknown or invalid versions.
    pub fn text_of(&self, version: &str) -> Option<String> {
        if !valid_version(version) {
            return None;
        }
        if let Some(text) = self.texts.get(version) {
            return Some(text.clone());
        }
        if let Some(last_good) = self.last_good.as_ref().filter(|l| l.version == version) {
            return Some(last_good.text.clone());
        }
        let dir = self.dir.as_deref()?;
        fs::read_to_string(config_path(&dir.join(CONFIGS_DIR), version)).ok()
    }

    /// The newest applied (and not rolled back) entry whose version is not `current`: where a
    /// rollback without a version goes.
    pub fn previous_applied(&self, current: &str) -> Option<&Entry> {
        self.entries.iter().rev().find(|e| {
            e.outcome == Outcome::Applied && e.version != current && !e.version.is_empty()
        })
    }

    /// Remembers `version` as the last known good config and writes `last-good.json` atomically.
    /// `InvalidInput` for an invalid version (nothing changes); any other error is a failed write,
    /// and the in-memory last good is already updated.
    pub fn save_last_good(&mut self, version: &str, base_dir: &Path, text: &str) -> io::Result<()> {
        if !valid_version(version) {
            return Err(invalid_version(version));
        }
        let last_good = LastGood {
            version: version.to_owned(),
            base_dir: base_dir.to_path_buf(),
            text: text.to_owned(),
        };
        let bytes = self
            .dir
            .as_ref()
            .map(|_| serde_json::to_vec_pretty(&last_good));
        self.last_good = Some(last_good);
        let (Some(dir), Some(bytes)) = (self.dir.as_deref(), bytes) else {
            return Ok(());
        };
        let bytes = bytes.map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        let mut first_err = None;
        note(
            &mut first_err,
            ensure_dir(dir).and_then(|()| write_atomic(&dir.join(LAST_GOOD_FILE), &bytes)),
        );
        // The previous last good may now be referenced by nothing.
        note(&mut first_err, self.prune_disk(dir));
        first_err.map_or(Ok(()), Err)
    }

    /// The last known good config, if any.
    pub fn last_good(&self) -> Option<LastGood> {
        self.last_good.clone()
    }

    /// Reads `last-good.json` from `dir` without opening a history, for
    /// `palisade run --fallback-last-good` before anything runs. `Ok(None)` when there is none;
    /// `InvalidData` when it is corrupt.
    pub fn read_last_good(dir: &Path) -> io::Result<Option<LastGood>> {
        let bytes = match fs::read(dir.join(LAST_GOOD_FILE)) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let last_good: LastGood = serde_json::from_slice(&bytes)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        if !valid_version(&last_good.version) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "last good config has an invalid version",
            ));
        }
        Ok(Some(last_good))
    }

    /// Drops the oldest entries beyond `keep` and the texts no kept entry references.
    fn trim(&mut self) {
        let excess = self.entries.len().saturating_sub(self.keep);
        if excess > 0 {
            self.entries.drain(..excess);
        }
        let entries = &self.entries;
        self.texts.retain(|version, _| {
            entries
                .iter()
                .any(|e| e.outcome.holds_text() && e.version == *version)
        });
    }

    fn persist_entries(&self, dir: &Path) -> io::Result<()> {
        let bytes = serde_json::to_vec_pretty(&StoredRef {
            last_seq: self.last_seq,
            entries: &self.entries,
        })
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        ensure_dir(dir)?;
        write_atomic(&dir.join(HISTORY_FILE), &bytes)
    }

    /// Deletes stored texts that neither a kept entry nor the last good references. Only names
    /// this module writes (`<valid version>.toml`) are touched.
    fn prune_disk(&self, dir: &Path) -> io::Result<()> {
        let configs = dir.join(CONFIGS_DIR);
        let listing = match fs::read_dir(&configs) {
            Ok(listing) => listing,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        let last_good = self.last_good.as_ref().map(|l| l.version.as_str());
        for item in listing {
            let item = item?;
            let name = item.file_name();
            let Some(version) = name.to_str().and_then(|n| n.strip_suffix(".toml")) else {
                continue;
            };
            if !valid_version(version) || last_good == Some(version) {
                continue;
            }
            let referenced = self
                .entries
                .iter()
                .any(|e| e.outcome.holds_text() && e.version == version);
            if !referenced {
                match fs::remove_file(item.path()) {
                    Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                    _ => {}
                }
            }
        }
        Ok(())
    }
}

/// A version may become a file name: only lowercase hex, 1 to 64 characters, so it can never
/// name a path outside the state directory.
pub fn valid_version(version: &str) -> bool {
    (1..=MAX_VERSION_LEN).contains(&version.len())
        && version
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn invalid_version(version: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("invalid config version {version:?} (expected 1 to 64 lowercase hex digits)"),
    )
}

fn config_path(configs: &Path, version: &str) -> PathBuf {
    configs.join(format!("{version}.toml"))
}

/// Keeps the first error but lets the remaining writes run: a failed text write should not also
/// lose the history entry.
fn note(first: &mut Option<io::Error>, result: io::Result<()>) {
    if let Err(e) = result {
        first.get_or_insert(e);
    }
}

fn ensure_dir(dir: &Path) -> io::Result<()> {
    DirBuilder::new().recursive(true).mode(0o700).create(dir)
}

fn load_history(path: &Path) -> io::Result<Option<Stored>> {
    let bytes = match fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// Write to a temporary file, fsync, rename over `path`, fsync the directory: a crash leaves
/// either the old file or the new one, never a torn one. The pid in the temporary name keeps two
/// processes sharing the directory (binary upgrade) from writing into each other's file.
fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let parent = path.parent().unwrap_or_else(|| Path::new("."));
    let Some(name) = path.file_name() else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "atomic write needs a file name",
        ));
    };
    let mut tmp_name = OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".{}.tmp", std::process::id()));
    let tmp = parent.join(tmp_name);
    // A leftover from a crash may have other permissions; `mode` only applies on creation.
    match fs::remove_file(&tmp) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        fs::rename(&tmp, path)?;
        File::open(parent)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::time::Duration;

    fn t(secs: u64) -> SystemTime {
        // 2026-11-22T02:40:00Z
        UNIX_EPOCH + Duration::from_secs(1_795_315_200 + secs)
    }

    fn applied<'a>(h: &mut History, v: &'a str, text: &'a str) -> Entry {
        h.record(t(0), Record::applied(v, Trigger::File, text))
            .unwrap()
    }

    fn config_files(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = match fs::read_dir(dir.join(CONFIGS_DIR)) {
            Ok(listing) => listing
                .map(|e| e.unwrap().file_name().into_string().unwrap())
                .collect(),
            Err(_) => Vec::new(),
        };
        names.sort();
        names
    }

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn entry_fields_and_serde_names() {
        let (mut h, w) = History::open(None, 5);
        assert!(w.is_empty());
        let e = h
            .record(
                UNIX_EPOCH + Duration::from_millis(1_795_315_200_123),
                Record::rejected("", Trigger::AutoRollback, vec!["routes.a: bad".into()])
                    .previous(Some("abc"))
                    .reason("asked"),
            )
            .unwrap();
        assert_eq!(e.seq, 1);
        assert_eq!(e.at, "2026-11-22T02:40:00.123Z");
        assert_eq!(e.unix_ms, 1_795_315_200_123);
        assert_eq!(e.previous.as_deref(), Some("abc"));
        assert_eq!(e.problems, vec!["routes.a: bad".to_owned()]);
        let json = serde_json::to_string(&e).unwrap();
        assert!(json.contains(r#""trigger":"auto_rollback""#), "{json}");
        assert!(json.contains(r#""outcome":"rejected""#), "{json}");
        assert_eq!(Trigger::LastGood.as_str(), "last_good");
        assert_eq!(Outcome::RolledBack.as_str(), "rolled_back");
        for tr in [
            Trigger::Startup,
            Trigger::File,
            Trigger::Signal,
            Trigger::Api,
            Trigger::Rollback,
            Trigger::AutoRollback,
            Trigger::LastGood,
        ] {
            assert_eq!(
                serde_json::to_string(&tr).unwrap(),
                format!("\"{}\"", tr.as_str())
            );
        }
        for o in [Outcome::Applied, Outcome::Rejected, Outcome::RolledBack] {
            assert_eq!(
                serde_json::to_string(&o).unwrap(),
                format!("\"{}\"", o.as_str())
            );
        }
    }

    #[test]
    fn rejected_entries_store_no_text() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let (mut h, _) = History::open(Some(&state), 5);
        let mut rec = Record::rejected("abc", Trigger::Api, vec!["x: y".into()]);
        rec.text = Some("listen = 1");
        h.record(t(0), rec).unwrap();
        assert_eq!(h.text_of("abc"), None);
        assert!(config_files(&state).is_empty());
    }

    #[test]
    fn seq_continues_across_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let (mut h, w) = History::open(Some(&state), 5);
        assert!(w.is_empty(), "{w:?}");
        assert_eq!(applied(&mut h, "aa", "a").seq, 1);
        assert_eq!(applied(&mut h, "bb", "b").seq, 2);
        drop(h);
        let (mut h, w) = History::open(Some(&state), 5);
        assert!(w.is_empty(), "{w:?}");
        assert_eq!(h.entries().len(), 2);
        assert_eq!(applied(&mut h, "cc", "c").seq, 3);
    }

    #[test]
    fn seq_continues_even_when_keep_is_zero() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let (mut h, _) = History::open(Some(&state), 0);
        assert_eq!(applied(&mut h, "aa", "a").seq, 1);
        assert!(h.entries().is_empty());
        assert!(config_files(&state).is_empty());
        let (mut h, _) = History::open(Some(&state), 0);
        assert_eq!(applied(&mut h, "aa", "a").seq, 2);
    }

    #[test]
    fn trims_to_keep_and_prunes_texts() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let (mut h, _) = History::open(Some(&state), 2);
        applied(&mut h, "01", "one");
        applied(&mut h, "02", "two");
        assert_eq!(config_files(&state), ["01.toml", "02.toml"]);
        applied(&mut h, "03", "three");
        let seqs: Vec<u64> = h.entries().iter().map(|e| e.seq).collect();
        assert_eq!(seqs, [2, 3]);
        assert_eq!(config_files(&state), ["02.toml", "03.toml"]);
        assert_eq!(h.text_of("01"), None);
        assert_eq!(h.texts.len(), 2);
        // A rejected change still pushes old entries (and their texts) out.
        h.record(t(1), Record::rejected("", Trigger::File, vec![]))
            .unwrap();
        assert_eq!(config_files(&state), ["03.toml"]);
        assert_eq!(h.text_of("02"), None);
        assert_eq!(h.text_of("03").as_deref(), Some("three"));
    }

    #[test]
    fn pruning_leaves_foreign_files_alone() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let (mut h, _) = History::open(Some(&state), 1);
        applied(&mut h, "01", "one");
        fs::write(state.join(CONFIGS_DIR).join("notes.txt"), "x").unwrap();
        fs::write(state.join(CONFIGS_DIR).join("Upper.toml"), "x").unwrap();
        applied(&mut h, "02", "two");
        assert_eq!(config_files(&state), ["02.toml", "Upper.toml", "notes.txt"]);
    }

    #[test]
    fn open_trims_when_keep_shrank() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let (mut h, _) = History::open(Some(&state), 5);
        for v in ["01", "02", "03", "04"] {
            applied(&mut h, v, v);
        }
        let (mut h, _) = History::open(Some(&state), 2);
        let seqs: Vec<u64> = h.entries().iter().map(|e| e.seq).collect();
        assert_eq!(seqs, [3, 4]);
        assert_eq!(applied(&mut h, "05", "5").seq, 5);
        assert_eq!(config_files(&state), ["04.toml", "05.toml"]);
    }

    #[test]
    fn text_of_after_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let (mut h, _) = History::open(Some(&state), 5);
        applied(&mut h, "0a1b", "[admin]\nauth_token = \"s\"\n");
        let (h, _) = History::open(Some(&state), 5);
        assert!(h.texts.is_empty());
        assert_eq!(
            h.text_of("0a1b").as_deref(),
            Some("[admin]\nauth_token = \"s\"\n")
        );
        assert_eq!(h.text_of("0a1c"), None);
    }

    #[test]
    fn previous_applied_skips_rejected_rolled_back_and_current() {
        let (mut h, _) = History::open(None, 10);
        assert!(h.previous_applied("aa").is_none());
        applied(&mut h, "aa", "a");
        let bb = applied(&mut h, "bb", "b");
        h.record(
            t(1),
            Record::rejected("cc", Trigger::File, vec!["x: y".into()]),
        )
        .unwrap();
        h.record(t(1), Record::rejected("", Trigger::File, vec![]))
            .unwrap();
        assert_eq!(h.previous_applied("bb").unwrap().version, "aa");
        assert_eq!(h.previous_applied("aa").unwrap().version, "bb");
        let dd = applied(&mut h, "dd", "d");
        assert_eq!(h.previous_applied("dd").unwrap().seq, bb.seq);
        h.mark_rolled_back(dd.seq, "errors").unwrap();
        applied(&mut h, "bb", "b");
        // dd was undone, so stepping back from bb goes past it to aa.
        assert_eq!(h.previous_applied("bb").unwrap().version, "aa");
        // Its text stays available for a diff.
        assert_eq!(h.text_of("dd").as_deref(), Some("d"));
    }

    #[test]
    fn mark_rolled_back_persists() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let (mut h, _) = History::open(Some(&state), 5);
        let e = applied(&mut h, "aa", "a");
        let r = h
            .record(t(1), Record::rejected("bb", Trigger::Api, vec![]))
            .unwrap();
        h.mark_rolled_back(e.seq, "p99 tripled").unwrap();
        assert_eq!(
            h.mark_rolled_back(99, "x").unwrap_err().kind(),
            io::ErrorKind::NotFound
        );
        assert_eq!(
            h.mark_rolled_back(r.seq, "x").unwrap_err().kind(),
            io::ErrorKind::InvalidInput
        );
        let (h, _) = History::open(Some(&state), 5);
        let first = &h.entries()[0];
        assert_eq!(first.outcome, Outcome::RolledBack);
        assert_eq!(first.reason.as_deref(), Some("p99 tripled"));
        assert_eq!(h.entries()[1].outcome, Outcome::Rejected);
    }

    #[test]
    fn corrupt_history_is_a_warning_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        ensure_dir(&state).unwrap();
        fs::write(state.join(HISTORY_FILE), "{\"last_seq\": 3, \"entr").unwrap();
        let (mut h, w) = History::open(Some(&state), 5);
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(w[0].contains("corrupt"), "{w:?}");
        assert!(h.entries().is_empty());
        assert!(state.join("history.json.corrupt").exists());
        assert_eq!(applied(&mut h, "aa", "a").seq, 1);
        let (h, w) = History::open(Some(&state), 5);
        assert!(w.is_empty(), "{w:?}");
        assert_eq!(h.entries().len(), 1);
    }

    #[test]
    fn corrupt_last_good_is_a_warning() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        ensure_dir(&state).unwrap();
        fs::write(state.join(LAST_GOOD_FILE), "not json").unwrap();
        let (h, w) = History::open(Some(&state), 5);
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(h.last_good().is_none());
        assert_eq!(
            History::read_last_good(&state).unwrap_err().kind(),
            io::ErrorKind::InvalidData
        );
        fs::write(
            state.join(LAST_GOOD_FILE),
            r#"{"version":"../x","base_dir":"/","text":""}"#,
        )
        .unwrap();
        assert!(History::read_last_good(&state).is_err());
    }

    #[test]
    fn last_good_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        assert!(History::read_last_good(&state).unwrap().is_none());
        let (mut h, _) = History::open(Some(&state), 1);
        assert!(h.last_good().is_none());
        applied(&mut h, "aa", "text a");
        h.save_last_good("aa", Path::new("/etc/palisade"), "text a")
            .unwrap();
        let want = LastGood {
            version: "aa".into(),
            base_dir: "/etc/palisade".into(),
            text: "text a".into(),
        };
        assert_eq!(h.last_good().as_ref(), Some(&want));
        // Trimmed out of the history, the last good text is still kept on disk and found.
        applied(&mut h, "bb", "text b");
        assert_eq!(config_files(&state), ["aa.toml", "bb.toml"]);
        assert_eq!(h.text_of("aa").as_deref(), Some("text a"));

        assert_eq!(
            History::read_last_good(&state).unwrap().as_ref(),
            Some(&want)
        );
        let (h2, w) = History::open(Some(&state), 1);
        assert!(w.is_empty(), "{w:?}");
        assert_eq!(h2.last_good().as_ref(), Some(&want));
        assert_eq!(h2.text_of("aa").as_deref(), Some("text a"));

        // A new last good releases the old one's text.
        h.save_last_good("bb", Path::new("/srv"), "text b").unwrap();
        assert_eq!(config_files(&state), ["bb.toml"]);
        assert_eq!(
            History::read_last_good(&state).unwrap().unwrap().version,
            "bb"
        );
    }

    #[test]
    fn file_modes() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("nested").join("state");
        let (mut h, w) = History::open(Some(&state), 5);
        assert!(w.is_empty(), "{w:?}");
        applied(&mut h, "aa", "secret");
        h.save_last_good("aa", dir.path(), "secret").unwrap();
        assert_eq!(mode(&state), 0o700);
        assert_eq!(mode(&state.join(CONFIGS_DIR)), 0o700);
        assert_eq!(mode(&state.join(HISTORY_FILE)), 0o600);
        assert_eq!(mode(&state.join(LAST_GOOD_FILE)), 0o600);
        assert_eq!(mode(&state.join(CONFIGS_DIR).join("aa.toml")), 0o600);
        // No temporary files are left behind.
        let names: Vec<_> = fs::read_dir(&state)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 3, "{names:?}");
    }

    #[test]
    fn an_open_state_dir_is_warned_about() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        fs::create_dir(&state).unwrap();
        fs::set_permissions(&state, fs::Permissions::from_mode(0o755)).unwrap();
        let (_, w) = History::open(Some(&state), 5);
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(w[0].contains("755"), "{w:?}");
    }

    #[test]
    fn bad_versions_are_refused_for_storage() {
        assert!(valid_version("0123456789abcdef"));
        assert!(valid_version(&"f".repeat(64)));
        for bad in ["", "../x", "ABC", "a/b", "a.b", "g1", &"f".repeat(65)] {
            assert!(!valid_version(bad), "{bad:?}");
        }
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let (mut h, _) = History::open(Some(&state), 5);
        let err = h
            .record(t(0), Record::applied("../../evil", Trigger::Api, "x"))
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        assert!(h.entries().is_empty());
        assert!(!dir.path().join("evil.toml").exists());
        assert!(config_files(&state).is_empty());
        assert_eq!(
            h.save_last_good("../x", dir.path(), "x")
                .unwrap_err()
                .kind(),
            io::ErrorKind::InvalidInput
        );
        assert!(h.last_good().is_none());
        fs::write(dir.path().join("x.toml"), "outside").unwrap();
        assert_eq!(h.text_of("../../x"), None);
        // Without a text there is nothing to store, so any version is only data.
        h.record(t(0), Record::rejected("Not Hex", Trigger::Api, vec![]))
            .unwrap();
        assert_eq!(h.entries().len(), 1);
    }

    #[test]
    fn persist_errors_still_update_memory() {
        let dir = tempfile::tempdir().unwrap();
        // A file where the state dir should be: every write fails.
        let state = dir.path().join("state");
        fs::write(&state, "").unwrap();
        let (mut h, w) = History::open(Some(&state), 5);
        assert!(!w.is_empty());
        assert!(
            h.record(t(0), Record::applied("aa", Trigger::File, "a"))
                .is_err()
        );
        assert_eq!(h.entries().len(), 1);
        assert_eq!(h.text_of("aa").as_deref(), Some("a"));
        assert!(h.save_last_good("aa", dir.path(), "a").is_err());
        assert_eq!(h.last_good().unwrap().version, "aa");
    }

    #[test]
    fn memory_only_works_and_writes_nothing() {
        let cwd = std::env::current_dir().unwrap();
        let (mut h, w) = History::open(None, 2);
        assert!(w.is_empty());
        applied(&mut h, "aa", "a");
        applied(&mut h, "bb", "b");
        h.mark_rolled_back(2, "x").unwrap();
        h.save_last_good("aa", Path::new("/"), "a").unwrap();
        applied(&mut h, "cc", "c");
        applied(&mut h, "dd", "d");
        assert_eq!(h.entries().len(), 2);
        assert_eq!(h.text_of("aa").as_deref(), Some("a"), "last good");
        assert_eq!(h.text_of("bb"), None);
        assert_eq!(h.text_of("cc").as_deref(), Some("c"));
        assert_eq!(h.last_good().unwrap().version, "aa");
        for name in [HISTORY_FILE, LAST_GOOD_FILE, CONFIGS_DIR] {
            assert!(!cwd.join(name).exists(), "{name}");
        }
    }

    #[derive(Debug, Clone)]
    enum Op {
        Apply(u8),
        Reject(u8),
        RollBack(usize),
        LastGood(u8),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0u8..6).prop_map(Op::Apply),
            (0u8..6).prop_map(Op::Reject),
            (0usize..8).prop_map(Op::RollBack),
            (0u8..6).prop_map(Op::LastGood),
        ]
    }

    fn run(h: &mut History, ops: &[Op]) -> Result<(), TestCaseError> {
        for (i, op) in ops.iter().enumerate() {
            let now = t(i as u64);
            match op {
                Op::Apply(v) => {
                    let v = format!("{v:02x}");
                    h.record(now, Record::applied(&v, Trigger::File, &v))
                        .unwrap();
                }
                Op::Reject(v) => {
                    let v = format!("{v:02x}");
                    h.record(now, Record::rejected(&v, Trigger::Api, vec![]))
                        .unwrap();
                }
                Op::RollBack(i) => {
                    if let Some(seq) = h.entries().get(*i).map(|e| e.seq) {
                        let _ = h.mark_rolled_back(seq, "x");
                    }
                }
                Op::LastGood(v) => {
                    let v = format!("{v:02x}");
                    h.save_last_good(&v, Path::new("/"), &v).unwrap();
                }
            }
            prop_assert!(h.entries().len() <= h.keep);
            prop_assert!(h.texts.len() <= h.keep);
            prop_assert!(h.entries().windows(2).all(|w| w[0].seq < w[1].seq));
            for e in h.entries() {
                if e.outcome.holds_text() {
                    prop_assert_eq!(h.text_of(&e.version), Some(e.version.clone()));
                }
            }
        }
        Ok(())
    }

    proptest! {
        #[test]
        fn entries_bounded_and_seqs_increase(keep in 0usize..6, ops in proptest::collection::vec(op(), 0..40)) {
            let (mut h, _) = History::open(None, keep);
            run(&mut h, &ops)?;
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        #[test]
        fn disk_matches_memory(keep in 0usize..5, ops in proptest::collection::vec(op(), 0..20)) {
            let dir = tempfile::tempdir().unwrap();
            let state = dir.path().join("state");
            let (mut h, _) = History::open(Some(&state), keep);
            run(&mut h, &ops)?;
            let (reopened, w) = History::open(Some(&state), keep);
            prop_assert!(w.is_empty());
            prop_assert_eq!(reopened.entries(), h.entries());
            prop_assert_eq!(reopened.last_good(), h.last_good());
            // Exactly the referenced texts (plus the last good) are on disk.
            let mut want: Vec<String> = h
                .entries()
                .iter()
                .filter(|e| e.outcome.holds_text())
                .map(|e| e.version.clone())
                .chain(h.last_good().map(|l| l.version).filter(|v| config_files(&state).contains(&format!("{v}.toml"))))
                .map(|v| format!("{v}.toml"))
                .collect();
            want.sort();
            want.dedup();
            prop_assert_eq!(config_files(&state), want);
        }
    }
}
