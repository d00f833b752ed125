//! `[cache]` configuration.

use serde::{Deserialize, Serialize};

/// `[cache]`: response caching rules and backend.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct CacheConfig {}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {}
    }
}
