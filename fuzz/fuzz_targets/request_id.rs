//! Request ids: a client's id is kept only when it is 1 to 128 bytes of the safe
//! set, and a kept id is byte for byte the client's.
#![no_main]

use http::HeaderValue;
use libfuzzer_sys::fuzz_target;
use palisade::request_id::{MAX_REQUEST_ID_LEN, RequestId, is_safe_id};

fuzz_target!(|data: &[u8]| {
    let safe = is_safe_id(data);
    if safe {
        assert!(!data.is_empty() && data.len() <= MAX_REQUEST_ID_LEN);
        assert!(
            data.iter()
                .all(|b| b.is_ascii_graphic() && !b"\"'<>\\`{}|^%,;&#?!$*()[]".contains(b))
        );
    }
    if let Ok(v) = HeaderValue::from_bytes(data) {
        match RequestId::parse(&v) {
            Some(id) => {
                assert!(safe);
                assert_eq!(id.as_str().as_bytes(), data);
            }
            None => assert!(!safe),
        }
    }
});
