//! `[redis]` configuration.

use serde::{Deserialize, Serialize};

/// `[redis]`: the connection shared by the Redis-backed layers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct RedisConfig {
    /// `redis://` or `rediss://` URL of a single server. Unset: no Redis.
    pub url: Option<String>,
    /// Seed node URLs of a Redis Cluster (instead of `url`).
    pub cluster_urls: Vec<String>,
    /// Number of multiplexed connections.
    pub pool_size: usize,
    /// Timeout of every Redis command, in milliseconds.
    pub timeout_ms: u64,
}

impl Default for RedisConfig {
    fn default() -> Self {
        Self {
            url: None,
            cluster_urls: Vec::new(),
            pool_size: 4,
            timeout_ms: 200,
        }
    }
}
