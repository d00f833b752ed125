//! `Cache-Control` and `Vary` as the cache reads them: never a panic; a field that
//! is not visible ASCII means `no-store`; `Vary` names come out sorted, unique and
//! lower-case, and `*` is never a name.
#![no_main]

use http::HeaderValue;
use libfuzzer_sys::fuzz_target;
use palisade::fuzzing::{cache_control, vary_names};

fuzz_target!(|data: &[u8]| {
    // Field lines separated by NUL (a byte no field value holds).
    let values: Vec<HeaderValue> = data
        .split(|&b| b == 0)
        .filter_map(|v| HeaderValue::from_bytes(v).ok())
        .collect();
    let d = cache_control(&values);
    if values.iter().any(|v| v.to_str().is_err()) {
        assert!(d.no_store, "an unreadable field must mean no-store");
    }
    assert_eq!(cache_control(&values), d, "deterministic");
    if let Ok(names) = vary_names(&values) {
        assert!(names.windows(2).all(|w| w[0].as_str() < w[1].as_str()));
        assert!(names.iter().all(|n| n.as_str() != "*"));
    }
});
