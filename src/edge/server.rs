//! The HTTP side: tiny_http reads each request on its connection thread and hands it to
//! `App::serve` right there. Cheap answers (health, metrics, refusals, 503s) are given at once;
//! everything else first takes one of `workers` slots, waiting in a bounded queue when all are
//! taken (503 when the queue is full too). Connection threads are tiny_http's elastic pool: a
//! few at start, one more whenever every thread is busy, idle ones exit after a few seconds.

use crate::backend::live::ConfigStore;
use crate::edge::admin;
use crate::http::access_log::{self, Entry};
use crate::http::api_error::ApiError;
use crate::http::reply;
use crate::http::route::{self, Route, Target};
use crate::lifecycle::Stopper;
use crate::metrics::{Metrics, RequestRecord};
use crate::policy::identity::auth::{self, Caller};
use crate::policy::Policy;
use crate::proxy::{self, Ctx, Summary};
use crate::telemetry;
use std::net::TcpListener;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tiny_http::{Method, Request};

/// Process settings from flags and environment.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Requests served at once (each holds its slot to the end, streams included).
    pub workers: usize,
    /// Requests allowed to wait for a slot before new ones get 503.
    pub queue: usize,
    /// Largest request body accepted, in bytes.
    pub max_body: usize,
    /// Key for `/debug` and `/reload`.
    pub admin_key: Option<String>,
    /// How long in-flight requests may run after a stop signal.
    pub drain: Duration,
}

/// What the access log needs about a request, kept apart from the request itself.
struct Meta<'a> {
    /// A clone of the request's (no allocation for the standard methods).
    method: Method,
    /// The normalized path, borrowed from the request's `Target`.
    path: &'a str,
    request_id: access_log::RequestId,
    started: Instant,
}

/// What the server shares with the rest of the process.
pub struct Parts {
    /// The config, reloaded by signals and the file watcher.
    pub shared: Arc<ConfigStore>,
    /// Identity, accounting and limits.
    pub policy: Arc<Policy>,
    /// Fires on SIGTERM/SIGINT.
    pub stopper: Arc<Stopper>,
}

/// Serves until the stopper fires, then drains in-flight requests up to `settings.drain`.
/// `ready` runs once the server accepts requests (the caller prints its listening line).
pub fn serve(
    listener: TcpListener,
    settings: Settings,
    parts: Parts,
    ready: &dyn Fn(),
) -> Result<(), String> {
    let Parts {
        shared,
        policy,
        stopper,
    } = parts;
    let policy_settings = &shared.snapshot().config.policy;
    if policy_settings.metrics_per_user
        && settings.admin_key.is_none()
        && policy_settings.metrics_key.is_none()
    {
        log::warn!(
            "metrics.perUser is on, but per-user series are served only to the admin key or \
             metrics.key and neither is set: /metrics leaves them out"
        );
    }
    let app = Arc::new(App {
        gate: Gate::new(settings.workers.max(1), settings.queue),
        settings,
        shared,
        metrics: Metrics::default(),
        policy,
        stopper: Arc::clone(&stopper),
        busy: AtomicUsize::new(0),
    });
    let handler = {
        let app = Arc::clone(&app);
        Arc::new(move |request: Request| app.serve(request))
    };
    let server = Arc::new(
        tiny_http::Server::from_listener_with_handler(listener, None, handler)
            .map_err(|e| format!("cannot start the HTTP server: {}", e))?,
    );
    stopper.attach(Arc::clone(&server));
    ready();
    stopper.wait();
    // The listener is closed (stop_accepting); requests still arriving on open keep-alive
    // connections get a 503 with `Connection: close` (see `App::serve`) while the running ones
    // finish.
    let deadline = Instant::now() + app.settings.drain;
    loop {
        let busy = app.busy.load(Ordering::SeqCst);
        if busy == 0 {
            access_log::flush();
            log::info!("drained; exiting");
            return Ok(());
        }
        if Instant::now() >= deadline {
            access_log::flush();
            log::warn!(
                "drain bound reached with {} requests still running; exiting",
                busy
            );
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Everything a connection thread serves requests with.
struct App {
    settings: Settings,
    shared: Arc<ConfigStore>,
    metrics: Metrics,
    policy: Arc<Policy>,
    stopper: Arc<Stopper>,
    /// Admission of the requests that need a worker slot.
    gate: Gate,
    /// Requests being handled right now, of any kind (the drain waits for 0).
    busy: AtomicUsize,
}

impl App {
    /// Answers one request on the connection thread that read it.
    fn serve(&self, request: Request) {
        self.busy.fetch_add(1, Ordering::SeqCst);
        let _busy = Leave(&self.busy);
        if self.stopper.stopping() {
            let id = access_log::request_id(None);
            let mut e = ApiError::overloaded(1);
            e.message = "modelmux is shutting down; retry on another instance.".into();
            e.close_connection = true;
            reply::error(request, &e, &id);
            return;
        }
        let metrics = &self.metrics;
        if let Some(refusal) = request.refusal() {
            // Refused by the HTTP layer while its head was read: answered at once, logged and
            // counted like any other, then the connection closes.
            let e = ApiError::refused(refusal);
            let path = if request.url().is_empty() {
                "-".to_string()
            } else {
                route::parse_target(request.url()).path
            };
            let meta = Meta {
                method: request.method().clone(),
                path: &path,
                request_id: access_log::request_id(None),
                started: Instant::now(),
            };
            let summary = local_error(request, e, &meta.request_id);
            finish(&meta, &summary, metrics);
            return;
        }
        let target = route::parse_target(request.url());
        let route = route::route(&target.path);
        let client_id = request.header_list().get("X-Request-Id");
        let meta = Meta {
            method: request.method().clone(),
            path: &target.path,
            request_id: access_log::request_id(client_id),
            started: Instant::now(),
        };
        if !route::is_safe_path(&target.path) {
            let e = ApiError::invalid_request(
                "The request path contains `.` or `..` segments or a backslash.",
            )
            .with_code("invalid_path");
            let summary = local_error(request, e, &meta.request_id);
            finish(&meta, &summary, metrics);
            return;
        }
        if matches!(route, Route::Health | Route::Metrics | Route::Hello) {
            let summary = fast_lane(request, &target, &route, &meta, self);
            finish(&meta, &summary, metrics);
            return;
        }
        let Some(_slot) = self.gate.enter() else {
            let summary = local_error(request, ApiError::overloaded(1), &meta.request_id);
            finish(&meta, &summary, metrics);
            return;
        };
        let _gauge = metrics.in_flight();
        let served = Served {
            shared: &self.shared,
            settings: &self.settings,
            metrics,
            policy: &self.policy,
        };
        let traced = matches!(route, Route::ChatCompletions | Route::Passthrough);
        if traced {
            telemetry::server_begin(
                meta.method.as_str(),
                meta.path,
                &meta.request_id,
                request.header_list(),
            );
        }
        // A panic is this request's alone: tiny_http answers the dropped request with a 500
        // and the connection thread goes on serving.
        let summary = catch_unwind(AssertUnwindSafe(|| {
            handle(request, &target, &route, &meta, &served)
        }))
        .unwrap_or_else(|_| {
            log::error!("request {} failed: the handler panicked", meta.request_id);
            Summary {
                status: 500,
                outcome: "error",
                ..Summary::default()
            }
        });
        if traced {
            let model = summary.model.as_deref().filter(|_| summary.routed);
            if let Some(c) = &summary.charge {
                telemetry::server_cost(c.micros, &c.currency);
            }
            telemetry::server_end(summary.status, model, summary.outcome, summary.refused);
        }
        finish(&meta, &summary, metrics);
    }
}

/// Decrements the busy count when a request is done, however it ends.
struct Leave<'a>(&'a AtomicUsize);

impl Drop for Leave<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// At most `cap` requests hold a slot; up to `queue` more wait for one; the rest are refused.
struct Gate {
    cap: usize,
    queue: usize,
    state: Mutex<GateState>,
    freed: Condvar,
}

#[derive(Default)]
struct GateState {
    active: usize,
    waiting: usize,
}

impl Gate {
    fn new(cap: usize, queue: usize) -> Gate {
        Gate {
            cap,
            queue,
            state: Mutex::new(GateState::default()),
            freed: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, GateState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A slot, after waiting in the queue if need be; `None` when the queue is full too.
    fn enter(&self) -> Option<Slot<'_>> {
        let mut s = self.lock();
        if s.active >= self.cap {
            if s.waiting >= self.queue {
                return None;
            }
            s.waiting += 1;
            while s.active >= self.cap {
                s = self.freed.wait(s).unwrap_or_else(|p| p.into_inner());
            }
            s.waiting -= 1;
        }
        s.active += 1;
        Some(Slot(self))
    }

    /// Requests waiting for a slot.
    fn waiting(&self) -> usize {
        self.lock().waiting
    }
}

/// A held slot; dropping it lets one waiting request in.
struct Slot<'a>(&'a Gate);

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        let mut s = self.0.lock();
        s.active -= 1;
        if s.waiting > 0 {
            self.0.freed.notify_one();
        }
    }
}

fn simple(status: u16, bytes: u64) -> Summary {
    Summary {
        status,
        bytes,
        outcome: "complete",
        ..Summary::default()
    }
}

fn local_error(request: Request, e: ApiError, request_id: &str) -> Summary {
    Summary {
        status: e.status,
        outcome: "error",
        refused: Some(e.code.unwrap_or(e.kind)),
        bytes: reply::error(request, &e, request_id),
        ..Summary::default()
    }
}

fn ok(request: Request, body: Vec<u8>, request_id: &str) -> Summary {
    let len = reply::json(request, 200, body, &[], request_id);
    simple(200, len)
}

/// `/health` and `/metrics`: no worker slot, no backend, no key (liveness probes and scrapers).
fn fast_lane(request: Request, target: &Target, route: &Route, meta: &Meta, app: &App) -> Summary {
    let (shared, metrics) = (&app.shared, &app.metrics);
    if !matches!(*request.method(), Method::Get | Method::Head) {
        return local_error(
            request,
            ApiError::method_not_allowed(meta.method.as_str(), &target.path, "GET"),
            &meta.request_id,
        );
    }
    let live = shared.snapshot();
    match route {
        Route::Metrics => {
            // Per-user series name people: only for the admin key or `metrics.key`. Anyone
            // else (a scraper with no key or another one) gets every other series.
            let policy = &live.config.policy;
            let token = auth::bearer(request.header_list());
            let personal = policy.metrics_per_user
                && auth::is_one_of(
                    &[
                        app.settings.admin_key.as_deref(),
                        policy.metrics_key.as_ref().map(|k| k.0.as_str()),
                    ],
                    token,
                );
            let mut text = metrics.render(app.gate.waiting(), personal);
            text.push_str(&admin::backend_metrics(&live));
            text.push_str(&app.policy.metrics_text());
            text.push_str(&telemetry::metrics_text());
            #[cfg(feature = "count-allocs")]
            text.push_str(&crate::alloc_count::metrics_text());
            let text = text.into_bytes();
            let len = text.len() as u64;
            let response = tiny_http::Response::from_data(text).with_header(
                tiny_http::Header::from_bytes(
                    &b"Content-Type"[..],
                    &b"text/plain; version=0.0.4"[..],
                )
                .unwrap_or_else(|_| {
                    tiny_http::Header::from_bytes(&b"X-Metrics"[..], &b"1"[..])
                        .expect("static header")
                }),
            );
            let _ = request.respond(response);
            simple(200, len)
        }
        // Nothing to say beyond "reachable": no key is asked, nothing is shown.
        Route::Hello => ok(request, b"{}".to_vec(), &meta.request_id),
        _ => {
            let backends = target
                .query
                .as_deref()
                .and_then(|q| crate::stream::body::query_param(q, "backends"))
                .map(|v| v != "0" && v != "false")
                .unwrap_or(false);
            ok(request, admin::health(&live, backends), &meta.request_id)
        }
    }
}

/// What a worker serves a request with.
struct Served<'a> {
    shared: &'a ConfigStore,
    settings: &'a Settings,
    metrics: &'a Metrics,
    policy: &'a Policy,
}

fn handle(request: Request, target: &Target, route: &Route, meta: &Meta, s: &Served) -> Summary {
    let Served {
        shared,
        settings,
        metrics,
        policy,
    } = *s;
    let live = shared.snapshot();
    let id = meta.request_id.as_str();
    let method = request.method().clone();
    let get = matches!(method, Method::Get | Method::Head);
    let token = auth::bearer(request.header_list()).map(str::to_string);
    // The Anthropic SDKs and Claude Code send `anthropic-version` on every request: they get
    // the model list in Anthropic's shape.
    let anthropic = request.header_list().get("anthropic-version").is_some();
    if matches!(route, Route::Debug | Route::Reload | Route::Usage) {
        let keys = &live.config.proxy_keys;
        let personal = matches!(route, Route::Usage);
        if let Err(e) = auth::admin(
            settings.admin_key.as_deref(),
            keys,
            token.as_deref(),
            personal,
        ) {
            return local_error(request, e, id);
        }
    }
    let caller = match route {
        Route::Debug | Route::Reload | Route::Usage => Caller::Open,
        _ => match auth::authenticate(&live.config.proxy_keys, token.as_deref()) {
            Ok(c) => c,
            Err(e) => return local_error(request, e, id),
        },
    };
    match route {
        Route::Models if get => ok(request, admin::models(&live, &caller, anthropic), id),
        Route::Model(model) if get => match admin::model(&live, model, &caller, anthropic) {
            Ok(body) => ok(request, body, id),
            Err(e) => local_error(request, e, id),
        },
        Route::Debug if get => ok(request, admin::debug(shared, &live), id),
        Route::Usage if get => match admin::usage(policy, &live, target.query.as_deref()) {
            Ok(body) => ok(request, body, id),
            Err(e) => local_error(request, e, id),
        },
        Route::Reload if method == Method::Post => {
            match admin::reload(shared, target.query.as_deref()) {
                Ok(body) => ok(request, body, id),
                Err(e) => local_error(request, e, id),
            }
        }
        Route::Models | Route::Model(_) | Route::Debug | Route::Usage => local_error(
            request,
            ApiError::method_not_allowed(meta.method.as_str(), &target.path, "GET"),
            id,
        ),
        Route::Reload => local_error(
            request,
            ApiError::method_not_allowed(meta.method.as_str(), &target.path, "POST"),
            id,
        ),
        Route::Health
        | Route::Metrics
        | Route::Hello
        | Route::ChatCompletions
        | Route::Passthrough => {
            let ctx = Ctx {
                live: &live,
                caller: &caller,
                max_body: settings.max_body,
                metrics,
                request_id: id,
                policy,
                started: meta.started,
            };
            proxy::handle(request, target, route, &ctx)
        }
    }
}

/// The access log line and the request's metrics.
fn finish(meta: &Meta, s: &Summary, metrics: &Metrics) {
    let duration = meta.started.elapsed();
    access_log::write(&Entry {
        request_id: &meta.request_id,
        method: meta.method.as_str(),
        path: meta.path,
        model: s.model.as_deref(),
        backend: s.backend.as_deref(),
        status: s.status,
        duration,
        ttfb: s.ttfb,
        bytes: s.bytes,
        // The backend's counts only: an estimate is in the ledger and the metrics, marked.
        tokens: s
            .usage
            .filter(|u| !u.estimated)
            .map(|u| (u.prompt, u.completion)),
        retries: s.retries,
        outcome: s.outcome,
        cost: s.charge.as_ref().map(|c| access_log::Cost {
            micros: c.micros,
            currency: &c.currency,
            estimated: c.estimated,
        }),
    });
    if let Some(code) = s.refused {
        metrics.refused(s.status, code);
    }
    // Only proxied requests count per model; probes and scrapes would drown the numbers.
    if let Some(model) = s.model.as_deref() {
        metrics.request(&RequestRecord {
            model: if s.routed { model } else { "unknown" },
            backend: s.backend.as_deref().unwrap_or("-"),
            status: s.status,
            duration,
            ttfb: s.ttfb,
            tokens: s.usage.map(|u| (u.prompt, u.completion, u.estimated)),
            cost: s.charge.as_ref().map(|c| (c.micros, c.currency.as_str())),
        });
    }
}
