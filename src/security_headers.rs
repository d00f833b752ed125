//! Security response headers: `api` and `web` profiles, per-request CSP nonces.
//!
//! Browsers enforce a set of response headers that turn off dangerous legacy
//! behaviour (MIME sniffing, framing, referrer leaks, cross-origin embedding) and pin
//! the site to HTTPS. None of them costs a well-behaved client anything, so palisade
//! sends them on **every** response, including its own 400/401/403/421/429 answers,
//! 404s and 5xx errors.
//!
//! # Profiles
//!
//! | header | `api` (default) | `web` (helmet 8 defaults) |
//! |---|---|---|
//! | `Content-Security-Policy` | `default-src 'none'; frame-ancestors 'none'` | helmet's page policy |
//! | `Strict-Transport-Security` | `max-age=31536000; includeSubDomains` (HTTPS only) | same |
//! | `X-Frame-Options` | `DENY` | `SAMEORIGIN` |
//! | `X-Content-Type-Options` | `nosniff` | `nosniff` |
//! | `Referrer-Policy` | `no-referrer` | `no-referrer` |
//! | `Cross-Origin-Opener-Policy` | `same-origin` | `same-origin` |
//! | `Cross-Origin-Resource-Policy` | `same-origin` | `same-origin` |
//! | `Origin-Agent-Cluster` | – | `?1` |
//! | `X-Permitted-Cross-Domain-Policies` | `none` | `none` |
//! | `X-DNS-Prefetch-Control` | `off` | `off` |
//! | `X-Download-Options` | – | `noopen` |
//! | `X-XSS-Protection` | `0` | `0` |
//! | removed | `Server`, `X-Powered-By` | `Server`, `X-Powered-By` |
//!
//! The `api` profile follows the OWASP REST cheat sheet: an API response is never a
//! page, so it may load nothing, be framed by nobody and leak no referrer. The `web`
//! profile is helmet's default set, value for value, so an HTML site gets what the
//! Node ecosystem has tested for years.
//!
//! # Rules
//!
//! - **The handler wins.** A header the handler (or an inner layer) already set is left
//!   alone, so one route can relax its own CSP or framing rule. List a header in
//!   `override_headers` to make palisade's value win instead. A header is never sent
//!   twice: appending security headers is wrong (several CSPs intersect; browsers
//!   honour only the first HSTS).
//! - **HSTS only over HTTPS**, as judged by [`client_info`] (the connection, or a
//!   trusted proxy's `X-Forwarded-Proto`). RFC 6797 §7.2 forbids it on plain HTTP,
//!   where an attacker could strip or forge it anyway.
//! - **Everything is validated when the layer is built**: header names and values, CSP
//!   directive names, duplicate directives, unquoted keywords (`self` for `'self'`),
//!   static nonces, HSTS `preload` prerequisites. A typo fails start-up, naming the key.
//! - Opt-ins: `Permissions-Policy` and `Cross-Origin-Embedder-Policy` through `set`
//!   (COEP breaks pages that embed cross-origin resources, which is why helmet turned it
//!   off), HSTS `preload`, and per-request CSP nonces.
//!
//! # CSP nonces
//!
//! With `csp_nonce = true` every request gets a fresh 128-bit nonce from the OS
//! CSPRNG. Handlers read it as a [`CspNonce`] extractor and put it in their `<script
//! nonce="...">` tags; the CSP of the response allows exactly that nonce. A page
//! containing a nonce must never be cached and replayed, so the nonce is visible to
//! caches on both sides of this layer: layers **inside** it (palisade's response cache)
//! find `CspNonce` in the **request** extensions, before the CSP header exists; layers
//! **outside** it find the same `CspNonce` in the **response** extensions.
//!
//! ```
//! use axum::{Router, routing::get, response::Html};
//! use palisade::security_headers::{CspNonce, SecurityHeadersLayer};
//! use palisade::config::security_headers::Profile;
//! use tower::ServiceExt;
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let layer = SecurityHeadersLayer::builder(Profile::Web)
//!     .csp_nonce(true)
//!     .build()
//!     .unwrap();
//! let app = Router::new()
//!     .route("/", get(|nonce: CspNonce| async move {
//!         Html(format!("<script nonce=\"{}\">go()</script>", nonce.as_str()))
//!     }))
//!     .layer(layer);
//! let res = app
//!     .oneshot(http::Request::get("/").body(axum::body::Body::empty()).unwrap())
//!     .await
//!     .unwrap();
//! let csp = res.headers()["content-security-policy"].to_str().unwrap().to_owned();
//! let nonce = res.extensions().get::<CspNonce>().unwrap();
//! assert!(csp.contains(&format!("script-src 'self' 'nonce-{}'", nonce.as_str())));
//! assert_eq!(res.headers()["x-frame-options"], "SAMEORIGIN");
//! # }
//! ```
//!
//! # Cost
//!
//! The whole header set is a `HeaderMap` built and hashed once, at build time. Per
//! response the layer clones it (two allocations, no hashing) and re-inserts the
//! handler's own few headers over it, in a hand-written future (no boxing).
//! `benches/security_headers.rs` compares it with tower-http's `SetResponseHeader`.

use std::borrow::Cow;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use axum::extract::{FromRequestParts, OptionalFromRequestParts, Request};
use axum::response::Response;
use http::StatusCode;
use http::header::{self, Entry, HeaderMap, HeaderName, HeaderValue};
use http::request::Parts;
use pin_project_lite::pin_project;
use tower::{Layer, Service};

use crate::client_ip::{Scheme, client_info};
use crate::config::SecurityHeadersConfig;
use crate::config::security_headers::Profile;
use crate::error::ConfigError;
use crate::problem::Problem;
use crate::route_match::{PathPattern, RouteMatcher};
use crate::stack::BuildContext;

const KEY: &str = "security_headers";

/// `Cross-Origin-Opener-Policy`.
pub const CROSS_ORIGIN_OPENER_POLICY: HeaderName =
    HeaderName::from_static("cross-origin-opener-policy");
/// `Cross-Origin-Resource-Policy`.
pub const CROSS_ORIGIN_RESOURCE_POLICY: HeaderName =
    HeaderName::from_static("cross-origin-resource-policy");
/// `Cross-Origin-Embedder-Policy`.
pub const CROSS_ORIGIN_EMBEDDER_POLICY: HeaderName =
    HeaderName::from_static("cross-origin-embedder-policy");
/// `Origin-Agent-Cluster`.
pub const ORIGIN_AGENT_CLUSTER: HeaderName = HeaderName::from_static("origin-agent-cluster");
/// `Permissions-Policy`.
pub const PERMISSIONS_POLICY: HeaderName = HeaderName::from_static("permissions-policy");
/// `X-Permitted-Cross-Domain-Policies`.
pub const X_PERMITTED_CROSS_DOMAIN_POLICIES: HeaderName =
    HeaderName::from_static("x-permitted-cross-domain-policies");
/// `X-Download-Options`.
pub const X_DOWNLOAD_OPTIONS: HeaderName = HeaderName::from_static("x-download-options");
/// `X-Powered-By`.
pub const X_POWERED_BY: HeaderName = HeaderName::from_static("x-powered-by");

/// The `api` profile (without HSTS, which depends on the request's scheme).
const API: &[(&str, &str)] = &[
    (
        "content-security-policy",
        "default-src 'none'; frame-ancestors 'none'",
    ),
    ("x-frame-options", "DENY"),
    ("x-content-type-options", "nosniff"),
    ("referrer-policy", "no-referrer"),
    ("cross-origin-opener-policy", "same-origin"),
    ("cross-origin-resource-policy", "same-origin"),
    ("x-permitted-cross-domain-policies", "none"),
    ("x-dns-prefetch-control", "off"),
    ("x-xss-protection", "0"),
];

/// helmet's default page policy (helmet 8.3.0, `getDefaultDirectives`), in its format.
pub const HELMET_CSP: &str = "default-src 'self';base-uri 'self';font-src 'self' https: data:;form-action 'self';frame-ancestors 'self';img-src 'self' data:;object-src 'none';script-src 'self';script-src-attr 'none';style-src 'self' https: 'unsafe-inline';upgrade-insecure-requests";

/// The `web` profile: helmet 8.3.0's defaults (without HSTS).
const WEB: &[(&str, &str)] = &[
    ("content-security-policy", HELMET_CSP),
    ("cross-origin-opener-policy", "same-origin"),
    ("cross-origin-resource-policy", "same-origin"),
    ("origin-agent-cluster", "?1"),
    ("referrer-policy", "no-referrer"),
    ("x-content-type-options", "nosniff"),
    ("x-dns-prefetch-control", "off"),
    ("x-download-options", "noopen"),
    ("x-frame-options", "SAMEORIGIN"),
    ("x-permitted-cross-domain-policies", "none"),
    ("x-xss-protection", "0"),
];

/// Headers that reveal the server software; stripped by both profiles.
const REMOVED: &[&str] = &["server", "x-powered-by"];

/// Names with a static representation, so configured copies clone for free.
const KNOWN: &[&str] = &[
    "content-security-policy",
    "content-security-policy-report-only",
    "strict-transport-security",
    "x-frame-options",
    "x-content-type-options",
    "referrer-policy",
    "x-dns-prefetch-control",
    "x-xss-protection",
    "server",
    "cache-control",
    "cross-origin-opener-policy",
    "cross-origin-resource-policy",
    "cross-origin-embedder-policy",
    "origin-agent-cluster",
    "permissions-policy",
    "x-permitted-cross-domain-policies",
    "x-download-options",
    "x-powered-by",
    "clear-site-data",
];

/// Headers a security-header layer must never set: they frame the message or belong
/// to the handler.
const FORBIDDEN: &[&str] = &[
    "connection",
    "content-length",
    "content-encoding",
    "content-type",
    "host",
    "keep-alive",
    "proxy-connection",
    "set-cookie",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

// ---------------------------------------------------------------------------
// CspNonce

/// A per-request CSP nonce: 128 bits from the OS CSPRNG, base64-encoded.
///
/// Inserted into the request extensions (read it as an extractor, or with
/// `Extension<CspNonce>`) and into the response extensions, where caches must treat
/// it as "never store this response".
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct CspNonce {
    encoded: [u8; 24],
}

impl CspNonce {
    /// A fresh nonce; `None` if the OS random source failed.
    pub fn generate() -> Option<Self> {
        let mut raw = [0u8; 16];
        getrandom::fill(&mut raw).ok()?;
        let mut encoded = [0u8; 24];
        use base64::Engine as _;
        let n = base64::engine::general_purpose::STANDARD
            .encode_slice(raw, &mut encoded)
            .ok()?;
        debug_assert_eq!(n, 24);
        Some(Self { encoded })
    }

    /// The base64 text, for `<script nonce="...">`.
    pub fn as_str(&self) -> &str {
        // Base64 output is ASCII.
        std::str::from_utf8(&self.encoded).unwrap_or_default()
    }
}

impl std::fmt::Debug for CspNonce {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // A nonce is not a secret after the response is sent, but it has no place in logs.
        f.write_str("CspNonce(..)")
    }
}

impl std::fmt::Display for CspNonce {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl<S: Send + Sync> FromRequestParts<S> for CspNonce {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Response> {
        parts.extensions.get::<CspNonce>().copied().ok_or_else(|| {
            // A server misconfiguration (no layer with `csp_nonce`), not a client error.
            tracing::error!("CspNonce extracted but no security-headers layer with csp_nonce runs");
            axum::response::IntoResponse::into_response(
                Problem::new(StatusCode::INTERNAL_SERVER_ERROR)
                    .rejection("security_headers", "nonce_missing"),
            )
        })
    }
}

impl<S: Send + Sync> OptionalFromRequestParts<S> for CspNonce {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Option<Self>, Infallible> {
        Ok(parts.extensions.get::<CspNonce>().copied())
    }
}

// ---------------------------------------------------------------------------
// Compiled configuration

#[derive(Debug)]
struct Fixed {
    name: HeaderName,
    value: HeaderValue,
    force: bool,
}

impl Fixed {
    #[inline]
    fn apply(&self, headers: &mut HeaderMap) {
        match headers.entry(&self.name) {
            Entry::Vacant(v) => {
                v.insert(self.value.clone());
            }
            Entry::Occupied(mut o) => {
                if self.force {
                    // Replaces every existing value: never two fields.
                    o.insert(self.value.clone());
                }
            }
        }
    }
}

/// A CSP with nonce slots: `parts[0] + nonce + parts[1] + nonce + ... + parts[n]`.
#[derive(Debug)]
struct NonceCsp {
    parts: Box<[Box<str>]>,
    len: usize,
    force: bool,
    /// Used when no nonce could be generated: fails closed (no inline code runs).
    fallback: HeaderValue,
}

impl NonceCsp {
    fn render(&self, nonce: &CspNonce) -> Option<HeaderValue> {
        let mut s = String::with_capacity(self.len + 24 * (self.parts.len() - 1));
        for (i, part) in self.parts.iter().enumerate() {
            if i > 0 {
                s.push_str(nonce.as_str());
            }
            s.push_str(part);
        }
        HeaderValue::from_maybe_shared(bytes::Bytes::from(s)).ok()
    }
}

/// Headers a response may carry besides the template's before its map must grow.
const TEMPLATE_HEADROOM: usize = 8;

/// The finished header set for one scheme, hashed once at build time.
#[derive(Debug)]
struct Template {
    headers: HeaderMap,
    /// Names in `headers` whose value beats the handler's.
    forced: Box<[HeaderName]>,
}

impl Template {
    fn new<'a>(fixed: impl Iterator<Item = &'a Fixed>) -> Self {
        let fixed: Vec<&Fixed> = fixed.collect();
        // A clone keeps the index table's size (entries are cloned to their length):
        // room here for the handler's headers and the outer layers' (request id) saves
        // a rehash of the whole map on every response.
        let mut headers = HeaderMap::with_capacity(fixed.len() + TEMPLATE_HEADROOM);
        let mut forced = Vec::new();
        for f in fixed {
            headers.insert(f.name.clone(), f.value.clone());
            if f.force {
                forced.push(f.name.clone());
            }
        }
        Self {
            headers,
            forced: forced.into(),
        }
    }
}

#[derive(Debug)]
struct Shared {
    /// Without HSTS (plain-HTTP requests).
    http: Template,
    /// With HSTS, when configured.
    https: Template,
    nonce_csp: Option<NonceCsp>,
    remove: Box<[HeaderName]>,
    exclude: Option<RouteMatcher>,
}

impl Shared {
    /// Starts from a clone of the pre-hashed template (no per-header hashing for our
    /// headers) and re-inserts the handler's own headers over it, so the handler's
    /// value wins unless the name is forced, and removed names are dropped.
    #[inline]
    fn apply(&self, res: &mut Response, https: bool, nonce: Option<CspNonce>) {
        let template = if https { &self.https } else { &self.http };
        let headers = res.headers_mut();
        let own = std::mem::replace(headers, template.headers.clone());
        if !own.is_empty() {
            headers.reserve(own.len());
            let mut own = own.into_iter().peekable();
            while let Some((name, value)) = own.next() {
                // `None`: a further value of a name dropped just before (the further
                // values of a kept name are taken with its first, below).
                let Some(name) = name else { continue };
                if self.remove.contains(&name) || template.forced.contains(&name) {
                    continue;
                }
                if matches!(own.peek(), Some((None, _))) {
                    // Further values of the same name: keep them all, as the handler did.
                    headers.insert(&name, value);
                    while let Some((_, value)) = own.next_if(|(n, _)| n.is_none()) {
                        headers.append(&name, value);
                    }
                } else {
                    // The common case, one value: the name moves into the map (a
                    // custom name is not cloned).
                    headers.insert(name, value);
                }
            }
        }
        if let Some(csp) = &self.nonce_csp {
            let value = nonce
                .and_then(|n| csp.render(&n))
                .unwrap_or_else(|| csp.fallback.clone());
            Fixed {
                name: header::CONTENT_SECURITY_POLICY,
                value,
                force: csp.force,
            }
            .apply(headers);
            if let Some(n) = nonce {
                res.extensions_mut().insert(n);
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Layer, builder

/// Layer for `[security_headers]`: see the [module docs](self).
#[derive(Debug, Clone)]
pub struct SecurityHeadersLayer {
    shared: Arc<Shared>,
}

/// Builder for [`SecurityHeadersLayer`]; every check runs in [`build`](Self::build).
#[derive(Debug, Clone)]
#[must_use]
pub struct SecurityHeadersBuilder {
    config: SecurityHeadersConfig,
}

impl SecurityHeadersBuilder {
    /// Sets (or adds) a header value, replacing the profile's.
    pub fn set(mut self, name: &str, value: &str) -> Self {
        self.config.set.insert(name.to_owned(), value.to_owned());
        self
    }

    /// Never sends this header: not added, and stripped from every response.
    pub fn remove(mut self, name: &str) -> Self {
        self.config.remove.push(name.to_owned());
        self
    }

    /// Palisade's value for this header replaces the handler's (`"*"`: all headers).
    pub fn override_header(mut self, name: &str) -> Self {
        self.config.override_headers.push(name.to_owned());
        self
    }

    /// Routes (see [`crate::route_match`]) that get no security headers.
    pub fn exclude_path(mut self, pattern: &str) -> Self {
        self.config.exclude_paths.push(pattern.to_owned());
        self
    }

    /// A fresh nonce per request in the CSP; see [`CspNonce`].
    pub fn csp_nonce(mut self, on: bool) -> Self {
        self.config.csp_nonce = on;
        self
    }

    /// HSTS parameters.
    pub fn hsts(mut self, max_age_s: u64, include_subdomains: bool, preload: bool) -> Self {
        self.config.hsts_max_age_s = max_age_s;
        self.config.hsts_include_subdomains = include_subdomains;
        self.config.hsts_preload = preload;
        self
    }

    /// Validates everything and builds the layer.
    pub fn build(self) -> Result<SecurityHeadersLayer, ConfigError> {
        compile(&self.config).map(|shared| SecurityHeadersLayer {
            shared: Arc::new(shared),
        })
    }
}

impl SecurityHeadersLayer {
    /// Builds the layer from its config section; `None` when there is nothing to do.
    pub fn from_config(
        config: &SecurityHeadersConfig,
        _ctx: &BuildContext,
    ) -> Result<Option<Self>, ConfigError> {
        if config.profile == Profile::Off && config.set.is_empty() && config.remove.is_empty() {
            // Still validate the keys that would be ignored, so typos surface.
            compile(config)?;
            return Ok(None);
        }
        SecurityHeadersBuilder {
            config: config.clone(),
        }
        .build()
        .map(Some)
    }

    /// A builder starting from `profile` with default HSTS.
    pub fn builder(profile: Profile) -> SecurityHeadersBuilder {
        SecurityHeadersBuilder {
            config: SecurityHeadersConfig {
                profile,
                ..SecurityHeadersConfig::default()
            },
        }
    }

    /// The `api` profile with defaults.
    pub fn api() -> Self {
        Self::builder(Profile::Api)
            .build()
            .expect("the built-in api profile is valid")
    }

    /// The `web` profile (helmet's defaults).
    pub fn web() -> Self {
        Self::builder(Profile::Web)
            .build()
            .expect("the built-in web profile is valid")
    }
}

fn known_name(name: &str) -> Result<HeaderName, String> {
    let parsed = HeaderName::from_bytes(name.trim().as_bytes())
        .map_err(|_| format!("{name:?} is not a valid header name"))?;
    // Cloned into every response with the template: `'static` bytes clone for free.
    Ok(KNOWN.iter().find(|k| **k == parsed.as_str()).map_or_else(
        || crate::intern::static_name(&parsed),
        |k| HeaderName::from_static(k),
    ))
}

fn header_value(value: Cow<'static, str>) -> Option<HeaderValue> {
    let checked = HeaderValue::from_str(&value).ok()?;
    Some(match value {
        Cow::Borrowed(s) => HeaderValue::from_static(s),
        Cow::Owned(_) => crate::intern::static_value(&checked),
    })
}

fn compile(cfg: &SecurityHeadersConfig) -> Result<Shared, ConfigError> {
    let mut errors = ConfigError::default();

    let base: &[(&str, &str)] = match cfg.profile {
        Profile::Api => API,
        Profile::Web => WEB,
        Profile::Off => &[],
    };
    let mut entries: Vec<(HeaderName, Cow<'static, str>)> = base
        .iter()
        .map(|(n, v)| (HeaderName::from_static(n), Cow::Borrowed(*v)))
        .collect();

    let mut remove: Vec<HeaderName> = match cfg.profile {
        Profile::Off => Vec::new(),
        _ => REMOVED.iter().map(|n| HeaderName::from_static(n)).collect(),
    };
    let mut removed_by_user = Vec::new();
    for (i, name) in cfg.remove.iter().enumerate() {
        match known_name(name) {
            Ok(n) if FORBIDDEN.contains(&n.as_str()) => errors.push(
                format!("{KEY}.remove[{i}]"),
                format!("{name:?} is not a security header; palisade does not remove it"),
            ),
            Ok(n) => {
                removed_by_user.push(n.clone());
                if !remove.contains(&n) {
                    remove.push(n);
                }
            }
            Err(msg) => errors.push(format!("{KEY}.remove[{i}]"), msg),
        }
    }

    for (name, value) in &cfg.set {
        let key = format!("{KEY}.set.{name}");
        let n = match known_name(name) {
            Ok(n) => n,
            Err(msg) => {
                errors.push(key, msg);
                continue;
            }
        };
        if FORBIDDEN.contains(&n.as_str()) {
            errors.push(
                key,
                format!(
                    "{name:?} frames the message or belongs to the handler; not a security header"
                ),
            );
            continue;
        }
        if n == header::STRICT_TRANSPORT_SECURITY {
            errors.push(
                key,
                "set HSTS with hsts_max_age_s, hsts_include_subdomains and hsts_preload",
            );
            continue;
        }
        if removed_by_user.contains(&n) {
            errors.push(key, format!("{name:?} is also listed in {KEY}.remove"));
            continue;
        }
        if let Err(msg) = validate_value(&n, value) {
            errors.push(key, msg);
            continue;
        }
        // Nothing else may remove what the user set explicitly (e.g. `server`).
        remove.retain(|r| *r != n);
        match entries.iter_mut().find(|(en, _)| *en == n) {
            Some(entry) => entry.1 = Cow::Owned(value.trim().to_owned()),
            None => entries.push((n, Cow::Owned(value.trim().to_owned()))),
        }
    }
    entries.retain(|(n, _)| !remove.contains(n));

    // HSTS
    if cfg.hsts_preload {
        if cfg.hsts_max_age_s < 31_536_000 {
            errors.push(
                format!("{KEY}.hsts_preload"),
                "preload requires hsts_max_age_s >= 31536000 (one year), see hstspreload.org",
            );
        }
        if !cfg.hsts_include_subdomains {
            errors.push(
                format!("{KEY}.hsts_preload"),
                "preload requires hsts_include_subdomains = true, see hstspreload.org",
            );
        }
    }
    let hsts_value: Option<Cow<'static, str>> = (cfg.profile != Profile::Off
        && !remove.contains(&header::STRICT_TRANSPORT_SECURITY))
    .then(|| {
        if cfg.hsts_max_age_s == 31_536_000 && cfg.hsts_include_subdomains && !cfg.hsts_preload {
            Cow::Borrowed("max-age=31536000; includeSubDomains")
        } else {
            let mut v = format!("max-age={}", cfg.hsts_max_age_s);
            if cfg.hsts_include_subdomains {
                v.push_str("; includeSubDomains");
            }
            if cfg.hsts_preload {
                v.push_str("; preload");
            }
            Cow::Owned(v)
        }
    });

    // Which headers beat the handler's.
    let all_forced = cfg.override_headers.iter().any(|n| n.trim() == "*");
    let mut forced = Vec::new();
    for (i, name) in cfg.override_headers.iter().enumerate() {
        if name.trim() == "*" {
            continue;
        }
        match known_name(name) {
            Ok(n) => {
                let sent = entries.iter().any(|(en, _)| *en == n)
                    || (n == header::STRICT_TRANSPORT_SECURITY && hsts_value.is_some());
                if sent {
                    forced.push(n);
                } else {
                    errors.push(
                        format!("{KEY}.override_headers[{i}]"),
                        format!("palisade does not send {name:?} with this configuration"),
                    );
                }
            }
            Err(msg) => errors.push(format!("{KEY}.override_headers[{i}]"), msg),
        }
    }
    let is_forced = |n: &HeaderName| all_forced || forced.contains(n);

    // Nonces
    let mut nonce_csp = None;
    if cfg.csp_nonce {
        match entries
            .iter()
            .position(|(n, _)| *n == header::CONTENT_SECURITY_POLICY)
        {
            None => errors.push(
                format!("{KEY}.csp_nonce"),
                "csp_nonce needs a Content-Security-Policy (the profile's or one in `set`)",
            ),
            Some(pos) => {
                let (_, csp) = entries.remove(pos);
                match nonce_parts(&csp) {
                    Some(parts) => {
                        let len = parts.iter().map(|p| p.len()).sum();
                        nonce_csp = header_value(csp.clone()).map(|fallback| NonceCsp {
                            parts,
                            len,
                            force: is_forced(&header::CONTENT_SECURITY_POLICY),
                            fallback,
                        });
                    }
                    None => errors.push(
                        format!("{KEY}.csp_nonce"),
                        "csp_nonce needs a script-src, style-src or default-src directive in the CSP",
                    ),
                }
            }
        }
    }

    let mut exclude = Vec::new();
    for (i, p) in cfg.exclude_paths.iter().enumerate() {
        match PathPattern::parse(p) {
            Ok(p) => exclude.push(p),
            Err(msg) => errors.push(format!("{KEY}.exclude_paths[{i}]"), msg),
        }
    }

    let fixed: Vec<Fixed> = entries
        .iter()
        .filter_map(|(n, v)| {
            header_value(v.clone()).map(|value| Fixed {
                name: n.clone(),
                value,
                force: is_forced(n),
            })
        })
        .collect();
    let hsts = hsts_value.and_then(header_value).map(|value| Fixed {
        name: header::STRICT_TRANSPORT_SECURITY,
        value,
        force: is_forced(&header::STRICT_TRANSPORT_SECURITY),
    });
    errors.and_ok(Shared {
        http: Template::new(fixed.iter()),
        https: Template::new(fixed.iter().chain(&hsts)),
        nonce_csp,
        remove: remove.into(),
        exclude: (!exclude.is_empty()).then(|| RouteMatcher::from_patterns(exclude, Vec::new())),
    })
}

/// Splits a CSP into the parts around its nonce slots: one in `script-src` and one in
/// `style-src`, or one in `default-src` when neither is present. A directive whose only
/// source is `'none'` has it replaced (`'none'` with other sources is ignored by browsers).
fn nonce_parts(csp: &str) -> Option<Box<[Box<str>]>> {
    // (start, end) of each directive's trimmed text, with its name.
    let mut directives = Vec::new();
    let mut offset = 0;
    for piece in csp.split(';') {
        let lead = piece.len() - piece.trim_start().len();
        let text = piece.trim();
        if !text.is_empty() {
            let start = offset + lead;
            let name = text.split_ascii_whitespace().next().unwrap_or_default();
            directives.push((name.to_ascii_lowercase(), start, start + text.len()));
        }
        offset += piece.len() + 1;
    }
    let mut targets: Vec<&(String, usize, usize)> = directives
        .iter()
        .filter(|(n, _, _)| n == "script-src" || n == "style-src")
        .collect();
    if targets.is_empty() {
        targets = directives
            .iter()
            .filter(|(n, _, _)| n == "default-src")
            .collect();
    }
    if targets.is_empty() {
        return None;
    }
    let mut parts = Vec::new();
    let mut current = String::new();
    let mut last = 0;
    for (name, start, end) in targets {
        let text = &csp[*start..*end];
        let sources = text[name.len()..].trim();
        if sources == "'none'" {
            // Replace the `'none'` token.
            let none_start = start + text.rfind("'none'").unwrap_or(0);
            current.push_str(&csp[last..none_start]);
            current.push_str("'nonce-");
            last = none_start + "'none'".len();
        } else {
            current.push_str(&csp[last..*end]);
            current.push_str(" 'nonce-");
            last = *end;
        }
        parts.push(std::mem::take(&mut current).into_boxed_str());
        current.push('\'');
    }
    current.push_str(&csp[last..]);
    parts.push(current.into_boxed_str());
    Some(parts.into())
}

// ---------------------------------------------------------------------------
// Validation

fn one_of(value: &str, allowed: &[&str]) -> Result<(), String> {
    if allowed.iter().any(|a| a.eq_ignore_ascii_case(value)) {
        Ok(())
    } else {
        Err(format!("{value:?} is not one of {}", allowed.join(", ")))
    }
}

/// Checks a configured value for a header; known headers get their grammar checked.
pub(crate) fn validate_value(name: &HeaderName, raw: &str) -> Result<(), String> {
    let value = raw.trim();
    if value.is_empty() {
        return Err("empty value; list the header in `remove` to not send it".to_owned());
    }
    if HeaderValue::from_str(value).is_err() || value.bytes().any(|b| b == b'\t') {
        return Err(format!(
            "{value:?} is not a valid header value (control characters such as CR/LF or non-ASCII)"
        ));
    }
    match name.as_str() {
        "content-security-policy" | "content-security-policy-report-only" => validate_csp(value),
        "x-frame-options" => one_of(value, &["DENY", "SAMEORIGIN"]),
        "x-content-type-options" => one_of(value, &["nosniff"]),
        "referrer-policy" => {
            for token in value.split(',') {
                one_of(
                    token.trim(),
                    &[
                        "no-referrer",
                        "no-referrer-when-downgrade",
                        "same-origin",
                        "origin",
                        "strict-origin",
                        "origin-when-cross-origin",
                        "strict-origin-when-cross-origin",
                        "unsafe-url",
                    ],
                )?;
            }
            Ok(())
        }
        "cross-origin-opener-policy" => one_of(
            value,
            &[
                "same-origin",
                "same-origin-allow-popups",
                "noopener-allow-popups",
                "unsafe-none",
            ],
        ),
        "cross-origin-resource-policy" => {
            one_of(value, &["same-origin", "same-site", "cross-origin"])
        }
        "cross-origin-embedder-policy" => {
            one_of(value, &["require-corp", "credentialless", "unsafe-none"])
        }
        "origin-agent-cluster" => one_of(value, &["?1", "?0"]),
        "x-permitted-cross-domain-policies" => one_of(
            value,
            &[
                "none",
                "master-only",
                "by-content-type",
                "by-ftp-filename",
                "all",
            ],
        ),
        "x-dns-prefetch-control" => one_of(value, &["off", "on"]),
        "x-download-options" => one_of(value, &["noopen"]),
        "x-xss-protection" => one_of(value, &["0", "1", "1; mode=block"]),
        "permissions-policy" => validate_permissions_policy(value),
        _ => Ok(()),
    }
}

const CSP_DIRECTIVES: &[&str] = &[
    "base-uri",
    "block-all-mixed-content",
    "child-src",
    "connect-src",
    "default-src",
    "fenced-frame-src",
    "font-src",
    "form-action",
    "frame-ancestors",
    "frame-src",
    "img-src",
    "manifest-src",
    "media-src",
    "object-src",
    "report-to",
    "report-uri",
    "require-trusted-types-for",
    "sandbox",
    "script-src",
    "script-src-attr",
    "script-src-elem",
    "style-src",
    "style-src-attr",
    "style-src-elem",
    "trusted-types",
    "upgrade-insecure-requests",
    "worker-src",
];

const CSP_KEYWORDS: &[&str] = &[
    "none",
    "self",
    "strict-dynamic",
    "report-sample",
    "inline-speculation-rules",
    "unsafe-inline",
    "unsafe-eval",
    "unsafe-hashes",
    "wasm-unsafe-eval",
    "unsafe-allow-redirects",
];

/// Validates a CSP: known directive names, each once; no `,` (which would start a
/// second policy); keywords quoted; no static nonces; hashes well-formed.
pub(crate) fn validate_csp(csp: &str) -> Result<(), String> {
    if csp.contains(',') {
        return Err("a ',' in a CSP starts a second policy; separate directives with ';'".into());
    }
    let mut seen: Vec<String> = Vec::new();
    for directive in csp.split(';') {
        let mut tokens = directive.split_ascii_whitespace();
        let Some(name) = tokens.next() else { continue };
        let lname = name.to_ascii_lowercase();
        if !CSP_DIRECTIVES.contains(&lname.as_str()) {
            return Err(format!("unknown CSP directive {name:?}"));
        }
        if seen.contains(&lname) {
            return Err(format!(
                "CSP directive {name:?} appears twice (browsers ignore the second)"
            ));
        }
        seen.push(lname);
        for token in tokens {
            let lower = token.to_ascii_lowercase();
            if CSP_KEYWORDS.contains(&lower.as_str())
                || ["nonce-", "sha256-", "sha384-", "sha512-"]
                    .iter()
                    .any(|p| lower.starts_with(p))
            {
                return Err(format!("{token:?} in {name:?} must be quoted: '{token}'"));
            }
            if let Some(inner) = token.strip_prefix('\'') {
                let Some(inner) = inner.strip_suffix('\'') else {
                    return Err(format!("unterminated quote in {token:?} ({name:?})"));
                };
                let inner = inner.to_ascii_lowercase();
                if inner.starts_with("nonce-") {
                    return Err(format!(
                        "a fixed nonce in {name:?} is replayable; use csp_nonce = true"
                    ));
                }
                let hash_ok = ["sha256-", "sha384-", "sha512-"].iter().any(|p| {
                    inner.strip_prefix(p).is_some_and(|b64| {
                        !b64.is_empty()
                            && b64.bytes().all(|b| {
                                b.is_ascii_alphanumeric()
                                    || matches!(b, b'+' | b'/' | b'-' | b'_' | b'=')
                            })
                    })
                });
                if !hash_ok && !CSP_KEYWORDS.contains(&inner.as_str()) {
                    return Err(format!("unknown CSP keyword {token:?} in {name:?}"));
                }
            } else if token.contains('\'') || token.contains('"') {
                return Err(format!("stray quote in {token:?} ({name:?})"));
            }
        }
    }
    if seen.is_empty() {
        return Err("empty Content-Security-Policy".into());
    }
    Ok(())
}

fn validate_permissions_policy(value: &str) -> Result<(), String> {
    for member in value.split(',') {
        let member = member.trim();
        let Some((feature, allow)) = member.split_once('=') else {
            return Err(format!(
                "{member:?}: expected feature=allowlist, e.g. camera=() or fullscreen=(self)"
            ));
        };
        if feature.is_empty()
            || !feature
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return Err(format!("{feature:?} is not a feature name"));
        }
        let allow = allow.trim();
        let ok = allow == "*"
            || allow == "self"
            || allow.starts_with('"')
            || (allow.starts_with('(') && allow.ends_with(')'));
        if !ok {
            return Err(format!(
                "{member:?}: allowlist must be *, self, \"origin\" or a list like (self \"https://a.example\")"
            ));
        }
    }
    Ok(())
}

impl<S> Layer<S> for SecurityHeadersLayer {
    type Service = SecurityHeaders<S>;
    fn layer(&self, inner: S) -> SecurityHeaders<S> {
        SecurityHeaders {
            inner,
            shared: self.shared.clone(),
        }
    }
}

// ---------------------------------------------------------------------------
// Service

/// Service made by [`SecurityHeadersLayer`].
#[derive(Debug, Clone)]
pub struct SecurityHeaders<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S> Service<Request> for SecurityHeaders<S>
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

    fn call(&mut self, mut req: Request) -> Self::Future {
        let state = self.shared.start(&mut req, |req| client_info(req).scheme);
        ResponseFuture {
            inner: self.inner.call(req),
            shared: self.shared.clone(),
            state,
        }
    }
}

impl SecurityHeadersLayer {
    /// What [`SecurityHeaders`] does before its inner service (for the stack, which
    /// runs the layer without a level of its own).
    #[inline]
    pub(crate) fn start(&self, req: &mut Request, scheme: Scheme) -> State {
        self.shared.start(req, |_| scheme)
    }

    /// What [`SecurityHeaders`] does to the response.
    #[inline]
    pub(crate) fn respond(&self, state: State, res: &mut Response) {
        self.shared.respond(state, res);
    }
}

impl Shared {
    /// Whether the response gets the headers (and which set), and the CSP nonce, which
    /// goes into the request's extensions for the handler's templates.
    /// `scheme` is asked only when the HTTPS set differs from the HTTP one.
    #[inline]
    fn start(&self, req: &mut Request, scheme: impl FnOnce(&Request) -> Scheme) -> State {
        let apply = match &self.exclude {
            Some(m) => !m.matches_path(req.uri().path()),
            None => true,
        };
        let https = apply
            && self.https.headers.len() > self.http.headers.len()
            && scheme(req) == Scheme::Https;
        let nonce = if apply && self.nonce_csp.is_some() {
            let n = CspNonce::generate();
            match n {
                Some(n) => {
                    req.extensions_mut().insert(n);
                }
                None => tracing::error!(
                    "OS random source failed: serving the CSP without a nonce (inline code blocked)"
                ),
            }
            n
        } else {
            None
        };
        State {
            apply,
            https,
            nonce,
        }
    }

    #[inline]
    fn respond(&self, state: State, res: &mut Response) {
        if state.apply {
            self.apply(res, state.https, state.nonce);
        } else {
            let headers = res.headers_mut();
            for name in &*self.remove {
                headers.remove(name);
            }
        }
    }
}

/// One response's part of the headers: whether they apply, which set, the nonce.
#[derive(Debug, Clone, Copy)]
pub(crate) struct State {
    apply: bool,
    https: bool,
    nonce: Option<CspNonce>,
}

pin_project! {
    /// Response future of [`SecurityHeaders`].
    #[derive(Debug)]
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        shared: Arc<Shared>,
        state: State,
    }
}

impl<F> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response, Infallible>>,
{
    type Output = Result<Response, Infallible>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let Ok(mut res) = ready!(this.inner.poll(cx));
        this.shared.respond(*this.state, &mut res);
        Poll::Ready(Ok(res))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err_keys(cfg: &SecurityHeadersConfig) -> ConfigError {
        compile(cfg).unwrap_err()
    }

    fn cfg() -> SecurityHeadersConfig {
        SecurityHeadersConfig::default()
    }

    #[test]
    fn builtin_profiles_are_valid() {
        for p in [Profile::Api, Profile::Web, Profile::Off] {
            compile(&SecurityHeadersConfig {
                profile: p,
                ..cfg()
            })
            .unwrap();
        }
        // The profile values pass the same validation as user values.
        for (n, v) in API.iter().chain(WEB) {
            validate_value(&HeaderName::from_static(n), v).unwrap();
        }
    }

    /// The `api` set plus what the full stack adds around it (the handler's two headers,
    /// two rate-limit headers inside, the request id outside) fits the map the
    /// template's clone starts with: no rehash of the whole map per response.
    #[test]
    fn a_full_stack_response_fits_the_template_without_growing() {
        let shared = compile(&SecurityHeadersConfig {
            profile: Profile::Api,
            ..cfg()
        })
        .unwrap();
        let mut res = Response::new(axum::body::Body::empty());
        for name in [
            "content-type",
            "content-length",
            "ratelimit-policy",
            "ratelimit",
        ] {
            res.headers_mut()
                .insert(HeaderName::from_static(name), HeaderValue::from_static("x"));
        }
        let capacity = shared.http.headers.capacity();
        shared.apply(&mut res, false, None);
        res.headers_mut()
            .insert("x-request-id", HeaderValue::from_static("id"));
        assert!(res.headers().len() > 12, "{} headers", res.headers().len());
        assert_eq!(res.headers().capacity(), capacity);
    }

    /// The handler's headers go back over the template in order: every value of a kept
    /// name (the first replaces the profile's), none of a removed or forced name, and a
    /// removed name's further values do not attach to the next name.
    #[test]
    fn handler_headers_keep_all_their_values_and_removed_ones_leave_none() {
        let shared = compile(&SecurityHeadersConfig {
            profile: Profile::Api,
            remove: vec!["x-drop".to_owned()],
            override_headers: vec!["referrer-policy".to_owned()],
            ..cfg()
        })
        .unwrap();
        let mut res = Response::new(axum::body::Body::empty());
        let h = res.headers_mut();
        for (name, value) in [
            ("x-drop", "1"),
            ("x-drop", "2"),
            ("x-frame-options", "SAMEORIGIN"),
            ("x-frame-options", "ALLOWALL"),
            ("referrer-policy", "unsafe-url"),
            ("referrer-policy", "origin"),
            ("x-keep", "a"),
            ("x-keep", "b"),
            ("x-keep", "c"),
            ("x-single", "s"),
        ] {
            h.append(
                HeaderName::from_static(name),
                HeaderValue::from_static(value),
            );
        }
        shared.apply(&mut res, false, None);
        let all = |n: &str| -> Vec<&str> {
            res.headers()
                .get_all(n)
                .iter()
                .map(|v| v.to_str().unwrap())
                .collect()
        };
        assert!(all("x-drop").is_empty());
        assert_eq!(all("x-frame-options"), ["SAMEORIGIN", "ALLOWALL"]);
        assert_eq!(
            all("referrer-policy"),
            ["no-referrer"],
            "forced: the profile's"
        );
        assert_eq!(all("x-keep"), ["a", "b", "c"]);
        assert_eq!(all("x-single"), ["s"]);
        assert_eq!(all("x-content-type-options"), ["nosniff"]);
    }

    #[test]
    fn csp_grammar() {
        assert!(validate_csp("default-src 'self'; img-src https: data:").is_ok());
        assert!(validate_csp(HELMET_CSP).is_ok());
        assert!(
            validate_csp("default-src self")
                .unwrap_err()
                .contains("quoted")
        );
        assert!(
            validate_csp("default-src 'none'; default-src 'self'")
                .unwrap_err()
                .contains("twice")
        );
        assert!(
            validate_csp("defualt-src 'self'")
                .unwrap_err()
                .contains("unknown")
        );
        assert!(validate_csp("default-src 'self', img-src *").is_err());
        assert!(
            validate_csp("script-src 'nonce-abc'")
                .unwrap_err()
                .contains("csp_nonce")
        );
        assert!(validate_csp("script-src 'sha256-abc='").is_ok());
        assert!(validate_csp("script-src 'unsafe-inlin'").is_err());
        assert!(validate_csp("script-src 'self").is_err());
        assert!(validate_csp(" ; ").is_err());
    }

    #[test]
    fn bad_values_name_their_key() {
        let mut c = cfg();
        c.set
            .insert("x-frame-options".into(), "ALLOW-FROM x".into());
        c.set
            .insert("content-security-policy".into(), "default-src self".into());
        c.set.insert("x-custom".into(), "a\u{7f}b".into());
        c.set.insert("bad name".into(), "x".into());
        c.set.insert("content-length".into(), "1".into());
        c.set
            .insert("strict-transport-security".into(), "max-age=1".into());
        c.remove.push("host".into());
        c.override_headers.push("permissions-policy".into());
        c.exclude_paths.push("nope".into());
        c.hsts_preload = true;
        c.hsts_max_age_s = 10;
        let e = err_keys(&c);
        for k in [
            "security_headers.set.x-frame-options",
            "security_headers.set.content-security-policy",
            "security_headers.set.x-custom",
            "security_headers.set.bad name",
            "security_headers.set.content-length",
            "security_headers.set.strict-transport-security",
            "security_headers.remove[0]",
            "security_headers.override_headers[0]",
            "security_headers.exclude_paths[0]",
            "security_headers.hsts_preload",
        ] {
            assert!(e.has_key(k), "missing {k} in {e}");
        }
    }

    #[test]
    fn nonce_slots() {
        let parts = nonce_parts(HELMET_CSP).unwrap();
        assert_eq!(parts.len(), 3);
        let joined = parts.join("N");
        assert!(joined.contains(";script-src 'self' 'nonce-N';"));
        assert!(joined.contains(";style-src 'self' https: 'unsafe-inline' 'nonce-N';"));
        validate_csp(&joined.replace("'nonce-N'", "'self'")).unwrap();

        let parts = nonce_parts("default-src 'none'; frame-ancestors 'none'").unwrap();
        assert_eq!(
            parts.join("N"),
            "default-src 'nonce-N'; frame-ancestors 'none'"
        );
        assert!(nonce_parts("frame-ancestors 'none'").is_none());
    }

    #[test]
    fn nonces_are_fresh_and_128_bit() {
        let a = CspNonce::generate().unwrap();
        let b = CspNonce::generate().unwrap();
        assert_ne!(a, b);
        assert_eq!(a.as_str().len(), 24);
        assert!(
            a.as_str().ends_with("=="),
            "16 bytes encode to 22 chars + padding"
        );
    }

    #[test]
    fn set_overrides_profile_and_remove_drops() {
        let mut c = cfg();
        c.set.insert("X-Frame-Options".into(), "SAMEORIGIN".into());
        c.set.insert(
            "permissions-policy".into(),
            "camera=(), geolocation=(self)".into(),
        );
        c.remove.push("x-dns-prefetch-control".into());
        let s = compile(&c).unwrap();
        let get = |n: &str| s.http.headers.get(n).cloned();
        assert_eq!(get("x-frame-options").unwrap(), "SAMEORIGIN");
        assert_eq!(
            get("permissions-policy").unwrap(),
            "camera=(), geolocation=(self)"
        );
        assert!(get("x-dns-prefetch-control").is_none());
        assert!(s.remove.contains(&header::X_DNS_PREFETCH_CONTROL));
    }
}
