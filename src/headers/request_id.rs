//! The per-request correlation id (`X-Request-Id` or whatever header the operator names): keep a
//! well-formed incoming one, otherwise generate one, and put it on the request.
//!
//! Incoming ids are kept from any peer, trusted or not. Operators expect `x-request-id` to pass
//! through so a client's or an edge's id can be followed across systems, and the id is not a
//! security boundary: it only correlates log lines and grants nothing. What we do enforce is its
//! shape (bounded length, a conservative character set), so a hostile id cannot bloat logs or
//! inject separators into them.
//!
//! Does not own: echoing the id on the response or logging it (the handler does), and W3C
//! `traceparent` (tracing does).

use http::{HeaderMap, HeaderName, HeaderValue};

/// Longest incoming id we keep, in bytes.
pub const MAX_LEN: usize = 128;

/// Keeps a valid incoming id — exactly one `header` line of 1..=[`MAX_LEN`] bytes of
/// `[A-Za-z0-9._:-]`, from any peer (see the module docs for why) — or generates a new one with
/// [`generate`] and sets it, replacing every incoming line. Returns the id now on the request.
///
/// Several lines are treated as invalid rather than picking one: which one a downstream system
/// would log is anyone's guess, and one id per request is the point.
pub fn ensure_request_id(headers: &mut HeaderMap, header: &HeaderName) -> HeaderValue {
    let mut incoming = headers.get_all(header).iter();
    if let (Some(id), None) = (incoming.next(), incoming.next())
        && is_valid(id.as_bytes())
    {
        return id.clone();
    }
    let id = generate();
    headers.insert(header.clone(), id.clone());
    id
}

/// A new id: 32 lowercase hex characters from 128 random bits (the same shape as nginx's
/// `$request_id`). It comes from `fastrand`'s thread-local generator, which is fast and unique
/// enough for correlation; it is an identifier, not a secret, so it need not be unpredictable.
#[must_use]
pub fn generate() -> HeaderValue {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let bits = fastrand::u128(..);
    let mut hex = [0_u8; 32];
    for (i, out) in hex.iter_mut().enumerate() {
        // Most significant nibble first; the truncating cast keeps the low bits, which the mask
        // then narrows to one nibble, so the index is always < 16.
        *out = HEX[(bits >> (124 - 4 * i)) as usize & 0xf];
    }
    // Hex digits are always a valid field value; the fallback only satisfies the type.
    HeaderValue::from_bytes(&hex)
        .unwrap_or_else(|_| HeaderValue::from_static("00000000000000000000000000000000"))
}

/// True for 1..=[`MAX_LEN`] bytes of `[A-Za-z0-9._:-]`. Non-UTF-8 and non-ASCII bytes fail the
/// character check, so no separate UTF-8 validation is needed.
#[must_use]
pub fn is_valid(id: &[u8]) -> bool {
    (1..=MAX_LEN).contains(&id.len())
        && id
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

    fn is_generated(id: &HeaderValue) -> bool {
        id.len() == 32
            && id
                .as_bytes()
                .iter()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b))
    }

    #[test]
    fn valid_incoming_id_is_kept() {
        for id in [
            "a",
            "abc-123",
            "A.b_c:d-e",
            &"x".repeat(MAX_LEN),
            "0af7651916cd43dd8448eb211c80319c",
        ] {
            let mut headers = HeaderMap::new();
            headers.insert(X_REQUEST_ID, HeaderValue::from_str(id).unwrap());
            let kept = ensure_request_id(&mut headers, &X_REQUEST_ID);
            assert_eq!(kept, id);
            assert_eq!(
                headers.get_all(X_REQUEST_ID).iter().collect::<Vec<_>>(),
                [&kept]
            );
        }
    }

    #[test]
    fn invalid_incoming_id_is_replaced() {
        let too_long = "x".repeat(MAX_LEN + 1);
        let bad: [&[u8]; 7] = [
            b"",
            too_long.as_bytes(),
            b"has space",
            b"semi;colon",
            b"quote\"",
            b"caf\xc3\xa9",
            b"\xff\xfe",
        ];
        for id in bad {
            let mut headers = HeaderMap::new();
            headers.insert(X_REQUEST_ID, HeaderValue::from_bytes(id).unwrap());
            let new = ensure_request_id(&mut headers, &X_REQUEST_ID);
            assert!(is_generated(&new), "{id:?} -> {new:?}");
            assert_eq!(
                headers.get_all(X_REQUEST_ID).iter().collect::<Vec<_>>(),
                [&new]
            );
        }
    }

    #[test]
    fn several_incoming_ids_are_replaced_by_one() {
        let mut headers = HeaderMap::new();
        headers.append(X_REQUEST_ID, HeaderValue::from_static("a"));
        headers.append(X_REQUEST_ID, HeaderValue::from_static("b"));
        let new = ensure_request_id(&mut headers, &X_REQUEST_ID);
        assert!(is_generated(&new));
        assert_eq!(headers.get_all(X_REQUEST_ID).iter().count(), 1);
    }

    #[test]
    fn missing_id_is_generated_under_the_configured_name() {
        let name = HeaderName::from_static("x-correlation-id");
        let mut headers = HeaderMap::new();
        let new = ensure_request_id(&mut headers, &name);
        assert!(is_generated(&new));
        assert_eq!(headers.get(&name), Some(&new));
        assert!(!headers.contains_key(X_REQUEST_ID));
    }

    #[test]
    fn generated_ids_are_32_hex_and_unique() {
        let ids: HashSet<HeaderValue> = (0..10_000).map(|_| generate()).collect();
        assert_eq!(ids.len(), 10_000);
        assert!(ids.iter().all(is_generated));
        assert!(ids.iter().all(|id| is_valid(id.as_bytes())));
    }

    #[test]
    fn generated_ids_are_unique_across_threads() {
        let handles: Vec<_> = (0..4)
            .map(|_| std::thread::spawn(|| (0..1_000).map(|_| generate()).collect::<Vec<_>>()))
            .collect();
        let ids: HashSet<HeaderValue> = handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect();
        assert_eq!(ids.len(), 4_000);
    }
}
