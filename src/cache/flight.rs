//! Request coalescing: concurrent misses on one key make one upstream call.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;

#[derive(Debug, Default)]
pub(crate) struct Flights {
    map: Mutex<HashMap<[u8; 32], watch::Receiver<()>>>,
}

pub(crate) enum Role {
    /// Make the upstream call; followers wake when the guard drops.
    Leader(FlightGuard),
    /// Another request is filling this key.
    Follower(watch::Receiver<()>),
}

/// Held by the leader until its response is stored (or known not to be).
pub(crate) struct FlightGuard {
    flights: Arc<Flights>,
    key: [u8; 32],
    tx: watch::Sender<()>,
    on_release: Option<Box<dyn FnOnce() + Send + Sync>>,
}

impl FlightGuard {
    /// Runs `f` when the flight ends (e.g. to release a fleet-wide lock).
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn on_release(&mut self, f: Box<dyn FnOnce() + Send + Sync>) {
        self.on_release = Some(f);
    }
}

impl Drop for FlightGuard {
    fn drop(&mut self) {
        if let Some(f) = self.on_release.take() {
            f();
        }
        let mut map = self.flights.map.lock().unwrap_or_else(|p| p.into_inner());
        if map
            .get(&self.key)
            .is_some_and(|rx| rx.same_channel(&self.tx.subscribe()))
        {
            map.remove(&self.key);
        }
        // Dropping `tx` wakes every follower.
    }
}

impl Flights {
    pub(crate) fn join(self: &Arc<Self>, key: [u8; 32]) -> Role {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(rx) = map.get(&key)
            && rx.has_changed().is_ok()
        {
            return Role::Follower(rx.clone());
        }
        let (tx, rx) = watch::channel(());
        map.insert(key, rx);
        Role::Leader(FlightGuard {
            flights: self.clone(),
            key,
            tx,
            on_release: None,
        })
    }

    /// The flight in progress on `key`, if any (to wait for it without leading).
    pub(crate) fn peek(&self, key: &[u8; 32]) -> Option<watch::Receiver<()>> {
        let map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        map.get(key).filter(|rx| rx.has_changed().is_ok()).cloned()
    }

    /// Leadership only if nobody holds it (for background refreshes).
    pub(crate) fn try_lead(self: &Arc<Self>, key: [u8; 32]) -> Option<FlightGuard> {
        match self.join(key) {
            Role::Leader(g) => Some(g),
            Role::Follower(_) => None,
        }
    }
}

/// Waits until the leader is done; `false` on timeout.
pub(crate) async fn wait(mut rx: watch::Receiver<()>, limit: Duration) -> bool {
    tokio::time::timeout(limit, async {
        // Err once the sender is gone: that is the signal.
        while rx.changed().await.is_ok() {}
    })
    .await
    .is_ok()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn one_leader_followers_wake_on_drop() {
        let f = Arc::new(Flights::default());
        let Role::Leader(guard) = f.join([1; 32]) else {
            panic!("first is leader")
        };
        let Role::Follower(rx) = f.join([1; 32]) else {
            panic!("second follows")
        };
        assert!(
            matches!(f.join([2; 32]), Role::Leader(_)),
            "other keys independent"
        );
        let waiter = tokio::spawn(wait(rx, Duration::from_secs(5)));
        drop(guard);
        assert!(waiter.await.unwrap());
        assert!(
            matches!(f.join([1; 32]), Role::Leader(_)),
            "leadership freed"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn followers_give_up_after_the_timeout() {
        let f = Arc::new(Flights::default());
        let _guard = f.try_lead([1; 32]).unwrap();
        assert!(f.try_lead([1; 32]).is_none());
        let Role::Follower(rx) = f.join([1; 32]) else {
            panic!()
        };
        assert!(!wait(rx, Duration::from_secs(5)).await);
    }
}
