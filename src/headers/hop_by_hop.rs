//! Hop-by-hop fields (RFC 9110 §7.6.1): the fields that describe one connection rather than the
//! message, which a proxy must remove before forwarding in either direction, plus recognising an
//! HTTP/1.1 `Upgrade` we tunnel (bad-inputs rows 23, 24 and 63).
//!
//! Owns: the list of hop-by-hop fields, removing the fields `Connection` names, refusing a
//! `Connection` that names a framing field, keeping `Upgrade` for a tunnelled upgrade and never
//! keeping `Upgrade: h2c`.
//!
//! Does not own: answering 400 / closing on [`HopError`] (the caller does), deciding whether an
//! upgrade is allowed on a route, HTTP/2 extended CONNECT (`:protocol`, RFC 8441, which hyper
//! surfaces as an extension, not a field), and re-adding `TE: trailers` when the client sent it
//! (the handler does that after stripping).

use bytes::{BufMut, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};

use super::{is_token, list_elements};

/// A request or response we refuse to forward because stripping it would change its meaning.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum HopError {
    /// `Connection` names a field that frames or routes the message (content-length,
    /// transfer-encoding, host): removing it would change the framing (bad-inputs row 23) → the
    /// caller answers 400 and closes. Holds the named field, lowercased.
    #[error("Connection header names the framing field `{0}`")]
    ConnectionNamesFramingHeader(String),
}

/// `Keep-Alive` and `Proxy-Connection` are not in `http`'s standard set; `from_static` on a
/// lowercase literal is a const, so these cost nothing at run time.
const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

const ALWAYS_COUNT: usize = 6;

/// Removed from every message whether or not `Connection` names them. `Upgrade` is handled
/// separately because a tunnelled upgrade keeps it; `Connection` last, after its tokens are read.
// `Trailer` is not here: it is end to end (RFC 9110 §6.6.2), and hyper writes only the trailer
// fields a response's `Trailer` declares, so removing it would drop trailers.
const ALWAYS_HOP_BY_HOP: [HeaderName; ALWAYS_COUNT] = [
    KEEP_ALIVE,
    PROXY_CONNECTION,
    header::TE,
    header::TRANSFER_ENCODING,
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
];

/// Fields that must never be named by `Connection`: deleting `Content-Length` or
/// `Transfer-Encoding` changes how the body is delimited and deleting `Host` changes where the
/// request goes, which is a request-smuggling lever (Varnish f00010), so we refuse instead.
const FRAMING: [&str; 3] = ["content-length", "transfer-encoding", "host"];

/// Removes hop-by-hop fields in place: `Connection` and every field it names, `Keep-Alive`,
/// `Proxy-Connection`, `TE`, `Transfer-Encoding`, `Upgrade`, `Proxy-Authenticate`,
/// `Proxy-Authorization`.
///
/// When `keep_upgrade` is true (an HTTP/1.1 upgrade being tunnelled, e.g. websocket) `Upgrade` is
/// kept and `Connection` is re-set to exactly `upgrade`. `h2c` is never kept: it is removed from the
/// `Upgrade` list, and if nothing else is left `Upgrade` is removed and no `Connection` is set
/// (bad-inputs row 63; an h2c upgrade would let the client speak HTTP/2 to the upstream past every
/// rule we apply).
///
/// # Errors
/// [`HopError::ConnectionNamesFramingHeader`] if any `Connection` value names `Content-Length`,
/// `Transfer-Encoding` or `Host` (any case). `headers` is left untouched in that case.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) -> Result<(), HopError> {
    // One pass over the names says which hop-by-hop fields are here at all, so a message pays a
    // hash lookup only for the fields it has (most have `Connection` and nothing else).
    let mut connection = false;
    let mut upgrade = false;
    let mut fixed = [false; ALWAYS_COUNT];
    for name in headers.keys() {
        if name == header::CONNECTION {
            connection = true;
        } else if name == header::UPGRADE {
            upgrade = true;
        } else if let Some(i) = ALWAYS_HOP_BY_HOP.iter().position(|h| h == name) {
            fixed[i] = true;
        }
    }
    if !connection && !upgrade && !fixed.contains(&true) {
        return Ok(());
    }

    if connection {
        let mut named: Vec<HeaderName> = Vec::new();
        for value in &headers.get_all(header::CONNECTION) {
            for token in list_elements(value.as_bytes()) {
                if let Some(framing) = FRAMING
                    .iter()
                    .find(|framing| token.eq_ignore_ascii_case(framing.as_bytes()))
                {
                    return Err(HopError::ConnectionNamesFramingHeader(
                        (*framing).to_owned(),
                    ));
                }
                if token.eq_ignore_ascii_case(b"connection")
                    || (keep_upgrade && token.eq_ignore_ascii_case(b"upgrade"))
                {
                    continue;
                }
                // Only names that are present; `close` and `keep-alive` usually are not.
                if let Some(name) = headers
                    .keys()
                    .find(|name| name.as_str().as_bytes().eq_ignore_ascii_case(token))
                {
                    named.push(name.clone());
                }
            }
        }
        for name in named {
            headers.remove(name);
        }
        headers.remove(header::CONNECTION);
    }

    for (name, present) in ALWAYS_HOP_BY_HOP.into_iter().zip(fixed) {
        if present {
            headers.remove(name);
        }
    }

    if keep_upgrade && upgrade && retain_tunnel_protocols(headers) {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    } else if upgrade {
        headers.remove(header::UPGRADE);
    }
    Ok(())
}

/// True if the request asks for a protocol upgrade we tunnel: `Connection` contains the token
/// `upgrade` and an `Upgrade` field lists a protocol other than `h2c`. Returns the first such
/// protocol (`name` or `name/version`), lowercased, e.g. `"websocket"`.
#[must_use]
pub fn upgrade_protocol(headers: &HeaderMap) -> Option<String> {
    // Upgrade is the rarer field, so looking at it first makes the common answer cheapest.
    let protocol = headers
        .get_all(header::UPGRADE)
        .iter()
        .flat_map(|value| list_elements(value.as_bytes()))
        .find(|protocol| is_tunnel_protocol(protocol))?;
    let asks_upgrade = headers
        .get_all(header::CONNECTION)
        .iter()
        .flat_map(|value| list_elements(value.as_bytes()))
        .any(|token| token.eq_ignore_ascii_case(b"upgrade"));
    if !asks_upgrade {
        return None;
    }
    // `is_tunnel_protocol` only accepts ASCII tokens, so this never fails in practice.
    std::str::from_utf8(protocol)
        .ok()
        .map(str::to_ascii_lowercase)
}

/// Keeps only the `Upgrade` protocols we tunnel. Returns false when none is left (the caller then
/// removes `Upgrade`). Rebuilds the field only when something has to be dropped.
fn retain_tunnel_protocols(headers: &mut HeaderMap) -> bool {
    let mut kept = 0;
    let mut dropped = false;
    for protocol in headers
        .get_all(header::UPGRADE)
        .iter()
        .flat_map(|value| list_elements(value.as_bytes()))
    {
        if is_tunnel_protocol(protocol) {
            kept += protocol.len() + 2;
        } else {
            dropped = true;
        }
    }
    if kept == 0 {
        return false;
    }
    if !dropped {
        return true;
    }
    let mut joined = BytesMut::with_capacity(kept);
    for protocol in headers
        .get_all(header::UPGRADE)
        .iter()
        .flat_map(|value| list_elements(value.as_bytes()))
        .filter(|protocol| is_tunnel_protocol(protocol))
    {
        if !joined.is_empty() {
            joined.put_slice(b", ");
        }
        joined.put_slice(protocol);
    }
    // The bytes are a subset of valid values joined with ", ", so this cannot fail; if it somehow
    // did, dropping the upgrade is the safe answer.
    match HeaderValue::from_maybe_shared(joined.freeze()) {
        Ok(value) => {
            headers.insert(header::UPGRADE, value);
            true
        }
        Err(_) => false,
    }
}

/// `protocol-name ["/" protocol-version]` (RFC 9110 §7.8) whose name is not `h2c`. Anything that
/// is not that shape is not something we can tunnel either.
fn is_tunnel_protocol(protocol: &[u8]) -> bool {
    let (name, version) = match protocol.iter().position(|&b| b == b'/') {
        Some(slash) => (&protocol[..slash], Some(&protocol[slash + 1..])),
        None => (protocol, None),
    };
    is_token(name) && version.is_none_or(is_token) && !name.eq_ignore_ascii_case(b"h2c")
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn map(fields: &[(&str, &[u8])]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in fields {
            headers.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_bytes(value).unwrap(),
            );
        }
        headers
    }

    fn values<'a>(headers: &'a HeaderMap, name: &str) -> Vec<&'a [u8]> {
        headers
            .get_all(name)
            .iter()
            .map(HeaderValue::as_bytes)
            .collect()
    }

    #[test]
    fn nothing_to_strip_leaves_map_alone() {
        let mut headers = map(&[
            ("host", b"a"),
            ("accept", b"*/*"),
            ("x-a", b"1"),
            ("x-a", b"2"),
        ]);
        let before = headers.clone();
        strip_hop_by_hop(&mut headers, false).unwrap();
        assert_eq!(headers, before);
    }

    #[test]
    fn fixed_hop_by_hop_fields_are_removed_without_connection() {
        let mut headers = map(&[
            ("keep-alive", b"timeout=5"),
            ("proxy-connection", b"keep-alive"),
            ("te", b"trailers"),
            ("trailer", b"x-checksum"),
            ("transfer-encoding", b"chunked"),
            ("upgrade", b"websocket"),
            ("proxy-authenticate", b"Basic"),
            ("proxy-authorization", b"Basic Zm9vOmJhcg=="),
            ("authorization", b"Bearer x"),
            ("content-type", b"text/plain"),
        ]);
        strip_hop_by_hop(&mut headers, false).unwrap();
        let names: Vec<&str> = headers.keys().map(HeaderName::as_str).collect();
        assert_eq!(names.len(), 3, "{names:?}");
        assert!(headers.contains_key("trailer"), "Trailer is end to end");
        assert!(headers.contains_key("authorization"));
        assert!(headers.contains_key("content-type"));
    }

    #[test]
    fn several_connection_headers_name_custom_fields() {
        let mut headers = map(&[
            ("connection", b"X-Foo, x-bar"),
            ("connection", b"x-Baz"),
            ("x-foo", b"1"),
            ("x-bar", b"2"),
            ("x-bar", b"3"),
            ("x-baz", b"4"),
            ("x-qux", b"5"),
        ]);
        strip_hop_by_hop(&mut headers, false).unwrap();
        assert_eq!(headers.len(), 1);
        assert_eq!(values(&headers, "x-qux"), [b"5"]);
    }

    #[test]
    fn connection_tokens_with_odd_spacing_and_case() {
        let mut headers = map(&[
            ("connection", b"  X-Foo ,\tX-BAR,, ,x-bAz\t"),
            ("connection", b","),
            ("connection", b""),
            ("x-foo", b"1"),
            ("x-bar", b"2"),
            ("x-baz", b"3"),
            ("x-keep", b"4"),
        ]);
        strip_hop_by_hop(&mut headers, false).unwrap();
        assert_eq!(headers.len(), 1);
        assert!(headers.contains_key("x-keep"));
    }

    #[test]
    fn connection_close_and_keep_alive() {
        let mut headers = map(&[("connection", b"close"), ("host", b"a")]);
        strip_hop_by_hop(&mut headers, false).unwrap();
        assert_eq!(headers.len(), 1);
        assert!(headers.contains_key("host"));

        let mut headers = map(&[
            ("Connection", b"Keep-Alive"),
            ("Keep-Alive", b"timeout=5, max=100"),
            ("host", b"a"),
        ]);
        strip_hop_by_hop(&mut headers, false).unwrap();
        assert_eq!(headers.len(), 1);
        assert!(headers.contains_key("host"));
    }

    #[test]
    fn connection_naming_long_custom_name_in_upper_case() {
        // Longer than http's 64-byte scratch buffer: the lookup takes its other path.
        let long = "x-".to_owned() + &"a".repeat(80);
        let mut headers = map(&[
            ("connection", long.to_ascii_uppercase().as_bytes()),
            (&long, b"1"),
            ("x-keep", b"1"),
        ]);
        strip_hop_by_hop(&mut headers, false).unwrap();
        assert_eq!(headers.len(), 1);
    }

    #[test]
    fn connection_naming_nonsense_is_ignored() {
        let mut headers = map(&[
            ("connection", b"x foo, \xff\xfe, a:b, \"quoted\""),
            ("x-keep", b"1"),
        ]);
        strip_hop_by_hop(&mut headers, false).unwrap();
        assert_eq!(headers.len(), 1);
        assert!(headers.contains_key("x-keep"));
    }

    #[test]
    fn connection_naming_framing_field_is_refused_untouched() {
        for (value, named) in [
            (&b"Content-Length"[..], "content-length"),
            (b"close, TRANSFER-ENCODING", "transfer-encoding"),
            (b" host ", "host"),
            (b"x-foo,hOsT,x-bar", "host"),
        ] {
            let mut headers = map(&[
                ("connection", b"keep-alive"),
                ("connection", value),
                ("content-length", b"3"),
                ("host", b"example.com"),
                ("x-foo", b"1"),
                ("keep-alive", b"timeout=5"),
            ]);
            let before = headers.clone();
            assert_eq!(
                strip_hop_by_hop(&mut headers, true),
                Err(HopError::ConnectionNamesFramingHeader(named.to_owned())),
                "{value:?}"
            );
            assert_eq!(headers, before);
        }
    }

    #[test]
    fn connection_naming_connection_is_harmless() {
        let mut headers = map(&[
            ("connection", b"connection, x-foo"),
            ("x-foo", b"1"),
            ("x-keep", b"1"),
        ]);
        strip_hop_by_hop(&mut headers, false).unwrap();
        assert_eq!(headers.len(), 1);
    }

    #[test]
    fn upgrade_kept_when_tunnelling() {
        let mut headers = map(&[
            ("connection", b"keep-alive, Upgrade"),
            ("connection", b"x-foo"),
            ("upgrade", b"websocket"),
            ("x-foo", b"1"),
            ("sec-websocket-key", b"dGhlIHNhbXBsZSBub25jZQ=="),
        ]);
        strip_hop_by_hop(&mut headers, true).unwrap();
        assert_eq!(values(&headers, "connection"), [b"upgrade"]);
        assert_eq!(values(&headers, "upgrade"), [b"websocket"]);
        assert!(!headers.contains_key("x-foo"));
        assert!(headers.contains_key("sec-websocket-key"));
    }

    #[test]
    fn upgrade_stripped_when_not_tunnelling() {
        let mut headers = map(&[("connection", b"Upgrade"), ("upgrade", b"websocket")]);
        strip_hop_by_hop(&mut headers, false).unwrap();
        assert!(headers.is_empty());
    }

    #[test]
    fn keep_upgrade_without_upgrade_field_sets_no_connection() {
        let mut headers = map(&[("connection", b"upgrade"), ("host", b"a")]);
        strip_hop_by_hop(&mut headers, true).unwrap();
        assert!(!headers.contains_key("connection"));
        assert!(!headers.contains_key("upgrade"));
    }

    #[test]
    fn h2c_is_never_kept() {
        let mut headers = map(&[
            ("connection", b"Upgrade, HTTP2-Settings"),
            ("upgrade", b"h2c"),
            ("http2-settings", b"AAMAAABkAARAAAAAAAIAAAAA"),
            ("host", b"a"),
        ]);
        strip_hop_by_hop(&mut headers, true).unwrap();
        assert_eq!(headers.len(), 1, "{headers:?}");
        assert!(headers.contains_key("host"));

        let mut headers = map(&[
            ("connection", b"upgrade"),
            ("upgrade", b"H2C, websocket"),
            ("upgrade", b"h2c/1"),
        ]);
        strip_hop_by_hop(&mut headers, true).unwrap();
        assert_eq!(values(&headers, "upgrade"), [b"websocket"]);
        assert_eq!(values(&headers, "connection"), [b"upgrade"]);
    }

    #[test]
    fn upgrade_protocol_detection() {
        type Fields<'a> = &'a [(&'a str, &'a [u8])];
        let cases: [(Fields<'_>, Option<&str>); 8] = [
            (
                &[("connection", b"Upgrade"), ("upgrade", b"WebSocket")],
                Some("websocket"),
            ),
            (
                &[
                    ("connection", b"keep-alive, upgrade"),
                    ("upgrade", b"websocket"),
                ],
                Some("websocket"),
            ),
            (
                &[
                    ("connection", b"keep-alive"),
                    ("connection", b" UPGRADE "),
                    ("upgrade", b"websocket"),
                ],
                Some("websocket"),
            ),
            (
                &[("connection", b"upgrade"), ("upgrade", b"h2c, Foo/2")],
                Some("foo/2"),
            ),
            (&[("connection", b"upgrade"), ("upgrade", b"h2c")], None),
            (
                &[("connection", b"keep-alive"), ("upgrade", b"websocket")],
                None,
            ),
            (&[("upgrade", b"websocket")], None),
            (&[("connection", b"upgrade")], None),
        ];
        for (fields, expected) in cases {
            assert_eq!(
                upgrade_protocol(&map(fields)).as_deref(),
                expected,
                "{fields:?}"
            );
        }
    }

    const HOP: [&str; 9] = [
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "transfer-encoding",
        "upgrade",
        "proxy-authenticate",
        "proxy-authorization",
        "http2-settings",
    ];

    fn field_name() -> impl Strategy<Value = String> {
        prop_oneof![
            4 => "[a-z][a-z0-9-]{0,12}",
            3 => proptest::sample::select(HOP.to_vec()).prop_map(str::to_owned),
            1 => proptest::sample::select(vec!["content-type", "content-length", "host", "accept"])
                .prop_map(str::to_owned),
        ]
    }

    /// Writes `name` as a client might: random case, random whitespace around it.
    fn mess_up(name: &str, case: u64, pre: &str, post: &str) -> String {
        let cased: String = name
            .chars()
            .enumerate()
            .map(|(i, c)| {
                if (case >> (i % 64)) & 1 == 1 {
                    c.to_ascii_uppercase()
                } else {
                    c
                }
            })
            .collect();
        format!("{pre}{cased}{post}")
    }

    /// Fields, and `Connection` lines whose tokens mostly name fields that are present (otherwise
    /// random names would almost never meet and the removal rule would go untested).
    fn message() -> impl Strategy<Value = (Vec<(String, String)>, Vec<Vec<String>>)> {
        proptest::collection::vec(
            (field_name(), "[ -~]{0,8}|websocket|h2c|h2c, websocket"),
            0..12,
        )
        .prop_flat_map(|fields| {
            let names: Vec<String> = fields.iter().map(|(name, _)| name.clone()).collect();
            let token = prop_oneof![
                3 => if names.is_empty() {
                    field_name().boxed()
                } else {
                    proptest::sample::select(names).boxed()
                },
                1 => field_name(),
                1 => Just("upgrade".to_owned()),
                1 => Just("close".to_owned()),
            ];
            let messy = (token, any::<u64>(), "[ \t]{0,2}", "[ \t]{0,2}")
                .prop_map(|(name, case, pre, post)| mess_up(&name, case, &pre, &post));
            let lines = proptest::collection::vec(proptest::collection::vec(messy, 0..4), 0..3);
            (Just(fields), lines)
        })
    }

    proptest! {
        #[test]
        fn strip_removes_exactly_the_hop_by_hop_fields(
            (fields, connection) in message(),
            keep_upgrade in any::<bool>(),
        ) {
            let mut headers = HeaderMap::new();
            for (name, value) in &fields {
                headers.append(
                    HeaderName::from_bytes(name.as_bytes()).unwrap(),
                    HeaderValue::from_str(value).unwrap(),
                );
            }
            for tokens in &connection {
                headers.append(header::CONNECTION, HeaderValue::from_str(&tokens.join(",")).unwrap());
            }
            // Every Connection line counts, including ones the generator made as ordinary fields.
            let named: Vec<String> = headers
                .get_all(header::CONNECTION)
                .iter()
                .flat_map(|value| value.to_str().unwrap().split(','))
                .map(|token| token.trim().to_ascii_lowercase())
                .collect();
            let before = headers.clone();
            let result = strip_hop_by_hop(&mut headers, keep_upgrade);

            if named.iter().any(|name| FRAMING.contains(&name.as_str())) {
                prop_assert!(result.is_err());
                prop_assert_eq!(headers, before);
                return Ok(());
            }
            prop_assert!(result.is_ok());

            // Connection and Upgrade may only survive as a tunnelled upgrade, rewritten.
            if headers.contains_key(header::UPGRADE) {
                prop_assert!(keep_upgrade);
                prop_assert_eq!(values(&headers, "connection"), [b"upgrade"]);
                for value in values(&headers, "upgrade") {
                    prop_assert!(list_elements(value).all(is_tunnel_protocol));
                }
            } else {
                prop_assert!(!headers.contains_key(header::CONNECTION));
            }
            for name in before.keys() {
                if name == header::CONNECTION || name == header::UPGRADE {
                    continue;
                }
                let stripped = ALWAYS_HOP_BY_HOP.contains(name)
                    || named.iter().any(|named| named == name.as_str());
                if stripped {
                    prop_assert!(!headers.contains_key(name), "{} survived", name);
                } else {
                    prop_assert_eq!(values(&headers, name.as_str()), values(&before, name.as_str()));
                }
            }
            for name in headers.keys().filter(|&name| name != header::CONNECTION) {
                prop_assert!(before.contains_key(name), "{} appeared", name);
            }
        }
    }
}
