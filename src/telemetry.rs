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
//! - `format = "pretty"`: `tracing-subscriber`'s human-readable output.
//! - `level`: an `EnvFilter` directive (`info`, `warn,palisade=debug`, ...).
//! - `[logging.otel]` (feature `otel`): also exports spans over OTLP/HTTP; see
//!   the `otel` module. The level filters exported spans too: the request span is
//!   `INFO`, so `level = "warn"` exports none.
//!
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let config = palisade::Config::load()?;
//! palisade::telemetry::init(&config.logging)?;
//! # Ok(()) }
//! ```
//!
//! Calling [`init`] a second time returns [`InitError::AlreadyInitialized`]; it never
//! panics. To send the JSON lines elsewhere (a file, a test buffer), build the
//! subscriber with [`json_subscriber`] and install it yourself.

use std::fmt::{self, Write as _};
use std::time::{SystemTime, UNIX_EPOCH};

use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields, MakeWriter};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;

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

/// The `EnvFilter` of `[logging] level`.
pub fn env_filter(config: &LoggingConfig) -> Result<EnvFilter, ConfigError> {
    EnvFilter::try_new(&config.level).map_err(|e| {
        ConfigError::new(
            "logging.level",
            format!("not a valid filter directive: {e}"),
        )
    })
}

/// Installs the global subscriber described by `[logging]`, writing to stdout.
pub fn init(config: &LoggingConfig) -> Result<(), InitError> {
    let filter = env_filter(config)?;
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
        .with(env_filter(config)?)
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
        let mut v = JsonVisitor::new(&mut writer, true);
        fields.record(&mut v);
        v.result
    }

    fn add_fields(
        &self,
        current: &'w mut FormattedFields<Self>,
        fields: &tracing::span::Record<'_>,
    ) -> fmt::Result {
        let first = current.fields.is_empty();
        let mut writer = current.as_writer();
        let mut v = JsonVisitor::new(&mut writer, first);
        fields.record(&mut v);
        v.result
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
        let meta = event.metadata();
        w.write_str("{\"timestamp\":\"")?;
        write_rfc3339(&mut w, SystemTime::now())?;
        w.write_str("\",\"level\":\"")?;
        w.write_str(meta.level().as_str())?;
        w.write_str("\",\"target\":")?;
        write_json_str(&mut w, meta.target())?;
        {
            let mut v = JsonVisitor::new(&mut w, false);
            event.record(&mut v);
            v.result?;
        }
        if let Some(scope) = ctx.event_scope() {
            for span in scope.from_root() {
                let ext = span.extensions();
                if let Some(fields) = ext.get::<FormattedFields<JsonFields>>()
                    && !fields.fields.is_empty()
                {
                    w.write_char(',')?;
                    w.write_str(&fields.fields)?;
                }
            }
        }
        w.write_str("}\n")
    }
}

struct JsonVisitor<'a, 'w> {
    w: &'a mut Writer<'w>,
    first: bool,
    result: fmt::Result,
}

impl<'a, 'w> JsonVisitor<'a, 'w> {
    fn new(w: &'a mut Writer<'w>, first: bool) -> Self {
        Self {
            w,
            first,
            result: Ok(()),
        }
    }

    fn key(&mut self, field: &Field) -> fmt::Result {
        if !std::mem::take(&mut self.first) {
            self.w.write_char(',')?;
        }
        write_json_str(self.w, field.name())?;
        self.w.write_char(':')
    }

    fn put(&mut self, field: &Field, value: impl FnOnce(&mut Writer<'w>) -> fmt::Result) {
        if self.result.is_ok() {
            self.result = self.key(field).and_then(|()| value(self.w));
        }
    }
}

impl Visit for JsonVisitor<'_, '_> {
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.put(field, |w| {
            if value.is_finite() {
                write!(w, "{value}")
            } else {
                w.write_str("null")
            }
        });
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.put(field, |w| write!(w, "{value}"));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.put(field, |w| write!(w, "{value}"));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.put(field, |w| w.write_str(if value { "true" } else { "false" }));
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.put(field, |w| write_json_str(w, value));
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.put(field, |w| {
            w.write_char('"')?;
            write!(Escape(w), "{value}")?;
            w.write_char('"')
        });
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.put(field, |w| {
            w.write_char('"')?;
            write!(Escape(w), "{value:?}")?;
            w.write_char('"')
        });
    }
}

fn write_json_str(w: &mut impl fmt::Write, s: &str) -> fmt::Result {
    w.write_char('"')?;
    Escape(w).write_str(s)?;
    w.write_char('"')
}

/// Escapes what it writes as the inside of a JSON string.
struct Escape<'a, W: fmt::Write>(&'a mut W);

impl<W: fmt::Write> fmt::Write for Escape<'_, W> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let bytes = s.as_bytes();
        let mut start = 0;
        for (i, &b) in bytes.iter().enumerate() {
            let esc: &str = match b {
                b'"' => "\\\"",
                b'\\' => "\\\\",
                b'\n' => "\\n",
                b'\r' => "\\r",
                b'\t' => "\\t",
                0..=0x1f | 0x7f => "",
                _ => continue,
            };
            if start < i {
                self.0.write_str(&s[start..i])?;
            }
            if esc.is_empty() {
                write!(self.0, "\\u{:04x}", b)?;
            } else {
                self.0.write_str(esc)?;
            }
            start = i + 1;
        }
        if start < bytes.len() {
            self.0.write_str(&s[start..])?;
        }
        Ok(())
    }
}

/// Writes `t` as RFC 3339 UTC with microseconds: `2026-11-23T12:00:00.123456Z`.
fn write_rfc3339(w: &mut impl fmt::Write, t: SystemTime) -> fmt::Result {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let (year, month, day) = crate::civil::civil_from_days(days);
    write!(
        w,
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:06}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_micros()
    )
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
        write_rfc3339(&mut s, UNIX_EPOCH).unwrap();
        assert_eq!(s, "1970-01-01T00:00:00.000000Z");
        s.clear();
        // 2024-02-29T23:59:59.5Z (leap day)
        write_rfc3339(
            &mut s,
            UNIX_EPOCH + Duration::from_millis(1_709_251_199_500),
        )
        .unwrap();
        assert_eq!(s, "2024-02-29T23:59:59.500000Z");
        s.clear();
        write_rfc3339(&mut s, UNIX_EPOCH + Duration::from_secs(4_102_444_800)).unwrap();
        assert_eq!(s, "2100-01-01T00:00:00.000000Z");
    }

    #[test]
    fn escapes() {
        let mut s = String::new();
        write_json_str(&mut s, "a\"b\\c\nd\u{1}e\u{7f}é").unwrap();
        assert_eq!(s, r#""a\"b\\c\nd\u0001e\u007fé""#);
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
