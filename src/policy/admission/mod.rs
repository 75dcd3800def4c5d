//! Admission to capped backends: per-model gates with a fair, prioritised queue
//! (`backend_gate`).

pub mod backend_gate;
