//! The listener loop: takes each request from tiny_http, answers cheap ones on a small fast lane,
//! refuses work when the pool is full, and hands the rest to a worker.

use crate::api_error::ApiError;
use crate::live::Shared;
use crate::proxy::{self, Limits, Summary};
use crate::route::{self, Route};
use crate::{admin, reply};
use std::net::TcpListener;
use std::sync::Arc;
use std::time::Instant;
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
}

/// Serves forever on an already-bound listener.
pub fn serve(listener: TcpListener, settings: Settings, shared: Arc<Shared>) -> Result<(), String> {
    let server = tiny_http::Server::from_listener(listener, None)
        .map_err(|e| format!("cannot start the HTTP server: {}", e))?;
    let workers = threadpool::Builder::new()
        .num_threads(settings.workers.max(1))
        .thread_name("worker".into())
        .build();
    // Cheap answers (health, 503s) never wait behind streams; a few threads suffice.
    let fast = ThreadPool::with_name("fast".into(), 4);
    let limits = Arc::new(Limits {
        max_body: settings.max_body,
    });
    loop {
        let request = match server.recv() {
            Ok(r) => r,
            Err(e) => {
                log::error!("listener failed: {}", e);
                return Err(format!("listener failed: {}", e));
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
                        reply::json(request, 200, admin::health(&live), &[]);
                        simple(200)
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
        let limits = Arc::clone(&limits);
        workers.execute(move || {
            let method = request.method().to_string();
            let summary = handle(request, &target, &route, &shared, &limits, started);
            log_line(&method, &target.path, &summary, started);
        });
    }
}

fn simple(status: u16) -> Summary {
    Summary {
        status,
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
    limits: &Limits,
    started: Instant,
) -> Summary {
    let live = shared.snapshot();
    let method = request.method().clone();
    let get = matches!(method, Method::Get | Method::Head);
    match route {
        Route::Models if get => {
            reply::json(request, 200, admin::models(&live), &[]);
            simple(200)
        }
        Route::Model(id) if get => match admin::model(&live, id) {
            Ok(body) => {
                reply::json(request, 200, body, &[]);
                simple(200)
            }
            Err(e) => local_error(request, e),
        },
        Route::Debug if get => {
            reply::json(request, 200, admin::debug(shared, &live), &[]);
            simple(200)
        }
        Route::Reload if method == Method::Post => {
            match admin::reload(shared, target.query.as_deref()) {
                Ok(body) => {
                    reply::json(request, 200, body, &[]);
                    simple(200)
                }
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
            proxy::handle(request, target, route, &live, limits, started)
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
