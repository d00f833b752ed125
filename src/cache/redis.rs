//! The Redis backend: one binary value per entry, generations as random nonces.
//!
//! Key layout (`P` = `key_prefix`, hex digests):
//!
//! * `P v1:{<group>}:<key>` — an entry (or a variant index), `SET … PX` with the
//!   freshness plus the longest stale window;
//! * `P v1:{<group>}:gen` — the resource group's generation;
//! * `P v1:{tags}:<tag>` — a tag's generation;
//! * `P v1:{tags}:epoch` — changed by every tag purge, before the tag's generation.
//!
//! The hash tags put an entry and its group generation in one Cluster slot, so a
//! lookup is a single `MGET` round trip on a Cluster too. Generations are random
//! 64-bit values written by `SET`, never counters: a generation key that expires
//! and comes back can never re-validate an old entry (no ABA), and expiring them
//! after the longest entry lifetime keeps Redis clean without any scan.
//!
//! A fill reads the purge epoch before calling the handler, and the tags'
//! generations together with the epoch (one `MGET`, one slot) before storing: if
//! any purge happened in between, the response may predate it and is not stored; a
//! purge after that read changes a generation the entry carries. Either way no
//! entry outlives a purge that started after its fill.
//!
//! Every call goes through [`RedisPool`] (timeout and circuit breaker): when Redis is
//! down the layer passes requests through at the cost of at most one timeout per
//! breaker interval.

use std::sync::Arc;

use bytes::Bytes;
use redis::Cmd;

use super::CacheStoreError;
use super::entry::Stored;
use super::key::{FORMAT_VERSION, Key, hex, push_hex};
use super::memory::MemoryStore;
use crate::redis::RedisPool;

pub(crate) struct RedisStore {
    pool: RedisPool,
    /// `"{key_prefix}v1:"`.
    prefix: String,
    tier: Option<MemoryStore>,
    /// How long generation keys live: longer than any entry.
    gen_ttl_ms: u64,
    /// `compress_min_bytes` (0 = off).
    compress_min: usize,
}

fn err(e: crate::redis::StoreError) -> CacheStoreError {
    CacheStoreError(e.to_string())
}

fn parse_gen(v: Option<Vec<u8>>) -> u64 {
    v.and_then(|b| std::str::from_utf8(&b).ok()?.parse().ok())
        .unwrap_or(0)
}

fn random_gen() -> u64 {
    // Unpredictability is not needed, uniqueness is: a fresh hash of a process-wide
    // counter and the time.
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = blake3::Hasher::new();
    h.update(&COUNTER.fetch_add(1, Ordering::Relaxed).to_le_bytes());
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    h.update(&now.to_le_bytes());
    h.update(&std::process::id().to_le_bytes());
    let mut out = [0u8; 8];
    out.copy_from_slice(&h.finalize().as_bytes()[..8]);
    u64::from_le_bytes(out).max(1)
}

impl RedisStore {
    pub(crate) fn new(
        pool: RedisPool,
        key_prefix: &str,
        tier: Option<MemoryStore>,
        max_lifetime_ms: u64,
        compress_min: usize,
    ) -> Self {
        Self {
            pool,
            prefix: format!("{key_prefix}{FORMAT_VERSION}:"),
            tier,
            gen_ttl_ms: max_lifetime_ms + 3_600_000,
            compress_min,
        }
    }

    /// `P v1:{<group>}:` followed by `suffix` (built without `format!`: this runs
    /// on every lookup).
    fn group_key(&self, group: &[u8; 16], suffix: &[u8]) -> String {
        let mut k = String::with_capacity(self.prefix.len() + 36 + suffix.len() * 2 + 4);
        k.push_str(&self.prefix);
        k.push('{');
        push_hex(&mut k, group);
        k.push_str("}:");
        k
    }

    fn entry_key(&self, key: &Key) -> String {
        let mut k = self.group_key(&key.group, &key.full);
        push_hex(&mut k, &key.full);
        k
    }

    fn gen_key(&self, group: &[u8; 16]) -> String {
        let mut k = self.group_key(group, b"");
        k.push_str("gen");
        k
    }

    fn epoch_key(&self) -> String {
        format!("{}{{tags}}:epoch", self.prefix)
    }

    fn tag_key(&self, tag: &str) -> String {
        let h = blake3::hash(tag.as_bytes());
        format!("{}{{tags}}:{}", self.prefix, hex(&h.as_bytes()[..16]))
    }

    pub(crate) fn lock_key(&self, key: &Key) -> String {
        format!(
            "{}{{{}}}:lock:{}",
            self.prefix,
            hex(&key.group),
            hex(&key.full)
        )
    }

    pub(crate) async fn get(
        &self,
        key: &Key,
        now_ms: u64,
    ) -> Result<(Option<Arc<Stored>>, u64), CacheStoreError> {
        if let Some(tier) = &self.tier
            && let Some(e) = tier.get(&key.full, now_ms)
        {
            let mut cmd = redis::cmd("GET");
            cmd.arg(self.gen_key(&key.group));
            return match self.pool.query::<Option<Vec<u8>>>("cache_get", &cmd).await {
                Ok(g) => Ok((Some(e), parse_gen(g))),
                // Redis unreachable: the first tier answers while its entry is fresh
                // (invalidations from other replicas cannot be seen meanwhile).
                Err(_) if now_ms < e.fresh_until_ms => {
                    let g = e.gen_;
                    Ok((Some(e), g))
                }
                Err(e) => Err(err(e)),
            };
        }
        let entry_key = self.entry_key(key);
        let mut cmd = redis::cmd("MGET");
        cmd.arg(self.gen_key(&key.group)).arg(&entry_key);
        let (g, v): (Option<Vec<u8>>, Option<Vec<u8>>) =
            self.pool.query("cache_get", &cmd).await.map_err(err)?;
        let gen_ = parse_gen(g);
        let Some(v) = v else {
            return Ok((None, gen_));
        };
        let Some(rec) = Stored::decode(Bytes::from(v)) else {
            // Corrupt, truncated or another format version: a miss; drop it.
            let pool = self.pool.clone();
            tokio::spawn(async move {
                let mut del = redis::cmd("DEL");
                del.arg(entry_key);
                let _ = pool.query::<i64>("cache_del", &del).await;
            });
            return Ok((None, gen_));
        };
        if rec.expires_at_ms() <= now_ms {
            return Ok((None, gen_));
        }
        let rec = Arc::new(rec);
        if let Some(tier) = &self.tier {
            tier.put(key.full, rec.clone());
        }
        Ok((Some(rec), gen_))
    }

    pub(crate) async fn put(&self, key: &Key, rec: Arc<Stored>, now_ms: u64) {
        let ttl = rec.expires_at_ms().saturating_sub(now_ms);
        if ttl == 0 {
            return;
        }
        let mut cmd = redis::cmd("SET");
        cmd.arg(self.entry_key(key))
            .arg(rec.encode(self.compress_min))
            .arg("PX")
            .arg(ttl);
        if let Err(e) = self.pool.query::<()>("cache_put", &cmd).await {
            tracing::debug!(error = %e, "cache store failed");
            return;
        }
        if let Some(tier) = &self.tier {
            tier.put(key.full, rec);
        }
    }

    fn set_gen(&self, key: String) -> Cmd {
        let mut cmd = redis::cmd("SET");
        cmd.arg(key)
            .arg(random_gen().to_string())
            .arg("PX")
            .arg(self.gen_ttl_ms);
        cmd
    }

    pub(crate) async fn invalidate(&self, group: [u8; 16]) -> Result<(), CacheStoreError> {
        let cmd = self.set_gen(self.gen_key(&group));
        self.pool
            .query::<()>("cache_invalidate", &cmd)
            .await
            .map_err(err)
    }

    pub(crate) async fn purge_tag(&self, tag: &str) -> Result<(), CacheStoreError> {
        // The epoch first: a fill that reads the new generation also sees the new
        // epoch and stores nothing.
        for key in [self.epoch_key(), self.tag_key(tag)] {
            let cmd = self.set_gen(key);
            self.pool
                .query::<()>("cache_purge", &cmd)
                .await
                .map_err(err)?;
        }
        Ok(())
    }

    pub(crate) async fn purge_epoch(&self) -> Result<u64, CacheStoreError> {
        let mut cmd = redis::cmd("GET");
        cmd.arg(self.epoch_key());
        let v: Option<Vec<u8>> = self.pool.query("cache_get", &cmd).await.map_err(err)?;
        Ok(parse_gen(v))
    }

    /// The tags' generations, or `None` if a purge happened since `epoch`.
    pub(crate) async fn tag_gens_if_unpurged(
        &self,
        tags: &[String],
        epoch: u64,
    ) -> Result<Option<Vec<u64>>, CacheStoreError> {
        let mut cmd = redis::cmd("MGET");
        cmd.arg(self.epoch_key());
        for t in tags {
            cmd.arg(self.tag_key(t));
        }
        let v: Vec<Option<Vec<u8>>> = self.pool.query("cache_get", &cmd).await.map_err(err)?;
        let mut gens = v.into_iter().map(parse_gen);
        if gens.next() != Some(epoch) {
            return Ok(None);
        }
        Ok(Some(gens.collect()))
    }

    pub(crate) async fn tag_gens(&self, tags: &[String]) -> Result<Vec<u64>, CacheStoreError> {
        let mut cmd = redis::cmd("MGET");
        for t in tags {
            cmd.arg(self.tag_key(t));
        }
        let v: Vec<Option<Vec<u8>>> = self.pool.query("cache_get", &cmd).await.map_err(err)?;
        Ok(v.into_iter().map(parse_gen).collect())
    }

    /// A short fleet-wide fill lock: `Ok(true)` when this replica holds it.
    pub(crate) async fn try_lock(&self, key: &Key, ttl_ms: u64) -> Result<bool, CacheStoreError> {
        let mut cmd = redis::cmd("SET");
        cmd.arg(self.lock_key(key))
            .arg(1)
            .arg("NX")
            .arg("PX")
            .arg(ttl_ms);
        let r: Option<String> = self.pool.query("cache_lock", &cmd).await.map_err(err)?;
        Ok(r.is_some())
    }

    pub(crate) async fn unlock(&self, key: &Key) {
        let mut cmd = redis::cmd("DEL");
        cmd.arg(self.lock_key(key));
        let _ = self.pool.query::<i64>("cache_lock", &cmd).await;
    }
}
