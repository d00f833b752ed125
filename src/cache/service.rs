//! The cache service: lookup, serve, fill, invalidate.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::Body;
use axum::extract::Request;
use axum::response::Response;
use bytes::Bytes;
use http::header::{
    AGE, CACHE_CONTROL, CONTENT_LENGTH, CONTENT_LOCATION, DATE, ETAG, EXPIRES, HOST, IF_NONE_MATCH,
    LOCATION, TRANSFER_ENCODING, VARY,
};
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use tower::{Service, ServiceExt};

use super::body::TeeBody;
use super::entry::{Kind, ResponseData, Stored};
use super::flight::{self, FlightGuard, Role, Waited};
use super::key::{self, Key, KeyBuilder};
use super::policy;
use super::{COLLAPSE_WAIT, Rule, STREAM_WAIT, Shared, outcome};
use crate::client_ip::client_info;
use crate::identity::Identity;
use crate::outcome::CacheStatus;

const X_CACHE: HeaderName = HeaderName::from_static("x-cache");
const CACHE_STATUS: HeaderName = HeaderName::from_static("cache-status");
const SURROGATE_KEY: HeaderName = HeaderName::from_static("surrogate-key");
const HIT: HeaderValue = HeaderValue::from_static("HIT");
const MISS: HeaderValue = HeaderValue::from_static("MISS");
const AGE_ZERO: HeaderValue = HeaderValue::from_static("0");

/// Service made by [`CacheLayer`](super::CacheLayer).
#[derive(Clone)]
pub struct Cache<S> {
    inner: S,
    shared: Arc<Shared>,
    /// Attach the outcome record to every response (see `CacheLayer::recording`).
    record: bool,
}

impl<S> Cache<S> {
    pub(crate) fn new(inner: S, shared: Arc<Shared>, record: bool) -> Self {
        Self {
            inner,
            shared,
            record,
        }
    }
}

impl<S> std::fmt::Debug for Cache<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cache").finish_non_exhaustive()
    }
}

impl<S> Service<Request> for Cache<S>
where
    S: Service<Request, Response = Response, Error = Infallible> + Clone + Send + Sync + 'static,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request) -> Self::Future {
        let path = req.uri().path();
        let Some(rule) = self
            .shared
            .rules
            .iter()
            .position(|r| r.matcher.matches_path(path))
        else {
            return Box::pin(self.inner.call(req));
        };
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        let shared = self.shared.clone();
        let record = self.record || crate::outcome::wanted(req.extensions());
        let fut = Infallibly {
            inner: handle(shared, inner, req, rule, record),
        };
        Box::pin(fut)
    }
}

pin_project_lite::pin_project! {
    /// A future of a `Response` as the `Result` a `Service` returns. Not an `async`
    /// block around it: that would keep a second copy of the request it captured
    /// next to the future it moved it into.
    struct Infallibly<F> {
        #[pin]
        inner: F,
    }
}

impl<F: Future<Output = Response>> Future for Infallibly<F> {
    type Output = Result<Response, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.project().inner.poll(cx).map(Ok)
    }
}

/// What the key derivation found out about a request.
struct Ctx {
    key: Key,
    head: bool,
    /// Carries credentials and shares the anonymous key: only `public` entries serve it,
    /// only `public` responses fill.
    shared_credentialed: bool,
    /// Why this request must not fill the cache even if the response is storable.
    fill_block: Option<&'static str>,
    /// Attach the outcome record: the request asks for it
    /// ([`RecordOutcomes`](crate::outcome::RecordOutcomes)), or the stack reads it always.
    record: bool,
    /// The request has `If-None-Match` (found by the header scan: no lookup per hit).
    if_none_match: bool,
}

/// A hit (lookup, serve) runs inline; every other path is a boxed future of its
/// own, so the future of a hit stays small: it is moved into its box on every
/// request, and a future over 1 KiB also leaves glibc's fast allocation path.
async fn handle<S>(
    shared: Arc<Shared>,
    mut inner: S,
    req: Request,
    ri: usize,
    record: bool,
) -> Response
where
    S: Service<Request, Response = Response, Error = Infallible> + Clone + Send + Sync + 'static,
    S::Future: Send + 'static,
{
    let rule = &shared.rules[ri];
    let method = req.method();
    if method != Method::GET && method != Method::HEAD {
        return Box::pin(other_method(shared, inner, req, record)).await;
    }
    let ctx = match prepare(&req, rule, record) {
        Ok(ctx) => ctx,
        Err(reason) => {
            return bypass(Box::pin(call(&mut inner, req)).await, reason, record);
        }
    };
    let now = shared.clock.now_ms();
    let (found, gen_) = match lookup(&shared, &ctx.key, req.headers(), now).await {
        Ok(f) => f,
        Err(e) => {
            tracing::debug!(error = %e, "cache lookup failed; passing through");
            return bypass(
                Box::pin(call(&mut inner, req)).await,
                "store-error",
                ctx.record,
            );
        }
    };
    let mut stale = None;
    if let Some((rec, _)) = found
        && let Kind::Response(data) = &rec.kind
        && (!ctx.shared_credentialed || data.public)
    {
        if now < rec.fresh_until_ms {
            return serve(&rec, data, req.headers(), &ctx, now, Served::Hit);
        }
        if now < rec.swr_until_ms {
            spawn_refresh(&shared, inner, &req, ri, &ctx, gen_);
            return serve(
                &rec,
                data,
                req.headers(),
                &ctx,
                now,
                Served::StaleWhileRevalidate,
            );
        }
        if now < rec.sie_until_ms {
            stale = Some(rec.clone());
        }
    }
    Box::pin(after_miss(shared, inner, req, ri, ctx, gen_, stale)).await
}

/// Methods other than GET and HEAD: passed through; a successful unsafe one
/// invalidates what is stored for its target.
async fn other_method<S>(shared: Arc<Shared>, mut inner: S, req: Request, record: bool) -> Response
where
    S: Service<Request, Response = Response, Error = Infallible> + Clone + Send + Sync + 'static,
    S::Future: Send + 'static,
{
    let unsafe_method = !req.method().is_safe();
    let target = unsafe_method
        .then(|| request_host(&req).map(|h| (h.into_owned(), req.uri().path().to_owned())))
        .flatten();
    let mut res = call(&mut inner, req).await;
    if let Some((host, path)) = target
        && (res.status().is_success() || res.status().is_redirection())
    {
        invalidate_after(&shared, &host, &path, res.headers()).await;
    }
    mark(
        &mut res,
        CacheStatus::Bypass,
        "method",
        HeaderValue::from_static("palisade; fwd=method"),
        MISS,
        None,
        record,
    );
    res
}

/// No fresh entry: wait for a fill in flight, fill, or pass through.
async fn after_miss<S>(
    shared: Arc<Shared>,
    mut inner: S,
    req: Request,
    ri: usize,
    ctx: Ctx,
    gen_: u64,
    stale: Option<Arc<Stored>>,
) -> Response
where
    S: Service<Request, Response = Response, Error = Infallible> + Clone + Send + Sync + 'static,
    S::Future: Send + 'static,
{
    let rule = &shared.rules[ri];
    if ctx.head || ctx.fill_block.is_some() {
        // These never fill, but an entry being filled right now serves them too.
        if let Some(rx) = shared.flights.peek(&ctx.key.full) {
            flight::wait(rx, COLLAPSE_WAIT, STREAM_WAIT).await;
        }
        if let Some(res) = second_look(&shared, &ctx, req.headers()).await {
            return res;
        }
        return fill_from(&shared, &mut inner, req, rule, &ctx, gen_, stale, None).await;
    }
    if ctx.shared_credentialed {
        // Fills only if the response is `public`; leads when nobody else does, so
        // that requests arriving meanwhile wait for that possible entry.
        let guard = shared.flights.try_lead(ctx.key.full);
        return fill_from(&shared, &mut inner, req, rule, &ctx, gen_, stale, guard).await;
    }
    let mut gen_ = gen_;
    let mut reason = "collapsed-miss";
    // Two rounds: a follower whose leader stored nothing (another variant, an
    // uncacheable response) may lead the next fill itself.
    for _ in 0..2 {
        match shared.flights.join(ctx.key.full) {
            #[allow(unused_mut)]
            Role::Leader(mut guard) => {
                // A remote store may have finished a fill between our lookup and
                // taking the lead: look once more.
                if let Some(res) = second_look(&shared, &ctx, req.headers()).await {
                    return res;
                }
                #[cfg(feature = "redis")]
                if shared.lock
                    && let super::Store::Redis(store) = &shared.store
                {
                    match fleet_lock(&shared, store, &ctx, req.headers(), &mut guard).await {
                        Ok(()) => {}
                        Err(served) => return served,
                    }
                }
                return fill_from(
                    &shared,
                    &mut inner,
                    req,
                    rule,
                    &ctx,
                    gen_,
                    stale,
                    Some(guard),
                )
                .await;
            }
            Role::Follower(rx) => {
                let waited = flight::wait(rx, COLLAPSE_WAIT, STREAM_WAIT).await;
                let now = shared.clock.now_ms();
                match lookup(&shared, &ctx.key, req.headers(), now).await {
                    Ok((Some((rec, _)), _))
                        if matches!(rec.kind, Kind::Response(_)) && now < rec.fresh_until_ms =>
                    {
                        if let Kind::Response(data) = &rec.kind {
                            return serve(&rec, data, req.headers(), &ctx, now, Served::Collapsed);
                        }
                    }
                    Ok((_, g)) => gen_ = g,
                    Err(_) => break,
                }
                match waited {
                    Waited::Done => {}
                    Waited::TimedOut => {
                        reason = "collapse-timeout";
                        break;
                    }
                    Waited::Streaming => {
                        reason = "collapse-streaming";
                        break;
                    }
                }
            }
        }
    }
    let mut res = call(&mut inner, req).await;
    mark_miss(&mut res, reason, ctx.record);
    res
}

/// `lock = true`: one replica of the fleet fills a key; the others poll the store
/// for its entry (bounded by the collapse wait, then they fill themselves).
/// `Err(response)` when the entry appeared and was served.
#[cfg(feature = "redis")]
async fn fleet_lock(
    shared: &Arc<Shared>,
    store: &super::redis::RedisStore,
    ctx: &Ctx,
    headers: &HeaderMap,
    guard: &mut FlightGuard,
) -> Result<(), Response> {
    const POLL: std::time::Duration = std::time::Duration::from_millis(50);
    let lock_ms = COLLAPSE_WAIT.as_millis() as u64;
    match store.try_lock(&ctx.key, lock_ms).await {
        Ok(true) => {
            let shared = shared.clone();
            let key = ctx.key;
            guard.on_release(Box::new(move || {
                if let Ok(rt) = tokio::runtime::Handle::try_current() {
                    rt.spawn(async move {
                        if let super::Store::Redis(store) = &shared.store {
                            store.unlock(&key).await;
                        }
                    });
                }
            }));
            Ok(())
        }
        Ok(false) => {
            let deadline = tokio::time::Instant::now() + COLLAPSE_WAIT;
            while tokio::time::Instant::now() < deadline {
                tokio::time::sleep(POLL).await;
                let now = shared.clock.now_ms();
                match lookup(shared, &ctx.key, headers, now).await {
                    Ok((Some((rec, _)), _)) => {
                        if let Kind::Response(data) = &rec.kind
                            && now < rec.fresh_until_ms
                        {
                            return Err(serve(&rec, data, headers, ctx, now, Served::Collapsed));
                        }
                    }
                    Ok((None, _)) => {}
                    Err(_) => break,
                }
            }
            Ok(())
        }
        Err(_) => Ok(()),
    }
}

/// Looks the key up again after a wait, on remote stores only (the memory store
/// fills synchronously, so a second look there would find nothing new).
async fn second_look(shared: &Shared, ctx: &Ctx, headers: &HeaderMap) -> Option<Response> {
    if matches!(shared.store, super::Store::Memory(_)) {
        return None;
    }
    let now = shared.clock.now_ms();
    match lookup(shared, &ctx.key, headers, now).await {
        Ok((Some((rec, _)), _)) => match &rec.kind {
            Kind::Response(data)
                if now < rec.fresh_until_ms && (!ctx.shared_credentialed || data.public) =>
            {
                Some(serve(&rec, data, headers, ctx, now, Served::Hit))
            }
            _ => None,
        },
        _ => None,
    }
}

async fn call<S>(inner: &mut S, req: Request) -> Response
where
    S: Service<Request, Response = Response, Error = Infallible>,
{
    match inner.call(req).await {
        Ok(res) => res,
        Err(never) => match never {},
    }
}

/// The validated host of a request: the absolute-form authority or the single
/// `Host` header (they must agree when both are present).
fn request_host(req: &Request) -> Option<std::borrow::Cow<'_, str>> {
    let mut hosts = req.headers().get_all(HOST).iter();
    let header = hosts.next();
    if hosts.next().is_some() {
        return None;
    }
    let raw = match (req.uri().authority(), header) {
        (Some(a), Some(h)) => {
            if !a.as_str().as_bytes().eq_ignore_ascii_case(h.as_bytes()) {
                return None;
            }
            h.as_bytes()
        }
        (Some(a), None) => a.as_str().as_bytes(),
        (None, Some(h)) => h.as_bytes(),
        (None, None) => return None,
    };
    key::validate_host(raw)
}

fn prepare(req: &Request, rule: &Rule, record: bool) -> Result<Ctx, &'static str> {
    let headers = req.headers();
    let scan = policy::RequestHeaders::scan(headers);
    if scan.body_framing
        && (headers.contains_key(TRANSFER_ENCODING)
            || headers
                .get(CONTENT_LENGTH)
                .is_some_and(|v| v.as_bytes() != b"0"))
    {
        return Err("request-body");
    }
    let host = request_host(req).ok_or("host")?;
    let identity = req.extensions().get::<Identity>();
    let has_credentials = identity.is_some() || scan.credentials;
    if has_credentials && rule.per_identity && identity.is_none() {
        return Err("credentials");
    }
    let info = client_info(req);
    let unkeyed = scan.unkeyed || (!info.forwarded && scan.forwarding);
    let uri = req.uri();
    let mut b = KeyBuilder::new();
    b.part(b"GET")
        .part(info.scheme.as_str().as_bytes())
        .part(host.as_bytes())
        .part(uri.path().as_bytes())
        .part(key::normalise_query(uri.query(), &rule.ignore_query).as_bytes());
    for name in &rule.vary {
        b.header(headers, name);
    }
    match identity {
        Some(id) if rule.per_identity => {
            b.part(id.kind.as_str().as_bytes()).part(id.id.as_bytes());
        }
        _ => {
            b.part(b"");
        }
    }
    Ok(Ctx {
        key: Key {
            group: key::group(&host, uri.path()),
            full: b.finish(),
        },
        head: req.method() == Method::HEAD,
        shared_credentialed: has_credentials && !rule.per_identity,
        fill_block: if unkeyed {
            Some("unkeyed-header")
        } else if policy::request_has_csp_nonce(req) {
            Some("csp-nonce")
        } else {
            None
        },
        record,
        if_none_match: scan.if_none_match,
    })
}

fn variant_key(primary: &Key, names: &[HeaderName], headers: &HeaderMap) -> Key {
    let mut b = KeyBuilder::new();
    b.part(&primary.full).part(b"vary");
    for n in names {
        b.header(headers, n);
    }
    Key {
        group: primary.group,
        full: b.finish(),
    }
}

type Found = (Option<(Arc<Stored>, Key)>, u64);

/// Finds the valid record for a request: follows a variant index, and drops records
/// built under an older path or tag generation.
async fn lookup(
    shared: &Shared,
    primary: &Key,
    headers: &HeaderMap,
    now: u64,
) -> Result<Found, super::CacheStoreError> {
    let (rec, gen_) = shared.store.get(primary, now).await?;
    let Some(mut rec) = rec.filter(|r| r.gen_ == gen_) else {
        return Ok((None, gen_));
    };
    let mut key = *primary;
    if let Kind::Variants(names) = &rec.kind {
        key = variant_key(primary, names, headers);
        // Boxed, as is the tag check below: only entries with `Vary` or tags need
        // them, and a hit's future would otherwise carry their space too.
        let (inner, _) = Box::pin(shared.store.get(&key, now)).await?;
        match inner.filter(|r| r.gen_ == gen_ && matches!(r.kind, Kind::Response(_))) {
            Some(r) => rec = r,
            None => return Ok((None, gen_)),
        }
    }
    if !rec.tags.is_empty() {
        let names: Vec<String> = rec.tags.iter().map(|(t, _)| t.clone()).collect();
        let current = Box::pin(shared.store.tag_gens(&names)).await?;
        if rec.tags.iter().zip(&current).any(|((_, v), c)| v != c) {
            return Ok((None, gen_));
        }
    }
    Ok((Some((rec, key)), gen_))
}

#[derive(Clone, Copy)]
enum Served {
    Hit,
    Collapsed,
    StaleWhileRevalidate,
    StaleIfError(StatusCode),
}

fn serve(
    rec: &Stored,
    data: &ResponseData,
    headers: &HeaderMap,
    ctx: &Ctx,
    now: u64,
    how: Served,
) -> Response {
    let head = ctx.head;
    let age = now.saturating_sub(rec.stored_at_ms) / 1000;
    let ttl = (rec.fresh_until_ms as i64 - now as i64).div_euclid(1000);
    let not_modified = ctx.if_none_match
        && headers
            .get_all(IF_NONE_MATCH)
            .iter()
            .any(|v| etag_matches(v, &data.etag));
    if matches!(how, Served::Hit) && !head && !not_modified {
        // The common case: the same headers for every hit within this second.
        let mut res = Response::new(Body::from(data.body.clone()));
        *res.status_mut() = data.status;
        *res.headers_mut() = data.hit_headers.get_or_build(age, ttl, || {
            // Room for what the layers outside add (axum's `Content-Length`, security
            // and rate-limit headers, the request id): a clone keeps the table's size,
            // and a full table is rebuilt on the next insert (~1 500 instructions).
            let mut h = HeaderMap::with_capacity(data.headers.len() + 4 + OUTER_HEADERS);
            for (n, v) in &data.headers {
                h.append(n.clone(), v.clone());
            }
            h.insert(ETAG, data.etag.clone());
            h.insert(CACHE_STATUS, status_value(hit_status(ttl)));
            h.insert(X_CACHE, HIT);
            h.insert(AGE, HeaderValue::from(age));
            h
        });
        if ctx.record {
            res.extensions_mut()
                .insert(outcome(CacheStatus::Hit, "hit"));
        }
        return res;
    }
    let (status, reason, cache_status) = match how {
        Served::Hit => (CacheStatus::Hit, "hit", hit_status(ttl)),
        Served::Collapsed => (
            CacheStatus::Hit,
            "collapsed",
            format!("palisade; hit; ttl={ttl}; detail=collapsed"),
        ),
        Served::StaleWhileRevalidate => (
            CacheStatus::Stale,
            "stale-while-revalidate",
            format!("palisade; hit; ttl={ttl}; detail=stale-while-revalidate"),
        ),
        Served::StaleIfError(s) => (
            CacheStatus::Stale,
            "stale-if-error",
            format!(
                "palisade; fwd=miss; fwd-status={}; ttl={ttl}; detail=stale-if-error",
                s.as_u16()
            ),
        ),
    };
    let mut res = if not_modified {
        // RFC 9110 §15.4.5: the 304 carries the validators and caching fields.
        let mut res = Response::new(Body::empty());
        *res.status_mut() = StatusCode::NOT_MODIFIED;
        let h = res.headers_mut();
        for (n, v) in &data.headers {
            if [CACHE_CONTROL, CONTENT_LOCATION, DATE, EXPIRES, VARY].contains(n) {
                h.append(n.clone(), v.clone());
            }
        }
        res
    } else {
        let body = if head {
            Body::empty()
        } else {
            Body::from(data.body.clone())
        };
        let mut res = Response::new(body);
        *res.status_mut() = data.status;
        let h = res.headers_mut();
        h.reserve(data.headers.len() + 5);
        for (n, v) in &data.headers {
            h.append(n.clone(), v.clone());
        }
        if head {
            h.insert(CONTENT_LENGTH, HeaderValue::from(data.body.len()));
        }
        res
    };
    res.headers_mut().insert(ETAG, data.etag.clone());
    let cache_status = status_value(cache_status);
    mark(
        &mut res,
        status,
        reason,
        cache_status,
        HIT,
        Some(HeaderValue::from(age)),
        ctx.record,
    );
    res
}

/// Headers a hit's response has room for beyond its own, for the layers outside the
/// cache (see [`serve`]).
const OUTER_HEADERS: usize = 16;

/// A `Cache-Status` value (only digits and ASCII text are formatted into it).
fn status_value(s: String) -> HeaderValue {
    HeaderValue::try_from(s).unwrap_or_else(|_| HeaderValue::from_static("palisade; hit"))
}

/// `palisade; hit; ttl=N` without `format!`.
fn hit_status(ttl: i64) -> String {
    let mut itoa = itoa::Buffer::new();
    let ttl = itoa.format(ttl);
    let mut s = String::with_capacity(20 + ttl.len());
    s.push_str("palisade; hit; ttl=");
    s.push_str(ttl);
    s
}

/// Weak comparison (RFC 9110 §13.1.2), `*` included.
fn etag_matches(if_none_match: &HeaderValue, etag: &HeaderValue) -> bool {
    let Ok(list) = if_none_match.to_str() else {
        return false;
    };
    let strip = |t: &str| t.trim().trim_start_matches("W/").to_owned();
    let ours = etag.to_str().map(strip).unwrap_or_default();
    policy::split_list(list).any(|t| t == "*" || strip(t) == ours)
}

/// The cache headers, and the [`CacheOutcome`](crate::outcome::CacheOutcome) record
/// when the request asked for records (`record`: the first extension of a response
/// costs three allocations, wasted when no layer reads it).
#[allow(clippy::too_many_arguments)]
fn mark(
    res: &mut Response,
    status: CacheStatus,
    reason: &'static str,
    cache_status: HeaderValue,
    x_cache: HeaderValue,
    age: Option<HeaderValue>,
    record: bool,
) {
    let h = res.headers_mut();
    h.insert(CACHE_STATUS, cache_status);
    h.insert(X_CACHE, x_cache);
    h.insert(AGE, age.unwrap_or(AGE_ZERO));
    if record {
        res.extensions_mut().insert(outcome(status, reason));
    }
}

fn bypass(mut res: Response, reason: &'static str, record: bool) -> Response {
    let cs = HeaderValue::try_from(format!("palisade; fwd=bypass; detail={reason}"))
        .unwrap_or_else(|_| HeaderValue::from_static("palisade; fwd=bypass"));
    mark(
        &mut res,
        CacheStatus::Bypass,
        reason,
        cs,
        MISS,
        None,
        record,
    );
    res
}

fn mark_miss(res: &mut Response, reason: &'static str, record: bool) {
    let cs = if reason == "miss" {
        HeaderValue::from_static("palisade; fwd=miss")
    } else {
        HeaderValue::try_from(format!("palisade; fwd=miss; detail={reason}"))
            .unwrap_or_else(|_| HeaderValue::from_static("palisade; fwd=miss"))
    };
    mark(res, CacheStatus::Miss, reason, cs, MISS, None, record);
}

/// Calls the handler on a miss and, when the response may be stored, tees its body
/// into the store.
#[allow(clippy::too_many_arguments)]
async fn fill_from<S>(
    shared: &Arc<Shared>,
    inner: &mut S,
    req: Request,
    rule: &Rule,
    ctx: &Ctx,
    gen_: u64,
    stale: Option<Arc<Stored>>,
    guard: Option<FlightGuard>,
) -> Response
where
    S: Service<Request, Response = Response, Error = Infallible>,
{
    let req_headers = req.headers().clone();
    let head = req.method() == Method::HEAD;
    // Before the handler runs: a tag purge from now on keeps its response out.
    let epoch = if head || ctx.fill_block.is_some() {
        0
    } else {
        match shared.store.purge_epoch().await {
            Ok(e) => e,
            Err(e) => {
                tracing::debug!(error = %e, "cache store failed; passing through");
                return bypass(call(inner, req).await, "store-error", ctx.record);
            }
        }
    };
    let res = call(inner, req).await;
    let now = shared.clock.now_ms();
    if res.status().is_server_error()
        && let Some(rec) = stale
        && let Kind::Response(data) = &rec.kind
        && now < rec.sie_until_ms
    {
        let status = res.status();
        return serve(
            &rec,
            data,
            &req_headers,
            ctx,
            now,
            Served::StaleIfError(status),
        );
    }
    let (mut res, stored) = fill(
        shared,
        res,
        rule,
        ctx,
        (gen_, epoch),
        &req_headers,
        now,
        guard,
    );
    mark_miss(&mut res, stored.err().unwrap_or("miss"), ctx.record);
    res
}

/// Decides whether `res` is stored and, if so, wraps its body. Strips the tag header.
///
/// `gen_` is the resource group's generation and `epoch` the purge epoch, both read
/// before the handler was called.
#[allow(clippy::too_many_arguments)]
fn fill(
    shared: &Arc<Shared>,
    res: Response,
    rule: &Rule,
    ctx: &Ctx,
    (gen_, epoch): (u64, u64),
    req_headers: &HeaderMap,
    now: u64,
    guard: Option<FlightGuard>,
) -> (Response, Result<(), &'static str>) {
    let (mut parts, body) = res.into_parts();
    let tags = take_tags(&mut parts.headers, &shared.tag_header);
    if shared.surrogate_key
        && !tags.is_empty()
        && let Ok(v) = HeaderValue::try_from(tags.join(" "))
    {
        parts.headers.insert(SURROGATE_KEY, v);
    }
    let decision = decide(shared, &parts, rule, ctx, req_headers);
    let (ttl, vary, public) = match decision {
        Ok(d) => d,
        Err(reason) => return (Response::from_parts(parts, body), Err(reason)),
    };
    let stored_at = now;
    let fresh_until = now + ttl * 1000;
    let mut headers = Vec::with_capacity(parts.headers.len());
    for (n, v) in &parts.headers {
        if !skip_header(n) {
            headers.push((n.clone(), v.clone()));
        }
    }
    if !parts.headers.contains_key(DATE) {
        // RFC 9110 §6.6.1: the origin's Date, kept so hits report when the
        // response was generated (the server would otherwise stamp each hit anew).
        if let Ok(v) = HeaderValue::try_from(http_date(now / 1000)) {
            headers.push((DATE, v));
        }
    }
    let upstream_etag = parts.headers.get(ETAG).cloned();
    let key = if vary.is_empty() {
        ctx.key
    } else {
        variant_key(&ctx.key, &vary, req_headers)
    };
    let primary = ctx.key;
    let status = parts.status;
    // The announced length: the header, or the exact size hint hyper turns into one.
    let expected = parts
        .headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse().ok())
        .or_else(|| http_body::Body::size_hint(&body).exact());
    let stage = guard.as_ref().map(FlightGuard::stage);
    let swr_ms = shared.swr_ms;
    let sie_ms = shared.sie_ms;
    let shared2 = shared.clone();
    let on_complete = Box::new(move |body: Bytes| {
        let etag = upstream_etag.unwrap_or_else(|| etag_of(&body));
        let data = ResponseData {
            status,
            headers,
            etag,
            body,
            public,
            hit_headers: Default::default(),
        };
        let base = Stored {
            gen_,
            stored_at_ms: stored_at,
            fresh_until_ms: fresh_until,
            swr_until_ms: if swr_ms > 0 { fresh_until + swr_ms } else { 0 },
            sie_until_ms: if sie_ms > 0 { fresh_until + sie_ms } else { 0 },
            tags: Vec::new(),
            kind: Kind::Variants(vary.clone()),
        };
        #[allow(irrefutable_let_patterns)]
        if let super::Store::Memory(m) = &shared2.store {
            // In process: store before the body's end reaches the client, so the
            // next request is a hit.
            let Some(tag_gens) = m.gens.tags_if_unpurged(&tags, epoch) else {
                return;
            };
            let rec = base.with_response(tags, tag_gens, data);
            if !vary.is_empty() {
                m.put(primary.full, Arc::new(base));
            }
            m.put(key.full, Arc::new(rec));
            drop(guard);
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        rt.spawn(async move {
            let _guard = guard;
            let tag_gens = match shared2.store.tag_gens_if_unpurged(&tags, epoch).await {
                Ok(Some(g)) => g,
                // Purged meanwhile, or unknown: store nothing.
                Ok(None) | Err(_) => return,
            };
            let rec = base.with_response(tags, tag_gens, data);
            if !vary.is_empty() {
                shared2.store.put(&primary, Arc::new(base), now).await;
            }
            shared2.store.put(&key, Arc::new(rec), now).await;
        });
    });
    let body =
        Body::new(TeeBody::new(body, shared.max_body, expected, on_complete).with_stage(stage));
    (Response::from_parts(parts, body), Ok(()))
}

fn decide(
    shared: &Shared,
    parts: &http::response::Parts,
    rule: &Rule,
    ctx: &Ctx,
    req_headers: &HeaderMap,
) -> Result<(u64, Vec<HeaderName>, bool), &'static str> {
    if ctx.head {
        return Err("head");
    }
    if let Some(reason) = ctx.fill_block {
        return Err(reason);
    }
    let (ttl, directives) = policy::storable(parts, rule.ttl_s, ctx.shared_credentialed)?;
    let vary = policy::vary_names(&parts.headers).map_err(|()| "vary-star")?;
    if vary
        .iter()
        .any(|n| policy::is_credential_header(n.as_str()) && req_headers.contains_key(n))
    {
        return Err("vary-credential");
    }
    if parts
        .headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
        .is_some_and(|n| n > shared.max_body as u64)
    {
        return Err("too-big");
    }
    Ok((ttl, vary, directives.public))
}

/// Headers never stored: hop-by-hop ones, framing, and what the cache recomputes.
fn skip_header(n: &HeaderName) -> bool {
    matches!(
        n.as_str(),
        "connection"
            | "keep-alive"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
            | "proxy-authenticate"
            | "proxy-authentication-info"
            | "proxy-connection"
            | "content-length"
            | "age"
            | "etag"
            | "x-cache"
            | "cache-status"
            | "x-request-id"
    )
}

fn take_tags(headers: &mut HeaderMap, name: &HeaderName) -> Vec<String> {
    let mut tags = Vec::new();
    if let http::header::Entry::Occupied(e) = headers.entry(name) {
        for v in e.remove_entry_mult().1 {
            if let Ok(s) = v.to_str() {
                for t in s.split([' ', ',']).filter(|t| !t.is_empty()) {
                    if !tags.iter().any(|x| x == t) {
                        tags.push(t.to_owned());
                    }
                }
            }
        }
    }
    tags
}

/// IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`) of a Unix time in seconds.
fn http_date(secs: u64) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let (year, month, day) = crate::civil::civil_from_days(days as i64);
    format!(
        "{}, {:02} {} {} {:02}:{:02}:{:02} GMT",
        DAYS[(days % 7) as usize],
        day,
        MONTHS[(month - 1) as usize],
        year,
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// A strong ETag from the body: the same bytes give the same tag on every replica.
fn etag_of(body: &[u8]) -> HeaderValue {
    let hash = blake3::hash(body);
    let s = format!("\"{}\"", key::hex(&hash.as_bytes()[..16]));
    HeaderValue::try_from(s).unwrap_or_else(|_| HeaderValue::from_static("\"\""))
}

/// RFC 9111 §4.4: after a successful unsafe request, its target (and a same-host
/// `Location` / `Content-Location`) is invalid.
async fn invalidate_after(shared: &Shared, host: &str, path: &str, headers: &HeaderMap) {
    let mut groups = vec![key::group(host, path)];
    for h in [LOCATION, CONTENT_LOCATION] {
        if let Some(v) = headers.get(h).and_then(|v| v.to_str().ok())
            && v.starts_with('/')
            && !v.starts_with("//")
        {
            let p = v.split(['?', '#']).next().unwrap_or(v);
            groups.push(key::group(host, p));
        }
    }
    for g in groups {
        if let Err(e) = shared.store.invalidate(g).await {
            tracing::warn!(error = %e, "cache invalidation failed");
        }
    }
}

/// Serves stale now, refreshes once in the background (stops on shutdown).
fn spawn_refresh<S>(shared: &Arc<Shared>, inner: S, req: &Request, ri: usize, ctx: &Ctx, gen_: u64)
where
    S: Service<Request, Response = Response, Error = Infallible> + Clone + Send + Sync + 'static,
    S::Future: Send + 'static,
{
    if ctx.head
        || ctx.fill_block.is_some()
        || ctx.shared_credentialed
        || shared.shutdown.is_triggered()
    {
        return;
    }
    let Some(guard) = shared.flights.try_lead(ctx.key.full) else {
        return;
    };
    let mut refresh = Request::new(Body::empty());
    *refresh.uri_mut() = req.uri().clone();
    *refresh.headers_mut() = req.headers().clone();
    *refresh.extensions_mut() = req.extensions().clone();
    let shared = shared.clone();
    let ctx = Ctx {
        key: ctx.key,
        head: false,
        shared_credentialed: false,
        fill_block: None,
        // Nobody reads the refresh's response.
        record: false,
        if_none_match: false,
    };
    tokio::spawn(async move {
        let shutdown = shared.shutdown.clone();
        let work = async {
            let headers = refresh.headers().clone();
            let Ok(epoch) = shared.store.purge_epoch().await else {
                return;
            };
            let res = match inner.oneshot(refresh).await {
                Ok(r) => r,
                Err(never) => match never {},
            };
            let now = shared.clock.now_ms();
            let (res, _) = fill(
                &shared,
                res,
                &shared.rules[ri],
                &ctx,
                (gen_, epoch),
                &headers,
                now,
                Some(guard),
            );
            let _ = http_body_util::BodyExt::collect(res.into_body()).await;
        };
        tokio::select! {
            _ = shutdown.wait() => {}
            _ = work => {}
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hit_status_reads_like_format() {
        for ttl in [0, 7, -1, 3600, i64::MAX] {
            assert_eq!(hit_status(ttl), format!("palisade; hit; ttl={ttl}"));
        }
    }

    #[test]
    fn http_dates() {
        assert_eq!(http_date(784_111_777), "Sun, 06 Nov 1994 08:49:37 GMT");
        assert_eq!(http_date(0), "Thu, 01 Jan 1970 00:00:00 GMT");
        assert_eq!(http_date(951_782_400), "Tue, 29 Feb 2000 00:00:00 GMT");
        assert_eq!(http_date(1_767_225_599), "Wed, 31 Dec 2025 23:59:59 GMT");
    }

    #[test]
    fn etag_comparison_is_weak() {
        let ours = HeaderValue::from_static("\"abc\"");
        for (inm, want) in [
            ("\"abc\"", true),
            ("W/\"abc\"", true),
            ("\"x\", \"abc\"", true),
            ("*", true),
            ("\"abcd\"", false),
            ("", false),
        ] {
            assert_eq!(
                etag_matches(&HeaderValue::from_static(inm), &ours),
                want,
                "{inm}"
            );
        }
    }

    #[test]
    fn tags_are_split_deduplicated_and_removed() {
        let name = HeaderName::from_static("x-cache-tags");
        let mut h = HeaderMap::new();
        h.append(&name, HeaderValue::from_static("a b,c"));
        h.append(&name, HeaderValue::from_static("a  d"));
        assert_eq!(take_tags(&mut h, &name), ["a", "b", "c", "d"]);
        assert!(!h.contains_key(&name));
    }
}
