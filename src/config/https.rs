//! `[https]` configuration.

use serde::{Deserialize, Serialize};

/// What to do with a plain-HTTP request when HTTPS is enforced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum HttpsMode {
    /// Redirect to the same path and query over `https://` (the default).
    #[default]
    Redirect,
    /// Refuse with `400 Bad Request`: for APIs, whose clients may not follow
    /// redirects and have already sent their credentials in the clear.
    Reject,
}

/// `[https]`: HTTPS redirect and host validation.
///
/// ```toml
/// [https]
/// # redirect = true            # default: on as soon as a host is configured below
/// status = 308                 # 308 | 307 | 301 (301 only for GET/HEAD, others get 308)
/// mode = "redirect"            # "redirect" | "reject" (400)
/// canonical_host = "api.example.com"
/// allowed_hosts = ["api.example.com", "*.example.com"]
/// exempt_paths = ["/health", "/ready", "/metrics"]
/// # https_port = 8443          # default 443 (omitted from the Location)
/// trust_forwarded_host = false
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct HttpsConfig {
    /// Whether plain HTTP is refused (redirected or rejected, per `mode`). Unset
    /// (the default) means "on when `canonical_host` or `allowed_hosts` is set", so
    /// a development server on `http://127.0.0.1` works with an empty config.
    pub redirect: Option<bool>,
    /// Redirect status: 308 (default), 307 or 301.
    pub status: u16,
    /// `redirect` or `reject`.
    pub mode: HttpsMode,
    /// The host every redirect goes to. Without it, the request's host is used,
    /// and only when it is in `allowed_hosts`.
    pub canonical_host: Option<String>,
    /// Hosts this service answers for: exact names, IP literals (`[::1]`) and
    /// `*.example.com` (subdomains only). Empty means the Host is not checked.
    pub allowed_hosts: Vec<String>,
    /// Route patterns never redirected nor host-checked: probes and Prometheus call
    /// over plain HTTP by pod IP. Default `/health`, `/ready`, `/metrics`.
    pub exempt_paths: Vec<String>,
    /// The HTTPS port put in redirects; 443 (the default) is omitted.
    pub https_port: Option<u16>,
    /// Read the host our trusted proxy forwarded, from the header family of
    /// `[client_ip] header`: `X-Forwarded-Host`, or the `host=` of the right-most
    /// `Forwarded` element. Only when the peer is a trusted proxy; the value is still
    /// checked against `allowed_hosts`.
    pub trust_forwarded_host: bool,
}

impl Default for HttpsConfig {
    fn default() -> Self {
        Self {
            redirect: None,
            status: 308,
            mode: HttpsMode::Redirect,
            canonical_host: None,
            allowed_hosts: Vec::new(),
            exempt_paths: vec![
                "/health".to_owned(),
                "/ready".to_owned(),
                "/metrics".to_owned(),
            ],
            https_port: None,
            trust_forwarded_host: false,
        }
    }
}
