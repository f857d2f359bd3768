//! Logs and traces, shared by every binary.
//!
//! Logs: readable text, or JSON lines with `SAGA_LOG_FORMAT=json`; the level comes from
//! `RUST_LOG` (default `info`). Every line written while a message is handled carries that
//! message's span fields: trace id, saga id, order id, topic, partition and offset.
//!
//! Traces: trace ids exist and propagate (W3C `traceparent`/`tracestate` record headers) whether
//! or not spans are exported. When they are, every span goes through OpenTelemetry's SDK; when
//! not, a layer that only keeps each span's trace context ([`context`]) stands in for it, so
//! spans that nobody reads cost nothing beyond their ids. Export is on when
//! `OTEL_EXPORTER_OTLP_ENDPOINT` or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` is set, over OTLP/HTTP
//! (`OTEL_EXPORTER_OTLP_PROTOCOL` `http/protobuf`, the default, or `http/json`); the service name
//! is `OTEL_SERVICE_NAME`, else `saga-<service>`; `OTEL_SDK_DISABLED=true` turns it off.

use opentelemetry::propagation::{Extractor, Injector};
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::Resource;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

mod context;

/// W3C trace context header names, as carried on Kafka records and in outbox rows.
pub const TRACE_HEADERS: [&str; 2] = ["traceparent", "tracestate"];

/// Why telemetry could not start.
#[derive(Debug, thiserror::Error)]
#[error("OpenTelemetry export ({key}): {reason}")]
pub struct TelemetryError {
    /// The environment variable to look at.
    pub key: &'static str,
    /// What went wrong.
    pub reason: String,
}

/// Flushes and stops trace export when dropped: keep it alive for the life of `main`.
#[must_use = "dropping the guard stops trace export"]
pub struct Telemetry {
    /// The SDK's provider, when spans are exported.
    provider: Option<SdkTracerProvider>,
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(Err(e)) = self.provider.as_ref().map(SdkTracerProvider::shutdown) {
            eprintln!("flushing traces at shutdown failed: {e}");
        }
    }
}

/// Installs logging and tracing for `service`; see the module docs for the variables read.
pub fn init(service: &str) -> Result<Telemetry, TelemetryError> {
    init_with_default(service, "info")
}

/// Like [`init`], with another level when `RUST_LOG` is unset.
pub fn init_with_default(service: &str, level: &str) -> Result<Telemetry, TelemetryError> {
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    let json = std::env::var("SAGA_LOG_FORMAT").is_ok_and(|v| v.eq_ignore_ascii_case("json"));
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let fmt = if json { fmt.json().boxed() } else { fmt.boxed() };
    // Each layer filters for itself: a quiet log level must not switch off the spans that carry
    // trace context from record to record.
    let (traces, provider) = if export_configured() {
        let name = std::env::var("OTEL_SERVICE_NAME").ok().filter(|s| !s.is_empty()).unwrap_or_else(|| format!("saga-{service}"));
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .build()
            .map_err(|e| TelemetryError { key: "OTEL_EXPORTER_OTLP_PROTOCOL", reason: e.to_string() })?;
        let provider = SdkTracerProvider::builder().with_resource(Resource::builder().with_service_name(name).build()).with_batch_exporter(exporter).build();
        let layer = tracing_opentelemetry::layer().with_tracer(provider.tracer("saga")).with_error_records_to_exceptions(true).boxed();
        (layer, Some(provider))
    } else {
        (context::ContextLayer::new().boxed(), None)
    };
    EXPORTING.store(provider.is_some(), std::sync::atomic::Ordering::Relaxed);
    let traces = traces.with_filter(tracing_subscriber::filter::LevelFilter::INFO);
    let _ = tracing_subscriber::registry().with(fmt.with_filter(filter)).with(traces).try_init();
    Ok(Telemetry { provider })
}

/// Whether [`init`] installed an exporter: spans then carry what only an exporter reads.
static EXPORTING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Names `span` for OpenTelemetry (`otel.name`, declared empty) when spans are exported; without
/// an exporter nothing reads the name, so the string is not built. Call it before the span is
/// entered: tracing-opentelemetry ignores a new name once the span has started.
pub fn name_for_export(span: &tracing::Span, name: impl FnOnce() -> String) {
    if EXPORTING.load(std::sync::atomic::Ordering::Relaxed) {
        span.record("otel.name", name());
    }
}

fn export_configured() -> bool {
    let set = |k: &str| std::env::var(k).is_ok_and(|v| !v.trim().is_empty());
    let disabled = std::env::var("OTEL_SDK_DISABLED").is_ok_and(|v| v.eq_ignore_ascii_case("true"))
        || std::env::var("OTEL_TRACES_EXPORTER").is_ok_and(|v| v.eq_ignore_ascii_case("none"));
    !disabled && (set("OTEL_EXPORTER_OTLP_ENDPOINT") || set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))
}

/// Installs logging only (tools and tests); spans still get trace ids if tracing was initialised
/// elsewhere, and none otherwise.
pub fn init_logging() {
    init_logging_with_default("info");
}

/// Like [`init_logging`], with another level when `RUST_LOG` is unset.
pub fn init_logging_with_default(level: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    let json = std::env::var("SAGA_LOG_FORMAT").is_ok_and(|v| v.eq_ignore_ascii_case("json"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = if json { builder.json().try_init() } else { builder.try_init() };
}

struct Pairs<'a>(&'a [(String, String)]);

impl Extractor for Pairs<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.iter().find(|(k, _)| k.eq_ignore_ascii_case(key)).map(|(_, v)| v.as_str())
    }
    fn keys(&self) -> Vec<&str> {
        self.0.iter().map(|(k, _)| k.as_str()).collect()
    }
}

struct Collect(Vec<(String, String)>);

impl Injector for Collect {
    fn set(&mut self, key: &str, value: String) {
        self.0.push((key.to_string(), value));
    }
}

/// Makes `span` a child of the trace context in `headers` (W3C `traceparent`), if any.
pub fn set_parent_from(span: &tracing::Span, headers: &[(String, String)]) {
    let cx = opentelemetry::global::get_text_map_propagator(|p| p.extract(&Pairs(headers)));
    if cx.span().span_context().is_valid() && !context::set_parent(span, &cx) {
        let _ = span.set_parent(cx);
    }
}

/// The trace context of `span`: [`context`]'s, or the OpenTelemetry layer's.
fn context_of(span: &tracing::Span) -> opentelemetry::Context {
    context::context_of(span).unwrap_or_else(|| span.context())
}

/// The W3C headers that make a record a child of `span`; empty without tracing.
pub fn headers_of(span: &tracing::Span) -> Vec<(String, String)> {
    let cx = context_of(span);
    if !cx.span().span_context().is_valid() {
        return Vec::new();
    }
    let mut out = Collect(Vec::new());
    opentelemetry::global::get_text_map_propagator(|p| p.inject_context(&cx, &mut out));
    out.0
}

/// The trace id of `span` (32 hex digits), or `None` without tracing.
pub fn trace_id_of(span: &tracing::Span) -> Option<String> {
    let cx = context_of(span);
    let sc = cx.span().span_context().clone();
    sc.is_valid().then(|| sc.trace_id().to_string())
}

/// The `traceparent` of the current span, for storing with state that outlives the message.
pub fn current_traceparent() -> Option<String> {
    headers_of(&tracing::Span::current()).into_iter().find(|(k, _)| k == "traceparent").map(|(_, v)| v)
}

/// Resolves on Ctrl-C or SIGTERM. A signal that cannot be listened for is logged and left out
/// (the other still stops the process).
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for ctrl-c");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for sigterm");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}
