//! `POST /chat/completions` and every passthrough path: read the body, find the model, then
//! try the model's backends (and its fallbacks) until one answers, and relay that answer.

use crate::access::Caller;
use crate::api_error::{clip, ApiError};
use crate::balance::Pick;
use crate::body::{self, JsonObject};
use crate::config::{Backend, Endpoint};
use crate::live::Live;
use crate::metrics::Metrics;
use crate::relay::{self, ClientSide, Head, Outcome};
use crate::route::{Route, Target};
use crate::upstream::{self, Outgoing};
use std::io::Read;
use std::time::{Duration, Instant};
use tiny_http::{Method, Request};

/// What the access log and metrics need to know about one request.
#[derive(Debug, Default)]
pub struct Summary {
    /// The public model id, when one was found.
    pub model: Option<String>,
    /// Backend host:port of the last attempt.
    pub backend: Option<String>,
    /// Status sent to the client.
    pub status: u16,
    /// Body bytes sent to the client.
    pub bytes: u64,
    /// Time to the first body byte sent to the client.
    pub ttfb: Option<Duration>,
    /// Tokens (prompt, completion) the backend reported.
    pub tokens: Option<(u64, u64)>,
    /// Retries on other backends or fallback models.
    pub retries: u32,
    /// `complete`, `client_gone`, `upstream_failed` or `error`.
    pub outcome: &'static str,
    /// The model is a configured one (only those become metric labels: a client must not be
    /// able to mint label values).
    pub routed: bool,
    /// The code of an error modelmux answered itself because of the request (not a backend
    /// failure), counted in `modelmux_refused_requests_total`.
    pub refused: Option<&'static str>,
}

/// Everything a proxied request needs from the server.
pub struct Ctx<'a> {
    /// The config this request runs on, start to end.
    pub live: &'a Live,
    /// Who is calling.
    pub caller: &'a Caller<'a>,
    /// Largest request body accepted, in bytes.
    pub max_body: usize,
    /// Process metrics.
    pub metrics: &'a Metrics,
    /// This request's id, forwarded upstream and returned to the client.
    pub request_id: &'a str,
}

/// The client's request, read and understood, before any backend is chosen.
struct Prepared {
    method: &'static str,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    json: Option<JsonObject>,
    boundary: Option<String>,
    model_index: usize,
}

/// Handles a chat completion or passthrough request end to end.
pub fn handle(
    mut request: Request,
    target: &Target,
    route: &Route,
    ctx: &Ctx,
    started: Instant,
) -> Summary {
    let mut summary = Summary {
        outcome: "error",
        ..Summary::default()
    };
    let prepared = match prepare(&mut request, target, route, ctx, &mut summary) {
        Ok(p) => p,
        Err(e) => return fail(request, e, ctx, summary),
    };
    let live = ctx.live;
    let config = &live.config;
    let model = config.endpoints[prepared.model_index].id.clone();
    // The model's own backends first, then each fallback model's.
    let mut order = vec![prepared.model_index];
    for f in &config.endpoints[prepared.model_index].fallbacks {
        if let Some(i) = config.endpoints.iter().position(|e| &e.id == f) {
            order.push(i);
        }
    }
    let next_pick = |tried: &[Pick]| order.iter().find_map(|m| live.balancer.pick(*m, tried));
    let mut tried: Vec<Pick> = Vec::new();
    let Some(mut pick) = next_pick(&tried) else {
        return fail(
            request,
            ApiError::internal("no backend configured for this model"),
            ctx,
            summary,
        );
    };
    loop {
        tried.push(pick);
        let endpoint = &config.endpoints[pick.0];
        let backend = &endpoint.backends[pick.1];
        let host = crate::redact::host(&backend.url).to_string();
        summary.backend = Some(host.clone());
        let Some(agent) = live.agent(endpoint, backend) else {
            return fail(
                request,
                ApiError::internal("no HTTP client for this backend"),
                ctx,
                summary,
            );
        };
        let in_flight = live.balancer.start(pick);
        let outgoing = outgoing(&prepared, target, endpoint, backend, ctx.request_id);
        // A 429 or 5xx is a complete answer, kept to relay if no other backend is left.
        let (failure, answer) = match upstream::send(agent, outgoing, &model) {
            Ok(r) if r.status() == 429 || r.status() >= 500 => {
                (upstream::Failure::Status(r.status()), Some(r))
            }
            Ok(r) => {
                live.balancer.success(pick);
                return relay_response(
                    request, r, endpoint, pick, &host, in_flight, ctx, summary, started,
                );
            }
            Err(f) => (f, None),
        };
        if !failure.is_backend_fault() {
            return fail(request, failure.to_api_error(&model), ctx, summary);
        }
        let cause = failure.cause();
        ctx.metrics.upstream_error(&model, &host, cause);
        if live.balancer.failure(pick) {
            log::warn!(
                "backend {} of model {} cools down after repeated failures",
                host,
                endpoint.id
            );
        }
        let next = if (tried.len() as u32) < config.retry.max_attempts {
            next_pick(&tried)
        } else {
            None
        };
        match (next, answer) {
            (Some(n), _) => {
                drop(in_flight);
                log::info!(
                    "model {}: backend {} failed ({}); retrying on another backend",
                    model,
                    host,
                    cause
                );
                ctx.metrics.retry(&model, cause);
                summary.retries += 1;
                std::thread::sleep(config.retry.backoff * summary.retries);
                pick = n;
            }
            // Nothing left to try: the last backend's own answer goes back as it is.
            (None, Some(response)) => {
                return relay_response(
                    request, response, endpoint, pick, &host, in_flight, ctx, summary, started,
                )
            }
            (None, None) => return fail(request, failure.to_api_error(&model), ctx, summary),
        }
    }
}

fn fail(request: Request, e: ApiError, ctx: &Ctx, mut summary: Summary) -> Summary {
    summary.status = e.status;
    summary.outcome = "error";
    if e.status < 500 {
        summary.refused = Some(e.code.unwrap_or(e.kind));
    }
    summary.bytes = crate::reply::error(request, &e, ctx.request_id);
    summary
}

#[allow(clippy::too_many_arguments)]
fn relay_response(
    request: Request,
    response: ureq::Response,
    endpoint: &Endpoint,
    pick: Pick,
    host: &str,
    in_flight: crate::balance::InFlight,
    ctx: &Ctx,
    mut summary: Summary,
    started: Instant,
) -> Summary {
    let mut all: Vec<(String, String)> = Vec::new();
    for name in response.headers_names() {
        for v in response.all(&name) {
            all.push((name.clone(), v.to_string()));
        }
    }
    // Transfer-Encoding wins over Content-Length (RFC 9112 section 6.3): the HTTP client has
    // already de-chunked such a body, so its Content-Length describes nothing we send.
    let chunked = all
        .iter()
        .any(|(n, _)| n.eq_ignore_ascii_case("transfer-encoding"));
    let content_length = if chunked {
        None
    } else {
        response
            .header("content-length")
            .and_then(|v| v.trim().parse().ok())
    };
    let mut headers: Vec<(String, String)> = crate::headers::end_to_end(&all)
        .into_iter()
        // Our id names this request; the backend's own id is kept under another name.
        .map(|(n, v)| {
            if n.eq_ignore_ascii_case("x-request-id") {
                ("X-Upstream-Request-Id".to_string(), v)
            } else {
                (n, v)
            }
        })
        .collect();
    headers.push(("X-Request-Id".to_string(), ctx.request_id.to_string()));
    if crate::reply::wants_close(&request) {
        headers.push(("Connection".to_string(), "close".to_string()));
    }
    let head = Head {
        status: response.status(),
        reason: sanitize_reason(response.status_text()),
        headers,
        content_length,
    };
    summary.status = head.status;
    let client = ClientSide {
        http10: *request.http_version() == (1, 0),
        head_only: *request.method() == Method::Head,
        sse_keepalive: endpoint.sse_keepalive,
    };
    let connection = request.connection_handle();
    let mut writer = request.into_writer();
    let stats = relay::relay(started, &mut *writer, head, response.into_reader(), &client);
    drop(writer);
    if stats.close_connection {
        if let Some(c) = connection {
            c.close();
        }
    }
    drop(in_flight);
    summary.bytes = stats.bytes;
    summary.ttfb = stats.ttfb;
    summary.tokens = stats.tokens;
    summary.outcome = match stats.outcome {
        Outcome::Complete => "complete",
        Outcome::ClientGone => "client_gone",
        Outcome::UpstreamFailed(msg) => {
            log::warn!("model {} backend {}: {}", endpoint.id, host, msg);
            ctx.metrics.upstream_error(&endpoint.id, host, "mid_stream");
            ctx.live.balancer.failure(pick);
            "upstream_failed"
        }
    };
    summary
}

/// The request for one backend: its URL, key and model name.
fn outgoing(
    p: &Prepared,
    target: &Target,
    endpoint: &Endpoint,
    backend: &Backend,
    request_id: &str,
) -> Outgoing<'static> {
    let actual = &backend.actual_model_name;
    let body = if let Some(obj) = &p.json {
        obj.rewrite(actual, &endpoint.drop_fields)
    } else if let Some(b) = &p.boundary {
        body::replace_multipart_field(&p.body, b, "model", actual).unwrap_or_else(|| p.body.clone())
    } else {
        p.body.clone()
    };
    let query = target.query.as_deref().map(|q| {
        if body::query_param(q, "model").is_some() {
            body::replace_query_param(q, "model", actual)
        } else {
            q.to_string()
        }
    });
    let streaming = p.json.as_ref().is_some_and(JsonObject::stream);
    let headers = upstream::forward_headers(&p.headers, streaming, endpoint, backend, request_id);
    let has_body = !body.is_empty() || matches!(p.method, "POST" | "PUT" | "PATCH");
    Outgoing {
        method: p.method,
        url: upstream::url(&backend.url, &target.path, query.as_deref()),
        headers,
        body: has_body.then_some(body),
    }
}

/// Everything up to choosing a backend; errors become the client's reply.
fn prepare(
    request: &mut Request,
    target: &Target,
    route: &Route,
    ctx: &Ctx,
    summary: &mut Summary,
) -> Result<Prepared, ApiError> {
    let method_name = request.method().as_str().to_string();
    if *route == Route::ChatCompletions && *request.method() != Method::Post {
        return Err(ApiError::method_not_allowed(
            &method_name,
            "/v1/chat/completions",
            "POST",
        ));
    }
    let method: &'static str = match request.method() {
        Method::Get => "GET",
        Method::Post => "POST",
        Method::Put => "PUT",
        Method::Delete => "DELETE",
        Method::Patch => "PATCH",
        Method::Head => "HEAD",
        Method::Options => "OPTIONS",
        _ => {
            return Err(ApiError::method_not_allowed(
                &method_name,
                &target.path,
                "GET, POST, PUT, PATCH, DELETE, HEAD, OPTIONS",
            ))
        }
    };
    let headers: Vec<(String, String)> = request
        .headers()
        .iter()
        .map(|h| {
            (
                h.field.as_str().as_str().to_string(),
                h.value.as_str().to_string(),
            )
        })
        .collect();
    if let Some((name, _)) = headers
        .iter()
        .find(|(_, v)| v.bytes().any(|b| (b < 0x20 && b != b'\t') || b == 0x7f))
    {
        return Err(ApiError::invalid_request(format!(
            "Header `{}` holds control characters.",
            clip(name, 64)
        ))
        .with_code("invalid_header"));
    }
    let header = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    };
    let body = read_body(request, ctx.max_body)?;
    let content_type = header("content-type").unwrap_or("").to_string();
    let boundary = body::multipart_boundary(&content_type);
    let live = ctx.live;

    // Selection order is the original proxy's: header, query, JSON body, then multipart.
    let mut json: Option<JsonObject> = None;
    let model = if *route == Route::ChatCompletions {
        let obj = JsonObject::parse(&body)?;
        let m = obj.model()?.ok_or_else(|| {
            ApiError::invalid_request("Missing required parameter: `model`.")
                .with_param("model")
                .with_code("missing_required_parameter")
        })?;
        json = Some(obj);
        m
    } else {
        let ct = content_type.to_ascii_lowercase();
        let mime = ct.split(';').next().unwrap_or("").trim();
        // Any JSON-ish type (`application/json`, `application/vnd.x+json`) or an object body:
        // such a body is always parsed, so its `model` is always rewritten to the backend the
        // request was routed to, whatever named the model.
        let looks_json = mime == "application/json"
            || mime.ends_with("+json")
            || (boundary.is_none()
                && body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{'));
        let from_header = header("x-model-id")
            .map(str::to_string)
            .filter(|s| !s.is_empty());
        let from_query = target
            .query
            .as_deref()
            .and_then(|q| body::query_param(q, "model"))
            .filter(|s| !s.is_empty());
        let early = from_header.or(from_query);
        if looks_json && !body.is_empty() {
            // Refused even when a header named the model: a body we cannot read is a body we
            // cannot rewrite, and its own `model` would reach the backend unchecked.
            json = Some(JsonObject::parse(&body)?);
        }
        let from_json = match (&early, &json) {
            (None, Some(obj)) => obj.model()?,
            _ => None,
        };
        let from_multipart = match (&early, &from_json, &boundary) {
            (None, None, Some(b)) => body::multipart_field(&body, b, "model"),
            _ => None,
        };
        early
            .or(from_json)
            .or(from_multipart)
            .or_else(|| live.config.default_model.clone())
            .ok_or_else(|| {
                ApiError::invalid_request(format!(
                    "No model named for {}: send it as the JSON body's `model`, a `model` form field, a `model` query parameter or an `X-Model-Id` header.",
                    clip(&target.path, 200)
                ))
                .with_param("model")
                .with_code("missing_required_parameter")
            })?
    };
    summary.model = Some(model.clone());
    // A model the caller's key may not use looks exactly like one that does not exist.
    let model_index = live
        .config
        .endpoints
        .iter()
        .position(|e| e.id == model)
        .filter(|_| ctx.caller.may_use(&model))
        .ok_or_else(|| ApiError::model_not_found(&model))?;
    summary.routed = true;
    Ok(Prepared {
        method,
        headers,
        body,
        json,
        boundary,
        model_index,
    })
}

/// Reads the body up to the limit; a declared length over it is refused before reading.
fn read_body(request: &mut Request, limit: usize) -> Result<Vec<u8>, ApiError> {
    if let Some(len) = request.body_length() {
        if len > limit {
            return Err(ApiError::body_too_large(limit));
        }
    }
    let mut buf = Vec::with_capacity(request.body_length().unwrap_or(0).min(limit));
    request
        .as_reader()
        .take(limit as u64 + 1)
        .read_to_end(&mut buf)
        .map_err(|e| {
            ApiError::invalid_request(format!(
                "Could not read the request body ({:?}); was it cut short?",
                e.kind()
            ))
        })?;
    if buf.len() > limit {
        return Err(ApiError::body_too_large(limit));
    }
    Ok(buf)
}

/// Keeps a backend's reason phrase from breaking our status line.
fn sanitize_reason(reason: &str) -> String {
    let clean: String = reason
        .chars()
        .filter(|c| *c == ' ' || c.is_ascii_graphic())
        .collect();
    if clean.is_empty() {
        "Status".to_string()
    } else {
        clean
    }
}
