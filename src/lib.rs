//! modelmux: one OpenAI-compatible endpoint in front of many LLM backends.
//!
//! The layers, in the order a request travels:
//! - `http/`: the HTTP edge (server, route, auth, admin endpoints, errors and replies, access
//!   log, header rules).
//! - `proxy/`: one proxied request, from reading it through the failover loop to its answer.
//! - `policy/`: who asks and what they may use, called at admission and completion (identity,
//!   accounting, limits, admission to capped backends).
//! - `backend/`: which models exist and where (catalog, discovery, probe), backend choice and
//!   health (balance), and the outbound client (upstream, tls).
//! - `stream/`: bodies in and out (body rewrite, relay, usage, usage strip).
//! - `translate/`: protocol translators (such as Anthropic Messages) live here, between `proxy`
//!   and `stream`, mapping a foreign API onto the OpenAI one.
//! - `config/` is data and imports nothing from the modules that read it; `live` holds it and
//!   reloads it atomically. `lifecycle` (signals, file watch, fd limit), `metrics`, `clock`,
//!   `glob`, `redact` and `cli` serve them all; `start` is the binary's entry point and the only
//!   public module.

#![deny(unsafe_code)]

mod backend;
mod cli;
mod clock;
mod config;
mod edge;
mod glob;
mod http;
// The libc calls (signals, descriptor limit, listen backlog, client socket peek, heap trim,
// ledger lock) live here and nowhere else.
#[cfg(test)]
mod fuzz_tests;
#[allow(unsafe_code)]
mod lifecycle;
mod metrics;
mod policy;
mod proxy;
mod redact;
pub mod start;
mod stream;
mod tls;
