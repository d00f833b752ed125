//! The cache test suite, run against every backend (memory, Redis, Redis Cluster).
//! Each test takes an [`Env`] that builds a `CacheLayer` for a config.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Request};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get as route_get;
use bytes::Bytes;
use http_body_util::BodyExt;
use palisade::cache::CacheLayer;
use palisade::config::{CacheConfig, CacheRule};
use palisade::identity::{Identity, IdentityKind};
use palisade::outcome::{CacheOutcome, CacheStatus};
use palisade::stack::BuildContext;
use tower::ServiceExt;

/// Builds layers for one backend.
pub struct Env {
    pub ctx: BuildContext,
    pub configure: fn(&mut CacheConfig),
    pub prefix: &'static str,
}

static PREFIX_SEQ: AtomicUsize = AtomicUsize::new(0);

impl Env {
    pub fn layer(&self, cfg: CacheConfig) -> CacheLayer {
        // Each app its own namespace, so tests sharing one Redis never meet.
        let prefix = format!(
            "{}{}-{}:",
            self.prefix,
            std::process::id(),
            PREFIX_SEQ.fetch_add(1, Ordering::Relaxed)
        );
        self.layer_with_prefix(cfg, &prefix)
    }

    /// A layer in the namespace `prefix` (two with the same prefix are two replicas).
    pub fn layer_with_prefix(&self, mut cfg: CacheConfig, prefix: &str) -> CacheLayer {
        (self.configure)(&mut cfg);
        cfg.key_prefix = prefix.to_owned();
        CacheLayer::from_config(&cfg, &self.ctx)
            .unwrap()
            .expect("rules configured")
    }
}

pub fn rule(paths: &[&str]) -> CacheRule {
    let mut r = CacheRule::default();
    r.paths = paths.iter().map(|p| p.to_string()).collect();
    r
}

pub fn config(rules: Vec<CacheRule>) -> CacheConfig {
    let mut c = CacheConfig::default();
    c.rules = rules;
    c
}

/// Handler call counts, per route label.
#[derive(Clone, Default)]
pub struct Calls(Arc<Mutex<HashMap<&'static str, usize>>>);

impl Calls {
    fn hit(&self, label: &'static str) -> usize {
        let mut m = self.0.lock().unwrap();
        let n = m.entry(label).or_default();
        *n += 1;
        *n
    }
    pub fn get(&self, label: &'static str) -> usize {
        self.0.lock().unwrap().get(label).copied().unwrap_or(0)
    }
}

pub struct App {
    pub router: Router,
    pub calls: Calls,
    pub layer: CacheLayer,
    pub fail: Arc<AtomicBool>,
    pub gate: Gate,
}

/// Holds `/gated` handlers: each call adds a permit to `entered`, then waits for
/// one from `release`; the test interleaves its own steps in between.
#[derive(Clone)]
pub struct Gate {
    pub entered: Arc<tokio::sync::Semaphore>,
    pub release: Arc<tokio::sync::Semaphore>,
}

impl Default for Gate {
    fn default() -> Self {
        Self {
            entered: Arc::new(tokio::sync::Semaphore::new(0)),
            release: Arc::new(tokio::sync::Semaphore::new(0)),
        }
    }
}

/// The test application: every route counts its calls.
pub fn app(env: &Env, cfg: CacheConfig) -> App {
    app_with(env.layer(cfg))
}

/// The test application around a given layer.
pub fn app_with(layer: CacheLayer) -> App {
    let calls = Calls::default();
    let fail = Arc::new(AtomicBool::new(false));
    let gate = Gate::default();
    let c = calls.clone();
    let f = fail.clone();
    let router = Router::new()
        .route(
            "/items/{id}",
            route_get({
                let c = c.clone();
                let f = f.clone();
                move |Path(id): Path<String>, headers: HeaderMap| async move {
                    let n = c.hit("items");
                    if f.load(Ordering::SeqCst) {
                        return (StatusCode::SERVICE_UNAVAILABLE, "down").into_response();
                    }
                    // Reflects unkeyed headers, as a naive framework might.
                    let fwd = headers
                        .get("x-forwarded-host")
                        .or_else(|| headers.get("x-original-url"))
                        .map(|v| v.to_str().unwrap().to_owned())
                        .unwrap_or_default();
                    format!("item {id} call {n} {fwd}").into_response()
                }
            })
            .put({
                let c = c.clone();
                move |Path(id): Path<String>| async move {
                    c.hit("put");
                    if id == "bad" {
                        StatusCode::BAD_REQUEST
                    } else {
                        StatusCode::NO_CONTENT
                    }
                }
            }),
        )
        .route(
            "/private/{id}",
            route_get({
                let c = c.clone();
                move || async move {
                    let n = c.hit("private");
                    (
                        [(header::SET_COOKIE, "session=s3cr3t")],
                        format!("private {n}"),
                    )
                }
            }),
        )
        .route(
            "/public",
            route_get({
                let c = c.clone();
                move || async move {
                    let n = c.hit("public");
                    (
                        [(header::CACHE_CONTROL, "public, max-age=60")],
                        format!("public {n}"),
                    )
                }
            }),
        )
        .route(
            "/me/{file}",
            route_get({
                let c = c.clone();
                move |headers: HeaderMap| async move {
                    c.hit("me");
                    let auth = headers
                        .get(header::AUTHORIZATION)
                        .map(|v| v.to_str().unwrap().to_owned())
                        .unwrap_or_default();
                    format!("account of {auth}")
                }
            }),
        )
        .route(
            "/user",
            route_get({
                let c = c.clone();
                move |req: Request| async move {
                    let n = c.hit("user");
                    let id = req
                        .extensions()
                        .get::<Identity>()
                        .map(|i| i.id.to_string())
                        .unwrap_or_default();
                    format!("user {id} call {n}")
                }
            }),
        )
        .route(
            "/lang",
            route_get({
                let c = c.clone();
                move |headers: HeaderMap| async move {
                    let n = c.hit("lang");
                    let lang = headers
                        .get(header::ACCEPT_LANGUAGE)
                        .map(|v| v.to_str().unwrap().to_owned())
                        .unwrap_or_default();
                    (
                        [(header::VARY, "Accept-Language")],
                        format!("lang {lang} call {n}"),
                    )
                }
            }),
        )
        .route(
            "/star",
            route_get({
                let c = c.clone();
                move || async move {
                    c.hit("star");
                    ([(header::VARY, "*")], "star")
                }
            }),
        )
        .route(
            "/status/{code}",
            route_get({
                let c = c.clone();
                move |Path(code): Path<u16>| async move {
                    c.hit("status");
                    (StatusCode::from_u16(code).unwrap(), "status")
                }
            }),
        )
        .route(
            "/cc/{value}",
            route_get({
                let c = c.clone();
                move |Path(v): Path<String>| async move {
                    c.hit("cc");
                    ([(header::CACHE_CONTROL, v)], "cc")
                }
            }),
        )
        .route(
            "/csp",
            route_get({
                let c = c.clone();
                move || async move {
                    c.hit("csp");
                    (
                        [(header::CONTENT_SECURITY_POLICY, "script-src 'nonce-abc123'")],
                        "csp",
                    )
                }
            }),
        )
        .route(
            "/tagged/{id}",
            route_get({
                let c = c.clone();
                move |Path(id): Path<String>| async move {
                    let n = c.hit("tagged");
                    (
                        [("x-cache-tags", "items item-1")],
                        format!("tagged {id} {n}"),
                    )
                }
            }),
        )
        .route(
            "/slow",
            route_get({
                let c = c.clone();
                move || async move {
                    let n = c.hit("slow");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    format!("slow {n}")
                }
            }),
        )
        .route(
            "/big",
            route_get({
                let c = c.clone();
                move || async move {
                    c.hit("big");
                    Body::new(big_body())
                }
            }),
        )
        .route(
            "/gated",
            route_get({
                let c = c.clone();
                let gate = gate.clone();
                move || async move {
                    let n = c.hit("gated");
                    gate.entered.add_permits(1);
                    gate.release.acquire().await.unwrap().forget();
                    ([("x-cache-tags", "gated")], format!("gated {n}"))
                }
            }),
        )
        .route(
            "/doc/{kind}",
            route_get({
                let c = c.clone();
                move |Path(kind): Path<String>| async move {
                    let n = c.hit("doc");
                    let (name, value) = match kind.as_str() {
                        "png" => (header::CONTENT_TYPE, "image/png"),
                        "gzip" => (header::CONTENT_ENCODING, "gzip"),
                        _ => (header::CONTENT_TYPE, "application/json"),
                    };
                    ([(name, value)], doc_body(n))
                }
            }),
        )
        .route(
            "/sse",
            route_get({
                let c = c.clone();
                move || async move {
                    c.hit("sse");
                    ([(header::CONTENT_TYPE, "text/event-stream")], "data: x\n\n")
                }
            }),
        )
        .layer(layer.clone())
        // Outside the cache, as the auth layer is: `x-user` stands for a verified caller.
        .layer(axum::middleware::map_request(
            |mut req: Request| async move {
                if let Some(u) = req.headers().get("x-user").cloned() {
                    req.extensions_mut().insert(Identity::new(
                        IdentityKind::ApiKey,
                        u.to_str().unwrap(),
                        Vec::<String>::new(),
                    ));
                }
                req
            },
        ));
    App {
        router,
        calls,
        layer,
        fail,
        gate,
    }
}

pub const DOC_LEN: usize = 16 * 1024;

/// `DOC_LEN` bytes of repetitive JSON-like text (compresses well); the call number
/// leads, so a refill is told apart from a hit.
pub fn doc_body(call: usize) -> String {
    let mut s = format!("[{call:06}");
    while s.len() < DOC_LEN {
        s.push_str(",{\"id\":12345,\"name\":\"item\",\"tags\":[\"a\",\"b\"]}");
    }
    s.truncate(DOC_LEN);
    s
}

pub const BIG_LEN: usize = 10 * 1024 * 1024;
const BIG_CHUNK: usize = 64 * 1024;

/// 10 MiB in 64 KiB chunks, no Content-Length; byte i is `i % 251`.
fn big_body() -> impl http_body::Body<Data = Bytes, Error = std::io::Error> + Send + 'static {
    struct Big(usize);
    impl http_body::Body for Big {
        type Data = Bytes;
        type Error = std::io::Error;
        fn poll_frame(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, std::io::Error>>> {
            if self.0 >= BIG_LEN {
                return std::task::Poll::Ready(None);
            }
            let start = self.0;
            let chunk: Vec<u8> = (start..start + BIG_CHUNK)
                .map(|i| (i % 251) as u8)
                .collect();
            self.0 += BIG_CHUNK;
            std::task::Poll::Ready(Some(Ok(http_body::Frame::data(Bytes::from(chunk)))))
        }
    }
    Big(0)
}

pub struct Got {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub outcome: Option<CacheOutcome>,
}

impl Got {
    pub fn x_cache(&self) -> &str {
        self.headers
            .get("x-cache")
            .map_or("", |v| v.to_str().unwrap())
    }
    pub fn cache_status(&self) -> &str {
        self.headers
            .get("cache-status")
            .map_or("", |v| v.to_str().unwrap())
    }
    pub fn text(&self) -> &str {
        std::str::from_utf8(&self.body).unwrap()
    }
}

pub async fn send(app: &App, method: Method, uri: &str, headers: &[(&str, &str)]) -> Got {
    let mut req = Request::builder()
        .method(method)
        .uri(uri)
        .header(header::HOST, "example.com");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    // Ask for the layer's outcome record, as the access log and metrics do.
    let req = req
        .extension(palisade::outcome::RecordOutcomes)
        .body(Body::empty())
        .unwrap();
    let res: Response = app.router.clone().oneshot(req).await.unwrap();
    let (parts, body) = res.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    Got {
        status: parts.status,
        outcome: parts.extensions.get::<CacheOutcome>().copied(),
        headers: parts.headers,
        body,
    }
}

pub async fn get(app: &App, uri: &str) -> Got {
    send(app, Method::GET, uri, &[]).await
}

pub async fn get_h(app: &App, uri: &str, headers: &[(&str, &str)]) -> Got {
    send(app, Method::GET, uri, headers).await
}

// ---------------------------------------------------------------------------
// The tests.

pub async fn miss_then_hit_with_headers(env: &Env) {
    let app = app(env, config(vec![rule(&["/items/{id}"])]));
    let first = get(&app, "/items/1").await;
    assert_eq!(first.status, StatusCode::OK);
    assert_eq!(first.x_cache(), "MISS");
    assert_eq!(first.cache_status(), "palisade; fwd=miss");
    assert_eq!(first.headers["age"], "0");
    assert_eq!(first.outcome.unwrap().status, CacheStatus::Miss);
    let second = get(&app, "/items/1").await;
    assert_eq!(second.x_cache(), "HIT");
    assert!(
        second.cache_status().starts_with("palisade; hit; ttl="),
        "{}",
        second.cache_status()
    );
    assert_eq!(second.body, first.body);
    assert!(second.headers.contains_key("age"));
    assert!(second.headers.contains_key(header::ETAG));
    assert_eq!(second.outcome.unwrap().status, CacheStatus::Hit);
    assert!(
        second.headers[header::DATE]
            .to_str()
            .unwrap()
            .ends_with(" GMT"),
        "Date kept from the fill"
    );
    assert_eq!(
        get(&app, "/items/1").await.headers[header::DATE],
        second.headers[header::DATE]
    );
    assert_eq!(app.calls.get("items"), 1);
    // Another id, another entry.
    assert_eq!(get(&app, "/items/2").await.x_cache(), "MISS");
    assert_eq!(app.calls.get("items"), 2);
}

pub async fn uncached_routes_are_untouched(env: &Env) {
    let app = app(env, config(vec![rule(&["/items/{id}"])]));
    let r = get(&app, "/public").await;
    assert!(!r.headers.contains_key("cache-status"));
    assert!(!r.headers.contains_key("x-cache"));
    assert!(r.outcome.is_none());
    get(&app, "/public").await;
    assert_eq!(app.calls.get("public"), 2);
}

pub async fn head_is_served_from_the_get_entry(env: &Env) {
    let app = app(env, config(vec![rule(&["/items/{id}"])]));
    // A HEAD miss never fills the entry GET would use.
    let h = send(&app, Method::HEAD, "/items/1", &[]).await;
    assert_eq!(h.x_cache(), "MISS");
    assert_eq!(get(&app, "/items/1").await.x_cache(), "MISS");
    let g = get(&app, "/items/1").await;
    let h = send(&app, Method::HEAD, "/items/1", &[]).await;
    assert_eq!(h.x_cache(), "HIT");
    assert!(h.body.is_empty());
    assert_eq!(
        h.headers[header::CONTENT_LENGTH].to_str().unwrap(),
        g.body.len().to_string()
    );
    assert_eq!(app.calls.get("items"), 2);
}

pub async fn unkeyed_headers_cannot_poison(env: &Env) {
    let app = app(env, config(vec![rule(&["/items/{id}"])]));
    for (h, v) in [
        ("x-forwarded-host", "evil.example"),
        ("x-original-url", "/evil"),
        ("x-http-method-override", "DELETE"),
        ("x-forwarded-proto", "https"),
        ("forwarded", "host=evil.example"),
    ] {
        let attack = get_h(&app, "/items/1", &[(h, v)]).await;
        assert_eq!(attack.x_cache(), "MISS", "{h}");
        assert!(
            attack.cache_status().contains("detail=unkeyed-header"),
            "{h}"
        );
    }
    let clean = get(&app, "/items/1").await;
    assert_eq!(clean.x_cache(), "MISS", "nothing was stored by the attacks");
    assert!(!clean.text().contains("evil"), "{}", clean.text());
    // Once stored, an attacker's request is served the clean entry.
    let attack = get_h(&app, "/items/1", &[("x-forwarded-host", "evil.example")]).await;
    assert_eq!(attack.x_cache(), "HIT");
    assert_eq!(attack.body, clean.body);
    // An invalid or doubled Host is never cached.
    let mut req = Request::get("/items/1")
        .header(header::HOST, "evil example")
        .body(Body::empty())
        .unwrap();
    req.headers_mut()
        .append(header::HOST, HeaderValue::from_static("x"));
    let res = app.router.clone().oneshot(req).await.unwrap();
    assert!(
        res.headers()["cache-status"]
            .to_str()
            .unwrap()
            .contains("fwd=bypass; detail=host")
    );
}

pub async fn set_cookie_never_stored_and_no_deception(env: &Env) {
    let app = app(env, config(vec![rule(&["/private/{id}", "/items/{id}"])]));
    for _ in 0..2 {
        let r = get(&app, "/private/x.css").await;
        assert_eq!(r.x_cache(), "MISS");
        assert!(r.cache_status().contains("detail=set-cookie"));
        assert!(r.headers.contains_key(header::SET_COOKIE));
    }
    assert_eq!(app.calls.get("private"), 2);
    // A path outside every rule is never cached, whatever its extension.
    for _ in 0..2 {
        let r = get_h(&app, "/me/x.css", &[("authorization", "Bearer alice")]).await;
        assert!(r.outcome.is_none());
        assert_eq!(r.text(), "account of Bearer alice");
    }
    let r = get(&app, "/me/x.css").await;
    assert_eq!(r.text(), "account of ", "alice's page was not kept");
    assert_eq!(app.calls.get("me"), 3);
}

pub async fn credentials_never_stored_or_served_shared(env: &Env) {
    let app = app(
        env,
        config(vec![rule(&["/items/{id}", "/me/{file}", "/public"])]),
    );
    let mut cfg_rule = rule(&["/me/{file}"]);
    cfg_rule.per_identity = false;
    for (h, v) in [
        ("authorization", "Bearer alice"),
        ("cookie", "session=abc"),
        ("x-api-key", "k1"),
    ] {
        let a = get_h(&app, "/me/profile.css", &[(h, v)]).await;
        assert_eq!(a.x_cache(), "MISS", "{h}");
        assert!(a.cache_status().contains("detail=credentials"), "{h}");
    }
    let anon = get(&app, "/me/profile.css").await;
    assert_eq!(
        anon.x_cache(),
        "MISS",
        "no credentialed response was stored"
    );
    assert_eq!(anon.text(), "account of ");
    // The anonymous entry is not served to a caller with credentials.
    let a = get_h(&app, "/me/profile.css", &[("authorization", "Bearer bob")]).await;
    assert_eq!(a.text(), "account of Bearer bob");
    assert_eq!(app.calls.get("me"), 5);
    // An explicitly public response may be shared.
    let p = get_h(&app, "/public", &[("authorization", "Bearer alice")]).await;
    assert_eq!(p.x_cache(), "MISS");
    let p2 = get(&app, "/public").await;
    assert_eq!(p2.x_cache(), "HIT");
    let p3 = get_h(&app, "/public", &[("cookie", "a=b")]).await;
    assert_eq!(p3.x_cache(), "HIT");
    assert_eq!(app.calls.get("public"), 1);
    let _ = cfg_rule;
}

pub async fn per_identity_keeps_callers_apart(env: &Env) {
    let mut r = rule(&["/user"]);
    r.per_identity = true;
    let app = app(env, config(vec![r]));
    let a1 = get_h(&app, "/user", &[("x-user", "alice"), ("x-api-key", "k")]).await;
    let b1 = get_h(&app, "/user", &[("x-user", "bob"), ("x-api-key", "k2")]).await;
    let a2 = get_h(&app, "/user", &[("x-user", "alice"), ("x-api-key", "k")]).await;
    let b2 = get_h(&app, "/user", &[("x-user", "bob"), ("x-api-key", "k2")]).await;
    assert_eq!(a1.text(), "user alice call 1");
    assert_eq!(b1.text(), "user bob call 2");
    assert_eq!((a2.x_cache(), a2.text()), ("HIT", "user alice call 1"));
    assert_eq!((b2.x_cache(), b2.text()), ("HIT", "user bob call 2"));
    let anon = get(&app, "/user").await;
    assert_eq!(anon.x_cache(), "MISS");
    // Credentials without a verified identity: not cached at all.
    let c = get_h(&app, "/user", &[("cookie", "x=y")]).await;
    assert!(c.cache_status().contains("fwd=bypass; detail=credentials"));
}

pub async fn vary_variants_kept_apart(env: &Env) {
    let mut by_rule = rule(&["/items/{id}"]);
    by_rule.vary = vec!["Accept".into()];
    let app = app(env, config(vec![rule(&["/lang", "/star"]), by_rule]));
    let en = get_h(&app, "/lang", &[("accept-language", "en")]).await;
    let de = get_h(&app, "/lang", &[("accept-language", "de")]).await;
    let en2 = get_h(&app, "/lang", &[("accept-language", "en")]).await;
    let de2 = get_h(&app, "/lang", &[("accept-language", "de")]).await;
    let none = get(&app, "/lang").await;
    assert_eq!(en.text(), "lang en call 1");
    assert_eq!(de.text(), "lang de call 2");
    assert_eq!((en2.x_cache(), en2.text()), ("HIT", "lang en call 1"));
    assert_eq!((de2.x_cache(), de2.text()), ("HIT", "lang de call 2"));
    assert_eq!(none.text(), "lang  call 3");
    // Rule `vary`: the request header is part of the key from the start.
    let j = get_h(&app, "/items/1", &[("accept", "application/json")]).await;
    let t = get_h(&app, "/items/1", &[("accept", "text/plain")]).await;
    assert_eq!(j.x_cache(), "MISS");
    assert_eq!(t.x_cache(), "MISS");
    assert_eq!(
        get_h(&app, "/items/1", &[("accept", "text/plain")])
            .await
            .x_cache(),
        "HIT"
    );
    // Vary: * is never stored.
    get(&app, "/star").await;
    let s = get(&app, "/star").await;
    assert!(s.cache_status().contains("detail=vary-star"));
    assert_eq!(app.calls.get("star"), 2);
}

pub async fn statuses_and_directives(env: &Env) {
    let app = app(
        env,
        config(vec![rule(&[
            "/status/{code}",
            "/cc/{value}",
            "/csp",
            "/sse",
        ])]),
    );
    for code in ["404", "410", "301"] {
        get(&app, &format!("/status/{code}")).await;
        let r = get(&app, &format!("/status/{code}")).await;
        assert_eq!(r.x_cache(), "HIT", "{code}");
        assert_eq!(r.status.as_str(), code, "status kept exactly");
    }
    for code in ["500", "503", "206"] {
        get(&app, &format!("/status/{code}")).await;
        let r = get(&app, &format!("/status/{code}")).await;
        assert_eq!(r.x_cache(), "MISS", "{code}");
        assert!(r.cache_status().contains("detail=status"));
    }
    for (v, why) in [
        ("no-store", "no-store"),
        ("private", "private"),
        ("no-cache", "no-cache"),
        ("max-age=0", "max-age"),
    ] {
        get(&app, &format!("/cc/{v}")).await;
        let r = get(&app, &format!("/cc/{v}")).await;
        assert!(
            r.cache_status().contains(&format!("detail={why}")),
            "{v}: {}",
            r.cache_status()
        );
    }
    let hit = {
        get(&app, "/cc/max-age=5").await;
        get(&app, "/cc/max-age=5").await
    };
    assert_eq!(hit.x_cache(), "HIT");
    let ttl: i64 = hit
        .cache_status()
        .split("ttl=")
        .nth(1)
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(ttl <= 5, "max-age caps the rule's TTL: {ttl}");
    get(&app, "/csp").await;
    assert!(
        get(&app, "/csp")
            .await
            .cache_status()
            .contains("detail=csp-nonce")
    );
    get(&app, "/sse").await;
    let sse = get(&app, "/sse").await;
    assert!(sse.cache_status().contains("detail=event-stream"));
    assert_eq!(sse.text(), "data: x\n\n");
    assert_eq!(app.calls.get("csp"), 2);
    assert_eq!(app.calls.get("sse"), 2);
}

pub async fn concurrent_misses_make_one_call(env: &Env) {
    let app = Arc::new(app(env, config(vec![rule(&["/slow"])])));
    let mut tasks = Vec::new();
    for _ in 0..100 {
        let app = app.clone();
        tasks.push(tokio::spawn(async move { get(&app, "/slow").await }));
    }
    let mut hits = 0;
    for t in tasks {
        let r = t.await.unwrap();
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.text(), "slow 1");
        if r.x_cache() == "HIT" {
            hits += 1;
        }
    }
    assert_eq!(app.calls.get("slow"), 1);
    assert_eq!(hits, 99);
}

pub async fn unsafe_methods_invalidate(env: &Env) {
    let app = app(env, config(vec![rule(&["/items/{id}"])]));
    get(&app, "/items/1").await;
    get(&app, "/items/1?page=2").await;
    get(&app, "/items/2").await;
    assert_eq!(get(&app, "/items/1").await.x_cache(), "HIT");
    let put = send(&app, Method::PUT, "/items/1", &[]).await;
    assert_eq!(put.status, StatusCode::NO_CONTENT);
    assert_eq!(put.outcome.unwrap().status, CacheStatus::Bypass);
    assert_eq!(put.cache_status(), "palisade; fwd=method");
    assert_eq!(get(&app, "/items/1").await.x_cache(), "MISS");
    assert_eq!(
        get(&app, "/items/1?page=2").await.x_cache(),
        "MISS",
        "every variant"
    );
    assert_eq!(
        get(&app, "/items/2").await.x_cache(),
        "HIT",
        "other paths kept"
    );
    // A failed mutation invalidates nothing.
    get(&app, "/items/bad").await;
    assert_eq!(
        send(&app, Method::PUT, "/items/bad", &[]).await.status,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(get(&app, "/items/bad").await.x_cache(), "HIT");
    // The layer's own call.
    app.layer
        .invalidate_path("example.com", "/items/2")
        .await
        .unwrap();
    assert_eq!(get(&app, "/items/2").await.x_cache(), "MISS");
}

pub async fn tag_purge(env: &Env) {
    let mut cfg = config(vec![rule(&["/tagged/{id}"])]);
    cfg.surrogate_key = true;
    let app = app(env, cfg);
    let first = get(&app, "/tagged/1").await;
    assert!(
        !first.headers.contains_key("x-cache-tags"),
        "tag header stripped"
    );
    assert_eq!(first.headers["surrogate-key"], "items item-1");
    get(&app, "/tagged/2").await;
    let hit = get(&app, "/tagged/1").await;
    assert_eq!(hit.x_cache(), "HIT");
    assert!(!hit.headers.contains_key("x-cache-tags"));
    app.layer.purge_tag("other").await.unwrap();
    assert_eq!(get(&app, "/tagged/1").await.x_cache(), "HIT");
    app.layer.purge_tag("items").await.unwrap();
    assert_eq!(get(&app, "/tagged/1").await.x_cache(), "MISS");
    assert_eq!(get(&app, "/tagged/2").await.x_cache(), "MISS");
    assert_eq!(get(&app, "/tagged/1").await.x_cache(), "HIT", "refilled");
}

/// A purge that lands while a fill's handler runs wins: the response, which may
/// predate the purge, is served to its caller but not kept.
pub async fn tag_purge_during_a_fill_wins(env: &Env) {
    let app = Arc::new(app(env, config(vec![rule(&["/gated"])])));
    let gate = app.gate.clone();
    let first = tokio::spawn({
        let app = app.clone();
        async move { get(&app, "/gated").await }
    });
    // The handler has started (the fill's lookups are done): purge now.
    gate.entered.acquire().await.unwrap().forget();
    app.layer.purge_tag("gated").await.unwrap();
    gate.release.add_permits(2);
    let first = first.await.unwrap();
    assert_eq!((first.x_cache(), first.text()), ("MISS", "gated 1"));
    // Waits for the first fill's store to finish (it holds the key's flight), then
    // finds nothing: the handler runs again.
    let second = get(&app, "/gated").await;
    assert_eq!((second.x_cache(), second.text()), ("MISS", "gated 2"));
    let third = get(&app, "/gated").await;
    assert_eq!(
        (third.x_cache(), third.text()),
        ("HIT", "gated 2"),
        "a fill with no purge during it is stored"
    );
    assert_eq!(app.calls.get("gated"), 2);
}

pub async fn query_is_normalised(env: &Env) {
    let mut r = rule(&["/items/{id}"]);
    r.ignore_query_params = vec!["utm_source".into()];
    let app = app(env, config(vec![r]));
    get(&app, "/items/1?b=2&a=1").await;
    assert_eq!(
        get(&app, "/items/1?a=1&b=2&utm_source=x").await.x_cache(),
        "HIT"
    );
    assert_eq!(get(&app, "/items/1?a=1&b=3").await.x_cache(), "MISS");
}

pub async fn etag_and_304(env: &Env) {
    let app = app(env, config(vec![rule(&["/items/{id}"])]));
    get(&app, "/items/1").await;
    let hit = get(&app, "/items/1").await;
    let etag = hit.headers[header::ETAG].to_str().unwrap().to_owned();
    let expected = format!("\"{}\"", &blake3::hash(&hit.body).to_hex()[..32]);
    assert_eq!(etag, expected, "strong ETag from the body hash");
    let nm = get_h(&app, "/items/1", &[("if-none-match", &etag)]).await;
    assert_eq!(nm.status, StatusCode::NOT_MODIFIED);
    assert!(nm.body.is_empty());
    assert_eq!(nm.headers[header::ETAG], etag.as_str());
    let weak = format!("\"nope\", W/{etag}");
    assert_eq!(
        get_h(&app, "/items/1", &[("if-none-match", &weak)])
            .await
            .status,
        StatusCode::NOT_MODIFIED
    );
    assert_eq!(
        get_h(&app, "/items/1", &[("if-none-match", "\"other\"")])
            .await
            .status,
        StatusCode::OK
    );
    assert_eq!(app.calls.get("items"), 1);
}

pub async fn big_stream_passes_and_is_not_stored(env: &Env) {
    let app = app(env, config(vec![rule(&["/big"])]));
    for _ in 0..2 {
        let r = get(&app, "/big").await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.body.len(), BIG_LEN);
        assert!(
            r.body
                .iter()
                .enumerate()
                .all(|(i, b)| *b == (i % 251) as u8)
        );
        assert_eq!(r.x_cache(), "MISS");
    }
    assert_eq!(app.calls.get("big"), 2);
}

pub async fn request_with_body_bypasses(env: &Env) {
    let app = app(env, config(vec![rule(&["/items/{id}"])]));
    let r = get_h(&app, "/items/1", &[("content-length", "3")]).await;
    assert!(r.cache_status().contains("fwd=bypass; detail=request-body"));
}

/// Runs every backend-independent test.
pub async fn all(env: &Env) {
    miss_then_hit_with_headers(env).await;
    uncached_routes_are_untouched(env).await;
    head_is_served_from_the_get_entry(env).await;
    unkeyed_headers_cannot_poison(env).await;
    set_cookie_never_stored_and_no_deception(env).await;
    credentials_never_stored_or_served_shared(env).await;
    per_identity_keeps_callers_apart(env).await;
    vary_variants_kept_apart(env).await;
    statuses_and_directives(env).await;
    concurrent_misses_make_one_call(env).await;
    unsafe_methods_invalidate(env).await;
    tag_purge(env).await;
    tag_purge_during_a_fill_wins(env).await;
    query_is_normalised(env).await;
    etag_and_304(env).await;
    big_stream_passes_and_is_not_stored(env).await;
    request_with_body_bypasses(env).await;
}
