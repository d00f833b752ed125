//! The Redis connection shared by the Redis-backed layers.
//!
//! (Work in progress.)

use crate::config::RedisConfig;
use crate::error::ConfigError;

/// A set of multiplexed connections to a Redis server or Cluster, with a timeout on
/// every command.
#[derive(Debug, Clone)]
pub struct RedisPool {
    _private: (),
}

impl RedisPool {
    /// Builds the pool from `[redis]`; `None` when no Redis is configured. Never
    /// waits for Redis: connections are made lazily and re-made after failures.
    pub fn from_config(config: &RedisConfig) -> Result<Option<Self>, ConfigError> {
        if config.url.is_none() && config.cluster_urls.is_empty() {
            return Ok(None);
        }
        Ok(Some(Self { _private: () }))
    }

    /// Readiness: `PING`, within the command timeout.
    pub async fn ping(&self) -> Result<(), String> {
        Err("not implemented".into())
    }
}
