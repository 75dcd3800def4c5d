//! Limits: the quota rules applied to counters per user, key and model (`quota`), kept over
//! fixed UTC windows (`windows`) in a store, in this process or in Redis behind a breaker
//! (`store`, `redis_store`, `breaker`, `counts`), and checked at start (`preflight`).

pub mod breaker;
pub mod counts;
pub mod preflight;
pub mod quota;
pub mod redis_store;
pub mod store;
pub mod windows;
