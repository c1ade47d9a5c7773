//! `ProxyError`: every way a request can fail, who caused it, and the one place it becomes a response.
//!
//! Services handed to hyper are infallible: an error that reached hyper would kill the connection with
//! no response. So every failure on the request path is a `ProxyError`, turned into a short response
//! here, with the request id and the reason, and never an internal detail (no backend address).
//! Each variant also names its access-log flag (Envoy's response flags, which operators know).

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Response, StatusCode, header};

use crate::{body::ProxyBody, config::ErrorFormat};

/// Who a failure is attributed to: health and retry logic only ever blame the upstream side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Downstream,
    Upstream,
    Internal,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProxyError {
    #[error("no route matches this request")]
    NoRoute,
    #[error("{0}")]
    BadRequest(&'static str),
    #[error("request target too long")]
    UriTooLong,
    #[error("{0}")]
    NotImplemented(&'static str),
    #[error("method not allowed")]
    MethodNotAllowed,
    #[error("request body timed out")]
    ClientTimeout,
    #[error("request loops through this proxy")]
    Loop,
    #[error("no upstream endpoint available")]
    NoHealthyUpstream,
    #[error("upstream connection refused")]
    ConnectRefused,
    #[error("upstream connect timed out")]
    ConnectTimeout,
    #[error("upstream connect failed")]
    ConnectFailed,
    #[error("upstream TLS handshake failed")]
    UpstreamTls,
    #[error("upstream did not answer in time")]
    UpstreamTimeout,
    #[error("upstream closed the connection before answering")]
    UpstreamReset,
    #[error("upstream sent an invalid response")]
    UpstreamProtocol,
    #[error("upstream refused the stream")]
    RefusedStream,
    #[error("upstream limit reached")]
    Overflow(&'static str),
    #[error("rate limit exceeded")]
    RateLimited(Box<crate::ratelimit::Limited>),
    /// Refused by the overload shedder (the reason is the metric label).
    #[error("overloaded, try again later")]
    Shed(&'static str),
    #[error("forbidden")]
    Forbidden,
    #[error("request body too large")]
    PayloadTooLarge,
    #[error("client went away")]
    ClientAbort,
    #[error("internal error")]
    Internal,
}

impl ProxyError {
    pub fn status(&self) -> StatusCode {
        match self {
            Self::NoRoute => StatusCode::NOT_FOUND,
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::UriTooLong => StatusCode::URI_TOO_LONG,
            Self::NotImplemented(_) => StatusCode::NOT_IMPLEMENTED,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::ClientTimeout => StatusCode::REQUEST_TIMEOUT,
            Self::Loop => StatusCode::LOOP_DETECTED,
            Self::NoHealthyUpstream => StatusCode::SERVICE_UNAVAILABLE,
            Self::ConnectRefused
            | Self::ConnectFailed
            | Self::UpstreamTls
            | Self::UpstreamReset
            | Self::UpstreamProtocol
            | Self::RefusedStream => StatusCode::BAD_GATEWAY,
            // A cap of ours, not the upstream's failure: fail fast, come back later.
            Self::Overflow(_) | Self::Shed(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::RateLimited(_) => StatusCode::TOO_MANY_REQUESTS,
            Self::Forbidden => StatusCode::FORBIDDEN,
            Self::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::ConnectTimeout | Self::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            // Nobody reads it; nginx's 499 is what operators grep logs for.
            Self::ClientAbort => StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST),
            Self::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn side(&self) -> Side {
        match self {
            Self::NoRoute
            | Self::BadRequest(_)
            | Self::UriTooLong
            | Self::NotImplemented(_)
            | Self::MethodNotAllowed
            | Self::ClientTimeout
            | Self::Loop
            | Self::RateLimited(_)
            | Self::Forbidden
            | Self::PayloadTooLarge
            | Self::ClientAbort => Side::Downstream,
            Self::NoHealthyUpstream
            | Self::ConnectRefused
            | Self::ConnectTimeout
            | Self::ConnectFailed
            | Self::UpstreamTls
            | Self::UpstreamTimeout
            | Self::UpstreamReset
            | Self::UpstreamProtocol
            | Self::RefusedStream => Side::Upstream,
            // Our own cap: no endpoint was tried, so none is to blame.
            Self::Internal | Self::Overflow(_) | Self::Shed(_) => Side::Internal,
        }
    }

    /// True when the request provably never reached the upstream application, so another attempt is
    /// safe even for a non-idempotent method.
    pub fn never_sent(&self) -> bool {
        matches!(
            self,
            Self::ConnectRefused | Self::ConnectTimeout | Self::ConnectFailed | Self::UpstreamTls
        )
    }

    /// The access-log flag (Envoy's response flags).
    pub fn flag(&self) -> &'static str {
        match self {
            Self::NoRoute => "NR",
            Self::BadRequest(_)
            | Self::UriTooLong
            | Self::NotImplemented(_)
            | Self::MethodNotAllowed => "DPE",
            Self::ClientTimeout => "DT",
            Self::Loop => "LOOP",
            Self::NoHealthyUpstream => "UH",
            Self::ConnectRefused | Self::ConnectFailed => "UF",
            Self::ConnectTimeout => "UF,UT",
            Self::UpstreamTls => "UF,TLS",
            Self::UpstreamTimeout => "UT",
            Self::UpstreamReset => "UC",
            Self::UpstreamProtocol => "UPE",
            Self::RefusedStream => "URX",
            // Envoy's "upstream overflow" flag.
            Self::Overflow(_) => "UO",
            Self::RateLimited(_) => "RL",
            // Envoy's overload-manager flag.
            Self::Shed(_) => "OM",
            Self::Forbidden => "DENY",
            Self::PayloadTooLarge => "DPE",
            Self::ClientAbort => "DC",
            Self::Internal => "LR",
        }
    }

    /// Whether the downstream connection must close after this answer (framing may be lost).
    pub fn closes_connection(&self) -> bool {
        // After a framing problem or a body that stopped, the message boundary is lost.
        matches!(
            self,
            Self::BadRequest(_)
                | Self::NotImplemented(_)
                | Self::ClientTimeout
                // The rest of the body is still coming and will not be read.
                | Self::PayloadTooLarge
        )
    }

    /// The response: status, a one-line reason, the request id; JSON when the client asks for it.
    pub fn into_response(
        self,
        request_id: &HeaderValue,
        id_header: &http::HeaderName,
        format: ErrorFormat,
        accept: Option<&HeaderValue>,
    ) -> Response<ProxyBody> {
        let status = self.status();
        let limited = match &self {
            Self::RateLimited(l) => Some(l.clone()),
            _ => None,
        };
        let reason = self.to_string();
        let id = request_id.to_str().unwrap_or("-");
        let json = match format {
            ErrorFormat::Json => true,
            ErrorFormat::Text => false,
            ErrorFormat::Auto => accept
                .and_then(|a| a.to_str().ok())
                .is_some_and(|a| a.contains("application/json")),
        };
        let (body, ctype) = if json {
            let v =
                serde_json::json!({ "status": status.as_u16(), "error": reason, "request_id": id });
            (Bytes::from(v.to_string()), "application/json")
        } else {
            (
                Bytes::from(format!("{} {reason}\nrequest id: {id}\n", status.as_u16())),
                "text/plain; charset=utf-8",
            )
        };
        let mut rsp = Response::new(ProxyBody::full(body));
        *rsp.status_mut() = status;
        let h = rsp.headers_mut();
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static(ctype));
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        h.insert(id_header.clone(), request_id.clone());
        if self.closes_connection() {
            h.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        if status == StatusCode::SERVICE_UNAVAILABLE {
            h.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        if let Some(l) = limited {
            h.insert(header::RETRY_AFTER, l.retry_after);
            h.insert(HeaderName::from_static("ratelimit-policy"), l.policy);
            h.insert(HeaderName::from_static("ratelimit"), l.limit);
        }
        rsp
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    fn id() -> (HeaderValue, http::HeaderName) {
        (
            HeaderValue::from_static("abc123"),
            http::HeaderName::from_static("x-request-id"),
        )
    }

    #[tokio::test]
    async fn text_body_has_reason_and_id_but_no_detail() {
        let (rid, h) = id();
        let rsp = ProxyError::ConnectRefused.into_response(&rid, &h, ErrorFormat::Auto, None);
        assert_eq!(rsp.status(), 502);
        assert_eq!(rsp.headers()["x-request-id"], "abc123");
        let body = rsp.into_body().collect().await.unwrap().to_bytes();
        let text = std::str::from_utf8(&body).unwrap();
        assert!(text.contains("502 upstream connection refused"), "{text}");
        assert!(text.contains("abc123"));
    }

    #[tokio::test]
    async fn json_when_accept_asks_for_it() {
        let (rid, h) = id();
        let accept = HeaderValue::from_static("application/json");
        let rsp =
            ProxyError::UpstreamTimeout.into_response(&rid, &h, ErrorFormat::Auto, Some(&accept));
        assert_eq!(rsp.status(), 504);
        assert_eq!(rsp.headers()["content-type"], "application/json");
        let body = rsp.into_body().collect().await.unwrap().to_bytes();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["status"], 504);
        assert_eq!(v["request_id"], "abc123");
    }

    #[test]
    fn only_connect_failures_are_never_sent() {
        assert!(ProxyError::ConnectRefused.never_sent());
        assert!(!ProxyError::UpstreamReset.never_sent());
        assert!(!ProxyError::UpstreamTimeout.never_sent());
        assert_eq!(ProxyError::ClientAbort.side(), Side::Downstream);
    }
}
