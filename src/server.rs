//! The listener loop: takes each request from tiny_http, answers cheap ones on a small fast lane,
//! refuses work when the pool is full, and hands the rest to a worker.

use crate::access::{self, Caller};
use crate::api_error::ApiError;
use crate::lifecycle::Stopper;
use crate::live::Shared;
use crate::proxy::{self, Limits, Summary};
use crate::route::{self, Route};
use crate::{admin, reply};
use std::net::TcpListener;
use std::sync::Arc;
use std::time::{Duration, Instant};
use threadpool::ThreadPool;
use tiny_http::{Method, Request};

/// Process settings from flags and environment.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Worker threads (each serves one request at a time, streams included).
    pub workers: usize,
    /// Requests allowed to wait for a worker before new ones get 503.
    pub queue: usize,
    /// Largest request body accepted, in bytes.
    pub max_body: usize,
    /// Key for `/debug` and `/reload`.
    pub admin_key: Option<String>,
    /// How long in-flight requests may run after a stop signal.
    pub drain: Duration,
}

/// Serves until the stopper fires, then drains in-flight requests up to `settings.drain`.
pub fn serve(
    listener: TcpListener,
    settings: Settings,
    shared: Arc<Shared>,
    stopper: Arc<Stopper>,
) -> Result<(), String> {
    let server = Arc::new(
        tiny_http::Server::from_listener(listener, None)
            .map_err(|e| format!("cannot start the HTTP server: {}", e))?,
    );
    stopper.attach(Arc::clone(&server));
    let workers = threadpool::Builder::new()
        .num_threads(settings.workers.max(1))
        .thread_name("worker".into())
        .build();
    // Cheap answers (health, 503s) never wait behind streams; a few threads suffice.
    let fast = ThreadPool::with_name("fast".into(), 4);
    let settings = Arc::new(settings);
    while !stopper.stopping() {
        let request = match server.recv() {
            Ok(r) => r,
            Err(_) if stopper.stopping() => break,
            Err(e) => {
                // The patched tiny_http keeps accepting after accept() errors, so this is rare;
                // back off instead of spinning.
                log::error!("listener error: {}", e);
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
        };
        let started = Instant::now();
        let target = route::parse_target(request.url());
        let route = route::route(&target.path);
        if route == Route::Health {
            let shared = Arc::clone(&shared);
            fast.execute(move || {
                let live = shared.snapshot();
                let summary = match *request.method() {
                    Method::Get | Method::Head => {
                        let body = admin::health(&live);
                        let len = body.len() as u64;
                        reply::json(request, 200, body, &[]);
                        simple(200, len)
                    }
                    _ => local_error(
                        request,
                        ApiError::method_not_allowed("POST", "/health", "GET"),
                    ),
                };
                log_line("GET", &target.path, &summary, started);
            });
            continue;
        }
        if workers.active_count() >= settings.workers && workers.queued_count() >= settings.queue {
            let method = request.method().to_string();
            fast.execute(move || {
                let summary = local_error(request, ApiError::overloaded(1));
                log_line(&method, &target.path, &summary, started);
            });
            continue;
        }
        let shared = Arc::clone(&shared);
        let settings = Arc::clone(&settings);
        workers.execute(move || {
            let method = request.method().to_string();
            let summary = handle(request, &target, &route, &shared, &settings, started);
            log_line(&method, &target.path, &summary, started);
        });
    }
    // Stop accepting: dropping the server closes the listener.
    drop(server);
    let deadline = Instant::now() + settings.drain;
    loop {
        let busy = workers.active_count() + workers.queued_count();
        if busy == 0 {
            log::info!("drained; exiting");
            return Ok(());
        }
        if Instant::now() >= deadline {
            log::warn!(
                "drain bound reached with {} requests still running; exiting",
                busy
            );
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
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

fn local_error(request: Request, e: ApiError) -> Summary {
    let status = e.status;
    reply::error(request, &e);
    Summary {
        status,
        outcome: "error",
        ..Summary::default()
    }
}

fn handle(
    request: Request,
    target: &route::Target,
    route: &Route,
    shared: &Shared,
    settings: &Settings,
    started: Instant,
) -> Summary {
    let live = shared.snapshot();
    let method = request.method().clone();
    let get = matches!(method, Method::Get | Method::Head);
    let token = access::bearer(request.headers()).map(str::to_string);
    if matches!(route, Route::Debug | Route::Reload) {
        let keys_set = !live.config.proxy_keys.is_empty();
        if let Err(e) = access::admin(settings.admin_key.as_deref(), keys_set, token.as_deref()) {
            return local_error(request, e);
        }
    }
    let caller = match route {
        Route::Debug | Route::Reload => Caller::Open,
        _ => match access::authenticate(&live.config.proxy_keys, token.as_deref()) {
            Ok(c) => c,
            Err(e) => return local_error(request, e),
        },
    };
    let ok = |request: Request, body: Vec<u8>| {
        let len = body.len() as u64;
        reply::json(request, 200, body, &[]);
        simple(200, len)
    };
    match route {
        Route::Models if get => ok(request, admin::models(&live, &caller)),
        Route::Model(id) if get => match admin::model(&live, id, &caller) {
            Ok(body) => ok(request, body),
            Err(e) => local_error(request, e),
        },
        Route::Debug if get => ok(request, admin::debug(shared, &live)),
        Route::Reload if method == Method::Post => {
            match admin::reload(shared, target.query.as_deref()) {
                Ok(body) => ok(request, body),
                Err(e) => local_error(request, e),
            }
        }
        Route::Models | Route::Model(_) | Route::Debug => {
            let m = method.to_string();
            local_error(
                request,
                ApiError::method_not_allowed(&m, &target.path, "GET"),
            )
        }
        Route::Reload => {
            let m = method.to_string();
            local_error(
                request,
                ApiError::method_not_allowed(&m, &target.path, "POST"),
            )
        }
        Route::Health | Route::ChatCompletions | Route::Passthrough => {
            let limits = Limits {
                max_body: settings.max_body,
            };
            proxy::handle(request, target, route, &live, &caller, &limits, started)
        }
    }
}

/// One line per request; never a key, never prompt or completion text.
fn log_line(method: &str, path: &str, s: &Summary, started: Instant) {
    log::info!(
        "{} {} model={} backend={} status={} duration_ms={} ttfb_ms={} bytes={} outcome={}",
        crate::api_error::clip(method, 16),
        crate::api_error::clip(path, 200),
        s.model
            .as_deref()
            .map(|m| crate::api_error::clip(m, 120))
            .unwrap_or_else(|| "-".into()),
        s.backend.as_deref().unwrap_or("-"),
        s.status,
        started.elapsed().as_millis(),
        s.ttfb
            .map(|t| t.as_millis().to_string())
            .unwrap_or_else(|| "-".into()),
        s.bytes,
        s.outcome,
    );
}
