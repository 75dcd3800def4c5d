//! What every layer says in HTTP: routes, OpenAI-style errors, replies, which headers cross
//! the proxy, the access log line.

pub mod access_log;
pub mod api_error;
pub mod headers;
pub mod reply;
pub mod route;
