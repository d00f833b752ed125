//! The Redis connection shared by the Redis-backed layers (rate limiting, caching)
//! and the readiness check.
//!
//! [`RedisPool`] talks to one server or to a Redis Cluster. Every call has a
//! deadline, goes through a circuit breaker and is counted when it fails; a Redis
//! that is down, restarted, flushed or frozen never hangs a request and never stops
//! the service from starting.
//!
//! # Why multiplexed connections, not a pool of exclusive ones
//!
//! A multiplexed connection (redis-rs `MultiplexedConnection`, wrapped in its
//! auto-reconnecting `ConnectionManager`) pipelines every concurrent command on one
//! socket: a call writes its command and waits for its reply in order, without
//! checking a connection out. An exclusive pool (deadpool-redis, bb8) instead makes
//! each call wait for a free connection. That wait is where the classic production
//! hang hides (deadpool's `wait`, `create` and `recycle` timeouts all default to
//! *none*), and under a burst it turns a fast Redis into a queue in front of the
//! pool. With multiplexing, 500 concurrent calls on 2 connections cost 2 sockets
//! and no waiting room; Redis itself is single-threaded per shard, so more sockets
//! rarely add throughput. `pool_size` (default 4) spreads the reply parsing over a
//! few tasks (on a many-core host) and limits the damage of one large or slow
//! reply (head-of-line blocking); calls pick a connection round-robin. A Cluster
//! uses redis-rs's cluster connection: one multiplexed connection per node, slot
//! routing, `MOVED`/`ASK` redirects and topology refresh after a failover.
//!
//! Measured (redis-rs 1.8.1 against deadpool-redis 0.23.1, `GET` of a 64-byte
//! value from a local `redis-server` 7.0, 40 000 calls, 2-core machine shared with
//! other builds, Tokio with 2 workers; rough numbers, the ratios are what matter):
//!
//! | concurrent callers | multiplexed ×1 | multiplexed ×4 | deadpool max 8 | deadpool max 32 |
//! |---:|---:|---:|---:|---:|
//! | 1   | 33 k/s, p99 59 µs  | 32 k/s, p99 59 µs   | 16 k/s, p99 110 µs | 14 k/s, p99 153 µs |
//! | 50  | 119 k/s, p99 0.7 ms | 107 k/s, p99 0.9 ms | 20 k/s, p99 3.6 ms | 23 k/s, p99 3.2 ms |
//! | 500 | 265 k/s, p99 3.3 ms | 209 k/s, p99 4.9 ms | 19 k/s, p99 37 ms  | 20 k/s, p99 35 ms  |
//!
//! Multiplexing wins by 2× alone and by 5–13× under concurrency: each
//! exclusive-connection call pays a full round trip with nothing else on the
//! socket, plus the pool's checkout and recycle.
//!
//! # Why auto-pipelining
//!
//! A multiplexed connection still writes each command as soon as its call is made.
//! Under a multi-threaded Tokio runtime the connection's writer task usually runs
//! right after the one call that woke it, so a server handling 32 connections'
//! requests wrote one Redis command per `write(2)` and read one reply per
//! `read(2)`: measured with `strace`, 1.9 writes and 1.3 reads per cached request,
//! more system time than the rest of the hit. With `auto_pipeline` (default on, single
//! server) a call made while others are waiting for their replies queues its
//! command; the first call of a batch spawns a flush task that yields once, so
//! every task that is ready to run queues its command too, and then writes the
//! whole queue as one pipeline on one connection (a burst of more than 256 commands
//! is split, each pipeline on the next connection). Each call still gets its own
//! reply or error and its own deadline, and a caller that goes away cannot fail the
//! others' calls (the flush task owns the batch). A call made while no other is in
//! flight has nothing to be batched with and is written at once, so a lightly
//! loaded service pays nothing for this. Redis counts the difference
//! (`tests/redis_pool.rs`: 1 280 calls by 128 tasks took 24–38 reads, 90–320
//! without); over loopback a server answering from the Redis cache serves 20–45 %
//! more requests per second (`BENCHMARKS.md`, round 5). A Cluster routes every
//! command by its key, so it is not batched there.
//!
//! # Why a deadline on every call
//!
//! `timeout_ms` (default 200 ms) bounds the whole call, including waiting for a
//! (re)connection. A frozen Redis (`SIGSTOP`, a full network buffer, a dropped
//! route that never sends a reset) answers nothing and closes nothing: only a
//! deadline notices. 200 ms is far above a healthy round trip (well under 1 ms on
//! a LAN, a few ms across zones) and far below what a user notices on top of the
//! request. When a call misses its deadline on a single server, the connection it
//! used is replaced, so a half-open socket cannot keep failing calls. A connection
//! attempt has its own deadline, `connect_timeout_ms` (default 1 s): an attempt
//! still running when a call gives up keeps going for the next call.
//!
//! # Why a circuit breaker
//!
//! When Redis is down every call would otherwise pay the full deadline (or a
//! connection attempt), so a Redis outage would add 200 ms to every request and
//! pile up work. After a connection failure or a timeout the breaker *opens*: for
//! `breaker_ms` (default 1 s) every call fails at once with
//! [`StoreError::Unavailable`], and the layers apply their failure policy (fail open
//! or closed) without waiting. Then one call is let through as a probe; its success
//! closes the breaker, its failure opens it for another interval. Reconnecting is
//! therefore paced by the breaker: never a tight loop, at most one attempt per
//! interval. Replies that are Redis errors (`WRONGTYPE`, a script error) prove the
//! server is up and do not open the breaker. On a Cluster there is one breaker per
//! range of 256 hash slots (picked by the call's first key; calls without a known
//! key, such as `PING`, share one more), so a dead master fails fast for the keys it
//! served while the healthy masters' keys are still answered. Connections are made lazily in the
//! background, so [`RedisPool::from_config`] never waits for Redis and succeeds with
//! Redis down; the pool starts working as soon as Redis is reachable.
//!
//! Every failed call (including fast failures) increments the counter
//! `palisade_redis_errors_total{op}` (with the `metrics` feature), `op` being the
//! caller's static label (`"rate_limit"`, `"cache_get"`, `"ping"`, ...). The breaker
//! opening and closing is logged at `warn` and `info` under the target
//! `palisade::redis`; URLs (which may hold a password) are never logged.
//!
//! # Scripts
//!
//! [`RedisPool::invoke_script`] sends `EVALSHA` and, when Redis answers `NOSCRIPT`
//! (after `SCRIPT FLUSH`, a restart, or a failover to a replica that never saw
//! the script), loads the script and retries, within the same deadline. On a
//! Cluster every key of one call must hash to the same slot: put the shared part
//! in a hash tag, `{user:42}:tokens` and `{user:42}:ts`.
//!
//! # Example
//!
//! ```no_run
//! use palisade::config::RedisConfig;
//! use palisade::redis::{RedisPool, StoreError};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let config = RedisConfig::single("redis://127.0.0.1:6379").with_timeout_ms(100);
//! let pool = RedisPool::from_config(&config)?.expect("a URL is set");
//!
//! let hits: i64 = pool.query("example", redis::cmd("INCR").arg("{demo}:hits")).await?;
//! let script = redis::Script::new("return redis.call('INCRBY', KEYS[1], ARGV[1])");
//! let total: i64 = pool
//!     .invoke_script("example", script.key("{demo}:total").arg(hits))
//!     .await?;
//! match pool.query::<Option<String>>("example", redis::cmd("GET").arg("{demo}:x")).await {
//!     Ok(value) => println!("{total} {value:?}"),
//!     Err(StoreError::Timeout | StoreError::Unavailable) => println!("Redis is down"),
//!     Err(e) => return Err(e.into()),
//! }
//! pool.ping().await?; // what `/ready` uses
//! # Ok(()) }
//! ```

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, PoisonError, RwLock, Weak};
use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
use redis::{Cmd, FromRedisValue, Pipeline, RedisError, RedisResult, ScriptInvocation, Value};
use tokio::time::Instant;

use crate::config::RedisConfig;
use crate::error::ConfigError;

/// Why a Redis call failed.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum StoreError {
    /// No reply within the configured timeout (`[redis] timeout_ms`).
    Timeout,
    /// Not attempted: the circuit breaker is open after a recent failure.
    Unavailable,
    /// Redis (or the connection to it) returned this error.
    Redis(String),
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Timeout => f.write_str("Redis did not answer within the timeout"),
            Self::Unavailable => {
                f.write_str("Redis is unavailable (circuit breaker open after a recent failure)")
            }
            Self::Redis(msg) => write!(f, "Redis error: {msg}"),
        }
    }
}

impl std::error::Error for StoreError {}

/// A set of multiplexed connections to a Redis server or Cluster, with a timeout
/// and a circuit breaker on every call. Cheap to clone (an `Arc` inside).
///
/// See the [module documentation](self) for the design.
#[derive(Clone)]
pub struct RedisPool {
    inner: Arc<Inner>,
}

struct Inner {
    backend: Backend,
    timeout: Duration,
    /// Single server: one breaker. Cluster: one per range of hash slots, so a dead
    /// master fails fast without failing the keys of the healthy ones.
    breakers: Breakers,
}

// One per pool, inside its `Arc`: the size difference costs nothing.
#[allow(clippy::large_enum_variant)]
enum Backend {
    Single(Single),
    Cluster(Cluster),
}

impl fmt::Debug for RedisPool {
    // Deliberately without the URL: it may contain a password.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("RedisPool");
        match &self.inner.backend {
            Backend::Single(s) => d
                .field("mode", &"single")
                .field("pool_size", &s.slots.len()),
            Backend::Cluster(_) => d.field("mode", &"cluster"),
        };
        d.field("timeout", &self.inner.timeout)
            .field("breaker", &self.inner.breakers.interval())
            .finish_non_exhaustive()
    }
}

impl RedisPool {
    /// Builds the pool from `[redis]`; `None` when no Redis is configured.
    ///
    /// Validates every setting first (all problems reported together). Never waits
    /// for Redis: connections are made in the background (when called inside a
    /// Tokio runtime) or on first use, and re-made after failures.
    pub fn from_config(config: &RedisConfig) -> Result<Option<Self>, ConfigError> {
        config.validate()?;
        if !config.is_configured() {
            return Ok(None);
        }
        let connect_timeout = Duration::from_millis(config.connect_timeout_ms);
        let timeout = Duration::from_millis(config.timeout_ms);
        let backend = if let Some(url) = &config.url {
            let client = redis::Client::open(url.as_str()).map_err(|e| {
                ConfigError::new(
                    "redis.url",
                    format!("not a valid Redis URL ({:?})", e.kind()),
                )
            })?;
            let manager_config = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(connect_timeout))
                // The call deadline is ours (tokio::time::timeout around the call).
                .set_response_timeout(None)
                // No retry loop inside redis-rs: the breaker paces reconnects.
                .set_number_of_retries(0);
            Backend::Single(Single {
                client,
                config: manager_config,
                slots: (0..config.pool_size).map(|_| RwLock::new(None)).collect(),
                next: AtomicUsize::new(0),
                generation: AtomicU64::new(0),
                batch: config
                    .auto_pipeline
                    .then(|| std::sync::Mutex::new(Batch::default())),
                in_flight: AtomicUsize::new(0),
            })
        } else {
            let client = ClusterClient::builder(config.cluster_urls.iter().map(String::as_str))
                .connection_timeout(connect_timeout)
                .response_timeout(timeout)
                .retries(3)
                .min_retry_wait(10)
                .max_retry_wait(100)
                .build()
                .map_err(|e| {
                    ConfigError::new(
                        "redis.cluster_urls",
                        format!("not a valid set of Redis Cluster URLs ({:?})", e.kind()),
                    )
                })?;
            Backend::Cluster(Cluster {
                shared: Arc::new(ClusterShared {
                    client,
                    conn: RwLock::new(None),
                    connecting: Arc::new(tokio::sync::Mutex::new(())),
                }),
            })
        };
        let pool = Self {
            inner: Arc::new(Inner {
                breakers: Breakers::new(
                    Duration::from_millis(config.breaker_ms),
                    matches!(backend, Backend::Cluster(_)),
                ),
                backend,
                timeout,
            }),
        };
        pool.warm_up();
        Ok(Some(pool))
    }

    /// A pool for the single server at `url`, with the default settings
    /// (see [`RedisConfig`]).
    pub fn from_url(url: &str) -> Result<Self, ConfigError> {
        Self::from_config(&RedisConfig::single(url))?
            .ok_or_else(|| ConfigError::new("redis.url", "no Redis URL given"))
    }

    /// The deadline of every call.
    pub fn timeout(&self) -> Duration {
        self.inner.timeout
    }

    /// Whether this pool talks to a Redis Cluster.
    pub fn is_cluster(&self) -> bool {
        matches!(self.inner.backend, Backend::Cluster(_))
    }

    /// Runs one command. `op` labels the error counter.
    pub async fn query<T: FromRedisValue>(
        &self,
        op: &'static str,
        cmd: &Cmd,
    ) -> Result<T, StoreError> {
        self.execute(op, Request::Cmd(cmd)).await
    }

    /// Runs a pipeline (or a `MULTI`/`EXEC` transaction built with
    /// `Pipeline::atomic`). On a Cluster, all its keys must be in one slot.
    pub async fn query_pipeline<T: FromRedisValue>(
        &self,
        op: &'static str,
        pipe: &Pipeline,
    ) -> Result<T, StoreError> {
        self.execute(op, Request::Pipeline(pipe)).await
    }

    /// Runs a Lua script by its SHA1 (`EVALSHA`), loading it first when Redis does
    /// not know it (`NOSCRIPT`: after `SCRIPT FLUSH`, a restart or a failover).
    pub async fn invoke_script<T: FromRedisValue>(
        &self,
        op: &'static str,
        inv: &ScriptInvocation<'_>,
    ) -> Result<T, StoreError> {
        self.execute(op, Request::Script(inv)).await
    }

    /// Readiness: one `PING` (to any one node of a Cluster), within the timeout and
    /// through the breaker, so a down Redis answers at once.
    pub async fn ping(&self) -> Result<(), String> {
        match self.execute::<String>("ping", Request::Ping).await {
            Ok(pong) if pong == "PONG" => Ok(()),
            Ok(other) => Err(format!("unexpected PING reply {other:?}")),
            Err(e) => Err(e.to_string()),
        }
    }

    async fn execute<T: FromRedisValue>(
        &self,
        op: &'static str,
        request: Request<'_>,
    ) -> Result<T, StoreError> {
        // The transport part below is not generic over `T` (one copy of that
        // code), and converting the reply stays outside the breaker's judgement.
        let inner = &*self.inner;
        let Some(permit) = inner.breakers.for_request(&request).admit() else {
            count_error(op);
            return Err(StoreError::Unavailable);
        };
        let mut used = None;
        let result = match (&inner.backend, &request) {
            (Backend::Single(single), Request::Cmd(cmd)) => {
                tokio::time::timeout(inner.timeout, self.single_cmd(single, cmd, &mut used)).await
            }
            // Boxed: this future is ~500 bytes, and every caller's future (a cache
            // hit's, which awaits up to three calls) would otherwise carry it.
            _ => {
                tokio::time::timeout(
                    inner.timeout,
                    Box::pin(inner.backend.run(&request, &mut used)),
                )
                .await
            }
        };
        match result {
            Ok(Ok(value)) => {
                permit.success();
                // A reply of an unexpected shape is the caller's problem, not
                // Redis being down: it does not open the breaker.
                T::from_redis_value(value).map_err(|e| {
                    count_error(op);
                    StoreError::Redis(format!("unexpected reply: {e}"))
                })
            }
            Ok(Err(e)) => {
                count_error(op);
                if breaks_circuit(&e) {
                    permit.failure(op, &e);
                } else {
                    // An error reply: the server is up.
                    permit.success();
                }
                Err(StoreError::Redis(e.to_string()))
            }
            Err(_elapsed) => {
                count_error(op);
                permit.failure(op, &"timeout");
                if let (Backend::Single(single), Some(used)) = (&inner.backend, used) {
                    single.discard(used);
                }
                Err(StoreError::Timeout)
            }
        }
    }

    /// One command to a single server: written at once when no other call is in
    /// flight (nothing to batch it with; no flush task, no channel), else, with
    /// `auto_pipeline`, queued for the next batch.
    async fn single_cmd(
        &self,
        single: &Single,
        cmd: &Cmd,
        used: &mut Option<(usize, u64)>,
    ) -> RedisResult<Value> {
        let _in_flight = match &single.batch {
            Some(_) => {
                let guard = InFlight::enter(&single.in_flight);
                if guard.others > 0 {
                    return self.batched(cmd).await;
                }
                Some(guard)
            }
            None => None,
        };
        let index = single.next.fetch_add(1, Ordering::Relaxed) % single.slots.len();
        let (generation, mut manager) = single.manager(index)?;
        *used = Some((index, generation));
        // An error reply arrives as a value: make it the call's error, as
        // `Cmd::query_async` does.
        send_one(&mut manager, cmd).await?.extract_error()
    }

    /// Queues `cmd` for the next flush (spawning the flush task when none is pending)
    /// and waits for its reply.
    async fn batched(&self, cmd: &Cmd) -> RedisResult<Value> {
        let Backend::Single(Single {
            batch: Some(batch), ..
        }) = &self.inner.backend
        else {
            unreachable!("batched() is only called with auto_pipeline on a single server")
        };
        let (tx, rx) = tokio::sync::oneshot::channel();
        let spawn = {
            let mut batch = batch.lock().unwrap_or_else(PoisonError::into_inner);
            batch.queued.push((cmd.clone(), tx));
            !std::mem::replace(&mut batch.flush_pending, true)
        };
        if spawn {
            spawn_flush(self.inner.clone());
        }
        rx.await.unwrap_or_else(|_| {
            // The flush timed out and dropped the batch (the caller's own deadline
            // normally fires first).
            Err(RedisError::from(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "pipelined call abandoned",
            )))
        })
    }

    /// Starts connecting in the background, when inside a Tokio runtime, so the
    /// first request does not pay for it. Errors are ignored here: the first call
    /// will see them and open the breaker.
    fn warm_up(&self) {
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let weak: Weak<Inner> = Arc::downgrade(&self.inner);
        handle.spawn(async move {
            let Some(inner) = weak.upgrade() else { return };
            match &inner.backend {
                Backend::Single(single) => {
                    for index in 0..single.slots.len() {
                        if let Ok((_, mut manager)) = single.manager(index) {
                            let ping = redis::cmd("PING");
                            let _ = tokio::time::timeout(
                                single.config.connection_timeout().unwrap_or(inner.timeout),
                                manager.req_packed_command(&ping),
                            )
                            .await;
                        }
                    }
                }
                Backend::Cluster(cluster) => {
                    let _ = cluster.connection().await;
                }
            }
        });
    }
}

/// What a call sends.
enum Request<'a> {
    Cmd(&'a Cmd),
    Pipeline(&'a Pipeline),
    Script(&'a ScriptInvocation<'a>),
    Ping,
}

impl Request<'_> {
    /// The first key the call touches, when it can be read off the command: the
    /// slot its breaker is picked by on a Cluster.
    fn first_key(&self) -> Option<&[u8]> {
        let cmd = match self {
            Self::Cmd(cmd) => *cmd,
            Self::Pipeline(pipe) => pipe
                .cmd_iter()
                .find(|c| !matches!(c.args_iter().next(), Some(redis::Arg::Simple(n)) if n.eq_ignore_ascii_case(b"MULTI")))?,
            Self::Script(_) | Self::Ping => return None,
        };
        let mut args = cmd.args_iter().map(|a| match a {
            redis::Arg::Simple(bytes) => Some(bytes),
            _ => None,
        });
        let name = args.next()??;
        if name.eq_ignore_ascii_case(b"EVALSHA") || name.eq_ignore_ascii_case(b"EVAL") {
            args.next()?; // the script or its SHA1
            let keys = std::str::from_utf8(args.next()??)
                .ok()?
                .parse::<usize>()
                .ok()?;
            return if keys == 0 { None } else { args.next()? };
        }
        if name.eq_ignore_ascii_case(b"PING") {
            return None;
        }
        args.next()?
    }

    async fn send<C: ConnectionLike + Send>(&self, conn: &mut C) -> RedisResult<Value> {
        match self {
            Self::Cmd(cmd) => cmd.query_async(conn).await,
            Self::Pipeline(pipe) => pipe.query_async(conn).await,
            Self::Script(inv) => inv.invoke_async(conn).await,
            Self::Ping => redis::cmd("PING").query_async(conn).await,
        }
    }
}

impl Backend {
    /// Runs the request once (twice when a stale connection was refused before
    /// anything was sent). `used` records the single-server connection used, so a
    /// timeout can discard it.
    async fn run(
        &self,
        request: &Request<'_>,
        used: &mut Option<(usize, u64)>,
    ) -> RedisResult<Value> {
        match self {
            Self::Single(single) => {
                let index = single.next.fetch_add(1, Ordering::Relaxed) % single.slots.len();
                let (generation, mut manager) = single.manager(index)?;
                *used = Some((index, generation));
                match request.send(&mut manager).await {
                    // The manager held a failed connection attempt (Redis was down
                    // at the last attempt); the error made it start a new attempt,
                    // which this await joins. Nothing was sent, so a retry is safe.
                    Err(e) if e.is_connection_refusal() => request.send(&mut manager).await,
                    other => other,
                }
            }
            // Boxed: the cluster client's futures are kilobytes, and every caller's
            // future (a cache hit's, say) would otherwise be that large too.
            Self::Cluster(cluster) => Box::pin(cluster.run(request)).await,
        }
    }
}

impl Cluster {
    async fn run(&self, request: &Request<'_>) -> RedisResult<Value> {
        let mut conn = self.connection().await?;
        if let Request::Ping = request {
            // One random node answers: cheap, and PING's default routing
            // (every node) would make readiness depend on each replica.
            return conn
                .route_command(
                    redis::cmd("PING"),
                    RoutingInfo::SingleNode(SingleNodeRoutingInfo::Random),
                )
                .await;
        }
        request.send(&mut conn).await
    }
}

/// Writes every queued command in one pipeline on one connection and hands each
/// caller its reply. It first yields once, so that the other tasks that are ready to
/// run (other requests) queue their commands too: under load, one write and one
/// read serve many calls; alone, a call waits one scheduler pass.
async fn flush(mut pending: PendingFlush) {
    let inner = pending.inner.clone();
    let Backend::Single(single) = &inner.backend else {
        return;
    };
    let Some(batch) = &single.batch else { return };
    tokio::task::yield_now().await;
    let (queued, more) = pending.take(batch);
    if more {
        // The rest goes in the next pipeline, on the next connection, at once.
        spawn_flush(inner.clone());
    }
    if queued.is_empty() {
        return;
    }
    let (cmds, replies): (Vec<Cmd>, Vec<_>) = queued.into_iter().unzip();
    let index = single.next.fetch_add(1, Ordering::Relaxed) % single.slots.len();
    let (generation, mut manager) = match single.manager(index) {
        Ok(m) => m,
        Err(e) => {
            for reply in replies {
                let _ = reply.send(Err(e.clone()));
            }
            return;
        }
    };
    let sent = tokio::time::timeout(inner.timeout, async {
        if let [cmd] = cmds.as_slice() {
            return send_one(&mut manager, cmd).await.map(|v| vec![v]);
        }
        let mut pipe = Pipeline::with_capacity(cmds.len());
        for cmd in cmds {
            pipe.add_command(cmd);
        }
        match manager.req_packed_commands(&pipe, 0, pipe.len()).await {
            // As in `Backend::run`: nothing was sent, a retry is safe.
            Err(e) if e.is_connection_refusal() => {
                manager.req_packed_commands(&pipe, 0, pipe.len()).await
            }
            other => other,
        }
    })
    .await;
    match sent {
        Ok(Ok(values)) if values.len() == replies.len() => {
            for (reply, value) in replies.into_iter().zip(values) {
                let _ = reply.send(value.extract_error());
            }
        }
        Ok(Ok(values)) => {
            let e = RedisError::from(std::io::Error::other(format!(
                "pipeline of {} commands answered with {} replies",
                replies.len(),
                values.len()
            )));
            for reply in replies {
                let _ = reply.send(Err(e.clone()));
            }
        }
        Ok(Err(e)) => {
            for reply in replies {
                let _ = reply.send(Err(e.clone()));
            }
        }
        // The callers' deadlines fire too; drop the connection, as `execute` does.
        Err(_elapsed) => single.discard((index, generation)),
    }
}

/// Starts a flush task holding the queue's claim.
fn spawn_flush(inner: Arc<Inner>) {
    // A named `dyn` future: `flush` spawns its successor, and a recursive `async fn`
    // cannot prove itself `Send` through its own opaque type.
    let task: std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> =
        Box::pin(flush(PendingFlush {
            inner,
            taken: false,
        }));
    tokio::spawn(task);
}

/// At most this many commands go in one pipeline: a larger burst is split, so one
/// huge write (and its replies) does not hold up the calls behind it.
const MAX_BATCH: usize = 256;

/// The flush task's claim on the queue. If the task is dropped before it takes the
/// queue (its runtime shutting down, say), the claim is released and the queued
/// calls fail at once: a flag left set would make every later call wait for a
/// flush that never comes.
struct PendingFlush {
    inner: Arc<Inner>,
    taken: bool,
}

impl PendingFlush {
    /// Up to [`MAX_BATCH`] queued calls, and whether more remain (the queue then
    /// stays claimed for a next flush).
    fn take(&mut self, batch: &std::sync::Mutex<Batch>) -> (Vec<Queued>, bool) {
        let mut batch = batch.lock().unwrap_or_else(PoisonError::into_inner);
        self.taken = true;
        if batch.queued.len() > MAX_BATCH {
            let rest = batch.queued.split_off(MAX_BATCH);
            return (std::mem::replace(&mut batch.queued, rest), true);
        }
        batch.flush_pending = false;
        (std::mem::take(&mut batch.queued), false)
    }
}

impl Drop for PendingFlush {
    fn drop(&mut self) {
        if self.taken {
            return;
        }
        let inner = self.inner.clone();
        if let Backend::Single(Single {
            batch: Some(batch), ..
        }) = &inner.backend
        {
            // Dropping the replies' senders fails their calls; all of them, however
            // many, so that nothing waits on a claim nobody holds.
            drop(self.take(batch));
            let mut batch = batch.lock().unwrap_or_else(PoisonError::into_inner);
            batch.flush_pending = false;
            batch.queued.clear();
        }
    }
}

async fn send_one(manager: &mut ConnectionManager, cmd: &Cmd) -> RedisResult<Value> {
    match manager.req_packed_command(cmd).await {
        Err(e) if e.is_connection_refusal() => manager.req_packed_command(cmd).await,
        other => other,
    }
}

/// A connection manager and its generation (to discard exactly the one that
/// timed out, not its replacement).
type Slot = (u64, ConnectionManager);

/// `pool_size` lazily created connection managers, picked round-robin.
struct Single {
    client: redis::Client,
    config: ConnectionManagerConfig,
    /// `None` until first use or after a discard.
    slots: Box<[RwLock<Option<Slot>>]>,
    next: AtomicUsize,
    generation: AtomicU64,
    /// `auto_pipeline`: commands waiting for the next write.
    batch: Option<std::sync::Mutex<Batch>>,
    /// `auto_pipeline`: calls of one command waiting for their reply.
    in_flight: AtomicUsize,
}

/// Counts a call as in flight until dropped.
struct InFlight<'a> {
    count: &'a AtomicUsize,
    /// How many other calls were in flight when this one entered.
    others: usize,
}

impl<'a> InFlight<'a> {
    fn enter(count: &'a AtomicUsize) -> Self {
        let others = count.fetch_add(1, Ordering::AcqRel);
        Self { count, others }
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.count.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A queued command and where its reply goes.
type Queued = (Cmd, tokio::sync::oneshot::Sender<RedisResult<Value>>);

/// Commands of concurrent calls, written together by one flush task.
#[derive(Default)]
struct Batch {
    queued: Vec<Queued>,
    /// A flush task is spawned and has not taken the queue yet.
    flush_pending: bool,
}

impl Single {
    fn manager(&self, index: usize) -> RedisResult<(u64, ConnectionManager)> {
        let slot = &self.slots[index];
        if let Some(found) = slot.read().unwrap_or_else(PoisonError::into_inner).as_ref() {
            return Ok(found.clone());
        }
        let mut slot = slot.write().unwrap_or_else(PoisonError::into_inner);
        if let Some(found) = slot.as_ref() {
            return Ok(found.clone());
        }
        // Lazy: connects on first use (needs the Tokio runtime we are running on).
        let manager =
            ConnectionManager::new_lazy_with_config(self.client.clone(), self.config.clone())?;
        let generation = self.generation.fetch_add(1, Ordering::Relaxed);
        *slot = Some((generation, manager.clone()));
        Ok((generation, manager))
    }

    /// Drops the connection `used` after a timeout (unless already replaced): a
    /// frozen server or a half-open socket would otherwise keep failing calls, as
    /// redis-rs only reconnects after an I/O error.
    fn discard(&self, (index, generation): (usize, u64)) {
        let mut slot = self.slots[index]
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        if slot.as_ref().is_some_and(|(g, _)| *g == generation) {
            *slot = None;
        }
    }
}

/// One cluster connection (itself one multiplexed connection per node), made on
/// first use and kept: redis-rs reconnects nodes and refreshes slots by itself.
struct Cluster {
    shared: Arc<ClusterShared>,
}

struct ClusterShared {
    client: ClusterClient,
    conn: RwLock<Option<ClusterConnection>>,
    /// Held by the one task that is connecting.
    connecting: Arc<tokio::sync::Mutex<()>>,
}

impl Cluster {
    async fn connection(&self) -> RedisResult<ClusterConnection> {
        if let Some(conn) = self.shared.current() {
            return Ok(conn);
        }
        let guard = self.shared.connecting.clone().lock_owned().await;
        if let Some(conn) = self.shared.current() {
            return Ok(conn);
        }
        // Connecting to every node can take longer than one call's deadline: it
        // runs in its own task, which finishes (and stores the connection for the
        // next call) even when this caller stops waiting.
        let shared = self.shared.clone();
        let task = tokio::spawn(async move {
            let _guard = guard;
            let conn = shared.client.get_async_connection().await?;
            *shared.conn.write().unwrap_or_else(PoisonError::into_inner) = Some(conn.clone());
            Ok(conn)
        });
        task.await.unwrap_or_else(|e| {
            Err(RedisError::from(std::io::Error::other(format!(
                "cluster connection task failed: {e}"
            ))))
        })
    }
}

impl ClusterShared {
    fn current(&self) -> Option<ClusterConnection> {
        self.conn
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// Whether an error says Redis is unreachable (rather than an error reply).
fn breaks_circuit(e: &RedisError) -> bool {
    use redis::{ErrorKind, ServerErrorKind};
    e.is_io_error()
        || e.is_unrecoverable_error()
        || matches!(
            e.kind(),
            ErrorKind::Server(
                ServerErrorKind::ClusterDown
                    | ServerErrorKind::MasterDown
                    | ServerErrorKind::BusyLoading
                    | ServerErrorKind::TryAgain
            )
        )
}

#[cfg(feature = "metrics")]
fn count_error(op: &'static str) {
    metrics::counter!("palisade_redis_errors_total", "op" => op).increment(1);
}

#[cfg(not(feature = "metrics"))]
fn count_error(_op: &'static str) {}

/// The circuit breaker: closed, or open until an instant; once that instant has
/// passed, exactly one call (the probe) is let through.
struct Breaker {
    interval: Duration,
    epoch: Instant,
    /// Milliseconds after `epoch` until which calls fail fast; 0 = closed.
    open_until: AtomicU64,
    /// Whether a probe is in flight.
    probing: AtomicBool,
}

impl Breaker {
    fn new(interval: Duration) -> Self {
        Self {
            interval,
            epoch: Instant::now(),
            open_until: AtomicU64::new(0),
            probing: AtomicBool::new(false),
        }
    }

    fn now_ms(&self) -> u64 {
        // At least 1, since 0 means "closed".
        u64::try_from(self.epoch.elapsed().as_millis())
            .unwrap_or(u64::MAX)
            .max(1)
    }

    /// `Some` when the call may go ahead.
    fn admit(&self) -> Option<Permit<'_>> {
        let until = self.open_until.load(Ordering::Acquire);
        if until == 0 {
            return Some(Permit {
                breaker: self,
                probe: false,
            });
        }
        if self.now_ms() < until {
            return None;
        }
        self.probing
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .ok()
            .map(|_| Permit {
                breaker: self,
                probe: true,
            })
    }
}

/// Hash slots per Cluster breaker: 64 ranges of 256 slots. A master owns whole
/// ranges of slots (a 3-master Cluster: about 21 ranges each), so a dead master's
/// failures open only (mostly) its own ranges.
const SLOTS_PER_BREAKER: usize = 256;
const SLOTS: usize = 16_384;

/// The breakers of a pool: one for a single server; for a Cluster one per range of
/// hash slots, plus one for calls whose slot is not known (`PING`, script
/// invocations built by redis-rs).
struct Breakers {
    ranges: Box<[Breaker]>,
    unrouted: Breaker,
}

impl Breakers {
    fn new(interval: Duration, cluster: bool) -> Self {
        let n = if cluster {
            SLOTS / SLOTS_PER_BREAKER
        } else {
            0
        };
        Self {
            ranges: (0..n).map(|_| Breaker::new(interval)).collect(),
            unrouted: Breaker::new(interval),
        }
    }

    fn interval(&self) -> Duration {
        self.unrouted.interval
    }

    /// The breaker that judges this call.
    fn for_request(&self, request: &Request<'_>) -> &Breaker {
        if self.ranges.is_empty() {
            return &self.unrouted;
        }
        match request.first_key().map(key_slot) {
            Some(slot) => &self.ranges[usize::from(slot) / SLOTS_PER_BREAKER],
            None => &self.unrouted,
        }
    }
}

/// The Cluster hash slot of a key: CRC16 (XMODEM) of its hash tag (the part between
/// the first `{` and the next `}`, when not empty) or of the whole key, mod 16384.
fn key_slot(key: &[u8]) -> u16 {
    let tagged = key
        .iter()
        .position(|&b| b == b'{')
        .and_then(|open| {
            let rest = &key[open + 1..];
            let close = rest.iter().position(|&b| b == b'}')?;
            (close > 0).then(|| &rest[..close])
        })
        .unwrap_or(key);
    crc16_xmodem(tagged) % SLOTS as u16
}

/// CRC16-CCITT (XMODEM: polynomial 0x1021, initial value 0), as Redis Cluster uses.
fn crc16_xmodem(data: &[u8]) -> u16 {
    const TABLE: [u16; 256] = {
        let mut table = [0u16; 256];
        let mut i = 0;
        while i < 256 {
            let mut crc = (i as u16) << 8;
            let mut bit = 0;
            while bit < 8 {
                crc = if crc & 0x8000 != 0 {
                    (crc << 1) ^ 0x1021
                } else {
                    crc << 1
                };
                bit += 1;
            }
            table[i] = crc;
            i += 1;
        }
        table
    };
    data.iter().fold(0u16, |crc, &b| {
        (crc << 8) ^ TABLE[usize::from((crc >> 8) as u8 ^ b)]
    })
}

/// Admission of one call; reports its outcome to the breaker. A probe dropped
/// without an outcome (its caller gave up) frees the probe slot.
struct Permit<'a> {
    breaker: &'a Breaker,
    probe: bool,
}

impl Permit<'_> {
    fn success(self) {
        let was = self.breaker.open_until.swap(0, Ordering::AcqRel);
        if was != 0 {
            tracing::info!(target: "palisade::redis", "Redis answers again; circuit breaker closed");
        }
    }

    fn failure(self, op: &'static str, error: &dyn fmt::Display) {
        let b = self.breaker;
        let until = b
            .now_ms()
            .saturating_add(u64::try_from(b.interval.as_millis()).unwrap_or(u64::MAX));
        let was = b.open_until.swap(until, Ordering::AcqRel);
        if was == 0 {
            tracing::warn!(
                target: "palisade::redis",
                op,
                %error,
                breaker_ms = b.interval.as_millis() as u64,
                "Redis call failed; failing fast until the breaker interval has passed"
            );
        }
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        if self.probe {
            self.breaker.probing.store(false, Ordering::Release);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// The auto-pipelining queue of a single-server pool.
    fn queue(pool: &RedisPool) -> &std::sync::Mutex<Batch> {
        match &pool.inner.backend {
            Backend::Single(Single {
                batch: Some(batch), ..
            }) => batch,
            _ => unreachable!("auto_pipeline is on by default"),
        }
    }

    #[test]
    fn a_large_burst_is_split_into_pipelines_of_at_most_max_batch() {
        let pool = RedisPool::from_url("redis://127.0.0.1:1").unwrap();
        let batch = queue(&pool);
        let mut receivers = Vec::new();
        {
            let mut b = batch.lock().unwrap();
            for _ in 0..MAX_BATCH + 44 {
                let (tx, rx) = tokio::sync::oneshot::channel();
                b.queued.push((redis::cmd("PING"), tx));
                receivers.push(rx);
            }
            b.flush_pending = true;
        }
        let mut first = PendingFlush {
            inner: pool.inner.clone(),
            taken: false,
        };
        let (taken, more) = first.take(batch);
        assert_eq!((taken.len(), more), (MAX_BATCH, true));
        assert!(
            batch.lock().unwrap().flush_pending,
            "still claimed for the rest"
        );
        let mut second = PendingFlush {
            inner: pool.inner.clone(),
            taken: false,
        };
        let (rest, more) = second.take(batch);
        assert_eq!((rest.len(), more), (44, false));
        assert!(!batch.lock().unwrap().flush_pending);
    }

    #[test]
    fn a_flush_dropped_before_it_ran_releases_the_queue() {
        // A flush task dropped unpolled (its runtime shut down) must not leave the
        // queue claimed: later calls would wait for a flush that never comes.
        let pool = RedisPool::from_url("redis://127.0.0.1:1").unwrap();
        let batch = queue(&pool);
        let (tx, mut rx) = tokio::sync::oneshot::channel();
        {
            let mut b = batch.lock().unwrap();
            b.queued.push((redis::cmd("PING"), tx));
            b.flush_pending = true;
        }
        drop(PendingFlush {
            inner: pool.inner.clone(),
            taken: false,
        });
        let b = batch.lock().unwrap();
        assert!(!b.flush_pending);
        assert!(b.queued.is_empty());
        assert!(
            matches!(
                rx.try_recv(),
                Err(tokio::sync::oneshot::error::TryRecvError::Closed)
            ),
            "the queued call is failed, not kept"
        );
    }

    #[test]
    fn key_slots_match_redis_cluster() {
        // Values from the Redis Cluster specification and `CLUSTER KEYSLOT`.
        assert_eq!(crc16_xmodem(b"123456789"), 0x31c3);
        assert_eq!(key_slot(b"foo"), 12182);
        assert_eq!(key_slot(b"{user1000}.following"), key_slot(b"user1000"));
        // An empty tag does not count: the whole key is hashed.
        assert_eq!(key_slot(b"foo{}{bar}"), crc16_xmodem(b"foo{}{bar}") % 16384);
        assert_eq!(key_slot(b"foo{{bar}}zap"), key_slot(b"{bar"));
    }

    #[test]
    fn the_first_key_is_read_off_the_commands_palisade_sends() {
        let mut evalsha = redis::cmd("EVALSHA");
        evalsha.arg("0123").arg(2).arg("{k}:a").arg("{k}:b").arg(5);
        assert_eq!(Request::Cmd(&evalsha).first_key(), Some(&b"{k}:a"[..]));
        let mut no_keys = redis::cmd("EVALSHA");
        no_keys.arg("0123").arg(0).arg(5);
        assert_eq!(Request::Cmd(&no_keys).first_key(), None);
        let mut mget = redis::cmd("MGET");
        mget.arg("x").arg("y");
        assert_eq!(Request::Cmd(&mget).first_key(), Some(&b"x"[..]));
        let mut pipe = redis::pipe();
        pipe.atomic().cmd("SET").arg("p").arg(1);
        assert_eq!(Request::Pipeline(&pipe).first_key(), Some(&b"p"[..]));
        assert_eq!(Request::Ping.first_key(), None);
    }

    #[test]
    fn a_cluster_has_one_breaker_per_slot_range() {
        let b = Breakers::new(Duration::from_secs(1), true);
        let get = |key: &str| {
            let mut cmd = redis::cmd("GET");
            cmd.arg(key);
            b.for_request(&Request::Cmd(&cmd)) as *const Breaker
        };
        // Same tag, same breaker; "foo" (12182) and "bar" (5061) are ranges apart.
        assert_eq!(get("{foo}:a"), get("{foo}:b"));
        assert_ne!(get("foo"), get("bar"));
        let single = Breakers::new(Duration::from_secs(1), false);
        let mut cmd = redis::cmd("GET");
        cmd.arg("foo");
        assert!(std::ptr::eq(
            single.for_request(&Request::Cmd(&cmd)),
            &single.unrouted
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn breaker_fails_fast_for_one_interval_then_lets_one_probe_through() {
        let b = Breaker::new(Duration::from_millis(1000));
        b.admit().expect("closed").failure("t", &"boom");
        assert!(b.admit().is_none(), "open right after a failure");
        tokio::time::advance(Duration::from_millis(999)).await;
        assert!(
            b.admit().is_none(),
            "still open just before the interval ends"
        );
        tokio::time::advance(Duration::from_millis(2)).await;
        let probe = b.admit().expect("one probe after the interval");
        assert!(b.admit().is_none(), "only one probe at a time");
        probe.failure("t", &"still down");
        assert!(b.admit().is_none(), "a failed probe opens it again");
        tokio::time::advance(Duration::from_millis(1001)).await;
        b.admit().expect("probe").success();
        assert!(
            b.admit().is_some_and(|p| !p.probe),
            "closed after a successful probe"
        );
        assert!(b.admit().is_some(), "closed admits everyone");
    }

    #[tokio::test(start_paused = true)]
    async fn abandoned_probe_frees_the_probe_slot() {
        let b = Breaker::new(Duration::from_millis(10));
        b.admit().expect("closed").failure("t", &"boom");
        tokio::time::advance(Duration::from_millis(11)).await;
        drop(b.admit().expect("probe"));
        assert!(
            b.admit().is_some(),
            "a cancelled probe must not wedge the breaker"
        );
    }

    #[test]
    fn config_errors_are_reported_and_no_url_means_no_pool() {
        assert!(
            RedisPool::from_config(&RedisConfig::default())
                .unwrap()
                .is_none()
        );
        let bad = RedisConfig::single("ftp://x").with_pool_size(0);
        let err = RedisPool::from_config(&bad).unwrap_err();
        assert!(
            err.has_key("redis.url") && err.has_key("redis.pool_size"),
            "{err}"
        );
        assert!(RedisPool::from_url("nope").is_err());
    }

    #[test]
    fn from_url_outside_a_runtime_never_connects() {
        // Nothing listens on port 1; building must not try.
        let pool = RedisPool::from_url("redis://127.0.0.1:1").unwrap();
        assert!(!pool.is_cluster());
        assert_eq!(pool.timeout(), Duration::from_millis(200));
        assert!(!format!("{pool:?}").contains("127.0.0.1"));
    }

    #[test]
    fn store_error_display() {
        assert!(
            StoreError::Redis("WRONGTYPE x".into())
                .to_string()
                .contains("WRONGTYPE x")
        );
        assert!(StoreError::Timeout.to_string().contains("timeout"));
    }
}
