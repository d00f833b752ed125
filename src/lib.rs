//! # palisade
//!
//! Composable [tower] layers that make any [axum] service production-ready: rate
//! limiting (in memory and over Redis), security headers, HTTPS redirect with host and
//! proxy validation, API-key and JWT authentication, response caching, structured
//! logs, Prometheus metrics and health checks, built from one validated [`Config`] and
//! applied as **one** layer.
//!
//! ```no_run
//! use axum::{Router, routing::get};
//! use palisade::{Config, Palisade};
//! use std::net::SocketAddr;
//!
//! # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let palisade = Palisade::from_config(Config::load()?).await?; // validates everything up front
//! let app = Router::new()
//!     .route("/hello", get(|| async { "hello" }))
//!     .merge(palisade.routes())   // /metrics, /health, /ready
//!     .layer(palisade.layer());   // the whole ordered stack, one Layer
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//! // ConnectInfo gives palisade the peer address it needs to judge forwarding headers.
//! axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>()).await?;
//! # Ok(()) }
//! ```
//!
//! Each layer is also usable alone, in your own `ServiceBuilder`, with a typed builder.
//! The order of the full stack and the reasons for it are in [`stack`].
//!
//! # Features
//!
//! Every feature is additive. The default build pulls in neither Redis nor JWT crates.
//!
//! | feature | default | what it adds |
//! |---|---|---|
//! | `request-id` | yes | [`request_id`]: validated or generated (UUID v7) request ids |
//! | `trace` | yes | [`trace`]: one structured access-log event per request; [`telemetry`] set-up |
//! | `metrics` | yes | [`metrics`](mod@metrics): Prometheus metrics with OpenTelemetry names |
//! | `health` | yes | [`health`]: `/health` and `/ready` |
//! | `security-headers` | yes | [`security_headers`]: `api` and `web` header profiles |
//! | `https` | yes | [`https`]: HTTPS redirect, HSTS, host validation |
//! | `rate-limit` | yes | [`rate_limit`]: GCRA in memory (Redis with `redis`) |
//! | `api-key` | yes | [`auth`]: hashed API keys with scopes |
//! | `cache` | yes | [`cache`]: response caching in memory (Redis with `redis`) |
//! | `jwt` | no | [`auth`]: JWT with pinned algorithms, PEM keys and JWKS |
//! | `redis` | no | [`redis`]: Redis backends for rate limiting and caching |
//! | `otel` | no | [`otel`]: OpenTelemetry span export over OTLP/HTTP, W3C `traceparent` |
//! | `full` | no | all of the above |
//!
//! # Minimum supported Rust version
//!
//! Rust 1.88. The MSRV may rise in a minor release, to no newer than the Rust release
//! of six months before it.
//!
//! [tower]: https://docs.rs/tower
//! [axum]: https://docs.rs/axum
#![cfg_attr(docsrs, feature(doc_cfg))]

mod civil;
pub mod client_ip;
pub mod config;
pub mod error;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
pub mod identity;
#[cfg(any(
    feature = "rate-limit",
    feature = "request-id",
    feature = "security-headers"
))]
mod intern;
pub mod outcome;
pub mod problem;
pub mod route_match;
pub mod shutdown;
pub mod stack;

#[cfg(any(feature = "api-key", feature = "jwt"))]
pub mod auth;
#[cfg(feature = "cache")]
pub mod cache;
#[cfg(feature = "health")]
pub mod health;
#[cfg(feature = "https")]
pub mod https;
#[cfg(feature = "metrics")]
pub mod metrics;
#[cfg(feature = "otel")]
pub mod otel;
#[cfg(feature = "rate-limit")]
pub mod rate_limit;
#[cfg(feature = "redis")]
pub mod redis;
#[cfg(feature = "request-id")]
pub mod request_id;
#[cfg(feature = "security-headers")]
pub mod security_headers;
#[cfg(feature = "trace")]
pub mod telemetry;
#[cfg(feature = "trace")]
pub mod trace;

pub use config::Config;
pub use error::ConfigError;
pub use identity::{Identity, IdentityKind};
pub use stack::{Palisade, PalisadeLayer, PalisadeService};
