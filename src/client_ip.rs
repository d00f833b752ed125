//! Client identity: who is on the other end, and over which scheme, as far as it can
//! be trusted.
//!
//! Every palisade layer that cares about the client (rate limits keyed by IP, the
//! HTTPS redirect, HSTS, access logs, metrics) reads one [`ClientInfo`] computed once
//! per request by [`ClientIpLayer`], outermost in the stack.
//!
//! # Why a trusted-proxy list
//!
//! `X-Forwarded-For`, `X-Forwarded-Proto` and `Forwarded` are plain request headers:
//! any client can send them. They mean something only when *our own* proxy wrote
//! them. So palisade starts from the TCP peer address and reads forwarding headers
//! only when that peer is in `client_ip.trusted_proxies`; it then walks the list
//! **right to left**, skipping hops that are themselves trusted proxies, and stops at
//! the first untrusted address: that is the client. The left-most entry, which the
//! client wrote itself, is never believed just because it is first (the mistake that
//! lets clients escape per-IP rate limits in several popular crates).
//!
//! Junk in a forwarding header (`unknown`, obfuscated identifiers, garbage) stops the
//! walk at the last trusted hop; it is never an error and never a 500.
//!
//! Only one header family is read, the one your proxy sets (`client_ip.header`,
//! `x-forwarded-for` by default): reading both would let a client smuggle a
//! `Forwarded` header past a proxy that only rewrites `X-Forwarded-For`.
//!
//! # The connection's own scheme
//!
//! axum's plain `serve` only speaks HTTP. If you terminate TLS in the process, insert
//! the [`ConnectionTls`] marker into each request's extensions from your acceptor and
//! palisade will treat the connection as HTTPS.
//!
//! ```
//! use axum::{Router, routing::get, extract::connect_info::MockConnectInfo};
//! use palisade::client_ip::{ClientInfo, ClientIpLayer, Scheme, TrustedProxies};
//! use std::net::SocketAddr;
//! use tower::ServiceExt;
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let trusted = TrustedProxies::parse(&["10.0.0.0/8".to_string()]).unwrap();
//! let app = Router::new()
//!     .route("/", get(|info: axum::Extension<ClientInfo>| async move { info.ip.to_string() }))
//!     .layer(ClientIpLayer::new(trusted))
//!     .layer(MockConnectInfo(SocketAddr::from(([10, 0, 0, 1], 4000))));
//! let req = http::Request::get("/")
//!     .header("x-forwarded-for", "203.0.113.7, 10.0.0.2")
//!     .body(axum::body::Body::empty())
//!     .unwrap();
//! let res = app.oneshot(req).await.unwrap();
//! let body = axum::body::to_bytes(res.into_body(), 64).await.unwrap();
//! assert_eq!(&body[..], b"203.0.113.7");
//! # }
//! ```

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::extract::ConnectInfo;
use axum::extract::connect_info::MockConnectInfo;
use http::{HeaderMap, HeaderName, Request};
use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use tower::{Layer, Service};

use crate::error::ConfigError;

/// The scheme the client used to reach the edge of your system.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scheme {
    /// Plain HTTP.
    Http,
    /// HTTP over TLS.
    Https,
}

impl Scheme {
    /// `"http"` or `"https"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }
}

/// Marker extension: this request arrived over a TLS connection terminated in-process.
#[derive(Debug, Clone, Copy, Default)]
pub struct ConnectionTls;

/// What palisade knows about the client of one request. Inserted into the request
/// extensions by [`ClientIpLayer`]; read it with [`client_info`] or
/// `Extension<ClientInfo>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientInfo {
    /// The TCP peer, when the server was started with
    /// `into_make_service_with_connect_info::<SocketAddr>()`.
    pub peer: Option<SocketAddr>,
    /// The client IP: the peer, or the address a trusted proxy reported.
    pub ip: IpAddr,
    /// The scheme the client used, judged the same way.
    pub scheme: Scheme,
    /// Whether `ip`/`scheme` came from a forwarding header of a trusted proxy.
    pub forwarded: bool,
}

/// Which forwarding header family the trusted proxies write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ForwardedHeader {
    /// `X-Forwarded-For` and `X-Forwarded-Proto` (nginx, HAProxy, most load balancers).
    #[default]
    XForwardedFor,
    /// RFC 7239 `Forwarded`.
    Forwarded,
}

/// `[client_ip]`: which peers may tell palisade who the client is.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ClientIpConfig {
    /// CIDRs (or single addresses) of the proxies in front of this service.
    /// Empty (the default) trusts no forwarding header at all.
    pub trusted_proxies: Vec<String>,
    /// The header family those proxies write.
    pub header: ForwardedHeader,
}

/// A compiled set of trusted proxy networks.
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies {
    nets: Arc<[IpNet]>,
    header: ForwardedHeader,
}

impl TrustedProxies {
    /// Trusts nobody: forwarding headers are ignored.
    pub fn none() -> Self {
        Self::default()
    }

    /// Parses CIDRs (`10.0.0.0/8`, `fd00::/8`) and single addresses (`127.0.0.1`, `::1`).
    pub fn parse(entries: &[String]) -> Result<Self, ConfigError> {
        Self::parse_at("client_ip.trusted_proxies", entries)
    }

    pub(crate) fn parse_at(key: &str, entries: &[String]) -> Result<Self, ConfigError> {
        let mut errors = ConfigError::default();
        let mut nets = Vec::with_capacity(entries.len());
        for (i, e) in entries.iter().enumerate() {
            match parse_net(e) {
                Some(net) => nets.push(net),
                None => errors.push(
                    format!("{key}[{i}]"),
                    format!("{e:?} is not an IP address or CIDR"),
                ),
            }
        }
        errors.and_ok(Self {
            nets: nets.into(),
            header: ForwardedHeader::default(),
        })
    }

    /// Builds the trusted set from `[client_ip]`.
    pub fn from_config(config: &ClientIpConfig) -> Result<Self, ConfigError> {
        Ok(Self::parse(&config.trusted_proxies)?.header(config.header))
    }

    /// Selects the forwarding header family to read.
    #[must_use]
    pub fn header(mut self, header: ForwardedHeader) -> Self {
        self.header = header;
        self
    }

    /// The forwarding header family these proxies write.
    pub fn forwarded_header(&self) -> ForwardedHeader {
        self.header
    }

    /// Whether `ip` is a trusted proxy.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.nets.iter().any(|n| n.contains(&ip))
    }

    /// Whether no proxy is trusted.
    pub fn is_empty(&self) -> bool {
        self.nets.is_empty()
    }

    /// Resolves the client of a request from its peer address and headers.
    pub fn resolve(&self, peer: Option<SocketAddr>, tls: bool, headers: &HeaderMap) -> ClientInfo {
        let conn_scheme = if tls { Scheme::Https } else { Scheme::Http };
        let mut info = ClientInfo {
            peer,
            ip: peer.map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |p| p.ip().to_canonical()),
            scheme: conn_scheme,
            forwarded: false,
        };
        let Some(peer) = peer else { return info };
        if !self.contains(peer.ip()) {
            return info;
        }
        match self.header {
            ForwardedHeader::XForwardedFor => {
                let hops = header_list(headers, &X_FORWARDED_FOR).map(parse_node);
                if let Some(ip) = self.walk(hops) {
                    info.ip = ip;
                    info.forwarded = true;
                }
                // The nearest trusted proxy's view of the scheme is the right-most value.
                if let Some(s) = header_list(headers, &X_FORWARDED_PROTO)
                    .last()
                    .and_then(parse_proto)
                {
                    info.scheme = s;
                    info.forwarded = true;
                }
            }
            ForwardedHeader::Forwarded => {
                let elements: Vec<ForwardedElement> = headers
                    .get_all(http::header::FORWARDED)
                    .iter()
                    .filter_map(|v| v.to_str().ok())
                    .flat_map(parse_forwarded)
                    .collect();
                // Walk right to left; each element carries its own proto.
                for el in elements.iter().rev() {
                    let Some(ip) = el.for_ip else { break };
                    info.ip = ip;
                    info.forwarded = true;
                    if let Some(proto) = el.proto {
                        info.scheme = proto;
                    }
                    if !self.contains(ip) {
                        break;
                    }
                }
            }
        }
        info
    }

    /// Right-to-left walk over hop addresses (left-most first in `hops`).
    fn walk<I: DoubleEndedIterator<Item = Option<IpAddr>>>(&self, hops: I) -> Option<IpAddr> {
        let mut client = None;
        for hop in hops.rev() {
            let Some(ip) = hop else { break };
            client = Some(ip);
            if !self.contains(ip) {
                break;
            }
        }
        client
    }
}

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

fn parse_net(s: &str) -> Option<IpNet> {
    let s = s.trim();
    s.parse::<IpNet>()
        .ok()
        .or_else(|| s.parse::<IpAddr>().ok().map(IpNet::from))
}

/// Comma-separated elements across every instance of a header, in order.
fn header_list<'a>(
    headers: &'a HeaderMap,
    name: &HeaderName,
) -> impl DoubleEndedIterator<Item = &'a str> {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect::<Vec<_>>()
        .into_iter()
}

fn parse_proto(s: &str) -> Option<Scheme> {
    if s.eq_ignore_ascii_case("https") {
        Some(Scheme::Https)
    } else if s.eq_ignore_ascii_case("http") {
        Some(Scheme::Http)
    } else {
        None
    }
}

/// Parses one node address: `1.2.3.4`, `1.2.3.4:80`, `2001:db8::1`, `[2001:db8::1]:443`.
/// Anything else (`unknown`, `_hidden`, garbage) is `None`.
pub fn parse_node(s: &str) -> Option<IpAddr> {
    let s = s.trim();
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(ip.to_canonical());
    }
    if let Some(rest) = s.strip_prefix('[') {
        let (addr, tail) = rest.split_once(']')?;
        if !(tail.is_empty() || valid_port(tail.strip_prefix(':')?)) {
            return None;
        }
        return addr
            .parse::<std::net::Ipv6Addr>()
            .ok()
            .map(|a| IpAddr::V6(a).to_canonical());
    }
    let (addr, port) = s.rsplit_once(':')?;
    if !valid_port(port) {
        return None;
    }
    addr.parse::<Ipv4Addr>().ok().map(IpAddr::V4)
}

fn valid_port(p: &str) -> bool {
    !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit())
}

/// One element of an RFC 7239 `Forwarded` header.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ForwardedElement {
    /// The `for=` node, when it is an IP address.
    pub for_ip: Option<IpAddr>,
    /// The `proto=` value, when it is `http` or `https`.
    pub proto: Option<Scheme>,
    /// The `host=` value, unquoted.
    pub host: Option<String>,
}

/// Parses a `Forwarded` header value into its elements. Never fails: malformed pairs
/// are dropped, and an element without a usable `for=` has `for_ip: None`.
pub fn parse_forwarded(value: &str) -> Vec<ForwardedElement> {
    split_quoted(value, ',')
        .into_iter()
        .map(|element| {
            let mut el = ForwardedElement::default();
            for pair in split_quoted(element, ';') {
                let Some((name, raw)) = pair.split_once('=') else {
                    continue;
                };
                let Some(v) = unquote(raw.trim()) else {
                    continue;
                };
                match name.trim().to_ascii_lowercase().as_str() {
                    "for" => el.for_ip = parse_node(&v),
                    "proto" => el.proto = parse_proto(&v),
                    "host" => el.host = Some(v),
                    _ => {}
                }
            }
            el
        })
        .collect()
}

/// Splits on `sep` outside double quotes.
fn split_quoted(s: &str, sep: char) -> Vec<&str> {
    let mut out = Vec::new();
    let mut in_quotes = false;
    let mut escaped = false;
    let mut start = 0;
    for (i, c) in s.char_indices() {
        if escaped {
            escaped = false;
            continue;
        }
        match c {
            '\\' if in_quotes => escaped = true,
            '"' => in_quotes = !in_quotes,
            c if c == sep && !in_quotes => {
                out.push(&s[start..i]);
                start = i + c.len_utf8();
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out
}

/// A token or a quoted-string; `None` for an unterminated quote.
fn unquote(v: &str) -> Option<String> {
    match v.strip_prefix('"') {
        None => Some(v.to_owned()),
        Some(rest) => {
            let inner = rest.strip_suffix('"')?;
            let mut out = String::with_capacity(inner.len());
            let mut chars = inner.chars();
            while let Some(c) = chars.next() {
                if c == '\\' {
                    out.push(chars.next()?);
                } else {
                    out.push(c);
                }
            }
            Some(out)
        }
    }
}

/// The [`ClientInfo`] of a request: the one [`ClientIpLayer`] computed, or, when that
/// layer is not in the stack, the peer address alone (no forwarding header trusted).
pub fn client_info<B>(req: &Request<B>) -> ClientInfo {
    if let Some(info) = req.extensions().get::<ClientInfo>() {
        return *info;
    }
    TrustedProxies::none().resolve(
        peer_addr(req),
        req.extensions().get::<ConnectionTls>().is_some(),
        req.headers(),
    )
}

fn peer_addr<B>(req: &Request<B>) -> Option<SocketAddr> {
    let ext = req.extensions();
    ext.get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0)
        // axum's test helper, so `MockConnectInfo` works as it does for the extractor.
        .or_else(|| ext.get::<MockConnectInfo<SocketAddr>>().map(|c| c.0))
}

/// Computes the [`ClientInfo`] once per request and stores it in the extensions.
#[derive(Debug, Clone, Default)]
pub struct ClientIpLayer {
    trusted: TrustedProxies,
}

impl ClientIpLayer {
    /// A layer trusting the given proxies.
    pub fn new(trusted: TrustedProxies) -> Self {
        Self { trusted }
    }
}

impl ClientIpLayer {
    /// What [`ClientIp`] does before its inner service (for the stack, which runs the
    /// layer without a level of its own).
    #[inline]
    pub(crate) fn identify<B>(&self, req: &mut Request<B>) -> ClientInfo {
        self.trusted.identify(req)
    }
}

impl TrustedProxies {
    /// Resolves the request's client and stores it in the request's extensions.
    #[inline]
    fn identify<B>(&self, req: &mut Request<B>) -> ClientInfo {
        let tls = req.extensions().get::<ConnectionTls>().is_some();
        let info = self.resolve(peer_addr(req), tls, req.headers());
        req.extensions_mut().insert(info);
        info
    }
}

impl<S> Layer<S> for ClientIpLayer {
    type Service = ClientIp<S>;
    fn layer(&self, inner: S) -> ClientIp<S> {
        ClientIp {
            inner,
            trusted: self.trusted.clone(),
        }
    }
}

/// The service made by [`ClientIpLayer`].
#[derive(Debug, Clone)]
pub struct ClientIp<S> {
    inner: S,
    trusted: TrustedProxies,
}

impl<S, B> Service<Request<B>> for ClientIp<S>
where
    S: Service<Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        self.trusted.identify(&mut req);
        self.inner.call(req)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn trusted(nets: &[&str]) -> TrustedProxies {
        TrustedProxies::parse(&nets.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap()
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    fn sa(s: &str) -> Option<SocketAddr> {
        Some(s.parse().unwrap())
    }

    #[test]
    fn untrusted_peer_cannot_spoof() {
        let t = trusted(&["10.0.0.0/8"]);
        let h = headers(&[
            ("x-forwarded-for", "1.1.1.1"),
            ("x-forwarded-proto", "https"),
        ]);
        let info = t.resolve(sa("203.0.113.9:5000"), false, &h);
        assert_eq!(info.ip, "203.0.113.9".parse::<IpAddr>().unwrap());
        assert_eq!(info.scheme, Scheme::Http);
        assert!(!info.forwarded);
    }

    #[test]
    fn trusted_peer_walks_right_to_left_past_trusted_hops() {
        let t = trusted(&["10.0.0.0/8", "fd00::/8"]);
        // The client wrote "6.6.6.6" itself; the edge proxy appended the real address.
        let h = headers(&[
            ("x-forwarded-for", "6.6.6.6, 198.51.100.4, 10.0.0.7"),
            ("x-forwarded-proto", "https"),
        ]);
        let info = t.resolve(sa("10.0.0.1:80"), false, &h);
        assert_eq!(info.ip, "198.51.100.4".parse::<IpAddr>().unwrap());
        assert_eq!(info.scheme, Scheme::Https);
        assert!(info.forwarded);

        let h = headers(&[
            ("x-forwarded-for", "2001:db8::5"),
            ("x-forwarded-for", "fd00::2"),
        ]);
        let info = t.resolve(sa("[fd00::1]:80"), false, &h);
        assert_eq!(info.ip, "2001:db8::5".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn junk_stops_the_walk_at_the_last_trusted_hop() {
        let t = trusted(&["10.0.0.0/8"]);
        let h = headers(&[("x-forwarded-for", "1.2.3.4, garbage, 10.0.0.9")]);
        let info = t.resolve(sa("10.0.0.1:80"), false, &h);
        assert_eq!(info.ip, "10.0.0.9".parse::<IpAddr>().unwrap());
        let h = headers(&[("x-forwarded-proto", "gopher")]);
        assert_eq!(t.resolve(sa("10.0.0.1:80"), false, &h).scheme, Scheme::Http);
    }

    #[test]
    fn forwarded_syntax_with_quoted_ipv6_and_ports() {
        let t = trusted(&["10.0.0.0/8"]).header(ForwardedHeader::Forwarded);
        let h = headers(&[(
            "forwarded",
            r#"for=192.0.2.60;proto=http, for="[2001:db8:cafe::17]:4711";proto=https;host="a.example", for=10.1.2.3:8080"#,
        )]);
        let info = t.resolve(sa("10.0.0.1:80"), false, &h);
        assert_eq!(info.ip, "2001:db8:cafe::17".parse::<IpAddr>().unwrap());
        assert_eq!(info.scheme, Scheme::Https);
        // The X-Forwarded-For family is ignored in this mode.
        let h = headers(&[("x-forwarded-for", "9.9.9.9")]);
        assert_eq!(
            t.resolve(sa("10.0.0.1:80"), false, &h).ip,
            "10.0.0.1".parse::<IpAddr>().unwrap()
        );
    }

    #[test]
    fn forwarded_parser_tolerates_junk() {
        let els = parse_forwarded(
            r#"for=unknown, for="_hidden", for="[::1", ;;, proto=https;for="1.2.3.4:80""#,
        );
        assert_eq!(els.len(), 5);
        assert!(els[0].for_ip.is_none() && els[1].for_ip.is_none() && els[2].for_ip.is_none());
        assert_eq!(els[4].for_ip, Some("1.2.3.4".parse().unwrap()));
        assert_eq!(els[4].proto, Some(Scheme::Https));
    }

    #[test]
    fn node_forms() {
        assert_eq!(parse_node("1.2.3.4:80"), Some("1.2.3.4".parse().unwrap()));
        assert_eq!(
            parse_node("[2001:db8::1]:443"),
            Some("2001:db8::1".parse().unwrap())
        );
        assert_eq!(
            parse_node("::ffff:1.2.3.4"),
            Some("1.2.3.4".parse().unwrap())
        );
        assert_eq!(parse_node("1.2.3.4:"), None);
        assert_eq!(parse_node("[::1]x"), None);
        assert_eq!(parse_node("2001:db8::1:99999"), None);
        assert_eq!(parse_node("unknown"), None);
    }

    #[test]
    fn bad_cidrs_are_all_reported() {
        let err =
            TrustedProxies::parse(&["10.0.0.0/8".into(), "10.0.0.0/33".into(), "nope".into()])
                .unwrap_err();
        assert!(err.has_key("client_ip.trusted_proxies[1]"));
        assert!(err.has_key("client_ip.trusted_proxies[2]"));
    }

    #[test]
    fn no_peer_means_unspecified_and_untrusted() {
        let t = trusted(&["0.0.0.0/0"]);
        let h = headers(&[("x-forwarded-for", "1.2.3.4")]);
        let info = t.resolve(None, false, &h);
        assert_eq!(info.ip, IpAddr::V4(Ipv4Addr::UNSPECIFIED));
        assert!(!info.forwarded);
    }
}
