//! `[logging]` configuration.

use serde::{Deserialize, Serialize};

/// `[logging]`: access logs and the tracing subscriber.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct LoggingConfig {}

impl Default for LoggingConfig {
    fn default() -> Self {
        Self {}
    }
}
