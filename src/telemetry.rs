//! OpenTelemetry traces: off unless `otlp_endpoint` is set, and then every RPC is a span
//! (named by its gRPC path, continuing the caller's W3C `traceparent`) with a span per store
//! call inside it, exported over OTLP/gRPC in batches.
//!
//! Off, the cost is one relaxed load per RPC and per store call ([`enabled`]): no header is
//! parsed and no span is made for the store.

use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use std::sync::atomic::{AtomicBool, Ordering};
use tracing_opentelemetry::OpenTelemetrySpanExt;

static ENABLED: AtomicBool = AtomicBool::new(false);

/// Whether traces are exported.
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// Exports what is still queued when dropped (at the end of `serve`).
pub struct Traces {
    provider: SdkTracerProvider,
}

impl Drop for Traces {
    fn drop(&mut self) {
        ENABLED.store(false, Ordering::Relaxed);
        if let Err(e) = self.provider.shutdown() {
            eprintln!("toolgate: could not export the last traces: {e}");
        }
    }
}

/// The `tracing` layer that turns spans into OpenTelemetry spans for the collector at
/// `endpoint` (`http://collector:4317`), and the guard that flushes them. Call within the
/// runtime.
pub fn layer<S>(
    endpoint: &str,
) -> Result<
    (
        tracing_opentelemetry::OpenTelemetryLayer<S, opentelemetry_sdk::trace::SdkTracer>,
        Traces,
    ),
    String,
>
where
    S: tracing::Subscriber + for<'span> tracing_subscriber::registry::LookupSpan<'span>,
{
    use opentelemetry_otlp::WithExportConfig;
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint)
        .build()
        .map_err(|e| format!("otlp_endpoint: {e}"))?;
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name("toolgate")
        .build();
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource)
        .build();
    let tracer = provider.tracer("toolgate");
    ENABLED.store(true, Ordering::Relaxed);
    Ok((
        tracing_opentelemetry::layer().with_tracer(tracer),
        Traces { provider },
    ))
}

/// Makes `span` (an RPC's) continue the trace of the request's `traceparent`, if any, and
/// names it `path`; nothing when traces are off (the span's `otel.*` fields stay empty, so
/// the log never shows them).
pub fn continue_trace(span: &tracing::Span, path: &str, headers: &http::HeaderMap) {
    if !enabled() {
        return;
    }
    span.record("otel.name", path);
    span.record("otel.kind", "server");
    let parent = TraceContextPropagator::new().extract(&Headers(headers));
    let _ = span.set_parent(parent);
}

/// A span for one store call inside the current one, when traces are on.
pub fn store_span(op: &'static str) -> tracing::Span {
    if enabled() {
        tracing::info_span!("store", op)
    } else {
        tracing::Span::none()
    }
}

struct Headers<'a>(&'a http::HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}
