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

pub(crate) struct KeyBuilder(blake3::Hasher);

impl KeyBuilder {
    pub(crate) fn new() -> Self {
        let mut h = blake3::Hasher::new();
        h.update(b"palisade-cache-");
        h.update(FORMAT_VERSION.as_bytes());
        Self(h)
    }

    pub(crate) fn part(&mut self, bytes: &[u8]) -> &mut Self {
        self.0.update(&(bytes.len() as u64).to_le_bytes());
        self.0.update(bytes);
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
        self.0.update(&n.to_le_bytes());
        self
    }

    pub(crate) fn finish(&self) -> [u8; 32] {
        *self.0.finalize().as_bytes()
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
pub(crate) fn validate_host(raw: &[u8]) -> Option<String> {
    if raw.is_empty() || raw.len() > 255 {
        return None;
    }
    let ok = raw
        .iter()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'-' | b':' | b'[' | b']' | b'_'));
    if !ok {
        return None;
    }
    let s = std::str::from_utf8(raw).ok()?;
    Some(s.to_ascii_lowercase())
}

/// Lower-case hex.
pub(crate) fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    push_hex(&mut s, bytes);
    s
}

/// Appends `bytes` in lower-case hex (the hot path builds Redis keys with it).
pub(crate) fn push_hex(out: &mut String, bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    out.reserve(bytes.len() * 2);
    for b in bytes {
        out.push(DIGITS[(b >> 4) as usize] as char);
        out.push(DIGITS[(b & 15) as usize] as char);
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
