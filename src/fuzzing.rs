//! Thin entry points to the parsers that read client (or stored) input, for the fuzz
//! targets in `fuzz/` and the direct property tests in `tests/proptest_*.rs`.
//!
//! **Not public API.** Built only with the non-default `fuzzing` feature, hidden from
//! the docs, and free to change in any release. Every function here calls the
//! crate-private parser the stack itself uses, unchanged: a wrapper only converts
//! its input or output to public types, so what is fuzzed is what runs.
//!
//! The parsers already public elsewhere are fuzzed directly:
//! [`parse_forwarded`](crate::client_ip::parse_forwarded),
//! [`parse_node`](crate::client_ip::parse_node),
//! [`TrustedProxies::resolve`](crate::client_ip::TrustedProxies::resolve) and
//! [`is_safe_id`](crate::request_id::is_safe_id).

#[cfg(feature = "cache")]
use http::HeaderValue;
#[cfg(any(feature = "cache", feature = "api-key", feature = "jwt"))]
use http::{HeaderMap, HeaderName};

// ---------------------------------------------------------------- Host and authority

/// The strict `Host` parser of the host check: the normalised host (lower case, no
/// trailing dot, IPv6 bracketed) and port, or why the value was refused.
#[cfg(feature = "https")]
pub fn parse_host(raw: &str) -> Result<(String, Option<u16>), &'static str> {
    crate::https::fuzz_access::host(raw)
}

/// The cache's host validation (the host that goes into a cache key).
#[cfg(feature = "cache")]
pub fn cache_host(raw: &[u8]) -> Option<String> {
    crate::cache::fuzz_access::validate_host(raw).map(std::borrow::Cow::into_owned)
}

// ---------------------------------------------------------------- cache keys

/// The query as it goes into a cache key: parameters sorted, the `ignore`d ones
/// dropped.
#[cfg(feature = "cache")]
pub fn normalise_query(query: Option<&str>, ignore: &[String]) -> String {
    crate::cache::fuzz_access::normalise_query(query, ignore)
}

/// A cache key from its parts, each length-prefixed before hashing.
#[cfg(feature = "cache")]
pub fn cache_key(parts: &[&[u8]]) -> [u8; 32] {
    let mut b = crate::cache::fuzz_access::KeyBuilder::new();
    for p in parts {
        b.part(p);
    }
    b.finish()
}

// ---------------------------------------------------------------- Cache-Control, Vary

/// The `Cache-Control` directives a shared cache acts on.
#[cfg(feature = "cache")]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheDirectives {
    /// `no-store` (also set for a field that is not visible ASCII).
    pub no_store: bool,
    /// `no-cache`.
    pub no_cache: bool,
    /// `private`.
    pub private: bool,
    /// `public`.
    pub public: bool,
    /// The smallest `max-age` (a malformed one counts as 0).
    pub max_age: Option<u64>,
    /// The smallest `s-maxage` (a malformed one counts as 0).
    pub s_maxage: Option<u64>,
}

/// Parses `Cache-Control` field lines as the cache does.
#[cfg(feature = "cache")]
pub fn cache_control(values: &[HeaderValue]) -> CacheDirectives {
    let d = crate::cache::fuzz_access::ResponseDirectives::parse(&header_map(
        http::header::CACHE_CONTROL,
        values,
    ));
    CacheDirectives {
        no_store: d.no_store,
        no_cache: d.no_cache,
        private: d.private,
        public: d.public,
        max_age: d.max_age,
        s_maxage: d.s_maxage,
    }
}

/// Parses `Vary` field lines: the names, sorted and de-duplicated; `Err` for `*`
/// or a name that is not a field name.
#[cfg(feature = "cache")]
#[allow(clippy::result_unit_err)]
pub fn vary_names(values: &[HeaderValue]) -> Result<Vec<HeaderName>, ()> {
    crate::cache::fuzz_access::vary_names(&header_map(http::header::VARY, values))
}

#[cfg(feature = "cache")]
fn header_map(name: HeaderName, values: &[HeaderValue]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for v in values {
        h.append(name.clone(), v.clone());
    }
    h
}

// ---------------------------------------------------------------- credentials

/// The token of `Authorization: Bearer <token>`: `Ok(None)` for no header or
/// another scheme, `Err` for a malformed or repeated header.
#[cfg(any(feature = "api-key", feature = "jwt"))]
#[allow(clippy::result_unit_err)]
pub fn bearer_token(headers: &HeaderMap) -> Result<Option<&str>, ()> {
    crate::auth::fuzz_access::bearer(headers)
}

/// The value of the API-key header `name`: `Err` when repeated, empty or not
/// visible ASCII.
#[cfg(any(feature = "api-key", feature = "jwt"))]
#[allow(clippy::result_unit_err)]
pub fn api_key<'a>(headers: &'a HeaderMap, name: &HeaderName) -> Result<Option<&'a str>, ()> {
    crate::auth::fuzz_access::api_key(headers, name)
}

/// A JWT verifier pinned to HS256 with a fixed secret and a fixed clock: the full
/// verification path (size, segments, header, algorithm, signature, claims).
#[cfg(feature = "jwt")]
#[derive(Debug)]
pub struct Hs256Verifier {
    verifier: crate::auth::fuzz_access::JwtVerifier,
    clock: crate::auth::Clock,
}

#[cfg(feature = "jwt")]
impl Hs256Verifier {
    /// A verifier for `secret` (at least 32 bytes), expecting issuer `issuer`, at
    /// the fixed time `now` (seconds since the epoch).
    ///
    /// # Panics
    /// When `secret` is shorter than 32 bytes.
    pub fn new(secret: &[u8], issuer: &str, now: u64) -> Self {
        let cfg = crate::config::auth::JwtConfig {
            algorithms: vec!["HS256".to_owned()],
            issuer: Some(issuer.to_owned()),
            ..Default::default()
        };
        let verifier = match crate::auth::fuzz_access::JwtVerifier::from_config(&cfg, Some(secret))
        {
            Ok(v) => v,
            Err(e) => panic!("fuzzing verifier: {e}"),
        };
        Self {
            verifier,
            clock: crate::auth::Clock::from_fn(move || now),
        }
    }

    /// The verified token's subject, or why it was refused.
    pub fn verify(&self, token: &str) -> Result<String, &'static str> {
        use crate::auth::fuzz_access::JwtError;
        // No JWKS: verification never waits, so one poll completes it.
        let fut = std::pin::pin!(self.verifier.verify(token, &self.clock));
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        match fut.poll(&mut cx) {
            std::task::Poll::Ready(Ok(v)) => Ok(v.subject.to_string()),
            std::task::Poll::Ready(Err(JwtError::Invalid(reason))) => Err(reason),
            std::task::Poll::Ready(Err(JwtError::Expired)) => Err("expired"),
            std::task::Poll::Ready(Err(JwtError::Unavailable)) => Err("unavailable"),
            std::task::Poll::Pending => Err("pending"),
        }
    }
}

// ---------------------------------------------------------------- cached entries

/// A cached entry in public types (the crate-private record, field for field).
#[cfg(feature = "cache")]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Invalidation generation of the resource when the fill began.
    pub generation: u64,
    /// When it was stored (ms since the epoch).
    pub stored_at_ms: u64,
    /// End of freshness.
    pub fresh_until_ms: u64,
    /// End of the stale-while-revalidate window.
    pub swr_until_ms: u64,
    /// End of the stale-if-error window.
    pub sie_until_ms: u64,
    /// Tags and their generations.
    pub tags: Vec<(String, u64)>,
    /// A response or a variant index.
    pub kind: EntryKind,
}

/// What an [`Entry`] holds.
#[cfg(feature = "cache")]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryKind {
    /// A stored response.
    Response {
        /// Status code.
        status: u16,
        /// Header fields, in order.
        headers: Vec<(HeaderName, HeaderValue)>,
        /// The entity tag.
        etag: HeaderValue,
        /// The body.
        body: Vec<u8>,
        /// Stored from a `Cache-Control: public` response.
        public: bool,
    },
    /// The names of the request headers the resource varies on.
    Variants(Vec<HeaderName>),
}

/// Encodes `entry` as the Redis backend stores it; `None` for a status code that
/// is not one (100..=999).
#[cfg(feature = "cache")]
pub fn encode_entry(entry: &Entry) -> Option<Vec<u8>> {
    encode_entry_with(entry, 0)
}

/// Encodes `entry` as the Redis backend does with `compress_min_bytes =
/// compress_min` (0: never compressed).
#[cfg(feature = "cache")]
pub fn encode_entry_with(entry: &Entry, compress_min: usize) -> Option<Vec<u8>> {
    use crate::cache::fuzz_access::{Kind, ResponseData, Stored};
    let kind = match &entry.kind {
        EntryKind::Variants(names) => Kind::Variants(names.clone()),
        EntryKind::Response {
            status,
            headers,
            etag,
            body,
            public,
        } => Kind::Response(ResponseData {
            status: http::StatusCode::from_u16(*status).ok()?,
            headers: headers.clone(),
            etag: etag.clone(),
            body: bytes::Bytes::copy_from_slice(body),
            public: *public,
            hit_headers: Default::default(),
        }),
    };
    Some(
        Stored {
            gen_: entry.generation,
            stored_at_ms: entry.stored_at_ms,
            fresh_until_ms: entry.fresh_until_ms,
            swr_until_ms: entry.swr_until_ms,
            sie_until_ms: entry.sie_until_ms,
            tags: entry.tags.clone(),
            kind,
        }
        .encode(compress_min),
    )
}

/// Decodes a stored value as the Redis backend does; `None` for anything that is
/// not an intact entry.
#[cfg(feature = "cache")]
pub fn decode_entry(bytes: &[u8]) -> Option<Entry> {
    use crate::cache::fuzz_access::{Kind, Stored};
    let s = Stored::decode(bytes::Bytes::copy_from_slice(bytes))?;
    let kind = match s.kind {
        Kind::Variants(names) => EntryKind::Variants(names),
        Kind::Response(r) => EntryKind::Response {
            status: r.status.as_u16(),
            headers: r.headers,
            etag: r.etag,
            body: r.body.to_vec(),
            public: r.public,
        },
    };
    Some(Entry {
        generation: s.gen_,
        stored_at_ms: s.stored_at_ms,
        fresh_until_ms: s.fresh_until_ms,
        swr_until_ms: s.swr_until_ms,
        sie_until_ms: s.sie_until_ms,
        tags: s.tags,
        kind,
    })
}

/// Length of the checksum that closes an encoded entry.
#[cfg(feature = "cache")]
pub const ENTRY_CHECKSUM_LEN: usize = 8;

/// `payload` closed with a valid checksum, so a fuzzer's bytes get past the
/// integrity check into the structure parser (random bytes never would). Kept in
/// step with the encoder by the property test `sealed_payload_of_an_encoded_entry_decodes`.
#[cfg(feature = "cache")]
pub fn seal_entry(payload: &[u8]) -> Vec<u8> {
    let mut out = payload.to_vec();
    out.extend_from_slice(&crate::cache::fuzz_access::checksum(payload));
    out
}
