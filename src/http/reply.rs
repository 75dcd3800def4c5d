//! Answers the proxy produces itself (JSON bodies, errors), written through tiny_http.

use crate::http::api_error::ApiError;
use tiny_http::{Header, Request, Response};

/// Sends a JSON body with a status and extra headers; a client that left is not an error.
/// Returns the body's length, for the access log.
pub fn json(
    request: Request,
    status: u16,
    body: Vec<u8>,
    headers: &[(&str, String)],
    request_id: &str,
) -> u64 {
    let len = body.len() as u64;
    let mut response = Response::from_data(body).with_status_code(status);
    let close = wants_close(&request);
    let fixed = [
        ("Content-Type", "application/json"),
        ("X-Request-Id", request_id),
        ("Connection", if close { "close" } else { "" }),
    ];
    for (n, v) in fixed
        .iter()
        .filter(|(_, v)| !v.is_empty())
        .copied()
        .chain(headers.iter().map(|(n, v)| (*n, v.as_str())))
    {
        if let Ok(h) = Header::from_bytes(n.as_bytes(), v.as_bytes()) {
            response.add_header(h);
        }
    }
    if let Err(e) = request.respond(response) {
        log::debug!("could not send a reply: {}", e);
    }
    len
}

/// Sends an OpenAI-shaped error; when the body was left unread, with `Connection: close` so
/// clients do not reuse a connection the server closes after this reply. Returns the body's
/// length.
pub fn error(request: Request, e: &ApiError, request_id: &str) -> u64 {
    let mut headers = e.headers.clone();
    if e.close_connection && !wants_close(&request) {
        headers.push(("Connection", "close".to_string()));
    }
    // Anthropic's SDKs and Claude Code read errors in Anthropic's shape on its routes.
    let path = crate::http::route::parse_target(request.url()).path;
    if path == "/messages" || path.starts_with("/messages/") {
        // The Anthropic SDKs retry a 429 on their own unless told not to: modelmux's own 429
        // (a quota, or every backend holding off) says when to come back in Retry-After.
        if e.status == 429 {
            headers.push(("x-should-retry", "false".to_string()));
        }
        let body = crate::http::anthropic_error::AnthropicError::from_api_error(e).body();
        return json(request, e.status, body, &headers, request_id);
    }
    json(request, e.status, e.body(), &headers, request_id)
}

/// True when this is the connection's last request (`Connection: close`, or HTTP/1.0 without
/// keep-alive), so the reply must say `Connection: close`.
pub fn wants_close(request: &Request) -> bool {
    // Compared ignoring case without a lowercase copy of the value.
    let mentions = |v: &str, token: &str| {
        v.as_bytes()
            .windows(token.len())
            .any(|w| w.eq_ignore_ascii_case(token.as_bytes()))
    };
    match request.header_list().get("Connection") {
        Some(v) if mentions(v, "close") => true,
        Some(v) if mentions(v, "keep-alive") => false,
        _ => *request.http_version() == (1, 0),
    }
}
