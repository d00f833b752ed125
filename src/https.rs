//! HTTPS redirect and host validation.
//!
//! Two jobs that share one question, "which host was this request for?":
//!
//! 1. **Host validation.** With `allowed_hosts` set, a request whose host is not in
//!    the list never reaches a handler. Host-derived data (absolute links, password
//!    reset mails, cache keys, redirects) is then safe to build. A malformed, missing or
//!    duplicated `Host`, an absolute-form target whose authority disagrees with `Host`,
//!    or an authority carrying `user@` gets **400** (RFC 9112 §3.2 requires 400 for
//!    an invalid or repeated `Host`). A well-formed host this service does not serve
//!    gets **421 Misdirected Request** (RFC 9110 §15.5.20: "the server is not able or
//!    willing to produce an authoritative response for the target URI"), which also
//!    tells a client that reused a connection for another name to retry elsewhere.
//! 2. **HTTPS enforcement.** A plain-HTTP request, judged by
//!    [`client_info`] (the connection itself, or
//!    `X-Forwarded-Proto`/`Forwarded: proto=` from a *trusted* proxy only), is redirected
//!    to `https://` with the same path and query (**308** by default; 307 or 301 by
//!    config, 301 only for GET/HEAD because user agents turn a redirected POST into a
//!    GET), or refused with **400** in `mode = "reject"`: API clients rarely follow
//!    redirects, and their credentials have already crossed the network in clear.
//!
//! # No open redirect
//!
//! The `Location` host is the configured `canonical_host`, or the request's own host
//! **only after it passed `allowed_hosts`**; with neither configured, redirecting is a
//! configuration error. The location is `https://` + host + path, so a path such as
//! `//evil.com/x` stays a path on the right host. A forwarded host is read only with
//! `trust_forwarded_host = true`, only from a trusted proxy, only from the header
//! family `[client_ip] header` names (`X-Forwarded-Host`, or `Forwarded: host=`: a
//! client could send the other one past a proxy that does not rewrite it), and is
//! checked against `allowed_hosts` like any other host.
//!
//! # Defaults
//!
//! Enforcement is on as soon as `canonical_host` or `allowed_hosts` is configured,
//! and off otherwise, so the quickstart with an empty config still answers on
//! `http://127.0.0.1:8080`. Health and readiness probes and the metrics scrape
//! (`/health`, `/ready`, `/metrics`) are exempt from both checks: orchestrators and
//! Prometheus call them over plain HTTP by pod IP.
//!
//! ```
//! use axum::{Router, routing::get};
//! use palisade::https::HttpsLayer;
//! use tower::ServiceExt;
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let layer = HttpsLayer::builder()
//!     .allowed_host("example.com")
//!     .allowed_host("*.example.com")
//!     .build()
//!     .unwrap();
//! let app = Router::new()
//!     .route("/hello", get(|| async { "hello" }))
//!     .layer(layer);
//! let req = |host: &str| {
//!     http::Request::get("/hello?x=1").header("host", host).body(axum::body::Body::empty()).unwrap()
//! };
//! let res = app.clone().oneshot(req("api.example.com")).await.unwrap();
//! assert_eq!(res.status(), 308);
//! assert_eq!(res.headers()["location"], "https://api.example.com/hello?x=1");
//! let res = app.oneshot(req("evil.com")).await.unwrap();
//! assert_eq!(res.status(), 421);
//! assert!(res.headers().get("location").is_none());
//! # }
//! ```

use std::borrow::Cow;
use std::convert::Infallible;
use std::future::Future;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::Body;
use axum::extract::Request;
use axum::response::{IntoResponse, Response};
use http::header::{HOST, HeaderName, HeaderValue, LOCATION};
use http::{Method, StatusCode};
use pin_project_lite::pin_project;
use tower::{Layer, Service};

use crate::client_ip::{ForwardedHeader, Scheme, TrustedProxies, client_info};
use crate::config::HttpsConfig;
use crate::config::https::HttpsMode;
use crate::error::ConfigError;
use crate::problem::{Problem, Rejection};
use crate::route_match::{PathPattern, RouteMatcher};
use crate::stack::BuildContext;

const KEY: &str = "https";
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

// ---------------------------------------------------------------------------
// Hosts

/// A host as it appears in a request, normalized: lowercase, no trailing dot, IPv6
/// literals in canonical bracketed form (`[::1]`), port apart. Borrows the request's
/// text when it is already normal (the common case: no allocation per request).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct HostPort<'a> {
    /// `example.com`, `192.0.2.1` or `[2001:db8::1]`.
    pub(crate) host: Cow<'a, str>,
    /// The explicit port, if any.
    pub(crate) port: Option<u16>,
    ip: bool,
}

impl HostPort<'_> {
    fn into_owned(self) -> HostPort<'static> {
        HostPort {
            host: Cow::Owned(self.host.into_owned()),
            port: self.port,
            ip: self.ip,
        }
    }
}

/// Why a host value was refused (strict syntax: reg-name letters, digits, `-`, `.`,
/// `_`; an IPv4 address; or a bracketed IPv6 address; then an optional port).
fn parse_host(raw: &str) -> Result<HostPort<'_>, &'static str> {
    if raw.is_empty() {
        return Err("empty host");
    }
    let (host, ip, port) = if let Some(rest) = raw.strip_prefix('[') {
        let (addr, tail) = rest.split_once(']').ok_or("unterminated IPv6 literal")?;
        let addr: Ipv6Addr = addr.parse().map_err(|_| "invalid IPv6 literal")?;
        let port = match tail {
            "" => None,
            t => Some(t.strip_prefix(':').ok_or("junk after IPv6 literal")?),
        };
        (Cow::Owned(format!("[{addr}]")), true, port)
    } else {
        let (name, port) = match raw.split_once(':') {
            Some((n, p)) => (n, Some(p)),
            None => (raw, None),
        };
        let name = name.strip_suffix('.').unwrap_or(name);
        if name.is_empty() || name.len() > 253 {
            return Err("invalid host name length");
        }
        // One pass: the character set, label lengths, case and whether it is all digits.
        let (mut label, mut upper, mut ip) = (0usize, false, true);
        for b in name.bytes() {
            match b {
                b'.' => {
                    if label == 0 || label > 63 {
                        return Err("empty or over-long label in host");
                    }
                    label = 0;
                    continue;
                }
                b'0'..=b'9' => {}
                b'a'..=b'z' | b'-' | b'_' => ip = false,
                b'A'..=b'Z' => (upper, ip) = (true, false),
                _ => return Err("invalid character in host"),
            }
            label += 1;
        }
        if label == 0 || label > 63 {
            return Err("empty or over-long label in host");
        }
        if ip && name.parse::<Ipv4Addr>().is_err() {
            return Err("invalid IPv4 address");
        }
        let name = if upper {
            Cow::Owned(name.to_ascii_lowercase())
        } else {
            Cow::Borrowed(name)
        };
        (name, ip, port)
    };
    let port = match port {
        None | Some("") => None,
        Some(p) if p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()) => {
            Some(p.parse::<u16>().map_err(|_| "port out of range")?)
        }
        Some(_) => return Err("invalid port"),
    };
    Ok(HostPort { host, port, ip })
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum HostPattern {
    Exact(String, Option<u16>),
    /// `*.example.com`: stored as `.example.com`; subdomains only, any depth.
    Subdomains(String, Option<u16>),
}

impl HostPattern {
    fn parse(raw: &str) -> Result<Self, String> {
        let raw = raw.trim();
        if raw == "*" {
            return Err(
                "\"*\" would accept any Host and make host-based redirects open redirects; list your hosts".into(),
            );
        }
        if raw.contains("://") || raw.contains('/') {
            return Err(format!("{raw:?}: a host, not a URL (no scheme, no path)"));
        }
        if let Some(rest) = raw.strip_prefix("*.") {
            let h = parse_host(rest).map_err(|e| format!("{raw:?}: {e}"))?;
            if h.ip {
                return Err(format!("{raw:?}: a wildcard needs a domain name"));
            }
            return Ok(Self::Subdomains(format!(".{}", h.host), h.port));
        }
        if raw.contains('*') {
            return Err(format!(
                "{raw:?}: '*' is only allowed as a leading \"*.\" label"
            ));
        }
        let h = parse_host(raw).map_err(|e| format!("{raw:?}: {e}"))?;
        Ok(Self::Exact(h.host.into_owned(), h.port))
    }

    fn matches(&self, h: &HostPort) -> bool {
        let port_ok = |p: &Option<u16>| p.is_none() || *p == h.port;
        match self {
            Self::Exact(host, port) => *host == h.host && port_ok(port),
            Self::Subdomains(suffix, port) => {
                !h.ip
                    && h.host.len() > suffix.len()
                    && h.host.ends_with(suffix.as_str())
                    && port_ok(port)
            }
        }
    }
}

/// Why a request's host could not be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HostError {
    Missing,
    Duplicate,
    Invalid,
    Userinfo,
    Mismatch,
}

impl HostError {
    fn reason(self) -> &'static str {
        match self {
            Self::Missing => "missing_host",
            Self::Duplicate => "duplicate_host",
            Self::Invalid => "invalid_host",
            Self::Userinfo => "userinfo_in_authority",
            Self::Mismatch => "host_mismatch",
        }
    }
}

// ---------------------------------------------------------------------------
// Layer

#[derive(Debug)]
struct Shared {
    enforce: bool,
    mode: HttpsMode,
    status: StatusCode,
    /// `canonical_host` with the port suffix, ready to print.
    canonical: Option<String>,
    allowed: Box<[HostPattern]>,
    exempt: Option<RouteMatcher>,
    /// `":8443"`, or empty for 443.
    port_suffix: String,
    trust_forwarded_host: bool,
    trusted: TrustedProxies,
}

/// Layer for `[https]`: see the [module docs](self).
#[derive(Debug, Clone)]
pub struct HttpsLayer {
    shared: Arc<Shared>,
}

/// Builder for [`HttpsLayer`]; every check runs in [`build`](Self::build).
#[derive(Debug, Clone)]
#[must_use]
pub struct HttpsBuilder {
    config: HttpsConfig,
    trusted: TrustedProxies,
}

impl HttpsBuilder {
    /// Whether plain HTTP is refused; unset = on when a host is configured.
    pub fn redirect(mut self, on: bool) -> Self {
        self.config.redirect = Some(on);
        self
    }

    /// Redirect status: 308, 307 or 301.
    pub fn status(mut self, status: u16) -> Self {
        self.config.status = status;
        self
    }

    /// Redirect or reject plain HTTP.
    pub fn mode(mut self, mode: HttpsMode) -> Self {
        self.config.mode = mode;
        self
    }

    /// The host every redirect goes to.
    pub fn canonical_host(mut self, host: &str) -> Self {
        self.config.canonical_host = Some(host.to_owned());
        self
    }

    /// Adds an allowed host (`example.com`, `*.example.com`, `[::1]`).
    pub fn allowed_host(mut self, host: &str) -> Self {
        self.config.allowed_hosts.push(host.to_owned());
        self
    }

    /// Replaces the exempt path patterns (default `/health`, `/ready`, `/metrics`).
    pub fn exempt_paths(mut self, patterns: &[&str]) -> Self {
        self.config.exempt_paths = patterns.iter().map(|p| (*p).to_owned()).collect();
        self
    }

    /// The HTTPS port for redirects (443 is omitted).
    pub fn https_port(mut self, port: u16) -> Self {
        self.config.https_port = Some(port);
        self
    }

    /// Reads `X-Forwarded-Host` from these trusted proxies (still allow-listed).
    pub fn trust_forwarded_host(mut self, trusted: TrustedProxies) -> Self {
        self.config.trust_forwarded_host = true;
        self.trusted = trusted;
        self
    }

    /// Validates everything and builds the layer.
    pub fn build(self) -> Result<HttpsLayer, ConfigError> {
        compile(&self.config, self.trusted).map(|shared| HttpsLayer {
            shared: Arc::new(shared),
        })
    }
}

impl HttpsLayer {
    /// Builds the layer from its config section; `None` when there is nothing to do.
    pub fn from_config(
        config: &HttpsConfig,
        ctx: &BuildContext,
    ) -> Result<Option<Self>, ConfigError> {
        let shared = compile(config, ctx.trusted_proxies.clone())?;
        if !shared.enforce && shared.allowed.is_empty() {
            return Ok(None);
        }
        Ok(Some(Self {
            shared: Arc::new(shared),
        }))
    }

    /// A builder with the defaults of [`HttpsConfig`].
    pub fn builder() -> HttpsBuilder {
        HttpsBuilder {
            config: HttpsConfig::default(),
            trusted: TrustedProxies::none(),
        }
    }
}

fn compile(cfg: &HttpsConfig, trusted: TrustedProxies) -> Result<Shared, ConfigError> {
    let mut errors = ConfigError::default();

    let status = match cfg.status {
        301 => StatusCode::MOVED_PERMANENTLY,
        307 => StatusCode::TEMPORARY_REDIRECT,
        308 => StatusCode::PERMANENT_REDIRECT,
        other => {
            errors.push(
                format!("{KEY}.status"),
                format!("{other} is not 308, 307 or 301 (302/303 may turn a POST into a GET)"),
            );
            StatusCode::PERMANENT_REDIRECT
        }
    };

    let canonical = cfg.canonical_host.as_deref().and_then(|raw| {
        let key = format!("{KEY}.canonical_host");
        if raw.contains('*') || raw.contains('/') || raw.contains('@') {
            errors.push(
                key,
                format!("{raw:?} must be a plain host name or IP literal"),
            );
            return None;
        }
        match parse_host(raw.trim()) {
            Ok(h) if h.port.is_some() => {
                errors.push(key, "put the port in https.https_port");
                None
            }
            Ok(h) => Some(h.host.into_owned()),
            Err(e) => {
                errors.push(key, format!("{raw:?}: {e}"));
                None
            }
        }
    });

    let mut allowed = Vec::with_capacity(cfg.allowed_hosts.len());
    for (i, raw) in cfg.allowed_hosts.iter().enumerate() {
        match HostPattern::parse(raw) {
            Ok(p) => allowed.push(p),
            Err(msg) => errors.push(format!("{KEY}.allowed_hosts[{i}]"), msg),
        }
    }
    let hosts_configured = cfg.canonical_host.is_some() || !cfg.allowed_hosts.is_empty();
    let enforce = cfg.redirect.unwrap_or(hosts_configured);
    if enforce
        && cfg.mode == HttpsMode::Redirect
        && cfg.canonical_host.is_none()
        && cfg.allowed_hosts.is_empty()
    {
        errors.push(
            format!("{KEY}.redirect"),
            "redirecting needs https.canonical_host or https.allowed_hosts: the request's Host is never echoed unchecked",
        );
    }
    if cfg.trust_forwarded_host && cfg.allowed_hosts.is_empty() {
        errors.push(
            format!("{KEY}.trust_forwarded_host"),
            "needs https.allowed_hosts to check X-Forwarded-Host against",
        );
    }

    let mut exempt = Vec::with_capacity(cfg.exempt_paths.len());
    for (i, p) in cfg.exempt_paths.iter().enumerate() {
        match PathPattern::parse(p) {
            Ok(p) => exempt.push(p),
            Err(msg) => errors.push(format!("{KEY}.exempt_paths[{i}]"), msg),
        }
    }

    let port_suffix = match cfg.https_port {
        Some(0) => {
            errors.push(format!("{KEY}.https_port"), "0 is not a port");
            String::new()
        }
        Some(443) | None => String::new(),
        Some(p) => format!(":{p}"),
    };
    let canonical = canonical.map(|h| format!("{h}{port_suffix}"));

    errors.and_ok(Shared {
        enforce,
        mode: cfg.mode,
        status,
        canonical,
        allowed: allowed.into(),
        exempt: (!exempt.is_empty()).then(|| RouteMatcher::from_patterns(exempt, Vec::new())),
        port_suffix,
        trust_forwarded_host: cfg.trust_forwarded_host,
        trusted,
    })
}

impl Shared {
    /// The host the request was for, syntax-checked (not yet allow-listed).
    fn request_host<'r>(&self, req: &'r Request) -> Result<HostPort<'r>, HostError> {
        let mut host_headers = req.headers().get_all(HOST).iter();
        let host_header = host_headers.next();
        if host_headers.next().is_some() {
            return Err(HostError::Duplicate);
        }
        let from_header = match host_header {
            Some(v) => {
                let s = v.to_str().map_err(|_| HostError::Invalid)?;
                if s.contains('@') {
                    return Err(HostError::Userinfo);
                }
                Some(parse_host(s).map_err(|_| HostError::Invalid)?)
            }
            None => None,
        };
        // Absolute-form target (HTTP/1.1) or :authority (HTTP/2): it wins over Host
        // (RFC 9112 §3.2.2), and must agree with it when both are present.
        let mut host = match req.uri().authority() {
            Some(auth) => {
                if auth.as_str().contains('@') {
                    return Err(HostError::Userinfo);
                }
                let a = parse_host(auth.as_str()).map_err(|_| HostError::Invalid)?;
                if let Some(h) = &from_header
                    && h.host != a.host
                {
                    return Err(HostError::Mismatch);
                }
                a
            }
            None => from_header.ok_or(HostError::Missing)?,
        };
        if self.trust_forwarded_host {
            let from_proxy = client_info(req)
                .peer
                .is_some_and(|p| self.trusted.contains(p.ip()));
            if from_proxy && let Some(forwarded) = self.forwarded_host(req)? {
                if forwarded.contains('@') {
                    return Err(HostError::Userinfo);
                }
                host = parse_host(&forwarded)
                    .map_err(|_| HostError::Invalid)?
                    .into_owned();
            }
        }
        Ok(host)
    }

    fn decide(&self, req: &Request) -> Option<Response> {
        if let Some(exempt) = &self.exempt
            && exempt.matches_path(req.uri().path())
        {
            return None;
        }
        let mut host = None;
        if !self.allowed.is_empty() {
            match self.request_host(req) {
                Err(e) => {
                    return Some(problem(
                        StatusCode::BAD_REQUEST,
                        e.reason(),
                        "The Host of this request is missing or malformed.",
                    ));
                }
                Ok(h) if !self.allowed.iter().any(|p| p.matches(&h)) => {
                    return Some(problem(
                        StatusCode::MISDIRECTED_REQUEST,
                        "unknown_host",
                        "This server does not serve the requested host.",
                    ));
                }
                Ok(h) => host = Some(h),
            }
        }
        if !self.enforce || client_info(req).scheme == Scheme::Https {
            return None;
        }
        if self.mode == HttpsMode::Reject {
            return Some(problem(
                StatusCode::BAD_REQUEST,
                "plain_http",
                "This service is only available over HTTPS.",
            ));
        }
        Some(self.redirect(req, host))
    }

    /// The host our nearest proxy forwarded, from the header family `[client_ip]` says
    /// it writes: the right-most `X-Forwarded-Host` value, or the `host=` of the
    /// right-most `Forwarded` element (none when that element has no `host=`: an
    /// element further left was not written by our proxy). Only that family: a client
    /// could send the other one past a proxy that does not rewrite it.
    fn forwarded_host(&self, req: &Request) -> Result<Option<String>, HostError> {
        let family = self.trusted.forwarded_header();
        let name = match family {
            ForwardedHeader::XForwardedFor => &X_FORWARDED_HOST,
            ForwardedHeader::Forwarded => &http::header::FORWARDED,
        };
        let Some(last) = req.headers().get_all(name).iter().next_back() else {
            return Ok(None);
        };
        let last = last.to_str().map_err(|_| HostError::Invalid)?;
        Ok(match family {
            ForwardedHeader::XForwardedFor => last.rsplit(',').next().map(|v| v.trim().to_owned()),
            ForwardedHeader::Forwarded => crate::client_ip::parse_forwarded(last)
                .pop()
                .and_then(|element| element.host),
        })
    }

    fn redirect(&self, req: &Request, host: Option<HostPort<'_>>) -> Response {
        let path = req.uri().path_and_query().map_or("/", |pq| pq.as_str());
        if !path.starts_with('/') {
            // `OPTIONS *` or CONNECT: nothing to redirect to.
            return problem(
                StatusCode::BAD_REQUEST,
                "plain_http",
                "This service is only available over HTTPS.",
            );
        }
        let mut location = String::with_capacity(8 + 64 + path.len());
        location.push_str("https://");
        match (&self.canonical, &host) {
            (Some(c), _) => location.push_str(c),
            (None, Some(h)) => {
                location.push_str(&h.host);
                location.push_str(&self.port_suffix);
            }
            // Unreachable by construction (checked at build); refuse rather than guess.
            (None, None) => {
                return problem(
                    StatusCode::BAD_REQUEST,
                    "plain_http",
                    "This service is only available over HTTPS.",
                );
            }
        }
        location.push_str(path);
        let Ok(value) = HeaderValue::from_maybe_shared(bytes::Bytes::from(location)) else {
            return problem(
                StatusCode::BAD_REQUEST,
                "invalid_target",
                "The request target cannot be redirected.",
            );
        };
        let status = if self.status == StatusCode::MOVED_PERMANENTLY
            && req.method() != Method::GET
            && req.method() != Method::HEAD
        {
            // 301 lets user agents turn a POST into a GET; keep the method.
            StatusCode::PERMANENT_REDIRECT
        } else {
            self.status
        };
        let mut res = Response::new(Body::empty());
        *res.status_mut() = status;
        res.headers_mut().insert(LOCATION, value);
        res.extensions_mut().insert(Rejection {
            layer: "https",
            reason: "redirect",
        });
        res
    }
}

fn problem(status: StatusCode, reason: &'static str, detail: &'static str) -> Response {
    Problem::new(status)
        .detail(detail)
        .rejection("https", reason)
        .into_response()
}

impl<S> Layer<S> for HttpsLayer {
    type Service = Https<S>;
    fn layer(&self, inner: S) -> Https<S> {
        Https {
            inner,
            shared: self.shared.clone(),
        }
    }
}

impl HttpsLayer {
    /// The redirect or rejection, if any (what [`Https`] does before its inner service;
    /// for the stack, which runs the layer without a level of its own).
    #[inline]
    pub(crate) fn decide(&self, req: &Request) -> Option<Response> {
        self.shared.decide(req)
    }
}

// ---------------------------------------------------------------------------
// Service

/// Service made by [`HttpsLayer`].
#[derive(Debug, Clone)]
pub struct Https<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S> Service<Request> for Https<S>
where
    S: Service<Request, Response = Response, Error = Infallible>,
{
    type Response = Response;
    type Error = Infallible;
    type Future = ResponseFuture<S::Future>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request) -> Self::Future {
        match self.shared.decide(&req) {
            Some(res) => ResponseFuture {
                kind: Kind::Ready { res: Some(res) },
            },
            None => ResponseFuture {
                kind: Kind::Inner {
                    fut: self.inner.call(req),
                },
            },
        }
    }
}

pin_project! {
    /// Response future of [`Https`].
    #[derive(Debug)]
    pub struct ResponseFuture<F> {
        #[pin]
        kind: Kind<F>,
    }
}

pin_project! {
    #[project = KindProj]
    #[derive(Debug)]
    enum Kind<F> {
        // The request went on to the inner service.
        Inner { #[pin] fut: F },
        // Answered here (redirect or rejection).
        Ready { res: Option<Response> },
    }
}

impl<F> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response, Infallible>>,
{
    type Output = Result<Response, Infallible>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Inner { fut } => fut.poll(cx),
            KindProj::Ready { res } => match res.take() {
                Some(r) => Poll::Ready(Ok(r)),
                // Polled after completion: answer something valid rather than panic.
                None => Poll::Ready(Ok(StatusCode::INTERNAL_SERVER_ERROR.into_response())),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hp(s: &str) -> HostPort<'_> {
        parse_host(s).unwrap()
    }

    #[test]
    fn host_syntax() {
        assert_eq!(hp("Example.COM.").host, "example.com");
        assert_eq!(hp("example.com:8080").port, Some(8080));
        assert_eq!(hp("example.com:").port, None);
        assert_eq!(hp("[0:0:0:0:0:0:0:1]:443").host, "[::1]");
        assert_eq!(hp("192.0.2.1").host, "192.0.2.1");
        for bad in [
            "",
            "good.com@evil.com",
            "good.com evil.com",
            "good.com/x",
            "a..b",
            ".a",
            "::1",
            "[::1",
            "[::1]x",
            "[fe80::1%eth0]",
            "example.com:99999",
            "example.com:8o",
            "999.1.1.1",
            "ex\\ample.com",
            "good.com:80:80",
        ] {
            assert!(parse_host(bad).is_err(), "{bad:?} accepted");
        }
    }

    /// The one-pass name check agrees with the rules written out one by one, on every
    /// name of up to five characters from an alphabet that hits each rule; and a name
    /// that is already normal is borrowed, not copied.
    #[test]
    fn host_name_check_matches_the_rules() {
        fn by_the_rules(name: &str) -> Option<String> {
            let name = name.strip_suffix('.').unwrap_or(name);
            let chars_ok = name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'));
            let labels_ok = !name.split('.').any(|l| l.is_empty() || l.len() > 63);
            let ip = name.bytes().all(|b| b.is_ascii_digit() || b == b'.');
            let ok = !name.is_empty()
                && chars_ok
                && labels_ok
                && (!ip || name.parse::<Ipv4Addr>().is_ok());
            ok.then(|| name.to_ascii_lowercase())
        }
        let alphabet = ["a", "Z", "0", "1", ".", "-", "_", "$"];
        let mut names = vec![String::new()];
        for _ in 0..5 {
            let longer: Vec<String> = names
                .iter()
                .flat_map(|n| alphabet.iter().map(move |c| format!("{n}{c}")))
                .collect();
            names.extend(longer);
        }
        names.extend([
            "1.2.3.4".into(),
            "1.2.3.400".into(),
            "a".repeat(63),
            "a".repeat(64),
        ]);
        for name in &names {
            let got = parse_host(name).ok().map(|h| h.host.into_owned());
            assert_eq!(got, by_the_rules(name), "{name:?}");
        }
        assert!(matches!(hp("example.com").host, Cow::Borrowed(_)));
        assert!(matches!(hp("Example.com").host, Cow::Owned(_)));
    }

    #[test]
    fn patterns() {
        let p = |s: &str| HostPattern::parse(s).unwrap();
        assert!(p("*.example.com").matches(&hp("a.example.com")));
        assert!(p("*.example.com").matches(&hp("a.b.example.com:8443")));
        assert!(!p("*.example.com").matches(&hp("example.com")));
        assert!(!p("*.example.com").matches(&hp("badexample.com")));
        assert!(!p("example.com").matches(&hp("good.com.example.com.evil.com")));
        assert!(p("EXAMPLE.com.").matches(&hp("example.com:80")));
        assert!(p("example.com:8443").matches(&hp("example.com:8443")));
        assert!(!p("example.com:8443").matches(&hp("example.com")));
        assert!(p("[::1]").matches(&hp("[0::1]:8080")));
        for bad in [
            "*",
            "",
            "http://example.com",
            "a.*.com",
            "*example.com",
            "ex ample",
        ] {
            assert!(HostPattern::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn config_problems_are_all_named() {
        let cfg = HttpsConfig {
            redirect: Some(true),
            status: 302,
            canonical_host: Some("example.com:8443".into()),
            allowed_hosts: vec!["*".into(), "ok.example".into()],
            exempt_paths: vec!["health".into()],
            https_port: Some(0),
            ..HttpsConfig::default()
        };
        let e = compile(&cfg, TrustedProxies::none()).unwrap_err();
        for k in [
            "https.status",
            "https.canonical_host",
            "https.allowed_hosts[0]",
            "https.exempt_paths[0]",
            "https.https_port",
        ] {
            assert!(e.has_key(k), "missing {k}: {e}");
        }
        let cfg = HttpsConfig {
            redirect: Some(true),
            trust_forwarded_host: true,
            ..HttpsConfig::default()
        };
        let e = compile(&cfg, TrustedProxies::none()).unwrap_err();
        assert!(e.has_key("https.redirect") && e.has_key("https.trust_forwarded_host"));
    }

    #[test]
    fn default_config_is_disabled() {
        let layer = HttpsLayer::from_config(&HttpsConfig::default(), &BuildContext::default());
        assert!(layer.unwrap().is_none());
    }
}

/// The strict host parser, for [`crate::fuzzing`] only.
#[cfg(feature = "fuzzing")]
pub(crate) mod fuzz_access {
    /// The normalised host and port, or why the value was refused.
    pub(crate) fn host(raw: &str) -> Result<(String, Option<u16>), &'static str> {
        super::parse_host(raw).map(|h| (h.host.into_owned(), h.port))
    }
}
