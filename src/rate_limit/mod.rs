//! GCRA rate limiting, in memory or over Redis.
//!
//! Any number of named policies, each a quota (`limit` units per `period_s`, `burst`
//! at once) on a key (`ip`, `header:<name>`, `global`, `identity`, `api_key`,
//! `jwt_sub`), restricted to routes and methods. A request is limited when any
//! `enforce` policy that applies to it says so; `shadow` policies only report.
//!
//! # Why GCRA, implemented here
//!
//! The generic cell rate algorithm keeps **one number per key**, the theoretical
//! arrival time (TAT): exact, O(1), no window-edge bursts (a fixed window admits
//! twice the limit across an edge). palisade implements it directly on a
//! [`dashmap`] of one atomic TAT per key instead of using `governor`'s keyed state,
//! because it needs three things governor's store does not give:
//!
//! - **bounded memory without chores**: a hard `max_keys` cap that evicts the least
//!   recently seen keys, and a cleanup task (stopped on shutdown) that drops keys back
//!   at full quota; governor only offers a `retain_recent` sweep the user must wire up;
//! - **exact headers**: the remaining quota and reset time fall out of the TAT, for
//!   every policy of a request, allowed or limited;
//! - **parity with Redis**: both backends reduce their state to "how far ahead is the
//!   TAT" and call the same arithmetic, so a policy means the same thing in memory
//!   and in Redis. Several policies of one request are all-or-nothing: when one
//!   refuses, what the others took is given back (GCRA is additive, so this is exact).
//!
//! # Two stages, one backend
//!
//! [`RateLimitLayer::from_config`] splits the policies in two [`RateLimitStages`]:
//! `before_auth` (keys that need no identity) sits before the auth layer, so failed
//! logins are limited too, and `after_auth` (identity keys) after it. Both stages
//! share one backend and its state. Each stage writes only its own policies' entries:
//! the inner stage (after auth) sets the headers, then the outer stage appends its
//! entries to the same `RateLimit` and `RateLimit-Policy` field lines (legacy
//! headers: the tighter policy wins). The [`RateLimitOutcome`] is merged the same way.
//! A request the after-auth stage refuses costs the before-auth stage nothing: seeing
//! the inner stage's `limited` outcome, it gives back what it took (in memory at
//! once, over Redis with one refund script before the response goes out).
//!
//! # Responses
//!
//! A limited request gets `429` with an RFC 9457 body of type
//! `https://iana.org/assignments/http-problem-types#quota-exceeded` listing the
//! `violated-policies`, and `Retry-After` in whole seconds, rounded up, never 0.
//! Allowed and limited responses carry the draft-10 headers (one entry per policy
//! that applied), for example:
//!
//! ```text
//! RateLimit-Policy: "per-ip";q=100;w=60, "daily";q=10000;w=86400
//! RateLimit: "per-ip";r=99;t=1, "daily";r=9999;t=9
//! ```
//!
//! `q`/`w` are the configured `limit`/`period_s`; `r` is what can be spent right now
//! (up to `burst`), and `t` the seconds until one more unit is available (0 when
//! full). No partition key (`pk`) is sent: it would reveal how clients are keyed.
//!
//! # Keys
//!
//! `ip` is the trusted client IP from [`client_info`](crate::client_ip::client_info)
//! (forwarding headers count only from trusted proxies), IPv6 grouped by
//! `ipv6_prefix` (/64 by default: one host owns at least a /64 and could otherwise
//! rotate through 2^64 addresses). Header values and identity ids are reduced to a
//! 128-bit BLAKE3 digest: fixed-size memory per key, and never a secret in Redis.
//!
//! A request with no value for a policy's key (no identity, header absent) is
//! counted under the policy's `fallback` key if one is set, otherwise not by that
//! policy. `allow` lists CIDRs (both stages skip them) and `identity:<id>` entries
//! (the after-auth stage skips them; IP policies before auth still apply, since
//! the identity is not known yet there).
//!
//! # Memory: bounded, with no chore
//!
//! State is one 16-byte cell per (policy, key value) in a [`dashmap`] owned by the
//! layer's `Arc`, shared by every clone of the service and by both stages. When
//! `max_keys` is reached, a new key first triggers a sweep that drops every key
//! back at full quota (forgetting those changes no decision), then, if that is not
//! enough, the least recently seen keys, down to 90 % of the cap, so sweeps are at
//! least `max_keys / 10` inserts apart (amortised O(1)). A background task (stopped
//! by [`BuildContext::shutdown`]) also drops full keys every minute. Evicting a key
//! that is still limited forgets its debt: under a flood of distinct keys the cap
//! wins over exactness, which is why IPv6 is grouped and the cap should exceed your
//! number of concurrently active clients.
//!
//! # Redis
//!
//! `backend = "redis"` decides every policy of a request in **one** `EVALSHA` of a
//! GCRA script (`REDIS_GCRA_SCRIPT`, with the `redis` feature) on the server's clock, with self-expiring,
//! hash-tagged keys that never contain a secret; see the `redis` submodule notes in
//! the source for the Cluster layout. When Redis errors, times out (`[redis]
//! timeout_ms`) or its circuit breaker is open, `on_store_error` decides:
//!
//! | value | effect |
//! |---|---|
//! | `local` (default) | this replica's in-memory limiter decides (each replica then allows the full quota) |
//! | `allow` | the request passes, unlimited, without quota headers |
//! | `deny` | `503` problem+json with `Retry-After: 1` |
//!
//! `local` is the default because it keeps every client limited (at most N times
//! the quota with N replicas) without making Redis a single point of failure.
//! Store errors are logged at most once per 10 s (with the count suppressed) and
//! counted (feature `metrics`) as
//! `palisade_rate_limit_store_errors_total{on_store_error}`, next to the pool's
//! `palisade_redis_errors_total{op="rate_limit"}`. Recovery needs nothing: the pool
//! reconnects and `NOSCRIPT` reloads the script.
//!
//! # Hybrid mode: leases of quota
//!
//! With `lease = N` (Redis only), a replica asks Redis for up to `N` units of a key's
//! quota at once (`REDIS_LEASE_SCRIPT`: the same GCRA, charging what it grants) and
//! spends them on that key's next requests **without a round trip**, for at most
//! `lease_ms`. Redis sees one script per `N` requests of a busy key instead of one
//! per request (BENCHMARKS.md: ten times the decisions per second of raw `EVALSHA`
//! with `lease = 100`), and a replica with live leases keeps deciding while Redis
//! is down.
//!
//! ```toml
//! [rate_limit]
//! backend = "redis"
//! lease = 10        # units per lease, capped at each policy's burst; 0 = off
//! lease_ms = 1000   # unspent units are forfeited after this
//! ```
//!
//! What it costs, exactly: leased units are charged in Redis when granted, so the
//! replicas together never grant more than the quota. A unit may be *spent* up to
//! `lease_ms` after it was granted, and each replica holds fewer than `N` unspent
//! units of a key (one lease request per key and replica in flight), so in any
//! window a key admits at most what the plain Redis limiter admits **plus
//! `replicas × (N − 1)` units** (the over-admission bound), and a client spread
//! over replicas may be refused up to that many units early while another replica
//! holds them (at most `lease_ms`). Pick `N` small against the burst: `lease = 10`
//! on a 1 000/min policy with 4 replicas admits at most 36 extra in a window. The
//! `RateLimit` header then reports Redis's last grant, aged, plus the units this
//! replica holds: exact with one replica, an estimate with several. A policy whose
//! cost is at least its lease is decided in Redis request by request. Leases are
//! kept per key in a map bounded by `max_keys`.
//!
//! # Examples
//!
//! In code, with the typed builder of [`RateLimitConfig`]:
//!
//! ```
//! use palisade::config::RateLimitConfig;
//! use palisade::config::rate_limit::PolicyConfig;
//! use palisade::rate_limit::RateLimitLayer;
//! use palisade::stack::BuildContext;
//!
//! let stages = RateLimitLayer::from_config(
//!     &RateLimitConfig::default()
//!         .policy(PolicyConfig::new("per-ip", "ip", 10, 1).burst(20))
//!         .policy(PolicyConfig::new("daily", "api_key", 10_000, 86_400).fallback("ip"))
//!         .policy(PolicyConfig::new("login", "ip", 5, 60).routes(["/login"], ["POST"]))
//!         .allow(["10.0.0.0/8"]),
//!     &BuildContext::default(),
//! )?;
//! assert!(stages.before_auth.is_some()); // per-ip, login
//! assert!(stages.after_auth.is_some()); // daily
//! # Ok::<(), palisade::error::ConfigError>(())
//! ```
//!
//! From TOML, exercised:
//!
//! ```
//! use axum::{Router, routing::get, extract::ConnectInfo};
//! use palisade::config::RateLimitConfig;
//! use palisade::rate_limit::RateLimitLayer;
//! use palisade::stack::BuildContext;
//! use std::net::SocketAddr;
//! use tower::ServiceExt;
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let config: RateLimitConfig = toml::from_str(r#"
//!     [[policies]]
//!     name = "per-ip"
//!     key = "ip"
//!     limit = 2
//!     period_s = 60
//! "#).unwrap();
//! let stages = RateLimitLayer::from_config(&config, &BuildContext::default()).unwrap();
//! let app = Router::new()
//!     .route("/", get(|| async { "hi" }))
//!     .layer(stages.before_auth.unwrap());
//! // `axum::serve(.., app.into_make_service_with_connect_info::<SocketAddr>())`
//! // inserts the peer address; here we do it by hand.
//! let get = || {
//!     let mut req = http::Request::get("/").body(axum::body::Body::empty()).unwrap();
//!     req.extensions_mut().insert(ConnectInfo(SocketAddr::from(([203, 0, 113, 7], 4000))));
//!     req
//! };
//! let res = app.clone().oneshot(get()).await.unwrap();
//! assert_eq!(res.headers()["ratelimit"], "\"per-ip\";r=1;t=30");
//! assert_eq!(app.clone().oneshot(get()).await.unwrap().status(), 200);
//! let res = app.oneshot(get()).await.unwrap();
//! assert_eq!(res.status(), 429);
//! assert_eq!(res.headers()["retry-after"], "30");
//! # }
//! ```

use std::collections::HashSet;
use std::convert::Infallible;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::Request;
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use ipnet::IpNet;
use tower::{Layer, Service};

use crate::config::RateLimitConfig;
use crate::config::rate_limit::{
    OnStoreError, PolicyConfig, PolicyMode, RateLimitBackend, RateLimitHeaders,
};
use crate::error::ConfigError;
use crate::identity::Identity;
use crate::outcome::{self, RateLimitOutcome, RecordOutcomes};
use crate::problem::Problem;
use crate::route_match::RouteMatcher;
use crate::stack::BuildContext;

mod gcra;
mod key;
#[cfg(feature = "redis")]
mod lease;
mod memory;
#[cfg(feature = "redis")]
mod redis;

/// The Lua script the Redis backend runs (by `EVALSHA`) for every decision, for
/// review or to benchmark against. `KEYS`: one per policy; `ARGV`: for each policy
/// the emission interval and burst tolerance (µs), the cost, and 1 for `enforce`.
/// Returns `{limited, used_1, ..}`, each `used` being how far the key's TAT lay
/// ahead of the server's `TIME` before the decision.
#[cfg(feature = "redis")]
pub const REDIS_GCRA_SCRIPT: &str = redis::GCRA_SCRIPT;

/// The Lua script of the hybrid mode (`lease > 0`): the same GCRA, but each key
/// asks for up to `want` units at once. `ARGV`: for each policy the emission
/// interval and burst tolerance (µs), the cost, 1 for `enforce`, and `want`.
/// Returns `{limited, used_1, granted_1, ..}`.
#[cfg(feature = "redis")]
pub const REDIS_LEASE_SCRIPT: &str = lease::LEASE_SCRIPT;

use gcra::Quota;
use key::{KeySpec, KeyValue};
use memory::{MemKey, MemoryStore};

const NANOS: u64 = 1_000_000_000;
const MICROS: u64 = 1_000_000;
/// How often keys back at full quota are dropped from memory.
const CLEANUP_EVERY: Duration = Duration::from_secs(60);
/// Longest burst tolerance (`burst × period / limit`): ten years, in ns.
const MAX_TOLERANCE_NS: u64 = 10 * 366 * 86_400 * NANOS;
/// Most policies one configuration may hold.
const MAX_POLICIES: usize = 256;

// `const`, not `static`: each use builds the name in place, where a `static` is cloned
// through `Bytes`' vtable (~30 ns a header, measured with `perf`).
const RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");
const RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
const X_LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit");
const X_REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");
const X_RESET: HeaderName = HeaderName::from_static("x-ratelimit-reset");

/// The problem type of draft-ietf-httpapi-ratelimit-headers-10 §8.
const QUOTA_EXCEEDED: &str = "https://iana.org/assignments/http-problem-types#quota-exceeded";

/// The two places the rate limiter sits in the stack: before auth (keys that need
/// no identity: `ip`, `header:*`, `global`) and after it (identity keys). Both share
/// one backend; see the [module docs](self).
#[derive(Debug, Clone, Default)]
pub struct RateLimitStages {
    /// Policies decided before authentication.
    pub before_auth: Option<RateLimitLayer>,
    /// Policies decided after authentication.
    pub after_auth: Option<RateLimitLayer>,
}

/// One compiled policy.
#[derive(Debug)]
struct Policy {
    name: Arc<str>,
    /// Index across both stages: part of the memory key.
    index: u16,
    key: KeySpec,
    fallback: Option<KeySpec>,
    matcher: RouteMatcher,
    limit: u64,
    cost: u64,
    shadow: bool,
    q_ns: Quota,
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    q_us: Quota,
    /// Units leased from Redis at a time (hybrid mode); 0 when off or when a lease
    /// would not exceed the cost.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    lease: u64,
    /// `"name";q=..;w=..`, the policy's `RateLimit-Policy` item.
    policy_item: String,
    policy_value: HeaderValue,
}

/// What both stages share: the backend and the response settings.
#[derive(Debug)]
struct Shared {
    memory: MemoryStore,
    #[cfg(feature = "redis")]
    redis: Option<redis::RedisBackend>,
    /// Hybrid mode: this replica's leases of Redis quota.
    #[cfg(feature = "redis")]
    leases: Option<lease::Leases>,
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    on_store_error: OnStoreError,
    epoch: tokio::time::Instant,
    headers: RateLimitHeaders,
    ipv6_prefix: u8,
    allow_nets: Vec<IpNet>,
    allow_ids: HashSet<Arc<str>>,
}

impl Shared {
    /// Nanoseconds since the limiter was built, on tokio's clock (pausable in tests).
    #[inline]
    fn now_ns(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }
}

#[derive(Debug)]
struct Stage {
    shared: Arc<Shared>,
    policies: Vec<Policy>,
    after_auth: bool,
    /// An after-auth stage runs inside this (before-auth) one: its verdict, read
    /// from the response, decides whether this stage refunds.
    inner_stage: bool,
}

/// Layer for `[rate_limit]`: one stage of the limiter (see [`RateLimitStages`]).
#[derive(Debug, Clone)]
pub struct RateLimitLayer {
    stage: Arc<Stage>,
    /// Attach the outcome record to every response (the stack's access log or metrics
    /// read them), without a [`RecordOutcomes`] marker on the request.
    record: bool,
}

/// One policy's result for one request.
#[derive(Debug, Clone, Copy)]
struct Entry {
    /// The request's value for the policy's key ([`KeyValue`], whose fields are inline
    /// here so that its padding does not make the entry 48 bytes instead of 40: the
    /// stack's response future carries three entries for each limiter stage, and is
    /// copied whole several times a request).
    hi: u64,
    lo: u64,
    tag: u8,
    /// The policy's index in its stage.
    policy: u16,
    /// How far the TAT lies ahead after the decision, in the backend's ticks.
    used_after: u64,
    allowed: bool,
    /// At most `burst` (≤ 10⁹).
    remaining: u32,
    /// At most the burst tolerance in seconds (≤ ten years).
    reset_s: u32,
}

/// The entries of one request, inline for up to three policies: no allocation on
/// the hot path.
type Entries = smallvec::SmallVec<[Entry; 3]>;

/// A stage's decision for one request.
#[derive(Debug, Default)]
struct Verdict {
    entries: Entries,
    /// Decided by Redis (not by memory): where a refund must go.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    in_redis: bool,
    limited: bool,
    shadow_limited: bool,
    retry_s: u64,
    /// Whether to attach a [`RateLimitOutcome`] to the response (someone reads it).
    record: bool,
}

impl RateLimitLayer {
    /// `true` when the stack's access log or metrics read this layer's records: attach
    /// them to every response (no request marker needed, so no extension insert per
    /// request).
    pub(crate) fn recording(mut self, on: bool) -> Self {
        self.record = on;
        self
    }

    /// Builds both stages from `[rate_limit]`; both are `None` when no policy is
    /// configured. Every problem of the section is reported in one [`ConfigError`].
    pub fn from_config(
        config: &RateLimitConfig,
        ctx: &BuildContext,
    ) -> Result<RateLimitStages, ConfigError> {
        let mut errors = ConfigError::default();
        if config.ipv6_prefix > 128 {
            errors.push(
                "rate_limit.ipv6_prefix",
                format!("{} is not a prefix length (0 to 128)", config.ipv6_prefix),
            );
        }
        if config.max_keys == 0 {
            errors.push("rate_limit.max_keys", "must be at least 1");
        }
        if config.lease > 0 && config.backend != RateLimitBackend::Redis {
            errors.push(
                "rate_limit.lease",
                "leases are taken from Redis: lease > 0 needs backend = \"redis\"",
            );
        }
        if !(1..=60_000).contains(&config.lease_ms) {
            errors.push(
                "rate_limit.lease_ms",
                format!("{} is not between 1 and 60000", config.lease_ms),
            );
        }
        let (allow_nets, allow_ids) = parse_allow(&config.allow, &mut errors);
        if config.policies.len() > MAX_POLICIES {
            errors.push(
                "rate_limit.policies",
                format!("at most {MAX_POLICIES} policies are supported"),
            );
        }
        let mut names = HashSet::new();
        let mut before = Vec::new();
        let mut after = Vec::new();
        for (i, p) in config.policies.iter().enumerate().take(MAX_POLICIES) {
            let at = format!("rate_limit.policies[{i}]");
            if !p.name.is_empty() && !names.insert(p.name.as_str()) {
                errors.push(
                    format!("{at}.name"),
                    format!("duplicate policy name {:?}", p.name),
                );
            }
            if let Some(policy) = compile_policy(p, i as u16, config.lease, &at, &mut errors) {
                if policy.key.needs_identity() {
                    after.push(policy);
                } else {
                    before.push(policy);
                }
            }
        }
        #[cfg(feature = "redis")]
        let redis = match config.backend {
            RateLimitBackend::Redis => match &ctx.redis {
                Some(pool) => Some(redis::RedisBackend::new(pool.clone())),
                None => {
                    errors.push(
                        "rate_limit.backend",
                        "backend = \"redis\" needs a [redis] section with url or cluster_urls",
                    );
                    None
                }
            },
            _ => None,
        };
        #[cfg(not(feature = "redis"))]
        if config.backend == RateLimitBackend::Redis {
            errors.push(
                "rate_limit.backend",
                "backend = \"redis\" needs palisade built with the `redis` feature",
            );
        }
        errors.into_result()?;
        if before.is_empty() && after.is_empty() {
            return Ok(RateLimitStages::default());
        }
        let shared = Arc::new(Shared {
            memory: MemoryStore::new(config.max_keys),
            #[cfg(feature = "redis")]
            leases: redis
                .as_ref()
                .filter(|_| config.lease > 0)
                .map(|r| lease::Leases::new(config.max_keys, config.lease_ms, r.timeout())),
            #[cfg(feature = "redis")]
            redis,
            on_store_error: config.on_store_error,
            epoch: tokio::time::Instant::now(),
            headers: config.headers,
            ipv6_prefix: config.ipv6_prefix,
            allow_nets,
            allow_ids,
        });
        spawn_cleanup(&shared, ctx);
        let has_after = !after.is_empty();
        let stage = |policies: Vec<Policy>, after_auth| {
            (!policies.is_empty()).then(|| RateLimitLayer {
                record: false,
                stage: Arc::new(Stage {
                    shared: shared.clone(),
                    policies,
                    after_auth,
                    inner_stage: !after_auth && has_after,
                }),
            })
        };
        Ok(RateLimitStages {
            before_auth: stage(before, false),
            after_auth: stage(after, true),
        })
    }

    /// Number of keys the in-memory limiter currently holds (for tests and gauges).
    pub fn memory_keys(&self) -> usize {
        self.stage.shared.memory.len()
    }

    /// Hybrid mode: number of keys this replica holds a lease for (live or expired
    /// but not yet swept); 0 without leases.
    pub fn leased_keys(&self) -> usize {
        #[cfg(feature = "redis")]
        if let Some(leases) = &self.stage.shared.leases {
            return leases.len();
        }
        0
    }
}

fn parse_allow(entries: &[String], errors: &mut ConfigError) -> (Vec<IpNet>, HashSet<Arc<str>>) {
    let mut nets = Vec::new();
    let mut ids = HashSet::new();
    for (i, entry) in entries.iter().enumerate() {
        let entry = entry.trim();
        if let Some(id) = entry.strip_prefix("identity:") {
            if id.is_empty() {
                errors.push(format!("rate_limit.allow[{i}]"), "empty identity id");
            } else {
                ids.insert(Arc::from(id));
            }
        } else if let Ok(net) = entry.parse::<IpNet>() {
            nets.push(net.trunc());
        } else if let Ok(ip) = entry.parse::<IpAddr>() {
            nets.push(IpNet::from(ip));
        } else {
            errors.push(
                format!("rate_limit.allow[{i}]"),
                format!("{entry:?} is neither a CIDR, an IP address nor identity:<id>"),
            );
        }
    }
    (nets, ids)
}

fn compile_policy(
    p: &PolicyConfig,
    index: u16,
    lease: u64,
    at: &str,
    errors: &mut ConfigError,
) -> Option<Policy> {
    let before = errors.problems().len();
    if p.name.is_empty() {
        errors.push(format!("{at}.name"), "a policy needs a name");
    } else if !p
        .name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
        || p.name.len() > 64
    {
        errors.push(
            format!("{at}.name"),
            format!("{:?}: use at most 64 of A-Z a-z 0-9 _ - .", p.name),
        );
    }
    let key = errors
        .collect(KeySpec::parse(&p.key).map_err(|m| ConfigError::new(format!("{at}.key"), m)));
    let fallback = match &p.fallback {
        None => None,
        Some(f) => errors
            .collect(KeySpec::parse(f).map_err(|m| ConfigError::new(format!("{at}.fallback"), m))),
    };
    if let (Some(k), Some(f)) = (&key, &fallback) {
        if f.needs_identity() && !k.needs_identity() {
            errors.push(
                format!("{at}.fallback"),
                "an identity fallback is only possible for an identity key (decided after auth)",
            );
        }
        if f == k {
            errors.push(format!("{at}.fallback"), "the fallback is the key itself");
        }
    }
    if p.limit == 0 {
        errors.push(format!("{at}.limit"), "must be at least 1");
    }
    if p.period_s == 0 {
        errors.push(format!("{at}.period_s"), "must be at least 1");
    } else if p.period_s > 10 * 366 * 86_400 {
        errors.push(format!("{at}.period_s"), "must be at most ten years");
    } else if p.limit > p.period_s.saturating_mul(MICROS) {
        errors.push(
            format!("{at}.limit"),
            "more than one request per microsecond cannot be measured",
        );
    }
    let burst = p.burst.unwrap_or(p.limit);
    if p.burst == Some(0) {
        errors.push(format!("{at}.burst"), "must be at least 1");
    } else if burst > 1_000_000_000 {
        errors.push(format!("{at}.burst"), "must be at most 1000000000");
    }
    if p.limit > 0
        && p.period_s > 0
        && p.burst != Some(0)
        && (p.period_s.saturating_mul(NANOS) / p.limit).saturating_mul(burst) > MAX_TOLERANCE_NS
    {
        errors.push(
            format!("{at}.burst"),
            "burst × period_s / limit must be at most ten years",
        );
    }
    if p.cost == 0 {
        errors.push(format!("{at}.cost"), "must be at least 1");
    } else if burst >= 1 && p.cost > burst {
        errors.push(
            format!("{at}.cost"),
            format!("a cost of {} never fits a burst of {burst}", p.cost),
        );
    }
    let matcher = errors.collect(RouteMatcher::compile(at, &p.paths, &p.methods));
    if errors.problems().len() != before {
        return None;
    }
    let (key, matcher) = (key?, matcher?);
    let period_ns = p.period_s * NANOS;
    let q_ns = Quota::new(period_ns, p.limit, burst);
    let q_us = Quota::new(p.period_s * MICROS, p.limit, burst);
    let policy_item = format!("\"{}\";q={};w={}", p.name, p.limit, p.period_s);
    // Validated here, so `from_static` below cannot panic.
    HeaderValue::try_from(policy_item.as_str()).ok()?;
    let policy_value = HeaderValue::from_static(crate::intern::intern(&policy_item));
    Some(Policy {
        name: Arc::from(p.name.as_str()),
        index,
        key,
        fallback,
        matcher,
        limit: p.limit,
        cost: p.cost,
        shadow: p.mode == PolicyMode::Shadow,
        q_ns,
        q_us,
        lease: if lease.min(burst) > p.cost {
            lease.min(burst)
        } else {
            0
        },
        policy_item,
        policy_value,
    })
}

/// Drops keys back at full quota every minute, until shutdown or until the layer is
/// gone. Without a runtime (a layer built outside tokio) the amortised eviction on
/// insert alone keeps memory bounded.
fn spawn_cleanup(shared: &Arc<Shared>, ctx: &BuildContext) {
    let Ok(handle) = tokio::runtime::Handle::try_current() else {
        return;
    };
    let weak: Weak<Shared> = Arc::downgrade(shared);
    let shutdown = ctx.shutdown.clone();
    handle.spawn(async move {
        let mut tick = tokio::time::interval(CLEANUP_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tokio::select! {
                _ = shutdown.wait() => return,
                _ = tick.tick() => {}
            }
            let Some(shared) = weak.upgrade() else { return };
            let now = shared.now_ns();
            shared.memory.sweep_full(now);
            #[cfg(feature = "redis")]
            if let Some(leases) = &shared.leases {
                leases.sweep(now);
            }
        }
    });
}

impl Stage {
    /// The policies that apply to this request, with the request's key value for
    /// each. Empty when the client is allow-listed.
    fn applicable(&self, req: &Request) -> Entries {
        let shared = &*self.shared;
        if !shared.allow_nets.is_empty() {
            let ip = key::client_ip(req).to_canonical();
            if shared.allow_nets.iter().any(|n| n.contains(&ip)) {
                return Entries::new();
            }
        }
        if self.after_auth
            && !shared.allow_ids.is_empty()
            && req
                .extensions()
                .get::<Identity>()
                .is_some_and(|id| shared.allow_ids.contains(&id.id))
        {
            return Entries::new();
        }
        let mut out = Entries::new();
        for (i, p) in self.policies.iter().enumerate() {
            if !p.matcher.matches(req.method(), req.uri().path()) {
                continue;
            }
            let value = p
                .key
                .extract(req, shared.ipv6_prefix)
                .or_else(|| p.fallback.as_ref()?.extract(req, shared.ipv6_prefix));
            if let Some(v) = value {
                out.push(Entry {
                    policy: i as u16, // i < MAX_POLICIES
                    hi: v.hi,
                    lo: v.lo,
                    tag: v.tag,
                    used_after: 0,
                    allowed: true,
                    remaining: 0,
                    reset_s: 0,
                });
            }
        }
        out
    }

    /// Decides with the in-memory store (all-or-nothing across the policies),
    /// filling in the entries `applicable` made.
    #[cfg(feature = "redis")]
    fn decide_memory(&self, entries: Entries) -> Verdict {
        let mut v = Verdict {
            entries,
            ..Verdict::default()
        };
        self.decide_memory_in(&mut v);
        v
    }

    /// [`Self::decide_memory`] on a verdict already in place: the entries are not
    /// moved (three inline entries are 150 bytes of `memcpy` a move).
    fn decide_memory_in(&self, v: &mut Verdict) {
        let shared = &*self.shared;
        let now = shared.now_ns();
        let mut retry_ns = 0;
        for e in &mut v.entries {
            let p = &self.policies[usize::from(e.policy)];
            let key = MemKey::new(p.index, e.value());
            let d = shared.memory.check(key, p.q_ns, p.cost, now);
            if !d.allowed {
                if p.shadow {
                    v.shadow_limited = true;
                } else {
                    v.limited = true;
                    retry_ns = retry_ns.max(d.retry);
                }
            }
            e.fill(d, p.q_ns, NANOS);
        }
        if v.limited {
            self.refund_memory(v);
            v.retry_s = gcra::ceil_secs(retry_ns, NANOS).max(1);
        }
    }

    /// Gives back, in memory, what the verdict's allowed entries took (the request
    /// was refused by another policy or by the after-auth stage), and reports the
    /// quota as it is after the refund.
    fn refund_memory(&self, v: &mut Verdict) {
        for e in v.entries.iter_mut().filter(|e| e.allowed) {
            let p = &self.policies[usize::from(e.policy)];
            let key = MemKey::new(p.index, e.value());
            self.shared.memory.refund(key, p.q_ns, p.cost);
            let used = e.used_after.saturating_sub(p.q_ns.interval * p.cost);
            e.fill_allowed(used, p.q_ns, NANOS);
        }
    }

    /// Whether the inner (after-auth) stage refused this response: the before-auth
    /// stage then gives its quota back, so a request refused by one stage costs the
    /// other nothing, as within one stage.
    fn refused_inside(&self, res: &Response) -> bool {
        !self.after_auth
            && res
                .extensions()
                .get::<RateLimitOutcome>()
                .is_some_and(|o| o.limited)
    }

    /// The 429 for a limited verdict.
    fn reject(&self, v: &Verdict) -> Response {
        let violated: Vec<serde_json::Value> = v
            .entries
            .iter()
            .filter(|e| !e.allowed && !self.policies[usize::from(e.policy)].shadow)
            .map(|e| serde_json::Value::from(&*self.policies[usize::from(e.policy)].name))
            .collect();
        let mut res = Problem::new(StatusCode::TOO_MANY_REQUESTS)
            .type_uri(QUOTA_EXCEEDED)
            .title("Request cannot be satisfied as assigned quota has been exceeded")
            .detail("Too many requests; retry after the time in Retry-After.")
            .extension("violated-policies", violated)
            .header(http::header::RETRY_AFTER, HeaderValue::from(v.retry_s))
            .rejection("rate_limit", "limited")
            .into_response();
        self.finish(&mut res, v);
        res
    }

    /// Adds this stage's headers and outcome to a response, merging with what an
    /// inner stage already wrote.
    fn finish(&self, res: &mut Response, v: &Verdict) {
        if v.entries.is_empty() {
            return;
        }
        match self.shared.headers {
            RateLimitHeaders::Ietf => self.ietf_headers(res.headers_mut(), v),
            RateLimitHeaders::Legacy => self.legacy_headers(res.headers_mut(), v),
            RateLimitHeaders::None => {}
        }
        if !v.record && !v.limited {
            // Nobody reads the record of an admitted request: no allocation for one.
            return;
        }
        let mine = self.outcome(v);
        let merged = match res.extensions_mut().remove::<RateLimitOutcome>() {
            Some(inner) if inner.limited || (!mine.limited && inner.shadow_limited) => {
                RateLimitOutcome {
                    limited: inner.limited || mine.limited,
                    shadow_limited: inner.shadow_limited || mine.shadow_limited,
                    policy: inner.policy,
                }
            }
            Some(inner) => RateLimitOutcome {
                shadow_limited: inner.shadow_limited || mine.shadow_limited,
                ..mine
            },
            None => mine,
        };
        res.extensions_mut().insert(merged);
    }

    fn outcome(&self, v: &Verdict) -> RateLimitOutcome {
        let pick = v
            .entries
            .iter()
            .find(|e| !e.allowed && !self.policies[usize::from(e.policy)].shadow)
            .or_else(|| v.entries.iter().find(|e| !e.allowed))
            .or_else(|| v.entries.iter().min_by_key(|e| e.remaining))
            .map_or(0, |e| usize::from(e.policy));
        RateLimitOutcome {
            limited: v.limited,
            shadow_limited: v.shadow_limited,
            policy: self.policies[pick].name.clone(),
        }
    }

    fn ietf_headers(&self, headers: &mut HeaderMap, v: &Verdict) {
        // Exact length: a `Vec` whose capacity equals its length becomes the
        // header's bytes without another allocation.
        let len = v
            .entries
            .iter()
            .map(|e| {
                self.policies[usize::from(e.policy)].name.len()
                    + 8
                    + digits(u64::from(e.remaining))
                    + digits(u64::from(e.reset_s))
            })
            .sum::<usize>()
            + 2 * (v.entries.len() - 1);
        let mut state = Vec::with_capacity(len);
        let mut num = itoa::Buffer::new();
        for (n, e) in v.entries.iter().enumerate() {
            if n > 0 {
                state.extend_from_slice(b", ");
            }
            let p = &self.policies[usize::from(e.policy)];
            state.push(b'"');
            state.extend_from_slice(p.name.as_bytes());
            state.extend_from_slice(b"\";r=");
            state.extend_from_slice(num.format(e.remaining).as_bytes());
            state.extend_from_slice(b";t=");
            state.extend_from_slice(num.format(e.reset_s).as_bytes());
        }
        let policy = if v.entries.len() == 1 {
            self.policies[usize::from(v.entries[0].policy)]
                .policy_value
                .clone()
        } else {
            let mut s = String::new();
            for (n, e) in v.entries.iter().enumerate() {
                if n > 0 {
                    s.push_str(", ");
                }
                s.push_str(&self.policies[usize::from(e.policy)].policy_item);
            }
            match HeaderValue::try_from(s) {
                Ok(v) => v,
                Err(_) => return,
            }
        };
        append_item(headers, RATELIMIT_POLICY, policy);
        debug_assert_eq!(state.len(), len);
        if let Ok(state) = HeaderValue::from_maybe_shared(bytes::Bytes::from(state)) {
            append_item(headers, RATELIMIT, state);
        }
    }

    fn legacy_headers(&self, headers: &mut HeaderMap, v: &Verdict) {
        let Some(e) = v.entries.iter().min_by_key(|e| {
            (
                e.allowed || self.policies[usize::from(e.policy)].shadow,
                e.remaining,
            )
        }) else {
            return;
        };
        let theirs = headers
            .get(&X_REMAINING)
            .and_then(|h| h.to_str().ok()?.parse::<u64>().ok());
        if theirs.is_some_and(|r| r <= u64::from(e.remaining)) {
            return; // an inner stage's policy is tighter
        }
        headers.insert(
            X_LIMIT,
            HeaderValue::from(self.policies[usize::from(e.policy)].limit),
        );
        headers.insert(X_REMAINING, HeaderValue::from(e.remaining));
        headers.insert(X_RESET, HeaderValue::from(e.reset_s));
    }
}

/// Number of decimal digits of `n`.
fn digits(n: u64) -> usize {
    n.checked_ilog10().map_or(1, |d| d as usize + 1)
}

/// Sets a structured-field list header, or appends our items to the list an inner
/// stage already wrote (one field line, so `headers.get` sees every policy).
fn append_item(headers: &mut HeaderMap, name: HeaderName, value: HeaderValue) {
    match headers.entry(name) {
        http::header::Entry::Vacant(slot) => {
            slot.insert(value);
        }
        http::header::Entry::Occupied(mut slot) => {
            let existing = slot.get();
            let mut joined = Vec::with_capacity(existing.len() + 2 + value.len());
            joined.extend_from_slice(existing.as_bytes());
            joined.extend_from_slice(b", ");
            joined.extend_from_slice(value.as_bytes());
            if let Ok(v) = HeaderValue::from_bytes(&joined) {
                slot.insert(v);
            }
        }
    }
}

impl Entry {
    /// The request's value for the policy's key.
    #[inline]
    fn value(&self) -> KeyValue {
        KeyValue {
            tag: self.tag,
            hi: self.hi,
            lo: self.lo,
        }
    }

    /// Records an admission that leaves the key's TAT `used_after` ticks ahead
    /// (after a refund, or a unit spent from a lease).
    #[inline]
    fn fill_allowed(&mut self, used_after: u64, q: Quota, per_sec: u64) {
        let d = gcra::Decision {
            allowed: true,
            used_after,
            retry: 0,
        };
        self.fill(d, q, per_sec);
    }

    /// Records a decision made with quota `q` in ticks of `1 / per_sec` seconds.
    #[inline]
    fn fill(&mut self, d: gcra::Decision, q: Quota, per_sec: u64) {
        self.used_after = d.used_after;
        self.allowed = d.allowed;
        self.remaining = u32::try_from(gcra::remaining(d.used_after, q)).unwrap_or(u32::MAX);
        self.reset_s = u32::try_from(gcra::ceil_secs(gcra::next_unit(d.used_after, q), per_sec))
            .unwrap_or(u32::MAX);
    }
}

impl<S> Layer<S> for RateLimitLayer {
    type Service = RateLimit<S>;
    fn layer(&self, inner: S) -> RateLimit<S> {
        RateLimit {
            inner,
            stage: self.stage.clone(),
            record: self.record,
        }
    }
}

/// Service made by [`RateLimitLayer`].
#[derive(Debug, Clone)]
pub struct RateLimit<S> {
    inner: S,
    stage: Arc<Stage>,
    record: bool,
}

impl<S> Service<Request> for RateLimit<S>
where
    S: Service<Request, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = Infallible;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request) -> Self::Future {
        let record = self.record || outcome::wanted(req.extensions());
        let mut v = Verdict {
            entries: self.stage.applicable(&req),
            record,
            ..Verdict::default()
        };
        if v.entries.is_empty() {
            return ResponseFuture {
                state: State::Inner {
                    fut: self.inner.call(req),
                    finish: None,
                },
            };
        }
        if self.stage.inner_stage && !record {
            // The inner stage's record tells this one whether to refund.
            req.extensions_mut().insert(RecordOutcomes);
        }
        #[cfg(feature = "redis")]
        if self.stage.shared.redis.is_some() {
            let clone = self.inner.clone();
            let mut inner = std::mem::replace(&mut self.inner, clone);
            let stage = self.stage.clone();
            let items = std::mem::take(&mut v.entries);
            return ResponseFuture {
                state: State::Boxed {
                    fut: Box::pin(async move {
                        let mut v = match stage.decide_redis(items).await {
                            Ok(v) => v,
                            Err(res) => return Ok(*res),
                        };
                        v.record = record;
                        if v.limited {
                            return Ok(stage.reject(&v));
                        }
                        let mut res = inner.call(req).await?;
                        if stage.refused_inside(&res) {
                            // Boxed: rare (a request refused further in).
                            Box::pin(stage.refund(&mut v)).await;
                        }
                        stage.finish(&mut res, &v);
                        Ok(res)
                    }),
                },
            };
        }
        // In memory the decision is synchronous: no task, no box, no clone of `inner`.
        self.stage.decide_memory_in(&mut v);
        if v.limited {
            return ResponseFuture {
                state: State::Ready {
                    res: Some(self.stage.reject(&v)),
                },
            };
        }
        ResponseFuture {
            state: State::Inner {
                fut: self.inner.call(req),
                finish: Some((self.stage.clone(), v)),
            },
        }
    }
}

pin_project_lite::pin_project! {
    /// Response future of [`RateLimit`]: no allocation for in-memory decisions.
    pub struct ResponseFuture<F> {
        #[pin]
        state: State<F>,
    }
}

pin_project_lite::pin_project! {
    #[project = StateProj]
    enum State<F> {
        // A rejection decided synchronously.
        Ready {
            res: Option<Response>,
        },
        // The inner service's future; headers added when it completes.
        Inner {
            #[pin]
            fut: F,
            finish: Option<(Arc<Stage>, Verdict)>,
        },
        // A Redis decision, then the inner service.
        Boxed {
            fut: Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>,
        },
    }
}

impl<F> std::fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl<F> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response, Infallible>>,
{
    type Output = Result<Response, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            StateProj::Ready { res } => match res.take() {
                Some(res) => Poll::Ready(Ok(res)),
                None => panic!("ResponseFuture polled after completion"),
            },
            StateProj::Inner { fut, finish } => {
                let mut res = std::task::ready!(fut.poll(cx))?;
                if let Some((stage, mut v)) = finish.take() {
                    if stage.refused_inside(&res) {
                        stage.refund_memory(&mut v);
                    }
                    stage.finish(&mut res, &v);
                }
                Poll::Ready(Ok(res))
            }
            StateProj::Boxed { fut } => fut.as_mut().poll(cx),
        }
    }
}
