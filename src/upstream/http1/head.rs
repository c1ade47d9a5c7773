//! Parsing of one upstream HTTP/1.x response head (status line + header
//! section) for our own HTTP/1.1 client.
//!
//! Owns: turning the bytes at the front of a read buffer into a
//! [`ResponseHead`] — status, version, headers (zero-copy: every value is a
//! slice of the received head), how the body is delimited ([`Framing`], RFC
//! 9112 §6.3) and whether the connection can be reused afterwards.
//!
//! Does not own: any I/O, reading or decoding the body (see `chunked.rs`),
//! removing hop-by-hop headers, handling 1xx/101 (the caller loops or
//! upgrades), or deciding what to do with bytes left in the buffer after the
//! head. Pure functions only; depends on nothing else in the crate.

use std::{fmt, mem::MaybeUninit};

use bytes::BytesMut;
use http::header::{CONNECTION, CONTENT_LENGTH, TRANSFER_ENCODING};
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode, Version};

/// httparse needs a fixed-size slot array; `max_headers` is capped to this.
/// 128 slots of two slices each is ~4 KiB of stack, which is fine for a
/// non-recursive call.
const MAX_HEADERS: usize = 128;

/// How the response body is delimited (RFC 9112 §6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body at all (HEAD, 1xx, 204, 304).
    Empty,
    /// Exactly this many bytes (`Length(0)` means no body).
    Length(u64),
    /// Chunked transfer coding; decode with the chunked decoder.
    Chunked,
    /// The body runs until the upstream closes the connection.
    Close,
}

/// One parsed upstream response head.
#[derive(Debug)]
pub struct ResponseHead {
    pub status: StatusCode,
    /// `HTTP_10` or `HTTP_11`.
    pub version: Version,
    /// As received: hop-by-hop fields are NOT removed, and Content-Length is
    /// kept even when Transfer-Encoding overrides it — the caller strips
    /// both before forwarding when it re-frames the body.
    pub headers: HeaderMap,
    pub framing: Framing,
    /// The connection may carry another request after this response's body.
    pub keep_alive: bool,
}

/// Why a response head could not be parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadError {
    /// The head exceeds the byte limit or the header-count limit.
    TooLarge,
    /// The head is malformed; the reason is a short static description.
    Invalid(&'static str),
}

impl fmt::Display for HeadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HeadError::TooLarge => f.write_str("upstream response head too large"),
            HeadError::Invalid(why) => write!(f, "invalid upstream response head: {why}"),
        }
    }
}

impl std::error::Error for HeadError {}

/// Parses one response head from the front of `buf`.
///
/// - `Ok(Some(head))`: the head's bytes were removed from `buf`, which now
///   starts at the body (or at whatever followed the head).
/// - `Ok(None)`: incomplete, read more; `buf` is untouched. If `buf` already
///   holds more than `max_head_bytes`, `Err(TooLarge)` instead.
/// - `Err(_)`: the connection must be discarded. Errors found by httparse
///   leave `buf` untouched; the (practically unreachable) errors found while
///   building the header map happen after the head was split off, so `buf`
///   is then unspecified.
///
/// `head_request`: the request was HEAD, so the body is `Empty` whatever the
/// headers say. `max_headers` is capped at 128.
pub fn parse_response(
    buf: &mut BytesMut,
    head_request: bool,
    max_headers: usize,
    max_head_bytes: usize,
) -> Result<Option<ResponseHead>, HeadError> {
    let cap = max_headers.min(MAX_HEADERS);
    let parser = httparse::ParserConfig::default();
    // First pass: is the head complete, and how long is it? Only numbers leave this scope, so the
    // head can then be split off and frozen.
    let (code, minor, head_len) = {
        // Uninitialised slots: zeroing 128 of them cost more than parsing a typical head.
        let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
        let slots = slots.get_mut(..cap).unwrap_or_default();
        let mut resp = httparse::Response::new(&mut []);
        let head_len = match parser.parse_response_with_uninit_headers(&mut resp, buf, slots) {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) => {
                return if buf.len() > max_head_bytes {
                    Err(HeadError::TooLarge)
                } else {
                    Ok(None)
                };
            }
            Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooLarge),
            Err(e) => return Err(HeadError::Invalid(httparse_reason(e))),
        };
        if head_len > max_head_bytes {
            return Err(HeadError::TooLarge);
        }
        (resp.code, resp.version, head_len)
    };

    let status = match code {
        Some(c @ 100..=999) => StatusCode::from_u16(c).map_err(|_| HeadError::Invalid("status"))?,
        _ => return Err(HeadError::Invalid("status")),
    };
    let version = match minor {
        Some(0) => Version::HTTP_10,
        Some(1) => Version::HTTP_11,
        _ => return Err(HeadError::Invalid("version")),
    };

    // Second pass over the frozen head: values become slices of it, shared, not copied. (Parsing
    // a short head twice is cheaper than recording every field's position the first time.)
    let head = buf.split_to(head_len.min(buf.len())).freeze();
    let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let slots = slots.get_mut(..cap).unwrap_or_default();
    let mut resp = httparse::Response::new(&mut []);
    if !matches!(
        parser.parse_response_with_uninit_headers(&mut resp, &head, slots),
        Ok(httparse::Status::Complete(_))
    ) {
        return Err(HeadError::Invalid("head"));
    }
    let mut headers = HeaderMap::with_capacity(resp.headers.len());
    for h in resp.headers.iter() {
        let name = HeaderName::from_bytes(h.name.as_bytes())
            .map_err(|_| HeadError::Invalid("header name"))?;
        let value = HeaderValue::from_maybe_shared(head.slice_ref(h.value))
            .map_err(|_| HeadError::Invalid("header value"))?;
        headers.append(name, value);
    }

    let framing = framing(&headers, status, head_request)?;
    let keep_alive = keep_alive(&headers, version, framing);
    Ok(Some(ResponseHead {
        status,
        version,
        headers,
        framing,
        keep_alive,
    }))
}

fn httparse_reason(e: httparse::Error) -> &'static str {
    match e {
        httparse::Error::HeaderName => "header name",
        httparse::Error::HeaderValue => "header value",
        httparse::Error::NewLine => "new line",
        httparse::Error::Status => "status line",
        httparse::Error::Token => "token",
        httparse::Error::TooManyHeaders => "too many headers",
        httparse::Error::Version => "version",
    }
}

/// Body framing per RFC 9112 §6.3, in the order the RFC gives it.
fn framing(
    headers: &HeaderMap,
    status: StatusCode,
    head_request: bool,
) -> Result<Framing, HeadError> {
    if head_request
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        return Ok(Framing::Empty);
    }

    if headers.contains_key(TRANSFER_ENCODING) {
        let mut chunked_count = 0usize;
        let mut chunked_final = false;
        for coding in list_elements(headers, &TRANSFER_ENCODING) {
            chunked_final = coding.eq_ignore_ascii_case(b"chunked");
            chunked_count = chunked_count.saturating_add(usize::from(chunked_final));
        }
        if chunked_count > 1 {
            // A sender must not chunk twice (§7.1); decoding one layer would
            // hand the client a still-chunked body under the wrong framing.
            return Err(HeadError::Invalid("transfer-encoding"));
        }
        return Ok(if chunked_final {
            Framing::Chunked
        } else {
            Framing::Close
        });
    }

    if headers.contains_key(CONTENT_LENGTH) {
        let mut length = None;
        for value in headers.get_all(CONTENT_LENGTH) {
            // Split by hand rather than via list_elements: empty elements are
            // an error here, not something to skip.
            for element in value.as_bytes().split(|&b| b == b',') {
                let n =
                    parse_decimal(trim_ows(element)).ok_or(HeadError::Invalid("content-length"))?;
                match length {
                    Some(prev) if prev != n => return Err(HeadError::Invalid("content-length")),
                    _ => length = Some(n),
                }
            }
        }
        return length
            .map(Framing::Length)
            .ok_or(HeadError::Invalid("content-length"));
    }

    Ok(Framing::Close)
}

/// Whether the connection can carry another request after this response.
fn keep_alive(headers: &HeaderMap, version: Version, framing: Framing) -> bool {
    if framing == Framing::Close {
        return false;
    }
    if headers.contains_key(TRANSFER_ENCODING)
        && (version == Version::HTTP_10 || headers.contains_key(CONTENT_LENGTH))
    {
        // RFC 9112 §6.1/§6.3: TE on HTTP/1.0, or TE together with CL, means
        // the framing is suspect (smuggling); finish this response but do not
        // reuse the connection.
        return false;
    }
    let mut close = false;
    let mut keep = false;
    for token in list_elements(headers, &CONNECTION) {
        close |= token.eq_ignore_ascii_case(b"close");
        keep |= token.eq_ignore_ascii_case(b"keep-alive");
    }
    if close {
        return false;
    }
    version == Version::HTTP_11 || keep
}

/// Non-empty, OWS-trimmed elements of a comma-separated list field, across
/// all of its lines, in order.
fn list_elements<'a>(
    headers: &'a HeaderMap,
    name: &HeaderName,
) -> impl Iterator<Item = &'a [u8]> + 'a {
    headers
        .get_all(name)
        .into_iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .map(trim_ows)
        .filter(|e| !e.is_empty())
}

fn trim_ows(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

/// 1*DIGIT as u64; no sign, no whitespace, no overflow.
fn parse_decimal(s: &[u8]) -> Option<u64> {
    if s.is_empty() {
        return None;
    }
    s.iter().try_fold(0u64, |acc, &b| {
        let digit = b.checked_sub(b'0').filter(|d| *d <= 9)?;
        acc.checked_mul(10)?.checked_add(u64::from(digit))
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)] // In tests a failed unwrap is a failed assertion.
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MAX_BYTES: usize = 64 * 1024;

    fn parse(s: &str) -> Result<Option<ResponseHead>, HeadError> {
        let mut buf = BytesMut::from(s);
        parse_response(&mut buf, false, 100, MAX_BYTES)
    }

    fn head(s: &str) -> ResponseHead {
        parse(s).unwrap().unwrap()
    }

    #[test]
    fn plain_200_with_content_length() {
        let mut buf = BytesMut::from("HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: b\r\n\r\nhello");
        let h = parse_response(&mut buf, false, 100, MAX_BYTES)
            .unwrap()
            .unwrap();
        assert_eq!(h.status, StatusCode::OK);
        assert_eq!(h.version, Version::HTTP_11);
        assert_eq!(h.framing, Framing::Length(5));
        assert!(h.keep_alive);
        assert_eq!(h.headers.len(), 2);
        assert_eq!(h.headers["x-a"], "b");
        assert_eq!(&buf[..], b"hello");
    }

    #[test]
    fn header_names_are_lowercased_and_repeats_kept() {
        let h =
            head("HTTP/1.1 200 OK\r\nSet-Cookie: a\r\nSET-COOKIE: b\r\nContent-Length: 0\r\n\r\n");
        let cookies: Vec<_> = h.headers.get_all("set-cookie").iter().collect();
        assert_eq!(cookies, ["a", "b"]);
    }

    #[test]
    fn empty_header_value() {
        let h = head("HTTP/1.1 200 OK\r\nX-Empty:\r\nContent-Length: 0\r\n\r\n");
        assert_eq!(h.headers["x-empty"], "");
    }

    #[test]
    fn chunked() {
        let h = head("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n");
        assert_eq!(h.framing, Framing::Chunked);
        assert!(h.keep_alive);
    }

    #[test]
    fn chunked_final_across_lines_and_case() {
        let h = head(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding:  CHUNKED \r\n\r\n",
        );
        assert_eq!(h.framing, Framing::Chunked);
        let h = head("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n");
        assert_eq!(h.framing, Framing::Chunked);
    }

    #[test]
    fn te_and_cl_te_wins_and_no_reuse() {
        let h = head("HTTP/1.1 200 OK\r\nContent-Length: 10\r\nTransfer-Encoding: chunked\r\n\r\n");
        assert_eq!(h.framing, Framing::Chunked);
        assert!(!h.keep_alive);
    }

    #[test]
    fn te_without_final_chunked_is_close() {
        let h = head("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n");
        assert_eq!(h.framing, Framing::Close);
        assert!(!h.keep_alive);
        let h = head("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\n");
        assert_eq!(h.framing, Framing::Close);
        let h = head("HTTP/1.1 200 OK\r\nTransfer-Encoding: \r\n\r\n");
        assert_eq!(h.framing, Framing::Close);
    }

    #[test]
    fn double_chunked_is_invalid() {
        assert_eq!(
            parse("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, chunked\r\n\r\n").unwrap_err(),
            HeadError::Invalid("transfer-encoding")
        );
    }

    #[test]
    fn te_on_http10() {
        let h =
            head("HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: keep-alive\r\n\r\n");
        assert_eq!(h.framing, Framing::Chunked);
        assert!(!h.keep_alive);
        let h = head("HTTP/1.0 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n");
        assert_eq!(h.framing, Framing::Close);
    }

    #[test]
    fn bad_content_lengths() {
        for cl in [
            "Content-Length: 5\r\nContent-Length: 6\r\n",
            "Content-Length: 5, 6\r\n",
            "Content-Length: +5\r\n",
            "Content-Length: -5\r\n",
            "Content-Length: 5 5\r\n",
            "Content-Length: \r\n",
            "Content-Length: 5,\r\n",
            "Content-Length: 0x5\r\n",
            "Content-Length: 99999999999999999999999\r\n",
        ] {
            let s = format!("HTTP/1.1 200 OK\r\n{cl}\r\n");
            assert_eq!(
                parse(&s).unwrap_err(),
                HeadError::Invalid("content-length"),
                "{cl:?}"
            );
        }
    }

    #[test]
    fn repeated_equal_content_length() {
        for cl in [
            "Content-Length: 5, 5\r\n",
            "Content-Length: 5\r\nContent-Length: 5\r\n",
            "Content-Length: 5 ,\t5\r\nContent-Length: 005\r\n",
        ] {
            let s = format!("HTTP/1.1 200 OK\r\n{cl}\r\n");
            assert_eq!(head(&s).framing, Framing::Length(5), "{cl:?}");
        }
        assert_eq!(
            head("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n").framing,
            Framing::Length(0)
        );
    }

    #[test]
    fn head_request_is_empty() {
        let mut buf = BytesMut::from("HTTP/1.1 200 OK\r\nContent-Length: 500\r\n\r\n");
        let h = parse_response(&mut buf, true, 100, MAX_BYTES)
            .unwrap()
            .unwrap();
        assert_eq!(h.framing, Framing::Empty);
        assert!(h.keep_alive);
        let mut buf = BytesMut::from("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n");
        let h = parse_response(&mut buf, true, 100, MAX_BYTES)
            .unwrap()
            .unwrap();
        assert_eq!(h.framing, Framing::Empty);
    }

    #[test]
    fn bodyless_statuses_are_empty() {
        for code in [100, 101, 103, 204, 304] {
            let s = format!("HTTP/1.1 {code} X\r\nContent-Length: 7\r\n\r\n");
            let h = head(&s);
            assert_eq!(h.framing, Framing::Empty, "{code}");
            assert_eq!(h.status.as_u16(), code);
            assert!(h.keep_alive);
        }
    }

    #[test]
    fn no_length_is_close() {
        let h = head("HTTP/1.1 200 OK\r\n\r\n");
        assert_eq!(h.framing, Framing::Close);
        assert!(!h.keep_alive);
    }

    #[test]
    fn http10_keep_alive_rules() {
        let h = head("HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n");
        assert_eq!(h.version, Version::HTTP_10);
        assert!(!h.keep_alive);
        let h = head("HTTP/1.0 200 OK\r\nContent-Length: 1\r\nConnection: Keep-Alive\r\n\r\n");
        assert!(h.keep_alive);
        let h = head("HTTP/1.0 200 OK\r\nContent-Length: 1\r\nConnection: foo, keep-alive\r\n\r\n");
        assert!(h.keep_alive);
        let h = head(
            "HTTP/1.0 200 OK\r\nContent-Length: 1\r\nConnection: keep-alive\r\nConnection: close\r\n\r\n",
        );
        assert!(!h.keep_alive);
        let h = head("HTTP/1.0 200 OK\r\nConnection: keep-alive\r\n\r\n");
        assert!(!h.keep_alive, "read-to-close body can't be kept alive");
        let h = head("HTTP/1.0 304 Not Modified\r\nConnection: keep-alive\r\n\r\n");
        assert!(h.keep_alive);
    }

    #[test]
    fn connection_close() {
        let h = head("HTTP/1.1 200 OK\r\nContent-Length: 1\r\nConnection: close\r\n\r\n");
        assert!(!h.keep_alive);
        let h = head("HTTP/1.1 200 OK\r\nContent-Length: 1\r\nConnection: upgrade , CLOSE\r\n\r\n");
        assert!(!h.keep_alive);
        let h = head("HTTP/1.1 200 OK\r\nContent-Length: 1\r\nConnection: closed\r\n\r\n");
        assert!(h.keep_alive);
    }

    #[test]
    fn incomplete_is_none_and_untouched() {
        let s = "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n";
        let mut buf = BytesMut::from(s);
        assert!(
            parse_response(&mut buf, false, 100, MAX_BYTES)
                .unwrap()
                .is_none()
        );
        assert_eq!(&buf[..], s.as_bytes());
        let mut buf = BytesMut::new();
        assert!(
            parse_response(&mut buf, false, 100, MAX_BYTES)
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn head_split_across_two_feeds() {
        let mut buf = BytesMut::from("HTTP/1.1 200 OK\r\nContent-Le");
        assert!(
            parse_response(&mut buf, false, 100, MAX_BYTES)
                .unwrap()
                .is_none()
        );
        buf.extend_from_slice(b"ngth: 3\r\n\r\nabc");
        let h = parse_response(&mut buf, false, 100, MAX_BYTES)
            .unwrap()
            .unwrap();
        assert_eq!(h.framing, Framing::Length(3));
        assert_eq!(&buf[..], b"abc");
    }

    #[test]
    fn pipelined_bytes_stay() {
        let mut buf = BytesMut::from(
            "HTTP/1.1 204 No Content\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
        );
        let h = parse_response(&mut buf, false, 100, MAX_BYTES)
            .unwrap()
            .unwrap();
        assert_eq!(h.status, StatusCode::NO_CONTENT);
        let h = parse_response(&mut buf, false, 100, MAX_BYTES)
            .unwrap()
            .unwrap();
        assert_eq!(h.status, StatusCode::OK);
        assert!(buf.is_empty());
    }

    #[test]
    fn too_large_incomplete_head() {
        let mut buf = BytesMut::from("HTTP/1.1 200 OK\r\nX-Big: ");
        buf.extend_from_slice(&[b'a'; 200]);
        assert_eq!(
            parse_response(&mut buf, false, 100, 100).unwrap_err(),
            HeadError::TooLarge
        );
    }

    #[test]
    fn too_large_complete_head() {
        let s = format!("HTTP/1.1 200 OK\r\nX-Big: {}\r\n\r\n", "a".repeat(200));
        let mut buf = BytesMut::from(s.as_str());
        assert_eq!(
            parse_response(&mut buf, false, 100, 100).unwrap_err(),
            HeadError::TooLarge
        );
        let mut buf = BytesMut::from(s.as_str());
        assert!(
            parse_response(&mut buf, false, 100, s.len())
                .unwrap()
                .is_some()
        );
    }

    #[test]
    fn too_many_headers() {
        let mut s = String::from("HTTP/1.1 200 OK\r\n");
        for i in 0..5 {
            s.push_str(&format!("X-{i}: v\r\n"));
        }
        s.push_str("\r\n");
        let mut buf = BytesMut::from(s.as_str());
        assert_eq!(
            parse_response(&mut buf, false, 4, MAX_BYTES).unwrap_err(),
            HeadError::TooLarge
        );
        let mut buf = BytesMut::from(s.as_str());
        assert!(
            parse_response(&mut buf, false, 5, MAX_BYTES)
                .unwrap()
                .is_some()
        );
        // Above the 128 cap, the cap wins.
        let mut s = String::from("HTTP/1.1 200 OK\r\n");
        for i in 0..129 {
            s.push_str(&format!("X-{i}: v\r\n"));
        }
        s.push_str("\r\n");
        let mut buf = BytesMut::from(s.as_str());
        assert_eq!(
            parse_response(&mut buf, false, 10_000, MAX_BYTES).unwrap_err(),
            HeadError::TooLarge
        );
    }

    #[test]
    fn garbage_is_invalid() {
        for s in [
            "GARBAGE\r\n\r\n",
            "HTTP/2.0 200 OK\r\n\r\n",
            "HTTP/1.1 abc OK\r\n\r\n",
            "HTTP/1.1 200 OK\r\nBad Name: x\r\n\r\n",
            "HTTP/1.1 200 OK\r\nX-A: a\r\n folded\r\n\r\n",
            "HTTP/1.1 200 OK\r\nX-A: a\0b\r\n\r\n",
            "HTTP/1.1 200 OK\r\nX-A: a\x7fb\r\n\r\n",
        ] {
            assert!(
                matches!(parse(s), Err(HeadError::Invalid(_))),
                "{s:?} -> {:?}",
                parse(s)
            );
        }
    }

    #[test]
    fn status_out_of_range_is_invalid() {
        assert_eq!(
            parse("HTTP/1.1 099 X\r\n\r\n").unwrap_err(),
            HeadError::Invalid("status")
        );
        assert_eq!(
            parse("HTTP/1.1 000 X\r\n\r\n").unwrap_err(),
            HeadError::Invalid("status")
        );
        assert_eq!(head("HTTP/1.1 999 X\r\n\r\n").status.as_u16(), 999);
    }

    #[test]
    fn errors_display() {
        assert!(HeadError::TooLarge.to_string().contains("too large"));
        assert!(HeadError::Invalid("status").to_string().contains("status"));
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(
            bytes in proptest::collection::vec(any::<u8>(), 0..512),
            head_request in any::<bool>(),
            max_headers in 0usize..200,
            max_bytes in 0usize..1024,
        ) {
            let mut buf = BytesMut::from(&bytes[..]);
            let _ = parse_response(&mut buf, head_request, max_headers, max_bytes);
        }

        #[test]
        fn arbitrary_header_lines_never_panic(
            lines in proptest::collection::vec("[ -~\t]{0,40}", 0..10),
            code in 0u16..1000,
        ) {
            let mut s = format!("HTTP/1.1 {code:03} X\r\n");
            for l in &lines {
                s.push_str(l);
                s.push_str("\r\n");
            }
            s.push_str("\r\n");
            let mut buf = BytesMut::from(s.as_str());
            let _ = parse_response(&mut buf, false, 128, MAX_BYTES);
        }

        #[test]
        fn any_split_point_gives_same_head(split in 0usize..80) {
            let full = b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\nX-A: hello\r\n\r\nbody";
            let head_len = full.len() - 4;
            let split = split.min(full.len());
            let mut buf = BytesMut::from(&full[..split]);
            let first = parse_response(&mut buf, false, 100, MAX_BYTES).unwrap();
            if split < head_len {
                prop_assert!(first.is_none());
                prop_assert_eq!(&buf[..], &full[..split]);
                buf.extend_from_slice(&full[split..]);
                let h = parse_response(&mut buf, false, 100, MAX_BYTES).unwrap().unwrap();
                prop_assert_eq!(h.framing, Framing::Length(4));
                prop_assert_eq!(&h.headers["x-a"], "hello");
                prop_assert_eq!(&buf[..], b"body");
            } else {
                let h = first.unwrap();
                prop_assert_eq!(h.framing, Framing::Length(4));
                prop_assert_eq!(&buf[..], &full[head_len..split]);
            }
        }
    }
}
