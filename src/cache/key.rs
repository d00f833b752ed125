//! Cache keys: every input that can change a response, hashed to a fixed size.
//!
//! Components are length-prefixed before hashing, so no value can forge a
//! delimiter and collide with another key. Only validated inputs are used: the
//! scheme from [`client_info`](crate::client_ip::client_info) (forwarding headers only
//! from trusted proxies), the `Host` the request was routed by, the raw path, the
//! normalised query, the rule's `vary` headers and the identity when configured.
//!
//! The hash is BLAKE3 in keyed mode, under a key derived once from a context string
//! (domain separation that costs nothing per request), and each length is a LEB128
//! varint (one byte below 128): a typical key then fits one 64-byte BLAKE3 block,
//! where a fixed eight-byte length per part and the context string hashed as input
//! took two. A hit derives two keys (the entry's and its group's).

use std::sync::LazyLock;

use http::{HeaderMap, HeaderName};

/// Bumped whenever the key derivation or the entry format changes.
pub(crate) const FORMAT_VERSION: &str = "v2";

/// The context of the key derivation (BLAKE3 `derive_key`): palisade's cache keys
/// cannot equal any other BLAKE3 digest of the same bytes.
const CONTEXT: &str = "palisade 2026-11-24 response cache key";

/// The BLAKE3 key every cache key is hashed under, derived once from [`CONTEXT`] and
/// [`FORMAT_VERSION`] (a new format hashes every key differently, in memory too).
static HASH_KEY: LazyLock<[u8; 32]> =
    LazyLock::new(|| blake3::derive_key(CONTEXT, FORMAT_VERSION.as_bytes()));

/// A derived key: the path group (host + path, for invalidation) and the full key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct Key {
    /// Identifies host + path: every variant of one resource shares it.
    pub(crate) group: [u8; 16],
    /// The full key of one stored response.
    pub(crate) full: [u8; 32],
}

/// Feeds the key's components to BLAKE3. Keys are short, so the components are
/// gathered in a stack buffer and hashed in one call (one call per component cost
/// more than the hashing); a key that outgrows the buffer streams the rest. The
/// digest is the same either way: keyed BLAKE3 of the concatenated bytes.
pub(crate) struct KeyBuilder {
    buf: [u8; KEY_BUF],
    len: usize,
    spill: Option<blake3::Hasher>,
}

/// Room for a typical key; longer keys stream (same digest).
const KEY_BUF: usize = 256;

impl KeyBuilder {
    #[inline(always)]
    pub(crate) fn new() -> Self {
        Self {
            buf: [0; KEY_BUF],
            len: 0,
            spill: None,
        }
    }

    fn feed(&mut self, bytes: &[u8]) {
        if let Some(h) = &mut self.spill {
            h.update(bytes);
        } else if let Some(dst) = self.buf.get_mut(self.len..self.len + bytes.len()) {
            dst.copy_from_slice(bytes);
            self.len += bytes.len();
        } else {
            let mut h = blake3::Hasher::new_keyed(&HASH_KEY);
            h.update(&self.buf[..self.len]);
            h.update(bytes);
            self.spill = Some(h);
        }
    }

    /// Appends `n` as a LEB128 varint: seven bits a byte, low bits first, the high
    /// bit set on every byte but the last (a prefix-free code, so the concatenation of
    /// length-prefixed parts still decodes one way only).
    fn feed_len(&mut self, mut n: u64) {
        // Nearly every length is one byte: store it without a `memcpy` call.
        if n < 0x80
            && self.spill.is_none()
            && let Some(b) = self.buf.get_mut(self.len)
        {
            *b = n as u8;
            self.len += 1;
            return;
        }
        let mut out = [0u8; 10];
        let mut i = 0;
        while n >= 0x80 {
            out[i] = (n as u8) | 0x80;
            n >>= 7;
            i += 1;
        }
        out[i] = n as u8;
        self.feed(&out[..=i]);
    }

    pub(crate) fn part(&mut self, bytes: &[u8]) -> &mut Self {
        self.feed_len(bytes.len() as u64);
        self.feed(bytes);
        self
    }

    /// Every value of `name`, in order (absent and empty are distinct).
    pub(crate) fn header(&mut self, headers: &HeaderMap, name: &HeaderName) -> &mut Self {
        self.part(name.as_str().as_bytes());
        let mut n = 0u64;
        for v in headers.get_all(name) {
            n += 1;
            self.part(trim(v.as_bytes()));
        }
        self.feed_len(n);
        self
    }

    pub(crate) fn finish(&self) -> [u8; 32] {
        match &self.spill {
            Some(h) => *h.finalize().as_bytes(),
            None => *blake3::keyed_hash(&HASH_KEY, &self.buf[..self.len]).as_bytes(),
        }
    }
}

fn trim(b: &[u8]) -> &[u8] {
    let start = b
        .iter()
        .position(|c| !c.is_ascii_whitespace())
        .unwrap_or(b.len());
    let end = b
        .iter()
        .rposition(|c| !c.is_ascii_whitespace())
        .map_or(start, |e| e + 1);
    &b[start..end]
}

/// The group of a resource: the host and the path. Unsafe requests invalidate it.
pub(crate) fn group(host: &str, path: &str) -> [u8; 16] {
    let mut b = KeyBuilder::new();
    b.part(b"group").part(host.as_bytes()).part(path.as_bytes());
    let full = b.finish();
    let mut g = [0u8; 16];
    g.copy_from_slice(&full[..16]);
    g
}

/// Sorts the query's parameters and drops the ignored ones, so `?b=2&a=1` and
/// `?a=1&b=2&utm_source=x` share one entry. Values are kept byte for byte.
pub(crate) fn normalise_query(query: Option<&str>, ignore: &[String]) -> String {
    let Some(q) = query else {
        return String::new();
    };
    let mut params: Vec<&str> = q
        .split('&')
        .filter(|p| !p.is_empty())
        .filter(|p| {
            let name = p.split_once('=').map_or(*p, |(n, _)| n);
            !ignore.iter().any(|i| i == name)
        })
        .collect();
    params.sort_unstable();
    params.join("&")
}

/// A validated, lower-cased host (with optional port), or `None` when the value
/// holds anything a host cannot (such a request is not cached).
/// Borrowed when it is lower-case already, as it nearly always is.
pub(crate) fn validate_host(raw: &[u8]) -> Option<std::borrow::Cow<'_, str>> {
    /// Per byte: 0 not allowed in a host, `OK`, or `OK | UPPER`.
    const OK: u8 = 1;
    const UPPER: u8 = 2;
    const CLASS: [u8; 256] = {
        let mut t = [0u8; 256];
        let mut c = 0;
        while c < 256 {
            let b = c as u8;
            t[c] = if b.is_ascii_uppercase() {
                OK | UPPER
            } else if b.is_ascii_alphanumeric()
                || matches!(b, b'.' | b'-' | b':' | b'[' | b']' | b'_')
            {
                OK
            } else {
                0
            };
            c += 1;
        }
        t
    };
    if raw.is_empty() || raw.len() > 255 {
        return None;
    }
    // One table look-up a byte: whether it may appear, and whether it is upper case.
    let (mut all, mut any) = (OK, 0);
    for &c in raw {
        let class = CLASS[usize::from(c)];
        all &= class;
        any |= class;
    }
    if all == 0 {
        return None;
    }
    // Only ASCII passed the check above.
    let s = std::str::from_utf8(raw).ok()?;
    Some(if any & UPPER != 0 {
        std::borrow::Cow::Owned(s.to_ascii_lowercase())
    } else {
        std::borrow::Cow::Borrowed(s)
    })
}

/// Lower-case hex.
pub(crate) fn hex(bytes: &[u8]) -> String {
    let mut s = vec![0; bytes.len() * 2];
    hex_into(&mut s, bytes);
    // Only ASCII digits were written.
    String::from_utf8(s).unwrap_or_default()
}

/// Writes `bytes` in lower-case hex to the start of `dst` (at least twice as long):
/// two digits per table look-up, no length check or growth per digit.
pub(crate) fn hex_into(dst: &mut [u8], bytes: &[u8]) {
    const PAIRS: [[u8; 2]; 256] = {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let mut t = [[0u8; 2]; 256];
        let mut i = 0;
        while i < 256 {
            t[i] = [DIGITS[i >> 4], DIGITS[i & 15]];
            i += 1;
        }
        t
    };
    for (pair, &b) in dst.chunks_exact_mut(2).zip(bytes) {
        pair.copy_from_slice(&PAIRS[usize::from(b)]);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn query_is_sorted_and_filtered() {
        let ignore = vec!["utm_source".to_string()];
        assert_eq!(normalise_query(Some("b=2&a=1"), &ignore), "a=1&b=2");
        assert_eq!(
            normalise_query(Some("a=1&utm_source=x&&b=2"), &ignore),
            "a=1&b=2"
        );
        assert_eq!(normalise_query(None, &ignore), "");
        assert_ne!(
            normalise_query(Some("a=1"), &[]),
            normalise_query(Some("a=2"), &[])
        );
    }

    /// Keyed BLAKE3 of `parts`, each after its LEB128 length, written out longhand.
    fn reference(parts: &[&[u8]]) -> [u8; 32] {
        let mut h = blake3::Hasher::new_keyed(&blake3::derive_key(CONTEXT, b"v2"));
        for part in parts {
            let mut n = part.len();
            loop {
                let low = (n & 0x7f) as u8;
                n >>= 7;
                if n == 0 {
                    h.update(&[low]);
                    break;
                }
                h.update(&[low | 0x80]);
            }
            h.update(part);
        }
        *h.finalize().as_bytes()
    }

    #[test]
    fn keys_are_keyed_blake3_of_length_prefixed_parts() {
        // Lengths on both sides of each varint byte boundary, a key that fills the stack
        // buffer exactly before the next length (250: 4 + 2 + 250 bytes), and keys past
        // it (the builder streams them): the digest is the same function throughout.
        for len in [
            0,
            1,
            127,
            128,
            129,
            250,
            300,
            KEY_BUF,
            16_383,
            16_384,
            3 * KEY_BUF,
        ] {
            let long = vec![b'q'; len];
            let parts: [&[u8]; 3] = [b"GET", &long, b"tail"];
            let mut b = KeyBuilder::new();
            for p in parts {
                b.part(p);
            }
            assert_eq!(b.finish(), reference(&parts), "part of {len} bytes");
        }
        assert_eq!(
            KeyBuilder::new().part(b"GET").finish(),
            reference(&[b"GET"])
        );
    }

    #[test]
    fn typical_keys_fit_one_blake3_block() {
        // What a hit hashes twice; more than 64 bytes costs a second compression.
        let mut b = KeyBuilder::new();
        b.part(b"GET")
            .part(b"https")
            .part(b"api.example.com")
            .part(b"/v1/products/12345")
            .part(b"")
            .part(b"");
        assert!(b.len <= 64, "{} bytes", b.len);
        let mut g = KeyBuilder::new();
        g.part(b"group")
            .part(b"api.example.com")
            .part(b"/v1/products/12345");
        assert!(g.len <= 64, "{} bytes", g.len);
    }

    #[test]
    fn hex_is_lower_case() {
        assert_eq!(hex(&[0x00, 0x9f, 0xa0, 0xff]), "009fa0ff");
    }

    #[test]
    fn parts_cannot_collide_by_concatenation() {
        let a = KeyBuilder::new().part(b"ab").part(b"c").finish();
        let b = KeyBuilder::new().part(b"a").part(b"bc").finish();
        assert_ne!(a, b);
        assert_ne!(
            KeyBuilder::new().part(b"").finish(),
            KeyBuilder::new().finish()
        );
    }

    #[test]
    fn header_absent_differs_from_empty() {
        let name = HeaderName::from_static("accept-language");
        let empty = HeaderMap::new();
        let mut blank = HeaderMap::new();
        blank.insert(&name, HeaderValue::from_static(""));
        let mut de = HeaderMap::new();
        de.insert(&name, HeaderValue::from_static(" de "));
        let mut de2 = HeaderMap::new();
        de2.insert(&name, HeaderValue::from_static("de"));
        let k = |h: &HeaderMap| KeyBuilder::new().header(h, &name).finish();
        assert_ne!(k(&empty), k(&blank));
        assert_ne!(k(&blank), k(&de));
        assert_eq!(k(&de), k(&de2), "surrounding whitespace is not significant");
    }

    #[test]
    fn hosts_are_validated() {
        assert_eq!(
            validate_host(b"Example.COM:8080").as_deref(),
            Some("example.com:8080")
        );
        assert_eq!(validate_host(b"[::1]:80").as_deref(), Some("[::1]:80"));
        assert!(validate_host(b"evil.com/x").is_none());
        assert!(validate_host(b"a b").is_none());
        assert!(validate_host(b"").is_none());
        // Every byte value, alone and after valid text: allowed exactly when the
        // rule written out says so, and lower-cased.
        for c in 0..=255u8 {
            let allowed = c.is_ascii_alphanumeric() || b".-:[]_".contains(&c);
            for raw in [vec![c], vec![b'a', c, b'b']] {
                let got = validate_host(&raw);
                assert_eq!(got.is_some(), allowed, "byte {c:#04x}");
                if let Some(host) = got {
                    assert_eq!(host.as_bytes(), raw.to_ascii_lowercase().as_slice());
                    let borrowed = matches!(host, std::borrow::Cow::Borrowed(_));
                    assert_eq!(borrowed, !c.is_ascii_uppercase(), "byte {c:#04x}");
                }
            }
        }
        assert!(validate_host(&[b'a'; 256]).is_none());
        assert!(validate_host(&[b'a'; 255]).is_some());
    }
}
