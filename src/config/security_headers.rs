//! `[security_headers]` configuration.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Which base set of headers to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum Profile {
    /// For JSON/HTTP APIs (the default): nothing may be framed, embedded, sniffed or
    /// run as a page. See [`crate::security_headers`] for the exact list.
    #[default]
    Api,
    /// For HTML sites: the headers helmet (Node) sends by default, same values.
    Web,
    /// No base set; only what `set` lists.
    Off,
}

/// `[security_headers]`: the response security header set.
///
/// ```toml
/// [security_headers]
/// profile = "api"                       # "api" | "web" | "off"
/// set = { "permissions-policy" = "camera=(), geolocation=()" }
/// remove = ["x-dns-prefetch-control"]  # never sent, stripped from every response
/// override_headers = []                 # names where palisade's value beats the handler's
/// exclude_paths = []                    # routes that get no security headers
/// csp_nonce = false
/// hsts_max_age_s = 31536000
/// hsts_include_subdomains = true
/// hsts_preload = false
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct SecurityHeadersConfig {
    /// The base set: `api` (default), `web` or `off`.
    pub profile: Profile,
    /// Per-header values, by header name: replace the profile's value or add a header
    /// (`permissions-policy`, `cross-origin-embedder-policy`, ...). Validated at build.
    pub set: BTreeMap<String, String>,
    /// Header names never sent: not added, and stripped from every response.
    pub remove: Vec<String>,
    /// Header names for which palisade's value replaces one the handler set; `"*"`
    /// means all. By default a handler's own value wins.
    pub override_headers: Vec<String>,
    /// Route patterns (see [`crate::route_match`]) that get no security headers.
    pub exclude_paths: Vec<String>,
    /// A fresh CSP nonce per request, added to `script-src` and `style-src` (or
    /// `default-src` when neither is present) and given to handlers as
    /// [`CspNonce`](crate::security_headers::CspNonce).
    pub csp_nonce: bool,
    /// `Strict-Transport-Security` `max-age`, seconds (0 tells browsers to forget).
    pub hsts_max_age_s: u64,
    /// Adds `includeSubDomains` to HSTS.
    pub hsts_include_subdomains: bool,
    /// Adds `preload` to HSTS (requires a max-age of at least one year and
    /// `includeSubDomains`; read hstspreload.org first, removal is slow).
    pub hsts_preload: bool,
}

impl Default for SecurityHeadersConfig {
    fn default() -> Self {
        Self {
            profile: Profile::Api,
            set: BTreeMap::new(),
            remove: Vec::new(),
            override_headers: Vec::new(),
            exclude_paths: Vec::new(),
            csp_nonce: false,
            hsts_max_age_s: 31_536_000,
            hsts_include_subdomains: true,
            hsts_preload: false,
        }
    }
}
