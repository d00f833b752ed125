//! The GCRA arithmetic shared by the memory and Redis backends.
//!
//! Everything is expressed relative to "now": `used` is how far the key's theoretical
//! arrival time (TAT) lies in the future (`max(tat - now, 0)`). Both backends reduce
//! their state to that number and call [`decide`], so they agree to the tick.

/// A quota in some time unit (nanoseconds in memory, microseconds in Redis).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Quota {
    /// Emission interval: time one unit takes to come back.
    pub(crate) interval: u64,
    /// Burst tolerance: `interval * burst`.
    pub(crate) tau: u64,
}

impl Quota {
    /// `limit` units per `period` ticks with `burst` at once.
    pub(crate) fn new(period: u64, limit: u64, burst: u64) -> Self {
        let interval = (period / limit.max(1)).max(1);
        Self {
            interval,
            tau: interval.saturating_mul(burst),
        }
    }
}

/// The verdict for one key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Decision {
    /// Whether the cost fits.
    pub(crate) allowed: bool,
    /// `used` after the decision (unchanged when not allowed).
    pub(crate) used_after: u64,
    /// When not allowed: ticks until this cost would fit.
    pub(crate) retry: u64,
}

/// Decides one request of `cost` units against a key whose TAT is `used` ticks ahead.
#[inline]
pub(crate) fn decide(used: u64, q: Quota, cost: u64) -> Decision {
    let after = used.saturating_add(q.interval.saturating_mul(cost));
    if after <= q.tau {
        Decision {
            allowed: true,
            used_after: after,
            retry: 0,
        }
    } else {
        Decision {
            allowed: false,
            used_after: used,
            retry: after - q.tau,
        }
    }
}

/// Units that can be spent right now.
#[inline]
pub(crate) fn remaining(used_after: u64, q: Quota) -> u64 {
    q.tau.saturating_sub(used_after) / q.interval
}

/// Ticks until one more unit than [`remaining`] is available (0 when at full quota).
#[inline]
pub(crate) fn next_unit(used_after: u64, q: Quota) -> u64 {
    let r = remaining(used_after, q);
    // One more unit is available once `tau - used(t) >= (r + 1) * interval`.
    let need = (r + 1).saturating_mul(q.interval);
    if need > q.tau {
        return 0; // already full
    }
    used_after.saturating_sub(q.tau - need)
}

/// Whole seconds, rounded up.
#[inline]
pub(crate) fn ceil_secs(ticks: u64, ticks_per_sec: u64) -> u64 {
    ticks.div_ceil(ticks_per_sec)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_one_per_interval() {
        let q = Quota::new(10, 5, 5); // interval 2, burst 5
        let mut used = 0;
        for i in 0..5 {
            let d = decide(used, q, 1);
            assert!(d.allowed, "request {i}");
            used = d.used_after;
            assert_eq!(remaining(used, q), 4 - i);
        }
        let d = decide(used, q, 1);
        assert!(!d.allowed);
        assert_eq!(d.retry, 2);
        assert_eq!(next_unit(used, q), 2);
        // Two ticks later exactly one fits again.
        used -= 2;
        assert!(decide(used, q, 1).allowed);
        assert!(!decide(used, q, 2).allowed);
    }

    #[test]
    fn full_quota_has_no_reset() {
        let q = Quota::new(60, 60, 10);
        assert_eq!(remaining(0, q), 10);
        assert_eq!(next_unit(0, q), 0);
        assert_eq!(ceil_secs(1, 1000), 1);
        assert_eq!(ceil_secs(1000, 1000), 1);
        assert_eq!(ceil_secs(1001, 1000), 2);
    }
}
