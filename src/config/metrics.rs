//! `[metrics]` configuration.

use serde::{Deserialize, Serialize};

/// `[metrics]`: Prometheus metrics.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct MetricsConfig {}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {}
    }
}
