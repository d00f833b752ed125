//! Extractors: [`Claims<T>`] and [`Identity`], each also as `Option<_>`.
//!
//! The auth layer has already verified the credential by the time a handler runs,
//! so the extractors only read what it recorded. `Option<Claims<T>>` and
//! `Option<Identity>` are `None` for an anonymous request on a route that requires
//! nothing; an *invalid* credential never reaches the handler (the layer answered
//! 401), so `None` always means "no credential was sent".

use axum::extract::{FromRequestParts, OptionalFromRequestParts};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::StatusCode;
use http::header::{HeaderValue, WWW_AUTHENTICATE};
use http::request::Parts;
use serde::de::DeserializeOwned;

use crate::identity::Identity;
use crate::problem::Problem;

/// The verified JWT payload (JSON), stored in the request extensions.
#[derive(Debug, Clone)]
pub(crate) struct VerifiedClaims(#[allow(dead_code)] pub(crate) Bytes);

/// The claims of the verified JWT, deserialized into `T`.
///
/// ```
/// use palisade::auth::Claims;
/// use serde::Deserialize;
///
/// #[derive(Deserialize)]
/// struct Me { sub: String }
///
/// async fn me(Claims(me): Claims<Me>) -> String { me.sub }
/// async fn maybe(claims: Option<Claims<Me>>) -> String {
///     claims.map_or("anonymous".into(), |Claims(me)| me.sub)
/// }
/// # let _ = (me, maybe);
/// ```
///
/// Without a verified JWT the handler is not called: the answer is a 401
/// problem with `WWW-Authenticate: Bearer`. Claims that do not fit `T` are a 401
/// `invalid_token` as well.
#[derive(Debug, Clone)]
pub struct Claims<T>(pub T);

/// Why [`Claims`] or [`Identity`] could not be extracted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ClaimsRejection {
    /// No verified credential on this request.
    Missing,
    /// The token's claims do not have the shape the handler asked for.
    Shape,
}

impl IntoResponse for ClaimsRejection {
    fn into_response(self) -> Response {
        let (challenge, reason, detail) = match self {
            Self::Missing => (
                HeaderValue::from_static("Bearer"),
                "missing_credentials",
                "credentials are required",
            ),
            Self::Shape => (
                HeaderValue::from_static("Bearer error=\"invalid_token\""),
                "invalid_token",
                "the credentials are not valid",
            ),
        };
        Problem::new(StatusCode::UNAUTHORIZED)
            .detail(detail)
            .header(WWW_AUTHENTICATE, challenge)
            .rejection("auth", reason)
            .into_response()
    }
}

fn decode<T: DeserializeOwned>(parts: &Parts) -> Result<Option<Claims<T>>, ClaimsRejection> {
    #[cfg(feature = "jwt")]
    {
        match parts.extensions.get::<VerifiedClaims>() {
            None => Ok(None),
            Some(raw) => serde_json::from_slice(&raw.0)
                .map(|c| Some(Claims(c)))
                .map_err(|_| ClaimsRejection::Shape),
        }
    }
    #[cfg(not(feature = "jwt"))]
    {
        let _ = parts;
        Ok(None)
    }
}

impl<T, S> FromRequestParts<S> for Claims<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ClaimsRejection;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        decode(parts)?.ok_or(ClaimsRejection::Missing)
    }
}

impl<T, S> OptionalFromRequestParts<S> for Claims<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ClaimsRejection;

    async fn from_request_parts(
        parts: &mut Parts,
        _state: &S,
    ) -> Result<Option<Self>, Self::Rejection> {
        decode(parts)
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Identity {
    type Rejection = ClaimsRejection;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<Identity>()
            .cloned()
            .ok_or(ClaimsRejection::Missing)
    }
}

impl<S: Send + Sync> OptionalFromRequestParts<S> for Identity {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        _state: &S,
    ) -> Result<Option<Self>, Self::Rejection> {
        Ok(parts.extensions.get::<Identity>().cloned())
    }
}
