//! Security headers, HSTS, HTTPS redirect and host validation, through the full
//! `Palisade` stack (client identity included) and through the layers alone.
#![cfg(all(feature = "security-headers", feature = "https"))]
#![allow(clippy::unwrap_used)] // test helpers

use std::net::SocketAddr;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use http::{HeaderMap, HeaderValue, Request, StatusCode};
use palisade::client_ip::ConnectionTls;
use palisade::config::security_headers::Profile;
use palisade::problem::{Problem, Rejection};
use palisade::security_headers::{CspNonce, SecurityHeadersLayer};
use palisade::{Config, Palisade};
use tower::ServiceExt;

const CLIENT: [u8; 4] = [203, 0, 113, 9];
const PROXY: [u8; 4] = [10, 0, 0, 1];

fn app_routes() -> Router {
    Router::new()
        .route("/ok", get(|| async { "ok" }))
        .route(
            "/items/{id}",
            get(|| async { "item" }).post(|| async { "posted" }),
        )
        .route(
            "/teapot",
            get(|| async { (StatusCode::IM_A_TEAPOT, "short and stout") }),
        )
        .route(
            "/boom",
            get(|| async { (StatusCode::INTERNAL_SERVER_ERROR, "boom") }),
        )
        .route(
            "/problem",
            get(|| async {
                Problem::new(StatusCode::FORBIDDEN)
                    .rejection("auth", "insufficient_scope")
                    .into_response()
            }),
        )
        .route(
            "/leaky",
            get(|| async {
                let mut h = HeaderMap::new();
                h.insert("server", HeaderValue::from_static("nginx/1.2.3"));
                h.insert("x-powered-by", HeaderValue::from_static("PHP/5.4"));
                (h, "leaky")
            }),
        )
        .route(
            "/framed",
            get(|| async {
                let mut h = HeaderMap::new();
                h.append("x-frame-options", HeaderValue::from_static("SAMEORIGIN"));
                h.append("x-frame-options", HeaderValue::from_static("ALLOWALL"));
                h.insert(
                    "content-security-policy",
                    HeaderValue::from_static("frame-ancestors https://partner.example"),
                );
                (h, "framed")
            }),
        )
        .route(
            "/page",
            get(|nonce: CspNonce| async move {
                Html(format!("<script nonce=\"{nonce}\">go()</script>"))
            }),
        )
        .route("/health", get(|| async { "alive" }))
}

async fn stack(toml: &str) -> Router {
    let config = Config::from_toml_str(toml).expect("test config parses");
    let palisade = Palisade::from_config(config)
        .await
        .expect("test config is valid");
    app_routes().layer(palisade.layer())
}

/// A request as a server started with `into_make_service_with_connect_info` sees it.
fn req(method: &str, uri: &str, peer: [u8; 4], headers: &[(&str, &str)]) -> Request<Body> {
    let mut b = Request::builder().method(method).uri(uri);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let mut r = b.body(Body::empty()).unwrap();
    r.extensions_mut()
        .insert(ConnectInfo(SocketAddr::from((peer, 40000))));
    r
}

fn get_from(uri: &str, host: &str) -> Request<Body> {
    req("GET", uri, CLIENT, &[("host", host)])
}

async fn send(app: &Router, r: Request<Body>) -> Response {
    app.clone().oneshot(r).await.unwrap()
}

async fn body(res: Response) -> String {
    String::from_utf8(
        axum::body::to_bytes(res.into_body(), 1 << 16)
            .await
            .unwrap()
            .to_vec(),
    )
    .unwrap()
}

fn one(res: &Response, name: &str) -> Option<String> {
    let all: Vec<_> = res.headers().get_all(name).iter().collect();
    assert!(all.len() <= 1, "{name} sent {} times", all.len());
    all.first().map(|v| v.to_str().unwrap().to_owned())
}

const API_HEADERS: &[(&str, &str)] = &[
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

fn assert_api_headers(res: &Response, what: &str) {
    for (name, value) in API_HEADERS {
        assert_eq!(
            one(res, name).as_deref(),
            Some(*value),
            "{name} on {what} ({})",
            res.status()
        );
    }
    assert_eq!(one(res, "server"), None, "{what}");
    assert_eq!(one(res, "x-powered-by"), None, "{what}");
}

// ---------------------------------------------------------------------------
// Security headers

#[tokio::test]
async fn api_headers_on_2xx_4xx_5xx_404_and_palisade_rejections() {
    let app = stack(
        r#"
        [https]
        allowed_hosts = ["api.example.com"]
        redirect = false
        "#,
    )
    .await;
    for path in ["/ok", "/teapot", "/boom", "/nope", "/problem", "/leaky"] {
        let res = send(&app, get_from(path, "api.example.com")).await;
        assert_api_headers(&res, path);
        // Plain HTTP: never HSTS.
        assert_eq!(one(&res, "strict-transport-security"), None);
    }
    let res = send(&app, get_from("/boom", "api.example.com")).await;
    assert_eq!(res.status(), 500);
    let res = send(&app, get_from("/nope", "api.example.com")).await;
    assert_eq!(res.status(), 404);
    // palisade's own rejections: 421 unknown host, 400 bad host.
    let res = send(&app, get_from("/ok", "evil.com")).await;
    assert_eq!(res.status(), StatusCode::MISDIRECTED_REQUEST);
    assert_api_headers(&res, "421");
    let res = send(&app, get_from("/ok", "bad host")).await;
    assert_eq!(res.status(), 400);
    assert_api_headers(&res, "400");
}

#[tokio::test]
async fn palisade_redirects_and_reject_mode_carry_the_headers() {
    let app = stack("[https]\ncanonical_host = \"api.example.com\"\n").await;
    let res = send(&app, get_from("/ok", "api.example.com")).await;
    assert_eq!(res.status(), 308);
    assert_api_headers(&res, "308");
    let app = stack("[https]\nredirect = true\nmode = \"reject\"\n").await;
    let res = send(&app, get_from("/ok", "anything")).await;
    assert_eq!(res.status(), 400);
    assert_api_headers(&res, "400 reject");
}

/// helmet's defaults, checked against helmetjs/helmet at 8.3.0 (commit 75f1a98,
/// 2026-07-11; `index.ts` and `middlewares/*/index.ts`, read through the search tool):
/// helmet sets exactly these headers and removes `X-Powered-By`.
const HELMET_8_3_0_DEFAULTS: &[(&str, &str)] = &[
    (
        "content-security-policy",
        "default-src 'self';base-uri 'self';font-src 'self' https: data:;form-action 'self';frame-ancestors 'self';img-src 'self' data:;object-src 'none';script-src 'self';script-src-attr 'none';style-src 'self' https: 'unsafe-inline';upgrade-insecure-requests",
    ),
    ("cross-origin-opener-policy", "same-origin"),
    ("cross-origin-resource-policy", "same-origin"),
    ("origin-agent-cluster", "?1"),
    ("referrer-policy", "no-referrer"),
    (
        "strict-transport-security",
        "max-age=31536000; includeSubDomains",
    ),
    ("x-content-type-options", "nosniff"),
    ("x-dns-prefetch-control", "off"),
    ("x-download-options", "noopen"),
    ("x-frame-options", "SAMEORIGIN"),
    ("x-permitted-cross-domain-policies", "none"),
    ("x-xss-protection", "0"),
];

#[tokio::test]
async fn web_profile_is_helmets_defaults_header_by_header() {
    let app = stack("[security_headers]\nprofile = \"web\"\n").await;
    let mut r = get_from("/leaky", "example.com");
    // helmet sends HSTS regardless of scheme; palisade only over HTTPS (RFC 6797 §7.2),
    // so compare on an HTTPS request.
    r.extensions_mut().insert(ConnectionTls);
    let res = send(&app, r).await;
    let mut got: Vec<(String, String)> = res
        .headers()
        .iter()
        // Headers other layers of the stack add (the request id) are not helmet's.
        .filter(|(n, _)| *n != "content-type" && *n != "content-length" && *n != "x-request-id")
        .map(|(n, v)| (n.as_str().to_owned(), v.to_str().unwrap().to_owned()))
        .collect();
    got.sort();
    let mut want: Vec<(String, String)> = HELMET_8_3_0_DEFAULTS
        .iter()
        .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
        .collect();
    want.sort();
    for (w, g) in want.iter().zip(&got) {
        assert_eq!(w, g);
    }
    assert_eq!(got.len(), want.len(), "extra or missing headers: {got:?}");
    // helmet's one removal (and palisade also drops `Server`).
    assert!(res.headers().get("x-powered-by").is_none());
}

#[tokio::test]
async fn handler_wins_unless_configured_to_override_and_never_duplicates() {
    let app = stack("").await;
    let res = send(&app, get_from("/framed", "x")).await;
    let xfo: Vec<_> = res.headers().get_all("x-frame-options").iter().collect();
    assert_eq!(
        xfo,
        ["SAMEORIGIN", "ALLOWALL"],
        "handler's own values kept as is"
    );
    assert_eq!(
        one(&res, "content-security-policy").as_deref(),
        Some("frame-ancestors https://partner.example")
    );
    assert_eq!(
        one(&res, "x-content-type-options").as_deref(),
        Some("nosniff")
    );

    let app = stack(
        r#"
        [security_headers]
        override_headers = ["x-frame-options", "content-security-policy"]
        "#,
    )
    .await;
    let res = send(&app, get_from("/framed", "x")).await;
    assert_eq!(one(&res, "x-frame-options").as_deref(), Some("DENY"));
    assert_eq!(
        one(&res, "content-security-policy").as_deref(),
        Some("default-src 'none'; frame-ancestors 'none'")
    );
}

#[tokio::test]
async fn set_remove_and_opt_in_headers() {
    let app = stack(
        r#"
        [security_headers]
        set = { "permissions-policy" = "camera=(), geolocation=()", "cross-origin-embedder-policy" = "require-corp", "Referrer-Policy" = "strict-origin-when-cross-origin", "server" = "palisade" }
        remove = ["x-dns-prefetch-control", "x-aspnet-version"]
        "#,
    )
    .await;
    let mut r = get_from("/leaky", "x");
    r.extensions_mut().insert(ConnectionTls);
    let res = send(&app, r).await;
    assert_eq!(
        one(&res, "permissions-policy").as_deref(),
        Some("camera=(), geolocation=()")
    );
    assert_eq!(
        one(&res, "cross-origin-embedder-policy").as_deref(),
        Some("require-corp")
    );
    assert_eq!(
        one(&res, "referrer-policy").as_deref(),
        Some("strict-origin-when-cross-origin")
    );
    assert_eq!(one(&res, "x-dns-prefetch-control"), None);
    assert_eq!(one(&res, "x-powered-by"), None);
    // A `set` header is no longer stripped; but the handler's value wins, as always.
    assert_eq!(one(&res, "server").as_deref(), Some("nginx/1.2.3"));
}

#[tokio::test]
async fn per_route_opt_out() {
    let app = stack("[security_headers]\nexclude_paths = [\"/items/{id}\"]\n").await;
    let res = send(&app, get_from("/items/7", "x")).await;
    assert_eq!(res.status(), 200);
    assert_eq!(one(&res, "x-frame-options"), None);
    assert_eq!(one(&res, "content-security-policy"), None);
    let res = send(&app, get_from("/ok", "x")).await;
    assert_api_headers(&res, "/ok next to an excluded route");
}

#[tokio::test]
async fn hsts_only_for_requests_judged_https() {
    let app = stack(
        r#"
        [client_ip]
        trusted_proxies = ["10.0.0.0/8"]
        "#,
    )
    .await;
    let hsts = "max-age=31536000; includeSubDomains";
    // Plain connection.
    let res = send(&app, get_from("/ok", "x")).await;
    assert_eq!(one(&res, "strict-transport-security"), None);
    // Spoofed by the client itself.
    let r = req(
        "GET",
        "/ok",
        CLIENT,
        &[("host", "x"), ("x-forwarded-proto", "https")],
    );
    assert_eq!(one(&send(&app, r).await, "strict-transport-security"), None);
    // Written by our trusted proxy.
    let r = req(
        "GET",
        "/ok",
        PROXY,
        &[("host", "x"), ("x-forwarded-proto", "https")],
    );
    assert_eq!(
        one(&send(&app, r).await, "strict-transport-security").as_deref(),
        Some(hsts)
    );
    // TLS terminated in-process.
    let mut r = get_from("/ok", "x");
    r.extensions_mut().insert(ConnectionTls);
    assert_eq!(
        one(&send(&app, r).await, "strict-transport-security").as_deref(),
        Some(hsts)
    );

    let app = stack("[security_headers]\nhsts_max_age_s = 63072000\nhsts_preload = true\n").await;
    let mut r = get_from("/ok", "x");
    r.extensions_mut().insert(ConnectionTls);
    assert_eq!(
        one(&send(&app, r).await, "strict-transport-security").as_deref(),
        Some("max-age=63072000; includeSubDomains; preload")
    );
}

#[tokio::test]
async fn csp_nonce_is_fresh_per_request_and_marks_the_response() {
    let app = stack("[security_headers]\nprofile = \"web\"\ncsp_nonce = true\n").await;
    let mut seen = Vec::new();
    for _ in 0..2 {
        let res = send(&app, get_from("/page", "x")).await;
        assert_eq!(res.status(), 200);
        let marker = *res
            .extensions()
            .get::<CspNonce>()
            .expect("nonce marker in the response extensions");
        let csp = one(&res, "content-security-policy").unwrap();
        let html = body(res).await;
        let nonce = html
            .split("nonce=\"")
            .nth(1)
            .and_then(|s| s.split('"').next())
            .unwrap()
            .to_owned();
        assert_eq!(nonce, marker.as_str());
        assert!(
            csp.contains(&format!(";script-src 'self' 'nonce-{nonce}';")),
            "{csp}"
        );
        assert!(
            csp.contains(&format!("'unsafe-inline' 'nonce-{nonce}';")),
            "{csp}"
        );
        // 128 bits: 16 bytes, base64.
        assert_eq!(nonce.len(), 24);
        seen.push(nonce);
    }
    assert_ne!(seen[0], seen[1]);
    // Routes that do not use the nonce still get a nonce'd CSP and the marker.
    let res = send(&app, get_from("/ok", "x")).await;
    assert!(res.extensions().get::<CspNonce>().is_some());
}

#[tokio::test]
async fn nonce_extractor_without_the_layer_is_a_server_error_not_a_panic() {
    let app = app_routes().layer(SecurityHeadersLayer::api());
    let res = send(&app, get_from("/page", "x")).await;
    assert_eq!(res.status(), 500);
    assert_eq!(one(&res, "x-frame-options").as_deref(), Some("DENY"));
}

#[tokio::test]
async fn layer_alone_with_builder() {
    let layer = SecurityHeadersLayer::builder(Profile::Off)
        .set("x-content-type-options", "nosniff")
        .build()
        .unwrap();
    let app = app_routes().layer(layer);
    let res = send(&app, get_from("/leaky", "x")).await;
    assert_eq!(
        one(&res, "x-content-type-options").as_deref(),
        Some("nosniff")
    );
    assert_eq!(one(&res, "x-frame-options"), None);
    // `off` removes nothing it was not told to.
    assert_eq!(one(&res, "server").as_deref(), Some("nginx/1.2.3"));
}

#[tokio::test]
async fn invalid_values_fail_start_up_naming_every_key() {
    let config = Config::from_toml_str(
        r#"
        [security_headers]
        set = { "content-security-policy" = "default-src self; script-src 'self'", "x-frame-options" = "ALLOW-FROM https://a", "permissions-policy" = "camera" }
        csp_nonce = true
        [https]
        allowed_hosts = ["*", "ok.example.com", "http://x.example.com/"]
        status = 302
        "#,
    )
    .unwrap();
    let err = Palisade::from_config(config).await.unwrap_err();
    for key in [
        "security_headers.set.content-security-policy",
        "security_headers.set.x-frame-options",
        "security_headers.set.permissions-policy",
        "https.allowed_hosts[0]",
        "https.allowed_hosts[2]",
        "https.status",
    ] {
        assert!(err.has_key(key), "{key} missing from:\n{err}");
    }
    assert!(err.to_string().contains("must be quoted"), "{err}");
    // A CR/LF cannot even be smuggled into a value through TOML escapes.
    let config = Config::from_toml_str(
        "[security_headers]\nset = { \"x-custom\" = \"a\\r\\nset-cookie: x=1\" }\n",
    )
    .unwrap();
    let err = Palisade::from_config(config).await.unwrap_err();
    assert!(err.has_key("security_headers.set.x-custom"), "{err}");
}

// ---------------------------------------------------------------------------
// HTTPS redirect and hosts

const HOSTS: &str = r#"
[https]
allowed_hosts = ["api.example.com", "*.example.net", "[::1]", "192.0.2.10"]
"#;

fn location(res: &Response) -> Option<String> {
    one(res, "location")
}

#[tokio::test]
async fn plain_http_is_redirected_with_path_and_query() {
    let app = stack(HOSTS).await;
    let res = send(&app, get_from("/items/1?x=1&y=%20", "api.example.com")).await;
    assert_eq!(res.status(), StatusCode::PERMANENT_REDIRECT);
    assert_eq!(
        location(&res).as_deref(),
        Some("https://api.example.com/items/1?x=1&y=%20")
    );
    assert_eq!(
        res.extensions().get::<Rejection>(),
        Some(&Rejection {
            layer: "https",
            reason: "redirect"
        })
    );
    assert_eq!(one(&res, "strict-transport-security"), None);
    // Case, trailing dot and the plain-HTTP port are normalized away.
    let res = send(&app, get_from("/ok", "API.Example.COM.:8080")).await;
    assert_eq!(
        location(&res).as_deref(),
        Some("https://api.example.com/ok")
    );
    // Wildcard subdomains.
    let res = send(&app, get_from("/ok", "eu.api.example.net")).await;
    assert_eq!(
        location(&res).as_deref(),
        Some("https://eu.api.example.net/ok")
    );
    // POST keeps its method with 308.
    let res = send(
        &app,
        req("POST", "/items/1", CLIENT, &[("host", "api.example.com")]),
    )
    .await;
    assert_eq!(res.status(), 308);
}

#[tokio::test]
async fn protocol_relative_paths_stay_on_the_host() {
    let app = stack(HOSTS).await;
    for (path, want) in [
        ("//evil.com/x", "https://api.example.com//evil.com/x"),
        ("///evil.com", "https://api.example.com///evil.com"),
        ("/%2F%2Fevil.com", "https://api.example.com/%2F%2Fevil.com"),
        ("/@evil.com", "https://api.example.com/@evil.com"),
    ] {
        let res = send(&app, get_from(path, "api.example.com")).await;
        assert_eq!(location(&res).as_deref(), Some(want), "{path}");
    }
}

/// (request target, headers, expected status).
type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], StatusCode);

#[tokio::test]
async fn host_attacks_never_redirect() {
    let app = stack(HOSTS).await;
    let cases: &[Case] = &[
        (
            "/x",
            &[("host", "evil.com")],
            StatusCode::MISDIRECTED_REQUEST,
        ),
        (
            "/x",
            &[("host", "EVIL.com")],
            StatusCode::MISDIRECTED_REQUEST,
        ),
        (
            "/x",
            &[("host", "evil.com:443")],
            StatusCode::MISDIRECTED_REQUEST,
        ),
        (
            "/x",
            &[("host", "evil.com.")],
            StatusCode::MISDIRECTED_REQUEST,
        ),
        (
            "/x",
            &[("host", "api.example.com.evil.com")],
            StatusCode::MISDIRECTED_REQUEST,
        ),
        (
            "/x",
            &[("host", "example.net")],
            StatusCode::MISDIRECTED_REQUEST,
        ),
        (
            "/x",
            &[("host", "badexample.net")],
            StatusCode::MISDIRECTED_REQUEST,
        ),
        // IDN lookalike of api.example.com, in punycode: a different name.
        (
            "/x",
            &[("host", "xn--pi-7ka.example.com")],
            StatusCode::MISDIRECTED_REQUEST,
        ),
        (
            "/x",
            &[("host", "api.example.com@evil.com")],
            StatusCode::BAD_REQUEST,
        ),
        (
            "/x",
            &[("host", "api.example.com:pass@evil.com")],
            StatusCode::BAD_REQUEST,
        ),
        ("/x", &[("host", "")], StatusCode::BAD_REQUEST),
        ("/x", &[], StatusCode::BAD_REQUEST),
        (
            "/x",
            &[("host", "api.example.com"), ("host", "evil.com")],
            StatusCode::BAD_REQUEST,
        ),
        (
            "/x",
            &[("host", "api.example.com"), ("host", "api.example.com")],
            StatusCode::BAD_REQUEST,
        ),
        (
            "/x",
            &[("host", "api.example.com evil.com")],
            StatusCode::BAD_REQUEST,
        ),
        (
            "/x",
            &[("host", "api.example.com\tevil.com")],
            StatusCode::BAD_REQUEST,
        ),
        (
            "/x",
            &[("host", "evil.com/api.example.com")],
            StatusCode::BAD_REQUEST,
        ),
        (
            "/x",
            &[("host", "api.example.com:99999")],
            StatusCode::BAD_REQUEST,
        ),
        // Absolute-form target naming another host than Host.
        (
            "http://evil.com/x",
            &[("host", "api.example.com")],
            StatusCode::BAD_REQUEST,
        ),
        // Absolute-form target alone: its authority is the host, and it is checked.
        ("http://evil.com/x", &[], StatusCode::MISDIRECTED_REQUEST),
        (
            "http://api.example.com@evil.com/x",
            &[],
            StatusCode::BAD_REQUEST,
        ),
    ];
    for (uri, headers, status) in cases {
        let res = send(&app, req("GET", uri, CLIENT, headers)).await;
        assert_eq!(res.status(), *status, "{uri} {headers:?}");
        assert_eq!(location(&res), None, "{uri} {headers:?}");
        assert_eq!(
            one(&res, "content-type").as_deref(),
            Some("application/problem+json")
        );
        let reason = res.extensions().get::<Rejection>().unwrap().reason;
        assert_ne!(reason, "redirect");
        let text = body(res).await;
        assert!(
            !text.contains("evil"),
            "the body never reflects the host: {text}"
        );
    }
    // Non-ASCII (an IDN in UTF-8) is not a valid Host value.
    let mut r = get_from("/x", "x");
    r.headers_mut().insert(
        "host",
        HeaderValue::from_bytes("аpi.example.com".as_bytes()).unwrap(),
    );
    let res = send(&app, r).await;
    assert_eq!(res.status(), 400);
    // Absolute-form that agrees with Host is fine.
    let res = send(
        &app,
        req(
            "GET",
            "http://api.example.com/x?q",
            CLIENT,
            &[("host", "api.example.com")],
        ),
    )
    .await;
    assert_eq!(
        location(&res).as_deref(),
        Some("https://api.example.com/x?q")
    );
}

#[tokio::test]
async fn ipv6_and_ipv4_literal_hosts() {
    let app = stack(HOSTS).await;
    let res = send(&app, get_from("/ok?a", "[0:0:0:0:0:0:0:1]:8080")).await;
    assert_eq!(res.status(), 308);
    assert_eq!(location(&res).as_deref(), Some("https://[::1]/ok?a"));
    let res = send(&app, get_from("/ok", "192.0.2.10")).await;
    assert_eq!(location(&res).as_deref(), Some("https://192.0.2.10/ok"));
    for (host, status) in [
        ("[::2]", StatusCode::MISDIRECTED_REQUEST),
        ("192.0.2.11", StatusCode::MISDIRECTED_REQUEST),
        ("::1", StatusCode::BAD_REQUEST),
        ("[::1", StatusCode::BAD_REQUEST),
        ("[fe80::1%25eth0]", StatusCode::BAD_REQUEST),
        ("[::1]evil.com", StatusCode::BAD_REQUEST),
    ] {
        let res = send(&app, get_from("/ok", host)).await;
        assert_eq!(res.status(), status, "{host}");
        assert_eq!(location(&res), None, "{host}");
    }
}

#[tokio::test]
async fn https_port_and_canonical_host() {
    let app = stack(
        r#"
        [https]
        allowed_hosts = ["api.example.com"]
        https_port = 8443
        "#,
    )
    .await;
    let res = send(&app, get_from("/ok", "api.example.com:8080")).await;
    assert_eq!(
        location(&res).as_deref(),
        Some("https://api.example.com:8443/ok")
    );

    // A canonical host alone: every plain-HTTP request goes there, whatever its Host.
    let app = stack("[https]\ncanonical_host = \"www.example.com\"\n").await;
    for host in ["evil.com", "www.example.com", "a@b"] {
        let res = send(&app, get_from("/p?q=1", host)).await;
        assert_eq!(res.status(), 308);
        assert_eq!(
            location(&res).as_deref(),
            Some("https://www.example.com/p?q=1")
        );
    }
}

#[tokio::test]
async fn status_is_configurable_and_301_keeps_methods_safe() {
    let app = stack(&format!("{HOSTS}status = 307\n")).await;
    let res = send(&app, get_from("/ok", "api.example.com")).await;
    assert_eq!(res.status(), StatusCode::TEMPORARY_REDIRECT);
    let app = stack(&format!("{HOSTS}status = 301\n")).await;
    let res = send(&app, get_from("/ok", "api.example.com")).await;
    assert_eq!(res.status(), StatusCode::MOVED_PERMANENTLY);
    let res = send(
        &app,
        req("POST", "/items/1", CLIENT, &[("host", "api.example.com")]),
    )
    .await;
    assert_eq!(res.status(), StatusCode::PERMANENT_REDIRECT);
}

#[tokio::test]
async fn reject_mode_answers_400_problem() {
    let app = stack(&format!("{HOSTS}mode = \"reject\"\n")).await;
    let res = send(
        &app,
        req("POST", "/items/1", CLIENT, &[("host", "api.example.com")]),
    )
    .await;
    assert_eq!(res.status(), 400);
    assert_eq!(location(&res), None);
    assert_eq!(
        res.extensions().get::<Rejection>().map(|r| r.reason),
        Some("plain_http")
    );
    assert_eq!(one(&res, "cache-control").as_deref(), Some("no-store"));
    let v: serde_json::Value = serde_json::from_str(&body(res).await).unwrap();
    assert_eq!(v["status"], 400);
    // Unknown hosts are still 421 in reject mode.
    let res = send(&app, get_from("/ok", "evil.com")).await;
    assert_eq!(res.status(), 421);
}

#[tokio::test]
async fn spoofed_proto_from_untrusted_peer_is_still_redirected() {
    let app = stack(&format!(
        "{HOSTS}\n[client_ip]\ntrusted_proxies = [\"10.0.0.0/8\"]\n"
    ))
    .await;
    for spoof in [
        ("x-forwarded-proto", "https"),
        ("x-forwarded-proto", "http, https"),
        ("forwarded", "for=1.2.3.4;proto=https"),
    ] {
        let r = req("GET", "/ok", CLIENT, &[("host", "api.example.com"), spoof]);
        let res = send(&app, r).await;
        assert_eq!(res.status(), 308, "{spoof:?}");
        assert_eq!(one(&res, "strict-transport-security"), None);
    }
    // From the trusted proxy: served, with HSTS.
    let r = req(
        "GET",
        "/ok",
        PROXY,
        &[
            ("host", "api.example.com"),
            ("x-forwarded-for", "198.51.100.7"),
            ("x-forwarded-proto", "https"),
        ],
    );
    let res = send(&app, r).await;
    assert_eq!(res.status(), 200);
    assert_eq!(
        one(&res, "strict-transport-security").as_deref(),
        Some("max-age=31536000; includeSubDomains")
    );
    // The proxy saying "http" (or garbage) is redirected.
    for proto in ["http", "gopher"] {
        let r = req(
            "GET",
            "/ok",
            PROXY,
            &[("host", "api.example.com"), ("x-forwarded-proto", proto)],
        );
        assert_eq!(send(&app, r).await.status(), 308, "{proto}");
    }
}

#[tokio::test]
async fn forwarded_host_only_from_trusted_proxies_and_still_checked() {
    let base = format!("{HOSTS}\n[client_ip]\ntrusted_proxies = [\"10.0.0.0/8\"]\n");
    // Off by default: X-Forwarded-Host is ignored even from the proxy.
    let app = stack(&base).await;
    let r = req(
        "GET",
        "/ok",
        PROXY,
        &[
            ("host", "api.example.com"),
            ("x-forwarded-host", "eu.example.net"),
        ],
    );
    assert_eq!(
        location(&send(&app, r).await).as_deref(),
        Some("https://api.example.com/ok")
    );

    let app = stack(&base.replace("[https]", "[https]\ntrust_forwarded_host = true")).await;
    // From the proxy: used, and allow-listed.
    let r = req(
        "GET",
        "/ok",
        PROXY,
        &[
            ("host", "backend:8080"),
            ("x-forwarded-host", "evil.com, eu.example.net"),
        ],
    );
    assert_eq!(
        location(&send(&app, r).await).as_deref(),
        Some("https://eu.example.net/ok")
    );
    let r = req(
        "GET",
        "/ok",
        PROXY,
        &[
            ("host", "api.example.com"),
            ("x-forwarded-host", "evil.com"),
        ],
    );
    let res = send(&app, r).await;
    assert_eq!(res.status(), 421);
    assert_eq!(location(&res), None);
    // From a client: ignored.
    let r = req(
        "GET",
        "/ok",
        CLIENT,
        &[
            ("host", "api.example.com"),
            ("x-forwarded-host", "evil.com"),
        ],
    );
    assert_eq!(
        location(&send(&app, r).await).as_deref(),
        Some("https://api.example.com/ok")
    );
}

/// With `client_ip.header = "forwarded"` the proxy writes RFC 7239 `Forwarded`, so the
/// forwarded host is its `host=`; an `X-Forwarded-Host` is the client's own (the proxy
/// does not rewrite it) and is ignored.
#[tokio::test]
async fn forwarded_host_comes_from_the_configured_header_family() {
    let app = stack(&format!(
        "{}\n[client_ip]\ntrusted_proxies = [\"10.0.0.0/8\"]\nheader = \"forwarded\"\n",
        HOSTS.replace("[https]", "[https]\ntrust_forwarded_host = true")
    ))
    .await;
    let from = |peer, headers: &[(&str, &str)]| req("GET", "/ok", peer, headers);
    // (what, peer, headers, expected Location, expected status)
    type Case<'a> = (
        &'a str,
        [u8; 4],
        &'a [(&'a str, &'a str)],
        Option<&'a str>,
        u16,
    );
    let cases: [Case; 6] = [
        (
            "host= of the proxy's element",
            PROXY,
            &[
                ("host", "backend:8080"),
                ("forwarded", "for=203.0.113.7;host=eu.example.net"),
            ],
            Some("https://eu.example.net/ok"),
            308,
        ),
        (
            "X-Forwarded-Host smuggled past a Forwarded proxy",
            PROXY,
            &[
                ("host", "api.example.com"),
                ("x-forwarded-host", "evil.com"),
            ],
            Some("https://api.example.com/ok"),
            308,
        ),
        (
            "the right-most element wins",
            PROXY,
            &[
                ("host", "backend:8080"),
                ("forwarded", "for=198.51.100.1;host=evil.com"),
                ("forwarded", "for=203.0.113.7;host=\"eu.example.net\""),
            ],
            Some("https://eu.example.net/ok"),
            308,
        ),
        (
            "no host= in the proxy's element: nothing further left is believed",
            PROXY,
            &[
                ("host", "api.example.com"),
                ("forwarded", "host=evil.com, for=203.0.113.7"),
            ],
            Some("https://api.example.com/ok"),
            308,
        ),
        (
            "a forwarded host is still allow-listed",
            PROXY,
            &[
                ("host", "api.example.com"),
                ("forwarded", "for=203.0.113.7;host=evil.com"),
            ],
            None,
            421,
        ),
        (
            "from a client: ignored",
            CLIENT,
            &[
                ("host", "api.example.com"),
                ("forwarded", "for=203.0.113.7;host=evil.com"),
            ],
            Some("https://api.example.com/ok"),
            308,
        ),
    ];
    for (what, peer, headers, want_location, want_status) in cases {
        let res = send(&app, from(peer, headers)).await;
        assert_eq!(res.status(), want_status, "{what}");
        assert_eq!(location(&res).as_deref(), want_location, "{what}");
    }
}

#[tokio::test]
async fn exempt_paths_are_never_redirected_nor_host_checked() {
    let app = stack(HOSTS).await;
    let res = send(&app, get_from("/health", "10.1.2.3:8080")).await;
    assert_eq!(res.status(), 200);
    assert_eq!(body(res).await, "alive");
    let app = stack(&format!("{HOSTS}exempt_paths = [\"/items/*\"]\n")).await;
    let res = send(&app, get_from("/items/3", "evil.com")).await;
    assert_eq!(res.status(), 200);
    let res = send(&app, get_from("/health", "api.example.com")).await;
    assert_eq!(res.status(), 308, "replacing the list drops the defaults");
}

#[tokio::test]
async fn host_validation_works_with_redirect_off() {
    let app = stack(&format!("{HOSTS}redirect = false\n")).await;
    let res = send(&app, get_from("/ok", "api.example.com")).await;
    assert_eq!(res.status(), 200);
    let res = send(&app, get_from("/ok", "evil.com")).await;
    assert_eq!(res.status(), 421);
}

#[tokio::test]
async fn default_config_serves_the_quickstart_over_plain_http() {
    let app = stack("").await;
    let res = send(&app, get_from("/ok", "127.0.0.1:8080")).await;
    assert_eq!(res.status(), 200);
    assert_api_headers(&res, "quickstart");
    let config = Config::from_toml_str("[https]\nredirect = true\n").unwrap();
    let err = Palisade::from_config(config).await.unwrap_err();
    assert!(err.has_key("https.redirect"), "{err}");
}

/// Header smuggling on the wire (CRLF, obs-fold, repeated Host) against a real server.
#[tokio::test]
async fn raw_wire_host_attacks() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let config = Config::from_toml_str(HOSTS).unwrap();
    let palisade = Palisade::from_config(config).await.unwrap();
    let app = app_routes().layer(palisade.layer());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
    });
    let attacks: &[&str] = &[
        "GET /x HTTP/1.1\r\nHost: api.example.com\r\nHost: evil.com\r\nConnection: close\r\n\r\n",
        "GET /x HTTP/1.1\r\nHost: api.example.com\r\n evil.com\r\nConnection: close\r\n\r\n",
        "GET /x HTTP/1.1\r\nHost: api.example.com\revil.com\r\nConnection: close\r\n\r\n",
        "GET /x HTTP/1.1\r\nHost: evil.com\r\nConnection: close\r\n\r\n",
        "GET http://evil.com/x HTTP/1.1\r\nHost: api.example.com\r\nConnection: close\r\n\r\n",
        "GET //evil.com/x HTTP/1.1\r\nHost: evil.com\r\nConnection: close\r\n\r\n",
        "GET /x HTTP/1.1\r\nConnection: close\r\n\r\n",
    ];
    for attack in attacks {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(attack.as_bytes()).await.unwrap();
        let mut out = Vec::new();
        s.read_to_end(&mut out).await.unwrap();
        let text = String::from_utf8_lossy(&out).to_ascii_lowercase();
        let status_line = text.lines().next().unwrap_or_default().to_owned();
        assert!(
            status_line.starts_with("http/1.1 400") || status_line.starts_with("http/1.1 421"),
            "{attack:?} -> {status_line}"
        );
        assert!(!text.contains("location:"), "{attack:?} -> {text}");
    }
    // And the honest request is redirected.
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /x?y HTTP/1.1\r\nHost: api.example.com\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    let text = String::from_utf8_lossy(&out).to_ascii_lowercase();
    assert!(text.starts_with("http/1.1 308"), "{text}");
    assert!(
        text.contains("location: https://api.example.com/x?y\r\n"),
        "{text}"
    );
    server.abort();
}

#[tokio::test]
async fn https_layer_alone_is_a_plain_tower_layer() {
    let layer = palisade::https::HttpsLayer::builder()
        .canonical_host("example.com")
        .build()
        .unwrap();
    let app = Router::new()
        .route("/", post(|| async { "posted" }))
        .layer(layer);
    let res = send(&app, req("POST", "/?a=b", CLIENT, &[("host", "x")])).await;
    assert_eq!(res.status(), 308);
    assert_eq!(location(&res).as_deref(), Some("https://example.com/?a=b"));
}

/// The snippet proposed for `examples/production.toml` builds and behaves as commented.
#[tokio::test]
async fn production_snippet() {
    let app = stack(
        r#"
[security_headers]
profile = "api"
set = { "permissions-policy" = "camera=(), microphone=(), geolocation=(), payment=()" }
remove = []
override_headers = []
exclude_paths = []
csp_nonce = false
hsts_max_age_s = 31536000
hsts_include_subdomains = true
hsts_preload = false

[https]
redirect = false
status = 308
mode = "redirect"
allowed_hosts = ["127.0.0.1", "localhost", "[::1]"]
exempt_paths = ["/health", "/ready", "/metrics"]
trust_forwarded_host = false
"#,
    )
    .await;
    let res = send(&app, get_from("/ok", "127.0.0.1:8080")).await;
    assert_eq!(res.status(), 200);
    assert_eq!(
        one(&res, "permissions-policy").as_deref(),
        Some("camera=(), microphone=(), geolocation=(), payment=()")
    );
    let res = send(&app, get_from("/ok", "evil.com")).await;
    assert_eq!(res.status(), 421);
    let res = send(&app, get_from("/health", "10.0.0.7:8080")).await;
    assert_eq!(res.status(), 200);
}
