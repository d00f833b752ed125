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
        let port = free_port();
        let mut s = Self {
            child: None,
            port,
            url: format!("redis://127.0.0.1:{port}"),
        };
        s.spawn();
        s
    }

    fn spawn(&mut self) {
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
        self.child = Some(child);
        wait_for_ping(self.port, Duration::from_secs(10));
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

fn wait_for_ping(port: u16, limit: Duration) {
    let start = Instant::now();
    while start.elapsed() < limit {
        let out = Command::new("redis-cli")
            .args(["-p", &port.to_string(), "PING"])
            .output();
        if let Ok(o) = out {
            if String::from_utf8_lossy(&o.stdout).trim() == "PONG" {
                return;
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("redis-server on port {port} did not answer PING within {limit:?}");
}
