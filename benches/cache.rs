//! Cache benches.
//!
//! * `redis_hit_vs_raw_get`: a full cache hit through the layer (Redis backend)
//!   against a raw `GET` of the same stored bytes through the same `RedisPool`.
//! * `redis_hit_vs_raw_get_64_tasks`: the same two, each driven by 64 concurrent
//!   tasks on the 2-worker runtime (issue #8's throughput comparison: time per
//!   operation, so `raw / hit` is the hit rate as a fraction of the raw GET rate),
//!   and `handler_raw_get`: the same request to a router whose handler GETs the same
//!   bytes (a hand-written cache at its cheapest: the HTTP work on both sides).
//! * `hit_vs_upstream`: a hit (memory and Redis) against a handler whose upstream
//!   call takes 10 ms.
//!
//! Before criterion, the 64-task comparison also runs as seven interleaved rounds
//! (`CACHE_PAIRED_ROUNDS=0` skips them) and prints the median ratios.
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

/// `n` raw `GET`s by 64 tasks; the elapsed time.
fn gets(
    rt: &tokio::runtime::Runtime,
    n: u64,
    pool: &RedisPool,
    cmd: &std::sync::Arc<redis::Cmd>,
) -> Duration {
    let (pool, cmd) = (pool.clone(), cmd.clone());
    concurrent(rt, n, move || {
        let (pool, cmd) = (pool.clone(), cmd.clone());
        async move {
            pool.query::<Vec<u8>>("bench", &cmd).await.unwrap();
        }
    })
}

/// `n` requests for `/items/1` by 64 tasks; the elapsed time.
fn fetches(rt: &tokio::runtime::Runtime, n: u64, router: &Router) -> Duration {
    let router = router.clone();
    concurrent(rt, n, move || {
        let router = router.clone();
        async move {
            fetch(&router, "/items/1").await;
        }
    })
}

/// What a hand-written cache costs at the least: a handler that GETs the same bytes
/// and returns them, through the same kind of router (the request and response that
/// a hit also builds are then on both sides).
fn handler_raw_get(pool: &RedisPool, cmd: &std::sync::Arc<redis::Cmd>) -> Router {
    let (pool, cmd) = (pool.clone(), cmd.clone());
    Router::new().route(
        "/items/{id}",
        get(move || {
            let (pool, cmd) = (pool.clone(), cmd.clone());
            async move { pool.query::<Vec<u8>>("bench", &cmd).await.unwrap() }
        }),
    )
}

/// Seven interleaved rounds (rotating order) of 64 000 operations by 64 tasks for the
/// raw `GET`, the hand-written handler, the cache hit and the raw `GET` through a
/// pool without `auto_pipeline`: the median rate of each and the median, within a
/// round, of the hit's rate over the others. Criterion runs
/// one variant after the other, and this VM's drift between such runs is larger than
/// the differences measured.
fn paired_64_tasks(
    rt: &tokio::runtime::Runtime,
    pool: &RedisPool,
    cmd: &std::sync::Arc<redis::Cmd>,
    by_hand: &Router,
    app: &Router,
) {
    const ROUNDS: usize = 7;
    const OPS: u64 = 64_000;
    // The same GET through a pool without `auto_pipeline`: redis-rs writing each
    // command as it comes.
    let plain = RedisPool::from_config(
        &RedisConfig::single(
            std::env::var("PALISADE_BENCH_REDIS_URL")
                .unwrap_or_else(|_| "redis://127.0.0.1:6379".into()),
        )
        .with_auto_pipeline(false),
    )
    .unwrap()
    .unwrap();
    let variants: [(&str, &dyn Fn() -> Duration); 4] = [
        ("raw GET", &|| gets(rt, OPS, pool, cmd)),
        ("handler doing the raw GET", &|| fetches(rt, OPS, by_hand)),
        ("cache hit through the layer", &|| fetches(rt, OPS, app)),
        ("raw GET, auto_pipeline = false", &|| {
            gets(rt, OPS, &plain, cmd)
        }),
    ];
    let mut rates = vec![Vec::new(); variants.len()];
    for round in 0..ROUNDS {
        for k in 0..variants.len() {
            let v = (round + k) % variants.len();
            rates[v].push(OPS as f64 / (variants[v].1)().as_secs_f64());
        }
    }
    let median = |mut xs: Vec<f64>| {
        xs.sort_by(f64::total_cmp);
        xs[xs.len() / 2]
    };
    println!("\nRedis, 64 tasks, {ROUNDS} interleaved rounds of {OPS} (median):");
    for (v, (name, _)) in variants.iter().enumerate() {
        println!("{name}: {:.0}/s", median(rates[v].clone()));
    }
    let ratio = |of: usize| median((0..ROUNDS).map(|r| rates[2][r] / rates[of][r]).collect());
    println!(
        "cache hit rate: {:.2} x raw GET, {:.2} x the handler doing the raw GET, \
         {:.2} x raw GET without auto_pipeline",
        ratio(0),
        ratio(1),
        ratio(3)
    );
}

fn redis_pool(rt: &tokio::runtime::Runtime) -> Option<RedisPool> {
    let url = std::env::var("PALISADE_BENCH_REDIS_URL")
        .unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    // `CACHE_BENCH_AUTO_PIPELINE=false`: the layer's pool without auto-pipelining.
    let auto = std::env::var("CACHE_BENCH_AUTO_PIPELINE").as_deref() != Ok("false");
    let pool = RedisPool::from_config(&RedisConfig::single(url.clone()).with_auto_pipeline(auto))
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

    // `CACHE_CALLGRIND_ITERS=n CACHE_ONLY=<variant>`: n sequential operations of one
    // variant, no timing. Run it twice under `valgrind --tool=callgrind` (say 2 000 and
    // 6 000) and divide the difference of the totals by 4 000: the client's
    // instructions per operation, all threads included (the connection's driver task
    // runs on the runtime too). Variants: `raw_get`, `raw_mget`, `cache_hit`,
    // `bare_router` (the same request to a router without the layer: the HTTP part of
    // a hit that is no cache work).
    if let (Some(iters), Some((app, pool, raw_key, keys))) = (
        std::env::var("CACHE_CALLGRIND_ITERS")
            .ok()
            .and_then(|n| n.parse::<u32>().ok()),
        &redis,
    ) {
        let only = std::env::var("CACHE_ONLY").unwrap_or_default();
        let bare = Router::new().route("/items/{id}", get(|| async { BODY }));
        let mut get_cmd = redis::cmd("GET");
        get_cmd.arg(raw_key);
        let entry_key = keys.iter().find(|k| !k.ends_with(":gen")).unwrap();
        let gen_key = format!("{}:gen", entry_key.rsplit_once(':').unwrap().0);
        let mut mget = redis::cmd("MGET");
        mget.arg(&gen_key).arg(entry_key);
        rt.block_on(async {
            for _ in 0..iters {
                match only.as_str() {
                    "raw_get" => {
                        std::hint::black_box(
                            pool.query::<Vec<u8>>("bench", &get_cmd).await.unwrap(),
                        );
                    }
                    "raw_mget" => {
                        std::hint::black_box(
                            pool.query::<(Option<Vec<u8>>, Option<Vec<u8>>)>("bench", &mget)
                                .await
                                .unwrap(),
                        );
                    }
                    "bare_router" => {
                        std::hint::black_box(fetch(&bare, "/items/1").await);
                    }
                    _ => {
                        std::hint::black_box(fetch(app, "/items/1").await);
                    }
                }
            }
        });
        return;
    }

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
        let by_hand = handler_raw_get(pool, &cmd);
        if std::env::var("CACHE_PAIRED_ROUNDS").as_deref() != Ok("0") {
            paired_64_tasks(&rt, pool, &cmd, &by_hand, app);
        }
        g.bench_function("raw_get_same_bytes", |b| {
            b.iter_custom(|iters| gets(&rt, iters, pool, &cmd))
        });
        g.bench_function("handler_raw_get", |b| {
            b.iter_custom(|iters| fetches(&rt, iters, &by_hand))
        });
        g.bench_function("cache_hit", |b| {
            b.iter_custom(|iters| fetches(&rt, iters, app))
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
