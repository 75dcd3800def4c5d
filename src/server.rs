//! The listener loop: takes each request from tiny_http, answers cheap ones (health, metrics,
//! 503s) on a small fast lane, and hands the rest to a worker.

use crate::access_log::{self, Entry};
use crate::api_error::ApiError;
use crate::auth::{self, Caller};
use crate::lifecycle::Stopper;
use crate::live::ConfigStore;
use crate::metrics::{Metrics, RequestRecord};
use crate::policy::Policy;
use crate::proxy::{self, Ctx, Summary};
use crate::route::{self, Route, Target};
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

/// What the access log needs about a request, kept apart from the request itself.
struct Meta {
    method: String,
    path: String,
    request_id: String,
    started: Instant,
}

/// Serves until the stopper fires, then drains in-flight requests up to `settings.drain`.
pub fn serve(
    listener: TcpListener,
    settings: Settings,
    shared: Arc<ConfigStore>,
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
    // Cheap answers (health, metrics, 503s) never wait behind streams; a few threads suffice.
    let fast = ThreadPool::with_name("fast".into(), 4);
    let settings = Arc::new(settings);
    let metrics = Arc::new(Metrics::default());
    let policy = Arc::new(Policy::start(&shared.snapshot().config.policy)?);
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
        if let Some(refusal) = request.refusal() {
            // Refused by the HTTP layer while its head was read: answered on the fast lane,
            // logged and counted like any other, then the connection closes.
            let e = ApiError::refused(refusal);
            let meta = Meta {
                method: request.method().to_string(),
                path: if request.url().is_empty() {
                    "-".to_string()
                } else {
                    route::parse_target(request.url()).path
                },
                request_id: access_log::request_id(None),
                started: Instant::now(),
            };
            let metrics = Arc::clone(&metrics);
            fast.execute(move || {
                let summary = local_error(request, e, &meta.request_id);
                finish(&meta, &summary, &metrics);
            });
            continue;
        }
        let target = route::parse_target(request.url());
        let route = route::route(&target.path);
        let client_id = request
            .headers()
            .iter()
            .find(|h| h.field.equiv("X-Request-Id"))
            .map(|h| h.value.as_str());
        let meta = Meta {
            method: request.method().to_string(),
            path: target.path.clone(),
            request_id: access_log::request_id(client_id),
            started: Instant::now(),
        };
        if !route::is_safe_path(&target.path) {
            let metrics = Arc::clone(&metrics);
            fast.execute(move || {
                let e = ApiError::invalid_request(
                    "The request path contains `.` or `..` segments or a backslash.",
                )
                .with_code("invalid_path");
                let summary = local_error(request, e, &meta.request_id);
                finish(&meta, &summary, &metrics);
            });
            continue;
        }
        if matches!(route, Route::Health | Route::Metrics) {
            let (shared, metrics, workers, settings, policy) = (
                Arc::clone(&shared),
                Arc::clone(&metrics),
                workers.clone(),
                Arc::clone(&settings),
                Arc::clone(&policy),
            );
            fast.execute(move || {
                let served = Served {
                    shared: &shared,
                    settings: &settings,
                    metrics: &metrics,
                    policy: &policy,
                };
                let summary = fast_lane(request, &target, &route, &meta, &served, &workers);
                finish(&meta, &summary, &metrics);
            });
            continue;
        }
        if workers.active_count() >= settings.workers && workers.queued_count() >= settings.queue {
            let metrics = Arc::clone(&metrics);
            fast.execute(move || {
                let summary = local_error(request, ApiError::overloaded(1), &meta.request_id);
                finish(&meta, &summary, &metrics);
            });
            continue;
        }
        let (shared, settings, metrics, policy) = (
            Arc::clone(&shared),
            Arc::clone(&settings),
            Arc::clone(&metrics),
            Arc::clone(&policy),
        );
        workers.execute(move || {
            let _gauge = metrics.in_flight();
            let served = Served {
                shared: &shared,
                settings: &settings,
                metrics: &metrics,
                policy: &policy,
            };
            let summary = handle(request, &target, &route, &meta, &served);
            finish(&meta, &summary, &metrics);
        });
    }
    // The listener is closed (stop_accepting); requests still arriving on open keep-alive
    // connections get a 503 with `Connection: close` while the running ones finish.
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
        if let Ok(Some(request)) = server.recv_timeout(Duration::from_millis(20)) {
            let id = access_log::request_id(None);
            fast.execute(move || {
                let mut e = ApiError::overloaded(1);
                e.message = "modelmux is shutting down; retry on another instance.".into();
                e.close_connection = true;
                reply::error(request, &e, &id);
            });
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

/// `/health` and `/metrics`: no worker, no backend, no key (liveness probes and scrapers).
fn fast_lane(
    request: Request,
    target: &Target,
    route: &Route,
    meta: &Meta,
    served: &Served,
    workers: &ThreadPool,
) -> Summary {
    let (shared, metrics) = (served.shared, served.metrics);
    if !matches!(*request.method(), Method::Get | Method::Head) {
        return local_error(
            request,
            ApiError::method_not_allowed(&meta.method, &target.path, "GET"),
            &meta.request_id,
        );
    }
    let live = shared.snapshot();
    match route {
        Route::Metrics => {
            let mut text = metrics.render(workers.queued_count());
            text.push_str(&admin::backend_metrics(&live));
            text.push_str(&served.policy.metrics_text());
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
        _ => {
            let backends = target
                .query
                .as_deref()
                .and_then(|q| crate::body::query_param(q, "backends"))
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
    let token = auth::bearer(request.headers()).map(str::to_string);
    if matches!(route, Route::Debug | Route::Reload | Route::Usage) {
        let keys_set = !live.config.proxy_keys.is_empty();
        if let Err(e) = auth::admin(settings.admin_key.as_deref(), keys_set, token.as_deref()) {
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
        Route::Models if get => ok(request, admin::models(&live, &caller), id),
        Route::Model(model) if get => match admin::model(&live, model, &caller) {
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
            ApiError::method_not_allowed(&meta.method, &target.path, "GET"),
            id,
        ),
        Route::Reload => local_error(
            request,
            ApiError::method_not_allowed(&meta.method, &target.path, "POST"),
            id,
        ),
        Route::Health | Route::Metrics | Route::ChatCompletions | Route::Passthrough => {
            let ctx = Ctx {
                live: &live,
                caller: &caller,
                max_body: settings.max_body,
                metrics,
                request_id: id,
                policy,
            };
            proxy::handle(request, target, route, &ctx, meta.started)
        }
    }
}

/// The access log line and the request's metrics.
fn finish(meta: &Meta, s: &Summary, metrics: &Metrics) {
    let duration = meta.started.elapsed();
    access_log::write(&Entry {
        request_id: &meta.request_id,
        method: &meta.method,
        path: &meta.path,
        model: s.model.as_deref(),
        backend: s.backend.as_deref(),
        status: s.status,
        duration,
        ttfb: s.ttfb,
        bytes: s.bytes,
        tokens: s.usage.map(|u| (u.prompt, u.completion)),
        retries: s.retries,
        outcome: s.outcome,
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
            tokens: s
                .usage
                .filter(|u| !u.estimated)
                .map(|u| (u.prompt, u.completion)),
        });
    }
}
