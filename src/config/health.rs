//! `[health]` configuration.

use serde::{Deserialize, Serialize};

/// `[health]`: liveness and readiness endpoints.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct HealthConfig {
    /// Whether to serve the two endpoints (default `true`).
    pub enabled: bool,
    /// Liveness path (default `/health`): always `200` while the process serves.
    pub path: String,
    /// Readiness path (default `/ready`): runs the registered checks.
    pub ready_path: String,
    /// Timeout of each readiness check, in milliseconds (default 500: under the 1 s
    /// default probe timeout of Kubernetes).
    pub timeout_ms: u64,
    /// How long a readiness result is reused, in milliseconds (default 1000), so
    /// frequent probes cannot overload a dependency. `0` disables the cache.
    pub cache_ms: u64,
}

impl Default for HealthConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            path: "/health".to_owned(),
            ready_path: "/ready".to_owned(),
            timeout_ms: 500,
            cache_ms: 1000,
        }
    }
}
