//! The in-process backend: a bounded `quick_cache` (S3-FIFO: scan-resistant, no
//! background threads, sharded, one small dependency) plus invalidation generations.
//!
//! quick_cache was chosen over moka: it is already a lean dependency (no async
//! runtime integration, no housekeeping thread), bounds both entry count and bytes
//! through its weighter, and per-entry TTL is checked on read from the entry's own
//! timestamps, which the Redis backend needs anyway.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use quick_cache::Weighter;
use quick_cache::sync::Cache;

use super::entry::Stored;

/// Generations tracked before the maps are reset (and every older entry with them).
const MAX_GENERATIONS: usize = 100_000;

#[derive(Clone)]
struct EntryWeighter {
    /// Each entry weighs at least this, so the byte bound also bounds the count.
    min_weight: u64,
}

impl Weighter<[u8; 32], Arc<Stored>> for EntryWeighter {
    fn weight(&self, _: &[u8; 32], v: &Arc<Stored>) -> u64 {
        v.weight().max(self.min_weight)
    }
}

/// A bounded in-memory entry store.
pub(crate) struct MemoryStore {
    entries: Cache<[u8; 32], Arc<Stored>, EntryWeighter>,
    pub(crate) gens: Generations,
}

impl std::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryStore")
            .field("entries", &self.entries.len())
            .field("bytes", &self.entries.weight())
            .finish()
    }
}

impl MemoryStore {
    pub(crate) fn new(max_entries: usize, max_bytes: u64) -> Self {
        let max_entries = max_entries.max(1);
        let min_weight = (max_bytes / max_entries as u64).max(1);
        Self {
            entries: Cache::with_weighter(max_entries, max_bytes, EntryWeighter { min_weight }),
            gens: Generations::default(),
        }
    }

    /// The entry, unless it has outlived every window.
    pub(crate) fn get(&self, key: &[u8; 32], now_ms: u64) -> Option<Arc<Stored>> {
        let e = self.entries.get(key)?;
        if e.expires_at_ms() <= now_ms {
            self.entries.remove(key);
            return None;
        }
        Some(e)
    }

    pub(crate) fn put(&self, key: [u8; 32], e: Arc<Stored>) {
        self.entries.insert(key, e);
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }
}

/// Invalidation generations for resource groups and tags, in process.
///
/// A group's (or tag's) generation is the sequence number of its last invalidation,
/// or the floor when it has none. Entries remember the generation they were built
/// under and are valid only while it is unchanged. When too many are tracked, the
/// maps are cleared and the floor raised past every issued number: all entries
/// become invalid at once, which is safe (a flush), never stale.
#[derive(Debug, Default)]
pub(crate) struct Generations {
    inner: Mutex<GenInner>,
}

#[derive(Debug, Default)]
struct GenInner {
    seq: u64,
    floor: u64,
    /// The sequence number of the last tag purge (or reset): fills compare it.
    purge_epoch: u64,
    groups: HashMap<[u8; 16], u64>,
    tags: HashMap<String, u64>,
}

impl Generations {
    fn lock(&self) -> std::sync::MutexGuard<'_, GenInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn group(&self, g: &[u8; 16]) -> u64 {
        let i = self.lock();
        i.groups.get(g).copied().unwrap_or(i.floor)
    }

    pub(crate) fn bump_group(&self, g: [u8; 16]) {
        let mut i = self.lock();
        i.seq += 1;
        let seq = i.seq;
        if i.groups.len() >= MAX_GENERATIONS {
            i.reset();
        } else {
            i.groups.insert(g, seq);
        }
    }

    pub(crate) fn tags(&self, tags: &[String]) -> Vec<u64> {
        let i = self.lock();
        tags.iter()
            .map(|t| i.tags.get(t).copied().unwrap_or(i.floor))
            .collect()
    }

    /// Changes whenever a tag is purged; a fill reads it before calling the handler.
    pub(crate) fn purge_epoch(&self) -> u64 {
        self.lock().purge_epoch
    }

    /// The tags' generations, or `None` when a purge happened since `epoch` (the
    /// response may predate it and must not be stored; untagged ones are immune).
    pub(crate) fn tags_if_unpurged(&self, tags: &[String], epoch: u64) -> Option<Vec<u64>> {
        let i = self.lock();
        (tags.is_empty() || i.purge_epoch == epoch).then(|| {
            tags.iter()
                .map(|t| i.tags.get(t).copied().unwrap_or(i.floor))
                .collect()
        })
    }

    pub(crate) fn bump_tag(&self, tag: &str) {
        let mut i = self.lock();
        i.seq += 1;
        let seq = i.seq;
        i.purge_epoch = seq;
        if i.tags.len() >= MAX_GENERATIONS {
            i.reset();
        } else {
            i.tags.insert(tag.to_owned(), seq);
        }
    }
}

impl GenInner {
    fn reset(&mut self) {
        self.seq += 1;
        self.floor = self.seq;
        self.purge_epoch = self.seq;
        self.groups.clear();
        self.tags.clear();
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::cache::entry::{Kind, ResponseData};
    use bytes::Bytes;
    use http::{HeaderValue, StatusCode};

    fn entry(body: usize, expires: u64) -> Arc<Stored> {
        Arc::new(Stored {
            gen_: 0,
            stored_at_ms: 0,
            fresh_until_ms: expires,
            swr_until_ms: 0,
            sie_until_ms: 0,
            tags: vec![],
            kind: Kind::Response(ResponseData {
                status: StatusCode::OK,
                headers: vec![],
                etag: HeaderValue::from_static("\"x\""),
                body: Bytes::from(vec![0u8; body]),
                public: false,
                hit_headers: Default::default(),
            }),
        })
    }

    #[test]
    fn bounded_by_count_and_bytes() {
        let m = MemoryStore::new(10, 1_000_000);
        for i in 0..100u8 {
            m.put([i; 32], entry(10, 1_000));
        }
        assert!(m.len() <= 10, "{}", m.len());
        let m = MemoryStore::new(1_000, 10_000);
        for i in 0..100u8 {
            m.put([i; 32], entry(2_000, 1_000));
        }
        assert!(m.entries.weight() <= 10_000);
    }

    #[test]
    fn expired_entries_are_gone() {
        let m = MemoryStore::new(10, 1_000_000);
        m.put([1; 32], entry(1, 1_000));
        assert!(m.get(&[1; 32], 999).is_some());
        assert!(m.get(&[1; 32], 1_000).is_none());
        assert!(m.get(&[1; 32], 0).is_none(), "removed on expiry");
    }

    #[test]
    fn generations_change_on_bump_and_never_return() {
        let g = Generations::default();
        let before = g.group(&[1; 16]);
        g.bump_group([1; 16]);
        let after = g.group(&[1; 16]);
        assert_ne!(before, after);
        assert_eq!(g.group(&[2; 16]), before, "other groups untouched");
        let t0 = g.tags(&["a".into()]);
        g.bump_tag("a");
        assert_ne!(g.tags(&["a".into()]), t0);
        let epoch = g.purge_epoch();
        let tags = vec!["b".to_owned()];
        assert!(g.tags_if_unpurged(&tags, epoch).is_some());
        g.bump_group([3; 16]);
        assert!(g.tags_if_unpurged(&tags, epoch).is_some(), "not a purge");
        g.bump_tag("c");
        assert!(g.tags_if_unpurged(&tags, epoch).is_none(), "any purge");
        // Reset: every old generation becomes invalid.
        g.lock().reset();
        assert_ne!(g.group(&[1; 16]), after);
        assert_ne!(g.group(&[2; 16]), before);
    }
}
