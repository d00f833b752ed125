#![allow(clippy::unwrap_used)]
//! OpenTelemetry export through a real OTLP/HTTP exporter: a small collector on
//! 127.0.0.1 decodes the protobuf posts, and the test checks the exported spans.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, State};
use axum::routing::{get, post};
use http::StatusCode;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::{Span, span::SpanKind, status::StatusCode as Code};
use palisade::config::logging::OtelConfig;
use palisade::{Config, Palisade};
use prost::Message;
use tower::ServiceExt;
use tracing_subscriber::layer::SubscriberExt;

type Received = Arc<Mutex<Vec<(String, Span)>>>;

/// An OTLP/HTTP traces receiver: decodes each post, keeps `(service.name, span)`.
async fn collector() -> (SocketAddr, Received) {
    let received: Received = Arc::default();
    let app = Router::new()
        .route(
            "/v1/traces",
            post(
                |State(r): State<Received>, headers: http::HeaderMap, body: Bytes| async move {
                    assert_eq!(headers["content-type"], "application/x-protobuf");
                    let req = ExportTraceServiceRequest::decode(body).unwrap();
                    for rs in req.resource_spans {
                        let service = rs
                            .resource
                            .iter()
                            .flat_map(|r| &r.attributes)
                            .find(|kv| kv.key == "service.name")
                            .and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
                                Value::StringValue(s) => Some(s.clone()),
                                _ => None,
                            })
                            .unwrap_or_default();
                        for ss in rs.scope_spans {
                            for span in ss.spans {
                                r.lock().unwrap().push((service.clone(), span));
                            }
                        }
                    }
                    ([("content-type", "application/x-protobuf")], Bytes::new())
                },
            ),
        )
        .with_state(received.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (addr, received)
}

fn attr<'a>(span: &'a Span, key: &str) -> Option<&'a Value> {
    span.attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref()?.value.as_ref())
}

fn text<'a>(span: &'a Span, key: &str) -> Option<&'a str> {
    match attr(span, key)? {
        Value::StringValue(s) => Some(s),
        _ => None,
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn request(method: &str, uri: &str) -> http::request::Builder {
    http::Request::builder()
        .method(method)
        .uri(uri)
        .header("host", "localhost")
        .extension(ConnectInfo(SocketAddr::from(([198, 51, 100, 7], 40000))))
}

async fn send(app: &Router, req: http::Request<Body>) -> StatusCode {
    let res = app.clone().oneshot(req).await.unwrap();
    let status = res.status();
    axum::body::to_bytes(res.into_body(), 1 << 20)
        .await
        .unwrap();
    status
}

/// Flushes the exporter (blocking, off the runtime) until `n` spans have arrived.
async fn spans(received: &Received, n: usize) -> Vec<(String, Span)> {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        tokio::task::spawn_blocking(palisade::otel::force_flush)
            .await
            .unwrap();
        let got = received.lock().unwrap().clone();
        if got.len() >= n || std::time::Instant::now() > deadline {
            return got;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

const CALLER_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";
const UNSAMPLED_TRACE: &str = "0af7651916cd43dd8448eb211c80319c";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_spans_are_exported_over_otlp_and_continue_the_callers_trace() {
    let (addr, received) = collector().await;
    let mut otel = OtelConfig::default();
    otel.enabled = true;
    otel.endpoint = format!("http://{addr}/v1/traces");
    otel.service_name = "otel-test".into();
    otel.timeout_ms = 5000;
    let layer = palisade::otel::layer(&otel).unwrap().unwrap();
    tracing::subscriber::set_global_default(tracing_subscriber::registry().with(layer)).unwrap();

    let palisade = Palisade::from_config(Config::default()).await.unwrap();
    let app = Router::new()
        .route("/orders/{id}", get(|| async { "order" }))
        .route(
            "/boom",
            get(|| async { (StatusCode::INTERNAL_SERVER_ERROR, "boom") }),
        )
        .merge(palisade.routes())
        .layer(palisade.layer());

    // The caller did not sample: nothing is recorded for its trace.
    let unsampled = format!("00-{UNSAMPLED_TRACE}-{CALLER_SPAN}-00");
    let req = request("GET", "/orders/1").header("traceparent", unsampled);
    assert_eq!(send(&app, req.body(Body::empty()).unwrap()).await, 200);
    let sampled = format!("00-{CALLER_TRACE}-{CALLER_SPAN}-01");
    let req = request("GET", "/orders/7?token=secret").header("traceparent", sampled);
    assert_eq!(send(&app, req.body(Body::empty()).unwrap()).await, 200);
    let req = request("GET", "/orders/8");
    assert_eq!(send(&app, req.body(Body::empty()).unwrap()).await, 200);
    let req = request("BREW", "/boom");
    assert_eq!(send(&app, req.body(Body::empty()).unwrap()).await, 405);
    let req = request("GET", "/boom");
    assert_eq!(send(&app, req.body(Body::empty()).unwrap()).await, 500);
    // Operational routes are not logged, so not exported either.
    let req = request("GET", "/health");
    assert_eq!(send(&app, req.body(Body::empty()).unwrap()).await, 200);

    let got = spans(&received, 4).await;
    let names: Vec<&str> = got.iter().map(|(_, s)| s.name.as_str()).collect();
    assert_eq!(got.len(), 4, "{names:?}");
    assert!(got.iter().all(|(service, _)| service == "otel-test"));
    assert!(got.iter().all(|(_, s)| s.kind == SpanKind::Server as i32));
    assert!(
        got.iter().all(|(_, s)| hex(&s.trace_id) != UNSAMPLED_TRACE),
        "an unsampled caller's trace was recorded"
    );

    // With a traceparent: the caller's trace, the caller's span as parent.
    let (_, child) = got
        .iter()
        .find(|(_, s)| hex(&s.trace_id) == CALLER_TRACE)
        .unwrap();
    assert_eq!(hex(&child.parent_span_id), CALLER_SPAN);
    assert_ne!(hex(&child.span_id), CALLER_SPAN);
    assert_eq!(child.name, "GET /orders/{id}");
    assert_eq!(text(child, "http.request.method"), Some("GET"));
    assert_eq!(text(child, "http.route"), Some("/orders/{id}"));
    assert_eq!(text(child, "url.scheme"), Some("http"));
    assert_eq!(
        attr(child, "http.response.status_code"),
        Some(&Value::IntValue(200))
    );
    assert_eq!(text(child, "url.query"), Some("token=[REDACTED]"));
    // The completion event is a span event named by its `message` field.
    let events: Vec<&str> = child.events.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(events, ["request completed"]);
    assert!(attr(child, "trace_id").is_none() && attr(child, "span_id").is_none());
    assert_ne!(
        child.status.as_ref().map_or(0, |s| s.code),
        Code::Error as i32
    );

    // Without one: a new trace, no parent.
    let roots: Vec<&Span> = got
        .iter()
        .map(|(_, s)| s)
        .filter(|s| s.parent_span_id.is_empty())
        .collect();
    assert_eq!(roots.len(), 3, "{names:?}");
    let fresh = roots.iter().find(|s| s.name == "GET /orders/{id}").unwrap();
    assert_eq!(fresh.trace_id.len(), 16);
    assert_ne!(hex(&fresh.trace_id), CALLER_TRACE);
    assert!(fresh.trace_id.iter().any(|b| *b != 0));

    // An unknown method is `_OTHER`; a 5xx is an error.
    let other = roots.iter().find(|s| s.name == "_OTHER /boom").unwrap();
    assert_eq!(text(other, "http.request.method"), Some("_OTHER"));
    assert_eq!(
        attr(other, "http.response.status_code"),
        Some(&Value::IntValue(405))
    );
    let failed = roots.iter().find(|s| s.name == "GET /boom").unwrap();
    assert_eq!(
        failed.status.as_ref().map(|s| s.code),
        Some(Code::Error as i32)
    );

    tokio::task::spawn_blocking(palisade::otel::shutdown)
        .await
        .unwrap();
}

#[test]
fn bad_otel_config_fails_at_start_up_with_every_key() {
    let mut otel = OtelConfig::default();
    otel.enabled = true;
    otel.endpoint = "grpc://collector".into();
    otel.sample_ratio = -0.5;
    let err = match palisade::otel::layer::<tracing_subscriber::Registry>(&otel) {
        Err(e) => e,
        Ok(_) => panic!("accepted"),
    };
    assert!(err.has_key("logging.otel.endpoint"), "{err}");
    assert!(err.has_key("logging.otel.sample_ratio"), "{err}");
    let mut config = Config::default();
    config.logging.otel = otel;
    let err = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
        .block_on(Palisade::from_config(config))
        .unwrap_err();
    assert!(err.has_key("logging.otel.endpoint"), "{err}");
    let mut config = Config::default();
    config.logging.otel.timeout_ms = 0;
    assert!(matches!(
        palisade::telemetry::init(&config.logging),
        Err(palisade::telemetry::InitError::Config(_))
    ));
}
