//! The response cache alone, on Redis.
//!
//! ```text
//! REDIS_URL=redis://127.0.0.1:6379 cargo run --example redis_cache --features redis
//! curl -i localhost:3000/items/1      # x-cache: MISS, then HIT; upstream_calls stays 1
//! curl -i -X PUT localhost:3000/items/1  # invalidates /items/1
//! curl -i localhost:3000/private/1    # Set-Cookie: never stored (cache-status detail=set-cookie)
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::extract::Path;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use palisade::cache::CacheLayer;
use palisade::config::{CacheBackend, CacheConfig, CacheRule, RedisConfig};
use palisade::redis::RedisPool;
use palisade::stack::BuildContext;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let mut ctx = BuildContext::default();
    ctx.redis = RedisPool::from_config(&RedisConfig::single(url))?;

    let mut config = CacheConfig::default();
    config.backend = CacheBackend::Redis;
    config.stale_while_revalidate_s = 30;
    config.stale_if_error_s = 300;
    let mut rule = CacheRule::default();
    rule.paths = vec!["/items/{id}".into(), "/private/{id}".into()];
    rule.ttl_s = Some(60);
    rule.ignore_query_params = vec!["utm_source".into()];
    config.rules.push(rule);
    let cache = CacheLayer::from_config(&config, &ctx)?.ok_or("no cache rules")?;

    let calls = Arc::new(AtomicU64::new(0));
    let app = Router::new()
        .route(
            "/items/{id}",
            get({
                let calls = calls.clone();
                move |Path(id): Path<u64>| async move {
                    let n = calls.fetch_add(1, Ordering::Relaxed) + 1;
                    (
                        [("x-cache-tags", "items")],
                        Json(serde_json::json!({ "id": id, "upstream_calls": n })),
                    )
                }
            })
            .put(|| async { StatusCode::NO_CONTENT }),
        )
        .route(
            "/private/{id}",
            get(|| async {
                (
                    [(header::SET_COOKIE, "session=abc; HttpOnly")],
                    "yours only",
                )
                    .into_response()
            }),
        )
        .layer(cache.clone());

    // Purge by tag from anywhere holding the layer, e.g. an admin task:
    // cache.purge_tag("items").await?;

    let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
    println!("listening on http://127.0.0.1:3000");
    axum::serve(listener, app).await?;
    Ok(())
}
