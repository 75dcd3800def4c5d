//! Anthropic's Messages API in front of a backend that speaks only OpenAI chat completions:
//! the request (`request`), the non-stream answer (`response`) and the stream (`stream`), each
//! a pure part tested without sockets. Errors in Anthropic's shape live with the other error
//! shapes (`http::anthropic_error`); the token counts of backends that speak the Messages API
//! natively are read with the other usage (`stream::messages_usage`).

mod chunk;
pub mod request;
pub mod response;
pub mod stream;
