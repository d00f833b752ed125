//! Rate-limit decision cost.
//!
//! - `memory/*`: palisade's in-memory layer against `tower_governor` 0.8 on the same
//!   quota (1 per µs, burst 10⁹: never limited during the run), both with headers
//!   on, both wrapping the same no-op service, polled once with a no-op waker (both
//!   complete synchronously), for one hot key and for 10 000 rotating client IPs.
//! - `redis/*` (feature `redis`, needs `PALISADE_TEST_REDIS_URL` or `redis-server`
//!   on PATH): 64 concurrent tasks deciding through palisade's layer against raw
//!   `EVALSHA` of the same script on the same Redis (one multiplexed connection);
//!   criterion reports the wall time per decision with 64 in flight (its inverse is
//!   the throughput), and a summary line prints decisions/s and p99 for both; plus
//!   the layer in hybrid mode (`lease = 100`: one round trip per 100 decisions of a
//!   key).
//! - before criterion: an interleaved, paired pass of the `memory` comparison
//!   ([`paired_memory`]), the figure to trust on a shared machine.

#![allow(missing_docs, clippy::unwrap_used)]

use std::convert::Infallible;
use std::future::Future;
use std::hint::black_box;
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::response::Response;
use criterion::{Criterion, criterion_group};
use http::Request;
use palisade::config::RateLimitConfig;
use palisade::rate_limit::RateLimitLayer;
use palisade::stack::BuildContext;
use tower::{Layer, Service};

fn noop_service() -> impl Service<
    axum::extract::Request,
    Response = Response,
    Error = Infallible,
    Future = std::future::Ready<Result<Response, Infallible>>,
> + Clone
+ Send
+ Sync
+ 'static {
    tower::service_fn(|_req: axum::extract::Request| {
        std::future::ready(Ok::<_, Infallible>(Response::new(Body::empty())))
    })
}

fn request(ip: u32) -> axum::extract::Request {
    let mut req = Request::get("/").body(Body::empty()).unwrap();
    req.extensions_mut()
        .insert(ConnectInfo(SocketAddr::from((ip.to_be_bytes(), 4000))));
    req
}

/// Polls a future that must be ready at once.
fn now<F: Future>(fut: F) -> F::Output {
    let mut fut = pin!(fut);
    match fut.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(out) => out,
        Poll::Pending => panic!("expected a synchronous decision"),
    }
}

fn palisade_layer(extra: &str) -> RateLimitLayer {
    let config: RateLimitConfig = toml::from_str(&format!(
        r#"
        {extra}
        [[policies]]
        name = "api"
        key = "ip"
        limit = 1000000
        period_s = 1
        burst = 1000000000
        "#
    ))
    .unwrap();
    RateLimitLayer::from_config(&config, &BuildContext::default())
        .unwrap()
        .before_auth
        .unwrap()
}

/// tower_governor on the same quota as [`palisade_layer`] (1 per µs, burst 10⁹), with
/// its headers on, around the same no-op service.
fn governor_service()
-> impl Service<axum::extract::Request, Response = Response, Error: std::fmt::Debug> {
    let config = tower_governor::governor::GovernorConfigBuilder::default()
        .per_nanosecond(1000)
        .burst_size(1_000_000_000)
        .use_headers()
        .finish()
        .unwrap();
    tower_governor::GovernorLayer::new(Arc::new(config)).layer(noop_service())
}

fn memory(c: &mut Criterion) {
    let mut group = c.benchmark_group("memory");
    for (name, keys) in [("one_key", 1u32), ("10k_keys", 10_000)] {
        let mut svc = palisade_layer("").layer(noop_service());
        let mut i = 0u32;
        group.bench_function(format!("palisade/{name}"), |b| {
            b.iter(|| {
                i = (i + 1) % keys;
                let res = now(svc.call(request(0x0a00_0000 + i))).unwrap();
                assert_eq!(res.status(), 200);
                black_box(res)
            })
        });

        let mut gov = governor_service();
        let mut i = 0u32;
        group.bench_function(format!("tower_governor/{name}"), |b| {
            b.iter(|| {
                i = (i + 1) % keys;
                let res = now(gov.call(request(0x0a00_0000 + i))).unwrap();
                assert_eq!(res.status(), 200);
                black_box(res)
            })
        });
    }
    group.finish();
}

#[cfg(feature = "redis")]
#[path = "../tests/support/mod.rs"]
mod support;

#[cfg(feature = "redis")]
mod redis_bench {
    use super::*;
    use std::time::{Duration, Instant};

    use super::support;

    const TASKS: u64 = 64;

    fn server() -> Option<support::RedisServer> {
        if std::env::var("PALISADE_TEST_REDIS_URL").is_err()
            && std::process::Command::new("redis-server")
                .arg("--version")
                .output()
                .is_err()
        {
            eprintln!(
                "redis benches skipped: set PALISADE_TEST_REDIS_URL or put redis-server on PATH"
            );
            return None;
        }
        Some(support::RedisServer::start())
    }

    /// Runs `per_task` decisions in each of 64 tasks; returns the wall time and
    /// every call's latency.
    fn run<F, Fut>(
        rt: &tokio::runtime::Runtime,
        per_task: u64,
        decide: F,
    ) -> (Duration, Vec<Duration>)
    where
        F: Fn(u64) -> Fut + Clone + Send + 'static,
        Fut: Future<Output = ()> + Send,
    {
        rt.block_on(async move {
            let start = Instant::now();
            let tasks: Vec<_> = (0..TASKS)
                .map(|t| {
                    let decide = decide.clone();
                    tokio::spawn(async move {
                        let mut lat = Vec::with_capacity(per_task as usize);
                        for _ in 0..per_task {
                            let s = Instant::now();
                            decide(t).await;
                            lat.push(s.elapsed());
                        }
                        lat
                    })
                })
                .collect();
            let mut all = Vec::new();
            for t in tasks {
                all.extend(t.await.unwrap());
            }
            (start.elapsed(), all)
        })
    }

    /// Interleaved rounds of every variant (rotating order; the VM's drift between
    /// one-after-the-other runs exceeds the differences measured): the median
    /// decisions/s and the p99 of each, and each variant's median ratio to the first
    /// (raw `EVALSHA`) within a round.
    /// One measured run: wall time and every call's latency.
    type Run<'a> = &'a dyn Fn() -> (Duration, Vec<Duration>);

    fn summary(variants: &[(&str, Run<'_>)]) {
        const ROUNDS: usize = 7;
        let mut rates = vec![Vec::new(); variants.len()];
        let mut p99s = vec![Vec::new(); variants.len()];
        for round in 0..ROUNDS {
            for k in 0..variants.len() {
                let v = (round + k) % variants.len();
                let (wall, mut lat) = (variants[v].1)();
                lat.sort_unstable();
                p99s[v].push(lat[lat.len() * 99 / 100]);
                rates[v].push(lat.len() as f64 / wall.as_secs_f64());
            }
        }
        println!("\nRedis, 64 tasks, {ROUNDS} interleaved rounds (median):");
        for (v, (name, _)) in variants.iter().enumerate() {
            let mut ratios: Vec<f64> = (0..ROUNDS).map(|r| rates[v][r] / rates[0][r]).collect();
            ratios.sort_by(f64::total_cmp);
            let mut r = rates[v].clone();
            r.sort_by(f64::total_cmp);
            p99s[v].sort_unstable();
            println!(
                "{name}: {:.0} decisions/s, p99 {:?}, {:.2} x raw EVALSHA",
                r[ROUNDS / 2],
                p99s[v][ROUNDS / 2],
                ratios[ROUNDS / 2]
            );
        }
    }

    pub(super) fn redis(c: &mut Criterion) {
        let Some(server) = server() else { return };
        let url = server.url().to_owned();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();

        // palisade: the layer over RedisPool (EVALSHA of GCRA_SCRIPT, one key), and
        // the same in hybrid mode (leases of 100 units).
        let layer_with = |extra: &str| {
            rt.block_on(async {
                let config: RateLimitConfig = toml::from_str(&format!(
                    r#"
                    backend = "redis"
                    {extra}
                    [[policies]]
                    name = "api"
                    limit = 1000000
                    period_s = 1
                    burst = 1000000000
                    "#
                ))
                .unwrap();
                let mut ctx = BuildContext::default();
                ctx.redis = Some(palisade::redis::RedisPool::from_url(&url).unwrap());
                RateLimitLayer::from_config(&config, &ctx)
                    .unwrap()
                    .before_auth
                    .unwrap()
            })
        };
        let layer = layer_with("");
        let leased = layer_with("lease = 100");
        let leased_svc = leased.layer(noop_service());
        let via_lease = move |t: u64| {
            let mut svc = leased_svc.clone();
            async move {
                let res = svc.call(request(0x0a00_0000 + t as u32)).await.unwrap();
                assert_eq!(res.status(), 200);
            }
        };
        let svc = layer.layer(noop_service());
        let via_layer = move |t: u64| {
            let mut svc = svc.clone();
            async move {
                let res = svc.call(request(0x0a00_0000 + t as u32)).await.unwrap();
                assert_eq!(res.status(), 200);
            }
        };

        // Raw: the same script, keys and arguments through one multiplexed connection.
        let conn = rt.block_on(async {
            redis::Client::open(url.as_str())
                .unwrap()
                .get_multiplexed_async_connection()
                .await
                .unwrap()
        });
        let script = Arc::new(redis::Script::new(palisade::rate_limit::REDIS_GCRA_SCRIPT));
        let raw = move |t: u64| {
            let mut conn = conn.clone();
            let script = script.clone();
            async move {
                let out: Vec<i64> = script
                    .key(format!("{{bench:{t}}}:api"))
                    .arg(1u64)
                    .arg(1_000_000_000u64)
                    .arg(1u64)
                    .arg(1u64)
                    .invoke_async(&mut conn)
                    .await
                    .unwrap();
                assert_eq!(out[0], 0);
            }
        };

        let mut group = c.benchmark_group("redis");
        group.sample_size(10);
        group.throughput(criterion::Throughput::Elements(1));
        group.bench_function("palisade_layer_64_tasks", |b| {
            b.iter_custom(|iters| {
                let per_task = iters.div_ceil(TASKS);
                let (wall, _) = run(&rt, per_task, via_layer.clone());
                wall.mul_f64(iters as f64 / (per_task * TASKS) as f64)
            })
        });
        group.bench_function("raw_evalsha_64_tasks", |b| {
            b.iter_custom(|iters| {
                let per_task = iters.div_ceil(TASKS);
                let (wall, _) = run(&rt, per_task, raw.clone());
                wall.mul_f64(iters as f64 / (per_task * TASKS) as f64)
            })
        });
        group.bench_function("palisade_lease_100_64_tasks", |b| {
            b.iter_custom(|iters| {
                let per_task = iters.div_ceil(TASKS);
                let (wall, _) = run(&rt, per_task, via_lease.clone());
                wall.mul_f64(iters as f64 / (per_task * TASKS) as f64)
            })
        });
        group.finish();
        summary(&[
            ("raw EVALSHA   ", &|| run(&rt, 500, raw.clone())),
            ("palisade layer", &|| run(&rt, 500, via_layer.clone())),
            ("lease = 100   ", &|| run(&rt, 500, via_lease.clone())),
        ]);
        drop(server);
    }
}

/// The same request through the bare no-op service: what every variant pays besides
/// its decision.
#[inline(never)]
fn one_bare<S>(svc: &mut S, ip: u32) -> Response
where
    S: Service<axum::extract::Request, Response = Response, Error = Infallible>,
{
    now(svc.call(request(ip))).unwrap()
}

/// One in-memory decision through palisade's layer (a symbol for callgrind).
#[inline(never)]
fn one_palisade<S>(svc: &mut S, ip: u32) -> Response
where
    S: Service<axum::extract::Request, Response = Response, Error = Infallible>,
{
    now(svc.call(request(ip))).unwrap()
}

/// One in-memory decision through tower_governor (a symbol for callgrind).
#[inline(never)]
fn one_governor<S>(svc: &mut S, ip: u32) -> Response
where
    S: Service<axum::extract::Request, Response = Response>,
    S::Error: std::fmt::Debug,
{
    now(svc.call(request(ip))).unwrap()
}

/// `RATE_LIMIT_CALLGRIND_ITERS=n`: no criterion, no Redis; `n` one-key decisions
/// through each layer, for deterministic instruction counts per request:
///
/// ```text
/// RATE_LIMIT_CALLGRIND_ITERS=100000 valgrind --tool=callgrind \
///   --toggle-collect='rate_limit::one_*' target/release/deps/rate_limit-<hash>
/// callgrind_annotate --inclusive=yes callgrind.out.<pid> | grep one_
/// ```
fn callgrind(iters: u32) {
    let mut svc = palisade_layer("").layer(noop_service());
    let mut gov = governor_service();
    for _ in 0..iters {
        assert_eq!(one_palisade(&mut svc, 0x0a00_0001).status(), 200);
        assert_eq!(one_governor(&mut gov, 0x0a00_0001).status(), 200);
    }
}

/// Interleaved, paired timing of the in-memory decision (`PAIRED_ROUNDS`, default 31;
/// `PAIRED_BATCH`, default 20 000; `PAIRED_ROUNDS=0` skips it). Criterion times one
/// variant after the other, and on a shared VM the background drifts by more than the
/// difference being measured; here each round times a batch of the bare no-op service,
/// one of palisade and one of tower_governor back to back (rotating which goes
/// first). A decision's cost is a layer's time minus the bare service's in the same
/// round (building the request and dropping the response are the same for all three
/// and are not the layer's cost); the ratio is palisade's over tower_governor's, as
/// the median over rounds and from each variant's fastest batch (noise on a shared
/// VM only ever adds time).
fn paired_memory() {
    let env = |k: &str, d: usize| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(d)
    };
    let (rounds, batch) = (env("PAIRED_ROUNDS", 31), env("PAIRED_BATCH", 20_000) as u32);
    if rounds == 0 {
        return;
    }
    println!(
        "\npaired timing, in-memory decision: {rounds} rounds x {batch} calls, rotating order"
    );
    println!(
        "| keys | bare ns | palisade Δ ns | tower_governor Δ ns | Δ ratio (median of rounds) | Δ ratio, fastest batches | whole-call ratio (median) |"
    );
    println!("|---|---|---|---|---|---|---|");
    for (name, keys) in [("one_key", 1u32), ("10k_keys", 10_000)] {
        let mut svc = palisade_layer("").layer(noop_service());
        let mut gov = governor_service();
        let mut bare = noop_service();
        let mut time = |which: usize| {
            let start = std::time::Instant::now();
            for i in 0..batch {
                let ip = 0x0a00_0000 + i % keys;
                match which {
                    0 => black_box(one_bare(&mut bare, ip)),
                    1 => black_box(one_palisade(&mut svc, ip)),
                    _ => black_box(one_governor(&mut gov, ip)),
                };
            }
            start.elapsed().as_nanos() as f64 / f64::from(batch)
        };
        // Warm both maps with every key.
        for which in 0..3 {
            time(which);
        }
        let mut t = [Vec::new(), Vec::new(), Vec::new()];
        for round in 0..rounds {
            for k in 0..3 {
                let which = (round + k) % 3;
                t[which].push(time(which));
            }
        }
        let median = |mut v: Vec<f64>| {
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        let min = |v: &[f64]| v.iter().copied().fold(f64::MAX, f64::min);
        let delta = |i: usize| -> Vec<f64> { (0..rounds).map(|r| t[i][r] - t[0][r]).collect() };
        let (dp, dg) = (delta(1), delta(2));
        let ratio = median((0..rounds).map(|r| dp[r] / dg[r]).collect());
        let fastest = (min(&t[1]) - min(&t[0])) / (min(&t[2]) - min(&t[0]));
        let whole = median((0..rounds).map(|r| t[1][r] / t[2][r]).collect());
        println!(
            "| {name} | {:.0} | {:.0} | {:.0} | {ratio:.2} | {fastest:.2} | {whole:.2} |",
            median(t[0].clone()),
            median(dp),
            median(dg),
        );
    }
    println!();
}

#[cfg(feature = "redis")]
criterion_group!(benches, memory, redis_bench::redis);
#[cfg(not(feature = "redis"))]
criterion_group!(benches, memory);

fn main() {
    if let Some(iters) = std::env::var("RATE_LIMIT_CALLGRIND_ITERS")
        .ok()
        .and_then(|n| n.parse().ok())
    {
        return callgrind(iters);
    }
    paired_memory();
    benches();
    Criterion::default().configure_from_args().final_summary();
}
