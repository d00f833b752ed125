//! Two replicas on one Redis sharing one quota.
//!
//! ```text
//! redis-server --port 6379 &        # or any Redis 7 / Valkey
//! REDIS_URL=redis://127.0.0.1:6379 cargo run --example distributed_rate_limit --features redis
//! ```
//!
//! Starts two independent palisade stacks ("replicas", each with its own `Palisade`
//! and Redis connections) on two ports, then sends requests alternately to both from
//! one client address. The `per-ip` policy (5 per minute) is counted once across the
//! replicas: the 6th request is refused, whichever replica gets it, and both report
//! the same remaining quota.
//!
//! `LEASE=2` runs the hybrid mode (`[rate_limit] lease = 2`): each replica takes two
//! units at a time from Redis and spends the second without a round trip. The quota
//! is still 5 in all; the `RateLimit` header is then each replica's own estimate.

use std::net::SocketAddr;

use axum::Router;
use axum::routing::get;
use palisade::{Config, Palisade};

const CONFIG: &str = r#"
[redis]
url = "redis://127.0.0.1:6379"

[rate_limit]
backend = "redis"
on_store_error = "local"

[[rate_limit.policies]]
name = "per-ip"
key = "ip"
limit = 5
period_s = 60
"#;

async fn replica(config: Config) -> Result<SocketAddr, Box<dyn std::error::Error>> {
    let palisade = Palisade::from_config(config).await?;
    let app = Router::new()
        .route("/hello", get(|| async { "hello\n" }))
        .layer(palisade.layer());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        let _ = axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await;
    });
    Ok(addr)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut config: Config = toml::from_str(CONFIG)?;
    if let Ok(url) = std::env::var("REDIS_URL") {
        config.redis.url = Some(url);
    }
    if let Ok(lease) = std::env::var("LEASE") {
        config.rate_limit.lease = lease.parse()?;
    }
    // Start from a fresh quota so repeated runs show the same thing.
    let key_pattern = "{palisade:rl:*";
    let client = redis::Client::open(config.redis.url.clone().unwrap_or_default())?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(key_pattern)
        .query_async(&mut conn)
        .await?;
    if !keys.is_empty() {
        let _: () = redis::cmd("DEL").arg(&keys).query_async(&mut conn).await?;
    }

    let a = replica(config.clone()).await?;
    let b = replica(config).await?;
    println!(
        "replica A on {a}, replica B on {b}; per-ip: 5 per minute, shared (lease = {})\n",
        std::env::var("LEASE").unwrap_or_else(|_| "0".into())
    );
    for i in 0..8 {
        let (name, addr) = if i % 2 == 0 { ("A", a) } else { ("B", b) };
        let (status, headers) = http_get(addr, "/hello").await?;
        let header = |n: &str| {
            headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(n))
                .map_or("-", |(_, v)| v.as_str())
                .to_owned()
        };
        println!(
            "request {} -> replica {name}: {status}  RateLimit: {}  Retry-After: {}",
            i + 1,
            header("ratelimit"),
            header("retry-after"),
        );
    }
    Ok(())
}

/// A minimal HTTP/1.1 GET (keeps the example free of an HTTP client dependency).
async fn http_get(
    addr: SocketAddr,
    path: &str,
) -> Result<(String, Vec<(String, String)>), Box<dyn std::error::Error>> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut raw = String::new();
    stream.read_to_string(&mut raw).await?;
    let head = raw.split("\r\n\r\n").next().unwrap_or_default();
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_once(' '))
        .map(|(_, s)| s.to_owned())
        .unwrap_or_default();
    let headers = lines
        .filter_map(|l| l.split_once(": "))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    Ok((status, headers))
}
