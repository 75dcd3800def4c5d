//! Admission policy: quotas per user, key and model (`quota`, counted in a `store`, locally or
//! in Redis), and per-backend concurrency caps with fair, prioritised waiting (`backend_gate`).

pub mod backend_gate;
pub mod quota;
pub mod redis_store;
pub mod rules;
pub mod store;
pub mod windows;
