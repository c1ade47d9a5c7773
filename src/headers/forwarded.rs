//! Forwarding headers: `X-Forwarded-For` / `-Proto` / `-Host`, RFC 7239 `Forwarded`, and `Via`
//! (RFC 9110 §7.6.3), plus the trusted-proxy list that decides which of them we believe and the
//! client IP derived from them (ecosystem §3.6).
//!
//! Owns: the trust rule (from an untrusted peer every incoming `X-Forwarded-*` is overwritten, so
//! the classic spoofing bug cannot happen), the right-to-left client-IP walk, formatting our own
//! `Forwarded` element and `Via` entry, and `Via` loop detection.
//!
//! Does not own: answering 508 on a loop (the caller does), validating pseudonyms and trusted
//! networks in the configuration (the config layer calls [`is_valid_pseudonym`]), `X-Forwarded-Port`,
//! and reading the client IP out of an incoming `Forwarded` (only `X-Forwarded-For` is walked:
//! it is what every peer we sit behind sends; `Forwarded` is emitted as an opt-in for upstreams).

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use bytes::{BufMut, BytesMut};
use http::Version;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use ipnet::IpNet;

use super::{is_tchar, is_token};

/// `X-Forwarded-For`: the de-facto list of client and proxy addresses, oldest first.
pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
/// `X-Forwarded-Proto`: the scheme the client used towards the first proxy.
pub const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
/// `X-Forwarded-Host`: the `Host` the client sent to the first proxy.
pub const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Which peers' `X-Forwarded-For` / `Forwarded` / `X-Forwarded-Proto|Host` we believe (like nginx
/// `set_real_ip_from`). Empty means nobody is trusted: every peer is the client.
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies {
    /// Truncated, sorted, with networks inside another removed, so the per-request scan is no
    /// longer than it must be.
    nets: Vec<IpNet>,
}

impl TrustedProxies {
    /// Builds the list. Host bits are cleared (`10.1.2.3/8` means `10.0.0.0/8`) and networks
    /// inside another listed one are dropped.
    #[must_use]
    pub fn new(mut nets: Vec<IpNet>) -> Self {
        for net in &mut nets {
            *net = net.trunc();
        }
        // Sorted by (family, network, prefix length), a network is either inside the last kept
        // one or disjoint from every kept one (CIDR blocks nest or don't overlap), so comparing
        // with the last kept network is enough.
        nets.sort_unstable();
        nets.dedup_by(|later, kept| kept.contains(&*later));
        Self { nets }
    }

    /// True if `ip` falls in one of the trusted networks. An IPv4-mapped IPv6 address
    /// (`::ffff:10.0.0.1`, what a dual-stack socket reports for an IPv4 peer) matches both the
    /// IPv4 network and a `::ffff:0:0/96`-style IPv6 one, so operators can list either form.
    #[must_use]
    pub fn is_trusted(&self, ip: IpAddr) -> bool {
        let canonical = ip.to_canonical();
        self.nets
            .iter()
            .any(|net| net.contains(&canonical) || (canonical != ip && net.contains(&ip)))
    }

    /// True if no network is trusted.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.nets.is_empty()
    }
}

/// What we know about the request as it reached us, for [`apply_forwarding`].
#[derive(Debug, Clone, Copy)]
pub struct ForwardingInfo<'a> {
    /// The TCP peer.
    pub peer: SocketAddr,
    /// `"http"` or `"https"`, as the client spoke to us.
    pub scheme: &'a str,
    /// The `Host` / `:authority` the client sent.
    pub host: Option<&'a str>,
    /// Also emit an RFC 7239 `Forwarded` element.
    pub add_forwarded: bool,
    /// Pseudonym for our `Via` entry (`1.1 <pseudonym>`, `2 <pseudonym>`, …); `None` = no `Via`.
    pub via: Option<&'a str>,
    /// The client's protocol version, for `Via`'s received-protocol.
    pub version: Version,
}

/// Applies the forwarding headers to a request about to go upstream, in place, and returns the
/// derived client IP.
///
/// - `X-Forwarded-For`: from a trusted peer, the peer IP is appended to the incoming list (all
///   incoming lines are joined into one value, `, ` separated); from an untrusted peer it is
///   replaced by the peer IP.
/// - `X-Forwarded-Proto` / `X-Forwarded-Host`: from a trusted peer an incoming value is kept and
///   a missing one is set; from an untrusted peer both are overwritten with what we saw (and
///   `X-Forwarded-Host` is removed if the client sent no host).
/// - `Forwarded`, only when `add_forwarded`: the same trust rule, with our element
///   `for=…;proto=…;host=…` (IPv6 bracketed and quoted, `host` quoted when it is not a token).
///   When `add_forwarded` is false an incoming `Forwarded` is left untouched: we do not own the
///   field then, and rewriting it would surprise setups that rely on an outer proxy's. The cost is
///   that an upstream which reads `Forwarded` sees whatever the client sent unless its route turns
///   `add_forwarded` on; the config docs must say so.
/// - `Via`, when `info.via` is set: our entry is appended (see [`append_via`]).
///
/// The client IP: from an untrusted peer, the peer IP. From a trusted peer, `X-Forwarded-For` is
/// walked right to left, skipping trusted addresses; the first untrusted one is the client, or the
/// leftmost if all are trusted. A malformed entry stops the walk and the last good address (the
/// one to its right, or the peer) is used, because anything left of garbage is unverifiable.
/// IPv4-mapped IPv6 addresses are reported as IPv4.
pub fn apply_forwarding(
    headers: &mut HeaderMap,
    info: &ForwardingInfo<'_>,
    trusted: &TrustedProxies,
) -> IpAddr {
    let peer = info.peer.ip().to_canonical();
    let peer_trusted = trusted.is_trusted(peer);
    let client = if peer_trusted {
        derive_client_ip(headers, peer, trusted)
    } else {
        peer
    };

    // Removing first and then appending gives "replace" for untrusted peers through the same code
    // path, and guarantees a spoofed value never survives even if building ours failed.
    if !peer_trusted {
        headers.remove(X_FORWARDED_FOR);
    }
    append_list_element(headers, X_FORWARDED_FOR, MAX_IP_LEN, |buf| {
        write_ip(buf, peer);
    });

    if !peer_trusted || !headers.contains_key(X_FORWARDED_PROTO) {
        set_or_remove(headers, X_FORWARDED_PROTO, Some(info.scheme));
    }
    if !peer_trusted || !headers.contains_key(X_FORWARDED_HOST) {
        set_or_remove(headers, X_FORWARDED_HOST, info.host);
    }

    if info.add_forwarded {
        if !peer_trusted {
            headers.remove(header::FORWARDED);
        }
        let hint = MAX_IP_LEN + 16 + info.scheme.len() + info.host.map_or(0, str::len);
        append_list_element(headers, header::FORWARDED, hint, |buf| {
            write_forwarded_element(buf, peer, info.scheme, info.host);
        });
    }

    if let Some(pseudonym) = info.via {
        append_via(headers, info.version, pseudonym);
    }
    client
}

/// Appends our `Via` entry (`1.1 pseudonym`, or `1.0`, `2`, `3` after `version`) to `headers`,
/// joining any existing `Via` lines into one comma-separated value. Used for requests (client
/// version) and responses (upstream version). Does nothing if `pseudonym` is not valid (see
/// [`is_valid_pseudonym`]) rather than emit an entry that would break list parsing downstream
/// and that [`via_contains`] could not find again.
pub fn append_via(headers: &mut HeaderMap, version: Version, pseudonym: &str) {
    if !is_valid_pseudonym(pseudonym) {
        return;
    }
    let protocol = via_protocol(version);
    append_list_element(
        headers,
        header::VIA,
        protocol.len() + 1 + pseudonym.len(),
        |buf| {
            buf.put_slice(protocol.as_bytes());
            buf.put_u8(b' ');
            buf.put_slice(pseudonym.as_bytes());
        },
    );
}

/// True if `Via` already lists `pseudonym` as a received-by (case-insensitively): the request has
/// been through us before, so forwarding it again would loop (the caller answers 508). Commas
/// inside `Via` comments are not element separators, so a comment cannot fake or hide an entry.
#[must_use]
pub fn via_contains(headers: &HeaderMap, pseudonym: &str) -> bool {
    !pseudonym.is_empty()
        && headers
            .get_all(header::VIA)
            .iter()
            .any(|value| via_value_contains(value.as_bytes(), pseudonym.as_bytes()))
}

/// A `Via` received-by we can emit and find again: a non-empty token, or a host with an optional
/// port (`[`, `]`, `:` for IPv6 literals and ports). The config layer should reject anything else.
#[must_use]
pub fn is_valid_pseudonym(pseudonym: &str) -> bool {
    !pseudonym.is_empty()
        && pseudonym
            .bytes()
            .all(|b| is_tchar(b) || matches!(b, b'[' | b']' | b':'))
}

/// Longest textual IP address we write (an IPv6 address with an embedded IPv4 tail), used only as
/// a capacity hint.
const MAX_IP_LEN: usize = 45;

/// RFC 9110 §7.6.3 received-protocol: the protocol name is omitted for HTTP.
fn via_protocol(version: Version) -> &'static str {
    match version {
        Version::HTTP_09 => "0.9",
        Version::HTTP_10 => "1.0",
        Version::HTTP_2 => "2",
        Version::HTTP_3 => "3",
        // HTTP/1.1 and any future version hyper might report.
        _ => "1.1",
    }
}

/// Walks `X-Forwarded-For` right to left from a trusted `peer`; see [`apply_forwarding`].
fn derive_client_ip(headers: &HeaderMap, peer: IpAddr, trusted: &TrustedProxies) -> IpAddr {
    let mut last_good = peer;
    // Several lines are one list in order (RFC 9110 §5.3), so walk the lines in reverse too.
    for value in headers.get_all(X_FORWARDED_FOR).iter().rev() {
        for entry in super::list_elements(value.as_bytes()).rev() {
            let Some(ip) = parse_xff_entry(entry) else {
                return last_good;
            };
            if !trusted.is_trusted(ip) {
                return ip;
            }
            last_good = ip;
        }
    }
    last_good
}

/// Parses one `X-Forwarded-For` entry, accepting what proxies actually send: `192.0.2.1`,
/// `2001:db8::1`, `192.0.2.1:4711`, `[2001:db8::1]`, `[2001:db8::1]:4711`, optionally in double
/// quotes. Anything else (`unknown`, obfuscated ids, zone ids, garbage) is `None`.
fn parse_xff_entry(entry: &[u8]) -> Option<IpAddr> {
    let entry = match entry {
        [b'"', inner @ .., b'"'] => inner,
        _ => entry,
    };
    // No valid form is longer than a bracketed IPv6 address with a port; refusing early keeps
    // hostile input from reaching the address parsers at all.
    if entry.len() > MAX_IP_LEN + 8 {
        return None;
    }
    let text = std::str::from_utf8(entry).ok()?;
    let ip = if let Some(rest) = text.strip_prefix('[') {
        let (inner, after) = rest.split_once(']')?;
        if !(after.is_empty() || is_port(after.strip_prefix(':')?)) {
            return None;
        }
        IpAddr::V6(inner.parse::<Ipv6Addr>().ok()?)
    } else if let Ok(ip) = text.parse::<IpAddr>() {
        ip
    } else {
        let (host, port) = text.split_once(':')?;
        if !is_port(port) {
            return None;
        }
        IpAddr::V4(host.parse::<Ipv4Addr>().ok()?)
    };
    Some(ip.to_canonical())
}

fn is_port(port: &str) -> bool {
    (1..=5).contains(&port.len()) && port.bytes().all(|b| b.is_ascii_digit())
}

/// Sets `name` to `value`, or removes it when there is no value or it is not a valid field value
/// (so a stale or spoofed one never survives).
fn set_or_remove(headers: &mut HeaderMap, name: HeaderName, value: Option<&str>) {
    let value = value.and_then(|value| match value {
        // The two schemes we serve are static: no allocation on every request.
        "http" => Some(HeaderValue::from_static("http")),
        "https" => Some(HeaderValue::from_static("https")),
        other => HeaderValue::from_str(other).ok(),
    });
    match value {
        Some(value) => {
            headers.insert(name, value);
        }
        None => {
            headers.remove(name);
        }
    }
}

/// Replaces every `name` line with one value: the existing elements joined with `, `, then the
/// element `write_element` produces. One allocation, sized by `element_hint`.
fn append_list_element(
    headers: &mut HeaderMap,
    name: HeaderName,
    element_hint: usize,
    write_element: impl FnOnce(&mut BytesMut),
) {
    let existing: usize = headers
        .get_all(&name)
        .iter()
        .map(|value| value.len() + 2)
        .sum();
    let mut buf = BytesMut::with_capacity(existing + element_hint);
    for value in &headers.get_all(&name) {
        let value = value.as_bytes().trim_ascii();
        if !value.is_empty() {
            buf.put_slice(value);
            buf.put_slice(b", ");
        }
    }
    write_element(&mut buf);
    // Existing values were valid and our elements are built from addresses, tokens and escaped
    // quoted-strings, so this does not fail; if it did, the map keeps what it had (for untrusted
    // peers the caller already removed the incoming values).
    if let Ok(value) = HeaderValue::from_maybe_shared(buf.freeze()) {
        headers.insert(name, value);
    }
}

fn write_ip(buf: &mut BytesMut, ip: IpAddr) {
    match ip {
        // Every request writes one of these; the formatting machinery costs more than the digits.
        IpAddr::V4(v4) => write_ipv4(buf, v4),
        // `BytesMut` grows as needed, so its `fmt::Write` never fails.
        IpAddr::V6(v6) => {
            let _ = write!(buf, "{v6}");
        }
    }
}

fn write_ipv4(buf: &mut BytesMut, ip: std::net::Ipv4Addr) {
    for (i, octet) in ip.octets().into_iter().enumerate() {
        if i > 0 {
            buf.put_u8(b'.');
        }
        if octet >= 100 {
            buf.put_u8(b'0' + octet / 100);
        }
        if octet >= 10 {
            buf.put_u8(b'0' + (octet / 10) % 10);
        }
        buf.put_u8(b'0' + octet % 10);
    }
}

/// RFC 7239 §4 `forwarded-element` for our hop: `for=` the peer, then `proto=` and `host=`.
/// `by=` is left out on purpose: it would disclose our own address to the upstream.
fn write_forwarded_element(buf: &mut BytesMut, peer: IpAddr, scheme: &str, host: Option<&str>) {
    buf.put_slice(b"for=");
    match peer {
        IpAddr::V4(v4) => write_ipv4(buf, v4),
        // RFC 7239 §6: an IPv6 node is bracketed, and `[`/`:` are not token characters, so the
        // value is quoted.
        IpAddr::V6(v6) => {
            let _ = write!(buf, "\"[{v6}]\"");
        }
    }
    if can_quote(scheme) {
        buf.put_slice(b";proto=");
        write_token_or_quoted(buf, scheme);
    }
    if let Some(host) = host.filter(|host| can_quote(host)) {
        buf.put_slice(b";host=");
        write_token_or_quoted(buf, host);
    }
}

/// A parameter value we can represent: non-empty, and no control bytes other than HTAB (which a
/// quoted-string allows). A parameter we cannot represent is left out rather than mangled.
fn can_quote(value: &str) -> bool {
    !value.is_empty()
        && value
            .bytes()
            .all(|b| b == b'\t' || (b >= 0x20 && b != 0x7f))
}

/// RFC 7239 `value = token / quoted-string`, escaping `"` and `\` inside the quotes.
fn write_token_or_quoted(buf: &mut BytesMut, value: &str) {
    if is_token(value.as_bytes()) {
        buf.put_slice(value.as_bytes());
        return;
    }
    buf.put_u8(b'"');
    for &b in value.as_bytes() {
        if b == b'"' || b == b'\\' {
            buf.put_u8(b'\\');
        }
        buf.put_u8(b);
    }
    buf.put_u8(b'"');
}

/// Does one `Via` value list `pseudonym` as a received-by? Splits elements on commas outside
/// comments (comments nest and may contain quoted-pairs, RFC 9110 §5.6.5).
fn via_value_contains(value: &[u8], pseudonym: &[u8]) -> bool {
    let mut depth = 0_u32;
    let mut escaped = false;
    let mut start = 0;
    for (i, &b) in value.iter().enumerate() {
        if depth > 0 {
            if escaped {
                escaped = false;
            } else {
                match b {
                    b'\\' => escaped = true,
                    b'(' => depth = depth.saturating_add(1),
                    b')' => depth -= 1,
                    _ => {}
                }
            }
            continue;
        }
        match b {
            b'(' => depth = 1,
            b',' => {
                if via_element_received_by(&value[start..i]).eq_ignore_ascii_case(pseudonym) {
                    return true;
                }
                start = i + 1;
            }
            _ => {}
        }
    }
    via_element_received_by(&value[start..]).eq_ignore_ascii_case(pseudonym)
}

/// The received-by of `received-protocol RWS received-by [RWS comment]`, or empty.
fn via_element_received_by(element: &[u8]) -> &[u8] {
    let element = element.trim_ascii_start();
    let Some(space) = element.iter().position(|&b| b == b' ' || b == b'\t') else {
        return &[];
    };
    let rest = element[space..].trim_ascii_start();
    let end = rest
        .iter()
        .position(|&b| matches!(b, b' ' | b'\t' | b'('))
        .unwrap_or(rest.len());
    &rest[..end]
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {

    #[test]
    fn ipv4_is_written_as_std_formats_it() {
        // Every octet value, in every position.
        for o in 0..=255u8 {
            let ip = std::net::Ipv4Addr::new(o, 255 - o, o / 2, o.wrapping_mul(7));
            let mut buf = BytesMut::new();
            write_ipv4(&mut buf, ip);
            assert_eq!(&buf[..], ip.to_string().as_bytes());
        }
    }

    use super::*;
    use proptest::prelude::*;

    fn trusted(nets: &[&str]) -> TrustedProxies {
        TrustedProxies::new(nets.iter().map(|n| n.parse().unwrap()).collect())
    }

    fn info(peer: &str) -> ForwardingInfo<'static> {
        ForwardingInfo {
            peer: peer.parse().unwrap(),
            scheme: "https",
            host: Some("example.com"),
            add_forwarded: false,
            via: None,
            version: Version::HTTP_11,
        }
    }

    fn map(fields: &[(&str, &str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in fields {
            headers.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        headers
    }

    fn one(headers: &HeaderMap, name: &str) -> String {
        let all: Vec<_> = headers.get_all(name).iter().collect();
        assert_eq!(all.len(), 1, "{name}: {all:?}");
        all[0].to_str().unwrap().to_owned()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn trusted_proxies_membership() {
        let list = trusted(&[
            "10.1.0.0/16",
            "2001:db8::/32",
            "10.9.9.9/8",
            "10.1.0.0/16",
            "192.0.2.5/32",
        ]);
        assert_eq!(
            list.nets,
            ["10.0.0.0/8", "192.0.2.5/32", "2001:db8::/32"].map(|n| n.parse::<IpNet>().unwrap())
        );
        assert!(!list.is_empty());
        assert!(list.is_trusted(ip("192.0.2.5")));
        assert!(!list.is_trusted(ip("192.0.2.6")));
        assert!(list.is_trusted(ip("10.2.3.4")));
        assert!(list.is_trusted(ip("::ffff:10.2.3.4")));
        assert!(list.is_trusted(ip("2001:db8::1")));
        assert!(!list.is_trusted(ip("192.0.2.1")));
        assert!(!list.is_trusted(ip("2001:db9::1")));
        assert!(TrustedProxies::default().is_empty());
        assert!(!TrustedProxies::default().is_trusted(ip("127.0.0.1")));
        assert!(trusted(&["::ffff:192.0.2.0/120"]).is_trusted(ip("::ffff:192.0.2.1")));
    }

    #[test]
    fn untrusted_peer_overwrites_spoofed_headers() {
        let mut headers = map(&[
            ("x-forwarded-for", "1.2.3.4"),
            ("x-forwarded-for", "5.6.7.8"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "evil.example"),
        ]);
        let mut info = info("192.0.2.7:5555");
        info.scheme = "http";
        let client = apply_forwarding(&mut headers, &info, &trusted(&["10.0.0.0/8"]));
        assert_eq!(client, ip("192.0.2.7"));
        assert_eq!(one(&headers, "x-forwarded-for"), "192.0.2.7");
        assert_eq!(one(&headers, "x-forwarded-proto"), "http");
        assert_eq!(one(&headers, "x-forwarded-host"), "example.com");
    }

    #[test]
    fn untrusted_peer_without_host_loses_spoofed_forwarded_host() {
        let mut headers = map(&[("x-forwarded-host", "evil.example")]);
        let mut info = info("192.0.2.7:5555");
        info.host = None;
        apply_forwarding(&mut headers, &info, &TrustedProxies::default());
        assert!(!headers.contains_key("x-forwarded-host"));
    }

    #[test]
    fn trusted_peer_appends_and_keeps() {
        let mut headers = map(&[
            ("x-forwarded-for", "203.0.113.9"),
            ("x-forwarded-for", "10.0.0.3"),
            ("x-forwarded-proto", "http"),
            ("x-forwarded-host", "original.example"),
        ]);
        let client = apply_forwarding(&mut headers, &info("10.0.0.2:1"), &trusted(&["10.0.0.0/8"]));
        assert_eq!(client, ip("203.0.113.9"));
        assert_eq!(
            one(&headers, "x-forwarded-for"),
            "203.0.113.9, 10.0.0.3, 10.0.0.2"
        );
        assert_eq!(one(&headers, "x-forwarded-proto"), "http");
        assert_eq!(one(&headers, "x-forwarded-host"), "original.example");
    }

    #[test]
    fn trusted_peer_without_incoming_headers_sets_them() {
        let mut headers = HeaderMap::new();
        let client = apply_forwarding(&mut headers, &info("10.0.0.2:1"), &trusted(&["10.0.0.0/8"]));
        assert_eq!(client, ip("10.0.0.2"));
        assert_eq!(one(&headers, "x-forwarded-for"), "10.0.0.2");
        assert_eq!(one(&headers, "x-forwarded-proto"), "https");
        assert_eq!(one(&headers, "x-forwarded-host"), "example.com");
    }

    #[test]
    fn ipv6_and_mapped_peers() {
        let mut headers = map(&[("x-forwarded-for", "2001:db8:cafe::17")]);
        let client = apply_forwarding(
            &mut headers,
            &info("[2001:db8::1]:443"),
            &trusted(&["2001:db8::/64"]),
        );
        assert_eq!(client, ip("2001:db8:cafe::17"));
        assert_eq!(
            one(&headers, "x-forwarded-for"),
            "2001:db8:cafe::17, 2001:db8::1"
        );

        let mut headers = HeaderMap::new();
        let client = apply_forwarding(
            &mut headers,
            &info("[::ffff:192.0.2.1]:80"),
            &TrustedProxies::default(),
        );
        assert_eq!(client, ip("192.0.2.1"));
        assert_eq!(one(&headers, "x-forwarded-for"), "192.0.2.1");
    }

    #[test]
    fn client_ip_walks_right_to_left_over_trusted_hops() {
        let list = trusted(&["10.0.0.0/8", "2001:db8::/32"]);
        let cases = [
            // (xff lines, expected client)
            (
                vec!["198.51.100.1, 203.0.113.5, 10.0.0.9, 10.0.0.8"],
                "203.0.113.5",
            ),
            (
                vec!["198.51.100.1, 203.0.113.5", "10.0.0.9", "[2001:db8::5]:443"],
                "203.0.113.5",
            ),
            (vec!["10.0.0.7, 10.0.0.8"], "10.0.0.7"),
            (vec!["  203.0.113.5:4711 ,, 10.0.0.8 "], "203.0.113.5"),
            (vec!["\"[2001:db9::1]:80\", 10.0.0.8"], "2001:db9::1"),
            (vec!["::ffff:203.0.113.5"], "203.0.113.5"),
            // Garbage stops the walk at the last good (trusted) address to its right.
            (vec!["203.0.113.5, unknown, 10.0.0.8"], "10.0.0.8"),
            (vec!["203.0.113.5, 10.0.0.7, _hidden"], "10.0.0.1"),
            (vec!["203.0.113.5, fe80::1%eth0"], "10.0.0.1"),
            (vec!["1.2.3.4.5"], "10.0.0.1"),
            (vec!["[2001:db8::1"], "10.0.0.1"),
            (vec!["[2001:db8::1]x"], "10.0.0.1"),
            (vec!["1.2.3.4:99999999"], "10.0.0.1"),
            (vec![""], "10.0.0.1"),
        ];
        for (lines, expected) in cases {
            let mut headers = HeaderMap::new();
            for line in &lines {
                headers.append(X_FORWARDED_FOR, HeaderValue::from_str(line).unwrap());
            }
            let client = apply_forwarding(&mut headers, &info("10.0.0.1:1"), &list);
            assert_eq!(client, ip(expected), "{lines:?}");
        }
    }

    #[test]
    fn forwarded_element_forms() {
        let mut headers = HeaderMap::new();
        let mut i = info("192.0.2.60:1");
        i.add_forwarded = true;
        i.scheme = "http";
        apply_forwarding(&mut headers, &i, &TrustedProxies::default());
        assert_eq!(
            one(&headers, "forwarded"),
            "for=192.0.2.60;proto=http;host=example.com"
        );

        let mut headers = HeaderMap::new();
        let mut i = info("[2001:db8:cafe::17]:4711");
        i.add_forwarded = true;
        i.host = Some("example.com:8443");
        apply_forwarding(&mut headers, &i, &TrustedProxies::default());
        assert_eq!(
            one(&headers, "forwarded"),
            "for=\"[2001:db8:cafe::17]\";proto=https;host=\"example.com:8443\""
        );

        let mut headers = HeaderMap::new();
        i.host = Some("we\"ird\\host");
        apply_forwarding(&mut headers, &i, &TrustedProxies::default());
        assert!(one(&headers, "forwarded").ends_with(";host=\"we\\\"ird\\\\host\""));

        let mut headers = HeaderMap::new();
        i.host = None;
        apply_forwarding(&mut headers, &i, &TrustedProxies::default());
        assert_eq!(
            one(&headers, "forwarded"),
            "for=\"[2001:db8:cafe::17]\";proto=https"
        );
    }

    #[test]
    fn forwarded_trust_rule() {
        let list = trusted(&["10.0.0.0/8"]);
        let mut i = info("10.0.0.2:1");
        i.add_forwarded = true;
        let mut headers = map(&[
            ("forwarded", "for=203.0.113.9;proto=http"),
            ("forwarded", "for=10.0.0.3"),
        ]);
        apply_forwarding(&mut headers, &i, &list);
        assert_eq!(
            one(&headers, "forwarded"),
            "for=203.0.113.9;proto=http, for=10.0.0.3, for=10.0.0.2;proto=https;host=example.com"
        );

        let mut i = info("192.0.2.1:1");
        i.add_forwarded = true;
        let mut headers = map(&[("forwarded", "for=1.1.1.1")]);
        apply_forwarding(&mut headers, &i, &list);
        assert_eq!(
            one(&headers, "forwarded"),
            "for=192.0.2.1;proto=https;host=example.com"
        );

        // Opt-in off: an incoming Forwarded is left as it is, even from an untrusted peer.
        let mut headers = map(&[("forwarded", "for=1.1.1.1")]);
        apply_forwarding(&mut headers, &info("192.0.2.1:1"), &list);
        assert_eq!(one(&headers, "forwarded"), "for=1.1.1.1");
    }

    #[test]
    fn via_is_appended_with_the_version() {
        let mut headers = map(&[
            ("via", "1.0 fred"),
            ("via", "1.1 p.example.net (Apache/1.1)"),
        ]);
        let mut i = info("192.0.2.1:1");
        i.via = Some("palisade");
        apply_forwarding(&mut headers, &i, &TrustedProxies::default());
        assert_eq!(
            one(&headers, "via"),
            "1.0 fred, 1.1 p.example.net (Apache/1.1), 1.1 palisade"
        );

        for (version, expected) in [
            (Version::HTTP_09, "0.9 edge-1"),
            (Version::HTTP_10, "1.0 edge-1"),
            (Version::HTTP_11, "1.1 edge-1"),
            (Version::HTTP_2, "2 edge-1"),
            (Version::HTTP_3, "3 edge-1"),
        ] {
            let mut headers = HeaderMap::new();
            append_via(&mut headers, version, "edge-1");
            assert_eq!(one(&headers, "via"), expected);
        }

        let mut headers = HeaderMap::new();
        apply_forwarding(
            &mut headers,
            &info("192.0.2.1:1"),
            &TrustedProxies::default(),
        );
        assert!(!headers.contains_key("via"));
    }

    #[test]
    fn invalid_pseudonym_is_not_emitted() {
        for bad in ["", "a b", "a,b", "a\nb", "é"] {
            assert!(!is_valid_pseudonym(bad), "{bad:?}");
            let mut headers = map(&[("via", "1.1 other")]);
            append_via(&mut headers, Version::HTTP_11, bad);
            assert_eq!(one(&headers, "via"), "1.1 other");
        }
        assert!(is_valid_pseudonym("edge-1.example:8080"));
        assert!(is_valid_pseudonym("[2001:db8::1]:80"));
    }

    #[test]
    fn via_loop_detection() {
        let cases = [
            ("1.1 palisade", true),
            ("1.0 fred, 1.1 PaliSade", true),
            ("1.0 fred,2\tpalisade (edge)", true),
            ("HTTP/1.1 palisade", true),
            ("1.1 palisade(x)", true),
            ("1.1 palisade-2", false),
            ("1.1 fred (via palisade)", false),
            ("1.1 fred (x, 1.1 palisade y)", false),
            ("1.1 fred (a (b, 1.1 palisade) \\) , 1.1 palisade c)", false),
            ("1.1 fred (unterminated, 1.1 palisade", false),
            ("palisade", false),
            ("", false),
        ];
        for (via, expected) in cases {
            let headers = map(&[("via", via)]);
            assert_eq!(via_contains(&headers, "palisade"), expected, "{via:?}");
        }
        let headers = map(&[("via", "1.0 fred"), ("via", "1.1 palisade")]);
        assert!(via_contains(&headers, "palisade"));
        assert!(!via_contains(&headers, ""));
        assert!(!via_contains(&HeaderMap::new(), "palisade"));
    }

    #[test]
    fn appended_via_is_found_again() {
        let mut headers = map(&[("via", "1.0 fred (a, b)")]);
        append_via(&mut headers, Version::HTTP_2, "edge-1");
        assert!(via_contains(&headers, "edge-1"));
        assert!(via_contains(&headers, "EDGE-1"));
    }

    /// A small RFC 7239 parser for the round-trip test: `for` of the last element, unquoted and
    /// unbracketed.
    fn parse_forwarded_for(value: &str) -> Option<IpAddr> {
        let mut elements = Vec::new();
        let (mut current, mut in_quotes, mut escaped) = (String::new(), false, false);
        for c in value.chars() {
            match c {
                _ if escaped => {
                    current.push(c);
                    escaped = false;
                }
                '\\' if in_quotes => {
                    current.push(c);
                    escaped = true;
                }
                '"' => {
                    current.push(c);
                    in_quotes = !in_quotes;
                }
                ',' if !in_quotes => elements.push(std::mem::take(&mut current)),
                _ => current.push(c),
            }
        }
        elements.push(current);
        let last = elements.last()?;
        for pair in last.split(';') {
            let (name, value) = pair.trim().split_once('=')?;
            if !name.eq_ignore_ascii_case("for") {
                continue;
            }
            let value = match value.strip_prefix('"') {
                Some(quoted) => quoted
                    .strip_suffix('"')?
                    .replace("\\\"", "\"")
                    .replace("\\\\", "\\"),
                None => value.to_owned(),
            };
            return match value.strip_prefix('[') {
                Some(v6) => v6
                    .strip_suffix(']')?
                    .parse::<Ipv6Addr>()
                    .ok()
                    .map(IpAddr::V6),
                None => value.parse::<Ipv4Addr>().ok().map(IpAddr::V4),
            };
        }
        None
    }

    proptest! {
        #[test]
        fn xff_parsing_never_panics(lines in proptest::collection::vec(any::<Vec<u8>>(), 0..4), peer_trusted in any::<bool>()) {
            let mut headers = HeaderMap::new();
            for line in &lines {
                if let Ok(value) = HeaderValue::from_bytes(line) {
                    headers.append(X_FORWARDED_FOR, value);
                }
            }
            let list = if peer_trusted { trusted(&["0.0.0.0/0", "::/0"]) } else { TrustedProxies::default() };
            let client = apply_forwarding(&mut headers, &info("10.0.0.1:1"), &list);
            prop_assert_eq!(headers.get_all(X_FORWARDED_FOR).iter().count(), 1);
            if !peer_trusted {
                prop_assert_eq!(client, ip("10.0.0.1"));
            }
        }

        #[test]
        fn xff_entry_parsing_never_panics(entry in "\\PC{0,60}") {
            let _ = parse_xff_entry(entry.as_bytes());
        }

        #[test]
        fn xff_entry_round_trips(addr in any::<IpAddr>(), port in proptest::option::of(any::<u16>())) {
            let text = match (addr, port) {
                (_, None) => addr.to_string(),
                (IpAddr::V4(v4), Some(p)) => format!("{v4}:{p}"),
                (IpAddr::V6(v6), Some(p)) => format!("[{v6}]:{p}"),
            };
            prop_assert_eq!(parse_xff_entry(text.as_bytes()), Some(addr.to_canonical()));
        }

        #[test]
        fn forwarded_element_round_trips(addr in any::<IpAddr>(), host in "[ -~]{0,20}", existing in proptest::option::of("for=[0-9.]{1,15}")) {
            let mut headers = HeaderMap::new();
            if let Some(existing) = &existing {
                headers.insert(header::FORWARDED, HeaderValue::from_str(existing).unwrap());
            }
            let i = ForwardingInfo {
                peer: SocketAddr::new(addr, 1234),
                scheme: "https",
                host: Some(&host),
                add_forwarded: true,
                via: None,
                version: Version::HTTP_11,
            };
            apply_forwarding(&mut headers, &i, &trusted(&["0.0.0.0/0", "::/0"]));
            let value = one(&headers, "forwarded");
            prop_assert_eq!(parse_forwarded_for(&value), Some(addr.to_canonical()));
        }
    }
}
