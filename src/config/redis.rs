//! `[redis]` configuration.
//!
//! ```toml
//! [redis]
//! url = "redis://127.0.0.1:6379"   # or: cluster_urls = ["redis://10.0.0.1:7000", ...]
//! pool_size = 4                    # multiplexed connections (single server)
//! timeout_ms = 200                 # deadline of every command, connecting included
//! connect_timeout_ms = 1000        # deadline of one TCP connect + handshake
//! breaker_ms = 1000                # fail fast this long after a connection failure
//! auto_pipeline = true             # write concurrent calls' commands together
//! ```

use serde::{Deserialize, Serialize};

use crate::error::ConfigError;

/// `[redis]`: the connection shared by the Redis-backed layers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct RedisConfig {
    /// `redis://` URL of a single server (`rediss://` needs TLS support, which this
    /// build does not include; `unix://` / `redis+unix://` for a Unix socket).
    /// Unset (and `cluster_urls` empty): no Redis.
    pub url: Option<String>,
    /// Seed node URLs of a Redis Cluster (instead of `url`). One reachable seed is
    /// enough; the others are used when it is down.
    pub cluster_urls: Vec<String>,
    /// Number of multiplexed connections to a single server (default 4). Each one
    /// carries any number of concurrent commands; more than one spreads the load of
    /// reading replies over several tasks. Ignored for a Cluster, which keeps one
    /// multiplexed connection per node.
    pub pool_size: usize,
    /// Deadline of every Redis call, in milliseconds (default 200), including the
    /// wait for a (re)connection. A call that misses it fails with a timeout.
    pub timeout_ms: u64,
    /// Deadline of one connection attempt (TCP connect plus handshake), in
    /// milliseconds (default 1000). A connection that is still being made when a
    /// call's deadline passes keeps going in the background for the next call.
    pub connect_timeout_ms: u64,
    /// Circuit breaker interval in milliseconds (default 1000): after a connection
    /// failure or a timeout, calls fail at once for this long, then one probe call is
    /// let through; its success closes the breaker.
    pub breaker_ms: u64,
    /// Single server: commands of concurrent calls made in the same scheduler pass
    /// are written in one pipeline, one write and one read for all of them, instead
    /// of one each (default `true`). Replies, errors and deadlines stay per call.
    /// Under load this saves most of the system calls a Redis round trip costs; a
    /// call made while no other is in flight is written at once, as without it.
    /// Ignored for a Cluster (its commands are routed per key).
    pub auto_pipeline: bool,
}

impl Default for RedisConfig {
    fn default() -> Self {
        Self {
            url: None,
            cluster_urls: Vec::new(),
            pool_size: 4,
            timeout_ms: 200,
            connect_timeout_ms: 1000,
            breaker_ms: 1000,
            auto_pipeline: true,
        }
    }
}

/// Upper bound of every duration setting: one hour. Larger values are surely a
/// unit mistake (seconds given as milliseconds), and would make a hang look like a
/// deadline.
const MAX_MS: u64 = 3_600_000;

/// Upper bound of `pool_size`: more multiplexed connections than this never help.
const MAX_POOL_SIZE: usize = 256;

impl RedisConfig {
    /// A configuration for one server at `url`, with the default settings.
    #[must_use]
    pub fn single(url: impl Into<String>) -> Self {
        Self {
            url: Some(url.into()),
            ..Self::default()
        }
    }

    /// A configuration for a Redis Cluster with these seed nodes, with the default
    /// settings.
    #[must_use]
    pub fn cluster<I, S>(urls: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self {
            cluster_urls: urls.into_iter().map(Into::into).collect(),
            ..Self::default()
        }
    }

    /// Sets `pool_size`.
    #[must_use]
    pub fn with_pool_size(mut self, pool_size: usize) -> Self {
        self.pool_size = pool_size;
        self
    }

    /// Sets `timeout_ms`.
    #[must_use]
    pub fn with_timeout_ms(mut self, timeout_ms: u64) -> Self {
        self.timeout_ms = timeout_ms;
        self
    }

    /// Sets `connect_timeout_ms`.
    #[must_use]
    pub fn with_connect_timeout_ms(mut self, connect_timeout_ms: u64) -> Self {
        self.connect_timeout_ms = connect_timeout_ms;
        self
    }

    /// Sets `breaker_ms`.
    #[must_use]
    pub fn with_breaker_ms(mut self, breaker_ms: u64) -> Self {
        self.breaker_ms = breaker_ms;
        self
    }

    /// Sets `auto_pipeline`.
    #[must_use]
    pub fn with_auto_pipeline(mut self, auto_pipeline: bool) -> Self {
        self.auto_pipeline = auto_pipeline;
        self
    }

    /// Whether a Redis connection is configured at all.
    pub fn is_configured(&self) -> bool {
        self.url.is_some() || !self.cluster_urls.is_empty()
    }

    /// Checks every setting and reports every problem at once, keys named
    /// `redis.url`, `redis.cluster_urls[1]`, `redis.pool_size`, ...
    ///
    /// An unset section (no `url`, no `cluster_urls`) is valid: it means no Redis.
    /// URLs are never echoed in messages, as they may hold a password.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut errors = ConfigError::default();
        if let Some(url) = &self.url {
            check_url(&mut errors, "redis.url", url);
            if !self.cluster_urls.is_empty() {
                errors.push(
                    "redis.url",
                    "set either `url` (one server) or `cluster_urls` (a Redis Cluster), not both",
                );
            }
        }
        for (i, url) in self.cluster_urls.iter().enumerate() {
            check_url(&mut errors, &format!("redis.cluster_urls[{i}]"), url);
            if is_unix(url) {
                errors.push(
                    format!("redis.cluster_urls[{i}]"),
                    "a Redis Cluster node must be a TCP address (redis://host:port)",
                );
            }
        }
        if self.pool_size == 0 {
            errors.push("redis.pool_size", "must be at least 1");
        } else if self.pool_size > MAX_POOL_SIZE {
            errors.push(
                "redis.pool_size",
                format!("must be at most {MAX_POOL_SIZE} (each connection multiplexes any number of commands)"),
            );
        }
        for (key, value) in [
            ("redis.timeout_ms", self.timeout_ms),
            ("redis.connect_timeout_ms", self.connect_timeout_ms),
            ("redis.breaker_ms", self.breaker_ms),
        ] {
            if value == 0 {
                errors.push(key, "must be at least 1 (milliseconds)");
            } else if value > MAX_MS {
                errors.push(
                    key,
                    format!("must be at most {MAX_MS} (one hour, in milliseconds)"),
                );
            }
        }
        errors.into_result()
    }
}

fn is_unix(url: &str) -> bool {
    let scheme = url.split_once("://").map_or("", |(s, _)| s);
    matches!(
        scheme.to_ascii_lowercase().as_str(),
        "unix" | "redis+unix" | "valkey+unix"
    )
}

/// Checks the scheme and that the URL has a host, without printing the URL.
fn check_url(errors: &mut ConfigError, key: &str, url: &str) {
    let Some((scheme, rest)) = url.split_once("://") else {
        errors.push(
            key,
            "not a URL: expected redis://[user:password@]host[:port][/db]",
        );
        return;
    };
    match scheme.to_ascii_lowercase().as_str() {
        "redis" | "valkey" => {
            // Host part: after any `user:password@`, before any `/db`.
            let authority = rest.split('/').next().unwrap_or_default();
            let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
            if host.is_empty() {
                errors.push(key, "the URL has no host: expected redis://host[:port]");
            }
        }
        "rediss" | "valkeys" => errors.push(
            key,
            "`rediss://` (TLS) is not supported by this build of palisade; use redis:// \
             over a private network or a TLS-terminating proxy",
        ),
        "unix" | "redis+unix" | "valkey+unix" => {
            if rest.is_empty() {
                errors.push(
                    key,
                    "the URL has no socket path: expected unix:///path/to/redis.sock",
                );
            }
        }
        other => {
            // The scheme is not secret, but keep it short in case of a pasted value.
            let shown: String = other.chars().take(16).collect();
            errors.push(
                key,
                format!("unsupported URL scheme `{shown}`: expected redis:// (or unix://)"),
            );
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_mean_no_redis() {
        let c = RedisConfig::default();
        assert!(!c.is_configured());
        assert!(c.validate().is_ok());
        assert!(
            RedisConfig::single("redis://127.0.0.1:6379")
                .validate()
                .is_ok()
        );
        assert!(
            RedisConfig::single("redis://:secret@localhost/2")
                .validate()
                .is_ok()
        );
        assert!(
            RedisConfig::single("unix:///tmp/redis.sock")
                .validate()
                .is_ok()
        );
        assert!(
            RedisConfig::cluster(["redis://a:7000", "redis://b:7001"])
                .validate()
                .is_ok()
        );
    }

    #[test]
    fn every_problem_is_reported_together() {
        let mut c = RedisConfig::single("http://user:hunter2@example.com");
        c.cluster_urls = vec!["redis://ok:1".into(), "nonsense".into(), "unix:///s".into()];
        c.pool_size = 0;
        c.timeout_ms = 0;
        c.connect_timeout_ms = MAX_MS + 1;
        c.breaker_ms = 0;
        let err = c.validate().unwrap_err();
        for key in [
            "redis.url",
            "redis.cluster_urls[1]",
            "redis.cluster_urls[2]",
            "redis.pool_size",
            "redis.timeout_ms",
            "redis.connect_timeout_ms",
            "redis.breaker_ms",
        ] {
            assert!(err.has_key(key), "{key} missing in {err}");
        }
        assert!(!err.has_key("redis.cluster_urls[0]"), "{err}");
        // Both the bad scheme and the url + cluster_urls conflict are named.
        let url_problems = err
            .problems()
            .iter()
            .filter(|p| p.key == "redis.url")
            .count();
        assert_eq!(url_problems, 2, "{err}");
        assert!(
            !err.to_string().contains("hunter2"),
            "password leaked: {err}"
        );
    }

    #[test]
    fn tls_and_hostless_urls_are_rejected() {
        assert!(
            RedisConfig::single("rediss://h:6380")
                .validate()
                .unwrap_err()
                .has_key("redis.url")
        );
        assert!(
            RedisConfig::single("redis://")
                .validate()
                .unwrap_err()
                .has_key("redis.url")
        );
        assert!(
            RedisConfig::single("redis://pw@/0")
                .validate()
                .unwrap_err()
                .has_key("redis.url")
        );
        let big = RedisConfig::single("redis://h").with_pool_size(MAX_POOL_SIZE + 1);
        assert!(big.validate().unwrap_err().has_key("redis.pool_size"));
    }

    #[test]
    fn loads_from_toml_with_defaults_for_missing_keys() {
        let c: RedisConfig = toml::from_str("url = \"redis://h\"\nbreaker_ms = 50\n").unwrap();
        assert_eq!(c.url.as_deref(), Some("redis://h"));
        assert_eq!(c.breaker_ms, 50);
        assert_eq!(c.timeout_ms, 200);
        assert_eq!(c.pool_size, 4);
    }
}
