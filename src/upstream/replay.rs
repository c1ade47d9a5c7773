//! `Replay`: a request body that streams to the upstream as it arrives *and* can be sent again by
//! a retry.
//!
//! The first attempt reads the client's body through a reader that keeps a copy of every chunk
//! (up to a limit). A retry gets a new reader that replays the copy, then carries on with the
//! client's stream where the first one stopped, so an upload is never held back waiting to be
//! buffered whole (nginx's `proxy_request_buffering on` trades that latency for replay; this keeps
//! both). Past the limit the copy is dropped and the body can no longer be replayed; the reader in
//! use streams on. Readers take turns: one attempt at a time, never two at once.

use std::{
    pin::Pin,
    sync::{Arc, Mutex, PoisonError},
    task::{Context, Poll},
};

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};

use crate::body::{BodyError, ProxyBody};

struct Tee {
    inner: ProxyBody,
    copy: Vec<Bytes>,
    copied: u64,
    limit: u64,
    /// The copy outgrew `limit` (or the stream failed): no replay any more.
    spoilt: bool,
    /// The client's body has ended; `trailers` are its trailers, if any.
    ended: bool,
    trailers: Option<HeaderMap>,
}

/// The shared body; `reader()` starts an attempt's view of it.
#[derive(Clone)]
pub struct Replay {
    tee: Arc<Mutex<Tee>>,
    size: SizeHint,
}

impl std::fmt::Debug for Replay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replay").finish_non_exhaustive()
    }
}

impl Replay {
    pub fn new(inner: ProxyBody, limit: u64) -> Self {
        let size = inner.size_hint();
        Self {
            tee: Arc::new(Mutex::new(Tee {
                inner,
                copy: Vec::new(),
                copied: 0,
                limit,
                spoilt: false,
                ended: false,
                trailers: None,
            })),
            size,
        }
    }

    /// A reader from the first byte.
    pub fn reader(&self) -> Reader {
        Reader {
            tee: Arc::clone(&self.tee),
            pos: 0,
            trailers_sent: false,
            size: self.size,
        }
    }

    /// Whether a new reader would deliver the whole body.
    pub fn replayable(&self) -> bool {
        !self.lock().spoilt
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Tee> {
        self.tee.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// One attempt's view of the body.
pub struct Reader {
    tee: Arc<Mutex<Tee>>,
    /// Next chunk of the copy to replay; at `copy.len()` the reader is at the live edge.
    pos: usize,
    trailers_sent: bool,
    size: SizeHint,
}

impl Body for Reader {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = &mut *self;
        // Uncontended: readers take turns. Plain data, so a poisoned lock is still usable.
        let mut tee = this.tee.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(chunk) = tee.copy.get(this.pos) {
            this.pos += 1;
            return Poll::Ready(Some(Ok(Frame::data(chunk.clone()))));
        }
        if tee.ended {
            if !this.trailers_sent {
                this.trailers_sent = true;
                if let Some(t) = &tee.trailers {
                    return Poll::Ready(Some(Ok(Frame::trailers(t.clone()))));
                }
            }
            return Poll::Ready(None);
        }
        let polled = Pin::new(&mut tee.inner).poll_frame(cx);
        match polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    if !tee.spoilt {
                        tee.copied += data.len() as u64;
                        if tee.copied > tee.limit {
                            tee.spoilt = true;
                            tee.copy = Vec::new();
                        } else {
                            let data = data.clone();
                            tee.copy.push(data);
                        }
                    }
                    this.pos = tee.copy.len();
                } else if let Some(t) = frame.trailers_ref() {
                    tee.trailers = Some(t.clone());
                    tee.ended = true;
                    this.trailers_sent = true;
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(None) => {
                tee.ended = true;
                this.trailers_sent = true;
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(e))) => {
                tee.spoilt = true;
                Poll::Ready(Some(Err(e)))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        let tee = self.tee.lock().unwrap_or_else(PoisonError::into_inner);
        tee.ended && self.pos >= tee.copy.len() && (self.trailers_sent || tee.trailers.is_none())
    }

    fn size_hint(&self) -> SizeHint {
        self.size
    }
}

#[cfg(test)]
mod tests {
    use http_body_util::{BodyExt, StreamBody};

    use super::*;

    fn chunks(parts: &[&'static str]) -> ProxyBody {
        let frames: Vec<Result<Frame<Bytes>, BodyError>> = parts
            .iter()
            .map(|p| Ok(Frame::data(Bytes::from_static(p.as_bytes()))))
            .collect();
        ProxyBody::boxed(StreamBody::new(futures_util::stream::iter(frames)))
    }

    async fn read(r: Reader) -> Vec<u8> {
        r.collect().await.unwrap().to_bytes().to_vec()
    }

    #[tokio::test]
    async fn a_second_reader_replays_what_the_first_read_then_continues() {
        let replay = Replay::new(chunks(&["ab", "cd", "ef"]), 100);
        let mut first = replay.reader();
        let f = first.frame().await.unwrap().unwrap();
        assert_eq!(f.into_data().unwrap(), "ab");
        drop(first); // the attempt failed after one chunk
        assert!(replay.replayable());
        assert_eq!(read(replay.reader()).await, b"abcdef");
        // And once more, entirely from the copy.
        assert_eq!(read(replay.reader()).await, b"abcdef");
    }

    #[tokio::test]
    async fn past_the_limit_the_body_streams_on_but_cannot_be_replayed() {
        let replay = Replay::new(chunks(&["abc", "def", "ghi"]), 5);
        assert_eq!(read(replay.reader()).await, b"abcdefghi");
        assert!(!replay.replayable());
    }

    #[tokio::test]
    async fn trailers_are_replayed_too() {
        let mut t = HeaderMap::new();
        t.insert("x-sum", "1".parse().unwrap());
        let frames: Vec<Result<Frame<Bytes>, BodyError>> = vec![
            Ok(Frame::data(Bytes::from_static(b"x"))),
            Ok(Frame::trailers(t)),
        ];
        let replay = Replay::new(
            ProxyBody::boxed(StreamBody::new(futures_util::stream::iter(frames))),
            100,
        );
        for _ in 0..2 {
            let c = replay.reader().collect().await.unwrap();
            assert_eq!(c.trailers().unwrap()["x-sum"], "1");
        }
    }
}
