//! Errors in Anthropic's shape, `{"type":"error","error":{"type","message"}}`: modelmux's own
//! (from an `ApiError`) and a translated backend's (from its OpenAI-style error body).

use crate::http::api_error::{clip, ApiError};
use serde_json::{json, Value};

/// Longest backend error message passed on to the client.
const MAX_MESSAGE: usize = 1000;

/// An error answered on the Messages route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnthropicError {
    /// HTTP status code.
    pub status: u16,
    /// Anthropic error type, e.g. `invalid_request_error`.
    pub kind: &'static str,
    /// One line for the client; never a secret.
    pub message: String,
}

impl AnthropicError {
    /// An error of the type Anthropic uses for `status`.
    pub fn new(status: u16, message: impl Into<String>) -> AnthropicError {
        AnthropicError {
            status,
            kind: kind_for_status(status),
            message: message.into(),
        }
    }

    /// 400 `invalid_request_error`.
    pub fn invalid_request(message: impl Into<String>) -> AnthropicError {
        AnthropicError::new(400, message)
    }

    /// modelmux's own error, same status and message. Headers such as `Retry-After` stay on
    /// the `ApiError` for the caller to send.
    pub fn from_api_error(e: &ApiError) -> AnthropicError {
        AnthropicError::new(e.status, e.message.clone())
    }

    /// A translated backend's error answer: its status, and the message of its body in any of
    /// the shapes OpenAI-compatible servers use (`{"error":{"message"}}`, `{"error":"…"}`,
    /// FastAPI's `{"detail":…}`, `{"message":…}`), or a line naming the status.
    pub fn from_backend(status: u16, body: &[u8]) -> AnthropicError {
        let v: Option<Value> = serde_json::from_slice(body).ok();
        let text = |v: &Value| match v {
            Value::String(s) if !s.is_empty() => Some(s.clone()),
            Value::Null | Value::String(_) => None,
            other => Some(other.to_string()),
        };
        let message = v
            .as_ref()
            .and_then(|v| {
                v.get("error")
                    .and_then(|e| {
                        e.get("message")
                            .and_then(text)
                            .or_else(|| e.as_str().and_then(|s| text(&json!(s))))
                    })
                    .or_else(|| v.get("detail").and_then(text))
                    .or_else(|| v.get("message").and_then(text))
            })
            .unwrap_or_else(|| format!("The backend answered HTTP {}.", status));
        // A 2xx here means the caller found the body unusable; it is still the backend's fault.
        let status = if status < 400 { 502 } else { status };
        AnthropicError::new(status, clip(&message, MAX_MESSAGE))
    }

    /// The JSON value of the error body.
    pub fn to_json(&self) -> Value {
        json!({"type": "error", "error": {"type": self.kind, "message": self.message}})
    }

    /// The response body.
    pub fn body(&self) -> Vec<u8> {
        self.to_json().to_string().into_bytes()
    }

    /// The `event: error` sent when a stream fails after it started.
    pub fn sse_event(&self) -> Vec<u8> {
        format!("event: error\ndata: {}\n\n", self.to_json()).into_bytes()
    }
}

/// Anthropic's error type for an HTTP status. Statuses Anthropic does not use map to the type
/// of their class, so a client's retry logic (which keys on status) and type still agree.
pub fn kind_for_status(status: u16) -> &'static str {
    match status {
        400 => "invalid_request_error",
        401 => "authentication_error",
        402 => "billing_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        504 => "timeout_error",
        // 503 is modelmux's "every worker busy": what Anthropic calls overloaded (529).
        503 | 529 => "overloaded_error",
        s if (400..500).contains(&s) => "invalid_request_error",
        _ => "api_error",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_map_to_anthropic_types() {
        let cases = [
            (400, "invalid_request_error"),
            (401, "authentication_error"),
            (403, "permission_error"),
            (404, "not_found_error"),
            (413, "request_too_large"),
            (429, "rate_limit_error"),
            (500, "api_error"),
            (502, "api_error"),
            (503, "overloaded_error"),
            (504, "timeout_error"),
            (529, "overloaded_error"),
            (422, "invalid_request_error"),
        ];
        for (status, kind) in cases {
            assert_eq!(kind_for_status(status), kind, "{}", status);
        }
    }

    #[test]
    fn modelmux_quota_error_becomes_rate_limit_error() {
        let e = ApiError::rate_limited(
            "rate_limit_exceeded",
            "Quota of 10 requests per minute used up.",
            7,
        );
        let a = AnthropicError::from_api_error(&e);
        assert_eq!(a.status, 429);
        assert_eq!(
            String::from_utf8(a.body()).unwrap(),
            r#"{"type":"error","error":{"type":"rate_limit_error","message":"Quota of 10 requests per minute used up."}}"#
        );
        // insufficient_quota is OpenAI's word; Anthropic has only rate_limit_error for 429.
        let e = ApiError::rate_limited("insufficient_quota", "Budget spent.", 60);
        assert_eq!(AnthropicError::from_api_error(&e).kind, "rate_limit_error");
    }

    #[test]
    fn backend_error_bodies_in_every_shape() {
        let cases: [(&[u8], &str); 6] = [
            (
                br#"{"error":{"message":"bad tool schema","type":"invalid_request_error"}}"#,
                "bad tool schema",
            ),
            (br#"{"error":"model not loaded"}"#, "model not loaded"),
            (br#"{"detail":"Not Found"}"#, "Not Found"),
            (
                br#"{"detail":[{"loc":["body"],"msg":"x"}]}"#,
                r#"[{"loc":["body"],"msg":"x"}]"#,
            ),
            (br#"{"message":"slow down"}"#, "slow down"),
            (
                b"<html>bad gateway</html>",
                "The backend answered HTTP 400.",
            ),
        ];
        for (body, message) in cases {
            let e = AnthropicError::from_backend(400, body);
            assert_eq!(e.message, message);
            assert_eq!(e.kind, "invalid_request_error");
        }
        let e = AnthropicError::from_backend(200, b"not json");
        assert_eq!((e.status, e.kind), (502, "api_error"));
    }

    #[test]
    fn error_event_is_one_sse_event() {
        let e = AnthropicError::new(502, "The backend closed the stream.");
        assert_eq!(
            String::from_utf8(e.sse_event()).unwrap(),
            "event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"api_error\",\"message\":\"The backend closed the stream.\"}}\n\n"
        );
    }
}
