//! `RedisPool` against real `redis-server` processes: a single server (killed,
//! restarted, flushed, frozen, late to start) and a Redis Cluster (with a
//! failover).
//!
//! Elapsed-time checks here are bounds on a hang (the call must return within its
//! timeout plus a generous margin), never performance assertions.
#![cfg(feature = "redis")]
#![allow(clippy::unwrap_used)]

mod support;

use std::time::{Duration, Instant};

use palisade::config::RedisConfig;
use palisade::redis::{RedisPool, StoreError};
use support::{RedisCluster, RedisServer};

/// Slack allowed on top of a timeout before a call counts as hung (the machine
/// running the tests may be busy).
const MARGIN: Duration = Duration::from_millis(500);

fn pool(url: &str, timeout_ms: u64, breaker_ms: u64) -> RedisPool {
    let config = RedisConfig::single(url)
        .with_timeout_ms(timeout_ms)
        .with_breaker_ms(breaker_ms)
        .with_pool_size(2);
    RedisPool::from_config(&config).unwrap().unwrap()
}

fn incr(key: &str) -> redis::Cmd {
    let mut c = redis::cmd("INCR");
    c.arg(key);
    c
}

fn counter_script() -> redis::Script {
    redis::Script::new("redis.call('INCRBY', KEYS[1], ARGV[1]); return redis.call('INCR', KEYS[2])")
}

/// Calls `ping` until it succeeds; panics after `limit`. Returns the time taken.
async fn ping_until_ok(pool: &RedisPool, limit: Duration) -> Duration {
    let start = Instant::now();
    loop {
        let r = pool.ping().await;
        if r.is_ok() {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < limit,
            "no recovery within {limit:?}: last error {r:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn query_pipeline_script_and_ping_work() {
    let server = RedisServer::start();
    let pool = pool(server.url(), 1000, 500);
    assert!(!pool.is_cluster());
    assert_eq!(pool.timeout(), Duration::from_millis(1000));
    pool.ping().await.unwrap();
    let _: () = pool
        .query("t", redis::cmd("SET").arg("{t}:a").arg("1"))
        .await
        .unwrap();
    let a: i64 = pool.query("t", &incr("{t}:a")).await.unwrap();
    assert_eq!(a, 2);
    let mut pipe = redis::pipe();
    pipe.cmd("INCR").arg("{t}:a").cmd("GET").arg("{t}:a");
    let (n, s): (i64, String) = pool.query_pipeline("t", &pipe).await.unwrap();
    assert_eq!((n, s.as_str()), (3, "3"));
    let v: i64 = pool
        .invoke_script("t", counter_script().key("{t}:a").key("{t}:b").arg(10))
        .await
        .unwrap();
    assert_eq!(v, 1);
    let a: i64 = pool
        .query("t", redis::cmd("GET").arg("{t}:a"))
        .await
        .unwrap();
    assert_eq!(a, 13);
    // An error reply is a Redis error and does not open the breaker.
    let err = pool
        .query::<i64>("t", redis::cmd("LPUSH").arg("{t}:a").arg("x"))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, StoreError::Redis(m) if m.contains("WRONGTYPE") && !m.contains("unexpected")),
        "{err}"
    );
    // So does a reply of an unexpected type (a caller's mistake).
    let err = pool
        .query::<i64>("t", redis::cmd("SET").arg("{t}:x").arg("1"))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, StoreError::Redis(m) if m.contains("unexpected reply")),
        "{err}"
    );
    pool.ping().await.unwrap();
    // The futures are Send (the layers run them inside boxed Send futures).
    let p = pool.clone();
    let got: i64 = tokio::spawn(async move { p.query("t", &incr("{t}:a")).await })
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got, 14);
}

#[tokio::test]
async fn script_survives_script_flush_and_an_empty_restarted_server() {
    let mut server = RedisServer::start_owned();
    let pool = pool(server.url(), 1000, 200);
    let script = counter_script();
    let first: i64 = pool
        .invoke_script("t", script.key("{s}:a").key("{s}:b").arg(1))
        .await
        .unwrap();
    assert_eq!(first, 1);
    assert_eq!(server.cli(&["SCRIPT", "FLUSH"]), "OK");
    assert_eq!(
        server.cli(&["SCRIPT", "EXISTS", script.get_hash()]),
        "0",
        "the flush removed the script"
    );
    let second: i64 = pool
        .invoke_script("t", script.key("{s}:a").key("{s}:b").arg(1))
        .await
        .unwrap();
    assert_eq!(second, 2, "NOSCRIPT was answered by loading the script");

    server.restart();
    ping_until_ok(&pool, Duration::from_secs(5)).await;
    let fresh: i64 = pool
        .invoke_script("t", script.key("{s}:a").key("{s}:b").arg(1))
        .await
        .unwrap();
    assert_eq!(fresh, 1, "the restarted server is empty and had no script");
}

#[tokio::test]
async fn killed_server_fails_fast_and_recovers_within_one_breaker_interval() {
    let timeout = Duration::from_millis(300);
    let breaker = Duration::from_millis(700);
    let mut server = RedisServer::start_owned();
    let pool = pool(server.url(), 300, 700);
    pool.ping().await.unwrap();

    server.kill();
    let start = Instant::now();
    let err = pool.query::<i64>("t", &incr("k")).await.unwrap_err();
    assert!(
        start.elapsed() < timeout + MARGIN,
        "took {:?}",
        start.elapsed()
    );
    assert!(
        matches!(err, StoreError::Redis(_) | StoreError::Timeout),
        "{err}"
    );

    // The breaker is open: calls fail at once without touching the network.
    for _ in 0..20 {
        let start = Instant::now();
        let err = pool.query::<i64>("t", &incr("k")).await.unwrap_err();
        assert_eq!(err, StoreError::Unavailable);
        assert!(start.elapsed() < timeout, "took {:?}", start.elapsed());
    }
    assert!(pool.ping().await.unwrap_err().contains("unavailable"));

    // Down for longer than an interval: probes fail and re-open the breaker.
    tokio::time::sleep(breaker + Duration::from_millis(100)).await;
    let start = Instant::now();
    let err = pool.query::<i64>("t", &incr("k")).await.unwrap_err();
    assert!(start.elapsed() < timeout + MARGIN);
    assert_ne!(
        err,
        StoreError::Unavailable,
        "the first call after the interval is a probe"
    );
    assert_eq!(
        pool.query::<i64>("t", &incr("k")).await.unwrap_err(),
        StoreError::Unavailable
    );

    // Restarted: the first probe after the interval must succeed (it may not
    // need a second interval to replace the connection that failed to connect).
    server.restart();
    tokio::time::sleep(breaker + Duration::from_millis(50)).await;
    let start = Instant::now();
    pool.ping()
        .await
        .expect("the first probe after a restart succeeds");
    assert!(start.elapsed() < timeout + MARGIN);
    // Every connection of the pool works again (round-robin over both).
    for _ in 0..4 {
        let _: i64 = pool.query("t", &incr("k")).await.unwrap();
    }
}

#[tokio::test]
async fn frozen_server_times_out_never_hangs_and_recovers_after_resume() {
    let timeout = Duration::from_millis(300);
    let server = RedisServer::start_owned();
    let pool = pool(server.url(), 300, 300);
    pool.ping().await.unwrap();

    server.pause();
    let start = Instant::now();
    let err = pool.query::<i64>("t", &incr("k")).await.unwrap_err();
    let took = start.elapsed();
    assert_eq!(err, StoreError::Timeout);
    assert!(took >= timeout - Duration::from_millis(5), "took {took:?}");
    assert!(took < timeout + MARGIN, "took {took:?}");
    assert_eq!(
        pool.query::<i64>("t", &incr("k")).await.unwrap_err(),
        StoreError::Unavailable
    );
    // Probes after each interval time out too, each within the deadline.
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(320)).await;
        let start = Instant::now();
        let r = pool.query::<i64>("t", &incr("k")).await;
        assert!(r.is_err());
        assert!(
            start.elapsed() < timeout + MARGIN,
            "took {:?}",
            start.elapsed()
        );
    }

    server.resume();
    ping_until_ok(&pool, Duration::from_secs(3)).await;
    for _ in 0..4 {
        let _: i64 = pool.query("t", &incr("k")).await.unwrap();
    }
}

#[tokio::test]
async fn starts_without_redis_and_works_once_it_is_up() {
    let port = support::free_ports(1)[0];
    let url = format!("redis://127.0.0.1:{port}");
    let start = Instant::now();
    let pool = pool(&url, 300, 300);
    assert!(
        start.elapsed() < Duration::from_millis(100),
        "from_config waited"
    );
    let start = Instant::now();
    assert!(pool.ping().await.is_err());
    assert!(start.elapsed() < Duration::from_millis(300) + MARGIN);

    let _server = RedisServer::start_on(port);
    // Once the breaker interval has passed, the very first call works.
    tokio::time::sleep(Duration::from_millis(350)).await;
    pool.ping()
        .await
        .expect("the first probe after Redis came up succeeds");
    let n: i64 = pool.query("t", &incr("late")).await.unwrap();
    assert_eq!(n, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_concurrent_calls_on_two_connections_all_complete() {
    let server = RedisServer::start();
    let pool = pool(server.url(), 5000, 500);
    let key = format!("{{c}}:{}", std::process::id());
    let tasks: Vec<_> = (0..500)
        .map(|_| {
            let pool = pool.clone();
            let key = key.clone();
            tokio::spawn(async move { pool.query::<i64>("t", &incr(&key)).await })
        })
        .collect();
    let done = tokio::time::timeout(Duration::from_secs(20), async {
        let mut ok = 0;
        for t in tasks {
            t.await.unwrap().unwrap();
            ok += 1;
        }
        ok
    })
    .await
    .expect("500 calls on 2 multiplexed connections must not deadlock");
    assert_eq!(done, 500);
    let total: i64 = pool.query("t", redis::cmd("GET").arg(&key)).await.unwrap();
    assert_eq!(total, 500);
}

/// `total_reads_processed` of Redis's `INFO stats`: how many reads the server made.
fn server_reads(server: &RedisServer) -> u64 {
    server
        .cli(&["INFO", "stats"])
        .lines()
        .find_map(|l| l.strip_prefix("total_reads_processed:"))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// Calls made by concurrent tasks reach Redis in shared writes (Redis itself counts
/// its reads): 128 tasks making 10 calls each, one after the other, as request
/// handlers do. Each caller gets its own reply, and an error reply stays with the
/// call that caused it. `auto_pipeline = false` runs the same calls as a baseline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_calls_are_written_together_and_answered_separately() {
    const TASKS: i64 = 128;
    const CALLS: i64 = 10;
    let server = RedisServer::start();
    let mut reads = Vec::new();
    for auto in [true, false] {
        let config = RedisConfig::single(server.url())
            .with_timeout_ms(5000)
            .with_pool_size(1)
            .with_auto_pipeline(auto);
        let pool = RedisPool::from_config(&config).unwrap().unwrap();
        ping_until_ok(&pool, Duration::from_secs(5)).await;
        let _: () = pool
            .query("t", redis::cmd("SET").arg("not-a-number").arg("x"))
            .await
            .unwrap();
        let before = server_reads(&server);
        let tasks: Vec<_> = (0..TASKS)
            .map(|t| {
                let pool = pool.clone();
                tokio::spawn(async move {
                    for c in 0..CALLS {
                        if t == 7 && c == 5 {
                            // A wrong-type error among the others.
                            let err = pool
                                .query::<i64>("t", &incr("not-a-number"))
                                .await
                                .unwrap_err()
                                .to_string();
                            assert!(err.contains("not an integer"), "{err}");
                            continue;
                        }
                        let key = format!("pipelined:{auto}:{t}");
                        let n: i64 = pool
                            .query("t", redis::cmd("INCRBY").arg(&key).arg(t))
                            .await
                            .unwrap();
                        let done = c + 1 - i64::from(t == 7 && c > 5);
                        assert_eq!(n, t * done, "task {t} call {c} got its own reply");
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        reads.push(server_reads(&server) - before);
    }
    let (auto, plain) = (reads[0], reads[1]);
    eprintln!(
        "{} calls: {auto} reads with auto_pipeline, {plain} without",
        TASKS * CALLS
    );
    // Seen here: 24–38 reads with auto_pipeline, 90–320 without (redis-rs's own
    // writes already coalesce some calls). At least 16 calls per read on average.
    assert!(
        auto * 16 <= (TASKS * CALLS) as u64,
        "auto_pipeline: {auto} reads for {} calls (without: {plain})",
        TASKS * CALLS
    );
}

/// Redis killed while 64 tasks keep calling through the pipelined path: every call
/// returns, success or error, within its deadline (none waits on a batch that died
/// with the connection), and calls succeed again after a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_server_mid_traffic_fails_every_pipelined_call_in_time() {
    let timeout = Duration::from_millis(300);
    let mut server = RedisServer::start_owned();
    let pool = pool(server.url(), 300, 300);
    ping_until_ok(&pool, Duration::from_secs(5)).await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let tasks: Vec<_> = (0..64)
        .map(|t| {
            let (pool, stop) = (pool.clone(), stop.clone());
            tokio::spawn(async move {
                let (mut ok, mut failed) = (0u32, 0u32);
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let start = Instant::now();
                    let r = pool.query::<i64>("t", &incr(&format!("mid:{t}"))).await;
                    let took = start.elapsed();
                    assert!(took < timeout + MARGIN, "call took {took:?}: {r:?}");
                    if r.is_ok() {
                        ok += 1;
                    } else {
                        failed += 1;
                        // Do not spin on the open breaker.
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                }
                (ok, failed)
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    server.kill();
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (mut ok, mut failed) = (0, 0);
    for t in tasks {
        let (o, f) = t.await.unwrap();
        ok += o;
        failed += f;
    }
    assert!(ok > 0 && failed > 0, "{ok} ok, {failed} failed");
    server.restart();
    ping_until_ok(&pool, Duration::from_secs(5)).await;
    let n: i64 = pool.query("t", &incr("after-restart")).await.unwrap();
    assert_eq!(n, 1);
}

#[cfg(feature = "metrics")]
#[test]
fn failed_calls_are_counted_by_op() {
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    let port = support::free_ports(1)[0];
    metrics::with_local_recorder(&recorder, || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let pool = pool(&format!("redis://127.0.0.1:{port}"), 200, 10_000);
            assert!(pool.query::<i64>("cache_get", &incr("x")).await.is_err());
            // Breaker open: a fast failure, still counted.
            assert_eq!(
                pool.query::<i64>("cache_get", &incr("x"))
                    .await
                    .unwrap_err(),
                StoreError::Unavailable
            );
            assert!(pool.ping().await.is_err());
        });
    });
    let text = handle.render();
    assert!(
        text.contains("palisade_redis_errors_total{op=\"cache_get\"} 2"),
        "{text}"
    );
    assert!(
        text.contains("palisade_redis_errors_total{op=\"ping\"} 1"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_routes_keys_runs_scripts_and_survives_a_failover() {
    let mut cluster = RedisCluster::start();
    let config = RedisConfig::cluster(cluster.urls())
        .with_timeout_ms(1000)
        .with_breaker_ms(200);
    let pool = RedisPool::from_config(&config).unwrap().unwrap();
    assert!(pool.is_cluster());
    pool.ping().await.unwrap();

    // Keys spread over many slots (and so over all three masters).
    let keys: Vec<String> = (0..30).map(|i| format!("{{k{i}}}:v")).collect();
    let slots: std::collections::HashSet<u16> = keys.iter().map(|k| cluster.slot_of(k)).collect();
    let masters: std::collections::HashSet<u16> =
        slots.iter().map(|&s| cluster.master_of_slot(s)).collect();
    assert_eq!(masters.len(), 3, "keys cover every master");
    for k in &keys {
        let _: () = pool
            .query("t", redis::cmd("SET").arg(k).arg(k))
            .await
            .unwrap();
    }
    for k in &keys {
        let v: String = pool.query("t", redis::cmd("GET").arg(k)).await.unwrap();
        assert_eq!(&v, k);
    }

    // A multi-key script with hash-tagged keys (one slot), across SCRIPT FLUSH.
    let script = counter_script();
    let run = || async {
        pool.invoke_script::<i64>("t", script.key("{u1}:a").key("{u1}:b").arg(5))
            .await
    };
    assert_eq!(run().await.unwrap(), 1);
    for out in cluster.cli_on_masters(&["SCRIPT", "FLUSH"]) {
        assert_eq!(out, "OK");
    }
    assert_eq!(run().await.unwrap(), 2);
    // A pipeline in one slot.
    let mut pipe = redis::pipe();
    pipe.cmd("INCR").arg("{u1}:p").cmd("INCR").arg("{u1}:p");
    let (a, b): (i64, i64) = pool.query_pipeline("t", &pipe).await.unwrap();
    assert_eq!((a, b), (1, 2));

    // Every write so far reached a replica (WAIT on our own connections).
    let acked: i64 = pool
        .query("t", redis::cmd("WAIT").arg(1).arg(2000))
        .await
        .unwrap();
    assert_eq!(acked, 1);

    // Kill the master of the script's slot; its replica takes over.
    let slot = cluster.slot_of("{u1}");
    cluster.kill_master_of_slot(slot);
    let start = Instant::now();
    let r = run().await;
    assert!(
        start.elapsed() < Duration::from_millis(1000) + MARGIN,
        "hung for {:?}: {r:?}",
        start.elapsed()
    );
    cluster.wait_for_failover(slot, Duration::from_secs(15));

    // Works again by itself: the script (unknown to the promoted replica or not)
    // and every key, including those on the other masters.
    let start = Instant::now();
    let n = loop {
        match run().await {
            Ok(n) => break n,
            Err(e) => {
                assert!(
                    start.elapsed() < Duration::from_secs(10),
                    "no recovery: {e}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    assert_eq!(n, 3, "the promoted replica kept the counter");
    for k in &keys {
        let _: Option<String> = loop {
            match pool.query("t", redis::cmd("GET").arg(k)).await {
                Ok(v) => break v,
                Err(e) => {
                    assert!(
                        start.elapsed() < Duration::from_secs(10),
                        "no recovery: {e}"
                    );
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        };
    }
    pool.ping().await.unwrap();
}

/// A TCP proxy that can silently drop everything on its current connections
/// while still serving new ones: a half-open connection, as after a NAT or
/// firewall forgets a flow. Only a deadline notices it.
struct BlackholeProxy {
    port: u16,
    generation: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl BlackholeProxy {
    async fn start(target: u16) -> Self {
        use std::sync::atomic::Ordering;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let generation = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let gen_accept = generation.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(upstream) = tokio::net::TcpStream::connect(("127.0.0.1", target)).await
                else {
                    continue;
                };
                let mine = gen_accept.load(Ordering::SeqCst);
                let (cr, cw) = client.into_split();
                let (ur, uw) = upstream.into_split();
                for (mut from, mut to) in [
                    (
                        Box::new(cr) as Box<dyn tokio::io::AsyncRead + Unpin + Send>,
                        Box::new(uw) as Box<dyn tokio::io::AsyncWrite + Unpin + Send>,
                    ),
                    (Box::new(ur), Box::new(cw)),
                ] {
                    let g = gen_accept.clone();
                    tokio::spawn(async move {
                        let mut buf = vec![0u8; 16 * 1024];
                        loop {
                            let n = match from.read(&mut buf).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => n,
                            };
                            if g.load(Ordering::SeqCst) == mine
                                && to.write_all(&buf[..n]).await.is_err()
                            {
                                return;
                            }
                        }
                    });
                }
            }
        });
        Self { port, generation }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// From now on, bytes on existing connections go nowhere (sockets stay open).
    fn blackhole_existing(&self) {
        self.generation
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_half_open_connection_is_replaced_after_a_timeout() {
    let server = RedisServer::start();
    let proxy = BlackholeProxy::start(server.port()).await;
    let config = RedisConfig::single(proxy.url())
        .with_timeout_ms(300)
        .with_breaker_ms(300)
        .with_pool_size(1);
    let pool = RedisPool::from_config(&config).unwrap().unwrap();
    pool.ping().await.unwrap();

    proxy.blackhole_existing();
    let start = Instant::now();
    assert_eq!(
        pool.ping().await.unwrap_err(),
        StoreError::Timeout.to_string()
    );
    assert!(start.elapsed() < Duration::from_millis(300) + MARGIN);
    // The silent connection was dropped; the probe after the interval opens a
    // new one, which works.
    tokio::time::sleep(Duration::from_millis(350)).await;
    pool.ping()
        .await
        .expect("a fresh connection replaced the half-open one");
    let n: i64 = pool.query("t", &incr("half-open")).await.unwrap();
    assert!(n >= 1);
}
