//! What each palisade layer decided, attached to the response for the outer layers.
//!
//! Layers deep in the stack (rate limit, auth, cache) insert one of these into the
//! **response** extensions; the access log and metrics, outermost, read them. This
//! keeps the layers independent: none calls another, and a user's own layer can read
//! the same records.
//!
//! The rate-limit, auth and cache layers attach their record to a response they let
//! through only when someone will read it: when the request carries the
//! [`RecordOutcomes`] marker. The access-log and metrics layers insert it; a layer of
//! your own that reads the records inserts it too. Used without a reader, those
//! layers then allocate nothing for records nobody reads (the first extension of a
//! response costs three allocations). Rejections always carry their record.
//!
//! In the full stack ([`Palisade`](crate::Palisade)) there is no marker: when its
//! access log or metrics are on, the stack's own rate limiter, auth and cache attach
//! their records to every response (a marker would be one more request extension, and
//! with axum's own and palisade's it made the request's extension map grow once more).
//! A palisade layer you apply yourself below the stack, to one route say, still
//! attaches the record of an admitted request only when asked: insert the marker in
//! a middleware between the stack and that layer.
//!
//! ```
//! use axum::{Router, extract::Request, middleware::{self, Next}, routing::get};
//! use palisade::outcome::{RateLimitOutcome, RecordOutcomes};
//!
//! async fn audit(mut req: Request, next: Next) -> axum::response::Response {
//!     req.extensions_mut().insert(RecordOutcomes);
//!     let res = next.run(req).await;
//!     if let Some(rl) = res.extensions().get::<RateLimitOutcome>() {
//!         println!("rate limit: limited={} policy={}", rl.limited, rl.policy);
//!     }
//!     res
//! }
//!
//! let app: Router = Router::new()
//!     .route("/", get(|| async { "hi" }))
//!     .layer(middleware::from_fn(audit));
//! ```

use std::sync::Arc;

/// Request extension: asks palisade's layers below to attach their outcome records
/// ([`RateLimitOutcome`], [`AuthOutcome`], [`CacheOutcome`]) to the response. A
/// zero-sized marker: inserting it allocates nothing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RecordOutcomes;

/// Whether a layer should attach its outcome record to this request's response.
#[cfg(any(
    feature = "rate-limit",
    feature = "api-key",
    feature = "jwt",
    feature = "cache"
))]
#[inline]
pub(crate) fn wanted(request_extensions: &http::Extensions) -> bool {
    request_extensions.get::<RecordOutcomes>().is_some()
}

/// Inserts [`RecordOutcomes`] unless an outer layer already did: in the full stack the
/// access log and the metrics layer both read the records, and a second insert is a
/// hash-map write for nothing.
#[cfg(any(feature = "trace", feature = "metrics"))]
#[inline]
pub(crate) fn ask(request_extensions: &mut http::Extensions) {
    if request_extensions.get::<RecordOutcomes>().is_none() {
        request_extensions.insert(RecordOutcomes);
    }
}

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
