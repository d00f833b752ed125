//! Structured access logs: one span and one completion event per request.
//!
//! (Work in progress: this layer currently passes requests through.)

use std::convert::Infallible;
use std::task::{Context, Poll};

use axum::extract::Request;
use axum::response::Response;
use tower::{Layer, Service};

use crate::config::LoggingConfig;
use crate::error::ConfigError;
use crate::stack::BuildContext;

/// Layer for `[logging]`.
#[derive(Debug, Clone)]
pub struct TraceLayer {
    _private: (),
}

impl TraceLayer {
    /// Builds the layer from its config section; `None` when disabled.
    pub fn from_config(
        _config: &LoggingConfig,
        _ctx: &BuildContext,
    ) -> Result<Option<Self>, ConfigError> {
        Ok(None)
    }
}

impl<S> Layer<S> for TraceLayer {
    type Service = Trace<S>;
    fn layer(&self, inner: S) -> Trace<S> {
        Trace { inner }
    }
}

/// Service made by [`TraceLayer`].
#[derive(Debug, Clone)]
pub struct Trace<S> {
    inner: S,
}

impl<S> Service<Request> for Trace<S>
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
