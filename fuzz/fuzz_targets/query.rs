//! Query normalisation for cache keys: never a panic, idempotent, insensitive to
//! parameter order, and ignored parameters never reach the key.
#![no_main]

use libfuzzer_sys::fuzz_target;
use palisade::fuzzing::normalise_query;

fuzz_target!(|data: &[u8]| {
    let Ok(q) = std::str::from_utf8(data) else {
        return;
    };
    let ignore = vec!["utm_source".to_owned(), "fbclid".to_owned()];
    let n = normalise_query(Some(q), &ignore);
    assert_eq!(normalise_query(Some(&n), &ignore), n, "idempotent");
    let mut reversed: Vec<&str> = q.split('&').collect();
    reversed.reverse();
    assert_eq!(
        normalise_query(Some(&reversed.join("&")), &ignore),
        n,
        "order"
    );
    let with_ignored = format!("utm_source=x&{q}&fbclid=y");
    assert_eq!(normalise_query(Some(&with_ignored), &ignore), n, "ignored");
    for p in n.split('&').filter(|p| !p.is_empty()) {
        let name = p.split_once('=').map_or(p, |(k, _)| k);
        assert!(!ignore.iter().any(|i| i == name));
    }
});
