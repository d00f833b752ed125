//! The authenticated identity of a request, shared by every layer.
//!
//! The auth layer inserts an [`Identity`] into the request extensions once a
//! credential is verified. Rate limits keyed by identity, the cache's
//! `per_identity` rules and the access log read it from there. It carries the
//! credential's *id* (an API key's configured `id`, a JWT's `sub`), never the secret.

use std::sync::Arc;

/// How the identity was established.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum IdentityKind {
    /// A configured API key.
    ApiKey,
    /// A verified JSON Web Token.
    Jwt,
}

impl IdentityKind {
    /// `"api_key"` or `"jwt"`, as used in logs and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            IdentityKind::ApiKey => "api_key",
            IdentityKind::Jwt => "jwt",
        }
    }
}

/// A verified caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// How it was established.
    pub kind: IdentityKind,
    /// Stable, non-secret identifier: the API key's `id` or the JWT `sub`.
    pub id: Arc<str>,
    /// Granted scopes.
    pub scopes: Arc<[String]>,
}

impl Identity {
    /// A new identity.
    pub fn new(
        kind: IdentityKind,
        id: impl Into<Arc<str>>,
        scopes: impl Into<Arc<[String]>>,
    ) -> Self {
        Self {
            kind,
            id: id.into(),
            scopes: scopes.into(),
        }
    }

    /// Whether the identity holds `scope`.
    pub fn has_scope(&self, scope: &str) -> bool {
        self.scopes.iter().any(|s| s == scope)
    }
}
