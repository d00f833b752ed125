//! The production example: the full palisade stack in front of a small service.
//!
//! ```text
//! cargo run --release --example production -- --config examples/production.toml
//! # or: PALISADE_CONFIG=examples/production.toml cargo run --release --example production
//! ```
//!
//! Listens on `[server] bind` (default `127.0.0.1:8080`, overridable with
//! `PALISADE_SERVER__BIND`). Every key of the config file can be overridden from the
//! environment (`PALISADE_<SECTION>__<KEY>`). Routes:
//!
//! | route | what it shows |
//! |---|---|
//! | `GET /hello` | text `hello` |
//! | `GET /items/{id}` | `{"id": ID, "upstream_calls": N}`; N counts handler runs, so cache hits are visible |
//! | `PUT /items/{id}` | a mutation (invalidates the cached item) |
//! | `GET /private/{id}` | JSON with a `Set-Cookie`: never stored by the cache |
//! | `GET /admin/stats` | needs an API key with scope `admin` |
//! | `GET /me` | needs a JWT; returns `{"sub": ...}` from the verified claims |
//! | `GET /stream` | a slow chunked response: one line every 100 ms, 10 lines |
//! | `/metrics`, `/health`, `/ready` | the operational routes |
//!
//! `cargo run --example production -- mint-jwt alice [scope ...]` prints a development
//! JWT for `/me`, signed with `examples/keys/jwt-dev.key.pem` (never use that key for real).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::body::Body;
use axum::extract::Path;
use axum::http::header::{CONTENT_TYPE, SET_COOKIE};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Json, Router};
use palisade::{Config, Identity, Palisade};
use serde_json::json;

static UPSTREAM_CALLS: AtomicU64 = AtomicU64::new(0);
static UPDATES: AtomicU64 = AtomicU64::new(0);

#[tokio::main]
async fn main() {
    if let Err(e) = run().await {
        eprintln!("{e}");
        std::process::exit(1);
    }
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("mint-jwt") {
        println!(
            "{}",
            mint_dev_jwt(
                args.get(1).map_or("alice", String::as_str),
                &args[2.min(args.len())..]
            )?
        );
        return Ok(());
    }
    let config = match config_path() {
        Some(path) => Config::load_file(&path)?,
        None => Config::load()?,
    };
    let bind = config.server.bind;
    let grace = Duration::from_secs(config.server.shutdown_timeout_s);
    let routes = Router::new()
        .route("/hello", get(|| async { "hello" }))
        .route("/items/{id}", get(get_item).put(put_item))
        .route("/private/{id}", get(private))
        .route("/admin/stats", get(admin_stats))
        .route("/me", get(me))
        .route("/stream", get(stream));

    if std::env::args().any(|a| a == "--bare") {
        // The same routes with no middleware at all: the baseline of benches/load.sh.
        let listener = tokio::net::TcpListener::bind(bind).await?;
        println!(
            "bare axum (no palisade) listening on http://{}",
            listener.local_addr()?
        );
        axum::serve(
            listener,
            routes.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(shutdown_signal())
        .await?;
        return Ok(());
    }

    palisade::telemetry::init(&config.logging)?;
    let palisade = Palisade::from_config(config).await?;
    let app = routes.merge(palisade.routes()).layer(palisade.layer());

    let listener = tokio::net::TcpListener::bind(bind).await?;
    println!(
        "palisade production example listening on http://{}",
        listener.local_addr()?
    );
    let drain = palisade.clone();
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(async move {
        shutdown_signal().await;
        // Readiness fails first, so a load balancer stops sending new traffic, then
        // the server stops accepting and drains in-flight requests.
        drain.shutdown();
        tokio::spawn(async move {
            tokio::time::sleep(grace).await;
            eprintln!("graceful shutdown timed out after {grace:?}");
            palisade::telemetry::flush();
            std::process::exit(1);
        });
    })
    .await?;
    // Sends the spans still buffered when `[logging.otel]` exports them.
    tokio::task::spawn_blocking(palisade::otel::shutdown).await?;
    // Log lines still queued for stdout (`[logging] background_writer`).
    palisade::telemetry::flush();
    Ok(())
}

/// Signs a one-hour RS256 token with the development key in `examples/keys`, matching
/// `[auth.jwt]` of `examples/production.toml`. Development only.
fn mint_dev_jwt(sub: &str, scopes: &[String]) -> Result<String, Box<dyn std::error::Error>> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    let claims = json!({
        "sub": sub,
        "iss": "palisade-dev",
        "iat": now,
        "exp": now + 3600,
        "scope": scopes.join(" "),
    });
    let pem = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/keys/jwt-dev.key.pem"
    ))?;
    Ok(jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_rsa_pem(&pem)?,
    )?)
}

/// `--config PATH` (or `--config=PATH`) from the command line.
fn config_path() -> Option<String> {
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        if a == "--config" {
            return args.next();
        }
        if let Some(p) = a.strip_prefix("--config=") {
            return Some(p.to_owned());
        }
    }
    None
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        if let Ok(mut s) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            s.recv().await;
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}

async fn get_item(Path(id): Path<String>) -> Json<serde_json::Value> {
    let n = UPSTREAM_CALLS.fetch_add(1, Ordering::Relaxed) + 1;
    Json(json!({ "id": id, "upstream_calls": n }))
}

async fn put_item(Path(id): Path<String>) -> Json<serde_json::Value> {
    let n = UPDATES.fetch_add(1, Ordering::Relaxed) + 1;
    Json(json!({ "id": id, "updated": true, "updates": n }))
}

async fn private(Path(id): Path<String>) -> Response {
    let mut res = Json(json!({ "id": id, "private": true })).into_response();
    res.headers_mut().insert(
        SET_COOKIE,
        axum::http::HeaderValue::from_static(
            "session=demo; Path=/; HttpOnly; Secure; SameSite=Lax",
        ),
    );
    res
}

async fn admin_stats(identity: Option<Extension<Identity>>) -> Json<serde_json::Value> {
    Json(json!({
        "upstream_calls": UPSTREAM_CALLS.load(Ordering::Relaxed),
        "updates": UPDATES.load(Ordering::Relaxed),
        "caller": identity.map(|Extension(i)| i.id.to_string()),
    }))
}

async fn me(identity: Option<Extension<Identity>>) -> Response {
    match identity {
        Some(Extension(i)) => Json(json!({ "sub": &*i.id, "scopes": &*i.scopes })).into_response(),
        // Only reachable when the config does not protect /me.
        None => palisade::problem::Problem::new(axum::http::StatusCode::UNAUTHORIZED)
            .detail("/me needs a verified JWT; configure [auth.jwt] and an auth rule for /me")
            .into_response(),
    }
}

async fn stream() -> Response {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<bytes::Bytes, std::io::Error>>(1);
    tokio::spawn(async move {
        for i in 1..=10 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if tx
                .send(Ok(bytes::Bytes::from(format!("line {i}\n"))))
                .await
                .is_err()
            {
                return; // client went away
            }
        }
    });
    let body = Body::from_stream(ReceiverStream(rx));
    Response::builder()
        .header(CONTENT_TYPE, "text/plain; charset=utf-8")
        .body(body)
        .unwrap_or_else(|_| Response::new(Body::empty()))
}

/// A minimal `Stream` over an mpsc receiver (avoids a tokio-stream dependency).
struct ReceiverStream<T>(tokio::sync::mpsc::Receiver<T>);

impl<T> futures_core::Stream for ReceiverStream<T> {
    type Item = T;
    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<T>> {
        self.0.poll_recv(cx)
    }
}
