//! `'static` copies of header names and values built from configuration.
//!
//! A `HeaderName` or `HeaderValue` parsed at run time shares its bytes through a
//! reference count: every clone into a response and every drop is a locked instruction
//! (and the first clone allocates the shared count). One made from a `'static` string
//! clones and drops without touching memory, and the layers clone their configured
//! names and values into every response. Interning bounds what is leaked by the
//! distinct texts a process ever builds: a config reload with the same values adds
//! nothing.

use std::collections::HashSet;
use std::sync::{LazyLock, Mutex};

use http::{HeaderName, HeaderValue};

/// A `'static` copy of `s`, shared by every layer built with the same text.
pub(crate) fn intern(s: &str) -> &'static str {
    static INTERNED: LazyLock<Mutex<HashSet<&'static str>>> = LazyLock::new(Default::default);
    let mut set = INTERNED.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(&existing) = set.get(s) {
        return existing;
    }
    let leaked: &'static str = Box::leak(s.to_owned().into_boxed_str());
    set.insert(leaked);
    leaked
}

/// `name` with `'static` bytes (a standard name stays the enum it already is).
#[cfg_attr(
    not(any(feature = "request-id", feature = "security-headers")),
    allow(dead_code)
)]
pub(crate) fn static_name(name: &HeaderName) -> HeaderName {
    // `as_str` of a parsed name is lowercase and valid: `from_static` cannot panic.
    HeaderName::from_static(intern(name.as_str()))
}

/// `value` with `'static` bytes when it is visible ASCII (what `from_static` takes);
/// otherwise, and for a sensitive value (kept out of the interned set), unchanged.
#[cfg_attr(not(feature = "security-headers"), allow(dead_code))]
pub(crate) fn static_value(value: &HeaderValue) -> HeaderValue {
    if value.is_sensitive() {
        return value.clone();
    }
    match value.to_str() {
        Ok(s) => HeaderValue::from_static(intern(s)),
        Err(_) => value.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interned_text_is_shared_and_equal() {
        let a = intern("\"per-ip\";q=100;w=1");
        let b = intern(&String::from("\"per-ip\";q=100;w=1"));
        assert_eq!(a, b);
        assert!(std::ptr::eq(a, b), "one leak per distinct text");
    }

    #[test]
    fn names_and_values_keep_their_text() {
        let name = HeaderName::from_bytes(b"X-Custom-Header").unwrap();
        assert_eq!(static_name(&name), name);
        assert_eq!(static_name(&http::header::SERVER), http::header::SERVER);
        let value = HeaderValue::from_str("default-src 'self'").unwrap();
        assert_eq!(static_value(&value), value);
        // Not visible ASCII: `from_static` would panic, so the value is kept as it is.
        let opaque = HeaderValue::from_bytes(b"caf\xe9").unwrap();
        assert_eq!(static_value(&opaque), opaque);
        let mut secret = HeaderValue::from_static("token");
        secret.set_sensitive(true);
        assert!(static_value(&secret).is_sensitive());
    }
}
