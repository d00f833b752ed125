//! Property tests of the parsers that read client input, driven through the public
//! stack (the parsers themselves are crate-private): arbitrary `Authorization`,
//! `x-api-key`, token segments, `Host`, `x-request-id`, `Cache-Control` and query
//! strings. Properties: never a panic or a 5xx, never a protected handler reached
//! without a valid credential, nothing accepted that the strict grammar rejects.
//!
//! Not yet here (see RELIABILITY.md): direct properties of cache-entry decoding
//! (round-trip, arbitrary bytes) and of cache-key building, which need a
//! `#[doc(hidden)]` accessor.
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

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::routing::get;
use http::{HeaderValue, Request};
use palisade::{Config, Palisade};
use proptest::prelude::*;
use tower::ServiceExt;

const CONFIG: &str = r#"
[https]
redirect = false
allowed_hosts = ["localhost", "api.example.com"]
[auth]
[[auth.api_keys]]
id = "ops-admin"
sha256 = "97c2c26c1d9b8f9db30939f90f8e31a709dc2438770bf4ca6abe75b3093ff9e1"
scopes = ["admin"]
[auth.jwt]
algorithms = ["HS256"]
secret_env = "CARGO_PKG_DESCRIPTION"
[[auth.rules]]
paths = ["/admin/*"]
require = "api_key"
scopes = ["admin"]
[[auth.rules]]
paths = ["/me"]
require = "jwt"
[cache]
backend = "memory"
[[cache.rules]]
paths = ["/items/{id}"]
[logging]
access_log = false
"#;

struct Fixture {
    rt: tokio::runtime::Runtime,
    app: Router,
    protected: Arc<AtomicUsize>,
}

fn fixture() -> Fixture {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let p = rt
        .block_on(Palisade::from_config(
            Config::from_toml_str(CONFIG).unwrap(),
        ))
        .unwrap();
    let protected = Arc::new(AtomicUsize::new(0));
    let (a, b) = (protected.clone(), protected.clone());
    let app = Router::new()
        .route("/hello", get(|| async { "hello" }))
        .route("/items/{id}", get(|| async { "item" }))
        .route(
            "/admin/stats",
            get(move || async move {
                a.fetch_add(1, Ordering::SeqCst);
                "stats"
            }),
        )
        .route(
            "/me",
            get(move || async move {
                b.fetch_add(1, Ordering::SeqCst);
                "me"
            }),
        )
        .layer(p.layer());
    Fixture { rt, app, protected }
}

fn send(
    f: &Fixture,
    path: &str,
    host: Option<HeaderValue>,
    h: Option<(&str, HeaderValue)>,
) -> (u16, http::HeaderMap) {
    let mut b = Request::get(path).extension(ConnectInfo(SocketAddr::from(([203, 0, 113, 1], 1))));
    b = b.header(
        "host",
        host.unwrap_or(HeaderValue::from_static("localhost")),
    );
    if let Some((k, v)) = h {
        b = b.header(k, v);
    }
    let res =
        f.rt.block_on(f.app.clone().oneshot(b.body(Body::empty()).unwrap()))
            .unwrap();
    (res.status().as_u16(), res.headers().clone())
}

/// Any byte string a `HeaderValue` can hold (no CR, LF or NUL).
fn header_bytes() -> impl Strategy<Value = HeaderValue> {
    prop::collection::vec(prop_oneof![9u8..=9, 32u8..=126, 128u8..=255], 0..300)
        .prop_filter_map("header value", |v| HeaderValue::from_bytes(&v).ok())
}

fn token_segment() -> impl Strategy<Value = String> {
    "[A-Za-z0-9_=+/-]{0,80}"
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn arbitrary_authorization_never_reaches_the_jwt_route(v in header_bytes()) {
        let f = fixture();
        let (s, _) = send(&f, "/me", None, Some(("authorization", v)));
        prop_assert!(s == 400 || s == 401, "status {s}");
        prop_assert_eq!(f.protected.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn arbitrary_token_segments_are_never_accepted(
        segs in prop::collection::vec(token_segment(), 0..7)
    ) {
        let f = fixture();
        let v = HeaderValue::try_from(format!("Bearer {}", segs.join("."))).unwrap();
        let (s, _) = send(&f, "/me", None, Some(("authorization", v)));
        prop_assert!(s == 400 || s == 401, "status {s}");
        prop_assert_eq!(f.protected.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn arbitrary_api_keys_never_reach_the_admin_route(v in header_bytes()) {
        let f = fixture();
        let (s, _) = send(&f, "/admin/stats", None, Some(("x-api-key", v)));
        prop_assert!(s == 400 || s == 401, "status {s}");
        prop_assert_eq!(f.protected.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn arbitrary_hosts_pass_only_when_allow_listed(v in prop_oneof![
        header_bytes(),
        "(localhost|api\\.example\\.com|LOCALHOST|evil\\.com)(:[0-9]{0,6})?[./@]?"
            .prop_map(|s| HeaderValue::try_from(s).unwrap()),
    ]) {
        let f = fixture();
        let raw = v.as_bytes().to_vec();
        let (s, _) = send(&f, "/hello", Some(v), None);
        prop_assert!(s == 200 || s == 400 || s == 421, "status {s}");
        if s == 200 {
            // Strict grammar: name[:port], the name allow-listed (case-insensitive).
            let text = String::from_utf8(raw).unwrap().to_ascii_lowercase();
            let (name, port) = match text.split_once(':') {
                Some((n, p)) => (n.to_owned(), Some(p.to_owned())),
                None => (text.clone(), None),
            };
            // A fully qualified name's trailing dot names the same host.
            let name = name.strip_suffix('.').unwrap_or(&name);
            prop_assert!(name == "localhost" || name == "api.example.com", "{text}");
            if let Some(p) = port {
                // RFC 3986 / RFC 9110: port = *DIGIT, so an empty port is valid.
                prop_assert!(p.is_empty() || p.parse::<u16>().is_ok(), "{text}");
            }
        }
    }

    #[test]
    fn request_ids_are_kept_only_when_well_formed(v in header_bytes()) {
        let f = fixture();
        let raw = v.as_bytes().to_vec();
        let (s, h) = send(&f, "/hello", None, Some(("x-request-id", v)));
        prop_assert_eq!(s, 200);
        let id = h.get("x-request-id").expect("an id is always sent").as_bytes();
        prop_assert!(!id.is_empty() && id.len() <= 128);
        prop_assert!(id.iter().all(|b| b.is_ascii_graphic()), "{:?}", id);
        if id == raw.as_slice() {
            prop_assert!(raw.len() <= 128 && raw.iter().all(|b| b.is_ascii_graphic()));
        }
    }

    #[test]
    fn arbitrary_cache_control_and_queries_never_fail(
        cc in header_bytes(),
        q in "[ -~]{0,200}",
    ) {
        let f = fixture();
        let q: String = q.chars().filter(|c| !matches!(c, ' ' | '#' | '"' | '<' | '>' | '\\' | '^' | '`' | '{' | '|' | '}')).collect();
        let path = format!("/items/1?{q}");
        if path.parse::<http::Uri>().is_ok() {
            let (s, _) = send(&f, &path, None, Some(("cache-control", cc.clone())));
            prop_assert_eq!(s, 200);
            let (s, _) = send(&f, &path, None, Some(("cache-control", cc)));
            prop_assert_eq!(s, 200);
        }
    }
}
