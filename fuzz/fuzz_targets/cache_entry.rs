//! Cached-entry decoding (what the Redis backend reads back): never a panic on any
//! bytes, sealed with a valid checksum or not; whatever decodes re-encodes to a
//! value that decodes to the same entry.
#![no_main]

use libfuzzer_sys::fuzz_target;
use palisade::fuzzing::{decode_entry, encode_entry, seal_entry};

fuzz_target!(|data: &[u8]| {
    let _ = decode_entry(data);
    // Random bytes never carry a valid checksum: seal them so the fuzzer reaches
    // the structure parser behind the integrity check.
    if let Some(entry) = decode_entry(&seal_entry(data)) {
        let bytes = encode_entry(&entry).expect("a decoded entry encodes");
        assert_eq!(decode_entry(&bytes), Some(entry), "round trip");
    }
});
