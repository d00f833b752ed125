//! `tracing` subscriber set-up: JSON lines (or pretty output) with an env-filter.
//!
//! [`init`] installs a global subscriber built from `[logging]`:
//!
//! - `format = "json"`: one JSON object per line. Unlike `tracing-subscriber`'s own
//!   JSON format, the fields of the enclosing spans are **flattened** into the top
//!   level, so the access log's `request_id`, `http.route`, ... and your handler's
//!   own events carry the request's fields as top-level keys, ready for any log
//!   pipeline. Fields are written straight into the line buffer, without
//!   building a JSON tree per event.
//! - `background_writer = true` (the default, JSON only): lines go to stdout through
//!   one background thread instead of a `write(2)` per line, `WARN` and `ERROR`
//!   synchronously; see [`BackgroundStdout`]. Call [`flush`] before the process
//!   exits.
//! - `format = "pretty"`: `tracing-subscriber`'s human-readable output.
//! - `level`: an `EnvFilter` directive (`info`, `warn,palisade=debug`, ...); when
//!   it only names targets and levels, [`filter`] installs `Targets` instead, which
//!   takes no lock when a span is entered (see [`LogFilter`]).
//! - `[logging.otel]` (feature `otel`): also exports spans over OTLP/HTTP; see
//!   the `otel` module. The level filters exported spans too: the request span is
//!   `INFO`, so `level = "warn"` exports none.
//!
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let config = palisade::Config::load()?;
//! palisade::telemetry::init(&config.logging)?;
//! // ... serve until shut down, then:
//! palisade::telemetry::flush();
//! # Ok(()) }
//! ```
//!
//! Calling [`init`] a second time returns [`InitError::AlreadyInitialized`]; it never
//! panics. To send the JSON lines elsewhere (a file, a test buffer), build the
//! subscriber with [`json_subscriber`] and install it yourself.

use std::fmt::{self, Write as _};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields, MakeWriter};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;

mod background;
mod filter;
pub use background::{BackgroundStdout, FLUSH_INTERVAL, MAX_PENDING, QueuedLine, flush};
pub use filter::LogFilter;

use crate::config::LoggingConfig;
use crate::config::logging::LogFormat;
use crate::error::ConfigError;

/// Why [`init`] did not install a subscriber.
#[derive(Debug)]
#[non_exhaustive]
pub enum InitError {
    /// `[logging] level` is not a valid filter.
    Config(ConfigError),
    /// A global subscriber (or `log` logger) was already installed.
    AlreadyInitialized,
}

impl fmt::Display for InitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            InitError::Config(e) => write!(f, "{e}"),
            InitError::AlreadyInitialized => {
                f.write_str("a global tracing subscriber is already installed")
            }
        }
    }
}

impl std::error::Error for InitError {}

impl From<ConfigError> for InitError {
    fn from(e: ConfigError) -> Self {
        InitError::Config(e)
    }
}

/// The filter layer of `[logging] level`, as [`init`] and [`json_subscriber`] install
/// it: `tracing-subscriber`'s `Targets` when every directive is a target and a level
/// (no per-span work), its `EnvFilter` otherwise; see [`LogFilter`].
pub fn filter(config: &LoggingConfig) -> Result<LogFilter, ConfigError> {
    LogFilter::parse(&config.level)
}

/// The `EnvFilter` of `[logging] level`. [`filter`] makes the same decisions and
/// skips `EnvFilter`'s span locks when it can.
pub fn env_filter(config: &LoggingConfig) -> Result<EnvFilter, ConfigError> {
    parse_env_filter(&config.level)
}

/// `directives` as an `EnvFilter`, or the `logging.level` error.
///
/// An empty (or blank) string is rejected: `EnvFilter` would accept it and enable
/// nothing, so a typo such as `PALISADE_LOGGING__LEVEL=` would silence every log
/// line without a word. `off` says that on purpose.
pub(crate) fn parse_env_filter(directives: &str) -> Result<EnvFilter, ConfigError> {
    if directives.trim().is_empty() {
        return Err(ConfigError::new(
            "logging.level",
            "must not be empty (use `off` to log nothing)",
        ));
    }
    EnvFilter::try_new(directives).map_err(|e| {
        ConfigError::new(
            "logging.level",
            format!("not a valid filter directive: {e}"),
        )
    })
}

/// Installs the global subscriber described by `[logging]`, writing to stdout.
pub fn init(config: &LoggingConfig) -> Result<(), InitError> {
    let filter = filter(config)?;
    // `[logging.otel]`: span export (feature `otel`); validated even when off.
    config.otel.validate()?;
    #[cfg(feature = "otel")]
    let otel = crate::otel::tracer(&config.otel)?;
    #[cfg(feature = "otel")]
    let otel_layer = || {
        otel.clone()
            .map(|t| tracing_opentelemetry::layer().with_tracer(t))
    };
    #[cfg(not(feature = "otel"))]
    let otel_layer = || None::<tracing_subscriber::layer::Identity>;
    let result = match config.format {
        LogFormat::Pretty => tracing_subscriber::registry()
            .with(filter)
            .with(otel_layer())
            .with(tracing_subscriber::fmt::layer().pretty())
            .try_init(),
        _ if config.background_writer => tracing_subscriber::registry()
            .with(filter)
            .with(otel_layer())
            .with(json_layer(BackgroundStdout))
            .try_init(),
        _ => tracing_subscriber::registry()
            .with(filter)
            .with(otel_layer())
            .with(json_layer(std::io::stdout))
            .try_init(),
    };
    result.map_err(|_| InitError::AlreadyInitialized)
}

/// A JSON-lines subscriber (filter from `[logging] level`) writing to `writer`; install
/// it with `tracing::subscriber::set_global_default` or `set_default`.
pub fn json_subscriber<W>(
    config: &LoggingConfig,
    writer: W,
) -> Result<impl Subscriber + Send + Sync + 'static, ConfigError>
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    Ok(tracing_subscriber::registry()
        .with(filter(config)?)
        .with(json_layer(writer)))
}

/// The JSON-lines `fmt` layer, for composing with your own layers.
pub fn json_layer<S, W>(writer: W) -> tracing_subscriber::fmt::Layer<S, JsonFields, JsonFormat, W>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    W: for<'w> MakeWriter<'w> + 'static,
{
    tracing_subscriber::fmt::layer()
        .fmt_fields(JsonFields)
        .event_format(JsonFormat)
        .with_writer(writer)
}

/// Stores span fields as a JSON fragment (`"a":1,"b":"x"`), ready to splice into a
/// line.
#[derive(Debug, Clone, Copy, Default)]
pub struct JsonFields;

impl<'w> FormatFields<'w> for JsonFields {
    fn format_fields<R: RecordFields>(&self, mut writer: Writer<'w>, fields: R) -> fmt::Result {
        with_line_buffer(|buf| {
            fields.record(&mut JsonVisitor::new(buf, true));
            writer.write_str(buf)
        })
    }

    fn add_fields(
        &self,
        current: &'w mut FormattedFields<Self>,
        fields: &tracing::span::Record<'_>,
    ) -> fmt::Result {
        let first = current.fields.is_empty();
        fields.record(&mut JsonVisitor::new(&mut current.fields, first));
        Ok(())
    }
}

/// Formats an event as one JSON object per line: `timestamp`, `level`, `target`,
/// the event's fields (`message` included), then the fields of every enclosing span,
/// outermost first.
#[derive(Debug, Clone, Copy, Default)]
pub struct JsonFormat;

impl<S> FormatEvent<S, JsonFields> for JsonFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, JsonFields>,
        mut w: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        // The line is built in a reused buffer with direct (inlined) pushes and handed
        // to the writer in one call: `Writer` is a `dyn fmt::Write`, and a dynamic call
        // per key, quote and value costs more than copying the finished line once.
        with_line_buffer(|buf| {
            let meta = event.metadata();
            buf.push_str("{\"timestamp\":\"");
            write_rfc3339(buf, SystemTime::now());
            // One constant per level (see `JsonVisitor::key`).
            match *meta.level() {
                Level::ERROR => buf.push_str("\",\"level\":\"ERROR\",\"target\":"),
                Level::WARN => buf.push_str("\",\"level\":\"WARN\",\"target\":"),
                Level::INFO => buf.push_str("\",\"level\":\"INFO\",\"target\":"),
                Level::DEBUG => buf.push_str("\",\"level\":\"DEBUG\",\"target\":"),
                _ => buf.push_str("\",\"level\":\"TRACE\",\"target\":"),
            }
            // A `'static` name, like field names: remembered plain (see `push_key`).
            buf.push('"');
            push_key(buf, meta.target());
            buf.push('"');
            event.record(&mut JsonVisitor::new(buf, false));
            if let Some(scope) = ctx.event_scope() {
                for span in scope.from_root() {
                    let ext = span.extensions();
                    if let Some(fields) = ext.get::<FormattedFields<JsonFields>>()
                        && !fields.fields.is_empty()
                    {
                        buf.push(',');
                        buf.push_str(&fields.fields);
                    }
                }
            }
            buf.push_str("}\n");
            w.write_str(buf)
        })
    }
}

/// Runs `f` on an empty, thread-local buffer whose capacity is kept between lines
/// (a fresh one if the buffer is in use: a `Debug` impl that logs while being
/// formatted).
fn with_line_buffer<R>(f: impl FnOnce(&mut String) -> R) -> R {
    thread_local! {
        static LINE: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
    }
    LINE.with(|cell| match cell.try_borrow_mut() {
        Ok(mut buf) => {
            buf.clear();
            let r = f(&mut buf);
            // A one-off huge line does not pin its memory to the thread.
            if buf.capacity() > 64 * 1024 {
                *buf = String::new();
            }
            r
        }
        Err(_) => f(&mut String::new()),
    })
}

struct JsonVisitor<'a> {
    buf: &'a mut String,
    first: bool,
}

impl<'a> JsonVisitor<'a> {
    fn new(buf: &'a mut String, first: bool) -> Self {
        Self { buf, first }
    }

    /// Writes `,"name":` and returns the buffer for the value.
    fn key(&mut self, field: &Field) -> &mut String {
        let buf = &mut *self.buf;
        // Two pushes of fixed length rather than one of either length: a constant
        // length compiles to a plain store, a variable one to a `memcpy` call.
        if std::mem::take(&mut self.first) {
            buf.push('"');
        } else {
            buf.push_str(",\"");
        }
        push_key(buf, field.name());
        buf.push_str("\":");
        buf
    }
}

impl Visit for JsonVisitor<'_> {
    fn record_f64(&mut self, field: &Field, value: f64) {
        push_f64(self.key(field), value);
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        let buf = self.key(field);
        if value < 0 {
            buf.push('-');
        }
        push_u64(buf, value.unsigned_abs());
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        push_u64(self.key(field), value);
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.key(field)
            .push_str(if value { "true" } else { "false" });
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        push_json_str(self.key(field), value);
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        let buf = self.key(field);
        buf.push('"');
        let _ = write!(Escape(buf), "{value}");
        buf.push('"');
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        let buf = self.key(field);
        buf.push('"');
        let _ = write!(Escape(buf), "{value:?}");
        buf.push('"');
    }
}

/// Appends the decimal digits of `n`.
fn push_u64(buf: &mut String, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    // ASCII digits, pushed as chars: no UTF-8 validation of the slice.
    for &d in &digits[i..] {
        buf.push(char::from(d));
    }
}

fn push_json_str(buf: &mut String, s: &str) {
    buf.push('"');
    push_escaped(buf, s);
    buf.push('"');
}

/// Appends `value` as a JSON number, `null` when it is not finite. Durations in
/// milliseconds with three decimals, the common case, skip the general float
/// formatting; the text is the same as `Display`'s shortest round-trip form.
fn push_f64(buf: &mut String, value: f64) {
    if !value.is_finite() {
        buf.push_str("null");
        return;
    }
    let thousandths = (value * 1000.0).round();
    if thousandths.abs() < 1e12 && thousandths / 1000.0 == value {
        // Exactly k/1000 and small enough that no shorter decimal maps to `value`.
        if value.is_sign_negative() {
            buf.push('-');
        }
        let k = thousandths.abs() as u64;
        push_u64(buf, k / 1000);
        let frac = k % 1000;
        if frac != 0 {
            buf.push('.');
            let (mut digits, mut width) = (frac, 3);
            while digits % 10 == 0 {
                digits /= 10;
                width -= 1;
            }
            let mut text = [0u8; 3];
            put_digits(&mut text[..width], digits);
            for &d in &text[..width] {
                buf.push(char::from(d));
            }
        }
    } else {
        // Writing to a `String` cannot fail.
        let _ = write!(buf, "{value}");
    }
}

fn needs_escape(b: u8) -> bool {
    NEEDS_ESCAPE[usize::from(b)]
}

/// [`needs_escape`] as a table: one load per byte instead of four comparisons.
static NEEDS_ESCAPE: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        table[b] = b < 0x20 || b == b'"' as usize || b == b'\\' as usize || b == 0x7f;
        b += 1;
    }
    table
};

/// Whether any byte of `bytes` needs escaping, eight bytes at a time.
#[inline]
fn any_needs_escape(bytes: &[u8]) -> bool {
    let Some(last) = bytes.len().checked_sub(8) else {
        // 4 to 7 bytes (`GET`-like values, short keys): two overlapping halves as one
        // word; fewer, the table.
        return match bytes.len().checked_sub(4) {
            Some(tail) => word_needs_escape(
                u64::from(half_word_at(bytes, 0)) | u64::from(half_word_at(bytes, tail)) << 32,
            ),
            None => bytes.iter().any(|&b| needs_escape(b)),
        };
    };
    let mut at = 0;
    while at < last {
        if word_needs_escape(word_at(bytes, at)) {
            return true;
        }
        at += 8;
    }
    // The last eight bytes, overlapping the previous word rather than byte by byte.
    word_needs_escape(word_at(bytes, last))
}

fn half_word_at(bytes: &[u8], at: usize) -> u32 {
    let mut word = [0u8; 4];
    word.copy_from_slice(&bytes[at..at + 4]);
    u32::from_le_bytes(word)
}

fn word_at(bytes: &[u8], at: usize) -> u64 {
    let mut word = [0u8; 8];
    word.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(word)
}

/// Whether any of the eight bytes in `x` needs escaping.
fn word_needs_escape(x: u64) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    // High bit set in every byte of `x` that is zero (exact: borrows only propagate
    // past a byte that is itself zero).
    let zero_bytes = |x: u64| x.wrapping_sub(ONES) & !x & HIGH;
    // Bytes below 0x20 (ASCII only: bytes >= 0x80 are excluded by `!x`).
    let control = x.wrapping_sub(ONES * 0x20) & !x & HIGH;
    let hits = control
        | zero_bytes(x ^ (ONES * u64::from(b'"')))
        | zero_bytes(x ^ (ONES * u64::from(b'\\')))
        | zero_bytes(x ^ (ONES * 0x7f));
    hits != 0
}

/// Appends `s` escaped as the inside of a JSON string. Almost every key and value
/// needs no escaping: the check is a few word operations, and the escaping loop is
/// kept out of line so that this path stays small.
#[inline]
fn push_escaped(buf: &mut String, s: &str) {
    if any_needs_escape(s.as_bytes()) {
        push_escaped_slow(buf, s);
    } else {
        buf.push_str(s);
    }
}

/// Appends a field name (or an event's target) escaped. Names are `&'static str` and
/// nearly always plain, and the bytes at a `'static` address never change, so a name
/// found plain is remembered by its address and length and pushed unchecked from then
/// on: a line's ~16 keys cost a table probe each instead of an escape scan.
fn push_key(buf: &mut String, name: &'static str) {
    match plain_key_tag(name) {
        Some((slot, tag)) if PLAIN_KEYS[slot].load(Ordering::Relaxed) == tag => {
            buf.push_str(name);
        }
        Some((slot, tag)) if !any_needs_escape(name.as_bytes()) => {
            PLAIN_KEYS[slot].store(tag, Ordering::Relaxed);
            buf.push_str(name);
        }
        _ => push_escaped(buf, name),
    }
}

/// log2 of the slots of [`PLAIN_KEYS`], a direct-mapped table: a collision only costs
/// a re-check.
const PLAIN_KEY_BITS: u32 = 7;

/// Field names and event targets known to need no escaping, each as
/// `address << 8 | length`: exact (no two names share both), so a match is never a
/// guess.
static PLAIN_KEYS: [AtomicU64; 1 << PLAIN_KEY_BITS] =
    [const { AtomicU64::new(0) }; 1 << PLAIN_KEY_BITS];

/// The [`PLAIN_KEYS`] slot and tag of `name`, or `None` when its address and length do
/// not both fit the tag (a name of 256 bytes or more; an address at or above 2^56,
/// which no current 64-bit platform gives user space).
fn plain_key_tag(name: &'static str) -> Option<(usize, u64)> {
    let addr = u64::try_from(name.as_ptr() as usize).ok()?;
    let len = u8::try_from(name.len()).ok()?;
    if addr >> 56 != 0 {
        return None;
    }
    let tag = addr << 8 | u64::from(len);
    // Fibonacci hashing of the tag onto the slots (names of one call site sit side by
    // side in memory, so the low bits alone would cluster).
    let slot = tag.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (64 - PLAIN_KEY_BITS);
    Some((usize::try_from(slot).ok()?, tag))
}

#[cold]
#[inline(never)]
fn push_escaped_slow(buf: &mut String, s: &str) {
    let bytes = s.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        if !needs_escape(b) {
            continue;
        }
        buf.push_str(&s[start..i]);
        match b {
            b'"' => buf.push_str("\\\""),
            b'\\' => buf.push_str("\\\\"),
            b'\n' => buf.push_str("\\n"),
            b'\r' => buf.push_str("\\r"),
            b'\t' => buf.push_str("\\t"),
            _ => {
                buf.push_str("\\u00");
                const HEX: &[u8; 16] = b"0123456789abcdef";
                buf.push(char::from(HEX[usize::from(b >> 4)]));
                buf.push(char::from(HEX[usize::from(b & 0xf)]));
            }
        }
        start = i + 1;
    }
    buf.push_str(&s[start..]);
}

/// Escapes what is formatted into it (`Debug`/`Display` values) as the inside of a
/// JSON string.
struct Escape<'a>(&'a mut String);

impl fmt::Write for Escape<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        push_escaped(self.0, s);
        Ok(())
    }
}

/// Writes `t` as RFC 3339 UTC with microseconds: `2026-11-23T12:00:00.123456Z`. The
/// part up to the second changes once a second, so each thread keeps its last one
/// formatted and only the microseconds are written per line.
fn write_rfc3339(buf: &mut String, t: SystemTime) {
    thread_local! {
        static SECOND: std::cell::RefCell<(u64, String)> =
            const { std::cell::RefCell::new((0, String::new())) };
    }
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    SECOND.with(|cell| match cell.try_borrow_mut() {
        Ok(mut cached) => {
            if cached.0 != secs || cached.1.is_empty() {
                cached.1.clear();
                push_rfc3339_second(&mut cached.1, secs);
                cached.0 = secs;
            }
            buf.push_str(&cached.1);
        }
        Err(_) => push_rfc3339_second(buf, secs),
    });
    let mut fraction = *b".000000Z";
    put_digits(&mut fraction[1..7], u64::from(d.subsec_micros()));
    buf.push_str(std::str::from_utf8(&fraction).unwrap_or_default());
}

/// `YYYY-MM-DDTHH:MM:SS` of `secs` since the epoch.
fn push_rfc3339_second(buf: &mut String, secs: u64) {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let (year, month, day) = crate::civil::civil_from_days(days);
    // Filled in place and appended at once.
    let mut out = *b"0000-00-00T00:00:00";
    put_digits(&mut out[0..4], year.clamp(0, 9999) as u64);
    put_digits(&mut out[5..7], month as u64);
    put_digits(&mut out[8..10], day as u64);
    put_digits(&mut out[11..13], rem / 3600);
    put_digits(&mut out[14..16], rem % 3600 / 60);
    put_digits(&mut out[17..19], rem % 60);
    // ASCII, so the check passes.
    buf.push_str(std::str::from_utf8(&out).unwrap_or_default());
}

/// Writes the last `out.len()` decimal digits of `n` into `out`, zero-padded.
fn put_digits(out: &mut [u8], mut n: u64) {
    for slot in out.iter_mut().rev() {
        *slot = b'0' + (n % 10) as u8;
        n /= 10;
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    #[test]
    fn rfc3339() {
        let mut s = String::new();
        write_rfc3339(&mut s, UNIX_EPOCH);
        assert_eq!(s, "1970-01-01T00:00:00.000000Z");
        s.clear();
        // 2024-02-29T23:59:59.5Z (leap day)
        write_rfc3339(
            &mut s,
            UNIX_EPOCH + Duration::from_millis(1_709_251_199_500),
        );
        assert_eq!(s, "2024-02-29T23:59:59.500000Z");
        s.clear();
        write_rfc3339(&mut s, UNIX_EPOCH + Duration::from_secs(4_102_444_800));
        assert_eq!(s, "2100-01-01T00:00:00.000000Z");
        // The same second again (the thread's cached part) and the next one.
        for (t, text) in [
            (
                Duration::from_micros(4_102_444_800_000_007),
                "2100-01-01T00:00:00.000007Z",
            ),
            (
                Duration::from_micros(4_102_444_801_250_000),
                "2100-01-01T00:00:01.250000Z",
            ),
            (
                Duration::from_secs(4_102_444_799),
                "2099-12-31T23:59:59.000000Z",
            ),
        ] {
            s.clear();
            write_rfc3339(&mut s, UNIX_EPOCH + t);
            assert_eq!(s, text);
        }
    }

    #[test]
    fn keys_are_escaped_every_time_and_plain_ones_remembered_exactly() {
        static PLAIN: &str = "http.response.status_code";
        static QUOTED: &str = "a\"b\n";
        // Same address, different lengths: the plain prefix being remembered must not
        // let the whole name through unescaped.
        static WHOLE: &str = "plain\"quoted";
        let prefix: &'static str = &WHOLE[..5];
        let long: &'static str = Box::leak("k\"".repeat(200).into_boxed_str());
        let cases = [
            (PLAIN, "http.response.status_code".to_owned()),
            (QUOTED, "a\\\"b\\n".to_owned()),
            (prefix, "plain".to_owned()),
            (WHOLE, "plain\\\"quoted".to_owned()),
            (long, "k\\\"".repeat(200)),
        ];
        for round in 0..3 {
            for (name, expected) in &cases {
                let mut buf = String::from("{");
                push_key(&mut buf, name);
                assert_eq!(&buf[1..], expected.as_str(), "round {round}, {name:?}");
            }
        }
        let (slot, tag) = plain_key_tag(PLAIN).expect("a short static name has a tag");
        // Other tests log concurrently and may take the slot; one of a few pushes sticks.
        let remembered = (0..100).any(|_| {
            push_key(&mut String::new(), PLAIN);
            PLAIN_KEYS[slot].load(Ordering::Relaxed) == tag
        });
        assert!(remembered, "a plain name is remembered");
        assert!(plain_key_tag(long).is_none(), "400 bytes do not fit a tag");
        assert_ne!(plain_key_tag(prefix), plain_key_tag(WHOLE));
    }

    #[test]
    fn escapes() {
        let mut s = String::new();
        push_json_str(&mut s, "a\"b\\c\nd\u{1}e\u{7f}é\t\r");
        assert_eq!(s, r#""a\"b\\c\nd\u0001e\u007fé\t\r""#);
        for len in 0..40 {
            for special in [
                b'"', b'\\', b'\n', 0x1f, 0x7f, b'a', b' ', b'~', 0x80, 0xff, 0x20,
            ] {
                for at in 0..len {
                    let mut v = vec![b'x'; len];
                    v[at] = special;
                    let expect = v
                        .iter()
                        .any(|&b| b < 0x20 || b == b'"' || b == b'\\' || b == 0x7f);
                    assert_eq!(any_needs_escape(&v), expect, "{v:?}");
                }
            }
        }
        for (n, text) in [
            (0, "0"),
            (7, "7"),
            (1_000, "1000"),
            (u64::MAX, "18446744073709551615"),
        ] {
            s.clear();
            push_u64(&mut s, n);
            assert_eq!(s, text);
        }
    }

    #[test]
    fn floats_match_display() {
        let mut values = vec![
            0.0,
            -0.0,
            0.5,
            1.0,
            0.412,
            12.345,
            1e-7,
            1e300,
            -3.25,
            0.1 + 0.2,
        ];
        values.extend((0..20_000u64).map(|us| us as f64 / 1000.0));
        values.extend((0..2_000u64).map(|n| (n * 7_919_993) as f64 / 1000.0));
        values.extend([
            f64::MAX,
            f64::MIN_POSITIVE,
            999_999_999.999,
            1e9,
            123_456_789_012.5,
        ]);
        let mut s = String::new();
        for v in values {
            s.clear();
            push_f64(&mut s, v);
            assert_eq!(s, format!("{v}"), "{v:e}");
        }
        for v in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            s.clear();
            push_f64(&mut s, v);
            assert_eq!(s, "null");
        }
    }

    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);
    impl std::io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn every_level_is_named_with_its_target() {
        let buf = Buf::default();
        let out = buf.clone();
        let config = LoggingConfig {
            level: "trace".into(),
            ..LoggingConfig::default()
        };
        let sub = json_subscriber(&config, move || buf.clone()).unwrap();
        tracing::subscriber::with_default(sub, || {
            tracing::error!(target: "t::e", "e");
            tracing::warn!(target: "t::w", "w");
            tracing::info!(target: "t::i", "i");
            tracing::debug!(target: "t::d", "d");
            tracing::trace!(target: "t::t", "t");
        });
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        let levels: Vec<(String, String, String)> = text
            .lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                let s = |k: &str| v[k].as_str().unwrap().to_owned();
                (s("level"), s("target"), s("message"))
            })
            .collect();
        let expected = [
            ("ERROR", "t::e", "e"),
            ("WARN", "t::w", "w"),
            ("INFO", "t::i", "i"),
            ("DEBUG", "t::d", "d"),
            ("TRACE", "t::t", "t"),
        ]
        .map(|(a, b, c)| (a.to_owned(), b.to_owned(), c.to_owned()));
        assert_eq!(levels, expected, "{text}");
    }

    #[test]
    fn span_fields_are_flattened() {
        let buf = Buf::default();
        let out = buf.clone();
        let sub = json_subscriber(&LoggingConfig::default(), move || buf.clone()).unwrap();
        tracing::subscriber::with_default(sub, || {
            let outer = tracing::info_span!("outer", request_id = "r1", n = 3_u64);
            let _o = outer.enter();
            let inner = tracing::info_span!("inner", user = tracing::field::Empty);
            inner.record("user", "ann");
            let _i = inner.enter();
            tracing::info!(
                ratio = 0.5,
                nan = f64::NAN,
                quote = "say \"hi\"",
                "hello {}",
                42
            );
            tracing::debug!("filtered out");
        });
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 1, "{text}");
        let v: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
        assert_eq!(v["level"], "INFO");
        assert_eq!(v["message"], "hello 42");
        assert_eq!(v["request_id"], "r1");
        assert_eq!(v["n"], 3);
        assert_eq!(v["user"], "ann");
        assert_eq!(v["ratio"], 0.5);
        assert!(v["nan"].is_null());
        assert_eq!(v["quote"], "say \"hi\"");
        assert!(v["timestamp"].as_str().unwrap().ends_with('Z'));
    }

    #[test]
    fn init_twice_is_an_error_not_a_panic() {
        let bad = LoggingConfig {
            level: "[".into(),
            ..LoggingConfig::default()
        };
        assert!(matches!(init(&bad), Err(InitError::Config(_))));
        let first = init(&LoggingConfig::default());
        let second = init(&LoggingConfig::default());
        assert!(
            matches!(second, Err(InitError::AlreadyInitialized)),
            "{first:?}"
        );
    }
}
