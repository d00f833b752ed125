//! JWKS: fetched, cached, refreshed in the background, refetched on an unknown
//! `kid` at most once per cooldown.
//!
//! * The read path never waits for the network: keys live behind an
//!   `RwLock<Arc<..>>` that a fetch swaps whole.
//! * An unknown `kid` triggers one fetch, single-flight, and not again before the
//!   cooldown (`jwks_cooldown_s`) has passed, so a stream of random `kid`s costs at
//!   most one fetch per cooldown.
//! * When the endpoint is down, slow (timeout) or returns garbage, the keys already
//!   held are kept; the failure is logged.
//! * The URL must be `https`, except on a loopback host (`127.0.0.0/8`, `::1`,
//!   `localhost`) where plain `http` is accepted for local identity providers and
//!   tests. Redirects are not followed; responses are capped at 1 MiB.
//! * TLS uses rustls with the aws-lc-rs provider (the same crypto library that
//!   verifies the signatures) and the Mozilla roots from `webpki-roots`; no
//!   process-wide provider is installed.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use jsonwebtoken::jwk::{Jwk, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};
use reqwest::Url;
use tokio::time::Instant;

use super::jwt::PinnedKey;
use crate::config::auth::JwtConfig;
use crate::error::ConfigError;
use crate::shutdown::Shutdown;

const MAX_BODY: usize = 1 << 20;

/// Result of a key lookup.
#[derive(Debug)]
pub(crate) enum Find {
    Found(Arc<PinnedKey>),
    Unknown,
    Unavailable,
}

#[derive(Debug, Default)]
struct KeySet {
    by_kid: HashMap<String, Arc<PinnedKey>>,
    without_kid: Vec<Arc<PinnedKey>>,
}

impl KeySet {
    fn lookup(&self, kid: Option<&str>, alg: Algorithm) -> Option<Arc<PinnedKey>> {
        match kid {
            Some(kid) => self
                .by_kid
                .get(kid)
                .filter(|k| k.algorithms.contains(&alg))
                .cloned(),
            None => {
                // Without a kid, only an unambiguous key is used.
                let mut candidates = self
                    .by_kid
                    .values()
                    .chain(self.without_kid.iter())
                    .filter(|k| k.algorithms.contains(&alg));
                match (candidates.next(), candidates.next()) {
                    (Some(k), None) => Some(k.clone()),
                    _ => None,
                }
            }
        }
    }

    fn len(&self) -> usize {
        self.by_kid.len() + self.without_kid.len()
    }
}

enum Source {
    Url(Url),
    Discovery { issuer: String },
}

struct FetchState {
    last_attempt: Option<Instant>,
    jwks_uri: Option<Url>,
}

/// A JWKS source with its cached keys.
pub(crate) struct Jwks {
    source: Source,
    client: reqwest::Client,
    algorithms: Vec<Algorithm>,
    keys: RwLock<Arc<KeySet>>,
    loaded: AtomicBool,
    state: tokio::sync::Mutex<FetchState>,
    cooldown: Duration,
    refresh: Duration,
    fetches: AtomicU64,
    /// Delay before the next background refresh, in seconds.
    next_refresh_s: AtomicU64,
}

impl fmt::Debug for Jwks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let source = match &self.source {
            Source::Url(u) => u.as_str().to_owned(),
            Source::Discovery { issuer } => format!("discovery at {issuer}"),
        };
        f.debug_struct("Jwks")
            .field("source", &source)
            .field("keys", &self.current().len())
            .field("cooldown", &self.cooldown)
            .field("refresh", &self.refresh)
            .finish_non_exhaustive()
    }
}

/// Whether `url` may carry keys: https, or http to a loopback host.
fn check_url(url: &Url) -> Result<(), String> {
    match url.scheme() {
        "https" => Ok(()),
        "http" => {
            let host = url.host_str().unwrap_or("");
            let bare = host.trim_start_matches('[').trim_end_matches(']');
            let loopback = host.eq_ignore_ascii_case("localhost")
                || bare
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback());
            if loopback {
                Ok(())
            } else {
                Err(format!(
                    "{url} is plain http; keys must be fetched over https (http is allowed on loopback hosts only)"
                ))
            }
        }
        other => Err(format!("{url}: unsupported scheme {other:?}")),
    }
}

impl Jwks {
    pub(crate) fn from_config(
        cfg: &JwtConfig,
        algorithms: Vec<Algorithm>,
    ) -> Result<Self, ConfigError> {
        let mut errors = ConfigError::default();
        let source = match (&cfg.jwks_url, &cfg.issuer) {
            (Some(u), _) => match Url::parse(u) {
                Ok(url) => {
                    if let Err(m) = check_url(&url) {
                        errors.push("auth.jwt.jwks_url", m);
                    }
                    Some(Source::Url(url))
                }
                Err(e) => {
                    errors.push("auth.jwt.jwks_url", format!("not a URL: {e}"));
                    None
                }
            },
            (None, Some(issuer)) => match Url::parse(issuer) {
                Ok(url) => {
                    if let Err(m) = check_url(&url) {
                        errors.push("auth.jwt.issuer", m);
                    }
                    Some(Source::Discovery {
                        issuer: issuer.clone(),
                    })
                }
                Err(e) => {
                    errors.push(
                        "auth.jwt.issuer",
                        format!("discovery needs an issuer URL: {e}"),
                    );
                    None
                }
            },
            (None, None) => None,
        };
        let client = match build_client(Duration::from_millis(cfg.jwks_timeout_ms.max(1))) {
            Ok(c) => Some(c),
            Err(e) => {
                errors.push("auth.jwt", format!("cannot build the HTTPS client: {e}"));
                None
            }
        };
        errors.into_result()?;
        let (Some(source), Some(client)) = (source, client) else {
            return Err(ConfigError::new("auth.jwt.jwks_url", "no JWKS source"));
        };
        Ok(Self {
            source,
            client,
            algorithms,
            keys: RwLock::new(Arc::new(KeySet::default())),
            loaded: AtomicBool::new(false),
            state: tokio::sync::Mutex::new(FetchState {
                last_attempt: None,
                jwks_uri: None,
            }),
            cooldown: Duration::from_secs(cfg.jwks_cooldown_s.max(1)),
            refresh: Duration::from_secs(cfg.jwks_refresh_s.max(1)),
            fetches: AtomicU64::new(0),
            next_refresh_s: AtomicU64::new(cfg.jwks_refresh_s.max(1)),
        })
    }

    fn current(&self) -> Arc<KeySet> {
        match self.keys.read() {
            Ok(g) => g.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// How many JWKS fetches were attempted (discovery documents not counted).
    #[allow(dead_code)]
    pub(crate) fn fetch_count(&self) -> u64 {
        self.fetches.load(Ordering::Relaxed)
    }

    /// Finds the key for a token; on an unknown `kid`, refetches once per cooldown.
    pub(crate) async fn find(&self, kid: Option<&str>, alg: Algorithm) -> Find {
        if let Some(k) = self.current().lookup(kid, alg) {
            return Find::Found(k);
        }
        // Only an unknown kid justifies a fetch; a missing kid never does.
        let Some(kid_str) = kid else {
            return self.miss();
        };
        {
            let mut st = self.state.lock().await;
            // Another request may have fetched while this one waited.
            if let Some(k) = self.current().lookup(kid, alg) {
                return Find::Found(k);
            }
            let now = Instant::now();
            let cooling = st
                .last_attempt
                .is_some_and(|t| now.duration_since(t) < self.cooldown);
            if !cooling {
                tracing::debug!(
                    kid_len = kid_str.len(),
                    "unknown JWT kid: refreshing the JWKS"
                );
                st.last_attempt = Some(now);
                self.fetch_locked(&mut st).await;
            }
        }
        match self.current().lookup(kid, alg) {
            Some(k) => Find::Found(k),
            None => self.miss(),
        }
    }

    fn miss(&self) -> Find {
        if self.loaded.load(Ordering::Acquire) {
            Find::Unknown
        } else {
            Find::Unavailable
        }
    }

    /// Fetches now (start-up and background refresh).
    pub(crate) async fn refresh_now(&self) {
        let mut st = self.state.lock().await;
        st.last_attempt = Some(Instant::now());
        self.fetch_locked(&mut st).await;
    }

    async fn fetch_locked(&self, st: &mut FetchState) {
        match self.fetch(st).await {
            Ok(set) => {
                tracing::debug!(keys = set.len(), "JWKS refreshed");
                let set = Arc::new(set);
                match self.keys.write() {
                    Ok(mut g) => *g = set,
                    Err(poisoned) => *poisoned.into_inner() = set,
                }
                self.loaded.store(true, Ordering::Release);
            }
            Err(e) => {
                tracing::warn!(error = %e, keys_kept = self.current().len(), "JWKS fetch failed; keeping the keys already held");
            }
        }
    }

    async fn fetch(&self, st: &mut FetchState) -> Result<KeySet, String> {
        let url = match &self.source {
            Source::Url(u) => u.clone(),
            Source::Discovery { issuer } => match &st.jwks_uri {
                Some(u) => u.clone(),
                None => {
                    let u = self.discover(issuer).await?;
                    st.jwks_uri = Some(u.clone());
                    u
                }
            },
        };
        self.fetches.fetch_add(1, Ordering::Relaxed);
        let (body, max_age) = self.get(&url).await?;
        let set = self.parse(&body)?;
        // Refresh as often as the provider asks, but never more often than the
        // cooldown nor less often than `jwks_refresh_s`.
        let next = max_age.map_or(self.refresh, |m| m.clamp(self.cooldown, self.refresh));
        self.next_refresh_s.store(next.as_secs(), Ordering::Relaxed);
        Ok(set)
    }

    async fn discover(&self, issuer: &str) -> Result<Url, String> {
        let doc_url = format!(
            "{}/.well-known/openid-configuration",
            issuer.trim_end_matches('/')
        );
        let url = Url::parse(&doc_url).map_err(|e| e.to_string())?;
        let (body, _) = self.get(&url).await?;
        #[derive(serde::Deserialize)]
        struct Doc {
            issuer: String,
            jwks_uri: String,
        }
        let doc: Doc = serde_json::from_slice(&body)
            .map_err(|e| format!("invalid discovery document: {e}"))?;
        if doc.issuer != issuer {
            return Err(format!(
                "discovery document names issuer {:?}, expected {issuer:?}",
                doc.issuer
            ));
        }
        let jwks = Url::parse(&doc.jwks_uri).map_err(|e| format!("invalid jwks_uri: {e}"))?;
        check_url(&jwks)?;
        Ok(jwks)
    }

    /// The body, and the response's `Cache-Control: max-age` if any.
    async fn get(&self, url: &Url) -> Result<(Vec<u8>, Option<Duration>), String> {
        let mut res = self
            .client
            .get(url.clone())
            .header(http::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(|e| format!("GET {url}: {e}"))?;
        if !res.status().is_success() {
            return Err(format!("GET {url}: status {}", res.status()));
        }
        let max_age = res
            .headers()
            .get(http::header::CACHE_CONTROL)
            .and_then(|v| v.to_str().ok())
            .and_then(max_age);
        let mut body = Vec::new();
        while let Some(chunk) = res.chunk().await.map_err(|e| format!("GET {url}: {e}"))? {
            if body.len() + chunk.len() > MAX_BODY {
                return Err(format!("GET {url}: response larger than {MAX_BODY} bytes"));
            }
            body.extend_from_slice(&chunk);
        }
        Ok((body, max_age))
    }

    fn parse(&self, body: &[u8]) -> Result<KeySet, String> {
        #[derive(serde::Deserialize)]
        struct Set {
            keys: Vec<serde_json::Value>,
        }
        let set: Set = serde_json::from_slice(body).map_err(|e| format!("invalid JWKS: {e}"))?;
        let mut out = KeySet::default();
        let mut duplicates = Vec::new();
        for value in set.keys {
            // One unsupported key must not hide the others.
            let Ok(jwk) = serde_json::from_value::<Jwk>(value) else {
                continue;
            };
            if matches!(&jwk.common.public_key_use, Some(u) if *u != PublicKeyUse::Signature) {
                continue;
            }
            // Symmetric keys are never taken from the network.
            if matches!(
                jwk.algorithm,
                jsonwebtoken::jwk::AlgorithmParameters::OctetKey(_)
            ) {
                continue;
            }
            let Ok(key) = DecodingKey::from_jwk(&jwk) else {
                continue;
            };
            let declared: Option<Algorithm> = jwk
                .common
                .key_algorithm
                .and_then(|a| a.to_string().parse().ok());
            let algorithms: Vec<Algorithm> = self
                .algorithms
                .iter()
                .copied()
                .filter(|a| a.family() == key.family())
                .filter(|a| declared.is_none_or(|d| d == *a))
                .collect();
            if algorithms.is_empty() {
                continue;
            }
            let pinned = Arc::new(PinnedKey { key, algorithms });
            match jwk.common.key_id {
                Some(kid) => match out.by_kid.entry(kid) {
                    std::collections::hash_map::Entry::Occupied(e) => {
                        duplicates.push(e.key().clone());
                    }
                    std::collections::hash_map::Entry::Vacant(e) => {
                        e.insert(pinned);
                    }
                },
                None => out.without_kid.push(pinned),
            }
        }
        // An ambiguous kid is refused rather than guessed.
        for kid in duplicates {
            out.by_kid.remove(&kid);
        }
        if out.len() == 0 {
            return Err(
                "the JWKS holds no usable signing key for the configured algorithms".into(),
            );
        }
        Ok(out)
    }

    /// Refreshes every `refresh` interval (sooner while no key was ever loaded)
    /// until `shutdown` or until the verifier is dropped.
    pub(crate) fn spawn_refresh(self: &Arc<Self>, shutdown: Shutdown) {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                let delay = match weak.upgrade() {
                    Some(j) if j.loaded.load(Ordering::Acquire) => {
                        Duration::from_secs(j.next_refresh_s.load(Ordering::Relaxed))
                    }
                    Some(j) => j.refresh.min(Duration::from_secs(5)),
                    None => return,
                };
                tokio::select! {
                    () = shutdown.wait() => return,
                    () = tokio::time::sleep(delay) => {}
                }
                let Some(j) = weak.upgrade() else { return };
                j.refresh_now().await;
            }
        });
    }
}

/// `max-age` of a `Cache-Control` value (`no-store`/`no-cache` count as 0).
fn max_age(value: &str) -> Option<Duration> {
    let mut out = None;
    for directive in value.split(',') {
        let d = directive.trim();
        if d.eq_ignore_ascii_case("no-store") || d.eq_ignore_ascii_case("no-cache") {
            return Some(Duration::ZERO);
        }
        if let Some((name, v)) = d.split_once('=')
            && name.trim().eq_ignore_ascii_case("max-age")
        {
            out = v
                .trim()
                .trim_matches('"')
                .parse::<u64>()
                .ok()
                .map(Duration::from_secs);
        }
    }
    out
}

fn build_client(timeout: Duration) -> Result<reqwest::Client, String> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .timeout(timeout)
        .connect_timeout(timeout)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| e.to_string())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn cache_control_max_age() {
        assert_eq!(
            max_age("public, max-age=600"),
            Some(Duration::from_secs(600))
        );
        assert_eq!(
            max_age("Max-Age=\"60\", must-revalidate"),
            Some(Duration::from_secs(60))
        );
        assert_eq!(max_age("no-store"), Some(Duration::ZERO));
        assert_eq!(max_age("public"), None);
        assert_eq!(max_age("max-age=soon"), None);
    }

    #[test]
    fn only_https_or_loopback_http() {
        for ok in [
            "https://idp.example.com/jwks",
            "http://127.0.0.1:8080/jwks",
            "http://[::1]/jwks",
            "http://localhost/jwks",
        ] {
            assert!(check_url(&Url::parse(ok).unwrap()).is_ok(), "{ok}");
        }
        for bad in [
            "http://idp.example.com/jwks",
            "http://10.0.0.1/jwks",
            "ftp://idp/jwks",
            "http://localhost.evil.com/",
        ] {
            assert!(check_url(&Url::parse(bad).unwrap()).is_err(), "{bad}");
        }
    }
}
