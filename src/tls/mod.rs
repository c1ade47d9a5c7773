//! TLS for both sides of the proxy, built on rustls with the aws-lc-rs provider.
//!
//! This module owns the TLS *configuration*: loading and checking certificates
//! and keys ([`server`]), choosing a certificate by SNI ([`server::SniResolver`]),
//! and building the rustls `ServerConfig` (downstream, clients → Palisade) and
//! `ClientConfig` (upstream, Palisade → backends, [`client`]).
//!
//! It does not own sockets, accept loops, handshake timeouts, hot reload of
//! certificates, or the configuration file format; callers hand it paths and
//! flags and get back `Arc`ed rustls configs to use with `tokio-rustls`.
//!
//! Both configs name the aws-lc-rs provider explicitly (`builder_with_provider`)
//! so they never depend on which provider happens to be the process default;
//! [`install_crypto_provider`] exists for the *other* rustls users in the
//! process (for example HTTP clients that call `ClientConfig::builder()`), which
//! would otherwise panic if both `ring` and `aws-lc-rs` are compiled in.

use rustls_pki_types::pem;

pub mod client;
pub mod server;

/// Installs aws-lc-rs as rustls's process default crypto provider.
///
/// Idempotent: calling it again, or after something else installed a provider,
/// is harmless. The error from a second install only says "a default already
/// exists", and whichever provider won is fine for code that relies on the
/// default — our own configs pick aws-lc-rs explicitly anyway.
pub fn install_crypto_provider() {
    // Ignored on purpose: see the doc comment above.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

/// `io::Error`'s Display ends in " (os error 2)", which is noise for operators.
fn describe_io_error(e: &std::io::Error) -> String {
    let text = e.to_string();
    match text.find(" (os error ") {
        Some(cut) => text[..cut].to_owned(),
        None => text,
    }
}

/// pki-types prints some PEM errors as byte arrays; say it in words instead.
fn describe_pem_error(e: &pem::Error) -> String {
    match e {
        pem::Error::MissingSectionEnd { .. } => "a PEM section has no END line".to_owned(),
        pem::Error::IllegalSectionStart { .. } => "malformed PEM BEGIN line".to_owned(),
        pem::Error::Base64Decode(_) => "invalid base64 inside a PEM section".to_owned(),
        other => other.to_string(),
    }
}

/// Certificate fixtures shared by the tests of this module tree. Keys are
/// generated at test time and only ever written to temporary directories.
#[cfg(test)]
// Fixtures fail loudly by design.
#[allow(clippy::unwrap_used)]
pub(crate) mod testutil {
    use std::path::{Path, PathBuf};

    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, Issuer, KeyPair,
    };

    /// A throwaway certificate authority.
    pub(crate) struct TestCa {
        issuer: CertifiedIssuer<'static, KeyPair>,
    }

    impl TestCa {
        pub(crate) fn new() -> Self {
            let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params
                .distinguished_name
                .push(DnType::CommonName, "Palisade Test CA");
            let issuer =
                CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
            Self { issuer }
        }

        pub(crate) fn pem(&self) -> String {
            self.issuer.pem()
        }

        pub(crate) fn signer(&self) -> &Issuer<'static, KeyPair> {
            &self.issuer
        }
    }

    /// A leaf certificate in memory, plus its DER for identity checks.
    pub(crate) struct TestLeaf {
        pub(crate) cert_pem: String,
        pub(crate) key_pem: String,
        pub(crate) der: Vec<u8>,
    }

    /// Issues a leaf for `names` signed by `ca`; `tweak` may adjust the
    /// parameters (validity, subject) before signing.
    pub(crate) fn leaf(
        ca: &TestCa,
        names: &[&str],
        tweak: impl FnOnce(&mut CertificateParams),
    ) -> TestLeaf {
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let mut params = CertificateParams::new(names).unwrap();
        tweak(&mut params);
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, ca.signer()).unwrap();
        TestLeaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().to_vec(),
        }
    }

    /// Writes `contents` to `dir/name` and returns the path.
    pub(crate) fn write(dir: &Path, name: &str, contents: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, contents).unwrap();
        path
    }
}

#[cfg(test)]
// Tests fail loudly by design.
#[allow(clippy::unwrap_used)]
mod tests {
    use std::path::Path;
    use std::sync::Arc;
    use std::time::SystemTime;

    use rustls_pki_types::ServerName;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};
    use tokio_rustls::{TlsAcceptor, TlsConnector};

    use super::client::{UpstreamTlsOptions, client_config};
    use super::server::{LoadedCert, load_cert, server_config};
    use super::testutil::{TestCa, leaf, write};

    #[test]
    fn install_crypto_provider_is_idempotent() {
        super::install_crypto_provider();
        super::install_crypto_provider();
        assert!(rustls::crypto::CryptoProvider::get_default().is_some());
    }

    fn load(dir: &Path, stem: &str, leaf: &super::testutil::TestLeaf) -> LoadedCert {
        let cert = write(dir, &format!("{stem}.pem"), &leaf.cert_pem);
        let key = write(dir, &format!("{stem}.key"), &leaf.key_pem);
        load_cert(&cert, &key, SystemTime::now()).unwrap()
    }

    /// Connects to `addr` with SNI `name`; returns the server's leaf DER and the
    /// negotiated ALPN protocol, after a one-byte echo proves the session works.
    async fn connect(
        config: Arc<rustls::ClientConfig>,
        addr: std::net::SocketAddr,
        name: &str,
    ) -> Result<(Vec<u8>, Option<Vec<u8>>), std::io::Error> {
        let tcp = TcpStream::connect(addr).await?;
        let server_name = ServerName::try_from(name.to_owned()).unwrap();
        let mut tls = TlsConnector::from(config).connect(server_name, tcp).await?;
        tls.write_all(b"x").await?;
        let mut buf = [0u8; 1];
        tls.read_exact(&mut buf).await?;
        assert_eq!(&buf, b"x");
        let (_, conn) = tls.get_ref();
        let leaf = conn.peer_certificates().unwrap()[0].to_vec();
        Ok((leaf, conn.alpn_protocol().map(<[u8]>::to_vec)))
    }

    #[tokio::test]
    async fn end_to_end_handshake_picks_cert_by_sni() {
        let dir = tempfile::tempdir().unwrap();
        let ca = TestCa::new();
        let leaf_a = leaf(&ca, &["a.example.test"], |_| {});
        let leaf_b = leaf(&ca, &["b.example.test"], |_| {});
        let certs = vec![
            load(dir.path(), "a", &leaf_a),
            load(dir.path(), "b", &leaf_b),
        ];
        let acceptor = TlsAcceptor::from(server_config(&certs, true).unwrap());

        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    // Failed handshakes (the untrusting client) are expected.
                    if let Ok(mut tls) = acceptor.accept(tcp).await {
                        let mut buf = [0u8; 1];
                        if tls.read_exact(&mut buf).await.is_ok() {
                            let _ = tls.write_all(&buf).await;
                            let _ = tls.flush().await;
                        }
                    }
                });
            }
        });

        let ca_path = write(dir.path(), "ca.pem", &ca.pem());
        let trusting = client_config(&UpstreamTlsOptions {
            ca_file: Some(&ca_path),
            verify: true,
            alpn_h2: true,
        })
        .unwrap();

        let (got_a, alpn) = connect(trusting.clone(), addr, "a.example.test")
            .await
            .unwrap();
        assert_eq!(got_a, leaf_a.der);
        assert_eq!(alpn.as_deref(), Some(&b"h2"[..]));

        let (got_b, _) = connect(trusting, addr, "b.example.test").await.unwrap();
        assert_eq!(got_b, leaf_b.der);

        // Verification is on by default and the public roots do not include
        // our test CA, so this must fail.
        let untrusting = client_config(&UpstreamTlsOptions {
            ca_file: None,
            verify: true,
            alpn_h2: true,
        })
        .unwrap();
        let err = connect(untrusting, addr, "a.example.test")
            .await
            .unwrap_err();
        assert!(
            err.to_string().contains("UnknownIssuer"),
            "unexpected error: {err}"
        );

        // verify=false accepts the otherwise-untrusted chain.
        let insecure = client_config(&UpstreamTlsOptions {
            ca_file: None,
            verify: false,
            alpn_h2: false,
        })
        .unwrap();
        let (got, alpn) = connect(insecure, addr, "b.example.test").await.unwrap();
        assert_eq!(got, leaf_b.der);
        assert_eq!(alpn.as_deref(), Some(&b"http/1.1"[..]));

        server.abort();
    }

    #[test]
    fn http1_only_server_does_not_offer_h2() {
        let dir = tempfile::tempdir().unwrap();
        let ca = TestCa::new();
        let leaf_a = leaf(&ca, &["a.example.test"], |_| {});
        let certs = vec![load(dir.path(), "a", &leaf_a)];
        let config = server_config(&certs, false).unwrap();
        assert_eq!(config.alpn_protocols, vec![b"http/1.1".to_vec()]);
    }
}
