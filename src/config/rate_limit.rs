//! `[rate_limit]` configuration.

use serde::{Deserialize, Serialize};

/// `[rate_limit]`: policies and backend.
///
/// ```toml
/// [rate_limit]
/// backend = "memory"          # or "redis" (needs [redis] and the `redis` feature)
/// on_store_error = "local"    # redis only: "allow" | "deny" | "local"
/// headers = "ietf"            # "ietf" | "legacy" | "none"
/// max_keys = 100000
/// ipv6_prefix = 64
/// allow = ["10.0.0.0/8", "identity:ops-bot"]
/// lease = 0                   # redis only: units leased per key and replica (0 = off)
/// lease_ms = 1000             # redis only: how long a lease may be spent
///
/// [[rate_limit.policies]]
/// name = "per-ip"
/// key = "ip"
/// limit = 100
/// period_s = 60
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct RateLimitConfig {
    /// Where the limiter state lives.
    pub backend: RateLimitBackend,
    /// What to do when the Redis backend fails or exceeds its timeout.
    pub on_store_error: OnStoreError,
    /// Which rate-limit response headers to send.
    pub headers: RateLimitHeaders,
    /// Cap on the number of keys the in-memory limiter keeps (also for the `local`
    /// fallback of the Redis backend). The least recently seen keys are evicted.
    pub max_keys: usize,
    /// IPv6 clients are grouped by this prefix length (one host controls a whole /64).
    pub ipv6_prefix: u8,
    /// Never limited: CIDRs or single addresses, and `identity:<id>` entries.
    pub allow: Vec<String>,
    /// The policies; none means the layer is disabled.
    pub policies: Vec<PolicyConfig>,
    /// Redis only, hybrid mode: each replica takes this many units of a key's quota
    /// from Redis at once and spends them locally, without a round trip, for up to
    /// `lease_ms` (capped per policy at its `burst`). `0` (the default) decides every
    /// request in Redis. Over-admission is bounded: see the rate-limit module docs.
    pub lease: u64,
    /// How long leased units may be spent before they are forfeited (1 to 60 000).
    pub lease_ms: u64,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        Self {
            backend: RateLimitBackend::Memory,
            on_store_error: OnStoreError::Local,
            headers: RateLimitHeaders::Ietf,
            max_keys: 100_000,
            ipv6_prefix: 64,
            allow: Vec::new(),
            policies: Vec::new(),
            lease: 0,
            lease_ms: 1000,
        }
    }
}

/// `rate_limit.backend`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum RateLimitBackend {
    /// In this process: exact per replica.
    #[default]
    Memory,
    /// In Redis: one quota shared by every replica.
    Redis,
}

/// `rate_limit.on_store_error`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum OnStoreError {
    /// Let the request through unlimited.
    Allow,
    /// Answer 503 with `Retry-After`.
    Deny,
    /// Decide with the in-memory limiter of this replica (default).
    #[default]
    Local,
}

/// `rate_limit.headers`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum RateLimitHeaders {
    /// `RateLimit` and `RateLimit-Policy` (draft-ietf-httpapi-ratelimit-headers-10).
    #[default]
    Ietf,
    /// `X-RateLimit-Limit`, `X-RateLimit-Remaining`, `X-RateLimit-Reset`.
    Legacy,
    /// No quota headers (`Retry-After` is still sent on a 429).
    None,
}

/// `rate_limit.policies[i].mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum PolicyMode {
    /// Reject requests over the limit.
    #[default]
    Enforce,
    /// Count and report what would be limited, but let it through.
    Shadow,
}

/// `[[rate_limit.policies]]`: one quota.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct PolicyConfig {
    /// Unique name, used in headers, logs and metrics (`[A-Za-z0-9_.-]`).
    pub name: String,
    /// What is counted: `ip`, `header:<name>`, `global`, `identity`, `api_key`, `jwt_sub`.
    pub key: String,
    /// Used when the request has no value for `key` (for example no identity);
    /// unset: such requests are not counted by this policy.
    pub fallback: Option<String>,
    /// Requests (cost units) per `period_s`.
    pub limit: u64,
    /// The period, in seconds.
    pub period_s: u64,
    /// How many units may be spent at once; default `limit`.
    pub burst: Option<u64>,
    /// Route patterns the policy applies to; empty: all.
    pub paths: Vec<String>,
    /// Methods the policy applies to; empty: all.
    pub methods: Vec<String>,
    /// Units one request costs.
    pub cost: u64,
    /// `enforce` or `shadow`.
    pub mode: PolicyMode,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        Self {
            name: String::new(),
            key: "ip".to_owned(),
            fallback: None,
            limit: 0,
            period_s: 0,
            burst: None,
            paths: Vec::new(),
            methods: Vec::new(),
            cost: 1,
            mode: PolicyMode::Enforce,
        }
    }
}

impl PolicyConfig {
    /// A policy named `name` counting `key` (`"ip"`, `"header:<name>"`, `"global"`,
    /// `"identity"`, `"api_key"`, `"jwt_sub"`): `limit` units per `period_s` seconds,
    /// burst = `limit`, cost 1, every route, enforced.
    #[must_use]
    pub fn new(name: impl Into<String>, key: impl Into<String>, limit: u64, period_s: u64) -> Self {
        Self {
            name: name.into(),
            key: key.into(),
            limit,
            period_s,
            ..Self::default()
        }
    }

    /// Sets `burst`.
    #[must_use]
    pub fn burst(mut self, burst: u64) -> Self {
        self.burst = Some(burst);
        self
    }

    /// Sets `cost`.
    #[must_use]
    pub fn cost(mut self, cost: u64) -> Self {
        self.cost = cost;
        self
    }

    /// Restricts the policy to these route patterns and methods (empty: all).
    #[must_use]
    pub fn routes<P: Into<String>, M: Into<String>>(
        mut self,
        paths: impl IntoIterator<Item = P>,
        methods: impl IntoIterator<Item = M>,
    ) -> Self {
        self.paths = paths.into_iter().map(Into::into).collect();
        self.methods = methods.into_iter().map(Into::into).collect();
        self
    }

    /// Sets the `fallback` key.
    #[must_use]
    pub fn fallback(mut self, key: impl Into<String>) -> Self {
        self.fallback = Some(key.into());
        self
    }

    /// Shadow mode: count and report, never reject.
    #[must_use]
    pub fn shadow(mut self) -> Self {
        self.mode = PolicyMode::Shadow;
        self
    }
}

impl RateLimitConfig {
    /// Adds a policy.
    #[must_use]
    pub fn policy(mut self, policy: PolicyConfig) -> Self {
        self.policies.push(policy);
        self
    }

    /// Sets `headers`.
    #[must_use]
    pub fn headers(mut self, headers: RateLimitHeaders) -> Self {
        self.headers = headers;
        self
    }

    /// Adds `allow` entries (CIDRs, addresses, `identity:<id>`).
    #[must_use]
    pub fn allow<A: Into<String>>(mut self, entries: impl IntoIterator<Item = A>) -> Self {
        self.allow.extend(entries.into_iter().map(Into::into));
        self
    }

    /// Sets `max_keys`.
    #[must_use]
    pub fn max_keys(mut self, max_keys: usize) -> Self {
        self.max_keys = max_keys;
        self
    }

    /// Sets `ipv6_prefix`.
    #[must_use]
    pub fn ipv6_prefix(mut self, prefix: u8) -> Self {
        self.ipv6_prefix = prefix;
        self
    }

    /// Redis only: leases `units` of each key's quota per replica at a time, spent
    /// locally for at most `lease_ms` (the hybrid mode; `units = 0` turns it off).
    #[must_use]
    pub fn lease(mut self, units: u64, lease_ms: u64) -> Self {
        self.lease = units;
        self.lease_ms = lease_ms;
        self
    }

    /// Uses the Redis backend (the pool comes from the [`BuildContext`]) with this
    /// failure policy.
    ///
    /// [`BuildContext`]: crate::stack::BuildContext
    #[must_use]
    pub fn redis(mut self, on_store_error: OnStoreError) -> Self {
        self.backend = RateLimitBackend::Redis;
        self.on_store_error = on_store_error;
        self
    }
}
