//! `[auth]` configuration.

use serde::{Deserialize, Serialize};

/// `[auth]`: API keys, JWT and per-route rules.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct AuthConfig {}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {}
    }
}
