//! Cost per request of API-key and JWT verification, against a bare router.
//!
//! `cargo bench --all-features --bench auth`. Every case runs the same
//! `Router::oneshot` on a current-thread runtime, so the differences to `bare`
//! are the auth layer's own cost.
#![allow(clippy::unwrap_used, missing_docs)]

use std::hint::black_box;

use axum::Router;
use axum::body::Body;
use axum::routing::get;
use criterion::{Criterion, criterion_group, criterion_main};
use http::Request;
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use palisade::auth::{AuthLayer, Require};
use sha2::{Digest, Sha256};
use tower::ServiceExt;

const KEY: &str = "pk_live_3f9a1c7e5b2d4f6a8c0e1b3d5f7a9c1e";
const SECRET: &str = "bench-only-hmac-secret-0123456789abcdef";

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn claims() -> serde_json::Value {
    serde_json::json!({"sub": "user-1", "exp": now() + 3600, "scope": "read"})
}

fn handler_router() -> Router {
    Router::new().route("/r", get(|| async { "ok" }))
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let fixtures = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");

    let bare = handler_router();
    let api_key = rt.block_on(async {
        let mut b = AuthLayer::builder().rule(["/r"], [] as [&str; 0], Require::ApiKey, ["read"]);
        // Ten keys: the constant-time scan compares against every one of them.
        for i in 0..9 {
            b = b.api_key(
                format!("k{i}"),
                hex::encode(Sha256::digest(format!("other-{i}"))),
                ["read"],
            );
        }
        b = b.api_key("bench", hex::encode(Sha256::digest(KEY)), ["read"]);
        handler_router().layer(b.build().await.unwrap())
    });
    let jwt_layer = |algorithm: &str, pem: Option<String>| {
        let mut cfg = palisade::config::auth::JwtConfig::default();
        cfg.algorithms = vec![algorithm.to_owned()];
        cfg.public_key_pem_file = pem;
        let mut b =
            AuthLayer::builder()
                .jwt(cfg)
                .rule(["/r"], [] as [&str; 0], Require::Jwt, ["read"]);
        if algorithm.starts_with("HS") {
            b = b.jwt_hmac_secret(SECRET);
        }
        rt.block_on(async { handler_router().layer(b.build().await.unwrap()) })
    };
    let hs256 = jwt_layer("HS256", None);
    let rs256 = jwt_layer("RS256", Some(format!("{fixtures}/rsa1.pub.pem")));
    let hs_token = encode(
        &Header::new(Algorithm::HS256),
        &claims(),
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap();
    let rsa = std::fs::read(format!("{fixtures}/rsa1.key.pem")).unwrap();
    let rs_token = encode(
        &Header::new(Algorithm::RS256),
        &claims(),
        &EncodingKey::from_rsa_pem(&rsa).unwrap(),
    )
    .unwrap();
    let public = rt.block_on(async {
        handler_router().layer(
            AuthLayer::builder()
                .api_key("bench", hex::encode(Sha256::digest(KEY)), ["read"])
                .build()
                .await
                .unwrap(),
        )
    });

    let mut g = c.benchmark_group("auth");
    let mut case = |name: &str, app: &Router, header: Option<(&str, String)>| {
        g.bench_function(name, |b| {
            b.iter(|| {
                let mut req = Request::get("/r");
                if let Some((k, v)) = &header {
                    req = req.header(*k, v);
                }
                let res = rt
                    .block_on(app.clone().oneshot(req.body(Body::empty()).unwrap()))
                    .unwrap();
                assert_eq!(res.status(), 200);
                black_box(res)
            })
        });
    };
    case("bare_router", &bare, None);
    case("public_route_no_credential", &public, None);
    case(
        "api_key_10_keys",
        &api_key,
        Some(("x-api-key", KEY.to_owned())),
    );
    case(
        "jwt_hs256",
        &hs256,
        Some(("authorization", format!("Bearer {hs_token}"))),
    );
    case(
        "jwt_rs256",
        &rs256,
        Some(("authorization", format!("Bearer {rs_token}"))),
    );
    g.finish();
}

/// The API-key store's constant-time scan alone, by number of stored keys: it compares
/// the presented digest with every stored one, so its cost grows with the key count.
fn scan(c: &mut Criterion) {
    use palisade::auth::api_key::KeyHasher;
    use palisade::auth::{ApiKeyRecord, StaticKeyStore};
    let hasher = KeyHasher::sha256();
    let mut g = c.benchmark_group("api_key_scan");
    for n in [1usize, 10, 100] {
        let mut store = StaticKeyStore::new();
        for i in 0..n {
            store.insert(
                hasher.digest(format!("key-{i}").as_bytes()),
                ApiKeyRecord {
                    id: format!("k{i}").into(),
                    scopes: Vec::<String>::new().into(),
                    expires_at: None,
                },
            );
        }
        // The last key: every key is compared anyway, whichever matches.
        let digest = hasher.digest(format!("key-{}", n - 1).as_bytes());
        g.bench_function(format!("{n}_keys"), |b| {
            b.iter(|| black_box(store.get(black_box(&digest)).is_some()))
        });
    }
    g.finish();
}

criterion_group!(benches, bench, scan);
criterion_main!(benches);
