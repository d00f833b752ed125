#![allow(clippy::unwrap_used)]
//! Whole-stack observability tests: access log lines captured from a real
//! subscriber, `/metrics` scraped after real traffic, readiness and shutdown.
//!
//! Every request is made to look like it arrived over TLS from 198.51.100.7, so the
//! tests hold whatever the HTTPS layer's defaults are. The metrics exporter is shared
//! by the whole process (as in production), so each test uses its own route names
//! and method where it reads series.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodFilter, get, on};
use bytes::Bytes;
use http::StatusCode;
use palisade::client_ip::ConnectionTls;
use palisade::config::LoggingConfig;
use palisade::outcome::{AuthOutcome, CacheOutcome, CacheStatus, RateLimitOutcome};
use palisade::problem::Problem;
use palisade::{Config, Palisade};
use serde_json::Value;
use tower::ServiceExt;

#[derive(Clone, Default)]
struct Buf(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Buf {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Buf {
    fn text(&self) -> String {
        String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
    }
    fn lines(&self) -> Vec<Value> {
        self.text()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect()
    }
    fn access(&self) -> Vec<Value> {
        self.lines()
            .into_iter()
            .filter(|v| v["target"] == "palisade::access")
            .collect()
    }
}

/// Captures JSON log lines on this thread (tests use the current-thread runtime).
fn capture() -> (Buf, tracing::subscriber::DefaultGuard) {
    let buf = Buf::default();
    let writer = buf.clone();
    let sub =
        palisade::telemetry::json_subscriber(&LoggingConfig::default(), move || writer.clone())
            .unwrap();
    (buf, tracing::subscriber::set_default(sub))
}

fn request(method: &str, uri: &str) -> http::request::Builder {
    http::Request::builder()
        .method(method)
        .uri(uri)
        .header("host", "localhost")
        .extension(ConnectInfo(SocketAddr::from(([198, 51, 100, 7], 40000))))
        .extension(ConnectionTls)
}

async fn send(app: &Router, req: http::Request<Body>) -> (Response, Bytes) {
    let res = app.clone().oneshot(req).await.unwrap();
    let (parts, body) = res.into_parts();
    let bytes = axum::body::to_bytes(body, 1 << 20).await.unwrap();
    (Response::from_parts(parts, Body::empty()), bytes)
}

async fn stack(config: Config, routes: Router) -> (Palisade, Router) {
    let palisade = Palisade::from_config(config).await.unwrap();
    let app = routes
        .merge(palisade.routes())
        .layer(palisade.layer())
        .with_state(());
    (palisade, app)
}

fn unauthorized() -> Response {
    let mut res = Problem::new(StatusCode::UNAUTHORIZED)
        .header(
            http::header::WWW_AUTHENTICATE,
            http::HeaderValue::from_static("ApiKey"),
        )
        .rejection("auth", "invalid_key")
        .into_response();
    res.extensions_mut().insert(AuthOutcome {
        scheme: "api_key",
        identity: None,
        outcome: "invalid",
    });
    res
}

fn limited() -> Response {
    let mut res = Problem::new(StatusCode::TOO_MANY_REQUESTS)
        .header(
            http::header::RETRY_AFTER,
            http::HeaderValue::from_static("3"),
        )
        .rejection("rate_limit", "limited")
        .into_response();
    res.extensions_mut().insert(RateLimitOutcome {
        limited: true,
        shadow_limited: false,
        policy: "obs-per-ip".into(),
    });
    res
}

fn cached_ok() -> Response {
    let mut res = "cached".into_response();
    res.extensions_mut().insert(CacheOutcome {
        status: CacheStatus::Hit,
        reason: "fresh",
    });
    res.extensions_mut().insert(AuthOutcome {
        scheme: "jwt",
        identity: Some("user-17".into()),
        outcome: "ok",
    });
    res
}

#[tokio::test]
async fn completed_request_has_every_field_and_no_secret() {
    let (buf, _guard) = capture();
    let routes = Router::new().route(
        "/log-items/{id}",
        get(|| async {
            tracing::info!(target: "app", "handler ran");
            "item"
        }),
    );
    let (_p, app) = stack(Config::default(), routes).await;
    let req = request("GET", "/log-items/7?token=s3cr3t-query&page=2")
        .header("authorization", "Bearer s3cr3t-bearer")
        .header("cookie", "session=s3cr3t-cookie")
        .header("user-agent", "obs-test/1.0")
        .header("x-request-id", "req-abc-1")
        .header(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        )
        .body(Body::empty())
        .unwrap();
    let (res, body) = send(&app, req).await;
    assert_eq!(res.status(), 200);
    assert_eq!(&body[..], b"item");
    assert_eq!(res.headers()["x-request-id"], "req-abc-1");

    let text = buf.text();
    assert!(
        !text.contains("s3cr3t"),
        "a secret leaked into the logs:\n{text}"
    );
    let lines = buf.lines();
    // The handler's own event carries the request's span fields at the top level.
    let handler = lines
        .iter()
        .find(|v| v["message"] == "handler ran")
        .unwrap();
    assert_eq!(handler["request_id"], "req-abc-1");
    assert_eq!(handler["http.route"], "/log-items/{id}");

    let access = buf.access();
    assert_eq!(access.len(), 1, "exactly one completion event: {text}");
    let v = &access[0];
    assert_eq!(v["message"], "request completed");
    assert_eq!(v["level"], "INFO");
    assert_eq!(v["request_id"], "req-abc-1");
    assert_eq!(v["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(v["span_id"], "00f067aa0ba902b7");
    assert_eq!(v["http.request.method"], "GET");
    assert_eq!(v["http.route"], "/log-items/{id}");
    assert_eq!(v["url.path"], "/log-items/7");
    assert_eq!(v["url.query"], "token=[REDACTED]&page=2");
    assert_eq!(v["url.scheme"], "https");
    assert_eq!(v["client.address"], "198.51.100.7");
    assert_eq!(v["user_agent.original"], "obs-test/1.0");
    assert_eq!(v["http.response.status_code"], 200);
    assert_eq!(v["http.response.body.size"], 4);
    assert!(v["duration_ms"].as_f64().unwrap() >= 0.0);
    assert!(v["timestamp"].as_str().unwrap().ends_with('Z'));
    assert!(v.get("error.type").is_none());
}

/// With the access log on, the stack's rate limiter, auth and cache attach their
/// records to every response they let through, and the log line carries them; they are
/// not asked by a marker in the request (one extension fewer per request), so the
/// handler sees none.
#[cfg(all(feature = "rate-limit", feature = "api-key", feature = "cache"))]
#[tokio::test]
async fn admitted_requests_log_each_layers_decision_without_a_request_marker() {
    use palisade::outcome::RecordOutcomes;
    let (buf, _guard) = capture();
    let config = Config::from_toml_str(
        r#"
[rate_limit]
[[rate_limit.policies]]
name = "obs-admit-ip"
key = "ip"
limit = 100
period_s = 60

[auth]
[[auth.api_keys]]
id = "obs-admit"
sha256 = "c971f9b5ad1ac5e78ef3a08b0ed5cf07a87c4eaaca80552f2fc80ec8a314e0fd"
[[auth.rules]]
paths = ["/obs-admitted"]
require = "api_key"

[cache]
[[cache.rules]]
paths = ["/obs-cached/{id}"]
ttl_s = 30
"#,
    )
    .unwrap();
    let marker = |req: axum::extract::Request| async move {
        req.extensions()
            .get::<RecordOutcomes>()
            .is_some()
            .to_string()
    };
    let routes = Router::new()
        .route("/obs-admitted", get(marker))
        .route("/obs-cached/{id}", get(marker));
    let (_p, app) = stack(config, routes).await;

    let req = request("GET", "/obs-admitted")
        .header("x-api-key", "obs-admit-key-0123456789")
        .body(Body::empty())
        .unwrap();
    let (res, body) = send(&app, req).await;
    assert_eq!(res.status(), 200);
    assert_eq!(&body[..], b"false", "no marker reaches the handler");
    let (res, body) = send(
        &app,
        request("GET", "/obs-cached/1").body(Body::empty()).unwrap(),
    )
    .await;
    assert_eq!(res.status(), 200);
    assert_eq!(&body[..], b"false");

    let access = buf.access();
    assert_eq!(access.len(), 2, "{}", buf.text());
    let (admitted, cached) = (&access[0], &access[1]);
    assert_eq!(admitted["rate_limit.outcome"], "allowed");
    assert_eq!(admitted["rate_limit.policy"], "obs-admit-ip");
    assert_eq!(admitted["auth.outcome"], "ok");
    assert_eq!(admitted["auth.identity"], "obs-admit");
    assert_eq!(cached["rate_limit.outcome"], "allowed");
    assert_eq!(cached["cache.status"], "miss");
}

#[tokio::test]
async fn rejections_carry_palisade_decisions() {
    let (buf, _guard) = capture();
    let routes = Router::new()
        .route("/log-login", get(|| async { unauthorized() }))
        .route("/log-limited", get(|| async { limited() }))
        .route("/log-cached", get(|| async { cached_ok() }))
        .route(
            "/log-boom",
            get(|| async { StatusCode::INTERNAL_SERVER_ERROR }),
        );
    let config = Config::from_toml_str("[logging]\nclient_error_level = \"warn\"\n").unwrap();
    let (_p, app) = stack(config, routes).await;
    for (path, status) in [
        ("/log-login", 401),
        ("/log-limited", 429),
        ("/log-cached", 200),
        ("/log-boom", 500),
    ] {
        let req = request("GET", path)
            .header("x-request-id", "bad id with spaces")
            .body(Body::empty())
            .unwrap();
        let (res, _) = send(&app, req).await;
        assert_eq!(res.status(), status);
        // The unsafe incoming id was replaced by a UUID v7, on rejections too.
        let id = res.headers()["x-request-id"].to_str().unwrap();
        assert_eq!(id.len(), 36, "{id}");
    }
    let access = buf.access();
    assert_eq!(access.len(), 4, "{}", buf.text());
    let by_path = |p: &str| access.iter().find(|v| v["url.path"] == p).unwrap().clone();

    let v = by_path("/log-login");
    assert_eq!(v["level"], "WARN");
    assert_eq!(v["http.response.status_code"], 401);
    assert_eq!(v["auth.scheme"], "api_key");
    assert_eq!(v["auth.outcome"], "invalid");
    assert!(v.get("auth.identity").is_none());
    assert_eq!(v["rejection.layer"], "auth");
    assert_eq!(v["rejection.reason"], "invalid_key");
    assert_eq!(v["request_id"].as_str().unwrap().len(), 36);

    let v = by_path("/log-limited");
    assert_eq!(v["level"], "WARN");
    assert_eq!(v["http.response.status_code"], 429);
    assert_eq!(v["rate_limit.outcome"], "limited");
    assert_eq!(v["rate_limit.policy"], "obs-per-ip");
    assert_eq!(v["rejection.layer"], "rate_limit");

    let v = by_path("/log-cached");
    assert_eq!(v["level"], "INFO");
    assert_eq!(v["cache.status"], "hit");
    assert_eq!(v["cache.reason"], "fresh");
    assert_eq!(v["auth.identity"], "user-17");

    assert_eq!(by_path("/log-boom")["level"], "ERROR");

    // The same decisions are counted.
    let (_, metrics) = send(
        &app,
        request("GET", "/metrics").body(Body::empty()).unwrap(),
    )
    .await;
    let metrics = String::from_utf8(metrics.to_vec()).unwrap();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("palisade_auth_total{")
                && l.contains(r#"scheme="api_key""#)
                && l.contains(r#"outcome="invalid""#)),
        "{metrics}"
    );
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("palisade_rate_limit_decisions_total{")
                && l.contains(r#"policy="obs-per-ip""#)
                && l.contains(r#"outcome="limited""#))
    );
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("palisade_cache_requests_total{")
                && l.contains(r#"result="hit""#))
    );
}

/// A body that sends one chunk and then never ends.
struct Endless {
    sent: bool,
}

impl http_body::Body for Endless {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Infallible>>> {
        if self.sent {
            Poll::Pending
        } else {
            self.sent = true;
            Poll::Ready(Some(Ok(http_body::Frame::data(Bytes::from_static(
                b"chunk",
            )))))
        }
    }
}

fn active_requests(text: &str, method: &str) -> f64 {
    text.lines()
        .find(|l| {
            l.starts_with("http_server_active_requests{")
                && l.contains(&format!(r#"http_request_method="{method}""#))
                && l.contains(r#"url_scheme="https""#)
        })
        .and_then(|l| l.rsplit(' ').next())
        .map(|v| v.parse().unwrap())
        .unwrap_or(0.0)
}

#[tokio::test]
async fn cancelled_requests_are_logged_and_leave_no_active_request() {
    let (buf, _guard) = capture();
    // TRACE and OPTIONS are used by this test only, so the process-wide gauge is ours.
    let routes = Router::new()
        .route(
            "/log-hang",
            on(MethodFilter::TRACE, || {
                std::future::pending::<&'static str>()
            }),
        )
        .route(
            "/log-stream",
            on(MethodFilter::OPTIONS, || async {
                Body::new(Endless { sent: false })
            }),
        );
    let (palisade, app) = stack(Config::default(), routes).await;
    let scrape = || async {
        let (_, m) = send(
            &app,
            request("GET", "/metrics").body(Body::empty()).unwrap(),
        )
        .await;
        String::from_utf8(m.to_vec()).unwrap()
    };

    // 1. The client goes away before the response head.
    let mut fut = Box::pin(
        app.clone()
            .oneshot(request("TRACE", "/log-hang").body(Body::empty()).unwrap()),
    );
    let pending = std::future::poll_fn(|cx| Poll::Ready(fut.as_mut().poll(cx).is_pending())).await;
    assert!(pending);
    assert_eq!(active_requests(&scrape().await, "TRACE"), 1.0);
    drop(fut);
    assert_eq!(active_requests(&scrape().await, "TRACE"), 0.0);

    // 2. The client goes away in the middle of a streamed body.
    let res = app
        .clone()
        .oneshot(
            request("OPTIONS", "/log-stream")
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let mut body = res.into_body();
    let first =
        std::future::poll_fn(|cx| http_body::Body::poll_frame(Pin::new(&mut body), cx)).await;
    assert!(first.unwrap().unwrap().is_data());
    drop(body);
    assert_eq!(active_requests(&scrape().await, "OPTIONS"), 0.0);

    let access = buf.access();
    let aborted: Vec<&Value> = access
        .iter()
        .filter(|v| v["message"] == "request aborted by the client")
        .collect();
    assert_eq!(aborted.len(), 2, "{}", buf.text());
    let hang = aborted
        .iter()
        .find(|v| v["url.path"] == "/log-hang")
        .unwrap();
    assert_eq!(hang["level"], "WARN");
    assert_eq!(hang["error.type"], "client_disconnected");
    assert!(hang.get("http.response.status_code").is_none());
    let stream = aborted
        .iter()
        .find(|v| v["url.path"] == "/log-stream")
        .unwrap();
    assert_eq!(stream["http.response.status_code"], 200);
    assert_eq!(stream["http.response.body.size"], 5);
    // Neither produced a "request completed" line; ops routes log nothing.
    assert_eq!(access.len(), 2, "{}", buf.text());
    drop(palisade);
}

/// Both durations come from the calibrated TSC clock (`quanta`), not `std::time`: a
/// handler that waits 40 ms of real time is logged and counted as at least that long.
/// (A lower bound only: how much longer depends on the machine.)
#[tokio::test]
async fn durations_cover_the_time_the_handler_took() {
    let (buf, _guard) = capture();
    let routes = Router::new().route(
        "/d-slow",
        get(|| async {
            tokio::time::sleep(Duration::from_millis(40)).await;
            "slow"
        }),
    );
    let (_p, app) = stack(Config::default(), routes).await;
    let (res, _) = send(&app, request("GET", "/d-slow").body(Body::empty()).unwrap()).await;
    assert_eq!(res.status(), 200);

    let access = buf.access();
    let line = access.iter().find(|v| v["url.path"] == "/d-slow").unwrap();
    let millis = line["duration_ms"].as_f64().unwrap();
    assert!(millis >= 40.0, "duration_ms = {millis}");

    let (_, body) = send(
        &app,
        request("GET", "/metrics").body(Body::empty()).unwrap(),
    )
    .await;
    let text = String::from_utf8(body.to_vec()).unwrap();
    let sum = text
        .lines()
        .find(|l| {
            l.starts_with("http_server_request_duration_seconds_sum{")
                && l.contains(r#"http_route="/d-slow""#)
        })
        .unwrap_or_else(|| panic!("no duration sum for /d-slow:\n{text}"));
    let seconds: f64 = sum.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(seconds >= 0.040, "{sum}");
}

/// The distinct `http_route` label values in a scrape.
fn route_labels(text: &str) -> std::collections::BTreeSet<&str> {
    text.lines()
        .filter_map(|l| l.split("http_route=\"").nth(1))
        .filter_map(|rest| rest.split('"').next())
        .collect()
}

fn count(text: &str, needle: &str) -> usize {
    text.lines().filter(|l| l.contains(needle)).count()
}

#[tokio::test]
async fn metrics_scrape_has_otel_names_templated_routes_and_bounded_series() {
    let routes = Router::new().route("/m-items/{id}", get(|| async { "item" }));
    let (_p, app) = stack(Config::default(), routes).await;
    for i in 0..5 {
        let (res, _) = send(
            &app,
            request("GET", &format!("/m-items/{i}"))
                .body(Body::empty())
                .unwrap(),
        )
        .await;
        assert_eq!(res.status(), 200);
    }
    let (res, _) = send(
        &app,
        request("BREW", "/m-items/1").body(Body::empty()).unwrap(),
    )
    .await;
    assert_eq!(res.status(), 405);
    send(&app, request("GET", "/health").body(Body::empty()).unwrap()).await;
    send(
        &app,
        request("GET", "/m-unknown-0").body(Body::empty()).unwrap(),
    )
    .await;

    let (res, body) = send(
        &app,
        request("GET", "/metrics").body(Body::empty()).unwrap(),
    )
    .await;
    assert_eq!(res.status(), 200);
    assert!(
        res.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    let text = String::from_utf8(body.to_vec()).unwrap();
    assert!(
        text.contains("# TYPE http_server_request_duration_seconds histogram"),
        "{text}"
    );
    assert!(text.contains("# TYPE http_server_active_requests gauge"));
    let series = |l: &str, route: &str, method: &str, status: &str| {
        l.contains(&format!(r#"http_route="{route}""#))
            && l.contains(&format!(r#"http_request_method="{method}""#))
            && l.contains(&format!(r#"http_response_status_code="{status}""#))
            && l.contains(r#"url_scheme="https""#)
    };
    let lines: Vec<&str> = text.lines().collect();
    let items: Vec<&&str> = lines
        .iter()
        .filter(|l| series(l, "/m-items/{id}", "GET", "200"))
        .collect();
    for le in ["0.005", "0.075", "0.75", "7.5", "10", "+Inf"] {
        assert!(
            items.iter().any(
                |l| l.starts_with("http_server_request_duration_seconds_bucket{")
                    && l.contains(&format!(r#"le="{le}""#))
            ),
            "bucket {le} missing:\n{text}"
        );
    }
    let count_line = items
        .iter()
        .find(|l| l.starts_with("http_server_request_duration_seconds_count{"))
        .unwrap();
    assert!(count_line.ends_with(" 5"), "{count_line}");
    assert!(
        lines
            .iter()
            .any(|l| series(l, "/m-items/{id}", "_OTHER", "405")),
        "{text}"
    );
    assert!(
        lines.iter().any(|l| series(l, "<unmatched>", "GET", "404")),
        "{text}"
    );
    assert!(!text.contains("/m-items/1\""), "raw path used as a label");
    assert!(
        !text.contains(r#"http_route="/health""#) && !text.contains(r#"http_route="/metrics""#)
    );

    // A scanner: 10 000 distinct unknown paths add no series.
    let unmatched_before = count(&text, "<unmatched>");
    for i in 0..10_000 {
        let req = request("GET", &format!("/m-unknown-{i}/x?q={i}"))
            .body(Body::empty())
            .unwrap();
        let res = app.clone().oneshot(req).await.unwrap();
        assert_eq!(res.status(), 404);
    }
    let (_, body) = send(
        &app,
        request("GET", "/metrics").body(Body::empty()).unwrap(),
    )
    .await;
    let after = String::from_utf8(body.to_vec()).unwrap();
    assert_eq!(count(&after, "<unmatched>"), unmatched_before);
    assert!(!after.contains("m-unknown"));
    // Other tests share the exporter and may add their own few routes meanwhile.
    let new_routes: Vec<&str> = route_labels(&after)
        .into_iter()
        .filter(|r| !route_labels(&text).contains(r))
        .collect();
    assert!(new_routes.len() < 10, "{new_routes:?}");
}

#[tokio::test]
async fn health_and_readiness_follow_shutdown() {
    let (palisade, app) = stack(Config::default(), Router::new()).await;
    let (res, body) = send(&app, request("GET", "/health").body(Body::empty()).unwrap()).await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["content-type"], "application/health+json");
    assert_eq!(
        serde_json::from_slice::<Value>(&body).unwrap()["status"],
        "pass"
    );
    let (res, body) = send(&app, request("GET", "/ready").body(Body::empty()).unwrap()).await;
    assert_eq!(res.status(), 200, "{body:?}");
    assert_eq!(
        serde_json::from_slice::<Value>(&body).unwrap()["status"],
        "pass"
    );

    palisade.shutdown();
    let (res, body) = send(&app, request("GET", "/ready").body(Body::empty()).unwrap()).await;
    assert_eq!(res.status(), 503);
    assert_eq!(
        serde_json::from_slice::<Value>(&body).unwrap()["status"],
        "fail"
    );
    let (res, _) = send(&app, request("GET", "/health").body(Body::empty()).unwrap()).await;
    assert_eq!(res.status(), 200, "liveness stays up while draining");
}

#[tokio::test]
async fn failing_check_sets_health_gauge_and_recovers() {
    use std::sync::atomic::{AtomicBool, Ordering};
    // Build a stack first so the metrics exporter exists.
    let (_p, metrics_app) = stack(Config::default(), Router::new()).await;
    let up = Arc::new(AtomicBool::new(false));
    let flag = up.clone();
    let app: Router = palisade::health::Health::empty()
        .cache_ttl(std::time::Duration::ZERO)
        .check("obs-dependency", true, move || {
            let ok = flag.load(Ordering::SeqCst);
            async move {
                if ok {
                    Ok(())
                } else {
                    Err("connection refused".into())
                }
            }
        })
        .router();
    let gauge = || async {
        let (_, m) = send(
            &metrics_app,
            request("GET", "/metrics").body(Body::empty()).unwrap(),
        )
        .await;
        let text = String::from_utf8(m.to_vec()).unwrap();
        text.lines()
            .find(|l| l.starts_with(r#"palisade_health_check{check="obs-dependency"}"#))
            .map(|l| l.rsplit(' ').next().unwrap().to_owned())
    };
    let (res, body) = send(&app, request("GET", "/ready").body(Body::empty()).unwrap()).await;
    assert_eq!(res.status(), 503);
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        v["checks"]["obs-dependency:responseTime"][0]["output"],
        "connection refused"
    );
    assert_eq!(gauge().await.as_deref(), Some("0"));
    up.store(true, Ordering::SeqCst);
    let (res, _) = send(&app, request("GET", "/ready").body(Body::empty()).unwrap()).await;
    assert_eq!(res.status(), 200);
    assert_eq!(gauge().await.as_deref(), Some("1"));
}

#[tokio::test]
async fn warn_filter_keeps_request_identity_on_error_lines() {
    let buf = Buf::default();
    let writer = buf.clone();
    let mut config = LoggingConfig::default();
    config.level = "warn".into();
    let sub = palisade::telemetry::json_subscriber(&config, move || writer.clone()).unwrap();
    let _guard = tracing::subscriber::set_default(sub);
    let routes = Router::new()
        .route("/warn-ok", get(|| async { "ok" }))
        .route("/warn-boom", get(|| async { StatusCode::BAD_GATEWAY }));
    let (_p, app) = stack(Config::default(), routes).await;
    for path in ["/warn-ok", "/warn-boom"] {
        let req = request("GET", path)
            .header("x-request-id", "req-warn-1")
            .body(Body::empty())
            .unwrap();
        send(&app, req).await;
    }
    let access = buf.access();
    assert_eq!(
        access.len(),
        1,
        "only the 502 passes a warn filter: {}",
        buf.text()
    );
    let v = &access[0];
    assert_eq!(v["level"], "ERROR");
    assert_eq!(v["http.response.status_code"], 502);
    assert_eq!(v["url.path"], "/warn-boom");
    assert_eq!(v["http.request.method"], "GET");
    assert_eq!(v["request_id"], "req-warn-1");
}

#[cfg(feature = "redis")]
mod support;

/// Polls `/ready` until it answers `want` (or gives up after `within`).
#[cfg(feature = "redis")]
async fn ready_becomes(app: &Router, want: u16, within: std::time::Duration) -> bool {
    let deadline = std::time::Instant::now() + within;
    loop {
        let (res, _) = send(app, request("GET", "/ready").body(Body::empty()).unwrap()).await;
        if res.status().as_u16() == want {
            return true;
        }
        if std::time::Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_follows_a_real_redis() {
    use std::time::Duration;
    let mut redis = support::RedisServer::start_owned();
    let config = Config::from_toml_str(&format!(
        "[redis]\nurl = \"{}\"\n[health]\ncache_ms = 0\ntimeout_ms = 300\n",
        redis.url()
    ))
    .unwrap();
    let (_p, app) = stack(config, Router::new()).await;
    assert!(
        ready_becomes(&app, 200, Duration::from_secs(5)).await,
        "never ready"
    );

    // Stopped (SIGSTOP): the ping hangs, the check times out, readiness fails.
    redis.pause();
    let start = std::time::Instant::now();
    let (res, body) = send(&app, request("GET", "/ready").body(Body::empty()).unwrap()).await;
    assert_eq!(res.status(), 503, "{body:?}");
    // Bounded by the 300 ms check timeout (generous margin for a loaded machine).
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "{:?}",
        start.elapsed()
    );
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["checks"]["redis:responseTime"][0]["status"], "fail");
    let (res, _) = send(&app, request("GET", "/health").body(Body::empty()).unwrap()).await;
    assert_eq!(res.status(), 200);
    redis.resume();
    assert!(
        ready_becomes(&app, 200, Duration::from_secs(10)).await,
        "did not recover after resume"
    );

    // Killed: fails; restarted: recovers.
    redis.kill();
    assert!(ready_becomes(&app, 503, Duration::from_secs(3)).await);
    let (res, _) = send(&app, request("GET", "/health").body(Body::empty()).unwrap()).await;
    assert_eq!(res.status(), 200);
    redis.restart();
    assert!(
        ready_becomes(&app, 200, Duration::from_secs(10)).await,
        "did not recover after restart"
    );
}

// ---- over a real TCP socket: the in-flight gauge, body sizes ----

/// Serves `app` on 127.0.0.1; the server task ends with the test's runtime.
async fn serve(app: Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
    });
    addr
}

/// Sends a raw HTTP/1.1 request on a fresh connection and reads it to the end.
async fn raw(addr: SocketAddr, request: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(request.as_bytes()).await.unwrap();
    let mut out = String::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_string(&mut out))
        .await
        .expect("response within 10 s")
        .unwrap();
    out
}

async fn scrape_tcp(addr: SocketAddr, path: &str) -> String {
    raw(
        addr,
        &format!("GET {path} HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n"),
    )
    .await
}

/// `http_server_active_requests` of plain-HTTP requests of `method`.
fn active_http(text: &str, method: &str) -> f64 {
    text.lines()
        .find(|l| {
            l.starts_with("http_server_active_requests{")
                && l.contains(&format!(r#"http_request_method="{method}""#))
                && l.contains(r#"url_scheme="http""#)
        })
        .and_then(|l| l.rsplit(' ').next())
        .map(|v| v.parse().unwrap())
        .unwrap_or(0.0)
}

/// Polls the scrape until the gauge reads `want` (a disconnect is noticed by the
/// server asynchronously).
async fn active_becomes(addr: SocketAddr, method: &str, want: f64) -> bool {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        if active_http(&scrape_tcp(addr, "/metrics").await, method) == want {
            return true;
        }
        if std::time::Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A response body fed chunk by chunk through a channel; it ends when the sender
/// is dropped.
struct Channel(tokio::sync::mpsc::Receiver<Bytes>);

impl http_body::Body for Channel {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Infallible>>> {
        self.0
            .poll_recv(cx)
            .map(|c| c.map(|b| Ok(http_body::Frame::data(b))))
    }
}

type Feed = Arc<Mutex<Option<tokio::sync::mpsc::Sender<Bytes>>>>;

/// A handler streaming whatever the test sends into `feed`.
fn streamed(feed: Feed) -> impl Fn() -> std::future::Ready<Body> + Clone {
    move || {
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        *feed.lock().unwrap() = Some(tx);
        std::future::ready(Body::new(Channel(rx)))
    }
}

/// Reads from `s` until the server closes the connection.
async fn read_to_close(s: &mut tokio::net::TcpStream) -> String {
    use tokio::io::AsyncReadExt;
    let mut out = String::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_string(&mut out))
        .await
        .expect("closed within 10 s")
        .unwrap();
    out
}

/// Reads from `s` until `needle` has been seen.
async fn read_until(s: &mut tokio::net::TcpStream, needle: &str) -> String {
    use tokio::io::AsyncReadExt;
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&seen).contains(needle) {
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
            .await
            .expect("data within 10 s")
            .unwrap();
        assert!(n > 0, "closed before {needle:?}");
        seen.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&seen).into_owned()
}

#[tokio::test]
async fn active_requests_span_the_streamed_body_and_drop_once_on_disconnect() {
    // A subscriber on this thread too: a callsite first registered where none is
    // interested would be disabled for the tests that capture logs.
    let (_logs, _guard) = capture();
    use tokio::io::AsyncWriteExt;
    // PUT, DELETE and PATCH over plain HTTP are used by this test only.
    let feed: Feed = Arc::default();
    let cancel_feed: Feed = Arc::default();
    let routes = Router::new()
        .route("/act-stream", on(MethodFilter::PUT, streamed(feed.clone())))
        .route(
            "/act-hang",
            on(MethodFilter::DELETE, || {
                std::future::pending::<&'static str>()
            }),
        )
        .route(
            "/act-stream-cut",
            on(MethodFilter::PATCH, streamed(cancel_feed.clone())),
        );
    let (_p, app) = stack(Config::default(), routes).await;
    let addr = serve(app).await;

    // 1. A streamed body: in flight after the head, until the last byte.
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(b"PUT /act-stream HTTP/1.1\r\nhost: localhost\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    while feed.lock().unwrap().is_none() {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let tx = feed.lock().unwrap().take().unwrap();
    tx.send(Bytes::from_static(b"first-chunk")).await.unwrap();
    let head = read_until(&mut s, "first-chunk").await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(
        active_http(&scrape_tcp(addr, "/metrics").await, "PUT"),
        1.0,
        "the response head is out but the body is not"
    );
    tx.send(Bytes::from_static(b"last-chunk")).await.unwrap();
    drop(tx);
    let rest = read_to_close(&mut s).await;
    assert!(rest.contains("last-chunk"), "{rest}");
    assert!(
        active_becomes(addr, "PUT", 0.0).await,
        "still counted after the body"
    );
    drop(s);

    // 2. Cancelled before the head: the client closes the connection.
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(b"DELETE /act-hang HTTP/1.1\r\nhost: localhost\r\n\r\n")
        .await
        .unwrap();
    assert!(active_becomes(addr, "DELETE", 1.0).await);
    drop(s);
    assert!(
        active_becomes(addr, "DELETE", 0.0).await,
        "a cancelled request stayed in flight"
    );

    // 3. Cancelled in the middle of a streamed body.
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(b"PATCH /act-stream-cut HTTP/1.1\r\nhost: localhost\r\ncontent-length: 0\r\n\r\n")
        .await
        .unwrap();
    while cancel_feed.lock().unwrap().is_none() {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let tx = cancel_feed.lock().unwrap().take().unwrap();
    tx.send(Bytes::from_static(b"partial")).await.unwrap();
    read_until(&mut s, "partial").await;
    assert_eq!(
        active_http(&scrape_tcp(addr, "/metrics").await, "PATCH"),
        1.0
    );
    drop(s);
    // The server finds out when it next writes.
    for _ in 0..50 {
        if tx.send(Bytes::from_static(b"more")).await.is_err() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(active_becomes(addr, "PATCH", 0.0).await);
    // Exactly once: nothing went below zero for any of the three.
    let text = scrape_tcp(addr, "/metrics").await;
    for m in ["PUT", "DELETE", "PATCH"] {
        assert_eq!(active_http(&text, m), 0.0, "{m}: {text}");
    }
}

/// `_sum` and `_count` of a body-size histogram series of plain-HTTP requests.
fn size_series(text: &str, metric: &str, route: &str) -> Option<(f64, f64)> {
    let find = |suffix: &str| {
        text.lines()
            .find(|l| {
                l.starts_with(&format!("{metric}_{suffix}{{"))
                    && l.contains(&format!(r#"http_route="{route}""#))
                    && l.contains(r#"url_scheme="http""#)
            })
            .and_then(|l| l.rsplit(' ').next())
            .map(|v| v.parse::<f64>().unwrap())
    };
    Some((find("sum")?, find("count")?))
}

#[tokio::test]
async fn body_size_histograms_count_known_and_streamed_bodies_when_enabled() {
    // A subscriber on this thread too: a callsite first registered where none is
    // interested would be disabled for the tests that capture logs.
    let (_logs, _guard) = capture();
    use tokio::io::AsyncWriteExt;
    let feed: Feed = Arc::default();
    let routes = Router::new()
        .route(
            "/size-echo",
            axum::routing::post(|body: Bytes| async move { body }),
        )
        .route("/size-stream", axum::routing::post(streamed(feed.clone())));
    let config = Config::from_toml_str("[metrics]\nbody_sizes = true\n").unwrap();
    let (_p, app) = stack(config, routes).await;
    let addr = serve(app).await;

    // Known lengths both ways: 11 bytes in, 11 bytes out.
    let res = raw(addr, "POST /size-echo HTTP/1.1\r\nhost: localhost\r\ncontent-length: 11\r\nconnection: close\r\n\r\nhello world").await;
    assert!(res.ends_with("hello world"), "{res}");
    // A chunked request body (no announced length): counted as read, 8 bytes.
    let res = raw(addr, "POST /size-echo HTTP/1.1\r\nhost: localhost\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n5\r\nhello\r\n3\r\nabc\r\n0\r\n\r\n").await;
    assert!(res.ends_with("helloabc"), "{res}");

    // A streamed response: 3 + 4 bytes counted as sent.
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(b"POST /size-stream HTTP/1.1\r\nhost: localhost\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    while feed.lock().unwrap().is_none() {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let tx = feed.lock().unwrap().take().unwrap();
    tx.send(Bytes::from_static(b"abc")).await.unwrap();
    tx.send(Bytes::from_static(b"defg")).await.unwrap();
    drop(tx);
    read_to_close(&mut s).await;
    drop(s);

    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let text = loop {
        let text = scrape_tcp(addr, "/metrics").await;
        if size_series(
            &text,
            "http_server_response_body_size_bytes",
            "/size-stream",
        )
        .is_some()
            || std::time::Instant::now() > deadline
        {
            break text;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(
        text.contains("# TYPE http_server_request_body_size_bytes histogram"),
        "{text}"
    );
    assert_eq!(
        size_series(&text, "http_server_request_body_size_bytes", "/size-echo"),
        Some((19.0, 2.0)),
        "{text}"
    );
    assert_eq!(
        size_series(&text, "http_server_response_body_size_bytes", "/size-echo"),
        Some((19.0, 2.0)),
        "{text}"
    );
    assert_eq!(
        size_series(&text, "http_server_request_body_size_bytes", "/size-stream"),
        Some((0.0, 1.0)),
        "{text}"
    );
    assert_eq!(
        size_series(
            &text,
            "http_server_response_body_size_bytes",
            "/size-stream"
        ),
        Some((7.0, 1.0)),
        "{text}"
    );
    assert!(
        text.lines().any(
            |l| l.starts_with("http_server_response_body_size_bytes_bucket{")
                && l.contains(r#"le="1024""#)
        ),
        "{text}"
    );
}

#[tokio::test]
async fn body_sizes_are_off_by_default() {
    // A subscriber on this thread too: a callsite first registered where none is
    // interested would be disabled for the tests that capture logs.
    let (_logs, _guard) = capture();
    let routes = Router::new().route(
        "/size-off",
        axum::routing::post(|body: Bytes| async move { body }),
    );
    let (_p, app) = stack(Config::default(), routes).await;
    let (res, _) = send(
        &app,
        request("POST", "/size-off")
            .body(Body::from("abc"))
            .unwrap(),
    )
    .await;
    assert_eq!(res.status(), 200);
    let (_, m) = send(
        &app,
        request("GET", "/metrics").body(Body::empty()).unwrap(),
    )
    .await;
    let text = String::from_utf8(m.to_vec()).unwrap();
    assert!(text.contains(r#"http_route="/size-off""#), "{text}");
    assert!(
        !text
            .lines()
            .any(|l| l.contains("body_size_bytes") && l.contains("/size-off")),
        "{text}"
    );
}

#[tokio::test]
async fn moved_ops_routes_take_their_default_exclusions_along() {
    let (buf, _guard) = capture();
    let config = Config::from_toml_str(
        "[metrics]\npath = \"/internal/metrics\"\n[health]\npath = \"/livez\"\nready_path = \"/readyz\"\n",
    )
    .unwrap();
    let (_p, app) = stack(config, Router::new()).await;
    for path in ["/livez", "/readyz", "/internal/metrics"] {
        let (res, _) = send(&app, request("GET", path).body(Body::empty()).unwrap()).await;
        assert_eq!(res.status(), 200, "{path}");
    }
    let (_, m) = send(
        &app,
        request("GET", "/internal/metrics")
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    let text = String::from_utf8(m.to_vec()).unwrap();
    for route in ["/livez", "/readyz", "/internal/metrics"] {
        assert!(
            !text.contains(&format!(r#"http_route="{route}""#)),
            "{route}: {text}"
        );
    }
    assert!(
        buf.access().is_empty(),
        "ops routes were logged: {}",
        buf.text()
    );

    // An explicit list is kept as written: here the moved probes are recorded.
    let config = Config::from_toml_str(
        "[logging]\nexclude_paths = [\"/internal/metrics\"]\n[metrics]\npath = \"/internal/metrics\"\nexclude_paths = []\n[health]\npath = \"/livez2\"\nready_path = \"/readyz2\"\n",
    )
    .unwrap();
    let (_p, app) = stack(config, Router::new()).await;
    let (res, _) = send(&app, request("GET", "/livez2").body(Body::empty()).unwrap()).await;
    assert_eq!(res.status(), 200);
    let (_, m) = send(
        &app,
        request("GET", "/internal/metrics")
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    let text = String::from_utf8(m.to_vec()).unwrap();
    assert!(text.contains(r#"http_route="/livez2""#), "{text}");
    assert!(
        !text.contains(r#"http_route="/internal/metrics""#),
        "{text}"
    );
    let access = buf.access();
    assert_eq!(access.len(), 1, "{}", buf.text());
    assert_eq!(access[0]["url.path"], "/livez2");
}
