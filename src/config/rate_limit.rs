//! `[rate_limit]` configuration.

use serde::{Deserialize, Serialize};

/// `[rate_limit]`: policies and backend.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct RateLimitConfig {}

impl Default for RateLimitConfig {
    fn default() -> Self {
        Self {}
    }
}
