//! `telemetry::init`'s stdout, seen from outside the process: each test re-runs this
//! test binary as a child that installs the real subscriber, logs and exits, and
//! reads the child's stdout through a pipe (as a container runtime would).

#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

/// Set in the child: which scenario to play.
const CHILD: &str = "PALISADE_LOG_WRITER_CHILD";

/// Runs `test` of this binary as a child playing `scenario`; its JSON lines on stdout.
fn child_lines(test: &str, scenario: &str) -> (Vec<serde_json::Value>, std::process::ExitStatus) {
    let out = Command::new(std::env::current_exe().unwrap())
        .args([test, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD, scenario)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    let lines = text
        .lines()
        .filter_map(json_part)
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    (lines, out.status)
}

/// The JSON line in a line of the child's stdout: libtest writes its own text there
/// too ("running 1 test", and "test <name> ... " with no newline before the test runs).
fn json_part(line: &str) -> Option<&str> {
    line.find("{\"timestamp\"").map(|at| &line[at..])
}

/// In the child: the subscriber `palisade::telemetry::init` installs by default.
fn init_default() {
    palisade::telemetry::init(&palisade::config::LoggingConfig::default()).unwrap();
}

#[test]
fn every_line_reaches_stdout_in_order_when_flushed_at_exit() {
    if std::env::var(CHILD).as_deref() == Ok("flush") {
        init_default();
        for i in 0..5_000_u64 {
            tracing::info!(target: "app", seq = i, "line");
        }
        palisade::telemetry::flush();
        std::process::exit(0);
    }
    let (lines, status) = child_lines(
        "every_line_reaches_stdout_in_order_when_flushed_at_exit",
        "flush",
    );
    assert!(status.success());
    let seqs: Vec<u64> = lines.iter().map(|l| l["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, (0..5_000).collect::<Vec<_>>());
}

#[test]
fn an_error_is_on_stdout_before_an_abort_with_every_line_before_it() {
    if std::env::var(CHILD).as_deref() == Ok("abort") {
        init_default();
        for i in 0..100_u64 {
            tracing::info!(target: "app", seq = i, "line");
        }
        tracing::error!(target: "app", seq = 100_u64, "fatal");
        // No flush, no destructors: only what was written before this survives.
        std::process::abort();
    }
    let (lines, status) = child_lines(
        "an_error_is_on_stdout_before_an_abort_with_every_line_before_it",
        "abort",
    );
    assert!(!status.success());
    let seqs: Vec<u64> = lines.iter().map(|l| l["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, (0..=100).collect::<Vec<_>>());
    assert_eq!(lines[100]["level"], "ERROR");
}

#[test]
fn lines_are_written_without_a_flush_while_the_process_runs() {
    if std::env::var(CHILD).as_deref() == Ok("no-flush") {
        init_default();
        tracing::info!(target: "app", seq = 0_u64, "line");
        // Wait for the parent to have read the line, then exit without a flush.
        let _ = std::io::stdin().read_line(&mut String::new());
        std::process::exit(0);
    }
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "lines_are_written_without_a_flush_while_the_process_runs",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD, "no-flush")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdin = child.stdin.take();
    // Blocks until the writer thread writes the line (a writer that never does hangs
    // the test: liveness, not timing).
    let line = BufReader::new(child.stdout.take().unwrap())
        .lines()
        .map(Result::unwrap)
        .find_map(|l| json_part(&l).map(str::to_owned))
        .unwrap();
    drop(stdin);
    assert!(child.wait().unwrap().success());
    let line: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(line["seq"], 0);
}

#[test]
fn background_writer_false_writes_each_line_directly() {
    if std::env::var(CHILD).as_deref() == Ok("direct") {
        let mut config = palisade::config::LoggingConfig::default();
        config.background_writer = false;
        palisade::telemetry::init(&config).unwrap();
        tracing::info!(target: "app", seq = 0_u64, "line");
        // Neither a flush nor a writer thread: stdout's own line buffering wrote it.
        std::process::abort();
    }
    let (lines, _) = child_lines(
        "background_writer_false_writes_each_line_directly",
        "direct",
    );
    assert_eq!(lines.len(), 1);
}
