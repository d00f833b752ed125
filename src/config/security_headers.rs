//! `[security_headers]` configuration.

use serde::{Deserialize, Serialize};

/// `[security_headers]`: the response security header set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct SecurityHeadersConfig {}

impl Default for SecurityHeadersConfig {
    fn default() -> Self {
        Self {}
    }
}
