//! Stored entries and their binary encoding.
//!
//! One Redis value holds one entry: a magic and format version, the timestamps,
//! the invalidation generations it was built under, then either a response (status,
//! headers as raw bytes, ETag, body) or a variant index (the response's `Vary`
//! names). A 64-bit checksum closes it: a corrupt or foreign value decodes to
//! `None` and is treated as a miss.
//!
//! With `compress_min_bytes` set, a response whose body reaches the threshold is
//! stored LZ4-compressed (flag bit 4: everything after the flags byte is one LZ4
//! block, prefixed by its decompressed length), unless its content is already
//! compressed (`Content-Encoding`, images, audio, video, archives) or compression
//! would not make it at least an eighth smaller. The checksum covers the stored bytes, so a damaged
//! compressed value is a miss before anything is decompressed.

// The binary encoding is only used by the Redis backend (and its tests).
#![cfg_attr(not(feature = "redis"), allow(dead_code))]

use std::sync::{PoisonError, RwLock};

use bytes::{BufMut, Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};

const MAGIC: &[u8; 3] = b"PLC";
/// 2 added the compression flag; 3 folds the checksum in four independent lanes.
/// Values of an earlier version are misses.
const VERSION: u8 = 3;
const FLAG_PUBLIC: u8 = 1;
const FLAG_VARIANTS: u8 = 2;
const FLAG_COMPRESSED: u8 = 4;
const CHECKSUM_LEN: usize = 8;
/// Magic, version, flags.
const HEADER_LEN: usize = MAGIC.len() + 2;
/// LZ4 cannot expand data more than 255-fold: a larger claimed size is corrupt, and
/// rejecting it bounds what a damaged value can make the decoder allocate.
const LZ4_MAX_RATIO: usize = 255;

/// One stored record.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Stored {
    /// The invalidation generation of the resource when the fill began.
    pub(crate) gen_: u64,
    pub(crate) stored_at_ms: u64,
    pub(crate) fresh_until_ms: u64,
    /// End of the stale-while-revalidate window.
    pub(crate) swr_until_ms: u64,
    /// End of the stale-if-error window.
    pub(crate) sie_until_ms: u64,
    /// Tags and their generations when stored.
    pub(crate) tags: Vec<(String, u64)>,
    pub(crate) kind: Kind,
}

/// What a record holds.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Kind {
    /// A complete response.
    Response(ResponseData),
    /// The resource varies on these request headers; variants live under keys
    /// derived from their values.
    Variants(Vec<HeaderName>),
}

/// A stored response.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ResponseData {
    pub(crate) status: StatusCode,
    pub(crate) headers: Vec<(HeaderName, HeaderValue)>,
    pub(crate) etag: HeaderValue,
    pub(crate) body: Bytes,
    /// Stored from a `Cache-Control: public` response: may be served to requests
    /// with credentials.
    pub(crate) public: bool,
    /// The headers of the last full hit served from this record (see [`HitHeaders`]).
    pub(crate) hit_headers: HitHeaders,
}

/// The complete header map of a plain `200`-style hit (stored headers, `ETag`,
/// `Cache-Status`, `X-Cache`, `Age`), kept with the age and TTL it was built for.
///
/// Every hit within the same second of a record's life sends the same headers: a
/// hit clones this map (two allocations and a reference count per value) instead of
/// hashing every header name into a fresh map and formatting `Age` and
/// `Cache-Status` again. Part of the record, so it lives and dies with the memoised
/// decoded entry; a copy or a newly decoded record starts empty.
///
/// A read-write lock: hits of a hot record on many threads only read it (a shared
/// read lock); one writer replaces it once a second.
#[derive(Default)]
pub(crate) struct HitHeaders(RwLock<Option<Box<HitSnapshot>>>);

struct HitSnapshot {
    age: u64,
    ttl: i64,
    headers: HeaderMap,
}

impl HitHeaders {
    /// The headers for `age` and `ttl`: the kept map when it was built for them,
    /// else `build()`, kept for the hits that follow.
    pub(crate) fn get_or_build(
        &self,
        age: u64,
        ttl: i64,
        build: impl FnOnce() -> HeaderMap,
    ) -> HeaderMap {
        // A poisoned lock only means a clone panicked (out of memory): the map
        // itself is whole, so it is still used.
        if let Some(s) = &*self.0.read().unwrap_or_else(PoisonError::into_inner)
            && s.age == age
            && s.ttl == ttl
        {
            return s.headers.clone();
        }
        let headers = build();
        // Boxed: a record that is never hit carries one pointer, not a whole map.
        *self.0.write().unwrap_or_else(PoisonError::into_inner) = Some(Box::new(HitSnapshot {
            age,
            ttl,
            headers: headers.clone(),
        }));
        headers
    }
}

impl Clone for HitHeaders {
    /// A copy of a record starts without a kept map (it is rebuilt on its first hit).
    fn clone(&self) -> Self {
        Self::default()
    }
}

impl PartialEq for HitHeaders {
    /// A cache of what the record's other fields determine: never a difference.
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl std::fmt::Debug for HitHeaders {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HitHeaders")
    }
}

impl Stored {
    /// The response record of a fill: this record's timing, with the response and the
    /// tag generations read when it is stored.
    pub(crate) fn with_response(
        &self,
        tags: Vec<String>,
        gens: Vec<u64>,
        data: ResponseData,
    ) -> Self {
        Self {
            tags: tags.into_iter().zip(gens).collect(),
            kind: Kind::Response(data),
            ..self.clone()
        }
    }

    /// When the backend may drop it.
    pub(crate) fn expires_at_ms(&self) -> u64 {
        self.fresh_until_ms
            .max(self.swr_until_ms)
            .max(self.sie_until_ms)
    }

    /// Approximate memory footprint, for the memory backend's byte bound.
    pub(crate) fn weight(&self) -> u64 {
        let kind = match &self.kind {
            Kind::Response(r) => {
                r.body.len()
                    + r.headers
                        .iter()
                        .map(|(n, v)| n.as_str().len() + v.len() + 48)
                        .sum::<usize>()
                    // The header map a hit keeps (`HitHeaders`): a bucket a header.
                    + (r.headers.len() + 4) * 96
            }
            Kind::Variants(names) => names.len() * 32,
        };
        let tags: usize = self.tags.iter().map(|(t, _)| t.len() + 32).sum();
        (kind + tags + 160) as u64
    }

    /// Encodes the record; a response body of at least `compress_min` bytes (0 =
    /// never) is compressed when that helps (see the module docs).
    pub(crate) fn encode(&self, compress_min: usize) -> Vec<u8> {
        let mut out = BytesMut::with_capacity(self.weight() as usize + 64);
        out.put_slice(MAGIC);
        out.put_u8(VERSION);
        let mut flags = 0;
        if let Kind::Variants(_) = self.kind {
            flags |= FLAG_VARIANTS;
        }
        if let Kind::Response(r) = &self.kind
            && r.public
        {
            flags |= FLAG_PUBLIC;
        }
        out.put_u8(flags);
        for v in [
            self.gen_,
            self.stored_at_ms,
            self.fresh_until_ms,
            self.swr_until_ms,
            self.sie_until_ms,
        ] {
            out.put_u64(v);
        }
        out.put_u16(self.tags.len() as u16);
        for (t, v) in &self.tags {
            put_short(&mut out, t.as_bytes());
            out.put_u64(*v);
        }
        match &self.kind {
            Kind::Variants(names) => {
                out.put_u16(names.len() as u16);
                for n in names {
                    put_short(&mut out, n.as_str().as_bytes());
                }
            }
            Kind::Response(r) => {
                out.put_u16(r.status.as_u16());
                put_short(&mut out, r.etag.as_bytes());
                out.put_u16(r.headers.len() as u16);
                for (n, v) in &r.headers {
                    put_short(&mut out, n.as_str().as_bytes());
                    out.put_u32(v.len() as u32);
                    out.put_slice(v.as_bytes());
                }
                out.put_u32(r.body.len() as u32);
                out.put_slice(&r.body);
            }
        }
        let mut out = match &self.kind {
            Kind::Response(r) if compress_min > 0 && r.body.len() >= compress_min => {
                if compressible(&r.headers) {
                    compress(out)
                } else {
                    out
                }
            }
            _ => out,
        };
        let sum = checksum(&out);
        out.put_slice(&sum);
        out.to_vec()
    }

    /// Decodes a value; `None` for anything that is not an intact entry of this
    /// format version.
    pub(crate) fn decode(bytes: Bytes) -> Option<Self> {
        if bytes.len() < MAGIC.len() + 2 + CHECKSUM_LEN {
            return None;
        }
        let (payload, sum) = bytes.split_at(bytes.len() - CHECKSUM_LEN);
        if checksum(payload) != *sum {
            return None;
        }
        if payload[..MAGIC.len()] != MAGIC[..] || payload[MAGIC.len()] != VERSION {
            return None;
        }
        let flags = payload[HEADER_LEN - 1];
        let rest = if flags & FLAG_COMPRESSED != 0 {
            decompress(&payload[HEADER_LEN..])?
        } else {
            bytes.slice(HEADER_LEN..bytes.len() - CHECKSUM_LEN)
        };
        let mut r = Reader { buf: rest, pos: 0 };
        let gen_ = r.u64()?;
        let stored_at_ms = r.u64()?;
        let fresh_until_ms = r.u64()?;
        let swr_until_ms = r.u64()?;
        let sie_until_ms = r.u64()?;
        let n_tags = r.u16()?;
        let mut tags = Vec::with_capacity(n_tags as usize);
        for _ in 0..n_tags {
            let t = String::from_utf8(r.short()?.to_vec()).ok()?;
            tags.push((t, r.u64()?));
        }
        let kind = if flags & FLAG_VARIANTS != 0 {
            let n = r.u16()?;
            let mut names = Vec::with_capacity(n as usize);
            for _ in 0..n {
                names.push(HeaderName::from_bytes(&r.short()?).ok()?);
            }
            Kind::Variants(names)
        } else {
            let status = StatusCode::from_u16(r.u16()?).ok()?;
            let etag = HeaderValue::from_maybe_shared(r.short()?).ok()?;
            let n = r.u16()?;
            let mut headers = Vec::with_capacity(n as usize);
            for _ in 0..n {
                let name = HeaderName::from_bytes(&r.short()?).ok()?;
                let len = r.u32()? as usize;
                let value = HeaderValue::from_maybe_shared(r.take(len)?).ok()?;
                headers.push((name, value));
            }
            let len = r.u32()? as usize;
            let body = r.take(len)?;
            Kind::Response(ResponseData {
                status,
                headers,
                etag,
                body,
                public: flags & FLAG_PUBLIC != 0,
                hit_headers: HitHeaders::default(),
            })
        };
        if r.pos != r.buf.len() {
            return None;
        }
        Some(Self {
            gen_,
            stored_at_ms,
            fresh_until_ms,
            swr_until_ms,
            sie_until_ms,
            tags,
            kind,
        })
    }
}

/// Whether compressing a body with these headers can pay off: not when it is
/// already encoded or of a type that is compressed by nature.
fn compressible(headers: &[(HeaderName, HeaderValue)]) -> bool {
    !headers.iter().any(|(n, v)| {
        if *n == http::header::CONTENT_ENCODING {
            return !v.as_bytes().eq_ignore_ascii_case(b"identity");
        }
        if *n != http::header::CONTENT_TYPE {
            return false;
        }
        let t = v.as_bytes();
        let essence = t.split(|&c| c == b';').next().unwrap_or(t).trim_ascii();
        let lower = essence.to_ascii_lowercase();
        let starts = |p: &[u8]| lower.starts_with(p);
        (starts(b"image/") && !lower.ends_with(b"+xml") && lower != b"image/bmp")
            || starts(b"audio/")
            || starts(b"video/")
            || starts(b"font/woff")
            || matches!(
                lower.as_slice(),
                b"application/zip"
                    | b"application/gzip"
                    | b"application/x-gzip"
                    | b"application/zstd"
                    | b"application/x-bzip2"
                    | b"application/x-xz"
                    | b"application/x-7z-compressed"
                    | b"application/x-rar-compressed"
                    | b"application/vnd.rar"
                    | b"application/pdf"
                    | b"application/wasm"
            )
    })
}

/// Compresses everything after the header of an encoded record when that saves at
/// least an eighth (less is not worth a decompression per hit); otherwise returns
/// it as it is.
#[cfg(feature = "redis")]
fn compress(plain: BytesMut) -> BytesMut {
    let rest = &plain[HEADER_LEN..];
    let packed = lz4_flex::block::compress(rest);
    if packed.len() + 4 > rest.len() - rest.len() / 8 {
        return plain;
    }
    let mut out = BytesMut::with_capacity(HEADER_LEN + 4 + packed.len() + CHECKSUM_LEN);
    out.put_slice(&plain[..HEADER_LEN]);
    out[HEADER_LEN - 1] |= FLAG_COMPRESSED;
    out.put_u32(rest.len() as u32);
    out.put_slice(&packed);
    out
}

#[cfg(not(feature = "redis"))]
fn compress(plain: BytesMut) -> BytesMut {
    plain
}

/// The record after the header of a compressed value; `None` if it does not
/// decompress to exactly the announced length.
fn decompress(packed: &[u8]) -> Option<Bytes> {
    let (len, block) = packed.split_first_chunk::<4>()?;
    let len = u32::from_be_bytes(*len) as usize;
    if len > block.len().saturating_mul(LZ4_MAX_RATIO) {
        return None;
    }
    #[cfg(feature = "redis")]
    {
        let plain = lz4_flex::block::decompress(block, len).ok()?;
        (plain.len() == len).then(|| Bytes::from(plain))
    }
    #[cfg(not(feature = "redis"))]
    {
        None
    }
}

/// A 64-bit checksum of a stored value: guards against damaged, truncated or
/// foreign values, not against forgery (whoever can write to Redis can write any
/// entry), so a cryptographic hash would be wasted work on every hit.
///
/// Each 8-byte word is folded into one of four lanes (word `i` into lane `i % 4`) by
/// `h = (rotl(h) ^ word) * K` with odd `K`; the lanes, then the last partial word,
/// are folded the same way into a hash seeded by the length, and a final avalanche
/// spreads the bits. For a fixed word every step is a bijection of `h`, and for a
/// fixed `h` a bijection of the word, so a value differing from the original in any
/// single word (any one flipped bit, say) always has a different checksum. Four
/// lanes because each step waits for the multiply before it: one lane ran at a
/// multiply's latency per word, four run at its throughput (a 6 KB entry is checked
/// about three times faster; the instruction count is the same).
pub(crate) fn checksum(bytes: &[u8]) -> [u8; CHECKSUM_LEN] {
    const K: u64 = 0x9e37_79b9_7f4a_7c15;
    #[inline(always)]
    fn step(h: u64, w: u64) -> u64 {
        (h.rotate_left(23) ^ w).wrapping_mul(K)
    }
    #[inline(always)]
    fn word(b: &[u8]) -> u64 {
        let mut a = [0u8; 8];
        a[..b.len()].copy_from_slice(b);
        u64::from_le_bytes(a)
    }
    let mut lanes = [1u64, 2, 3, 4].map(|seed| seed.wrapping_mul(K));
    let mut blocks = bytes.chunks_exact(32);
    for block in &mut blocks {
        for (lane, w) in lanes.iter_mut().zip(block.chunks_exact(8)) {
            *lane = step(*lane, word(w));
        }
    }
    let mut words = blocks.remainder().chunks_exact(8);
    for (lane, w) in lanes.iter_mut().zip(&mut words) {
        *lane = step(*lane, word(w));
    }
    let mut h = (bytes.len() as u64).wrapping_mul(K);
    for lane in lanes {
        h = step(h, lane);
    }
    h = step(h, word(words.remainder()));
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^= h >> 33;
    h.to_le_bytes()
}

fn put_short(out: &mut BytesMut, b: &[u8]) {
    out.put_u16(b.len() as u16);
    out.put_slice(b);
}

struct Reader {
    buf: Bytes,
    pos: usize,
}

impl Reader {
    fn take(&mut self, n: usize) -> Option<Bytes> {
        let end = self.pos.checked_add(n)?;
        if end > self.buf.len() {
            return None;
        }
        let out = self.buf.slice(self.pos..end);
        self.pos = end;
        Some(out)
    }
    fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        let b = self.take(N)?;
        b.as_ref().try_into().ok()
    }
    fn u16(&mut self) -> Option<u16> {
        Some(u16::from_be_bytes(self.array()?))
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_be_bytes(self.array()?))
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_be_bytes(self.array()?))
    }
    fn short(&mut self) -> Option<Bytes> {
        let n = self.u16()? as usize;
        self.take(n)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn sample() -> Stored {
        Stored {
            gen_: 7,
            stored_at_ms: 1_000,
            fresh_until_ms: 61_000,
            swr_until_ms: 71_000,
            sie_until_ms: 0,
            tags: vec![("items".into(), 3)],
            kind: Kind::Response(ResponseData {
                status: StatusCode::NOT_FOUND,
                headers: vec![
                    (
                        HeaderName::from_static("content-type"),
                        HeaderValue::from_static("text/plain"),
                    ),
                    (
                        HeaderName::from_static("x-multi"),
                        HeaderValue::from_static("a"),
                    ),
                    (
                        HeaderName::from_static("x-multi"),
                        HeaderValue::from_bytes(b"\xff non-utf8").unwrap(),
                    ),
                ],
                etag: HeaderValue::from_static("\"abc\""),
                body: Bytes::from_static(b"hello"),
                public: true,
                hit_headers: Default::default(),
            }),
        }
    }

    #[test]
    fn round_trips() {
        let s = sample();
        assert_eq!(Stored::decode(Bytes::from(s.encode(0))), Some(s));
        let v = Stored {
            kind: Kind::Variants(vec![HeaderName::from_static("accept-language")]),
            ..sample()
        };
        assert_eq!(Stored::decode(Bytes::from(v.encode(1))), Some(v));
        assert_eq!(sample().expires_at_ms(), 71_000);
    }

    #[test]
    fn corrupt_or_foreign_values_are_rejected() {
        let good = sample().encode(0);
        for i in [0, 3, 10, good.len() / 2, good.len() - 1] {
            let mut bad = good.clone();
            bad[i] ^= 0x01;
            assert!(Stored::decode(Bytes::from(bad)).is_none(), "flip at {i}");
        }
        assert!(Stored::decode(Bytes::from(good[..good.len() - 3].to_vec())).is_none());
        assert!(Stored::decode(Bytes::from_static(b"garbage")).is_none());
        // Every single-bit flip anywhere, checksum included.
        for bit in 0..good.len() * 8 {
            let mut bad = good.clone();
            bad[bit / 8] ^= 1 << (bit % 8);
            assert!(Stored::decode(Bytes::from(bad)).is_none(), "bit {bit}");
        }
        assert!(Stored::decode(Bytes::new()).is_none());
    }

    #[test]
    fn checksum_sees_every_bit_and_every_length() {
        // Lengths around the four-lane block boundaries: full blocks, leftover
        // words, a partial last word.
        let data: Vec<u8> = (0..200u32).map(|i| (i * 37 + 11) as u8).collect();
        for len in [0, 1, 7, 8, 9, 31, 32, 33, 63, 64, 65, 100, 200] {
            let v = &data[..len];
            let sum = checksum(v);
            for bit in 0..len * 8 {
                let mut bad = v.to_vec();
                bad[bit / 8] ^= 1 << (bit % 8);
                assert_ne!(checksum(&bad), sum, "len {len}, bit {bit}");
            }
            for shorter in 0..len {
                assert_ne!(checksum(&v[..shorter]), sum, "len {len} cut to {shorter}");
            }
        }
        // Words swapped between lanes are another value.
        let mut swapped = data.clone();
        swapped[..8].copy_from_slice(&data[8..16]);
        swapped[8..16].copy_from_slice(&data[..8]);
        assert_ne!(checksum(&swapped), checksum(&data));
    }

    fn with_body(body: Vec<u8>, content_type: &'static str) -> Stored {
        let mut s = sample();
        if let Kind::Response(r) = &mut s.kind {
            r.body = Bytes::from(body);
            r.headers[0].1 = HeaderValue::from_static(content_type);
        }
        s
    }

    fn text(n: usize) -> Vec<u8> {
        b"{\"id\":42,\"name\":\"a compressible item\"},"
            .iter()
            .copied()
            .cycle()
            .take(n)
            .collect()
    }

    fn is_compressed(encoded: &[u8]) -> bool {
        encoded[HEADER_LEN - 1] & FLAG_COMPRESSED != 0
    }

    #[test]
    fn compresses_from_the_threshold_and_round_trips() {
        let s = with_body(text(4096), "application/json");
        let plain = s.encode(0);
        assert!(!is_compressed(&plain), "0 = off");
        assert!(!is_compressed(&s.encode(4097)), "below the threshold");
        let packed = s.encode(4096);
        assert!(is_compressed(&packed), "at the threshold");
        assert!(
            packed.len() * 4 < plain.len(),
            "{} vs {}",
            packed.len(),
            plain.len()
        );
        assert_eq!(Stored::decode(Bytes::from(packed)), Some(s));
    }

    #[test]
    fn compressed_content_and_incompressible_bodies_stay_plain() {
        for ct in ["image/png", "video/mp4", "application/zip", "font/woff2"] {
            let s = with_body(text(4096), ct);
            assert!(!is_compressed(&s.encode(1)), "{ct}");
        }
        assert!(is_compressed(
            &with_body(text(4096), "image/svg+xml").encode(1)
        ));
        let mut s = with_body(text(4096), "text/plain");
        if let Kind::Response(r) = &mut s.kind {
            r.headers.push((
                http::header::CONTENT_ENCODING,
                HeaderValue::from_static("gzip"),
            ));
        }
        assert!(!is_compressed(&s.encode(1)), "content-encoding");
        // Random bytes do not shrink (beyond the record's zero padding): stored as
        // they are.
        let mut x = 0x1234_5678_9abc_def0u64;
        let noise: Vec<u8> = (0..4096)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        let s = with_body(noise, "text/plain");
        let enc = s.encode(1);
        assert!(!is_compressed(&enc));
        assert_eq!(Stored::decode(Bytes::from(enc)), Some(s));
    }

    /// Re-seals a damaged value with a valid checksum, so the decoder itself must
    /// reject it.
    fn reseal(mut v: Vec<u8>) -> Bytes {
        v.truncate(v.len() - CHECKSUM_LEN);
        let sum = checksum(&v);
        v.extend_from_slice(&sum);
        Bytes::from(v)
    }

    #[test]
    fn corrupt_compressed_values_are_rejected() {
        let packed = with_body(text(8192), "text/plain").encode(1);
        assert!(is_compressed(&packed));
        // Checksum catches a flipped bit.
        let mut bad = packed.clone();
        bad[HEADER_LEN + 10] ^= 0x40;
        assert!(Stored::decode(Bytes::from(bad.clone())).is_none());
        // Sealed again: the LZ4 block or the record inside must fail.
        assert!(Stored::decode(reseal(bad)).is_none());
        // A claimed length the block cannot produce, or an absurd one.
        for len in [1u32, 8191, u32::MAX] {
            let mut bad = packed.clone();
            bad[HEADER_LEN..HEADER_LEN + 4].copy_from_slice(&len.to_be_bytes());
            assert!(Stored::decode(reseal(bad)).is_none(), "len {len}");
        }
        // Truncated block.
        let mut bad = packed.clone();
        bad.drain(HEADER_LEN + 20..HEADER_LEN + 30);
        assert!(Stored::decode(reseal(bad)).is_none());
        // Version 1 values (before the compression flag) are misses.
        let mut old = with_body(text(64), "text/plain").encode(0);
        old[MAGIC.len()] = 1;
        assert!(Stored::decode(reseal(old)).is_none());
    }

    #[test]
    fn hit_headers_are_rebuilt_when_age_or_ttl_changes() {
        let kept = HitHeaders::default();
        let builds = std::cell::Cell::new(0);
        let at = |age: u64, ttl: i64| {
            kept.get_or_build(age, ttl, || {
                builds.set(builds.get() + 1);
                let mut h = HeaderMap::new();
                h.insert(http::header::AGE, HeaderValue::from(age));
                h
            })
        };
        assert_eq!(at(0, 30)[http::header::AGE], "0");
        assert_eq!(at(0, 30)[http::header::AGE], "0");
        at(0, 29);
        assert_eq!(at(1, 29)[http::header::AGE], "1");
        assert_eq!(
            builds.get(),
            3,
            "one build per (age, ttl), reused in between"
        );
        assert!(
            kept.clone().0.read().unwrap().is_none(),
            "a copy starts empty"
        );
    }
}
