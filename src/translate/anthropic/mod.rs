//! Anthropic's Messages API in front of a backend that speaks only OpenAI chat completions:
//! the request (`request`), the non-stream answer (`response`), the stream (`stream`), errors
//! (`errors`), and the token counts of backends that speak the Messages API natively
//! (`native_usage`).

pub mod errors;
pub mod native_usage;
pub mod request;
pub mod response;
pub mod stream;
