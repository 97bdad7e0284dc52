//! Logs and traces for Weft's binaries.
//!
//! - [`init`]: `tracing` to stdout (text or JSON, `RUST_LOG` filters), plus OpenTelemetry
//!   trace export over OTLP/gRPC when `OTEL_EXPORTER_OTLP_ENDPOINT` (or
//!   `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set; off, at no cost, when it is not.
//! - [`TraceParent`]: a W3C `traceparent` that is `Copy`, so trace context can ride along
//!   where a header cannot: a Postgres NOTIFY payload, a field of a streamed gRPC message.

use std::fmt;
use std::io::IsTerminal;
use std::str::FromStr;

use opentelemetry::trace::{
    SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState, TracerProvider as _,
};
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{fmt as tfmt, EnvFilter, Layer};

#[cfg(feature = "receiver")]
pub mod receiver;

/// The metadata key / header name of W3C trace context.
pub const TRACEPARENT: &str = "traceparent";

/// Flushes and stops trace export when dropped (keep it alive in `main`).
#[must_use = "dropping the guard stops trace export"]
pub struct Guard(Option<SdkTracerProvider>);

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            if let Err(e) = p.shutdown() {
                eprintln!("trace export did not shut down cleanly: {e}");
            }
        }
    }
}

/// Whether the standard OTLP environment asks for trace export.
pub fn export_configured() -> bool {
    [
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    ]
    .iter()
    .any(|k| std::env::var(k).is_ok_and(|v| !v.is_empty()))
}

/// A tracer provider exporting to the OTLP endpoint of the environment, batching on the
/// tokio runtime. `service` names the process unless `OTEL_SERVICE_NAME` does.
pub fn provider(service: &'static str) -> Result<SdkTracerProvider, String> {
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .build()
        .map_err(|e| format!("OTLP exporter: {e}"))?;
    let name = std::env::var("OTEL_SERVICE_NAME").unwrap_or_else(|_| service.to_string());
    Ok(SdkTracerProvider::builder()
        .with_resource(
            opentelemetry_sdk::Resource::builder()
                .with_service_name(name)
                .build(),
        )
        .with_batch_exporter(exporter)
        .build())
}

/// The `tracing` layer that turns spans into OpenTelemetry spans of `provider`.
pub fn layer<S>(provider: &SdkTracerProvider, service: &'static str) -> impl Layer<S>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    tracing_opentelemetry::layer().with_tracer(provider.tracer(service))
}

/// How a process logs.
#[derive(Debug, Clone, Copy)]
pub struct Logs {
    pub json: bool,
    /// Logs to stderr (a CLI whose stdout is its output) instead of stdout.
    pub stderr: bool,
    /// The filter when `RUST_LOG` is unset.
    pub default_filter: &'static str,
}

/// Installs the process's subscriber: logs and, when configured, trace export. Call from
/// within a tokio runtime when export may be on (the OTLP/gRPC client needs one).
pub fn init(service: &'static str, logs: Logs) -> Guard {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(logs.default_filter));
    // Colours only on a terminal: a log file or collector gets plain text.
    let ansi = if logs.stderr {
        std::io::stderr().is_terminal()
    } else {
        std::io::stdout().is_terminal()
    };
    let fmt_layer = match (logs.json, logs.stderr) {
        (true, false) => tfmt::layer().json().with_target(false).boxed(),
        (true, true) => tfmt::layer()
            .json()
            .with_target(false)
            .with_writer(std::io::stderr)
            .boxed(),
        (false, false) => tfmt::layer().with_target(false).with_ansi(ansi).boxed(),
        (false, true) => tfmt::layer()
            .with_target(false)
            .with_ansi(ansi)
            .with_writer(std::io::stderr)
            .boxed(),
    };
    let (otel, provider) = if export_configured() {
        match provider(service) {
            Ok(p) => (Some(layer(&p, service)), Some(p)),
            Err(e) => {
                eprintln!("{service}: traces are not exported: {e}");
                (None, None)
            }
        }
    } else {
        (None, None)
    };
    tracing_subscriber::registry()
        .with(filter)
        .with(fmt_layer)
        .with(otel)
        .init();
    Guard(provider)
}

/// W3C trace context of one span: `00-<trace id>-<span id>-<flags>`.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct TraceParent {
    trace_id: [u8; 16],
    span_id: [u8; 8],
    flags: u8,
}

impl TraceParent {
    /// The context of `span`, if it is being traced (export on and the span enabled).
    pub fn of(span: &tracing::Span) -> Option<TraceParent> {
        let cx = span.context();
        let otel = cx.span();
        let sc = otel.span_context();
        sc.is_valid().then(|| TraceParent {
            trace_id: sc.trace_id().to_bytes(),
            span_id: sc.span_id().to_bytes(),
            flags: sc.trace_flags().to_u8(),
        })
    }

    /// The context of the current span.
    pub fn current() -> Option<TraceParent> {
        Self::of(&tracing::Span::current())
    }

    /// Makes `span` a child of this (remote) context. Call before the span is entered.
    pub fn adopt(&self, span: &tracing::Span) {
        let sc = SpanContext::new(
            TraceId::from_bytes(self.trace_id),
            SpanId::from_bytes(self.span_id),
            TraceFlags::new(self.flags),
            true,
            TraceState::default(),
        );
        let cx = opentelemetry::Context::new().with_remote_span_context(sc);
        // Fails only when tracing is off for this span: then there is nothing to link.
        let _ = span.set_parent(cx);
    }

    /// Parses `s` and, if it is a valid traceparent, makes `span` its child.
    pub fn adopt_str(s: &str, span: &tracing::Span) {
        if let Ok(tp) = s.parse::<TraceParent>() {
            tp.adopt(span);
        }
    }
}

impl fmt::Display for TraceParent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "00-")?;
        for b in self.trace_id {
            write!(f, "{b:02x}")?;
        }
        write!(f, "-")?;
        for b in self.span_id {
            write!(f, "{b:02x}")?;
        }
        write!(f, "-{:02x}", self.flags)
    }
}

impl fmt::Debug for TraceParent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Why a string is not a traceparent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadTraceParent;

impl fmt::Display for BadTraceParent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("not a W3C traceparent (00-<32 hex>-<16 hex>-<2 hex>, ids not all zero)")
    }
}

impl std::error::Error for BadTraceParent {}

fn hex_into(s: &str, out: &mut [u8]) -> Result<(), BadTraceParent> {
    if s.len() != out.len() * 2 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(BadTraceParent);
    }
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).map_err(|_| BadTraceParent)?;
    }
    Ok(())
}

impl FromStr for TraceParent {
    type Err = BadTraceParent;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut parts = s.trim().split('-');
        let (Some("00"), Some(t), Some(p), Some(fl), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return Err(BadTraceParent);
        };
        let mut tp = TraceParent {
            trace_id: [0; 16],
            span_id: [0; 8],
            flags: 0,
        };
        hex_into(t, &mut tp.trace_id)?;
        hex_into(p, &mut tp.span_id)?;
        let mut f = [0u8; 1];
        hex_into(fl, &mut f)?;
        tp.flags = f[0];
        if tp.trace_id == [0; 16] || tp.span_id == [0; 8] {
            return Err(BadTraceParent);
        }
        Ok(tp)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_round_trips_and_rejects_garbage() {
        let s = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let tp: TraceParent = s.parse().expect("valid");
        assert_eq!(tp.to_string(), s);
        for bad in [
            "",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x",
            "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
        ] {
            assert!(bad.parse::<TraceParent>().is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn without_export_nothing_is_traced() {
        let span = tracing::info_span!("x");
        assert_eq!(TraceParent::of(&span), None);
    }

    #[test]
    fn a_child_adopts_its_remote_parents_trace() {
        // A subscriber with the OpenTelemetry layer over an in-memory-free SDK provider
        // (no exporter): spans get real ids, nothing leaves the process.
        let provider = SdkTracerProvider::builder().build();
        let subscriber = tracing_subscriber::registry().with(layer(&provider, "test"));
        tracing::subscriber::with_default(subscriber, || {
            let parent = tracing::info_span!("parent");
            let tp = TraceParent::of(&parent).expect("traced");
            let child = tracing::info_span!("child");
            tp.adopt(&child);
            let got = TraceParent::of(&child).expect("traced");
            assert_eq!(got.trace_id, tp.trace_id, "same trace");
            assert_ne!(got.span_id, tp.span_id, "its own span");
        });
    }
}
