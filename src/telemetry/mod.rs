//! OpenTelemetry traces: one SERVER span per proxied request and one CLIENT span per backend
//! attempt, with the GenAI semantic conventions, exported over OTLP/HTTP JSON by a thread of
//! their own (`export`), so the request path never does more than a queue push. Configured by
//! the standard `OTEL_*` variables (`config`); off when no endpoint is set.
//!
//! The request's SERVER span lives in a thread local: a request is served start to end on one
//! worker thread, and the proxy code between takes no extra parameter for it.

mod config;
mod context;
mod export;
mod response;
mod span;

use context::{format_traceparent, parse_traceparent, random_id, valid_tracestate, SpanContext};
use span::{Kind, Span, Value};
use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// Spans dropped since start: queue full, or an export that failed for good.
static DROPPED: AtomicU64 = AtomicU64::new(0);

struct Tracer {
    config: config::TraceConfig,
    exporter: export::Exporter,
}

static TRACER: OnceLock<Tracer> = OnceLock::new();

thread_local! {
    static CURRENT: RefCell<Option<Open>> = const { RefCell::new(None) };
    /// The answer of this thread's recording CLIENT span, read as it is relayed.
    static RESPONSE: RefCell<Option<response::ResponseTap>> = const { RefCell::new(None) };
}

/// Every piece of a relayed backend answer passes here; read only while a recording CLIENT
/// span waits for it.
pub fn response_bytes(data: &[u8]) {
    if TRACER.get().is_none() {
        return;
    }
    RESPONSE.with(|r| {
        if let Some(t) = r.borrow_mut().as_mut() {
            t.feed(data);
        }
    });
}

/// A span being recorded (or, sampled out, only carried for propagation).
struct Open {
    span: Span,
    recording: bool,
    started: Instant,
    /// The caller's `tracestate`, forwarded with our `traceparent`.
    tracestate: Option<String>,
}

impl Open {
    fn new(name: String, kind: Kind, ctx: SpanContext, parent: Option<[u8; 8]>) -> Open {
        Open {
            span: Span {
                ctx,
                parent,
                name,
                kind,
                start_ns: now_ns(),
                end_ns: 0,
                attrs: Vec::new(),
                error: None,
            },
            recording: ctx.sampled,
            started: Instant::now(),
            tracestate: None,
        }
    }

    fn end(mut self, tracer: &Tracer) {
        if self.recording {
            self.span.end_ns = self.span.start_ns + self.started.elapsed().as_nanos() as u64;
            tracer.exporter.push(self.span);
        }
    }
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// Reads the `OTEL_*` variables and starts the exporter when an endpoint is set. Problems are
/// warnings: traces never stop the gateway.
pub fn init() {
    let (config, warnings) = config::from_env(&|k| std::env::var(k).ok());
    for w in warnings {
        log::warn!("{}", w);
    }
    let Some(config) = config else {
        return;
    };
    match export::Exporter::start(config.clone()) {
        Ok(exporter) => {
            log::info!(
                "traces: exporting OTLP/HTTP JSON to {} as service {}",
                crate::redact::host(&config.endpoint),
                config.service_name
            );
            let _ = TRACER.set(Tracer { config, exporter });
        }
        Err(e) => log::warn!("traces: {}; tracing is off", e),
    }
}

/// Exports the spans still queued (after the drain, before exit).
pub fn shutdown() {
    if let Some(t) = TRACER.get() {
        t.exporter.flush();
    }
}

/// Counts `n` spans that will never reach the collector.
fn count_dropped(n: u64) {
    DROPPED.fetch_add(n, Ordering::Relaxed);
}

/// Lines for /metrics. Always present, so dashboards and alerts see 0 rather than no data.
pub fn metrics_text() -> String {
    format!(
        "# HELP modelmux_trace_spans_dropped_total Trace spans dropped: the export queue was full, or the OTLP collector was down, slow or refusing.\n# TYPE modelmux_trace_spans_dropped_total counter\nmodelmux_trace_spans_dropped_total {}\n",
        DROPPED.load(Ordering::Relaxed)
    )
}

fn header<'a>(headers: &'a tiny_http::HeaderList, name: &str) -> Option<&'a str> {
    headers.get(name)
}

/// Opens the SERVER span of a proxied request: continues the caller's trace when its
/// `traceparent` is valid, else starts one.
pub fn server_begin(method: &str, path: &str, request_id: &str, headers: &tiny_http::HeaderList) {
    let Some(tracer) = TRACER.get() else {
        return;
    };
    let incoming = header(headers, "traceparent").and_then(parse_traceparent);
    let trace_id = incoming.map_or_else(random_id::<16>, |c| c.trace_id);
    let sampled = tracer
        .config
        .sampler
        .sample(&trace_id, incoming.map(|c| c.sampled));
    let ctx = SpanContext {
        trace_id,
        span_id: random_id::<8>(),
        sampled,
    };
    let route = format!("/v1{}", path);
    let mut open = Open::new(
        format!("{} {}", method, route),
        Kind::Server,
        ctx,
        incoming.map(|c| c.span_id),
    );
    open.tracestate = incoming
        .and(header(headers, "tracestate"))
        .filter(|s| valid_tracestate(s))
        .map(str::to_string);
    if open.recording {
        let s = &mut open.span;
        s.set("http.request.method", method);
        s.set("http.route", route.as_str());
        s.set("url.path", route);
        s.set("modelmux.request_id", request_id);
        let conversation = header(headers, "x-openwebui-chat-id")
            .or_else(|| header(headers, "x-claude-code-session-id"))
            .filter(|c| !c.is_empty());
        if let Some(c) = conversation {
            s.set(
                "gen_ai.conversation.id",
                crate::http::api_error::clip(c, 200),
            );
        }
    }
    CURRENT.with(|c| *c.borrow_mut() = Some(open));
}

/// Sets an attribute on the current SERVER span.
fn server_set(key: &'static str, v: impl Into<Value>) {
    CURRENT.with(|c| {
        if let Some(o) = c.borrow_mut().as_mut().filter(|o| o.recording) {
            o.span.set(key, v);
        }
    });
}

/// The admitted request's user (only with `CM_OPEN_WEBUI_PROXY_TRACE_USERS`: personal data).
pub fn server_admitted(user: &str) {
    if TRACER.get().is_some_and(|t| t.config.users) {
        server_set("user.id", user);
    }
    server_set("modelmux.quota.decision", "admitted");
}

/// How long the request waited for a backend below its cap.
pub fn server_queue_wait(waited: std::time::Duration) {
    if TRACER.get().is_some() {
        server_set("modelmux.queue_wait_seconds", waited.as_secs_f64());
    }
}

/// What the request cost (micro-units of `currency`), when its backend has prices: the same
/// text as the ledger's `cost`, so a trace and a ledger line can be compared exactly.
pub fn server_cost(micros: u64, currency: &str) {
    if TRACER.get().is_some() {
        server_set("modelmux.cost", crate::money::format(micros));
        server_set("modelmux.cost.currency", currency.to_string());
    }
}

/// Closes the SERVER span of this thread's request.
pub fn server_end(status: u16, model: Option<&str>, outcome: &str, refused: Option<&str>) {
    let Some(tracer) = TRACER.get() else {
        return;
    };
    let Some(mut open) = CURRENT.with(|c| c.borrow_mut().take()) else {
        return;
    };
    if open.recording {
        let s = &mut open.span;
        s.set("http.response.status_code", u64::from(status));
        if let Some(m) = model {
            s.set("modelmux.model", m);
        }
        s.set("modelmux.outcome", outcome);
        if let Some(code) = refused {
            s.set("modelmux.refusal.code", code);
            if outcome == "refused" && status == 429 {
                s.set("modelmux.quota.decision", "refused");
            }
        }
        if status >= 500 {
            s.set("error.type", status.to_string());
            s.error = Some(format!("status {}", status));
        }
    }
    open.end(tracer);
}

/// A backend attempt's CLIENT span; inert when tracing is off.
pub struct Client(Option<Open>);

impl Client {
    /// No span: an answer whose attempt's span has already ended (a failure relayed as it is).
    pub fn none() -> Client {
        Client(None)
    }
}

/// The request parameters the CLIENT span records, when the body names them.
pub struct RequestParams {
    pub stream: bool,
    pub max_tokens: Option<u64>,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
}

/// Request details the CLIENT span records.
pub struct Attempt<'a> {
    pub method: &'a str,
    pub path: &'a str,
    /// The backend's model name.
    pub model: &'a str,
    pub provider: &'a str,
    pub url: &'a str,
    /// Reads the client's request parameters from its JSON body: called only when the span is
    /// recorded.
    pub body: Option<&'a dyn Fn() -> RequestParams>,
}

/// Opens a CLIENT span under the current SERVER span.
pub fn client_begin(a: &Attempt) -> Client {
    if TRACER.get().is_none() {
        return Client(None);
    }
    let parent = CURRENT.with(|c| {
        c.borrow()
            .as_ref()
            .map(|o| (o.span.ctx, o.tracestate.clone()))
    });
    let Some((server, tracestate)) = parent else {
        return Client(None);
    };
    let operation = match a.path {
        "/chat/completions" | "/responses" => Some("chat"),
        "/completions" => Some("text_completion"),
        "/embeddings" => Some("embeddings"),
        _ => None,
    };
    let name = match operation {
        Some(op) => format!("{} {}", op, a.model),
        None => format!("{} /v1{}", a.method, a.path),
    };
    let ctx = SpanContext {
        span_id: random_id::<8>(),
        ..server
    };
    let mut open = Open::new(name, Kind::Client, ctx, Some(server.span_id));
    open.tracestate = tracestate;
    if open.recording {
        let s = &mut open.span;
        if let Some(op) = operation {
            s.set("gen_ai.operation.name", op);
        }
        s.set("gen_ai.provider.name", a.provider);
        s.set("gen_ai.request.model", a.model);
        if let Some(read) = a.body {
            let j = read();
            s.set("gen_ai.request.stream", j.stream);
            if let Some(n) = j.max_tokens {
                s.set("gen_ai.request.max_tokens", n);
            }
            if let Some(t) = j.temperature {
                s.set("gen_ai.request.temperature", t);
            }
            if let Some(p) = j.top_p {
                s.set("gen_ai.request.top_p", p);
            }
        }
        s.set("http.request.method", a.method);
        let (host, port) = address(a.url);
        s.set("server.address", host);
        if let Some(p) = port {
            s.set("server.port", u64::from(p));
        }
        RESPONSE.with(|r| *r.borrow_mut() = Some(response::ResponseTap::default()));
    }
    Client(Some(open))
}

/// Host and port of a backend URL, the port from the scheme when the URL names none.
fn address(url: &str) -> (String, Option<u16>) {
    let authority = crate::redact::host(url);
    let default = if url.starts_with("https://") { 443 } else { 80 };
    // `[::1]:8000`, `host:8000`, `host`.
    let (host, port) = match authority.rfind(':') {
        Some(i) if !authority[i..].contains(']') => {
            (&authority[..i], authority[i + 1..].parse().ok())
        }
        _ => (authority, Some(default)),
    };
    (host.trim_matches(['[', ']']).to_string(), port)
}

impl Client {
    /// Sets the backend's `traceparent` (this span as the parent) and the caller's
    /// `tracestate`; a client's own, malformed or not, is never passed on while tracing is on.
    pub fn inject(&self, headers: &mut Vec<(String, String)>) {
        if TRACER.get().is_none() {
            return;
        }
        headers.retain(|(n, _)| {
            !n.eq_ignore_ascii_case("traceparent") && !n.eq_ignore_ascii_case("tracestate")
        });
        if let Some(o) = &self.0 {
            headers.push(("traceparent".into(), format_traceparent(&o.span.ctx)));
            if let Some(ts) = &o.tracestate {
                headers.push(("tracestate".into(), ts.clone()));
            }
        }
    }

    /// Ends a failed attempt (no connection, a timeout, a 429 or 5xx that fails over).
    pub fn fail(self, error_type: &str, status: Option<u16>) {
        let (Some(tracer), Some(mut open)) = (TRACER.get(), self.0) else {
            return;
        };
        RESPONSE.with(|r| r.borrow_mut().take());
        if let Some(st) = status {
            open.span.set("http.response.status_code", u64::from(st));
        }
        open.span.set("error.type", error_type);
        open.span.error = Some(error_type.to_string());
        open.end(tracer);
    }

    /// Ends the attempt whose answer was relayed. `usage` is the backend's own
    /// `[input, output, cache read, reasoning]`; `first_byte` when the first byte went out.
    pub fn finish(
        self,
        status: u16,
        outcome: &str,
        usage: Option<[u64; 4]>,
        first_byte: Option<Instant>,
    ) {
        let (Some(tracer), Some(mut open)) = (TRACER.get(), self.0) else {
            return;
        };
        let s = &mut open.span;
        s.set("http.response.status_code", u64::from(status));
        if let Some(r) = RESPONSE.with(|r| r.borrow_mut().take()) {
            let r = r.finish();
            if let Some(id) = r.id {
                s.set("gen_ai.response.id", id);
            }
            if let Some(m) = r.model {
                s.set("gen_ai.response.model", m);
            }
            if !r.finish_reasons.is_empty() {
                s.set(
                    "gen_ai.response.finish_reasons",
                    Value::Strs(r.finish_reasons),
                );
            }
        }
        if let Some([input, output, cached, reasoning]) = usage {
            s.set("gen_ai.usage.input_tokens", input);
            s.set("gen_ai.usage.output_tokens", output);
            s.set("gen_ai.usage.cache_read.input_tokens", cached);
            s.set("gen_ai.usage.reasoning.output_tokens", reasoning);
        }
        if let Some(t) = first_byte {
            let ttfc = t.saturating_duration_since(open.started);
            s.set("modelmux.time_to_first_chunk_seconds", ttfc.as_secs_f64());
        }
        let error = if status >= 400 {
            Some(status.to_string())
        } else if outcome == "upstream_failed" {
            Some("mid_stream".to_string())
        } else {
            None
        };
        if let Some(e) = error {
            s.set("error.type", e.as_str());
            s.error = Some(e);
        }
        open.end(tracer);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        assert_eq!(
            address("http://gpu-a:8000/v1"),
            ("gpu-a".into(), Some(8000))
        );
        assert_eq!(
            address("https://api.openai.com"),
            ("api.openai.com".into(), Some(443))
        );
        assert_eq!(address("http://[::1]:9000"), ("::1".into(), Some(9000)));
        assert_eq!(address("http://[::1]/v1"), ("::1".into(), Some(80)));
    }
}
