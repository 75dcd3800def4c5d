//! A demo OpenAI-compatible backend (the echo model of the test mock) for `make run`.
//!
//! Usage: `cargo run --example demo_backend [ADDR]`; the address can also come from
//! `MODELMUX_DEMO_ADDR` (default `127.0.0.1:3334`). Streams with a 50 ms pause
//! between chunks so streaming is visible in a terminal.

#[path = "../tests/support/mock_backend.rs"]
mod mock_backend;

use std::time::Duration;

use mock_backend::{Behavior, MockBackend};

const DEFAULT_ADDR: &str = "127.0.0.1:3334";

fn main() {
    let addr = std::env::args()
        .nth(1)
        .or_else(|| std::env::var("MODELMUX_DEMO_ADDR").ok())
        .filter(|a| !a.trim().is_empty())
        .unwrap_or_else(|| DEFAULT_ADDR.to_string());
    let behavior = Behavior {
        chunk_delay: Duration::from_millis(50),
        ..Behavior::default()
    };
    let backend = match MockBackend::start_on(&addr, behavior) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("demo backend: cannot listen on {}: {}", addr, e);
            std::process::exit(1);
        }
    };
    println!("demo backend listening on http://{}", backend.addr);
    loop {
        std::thread::park();
    }
}
