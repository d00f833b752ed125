//! JWT authentication alone, in a plain `tower::ServiceBuilder`.
//!
//! ```sh
//! export JWT_SECRET=$(openssl rand -hex 32)        # or use the built-in dev secret
//! cargo run --example jwt_auth --features jwt      # serves 127.0.0.1:8080
//! TOKEN=$(cargo run -q --example jwt_auth --features jwt -- mint alice admin)
//! curl -i localhost:8080/me -H "authorization: Bearer $TOKEN"    # 200 {"sub":"alice"}
//! curl -i localhost:8080/me                                      # 401 Bearer realm="api"
//! curl -i localhost:8080/admin -H "authorization: Bearer $(cargo run -q --example jwt_auth --features jwt -- mint bob)"
//!                                                               # 403 insufficient_scope
//! ```
//!
//! `mint <sub> [scope...]` prints a one-hour HS256 token signed with the same
//! secret. In production, prefer RS256/ES256 from your identity provider's JWKS
//! (`jwks_url` or `discovery = true`), with `issuer` and `audience` set.

use std::net::SocketAddr;

use axum::Router;
use axum::routing::get;
use palisade::auth::{AuthLayer, Claims, Require};
use palisade::config::auth::JwtConfig;
use serde::Deserialize;
use tower::ServiceBuilder;

/// Used when `JWT_SECRET` is not set. Never use it outside local development.
const DEV_SECRET: &str = "dev-only-secret-change-me-0123456789abcdef";

#[derive(Deserialize)]
struct Me {
    sub: String,
}

async fn me(Claims(me): Claims<Me>) -> axum::Json<serde_json::Value> {
    axum::Json(serde_json::json!({ "sub": me.sub }))
}

fn secret() -> String {
    std::env::var("JWT_SECRET").unwrap_or_else(|_| {
        eprintln!("JWT_SECRET is not set: using the development secret");
        DEV_SECRET.to_owned()
    })
}

fn mint(sub: &str, scopes: &[String]) -> Result<String, Box<dyn std::error::Error>> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    let claims = serde_json::json!({
        "sub": sub,
        "iss": "palisade-dev",
        "iat": now,
        "exp": now + 3600,
        "scope": scopes.join(" "),
    });
    Ok(jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret().as_bytes()),
    )?)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("mint") {
        let sub = args.get(1).map_or("alice", String::as_str);
        println!("{}", mint(sub, &args[2.min(args.len())..])?);
        return Ok(());
    }

    let mut jwt = JwtConfig::default();
    jwt.algorithms = vec!["HS256".into()];
    jwt.issuer = Some("palisade-dev".into());
    let auth = AuthLayer::builder()
        .jwt(jwt)
        .jwt_hmac_secret(secret())
        .rule(["/me"], ["GET"], Require::Jwt, [] as [&str; 0])
        .rule(["/admin"], ["GET"], Require::Jwt, ["admin"])
        .build()
        .await?;

    let app = Router::new()
        .route("/me", get(me))
        .route("/admin", get(|| async { "admin area" }))
        .route("/hello", get(|| async { "hello, anyone" }))
        .layer(ServiceBuilder::new().layer(auth));

    let addr = SocketAddr::from(([127, 0, 0, 1], 8080));
    println!("listening on http://{addr}");
    let listener = tokio::net::TcpListener::bind(addr).await?;
    axum::serve(listener, app).await?;
    Ok(())
}
