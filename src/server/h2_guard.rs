//! `H2Guard`: answers HTTP/2 frame floods with GOAWAY(ENHANCE_YOUR_CALM) and closes.
//!
//! hyper/h2 bound rapid reset (`max_pending_accept_reset_streams`), our own resets
//! (`max_local_error_reset_streams`), header list sizes and CONTINUATION counts per the header list
//! size; every other frame that costs work but carries no request (PING, SETTINGS, PRIORITY,
//! WINDOW_UPDATE, RST_STREAM on streams never opened, empty DATA/HEADERS/CONTINUATION, unknown
//! types) h2 merely processes or backpressures, so a client can keep a connection and a core busy
//! for ever (RFC 9113 §10.5; Envoy's `Http2FloodMitigationTest`; bad-inputs row 40).
//!
//! This module owns three pieces:
//! - [`FrameParser`]: a 9-byte frame-header state machine fed arbitrary chunks, never copying
//!   payloads (it keeps the one Pad Length byte of a padded DATA/HEADERS frame).
//! - [`FloodDetector`]: pure; fed each inbound frame header with an explicit `now`, and each
//!   outbound one (our DATA earns the client WINDOW_UPDATE and PING allowance). One GCRA token
//!   bucket per kind of frame, plus a cap on CONTINUATION frames per header block.
//! - [`H2Guard`]: the IO wrapper. Bytes pass through untouched; after the client preface it parses
//!   both directions' frame headers, and on a flood it writes its own GOAWAY at an outbound frame
//!   boundary, flushes, and fails every later read and write so that hyper ends the connection.
//!   HTTP/1 connections become a plain pass-through after the first byte that is not the preface.
//!
//! It does not own metrics (the integrator reads the [`FloodFlag`]), the limits' config, the TLS
//! handshake, or what happens to the socket once hyper lets go of it (no lingering close here).

use std::{
    io,
    ops::ControlFlow,
    pin::Pin,
    sync::{Arc, OnceLock},
    task::{Context, Poll, ready},
    time::{Duration, Instant},
};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// What every HTTP/2 client sends first, cleartext or TLS (RFC 9113 §3.4).
pub const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Every reason [`Verdict::Flood`] can carry (metric label values).
pub const REASONS: [&str; 8] = [
    "ping",
    "settings",
    "priority",
    "window_update",
    "reset",
    "empty_frames",
    "continuation",
    "unknown",
];

const HEAD_LEN: usize = 9;

const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const PRIORITY: u8 = 0x2;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const PUSH_PROMISE: u8 = 0x5;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
const WINDOW_UPDATE: u8 = 0x8;
const CONTINUATION: u8 = 0x9;
/// RFC 9218: the same job as PRIORITY, so it shares PRIORITY's budget.
const PRIORITY_UPDATE: u8 = 0x10;

const FLAG_END_STREAM: u8 = 0x1;
const FLAG_ACK: u8 = 0x1;
const FLAG_END_HEADERS: u8 = 0x4;
const FLAG_PADDED: u8 = 0x8;
const FLAG_PRIORITY: u8 = 0x20;

const ENHANCE_YOUR_CALM: u32 = 0xb;

/// WINDOW_UPDATE allowance earned by each DATA frame we send: a client that acknowledges every
/// frame sends one for the stream and one for the connection.
const WINDOW_UPDATES_PER_DATA_FRAME: u32 = 2;
/// WINDOW_UPDATE allowance earned by each stream the client opens (clients that raise every new
/// stream's window at once).
const WINDOW_UPDATES_PER_STREAM: u32 = 2;

/// The header of one frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FrameHeader {
    /// Payload length in bytes, padding included.
    pub length: u32,
    /// Frame type.
    pub kind: u8,
    pub flags: u8,
    /// Stream identifier, reserved bit cleared.
    pub stream: u32,
    /// The Pad Length field of a PADDED DATA or HEADERS frame; 0 otherwise.
    pub pad: u8,
}

impl FrameHeader {
    /// Payload bytes that carry something (data, or a header block fragment): the length less
    /// padding and HEADERS' priority fields. A frame of nothing but padding is empty.
    pub fn content_len(&self) -> u32 {
        let mut n = self.length;
        if matches!(self.kind, DATA | HEADERS) && self.flags & FLAG_PADDED != 0 {
            n = n.saturating_sub(1 + u32::from(self.pad));
        }
        if self.kind == HEADERS && self.flags & FLAG_PRIORITY != 0 {
            n = n.saturating_sub(5);
        }
        n
    }
}

/// Incremental frame-header parser: fed any chunking of a frame stream, it reports the same frame
/// headers. Holds 9 bytes of head and two counters; payloads are skipped, not copied.
#[derive(Debug, Clone, Default)]
pub struct FrameParser {
    head: [u8; HEAD_LEN],
    /// Head bytes collected so far (0 at a boundary or inside a payload).
    have: usize,
    /// Payload bytes of the current frame still to skip.
    skip: u32,
    /// A padded DATA/HEADERS whose next byte is its Pad Length.
    awaiting_pad: Option<FrameHeader>,
}

impl FrameParser {
    /// Whether the stream is between two frames.
    pub fn at_boundary(&self) -> bool {
        self.have == 0 && self.skip == 0 && self.awaiting_pad.is_none()
    }

    /// Bytes that surely still belong to the current frame (0 at a boundary). Inside a head the
    /// payload length is not known yet, so this is only the rest of the head.
    pub fn to_boundary(&self) -> usize {
        if let Some(h) = &self.awaiting_pad {
            return usize::try_from(h.length).unwrap_or(usize::MAX);
        }
        if self.have > 0 {
            return HEAD_LEN - self.have;
        }
        usize::try_from(self.skip).unwrap_or(usize::MAX)
    }

    /// Consumes `bytes`, calling `on_frame` for each complete frame header (for a padded
    /// DATA/HEADERS, once its Pad Length byte has arrived). Stops after a `Break` and returns the
    /// bytes consumed.
    pub fn feed(
        &mut self,
        mut bytes: &[u8],
        mut on_frame: impl FnMut(FrameHeader) -> ControlFlow<()>,
    ) -> usize {
        let total = bytes.len();
        while let Some((&first, rest)) = bytes.split_first() {
            if let Some(mut h) = self.awaiting_pad.take() {
                h.pad = first;
                self.skip = h.length.saturating_sub(1);
                bytes = rest;
                if on_frame(h).is_break() {
                    break;
                }
                continue;
            }
            if self.skip > 0 {
                let n = bytes
                    .len()
                    .min(usize::try_from(self.skip).unwrap_or(usize::MAX));
                self.skip = self
                    .skip
                    .saturating_sub(u32::try_from(n).unwrap_or(u32::MAX));
                bytes = bytes.get(n..).unwrap_or_default();
                continue;
            }
            let mut n = 0;
            for (dst, src) in self.head.iter_mut().skip(self.have).zip(bytes) {
                *dst = *src;
                n += 1;
            }
            self.have += n;
            bytes = bytes.get(n..).unwrap_or_default();
            if self.have < HEAD_LEN {
                continue;
            }
            self.have = 0;
            let [l0, l1, l2, kind, flags, s0, s1, s2, s3] = self.head;
            let h = FrameHeader {
                length: u32::from_be_bytes([0, l0, l1, l2]),
                kind,
                flags,
                stream: u32::from_be_bytes([s0, s1, s2, s3]) & 0x7fff_ffff,
                pad: 0,
            };
            if matches!(kind, DATA | HEADERS) && flags & FLAG_PADDED != 0 && h.length > 0 {
                self.awaiting_pad = Some(h);
                continue;
            }
            self.skip = h.length;
            if on_frame(h).is_break() {
                break;
            }
        }
        total - bytes.len()
    }
}

/// A token bucket: `burst` frames at once, refilled at `per_sec`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    /// Frames allowed back to back (the bucket's size); 0 disables this check.
    pub burst: u32,
    /// Frames per second the bucket refills by (at least 1 is used).
    pub per_sec: u32,
}

impl Budget {
    pub const fn new(burst: u32, per_sec: u32) -> Self {
        Self { burst, per_sec }
    }
}

/// Per-connection flood limits. The defaults sit far above what browsers, gRPC and the h2/hyper
/// clients send (see each field), and far below a flood, which sends tens of thousands of frames
/// a second: a flood is cut within its first milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FloodLimits {
    /// PINGs (and PING ACKs we did not ask for). A PING that follows DATA or HEADERS we sent is
    /// free (gRPC's rule: BDP pings answer our data); only the rest are charged. Clients ping every
    /// ten seconds at most (gRPC clamps its keepalive to 10 s). Default 50, 10/s.
    pub ping: Budget,
    /// SETTINGS frames (not ACKs). One per connection usually; gRPC's BDP estimator sends about
    /// ten as the window grows. Default 50, 10/s.
    pub settings: Budget,
    /// PRIORITY and PRIORITY_UPDATE frames (h2 ignores them, so each is cheap; Firefox sends a
    /// handful per connection and one per stream). Default 1000, 500/s.
    pub priority: Budget,
    /// WINDOW_UPDATE frames. Each DATA frame we send earns 2 more and each stream the client opens
    /// 2, so downloads never run out. Default 1000, 200/s.
    pub window_update: Budget,
    /// RST_STREAM frames. Each stream the client opens earns one (resetting your own streams is
    /// rapid reset's business, which hyper bounds); this catches resets of streams never opened.
    /// Default 1000, 100/s.
    pub reset: Budget,
    /// DATA without END_STREAM and HEADERS/CONTINUATION without END_HEADERS whose content (less
    /// padding) is empty: they carry nothing at all (Envoy allows one in a row). Default 100, 10/s.
    pub empty_frames: Budget,
    /// Frames of unknown type (which must be ignored; Chrome sends one GREASE frame). Default 200,
    /// 50/s.
    pub unknown: Budget,
    /// CONTINUATION frames in one header block; 0 disables. Default 16: our default 64 KiB header
    /// list fills at most 4 frames of the minimum 16 KiB frame size (h2 itself allows 5 at that
    /// size, but scales its cap with `max_header_list_size`, so a raised list size would let tiny
    /// frames cost a decode step each); 16 leaves room for clients that pack frames poorly.
    pub max_continuation_frames: u32,
}

impl Default for FloodLimits {
    fn default() -> Self {
        Self {
            ping: Budget::new(50, 10),
            settings: Budget::new(50, 10),
            priority: Budget::new(1000, 500),
            window_update: Budget::new(1000, 200),
            reset: Budget::new(1000, 100),
            empty_frames: Budget::new(100, 10),
            unknown: Budget::new(200, 50),
            max_continuation_frames: 16,
        }
    }
}

/// What the detector makes of one inbound frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Ok,
    /// Over a limit; the reason is one of [`REASONS`]. Sticky: every later frame gets it too.
    Flood(&'static str),
}

/// A token bucket kept as GCRA's "theoretical arrival time" (exact at any call rate, no
/// refill arithmetic per frame), plus an allowance earned by real work (our DATA frames, the
/// client's streams), spent before the bucket and capped at `burst`.
#[derive(Debug, Clone, Copy)]
struct Gcra {
    /// When the bucket would be full again; at or before `now` means full.
    tat: Instant,
    /// Time to earn one frame.
    interval: Duration,
    /// `burst` frames' worth of time.
    tolerance: Duration,
    /// Frames already paid for by work; at most `burst`.
    earned: u32,
    burst: u32,
}

impl Gcra {
    fn new(budget: Budget, now: Instant) -> Self {
        let interval = Duration::from_secs(1) / budget.per_sec.max(1);
        Self {
            tat: now,
            interval,
            tolerance: interval.saturating_mul(budget.burst),
            earned: 0,
            burst: budget.burst,
        }
    }

    /// Takes one frame's worth; false when nothing is left.
    fn take(&mut self, now: Instant) -> bool {
        if self.burst == 0 {
            return true;
        }
        if self.earned > 0 {
            self.earned -= 1;
            return true;
        }
        let Some(next) = self.tat.max(now).checked_add(self.interval) else {
            return false;
        };
        if next.saturating_duration_since(now) > self.tolerance {
            return false;
        }
        self.tat = next;
        true
    }

    /// Pays for `frames` in advance (capped at `burst`, so work done long ago buys no flood).
    fn credit(&mut self, frames: u32) {
        self.earned = self.earned.saturating_add(frames).min(self.burst);
    }
}

/// Counts one connection's inbound frames that cost work but carry no request.
#[derive(Debug, Clone)]
pub struct FloodDetector {
    ping: Gcra,
    settings: Gcra,
    priority: Gcra,
    window_update: Gcra,
    reset: Gcra,
    empty: Gcra,
    unknown: Gcra,
    max_continuations: u32,
    /// CONTINUATION frames of the header block being received; `None` outside a block.
    continuations: Option<u32>,
    /// We sent DATA or HEADERS since the client's last PING (its next PING is free).
    sent_since_ping: bool,
    /// PINGs we sent that the client has not acknowledged yet.
    pings_outstanding: u32,
    /// Highest stream id the client opened with HEADERS.
    last_stream: u32,
    flood: Option<&'static str>,
}

impl FloodDetector {
    pub fn new(limits: &FloodLimits, now: Instant) -> Self {
        Self {
            ping: Gcra::new(limits.ping, now),
            settings: Gcra::new(limits.settings, now),
            priority: Gcra::new(limits.priority, now),
            window_update: Gcra::new(limits.window_update, now),
            reset: Gcra::new(limits.reset, now),
            empty: Gcra::new(limits.empty_frames, now),
            unknown: Gcra::new(limits.unknown, now),
            max_continuations: limits.max_continuation_frames,
            continuations: None,
            sent_since_ping: false,
            pings_outstanding: 0,
            last_stream: 0,
            flood: None,
        }
    }

    /// The highest client stream id seen on HEADERS: GOAWAY's last-stream-id.
    pub fn last_stream_id(&self) -> u32 {
        self.last_stream
    }

    /// The flood found, if any.
    pub fn flood(&self) -> Option<&'static str> {
        self.flood
    }

    /// Judges one frame header from the client.
    pub fn inbound(&mut self, now: Instant, frame: &FrameHeader) -> Verdict {
        if let Some(reason) = self.flood {
            return Verdict::Flood(reason);
        }
        match self.judge(now, frame) {
            Ok(()) => Verdict::Ok,
            Err(reason) => {
                self.flood = Some(reason);
                Verdict::Flood(reason)
            }
        }
    }

    /// Notes one frame header we sent: our DATA earns WINDOW_UPDATEs, our DATA or HEADERS makes
    /// the next PING free, our PING makes one ACK expected.
    pub fn outbound(&mut self, frame: &FrameHeader) {
        match frame.kind {
            DATA => {
                self.window_update.credit(WINDOW_UPDATES_PER_DATA_FRAME);
                self.sent_since_ping = true;
            }
            HEADERS => self.sent_since_ping = true,
            PING if frame.flags & FLAG_ACK == 0 => {
                self.pings_outstanding = self.pings_outstanding.saturating_add(1);
            }
            _ => {}
        }
    }

    fn judge(&mut self, now: Instant, f: &FrameHeader) -> Result<(), &'static str> {
        let empty_fragment = f.flags & FLAG_END_HEADERS == 0 && f.content_len() == 0;
        match f.kind {
            DATA => {
                if f.flags & FLAG_END_STREAM == 0 && f.content_len() == 0 {
                    charge(&mut self.empty, now, "empty_frames")?;
                }
            }
            HEADERS => {
                if f.stream > self.last_stream && f.stream % 2 == 1 {
                    self.last_stream = f.stream;
                    self.window_update.credit(WINDOW_UPDATES_PER_STREAM);
                    self.reset.credit(1);
                }
                self.continuations = (f.flags & FLAG_END_HEADERS == 0).then_some(0);
                if empty_fragment {
                    charge(&mut self.empty, now, "empty_frames")?;
                }
            }
            CONTINUATION => {
                let count = self.continuations.unwrap_or(0).saturating_add(1);
                self.continuations = (f.flags & FLAG_END_HEADERS == 0).then_some(count);
                if self.max_continuations > 0 && count > self.max_continuations {
                    return Err("continuation");
                }
                if empty_fragment {
                    charge(&mut self.empty, now, "empty_frames")?;
                }
            }
            PRIORITY | PRIORITY_UPDATE => charge(&mut self.priority, now, "priority")?,
            RST_STREAM => charge(&mut self.reset, now, "reset")?,
            SETTINGS => {
                if f.flags & FLAG_ACK == 0 {
                    charge(&mut self.settings, now, "settings")?;
                }
            }
            PING => {
                if f.flags & FLAG_ACK != 0 {
                    if self.pings_outstanding > 0 {
                        self.pings_outstanding -= 1;
                    } else {
                        charge(&mut self.ping, now, "ping")?;
                    }
                } else if self.sent_since_ping {
                    self.sent_since_ping = false;
                } else {
                    charge(&mut self.ping, now, "ping")?;
                }
            }
            WINDOW_UPDATE => charge(&mut self.window_update, now, "window_update")?,
            // GOAWAY ends the connection; PUSH_PROMISE from a client is a protocol error h2 answers.
            GOAWAY | PUSH_PROMISE => {}
            _ => charge(&mut self.unknown, now, "unknown")?,
        }
        Ok(())
    }
}

fn charge(bucket: &mut Gcra, now: Instant, reason: &'static str) -> Result<(), &'static str> {
    if bucket.take(now) {
        Ok(())
    } else {
        Err(reason)
    }
}

/// Set once, to the reason, when a connection is closed for a flood.
pub type FloodFlag = Arc<OnceLock<&'static str>>;

/// Longest GOAWAY we write: head, last-stream-id, error code and the reason as debug data.
const GOAWAY_MAX: usize = HEAD_LEN + 8 + 16;

/// GOAWAY(ENHANCE_YOUR_CALM) with `reason` as its debug data; the bytes and their length.
fn goaway_frame(last_stream: u32, reason: &str) -> ([u8; GOAWAY_MAX], usize) {
    let debug = reason.as_bytes();
    let debug = debug.get(..debug.len().min(16)).unwrap_or_default();
    let payload = 8 + debug.len();
    let head = [0, 0, payload as u8, GOAWAY, 0, 0, 0, 0, 0];
    let last = (last_stream & 0x7fff_ffff).to_be_bytes();
    let code = ENHANCE_YOUR_CALM.to_be_bytes();
    let mut frame = [0u8; GOAWAY_MAX];
    let bytes = head.iter().chain(&last).chain(&code).chain(debug);
    for (dst, src) in frame.iter_mut().zip(bytes) {
        *dst = *src;
    }
    (frame, HEAD_LEN + payload)
}

enum Mode {
    /// Matching the client preface; `matched` bytes so far.
    Sniffing {
        matched: usize,
        limits: FloodLimits,
    },
    /// Boxed: allocated once per HTTP/2 connection, so HTTP/1 connections carry none of it.
    Http2(Box<H2State>),
    PassThrough,
}

struct H2State {
    inbound: FrameParser,
    outbound: FrameParser,
    detector: FloodDetector,
    phase: Phase,
    /// hyper already sent a GOAWAY: ours could contradict its last-stream-id, so none is sent.
    hyper_goaway: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Serving,
    /// Flood seen while hyper was mid-frame: its next write that ends the frame is followed by
    /// our GOAWAY. A second read in this phase fails without one.
    Draining,
    /// GOAWAY written (or given up on): every call fails.
    Closed,
}

/// The IO wrapper. Use [`H2Guard::flag`] before handing it to hyper to learn why it closed.
pub struct H2Guard<IO> {
    io: IO,
    mode: Mode,
    flag: FloodFlag,
}

impl<IO> H2Guard<IO> {
    /// `h2`: `Some(false)` when the connection is known to be HTTP/1 (ALPN `http/1.1`, or an
    /// HTTP/1 connection resumed after an idle release): a pass-through from the first byte.
    /// `None` or `Some(true)` (ALPN `h2`) look for the preface, which HTTP/2 clients send over TLS
    /// too: checking it keeps an HTTP/1 stream from ever being read as frames.
    pub fn new(io: IO, limits: FloodLimits, h2: Option<bool>) -> Self {
        let mode = match h2 {
            Some(false) => Mode::PassThrough,
            _ => Mode::Sniffing { matched: 0, limits },
        };
        Self {
            io,
            mode,
            flag: FloodFlag::default(),
        }
    }

    /// The shared handle set to the flood's reason when this connection is closed for one.
    pub fn flag(&self) -> FloodFlag {
        Arc::clone(&self.flag)
    }

    /// Whether the preface was seen (the connection is HTTP/2 and guarded).
    pub fn is_h2(&self) -> bool {
        matches!(self.mode, Mode::Http2(_))
    }

    pub fn get_ref(&self) -> &IO {
        &self.io
    }

    pub fn into_inner(self) -> IO {
        self.io
    }
}

fn flood_error(reason: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::ConnectionAborted,
        format!("HTTP/2 flood ({reason}): GOAWAY(ENHANCE_YOUR_CALM)"),
    )
}

impl H2State {
    fn reason(&self) -> &'static str {
        self.detector.flood().unwrap_or("flood")
    }

    /// Writes our GOAWAY straight to `io` (best effort: whatever the socket takes now), flushes
    /// and shuts the write side, then closes for good. Closing is the goal, so a full socket just
    /// means no GOAWAY.
    fn send_goaway<IO: AsyncWrite + Unpin>(&mut self, io: &mut IO, cx: &mut Context<'_>) {
        self.phase = Phase::Closed;
        if self.hyper_goaway {
            return;
        }
        let (frame, len) = goaway_frame(self.detector.last_stream_id(), self.reason());
        let mut sent = 0;
        while let Some(rest) = frame.get(sent..len).filter(|r| !r.is_empty()) {
            match Pin::new(&mut *io).poll_write(cx, rest) {
                Poll::Ready(Ok(n)) if n > 0 => sent += n,
                _ => return,
            }
        }
        let _ = Pin::new(&mut *io).poll_flush(cx);
        let _ = Pin::new(&mut *io).poll_shutdown(cx);
    }

    /// Notes the first `n` bytes hyper wrote.
    fn wrote(&mut self, bytes: &[u8]) {
        let Self {
            outbound,
            detector,
            hyper_goaway,
            ..
        } = self;
        outbound.feed(bytes, |h| {
            detector.outbound(&h);
            *hyper_goaway |= h.kind == GOAWAY;
            ControlFlow::Continue(())
        });
    }

    /// A write while draining: only up to the end of hyper's current frame, then our GOAWAY.
    fn poll_write_draining<IO: AsyncWrite + Unpin>(
        &mut self,
        io: &mut IO,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let upto = buf.len().min(self.outbound.to_boundary());
        let part = buf.get(..upto).unwrap_or_default();
        match Pin::new(&mut *io).poll_write(cx, part) {
            Poll::Ready(Ok(n)) if n > 0 => {
                self.wrote(part.get(..n).unwrap_or_default());
                if self.outbound.at_boundary() {
                    self.send_goaway(io, cx);
                    // hyper reads again only when woken: the read is where it learns to stop.
                    cx.waker().wake_by_ref();
                }
                Poll::Ready(Ok(n))
            }
            // Not writable right away (or failed): give up on the GOAWAY and just close.
            _ => {
                self.phase = Phase::Closed;
                Poll::Ready(Err(flood_error(self.reason())))
            }
        }
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> AsyncRead for H2Guard<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match &mut this.mode {
            Mode::PassThrough => return Pin::new(&mut this.io).poll_read(cx, buf),
            Mode::Http2(st) if st.phase == Phase::Closed => {
                return Poll::Ready(Err(flood_error(st.reason())));
            }
            Mode::Http2(st) if st.phase == Phase::Draining => {
                // hyper was woken and read again without finishing its frame: no GOAWAY, close.
                st.phase = Phase::Closed;
                return Poll::Ready(Err(flood_error(st.reason())));
            }
            _ => {}
        }
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.io).poll_read(cx, buf))?;
        let mut got = buf.filled().get(before..).unwrap_or_default();
        if let Mode::Sniffing { matched, limits } = &mut this.mode {
            let start = *matched;
            let mut diverged = false;
            for (have, want) in got.iter().zip(PREFACE.iter().skip(*matched)) {
                if have != want {
                    diverged = true;
                    break;
                }
                *matched += 1;
            }
            if diverged {
                this.mode = Mode::PassThrough;
                return Poll::Ready(Ok(()));
            }
            if *matched < PREFACE.len() {
                return Poll::Ready(Ok(()));
            }
            // The frames start right after the preface's last byte.
            got = got.get(PREFACE.len() - start..).unwrap_or_default();
            let now = tokio::time::Instant::now().into_std();
            this.mode = Mode::Http2(Box::new(H2State {
                inbound: FrameParser::default(),
                outbound: FrameParser::default(),
                detector: FloodDetector::new(limits, now),
                phase: Phase::Serving,
                hyper_goaway: false,
            }));
        }
        let Mode::Http2(st) = &mut this.mode else {
            return Poll::Ready(Ok(()));
        };
        if got.is_empty() {
            return Poll::Ready(Ok(()));
        }
        let now = tokio::time::Instant::now().into_std();
        let H2State {
            inbound, detector, ..
        } = &mut **st;
        let mut flood = None;
        inbound.feed(got, |h| match detector.inbound(now, &h) {
            Verdict::Ok => ControlFlow::Continue(()),
            Verdict::Flood(reason) => {
                flood = Some(reason);
                ControlFlow::Break(())
            }
        });
        let Some(reason) = flood else {
            return Poll::Ready(Ok(()));
        };
        let _ = this.flag.set(reason);
        tracing::debug!(reason, "HTTP/2 flood: sending GOAWAY(ENHANCE_YOUR_CALM)");
        // The bytes just read are the flood's: hyper never sees them.
        buf.set_filled(before);
        if st.outbound.at_boundary() {
            st.send_goaway(&mut this.io, cx);
            return Poll::Ready(Err(flood_error(reason)));
        }
        // hyper is mid-frame (its last write met a full socket). Its flush, which follows a
        // pending read, finishes the frame and writes our GOAWAY (`poll_write_draining`); the
        // wake makes sure it reads once more, and that read fails either way.
        st.phase = Phase::Draining;
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for H2Guard<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let Mode::Http2(st) = &mut this.mode else {
            return Pin::new(&mut this.io).poll_write(cx, buf);
        };
        match st.phase {
            Phase::Serving => {
                let n = ready!(Pin::new(&mut this.io).poll_write(cx, buf))?;
                st.wrote(buf.get(..n).unwrap_or_default());
                Poll::Ready(Ok(n))
            }
            Phase::Draining if buf.is_empty() => Poll::Ready(Ok(0)),
            Phase::Draining => st.poll_write_draining(&mut this.io, cx, buf),
            Phase::Closed => Poll::Ready(Err(flood_error(st.reason()))),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let Mode::Http2(st) = &mut this.mode else {
            return Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        };
        match st.phase {
            Phase::Serving => {
                let mut n = ready!(Pin::new(&mut this.io).poll_write_vectored(cx, bufs))?;
                let written = n;
                for b in bufs {
                    if n == 0 {
                        break;
                    }
                    let take = n.min(b.len());
                    st.wrote(b.get(..take).unwrap_or_default());
                    n -= take;
                }
                Poll::Ready(Ok(written))
            }
            // A short write of the first slice is a valid answer to a vectored write.
            Phase::Draining => match bufs.iter().find(|b| !b.is_empty()) {
                Some(first) => st.poll_write_draining(&mut this.io, cx, first),
                None => Poll::Ready(Ok(0)),
            },
            Phase::Closed => Poll::Ready(Err(flood_error(st.reason()))),
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Mode::Http2(st) = &this.mode
            && st.phase == Phase::Closed
        {
            return Poll::Ready(Err(flood_error(st.reason())));
        }
        Pin::new(&mut this.io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use futures_util::FutureExt as _;
    use proptest::prelude::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream, duplex};

    use super::*;

    fn head(kind: u8, flags: u8, stream: u32, length: u32) -> FrameHeader {
        FrameHeader {
            length,
            kind,
            flags,
            stream,
            pad: 0,
        }
    }

    fn encode(h: &FrameHeader, payload: &[u8]) -> Vec<u8> {
        let l = u32::try_from(payload.len()).unwrap().to_be_bytes();
        let mut out = vec![l[1], l[2], l[3], h.kind, h.flags];
        out.extend_from_slice(&h.stream.to_be_bytes());
        out.extend_from_slice(payload);
        out
    }

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        encode(&head(kind, flags, stream, 0), payload)
    }

    fn parse_all(chunks: &[&[u8]]) -> Vec<FrameHeader> {
        let mut p = FrameParser::default();
        let mut out = Vec::new();
        for c in chunks {
            let n = p.feed(c, |h| {
                out.push(h);
                ControlFlow::Continue(())
            });
            assert_eq!(n, c.len());
        }
        out
    }

    fn t0() -> Instant {
        Instant::now()
    }

    fn feed_n(d: &mut FloodDetector, now: Instant, h: &FrameHeader, n: usize) -> Option<usize> {
        (0..n).position(|_| d.inbound(now, h) != Verdict::Ok)
    }

    // ---- parser ----

    #[test]
    fn parses_length_type_flags_and_clears_the_reserved_bit() {
        let mut bytes = frame(HEADERS, FLAG_END_HEADERS, 0x8000_0003, b"abc");
        bytes.extend(frame(PING, 0, 0, &[0; 8]));
        let got = parse_all(&[&bytes]);
        assert_eq!(
            got,
            vec![head(HEADERS, FLAG_END_HEADERS, 3, 3), head(PING, 0, 0, 8)]
        );
    }

    #[test]
    fn a_24_bit_length_is_skipped_whole() {
        let payload = vec![7u8; 70_000];
        let mut bytes = frame(DATA, 0, 1, &payload);
        bytes.extend(frame(PING, FLAG_ACK, 0, &[0; 8]));
        let got = parse_all(&[&bytes[..5], &bytes[5..40_000], &bytes[40_000..]]);
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].length, 70_000);
        assert_eq!(got[1], head(PING, FLAG_ACK, 0, 8));
    }

    #[test]
    fn padded_frames_report_their_pad_length_and_content() {
        // DATA: pad length 4, 2 bytes of data, 4 of padding.
        let bytes = frame(DATA, FLAG_PADDED, 1, &[4, b'h', b'i', 0, 0, 0, 0]);
        let got = parse_all(&[&bytes[..9], &bytes[9..10], &bytes[10..]]);
        assert_eq!(got[0].pad, 4);
        assert_eq!(got[0].content_len(), 2);
        // Nothing but padding is empty.
        let only_pad = parse_all(&[&frame(DATA, FLAG_PADDED, 1, &[3, 0, 0, 0])]);
        assert_eq!(only_pad[0].content_len(), 0);
        // HEADERS with priority fields and padding around an empty block.
        let h = parse_all(&[&frame(
            HEADERS,
            FLAG_PADDED | FLAG_PRIORITY,
            1,
            &[1, 0, 0, 0, 0, 16, 0],
        )]);
        assert_eq!(h[0].content_len(), 0);
    }

    #[test]
    fn boundary_tracking() {
        let bytes = frame(DATA, 0, 1, &[1; 10]);
        let mut p = FrameParser::default();
        assert!(p.at_boundary());
        p.feed(&bytes[..4], |_| ControlFlow::Continue(()));
        assert!(!p.at_boundary());
        assert_eq!(p.to_boundary(), 5, "the rest of the head");
        p.feed(&bytes[4..12], |_| ControlFlow::Continue(()));
        assert_eq!(p.to_boundary(), 7);
        p.feed(&bytes[12..], |_| ControlFlow::Continue(()));
        assert!(p.at_boundary());
    }

    #[test]
    fn break_stops_consuming_after_the_frame() {
        let mut bytes = frame(PING, 0, 0, &[]);
        bytes.extend(frame(PING, 0, 0, &[]));
        let mut p = FrameParser::default();
        let n = p.feed(&bytes, |_| ControlFlow::Break(()));
        assert_eq!(n, 9);
    }

    fn arb_frame() -> impl Strategy<Value = (u8, u8, u32, Vec<u8>)> {
        (
            prop_oneof![0u8..=10, Just(0x10), any::<u8>()],
            any::<u8>(),
            any::<u32>(),
            prop::collection::vec(any::<u8>(), 0..40),
        )
    }

    proptest! {
        #[test]
        fn any_chunking_yields_the_same_frames(
            frames in prop::collection::vec(arb_frame(), 0..20),
            cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..30),
        ) {
            let mut bytes = Vec::new();
            for (kind, flags, stream, payload) in &frames {
                bytes.extend(frame(*kind, *flags, *stream, payload));
            }
            let whole = parse_all(&[&bytes]);
            prop_assert_eq!(whole.len(), frames.len());
            for (h, (kind, flags, stream, payload)) in whole.iter().zip(&frames) {
                prop_assert_eq!(h.kind, *kind);
                prop_assert_eq!(h.flags, *flags);
                prop_assert_eq!(h.stream, stream & 0x7fff_ffff);
                prop_assert_eq!(h.length as usize, payload.len());
            }
            let mut points: Vec<usize> = cuts.iter().map(|i| i.index(bytes.len() + 1)).collect();
            points.sort_unstable();
            let mut chunks = Vec::new();
            let mut at = 0;
            for p in points {
                chunks.push(&bytes[at..p]);
                at = p;
            }
            chunks.push(&bytes[at..]);
            prop_assert_eq!(parse_all(&chunks), whole);
        }
    }

    // ---- detector ----

    #[test]
    fn ping_flood_is_cut_after_the_burst_and_refills_over_time() {
        let now = t0();
        let mut d = FloodDetector::new(&FloodLimits::default(), now);
        let ping = head(PING, 0, 0, 8);
        assert_eq!(feed_n(&mut d, now, &ping, 100), Some(50));
        assert_eq!(d.flood(), Some("ping"));
        // Sticky.
        assert_eq!(
            d.inbound(now + Duration::from_secs(60), &ping),
            Verdict::Flood("ping")
        );

        let mut d = FloodDetector::new(&FloodLimits::default(), now);
        assert_eq!(feed_n(&mut d, now, &ping, 50), None);
        // 10/s: one more every 100 ms, not more.
        let later = now + Duration::from_millis(100);
        assert_eq!(d.inbound(later, &ping), Verdict::Ok);
        assert_eq!(d.inbound(later, &ping), Verdict::Flood("ping"));
    }

    #[test]
    fn a_steady_rate_under_the_limit_never_trips() {
        let now = t0();
        let mut d = FloodDetector::new(&FloodLimits::default(), now);
        // 9 SETTINGS a second for ten minutes (limit 10/s).
        for i in 0..5400u64 {
            let at = now + Duration::from_millis(i * 1000 / 9);
            assert_eq!(d.inbound(at, &head(SETTINGS, 0, 0, 6)), Verdict::Ok, "{i}");
        }
    }

    #[test]
    fn pings_after_our_data_or_headers_are_free() {
        let now = t0();
        let mut d = FloodDetector::new(&FloodLimits::default(), now);
        for _ in 0..10_000 {
            d.outbound(&head(DATA, 0, 1, 16_384));
            assert_eq!(d.inbound(now, &head(PING, 0, 0, 8)), Verdict::Ok);
        }
        // Two PINGs per DATA frame: the second is charged.
        let mut d = FloodDetector::new(&FloodLimits::default(), now);
        let tripped = (0..1000).position(|_| {
            d.outbound(&head(HEADERS, FLAG_END_HEADERS, 1, 10));
            d.inbound(now, &head(PING, 0, 0, 8));
            d.inbound(now, &head(PING, 0, 0, 8)) != Verdict::Ok
        });
        assert_eq!(tripped, Some(50));
    }

    #[test]
    fn ping_acks_are_free_only_for_pings_we_sent() {
        let now = t0();
        let mut d = FloodDetector::new(&FloodLimits::default(), now);
        let ack = head(PING, FLAG_ACK, 0, 8);
        for _ in 0..200 {
            d.outbound(&head(PING, 0, 0, 8));
            assert_eq!(d.inbound(now, &ack), Verdict::Ok);
        }
        assert_eq!(feed_n(&mut d, now, &ack, 100), Some(50));
    }

    #[test]
    fn settings_acks_are_not_counted() {
        let now = t0();
        let mut d = FloodDetector::new(&FloodLimits::default(), now);
        assert_eq!(
            feed_n(&mut d, now, &head(SETTINGS, FLAG_ACK, 0, 0), 1000),
            None
        );
        assert_eq!(feed_n(&mut d, now, &head(SETTINGS, 0, 0, 0), 100), Some(50));
        assert_eq!(d.flood(), Some("settings"));
    }

    #[test]
    fn window_updates_are_earned_by_our_data_frames_and_new_streams() {
        let now = t0();
        let wu = head(WINDOW_UPDATE, 0, 0, 4);
        let mut d = FloodDetector::new(&FloodLimits::default(), now);
        assert_eq!(feed_n(&mut d, now, &wu, 2000), Some(1000));
        assert_eq!(d.flood(), Some("window_update"));

        // A download acknowledged frame by frame (stream + connection) runs for ever.
        let mut d = FloodDetector::new(&FloodLimits::default(), now);
        for _ in 0..100_000 {
            d.outbound(&head(DATA, 0, 1, 16_384));
            assert_eq!(d.inbound(now, &wu), Verdict::Ok);
            assert_eq!(d.inbound(now, &head(WINDOW_UPDATE, 0, 1, 4)), Verdict::Ok);
        }
        // Each new stream earns two.
        let mut d = FloodDetector::new(&FloodLimits::default(), now);
        for s in 0..5000u32 {
            d.inbound(
                now,
                &head(HEADERS, FLAG_END_HEADERS | FLAG_END_STREAM, 2 * s + 1, 20),
            );
            assert_eq!(feed_n(&mut d, now, &wu, 2), None, "stream {s}");
        }
    }

    #[test]
    fn earned_allowance_is_capped_at_the_burst() {
        let now = t0();
        let mut d = FloodDetector::new(&FloodLimits::default(), now);
        for _ in 0..100_000 {
            d.outbound(&head(DATA, 0, 1, 16_384));
        }
        // 1000 earned, then the full bucket's 1000.
        assert_eq!(
            feed_n(&mut d, now, &head(WINDOW_UPDATE, 0, 0, 4), 5000),
            Some(2000)
        );
    }

    #[test]
    fn resets_of_opened_streams_are_free_others_are_charged() {
        let now = t0();
        let mut d = FloodDetector::new(&FloodLimits::default(), now);
        for s in 0..10_000u32 {
            let id = 2 * s + 1;
            d.inbound(now, &head(HEADERS, FLAG_END_HEADERS, id, 20));
            assert_eq!(d.inbound(now, &head(RST_STREAM, 0, id, 4)), Verdict::Ok);
        }
        assert_eq!(d.last_stream_id(), 19_999);
        // Resets of streams never opened.
        assert_eq!(
            feed_n(&mut d, now, &head(RST_STREAM, 0, 1, 4), 2000),
            Some(1000)
        );
        assert_eq!(d.flood(), Some("reset"));
    }

    #[test]
    fn last_stream_id_ignores_even_ids_and_lower_ids() {
        let now = t0();
        let mut d = FloodDetector::new(&FloodLimits::default(), now);
        d.inbound(now, &head(HEADERS, FLAG_END_HEADERS, 7, 20));
        d.inbound(now, &head(HEADERS, FLAG_END_HEADERS, 3, 20));
        d.inbound(now, &head(HEADERS, FLAG_END_HEADERS, 10, 20));
        d.inbound(now, &head(PRIORITY, 0, 101, 5));
        assert_eq!(d.last_stream_id(), 7);
    }

    #[test]
    fn empty_data_without_end_stream_is_charged_end_stream_and_content_are_not() {
        let now = t0();
        let mut d = FloodDetector::new(&FloodLimits::default(), now);
        assert_eq!(
            feed_n(&mut d, now, &head(DATA, FLAG_END_STREAM, 1, 0), 1000),
            None
        );
        assert_eq!(feed_n(&mut d, now, &head(DATA, 0, 1, 1), 1000), None);
        let only_padding = FrameHeader {
            pad: 9,
            ..head(DATA, FLAG_PADDED, 1, 10)
        };
        assert_eq!(feed_n(&mut d, now, &only_padding, 1000), Some(100));
        assert_eq!(d.flood(), Some("empty_frames"));
    }

    #[test]
    fn empty_header_fragments_without_end_headers_are_charged() {
        let now = t0();
        let mut d = FloodDetector::new(&FloodLimits::default(), now);
        // Empty HEADERS ending the block (an empty block: h2's business) are not.
        for s in 0..500u32 {
            assert_eq!(
                d.inbound(now, &head(HEADERS, FLAG_END_HEADERS, 2 * s + 1, 0)),
                Verdict::Ok
            );
        }
        let tripped = (0..1000u32)
            .position(|s| d.inbound(now, &head(HEADERS, 0, 2001 + 2 * s, 0)) != Verdict::Ok);
        assert_eq!(tripped, Some(100));
        assert_eq!(d.flood(), Some("empty_frames"));
    }

    #[test]
    fn continuation_frames_are_capped_per_header_block() {
        let now = t0();
        let mut d = FloodDetector::new(&FloodLimits::default(), now);
        // Blocks of 16 CONTINUATIONs, many of them: fine.
        for s in 0..100u32 {
            assert_eq!(
                d.inbound(now, &head(HEADERS, 0, 2 * s + 1, 100)),
                Verdict::Ok
            );
            assert_eq!(
                feed_n(&mut d, now, &head(CONTINUATION, 0, 2 * s + 1, 100), 15),
                None
            );
            let last = head(CONTINUATION, FLAG_END_HEADERS, 2 * s + 1, 100);
            assert_eq!(d.inbound(now, &last), Verdict::Ok);
        }
        // The 17th of one block is not.
        d.inbound(now, &head(HEADERS, 0, 1001, 100));
        assert_eq!(
            feed_n(&mut d, now, &head(CONTINUATION, 0, 1001, 100), 100),
            Some(16)
        );
        assert_eq!(d.flood(), Some("continuation"));
    }

    #[test]
    fn priority_and_unknown_frames_have_their_own_budgets() {
        let now = t0();
        let mut d = FloodDetector::new(&FloodLimits::default(), now);
        assert_eq!(
            feed_n(&mut d, now, &head(PRIORITY, 0, 1, 5), 5000),
            Some(1000)
        );
        assert_eq!(d.flood(), Some("priority"));
        let mut d = FloodDetector::new(&FloodLimits::default(), now);
        assert_eq!(feed_n(&mut d, now, &head(0xfa, 0, 0, 0), 5000), Some(200));
        assert_eq!(d.flood(), Some("unknown"));
        // PRIORITY_UPDATE shares PRIORITY's budget.
        let mut d = FloodDetector::new(&FloodLimits::default(), now);
        assert_eq!(
            feed_n(&mut d, now, &head(PRIORITY_UPDATE, 0, 0, 5), 5000),
            Some(1000)
        );
        assert_eq!(d.flood(), Some("priority"));
    }

    #[test]
    fn a_zero_burst_disables_a_check() {
        let now = t0();
        let limits = FloodLimits {
            ping: Budget::new(0, 0),
            max_continuation_frames: 0,
            ..FloodLimits::default()
        };
        let mut d = FloodDetector::new(&limits, now);
        assert_eq!(feed_n(&mut d, now, &head(PING, 0, 0, 8), 100_000), None);
        d.inbound(now, &head(HEADERS, 0, 1, 100));
        assert_eq!(
            feed_n(&mut d, now, &head(CONTINUATION, 0, 1, 100), 10_000),
            None
        );
    }

    #[test]
    fn every_reason_is_listed() {
        let now = t0();
        let kinds = [
            (PING, "ping"),
            (SETTINGS, "settings"),
            (PRIORITY, "priority"),
            (WINDOW_UPDATE, "window_update"),
            (RST_STREAM, "reset"),
            (DATA, "empty_frames"),
            (0x20, "unknown"),
        ];
        for (kind, reason) in kinds {
            let mut d = FloodDetector::new(&FloodLimits::default(), now);
            feed_n(&mut d, now, &head(kind, 0, 1, 0), 10_000);
            assert_eq!(d.flood(), Some(reason));
            assert!(REASONS.contains(&reason));
        }
        assert!(REASONS.contains(&"continuation"));
    }

    proptest! {
        /// Whatever the traffic, a connection within `per_sec` after its burst is never cut.
        #[test]
        fn within_budget_is_never_a_flood(
            kind in prop::sample::select(vec![PING, SETTINGS, PRIORITY, WINDOW_UPDATE, RST_STREAM, 0x42]),
            gaps_ms in prop::collection::vec(100u64..2000, 1..300),
        ) {
            let start = t0();
            let mut d = FloodDetector::new(&FloodLimits::default(), start);
            // Burst used up at once, then at most 10 a second (the smallest default rate).
            let mut now = start;
            prop_assert_eq!(feed_n(&mut d, now, &head(kind, 0, 1, 8), 50), None);
            for g in gaps_ms {
                now += Duration::from_millis(g);
                prop_assert_eq!(d.inbound(now, &head(kind, 0, 1, 8)), Verdict::Ok);
            }
        }
    }

    // ---- the IO wrapper ----

    fn settings_frame() -> Vec<u8> {
        frame(SETTINGS, 0, 0, &[])
    }

    /// A guard around the server end of a duplex pipe and the client end.
    fn pipe(h2: Option<bool>) -> (H2Guard<DuplexStream>, DuplexStream) {
        let (client, server) = duplex(1 << 20);
        (H2Guard::new(server, FloodLimits::default(), h2), client)
    }

    async fn read_some(g: &mut H2Guard<DuplexStream>) -> io::Result<Vec<u8>> {
        let mut buf = vec![0u8; 1 << 16];
        let n = g.read(&mut buf).await?;
        buf.truncate(n);
        Ok(buf)
    }

    fn parse_frames(bytes: &[u8]) -> Vec<(FrameHeader, Vec<u8>)> {
        let mut out = Vec::new();
        let mut at = 0;
        while at + HEAD_LEN <= bytes.len() {
            let h = parse_all(&[&bytes[at..at + HEAD_LEN]])[0];
            let end = at + HEAD_LEN + h.length as usize;
            out.push((h, bytes[at + HEAD_LEN..end].to_vec()));
            at = end;
        }
        assert_eq!(at, bytes.len(), "whole frames only");
        out
    }

    #[tokio::test]
    async fn http1_passes_through_untouched() {
        let (mut g, mut client) = pipe(None);
        let req = b"GET / HTTP/1.1\r\nhost: a\r\n\r\n";
        client.write_all(req).await.unwrap();
        assert_eq!(read_some(&mut g).await.unwrap(), req);
        assert!(!g.is_h2());
        // Bytes that would be a PING flood on HTTP/2 are just bytes here.
        let flood: Vec<u8> = (0..200).flat_map(|_| frame(PING, 0, 0, &[0; 8])).collect();
        client.write_all(&flood).await.unwrap();
        let mut got = Vec::new();
        while got.len() < flood.len() {
            got.extend(read_some(&mut g).await.unwrap());
        }
        assert_eq!(got, flood);
        g.write_all(b"HTTP/1.1 200 OK\r\n\r\n").await.unwrap();
        assert!(g.flag().get().is_none());
    }

    #[tokio::test]
    async fn known_http1_is_never_sniffed() {
        let (mut g, mut client) = pipe(Some(false));
        let mut bytes = PREFACE.to_vec();
        for _ in 0..200 {
            bytes.extend(frame(PING, 0, 0, &[0; 8]));
        }
        client.write_all(&bytes).await.unwrap();
        let mut got = Vec::new();
        while got.len() < bytes.len() {
            got.extend(read_some(&mut g).await.unwrap());
        }
        assert_eq!(got, bytes);
        assert!(!g.is_h2());
    }

    #[tokio::test]
    async fn preface_split_across_reads_is_recognised_and_bytes_pass_through() {
        let (mut g, mut client) = pipe(Some(true));
        let mut sent = Vec::new();
        for part in [&PREFACE[..3], &PREFACE[3..20]] {
            client.write_all(part).await.unwrap();
            sent.extend(read_some(&mut g).await.unwrap());
            assert!(!g.is_h2());
        }
        // The rest of the preface and the first frame in one read.
        let mut rest = PREFACE[20..].to_vec();
        rest.extend(settings_frame());
        client.write_all(&rest).await.unwrap();
        sent.extend(read_some(&mut g).await.unwrap());
        assert!(g.is_h2());
        let mut expected = PREFACE.to_vec();
        expected.extend(settings_frame());
        assert_eq!(sent, expected);
    }

    /// A guard that has read the preface and our SETTINGS, and written the server's SETTINGS.
    async fn h2_pipe() -> (H2Guard<DuplexStream>, DuplexStream) {
        let (mut g, mut client) = pipe(None);
        let mut hello = PREFACE.to_vec();
        hello.extend(settings_frame());
        client.write_all(&hello).await.unwrap();
        let mut got = Vec::new();
        while got.len() < hello.len() {
            got.extend(read_some(&mut g).await.unwrap());
        }
        g.write_all(&settings_frame()).await.unwrap();
        let mut buf = [0u8; 9];
        client.read_exact(&mut buf).await.unwrap();
        assert!(g.is_h2());
        (g, client)
    }

    fn ping_flood(n: usize) -> Vec<u8> {
        (0..n).flat_map(|_| frame(PING, 0, 0, &[1; 8])).collect()
    }

    #[tokio::test]
    async fn a_flood_at_an_outbound_boundary_gets_goaway_and_fails_reads_and_writes() {
        let (mut g, mut client) = h2_pipe().await;
        let flag = g.flag();
        client
            .write_all(&frame(HEADERS, FLAG_END_HEADERS | FLAG_END_STREAM, 5, b"x"))
            .await
            .unwrap();
        read_some(&mut g).await.unwrap();
        client.write_all(&ping_flood(100)).await.unwrap();
        let err = loop {
            match read_some(&mut g).await {
                Ok(_) => {}
                Err(e) => break e,
            }
        };
        assert_eq!(err.kind(), io::ErrorKind::ConnectionAborted);
        assert_eq!(flag.get(), Some(&"ping"));
        assert!(g.read(&mut [0u8; 16]).await.is_err());
        assert!(g.write(&settings_frame()).await.is_err());
        // The client got exactly one GOAWAY(ENHANCE_YOUR_CALM, last stream 5), then EOF.
        let mut got = Vec::new();
        client.read_to_end(&mut got).await.unwrap();
        let frames = parse_frames(&got);
        assert_eq!(frames.len(), 1);
        let (h, payload) = &frames[0];
        assert_eq!((h.kind, h.stream), (GOAWAY, 0));
        assert_eq!(&payload[..4], &5u32.to_be_bytes());
        assert_eq!(&payload[4..8], &ENHANCE_YOUR_CALM.to_be_bytes());
        assert_eq!(&payload[8..], b"ping");
    }

    #[tokio::test]
    async fn a_flood_while_hyper_is_mid_frame_waits_for_the_frame_then_sends_goaway() {
        let (mut g, mut client) = h2_pipe().await;
        let data = frame(DATA, 0, 1, &[9; 100]);
        // hyper's write stopped inside a frame (as when the socket filled up).
        g.write_all(&data[..40]).await.unwrap();
        client.write_all(&ping_flood(100)).await.unwrap();
        // The read that sees the flood waits (the flood's bytes never reach hyper).
        let mut buf = vec![0u8; 1 << 16];
        let mut pending = false;
        for _ in 0..20 {
            match g.read(&mut buf).now_or_never() {
                None => {
                    pending = true;
                    break;
                }
                Some(r) => {
                    r.unwrap();
                }
            }
        }
        assert!(pending, "the flood must make the read wait, not fail");
        assert_eq!(g.flag().get(), Some(&"ping"));
        // hyper writes the rest of its frame and more: only the frame is taken, then our GOAWAY.
        let mut more = data[40..].to_vec();
        more.extend(frame(PING, FLAG_ACK, 0, &[1; 8]));
        let n = g.write(&more).await.unwrap();
        assert_eq!(n, data.len() - 40);
        assert!(g.write(&more[n..]).await.is_err());
        assert!(g.read(&mut buf).await.is_err());
        drop(g);
        let mut got = Vec::new();
        client.read_to_end(&mut got).await.unwrap();
        // Server SETTINGS were read in `h2_pipe`; here: the whole DATA frame, then GOAWAY.
        let frames = parse_frames(&got);
        assert_eq!(frames.len(), 2);
        assert_eq!(frames[0].0, head(DATA, 0, 1, 100));
        assert_eq!(frames[1].0.kind, GOAWAY);
        assert_eq!(&frames[1].1[4..8], &ENHANCE_YOUR_CALM.to_be_bytes());
    }

    #[tokio::test]
    async fn a_second_read_while_still_mid_frame_fails_without_goaway() {
        let (mut g, mut client) = h2_pipe().await;
        let data = frame(DATA, 0, 1, &[9; 100]);
        g.write_all(&data[..40]).await.unwrap();
        client.write_all(&ping_flood(100)).await.unwrap();
        let mut buf = vec![0u8; 1 << 16];
        let err = loop {
            match g.read(&mut buf).now_or_never() {
                None => {}
                Some(Ok(_)) => {}
                Some(Err(e)) => break e,
            }
        };
        assert_eq!(err.kind(), io::ErrorKind::ConnectionAborted);
        assert!(g.write(&data[40..]).await.is_err());
        drop(g);
        let mut got = Vec::new();
        client.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, &data[..40], "no GOAWAY inside hyper's frame");
    }

    #[tokio::test]
    async fn vectored_writes_are_tracked_across_slices() {
        let (mut g, mut client) = h2_pipe().await;
        let f1 = frame(DATA, 0, 1, &[1; 30]);
        let f2 = frame(HEADERS, FLAG_END_HEADERS, 1, &[2; 12]);
        // Slices cut through heads and payloads.
        let all: Vec<u8> = f1.iter().chain(&f2).copied().collect();
        let (a, rest) = all.split_at(4);
        let (b, c) = rest.split_at(30);
        let slices = [
            io::IoSlice::new(a),
            io::IoSlice::new(b),
            io::IoSlice::new(c),
        ];
        let mut written = 0;
        while written < all.len() {
            let n = std::future::poll_fn(|cx| {
                let skip = written;
                let mut owned: Vec<io::IoSlice<'_>> = Vec::new();
                let mut at = 0;
                for s in &slices {
                    let end = at + s.len();
                    if end > skip {
                        owned.push(io::IoSlice::new(&s[skip.saturating_sub(at)..]));
                    }
                    at = end;
                }
                Pin::new(&mut g).poll_write_vectored(cx, &owned)
            })
            .await
            .unwrap();
            written += n;
        }
        let Mode::Http2(st) = &g.mode else {
            panic!("h2")
        };
        assert!(st.outbound.at_boundary());
        assert!(
            st.detector.sent_since_ping,
            "our HEADERS and DATA were seen"
        );
        let mut got = vec![0u8; all.len()];
        client.read_exact(&mut got).await.unwrap();
        assert_eq!(got, all);
    }

    #[tokio::test]
    async fn a_well_behaved_stream_of_frames_is_never_cut() {
        let (mut g, mut client) = h2_pipe().await;
        let mut traffic = Vec::new();
        for s in 0..200u32 {
            let id = 2 * s + 1;
            traffic.extend(frame(HEADERS, FLAG_END_HEADERS, id, b"hdrs"));
            traffic.extend(frame(DATA, FLAG_END_STREAM, id, b"body"));
            traffic.extend(frame(WINDOW_UPDATE, 0, 0, &1u32.to_be_bytes()));
        }
        traffic.extend(ping_flood(20));
        client.write_all(&traffic).await.unwrap();
        let mut got = Vec::new();
        while got.len() < traffic.len() {
            got.extend(read_some(&mut g).await.unwrap());
        }
        assert_eq!(got, traffic);
        assert!(g.flag().get().is_none());
    }
}
