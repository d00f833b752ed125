//! What may be stored: `Cache-Control` parsing and the storability rules of RFC 9111
//! for a shared cache, plus palisade's stricter defaults.

use http::header::{CACHE_CONTROL, CONTENT_TYPE, SET_COOKIE, VARY};
use http::{HeaderMap, HeaderName, StatusCode};

/// The response directives a shared cache acts on (RFC 9111 §5.2.2).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct ResponseDirectives {
    pub(crate) no_store: bool,
    pub(crate) no_cache: bool,
    pub(crate) private: bool,
    pub(crate) public: bool,
    pub(crate) max_age: Option<u64>,
    pub(crate) s_maxage: Option<u64>,
}

impl ResponseDirectives {
    /// Parses every `Cache-Control` field line. Unknown directives are ignored; a
    /// malformed `max-age` counts as `0` (RFC 9111 §4.2.1: treat invalid as stale).
    pub(crate) fn parse(headers: &HeaderMap) -> Self {
        let mut d = Self::default();
        for value in headers.get_all(CACHE_CONTROL) {
            let Ok(s) = value.to_str() else {
                // A field we cannot read: be safe.
                d.no_store = true;
                continue;
            };
            for part in split_list(s) {
                let (name, arg) = match part.split_once('=') {
                    Some((n, a)) => (n.trim(), Some(a.trim().trim_matches('"'))),
                    None => (part, None),
                };
                let seconds = || arg.and_then(|a| a.parse::<u64>().ok()).unwrap_or(0);
                if name.eq_ignore_ascii_case("no-store") {
                    d.no_store = true;
                } else if name.eq_ignore_ascii_case("no-cache") {
                    d.no_cache = true;
                } else if name.eq_ignore_ascii_case("private") {
                    d.private = true;
                } else if name.eq_ignore_ascii_case("public") {
                    d.public = true;
                } else if name.eq_ignore_ascii_case("max-age") {
                    d.max_age = Some(d.max_age.map_or(seconds(), |m| m.min(seconds())));
                } else if name.eq_ignore_ascii_case("s-maxage") {
                    d.s_maxage = Some(d.s_maxage.map_or(seconds(), |m| m.min(seconds())));
                }
            }
        }
        d
    }

    /// The freshness lifetime the response allows a shared cache, if it states one.
    pub(crate) fn lifetime(&self) -> Option<u64> {
        self.s_maxage.or(self.max_age)
    }
}

/// Splits a comma-separated field value, trimming and skipping empty members.
pub(crate) fn split_list(s: &str) -> impl Iterator<Item = &str> {
    s.split(',').map(str::trim).filter(|p| !p.is_empty())
}

/// Status codes a shared cache may store (RFC 9110 §15.1 "heuristically cacheable"
/// plus 203, 204, 300, 308, 410, 414, 501 excluded: never a 5xx, never 206).
pub(crate) fn cacheable_status(status: StatusCode) -> bool {
    matches!(
        status.as_u16(),
        200 | 203 | 204 | 300 | 301 | 308 | 404 | 405 | 410 | 414
    )
}

/// The response's `Vary` field names, lower-cased, sorted and de-duplicated.
/// `Err(())` for `Vary: *` (never matches, so never stored).
pub(crate) fn vary_names(headers: &HeaderMap) -> Result<Vec<HeaderName>, ()> {
    let mut names = Vec::new();
    for value in headers.get_all(VARY) {
        let s = value.to_str().map_err(|_| ())?;
        for part in split_list(s) {
            if part == "*" {
                return Err(());
            }
            let name = HeaderName::from_bytes(part.as_bytes()).map_err(|_| ())?;
            names.push(name);
        }
    }
    names.sort_by(|a, b| a.as_str().cmp(b.as_str()));
    names.dedup();
    Ok(names)
}

/// Request headers that carry credentials: a request with one of them is never served
/// a shared entry, nor fills one, unless the response says `public` or the rule caches
/// per identity.
pub(crate) const CREDENTIAL_HEADERS: [HeaderName; 5] = [
    http::header::AUTHORIZATION,
    http::header::PROXY_AUTHORIZATION,
    http::header::COOKIE,
    HeaderName::from_static("x-api-key"),
    HeaderName::from_static("api-key"),
];

pub(crate) fn is_credential_header(name: &str) -> bool {
    CREDENTIAL_HEADERS
        .iter()
        .any(|c| name.eq_ignore_ascii_case(c.as_str()))
}

/// Request headers a handler (or framework) may act on but which are not part of the
/// key: a request carrying one is served from the cache but never fills it, so it
/// cannot poison an entry (e.g. `X-Forwarded-Host` reflected into absolute links).
/// [`RequestHeaders::scan`] matches the same names; a test keeps the two in step.
#[cfg(test)]
pub(crate) const UNKEYED_HEADERS: [HeaderName; 12] = [
    HeaderName::from_static("x-forwarded-host"),
    HeaderName::from_static("x-forwarded-server"),
    HeaderName::from_static("x-forwarded-port"),
    HeaderName::from_static("x-forwarded-prefix"),
    HeaderName::from_static("x-forwarded-scheme"),
    HeaderName::from_static("x-host"),
    HeaderName::from_static("x-original-url"),
    HeaderName::from_static("x-original-host"),
    HeaderName::from_static("x-rewrite-url"),
    HeaderName::from_static("x-http-method-override"),
    HeaderName::from_static("x-http-method"),
    HeaderName::from_static("x-method-override"),
];

/// What a request's header names say about caching it, found in one pass over the
/// names (a hash lookup per listed name would be ~20 lookups per request).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RequestHeaders {
    /// `Transfer-Encoding` or `Content-Length` is present.
    pub(crate) body_framing: bool,
    /// One of [`CREDENTIAL_HEADERS`].
    pub(crate) credentials: bool,
    /// A header a handler may act on but which is not part of the key, such as
    /// `X-Forwarded-Host`: the request is served from the cache but never fills it.
    pub(crate) unkeyed: bool,
    /// `X-Forwarded-Proto` or `Forwarded` (unkeyed unless a trusted proxy sent it).
    pub(crate) forwarding: bool,
    /// `If-None-Match`: a hit may be a `304`.
    pub(crate) if_none_match: bool,
}

impl RequestHeaders {
    pub(crate) fn scan(headers: &http::HeaderMap) -> Self {
        let mut found = Self::default();
        for name in headers.keys() {
            match name.as_str() {
                "transfer-encoding" | "content-length" => found.body_framing = true,
                "authorization" | "proxy-authorization" | "cookie" | "x-api-key" | "api-key" => {
                    found.credentials = true;
                }
                "x-forwarded-host"
                | "x-forwarded-server"
                | "x-forwarded-port"
                | "x-forwarded-prefix"
                | "x-forwarded-scheme"
                | "x-host"
                | "x-original-url"
                | "x-original-host"
                | "x-rewrite-url"
                | "x-http-method-override"
                | "x-http-method"
                | "x-method-override" => found.unkeyed = true,
                "x-forwarded-proto" | "forwarded" => found.forwarding = true,
                "if-none-match" => found.if_none_match = true,
                _ => {}
            }
        }
        found
    }
}

/// Whether the response carries a CSP nonce (a per-response secret: storing it would
/// replay one nonce to every client and defeat the policy).
pub(crate) fn has_csp_nonce(res: &http::response::Parts) -> bool {
    #[cfg(feature = "security-headers")]
    if has_nonce_marker(&res.extensions) {
        return true;
    }
    [
        "content-security-policy",
        "content-security-policy-report-only",
    ]
    .iter()
    .flat_map(|h| res.headers.get_all(*h))
    .any(|v| {
        v.as_bytes()
            .windows(7)
            .any(|w| w.eq_ignore_ascii_case(b"'nonce-"))
    })
}

/// The security-headers layer marks responses whose CSP carries a nonce with a
/// response extension (seen when this layer sits outside it).
#[cfg(feature = "security-headers")]
fn has_nonce_marker(ext: &http::Extensions) -> bool {
    ext.get::<crate::security_headers::CspNonce>().is_some()
}

/// Whether the security-headers layer gave this request a CSP nonce. In palisade's
/// stack the cache sits *inside* that layer, so the response it sees carries neither
/// the CSP header nor the marker yet; the request's nonce is what tells it the body
/// may embed a per-request secret.
pub(crate) fn request_has_csp_nonce<B>(req: &http::Request<B>) -> bool {
    #[cfg(feature = "security-headers")]
    if req
        .extensions()
        .get::<crate::security_headers::CspNonce>()
        .is_some()
    {
        return true;
    }
    let _ = req;
    false
}

/// Whether the response is an event stream (never tee'd, never stored).
pub(crate) fn is_event_stream(headers: &HeaderMap) -> bool {
    headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.trim_start()
                .get(..17)
                .is_some_and(|p| p.eq_ignore_ascii_case("text/event-stream"))
        })
}

/// Why a response is not stored; `Ok` carries the lifetime in seconds.
pub(crate) fn storable(
    parts: &http::response::Parts,
    rule_ttl: u64,
    credentialed: bool,
) -> Result<(u64, ResponseDirectives), &'static str> {
    if !cacheable_status(parts.status) {
        return Err("status");
    }
    if parts.headers.contains_key(SET_COOKIE) {
        return Err("set-cookie");
    }
    let d = ResponseDirectives::parse(&parts.headers);
    if d.no_store {
        return Err("no-store");
    }
    if d.private {
        return Err("private");
    }
    if d.no_cache {
        return Err("no-cache");
    }
    if credentialed && !d.public {
        return Err("credentials");
    }
    if has_csp_nonce(parts) {
        return Err("csp-nonce");
    }
    if is_event_stream(&parts.headers) {
        return Err("event-stream");
    }
    let ttl = d.lifetime().map_or(rule_ttl, |l| l.min(rule_ttl));
    if ttl == 0 {
        return Err("max-age");
    }
    Ok((ttl, d))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_static(v));
        }
        h
    }

    fn parts(status: u16, pairs: &[(&'static str, &'static str)]) -> http::response::Parts {
        let mut res = http::Response::new(());
        *res.status_mut() = StatusCode::from_u16(status).unwrap();
        *res.headers_mut() = headers(pairs);
        res.into_parts().0
    }

    #[test]
    fn parses_directives_across_lines_and_case() {
        let d = ResponseDirectives::parse(&headers(&[
            ("cache-control", "Public, MAX-AGE=30"),
            ("cache-control", "s-maxage=\"10\""),
        ]));
        assert!(d.public);
        assert_eq!(d.max_age, Some(30));
        assert_eq!(d.s_maxage, Some(10));
        assert_eq!(d.lifetime(), Some(10), "s-maxage wins for a shared cache");
        let bad = ResponseDirectives::parse(&headers(&[("cache-control", "max-age=abc")]));
        assert_eq!(bad.max_age, Some(0));
    }

    #[test]
    fn storability_rules() {
        assert_eq!(storable(&parts(200, &[]), 60, false).unwrap().0, 60);
        assert_eq!(
            storable(&parts(200, &[("cache-control", "max-age=5")]), 60, false)
                .unwrap()
                .0,
            5
        );
        assert_eq!(
            storable(&parts(200, &[("cache-control", "max-age=500")]), 60, false)
                .unwrap()
                .0,
            60,
            "the rule's TTL is a cap"
        );
        for (status, hs, why) in [
            (206, vec![], "status"),
            (500, vec![], "status"),
            (503, vec![], "status"),
            (200, vec![("set-cookie", "a=b")], "set-cookie"),
            (200, vec![("cache-control", "no-store")], "no-store"),
            (200, vec![("cache-control", "private")], "private"),
            (200, vec![("cache-control", "no-cache")], "no-cache"),
            (200, vec![("cache-control", "max-age=0")], "max-age"),
            (
                200,
                vec![("content-security-policy", "script-src 'NONCE-abc'")],
                "csp-nonce",
            ),
            (
                200,
                vec![("content-type", "text/event-stream")],
                "event-stream",
            ),
            (
                200,
                vec![("cache-control", "public"), ("set-cookie", "s=1")],
                "set-cookie",
            ),
        ] {
            assert_eq!(storable(&parts(status, &hs), 60, false).unwrap_err(), why);
        }
        assert_eq!(
            storable(&parts(200, &[]), 60, true).unwrap_err(),
            "credentials"
        );
        assert!(storable(&parts(200, &[("cache-control", "public")]), 60, true).is_ok());
    }

    #[test]
    fn vary_is_normalised_and_star_refused() {
        let names = vary_names(&headers(&[
            ("vary", "Accept-Language, accept-encoding"),
            ("vary", "accept-language"),
        ]))
        .unwrap();
        assert_eq!(names, ["accept-encoding", "accept-language"]);
        assert!(vary_names(&headers(&[("vary", "accept, *")])).is_err());
    }

    #[test]
    fn header_scan_knows_every_listed_name() {
        let scan = |name: &HeaderName| {
            let mut h = http::HeaderMap::new();
            h.insert(name, http::HeaderValue::from_static("x"));
            RequestHeaders::scan(&h)
        };
        for name in &CREDENTIAL_HEADERS {
            assert!(scan(name).credentials, "{name}");
            assert!(!scan(name).unkeyed, "{name}");
        }
        for name in &UNKEYED_HEADERS {
            assert!(scan(name).unkeyed, "{name}");
            assert!(!scan(name).credentials, "{name}");
        }
        for name in [
            http::header::TRANSFER_ENCODING,
            http::header::CONTENT_LENGTH,
        ] {
            assert!(scan(&name).body_framing, "{name}");
        }
        for name in [
            HeaderName::from_static("x-forwarded-proto"),
            http::header::FORWARDED,
        ] {
            assert!(scan(&name).forwarding, "{name}");
        }
        assert!(scan(&http::header::IF_NONE_MATCH).if_none_match);
        assert_eq!(
            scan(&http::header::ACCEPT),
            RequestHeaders::default(),
            "an ordinary header"
        );
    }
}
