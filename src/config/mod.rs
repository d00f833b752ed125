//! `palisade::Config`: the whole configuration as one serde struct.
//!
//! Load it from a TOML file, from `PALISADE_`-prefixed environment variables, or
//! both (the environment wins):
//!
//! | source | example |
//! |---|---|
//! | file | `[redis]` `url = "redis://127.0.0.1:6379"` |
//! | environment | `PALISADE_REDIS__URL=redis://127.0.0.1:6379` (`__` between levels) |
//!
//! An environment value is read as a TOML value when it parses as one (`42`, `true`,
//! `["a", "b"]`) and as a string otherwise. Only variables with a `__` are read, so
//! `PALISADE_CONFIG` (the file path) and `PALISADE_TEST_REDIS_URL` are not keys.
//!
//! Secrets are never written in the file: keys such as `secret_env = "JWT_SECRET"`
//! name the environment variable that holds them.
//!
//! Loading reports every unknown key at once; building the stack with
//! [`Palisade::from_config`](crate::Palisade::from_config) then validates every value
//! and reports every remaining problem in one [`ConfigError`].

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::ConfigError;

pub mod auth;
pub mod cache;
pub mod health;
pub mod https;
pub mod logging;
pub mod metrics;
pub mod rate_limit;
pub mod redis;
pub mod security_headers;
pub mod server;

pub use crate::client_ip::ClientIpConfig;
pub use auth::AuthConfig;
pub use cache::{CacheBackend, CacheConfig, CacheRule};
pub use health::HealthConfig;
pub use https::HttpsConfig;
pub use logging::LoggingConfig;
pub use metrics::MetricsConfig;
pub use rate_limit::RateLimitConfig;
pub use redis::RedisConfig;
pub use security_headers::SecurityHeadersConfig;
pub use server::ServerConfig;

/// The complete palisade configuration. Every section has secure defaults, so an
/// empty file is a valid configuration.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct Config {
    /// `[server]`: used by the examples and by your own `main`.
    pub server: ServerConfig,
    /// `[redis]`: the connection shared by the Redis-backed layers.
    pub redis: RedisConfig,
    /// `[client_ip]`: trusted proxies.
    pub client_ip: ClientIpConfig,
    /// `[https]`: HTTPS redirect and host validation.
    pub https: HttpsConfig,
    /// `[security_headers]`.
    pub security_headers: SecurityHeadersConfig,
    /// `[rate_limit]`.
    pub rate_limit: RateLimitConfig,
    /// `[auth]`.
    pub auth: AuthConfig,
    /// `[cache]`.
    pub cache: CacheConfig,
    /// `[metrics]`.
    pub metrics: MetricsConfig,
    /// `[health]`.
    pub health: HealthConfig,
    /// `[logging]`.
    pub logging: LoggingConfig,
}

/// Environment variable naming the config file read by [`Config::load`].
pub const CONFIG_PATH_ENV: &str = "PALISADE_CONFIG";
const ENV_PREFIX: &str = "PALISADE_";

impl Config {
    /// Loads the file named by `PALISADE_CONFIG` (if set) and applies `PALISADE_*__*`
    /// environment overrides.
    pub fn load() -> Result<Self, ConfigError> {
        match std::env::var_os(CONFIG_PATH_ENV) {
            Some(path) => Self::load_file(Path::new(&path)),
            None => Self::from_sources(None, std::env::vars()),
        }
    }

    /// Loads a TOML file and applies `PALISADE_*__*` environment overrides.
    pub fn load_file(path: impl AsRef<Path>) -> Result<Self, ConfigError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigError::new("<file>", format!("cannot read {}: {e}", path.display()))
        })?;
        Self::from_sources(Some(&text), std::env::vars())
    }

    /// Parses TOML text alone (no environment).
    pub fn from_toml_str(text: &str) -> Result<Self, ConfigError> {
        Self::from_sources(Some(text), std::iter::empty())
    }

    /// Parses optional TOML text, then applies overrides from `(name, value)` pairs
    /// shaped like environment variables (`PALISADE_RATE_LIMIT__BACKEND=redis`).
    pub fn from_sources(
        toml_text: Option<&str>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let mut errors = ConfigError::default();
        let mut root = match toml_text {
            Some(text) => match text.parse::<toml::Table>() {
                Ok(t) => t,
                Err(e) => return Err(ConfigError::new("<file>", format!("not valid TOML: {e}"))),
            },
            None => toml::Table::new(),
        };
        let mut env: Vec<(String, String)> = env
            .into_iter()
            .filter(|(k, _)| k.starts_with(ENV_PREFIX) && k.contains("__"))
            .collect();
        env.sort();
        for (name, value) in env {
            let path: Vec<String> = name[ENV_PREFIX.len()..]
                .split("__")
                .map(|s| s.to_ascii_lowercase())
                .collect();
            if path.iter().any(String::is_empty) {
                errors.push(name, "empty key segment in environment variable name");
                continue;
            }
            if let Err(msg) = set_path(&mut root, &path, parse_env_value(&value)) {
                errors.push(path.join("."), msg);
            }
        }
        let mut unknown = Vec::new();
        let parsed: Result<Config, _> =
            serde_ignored::deserialize(toml::Value::Table(root), |p| unknown.push(p.to_string()));
        for key in unknown {
            errors.push(key, "unknown key");
        }
        match parsed {
            Ok(cfg) => errors.and_ok(cfg),
            Err(e) => {
                errors.push("<config>", e.to_string());
                Err(errors)
            }
        }
    }
}

fn parse_env_value(raw: &str) -> toml::Value {
    // A bare word is a string; anything that is a TOML value (number, bool, array,
    // inline table, quoted string) keeps its type.
    format!("v = {raw}")
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_owned()))
}

fn set_path(root: &mut toml::Table, path: &[String], value: toml::Value) -> Result<(), String> {
    let (last, parents) = path.split_last().ok_or("empty key")?;
    let mut table = root;
    for p in parents {
        let entry = table
            .entry(p.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        table = entry
            .as_table_mut()
            .ok_or_else(|| format!("`{p}` is not a table, cannot set a key below it"))?;
    }
    table.insert(last.clone(), value);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn empty_config_is_valid_and_secure_by_default() {
        let c = Config::from_toml_str("").unwrap();
        assert!(c.client_ip.trusted_proxies.is_empty());
        assert_eq!(c.server.bind.to_string(), "127.0.0.1:8080");
    }

    #[test]
    fn env_overrides_file_with_typed_values() {
        let c = Config::from_sources(
            Some("[server]\nbind = \"127.0.0.1:9000\"\n[redis]\nurl = \"redis://a\"\n"),
            env(&[
                ("PALISADE_SERVER__BIND", "0.0.0.0:1234"),
                ("PALISADE_REDIS__POOL_SIZE", "7"),
                ("PALISADE_CLIENT_IP__TRUSTED_PROXIES", r#"["10.0.0.0/8"]"#),
                ("PALISADE_CONFIG", "/ignored/path.toml"),
                ("PALISADE_TEST_REDIS_URL", "redis://ignored"),
                ("OTHER__THING", "x"),
            ]),
        )
        .unwrap();
        assert_eq!(c.server.bind.to_string(), "0.0.0.0:1234");
        assert_eq!(c.redis.url.as_deref(), Some("redis://a"));
        assert_eq!(c.redis.pool_size, 7);
        assert_eq!(c.client_ip.trusted_proxies, vec!["10.0.0.0/8".to_string()]);
    }

    #[test]
    fn every_unknown_key_is_reported_together() {
        let err = Config::from_sources(
            Some(
                "[server]\nbindd = 1\n[nope]\nx = 1\n[redis]\nurl = \"redis://x\"\ntimeot_ms = 5\n",
            ),
            env(&[("PALISADE_REDIS__BOGUS", "1")]),
        )
        .unwrap_err();
        assert!(err.has_key("server.bindd"), "{err}");
        assert!(err.has_key("nope"), "{err}");
        assert!(err.has_key("redis.timeot_ms"), "{err}");
        assert!(err.has_key("redis.bogus"), "{err}");
    }

    #[test]
    fn invalid_toml_is_one_clear_error() {
        let err = Config::from_toml_str("[server\n").unwrap_err();
        assert!(err.to_string().contains("not valid TOML"));
    }

    #[test]
    fn the_production_example_config_parses() {
        let text = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/examples/production.toml"
        ))
        .unwrap();
        Config::from_toml_str(&text).unwrap();
    }

    #[test]
    fn the_bench_configs_parse() {
        // benches/load.sh and benches/stack.rs start servers with these; a key renamed
        // here would otherwise first fail in a benchmark run.
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/benches");
        let mut checked = 0;
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "toml") {
                let text = std::fs::read_to_string(&path).unwrap();
                if let Err(e) = Config::from_toml_str(&text) {
                    panic!("{}: {e}", path.display());
                }
                checked += 1;
            }
        }
        assert!(checked >= 5, "found only {checked} configs in {dir}");
    }
}
