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
//! Then:
//! * pool exhaustion: 500 concurrent requests on ONE pooled connection, healthy,
//!   with Redis frozen, and after: every one answered within the same bound;
//! * graceful shutdown of a real TCP server: slow in-flight responses complete
//!   after `Palisade::shutdown()` + axum's graceful shutdown, and `/ready` fails
//!   first;
//! * background tasks stop on shutdown: JWKS refresh (no more fetches), a cache
//!   revalidation in flight (cancelled) and the limiter cleanup; the runtime's
//!   alive-task count returns to what it was before the stack was built.
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

// ---------------------------------------------------------------- pool exhaustion

/// `concurrent` requests at once, each on its own task, against a stack on a pool
/// of ONE multiplexed connection: (status counts, max latency in ms, hung).
async fn burst(app: &Router, concurrent: usize) -> (BTreeMap<u16, usize>, f64, usize) {
    let tasks: Vec<_> = (0..concurrent)
        .map(|i| {
            let app = app.clone();
            tokio::spawn(async move {
                let path = if i % 2 == 0 {
                    format!("/items/{}", i % 64)
                } else {
                    "/hello".to_owned()
                };
                let started = Instant::now();
                let res = tokio::time::timeout(
                    Duration::from_secs(10),
                    app.oneshot(request(&path, (i % 200) as u8)),
                )
                .await;
                match res {
                    Ok(res) => {
                        let res = res.unwrap();
                        let status = res.status().as_u16();
                        let _ = res.into_body().collect().await;
                        Some((status, started.elapsed().as_secs_f64() * 1000.0))
                    }
                    Err(_) => None,
                }
            })
        })
        .collect();
    let mut statuses = BTreeMap::new();
    let (mut max, mut hung) = (0f64, 0);
    for t in tasks {
        match t.await.unwrap() {
            Some((status, ms)) => {
                *statuses.entry(status).or_insert(0) += 1;
                max = max.max(ms);
            }
            None => hung += 1,
        }
    }
    (statuses, max, hung)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_exhaustion_more_requests_than_connections_never_deadlocks() {
    let _serial = SERIAL.lock().await;
    let redis = support::RedisServer::start_owned();
    // A longer command deadline than the other scenarios: 500 requests at once on a
    // shared 2-core machine may queue for the CPU longer than 200 ms, and a healthy
    // Redis must not count as a failed one here.
    const POOL_TIMEOUT_MS: u64 = 1000;
    let toml = config(redis.url(), "deny")
        .replace("pool_size = 4", "pool_size = 1")
        .replace(
            &format!("timeout_ms = {TIMEOUT_MS}\n"),
            &format!("timeout_ms = {POOL_TIMEOUT_MS}\n"),
        );
    assert!(toml.contains("timeout_ms = 1000"));
    let p = Palisade::from_config(Config::from_toml_str(&toml).unwrap())
        .await
        .unwrap();
    let app: Router = Router::new()
        .route("/hello", get(|| async { "hello" }))
        .route(
            "/items/{id}",
            get(|Path(id): Path<String>| async move { format!("item {id}") }),
        )
        .merge(p.routes())
        .layer(p.layer());
    let bound = (POOL_TIMEOUT_MS + MARGIN_MS) as f64;
    // Healthy: 500 concurrent requests (each a limiter script and, for half, a
    // cache read and write) share one connection; with `deny`, any request the
    // limiter could not decide in time would be a 503.
    while ready(&app).await != StatusCode::OK {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (healthy, healthy_max, hung) = burst(&app, 500).await;
    assert_eq!(hung, 0);
    assert_eq!(
        healthy.keys().copied().collect::<Vec<_>>(),
        [200],
        "{healthy:?}"
    );
    // Frozen Redis: 500 concurrent requests, every one answered (503, as `deny`
    // asks) within one command timeout plus margin: no queue without a bound.
    redis.pause();
    let (frozen, frozen_max, hung) = burst(&app, 500).await;
    redis.resume();
    assert_eq!(hung, 0, "requests without an answer");
    assert!(frozen.keys().all(|&s| s == 200 || s == 503), "{frozen:?}");
    assert!(frozen.get(&503).copied().unwrap_or(0) > 0, "{frozen:?}");
    // And back: the same burst is served in full again.
    let back = Instant::now();
    while ready(&app).await != StatusCode::OK {
        assert!(back.elapsed() < Duration::from_secs(5), "never recovered");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (after, after_max, hung) = burst(&app, 500).await;
    assert_eq!(hung, 0);
    assert_eq!(
        after.keys().copied().collect::<Vec<_>>(),
        [200],
        "{after:?}"
    );
    eprintln!(
        "RELIABILITY pool exhaustion (pool_size 1, 500 concurrent): healthy {healthy:?} max {healthy_max:.1} ms; \
         frozen {frozen:?} max {frozen_max:.1} ms; after {after:?} max {after_max:.1} ms"
    );
    for (what, max) in [
        ("healthy", healthy_max),
        ("frozen", frozen_max),
        ("after", after_max),
    ] {
        assert!(max <= bound, "{what}: max latency {max} ms > {bound} ms");
    }
}

// ---------------------------------------------------------------- background tasks stop

/// A JWKS endpoint on 127.0.0.1 that counts its fetches and closes every
/// connection (so no keep-alive connection task outlives a fetch).
async fn start_jwks_server(hits: Arc<AtomicUsize>) -> String {
    let app = Router::new().route(
        "/jwks",
        get(move || async move {
            hits.fetch_add(1, Ordering::SeqCst);
            ([("connection", "close")], r#"{"keys":[]}"#)
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}/jwks")
}

/// Drops count the refreshes that were cancelled.
struct DropCounter(Arc<AtomicUsize>);
impl Drop for DropCounter {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_stops_jwks_refresh_cache_revalidation_and_limiter_cleanup() {
    let metrics = tokio::runtime::Handle::current().metrics();
    let jwks_hits = Arc::new(AtomicUsize::new(0));
    let jwks_url = start_jwks_server(jwks_hits.clone()).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let baseline = metrics.num_alive_tasks();

    let toml = format!(
        r#"
[rate_limit]
backend = "memory"
[[rate_limit.policies]]
name = "per-ip"
key = "ip"
limit = 1000
period_s = 1

[auth.jwt]
algorithms = ["RS256"]
jwks_url = "{jwks_url}"
jwks_refresh_s = 1
jwks_cooldown_s = 1
[[auth.rules]]
paths = ["/me"]
require = "jwt"

[cache]
backend = "memory"
stale_while_revalidate_s = 60
[[cache.rules]]
paths = ["/items/{{id}}"]
ttl_s = 1

[logging]
access_log = false
"#
    );
    let p = Palisade::from_config(Config::from_toml_str(&toml).unwrap())
        .await
        .unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let cancelled = Arc::new(AtomicUsize::new(0));
    let (c, d) = (calls.clone(), cancelled.clone());
    let app: Router = Router::new()
        .route(
            "/items/{id}",
            get(move || {
                let (c, d) = (c.clone(), d.clone());
                async move {
                    if c.fetch_add(1, Ordering::SeqCst) > 0 {
                        // The background refresh: hangs until it is cancelled.
                        let _guard = DropCounter(d);
                        std::future::pending::<()>().await;
                    }
                    "item"
                }
            }),
        )
        .merge(p.routes())
        .layer(p.layer());
    let started = metrics.num_alive_tasks();
    assert!(
        started >= baseline + 2,
        "limiter cleanup and JWKS refresh run: {baseline} -> {started}"
    );

    // JWKS refresh: fetched at start-up, then every second in the background.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(jwks_hits.load(Ordering::SeqCst) >= 3, "JWKS refreshes");

    // Cache revalidation: fill, let it go stale, then a stale hit starts a refresh
    // that hangs in the handler.
    let get_item = || async {
        let res = app.clone().oneshot(request("/items/1", 1)).await.unwrap();
        let status = res.extensions().get::<CacheOutcome>().map(|o| o.status);
        let _ = res.into_body().collect().await;
        status
    };
    assert_eq!(get_item().await, Some(CacheStatus::Miss));
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(get_item().await, Some(CacheStatus::Stale));
    let refresh_started = Instant::now();
    while calls.load(Ordering::SeqCst) < 2 {
        assert!(refresh_started.elapsed() < Duration::from_secs(5));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(cancelled.load(Ordering::SeqCst), 0);
    let running = metrics.num_alive_tasks();

    // Shutdown: every background task stops, none is left behind.
    p.shutdown();
    let stopped = Instant::now();
    let mut alive = metrics.num_alive_tasks();
    while alive > baseline && stopped.elapsed() < Duration::from_secs(3) {
        tokio::time::sleep(Duration::from_millis(20)).await;
        alive = metrics.num_alive_tasks();
    }
    let settled = stopped.elapsed();
    assert_eq!(
        cancelled.load(Ordering::SeqCst),
        1,
        "the refresh was cancelled"
    );
    let hits = jwks_hits.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    eprintln!(
        "RELIABILITY shutdown: tasks {baseline} before the stack, {started} built, {running} with a refresh in flight, \
         {alive} {settled:?} after shutdown(); JWKS fetches {hits} then {} 2.5 s later",
        jwks_hits.load(Ordering::SeqCst)
    );
    assert_eq!(alive, baseline, "background tasks left after shutdown");
    assert_eq!(
        jwks_hits.load(Ordering::SeqCst),
        hits,
        "no JWKS fetch after shutdown"
    );
    assert_eq!(metrics.num_alive_tasks(), baseline);
    // The stack still serves while the server drains.
    assert_eq!(get_item().await, Some(CacheStatus::Stale));
}
