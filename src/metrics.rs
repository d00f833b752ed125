//! Prometheus metrics following the OpenTelemetry HTTP conventions.
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `http_server_request_duration_seconds` | histogram (buckets 5 ms … 10 s) | `http_request_method`, `http_route`, `http_response_status_code`, `url_scheme` |
//! | `http_server_active_requests` | gauge | `http_request_method`, `url_scheme` |
//! | `http_server_request_body_size_bytes` | histogram (1 KiB … 10 MiB), opt-in | as the duration |
//! | `http_server_response_body_size_bytes` | histogram (1 KiB … 10 MiB), opt-in | as the duration |
//! | `palisade_rate_limit_decisions_total` | counter | `policy`, `outcome` (`allowed`, `limited`, `shadow_limited`) |
//! | `palisade_auth_total` | counter | `scheme`, `outcome` |
//! | `palisade_cache_requests_total` | counter | `result` (`hit`, `miss`, `stale`, `bypass`) |
//! | `palisade_https_redirects_total` | counter | |
//! | `palisade_health_check` | gauge (1 pass, 0 fail) | `check` |
//! | `palisade_redis_errors_total` | counter | `op` |
//!
//! Names are the OpenTelemetry semantic-convention names as Prometheus renders them;
//! the request rate is the histogram's `_count`.
//!
//! # When a request ends
//!
//! The duration runs to the response head (what the handler controls), timed with
//! [`quanta`](https://docs.rs/quanta)'s calibrated TSC clock (two reads a request, each
//! ~9 ns against 21–49 ns for `std::time::Instant` on the VMs measured). A request
//! stays in `http_server_active_requests` until its response body has been sent, or
//! until the client goes away (the response future or the body is dropped): the
//! gauge drops exactly once either way, so a streaming response counts while it
//! streams and a cancelled request never leaks a count.
//!
//! `[metrics] body_sizes = true` adds the two body-size histograms. A body's size is
//! its exact announced length when there is one (`Content-Length`, a full buffer),
//! and otherwise the data bytes counted as it streams; both are observed once, when
//! the response ends. With `body_sizes = false` (the default) nothing is counted. The palisade counters are read from
//! the records ([`outcome`](crate::outcome), [`Rejection`]) the inner layers attach
//! to the response, so those layers need no metrics code.
//!
//! # Cardinality is bounded by construction
//!
//! No label ever comes from a raw path, a header or a secret. `http_route` is the
//! axum route template ([`MatchedPath`]); every request that matched no route shares
//! `<unmatched>`, so a scanner probing 10 000 paths adds no series. Unknown methods
//! are `_OTHER`. (Apply the layer with `Router::layer`, as
//! [`Palisade`](crate::Palisade) does, so that the route template is known.)
//!
//! # Exporter
//!
//! The first layer built installs one `metrics-exporter-prometheus` recorder for the
//! whole process (and, if no other recorder is set, as the `metrics` global recorder,
//! so `metrics::counter!` in your code lands in the same `/metrics`). Building more
//! stacks (tests do) reuses it and never panics. A background thread runs the
//! exporter's upkeep every 5 s, so histogram samples do not pile up when nobody
//! scrapes.
//!
//! # Cost
//!
//! The `metrics` macros build a label set, hash it and look it up on every call.
//! This layer resolves each (route, method, status, scheme) once into a histogram
//! handle kept in a small map keyed by integers; a request then costs two read-locked
//! hash lookups, one histogram push and two gauge updates, with no allocation.
//!
//! ```
//! use axum::{Router, routing::get};
//! use palisade::metrics::MetricsLayer;
//! use tower::ServiceExt;
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let metrics = MetricsLayer::new();
//! let app: Router = Router::new()
//!     .route("/items/{id}", get(|| async { "item" }))
//!     .layer(metrics.clone())
//!     .merge(metrics.router());
//! let req = http::Request::get("/items/7").body(axum::body::Body::empty()).unwrap();
//! app.clone().oneshot(req).await.unwrap();
//! let text = metrics.render();
//! assert!(text.contains(r#"http_route="/items/{id}""#));
//! # }
//! ```

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::hash::{BuildHasherDefault, Hasher};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{MatchedPath, Request};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::{HeaderValue, Method, header};
use http_body::Frame;
use metrics::{Counter, Gauge, Histogram, Key, KeyName, Label, Metadata, Recorder, Unit};
use metrics_exporter_prometheus::{
    Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder,
};
use quanta::Instant;
use tower::{Layer, Service};

use crate::client_ip::{Scheme, client_info};
use crate::config::MetricsConfig;
use crate::config::metrics::{BODY_SIZE_BUCKETS, DEFAULT_DURATION_BUCKETS};
use crate::error::ConfigError;
use crate::outcome::{AuthOutcome, CacheOutcome, CacheStatus, RateLimitOutcome};
use crate::problem::Rejection;
use crate::route_match::RouteMatcher;
use crate::stack::BuildContext;

/// Name of the request duration histogram.
pub const REQUEST_DURATION: &str = "http_server_request_duration_seconds";
/// Name of the in-flight requests gauge.
pub const ACTIVE_REQUESTS: &str = "http_server_active_requests";
/// Name of the request body size histogram (`[metrics] body_sizes`).
pub const REQUEST_BODY_SIZE: &str = "http_server_request_body_size_bytes";
/// Name of the response body size histogram (`[metrics] body_sizes`).
pub const RESPONSE_BODY_SIZE: &str = "http_server_response_body_size_bytes";

/// The histograms sharing the request labels.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Duration = 0,
    RequestSize = 1,
    ResponseSize = 2,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Duration => REQUEST_DURATION,
            Kind::RequestSize => REQUEST_BODY_SIZE,
            Kind::ResponseSize => RESPONSE_BODY_SIZE,
        }
    }
}
/// `http_route` of requests that matched no route.
pub const UNMATCHED_ROUTE: &str = "<unmatched>";
/// `http_route` once more than [`MAX_ROUTES`] distinct templates were seen.
pub const OTHER_ROUTE: &str = "<other>";
/// Most distinct route templates tracked (a safety net: templates come from code).
pub const MAX_ROUTES: usize = 1000;

const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

/// OpenTelemetry's known methods; anything else is `_OTHER`.
const METHODS: [&str; 11] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH", "QUERY",
    "_OTHER",
];

fn method_index(m: &Method) -> usize {
    match *m {
        Method::GET => 0,
        Method::HEAD => 1,
        Method::POST => 2,
        Method::PUT => 3,
        Method::DELETE => 4,
        Method::CONNECT => 5,
        Method::OPTIONS => 6,
        Method::TRACE => 7,
        Method::PATCH => 8,
        _ if m.as_str() == "QUERY" => 9,
        _ => 10,
    }
}

fn scheme_index(s: Scheme) -> usize {
    match s {
        Scheme::Http => 0,
        Scheme::Https => 1,
    }
}

const SCHEMES: [&str; 2] = ["http", "https"];

/// A small, fast hasher for keys palisade itself controls (integers and route
/// templates from code); never for attacker-chosen keys.
#[derive(Debug, Default, Clone, Copy)]
struct FxHasher(u64);

impl FxHasher {
    #[inline]
    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
}

impl Hasher for FxHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            self.add(u64::from_le_bytes(w));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut w = [0u8; 8];
            w[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(w));
        }
    }
    #[inline]
    fn write_u8(&mut self, i: u8) {
        self.add(u64::from(i));
    }
    #[inline]
    fn write_u32(&mut self, i: u32) {
        self.add(u64::from(i));
    }
    #[inline]
    fn write_u64(&mut self, i: u64) {
        self.add(i);
    }
    #[inline]
    fn write_usize(&mut self, i: usize) {
        self.add(i as u64);
    }
    #[inline]
    fn finish(&self) -> u64 {
        self.0
    }
}

type FxMap<K, V> = HashMap<K, V, BuildHasherDefault<FxHasher>>;

#[derive(Default)]
struct Routes {
    ids: FxMap<Box<str>, u32>,
    names: Vec<Arc<str>>,
}

/// The process-wide recorder and the handle caches.
struct Registry {
    recorder: PrometheusRecorder,
    handle: PrometheusHandle,
    buckets: Vec<f64>,
    routes: RwLock<Routes>,
    series: RwLock<FxMap<u64, Histogram>>,
    active: [[OnceLock<Gauge>; 2]; METHODS.len()],
    cache: [OnceLock<Counter>; 4],
    https_redirects: OnceLock<Counter>,
    rate_limit: RwLock<FxMap<Box<str>, [Counter; 3]>>,
    auth: RwLock<FxMap<(&'static str, &'static str), Counter>>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry").finish_non_exhaustive()
    }
}

static REGISTRY: OnceLock<Registry> = OnceLock::new();

const ROUTE_UNMATCHED: u32 = 0;
const ROUTE_OTHER: u32 = 1;

fn metadata() -> Metadata<'static> {
    Metadata::new(module_path!(), metrics::Level::INFO, Some(module_path!()))
}

fn key(name: &'static str, labels: Vec<Label>) -> Key {
    Key::from_parts(name, labels)
}

fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Registry {
    /// The process-wide registry, installed on first use with `buckets`.
    fn install(buckets: &[f64]) -> &'static Registry {
        let reg = REGISTRY.get_or_init(|| {
            // Calibrates the duration clock (once a process, up to 200 ms) at start-up
            // rather than in the first request.
            let _ = Instant::now();
            let sizes = |b: PrometheusBuilder, name: &str| {
                b.set_buckets_for_metric(Matcher::Full(name.to_owned()), BODY_SIZE_BUCKETS)
            };
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Full(REQUEST_DURATION.to_owned()), buckets)
                .and_then(|b| sizes(b, REQUEST_BODY_SIZE))
                .and_then(|b| sizes(b, RESPONSE_BODY_SIZE))
                .unwrap_or_else(|_| PrometheusBuilder::new());
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            let upkeep = handle.clone();
            let _ = std::thread::Builder::new()
                .name("palisade-metrics-upkeep".into())
                .spawn(move || {
                    loop {
                        std::thread::sleep(UPKEEP_INTERVAL);
                        upkeep.run_upkeep();
                    }
                });
            let reg = Registry {
                recorder,
                handle,
                buckets: buckets.to_vec(),
                routes: RwLock::new(Routes {
                    ids: FxMap::default(),
                    names: vec![UNMATCHED_ROUTE.into(), OTHER_ROUTE.into()],
                }),
                series: RwLock::default(),
                active: Default::default(),
                cache: Default::default(),
                https_redirects: OnceLock::new(),
                rate_limit: RwLock::default(),
                auth: RwLock::default(),
            };
            reg.describe();
            reg
        });
        if reg.buckets != buckets {
            tracing::warn!(
                target: "palisade::metrics",
                "metrics.buckets differ from those of the exporter already installed in this process; the first ones apply"
            );
        }
        static GLOBAL: std::sync::Once = std::sync::Once::new();
        GLOBAL.call_once(|| {
            // Another recorder may already be installed (then ours stays private).
            let _ = metrics::set_global_recorder(Forward);
        });
        reg
    }

    fn describe(&self) {
        let r = &self.recorder;
        let d = |name: &'static str| KeyName::from_const_str(name);
        r.describe_histogram(
            d(REQUEST_DURATION),
            Some(Unit::Seconds),
            "Duration of HTTP server requests, to the response head.".into(),
        );
        r.describe_gauge(
            d(ACTIVE_REQUESTS),
            None,
            "Number of HTTP server requests in flight, to the end of the response body.".into(),
        );
        r.describe_histogram(
            d(REQUEST_BODY_SIZE),
            Some(Unit::Bytes),
            "Size of HTTP server request bodies.".into(),
        );
        r.describe_histogram(
            d(RESPONSE_BODY_SIZE),
            Some(Unit::Bytes),
            "Size of HTTP server response bodies.".into(),
        );
        r.describe_counter(
            d("palisade_rate_limit_decisions_total"),
            None,
            "Rate-limit decisions by policy and outcome.".into(),
        );
        r.describe_counter(
            d("palisade_auth_total"),
            None,
            "Authentication attempts by scheme and outcome.".into(),
        );
        r.describe_counter(
            d("palisade_cache_requests_total"),
            None,
            "Response cache lookups by result.".into(),
        );
        r.describe_counter(
            d("palisade_https_redirects_total"),
            None,
            "Plain-HTTP requests redirected to HTTPS.".into(),
        );
        r.describe_gauge(
            d("palisade_health_check"),
            None,
            "Last readiness result per check: 1 pass, 0 fail.".into(),
        );
        r.describe_counter(
            d("palisade_redis_errors_total"),
            None,
            "Failed Redis operations by operation.".into(),
        );
    }

    #[inline]
    fn route_id(&self, route: &str) -> u32 {
        if let Some(id) = read(&self.routes).ids.get(route) {
            return *id;
        }
        let mut routes = write(&self.routes);
        if let Some(id) = routes.ids.get(route) {
            return *id;
        }
        if routes.ids.len() >= MAX_ROUTES {
            return ROUTE_OTHER;
        }
        let id = routes.names.len() as u32;
        routes.names.push(route.into());
        routes.ids.insert(route.into(), id);
        id
    }

    #[inline]
    fn histogram(
        &self,
        kind: Kind,
        route: u32,
        method: usize,
        scheme: usize,
        status: u16,
    ) -> Histogram {
        let k = (u64::from(route) << 32)
            | (u64::from(status) << 16)
            | ((method as u64) << 8)
            | ((kind as u64) << 1)
            | scheme as u64;
        if let Some(h) = read(&self.series).get(&k) {
            return h.clone();
        }
        let name = read(&self.routes).names[route as usize].clone();
        let h = self.recorder.register_histogram(
            &key(
                kind.name(),
                vec![
                    Label::from_static_parts("http_request_method", METHODS[method]),
                    Label::new("http_route", name.to_string()),
                    Label::new("http_response_status_code", status.to_string()),
                    Label::from_static_parts("url_scheme", SCHEMES[scheme]),
                ],
            ),
            &metadata(),
        );
        write(&self.series).entry(k).or_insert(h).clone()
    }

    #[inline]
    fn active(&self, method: usize, scheme: usize) -> &Gauge {
        self.active[method][scheme].get_or_init(|| {
            self.recorder.register_gauge(
                &key(
                    ACTIVE_REQUESTS,
                    vec![
                        Label::from_static_parts("http_request_method", METHODS[method]),
                        Label::from_static_parts("url_scheme", SCHEMES[scheme]),
                    ],
                ),
                &metadata(),
            )
        })
    }

    fn counter(&self, name: &'static str, labels: Vec<Label>) -> Counter {
        self.recorder
            .register_counter(&key(name, labels), &metadata())
    }

    fn record_outcomes(&self, res: &Response) {
        let ext = res.extensions();
        if let Some(rl) = ext.get::<RateLimitOutcome>() {
            let i = match (rl.limited, rl.shadow_limited) {
                (true, _) => 1,
                (false, true) => 2,
                _ => 0,
            };
            // Incremented under the read lock: no handle clone (two atomic operations
            // on its reference count) on the common path. Edition 2024 drops the read
            // guard before the `else` branch takes the write lock.
            if let Some(set) = read(&self.rate_limit).get(&*rl.policy) {
                set[i].increment(1);
            } else {
                let mut map = write(&self.rate_limit);
                let set = map.entry(rl.policy.as_ref().into()).or_insert_with(|| {
                    ["allowed", "limited", "shadow_limited"].map(|o| {
                        self.counter(
                            "palisade_rate_limit_decisions_total",
                            vec![
                                Label::new("policy", rl.policy.to_string()),
                                Label::from_static_parts("outcome", o),
                            ],
                        )
                    })
                });
                set[i].increment(1);
            }
        }
        if let Some(a) = ext.get::<AuthOutcome>() {
            let k = (a.scheme, a.outcome);
            if let Some(counter) = read(&self.auth).get(&k) {
                counter.increment(1);
            } else {
                write(&self.auth)
                    .entry(k)
                    .or_insert_with(|| {
                        self.counter(
                            "palisade_auth_total",
                            vec![
                                Label::from_static_parts("scheme", a.scheme),
                                Label::from_static_parts("outcome", a.outcome),
                            ],
                        )
                    })
                    .increment(1);
            }
        }
        if let Some(c) = ext.get::<CacheOutcome>() {
            let i = match c.status {
                CacheStatus::Hit => 0,
                CacheStatus::Miss => 1,
                CacheStatus::Stale => 2,
                CacheStatus::Bypass => 3,
            };
            self.cache[i]
                .get_or_init(|| {
                    self.counter(
                        "palisade_cache_requests_total",
                        vec![Label::from_static_parts("result", c.status.as_str())],
                    )
                })
                .increment(1);
        }
        if let Some(r) = ext.get::<Rejection>()
            && r.layer == "https"
            && res.status().is_redirection()
        {
            self.https_redirects
                .get_or_init(|| self.counter("palisade_https_redirects_total", Vec::new()))
                .increment(1);
        }
    }
}

/// Forwards the `metrics` global recorder to palisade's exporter.
#[derive(Debug)]
struct Forward;

impl Forward {
    fn inner() -> Option<&'static PrometheusRecorder> {
        REGISTRY.get().map(|r| &r.recorder)
    }
}

impl Recorder for Forward {
    fn describe_counter(&self, key: KeyName, unit: Option<Unit>, d: metrics::SharedString) {
        if let Some(r) = Self::inner() {
            r.describe_counter(key, unit, d);
        }
    }
    fn describe_gauge(&self, key: KeyName, unit: Option<Unit>, d: metrics::SharedString) {
        if let Some(r) = Self::inner() {
            r.describe_gauge(key, unit, d);
        }
    }
    fn describe_histogram(&self, key: KeyName, unit: Option<Unit>, d: metrics::SharedString) {
        if let Some(r) = Self::inner() {
            r.describe_histogram(key, unit, d);
        }
    }
    fn register_counter(&self, key: &Key, m: &Metadata<'_>) -> Counter {
        Self::inner().map_or_else(Counter::noop, |r| r.register_counter(key, m))
    }
    fn register_gauge(&self, key: &Key, m: &Metadata<'_>) -> Gauge {
        Self::inner().map_or_else(Gauge::noop, |r| r.register_gauge(key, m))
    }
    fn register_histogram(&self, key: &Key, m: &Metadata<'_>) -> Histogram {
        Self::inner().map_or_else(Histogram::noop, |r| r.register_histogram(key, m))
    }
}

/// The `palisade_health_check{check}` gauge, when a metrics layer was built.
#[cfg_attr(not(feature = "health"), allow(dead_code))]
pub(crate) fn health_gauge(check: &str) -> Option<Gauge> {
    REGISTRY.get().map(|r| {
        r.recorder.register_gauge(
            &key(
                "palisade_health_check",
                vec![Label::new("check", check.to_owned())],
            ),
            &metadata(),
        )
    })
}

/// Layer recording request metrics; see the [module docs](self).
#[derive(Debug, Clone)]
pub struct MetricsLayer {
    registry: &'static Registry,
    exclude: Arc<RouteMatcher>,
    path: Arc<str>,
    body_sizes: bool,
}

impl Default for MetricsLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl MetricsLayer {
    /// The defaults of `[metrics]`.
    pub fn new() -> Self {
        let config = MetricsConfig::default();
        Self {
            registry: Registry::install(DEFAULT_DURATION_BUCKETS),
            exclude: Arc::new(RouteMatcher::from_patterns(
                config
                    .exclude_paths
                    .iter()
                    .filter_map(|p| crate::route_match::PathPattern::parse(p).ok())
                    .collect(),
                Vec::new(),
            )),
            path: config.path.into(),
            body_sizes: config.body_sizes,
        }
    }

    /// Whether to record the body-size histograms (`[metrics] body_sizes`).
    #[must_use]
    pub fn body_sizes(mut self, on: bool) -> Self {
        self.body_sizes = on;
        self
    }

    /// Builds the layer from `[metrics]`; `None` when `enabled = false`.
    pub fn from_config(
        config: &MetricsConfig,
        _ctx: &BuildContext,
    ) -> Result<Option<Self>, ConfigError> {
        let mut errors = ConfigError::default();
        if !config.path.starts_with('/') {
            errors.push("metrics.path", "must start with '/'");
        }
        if config.buckets.is_empty() {
            errors.push("metrics.buckets", "must list at least one bucket");
        }
        for (i, b) in config.buckets.iter().enumerate() {
            if !b.is_finite() || *b <= 0.0 {
                errors.push(
                    format!("metrics.buckets[{i}]"),
                    "must be a positive number of seconds",
                );
            } else if i > 0 && config.buckets[i - 1] >= *b {
                errors.push(
                    format!("metrics.buckets[{i}]"),
                    "buckets must be strictly increasing",
                );
            }
        }
        let mut paths = config.exclude_paths.clone();
        paths.push(config.path.clone());
        let exclude = RouteMatcher::compile("metrics.exclude", &paths, &[]);
        let exclude = match exclude {
            Ok(m) => Some(m),
            Err(e) => {
                // Name the problem after the config key the user wrote.
                for p in e.problems() {
                    let key = p
                        .key
                        .replace("metrics.exclude.paths", "metrics.exclude_paths");
                    if !key.ends_with(&format!("[{}]", config.exclude_paths.len())) {
                        errors.push(key, p.message.clone());
                    }
                }
                None
            }
        };
        errors.into_result()?;
        if !config.enabled {
            return Ok(None);
        }
        Ok(Some(Self {
            registry: Registry::install(&config.buckets),
            exclude: Arc::new(exclude.unwrap_or_default()),
            path: config.path.as_str().into(),
            body_sizes: config.body_sizes,
        }))
    }

    /// The `/metrics` route (path from config), serving the Prometheus text format.
    pub fn router<St: Clone + Send + Sync + 'static>(&self) -> axum::Router<St> {
        let registry = self.registry;
        axum::Router::new().route(
            &self.path,
            axum::routing::get(move || async move {
                let body = registry.handle.render();
                (
                    [
                        (
                            header::CONTENT_TYPE,
                            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
                        ),
                        (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
                    ],
                    body,
                )
                    .into_response()
            }),
        )
    }

    /// Renders every metric in the Prometheus text format (what the route serves).
    pub fn render(&self) -> String {
        self.registry.handle.render()
    }

    /// Runs the exporter's upkeep now (a background thread also does it every 5 s).
    pub fn run_upkeep(&self) {
        self.registry.handle.run_upkeep();
    }
}

impl<S> Layer<S> for MetricsLayer {
    type Service = Metrics<S>;
    fn layer(&self, inner: S) -> Metrics<S> {
        Metrics {
            inner,
            registry: self.registry,
            exclude: self.exclude.clone(),
            body_sizes: self.body_sizes,
        }
    }
}

/// Service made by [`MetricsLayer`].
#[derive(Debug, Clone)]
pub struct Metrics<S> {
    inner: S,
    registry: &'static Registry,
    exclude: Arc<RouteMatcher>,
    body_sizes: bool,
}

impl<S> Service<Request> for Metrics<S>
where
    S: Service<Request, Response = Response, Error = Infallible>,
{
    type Response = Response;
    type Error = Infallible;
    type Future = MetricsFuture<S::Future>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request) -> Self::Future {
        let state = start(
            self.registry,
            &self.exclude,
            self.body_sizes,
            &mut req,
            |req| client_info(req).scheme,
        );
        if state.is_some() {
            // The layers below attach their records for this layer to read.
            crate::outcome::ask(req.extensions_mut());
        }
        MetricsFuture {
            inner: self.inner.call(req),
            state,
        }
    }
}

impl MetricsLayer {
    /// What [`Metrics`] does before its inner service (for the stack, which runs the
    /// layer without a level of its own). The stack's inner layers attach their records
    /// unasked (no marker to insert).
    #[inline]
    pub(crate) fn start(&self, req: &mut Request, scheme: Scheme) -> Option<InFlight> {
        start(self.registry, &self.exclude, self.body_sizes, req, |_| {
            scheme
        })
    }
}

/// Counts the request in flight and notes what its observations need; `None` for an
/// excluded path (whose `scheme` is not asked).
#[inline]
fn start(
    registry: &'static Registry,
    exclude: &RouteMatcher,
    body_sizes: bool,
    req: &mut Request,
    scheme: impl FnOnce(&Request) -> Scheme,
) -> Option<InFlight> {
    if exclude.matches_path(req.uri().path()) {
        return None;
    }
    let method = method_index(req.method());
    let scheme = scheme_index(scheme(req));
    let route = match req.extensions().get::<MatchedPath>() {
        Some(m) => registry.route_id(m.as_str()),
        None => ROUTE_UNMATCHED,
    };
    let request_size = if body_sizes {
        match http_body::Body::size_hint(req.body()).exact() {
            Some(n) => RequestSize::Known(n),
            None => {
                let counted = Arc::new(AtomicU64::new(0));
                let count = counted.clone();
                let body = std::mem::take(req.body_mut());
                *req.body_mut() = Body::new(CountedRequestBody { inner: body, count });
                RequestSize::Counted(counted)
            }
        }
    } else {
        RequestSize::Off
    };
    let active = registry.active(method, scheme);
    active.increment(1.0);
    Some(InFlight {
        start: Instant::now(),
        registry,
        active,
        route,
        method: method as u8,
        scheme: scheme as u8,
        request_size,
    })
}

/// A request counted in flight, until its response head: see [`InFlight::respond`].
pub(crate) struct InFlight {
    start: Instant,
    registry: &'static Registry,
    active: &'static Gauge,
    route: u32,
    method: u8,
    scheme: u8,
    request_size: RequestSize,
}

/// How the request body's size is known (`Off` when `body_sizes` is off).
enum RequestSize {
    Off,
    Known(u64),
    Counted(Arc<AtomicU64>),
}

impl RequestSize {
    fn bytes(&self) -> u64 {
        match self {
            RequestSize::Off => 0,
            RequestSize::Known(n) => *n,
            RequestSize::Counted(c) => c.load(Ordering::Relaxed),
        }
    }
}

/// A request body of unannounced length, counting the data bytes the handler reads.
struct CountedRequestBody {
    inner: Body,
    count: Arc<AtomicU64>,
}

impl http_body::Body for CountedRequestBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled
            && let Some(data) = frame.data_ref()
        {
            self.count.fetch_add(data.len() as u64, Ordering::Relaxed);
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

/// The body-size histograms of one response and what they observe.
struct Sizes {
    request: Histogram,
    response: Histogram,
    request_size: RequestSize,
    /// The response's exact announced length, if any.
    response_size: Option<u64>,
}

/// What is still owed when the response body ends: the in-flight count and, with
/// `body_sizes`, the size observations. Consumed exactly once.
struct Completion {
    active: &'static Gauge,
    sizes: Option<Box<Sizes>>,
}

impl Completion {
    fn finish(self, sent: u64) {
        self.active.decrement(1.0);
        if let Some(s) = self.sizes {
            s.request.record(s.request_size.bytes() as f64);
            s.response.record(s.response_size.unwrap_or(sent) as f64);
        }
    }
}

/// What a response body still owes the metrics: the [`Completion`], released at the
/// body's end or when it is dropped before it (the client went away). Kept apart from
/// [`MetricsBody`] so that the stack can meter and log a body with one wrapper.
pub(crate) struct BodyMeter {
    completion: Option<Completion>,
    sent: u64,
}

impl BodyMeter {
    fn finish(&mut self) {
        if let Some(c) = self.completion.take() {
            c.finish(self.sent);
        }
    }

    /// After each poll of the body; `end_stream` is asked after each frame (hyper
    /// stops polling after the last frame of a body that says so).
    #[inline]
    pub(crate) fn polled<E>(
        &mut self,
        polled: &Poll<Option<Result<Frame<Bytes>, E>>>,
        end_stream: impl FnOnce() -> bool,
    ) {
        match polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    self.sent += data.len() as u64;
                }
                if end_stream() {
                    self.finish();
                }
            }
            Poll::Ready(_) => self.finish(),
            Poll::Pending => {}
        }
    }

    /// When the body is dropped.
    #[inline]
    pub(crate) fn dropped(&mut self) {
        self.finish();
    }
}

/// The response body of [`Metrics`].
struct MetricsBody {
    inner: Body,
    meter: BodyMeter,
}

impl http_body::Body for MetricsBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        let inner = &this.inner;
        this.meter.polled(&polled, || inner.is_end_stream());
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for MetricsBody {
    fn drop(&mut self) {
        self.meter.dropped();
    }
}

pin_project_lite::pin_project! {
    /// Response future of [`Metrics`]; decrements the in-flight gauge when dropped
    /// before the response head (a cancelled request), else hands that to the body.
    pub struct MetricsFuture<F> {
        #[pin]
        inner: F,
        state: Option<InFlight>,
    }

    impl<F> PinnedDrop for MetricsFuture<F> {
        fn drop(this: Pin<&mut Self>) {
            if let Some(s) = this.project().state.take() {
                s.abandon();
            }
        }
    }
}

impl<F> std::fmt::Debug for MetricsFuture<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetricsFuture").finish_non_exhaustive()
    }
}

impl<F> Future for MetricsFuture<F>
where
    F: Future<Output = Result<Response, Infallible>>,
{
    type Output = Result<Response, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let Ok(res) = std::task::ready!(this.inner.poll(cx));
        let Some(s) = this.state.take() else {
            return Poll::Ready(Ok(res));
        };
        Poll::Ready(Ok(s.respond(res)))
    }
}

impl InFlight {
    /// Records the response head and hands the rest (the in-flight count, body sizes)
    /// to its body.
    pub(crate) fn respond(self, res: Response) -> Response {
        match self.head(&res) {
            None => res,
            Some(meter) => res.map(|inner| Body::new(MetricsBody { inner, meter })),
        }
    }

    /// Records the response head; what is left for the body, `None` when the response
    /// ends with its head.
    pub(crate) fn head(self, res: &Response) -> Option<BodyMeter> {
        let reg = self.registry;
        let (method, scheme, status) = (
            self.method.into(),
            self.scheme.into(),
            res.status().as_u16(),
        );
        // Saturating: the end may be read on another core, whose TSC can lag by a few
        // ticks (and `quanta` reserves the right to panic on `Sub` there).
        reg.histogram(Kind::Duration, self.route, method, scheme, status)
            .record(
                Instant::now()
                    .saturating_duration_since(self.start)
                    .as_secs_f64(),
            );
        reg.record_outcomes(res);
        let sizes = match self.request_size {
            RequestSize::Off => None,
            request_size => Some(Box::new(Sizes {
                request: reg.histogram(Kind::RequestSize, self.route, method, scheme, status),
                response: reg.histogram(Kind::ResponseSize, self.route, method, scheme, status),
                request_size,
                response_size: http_body::Body::size_hint(res.body()).exact(),
            })),
        };
        let completion = Completion {
            active: self.active,
            sizes,
        };
        if http_body::Body::is_end_stream(res.body()) {
            // Nothing left to send: the request ends with its head.
            completion.finish(0);
            return None;
        }
        Some(BodyMeter {
            completion: Some(completion),
            sent: 0,
        })
    }

    /// The request was dropped before its response head (a cancelled request).
    pub(crate) fn abandon(self) {
        self.active.decrement(1.0);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn methods_are_normalised() {
        assert_eq!(METHODS[method_index(&Method::GET)], "GET");
        assert_eq!(METHODS[method_index(&Method::PATCH)], "PATCH");
        assert_eq!(
            METHODS[method_index(&Method::from_bytes(b"QUERY").unwrap())],
            "QUERY"
        );
        assert_eq!(
            METHODS[method_index(&Method::from_bytes(b"BREW").unwrap())],
            "_OTHER"
        );
    }

    #[test]
    fn config_errors_name_keys() {
        let cfg = MetricsConfig {
            path: "metrics".into(),
            buckets: vec![0.1, 0.1, -1.0],
            exclude_paths: vec!["/ok".into(), "bad".into()],
            ..MetricsConfig::default()
        };
        let err = MetricsLayer::from_config(&cfg, &BuildContext::default()).unwrap_err();
        assert!(err.has_key("metrics.path"), "{err}");
        assert!(err.has_key("metrics.buckets[1]"), "{err}");
        assert!(err.has_key("metrics.buckets[2]"), "{err}");
        assert!(err.has_key("metrics.exclude_paths[1]"), "{err}");
        let off = MetricsConfig {
            enabled: false,
            ..MetricsConfig::default()
        };
        assert!(
            MetricsLayer::from_config(&off, &BuildContext::default())
                .unwrap()
                .is_none()
        );
    }

    /// The first record of a policy or auth outcome registers its counter (write
    /// lock), later ones increment it under the read lock: every one is counted.
    #[test]
    fn outcome_counters_count_first_and_later_records() {
        let reg = Registry::install(DEFAULT_DURATION_BUCKETS);
        let mut res = Response::new(Body::empty());
        res.extensions_mut().insert(RateLimitOutcome {
            limited: false,
            shadow_limited: true,
            policy: "unit-counted".into(),
        });
        res.extensions_mut().insert(AuthOutcome {
            scheme: "jwt",
            identity: None,
            outcome: "unit-counted",
        });
        for _ in 0..3 {
            reg.record_outcomes(&res);
        }
        let text = reg.handle.render();
        let value = |prefix: &str, label: &str| {
            text.lines()
                .find(|l| l.starts_with(prefix) && l.contains(label))
                .and_then(|l| l.rsplit(' ').next())
                .map(str::to_owned)
        };
        assert_eq!(
            value(
                "palisade_rate_limit_decisions_total{",
                r#"policy="unit-counted",outcome="shadow_limited""#
            )
            .as_deref(),
            Some("3"),
            "{text}"
        );
        assert_eq!(
            value("palisade_auth_total{", r#"outcome="unit-counted""#).as_deref(),
            Some("3"),
            "{text}"
        );
    }

    #[test]
    fn route_ids_are_stable_and_capped() {
        let reg = Registry::install(DEFAULT_DURATION_BUCKETS);
        let a = reg.route_id("/unit-test/a");
        assert_eq!(reg.route_id("/unit-test/a"), a);
        assert_ne!(reg.route_id("/unit-test/b"), a);
        assert!(a > ROUTE_OTHER);
    }
}
