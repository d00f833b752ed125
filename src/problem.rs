//! Rejections as `application/problem+json` responses ([RFC 9457]).
//!
//! Every response palisade produces on its own (401, 403, 429, 400, 421, 503, ...)
//! is built here, so all of them share one shape: the status the relevant RFC
//! prescribes, the headers it requires (`WWW-Authenticate`, `Retry-After`, ...),
//! `Cache-Control: no-store` so no cache keeps a rejection, and a small JSON body
//! that says what happened without revealing anything a client should not learn.
//!
//! The response carries a [`Rejection`] extension naming the layer and reason, so the
//! outer logging and metrics layers can report *why* a request was refused.
//!
//! [RFC 9457]: https://www.rfc-editor.org/rfc/rfc9457

use std::borrow::Cow;

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use http::StatusCode;
use http::header::{CACHE_CONTROL, CONTENT_TYPE, HeaderName, HeaderValue};
use serde::Serialize;

/// Media type of a problem details body.
pub const PROBLEM_JSON: HeaderValue = HeaderValue::from_static("application/problem+json");

/// Attached to the extensions of every response palisade generates itself.
///
/// `layer` is the palisade layer that answered (`"rate_limit"`, `"auth"`, ...) and
/// `reason` a short machine-readable code (`"limited"`, `"invalid_token"`, ...).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rejection {
    /// The layer that produced the response.
    pub layer: &'static str,
    /// Why, as a short code.
    pub reason: &'static str,
}

/// An RFC 9457 problem details response under construction.
///
/// ```
/// use axum::response::IntoResponse;
/// use palisade::problem::Problem;
/// use http::StatusCode;
///
/// let res = Problem::new(StatusCode::TOO_MANY_REQUESTS)
///     .detail("slow down")
///     .header(http::header::RETRY_AFTER, http::HeaderValue::from_static("3"))
///     .rejection("rate_limit", "limited")
///     .into_response();
/// assert_eq!(res.status(), 429);
/// assert_eq!(res.headers()["content-type"], "application/problem+json");
/// assert_eq!(res.headers()["retry-after"], "3");
/// ```
#[derive(Debug, Clone)]
#[must_use]
pub struct Problem {
    status: StatusCode,
    body: ProblemBody,
    headers: Vec<(HeaderName, HeaderValue)>,
    rejection: Option<Rejection>,
}

#[derive(Debug, Clone, Serialize)]
struct ProblemBody {
    #[serde(rename = "type")]
    type_uri: Cow<'static, str>,
    title: Cow<'static, str>,
    status: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    detail: Option<Cow<'static, str>>,
    #[serde(flatten)]
    extensions: serde_json::Map<String, serde_json::Value>,
}

impl Problem {
    /// A problem with the given status, `type` `about:blank` and the status's
    /// canonical reason as `title` (RFC 9457 §4.2.1).
    pub fn new(status: StatusCode) -> Self {
        Self {
            status,
            body: ProblemBody {
                type_uri: Cow::Borrowed("about:blank"),
                title: Cow::Borrowed(status.canonical_reason().unwrap_or("Error")),
                status: status.as_u16(),
                detail: None,
                extensions: serde_json::Map::new(),
            },
            headers: Vec::new(),
            rejection: None,
        }
    }

    /// Sets the `type` URI identifying the problem type.
    pub fn type_uri(mut self, uri: impl Into<Cow<'static, str>>) -> Self {
        self.body.type_uri = uri.into();
        self
    }

    /// Sets the short human-readable `title`.
    pub fn title(mut self, title: impl Into<Cow<'static, str>>) -> Self {
        self.body.title = title.into();
        self
    }

    /// Sets the human-readable `detail` for this occurrence.
    pub fn detail(mut self, detail: impl Into<Cow<'static, str>>) -> Self {
        self.body.detail = Some(detail.into());
        self
    }

    /// Adds an extension member to the body (RFC 9457 §3.2).
    pub fn extension(mut self, key: &str, value: impl Into<serde_json::Value>) -> Self {
        self.body.extensions.insert(key.to_owned(), value.into());
        self
    }

    /// Adds a response header (appended, so a header may repeat).
    pub fn header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.headers.push((name, value));
        self
    }

    /// Names the palisade layer and reason, for logs and metrics.
    pub fn rejection(mut self, layer: &'static str, reason: &'static str) -> Self {
        self.rejection = Some(Rejection { layer, reason });
        self
    }

    /// The status this problem will be answered with.
    pub fn status(&self) -> StatusCode {
        self.status
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        // Serialising a map of strings cannot fail; fall back to a minimal body anyway.
        let body = serde_json::to_vec(&self.body).unwrap_or_else(|_| b"{}".to_vec());
        let mut res = Response::new(Body::from(body));
        *res.status_mut() = self.status;
        let headers = res.headers_mut();
        headers.insert(CONTENT_TYPE, PROBLEM_JSON);
        headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
        for (name, value) in self.headers {
            headers.append(name, value);
        }
        if let Some(rejection) = self.rejection {
            res.extensions_mut().insert(rejection);
        }
        res
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn body_has_rfc9457_members() {
        let res = Problem::new(StatusCode::FORBIDDEN)
            .detail("missing scope")
            .extension("scope", "admin")
            .rejection("auth", "insufficient_scope")
            .into_response();
        assert_eq!(res.status(), StatusCode::FORBIDDEN);
        assert_eq!(res.headers()[CACHE_CONTROL], "no-store");
        assert_eq!(
            res.extensions().get::<Rejection>(),
            Some(&Rejection {
                layer: "auth",
                reason: "insufficient_scope"
            })
        );
        let bytes = res.into_body().collect().await.unwrap().to_bytes();
        let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(v["type"], "about:blank");
        assert_eq!(v["title"], "Forbidden");
        assert_eq!(v["status"], 403);
        assert_eq!(v["detail"], "missing scope");
        assert_eq!(v["scope"], "admin");
    }
}
