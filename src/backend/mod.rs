//! The backends: which models exist and which endpoint serves them (`catalog`, refreshed by
//! `discovery` with `probe`), backend choice and health (`balance`), and the outbound HTTP
//! client with its TLS (`upstream`, `tls`).

pub mod balance;
pub mod catalog;
pub mod discovery;
pub mod live;
pub mod probe;
pub mod upstream;
