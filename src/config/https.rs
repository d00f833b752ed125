//! `[https]` configuration.

use serde::{Deserialize, Serialize};

/// `[https]`: HTTPS redirect and host validation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct HttpsConfig {}

impl Default for HttpsConfig {
    fn default() -> Self {
        Self {}
    }
}
