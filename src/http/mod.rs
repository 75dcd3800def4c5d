//! The HTTP edge: connections and their threads, which route a path names, client and admin
//! keys, the proxy's own endpoints, error and reply shapes, the access log and which headers
//! cross the proxy.

pub mod access_log;
pub mod api_error;
pub mod headers;
pub mod reply;
pub mod route;
