#![allow(clippy::unwrap_used)]
//! Whole-stack tests of the foundation: configuration errors from every section are
//! reported together, the layer order holds (a rejection from an inner layer still
//! carries the outer layers' work), and client identity cannot be spoofed through the
//! stack.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::routing::get;
use http::{Request, StatusCode};
use palisade::{Config, Palisade};
use tower::ServiceExt;

async fn stack(toml: &str) -> Palisade {
    let config = Config::from_toml_str(toml).unwrap_or_else(|e| panic!("{e}"));
    Palisade::from_config(config)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

fn app(palisade: &Palisade, calls: Arc<AtomicUsize>) -> Router {
    let c = calls.clone();
    Router::new()
        .route(
            "/hello",
            get(move || {
                c.fetch_add(1, Ordering::SeqCst);
                async { "hello" }
            }),
        )
        .route(
            "/admin/stats",
            get(move || {
                calls.fetch_add(1, Ordering::SeqCst);
                async { "stats" }
            }),
        )
        .route(
            "/page",
            get(
                |nonce: Option<palisade::security_headers::CspNonce>| async move {
                    format!(
                        "<script nonce=\"{}\"></script>",
                        nonce.map(|n| n.to_string()).unwrap_or_default()
                    )
                },
            ),
        )
        .merge(palisade.routes())
        .layer(palisade.layer())
}

fn get_from(path: &str, peer: [u8; 4]) -> http::request::Builder {
    Request::get(path)
        .header("host", "localhost")
        .extension(ConnectInfo(SocketAddr::from((peer, 40000))))
}

const ORDERED: &str = r#"
[https]
allowed_hosts = ["localhost"]
redirect = false

[rate_limit]
[[rate_limit.policies]]
name = "per-ip"
key = "ip"
limit = 2
period_s = 3600

[auth]
[[auth.api_keys]]
id = "ops"
sha256 = "97c2c26c1d9b8f9db30939f90f8e31a709dc2438770bf4ca6abe75b3093ff9e1"
scopes = ["admin"]
[[auth.rules]]
paths = ["/admin/*"]
require = "api_key"
scopes = ["admin"]
"#;

fn assert_outer_layers_ran(res: &http::Response<Body>) {
    let h = res.headers();
    assert!(h.contains_key("x-request-id"), "request id missing: {h:?}");
    assert_eq!(
        h["x-content-type-options"], "nosniff",
        "security headers missing: {h:?}"
    );
    assert_eq!(
        h["content-security-policy"],
        "default-src 'none'; frame-ancestors 'none'"
    );
}

#[tokio::test]
async fn rejections_from_inner_layers_carry_the_outer_layers_work() {
    let p = stack(ORDERED).await;
    let calls = Arc::new(AtomicUsize::new(0));
    let app = app(&p, calls.clone()).with_state(());

    // 401 from auth (inside): request id, security headers, and the IP limiter's
    // headers (outside auth, so the failed attempt was counted).
    let res = app
        .clone()
        .oneshot(
            get_from("/admin/stats", [198, 51, 100, 1])
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(res.headers()["content-type"], "application/problem+json");
    assert!(res.headers().contains_key("www-authenticate"));
    assert!(
        res.headers().contains_key("ratelimit"),
        "{:?}",
        res.headers()
    );
    assert_outer_layers_ran(&res);

    // A valid key passes.
    let res = app
        .clone()
        .oneshot(
            get_from("/admin/stats", [198, 51, 100, 1])
                .header("x-api-key", "admin-dev-key-change-me")
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);

    // Third request from that IP: 429 from the limiter, still with the outer work, and
    // auth never ran (the limiter sits before it).
    let res = app
        .clone()
        .oneshot(
            get_from("/admin/stats", [198, 51, 100, 1])
                .header("x-api-key", "admin-dev-key-change-me")
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(res.headers().contains_key("retry-after"));
    assert!(!res.headers().contains_key("www-authenticate"));
    assert_outer_layers_ran(&res);
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "only the authorised request reached a handler"
    );

    // 421 from host validation (outside the limiter): still the outermost layers' work.
    let res = app
        .clone()
        .oneshot(
            Request::get("/hello")
                .header("host", "evil.example")
                .extension(ConnectInfo(SocketAddr::from(([198, 51, 100, 2], 1))))
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::MISDIRECTED_REQUEST);
    assert_outer_layers_ran(&res);
    assert!(
        !res.headers().contains_key("ratelimit"),
        "host checks run before the limiter"
    );
}

#[tokio::test]
async fn spoofed_forwarded_for_from_an_untrusted_peer_shares_the_peers_limit() {
    let p = stack(ORDERED).await;
    let app = app(&p, Arc::default()).with_state(());
    let mut statuses = Vec::new();
    for spoof in ["1.1.1.1", "2.2.2.2", "3.3.3.3"] {
        let req = get_from("/hello", [203, 0, 113, 9])
            .header("x-forwarded-for", spoof)
            .body(Body::empty())
            .unwrap();
        statuses.push(app.clone().oneshot(req).await.unwrap().status().as_u16());
    }
    assert_eq!(statuses, [200, 200, 429]);
}

#[tokio::test]
async fn a_trusted_proxy_gives_each_client_its_own_limit() {
    let p = stack(&format!(
        "[client_ip]\ntrusted_proxies = [\"10.0.0.0/8\"]\n{ORDERED}"
    ))
    .await;
    let app = app(&p, Arc::default()).with_state(());
    for client in ["198.51.100.1", "198.51.100.2", "198.51.100.3"] {
        for _ in 0..2 {
            let req = get_from("/hello", [10, 0, 0, 1])
                .header("x-forwarded-for", client)
                .body(Body::empty())
                .unwrap();
            assert_eq!(
                app.clone().oneshot(req).await.unwrap().status(),
                StatusCode::OK
            );
        }
    }
}

#[tokio::test]
async fn pages_with_a_csp_nonce_are_never_cached() {
    let p = stack(
        r#"
[security_headers]
csp_nonce = true
[[cache.rules]]
paths = ["/page"]
ttl_s = 60
"#,
    )
    .await;
    let app = app(&p, Arc::default()).with_state(());
    let mut bodies = Vec::new();
    for _ in 0..2 {
        let res = app
            .clone()
            .oneshot(
                get_from("/page", [198, 51, 100, 1])
                    .body(Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        assert!(
            res.headers()["cache-status"]
                .to_str()
                .unwrap()
                .contains("csp-nonce"),
            "{:?}",
            res.headers()
        );
        bodies.push(axum::body::to_bytes(res.into_body(), 1024).await.unwrap());
    }
    assert_ne!(
        bodies[0], bodies[1],
        "each response must carry its own nonce"
    );
}

#[tokio::test]
async fn every_configuration_problem_is_reported_together() {
    let config = Config::from_toml_str(
        r#"
[client_ip]
trusted_proxies = ["10.0.0.0/33"]

[redis]
url = "http://not-redis"

[https]
redirect = true

[security_headers]
set = { "x-frame-options" = "bad\u0001value" }

[rate_limit]
[[rate_limit.policies]]
name = "zero"
key = "ip"
limit = 0
period_s = 1

[auth]
[[auth.api_keys]]
id = "k"
sha256 = "not-hex"

[[cache.rules]]
paths = ["no-slash"]
"#,
    )
    .expect("the shape is valid; the values are not");
    let err = Palisade::from_config(config)
        .await
        .expect_err("invalid values");
    let text = err.to_string();
    for key in [
        "client_ip.trusted_proxies[0]",
        "redis.url",
        "https.redirect",
        "security_headers.set.x-frame-options",
        "rate_limit.policies[0].limit",
        "auth.api_keys[0].sha256",
        "cache.rules[0].paths[0]",
    ] {
        assert!(
            err.problems().iter().any(|p| p.key.starts_with(key)),
            "{key} not reported in:\n{text}"
        );
    }
}

#[tokio::test]
async fn unknown_keys_in_every_section_are_reported_together() {
    let err = Config::from_toml_str(
        "[rate_limit]\nbackend = \"memory\"\nbakend = 1\n[auth]\nrelam = \"x\"\n[cache]\nttl = 5\n[https]\nallowed_host = []\n",
    )
    .unwrap_err();
    for key in [
        "rate_limit.bakend",
        "auth.relam",
        "cache.ttl",
        "https.allowed_host",
    ] {
        assert!(err.has_key(key), "{key} missing from {err}");
    }
}

/// Over a real socket hyper stops polling a body once its announced length is sent,
/// so a layer that waits for the body's end would never see it: the cache would never
/// store and the access log would report every response as aborted.
#[tokio::test]
async fn known_length_bodies_over_a_real_socket_are_cached_and_logged_as_completed() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let p = stack("[[cache.rules]]\npaths = [\"/items/{id}\"]\nttl_s = 60\n").await;
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let app = Router::new()
        .route(
            "/items/{id}",
            get(move || {
                let n = c.fetch_add(1, Ordering::SeqCst) + 1;
                async move { axum::Json(serde_json::json!({ "upstream_calls": n })) }
            }),
        )
        .layer(p.layer());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
    });

    let buf = capture_logs();
    let mut responses = Vec::new();
    for _ in 0..2 {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /items/1 HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        responses.push(out.to_ascii_lowercase());
    }
    server.abort();
    assert!(responses[0].contains("x-cache: miss"), "{}", responses[0]);
    assert!(responses[1].contains("x-cache: hit"), "{}", responses[1]);
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    let text = buf.text();
    let logs: Vec<&str> = text
        .lines()
        .filter(|l| l.contains(r#""url.path":"/items/1""#))
        .collect();
    assert_eq!(logs.len(), 2, "{text}");
    assert!(
        logs.iter().all(|l| l.contains("request completed")),
        "{logs:?}"
    );
}

#[derive(Clone, Default)]
struct LogBuf(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for LogBuf {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl LogBuf {
    fn text(&self) -> String {
        String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
    }
}

/// Captures palisade's JSON log lines of the whole test binary in one global buffer:
/// thread-local subscribers race with other tests' callsite registration, so the
/// global default is the reliable way; tests pick their own lines out of it.
fn capture_logs() -> LogBuf {
    static BUF: std::sync::OnceLock<LogBuf> = std::sync::OnceLock::new();
    BUF.get_or_init(|| {
        let buf = LogBuf::default();
        let writer = buf.clone();
        let sub = palisade::telemetry::json_subscriber(
            &palisade::config::LoggingConfig::default(),
            move || writer.clone(),
        )
        .unwrap();
        tracing::subscriber::set_global_default(sub).unwrap();
        buf
    })
    .clone()
}
