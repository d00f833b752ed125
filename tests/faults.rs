//! Faults under steady traffic: the whole stack (rate limit AND cache on a real,
//! throwaway `redis-server` on loopback) while Redis is killed, frozen with SIGSTOP,
//! restarted empty, or has its script cache flushed.
//!
//! Every scenario drives 8 concurrent tasks of in-process requests for a few seconds
//! and checks:
//! * every request is answered, and within `timeout_ms` + [`MARGIN_MS`] (a bound on
//!   hangs, not a performance assertion: the figures are printed for RELIABILITY.md);
//! * no 5xx unless `on_store_error = "deny"`, and then only 503s;
//! * `/ready` follows Redis (503 while it is gone, 200 again after);
//! * the stack recovers by itself within about one breaker interval after Redis
//!   returns (cache filling again, `/ready` green).
//!
//! A last test drains a real TCP server: slow in-flight responses complete after
//! `Palisade::shutdown()` + axum's graceful shutdown, and `/ready` fails first.
#![cfg(all(
    feature = "redis",
    feature = "cache",
    feature = "rate-limit",
    feature = "health"
))]
#![allow(clippy::unwrap_used)]

mod support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, Path};
use axum::response::Response;
use axum::routing::get;
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use palisade::outcome::{CacheOutcome, CacheStatus};
use palisade::{Config, Palisade};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tower::ServiceExt;

/// `[redis] timeout_ms`: the deadline of every command.
const TIMEOUT_MS: u64 = 200;
/// `[redis] breaker_ms`.
const BREAKER_MS: u64 = 500;
/// Allowed on top of `TIMEOUT_MS` for one request, on a 2-core machine shared with
/// compilers: a bound on hangs, not a performance assertion.
const MARGIN_MS: u64 = 500;
const TASKS: usize = 8;

/// The fault tests share the machine's two cores; run them one at a time so one
/// scenario's load does not show up as another's latency.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn config(url: &str, on_store_error: &str) -> String {
    format!(
        r#"
[redis]
url = "{url}"
pool_size = 4
timeout_ms = {TIMEOUT_MS}
breaker_ms = {BREAKER_MS}

[https]
redirect = false
allowed_hosts = ["localhost"]
exempt_paths = ["/health", "/ready", "/metrics"]

[rate_limit]
backend = "redis"
on_store_error = "{on_store_error}"
[[rate_limit.policies]]
name = "per-ip"
key = "ip"
limit = 100000
period_s = 1
burst = 100000

[cache]
backend = "redis"
default_ttl_s = 60
[[cache.rules]]
paths = ["/items/{{id}}"]
ttl_s = 30

[health]
timeout_ms = 300
cache_ms = 0

[logging]
access_log = false
"#
    )
}

async fn stack(url: &str, on_store_error: &str) -> (Palisade, Router) {
    let config =
        Config::from_toml_str(&config(url, on_store_error)).unwrap_or_else(|e| panic!("{e}"));
    let p = Palisade::from_config(config)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let calls = Arc::new(AtomicUsize::new(0));
    let router = Router::new()
        .route("/hello", get(|| async { "hello" }))
        .route(
            "/items/{id}",
            get(move |Path(id): Path<String>| async move {
                let n = calls.fetch_add(1, Ordering::Relaxed) + 1;
                axum::Json(json!({"id": id, "upstream_calls": n}))
            }),
        )
        .merge(p.routes())
        .layer(p.layer());
    (p, router)
}

fn request(path: &str, peer: u8) -> Request<Body> {
    Request::get(path)
        .header("host", "localhost")
        .extension(ConnectInfo(SocketAddr::from(([198, 51, 100, peer], 40000))))
        .body(Body::empty())
        .unwrap()
}

/// One answered request.
struct Sample {
    phase: u8,
    micros: u64,
    status: u16,
}

#[derive(Default)]
struct Traffic {
    samples: Mutex<Vec<Sample>>,
    /// Requests with no answer within 10 s.
    hung: AtomicU64,
    stop: AtomicBool,
    phase: AtomicU8,
}

const HEALTHY: u8 = 0;
const FAULT: u8 = 1;
const RECOVERED: u8 = 2;

fn start_traffic(app: &Router, traffic: &Arc<Traffic>) -> Vec<tokio::task::JoinHandle<()>> {
    (0..TASKS)
        .map(|t| {
            let app = app.clone();
            let traffic = traffic.clone();
            tokio::spawn(async move {
                let mut i = 0usize;
                while !traffic.stop.load(Ordering::Relaxed) {
                    i += 1;
                    let path = match i % 3 {
                        0 => "/hello".to_owned(),
                        1 => format!("/items/{}", i % 16),
                        _ => format!("/items/{}?utm_source=x", i % 16),
                    };
                    let phase = traffic.phase.load(Ordering::Relaxed);
                    let started = Instant::now();
                    let res = tokio::time::timeout(
                        Duration::from_secs(10),
                        app.clone().oneshot(request(&path, t as u8)),
                    )
                    .await;
                    match res {
                        Err(_) => {
                            traffic.hung.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(res) => {
                            let res = res.unwrap();
                            let status = res.status().as_u16();
                            // The body is part of the answer.
                            let _ = res.into_body().collect().await;
                            let micros = started.elapsed().as_micros() as u64;
                            traffic.samples.lock().unwrap().push(Sample {
                                phase,
                                micros,
                                status,
                            });
                        }
                    }
                    // Steady, not flat out: about 8 × 200 requests/s.
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            })
        })
        .collect()
}

async fn ready(app: &Router) -> StatusCode {
    let res = tokio::time::timeout(
        Duration::from_secs(5),
        app.clone().oneshot(request("/ready", 250)),
    )
    .await
    .expect("/ready answered");
    res.unwrap().status()
}

/// Whether a cached request was served with Redis taking part (not bypassed
/// because of a store error).
async fn cache_works(app: &Router) -> bool {
    let res = app
        .clone()
        .oneshot(request("/items/probe", 251))
        .await
        .unwrap();
    let outcome = res.extensions().get::<CacheOutcome>().copied();
    matches!(
        outcome,
        Some(CacheOutcome {
            status: CacheStatus::Hit | CacheStatus::Miss,
            ..
        })
    )
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    Kill,
    Pause,
    RestartEmpty,
    ScriptFlush,
}

#[derive(Debug)]
struct Report {
    fault: Fault,
    on_store_error: &'static str,
    /// Per phase: (requests, max latency in ms).
    phases: [(usize, f64); 3],
    statuses: BTreeMap<u16, usize>,
    hung: u64,
    ready_during_fault: Option<StatusCode>,
    recovery_ms: Option<u128>,
}

async fn scenario(fault: Fault, on_store_error: &'static str) -> Report {
    let _serial = SERIAL.lock().await;
    let mut redis = support::RedisServer::start_owned();
    let (_p, app) = stack(redis.url(), on_store_error).await;
    let traffic = Arc::new(Traffic::default());
    traffic.phase.store(HEALTHY, Ordering::Relaxed);
    let tasks = start_traffic(&app, &traffic);

    // Healthy: /ready green, the cache stores in Redis.
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(
        ready(&app).await,
        StatusCode::OK,
        "{fault:?}: /ready before the fault"
    );
    assert!(
        cache_works(&app).await,
        "{fault:?}: the cache works before the fault"
    );

    traffic.phase.store(FAULT, Ordering::Relaxed);
    let mut ready_during_fault = None;
    match fault {
        Fault::Kill => redis.kill(),
        Fault::Pause => redis.pause(),
        Fault::RestartEmpty => redis.restart(),
        Fault::ScriptFlush => {
            let out = redis.cli(&["SCRIPT", "FLUSH"]);
            assert_eq!(out, "OK");
        }
    }
    if matches!(fault, Fault::Kill | Fault::Pause) {
        // Down for 2 s under traffic.
        tokio::time::sleep(Duration::from_millis(1000)).await;
        let r = ready(&app).await;
        assert_eq!(
            r,
            StatusCode::SERVICE_UNAVAILABLE,
            "{fault:?}: /ready must follow Redis"
        );
        ready_during_fault = Some(r);
        tokio::time::sleep(Duration::from_millis(1000)).await;
        match fault {
            Fault::Kill => redis.restart(),
            _ => redis.resume(),
        }
    } else {
        tokio::time::sleep(Duration::from_millis(1500)).await;
    }

    // Redis is back (or never left): how long until the stack uses it again?
    let back = Instant::now();
    let mut recovery_ms = None;
    while back.elapsed() < Duration::from_secs(10) {
        if cache_works(&app).await && ready(&app).await == StatusCode::OK {
            recovery_ms = Some(back.elapsed().as_millis());
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    traffic.phase.store(RECOVERED, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    traffic.stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }

    let samples = std::mem::take(&mut *traffic.samples.lock().unwrap());
    let mut phases = [(0usize, 0f64); 3];
    let mut statuses = BTreeMap::new();
    for s in &samples {
        let p = &mut phases[s.phase as usize];
        p.0 += 1;
        p.1 = p.1.max(s.micros as f64 / 1000.0);
        *statuses.entry(s.status).or_insert(0) += 1;
    }
    let report = Report {
        fault,
        on_store_error,
        phases,
        statuses,
        hung: traffic.hung.load(Ordering::Relaxed),
        ready_during_fault,
        recovery_ms,
    };
    eprintln!("RELIABILITY {report:?}");
    report
}

fn check(r: &Report) {
    assert_eq!(r.hung, 0, "{r:?}: requests without an answer");
    let bound = (TIMEOUT_MS + MARGIN_MS) as f64;
    for (i, (n, max)) in r.phases.iter().enumerate() {
        assert!(*n > 0, "{r:?}: no traffic in phase {i}");
        assert!(
            *max <= bound,
            "{r:?}: phase {i} max latency {max} ms > {bound} ms"
        );
    }
    for (status, n) in &r.statuses {
        let ok = *status < 500 || (r.on_store_error == "deny" && *status == 503);
        assert!(ok, "{r:?}: {n} × {status}");
    }
    if matches!(r.fault, Fault::Kill | Fault::Pause) {
        assert_eq!(
            r.ready_during_fault,
            Some(StatusCode::SERVICE_UNAVAILABLE),
            "{r:?}"
        );
    }
    let recovery = r
        .recovery_ms
        .unwrap_or_else(|| panic!("{r:?}: never recovered"));
    // One breaker interval, plus one command timeout for the probe, plus margin.
    let limit = u128::from(BREAKER_MS + TIMEOUT_MS + MARGIN_MS);
    assert!(
        recovery <= limit,
        "{r:?}: recovered after {recovery} ms > {limit} ms"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_mid_traffic_local_fallback() {
    let r = scenario(Fault::Kill, "local").await;
    check(&r);
    assert_eq!(r.statuses.keys().copied().collect::<Vec<_>>(), [200]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_mid_traffic_deny_gives_only_503s() {
    let r = scenario(Fault::Kill, "deny").await;
    check(&r);
    // deny did deny while Redis was gone (the test can fail the other way too).
    assert!(r.statuses.get(&503).copied().unwrap_or(0) > 0, "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_paused_mid_traffic_allow() {
    let r = scenario(Fault::Pause, "allow").await;
    check(&r);
    assert_eq!(r.statuses.keys().copied().collect::<Vec<_>>(), [200]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_paused_mid_traffic_deny_gives_only_503s() {
    let r = scenario(Fault::Pause, "deny").await;
    check(&r);
    assert!(r.statuses.get(&503).copied().unwrap_or(0) > 0, "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restarted_empty_mid_traffic() {
    let r = scenario(Fault::RestartEmpty, "local").await;
    check(&r);
    assert_eq!(r.statuses.keys().copied().collect::<Vec<_>>(), [200]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn script_flush_mid_traffic_is_invisible_even_with_deny() {
    // With "deny", any request the limiter could not decide would be a 503: a
    // flushed script cache must be reloaded (NOSCRIPT → EVAL) without one.
    let r = scenario(Fault::ScriptFlush, "deny").await;
    check(&r);
    assert_eq!(
        r.statuses.keys().copied().collect::<Vec<_>>(),
        [200],
        "{r:?}"
    );
}

// ---------------------------------------------------------------- graceful shutdown

async fn slow_stream() -> Response {
    struct Rx(tokio::sync::mpsc::Receiver<Result<bytes::Bytes, std::io::Error>>);
    impl futures_core::Stream for Rx {
        type Item = Result<bytes::Bytes, std::io::Error>;
        fn poll_next(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Self::Item>> {
            self.0.poll_recv(cx)
        }
    }
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tokio::spawn(async move {
        for i in 1..=10 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if tx
                .send(Ok(bytes::Bytes::from(format!("line {i}\n"))))
                .await
                .is_err()
            {
                return;
            }
        }
    });
    Response::new(Body::from_stream(Rx(rx)))
}

async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf))
        .await
        .expect("answer within 10 s")
        .unwrap();
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
    (status, text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_fails_ready_first_and_completes_in_flight_streams() {
    let _serial = SERIAL.lock().await;
    let redis = support::RedisServer::start_owned();
    let config = Config::from_toml_str(&config(redis.url(), "local")).unwrap();
    let p = Palisade::from_config(config).await.unwrap();
    let app: Router = Router::new()
        .route("/hello", get(|| async { "hello" }))
        .route("/stream", get(slow_stream))
        .merge(p.routes())
        .layer(p.layer());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (drain_tx, drain_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(async {
            let _ = drain_rx.await;
        })
        .await
        .unwrap();
    });
    assert_eq!(http_get(addr, "/ready").await.0, 200);

    // Three slow responses in flight (1 s each).
    let in_flight: Vec<_> = (0..3)
        .map(|_| tokio::spawn(async move { http_get(addr, "/stream").await }))
        .collect();
    tokio::time::sleep(Duration::from_millis(250)).await;

    // Step 1: palisade drains first; the load balancer sees /ready fail while the
    // process still serves everything else.
    p.shutdown();
    assert_eq!(http_get(addr, "/ready").await.0, 503);
    assert_eq!(http_get(addr, "/health").await.0, 200);
    assert_eq!(http_get(addr, "/hello").await.0, 200);

    // Step 2: the server stops accepting and waits for in-flight requests.
    let drained = Instant::now();
    drain_tx.send(()).unwrap();
    for t in in_flight {
        let (status, text) = t.await.unwrap();
        assert_eq!(status, 200);
        for i in 1..=10 {
            assert!(
                text.contains(&format!("line {i}\n")),
                "stream cut short: {text}"
            );
        }
    }
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .expect("the server stops once in-flight requests are done")
        .unwrap();
    assert!(drained.elapsed() < Duration::from_secs(5));
    // New connections are refused once it has stopped.
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}
