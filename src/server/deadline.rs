//! `DeadlineIo`: the per-connection clock hyper lacks.
//!
//! hyper's own header-read timeout closes the socket without a response, and it has no idle timeout
//! that knows whether a request is in flight. This wrapper around the client's stream keeps one timer
//! and three phases: *idle* (keep-alive, no request: the idle timeout closes quietly), *head* (the first
//! bytes of a request arrived: the whole head must follow within the header-read timeout, else an HTTP/1
//! client gets `408` and the connection closes, however slowly it trickles), and *busy* (a request is
//! being served: no timer here; body and upstream timeouts govern). The handler marks a request busy
//! with an [`Activity`] guard that ends when the response body is finished or dropped, and marks the
//! connection upgraded (a WebSocket tunnel has its own idle timeout) so the clock stops for good.
//!
//! It also lets an idle HTTP/1 connection leave hyper: after [`RELEASE_AFTER`] idle, a read ends the
//! stream, hyper drops its buffers and state, and the socket goes back (through a [`Slot`]) to the
//! listener, which waits for the next request with no buffer at all. That is what keeps 10,000 idle
//! keep-alive connections in a few MiB; busy connections never take this path.

use std::{
    io,
    pin::Pin,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    task::{Context, Poll, ready},
    time::Duration,
};

use futures_util::task::AtomicWaker;
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    time::{Instant, Sleep},
};

/// The response sent when a request head does not arrive in time.
const TIMEOUT_408: &[u8] = b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: 29\r\nconnection: close\r\n\r\n408 request header timed out\n";

/// How long an HTTP/1 connection stays idle inside hyper before its socket is taken back and hyper's
/// buffers (8 KiB read + 8 KiB write) are freed. Long enough that a client sending request after
/// request never pays for a new hyper connection; short next to any keep-alive timeout.
pub const RELEASE_AFTER: Duration = Duration::from_secs(1);

/// Where a released socket is handed back to the listener, with the time it went idle.
pub type Slot<T> = Arc<Mutex<Option<(T, Instant)>>>;

/// Requests in flight on one connection, shared by the wrapper and the handler.
#[derive(Debug, Default)]
pub struct Activity {
    active: AtomicUsize,
    /// Requests begun so far: lets the wrapper see that a request came and went between two reads.
    begun: AtomicUsize,
    upgraded: AtomicBool,
    /// The connection's reader, parked while a request was busy: hyper does not read again on its
    /// own after answering, so the last request to finish wakes it to start the idle clock.
    reader: AtomicWaker,
    /// Set when an upgrade drains this connection: every response from now on carries
    /// `Connection: close` (the handler adds it).
    closing: AtomicBool,
    /// Woken when the connection has served its `max_requests_per_connection`: the listener
    /// then shuts it gracefully (HTTP/1 after this response, HTTP/2 with GOAWAY).
    retire: tokio::sync::Notify,
}

impl Activity {
    /// Marks one request busy until the guard drops. With `max_requests` (0 = no cap) reached,
    /// the connection is asked to finish after this request.
    pub fn begin(self: &Arc<Self>, max_requests: u32) -> ActiveGuard {
        let begun = self.begun.fetch_add(1, Ordering::AcqRel) + 1;
        if max_requests > 0 && begun == max_requests as usize {
            self.retire.notify_one();
        }
        self.active.fetch_add(1, Ordering::AcqRel);
        ActiveGuard(Arc::clone(self))
    }

    /// Resolves once the connection has served all the requests it may.
    pub async fn retired(&self) {
        self.retire.notified().await;
    }

    /// Marks the connection as closing after its current or next response.
    pub fn set_closing(&self) {
        self.closing.store(true, Ordering::Release);
    }

    /// Whether responses must say `Connection: close` (an upgrade is draining this connection).
    pub fn closing(&self) -> bool {
        self.closing.load(Ordering::Relaxed)
    }

    /// The connection became a tunnel: no more header or idle deadlines from here.
    pub fn mark_upgraded(&self) {
        self.upgraded.store(true, Ordering::Release);
    }

    pub fn upgraded(&self) -> bool {
        self.upgraded.load(Ordering::Acquire)
    }

    fn busy(&self) -> bool {
        self.active.load(Ordering::Acquire) > 0
    }
}

#[derive(Debug)]
pub struct ActiveGuard(Arc<Activity>);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        if self.0.active.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.reader.wake();
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Idle,
    Head,
    Busy,
}

pub struct DeadlineIo<T> {
    /// `None` only after the socket was handed back to the slot.
    inner: Option<T>,
    activity: Arc<Activity>,
    phase: Phase,
    /// Armed at `armed`, which is never later than `deadline` (see `set`).
    timer: Pin<Box<Sleep>>,
    /// When the current phase's limit runs out.
    deadline: Instant,
    /// When `timer` fires.
    armed: Instant,
    header_timeout: Duration,
    idle_timeout: Duration,
    /// HTTP/2 multiplexes: no head phase, only idle. Decided from the first bytes (or ALPN).
    h2: Option<bool>,
    /// When set, an idle HTTP/1 connection is handed back here after `RELEASE_AFTER`.
    release: Option<Slot<T>>,
    released: bool,
    idle_since: Instant,
    /// `Activity::begun` as last seen.
    seen_begun: usize,
    /// A write (or flush) that makes no progress for this long fails: a client that stops reading
    /// cannot hold the connection, its buffers and the upstream behind it (slow read). Zero: none.
    write_timeout: Duration,
    /// Armed when a write first has to wait; dropped as soon as one makes progress.
    write_stall: Option<Pin<Box<Sleep>>>,
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
        let now = Instant::now();
        let timer = Box::pin(tokio::time::sleep_until(now + header_timeout));
        let seen_begun = activity.begun.load(Ordering::Acquire);
        Self {
            inner: Some(inner),
            activity,
            phase: Phase::Head,
            timer,
            deadline: now + header_timeout,
            armed: now + header_timeout,
            header_timeout,
            idle_timeout,
            h2,
            release: None,
            released: false,
            idle_since: now,
            seen_begun,
            write_timeout: Duration::ZERO,
            write_stall: None,
        }
    }

    /// Bounds how long a write may wait for the client to read.
    pub fn with_write_timeout(mut self, timeout: Duration) -> Self {
        self.write_timeout = timeout;
        self
    }

    /// Passes a write's outcome through, failing it once the client has read nothing for
    /// `write_timeout`.
    fn stall<R>(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<io::Result<R>>,
    ) -> Poll<io::Result<R>> {
        match polled {
            Poll::Pending if !self.write_timeout.is_zero() => {
                let timeout = self.write_timeout;
                let stall = self
                    .write_stall
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
                ready!(stall.as_mut().poll(cx));
                self.write_stall = None;
                metrics::counter!("palisade_write_timeouts_total").increment(1);
                Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "client did not read the response in time",
                )))
            }
            Poll::Pending => Poll::Pending,
            ready @ Poll::Ready(_) => {
                self.write_stall = None;
                ready
            }
        }
    }

    /// Allows release on idle into `slot` (plaintext only: the caller must be able to resume it).
    pub fn with_release(mut self, slot: Slot<T>) -> Self {
        self.release = Some(slot);
        self
    }

    /// Enters `phase`, whose limit runs out `after` from now. The timer is moved only when the new
    /// limit is earlier than where it is armed: moving a tokio timer takes the timer driver's lock,
    /// and a busy connection changes phase twice per request. A timer that fires before the
    /// phase's limit is re-armed (`poll_deadline`), at most once per phase.
    fn set(&mut self, phase: Phase, after: Duration) {
        self.phase = phase;
        let now = Instant::now();
        if phase == Phase::Idle {
            self.idle_since = now;
        }
        self.deadline = now + after;
        if self.deadline < self.armed {
            self.armed = self.deadline;
            self.timer.as_mut().reset(self.deadline);
        }
    }

    /// Ready when the current phase's limit has run out.
    fn poll_deadline(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            ready!(self.timer.as_mut().poll(cx));
            if self.deadline <= self.armed {
                return Poll::Ready(());
            }
            // Fired at an earlier phase's limit: follow the current one.
            self.armed = self.deadline;
            self.timer.as_mut().reset(self.deadline);
        }
    }

    /// The idle phase's timer: the release point when release is possible, else the idle timeout.
    fn idle_deadline(&self) -> Duration {
        match (&self.release, self.h2) {
            (Some(_), Some(false)) => RELEASE_AFTER.min(self.idle_timeout),
            _ => self.idle_timeout,
        }
    }

    fn inner(&mut self) -> io::Result<&mut T> {
        self.inner
            .as_mut()
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotConnected, "socket released"))
    }
}

impl<T> Drop for DeadlineIo<T> {
    fn drop(&mut self) {
        if self.released
            && let (Some(slot), Some(io)) = (&self.release, self.inner.take())
        {
            *slot.lock().unwrap_or_else(PoisonError::into_inner) = Some((io, self.idle_since));
        }
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> AsyncRead for DeadlineIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.released {
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        let busy = this.activity.busy();
        let begun = this.activity.begun.load(Ordering::Acquire);
        if begun != this.seen_begun {
            // A request was dispatched since we last looked, whether or not hyper read meanwhile:
            // the head we were timing is complete.
            this.seen_begun = begun;
            this.phase = Phase::Busy;
        }
        let upgraded = this.activity.upgraded();
        let polled = Pin::new(this.inner()?).poll_read(cx, buf);
        if upgraded {
            // A tunnel: the upgrade's own idle timeout governs.
            return polled;
        }
        match polled {
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
                    this.activity.reader.register(cx.waker());
                    // The request may have finished between the check and the registration.
                    if this.activity.busy() {
                        return Poll::Pending;
                    }
                    cx.waker().wake_by_ref();
                    return Poll::Pending;
                }
                if this.phase == Phase::Busy {
                    let after = this.idle_deadline();
                    this.set(Phase::Idle, after);
                }
                if this.poll_deadline(cx).is_pending() {
                    return Poll::Pending;
                }
                if this.phase == Phase::Head && this.h2 != Some(true) {
                    // Best effort: a fresh socket buffer takes 150 bytes without blocking.
                    let inner = this.inner()?;
                    let _ = Pin::new(&mut *inner).poll_write(cx, TIMEOUT_408);
                    let _ = Pin::new(inner).poll_flush(cx);
                    metrics::counter!("palisade_request_header_timeouts_total").increment(1);
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "request header timeout",
                    )));
                }
                // Idle. Before the idle timeout, with somewhere to go: hand the socket back (hyper
                // sees the end of the stream at a message boundary, with nothing buffered, and
                // frees its state). Otherwise the end of the stream closes the connection quietly.
                if this.release.is_some()
                    && this.h2 == Some(false)
                    && this.idle_since.elapsed() < this.idle_timeout
                {
                    this.released = true;
                }
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
        let polled = Pin::new(self.inner()?).poll_write(cx, buf);
        self.stall(cx, polled)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(self.inner()?).poll_write_vectored(cx, bufs);
        self.stall(cx, polled)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner
            .as_ref()
            .is_some_and(AsyncWrite::is_write_vectored)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(self.inner()?).poll_flush(cx);
        self.stall(cx, polled)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.released {
            // The socket lives on outside hyper: hyper's end-of-connection shutdown is not ours.
            return Poll::Ready(Ok(()));
        }
        Pin::new(self.inner()?).poll_shutdown(cx)
    }
}

use std::future::Future as _;

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream, ReadHalf, WriteHalf, duplex};

    use super::*;

    const REQUEST: &[u8] = b"GET / HTTP/1.1\r\nhost: a\r\n\r\n";

    /// A wrapped server end (10 s header timeout, 60 s idle) after its client sent `sent` and the
    /// wrapper has read it; the client's halves for the test to read from or keep open.
    struct Conn {
        io: DeadlineIo<DuplexStream>,
        activity: Arc<Activity>,
        client_rx: ReadHalf<DuplexStream>,
        _client_tx: WriteHalf<DuplexStream>,
        buf: [u8; 64],
    }

    async fn after_reading(sent: &[u8], slot: Option<Slot<DuplexStream>>) -> Conn {
        let (client, server) = duplex(4096);
        let activity = Arc::new(Activity::default());
        let mut io = DeadlineIo::new(
            server,
            Arc::clone(&activity),
            Duration::from_secs(10),
            Duration::from_secs(60),
            None,
        );
        if let Some(slot) = slot {
            io = io.with_release(slot);
        }
        let (client_rx, mut client_tx) = tokio::io::split(client);
        client_tx.write_all(sent).await.unwrap();
        let mut buf = [0u8; 64];
        let n = io.read(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], sent);
        Conn {
            io,
            activity,
            client_rx,
            _client_tx: client_tx,
            buf,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn slow_head_gets_408_then_error() {
        let mut c = after_reading(b"GET / HTTP/1.1\r\n", None).await;
        // The rest never comes: the read fails at the deadline and the client got a 408.
        let err = c.io.read(&mut c.buf).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        let mut got = vec![0u8; TIMEOUT_408.len()];
        c.client_rx.read_exact(&mut got).await.unwrap();
        assert!(got.starts_with(b"HTTP/1.1 408"));
    }

    #[tokio::test(start_paused = true)]
    async fn a_head_begun_after_an_idle_spell_gets_its_full_header_timeout_and_no_more() {
        let Conn {
            mut io,
            activity,
            mut buf,
            mut client_rx,
            _client_tx: mut client_tx,
        } = after_reading(REQUEST, None).await;
        drop(activity.begin(0));
        // Idle: the read parks, timing the 60 s idle limit.
        let parked = tokio::time::timeout(Duration::from_secs(30), io.read(&mut buf)).await;
        assert!(parked.is_err(), "still idle after 30 s");
        // A slow head starts: its 10 s limit is earlier than the idle one the timer is armed for.
        client_tx
            .write_all(b"GET /next HTTP/1.1\r\n")
            .await
            .unwrap();
        assert!(io.read(&mut buf).await.unwrap() > 0);
        let started = Instant::now();
        let err = io.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(started.elapsed(), Duration::from_secs(10));
        let mut got = vec![0u8; TIMEOUT_408.len()];
        client_rx.read_exact(&mut got).await.unwrap();
        assert!(got.starts_with(b"HTTP/1.1 408"));
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_served_without_reads_in_between_leaves_the_connection_idle_not_timing_a_head()
     {
        let mut c = after_reading(REQUEST, None).await;
        // Served and finished with no read in between (hyper need not read while it answers).
        drop(c.activity.begin(0));
        // No 408 at the header deadline: the connection idles until the idle timeout, then EOF.
        let start = Instant::now();
        assert_eq!(c.io.read(&mut c.buf).await.unwrap(), 0);
        assert!(
            start.elapsed() >= Duration::from_secs(60),
            "closed after {:?}",
            start.elapsed()
        );
        drop(c.io);
        let mut rest = Vec::new();
        c.client_rx.read_to_end(&mut rest).await.unwrap();
        assert!(
            rest.is_empty(),
            "nothing may be written to an idle connection: {rest:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_reader_parked_during_a_request_is_woken_to_time_the_idle_connection() {
        let Conn {
            mut io,
            activity,
            mut buf,
            _client_tx,
            client_rx: _client_rx,
        } = after_reading(REQUEST, None).await;
        let guard = activity.begin(0);
        // hyper parks one read while it answers and does not read again by itself afterwards.
        let reader = tokio::spawn(async move {
            let n = io.read(&mut buf).await.unwrap();
            (n, Instant::now())
        });
        tokio::task::yield_now().await;
        let finished = Instant::now();
        drop(guard);
        let (n, at) = tokio::time::timeout(Duration::from_secs(600), reader)
            .await
            .expect("the parked reader must be woken when the request ends")
            .unwrap();
        assert_eq!(n, 0);
        assert_eq!(at - finished, Duration::from_secs(60));
    }

    #[tokio::test(start_paused = true)]
    async fn idle_http1_connection_is_released_into_its_slot() {
        let slot: Slot<DuplexStream> = Arc::default();
        let mut c = after_reading(REQUEST, Some(Arc::clone(&slot))).await;
        drop(c.activity.begin(0));
        let start = Instant::now();
        assert_eq!(
            c.io.read(&mut c.buf).await.unwrap(),
            0,
            "the release looks like the end of the stream to hyper"
        );
        assert_eq!(start.elapsed(), RELEASE_AFTER);
        assert!(
            slot.lock().unwrap().is_none(),
            "handed back only when hyper lets go"
        );
        drop(c.io);
        assert!(slot.lock().unwrap().is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn busy_connection_has_no_header_deadline_and_idle_closes_quietly() {
        let mut c = after_reading(REQUEST, None).await;
        let guard = c.activity.begin(0);
        // While busy, a long silence is not a timeout.
        let slept = tokio::time::timeout(Duration::from_secs(120), c.io.read(&mut c.buf)).await;
        assert!(
            slept.is_err(),
            "a busy connection must not time out on reads"
        );
        drop(guard);
        // Idle now: after the idle timeout the read ends quietly (EOF), with no 408.
        let start = Instant::now();
        let n = c.io.read(&mut c.buf).await.unwrap();
        assert_eq!(n, 0);
        assert!(start.elapsed() >= Duration::from_secs(60));
    }
}
