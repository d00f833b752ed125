//! The Redis backend: the same GCRA in one Lua script per decision.
//!
//! - **One round trip** decides every policy of the request: the script gets one key
//!   per policy and, only when no `enforce` policy refuses, commits them all
//!   (all-or-nothing, atomically, like the memory backend).
//! - **Server time** (`TIME`, in µs): replicas with skewed clocks still agree.
//! - **Keys expire on their own**: each TAT is written with `PX` = the time until the
//!   key is back at full quota, after which forgetting it changes nothing.
//! - **Cluster**: a key is `{palisade:rl:<kind>:<digest>}:<policy>`; the hash tag is
//!   the client's key value, shared by every policy counting that value, so the
//!   usual set (per-second burst + hourly quota on one IP) is one slot, one script.
//!   Policies of one request keyed by *different* values (an IP policy and a
//!   `global` one) cannot share a slot without putting every client on one node;
//!   on a Cluster they are decided by one script per value, sent concurrently
//!   (all-or-nothing then holds within each value, not across them). On a single
//!   server everything goes into one script.
//! - `EVALSHA` sent as one plain command (one argument buffer); on `NOSCRIPT` the
//!   call is retried through [`RedisPool::invoke_script`], which loads the script.
//!   That first refusal is counted in `palisade_redis_errors_total{op="rate_limit"}`,
//!   once per call that met it (after a flush, restart or failover).
//!
//! The script returns, for each key, how far its TAT lies ahead of the server's now
//! (`used`); the Rust side then runs exactly the same [`gcra::decide`] as the memory
//! backend to build the headers, so both backends report identical values.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::Poll;

use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode};

use super::gcra::{self, Decision};
use super::key::{KeyValue, REDIS_KEY_OVERHEAD};
use super::lease::Take;
use super::memory::MemKey;
use super::{Entries, MICROS, Stage, Verdict};
use crate::config::rate_limit::OnStoreError;
use crate::problem::Problem;
use crate::redis::{RedisPool, StoreError};

/// `KEYS[i]`: one per policy. `ARGV[4i+1..4i+4]`: interval (µs), tau (µs), cost,
/// enforce (1/0). Returns `{limited, used_1, ..., used_n}` where `used_i` is
/// `max(tat_i - now, 0)` before the decision; commits only when `limited == 0`.
pub(crate) const GCRA_SCRIPT: &str = r#"
redis.replicate_commands()
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local n = #KEYS
local used = {}
local limited = 0
for i = 1, n do
  local a = (i - 1) * 4
  local v = redis.call('GET', KEYS[i])
  local tat = v and tonumber(v)
  local u = 0
  if tat and tat > now then u = tat - now end
  used[i] = u
  if ARGV[a + 4] == '1' and u + tonumber(ARGV[a + 1]) * tonumber(ARGV[a + 3]) > tonumber(ARGV[a + 2]) then
    limited = 1
  end
end
if limited == 0 then
  for i = 1, n do
    local a = (i - 1) * 4
    local u = used[i] + tonumber(ARGV[a + 1]) * tonumber(ARGV[a + 3])
    if u <= tonumber(ARGV[a + 2]) then
      redis.call('SET', KEYS[i], string.format('%.0f', now + u), 'PX', math.ceil(u / 1000))
    end
  end
end
local out = {limited}
for i = 1, n do out[i + 1] = used[i] end
return out
"#;

/// Gives back what a committed group took when another group refused the request
/// (Cluster only). `ARGV[i]`: the increment (µs) to subtract from `KEYS[i]`.
pub(crate) const REFUND_SCRIPT: &str = r#"
for i = 1, #KEYS do
  local v = redis.call('GET', KEYS[i])
  if v then
    redis.call('SET', KEYS[i], string.format('%.0f', tonumber(v) - tonumber(ARGV[i])), 'KEEPTTL')
  end
end
return 0
"#;

/// Whether a store error is Redis's `NOSCRIPT` (as the pool words it: redis-rs
/// names the kind `NoScript`, Redis's own text says "No matching script").
fn is_noscript(error: &str) -> bool {
    error.contains("NoScript") || error.contains("NOSCRIPT") || error.contains("No matching script")
}

/// Store errors are logged at most once per this many milliseconds.
const LOG_EVERY_MS: u64 = 10_000;

#[derive(Debug)]
pub(crate) struct RedisBackend {
    pool: RedisPool,
    script: ::redis::Script,
    lease_script: ::redis::Script,
    refund: ::redis::Script,
    /// Next time (ms on the limiter clock) a store error may be logged.
    next_log_ms: AtomicU64,
    suppressed: AtomicU64,
}

impl RedisBackend {
    pub(crate) fn new(pool: RedisPool) -> Self {
        Self {
            pool,
            script: ::redis::Script::new(GCRA_SCRIPT),
            lease_script: ::redis::Script::new(super::lease::LEASE_SCRIPT),
            refund: ::redis::Script::new(REFUND_SCRIPT),
            next_log_ms: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    /// The pool's deadline per call.
    pub(crate) fn timeout(&self) -> std::time::Duration {
        self.pool.timeout()
    }

    /// Runs the script for a group of items and returns `(limited, used per item,
    /// units granted per item)`. With `lease`, the lease script (each item asks for
    /// its `units`); otherwise the plain GCRA script (each item costs its policy's
    /// `cost`, and `granted` is that cost when the group committed).
    async fn run(&self, stage: &Stage, items: &[Item], lease: bool) -> ScriptResult {
        let (script, per_key) = if lease {
            (&self.lease_script, 5)
        } else {
            (&self.script, 4)
        };
        let args = |i: usize, units: u64| {
            let p = &stage.policies[i];
            let a = [
                p.q_us.interval,
                p.q_us.tau,
                p.cost,
                u64::from(!p.shadow),
                units,
            ];
            a.into_iter().take(per_key)
        };
        // `EVALSHA` as one plain command: its arguments go into one buffer, where a
        // `ScriptInvocation` allocates each key and argument twice. Only when Redis
        // does not know the script (`NOSCRIPT`: after a flush, restart or failover)
        // is the invocation built, which loads the script and retries.
        //
        // Sized up front: a command built from empty regrows its buffer five or six
        // times on the way to ~250 bytes. The script's SHA-1 is 40 hex digits, a
        // number at most 20 digits.
        let data = "EVALSHA".len()
            + 40
            + 20
            + items
                .iter()
                .map(|&(i, _, _)| REDIS_KEY_OVERHEAD + stage.policies[i].name.len() + 20 * per_key)
                .sum::<usize>();
        let mut cmd = ::redis::Cmd::with_capacity(3 + items.len() * (1 + per_key), data);
        cmd.arg("EVALSHA").arg(script.get_hash()).arg(items.len());
        for &(i, value, _) in items {
            cmd.arg(value.redis_key(&stage.policies[i].name));
        }
        for &(i, _, units) in items {
            for a in args(i, units) {
                cmd.arg(a);
            }
        }
        let out: Vec<i64> = match self.pool.query("rate_limit", &cmd).await {
            Err(StoreError::Redis(e)) if is_noscript(&e) => {
                let mut inv = script.prepare_invoke();
                for &(i, value, units) in items {
                    inv.key(value.redis_key(&stage.policies[i].name));
                    for a in args(i, units) {
                        inv.arg(a);
                    }
                }
                // Boxed: rare, and its future would double every decision's.
                Box::pin(self.pool.invoke_script("rate_limit", &inv)).await?
            }
            out => out?,
        };
        let expected = if lease {
            2 * items.len() + 1
        } else {
            items.len() + 1
        };
        if out.len() != expected {
            return Err(StoreError::Redis(format!(
                "rate-limit script returned {} values for {} keys",
                out.len(),
                items.len()
            )));
        }
        let limited = out[0] == 1;
        let clamp = |v: i64| v.max(0) as u64;
        let (used, granted) = if lease {
            out[1..]
                .chunks_exact(2)
                .map(|c| (clamp(c[0]), clamp(c[1])))
                .unzip()
        } else {
            let used: Vec<u64> = out[1..].iter().map(|&u| clamp(u)).collect();
            let granted = items
                .iter()
                .zip(&used)
                .map(|(&(i, _, _), &u)| {
                    let p = &stage.policies[i];
                    let fits = gcra::decide(u, p.q_us, p.cost).allowed;
                    if !limited && fits { p.cost } else { 0 }
                })
                .collect();
            (used, granted)
        };
        Ok((vec![limited; items.len()], used, granted))
    }

    /// Runs the refund script for one group of `(policy, value, units)`.
    async fn refund(&self, stage: &Stage, items: &[Item]) -> Result<(), StoreError> {
        let mut inv = self.refund.prepare_invoke();
        for &(i, value, units) in items {
            let p = &stage.policies[i];
            inv.key(value.redis_key(&p.name));
            inv.arg(p.q_us.interval.saturating_mul(units));
        }
        self.pool
            .invoke_script::<i64>("rate_limit", &inv)
            .await
            .map(|_| ())
    }

    /// Logs a store error, at most once per [`LOG_EVERY_MS`], with the number of
    /// errors not logged since.
    fn log_error(&self, now_ms: u64, error: &StoreError, fallback: OnStoreError) -> bool {
        let next = self.next_log_ms.load(Ordering::Relaxed);
        if now_ms >= next
            && self
                .next_log_ms
                .compare_exchange(
                    next,
                    now_ms + LOG_EVERY_MS,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_ok()
        {
            let suppressed = self.suppressed.swap(0, Ordering::Relaxed);
            tracing::warn!(
                %error,
                on_store_error = ?fallback,
                suppressed,
                "rate limit: Redis store error; applying on_store_error"
            );
            true
        } else {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            false
        }
    }
}

impl Stage {
    /// Decides over Redis; on a store error applies `on_store_error` (`Err` is the
    /// 503 of `deny`). In hybrid mode, entries a local lease covers skip Redis.
    pub(super) async fn decide_redis(
        &self,
        mut entries: Entries,
    ) -> Result<Verdict, Box<Response>> {
        let shared = &*self.shared;
        let Some(backend) = shared.redis.as_ref() else {
            return Ok(self.decide_memory(entries));
        };
        let leases = shared.leases.as_ref();
        let takes = match leases {
            Some(leases) => match self.take_leases(leases, &mut entries, shared.now_ns()) {
                Some(takes) => takes,
                None => {
                    // Every policy spent from a local lease: no round trip.
                    return Ok(Verdict {
                        entries,
                        in_redis: true,
                        ..Verdict::default()
                    });
                }
            },
            None => Vec::new(),
        };
        // Which entries Redis decides (all, without leases), and what each asks for.
        let remote: Vec<usize> = (0..entries.len())
            .filter(|&k| takes.get(k) != Some(&Take::Local))
            .collect();
        let items: Vec<Item> = remote
            .iter()
            .map(|&k| {
                let e = &entries[k];
                let units = match takes.get(k) {
                    Some(&Take::Remote { want }) => want,
                    _ => self.policies[usize::from(e.policy)].cost,
                };
                (usize::from(e.policy), e.value(), units)
            })
            .collect();
        let items = &items[..];
        let lease = leases.is_some();
        let result = if backend.pool.is_cluster() {
            // Boxed: the grouped (Cluster) path's future would otherwise make every
            // single-server decision's future as large.
            Box::pin(self.run_grouped(backend, items, lease)).await
        } else {
            backend.run(self, items, lease).await
        };
        let (group_limited, used, granted) = match result {
            Ok(r) => r,
            Err(e) => {
                if let Some(leases) = leases {
                    self.undo_takes(leases, &mut entries, &takes);
                }
                let now_ms = shared.now_ns() / 1_000_000;
                backend.log_error(now_ms, &e, shared.on_store_error);
                count_degraded(shared.on_store_error);
                return match shared.on_store_error {
                    OnStoreError::Local => Ok(self.decide_memory(entries)),
                    OnStoreError::Allow => Ok(Verdict::default()),
                    _ => Err(Box::new(
                        Problem::new(StatusCode::SERVICE_UNAVAILABLE)
                            .detail("The rate limiter is temporarily unavailable.")
                            .header(http::header::RETRY_AFTER, HeaderValue::from_static("1"))
                            .rejection("rate_limit", "store_error")
                            .into_response(),
                    )),
                };
            }
        };
        let mut v = Verdict::default();
        let mut retry_us = 0;
        let mut decisions: Vec<Decision> = Vec::with_capacity(items.len());
        for (k, &(i, _, _)) in items.iter().enumerate() {
            let p = &self.policies[i];
            let d = gcra::decide(used[k], p.q_us, p.cost);
            if !d.allowed {
                if p.shadow {
                    v.shadow_limited = true;
                } else {
                    v.limited = true;
                    retry_us = retry_us.max(d.retry);
                }
            }
            decisions.push(d);
        }
        let now = shared.now_ns();
        if v.limited {
            v.retry_s = gcra::ceil_secs(retry_us, MICROS).max(1);
            if let Some(leases) = leases {
                self.undo_takes(leases, &mut entries, &takes);
            }
            // Groups that committed (Cluster: another value's group refused) give
            // back; in hybrid mode a claimed lease keeps what it was granted.
            let mut committed: Vec<Item> = Vec::new();
            for (k, &(i, value, units)) in items.iter().enumerate() {
                if group_limited[k] || granted[k] == 0 {
                    continue;
                }
                let p = &self.policies[i];
                match leases {
                    Some(leases) if units > p.cost => {
                        let key = MemKey::new(p.index, value);
                        leases.grant(key, granted[k], 0, used[k], p.q_us.interval, now);
                    }
                    _ => committed.push((i, value, granted[k])),
                }
            }
            if !committed.is_empty() {
                let groups = group_by_value(&committed);
                let runs: Vec<BoxRun<'_, Result<(), StoreError>>> = groups
                    .iter()
                    .map(|(_, g)| Box::pin(backend.refund(self, g)) as BoxRun<'_, _>)
                    .collect();
                // Best effort: a failed refund only over-counts, never under-counts.
                let _ = join_all(runs).await;
            }
        }
        for (k, &at) in remote.iter().enumerate() {
            let e = &mut entries[at];
            let p = &self.policies[usize::from(e.policy)];
            let mut d = decisions[k];
            if v.limited {
                // Nothing this request took is kept: report the state before it.
                d.used_after = used[k];
            } else if let Some(leases) = leases
                && items[k].2 > p.cost
            {
                let key = MemKey::new(p.index, e.value());
                let spent = if granted[k] > 0 { p.cost } else { 0 };
                if let Some(u) = leases.grant(key, granted[k], spent, used[k], p.q_us.interval, now)
                {
                    d.used_after = u;
                }
            }
            e.fill(d, p.q_us, MICROS);
        }
        v.entries = entries;
        v.in_redis = true;
        Ok(v)
    }

    /// Gives back what an allowed verdict took, in the backend that decided it (the
    /// after-auth stage refused the request). In hybrid mode the units go back to
    /// this replica's leases.
    pub(super) async fn refund(&self, v: &mut Verdict) {
        if !v.in_redis {
            return self.refund_memory(v);
        }
        let Some(backend) = self.shared.redis.as_ref() else {
            return;
        };
        if let Some(leases) = self.shared.leases.as_ref() {
            return self.refund_leases(leases, v);
        }
        let committed: Vec<Item> = v
            .entries
            .iter()
            .filter(|e| e.allowed)
            .map(|e| {
                let i = usize::from(e.policy);
                (i, e.value(), self.policies[i].cost)
            })
            .collect();
        if committed.is_empty() {
            return;
        }
        // Best effort: a failed refund only over-counts, never under-counts.
        let refunded = if backend.pool.is_cluster() {
            let groups = group_by_value(&committed);
            let runs: Vec<BoxRun<'_, Result<(), StoreError>>> = groups
                .iter()
                .map(|(_, g)| Box::pin(backend.refund(self, g)) as BoxRun<'_, _>)
                .collect();
            join_all(runs).await.into_iter().all(|r| r.is_ok())
        } else {
            backend.refund(self, &committed).await.is_ok()
        };
        if !refunded {
            return;
        }
        for e in v.entries.iter_mut().filter(|e| e.allowed) {
            let p = &self.policies[usize::from(e.policy)];
            let used = e.used_after.saturating_sub(p.q_us.interval * p.cost);
            e.fill_allowed(used, p.q_us, MICROS);
        }
    }

    /// Cluster: one script per distinct key value (one hash slot each), concurrently.
    async fn run_grouped(
        &self,
        backend: &RedisBackend,
        items: &[Item],
        lease: bool,
    ) -> ScriptResult {
        let groups = group_by_value(items);
        let runs: Vec<BoxRun<'_, ScriptResult>> = groups
            .iter()
            .map(|(_, g)| Box::pin(backend.run(self, g, lease)) as BoxRun<'_, _>)
            .collect();
        let results = join_all(runs).await;
        let mut limited = vec![false; items.len()];
        let mut used = vec![0; items.len()];
        let mut granted = vec![0; items.len()];
        for ((value, _), r) in groups.iter().zip(results) {
            let (l, u, g) = r?;
            let members = items.iter().enumerate().filter(|(_, (_, v, _))| v == value);
            for (((k, _), used_k), granted_k) in members.zip(u).zip(g) {
                limited[k] = l[0];
                used[k] = used_k;
                granted[k] = granted_k;
            }
        }
        Ok((limited, used, granted))
    }
}

/// `(policy index, key value, units)`: one key of one script call.
type Item = (usize, KeyValue, u64);

/// What one script call returns: whether its group refused (per item), `used` per
/// item and the units granted per item.
type ScriptResult = Result<(Vec<bool>, Vec<u64>, Vec<u64>), StoreError>;

/// Counts a decision taken without Redis, by the `on_store_error` applied.
#[cfg(feature = "metrics")]
fn count_degraded(mode: OnStoreError) {
    let mode = match mode {
        OnStoreError::Allow => "allow",
        OnStoreError::Deny => "deny",
        _ => "local",
    };
    metrics::counter!("palisade_rate_limit_store_errors_total", "on_store_error" => mode)
        .increment(1);
}

#[cfg(not(feature = "metrics"))]
fn count_degraded(_mode: OnStoreError) {}

type BoxRun<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Splits items by key value (one Cluster hash slot per value), keeping order.
fn group_by_value(items: &[Item]) -> Vec<(KeyValue, Vec<Item>)> {
    let mut groups: Vec<(KeyValue, Vec<Item>)> = Vec::new();
    for &item in items {
        match groups.iter_mut().find(|(v, _)| *v == item.1) {
            Some((_, members)) => members.push(item),
            None => groups.push((item.1, vec![item])),
        }
    }
    groups
}

/// Polls every future concurrently and returns their outputs in order.
async fn join_all<T>(mut futures: Vec<BoxRun<'_, T>>) -> Vec<T> {
    let mut results: Vec<Option<T>> = futures.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (f, slot) in futures.iter_mut().zip(results.iter_mut()) {
            if slot.is_none() {
                match f.as_mut().poll(cx) {
                    Poll::Ready(r) => *slot = Some(r),
                    Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    })
    .await;
    results.into_iter().flatten().collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn noscript_recognised_as_the_pool_words_it() {
        assert!(is_noscript(
            "NoScript: No matching script. Please use EVAL."
        ));
        assert!(is_noscript("NOSCRIPT No matching script"));
        assert!(!is_noscript("timed out"));
    }

    #[tokio::test]
    async fn store_errors_logged_at_most_once_per_interval() {
        // The pool is lazy: nothing connects here.
        let backend = RedisBackend::new(RedisPool::from_url("redis://127.0.0.1:1").unwrap());
        let e = StoreError::Timeout;
        assert!(backend.log_error(5, &e, OnStoreError::Local));
        assert!(!backend.log_error(6, &e, OnStoreError::Local));
        assert!(!backend.log_error(5 + LOG_EVERY_MS - 1, &e, OnStoreError::Local));
        assert_eq!(backend.suppressed.load(Ordering::Relaxed), 2);
        assert!(backend.log_error(5 + LOG_EVERY_MS, &e, OnStoreError::Local));
        assert_eq!(backend.suppressed.load(Ordering::Relaxed), 0);
    }
}
