//! The backends: which models exist and where (`catalog`, kept fresh by `discovery` with
//! `probe`), choice and health (`balance`, with conversation `affinity`), the outbound client (`upstream`), and the config in
//! force with what is built from it, swapped on reload (`live`, with each backend's `prepared`
//! request parts).

pub mod affinity;
pub mod balance;
pub mod catalog;
pub mod discovery;
pub mod live;
pub mod prepared;
pub mod probe;
pub mod upstream;
