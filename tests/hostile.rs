//! Hostile input against the whole stack, in one table.
//!
//! The stack is built with `Palisade::from_config` from a configuration close to
//! `examples/production.toml` (same sections, same rules, memory backends, plus an
//! HS256 secret beside the RS256 key). Every request from the security, auth and
//! cache issues is sent once, in-process, and must get its EXACT status, never a
//! 5xx, and never reach a protected handler (`/admin/stats`, `/me`), which count
//! their calls. A second table sends raw bytes over a real TCP socket where hyper's
//! own parsing is part of the answer (duplicate Host, obs-fold, bare CR, huge headers).
#![cfg(all(
    feature = "jwt",
    feature = "api-key",
    feature = "cache",
    feature = "https"
))]
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, Path};
use axum::response::IntoResponse;
use axum::routing::get;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http::{HeaderValue, Request, StatusCode};
use http_body_util::BodyExt;
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use palisade::client_ip::client_info;
use palisade::{Config, Palisade};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tower::ServiceExt;

/// The HMAC secret: `secret_env` names a variable cargo sets for every test run
/// (the crate forbids `unsafe`, so the test cannot `set_var` one itself).
const HS_SECRET: &str = env!("CARGO_PKG_DESCRIPTION");
const API_KEY: &str = "admin-dev-key-change-me";
const ISS: &str = "palisade-dev";

fn config() -> String {
    let pem = format!(
        "{}/examples/keys/jwt-dev.pub.pem",
        env!("CARGO_MANIFEST_DIR")
    );
    format!(
        r#"
[client_ip]
trusted_proxies = ["10.0.0.0/8"]
header = "x-forwarded-for"

[https]
redirect = false
allowed_hosts = ["localhost", "127.0.0.1", "[::1]", "api.example.com", "*.api.example.com"]
exempt_paths = ["/health", "/ready", "/metrics"]

[security_headers]
profile = "api"

[rate_limit]
backend = "memory"
[[rate_limit.policies]]
name = "per-ip"
key = "ip"
limit = 1000
period_s = 1
burst = 2000

[auth]
realm = "api"
default_require = "none"
api_key_header = "x-api-key"
[[auth.api_keys]]
id = "ops-admin"
sha256 = "97c2c26c1d9b8f9db30939f90f8e31a709dc2438770bf4ca6abe75b3093ff9e1"
scopes = ["admin"]
[auth.jwt]
algorithms = ["HS256", "RS256"]
secret_env = "CARGO_PKG_DESCRIPTION"
public_key_pem_file = "{pem}"
issuer = "{ISS}"
leeway_s = 30
[[auth.rules]]
paths = ["/admin/*"]
require = "api_key"
scopes = ["admin"]
[[auth.rules]]
paths = ["/me"]
require = "jwt"

[cache]
backend = "memory"
default_ttl_s = 60
[[cache.rules]]
paths = ["/items/{{id}}"]
ttl_s = 30
[[cache.rules]]
paths = ["/private/{{id}}"]
ttl_s = 30

[logging]
access_log = false
"#
    )
}

#[derive(Default)]
struct Calls {
    admin: AtomicUsize,
    me: AtomicUsize,
    items: AtomicUsize,
    private: AtomicUsize,
}

impl Calls {
    fn protected(&self) -> usize {
        self.admin.load(Ordering::SeqCst) + self.me.load(Ordering::SeqCst)
    }
}

async fn app() -> (Router, Arc<Calls>, Palisade) {
    let config = Config::from_toml_str(&config()).unwrap_or_else(|e| panic!("{e}"));
    let p = Palisade::from_config(config)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let calls = Arc::new(Calls::default());
    let (c1, c2, c3, c4) = (calls.clone(), calls.clone(), calls.clone(), calls.clone());
    let router = Router::new()
        .route("/hello", get(|| async { "hello" }))
        .route(
            "/whoami",
            get(|req: axum::extract::Request| async move {
                let info = client_info(&req);
                format!("{} {:?}", info.ip, info.scheme)
            }),
        )
        .route(
            "/items/{id}",
            get(move |Path(id): Path<String>| async move {
                let n = c1.items.fetch_add(1, Ordering::SeqCst) + 1;
                axum::Json(json!({"id": id, "upstream_calls": n}))
            }),
        )
        .route(
            "/private/{id}",
            get(move |Path(id): Path<String>| async move {
                c2.private.fetch_add(1, Ordering::SeqCst);
                (
                    [("set-cookie", "session=s3cr3t; HttpOnly")],
                    format!("private {id}"),
                )
                    .into_response()
            }),
        )
        .route(
            "/admin/stats",
            get(move || async move {
                c3.admin.fetch_add(1, Ordering::SeqCst);
                "stats"
            }),
        )
        .route(
            "/me",
            get(move || async move {
                c4.me.fetch_add(1, Ordering::SeqCst);
                "me"
            }),
        )
        .merge(p.routes())
        .layer(p.layer());
    (router, calls, p)
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn claims() -> Value {
    json!({"sub": "alice", "iss": ISS, "exp": now() + 600})
}

fn hs256(claims: &Value, secret: &[u8]) -> String {
    encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret),
    )
    .unwrap()
}

fn rs256(claims: &Value) -> String {
    let pem = std::fs::read(format!(
        "{}/examples/keys/jwt-dev.key.pem",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap();
    encode(
        &Header::new(Algorithm::RS256),
        claims,
        &EncodingKey::from_rsa_pem(&pem).unwrap(),
    )
    .unwrap()
}

fn raw_token(header: &Value, claims: &Value, sig: &[u8]) -> String {
    format!(
        "{}.{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string()),
        URL_SAFE_NO_PAD.encode(sig)
    )
}

fn public_pem() -> Vec<u8> {
    std::fs::read(format!(
        "{}/examples/keys/jwt-dev.pub.pem",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
}

/// An untrusted peer (not in `trusted_proxies`).
const PEER: [u8; 4] = [203, 0, 113, 7];

fn req(method: &str, target: &str) -> http::request::Builder {
    Request::builder()
        .method(method)
        .uri(target)
        .extension(ConnectInfo(SocketAddr::from((PEER, 40000))))
}

fn get_(target: &str) -> http::request::Builder {
    req("GET", target).header("host", "localhost")
}

fn bearer(t: &str) -> String {
    format!("Bearer {t}")
}

struct Case {
    name: &'static str,
    req: Request<Body>,
    status: u16,
}

fn case(name: &'static str, b: http::request::Builder, status: u16) -> Case {
    Case {
        name,
        req: b.body(Body::empty()).unwrap(),
        status,
    }
}

fn hostile_cases() -> Vec<Case> {
    let bad_utf8 = HeaderValue::from_bytes(b"\xff\xfe admin").unwrap();
    let huge = "a".repeat(64 * 1024);
    let tampered = {
        let t = hs256(&claims(), HS_SECRET.as_bytes());
        let mut parts: Vec<String> = t.split('.').map(str::to_owned).collect();
        parts[1] = URL_SAFE_NO_PAD
            .encode(json!({"sub": "root", "iss": ISS, "exp": now() + 600}).to_string());
        parts.join(".")
    };
    let tampered_rs = {
        let t = rs256(&claims());
        let mut parts: Vec<String> = t.split('.').map(str::to_owned).collect();
        parts[1] = URL_SAFE_NO_PAD
            .encode(json!({"sub": "root", "iss": ISS, "exp": now() + 600}).to_string());
        parts.join(".")
    };
    let good_hs = hs256(&claims(), HS_SECRET.as_bytes());
    let mut seg5 = good_hs.clone();
    seg5.push_str(".AAAA.AAAA");
    let expired = hs256(
        &json!({"sub": "alice", "iss": ISS, "exp": now() - 3600}),
        HS_SECRET.as_bytes(),
    );
    let wrong_iss = hs256(
        &json!({"sub": "alice", "iss": "evil", "exp": now() + 600}),
        HS_SECRET.as_bytes(),
    );
    let no_exp = hs256(&json!({"sub": "alice", "iss": ISS}), HS_SECRET.as_bytes());
    let oversize = hs256(
        &json!({"sub": "alice", "iss": ISS, "exp": now() + 600, "pad": "x".repeat(16 * 1024)}),
        HS_SECRET.as_bytes(),
    );
    // HS/RS confusion: an HS256 token whose HMAC key is the server's RSA public key.
    let confused = hs256(&claims(), &public_pem());
    // RS256 header, HMAC signature with the real secret.
    let rs_header_hs_sig = {
        let t = hs256(&claims(), HS_SECRET.as_bytes());
        let sig = t.rsplit('.').next().unwrap().to_owned();
        let h = URL_SAFE_NO_PAD.encode(json!({"alg": "RS256", "typ": "JWT"}).to_string());
        let c = t.split('.').nth(1).unwrap().to_owned();
        format!("{h}.{c}.{sig}")
    };
    let alg_none = raw_token(&json!({"alg": "none", "typ": "JWT"}), &claims(), b"");
    let alg_none_nosig = {
        let t = alg_none.clone();
        t.trim_end_matches('.').to_owned() + "."
    };
    let crit = {
        let mut h = Header::new(Algorithm::HS256);
        h.typ = Some("JWT".into());
        let t = hs256(&claims(), HS_SECRET.as_bytes());
        let _ = h;
        // Re-sign by hand with a crit header.
        let header = URL_SAFE_NO_PAD
            .encode(json!({"alg": "HS256", "crit": ["exp"], "typ": "JWT"}).to_string());
        let payload = t.split('.').nth(1).unwrap().to_owned();
        let key = EncodingKey::from_secret(HS_SECRET.as_bytes());
        let sig = jsonwebtoken::crypto::sign(
            format!("{header}.{payload}").as_bytes(),
            &key,
            Algorithm::HS256,
        )
        .unwrap();
        format!("{header}.{payload}.{sig}")
    };
    let jku = {
        // A jku pointing elsewhere must be ignored (never fetched); the signature
        // below is by an attacker key, so it fails.
        raw_token(
            &json!({"alg": "RS256", "jku": "http://127.0.0.1:1/jwks.json", "kid": "x"}),
            &claims(),
            &[0u8; 256],
        )
    };

    vec![
        // ---- header injection and odd targets
        case(
            "CRLF in the path stays in the path",
            get_("/hello%0d%0aSet-Cookie:%20x=1"),
            404,
        ),
        case(
            "request id with spaces and quotes is replaced",
            get_("/hello").header("x-request-id", "a\" b; <script>"),
            200,
        ),
        case(
            "huge request id is replaced",
            get_("/hello").header("x-request-id", &huge),
            200,
        ),
        case(
            "non-UTF-8 request id is replaced",
            get_("/hello").header("x-request-id", bad_utf8.clone()),
            200,
        ),
        case(
            "non-UTF-8 cookie on a public route",
            get_("/hello").header("cookie", bad_utf8.clone()),
            200,
        ),
        case(
            "//evil.com path is not a redirect",
            get_("//evil.com/hello"),
            404,
        ),
        case(
            "/\\evil.com path is not a redirect",
            get_("/%5Cevil.com"),
            404,
        ),
        // ---- Host
        case(
            "duplicate Host",
            req("GET", "/hello")
                .header("host", "localhost")
                .header("host", "evil.com"),
            400,
        ),
        case(
            "duplicate Host, same value",
            req("GET", "/hello")
                .header("host", "localhost")
                .header("host", "localhost"),
            400,
        ),
        case("missing Host", req("GET", "/hello"), 400),
        case(
            "unknown Host",
            req("GET", "/hello").header("host", "evil.com"),
            421,
        ),
        case(
            "non-UTF-8 Host",
            req("GET", "/hello").header("host", bad_utf8.clone()),
            400,
        ),
        case(
            "Host with userinfo",
            req("GET", "/hello").header("host", "localhost@evil.com"),
            400,
        ),
        case(
            "Host with a bad port",
            req("GET", "/hello").header("host", "localhost:99999"),
            400,
        ),
        case(
            "Host with a path",
            req("GET", "/hello").header("host", "localhost/evil"),
            400,
        ),
        case(
            "suffix trick: evilapi.example.com",
            req("GET", "/hello").header("host", "evilapi.example.com"),
            421,
        ),
        case(
            "suffix trick: api.example.com.evil.com",
            req("GET", "/hello").header("host", "api.example.com.evil.com"),
            421,
        ),
        case(
            "absolute-form target disagreeing with Host",
            req("GET", "http://evil.com/hello").header("host", "localhost"),
            400,
        ),
        case(
            "absolute-form target to an unknown host",
            req("GET", "http://evil.com/hello").header("host", "evil.com"),
            421,
        ),
        case(
            "absolute-form target with userinfo",
            req("GET", "http://localhost@evil.com/hello").header("host", "evil.com"),
            400,
        ),
        case(
            "absolute-form target to an allowed host",
            req("GET", "http://localhost/hello").header("host", "localhost"),
            200,
        ),
        // ---- spoofed forwarding from an untrusted peer (checked further below too)
        case(
            "X-Forwarded-Host: evil.com",
            get_("/hello").header("x-forwarded-host", "evil.com"),
            200,
        ),
        case(
            "X-Forwarded-For spoofed",
            get_("/whoami").header("x-forwarded-for", "127.0.0.1, 10.0.0.1"),
            200,
        ),
        case(
            "X-Forwarded-Proto spoofed",
            get_("/whoami").header("x-forwarded-proto", "https"),
            200,
        ),
        case(
            "Forwarded spoofed",
            get_("/whoami").header("forwarded", "for=127.0.0.1;proto=https;host=evil.com"),
            200,
        ),
        case(
            "X-Original-URL to the admin route",
            get_("/hello").header("x-original-url", "/admin/stats"),
            200,
        ),
        case(
            "X-Rewrite-URL to the admin route",
            get_("/hello").header("x-rewrite-url", "/admin/stats"),
            200,
        ),
        // ---- API keys
        case("no API key", get_("/admin/stats"), 401),
        case(
            "API key in the query string",
            get_(&format!("/admin/stats?api_key={API_KEY}")),
            401,
        ),
        case(
            "API key in the query string as x-api-key",
            get_(&format!("/admin/stats?x-api-key={API_KEY}")),
            401,
        ),
        case(
            "wrong API key",
            get_("/admin/stats").header("x-api-key", "admin-dev-key-change-mf"),
            401,
        ),
        case(
            "API key with a trailing obs-text byte",
            get_("/admin/stats").header(
                "x-api-key",
                HeaderValue::from_bytes(&[API_KEY.as_bytes(), b"\xa0"].concat()).unwrap(),
            ),
            // Malformed or repeated: RFC 6750 invalid_request.
            400,
        ),
        case(
            "oversize API key",
            get_("/admin/stats").header("x-api-key", &huge),
            401,
        ),
        case(
            "non-UTF-8 API key",
            get_("/admin/stats").header("x-api-key", bad_utf8.clone()),
            // Malformed or repeated: RFC 6750 invalid_request.
            400,
        ),
        case(
            "two API key headers",
            get_("/admin/stats")
                .header("x-api-key", API_KEY)
                .header("x-api-key", API_KEY),
            // Malformed or repeated: RFC 6750 invalid_request.
            400,
        ),
        case(
            "valid API key and a different bearer",
            get_("/admin/stats")
                .header("x-api-key", API_KEY)
                .header("authorization", bearer("other-token")),
            400,
        ),
        case(
            "valid API key and a forged JWT bearer",
            get_("/admin/stats")
                .header("x-api-key", API_KEY)
                .header("authorization", bearer(&alg_none)),
            400,
        ),
        case(
            "JWT on an API-key route",
            get_("/admin/stats").header("authorization", bearer(&good_hs)),
            401,
        ),
        // ---- Authorization header shape
        case(
            "two Authorization headers",
            get_("/me")
                .header("authorization", bearer(&good_hs))
                .header("authorization", bearer(&good_hs)),
            400,
        ),
        case(
            "bearer with a space inside",
            get_("/me").header("authorization", "Bearer abc def"),
            400,
        ),
        case(
            "bearer with a comma",
            get_("/me").header("authorization", "Bearer a,b"),
            400,
        ),
        case(
            "empty bearer",
            get_("/me").header("authorization", "Bearer"),
            400,
        ),
        case(
            "non-UTF-8 Authorization",
            get_("/me").header("authorization", bad_utf8.clone()),
            400,
        ),
        case(
            "Basic scheme on a JWT route",
            get_("/me").header("authorization", "Basic YWRtaW46YWRtaW4="),
            401,
        ),
        // ---- forged tokens
        case("no token", get_("/me"), 401),
        case(
            "alg none",
            get_("/me").header("authorization", bearer(&alg_none)),
            401,
        ),
        case(
            "alg none, empty signature segment",
            get_("/me").header("authorization", bearer(&alg_none_nosig)),
            401,
        ),
        case(
            "HS/RS confusion: HS256 signed with the RSA public key",
            get_("/me").header("authorization", bearer(&confused)),
            401,
        ),
        case(
            "RS256 header over an HMAC signature",
            get_("/me").header("authorization", bearer(&rs_header_hs_sig)),
            401,
        ),
        case(
            "tampered HS256 payload",
            get_("/me").header("authorization", bearer(&tampered)),
            401,
        ),
        case(
            "tampered RS256 payload",
            get_("/me").header("authorization", bearer(&tampered_rs)),
            401,
        ),
        case(
            "expired",
            get_("/me").header("authorization", bearer(&expired)),
            401,
        ),
        case(
            "wrong issuer",
            get_("/me").header("authorization", bearer(&wrong_iss)),
            401,
        ),
        case(
            "no exp",
            get_("/me").header("authorization", bearer(&no_exp)),
            401,
        ),
        case(
            "crit header",
            get_("/me").header("authorization", bearer(&crit)),
            401,
        ),
        case(
            "jku header pointing elsewhere",
            get_("/me").header("authorization", bearer(&jku)),
            401,
        ),
        case(
            "5 segments",
            get_("/me").header("authorization", bearer(&seg5)),
            401,
        ),
        case(
            "2 segments",
            get_("/me").header("authorization", bearer(good_hs.rsplit_once('.').unwrap().0)),
            401,
        ),
        case(
            "empty segments",
            get_("/me").header("authorization", "Bearer .."),
            401,
        ),
        case(
            "oversize token (16 KiB)",
            get_("/me").header("authorization", bearer(&oversize)),
            401,
        ),
        case(
            "forged token on a public route is still refused",
            get_("/hello").header("authorization", bearer(&tampered)),
            401,
        ),
        case(
            "wrong API key on a public route is still refused",
            get_("/hello").header("x-api-key", "nope"),
            401,
        ),
        case(
            "API key on a JWT route",
            get_("/me").header("x-api-key", API_KEY),
            401,
        ),
        case(
            "token in the query string",
            get_(&format!("/me?access_token={good_hs}")),
            401,
        ),
        // ---- cache deception and poisoning (protected data never involved)
        case("/private/x.css", get_("/private/x.css"), 200),
        case("/admin/stats.css deception", get_("/admin/stats.css"), 401),
        case(
            "/admin/stats/x.css deception",
            get_("/admin/stats/x.css"),
            401,
        ),
        case("/me/x.css deception", get_("/me/x.css"), 404),
        case(
            "/items/1 with X-Forwarded-Host",
            get_("/items/1").header("x-forwarded-host", "evil.com"),
            200,
        ),
        case(
            "/items/1 with X-Original-URL",
            get_("/items/1").header("x-original-url", "/admin/stats"),
            200,
        ),
        case(
            "/items/1 with Cache-Control garbage",
            get_("/items/1").header(
                "cache-control",
                "max-age=-1, no-cache=\"\\\", ,,, max-age=99999999999999999999",
            ),
            200,
        ),
        case(
            "/items/1 with a huge query",
            get_(&format!("/items/1?{}", "a=1&".repeat(4000))),
            200,
        ),
        case(
            "/items/1 with a percent-encoded NUL query",
            get_("/items/1?q=%00%ff%fe&utm_source=x"),
            200,
        ),
        // ---- methods
        case(
            "TRACE",
            req("TRACE", "/hello").header("host", "localhost"),
            405,
        ),
        case(
            "CONNECT-like method on admin",
            req("CONNECT", "/admin/stats").header("host", "localhost"),
            401,
        ),
    ]
}

async fn send(app: &Router, req: Request<Body>) -> (StatusCode, http::HeaderMap, Vec<u8>) {
    let res = tokio::time::timeout(Duration::from_secs(10), app.clone().oneshot(req))
        .await
        .expect("no answer within 10 s")
        .unwrap();
    let (parts, body) = res.into_parts();
    let body = body.collect().await.unwrap().to_bytes().to_vec();
    (parts.status, parts.headers, body)
}

#[tokio::test]
async fn every_hostile_request_gets_its_exact_status_and_no_protected_handler_runs() {
    let (app, calls, _p) = app().await;
    let cases = hostile_cases();
    let n = cases.len();
    let mut failures = Vec::new();
    for c in cases {
        let (status, headers, body) = send(&app, c.req).await;
        let body = String::from_utf8_lossy(&body);
        if status.is_server_error() {
            failures.push(format!("{}: 5xx {status}: {body}", c.name));
        } else if status.as_u16() != c.status {
            failures.push(format!(
                "{}: expected {}, got {status}: {body}",
                c.name, c.status
            ));
        }
        // Nothing the client sent is reflected as a header of its own.
        assert!(
            !headers.contains_key("set-cookie") || c.name == "/private/x.css",
            "{}: {headers:?}",
            c.name
        );
        // Every response carries the security headers (they are outside auth).
        assert_eq!(
            headers.get("x-content-type-options").map(|v| v.as_bytes()),
            Some(&b"nosniff"[..]),
            "{}",
            c.name
        );
        // Palisade's own rejections are problem+json and never cached downstream.
        if status.is_client_error()
            && status != StatusCode::NOT_FOUND
            && status != StatusCode::METHOD_NOT_ALLOWED
        {
            assert_eq!(
                headers.get("content-type").unwrap(),
                "application/problem+json",
                "{}",
                c.name
            );
            assert_eq!(
                headers.get("cache-control").unwrap(),
                "no-store",
                "{}",
                c.name
            );
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {n} cases failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert_eq!(
        calls.protected(),
        0,
        "a hostile request reached a protected handler"
    );

    // The controls: the same app lets real credentials through (the test can fail).
    let (s, _, _) = send(
        &app,
        get_("/admin/stats")
            .header("x-api-key", API_KEY)
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(s, 200);
    let good = hs256(&claims(), HS_SECRET.as_bytes());
    let (s, _, _) = send(
        &app,
        get_("/me")
            .header("authorization", bearer(&good))
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(s, 200);
    let (s, _, _) = send(
        &app,
        get_("/me")
            .header("authorization", bearer(&rs256(&claims())))
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(calls.admin.load(Ordering::SeqCst), 1);
    assert_eq!(calls.me.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn spoofed_forwarding_headers_from_an_untrusted_peer_change_nothing() {
    let (app, _calls, _p) = app().await;
    for (name, value) in [
        ("x-forwarded-for", "127.0.0.1"),
        ("x-forwarded-proto", "https"),
        ("forwarded", "for=127.0.0.1;proto=https"),
        ("x-real-ip", "127.0.0.1"),
    ] {
        let (s, h, body) = send(
            &app,
            get_("/whoami")
                .header(name, value)
                .body(Body::empty())
                .unwrap(),
        )
        .await;
        assert_eq!(s, 200);
        assert_eq!(String::from_utf8_lossy(&body), "203.0.113.7 Http", "{name}");
        // HSTS is sent on HTTPS responses only: a spoofed proto must not earn it.
        assert!(
            !h.contains_key("strict-transport-security"),
            "{name}: {h:?}"
        );
    }
    // The same headers from a trusted proxy are believed (the test can fail).
    let (s, h, body) = send(
        &app,
        Request::get("/whoami")
            .header("host", "localhost")
            .header("x-forwarded-for", "198.51.100.9")
            .header("x-forwarded-proto", "https")
            .extension(ConnectInfo(SocketAddr::from(([10, 0, 0, 1], 40000))))
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(String::from_utf8_lossy(&body), "198.51.100.9 Https");
    assert!(h.contains_key("strict-transport-security"));
}

#[tokio::test]
async fn poisoned_cache_keys_and_deception_paths_are_harmless() {
    let (app, calls, _p) = app().await;
    let items = |h: Option<(&str, &str)>, host: &str| {
        let mut b = req("GET", "/items/7").header("host", host);
        if let Some((k, v)) = h {
            b = b.header(k, v);
        }
        b.body(Body::empty()).unwrap()
    };
    // A request carrying an unkeyed header (X-Forwarded-Host, X-Original-URL, ...)
    // that an application might reflect is answered but never stored ...
    for h in [
        ("x-forwarded-host", "evil.com"),
        ("x-original-url", "/admin/stats"),
        ("x-http-method-override", "PUT"),
    ] {
        let (s, _, _) = send(&app, items(Some(h), "localhost")).await;
        assert_eq!(s, 200);
    }
    assert_eq!(calls.items.load(Ordering::SeqCst), 3);
    // ... so the first clean request is a miss (upstream call 4) and fills the entry,
    let (s, _, body1) = send(&app, items(None, "localhost")).await;
    assert_eq!(s, 200);
    assert!(String::from_utf8_lossy(&body1).contains("\"upstream_calls\":4"));
    // which the next clean request gets.
    let (s, h, body2) = send(&app, items(None, "localhost")).await;
    assert_eq!(s, 200);
    assert_eq!(body1, body2);
    assert!(
        h.get("cache-status")
            .is_some_and(|v| v.to_str().unwrap().contains("hit")),
        "{h:?}"
    );
    // Another host is another key.
    let (s, _, body3) = send(&app, items(None, "api.example.com")).await;
    assert_eq!(s, 200);
    assert_ne!(body1, body3, "an entry crossed hosts");
    // A host the allow-list refuses never reaches the cache.
    let (s, _, _) = send(&app, items(None, "evil.com")).await;
    assert_eq!(s, 421);
    assert_eq!(calls.items.load(Ordering::SeqCst), 5);

    // /private/x.css: the response sets a cookie, so it is never stored.
    for _ in 0..3 {
        let (s, h, _) = send(&app, get_("/private/x.css").body(Body::empty()).unwrap()).await;
        assert_eq!(s, 200);
        assert!(h.contains_key("set-cookie"));
    }
    assert_eq!(calls.private.load(Ordering::SeqCst), 3);
    assert_eq!(calls.protected(), 0);
}

// ---------------------------------------------------------------- raw TCP

async fn serve() -> (SocketAddr, Arc<Calls>, tokio::task::JoinHandle<()>) {
    let (app, calls, _p) = app().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
        .unwrap();
    });
    (addr, calls, task)
}

/// Sends raw bytes and returns the status code of the answer, or 0 when the
/// server closed the connection without one.
async fn raw(addr: SocketAddr, bytes: &[u8]) -> u16 {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    // The server may answer (and close) before it has read everything we send.
    let _ = s.write_all(bytes).await;
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), async {
        let mut chunk = [0u8; 4096];
        loop {
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    buf.extend_from_slice(&chunk[..n]);
                    if buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        break;
                    }
                }
            }
        }
    })
    .await;
    assert!(read.is_ok(), "no answer within 10 s");
    let text = String::from_utf8_lossy(&buf);
    text.strip_prefix("HTTP/1.1 ")
        .and_then(|t| t.get(..3))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn raw_bytes_over_tcp_where_hypers_parsing_matters() {
    let (addr, calls, task) = serve().await;
    let big = "a".repeat(64 * 1024);
    let huge = "a".repeat(1024 * 1024);
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        (
            "control: well-formed",
            b"GET /hello HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n".to_vec(),
            200,
        ),
        (
            "duplicate Host",
            b"GET /hello HTTP/1.1\r\nHost: localhost\r\nHost: evil.com\r\nConnection: close\r\n\r\n"
                .to_vec(),
            400,
        ),
        (
            "duplicate Host on a protected route",
            format!("GET /admin/stats HTTP/1.1\r\nHost: localhost\r\nHost: evil.com\r\nx-api-key: {API_KEY}\r\nConnection: close\r\n\r\n").into_bytes(),
            400,
        ),
        (
            "no Host (HTTP/1.1)",
            b"GET /hello HTTP/1.1\r\nConnection: close\r\n\r\n".to_vec(),
            400,
        ),
        (
            "absolute-form target disagreeing with Host",
            b"GET http://evil.com/hello HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
                .to_vec(),
            400,
        ),
        (
            "obs-fold continuation line",
            format!("GET /admin/stats HTTP/1.1\r\nHost: localhost\r\nx-api-key: {API_KEY}\r\n x\r\nConnection: close\r\n\r\n").into_bytes(),
            400,
        ),
        (
            "bare CR inside a header value",
            b"GET /hello HTTP/1.1\r\nHost: localhost\r\nX-Foo: a\rSet-Cookie: x=1\r\nConnection: close\r\n\r\n"
                .to_vec(),
            400,
        ),
        (
            "space before the colon",
            format!("GET /admin/stats HTTP/1.1\r\nHost: localhost\r\nx-api-key : {API_KEY}\r\nConnection: close\r\n\r\n").into_bytes(),
            400,
        ),
        (
            "NUL in a header value",
            b"GET /hello HTTP/1.1\r\nHost: localhost\r\nX-Foo: a\x00b\r\nConnection: close\r\n\r\n"
                .to_vec(),
            400,
        ),
        (
            "64 KiB API key",
            format!("GET /admin/stats HTTP/1.1\r\nHost: localhost\r\nx-api-key: {big}\r\nConnection: close\r\n\r\n").into_bytes(),
            401,
        ),
        (
            "64 KiB bearer",
            format!("GET /me HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {big}\r\nConnection: close\r\n\r\n").into_bytes(),
            401,
        ),
        (
            "1 MiB header",
            format!("GET /hello HTTP/1.1\r\nHost: localhost\r\nX-Big: {huge}\r\nConnection: close\r\n\r\n").into_bytes(),
            431,
        ),
    ];
    let mut failures = Vec::new();
    for (name, bytes, want) in &cases {
        let got = raw(addr, bytes).await;
        if got != *want {
            failures.push(format!("{name}: expected {want}, got {got}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert_eq!(calls.admin.load(Ordering::SeqCst), 0);
    assert_eq!(calls.me.load(Ordering::SeqCst), 0);
    task.abort();
}
