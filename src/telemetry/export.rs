//! The batch exporter: a bounded queue the request path pushes to (never waiting), and one
//! thread that POSTs batches to the collector. When the collector is down or slow, spans are
//! dropped and counted, never queued without bound.

use super::config::TraceConfig;
use super::span::{export_body, Span};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::time::{Duration, Instant};

enum Msg {
    Span(Box<Span>),
    /// Export everything queued, then answer.
    Flush(SyncSender<()>),
}

pub struct Exporter {
    tx: SyncSender<Msg>,
    timeout: Duration,
}

/// Retries after a "try later" answer, each within the per-POST timeout.
const MAX_RETRIES: u32 = 2;
/// The longest Retry-After honoured; a collector asking for more loses the batch.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(30);
/// A warning about lost spans at most this often.
const WARN_EVERY: Duration = Duration::from_secs(60);

impl Exporter {
    pub fn start(config: TraceConfig) -> Result<Exporter, String> {
        let (tx, rx) = sync_channel(config.max_queue);
        let timeout = config.timeout;
        std::thread::Builder::new()
            .name("otlp-export".into())
            .spawn(move || Worker::new(config).run(rx))
            .map_err(|e| format!("cannot start the trace exporter: {}", e))?;
        Ok(Exporter { tx, timeout })
    }

    /// Queues a span; drops it (counted) when the queue is full.
    pub fn push(&self, span: Span) {
        match self.tx.try_send(Msg::Span(Box::new(span))) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                super::count_dropped(1)
            }
        }
    }

    /// Exports what is queued, waiting at most about two POST timeouts.
    pub fn flush(&self) {
        let (ack, done) = sync_channel(1);
        let deadline = Instant::now() + self.timeout * 2 + Duration::from_secs(1);
        // The queue may be full: keep offering until the deadline.
        let mut msg = Msg::Flush(ack);
        loop {
            match self.tx.try_send(msg) {
                Ok(()) => break,
                Err(TrySendError::Full(m)) if Instant::now() < deadline => {
                    msg = m;
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(_) => return,
            }
        }
        let _ = done.recv_timeout(deadline.saturating_duration_since(Instant::now()));
    }
}

struct Worker {
    config: TraceConfig,
    agent: ureq::Agent,
    last_warning: Option<Instant>,
}

impl Worker {
    fn new(config: TraceConfig) -> Worker {
        let agent = ureq::AgentBuilder::new()
            .timeout(config.timeout)
            .max_idle_connections_per_host(2)
            .build();
        Worker {
            config,
            agent,
            last_warning: None,
        }
    }

    fn run(mut self, rx: Receiver<Msg>) {
        let mut batch: Vec<Span> = Vec::new();
        let mut due = Instant::now() + self.config.delay;
        loop {
            match rx.recv_timeout(due.saturating_duration_since(Instant::now())) {
                Ok(Msg::Span(s)) => {
                    batch.push(*s);
                    if batch.len() >= self.config.max_batch {
                        self.export(&mut batch);
                        due = Instant::now() + self.config.delay;
                    }
                }
                Ok(Msg::Flush(ack)) => {
                    while let Ok(m) = rx.try_recv() {
                        match m {
                            Msg::Span(s) => batch.push(*s),
                            Msg::Flush(other) => drop(other.try_send(())),
                        }
                        if batch.len() >= self.config.max_batch {
                            self.export(&mut batch);
                        }
                    }
                    self.export(&mut batch);
                    let _ = ack.try_send(());
                }
                Err(RecvTimeoutError::Timeout) => {
                    self.export(&mut batch);
                    due = Instant::now() + self.config.delay;
                }
                Err(RecvTimeoutError::Disconnected) => {
                    self.export(&mut batch);
                    return;
                }
            }
        }
    }

    /// POSTs the batch (emptying it); retries only on 429/502/503/504, honouring Retry-After.
    fn export(&mut self, batch: &mut Vec<Span>) {
        if batch.is_empty() {
            return;
        }
        let body = export_body(&self.config.service_name, &self.config.resource, batch);
        let n = batch.len() as u64;
        batch.clear();
        let mut attempt = 0;
        let failure = loop {
            let mut req = self
                .agent
                .post(&self.config.endpoint)
                .set("Content-Type", "application/json");
            for (k, v) in &self.config.headers {
                req = req.set(k, v);
            }
            let wait = match req.send_bytes(&body) {
                Ok(_) => return,
                Err(ureq::Error::Status(code, r)) if matches!(code, 429 | 502 | 503 | 504) => {
                    let after = r
                        .header("retry-after")
                        .and_then(|v| v.trim().parse::<u64>().ok())
                        .map(Duration::from_secs);
                    match after {
                        Some(a) if a > MAX_RETRY_AFTER => {
                            break format!("status {} with Retry-After {}s", code, a.as_secs())
                        }
                        Some(a) => a,
                        None => Duration::from_secs(1 << attempt),
                    }
                }
                Err(ureq::Error::Status(code, _)) => break format!("status {}", code),
                Err(ureq::Error::Transport(t)) => break format!("{}", t.kind()),
            };
            if attempt >= MAX_RETRIES {
                break "the collector kept asking to retry later".to_string();
            }
            attempt += 1;
            std::thread::sleep(wait);
        };
        super::count_dropped(n);
        let now = Instant::now();
        if self
            .last_warning
            .is_none_or(|t| now.duration_since(t) >= WARN_EVERY)
        {
            self.last_warning = Some(now);
            log::warn!(
                "traces: {} spans dropped, export to {} failed: {} (counted in modelmux_trace_spans_dropped_total; this warning repeats at most once a minute)",
                n,
                crate::redact::host(&self.config.endpoint),
                failure
            );
        }
    }
}
