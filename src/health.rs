//! Liveness (`/health`) and readiness (`/ready`) endpoints.
//!
//! (Work in progress.)

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use crate::config::HealthConfig;
use crate::error::ConfigError;
use crate::stack::BuildContext;

/// A readiness check: resolves to `Ok(())` when the dependency is usable.
pub type CheckFn =
    Arc<dyn Fn() -> Pin<Box<dyn Future<Output = Result<(), String>> + Send>> + Send + Sync>;

/// The health endpoints and their registered readiness checks.
#[derive(Clone)]
pub struct Health {
    checks: Vec<(String, bool, CheckFn)>,
}

impl std::fmt::Debug for Health {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Health")
            .field("checks", &self.checks.len())
            .finish()
    }
}

impl Health {
    /// Builds from `[health]`.
    pub fn from_config(_config: &HealthConfig, _ctx: &BuildContext) -> Result<Self, ConfigError> {
        Ok(Self { checks: Vec::new() })
    }

    /// No checks; default paths.
    pub fn empty() -> Self {
        Self { checks: Vec::new() }
    }

    /// Registers a readiness check; a non-critical check's failure only warns.
    #[must_use]
    pub fn check<F, Fut>(mut self, name: &str, critical: bool, check: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), String>> + Send + 'static,
    {
        let f: CheckFn = Arc::new(move || Box::pin(check()));
        self.checks.push((name.to_owned(), critical, f));
        self
    }

    /// The `/health` and `/ready` routes.
    pub fn router<St: Clone + Send + Sync + 'static>(&self) -> axum::Router<St> {
        axum::Router::new()
    }
}
