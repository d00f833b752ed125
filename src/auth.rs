//! API-key and JWT authentication with per-route rules.
//!
//! (Work in progress: this layer currently passes requests through.)

use std::convert::Infallible;
use std::task::{Context, Poll};

use axum::extract::Request;
use axum::response::Response;
use tower::{Layer, Service};

use crate::config::AuthConfig;
use crate::error::ConfigError;
use crate::stack::BuildContext;

/// Layer for `[auth]`.
#[derive(Debug, Clone)]
pub struct AuthLayer {
    _private: (),
}

impl AuthLayer {
    /// Builds the layer from its config section; `None` when disabled.
    pub fn from_config(
        _config: &AuthConfig,
        _ctx: &BuildContext,
    ) -> Result<Option<Self>, ConfigError> {
        Ok(None)
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = Auth<S>;
    fn layer(&self, inner: S) -> Auth<S> {
        Auth { inner }
    }
}

/// Service made by [`AuthLayer`].
#[derive(Debug, Clone)]
pub struct Auth<S> {
    inner: S,
}

impl<S> Service<Request> for Auth<S>
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
