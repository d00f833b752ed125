//! GCRA rate limiting, in memory or over Redis.
//!
//! (Work in progress: this layer currently passes requests through.)

use std::convert::Infallible;
use std::task::{Context, Poll};

use axum::extract::Request;
use axum::response::Response;
use tower::{Layer, Service};

use crate::config::RateLimitConfig;
use crate::error::ConfigError;
use crate::stack::BuildContext;

/// The two places the rate limiter sits in the stack: before auth (keys that need
/// no identity: `ip`, `header:*`, `global`) and after it (identity keys).
#[derive(Debug, Clone, Default)]
pub struct RateLimitStages {
    /// Policies decided before authentication.
    pub before_auth: Option<RateLimitLayer>,
    /// Policies decided after authentication.
    pub after_auth: Option<RateLimitLayer>,
}

/// Layer for `[rate_limit]`.
#[derive(Debug, Clone)]
pub struct RateLimitLayer {
    _private: (),
}

impl RateLimitLayer {
    /// Builds the layer from its config section; `None` when disabled.
    pub fn from_config(
        _config: &RateLimitConfig,
        _ctx: &BuildContext,
    ) -> Result<RateLimitStages, ConfigError> {
        Ok(RateLimitStages::default())
    }
}

impl<S> Layer<S> for RateLimitLayer {
    type Service = RateLimit<S>;
    fn layer(&self, inner: S) -> RateLimit<S> {
        RateLimit { inner }
    }
}

/// Service made by [`RateLimitLayer`].
#[derive(Debug, Clone)]
pub struct RateLimit<S> {
    inner: S,
}

impl<S> Service<Request> for RateLimit<S>
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
