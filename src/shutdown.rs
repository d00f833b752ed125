//! A shutdown signal shared by the stack's background tasks and readiness.

use std::sync::Arc;

use tokio::sync::watch;

/// Triggered once, when the service starts a graceful shutdown. Readiness reports
/// `fail` from then on, and palisade's background tasks (JWKS refresh, cache
/// revalidation, limiter cleanup) stop.
#[derive(Debug, Clone)]
pub struct Shutdown {
    tx: Arc<watch::Sender<bool>>,
}

impl Default for Shutdown {
    fn default() -> Self {
        Self::new()
    }
}

impl Shutdown {
    /// A signal not yet triggered.
    pub fn new() -> Self {
        Self {
            tx: Arc::new(watch::channel(false).0),
        }
    }

    /// Starts the shutdown. Idempotent.
    pub fn trigger(&self) {
        self.tx.send_replace(true);
    }

    /// Whether the shutdown has begun.
    pub fn is_triggered(&self) -> bool {
        *self.tx.borrow()
    }

    /// Completes once the shutdown has begun.
    pub async fn wait(&self) {
        let mut rx = self.tx.subscribe();
        // `wait_for` returns at once if already triggered; the sender lives in `self`.
        let _ = rx.wait_for(|v| *v).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn wait_returns_after_trigger() {
        let s = Shutdown::new();
        assert!(!s.is_triggered());
        let s2 = s.clone();
        let waiter = tokio::spawn(async move { s2.wait().await });
        s.trigger();
        waiter.await.unwrap();
        assert!(s.is_triggered());
        s.wait().await;
    }
}
