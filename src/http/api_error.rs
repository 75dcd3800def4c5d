//! Errors the proxy itself answers, in the OpenAI shape `{"error":{message,type,param,code}}`.

use serde_json::json;

/// An error answered to the client by modelmux itself (never by a backend).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// HTTP status code.
    pub status: u16,
    /// Human-readable message; never contains a secret.
    pub message: String,
    /// OpenAI error type, e.g. `invalid_request_error`.
    pub kind: &'static str,
    /// The request field at fault, if any.
    pub param: Option<&'static str>,
    /// Machine-readable code, e.g. `model_not_found`.
    pub code: Option<&'static str>,
    /// Extra response headers, e.g. `Allow` or `Retry-After`.
    pub headers: Vec<(&'static str, String)>,
    /// The request body was left unread: answer with `Connection: close` so clients do not
    /// reuse a connection the server is about to close.
    pub close_connection: bool,
}

impl ApiError {
    fn new(status: u16, kind: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
            kind,
            param: None,
            code: None,
            headers: Vec::new(),
            close_connection: false,
        }
    }

    /// 400 for a request the proxy cannot understand.
    pub fn invalid_request(message: impl Into<String>) -> ApiError {
        ApiError::new(400, "invalid_request_error", message)
    }

    /// 404 for a model id that is not configured (or not visible to the caller).
    pub fn model_not_found(model: &str) -> ApiError {
        let mut e = ApiError::new(
            404,
            "invalid_request_error",
            format!(
                "The model `{}` does not exist or you do not have access to it.",
                clip(model, 200)
            ),
        );
        e.param = Some("model");
        e.code = Some("model_not_found");
        e
    }

    /// A request the HTTP layer refused while reading its head (framing, headers, limits,
    /// HTTP/2); the connection closes after the answer.
    pub fn refused(r: &tiny_http::Refusal) -> ApiError {
        let mut e = ApiError::new(r.status, "invalid_request_error", r.message.clone());
        e.code = Some(r.code);
        e.close_connection = true;
        e
    }

    /// 405 with the methods the path accepts.
    pub fn method_not_allowed(method: &str, path: &str, allow: &str) -> ApiError {
        let mut e = ApiError::new(
            405,
            "invalid_request_error",
            format!(
                "Method {} is not allowed on {}; use {}.",
                clip(method, 32),
                clip(path, 200),
                allow
            ),
        );
        e.code = Some("method_not_allowed");
        e.headers.push(("Allow", allow.to_string()));
        e
    }

    /// 413 for a body over the configured limit.
    pub fn body_too_large(limit: usize) -> ApiError {
        let mut e = ApiError::new(
            413,
            "invalid_request_error",
            format!("Request body is larger than the limit of {} bytes.", limit),
        );
        e.code = Some("request_too_large");
        e.close_connection = true;
        e
    }

    /// 502 when the backend could not be reached or broke the protocol.
    pub fn bad_gateway(message: impl Into<String>) -> ApiError {
        let mut e = ApiError::new(502, "upstream_error", message);
        e.code = Some("bad_gateway");
        e
    }

    /// 504 when the backend did not answer in time.
    pub fn gateway_timeout(message: impl Into<String>) -> ApiError {
        let mut e = ApiError::new(504, "upstream_error", message);
        e.code = Some("gateway_timeout");
        e
    }

    /// 503 when every worker is busy and the wait queue is full.
    pub fn overloaded(retry_after_secs: u64) -> ApiError {
        let mut e = ApiError::new(
            503,
            "server_error",
            "modelmux is at capacity: every worker is busy. Retry shortly.",
        );
        e.code = Some("overloaded");
        e.headers
            .push(("Retry-After", retry_after_secs.to_string()));
        e
    }

    /// 429 when a quota rule refuses (`rate_limit_exceeded` or `insufficient_quota`), or when
    /// every backend of the model asked to be left alone for a while.
    pub fn rate_limited(
        code: &'static str,
        message: impl Into<String>,
        retry_after_secs: u64,
    ) -> ApiError {
        let kind = if code == "insufficient_quota" {
            "insufficient_quota"
        } else {
            "rate_limit_error"
        };
        let mut e = ApiError::new(429, kind, message);
        e.code = Some(code);
        e.headers
            .push(("Retry-After", retry_after_secs.max(1).to_string()));
        e
    }

    /// 500 for a fault inside modelmux itself.
    pub fn internal(message: impl Into<String>) -> ApiError {
        ApiError::new(500, "server_error", message)
    }

    /// Sets the `param` field.
    pub fn with_param(mut self, param: &'static str) -> ApiError {
        self.param = Some(param);
        self
    }

    /// Sets the `code` field.
    pub fn with_code(mut self, code: &'static str) -> ApiError {
        self.code = Some(code);
        self
    }

    /// The JSON body sent to the client.
    pub fn body(&self) -> Vec<u8> {
        let v = json!({
            "error": {
                "message": self.message,
                "type": self.kind,
                "param": self.param,
                "code": self.code,
            }
        });
        v.to_string().into_bytes()
    }
}

/// Shortens client-supplied text echoed in messages so a huge value cannot bloat a reply or log.
pub fn clip(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}
