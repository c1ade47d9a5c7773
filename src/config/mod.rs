//! Configuration: the TOML file → [`Config`] (serde model) → [`validate`] (every problem, with its path)
//! → `snapshot::compile` (runtime objects).
//!
//! This module owns reading and parsing the file, the problem list type, and the version (the hash of
//! the canonical form). It does not build anything that runs: see `snapshot.rs`.

pub mod duration;
pub mod model;
pub mod overload;
pub mod reload;
pub mod resilience;
pub mod validate;

use std::{
    fmt,
    path::{Path, PathBuf},
};

use sha2::{Digest, Sha256};

pub use duration::Dur;
pub use model::*;
pub use overload::*;
pub use reload::{AutoRollbackConfig, ReloadConfig};
pub use resilience::*;
pub use validate::validate;

/// One finding, addressed by its path in the file (`routes[2].match.path_regex`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub path: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// Everything validation found: errors refuse the config, warnings are printed and accepted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Diagnostics {
    pub errors: Vec<Problem>,
    pub warnings: Vec<Problem>,
}

impl Diagnostics {
    pub fn error(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.errors.push(Problem {
            path: path.into(),
            message: message.into(),
        });
    }
    pub fn warn(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.warnings.push(Problem {
            path: path.into(),
            message: message.into(),
        });
    }
    pub fn is_ok(&self) -> bool {
        self.errors.is_empty()
    }
}

/// A config that could not be used, with every reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", render(.problems))]
pub struct ConfigError {
    pub problems: Vec<Problem>,
}

fn render(problems: &[Problem]) -> String {
    problems
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

impl ConfigError {
    pub fn one(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            problems: vec![Problem {
                path: path.into(),
                message: message.into(),
            }],
        }
    }
}

/// A parsed config and where relative paths in it (certificates, CA files) are resolved from.
#[derive(Debug, Clone)]
pub struct Source {
    pub config: Config,
    /// The config file's directory (`.` for an embedded or API-supplied config).
    pub base_dir: PathBuf,
    /// The text it was parsed from, kept for `/config` history and diffs in later work.
    pub text: String,
}

/// Reads and parses a file. Unknown keys and type errors are reported with their path.
pub fn load_file(path: &Path) -> Result<Source, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError::one("", format!("cannot read {}: {e}", path.display())))?;
    let base_dir = path
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf);
    let base_dir = if base_dir.as_os_str().is_empty() {
        PathBuf::from(".")
    } else {
        base_dir
    };
    parse(&text, base_dir)
}

/// Parses TOML text into the model.
pub fn parse(text: &str, base_dir: PathBuf) -> Result<Source, ConfigError> {
    let de = toml::Deserializer::parse(text).map_err(|e| syntax_error(&e))?;
    match serde_path_to_error::deserialize::<_, Config>(de) {
        Ok(config) => Ok(Source {
            config,
            base_dir,
            text: text.to_owned(),
        }),
        Err(e) => {
            let path = e.path().to_string();
            let path = if path == "." { String::new() } else { path };
            Err(ConfigError::one(path, one_line(e.inner())))
        }
    }
}

fn syntax_error(e: &toml::de::Error) -> ConfigError {
    ConfigError::one("", format!("TOML syntax: {}", one_line(e)))
}

/// toml's messages are multi-line source excerpts; keep its first and last lines (position and reason).
fn one_line(e: &toml::de::Error) -> String {
    let text = e.to_string();
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    match (lines.first(), lines.last()) {
        (Some(first), Some(last)) if first != last && first.starts_with("TOML parse error") => {
            format!(
                "{last} ({})",
                first
                    .trim_start_matches("TOML parse error ")
                    .trim_end_matches(':')
            )
        }
        _ => lines.join(" "),
    }
}

/// The version: a short hash of the canonical form (the model serialised as JSON, which has sorted
/// maps and a fixed field order), so that the same config written differently has the same version.
pub fn version_of(config: &Config) -> String {
    let canonical = serde_json::to_vec(config).unwrap_or_default();
    let digest = Sha256::digest(&canonical);
    digest.iter().take(6).map(|b| format!("{b:02x}")).collect()
}

impl Config {
    /// The config as `/config` and `/config/diff` show it: secrets replaced by `"<redacted>"`
    /// (the admin token, and the values of credential headers a route matches on or sets).
    pub fn redacted(&self) -> Config {
        let mut c = self.clone();
        if c.admin.auth_token.is_some() {
            c.admin.auth_token = Some("<redacted>".to_owned());
        }
        if let Some(r) = c.redis.as_mut() {
            r.url = redact_url_credentials(&r.url);
        }
        for r in &mut c.routes {
            for m in &mut r.matches.headers {
                if is_credential_header(&m.name) {
                    for v in [&mut m.value, &mut m.regex].into_iter().flatten() {
                        "<redacted>".clone_into(v);
                    }
                }
            }
            for rw in [&mut r.request_headers, &mut r.response_headers] {
                for (name, value) in rw.set.iter_mut().chain(rw.add.iter_mut()) {
                    if is_credential_header(name) {
                        "<redacted>".clone_into(value);
                    }
                }
            }
        }
        c
    }
}

/// `redis://user:secret@host` → `redis://<redacted>@host`: whatever sits before the `@` of the
/// authority is a credential.
fn redact_url_credentials(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) if scheme.is_empty() => format!("<redacted>{}", &rest[at..]),
        Some(at) => format!("{scheme}://<redacted>{}", &rest[at..]),
        None => url.to_owned(),
    }
}

/// Headers whose values are credentials, by name (case-insensitive): redacted in config dumps and
/// never written to the access log.
pub fn is_credential_header(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    matches!(
        n.as_str(),
        "authorization" | "proxy-authorization" | "cookie" | "set-cookie"
    ) || n.contains("token")
        || n.contains("secret")
        || n.contains("api-key")
        || n.contains("apikey")
        || n.contains("password")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_key_is_refused_with_its_path() {
        let err = parse(
            "[listeners.web]\nlisten = \"127.0.0.1:0\"\nlisen = 1\n",
            ".".into(),
        )
        .unwrap_err();
        assert_eq!(err.problems.len(), 1);
        assert_eq!(err.problems[0].path, "listeners.web.lisen");
        assert!(
            err.problems[0].message.contains("unknown field `lisen`"),
            "{err}"
        );
    }

    #[test]
    fn bad_duration_is_reported_with_its_path() {
        let err = parse(
            "[clusters.a]\nendpoints = [\"127.0.0.1:1\"]\nconnect_timeout = \"soon\"\n",
            ".".into(),
        )
        .unwrap_err();
        assert_eq!(err.problems[0].path, "clusters.a.connect_timeout");
    }

    #[test]
    fn version_ignores_formatting_but_not_content() {
        let a = parse("[clusters.a]\nendpoints = [\"127.0.0.1:1\"]\n[clusters.b]\nendpoints = [\"127.0.0.1:2\"]\n", ".".into())
            .unwrap();
        let b = parse(
            "[clusters.b]\nendpoints = [ \"127.0.0.1:2\" ]  # comment\n\n[clusters.a]\nendpoints = [\"127.0.0.1:1\"]\n",
            ".".into(),
        )
        .unwrap();
        let c = parse("[clusters.a]\nendpoints = [\"127.0.0.1:9\"]\n[clusters.b]\nendpoints = [\"127.0.0.1:2\"]\n", ".".into())
            .unwrap();
        assert_eq!(version_of(&a.config), version_of(&b.config));
        assert_ne!(version_of(&a.config), version_of(&c.config));
        assert_eq!(version_of(&a.config).len(), 12);
    }

    #[test]
    fn redaction_hides_redis_credentials() {
        assert_eq!(
            redact_url_credentials("redis://:hunter2@db:6379/0"),
            "redis://<redacted>@db:6379/0"
        );
        assert_eq!(
            redact_url_credentials("redis://127.0.0.1:6379"),
            "redis://127.0.0.1:6379"
        );
    }

    #[test]
    fn redaction_hides_the_admin_token() {
        let mut c = Config::default();
        c.admin.auth_token = Some("s3cret".into());
        let dump = serde_json::to_string(&c.redacted()).unwrap();
        assert!(!dump.contains("s3cret"));
        assert!(dump.contains("<redacted>"));
    }

    #[test]
    fn redaction_hides_credential_headers_a_route_sets() {
        let c = parse(
            "[[routes]]\nname = \"r\"\ncluster = \"a\"\nmatch = { path_prefix = \"/\", headers = [{ name = \"x-api-key\", value = \"m-77\" }] }\nrequest_headers = { set = { Authorization = \"Bearer abc123\", \"X-Api-Key\" = \"k-42\", \"x-team\" = \"blue\" } }\n[clusters.a]\nendpoints = [\"127.0.0.1:1\"]\n",
            ".".into(),
        )
        .unwrap()
        .config;
        let dump = serde_json::to_string(&c.redacted()).unwrap();
        assert!(!dump.contains("abc123") && !dump.contains("k-42"), "{dump}");
        assert!(!dump.contains("m-77"), "{dump}");
        assert!(dump.contains("blue"), "{dump}");
    }
}
