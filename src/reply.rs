//! Answers the proxy produces itself (JSON bodies, errors), written through tiny_http.

use crate::api_error::ApiError;
use tiny_http::{Header, Request, Response};

/// Sends a JSON body with a status and extra headers; a client that left is not an error.
pub fn json(request: Request, status: u16, body: Vec<u8>, headers: &[(&str, String)]) {
    let mut response = Response::from_data(body).with_status_code(status);
    if let Ok(h) = Header::from_bytes(&b"Content-Type"[..], &b"application/json"[..]) {
        response.add_header(h);
    }
    for (n, v) in headers {
        if let Ok(h) = Header::from_bytes(n.as_bytes(), v.as_bytes()) {
            response.add_header(h);
        }
    }
    if let Err(e) = request.respond(response) {
        log::debug!("could not send a reply: {}", e);
    }
}

/// Sends an OpenAI-shaped error; when the body was left unread, with `Connection: close` so
/// clients do not reuse a connection the server closes after this reply.
pub fn error(request: Request, e: &ApiError) {
    if e.close_connection {
        let mut headers = e.headers.clone();
        headers.push(("Connection", "close".to_string()));
        json(request, e.status, e.body(), &headers);
    } else {
        json(request, e.status, e.body(), &e.headers);
    }
}
