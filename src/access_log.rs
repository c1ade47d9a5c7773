//! The access log: one JSON line per request, written by a background thread.
//!
//! The request path only serialises a line and hands it to a bounded, lossy queue (tracing-appender's
//! non-blocking writer), so a slow disk or a stalled stdout never stalls a worker; lines dropped under
//! such pressure are counted by tracing-appender. This module owns the line's fields and the writer.

use std::{collections::BTreeMap, fs::OpenOptions, io::Write, net::IpAddr, time::SystemTime};

use http::{HeaderMap, HeaderName};
use serde::{Deserialize, Serialize};
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
    /// The path as routed: without the query (routes never look at it).
    pub path: String,
    /// The request's values of the headers some route of the serving config matches on, so that
    /// `palisade validate --replay` can re-route the line; omitted when there are none (and always
    /// when no route matches on headers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub match_headers: Option<Box<MatchHeaders>>,
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

/// Lowercase header name → its value(s), as logged in `match_headers`.
pub type MatchHeaders = BTreeMap<String, LoggedValues>;

/// One header's values: a plain string in the usual case of one line, an array when the request
/// repeated the header (a route matches if *some* value does, so all are kept). A value that is
/// not UTF-8 is logged lossily (U+FFFD), so it may not replay exactly.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum LoggedValues {
    One(String),
    Many(Vec<String>),
}

impl LoggedValues {
    pub fn as_slice(&self) -> &[String] {
        match self {
            Self::One(v) => std::slice::from_ref(v),
            Self::Many(v) => v,
        }
    }
}

/// The `match_headers` field for a request: the values of `names` it carries. `None` without
/// allocating when `names` is empty (no route matches on headers) or the request has none of them.
pub fn match_headers(headers: &HeaderMap, names: &[HeaderName]) -> Option<Box<MatchHeaders>> {
    let mut out: Option<Box<MatchHeaders>> = None;
    for name in names {
        // Credentials are logged as present, never by value: the log is read by more people
        // than the secrets are meant for (a replay of such a route sees "<redacted>").
        let secret = crate::config::is_credential_header(name.as_str());
        let mut values = headers.get_all(name).iter().map(|v| {
            if secret {
                "<redacted>".to_owned()
            } else {
                String::from_utf8_lossy(v.as_bytes()).into_owned()
            }
        });
        let Some(first) = values.next() else {
            continue;
        };
        let logged = match values.next() {
            None => LoggedValues::One(first),
            Some(second) => LoggedValues::Many([first, second].into_iter().chain(values).collect()),
        };
        out.get_or_insert_with(Box::default)
            .insert(name.as_str().to_owned(), logged);
    }
    out
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
    fn match_headers_keeps_every_value_of_the_named_headers_only() {
        let mut h = HeaderMap::new();
        h.append("x-canary", "1".parse().unwrap());
        h.append("x-tier", "gold".parse().unwrap());
        h.append("x-tier", "beta".parse().unwrap());
        h.append("authorization", "secret".parse().unwrap());
        let names = [
            HeaderName::from_static("x-canary"),
            HeaderName::from_static("x-tier"),
            HeaderName::from_static("x-absent"),
        ];
        let m = match_headers(&h, &names).unwrap();
        assert_eq!(
            m.len(),
            2,
            "absent and unnamed headers are not logged: {m:?}"
        );
        assert_eq!(m["x-canary"], LoggedValues::One("1".into()));
        assert_eq!(m["x-tier"].as_slice(), ["gold", "beta"]);
        let line = serde_json::to_value(Entry {
            match_headers: Some(m),
            ..Entry::default()
        })
        .unwrap();
        assert_eq!(
            line["match_headers"],
            serde_json::json!({"x-canary": "1", "x-tier": ["gold", "beta"]})
        );
    }

    #[test]
    fn match_headers_never_logs_a_credential() {
        let mut h = HeaderMap::new();
        h.append("authorization", "Bearer s3cret".parse().unwrap());
        let m = match_headers(&h, &[HeaderName::from_static("authorization")]).unwrap();
        assert_eq!(m["authorization"], LoggedValues::One("<redacted>".into()));
    }

    #[test]
    fn match_headers_is_omitted_when_nothing_to_log() {
        let mut h = HeaderMap::new();
        h.append("x-canary", "1".parse().unwrap());
        assert!(match_headers(&h, &[]).is_none());
        assert!(match_headers(&h, &[HeaderName::from_static("x-other")]).is_none());
        let line = serde_json::to_value(Entry::default()).unwrap();
        assert!(line.get("match_headers").is_none(), "{line}");
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
