//! Sending one request to one endpoint and getting its response head, within a deadline.
//!
//! It owns the connection choice (a pooled one first, else a fresh one) and the one retry the core
//! allows. A pooled connection the upstream closed while it idled is noticed before use (the socket
//! turned readable) and skipped. When the close races our request instead (RFC 9112 §9.3.1: our
//! request is on the wire, the upstream's FIN too), a request that is safe to repeat and has no body
//! to lose goes once more on a fresh connection, as nginx does for keep-alive peers. Choosing the
//! endpoint and any wider retry policy live elsewhere.

use std::{sync::Arc, time::Instant as StdInstant};

use http::{Method, Request, Response, request::Parts};
use hyper::body::Incoming;
use tokio::time::Instant;

use super::{
    cluster::{Cluster, Endpoint},
    connect::{Fresh, connect},
    http1::{self, Conn, HeadError, Outgoing, ResponseBody, SendError},
};
use crate::{
    body::{BodyError, ProxyBody},
    config::UpstreamProtocol,
    error::ProxyError,
};

/// An upstream response body: our HTTP/1.1 client's, hyper's for HTTP/2, or one read whole
/// already (a small response buffered so that a reset mid-body could still be retried).
pub enum UpstreamBody {
    H1(ResponseBody),
    H2(Incoming),
    Buffered(bytes::Bytes),
}

/// A response head and its body, still on the upstream connection.
pub struct Sent {
    pub response: Response<UpstreamBody>,
}

/// An attempt that got no response head.
pub struct Failed {
    pub error: ProxyError,
    /// The request body, untouched, when the request never left (no connection could be opened):
    /// another attempt can send it, whatever its size.
    pub body: Option<ProxyBody>,
}

impl From<ProxyError> for Failed {
    fn from(error: ProxyError) -> Self {
        Self { error, body: None }
    }
}

/// Sends the request (`parts` and `body`) to `ep`; the response head must arrive before
/// `deadline`. `parts` is only borrowed, so a retry can send it again. `now` is the caller's clock
/// reading (for the pool's idle check).
pub async fn send(
    cluster: &Cluster,
    ep: &Arc<Endpoint>,
    parts: &Parts,
    body: ProxyBody,
    deadline: Instant,
    now: StdInstant,
) -> Result<Sent, Failed> {
    // No wrapper future between the timeout and the send: every layer of `.await` moves its child
    // into place, and these futures are the largest on the request path.
    let sent = match cluster.protocol {
        UpstreamProtocol::Http1 => {
            tokio::time::timeout_at(deadline, send_h1(cluster, ep, parts, body, deadline, now))
                .await
        }
        // Boxed, like every path a pooled HTTP/1 request does not take.
        UpstreamProtocol::H2 => {
            tokio::time::timeout_at(deadline, Box::pin(send_h2(cluster, ep, parts, body))).await
        }
    };
    sent.unwrap_or(Err(Failed::from(ProxyError::UpstreamTimeout)))
}

async fn send_h1(
    cluster: &Cluster,
    ep: &Arc<Endpoint>,
    parts: &Parts,
    body: ProxyBody,
    deadline: Instant,
    now: StdInstant,
) -> Result<Sent, Failed> {
    let head_request = parts.method == Method::HEAD;
    let replayable = parts.method.is_idempotent() && body.is_known_empty();
    let (mut conn, pooled) = match ep.pool.checkout(now) {
        Some(c) => (c, true),
        None => match Box::pin(open_h1(cluster, ep, deadline)).await {
            Ok(c) => c,
            // Nothing was sent: the body goes back for another attempt.
            Err(error) => {
                return Err(Failed {
                    error,
                    body: Some(body),
                });
            }
        },
    };
    // The head is encoded into the connection's buffer, reusing its allocation.
    let mut head = std::mem::take(&mut conn.wbuf);
    head.clear();
    let framing = http1::encode_head(parts, &body, &mut head);
    let mut outgoing = Outgoing::new(body, framing);
    conn.wbuf = head;
    let mut sent_all = true;
    match http1::exchange(&mut conn, head_request, &mut outgoing, &mut sent_all).await {
        Ok(h) => return Ok(respond(conn, h, outgoing, sent_all, ep)),
        Err(SendError::Closed { answered: false }) if replayable && pooled => {
            tracing::debug!(cluster = %cluster.name, endpoint = %ep.id, "reused connection closed before a response; replaying an idempotent request on a fresh one");
        }
        Err(e) => return Err(map_error(e).into()),
    }
    let head = std::mem::take(&mut conn.wbuf);
    drop(conn);
    let (mut conn, _) = Box::pin(open_h1(cluster, ep, deadline)).await?;
    conn.wbuf = head;
    let mut sent_all = true;
    match http1::exchange(&mut conn, head_request, &mut outgoing, &mut sent_all).await {
        Ok(h) => Ok(respond(conn, h, outgoing, sent_all, ep)),
        Err(e) => Err(map_error(e).into()),
    }
}

/// A connection for a request that found none idle in the pool: a new one within the cluster's
/// and endpoint's connection caps, or, when the caps are reached, whichever comes first of a
/// freed slot and a connection checked back in, waiting as one of at most `max_pending` for up
/// to `queue_timeout` (then 503), and never past the attempt's own `deadline`: the wait is ours,
/// not the endpoint's, so it must end as our 503 rather than as the endpoint's timeout. Returns
/// whether the connection came from the pool.
async fn open_h1(
    cluster: &Cluster,
    ep: &Arc<Endpoint>,
    deadline: Instant,
) -> Result<(Conn, bool), ProxyError> {
    let limits = &cluster.limits;
    let slots = ep.connection_slots.as_ref();
    let mut slot = limits.try_connection(slots);
    if slot.is_none()
        && limits.connections() >= limits.max_connections
        && evict_idle_elsewhere(cluster, ep)
    {
        slot = limits.try_connection(slots);
    }
    let slot = match slot {
        Some(s) => s,
        None => {
            let _waiting = limits.wait().map_err(|o| o.error(&cluster.name))?;
            let deadline = deadline.min(Instant::now() + limits.queue_timeout);
            loop {
                tokio::select! {
                    s = limits.connection(slots) => break s.ok_or(ProxyError::Internal)?,
                    () = ep.pool.returned.notified() => {
                        if let Some(c) = ep.pool.checkout(StdInstant::now()) {
                            return Ok((c, true));
                        }
                    }
                    () = tokio::time::sleep_until(deadline) => {
                        return Err(limits.queue_timed_out().error(&cluster.name));
                    }
                }
            }
        }
    };
    match connect(cluster, ep).await? {
        Fresh::H1(mut c) => {
            c.slot = Some(slot);
            Ok((c, false))
        }
        Fresh::H2(_) => Err(ProxyError::Internal),
    }
}

/// Under the cluster's cap, idle connections to other endpoints should not starve this one:
/// closes the oldest idle connection of another endpoint, if any.
fn evict_idle_elsewhere(cluster: &Cluster, ep: &Arc<Endpoint>) -> bool {
    cluster
        .members()
        .endpoints
        .iter()
        .filter(|e| !Arc::ptr_eq(e, ep))
        .any(|e| e.pool.evict_oldest())
}

/// The response head and a body that reads the rest from `conn` (and returns it to `ep`'s pool).
pub fn respond(
    conn: Conn,
    head: http1::ResponseHead,
    outgoing: Option<Box<Outgoing>>,
    sent_all: bool,
    ep: &Arc<Endpoint>,
) -> Sent {
    let http1::ResponseHead {
        status,
        version,
        headers,
        framing,
        keep_alive,
    } = head;
    // Framed by Transfer-Encoding with a Content-Length beside it: the message was built by
    // something confused (RFC 9112 §6.3); do not trust the connection with another request.
    let keep_alive = keep_alive
        && !(headers.contains_key(http::header::TRANSFER_ENCODING)
            && headers.contains_key(http::header::CONTENT_LENGTH));
    let upgrade = status == http::StatusCode::SWITCHING_PROTOCOLS;
    let body = ResponseBody::new(
        conn,
        framing,
        keep_alive,
        upgrade,
        outgoing,
        sent_all,
        Arc::clone(ep),
    );
    let mut response = Response::new(UpstreamBody::H1(body));
    *response.status_mut() = status;
    *response.version_mut() = version;
    *response.headers_mut() = headers;
    Sent { response }
}

fn map_error(e: SendError) -> ProxyError {
    match e {
        // A request body that failed on the client's side is the client's fault, never the
        // upstream's.
        SendError::Client(body) => client_body_error(&body),
        SendError::Invalid(HeadError::TooLarge | HeadError::Invalid(_)) => {
            ProxyError::UpstreamProtocol
        }
        SendError::Closed { .. } => ProxyError::UpstreamReset,
    }
}

/// A client request body's failure, as the error answered.
pub fn client_body_error(e: &BodyError) -> ProxyError {
    match e {
        BodyError::Idle | BodyError::TooSlow => ProxyError::ClientTimeout,
        BodyError::TooLarge => ProxyError::PayloadTooLarge,
        BodyError::Peer(_) => ProxyError::BadRequest("invalid request body"),
    }
}

async fn send_h2(
    cluster: &Cluster,
    ep: &Endpoint,
    parts: &Parts,
    body: ProxyBody,
) -> Result<Sent, Failed> {
    // hyper takes the request by value: HTTP/2 pays for a copy of the head, HTTP/1 does not.
    let mut req = Request::from_parts(parts.clone(), body);
    if let Some(mut sender) = ep.pool.h2()
        && sender.ready().await.is_ok()
    {
        match sender.try_send_request(req).await {
            Ok(response) => return Ok(h2_sent(response)),
            Err(mut e) => match e.take_message() {
                Some(unsent) => req = unsent,
                None => return Err(map_hyper_error(e.error()).into()),
            },
        }
    }
    let mut sender = match Box::pin(connect(cluster, ep)).await {
        Ok(Fresh::H2(s)) => s,
        Ok(Fresh::H1(_)) => return Err(ProxyError::Internal.into()),
        Err(error) => {
            return Err(Failed {
                error,
                body: Some(req.into_body()),
            });
        }
    };
    ep.pool.set_h2(sender.clone());
    sender
        .ready()
        .await
        .map_err(|e| Failed::from(map_hyper_error(&e)))?;
    sender
        .send_request(req)
        .await
        .map(h2_sent)
        .map_err(|e| map_hyper_error(&e).into())
}

fn h2_sent(response: Response<Incoming>) -> Sent {
    Sent {
        response: response.map(UpstreamBody::H2),
    }
}

fn map_hyper_error(e: &hyper::Error) -> ProxyError {
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        if let Some(body) = c.downcast_ref::<BodyError>() {
            return client_body_error(body);
        }
        if c.downcast_ref::<h2::Error>()
            .and_then(h2::Error::reason)
            .is_some_and(|r| r == h2::Reason::REFUSED_STREAM)
        {
            return ProxyError::RefusedStream;
        }
        cause = c.source();
    }
    if e.is_parse() || e.is_parse_status() || e.is_parse_too_large() {
        ProxyError::UpstreamProtocol
    } else if e.is_timeout() {
        ProxyError::UpstreamTimeout
    } else {
        ProxyError::UpstreamReset
    }
}
