//! Log lines to stdout from a background thread; see [`BackgroundStdout`].

use std::io::{self, Write};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::Duration;

use tracing::{Level, Metadata};
use tracing_subscriber::fmt::MakeWriter;

/// Bytes waiting for the writer above which a logging thread writes them itself.
pub const MAX_PENDING: usize = 1 << 20;

/// How long the writer lets lines accumulate once the first one arrives: the longest
/// an `INFO` line waits before it is written.
pub const FLUSH_INTERVAL: Duration = Duration::from_millis(10);

/// A buffer that grew past this for a burst is not kept for the next batch.
const KEEP_CAPACITY: usize = 64 * 1024;

/// The lines waiting for the writer thread and the sink they go to.
pub(crate) struct Pipeline<W> {
    state: Mutex<State>,
    wake: Condvar,
    /// Held for every write to the sink, so that batches and synchronous writes
    /// reach it in the order their bytes were logged.
    sink: Mutex<W>,
    max_pending: usize,
    interval: Duration,
}

struct State {
    pending: Vec<u8>,
    /// The writer thread is waiting on `wake` (notify it when a line arrives).
    writer_idle: bool,
    /// No writer thread (it could not be started): every write is synchronous.
    writer_running: bool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock leaves only bytes behind: keep logging.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl<W: Write + Send + 'static> Pipeline<W> {
    /// A pipeline to `sink` with its writer thread started.
    pub(crate) fn start(sink: W, max_pending: usize, interval: Duration) -> Arc<Self> {
        let pipeline = Arc::new(Self {
            state: Mutex::new(State {
                pending: Vec::new(),
                writer_idle: false,
                writer_running: true,
            }),
            wake: Condvar::new(),
            sink: Mutex::new(sink),
            max_pending,
            interval,
        });
        let writer = pipeline.clone();
        let started = std::thread::Builder::new()
            .name("palisade-log-writer".into())
            .spawn(move || writer.run_writer());
        if started.is_err() {
            lock(&pipeline.state).writer_running = false;
        }
        pipeline
    }

    /// Queues `line`; `urgent` lines (and any when too much is waiting) are written
    /// before this returns, after everything queued earlier.
    pub(crate) fn write_line(&self, line: &[u8], urgent: bool) {
        {
            let mut state = lock(&self.state);
            if !urgent
                && state.writer_running
                && state.pending.len() + line.len() <= self.max_pending
            {
                state.pending.extend_from_slice(line);
                if state.writer_idle {
                    state.writer_idle = false;
                    self.wake.notify_one();
                }
                return;
            }
        }
        self.write_through(line);
    }

    /// Writes everything queued so far, then `line`, to the sink.
    fn write_through(&self, line: &[u8]) {
        let mut sink = lock(&self.sink);
        let mut batch = std::mem::take(&mut lock(&self.state).pending);
        batch.extend_from_slice(line);
        // A failed write (stdout closed) loses these lines, as it would unbuffered.
        let _ = sink.write_all(&batch);
        let _ = sink.flush();
    }

    /// Writes everything queued so far before returning.
    pub(crate) fn flush(&self) {
        self.write_through(&[]);
    }

    fn run_writer(&self) {
        let mut spare = Vec::new();
        loop {
            {
                let mut state = lock(&self.state);
                while state.pending.is_empty() {
                    state.writer_idle = true;
                    state = self
                        .wake
                        .wait(state)
                        .unwrap_or_else(PoisonError::into_inner);
                }
            }
            // Let lines accumulate: under steady traffic the writer wakes on this
            // timer alone and no logging thread makes a system call to wake it.
            std::thread::sleep(self.interval);
            // The sink's lock first: a synchronous writer holding it wrote (or is
            // writing) older bytes than whatever the buffer holds when we get it.
            let mut sink = lock(&self.sink);
            std::mem::swap(&mut lock(&self.state).pending, &mut spare);
            if !spare.is_empty() {
                let _ = sink.write_all(&spare);
                let _ = sink.flush();
            }
            drop(sink);
            spare.clear();
            if spare.capacity() > KEEP_CAPACITY {
                spare = Vec::new();
            }
        }
    }
}

/// The process's stdout pipeline, started by the first line.
static STDOUT: OnceLock<Arc<Pipeline<io::Stdout>>> = OnceLock::new();

/// Writes every line queued by [`BackgroundStdout`] before returning; a no-op when
/// nothing used it.
pub fn flush() {
    if let Some(pipeline) = STDOUT.get() {
        pipeline.flush();
    }
}

/// A [`MakeWriter`] sending lines to stdout through one background writer thread:
/// what [`init`](super::init) uses for `format = "json"` unless `[logging]
/// background_writer = false`.
///
/// `std::io::stdout()` is line-buffered: every JSON line is one system call, made by
/// the thread that served the request while it holds stdout's lock. In a container
/// stdout is a pipe, and each of those writes also wakes the process reading it.
/// Here a logging thread only copies its line into a shared buffer; one writer thread
/// writes whatever has accumulated in a single call, [`FLUSH_INTERVAL`] after the
/// first line of a batch arrived. Only that first line wakes the writer (a system
/// call); under steady traffic it runs on its own timer and the request threads make
/// none. Writing at once instead measured *slower* than unbuffered stdout: a wake-up
/// and two context switches for a batch of one or two lines.
///
/// - **Order** is kept: every write to stdout (the writer's batches, the synchronous
///   writes below) happens under one lock, oldest bytes first. Text printed to stdout
///   by other means (`println!`) is not ordered with queued lines.
/// - **`WARN` and `ERROR`** lines are written synchronously, after everything logged
///   before them: they are on stdout when the logging call returns, even if the
///   process aborts next.
/// - **Bounded**: a logging thread that finds [`MAX_PENDING`] bytes waiting (stdout
///   is slower than the service) writes them itself, as unbuffered stdout would have
///   made it wait. Nothing is dropped.
/// - At exit, call [`flush`]: lines still in the buffer when the
///   process ends are lost, like a `BufWriter`'s.
#[derive(Debug, Clone, Copy, Default)]
pub struct BackgroundStdout;

/// One line's writer; see [`BackgroundStdout`].
#[derive(Debug)]
pub struct QueuedLine {
    urgent: bool,
}

impl Write for QueuedLine {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        STDOUT
            .get_or_init(|| Pipeline::start(io::stdout(), MAX_PENDING, FLUSH_INTERVAL))
            .write_line(buf, self.urgent);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for BackgroundStdout {
    type Writer = QueuedLine;

    fn make_writer(&'a self) -> QueuedLine {
        QueuedLine { urgent: false }
    }

    fn make_writer_for(&'a self, meta: &Metadata<'_>) -> QueuedLine {
        QueuedLine {
            urgent: is_urgent(*meta.level()),
        }
    }
}

/// `WARN` and `ERROR` (tracing orders levels by verbosity, `ERROR` least).
fn is_urgent(level: Level) -> bool {
    level <= Level::WARN
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::sync::Barrier;
    use std::thread::ThreadId;

    /// Each write to the sink: the writing thread and the bytes.
    type Writes = Arc<Mutex<Vec<(ThreadId, Vec<u8>)>>>;

    /// A sink recording each write (its bytes and the writing thread), optionally
    /// blocking writes until a gate opens.
    #[derive(Clone, Default)]
    struct Recorder {
        writes: Writes,
        gate: Option<Arc<(Mutex<bool>, Condvar)>>,
    }

    impl Write for Recorder {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if let Some(gate) = &self.gate {
                let mut open = gate.0.lock().unwrap();
                while !*open {
                    open = gate.1.wait(open).unwrap();
                }
            }
            self.writes
                .lock()
                .unwrap()
                .push((std::thread::current().id(), buf.to_vec()));
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl Recorder {
        fn text(&self) -> String {
            let writes = self.writes.lock().unwrap();
            String::from_utf8(writes.iter().flat_map(|w| w.1.clone()).collect()).unwrap()
        }
        fn count(&self) -> usize {
            self.writes.lock().unwrap().len()
        }
    }

    #[test]
    fn every_line_arrives_whole_and_in_each_threads_order() {
        let sink = Recorder::default();
        let pipeline = Pipeline::start(sink.clone(), MAX_PENDING, FLUSH_INTERVAL);
        let start = Arc::new(Barrier::new(4));
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let (pipeline, start) = (pipeline.clone(), start.clone());
                std::thread::spawn(move || {
                    start.wait();
                    for i in 0..2_000 {
                        pipeline.write_line(format!("t{t} {i}\n").as_bytes(), false);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        pipeline.flush();
        let text = sink.text();
        let mut next = [0; 4];
        for line in text.lines() {
            let (t, i) = line.split_once(' ').unwrap();
            let t: usize = t[1..].parse().unwrap();
            assert_eq!(i.parse::<usize>().unwrap(), next[t], "{line}");
            next[t] += 1;
        }
        assert_eq!(next, [2_000; 4]);
    }

    #[test]
    fn the_writer_thread_writes_without_a_flush() {
        let sink = Recorder::default();
        let pipeline = Pipeline::start(sink.clone(), MAX_PENDING, Duration::from_millis(1));
        pipeline.write_line(b"one\n", false);
        // Liveness, not timing: wait as long as it takes (a stuck writer hangs the test).
        while sink.count() == 0 {
            std::thread::sleep(Duration::from_millis(1));
        }
        pipeline.write_line(b"two\n", false);
        while sink.count() < 2 {
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(sink.text(), "one\ntwo\n");
        // The writer took both lines itself, not this thread.
        let me = std::thread::current().id();
        assert!(sink.writes.lock().unwrap().iter().all(|w| w.0 != me));
    }

    #[test]
    fn lines_logged_while_the_writer_is_busy_go_out_in_one_write() {
        let gate = Arc::new((Mutex::new(false), Condvar::new()));
        let sink = Recorder {
            gate: Some(gate.clone()),
            ..Recorder::default()
        };
        let pipeline = Pipeline::start(sink.clone(), MAX_PENDING, FLUSH_INTERVAL);
        pipeline.write_line(b"first\n", false);
        // The writer takes "first" and blocks in the sink; wait until it has taken it
        // (the buffer is empty again), then queue 100 more lines behind it.
        while !lock(&pipeline.state).pending.is_empty() {
            std::thread::yield_now();
        }
        for i in 0..100 {
            pipeline.write_line(format!("line {i}\n").as_bytes(), false);
        }
        *gate.0.lock().unwrap() = true;
        gate.1.notify_all();
        pipeline.flush();
        assert_eq!(sink.text().lines().count(), 101);
        // "first", then the 100 in one batch (the flush writes nothing more, or an
        // empty write).
        assert!(sink.count() <= 3, "{} writes", sink.count());
    }

    #[test]
    fn a_warning_is_written_before_the_call_returns_after_earlier_lines() {
        let sink = Recorder::default();
        let pipeline = Pipeline::start(sink.clone(), MAX_PENDING, FLUSH_INTERVAL);
        for i in 0..10 {
            pipeline.write_line(format!("info {i}\n").as_bytes(), false);
        }
        pipeline.write_line(b"warn\n", true);
        let text = sink.text();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 11, "{text}");
        assert_eq!(lines[10], "warn");
        assert!(
            lines[..10]
                .iter()
                .enumerate()
                .all(|(i, l)| *l == format!("info {i}"))
        );
    }

    #[test]
    fn past_the_limit_the_logging_thread_writes_itself_and_nothing_is_lost() {
        let sink = Recorder::default();
        let pipeline = Pipeline::start(sink.clone(), 64, FLUSH_INTERVAL);
        let line = [b'x'; 40];
        for _ in 0..50 {
            pipeline.write_line(&line, false);
        }
        pipeline.flush();
        assert_eq!(sink.text().len(), 50 * 40);
        let me = std::thread::current().id();
        assert!(
            sink.writes.lock().unwrap().iter().any(|w| w.0 == me),
            "no synchronous write by the logging thread"
        );
    }

    #[test]
    fn warn_and_error_are_urgent_info_is_not() {
        for (level, urgent) in [
            (Level::ERROR, true),
            (Level::WARN, true),
            (Level::INFO, false),
            (Level::DEBUG, false),
            (Level::TRACE, false),
        ] {
            assert_eq!(is_urgent(level), urgent, "{level}");
        }
    }
}
