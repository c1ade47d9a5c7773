//! Upgraded connections (WebSocket and other HTTP/1.1 `Upgrade`s): after the upstream's `101`, the
//! client and upstream connections become one byte tunnel, closed when either side closes or when no
//! byte crosses in either direction for the cluster's `tunnel_idle_timeout`.

use std::time::Duration;

use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::upstream::http1::Conn;

/// Joins the client's upgraded connection with the upstream's and copies until close or idle.
pub async fn tunnel(client: OnUpgrade, upstream: Conn, idle: Duration) {
    let client = match client.await {
        Ok(c) => c,
        Err(e) => {
            tracing::debug!(error = %e, "upgrade failed");
            return;
        }
    };
    let (upstream, early) = upstream.into_upgraded();
    let (mut cr, mut cw) = tokio::io::split(TokioIo::new(client));
    let (mut ur, mut uw) = tokio::io::split(upstream);
    // Bytes the upstream sent right behind its 101 belong to the new protocol.
    if !early.is_empty() && send(&mut cw, &early).await.is_err() {
        return;
    }
    let mut cbuf = vec![0u8; 16 * 1024];
    let mut ubuf = vec![0u8; 16 * 1024];
    let (mut c_open, mut u_open) = (true, true);
    while c_open || u_open {
        let step = tokio::time::timeout(idle, async {
            tokio::select! {
                r = cr.read(&mut cbuf), if c_open => match r {
                    Ok(0) | Err(_) => { c_open = false; let _ = uw.shutdown().await; Ok(()) }
                    Ok(n) => send(&mut uw, &cbuf[..n]).await,
                },
                r = ur.read(&mut ubuf), if u_open => match r {
                    Ok(0) | Err(_) => { u_open = false; let _ = cw.shutdown().await; Ok(()) }
                    Ok(n) => send(&mut cw, &ubuf[..n]).await,
                },
            }
        })
        .await;
        match step {
            Ok(Ok(())) => {}
            Ok(Err(_)) => break,
            Err(_) => {
                tracing::debug!("tunnel idle timeout");
                break;
            }
        }
    }
}

/// Writes and flushes: a TLS stream may keep written bytes inside rustls until flushed, and the
/// tunnel then only waits on reads, so unflushed bytes would sit there until the next write.
async fn send<W: AsyncWrite + Unpin>(w: &mut W, bytes: &[u8]) -> std::io::Result<()> {
    w.write_all(bytes).await?;
    w.flush().await
}
