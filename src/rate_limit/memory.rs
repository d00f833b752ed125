//! The in-memory backend: one atomic TAT per key in a sharded map, with a hard cap.

use std::hash::{Hash, Hasher};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use dashmap::DashMap;
use dashmap::mapref::entry::Entry;
use foldhash::fast::RandomState;

use super::gcra::{self, Decision, Quota};
use super::key::KeyValue;

/// One limiter key: which policy, and the request's value for its key.
///
/// 24 bytes, aligned to 8: a `u128` field would align the key to 16 and pad it to
/// 48 bytes, and with 10 000 keys the map's buckets (key + [`Cell`]) then spill out of
/// the core's cache, which costs more than every instruction of a decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct MemKey {
    hi: u64,
    lo: u64,
    policy: u16,
    tag: u8,
}

impl MemKey {
    pub(crate) fn new(policy: u16, value: KeyValue) -> Self {
        Self {
            hi: value.hi,
            lo: value.lo,
            policy,
            tag: value.tag,
        }
    }
}

impl Hash for MemKey {
    /// Two words into the hasher instead of four fields.
    #[inline]
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(
            self.hi ^ (u64::from(self.policy) << 8 | u64::from(self.tag)).rotate_right(16),
        );
        state.write_u64(self.lo);
    }
}

#[derive(Debug)]
struct Cell {
    /// Theoretical arrival time, in ns since the store's epoch.
    tat: AtomicU64,
    /// When the key was last seen (ns), for least-recently-seen eviction.
    seen: AtomicU64,
}

/// Keyed GCRA state. Every operation is O(1) except the sweep, which runs at most
/// once per `max_keys / 10` new keys (amortised O(1) per insert) or from the
/// periodic cleanup task.
#[derive(Debug)]
pub(crate) struct MemoryStore {
    /// foldhash, seeded per store: a few instructions for a 32-byte key where
    /// SipHash takes ten times that, and still not predictable by clients.
    map: DashMap<MemKey, Cell, RandomState>,
    len: AtomicUsize,
    max_keys: usize,
    sweeping: Mutex<()>,
}

impl MemoryStore {
    pub(crate) fn new(max_keys: usize) -> Self {
        Self {
            map: DashMap::with_hasher(RandomState::default()),
            len: AtomicUsize::new(0),
            max_keys: max_keys.max(1),
            sweeping: Mutex::new(()),
        }
    }

    /// Number of keys held.
    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }

    /// Decides and, when allowed, commits one key. `now` is in ns.
    pub(crate) fn check(&self, key: MemKey, q: Quota, cost: u64, now: u64) -> Decision {
        if let Some(cell) = self.map.get(&key) {
            return Self::update(&cell, q, cost, now);
        }
        if self.len.load(Ordering::Relaxed) >= self.max_keys {
            self.make_room(now);
        }
        match self.map.entry(key) {
            Entry::Occupied(o) => Self::update(o.get(), q, cost, now),
            Entry::Vacant(v) => {
                self.len.fetch_add(1, Ordering::Relaxed);
                let d = gcra::decide(0, q, cost);
                let tat = if d.allowed {
                    now.saturating_add(d.used_after)
                } else {
                    now
                };
                v.insert(Cell {
                    tat: AtomicU64::new(tat),
                    seen: AtomicU64::new(now),
                });
                d
            }
        }
    }

    #[inline]
    fn update(cell: &Cell, q: Quota, cost: u64, now: u64) -> Decision {
        cell.seen.store(now, Ordering::Relaxed);
        let mut tat = cell.tat.load(Ordering::Acquire);
        loop {
            let d = gcra::decide(tat.saturating_sub(now), q, cost);
            if !d.allowed {
                return d;
            }
            match cell.tat.compare_exchange_weak(
                tat,
                now.saturating_add(d.used_after),
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return d,
                Err(actual) => tat = actual,
            }
        }
    }

    /// Gives back what an allowed decision took (the request was refused by another
    /// policy). GCRA is additive, so subtracting the increment is exact.
    pub(crate) fn refund(&self, key: MemKey, q: Quota, cost: u64) {
        if let Some(cell) = self.map.get(&key) {
            let inc = q.interval.saturating_mul(cost);
            let _ = cell
                .tat
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |t| {
                    Some(t.saturating_sub(inc))
                });
        }
    }

    /// Drops every key back at full quota: forgetting it changes no future decision.
    pub(crate) fn sweep_full(&self, now: u64) {
        let _guard = self.sweeping.lock().unwrap_or_else(|e| e.into_inner());
        self.map.retain(|_, c| c.tat.load(Ordering::Relaxed) > now);
        self.len.store(self.map.len(), Ordering::Relaxed);
    }

    /// At the cap: drop keys at full quota, then, if that is not enough, the least
    /// recently seen, down to 90 % of the cap.
    #[cold]
    fn make_room(&self, now: u64) {
        let _guard = self.sweeping.lock().unwrap_or_else(|e| e.into_inner());
        if self.map.len() < self.max_keys {
            self.len.store(self.map.len(), Ordering::Relaxed);
            return; // another thread made room while we waited
        }
        let target = self.max_keys - self.max_keys / 10 - 1;
        self.map.retain(|_, c| c.tat.load(Ordering::Relaxed) > now);
        let len = self.map.len();
        if len > target {
            let mut seen: Vec<u64> = self
                .map
                .iter()
                .map(|e| e.seen.load(Ordering::Relaxed))
                .collect();
            let evict = len - target;
            let (_, threshold, _) = seen.select_nth_unstable(evict - 1);
            let threshold = *threshold;
            // Ties may evict a few more than needed; never fewer.
            self.map
                .retain(|_, c| c.seen.load(Ordering::Relaxed) > threshold);
        }
        self.len.store(self.map.len(), Ordering::Relaxed);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn key(v: u128) -> MemKey {
        MemKey::new(0, KeyValue::new(1, v))
    }

    #[test]
    fn exact_sequence() {
        let s = MemoryStore::new(10);
        let q = Quota::new(1_000_000_000, 2, 2); // 2/s: interval 500 ms
        assert!(s.check(key(1), q, 1, 0).allowed);
        assert!(s.check(key(1), q, 1, 0).allowed);
        let d = s.check(key(1), q, 1, 0);
        assert!(!d.allowed);
        assert_eq!(d.retry, 500_000_000);
        assert!(!s.check(key(1), q, 1, 499_999_999).allowed);
        assert!(s.check(key(1), q, 1, 500_000_000).allowed);
    }

    #[test]
    fn refund_restores_quota() {
        let s = MemoryStore::new(10);
        let q = Quota::new(1000, 1, 1);
        assert!(s.check(key(1), q, 1, 0).allowed);
        s.refund(key(1), q, 1);
        assert!(s.check(key(1), q, 1, 0).allowed);
    }

    #[test]
    fn cap_evicts_least_recently_seen() {
        let s = MemoryStore::new(100);
        let q = Quota::new(1_000_000, 1, 1);
        for i in 0..100u128 {
            s.check(key(i), q, 1, i as u64);
        }
        // key 99 is hot; 100 new keys push the rest out.
        for i in 100..200u128 {
            s.check(key(99), q, 1, 1000 + i as u64);
            s.check(key(i), q, 1, 1000 + i as u64);
            assert!(s.len() <= 100);
        }
        assert!(s.map.contains_key(&key(99)));
        assert!(!s.map.contains_key(&key(0)));
    }

    #[test]
    fn sweep_drops_only_full_keys() {
        let s = MemoryStore::new(10);
        let q = Quota::new(100, 1, 1);
        s.check(key(1), q, 1, 0);
        s.check(key(2), q, 1, 50);
        s.sweep_full(120);
        assert_eq!(s.len(), 1);
        assert!(s.map.contains_key(&key(2)));
    }
}
