//! `Forwarded`, `X-Forwarded-For`, `X-Forwarded-Proto`, `X-Real-IP` and node
//! addresses: never a panic; an untrusted peer is never overridden; a trusted
//! peer yields itself or an address the header listed.
#![no_main]

use std::net::{IpAddr, SocketAddr};

use http::{HeaderMap, HeaderValue};
use libfuzzer_sys::fuzz_target;
use palisade::client_ip::{ForwardedHeader, TrustedProxies, parse_forwarded, parse_node};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let _ = parse_forwarded(&text);
    let _ = parse_node(&text);
    let Ok(value) = HeaderValue::from_bytes(data) else {
        return;
    };
    let trusted = TrustedProxies::parse(&["10.0.0.0/8".to_owned()]).expect("valid CIDR");
    for family in [ForwardedHeader::XForwardedFor, ForwardedHeader::Forwarded] {
        let proxies = trusted.clone().header(family);
        for name in [
            "x-forwarded-for",
            "forwarded",
            "x-forwarded-proto",
            "x-real-ip",
        ] {
            let mut headers = HeaderMap::new();
            headers.insert(name, value.clone());
            let untrusted: SocketAddr = "203.0.113.9:4000".parse().expect("address");
            let info = proxies.resolve(Some(untrusted), false, &headers);
            assert_eq!(info.ip, untrusted.ip(), "an untrusted peer was overridden");
            assert!(!info.forwarded);

            let proxy: SocketAddr = "10.1.2.3:4000".parse().expect("address");
            let info = proxies.resolve(Some(proxy), false, &headers);
            if info.ip != proxy.ip() {
                let listed: Vec<IpAddr> = match family {
                    ForwardedHeader::Forwarded => parse_forwarded(&text)
                        .iter()
                        .filter_map(|e| e.for_ip)
                        .collect(),
                    _ => text
                        .split(',')
                        .filter_map(|s| parse_node(s.trim()))
                        .collect(),
                };
                assert!(listed.contains(&info.ip), "{:?} was never listed", info.ip);
            }
        }
    }
});
