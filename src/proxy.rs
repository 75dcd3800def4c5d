//! `POST /chat/completions` and every passthrough path: read the body, find the model, rewrite,
//! call the backend, relay the answer.

use crate::access::Caller;
use crate::api_error::{clip, ApiError};
use crate::body::{self, JsonObject};
use crate::live::Live;
use crate::relay::{self, ClientSide, Head, Outcome};
use crate::route::{Route, Target};
use crate::upstream::{self, Outgoing};
use std::io::Read;
use std::time::Instant;
use tiny_http::{Method, Request};

/// What the access log needs to know about one proxied request.
#[derive(Debug, Default)]
pub struct Summary {
    /// The public model id, when one was found.
    pub model: Option<String>,
    /// Backend host:port, when one was called.
    pub backend: Option<String>,
    /// Status sent to the client.
    pub status: u16,
    /// Body bytes sent to the client.
    pub bytes: u64,
    /// Time to the first body byte sent to the client.
    pub ttfb: Option<std::time::Duration>,
    /// `complete`, `client_gone`, `upstream_failed` or `error`.
    pub outcome: &'static str,
}

/// Request-independent settings for the proxy path.
pub struct Limits {
    /// Largest request body accepted, in bytes.
    pub max_body: usize,
}

/// Handles a chat completion or passthrough request end to end.
pub fn handle(
    mut request: Request,
    target: &Target,
    route: &Route,
    live: &Live,
    caller: &Caller,
    limits: &Limits,
    started: Instant,
) -> Summary {
    let mut summary = Summary {
        outcome: "error",
        ..Summary::default()
    };
    let prepared = prepare(
        &mut request,
        target,
        route,
        live,
        caller,
        limits,
        &mut summary,
    );
    let (outgoing, endpoint_stream_keepalive) = match prepared {
        Ok(p) => p,
        Err(e) => {
            summary.status = e.status;
            crate::reply::error(request, &e);
            return summary;
        }
    };
    let model = summary.model.clone().unwrap_or_default();
    let Some(endpoint) = live.config.endpoint(&model) else {
        let e = ApiError::model_not_found(&model);
        summary.status = e.status;
        crate::reply::error(request, &e);
        return summary;
    };
    let Some(agent) = live.agent(endpoint) else {
        let e = ApiError::internal("no HTTP client for this endpoint");
        summary.status = e.status;
        crate::reply::error(request, &e);
        return summary;
    };
    let response = match upstream::send(agent, outgoing, &model) {
        Ok(r) => r,
        Err(e) => {
            summary.status = e.status;
            crate::reply::error(request, &e);
            return summary;
        }
    };
    let head = Head {
        status: response.status(),
        reason: sanitize_reason(response.status_text()),
        headers: response
            .headers_names()
            .iter()
            .filter(|n| !upstream::is_hop_by_hop(n))
            .flat_map(|n| {
                response
                    .all(n)
                    .into_iter()
                    .map(move |v| (n.clone(), v.to_string()))
            })
            .collect(),
        content_length: response
            .header("content-length")
            .and_then(|v| v.trim().parse().ok()),
    };
    summary.status = head.status;
    let client = ClientSide {
        http10: *request.http_version() == (1, 0),
        head_only: *request.method() == Method::Head,
        sse_keepalive: endpoint_stream_keepalive,
    };
    let mut writer = request.into_writer();
    let stats = relay::relay(started, &mut *writer, head, response.into_reader(), &client);
    summary.bytes = stats.bytes;
    summary.ttfb = stats.ttfb;
    summary.outcome = match stats.outcome {
        Outcome::Complete => "complete",
        Outcome::ClientGone => "client_gone",
        Outcome::UpstreamFailed(msg) => {
            log::warn!("model {}: {}", model, msg);
            "upstream_failed"
        }
    };
    summary
}

/// Everything up to the backend call; errors become the client's reply.
fn prepare(
    request: &mut Request,
    target: &Target,
    route: &Route,
    live: &Live,
    caller: &Caller,
    limits: &Limits,
    summary: &mut Summary,
) -> Result<(Outgoing<'static>, Option<std::time::Duration>), ApiError> {
    let method = request.method().as_str().to_string();
    if *route == Route::ChatCompletions && *request.method() != Method::Post {
        return Err(ApiError::method_not_allowed(
            &method,
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
                &method,
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
    let header = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    };
    let body = read_body(request, limits.max_body)?;
    let content_type = header("content-type").unwrap_or("").to_ascii_lowercase();

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
        let looks_json = content_type.starts_with("application/json")
            || (content_type.is_empty()
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
            match JsonObject::parse(&body) {
                Ok(obj) => json = Some(obj),
                // With the model already named, a body we cannot read is the backend's business.
                Err(e) if early.is_none() => return Err(e),
                Err(_) => {}
            }
        }
        let from_json = match (&early, &json) {
            (None, Some(obj)) => obj.model()?,
            _ => None,
        };
        let boundary = body::multipart_boundary(&content_type)
            .and_then(|_| body::multipart_boundary(header("content-type").unwrap_or("")));
        let from_multipart = match (&early, &from_json, &boundary) {
            (None, None, Some(b)) => body::multipart_field(&body, b, "model"),
            _ => None,
        };
        early.or(from_json).or(from_multipart).ok_or_else(|| {
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
    let endpoint = live
        .config
        .endpoint(&model)
        .filter(|_| caller.may_use(&model))
        .ok_or_else(|| ApiError::model_not_found(&model))?;
    summary.backend = Some(crate::redact::host(&endpoint.url).to_string());

    let new_body = if let Some(obj) = &json {
        obj.rewrite(&endpoint.actual_model_name, &endpoint.drop_fields)
    } else if let Some(b) = body::multipart_boundary(header("content-type").unwrap_or("")) {
        body::replace_multipart_field(&body, &b, "model", &endpoint.actual_model_name)
            .unwrap_or(body)
    } else {
        body
    };
    let query = target.query.as_deref().map(|q| {
        if body::query_param(q, "model").is_some() {
            body::replace_query_param(q, "model", &endpoint.actual_model_name)
        } else {
            q.to_string()
        }
    });
    let has_body = !new_body.is_empty() || matches!(method, "POST" | "PUT" | "PATCH");
    Ok((
        Outgoing {
            method,
            url: upstream::url(&endpoint.url, &target.path, query.as_deref()),
            headers: upstream::forward_headers(&headers, endpoint),
            body: has_body.then_some(new_body),
        },
        endpoint.sse_keepalive,
    ))
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
