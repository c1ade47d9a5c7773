//! Upstream TLS: the side where Palisade connects to backends.
//!
//! Owns building the rustls [`ClientConfig`]: which roots are trusted, whether
//! verification is skipped (explicit operator opt-in only), and which ALPN
//! protocol is offered.
//!
//! It does not own the SNI/server name sent to a backend (the connector picks
//! it per upstream), connection pooling, or client certificates (mTLS to
//! upstreams is not supported yet).

use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

use super::{describe_io_error, describe_pem_error};

/// How to talk TLS to one upstream.
#[derive(Clone, Copy, Debug)]
pub struct UpstreamTlsOptions<'a> {
    /// PEM file of CA certificates. When given it *replaces* the public
    /// (webpki-roots) trust store instead of adding to it, like nginx's
    /// `proxy_ssl_trusted_certificate`: a backend behind an internal CA should
    /// not also be impersonable by any public CA.
    pub ca_file: Option<&'a Path>,
    /// Verify the backend's certificate chain and name. `false` accepts any
    /// certificate — only for operators who explicitly opt in.
    pub verify: bool,
    /// Offer `h2` via ALPN (only `h2`); otherwise offer only `http/1.1`.
    pub alpn_h2: bool,
}

/// Builds the upstream rustls config: TLS 1.2 and 1.3, aws-lc-rs named
/// explicitly, no client certificate.
///
/// Trust: the CA file's certificates when `ca_file` is set, else the Mozilla
/// roots from webpki-roots. With `verify` false, a verifier that accepts any
/// certificate is installed and a warning is logged; handshake signatures are
/// still checked against the presented certificate, which costs nothing and
/// keeps the handshake itself well-formed.
pub fn client_config(opts: &UpstreamTlsOptions<'_>) -> Result<Arc<ClientConfig>, String> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| format!("cannot build the upstream TLS configuration: {e}"))?;

    let mut config = if opts.verify {
        let roots = match opts.ca_file {
            Some(path) => roots_from_file(path)?,
            None => RootCertStore {
                roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
            },
        };
        builder.with_root_certificates(roots).with_no_client_auth()
    } else {
        match opts.ca_file {
            Some(path) => tracing::warn!(
                ca_file = %path.display(),
                "upstream TLS certificate verification is DISABLED; the CA file is ignored \
                 and any certificate is accepted"
            ),
            None => tracing::warn!(
                "upstream TLS certificate verification is DISABLED; any certificate is accepted"
            ),
        }
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate { provider }))
            .with_no_client_auth()
    };

    config.alpn_protocols = if opts.alpn_h2 {
        vec![b"h2".to_vec()]
    } else {
        vec![b"http/1.1".to_vec()]
    };
    Ok(Arc::new(config))
}

/// Every certificate in `path`, each checked to be usable as a trust anchor.
fn roots_from_file(path: &Path) -> Result<RootCertStore, String> {
    let bytes = std::fs::read(path)
        .map_err(|e| format!("cannot read {}: {}", path.display(), describe_io_error(&e)))?;
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&bytes) {
        let cert = cert.map_err(|e| {
            format!(
                "cannot parse {}: {}",
                path.display(),
                describe_pem_error(&e)
            )
        })?;
        roots
            .add(cert)
            .map_err(|e| format!("invalid CA certificate in {}: {e}", path.display()))?;
    }
    if roots.is_empty() {
        return Err(format!("no certificate in {}", path.display()));
    }
    Ok(roots)
}

/// The `verify = false` verifier: any chain, any name, any validity period.
#[derive(Debug)]
struct AcceptAnyCertificate {
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
// Tests fail loudly by design.
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::tls::testutil::{TestCa, leaf, write};

    fn opts(ca_file: Option<&Path>, verify: bool, alpn_h2: bool) -> UpstreamTlsOptions<'_> {
        UpstreamTlsOptions {
            ca_file,
            verify,
            alpn_h2,
        }
    }

    #[test]
    fn alpn_follows_the_option() {
        let h2 = client_config(&opts(None, true, true)).unwrap();
        assert_eq!(h2.alpn_protocols, vec![b"h2".to_vec()]);
        let h1 = client_config(&opts(None, true, false)).unwrap();
        assert_eq!(h1.alpn_protocols, vec![b"http/1.1".to_vec()]);
    }

    #[test]
    fn ca_file_loads() {
        let dir = tempfile::tempdir().unwrap();
        let ca = TestCa::new();
        let other = TestCa::new();
        let path = write(
            dir.path(),
            "ca.pem",
            &format!("{}{}", ca.pem(), other.pem()),
        );
        let roots = roots_from_file(&path).unwrap();
        assert_eq!(roots.len(), 2);
        assert!(client_config(&opts(Some(&path), true, true)).is_ok());
    }

    #[test]
    fn ca_file_problems_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        assert_eq!(
            client_config(&opts(Some(&missing), true, true)).unwrap_err(),
            format!(
                "cannot read {}: No such file or directory",
                missing.display()
            )
        );

        let empty = write(dir.path(), "empty.pem", "nothing here\n");
        assert_eq!(
            client_config(&opts(Some(&empty), true, true)).unwrap_err(),
            format!("no certificate in {}", empty.display())
        );

        let not_der = write(
            dir.path(),
            "bad.pem",
            "-----BEGIN CERTIFICATE-----\naGVsbG8gd29ybGQ=\n-----END CERTIFICATE-----\n",
        );
        let err = client_config(&opts(Some(&not_der), true, true)).unwrap_err();
        assert!(
            err.starts_with(&format!("invalid CA certificate in {}", not_der.display())),
            "{err}"
        );
    }

    #[test]
    fn unverified_config_ignores_the_ca_file() {
        // The CA file is not even read when verification is off.
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        assert!(client_config(&opts(Some(&missing), false, true)).is_ok());
    }

    #[test]
    fn accept_any_verifier_accepts_a_foreign_chain() {
        let ca = TestCa::new();
        let l = leaf(&ca, &["a.example.test"], |_| {});
        let verifier = AcceptAnyCertificate {
            provider: Arc::new(rustls::crypto::aws_lc_rs::default_provider()),
        };
        let cert = CertificateDer::from(l.der);
        let name = ServerName::try_from("unrelated.invalid").unwrap();
        assert!(
            verifier
                .verify_server_cert(&cert, &[], &name, &[], UnixTime::now())
                .is_ok()
        );
        assert!(!verifier.supported_verify_schemes().is_empty());
    }
}
