//! The header rules a reverse proxy applies between client and upstream, as plain functions over
//! [`http::HeaderMap`]: no I/O, no configuration types, no async, so each rule can be unit- and
//! property-tested on its own and called from the request path without ceremony.
//!
//! - [`hop_by_hop`]: which fields belong to one connection and must not be forwarded
//!   (RFC 9110 §7.6.1), and whether a request asks for a protocol upgrade we tunnel.
//! - [`forwarded`]: `X-Forwarded-*`, RFC 7239 `Forwarded` and `Via` (RFC 9110 §7.6.3), the
//!   trusted-proxy list, and the derived client IP that rate limiting and logs use.
//! - [`request_id`]: keeping or generating the per-request correlation id.
//!
//! What this module does not own: choosing *when* to call these (the handler does, in both
//! directions), turning a [`hop_by_hop::HopError`] into a 400 response, rewriting `Host` /
//! `:authority` per route, and validating header syntax that hyper already rejects (CR, LF, NUL).

pub mod forwarded;
pub mod hop_by_hop;
pub mod request_id;

/// The non-empty elements of a comma-separated field value (RFC 9110 §5.6.1), trimmed of optional
/// whitespace. Empty elements (`a, , b`) are skipped because the RFC requires recipients to accept
/// and ignore them. Works on bytes so values with obs-text never need a UTF-8 check just to split.
pub(crate) fn list_elements(value: &[u8]) -> impl DoubleEndedIterator<Item = &[u8]> {
    value
        .split(|&b| b == b',')
        .map(<[u8]>::trim_ascii)
        .filter(|element| !element.is_empty())
}

/// RFC 9110 §5.6.2 `tchar`: the bytes allowed in a token such as a field name.
pub(crate) fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// True if `s` is a non-empty RFC 9110 token.
pub(crate) fn is_token(s: &[u8]) -> bool {
    !s.is_empty() && s.iter().all(|&b| is_tchar(b))
}
