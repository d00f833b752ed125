//! Redis Cluster failover through the whole stack: rate limiting AND caching on a
//! throwaway 3-master, 3-replica cluster (started by the test, on loopback) while
//! the master owning a busy rate-limit key is killed and its replica promoted.
//!
//! Two replicas of the service share the cluster, one with `on_store_error =
//! "local"` and one with `"deny"`, both under steady traffic. Checked:
//! * every request is answered within `timeout_ms` + [`MARGIN_MS`] (a bound on hangs,
//!   not a performance assertion; figures are printed for RELIABILITY.md);
//! * no 5xx from the `local` replica; only 503s (as configured) from `deny`;
//! * after the promotion the stack works through Redis again by itself (MOVED and
//!   reconnects handled by the client): the two replicas share one rate-limit
//!   counter and one cache entry again, and `deny` stops answering 503.
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
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, Path};
use axum::routing::get;
use http::Request;
use http_body_util::BodyExt;
use palisade::outcome::{CacheOutcome, CacheStatus};
use palisade::{Config, Palisade};
use tower::ServiceExt;

const TIMEOUT_MS: u64 = 200;
const BREAKER_MS: u64 = 500;
/// Allowed on top of `TIMEOUT_MS` for one request, on a 2-core machine shared with
/// compilers: a bound on hangs, not a performance assertion.
const MARGIN_MS: u64 = 500;
const TASKS: usize = 8;

fn config(urls: &[String], on_store_error: &str) -> String {
    let urls: Vec<String> = urls.iter().map(|u| format!("{u:?}")).collect();
    format!(
        r#"
[redis]
cluster_urls = [{}]
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
period_s = 86400
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
"#,
        urls.join(", ")
    )
}

async fn stack(urls: &[String], on_store_error: &str) -> Router {
    let config =
        Config::from_toml_str(&config(urls, on_store_error)).unwrap_or_else(|e| panic!("{e}"));
    let p = Palisade::from_config(config)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    Router::new()
        .route("/hello", get(|| async { "hello" }))
        .route(
            "/items/{id}",
            get(|Path(id): Path<String>| async move { format!("item {id}") }),
        )
        .merge(p.routes())
        .layer(p.layer())
}

fn request(path: &str, peer: [u8; 4]) -> Request<Body> {
    Request::get(path)
        .header("host", "localhost")
        .extension(ConnectInfo(SocketAddr::from((peer, 40000))))
        .body(Body::empty())
        .unwrap()
}

const FAULT: u8 = 1;
const RECOVERED: u8 = 2;

#[derive(Default)]
struct Traffic {
    /// (replica, phase, micros, status)
    samples: Mutex<Vec<(usize, u8, u64, u16)>>,
    hung: AtomicU64,
    stop: AtomicBool,
    phase: AtomicU8,
}

/// The traffic's peer for task `t`: 198.51.100.t.
fn peer(t: usize) -> [u8; 4] {
    [198, 51, 100, t as u8]
}

fn start_traffic(apps: &[Router], traffic: &Arc<Traffic>) -> Vec<tokio::task::JoinHandle<()>> {
    (0..TASKS)
        .map(|t| {
            let apps = apps.to_vec();
            let traffic = traffic.clone();
            tokio::spawn(async move {
                let mut i = 0usize;
                while !traffic.stop.load(Ordering::Relaxed) {
                    i += 1;
                    let replica = i % apps.len();
                    let path = match i % 3 {
                        0 => "/hello".to_owned(),
                        1 => format!("/items/{}", i % 32),
                        _ => format!("/items/{}?utm_source=x", i % 32),
                    };
                    let phase = traffic.phase.load(Ordering::Relaxed);
                    let started = Instant::now();
                    let res = tokio::time::timeout(
                        Duration::from_secs(10),
                        apps[replica].clone().oneshot(request(&path, peer(t))),
                    )
                    .await;
                    match res {
                        Err(_) => {
                            traffic.hung.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(res) => {
                            let res = res.unwrap();
                            let status = res.status().as_u16();
                            let _ = res.into_body().collect().await;
                            let micros = started.elapsed().as_micros() as u64;
                            traffic
                                .samples
                                .lock()
                                .unwrap()
                                .push((replica, phase, micros, status));
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            })
        })
        .collect()
}

/// Remaining quota of `per-ip` from the `RateLimit` field, and the status.
async fn quota(app: &Router, peer: [u8; 4]) -> (u16, Option<u64>) {
    let res = tokio::time::timeout(
        Duration::from_secs(5),
        app.clone().oneshot(request("/hello", peer)),
    )
    .await
    .expect("answered")
    .unwrap();
    let r = res
        .headers()
        .get("ratelimit")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(";r=").nth(1))
        .and_then(|v| v.split(';').next())
        .and_then(|v| v.parse().ok());
    (res.status().as_u16(), r)
}

async fn cache_status(app: &Router, path: &str) -> Option<CacheStatus> {
    let res = tokio::time::timeout(
        Duration::from_secs(5),
        app.clone().oneshot(request(path, [192, 0, 2, 1])),
    )
    .await
    .expect("answered")
    .unwrap();
    let status = res.extensions().get::<CacheOutcome>().map(|o| o.status);
    // The entry is stored once its body has been read.
    let _ = res.into_body().collect().await;
    status
}

/// Whether both replicas work through the cluster: one shared rate-limit counter
/// (a fresh client's quota drops by one across the replicas), one shared cache
/// entry (filled through one replica, a hit on the other), and `deny` not 503.
async fn shared_through_redis(local: &Router, deny: &Router, probe: u32) -> bool {
    let client = [203, 0, 113, (probe % 250) as u8 + 1];
    let (s1, r1) = quota(deny, client).await;
    let (s2, r2) = quota(local, client).await;
    let limiter = s1 == 200 && s2 == 200 && matches!((r1, r2), (Some(a), Some(b)) if b + 1 == a);
    let path = format!("/items/probe-{probe}");
    let fill = cache_status(deny, &path).await;
    let hit = cache_status(local, &path).await;
    limiter && fill == Some(CacheStatus::Miss) && hit == Some(CacheStatus::Hit)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn master_killed_and_replica_promoted_under_traffic() {
    let mut cluster = support::RedisCluster::start();
    let urls = cluster.urls();
    let local = stack(&urls, "local").await;
    let deny = stack(&urls, "deny").await;
    let mut probe = 0u32;
    let start = Instant::now();
    while !shared_through_redis(&local, &deny, probe).await {
        probe += 1;
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "never worked through the cluster"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let traffic = Arc::new(Traffic::default());
    let tasks = start_traffic(&[local.clone(), deny.clone()], &traffic);
    tokio::time::sleep(Duration::from_millis(800)).await;

    // Kill the master that owns task 0's rate-limit key (198.51.100.0).
    let key = format!("{{palisade:rl:1:{:032x}}}:per-ip", 0xc633_6400u32);
    let slot = cluster.slot_of(&key);
    traffic.phase.store(FAULT, Ordering::Relaxed);
    let killed_at = Instant::now();
    let port = cluster.kill_master_of_slot(slot);
    cluster.wait_for_failover(slot, Duration::from_secs(30));
    let promoted_after = killed_at.elapsed();
    assert_ne!(cluster.master_of_slot(slot), port, "a replica was promoted");

    // How long after the promotion until both replicas share state through Redis?
    let promoted = Instant::now();
    let mut recovery = None;
    while promoted.elapsed() < Duration::from_secs(15) {
        probe += 1;
        if shared_through_redis(&local, &deny, probe).await {
            recovery = Some(promoted.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Breakers are per range of hash slots: a range that failed just before the
    // promotion lets its probe through one breaker interval later. Every key the
    // traffic uses must then be served: no 5xx from here on.
    let all_ranges = Duration::from_millis(BREAKER_MS + TIMEOUT_MS + MARGIN_MS);
    tokio::time::sleep(all_ranges.saturating_sub(promoted.elapsed())).await;
    traffic.phase.store(RECOVERED, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    traffic.stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }

    // The promoted master decides task 0's key: its counter keeps counting there.
    let (status, remaining) = quota(&deny, peer(0)).await;
    assert_eq!(status, 200);
    assert!(remaining.is_some_and(|r| r < 100_000), "{remaining:?}");

    let samples = std::mem::take(&mut *traffic.samples.lock().unwrap());
    let mut phases = [[(0usize, 0f64); 3]; 2];
    let mut statuses = [BTreeMap::new(), BTreeMap::new()];
    let mut late_503 = 0;
    for &(replica, phase, micros, status) in &samples {
        let p = &mut phases[replica][phase as usize];
        p.0 += 1;
        p.1 = p.1.max(micros as f64 / 1000.0);
        *statuses[replica].entry(status).or_insert(0usize) += 1;
        if phase == RECOVERED && status >= 500 {
            late_503 += 1;
        }
    }
    let hung = traffic.hung.load(Ordering::Relaxed);
    eprintln!(
        "RELIABILITY cluster failover: promoted after {promoted_after:?}, shared again {recovery:?} after promotion; \
         local: phases (requests, max ms) {:?}, statuses {:?}; deny: phases {:?}, statuses {:?}; hung {hung}",
        phases[0], statuses[0], phases[1], statuses[1]
    );
    assert_eq!(hung, 0, "requests without an answer");
    let bound = (TIMEOUT_MS + MARGIN_MS) as f64;
    for replica in &phases {
        for (i, (n, max)) in replica.iter().enumerate() {
            assert!(*n > 0, "no traffic in phase {i}");
            assert!(
                *max <= bound,
                "phase {i}: max latency {max} ms > {bound} ms"
            );
        }
    }
    assert_eq!(
        statuses[0].keys().copied().collect::<Vec<_>>(),
        [200],
        "local: {:?}",
        statuses[0]
    );
    assert!(
        statuses[1].keys().all(|&s| s == 200 || s == 503),
        "deny: {:?}",
        statuses[1]
    );
    assert_eq!(late_503, 0, "5xx after the stack recovered");
    let recovery = recovery.expect("the stack never worked through the cluster again");
    // One breaker interval, plus one command timeout for the probe, plus margin.
    let limit = Duration::from_millis(BREAKER_MS + TIMEOUT_MS + MARGIN_MS);
    assert!(
        recovery <= limit,
        "recovered {recovery:?} after the promotion > {limit:?}"
    );
}
