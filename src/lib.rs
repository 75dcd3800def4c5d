//! modelmux: one OpenAI-compatible endpoint in front of many LLM backends.
//!
//! The source is in layers, in the order a request travels; no two modules import each other in a
//! circle (`scripts/import_graph.py`, run by `make lint`):
//! - `start`, `cli`: the binary's entry point (the only public module) and its command line.
//! - `edge/`: the HTTP edge: connections, their threads, fast lane and queue (`server`), and the
//!   proxy's own endpoints (`admin`).
//! - `proxy/`: one proxied request: read (`inbound`), its models named (`choose`), a backend
//!   picked (`select`), the backend's request built (`outbound`), the failover loop in phases
//!   (`mod.rs`) and the answer relayed (`answer`).
//! - `telemetry/`: OpenTelemetry traces (OTLP/HTTP JSON over the HTTP client already linked):
//!   a SERVER span per request and a CLIENT span per backend attempt, exported by one batch thread.
//! - `translate/`: protocol translators (Anthropic Messages first) live here, mapping a foreign
//!   API onto the OpenAI one for `proxy` with the help of `stream` and `http`.
//! - `policy/`: who asks and what they may use, called at admission and completion (`mod.rs`):
//!   `identity/` (client keys, JWT, user headers, body user), `accounting/` (the usage ledger, the
//!   `/usage` totals and what a request cost), `limits/` (rules applied to counters over
//!   windows, in a local or Redis store) and `admission/` (fair queues at capped backends).
//! - `stream/`: bodies in and out: the request's model lookup and byte-faithful rewrite (`body`),
//!   the answer streamed back (`relay`), its tokens (`usage`) and the usage modelmux asked for
//!   hidden again (`usage_strip`).
//! - `backend/`: the backends: which models exist and where (`catalog`, kept fresh by
//!   `discovery` with `probe`), choice and health (`balance`), the outbound client (`upstream`),
//!   and the config in force with what is built from it, swapped on reload (`live`).
//! - `config/`: the config file as data, one module per kind of setting, and the
//!   `--check-config` summary; it imports nothing from the modules that read it.
//! - `http/`: what every layer says in HTTP: routes, OpenAI-style errors, replies, which headers
//!   cross the proxy, the access log line.
//! - Helpers used across layers: `lifecycle` (signals, file watch, fd limit: the only libc calls),
//!   `metrics`, `clock` (UTC calendar arithmetic), `money` (integer micro-units and their text),
//!   `tls`, `glob`, `redact` and `stdout` (whole lines of the JSON access log and a ledger on
//!   stdout under one lock).

#![deny(unsafe_code)]

// The counting allocator of bench builds (`--features count-allocs`); never in a release.
#[cfg(feature = "count-allocs")]
#[allow(unsafe_code)]
mod alloc_count;
mod backend;
mod cli;
mod clock;
mod config;
mod decimal;
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
mod money;
mod policy;
mod proxy;
mod redact;
pub mod start;
mod stdout;
mod stream;
mod telemetry;
mod tls;
mod translate;
