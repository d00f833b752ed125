//! API-key and JWT authentication with per-route rules.
//!
//! # Why it works this way
//!
//! * **Rules, first match wins.** `[[auth.rules]]` select routes by path pattern and
//!   method and say what they `require`: `"api_key"`, `"jwt"`, `"any"` (either) or
//!   `"none"`, plus `scopes` the credential must all hold. Routes matching no rule
//!   get `default_require` (`"none"`). On a `"none"` route a credential is still
//!   verified when one is sent: a valid one gives the handler an [`Identity`], an
//!   **invalid one is a 401**, never silently anonymous.
//! * **Errors as RFC 6750 prescribes**, as `application/problem+json`: no
//!   credential → 401 with a bare challenge (`Bearer realm="api"`); a bad, expired
//!   or unknown credential → 401 `error="invalid_token"`; a valid credential without
//!   a required scope → 403 `error="insufficient_scope", scope="..."`; a malformed
//!   `Authorization` header or a key and a *different* bearer token together → 400
//!   `error="invalid_request"`. API keys sent in `x-api-key` are challenged with the
//!   analogous `ApiKey` scheme (`ApiKey realm="api", error="invalid_token"`), using
//!   RFC 6750's error codes so clients parse one vocabulary. The body never says
//!   which part of a credential was wrong. A key store or JWKS that is down (and
//!   holds no key) is a 503, not the client's fault.
//! * **Credentials only from headers**: `x-api-key` (configurable) or
//!   `Authorization: Bearer`; never the query string, where URLs end up in logs.
//!   A bearer token that looks like a JWT (it has dots) is verified as one when JWT
//!   is configured; otherwise it is tried as an API key.
//! * **Secrets never leave the layer.** The handler gets an [`Identity`] (kind, id,
//!   scopes) in the request extensions and, for JWTs, the verified claims through
//!   [`Claims`]; the outer log and metrics layers get an [`AuthOutcome`] in the
//!   response extensions. Both carry the key's configured id or the token's `sub`.
//!
//! # API keys
//!
//! Stored only as SHA-256 digests (or HMAC-SHA256 under a pepper from an
//! environment variable), each with an `id`, `scopes` and an optional RFC 3339
//! `expires_at`; several keys can be active at once for rotation. A presented key
//! is hashed once and compared with **every** stored digest in constant time, so
//! an unknown key costs exactly what a wrong one does (about 6 ns a stored key:
//! `cargo bench --all-features --bench auth -- api_key_scan`). Implement
//! [`ApiKeyStore`] to keep keys in your own database (it receives the digest,
//! never the key). See [`api_key`] for how to generate a key and its digest.
//!
//! # JWT (feature `jwt`)
//!
//! * Algorithms are pinned in `[auth.jwt] algorithms`, never taken from the token:
//!   the HMAC secret (`secret_env`) serves only the listed `HS*`, a PEM key or a
//!   JWKS key only the listed algorithms of its own family (and, for a JWK that
//!   declares one, only its `alg`). `alg: none`, an HS256 token signed with the RSA
//!   public key, or an unlisted algorithm are all `invalid_token`.
//! * Checked in this order: size (`max_token_bytes`, 8 KiB) before any decoding;
//!   three non-empty segments; header (`crit` refused; `jku`, `x5u`, `jwk`, `x5c`
//!   ignored and never fetched); signature; then the claims: `exp` required and
//!   numeric, `nbf` numeric when present, both with `leeway_s` (30 s); `iss` and
//!   `aud` when configured (a token carrying `aud` is refused when no audience is
//!   configured); `required_claims`; a registered claim appearing twice is
//!   refused. The identity id is `sub` (or `client_id`); scopes come from `scope`
//!   (space separated) and the `scp` / `permissions` arrays.
//! * JWKS from `jwks_url`, or from `{issuer}/.well-known/openid-configuration`
//!   with `discovery = true` (its `issuer` must equal the configured one). Fetched
//!   at start-up, refreshed in the background every `jwks_refresh_s` (sooner
//!   when the response's `Cache-Control: max-age` asks, never more often than the
//!   cooldown) until shutdown, refetched on an unknown `kid` at most once per `jwks_cooldown_s`
//!   (single-flight; the read path never waits for the network), and the keys
//!   held are kept when the endpoint fails. Only `https` URLs are accepted, except
//!   plain `http` on loopback hosts (`127.0.0.0/8`, `::1`, `localhost`) for local
//!   identity providers and tests. TLS is rustls on aws-lc-rs, the same crypto
//!   library that verifies signatures, with the Mozilla root store.
//!
//! # Example
//!
//! ```
//! use axum::{Router, routing::get};
//! use palisade::auth::{AuthLayer, Require};
//! use palisade::Identity;
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), palisade::ConfigError> {
//! // The key is "demo-key"; only its SHA-256 is configured.
//! let auth = AuthLayer::builder()
//!     .api_key("ops", "c48a01f49fd0f2cc404bc3cbbc80e91457a3d41bb429a695243de4c61794155c", ["admin"])
//!     .rule(["/admin/*"], [] as [&str; 0], Require::ApiKey, ["admin"])
//!     .build()
//!     .await?;
//! let app: Router = Router::new()
//!     .route("/admin/stats", get(|who: Identity| async move { format!("hello {}", who.id) }))
//!     .layer(auth);
//! # let _ = app; Ok(()) }
//! ```
//!
//! [`Identity`]: crate::identity::Identity
//! [`AuthOutcome`]: crate::outcome::AuthOutcome

use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::extract::Request;
use axum::response::{IntoResponse, Response};
use http::header::{AUTHORIZATION, HeaderName, HeaderValue, RETRY_AFTER, WWW_AUTHENTICATE};
use http::{HeaderMap, StatusCode};
use pin_project_lite::pin_project;
use tower::{Layer, Service};

use crate::config::AuthConfig;
use crate::config::auth::AuthRuleConfig;
use crate::error::ConfigError;
use crate::identity::{Identity, IdentityKind};
use crate::outcome::{self, AuthOutcome};
use crate::problem::Problem;
use crate::route_match::RouteMatcher;
use crate::shutdown::Shutdown;
use crate::stack::BuildContext;

#[cfg(feature = "api-key")]
pub mod api_key;
mod extract;
#[cfg(feature = "jwt")]
mod jwks;
#[cfg(feature = "jwt")]
mod jwt;

#[cfg(feature = "api-key")]
pub use api_key::{ApiKeyRecord, ApiKeyStore, ApiKeyStoreError, KeyDigest, StaticKeyStore};
pub use extract::{Claims, ClaimsRejection};

/// What a route requires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Require {
    /// Nothing; a credential that is sent is still verified.
    None,
    /// An API key.
    ApiKey,
    /// A JWT.
    Jwt,
    /// An API key or a JWT.
    Any,
}

impl Require {
    /// Parses `"none"`, `"api_key"`, `"jwt"` or `"any"`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "none" => Some(Self::None),
            "api_key" => Some(Self::ApiKey),
            "jwt" => Some(Self::Jwt),
            "any" => Some(Self::Any),
            _ => None,
        }
    }

    fn accepts_api_key(self) -> bool {
        !matches!(self, Self::Jwt)
    }

    fn accepts_jwt(self) -> bool {
        !matches!(self, Self::ApiKey)
    }
}

/// The time source for expiry checks, in seconds since the Unix epoch.
///
/// [`Clock::system`] by default; tests inject a fixed or steerable clock.
#[derive(Clone)]
pub struct Clock(Arc<dyn Fn() -> u64 + Send + Sync>);

impl fmt::Debug for Clock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Clock")
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::system()
    }
}

impl Clock {
    /// The system clock.
    pub fn system() -> Self {
        Self(Arc::new(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs())
        }))
    }

    /// A clock reading `f`.
    pub fn from_fn(f: impl Fn() -> u64 + Send + Sync + 'static) -> Self {
        Self(Arc::new(f))
    }

    /// The current time in seconds since the Unix epoch.
    pub fn now(&self) -> u64 {
        (self.0)()
    }
}

/// Precomputed `WWW-Authenticate` values.
#[derive(Debug)]
struct Challenges {
    bearer: HeaderValue,
    bearer_invalid: HeaderValue,
    bearer_bad_request: HeaderValue,
    api_key: HeaderValue,
    api_key_invalid: HeaderValue,
    api_key_bad_request: HeaderValue,
}

impl Challenges {
    fn new(realm: &str) -> Result<Self, ConfigError> {
        let v = |s: String| {
            HeaderValue::from_str(&s)
                .map_err(|_| ConfigError::new("auth.realm", "not a valid header value"))
        };
        Ok(Self {
            bearer: v(format!("Bearer realm=\"{realm}\""))?,
            bearer_invalid: v(format!("Bearer realm=\"{realm}\", error=\"invalid_token\""))?,
            bearer_bad_request: v(format!(
                "Bearer realm=\"{realm}\", error=\"invalid_request\""
            ))?,
            api_key: v(format!("ApiKey realm=\"{realm}\""))?,
            api_key_invalid: v(format!("ApiKey realm=\"{realm}\", error=\"invalid_token\""))?,
            api_key_bad_request: v(format!(
                "ApiKey realm=\"{realm}\", error=\"invalid_request\""
            ))?,
        })
    }
}

#[derive(Debug)]
struct Rule {
    matcher: RouteMatcher,
    action: Action,
}

#[derive(Debug)]
struct Action {
    require: Require,
    scopes: Vec<String>,
    forbidden_bearer: HeaderValue,
    forbidden_api_key: HeaderValue,
}

impl Action {
    fn new(require: Require, scopes: Vec<String>, realm: &str) -> Self {
        let scope = scopes.join(" ");
        let mk = |scheme: &str| {
            HeaderValue::from_str(&format!(
                "{scheme} realm=\"{realm}\", error=\"insufficient_scope\", scope=\"{scope}\""
            ))
            .unwrap_or_else(|_| HeaderValue::from_static("Bearer error=\"insufficient_scope\""))
        };
        Self {
            require,
            forbidden_bearer: mk("Bearer"),
            forbidden_api_key: mk("ApiKey"),
            scopes,
        }
    }
}

/// Where a credential came from; decides the challenge scheme in the answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Via {
    ApiKeyHeader,
    Bearer,
}

struct State {
    challenges: Challenges,
    rules: Vec<Rule>,
    default: Action,
    api_key_header: HeaderName,
    #[cfg(feature = "api-key")]
    api_keys: Option<(api_key::KeyHasher, Arc<dyn ApiKeyStore>)>,
    #[cfg(feature = "jwt")]
    jwt: Option<jwt::JwtVerifier>,
    clock: Clock,
}

impl fmt::Debug for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("AuthState");
        d.field("rules", &self.rules.len())
            .field("default", &self.default.require)
            .field("api_key_header", &self.api_key_header);
        #[cfg(feature = "api-key")]
        d.field("api_keys", &self.api_keys.is_some());
        #[cfg(feature = "jwt")]
        d.field("jwt", &self.jwt);
        d.finish_non_exhaustive()
    }
}

/// Layer for `[auth]`: verifies credentials per route and records an [`Identity`].
#[derive(Debug, Clone)]
pub struct AuthLayer {
    state: Arc<State>,
    /// Attach the outcome record to every response (see `RateLimitLayer::recording`).
    record: bool,
}

/// Code-first construction of an [`AuthLayer`]; everything is validated in
/// [`build`](AuthBuilder::build), which reports every problem at once.
#[derive(Default)]
#[must_use]
pub struct AuthBuilder {
    config: AuthConfig,
    #[cfg(feature = "api-key")]
    store: Option<Arc<dyn ApiKeyStore>>,
    clock: Option<Clock>,
    shutdown: Option<Shutdown>,
    #[cfg(feature = "jwt")]
    jwt_secret: Option<Vec<u8>>,
}

impl fmt::Debug for AuthBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthBuilder")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl AuthBuilder {
    /// Starts from a whole `[auth]` section.
    pub fn config(mut self, config: AuthConfig) -> Self {
        self.config = config;
        self
    }

    /// Sets the challenge realm (default `"api"`).
    pub fn realm(mut self, realm: impl Into<String>) -> Self {
        self.config.realm = realm.into();
        self
    }

    /// What routes matching no rule require (default [`Require::None`]).
    pub fn default_require(mut self, require: Require) -> Self {
        self.config.default_require = require_name(require).to_owned();
        self
    }

    /// Adds a rule; rules are tried in the order they were added.
    pub fn rule<P, M, S>(
        mut self,
        paths: impl IntoIterator<Item = P>,
        methods: impl IntoIterator<Item = M>,
        require: Require,
        scopes: impl IntoIterator<Item = S>,
    ) -> Self
    where
        P: Into<String>,
        M: Into<String>,
        S: Into<String>,
    {
        self.config.rules.push(AuthRuleConfig {
            paths: paths.into_iter().map(Into::into).collect(),
            methods: methods.into_iter().map(Into::into).collect(),
            require: require_name(require).to_owned(),
            scopes: scopes.into_iter().map(Into::into).collect(),
        });
        self
    }

    /// Adds an API key by the hex SHA-256 of its value.
    #[cfg(feature = "api-key")]
    pub fn api_key<S: Into<String>>(
        mut self,
        id: impl Into<String>,
        sha256_hex: impl Into<String>,
        scopes: impl IntoIterator<Item = S>,
    ) -> Self {
        self.config
            .api_keys
            .push(crate::config::auth::ApiKeyConfig {
                id: id.into(),
                sha256: sha256_hex.into(),
                scopes: scopes.into_iter().map(Into::into).collect(),
                expires_at: None,
            });
        self
    }

    /// Looks API keys up in your own store instead of `[[auth.api_keys]]`.
    #[cfg(feature = "api-key")]
    pub fn api_key_store(mut self, store: impl ApiKeyStore) -> Self {
        self.store = Some(Arc::new(store));
        self
    }

    /// Configures JWT verification (`[auth.jwt]`).
    #[cfg(feature = "jwt")]
    pub fn jwt(mut self, jwt: crate::config::auth::JwtConfig) -> Self {
        self.config.jwt = Some(jwt);
        self
    }

    /// Gives the JWT HMAC secret directly (for secrets from a vault), instead of
    /// `[auth.jwt] secret_env`.
    #[cfg(feature = "jwt")]
    pub fn jwt_hmac_secret(mut self, secret: impl Into<Vec<u8>>) -> Self {
        self.jwt_secret = Some(secret.into());
        self
    }

    /// Replaces the clock used for expiry checks (tests).
    pub fn clock(mut self, clock: Clock) -> Self {
        self.clock = Some(clock);
        self
    }

    /// Stops background tasks (JWKS refresh) when this signal triggers.
    pub fn shutdown(mut self, shutdown: Shutdown) -> Self {
        self.shutdown = Some(shutdown);
        self
    }

    /// Validates everything and builds the layer. Fetches the JWKS once, if one is
    /// configured (a failure there is logged and retried, not an error).
    pub async fn build(self) -> Result<AuthLayer, ConfigError> {
        let cfg = &self.config;
        let mut errors = ConfigError::default();
        if cfg.realm.is_empty()
            || cfg
                .realm
                .chars()
                .any(|c| c == '"' || c == '\\' || !(' '..='~').contains(&c))
        {
            errors.push(
                "auth.realm",
                "printable ASCII without quotes or backslashes, not empty",
            );
        }
        let challenges = Challenges::new(&cfg.realm);
        let default_require = match Require::parse(&cfg.default_require) {
            Some(r) => r,
            None => {
                errors.push(
                    "auth.default_require",
                    format!(
                        "{:?}: use \"none\", \"api_key\", \"jwt\" or \"any\"",
                        cfg.default_require
                    ),
                );
                Require::None
            }
        };
        let api_key_header = match HeaderName::from_bytes(cfg.api_key_header.as_bytes()) {
            Ok(h) if h != AUTHORIZATION => h,
            _ => {
                errors.push(
                    "auth.api_key_header",
                    format!("{:?} is not a usable header name", cfg.api_key_header),
                );
                HeaderName::from_static("x-api-key")
            }
        };
        let mut uses_api_key = default_require == Require::ApiKey;
        let mut uses_jwt = default_require == Require::Jwt;
        let mut rules = Vec::with_capacity(cfg.rules.len());
        for (i, r) in cfg.rules.iter().enumerate() {
            let key = format!("auth.rules[{i}]");
            let matcher = errors.collect(RouteMatcher::compile(&key, &r.paths, &r.methods));
            let require = match Require::parse(&r.require) {
                Some(req) => req,
                None => {
                    errors.push(
                        format!("{key}.require"),
                        format!(
                            "{:?}: use \"none\", \"api_key\", \"jwt\" or \"any\"",
                            r.require
                        ),
                    );
                    Require::Any
                }
            };
            uses_api_key |= require == Require::ApiKey;
            uses_jwt |= require == Require::Jwt;
            for (j, s) in r.scopes.iter().enumerate() {
                if s.is_empty()
                    || s.chars()
                        .any(|c| !('!'..='~').contains(&c) || c == '"' || c == '\\')
                {
                    errors.push(
                        format!("{key}.scopes[{j}]"),
                        "scopes are printable ASCII without white space, quotes or backslashes",
                    );
                }
            }
            if require == Require::None && !r.scopes.is_empty() {
                errors.push(
                    format!("{key}.scopes"),
                    "a rule requiring \"none\" cannot require scopes",
                );
            }
            if let Some(matcher) = matcher {
                rules.push(Rule {
                    matcher,
                    action: Action::new(require, r.scopes.clone(), &cfg.realm),
                });
            }
        }

        #[cfg(feature = "api-key")]
        let api_keys = {
            let hasher = match &cfg.api_key_pepper_env {
                None => Some(api_key::KeyHasher::sha256()),
                Some(var) => match std::env::var(var) {
                    Ok(p) if p.len() >= 16 => Some(api_key::KeyHasher::peppered(p.as_bytes())),
                    Ok(_) => {
                        errors.push(
                            "auth.api_key_pepper_env",
                            format!("the pepper in ${var} is shorter than 16 bytes"),
                        );
                        None
                    }
                    Err(_) => {
                        errors.push(
                            "auth.api_key_pepper_env",
                            format!("environment variable ${var} is not set (or not UTF-8)"),
                        );
                        None
                    }
                },
            };
            let store: Option<Arc<dyn ApiKeyStore>> = match self.store {
                Some(s) => Some(s),
                None if !cfg.api_keys.is_empty() => errors
                    .collect(api_key::static_store_from_config(&cfg.api_keys))
                    .map(|s| Arc::new(s) as Arc<dyn ApiKeyStore>),
                None => None,
            };
            if uses_api_key && store.is_none() && cfg.api_keys.is_empty() {
                errors.push(
                    "auth.api_keys",
                    "a rule requires \"api_key\" but no API key is configured",
                );
            }
            hasher.zip(store)
        };
        #[cfg(not(feature = "api-key"))]
        if !cfg.api_keys.is_empty() || cfg.api_key_pepper_env.is_some() || uses_api_key {
            errors.push(
                "auth.api_keys",
                "API keys are configured but palisade was built without the `api-key` feature",
            );
        }

        #[cfg(feature = "jwt")]
        let jwt = cfg.jwt.as_ref().and_then(|j| {
            errors.collect(jwt::JwtVerifier::from_config(j, self.jwt_secret.as_deref()))
        });
        #[cfg(not(feature = "jwt"))]
        if cfg.jwt.is_some() {
            errors.push(
                "auth.jwt",
                "JWT is configured but palisade was built without the `jwt` feature",
            );
        }
        if uses_jwt && cfg.jwt.is_none() {
            errors.push(
                "auth.jwt",
                "a rule requires \"jwt\" but there is no [auth.jwt] section",
            );
        }
        let challenges = errors.collect(challenges);
        errors.into_result()?;
        let Some(challenges) = challenges else {
            return Err(ConfigError::new("auth.realm", "invalid realm"));
        };
        let realm = cfg.realm.clone();
        // Only a fully valid configuration touches the network.
        #[cfg(feature = "jwt")]
        if let Some(j) = &jwt {
            j.start(self.shutdown.clone().unwrap_or_default()).await;
        }
        Ok(AuthLayer {
            record: false,
            state: Arc::new(State {
                challenges,
                rules,
                default: Action::new(default_require, Vec::new(), &realm),
                api_key_header,
                #[cfg(feature = "api-key")]
                api_keys,
                #[cfg(feature = "jwt")]
                jwt,
                clock: self.clock.unwrap_or_default(),
            }),
        })
    }
}

fn require_name(r: Require) -> &'static str {
    match r {
        Require::None => "none",
        Require::ApiKey => "api_key",
        Require::Jwt => "jwt",
        Require::Any => "any",
    }
}

impl AuthLayer {
    /// `true` when the stack's access log or metrics read this layer's records: attach
    /// them to every response (no request marker needed, so no extension insert per
    /// request).
    pub(crate) fn recording(mut self, on: bool) -> Self {
        self.record = on;
        self
    }

    /// Builds the layer from its config section; `None` when the section configures
    /// nothing. Every problem (missing environment variable, unreadable PEM, bad
    /// digest, bad `expires_at`, unknown algorithm, rules needing an unconfigured
    /// credential type, ...) is reported together.
    pub async fn from_config(
        config: &AuthConfig,
        ctx: &BuildContext,
    ) -> Result<Option<Self>, ConfigError> {
        if config.api_keys.is_empty()
            && config.jwt.is_none()
            && config.rules.is_empty()
            && config.default_require == "none"
        {
            return Ok(None);
        }
        Self::builder()
            .config(config.clone())
            .shutdown(ctx.shutdown.clone())
            .build()
            .await
            .map(Some)
    }

    /// A builder for code-first set-up.
    pub fn builder() -> AuthBuilder {
        AuthBuilder::default()
    }

    /// Number of JWKS fetches attempted so far (0 without a JWKS).
    #[cfg(feature = "jwt")]
    pub fn jwks_fetch_count(&self) -> u64 {
        self.state
            .jwt
            .as_ref()
            .and_then(|j| j.jwks())
            .map_or(0, |j| j.fetch_count())
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = Auth<S>;
    fn layer(&self, inner: S) -> Auth<S> {
        Auth {
            inner,
            state: self.state.clone(),
            record: self.record,
        }
    }
}

/// Service made by [`AuthLayer`].
#[derive(Debug, Clone)]
pub struct Auth<S> {
    inner: S,
    state: Arc<State>,
    record: bool,
}

/// The layer's decision before the handler runs.
enum Verdict {
    Anonymous,
    Allowed(Identity, Option<extract::VerifiedClaims>),
    Rejected(Response),
}

/// Where [`State::start`] left a request: decided, or a credential to verify.
enum Step<'a> {
    Done(Verdict),
    Verify(Verify<'a>),
}

/// A credential this route takes, not yet verified.
struct Verify<'a> {
    action: &'a Action,
    credential: &'a str,
    via: Via,
    as_jwt: bool,
}

/// Failure of credential verification.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Failure {
    Invalid,
    Expired,
    Unavailable,
}

fn outcome(scheme: &'static str, identity: Option<Arc<str>>, outcome: &'static str) -> AuthOutcome {
    AuthOutcome {
        scheme,
        identity,
        outcome,
    }
}

impl State {
    fn action(&self, req: &http::request::Parts) -> &Action {
        let method = &req.method;
        let path = req.uri.path();
        self.rules
            .iter()
            .find(|r| r.matcher.matches(method, path))
            .map_or(&self.default, |r| &r.action)
    }

    fn reject(
        &self,
        status: StatusCode,
        challenges: &[&HeaderValue],
        reason: &'static str,
        detail: &'static str,
        out: AuthOutcome,
    ) -> Response {
        let mut p = Problem::new(status)
            .detail(detail)
            .rejection("auth", reason);
        for c in challenges {
            p = p.header(WWW_AUTHENTICATE, (*c).clone());
        }
        if status == StatusCode::SERVICE_UNAVAILABLE {
            p = p.header(RETRY_AFTER, HeaderValue::from_static("5"));
        }
        let mut res = p.into_response();
        res.extensions_mut().insert(out);
        res
    }

    /// 401 with the bare challenge(s) of the schemes `require` accepts.
    fn missing(&self, require: Require) -> Response {
        let c = &self.challenges;
        let list: &[&HeaderValue] = match require {
            Require::ApiKey => &[&c.api_key],
            Require::Jwt => &[&c.bearer],
            _ => &[&c.api_key, &c.bearer],
        };
        self.reject(
            StatusCode::UNAUTHORIZED,
            list,
            "missing_credentials",
            "credentials are required",
            outcome("none", None, "missing"),
        )
    }

    fn bad_request(&self, via: Via, detail: &'static str) -> Response {
        let c = match via {
            Via::ApiKeyHeader => &self.challenges.api_key_bad_request,
            Via::Bearer => &self.challenges.bearer_bad_request,
        };
        self.reject(
            StatusCode::BAD_REQUEST,
            &[c],
            "invalid_request",
            detail,
            outcome("none", None, "bad_request"),
        )
    }

    /// The verdict, awaiting the key store or JWKS when needed.
    async fn decide(&self, req: &http::request::Parts) -> Verdict {
        match self.start(req) {
            Step::Done(verdict) => verdict,
            Step::Verify(v) => {
                let result = if v.as_jwt {
                    self.verify_jwt(v.credential, v.action.require).await
                } else {
                    self.verify_api_key(v.credential, v.action.require).await
                };
                self.finish(&v, result)
            }
        }
    }

    /// The verdict when it needs no waiting (no credential, a malformed one, an API
    /// key in a store that answers at once); `None` when [`decide`](Self::decide)
    /// must run.
    fn decide_now(&self, req: &http::request::Parts) -> Option<Verdict> {
        match self.start(req) {
            Step::Done(verdict) => Some(verdict),
            Step::Verify(v) if !v.as_jwt => {
                let result = self.verify_api_key_now(v.credential, v.action.require)?;
                Some(self.finish(&v, result))
            }
            Step::Verify(_) => None,
        }
    }

    /// Everything before the credential is verified: header syntax, which credential,
    /// whether this route takes it.
    fn start<'a>(&'a self, req: &'a http::request::Parts) -> Step<'a> {
        let action = self.action(req);
        let headers = &req.headers;
        let api_key = match single_header(headers, &self.api_key_header) {
            Ok(v) => v,
            Err(()) => {
                return Step::Done(Verdict::Rejected(self.bad_request(
                    Via::ApiKeyHeader,
                    "the API key header is malformed or repeated",
                )));
            }
        };
        let bearer = match bearer_token(headers) {
            Ok(v) => v,
            Err(()) => {
                return Step::Done(Verdict::Rejected(
                    self.bad_request(Via::Bearer, "the Authorization header is malformed"),
                ));
            }
        };
        // A key and a different bearer token: ambiguous, refuse (RFC 6750 §2).
        if let (Some(k), Some(b)) = (api_key, bearer)
            && k != b
        {
            return Step::Done(Verdict::Rejected(
                self.bad_request(Via::Bearer, "credentials were sent in more than one way"),
            ));
        }
        let require = action.require;
        let (credential, via) = match (api_key, bearer) {
            (Some(k), _) => (k, Via::ApiKeyHeader),
            (None, Some(b)) => (b, Via::Bearer),
            (None, None) if require == Require::None => return Step::Done(Verdict::Anonymous),
            (None, None) => return Step::Done(Verdict::Rejected(self.missing(require))),
        };
        let as_jwt = via == Via::Bearer && self.treat_as_jwt(credential, require);
        // A credential of a kind this route does not take counts as none: the
        // answer names the schemes the route does take.
        let accepted = if as_jwt {
            require.accepts_jwt()
        } else {
            require.accepts_api_key()
        };
        if !accepted {
            return Step::Done(Verdict::Rejected(self.missing(require)));
        }
        Step::Verify(Verify {
            action,
            credential,
            via,
            as_jwt,
        })
    }

    /// The verdict from the verification result.
    fn finish(
        &self,
        v: &Verify<'_>,
        result: Result<(Identity, Option<extract::VerifiedClaims>), Failure>,
    ) -> Verdict {
        let (action, via) = (v.action, v.via);
        let scheme = if v.as_jwt { "jwt" } else { "api_key" };
        let invalid = match via {
            Via::ApiKeyHeader => &self.challenges.api_key_invalid,
            Via::Bearer => &self.challenges.bearer_invalid,
        };
        let (identity, claims) = match result {
            Ok(v) => v,
            Err(Failure::Unavailable) => {
                return Verdict::Rejected(self.reject(
                    StatusCode::SERVICE_UNAVAILABLE,
                    &[],
                    "unavailable",
                    "authentication is temporarily unavailable",
                    outcome(scheme, None, "unavailable"),
                ));
            }
            Err(f) => {
                let (reason, what) = if f == Failure::Expired {
                    ("expired", "expired")
                } else {
                    ("invalid_token", "invalid")
                };
                return Verdict::Rejected(self.reject(
                    StatusCode::UNAUTHORIZED,
                    &[invalid],
                    reason,
                    "the credentials are not valid",
                    outcome(scheme, None, what),
                ));
            }
        };
        if action.scopes.iter().any(|s| !identity.has_scope(s)) {
            let c = match via {
                Via::ApiKeyHeader => &action.forbidden_api_key,
                Via::Bearer => &action.forbidden_bearer,
            };
            return Verdict::Rejected(self.reject(
                StatusCode::FORBIDDEN,
                &[c],
                "insufficient_scope",
                "the credentials lack a required scope",
                outcome(scheme, Some(identity.id.clone()), "forbidden"),
            ));
        }
        Verdict::Allowed(identity, claims)
    }

    /// Whether a bearer token is verified as a JWT rather than as an API key.
    fn treat_as_jwt(&self, token: &str, require: Require) -> bool {
        #[cfg(feature = "jwt")]
        {
            if self.jwt.is_none() {
                return false;
            }
            #[cfg(feature = "api-key")]
            if self.api_keys.is_some() {
                return match require {
                    Require::Jwt => true,
                    Require::ApiKey => false,
                    _ => token.contains('.'),
                };
            }
            let _ = (token, require);
            true
        }
        #[cfg(not(feature = "jwt"))]
        {
            let _ = (token, require);
            false
        }
    }

    async fn verify_api_key(
        &self,
        key: &str,
        require: Require,
    ) -> Result<(Identity, Option<extract::VerifiedClaims>), Failure> {
        if !require.accepts_api_key() {
            return Err(Failure::Invalid);
        }
        #[cfg(feature = "api-key")]
        {
            let Some((hasher, store)) = &self.api_keys else {
                return Err(Failure::Invalid);
            };
            if key.is_empty() || key.len() > api_key::MAX_API_KEY_BYTES {
                return Err(Failure::Invalid);
            }
            let digest = hasher.digest(key.as_bytes());
            self.api_key_record(store.lookup(&digest).await)
        }
        #[cfg(not(feature = "api-key"))]
        {
            let _ = key;
            Err(Failure::Invalid)
        }
    }

    /// [`verify_api_key`](Self::verify_api_key) without waiting: `None` when the store
    /// cannot answer at once.
    fn verify_api_key_now(
        &self,
        key: &str,
        require: Require,
    ) -> Option<Result<(Identity, Option<extract::VerifiedClaims>), Failure>> {
        if !require.accepts_api_key() {
            return Some(Err(Failure::Invalid));
        }
        #[cfg(feature = "api-key")]
        {
            let Some((hasher, store)) = &self.api_keys else {
                return Some(Err(Failure::Invalid));
            };
            if key.is_empty() || key.len() > api_key::MAX_API_KEY_BYTES {
                return Some(Err(Failure::Invalid));
            }
            let digest = hasher.digest(key.as_bytes());
            Some(self.api_key_record(store.lookup_now(&digest)?))
        }
        #[cfg(not(feature = "api-key"))]
        {
            let _ = key;
            Some(Err(Failure::Invalid))
        }
    }

    #[cfg(feature = "api-key")]
    fn api_key_record(
        &self,
        found: Result<Option<api_key::ApiKeyRecord>, api_key::ApiKeyStoreError>,
    ) -> Result<(Identity, Option<extract::VerifiedClaims>), Failure> {
        match found {
            Ok(Some(rec)) => {
                if rec.expires_at.is_some_and(|t| self.clock.now() >= t) {
                    return Err(Failure::Expired);
                }
                Ok((
                    Identity::new(IdentityKind::ApiKey, rec.id, rec.scopes),
                    None,
                ))
            }
            Ok(None) => Err(Failure::Invalid),
            Err(e) => {
                tracing::warn!(error = %e, "API key store failed");
                Err(Failure::Unavailable)
            }
        }
    }

    async fn verify_jwt(
        &self,
        token: &str,
        require: Require,
    ) -> Result<(Identity, Option<extract::VerifiedClaims>), Failure> {
        if !require.accepts_jwt() {
            return Err(Failure::Invalid);
        }
        #[cfg(feature = "jwt")]
        {
            let Some(verifier) = &self.jwt else {
                return Err(Failure::Invalid);
            };
            match verifier.verify(token, &self.clock).await {
                Ok(v) => Ok((
                    Identity::new(IdentityKind::Jwt, v.subject, v.scopes),
                    Some(extract::VerifiedClaims(v.claims)),
                )),
                Err(jwt::JwtError::Expired) => Err(Failure::Expired),
                Err(jwt::JwtError::Unavailable) => Err(Failure::Unavailable),
                Err(jwt::JwtError::Invalid(reason)) => {
                    tracing::debug!(reason, "JWT refused");
                    Err(Failure::Invalid)
                }
            }
        }
        #[cfg(not(feature = "jwt"))]
        {
            let _ = token;
            Err(Failure::Invalid)
        }
    }
}

/// The value of a header that must appear at most once, as visible ASCII.
fn single_header<'a>(headers: &'a HeaderMap, name: &HeaderName) -> Result<Option<&'a str>, ()> {
    let mut values = headers.get_all(name).iter();
    let Some(first) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(());
    }
    let s = first.to_str().map_err(|_| ())?.trim();
    if s.is_empty() || s.bytes().any(|b| !b.is_ascii_graphic()) {
        return Err(());
    }
    Ok(Some(s))
}

/// The token of `Authorization: Bearer <token>`; other schemes are not ours and
/// are ignored. The scheme is case-insensitive (RFC 9110 §11.1).
fn bearer_token(headers: &HeaderMap) -> Result<Option<&str>, ()> {
    let mut values = headers.get_all(AUTHORIZATION).iter();
    let Some(first) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(());
    }
    let s = first.to_str().map_err(|_| ())?;
    let s = s.trim_matches(' ');
    let (scheme, rest) = match s.split_once(' ') {
        Some((scheme, rest)) => (scheme, rest.trim_start_matches(' ')),
        None => (s, ""),
    };
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Ok(None);
    }
    // token68 (RFC 6750 §2.1).
    let valid = !rest.is_empty()
        && rest.trim_end_matches('=').bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'+' | b'/')
        });
    if valid { Ok(Some(rest)) } else { Err(()) }
}

impl<S> Service<Request> for Auth<S>
where
    S: Service<Request, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = Infallible;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request) -> Self::Future {
        let (mut parts, body) = req.into_parts();
        // Rejections always carry their outcome (the response has extensions already);
        // an admitted request's is attached only when someone reads it.
        let record = self.record || outcome::wanted(&parts.extensions);
        // Most requests (no credential, a malformed one, an in-memory API key) are
        // decided without waiting: no boxed future, no clone of the inner service.
        if let Some(verdict) = self.state.decide_now(&parts) {
            return match admit(verdict, &mut parts) {
                Err(res) => ResponseFuture::ready(res),
                Ok(out) => ResponseFuture::inner(
                    self.inner.call(Request::from_parts(parts, body)),
                    record.then_some(out),
                ),
            };
        }
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let state = self.state.clone();
        ResponseFuture::boxed(Box::pin(async move {
            // `Parts` is `Sync`, the body is not: decide on the head alone.
            let verdict = state.decide(&parts).await;
            let out = match admit(verdict, &mut parts) {
                Err(res) => return Ok(res),
                Ok(out) => out,
            };
            let mut res = inner.call(Request::from_parts(parts, body)).await?;
            if record {
                res.extensions_mut().insert(out);
            }
            Ok(res)
        }))
    }
}

/// A rejection's response, or the outcome to attach to the handler's response (the
/// identity is put into the request extensions).
// The rejection is handed on as is; boxing it would allocate on every refusal.
#[allow(clippy::result_large_err)]
fn admit(verdict: Verdict, parts: &mut http::request::Parts) -> Result<AuthOutcome, Response> {
    match verdict {
        Verdict::Rejected(res) => Err(res),
        Verdict::Anonymous => Ok(outcome("none", None, "anonymous")),
        Verdict::Allowed(identity, claims) => {
            let out = outcome(identity.kind.as_str(), Some(identity.id.clone()), "ok");
            parts.extensions.insert(identity);
            if let Some(c) = claims {
                parts.extensions.insert(c);
            }
            Ok(out)
        }
    }
}

pin_project! {
    /// Response future of [`Auth`].
    pub struct ResponseFuture<F> {
        #[pin]
        kind: Kind<F>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<F> {
        Ready { res: Option<Response> },
        Inner { #[pin] future: F, out: Option<AuthOutcome> },
        Boxed { future: BoxFuture },
    }
}

type BoxFuture = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

impl<F> ResponseFuture<F> {
    fn ready(res: Response) -> Self {
        Self {
            kind: Kind::Ready { res: Some(res) },
        }
    }
    fn inner(future: F, out: Option<AuthOutcome>) -> Self {
        Self {
            kind: Kind::Inner { future, out },
        }
    }
    fn boxed(future: BoxFuture) -> Self {
        Self {
            kind: Kind::Boxed { future },
        }
    }
}

impl<F> fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl<F> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response, Infallible>>,
{
    type Output = Result<Response, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Ready { res } => match res.take() {
                Some(res) => Poll::Ready(Ok(res)),
                None => panic!("auth::ResponseFuture polled after completion"),
            },
            KindProj::Inner { future, out } => {
                let Ok(mut res) = std::task::ready!(future.poll(cx));
                if let Some(out) = out.take() {
                    res.extensions_mut().insert(out);
                }
                Poll::Ready(Ok(res))
            }
            KindProj::Boxed { future } => future.as_mut().poll(cx),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

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

    #[test]
    fn bearer_parsing() {
        assert_eq!(bearer_token(&headers(&[])), Ok(None));
        assert_eq!(
            bearer_token(&headers(&[("authorization", "Bearer abc")])),
            Ok(Some("abc"))
        );
        assert_eq!(
            bearer_token(&headers(&[("authorization", "bearer   a.b.c")])),
            Ok(Some("a.b.c"))
        );
        assert_eq!(
            bearer_token(&headers(&[("authorization", "Basic dXNlcjpwYXNz")])),
            Ok(None)
        );
        assert_eq!(
            bearer_token(&headers(&[("authorization", "Bearer")])),
            Err(())
        );
        assert_eq!(
            bearer_token(&headers(&[("authorization", "Bearer a b")])),
            Err(())
        );
        assert_eq!(
            bearer_token(&headers(&[
                ("authorization", "Bearer a"),
                ("authorization", "Bearer b")
            ])),
            Err(())
        );
    }

    #[test]
    fn api_key_header_parsing() {
        let name = HeaderName::from_static("x-api-key");
        assert_eq!(
            single_header(&headers(&[("x-api-key", "k")]), &name),
            Ok(Some("k"))
        );
        assert_eq!(
            single_header(&headers(&[("x-api-key", "a"), ("x-api-key", "b")]), &name),
            Err(())
        );
        assert_eq!(
            single_header(&headers(&[("x-api-key", "a b")]), &name),
            Err(())
        );
    }
}

/// The credential parsers, for [`crate::fuzzing`] only.
#[cfg(feature = "fuzzing")]
pub(crate) mod fuzz_access {
    #[cfg(feature = "jwt")]
    pub(crate) use super::jwt::{JwtError, JwtVerifier};
    use http::{HeaderMap, HeaderName};

    pub(crate) fn bearer(headers: &HeaderMap) -> Result<Option<&str>, ()> {
        super::bearer_token(headers)
    }

    pub(crate) fn api_key<'a>(
        headers: &'a HeaderMap,
        name: &HeaderName,
    ) -> Result<Option<&'a str>, ()> {
        super::single_header(headers, name)
    }
}
