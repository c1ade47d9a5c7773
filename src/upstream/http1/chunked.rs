//! Incremental decoder for the HTTP/1.1 chunked transfer coding (RFC 9112
//! §7.1) used on upstream response bodies, plus the one-line helper for
//! writing chunk-size lines.
//!
//! Owns: the chunk-size / data / CRLF / trailer-section state machine, its
//! strictness rules and its size limits. Data is handed out zero-copy
//! (`split_to` + `freeze` of the caller's buffer).
//!
//! Does not own: any I/O, deciding whether trailers may be forwarded or
//! merged (the caller filters them), or what bytes left in the buffer after
//! the end of the body mean. Depends on nothing else in the crate.

use std::fmt;

use bytes::{Buf, Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue};

/// Longest chunk-size line (size + extensions), CRLF excluded. Extensions are
/// ignored, so anything longer is only a way to make us buffer.
const MAX_SIZE_LINE: usize = 4096;
/// Largest trailer section, final empty line included.
const MAX_TRAILER_BYTES: usize = 16 * 1024;
/// Most fields in a trailer section.
const MAX_TRAILER_FIELDS: usize = 64;

/// One step of decoding.
#[derive(Debug, PartialEq)]
pub enum Decoded {
    /// The next piece of body; never empty.
    Data(Bytes),
    /// The trailer section, when non-empty; returned once, just before `End`.
    Trailers(HeaderMap),
    /// The body is complete. Returned again on every later call.
    End,
    /// Nothing can be decoded until more bytes arrive.
    NeedMore,
}

/// Why a chunked body is malformed. After an error the decoder keeps
/// returning the same error; the connection must be discarded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChunkError {
    /// Bad chunk-size line: not hex, overflow, bad extension bytes, bare LF,
    /// or longer than 4096 bytes.
    Size,
    /// Chunk data not followed by exactly CRLF.
    Framing,
    /// Trailer section over 16 KiB or over 64 fields.
    TrailersTooLarge,
    /// Malformed trailer field.
    Trailer,
}

impl fmt::Display for ChunkError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ChunkError::Size => "invalid chunk size line",
            ChunkError::Framing => "chunk data not followed by CRLF",
            ChunkError::TrailersTooLarge => "chunked trailer section too large",
            ChunkError::Trailer => "invalid chunked trailer field",
        })
    }
}

impl std::error::Error for ChunkError {}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Reading a chunk-size line. `scanned` bytes at the front of the buffer
    /// are known to hold no LF, so a size line fed a byte at a time is not
    /// rescanned from the start on every call.
    Size { scanned: usize },
    /// Inside a chunk's data, this many bytes still to come (> 0).
    Data { remaining: u64 },
    /// Chunk data done; CRLF required next.
    DataEnd,
    /// After the last chunk: reading the trailer section. `line_start` is
    /// where the current (incomplete) line begins, `scanned` how far we have
    /// looked for its LF (both relative to the front of the buffer, which
    /// does not move while we are in this state), `fields` how many complete
    /// field lines precede `line_start`.
    Trailers {
        line_start: usize,
        scanned: usize,
        fields: usize,
    },
    /// Body complete.
    Done,
    /// A previous call failed; the error is sticky.
    Failed(ChunkError),
}

impl Default for State {
    fn default() -> Self {
        State::Size { scanned: 0 }
    }
}

/// Incremental chunked-body decoder. Feed it the same buffer each time, with
/// newly read bytes appended at the back; it consumes from the front.
#[derive(Debug, Default)]
pub struct ChunkedDecoder {
    state: State,
}

impl ChunkedDecoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Decodes as much as `buf` allows, consuming what it used from the front
    /// of `buf`. See [`Decoded`] for the meaning of each result. Bytes after
    /// the end of the body are left in `buf`.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Decoded, ChunkError> {
        let result = self.step(buf);
        if let Err(e) = result {
            self.state = State::Failed(e);
        }
        result
    }

    /// True once the whole body (including any trailer section) has been
    /// consumed from the buffer, i.e. after `Trailers` or `End` was returned.
    #[cfg(test)]
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    fn step(&mut self, buf: &mut BytesMut) -> Result<Decoded, ChunkError> {
        loop {
            match self.state {
                State::Size { scanned } => match scan_size_line(buf, scanned)? {
                    SizeScan::Partial { scanned } => {
                        self.state = State::Size { scanned };
                        return Ok(Decoded::NeedMore);
                    }
                    SizeScan::Complete { consumed, size } => {
                        consume(buf, consumed);
                        self.state = if size == 0 {
                            State::Trailers {
                                line_start: 0,
                                scanned: 0,
                                fields: 0,
                            }
                        } else {
                            State::Data { remaining: size }
                        };
                    }
                },
                State::Data { remaining } => {
                    if buf.is_empty() {
                        return Ok(Decoded::NeedMore);
                    }
                    // A size that does not fit usize is certainly more than
                    // is buffered.
                    let take = usize::try_from(remaining).map_or(buf.len(), |r| r.min(buf.len()));
                    let data = buf.split_to(take).freeze();
                    let left = remaining.saturating_sub(take as u64);
                    self.state = if left == 0 {
                        State::DataEnd
                    } else {
                        State::Data { remaining: left }
                    };
                    return Ok(Decoded::Data(data));
                }
                State::DataEnd => match (buf.first(), buf.get(1)) {
                    (None, _) | (Some(b'\r'), None) => return Ok(Decoded::NeedMore),
                    (Some(b'\r'), Some(b'\n')) => {
                        consume(buf, 2);
                        self.state = State::Size { scanned: 0 };
                    }
                    _ => return Err(ChunkError::Framing),
                },
                State::Trailers {
                    line_start,
                    scanned,
                    fields,
                } => return self.trailers(buf, line_start, scanned, fields),
                State::Done => return Ok(Decoded::End),
                State::Failed(e) => return Err(e),
            }
        }
    }

    fn trailers(
        &mut self,
        buf: &mut BytesMut,
        mut line_start: usize,
        mut scanned: usize,
        mut fields: usize,
    ) -> Result<Decoded, ChunkError> {
        if scanned > buf.len() {
            // The caller shrank the buffer behind our back; rescan rather
            // than trust stale offsets.
            line_start = 0;
            scanned = 0;
            fields = 0;
        }
        loop {
            let Some(pos) = buf
                .get(scanned..)
                .and_then(|rest| rest.iter().position(|&b| b == b'\n'))
            else {
                if buf.len() > MAX_TRAILER_BYTES {
                    return Err(ChunkError::TrailersTooLarge);
                }
                self.state = State::Trailers {
                    line_start,
                    scanned: buf.len(),
                    fields,
                };
                return Ok(Decoded::NeedMore);
            };
            let lf = scanned + pos;
            let end = lf + 1;
            if end > MAX_TRAILER_BYTES {
                return Err(ChunkError::TrailersTooLarge);
            }
            // Strict CRLF, as for size lines: a bare LF is where parsers
            // disagree, and disagreement is what smuggling is built on.
            let cr = lf.checked_sub(1);
            if cr.is_none_or(|i| i < line_start || buf.get(i) != Some(&b'\r')) {
                return Err(ChunkError::Trailer);
            }
            if cr == Some(line_start) {
                // Empty line: the section is complete.
                let result = if end == 2 {
                    Decoded::End
                } else {
                    Decoded::Trailers(parse_trailers(buf.get(..end).unwrap_or_default())?)
                };
                consume(buf, end);
                self.state = State::Done;
                return Ok(result);
            }
            line_start = end;
            scanned = end;
            // Checked per line so a flood of tiny fields fails early;
            // parse_trailers' fixed slot array enforces it again.
            fields = fields.saturating_add(1);
            if fields > MAX_TRAILER_FIELDS {
                return Err(ChunkError::TrailersTooLarge);
            }
        }
    }
}

/// Parses a complete trailer section (field lines + empty line).
fn parse_trailers(section: &[u8]) -> Result<HeaderMap, ChunkError> {
    let mut slots = [httparse::EMPTY_HEADER; MAX_TRAILER_FIELDS];
    let parsed = match httparse::parse_headers(section, &mut slots) {
        Ok(httparse::Status::Complete((n, parsed))) if n == section.len() => parsed,
        Err(httparse::Error::TooManyHeaders) => return Err(ChunkError::TrailersTooLarge),
        _ => return Err(ChunkError::Trailer),
    };
    let mut map = HeaderMap::with_capacity(parsed.len());
    for h in parsed {
        // Trailers are rare and small: copying beats keeping offsets.
        let name = HeaderName::from_bytes(h.name.as_bytes()).map_err(|_| ChunkError::Trailer)?;
        let value = HeaderValue::from_bytes(h.value).map_err(|_| ChunkError::Trailer)?;
        map.append(name, value);
    }
    Ok(map)
}

enum SizeScan {
    Partial { scanned: usize },
    Complete { consumed: usize, size: u64 },
}

/// Looks for a complete chunk-size line at the front of `buf`.
fn scan_size_line(buf: &[u8], scanned: usize) -> Result<SizeScan, ChunkError> {
    // Content (≤ MAX_SIZE_LINE) + CR + LF: the LF can be at most here.
    let window_end = buf.len().min(MAX_SIZE_LINE + 2);
    let from = scanned.min(window_end);
    let lf = buf
        .get(from..window_end)
        .and_then(|w| w.iter().position(|&b| b == b'\n'))
        .map(|pos| from + pos);
    let Some(lf) = lf else {
        return if buf.len() >= MAX_SIZE_LINE + 2 {
            Err(ChunkError::Size)
        } else {
            Ok(SizeScan::Partial { scanned: buf.len() })
        };
    };
    let line = buf
        .get(..lf)
        .and_then(|l| l.strip_suffix(b"\r"))
        .ok_or(ChunkError::Size)?;
    Ok(SizeScan::Complete {
        consumed: lf + 1,
        size: parse_size_line(line)?,
    })
}

/// `chunk-size [ BWS ";" chunk-ext ]` without its CRLF.
///
/// We do not use `httparse::parse_chunk_size`: it accepts a line with no
/// digits at all (read as size 0, i.e. a premature last chunk), lets a bare
/// LF through inside extensions, and rejects more than 16 hex digits even
/// when they are leading zeros.
fn parse_size_line(line: &[u8]) -> Result<u64, ChunkError> {
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 {
        return Err(ChunkError::Size);
    }
    let mut size = 0u64;
    for &b in line.get(..digits).unwrap_or_default() {
        let d = match b {
            b'0'..=b'9' => b - b'0',
            b'a'..=b'f' => b - b'a' + 10,
            _ => b.wrapping_sub(b'A').wrapping_add(10),
        };
        size = size
            .checked_mul(16)
            .and_then(|s| s.checked_add(u64::from(d)))
            .ok_or(ChunkError::Size)?;
    }
    let mut rest = line.get(digits..).unwrap_or_default();
    // BWS: tolerated, as other implementations do.
    while let [b' ' | b'\t', tail @ ..] = rest {
        rest = tail;
    }
    match rest {
        [] => Ok(size),
        // Extensions are ignored; only refuse control bytes (CR, LF, NUL …)
        // so nothing can hide a line break inside them.
        [b';', ext @ ..] if ext.iter().all(|&b| b == b'\t' || (b >= 0x20 && b != 0x7f)) => Ok(size),
        _ => Err(ChunkError::Size),
    }
}

/// Drops `n` bytes from the front of `buf` (never more than it holds).
fn consume(buf: &mut BytesMut, n: usize) {
    buf.advance(n.min(buf.len()));
}

/// Writes the chunk-size line for a data chunk of `len` bytes
/// (`"{len:x}\r\n"`) into `out`. `len == 0` writes `"0\r\n"`, which is the
/// last-chunk line, so callers must not use it for empty data.
pub fn encode_chunk_head(len: usize, out: &mut Vec<u8>) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let bits = usize::BITS - len.leading_zeros();
    let nibbles = bits.div_ceil(4).max(1);
    for i in (0..nibbles).rev() {
        let nibble = (len >> (i * 4)) & 0xf;
        out.push(HEX.get(nibble).copied().unwrap_or(b'0'));
    }
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)] // In tests a failed unwrap is a failed assertion.
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Body, trailers, and what was left after `End`.
    type Outcome = (Vec<u8>, Option<HeaderMap>, Vec<u8>);

    /// Feeds `input` in pieces of the given sizes (the rest at the end),
    /// draining the decoder after each piece. Returns the body, the trailers
    /// and what is left in the buffer once `End` is seen.
    fn decode_pieces(input: &[u8], piece_sizes: &[usize]) -> Result<Outcome, ChunkError> {
        let mut dec = ChunkedDecoder::new();
        let mut buf = BytesMut::new();
        let mut body = Vec::new();
        let mut trailers = None;
        let mut rest = input;
        let mut sizes = piece_sizes.iter();
        loop {
            match dec.decode(&mut buf)? {
                Decoded::Data(d) => {
                    assert!(!d.is_empty());
                    body.extend_from_slice(&d);
                }
                Decoded::Trailers(t) => {
                    assert!(trailers.is_none());
                    assert!(dec.is_done());
                    trailers = Some(t);
                }
                Decoded::End => {
                    assert!(dec.is_done());
                    assert_eq!(dec.decode(&mut buf), Ok(Decoded::End));
                    let mut left = buf.to_vec();
                    left.extend_from_slice(rest);
                    return Ok((body, trailers, left));
                }
                Decoded::NeedMore => {
                    assert!(!dec.is_done());
                    if rest.is_empty() {
                        return Err(ChunkError::Framing); // stands for "unexpected EOF"
                    }
                    let n = sizes
                        .next()
                        .copied()
                        .unwrap_or(rest.len())
                        .clamp(1, rest.len());
                    let (piece, tail) = rest.split_at(n);
                    buf.extend_from_slice(piece);
                    rest = tail;
                }
            }
        }
    }

    fn decode_all(input: &[u8]) -> Result<Outcome, ChunkError> {
        decode_pieces(input, &[usize::MAX])
    }

    fn decode_bytewise(input: &[u8]) -> Result<Outcome, ChunkError> {
        decode_pieces(input, &vec![1; input.len()])
    }

    /// Feeds everything at once and returns the first error, if any.
    fn first_error(input: &[u8]) -> Option<ChunkError> {
        let mut dec = ChunkedDecoder::new();
        let mut buf = BytesMut::from(input);
        loop {
            match dec.decode(&mut buf) {
                Err(e) => return Some(e),
                Ok(Decoded::End | Decoded::NeedMore) => return None,
                Ok(_) => {}
            }
        }
    }

    #[test]
    fn simple_body() {
        let (body, trailers, left) = decode_all(b"5\r\nhello\r\n0\r\n\r\n").unwrap();
        assert_eq!(body, b"hello");
        assert!(trailers.is_none());
        assert!(left.is_empty());
    }

    #[test]
    fn empty_body() {
        let (body, trailers, _) = decode_all(b"0\r\n\r\n").unwrap();
        assert!(body.is_empty());
        assert!(trailers.is_none());
    }

    #[test]
    fn multiple_chunks_and_hex_sizes() {
        let input = b"3\r\nabc\r\nA\r\n0123456789\r\n1\r\nZ\r\n0\r\n\r\n";
        let (body, _, _) = decode_all(input).unwrap();
        assert_eq!(body, b"abc0123456789Z");
        let (body, _, _) =
            decode_all(b"00000000000000000000b\r\nhello world\r\n0\r\n\r\n").unwrap();
        assert_eq!(body, b"hello world");
    }

    #[test]
    fn data_is_zero_copy_and_partial_chunks_stream() {
        let mut dec = ChunkedDecoder::new();
        let mut buf = BytesMut::from(&b"a\r\nhello"[..]);
        assert_eq!(
            dec.decode(&mut buf),
            Ok(Decoded::Data(Bytes::from_static(b"hello")))
        );
        assert_eq!(dec.decode(&mut buf), Ok(Decoded::NeedMore));
        buf.extend_from_slice(b"world\r\n0\r\n\r\n");
        assert_eq!(
            dec.decode(&mut buf),
            Ok(Decoded::Data(Bytes::from_static(b"world")))
        );
        assert_eq!(dec.decode(&mut buf), Ok(Decoded::End));
    }

    #[test]
    fn extensions_are_ignored() {
        let input = b"5;name=value\r\nhello\r\n6 ; a=\"q s\";b\r\n world\r\n0;last\r\n\r\n";
        let (body, _, _) = decode_all(input).unwrap();
        assert_eq!(body, b"hello world");
    }

    #[test]
    fn trailers() {
        let input = b"5\r\nhello\r\n0\r\nX-Checksum: abc\r\nX-Other: 1\r\nx-other: 2\r\n\r\nNEXT";
        let (body, trailers, left) = decode_all(input).unwrap();
        assert_eq!(body, b"hello");
        let t = trailers.unwrap();
        assert_eq!(t["x-checksum"], "abc");
        assert_eq!(t.get_all("x-other").iter().count(), 2);
        assert_eq!(left, b"NEXT");
    }

    #[test]
    fn bytes_after_end_stay() {
        let mut dec = ChunkedDecoder::new();
        let mut buf = BytesMut::from(&b"0\r\n\r\nHTTP/1.1"[..]);
        assert_eq!(dec.decode(&mut buf), Ok(Decoded::End));
        assert_eq!(dec.decode(&mut buf), Ok(Decoded::End));
        assert_eq!(&buf[..], b"HTTP/1.1");
    }

    #[test]
    fn bytewise_feed_matches() {
        for input in [
            &b"5\r\nhello\r\n0\r\n\r\n"[..],
            b"3;x=y\r\nabc\r\n2\r\nde\r\n0\r\nA: b\r\nC: d\r\n\r\nrest",
            b"0\r\n\r\n",
        ] {
            assert_eq!(decode_all(input).unwrap(), decode_bytewise(input).unwrap());
        }
    }

    #[test]
    fn overflow_size() {
        assert_eq!(first_error(b"ffffffffffffffff\r\n"), None); // u64::MAX fits
        assert_eq!(
            first_error(b"10000000000000000\r\n"),
            Some(ChunkError::Size)
        );
        assert_eq!(
            first_error(b"fffffffffffffffffffffff\r\n"),
            Some(ChunkError::Size)
        );
    }

    #[test]
    fn bad_size_lines() {
        for line in [
            &b"\r\n"[..],
            b";ext\r\n",
            b"-5\r\n",
            b"0x5\r\n",
            b"5 5\r\n",
            b"g\r\n",
            b"5;a\x00b\r\n",
            b"5;a\rb\r\n",
            b" 5\r\n",
        ] {
            assert_eq!(first_error(line), Some(ChunkError::Size), "{line:?}");
        }
    }

    #[test]
    fn bare_lf() {
        assert_eq!(
            first_error(b"5\nhello\r\n0\r\n\r\n"),
            Some(ChunkError::Size)
        );
        assert_eq!(first_error(b"5;x\nhello\r\n"), Some(ChunkError::Size));
        assert_eq!(first_error(b"0\r\nA: b\n\r\n"), Some(ChunkError::Trailer));
        assert_eq!(first_error(b"0\r\n\n"), Some(ChunkError::Trailer));
    }

    #[test]
    fn missing_crlf_after_data() {
        assert_eq!(
            first_error(b"5\r\nhelloX\r\n0\r\n\r\n"),
            Some(ChunkError::Framing)
        );
        assert_eq!(
            first_error(b"5\r\nhello\rX0\r\n\r\n"),
            Some(ChunkError::Framing)
        );
        assert_eq!(
            first_error(b"5\r\nhello\n0\r\n\r\n"),
            Some(ChunkError::Framing)
        );
        // Too short a chunk: the next size line lands where CRLF should be.
        assert_eq!(
            first_error(b"6\r\nhello\r\n0\r\n\r\n"),
            Some(ChunkError::Framing)
        );
    }

    #[test]
    fn long_size_line() {
        let mut line = b"5;".to_vec();
        line.extend(std::iter::repeat_n(b'a', MAX_SIZE_LINE - 2));
        // Exactly at the limit is fine.
        let mut ok = line.clone();
        ok.extend_from_slice(b"\r\nhello\r\n0\r\n\r\n");
        assert_eq!(decode_all(&ok).unwrap().0, b"hello");
        // One byte more, complete or not, is not.
        line.push(b'a');
        let mut complete = line.clone();
        complete.extend_from_slice(b"\r\n");
        assert_eq!(first_error(&complete), Some(ChunkError::Size));
        line.extend_from_slice(b"aaaa");
        assert_eq!(first_error(&line), Some(ChunkError::Size));
        assert_eq!(decode_bytewise(&line).unwrap_err(), ChunkError::Size);
    }

    #[test]
    fn trailers_too_large() {
        let mut many = b"0\r\n".to_vec();
        for i in 0..=MAX_TRAILER_FIELDS {
            many.extend_from_slice(format!("X-{i}: v\r\n").as_bytes());
        }
        many.extend_from_slice(b"\r\n");
        assert_eq!(first_error(&many), Some(ChunkError::TrailersTooLarge));
        assert_eq!(
            decode_bytewise(&many).unwrap_err(),
            ChunkError::TrailersTooLarge
        );

        let mut big = b"0\r\nX-Big: ".to_vec();
        big.extend(std::iter::repeat_n(b'a', MAX_TRAILER_BYTES));
        assert_eq!(first_error(&big), Some(ChunkError::TrailersTooLarge));
        big.extend_from_slice(b"\r\n\r\n");
        assert_eq!(first_error(&big), Some(ChunkError::TrailersTooLarge));

        // 64 fields is fine.
        let mut ok = b"0\r\n".to_vec();
        for i in 0..MAX_TRAILER_FIELDS {
            ok.extend_from_slice(format!("X-{i}: v\r\n").as_bytes());
        }
        ok.extend_from_slice(b"\r\n");
        assert_eq!(
            decode_all(&ok).unwrap().1.unwrap().len(),
            MAX_TRAILER_FIELDS
        );
    }

    #[test]
    fn bad_trailers() {
        for input in [
            &b"0\r\nNo Colon\r\n\r\n"[..],
            b"0\r\nBad Name: v\r\n\r\n",
            b"0\r\nA: b\r\n folded\r\n\r\n",
            b"0\r\nA: b\x7f\r\n\r\n",
        ] {
            assert_eq!(first_error(input), Some(ChunkError::Trailer), "{input:?}");
        }
    }

    #[test]
    fn errors_are_sticky() {
        let mut dec = ChunkedDecoder::new();
        let mut buf = BytesMut::from(&b"zz\r\n"[..]);
        assert_eq!(dec.decode(&mut buf), Err(ChunkError::Size));
        buf.clear();
        buf.extend_from_slice(b"0\r\n\r\n");
        assert_eq!(dec.decode(&mut buf), Err(ChunkError::Size));
        assert!(!dec.is_done());
    }

    #[test]
    fn encode_chunk_head_writes_hex() {
        for (len, want) in [
            (0usize, "0\r\n"),
            (1, "1\r\n"),
            (15, "f\r\n"),
            (16, "10\r\n"),
            (0xabc, "abc\r\n"),
            (usize::MAX, &*format!("{:x}\r\n", usize::MAX)),
        ] {
            let mut out = b"x".to_vec();
            encode_chunk_head(len, &mut out);
            assert_eq!(&out[1..], want.as_bytes());
        }
    }

    #[test]
    fn errors_display() {
        assert!(!ChunkError::Size.to_string().is_empty());
        assert!(ChunkError::TrailersTooLarge.to_string().contains("trailer"));
    }

    /// Chunk-encodes `body` cut at `cuts`, with optional extensions and
    /// trailers, followed by `after`.
    fn encode(body: &[u8], cuts: &[usize], ext: bool, trailers: &[(String, String)]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut rest = body;
        let mut cuts = cuts.iter();
        while !rest.is_empty() {
            let n = cuts
                .next()
                .copied()
                .unwrap_or(rest.len())
                .clamp(1, rest.len());
            let (chunk, tail) = rest.split_at(n);
            encode_chunk_head(chunk.len(), &mut out);
            if ext {
                // Splice an extension in before the CRLF.
                out.truncate(out.len() - 2);
                out.extend_from_slice(b" ;foo=\"bar\"\r\n");
            }
            out.extend_from_slice(chunk);
            out.extend_from_slice(b"\r\n");
            rest = tail;
        }
        out.extend_from_slice(b"0\r\n");
        for (name, value) in trailers {
            out.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
        }
        out.extend_from_slice(b"\r\n");
        out
    }

    proptest! {
        #[test]
        fn round_trips_any_split(
            body in proptest::collection::vec(any::<u8>(), 0..3000),
            cuts in proptest::collection::vec(1usize..700, 0..20),
            feeds in proptest::collection::vec(1usize..300, 0..40),
            ext in any::<bool>(),
            trailers in proptest::collection::vec(("x-[a-z]{1,8}", "[!-~]([ -~]{0,20}[!-~])?"), 0..4),
            after in proptest::collection::vec(any::<u8>(), 0..8),
        ) {
            let mut input = encode(&body, &cuts, ext, &trailers);
            input.extend_from_slice(&after);
            let (got_body, got_trailers, left) = decode_pieces(&input, &feeds).unwrap();
            prop_assert_eq!(got_body, body);
            prop_assert_eq!(left, after);
            if trailers.is_empty() {
                prop_assert!(got_trailers.is_none());
            } else {
                let mut want = HeaderMap::new();
                for (n, v) in &trailers {
                    want.append(HeaderName::from_bytes(n.as_bytes()).unwrap(), HeaderValue::from_str(v).unwrap());
                }
                prop_assert_eq!(got_trailers, Some(want));
            }
        }

        #[test]
        fn arbitrary_bytes_never_panic(
            input in proptest::collection::vec(any::<u8>(), 0..600),
            feeds in proptest::collection::vec(1usize..64, 0..20),
        ) {
            let _ = decode_pieces(&input, &feeds);
        }

        #[test]
        fn arbitrary_chunkish_bytes_never_panic(
            input in "([0-9a-fA-F;= \r\n]|[a-z]|\r\n){0,200}",
        ) {
            let _ = decode_bytewise(input.as_bytes());
            let _ = decode_all(input.as_bytes());
        }
    }
}
