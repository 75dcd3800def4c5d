//! A demo OpenAI-compatible backend (the echo model of the test mock) for `make run`, the
//! benchmark and the SDK conformance run. Never shipped: only `modelmux` goes into releases.
//!
//! Usage: `demo_backend [ADDR] [--chunk-delay-ms N] [--status CODE] [--include-usage]
//! [--models ID,ID...] [--prefix-cache HIT_MS,MISS_MS]`.
//! ADDR can also come from `MODELMUX_DEMO_ADDR` (default `127.0.0.1:3334`). Streams pause 50 ms
//! between chunks by default so streaming is visible in a terminal; `--status` answers every
//! request with that status and an OpenAI-style error body; `--models` sets what `GET /v1/models`
//! lists (default `mock`), for a wildcard endpoint to discover; `--prefix-cache` models an
//! inference server's prefix cache (a turn whose earlier turns this backend served answers its
//! first byte after HIT_MS, any other after MISS_MS; `make bench`'s affinity section).

#[path = "../tests/support/mock_backend.rs"]
mod mock_backend;

use std::time::Duration;

use mock_backend::{Behavior, MockBackend, PrefixCache};

const DEFAULT_ADDR: &str = "127.0.0.1:3334";

fn main() {
    let mut addr = std::env::var("MODELMUX_DEMO_ADDR")
        .ok()
        .filter(|a| !a.trim().is_empty())
        .unwrap_or_else(|| DEFAULT_ADDR.to_string());
    let mut behavior = Behavior {
        chunk_delay: Duration::from_millis(50),
        ..Behavior::default()
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut number = |name: &str| -> u64 {
            match args.next().and_then(|v| v.parse().ok()) {
                Some(n) => n,
                None => {
                    eprintln!("demo backend: {} needs a number", name);
                    std::process::exit(2);
                }
            }
        };
        match arg.as_str() {
            "--chunk-delay-ms" => {
                behavior.chunk_delay = Duration::from_millis(number("--chunk-delay-ms"))
            }
            "--status" => {
                let code = number("--status") as u16;
                let body = format!(
                    r#"{{"error":{{"message":"demo backend answers {}","type":"demo_error","param":null,"code":"demo_{}"}}}}"#,
                    code, code
                );
                behavior.status = Some((code, body));
            }
            "--include-usage" => behavior.include_usage_chunk = true,
            "--models" => {
                behavior.models = args
                    .next()
                    .unwrap_or_default()
                    .split(',')
                    .map(str::trim)
                    .filter(|m| !m.is_empty())
                    .map(str::to_string)
                    .collect()
            }
            "--prefix-cache" => {
                let ms: Vec<u64> = args
                    .next()
                    .unwrap_or_default()
                    .split(',')
                    .filter_map(|v| v.trim().parse().ok())
                    .collect();
                let [hit, miss] = ms[..] else {
                    eprintln!("demo backend: --prefix-cache needs HIT_MS,MISS_MS");
                    std::process::exit(2);
                };
                behavior.prefix_cache = Some(PrefixCache {
                    hit: Duration::from_millis(hit),
                    miss: Duration::from_millis(miss),
                });
            }
            a if !a.starts_with('-') => addr = a.to_string(),
            other => {
                eprintln!("demo backend: unknown argument {}", other);
                std::process::exit(2);
            }
        }
    }
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
