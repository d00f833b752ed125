#![allow(missing_docs)]
//! Per-request cost of palisade's security headers against tower-http
//! `SetResponseHeaderLayer`s setting the same headers, in the same run.
//!
//! Every router is finalized with `.with_state(())` (as `into_make_service` does), so a
//! request clones the built middleware stack once instead of rebuilding it. Requests
//! carry `ConnectInfo`, the `ConnectionTls` marker and the `ClientInfo` that palisade's
//! client-identity layer would have computed, so HSTS is due on all of them.
//!
//! `cargo bench --bench security_headers`

use std::hint::black_box;
use std::net::SocketAddr;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::routing::get;
use criterion::{Criterion, criterion_group, criterion_main};
use http::{HeaderName, HeaderValue, Request};
use palisade::client_ip::{ClientInfo, ConnectionTls, Scheme};
use palisade::config::security_headers::Profile;
use palisade::security_headers::SecurityHeadersLayer;
use tower::ServiceBuilder;
use tower::ServiceExt;
use tower_http::set_header::SetResponseHeaderLayer;

/// The perf-anchors "headers" set: 8 headers.
const EIGHT: &[(&str, &str)] = &[
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
    (
        "permissions-policy",
        "camera=(), geolocation=(), microphone=()",
    ),
];

/// palisade's `api` profile: 10 headers (with HSTS).
const API: &[(&str, &str)] = &[
    (
        "strict-transport-security",
        "max-age=31536000; includeSubDomains",
    ),
    (
        "content-security-policy",
        "default-src 'none'; frame-ancestors 'none'",
    ),
    ("x-frame-options", "DENY"),
    ("x-content-type-options", "nosniff"),
    ("referrer-policy", "no-referrer"),
    ("cross-origin-opener-policy", "same-origin"),
    ("cross-origin-resource-policy", "same-origin"),
    ("x-permitted-cross-domain-policies", "none"),
    ("x-dns-prefetch-control", "off"),
    ("x-xss-protection", "0"),
];

fn routes() -> Router {
    Router::new().route("/hello", get(|| async { "hello" }))
}

/// One `ServiceBuilder` of tower-http layers (the cheap way to apply them).
fn tower_http(headers: &[(&'static str, &'static str)], overriding: bool) -> Router {
    macro_rules! stack {
        ($($i:expr),*) => {{
            let l = |i: usize| {
                let (n, v) = headers[i];
                let (n, v) = (HeaderName::from_static(n), HeaderValue::from_static(v));
                if overriding {
                    SetResponseHeaderLayer::overriding(n, v)
                } else {
                    SetResponseHeaderLayer::if_not_present(n, v)
                }
            };
            ServiceBuilder::new()$(.layer(l($i)))*
        }};
    }
    match headers.len() {
        8 => routes().layer(stack!(0, 1, 2, 3, 4, 5, 6, 7)),
        10 => routes().layer(stack!(0, 1, 2, 3, 4, 5, 6, 7, 8, 9)),
        n => unreachable!("{n} headers"),
    }
    .with_state(())
}

fn palisade_eight(overriding: bool) -> Router {
    let mut b = SecurityHeadersLayer::builder(Profile::Api)
        .remove("x-permitted-cross-domain-policies")
        .remove("x-dns-prefetch-control")
        .remove("x-xss-protection")
        .set("permissions-policy", EIGHT[7].1);
    if overriding {
        b = b.override_header("*");
    }
    routes().layer(b.build().expect("valid")).with_state(())
}

fn request() -> Request<Body> {
    let mut r = Request::get("/hello")
        .header("host", "api.example.com")
        .body(Body::empty())
        .expect("valid request");
    r.extensions_mut()
        .insert(ConnectInfo(SocketAddr::from(([127, 0, 0, 1], 40000))));
    r.extensions_mut().insert(ConnectionTls);
    // What `ClientIpLayer` (always first in the palisade stack) would have stored.
    r.extensions_mut().insert(ClientInfo {
        peer: Some(SocketAddr::from(([127, 0, 0, 1], 40000))),
        ip: [127, 0, 0, 1].into(),
        scheme: Scheme::Https,
        forwarded: false,
    });
    r
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let variants: Vec<(&str, Router)> = vec![
        ("bare", routes().with_state(())),
        ("tower_http_8_overriding", tower_http(EIGHT, true)),
        ("palisade_8_overriding", palisade_eight(true)),
        ("tower_http_8_if_not_present", tower_http(EIGHT, false)),
        ("palisade_8_if_not_present", palisade_eight(false)),
        ("tower_http_api_10_if_not_present", tower_http(API, false)),
        (
            "palisade_api_profile",
            routes().layer(SecurityHeadersLayer::api()).with_state(()),
        ),
    ];
    // Same headers on both sides, checked once before timing.
    let count = |router: &Router| {
        let res = rt
            .block_on(router.clone().oneshot(request()))
            .expect("infallible");
        res.headers().len()
    };
    let bare = count(&variants[0].1);
    for (name, router) in &variants[1..] {
        let n = count(router) - bare;
        let want = if name.contains("8") { 8 } else { 10 };
        assert_eq!(n, want, "{name}: {n} headers added");
    }
    // `SECURITY_HEADERS_CALLGRIND_ITERS=n`: n requests through each variant, no
    // timing (run under `valgrind --tool=callgrind --toggle-collect='*one_request*'`
    // and compare each variant's share).
    if let Some(iters) = std::env::var("SECURITY_HEADERS_CALLGRIND_ITERS")
        .ok()
        .and_then(|n| n.parse::<u32>().ok())
    {
        for (name, router) in &variants {
            let only = std::env::var("SECURITY_HEADERS_ONLY").unwrap_or_default();
            if !only.is_empty() && only != *name {
                continue;
            }
            for _ in 0..iters {
                black_box(rt.block_on(one_request(router)));
            }
        }
        return;
    }
    let mut g = c.benchmark_group("security_headers");
    for (name, router) in &variants {
        g.bench_function(*name, |b| {
            b.iter(|| {
                rt.block_on(async {
                    let res = router.clone().oneshot(request()).await.expect("infallible");
                    let body = axum::body::to_bytes(res.into_body(), 64)
                        .await
                        .expect("body");
                    black_box(body)
                })
            })
        });
    }
    g.finish();
}

/// One request through a variant, body read (a symbol for callgrind).
#[inline(never)]
async fn one_request(router: &Router) -> bytes::Bytes {
    let res = router.clone().oneshot(request()).await.expect("infallible");
    axum::body::to_bytes(res.into_body(), 64)
        .await
        .expect("body")
}

criterion_group!(benches, bench);
criterion_main!(benches);
