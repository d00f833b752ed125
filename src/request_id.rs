//! Request ids: accepted when safe, generated (UUID v7) otherwise.
//!
//! Every request leaves this layer with exactly one id, found in three places: the
//! [`RequestId`] request extension (read it with `Extension<RequestId>`), the request
//! header (`x-request-id` unless `[logging] request_id_header` says otherwise, so
//! upstream calls can forward it), and the same header on the response. The access
//! log (`palisade::trace`, feature `trace`) records it as `request_id`.
//!
//! # Why validate an incoming id
//!
//! An id sent by a client ends up in every log line of the request. Taken verbatim
//! (as most middleware does) it can be 8 KiB long, or contain quotes, escape sequences
//! or terminal control characters aimed at whoever reads the logs. An
//! incoming id is kept only when it is 1 to 128 characters from
//! `A-Z a-z 0-9 - _ . : / + = @ ~` (enough for UUIDs, ULIDs, hex, base64 and
//! `Root=1-…` style ids); anything else is replaced by a fresh id.
//!
//! # Why UUID v7
//!
//! Version 7 UUIDs start with a millisecond timestamp, so ids sort by time and index
//! well. They are generated from a thread-local fast RNG: no system call per request
//! (tower-http's UUID v4 maker makes one `getrandom` call per request).
//!
//! ```
//! use axum::{Extension, Router, routing::get};
//! use palisade::request_id::{RequestId, RequestIdLayer};
//! use tower::ServiceExt;
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let app = Router::new()
//!     .route("/", get(|Extension(id): Extension<RequestId>| async move { id.as_str().to_owned() }))
//!     .layer(RequestIdLayer::new());
//! let req = http::Request::get("/").header("x-request-id", "abc-123").body(axum::body::Body::empty()).unwrap();
//! let res = app.clone().oneshot(req).await.unwrap();
//! assert_eq!(res.headers()["x-request-id"], "abc-123");
//!
//! // An unsafe id is replaced by a fresh UUID v7.
//! let req = http::Request::get("/").header("x-request-id", "a b").body(axum::body::Body::empty()).unwrap();
//! let res = app.oneshot(req).await.unwrap();
//! assert_eq!(res.headers()["x-request-id"].len(), 36);
//! # }
//! ```

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::extract::Request;
use axum::response::Response;
use http::{HeaderName, HeaderValue};
use tower::{Layer, Service};

use crate::config::LoggingConfig;
use crate::error::ConfigError;
use crate::stack::BuildContext;

/// Longest incoming request id kept.
pub const MAX_REQUEST_ID_LEN: usize = 128;

/// The request id of one request, in the request extensions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestId(HeaderValue);

impl RequestId {
    /// The id (always visible ASCII).
    pub fn as_str(&self) -> &str {
        // Only ever built from validated ASCII or a UUID.
        self.0.to_str().unwrap_or("")
    }

    /// The id as a header value.
    pub fn header_value(&self) -> &HeaderValue {
        &self.0
    }

    /// A fresh UUID v7 id.
    pub fn generate() -> Self {
        let mut buf = [0u8; uuid::fmt::Hyphenated::LENGTH];
        uuid::Uuid::now_v7().hyphenated().encode_lower(&mut buf);
        // One allocation holding the text and its reference count: the copies that go
        // onto the request and the response headers share it (a `Vec`-backed value
        // would allocate again on its first clone).
        Self(
            HeaderValue::from_maybe_shared(bytes::Bytes::from_owner(buf))
                .unwrap_or(HeaderValue::from_static("invalid")),
        )
    }

    /// Keeps `value` if it is a safe request id (see the [module docs](self)).
    pub fn parse(value: &HeaderValue) -> Option<Self> {
        is_safe_id(value.as_bytes()).then(|| Self(value.clone()))
    }
}

impl std::fmt::Display for RequestId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether `id` is 1 to [`MAX_REQUEST_ID_LEN`] bytes of the safe set.
pub fn is_safe_id(id: &[u8]) -> bool {
    !id.is_empty()
        && id.len() <= MAX_REQUEST_ID_LEN
        && id.iter().all(|&b| {
            b.is_ascii_alphanumeric()
                || matches!(
                    b,
                    b'-' | b'_' | b'.' | b':' | b'/' | b'+' | b'=' | b'@' | b'~'
                )
        })
}

/// Layer that gives every request a [`RequestId`]; see the [module docs](self).
#[derive(Debug, Clone)]
pub struct RequestIdLayer {
    header: HeaderName,
    accept: bool,
}

impl Default for RequestIdLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl RequestIdLayer {
    /// Header `x-request-id`, incoming ids accepted when safe.
    pub fn new() -> Self {
        Self {
            header: HeaderName::from_static("x-request-id"),
            accept: true,
        }
    }

    /// Uses another header name.
    #[must_use]
    pub fn header(mut self, header: HeaderName) -> Self {
        // Cloned onto every request and response: `'static` bytes clone for free.
        self.header = crate::intern::static_name(&header);
        self
    }

    /// Whether a safe incoming id is kept (`true`) or always replaced (`false`).
    #[must_use]
    pub fn accept_incoming(mut self, accept: bool) -> Self {
        self.accept = accept;
        self
    }

    /// Builds the layer from `[logging]`; `None` when `request_id = false`.
    pub fn from_config(
        config: &LoggingConfig,
        _ctx: &BuildContext,
    ) -> Result<Option<Self>, ConfigError> {
        let header = HeaderName::from_bytes(config.request_id_header.as_bytes()).map_err(|_| {
            ConfigError::new(
                "logging.request_id_header",
                format!("{:?} is not a valid header name", config.request_id_header),
            )
        })?;
        if !config.request_id {
            return Ok(None);
        }
        Ok(Some(
            Self::new()
                .header(header)
                .accept_incoming(config.accept_request_id),
        ))
    }
}

impl<S> Layer<S> for RequestIdLayer {
    type Service = SetRequestId<S>;
    fn layer(&self, inner: S) -> SetRequestId<S> {
        SetRequestId {
            inner,
            header: self.header.clone(),
            accept: self.accept,
        }
    }
}

/// Service made by [`RequestIdLayer`].
#[derive(Debug, Clone)]
pub struct SetRequestId<S> {
    inner: S,
    header: HeaderName,
    accept: bool,
}

impl<S> Service<Request> for SetRequestId<S>
where
    S: Service<Request, Response = Response, Error = Infallible>,
{
    type Response = Response;
    type Error = Infallible;
    type Future = RequestIdFuture<S::Future>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request) -> Self::Future {
        let value = tag_request(&self.header, self.accept, &mut req);
        RequestIdFuture {
            inner: self.inner.call(req),
            header: Some((self.header.clone(), value)),
        }
    }
}

impl RequestIdLayer {
    /// What [`SetRequestId`] does before its inner service (for the stack, which runs
    /// the layer without a level of its own); returns the id for the response.
    #[inline]
    pub(crate) fn tag_request(&self, req: &mut Request) -> HeaderValue {
        tag_request(&self.header, self.accept, req)
    }

    /// What [`SetRequestId`] does to the response.
    #[inline]
    pub(crate) fn tag_response(&self, id: HeaderValue, res: &mut Response) {
        tag_response(&self.header, id, res);
    }
}

/// Takes the request's id (or makes one), stores it in the extensions and the header.
fn tag_request(header: &HeaderName, accept: bool, req: &mut Request) -> HeaderValue {
    let incoming = if accept {
        req.headers().get(header).and_then(RequestId::parse)
    } else {
        None
    };
    let id = match incoming {
        Some(id) => id,
        None => {
            let id = RequestId::generate();
            req.headers_mut().insert(header.clone(), id.0.clone());
            id
        }
    };
    let value = id.0.clone();
    req.extensions_mut().insert(id);
    value
}

/// Copies the id onto the response, unless the handler set one itself (e.g. a proxy
/// passing one through): that one wins.
fn tag_response(header: &HeaderName, id: HeaderValue, res: &mut Response) {
    if !res.headers().contains_key(header) {
        res.headers_mut().insert(header, id);
    }
}

pin_project_lite::pin_project! {
    /// Response future of [`SetRequestId`]: copies the id onto the response.
    pub struct RequestIdFuture<F> {
        #[pin]
        inner: F,
        header: Option<(HeaderName, HeaderValue)>,
    }
}

impl<F> std::fmt::Debug for RequestIdFuture<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestIdFuture").finish_non_exhaustive()
    }
}

impl<F> Future for RequestIdFuture<F>
where
    F: Future<Output = Result<Response, Infallible>>,
{
    type Output = Result<Response, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let Ok(mut res) = std::task::ready!(this.inner.poll(cx));
        if let Some((name, value)) = this.header.take() {
            tag_response(&name, value, &mut res);
        }
        Poll::Ready(Ok(res))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use axum::body::Body;
    use tower::ServiceExt;

    #[test]
    fn safe_ids() {
        assert!(is_safe_id(b"abc-123"));
        assert!(is_safe_id(b"0190b3c2-7e1a-7cc0-9a3b-4f1c2d3e4f5a"));
        assert!(is_safe_id(b"Root=1-5759e988-bd862e3fe1be46a994272793"));
        assert!(is_safe_id(&[b'a'; 128]));
        assert!(!is_safe_id(&[b'a'; 129]));
        assert!(!is_safe_id(b""));
        assert!(!is_safe_id(b"a b"));
        assert!(!is_safe_id(b"a\"b"));
        assert!(!is_safe_id(b"a\\nb"));
        assert!(!is_safe_id(b"<script>"));
        assert!(!is_safe_id("é".as_bytes()));
    }

    #[test]
    fn generated_ids_are_v7_and_sort_by_time() {
        let a = RequestId::generate();
        let b = RequestId::generate();
        let ua = uuid::Uuid::parse_str(a.as_str()).unwrap();
        assert_eq!(ua.get_version_num(), 7);
        assert!(a.as_str() < b.as_str(), "{a} then {b}");
        assert!(is_safe_id(a.as_str().as_bytes()));
        // Strictly increasing, also within one millisecond.
        let ids: Vec<RequestId> = (0..2000).map(|_| RequestId::generate()).collect();
        assert!(ids.windows(2).all(|w| w[0].as_str() < w[1].as_str()));
    }

    #[test]
    fn ids_from_many_threads_are_unique() {
        let threads: Vec<_> = (0..4)
            .map(|_| {
                std::thread::spawn(|| {
                    (0..5000)
                        .map(|_| RequestId::generate().as_str().to_owned())
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let mut all = std::collections::HashSet::new();
        for t in threads {
            for id in t.join().unwrap() {
                assert!(all.insert(id), "duplicate id");
            }
        }
        assert_eq!(all.len(), 20_000);
    }

    async fn run(layer: RequestIdLayer, incoming: Option<&str>) -> (String, String) {
        let svc = tower::service_fn(|req: Request| async move {
            let ext = req.extensions().get::<RequestId>().unwrap().to_string();
            let hdr = req.headers()["x-request-id"].to_str().unwrap().to_owned();
            assert_eq!(ext, hdr);
            Ok::<_, Infallible>(Response::new(Body::from(ext)))
        });
        let mut req = http::Request::get("/");
        if let Some(id) = incoming {
            req = req.header("x-request-id", id);
        }
        let res = layer
            .layer(svc)
            .oneshot(req.body(Body::empty()).unwrap())
            .await
            .unwrap();
        let header = res.headers()["x-request-id"].to_str().unwrap().to_owned();
        let body = axum::body::to_bytes(res.into_body(), 1024).await.unwrap();
        (header, String::from_utf8(body.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn keeps_safe_incoming_id_everywhere() {
        let (header, seen) = run(RequestIdLayer::new(), Some("req-42")).await;
        assert_eq!(header, "req-42");
        assert_eq!(seen, "req-42");
    }

    #[tokio::test]
    async fn replaces_unsafe_or_missing_id() {
        let long = "x".repeat(200);
        for incoming in [
            None,
            Some("has space"),
            Some(long.as_str()),
            Some("\"quoted\""),
        ] {
            let (header, seen) = run(RequestIdLayer::new(), incoming).await;
            assert_eq!(header, seen);
            assert_eq!(
                uuid::Uuid::parse_str(&header).unwrap().get_version_num(),
                7,
                "{incoming:?}"
            );
        }
    }

    #[tokio::test]
    async fn can_ignore_incoming_ids() {
        let (header, _) = run(RequestIdLayer::new().accept_incoming(false), Some("req-42")).await;
        assert_ne!(header, "req-42");
    }

    #[test]
    fn config_rejects_bad_header_name() {
        let cfg = LoggingConfig {
            request_id_header: "bad header".into(),
            ..LoggingConfig::default()
        };
        let err = RequestIdLayer::from_config(&cfg, &BuildContext::default()).unwrap_err();
        assert!(err.has_key("logging.request_id_header"));
    }
}
