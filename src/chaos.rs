//! The chaos kit: HTTP/1.1 upstreams whose failure mode can be switched at run time, and a small
//! control API to switch them from another process.
//!
//! It serves `palisade demo` (flip one upstream to `hang` and watch failover), the integration
//! tests (in-process) and the benchmark script (`examples/chaos.rs`, faults flipped over HTTP while
//! a load generator runs). So the request path is kept lean: keep-alive, the fault read from a
//! `watch` cell, no allocation beyond hyper's own and the response body.
//!
//! Faults apply uniformly to every path, `/healthz` included, so an active health check sees what
//! clients see.
//!
//! An upstream may also have a fixed [`Capacity`] (for the overload benchmark): at most `concurrency`
//! requests in service at once, each taking `service_time`, the rest waiting inside the upstream in
//! arrival order, like a thread pool. Without one (the default) requests are served at once.
//!
//! It owns the upstream servers, their fault switch and the control listener. It does not own the
//! demo's config or the proxy (see [`crate::demo`]), nor any notion of health: it only misbehaves
//! on request.

use std::{
    cell::Cell,
    convert::Infallible,
    fmt::{self, Write as _},
    io,
    net::SocketAddr,
    pin::{Pin, pin},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body::{Frame, SizeHint};
use hyper::{body::Incoming, server::conn::http1, service::service_fn};
use hyper_util::rt::TokioIo;
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpSocket, TcpStream},
    sync::watch,
};
use tokio_util::sync::{CancellationToken, DropGuard};

/// What an upstream does with the connections and requests that reach it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Healthy: every request gets its normal answer.
    Ok,
    /// Not listening: connects are refused and the connections already open are reset. Leaving
    /// this fault listens again on the same address.
    Refuse,
    /// Reads each request and never answers; the connection is held until the peer closes it.
    Hang,
    /// The normal answer after this delay (per request).
    Slow(Duration),
    /// Every request is answered with this status and a short text body.
    Status(u16),
    /// Sends the head with `content-length: N`, about half the body, then resets the connection.
    ResetMidResponse,
    /// `percent` of requests (drawn at random, 0 never, 100 always) get `status`, the rest their
    /// normal answer.
    Flaky {
        /// Share of failed requests, 0..=100.
        percent: u8,
        /// Status of a failed request.
        status: u16,
    },
}

/// `slow` without a delay.
const DEFAULT_SLOW: Duration = Duration::from_millis(500);
/// `flaky` without a percent.
const DEFAULT_FLAKY_PERCENT: u8 = 30;
/// `5xx`, and `flaky` without a status.
const DEFAULT_STATUS: u16 = 503;
/// Upper bound of `/slow?ms=N`.
const MAX_SLOW_PATH: Duration = Duration::from_secs(60);
/// `/slow` without `ms=`.
const DEFAULT_SLOW_PATH: Duration = Duration::from_millis(500);

/// A fixed service capacity: at most `concurrency` requests in service at once, each held for
/// `service_time` before its normal answer; a request beyond `concurrency` waits inside the
/// upstream, first come first served (like a thread pool with a queue in front). So the upstream
/// serves at most `concurrency / service_time` requests per second, and latency grows with the
/// queue when it is offered more. It applies to requests that get the normal answer (`ok`, `slow`,
/// the successful part of `flaky`), on every path; other faults answer without waiting.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capacity {
    /// Requests in service at once, at least 1.
    pub concurrency: usize,
    /// How long each request is in service.
    pub service_time: Duration,
}

impl Capacity {
    /// Requests per second this capacity serves when saturated (`concurrency / service_time`);
    /// infinite for a zero service time.
    pub fn requests_per_second(&self) -> f64 {
        self.concurrency as f64 / self.service_time.as_secs_f64()
    }
}

/// The queue and slots of an upstream with a [`Capacity`].
struct Gate {
    capacity: Capacity,
    /// Fair (FIFO) in tokio: waiters get permits in the order they asked.
    slots: tokio::sync::Semaphore,
    waiting: AtomicUsize,
    in_service: AtomicUsize,
}

/// Holds a service slot; dropping it frees the slot.
struct InService<'a> {
    gate: &'a Gate,
    _permit: Option<tokio::sync::SemaphorePermit<'a>>,
}

impl Drop for InService<'_> {
    fn drop(&mut self) {
        self.gate.in_service.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Gate {
    fn new(capacity: Capacity) -> Gate {
        Gate {
            capacity,
            slots: tokio::sync::Semaphore::new(capacity.concurrency),
            waiting: AtomicUsize::new(0),
            in_service: AtomicUsize::new(0),
        }
    }

    /// Waits for a slot (in arrival order), then the service time; the slot is held until the
    /// returned guard drops (after the answer is built).
    async fn serve(&self) -> InService<'_> {
        self.waiting.fetch_add(1, Ordering::Relaxed);
        // Counted down even if the request is dropped while waiting (its client went away).
        struct Waiting<'a>(&'a AtomicUsize);
        impl Drop for Waiting<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::Relaxed);
            }
        }
        let waiting = Waiting(&self.waiting);
        // The semaphore is never closed; an error would only skip the wait.
        let permit = self.slots.acquire().await.ok();
        drop(waiting);
        self.in_service.fetch_add(1, Ordering::Relaxed);
        let guard = InService {
            gate: self,
            _permit: permit,
        };
        if !self.capacity.service_time.is_zero() {
            tokio::time::sleep(self.capacity.service_time).await;
        }
        guard
    }

    fn state_json(&self) -> serde_json::Value {
        serde_json::json!({
            "concurrency": self.capacity.concurrency,
            "service_time_ms": self.capacity.service_time.as_secs_f64() * 1000.0,
            "in_service": self.in_service.load(Ordering::Relaxed),
            "waiting": self.waiting.load(Ordering::Relaxed),
        })
    }
}

const SPELLINGS: &str = "ok, refuse, hang, slow, slow=250ms, 5xx, status=500, reset, flaky, \
                         flaky=50, flaky=50:500";

impl Fault {
    /// Parses a fault spec: `ok`, `refuse`, `hang`, `slow` (500ms) or `slow=250ms` (units ns, us,
    /// ms, s; a bare number is ms), `5xx` (503) or `status=500`, `reset`, `flaky` (30% 503) or
    /// `flaky=50` (50% 503) or `flaky=50:500`. Statuses are 200..=599, percents 0..=100.
    pub fn parse(s: &str) -> Result<Fault, String> {
        let (word, arg) = match s.split_once('=') {
            Some((w, a)) => (w, Some(a)),
            None => (s, None),
        };
        let fault = match (word, arg) {
            ("ok", None) => Fault::Ok,
            ("refuse", None) => Fault::Refuse,
            ("hang", None) => Fault::Hang,
            ("reset", None) => Fault::ResetMidResponse,
            ("slow", None) => Fault::Slow(DEFAULT_SLOW),
            ("slow", Some(a)) => Fault::Slow(parse_duration(a)?),
            ("5xx", None) => Fault::Status(DEFAULT_STATUS),
            ("status", Some(a)) => Fault::Status(parse_status(a)?),
            ("flaky", None) => Fault::Flaky {
                percent: DEFAULT_FLAKY_PERCENT,
                status: DEFAULT_STATUS,
            },
            ("flaky", Some(a)) => {
                let (p, st) = match a.split_once(':') {
                    Some((p, st)) => (p, parse_status(st)?),
                    None => (a, DEFAULT_STATUS),
                };
                let percent = p
                    .parse::<u8>()
                    .ok()
                    .filter(|p| *p <= 100)
                    .ok_or_else(|| format!("bad flaky percent {p:?}: want 0..=100"))?;
                Fault::Flaky {
                    percent,
                    status: st,
                }
            }
            _ => return Err(format!("unknown fault {s:?}; try one of: {SPELLINGS}")),
        };
        Ok(fault)
    }
}

/// The spelling [`Fault::parse`] accepts; `parse(f.to_string()) == f` for every fault it accepts.
impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Fault::Ok => f.write_str("ok"),
            Fault::Refuse => f.write_str("refuse"),
            Fault::Hang => f.write_str("hang"),
            Fault::ResetMidResponse => f.write_str("reset"),
            Fault::Slow(d) => {
                // The largest unit that is still exact, so the spelling parses back to `d`.
                let n = d.as_nanos();
                if n % 1_000_000 == 0 {
                    write!(f, "slow={}ms", n / 1_000_000)
                } else if n % 1_000 == 0 {
                    write!(f, "slow={}us", n / 1_000)
                } else {
                    write!(f, "slow={n}ns")
                }
            }
            Fault::Status(s) => write!(f, "status={s}"),
            Fault::Flaky { percent, status } if status == DEFAULT_STATUS => {
                write!(f, "flaky={percent}")
            }
            Fault::Flaky { percent, status } => write!(f, "flaky={percent}:{status}"),
        }
    }
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let digits = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(digits);
    let scale: u128 = match unit {
        "ns" => 1,
        "us" => 1_000,
        "ms" | "" => 1_000_000,
        "s" => 1_000_000_000,
        _ => return Err(format!("bad duration {s:?}: want e.g. 250ms, 2s, 1500us")),
    };
    let nanos = num
        .parse::<u128>()
        .ok()
        .and_then(|n| n.checked_mul(scale))
        .ok_or_else(|| format!("bad duration {s:?}: want e.g. 250ms, 2s, 1500us"))?;
    let secs =
        u64::try_from(nanos / 1_000_000_000).map_err(|_| format!("duration {s:?} too long"))?;
    let sub = u32::try_from(nanos % 1_000_000_000).unwrap_or(0);
    Ok(Duration::new(secs, sub))
}

fn parse_status(s: &str) -> Result<u16, String> {
    s.parse::<u16>()
        .ok()
        .filter(|c| (200..=599).contains(c))
        .ok_or_else(|| format!("bad status {s:?}: want 200..=599"))
}

/// A status that can end an HTTP/1.1 exchange: 1xx and out-of-range codes (a `Fault` built by
/// hand rather than parsed) become 500.
fn final_status(code: u16) -> StatusCode {
    StatusCode::from_u16(code)
        .ok()
        .filter(|c| !c.is_informational())
        .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

/// Whether a `Flaky` request fails: `percent` out of 100 draws (0 never, 100 and above always).
fn flaky_fails(percent: u8, rng: &mut fastrand::Rng) -> bool {
    rng.u8(0..100) < percent
}

/// What one request gets, decided when its head has been read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Plan {
    /// The normal answer after this delay (zero: at once).
    Answer(Duration),
    Status(u16),
    Hang,
    /// Half the normal answer, then a reset.
    Cut,
    /// Reset without an answer (the upstream is refusing; its listener is going away).
    Reset,
}

/// Draws from `rng` only for `Flaky`, so other faults leave the sequence alone.
fn plan(fault: Fault, rng: &mut fastrand::Rng) -> Plan {
    match fault {
        Fault::Ok => Plan::Answer(Duration::ZERO),
        Fault::Slow(d) => Plan::Answer(d),
        Fault::Refuse => Plan::Reset,
        Fault::Hang => Plan::Hang,
        Fault::Status(s) => Plan::Status(s),
        Fault::ResetMidResponse => Plan::Cut,
        Fault::Flaky { percent, status } => {
            if flaky_fails(percent, rng) {
                Plan::Status(status)
            } else {
                Plan::Answer(Duration::ZERO)
            }
        }
    }
}

/// The per-connection random stream: distinct per connection, reproducible from the upstream's
/// seed and the connection's accept order.
fn conn_seed(seed: u64, conn: u64) -> u64 {
    seed.wrapping_add(conn.wrapping_mul(0x9E37_79B9_7F4A_7C15))
}

/// The service's error: the connection is to be cut, not answered.
#[derive(Debug)]
struct Injected;

impl fmt::Display for Injected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("injected fault")
    }
}

impl std::error::Error for Injected {}

/// A response body: whole, or cut after its first part (the head still promises all of it).
enum Body {
    Full(Option<Bytes>),
    Cut {
        first: Option<Bytes>,
        len: u64,
        paused: bool,
    },
}

impl Body {
    fn text(s: String) -> Self {
        Body::Full(Some(Bytes::from(s)))
    }
}

impl http_body::Body for Body {
    type Data = Bytes;
    type Error = Injected;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Injected>>> {
        match self.get_mut() {
            Body::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            Body::Cut { first, paused, .. } => {
                if let Some(b) = first.take() {
                    return Poll::Ready(Some(Ok(Frame::data(b))));
                }
                if !*paused {
                    // One pending poll lets hyper flush the head and the first half to the socket
                    // before the error tears the connection down.
                    *paused = true;
                    cx.waker().wake_by_ref();
                    return Poll::Pending;
                }
                Poll::Ready(Some(Err(Injected)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self, Body::Full(None))
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Body::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            Body::Cut { len, .. } => SizeHint::with_exact(*len),
        }
    }
}

/// The state an upstream's tasks share with its handles.
struct Shared {
    name: Box<str>,
    addr: SocketAddr,
    /// `x-upstream` value, built once.
    tag: HeaderValue,
    /// The fault and its version (bumped by every `set`).
    fault: watch::Sender<(u64, Fault)>,
    /// The last fault version the listener has acted on.
    applied: watch::Sender<u64>,
    /// Requests whose head was read, whatever their answer.
    requests: AtomicU64,
    /// Connections being served.
    open: AtomicUsize,
    /// The fixed capacity, when the upstream has one.
    gate: Option<Gate>,
}

impl Shared {
    fn fault(&self) -> Fault {
        self.fault.borrow().1
    }
}

struct Handle {
    shared: Arc<Shared>,
    _stop: DropGuard,
}

/// One fault-switchable HTTP/1.1 upstream. Clones share it; dropping the last clone stops it
/// (listener closed, open connections reset).
#[derive(Clone)]
pub struct ChaosUpstream {
    inner: Arc<Handle>,
}

impl fmt::Debug for ChaosUpstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChaosUpstream")
            .field("name", &self.name())
            .field("addr", &self.addr())
            .field("fault", &self.fault())
            .finish()
    }
}

impl ChaosUpstream {
    /// Listens on `bind` (port 0: an ephemeral port, kept across `Refuse`) and serves with
    /// [`Fault::Ok`]. `name` is 1..=64 of `A-Z a-z 0-9 - . _ ~` (it goes into a header and the
    /// control API's paths). Must be called within a tokio runtime.
    pub async fn start(name: &str, bind: SocketAddr) -> io::Result<ChaosUpstream> {
        Self::start_seeded(name, bind, fastrand::u64(..)).await
    }

    /// [`ChaosUpstream::start`] with a fixed [`Capacity`] (`concurrency` at least 1).
    pub async fn start_with_capacity(
        name: &str,
        bind: SocketAddr,
        capacity: Capacity,
    ) -> io::Result<ChaosUpstream> {
        if capacity.concurrency == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "a capacity needs a concurrency of at least 1",
            ));
        }
        Self::start_inner(name, bind, fastrand::u64(..), Some(capacity)).await
    }

    async fn start_seeded(name: &str, bind: SocketAddr, seed: u64) -> io::Result<ChaosUpstream> {
        Self::start_inner(name, bind, seed, None).await
    }

    async fn start_inner(
        name: &str,
        bind: SocketAddr,
        seed: u64,
        capacity: Option<Capacity>,
    ) -> io::Result<ChaosUpstream> {
        if !valid_name(name) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("bad upstream name {name:?}: want 1..=64 of A-Z a-z 0-9 - . _ ~"),
            ));
        }
        let tag = HeaderValue::from_str(name)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let listener = listen(bind)?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            name: name.into(),
            addr,
            tag,
            fault: watch::Sender::new((0, Fault::Ok)),
            applied: watch::Sender::new(0),
            requests: AtomicU64::new(0),
            open: AtomicUsize::new(0),
            gate: capacity.map(Gate::new),
        });
        let stop = CancellationToken::new();
        tokio::spawn(accept_loop(
            Arc::clone(&shared),
            listener,
            stop.clone(),
            seed,
        ));
        Ok(ChaosUpstream {
            inner: Arc::new(Handle {
                shared,
                _stop: stop.drop_guard(),
            }),
        })
    }

    /// The name given to `start` (`x-upstream` header, body, control API).
    pub fn name(&self) -> &str {
        &self.inner.shared.name
    }

    /// The listening address; the same after `Refuse` is left.
    pub fn addr(&self) -> SocketAddr {
        self.inner.shared.addr
    }

    /// Switches the fault. Requests whose head is read from now on get it; a request already
    /// hanging keeps hanging. Entering or leaving `Refuse` happens on the upstream's task soon
    /// after; await [`ChaosUpstream::settled`] to know it has.
    pub fn set(&self, fault: Fault) {
        self.inner.shared.fault.send_modify(|(version, f)| {
            *version = version.wrapping_add(1);
            *f = fault;
        });
    }

    /// Resolves once the listener matches the last `set`: after `Refuse`, connects are refused
    /// and open connections are marked for reset; after leaving it, the address listens again.
    /// Waits for as long as re-binding fails (someone else took the port).
    pub async fn settled(&self) {
        let want = self.inner.shared.fault.borrow().0;
        let mut applied = self.inner.shared.applied.subscribe();
        // Both senders live in `Shared`, which this handle keeps alive: no error to handle.
        let _ = applied.wait_for(|v| *v >= want).await;
    }

    /// The current fault.
    pub fn fault(&self) -> Fault {
        self.inner.shared.fault()
    }

    /// Requests received (head fully read), whatever their answer; since start.
    pub fn requests(&self) -> u64 {
        self.inner.shared.requests.load(Ordering::Relaxed)
    }

    /// The fixed capacity given to [`ChaosUpstream::start_with_capacity`], if any.
    pub fn capacity(&self) -> Option<Capacity> {
        self.inner.shared.gate.as_ref().map(|g| g.capacity)
    }

    fn state_json(&self) -> serde_json::Value {
        let mut v = serde_json::json!({
            "name": self.name(),
            "addr": self.addr().to_string(),
            "fault": self.fault().to_string(),
            "requests": self.requests(),
        });
        if let (Some(g), Some(m)) = (&self.inner.shared.gate, v.as_object_mut()) {
            m.insert("capacity".into(), g.state_json());
        }
        v
    }
}

fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'))
}

/// Names and addresses for the `chaos` example: `count` upstreams (default: as many as `names` or
/// `listen` give, else 3), the i-th named `names[i]` or `u<i+1>` and bound to `listen[i]` or
/// `127.0.0.1:0`.
pub fn layout(
    count: Option<usize>,
    names: &[String],
    listen: &[SocketAddr],
) -> Result<Vec<(String, SocketAddr)>, String> {
    let n = count.unwrap_or(match names.len().max(listen.len()) {
        0 => 3,
        n => n,
    });
    if names.len() > n || listen.len() > n {
        return Err(format!(
            "{} names and {} listen addresses for {n} upstreams",
            names.len(),
            listen.len()
        ));
    }
    let mut out: Vec<(String, SocketAddr)> = Vec::with_capacity(n);
    for i in 0..n {
        let name = names
            .get(i)
            .cloned()
            .unwrap_or_else(|| format!("u{}", i.saturating_add(1)));
        if out.iter().any(|(m, _)| *m == name) {
            return Err(format!("upstream name {name:?} given twice"));
        }
        let addr = listen
            .get(i)
            .copied()
            .unwrap_or(SocketAddr::from(([127, 0, 0, 1], 0)));
        out.push((name, addr));
    }
    Ok(out)
}

/// A listener with `SO_REUSEADDR`, so re-binding after `Refuse` is not blocked by connections
/// still in TIME_WAIT.
fn listen(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

fn mark_applied(up: &Shared, version: u64) {
    up.applied.send_if_modified(|v| {
        let changed = *v != version;
        *v = version;
        changed
    });
}

/// Owns the listener: accepts, and drops/re-binds it as `Refuse` is entered/left.
async fn accept_loop(up: Arc<Shared>, listener: TcpListener, stop: CancellationToken, seed: u64) {
    let mut faults = up.fault.subscribe();
    let mut listener = Some(listener);
    // Cancelled to reset every connection accepted so far; a fresh one follows.
    let mut epoch = stop.child_token();
    let mut accepted: u64 = 0;
    loop {
        let (version, fault) = *faults.borrow_and_update();
        if fault == Fault::Refuse {
            if listener.take().is_some() {
                epoch.cancel();
                epoch = stop.child_token();
            }
            mark_applied(&up, version);
            tokio::select! {
                () = stop.cancelled() => return,
                r = faults.changed() => if r.is_err() { return },
            }
            continue;
        }
        if listener.is_none() {
            match listen(up.addr) {
                Ok(l) => listener = Some(l),
                Err(e) => {
                    tracing::warn!(upstream = %up.name, addr = %up.addr, error = %e, "chaos upstream cannot listen again; retrying");
                    tokio::select! {
                        () = stop.cancelled() => return,
                        () = tokio::time::sleep(Duration::from_millis(100)) => {}
                    }
                    continue;
                }
            }
        }
        let Some(l) = &listener else { continue };
        mark_applied(&up, version);
        tokio::select! {
            () = stop.cancelled() => return,
            r = faults.changed() => if r.is_err() { return },
            r = l.accept() => match r {
                Ok((stream, _)) => {
                    let seed = conn_seed(seed, accepted);
                    accepted = accepted.wrapping_add(1);
                    tokio::spawn(serve_conn(Arc::clone(&up), stream, epoch.clone(), seed));
                }
                Err(e) => {
                    // Usually out of descriptors: back off rather than spin.
                    tracing::warn!(upstream = %up.name, error = %e, "chaos upstream accept failed");
                    tokio::select! {
                        () = stop.cancelled() => return,
                        () = tokio::time::sleep(Duration::from_millis(20)) => {}
                    }
                }
            },
        }
    }
}

/// A TCP stream that resets (SO_LINGER 0) instead of closing when `reset` is set by then.
struct Sock {
    stream: TcpStream,
    reset: Arc<AtomicBool>,
}

impl Drop for Sock {
    fn drop(&mut self) {
        if self.reset.load(Ordering::Relaxed) {
            let _ = self.stream.set_zero_linger();
        }
    }
}

impl AsyncRead for Sock {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Sock {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

async fn serve_conn(up: Arc<Shared>, stream: TcpStream, kill: CancellationToken, seed: u64) {
    let _ = stream.set_nodelay(true);
    up.open.fetch_add(1, Ordering::Relaxed);
    let reset = Arc::new(AtomicBool::new(false));
    let io = TokioIo::new(Sock {
        stream,
        reset: Arc::clone(&reset),
    });
    let svc = {
        let up = Arc::clone(&up);
        let reset = Arc::clone(&reset);
        // fastrand's state is one u64: keeping it in a Cell avoids a lock in a `Fn` service.
        let rng_state = Cell::new(seed);
        service_fn(move |req: Request<Incoming>| {
            up.requests.fetch_add(1, Ordering::Relaxed);
            let mut rng = fastrand::Rng::with_seed(rng_state.get());
            let plan = plan(up.fault(), &mut rng);
            rng_state.set(rng.get_seed());
            if matches!(plan, Plan::Cut | Plan::Reset) {
                reset.store(true, Ordering::Relaxed);
            }
            respond(Arc::clone(&up), req, plan)
        })
    };
    let mut conn = pin!(http1::Builder::new().serve_connection(io, svc));
    tokio::select! {
        () = kill.cancelled() => reset.store(true, Ordering::Relaxed),
        _ = conn.as_mut() => {}
    }
    // `conn` (and the socket, resetting if flagged) drops at the end of this scope.
    up.open.fetch_sub(1, Ordering::Relaxed);
}

async fn respond(
    up: Arc<Shared>,
    req: Request<Incoming>,
    plan: Plan,
) -> Result<Response<Body>, Injected> {
    match plan {
        Plan::Reset => Err(Injected),
        Plan::Hang => std::future::pending().await,
        Plan::Status(code) => {
            let status = final_status(code);
            let body = format!("upstream {} injected {}\n", up.name, status.as_u16());
            Ok(response(&up, status, Body::text(body), TEXT))
        }
        Plan::Cut => {
            let mut full = Bytes::from(answer_line(&up.name, &req));
            let len = full.len() as u64;
            let first = full.split_to(full.len() / 2);
            let body = Body::Cut {
                first: Some(first),
                len,
                paused: false,
            };
            Ok(response(&up, StatusCode::OK, body, TEXT))
        }
        Plan::Answer(delay) => {
            let _slot = match &up.gate {
                Some(gate) => Some(gate.serve().await),
                None => None,
            };
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            Ok(normal(&up, &req).await)
        }
    }
}

const TEXT: &str = "text/plain; charset=utf-8";
const JSON: &str = "application/json";

fn response(
    up: &Shared,
    status: StatusCode,
    body: Body,
    content_type: &'static str,
) -> Response<Body> {
    let mut rsp = Response::new(body);
    *rsp.status_mut() = status;
    let h = rsp.headers_mut();
    h.insert("x-upstream", up.tag.clone());
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    rsp
}

fn answer_line(name: &str, req: &Request<Incoming>) -> String {
    let target = req.uri().path_and_query().map_or(1, |p| p.as_str().len());
    let mut s = String::with_capacity(32 + name.len() + target);
    let _ = writeln!(s, "upstream {name} answered {} {}", req.method(), req.uri());
    s
}

/// The healthy answer, with the demo's special paths.
async fn normal(up: &Shared, req: &Request<Incoming>) -> Response<Body> {
    let path = req.uri().path();
    if path == "/echo" {
        return response(up, StatusCode::OK, Body::text(echo(&up.name, req)), JSON);
    }
    let mut status = StatusCode::OK;
    if path == "/slow" {
        let ms = req
            .uri()
            .query()
            .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("ms=")))
            .and_then(|v| v.parse::<u64>().ok());
        let delay = ms.map_or(DEFAULT_SLOW_PATH, Duration::from_millis);
        tokio::time::sleep(delay.min(MAX_SLOW_PATH)).await;
    } else if let Some(code) = path.strip_prefix("/status/") {
        match parse_status(code) {
            Ok(c) => status = final_status(c),
            Err(e) => {
                return response(up, StatusCode::BAD_REQUEST, Body::text(e + "\n"), TEXT);
            }
        }
    }
    response(up, status, Body::text(answer_line(&up.name, req)), TEXT)
}

fn echo(name: &str, req: &Request<Incoming>) -> String {
    let headers: serde_json::Map<String, serde_json::Value> = req
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.to_string(),
                serde_json::Value::from(String::from_utf8_lossy(v.as_bytes()).into_owned()),
            )
        })
        .collect();
    let doc = serde_json::json!({
        "upstream": name,
        "method": req.method().as_str(),
        "uri": req.uri().to_string(),
        "headers": headers,
    });
    serde_json::to_string_pretty(&doc).unwrap_or_default() + "\n"
}

/// The control listener: lists the upstreams and switches their faults over HTTP. Dropping it
/// stops the listener (the upstreams live on while other handles to them exist).
pub struct Control {
    addr: SocketAddr,
    _stop: DropGuard,
}

impl fmt::Debug for Control {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Control").field("addr", &self.addr).finish()
    }
}

impl Control {
    /// Serves on `bind`: `GET /` lists `[{"name","addr","fault","requests"}]`;
    /// `POST /<name>/<fault spec>` sets a fault and answers the new state once it has settled
    /// (at most 1s), 404 for an unknown name, 400 with the parse error for a bad spec. Only POST
    /// changes state. Names must be unique.
    pub async fn start(bind: SocketAddr, upstreams: Vec<ChaosUpstream>) -> io::Result<Control> {
        for (i, u) in upstreams.iter().enumerate() {
            if upstreams
                .iter()
                .skip(i.saturating_add(1))
                .any(|v| v.name() == u.name())
            {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("upstream name {:?} given twice", u.name()),
                ));
            }
        }
        let listener = TcpListener::bind(bind).await?;
        let addr = listener.local_addr()?;
        let stop = CancellationToken::new();
        tokio::spawn(control_loop(listener, upstreams.into(), stop.clone()));
        Ok(Control {
            addr,
            _stop: stop.drop_guard(),
        })
    }

    /// The control listener's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

async fn control_loop(listener: TcpListener, ups: Arc<[ChaosUpstream]>, stop: CancellationToken) {
    loop {
        let stream = tokio::select! {
            () = stop.cancelled() => return,
            r = listener.accept() => match r {
                Ok((s, _)) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "chaos control accept failed");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
        };
        let ups = Arc::clone(&ups);
        let stop = stop.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req: Request<Incoming>| {
                let ups = Arc::clone(&ups);
                async move { Ok::<_, Infallible>(control(&ups, &req).await) }
            });
            let conn = http1::Builder::new().serve_connection(TokioIo::new(stream), svc);
            tokio::select! {
                () = stop.cancelled() => {}
                _ = conn => {}
            }
        });
    }
}

async fn control(ups: &[ChaosUpstream], req: &Request<Incoming>) -> Response<Full> {
    let path = req.uri().path();
    if path == "/" {
        if req.method() != Method::GET && req.method() != Method::HEAD {
            return plain(
                StatusCode::METHOD_NOT_ALLOWED,
                "GET / lists; POST /<name>/<fault> sets\n",
            );
        }
        let list: Vec<_> = ups.iter().map(ChaosUpstream::state_json).collect();
        return json(StatusCode::OK, &serde_json::Value::Array(list));
    }
    let Some((name, spec)) = path
        .strip_prefix('/')
        .and_then(|p| p.split_once('/'))
        .filter(|(n, s)| !n.is_empty() && !s.is_empty())
    else {
        return plain(
            StatusCode::NOT_FOUND,
            "unknown path; GET / lists, POST /<name>/<fault> sets\n",
        );
    };
    if req.method() != Method::POST {
        let mut r = plain(
            StatusCode::METHOD_NOT_ALLOWED,
            "only POST changes a fault\n",
        );
        r.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("POST"));
        return r;
    }
    let Some(up) = ups.iter().find(|u| u.name() == name) else {
        return plain(
            StatusCode::NOT_FOUND,
            &format!("no upstream named {name:?}\n"),
        );
    };
    let fault = match Fault::parse(spec) {
        Ok(f) => f,
        Err(e) => return plain(StatusCode::BAD_REQUEST, &(e + "\n")),
    };
    up.set(fault);
    // So that a script may rely on the fault once the POST returns (the listener included).
    let _ = tokio::time::timeout(Duration::from_secs(1), up.settled()).await;
    json(StatusCode::OK, &up.state_json())
}

type Full = http_body_util::Full<Bytes>;

fn plain(status: StatusCode, text: &str) -> Response<Full> {
    let mut r = Response::new(Full::new(Bytes::copy_from_slice(text.as_bytes())));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(TEXT));
    r
}

fn json(status: StatusCode, v: &serde_json::Value) -> Response<Full> {
    let text = serde_json::to_string_pretty(v).unwrap_or_default() + "\n";
    let mut r = Response::new(Full::new(Bytes::from(text)));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(JSON));
    r
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::time::Instant;

    use proptest::prelude::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    fn local() -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 0))
    }

    /// A minimal keep-alive HTTP/1.1 client over a raw socket, so tests see resets and short
    /// bodies exactly as they happen.
    struct Client {
        stream: TcpStream,
        buf: Vec<u8>,
    }

    struct Head {
        status: u16,
        headers: Vec<(String, String)>,
        len: usize,
    }

    struct Reply {
        status: u16,
        headers: Vec<(String, String)>,
        body: String,
    }

    impl Reply {
        fn header(&self, name: &str) -> Option<&str> {
            self.headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_str())
        }
    }

    impl Client {
        async fn connect(addr: SocketAddr) -> io::Result<Client> {
            Ok(Client {
                stream: TcpStream::connect(addr).await?,
                buf: Vec::new(),
            })
        }

        async fn send(&mut self, method: &str, path: &str) -> io::Result<()> {
            let req = format!("{method} {path} HTTP/1.1\r\nhost: t\r\ncontent-length: 0\r\n\r\n");
            self.stream.write_all(req.as_bytes()).await
        }

        async fn fill(&mut self) -> io::Result<()> {
            let mut chunk = [0u8; 4096];
            let n = self.stream.read(&mut chunk).await?;
            if n == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            self.buf.extend_from_slice(&chunk[..n]);
            Ok(())
        }

        async fn read_head(&mut self) -> io::Result<Head> {
            loop {
                if let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    let mut hs = [httparse::EMPTY_HEADER; 32];
                    let mut rsp = httparse::Response::new(&mut hs);
                    rsp.parse(&self.buf[..end + 4]).unwrap();
                    let headers: Vec<(String, String)> = rsp
                        .headers
                        .iter()
                        .map(|h| {
                            (
                                h.name.to_owned(),
                                String::from_utf8_lossy(h.value).into_owned(),
                            )
                        })
                        .collect();
                    let len = headers
                        .iter()
                        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
                        .map_or(0, |(_, v)| v.parse().unwrap());
                    let status = rsp.code.unwrap();
                    self.buf.drain(..end + 4);
                    return Ok(Head {
                        status,
                        headers,
                        len,
                    });
                }
                self.fill().await?;
            }
        }

        /// Up to `n` body bytes, and how reading them ended.
        async fn read_body(&mut self, n: usize) -> (Vec<u8>, io::Result<()>) {
            while self.buf.len() < n {
                if let Err(e) = self.fill().await {
                    return (std::mem::take(&mut self.buf), Err(e));
                }
            }
            (self.buf.drain(..n).collect(), Ok(()))
        }

        async fn call(&mut self, method: &str, path: &str) -> io::Result<Reply> {
            self.send(method, path).await?;
            let head = self.read_head().await?;
            let (body, end) = self.read_body(head.len).await;
            end?;
            Ok(Reply {
                status: head.status,
                headers: head.headers,
                body: String::from_utf8(body).unwrap(),
            })
        }
    }

    async fn get(addr: SocketAddr, path: &str) -> io::Result<Reply> {
        Client::connect(addr).await?.call("GET", path).await
    }

    async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
        for _ in 0..400 {
            if cond() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        panic!("not within 2s: {what}");
    }

    async fn refused(addr: SocketAddr) -> bool {
        matches!(TcpStream::connect(addr).await, Err(e) if e.kind() == io::ErrorKind::ConnectionRefused)
    }

    // ---- Fault spelling ----

    #[test]
    fn parse_accepts_every_documented_spelling() {
        let cases = [
            ("ok", Fault::Ok),
            ("refuse", Fault::Refuse),
            ("hang", Fault::Hang),
            ("reset", Fault::ResetMidResponse),
            ("slow", Fault::Slow(Duration::from_millis(500))),
            ("slow=250ms", Fault::Slow(Duration::from_millis(250))),
            ("slow=250", Fault::Slow(Duration::from_millis(250))),
            ("slow=2s", Fault::Slow(Duration::from_secs(2))),
            ("slow=1500us", Fault::Slow(Duration::from_micros(1500))),
            ("slow=7ns", Fault::Slow(Duration::from_nanos(7))),
            ("5xx", Fault::Status(503)),
            ("status=500", Fault::Status(500)),
            (
                "flaky",
                Fault::Flaky {
                    percent: 30,
                    status: 503,
                },
            ),
            (
                "flaky=50",
                Fault::Flaky {
                    percent: 50,
                    status: 503,
                },
            ),
            (
                "flaky=100:502",
                Fault::Flaky {
                    percent: 100,
                    status: 502,
                },
            ),
        ];
        for (spec, want) in cases {
            assert_eq!(Fault::parse(spec), Ok(want), "{spec}");
        }
    }

    #[test]
    fn parse_rejects_bad_specs_with_a_reason() {
        let cases = [
            ("", "unknown fault"),
            ("OK", "unknown fault"),
            ("ok=1", "unknown fault"),
            ("status", "unknown fault"),
            ("5xx=500", "unknown fault"),
            ("slow=", "bad duration"),
            ("slow=1m", "bad duration"),
            ("slow=-5ms", "bad duration"),
            ("slow=99999999999999999999999999s", "too long"),
            ("status=99", "200..=599"),
            ("status=600", "200..=599"),
            ("status=abc", "200..=599"),
            ("flaky=101", "0..=100"),
            ("flaky=50:700", "200..=599"),
            ("flaky=:503", "0..=100"),
        ];
        for (spec, reason) in cases {
            let err = Fault::parse(spec).unwrap_err();
            assert!(err.contains(reason), "{spec}: {err}");
        }
    }

    #[test]
    fn display_uses_the_largest_exact_unit_and_default_status_short_form() {
        let cases = [
            (Fault::Slow(Duration::from_millis(500)), "slow=500ms"),
            (Fault::Slow(Duration::from_secs(2)), "slow=2000ms"),
            (Fault::Slow(Duration::from_micros(1500)), "slow=1500us"),
            (
                Fault::Slow(Duration::from_nanos(1_000_001)),
                "slow=1000001ns",
            ),
            (Fault::Slow(Duration::ZERO), "slow=0ms"),
            (Fault::Status(503), "status=503"),
            (
                Fault::Flaky {
                    percent: 30,
                    status: 503,
                },
                "flaky=30",
            ),
            (
                Fault::Flaky {
                    percent: 30,
                    status: 500,
                },
                "flaky=30:500",
            ),
            (Fault::ResetMidResponse, "reset"),
        ];
        for (fault, want) in cases {
            assert_eq!(fault.to_string(), want);
        }
    }

    fn any_fault() -> impl Strategy<Value = Fault> {
        prop_oneof![
            Just(Fault::Ok),
            Just(Fault::Refuse),
            Just(Fault::Hang),
            Just(Fault::ResetMidResponse),
            (any::<u64>(), 0u32..1_000_000_000).prop_map(|(s, n)| Fault::Slow(Duration::new(s, n))),
            (0u64..100_000).prop_map(|ms| Fault::Slow(Duration::from_millis(ms))),
            (200u16..=599).prop_map(Fault::Status),
            (0u8..=100, 200u16..=599)
                .prop_map(|(percent, status)| Fault::Flaky { percent, status }),
        ]
    }

    proptest! {
        #[test]
        fn display_parses_back_to_the_same_fault(f in any_fault()) {
            prop_assert_eq!(Fault::parse(&f.to_string()), Ok(f));
        }

        #[test]
        fn parse_never_panics(s in "\\PC{0,24}") {
            let _ = Fault::parse(&s);
        }

        #[test]
        fn flaky_ends_are_deterministic_for_any_seed(seed in any::<u64>(), status in 200u16..=599) {
            let mut rng = fastrand::Rng::with_seed(seed);
            for _ in 0..50 {
                prop_assert_eq!(plan(Fault::Flaky { percent: 0, status }, &mut rng), Plan::Answer(Duration::ZERO));
                prop_assert_eq!(plan(Fault::Flaky { percent: 100, status }, &mut rng), Plan::Status(status));
                prop_assert_eq!(plan(Fault::Flaky { percent: 255, status }, &mut rng), Plan::Status(status));
            }
        }
    }

    #[test]
    fn flaky_middle_is_seeded_and_near_its_percent() {
        let draw = |seed| {
            let mut rng = fastrand::Rng::with_seed(seed);
            (0..1000).filter(|_| flaky_fails(30, &mut rng)).count()
        };
        let n = draw(42);
        assert!((240..=360).contains(&n), "{n} of 1000 at 30%");
        assert_eq!(draw(42), n, "same seed, same draws");
    }

    #[test]
    fn only_flaky_draws_randomness() {
        let mut a = fastrand::Rng::with_seed(1);
        for f in [
            Fault::Ok,
            Fault::Hang,
            Fault::Refuse,
            Fault::Status(500),
            Fault::ResetMidResponse,
        ] {
            let _ = plan(f, &mut a);
        }
        assert_eq!(a.get_seed(), fastrand::Rng::with_seed(1).get_seed());
        let _ = plan(
            Fault::Flaky {
                percent: 50,
                status: 503,
            },
            &mut a,
        );
        assert_ne!(a.get_seed(), fastrand::Rng::with_seed(1).get_seed());
    }

    #[test]
    fn hand_built_statuses_that_cannot_end_an_exchange_become_500() {
        assert_eq!(final_status(503), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(final_status(101), StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(final_status(42), StatusCode::INTERNAL_SERVER_ERROR);
    }

    #[test]
    fn layout_names_and_addresses() {
        let any = local();
        let fixed: SocketAddr = "127.0.0.1:7001".parse().unwrap();
        assert_eq!(
            layout(None, &[], &[]).unwrap(),
            vec![("u1".into(), any), ("u2".into(), any), ("u3".into(), any)]
        );
        assert_eq!(
            layout(None, &["a".into(), "b".into()], &[fixed]).unwrap(),
            vec![("a".into(), fixed), ("b".into(), any)]
        );
        assert_eq!(layout(Some(1), &[], &[]).unwrap(), vec![("u1".into(), any)]);
        assert!(layout(Some(1), &["a".into(), "b".into()], &[]).is_err());
        assert!(layout(Some(1), &[], &[fixed, fixed]).is_err());
        assert!(layout(None, &["u2".into()], &[]).is_ok());
        assert!(
            layout(Some(2), &["u2".into()], &[])
                .unwrap_err()
                .contains("twice")
        );
    }

    // ---- The upstream, observed from a client ----

    #[tokio::test]
    async fn start_rejects_names_unfit_for_a_header_or_a_path() {
        for bad in ["", "a/b", "a b", "é", &"x".repeat(65)] {
            let err = ChaosUpstream::start(bad, local()).await.unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "{bad:?}");
        }
    }

    #[tokio::test]
    async fn ok_answers_200_with_its_name_on_a_kept_alive_connection() {
        let up = ChaosUpstream::start("alpha", local()).await.unwrap();
        assert_eq!(
            (up.name(), up.fault(), up.requests()),
            ("alpha", Fault::Ok, 0)
        );
        let mut c = Client::connect(up.addr()).await.unwrap();
        let r = c.call("GET", "/x?y=1").await.unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.header("x-upstream"), Some("alpha"));
        assert_eq!(r.header("content-type"), Some("text/plain; charset=utf-8"));
        assert_eq!(r.body, "upstream alpha answered GET /x?y=1\n");
        let r = c.call("POST", "/healthz").await.unwrap();
        assert_eq!(r.body, "upstream alpha answered POST /healthz\n");
        assert_eq!(up.requests(), 2);
    }

    #[tokio::test]
    async fn echo_status_and_slow_paths() {
        let up = ChaosUpstream::start("e", local()).await.unwrap();
        let r = get(up.addr(), "/echo?q=1").await.unwrap();
        assert_eq!(r.header("content-type"), Some("application/json"));
        let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
        assert_eq!(v["upstream"], "e");
        assert_eq!(v["method"], "GET");
        assert_eq!(v["uri"], "/echo?q=1");
        assert_eq!(v["headers"]["host"], "t");

        let r = get(up.addr(), "/status/418").await.unwrap();
        assert_eq!((r.status, r.header("x-upstream")), (418, Some("e")));
        assert_eq!(get(up.addr(), "/status/1x").await.unwrap().status, 400);

        let t0 = Instant::now();
        let r = get(up.addr(), "/slow?a=b&ms=60").await.unwrap();
        assert!(t0.elapsed() >= Duration::from_millis(60));
        assert_eq!(r.status, 200);
    }

    #[tokio::test]
    async fn a_new_fault_applies_to_the_next_request_on_an_open_connection() {
        let up = ChaosUpstream::start("a", local()).await.unwrap();
        let mut c = Client::connect(up.addr()).await.unwrap();
        assert_eq!(c.call("GET", "/").await.unwrap().status, 200);
        up.set(Fault::Status(500));
        assert_eq!(c.call("GET", "/").await.unwrap().status, 500);
        up.set(Fault::Ok);
        assert_eq!(c.call("GET", "/").await.unwrap().status, 200);
    }

    #[tokio::test]
    async fn refuse_closes_the_port_resets_open_connections_and_ok_listens_again() {
        let up = ChaosUpstream::start("r", local()).await.unwrap();
        let addr = up.addr();
        let mut open = Client::connect(addr).await.unwrap();
        assert_eq!(open.call("GET", "/").await.unwrap().status, 200);

        up.set(Fault::Refuse);
        up.settled().await;
        assert!(refused(addr).await, "connect while refusing");
        let mut byte = [0u8; 1];
        let read = tokio::time::timeout(Duration::from_secs(2), open.stream.read(&mut byte))
            .await
            .expect("the open connection is reset, not left hanging");
        assert_eq!(read.unwrap_err().kind(), io::ErrorKind::ConnectionReset);

        up.set(Fault::Ok);
        up.settled().await;
        assert_eq!(up.addr(), addr);
        let r = get(addr, "/").await.unwrap();
        assert_eq!((r.status, r.header("x-upstream")), (200, Some("r")));
        eventually("the reset connection is released", || {
            up.inner.shared.open.load(Ordering::Relaxed) == 0
        })
        .await;
    }

    #[tokio::test]
    async fn a_request_that_races_refuse_is_reset_unanswered() {
        let up = ChaosUpstream::start("r", local()).await.unwrap();
        let mut c = Client::connect(up.addr()).await.unwrap();
        assert_eq!(c.call("GET", "/").await.unwrap().status, 200);
        // Not awaiting `settled`: the request may reach the service before the listener goes.
        up.set(Fault::Refuse);
        assert!(c.call("GET", "/").await.is_err());
    }

    #[tokio::test]
    async fn hang_reads_the_request_never_answers_and_lets_go_when_the_peer_closes() {
        let up = ChaosUpstream::start("h", local()).await.unwrap();
        up.set(Fault::Hang);
        let mut c = Client::connect(up.addr()).await.unwrap();
        c.send("GET", "/healthz").await.unwrap();
        let waited = tokio::time::timeout(Duration::from_millis(200), c.read_head()).await;
        assert!(waited.is_err(), "no answer while hanging");
        assert_eq!(up.requests(), 1);

        // Leaving Hang does not release the request already hanging; new ones are answered.
        up.set(Fault::Ok);
        assert_eq!(get(up.addr(), "/").await.unwrap().status, 200);
        let waited = tokio::time::timeout(Duration::from_millis(50), c.read_head()).await;
        assert!(waited.is_err(), "the hanging request stays unanswered");

        let shared = Arc::clone(&up.inner.shared);
        eventually("only the hanging connection is open", || {
            shared.open.load(Ordering::Relaxed) == 1
        })
        .await;
        drop(c);
        eventually("the hanging connection is released", || {
            shared.open.load(Ordering::Relaxed) == 0
        })
        .await;
    }

    #[tokio::test]
    async fn slow_answers_normally_after_the_delay() {
        let up = ChaosUpstream::start("s", local()).await.unwrap();
        up.set(Fault::Slow(Duration::from_millis(100)));
        let t0 = Instant::now();
        let r = get(up.addr(), "/").await.unwrap();
        assert!(
            t0.elapsed() >= Duration::from_millis(100),
            "{:?}",
            t0.elapsed()
        );
        assert_eq!(
            (r.status, r.body.as_str()),
            (200, "upstream s answered GET /\n")
        );
    }

    #[tokio::test]
    async fn status_answers_every_path_with_it() {
        let up = ChaosUpstream::start("s", local()).await.unwrap();
        up.set(Fault::Status(503));
        for path in ["/", "/healthz", "/echo"] {
            let r = get(up.addr(), path).await.unwrap();
            assert_eq!(r.status, 503, "{path}");
            assert_eq!(r.header("x-upstream"), Some("s"));
            assert_eq!(r.body, "upstream s injected 503\n");
        }
    }

    #[tokio::test]
    async fn reset_mid_response_sends_a_head_and_part_of_the_body_then_resets() {
        let up = ChaosUpstream::start("c", local()).await.unwrap();
        up.set(Fault::ResetMidResponse);
        let mut c = Client::connect(up.addr()).await.unwrap();
        c.send("GET", "/").await.unwrap();
        let head = c.read_head().await.unwrap();
        assert_eq!(head.status, 200);
        let full = b"upstream c answered GET /\n";
        assert_eq!(head.len, full.len());
        let (body, end) = c.read_body(head.len).await;
        assert_eq!(body, full[..full.len() / 2], "about half the body");
        assert_eq!(end.unwrap_err().kind(), io::ErrorKind::ConnectionReset);
        assert_eq!(up.requests(), 1);
    }

    #[tokio::test]
    async fn flaky_ends_always_and_never_fail() {
        let up = ChaosUpstream::start("f", local()).await.unwrap();
        let mut c = Client::connect(up.addr()).await.unwrap();
        up.set(Fault::Flaky {
            percent: 100,
            status: 502,
        });
        for _ in 0..20 {
            assert_eq!(c.call("GET", "/").await.unwrap().status, 502);
        }
        up.set(Fault::Flaky {
            percent: 0,
            status: 502,
        });
        for _ in 0..20 {
            assert_eq!(c.call("GET", "/").await.unwrap().status, 200);
        }
    }

    #[tokio::test]
    async fn flaky_middle_follows_the_seeded_draws() {
        let up = ChaosUpstream::start_seeded("f", local(), 7).await.unwrap();
        up.set(Fault::Flaky {
            percent: 50,
            status: 500,
        });
        let mut rng = fastrand::Rng::with_seed(conn_seed(7, 0));
        let want: Vec<u16> = (0..200)
            .map(|_| if flaky_fails(50, &mut rng) { 500 } else { 200 })
            .collect();
        let mut c = Client::connect(up.addr()).await.unwrap();
        let mut got = Vec::new();
        for _ in 0..200 {
            got.push(c.call("GET", "/").await.unwrap().status);
        }
        assert_eq!(got, want);
        let failed = got.iter().filter(|s| **s == 500).count();
        assert!((60..=140).contains(&failed), "{failed} of 200 at 50%");
    }

    #[tokio::test]
    async fn capacity_serves_at_most_concurrency_at_once_and_queues_the_rest() {
        let cap = Capacity {
            concurrency: 2,
            service_time: Duration::from_millis(80),
        };
        assert!((cap.requests_per_second() - 25.0).abs() < 1e-9);
        let up = ChaosUpstream::start_with_capacity("c", local(), cap)
            .await
            .unwrap();
        assert_eq!(up.capacity(), Some(cap));
        let t0 = Instant::now();
        let calls: Vec<_> = (0..4)
            .map(|_| {
                let addr = up.addr();
                tokio::spawn(async move {
                    let r = get(addr, "/").await.unwrap();
                    (r.status, t0.elapsed())
                })
            })
            .collect();
        eventually("two in service, two waiting", || {
            let g = up.inner.shared.gate.as_ref().unwrap();
            g.in_service.load(Ordering::Relaxed) == 2 && g.waiting.load(Ordering::Relaxed) == 2
        })
        .await;
        let mut times = Vec::new();
        for c in calls {
            let (status, took) = c.await.unwrap();
            assert_eq!(status, 200);
            times.push(took);
        }
        times.sort();
        assert!(times[1] >= Duration::from_millis(80), "{times:?}");
        assert!(
            times[2] >= Duration::from_millis(160),
            "the third waits for a slot: {times:?}"
        );
        let g = up.inner.shared.gate.as_ref().unwrap();
        eventually("all slots free", || {
            g.in_service.load(Ordering::Relaxed) == 0 && g.waiting.load(Ordering::Relaxed) == 0
        })
        .await;
    }

    #[tokio::test]
    async fn capacity_leaves_other_faults_unqueued_and_shows_in_the_state() {
        let cap = Capacity {
            concurrency: 1,
            service_time: Duration::from_millis(200),
        };
        let up = ChaosUpstream::start_with_capacity("c", local(), cap)
            .await
            .unwrap();
        up.set(Fault::Status(503));
        let t0 = Instant::now();
        assert_eq!(get(up.addr(), "/").await.unwrap().status, 503);
        assert!(t0.elapsed() < Duration::from_millis(200));
        let v = up.state_json();
        assert_eq!(v["capacity"]["concurrency"], 1);
        assert_eq!(v["capacity"]["service_time_ms"], 200.0);
        assert!(
            ChaosUpstream::start("n", local())
                .await
                .unwrap()
                .state_json()
                .get("capacity")
                .is_none()
        );
        let zero = Capacity {
            concurrency: 0,
            service_time: Duration::from_millis(1),
        };
        let err = ChaosUpstream::start_with_capacity("z", local(), zero)
            .await
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    }

    #[tokio::test]
    async fn dropping_the_last_handle_stops_the_upstream() {
        let up = ChaosUpstream::start("d", local()).await.unwrap();
        let addr = up.addr();
        let other = up.clone();
        drop(up);
        assert_eq!(
            get(addr, "/").await.unwrap().status,
            200,
            "a clone keeps it alive"
        );
        drop(other);
        for _ in 0..400 {
            if refused(addr).await {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        panic!("still listening 2s after the last handle was dropped");
    }

    // ---- Control ----

    async fn call_control(ctl: &Control, method: &str, path: &str) -> Reply {
        Client::connect(ctl.addr())
            .await
            .unwrap()
            .call(method, path)
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn control_lists_and_flips_faults() {
        let a = ChaosUpstream::start("a", local()).await.unwrap();
        let b = ChaosUpstream::start("b", local()).await.unwrap();
        let ctl = Control::start(local(), vec![a.clone(), b.clone()])
            .await
            .unwrap();
        assert_eq!(get(a.addr(), "/").await.unwrap().status, 200);

        let r = call_control(&ctl, "GET", "/").await;
        assert_eq!(r.status, 200);
        let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
        assert_eq!(
            v,
            serde_json::json!([
                { "name": "a", "addr": a.addr().to_string(), "fault": "ok", "requests": 1 },
                { "name": "b", "addr": b.addr().to_string(), "fault": "ok", "requests": 0 },
            ])
        );

        let r = call_control(&ctl, "POST", "/b/slow=250ms").await;
        assert_eq!(r.status, 200);
        let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
        assert_eq!(
            (v["name"].as_str(), v["fault"].as_str()),
            (Some("b"), Some("slow=250ms"))
        );
        assert_eq!(b.fault(), Fault::Slow(Duration::from_millis(250)));

        call_control(&ctl, "POST", "/b/5xx").await;
        assert_eq!(get(b.addr(), "/").await.unwrap().status, 503);
        assert_eq!(a.fault(), Fault::Ok);
    }

    #[tokio::test]
    async fn control_refuse_has_taken_effect_when_the_post_returns() {
        let a = ChaosUpstream::start("a", local()).await.unwrap();
        let ctl = Control::start(local(), vec![a.clone()]).await.unwrap();
        assert_eq!(call_control(&ctl, "POST", "/a/refuse").await.status, 200);
        assert!(refused(a.addr()).await);
        assert_eq!(call_control(&ctl, "POST", "/a/ok").await.status, 200);
        assert_eq!(get(a.addr(), "/").await.unwrap().status, 200);
    }

    #[tokio::test]
    async fn control_rejects_unknown_names_bad_specs_and_non_post_changes() {
        let a = ChaosUpstream::start("a", local()).await.unwrap();
        let ctl = Control::start(local(), vec![a.clone()]).await.unwrap();

        let r = call_control(&ctl, "POST", "/zz/ok").await;
        assert_eq!(r.status, 404);
        assert!(r.body.contains("\"zz\""), "{}", r.body);

        let r = call_control(&ctl, "POST", "/a/bogus").await;
        assert_eq!(r.status, 400);
        assert!(r.body.contains("unknown fault"), "{}", r.body);

        let r = call_control(&ctl, "GET", "/a/hang").await;
        assert_eq!((r.status, r.header("allow")), (405, Some("POST")));
        assert_eq!(call_control(&ctl, "POST", "/").await.status, 405);
        assert_eq!(call_control(&ctl, "GET", "/a").await.status, 404);
        assert_eq!(call_control(&ctl, "POST", "/a/").await.status, 404);
        assert_eq!(a.fault(), Fault::Ok, "nothing above changed state");
    }

    #[tokio::test]
    async fn control_rejects_duplicate_names() {
        let a = ChaosUpstream::start("a", local()).await.unwrap();
        let err = Control::start(local(), vec![a.clone(), a])
            .await
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    }
}
