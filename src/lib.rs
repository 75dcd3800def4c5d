//! modelmux: one OpenAI-compatible endpoint in front of many LLM backends.
//!
//! The modules follow a request's path: `server` takes it, `route` names it, `admin` answers the
//! proxy's own endpoints, `proxy` reads and rewrites it (`body`), `upstream` calls the backend
//! and `relay` streams the answer back; `config`/`live` hold the config, `redact` keeps secrets out.
//! `catalog` knows which models exist (configured and discovered) and which endpoint serves an
//! id; `discovery` keeps it fresh in the background with `probe`, which also feeds active health
//! to `balance`.
//! `start` is the binary's entry point and the only public module.

#![deny(unsafe_code)]

mod access_log;
mod admin;
mod api_error;
mod auth;
mod balance;
mod body;
mod catalog;
mod cli;
mod config;
mod discovery;
mod glob;
mod headers;
// The libc calls (signals, descriptor limit, listen backlog, client socket peek, heap trim) live
// here and nowhere else.
#[cfg(test)]
mod fuzz_tests;
#[allow(unsafe_code)]
mod lifecycle;
mod live;
mod metrics;
mod policy;
mod probe;
mod proxy;
mod redact;
mod relay;
mod reply;
mod route;
mod server;
pub mod start;
mod telemetry;
mod tls;
mod upstream;
mod usage;
mod usage_strip;
