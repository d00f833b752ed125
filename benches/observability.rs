//! Per-request cost of palisade's observability group (request id, JSON access log
//! and Prometheus metrics) against a bare router and against the usual pair doing the
//! same job: tower-http `SetRequestId`/`TraceLayer` (JSON, INFO span with the
//! request id, INFO response event) + axum-prometheus, all in one run.
//!
//! Each sample runs N requests on a current-thread runtime: build a `GET /hello`
//! request with a `ConnectInfo`, `oneshot` the finalized router (`with_state(())`),
//! drain the body. Log lines go to `io::sink` (all formatting, no IO). Both
//! exporters' upkeep runs at the end of every sample, so its amortized cost counts.
//!
//! Each side logs through its recommended subscriber (palisade:
//! `telemetry::json_subscriber`, what `telemetry::init` installs; the anchor:
//! `tracing_subscriber::fmt().json()`). The `…(fmt-json)` variants run palisade's
//! layers through the anchor's subscriber too, so both comparisons are reported.
//!
//! The `span_filter` group times one span's life through `EnvFilter` and through
//! `telemetry::filter` on one and two threads.
//!
//! `cargo bench --bench observability`
#![allow(clippy::unwrap_used, missing_docs)]

use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::routing::get;
use criterion::{Criterion, criterion_group, criterion_main};
use tower::ServiceExt;
use tracing::Dispatch;

use palisade::config::LoggingConfig;
use palisade::metrics::MetricsLayer;
use palisade::request_id::RequestIdLayer;
use palisade::trace::TraceLayer;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn base() -> Router<()> {
    Router::new().route("/hello", get(|| async { "hello" }))
}

/// axum-prometheus installs a global recorder and panics if asked twice: once only.
fn axum_prometheus() -> &'static (
    axum_prometheus::PrometheusMetricLayer<'static>,
    metrics_exporter_prometheus::PrometheusHandle,
) {
    static PAIR: OnceLock<(
        axum_prometheus::PrometheusMetricLayer<'static>,
        metrics_exporter_prometheus::PrometheusHandle,
    )> = OnceLock::new();
    PAIR.get_or_init(axum_prometheus::PrometheusMetricLayer::pair)
}

fn palisade_json() -> Dispatch {
    Dispatch::new(
        palisade::telemetry::json_subscriber(&LoggingConfig::default(), std::io::sink).unwrap(),
    )
}

fn tracing_json() -> Dispatch {
    Dispatch::new(
        tracing_subscriber::fmt()
            .json()
            .with_env_filter(tracing_subscriber::EnvFilter::new("info"))
            .with_writer(std::io::sink)
            .finish(),
    )
}

fn tower_http_trace() -> tower_http::trace::TraceLayer<
    tower_http::classify::SharedClassifier<tower_http::classify::ServerErrorsAsFailures>,
    impl Fn(&http::Request<Body>) -> tracing::Span + Clone,
    (),
    tower_http::trace::DefaultOnResponse,
> {
    tower_http::trace::TraceLayer::new_for_http()
        .make_span_with(|req: &http::Request<Body>| {
            let id = req
                .extensions()
                .get::<tower_http::request_id::RequestId>()
                .and_then(|id| id.header_value().to_str().ok());
            tracing::info_span!(
                "request",
                method = %req.method(),
                uri = %req.uri(),
                version = ?req.version(),
                request_id = id,
            )
        })
        .on_request(())
        .on_response(tower_http::trace::DefaultOnResponse::new().level(tracing::Level::INFO))
}

struct Variant {
    name: &'static str,
    app: Router,
    dispatch: Option<Dispatch>,
}

fn variants(rt: &tokio::runtime::Runtime) -> Vec<Variant> {
    let _enter = rt.enter();
    // Installed first so it gets the global recorder; palisade keeps its own.
    let (ap_layer, _) = axum_prometheus();
    let palisade_metrics = MetricsLayer::new();
    let rid = tower_http::request_id::SetRequestIdLayer::x_request_id(
        tower_http::request_id::MakeRequestUuid,
    );
    let prid = tower_http::request_id::PropagateRequestIdLayer::x_request_id();
    vec![
        Variant {
            name: "bare",
            app: base().with_state(()),
            dispatch: None,
        },
        Variant {
            name: "palisade/metrics",
            app: base().layer(palisade_metrics.clone()).with_state(()),
            dispatch: None,
        },
        Variant {
            name: "anchor/axum-prometheus",
            app: base().layer(ap_layer.clone()).with_state(()),
            dispatch: None,
        },
        Variant {
            name: "palisade/request-id+log",
            app: base()
                .layer(
                    tower::ServiceBuilder::new()
                        .layer(RequestIdLayer::new())
                        .layer(TraceLayer::new()),
                )
                .with_state(()),
            dispatch: Some(palisade_json()),
        },
        Variant {
            name: "palisade/request-id+log(fmt-json)",
            app: base()
                .layer(
                    tower::ServiceBuilder::new()
                        .layer(RequestIdLayer::new())
                        .layer(TraceLayer::new()),
                )
                .with_state(()),
            dispatch: Some(tracing_json()),
        },
        Variant {
            name: "anchor/tower-http-request-id+trace",
            app: base()
                .layer(
                    tower::ServiceBuilder::new()
                        .layer(rid.clone())
                        .layer(tower_http_trace())
                        .layer(prid.clone()),
                )
                .with_state(()),
            dispatch: Some(tracing_json()),
        },
        Variant {
            name: "palisade/all",
            app: base()
                .layer(
                    tower::ServiceBuilder::new()
                        .layer(RequestIdLayer::new())
                        .layer(TraceLayer::new())
                        .layer(palisade_metrics.clone()),
                )
                .with_state(()),
            dispatch: Some(palisade_json()),
        },
        Variant {
            name: "palisade/all(fmt-json)",
            app: base()
                .layer(
                    tower::ServiceBuilder::new()
                        .layer(RequestIdLayer::new())
                        .layer(TraceLayer::new())
                        .layer(palisade_metrics.clone()),
                )
                .with_state(()),
            dispatch: Some(tracing_json()),
        },
        Variant {
            name: "anchor/all",
            app: base()
                .layer(
                    tower::ServiceBuilder::new()
                        .layer(rid)
                        .layer(tower_http_trace())
                        .layer(prid)
                        .layer(ap_layer.clone()),
                )
                .with_state(()),
            dispatch: Some(tracing_json()),
        },
    ]
}

async fn one(app: &Router) {
    let req = http::Request::get("/hello")
        .header("host", "localhost")
        .extension(ConnectInfo(SocketAddr::from(([127, 0, 0, 1], 40000))))
        .body(Body::empty())
        .unwrap();
    let res = app.clone().oneshot(req).await.unwrap();
    let body = axum::body::to_bytes(res.into_body(), 1024).await.unwrap();
    assert_eq!(&body[..], b"hello");
}

fn bench(c: &mut Criterion) {
    let rt = runtime();
    let variants = variants(&rt);
    let palisade_metrics = MetricsLayer::new();
    let ap_handle = &axum_prometheus().1;
    let mut group = c.benchmark_group("observability");
    for v in &variants {
        group.bench_function(v.name, |b| {
            b.iter_custom(|iters| {
                let _guard = v.dispatch.as_ref().map(tracing::dispatcher::set_default);
                rt.block_on(async {
                    let start = Instant::now();
                    for _ in 0..iters {
                        one(&v.app).await;
                    }
                    palisade_metrics.run_upkeep();
                    ap_handle.run_upkeep();
                    start.elapsed()
                })
            });
        });
    }
    group.finish();
}

/// One request span's life (create, enter, exit, close) on `threads` threads at once,
/// through a registry with only a filter: `EnvFilter` against what `telemetry::filter`
/// builds for the same `info` (`Targets`). `EnvFilter` takes a read lock shared by every
/// thread at each step; the time is per span, all threads together.
fn span_filter(c: &mut Criterion) {
    use tracing_subscriber::layer::SubscriberExt;
    let config = LoggingConfig::default();
    let filters: [(&str, Dispatch); 2] = [
        (
            "EnvFilter",
            Dispatch::new(
                tracing_subscriber::registry()
                    .with(palisade::telemetry::env_filter(&config).unwrap()),
            ),
        ),
        (
            "telemetry::filter",
            Dispatch::new(
                tracing_subscriber::registry().with(palisade::telemetry::filter(&config).unwrap()),
            ),
        ),
    ];
    let mut group = c.benchmark_group("span_filter");
    for threads in [1_u64, 2] {
        for (name, dispatch) in &filters {
            group.bench_function(format!("{name}/{threads} threads"), |b| {
                b.iter_custom(|iters| {
                    let per_thread = iters.div_ceil(threads);
                    let start = Instant::now();
                    std::thread::scope(|s| {
                        for _ in 0..threads {
                            s.spawn(|| {
                                tracing::dispatcher::with_default(dispatch, || {
                                    for i in 0..per_thread {
                                        let span = tracing::info_span!("request", n = i);
                                        let _entered = span.enter();
                                    }
                                });
                            });
                        }
                    });
                    start.elapsed()
                });
            });
        }
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_secs(2)).measurement_time(Duration::from_secs(5));
    targets = bench, span_filter
}
criterion_main!(benches);
