//! Security response headers (`api` and `web` profiles).
//!
//! (Work in progress: this layer currently passes requests through.)

use std::convert::Infallible;
use std::task::{Context, Poll};

use axum::extract::Request;
use axum::response::Response;
use tower::{Layer, Service};

use crate::config::SecurityHeadersConfig;
use crate::error::ConfigError;
use crate::stack::BuildContext;

/// Layer for `[security_headers]`.
#[derive(Debug, Clone)]
pub struct SecurityHeadersLayer {
    _private: (),
}

impl SecurityHeadersLayer {
    /// Builds the layer from its config section; `None` when disabled.
    pub fn from_config(
        _config: &SecurityHeadersConfig,
        _ctx: &BuildContext,
    ) -> Result<Option<Self>, ConfigError> {
        Ok(None)
    }
}

impl<S> Layer<S> for SecurityHeadersLayer {
    type Service = SecurityHeaders<S>;
    fn layer(&self, inner: S) -> SecurityHeaders<S> {
        SecurityHeaders { inner }
    }
}

/// Service made by [`SecurityHeadersLayer`].
#[derive(Debug, Clone)]
pub struct SecurityHeaders<S> {
    inner: S,
}

impl<S> Service<Request> for SecurityHeaders<S>
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
