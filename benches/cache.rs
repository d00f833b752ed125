//! Cache benches.
//!
//! * `redis_hit_vs_raw_get`: a full cache hit through the layer (Redis backend)
//!   against a raw `GET` of the same stored bytes through the same `RedisPool`.
//! * `redis_hit_vs_raw_get_64_tasks`: the same two, each driven by 64 concurrent
//!   tasks on the 2-worker runtime (issue #8's throughput comparison: time per
//!   operation, so `raw / hit` is the hit rate as a fraction of the raw GET rate).
//! * `hit_vs_upstream`: a hit (memory and Redis) against a handler whose upstream
//!   call takes 10 ms.
//!
//! Redis: `PALISADE_BENCH_REDIS_URL` (default `redis://127.0.0.1:6379`); the Redis
//! benches are skipped with a note when it does not answer.
#![allow(clippy::unwrap_used, missing_docs)]

use std::future::Future;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::Request;
use axum::routing::get;
use criterion::{Criterion, criterion_group, criterion_main};
use http_body_util::BodyExt;
use palisade::cache::CacheLayer;
use palisade::config::{CacheBackend, CacheConfig, CacheRule, RedisConfig};
use palisade::redis::RedisPool;
use palisade::stack::BuildContext;
use tower::ServiceExt;

const BODY: &str = include_str!("../Cargo.toml");

fn config(backend: CacheBackend, prefix: &str) -> CacheConfig {
    let mut c = CacheConfig::default();
    c.backend = backend;
    c.key_prefix = prefix.into();
    let mut r = CacheRule::default();
    r.paths = vec!["/items/{id}".into()];
    r.ttl_s = Some(3600);
    c.rules = vec![r];
    c
}

fn app(layer: CacheLayer) -> Router {
    Router::new()
        .route("/items/{id}", get(|| async { BODY }))
        .route(
            "/upstream",
            get(|| async {
                tokio::time::sleep(Duration::from_millis(10)).await;
                BODY
            }),
        )
        .layer(layer)
}

async fn fetch(app: &Router, uri: &str) -> usize {
    let req = Request::get(uri)
        .header("host", "bench.example")
        .body(Body::empty())
        .unwrap();
    let res = app.clone().oneshot(req).await.unwrap();
    res.into_body().collect().await.unwrap().to_bytes().len()
}

/// Runs `iters` calls of `op` spread over 64 concurrent tasks; the elapsed time.
fn concurrent<F, Fut>(rt: &tokio::runtime::Runtime, iters: u64, op: F) -> Duration
where
    F: Fn() -> Fut + Clone + Send + 'static,
    Fut: Future<Output = ()> + Send,
{
    const TASKS: u64 = 64;
    rt.block_on(async {
        let start = Instant::now();
        let mut set = tokio::task::JoinSet::new();
        for t in 0..TASKS {
            let n = iters / TASKS + u64::from(t < iters % TASKS);
            let op = op.clone();
            set.spawn(async move {
                for _ in 0..n {
                    op().await;
                }
            });
        }
        while set.join_next().await.is_some() {}
        start.elapsed()
    })
}

fn redis_pool(rt: &tokio::runtime::Runtime) -> Option<RedisPool> {
    let url = std::env::var("PALISADE_BENCH_REDIS_URL")
        .unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let pool = RedisPool::from_config(&RedisConfig::single(url.clone()))
        .ok()
        .flatten()?;
    // The first call may race the background connect.
    for _ in 0..20 {
        if rt.block_on(pool.ping()).is_ok() {
            return Some(pool);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    eprintln!("note: no Redis at {url}; Redis cache benches skipped");
    None
}

fn benches(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();

    let memory = rt.block_on(async {
        let layer = CacheLayer::from_config(
            &config(CacheBackend::Memory, "m:"),
            &BuildContext::default(),
        )
        .unwrap()
        .unwrap();
        let app = app(layer);
        fetch(&app, "/items/1").await;
        app
    });

    let redis = redis_pool(&rt).map(|pool| {
        rt.block_on(async {
            let prefix = format!("palisade-bench-{}:", std::process::id());
            let mut ctx = BuildContext::default();
            ctx.redis = Some(pool.clone());
            let layer = CacheLayer::from_config(&config(CacheBackend::Redis, &prefix), &ctx)
                .unwrap()
                .unwrap();
            let app = app(layer);
            fetch(&app, "/items/1").await;
            tokio::time::sleep(Duration::from_millis(50)).await;
            // Copy the stored entry's bytes under a plain key for the raw GET.
            let keys: Vec<String> = pool
                .query("bench", redis::cmd("KEYS").arg(format!("{prefix}*")))
                .await
                .unwrap();
            let entry = keys
                .iter()
                .find(|k| !k.ends_with(":gen"))
                .expect("entry stored");
            let bytes: Vec<u8> = pool
                .query("bench", redis::cmd("GET").arg(entry))
                .await
                .unwrap();
            let raw_key = format!("{prefix}raw");
            let _: () = pool
                .query(
                    "bench",
                    redis::cmd("SET")
                        .arg(&raw_key)
                        .arg(&bytes)
                        .arg("EX")
                        .arg(3600),
                )
                .await
                .unwrap();
            println!("stored entry: {} bytes", bytes.len());
            (app, pool, raw_key, keys)
        })
    });

    let mut g = c.benchmark_group("redis_hit_vs_raw_get");
    if let Some((app, pool, raw_key, keys)) = &redis {
        let cmd = {
            let mut cmd = redis::cmd("GET");
            cmd.arg(raw_key);
            cmd
        };
        g.bench_function("raw_get_same_bytes", |b| {
            b.iter(|| {
                rt.block_on(async { pool.query::<Vec<u8>>("bench", &cmd).await.unwrap().len() })
            })
        });
        // The lookup's actual command: the entry and its group generation, one slot.
        let entry_key = keys.iter().find(|k| !k.ends_with(":gen")).unwrap();
        let gen_key = format!(
            "{}gen",
            entry_key.rsplit_once(':').unwrap().0.to_owned() + ":"
        );
        let mget = {
            let mut cmd = redis::cmd("MGET");
            cmd.arg(&gen_key).arg(entry_key);
            cmd
        };
        g.bench_function("raw_mget_entry_and_gen", |b| {
            b.iter(|| {
                rt.block_on(async {
                    pool.query::<(Option<Vec<u8>>, Option<Vec<u8>>)>("bench", &mget)
                        .await
                        .unwrap()
                })
            })
        });
        g.bench_function("cache_hit", |b| {
            b.iter(|| rt.block_on(fetch(app, "/items/1")))
        });
    }
    g.finish();

    let mut g = c.benchmark_group("redis_hit_vs_raw_get_64_tasks");
    if let Some((app, pool, raw_key, _)) = &redis {
        let cmd = std::sync::Arc::new({
            let mut cmd = redis::cmd("GET");
            cmd.arg(raw_key);
            cmd
        });
        g.bench_function("raw_get_same_bytes", |b| {
            b.iter_custom(|iters| {
                let (pool, cmd) = (pool.clone(), cmd.clone());
                concurrent(&rt, iters, move || {
                    let (pool, cmd) = (pool.clone(), cmd.clone());
                    async move {
                        pool.query::<Vec<u8>>("bench", &cmd).await.unwrap();
                    }
                })
            })
        });
        g.bench_function("cache_hit", |b| {
            b.iter_custom(|iters| {
                let app = app.clone();
                concurrent(&rt, iters, move || {
                    let app = app.clone();
                    async move {
                        fetch(&app, "/items/1").await;
                    }
                })
            })
        });
    }
    g.finish();

    let mut g = c.benchmark_group("hit_vs_upstream");
    g.bench_function("memory_hit", |b| {
        b.iter(|| rt.block_on(fetch(&memory, "/items/1")))
    });
    if let Some((app, ..)) = &redis {
        g.bench_function("redis_hit", |b| {
            b.iter(|| rt.block_on(fetch(app, "/items/1")))
        });
    }
    g.sample_size(20);
    g.bench_function("upstream_10ms", |b| {
        b.iter(|| rt.block_on(fetch(&memory, "/upstream")))
    });
    g.finish();

    if let Some((_, pool, raw_key, keys)) = &redis {
        rt.block_on(async {
            let mut del = redis::cmd("DEL");
            del.arg(raw_key).arg(keys);
            let _ = pool.query::<i64>("bench", &del).await;
        });
    }
}

criterion_group!(cache, benches);
criterion_main!(cache);
