//! `Conn`: one HTTP/1.1 connection to an upstream, and `exchange`, which sends a request on it and
//! waits for the response head.
//!
//! Everything runs in the request's own task: no connection task, no channel between the request
//! and the socket, no wake-up of another task per request. That is most of what this client saves
//! over hyper's (see bench/README.md). The pool keeps idle `Conn`s; the response body
//! (`response.rs`) hands its `Conn` back when the response was read to the end.

use std::{
    fmt, io,
    pin::Pin,
    task::{Context, Poll, ready},
};

use bytes::{Bytes, BytesMut};
use http::StatusCode;
use tokio::io::AsyncWrite;

use super::{
    head::{self, HeadError, ResponseHead},
    request::{Outgoing, OutgoingError},
    stream::Stream,
};
use crate::{body::BodyError, upstream::limits::ConnSlot};

/// Most header fields accepted in an upstream response head (hyper's client default).
pub const MAX_HEADERS: usize = 100;
/// Largest upstream response head accepted; beyond it the response is refused with 502.
pub const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Read buffer growth step; most heads and small bodies arrive in one read of this size.
const READ_CHUNK: usize = 8 * 1024;

pub struct Conn {
    pub(super) stream: Stream,
    pub(super) rbuf: BytesMut,
    /// The encoded request head; kept with the connection so its allocation is reused.
    pub wbuf: Vec<u8>,
    /// The cluster's (and endpoint's) connection slot, given back when the connection closes.
    pub slot: Option<ConnSlot>,
}

impl fmt::Debug for Conn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Conn").finish_non_exhaustive()
    }
}

impl Conn {
    pub fn new(stream: Stream) -> Self {
        Self {
            stream,
            rbuf: BytesMut::new(),
            wbuf: Vec::new(),
            slot: None,
        }
    }

    /// An idle connection is usable when nothing arrived on it since its last response.
    pub fn is_idle_open(&mut self) -> bool {
        self.rbuf.is_empty() && self.stream.is_idle_open()
    }

    /// The raw stream after a `101 Switching Protocols`, with any bytes the upstream sent after the
    /// head (they belong to the new protocol).
    pub fn into_upgraded(self) -> (Stream, Bytes) {
        (self.stream, self.rbuf.freeze())
    }

    pub(super) fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.rbuf.capacity() - self.rbuf.len() < 1024 {
            self.rbuf.reserve(READ_CHUNK);
        }
        tokio_util::io::poll_read_buf(Pin::new(&mut self.stream), cx, &mut self.rbuf)
    }
}

/// Why an exchange ended without a response head.
#[derive(Debug)]
pub enum SendError {
    /// The connection failed or closed; `answered` says whether any response byte had arrived
    /// (a request nobody answered may be replayed, an answered one may not).
    Closed { answered: bool },
    /// The upstream's response head was malformed or too large.
    Invalid(HeadError),
    /// The client's request body failed.
    Client(BodyError),
}

/// Writes the request head in `conn.wbuf`, keeps `outgoing` (the body) moving, and returns the
/// first final response head (1xx interim responses are read past; `101` is final).
/// `outgoing` is left `Some` when the body is still being sent, and set to `None` when it was sent
/// completely or when writing failed (then `sent_all` is false).
pub async fn exchange(
    conn: &mut Conn,
    head_request: bool,
    outgoing: &mut Option<Box<Outgoing>>,
    sent_all: &mut bool,
) -> Result<ResponseHead, SendError> {
    let mut written = 0;
    let mut flushed = false;
    let mut informational = false;
    std::future::poll_fn(|cx| {
        while written < conn.wbuf.len() {
            let rest = conn.wbuf.get(written..).unwrap_or_default();
            match ready!(Pin::new(&mut conn.stream).poll_write(cx, rest)) {
                Ok(0) | Err(_) => return Poll::Ready(Err(SendError::Closed { answered: false })),
                Ok(n) => written += n,
            }
        }
        if !flushed {
            // TLS buffers inside rustls: the head must be on the wire before we wait on anything
            // (an `Expect: 100-continue` body waits for the upstream's answer to the head).
            if ready!(Pin::new(&mut conn.stream).poll_flush(cx)).is_err() {
                return Poll::Ready(Err(SendError::Closed { answered: false }));
            }
            flushed = true;
        }
        if let Some(out) = outgoing.as_mut() {
            match out.poll_send(cx, &mut conn.stream) {
                Poll::Ready(Ok(())) => *outgoing = None,
                Poll::Ready(Err(OutgoingError::Client(e))) => {
                    return Poll::Ready(Err(SendError::Client(e)));
                }
                Poll::Ready(Err(OutgoingError::Upstream(_))) => {
                    // The upstream stopped reading; it may still have answered (a 413, say).
                    *outgoing = None;
                    *sent_all = false;
                }
                Poll::Pending => {}
            }
        }
        loop {
            match head::parse_response(&mut conn.rbuf, head_request, MAX_HEADERS, MAX_HEAD_BYTES) {
                Ok(Some(h))
                    if h.status.is_informational()
                        && h.status != StatusCode::SWITCHING_PROTOCOLS =>
                {
                    informational = true;
                }
                Ok(Some(h)) => return Poll::Ready(Ok(h)),
                Ok(None) => match ready!(conn.poll_fill(cx)) {
                    Ok(0) | Err(_) => {
                        return Poll::Ready(Err(SendError::Closed {
                            answered: informational || !conn.rbuf.is_empty(),
                        }));
                    }
                    Ok(_) => {}
                },
                Err(e) => return Poll::Ready(Err(SendError::Invalid(e))),
            }
        }
    })
    .await
}
