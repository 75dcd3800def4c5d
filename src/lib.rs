//! modelmux: one OpenAI-compatible endpoint in front of many LLM backends.
//!
//! The modules follow a request's path: `server` takes it, `route` names it, `admin` answers the
//! proxy's own endpoints, `proxy` reads and rewrites it (`body`), `upstream` calls the backend
//! and `relay` streams the answer back; `config`/`live` hold the config, `redact` keeps secrets out.

pub mod access;
pub mod access_log;
pub mod admin;
pub mod api_error;
pub mod balance;
pub mod body;
pub mod cli;
pub mod config;
pub mod headers;
pub mod lifecycle;
pub mod live;
pub mod metrics;
pub mod proxy;
pub mod redact;
pub mod relay;
pub mod reply;
pub mod route;
pub mod server;
pub mod tls;
pub mod upstream;
pub mod usage;
