//! [`Palisade`]: the whole stack, built from one [`Config`], applied as one layer.
//!
//! # Order
//!
//! Requests flow through the layers top to bottom, responses bottom to top:
//!
//! | # | layer | why here |
//! |---|---|---|
//! | 1 | client identity | computed once; every layer below reads it |
//! | 2 | request id | so every log line, including rejections', carries it |
//! | 3 | access log | sees every response, rejections included |
//! | 4 | metrics | counts every response, rejections included |
//! | 5 | security headers | every response carries them, palisade's own 4xx too |
//! | 6 | host / HTTPS checks | refuse unknown hosts and plain HTTP before any work |
//! | 7 | rate limits by IP, header or global | failed logins are limited too |
//! | 8 | authentication | |
//! | 9 | rate limits by identity | needs the verified identity |
//! | 10 | response cache | after auth, so a cached response is never served to a caller auth would refuse |
//!
//! A rejection from an inner layer (a 401 from auth, a 429 from the limiter) passes
//! back out through the outer layers, so it is logged, counted and carries the
//! security headers and the request id.
//!
//! The whole stack is one [`Layer`]: apply it with a single `Router::layer` call.
//! Each extra `Router::layer` call re-boxes every route (about 150 ns per request).
//! Its service, [`PalisadeService<S>`], holds every layer by value, so the box axum
//! puts around each route is the only one; the handler's future is boxed once at the
//! bottom, because axum's route future carries the whole request and would otherwise
//! be moved at every level. Layers 1 to 6, which decide synchronously, run as one
//! level (the same code as their own services, `Trace<S>` and the rest, without a
//! response future each): fewer copies of the composed future per request.

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::Router;
use axum::extract::Request;
use axum::response::Response;
use tower::{Layer, Service};

use crate::client_ip::{ClientIpLayer, TrustedProxies};
use crate::config::Config;
use crate::error::ConfigError;
use crate::shutdown::Shutdown;

/// What every layer may need while it is built from config.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct BuildContext {
    /// The trusted proxies from `[client_ip]`.
    pub trusted_proxies: TrustedProxies,
    /// The shared Redis connection, when `[redis]` configures one.
    #[cfg(feature = "redis")]
    pub redis: Option<crate::redis::RedisPool>,
    /// Triggered on graceful shutdown; background tasks stop on it.
    pub shutdown: Shutdown,
}

/// The full palisade stack, built and validated from a [`Config`].
///
/// ```
/// use axum::{Router, routing::get};
/// use palisade::{Config, Palisade};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let palisade = Palisade::from_config(Config::default()).await?;
/// let app: Router = Router::new()
///     .route("/hello", get(|| async { "hello" }))
///     .merge(palisade.routes())
///     .layer(palisade.layer());
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Palisade {
    parts: Arc<Parts>,
}

#[derive(Debug)]
struct Parts {
    config: Config,
    ctx: BuildContext,
    client_ip: ClientIpLayer,
    #[cfg(feature = "request-id")]
    request_id: Option<crate::request_id::RequestIdLayer>,
    #[cfg(feature = "trace")]
    trace: Option<crate::trace::TraceLayer>,
    #[cfg(feature = "metrics")]
    metrics: Option<crate::metrics::MetricsLayer>,
    #[cfg(feature = "security-headers")]
    security_headers: Option<crate::security_headers::SecurityHeadersLayer>,
    #[cfg(feature = "https")]
    https: Option<crate::https::HttpsLayer>,
    #[cfg(feature = "rate-limit")]
    rate_limit: crate::rate_limit::RateLimitStages,
    #[cfg(any(feature = "api-key", feature = "jwt"))]
    auth: Option<crate::auth::AuthLayer>,
    #[cfg(feature = "cache")]
    cache: Option<crate::cache::CacheLayer>,
    #[cfg(feature = "health")]
    health: crate::health::Health,
}

impl Palisade {
    /// Validates the whole configuration and builds every enabled layer.
    ///
    /// Returns one [`ConfigError`] listing every problem found. Never connects to
    /// Redis synchronously: a Redis that is down at start-up is retried in the
    /// background, and the layers that use it follow their failure policy meanwhile.
    pub async fn from_config(config: Config) -> Result<Self, ConfigError> {
        let mut errors = ConfigError::default();
        let trusted_proxies = errors
            .collect(TrustedProxies::from_config(&config.client_ip))
            .unwrap_or_default();
        #[allow(unused_mut)]
        let mut ctx = BuildContext {
            trusted_proxies: trusted_proxies.clone(),
            shutdown: Shutdown::new(),
            ..BuildContext::default()
        };
        let wants_redis = config.redis.url.is_some() || !config.redis.cluster_urls.is_empty();
        #[cfg(feature = "redis")]
        {
            ctx.redis = errors
                .collect(crate::redis::RedisPool::from_config(&config.redis))
                .flatten();
        }
        #[cfg(not(feature = "redis"))]
        if wants_redis {
            errors.push("redis", "a Redis connection is configured but palisade was built without the `redis` feature");
        }
        let _ = wants_redis;

        #[cfg(feature = "request-id")]
        let request_id = errors
            .collect(crate::request_id::RequestIdLayer::from_config(
                &config.logging,
                &ctx,
            ))
            .flatten();
        errors.collect(config.logging.otel.validate());
        // Default exclusions follow the operational routes when their paths move.
        let follow = |exclude: &[String]| {
            crate::config::health::follow_ops_paths(exclude, &config.metrics.path, &config.health)
        };
        #[cfg(feature = "trace")]
        let trace = {
            let moved = follow(&config.logging.exclude_paths).map(|exclude_paths| {
                let mut logging = config.logging.clone();
                logging.exclude_paths = exclude_paths;
                logging
            });
            let logging = moved.as_ref().unwrap_or(&config.logging);
            errors
                .collect(crate::trace::TraceLayer::from_config(logging, &ctx))
                .flatten()
        };
        #[cfg(feature = "metrics")]
        let metrics = {
            let moved = follow(&config.metrics.exclude_paths).map(|exclude_paths| {
                let mut metrics = config.metrics.clone();
                metrics.exclude_paths = exclude_paths;
                metrics
            });
            let metrics = moved.as_ref().unwrap_or(&config.metrics);
            errors
                .collect(crate::metrics::MetricsLayer::from_config(metrics, &ctx))
                .flatten()
        };
        let _ = follow;
        #[cfg(feature = "security-headers")]
        let security_headers = errors
            .collect(crate::security_headers::SecurityHeadersLayer::from_config(
                &config.security_headers,
                &ctx,
            ))
            .flatten();
        #[cfg(feature = "https")]
        let https = errors
            .collect(crate::https::HttpsLayer::from_config(&config.https, &ctx))
            .flatten();
        #[cfg(feature = "rate-limit")]
        let rate_limit = errors
            .collect(crate::rate_limit::RateLimitLayer::from_config(
                &config.rate_limit,
                &ctx,
            ))
            .unwrap_or_default();
        #[cfg(any(feature = "api-key", feature = "jwt"))]
        let auth = errors
            .collect(crate::auth::AuthLayer::from_config(&config.auth, &ctx).await)
            .flatten();
        #[cfg(feature = "cache")]
        let cache = errors
            .collect(crate::cache::CacheLayer::from_config(&config.cache, &ctx))
            .flatten();
        #[cfg(feature = "health")]
        let health = {
            #[allow(unused_mut)]
            let mut health = errors
                .collect(crate::health::Health::from_config(&config.health, &ctx))
                .unwrap_or_else(crate::health::Health::empty);
            #[cfg(feature = "redis")]
            if let Some(pool) = ctx.redis.clone() {
                health = health.check("redis", true, move || {
                    let pool = pool.clone();
                    async move { pool.ping().await }
                });
            }
            health
        };

        errors.into_result()?;
        Ok(Self {
            parts: Arc::new(Parts {
                client_ip: ClientIpLayer::new(trusted_proxies),
                config,
                ctx,
                #[cfg(feature = "request-id")]
                request_id,
                #[cfg(feature = "trace")]
                trace,
                #[cfg(feature = "metrics")]
                metrics,
                #[cfg(feature = "security-headers")]
                security_headers,
                #[cfg(feature = "https")]
                https,
                #[cfg(feature = "rate-limit")]
                rate_limit,
                #[cfg(any(feature = "api-key", feature = "jwt"))]
                auth,
                #[cfg(feature = "cache")]
                cache,
                #[cfg(feature = "health")]
                health,
            }),
        })
    }

    /// The configuration this stack was built from.
    pub fn config(&self) -> &Config {
        &self.parts.config
    }

    /// The build context (trusted proxies, Redis, shutdown signal).
    pub fn context(&self) -> &BuildContext {
        &self.parts.ctx
    }

    /// Starts a graceful shutdown: readiness fails from now on and background tasks
    /// stop. Call it when your server begins to drain.
    pub fn shutdown(&self) {
        self.parts.ctx.shutdown.trigger();
    }

    /// The whole ordered stack as one layer.
    pub fn layer(&self) -> PalisadeLayer {
        PalisadeLayer {
            parts: self.parts.clone(),
        }
    }

    /// The operational routes: `/metrics`, `/health` and `/ready` (paths from config).
    pub fn routes<St: Clone + Send + Sync + 'static>(&self) -> Router<St> {
        #[allow(unused_mut)]
        let mut router = Router::new();
        #[cfg(feature = "metrics")]
        if let Some(m) = &self.parts.metrics {
            router = router.merge(m.router());
        }
        #[cfg(feature = "health")]
        {
            router = router.merge(self.parts.health.router());
        }
        router
    }
}

/// The whole palisade stack as one [`Layer`]; see the [module docs](self) for the order.
#[derive(Debug, Clone)]
pub struct PalisadeLayer {
    parts: Arc<Parts>,
}

impl<S> Layer<S> for PalisadeLayer
where
    S: Service<Request, Response = Response, Error = Infallible> + Clone + Send + Sync + 'static,
    S::Future: Send + 'static,
{
    type Service = PalisadeService<S>;

    fn layer(&self, inner: S) -> PalisadeService<S> {
        #[cfg_attr(
            not(any(
                feature = "cache",
                feature = "rate-limit",
                feature = "api-key",
                feature = "jwt"
            )),
            allow(unused_variables)
        )]
        let p = &*self.parts;
        // The handler's future (axum's `RouteFuture` holds the whole request until it
        // is first polled) is boxed here, once: every level above wraps it by value
        // and would move it, which costs more memcpy than the one allocation.
        let inner = BoxedHandler(inner);
        // When the access log or the metrics are on, the layers below attach their
        // outcome records to every response instead of looking for the request marker
        // that the standalone log and metrics layers insert: one extension fewer per
        // request (with axum's, the client's, the request id and the identity, the
        // marker made the request's extension map grow a third time).
        #[allow(unused_mut)]
        let mut records_read = false;
        #[cfg(feature = "trace")]
        {
            records_read |= p.trace.is_some();
        }
        #[cfg(feature = "metrics")]
        {
            records_read |= p.metrics.is_some();
        }
        let _ = records_read;
        // Built inside out: the innermost layer wraps the handler first.
        #[cfg(feature = "cache")]
        let inner = tower::ServiceBuilder::new()
            .option_layer(p.cache.clone().map(|l| l.recording(records_read)))
            .service(inner);
        #[cfg(feature = "rate-limit")]
        let inner = tower::ServiceBuilder::new()
            .option_layer(
                p.rate_limit
                    .after_auth
                    .clone()
                    .map(|l| l.recording(records_read)),
            )
            .service(inner);
        #[cfg(any(feature = "api-key", feature = "jwt"))]
        let inner = tower::ServiceBuilder::new()
            .option_layer(p.auth.clone().map(|l| l.recording(records_read)))
            .service(inner);
        #[cfg(feature = "rate-limit")]
        let inner = tower::ServiceBuilder::new()
            .option_layer(
                p.rate_limit
                    .before_auth
                    .clone()
                    .map(|l| l.recording(records_read)),
            )
            .service(inner);
        PalisadeService {
            inner: Edge {
                inner,
                parts: self.parts.clone(),
            },
        }
    }
}

type BoxFuture = std::pin::Pin<
    Box<dyn std::future::Future<Output = Result<Response, Infallible>> + Send + 'static>,
>;

/// The handler (or whatever `PalisadeLayer` wraps), its future boxed once.
#[derive(Clone)]
struct BoxedHandler<S>(S);

impl<S> Service<Request> for BoxedHandler<S>
where
    S: Service<Request, Response = Response, Error = Infallible>,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = Infallible;
    type Future = BoxFuture;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.0.poll_ready(cx)
    }

    #[inline]
    fn call(&mut self, req: Request) -> BoxFuture {
        Box::pin(self.0.call(req))
    }
}

// The stack's concrete type, level by level from the handler out. A layer switched
// off in config is the `Either`'s right side; a layer compiled out is no level at all.
// Unused in a build with every optional layer compiled out (`--features redis` alone).
#[allow(dead_code)]
type Either<A, B> = tower::util::Either<A, B>;
type L0<S> = BoxedHandler<S>;
#[cfg(feature = "cache")]
type L1<S> = Either<crate::cache::Cache<L0<S>>, L0<S>>;
#[cfg(not(feature = "cache"))]
type L1<S> = L0<S>;
#[cfg(feature = "rate-limit")]
type L2<S> = Either<crate::rate_limit::RateLimit<L1<S>>, L1<S>>;
#[cfg(not(feature = "rate-limit"))]
type L2<S> = L1<S>;
#[cfg(any(feature = "api-key", feature = "jwt"))]
type L3<S> = Either<crate::auth::Auth<L2<S>>, L2<S>>;
#[cfg(not(any(feature = "api-key", feature = "jwt")))]
type L3<S> = L2<S>;
#[cfg(feature = "rate-limit")]
type L4<S> = Either<crate::rate_limit::RateLimit<L3<S>>, L3<S>>;
#[cfg(not(feature = "rate-limit"))]
type L4<S> = L3<S>;
type Stack<S> = Edge<L4<S>>;

/// The stack's synchronous outer layers (1 to 6 of the [order](self#order): client
/// identity, request id, access log, metrics, security headers, host/HTTPS check) as
/// one level. Each runs the same code as its own service (`Trace<S>`, ...). As levels
/// of their own, switched on or off by config, each wrapped the response future of
/// everything below it in two more (its own and an `Either`), and the compiler copies
/// the whole future into each wrapper: round 14 of BENCHMARKS.md measured those levels
/// at ~115 ns a request with every layer off. Here the future is assembled once, and
/// cloning the service for a request clones one `Arc`.
#[derive(Clone)]
struct Edge<S> {
    inner: S,
    parts: Arc<Parts>,
}

impl<S> Service<Request> for Edge<S>
where
    S: Service<Request, Response = Response, Error = Infallible>,
{
    type Response = Response;
    type Error = Infallible;
    type Future = EdgeFuture<S::Future>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request) -> Self::Future {
        let p = &*self.parts;
        #[cfg_attr(
            not(any(feature = "metrics", feature = "security-headers")),
            allow(unused_variables)
        )]
        let client = p.client_ip.identify(&mut req);
        let mut pending = Pending::default();
        #[cfg(feature = "request-id")]
        {
            pending.request_id = p.request_id.as_ref().map(|l| l.tag_request(&mut req));
        }
        #[cfg(feature = "trace")]
        {
            pending.trace = p.trace.as_ref().and_then(|l| l.start(&mut req));
        }
        // Inside the request's span, as under `Trace<S>`: everything below it.
        #[cfg(feature = "trace")]
        let entered = pending.trace.as_ref().map(|f| f.span().enter());
        #[cfg(feature = "metrics")]
        {
            pending.in_span.metrics = p
                .metrics
                .as_ref()
                .and_then(|l| l.start(&mut req, client.scheme));
        }
        #[cfg(feature = "security-headers")]
        {
            pending.in_span.security = p
                .security_headers
                .as_ref()
                .map(|l| l.start(&mut req, client.scheme));
        }
        #[cfg(feature = "https")]
        let refused = p.https.as_ref().and_then(|l| l.decide(&req));
        #[cfg(not(feature = "https"))]
        let refused: Option<Response> = None;
        let inner = match refused {
            Some(res) => Inner::Answered { res: Some(res) },
            None => Inner::Called {
                fut: self.inner.call(req),
            },
        };
        #[cfg(feature = "trace")]
        drop(entered);
        if pending.needs_parts() {
            pending.parts = Some(self.parts.clone());
        }
        EdgeFuture { inner, pending }
    }
}

/// What [`Edge`]'s layers still have to do when the response head arrives.
#[derive(Default)]
struct Pending {
    /// For the response's part of the request id and the security headers.
    parts: Option<Arc<Parts>>,
    #[cfg(feature = "request-id")]
    request_id: Option<http::HeaderValue>,
    #[cfg(feature = "trace")]
    trace: Option<crate::trace::Finish>,
    in_span: InSpan,
}

/// The layers whose response work runs inside the request's span (below the access log).
#[derive(Default)]
struct InSpan {
    #[cfg(feature = "metrics")]
    metrics: Option<crate::metrics::InFlight>,
    #[cfg(feature = "security-headers")]
    security: Option<crate::security_headers::State>,
}

/// What the response body still owes the metrics.
#[cfg(feature = "metrics")]
type Meter = Option<crate::metrics::BodyMeter>;
#[cfg(not(feature = "metrics"))]
type Meter = ();

impl InSpan {
    /// The response's way out through layers 6 to 4; returns the metrics' part of the
    /// body.
    #[allow(unused_variables)]
    fn respond(&mut self, res: &mut Response, parts: Option<&Parts>) -> Meter {
        #[cfg(feature = "security-headers")]
        if let (Some(state), Some(parts)) = (self.security.take(), parts)
            && let Some(layer) = &parts.security_headers
        {
            layer.respond(state, res);
        }
        #[cfg(feature = "metrics")]
        return self.metrics.take().and_then(|m| m.head(res));
    }
}

/// What the response body still owes the access log and the metrics: one body wrapper
/// releases both (as their own services, each wrapped and boxed the body again).
struct Tail {
    #[cfg(feature = "trace")]
    log: Option<crate::trace::BodyLog>,
    #[cfg(feature = "metrics")]
    meter: Option<crate::metrics::BodyMeter>,
}

impl Tail {
    #[inline(always)]
    fn wrap(self, res: Response) -> Response {
        #[cfg(any(feature = "trace", feature = "metrics"))]
        {
            #[allow(unused_mut)]
            let mut owed = false;
            #[cfg(feature = "trace")]
            {
                owed |= self.log.is_some();
            }
            #[cfg(feature = "metrics")]
            {
                owed |= self.meter.is_some();
            }
            if owed {
                return res.map(|inner| axum::body::Body::new(TailBody { inner, tail: self }));
            }
        }
        res
    }
}

/// The response body with [`Tail`]'s work: each frame is counted by the metrics, then
/// by the access log, in the order of the two layers' own bodies.
#[cfg(any(feature = "trace", feature = "metrics"))]
struct TailBody {
    inner: axum::body::Body,
    tail: Tail,
}

#[cfg(any(feature = "trace", feature = "metrics"))]
impl http_body::Body for TailBody {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<bytes::Bytes>, axum::Error>>> {
        let this = &mut *self;
        let polled = std::pin::Pin::new(&mut this.inner).poll_frame(cx);
        #[cfg(feature = "metrics")]
        if let Some(meter) = &mut this.tail.meter {
            let inner = &this.inner;
            meter.polled(&polled, || inner.is_end_stream());
        }
        #[cfg(feature = "trace")]
        if let Some(log) = &mut this.tail.log {
            log.polled(&polled);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(any(feature = "trace", feature = "metrics"))]
impl Drop for TailBody {
    // The access log's line first, then the metrics' completion: the order in which the
    // layers' own bodies (the log's around the metrics') drop.
    fn drop(&mut self) {
        #[cfg(feature = "trace")]
        if let Some(log) = &mut self.tail.log {
            log.dropped(http_body::Body::is_end_stream(&self.inner));
        }
        #[cfg(feature = "metrics")]
        if let Some(meter) = &mut self.tail.meter {
            meter.dropped();
        }
    }
}

impl Pending {
    fn needs_parts(&self) -> bool {
        #[allow(unused_mut)]
        let mut needs = false;
        #[cfg(feature = "request-id")]
        {
            needs |= self.request_id.is_some();
        }
        #[cfg(feature = "security-headers")]
        {
            needs |= self.in_span.security.is_some();
        }
        needs
    }

    /// Layers 3 and 2, after the span is left; then the body's wrapper, if one is owed.
    /// The wrapper's state is assembled in one expression: built field by field, it was
    /// copied twice more on its way into the body's box (~780 bytes a request).
    #[allow(unused_variables)]
    fn respond(&mut self, res: Response, meter: Meter) -> Response {
        let tail = Tail {
            #[cfg(feature = "trace")]
            log: self.trace.take().map(|finish| finish.head(&res)),
            #[cfg(feature = "metrics")]
            meter,
        };
        #[allow(unused_mut)]
        let mut res = tail.wrap(res);
        #[cfg(feature = "request-id")]
        if let (Some(id), Some(parts)) = (self.request_id.take(), &self.parts)
            && let Some(layer) = &parts.request_id
        {
            layer.tag_response(id, &mut res);
        }
        res
    }

    /// Dropped before the response head: the access log's and the in-flight gauge's
    /// ends, in the order their own futures' drops would run them.
    fn abandon(&mut self) {
        #[cfg(feature = "trace")]
        if let Some(finish) = self.trace.take() {
            finish.abandon();
        }
        #[cfg(feature = "metrics")]
        if let Some(m) = self.in_span.metrics.take() {
            m.abandon();
        }
    }
}

pin_project_lite::pin_project! {
    /// Response future of [`Edge`].
    struct EdgeFuture<F> {
        #[pin]
        inner: Inner<F>,
        pending: Pending,
    }

    impl<F> PinnedDrop for EdgeFuture<F> {
        fn drop(this: Pin<&mut Self>) {
            this.project().pending.abandon();
        }
    }
}

pin_project_lite::pin_project! {
    #[project = InnerProj]
    enum Inner<F> {
        // The request went on to the layers below.
        Called { #[pin] fut: F },
        // Answered by the host/HTTPS check.
        Answered { res: Option<Response> },
    }
}

impl<F> std::future::Future for EdgeFuture<F>
where
    F: std::future::Future<Output = Result<Response, Infallible>>,
{
    type Output = Result<Response, Infallible>;

    fn poll(self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let (res, meter) = {
            #[cfg(feature = "trace")]
            let _entered = this.pending.trace.as_ref().map(|f| f.span().enter());
            let mut res = match this.inner.project() {
                InnerProj::Called { fut } => {
                    let Ok(res) = std::task::ready!(fut.poll(cx));
                    res
                }
                // Polled after completion: answer something valid rather than panic.
                InnerProj::Answered { res } => res.take().unwrap_or_else(|| {
                    axum::response::IntoResponse::into_response(
                        http::StatusCode::INTERNAL_SERVER_ERROR,
                    )
                }),
            };
            // `()` without the metrics feature.
            #[allow(clippy::let_unit_value)]
            let meter = this
                .pending
                .in_span
                .respond(&mut res, this.pending.parts.as_deref());
            (res, meter)
        };
        Poll::Ready(Ok(this.pending.respond(res, meter)))
    }
}

/// The service made by [`PalisadeLayer`]: every layer of the stack, by value, around
/// `S`, with no box of its own. Cloning it (axum clones a route's service for every
/// request) clones the layers' `Arc`s, not a boxed service.
#[derive(Clone)]
pub struct PalisadeService<S> {
    inner: Stack<S>,
}

impl<S> std::fmt::Debug for PalisadeService<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PalisadeService").finish_non_exhaustive()
    }
}

impl<S> Service<Request> for PalisadeService<S>
where
    S: Service<Request, Response = Response, Error = Infallible> + Clone + Send + Sync + 'static,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = Infallible;
    type Future = ResponseFuture<S>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    #[inline]
    fn call(&mut self, req: Request) -> ResponseFuture<S> {
        ResponseFuture {
            inner: self.inner.call(req),
        }
    }
}

pin_project_lite::pin_project! {
    /// Response future of [`PalisadeService`]: the layers' futures, nested, by value
    /// (axum boxes it once, with the route).
    pub struct ResponseFuture<S>
    where
        S: Service<Request, Response = Response, Error = Infallible>,
        S: Clone,
        S: Send,
        S: Sync,
        S: 'static,
        S::Future: Send,
        S::Future: 'static,
    {
        #[pin]
        inner: <Stack<S> as Service<Request>>::Future,
    }
}

impl<S> std::fmt::Debug for ResponseFuture<S>
where
    S: Service<Request, Response = Response, Error = Infallible> + Clone + Send + Sync + 'static,
    S::Future: Send + 'static,
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl<S> std::future::Future for ResponseFuture<S>
where
    S: Service<Request, Response = Response, Error = Infallible> + Clone + Send + Sync + 'static,
    S::Future: Send + 'static,
{
    type Output = Result<Response, Infallible>;

    #[inline]
    fn poll(self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.project().inner.poll(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// axum boxes this future with every request. glibc serves blocks up to 1032 bytes
    /// from its per-thread cache; a larger one takes the general path (~800 more
    /// instructions per request, measured), so a layer whose future grows must pay
    /// for its size elsewhere. The future is also copied whole several times on its
    /// way into that box (axum's wrappers), which on AMD EPYC costs about 1 ns per
    /// 64 bytes each time: 880 bytes before round 14 of BENCHMARKS.md, 696 after.
    #[test]
    fn the_stacks_response_future_stays_small() {
        let size = std::mem::size_of::<ResponseFuture<axum::routing::Route>>();
        assert!(size <= 720, "the stack's response future is {size} bytes");
    }
}
