//! What each palisade layer decided, attached to the response for the outer layers.
//!
//! Layers deep in the stack (rate limit, auth, cache) insert one of these into the
//! **response** extensions; the access log and metrics, outermost, read them. This
//! keeps the layers independent: none calls another, and a user's own layer can read
//! the same records.

use std::sync::Arc;

/// The rate limiter's verdict for one request (the most restrictive policy).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimitOutcome {
    /// Whether a policy in `enforce` mode rejected the request.
    pub limited: bool,
    /// Whether a `shadow` policy would have rejected it.
    pub shadow_limited: bool,
    /// The policy that decided (the limiting one, or the tightest that allowed).
    pub policy: Arc<str>,
}

/// The auth layer's verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthOutcome {
    /// `"api_key"`, `"jwt"` or `"none"`.
    pub scheme: &'static str,
    /// The verified identity id, never a secret.
    pub identity: Option<Arc<str>>,
    /// `"ok"`, `"anonymous"`, `"missing"`, `"invalid"`, `"expired"`, `"forbidden"`, ...
    pub outcome: &'static str,
}

/// What the cache did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheOutcome {
    /// Hit, miss, stale or bypass.
    pub status: CacheStatus,
    /// A short reason (for bypasses: `"method"`, `"authorization"`, `"store_error"`, ...).
    pub reason: &'static str,
}

/// Cache result classes, as used in logs and the `palisade_cache_requests_total` metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CacheStatus {
    /// Served from the cache.
    Hit,
    /// Not in the cache; fetched from the handler.
    Miss,
    /// Served stale (while revalidating, or because the upstream failed).
    Stale,
    /// The cache did not take part.
    Bypass,
}

impl CacheStatus {
    /// `"hit"`, `"miss"`, `"stale"` or `"bypass"`.
    pub fn as_str(self) -> &'static str {
        match self {
            CacheStatus::Hit => "hit",
            CacheStatus::Miss => "miss",
            CacheStatus::Stale => "stale",
            CacheStatus::Bypass => "bypass",
        }
    }
}
