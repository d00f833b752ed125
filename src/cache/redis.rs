//! The Redis backend: one binary value per entry, generations as random nonces.
//!
//! Key layout (`P` = `key_prefix`, hex digests):
//!
//! * `P v2:{<group>}:<key>` — an entry (or a variant index), `SET … PX` with the
//!   freshness plus the longest stale window;
//! * `P v2:{<group>}:gen` — the resource group's generation;
//! * `P v2:{tags}:<tag>` — a tag's generation;
//! * `P v2:{tags}:epoch` — changed by every tag purge, before the tag's generation.
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
//! A hit decodes the value only the first time this replica sees it: the last decoded
//! entry of each of 256 slots (picked by the key) is kept with the bytes it came
//! from, and a lookup that gets the very same bytes back from Redis (compared in
//! full, so a refill or a damaged value is decoded anew) reuses it. That skips the
//! checksum, the header parsing, any LZ4 decompression and a dozen allocations per
//! hit, for at most 256 values of up to 64 KiB each kept in memory (a decoded body
//! shares the bytes it was decoded from, unless it was compressed), each with the
//! header map of its last hit (see [`HitHeaders`](super::entry::HitHeaders)).
//!
//! Every call goes through [`RedisPool`] (timeout and circuit breaker): when Redis is
//! down the layer passes requests through at the cost of at most one timeout per
//! breaker interval.

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use redis::Cmd;

use super::CacheStoreError;
use super::entry::Stored;
use super::key::{FORMAT_VERSION, Key, hex, hex_into};
use super::memory::MemoryStore;
use crate::redis::RedisPool;

pub(crate) struct RedisStore {
    pool: RedisPool,
    decoded: Decoded,
    /// `"{key_prefix}v2:"`.
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

/// `P v2:{<group>}:gen` or `P v2:{<group>}:<key>`, written into a command's
/// buffer as one argument (every lookup sends two: no `Vec` for either, and the
/// group's digits are computed once for both).
struct GroupKey<'a> {
    prefix: &'a str,
    /// The group in hex ([`group_hex`]).
    group: &'a [u8; 32],
    /// The entry's full key, or `None` for the group's generation.
    full: Option<&'a [u8; 32]>,
}

/// The 32 hex digits of a group.
fn group_hex(group: &[u8; 16]) -> [u8; 32] {
    let mut digits = [0u8; 32];
    hex_into(&mut digits, group);
    digits
}

impl<'a> GroupKey<'a> {
    fn gen_(prefix: &'a str, group: &'a [u8; 32]) -> Self {
        Self {
            prefix,
            group,
            full: None,
        }
    }

    fn entry(prefix: &'a str, group: &'a [u8; 32], key: &'a Key) -> Self {
        Self {
            prefix,
            group,
            full: Some(&key.full),
        }
    }

    /// The length in bytes: the prefix, `{`, 32 digits, `}:`, and 64 digits or `gen`.
    fn len(&self) -> usize {
        self.prefix.len() + 35 + if self.full.is_some() { 64 } else { 3 }
    }

    /// Writes the key to the start of `out`, which must hold [`len`](Self::len) bytes.
    fn write(&self, out: &mut [u8]) {
        let (prefix, rest) = out.split_at_mut(self.prefix.len());
        prefix.copy_from_slice(self.prefix.as_bytes());
        rest[0] = b'{';
        rest[1..33].copy_from_slice(self.group);
        rest[33..35].copy_from_slice(b"}:");
        match self.full {
            Some(full) => hex_into(&mut rest[35..99], full),
            None => rest[35..38].copy_from_slice(b"gen"),
        }
    }

    fn to_vec(&self) -> Vec<u8> {
        let mut out = vec![0; self.len()];
        self.write(&mut out);
        out
    }
}

impl redis::ToRedisArgs for GroupKey<'_> {
    fn write_redis_args<W: ?Sized + redis::RedisWrite>(&self, out: &mut W) {
        // On the stack unless the configured prefix is unusually long.
        let mut buf = [0u8; 192];
        match buf.get_mut(..self.len()) {
            Some(key) => {
                self.write(key);
                out.write_arg(key);
            }
            None => out.write_arg(&self.to_vec()),
        }
    }
}

/// The last decoded entry of each slot, with the exact bytes it was decoded from.
struct Decoded {
    slots: Box<[Slot]>,
}

type Slot = Mutex<Option<(Bytes, Arc<Stored>)>>;

impl Decoded {
    const SLOTS: usize = 256;
    /// Larger values are decoded on every hit: keeps the memory held here bounded.
    const MAX_VALUE: usize = 64 * 1024;

    fn new() -> Self {
        Self {
            slots: (0..Self::SLOTS).map(|_| Mutex::new(None)).collect(),
        }
    }

    fn slot(&self, key: &[u8; 32]) -> &Slot {
        &self.slots[usize::from(key[0]) % Self::SLOTS]
    }

    /// The entry decoded from exactly `value`, if this slot holds it.
    fn get(&self, key: &[u8; 32], value: &Bytes) -> Option<Arc<Stored>> {
        if value.len() > Self::MAX_VALUE {
            return None;
        }
        let slot = self.slot(key).lock().ok()?;
        match &*slot {
            Some((bytes, rec)) if bytes == value => Some(rec.clone()),
            _ => None,
        }
    }

    fn put(&self, key: &[u8; 32], value: Bytes, rec: Arc<Stored>) {
        if value.len() > Self::MAX_VALUE {
            return;
        }
        if let Ok(mut slot) = self.slot(key).lock() {
            *slot = Some((value, rec));
        }
    }
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
            decoded: Decoded::new(),
            prefix: format!("{key_prefix}{FORMAT_VERSION}:"),
            tier,
            gen_ttl_ms: max_lifetime_ms + 3_600_000,
            compress_min,
        }
    }

    fn entry_key(&self, key: &Key) -> Vec<u8> {
        GroupKey::entry(&self.prefix, &group_hex(&key.group), key).to_vec()
    }

    fn gen_key(&self, group: &[u8; 16]) -> Vec<u8> {
        GroupKey::gen_(&self.prefix, &group_hex(group)).to_vec()
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
            let group = group_hex(&key.group);
            let gen_key = GroupKey::gen_(&self.prefix, &group);
            let mut cmd = redis::Cmd::with_capacity(2, 3 + gen_key.len());
            cmd.arg("GET").arg(&gen_key);
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
        let group = group_hex(&key.group);
        let gen_key = GroupKey::gen_(&self.prefix, &group);
        let entry_key = GroupKey::entry(&self.prefix, &group, key);
        // Sized up front (`redis::cmd` starts empty and regrows on every argument).
        let mut cmd = redis::Cmd::with_capacity(3, 4 + gen_key.len() + entry_key.len());
        cmd.arg("MGET").arg(&gen_key).arg(&entry_key);
        let (g, v): (Option<Vec<u8>>, Option<Vec<u8>>) =
            self.pool.query("cache_get", &cmd).await.map_err(err)?;
        let gen_ = parse_gen(g);
        let Some(v) = v else {
            return Ok((None, gen_));
        };
        let v = Bytes::from(v);
        let decoded = self.decoded.get(&key.full, &v);
        let Some(rec) = decoded.or_else(|| {
            let rec = Arc::new(Stored::decode(v.clone())?);
            self.decoded.put(&key.full, v, rec.clone());
            Some(rec)
        }) else {
            // Corrupt, truncated or another format version: a miss; drop it.
            let entry_key = entry_key.to_vec();
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

    fn set_gen(&self, key: impl redis::ToRedisArgs) -> Cmd {
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::super::entry::{Kind, Stored};
    use super::*;

    fn record(gen_: u64) -> (Bytes, Arc<Stored>) {
        let rec = Stored {
            gen_,
            stored_at_ms: 1,
            fresh_until_ms: 2,
            swr_until_ms: 0,
            sie_until_ms: 0,
            tags: Vec::new(),
            kind: Kind::Variants(Vec::new()),
        };
        let bytes = Bytes::from(rec.encode(0));
        (bytes, Arc::new(rec))
    }

    #[test]
    fn keys_follow_the_documented_layout_in_commands_too() {
        let key = Key {
            group: [0xab; 16],
            full: [0x01; 32],
        };
        let digits = group_hex(&key.group);
        let entry = GroupKey::entry("app:v2:", &digits, &key);
        let gen_ = GroupKey::gen_("app:v2:", &digits);
        let group = format!("app:v2:{{{}}}:", "ab".repeat(16));
        assert_eq!(
            entry.to_vec(),
            format!("{group}{}", "01".repeat(32)).as_bytes()
        );
        assert_eq!(gen_.to_vec(), format!("{group}gen").as_bytes());
        // As arguments, each is exactly one argument with the same bytes.
        let mut cmd = redis::cmd("MGET");
        cmd.arg(&gen_).arg(&entry);
        let args: Vec<Vec<u8>> = cmd
            .args_iter()
            .map(|a| match a {
                redis::Arg::Simple(b) => b.to_vec(),
                _ => panic!("only plain arguments"),
            })
            .collect();
        assert_eq!(args, [b"MGET".to_vec(), gen_.to_vec(), entry.to_vec()]);
        // A prefix too long for the stack buffer takes the same bytes through a `Vec`.
        let long = "p".repeat(200);
        let mut cmd = redis::cmd("GET");
        cmd.arg(GroupKey::entry(&long, &digits, &key));
        let arg = cmd.args_iter().nth(1).map(|a| match a {
            redis::Arg::Simple(b) => b.to_vec(),
            _ => panic!("only plain arguments"),
        });
        assert_eq!(
            arg.unwrap(),
            format!("{long}{{{}}}:{}", "ab".repeat(16), "01".repeat(32)).as_bytes()
        );
    }

    #[test]
    fn decoded_entries_are_reused_only_for_identical_bytes() {
        let memo = Decoded::new();
        let key = [9u8; 32];
        let (bytes, rec) = record(1);
        assert!(memo.get(&key, &bytes).is_none(), "nothing decoded yet");
        memo.put(&key, bytes.clone(), rec.clone());
        let again = Bytes::copy_from_slice(&bytes);
        assert!(Arc::ptr_eq(&memo.get(&key, &again).unwrap(), &rec));
        // A refill under the same key, or a damaged copy, is decoded anew.
        let (refill, _) = record(2);
        assert!(memo.get(&key, &refill).is_none());
        let mut damaged = bytes.to_vec();
        damaged[5] ^= 1;
        assert!(memo.get(&key, &Bytes::from(damaged)).is_none());
        // Values too large to keep are never kept.
        let big = Bytes::from(vec![0u8; Decoded::MAX_VALUE + 1]);
        memo.put(&key, big.clone(), rec);
        assert!(memo.get(&key, &big).is_none());
    }
}
