//! A raw HTTP/2 (h2c prior knowledge) client that writes exact frames, including malformed ones no
//! real client library would send, and reports what the server did with each stream.
//!
//! HPACK: requests use "literal without indexing, new name" fields only (no table state), so any
//! bytes can be sent as a name or a value. Responses are decoded only as far as `:status`.

use std::{net::SocketAddr, time::Duration};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

use super::STEP;

pub const DATA: u8 = 0;
pub const HEADERS: u8 = 1;
pub const RST_STREAM: u8 = 3;
pub const SETTINGS: u8 = 4;
pub const PING: u8 = 6;
pub const GOAWAY: u8 = 7;
pub const WINDOW_UPDATE: u8 = 8;

pub const END_STREAM: u8 = 0x1;
pub const END_HEADERS: u8 = 0x4;

pub const PROTOCOL_ERROR: u32 = 0x1;
pub const REFUSED_STREAM: u32 = 0x7;

/// Header fields as raw (name, value) bytes, in order.
pub type Fields<'a> = Vec<(&'a [u8], &'a [u8])>;

#[derive(Debug, Clone)]
pub struct Frame {
    pub kind: u8,
    pub flags: u8,
    pub stream: u32,
    pub payload: Vec<u8>,
}

/// What the server did with one stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A response head (`:status` when it could be decoded).
    Response(Option<u16>),
    /// RST_STREAM with this error code.
    Reset(u32),
    /// GOAWAY for the whole connection, with this error code.
    GoAway(u32),
    /// The connection closed.
    Closed,
}

pub struct H2Conn {
    stream: TcpStream,
    buf: Vec<u8>,
    /// Frames read while looking for something else (kept for later questions).
    pub frames: Vec<Frame>,
}

fn encode_int(out: &mut Vec<u8>, first_bits: u8, prefix: u8, mut value: usize) {
    let max = (1usize << prefix) - 1;
    if value < max {
        out.push(first_bits | value as u8);
        return;
    }
    out.push(first_bits | max as u8);
    value -= max;
    while value >= 128 {
        out.push((value % 128) as u8 | 0x80);
        value /= 128;
    }
    out.push(value as u8);
}

/// A header block of literal-without-indexing fields with new (literal) names.
pub fn header_block(fields: &[(&[u8], &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, value) in fields {
        out.push(0x00);
        encode_int(&mut out, 0, 7, name.len());
        out.extend_from_slice(name);
        encode_int(&mut out, 0, 7, value.len());
        out.extend_from_slice(value);
    }
    out
}

/// The usual request pseudo-headers for `GET path` on `authority`.
pub fn get_fields<'a>(authority: &'a str, path: &'a str) -> Fields<'a> {
    vec![
        (b":method".as_slice(), b"GET".as_slice()),
        (b":scheme", b"http"),
        (b":authority", authority.as_bytes()),
        (b":path", path.as_bytes()),
    ]
}

impl H2Conn {
    /// Connects, sends the preface and an empty SETTINGS, and acknowledges the server's SETTINGS.
    pub async fn connect(addr: SocketAddr) -> H2Conn {
        let stream = TcpStream::connect(addr).await.expect("connect");
        stream.set_nodelay(true).ok();
        let mut c = H2Conn {
            stream,
            buf: Vec::new(),
            frames: Vec::new(),
        };
        c.stream
            .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
            .await
            .expect("preface");
        c.write_frame(SETTINGS, 0, 0, &[]).await;
        // Wait for the server's SETTINGS so our ACK (sent by `read_frame`) precedes any stream:
        // its limits apply from the moment it sees that ACK.
        loop {
            let f = c.read_frame(STEP).await.expect("server SETTINGS");
            if f.kind == SETTINGS && f.flags & 1 == 0 {
                break;
            }
        }
        c
    }

    pub async fn write_frame(&mut self, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
        let mut out = Vec::with_capacity(9 + payload.len());
        let len = payload.len();
        out.extend_from_slice(&[(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags]);
        out.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
        out.extend_from_slice(payload);
        // The server may already have closed; the outcome will say so.
        let _ = self.stream.write_all(&out).await;
    }

    /// HEADERS (END_HEADERS set) with these fields.
    pub async fn headers(&mut self, stream: u32, fields: &[(&[u8], &[u8])], end_stream: bool) {
        let block = header_block(fields);
        let flags = END_HEADERS | if end_stream { END_STREAM } else { 0 };
        self.write_frame(HEADERS, flags, stream, &block).await;
    }

    pub async fn data(&mut self, stream: u32, data: &[u8], end_stream: bool) {
        let flags = if end_stream { END_STREAM } else { 0 };
        self.write_frame(DATA, flags, stream, data).await;
    }

    /// Reads the next frame (answering SETTINGS and PING as a client must); None on close or after
    /// `wait`.
    pub async fn read_frame(&mut self, wait: Duration) -> Option<Frame> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if self.buf.len() >= 9 {
                let len = (usize::from(self.buf[0]) << 16)
                    | (usize::from(self.buf[1]) << 8)
                    | usize::from(self.buf[2]);
                if self.buf.len() >= 9 + len {
                    let kind = self.buf[3];
                    let flags = self.buf[4];
                    let stream =
                        u32::from_be_bytes([self.buf[5], self.buf[6], self.buf[7], self.buf[8]])
                            & 0x7fff_ffff;
                    let payload = self.buf[9..9 + len].to_vec();
                    self.buf.drain(..9 + len);
                    if kind == SETTINGS && flags & 1 == 0 {
                        self.write_frame(SETTINGS, 1, 0, &[]).await;
                    }
                    if kind == PING && flags & 1 == 0 {
                        self.write_frame(PING, 1, 0, &payload).await;
                    }
                    return Some(Frame {
                        kind,
                        flags,
                        stream,
                        payload,
                    });
                }
            }
            self.buf.reserve(16384);
            match tokio::time::timeout_at(deadline, self.stream.read_buf(&mut self.buf)).await {
                Ok(Ok(n)) if n > 0 => {}
                _ => return None,
            }
        }
    }

    /// Reads until the server answers `stream` (a response head or a reset) or ends the
    /// connection.
    pub async fn outcome(&mut self, stream: u32) -> Outcome {
        if let Some(o) = self.known_outcome(stream) {
            return o;
        }
        loop {
            let Some(f) = self.read_frame(STEP).await else {
                return Outcome::Closed;
            };
            self.frames.push(f);
            if let Some(o) = self.known_outcome(stream) {
                return o;
            }
        }
    }

    fn known_outcome(&self, stream: u32) -> Option<Outcome> {
        for f in &self.frames {
            match f.kind {
                HEADERS if f.stream == stream => {
                    return Some(Outcome::Response(decode_status(&f.payload)));
                }
                RST_STREAM if f.stream == stream => {
                    return Some(Outcome::Reset(code(&f.payload, 0)));
                }
                _ => {}
            }
        }
        // A graceful GOAWAY (NO_ERROR, this stream at or below its last id) lets the stream finish.
        self.frames
            .iter()
            .filter(|f| f.kind == GOAWAY)
            .find(|f| code(&f.payload, 4) != 0 || code(&f.payload, 0) & 0x7fff_ffff < stream)
            .map(|f| Outcome::GoAway(code(&f.payload, 4)))
    }

    /// The DATA of `stream` until END_STREAM (true) or a reset/close (false).
    pub async fn body(&mut self, stream: u32) -> (Vec<u8>, bool) {
        let mut body = Vec::new();
        let mut i = 0;
        loop {
            while i < self.frames.len() {
                let f = &self.frames[i];
                i += 1;
                if f.stream != stream {
                    continue;
                }
                match f.kind {
                    DATA => {
                        body.extend_from_slice(&f.payload);
                        if f.flags & END_STREAM != 0 {
                            return (body, true);
                        }
                    }
                    HEADERS if f.flags & END_STREAM != 0 => return (body, true),
                    RST_STREAM => return (body, false),
                    _ => {}
                }
            }
            match self.read_frame(STEP).await {
                Some(f) => self.frames.push(f),
                None => return (body, false),
            }
        }
    }

    /// The first GOAWAY received (reading on until one comes or the connection ends).
    pub async fn goaway(&mut self) -> Option<u32> {
        loop {
            if let Some(f) = self.frames.iter().find(|f| f.kind == GOAWAY) {
                return Some(code(&f.payload, 4));
            }
            let f = self.read_frame(STEP).await?;
            self.frames.push(f);
        }
    }
}

fn code(payload: &[u8], at: usize) -> u32 {
    payload
        .get(at..at + 4)
        .map_or(u32::MAX, |b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
}

/// `:status` from the first field of a response header block (servers send it first), for the
/// static-table statuses and literal ones with plain or Huffman-coded digits.
pub fn decode_status(block: &[u8]) -> Option<u16> {
    let first = *block.first()?;
    if first & 0x80 != 0 {
        return match first & 0x7f {
            8 => Some(200),
            9 => Some(204),
            10 => Some(206),
            11 => Some(304),
            12 => Some(400),
            13 => Some(404),
            14 => Some(500),
            _ => None,
        };
    }
    // Literal with indexed name 8 (`:status`): incremental (0x48), without (0x08), never (0x18).
    if !matches!(first, 0x48 | 0x08 | 0x18) {
        return None;
    }
    let lenb = *block.get(1)?;
    let huffman = lenb & 0x80 != 0;
    let len = usize::from(lenb & 0x7f);
    let raw = block.get(2..2 + len)?;
    let digits = if huffman {
        huffman_digits(raw)?
    } else {
        String::from_utf8(raw.to_vec()).ok()?
    };
    digits.parse().ok()
}

/// Decodes a Huffman string made only of digits (RFC 7541 Appendix B: '0'-'2' are 5 bits
/// 00000-00010, '3'-'9' are 6 bits 011001-011111).
fn huffman_digits(raw: &[u8]) -> Option<String> {
    let bits: Vec<u8> = raw
        .iter()
        .flat_map(|b| (0..8).rev().map(move |i| (b >> i) & 1))
        .collect();
    let mut out = String::new();
    let mut i = 0;
    while out.len() < 3 && i + 5 <= bits.len() {
        let five = bits[i..i + 5].iter().fold(0u8, |a, b| a << 1 | b);
        if five <= 2 {
            out.push(char::from(b'0' + five));
            i += 5;
            continue;
        }
        let six = (five << 1) | *bits.get(i + 5)?;
        if (0b011001..=0b011111).contains(&six) {
            out.push(char::from(b'3' + (six - 0b011001)));
            i += 6;
            continue;
        }
        return None;
    }
    (out.len() == 3).then_some(out)
}
