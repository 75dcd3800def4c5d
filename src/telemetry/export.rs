//! The batch exporter: a bounded queue the request path pushes to (never waiting), and one
//! thread that POSTs batches to the collector. When the collector is down or slow, spans are
//! dropped and counted, never queued without bound.

use super::config::TraceConfig;
use super::span::{export_body, Span};
use std::sync::mpsc::{sync_channel, SyncSender};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// The spans waiting for export, and flushes waiting for them to go out.
#[derive(Default)]
struct Queue {
    spans: Vec<Span>,
    flushes: Vec<SyncSender<()>>,
}

struct Shared {
    queue: Mutex<Queue>,
    /// Woken when a batch is full or a flush is asked, not on every span: a wake-up per span
    /// would cost the request path two context switches.
    ready: Condvar,
    max_queue: usize,
    max_batch: usize,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }
}

pub struct Exporter {
    shared: Arc<Shared>,
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
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue::default()),
            ready: Condvar::new(),
            max_queue: config.max_queue,
            max_batch: config.max_batch.max(1),
        });
        let timeout = config.timeout;
        let theirs = Arc::clone(&shared);
        std::thread::Builder::new()
            .name("otlp-export".into())
            .spawn(move || Worker::new(config).run(&theirs))
            .map_err(|e| format!("cannot start the trace exporter: {}", e))?;
        Ok(Exporter { shared, timeout })
    }

    /// Queues a span; drops it (counted) when the queue is full.
    pub fn push(&self, span: Span) {
        let mut q = self.shared.lock();
        if q.spans.len() >= self.shared.max_queue {
            drop(q);
            super::count_dropped(1);
            return;
        }
        q.spans.push(span);
        if q.spans.len() == self.shared.max_batch {
            self.shared.ready.notify_one();
        }
    }

    /// Exports what is queued, waiting at most about two POST timeouts.
    pub fn flush(&self) {
        let (ack, done) = sync_channel(1);
        self.shared.lock().flushes.push(ack);
        self.shared.ready.notify_one();
        let _ = done.recv_timeout(self.timeout * 2 + Duration::from_secs(1));
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

    /// Forever: a batch when one is full, when the delay has passed, or on a flush.
    fn run(mut self, shared: &Shared) {
        loop {
            let (mut batch, flushes) = {
                let mut q = shared.lock();
                let due = Instant::now() + self.config.delay;
                while q.spans.len() < shared.max_batch && q.flushes.is_empty() {
                    let left = due.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        break;
                    }
                    q = shared
                        .ready
                        .wait_timeout(q, left)
                        .unwrap_or_else(|p| p.into_inner())
                        .0;
                }
                let n = q.spans.len().min(shared.max_batch);
                let batch: Vec<Span> = q.spans.drain(..n).collect();
                // A flush is answered once everything queued before it has gone out.
                let flushes = if q.spans.is_empty() {
                    std::mem::take(&mut q.flushes)
                } else {
                    Vec::new()
                };
                (batch, flushes)
            };
            self.export(&mut batch);
            for f in flushes {
                let _ = f.try_send(());
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
