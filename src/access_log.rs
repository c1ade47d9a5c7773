//! The access log: one JSON line per request, written by a background thread.
//!
//! The request path only serialises a line and hands it to a bounded, lossy queue (tracing-appender's
//! non-blocking writer), so a slow disk or a stalled stdout never stalls a worker; lines dropped under
//! such pressure are counted by tracing-appender. This module owns the line's fields and the writer.

use std::{fs::OpenOptions, io::Write, net::IpAddr, time::SystemTime};

use serde::Serialize;
use tracing_appender::non_blocking::{NonBlocking, NonBlockingBuilder, WorkerGuard};

use crate::config::AccessLogConfig;

/// One request's record. Field names follow what log pipelines expect (see docs/configuration.md).
#[derive(Debug, Default, Serialize)]
pub struct Entry {
    pub ts: String,
    pub request_id: String,
    pub client_ip: Option<IpAddr>,
    pub peer: String,
    pub listener: String,
    pub method: String,
    pub host: String,
    pub path: String,
    pub protocol: &'static str,
    pub status: u16,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub duration_s: f64,
    pub route: Option<String>,
    pub cluster: Option<String>,
    pub upstream: Option<String>,
    pub upstream_duration_s: Option<f64>,
    /// Attempts made upstream (more than 1 after retries); 0 when none was made.
    pub attempts: u32,
    /// Envoy-style response flags, comma-separated; "-" when none.
    pub flags: String,
}

/// Where lines go; `disabled()` writes nothing.
pub struct AccessLog {
    writer: Option<NonBlocking>,
    _guard: Option<WorkerGuard>,
}

impl std::fmt::Debug for AccessLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessLog")
            .field("enabled", &self.writer.is_some())
            .finish()
    }
}

impl AccessLog {
    pub fn disabled() -> Self {
        Self {
            writer: None,
            _guard: None,
        }
    }

    pub fn open(cfg: &AccessLogConfig) -> std::io::Result<Self> {
        if !cfg.enabled {
            return Ok(Self::disabled());
        }
        let builder = NonBlockingBuilder::default()
            .lossy(true)
            .buffered_lines_limit(64 * 1024)
            .thread_name("palisade-access-log");
        let (writer, guard) = if cfg.path == "-" {
            builder.finish(std::io::stdout())
        } else {
            let file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&cfg.path)?;
            builder.finish(file)
        };
        Ok(Self {
            writer: Some(writer),
            _guard: Some(guard),
        })
    }

    pub fn enabled(&self) -> bool {
        self.writer.is_some()
    }

    pub fn write(&self, entry: &Entry) {
        if let Some(w) = &self.writer
            && let Ok(mut line) = serde_json::to_vec(entry)
        {
            line.push(b'\n');
            let mut w = w.clone();
            let _ = w.write_all(&line);
        }
    }
}

/// RFC 3339 UTC with milliseconds.
pub fn timestamp(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_json_lines_to_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("access.log");
        let log = AccessLog::open(&AccessLogConfig {
            enabled: true,
            path: path.to_string_lossy().into_owned(),
        })
        .unwrap();
        log.write(&Entry {
            status: 204,
            method: "GET".into(),
            flags: "-".into(),
            ..Entry::default()
        });
        drop(log); // flushes the background writer
        let text = std::fs::read_to_string(&path).unwrap();
        let v: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
        assert_eq!(v["status"], 204);
        assert_eq!(v["method"], "GET");
    }

    #[test]
    fn disabled_writes_nothing() {
        let log = AccessLog::open(&AccessLogConfig {
            enabled: false,
            path: "/nonexistent/x".into(),
        })
        .unwrap();
        assert!(!log.enabled());
        log.write(&Entry::default());
    }
}
