//! `[logging]` configuration.

use serde::{Deserialize, Serialize};

use crate::error::ConfigError;

/// Output format of [`telemetry::init`](crate::telemetry).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum LogFormat {
    /// One JSON object per line, span fields flattened to the top level.
    #[default]
    Json,
    /// Human-readable multi-line output, for development.
    Pretty,
}

/// Level of the access-log line of a `4xx` response.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum ClientErrorLevel {
    /// `INFO`: a client's mistake is not the service's problem (the default).
    #[default]
    Info,
    /// `WARN`.
    Warn,
}

/// `[logging]`: request ids, access logs and the tracing subscriber.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct LoggingConfig {
    /// `json` (default) or `pretty`; used by `palisade::telemetry::init`.
    pub format: LogFormat,
    /// An `EnvFilter` directive: `info` (default), `warn`, `palisade=debug,info`, ...
    /// Directives of targets and levels only are applied as `Targets` (no lock taken
    /// per span); see `palisade::telemetry::LogFilter`. Must not be empty: `off`
    /// logs nothing.
    pub level: String,
    /// With `format = "json"`: write lines to stdout from one background thread,
    /// batched, instead of one `write(2)` per line by the logging thread (default
    /// `true`). `WARN`/`ERROR` lines are still written before the logging call
    /// returns; call `palisade::telemetry::flush()` before the process exits.
    pub background_writer: bool,
    /// Whether to write one access-log event per request (default `true`).
    pub access_log: bool,
    /// Level of the access-log event of a `4xx` response: `info` (default) or `warn`.
    /// `2xx`/`3xx` are `INFO`, `5xx` are `ERROR`.
    pub client_error_level: ClientErrorLevel,
    /// Whether to accept or generate a request id (default `true`).
    pub request_id: bool,
    /// Header carrying the request id in both directions (default `x-request-id`).
    pub request_id_header: String,
    /// Whether a well-formed incoming request id is kept (default `true`); when
    /// `false`, every request gets a fresh one.
    pub accept_request_id: bool,
    /// Query parameters whose values are replaced by `[REDACTED]` in `url.query`
    /// (case-insensitive). Replaces the default list.
    pub redact_query_params: Vec<String>,
    /// Paths without an access-log event (patterns as in `rate_limit` rules). Default:
    /// the operational endpoints `/metrics`, `/health`, `/ready`, following
    /// `metrics.path`, `health.path` and `health.ready_path` when those move (a list
    /// you set is kept as written).
    pub exclude_paths: Vec<String>,
    /// `[logging.otel]`: OpenTelemetry span export (feature `otel`).
    pub otel: OtelConfig,
}

/// `[logging.otel]`: export each request's `http.server` span over OTLP/HTTP
/// (protobuf) to a collector; needs the `otel` feature and
/// [`telemetry::init`](crate::telemetry) (or `palisade::otel::layer`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct OtelConfig {
    /// Whether to export spans (default `false`).
    pub enabled: bool,
    /// The collector's OTLP/HTTP traces URL (default
    /// `http://127.0.0.1:4318/v1/traces`); `http` or `https`, used as written.
    pub endpoint: String,
    /// `service.name` of the exported spans (default `unknown_service`, as the
    /// OpenTelemetry specification says when none is set).
    pub service_name: String,
    /// Share of new traces recorded, `0.0` to `1.0` (default `1.0`). A request with a
    /// `traceparent` follows its caller's sampling decision instead.
    pub sample_ratio: f64,
    /// Timeout of one export request, in milliseconds (default 10 000).
    pub timeout_ms: u64,
}

impl Default for OtelConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            endpoint: "http://127.0.0.1:4318/v1/traces".to_owned(),
            service_name: "unknown_service".to_owned(),
            sample_ratio: 1.0,
            timeout_ms: 10_000,
        }
    }
}

impl OtelConfig {
    /// Checks every value, whether or not export is enabled; reports every problem.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut errors = ConfigError::default();
        let scheme_ok = match self.endpoint.parse::<http::Uri>() {
            Ok(uri) => matches!(uri.scheme_str(), Some("http" | "https")) && uri.host().is_some(),
            Err(_) => false,
        };
        if !scheme_ok {
            errors.push(
                "logging.otel.endpoint",
                "must be an http:// or https:// URL with a host",
            );
        }
        if self.service_name.trim().is_empty() {
            errors.push("logging.otel.service_name", "must not be empty");
        }
        if !(0.0..=1.0).contains(&self.sample_ratio) {
            errors.push("logging.otel.sample_ratio", "must be between 0.0 and 1.0");
        }
        if self.timeout_ms == 0 || self.timeout_ms > 60_000 {
            errors.push("logging.otel.timeout_ms", "must be 1 to 60000");
        }
        #[cfg(not(feature = "otel"))]
        if self.enabled {
            errors.push(
                "logging.otel.enabled",
                "span export is configured but palisade was built without the `otel` feature",
            );
        }
        errors.into_result()
    }
}

/// The query parameters redacted by default: names commonly carrying credentials.
pub const DEFAULT_REDACTED_QUERY_PARAMS: &[&str] = &[
    "access_token",
    "api_key",
    "apikey",
    "auth",
    "client_secret",
    "code",
    "id_token",
    "jwt",
    "key",
    "passwd",
    "password",
    "pwd",
    "refresh_token",
    "secret",
    "session",
    "sig",
    "signature",
    "token",
];

impl Default for LoggingConfig {
    fn default() -> Self {
        Self {
            format: LogFormat::Json,
            level: "info".to_owned(),
            background_writer: true,
            access_log: true,
            client_error_level: ClientErrorLevel::Info,
            request_id: true,
            request_id_header: "x-request-id".to_owned(),
            accept_request_id: true,
            redact_query_params: DEFAULT_REDACTED_QUERY_PARAMS
                .iter()
                .map(|s| (*s).to_owned())
                .collect(),
            exclude_paths: vec!["/metrics".into(), "/health".into(), "/ready".into()],
            otel: OtelConfig::default(),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn otel_config_errors_name_every_key() {
        assert!(OtelConfig::default().validate().is_ok());
        let bad = OtelConfig {
            endpoint: "collector:4318".into(),
            service_name: " ".into(),
            sample_ratio: 1.5,
            timeout_ms: 0,
            ..OtelConfig::default()
        };
        let err = bad.validate().unwrap_err();
        for key in [
            "logging.otel.endpoint",
            "logging.otel.service_name",
            "logging.otel.sample_ratio",
            "logging.otel.timeout_ms",
        ] {
            assert!(err.has_key(key), "{key}: {err}");
        }
        let nan = OtelConfig {
            sample_ratio: f64::NAN,
            ..OtelConfig::default()
        };
        assert!(nan.validate().is_err());
    }
}
