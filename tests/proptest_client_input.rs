#![allow(clippy::unwrap_used)]
//! Property tests for the foundation's parsers of client input: forwarding headers,
//! node addresses and route patterns. Never panic; never trust what an untrusted peer
//! sends; round-trip what they format.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use http::{HeaderMap, HeaderName, HeaderValue};
use palisade::client_ip::{ForwardedHeader, Scheme, TrustedProxies, parse_forwarded, parse_node};
use palisade::route_match::PathPattern;
use proptest::prelude::*;

fn any_ip() -> impl Strategy<Value = IpAddr> {
    prop_oneof![
        any::<u32>().prop_map(|v| IpAddr::V4(Ipv4Addr::from(v))),
        any::<u128>().prop_map(|v| IpAddr::V6(Ipv6Addr::from(v))),
    ]
}

fn headers_from(name: &'static str, raw: &[u8]) -> HeaderMap {
    let mut h = HeaderMap::new();
    if let Ok(v) = HeaderValue::from_bytes(raw) {
        h.insert(HeaderName::from_static(name), v);
    }
    h
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn node_addresses_round_trip(ip in any_ip(), port in any::<u16>()) {
        let canonical = ip.to_canonical();
        prop_assert_eq!(parse_node(&ip.to_string()), Some(canonical));
        let with_port = SocketAddr::new(ip, port).to_string();
        prop_assert_eq!(parse_node(&with_port), Some(canonical));
    }

    #[test]
    fn parsers_never_panic_on_arbitrary_text(s in "\\PC{0,200}") {
        let _ = parse_node(&s);
        let _ = parse_forwarded(&s);
        let _ = PathPattern::parse(&s).map(|p| p.matches(&s));
    }

    #[test]
    fn untrusted_peer_is_never_overridden(
        raw in proptest::collection::vec(any::<u8>(), 0..200),
        peer in any_ip(),
        family in prop_oneof![Just(ForwardedHeader::XForwardedFor), Just(ForwardedHeader::Forwarded)],
    ) {
        // Trust only 10/8; peers outside it must be reported as themselves.
        prop_assume!(!matches!(peer.to_canonical(), IpAddr::V4(v4) if v4.octets()[0] == 10));
        let trusted = TrustedProxies::parse(&["10.0.0.0/8".to_string()]).unwrap().header(family);
        for name in ["x-forwarded-for", "forwarded", "x-forwarded-proto"] {
            let info = trusted.resolve(Some(SocketAddr::new(peer, 1234)), false, &headers_from(name, &raw));
            prop_assert_eq!(info.ip, peer.to_canonical());
            prop_assert_eq!(info.scheme, Scheme::Http);
            prop_assert!(!info.forwarded);
        }
    }

    #[test]
    fn trusted_peer_yields_a_listed_address_or_itself(
        raw in proptest::collection::vec(any::<u8>(), 0..200),
    ) {
        let trusted = TrustedProxies::parse(&["10.0.0.0/8".to_string()]).unwrap();
        let peer: SocketAddr = "10.0.0.1:80".parse().unwrap();
        let headers = headers_from("x-forwarded-for", &raw);
        let info = trusted.resolve(Some(peer), false, &headers);
        let listed: Vec<IpAddr> = headers
            .get("x-forwarded-for")
            .and_then(|v| v.to_str().ok())
            .map(|v| v.split(',').filter_map(parse_node).collect())
            .unwrap_or_default();
        prop_assert!(info.ip == peer.ip() || listed.contains(&info.ip));
    }

    #[test]
    fn forwarded_elements_round_trip(
        ips in proptest::collection::vec(any_ip(), 1..5),
        https in proptest::collection::vec(any::<bool>(), 5),
    ) {
        let value = ips
            .iter()
            .zip(&https)
            .map(|(ip, s)| {
                let node = match ip { IpAddr::V4(v4) => v4.to_string(), IpAddr::V6(v6) => format!("\"[{v6}]\"") };
                format!("for={node};proto={}", if *s { "https" } else { "http" })
            })
            .collect::<Vec<_>>()
            .join(", ");
        let parsed = parse_forwarded(&value);
        prop_assert_eq!(parsed.len(), ips.len());
        for ((el, ip), s) in parsed.iter().zip(&ips).zip(&https) {
            prop_assert_eq!(el.for_ip, Some(ip.to_canonical()));
            prop_assert_eq!(el.proto, Some(if *s { Scheme::Https } else { Scheme::Http }));
        }
    }

    #[test]
    fn prefix_globs_never_match_siblings(seg in "[a-z]{1,8}", suffix in "[a-z]{1,8}") {
        let p = PathPattern::parse(&format!("/{seg}/*")).unwrap();
        let (itself, below, sibling) = (format!("/{seg}"), format!("/{seg}/{suffix}"), format!("/{seg}{suffix}"));
        prop_assert!(p.matches(&itself));
        prop_assert!(p.matches(&below));
        prop_assert!(!p.matches(&sibling));
    }
}
