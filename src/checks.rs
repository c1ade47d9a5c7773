//! The request checks that come before routing: what hyper lets through but a proxy must refuse
//! (bad-inputs.md rows 1–19), so that nothing ambiguous is ever forwarded.
//!
//! It owns the request-target form (origin or absolute form only; `*` only for OPTIONS; no CONNECT
//! in reverse-proxy mode), method length, `Transfer-Encoding` codings, the Host field and the URI
//! length. It reads the request and changes nothing.

use http::{Method, Request, Version, header};

use crate::error::ProxyError;

/// The longest method name we forward: every registered method is shorter; longer is an attack or a
/// bug (RFC 9112 §3: 501 for a method we do not implement).
const MAX_METHOD_LEN: usize = 32;

/// Checks the request and returns its host (`:authority` for HTTP/2, else the single `Host`).
pub fn check<B>(req: &Request<B>, max_uri_bytes: usize) -> Result<Option<&str>, ProxyError> {
    if req.method().as_str().len() > MAX_METHOD_LEN {
        return Err(ProxyError::NotImplemented("method not implemented"));
    }
    let uri = req.uri();
    if req.method() == Method::CONNECT {
        // Tunnelling is the forward proxy's job; a reverse proxy refuses it whole.
        return if uri.authority().is_some_and(|a| a.port().is_some())
            && uri.path_and_query().is_none()
        {
            Err(ProxyError::MethodNotAllowed)
        } else {
            Err(ProxyError::BadRequest("invalid CONNECT target"))
        };
    }
    let origin_form =
        uri.scheme().is_none() && uri.authority().is_none() && uri.path().starts_with('/');
    let absolute_form = uri.scheme().is_some() && uri.authority().is_some();
    if uri == "*" {
        if req.method() != Method::OPTIONS {
            return Err(ProxyError::BadRequest(
                "asterisk-form target is only for OPTIONS",
            ));
        }
    } else if !origin_form && !absolute_form {
        return Err(ProxyError::BadRequest("invalid request target"));
    }
    if uri.path_and_query().map_or(0, |p| p.as_str().len()) > max_uri_bytes {
        return Err(ProxyError::UriTooLong);
    }
    check_transfer_encoding(req)?;
    host(req)
}

/// Only `chunked`, once, is a framing we forward; hyper already refused a last coding other than
/// chunked. `chunked, chunked` is ambiguous (400); another coding is one we do not implement (501).
fn check_transfer_encoding<B>(req: &Request<B>) -> Result<(), ProxyError> {
    let mut chunked = 0usize;
    for value in req.headers().get_all(header::TRANSFER_ENCODING) {
        let value = value
            .to_str()
            .map_err(|_| ProxyError::BadRequest("invalid Transfer-Encoding"))?;
        for coding in value.split(',').map(str::trim) {
            if coding.eq_ignore_ascii_case("chunked") {
                chunked += 1;
            } else if coding.is_empty() {
                return Err(ProxyError::BadRequest("invalid Transfer-Encoding"));
            } else {
                return Err(ProxyError::NotImplemented(
                    "transfer coding not implemented",
                ));
            }
        }
    }
    if chunked > 1 {
        return Err(ProxyError::BadRequest("chunked applied more than once"));
    }
    Ok(())
}

/// The request's host: `:authority` for HTTP/2 (it wins over `Host`, RFC 9113 §8.3.1), the single
/// `Host` field for HTTP/1.1 (missing, repeated or invalid is a 400, RFC 9112 §3.2).
pub fn host<B>(req: &Request<B>) -> Result<Option<&str>, ProxyError> {
    if req.version() == Version::HTTP_2
        && let Some(a) = req.uri().authority()
    {
        return Ok(Some(a.as_str()));
    }
    let mut hosts = req.headers().get_all(header::HOST).iter();
    let first = hosts.next();
    if hosts.next().is_some() {
        return Err(ProxyError::BadRequest("more than one Host header"));
    }
    match first {
        Some(h) => {
            let h = h
                .to_str()
                .map_err(|_| ProxyError::BadRequest("invalid Host header"))?;
            if h.is_empty() || h.parse::<http::uri::Authority>().is_err() || h.contains('@') {
                return Err(ProxyError::BadRequest("invalid Host header"));
            }
            Ok(Some(h))
        }
        None if req.version() == Version::HTTP_11 => match req.uri().authority() {
            // Absolute-form request-target carries the host (RFC 9112 §3.2.2).
            Some(a) => Ok(Some(a.as_str())),
            None => Err(ProxyError::BadRequest("HTTP/1.1 request without Host")),
        },
        None => Ok(req.uri().authority().map(http::uri::Authority::as_str)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(method: &str, target: &str, headers: &[(&str, &str)]) -> Request<()> {
        let mut b = Request::builder().method(method).uri(target);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap()
    }

    fn status(r: Result<Option<&str>, ProxyError>) -> u16 {
        r.map_or_else(|e| e.status().as_u16(), |_| 200)
    }

    #[test]
    fn request_target_forms() {
        assert_eq!(
            status(check(&req("GET", "/a?b", &[("host", "x")]), 8192)),
            200
        );
        assert_eq!(
            status(check(&req("GET", "http://x/a", &[("host", "x")]), 8192)),
            200
        );
        assert_eq!(
            status(check(&req("OPTIONS", "*", &[("host", "x")]), 8192)),
            200
        );
        assert_eq!(status(check(&req("GET", "*", &[("host", "x")]), 8192)), 400);
        assert_eq!(
            status(check(&req("GET", "admin", &[("host", "x")]), 8192)),
            400
        );
        assert_eq!(
            status(check(
                &req("CONNECT", "a.test:443", &[("host", "a.test:443")]),
                8192
            )),
            405
        );
        assert_eq!(
            status(check(
                &req("CONNECT", "a.test", &[("host", "a.test")]),
                8192
            )),
            400
        );
        assert_eq!(
            status(check(&req("CONNECT", "/", &[("host", "x")]), 8192)),
            400
        );
    }

    #[test]
    fn long_methods_and_uris() {
        let m = "M".repeat(100);
        assert_eq!(status(check(&req(&m, "/", &[("host", "x")]), 8192)), 501);
        assert_eq!(
            status(check(&req("PROPFIND", "/", &[("host", "x")]), 8192)),
            200
        );
        let long = format!("/{}", "a".repeat(100));
        assert_eq!(status(check(&req("GET", &long, &[("host", "x")]), 64)), 414);
    }

    #[test]
    fn transfer_codings() {
        let te = |v: &str| {
            status(check(
                &req("POST", "/", &[("host", "x"), ("transfer-encoding", v)]),
                8192,
            ))
        };
        assert_eq!(te("chunked"), 200);
        assert_eq!(te("Chunked"), 200);
        assert_eq!(te("chunked, chunked"), 400);
        assert_eq!(te("gzip, chunked"), 501);
        assert_eq!(te(", chunked"), 400);
    }

    #[test]
    fn host_rules() {
        assert_eq!(status(check(&req("GET", "/", &[]), 8192)), 400);
        assert_eq!(
            status(check(
                &req("GET", "/", &[("host", "a"), ("host", "b")]),
                8192
            )),
            400
        );
        assert_eq!(
            status(check(&req("GET", "/", &[("host", "a b")]), 8192)),
            400
        );
        assert_eq!(
            status(check(&req("GET", "/", &[("host", "u@a")]), 8192)),
            400
        );
        let h2 = Request::builder()
            .version(Version::HTTP_2)
            .uri("https://a.example/x")
            .header("host", "b.example")
            .body(())
            .unwrap();
        assert_eq!(host(&h2).unwrap(), Some("a.example"), ":authority wins");
    }
}
