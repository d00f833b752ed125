//! Cache benches.
//!
//! * `redis_hit_vs_raw_get`: a full cache hit through the layer (Redis backend)
//!   against a raw `GET` of the same stored bytes through the same `RedisPool`.
//! * `redis_hit_vs_raw_get_64_tasks`: the same two, each driven by 64 concurrent
//!   tasks on the runtime (issue #8's throughput comparison: time per
//!   operation, so `raw / hit` is the hit rate as a fraction of the raw GET rate),
//!   and `handler_raw_get`: the same request to a router whose handler GETs the same
//!   bytes (a hand-written cache at its cheapest: the HTTP work on both sides), and
//!   `cache_hit_no_router`: the layer over the handler service itself, called as
//!   `benches/rate_limit.rs` calls the rate limiter (the backend through the layer,
//!   palisade's public API, without axum's router in front).
//! * `hit_vs_upstream`: a hit (memory and Redis) against a handler whose upstream
//!   call takes 10 ms.
//!
//! Before criterion, the 64-task comparison also runs as seven interleaved rounds
//! (`CACHE_PAIRED_ROUNDS=0` skips them) and prints the median ratios, with two more raw
//! `GET`s to compare against: through the pool without `auto_pipeline`, and through one
//! plain redis-rs `MultiplexedConnection` (issue #8's reference setup), plus the CPU time
//! each variant costs this process and Redis per operation.
//!
//! Redis: `PALISADE_BENCH_REDIS_URL` (default `redis://127.0.0.1:6379`); the Redis
//! benches are skipped with a note when it does not answer.
//!
//! The runtime has one worker (`CACHE_BENCH_WORKERS=n` for more), as in the setup of
//! issue #8's reference rates: a 1-worker runtime on one core and Redis on the other.
//! `bash benches/cache.sh` runs the 64-task comparison in that setup (a throwaway Redis
//! pinned to CPU 1, the bench under `taskset -c 0`); unpinned, the client and Redis share
//! both cores.
#![allow(clippy::unwrap_used, missing_docs)]

use std::convert::Infallible;
use std::future::Future;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::Request;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use criterion::{Criterion, criterion_group, criterion_main};
use http_body_util::BodyExt;
use palisade::cache::CacheLayer;
use palisade::config::{CacheBackend, CacheConfig, CacheRule, RedisConfig};
use palisade::redis::RedisPool;
use palisade::stack::BuildContext;
use tower::{Layer, Service, ServiceExt};

/// The cached response body: 1 KiB, the size of issue #8's reference `GET` rate (a
/// fixed size, so the comparison does not drift with whatever file it was cut from).
const BODY: &str = {
    const TEXT: &str = include_str!("../Cargo.toml");
    match TEXT.split_at_checked(1024) {
        Some((body, _)) => body,
        None => panic!("Cargo.toml is shorter than 1 KiB"),
    }
};

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

/// What `/items/{id}` answers, as a plain service (no router).
async fn items(_: Request) -> Result<Response, Infallible> {
    Ok(BODY.into_response())
}

/// The cache layer straight over the handler service.
fn layer_over_handler(layer: CacheLayer) -> impl HttpService {
    layer.layer(tower::service_fn(items))
}

/// A router, or a layer over a service: anything a bench can send requests to.
trait HttpService:
    Service<Request, Response = Response, Error = Infallible, Future: Send>
    + Clone
    + Send
    + Sync
    + 'static
{
}

impl<S> HttpService for S where
    S: Service<Request, Response = Response, Error = Infallible, Future: Send>
        + Clone
        + Send
        + Sync
        + 'static
{
}

async fn fetch(app: &impl HttpService, uri: &str) -> usize {
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
fn fetches(rt: &tokio::runtime::Runtime, n: u64, router: &impl HttpService) -> Duration {
    let router = router.clone();
    concurrent(rt, n, move || {
        let router = router.clone();
        async move {
            fetch(&router, "/items/1").await;
        }
    })
}

/// `n` raw `GET`s by 64 tasks over one plain redis-rs `MultiplexedConnection`
/// (issue #8's reference setup for the raw `GET` rate); the elapsed time.
fn gets_multiplexed(
    rt: &tokio::runtime::Runtime,
    n: u64,
    conn: &redis::aio::MultiplexedConnection,
    cmd: &std::sync::Arc<redis::Cmd>,
) -> Duration {
    let (conn, cmd) = (conn.clone(), cmd.clone());
    concurrent(rt, n, move || {
        let (mut conn, cmd) = (conn.clone(), cmd.clone());
        async move {
            cmd.query_async::<Vec<u8>>(&mut conn).await.unwrap();
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
/// raw `GET`, the hand-written handler, the cache hit (through a router, and through
/// the layer alone) and the raw `GET` through a pool without `auto_pipeline`: the
/// median rate of each and the median, within a round, of the hits' rates over the
/// others. Criterion runs
/// one variant after the other, and this VM's drift between such runs is larger than
/// the differences measured.
fn paired_64_tasks(
    rt: &tokio::runtime::Runtime,
    pool: &RedisPool,
    cmd: &std::sync::Arc<redis::Cmd>,
    by_hand: &Router,
    app: &Router,
    no_router: &impl HttpService,
) {
    const ROUNDS: usize = 7;
    const OPS: u64 = 64_000;
    // The same GET through a pool without `auto_pipeline`: redis-rs writing each
    // command as it comes.
    let plain = RedisPool::from_config(&RedisConfig::single(redis_url()).with_auto_pipeline(false))
        .unwrap()
        .unwrap();
    // And through redis-rs alone: one `MultiplexedConnection` shared by the 64 tasks.
    let multiplexed = reference_connection(rt);
    let variants: [(&str, &dyn Fn() -> Duration); 6] = [
        ("raw GET", &|| gets(rt, OPS, pool, cmd)),
        ("handler doing the raw GET", &|| fetches(rt, OPS, by_hand)),
        ("cache hit through a router", &|| fetches(rt, OPS, app)),
        ("raw GET, auto_pipeline = false", &|| {
            gets(rt, OPS, &plain, cmd)
        }),
        ("cache hit, the layer over the handler", &|| {
            fetches(rt, OPS, no_router)
        }),
        ("raw GET, one redis-rs MultiplexedConnection", &|| {
            gets_multiplexed(rt, OPS, &multiplexed, cmd)
        }),
    ];
    let mut rates = vec![Vec::new(); variants.len()];
    // CPU seconds of this process and of the Redis server, per variant.
    let mut cpu = vec![(0.0, 0.0); variants.len()];
    for round in 0..ROUNDS {
        for k in 0..variants.len() {
            let v = (round + k) % variants.len();
            let before = (process_cpu_s(), redis_cpu_s(rt, pool));
            rates[v].push(OPS as f64 / (variants[v].1)().as_secs_f64());
            cpu[v].0 += process_cpu_s() - before.0;
            cpu[v].1 += redis_cpu_s(rt, pool) - before.1;
        }
    }
    let median = |mut xs: Vec<f64>| {
        xs.sort_by(f64::total_cmp);
        xs[xs.len() / 2]
    };
    println!("\nRedis, 64 tasks, {ROUNDS} interleaved rounds of {OPS} (median):");
    let per_op = |s: f64| s * 1e6 / (OPS as f64 * ROUNDS as f64);
    for (v, (name, _)) in variants.iter().enumerate() {
        println!(
            "{name}: {:.0}/s, CPU µs an operation: this process {:.1}, Redis {:.1}",
            median(rates[v].clone()),
            per_op(cpu[v].0),
            per_op(cpu[v].1)
        );
    }
    let ratio =
        |hit: usize, of: usize| median((0..ROUNDS).map(|r| rates[hit][r] / rates[of][r]).collect());
    for (hit, name) in [(4, "the layer over the handler"), (2, "through a router")] {
        println!(
            "cache hit rate, {name}: {:.2} x raw GET (pool), {:.2} x raw GET (pool without \
             auto_pipeline), {:.2} x raw GET (one MultiplexedConnection), {:.2} x the handler \
             doing the raw GET",
            ratio(hit, 0),
            ratio(hit, 3),
            ratio(hit, 5),
            ratio(hit, 1),
        );
    }
}

/// CPU time (user + system) of this process so far, from `/proc/self/stat` (clock
/// ticks of 10 ms: enough over a variant's 64 000 operations); 0 elsewhere.
fn process_cpu_s() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    // Fields 14 and 15 (utime, stime), counted after the parenthesized command name.
    let after_name = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let ticks: u64 = after_name
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|f| f.parse::<u64>().ok())
        .sum();
    ticks as f64 / 100.0
}

/// CPU time (user + system) the Redis server reports for itself (`INFO cpu`).
fn redis_cpu_s(rt: &tokio::runtime::Runtime, pool: &RedisPool) -> f64 {
    let info: String = rt
        .block_on(pool.query("bench", redis::cmd("INFO").arg("cpu")))
        .unwrap_or_default();
    info.lines()
        .filter_map(|l| {
            l.strip_prefix("used_cpu_user:")
                .or_else(|| l.strip_prefix("used_cpu_sys:"))
        })
        .filter_map(|v| v.trim().parse::<f64>().ok())
        .sum()
}

/// `PALISADE_BENCH_REDIS_URL`, or the local default.
fn redis_url() -> String {
    std::env::var("PALISADE_BENCH_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// Issue #8's reference client for the raw `GET` rate: one plain redis-rs
/// `MultiplexedConnection` (no palisade code on the path), shared by the 64 tasks.
fn reference_connection(rt: &tokio::runtime::Runtime) -> redis::aio::MultiplexedConnection {
    rt.block_on(
        redis::Client::open(redis_url())
            .unwrap()
            .get_multiplexed_async_connection(),
    )
    .unwrap()
}

fn redis_pool(rt: &tokio::runtime::Runtime) -> Option<RedisPool> {
    let url = redis_url();
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
    // One worker by default: the setup of issue #8's reference rates (a 1-worker
    // runtime; `benches/rate_limit.rs` uses the same). `CACHE_BENCH_WORKERS=2`: two.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(
            std::env::var("CACHE_BENCH_WORKERS")
                .ok()
                .and_then(|n| n.parse().ok())
                .unwrap_or(1),
        )
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
            let no_router = layer_over_handler(layer.clone());
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
            (app, pool, raw_key, keys, no_router)
        })
    });

    // `CACHE_CALLGRIND_ITERS=n CACHE_ONLY=<variant>`: n sequential operations of one
    // variant, no timing. Run it twice under `valgrind --tool=callgrind` (say 2 000 and
    // 6 000) and divide the difference of the totals by 4 000: the client's
    // instructions per operation, all threads included (the connection's driver task
    // runs on the runtime too). Variants: `raw_get`, `raw_mget`, `cache_hit`,
    // `bare_router` (the same request to a router without the layer: the HTTP part of
    // a hit that is no cache work), `cache_hit_no_router` (the layer over the handler),
    // `bare_service` (the handler service alone: the request and response objects).
    if let (Some(iters), Some((app, pool, raw_key, keys, no_router))) = (
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
        // `CACHE_CALLGRIND_TASKS=64`: the same operations by 64 concurrent tasks, as in
        // the timed pass (calls then share auto-pipelined batches); `raw_get`,
        // `reference_get` (one plain redis-rs `MultiplexedConnection`, the timed pass's
        // reference), `cache_hit` and `cache_hit_no_router` only.
        if std::env::var("CACHE_CALLGRIND_TASKS").as_deref() == Ok("64") {
            let get_cmd = std::sync::Arc::new(get_cmd);
            match only.as_str() {
                "raw_get" => gets(&rt, u64::from(iters), pool, &get_cmd),
                "reference_get" => {
                    let conn = reference_connection(&rt);
                    gets_multiplexed(&rt, u64::from(iters), &conn, &get_cmd)
                }
                "cache_hit" => fetches(&rt, u64::from(iters), app),
                "cache_hit_no_router" => fetches(&rt, u64::from(iters), no_router),
                other => panic!("CACHE_CALLGRIND_TASKS=64 does not run CACHE_ONLY={other:?}"),
            };
            return;
        }
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
                    "bare_service" => {
                        let service = tower::service_fn(items);
                        std::hint::black_box(fetch(&service, "/items/1").await);
                    }
                    "cache_hit_no_router" => {
                        std::hint::black_box(fetch(no_router, "/items/1").await);
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
    if let Some((app, pool, raw_key, keys, _)) = &redis {
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
    if let Some((app, pool, raw_key, _, no_router)) = &redis {
        let cmd = std::sync::Arc::new({
            let mut cmd = redis::cmd("GET");
            cmd.arg(raw_key);
            cmd
        });
        let by_hand = handler_raw_get(pool, &cmd);
        if std::env::var("CACHE_PAIRED_ROUNDS").as_deref() != Ok("0") {
            paired_64_tasks(&rt, pool, &cmd, &by_hand, app, no_router);
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
        g.bench_function("cache_hit_no_router", |b| {
            b.iter_custom(|iters| fetches(&rt, iters, no_router))
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

    if let Some((_, pool, raw_key, keys, _)) = &redis {
        rt.block_on(async {
            let mut del = redis::cmd("DEL");
            del.arg(raw_key).arg(keys);
            let _ = pool.query::<i64>("bench", &del).await;
        });
    }
}

criterion_group!(cache, benches);
criterion_main!(cache);
