//! HTTPS redirect and host validation.
//!
//! (Work in progress: this layer currently passes requests through.)

use std::convert::Infallible;
use std::task::{Context, Poll};

use axum::extract::Request;
use axum::response::Response;
use tower::{Layer, Service};

use crate::config::HttpsConfig;
use crate::error::ConfigError;
use crate::stack::BuildContext;

/// Layer for `[https]`.
#[derive(Debug, Clone)]
pub struct HttpsLayer {
    _private: (),
}

impl HttpsLayer {
    /// Builds the layer from its config section; `None` when disabled.
    pub fn from_config(
        _config: &HttpsConfig,
        _ctx: &BuildContext,
    ) -> Result<Option<Self>, ConfigError> {
        Ok(None)
    }
}

impl<S> Layer<S> for HttpsLayer {
    type Service = Https<S>;
    fn layer(&self, inner: S) -> Https<S> {
        Https { inner }
    }
}

/// Service made by [`HttpsLayer`].
#[derive(Debug, Clone)]
pub struct Https<S> {
    inner: S,
}

impl<S> Service<Request> for Https<S>
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
