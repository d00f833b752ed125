//! Direct property tests of the crate-private parsers, through the `fuzzing`
//! feature's thin entry points (the same ones the fuzz targets in `fuzz/` call):
//! cached-entry decoding, cache keys and query normalisation, the strict `Host`
//! parser, bearer/API-key extraction and JWT verification.
//!
//! Properties: never a panic on arbitrary input; nothing accepted that the strict
//! grammar rejects; encode → decode and format → parse round-trip.
#![cfg(all(
    feature = "fuzzing",
    feature = "cache",
    feature = "https",
    feature = "jwt"
))]
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;

use http::{HeaderMap, HeaderName, HeaderValue};
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use palisade::fuzzing::{
    ENTRY_CHECKSUM_LEN, Entry, EntryKind, Hs256Verifier, api_key, bearer_token, cache_key,
    decode_entry, encode_entry, encode_entry_with, normalise_query, parse_host, seal_entry,
};
use proptest::prelude::*;
use serde_json::json;

// ---------------------------------------------------------------- cached entries

fn header_name() -> impl Strategy<Value = HeaderName> {
    "[a-z][a-z0-9-]{0,30}".prop_map(|s| HeaderName::try_from(s).unwrap())
}

fn header_value() -> impl Strategy<Value = HeaderValue> {
    prop::collection::vec(prop_oneof![9u8..=9, 32u8..=126, 128u8..=255], 0..100)
        .prop_map(|v| HeaderValue::from_bytes(&v).unwrap())
}

fn entry() -> impl Strategy<Value = Entry> {
    let kind = prop_oneof![
        (
            100u16..=999,
            prop::collection::vec((header_name(), header_value()), 0..8),
            header_value(),
            prop::collection::vec(any::<u8>(), 0..2000),
            any::<bool>(),
        )
            .prop_map(
                |(status, headers, etag, body, public)| EntryKind::Response {
                    status,
                    headers,
                    etag,
                    body,
                    public,
                }
            ),
        prop::collection::vec(header_name(), 0..6).prop_map(EntryKind::Variants),
    ];
    (
        any::<[u64; 5]>(),
        prop::collection::vec(("\\PC{0,20}", any::<u64>()), 0..4),
        kind,
    )
        .prop_map(|(t, tags, kind)| Entry {
            generation: t[0],
            stored_at_ms: t[1],
            fresh_until_ms: t[2],
            swr_until_ms: t[3],
            sie_until_ms: t[4],
            tags,
            kind,
        })
}

// ---------------------------------------------------------------- queries

fn param() -> impl Strategy<Value = String> {
    ("[a-z_]{1,8}", prop::option::of("[a-zA-Z0-9%._~-]{0,8}")).prop_map(|(k, v)| match v {
        Some(v) => format!("{k}={v}"),
        None => k,
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(500))]

    #[test]
    fn entries_round_trip(e in entry()) {
        let bytes = encode_entry(&e).unwrap();
        prop_assert_eq!(decode_entry(&bytes), Some(e));
    }

    #[test]
    fn entries_round_trip_with_compression_allowed(e in entry(), repeat in 0usize..64) {
        // A repeated body compresses: exercises the LZ4 path as well as the skip.
        let mut e = e;
        if let EntryKind::Response { body, .. } = &mut e.kind {
            *body = body.repeat(repeat);
        }
        let bytes = encode_entry_with(&e, 1).unwrap();
        prop_assert_eq!(decode_entry(&bytes), Some(e));
    }

    #[test]
    fn sealed_payload_of_an_encoded_entry_decodes(e in entry()) {
        // Keeps `seal_entry` (used by the fuzz target) in step with the encoder.
        let bytes = encode_entry(&e).unwrap();
        let payload = &bytes[..bytes.len() - ENTRY_CHECKSUM_LEN];
        prop_assert_eq!(seal_entry(payload), bytes.clone());
        prop_assert_eq!(decode_entry(&seal_entry(payload)), Some(e));
    }

    #[test]
    fn a_flipped_bit_or_a_cut_entry_never_decodes(
        e in entry(),
        at in any::<prop::sample::Index>(),
        bit in 0u8..8,
    ) {
        let bytes = encode_entry(&e).unwrap();
        let i = at.index(bytes.len());
        let mut flipped = bytes.clone();
        flipped[i] ^= 1 << bit;
        prop_assert_eq!(decode_entry(&flipped), None);
        prop_assert_eq!(decode_entry(&bytes[..i]), None);
    }

    #[test]
    fn arbitrary_bytes_never_panic_and_what_decodes_re_encodes(
        raw in prop::collection::vec(any::<u8>(), 0..600),
    ) {
        prop_assert_eq!(decode_entry(&raw), None, "no valid checksum by chance");
        if let Some(e) = decode_entry(&seal_entry(&raw)) {
            let again = encode_entry(&e).unwrap();
            prop_assert_eq!(decode_entry(&again), Some(e));
        }
    }

    #[test]
    fn arbitrary_sealed_headers_of_an_entry_never_panic(
        e in entry(),
        at in any::<prop::sample::Index>(),
        junk in prop::collection::vec(any::<u8>(), 1..16),
    ) {
        // Splice junk into a real payload and re-seal it: the structure parser
        // must refuse or decode it, never panic or over-read.
        let bytes = encode_entry(&e).unwrap();
        let mut payload = bytes[..bytes.len() - ENTRY_CHECKSUM_LEN].to_vec();
        let i = at.index(payload.len() + 1);
        payload.splice(i..i, junk);
        let _ = decode_entry(&seal_entry(&payload));
    }

    #[test]
    fn query_normalisation_is_order_insensitive_and_idempotent(
        params in prop::collection::vec(param(), 0..10),
        shuffle in any::<usize>(),
    ) {
        let ignore = vec!["utm_source".to_owned()];
        let q = params.join("&");
        let n = normalise_query(Some(&q), &ignore);
        prop_assert_eq!(normalise_query(Some(&n), &ignore), n.clone(), "idempotent");
        // A rotation and a reversal of the same parameters.
        let mut other = params.clone();
        if !other.is_empty() {
            let k = shuffle % other.len();
            other.rotate_left(k);
        }
        other.reverse();
        prop_assert_eq!(normalise_query(Some(&other.join("&")), &ignore), n.clone());
        // Ignored parameters and empty members never count.
        let noisy = format!("utm_source=a&&{q}&utm_source");
        prop_assert_eq!(normalise_query(Some(&noisy), &ignore), n.clone());
        // Every kept parameter is still there, byte for byte.
        let kept: BTreeSet<&str> = n.split('&').filter(|p| !p.is_empty()).collect();
        for p in &params {
            let name = p.split_once('=').map_or(p.as_str(), |(k, _)| k);
            prop_assert_eq!(kept.contains(p.as_str()), name != "utm_source", "{}", p);
        }
    }

    #[test]
    fn different_queries_give_different_normal_forms(
        a in prop::collection::btree_set(param(), 0..6),
        b in prop::collection::btree_set(param(), 0..6),
    ) {
        let ia: BTreeSet<_> = a.iter().filter(|p| !p.starts_with("utm_source")).collect();
        let ib: BTreeSet<_> = b.iter().filter(|p| !p.starts_with("utm_source")).collect();
        let join = |s: &BTreeSet<String>| s.iter().cloned().collect::<Vec<_>>().join("&");
        let ignore = vec!["utm_source".to_owned()];
        let same = normalise_query(Some(&join(&a)), &ignore) == normalise_query(Some(&join(&b)), &ignore);
        prop_assert_eq!(same, ia == ib);
    }

    #[test]
    fn cache_keys_never_collide_by_concatenation(
        a in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..8), 0..5),
        b in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..8), 0..5),
    ) {
        let key = |parts: &Vec<Vec<u8>>| {
            let refs: Vec<&[u8]> = parts.iter().map(Vec::as_slice).collect();
            cache_key(&refs)
        };
        prop_assert_eq!(key(&a) == key(&b), a == b);
    }

    // ------------------------------------------------------------ Host

    #[test]
    fn host_parser_round_trips_and_is_strict(raw in prop_oneof![
        "\\PC{0,40}",
        "([a-zA-Z0-9_-]{1,10}\\.){0,3}[a-zA-Z0-9_-]{1,10}\\.?(:[0-9]{0,6})?",
        "\\[[0-9a-f:]{2,20}\\](:[0-9]{1,5})?",
        "[0-9]{1,3}\\.[0-9]{1,3}\\.[0-9]{1,3}\\.[0-9]{1,4}(:[0-9]{1,5})?",
    ]) {
        if let Ok((host, port)) = parse_host(&raw) {
            // Only reg-name characters, an IPv4 address or a bracketed IPv6 literal.
            if let Some(v6) = host.strip_prefix('[') {
                prop_assert!(v6.trim_end_matches(']').parse::<std::net::Ipv6Addr>().is_ok());
            } else {
                prop_assert!(host.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-._".contains(&b)), "{}", host);
                prop_assert!(host.split('.').all(|l| !l.is_empty() && l.len() <= 63));
            }
            // The name is the client's, lower-cased and without the FQDN dot.
            let name = raw.split(':').next().unwrap();
            prop_assert!(raw.starts_with('[') || host.eq_ignore_ascii_case(name.strip_suffix('.').unwrap_or(name)));
            let again = match port { Some(p) => format!("{host}:{p}"), None => host.clone() };
            prop_assert_eq!(parse_host(&again), Ok((host, port)));
        }
    }

    // ------------------------------------------------------------ credentials

    #[test]
    fn bearer_tokens_are_token68_and_round_trip(
        token in "[A-Za-z0-9._~+/-]{1,60}={0,2}",
        scheme in "(?i:bearer)",
        spaces in 1usize..4,
    ) {
        let mut h = HeaderMap::new();
        let v = format!("{scheme}{}{token}", " ".repeat(spaces));
        h.insert(http::header::AUTHORIZATION, HeaderValue::try_from(v).unwrap());
        prop_assert_eq!(bearer_token(&h), Ok(Some(token.as_str())));
    }

    #[test]
    fn arbitrary_authorization_is_token68_or_refused(
        raw in prop::collection::vec(prop_oneof![9u8..=9, 32u8..=126, 128u8..=255], 0..80),
    ) {
        let mut h = HeaderMap::new();
        h.insert(http::header::AUTHORIZATION, HeaderValue::from_bytes(&raw).unwrap());
        h.insert("x-api-key", HeaderValue::from_bytes(&raw).unwrap());
        if let Ok(Some(t)) = bearer_token(&h) {
            prop_assert!(t.trim_end_matches('=').bytes().all(|b| b.is_ascii_alphanumeric() || b"-._~+/".contains(&b)));
            prop_assert!(!t.is_empty());
        }
        let name = HeaderName::from_static("x-api-key");
        if let Ok(Some(k)) = api_key(&h, &name) {
            prop_assert!(!k.is_empty() && k.bytes().all(|b| b.is_ascii_graphic()));
        }
        h.append("x-api-key", HeaderValue::from_static("second"));
        prop_assert!(api_key(&h, &name).is_err());
    }

    // ------------------------------------------------------------ JWT

    #[test]
    fn signed_tokens_verify_and_any_changed_character_is_refused(
        sub in "[a-z0-9]{1,20}",
        at in any::<prop::sample::Index>(),
        with in "[A-Za-z0-9_.-]",
    ) {
        const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef-proptest";
        const NOW: u64 = 2_000_000_000;
        let v = Hs256Verifier::new(SECRET, "iss", NOW);
        let token = encode(
            &Header::new(Algorithm::HS256),
            &json!({"sub": sub, "iss": "iss", "exp": NOW + 60}),
            &EncodingKey::from_secret(SECRET),
        ).unwrap();
        prop_assert_eq!(v.verify(&token), Ok(sub));
        let i = at.index(token.len());
        let c = with.chars().next().unwrap();
        prop_assume!(token.as_bytes()[i] != c as u8);
        let mut changed = token.clone().into_bytes();
        changed[i] = c as u8;
        let changed = String::from_utf8(changed).unwrap();
        prop_assert!(v.verify(&changed).is_err(), "{} accepted", changed);
    }

    #[test]
    fn arbitrary_token_segments_are_refused(
        segs in prop::collection::vec("[A-Za-z0-9_=+/-]{0,60}", 0..6),
    ) {
        let v = Hs256Verifier::new(b"0123456789abcdef0123456789abcdef-proptest", "iss", 2_000_000_000);
        prop_assert!(v.verify(&segs.join(".")).is_err());
    }
}
