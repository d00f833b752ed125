//! Quickstart: a protected demo service on in-memory defaults, no Redis needed.
//!
//! ```text
//! cargo run --example quickstart
//! ```
//!
//! It prints its address (default `http://127.0.0.1:3000`, override with
//! `PALISADE_SERVER__BIND`) and a few requests to try. Everything is in memory: a
//! per-IP rate limit, an API key for `/admin`, a cached `/items/{id}`, security
//! headers, request ids, JSON access logs and `/metrics`, `/health`, `/ready`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::extract::Path;
use axum::routing::get;
use axum::{Json, Router};
use palisade::{Config, Palisade};

/// The whole configuration. The same text could live in a file (`Config::load_file`);
/// `PALISADE_*__*` environment variables override it either way.
const CONFIG: &str = r#"
[server]
bind = "127.0.0.1:3000"

[logging]
format = "pretty"

[[rate_limit.policies]]
name = "per-ip"
key = "ip"
limit = 5          # 5 requests per second per client, bursts of 10
period_s = 1
burst = 10

[[auth.api_keys]]
id = "demo"
# sha256 of "demo-key"; only the digest is ever configured
sha256 = "c48a01f49fd0f2cc404bc3cbbc80e91457a3d41bb429a695243de4c61794155c"
scopes = ["admin"]

[[auth.rules]]
paths = ["/admin/*"]
require = "api_key"
scopes = ["admin"]

[[cache.rules]]
paths = ["/items/{id}"]
ttl_s = 10
"#;

static CALLS: AtomicU64 = AtomicU64::new(0);

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let config = Config::from_sources(Some(CONFIG), std::env::vars())?;
    palisade::telemetry::init(&config.logging)?;
    let bind = config.server.bind;
    let palisade = Palisade::from_config(config).await?;

    let app = Router::new()
        .route("/hello", get(|| async { "hello" }))
        .route(
            "/items/{id}",
            get(|Path(id): Path<String>| async move {
                let n = CALLS.fetch_add(1, Ordering::Relaxed) + 1;
                Json(serde_json::json!({ "id": id, "upstream_calls": n }))
            }),
        )
        .route("/admin/stats", get(|| async { "secret stats" }))
        .merge(palisade.routes())
        .layer(palisade.layer());

    let listener = tokio::net::TcpListener::bind(bind).await?;
    let addr = listener.local_addr()?;
    println!("palisade quickstart listening on http://{addr}");
    println!("  curl -i http://{addr}/hello");
    println!(
        "  curl -i http://{addr}/items/1                          # twice: x-cache MISS then HIT"
    );
    println!("  curl -i http://{addr}/admin/stats                      # 401");
    println!("  curl -i -H 'x-api-key: demo-key' http://{addr}/admin/stats");
    println!("  curl http://{addr}/metrics");
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .await?;
    // Log lines still queued for stdout (`[logging] background_writer`).
    palisade::telemetry::flush();
    Ok(())
}
