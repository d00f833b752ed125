//! `RedisPool` against real `redis-server` processes: a single server (killed,
//! restarted, flushed, frozen) and a Redis Cluster (with a failover).
#![cfg(feature = "redis")]

mod support;

#[allow(unused_imports)]
use std::time::{Duration, Instant};

use palisade::config::RedisConfig;
use palisade::redis::{RedisPool, StoreError};
use support::RedisServer;

fn pool_for(server: &RedisServer, timeout_ms: u64, breaker_ms: u64) -> RedisPool {
    let config = RedisConfig::single(server.url())
        .with_timeout_ms(timeout_ms)
        .with_breaker_ms(breaker_ms)
        .with_pool_size(2);
    RedisPool::from_config(&config).unwrap().unwrap()
}

#[tokio::test]
async fn query_pipeline_script_and_ping_work() {
    let server = RedisServer::start();
    let pool = pool_for(&server, 1000, 500);
    pool.ping().await.unwrap();
    let _: () = pool
        .query("t", redis::cmd("SET").arg("{t}:a").arg("1"))
        .await
        .unwrap();
    let a: i64 = pool
        .query("t", redis::cmd("INCR").arg("{t}:a"))
        .await
        .unwrap();
    assert_eq!(a, 2);
    let mut pipe = redis::pipe();
    pipe.cmd("INCR").arg("{t}:a").cmd("GET").arg("{t}:a");
    let (n, s): (i64, String) = pool.query_pipeline("t", &pipe).await.unwrap();
    assert_eq!((n, s.as_str()), (3, "3"));
    let script = redis::Script::new("return redis.call('INCRBY', KEYS[1], ARGV[1])");
    let v: i64 = pool
        .invoke_script("t", script.key("{t}:a").arg(10))
        .await
        .unwrap();
    assert_eq!(v, 13);
    // An error reply is a Redis error and does not open the breaker.
    let err = pool
        .query::<i64>("t", redis::cmd("LPUSH").arg("{t}:a").arg("x"))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, StoreError::Redis(m) if m.contains("WRONGTYPE")),
        "{err}"
    );
    pool.ping().await.unwrap();
    // The futures are Send (the layers run them in boxed Send futures).
    let p = pool.clone();
    let got: i64 = tokio::spawn(async move { p.query("t", redis::cmd("GET").arg("{t}:a")).await })
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got, 13);
}
