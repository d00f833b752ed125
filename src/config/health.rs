//! `[health]` configuration.

use serde::{Deserialize, Serialize};

/// `[health]`: liveness and readiness endpoints.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct HealthConfig {}

impl Default for HealthConfig {
    fn default() -> Self {
        Self {}
    }
}
