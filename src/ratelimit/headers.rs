//! The IETF `RateLimit` / `RateLimit-Policy` response headers
//! (draft-ietf-httpapi-ratelimit-headers, structured-field form) and `Retry-After` for refusals.
//!
//! Owns: formatting the three header values. Does not own: header names, deciding when to send
//! them (per policy, on success and/or refusal), or choosing which policy to report when several
//! apply — the integrator does that.
//!
//! Policy names go out as RFC 8941 sf-strings. Names from config are expected to be
//! `[A-Za-z0-9_-]`; any other printable ASCII is escaped as RFC 8941 §3.3.3 says (`"` and `\`
//! get a backslash). Characters an sf-string cannot carry at all (controls, non-ASCII) make
//! [`policy_value`] return `None`, so config compilation can reject the name; [`limit_value`],
//! which runs per request and must not fail, drops such characters instead.
//! Integers are sf-integers, clamped to their 15-digit maximum.

use bytes::Bytes;
use http::HeaderValue;

use super::gcra::Decision;

/// Largest sf-integer (RFC 8941 §3.3.1: at most 15 digits).
const SF_INTEGER_MAX: u64 = 999_999_999_999_999;
const NS_PER_SEC: u64 = 1_000_000_000;

/// `RateLimit-Policy: "<name>";q=<count>;w=<window_secs>`. Built once per policy at config
/// compile time; `None` if `name` has a character no sf-string can carry.
pub fn policy_value(name: &str, count: u32, window_secs: u64) -> Option<HeaderValue> {
    if !name.bytes().all(carriable) {
        return None;
    }
    let mut out = Vec::with_capacity(quoted_len(name) + 2 * 3 + 10 + 15);
    push_quoted(&mut out, name);
    out.extend_from_slice(b";q=");
    push_u64(&mut out, u64::from(count));
    out.extend_from_slice(b";w=");
    push_u64(&mut out, window_secs.min(SF_INTEGER_MAX));
    HeaderValue::from_maybe_shared(Bytes::from(out)).ok()
}

/// `RateLimit: "<name>";r=<remaining>;t=<seconds until the key is back to a full burst, rounded
/// up>`. Per request: one exact-size allocation, no formatting machinery.
pub fn limit_value(name: &str, d: &Decision) -> HeaderValue {
    let r = u64::from(d.remaining);
    let t = d.reset_after_ns.div_ceil(NS_PER_SEC).min(SF_INTEGER_MAX);
    let len = quoted_len(name) + 3 + digits(r) + 3 + digits(t);
    let mut out = Vec::with_capacity(len);
    push_quoted(&mut out, name);
    out.extend_from_slice(b";r=");
    push_u64(&mut out, r);
    out.extend_from_slice(b";t=");
    push_u64(&mut out, t);
    // Every byte written is visible ASCII, so this cannot fail; the fallback keeps it total.
    HeaderValue::from_maybe_shared(Bytes::from(out))
        .unwrap_or_else(|_| HeaderValue::from_static("\"\""))
}

/// `Retry-After: <seconds>`: the decision's `retry_after_ns` rounded up, at least 1 (a client
/// told "0" would retry at once and be refused again).
pub fn retry_after_value(d: &Decision) -> HeaderValue {
    HeaderValue::from(d.retry_after_ns.div_ceil(NS_PER_SEC).max(1))
}

/// Whether an sf-string can carry this byte.
fn carriable(b: u8) -> bool {
    (0x20..=0x7e).contains(&b)
}

/// Bytes `push_quoted` writes for `name`.
fn quoted_len(name: &str) -> usize {
    2 + name
        .bytes()
        .map(|b| match b {
            b'"' | b'\\' => 2,
            b if carriable(b) => 1,
            _ => 0,
        })
        .sum::<usize>()
}

fn push_quoted(out: &mut Vec<u8>, name: &str) {
    out.push(b'"');
    for b in name.bytes() {
        if b == b'"' || b == b'\\' {
            out.push(b'\\');
        }
        if carriable(b) {
            out.push(b);
        }
    }
    out.push(b'"');
}

fn digits(mut n: u64) -> usize {
    let mut d = 1;
    while n >= 10 {
        n /= 10;
        d += 1;
    }
    d
}

fn push_u64(out: &mut Vec<u8>, mut n: u64) {
    let mut buf = [0u8; 20];
    let mut start = buf.len();
    for slot in buf.iter_mut().rev() {
        *slot = b'0' + (n % 10) as u8;
        n /= 10;
        start -= 1;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(buf.get(start..).unwrap_or_default());
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn decision(allowed: bool, remaining: u32, reset_ns: u64, retry_ns: u64) -> Decision {
        Decision {
            allowed,
            remaining,
            reset_after_ns: reset_ns,
            retry_after_ns: retry_ns,
        }
    }

    #[test]
    fn policy_header() {
        let v = policy_value("per-user_1", 100, 60).unwrap();
        assert_eq!(v.to_str().unwrap(), "\"per-user_1\";q=100;w=60");
        let v = policy_value("a", 0, 0).unwrap();
        assert_eq!(v.to_str().unwrap(), "\"a\";q=0;w=0");
        let v = policy_value("x", u32::MAX, u64::MAX).unwrap();
        assert_eq!(v.to_str().unwrap(), "\"x\";q=4294967295;w=999999999999999");
    }

    #[test]
    fn policy_names_are_escaped_or_rejected() {
        let v = policy_value(r#"a"b\c d"#, 1, 1).unwrap();
        assert_eq!(v.to_str().unwrap(), r#""a\"b\\c d";q=1;w=1"#);
        assert!(policy_value("tab\there", 1, 1).is_none());
        assert!(policy_value("café", 1, 1).is_none());
        assert_eq!(
            policy_value("", 1, 1).unwrap().to_str().unwrap(),
            "\"\";q=1;w=1"
        );
    }

    #[test]
    fn limit_header_rounds_reset_up() {
        let cases = [
            (decision(true, 9, 0, 0), "\"api\";r=9;t=0"),
            (decision(true, 0, 1, 0), "\"api\";r=0;t=1"),
            (decision(true, 4, 1_000_000_000, 0), "\"api\";r=4;t=1"),
            (decision(true, 4, 1_000_000_001, 0), "\"api\";r=4;t=2"),
            (decision(false, 0, 59_500_000_000, 1), "\"api\";r=0;t=60"),
            (
                decision(true, u32::MAX, u64::MAX, 0),
                "\"api\";r=4294967295;t=18446744074",
            ),
        ];
        for (d, want) in cases {
            assert_eq!(limit_value("api", &d).to_str().unwrap(), want);
        }
    }

    #[test]
    fn limit_header_escapes_and_drops_uncarriable() {
        let d = decision(true, 1, 2_000_000_000, 0);
        assert_eq!(
            limit_value(r#"q"\"#, &d).to_str().unwrap(),
            r#""q\"\\";r=1;t=2"#
        );
        assert_eq!(limit_value("é\nx", &d).to_str().unwrap(), "\"x\";r=1;t=2");
    }

    #[test]
    fn retry_after_rounds_up_to_at_least_one_second() {
        let cases = [
            (0, "1"),
            (1, "1"),
            (999_999_999, "1"),
            (1_000_000_000, "1"),
            (1_000_000_001, "2"),
            (30_000_000_000, "30"),
        ];
        for (ns, want) in cases {
            let v = retry_after_value(&decision(false, 0, ns, ns));
            assert_eq!(v.to_str().unwrap(), want, "{ns} ns");
        }
    }

    proptest! {
        #[test]
        fn integers_and_lengths_match_std(n in any::<u64>(), name in "[ -~]{0,40}") {
            let mut out = Vec::new();
            push_u64(&mut out, n);
            prop_assert_eq!(String::from_utf8(out).unwrap(), n.to_string());
            prop_assert_eq!(digits(n), n.to_string().len());
            let mut q = Vec::new();
            push_quoted(&mut q, &name);
            prop_assert_eq!(q.len(), quoted_len(&name));
        }
    }
}
