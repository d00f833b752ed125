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

/// The default `exclude_paths` of `[logging]` and `[metrics]`: the operational routes
/// at their default paths.
pub const DEFAULT_OPS_PATHS: &[&str] = &["/metrics", "/health", "/ready"];

/// `exclude_paths` as the layers should apply it: a list left at its default
/// ([`DEFAULT_OPS_PATHS`]) follows the operational routes wherever `metrics.path`,
/// `health.path` and `health.ready_path` moved them; a list the user changed is kept
/// as written. `None` when nothing changes.
pub(crate) fn follow_ops_paths(
    exclude_paths: &[String],
    metrics_path: &str,
    health: &HealthConfig,
) -> Option<Vec<String>> {
    let is_default = exclude_paths.len() == DEFAULT_OPS_PATHS.len()
        && exclude_paths
            .iter()
            .zip(DEFAULT_OPS_PATHS)
            .all(|(a, b)| a == b);
    if !is_default {
        return None;
    }
    // An invalid path is reported under its own key, not again as an exclusion.
    let moved: Vec<String> = [metrics_path, &health.path, &health.ready_path]
        .into_iter()
        .filter(|p| p.starts_with('/'))
        .map(str::to_owned)
        .collect();
    (moved != exclude_paths).then_some(moved)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_exclusions_follow_moved_paths_and_explicit_ones_stay() {
        let defaults: Vec<String> = DEFAULT_OPS_PATHS.iter().map(|s| (*s).to_owned()).collect();
        let health = HealthConfig::default();
        assert_eq!(follow_ops_paths(&defaults, "/metrics", &health), None);
        let moved = HealthConfig {
            path: "/livez".into(),
            ready_path: "/readyz".into(),
            ..HealthConfig::default()
        };
        assert_eq!(
            follow_ops_paths(&defaults, "/internal/metrics", &moved),
            Some(vec![
                "/internal/metrics".to_owned(),
                "/livez".to_owned(),
                "/readyz".to_owned()
            ])
        );
        let explicit = vec!["/metrics".to_owned()];
        assert_eq!(
            follow_ops_paths(&explicit, "/internal/metrics", &moved),
            None
        );
        let bad = HealthConfig {
            path: "livez".into(),
            ..HealthConfig::default()
        };
        assert_eq!(
            follow_ops_paths(&defaults, "/metrics", &bad),
            Some(vec!["/metrics".to_owned(), "/ready".to_owned()])
        );
    }
}
