//! Request coalescing: concurrent misses on one key make one upstream call.
//!
//! Followers wait for the leader's entry, but not for a long stream: once the
//! leader's response is streaming (its headers arrived and the body is being
//! copied), followers wait at most a short while longer for the body to end, then
//! make their own call instead of sitting through the leader's whole body.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::sync::watch;

/// How far the leader has got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stage {
    /// Waiting for the handler's response.
    Calling,
    /// The response is storable and its body is being streamed and copied.
    Streaming,
}

/// How a follower's wait ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Waited {
    /// The leader is done (stored, or found the response not storable).
    Done,
    /// The leader's call took longer than the wait limit.
    TimedOut,
    /// The leader's body was still streaming after the streaming limit.
    Streaming,
}

pub(crate) type Watch = watch::Receiver<Stage>;

#[derive(Debug, Default)]
pub(crate) struct Flights {
    map: Mutex<HashMap<[u8; 32], Watch>>,
}

pub(crate) enum Role {
    /// Make the upstream call; followers wake when the guard drops.
    Leader(FlightGuard),
    /// Another request is filling this key.
    Follower(Watch),
}

/// Held by the leader until its response is stored (or known not to be).
pub(crate) struct FlightGuard {
    flights: Arc<Flights>,
    key: [u8; 32],
    /// The only strong reference: followers see the flight end when it drops.
    tx: Arc<watch::Sender<Stage>>,
    on_release: Option<Box<dyn FnOnce() + Send + Sync>>,
}

impl FlightGuard {
    /// The response is storable and its body has started: followers now wait only
    /// the streaming limit.
    #[cfg(test)]
    pub(crate) fn streaming(&self) {
        self.tx.send_replace(Stage::Streaming);
    }

    /// A handle for the body to report that it is still streaming, without keeping
    /// the flight alive.
    pub(crate) fn stage(&self) -> StageHandle {
        StageHandle(Arc::downgrade(&self.tx))
    }

    /// Runs `f` when the flight ends (e.g. to release a fleet-wide lock).
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn on_release(&mut self, f: Box<dyn FnOnce() + Send + Sync>) {
        self.on_release = Some(f);
    }
}

/// Reports [`Stage::Streaming`] for a flight, if it is still in progress.
pub(crate) struct StageHandle(Weak<watch::Sender<Stage>>);

impl StageHandle {
    pub(crate) fn streaming(&self) {
        if let Some(tx) = self.0.upgrade() {
            tx.send_replace(Stage::Streaming);
        }
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
        let (tx, rx) = watch::channel(Stage::Calling);
        let tx = Arc::new(tx);
        map.insert(key, rx);
        Role::Leader(FlightGuard {
            flights: self.clone(),
            key,
            tx,
            on_release: None,
        })
    }

    /// The flight in progress on `key`, if any (to wait for it without leading).
    pub(crate) fn peek(&self, key: &[u8; 32]) -> Option<Watch> {
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

/// Waits until the leader is done: at most `limit`, and at most `streaming_limit`
/// once the leader's body is streaming.
pub(crate) async fn wait(mut rx: Watch, limit: Duration, streaming_limit: Duration) -> Waited {
    let deadline = tokio::time::Instant::now() + limit;
    let mut until = deadline;
    let mut streaming = false;
    loop {
        if !streaming && *rx.borrow_and_update() == Stage::Streaming {
            streaming = true;
            until = deadline.min(tokio::time::Instant::now() + streaming_limit);
        }
        match tokio::time::timeout_at(until, rx.changed()).await {
            Ok(Ok(())) => {}
            // The sender is gone: the leader is done.
            Ok(Err(_)) => return Waited::Done,
            Err(_) if streaming => return Waited::Streaming,
            Err(_) => return Waited::TimedOut,
        }
    }
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
        let waiter = tokio::spawn(wait(rx, Duration::from_secs(5), Duration::from_secs(1)));
        drop(guard);
        assert_eq!(waiter.await.unwrap(), Waited::Done);
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
        let start = tokio::time::Instant::now();
        assert_eq!(
            wait(rx, Duration::from_secs(5), Duration::from_secs(1)).await,
            Waited::TimedOut
        );
        assert_eq!(start.elapsed(), Duration::from_secs(5));
    }

    #[tokio::test(start_paused = true)]
    async fn followers_wait_only_briefly_for_a_streaming_body() {
        let f = Arc::new(Flights::default());
        let guard = f.try_lead([1; 32]).unwrap();
        let Role::Follower(rx) = f.join([1; 32]) else {
            panic!()
        };
        let start = tokio::time::Instant::now();
        let waiter = tokio::spawn(wait(rx, Duration::from_secs(5), Duration::from_secs(1)));
        tokio::time::sleep(Duration::from_secs(2)).await;
        guard.streaming();
        assert_eq!(waiter.await.unwrap(), Waited::Streaming);
        assert_eq!(start.elapsed(), Duration::from_secs(3), "2 s calling + 1 s");
        // Streaming already when the wait begins, and a body that ends in time.
        let Role::Follower(rx) = f.join([1; 32]) else {
            panic!()
        };
        let waiter = tokio::spawn(wait(rx, Duration::from_secs(5), Duration::from_secs(1)));
        tokio::time::sleep(Duration::from_millis(500)).await;
        drop(guard);
        assert_eq!(waiter.await.unwrap(), Waited::Done);
    }
}
