//! `ProxyBody`: the one body type both directions use, streamed frame by frame, never buffered whole.
//!
//! It owns three things a plain `Incoming` cannot do: an idle timeout between frames (a trickling peer
//! cannot hold a request forever), a byte count, and an end hook that runs exactly once when the body
//! finished or was dropped, saying which (the access log, endpoint stats and connection reuse hang off
//! it). An error mid-stream is passed to hyper, which then cuts the connection (HTTP/1) or resets the
//! stream (HTTP/2), so the client sees truncation, never a complete-looking response.

use std::{
    fmt,
    pin::Pin,
    task::{Context, Poll, ready},
    time::Duration,
};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::time::{Instant, Sleep};

use crate::upstream::{forward::UpstreamBody, http1::ResponseBody};

/// How a body ended, handed to the end hook.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BodyEnd {
    /// The last frame was delivered (or the body was empty by construction).
    pub complete: bool,
    /// Data bytes delivered.
    pub bytes: u64,
    /// Why it did not complete, when known (an access-log flag).
    pub failure: Option<&'static str>,
}

pub type EndHook = Box<dyn FnOnce(BodyEnd) + Send>;

/// Why a body stopped early.
#[derive(Debug)]
pub enum BodyError {
    /// No frame within the idle timeout.
    Idle,
    /// More bytes than the request body limit.
    TooLarge,
    /// Slower on average than the minimum request-body rate.
    TooSlow,
    /// The peer's stream failed (reset, closed mid-body, bad chunk).
    Peer(Box<dyn std::error::Error + Send + Sync>),
}

impl fmt::Display for BodyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Idle => f.write_str("body idle timeout"),
            Self::TooLarge => f.write_str("body larger than the limit"),
            Self::TooSlow => f.write_str("body slower than the minimum rate"),
            Self::Peer(e) => write!(f, "body stream failed: {e}"),
        }
    }
}

impl std::error::Error for BodyError {}

enum Inner {
    Full(Option<Bytes>),
    Incoming(Incoming),
    /// An upstream HTTP/1.1 response body, read by our own client.
    H1(ResponseBody),
    /// Anything else (a replayed request body, a test's stream); off the hot path, so boxed.
    Boxed(Pin<Box<dyn Body<Data = Bytes, Error = BodyError> + Send>>),
}

pub struct ProxyBody {
    inner: Inner,
    /// The idle limit and its timer, created on the first wait: small bodies that are already
    /// buffered never pay for a timer.
    idle: Option<(Duration, Option<Pin<Box<Sleep>>>)>,
    bytes: u64,
    done: bool,
    failure: Option<&'static str>,
    on_end: Option<EndHook>,
    /// A client request body's size cap and minimum rate (boxed: most bodies have neither).
    limits: Option<Box<RequestLimits>>,
}

/// What a client's request body may not do: exceed `max_bytes` (0 = no cap), or average fewer
/// than `min_rate` bytes per second once `grace` has passed (0 = no minimum: slow POST).
#[derive(Debug, Clone, Copy)]
pub struct RequestLimits {
    pub max_bytes: u64,
    pub min_rate: u32,
    pub grace: Duration,
    pub started: Instant,
}

impl RequestLimits {
    fn check(&self, bytes: u64, now: Instant) -> Result<(), BodyError> {
        if self.max_bytes > 0 && bytes > self.max_bytes {
            return Err(BodyError::TooLarge);
        }
        if self.min_rate > 0 {
            let took = now.saturating_duration_since(self.started);
            if took > self.grace && (bytes as f64) < f64::from(self.min_rate) * took.as_secs_f64() {
                return Err(BodyError::TooSlow);
            }
        }
        Ok(())
    }
}

impl fmt::Debug for ProxyBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProxyBody")
            .field("bytes", &self.bytes)
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}

impl ProxyBody {
    pub fn empty() -> Self {
        Self::full(Bytes::new())
    }

    pub fn full(b: impl Into<Bytes>) -> Self {
        let b = b.into();
        let data = if b.is_empty() { None } else { Some(b) };
        Self {
            inner: Inner::Full(data),
            idle: None,
            bytes: 0,
            done: false,
            failure: None,
            on_end: None,
            limits: None,
        }
    }

    /// Streams a peer's body; `idle` bounds the silence between two frames.
    pub fn streaming(body: Incoming, idle: Duration) -> Self {
        Self {
            inner: Inner::Incoming(body),
            idle: Some((idle, None)),
            bytes: 0,
            done: false,
            failure: None,
            on_end: None,
            limits: None,
        }
    }

    /// Applies a client request body's size cap and minimum rate.
    pub fn with_limits(mut self, limits: RequestLimits) -> Self {
        if limits.max_bytes > 0 || limits.min_rate > 0 {
            self.limits = Some(Box::new(limits));
        }
        self
    }

    /// Streams an upstream response body; `idle` bounds the silence between two frames.
    pub fn upstream(body: UpstreamBody, idle: Duration) -> Self {
        let inner = match body {
            UpstreamBody::H1(b) => Inner::H1(b),
            UpstreamBody::H2(b) => Inner::Incoming(b),
            UpstreamBody::Buffered(b) => Inner::Full((!b.is_empty()).then_some(b)),
        };
        Self {
            inner,
            idle: Some((idle, None)),
            bytes: 0,
            done: false,
            failure: None,
            on_end: None,
            limits: None,
        }
    }

    /// Any body with our error type (a retry's replay of a request body, a test's stream). No idle
    /// limit of its own: the body inside has one if it needs one.
    pub fn boxed(body: impl Body<Data = Bytes, Error = BodyError> + Send + 'static) -> Self {
        Self {
            inner: Inner::Boxed(Box::pin(body)),
            idle: None,
            bytes: 0,
            done: false,
            failure: None,
            on_end: None,
            limits: None,
        }
    }

    /// Runs `hook` once, when the body ends or is dropped.
    pub fn on_end(mut self, hook: EndHook) -> Self {
        self.on_end = Some(hook);
        self
    }

    /// True when the body carries no data at all (for `Content-Length: 0` decisions).
    pub fn is_known_empty(&self) -> bool {
        matches!(self.inner, Inner::Full(None))
    }

    fn finish(&mut self) {
        if let Some(hook) = self.on_end.take() {
            let complete = self.done || (self.failure.is_none() && self.is_end_stream());
            hook(BodyEnd {
                complete,
                bytes: self.bytes,
                failure: if complete {
                    None
                } else {
                    Some(self.failure.unwrap_or("DC"))
                },
            });
        }
    }
}

impl Drop for ProxyBody {
    fn drop(&mut self) {
        self.finish();
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = &mut *self;
        let polled = match &mut this.inner {
            Inner::Full(data) => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            Inner::Incoming(body) => match Pin::new(body).poll_frame(cx) {
                Poll::Ready(Some(Err(e))) => {
                    this.failure = Some("UR");
                    Poll::Ready(Some(Err(BodyError::Peer(Box::new(e)))))
                }
                Poll::Ready(Some(Ok(f))) => Poll::Ready(Some(Ok(f))),
                Poll::Ready(None) => Poll::Ready(None),
                Poll::Pending => Poll::Pending,
            },
            Inner::H1(body) => {
                let polled = Pin::new(body).poll_frame(cx);
                if let Poll::Ready(Some(Err(e))) = &polled {
                    this.failure = Some(crate::upstream::http1::failure_flag(e));
                }
                polled
            }
            Inner::Boxed(body) => body.as_mut().poll_frame(cx),
        };
        match polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(d) = frame.data_ref() {
                    this.bytes += d.len() as u64;
                }
                if let Some(limits) = &this.limits
                    && let Err(e) = limits.check(this.bytes, Instant::now())
                {
                    this.failure = Some(match e {
                        BodyError::TooLarge => "DPE",
                        _ => "DT",
                    });
                    this.finish();
                    return Poll::Ready(Some(Err(e)));
                }
                if let Some((idle, Some(sleep))) = &mut this.idle {
                    sleep.as_mut().reset(Instant::now() + *idle);
                }
                if matches!(this.inner, Inner::Full(None)) {
                    this.done = true;
                    this.finish();
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(None) => {
                this.done = true;
                this.finish();
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(e))) => {
                this.finish();
                Poll::Ready(Some(Err(e)))
            }
            Poll::Pending => {
                if let Some((idle, sleep)) = &mut this.idle {
                    let sleep = sleep.get_or_insert_with(|| Box::pin(tokio::time::sleep(*idle)));
                    ready!(sleep.as_mut().poll(cx));
                    this.failure = Some("SI");
                    this.finish();
                    return Poll::Ready(Some(Err(BodyError::Idle)));
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Inner::Full(d) => d.is_none(),
            Inner::Incoming(b) => b.is_end_stream(),
            Inner::H1(b) => b.is_end_stream(),
            Inner::Boxed(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Inner::Full(Some(d)) => SizeHint::with_exact(d.len() as u64),
            Inner::Full(None) => SizeHint::with_exact(0),
            Inner::Incoming(b) => b.size_hint(),
            Inner::H1(b) => b.size_hint(),
            Inner::Boxed(b) => b.size_hint(),
        }
    }
}

use std::future::Future as _;

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use http_body_util::BodyExt;

    use super::*;

    fn recorder() -> (Arc<Mutex<Vec<BodyEnd>>>, EndHook) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        (seen, Box::new(move |end| s.lock().unwrap().push(end)))
    }

    #[tokio::test]
    async fn full_body_reports_complete_once() {
        let (seen, hook) = recorder();
        let body = ProxyBody::full("hello").on_end(hook);
        let bytes = body.collect().await.unwrap().to_bytes();
        assert_eq!(&bytes[..], b"hello");
        let seen = seen.lock().unwrap();
        assert_eq!(
            *seen,
            vec![BodyEnd {
                complete: true,
                bytes: 5,
                failure: None
            }]
        );
    }

    #[tokio::test]
    async fn dropped_before_end_reports_client_abort() {
        let (seen, hook) = recorder();
        drop(ProxyBody::full("unsent").on_end(hook));
        assert_eq!(
            *seen.lock().unwrap(),
            vec![BodyEnd {
                complete: false,
                bytes: 0,
                failure: Some("DC")
            }]
        );
    }
}
