//! The filter of `[logging] level`, without `EnvFilter`'s span locks when it can.
//!
//! `EnvFilter` keeps two `RwLock`-guarded maps for its dynamic directives (those naming
//! a span or a field value: `app[handler]=debug`). In `tracing-subscriber` 0.3 its
//! span callbacks take one of those locks on **every** span's creation, enter, exit and
//! close, whether or not any dynamic directive exists: one read-lock pair per poll of
//! every instrumented future, on a lock all worker threads share (tokio-rs/tracing
//! #2951; PR #3487 removes it upstream, unreleased in 0.3.23). palisade enters the
//! request span on every poll of the request.
//!
//! A `level` made only of static directives (`info`, `warn,palisade=debug`, ...) is
//! decided by the target and level alone; `tracing-subscriber`'s `Targets` makes exactly
//! those decisions (both keep the directives in the same `DirectiveSet`), with no span
//! callbacks at all. [`LogFilter`] is `Targets` for such a `level` and `EnvFilter`
//! otherwise.

use tracing::span;
use tracing::subscriber::Interest;
use tracing::{Metadata, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::layer::{Context, Filter, Layer};
use tracing_subscriber::registry::LookupSpan;

use crate::error::ConfigError;

/// The filter layer of `[logging] level`: an `EnvFilter`, or, when every directive is
/// static (a target and a level), the equivalent `Targets`, which does no per-span
/// work. Built by [`filter`](super::filter).
///
/// It is a [`Layer`] (a global filter, as [`init`](super::init) installs it) and a
/// per-layer [`Filter`], for a subscriber of your own that filters one layer and not
/// another:
///
/// ```
/// use palisade::telemetry::LogFilter;
/// use tracing_subscriber::{Layer, fmt, layer::SubscriberExt, registry};
///
/// let filter = LogFilter::parse("info,palisade=debug").unwrap();
/// let subscriber = registry().with(fmt::layer().json().with_filter(filter));
/// # drop(subscriber);
/// ```
#[derive(Debug)]
pub struct LogFilter(Kind);

// One value per subscriber, built once and never moved on a hot path: its size
// (an `EnvFilter` is ~1.8 KB) costs nothing, a box would cost a load per callback.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
enum Kind {
    Static(Targets),
    Dynamic(EnvFilter),
}

impl LogFilter {
    /// Parses an `EnvFilter` directive string (`RUST_LOG` syntax). An empty or blank
    /// string is an error (`off` logs nothing).
    pub fn parse(directives: &str) -> Result<Self, ConfigError> {
        super::parse_env_filter(directives).map(Self::from)
    }

    /// Whether the directives are all static, so no span callback does any work.
    pub fn is_static(&self) -> bool {
        matches!(self.0, Kind::Static(_))
    }
}

impl From<EnvFilter> for LogFilter {
    /// `Targets` when `env`'s directives are all static. The decision is taken on
    /// `EnvFilter`'s own rendering of what it parsed (the defaults it added included):
    /// a directive naming a span or fields renders with `[`, anything else is
    /// `target=level` or `level`, which `Targets` parses into the same directive.
    fn from(env: EnvFilter) -> Self {
        let rendered = env.to_string();
        if rendered.is_empty() || rendered.contains('[') {
            return Self(Kind::Dynamic(env));
        }
        match rendered.parse::<Targets>() {
            Ok(targets) => Self(Kind::Static(targets)),
            Err(_) => Self(Kind::Dynamic(env)),
        }
    }
}

impl<S> Layer<S> for LogFilter
where
    S: Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    fn register_callsite(&self, metadata: &'static Metadata<'static>) -> Interest {
        match &self.0 {
            Kind::Static(t) => Layer::<S>::register_callsite(t, metadata),
            Kind::Dynamic(e) => Layer::<S>::register_callsite(e, metadata),
        }
    }

    fn max_level_hint(&self) -> Option<LevelFilter> {
        match &self.0 {
            Kind::Static(t) => Layer::<S>::max_level_hint(t),
            Kind::Dynamic(e) => Layer::<S>::max_level_hint(e),
        }
    }

    fn enabled(&self, metadata: &Metadata<'_>, ctx: Context<'_, S>) -> bool {
        match &self.0 {
            Kind::Static(t) => Layer::<S>::enabled(t, metadata, ctx),
            Kind::Dynamic(e) => Layer::<S>::enabled(e, metadata, ctx),
        }
    }

    fn on_new_span(&self, attrs: &span::Attributes<'_>, id: &span::Id, ctx: Context<'_, S>) {
        if let Kind::Dynamic(e) = &self.0 {
            Layer::<S>::on_new_span(e, attrs, id, ctx);
        }
    }

    fn on_record(&self, id: &span::Id, values: &span::Record<'_>, ctx: Context<'_, S>) {
        if let Kind::Dynamic(e) = &self.0 {
            Layer::<S>::on_record(e, id, values, ctx);
        }
    }

    fn on_enter(&self, id: &span::Id, ctx: Context<'_, S>) {
        if let Kind::Dynamic(e) = &self.0 {
            Layer::<S>::on_enter(e, id, ctx);
        }
    }

    fn on_exit(&self, id: &span::Id, ctx: Context<'_, S>) {
        if let Kind::Dynamic(e) = &self.0 {
            Layer::<S>::on_exit(e, id, ctx);
        }
    }

    fn on_close(&self, id: span::Id, ctx: Context<'_, S>) {
        if let Kind::Dynamic(e) = &self.0 {
            Layer::<S>::on_close(e, id, ctx);
        }
    }
}

impl<S> Filter<S> for LogFilter
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn enabled(&self, metadata: &Metadata<'_>, cx: &Context<'_, S>) -> bool {
        match &self.0 {
            Kind::Static(t) => Filter::<S>::enabled(t, metadata, cx),
            Kind::Dynamic(e) => Filter::<S>::enabled(e, metadata, cx),
        }
    }

    fn callsite_enabled(&self, metadata: &'static Metadata<'static>) -> Interest {
        match &self.0 {
            Kind::Static(t) => Filter::<S>::callsite_enabled(t, metadata),
            Kind::Dynamic(e) => Filter::<S>::callsite_enabled(e, metadata),
        }
    }

    fn max_level_hint(&self) -> Option<LevelFilter> {
        match &self.0 {
            Kind::Static(t) => Filter::<S>::max_level_hint(t),
            Kind::Dynamic(e) => Filter::<S>::max_level_hint(e),
        }
    }

    fn on_new_span(&self, attrs: &span::Attributes<'_>, id: &span::Id, ctx: Context<'_, S>) {
        if let Kind::Dynamic(e) = &self.0 {
            Filter::<S>::on_new_span(e, attrs, id, ctx);
        }
    }

    fn on_record(&self, id: &span::Id, values: &span::Record<'_>, ctx: Context<'_, S>) {
        if let Kind::Dynamic(e) = &self.0 {
            Filter::<S>::on_record(e, id, values, ctx);
        }
    }

    fn on_enter(&self, id: &span::Id, ctx: Context<'_, S>) {
        if let Kind::Dynamic(e) = &self.0 {
            Filter::<S>::on_enter(e, id, ctx);
        }
    }

    fn on_exit(&self, id: &span::Id, ctx: Context<'_, S>) {
        if let Kind::Dynamic(e) = &self.0 {
            Filter::<S>::on_exit(e, id, ctx);
        }
    }

    fn on_close(&self, id: span::Id, ctx: Context<'_, S>) {
        if let Kind::Dynamic(e) = &self.0 {
            Filter::<S>::on_close(e, id, ctx);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use tracing::{Event, Level};
    use tracing_subscriber::layer::SubscriberExt;

    use super::*;

    /// Records the (target, level) of every event and span that reaches it.
    #[derive(Clone, Default)]
    struct Seen(Arc<Mutex<Vec<String>>>);

    impl<S: Subscriber> Layer<S> for Seen {
        fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
            let m = event.metadata();
            let mut seen = self.0.lock().unwrap_or_else(|e| e.into_inner());
            seen.push(format!("event {} {}", m.target(), m.level()));
        }
        fn on_new_span(&self, attrs: &span::Attributes<'_>, _: &span::Id, _: Context<'_, S>) {
            let m = attrs.metadata();
            let mut seen = self.0.lock().unwrap_or_else(|e| e.into_inner());
            seen.push(format!("span {} {}", m.target(), m.level()));
        }
    }

    macro_rules! at_every_level {
        ($target:literal) => {
            tracing::trace!(target: $target, "t");
            tracing::debug!(target: $target, "d");
            tracing::info!(target: $target, "i");
            tracing::warn!(target: $target, "w");
            tracing::error!(target: $target, "e");
            let _ = tracing::span!(target: $target, Level::DEBUG, "s").entered();
            {
                // An event inside a span: what span-name directives decide (through
                // the span callbacks that `LogFilter` forwards to `EnvFilter`).
                let _span = tracing::span!(target: $target, Level::INFO, "s").entered();
                tracing::debug!(target: $target, "in span");
            }
        };
    }

    /// Every event and span of a fixed set of targets and levels.
    fn emit_all() {
        at_every_level!("app");
        at_every_level!("app::db");
        at_every_level!("palisade");
        at_every_level!("palisade::access");
        at_every_level!("palisade_other");
        at_every_level!("hyper::proto::h1");
    }

    /// What [`emit_all`] gets through `subscriber` to `seen`.
    fn seen_through<T>(subscriber: T, seen: &Seen) -> Vec<String>
    where
        T: Subscriber + Send + Sync + 'static,
    {
        tracing::subscriber::with_default(subscriber, emit_all);
        let seen = seen.0.lock().unwrap_or_else(|e| e.into_inner());
        seen.clone()
    }

    /// What `layer`, as a filter layer in front of the recording one, lets through.
    fn decisions<L>(layer: L) -> Vec<String>
    where
        L: Layer<tracing_subscriber::Registry> + Send + Sync + 'static,
    {
        let seen = Seen::default();
        let subscriber = tracing_subscriber::registry()
            .with(layer)
            .with(seen.clone());
        seen_through(subscriber, &seen)
    }

    /// What `filter`, as the recording layer's own per-layer filter, lets through.
    fn per_layer_decisions<F>(filter: F) -> Vec<String>
    where
        F: Filter<tracing_subscriber::Registry> + Send + Sync + 'static,
    {
        let seen = Seen::default();
        let subscriber = tracing_subscriber::registry().with(seen.clone().with_filter(filter));
        seen_through(subscriber, &seen)
    }

    /// `LogFilter` parses `directives` into the expected kind and lets exactly what
    /// `EnvFilter` lets through, as a global filter layer and as a per-layer filter.
    fn assert_decides_as_env_filter(directives: &str, is_static: bool) {
        let parse = || {
            LogFilter::parse(directives)
                .unwrap_or_else(|e| panic!("{directives:?} should be valid: {e}"))
        };
        let env = || EnvFilter::try_new(directives).expect("valid");
        assert_eq!(parse().is_static(), is_static, "kind of {directives:?}");
        assert_eq!(decisions(parse()), decisions(env()), "{directives:?}");
        assert_eq!(
            per_layer_decisions(parse()),
            per_layer_decisions(env()),
            "{directives:?} as a per-layer filter"
        );
    }

    #[test]
    fn static_directives_decide_exactly_as_env_filter_does() {
        for directives in [
            "info",
            "warn",
            "trace",
            "off",
            "INFO",
            "warn,palisade=debug",
            "palisade=debug,warn",
            "info,palisade::access=off",
            "app::db=trace,app=warn,error",
            "palisade",
            "app=info",
            "3",
            "info,,palisade=trace",
            "info,hyper=warn",
        ] {
            assert_decides_as_env_filter(directives, true);
        }
    }

    #[test]
    fn directives_naming_spans_or_fields_stay_env_filter() {
        for directives in [
            "info,app[request]=debug",
            "app[{user=alice}]=trace",
            "app[{user}]=trace",
            "[s]=trace",
        ] {
            assert_decides_as_env_filter(directives, false);
        }
        // The comparison above is not vacuous: the span-name directive lets the DEBUG
        // event inside span `s` through, which needs the forwarded span callbacks.
        for seen in [
            decisions(LogFilter::parse("[s]=trace").expect("valid")),
            per_layer_decisions(LogFilter::parse("[s]=trace").expect("valid")),
        ] {
            assert!(
                seen.iter().any(|d| d == "event app DEBUG"),
                "an event inside span `s` is enabled: {seen:?}"
            );
        }
        for seen in [
            decisions(LogFilter::parse("info").expect("valid")),
            per_layer_decisions(LogFilter::parse("info").expect("valid")),
        ] {
            assert!(!seen.iter().any(|d| d.ends_with("DEBUG")), "{seen:?}");
            assert!(seen.iter().any(|d| d.ends_with("INFO")), "{seen:?}");
        }
    }

    #[test]
    fn invalid_directives_are_a_config_error_naming_the_key() {
        let err = LogFilter::parse("info,app=loud").expect_err("invalid level");
        assert!(err.to_string().contains("logging.level"), "{err}");
    }

    #[test]
    fn an_empty_level_is_rejected_rather_than_silencing_every_line() {
        // `EnvFilter` accepts "" and enables nothing at all.
        for blank in ["", "  "] {
            let err = LogFilter::parse(blank).expect_err("blank level");
            assert!(err.has_key("logging.level"), "{err}");
            assert!(err.to_string().contains("`off`"), "{err}");
        }
        assert!(LogFilter::parse("off").is_ok());
    }
}
