//! The Redis backend against real `redis-server` processes (and a 3-master Cluster):
//! two independent stacks ("replicas") share one quota exactly, SCRIPT FLUSH and
//! restarts are survived, and each `on_store_error` mode answers within the timeout.
#![allow(clippy::unwrap_used)]
#![cfg(all(feature = "rate-limit", feature = "redis"))]

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::response::Response;
use axum::routing::get;
use http::Request;
use palisade::config::{RateLimitConfig, RedisConfig};
use palisade::identity::{Identity, IdentityKind};
use palisade::outcome::RateLimitOutcome;
use palisade::problem::Rejection;
use palisade::rate_limit::RateLimitLayer;
use palisade::redis::RedisPool;
use palisade::stack::BuildContext;
use tower::ServiceExt;

/// One "replica": its own layer, memory and pool, on the given Redis.
fn replica(redis: RedisConfig, toml_text: &str) -> Router {
    let config: RateLimitConfig = toml::from_str(toml_text).expect("valid toml");
    let mut ctx = BuildContext::default();
    ctx.redis = RedisPool::from_config(&redis).expect("valid redis config");
    let stages = RateLimitLayer::from_config(&config, &ctx).expect("valid config");
    Router::new()
        .route("/", get(|| async { "ok" }))
        .layer(stages.before_auth.expect("a before-auth stage"))
}

/// A replica with both stages and, between them, a stand-in for auth that turns
/// `x-user` into an [`Identity`].
fn two_stage_replica(redis: RedisConfig, toml_text: &str) -> Router {
    let config: RateLimitConfig = toml::from_str(toml_text).expect("valid toml");
    let mut ctx = BuildContext::default();
    ctx.redis = RedisPool::from_config(&redis).expect("valid redis config");
    let stages = RateLimitLayer::from_config(&config, &ctx).expect("valid config");
    Router::new()
        .route("/", get(|| async { "ok" }))
        .layer(stages.after_auth.expect("an after-auth stage"))
        .layer(axum::middleware::from_fn(
            |mut req: axum::extract::Request, next: axum::middleware::Next| async move {
                if let Some(user) = req.headers().get("x-user").and_then(|v| v.to_str().ok()) {
                    let id = Identity::new(IdentityKind::ApiKey, user, Vec::<String>::new());
                    req.extensions_mut().insert(id);
                }
                next.run(req).await
            },
        ))
        .layer(stages.before_auth.expect("a before-auth stage"))
}

fn req_from(ip: &str) -> Request<Body> {
    let mut req = Request::get("/").body(Body::empty()).unwrap();
    let addr = SocketAddr::new(ip.parse().unwrap(), 40000);
    req.extensions_mut().insert(ConnectInfo(addr));
    req
}

/// Sends a request; a hang past 2 s (ten times the timeouts used here) fails the test.
async fn send(app: &Router, req: Request<Body>) -> Response {
    tokio::time::timeout(Duration::from_secs(2), app.clone().oneshot(req))
        .await
        .expect("the limiter must never hang past its timeout")
        .unwrap()
}

fn header<'a>(res: &'a Response, name: &str) -> &'a str {
    res.headers()
        .get(name)
        .map(|v| v.to_str().unwrap())
        .unwrap_or("")
}

const SHARED: &str = r#"
    backend = "redis"
    on_store_error = "deny"
    [[policies]]
    name = "per-ip"
    limit = 10
    period_s = 600
    [[policies]]
    name = "hourly"
    limit = 1000
    period_s = 3600
    [[policies]]
    name = "global"
    key = "global"
    limit = 1000
    period_s = 36000
"#;

async fn two_replicas_share_one_quota(redis: RedisConfig) {
    let a = replica(redis.clone(), SHARED);
    let b = replica(redis, SHARED);
    let mut admitted = 0;
    for i in 0..30 {
        let app = if i % 2 == 0 { &a } else { &b };
        let res = send(app, req_from("192.0.2.1")).await;
        match res.status().as_u16() {
            200 => {
                admitted += 1;
                // Each replica sees the quota the other one spent.
                let r = 10 - admitted;
                assert!(
                    header(&res, "ratelimit").starts_with(&format!("\"per-ip\";r={r};")),
                    "{}",
                    header(&res, "ratelimit")
                );
            }
            429 => {
                assert_eq!(header(&res, "retry-after"), "60");
                let body = axum::body::to_bytes(res.into_body(), 4096).await.unwrap();
                let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
                assert_eq!(v["violated-policies"], serde_json::json!(["per-ip"]));
            }
            s => panic!("unexpected status {s}"),
        }
    }
    assert_eq!(admitted, 10);
    // Requests refused by "per-ip" were not taken from the other policies.
    let res = send(&a, req_from("192.0.2.2")).await;
    assert_eq!(res.status(), 200);
    let value = header(&res, "ratelimit");
    assert!(value.contains("\"hourly\";r=999;"), "{value}");
    assert!(value.contains("\"global\";r=989;"), "{value}"); // 10 + 1 admitted
}

#[tokio::test]
async fn two_replicas_share_one_quota_exactly() {
    let server = support::RedisServer::start_owned();
    two_replicas_share_one_quota(RedisConfig::single(server.url())).await;
}

#[tokio::test]
async fn keys_are_hashed_hash_tagged_and_expire() {
    let server = support::RedisServer::start_owned();
    let app = replica(
        RedisConfig::single(server.url()),
        r#"
        backend = "redis"
        [[policies]]
        name = "per-token"
        key = "header:x-token"
        limit = 5
        period_s = 30
        "#,
    );
    let mut req = req_from("192.0.2.1");
    req.headers_mut()
        .insert("x-token", "super-secret-token".parse().unwrap());
    assert_eq!(send(&app, req).await.status(), 200);
    let keys = server.cli(&["--scan"]);
    assert!(!keys.contains("super-secret"), "{keys}");
    assert!(
        keys.starts_with("{palisade:rl:2:") && keys.ends_with("}:per-token"),
        "{keys}"
    );
    let pttl: i64 = server.cli(&["PTTL", &keys]).parse().unwrap();
    // One of 5 units used: back at full quota (and gone) within 6 s.
    assert!(pttl > 0 && pttl <= 6000, "{pttl}");
}

#[tokio::test]
async fn script_flush_and_restart_are_survived() {
    let mut server = support::RedisServer::start_owned();
    let redis = RedisConfig::single(server.url()).with_breaker_ms(100);
    // deny: any store error would show as a 503.
    let app = replica(
        redis,
        r#"
        backend = "redis"
        on_store_error = "deny"
        [[policies]]
        name = "per-ip"
        limit = 3
        period_s = 600
        "#,
    );
    assert_eq!(send(&app, req_from("192.0.2.1")).await.status(), 200);
    assert_eq!(server.cli(&["SCRIPT", "FLUSH"]), "OK");
    let res = send(&app, req_from("192.0.2.1")).await;
    assert_eq!(res.status(), 200);
    assert_eq!(header(&res, "ratelimit"), "\"per-ip\";r=1;t=200");
    server.restart();
    // The first calls after the restart may meet the dead connection or the open
    // breaker (503, fast); the limiter must come back by itself, with an empty Redis.
    let mut recovered = None;
    for _ in 0..100 {
        let res = send(&app, req_from("192.0.2.1")).await;
        if res.status() == 200 {
            recovered = Some(res);
            break;
        }
        assert_eq!(res.status(), 503);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let res = recovered.expect("recovered after the restart");
    assert_eq!(header(&res, "ratelimit"), "\"per-ip\";r=2;t=200");
}

fn mode_config(mode: &str) -> String {
    format!(
        r#"
        backend = "redis"
        on_store_error = "{mode}"
        [[policies]]
        name = "per-ip"
        limit = 2
        period_s = 60
        "#
    )
}

async fn store_error_modes(server: &support::RedisServer) {
    let redis = RedisConfig::single(server.url()).with_timeout_ms(100);
    let allow = replica(redis.clone(), &mode_config("allow"));
    let deny = replica(redis.clone(), &mode_config("deny"));
    let local = replica(redis, &mode_config("local"));
    for _ in 0..5 {
        let res = send(&allow, req_from("192.0.2.1")).await;
        assert_eq!(res.status(), 200);
        assert!(res.headers().get("ratelimit").is_none());
    }
    for _ in 0..3 {
        let res = send(&deny, req_from("192.0.2.1")).await;
        assert_eq!(res.status(), 503);
        assert_eq!(header(&res, "retry-after"), "1");
        assert_eq!(header(&res, "content-type"), "application/problem+json");
        assert_eq!(
            res.extensions().get::<Rejection>().map(|r| r.reason),
            Some("store_error")
        );
    }
    // local: this replica's own memory limiter, same policy.
    assert_eq!(send(&local, req_from("192.0.2.1")).await.status(), 200);
    let res = send(&local, req_from("192.0.2.1")).await;
    assert_eq!(res.status(), 200);
    assert_eq!(header(&res, "ratelimit"), "\"per-ip\";r=0;t=30");
    let res = send(&local, req_from("192.0.2.1")).await;
    assert_eq!(res.status(), 429);
    assert!(res.extensions().get::<RateLimitOutcome>().unwrap().limited);
}

#[tokio::test]
async fn redis_killed_each_mode_within_timeout() {
    let mut server = support::RedisServer::start_owned();
    server.kill();
    store_error_modes(&server).await;
}

#[tokio::test]
async fn redis_frozen_each_mode_within_timeout() {
    let server = support::RedisServer::start_owned();
    server.pause();
    store_error_modes(&server).await;
    server.resume();
}

#[tokio::test]
async fn memory_and_redis_backends_agree() {
    let server = support::RedisServer::start_owned();
    let policies = r#"
        [[policies]]
        name = "burst"
        limit = 3
        period_s = 600
        [[policies]]
        name = "cost"
        limit = 10
        period_s = 1000
        cost = 2
    "#;
    let redis = replica(
        RedisConfig::single(server.url()),
        &format!("backend = \"redis\"\n{policies}"),
    );
    let memory = replica(RedisConfig::default(), policies);
    for i in 0..8 {
        let a = send(&memory, req_from("192.0.2.1")).await;
        let b = send(&redis, req_from("192.0.2.1")).await;
        assert_eq!(a.status(), b.status(), "request {i}");
        for h in ["ratelimit", "ratelimit-policy", "retry-after"] {
            assert_eq!(header(&a, h), header(&b, h), "request {i}, {h}");
        }
    }
}

async fn refused_after_auth_costs_the_before_auth_stage_nothing(redis: RedisConfig, extra: &str) {
    let app = two_stage_replica(
        redis,
        &format!(
            r#"
        backend = "redis"
        on_store_error = "deny"
        {extra}
        [[policies]]
        name = "per-ip"
        limit = 10
        period_s = 600
        [[policies]]
        name = "global"
        key = "global"
        limit = 1000
        period_s = 36000
        [[policies]]
        name = "user"
        key = "identity"
        limit = 1
        period_s = 600
        "#
        ),
    );
    let alice = || {
        let mut r = req_from("192.0.2.1");
        r.headers_mut().insert("x-user", "alice".parse().unwrap());
        r
    };
    assert_eq!(send(&app, alice()).await.status(), 200);
    for _ in 0..3 {
        let res = send(&app, alice()).await;
        assert_eq!(res.status(), 429);
        let value = header(&res, "ratelimit");
        assert!(value.starts_with("\"user\";r=0;"), "{value}");
        assert!(value.contains("\"per-ip\";r=9;"), "{value}");
        assert!(value.contains("\"global\";r=999;"), "{value}");
    }
    // Only the two admitted requests were taken from the before-auth policies.
    let res = send(&app, req_from("192.0.2.1")).await;
    assert_eq!(res.status(), 200);
    let value = header(&res, "ratelimit");
    assert!(value.contains("\"per-ip\";r=8;"), "{value}");
    assert!(value.contains("\"global\";r=998;"), "{value}");
}

#[tokio::test]
async fn refused_after_auth_refunds_before_auth_in_redis() {
    let server = support::RedisServer::start_owned();
    refused_after_auth_costs_the_before_auth_stage_nothing(RedisConfig::single(server.url()), "")
        .await;
}

/// Hybrid mode: the before-auth stage spent from its lease, and gets the unit back
/// into the lease (headers exact with one replica).
#[tokio::test]
async fn refused_after_auth_refunds_before_auth_leases() {
    let server = support::RedisServer::start_owned();
    refused_after_auth_costs_the_before_auth_stage_nothing(
        RedisConfig::single(server.url()),
        "lease = 3\n        lease_ms = 60000",
    )
    .await;
}

#[tokio::test]
async fn cluster_refused_after_auth_refunds_before_auth() {
    let cluster = support::RedisCluster::start();
    refused_after_auth_costs_the_before_auth_stage_nothing(
        RedisConfig::cluster(cluster.urls()),
        "",
    )
    .await;
}

#[tokio::test]
async fn cluster_two_replicas_share_one_quota_exactly() {
    let cluster = support::RedisCluster::start();
    two_replicas_share_one_quota(RedisConfig::cluster(cluster.urls())).await;
}

#[tokio::test]
async fn cluster_script_flush_is_survived() {
    let cluster = support::RedisCluster::start();
    let app = replica(
        RedisConfig::cluster(cluster.urls()),
        r#"
        backend = "redis"
        on_store_error = "deny"
        [[policies]]
        name = "per-ip"
        limit = 3
        period_s = 600
        [[policies]]
        name = "global"
        key = "global"
        limit = 1000
        period_s = 36000
        "#,
    );
    assert_eq!(send(&app, req_from("192.0.2.1")).await.status(), 200);
    for reply in cluster.cli_on_masters(&["SCRIPT", "FLUSH"]) {
        assert_eq!(reply, "OK");
    }
    let res = send(&app, req_from("192.0.2.1")).await;
    assert_eq!(res.status(), 200);
    assert!(header(&res, "ratelimit").starts_with("\"per-ip\";r=1;t=200, \"global\";r=998;"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_master_killed_each_mode_then_failover() {
    let mut cluster = support::RedisCluster::start();
    let redis = RedisConfig::cluster(cluster.urls())
        .with_timeout_ms(200)
        .with_breaker_ms(200);
    let allow = replica(redis.clone(), &mode_config("allow"));
    let deny = replica(redis.clone(), &mode_config("deny"));
    let local = replica(redis, &mode_config("local"));
    let res = send(&allow, req_from("192.0.2.1")).await;
    assert_eq!(res.status(), 200);
    assert_eq!(header(&res, "ratelimit"), "\"per-ip\";r=1;t=30");
    // The key all three share (192.0.2.1 = 0xc0000201), and its master.
    let key = format!("{{palisade:rl:1:{:032x}}}:per-ip", 0xc000_0201u32);
    let slot = cluster.slot_of(&key);
    cluster.kill_master_of_slot(slot);
    // Until the failover, every mode answers within its timeout (send() bounds it).
    let res = send(&allow, req_from("192.0.2.1")).await;
    assert_eq!(res.status(), 200);
    let res = send(&deny, req_from("192.0.2.1")).await;
    assert!(
        matches!(res.status().as_u16(), 503 | 200 | 429),
        "{}",
        res.status()
    );
    let res = send(&local, req_from("192.0.2.1")).await;
    assert!(
        matches!(res.status().as_u16(), 200 | 429),
        "{}",
        res.status()
    );
    cluster.wait_for_failover(slot, Duration::from_secs(30));
    // After the failover the promoted replica decides again (the key may or may
    // not have been replicated before the kill: 200 or 429, but not 503).
    let mut recovered = false;
    for _ in 0..100 {
        let res = send(&deny, req_from("192.0.2.1")).await;
        if res.status() != 503 {
            assert!(header(&res, "ratelimit").starts_with("\"per-ip\";r="));
            recovered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(recovered, "the limiter came back after the failover");
}

/// A dead master fails fast only for the keys it served: the breaker is per range of
/// hash slots, so clients whose keys live on healthy masters are still decided.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_dead_master_does_not_fail_the_healthy_masters_keys() {
    let mut cluster = support::RedisCluster::start();
    // A long breaker: it stays open for the whole test once tripped.
    let redis = RedisConfig::cluster(cluster.urls())
        .with_timeout_ms(200)
        .with_breaker_ms(60_000);
    let deny = replica(redis, &mode_config("deny"));
    let key_of = |ip: u32| format!("{{palisade:rl:1:{ip:032x}}}:per-ip");
    let ip_text = |ip: u32| std::net::Ipv4Addr::from(ip).to_string();
    let dead_ip = 0xc000_0201u32; // 192.0.2.1
    assert_eq!(send(&deny, req_from(&ip_text(dead_ip))).await.status(), 200);
    let dead_slot = cluster.slot_of(&key_of(dead_ip));
    let dead_master = cluster.master_of_slot(dead_slot);
    // A client whose key is on another master, in another range of 256 slots.
    let healthy_ip = (dead_ip + 1..dead_ip + 200)
        .find(|&ip| {
            let slot = cluster.slot_of(&key_of(ip));
            cluster.master_of_slot(slot) != dead_master && slot / 256 != dead_slot / 256
        })
        .expect("a key on another master");
    cluster.kill_master_of_slot(dead_slot);
    // The dead master's client: refused within the timeout. The first call may meet
    // a `MOVED` reply (not a sign of an outage), the next ones the refused
    // connection, which opens that range's breaker.
    for _ in 0..4 {
        let res = send(&deny, req_from(&ip_text(dead_ip))).await;
        assert_eq!(res.status(), 503);
    }
    // Before the Cluster even marks the node failed (node timeout 1 s), the healthy
    // master's client is decided as usual, not failed fast by that breaker.
    let res = send(&deny, req_from(&ip_text(healthy_ip))).await;
    assert_eq!(res.status(), 200);
    assert_eq!(header(&res, "ratelimit"), "\"per-ip\";r=1;t=30");
    // The dead master's client is still refused (its range's breaker is open).
    let res = send(&deny, req_from(&ip_text(dead_ip))).await;
    assert_eq!(res.status(), 503);
    assert_eq!(
        res.extensions().get::<Rejection>().map(|r| r.reason),
        Some("store_error")
    );
}
