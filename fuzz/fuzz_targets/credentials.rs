//! Bearer and API-key extraction: never a panic; a bearer token is always RFC 6750
//! `token68`; an API key is always non-empty visible ASCII; two headers are refused.
#![no_main]

use http::{HeaderMap, HeaderName, HeaderValue};
use libfuzzer_sys::fuzz_target;
use palisade::fuzzing::{api_key, bearer_token};

fuzz_target!(|data: &[u8]| {
    let Ok(value) = HeaderValue::from_bytes(data) else {
        return;
    };
    let key_header = HeaderName::from_static("x-api-key");
    let mut headers = HeaderMap::new();
    headers.insert(http::header::AUTHORIZATION, value.clone());
    headers.insert(key_header.clone(), value.clone());
    if let Ok(Some(token)) = bearer_token(&headers) {
        assert!(!token.is_empty());
        let body = token.trim_end_matches('=');
        assert!(
            body.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-._~+/".contains(&b))
        );
        let text = value.to_str().expect("an accepted header is ASCII");
        let scheme = text.trim_matches(' ').split(' ').next().unwrap_or("");
        assert!(scheme.eq_ignore_ascii_case("bearer"), "{text:?}");
    }
    if let Ok(Some(key)) = api_key(&headers, &key_header) {
        assert!(!key.is_empty() && key.bytes().all(|b| b.is_ascii_graphic()));
    }
    headers.append(http::header::AUTHORIZATION, value.clone());
    headers.append(key_header.clone(), value);
    assert!(bearer_token(&headers).is_err(), "two Authorization headers");
    assert!(
        api_key(&headers, &key_header).is_err(),
        "two API-key headers"
    );
});
