//! Sending one request to one endpoint and getting its response head, within a deadline.
//!
//! It owns the connection choice (a pooled one first, else a fresh one) and the one retry the core
//! allows: when a pooled connection turns out to have been closed by the upstream before our request
//! was written (a keep-alive race, RFC 9112 §9.3.1), hyper hands the request back untouched and it goes
//! once more on a fresh connection. Choosing the endpoint and any wider retry policy live elsewhere.

use std::time::Instant as StdInstant;

use http::{Request, Response};
use hyper::body::Incoming;
use tokio::time::Instant;

use super::{
    cluster::{Cluster, Endpoint},
    connect::{Fresh, connect},
    pool::H1Sender,
};
use crate::{
    body::{BodyError, ProxyBody},
    config::UpstreamProtocol,
    error::ProxyError,
};

/// A response head and, for HTTP/1, the connection to give back once its body is read to the end.
pub struct Sent {
    pub response: Response<Incoming>,
    pub reuse: Option<H1Sender>,
}

/// Sends `req` to `ep`; the response head must arrive before `deadline`.
pub async fn send(
    cluster: &Cluster,
    ep: &Endpoint,
    req: Request<ProxyBody>,
    deadline: Instant,
) -> Result<Sent, ProxyError> {
    // No wrapper future between the timeout and the send: every layer of `.await` moves its child
    // into place, and these futures are the largest on the request path.
    let sent = match cluster.protocol {
        UpstreamProtocol::Http1 => {
            tokio::time::timeout_at(deadline, send_h1(cluster, ep, req)).await
        }
        // Boxed, like every path a pooled HTTP/1 request does not take.
        UpstreamProtocol::H2 => {
            tokio::time::timeout_at(deadline, Box::pin(send_h2(cluster, ep, req))).await
        }
    };
    sent.unwrap_or(Err(ProxyError::UpstreamTimeout))
}

async fn send_h1(
    cluster: &Cluster,
    ep: &Endpoint,
    req: Request<ProxyBody>,
) -> Result<Sent, ProxyError> {
    let mut req = req;
    if let Some(mut sender) = ep.pool.checkout(StdInstant::now())
        && sender.ready().await.is_ok()
    {
        // A reused connection may be closed by the upstream while our request is on the wire
        // (RFC 9112 §9.3.1). A request that is safe to repeat and has no body to lose is kept
        // so it can go once more on a fresh connection, as nginx does for keep-alive peers.
        let replay = (req.method().is_idempotent() && req.body().is_known_empty()).then(|| {
            (
                req.method().clone(),
                req.uri().clone(),
                req.version(),
                req.headers().clone(),
            )
        });
        match sender.try_send_request(req).await {
            Ok(response) => {
                return Ok(Sent {
                    response,
                    reuse: Some(sender),
                });
            }
            Err(mut e) => match (e.take_message(), replay) {
                // Never written: the stale-connection case.
                (Some(unsent), _) => {
                    tracing::debug!(cluster = %cluster.name, endpoint = %ep.id, "pooled connection was closed; retrying on a fresh one");
                    req = unsent;
                }
                (None, Some((method, uri, version, headers))) if retryable_on_fresh(e.error()) => {
                    tracing::debug!(cluster = %cluster.name, endpoint = %ep.id, error = %e.error(), "reused connection failed before a response; replaying an idempotent request on a fresh one");
                    let mut again = Request::new(ProxyBody::empty());
                    *again.method_mut() = method;
                    *again.uri_mut() = uri;
                    *again.version_mut() = version;
                    *again.headers_mut() = headers;
                    req = again;
                }
                (None, _) => return Err(map_error(e.error())),
            },
        }
    }
    let Fresh::H1(mut sender) = Box::pin(connect(cluster, ep)).await? else {
        return Err(ProxyError::Internal);
    };
    sender.ready().await.map_err(|e| map_error(&e))?;
    match sender.send_request(req).await {
        Ok(response) => Ok(Sent {
            response,
            reuse: Some(sender),
        }),
        Err(e) => Err(map_error(&e)),
    }
}

/// Errors on a reused connection that say it died, not that the upstream answered badly or slowly.
fn retryable_on_fresh(e: &hyper::Error) -> bool {
    !(e.is_parse() || e.is_parse_status() || e.is_parse_too_large() || e.is_timeout())
        && client_body_error(e).is_none()
}

async fn send_h2(
    cluster: &Cluster,
    ep: &Endpoint,
    req: Request<ProxyBody>,
) -> Result<Sent, ProxyError> {
    let mut req = req;
    if let Some(mut sender) = ep.pool.h2()
        && sender.ready().await.is_ok()
    {
        match sender.try_send_request(req).await {
            Ok(response) => {
                return Ok(Sent {
                    response,
                    reuse: None,
                });
            }
            Err(mut e) => match e.take_message() {
                Some(unsent) => req = unsent,
                None => return Err(map_error(e.error())),
            },
        }
    }
    let Fresh::H2(mut sender) = Box::pin(connect(cluster, ep)).await? else {
        return Err(ProxyError::Internal);
    };
    ep.pool.set_h2(sender.clone());
    sender.ready().await.map_err(|e| map_error(&e))?;
    sender
        .send_request(req)
        .await
        .map(|response| Sent {
            response,
            reuse: None,
        })
        .map_err(|e| map_error(&e))
}

fn map_error(e: &hyper::Error) -> ProxyError {
    // A request body that failed on the client's side is the client's fault, never the upstream's.
    if let Some(body) = client_body_error(e) {
        return match body {
            BodyError::Idle => ProxyError::ClientTimeout,
            BodyError::Peer(_) => ProxyError::BadRequest("invalid request body"),
        };
    }
    if e.is_parse() || e.is_parse_status() || e.is_parse_too_large() {
        ProxyError::UpstreamProtocol
    } else if e.is_timeout() {
        ProxyError::UpstreamTimeout
    } else {
        ProxyError::UpstreamReset
    }
}

fn client_body_error(e: &hyper::Error) -> Option<&BodyError> {
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        if let Some(b) = c.downcast_ref::<BodyError>() {
            return Some(b);
        }
        cause = c.source();
    }
    None
}
