//! `[auth]` configuration.
//!
//! Secrets never appear here: API keys are stored as digests, the JWT HMAC secret
//! and the API-key pepper are named by the environment variable that holds them.

use serde::{Deserialize, Serialize};

/// `[auth]`: API keys, JWT and per-route rules.
///
/// The section is disabled (no layer is built) when it configures no API key, no
/// `[auth.jwt]` and no rule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct AuthConfig {
    /// Realm sent in every `WWW-Authenticate` challenge. Keep it generic: it is
    /// shown to anyone (default `"api"`).
    pub realm: String,
    /// What a route that matches no rule requires: `"none"` (default), `"api_key"`,
    /// `"jwt"` or `"any"`.
    pub default_require: String,
    /// Header carrying an API key (default `x-api-key`). `Authorization: Bearer`
    /// is accepted too; the query string never is.
    pub api_key_header: String,
    /// Optional environment variable holding a server-side pepper. When set, each
    /// `api_keys[].sha256` is the hex HMAC-SHA256 of the key under the pepper
    /// instead of its plain SHA-256.
    pub api_key_pepper_env: Option<String>,
    /// `[[auth.api_keys]]`: the accepted API keys, stored as digests.
    pub api_keys: Vec<ApiKeyConfig>,
    /// `[auth.jwt]`: JSON Web Token verification.
    pub jwt: Option<JwtConfig>,
    /// `[[auth.rules]]`: per-route requirements; the first match wins.
    pub rules: Vec<AuthRuleConfig>,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            realm: "api".to_owned(),
            default_require: "none".to_owned(),
            api_key_header: "x-api-key".to_owned(),
            api_key_pepper_env: None,
            api_keys: Vec::new(),
            jwt: None,
            rules: Vec::new(),
        }
    }
}

/// One `[[auth.api_keys]]` entry.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct ApiKeyConfig {
    /// Non-secret identifier: what logs, metrics and rate limits see.
    pub id: String,
    /// Lower- or upper-case hex of the key's SHA-256 (64 characters), or of its
    /// HMAC-SHA256 under the pepper when `api_key_pepper_env` is set.
    pub sha256: String,
    /// Scopes granted to this key.
    pub scopes: Vec<String>,
    /// Optional RFC 3339 expiry (`2027-01-31T00:00:00Z`); the key is refused after it.
    pub expires_at: Option<String>,
}

/// One `[[auth.rules]]` entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct AuthRuleConfig {
    /// Path patterns (see [`route_match`](crate::route_match)); empty = every path.
    pub paths: Vec<String>,
    /// Methods; empty = every method.
    pub methods: Vec<String>,
    /// `"api_key"`, `"jwt"`, `"any"` or `"none"` (default `"any"`).
    pub require: String,
    /// Scopes the credential must hold, all of them.
    pub scopes: Vec<String>,
}

impl Default for AuthRuleConfig {
    fn default() -> Self {
        Self {
            paths: Vec::new(),
            methods: Vec::new(),
            require: "any".to_owned(),
            scopes: Vec::new(),
        }
    }
}

/// `[auth.jwt]`: JSON Web Token verification.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct JwtConfig {
    /// Accepted algorithms (`HS256`, `RS256`, `PS256`, `ES256`, `EdDSA`, ...). Never
    /// taken from the token: a token whose `alg` is not listed for its key fails.
    pub algorithms: Vec<String>,
    /// Environment variable holding the HMAC secret (for `HS*`).
    pub secret_env: Option<String>,
    /// PEM file with the public key (for `RS*`, `PS*`, `ES*` or `EdDSA`).
    pub public_key_pem_file: Option<String>,
    /// JWKS URL (https, or http on a loopback host only).
    pub jwks_url: Option<String>,
    /// Expected `iss`; required in every token when set.
    pub issuer: Option<String>,
    /// Find `jwks_url` through OIDC discovery at `{issuer}/.well-known/openid-configuration`.
    pub discovery: bool,
    /// Accepted audiences; a token must name one. When empty, a token carrying
    /// any `aud` is refused.
    pub audience: Vec<String>,
    /// Clock-skew allowance for `exp` and `nbf`, in seconds (default 30).
    pub leeway_s: u64,
    /// Claims every token must carry (non-null).
    pub required_claims: Vec<String>,
    /// Largest accepted token, in bytes (default 8192).
    pub max_token_bytes: usize,
    /// Background JWKS refresh interval, in seconds (default 300); a shorter
    /// `Cache-Control: max-age` on the JWKS response is honoured, down to the cooldown.
    pub jwks_refresh_s: u64,
    /// Minimum time between two JWKS fetches caused by an unknown `kid`, in
    /// seconds (default 30, at least 1).
    pub jwks_cooldown_s: u64,
    /// Timeout of one JWKS or discovery fetch, in milliseconds (default 5000).
    pub jwks_timeout_ms: u64,
}

impl Default for JwtConfig {
    fn default() -> Self {
        Self {
            algorithms: Vec::new(),
            secret_env: None,
            public_key_pem_file: None,
            jwks_url: None,
            issuer: None,
            discovery: false,
            audience: Vec::new(),
            leeway_s: 30,
            required_claims: Vec::new(),
            max_token_bytes: 8192,
            jwks_refresh_s: 300,
            jwks_cooldown_s: 30,
            jwks_timeout_ms: 5000,
        }
    }
}
