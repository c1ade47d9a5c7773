//! Upgraded connections (WebSocket and other HTTP/1.1 `Upgrade`s): after the upstream's `101`, the
//! client and upstream connections become one byte tunnel, closed when either side closes or when no
//! byte crosses in either direction for the cluster's `tunnel_idle_timeout`.

use std::time::Duration;

use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Joins the two upgraded halves and copies until close or idle.
pub async fn tunnel(client: OnUpgrade, upstream: OnUpgrade, idle: Duration) {
    let (client, upstream) = match tokio::try_join!(client, upstream) {
        Ok(pair) => pair,
        Err(e) => {
            tracing::debug!(error = %e, "upgrade failed");
            return;
        }
    };
    let (mut cr, mut cw) = tokio::io::split(TokioIo::new(client));
    let (mut ur, mut uw) = tokio::io::split(TokioIo::new(upstream));
    let mut cbuf = vec![0u8; 16 * 1024];
    let mut ubuf = vec![0u8; 16 * 1024];
    let (mut c_open, mut u_open) = (true, true);
    while c_open || u_open {
        let step = tokio::time::timeout(idle, async {
            tokio::select! {
                r = cr.read(&mut cbuf), if c_open => match r {
                    Ok(0) | Err(_) => { c_open = false; let _ = uw.shutdown().await; Ok(()) }
                    Ok(n) => uw.write_all(&cbuf[..n]).await,
                },
                r = ur.read(&mut ubuf), if u_open => match r {
                    Ok(0) | Err(_) => { u_open = false; let _ = cw.shutdown().await; Ok(()) }
                    Ok(n) => cw.write_all(&ubuf[..n]).await,
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
