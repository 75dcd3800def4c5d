//! The HTTP edge: connections on their threads with the fast lane, worker slots and queue
//! (`server`), and the proxy's own endpoints (`admin`).

pub mod admin;
pub mod server;
