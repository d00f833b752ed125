//! Stored entries and their binary encoding.
//!
//! One Redis value holds one entry: a magic and format version, the timestamps,
//! the invalidation generations it was built under, then either a response (status,
//! headers as raw bytes, ETag, body) or a variant index (the response's `Vary`
//! names). A truncated checksum closes it: a corrupt or foreign value decodes to
//! `None` and is treated as a miss.

// The binary encoding is only used by the Redis backend (and its tests).
#![cfg_attr(not(feature = "redis"), allow(dead_code))]

use bytes::{BufMut, Bytes, BytesMut};
use http::{HeaderName, HeaderValue, StatusCode};

const MAGIC: &[u8; 3] = b"PLC";
const VERSION: u8 = 1;
const FLAG_PUBLIC: u8 = 1;
const FLAG_VARIANTS: u8 = 2;
const CHECKSUM_LEN: usize = 8;

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
            }
            Kind::Variants(names) => names.len() * 32,
        };
        let tags: usize = self.tags.iter().map(|(t, _)| t.len() + 32).sum();
        (kind + tags + 160) as u64
    }

    pub(crate) fn encode(&self) -> Vec<u8> {
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
        let sum = blake3::hash(&out);
        out.put_slice(&sum.as_bytes()[..CHECKSUM_LEN]);
        out.to_vec()
    }

    /// Decodes a value; `None` for anything that is not an intact entry of this
    /// format version.
    pub(crate) fn decode(bytes: Bytes) -> Option<Self> {
        if bytes.len() < MAGIC.len() + 2 + CHECKSUM_LEN {
            return None;
        }
        let (payload, sum) = bytes.split_at(bytes.len() - CHECKSUM_LEN);
        if blake3::hash(payload).as_bytes()[..CHECKSUM_LEN] != *sum {
            return None;
        }
        let payload = bytes.slice(..bytes.len() - CHECKSUM_LEN);
        let mut r = Reader {
            buf: payload,
            pos: 0,
        };
        if r.take(3)? != MAGIC[..] || r.u8()? != VERSION {
            return None;
        }
        let flags = r.u8()?;
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
    fn u8(&mut self) -> Option<u8> {
        Some(self.array::<1>()?[0])
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
            }),
        }
    }

    #[test]
    fn round_trips() {
        let s = sample();
        assert_eq!(Stored::decode(Bytes::from(s.encode())), Some(s));
        let v = Stored {
            kind: Kind::Variants(vec![HeaderName::from_static("accept-language")]),
            ..sample()
        };
        assert_eq!(Stored::decode(Bytes::from(v.encode())), Some(v));
        assert_eq!(sample().expires_at_ms(), 71_000);
    }

    #[test]
    fn corrupt_or_foreign_values_are_rejected() {
        let good = sample().encode();
        for i in [0, 3, 10, good.len() / 2, good.len() - 1] {
            let mut bad = good.clone();
            bad[i] ^= 0x01;
            assert!(Stored::decode(Bytes::from(bad)).is_none(), "flip at {i}");
        }
        assert!(Stored::decode(Bytes::from(good[..good.len() - 3].to_vec())).is_none());
        assert!(Stored::decode(Bytes::from_static(b"garbage")).is_none());
        assert!(Stored::decode(Bytes::new()).is_none());
    }
}
