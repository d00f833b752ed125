//! `Host` / authority: the strict parser never panics, its normal form parses to
//! itself (round trip), and it accepts only `reg-name | IPv4 | [IPv6]` and a port.
//! The cache's host validation never accepts a character a host cannot hold.
#![no_main]

use libfuzzer_sys::fuzz_target;
use palisade::fuzzing::{cache_host, parse_host};

fuzz_target!(|data: &[u8]| {
    if let Some(h) = cache_host(data) {
        assert!(h.len() <= 255);
        assert!(
            h.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-.:[]_".contains(&b))
        );
    }
    let Ok(raw) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok((host, port)) = parse_host(raw) {
        assert!(!host.is_empty());
        assert!(!host.ends_with('.'), "{host}");
        if !host.starts_with('[') {
            assert!(
                host.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-._".contains(&b)),
                "{host}"
            );
        }
        let again = match port {
            Some(p) => format!("{host}:{p}"),
            None => host.clone(),
        };
        assert_eq!(parse_host(&again), Ok((host, port)), "not a round trip");
    }
});
