//! Cache keys: every input that can change a response, hashed to a fixed size.
//!
//! Components are length-prefixed before hashing, so no value can forge a
//! delimiter and collide with another key. Only validated inputs are used: the
//! scheme from [`client_info`](crate::client_ip::client_info) (forwarding headers only
//! from trusted proxies), the `Host` the request was routed by, the raw path, the
//! normalised query, the rule's `vary` headers and the identity when configured.

use http::{HeaderMap, HeaderName};

/// Bumped whenever the key derivation or the entry format changes.
pub(crate) const FORMAT_VERSION: &str = "v1";

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
/// digest is the same either way: BLAKE3 of the concatenated bytes.
pub(crate) struct KeyBuilder {
    buf: [u8; KEY_BUF],
    len: usize,
    spill: Option<blake3::Hasher>,
}

const KEY_BUF: usize = 512;

impl KeyBuilder {
    #[inline(always)]
    pub(crate) fn new() -> Self {
        let mut b = Self {
            buf: [0; KEY_BUF],
            len: 0,
            spill: None,
        };
        b.feed(b"palisade-cache-");
        b.feed(FORMAT_VERSION.as_bytes());
        b
    }

    fn feed(&mut self, bytes: &[u8]) {
        if let Some(h) = &mut self.spill {
            h.update(bytes);
        } else if let Some(dst) = self.buf.get_mut(self.len..self.len + bytes.len()) {
            dst.copy_from_slice(bytes);
            self.len += bytes.len();
        } else {
            let mut h = blake3::Hasher::new();
            h.update(&self.buf[..self.len]);
            h.update(bytes);
            self.spill = Some(h);
        }
    }

    pub(crate) fn part(&mut self, bytes: &[u8]) -> &mut Self {
        self.feed(&(bytes.len() as u64).to_le_bytes());
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
        self.feed(&n.to_le_bytes());
        self
    }

    pub(crate) fn finish(&self) -> [u8; 32] {
        match &self.spill {
            Some(h) => *h.finalize().as_bytes(),
            None => *blake3::hash(&self.buf[..self.len]).as_bytes(),
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
    if raw.is_empty() || raw.len() > 255 {
        return None;
    }
    let ok = raw
        .iter()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'-' | b':' | b'[' | b']' | b'_'));
    if !ok {
        return None;
    }
    // Only ASCII passed the check above.
    let s = std::str::from_utf8(raw).ok()?;
    Some(if raw.iter().any(u8::is_ascii_uppercase) {
        std::borrow::Cow::Owned(s.to_ascii_lowercase())
    } else {
        std::borrow::Cow::Borrowed(s)
    })
}

/// Lower-case hex.
pub(crate) fn hex(bytes: &[u8]) -> String {
    let mut s = Vec::with_capacity(bytes.len() * 2);
    push_hex(&mut s, bytes);
    // Only ASCII digits were pushed.
    String::from_utf8(s).unwrap_or_default()
}

/// Appends `bytes` in lower-case hex (the hot path builds Redis keys with it: Redis
/// keys are bytes, so no UTF-8 bookkeeping per digit; two digits per table look-up).
pub(crate) fn push_hex(out: &mut Vec<u8>, bytes: &[u8]) {
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
    out.reserve(bytes.len() * 2);
    for &b in bytes {
        out.extend_from_slice(&PAIRS[usize::from(b)]);
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

    #[test]
    fn long_keys_hash_like_short_ones() {
        // Past the stack buffer the builder streams: the digest must still be BLAKE3
        // of every component, in order.
        let long = vec![b'q'; 3 * KEY_BUF];
        let mut expected = blake3::Hasher::new();
        expected.update(b"palisade-cache-");
        expected.update(FORMAT_VERSION.as_bytes());
        for part in [&b"GET"[..], &long, b"tail"] {
            expected.update(&(part.len() as u64).to_le_bytes());
            expected.update(part);
        }
        let got = KeyBuilder::new()
            .part(b"GET")
            .part(&long)
            .part(b"tail")
            .finish();
        assert_eq!(got, *expected.finalize().as_bytes());
        let short = KeyBuilder::new().part(b"GET").finish();
        let mut expected = blake3::Hasher::new();
        expected.update(b"palisade-cache-v1");
        expected.update(&3u64.to_le_bytes());
        expected.update(b"GET");
        assert_eq!(short, *expected.finalize().as_bytes());
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
    }
}
