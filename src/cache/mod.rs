//! Response caching, in memory or in Redis: safe by default, stampede-proof,
//! fail-open.
//!
//! # Why it is built this way
//!
//! A shared cache that stores the wrong response serves it to everybody: one user's
//! account page to the next visitor, an attacker's `X-Forwarded-Host` in every link.
//! So caching here is opt-in per route (`[[cache.rules]]`) **and** response-driven:
//! a route's response is stored only if nothing about it says it must not be:
//!
//! * only `GET` (and `HEAD`, served from the `GET` entry) is looked up or stored;
//! * only cacheable statuses (200, 203, 204, 300, 301, 308, 404, 405, 410, 414;
//!   never 206, never a 5xx);
//! * the response's `Cache-Control` is honoured: `no-store`, `private`, `no-cache` →
//!   not stored; `s-maxage` / `max-age` shorten the rule's TTL;
//! * never stored: `Set-Cookie`, a CSP nonce, `Vary: *`, event streams, or a
//!   response to a request with credentials (`Authorization`, `Cookie`, an API key
//!   header, a verified identity) unless the rule caches `per_identity` or the
//!   response says `public`;
//! * a request with an unkeyed header a framework may act on (`X-Forwarded-Host`,
//!   `X-Original-URL`, `X-HTTP-Method-Override`, ...) may be served from the cache but
//!   never fills it, so no such header can poison an entry.
//!
//! Because storing is decided by the response, `/account/x.css` style cache
//! deception does not work: the extension plays no part.
//!
//! Successful unsafe requests (`POST`, `PUT`, `PATCH`, `DELETE`) invalidate every
//! stored variant of their path (RFC 9111 §4.4), and handlers can tag responses
//! (`x-cache-tags: items item-42`) and purge by tag with [`CacheLayer::purge_tag`].
//! Both use generation counters, not key scans: O(1), and safe on Redis Cluster.
//!
//! Every response of a cached route carries `Cache-Status` (RFC 9211) with the
//! reason when nothing was stored or served, `Age`, and `X-Cache: HIT|MISS`; a
//! [`CacheOutcome`] goes into the response extensions for logs and metrics when the
//! request asks for it ([`RecordOutcomes`](crate::outcome::RecordOutcomes), which the
//! standalone access-log and metrics layers insert), and always inside the full stack
//! when its access log or metrics are on. Every hit of one record within the same second
//! sends the same headers (`Age` and the TTL change by the second), so the record
//! keeps the header map of its last hit and the next one clones it: a reference count
//! per value instead of hashing every name into a new map and formatting `Age` again.
//!
//! Misses stream: the first byte reaches the client as soon as the handler sends it
//! while a copy is kept up to `max_body_bytes`; only a complete body is stored.
//! Concurrent misses on one key wait for a single upstream call (but not for a long
//! stream: 250 ms after its body starts they make their own call). When the store
//! fails (Redis down), requests go to the handler: the cache never fails a request.
//!
//! # Example
//!
//! ```
//! use axum::{Router, routing::get};
//! use palisade::cache::CacheLayer;
//! use palisade::config::{CacheConfig, CacheRule};
//! use palisade::stack::BuildContext;
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), palisade::error::ConfigError> {
//! let mut config = CacheConfig::default();
//! let mut rule = CacheRule::default();
//! rule.paths = vec!["/items/{id}".into()];
//! rule.ttl_s = Some(30);
//! config.rules.push(rule);
//!
//! let cache = CacheLayer::from_config(&config, &BuildContext::default())?
//!     .expect("a rule enables the cache");
//! let app: Router = Router::new()
//!     .route("/items/{id}", get(|| async { "an item" }))
//!     .layer(cache);
//! # let _ = app; Ok(()) }
//! ```

mod body;
pub(crate) mod entry;
mod flight;
pub(crate) mod key;
mod memory;
mod policy;
#[cfg(feature = "redis")]
mod redis;
mod service;

use std::sync::Arc;
use std::time::Duration;

use http::HeaderName;

use crate::config::{CacheBackend, CacheConfig};
use crate::error::ConfigError;
use crate::outcome::CacheOutcome;
use crate::route_match::RouteMatcher;
use crate::shutdown::Shutdown;
use crate::stack::BuildContext;

pub use service::Cache;

use self::flight::Flights;
use self::memory::MemoryStore;

/// How long requests that missed wait for the one upstream call on their key.
const COLLAPSE_WAIT: Duration = Duration::from_secs(5);
/// How much longer they wait once that call's body is streaming (it may be long:
/// they make their own call rather than wait for its end).
const STREAM_WAIT: Duration = Duration::from_millis(250);

/// Layer for `[cache]`; see the [module docs](self).
///
/// Cheap to clone: the store and state live behind one `Arc`.
#[derive(Clone)]
pub struct CacheLayer {
    shared: Arc<Shared>,
    /// Attach the outcome record to every response (the stack's access log or metrics
    /// read them), without a marker on the request.
    record: bool,
}

impl std::fmt::Debug for CacheLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CacheLayer")
            .field("rules", &self.shared.rules.len())
            .field("store", &self.shared.store)
            .finish_non_exhaustive()
    }
}

/// A store operation failed (Redis unreachable, timed out, or refused it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheStoreError(String);

impl std::fmt::Display for CacheStoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "cache store error: {}", self.0)
    }
}

impl std::error::Error for CacheStoreError {}

pub(crate) struct Rule {
    matcher: RouteMatcher,
    ttl_s: u64,
    vary: Vec<HeaderName>,
    ignore_query: Vec<String>,
    per_identity: bool,
}

pub(crate) enum Store {
    Memory(MemoryStore),
    #[cfg(feature = "redis")]
    Redis(redis::RedisStore),
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Store::Memory(m) => m.fmt(f),
            #[cfg(feature = "redis")]
            Store::Redis(_) => f.write_str("RedisStore"),
        }
    }
}

/// Milliseconds since the Unix epoch, advancing with tokio's clock (so tests can
/// pause and advance it) and anchored to the wall clock (so every replica agrees
/// on `Age`).
#[derive(Debug)]
pub(crate) struct Clock {
    base_ms: u64,
    base: tokio::time::Instant,
}

impl Clock {
    fn new() -> Self {
        let base_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        Self {
            base_ms,
            base: tokio::time::Instant::now(),
        }
    }

    pub(crate) fn now_ms(&self) -> u64 {
        self.base_ms + self.base.elapsed().as_millis() as u64
    }
}

pub(crate) struct Shared {
    rules: Vec<Rule>,
    store: Store,
    flights: Arc<Flights>,
    clock: Clock,
    max_body: usize,
    swr_ms: u64,
    sie_ms: u64,
    tag_header: HeaderName,
    surrogate_key: bool,
    shutdown: Shutdown,
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    lock: bool,
}

impl CacheLayer {
    /// `true` when the stack's access log or metrics read this layer's records: attach
    /// them to every response (no request marker needed, so no extension insert per
    /// request).
    pub(crate) fn recording(mut self, on: bool) -> Self {
        self.record = on;
        self
    }

    /// Builds the layer from its config section; `None` when no rule is configured.
    ///
    /// Every problem is reported at once, keyed by its dotted path.
    pub fn from_config(
        config: &CacheConfig,
        ctx: &BuildContext,
    ) -> Result<Option<Self>, ConfigError> {
        if config.rules.is_empty() {
            return Ok(None);
        }
        let mut errors = ConfigError::default();
        if config.default_ttl_s == 0 {
            errors.push("cache.default_ttl_s", "must be at least 1 second");
        }
        if config.max_body_bytes == 0 || config.max_body_bytes > 512 * 1024 * 1024 {
            errors.push(
                "cache.max_body_bytes",
                "must be between 1 byte and 512 MiB (Redis' value limit)",
            );
        }
        if config.key_prefix.contains(['{', '}']) {
            errors.push(
                "cache.key_prefix",
                "must not contain `{` or `}` (palisade adds the Cluster hash tags)",
            );
        }
        if config.max_entries == 0 {
            errors.push("cache.max_entries", "must be at least 1");
        }
        if config.max_memory_bytes < 1024 {
            errors.push("cache.max_memory_bytes", "must be at least 1024");
        }
        let tag_header = match HeaderName::from_bytes(config.tag_header.as_bytes()) {
            Ok(h) => h,
            Err(_) => {
                errors.push("cache.tag_header", "not a valid header name");
                HeaderName::from_static("x-cache-tags")
            }
        };
        let mut rules = Vec::with_capacity(config.rules.len());
        for (i, r) in config.rules.iter().enumerate() {
            let key = format!("cache.rules[{i}]");
            if r.paths.is_empty() {
                errors.push(format!("{key}.paths"), "list at least one route pattern");
            }
            let matcher = errors.collect(RouteMatcher::compile(&key, &r.paths, &[]));
            if r.ttl_s == Some(0) {
                errors.push(format!("{key}.ttl_s"), "must be at least 1 second");
            }
            let mut vary = Vec::with_capacity(r.vary.len());
            for (j, v) in r.vary.iter().enumerate() {
                match HeaderName::from_bytes(v.as_bytes()) {
                    Ok(h) if policy::is_credential_header(h.as_str()) => errors.push(
                        format!("{key}.vary[{j}]"),
                        "a credential header must not be part of a cache key; use `per_identity = true`",
                    ),
                    Ok(h) => vary.push(h),
                    Err(_) => errors.push(format!("{key}.vary[{j}]"), "not a valid header name"),
                }
            }
            vary.sort_by(|a, b| a.as_str().cmp(b.as_str()));
            vary.dedup();
            if let Some(matcher) = matcher {
                rules.push(Rule {
                    matcher,
                    ttl_s: r.ttl_s.unwrap_or(config.default_ttl_s),
                    vary,
                    ignore_query: r.ignore_query_params.clone(),
                    per_identity: r.per_identity,
                });
            }
        }
        #[cfg(feature = "redis")]
        let max_lifetime_ms = {
            let ttl = rules
                .iter()
                .map(|r| r.ttl_s)
                .max()
                .unwrap_or(config.default_ttl_s);
            (ttl + config.stale_while_revalidate_s.max(config.stale_if_error_s)) * 1000
        };
        let memory = || MemoryStore::new(config.max_entries, config.max_memory_bytes);
        let store = match config.backend {
            CacheBackend::Memory => {
                if config.lock {
                    errors.push(
                        "cache.lock",
                        "the fleet-wide lock needs `backend = \"redis\"`",
                    );
                }
                if config.memory_tier {
                    errors.push("cache.memory_tier", "only applies to `backend = \"redis\"`");
                }
                if config.compress_min_bytes != 0 {
                    // In process, entries are kept decoded: compressing them would
                    // cost a decompression on every hit.
                    errors.push(
                        "cache.compress_min_bytes",
                        "only applies to `backend = \"redis\"`; leave it at 0",
                    );
                }
                Some(Store::Memory(memory()))
            }
            #[cfg(feature = "redis")]
            CacheBackend::Redis => match &ctx.redis {
                Some(pool) => Some(Store::Redis(redis::RedisStore::new(
                    pool.clone(),
                    &config.key_prefix,
                    config.memory_tier.then(memory),
                    max_lifetime_ms,
                    config.compress_min_bytes,
                ))),
                None => {
                    errors.push(
                        "cache.backend",
                        "`redis` needs a `[redis]` url or cluster_urls",
                    );
                    None
                }
            },
            #[cfg(not(feature = "redis"))]
            CacheBackend::Redis => {
                errors.push(
                    "cache.backend",
                    "`redis` needs palisade built with the `redis` feature",
                );
                None
            }
        };
        errors.into_result()?;
        let Some(store) = store else {
            return Err(ConfigError::new("cache.backend", "no store"));
        };
        Ok(Some(Self {
            record: false,
            shared: Arc::new(Shared {
                rules,
                store,
                flights: Arc::new(Flights::default()),
                clock: Clock::new(),
                max_body: config.max_body_bytes,
                swr_ms: config.stale_while_revalidate_s * 1000,
                sie_ms: config.stale_if_error_s * 1000,
                tag_header,
                surrogate_key: config.surrogate_key,
                shutdown: ctx.shutdown.clone(),
                lock: config.lock,
            }),
        }))
    }

    /// Invalidates every entry tagged `tag`, on every replica sharing the store.
    ///
    /// Handlers tag responses with the `tag_header` (default `x-cache-tags`, space or
    /// comma separated). A purge bumps the tag's generation; entries built under an
    /// older one are misses from then on. O(1), no key scan, Cluster-safe.
    pub async fn purge_tag(&self, tag: &str) -> Result<(), CacheStoreError> {
        self.shared.store.purge_tag(tag).await
    }

    /// Invalidates every stored variant of `path` on `host` (as a successful unsafe
    /// request to it does).
    pub async fn invalidate_path(&self, host: &str, path: &str) -> Result<(), CacheStoreError> {
        let Some(host) = key::validate_host(host.as_bytes()) else {
            return Ok(());
        };
        self.shared.store.invalidate(key::group(&host, path)).await
    }
}

impl<S> tower::Layer<S> for CacheLayer {
    type Service = Cache<S>;
    fn layer(&self, inner: S) -> Cache<S> {
        Cache::new(inner, self.shared.clone(), self.record)
    }
}

impl Store {
    pub(crate) async fn purge_tag(&self, tag: &str) -> Result<(), CacheStoreError> {
        match self {
            Store::Memory(m) => {
                m.gens.bump_tag(tag);
                Ok(())
            }
            #[cfg(feature = "redis")]
            Store::Redis(r) => r.purge_tag(tag).await,
        }
    }

    pub(crate) async fn invalidate(&self, group: [u8; 16]) -> Result<(), CacheStoreError> {
        match self {
            Store::Memory(m) => {
                m.gens.bump_group(group);
                Ok(())
            }
            #[cfg(feature = "redis")]
            Store::Redis(r) => r.invalidate(group).await,
        }
    }

    /// The record under `key` and the group's current generation.
    pub(crate) async fn get(
        &self,
        key: &key::Key,
        now_ms: u64,
    ) -> Result<(Option<Arc<entry::Stored>>, u64), CacheStoreError> {
        match self {
            Store::Memory(m) => Ok((m.get(&key.full, now_ms), m.gens.group(&key.group))),
            #[cfg(feature = "redis")]
            // Boxed: about 500 bytes that every cache future would otherwise carry,
            // pushing a hit's future past 1 KiB (glibc's slower allocation path).
            Store::Redis(r) => Box::pin(r.get(key, now_ms)).await,
        }
    }

    pub(crate) async fn tag_gens(&self, tags: &[String]) -> Result<Vec<u64>, CacheStoreError> {
        if tags.is_empty() {
            return Ok(Vec::new());
        }
        match self {
            Store::Memory(m) => Ok(m.gens.tags(tags)),
            #[cfg(feature = "redis")]
            Store::Redis(r) => r.tag_gens(tags).await,
        }
    }

    /// Read before a fill calls the handler; see [`Self::tag_gens_if_unpurged`].
    pub(crate) async fn purge_epoch(&self) -> Result<u64, CacheStoreError> {
        match self {
            Store::Memory(m) => Ok(m.gens.purge_epoch()),
            #[cfg(feature = "redis")]
            Store::Redis(r) => r.purge_epoch().await,
        }
    }

    /// The tags' generations for a record about to be stored, read atomically with
    /// the purge epoch: `None` when a tag purge happened since the fill began (at
    /// `epoch`), so the response may be older than the purge and is not stored.
    pub(crate) async fn tag_gens_if_unpurged(
        &self,
        tags: &[String],
        epoch: u64,
    ) -> Result<Option<Vec<u64>>, CacheStoreError> {
        if tags.is_empty() {
            // Purges cannot reach an untagged entry.
            return Ok(Some(Vec::new()));
        }
        match self {
            Store::Memory(m) => Ok(m.gens.tags_if_unpurged(tags, epoch)),
            #[cfg(feature = "redis")]
            Store::Redis(r) => r.tag_gens_if_unpurged(tags, epoch).await,
        }
    }

    pub(crate) async fn put(&self, key: &key::Key, e: Arc<entry::Stored>, now_ms: u64) {
        match self {
            Store::Memory(m) => m.put(key.full, e),
            #[cfg(feature = "redis")]
            Store::Redis(r) => r.put(key, e, now_ms).await,
        }
        let _ = now_ms;
    }
}

pub(crate) fn outcome(status: crate::outcome::CacheStatus, reason: &'static str) -> CacheOutcome {
    CacheOutcome { status, reason }
}

/// The cache's parsers of client and stored input, for [`crate::fuzzing`] only.
#[cfg(feature = "fuzzing")]
pub(crate) mod fuzz_access {
    pub(crate) use super::entry::{Kind, ResponseData, Stored, checksum};
    pub(crate) use super::key::{KeyBuilder, normalise_query, validate_host};
    pub(crate) use super::policy::{ResponseDirectives, vary_names};
}
