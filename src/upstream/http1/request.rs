//! The request half of an upstream HTTP/1.1 exchange: the head, encoded straight into the
//! connection's write buffer, and `Outgoing`, which streams the request body after it.
//!
//! Framing is chosen from the body, not copied from the client: a body of known length goes with
//! `Content-Length`, one of unknown length (the client sent it chunked) goes chunked, and a body
//! known to be empty goes with neither (a `Content-Length: 0` the client sent is kept as it is).
//! Hop-by-hop headers were removed by the handler before this point.

use std::{
    io::{self, IoSlice, Write as _},
    pin::Pin,
    task::{Context, Poll, ready},
};

use bytes::{Buf as _, Bytes};
use http::{HeaderMap, header, request::Parts};
use http_body::Body as _;
use tokio::io::AsyncWrite;

use super::{chunked::encode_chunk_head, stream::Stream};
use crate::body::{BodyError, ProxyBody};

/// How the request body is delimited on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    None,
    Length(u64),
    Chunked,
}

/// Writes the request line and headers, with the framing header the body needs.
pub fn encode_head(parts: &Parts, body: &ProxyBody, out: &mut Vec<u8>) -> Framing {
    out.clear();
    out.extend_from_slice(parts.method.as_str().as_bytes());
    out.push(b' ');
    let target = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let framing = if body.is_known_empty() {
        Framing::None
    } else if let Some(n) = body.size_hint().exact() {
        if !parts.headers.contains_key(header::CONTENT_LENGTH) {
            let _ = write!(out, "content-length: {n}\r\n");
        }
        Framing::Length(n)
    } else {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
        Framing::Chunked
    };
    for (name, value) in &parts.headers {
        // A length the body does not have would desynchronise the upstream connection.
        if framing == Framing::Chunked && name == header::CONTENT_LENGTH {
            continue;
        }
        write_field(out, name.as_str().as_bytes(), value.as_bytes());
    }
    out.extend_from_slice(b"\r\n");
    framing
}

fn write_field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Why sending the request body stopped.
#[derive(Debug)]
pub enum OutgoingError {
    /// The client's body failed (idle, reset, bad chunk): the client's fault.
    Client(BodyError),
    /// Writing to the upstream failed: it closed or reset the connection.
    Upstream(io::Error),
}

/// A request body on its way to the upstream, polled by whoever waits on the exchange: first the
/// response-head wait, then the response body (an upstream may answer before the body is all sent,
/// and an echoing upstream streams its answer while it reads).
pub struct Outgoing {
    body: ProxyBody,
    chunked: bool,
    /// With a length: the bytes still owed. The upstream reads exactly that many, so a body that
    /// ran short or long would leave the connection out of step (a smuggling risk); it is refused.
    owed: Option<u64>,
    /// Framing bytes to write before `data` (a chunk-size line, or the last chunk and trailers).
    prefix: Vec<u8>,
    prefix_at: usize,
    data: Bytes,
    suffix: &'static [u8],
    read_all: bool,
    unflushed: bool,
}

impl Outgoing {
    /// `None` when there is no body to send.
    pub fn new(body: ProxyBody, framing: Framing) -> Option<Box<Self>> {
        if framing == Framing::None {
            return None;
        }
        Some(Box::new(Self {
            body,
            chunked: framing == Framing::Chunked,
            owed: match framing {
                Framing::Length(n) => Some(n),
                Framing::None | Framing::Chunked => None,
            },
            prefix: Vec::new(),
            prefix_at: 0,
            data: Bytes::new(),
            suffix: b"",
            read_all: false,
            unflushed: false,
        }))
    }

    fn has_pending(&self) -> bool {
        self.prefix_at < self.prefix.len() || !self.data.is_empty() || !self.suffix.is_empty()
    }

    /// Drives the body onto the wire; `Ready(Ok)` once all of it (and its framing) is written.
    pub fn poll_send(
        &mut self,
        cx: &mut Context<'_>,
        stream: &mut Stream,
    ) -> Poll<Result<(), OutgoingError>> {
        loop {
            while self.has_pending() {
                let slices = [
                    IoSlice::new(self.prefix.get(self.prefix_at..).unwrap_or_default()),
                    IoSlice::new(&self.data),
                    IoSlice::new(self.suffix),
                ];
                let n = ready!(Pin::new(&mut *stream).poll_write_vectored(cx, &slices))
                    .map_err(OutgoingError::Upstream)?;
                if n == 0 {
                    return Poll::Ready(Err(OutgoingError::Upstream(
                        io::ErrorKind::WriteZero.into(),
                    )));
                }
                self.advance(n);
                self.unflushed = true;
            }
            if self.unflushed {
                // TLS buffers inside rustls; make sure what we wrote is on the wire before we wait
                // on the client for more.
                ready!(Pin::new(&mut *stream).poll_flush(cx)).map_err(OutgoingError::Upstream)?;
                self.unflushed = false;
            }
            if self.read_all {
                return Poll::Ready(Ok(()));
            }
            match ready!(Pin::new(&mut self.body).poll_frame(cx)) {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) if data.is_empty() => {}
                    Ok(data) => {
                        if let Some(owed) = &mut self.owed {
                            *owed = owed
                                .checked_sub(data.len() as u64)
                                .ok_or_else(|| length_mismatch("longer"))?;
                        }
                        if self.chunked {
                            self.prefix.clear();
                            self.prefix_at = 0;
                            encode_chunk_head(data.len(), &mut self.prefix);
                            self.suffix = b"\r\n";
                        }
                        self.data = data;
                    }
                    Err(frame) => {
                        // Trailers travel only in chunked framing; with a length they are dropped.
                        if let (Ok(trailers), true) = (frame.into_trailers(), self.chunked) {
                            self.last_chunk(Some(&trailers));
                        }
                        self.read_all = true;
                    }
                },
                Some(Err(e)) => return Poll::Ready(Err(OutgoingError::Client(e))),
                None => {
                    if self.owed.is_some_and(|owed| owed > 0) {
                        return Poll::Ready(Err(length_mismatch("shorter")));
                    }
                    if self.chunked {
                        self.last_chunk(None);
                    }
                    self.read_all = true;
                }
            }
        }
    }

    fn last_chunk(&mut self, trailers: Option<&HeaderMap>) {
        self.prefix.clear();
        self.prefix_at = 0;
        self.prefix.extend_from_slice(b"0\r\n");
        for (name, value) in trailers.into_iter().flatten() {
            write_field(&mut self.prefix, name.as_str().as_bytes(), value.as_bytes());
        }
        self.prefix.extend_from_slice(b"\r\n");
    }

    fn advance(&mut self, mut n: usize) {
        let p = n.min(self.prefix.len() - self.prefix_at);
        self.prefix_at += p;
        n -= p;
        let d = n.min(self.data.len());
        self.data.advance(d);
        n -= d;
        let s = n.min(self.suffix.len());
        self.suffix = self.suffix.get(s..).unwrap_or_default();
    }
}

fn length_mismatch(how: &'static str) -> OutgoingError {
    OutgoingError::Client(BodyError::Peer(
        format!("request body {how} than its Content-Length").into(),
    ))
}
