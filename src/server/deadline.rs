//! `DeadlineIo`: the per-connection clock hyper lacks.
//!
//! hyper's own header-read timeout closes the socket without a response, and it has no idle timeout
//! that knows whether a request is in flight. This wrapper around the client's stream keeps one timer
//! and three phases: *idle* (keep-alive, no request: the idle timeout closes quietly), *head* (the first
//! bytes of a request arrived: the whole head must follow within the header-read timeout, else an HTTP/1
//! client gets `408` and the connection closes, however slowly it trickles), and *busy* (a request is
//! being served: no timer here; body and upstream timeouts govern). The handler marks a request busy
//! with an [`Activity`] guard that ends when the response body is finished or dropped.

use std::{
    io,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    time::{Instant, Sleep},
};

/// The response sent when a request head does not arrive in time.
const TIMEOUT_408: &[u8] = b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: 29\r\nconnection: close\r\n\r\n408 request header timed out\n";

/// Requests in flight on one connection, shared by the wrapper and the handler.
#[derive(Debug, Default)]
pub struct Activity {
    active: AtomicUsize,
}

impl Activity {
    /// Marks one request busy until the guard drops.
    pub fn begin(self: &Arc<Self>) -> ActiveGuard {
        self.active.fetch_add(1, Ordering::AcqRel);
        ActiveGuard(Arc::clone(self))
    }

    fn busy(&self) -> bool {
        self.active.load(Ordering::Acquire) > 0
    }
}

#[derive(Debug)]
pub struct ActiveGuard(Arc<Activity>);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::AcqRel);
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Idle,
    Head,
    Busy,
}

pub struct DeadlineIo<T> {
    inner: T,
    activity: Arc<Activity>,
    phase: Phase,
    timer: Pin<Box<Sleep>>,
    header_timeout: Duration,
    idle_timeout: Duration,
    /// HTTP/2 multiplexes: no head phase, only idle. Decided from the first bytes (or ALPN).
    h2: Option<bool>,
}

impl<T> DeadlineIo<T> {
    /// `h2`: `Some(true)` when ALPN chose HTTP/2, `None` to sniff the preface.
    pub fn new(
        inner: T,
        activity: Arc<Activity>,
        header_timeout: Duration,
        idle_timeout: Duration,
        h2: Option<bool>,
    ) -> Self {
        // A new connection must start its first request within the header timeout (it is a head in
        // all but name: a client that connects and says nothing is a slowloris too).
        let timer = Box::pin(tokio::time::sleep(header_timeout));
        Self {
            inner,
            activity,
            phase: Phase::Head,
            timer,
            header_timeout,
            idle_timeout,
            h2,
        }
    }

    fn set(&mut self, phase: Phase, after: Duration) {
        self.phase = phase;
        self.timer.as_mut().reset(Instant::now() + after);
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> AsyncRead for DeadlineIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        let busy = this.activity.busy();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let got = &buf.filled()[before..];
                if this.h2.is_none() && !got.is_empty() {
                    this.h2 = Some(got.starts_with(b"PRI "));
                }
                if busy {
                    this.phase = Phase::Busy;
                } else if !got.is_empty() {
                    match (this.phase, this.h2) {
                        // HTTP/2 frames (including PINGs) are activity; the idle clock restarts.
                        (_, Some(true)) => this.set(Phase::Idle, this.idle_timeout),
                        (Phase::Idle | Phase::Busy, _) => {
                            this.set(Phase::Head, this.header_timeout);
                        }
                        (Phase::Head, _) => {}
                    }
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                if busy {
                    this.phase = Phase::Busy;
                    return Poll::Pending;
                }
                if this.phase == Phase::Busy {
                    this.set(Phase::Idle, this.idle_timeout);
                }
                if this.timer.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                if this.phase == Phase::Head && this.h2 != Some(true) {
                    // Best effort: a fresh socket buffer takes 150 bytes without blocking.
                    let _ = Pin::new(&mut this.inner).poll_write(cx, TIMEOUT_408);
                    let _ = Pin::new(&mut this.inner).poll_flush(cx);
                    metrics::counter!("palisade_request_header_timeouts_total").increment(1);
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "request header timeout",
                    )));
                }
                // Idle: end of stream, so hyper closes the connection quietly.
                Poll::Ready(Ok(()))
            }
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for DeadlineIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

use std::future::Future as _;

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt, duplex};

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn slow_head_gets_408_then_error() {
        let (client, server) = duplex(4096);
        let activity = Arc::new(Activity::default());
        let mut io = DeadlineIo::new(
            server,
            activity,
            Duration::from_secs(10),
            Duration::from_secs(60),
            None,
        );
        let (mut cr, mut cw) = tokio::io::split(client);
        cw.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
        let mut buf = [0u8; 64];
        let n = io.read(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"GET / HTTP/1.1\r\n");
        // The rest never comes: the read fails at the deadline and the client got a 408.
        let err = io.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        let mut got = vec![0u8; TIMEOUT_408.len()];
        cr.read_exact(&mut got).await.unwrap();
        assert!(got.starts_with(b"HTTP/1.1 408"));
    }

    #[tokio::test(start_paused = true)]
    async fn busy_connection_has_no_header_deadline_and_idle_closes_quietly() {
        let (client, server) = duplex(4096);
        let activity = Arc::new(Activity::default());
        let mut io = DeadlineIo::new(
            server,
            Arc::clone(&activity),
            Duration::from_secs(10),
            Duration::from_secs(60),
            None,
        );
        let (_cr, mut cw) = tokio::io::split(client);
        cw.write_all(b"GET / HTTP/1.1\r\nhost: a\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 64];
        let n = io.read(&mut buf).await.unwrap();
        assert!(n > 0);
        let guard = activity.begin();
        // While busy, a long silence is not a timeout.
        let slept = tokio::time::timeout(Duration::from_secs(120), io.read(&mut buf)).await;
        assert!(
            slept.is_err(),
            "a busy connection must not time out on reads"
        );
        drop(guard);
        // Idle now: after the idle timeout the read ends quietly (EOF), with no 408.
        let start = Instant::now();
        let n = io.read(&mut buf).await.unwrap();
        assert_eq!(n, 0);
        assert!(start.elapsed() >= Duration::from_secs(60));
    }
}
