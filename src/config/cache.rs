//! `[cache]` configuration.

use serde::{Deserialize, Serialize};

/// Where cached responses live.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum CacheBackend {
    /// A bounded in-process cache (per replica).
    #[default]
    Memory,
    /// Redis (shared by every replica); needs `[redis]` and the `redis` feature.
    Redis,
}

/// `[cache]`: response caching rules and backend.
///
/// Caching is off until at least one `[[cache.rules]]` entry selects routes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct CacheConfig {
    /// `"memory"` (default) or `"redis"`.
    pub backend: CacheBackend,
    /// Freshness of a stored response when its rule sets no `ttl_s` (seconds).
    pub default_ttl_s: u64,
    /// Largest body kept for storing; larger responses pass through unstored.
    pub max_body_bytes: usize,
    /// How long past freshness a stale entry is served while one background
    /// request refreshes it (seconds, RFC 5861). 0 disables.
    pub stale_while_revalidate_s: u64,
    /// How long past freshness a stale entry is served when the handler fails
    /// with a 5xx (seconds, RFC 5861). 0 disables.
    pub stale_if_error_s: u64,
    /// Redis backend: store responses whose body has at least this many bytes
    /// LZ4-compressed (less memory and network per entry, some CPU per hit). Bodies
    /// that are already compressed (`Content-Encoding`, images, audio, video,
    /// archives) or do not shrink are stored as they are. 0 = off (default).
    pub compress_min_bytes: usize,
    /// Prefix of every Redis key (a namespace per application).
    pub key_prefix: String,
    /// Take a short Redis lock on a miss so a whole fleet makes one upstream call
    /// per key (Redis backend only).
    pub lock: bool,
    /// Memory backend (and Redis first tier): maximum number of entries.
    pub max_entries: usize,
    /// Memory backend (and Redis first tier): maximum total bytes of the entries.
    pub max_memory_bytes: u64,
    /// Redis backend: keep a small in-process first tier in front of Redis.
    pub memory_tier: bool,
    /// Response header in which the handler lists cache tags (space or comma
    /// separated). The layer reads and removes it.
    pub tag_header: String,
    /// Re-emit the tags to the client as `Surrogate-Key` (for a CDN in front).
    pub surrogate_key: bool,
    /// Which routes are cached and how.
    pub rules: Vec<CacheRule>,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            backend: CacheBackend::Memory,
            default_ttl_s: 60,
            max_body_bytes: 1024 * 1024,
            stale_while_revalidate_s: 0,
            stale_if_error_s: 0,
            compress_min_bytes: 0,
            key_prefix: "palisade:cache:".into(),
            lock: false,
            max_entries: 10_000,
            max_memory_bytes: 64 * 1024 * 1024,
            memory_tier: false,
            tag_header: "x-cache-tags".into(),
            surrogate_key: false,
            rules: Vec::new(),
        }
    }
}

/// `[[cache.rules]]`: one group of cached routes.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct CacheRule {
    /// Route patterns (`/items/{id}`, `/files/{*rest}`); required.
    pub paths: Vec<String>,
    /// Freshness in seconds; `default_ttl_s` when unset. A response's
    /// `s-maxage`/`max-age` can only shorten it.
    pub ttl_s: Option<u64>,
    /// Request headers that select a different variant (e.g. `accept-language`).
    pub vary: Vec<String>,
    /// Query parameters left out of the key (e.g. `utm_source`).
    pub ignore_query_params: Vec<String>,
    /// Cache per verified identity: requests with credentials are cached under the
    /// caller's identity id instead of bypassing the cache.
    pub per_identity: bool,
}
