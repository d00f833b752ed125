//! Response cache, memory backend: the shared suite plus time-based behaviour
//! (paused tokio time) and a real HTTP server for streaming.
#![allow(clippy::unwrap_used)]

mod cache_suite;

use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::routing::get as route_get;
use bytes::Bytes;
use cache_suite::*;
use palisade::cache::CacheLayer;
use palisade::config::{CacheBackend, CacheConfig};
use palisade::outcome::CacheStatus;
use palisade::stack::BuildContext;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn memory() -> Env {
    Env {
        ctx: BuildContext::default(),
        configure: |c| c.backend = CacheBackend::Memory,
        prefix: "t:",
    }
}

macro_rules! suite {
    ($($name:ident),* $(,)?) => {$(
        #[tokio::test]
        async fn $name() {
            cache_suite::$name(&memory()).await;
        }
    )*};
}

suite!(
    miss_then_hit_with_headers,
    uncached_routes_are_untouched,
    head_is_served_from_the_get_entry,
    unkeyed_headers_cannot_poison,
    set_cookie_never_stored_and_no_deception,
    credentials_never_stored_or_served_shared,
    per_identity_keeps_callers_apart,
    vary_variants_kept_apart,
    statuses_and_directives,
    unsafe_methods_invalidate,
    tag_purge,
    tag_purge_during_a_fill_wins,
    query_is_normalised,
    etag_and_304,
    big_stream_passes_and_is_not_stored,
    request_with_body_bypasses,
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_misses_make_one_call() {
    cache_suite::concurrent_misses_make_one_call(&memory()).await;
}

/// Hits within one second share their headers (the record keeps them); the next
/// second's hit must still show its own `Age` and TTL.
#[tokio::test(start_paused = true)]
async fn age_and_ttl_follow_the_clock_from_hit_to_hit() {
    let mut r = rule(&["/items/{id}"]);
    r.ttl_s = Some(30);
    let app = app(&memory(), config(vec![r]));
    get(&app, "/items/1").await;
    let mut seen = Vec::new();
    for step_ms in [0, 400, 700, 900, 8_000] {
        tokio::time::advance(Duration::from_millis(step_ms)).await;
        let hit = get(&app, "/items/1").await;
        assert_eq!(hit.x_cache(), "HIT");
        let age = hit.headers["age"].to_str().unwrap().to_owned();
        seen.push((age, hit.cache_status().to_owned()));
    }
    let expect = |age: &str, ttl: u32| (age.to_owned(), format!("palisade; hit; ttl={ttl}"));
    assert_eq!(
        seen,
        [
            expect("0", 30),
            expect("0", 29),
            expect("1", 28),
            expect("2", 28),
            expect("10", 20),
        ]
    );
    assert_eq!(app.calls.get("items"), 1);
}

#[tokio::test(start_paused = true)]
async fn entries_expire_after_their_ttl() {
    let mut r = rule(&["/items/{id}"]);
    r.ttl_s = Some(30);
    let app = app(&memory(), config(vec![r]));
    get(&app, "/items/1").await;
    tokio::time::advance(Duration::from_secs(29)).await;
    let hit = get(&app, "/items/1").await;
    assert_eq!(hit.x_cache(), "HIT");
    assert_eq!(hit.headers["age"], "29");
    assert!(
        hit.cache_status().ends_with("ttl=1"),
        "{}",
        hit.cache_status()
    );
    tokio::time::advance(Duration::from_secs(2)).await;
    assert_eq!(get(&app, "/items/1").await.x_cache(), "MISS");
    assert_eq!(app.calls.get("items"), 2);
}

#[tokio::test(start_paused = true)]
async fn stale_while_revalidate_serves_stale_and_refreshes_once() {
    let mut r = rule(&["/items/{id}"]);
    r.ttl_s = Some(10);
    let mut cfg = config(vec![r]);
    cfg.stale_while_revalidate_s = 60;
    let app = app(&memory(), cfg);
    let first = get(&app, "/items/1").await;
    tokio::time::advance(Duration::from_secs(15)).await;
    let stale = get(&app, "/items/1").await;
    assert_eq!(stale.body, first.body, "stale content served at once");
    assert_eq!(stale.x_cache(), "HIT");
    assert!(
        stale
            .cache_status()
            .contains("detail=stale-while-revalidate")
    );
    assert_eq!(stale.outcome.unwrap().status, CacheStatus::Stale);
    let again = get(&app, "/items/1").await;
    // Let the one background refresh run and store.
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    let fresh = get(&app, "/items/1").await;
    assert_eq!(fresh.text(), "item 1 call 2 ");
    assert!(fresh.cache_status().starts_with("palisade; hit; ttl="));
    assert!(again.x_cache() == "HIT");
    assert_eq!(
        app.calls.get("items"),
        2,
        "one refresh, not one per request"
    );
    // Past the window: a plain miss.
    tokio::time::advance(Duration::from_secs(200)).await;
    assert_eq!(get(&app, "/items/1").await.x_cache(), "MISS");
}

#[tokio::test(start_paused = true)]
async fn stale_if_error_covers_a_failing_handler() {
    let mut r = rule(&["/items/{id}"]);
    r.ttl_s = Some(10);
    let mut cfg = config(vec![r]);
    cfg.stale_if_error_s = 60;
    let app = app(&memory(), cfg);
    let first = get(&app, "/items/1").await;
    app.fail.store(true, std::sync::atomic::Ordering::SeqCst);
    tokio::time::advance(Duration::from_secs(20)).await;
    let r = get(&app, "/items/1").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body, first.body);
    assert!(
        r.cache_status().contains("fwd-status=503"),
        "{}",
        r.cache_status()
    );
    assert!(r.cache_status().contains("detail=stale-if-error"));
    tokio::time::advance(Duration::from_secs(60)).await;
    assert_eq!(get(&app, "/items/1").await.status, 503, "window over");
}

#[tokio::test]
async fn bad_config_lists_every_problem() {
    let mut cfg = CacheConfig::default();
    let mut r = rule(&["/items/{bad"]);
    r.vary = vec!["Authorization".into(), "bad header".into()];
    r.ttl_s = Some(0);
    cfg.rules = vec![r, rule(&[])];
    // Compression applies to the Redis backend only.
    cfg.compress_min_bytes = 10;
    cfg.key_prefix = "a{b}".into();
    cfg.lock = true;
    cfg.max_body_bytes = 0;
    let err = CacheLayer::from_config(&cfg, &BuildContext::default()).unwrap_err();
    for key in [
        "cache.rules[0].paths[0]",
        "cache.rules[0].vary[0]",
        "cache.rules[0].vary[1]",
        "cache.rules[0].ttl_s",
        "cache.rules[1].paths",
        "cache.compress_min_bytes",
        "cache.key_prefix",
        "cache.lock",
        "cache.max_body_bytes",
    ] {
        assert!(err.has_key(key), "{key} missing from {err}");
    }
    assert!(
        CacheLayer::from_config(&CacheConfig::default(), &BuildContext::default())
            .unwrap()
            .is_none(),
        "no rules: disabled"
    );
    let toml_cfg: palisade::Config = toml::from_str(
        r#"
        [cache]
        backend = "memory"
        default_ttl_s = 30
        [[cache.rules]]
        paths = ["/items/{id}"]
        ttl_s = 10
        vary = ["accept-language"]
        ignore_query_params = ["utm_source"]
        per_identity = false
        "#,
    )
    .unwrap();
    assert!(
        CacheLayer::from_config(&toml_cfg.cache, &BuildContext::default())
            .unwrap()
            .is_some()
    );
}

/// A real server: the first byte of a slow miss reaches the client before the
/// handler finishes, and a complete body is stored.
#[tokio::test]
async fn first_byte_of_a_slow_stream_arrives_before_the_end() {
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let rx = std::sync::Arc::new(tokio::sync::Mutex::new(Some(rx)));
    let layer = memory().layer(config(vec![rule(&["/stream"])]));
    let app = Router::new()
        .route(
            "/stream",
            route_get(move || {
                let rx = rx.clone();
                async move {
                    let rx = rx.lock().await.take();
                    let (btx, brx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(4);
                    tokio::spawn(async move {
                        btx.send(Ok(Bytes::from_static(b"first;"))).await.unwrap();
                        if let Some(rx) = rx {
                            let _ = rx.await;
                        }
                        btx.send(Ok(Bytes::from_static(b"last"))).await.unwrap();
                    });
                    Body::new(ChannelBody(brx))
                }
            }),
        )
        .layer(layer);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let request = b"GET /stream HTTP/1.1\r\nHost: example.com\r\nConnection: close\r\n\r\n";
    let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
    conn.write_all(request).await.unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while !contains(&seen, b"first;") {
        let n = conn.read(&mut buf).await.unwrap();
        assert!(n > 0, "connection closed before the first chunk");
        seen.extend_from_slice(&buf[..n]);
    }
    assert!(
        !contains(&seen, b"last"),
        "the handler has not finished yet"
    );
    assert!(contains(&seen, b"x-cache: MISS"));
    tx.send(()).unwrap();
    conn.read_to_end(&mut seen).await.unwrap();
    assert!(contains(&seen, b"last"));
    // The complete body was stored.
    let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
    conn.write_all(request).await.unwrap();
    let mut again = Vec::new();
    conn.read_to_end(&mut again).await.unwrap();
    assert!(
        contains(&again, b"x-cache: HIT"),
        "{}",
        String::from_utf8_lossy(&again)
    );
    assert!(contains(&again, b"\r\n\r\nfirst;last"));
}

/// Requests that arrive while a long body is streaming to the first caller stop
/// waiting for it after a short while and make their own call, instead of sitting
/// through the whole stream; the first caller's complete body is still stored.
#[tokio::test(start_paused = true)]
async fn waiters_do_not_sit_through_a_long_stream() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tower::ServiceExt;

    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let layer = memory().layer(config(vec![rule(&["/trickle"])]));
    let app = Router::new()
        .route(
            "/trickle",
            route_get(move || {
                let n = c.fetch_add(1, Ordering::SeqCst) + 1;
                async move {
                    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(4);
                    tokio::spawn(async move {
                        for i in 0..4 {
                            if i > 0 {
                                tokio::time::sleep(Duration::from_secs(1)).await;
                            }
                            let chunk = Bytes::from(format!("{n}:{i};"));
                            tx.send(Ok(chunk)).await.unwrap();
                        }
                    });
                    Body::new(ChannelBody(rx))
                }
            }),
        )
        .layer(layer);
    let request = || {
        axum::http::Request::get("/trickle")
            .header("host", "example.com")
            .body(Body::empty())
            .unwrap()
    };
    async fn finish(res: axum::response::Response) -> (String, String) {
        let x_cache = res.headers()["x-cache"].to_str().unwrap().to_owned();
        let status = res.headers()["cache-status"].to_str().unwrap().to_owned();
        let body = http_body_util::BodyExt::collect(res.into_body())
            .await
            .unwrap()
            .to_bytes();
        (
            format!("{x_cache} {status}"),
            String::from_utf8(body.to_vec()).unwrap(),
        )
    }
    let first = tokio::spawn({
        let app = app.clone();
        let req = request();
        async move { finish(app.oneshot(req).await.unwrap()).await }
    });
    tokio::time::sleep(Duration::from_millis(10)).await;
    let start = tokio::time::Instant::now();
    let second = app.clone().oneshot(request()).await.unwrap();
    let waited = start.elapsed();
    assert!(waited < Duration::from_secs(1), "waited {waited:?}");
    let (status, body) = finish(second).await;
    assert_eq!(status, "MISS palisade; fwd=miss; detail=collapse-streaming");
    assert_eq!(body, "2:0;2:1;2:2;2:3;");
    let (status, body) = first.await.unwrap();
    assert_eq!(status, "MISS palisade; fwd=miss");
    assert_eq!(body, "1:0;1:1;1:2;1:3;");
    let (status, body) = finish(app.oneshot(request()).await.unwrap()).await;
    assert!(status.starts_with("HIT"), "{status}");
    assert_eq!(
        body, "1:0;1:1;1:2;1:3;",
        "the first caller's body was stored"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

struct ChannelBody(tokio::sync::mpsc::Receiver<Result<Bytes, std::io::Error>>);

impl http_body::Body for ChannelBody {
    type Data = Bytes;
    type Error = std::io::Error;
    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, std::io::Error>>> {
        self.0
            .poll_recv(cx)
            .map(|o| o.map(|r| r.map(http_body::Frame::data)))
    }
}

/// The layer inside the whole stack, configured from TOML.
#[tokio::test]
async fn whole_stack_from_toml() {
    use tower::ServiceExt;
    let config: palisade::Config = toml::from_str(
        r#"
        [cache]
        default_ttl_s = 30
        [[cache.rules]]
        paths = ["/items/{id}"]
        "#,
    )
    .unwrap();
    let palisade = palisade::Palisade::from_config(config).await.unwrap();
    let calls = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let c = calls.clone();
    let app: Router = Router::new()
        .route(
            "/items/{id}",
            route_get(move || {
                let c = c.clone();
                async move {
                    format!(
                        "call {}",
                        c.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1
                    )
                }
            }),
        )
        .layer(palisade.layer());
    for expected in ["MISS", "HIT"] {
        let req = axum::http::Request::get("/items/1")
            .header("host", "example.com")
            .body(Body::empty())
            .unwrap();
        let res = app.clone().oneshot(req).await.unwrap();
        assert_eq!(res.headers()["x-cache"], expected, "{:?}", res.headers());
        // The entry is stored once the body has been sent completely.
        http_body_util::BodyExt::collect(res.into_body())
            .await
            .unwrap();
    }
    assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn background_refresh_stops_on_shutdown() {
    let env = memory();
    let mut r = rule(&["/slow"]);
    r.ttl_s = Some(10);
    let mut cfg = config(vec![r]);
    cfg.stale_while_revalidate_s = 600;
    let app = app(&env, cfg);
    assert_eq!(get(&app, "/slow").await.text(), "slow 1");
    tokio::time::advance(Duration::from_secs(11)).await;
    // Stale served; the refresh starts and sits in the handler's 100 ms upstream call.
    assert_eq!(get(&app, "/slow").await.text(), "slow 1");
    for _ in 0..5 {
        tokio::task::yield_now().await;
    }
    assert_eq!(app.calls.get("slow"), 2, "refresh started");
    env.ctx.shutdown.trigger();
    tokio::time::advance(Duration::from_secs(1)).await;
    for _ in 0..5 {
        tokio::task::yield_now().await;
    }
    let r = get(&app, "/slow").await;
    assert_eq!(r.text(), "slow 1", "the cancelled refresh stored nothing");
    assert!(r.cache_status().contains("stale-while-revalidate"));
    assert_eq!(app.calls.get("slow"), 2, "no new refresh after shutdown");
}

/// The outcome record is attached only when the request asks for records (the
/// access log and metrics do); the cache headers are there either way.
#[tokio::test]
async fn outcome_record_only_when_asked() {
    use tower::ServiceExt;
    let app = app(&memory(), config(vec![rule(&["/items/{id}"])]));
    get(&app, "/items/1").await;
    let request = |record: bool| {
        let mut req = axum::http::Request::get("/items/1")
            .header("host", "example.com")
            .body(Body::empty())
            .unwrap();
        if record {
            req.extensions_mut()
                .insert(palisade::outcome::RecordOutcomes);
        }
        req
    };
    let plain = app.router.clone().oneshot(request(false)).await.unwrap();
    assert_eq!(plain.headers()["x-cache"], "HIT");
    assert!(
        plain
            .extensions()
            .get::<palisade::outcome::CacheOutcome>()
            .is_none()
    );
    let asked = app.router.clone().oneshot(request(true)).await.unwrap();
    assert_eq!(asked.headers()["x-cache"], "HIT");
    let outcome = asked
        .extensions()
        .get::<palisade::outcome::CacheOutcome>()
        .copied()
        .unwrap();
    assert_eq!(outcome.status, CacheStatus::Hit);
}
