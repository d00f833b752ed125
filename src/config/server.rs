//! `[server]` configuration.

use serde::{Deserialize, Serialize};

/// `[server]`: where the examples listen, and shutdown timing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct ServerConfig {
    /// Listen address (`PALISADE_SERVER__BIND` overrides it).
    pub bind: std::net::SocketAddr,
    /// How long a graceful shutdown waits for in-flight requests, in seconds.
    pub shutdown_timeout_s: u64,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            bind: std::net::SocketAddr::from(([127, 0, 0, 1], 8080)),
            shutdown_timeout_s: 30,
        }
    }
}
