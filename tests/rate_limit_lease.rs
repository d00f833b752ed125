//! Hybrid mode (`lease > 0`) against real `redis-server` processes and a 3-master
//! Cluster: replicas share one quota exactly, Redis sees one round trip per lease
//! instead of one per request (counted by Redis itself, `INFO commandstats`), a
//! live lease outlasts a dead Redis, leases expire, and a refusal by one policy
//! gives the other policies' leased units back.
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
use palisade::rate_limit::RateLimitLayer;
use palisade::redis::RedisPool;
use palisade::stack::BuildContext;
use tower::ServiceExt;

/// One "replica": its own layer, leases and pool, on the given Redis.
fn replica(redis: RedisConfig, toml_text: &str) -> (Router, RateLimitLayer) {
    let config: RateLimitConfig = toml::from_str(toml_text).expect("valid toml");
    let mut ctx = BuildContext::default();
    ctx.redis = RedisPool::from_config(&redis).expect("valid redis config");
    let stages = RateLimitLayer::from_config(&config, &ctx).expect("valid config");
    let layer = stages.before_auth.expect("a before-auth stage");
    let app = Router::new()
        .route("/", get(|| async { "ok" }))
        .layer(layer.clone());
    (app, layer)
}

fn req_from(ip: &str) -> Request<Body> {
    let mut req = Request::get("/").body(Body::empty()).unwrap();
    let addr = SocketAddr::new(ip.parse().unwrap(), 40000);
    req.extensions_mut().insert(ConnectInfo(addr));
    req
}

/// Sends a request; a hang past 2 s fails the test.
async fn send(app: &Router, ip: &str) -> Response {
    tokio::time::timeout(Duration::from_secs(2), app.clone().oneshot(req_from(ip)))
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

/// `EVALSHA` calls Redis counted since its last `CONFIG RESETSTAT`.
fn evalsha_calls(info: &str) -> u64 {
    info.lines()
        .find_map(|l| l.strip_prefix("cmdstat_evalsha:calls="))
        .map_or(0, |rest| {
            rest.split(',').next().unwrap().trim().parse().unwrap()
        })
}

const LEASED: &str = r#"
    backend = "redis"
    on_store_error = "deny"
    lease = 5
    lease_ms = 60000
    [[policies]]
    name = "per-ip"
    limit = 40
    period_s = 3600
"#;

/// Loads the lease script and resets Redis's command counters, so a `NOSCRIPT`
/// retry does not count as a decision.
fn prepare(cli: impl Fn(&[&str]) -> String) {
    let sha = cli(&["SCRIPT", "LOAD", palisade::rate_limit::REDIS_LEASE_SCRIPT]);
    assert_eq!(sha.len(), 40, "{sha}");
    assert_eq!(cli(&["CONFIG", "RESETSTAT"]), "OK");
}

/// Two replicas alternate on one client: exactly the quota is admitted, and Redis
/// runs one script per lease of 5 (8 for 40 requests), not one per request.
async fn leased_replicas_share_one_quota(
    redis: RedisConfig,
    reset_stats: impl Fn(),
    evalsha: impl Fn() -> u64,
) {
    let (a, _) = replica(redis.clone(), LEASED);
    let (b, _) = replica(redis, LEASED);
    reset_stats();
    for i in 0..40 {
        let app = if i % 2 == 0 { &a } else { &b };
        let res = send(app, "192.0.2.1").await;
        assert_eq!(res.status(), 200, "request {i}");
        assert!(header(&res, "ratelimit").starts_with("\"per-ip\";r="));
    }
    assert_eq!(evalsha(), 8, "one round trip per lease of 5");
    for app in [&a, &b] {
        let res = send(app, "192.0.2.1").await;
        assert_eq!(res.status(), 429);
        // 40 per hour: one unit comes back every 90 s.
        assert_eq!(header(&res, "retry-after"), "90");
        assert_eq!(header(&res, "ratelimit"), "\"per-ip\";r=0;t=90");
    }
}

#[tokio::test]
async fn leased_replicas_share_one_quota_with_one_round_trip_per_lease() {
    let server = support::RedisServer::start_owned();
    leased_replicas_share_one_quota(
        RedisConfig::single(server.url()),
        || prepare(|args| server.cli(args)),
        || evalsha_calls(&server.cli(&["INFO", "commandstats"])),
    )
    .await;
}

#[tokio::test]
async fn cluster_leased_replicas_share_one_quota_with_one_round_trip_per_lease() {
    let cluster = support::RedisCluster::start();
    leased_replicas_share_one_quota(
        RedisConfig::cluster(cluster.urls()),
        || {
            let script = palisade::rate_limit::REDIS_LEASE_SCRIPT;
            for sha in cluster.cli_on_masters(&["SCRIPT", "LOAD", script]) {
                assert_eq!(sha.len(), 40, "{sha}");
            }
            for reply in cluster.cli_on_masters(&["CONFIG", "RESETSTAT"]) {
                assert_eq!(reply, "OK");
            }
        },
        || {
            cluster
                .cli_on_masters(&["INFO", "commandstats"])
                .iter()
                .map(|info| evalsha_calls(info))
                .sum()
        },
    )
    .await;
}

#[tokio::test]
async fn units_another_replica_holds_are_the_only_shortfall() {
    let server = support::RedisServer::start_owned();
    let redis = RedisConfig::single(server.url());
    let (a, _) = replica(redis.clone(), LEASED);
    let (b, _) = replica(redis, LEASED);
    // A leases 5 and spends 1: it holds 4 that B cannot have.
    assert_eq!(send(&a, "192.0.2.1").await.status(), 200);
    let mut admitted_by_b = 0;
    while send(&b, "192.0.2.1").await.status() == 200 {
        admitted_by_b += 1;
        assert!(admitted_by_b <= 40);
    }
    assert_eq!(admitted_by_b, 35);
    // A's 4 are still there: 40 in all, never more.
    for _ in 0..4 {
        assert_eq!(send(&a, "192.0.2.1").await.status(), 200);
    }
    assert_eq!(send(&a, "192.0.2.1").await.status(), 429);
}

#[tokio::test]
async fn a_live_lease_outlasts_a_dead_redis_then_on_store_error_applies() {
    let mut server = support::RedisServer::start_owned();
    let redis = RedisConfig::single(server.url()).with_timeout_ms(100);
    let (app, layer) = replica(redis, LEASED);
    assert_eq!(send(&app, "192.0.2.1").await.status(), 200);
    assert_eq!(layer.leased_keys(), 1);
    server.kill();
    // The 4 units this replica holds need no Redis.
    for _ in 0..4 {
        let res = send(&app, "192.0.2.1").await;
        assert_eq!(res.status(), 200);
    }
    // Spent: Redis must decide, and it is gone (deny).
    let res = send(&app, "192.0.2.1").await;
    assert_eq!(res.status(), 503);
    assert_eq!(header(&res, "retry-after"), "1");
    // Another client never had a lease.
    assert_eq!(send(&app, "192.0.2.2").await.status(), 503);
}

#[tokio::test]
async fn unspent_units_are_forfeited_after_lease_ms() {
    let server = support::RedisServer::start_owned();
    let (app, _) = replica(
        RedisConfig::single(server.url()),
        &LEASED.replace("lease_ms = 60000", "lease_ms = 50"),
    );
    prepare(|args| server.cli(args));
    assert_eq!(send(&app, "192.0.2.1").await.status(), 200);
    assert_eq!(send(&app, "192.0.2.1").await.status(), 200);
    assert_eq!(evalsha_calls(&server.cli(&["INFO", "commandstats"])), 1);
    tokio::time::sleep(Duration::from_millis(120)).await;
    // The 3 units left expired with the lease: a new lease, from Redis.
    let res = send(&app, "192.0.2.1").await;
    assert_eq!(res.status(), 200);
    assert_eq!(evalsha_calls(&server.cli(&["INFO", "commandstats"])), 2);
    // Forfeited units stay spent in Redis (never over-admitted): 5 + 5 taken.
    assert_eq!(header(&res, "ratelimit"), "\"per-ip\";r=34;t=90");
}

#[tokio::test]
async fn a_refusal_by_one_policy_gives_the_others_leased_units_back() {
    let server = support::RedisServer::start_owned();
    let (app, _) = replica(
        RedisConfig::single(server.url()),
        r#"
        backend = "redis"
        on_store_error = "deny"
        lease = 5
        lease_ms = 60000
        [[policies]]
        name = "per-ip"
        limit = 100
        period_s = 3600
        [[policies]]
        name = "global"
        key = "global"
        limit = 12
        period_s = 3600
        "#,
    );
    prepare(|args| server.cli(args));
    for i in 0..12 {
        assert_eq!(send(&app, "192.0.2.1").await.status(), 200, "request {i}");
    }
    let res = send(&app, "192.0.2.1").await;
    assert_eq!(res.status(), 429);
    let value = header(&res, "ratelimit");
    // 12 admitted on per-ip: the unit the refused request took locally came back.
    assert!(value.contains("\"per-ip\";r=88;"), "{value}");
    assert!(value.contains("\"global\";r=0;"), "{value}");
    // Leases of 5, 5 and 2 for global (and 5, 5, 5 for per-ip with them), then the
    // refused request: four round trips for 13 requests.
    assert_eq!(evalsha_calls(&server.cli(&["INFO", "commandstats"])), 4);
}

#[tokio::test]
async fn lease_without_redis_and_bad_lease_ms_fail_at_start_up() {
    let config: RateLimitConfig = toml::from_str(
        r#"
        lease = 5
        lease_ms = 0
        [[policies]]
        name = "per-ip"
        limit = 40
        period_s = 3600
        "#,
    )
    .unwrap();
    let err = RateLimitLayer::from_config(&config, &BuildContext::default()).unwrap_err();
    let text = err.to_string();
    assert!(text.contains("rate_limit.lease:"), "{text}");
    assert!(text.contains("rate_limit.lease_ms"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_replicas_never_admit_more_than_the_quota() {
    let server = support::RedisServer::start_owned();
    let config = r#"
        backend = "redis"
        on_store_error = "deny"
        lease = 10
        lease_ms = 60000
        [[policies]]
        name = "per-ip"
        limit = 200
        period_s = 3600
    "#;
    let redis = RedisConfig::single(server.url());
    let (a, _) = replica(redis.clone(), config);
    let (b, _) = replica(redis, config);
    // 64 tasks, 32 on each replica, each sending until it is refused three times in
    // a row (a replica may still hold leased units another task can spend).
    let tasks: Vec<_> = (0..64)
        .map(|t| {
            let app = if t % 2 == 0 { a.clone() } else { b.clone() };
            tokio::spawn(async move {
                let (mut admitted, mut refused_in_a_row) = (0u32, 0);
                while refused_in_a_row < 3 {
                    match send(&app, "192.0.2.1").await.status().as_u16() {
                        200 => {
                            admitted += 1;
                            refused_in_a_row = 0;
                        }
                        429 => refused_in_a_row += 1,
                        s => panic!("unexpected status {s}"),
                    }
                }
                admitted
            })
        })
        .collect();
    let mut admitted = 0;
    for t in tasks {
        admitted += t.await.unwrap();
    }
    // Never more than the quota (one unit comes back every 18 s: none during the
    // test); at most 9 units per replica left unspent in a lease.
    assert!(admitted <= 200, "{admitted} admitted");
    assert!(admitted >= 200 - 2 * 9, "{admitted} admitted");
}
