//! `ResponseBody`: an upstream HTTP/1.1 response body read straight off its connection, in the
//! request's task, as an `http_body::Body`.
//!
//! It owns the connection while the body streams and gives it back to the endpoint's pool the
//! moment the body's last byte is read, if the connection may carry another request: the response
//! allowed keep-alive, its framing was not read-until-close, the request body went out whole, and no
//! stray byte follows the response. Any failure (a close or reset mid-body, a bad chunk) ends the
//! body with an error, which makes the server side cut the client's response short: a truncated
//! body never looks complete. Not here: the body idle timeout and byte counts (`crate::body`).

use std::{
    fmt,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, ready},
    time::Instant,
};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

use super::{
    chunked::{ChunkError, ChunkedDecoder, Decoded},
    conn::Conn,
    head::Framing,
    request::{Outgoing, OutgoingError},
};
use crate::{body::BodyError, upstream::cluster::Endpoint};

/// Why an upstream response body stopped early.
#[derive(Debug, thiserror::Error)]
pub enum ResponseBodyError {
    #[error("upstream closed the connection mid-body")]
    Closed,
    #[error("upstream sent an invalid chunked body: {0}")]
    Chunked(ChunkError),
}

enum State {
    Length(u64),
    Chunked(ChunkedDecoder),
    Close,
    /// Complete; the connection went back to the pool or was closed.
    Done,
    /// A `101`: the connection is waiting to become a tunnel.
    Upgrade,
    /// Failed; the error is reported on the next poll (see `fail`).
    Failed(Option<BodyError>),
}

pub struct ResponseBody {
    conn: Option<Conn>,
    state: State,
    keep_alive: bool,
    /// The request body, when the upstream answered before it was all sent.
    outgoing: Option<Box<Outgoing>>,
    sent_all: bool,
    endpoint: Arc<Endpoint>,
}

impl fmt::Debug for ResponseBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseBody").finish_non_exhaustive()
    }
}

impl ResponseBody {
    pub fn new(
        conn: Conn,
        framing: Framing,
        keep_alive: bool,
        upgrade: bool,
        outgoing: Option<Box<Outgoing>>,
        sent_all: bool,
        endpoint: Arc<Endpoint>,
    ) -> Self {
        let state = match framing {
            _ if upgrade => State::Upgrade,
            Framing::Empty | Framing::Length(0) => State::Done,
            Framing::Length(n) => State::Length(n),
            Framing::Chunked => State::Chunked(ChunkedDecoder::new()),
            Framing::Close => State::Close,
        };
        let mut body = Self {
            conn: Some(conn),
            state,
            keep_alive: keep_alive && framing != Framing::Close,
            outgoing,
            sent_all,
            endpoint,
        };
        if matches!(body.state, State::Done) {
            body.release();
        }
        body
    }

    /// The connection of a `101` response, to become a tunnel.
    pub fn into_upgraded(mut self) -> Option<Conn> {
        match self.state {
            State::Upgrade => self.conn.take(),
            _ => None,
        }
    }

    /// The body is complete: the connection goes back to the pool if it can carry another request.
    fn release(&mut self) {
        self.state = State::Done;
        let Some(conn) = self.conn.take() else { return };
        if self.keep_alive && self.sent_all && self.outgoing.is_none() && conn.rbuf.is_empty() {
            self.endpoint.pool.checkin(conn, Instant::now());
        }
        // Otherwise dropping it closes it. An unfinished request body is abandoned with it.
        self.outgoing = None;
    }

    /// Ends the body with an error, one poll later: the server side writes what it was given only
    /// when the body makes it wait, and an error returned at once would make it drop the head and
    /// the data before it unsent. The client should see the status and the bytes that did arrive,
    /// then the cut.
    fn fail(
        &mut self,
        e: BodyError,
        cx: &Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        self.state = State::Failed(Some(e));
        self.conn = None;
        self.outgoing = None;
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

fn upstream_error(e: ResponseBodyError) -> BodyError {
    BodyError::Peer(Box::new(e))
}

/// The access-log flag for a body error: the upstream's (`UR`) or the client's upload (`DT` when
/// it stalled, `DPE` when it was malformed or cut).
pub fn failure_flag(e: &BodyError) -> &'static str {
    match e {
        BodyError::Idle | BodyError::TooSlow => "DT",
        BodyError::TooLarge => "DPE",
        BodyError::Peer(p) if p.is::<ResponseBodyError>() => "UR",
        BodyError::Peer(_) => "DPE",
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        loop {
            if let State::Failed(e) = &mut this.state {
                return Poll::Ready(e.take().map(Err));
            }
            let Some(conn) = this.conn.as_mut() else {
                return Poll::Ready(None);
            };
            if let Some(out) = this.outgoing.as_mut() {
                match out.poll_send(cx, &mut conn.stream) {
                    Poll::Ready(Ok(())) => this.outgoing = None,
                    // The client's upload failed while its response streamed: end both (the
                    // error says it was the client's doing).
                    Poll::Ready(Err(OutgoingError::Client(e))) => return this.fail(e, cx),
                    Poll::Ready(Err(OutgoingError::Upstream(_))) => {
                        this.outgoing = None;
                        this.sent_all = false;
                    }
                    Poll::Pending => {}
                }
            }
            match &mut this.state {
                State::Done | State::Upgrade | State::Failed(_) => return Poll::Ready(None),
                State::Length(rest) => {
                    if !conn.rbuf.is_empty() {
                        let n = usize::try_from(*rest)
                            .unwrap_or(usize::MAX)
                            .min(conn.rbuf.len());
                        let data = conn.rbuf.split_to(n).freeze();
                        *rest -= n as u64;
                        if *rest == 0 {
                            this.release();
                        }
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                }
                State::Chunked(decoder) => match decoder.decode(&mut conn.rbuf) {
                    Ok(Decoded::Data(data)) => return Poll::Ready(Some(Ok(Frame::data(data)))),
                    Ok(Decoded::Trailers(t)) => {
                        // The trailer section was the body's last byte: hyper stops polling
                        // after trailers, so the connection goes back now, not on an `End`.
                        this.release();
                        return Poll::Ready(Some(Ok(Frame::trailers(t))));
                    }
                    Ok(Decoded::End) => {
                        this.release();
                        return Poll::Ready(None);
                    }
                    Ok(Decoded::NeedMore) => {}
                    Err(e) => return this.fail(upstream_error(ResponseBodyError::Chunked(e)), cx),
                },
                State::Close => {
                    if !conn.rbuf.is_empty() {
                        let data = conn.rbuf.split().freeze();
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                }
            }
            match ready!(conn.poll_fill(cx)) {
                Ok(0) if matches!(this.state, State::Close) => {
                    this.release();
                    return Poll::Ready(None);
                }
                Ok(0) | Err(_) => return this.fail(upstream_error(ResponseBodyError::Closed), cx),
                Ok(_) => {}
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.state, State::Done)
    }

    fn size_hint(&self) -> SizeHint {
        match self.state {
            State::Length(n) => SizeHint::with_exact(n),
            State::Done | State::Upgrade => SizeHint::with_exact(0),
            State::Chunked(_) | State::Close | State::Failed(_) => SizeHint::default(),
        }
    }
}
