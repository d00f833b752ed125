#![allow(missing_docs)]
//! The overhead report: bare axum, each palisade layer, the full palisade stack, and the
//! crates palisade replaces doing the same jobs — all in one run, so the ratios compare
//! like with like on whatever machine runs them.
//!
//! ```text
//! cargo bench --bench stack            # criterion timings (ns per request)
//! python3 benches/report.py            # ratios table from target/criterion, for BENCHMARKS.md
//! ```
//!
//! Every variant is an axum `Router` finalized with `.with_state(())` (so routes are
//! built once, as `axum::serve` does) and called in-process with `oneshot` on a
//! current-thread runtime; the response body is drained so end-of-stream hooks run.
//! Allocations per request are counted in a separate, untimed pass and printed.

use std::alloc::System;
use std::net::SocketAddr;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::routing::get;
use criterion::{Criterion, criterion_group, criterion_main};
use http::{HeaderName, HeaderValue, Request};
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};
use tower::{ServiceBuilder, ServiceExt};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

const API_KEY: &str = "bench-key-0123456789abcdef";

fn request() -> Request<Body> {
    let mut req = Request::get("/hello")
        .header("host", "localhost")
        .header("user-agent", "bench/1.0")
        .header("x-api-key", API_KEY)
        .body(Body::empty())
        .expect("valid request");
    req.extensions_mut()
        .insert(ConnectInfo(SocketAddr::from(([127, 0, 0, 1], 40000))));
    req
}

fn hello_routes() -> Router {
    Router::new().route("/hello", get(|| async { "hello" }))
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

async fn call(router: &Router) {
    let res = router.clone().oneshot(request()).await.expect("infallible");
    assert!(
        res.status().is_success(),
        "bench request failed: {}",
        res.status()
    );
    let _ = axum::body::to_bytes(res.into_body(), usize::MAX).await;
}

/// Bytes of log output formatted so far (the sink counts what it is given), so the
/// allocation pass can show that every logging variant really formats its lines with
/// this subscriber.
static LOG_BYTES: AtomicU64 = AtomicU64::new(0);

struct CountingSink;

impl std::io::Write for CountingSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        LOG_BYTES.fetch_add(buf.len() as u64, Ordering::Relaxed);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// JSON log lines to a sink, at INFO, for every variant that logs (all formatting
/// happens, no IO), installed once for the whole run. palisade's access log and the
/// anchor's TraceLayer both go through this one subscriber.
fn install_subscriber() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        let subscriber = tracing_subscriber::fmt()
            .json()
            .with_writer(|| CountingSink)
            .with_env_filter(tracing_subscriber::EnvFilter::new("info"))
            .finish();
        tracing::subscriber::set_global_default(subscriber).expect("one subscriber per process");
    });
}

/// Variants named `…@telemetry` log through palisade's recommended subscriber instead
/// (`palisade::telemetry::json_subscriber`, what `telemetry::init` installs: JSON lines
/// at INFO, to the same counting sink), set as the thread's default around each batch.
/// The anchors keep theirs (`fmt().json()`), so the issue's ratio compares each side's
/// own setup; the plain names compare both through the one `fmt().json()` subscriber.
/// `…@registry` keeps the filter and span registry and drops the formatting layer.
fn dispatch_for(name: &str) -> Option<tracing::dispatcher::DefaultGuard> {
    static TELEMETRY: OnceLock<tracing::Dispatch> = OnceLock::new();
    static REGISTRY: OnceLock<tracing::Dispatch> = OnceLock::new();
    if name.ends_with("@registry") {
        // The floor under any `tracing`-based access log: the same filter and span
        // registry as `@telemetry`, every span and event built and dispatched, no
        // formatting layer (nothing written).
        let dispatch = REGISTRY.get_or_init(|| {
            use tracing_subscriber::layer::SubscriberExt;
            tracing::Dispatch::new(
                tracing_subscriber::registry().with(
                    palisade::telemetry::filter(&palisade::config::LoggingConfig::default())
                        .expect("default logging config is valid"),
                ),
            )
        });
        return Some(tracing::dispatcher::set_default(dispatch));
    }
    name.ends_with("@telemetry").then(|| {
        let dispatch = TELEMETRY.get_or_init(|| {
            let config = palisade::config::LoggingConfig::default();
            let subscriber = palisade::telemetry::json_subscriber(&config, || CountingSink)
                .expect("default logging config is valid");
            tracing::Dispatch::new(subscriber)
        });
        tracing::dispatcher::set_default(dispatch)
    })
}

// ---------------------------------------------------------------- anchors

fn anchor_governor() -> Router {
    use tower_governor::GovernorLayer;
    use tower_governor::governor::GovernorConfigBuilder;
    let config = GovernorConfigBuilder::default()
        .per_nanosecond(1)
        .burst_size(1_000_000)
        .use_headers()
        .finish()
        .expect("governor config");
    hello_routes().layer(GovernorLayer::new(config))
}

fn prometheus_layer() -> axum_prometheus::PrometheusMetricLayer<'static> {
    static PAIR: OnceLock<()> = OnceLock::new();
    // `pair()` installs the global recorder and panics when called twice.
    PAIR.get_or_init(|| {
        let _ = axum_prometheus::PrometheusMetricLayer::pair();
    });
    axum_prometheus::PrometheusMetricLayer::new()
}

fn anchor_prometheus() -> Router {
    hello_routes().layer(prometheus_layer())
}

fn anchor_trace() -> Router {
    use tower_http::trace::{DefaultMakeSpan, DefaultOnResponse, TraceLayer};
    hello_routes().layer(
        TraceLayer::new_for_http()
            .make_span_with(DefaultMakeSpan::new().level(tracing::Level::INFO))
            .on_response(DefaultOnResponse::new().level(tracing::Level::INFO)),
    )
}

const HEADERS8: [(&str, &str); 8] = [
    (
        "strict-transport-security",
        "max-age=31536000; includeSubDomains",
    ),
    ("x-frame-options", "DENY"),
    ("x-content-type-options", "nosniff"),
    ("referrer-policy", "no-referrer"),
    (
        "content-security-policy",
        "default-src 'none'; frame-ancestors 'none'",
    ),
    ("cross-origin-opener-policy", "same-origin"),
    ("cross-origin-resource-policy", "same-origin"),
    ("permissions-policy", "geolocation=()"),
];

fn set_header(i: usize) -> tower_http::set_header::SetResponseHeaderLayer<HeaderValue> {
    tower_http::set_header::SetResponseHeaderLayer::overriding(
        HeaderName::from_static(HEADERS8[i].0),
        HeaderValue::from_static(HEADERS8[i].1),
    )
}

fn anchor_headers() -> Router {
    hello_routes().layer(
        ServiceBuilder::new()
            .layer(set_header(0))
            .layer(set_header(1))
            .layer(set_header(2))
            .layer(set_header(3))
            .layer(set_header(4))
            .layer(set_header(5))
            .layer(set_header(6))
            .layer(set_header(7)),
    )
}

fn anchor_all() -> Router {
    use tower_governor::GovernorLayer;
    use tower_governor::governor::GovernorConfigBuilder;
    use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
    use tower_http::trace::{DefaultOnResponse, TraceLayer};
    let governor = GovernorConfigBuilder::default()
        .per_nanosecond(1)
        .burst_size(1_000_000)
        .use_headers()
        .finish()
        .expect("governor config");
    let x_request_id = HeaderName::from_static("x-request-id");
    hello_routes().layer(
        ServiceBuilder::new()
            .layer(SetRequestIdLayer::new(x_request_id.clone(), MakeRequestUuid))
            .layer(
                TraceLayer::new_for_http()
                    .make_span_with(|req: &http::Request<Body>| {
                        let id = req
                            .headers()
                            .get("x-request-id")
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("");
                        tracing::info_span!("request", method = %req.method(), uri = %req.uri(), request_id = %id)
                    })
                    .on_response(DefaultOnResponse::new().level(tracing::Level::INFO)),
            )
            .layer(PropagateRequestIdLayer::new(x_request_id))
            .layer(set_header(0))
            .layer(set_header(1))
            .layer(set_header(2))
            .layer(set_header(3))
            .layer(set_header(4))
            .layer(set_header(5))
            .layer(set_header(6))
            .layer(set_header(7))
            .layer(prometheus_layer())
            .layer(GovernorLayer::new(governor)),
    )
}

// ---------------------------------------------------------------- palisade

/// The full stack the issue's target names: request id, JSON access log, metrics, the
/// `api` header set, host/HTTPS check, one in-memory rate-limit policy with headers,
/// API-key auth.
const FULL: &str = include_str!("stack-full.toml");

/// Every layer that is on by default, switched off: what each single-layer variant
/// starts from (the client-identity layer always runs; it is measured as `palisade/none`).
const OFF: &str = r#"
[logging]
access_log = false
request_id = false
[metrics]
enabled = false
[security_headers]
profile = "off"
"#;

/// One layer on, everything else off (`section` replaces that section of [`OFF`]).
fn only(section: &str, body: &str) -> String {
    let mut out = String::new();
    let mut skip = false;
    for line in OFF.lines() {
        if line.starts_with('[') {
            skip = line == format!("[{section}]");
        }
        if !skip {
            out.push_str(line);
            out.push('\n');
        }
    }
    out.push_str(&format!("[{section}]\n{body}\n"));
    out
}

fn palisade_variants() -> Vec<(&'static str, String)> {
    vec![
        ("palisade/none", OFF.to_owned()),
        (
            "palisade/rate_limit",
            format!(
                "{OFF}\n[rate_limit]\nheaders = \"ietf\"\n[[rate_limit.policies]]\nname = \"per-ip\"\nkey = \"ip\"\nlimit = 1000000\nperiod_s = 1\nburst = 1000000\n"
            ),
        ),
        ("palisade/metrics", only("metrics", "enabled = true")),
        (
            "palisade/access_log",
            only("logging", "access_log = true\nrequest_id = false"),
        ),
        (
            "palisade/access_log+request_id",
            only("logging", "access_log = true\nrequest_id = true"),
        ),
        (
            "palisade/request_id",
            only("logging", "access_log = false\nrequest_id = true"),
        ),
        (
            "palisade/security_headers",
            only("security_headers", "profile = \"api\""),
        ),
        (
            "palisade/https_host",
            format!("{OFF}\n[https]\nredirect = false\nallowed_hosts = [\"localhost\"]\n"),
        ),
        (
            "palisade/api_key",
            format!(
                "{OFF}\n[[auth.api_keys]]\nid = \"bench\"\nsha256 = \"95ab1ab43a1c769ff93ba02eec3f4f81c077398c1691a00ae8628abd43901779\"\n[[auth.rules]]\npaths = [\"/hello\"]\nrequire = \"api_key\"\n"
            ),
        ),
        (
            "palisade/access_log@telemetry",
            only("logging", "access_log = true\nrequest_id = false"),
        ),
        (
            "palisade/access_log+request_id@telemetry",
            only("logging", "access_log = true\nrequest_id = true"),
        ),
        ("palisade/full", FULL.to_owned()),
        ("palisade/full@telemetry", FULL.to_owned()),
        ("palisade/full@registry", FULL.to_owned()),
        (
            "palisade/full-nolog",
            FULL.replace("access_log = true", "access_log = false"),
        ),
    ]
}

fn palisade_router(rt: &tokio::runtime::Runtime, toml: &str) -> Router {
    let config = palisade::Config::from_toml_str(toml).expect("bench config parses");
    let stack = rt
        .block_on(palisade::Palisade::from_config(config))
        .expect("bench config is valid");
    hello_routes().layer(stack.layer())
}

/// Each layer on its own, without the `Palisade` stack around it, as a user who replaces
/// one of the anchor crates applies it (the rate limiter reads the peer address, as
/// tower_governor's default key does): the like-for-like comparison with that crate's
/// layer. The `palisade/…` variant of the same layer runs it inside the stack, whose
/// fixed cost (`palisade/none`) it includes.
fn layer_variants() -> Vec<(&'static str, Router)> {
    use palisade::stack::BuildContext;
    let ctx = BuildContext::default();
    let config = |name: &str| {
        let toml = palisade_variants()
            .into_iter()
            .find(|(n, _)| *n == name)
            .map(|(_, t)| t)
            .expect("a palisade variant of that name");
        palisade::Config::from_toml_str(&toml).expect("bench config parses")
    };
    let rate_limit = palisade::rate_limit::RateLimitLayer::from_config(
        &config("palisade/rate_limit").rate_limit,
        &ctx,
    )
    .expect("valid rate-limit config")
    .before_auth
    .expect("an ip policy runs before auth");
    let metrics =
        palisade::metrics::MetricsLayer::from_config(&config("palisade/metrics").metrics, &ctx)
            .expect("valid metrics config")
            .expect("metrics on");
    let headers = palisade::security_headers::SecurityHeadersLayer::from_config(
        &config("palisade/security_headers").security_headers,
        &ctx,
    )
    .expect("valid header config")
    .expect("headers on");
    let log = palisade::trace::TraceLayer::from_config(
        &config("palisade/access_log@telemetry").logging,
        &ctx,
    )
    .expect("valid logging config")
    .expect("access log on");
    vec![
        ("layer/rate_limit", hello_routes().layer(rate_limit)),
        ("layer/metrics", hello_routes().layer(metrics)),
        ("layer/security_headers", hello_routes().layer(headers)),
        ("layer/access_log@telemetry", hello_routes().layer(log)),
    ]
}

// ---------------------------------------------------------------- harness

fn variants(rt: &tokio::runtime::Runtime) -> Vec<(&'static str, Router)> {
    // axum-prometheus spawns its upkeep task when its recorder is installed.
    let guard = rt.enter();
    let mut v = vec![
        ("bare", hello_routes()),
        ("anchor/tower_governor", anchor_governor()),
        ("anchor/axum_prometheus", anchor_prometheus()),
        ("anchor/trace_json", anchor_trace()),
        ("anchor/set_response_header_x8", anchor_headers()),
        ("anchor/all", anchor_all()),
    ];
    drop(guard);
    for (name, toml) in palisade_variants() {
        v.push((name, palisade_router(rt, &toml)));
    }
    let guard = rt.enter();
    v.extend(layer_variants());
    drop(guard);
    // `BENCH_ONLY=palisade/full,bare` restricts the run (profiling, quick A/B).
    if let Ok(only) = std::env::var("BENCH_ONLY") {
        let keep: Vec<&str> = only.split(',').collect();
        v.retain(|(name, _)| keep.contains(name));
    }
    v
}

fn bench(c: &mut Criterion) {
    install_subscriber();
    let rt = runtime();
    let variants: Vec<(&str, Router)> = variants(&rt)
        .into_iter()
        .map(|(name, r)| (name, r.with_state(())))
        .collect();

    // `BENCH_PROFILE=N`: only N requests per variant through `profile_batch`, nothing
    // else; for `valgrind --tool=callgrind --toggle-collect='*profile_batch*'`.
    if let Some(n) = std::env::var("BENCH_PROFILE")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
    {
        for (name, router) in &variants {
            let _dispatch = dispatch_for(name);
            rt.block_on(call(router)); // warm-up: lazily built state is not per-request
            profile_batch(&rt, router, n);
            println!("profiled {name}: {n} requests");
        }
        return;
    }

    // Untimed pass: allocations per request.
    println!("\nallocations and log bytes per request (1000 requests after 1000 warm-up):");
    for (name, router) in &variants {
        let _dispatch = dispatch_for(name);
        rt.block_on(async {
            for _ in 0..1000 {
                call(router).await;
            }
            let logged = LOG_BYTES.load(Ordering::Relaxed);
            let region = Region::new(GLOBAL);
            for _ in 0..1000 {
                call(router).await;
            }
            let stats = region.change();
            let logged = LOG_BYTES.load(Ordering::Relaxed) - logged;
            println!(
                "  {name:32} {:6.1} allocs/req {:8.0} bytes/req {:6.0} log bytes/req",
                stats.allocations as f64 / 1000.0,
                stats.bytes_allocated as f64 / 1000.0,
                logged as f64 / 1000.0
            );
        });
    }

    paired(&rt, &variants);

    let mut group = c.benchmark_group("stack");
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(3));
    for (name, router) in &variants {
        group.bench_function(*name, |b| {
            b.iter_custom(|iters| {
                let _dispatch = dispatch_for(name);
                rt.block_on(async {
                    let start = Instant::now();
                    for _ in 0..iters {
                        call(router).await;
                    }
                    start.elapsed()
                })
            })
        });
    }
    group.finish();
}

/// The requests `BENCH_PROFILE` measures; never inlined so callgrind can toggle on it.
#[inline(never)]
fn profile_batch(rt: &tokio::runtime::Runtime, router: &Router, n: usize) {
    rt.block_on(async {
        for _ in 0..n {
            call(router).await;
        }
    });
}

/// Interleaved, paired timing: on a shared, noisy machine criterion's one-variant-at-a-
/// time measurement drifts with the background load (bare measured slower than a layered
/// variant). Here every round times `PAIRED_BATCH` requests of every variant, in a rotated
/// order, and each variant's added cost is the median over rounds of (variant − bare) in
/// the same round. `PAIRED_ROUNDS=0` skips this pass.
fn paired(rt: &tokio::runtime::Runtime, variants: &[(&str, Router)]) {
    let env = |k: &str, d: usize| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(d)
    };
    let rounds = env("PAIRED_ROUNDS", 31);
    let batch = env("PAIRED_BATCH", 3000);
    if rounds == 0 || variants.is_empty() {
        return;
    }
    let Some(bare) = variants.iter().position(|(n, _)| *n == "bare") else {
        return;
    };
    let mut samples = vec![Vec::with_capacity(rounds); variants.len()];
    for round in 0..rounds {
        for k in 0..variants.len() {
            let i = (k + round) % variants.len();
            let router = &variants[i].1;
            let _dispatch = dispatch_for(variants[i].0);
            let ns = rt.block_on(async {
                let start = Instant::now();
                for _ in 0..batch {
                    call(router).await;
                }
                start.elapsed().as_nanos() as f64 / batch as f64
            });
            samples[i].push(ns);
        }
    }
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let delta = |i: usize| -> Vec<f64> {
        samples[i]
            .iter()
            .zip(&samples[bare])
            .map(|(v, b)| v - b)
            .collect()
    };
    let added: Vec<f64> = (0..variants.len()).map(|i| median(delta(i))).collect();
    // On a VM that switches between a fast and a slow state (seen on this project's,
    // where bare axum's rounds varied by 1.3x within one run) the noise only ever adds
    // time: each variant's fastest round, less bare's fastest, is a second estimate of
    // its cost that a state switch inside a round cannot inflate.
    let fastest = |i: usize| samples[i].iter().copied().fold(f64::MAX, f64::min);
    let added_min: Vec<f64> = (0..variants.len())
        .map(|i| fastest(i) - fastest(bare))
        .collect();
    println!("\npaired timing: {rounds} rounds x {batch} requests per variant, rotated order");
    println!(
        "| variant | ns/req (median) | min | max | Δ ns over bare (paired median) | Δ min..max |"
    );
    println!("|---|---|---|---|---|---|");
    for (i, (name, _)) in variants.iter().enumerate() {
        let d = delta(i);
        let (lo, hi) = d
            .iter()
            .fold((f64::MAX, f64::MIN), |(a, b), x| (a.min(*x), b.max(*x)));
        let s = &samples[i];
        let (smin, smax) = s
            .iter()
            .fold((f64::MAX, f64::MIN), |(a, b), x| (a.min(*x), b.max(*x)));
        println!(
            "| {name} | {:.0} | {smin:.0} | {smax:.0} | {:+.0} | {lo:+.0}..{hi:+.0} |",
            median(s.clone()),
            added[i]
        );
    }
    let pos = |n: &str| variants.iter().position(|(v, _)| *v == n);
    println!(
        "\n| palisade variant (stack or layer alone) | Δ ns | anchor | anchor Δ ns | ratio | ratio of fastest rounds | target | met |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    let stack_targets = [
        ("palisade/rate_limit", "anchor/tower_governor", 1.0),
        ("palisade/metrics", "anchor/axum_prometheus", 0.5),
        (
            "palisade/security_headers",
            "anchor/set_response_header_x8",
            1.0 / 3.0,
        ),
        ("palisade/access_log", "anchor/trace_json", 0.5),
        ("palisade/access_log+request_id", "anchor/trace_json", 0.5),
        ("palisade/access_log@telemetry", "anchor/trace_json", 0.5),
        (
            "palisade/access_log+request_id@telemetry",
            "anchor/trace_json",
            0.5,
        ),
        ("palisade/full", "anchor/all", 1.0 / 3.0),
        ("palisade/full@telemetry", "anchor/all", 1.0 / 3.0),
        ("palisade/full@registry", "anchor/all", 1.0 / 3.0),
        ("palisade/full-nolog", "anchor/all", 1.0 / 3.0),
    ];
    // Each layer alone has the anchor and target of the same layer in the stack.
    let layer_targets = variants
        .iter()
        .filter_map(|(name, _)| {
            let layer = name.strip_prefix("layer/")?;
            let (_, anchor, target) = stack_targets
                .iter()
                .find(|(n, _, _)| n.strip_prefix("palisade/") == Some(layer))?;
            Some((*name, *anchor, *target))
        })
        .collect::<Vec<_>>();
    for (name, anchor, target) in stack_targets.into_iter().chain(layer_targets) {
        let (Some(p), Some(a)) = (pos(name), pos(anchor)) else {
            continue;
        };
        let ratio = added[p] / added[a];
        let ratio_min = added_min[p] / added_min[a];
        println!(
            "| {name} | {:+.0} | {anchor} | {:+.0} | {ratio:.2} | {ratio_min:.2} | ≤ {target:.2} | {} |",
            added[p],
            added[a],
            if ratio <= target { "yes" } else { "no" }
        );
    }
    println!();
}

criterion_group!(benches, bench);
criterion_main!(benches);
