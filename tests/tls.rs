//! TLS on both sides, with certificates made at test time: SNI selection and ALPN downstream,
//! verified TLS upstream (and its failures, bad-inputs row 58), and expired certificates refused at
//! validation with their path.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls_pki_types::{CertificateDer, ServerName};
use support::{
    EchoServer, Proxy, Upstream,
    certs::{Leaf, Pki},
    get, get_with, one_route,
};
use tokio::net::TcpStream;

/// A proxy whose only listener serves TLS with these certificates (the first is the default).
async fn tls_proxy(certs: &[&Leaf], upstream: std::net::SocketAddr) -> Proxy {
    let mut toml = String::from("[listeners.tls]\n");
    for c in certs {
        toml.push_str(&format!(
            "[[listeners.tls.tls.certificates]]\ncert = {:?}\nkey = {:?}\n",
            c.cert_file.display().to_string(),
            c.key_file.display().to_string()
        ));
    }
    toml.push_str(&one_route(&[upstream]));
    Proxy::start(&toml).await
}

/// What one HTTPS exchange showed.
struct Exchange {
    cert: CertificateDer<'static>,
    alpn: Option<Vec<u8>>,
    status: u16,
    body: Bytes,
}

/// Connects with SNI `name` (verifying against `pki`), offers `alpn`, and GETs `/` in whatever
/// protocol was negotiated.
async fn https_get(proxy: &Proxy, pki: &Pki, name: &str, alpn: &[&[u8]]) -> Exchange {
    let tcp = TcpStream::connect(proxy.addr()).await.unwrap();
    let connector = tokio_rustls::TlsConnector::from(pki.client_config(alpn));
    let tls = connector
        .connect(ServerName::try_from(name.to_owned()).unwrap(), tcp)
        .await
        .expect("TLS handshake with the proxy");
    let (_, session) = tls.get_ref();
    let cert = session.peer_certificates().unwrap()[0].clone();
    let negotiated = session.alpn_protocol().map(<[u8]>::to_vec);
    let (status, body) = if negotiated.as_deref() == Some(b"h2") {
        let (mut sender, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
                .await
                .unwrap();
        tokio::spawn(conn);
        let req = Request::get(format!("https://{name}/"))
            .body(Empty::<Bytes>::new())
            .unwrap();
        let rsp = sender.send_request(req).await.unwrap();
        let status = rsp.status().as_u16();
        (status, rsp.into_body().collect().await.unwrap().to_bytes())
    } else {
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .unwrap();
        tokio::spawn(conn);
        let req = Request::get("/")
            .header("host", name)
            .body(Empty::<Bytes>::new())
            .unwrap();
        let rsp = sender.send_request(req).await.unwrap();
        let status = rsp.status().as_u16();
        (status, rsp.into_body().collect().await.unwrap().to_bytes())
    };
    Exchange {
        cert,
        alpn: negotiated,
        status,
        body,
    }
}

#[tokio::test]
async fn listener_picks_the_certificate_matching_the_sni() {
    let pki = Pki::new("sni");
    let a = pki.leaf("a.example.test");
    let b = pki.leaf("b.example.test");
    let up = Upstream::start("up").await;
    let proxy = tls_proxy(&[&a, &b], up.addr()).await;

    let to_a = https_get(&proxy, &pki, "a.example.test", &[b"http/1.1"]).await;
    let to_b = https_get(&proxy, &pki, "b.example.test", &[b"http/1.1"]).await;

    assert_eq!(to_a.cert, a.der);
    assert_eq!(to_b.cert, b.der);
    assert_eq!((to_a.status, to_b.status), (200, 200));
    let seen = up.last();
    assert_eq!(seen.header("x-forwarded-proto"), Some("https"));
    assert_eq!(seen.header("host"), Some("b.example.test"));
}

#[tokio::test]
async fn alpn_negotiates_h2_or_http11_and_both_are_served() {
    let pki = Pki::new("alpn");
    let a = pki.leaf("a.example.test");
    let up = Upstream::start("up").await;
    let proxy = tls_proxy(&[&a], up.addr()).await;

    let h2 = https_get(&proxy, &pki, "a.example.test", &[b"h2", b"http/1.1"]).await;
    let h1 = https_get(&proxy, &pki, "a.example.test", &[b"http/1.1"]).await;

    assert_eq!(h2.alpn.as_deref(), Some(b"h2".as_slice()));
    assert_eq!(h2.status, 200);
    assert!(!h2.body.is_empty());
    assert_eq!(h1.alpn.as_deref(), Some(b"http/1.1".as_slice()));
    assert_eq!(h1.status, 200);
    assert_eq!(up.hits(), 2);
}

/// A proxy in front of `upstream` speaking TLS to it with these `[clusters.up.tls]` keys.
async fn proxy_to_tls_upstream(
    upstream: std::net::SocketAddr,
    tls_keys: &str,
    protocol: &str,
) -> Proxy {
    let cluster = format!("protocol = \"{protocol}\"\n[clusters.up.tls]\n{tls_keys}");
    Proxy::start_logged(&support::one_route_with(&[upstream], &cluster)).await
}

#[tokio::test]
async fn tls_upstream_verified_with_its_ca_file() {
    let pki = Pki::new("upstream");
    let leaf = pki.leaf("a.example.test");
    let echo = EchoServer::start_tls("secure", pki.server_config(&leaf, &[b"http/1.1"])).await;
    let proxy = proxy_to_tls_upstream(
        echo.addr(),
        &format!(
            "ca_file = {:?}\nsni = \"a.example.test\"",
            pki.ca_file.display().to_string()
        ),
        "http1",
    )
    .await;

    let r = get(&proxy.url("/")).await;

    assert_eq!(r.status, 200);
    assert_eq!(r.upstream(), "secure");
}

#[tokio::test]
async fn h2_over_tls_upstream_negotiated_by_alpn() {
    let pki = Pki::new("upstream-h2");
    let leaf = pki.leaf("a.example.test");
    let echo = EchoServer::start_tls("secure-h2", pki.server_config(&leaf, &[b"h2"])).await;
    let proxy = proxy_to_tls_upstream(
        echo.addr(),
        &format!(
            "ca_file = {:?}\nsni = \"a.example.test\"",
            pki.ca_file.display().to_string()
        ),
        "h2",
    )
    .await;

    let r = get(&proxy.url("/")).await;

    assert_eq!(r.status, 200);
    assert_eq!(echo.versions(), vec![http::Version::HTTP_2]);
}

// Row 58: a certificate from another CA is refused, with no plaintext fallback.
#[tokio::test]
async fn tls_upstream_with_a_certificate_from_another_ca_is_502() {
    let pki = Pki::new("real");
    let other = Pki::new("other");
    let leaf = pki.leaf("a.example.test");
    let echo = EchoServer::start_tls("secure", pki.server_config(&leaf, &[b"http/1.1"])).await;
    let proxy = proxy_to_tls_upstream(
        echo.addr(),
        &format!(
            "ca_file = {:?}\nsni = \"a.example.test\"",
            other.ca_file.display().to_string()
        ),
        "http1",
    )
    .await;

    let r = get_with(&proxy.url("/"), &[("x-request-id", "badca-1")]).await;

    assert_eq!(r.status, 502);
    assert_eq!(
        echo.hits(),
        0,
        "no request may reach an unverified upstream"
    );
    let e = proxy.access_log_entry("badca-1").await;
    assert!(e["flags"].as_str().unwrap().contains("TLS"), "{e}");
}

// Row 58: the wrong name is refused.
#[tokio::test]
async fn tls_upstream_with_a_certificate_for_another_name_is_502() {
    let pki = Pki::new("names");
    let leaf = pki.leaf("a.example.test");
    let echo = EchoServer::start_tls("secure", pki.server_config(&leaf, &[b"http/1.1"])).await;
    let proxy = proxy_to_tls_upstream(
        echo.addr(),
        &format!(
            "ca_file = {:?}\nsni = \"b.example.test\"",
            pki.ca_file.display().to_string()
        ),
        "http1",
    )
    .await;

    let r = get(&proxy.url("/")).await;

    assert_eq!(r.status, 502);
    assert_eq!(echo.hits(), 0);
}

#[tokio::test]
async fn expired_listener_certificate_is_reported_with_its_path() {
    let pki = Pki::new("expired");
    let old = pki.expired_leaf("a.example.test");
    let text = format!(
        r#"
[admin]
listen = "127.0.0.1:0"

[listeners.web]
listen = "127.0.0.1:0"
[[listeners.web.tls.certificates]]
cert = "{}"
key = "{}"

[[routes]]
name = "all"
cluster = "up"
[routes.match]
path_prefix = "/"

[clusters.up]
endpoints = ["127.0.0.1:9"]
"#,
        old.cert_file.file_name().unwrap().to_string_lossy(),
        old.key_file.file_name().unwrap().to_string_lossy()
    );
    let source = palisade::config::parse(&text, pki.dir().to_path_buf()).unwrap();

    let d = palisade::config::validate(&source.config, &source.base_dir);

    let problem = d
        .errors
        .iter()
        .find(|p| p.path == "listeners.web.tls.certificates[0]")
        .unwrap_or_else(|| panic!("no problem for the certificate: {:?}", d.errors));
    assert!(problem.message.contains("expired"), "{problem}");
    let started = palisade::server::start(&source).await;
    let err = started.expect_err("an expired certificate must not be served");
    assert!(
        err.problems
            .iter()
            .any(|p| p.path == "listeners.web.tls.certificates[0]"),
        "{err}"
    );
}
