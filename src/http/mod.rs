//! What every layer says in HTTP: routes, OpenAI-style errors (and Anthropic's shape of them on
//! its routes), replies, which headers cross the proxy, the access log line.

pub mod access_log;
pub mod anthropic_error;
pub mod api_error;
pub mod headers;
pub mod reply;
pub mod route;
