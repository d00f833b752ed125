//! OpenTelemetry span export (feature `otel`): each request's `http.server` span,
//! sent over OTLP/HTTP (protobuf) to a collector, continuing the caller's trace.
//!
//! [`telemetry::init`](crate::telemetry::init) adds the export layer when
//! `[logging.otel] enabled = true`:
//!
//! ```toml
//! [logging.otel]
//! enabled = true
//! endpoint = "http://otel-collector:4318/v1/traces"  # OTLP/HTTP, used as written
//! service_name = "checkout"
//! sample_ratio = 0.1   # share of new traces; a traceparent's decision wins
//! timeout_ms = 10000   # per export request
//! ```
//!
//! Call [`shutdown`] when the server has stopped, so the spans still buffered are
//! sent. To compose your own subscriber, add [`layer`] to it.
//!
//! # What is exported
//!
//! The access log's [`http.server`](crate::trace) span becomes an OpenTelemetry
//! `SERVER` span named `{method} {route}` (`{method}` alone for a request that
//! matched no route, so raw paths never name spans), with the attributes
//! `http.request.method` (`_OTHER` for unknown methods), `http.route`, `url.scheme`,
//! `http.response.status_code`, and status `ERROR` for a `5xx`. Spans your handler
//! opens inside it are its children, and the access log's events are its span events.
//!
//! # Trace context
//!
//! A valid W3C `traceparent` makes the caller's span the remote parent: the exported
//! span has the caller's trace id and the caller's span id as its parent, and the
//! caller's sampled flag decides whether it is recorded. Without one, the request
//! starts a new trace, recorded with probability `sample_ratio`. `tracestate` is
//! kept when it is valid.
//!
//! # Transport and cost
//!
//! Spans are batched on a background thread and posted with the `reqwest` client
//! (rustls, Mozilla roots) that the `jwt` feature also uses, on a one-thread runtime
//! of its own, so exporting never runs on your server's runtime and no gRPC stack is
//! built. Without the feature nothing is compiled in; with the feature but export
//! disabled, a request costs one atomic load.

use std::borrow::Cow;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{MatchedPath, Request};
use bytes::Bytes;
use opentelemetry::trace::{
    SpanContext, SpanId, SpanKind, Status, TraceContextExt, TraceFlags, TraceId, TraceState,
    TracerProvider as _,
};
use opentelemetry::{Context, KeyValue, Value};
use opentelemetry_http::{HttpClient, HttpError};
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{
    BatchSpanProcessor, Sampler, SdkTracer, SdkTracerProvider, SpanData, SpanProcessor,
};
use tracing::Span;
use tracing_opentelemetry::{OpenTelemetryLayer, OpenTelemetrySpanExt};
use tracing_subscriber::registry::LookupSpan;

use crate::client_ip::client_info;
use crate::config::logging::OtelConfig;
use crate::error::ConfigError;

/// Name of the access-log span, as `tracing` names it.
const ACCESS_SPAN: &str = "http.server";

/// Whether an export layer was built: the per-request hooks do nothing otherwise.
static ACTIVE: AtomicBool = AtomicBool::new(false);

/// The providers built in this process, for [`force_flush`] and [`shutdown`].
static PROVIDERS: Mutex<Vec<SdkTracerProvider>> = Mutex::new(Vec::new());

/// The `tracing` layer exporting spans as `[logging.otel]` says; `None` when
/// `enabled = false`. Starts the exporter's background thread.
pub fn layer<S>(
    config: &OtelConfig,
) -> Result<Option<OpenTelemetryLayer<S, SdkTracer>>, ConfigError>
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
{
    Ok(tracer(config)?.map(|t| tracing_opentelemetry::layer().with_tracer(t)))
}

/// The tracer exporting as `[logging.otel]` says; `None` when `enabled = false`.
pub(crate) fn tracer(config: &OtelConfig) -> Result<Option<SdkTracer>, ConfigError> {
    config.validate()?;
    if !config.enabled {
        return Ok(None);
    }
    let failed = |e: &dyn std::fmt::Display| {
        ConfigError::new(
            "logging.otel",
            format!("cannot start the OTLP exporter: {e}"),
        )
    };
    let timeout = Duration::from_millis(config.timeout_ms);
    let transport = Transport::new(timeout).map_err(|e| failed(&e))?;
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_http_client(transport)
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(config.endpoint.clone())
        .with_timeout(timeout)
        .build()
        .map_err(|e| failed(&e))?;
    let provider = SdkTracerProvider::builder()
        .with_span_processor(ServerSpans(BatchSpanProcessor::builder(exporter).build()))
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
            config.sample_ratio,
        ))))
        .with_resource(
            Resource::builder()
                .with_service_name(config.service_name.clone())
                .build(),
        )
        .build();
    let tracer = provider.tracer("palisade");
    lock_providers().push(provider);
    ACTIVE.store(true, Ordering::Release);
    Ok(Some(tracer))
}

fn lock_providers() -> std::sync::MutexGuard<'static, Vec<SdkTracerProvider>> {
    PROVIDERS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Sends every span ended so far and waits for the collector's answers (bounded by
/// `timeout_ms`). Blocks: call it from a blocking context.
pub fn force_flush() {
    for p in lock_providers().iter() {
        if let Err(e) = p.force_flush() {
            tracing::warn!(target: "palisade::otel", error = %e, "span export flush failed");
        }
    }
}

/// Flushes the buffered spans and stops every exporter; call it once the server has
/// stopped. Spans ended afterwards are dropped. Blocks, like [`force_flush`].
pub fn shutdown() {
    ACTIVE.store(false, Ordering::Release);
    let providers = std::mem::take(&mut *lock_providers());
    for p in providers {
        if let Err(e) = p.shutdown() {
            tracing::warn!(target: "palisade::otel", error = %e, "span exporter shutdown failed");
        }
    }
}

/// Called by the access log right after it created `span` for `req`: sets the
/// remote parent from `traceparent` and the request attributes.
#[inline]
pub(crate) fn on_request(span: &Span, req: &Request, redact: &[Box<str>]) {
    if ACTIVE.load(Ordering::Relaxed) && !span.is_disabled() {
        start(span, req, redact);
    }
}

/// Called by the access log when the response head is known.
#[inline]
pub(crate) fn on_response(span: &Span, status: u16) {
    if ACTIVE.load(Ordering::Relaxed) && !span.is_disabled() {
        span.set_attribute("http.response.status_code", i64::from(status));
        if status >= 500 {
            span.set_status(Status::error(""));
        }
    }
}

fn start(span: &Span, req: &Request, redact: &[Box<str>]) {
    if let Some(parent) = remote_parent(req) {
        // Fails only if the span was already started, which the access log never does.
        let _ = span.set_parent(Context::new().with_remote_span_context(parent));
    }
    span.set_attribute("http.request.method", method_name(req.method()));
    if let Some(route) = req.extensions().get::<MatchedPath>() {
        span.set_attribute("http.route", route.as_str().to_owned());
    }
    span.set_attribute("url.scheme", client_info(req).scheme.as_str());
    span.set_attribute("url.path", req.uri().path().to_owned());
    if let Some(query) = req.uri().query() {
        // The same redaction as the access log: secrets never leave in a span either.
        span.set_attribute(
            "url.query",
            crate::trace::RedactedQuery(query, redact).to_string(),
        );
    }
}

/// OpenTelemetry's known methods; anything else is `_OTHER`.
fn method_name(m: &http::Method) -> &'static str {
    match m.as_str() {
        "GET" => "GET",
        "HEAD" => "HEAD",
        "POST" => "POST",
        "PUT" => "PUT",
        "DELETE" => "DELETE",
        "CONNECT" => "CONNECT",
        "OPTIONS" => "OPTIONS",
        "TRACE" => "TRACE",
        "PATCH" => "PATCH",
        "QUERY" => "QUERY",
        _ => "_OTHER",
    }
}

const TRACESTATE: http::HeaderName = http::HeaderName::from_static("tracestate");

/// The caller's span from a valid `traceparent` (and `tracestate`, when valid).
fn remote_parent(req: &Request) -> Option<SpanContext> {
    let header = req.headers().get(&crate::trace::TRACEPARENT)?;
    let (trace, span) = crate::trace::parse_traceparent(header)?;
    let flags = u8::from_str_radix(header.to_str().ok()?.get(53..55)?, 16).ok()?;
    let state = req
        .headers()
        .get(&TRACESTATE)
        .and_then(|v| v.to_str().ok())
        .and_then(|s| s.parse::<TraceState>().ok())
        .unwrap_or_default();
    Some(SpanContext::new(
        TraceId::from_hex(trace).ok()?,
        SpanId::from_hex(span).ok()?,
        TraceFlags::new(flags & TraceFlags::SAMPLED.to_u8()),
        true,
        state,
    ))
}

/// Gives the access-log span its OpenTelemetry shape on the way to the exporter:
/// kind `SERVER`, name `{method} {route}`, and no duplicate or log-only attributes.
#[derive(Debug)]
struct ServerSpans<P>(P);

impl<P: SpanProcessor> SpanProcessor for ServerSpans<P> {
    fn on_start(&self, span: &mut opentelemetry_sdk::trace::Span, cx: &Context) {
        self.0.on_start(span, cx);
    }

    fn on_end(&self, mut span: SpanData) {
        if span.name == ACCESS_SPAN && span.instrumentation_scope.name() == "palisade" {
            shape_server_span(&mut span);
        }
        self.0.on_end(span);
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.0.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.0.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.0.set_resource(resource);
    }
}

fn shape_server_span(span: &mut SpanData) {
    // Attributes set last win; the log's `trace_id`/`span_id` fields are the caller's
    // ids, which OpenTelemetry carries as the parent instead.
    let mut kept: Vec<KeyValue> = Vec::with_capacity(span.attributes.len());
    for kv in span.attributes.drain(..).rev() {
        let key = kv.key.as_str();
        if key == "trace_id" || key == "span_id" || kept.iter().any(|k| k.key == kv.key) {
            continue;
        }
        kept.push(kv);
    }
    kept.reverse();
    let text = |key: &str| {
        kept.iter()
            .find(|kv| kv.key.as_str() == key)
            .and_then(|kv| match &kv.value {
                Value::String(s) => Some(s.as_str().to_owned()),
                _ => None,
            })
    };
    let method = text("http.request.method");
    if let Some(method) = method {
        span.name = match text("http.route") {
            Some(route) => Cow::Owned(format!("{method} {route}")),
            None => Cow::Owned(method),
        };
        span.span_kind = SpanKind::Server;
    }
    span.attributes = kept;
}

/// OTLP transport: `reqwest` with rustls, on a one-thread runtime of its own (the
/// batch processor exports from a plain thread).
#[derive(Debug, Clone)]
struct Transport {
    client: reqwest::Client,
    runtime: tokio::runtime::Handle,
}

impl Transport {
    fn new(timeout: Duration) -> Result<Self, String> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let roots = rustls::RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        };
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let client = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .timeout(timeout)
            .connect_timeout(timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| e.to_string())?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        let handle = runtime.handle().clone();
        std::thread::Builder::new()
            .name("palisade-otlp".into())
            .spawn(move || runtime.block_on(std::future::pending::<()>()))
            .map_err(|e| e.to_string())?;
        Ok(Self {
            client,
            runtime: handle,
        })
    }
}

/// Largest collector answer read (an OTLP answer is a few bytes).
const MAX_ANSWER: usize = 64 * 1024;

impl HttpClient for Transport {
    fn send_bytes<'life0, 'async_trait>(
        &'life0 self,
        request: http::Request<Bytes>,
    ) -> Pin<Box<dyn Future<Output = Result<http::Response<Bytes>, HttpError>> + Send + 'async_trait>>
    where
        'life0: 'async_trait,
        Self: 'async_trait,
    {
        let client = self.client.clone();
        let task = self.runtime.spawn(async move {
            let request = reqwest::Request::try_from(request)?;
            let mut res = client.execute(request).await?;
            let mut answer = http::Response::builder().status(res.status());
            if let Some(h) = answer.headers_mut() {
                *h = std::mem::take(res.headers_mut());
            }
            let mut body = Vec::new();
            while let Some(chunk) = res.chunk().await? {
                if body.len() + chunk.len() > MAX_ANSWER {
                    return Err::<_, HttpError>("collector answer too large".into());
                }
                body.extend_from_slice(&chunk);
            }
            Ok(answer.body(Bytes::from(body))?)
        });
        Box::pin(async move { task.await.map_err(|e| Box::new(e) as HttpError)? })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_becomes_a_remote_parent() {
        let req = http::Request::get("/")
            .header(
                "traceparent",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            )
            .header("tracestate", "vendor=abc")
            .body(axum::body::Body::empty())
            .unwrap();
        let parent = remote_parent(&req).unwrap();
        assert_eq!(
            parent.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(parent.span_id().to_string(), "00f067aa0ba902b7");
        assert!(parent.is_sampled() && parent.is_remote());
        assert_eq!(parent.trace_state().get("vendor"), Some("abc"));
        let bad = http::Request::get("/")
            .header(
                "traceparent",
                "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            )
            .body(axum::body::Body::empty())
            .unwrap();
        assert!(remote_parent(&bad).is_none());
    }

    #[test]
    fn server_spans_are_named_by_route_and_lose_duplicates() {
        let mut span = SpanData {
            span_context: SpanContext::empty_context(),
            parent_span_id: SpanId::INVALID,
            parent_span_is_remote: false,
            span_kind: SpanKind::Internal,
            name: ACCESS_SPAN.into(),
            start_time: std::time::SystemTime::now(),
            end_time: std::time::SystemTime::now(),
            attributes: vec![
                KeyValue::new("trace_id", "4bf92f3577b34da6a3ce929d0e0e4736"),
                KeyValue::new("http.request.method", "GET"),
                KeyValue::new("http.route", "/items/{id}"),
                KeyValue::new("http.request.method", "GET"),
            ],
            dropped_attributes_count: 0,
            events: Default::default(),
            links: Default::default(),
            status: Status::Unset,
            instrumentation_scope: Default::default(),
        };
        shape_server_span(&mut span);
        assert_eq!(span.name, "GET /items/{id}");
        assert_eq!(span.span_kind, SpanKind::Server);
        let keys: Vec<&str> = span.attributes.iter().map(|kv| kv.key.as_str()).collect();
        assert_eq!(keys, ["http.route", "http.request.method"]);
    }
}
