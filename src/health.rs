//! Liveness (`/health`) and readiness (`/ready`) endpoints.
//!
//! - **Liveness**, `GET /health`: `200 {"status":"pass"}` as long as the process
//!   serves requests. It checks no dependency on purpose: a liveness probe that fails
//!   because Redis is down makes the orchestrator restart every replica at once,
//!   which fixes nothing.
//! - **Readiness**, `GET /ready`: runs every registered check **concurrently**, each
//!   with a timeout (`[health] timeout_ms`, 500 ms by default: under the 1 s default
//!   probe timeout of Kubernetes, so a hung dependency answers `fail` instead of
//!   making the probe itself time out). The result is reused for `cache_ms`
//!   (1 s), and concurrent probes share one run, so probes cannot overload a
//!   dependency. Once a graceful shutdown has begun
//!   ([`Palisade::shutdown`](crate::Palisade::shutdown)), readiness answers `fail`
//!   at once, so the load balancer drains the instance.
//!
//! Both answer `application/health+json` in the format of the IETF draft
//! *Health Check Response Format for HTTP APIs*, with `Cache-Control: no-store`:
//!
//! ```json
//! {"status":"warn","checks":{
//!   "redis:responseTime":[{"componentType":"component","status":"pass","observedValue":0.41,"observedUnit":"ms"}],
//!   "search:responseTime":[{"componentType":"component","status":"warn","observedValue":500.2,"observedUnit":"ms","output":"timed out after 500 ms"}]}}
//! ```
//!
//! `pass` and `warn` answer `200`, `fail` answers `503`. A failing *critical* check
//! makes the whole report `fail`; a failing non-critical check only `warn`.
//! With the `metrics` feature, each check's last result is the gauge
//! `palisade_health_check{check}` (1 pass, 0 fail).
//!
//! ```
//! use axum::Router;
//! use palisade::health::Health;
//! use tower::ServiceExt;
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let health = Health::empty()
//!     .check("database", true, || async { Ok(()) })
//!     .check("search", false, || async { Err("connection refused".to_string()) });
//! let app: Router = health.router();
//! let req = http::Request::get("/ready").body(axum::body::Body::empty()).unwrap();
//! let res = app.oneshot(req).await.unwrap();
//! assert_eq!(res.status(), 200); // a non-critical failure only warns
//! assert_eq!(res.headers()["content-type"], "application/health+json");
//! # }
//! ```

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::response::Response;
use http::header::{CACHE_CONTROL, CONTENT_TYPE};
use http::{HeaderValue, StatusCode};
use tokio::time::Instant;

use crate::config::HealthConfig;
use crate::error::ConfigError;
use crate::shutdown::Shutdown;
use crate::stack::BuildContext;

/// Media type of the health responses.
pub const HEALTH_JSON: HeaderValue = HeaderValue::from_static("application/health+json");

/// Longest check output reported (error messages are cut there).
const MAX_OUTPUT: usize = 200;

/// A readiness check: resolves to `Ok(())` when the dependency is usable.
pub type CheckFn =
    Arc<dyn Fn() -> Pin<Box<dyn Future<Output = Result<(), String>> + Send>> + Send + Sync>;

#[derive(Clone)]
struct Check {
    name: Arc<str>,
    critical: bool,
    run: CheckFn,
}

/// The health endpoints and their registered readiness checks.
#[derive(Clone)]
pub struct Health {
    checks: Vec<Check>,
    enabled: bool,
    path: String,
    ready_path: String,
    timeout: Duration,
    cache_ttl: Duration,
    shutdown: Option<Shutdown>,
}

impl std::fmt::Debug for Health {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Health")
            .field(
                "checks",
                &self.checks.iter().map(|c| &*c.name).collect::<Vec<_>>(),
            )
            .field("path", &self.path)
            .field("ready_path", &self.ready_path)
            .field("timeout", &self.timeout)
            .field("cache_ttl", &self.cache_ttl)
            .finish()
    }
}

impl Default for Health {
    fn default() -> Self {
        Self::empty()
    }
}

impl Health {
    /// Builds from `[health]`; readiness fails once `ctx.shutdown` is triggered.
    pub fn from_config(config: &HealthConfig, ctx: &BuildContext) -> Result<Self, ConfigError> {
        let mut errors = ConfigError::default();
        for (key, path) in [
            ("health.path", &config.path),
            ("health.ready_path", &config.ready_path),
        ] {
            if !path.starts_with('/') {
                errors.push(key, "must start with '/'");
            }
        }
        if config.path == config.ready_path {
            errors.push("health.ready_path", "must differ from health.path");
        }
        if config.timeout_ms == 0 || config.timeout_ms > 60_000 {
            errors.push("health.timeout_ms", "must be between 1 and 60000");
        }
        if config.cache_ms > 60_000 {
            errors.push("health.cache_ms", "must be at most 60000");
        }
        errors.and_ok(Self {
            checks: Vec::new(),
            enabled: config.enabled,
            path: config.path.clone(),
            ready_path: config.ready_path.clone(),
            timeout: Duration::from_millis(config.timeout_ms),
            cache_ttl: Duration::from_millis(config.cache_ms),
            shutdown: Some(ctx.shutdown.clone()),
        })
    }

    /// No checks; default paths and timings; no shutdown signal.
    pub fn empty() -> Self {
        let config = HealthConfig::default();
        Self {
            checks: Vec::new(),
            enabled: true,
            path: config.path,
            ready_path: config.ready_path,
            timeout: Duration::from_millis(config.timeout_ms),
            cache_ttl: Duration::from_millis(config.cache_ms),
            shutdown: None,
        }
    }

    /// Registers a readiness check; a non-critical check's failure only warns.
    #[must_use]
    pub fn check<F, Fut>(mut self, name: &str, critical: bool, check: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), String>> + Send + 'static,
    {
        let f: CheckFn = Arc::new(move || Box::pin(check()));
        self.checks.push(Check {
            name: name.into(),
            critical,
            run: f,
        });
        self
    }

    /// Sets the per-check timeout.
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Sets how long a readiness result is reused (`Duration::ZERO`: never).
    #[must_use]
    pub fn cache_ttl(mut self, ttl: Duration) -> Self {
        self.cache_ttl = ttl;
        self
    }

    /// Readiness fails once `shutdown` is triggered.
    #[must_use]
    pub fn with_shutdown(mut self, shutdown: Shutdown) -> Self {
        self.shutdown = Some(shutdown);
        self
    }

    /// The `/health` and `/ready` routes (empty when `[health] enabled = false`).
    pub fn router<St: Clone + Send + Sync + 'static>(&self) -> axum::Router<St> {
        if !self.enabled {
            return axum::Router::new();
        }
        let ready = Arc::new(Ready {
            gauges: self.checks.iter().map(|c| gauge(&c.name)).collect(),
            checks: self.checks.clone().into(),
            timeout: self.timeout,
            cache_ttl: self.cache_ttl,
            shutdown: self.shutdown.clone(),
            cached: tokio::sync::Mutex::new(None),
        });
        axum::Router::new()
            .route(
                &self.path,
                axum::routing::get(|| async {
                    respond(Status::Pass, b"{\"status\":\"pass\"}".to_vec())
                }),
            )
            .route(
                &self.ready_path,
                axum::routing::get(move || {
                    let ready = ready.clone();
                    async move { ready.respond().await }
                }),
            )
    }
}

#[cfg(feature = "metrics")]
type CheckGauge = Option<metrics::Gauge>;
#[cfg(not(feature = "metrics"))]
type CheckGauge = Option<()>;

#[cfg(feature = "metrics")]
fn gauge(name: &str) -> CheckGauge {
    crate::metrics::health_gauge(name)
}
#[cfg(not(feature = "metrics"))]
fn gauge(_name: &str) -> CheckGauge {
    None
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Status {
    Pass,
    Warn,
    Fail,
}

impl Status {
    fn as_str(self) -> &'static str {
        match self {
            Status::Pass => "pass",
            Status::Warn => "warn",
            Status::Fail => "fail",
        }
    }
}

fn respond(status: Status, body: Vec<u8>) -> Response {
    let mut res = Response::new(Body::from(body));
    if status == Status::Fail {
        *res.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
    }
    res.headers_mut().insert(CONTENT_TYPE, HEALTH_JSON);
    res.headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    res
}

struct Ready {
    checks: Arc<[Check]>,
    gauges: Vec<CheckGauge>,
    timeout: Duration,
    cache_ttl: Duration,
    shutdown: Option<Shutdown>,
    cached: tokio::sync::Mutex<Option<Cached>>,
}

/// When a readiness report was made, its status and its body.
type Cached = (Instant, Status, Arc<[u8]>);

struct CheckResult {
    status: Status,
    millis: f64,
    output: Option<String>,
}

impl Ready {
    async fn respond(&self) -> Response {
        if self.shutdown.as_ref().is_some_and(Shutdown::is_triggered) {
            let body = serde_json::json!({"status": "fail", "output": "shutting down"});
            return respond(Status::Fail, body.to_string().into_bytes());
        }
        // One run at a time: concurrent probes wait for it and share its result.
        let mut cached = self.cached.lock().await;
        if let Some((at, status, body)) = &*cached
            && at.elapsed() < self.cache_ttl
        {
            return respond(*status, body.to_vec());
        }
        let (status, body) = self.run().await;
        let body: Arc<[u8]> = body.into();
        *cached = Some((Instant::now(), status, body.clone()));
        drop(cached);
        respond(status, body.to_vec())
    }

    async fn run(&self) -> (Status, Vec<u8>) {
        let mut set = tokio::task::JoinSet::new();
        for (i, check) in self.checks.iter().enumerate() {
            let fut = (check.run)();
            let timeout = self.timeout;
            set.spawn(async move {
                let start = Instant::now();
                let result = tokio::time::timeout(timeout, fut).await;
                (i, start.elapsed(), result)
            });
        }
        let mut results: Vec<Option<CheckResult>> = (0..self.checks.len()).map(|_| None).collect();
        while let Some(joined) = set.join_next().await {
            let Ok((i, elapsed, result)) = joined else {
                continue; // a panicking check is reported as failed below
            };
            let failed = |msg: String| {
                let mut msg = msg;
                if msg.len() > MAX_OUTPUT {
                    let mut cut = MAX_OUTPUT;
                    while !msg.is_char_boundary(cut) {
                        cut -= 1;
                    }
                    msg.truncate(cut);
                }
                Some(msg)
            };
            let output = match result {
                Ok(Ok(())) => None,
                Ok(Err(e)) => failed(e),
                Err(_) => failed(format!("timed out after {} ms", self.timeout.as_millis())),
            };
            results[i] = Some(CheckResult {
                status: Status::Pass,
                millis: (elapsed.as_micros() as f64) / 1000.0,
                output,
            });
        }
        let mut overall = Status::Pass;
        let mut checks = serde_json::Map::new();
        for (i, check) in self.checks.iter().enumerate() {
            let mut r = results[i].take().unwrap_or(CheckResult {
                status: Status::Pass,
                millis: 0.0,
                output: Some("check panicked".to_owned()),
            });
            let ok = r.output.is_none();
            if !ok {
                r.status = if check.critical {
                    Status::Fail
                } else {
                    Status::Warn
                };
                tracing::warn!(
                    target: "palisade::health",
                    check = &*check.name,
                    critical = check.critical,
                    error = r.output.as_deref(),
                    "readiness check failed"
                );
            }
            #[cfg(feature = "metrics")]
            if let Some(g) = &self.gauges[i] {
                g.set(if ok { 1.0 } else { 0.0 });
            }
            overall = overall.max(r.status);
            let mut entry = serde_json::json!({
                "componentType": "component",
                "status": r.status.as_str(),
                "observedValue": r.millis,
                "observedUnit": "ms",
            });
            if let Some(out) = r.output {
                entry["output"] = out.into();
            }
            checks.insert(
                format!("{}:responseTime", check.name),
                serde_json::json!([entry]),
            );
        }
        let _ = &self.gauges;
        let body = serde_json::json!({"status": overall.as_str(), "checks": checks});
        (overall, body.to_string().into_bytes())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use tower::ServiceExt;

    async fn get(app: &axum::Router, path: &str) -> (u16, serde_json::Value) {
        let req = http::Request::get(path).body(Body::empty()).unwrap();
        let res = app.clone().oneshot(req).await.unwrap();
        let status = res.status().as_u16();
        assert_eq!(res.headers()[CONTENT_TYPE], "application/health+json");
        assert_eq!(res.headers()[CACHE_CONTROL], "no-store");
        let bytes = axum::body::to_bytes(res.into_body(), 1 << 16)
            .await
            .unwrap();
        (status, serde_json::from_slice(&bytes).unwrap())
    }

    #[tokio::test(start_paused = true)]
    async fn slow_critical_check_fails_within_timeout_then_recovers() {
        let healthy = Arc::new(AtomicBool::new(false));
        let h = healthy.clone();
        let shutdown = Shutdown::new();
        let app: axum::Router = Health::empty()
            .cache_ttl(Duration::ZERO)
            .with_shutdown(shutdown.clone())
            .check("db", true, move || {
                let ok = h.load(Ordering::SeqCst);
                async move {
                    if !ok {
                        tokio::time::sleep(Duration::from_secs(30)).await;
                    }
                    Ok(())
                }
            })
            .router();
        let start = Instant::now();
        let (status, body) = get(&app, "/ready").await;
        assert_eq!(status, 503);
        assert_eq!(body["status"], "fail");
        assert_eq!(body["checks"]["db:responseTime"][0]["status"], "fail");
        assert_eq!(
            body["checks"]["db:responseTime"][0]["output"],
            "timed out after 500 ms"
        );
        assert!(start.elapsed() < Duration::from_secs(1));
        assert_eq!(get(&app, "/health").await.0, 200);

        healthy.store(true, Ordering::SeqCst);
        let (status, body) = get(&app, "/ready").await;
        assert_eq!(status, 200);
        assert_eq!(body["status"], "pass");
        assert_eq!(body["checks"]["db:responseTime"][0]["observedUnit"], "ms");

        shutdown.trigger();
        let (status, body) = get(&app, "/ready").await;
        assert_eq!(status, 503);
        assert_eq!(body["status"], "fail");
        assert_eq!(
            get(&app, "/health").await,
            (200, serde_json::json!({"status": "pass"}))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn checks_run_concurrently_and_results_are_cached() {
        let runs = Arc::new(AtomicUsize::new(0));
        let mut health = Health::empty().timeout(Duration::from_millis(900));
        for name in ["a", "b", "c"] {
            let runs = runs.clone();
            health = health.check(name, true, move || {
                runs.fetch_add(1, Ordering::SeqCst);
                async {
                    tokio::time::sleep(Duration::from_millis(400)).await;
                    Ok(())
                }
            });
        }
        let app: axum::Router = health.router();
        let start = Instant::now();
        assert_eq!(get(&app, "/ready").await.0, 200);
        // Three 400 ms checks in under 900 ms: they ran concurrently (paused clock).
        assert!(
            start.elapsed() < Duration::from_millis(800),
            "{:?}",
            start.elapsed()
        );
        assert_eq!(get(&app, "/ready").await.0, 200);
        assert_eq!(
            runs.load(Ordering::SeqCst),
            3,
            "second probe served from cache"
        );
        tokio::time::advance(Duration::from_millis(1001)).await;
        assert_eq!(get(&app, "/ready").await.0, 200);
        assert_eq!(runs.load(Ordering::SeqCst), 6);
    }

    #[tokio::test]
    async fn non_critical_failure_warns() {
        let app: axum::Router = Health::empty()
            .check("ok", true, || async { Ok(()) })
            .check("flaky", false, || async { Err("x".repeat(500)) })
            .router();
        let (status, body) = get(&app, "/ready").await;
        assert_eq!(status, 200);
        assert_eq!(body["status"], "warn");
        assert_eq!(body["checks"]["ok:responseTime"][0]["status"], "pass");
        assert_eq!(body["checks"]["flaky:responseTime"][0]["status"], "warn");
        assert_eq!(
            body["checks"]["flaky:responseTime"][0]["output"]
                .as_str()
                .unwrap()
                .len(),
            MAX_OUTPUT
        );
    }

    #[test]
    fn config_errors_name_keys() {
        let cfg = HealthConfig {
            path: "health".into(),
            ready_path: "health".into(),
            timeout_ms: 0,
            ..HealthConfig::default()
        };
        let err = Health::from_config(&cfg, &BuildContext::default()).unwrap_err();
        for key in ["health.path", "health.ready_path", "health.timeout_ms"] {
            assert!(err.has_key(key), "{key}: {err}");
        }
    }
}
