//! JWT segments through the full HS256 verification path: never a panic, and a
//! token is accepted only if it has three non-empty segments, fits the size limit
//! and its header names HS256 (the only pinned algorithm).
#![no_main]

use std::sync::OnceLock;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use libfuzzer_sys::fuzz_target;
use palisade::fuzzing::Hs256Verifier;

const SECRET: &[u8] = b"palisade-fuzzing-secret-of-32-bytes-or-more";

fn verifier() -> &'static Hs256Verifier {
    static V: OnceLock<Hs256Verifier> = OnceLock::new();
    V.get_or_init(|| Hs256Verifier::new(SECRET, "palisade-fuzz", 2_000_000_000))
}

fuzz_target!(|data: &[u8]| {
    let Ok(token) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(subject) = verifier().verify(token) {
        assert!(!subject.is_empty());
        assert!(token.len() <= 8192);
        let segments: Vec<&str> = token.split('.').collect();
        assert_eq!(segments.len(), 3);
        assert!(segments.iter().all(|s| !s.is_empty()));
        let header = URL_SAFE_NO_PAD
            .decode(segments[0])
            .expect("header is base64url");
        let header: serde_json::Value = serde_json::from_slice(&header).expect("header is JSON");
        assert_eq!(header["alg"], "HS256");
    }
});
