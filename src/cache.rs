//! Response caching, in memory or in Redis.
//!
//! (Work in progress: this layer currently passes requests through.)

use std::convert::Infallible;
use std::task::{Context, Poll};

use axum::extract::Request;
use axum::response::Response;
use tower::{Layer, Service};

use crate::config::CacheConfig;
use crate::error::ConfigError;
use crate::stack::BuildContext;

/// Layer for `[cache]`.
#[derive(Debug, Clone)]
pub struct CacheLayer {
    _private: (),
}

impl CacheLayer {
    /// Builds the layer from its config section; `None` when disabled.
    pub fn from_config(
        _config: &CacheConfig,
        _ctx: &BuildContext,
    ) -> Result<Option<Self>, ConfigError> {
        Ok(None)
    }
}

impl<S> Layer<S> for CacheLayer {
    type Service = Cache<S>;
    fn layer(&self, inner: S) -> Cache<S> {
        Cache { inner }
    }
}

/// Service made by [`CacheLayer`].
#[derive(Debug, Clone)]
pub struct Cache<S> {
    inner: S,
}

impl<S> Service<Request> for Cache<S>
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
