//! Whole-layer tests of the in-memory rate limiter (paused tokio time: no timing
//! assertions, every sequence is exact).
#![allow(clippy::unwrap_used)]
#![cfg(feature = "rate-limit")]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::response::Response;
use axum::routing::get;
use http::{Request, StatusCode};
use palisade::client_ip::{ClientIpLayer, TrustedProxies};
use palisade::config::RateLimitConfig;
use palisade::identity::{Identity, IdentityKind};
use palisade::outcome::{RateLimitOutcome, RecordOutcomes};
use palisade::problem::Rejection;
use palisade::rate_limit::{RateLimitLayer, RateLimitStages};
use palisade::stack::BuildContext;
use tower::util::MapRequestLayer;
use tower::{Service, ServiceExt};

fn stages(toml_text: &str) -> RateLimitStages {
    let config: RateLimitConfig = toml::from_str(toml_text).expect("valid toml");
    RateLimitLayer::from_config(&config, &BuildContext::default()).expect("valid config")
}

/// A router with the before-auth stage, a fake "auth" that turns `x-user` into an
/// Identity, and the after-auth stage; the client address comes from the request's
/// own `ConnectInfo` extension.
fn app(toml_text: &str) -> Router {
    let s = stages(toml_text);
    let mut router = Router::new()
        .route("/", get(|| async { "ok" }))
        .route("/login", get(|| async { "ok" }).post(|| async { "ok" }));
    if let Some(after) = s.after_auth {
        router = router.layer(after);
    }
    router = router.layer(axum::middleware::from_fn(
        |mut req: axum::extract::Request, next: axum::middleware::Next| async move {
            if let Some(user) = req.headers().get("x-user").and_then(|v| v.to_str().ok()) {
                let id = Identity::new(IdentityKind::ApiKey, user, Vec::<String>::new());
                req.extensions_mut().insert(id);
            }
            next.run(req).await
        },
    ));
    if let Some(before) = s.before_auth {
        router = router.layer(before);
    }
    router
}

fn req_from(ip: &str) -> Request<Body> {
    req_to("/", ip)
}

fn req_to(path: &str, ip: &str) -> Request<Body> {
    let mut req = Request::get(path).body(Body::empty()).unwrap();
    let addr = SocketAddr::new(ip.parse().unwrap(), 40000);
    req.extensions_mut().insert(ConnectInfo(addr));
    req
}

/// The request, asking for the layers' outcome records (as the access log does).
fn recorded(mut req: Request<Body>) -> Request<Body> {
    req.extensions_mut().insert(RecordOutcomes);
    req
}

async fn send(app: &Router, req: Request<Body>) -> Response {
    app.clone().oneshot(req).await.unwrap()
}

fn header<'a>(res: &'a Response, name: &str) -> &'a str {
    res.headers()
        .get(name)
        .map(|v| v.to_str().unwrap())
        .unwrap_or("")
}

const TEN_PER_SECOND_BURST_3: &str = r#"
    [[policies]]
    name = "api"
    key = "ip"
    limit = 10
    period_s = 1
    burst = 3
"#;

#[tokio::test(start_paused = true)]
async fn exact_gcra_sequence() {
    let app = app(TEN_PER_SECOND_BURST_3);
    for i in 0..3 {
        let res = send(&app, req_from("192.0.2.1")).await;
        assert_eq!(res.status(), StatusCode::OK, "burst request {i}");
    }
    let res = send(&app, req_from("192.0.2.1")).await;
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(header(&res, "retry-after"), "1"); // 100 ms, rounded up
    // The emission interval is 100 ms: 1 ns before it, still limited...
    tokio::time::advance(Duration::from_millis(100) - Duration::from_nanos(1)).await;
    assert_eq!(send(&app, req_from("192.0.2.1")).await.status(), 429);
    // ...exactly at it, admitted once, then limited again.
    tokio::time::advance(Duration::from_nanos(1)).await;
    assert_eq!(send(&app, req_from("192.0.2.1")).await.status(), 200);
    assert_eq!(send(&app, req_from("192.0.2.1")).await.status(), 429);
    // Another client has its own quota.
    assert_eq!(send(&app, req_from("192.0.2.2")).await.status(), 200);
}

#[tokio::test(start_paused = true)]
async fn rejection_is_problem_json_with_outcome() {
    let app = app(TEN_PER_SECOND_BURST_3);
    for _ in 0..3 {
        send(&app, req_from("192.0.2.1")).await;
    }
    let res = send(&app, req_from("192.0.2.1")).await;
    assert_eq!(res.status(), 429);
    assert_eq!(header(&res, "content-type"), "application/problem+json");
    assert_eq!(header(&res, "cache-control"), "no-store");
    assert_eq!(
        res.extensions().get::<Rejection>(),
        Some(&Rejection {
            layer: "rate_limit",
            reason: "limited"
        })
    );
    let outcome = res.extensions().get::<RateLimitOutcome>().unwrap().clone();
    assert!(outcome.limited);
    assert_eq!(&*outcome.policy, "api");
    assert_eq!(header(&res, "ratelimit"), "\"api\";r=0;t=1");
    let body = axum::body::to_bytes(res.into_body(), 4096).await.unwrap();
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["status"], 429);
    assert_eq!(
        v["type"],
        "https://iana.org/assignments/http-problem-types#quota-exceeded"
    );
    assert_eq!(v["violated-policies"], serde_json::json!(["api"]));
}

#[tokio::test(start_paused = true)]
async fn retry_after_is_whole_seconds_rounded_up_never_zero() {
    let app = app(r#"
        [[policies]]
        name = "slow"
        limit = 1
        period_s = 90
    "#);
    assert_eq!(send(&app, req_from("192.0.2.1")).await.status(), 200);
    let res = send(&app, req_from("192.0.2.1")).await;
    assert_eq!(header(&res, "retry-after"), "90");
    tokio::time::advance(Duration::from_millis(500)).await;
    let res = send(&app, req_from("192.0.2.1")).await;
    assert_eq!(header(&res, "retry-after"), "90"); // 89.5 s rounds up
    tokio::time::advance(Duration::from_millis(89_499)).await;
    let res = send(&app, req_from("192.0.2.1")).await;
    assert_eq!(res.status(), 429);
    assert_eq!(header(&res, "retry-after"), "1"); // 1 ms left: never 0
    tokio::time::advance(Duration::from_millis(1)).await;
    assert_eq!(send(&app, req_from("192.0.2.1")).await.status(), 200);
}

#[tokio::test(start_paused = true)]
async fn headers_for_multiple_policies() {
    let app = app(r#"
        [[policies]]
        name = "burst"
        limit = 10
        period_s = 1
        [[policies]]
        name = "hourly"
        limit = 1000
        period_s = 3600
        [[policies]]
        name = "login"
        limit = 5
        period_s = 60
        paths = ["/login"]
        methods = ["POST"]
    "#);
    let res = send(&app, req_from("192.0.2.1")).await;
    assert_eq!(res.status(), 200);
    assert_eq!(
        header(&res, "ratelimit-policy"),
        "\"burst\";q=10;w=1, \"hourly\";q=1000;w=3600"
    );
    assert_eq!(
        header(&res, "ratelimit"),
        "\"burst\";r=9;t=1, \"hourly\";r=999;t=4"
    );
    let mut login = req_to("/login", "192.0.2.1");
    *login.method_mut() = http::Method::POST;
    let res = send(&app, login).await;
    assert_eq!(
        header(&res, "ratelimit"),
        "\"burst\";r=8;t=1, \"hourly\";r=998;t=4, \"login\";r=4;t=12"
    );
}

#[tokio::test(start_paused = true)]
async fn limited_by_one_policy_costs_the_others_nothing() {
    let app = app(r#"
        [[policies]]
        name = "tight"
        limit = 1
        period_s = 10
        [[policies]]
        name = "loose"
        limit = 100
        period_s = 10
    "#);
    assert_eq!(send(&app, req_from("192.0.2.1")).await.status(), 200);
    for _ in 0..5 {
        assert_eq!(send(&app, req_from("192.0.2.1")).await.status(), 429);
    }
    let res = send(&app, req_from("192.0.2.1")).await;
    // Only the admitted request was taken from "loose".
    assert_eq!(
        header(&res, "ratelimit"),
        "\"tight\";r=0;t=10, \"loose\";r=99;t=1"
    );
}

#[tokio::test(start_paused = true)]
async fn refused_after_auth_costs_the_before_auth_stage_nothing() {
    let app = app(r#"
        [[policies]]
        name = "per-ip"
        limit = 10
        period_s = 10
        [[policies]]
        name = "user"
        key = "identity"
        limit = 1
        period_s = 100
    "#);
    let alice = || {
        let mut r = req_from("192.0.2.1");
        r.headers_mut().insert("x-user", "alice".parse().unwrap());
        r
    };
    assert_eq!(send(&app, alice()).await.status(), 200);
    for _ in 0..3 {
        let res = send(&app, alice()).await;
        assert_eq!(res.status(), 429);
        // The before-auth stage reports its quota as it is after giving back.
        assert_eq!(
            header(&res, "ratelimit"),
            "\"user\";r=0;t=100, \"per-ip\";r=9;t=1"
        );
        let outcome = res.extensions().get::<RateLimitOutcome>().unwrap();
        assert!(outcome.limited);
        assert_eq!(&*outcome.policy, "user");
    }
    // Only the two admitted requests were taken from "per-ip".
    let res = send(&app, req_from("192.0.2.1")).await;
    assert_eq!(res.status(), 200);
    assert_eq!(header(&res, "ratelimit"), "\"per-ip\";r=8;t=1");
}

#[tokio::test(start_paused = true)]
async fn cost_takes_several_units() {
    let app = app(r#"
        [[policies]]
        name = "expensive"
        limit = 10
        period_s = 10
        cost = 4
    "#);
    assert_eq!(send(&app, req_from("192.0.2.1")).await.status(), 200);
    assert_eq!(send(&app, req_from("192.0.2.1")).await.status(), 200);
    let res = send(&app, req_from("192.0.2.1")).await;
    assert_eq!(res.status(), 429);
    assert_eq!(header(&res, "ratelimit"), "\"expensive\";r=2;t=1");
    assert_eq!(header(&res, "retry-after"), "2"); // 4 units need 2 more seconds
}

#[tokio::test(start_paused = true)]
async fn shadow_mode_reports_but_lets_through() {
    let app = app(r#"
        [[policies]]
        name = "trial"
        limit = 1
        period_s = 60
        mode = "shadow"
    "#);
    assert_eq!(send(&app, req_from("192.0.2.1")).await.status(), 200);
    let res = send(&app, recorded(req_from("192.0.2.1"))).await;
    assert_eq!(res.status(), 200);
    let outcome = res.extensions().get::<RateLimitOutcome>().unwrap();
    assert!(!outcome.limited);
    assert!(outcome.shadow_limited);
    assert_eq!(&*outcome.policy, "trial");
}

#[tokio::test(start_paused = true)]
async fn allow_list_by_cidr_and_identity() {
    let app = app(r#"
        allow = ["10.0.0.0/8", "2001:db8::/32", "identity:ops-bot"]
        [[policies]]
        name = "ip"
        limit = 1
        period_s = 60
        [[policies]]
        name = "user"
        key = "identity"
        limit = 1
        period_s = 60
    "#);
    for _ in 0..5 {
        let res = send(&app, req_from("10.1.2.3")).await;
        assert_eq!(res.status(), 200);
        assert!(res.headers().get("ratelimit").is_none());
        assert!(res.extensions().get::<RateLimitOutcome>().is_none());
        assert_eq!(send(&app, req_from("2001:db8::7")).await.status(), 200);
    }
    // An allow-listed identity skips the identity policies (the IP policy still applies).
    let from = |user: &str, ip: &str| {
        let mut r = req_from(ip);
        r.headers_mut().insert("x-user", user.parse().unwrap());
        r
    };
    assert_eq!(send(&app, from("ops-bot", "192.0.2.1")).await.status(), 200);
    let res = send(&app, from("ops-bot", "192.0.2.2")).await;
    assert_eq!(res.status(), 200);
    assert_eq!(header(&res, "ratelimit"), "\"ip\";r=0;t=60");
    assert_eq!(send(&app, from("alice", "192.0.2.3")).await.status(), 200);
    let res = send(&app, from("alice", "192.0.2.4")).await;
    assert_eq!(res.status(), 429);
    // Refused after auth: the IP policy before auth gets its unit back.
    assert_eq!(
        header(&res, "ratelimit"),
        "\"user\";r=0;t=60, \"ip\";r=1;t=0"
    );
}

#[tokio::test(start_paused = true)]
async fn ipv6_clients_grouped_by_prefix() {
    let config = |prefix: u8| {
        format!("ipv6_prefix = {prefix}\n[[policies]]\nname = \"ip\"\nlimit = 1\nperiod_s = 60\n")
    };
    let app64 = app(&config(64));
    assert_eq!(
        send(&app64, req_from("2001:db8:1:2::1")).await.status(),
        200
    );
    // Same /64, another address: same bucket.
    assert_eq!(
        send(&app64, req_from("2001:db8:1:2:ffff::9"))
            .await
            .status(),
        429
    );
    // The next /64 is another client.
    assert_eq!(
        send(&app64, req_from("2001:db8:1:3::1")).await.status(),
        200
    );
    let app48 = app(&config(48));
    assert_eq!(
        send(&app48, req_from("2001:db8:1:2::1")).await.status(),
        200
    );
    assert_eq!(
        send(&app48, req_from("2001:db8:1:3::1")).await.status(),
        429
    );
}

#[tokio::test(start_paused = true)]
async fn spoofed_forwarded_for_from_untrusted_peer_cannot_escape() {
    let s = stages(
        r#"
        [[policies]]
        name = "ip"
        limit = 2
        period_s = 60
    "#,
    );
    let trusted = TrustedProxies::parse(&["10.0.0.0/8".to_string()]).unwrap();
    let build = |peer: [u8; 4]| {
        Router::new()
            .route("/", get(|| async { "ok" }))
            .layer(s.before_auth.clone().unwrap())
            .layer(ClientIpLayer::new(trusted.clone()))
            .layer(MapRequestLayer::new(
                move |mut r: axum::extract::Request| {
                    // What `into_make_service_with_connect_info` inserts. (axum's
                    // `MockConnectInfo` is not read by `client_info`: it is a separate type.)
                    r.extensions_mut()
                        .insert(ConnectInfo(SocketAddr::from((peer, 4000))));
                    r
                },
            ))
    };
    let direct = build([198, 51, 100, 9]);
    let spoof = |n: u32| {
        Request::get("/")
            .header("x-forwarded-for", format!("203.0.113.{n}"))
            .body(Body::empty())
            .unwrap()
    };
    assert_eq!(send(&direct, spoof(1)).await.status(), 200);
    assert_eq!(send(&direct, spoof(2)).await.status(), 200);
    for n in 3..20 {
        assert_eq!(send(&direct, spoof(n)).await.status(), 429, "spoof {n}");
    }
    // Behind a trusted proxy the header is believed: distinct clients, distinct quotas.
    let proxied = build([10, 0, 0, 1]);
    for n in 30..40 {
        assert_eq!(send(&proxied, spoof(n)).await.status(), 200);
    }
}

#[tokio::test(start_paused = true)]
async fn fallback_key_or_not_counted() {
    let app = app(r#"
        [[policies]]
        name = "per-user"
        key = "api_key"
        fallback = "ip"
        limit = 1
        period_s = 60
        [[policies]]
        name = "per-token"
        key = "header:x-token"
        limit = 1
        period_s = 60
    "#);
    // No identity: counted by IP; no x-token: "per-token" does not count it.
    let res = send(&app, req_from("192.0.2.1")).await;
    assert_eq!(header(&res, "ratelimit"), "\"per-user\";r=0;t=60");
    assert_eq!(send(&app, req_from("192.0.2.1")).await.status(), 429);
    let token = |t: &str, ip: &str| {
        let mut r = req_from(ip);
        r.headers_mut().insert("x-token", t.parse().unwrap());
        r
    };
    assert_eq!(
        send(&app, token("secret-a", "192.0.2.50")).await.status(),
        200
    );
    assert_eq!(
        send(&app, token("secret-a", "192.0.2.51")).await.status(),
        429
    );
    assert_eq!(
        send(&app, token("secret-b", "192.0.2.52")).await.status(),
        200
    );
}

#[tokio::test(start_paused = true)]
async fn legacy_headers_show_the_tightest_policy() {
    let legacy = app(r#"
        headers = "legacy"
        [[policies]]
        name = "a"
        limit = 10
        period_s = 10
        [[policies]]
        name = "b"
        limit = 3
        period_s = 30
        [[policies]]
        name = "user"
        key = "identity"
        limit = 100
        period_s = 100
    "#);
    let mut r = req_from("192.0.2.1");
    r.headers_mut().insert("x-user", "alice".parse().unwrap());
    let res = send(&legacy, r).await;
    assert!(res.headers().get("ratelimit").is_none());
    assert_eq!(header(&res, "x-ratelimit-limit"), "3");
    assert_eq!(header(&res, "x-ratelimit-remaining"), "2");
    assert_eq!(header(&res, "x-ratelimit-reset"), "10");
    let quiet = app(r#"
        headers = "none"
        [[policies]]
        name = "a"
        limit = 1
        period_s = 10
    "#);
    send(&quiet, req_from("192.0.2.1")).await;
    let res = send(&quiet, req_from("192.0.2.1")).await;
    assert_eq!(res.status(), 429);
    assert!(res.headers().get("ratelimit").is_none());
    assert!(res.headers().get("x-ratelimit-remaining").is_none());
    assert_eq!(header(&res, "retry-after"), "10");
}

#[tokio::test(start_paused = true)]
async fn keys_back_at_full_quota_are_cleaned_up() {
    let s = stages(
        r#"
        [[policies]]
        name = "ip"
        limit = 10
        period_s = 10
    "#,
    );
    let layer = s.before_auth.unwrap();
    let app = Router::new()
        .route("/", get(|| async { "ok" }))
        .layer(layer.clone());
    for i in 0..50 {
        send(&app, req_from(&format!("192.0.2.{i}"))).await;
    }
    assert_eq!(layer.memory_keys(), 50);
    // The cleanup task runs every minute; by then every key is back at full quota.
    tokio::time::sleep(Duration::from_secs(61)).await;
    assert_eq!(layer.memory_keys(), 0);
}

#[tokio::test]
async fn memory_stays_bounded_under_a_million_keys() {
    let config: RateLimitConfig = toml::from_str(
        r#"
        max_keys = 10000
        [[policies]]
        name = "ip"
        limit = 5
        period_s = 3600
        "#,
    )
    .unwrap();
    let s = RateLimitLayer::from_config(&config, &BuildContext::default()).unwrap();
    let layer = s.before_auth.unwrap();
    let mut svc = tower::Layer::layer(
        &layer,
        tower::service_fn(|_req: axum::extract::Request| async {
            Ok::<_, Infallible>(Response::new(Body::empty()))
        }),
    );
    let mut max_seen = 0;
    for i in 0..1_000_000u32 {
        let mut req = Request::new(Body::empty());
        let addr = SocketAddr::from((i.wrapping_mul(2_654_435_761).to_be_bytes(), 1));
        req.extensions_mut().insert(ConnectInfo(addr));
        let res = svc.call(req).await.unwrap();
        assert_eq!(res.status(), 200);
        if i % 1000 == 0 {
            max_seen = max_seen.max(layer.memory_keys());
        }
    }
    assert!(max_seen <= 10_000, "{max_seen} keys");
    assert!(layer.memory_keys() <= 10_000);
    assert!(layer.memory_keys() >= 8_000);
}

#[test]
fn invalid_config_reports_every_problem() {
    let config: RateLimitConfig = toml::from_str(
        r#"
        ipv6_prefix = 129
        max_keys = 0
        allow = ["10.0.0.0/33", "identity:"]
        [[policies]]
        name = "a"
        limit = 0
        period_s = 0
        [[policies]]
        name = "a"
        key = "cookie"
        limit = 1
        period_s = 1
        burst = 0
        [[policies]]
        name = "bad name"
        key = "header:bad header"
        limit = 1
        period_s = 1
        cost = 2
        paths = ["no-slash"]
        methods = ["GE T"]
        [[policies]]
        name = "forever"
        limit = 1
        period_s = 315360000
        burst = 2
        "#,
    )
    .unwrap();
    let err = RateLimitLayer::from_config(&config, &BuildContext::default()).unwrap_err();
    for key in [
        "rate_limit.ipv6_prefix",
        "rate_limit.max_keys",
        "rate_limit.allow[0]",
        "rate_limit.allow[1]",
        "rate_limit.policies[0].limit",
        "rate_limit.policies[0].period_s",
        "rate_limit.policies[1].name",
        "rate_limit.policies[1].key",
        "rate_limit.policies[1].burst",
        "rate_limit.policies[2].name",
        "rate_limit.policies[2].key",
        "rate_limit.policies[2].cost",
        "rate_limit.policies[2].paths[0]",
        "rate_limit.policies[2].methods[0]",
        "rate_limit.policies[3].burst",
    ] {
        assert!(err.has_key(key), "missing {key} in {err}");
    }
}

#[test]
fn redis_backend_needs_a_redis_connection() {
    let config: RateLimitConfig = toml::from_str(
        r#"
        backend = "redis"
        [[policies]]
        name = "a"
        limit = 1
        period_s = 1
        "#,
    )
    .unwrap();
    let err = RateLimitLayer::from_config(&config, &BuildContext::default()).unwrap_err();
    assert!(err.has_key("rate_limit.backend"), "{err}");
}

#[test]
fn no_policies_means_disabled() {
    let s = stages("");
    assert!(s.before_auth.is_none() && s.after_auth.is_none());
}

#[tokio::test(start_paused = true)]
async fn whole_stack_from_config() {
    let config: palisade::Config = toml::from_str(
        r#"
        [client_ip]
        trusted_proxies = ["10.0.0.0/8"]
        [[rate_limit.policies]]
        name = "per-ip"
        limit = 1
        period_s = 10
        "#,
    )
    .unwrap();
    let palisade = palisade::Palisade::from_config(config).await.unwrap();
    let app = Router::new()
        .route("/", get(|| async { "ok" }))
        .layer(palisade.layer());
    let via_proxy = |client: &str| {
        let mut r = req_from("10.0.0.1");
        r.headers_mut()
            .insert("x-forwarded-for", client.parse().unwrap());
        r
    };
    assert_eq!(send(&app, via_proxy("203.0.113.1")).await.status(), 200);
    let res = send(&app, via_proxy("203.0.113.1")).await;
    assert_eq!(res.status(), 429);
    assert_eq!(header(&res, "retry-after"), "10");
    assert_eq!(send(&app, via_proxy("203.0.113.2")).await.status(), 200);
    palisade.shutdown();
}

#[tokio::test(start_paused = true)]
async fn cleanup_task_stops_on_shutdown() {
    let config: RateLimitConfig = toml::from_str(
        r#"
        [[policies]]
        name = "ip"
        limit = 10
        period_s = 10
        "#,
    )
    .unwrap();
    let ctx = BuildContext::default();
    let layer = RateLimitLayer::from_config(&config, &ctx)
        .unwrap()
        .before_auth
        .unwrap();
    let app = Router::new()
        .route("/", get(|| async { "ok" }))
        .layer(layer.clone());
    send(&app, req_from("192.0.2.1")).await;
    ctx.shutdown.trigger();
    tokio::time::sleep(Duration::from_secs(130)).await;
    // Without the task only the insert-time sweep (at the cap) would remove it.
    assert_eq!(layer.memory_keys(), 1);
}

#[tokio::test(start_paused = true)]
async fn an_admitted_request_carries_its_record_only_when_asked() {
    let app = app(r#"
        [[policies]]
        name = "per-ip"
        limit = 2
        period_s = 10
    "#);
    let res = send(&app, req_from("192.0.2.1")).await;
    assert_eq!(res.status(), 200);
    assert_eq!(header(&res, "ratelimit"), "\"per-ip\";r=1;t=5");
    assert!(res.extensions().get::<RateLimitOutcome>().is_none());
    let res = send(&app, recorded(req_from("192.0.2.1"))).await;
    assert_eq!(res.status(), 200);
    let outcome = res.extensions().get::<RateLimitOutcome>().unwrap();
    assert!(!outcome.limited);
    assert_eq!(&*outcome.policy, "per-ip");
    // A rejection always carries it.
    let res = send(&app, req_from("192.0.2.1")).await;
    assert_eq!(res.status(), 429);
    assert!(res.extensions().get::<RateLimitOutcome>().unwrap().limited);
}
