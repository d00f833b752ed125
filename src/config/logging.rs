//! `[logging]` configuration.

use serde::{Deserialize, Serialize};

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
    pub level: String,
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
        }
    }
}
