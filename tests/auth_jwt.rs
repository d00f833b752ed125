//! JWT authentication through the real layer, including JWKS over a real local
//! HTTP server: every hostile case with its exact status and `WWW-Authenticate`.
#![cfg(feature = "jwt")]
#![allow(clippy::unwrap_used)]

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::routing::get;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use palisade::auth::{AuthLayer, Claims};
use palisade::outcome::{AuthOutcome, RecordOutcomes};
use palisade::stack::BuildContext;
use palisade::{Config, Identity};
use serde::Deserialize;
use serde_json::{Value, json};
use tower::ServiceExt;

const ISS: &str = "https://issuer.test";
const HS_SECRET: &str = "test-only-hmac-secret-0123456789abcdef";

fn fixture(name: &str) -> String {
    format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"))
}

fn read(name: &str) -> Vec<u8> {
    std::fs::read(fixture(name)).unwrap()
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn rsa(n: u8) -> EncodingKey {
    EncodingKey::from_rsa_pem(&read(&format!("rsa{n}.key.pem"))).unwrap()
}

fn claims() -> Value {
    json!({"sub": "user-1", "iss": ISS, "aud": "api", "exp": now() + 600, "scope": "read profile"})
}

fn with(mut base: Value, patch: Value) -> Value {
    for (k, v) in patch.as_object().unwrap() {
        if v.is_null() {
            base.as_object_mut().unwrap().remove(k);
        } else {
            base[k] = v.clone();
        }
    }
    base
}

fn rs256(claims: &Value, kid: Option<&str>, key: u8) -> String {
    let mut h = Header::new(Algorithm::RS256);
    h.kid = kid.map(str::to_owned);
    encode(&h, claims, &rsa(key)).unwrap()
}

/// A token assembled by hand: any header, any signature bytes.
fn raw_token(header: &Value, claims: &Value, sig: &[u8]) -> String {
    format!(
        "{}.{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string()),
        URL_SAFE_NO_PAD.encode(sig)
    )
}

#[derive(Deserialize)]
struct Me {
    sub: String,
}

async fn me(Claims(me): Claims<Me>) -> String {
    me.sub
}

async fn maybe(claims: Option<Claims<Me>>, id: Option<Identity>) -> String {
    match (claims, id) {
        (Some(Claims(c)), Some(i)) => format!("{}:{}", c.sub, i.scopes.join(",")),
        _ => "anonymous".into(),
    }
}

fn router(layer: AuthLayer) -> Router {
    Router::new()
        .route("/me", get(me))
        .route("/admin", get(me))
        .route("/public", get(maybe))
        .layer(layer)
}

const RULES: &str = r#"
[[auth.rules]]
paths = ["/me"]
require = "jwt"
[[auth.rules]]
paths = ["/admin"]
require = "jwt"
scopes = ["admin"]
"#;

async fn pem_app() -> Router {
    let toml = format!(
        r#"
[auth.jwt]
algorithms = ["RS256"]
public_key_pem_file = "{}"
issuer = "{ISS}"
audience = ["api"]
{RULES}"#,
        fixture("rsa1.pub.pem")
    );
    let cfg = Config::from_toml_str(&toml).unwrap();
    router(
        AuthLayer::from_config(&cfg.auth, &BuildContext::default())
            .await
            .unwrap()
            .unwrap(),
    )
}

struct Reply {
    status: StatusCode,
    www: Vec<String>,
    outcome: Option<AuthOutcome>,
    body: String,
}

async fn get_with(app: &Router, uri: &str, token: Option<&str>) -> Reply {
    // Ask for the outcome record, as the access log and metrics layers do.
    let mut req = Request::get(uri).extension(RecordOutcomes);
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let res = app
        .clone()
        .oneshot(req.body(Body::empty()).unwrap())
        .await
        .unwrap();
    Reply {
        status: res.status(),
        www: res
            .headers()
            .get_all("www-authenticate")
            .iter()
            .map(|v| v.to_str().unwrap().to_owned())
            .collect(),
        outcome: res.extensions().get::<AuthOutcome>().cloned(),
        body: String::from_utf8(res.into_body().collect().await.unwrap().to_bytes().to_vec())
            .unwrap(),
    }
}

const INVALID: &str = "Bearer realm=\"api\", error=\"invalid_token\"";

async fn assert_invalid(app: &Router, token: &str, what: &str) {
    let r = get_with(app, "/me", Some(token)).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{what}: {}", r.body);
    assert_eq!(r.www, [INVALID], "{what}");
    assert!(
        r.body.contains("the credentials are not valid"),
        "{what}: {}",
        r.body
    );
}

#[tokio::test]
async fn a_valid_token_reaches_the_handler() {
    let app = pem_app().await;
    let r = get_with(&app, "/me", Some(&rs256(&claims(), None, 1))).await;
    assert_eq!((r.status, r.body.as_str()), (StatusCode::OK, "user-1"));
    let o = r.outcome.unwrap();
    assert_eq!(
        (o.scheme, o.identity.as_deref(), o.outcome),
        ("jwt", Some("user-1"), "ok")
    );
}

#[tokio::test]
async fn missing_token_is_a_bare_challenge_and_the_query_string_is_ignored() {
    let app = pem_app().await;
    let token = rs256(&claims(), None, 1);
    for uri in ["/me".to_owned(), format!("/me?access_token={token}")] {
        let r = get_with(&app, &uri, None).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED);
        assert_eq!(r.www, ["Bearer realm=\"api\""]);
    }
}

#[tokio::test]
async fn alg_none_and_algorithm_confusion_are_refused() {
    let app = pem_app().await;
    let c = claims();
    assert_invalid(
        &app,
        &raw_token(&json!({"alg": "none", "typ": "JWT"}), &c, b""),
        "alg none, empty signature",
    )
    .await;
    assert_invalid(
        &app,
        &raw_token(&json!({"alg": "none"}), &c, b"sig"),
        "alg none with a signature",
    )
    .await;
    assert_invalid(
        &app,
        &raw_token(&json!({"alg": "None"}), &c, b"sig"),
        "alg None",
    )
    .await;
    // HS256 keyed with the server's RSA public key (PEM and DER-ish bytes).
    for secret in [read("rsa1.pub.pem"), read("rsa1.pub.pem")[27..].to_vec()] {
        let t = encode(
            &Header::new(Algorithm::HS256),
            &c,
            &EncodingKey::from_secret(&secret),
        )
        .unwrap();
        assert_invalid(&app, &t, "HS256 with the RSA public key").await;
    }
    // Right key, algorithm outside the pinned list.
    let t = encode(&Header::new(Algorithm::RS384), &c, &rsa(1)).unwrap();
    assert_invalid(&app, &t, "RS384 when only RS256 is listed").await;
    let t = encode(&Header::new(Algorithm::PS256), &c, &rsa(1)).unwrap();
    assert_invalid(&app, &t, "PS256 when only RS256 is listed").await;
    let ec = EncodingKey::from_ec_pem(&read("ec.key.pem")).unwrap();
    let t = encode(&Header::new(Algorithm::ES256), &c, &ec).unwrap();
    assert_invalid(&app, &t, "ES256 when only RS256 is listed").await;
    // Signed by another RSA key.
    assert_invalid(&app, &rs256(&c, None, 2), "foreign RSA key").await;
    // An unknown critical header extension.
    let h = json!({"alg": "RS256", "crit": ["exp-ext"], "exp-ext": 1});
    let msg = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(h.to_string()),
        URL_SAFE_NO_PAD.encode(c.to_string())
    );
    let sig = jsonwebtoken::crypto::sign(msg.as_bytes(), &rsa(1), Algorithm::RS256).unwrap();
    assert_invalid(&app, &format!("{msg}.{sig}"), "crit").await;
}

#[tokio::test]
async fn tampered_truncated_and_five_segment_tokens_are_refused() {
    let app = pem_app().await;
    let good = rs256(&claims(), None, 1);
    let parts: Vec<&str> = good.split('.').collect();
    let admin = URL_SAFE_NO_PAD.encode(with(claims(), json!({"sub": "admin"})).to_string());
    let tampered = format!("{}.{}.{}", parts[0], admin, parts[2]);
    assert_invalid(&app, &tampered, "payload swapped").await;
    assert_invalid(&app, &good[..good.len() - 10], "truncated signature").await;
    assert_invalid(&app, &format!("{}.{}", parts[0], parts[1]), "two segments").await;
    assert_invalid(
        &app,
        &format!("{good}.AAAA.BBBB"),
        "five segments (JWE-shaped)",
    )
    .await;
    assert_invalid(
        &app,
        &format!("{}.{}.{}=", parts[0], parts[1], parts[2]),
        "padded signature",
    )
    .await;
    assert_invalid(
        &app,
        &format!("{}..{}", parts[0], parts[2]),
        "empty payload",
    )
    .await;
    let mut flipped = parts[2].as_bytes().to_vec();
    flipped[5] = if flipped[5] == b'A' { b'B' } else { b'A' };
    let flipped = format!(
        "{}.{}.{}",
        parts[0],
        parts[1],
        String::from_utf8(flipped).unwrap()
    );
    assert_invalid(&app, &flipped, "one signature character changed").await;
}

#[tokio::test]
async fn expiry_and_not_before_around_the_leeway() {
    // Leeway 30 s; every case is at least 20 s away from the boundary.
    let app = pem_app().await;
    let t = now();
    for (patch, ok, what) in [
        (json!({"exp": t - 3600}), false, "expired an hour ago"),
        (json!({"exp": t - 60}), false, "expired beyond the leeway"),
        (json!({"exp": t - 10}), true, "expired within the leeway"),
        (json!({"exp": null}), false, "no exp"),
        (
            json!({"exp": (t + 600).to_string()}),
            false,
            "exp as a string",
        ),
        (json!({"nbf": t + 3600}), false, "not valid for an hour"),
        (json!({"nbf": t + 60}), false, "nbf beyond the leeway"),
        (json!({"nbf": t + 10}), true, "nbf within the leeway"),
        (json!({"nbf": t.to_string()}), false, "nbf as a string"),
    ] {
        let token = rs256(&with(claims(), patch), None, 1);
        let r = get_with(&app, "/me", Some(&token)).await;
        if ok {
            assert_eq!(r.status, StatusCode::OK, "{what}");
        } else {
            assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{what}");
            assert_eq!(r.www, [INVALID], "{what}");
        }
    }
    let expired = rs256(&with(claims(), json!({"exp": t - 3600})), None, 1);
    let r = get_with(&app, "/me", Some(&expired)).await;
    assert_eq!(r.outcome.unwrap().outcome, "expired");
}

#[tokio::test]
async fn issuer_and_audience() {
    let app = pem_app().await;
    for (patch, what) in [
        (json!({"iss": "https://evil.test"}), "wrong iss"),
        (json!({"iss": null}), "missing iss"),
        (json!({"aud": "other"}), "wrong aud"),
        (
            json!({"aud": ["other", "another"]}),
            "aud list without ours",
        ),
        (json!({"aud": null}), "missing aud"),
    ] {
        assert_invalid(&app, &rs256(&with(claims(), patch), None, 1), what).await;
    }
    let ok = rs256(&with(claims(), json!({"aud": ["other", "api"]})), None, 1);
    assert_eq!(
        get_with(&app, "/me", Some(&ok)).await.status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn a_token_with_aud_is_refused_when_no_audience_is_configured() {
    let app = router(hs256_layer().await);
    let key = EncodingKey::from_secret(HS_SECRET.as_bytes());
    let sign = |c: &Value| encode(&Header::new(Algorithm::HS256), c, &key).unwrap();
    let no_aud = with(claims(), json!({"aud": null}));
    assert_eq!(
        get_with(&app, "/me", Some(&sign(&no_aud))).await.status,
        StatusCode::OK
    );
    assert_invalid(&app, &sign(&claims()), "aud without configured audience").await;
}

#[tokio::test]
async fn an_oversize_token_is_refused_before_decoding() {
    let app = pem_app().await;
    let big = rs256(&with(claims(), json!({"pad": "x".repeat(9000)})), None, 1);
    assert!(big.len() > 8192);
    assert_invalid(&app, &big, "oversize").await;
}

#[tokio::test]
async fn scopes_and_optional_routes() {
    let app = pem_app().await;
    let r = get_with(&app, "/admin", Some(&rs256(&claims(), None, 1))).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert_eq!(
        r.www,
        ["Bearer realm=\"api\", error=\"insufficient_scope\", scope=\"admin\""]
    );
    for patch in [
        json!({"scope": "read admin"}),
        json!({"scope": null, "scp": ["admin"]}),
        json!({"scope": null, "permissions": ["admin"]}),
    ] {
        let r = get_with(
            &app,
            "/admin",
            Some(&rs256(&with(claims(), patch.clone()), None, 1)),
        )
        .await;
        assert_eq!(r.status, StatusCode::OK, "{patch}");
    }
    // Optional route: nothing → anonymous; valid → claims; invalid → 401, never anonymous.
    assert_eq!(get_with(&app, "/public", None).await.body, "anonymous");
    let r = get_with(&app, "/public", Some(&rs256(&claims(), None, 1))).await;
    assert_eq!(r.body, "user-1:read,profile");
    let r = get_with(&app, "/public", Some(&rs256(&claims(), None, 2))).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(r.www, [INVALID]);
}

/// An HS256 layer; the secret is given through the builder (tests cannot set
/// environment variables: `unsafe` is forbidden crate-wide).
async fn hs256_layer() -> AuthLayer {
    let cfg =
        Config::from_toml_str(&format!("[auth.jwt]\nalgorithms = [\"HS256\"]\n{RULES}")).unwrap();
    AuthLayer::builder()
        .config(cfg.auth)
        .jwt_hmac_secret(HS_SECRET)
        .build()
        .await
        .unwrap()
}

#[tokio::test]
async fn the_hmac_secret_is_read_from_the_named_environment_variable() {
    // `cargo test` sets CARGO_PKG_DESCRIPTION (long enough) for the test process.
    let secret = std::env::var("CARGO_PKG_DESCRIPTION").expect("run through cargo test");
    let cfg = Config::from_toml_str(&format!(
        "[auth.jwt]\nalgorithms = [\"HS256\"]\nsecret_env = \"CARGO_PKG_DESCRIPTION\"\n{RULES}"
    ))
    .unwrap();
    let app = router(
        AuthLayer::from_config(&cfg.auth, &BuildContext::default())
            .await
            .unwrap()
            .unwrap(),
    );
    let key = EncodingKey::from_secret(secret.as_bytes());
    let token = encode(
        &Header::new(Algorithm::HS256),
        &with(claims(), json!({"aud": null})),
        &key,
    )
    .unwrap();
    assert_eq!(
        get_with(&app, "/me", Some(&token)).await.status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn config_problems_are_reported_together() {
    let toml = r#"
[auth.jwt]
algorithms = ["RS256", "HS256", "XS999", "none"]
secret_env = "PALISADE_TEST_UNSET_JWT_SECRET"
public_key_pem_file = "/nonexistent/key.pem"
jwks_url = "http://idp.example.com/jwks"
"#;
    let cfg = Config::from_toml_str(toml).unwrap();
    let err = AuthLayer::from_config(&cfg.auth, &BuildContext::default())
        .await
        .unwrap_err();
    for key in [
        "auth.jwt.algorithms[2]",
        "auth.jwt.algorithms[3]",
        "auth.jwt.secret_env",
        "auth.jwt.public_key_pem_file",
        "auth.jwt.jwks_url",
    ] {
        assert!(err.has_key(key), "{key} missing from: {err}");
    }
}

// ---------------------------------------------------------------- JWKS

#[derive(Default)]
struct Idp {
    /// The `issuer` its discovery document names.
    issuer: Mutex<String>,
    jwks: Mutex<Value>,
    /// `Cache-Control` sent with the JWKS, if any.
    cache_control: Mutex<Option<String>>,
    down: AtomicBool,
    jwks_hits: AtomicUsize,
    attacker_hits: AtomicUsize,
}

fn jwk(key: u8, kid: &str) -> Value {
    let mut jwk = Jwk::from_encoding_key(&rsa(key), Algorithm::RS256).unwrap();
    jwk.common.key_id = Some(kid.to_owned());
    serde_json::to_value(JwkSet { keys: vec![jwk] }).unwrap()["keys"][0].clone()
}

impl Idp {
    fn serve(&self, keys: &[(u8, &str)]) {
        let keys: Vec<Value> = keys.iter().map(|(k, kid)| jwk(*k, kid)).collect();
        *self.jwks.lock().unwrap() = json!({ "keys": keys });
    }
    fn hits(&self) -> usize {
        self.jwks_hits.load(Ordering::SeqCst)
    }
}

/// A real HTTP server on 127.0.0.1 serving `/jwks` (and an `/attacker` endpoint
/// that must never be called).
async fn start_idp(keys: &[(u8, &str)]) -> (Arc<Idp>, String) {
    let idp = Arc::new(Idp::default());
    idp.serve(keys);
    let app = Router::new()
        .route(
            "/jwks",
            get(|State(idp): State<Arc<Idp>>| async move {
                idp.jwks_hits.fetch_add(1, Ordering::SeqCst);
                let cc = idp
                    .cache_control
                    .lock()
                    .unwrap()
                    .clone()
                    .unwrap_or_default();
                let headers = [(http::header::CACHE_CONTROL, cc)];
                if idp.down.load(Ordering::SeqCst) {
                    return (
                        StatusCode::INTERNAL_SERVER_ERROR,
                        headers,
                        String::from("down"),
                    );
                }
                (
                    StatusCode::OK,
                    headers,
                    idp.jwks.lock().unwrap().to_string(),
                )
            }),
        )
        .route(
            "/.well-known/openid-configuration",
            get(|State(idp): State<Arc<Idp>>| async move {
                let issuer = idp.issuer.lock().unwrap().clone();
                json!({"issuer": issuer, "jwks_uri": format!("{issuer}/jwks")}).to_string()
            }),
        )
        .route(
            "/attacker",
            get(|State(idp): State<Arc<Idp>>| async move {
                idp.attacker_hits.fetch_add(1, Ordering::SeqCst);
                String::from("{}")
            }),
        )
        .with_state(idp.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    *idp.issuer.lock().unwrap() = base.clone();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (idp, base)
}

async fn jwks_app(base: &str, extra: &str) -> (Router, AuthLayer) {
    let toml = format!(
        r#"
[auth.jwt]
algorithms = ["RS256"]
jwks_url = "{base}/jwks"
issuer = "{ISS}"
audience = ["api"]
{extra}
{RULES}"#
    );
    let cfg = Config::from_toml_str(&toml).unwrap();
    let layer = AuthLayer::from_config(&cfg.auth, &BuildContext::default())
        .await
        .unwrap()
        .unwrap();
    (router(layer.clone()), layer)
}

#[tokio::test]
async fn jwks_keys_verify_and_jku_x5u_jwk_are_never_fetched() {
    let (idp, base) = start_idp(&[(1, "k1")]).await;
    let (app, _) = jwks_app(&base, "").await;
    assert_eq!(idp.hits(), 1, "fetched once at start-up");
    let r = get_with(&app, "/me", Some(&rs256(&claims(), Some("k1"), 1))).await;
    assert_eq!((r.status, r.body.as_str()), (StatusCode::OK, "user-1"));

    // Header-supplied key locations, signed by a key the server does not know.
    let attacker = format!("{base}/attacker");
    let c = claims();
    let jwk2 = jwk(2, "evil");
    for header in [
        json!({"alg": "RS256", "kid": "k1", "jku": attacker}),
        json!({"alg": "RS256", "kid": "k1", "x5u": attacker}),
        json!({"alg": "RS256", "kid": "k1", "jwk": jwk2}),
    ] {
        let msg = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(c.to_string())
        );
        let sig = jsonwebtoken::crypto::sign(msg.as_bytes(), &rsa(2), Algorithm::RS256).unwrap();
        assert_invalid(&app, &format!("{msg}.{sig}"), "header-supplied key").await;
    }
    assert_eq!(idp.attacker_hits.load(Ordering::SeqCst), 0);
    assert_eq!(idp.hits(), 1, "a known kid never causes a fetch");
}

#[tokio::test]
async fn a_hundred_random_kids_cause_at_most_one_fetch() {
    let (idp, base) = start_idp(&[(1, "k1")]).await;
    let (app, layer) = jwks_app(&base, "jwks_cooldown_s = 3").await;
    assert_eq!(idp.hits(), 1);
    // Let the start-up fetch's cooldown pass, so the first unknown kid may fetch.
    tokio::time::sleep(Duration::from_millis(3100)).await;
    let c = claims();
    let mut tasks = Vec::new();
    for i in 0..100 {
        let app = app.clone();
        let token = rs256(&c, Some(&format!("random-{i}-{}", now())), 2);
        tasks.push(tokio::spawn(async move {
            get_with(&app, "/me", Some(&token)).await
        }));
    }
    for t in tasks {
        let r = t.await.unwrap();
        assert_eq!(r.status, StatusCode::UNAUTHORIZED);
        assert_eq!(r.www, [INVALID]);
    }
    assert_eq!(idp.hits(), 2, "exactly one fetch for 100 unknown kids");
    assert_eq!(layer.jwks_fetch_count(), 2);
}

#[tokio::test]
async fn key_rotation_through_the_jwks() {
    let (idp, base) = start_idp(&[(1, "k1")]).await;
    let (app, _) = jwks_app(&base, "jwks_cooldown_s = 1").await;
    let old = rs256(&claims(), Some("k1"), 1);
    let new = rs256(&claims(), Some("k2"), 2);
    assert_eq!(
        get_with(&app, "/me", Some(&old)).await.status,
        StatusCode::OK
    );
    // The identity provider rotates: k2 in, k1 out.
    idp.serve(&[(2, "k2")]);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let r = get_with(&app, "/me", Some(&new)).await;
    assert_eq!(
        (r.status, r.body.as_str()),
        (StatusCode::OK, "user-1"),
        "new kid fetched"
    );
    assert_eq!(idp.hits(), 2);
    assert_invalid(&app, &old, "retired key").await;
}

#[tokio::test]
async fn cached_keys_keep_working_while_the_jwks_endpoint_is_down() {
    let (idp, base) = start_idp(&[(1, "k1")]).await;
    let (app, _) = jwks_app(&base, "jwks_cooldown_s = 1\njwks_refresh_s = 1").await;
    let token = rs256(&claims(), Some("k1"), 1);
    idp.down.store(true, Ordering::SeqCst);
    // Background refreshes fail meanwhile; an unknown kid forces one more fetch.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_invalid(
        &app,
        &rs256(&claims(), Some("k9"), 2),
        "unknown kid while down",
    )
    .await;
    assert!(idp.hits() >= 2, "the endpoint was retried");
    let r = get_with(&app, "/me", Some(&token)).await;
    assert_eq!((r.status, r.body.as_str()), (StatusCode::OK, "user-1"));
}

#[tokio::test]
async fn no_key_ever_loaded_is_503_not_401() {
    let (idp, base) = start_idp(&[(1, "k1")]).await;
    idp.down.store(true, Ordering::SeqCst);
    let (app, _) = jwks_app(&base, "").await;
    let r = get_with(&app, "/me", Some(&rs256(&claims(), Some("k1"), 1))).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(r.www.is_empty());
    assert_eq!(r.outcome.unwrap().outcome, "unavailable");
}

#[tokio::test]
async fn plain_http_jwks_off_loopback_is_a_config_error() {
    let cfg = Config::from_toml_str(
        "[auth.jwt]\nalgorithms = [\"RS256\"]\njwks_url = \"http://idp.example.com/jwks\"\n",
    )
    .unwrap();
    let err = AuthLayer::from_config(&cfg.auth, &BuildContext::default())
        .await
        .unwrap_err();
    assert!(err.has_key("auth.jwt.jwks_url"), "{err}");
}

#[tokio::test(flavor = "current_thread")]
async fn no_token_or_secret_appears_in_logs() {
    use std::io::Write;
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);
    impl Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let layer = hs256_layer().await;
    tracing::info!(layer = ?layer, "built");
    let app = router(layer);
    let key = EncodingKey::from_secret(HS_SECRET.as_bytes());
    let good = encode(
        &Header::new(Algorithm::HS256),
        &with(claims(), json!({"aud": null})),
        &key,
    )
    .unwrap();
    let bad = encode(&Header::new(Algorithm::HS256), &claims(), &key).unwrap();
    let mut records = Vec::new();
    for t in [&good, &bad] {
        let r = get_with(&app, "/me", Some(t)).await;
        records.push(format!("{:?} {}", r.outcome, r.body));
    }
    let logs = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    assert!(logs.contains("JWT refused"), "the capture works: {logs}");
    for secret in [HS_SECRET, good.as_str(), bad.as_str()] {
        assert!(!logs.contains(secret), "secret or token in logs");
        for r in &records {
            assert!(!r.contains(secret), "secret or token in a response record");
        }
    }
    // Not even a signature segment.
    assert!(!logs.contains(good.rsplit('.').next().unwrap()));
}

#[cfg(feature = "api-key")]
#[tokio::test]
async fn api_keys_and_jwts_side_by_side() {
    use palisade::auth::Require;
    use sha2::{Digest, Sha256};
    let cfg =
        Config::from_toml_str(&format!("[auth.jwt]\nalgorithms = [\"HS256\"]\n{RULES}")).unwrap();
    let layer = AuthLayer::builder()
        .config(cfg.auth)
        .jwt_hmac_secret(HS_SECRET)
        .api_key("svc", hex::encode(Sha256::digest("svc-key-1")), ["admin"])
        .rule(["/either"], [] as [&str; 0], Require::Any, [] as [&str; 0])
        .build()
        .await
        .unwrap();
    let app = Router::new()
        .route("/me", get(me))
        .route(
            "/either",
            get(|id: Identity| async move { id.id.to_string() }),
        )
        .layer(layer);
    let key = EncodingKey::from_secret(HS_SECRET.as_bytes());
    let token = encode(
        &Header::new(Algorithm::HS256),
        &with(claims(), json!({"aud": null})),
        &key,
    )
    .unwrap();

    // "any": both challenges when nothing is sent; either credential works.
    let r = get_with(&app, "/either", None).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(r.www, ["ApiKey realm=\"api\"", "Bearer realm=\"api\""]);
    assert_eq!(get_with(&app, "/either", Some(&token)).await.body, "user-1");
    assert_eq!(
        get_with(&app, "/either", Some("svc-key-1")).await.body,
        "svc"
    );

    // A JWT-only route answers an API key with its own challenge.
    let res = app
        .clone()
        .oneshot(
            Request::get("/me")
                .header("x-api-key", "svc-key-1")
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(res.headers()["www-authenticate"], "Bearer realm=\"api\"");
}

#[tokio::test]
async fn oidc_discovery_finds_the_jwks_and_checks_the_issuer() {
    let (idp, base) = start_idp(&[(1, "k1")]).await;
    let toml = format!(
        "[auth.jwt]\nalgorithms = [\"RS256\"]\nissuer = \"{base}\"\ndiscovery = true\naudience = [\"api\"]\n{RULES}"
    );
    let cfg = Config::from_toml_str(&toml).unwrap();
    let app = router(
        AuthLayer::from_config(&cfg.auth, &BuildContext::default())
            .await
            .unwrap()
            .unwrap(),
    );
    assert_eq!(idp.hits(), 1);
    let ours = rs256(&with(claims(), json!({"iss": base})), Some("k1"), 1);
    let r = get_with(&app, "/me", Some(&ours)).await;
    assert_eq!((r.status, r.body.as_str()), (StatusCode::OK, "user-1"));
    // The issuer is enforced automatically.
    assert_invalid(
        &app,
        &rs256(&claims(), Some("k1"), 1),
        "iss of another issuer",
    )
    .await;

    // A discovery document naming another issuer is not trusted: no key loads.
    let (idp, base) = start_idp(&[(1, "k1")]).await;
    *idp.issuer.lock().unwrap() = "https://evil.test".into();
    let toml = format!(
        "[auth.jwt]\nalgorithms = [\"RS256\"]\nissuer = \"{base}\"\ndiscovery = true\naudience = [\"api\"]\n{RULES}"
    );
    let cfg = Config::from_toml_str(&toml).unwrap();
    let app = router(
        AuthLayer::from_config(&cfg.auth, &BuildContext::default())
            .await
            .unwrap()
            .unwrap(),
    );
    assert_eq!(
        idp.hits(),
        0,
        "the JWKS of an unverified issuer is never fetched"
    );
    let token = rs256(&with(claims(), json!({"iss": base})), Some("k1"), 1);
    assert_eq!(
        get_with(&app, "/me", Some(&token)).await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );
}

#[tokio::test]
async fn background_refresh_follows_the_providers_max_age() {
    let (idp, base) = start_idp(&[(1, "k1")]).await;
    *idp.cache_control.lock().unwrap() = Some("public, max-age=1".into());
    // refresh every 300 s by default, but the provider asks for 1 s (cooldown 1 s).
    let (app, _) = jwks_app(&base, "jwks_cooldown_s = 1").await;
    assert_eq!(idp.hits(), 1);
    idp.serve(&[(2, "k2")]);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(
        idp.hits() >= 2,
        "refreshed in the background without any request"
    );
    // k2 is known without an on-demand fetch.
    let before = idp.hits();
    let r = get_with(&app, "/me", Some(&rs256(&claims(), Some("k2"), 2))).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(idp.hits(), before);
}
