//! Prometheus metrics following the OpenTelemetry HTTP conventions.
//!
//! (Work in progress: this layer currently passes requests through.)

use std::convert::Infallible;
use std::task::{Context, Poll};

use axum::extract::Request;
use axum::response::Response;
use tower::{Layer, Service};

use crate::config::MetricsConfig;
use crate::error::ConfigError;
use crate::stack::BuildContext;

/// Layer for `[metrics]`.
#[derive(Debug, Clone)]
pub struct MetricsLayer {
    _private: (),
}

impl MetricsLayer {
    /// Builds the layer from its config section; `None` when disabled.
    pub fn from_config(
        _config: &MetricsConfig,
        _ctx: &BuildContext,
    ) -> Result<Option<Self>, ConfigError> {
        Ok(None)
    }

    /// The `/metrics` route (path from config).
    pub fn router<St: Clone + Send + Sync + 'static>(&self) -> axum::Router<St> {
        axum::Router::new()
    }
}

impl<S> Layer<S> for MetricsLayer {
    type Service = Metrics<S>;
    fn layer(&self, inner: S) -> Metrics<S> {
        Metrics { inner }
    }
}

/// Service made by [`MetricsLayer`].
#[derive(Debug, Clone)]
pub struct Metrics<S> {
    inner: S,
}

impl<S> Service<Request> for Metrics<S>
where
    S: Service<Request, Response = Response, Error = Infallible>,
{
    type Response = Response;
    type Error = Infallible;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request) -> Self::Future {
        self.inner.call(req)
    }
}
