//! Logs through `tracing` (`RUST_LOG` filters, default `info`), and OpenTelemetry traces
//! exported over OTLP when `OTEL_EXPORTER_OTLP_ENDPOINT` is set (see `weft-telemetry`).

use crate::config::LogFormat;

pub fn init(format: LogFormat) -> weft_telemetry::Guard {
    weft_telemetry::init(
        "control-api",
        weft_telemetry::Logs {
            json: matches!(format, LogFormat::Json),
            stderr: false,
            default_filter: "info",
        },
    )
}
