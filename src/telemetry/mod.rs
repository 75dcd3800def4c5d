//! OpenTelemetry traces: spans kept in memory and exported over OTLP/HTTP JSON by a thread of
//! their own, so the request path never does more than a queue push.

use std::sync::atomic::{AtomicU64, Ordering};

/// Spans dropped since start: queue full, or an export that failed for good.
static DROPPED: AtomicU64 = AtomicU64::new(0);

/// Counts `n` spans that will never reach the collector.
#[allow(dead_code)] // the exporter's, which comes next
pub fn count_dropped(n: u64) {
    DROPPED.fetch_add(n, Ordering::Relaxed);
}

/// Lines for /metrics. Always present, so dashboards and alerts see 0 rather than no data.
pub fn metrics_text() -> String {
    format!(
        "# HELP modelmux_trace_spans_dropped_total Trace spans dropped: the export queue was full, or the OTLP collector was down, slow or refusing.\n# TYPE modelmux_trace_spans_dropped_total counter\nmodelmux_trace_spans_dropped_total {}\n",
        DROPPED.load(Ordering::Relaxed)
    )
}
