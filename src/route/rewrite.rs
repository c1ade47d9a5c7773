//! `Rewrite`: a route's edits to what is forwarded (path prefix, `Host`, request headers) and to
//! what is returned (response headers), compiled once from the route's config.
//!
//! This module owns the *compiled form* of `strip_prefix`, `host_rewrite`, `request_headers` and
//! `response_headers`, and applying them to a path or a `HeaderMap`. It does not decide which
//! headers are reserved for the proxy (`config/validate.rs` refuses those), nor add the proxy's own
//! headers (`Via`, `X-Forwarded-*`, hop-by-hop removal), nor choose when in the request path the
//! edits run: that is the handler's business.

use http::{HeaderMap, HeaderName, HeaderValue};

use crate::config::{HeaderRewrite, RouteConfig};

/// A route's rewrites with every name and value pre-parsed, so applying them never fails or parses.
#[derive(Debug, Clone, Default)]
pub struct Rewrite {
    /// Normalised without a trailing '/', and `None` when stripping would do nothing (`"/"`).
    strip_prefix: Option<Box<str>>,
    host: Option<HeaderValue>,
    request: HeaderEdits,
    response: HeaderEdits,
}

/// One direction's header edits, in the order they are applied.
#[derive(Debug, Clone, Default)]
struct HeaderEdits {
    remove: Vec<HeaderName>,
    set: Vec<(HeaderName, HeaderValue)>,
    add: Vec<(HeaderName, HeaderValue)>,
}

impl Rewrite {
    /// Compiles a route's rewrites. Validation has normally refused bad input already; this still
    /// returns `Err` (never panics) for a prefix without a leading '/', an empty or non-header-safe
    /// host, or an invalid header name or value.
    pub fn compile(route: &RouteConfig) -> Result<Rewrite, String> {
        let strip_prefix = match route.strip_prefix.as_deref() {
            None => None,
            Some(p) if !p.starts_with('/') => {
                return Err(format!("strip_prefix {p:?} must start with '/'"));
            }
            // A trailing '/' is dropped so that "/api/" strips "/api/x" to "/x" (the boundary rule
            // then supplies the separator) rather than to "x"; "/" alone strips nothing.
            Some(p) => Some(p.trim_end_matches('/'))
                .filter(|p| !p.is_empty())
                .map(Box::from),
        };
        let host = match route.host_rewrite.as_deref() {
            None => None,
            Some("") => return Err("host_rewrite must not be empty".to_owned()),
            Some(h) => Some(
                HeaderValue::from_str(h)
                    .map_err(|_| format!("host_rewrite {h:?} is not a valid Host value"))?,
            ),
        };
        Ok(Rewrite {
            strip_prefix,
            host,
            request: HeaderEdits::compile("request_headers", &route.request_headers)?,
            response: HeaderEdits::compile("response_headers", &route.response_headers)?,
        })
    }

    /// True when the route changes nothing, so the caller can skip the rewrite step entirely.
    pub fn is_noop(&self) -> bool {
        self.strip_prefix.is_none()
            && self.host.is_none()
            && self.request.is_empty()
            && self.response.is_empty()
    }

    /// The path-and-query to forward after `strip_prefix`, or `None` when it is unchanged (then
    /// nothing is allocated). The prefix only applies at a segment boundary: with prefix `/api`,
    /// `/api/x?q` → `/x?q`, `/api` → `/`, `/api?q` → `/?q`, but `/apix` is left alone. Matching is
    /// case-sensitive and on the raw (still percent-encoded) path, like route matching.
    pub fn rewrite_path(&self, path_and_query: &str) -> Option<String> {
        let prefix = self.strip_prefix.as_deref()?;
        let rest = path_and_query.strip_prefix(prefix)?;
        match rest.as_bytes().first() {
            // The remainder already starts a new segment: forward it as is.
            Some(b'/') => Some(rest.to_owned()),
            // The prefix was the whole path: the upstream still needs an absolute path.
            None | Some(b'?') => {
                let mut out = String::with_capacity(rest.len() + 1);
                out.push('/');
                out.push_str(rest);
                Some(out)
            }
            // "/apix" is a different segment than "/api".
            Some(_) => None,
        }
    }

    /// The `Host` to send upstream instead of the client's, if the route sets one.
    pub fn host(&self) -> Option<&HeaderValue> {
        self.host.as_ref()
    }

    /// Applies `request_headers` to the headers about to be forwarded: remove, then set, then add.
    pub fn apply_request_headers(&self, headers: &mut HeaderMap) {
        self.request.apply(headers);
    }

    /// Applies `response_headers` to the upstream's response headers: remove, then set, then add.
    pub fn apply_response_headers(&self, headers: &mut HeaderMap) {
        self.response.apply(headers);
    }
}

impl HeaderEdits {
    fn compile(what: &str, r: &HeaderRewrite) -> Result<HeaderEdits, String> {
        let name = |n: &str| {
            HeaderName::from_bytes(n.as_bytes())
                .map_err(|_| format!("{what}: {n:?} is not a header name"))
        };
        let pair = |(n, v): (&String, &String)| -> Result<(HeaderName, HeaderValue), String> {
            let value = HeaderValue::from_str(v)
                .map_err(|_| format!("{what}.{n}: value is not a valid header value"))?;
            Ok((name(n)?, value))
        };
        Ok(HeaderEdits {
            remove: r.remove.iter().map(|n| name(n)).collect::<Result<_, _>>()?,
            set: r.set.iter().map(pair).collect::<Result<_, _>>()?,
            add: r.add.iter().map(pair).collect::<Result<_, _>>()?,
        })
    }

    fn is_empty(&self) -> bool {
        self.remove.is_empty() && self.set.is_empty() && self.add.is_empty()
    }

    /// Remove first so that a name both removed and added ends up with only the added value; set
    /// before add so that `set` + `add` on one name yields both values, the set one first.
    fn apply(&self, headers: &mut HeaderMap) {
        for name in &self.remove {
            headers.remove(name);
        }
        for (name, value) in &self.set {
            // `insert` drops every existing value of the name, which is what "set" means.
            headers.insert(name.clone(), value.clone());
        }
        for (name, value) in &self.add {
            headers.append(name.clone(), value.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Dur, RouteMatch};

    fn route() -> RouteConfig {
        RouteConfig {
            name: "r".into(),
            matches: RouteMatch::default(),
            cluster: Some("c".into()),
            split: None,
            timeout: Dur::secs(15),
            strip_prefix: None,
            host_rewrite: None,
            request_headers: HeaderRewrite::default(),
            response_headers: HeaderRewrite::default(),
            retry: crate::config::RetryConfig::default(),
            hedge: None,
            last_resort: None,
            rate_limits: Vec::new(),
            priority: crate::config::RoutePriority::Normal,
            allow: Vec::new(),
            deny: Vec::new(),
            max_request_body_bytes: None,
        }
    }

    fn with_prefix(prefix: &str) -> Rewrite {
        Rewrite::compile(&RouteConfig {
            strip_prefix: Some(prefix.into()),
            ..route()
        })
        .unwrap()
    }

    fn values(h: &HeaderMap, name: &str) -> Vec<String> {
        h.get_all(name)
            .iter()
            .map(|v| v.to_str().unwrap().to_owned())
            .collect()
    }

    #[test]
    fn strip_prefix_respects_segment_boundaries() {
        let r = with_prefix("/api");
        assert_eq!(r.rewrite_path("/api/x?q").as_deref(), Some("/x?q"));
        assert_eq!(r.rewrite_path("/api/x/y").as_deref(), Some("/x/y"));
        assert_eq!(r.rewrite_path("/api").as_deref(), Some("/"));
        assert_eq!(r.rewrite_path("/api?q").as_deref(), Some("/?q"));
        assert_eq!(r.rewrite_path("/api/").as_deref(), Some("/"));
        assert_eq!(r.rewrite_path("/apix"), None);
        assert_eq!(r.rewrite_path("/apix?q"), None);
        assert_eq!(r.rewrite_path("/other/api"), None);
        assert_eq!(r.rewrite_path("/API/x"), None, "paths are case-sensitive");
        assert_eq!(r.rewrite_path("/"), None);
    }

    #[test]
    fn strip_prefix_with_trailing_slash_keeps_the_leading_slash() {
        let r = with_prefix("/api/");
        assert_eq!(r.rewrite_path("/api/x").as_deref(), Some("/x"));
        assert_eq!(r.rewrite_path("/api").as_deref(), Some("/"));
        let root = with_prefix("/");
        assert_eq!(root.rewrite_path("/x"), None);
        assert!(root.is_noop());
    }

    #[test]
    fn no_prefix_means_no_change() {
        let r = Rewrite::compile(&route()).unwrap();
        assert_eq!(r.rewrite_path("/api/x"), None);
        assert!(r.is_noop());
        assert!(r.host().is_none());
        assert!(!with_prefix("/api").is_noop());
    }

    #[test]
    fn host_rewrite_is_pre_parsed() {
        let r = Rewrite::compile(&RouteConfig {
            host_rewrite: Some("backend.internal".into()),
            ..route()
        })
        .unwrap();
        assert_eq!(r.host().unwrap(), "backend.internal");
        assert!(!r.is_noop());
    }

    #[test]
    fn request_edits_apply_remove_then_set_then_add() {
        let mut rw = HeaderRewrite {
            remove: vec!["X-Gone".into(), "x-both".into()],
            ..HeaderRewrite::default()
        };
        rw.set.insert("x-set".into(), "new".into());
        rw.set.insert("x-both".into(), "set".into());
        rw.add.insert("x-add".into(), "more".into());
        rw.add.insert("X-Both".into(), "added".into());
        rw.add.insert("x-gone".into(), "back".into());
        let r = Rewrite::compile(&RouteConfig {
            request_headers: rw,
            ..route()
        })
        .unwrap();
        assert!(!r.is_noop());

        let mut h = HeaderMap::new();
        h.append("x-gone", HeaderValue::from_static("old1"));
        h.append("x-gone", HeaderValue::from_static("old2"));
        h.append("x-set", HeaderValue::from_static("old1"));
        h.append("x-set", HeaderValue::from_static("old2"));
        h.append("x-add", HeaderValue::from_static("first"));
        h.append("x-both", HeaderValue::from_static("old"));
        h.append("x-keep", HeaderValue::from_static("kept"));
        r.apply_request_headers(&mut h);

        assert_eq!(values(&h, "x-gone"), ["back"], "removed, then added back");
        assert_eq!(values(&h, "x-set"), ["new"], "set replaces every value");
        assert_eq!(values(&h, "x-add"), ["first", "more"], "add appends");
        assert_eq!(values(&h, "x-both"), ["set", "added"], "set before add");
        assert_eq!(values(&h, "x-keep"), ["kept"]);

        // Request edits do not leak into the response direction.
        let mut resp = HeaderMap::new();
        resp.append("x-gone", HeaderValue::from_static("stays"));
        r.apply_response_headers(&mut resp);
        assert_eq!(values(&resp, "x-gone"), ["stays"]);
    }

    #[test]
    fn response_edits_apply_to_responses() {
        let mut rw = HeaderRewrite {
            remove: vec!["server".into()],
            ..HeaderRewrite::default()
        };
        rw.set.insert("cache-control".into(), "no-store".into());
        let r = Rewrite::compile(&RouteConfig {
            response_headers: rw,
            ..route()
        })
        .unwrap();
        let mut h = HeaderMap::new();
        h.insert("server", HeaderValue::from_static("nginx"));
        h.insert("cache-control", HeaderValue::from_static("max-age=60"));
        r.apply_response_headers(&mut h);
        assert!(h.get("server").is_none());
        assert_eq!(values(&h, "cache-control"), ["no-store"]);
    }

    proptest::proptest! {
        #[test]
        fn stripping_only_removes_the_prefix_at_a_boundary(
            prefix in "(/[a-z]{0,3}){1,2}/?",
            other in "(/[a-z]{0,3}){0,3}(\\?[a-z/=]{0,4})?",
            tail in "[a-z/?=]{0,4}",
            extend_prefix in proptest::bool::weighted(0.7),
        ) {
            let r = with_prefix(&prefix);
            let norm = prefix.trim_end_matches('/');
            // Mostly paths that start with the prefix, so the boundary rule is what is exercised.
            let path = if extend_prefix { format!("{norm}{tail}") } else { other };
            let rest = path.strip_prefix(norm);
            let at_boundary = rest.is_some_and(|r| r.is_empty() || r.starts_with(['/', '?']));
            match r.rewrite_path(&path) {
                None => proptest::prop_assert!(norm.is_empty() || !at_boundary),
                Some(out) => {
                    proptest::prop_assert!(at_boundary && !norm.is_empty());
                    proptest::prop_assert!(out.starts_with('/'));
                    let rest = rest.unwrap_or_default();
                    let kept = if rest.starts_with('/') { out.as_str() } else { &out[1..] };
                    proptest::prop_assert_eq!(kept, rest);
                }
            }
        }
    }

    #[test]
    fn bad_input_is_an_error_not_a_panic() {
        let bad_name = HeaderRewrite {
            remove: vec!["bad name".into()],
            ..HeaderRewrite::default()
        };
        assert!(
            Rewrite::compile(&RouteConfig {
                request_headers: bad_name,
                ..route()
            })
            .is_err()
        );
        let mut bad_value = HeaderRewrite::default();
        bad_value.set.insert("x-a".into(), "line\nbreak".into());
        assert!(
            Rewrite::compile(&RouteConfig {
                response_headers: bad_value,
                ..route()
            })
            .is_err()
        );
        let mut bad_add_name = HeaderRewrite::default();
        bad_add_name.add.insert("x:a".into(), "v".into());
        assert!(
            Rewrite::compile(&RouteConfig {
                request_headers: bad_add_name,
                ..route()
            })
            .is_err()
        );
        assert!(
            Rewrite::compile(&RouteConfig {
                strip_prefix: Some("api".into()),
                ..route()
            })
            .is_err()
        );
        assert!(
            Rewrite::compile(&RouteConfig {
                host_rewrite: Some(String::new()),
                ..route()
            })
            .is_err()
        );
        assert!(
            Rewrite::compile(&RouteConfig {
                host_rewrite: Some("a\r\nb".into()),
                ..route()
            })
            .is_err()
        );
    }
}
