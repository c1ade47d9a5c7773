//! HTTP/1 request framing and parsing on raw sockets (bad-inputs rows 1–28, 29, 32, 63): each bad
//! input gets the status the table asks for, the connection's fate is checked, the upstream never
//! sees an ambiguous or rejected request, and the proxy keeps serving other clients.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::{Duration, Instant};

use support::{
    Proxy, STEP, Upstream,
    raw::{Fate, RawConn, RawResponse},
};

/// Short limits so that every limit is cheap to cross.
async fn proxy() -> (Proxy, Upstream) {
    let up = Upstream::start("up").await;
    let proxy = Proxy::start(&format!(
        r#"
[listeners.web]
header_read_timeout = "500ms"
idle_timeout = "400ms"
max_uri_bytes = 64
max_header_bytes = 8192
max_headers = 20

{}"#,
        support::one_route(&[up.addr()])
    ))
    .await;
    (proxy, up)
}

/// A fresh client still gets a normal answer.
async fn assert_still_serving(proxy: &Proxy) {
    let (r, _) = support::raw::exchange(
        proxy.addr(),
        b"GET /still-serving HTTP/1.1\r\nhost: a.test\r\n\r\n",
    )
    .await;
    assert_eq!(r.status, 200, "the proxy should keep serving other clients");
}

/// Sends `bytes` on a fresh connection; returns the response (if any) and the connection.
async fn send(proxy: &Proxy, bytes: &[u8]) -> (Result<RawResponse, String>, RawConn) {
    let mut c = RawConn::connect(proxy.addr()).await;
    c.send_lossy(bytes).await;
    let r = match tokio::time::timeout(STEP, c.try_read_response("GET")).await {
        Ok(r) => r,
        Err(_) => Err(format!("no response within {STEP:?}")),
    };
    (r, c)
}

/// Shows a request in a failure message (cut short: some are 70 kB).
fn shown(bytes: &[u8]) -> String {
    let mut s = format!(
        "{:?}",
        String::from_utf8_lossy(&bytes[..bytes.len().min(120)])
    );
    if bytes.len() > 120 {
        s.push_str(&format!("… ({} bytes)", bytes.len()));
    }
    s
}

/// Sends `bad` on a fresh connection and checks: one of `statuses`, the connection then closed
/// (when `must_close`), nothing reached the upstream, and the proxy still serves others.
async fn check_rejected(
    proxy: &Proxy,
    up: &Upstream,
    bad: &[u8],
    statuses: &[u16],
    must_close: bool,
) -> Result<(), String> {
    let before = up.hits();
    let (r, mut c) = send(proxy, bad).await;
    let r = r.map_err(|e| format!("{}: no response: {e}", shown(bad)))?;
    if !statuses.contains(&r.status) {
        let text = r.text();
        return Err(format!(
            "{}: got {} (expected one of {statuses:?}): {}",
            shown(bad),
            r.status,
            &text[..text.len().min(200)]
        ));
    }
    if must_close {
        let fate = c.fate(STEP).await;
        if fate != Fate::Closed {
            return Err(format!("{}: connection not closed ({fate:?})", shown(bad)));
        }
    }
    if up.hits() != before {
        return Err(format!("{}: reached the upstream", shown(bad)));
    }
    assert_still_serving(proxy).await;
    Ok(())
}

/// Every input is refused with one of `statuses` and the connection is closed.
async fn rejects_and_closes(proxy: &Proxy, up: &Upstream, bad: &[u8], statuses: &[u16]) {
    if let Err(e) = check_rejected(proxy, up, bad, statuses, true).await {
        panic!("{e}");
    }
}

/// Every input of `cases` is refused with one of `statuses` (and closed when `must_close`); all
/// failures are reported together.
async fn all_rejected(
    proxy: &Proxy,
    up: &Upstream,
    cases: &[&[u8]],
    statuses: &[u16],
    must_close: bool,
) {
    let mut failures = Vec::new();
    for bad in cases {
        if let Err(e) = check_rejected(proxy, up, bad, statuses, must_close).await {
            failures.push(e);
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} inputs mishandled:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

/// Like [`rejects_and_closes`] without a requirement on the connection's fate.
async fn rejects(proxy: &Proxy, up: &Upstream, bad: &[u8], statuses: &[u16]) {
    if let Err(e) = check_rejected(proxy, up, bad, statuses, false).await {
        panic!("{e}");
    }
}

// Row 1.
#[tokio::test]
async fn malformed_request_lines_are_400_and_close() {
    let (proxy, up) = proxy().await;
    all_rejected(
        &proxy,
        &up,
        &[
            b"GET\r\n\r\n".as_slice(),
            b"GET /\r\nhost: a.test\r\n\r\n",
            b"GET / HTTP/1.1 extra\r\nhost: a.test\r\n\r\n",
            b"G(T / HTTP/1.1\r\nhost: a.test\r\n\r\n",
            b"GET /a\x01b HTTP/1.1\r\nhost: a.test\r\n\r\n",
            b"GET /a\x7fb HTTP/1.1\r\nhost: a.test\r\n\r\n",
            b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03\r\n\r\n",
        ],
        &[400],
        true,
    )
    .await;
}

// Row 2.
#[tokio::test]
async fn invalid_request_targets_are_400() {
    let (proxy, up) = proxy().await;
    all_rejected(
        &proxy,
        &up,
        &[
            b"GET admin HTTP/1.1\r\nhost: a.test\r\n\r\n".as_slice(),
            b"GET * HTTP/1.1\r\nhost: a.test\r\n\r\n",
            b"OPTIONS */x HTTP/1.1\r\nhost: a.test\r\n\r\n",
            b"CONNECT / HTTP/1.1\r\nhost: a.test\r\n\r\n",
            b"CONNECT a.test HTTP/1.1\r\nhost: a.test\r\n\r\n",
        ],
        &[400],
        false,
    )
    .await;
}

// Row 3.
#[tokio::test]
async fn unknown_http_versions_are_refused() {
    let (proxy, up) = proxy().await;
    all_rejected(
        &proxy,
        &up,
        &[
            b"GET / HTTP/1.2\r\nhost: a.test\r\n\r\n".as_slice(),
            b"GET / HTTP/2.0\r\nhost: a.test\r\n\r\n",
            b"GET / HTTP/3.0\r\nhost: a.test\r\n\r\n",
            b"GET / HTTX/1.1\r\nhost: a.test\r\n\r\n",
        ],
        &[400, 505],
        true,
    )
    .await;
}

// Row 4.
#[tokio::test]
async fn absurdly_long_method_is_501() {
    let (proxy, up) = proxy().await;
    let mut bad = "M".repeat(100).into_bytes();
    bad.extend_from_slice(b" / HTTP/1.1\r\nhost: a.test\r\n\r\n");
    rejects(&proxy, &up, &bad, &[501]).await;
}

// Row 5.
#[tokio::test]
async fn request_target_longer_than_max_uri_bytes_is_414() {
    let (proxy, up) = proxy().await;
    let long = format!("GET /{} HTTP/1.1\r\nhost: a.test\r\n\r\n", "a".repeat(100));
    rejects(&proxy, &up, long.as_bytes(), &[414]).await;
    // At the limit it is fine.
    let ok = format!("GET /{} HTTP/1.1\r\nhost: a.test\r\n\r\n", "a".repeat(63));
    let (r, _) = send(&proxy, ok.as_bytes()).await;
    assert_eq!(r.unwrap().status, 200);
}

// Row 6.
#[tokio::test]
async fn header_section_over_max_header_bytes_is_431_and_closes() {
    let (proxy, up) = proxy().await;
    let many = format!(
        "GET / HTTP/1.1\r\nhost: a.test\r\n{}\r\n",
        (0..10)
            .map(|i| format!("x-h{i}: {}\r\n", "v".repeat(1000)))
            .collect::<String>()
    );
    rejects_and_closes(&proxy, &up, many.as_bytes(), &[431]).await;
    let one_big = format!(
        "GET / HTTP/1.1\r\nhost: a.test\r\nx-big: {}\r\n\r\n",
        "v".repeat(9000)
    );
    rejects_and_closes(&proxy, &up, one_big.as_bytes(), &[431]).await;
}

// Row 6.
#[tokio::test]
async fn more_fields_than_max_headers_is_431_and_closes() {
    let (proxy, up) = proxy().await;
    let many = format!(
        "GET / HTTP/1.1\r\nhost: a.test\r\n{}\r\n",
        (0..30)
            .map(|i| format!("x-h{i}: v\r\n"))
            .collect::<String>()
    );
    rejects_and_closes(&proxy, &up, many.as_bytes(), &[431]).await;
    let few = format!(
        "GET / HTTP/1.1\r\nhost: a.test\r\n{}\r\n",
        (0..10)
            .map(|i| format!("x-h{i}: v\r\n"))
            .collect::<String>()
    );
    let (r, _) = send(&proxy, few.as_bytes()).await;
    assert_eq!(r.unwrap().status, 200);
}

// Row 7.
#[tokio::test]
async fn missing_repeated_or_invalid_host_is_400_and_closes() {
    let (proxy, up) = proxy().await;
    all_rejected(
        &proxy,
        &up,
        &[
            b"GET / HTTP/1.1\r\n\r\n".as_slice(),
            b"GET / HTTP/1.1\r\nhost: a.test\r\nhost: b.test\r\n\r\n",
            b"GET / HTTP/1.1\r\nhost: a.test\r\nhost: a.test\r\n\r\n",
            b"GET / HTTP/1.1\r\nhost: a b\r\n\r\n",
            b"GET / HTTP/1.1\r\nhost: user@a.test\r\n\r\n",
            b"GET / HTTP/1.1\r\nhost:\r\n\r\n",
        ],
        &[400],
        true,
    )
    .await;
    // HTTP/1.0 needs no Host.
    let (r, _) = send(&proxy, b"GET / HTTP/1.0\r\n\r\n").await;
    assert_eq!(r.unwrap().status, 200);
}

// Row 8.
#[tokio::test]
async fn whitespace_between_field_name_and_colon_is_400_and_closes() {
    let (proxy, up) = proxy().await;
    rejects_and_closes(
        &proxy,
        &up,
        b"POST / HTTP/1.1\r\nhost: a.test\r\ntransfer-encoding : chunked\r\n\r\n0\r\n\r\n",
        &[400],
    )
    .await;
    rejects_and_closes(
        &proxy,
        &up,
        b"GET / HTTP/1.1\r\nhost : a.test\r\n\r\n",
        &[400],
    )
    .await;
}

// Row 9.
#[tokio::test]
async fn obs_fold_is_400_and_closes() {
    let (proxy, up) = proxy().await;
    rejects_and_closes(
        &proxy,
        &up,
        b"GET / HTTP/1.1\r\nhost: a.test\r\nx-folded: one\r\n two\r\n\r\n",
        &[400],
    )
    .await;
    rejects_and_closes(
        &proxy,
        &up,
        b"GET / HTTP/1.1\r\nhost: a.test\r\nx-folded: one\r\n\ttwo\r\n\r\n",
        &[400],
    )
    .await;
}

// Row 10.
#[tokio::test]
async fn bare_cr_in_the_head_is_400_and_closes() {
    let (proxy, up) = proxy().await;
    rejects_and_closes(
        &proxy,
        &up,
        b"GET / HTTP/1.1\r\nhost: a.test\r\nx-a: b\rc\r\n\r\n",
        &[400],
    )
    .await;
    rejects_and_closes(
        &proxy,
        &up,
        b"GET / HTTP/1.1\r\nhost: a.test\rx-a: b\r\n\r\n",
        &[400],
    )
    .await;
}

// Row 11: allowed, but never forwarded as received.
#[tokio::test]
async fn bare_lf_line_endings_are_rejected_or_normalised() {
    let (proxy, up) = proxy().await;
    let (r, _) = send(&proxy, b"GET /lf HTTP/1.1\nhost: a.test\nx-a: b\n\n").await;
    match r.unwrap().status {
        400 => assert_eq!(up.hits(), 0),
        200 => {
            let head = up.last().raw_head;
            let bare_lf = head
                .iter()
                .enumerate()
                .any(|(i, b)| *b == b'\n' && (i == 0 || head[i - 1] != b'\r'));
            assert!(
                !bare_lf,
                "bare LF forwarded: {:?}",
                String::from_utf8_lossy(&head)
            );
        }
        s => panic!("unexpected {s}"),
    }
    assert_still_serving(&proxy).await;
}

// Row 12.
#[tokio::test]
async fn whitespace_preceded_line_before_the_first_field_is_rejected() {
    let (proxy, up) = proxy().await;
    rejects_and_closes(
        &proxy,
        &up,
        b"GET / HTTP/1.1\r\n x-sneaky: 1\r\nhost: a.test\r\n\r\n",
        &[400],
    )
    .await;
}

// Row 13.
#[tokio::test]
async fn control_bytes_in_field_values_are_rejected() {
    let (proxy, up) = proxy().await;
    all_rejected(
        &proxy,
        &up,
        &[
            b"GET / HTTP/1.1\r\nhost: a.test\r\nx-a: b\0c\r\n\r\n".as_slice(),
            b"GET / HTTP/1.1\r\nhost: a.test\r\nx-a: b\x01c\r\n\r\n",
            b"GET / HTTP/1.1\r\nhost: a.test\r\nx-a: b\x1bc\r\n\r\n",
            b"GET / HTTP/1.1\r\nhost: a.test\r\nx-a: b\x7fc\r\n\r\n",
        ],
        &[400],
        true,
    )
    .await;
}

// Row 14: processed by TE with CL dropped (or refused); never both; the connection then closes,
// so bytes after the body are never read as another request.
#[tokio::test]
async fn transfer_encoding_with_content_length_is_never_forwarded_ambiguously() {
    let (proxy, up) = proxy().await;
    let (r, mut c) = send(
        &proxy,
        b"POST /tecl HTTP/1.1\r\nhost: a.test\r\ncontent-length: 4\r\ntransfer-encoding: chunked\r\n\r\n\
5\r\nhello\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nhost: a.test\r\n\r\n",
    )
    .await;
    let r = r.unwrap();
    assert!([200, 400].contains(&r.status), "{}", r.status);
    c.expect_closed().await;
    for seen in up.seen() {
        assert_ne!(
            seen.target, "/smuggled",
            "a smuggled request reached the upstream"
        );
        assert!(
            !(seen.chunked && seen.content_length.is_some()),
            "the upstream got both framings: {:?}",
            seen.headers
        );
        assert_eq!(seen.body, b"hello");
    }
    assert_still_serving(&proxy).await;
}

// Row 15.
#[tokio::test]
async fn transfer_encoding_not_ending_in_a_single_chunked_is_400_and_closes() {
    let (proxy, up) = proxy().await;
    let cases: Vec<String> = ["chunked, gzip", "gzip", "gzip, identity"]
        .iter()
        .map(|te| format!(
            "POST / HTTP/1.1\r\nhost: a.test\r\ntransfer-encoding: {te}\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
        ))
        .collect();
    let cases: Vec<&[u8]> = cases.iter().map(|c| c.as_bytes()).collect();
    all_rejected(&proxy, &up, &cases, &[400, 501], true).await;
}

// Row 15: `chunked, chunked` would be decoded once here and perhaps twice upstream.
#[tokio::test]
async fn chunked_applied_twice_is_400_and_closes() {
    let (proxy, up) = proxy().await;
    rejects_and_closes(
        &proxy,
        &up,
        b"POST / HTTP/1.1\r\nhost: a.test\r\ntransfer-encoding: chunked, chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        &[400, 501],
    )
    .await;
}

// Row 16: dropping a coding we do not implement would hand the upstream a body it cannot decode.
#[tokio::test]
async fn transfer_codings_we_do_not_implement_are_refused() {
    let (proxy, up) = proxy().await;
    let cases: Vec<String> = ["gzip, chunked", "x-unknown, chunked"]
        .iter()
        .map(|te| format!(
            "POST / HTTP/1.1\r\nhost: a.test\r\ntransfer-encoding: {te}\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
        ))
        .collect();
    let cases: Vec<&[u8]> = cases.iter().map(|c| c.as_bytes()).collect();
    all_rejected(&proxy, &up, &cases, &[400, 422, 501], true).await;
}

// Row 17.
#[tokio::test]
async fn transfer_encoding_on_http10_is_refused_or_the_connection_closes() {
    let (proxy, up) = proxy().await;
    let (r, mut c) = send(
        &proxy,
        b"POST / HTTP/1.0\r\nhost: a.test\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    )
    .await;
    let status = r.unwrap().status;
    assert!([200, 400].contains(&status), "{status}");
    c.expect_closed().await;
    if status == 200 {
        assert_eq!(up.last().body, b"hello");
    }
    assert_still_serving(&proxy).await;
}

// Row 18.
#[tokio::test]
async fn invalid_content_length_is_400_and_closes() {
    let (proxy, up) = proxy().await;
    let cases: Vec<String> = [
        "content-length: abc",
        "content-length: -5",
        "content-length: +5",
        "content-length: 0x5",
        "content-length: 5 5",
        "content-length: 99999999999999999999999999",
        "content-length: 5, 6",
        "content-length: 5\r\ncontent-length: 6",
    ]
    .iter()
    .map(|cl| format!("POST / HTTP/1.1\r\nhost: a.test\r\n{cl}\r\n\r\nhello!"))
    .collect();
    let cases: Vec<&[u8]> = cases.iter().map(|c| c.as_bytes()).collect();
    all_rejected(&proxy, &up, &cases, &[400], true).await;
}

// Row 18: identical duplicates may be collapsed, but only one length goes upstream.
#[tokio::test]
async fn identical_duplicate_content_lengths_are_collapsed_or_refused() {
    let (proxy, up) = proxy().await;
    let (r, _) = send(
        &proxy,
        b"POST / HTTP/1.1\r\nhost: a.test\r\ncontent-length: 5\r\ncontent-length: 5\r\n\r\nhello",
    )
    .await;
    match r.unwrap().status {
        400 => assert_eq!(up.hits(), 0),
        200 => {
            let seen = up.last();
            assert_eq!(
                seen.all("content-length")
                    .len()
                    .max(usize::from(seen.chunked)),
                1
            );
            assert_eq!(seen.body, b"hello");
        }
        s => panic!("unexpected {s}"),
    }
    assert_still_serving(&proxy).await;
}

// Row 19.
#[tokio::test]
async fn obfuscated_transfer_encoding_is_400_and_closes() {
    let (proxy, up) = proxy().await;
    let cases: Vec<Vec<u8>> = [
        b"transfer-encoding:\x0bchunked".as_slice(),
        b"\x01transfer-encoding: chunked",
        b"transfer-encoding\t: chunked",
        b"transfer-encoding: \x0cchunked",
    ]
    .iter()
    .map(|te| {
        let mut bad = b"POST / HTTP/1.1\r\nhost: a.test\r\ncontent-length: 15\r\n".to_vec();
        bad.extend_from_slice(te);
        bad.extend_from_slice(b"\r\n\r\n5\r\nhello\r\n0\r\n\r\n");
        bad
    })
    .collect();
    let cases: Vec<&[u8]> = cases.iter().map(Vec::as_slice).collect();
    all_rejected(&proxy, &up, &cases, &[400], true).await;
}

// Rows 11 and 19: a field hidden behind a bare LF is either refused or read the same way upstream.
#[tokio::test]
async fn transfer_encoding_after_a_bare_lf_is_refused_or_framed_consistently() {
    let (proxy, up) = proxy().await;
    let (r, _c) = send(
        &proxy,
        b"POST / HTTP/1.1\r\nhost: a.test\r\nx: x\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    )
    .await;
    match r.unwrap().status {
        400 => assert_eq!(up.hits(), 0),
        200 => {
            let seen = up.last();
            assert_eq!(seen.body, b"hello");
            assert!(!(seen.chunked && seen.content_length.is_some()));
        }
        s => panic!("unexpected {s}"),
    }
    assert_still_serving(&proxy).await;
}

// Row 20.
#[tokio::test]
async fn invalid_chunk_sizes_are_400_and_close() {
    let (proxy, up) = proxy().await;
    let cases: Vec<String> = ["zz", "1FFFFFFFFFFFFFFFF", "-1", "0x5"]
        .iter()
        .map(|size| format!(
            "POST / HTTP/1.1\r\nhost: a.test\r\ntransfer-encoding: chunked\r\n\r\n{size}\r\nhello\r\n0\r\n\r\n"
        ))
        .collect();
    let cases: Vec<&[u8]> = cases.iter().map(|c| c.as_bytes()).collect();
    all_rejected(&proxy, &up, &cases, &[400], true).await;
}

// Row 21: never resynchronise on the bytes after a broken chunk.
#[tokio::test]
async fn chunk_data_not_matching_its_size_is_400_and_never_resynchronised() {
    let (proxy, up) = proxy().await;
    let cases: Vec<String> = [
        "5\r\nhelloEXTRA\r\n0\r\n\r\n",
        "5\r\nhel\r\n0\r\n\r\n",
        "5\nhello\n0\n\n",
        "5\r\nhello0\r\n\r\n",
    ]
        .iter()
        .map(|body| format!(
            "POST / HTTP/1.1\r\nhost: a.test\r\ntransfer-encoding: chunked\r\n\r\n{body}GET /smuggled HTTP/1.1\r\nhost: a.test\r\n\r\n"
        ))
        .collect();
    let cases: Vec<&[u8]> = cases.iter().map(|c| c.as_bytes()).collect();
    all_rejected(&proxy, &up, &cases, &[400], true).await;
    assert!(up.seen().iter().all(|s| s.target != "/smuggled"));
}

// Row 22.
#[tokio::test]
async fn oversized_chunk_extensions_and_trailers_are_refused() {
    let (proxy, up) = proxy().await;
    let ext = format!(
        "POST / HTTP/1.1\r\nhost: a.test\r\ntransfer-encoding: chunked\r\n\r\n5;{}\r\nhello\r\n0\r\n\r\n",
        "e".repeat(70_000)
    );
    rejects_and_closes(&proxy, &up, ext.as_bytes(), &[400, 413, 431]).await;
    let trailers = format!(
        "POST / HTTP/1.1\r\nhost: a.test\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n{}\r\n",
        (0..100)
            .map(|i| format!("x-t{i}: {}\r\n", "t".repeat(1000)))
            .collect::<String>()
    );
    rejects_and_closes(&proxy, &up, trailers.as_bytes(), &[400, 413, 431]).await;
}

// Row 23.
#[tokio::test]
async fn connection_naming_a_framing_field_is_400_and_closes() {
    let (proxy, up) = proxy().await;
    let cases: Vec<String> = [
        "content-length",
        "Transfer-Encoding",
        "host",
        "keep-alive, Content-Length",
    ]
        .iter()
        .map(|named| format!(
            "POST / HTTP/1.1\r\nhost: a.test\r\ncontent-length: 5\r\nconnection: {named}\r\n\r\nhello"
        ))
        .collect();
    let cases: Vec<&[u8]> = cases.iter().map(|c| c.as_bytes()).collect();
    all_rejected(&proxy, &up, &cases, &[400], true).await;
}

// Row 25.
#[tokio::test]
async fn pipelined_requests_are_answered_in_order() {
    let (proxy, up) = proxy().await;
    up.push(support::Mode::Slow(Duration::from_millis(150)));

    let mut c = RawConn::connect(proxy.addr()).await;
    c.send(
        b"GET /1 HTTP/1.1\r\nhost: a.test\r\n\r\nGET /2 HTTP/1.1\r\nhost: a.test\r\n\r\n\
POST /3 HTTP/1.1\r\nhost: a.test\r\ncontent-length: 3\r\n\r\nabcGET /4 HTTP/1.1\r\nhost: a.test\r\n\r\n",
    )
    .await;
    let mut targets = Vec::new();
    for _ in 0..4 {
        let r = c.read_response().await;
        assert_eq!(r.status, 200);
        let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        targets.push(v["target"].as_str().unwrap().to_owned());
    }

    assert_eq!(targets, ["/1", "/2", "/3", "/4"]);
}

// Row 25: after a framing error the message boundary is lost; nothing after it is processed.
#[tokio::test]
async fn request_pipelined_after_a_rejected_one_is_never_processed() {
    let (proxy, up) = proxy().await;
    rejects_and_closes(
        &proxy,
        &up,
        b"GET / HTTP/1.1\r\nhost: a.test\r\nx-folded: one\r\n two\r\n\r\nGET /after HTTP/1.1\r\nhost: a.test\r\n\r\n",
        &[400],
    )
    .await;
    rejects_and_closes(
        &proxy,
        &up,
        b"GET / HTTP/1.1\r\nhost: a.test\r\nhost: b.test\r\n\r\nGET /after HTTP/1.1\r\nhost: a.test\r\n\r\n",
        &[400],
    )
    .await;
}

// Row 27.
#[tokio::test]
async fn post_without_a_length_has_an_empty_body_or_gets_411() {
    let (proxy, up) = proxy().await;
    let (r, _) = send(&proxy, b"POST /nolen HTTP/1.1\r\nhost: a.test\r\n\r\n").await;
    match r.unwrap().status {
        411 => assert_eq!(up.hits(), 0),
        200 => assert!(up.last().body.is_empty()),
        s => panic!("unexpected {s}"),
    }
}

// Row 29 (and the header-read deadline of the issue).
#[tokio::test]
async fn slowloris_head_gets_408_and_close_despite_progress() {
    let (proxy, up) = proxy().await;
    let mut c = RawConn::connect(proxy.addr()).await;
    let started = Instant::now();
    c.send(b"GET / HTTP/1.1\r\n").await;
    let mut trickled = Vec::new();
    // One byte every 100 ms: progress, but the whole head would take ~2 s.
    let r = loop {
        tokio::select! {
            r = c.try_read_response("GET") => break r,
            () = tokio::time::sleep(Duration::from_millis(100)) => {
                let next = b"host: a.test\r\nx-slow: 1\r\n\r\n"[trickled.len()..].first().copied();
                if let Some(b) = next {
                    trickled.push(b);
                    c.send_lossy(&[b]).await;
                }
                assert!(started.elapsed() < STEP, "no 408");
            }
        }
    };
    let elapsed = started.elapsed();

    assert_eq!(r.unwrap().status, 408);
    assert!(
        elapsed >= Duration::from_millis(400) && elapsed < Duration::from_secs(2),
        "408 after {elapsed:?} (header_read_timeout is 500ms)"
    );
    c.expect_closed().await;
    assert_eq!(up.hits(), 0);
    assert_still_serving(&proxy).await;
}

// Row 32.
#[tokio::test]
async fn idle_keep_alive_connection_is_closed_quietly_after_idle_timeout() {
    let (proxy, _up) = proxy().await;
    let mut c = RawConn::connect(proxy.addr()).await;
    c.send(b"GET / HTTP/1.1\r\nhost: a.test\r\n\r\n").await;
    assert_eq!(c.read_response().await.status, 200);
    let idle_from = Instant::now();

    let fate = c.fate(STEP).await;
    let idle = idle_from.elapsed();

    assert_eq!(fate, Fate::Closed, "closed without sending anything");
    assert!(
        idle >= Duration::from_millis(300) && idle < Duration::from_secs(3),
        "closed after {idle:?} idle (idle_timeout is 400ms)"
    );
}

// Row 32: a busy connection is not idle.
#[tokio::test]
async fn a_slow_response_is_not_cut_by_the_idle_or_header_timeout() {
    let (proxy, up) = proxy().await;
    up.push(support::Mode::Slow(Duration::from_millis(900)));
    let (r, _) = send(&proxy, b"GET /slow HTTP/1.1\r\nhost: a.test\r\n\r\n").await;
    assert_eq!(r.unwrap().status, 200);
}

// Row 63.
#[tokio::test]
async fn upgrade_to_h2c_is_stripped_and_answered_in_http1() {
    let (proxy, up) = proxy().await;
    let mut c = RawConn::connect(proxy.addr()).await;
    c.send(
        b"GET /up HTTP/1.1\r\nhost: a.test\r\nconnection: Upgrade, HTTP2-Settings\r\nupgrade: h2c\r\n\
http2-settings: AAMAAABkAAQAoAAAAAIAAAAA\r\n\r\n",
    )
    .await;
    let r = c.read_response().await;

    assert_eq!(r.status, 200);
    assert!(!r.has("upgrade"));
    let seen = up.last();
    assert!(!seen.has("upgrade"), "{:?}", seen.headers);
    assert!(!seen.has("http2-settings"), "{:?}", seen.headers);
    if let Some(conn) = seen.header("connection") {
        assert!(!conn.to_ascii_lowercase().contains("upgrade"), "{conn}");
    }
    // Still HTTP/1.1 on this connection.
    c.send(b"GET /again HTTP/1.1\r\nhost: a.test\r\n\r\n").await;
    assert_eq!(c.read_response().await.status, 200);
}
