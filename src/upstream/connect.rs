//! Opening a new upstream connection: TCP (with the cluster's connect timeout), TLS when configured
//! (SNI, verification), then, for HTTP/2, hyper's handshake, whose connection task is spawned. An
//! HTTP/1.1 connection is ready as it is: our own client (`http1`) drives it from the request.
//!
//! Failures are classified (refused / timeout / TLS / other) because operators and later the health
//! logic need to tell them apart; nothing here retries.

use std::{io, sync::Arc, time::Duration};

use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;

use super::{
    cluster::{Cluster, Endpoint},
    http1::{Conn, Stream},
    pool::H2Sender,
};
use crate::{error::ProxyError, metrics};

/// A freshly opened connection.
pub enum Fresh {
    H1(Conn),
    H2(H2Sender),
}

/// Opens a connection to `ep`, bounded by the cluster's connect timeout (TCP and TLS together).
pub async fn connect(cluster: &Cluster, ep: &Endpoint) -> Result<Fresh, ProxyError> {
    let result = connect_within(cluster, ep, cluster.connect_timeout).await;
    if let Err(e) = &result {
        let reason = match e {
            ProxyError::ConnectRefused => "refused",
            ProxyError::ConnectTimeout => "timeout",
            ProxyError::UpstreamTls => "tls",
            _ => "other",
        };
        metrics::upstream_connect_error(&cluster.name, reason);
        tracing::debug!(cluster = %cluster.name, endpoint = %ep.id, reason, "upstream connect failed");
    }
    result
}

/// Opens a connection within `timeout`, counting nothing: health probes use it, so the connect-error
/// metric stays about client traffic.
pub async fn connect_within(
    cluster: &Cluster,
    ep: &Endpoint,
    timeout: Duration,
) -> Result<Fresh, ProxyError> {
    tokio::time::timeout(timeout, open(cluster, ep))
        .await
        .unwrap_or(Err(ProxyError::ConnectTimeout))
}

async fn open(cluster: &Cluster, ep: &Endpoint) -> Result<Fresh, ProxyError> {
    let tcp = TcpStream::connect(ep.addr)
        .await
        .map_err(|e| classify(&e))?;
    let _ = tcp.set_nodelay(true);
    let stream = match &cluster.tls {
        None => Stream::Plain(tcp),
        Some(tls) => {
            let name = match &tls.sni {
                Some(n) => n.clone(),
                None => ServerName::try_from(ep.host.to_string())
                    .map_err(|_| ProxyError::UpstreamTls)?,
            };
            let connector = tokio_rustls::TlsConnector::from(Arc::clone(&tls.config));
            let stream = connector.connect(name, tcp).await.map_err(|e| {
                tracing::warn!(cluster = %cluster.name, endpoint = %ep.id, error = %e, "upstream TLS handshake failed");
                ProxyError::UpstreamTls
            })?;
            Stream::Tls(Box::new(stream))
        }
    };
    match cluster.protocol {
        // Our own client: nothing to hand-shake, and no task to spawn (see `http1`).
        crate::config::UpstreamProtocol::Http1 => Ok(Fresh::H1(Conn::new(stream))),
        crate::config::UpstreamProtocol::H2 => {
            let io = TokioIo::new(stream);
            let (sender, conn) = http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .keep_alive_interval(Duration::from_secs(30))
                .keep_alive_timeout(Duration::from_secs(10))
                .handshake(io)
                .await
                .map_err(|_| ProxyError::ConnectFailed)?;
            tokio::spawn(async move {
                let _ = conn.await;
            });
            Ok(Fresh::H2(sender))
        }
    }
}

fn classify(e: &io::Error) -> ProxyError {
    match e.kind() {
        io::ErrorKind::ConnectionRefused => ProxyError::ConnectRefused,
        io::ErrorKind::TimedOut => ProxyError::ConnectTimeout,
        _ => ProxyError::ConnectFailed,
    }
}
