//! Reading the client's request: method, headers and body, and the model it names.

use super::choose::{self, Named};
use crate::http::api_error::ApiError;
use crate::http::route::{Route, Target};
use crate::stream::body::{self, JsonObject};
use std::io::Read;
use tiny_http::{Method, Request};

/// The client's request, read and understood, before any backend is chosen.
pub struct Inbound {
    /// The method to send upstream.
    pub method: &'static str,
    /// The client's headers as sent (shared with the request: no copy).
    pub headers: tiny_http::HeaderList,
    /// The body as sent, unless it is parsed into `json` (which then holds it): see `body()`.
    raw: Vec<u8>,
    /// The body parsed as a JSON object, when it is one (it is then always rewritten).
    pub json: Option<JsonObject>,
    /// The multipart boundary, for a multipart body.
    pub boundary: Option<String>,
    /// The public model id the request names.
    pub model: String,
    /// For a generating request that names no max tokens field: the completion tokens (per
    /// choice) its reservation covers, for an endpoint with `capMaxTokens` to forward.
    pub unnamed_max_tokens: Option<u64>,
}

impl Inbound {
    /// The body as sent (kept once: a JSON body's bytes are its parsed object's text).
    pub fn body(&self) -> &[u8] {
        match &self.json {
            Some(j) => j.text().as_bytes(),
            None => &self.raw,
        }
    }

    /// The client asked for a streamed answer (`"stream": true`).
    pub fn streaming(&self) -> bool {
        self.json.as_ref().is_some_and(JsonObject::stream)
    }
}

/// Reads the request up to the model it names; errors become the client's reply.
pub fn read(
    request: &mut Request,
    target: &Target,
    route: &Route,
    max_body: usize,
    default_model: Option<&str>,
) -> Result<Inbound, ApiError> {
    let method = upstream_method(request.method(), route, &target.path)?;
    let headers = request.header_list().clone();
    let mut raw = read_body(request, max_body)?;
    let content_type = headers.get("content-type").unwrap_or("");
    let boundary = body::multipart_boundary(content_type);
    let chat = *route == Route::ChatCompletions;
    // Any JSON-ish type (`application/json`, `application/vnd.x+json`) or an object body: such
    // a body is always parsed, so its `model` is always rewritten to the backend the request
    // was routed to, whatever named the model. A body we cannot read is refused even when a
    // header named the model: its own `model` would reach the backend unchecked.
    let json = if chat || (looks_json(content_type, &raw, boundary.is_some()) && !raw.is_empty()) {
        // The object keeps the body: no copy of it.
        Some(JsonObject::parse_owned(std::mem::take(&mut raw))?)
    } else {
        None
    };
    let body = json.as_ref().map_or(&raw[..], |j| j.text().as_bytes());
    // Fields that decide routing and accounting are checked before anything relies on them.
    if let Some(j) = json.as_ref().filter(|_| bears_tokens(&target.path)) {
        j.check_types(chat)?;
    }
    let named = Named {
        chat,
        header: headers.get("x-model-id").map(str::to_string),
        query: target
            .query
            .as_deref()
            .and_then(|q| body::query_param(q, "model")),
        json: json.as_ref().map(JsonObject::model),
        multipart: boundary
            .as_deref()
            .and_then(|b| body::multipart_field(body, b, "model")),
        default: default_model.map(str::to_string),
    };
    let model = choose::model_name(named, &target.path)?;
    Ok(Inbound {
        method,
        headers,
        raw,
        json,
        boundary,
        model,
        unnamed_max_tokens: None,
    })
}

/// The method to send upstream; chat completions take only POST.
fn upstream_method(method: &Method, route: &Route, path: &str) -> Result<&'static str, ApiError> {
    if *route == Route::ChatCompletions && *method != Method::Post {
        return Err(ApiError::method_not_allowed(
            method.as_str(),
            "/v1/chat/completions",
            "POST",
        ));
    }
    Ok(match method {
        Method::Get => "GET",
        Method::Post => "POST",
        Method::Put => "PUT",
        Method::Delete => "DELETE",
        Method::Patch => "PATCH",
        Method::Head => "HEAD",
        Method::Options => "OPTIONS",
        _ => {
            return Err(ApiError::method_not_allowed(
                method.as_str(),
                path,
                "GET, POST, PUT, PATCH, DELETE, HEAD, OPTIONS",
            ))
        }
    })
}

/// Paths whose answers carry tokens, where OpenAI's request fields mean what they say.
fn bears_tokens(path: &str) -> bool {
    matches!(
        path,
        "/chat/completions" | "/completions" | "/responses" | "/embeddings"
    )
}

fn looks_json(content_type: &str, body: &[u8], multipart: bool) -> bool {
    let ct = content_type.to_ascii_lowercase();
    let mime = ct.split(';').next().unwrap_or("").trim();
    mime == "application/json"
        || mime.ends_with("+json")
        || (!multipart && body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{'))
}

/// Reads the body up to the limit; a declared length over it is refused before reading.
fn read_body(request: &mut Request, limit: usize) -> Result<Vec<u8>, ApiError> {
    if let Some(len) = request.body_length() {
        if len > limit {
            return Err(ApiError::body_too_large(limit));
        }
    }
    // A small body tiny_http read with the head is taken as it is (no second buffer).
    if let Some(buf) = request.take_read_body() {
        if buf.len() > limit {
            return Err(ApiError::body_too_large(limit));
        }
        return Ok(buf);
    }
    let mut buf = Vec::with_capacity(request.body_length().unwrap_or(0).min(limit));
    request
        .as_reader()
        .take(limit as u64 + 1)
        .read_to_end(&mut buf)
        .map_err(|e| {
            let framing = e.kind() == std::io::ErrorKind::InvalidData;
            let err = ApiError::invalid_request(format!(
                "Could not read the request body ({}); was it cut short?",
                if framing {
                    "malformed chunked encoding".to_string()
                } else {
                    format!("{:?}", e.kind())
                }
            ));
            let mut err = if framing {
                err.with_code("invalid_framing")
            } else {
                err
            };
            // The rest of the body is unread: the connection closes after this answer.
            err.close_connection = true;
            err
        })?;
    if buf.len() > limit {
        return Err(ApiError::body_too_large(limit));
    }
    Ok(buf)
}
