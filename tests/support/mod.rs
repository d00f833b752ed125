//! Test support shared by the integration tests: real `redis-server` processes.
//!
//! Each test that needs Redis starts its own throwaway server on a free loopback port
//! (from `redis-server` on PATH), or uses `PALISADE_TEST_REDIS_URL` when set. On CI
//! (`CI` set) a missing `redis-server` is a failure, never a skip.
#![allow(dead_code, unreachable_pub)]

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A `redis-server` child process, killed (by its PID) when dropped.
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    url: String,
}

impl RedisServer {
    /// Starts a fresh server on a free port (or returns the external one from
    /// `PALISADE_TEST_REDIS_URL`, which is then never killed).
    pub fn start() -> Self {
        if let Ok(url) = std::env::var("PALISADE_TEST_REDIS_URL") {
            let port = url
                .rsplit(':')
                .next()
                .and_then(|p| p.trim_end_matches('/').parse().ok())
                .unwrap_or(6379);
            return Self {
                child: None,
                port,
                url,
            };
        }
        Self::start_owned()
    }

    /// Always starts a server of our own (for tests that kill or pause it).
    pub fn start_owned() -> Self {
        // A port free a moment ago can be taken by another test's server before ours
        // binds it: ours then exits, and a PING would be answered by the other one.
        for _ in 0..5 {
            let port = free_port();
            let mut s = Self {
                child: None,
                port,
                url: format!("redis://127.0.0.1:{port}"),
            };
            if s.try_spawn() {
                return s;
            }
        }
        panic!("no free port for redis-server after 5 attempts");
    }

    /// Starts a server of our own on `port` (for a test that first points a client
    /// at a port where nothing listens yet).
    pub fn start_on(port: u16) -> Self {
        let mut s = Self {
            child: None,
            port,
            url: format!("redis://127.0.0.1:{port}"),
        };
        s.spawn();
        s
    }

    fn spawn(&mut self) {
        assert!(
            self.try_spawn(),
            "redis-server could not listen on port {} (taken by another process)",
            self.port
        );
    }

    /// Starts the child; `false` if it exited because the port was taken.
    fn try_spawn(&mut self) -> bool {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be on PATH (the CI script installs it)");
        let child = self.child.insert(child);
        if wait_for_own_server(self.port, child, Duration::from_secs(10)) {
            return true;
        }
        self.kill();
        false
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The server's port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Kills the server (SIGKILL) and waits for it to exit.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the server again, empty, on the same port.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// Freezes the server (SIGSTOP): it keeps its socket open and answers nothing.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// Resumes a paused server (SIGCONT).
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, sig: &str) {
        let pid = self
            .child
            .as_ref()
            .expect("only an owned server can be signalled")
            .id();
        let ok = Command::new("kill")
            .args([sig, &pid.to_string()])
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(ok, "kill {sig} {pid} failed");
    }

    /// Runs `redis-cli` against this server and returns its output.
    pub fn cli(&self, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .args(["-p", &self.port.to_string()])
            .args(args)
            .output()
            .expect("redis-cli on PATH");
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Some(c) = &self.child {
            // A paused server would not die from SIGTERM; SIGKILL works regardless.
            let _ = Command::new("kill")
                .args(["-CONT", &c.id().to_string()])
                .status();
        }
        self.kill();
    }
}

/// A port that was free a moment ago on 127.0.0.1.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind 127.0.0.1:0")
}

/// Waits until the server answering on `port` is `child` itself (its `process_id`),
/// not another test's that took the port first; `false` once `child` has exited
/// (it could not bind).
fn wait_for_own_server(port: u16, child: &mut Child, limit: Duration) -> bool {
    let own = format!("process_id:{}", child.id());
    let start = Instant::now();
    while start.elapsed() < limit {
        if let Ok(Some(_)) = child.try_wait() {
            return false;
        }
        if cli(port, &["INFO", "server"])
            .lines()
            .any(|l| l.trim() == own)
        {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("redis-server on port {port} did not answer within {limit:?}");
}

/// A throwaway Redis Cluster: 3 masters with one replica each, on free loopback
/// ports, its node files in a temporary directory. Every node is killed (by PID)
/// and the directory removed on drop.
pub struct RedisCluster {
    nodes: Vec<ClusterNode>,
    dir: tempfile::TempDir,
}

struct ClusterNode {
    port: u16,
    bus_port: u16,
    child: Option<Child>,
}

impl RedisCluster {
    /// Starts 6 nodes, joins them with `redis-cli --cluster create
    /// --cluster-replicas 1`, and waits until every node reports `cluster_state:ok`
    /// and knows all six nodes.
    pub fn start() -> Self {
        for _ in 0..5 {
            if let Some(cluster) = Self::try_start() {
                return cluster;
            }
        }
        panic!("no free ports for a Redis Cluster after 5 attempts");
    }

    /// `None` when another process took one of the free ports first (the nodes
    /// started are killed on drop).
    fn try_start() -> Option<Self> {
        let dir = tempfile::tempdir().expect("temp dir");
        let ports = free_ports(12);
        let mut cluster = Self {
            nodes: ports
                .chunks(2)
                .map(|p| ClusterNode {
                    port: p[0],
                    bus_port: p[1],
                    child: None,
                })
                .collect(),
            dir,
        };
        for i in 0..cluster.nodes.len() {
            cluster.spawn_node(i);
        }
        for n in &mut cluster.nodes {
            let child = n.child.as_mut().expect("just spawned");
            if !wait_for_own_server(n.port, child, Duration::from_secs(10)) {
                return None;
            }
        }
        let addrs: Vec<String> = cluster
            .nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let out = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .expect("redis-cli on PATH");
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let ports: Vec<u16> = cluster.nodes.iter().map(|n| n.port).collect();
        wait_until(
            Duration::from_secs(20),
            "the cluster to be ok on every node",
            || {
                ports.iter().all(|&p| {
                    let info = cli(p, &["CLUSTER", "INFO"]);
                    info.contains("cluster_state:ok") && info.contains("cluster_known_nodes:6")
                }) && ports.iter().all(|&p| {
                    // Every replica has finished its first sync.
                    let role = cli(p, &["ROLE"]);
                    !role.starts_with("slave") || role.contains("connected")
                })
            },
        );
        Some(cluster)
    }

    fn spawn_node(&mut self, i: usize) {
        let dir = self.dir.path().to_owned();
        let node = &mut self.nodes[i];
        let port = node.port.to_string();
        let conf = dir.join(format!("nodes-{port}.conf"));
        let child = Command::new("redis-server")
            .args(["--port", &port])
            .args(["--cluster-port", &node.bus_port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .args(["--cluster-enabled", "yes"])
            .arg("--cluster-config-file")
            .arg(&conf)
            .args(["--cluster-node-timeout", "1000"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be on PATH (the CI script installs it)");
        node.child = Some(child);
    }

    /// `redis://127.0.0.1:PORT` of every node still running (seed URLs).
    pub fn urls(&self) -> Vec<String> {
        self.nodes
            .iter()
            .filter(|n| n.child.is_some())
            .map(|n| format!("redis://127.0.0.1:{}", n.port))
            .collect()
    }

    /// The slot of `key` (asks a live node).
    pub fn slot_of(&self, key: &str) -> u16 {
        cli(self.any_live_port(), &["CLUSTER", "KEYSLOT", key])
            .parse()
            .expect("CLUSTER KEYSLOT answers a number")
    }

    /// Runs `redis-cli` against every live master and returns their outputs.
    pub fn cli_on_masters(&self, args: &[&str]) -> Vec<String> {
        self.masters()
            .into_iter()
            .map(|(port, _)| cli(port, args))
            .collect()
    }

    /// Port of the master serving `slot`.
    pub fn master_of_slot(&self, slot: u16) -> u16 {
        self.masters()
            .into_iter()
            .find(|(_, ranges)| ranges.iter().any(|&(a, b)| a <= slot && slot <= b))
            .map(|(port, _)| port)
            .unwrap_or_else(|| panic!("no live master serves slot {slot}"))
    }

    /// Kills (SIGKILL) the master serving `slot`; returns its port.
    pub fn kill_master_of_slot(&mut self, slot: u16) -> u16 {
        let port = self.master_of_slot(slot);
        let node = self
            .nodes
            .iter_mut()
            .find(|n| n.port == port)
            .expect("a node of ours");
        if let Some(mut c) = node.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        port
    }

    /// Waits until a live master serves `slot` again and every live node says
    /// `cluster_state:ok` (the replica of a killed master was promoted).
    pub fn wait_for_failover(&self, slot: u16, limit: Duration) {
        let live: Vec<u16> = self
            .nodes
            .iter()
            .filter(|n| n.child.is_some())
            .map(|n| n.port)
            .collect();
        wait_until(limit, "the failover", || {
            live.iter()
                .all(|&p| cli(p, &["CLUSTER", "INFO"]).contains("cluster_state:ok"))
                && self
                    .masters()
                    .iter()
                    .any(|(_, r)| r.iter().any(|&(a, b)| a <= slot && slot <= b))
        });
    }

    /// Live masters (by `CLUSTER NODES` as seen by a live node): port and slot
    /// ranges. Nodes flagged `fail` are left out.
    fn masters(&self) -> Vec<(u16, Vec<(u16, u16)>)> {
        let live: Vec<u16> = self
            .nodes
            .iter()
            .filter(|n| n.child.is_some())
            .map(|n| n.port)
            .collect();
        let view = cli(self.any_live_port(), &["CLUSTER", "NODES"]);
        view.lines()
            .filter_map(|line| {
                let f: Vec<&str> = line.split_whitespace().collect();
                let port: u16 = f
                    .get(1)?
                    .split('@')
                    .next()?
                    .rsplit(':')
                    .next()?
                    .parse()
                    .ok()?;
                let flags = *f.get(2)?;
                if !flags.contains("master") || flags.contains("fail") || !live.contains(&port) {
                    return None;
                }
                let ranges = f
                    .iter()
                    .skip(8)
                    .filter(|s| !s.starts_with('['))
                    .filter_map(|s| match s.split_once('-') {
                        Some((a, b)) => Some((a.parse().ok()?, b.parse().ok()?)),
                        None => s.parse().ok().map(|x| (x, x)),
                    })
                    .collect();
                Some((port, ranges))
            })
            .collect()
    }

    fn any_live_port(&self) -> u16 {
        self.nodes
            .iter()
            .find(|n| n.child.is_some())
            .map(|n| n.port)
            .expect("a live node")
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            if let Some(mut c) = node.child.take() {
                let _ = Command::new("kill")
                    .args(["-CONT", &c.id().to_string()])
                    .status();
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        // `dir` (a TempDir) removes the node files when dropped after this.
    }
}

/// `n` distinct ports that were free a moment ago (all bound at once, then freed).
pub fn free_ports(n: usize) -> Vec<u16> {
    let listeners: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0"))
        .collect();
    listeners
        .iter()
        .map(|l| l.local_addr().expect("local addr").port())
        .collect()
}

fn cli(port: u16, args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .args(["-p", &port.to_string()])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("redis-cli on PATH");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn wait_until(limit: Duration, what: &str, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while start.elapsed() < limit {
        if done() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("timed out after {limit:?} waiting for {what}");
}
