//! `[metrics]` configuration.

use serde::{Deserialize, Serialize};

/// The bucket bounds (seconds) OpenTelemetry recommends for
/// `http.server.request.duration`.
pub const DEFAULT_DURATION_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
];

/// Bucket bounds (bytes) of the body-size histograms: 1 KiB to 10 MiB.
pub const BODY_SIZE_BUCKETS: &[f64] = &[
    1024.0,
    2048.0,
    5120.0,
    10240.0,
    102_400.0,
    512_000.0,
    1_048_576.0,
    2_621_440.0,
    5_242_880.0,
    10_485_760.0,
];

/// `[metrics]`: Prometheus metrics.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct MetricsConfig {
    /// Whether to record request metrics and serve `path` (default `true`).
    pub enabled: bool,
    /// Path of the Prometheus text endpoint (default `/metrics`).
    pub path: String,
    /// Bucket upper bounds of `http_server_request_duration_seconds`, in seconds,
    /// strictly increasing (default: the OpenTelemetry advisory buckets, 5 ms to 10 s).
    /// The first metrics layer built in a process installs the exporter; its buckets
    /// apply to the whole process.
    pub buckets: Vec<f64>,
    /// Paths not recorded (patterns as in `rate_limit` rules). Default: the
    /// operational endpoints `/metrics`, `/health`, `/ready`, following `path`,
    /// `health.path` and `health.ready_path` when those move (a list you set is kept
    /// as written); `path` is always excluded.
    pub exclude_paths: Vec<String>,
    /// Whether to record `http_server_request_body_size_bytes` and
    /// `http_server_response_body_size_bytes` (default `false`): the bytes of each
    /// body, from its exact length when announced, counted as it streams otherwise.
    pub body_sizes: bool,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            path: "/metrics".to_owned(),
            buckets: DEFAULT_DURATION_BUCKETS.to_vec(),
            exclude_paths: vec!["/metrics".into(), "/health".into(), "/ready".into()],
            body_sizes: false,
        }
    }
}
