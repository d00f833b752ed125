//! JWT verification: pinned algorithms, strict claim checks.
//!
//! The order of the checks matters and is deliberate:
//!
//! 1. size (before any decoding), exactly three non-empty segments;
//! 2. the header's `alg` must be one of the algorithms **pinned for a configured
//!    key** (`none` never is; an HS256 token cannot meet an RSA key, because the
//!    HMAC secret is its own key); `crit` is refused; `jku`, `x5u`, `jwk` and `x5c`
//!    are ignored, never fetched;
//! 3. the signature, with that key and that algorithm (jsonwebtoken's crypto);
//! 4. only then are the claims parsed: `exp` required and numeric, `nbf` numeric
//!    when present, both with the leeway; `iss` and `aud` as configured (a token
//!    with an `aud` is refused when no audience is configured); required claims;
//!    a registered claim appearing twice is refused.

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey};
use serde::Deserialize;
use serde::de::{DeserializeSeed, IgnoredAny, MapAccess, Visitor};

use super::Clock;
use super::jwks::{Find, Jwks};
use crate::config::auth::JwtConfig;
use crate::error::ConfigError;
use crate::shutdown::Shutdown;

/// Why a token was refused. Only the RFC 6750 code reaches the client; the
/// variant is for logs and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum JwtError {
    /// Bad in any way (`reason` for logs).
    Invalid(&'static str),
    /// `exp` passed (beyond the leeway).
    Expired,
    /// The key source is down and holds no key for this token.
    Unavailable,
}

/// A verified token.
#[derive(Debug, Clone)]
pub(crate) struct VerifiedJwt {
    pub(crate) subject: Arc<str>,
    pub(crate) scopes: Vec<String>,
    pub(crate) claims: Bytes,
}

/// A key with the algorithms pinned for it.
#[derive(Clone)]
pub(crate) struct PinnedKey {
    pub(crate) key: DecodingKey,
    pub(crate) algorithms: Vec<Algorithm>,
}

impl fmt::Debug for PinnedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PinnedKey")
            .field("family", &self.key.family())
            .field("algorithms", &self.algorithms)
            .finish()
    }
}

/// Verifies tokens against the configured keys.
pub(crate) struct JwtVerifier {
    static_keys: Vec<PinnedKey>,
    jwks: Option<Arc<Jwks>>,
    jwks_algorithms: Vec<Algorithm>,
    issuer: Option<String>,
    audience: Vec<String>,
    leeway: u64,
    required: Vec<String>,
    max_bytes: usize,
}

impl fmt::Debug for JwtVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtVerifier")
            .field("static_keys", &self.static_keys)
            .field("jwks", &self.jwks)
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("leeway", &self.leeway)
            .finish_non_exhaustive()
    }
}

fn family_name(f: AlgorithmFamily) -> &'static str {
    match f {
        AlgorithmFamily::Hmac => "HMAC (HS*)",
        AlgorithmFamily::Rsa => "RSA (RS*/PS*)",
        AlgorithmFamily::Ec => "EC (ES*)",
        AlgorithmFamily::Ed => "EdDSA",
    }
}

impl JwtVerifier {
    /// Builds the verifier, reporting every configuration problem. Nothing is
    /// fetched until [`start`](Self::start).
    pub(crate) fn from_config(
        cfg: &JwtConfig,
        secret_override: Option<&[u8]>,
    ) -> Result<Self, ConfigError> {
        let mut errors = ConfigError::default();
        let mut algorithms = Vec::new();
        if cfg.algorithms.is_empty() {
            errors.push(
                "auth.jwt.algorithms",
                "list the accepted algorithms, e.g. [\"RS256\"]; they are never taken from the token",
            );
        }
        for (i, a) in cfg.algorithms.iter().enumerate() {
            match Algorithm::from_str(a) {
                Ok(alg) if !algorithms.contains(&alg) => algorithms.push(alg),
                Ok(_) => {}
                Err(_) => errors.push(
                    format!("auth.jwt.algorithms[{i}]"),
                    format!(
                        "unknown algorithm {a:?}; use HS256/384/512, RS256/384/512, PS256/384/512, ES256/384 or EdDSA"
                    ),
                ),
            }
        }
        let in_family = |fam: AlgorithmFamily| -> Vec<Algorithm> {
            algorithms
                .iter()
                .copied()
                .filter(|a| a.family() == fam)
                .collect()
        };
        let mut static_keys = Vec::new();
        let mut covered: Vec<AlgorithmFamily> = Vec::new();

        // HMAC secret.
        let hmac_algs = in_family(AlgorithmFamily::Hmac);
        let secret_from_env = match (secret_override, &cfg.secret_env) {
            (Some(s), _) => Some(Ok(s.to_vec())),
            (None, Some(var)) => Some(std::env::var(var).map(String::into_bytes).map_err(|_| var)),
            (None, None) => None,
        };
        match secret_from_env {
            Some(secret) => match secret {
                Ok(secret) if secret.len() >= 32 => {
                    if hmac_algs.is_empty() {
                        errors.push(
                            "auth.jwt.secret_env",
                            "an HMAC secret is configured but no HS* algorithm is listed",
                        );
                    }
                    static_keys.push(PinnedKey {
                        key: DecodingKey::from_secret(&secret),
                        algorithms: hmac_algs.clone(),
                    });
                    covered.push(AlgorithmFamily::Hmac);
                }
                Ok(_) => errors.push(
                    "auth.jwt.secret_env",
                    "the HMAC secret is shorter than 32 bytes",
                ),
                Err(var) => errors.push(
                    "auth.jwt.secret_env",
                    format!("environment variable ${var} is not set (or not UTF-8)"),
                ),
            },
            None if !hmac_algs.is_empty() => errors.push(
                "auth.jwt.secret_env",
                "HS* algorithms are listed but no secret_env names the HMAC secret",
            ),
            None => {}
        }

        // PEM public key.
        if let Some(path) = &cfg.public_key_pem_file {
            match std::fs::read(path) {
                Err(e) => errors.push(
                    "auth.jwt.public_key_pem_file",
                    format!("cannot read {path}: {e}"),
                ),
                Ok(pem) => {
                    let key = DecodingKey::from_rsa_pem(&pem)
                        .or_else(|_| DecodingKey::from_ec_pem(&pem))
                        .or_else(|_| DecodingKey::from_ed_pem(&pem));
                    match key {
                        Err(_) => errors.push(
                            "auth.jwt.public_key_pem_file",
                            format!("{path} holds no RSA, EC or Ed25519 public key in PEM form"),
                        ),
                        Ok(key) => {
                            let fam = key.family();
                            let algs = in_family(fam);
                            if algs.is_empty() {
                                errors.push(
                                    "auth.jwt.public_key_pem_file",
                                    format!(
                                        "{path} holds an {} key but no algorithm of that family is listed",
                                        family_name(fam)
                                    ),
                                );
                            }
                            static_keys.push(PinnedKey {
                                key,
                                algorithms: algs,
                            });
                            covered.push(fam);
                        }
                    }
                }
            }
        }

        // JWKS (direct or through discovery).
        let mut jwks_algorithms = Vec::new();
        let wants_jwks = cfg.jwks_url.is_some() || cfg.discovery;
        if cfg.jwks_url.is_some() && cfg.discovery {
            errors.push(
                "auth.jwt.discovery",
                "set either jwks_url or discovery = true, not both",
            );
        }
        if cfg.discovery && cfg.issuer.is_none() {
            errors.push("auth.jwt.issuer", "OIDC discovery needs the issuer URL");
        }
        if wants_jwks && cfg.public_key_pem_file.is_some() {
            errors.push(
                "auth.jwt.public_key_pem_file",
                "set either a PEM file or a JWKS source, not both",
            );
        }
        if wants_jwks {
            jwks_algorithms = algorithms
                .iter()
                .copied()
                .filter(|a| a.family() != AlgorithmFamily::Hmac && !covered.contains(&a.family()))
                .collect();
            if jwks_algorithms.is_empty() {
                errors.push(
                    "auth.jwt.algorithms",
                    "a JWKS is configured but no asymmetric algorithm (RS*, PS*, ES*, EdDSA) is listed",
                );
            }
        } else {
            for (i, a) in cfg.algorithms.iter().enumerate() {
                if let Ok(alg) = Algorithm::from_str(a)
                    && !covered.contains(&alg.family())
                {
                    errors.push(
                        format!("auth.jwt.algorithms[{i}]"),
                        format!("no configured key can verify {a}"),
                    );
                }
            }
        }
        if cfg.jwks_cooldown_s == 0 {
            errors.push("auth.jwt.jwks_cooldown_s", "must be at least 1 second");
        }
        if cfg.jwks_refresh_s == 0 {
            errors.push("auth.jwt.jwks_refresh_s", "must be at least 1 second");
        }
        if cfg.max_token_bytes < 64 {
            errors.push("auth.jwt.max_token_bytes", "must be at least 64");
        }
        for (i, c) in cfg.required_claims.iter().enumerate() {
            if c.is_empty() {
                errors.push(format!("auth.jwt.required_claims[{i}]"), "empty claim name");
            }
        }
        if cfg.required_claims.len() > 64 {
            errors.push("auth.jwt.required_claims", "at most 64 required claims");
        }
        if matches!(&cfg.issuer, Some(i) if i.is_empty()) {
            errors.push("auth.jwt.issuer", "empty issuer");
        }
        let jwks = if wants_jwks {
            errors
                .collect(Jwks::from_config(cfg, jwks_algorithms.clone()))
                .map(Arc::new)
        } else {
            None
        };
        errors.into_result()?;
        Ok(Self {
            static_keys,
            jwks,
            jwks_algorithms,
            issuer: cfg.issuer.clone(),
            audience: cfg.audience.clone(),
            leeway: cfg.leeway_s,
            required: cfg.required_claims.clone(),
            max_bytes: cfg.max_token_bytes,
        })
    }

    /// Fetches the JWKS once (a failure is logged, not fatal: the background
    /// refresh retries) and starts the background refresh, stopped by `shutdown`.
    pub(crate) async fn start(&self, shutdown: Shutdown) {
        if let Some(jwks) = &self.jwks {
            jwks.refresh_now().await;
            jwks.spawn_refresh(shutdown);
        }
    }

    /// The JWKS source, if any (tests and metrics read its fetch count).
    #[allow(dead_code)]
    pub(crate) fn jwks(&self) -> Option<&Arc<Jwks>> {
        self.jwks.as_ref()
    }

    /// Verifies `token` completely.
    pub(crate) async fn verify(&self, token: &str, clock: &Clock) -> Result<VerifiedJwt, JwtError> {
        if token.len() > self.max_bytes {
            return Err(JwtError::Invalid("oversize"));
        }
        let mut parts = token.split('.');
        let (Some(h64), Some(p64), Some(s64), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(JwtError::Invalid("malformed"));
        };
        if h64.is_empty() || p64.is_empty() || s64.is_empty() {
            return Err(JwtError::Invalid("malformed"));
        }
        let header_bytes = URL_SAFE_NO_PAD
            .decode(h64)
            .map_err(|_| JwtError::Invalid("malformed"))?;
        let header: RawHeader<'_> =
            serde_json::from_slice(&header_bytes).map_err(|_| JwtError::Invalid("malformed"))?;
        if header.crit.is_some() {
            return Err(JwtError::Invalid("crit"));
        }
        let alg = Algorithm::from_str(&header.alg).map_err(|_| JwtError::Invalid("algorithm"))?;

        let jwks_key;
        let key: &PinnedKey = match self
            .static_keys
            .iter()
            .find(|k| k.algorithms.contains(&alg))
        {
            Some(k) => k,
            None => match &self.jwks {
                Some(jwks) if self.jwks_algorithms.contains(&alg) => {
                    match jwks.find(header.kid.as_deref(), alg).await {
                        Find::Found(k) => {
                            jwks_key = k;
                            &jwks_key
                        }
                        Find::Unknown => return Err(JwtError::Invalid("unknown_kid")),
                        Find::Unavailable => return Err(JwtError::Unavailable),
                    }
                }
                _ => return Err(JwtError::Invalid("algorithm")),
            },
        };
        debug_assert!(key.algorithms.contains(&alg));
        let message = &token[..h64.len() + 1 + p64.len()];
        match jsonwebtoken::crypto::verify(s64, message.as_bytes(), &key.key, alg) {
            Ok(true) => {}
            _ => return Err(JwtError::Invalid("signature")),
        }

        let payload = URL_SAFE_NO_PAD
            .decode(p64)
            .map_err(|_| JwtError::Invalid("malformed"))?;
        let claims = {
            let mut de = serde_json::Deserializer::from_slice(&payload);
            let c = ClaimsSeed {
                required: &self.required,
            }
            .deserialize(&mut de)
            .map_err(|_| JwtError::Invalid("claims"))?;
            de.end().map_err(|_| JwtError::Invalid("claims"))?;
            c
        };
        let now = clock.now();
        match claims.exp {
            Num::Absent => return Err(JwtError::Invalid("exp_missing")),
            Num::Bad => return Err(JwtError::Invalid("exp_type")),
            Num::Value(exp) if now > exp.saturating_add(self.leeway) => {
                return Err(JwtError::Expired);
            }
            Num::Value(_) => {}
        }
        match claims.nbf {
            Num::Bad => return Err(JwtError::Invalid("nbf_type")),
            Num::Value(nbf) if nbf > now.saturating_add(self.leeway) => {
                return Err(JwtError::Invalid("not_yet_valid"));
            }
            _ => {}
        }
        if let Some(expected) = &self.issuer
            && claims.iss.as_deref() != Some(expected.as_str())
        {
            return Err(JwtError::Invalid("issuer"));
        }
        if claims.iss_bad {
            return Err(JwtError::Invalid("issuer"));
        }
        match (&claims.aud, self.audience.is_empty()) {
            (Aud::Absent, true) => {}
            (Aud::Absent, false) => return Err(JwtError::Invalid("audience")),
            (Aud::Bad, _) => return Err(JwtError::Invalid("audience")),
            (Aud::Values(_), true) => return Err(JwtError::Invalid("audience")),
            (Aud::Values(v), false) => {
                if !v.iter().any(|a| self.audience.iter().any(|e| e == a)) {
                    return Err(JwtError::Invalid("audience"));
                }
            }
        }
        if claims.required_present.count_ones() as usize != self.required.len() {
            return Err(JwtError::Invalid("required_claim"));
        }
        if claims.scopes_bad {
            return Err(JwtError::Invalid("scope_type"));
        }
        let Some(subject) = claims.sub.or(claims.client_id) else {
            return Err(JwtError::Invalid("no_subject"));
        };
        Ok(VerifiedJwt {
            subject: subject.into(),
            scopes: claims.scopes,
            claims: Bytes::from(payload),
        })
    }
}

#[derive(Deserialize)]
struct RawHeader<'a> {
    #[serde(borrow)]
    alg: Cow<'a, str>,
    #[serde(borrow, default)]
    kid: Option<Cow<'a, str>>,
    #[serde(default)]
    crit: Option<IgnoredAny>,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Num {
    #[default]
    Absent,
    Value(u64),
    Bad,
}

#[derive(Debug, Default)]
enum Aud {
    #[default]
    Absent,
    Values(Vec<String>),
    Bad,
}

#[derive(Debug, Default)]
struct Parsed {
    exp: Num,
    nbf: Num,
    iss: Option<String>,
    iss_bad: bool,
    aud: Aud,
    sub: Option<String>,
    client_id: Option<String>,
    scopes: Vec<String>,
    scopes_bad: bool,
    required_present: u64,
}

struct ClaimsSeed<'r> {
    required: &'r [String],
}

/// A map key, borrowed when the JSON has no escapes.
struct Key<'de>(Cow<'de, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v.to_owned())))
            }
        }
        d.deserialize_str(V)
    }
}

fn numeric(v: &serde_json::Value) -> Num {
    match v {
        serde_json::Value::Number(n) => {
            if let Some(u) = n.as_u64() {
                Num::Value(u)
            } else {
                match n.as_f64() {
                    Some(f) if f.is_finite() && f >= 0.0 && f < u64::MAX as f64 => {
                        Num::Value(f as u64)
                    }
                    _ => Num::Bad,
                }
            }
        }
        _ => Num::Bad,
    }
}

fn string_list(v: serde_json::Value, split_spaces: bool) -> Option<Vec<String>> {
    match v {
        serde_json::Value::String(s) if split_spaces => {
            Some(s.split_whitespace().map(str::to_owned).collect())
        }
        serde_json::Value::String(s) => Some(vec![s]),
        serde_json::Value::Array(items) => items
            .into_iter()
            .map(|i| match i {
                serde_json::Value::String(s) => Some(s),
                _ => None,
            })
            .collect(),
        _ => None,
    }
}

impl<'de> DeserializeSeed<'de> for ClaimsSeed<'_> {
    type Value = Parsed;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Parsed, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for ClaimsSeed<'_> {
    type Value = Parsed;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object of claims")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Parsed, A::Error> {
        use serde::de::Error;
        const NAMES: [&str; 9] = [
            "exp",
            "nbf",
            "iss",
            "aud",
            "sub",
            "client_id",
            "scope",
            "scp",
            "permissions",
        ];
        let mut out = Parsed::default();
        let mut seen = 0u16;
        while let Some(Key(name)) = map.next_key::<Key<'de>>()? {
            let required = self.required.iter().position(|r| *r == name);
            let Some(slot) = NAMES.iter().position(|n| *n == name) else {
                match required {
                    Some(i) => {
                        if map.next_value::<Option<IgnoredAny>>()?.is_some() {
                            out.required_present |= 1 << i;
                        }
                    }
                    None => {
                        map.next_value::<IgnoredAny>()?;
                    }
                }
                continue;
            };
            if seen & (1 << slot) != 0 {
                return Err(A::Error::custom("duplicate registered claim"));
            }
            seen |= 1 << slot;
            let value: serde_json::Value = map.next_value()?;
            if let Some(i) = required
                && !value.is_null()
            {
                out.required_present |= 1 << i;
            }
            match slot {
                0 => out.exp = numeric(&value),
                1 => out.nbf = numeric(&value),
                2 => match value {
                    serde_json::Value::String(s) => out.iss = Some(s),
                    _ => out.iss_bad = true,
                },
                3 => {
                    out.aud = match string_list(value, false) {
                        Some(v) => Aud::Values(v),
                        None => Aud::Bad,
                    }
                }
                4 | 5 => match value {
                    serde_json::Value::String(s) if !s.is_empty() => {
                        if slot == 4 {
                            out.sub = Some(s);
                        } else {
                            out.client_id = Some(s);
                        }
                    }
                    _ => return Err(A::Error::custom("sub must be a non-empty string")),
                },
                _ => match string_list(value, true) {
                    Some(v) => {
                        for s in v {
                            if !out.scopes.contains(&s) {
                                out.scopes.push(s);
                            }
                        }
                    }
                    None => out.scopes_bad = true,
                },
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use jsonwebtoken::{EncodingKey, Header, encode};
    use serde_json::json;

    const SECRET: &str = "0123456789abcdef0123456789abcdef-test-secret";

    fn verifier(aud: &[&str], iss: Option<&str>, required: &[&str]) -> JwtVerifier {
        JwtVerifier {
            static_keys: vec![PinnedKey {
                key: DecodingKey::from_secret(SECRET.as_bytes()),
                algorithms: vec![Algorithm::HS256],
            }],
            jwks: None,
            jwks_algorithms: vec![],
            issuer: iss.map(str::to_owned),
            audience: aud.iter().map(|s| s.to_string()).collect(),
            leeway: 30,
            required: required.iter().map(|s| s.to_string()).collect(),
            max_bytes: 8192,
        }
    }

    fn sign(claims: serde_json::Value) -> String {
        encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .unwrap()
    }

    const NOW: u64 = 2_000_000_000;

    fn clock() -> Clock {
        Clock::from_fn(|| NOW)
    }

    async fn check(v: &JwtVerifier, claims: serde_json::Value) -> Result<VerifiedJwt, JwtError> {
        v.verify(&sign(claims), &clock()).await
    }

    #[tokio::test]
    async fn exp_and_nbf_exactly_at_the_leeway() {
        let v = verifier(&[], None, &[]);
        assert!(
            check(&v, json!({"sub": "a", "exp": NOW - 30}))
                .await
                .is_ok()
        );
        assert_eq!(
            check(&v, json!({"sub": "a", "exp": NOW - 31}))
                .await
                .unwrap_err(),
            JwtError::Expired
        );
        assert!(
            check(&v, json!({"sub": "a", "exp": NOW + 60, "nbf": NOW + 30}))
                .await
                .is_ok()
        );
        assert_eq!(
            check(&v, json!({"sub": "a", "exp": NOW + 60, "nbf": NOW + 31}))
                .await
                .unwrap_err(),
            JwtError::Invalid("not_yet_valid")
        );
    }

    #[tokio::test]
    async fn malformed_time_claims_are_refused() {
        let v = verifier(&[], None, &[]);
        for claims in [
            json!({"sub": "a"}),
            json!({"sub": "a", "exp": null}),
            json!({"sub": "a", "exp": (NOW + 60).to_string()}),
            json!({"sub": "a", "exp": NOW + 60, "nbf": "0"}),
            json!({"sub": "a", "exp": -1}),
            json!({"sub": "a", "exp": true}),
        ] {
            assert!(check(&v, claims.clone()).await.is_err(), "{claims}");
        }
        // A fractional NumericDate is valid (RFC 7519 §2).
        assert!(
            check(&v, json!({"sub": "a", "exp": (NOW + 60) as f64 + 0.5}))
                .await
                .is_ok()
        );
    }

    #[tokio::test]
    async fn audience_issuer_and_required_claims() {
        let v = verifier(&[], None, &[]);
        assert_eq!(
            check(&v, json!({"sub": "a", "exp": NOW + 60, "aud": "x"}))
                .await
                .unwrap_err(),
            JwtError::Invalid("audience")
        );
        let v = verifier(&["api"], Some("https://idp"), &["tenant"]);
        let ok = json!({"sub": "a", "exp": NOW + 60, "aud": ["other", "api"], "iss": "https://idp", "tenant": "t"});
        assert!(check(&v, ok).await.is_ok());
        for (claims, why) in [
            (
                json!({"sub": "a", "exp": NOW + 60, "aud": "nope", "iss": "https://idp", "tenant": "t"}),
                "audience",
            ),
            (
                json!({"sub": "a", "exp": NOW + 60, "iss": "https://idp", "tenant": "t"}),
                "audience",
            ),
            (
                json!({"sub": "a", "exp": NOW + 60, "aud": "api", "iss": "https://evil", "tenant": "t"}),
                "issuer",
            ),
            (
                json!({"sub": "a", "exp": NOW + 60, "aud": "api", "tenant": "t"}),
                "issuer",
            ),
            (
                json!({"sub": "a", "exp": NOW + 60, "aud": "api", "iss": "https://idp"}),
                "required_claim",
            ),
            (
                json!({"sub": "a", "exp": NOW + 60, "aud": "api", "iss": "https://idp", "tenant": null}),
                "required_claim",
            ),
        ] {
            assert_eq!(check(&v, claims).await.unwrap_err(), JwtError::Invalid(why));
        }
    }

    #[tokio::test]
    async fn duplicate_registered_claims_are_refused() {
        let v = verifier(&[], None, &[]);
        let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
        let payload = URL_SAFE_NO_PAD
            .encode(format!(r#"{{"sub":"a","exp":{},"exp":{}}}"#, NOW + 60, NOW - 1000).as_bytes());
        let msg = format!("{header}.{payload}");
        let sig = jsonwebtoken::crypto::sign(
            msg.as_bytes(),
            &EncodingKey::from_secret(SECRET.as_bytes()),
            Algorithm::HS256,
        )
        .unwrap();
        assert_eq!(
            v.verify(&format!("{msg}.{sig}"), &clock())
                .await
                .unwrap_err(),
            JwtError::Invalid("claims")
        );
    }

    #[tokio::test]
    async fn scopes_from_every_claim_shape() {
        let v = verifier(&[], None, &[]);
        let t = check(&v, json!({"sub": "a", "exp": NOW + 60, "scope": "read write", "scp": ["admin"], "permissions": ["read"]}))
            .await
            .unwrap();
        assert_eq!(t.scopes, vec!["read", "write", "admin"]);
        assert_eq!(&*t.subject, "a");
        assert!(
            check(&v, json!({"sub": "a", "exp": NOW + 60, "scp": [1]}))
                .await
                .is_err()
        );
        assert_eq!(
            check(&v, json!({"exp": NOW + 60})).await.unwrap_err(),
            JwtError::Invalid("no_subject")
        );
    }
}
