//! Hybrid mode (`lease > 0`): quota leased from Redis, spent locally.
//!
//! A replica that needs a key's quota asks Redis for up to `lease` units at once (one
//! `EVALSHA`, the same GCRA as every other decision, committing `granted × interval`
//! on the key's TAT) and spends them on the following requests for that key without
//! a round trip, until they run out or `lease_ms` passes. Units leased are already
//! counted in Redis, so replicas never share out more than the quota grants; what
//! changes is *when* a unit is spent:
//!
//! - **Over-admission bound**: a unit is spent at most `lease_ms` after Redis granted
//!   it, and a replica holds fewer than `lease` unspent units of a key at any time
//!   (one lease request per key and replica in flight). So in any window, a key admits
//!   at most what the plain Redis limiter would, plus `replicas × (lease − 1)` units.
//! - **Under-admission**: units one replica holds are not available to another until
//!   they are spent or forfeited (after `lease_ms`); a client spread over replicas may
//!   meet its limit up to `replicas × (lease − 1)` units early, for at most `lease_ms`.
//! - Round trips: one per `lease` requests of a key per replica instead of one per
//!   request; a replica with live leases keeps deciding while Redis is down, and
//!   `on_store_error` applies once they are spent.
//! - Headers report the quota as Redis last granted it, aged by the time since, plus
//!   the units this replica still holds: exact for one replica, an estimate across
//!   several.
//!
//! Leases live in a map bounded by `max_keys` (expired leases are swept when it is
//! full and by the cleanup task); when it is full of live leases, new keys are
//! decided one request at a time.

use std::sync::atomic::{AtomicUsize, Ordering};

use dashmap::DashMap;
use foldhash::fast::RandomState;

use super::memory::MemKey;
use super::{MICROS, Stage};

/// The lease variant of the GCRA script. `KEYS[i]`: one per policy;
/// `ARGV[5i+1..5i+5]`: interval (µs), tau (µs), cost, enforce (1/0), want (units, ≥
/// cost). When no `enforce` key refuses `cost`, each key is charged
/// `granted = min(want, units available)` (0 for a shadow key that cannot fit its
/// cost). Returns `{limited, used_1, granted_1, ..., used_n, granted_n}`, `used_i`
/// being `max(tat_i - now, 0)` before the decision.
pub(crate) const LEASE_SCRIPT: &str = r#"
redis.replicate_commands()
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local n = #KEYS
local used = {}
local limited = 0
for i = 1, n do
  local a = (i - 1) * 5
  local v = redis.call('GET', KEYS[i])
  local tat = v and tonumber(v)
  local u = 0
  if tat and tat > now then u = tat - now end
  used[i] = u
  if ARGV[a + 4] == '1' and u + tonumber(ARGV[a + 1]) * tonumber(ARGV[a + 3]) > tonumber(ARGV[a + 2]) then
    limited = 1
  end
end
local out = {limited}
for i = 1, n do
  local a = (i - 1) * 5
  local iv = tonumber(ARGV[a + 1])
  local cost = tonumber(ARGV[a + 3])
  local g = 0
  if limited == 0 then
    local avail = math.floor((tonumber(ARGV[a + 2]) - used[i]) / iv)
    if avail >= cost then
      g = math.min(tonumber(ARGV[a + 5]), avail)
      local u = used[i] + iv * g
      redis.call('SET', KEYS[i], string.format('%.0f', now + u), 'PX', math.ceil(u / 1000))
    end
  end
  out[2 * i] = used[i]
  out[2 * i + 1] = g
end
return out
"#;

/// One key's lease on this replica.
#[derive(Debug, Default)]
struct Cell {
    /// Leased units not spent yet.
    units: u64,
    /// When the unspent units are forfeited (limiter clock, ns).
    expires_ns: u64,
    /// A lease request for this key is in flight until then (ns): others ask for
    /// their cost only. A deadline, not a flag: a request dropped mid-call (client
    /// gone) must not keep the key from leasing again.
    claimed_until_ns: u64,
    /// Redis's `used` (µs) right after the last grant, and when (ns) it was granted.
    used_us: u64,
    at_ns: u64,
}

/// This replica's leases, bounded by `max_keys`.
#[derive(Debug)]
pub(crate) struct Leases {
    map: DashMap<MemKey, Cell, RandomState>,
    len: AtomicUsize,
    max_keys: usize,
    lease_ns: u64,
    /// How long a claim holds: longer than any Redis call can take.
    claim_ns: u64,
}

/// What a request took from a lease or asked Redis for, per entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Take {
    /// Spent from this replica's lease: no round trip.
    Local,
    /// Decided in Redis, asking for this many units (the cost, or a lease).
    Remote { want: u64 },
}

impl Leases {
    /// `redis_timeout`: the pool's deadline per call; a claim outlives two calls
    /// (the script and, after `NOSCRIPT`, its reload).
    pub(crate) fn new(max_keys: usize, lease_ms: u64, redis_timeout: std::time::Duration) -> Self {
        let timeout_ns = u64::try_from(redis_timeout.as_nanos()).unwrap_or(u64::MAX);
        Self {
            map: DashMap::with_hasher(RandomState::default()),
            len: AtomicUsize::new(0),
            max_keys: max_keys.max(1),
            lease_ns: lease_ms.saturating_mul(1_000_000),
            claim_ns: timeout_ns.saturating_mul(2).saturating_add(100_000_000),
        }
    }

    /// Number of keys with a lease (live or expired, until swept).
    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }

    /// Spends `cost` units of a live lease, returning the quota the client has left
    /// as `used` (µs) for the headers; `None` when Redis must decide.
    pub(crate) fn spend(&self, key: MemKey, cost: u64, interval: u64, now: u64) -> Option<u64> {
        let mut cell = self.map.get_mut(&key)?;
        if cell.expires_ns <= now || cell.units < cost {
            return None;
        }
        cell.units -= cost;
        Some(effective_used(&cell, interval, now))
    }

    /// Claims the right to ask Redis for a lease of `key` (one request in flight per
    /// key); `false` when another request is already fetching one or the map is full
    /// of live leases.
    pub(crate) fn claim(&self, key: MemKey, now: u64) -> bool {
        let until = now.saturating_add(self.claim_ns);
        if let Some(mut cell) = self.map.get_mut(&key) {
            if cell.claimed_until_ns > now {
                return false;
            }
            cell.claimed_until_ns = until;
            return true;
        }
        if self.len.load(Ordering::Relaxed) >= self.max_keys {
            self.sweep(now);
            if self.map.len() >= self.max_keys {
                return false;
            }
        }
        let mut fresh = false;
        let mut cell = self.map.entry(key).or_insert_with(|| {
            fresh = true;
            Cell::default()
        });
        if fresh {
            self.len.fetch_add(1, Ordering::Relaxed);
        } else if cell.claimed_until_ns > now {
            return false;
        }
        cell.claimed_until_ns = until;
        true
    }

    /// Records what Redis granted for a claimed key (`granted` units, of which the
    /// request spent `spent`) and releases the claim. Returns the client's `used`
    /// (µs) for the headers.
    pub(crate) fn grant(
        &self,
        key: MemKey,
        granted: u64,
        spent: u64,
        used_before: u64,
        interval: u64,
        now: u64,
    ) -> Option<u64> {
        let mut cell = self.map.get_mut(&key)?;
        cell.claimed_until_ns = 0;
        if cell.expires_ns <= now {
            cell.units = 0; // forfeited
        }
        cell.units += granted.saturating_sub(spent);
        cell.expires_ns = now.saturating_add(self.lease_ns);
        cell.used_us = used_before.saturating_add(granted.saturating_mul(interval));
        cell.at_ns = now;
        Some(effective_used(&cell, interval, now))
    }

    /// Releases a claim without a grant (Redis failed or refused).
    pub(crate) fn release(&self, key: MemKey) {
        if let Some(mut cell) = self.map.get_mut(&key) {
            cell.claimed_until_ns = 0;
        }
    }

    /// Gives `units` back to the key's lease (the request was refused by another
    /// policy or stage after taking them); returns the client's `used` (µs) after.
    pub(crate) fn give_back(
        &self,
        key: MemKey,
        units: u64,
        interval: u64,
        now: u64,
    ) -> Option<u64> {
        let mut cell = self.map.get_mut(&key)?;
        if cell.expires_ns <= now {
            return None;
        }
        cell.units += units;
        Some(effective_used(&cell, interval, now))
    }

    /// Drops expired leases that no request is fetching.
    pub(crate) fn sweep(&self, now: u64) {
        self.map
            .retain(|_, c| c.claimed_until_ns > now || c.expires_ns > now);
        self.len.store(self.map.len(), Ordering::Relaxed);
    }
}

/// The client's quota as this replica sees it: Redis's `used` at the last grant,
/// aged since, minus the units this replica still holds.
fn effective_used(cell: &Cell, interval: u64, now: u64) -> u64 {
    let aged = cell
        .used_us
        .saturating_sub(now.saturating_sub(cell.at_ns) / 1000);
    aged.saturating_sub(cell.units.saturating_mul(interval))
}

impl Stage {
    /// Hybrid mode, before Redis: spends what local leases cover and marks what Redis
    /// must decide (asking for a lease where none is in flight). Returns `None` when
    /// every entry was covered locally (the verdict is then complete).
    pub(super) fn take_leases(
        &self,
        leases: &Leases,
        entries: &mut super::Entries,
        now: u64,
    ) -> Option<Vec<Take>> {
        let mut takes = Vec::with_capacity(entries.len());
        let mut remote = false;
        for e in entries.iter_mut() {
            let p = &self.policies[usize::from(e.policy)];
            let key = MemKey::new(p.index, e.value());
            let take = if p.lease == 0 {
                Take::Remote { want: p.cost }
            } else if let Some(used) = leases.spend(key, p.cost, p.q_us.interval, now) {
                e.fill_allowed(used, p.q_us, MICROS);
                Take::Local
            } else if leases.claim(key, now) {
                Take::Remote { want: p.lease }
            } else {
                Take::Remote { want: p.cost }
            };
            remote |= take != Take::Local;
            takes.push(take);
        }
        remote.then_some(takes)
    }

    /// Hybrid mode, when Redis failed or refused the request: gives back what was
    /// spent locally and releases the claims.
    pub(super) fn undo_takes(&self, leases: &Leases, entries: &mut super::Entries, takes: &[Take]) {
        let now = self.shared.now_ns();
        for (e, take) in entries.iter_mut().zip(takes) {
            let p = &self.policies[usize::from(e.policy)];
            let key = MemKey::new(p.index, e.value());
            match *take {
                Take::Local => {
                    if let Some(used) = leases.give_back(key, p.cost, p.q_us.interval, now) {
                        e.fill_allowed(used, p.q_us, MICROS);
                    }
                }
                Take::Remote { want } if want > p.cost => leases.release(key),
                Take::Remote { .. } => {}
            }
        }
    }

    /// Gives back, to the local leases, what an allowed verdict's entries took (the
    /// after-auth stage refused the request). Units granted by Redis stay leased.
    pub(super) fn refund_leases(&self, leases: &Leases, v: &mut super::Verdict) {
        let now = self.shared.now_ns();
        for e in v.entries.iter_mut().filter(|e| e.allowed) {
            let p = &self.policies[usize::from(e.policy)];
            if p.lease == 0 {
                continue;
            }
            let key = MemKey::new(p.index, e.value());
            let used = leases
                .give_back(key, p.cost, p.q_us.interval, now)
                .unwrap_or(e.used_after);
            e.fill_allowed(used, p.q_us, MICROS);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::super::key::KeyValue;
    use super::*;

    /// Redis timeout: claims hold 2 × 1 ms + 100 ms.
    const T: std::time::Duration = std::time::Duration::from_millis(1);

    fn key(v: u128) -> MemKey {
        MemKey::new(0, KeyValue::new(1, v))
    }

    #[test]
    fn a_claim_abandoned_mid_call_lapses() {
        let l = Leases::new(10, 1000, T);
        assert!(l.claim(key(1), 0));
        // The request holding the claim was dropped: no grant, no release.
        assert!(!l.claim(key(1), 101_999_999));
        assert!(l.claim(key(1), 102_000_000));
    }

    #[test]
    fn a_lease_is_spent_until_empty_then_redis_decides() {
        let l = Leases::new(10, 1000, T);
        assert_eq!(l.spend(key(1), 1, 100, 0), None);
        assert!(l.claim(key(1), 0));
        // A second request while the first fetches asks for its cost only.
        assert!(!l.claim(key(1), 0));
        // Granted 5, the fetching request spent 1: 4 held, Redis used 500 µs.
        assert_eq!(l.grant(key(1), 5, 1, 0, 100, 0), Some(100));
        for left in (0..4).rev() {
            assert_eq!(l.spend(key(1), 1, 100, 0), Some(100 * (5 - left)));
        }
        assert_eq!(l.spend(key(1), 1, 100, 0), None);
        assert!(l.claim(key(1), 0), "the claim was released by the grant");
    }

    #[test]
    fn unspent_units_are_forfeited_after_lease_ms() {
        let l = Leases::new(10, 1, T); // 1 ms
        assert!(l.claim(key(1), 0));
        l.grant(key(1), 10, 1, 0, 100, 0);
        assert!(l.spend(key(1), 1, 100, 999_999).is_some());
        assert_eq!(l.spend(key(1), 1, 100, 1_000_000), None);
        assert!(l.claim(key(1), 1_000_000));
        // The expired 8 units are not added to the new grant's.
        l.grant(key(1), 2, 1, 0, 100, 1_000_000);
        assert!(l.spend(key(1), 1, 100, 1_000_000).is_some());
        assert_eq!(l.spend(key(1), 1, 100, 1_000_000), None);
    }

    #[test]
    fn the_map_stays_within_max_keys() {
        let l = Leases::new(3, 1, T);
        for i in 0..3 {
            assert!(l.claim(key(i), 0));
            l.grant(key(i), 5, 1, 0, 100, 0);
        }
        // Full of live leases: a new key is decided without one.
        assert!(!l.claim(key(9), 0));
        assert_eq!(l.len(), 3);
        // Once they expire, the sweep makes room.
        assert!(l.claim(key(9), 2_000_000));
        assert_eq!(l.len(), 1);
    }

    #[test]
    fn given_back_units_can_be_spent_again() {
        let l = Leases::new(10, 1000, T);
        assert!(l.claim(key(1), 0));
        l.grant(key(1), 2, 1, 0, 100, 0);
        assert!(l.spend(key(1), 1, 100, 0).is_some());
        assert_eq!(l.spend(key(1), 1, 100, 0), None);
        assert_eq!(l.give_back(key(1), 1, 100, 0), Some(100));
        assert!(l.spend(key(1), 1, 100, 0).is_some());
    }
}
