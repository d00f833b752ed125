//! What a policy counts: the key kinds and how a request's key value is derived.

use std::net::{IpAddr, SocketAddr};

use axum::extract::{ConnectInfo, Request};
use http::HeaderName;

use crate::client_ip::{ClientInfo, client_info};
use crate::identity::{Identity, IdentityKind};

/// A policy's key kind, parsed from `key = "..."`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum KeySpec {
    /// The trusted client IP (IPv6 grouped by prefix).
    Ip,
    /// The value of a request header (hashed).
    Header(HeaderName),
    /// One bucket for everyone.
    Global,
    /// Any verified identity's id.
    Identity,
    /// Only API-key identities.
    ApiKey,
    /// Only JWT identities (the `sub`).
    JwtSub,
}

impl KeySpec {
    /// Parses `ip`, `header:<name>`, `global`, `identity`, `api_key`, `jwt_sub`.
    pub(crate) fn parse(s: &str) -> Result<Self, String> {
        match s {
            "ip" => Ok(KeySpec::Ip),
            "global" => Ok(KeySpec::Global),
            "identity" => Ok(KeySpec::Identity),
            "api_key" => Ok(KeySpec::ApiKey),
            "jwt_sub" => Ok(KeySpec::JwtSub),
            _ => match s.strip_prefix("header:") {
                Some(name) => HeaderName::from_bytes(name.trim().as_bytes())
                    .map(KeySpec::Header)
                    .map_err(|_| format!("{name:?} is not a valid header name")),
                None => Err(format!(
                    "unknown key kind {s:?}; expected ip, header:<name>, global, identity, api_key or jwt_sub"
                )),
            },
        }
    }

    /// Whether the key needs the verified identity (decided after the auth layer).
    pub(crate) fn needs_identity(&self) -> bool {
        matches!(self, KeySpec::Identity | KeySpec::ApiKey | KeySpec::JwtSub)
    }

    /// A stable one-byte tag, so values of different kinds never collide.
    fn tag(&self) -> u8 {
        match self {
            KeySpec::Ip => 1,
            KeySpec::Header(_) => 2,
            KeySpec::Global => 3,
            KeySpec::Identity => 4,
            KeySpec::ApiKey => 5,
            KeySpec::JwtSub => 6,
        }
    }

    /// The request's value for this key, if it has one.
    pub(crate) fn extract(&self, req: &Request, ipv6_prefix: u8) -> Option<KeyValue> {
        let value = match self {
            KeySpec::Ip => {
                let (tag, value) = ip_bits(client_ip(req), ipv6_prefix);
                return Some(KeyValue::new(tag, value));
            }
            KeySpec::Global => 0,
            KeySpec::Header(name) => {
                let v = req.headers().get(name)?;
                if v.is_empty() {
                    return None;
                }
                digest(v.as_bytes())
            }
            KeySpec::Identity | KeySpec::ApiKey | KeySpec::JwtSub => {
                let id = req.extensions().get::<Identity>()?;
                let ok = match self {
                    KeySpec::ApiKey => id.kind == IdentityKind::ApiKey,
                    KeySpec::JwtSub => id.kind == IdentityKind::Jwt,
                    _ => true,
                };
                if !ok {
                    return None;
                }
                digest(id.id.as_bytes())
            }
        };
        Some(KeyValue::new(self.tag(), value))
    }
}

/// The trusted client IP: what [`client_info`] returns, without building a
/// `ClientInfo` when the client-ip layer already did, or when only the peer is known.
#[inline]
pub(crate) fn client_ip(req: &Request) -> IpAddr {
    if let Some(info) = req.extensions().get::<ClientInfo>() {
        return info.ip;
    }
    match req.extensions().get::<ConnectInfo<SocketAddr>>() {
        Some(ConnectInfo(peer)) => peer.ip().to_canonical(),
        None => client_info(req).ip,
    }
}

/// A request's value for one key kind: the IP bits, or a 128-bit BLAKE3 digest of a
/// header value or identity id. Fixed size, so memory per key is bounded, and never
/// the raw secret, so it is safe as a Redis key.
///
/// The 128 bits are two `u64`s: a `u128` field would align the value, and every
/// verdict entry holding one, to 16 bytes and pad them (an entry of 80 bytes instead
/// of 40, and the stack's response future, which carries the entries of both
/// limiter stages, over the allocator's small-size cache).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct KeyValue {
    pub(crate) tag: u8,
    pub(crate) hi: u64,
    pub(crate) lo: u64,
}

/// The most bytes [`KeyValue::redis_key`] adds to a policy's name (a `u8` tag has at most
/// three digits), for sizing commands up front.
#[cfg(feature = "redis")]
pub(crate) const REDIS_KEY_OVERHEAD: usize = 51;

impl KeyValue {
    #[inline]
    pub(crate) fn new(tag: u8, value: u128) -> Self {
        Self {
            tag,
            hi: (value >> 64) as u64,
            lo: value as u64,
        }
    }

    /// The 128 bits (Redis keys and tests).
    #[cfg(any(feature = "redis", test))]
    #[inline]
    pub(crate) fn value(&self) -> u128 {
        (u128::from(self.hi) << 64) | u128::from(self.lo)
    }

    /// The Redis hash tag shared by every policy's key for this value, so all the
    /// keys one request touches for one client land in one Cluster slot.
    ///
    /// The Redis key of this value for policy `name`:
    /// `{palisade:rl:<tag>:<32 hex digits>}:<name>`, written into one exact-size
    /// buffer (`format!` of a `u128` in hex costs thousands of instructions).
    #[cfg(feature = "redis")]
    pub(crate) fn redis_key(&self, name: &str) -> Vec<u8> {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut tag = itoa::Buffer::new();
        let tag = tag.format(self.tag).as_bytes();
        let mut key = Vec::with_capacity(13 + tag.len() + 1 + 32 + 2 + name.len());
        key.extend_from_slice(b"{palisade:rl:");
        key.extend_from_slice(tag);
        key.push(b':');
        let value = self.value();
        for shift in (0..32).rev() {
            key.push(HEX[((value >> (shift * 4)) & 0xf) as usize]);
        }
        key.extend_from_slice(b"}:");
        key.extend_from_slice(name.as_bytes());
        key
    }
}

/// The IP as a tag and 128 bits, IPv6 masked to its prefix (IPv4-mapped IPv6 is IPv4).
pub(crate) fn ip_bits(ip: IpAddr, ipv6_prefix: u8) -> (u8, u128) {
    match ip.to_canonical() {
        IpAddr::V4(v4) => (1, u128::from(u32::from(v4))),
        IpAddr::V6(v6) => {
            let bits = u128::from(v6);
            let mask = match ipv6_prefix {
                0 => 0,
                p if p >= 128 => u128::MAX,
                p => u128::MAX << (128 - u32::from(p)),
            };
            (7, bits & mask)
        }
    }
}

fn digest(bytes: &[u8]) -> u128 {
    let hash = blake3::hash(bytes);
    let mut first = [0u8; 16];
    first.copy_from_slice(&hash.as_bytes()[..16]);
    u128::from_le_bytes(first)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_kind() {
        assert_eq!(KeySpec::parse("ip"), Ok(KeySpec::Ip));
        assert_eq!(
            KeySpec::parse("header:X-Api-Key"),
            Ok(KeySpec::Header(HeaderName::from_static("x-api-key")))
        );
        assert!(KeySpec::parse("header:bad name").is_err());
        assert!(KeySpec::parse("cookie").is_err());
        assert!(KeySpec::parse("jwt_sub").unwrap().needs_identity());
    }

    #[cfg(feature = "redis")]
    #[test]
    fn redis_key_is_within_its_overhead() {
        for (tag, name) in [
            (255, ""),
            (255, "per-ip"),
            (7, "a-long-policy-name"),
            (0, "g"),
        ] {
            let key = KeyValue::new(tag, u128::MAX).redis_key(name);
            assert!(key.len() <= REDIS_KEY_OVERHEAD + name.len(), "{key:?}");
        }
        assert_eq!(
            KeyValue::new(255, 0).redis_key("").len(),
            REDIS_KEY_OVERHEAD,
            "the bound is exact for a three-digit tag"
        );
    }

    #[cfg(feature = "redis")]
    #[test]
    fn redis_key_layout() {
        let v = KeyValue::new(7, 0x2001_0db8_0000_0000_0000_0000_0000_00ff);
        assert_eq!(
            String::from_utf8(v.redis_key("per-ip")).unwrap(),
            format!("{{palisade:rl:7:{:032x}}}:per-ip", v.value())
        );
        let zero = KeyValue::new(3, 0);
        assert_eq!(
            zero.redis_key("g"),
            b"{palisade:rl:3:00000000000000000000000000000000}:g"
        );
    }

    #[test]
    fn ipv6_grouped_by_prefix() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(ip_bits(a, 64), ip_bits(b, 64));
        assert_ne!(ip_bits(a, 64), ip_bits(c, 64));
        assert_ne!(ip_bits(a, 128), ip_bits(b, 128));
        let mapped: IpAddr = "::ffff:192.0.2.1".parse().unwrap();
        assert_eq!(
            ip_bits(mapped, 64),
            ip_bits("192.0.2.1".parse().unwrap(), 64)
        );
    }
}
