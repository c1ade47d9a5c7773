//! Downstream TLS: the side where clients connect to Palisade.
//!
//! Owns loading a certificate chain and private key from PEM files and checking
//! them before they are ever served ([`load_cert`]), choosing among several
//! certificates by SNI ([`SniResolver`]), and building the rustls
//! [`ServerConfig`] ([`server_config`]).
//!
//! It does not own where the paths come from (configuration), when files are
//! reloaded (the caller builds a new config and swaps it), the accept loop, or
//! handshake timeouts.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{InconsistentKeys, ServerConfig};
use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::FromDer;

use super::{describe_io_error, describe_pem_error};

/// One certificate that loaded and passed every check in [`load_cert`].
#[derive(Clone, Debug)]
pub struct LoadedCert {
    /// DNS names the certificate is valid for, lowercase, in certificate order.
    /// May contain wildcards such as `*.example.com`. Taken from the subject
    /// alternative names; only when the certificate has no SAN extension at
    /// all is the subject common name used (legacy certificates).
    pub names: Vec<String>,
    /// End of the validity period, for expiry warnings and metrics.
    pub not_after: SystemTime,
    /// Chain plus signing key, ready for rustls.
    pub key: Arc<CertifiedKey>,
}

/// Loads a certificate chain and its private key from PEM files and checks them.
///
/// The chain file holds the leaf first, then any intermediates. The key file
/// holds one private key in PKCS#8 (`BEGIN PRIVATE KEY`), PKCS#1
/// (`BEGIN RSA PRIVATE KEY`) or SEC1 (`BEGIN EC PRIVATE KEY`) form; other PEM
/// sections in either file are skipped, so a combined cert+key file works for
/// both paths.
///
/// Checks: both files readable and parseable, the key matches the leaf, the
/// leaf is valid at `now` (neither expired nor not yet valid), and it names at
/// least one DNS name. Every problem found is returned, so an operator fixes
/// them in one go rather than one restart at a time. Messages name the file
/// as given (not canonicalised), e.g. `no certificate in tls/a.pem`.
pub fn load_cert(
    cert_path: &Path,
    key_path: &Path,
    now: SystemTime,
) -> Result<LoadedCert, Vec<String>> {
    let mut problems = Vec::new();
    let provider = aws_lc_provider();

    let chain = read_chain(cert_path, &mut problems);
    let signing_key = read_key(key_path, &mut problems).and_then(|key| {
        match provider.key_provider.load_private_key(key) {
            Ok(signing_key) => Some(signing_key),
            Err(e) => {
                problems.push(format!(
                    "unsupported private key in {}: {e}",
                    key_path.display()
                ));
                None
            }
        }
    });

    let leaf_info = chain.as_ref().and_then(|chain| {
        // `read_chain` only returns non-empty chains.
        let leaf = chain.first()?;
        inspect_leaf(leaf, cert_path, now, &mut problems)
    });

    let (Some(chain), Some(signing_key), Some((names, not_after))) =
        (chain, signing_key, leaf_info)
    else {
        return Err(problems);
    };

    let certified = CertifiedKey::new(chain, signing_key);
    match certified.keys_match() {
        Ok(()) => {}
        Err(rustls::Error::InconsistentKeys(InconsistentKeys::KeyMismatch)) => {
            problems.push("private key does not match the certificate".to_owned());
        }
        // aws-lc-rs keys always expose their public key, so `Unknown` should not
        // happen; refusing is safer than serving a pair we could not check.
        Err(rustls::Error::InconsistentKeys(InconsistentKeys::Unknown)) => {
            problems.push("cannot check that the private key matches the certificate".to_owned());
        }
        Err(e) => problems.push(format!(
            "cannot check the private key against the certificate: {e}"
        )),
    }

    if problems.is_empty() {
        Ok(LoadedCert {
            names,
            not_after,
            key: Arc::new(certified),
        })
    } else {
        Err(problems)
    }
}

/// Reads every `CERTIFICATE` section of `path`; `None` (with a problem
/// recorded) when the file is unreadable, malformed, or holds no certificate.
fn read_chain(path: &Path, problems: &mut Vec<String>) -> Option<Vec<CertificateDer<'static>>> {
    let bytes = read_file(path, problems)?;
    let mut chain = Vec::new();
    for item in CertificateDer::pem_slice_iter(&bytes) {
        match item {
            Ok(cert) => chain.push(cert),
            Err(e) => {
                problems.push(format!(
                    "cannot parse {}: {}",
                    path.display(),
                    describe_pem_error(&e)
                ));
                return None;
            }
        }
    }
    if chain.is_empty() {
        problems.push(format!("no certificate in {}", path.display()));
        return None;
    }
    Some(chain)
}

/// Reads the first private-key section of `path`.
fn read_key(path: &Path, problems: &mut Vec<String>) -> Option<PrivateKeyDer<'static>> {
    let bytes = read_file(path, problems)?;
    match PrivateKeyDer::from_pem_slice(&bytes) {
        Ok(key) => Some(key),
        Err(pem::Error::NoItemsFound) => {
            problems.push(format!("no private key in {}", path.display()));
            None
        }
        Err(e) => {
            problems.push(format!(
                "cannot parse {}: {}",
                path.display(),
                describe_pem_error(&e)
            ));
            None
        }
    }
}

fn read_file(path: &Path, problems: &mut Vec<String>) -> Option<Vec<u8>> {
    match std::fs::read(path) {
        Ok(bytes) => Some(bytes),
        Err(e) => {
            problems.push(format!(
                "cannot read {}: {}",
                path.display(),
                describe_io_error(&e)
            ));
            None
        }
    }
}

/// Parses the leaf with x509-parser and checks names and validity. Returns the
/// names and expiry when the certificate could be parsed at all (even if a
/// check failed — the failure is in `problems`), so that other checks still run.
fn inspect_leaf(
    leaf: &CertificateDer<'_>,
    path: &Path,
    now: SystemTime,
    problems: &mut Vec<String>,
) -> Option<(Vec<String>, SystemTime)> {
    let cert = match X509Certificate::from_der(leaf.as_ref()) {
        Ok((_, cert)) => cert,
        Err(e) => {
            problems.push(format!(
                "cannot parse certificate in {}: {e}",
                path.display()
            ));
            return None;
        }
    };

    let names = dns_names(&cert, problems);
    if names.is_empty() {
        problems.push("certificate has no DNS name".to_owned());
    }

    let validity = cert.validity();
    let not_before = validity.not_before.timestamp();
    let not_after = validity.not_after.timestamp();
    let now_secs = unix_seconds(now);
    if now_secs > not_after {
        problems.push(format!(
            "certificate expired at {}",
            format_rfc3339(not_after)
        ));
    } else if now_secs < not_before {
        problems.push(format!(
            "certificate not valid until {}",
            format_rfc3339(not_before)
        ));
    }

    let Some(not_after) = system_time(not_after) else {
        problems.push(format!(
            "certificate expiry {} is out of range",
            format_rfc3339(not_after)
        ));
        return None;
    };
    Some((names, not_after))
}

/// DNS names from the SAN extension; the subject CN only when there is no SAN
/// extension at all (RFC 6125: a present SAN overrides the CN). A CN that does
/// not look like a host name (e.g. "ACME Web Server") is not a name.
fn dns_names(cert: &X509Certificate<'_>, problems: &mut Vec<String>) -> Vec<String> {
    match cert.subject_alternative_name() {
        Ok(Some(san)) => san
            .value
            .general_names
            .iter()
            .filter_map(|name| match name {
                GeneralName::DNSName(dns) => Some(dns.to_ascii_lowercase()),
                _ => None,
            })
            .collect(),
        Ok(None) => cert
            .subject()
            .iter_common_name()
            .filter_map(|cn| cn.as_str().ok())
            .filter(|cn| looks_like_host_name(cn))
            .map(str::to_ascii_lowercase)
            .collect(),
        Err(e) => {
            problems.push(format!(
                "cannot read the certificate's subject alternative names: {e}"
            ));
            Vec::new()
        }
    }
}

/// Loose check: dot-separated non-empty labels of letters, digits, `-` and
/// `_`, with an optional leading `*` label.
fn looks_like_host_name(name: &str) -> bool {
    let rest = name.strip_prefix("*.").unwrap_or(name);
    !rest.is_empty()
        && rest.split('.').all(|label| {
            !label.is_empty()
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// Seconds since the Unix epoch, negative before it.
fn unix_seconds(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(after) => i64::try_from(after.as_secs()).unwrap_or(i64::MAX),
        Err(before) => i64::try_from(before.duration().as_secs()).map_or(i64::MIN, |s| -s),
    }
}

fn system_time(secs: i64) -> Option<SystemTime> {
    if secs >= 0 {
        UNIX_EPOCH.checked_add(Duration::from_secs(secs.unsigned_abs()))
    } else {
        UNIX_EPOCH.checked_sub(Duration::from_secs(secs.unsigned_abs()))
    }
}

/// `2025-01-01T00:00:00Z` for a Unix timestamp (UTC, proleptic Gregorian).
fn format_rfc3339(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let of_day = secs.rem_euclid(86_400);
    let (year, month, day) = civil_from_days(days);
    let mut out = String::with_capacity(20);
    // Writing to a String cannot fail.
    let _ = write!(
        out,
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        of_day / 3600,
        of_day % 3600 / 60,
        of_day % 60
    );
    out
}

/// Howard Hinnant's `civil_from_days`: days since 1970-01-01 to (y, m, d).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// Chooses a certificate from the client's SNI.
///
/// Order: an exact name match; then a wildcard for the name's parent domain
/// (`*.example.com` matches `a.example.com`, but not `a.b.example.com` or
/// `example.com`, per RFC 6125 §6.4.3); otherwise the first configured
/// certificate. Matching ignores ASCII case and a trailing dot.
///
/// Falling back to the first certificate (rather than failing the handshake)
/// is deliberate: clients without SNI (old clients, health checkers hitting an
/// IP address) still get a certificate, and a client asking for an unknown
/// name gets a clear certificate-name error from its own verifier instead of
/// an opaque handshake alert. This matches nginx's default-server behaviour.
/// When a name appears in several certificates, the first one configured wins.
#[derive(Debug)]
pub struct SniResolver {
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// Keyed by the wildcard's parent domain: `*.example.com` → `example.com`.
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    default: Option<Arc<CertifiedKey>>,
}

impl SniResolver {
    /// Indexes `certs` by name. With no certificates every handshake is refused
    /// ([`server_config`] rejects that case up front).
    pub fn new(certs: &[LoadedCert]) -> Self {
        let mut exact = HashMap::new();
        let mut wildcard = HashMap::new();
        for cert in certs {
            for name in &cert.names {
                let name = normalize(name);
                let (map, key) = match name.strip_prefix("*.") {
                    Some(parent) => (&mut wildcard, parent.to_owned()),
                    None => (&mut exact, name),
                };
                // First configured wins, so reordering the config is the way
                // to prefer one certificate over another.
                map.entry(key).or_insert_with(|| Arc::clone(&cert.key));
            }
        }
        Self {
            exact,
            wildcard,
            default: certs.first().map(|cert| Arc::clone(&cert.key)),
        }
    }

    /// The selection logic behind [`ResolvesServerCert::resolve`], kept free of
    /// `ClientHello` so it can be tested directly. `None` only when no
    /// certificate is configured.
    pub fn choose(&self, sni: Option<&str>) -> Option<Arc<CertifiedKey>> {
        if let Some(sni) = sni {
            let sni = normalize(sni);
            if let Some(key) = self.exact.get(&sni) {
                return Some(Arc::clone(key));
            }
            // A wildcard covers exactly one non-empty left-most label.
            if let Some((label, parent)) = sni.split_once('.')
                && !label.is_empty()
                && let Some(key) = self.wildcard.get(parent)
            {
                return Some(Arc::clone(key));
            }
        }
        self.default.clone()
    }
}

fn normalize(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.choose(client_hello.server_name())
    }
}

/// Builds the downstream rustls config.
///
/// TLS 1.2 and 1.3 only, aws-lc-rs named explicitly, no client authentication,
/// certificates chosen by [`SniResolver`]. ALPN offers `h2` then `http/1.1`,
/// or only `http/1.1` when `http2` is false. Session resumption keeps the
/// rustls defaults (in-memory session cache; TLS 1.3 tickets backed by it).
pub fn server_config(certs: &[LoadedCert], http2: bool) -> Result<Arc<ServerConfig>, String> {
    if certs.is_empty() {
        return Err("no TLS certificate configured".to_owned());
    }
    let mut config = ServerConfig::builder_with_provider(aws_lc_provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| format!("cannot build the TLS server configuration: {e}"))?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(SniResolver::new(certs)));
    config.alpn_protocols = if http2 {
        vec![b"h2".to_vec(), b"http/1.1".to_vec()]
    } else {
        vec![b"http/1.1".to_vec()]
    };
    Ok(Arc::new(config))
}

fn aws_lc_provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

#[cfg(test)]
// Tests fail loudly by design.
#[allow(clippy::unwrap_used)]
mod tests {
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    use rcgen::{DnType, date_time_ymd};

    use super::*;
    use crate::tls::testutil::{TestCa, leaf, write};

    fn load_pair(cert_pem: &str, key_pem: &str) -> Result<LoadedCert, Vec<String>> {
        let dir = tempfile::tempdir().unwrap();
        let cert = write(dir.path(), "cert.pem", cert_pem);
        let key = write(dir.path(), "key.pem", key_pem);
        load_cert(&cert, &key, SystemTime::now())
    }

    #[test]
    fn good_cert_loads_with_lowercase_names() {
        let ca = TestCa::new();
        let l = leaf(&ca, &["Www.Example.TEST", "*.Example.test"], |_| {});
        // Chain with the CA appended, as operators usually deploy it.
        let chain = format!("{}{}", l.cert_pem, ca.pem());
        let loaded = load_pair(&chain, &l.key_pem).unwrap();
        assert_eq!(loaded.names, ["www.example.test", "*.example.test"]);
        assert_eq!(loaded.key.cert.len(), 2);
        assert_eq!(loaded.key.cert[0].as_ref(), &l.der[..]);
        assert!(loaded.not_after > SystemTime::now());
    }

    #[test]
    fn combined_cert_and_key_file_works_for_both_paths() {
        let ca = TestCa::new();
        let l = leaf(&ca, &["a.example.test"], |_| {});
        let dir = tempfile::tempdir().unwrap();
        let both = write(
            dir.path(),
            "both.pem",
            &format!("{}{}", l.key_pem, l.cert_pem),
        );
        let loaded = load_cert(&both, &both, SystemTime::now()).unwrap();
        assert_eq!(loaded.names, ["a.example.test"]);
    }

    #[test]
    fn common_name_used_only_without_san() {
        let ca = TestCa::new();
        let l = leaf(&ca, &[], |p| {
            p.distinguished_name
                .push(DnType::CommonName, "Legacy.Example.Test");
        });
        let loaded = load_pair(&l.cert_pem, &l.key_pem).unwrap();
        assert_eq!(loaded.names, ["legacy.example.test"]);

        let l = leaf(&ca, &["san.example.test"], |p| {
            p.distinguished_name
                .push(DnType::CommonName, "cn.example.test");
        });
        let loaded = load_pair(&l.cert_pem, &l.key_pem).unwrap();
        assert_eq!(loaded.names, ["san.example.test"]);
    }

    #[test]
    fn no_dns_name_is_an_error() {
        let ca = TestCa::new();
        // No SAN, and rcgen's default CN ("rcgen self signed cert") is not a host name.
        let l = leaf(&ca, &[], |_| {});
        let errors = load_pair(&l.cert_pem, &l.key_pem).unwrap_err();
        assert_eq!(errors, ["certificate has no DNS name"]);

        // A SAN with only an IP address has no DNS name either.
        let l = leaf(&ca, &["192.0.2.1"], |_| {});
        let errors = load_pair(&l.cert_pem, &l.key_pem).unwrap_err();
        assert_eq!(errors, ["certificate has no DNS name"]);
    }

    #[test]
    fn key_of_another_cert_does_not_match() {
        let ca = TestCa::new();
        let a = leaf(&ca, &["a.example.test"], |_| {});
        let b = leaf(&ca, &["b.example.test"], |_| {});
        let errors = load_pair(&a.cert_pem, &b.key_pem).unwrap_err();
        assert_eq!(errors, ["private key does not match the certificate"]);
    }

    #[test]
    fn missing_files_are_both_reported() {
        let dir = tempfile::tempdir().unwrap();
        let cert = dir.path().join("a.pem");
        let key = dir.path().join("a.key");
        let errors = load_cert(&cert, &key, SystemTime::now()).unwrap_err();
        assert_eq!(
            errors,
            [
                format!("cannot read {}: No such file or directory", cert.display()),
                format!("cannot read {}: No such file or directory", key.display()),
            ]
        );
    }

    #[test]
    fn garbage_is_reported_without_panicking() {
        let ca = TestCa::new();
        let good = leaf(&ca, &["a.example.test"], |_| {});
        let dir = tempfile::tempdir().unwrap();
        let key = write(dir.path(), "a.key", &good.key_pem);

        // No PEM at all.
        let cert = write(dir.path(), "plain.pem", "hello world\n");
        let errors = load_cert(&cert, &key, SystemTime::now()).unwrap_err();
        assert_eq!(errors, [format!("no certificate in {}", cert.display())]);

        // PEM armour around bad base64.
        let cert = write(
            dir.path(),
            "b64.pem",
            "-----BEGIN CERTIFICATE-----\nnot base64!!\n-----END CERTIFICATE-----\n",
        );
        let errors = load_cert(&cert, &key, SystemTime::now()).unwrap_err();
        assert_eq!(errors.len(), 1);
        assert!(
            errors[0].starts_with(&format!("cannot parse {}: ", cert.display())),
            "{errors:?}"
        );

        // Unterminated section.
        let cert = write(
            dir.path(),
            "open.pem",
            "-----BEGIN CERTIFICATE-----\nAAAA\n",
        );
        let errors = load_cert(&cert, &key, SystemTime::now()).unwrap_err();
        assert_eq!(
            errors,
            [format!(
                "cannot parse {}: a PEM section has no END line",
                cert.display()
            )]
        );

        // Valid PEM and base64, but not DER.
        let cert = write(
            dir.path(),
            "der.pem",
            "-----BEGIN CERTIFICATE-----\naGVsbG8gd29ybGQ=\n-----END CERTIFICATE-----\n",
        );
        let errors = load_cert(&cert, &key, SystemTime::now()).unwrap_err();
        assert_eq!(errors.len(), 1);
        assert!(
            errors[0].starts_with(&format!("cannot parse certificate in {}: ", cert.display())),
            "{errors:?}"
        );

        // Key file with no key, and a key that is not a key.
        let good_cert = write(dir.path(), "good.pem", &good.cert_pem);
        let errors = load_cert(&good_cert, &good_cert, SystemTime::now()).unwrap_err();
        assert_eq!(
            errors,
            [format!("no private key in {}", good_cert.display())]
        );
        let bad_key = write(
            dir.path(),
            "bad.key",
            "-----BEGIN PRIVATE KEY-----\naGVsbG8gd29ybGQ=\n-----END PRIVATE KEY-----\n",
        );
        let errors = load_cert(&good_cert, &bad_key, SystemTime::now()).unwrap_err();
        assert_eq!(errors.len(), 1);
        assert!(
            errors[0].starts_with(&format!(
                "unsupported private key in {}: ",
                bad_key.display()
            )),
            "{errors:?}"
        );
    }

    #[test]
    fn expired_cert_names_the_expiry() {
        let ca = TestCa::new();
        let l = leaf(&ca, &["old.example.test"], |p| {
            p.not_before = date_time_ymd(2020, 1, 1);
            p.not_after = date_time_ymd(2025, 1, 1);
        });
        let errors = load_pair(&l.cert_pem, &l.key_pem).unwrap_err();
        assert_eq!(errors, ["certificate expired at 2025-01-01T00:00:00Z"]);
    }

    #[test]
    fn not_yet_valid_cert_is_rejected() {
        let ca = TestCa::new();
        let l = leaf(&ca, &["new.example.test"], |p| {
            p.not_before = date_time_ymd(2030, 6, 15);
        });
        let dir = tempfile::tempdir().unwrap();
        let cert = write(dir.path(), "c.pem", &l.cert_pem);
        let key = write(dir.path(), "c.key", &l.key_pem);
        // 2024-02-29T12:00:00Z
        let now = UNIX_EPOCH + Duration::from_secs(1_709_208_000);
        let errors = load_cert(&cert, &key, now).unwrap_err();
        assert_eq!(errors, ["certificate not valid until 2030-06-15T00:00:00Z"]);
    }

    #[test]
    fn several_problems_reported_together() {
        let ca = TestCa::new();
        let expired = leaf(&ca, &[], |p| {
            p.not_after = date_time_ymd(2025, 1, 1);
        });
        let other = leaf(&ca, &["other.example.test"], |_| {});
        let errors = load_pair(&expired.cert_pem, &other.key_pem).unwrap_err();
        assert_eq!(
            errors,
            [
                "certificate has no DNS name",
                "certificate expired at 2025-01-01T00:00:00Z",
                "private key does not match the certificate",
            ]
        );

        // An unreadable key does not hide certificate problems.
        let dir = tempfile::tempdir().unwrap();
        let cert = write(dir.path(), "c.pem", &expired.cert_pem);
        let key = dir.path().join("missing.key");
        let errors = load_cert(&cert, &key, SystemTime::now()).unwrap_err();
        assert_eq!(
            errors,
            [
                format!("cannot read {}: No such file or directory", key.display()),
                "certificate has no DNS name".to_owned(),
                "certificate expired at 2025-01-01T00:00:00Z".to_owned(),
            ]
        );
    }

    #[test]
    fn rfc3339_formatting() {
        assert_eq!(format_rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(format_rfc3339(1_709_208_000), "2024-02-29T12:00:00Z");
        assert_eq!(format_rfc3339(1_735_689_599), "2024-12-31T23:59:59Z");
        assert_eq!(format_rfc3339(-1), "1969-12-31T23:59:59Z");
        assert_eq!(format_rfc3339(253_402_300_799), "9999-12-31T23:59:59Z");
    }

    fn resolver_fixture() -> (SniResolver, Vec<LoadedCert>) {
        let ca = TestCa::new();
        let dir = tempfile::tempdir().unwrap();
        let mut certs = Vec::new();
        for (i, names) in [
            &["default.example.test"][..],
            &["a.example.test", "*.example.test"][..],
            &["exact.example.test"][..],
            &["*.Sub.Example.Test"][..],
        ]
        .iter()
        .enumerate()
        {
            let l = leaf(&ca, names, |_| {});
            let cert = write(dir.path(), &format!("{i}.pem"), &l.cert_pem);
            let key = write(dir.path(), &format!("{i}.key"), &l.key_pem);
            certs.push(load_cert(&cert, &key, SystemTime::now()).unwrap());
        }
        (SniResolver::new(&certs), certs)
    }

    /// Index into the fixture of the certificate `sni` selects.
    fn chosen(resolver: &SniResolver, certs: &[LoadedCert], sni: Option<&str>) -> usize {
        let key = resolver.choose(sni).unwrap();
        certs
            .iter()
            .position(|c| Arc::ptr_eq(&c.key, &key))
            .unwrap()
    }

    #[test]
    fn sni_exact_beats_wildcard() {
        let (r, certs) = resolver_fixture();
        assert_eq!(chosen(&r, &certs, Some("exact.example.test")), 2);
        assert_eq!(chosen(&r, &certs, Some("a.example.test")), 1);
        assert_eq!(chosen(&r, &certs, Some("default.example.test")), 0);
    }

    #[test]
    fn sni_wildcard_covers_one_label_only() {
        let (r, certs) = resolver_fixture();
        assert_eq!(chosen(&r, &certs, Some("zzz.example.test")), 1);
        assert_eq!(chosen(&r, &certs, Some("x.sub.example.test")), 3);
        // Two labels deep: *.example.test does not apply → default.
        assert_eq!(chosen(&r, &certs, Some("x.y.example.test")), 0);
        // The bare parent is not covered by its wildcard.
        assert_eq!(chosen(&r, &certs, Some("example.test")), 0);
        assert_eq!(chosen(&r, &certs, Some("sub.example.test")), 1);
        // An empty left-most label is not a label.
        assert_eq!(chosen(&r, &certs, Some(".example.test")), 0);
    }

    #[test]
    fn sni_is_case_insensitive() {
        let (r, certs) = resolver_fixture();
        assert_eq!(chosen(&r, &certs, Some("EXACT.Example.Test")), 2);
        assert_eq!(chosen(&r, &certs, Some("Q.SUB.EXAMPLE.TEST")), 3);
        assert_eq!(chosen(&r, &certs, Some("exact.example.test.")), 2);
    }

    #[test]
    fn unknown_or_missing_sni_gets_first_cert() {
        let (r, certs) = resolver_fixture();
        assert_eq!(chosen(&r, &certs, None), 0);
        assert_eq!(chosen(&r, &certs, Some("unknown.invalid")), 0);
        assert_eq!(chosen(&r, &certs, Some("")), 0);
    }

    #[test]
    fn first_configured_wins_on_duplicate_names() {
        let (_, certs) = resolver_fixture();
        let mut impostor = certs[1].clone();
        impostor.names = vec!["exact.example.test".to_owned()];
        let r = SniResolver::new(&[certs[2].clone(), impostor.clone()]);
        let key = r.choose(Some("exact.example.test")).unwrap();
        assert!(Arc::ptr_eq(&key, &certs[2].key));
        let r = SniResolver::new(&[impostor, certs[2].clone()]);
        let key = r.choose(Some("exact.example.test")).unwrap();
        assert!(Arc::ptr_eq(&key, &certs[1].key));
    }

    #[test]
    fn empty_resolver_and_config() {
        let r = SniResolver::new(&[]);
        assert!(r.choose(Some("a.example.test")).is_none());
        assert!(r.choose(None).is_none());
        assert_eq!(
            server_config(&[], true).unwrap_err(),
            "no TLS certificate configured"
        );
    }
}
