//! Structured access logs: one span and one completion event per request.
//!
//! Every request gets one `tracing` span, `http.server` (target `palisade::access`,
//! level `INFO`), carrying the fields that correlate events: `request_id`,
//! `trace_id`, `span_id` and `http.route`; every event your handler logs inside it
//! inherits them. The span carries nothing more because a span's fields are stored
//! per request and, with many JSON formatters, re-read for every event inside it.
//! When the response body has been sent, **one** event closes the request with the
//! rest of the request's description and what is known at the end:
//!
//! | field | from |
//! |---|---|
//! | `request_id` | [`RequestId`](crate::request_id::RequestId) (feature `request-id`) |
//! | `trace_id`, `span_id` | a valid W3C `traceparent` header |
//! | `http.request.method` | the method |
//! | `http.route` | the axum route template ([`MatchedPath`]), absent when unmatched |
//! | `url.path`, `url.query` | the URI; values of `redact_query_params` become `[REDACTED]` |
//! | `url.scheme`, `client.address` | [`client_info`]: trusted proxies only |
//! | `user_agent.original` | the `User-Agent` header |
//! | `http.response.status_code` | the status |
//! | `duration_ms` | request start to last body byte, a number (read from the calibrated TSC clock of [`quanta`](https://docs.rs/quanta), ~9 ns a read against 21–49 ns for `std::time::Instant` on the VMs measured) |
//! | `http.response.body.size` | bytes of body actually sent |
//! | `rate_limit.outcome`, `rate_limit.policy` | [`RateLimitOutcome`] |
//! | `auth.scheme`, `auth.outcome`, `auth.identity` | [`AuthOutcome`] |
//! | `cache.status`, `cache.reason` | [`CacheOutcome`] |
//! | `rejection.layer`, `rejection.reason` | [`Rejection`] of a palisade-made response |
//!
//! The level follows the outcome: `INFO` for `1xx`–`3xx`, `INFO` or `WARN` for `4xx`
//! (`[logging] client_error_level`), `ERROR` for `5xx`. When the client goes away
//! first (the response future or the body is dropped before the end), the request
//! ends instead with one `WARN` event "request aborted by the client" carrying
//! `error.type = "client_disconnected"`, the elapsed time and the bytes sent.
//!
//! No request header other than `User-Agent` is ever logged, so `Authorization`,
//! `Cookie`, API keys and `Set-Cookie` cannot leak; query parameters named like
//! credentials are redacted (see `redact_query_params`).
//!
//! With [`telemetry::init`](crate::telemetry::init) and `format = "json"` a request
//! produces one line like this (span fields flattened to the top level):
//!
//! ```json
//! {"timestamp":"2026-11-23T12:00:00.123456Z","level":"WARN","target":"palisade::access",
//!  "message":"request completed","http.response.status_code":429,"duration_ms":0.412,
//!  "http.response.body.size":97,"rate_limit.outcome":"limited","rate_limit.policy":"per_ip",
//!  "rejection.layer":"rate_limit","rejection.reason":"limited","http.request.method":"GET",
//!  "url.path":"/items/7","url.query":"token=[REDACTED]&page=2","url.scheme":"https",
//!  "client.address":"203.0.113.7","user_agent.original":"curl/8.5.0",
//!  "request_id":"019ab1c4-3f2e-7d10-8a4b-5c6d7e8f9a0b","http.route":"/items/{id}"}
//! ```
//!
//! Apply it with `Router::layer` (as [`Palisade`](crate::Palisade) does), so that the
//! route template is known:
//!
//! ```
//! use axum::{Router, routing::get};
//! use palisade::request_id::RequestIdLayer;
//! use palisade::trace::TraceLayer;
//! use tower::ServiceExt;
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let app: Router = Router::new()
//!     .route("/items/{id}", get(|| async { "item" }))
//!     .layer(tower::ServiceBuilder::new().layer(RequestIdLayer::new()).layer(TraceLayer::new()));
//! // With `palisade::telemetry::init(&config.logging)` at start-up, this request
//! // writes one `request completed` line with `"http.route":"/items/{id}"`.
//! let req = http::Request::get("/items/7?token=abc").body(axum::body::Body::empty()).unwrap();
//! let res = app.oneshot(req).await.unwrap();
//! assert_eq!(res.status(), 200);
//! # }
//! ```
//!
//! If the filter disables the `INFO` span (say `level = "warn"`), the `WARN` and
//! `ERROR` lines still name the request: they then carry `request_id` and
//! `http.route` themselves.

use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{MatchedPath, Request};
use axum::response::Response;
use bytes::Bytes;
use http::HeaderValue;
use http::header::USER_AGENT;
use http_body::Frame;
use quanta::Instant;
use tower::{Layer, Service};
use tracing::{Level, Span};

use crate::client_ip::client_info;
use crate::config::LoggingConfig;
use crate::config::logging::ClientErrorLevel;
use crate::error::ConfigError;
use crate::outcome::{AuthOutcome, CacheOutcome, RateLimitOutcome};
use crate::problem::Rejection;
use crate::route_match::RouteMatcher;
use crate::stack::BuildContext;

/// The `tracing` target of the access-log span and events.
pub const TARGET: &str = "palisade::access";

/// Longest query parameter name that can be redacted.
const MAX_PARAM_NAME: usize = 64;

/// W3C trace context. A `&str` lookup parses the name on every request.
pub(crate) const TRACEPARENT: http::HeaderName = http::HeaderName::from_static("traceparent");

#[derive(Debug)]
struct Settings {
    redact: Box<[Box<str>]>,
    exclude: Option<RouteMatcher>,
    client_error_level: Level,
}

/// Layer writing the access log; see the [module docs](self).
#[derive(Debug, Clone)]
pub struct TraceLayer {
    settings: Arc<Settings>,
}

impl Default for TraceLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl TraceLayer {
    /// The defaults of `[logging]`.
    pub fn new() -> Self {
        match Self::build(&LoggingConfig::default()) {
            Ok(layer) => layer,
            // The default configuration is valid (tested).
            Err(_) => Self {
                settings: Arc::new(Settings {
                    redact: Box::new([]),
                    exclude: None,
                    client_error_level: Level::INFO,
                }),
            },
        }
    }

    /// Builds the layer from `[logging]`; `None` when `access_log = false`.
    pub fn from_config(
        config: &LoggingConfig,
        _ctx: &BuildContext,
    ) -> Result<Option<Self>, ConfigError> {
        let layer = Self::build(config)?;
        Ok(config.access_log.then_some(layer))
    }

    fn build(config: &LoggingConfig) -> Result<Self, ConfigError> {
        // Calibrates the duration clock (once a process, up to 200 ms) now, at start-up,
        // rather than in the first request.
        let _ = Instant::now();
        let mut errors = ConfigError::default();
        #[cfg(feature = "trace")]
        errors.collect(crate::telemetry::parse_env_filter(&config.level));
        let mut redact = Vec::with_capacity(config.redact_query_params.len());
        for (i, name) in config.redact_query_params.iter().enumerate() {
            if name.is_empty() || name.len() > MAX_PARAM_NAME {
                errors.push(
                    format!("logging.redact_query_params[{i}]"),
                    format!("must be 1 to {MAX_PARAM_NAME} characters"),
                );
            } else {
                redact.push(name.to_ascii_lowercase().into_boxed_str());
            }
        }
        let exclude = if config.exclude_paths.is_empty() {
            None
        } else {
            errors.collect(RouteMatcher::compile("logging", &config.exclude_paths, &[]))
        };
        let client_error_level = match config.client_error_level {
            ClientErrorLevel::Warn => Level::WARN,
            _ => Level::INFO,
        };
        errors.and_ok(Self {
            settings: Arc::new(Settings {
                redact: redact.into_boxed_slice(),
                exclude,
                client_error_level,
            }),
        })
    }
}

impl<S> Layer<S> for TraceLayer {
    type Service = Trace<S>;
    fn layer(&self, inner: S) -> Trace<S> {
        Trace {
            inner,
            settings: self.settings.clone(),
        }
    }
}

/// Service made by [`TraceLayer`].
#[derive(Debug, Clone)]
pub struct Trace<S> {
    inner: S,
    settings: Arc<Settings>,
}

impl<S> Service<Request> for Trace<S>
where
    S: Service<Request, Response = Response, Error = Infallible>,
{
    type Response = Response;
    type Error = Infallible;
    type Future = TraceFuture<S::Future>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request) -> Self::Future {
        let state = self.settings.start(&mut req, true);
        let inner = {
            let _entered = state.as_ref().map(|s| s.span.enter());
            self.inner.call(req)
        };
        TraceFuture { inner, state }
    }
}

impl TraceLayer {
    /// What [`Trace`] does before its inner service (for the stack, which runs the
    /// layer without a level of its own); the inner service runs in the span. The
    /// stack's inner layers attach their records unasked (no marker to insert).
    #[inline]
    pub(crate) fn start(&self, req: &mut Request) -> Option<Finish> {
        self.settings.start(req, false)
    }
}

impl Settings {
    /// The request's span and fields, its start; `None` for an excluded path.
    /// `ask`: insert the [`RecordOutcomes`](crate::outcome::RecordOutcomes) marker for
    /// the layers below.
    fn start(self: &Arc<Self>, req: &mut Request, ask: bool) -> Option<Finish> {
        if let Some(exclude) = &self.exclude
            && exclude.matches_path(req.uri().path())
        {
            return None;
        }
        let start = Instant::now();
        if ask {
            crate::outcome::ask(req.extensions_mut());
        }
        let span = request_span(req);
        #[cfg(feature = "otel")]
        crate::otel::on_request(&span, req, &self.redact);
        let request = RequestFields::of(req, self, span.is_disabled());
        Some(Finish {
            span,
            start,
            request,
        })
    }
}

/// The request's span carries only what correlates the events logged inside it
/// (request id, W3C trace context, route): every field of a span is stored per request
/// and, with many JSON formatters, re-read for every event inside it. The rest of the
/// request's description goes on the completion event ([`RequestFields`]).
fn request_span(req: &Request) -> Span {
    let traceparent = req.headers().get(&TRACEPARENT).and_then(parse_traceparent);
    tracing::info_span!(
        target: TARGET,
        "http.server",
        request_id = request_id_of(req),
        trace_id = traceparent.map(|t| t.0),
        span_id = traceparent.map(|t| t.1),
        http.route = req.extensions().get::<MatchedPath>().map(MatchedPath::as_str),
    )
}

#[cfg(feature = "request-id")]
fn request_id_of(req: &Request) -> Option<&str> {
    req.extensions()
        .get::<crate::request_id::RequestId>()
        .map(|id| id.as_str())
}

#[cfg(not(feature = "request-id"))]
fn request_id_of(_req: &Request) -> Option<&str> {
    None
}

/// What the completion event says about the request, taken when it arrives. Clones of
/// the method, URI and `User-Agent` share the request's bytes (hyper parses them into
/// shared buffers), and the query is redacted while the line is written, so nothing
/// is copied here.
#[derive(Debug)]
struct RequestFields {
    method: http::Method,
    /// Not the whole `Uri` (88 bytes, moved with every level of the response future):
    /// the log has only the path and the query.
    path_and_query: Option<http::uri::PathAndQuery>,
    user_agent: Option<HeaderValue>,
    scheme: crate::client_ip::Scheme,
    client: IpAddr,
    settings: Arc<Settings>,
    /// Only when the filter disabled the span, so that a `WARN`/`ERROR` line still
    /// names the request by its id and route.
    identity: Option<Box<Identity>>,
}

#[derive(Debug)]
struct Identity {
    request_id: Option<HeaderValue>,
    route: Option<MatchedPath>,
}

impl RequestFields {
    fn of(req: &Request, settings: &Arc<Settings>, span_disabled: bool) -> Self {
        let info = client_info(req);
        Self {
            method: req.method().clone(),
            path_and_query: req.uri().path_and_query().cloned(),
            user_agent: req.headers().get(USER_AGENT).cloned(),
            scheme: info.scheme,
            client: info.ip,
            settings: settings.clone(),
            identity: span_disabled.then(|| {
                Box::new(Identity {
                    request_id: request_id_of(req).and_then(|s| HeaderValue::from_str(s).ok()),
                    route: req.extensions().get::<MatchedPath>().cloned(),
                })
            }),
        }
    }
}

/// What the final event needs, carried from the request to the end of the body.
#[derive(Debug)]
/// A request being logged: its span, start and fields, until the completion event.
pub(crate) struct Finish {
    span: Span,
    start: Instant,
    request: RequestFields,
}

#[derive(Debug, Default)]
struct Outcomes {
    rate_limit: Option<RateLimitOutcome>,
    auth: Option<AuthOutcome>,
    cache: Option<CacheOutcome>,
    rejection: Option<Rejection>,
}

impl Outcomes {
    fn of(res: &Response) -> Self {
        let ext = res.extensions();
        Self {
            rate_limit: ext.get::<RateLimitOutcome>().cloned(),
            auth: ext.get::<AuthOutcome>().cloned(),
            cache: ext.get::<CacheOutcome>().copied(),
            rejection: ext.get::<Rejection>().copied(),
        }
    }
}

/// Whole microseconds as milliseconds. Through `u64`, not `as_micros`'s `u128`: a
/// `u128` to `f64` conversion is a software routine, `u64` one instruction.
fn millis(d: Duration) -> f64 {
    let micros = d
        .as_secs()
        .saturating_mul(1_000_000)
        .saturating_add(u64::from(d.subsec_micros()));
    micros as f64 / 1000.0
}

macro_rules! final_event {
    ($level:expr, $msg:literal, $finish:expr, $status:expr, $bytes:expr, $out:expr, $error:expr) => {{
        let finish: &Finish = $finish;
        let out: Option<&Outcomes> = $out;
        let req = &finish.request;
        let id = req.identity.as_deref();
        let client = IpText::new(req.client);
        let rl = out.and_then(|o| o.rate_limit.as_ref());
        let auth = out.and_then(|o| o.auth.as_ref());
        let cache = out.and_then(|o| o.cache.as_ref());
        let rej = out.and_then(|o| o.rejection.as_ref());
        tracing::event!(
            target: TARGET,
            parent: &finish.span,
            $level,
            // A `&str` field rather than the trailing format string, whose
            // `fmt::Arguments` every formatter must run through `core::fmt::write`.
            // Formatters and the OpenTelemetry layer treat a field named `message`
            // as the message whatever its type; it stays the first field.
            message = $msg,
            http.response.status_code = $status,
            // Saturating: the end may be read on another core (see metrics).
            duration_ms = millis(Instant::now().saturating_duration_since(finish.start)),
            http.response.body.size = $bytes,
            error.type = $error,
            rate_limit.outcome = rl.map(rate_limit_outcome),
            rate_limit.policy = rl.map(|r| &*r.policy),
            auth.scheme = auth.map(|a| a.scheme),
            auth.outcome = auth.map(|a| a.outcome),
            auth.identity = auth.and_then(|a| a.identity.as_deref()),
            cache.status = cache.map(|c| c.status.as_str()),
            cache.reason = cache.map(|c| c.reason),
            rejection.layer = rej.map(|r| r.layer),
            rejection.reason = rej.map(|r| r.reason),
            http.request.method = req.method.as_str(),
            url.path = req.path_and_query.as_ref().map_or("", |pq| pq.path()),
            url.query = req.path_and_query.as_ref().and_then(|pq| pq.query()).map(|q| tracing::field::display(RedactedQuery(q, &req.settings.redact))),
            url.scheme = req.scheme.as_str(),
            client.address = client.as_str(),
            user_agent.original = req.user_agent.as_ref().and_then(|v| v.to_str().ok()),
            request_id = id.and_then(|i| i.request_id.as_ref()).and_then(|v| v.to_str().ok()),
            http.route = id.and_then(|i| i.route.as_ref()).map(MatchedPath::as_str),
        )
    }};
}

/// `"limited"`, `"shadow_limited"` or `"allowed"`.
pub(crate) fn rate_limit_outcome(o: &RateLimitOutcome) -> &'static str {
    if o.limited {
        "limited"
    } else if o.shadow_limited {
        "shadow_limited"
    } else {
        "allowed"
    }
}

impl Finish {
    fn completed(&self, status: u16, bytes: u64, out: &Outcomes) {
        let level = match status {
            500.. => Level::ERROR,
            400..=499 => self.request.settings.client_error_level,
            _ => Level::INFO,
        };
        let error: Option<&str> = None;
        let out = Some(out);
        if level == Level::ERROR {
            final_event!(
                Level::ERROR,
                "request completed",
                self,
                status,
                bytes,
                out,
                error
            );
        } else if level == Level::WARN {
            final_event!(
                Level::WARN,
                "request completed",
                self,
                status,
                bytes,
                out,
                error
            );
        } else {
            final_event!(
                Level::INFO,
                "request completed",
                self,
                status,
                bytes,
                out,
                error
            );
        }
    }

    fn aborted(&self, status: Option<u16>, bytes: Option<u64>, out: Option<&Outcomes>) {
        let error = Some("client_disconnected");
        final_event!(
            Level::WARN,
            "request aborted by the client",
            self,
            status,
            bytes,
            out,
            error
        );
    }

    fn body_failed(&self, status: u16, bytes: u64, out: &Outcomes) {
        let error = Some("response_body");
        let out = Some(out);
        final_event!(
            Level::ERROR,
            "response body failed",
            self,
            status,
            bytes,
            out,
            error
        );
    }
}

pin_project_lite::pin_project! {
    /// Response future of [`Trace`].
    pub struct TraceFuture<F> {
        #[pin]
        inner: F,
        state: Option<Finish>,
    }

    impl<F> PinnedDrop for TraceFuture<F> {
        fn drop(this: Pin<&mut Self>) {
            if let Some(finish) = this.project().state.take() {
                finish.abandon();
            }
        }
    }
}

impl<F> std::fmt::Debug for TraceFuture<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TraceFuture").finish_non_exhaustive()
    }
}

impl<F> Future for TraceFuture<F>
where
    F: Future<Output = Result<Response, Infallible>>,
{
    type Output = Result<Response, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let polled = {
            let _entered = this.state.as_ref().map(|s| s.span.enter());
            this.inner.poll(cx)
        };
        let Ok(res) = std::task::ready!(polled);
        let Some(finish) = this.state.take() else {
            return Poll::Ready(Ok(res));
        };
        Poll::Ready(Ok(finish.respond(res)))
    }
}

impl Finish {
    /// The request's span, entered around the inner service's calls and polls.
    #[inline]
    pub(crate) fn span(&self) -> &Span {
        &self.span
    }

    /// The request was dropped before its response head (the client went away).
    pub(crate) fn abandon(&self) {
        self.aborted(None, None, None);
    }

    /// Takes the response head; the completion event is written when its body ends.
    pub(crate) fn respond(self, res: Response) -> Response {
        let log = self.head(&res);
        res.map(|inner| Body::new(LogBody { inner, log }))
    }

    /// Takes the response head; what is left for the body.
    pub(crate) fn head(self, res: &Response) -> BodyLog {
        let outcomes = Outcomes::of(res);
        let status = res.status().as_u16();
        #[cfg(feature = "otel")]
        crate::otel::on_response(&self.span, status);
        BodyLog {
            expected: http_body::Body::size_hint(res.body()).exact(),
            state: Some((self, outcomes)),
            status,
            bytes: 0,
        }
    }
}

/// What a response body still owes the access log: its completion event, written at
/// the body's end (or when the body is dropped). Kept apart from [`LogBody`] so that
/// the stack can log and meter a body with one wrapper.
pub(crate) struct BodyLog {
    state: Option<(Finish, Outcomes)>,
    status: u16,
    bytes: u64,
    /// The announced length: hyper drops a body once that many bytes are sent.
    expected: Option<u64>,
}

impl BodyLog {
    /// After each poll of the body.
    #[inline]
    pub(crate) fn polled<E>(&mut self, polled: &Poll<Option<Result<Frame<Bytes>, E>>>) {
        match polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    self.bytes += data.len() as u64;
                }
            }
            Poll::Ready(Some(Err(_))) => {
                if let Some(state) = self.state.take() {
                    state.0.body_failed(self.status, self.bytes, &state.1);
                }
            }
            Poll::Ready(None) => {
                if let Some(state) = self.state.take() {
                    state.0.completed(self.status, self.bytes, &state.1);
                }
            }
            Poll::Pending => {}
        }
    }

    /// When the body is dropped; `end_stream`: whether the body said it had ended.
    pub(crate) fn dropped(&mut self, end_stream: bool) {
        if let Some(state) = self.state.take() {
            // hyper stops polling once `is_end_stream` is true (an empty body, or the
            // last frame sent): that is a completed response, not an abort.
            if end_stream || self.expected == Some(self.bytes) {
                state.0.completed(self.status, self.bytes, &state.1);
            } else {
                state
                    .0
                    .aborted(Some(self.status), Some(self.bytes), Some(&state.1));
            }
        }
    }
}

/// The response body of [`Trace`], counting bytes and writing the final event at its end.
struct LogBody {
    inner: Body,
    /// Inline: `Body::new` boxes this body anyway.
    log: BodyLog,
}

impl http_body::Body for LogBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        this.log.polled(&polled);
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for LogBody {
    fn drop(&mut self) {
        let end_stream = http_body::Body::is_end_stream(&self.inner);
        self.log.dropped(end_stream);
    }
}

/// An IP address as text, on the stack: recorded as a `str`, it needs no `Display`
/// round trip in the formatter.
struct IpText {
    buf: [u8; 45],
    len: usize,
}

impl IpText {
    fn new(ip: IpAddr) -> Self {
        let mut text = Self {
            buf: [0; 45],
            len: 0,
        };
        match ip {
            IpAddr::V4(v4) => {
                for (i, octet) in v4.octets().into_iter().enumerate() {
                    if i > 0 {
                        text.push(b'.');
                    }
                    if octet >= 100 {
                        text.push(b'0' + octet / 100);
                    }
                    if octet >= 10 {
                        text.push(b'0' + octet / 10 % 10);
                    }
                    text.push(b'0' + octet % 10);
                }
            }
            // At most 45 characters (`ffff:…:255.255.255.255`).
            IpAddr::V6(v6) => {
                let _ = fmt::Write::write_fmt(&mut text, format_args!("{v6}"));
            }
        }
        text
    }

    fn push(&mut self, b: u8) {
        if let Some(slot) = self.buf.get_mut(self.len) {
            *slot = b;
            self.len += 1;
        }
    }

    fn as_str(&self) -> &str {
        std::str::from_utf8(&self.buf[..self.len]).unwrap_or_default()
    }
}

impl fmt::Write for IpText {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let end = self.len + s.len();
        let slot = self.buf.get_mut(self.len..end).ok_or(fmt::Error)?;
        slot.copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}

/// Parses a W3C `traceparent` header into `(trace_id, parent span_id)`.
pub(crate) fn parse_traceparent(value: &HeaderValue) -> Option<(&str, &str)> {
    let s = value.to_str().ok()?;
    let b = s.as_bytes();
    let lower_hex = |r: &[u8]| r.iter().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'));
    if b.len() < 55
        || b[2] != b'-'
        || b[35] != b'-'
        || b[52] != b'-'
        || !lower_hex(&b[..2])
        || &b[..2] == b"ff"
        || (&b[..2] == b"00" && b.len() != 55)
        || (b.len() > 55 && b[55] != b'-')
        || !lower_hex(&b[53..55])
    {
        return None;
    }
    let (trace, span) = (&s[3..35], &s[36..52]);
    let nonzero = |r: &str| r.bytes().any(|c| c != b'0');
    (lower_hex(trace.as_bytes()) && lower_hex(span.as_bytes()) && nonzero(trace) && nonzero(span))
        .then_some((trace, span))
}

fn param_name(pair: &str) -> &str {
    pair.split_once('=').map_or(pair, |(k, _)| k)
}

/// A query string that displays with the values of the named parameters replaced by
/// `[REDACTED]`, written straight into the log line (no copy of the query).
pub(crate) struct RedactedQuery<'a>(pub(crate) &'a str, pub(crate) &'a [Box<str>]);

impl fmt::Display for RedactedQuery<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let RedactedQuery(query, names) = *self;
        if names.is_empty() || !query.split('&').any(|p| is_redacted(param_name(p), names)) {
            return f.write_str(query);
        }
        for (i, pair) in query.split('&').enumerate() {
            if i > 0 {
                f.write_str("&")?;
            }
            let k = param_name(pair);
            if is_redacted(k, names) {
                f.write_str(k)?;
                f.write_str("=[REDACTED]")?;
            } else {
                f.write_str(pair)?;
            }
        }
        Ok(())
    }
}

/// Compares the percent-decoded parameter name, case-insensitively.
fn is_redacted(raw: &str, names: &[Box<str>]) -> bool {
    let mut buf = [0u8; MAX_PARAM_NAME];
    let mut len = 0;
    let b = raw.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if len == MAX_PARAM_NAME {
            return false;
        }
        let c = match b[i] {
            b'%' if i + 2 < b.len() => {
                let hex = |c: u8| (c as char).to_digit(16);
                match (hex(b[i + 1]), hex(b[i + 2])) {
                    (Some(h), Some(l)) => {
                        i += 2;
                        (h * 16 + l) as u8
                    }
                    _ => b'%',
                }
            }
            b'+' => b' ',
            c => c,
        };
        buf[len] = c.to_ascii_lowercase();
        len += 1;
        i += 1;
    }
    let decoded = &buf[..len];
    names.iter().any(|n| n.as_bytes() == decoded)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> Vec<Box<str>> {
        list.iter().map(|s| (*s).into()).collect()
    }

    #[test]
    fn redacts_named_params_only() {
        let n = names(&["token", "password"]);
        let redact_query = |q: &str, n: &[Box<str>]| RedactedQuery(q, n).to_string();
        assert_eq!(redact_query("a=1&b=2", &n), "a=1&b=2");
        assert_eq!(
            redact_query("Token=s3cr3t&page=2&password", &n),
            "Token=[REDACTED]&page=2&password=[REDACTED]"
        );
        assert_eq!(redact_query("%74oken=s3cr3t", &n), "%74oken=[REDACTED]");
        assert_eq!(redact_query("to%6Ben=x&x=%", &n), "to%6Ben=[REDACTED]&x=%");
        assert_eq!(redact_query("tok%", &n), "tok%");
    }

    #[test]
    fn millis_keeps_whole_microseconds() {
        assert_eq!(millis(Duration::ZERO), 0.0);
        assert_eq!(millis(Duration::from_nanos(1_234_999)), 1.234);
        assert_eq!(millis(Duration::new(3, 500_000)), 3000.5);
        assert_eq!(millis(Duration::new(86_400, 1_000)), 86_400_000.001);
        // Saturates instead of overflowing.
        assert_eq!(millis(Duration::MAX), u64::MAX as f64 / 1000.0);
    }

    #[test]
    fn ip_text_matches_display() {
        for ip in [
            "0.0.0.0",
            "127.0.0.1",
            "203.0.113.7",
            "255.255.255.255",
            "10.20.100.9",
            "::1",
            "2001:db8::8a2e:370:7334",
            "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
            "::ffff:255.255.255.255",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(IpText::new(ip).as_str(), ip.to_string());
        }
    }

    #[test]
    fn traceparent() {
        let ok =
            HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
        assert_eq!(
            parse_traceparent(&ok),
            Some(("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"))
        );
        for bad in [
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x",
            "00-4bf92f3577b34da6a3ce929d0e0e4736",
            "",
        ] {
            assert_eq!(
                parse_traceparent(&HeaderValue::from_static(bad)),
                None,
                "{bad}"
            );
        }
        let future = HeaderValue::from_static(
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
        );
        assert!(parse_traceparent(&future).is_some());
    }

    #[test]
    fn default_config_builds_and_validates() {
        assert!(
            TraceLayer::from_config(&LoggingConfig::default(), &BuildContext::default())
                .unwrap()
                .is_some()
        );
        let bad = LoggingConfig {
            level: "info,[".into(),
            redact_query_params: vec![String::new()],
            ..LoggingConfig::default()
        };
        let err = TraceLayer::from_config(&bad, &BuildContext::default()).unwrap_err();
        assert!(err.has_key("logging.level"), "{err}");
        assert!(err.has_key("logging.redact_query_params[0]"), "{err}");
        let blank = LoggingConfig {
            level: String::new(),
            ..LoggingConfig::default()
        };
        let err = TraceLayer::from_config(&blank, &BuildContext::default()).unwrap_err();
        assert!(err.has_key("logging.level"), "{err}");
    }
}
