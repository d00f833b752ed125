//! Response cache, Redis backend: the shared suite against a real `redis-server`
//! (and a 3-master Cluster), plus outage, recovery, corruption and the fleet lock.
#![cfg(feature = "redis")]
#![allow(clippy::unwrap_used)]

mod cache_suite;
mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use cache_suite::*;
use palisade::config::{CacheBackend, RedisConfig};
use palisade::outcome::CacheStatus;
use palisade::redis::RedisPool;
use palisade::stack::BuildContext;

fn env_for(config: RedisConfig, configure: fn(&mut palisade::config::CacheConfig)) -> Env {
    let mut ctx = BuildContext::default();
    ctx.redis = Some(RedisPool::from_config(&config).unwrap().unwrap());
    Env {
        ctx,
        configure,
        prefix: "t:",
    }
}

fn redis_env(url: &str) -> Env {
    env_for(
        RedisConfig::single(url)
            .with_timeout_ms(200)
            .with_breaker_ms(500),
        |c| c.backend = CacheBackend::Redis,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn suite_on_redis() {
    let redis = support::RedisServer::start();
    cache_suite::all(&redis_env(redis.url())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn suite_on_redis_with_memory_tier() {
    let redis = support::RedisServer::start();
    let env = env_for(RedisConfig::single(redis.url()), |c| {
        c.backend = CacheBackend::Redis;
        c.memory_tier = true;
    });
    cache_suite::all(&env).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn suite_on_a_three_master_cluster() {
    let cluster = support::RedisCluster::start();
    let env = env_for(
        RedisConfig::cluster(cluster.urls()).with_timeout_ms(500),
        |c| c.backend = CacheBackend::Redis,
    );
    cache_suite::all(&env).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_entries_are_misses() {
    let redis = support::RedisServer::start_owned();
    let app = app(
        &redis_env(redis.url()),
        config(vec![rule(&["/items/{id}"])]),
    );
    get(&app, "/items/1").await;
    assert_eq!(get(&app, "/items/1").await.x_cache(), "HIT");
    let keys = redis.cli(&["KEYS", "*"]);
    let mut corrupted = 0;
    for k in keys
        .lines()
        .map(str::trim)
        .filter(|k| !k.is_empty() && !k.ends_with(":gen"))
    {
        redis.cli(&["SET", k, "not an entry"]);
        corrupted += 1;
    }
    assert!(corrupted >= 1, "entry keys found: {keys}");
    let r = get(&app, "/items/1").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.x_cache(), "MISS");
    assert_eq!(app.calls.get("items"), 2);
    assert_eq!(get(&app, "/items/1").await.x_cache(), "HIT", "refilled");
    // A truncated real entry (valid magic, bad checksum) too.
    for k in redis
        .cli(&["KEYS", "*"])
        .lines()
        .map(str::trim)
        .filter(|k| !k.is_empty() && !k.ends_with(":gen"))
    {
        redis.cli(&["SETRANGE", k, "20", "xx"]);
    }
    assert_eq!(get(&app, "/items/1").await.x_cache(), "MISS");
}

/// Redis killed, then hung (SIGSTOP): no request fails, each costs at most about
/// the timeout until the breaker opens, and hits resume once Redis is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_outage_never_fails_a_request_and_recovers() {
    let mut redis = support::RedisServer::start_owned();
    let app = app(
        &redis_env(redis.url()),
        config(vec![rule(&["/items/{id}"])]),
    );
    get(&app, "/items/1").await;
    assert_eq!(get(&app, "/items/1").await.x_cache(), "HIT");

    for outage in ["kill", "pause"] {
        if outage == "kill" {
            redis.kill();
        } else {
            redis.pause();
        }
        let mut slow = 0;
        for i in 0..30 {
            let t = Instant::now();
            let r = get(&app, &format!("/items/{i}")).await;
            let took = t.elapsed();
            assert_eq!(r.status, 200, "{outage}: request {i}");
            assert!(r.text().starts_with(&format!("item {i} call")), "{outage}");
            assert!(
                took < Duration::from_millis(200 + 400),
                "{outage}: request {i} took {took:?}, more than the timeout"
            );
            if took >= Duration::from_millis(100) {
                slow += 1;
            }
            if i == 0 {
                assert_eq!(r.outcome.unwrap().status, CacheStatus::Bypass);
                assert!(
                    r.cache_status().contains("detail=store-error"),
                    "{}",
                    r.cache_status()
                );
            }
        }
        // 30 quick requests fit in one breaker interval: one call waited.
        assert!(slow <= 2, "{outage}: {slow} requests paid the timeout");
        if outage == "kill" {
            redis.restart();
        } else {
            redis.resume();
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let r = get(&app, "/items/recovered").await;
            assert_eq!(r.status, 200);
            if r.x_cache() == "HIT" {
                break;
            }
            assert!(Instant::now() < deadline, "{outage}: hits never resumed");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // Start the next round from an empty namespace.
        redis.cli(&["FLUSHALL"]);
    }
}

/// `lock = true`: two replicas, 40 concurrent misses on one key, one upstream call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleet_lock_makes_one_call_across_replicas() {
    let redis = support::RedisServer::start();
    let env = env_for(RedisConfig::single(redis.url()), |c| {
        c.backend = CacheBackend::Redis;
        c.lock = true;
    });
    let prefix = format!("lock-{}:", std::process::id());
    let a = Arc::new(app_with(
        env.layer_with_prefix(config(vec![rule(&["/slow"])]), &prefix),
    ));
    let b = Arc::new(app_with(
        env.layer_with_prefix(config(vec![rule(&["/slow"])]), &prefix),
    ));
    let mut tasks = Vec::new();
    for i in 0..40 {
        let app = if i % 2 == 0 { a.clone() } else { b.clone() };
        tasks.push(tokio::spawn(async move { get(&app, "/slow").await }));
    }
    for t in tasks {
        let r = t.await.unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.text(), "slow 1");
    }
    assert_eq!(a.calls.get("slow") + b.calls.get("slow"), 1);
}

/// Invalidation and tag purges made on one replica are seen by the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalidation_is_fleet_wide() {
    let redis = support::RedisServer::start();
    let env = redis_env(redis.url());
    let prefix = format!("fleet-{}:", std::process::id());
    let cfg = || config(vec![rule(&["/items/{id}", "/tagged/{id}"])]);
    let a = app_with(env.layer_with_prefix(cfg(), &prefix));
    let b = app_with(env.layer_with_prefix(cfg(), &prefix));
    get(&a, "/items/1").await;
    get(&a, "/tagged/1").await;
    // A hit on `a` means its (asynchronous) writes to Redis are done.
    assert_eq!(get(&a, "/items/1").await.x_cache(), "HIT");
    assert_eq!(get(&a, "/tagged/1").await.x_cache(), "HIT");
    assert_eq!(get(&b, "/items/1").await.x_cache(), "HIT", "shared store");
    assert_eq!(get(&b, "/tagged/1").await.x_cache(), "HIT");
    send(&a, axum::http::Method::PUT, "/items/1", &[]).await;
    assert_eq!(get(&b, "/items/1").await.x_cache(), "MISS");
    a.layer.purge_tag("item-1").await.unwrap();
    assert_eq!(get(&b, "/tagged/1").await.x_cache(), "MISS");
    assert_eq!(app_calls(&a, &b, "items"), 2);
    assert_eq!(app_calls(&a, &b, "tagged"), 2);
}

fn app_calls(a: &App, b: &App, label: &'static str) -> usize {
    a.calls.get(label) + b.calls.get(label)
}

/// The entry keys (not generations) stored under `prefix`, with their `STRLEN`.
fn entry_sizes(redis: &support::RedisServer, prefix: &str) -> Vec<(String, usize)> {
    redis
        .cli(&["KEYS", &format!("{prefix}*")])
        .lines()
        .map(str::trim)
        .filter(|k| !k.is_empty() && !k.ends_with(":gen"))
        .map(|k| {
            let n = redis.cli(&["STRLEN", k]).trim().parse().unwrap();
            (k.to_owned(), n)
        })
        .collect()
}

/// `compress_min_bytes`: large compressible bodies are stored LZ4-compressed
/// (smaller in Redis, identical on a hit); already-compressed content and small
/// bodies are not; a damaged compressed entry is a miss.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compressed_entries_round_trip_and_shrink() {
    let redis = support::RedisServer::start_owned();
    let env = env_for(RedisConfig::single(redis.url()), |c| {
        c.backend = CacheBackend::Redis;
    });
    let cfg = |min| {
        let mut c = config(vec![rule(&["/doc/{kind}", "/items/{id}"])]);
        c.compress_min_bytes = min;
        c
    };
    let plain = app_with(env.layer_with_prefix(cfg(0), "plain:"));
    let packed = app_with(env.layer_with_prefix(cfg(1024), "packed:"));
    for app in [&plain, &packed] {
        let miss = get(app, "/doc/json").await;
        assert_eq!(miss.x_cache(), "MISS");
        let hit = get(app, "/doc/json").await;
        assert_eq!(hit.x_cache(), "HIT");
        assert_eq!(hit.body, doc_body(1).as_bytes(), "identical on a hit");
        assert_eq!(hit.headers["content-type"], "application/json");
    }
    let plain_len = entry_sizes(&redis, "plain:")[0].1;
    let packed_len = entry_sizes(&redis, "packed:")[0].1;
    assert!(plain_len > DOC_LEN, "{plain_len}");
    assert!(
        packed_len * 4 < plain_len,
        "compressed {packed_len} vs plain {plain_len}"
    );

    // Below the threshold, and content that is compressed already: stored as is.
    for (uri, min_len) in [
        ("/items/1", 1),
        ("/doc/png", DOC_LEN),
        ("/doc/gzip", DOC_LEN),
    ] {
        redis.cli(&["FLUSHALL"]);
        get(&packed, uri).await;
        assert_eq!(get(&packed, uri).await.x_cache(), "HIT", "{uri}");
        let sizes = entry_sizes(&redis, "packed:");
        assert_eq!(sizes.len(), 1, "{uri}: {sizes:?}");
        assert!(sizes[0].1 > min_len, "{uri}: {} bytes", sizes[0].1);
        if uri == "/items/1" {
            assert!(sizes[0].1 < 1024, "small entry: {} bytes", sizes[0].1);
        }
    }

    // A damaged compressed entry: a miss, then refilled.
    redis.cli(&["FLUSHALL"]);
    let calls = packed.calls.get("doc");
    get(&packed, "/doc/json").await;
    assert_eq!(get(&packed, "/doc/json").await.x_cache(), "HIT");
    let (key, len) = entry_sizes(&redis, "packed:").remove(0);
    assert!(len < DOC_LEN / 4);
    redis.cli(&["SETRANGE", &key, &(len / 2).to_string(), "\x01\x02garbage"]);
    let r = get(&packed, "/doc/json").await;
    assert_eq!(r.x_cache(), "MISS");
    assert_eq!(r.body, doc_body(calls + 2).as_bytes());
    // The refill is written behind the response: wait for it, boundedly.
    let mut refilled = false;
    for _ in 0..100 {
        if get(&packed, "/doc/json").await.x_cache() == "HIT" {
            refilled = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(refilled, "the damaged entry was refilled");
}

/// A replica reuses the entry it decoded last only for the very same stored bytes:
/// after the entry expires and another replica refills the key (same key, same
/// group generation, new body), the first replica serves the new body.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refilled_entry_is_decoded_anew() {
    let redis = support::RedisServer::start();
    let env = redis_env(redis.url());
    let prefix = format!("refill-{}:", std::process::id());
    let cfg = || {
        let mut r = rule(&["/items/{id}"]);
        r.ttl_s = Some(1);
        config(vec![r])
    };
    let a = app_with(env.layer_with_prefix(cfg(), &prefix));
    let b = app_with(env.layer_with_prefix(cfg(), &prefix));
    // Each replica's handler counts its own calls: one call on `b` first, so its
    // refill of /items/1 says "call 2" where `a`'s first fill said "call 1".
    assert_eq!(get(&b, "/items/2").await.text(), "item 2 call 1 ");
    assert_eq!(get(&a, "/items/1").await.text(), "item 1 call 1 ");
    let hit = get(&a, "/items/1").await;
    assert_eq!((hit.x_cache(), hit.text()), ("HIT", "item 1 call 1 "));
    // Past the entry's lifetime Redis drops it; the other replica fills it again.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let refill = get(&b, "/items/1").await;
    assert_eq!(
        (refill.x_cache(), refill.text()),
        ("MISS", "item 1 call 2 ")
    );
    let seen_by_b = get(&b, "/items/1").await;
    assert_eq!(seen_by_b.x_cache(), "HIT", "the refill is stored");
    let hit = get(&a, "/items/1").await;
    assert_eq!((hit.x_cache(), hit.text()), ("HIT", "item 1 call 2 "));
    assert_eq!(a.calls.get("items"), 1);
}
