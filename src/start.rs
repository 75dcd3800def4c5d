//! Starting modelmux: parse flags, then print help or the version, check the config, probe a
//! running instance, or load the config and serve.

use crate::backend::live::ConfigStore;
use crate::cli::{self, Command, Options};
use crate::config::{Defaults, Timeouts};
use crate::edge::server::{self, Settings};
use crate::lifecycle;
use crate::policy::Policy;
use std::net::TcpListener;
use std::process::ExitCode;
use std::sync::Arc;

/// The binary's whole life; the exit code is 2 for bad flags and 1 for any other failure.
pub fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let command = match cli::parse(&args, &|k| std::env::var(k).ok()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("modelmux: {}", e);
            return ExitCode::from(2);
        }
    };
    let options = match command {
        Command::Help => {
            print!("{}", cli::USAGE);
            return ExitCode::SUCCESS;
        }
        Command::Version => {
            println!("modelmux {}", env!("CARGO_PKG_VERSION"));
            return ExitCode::SUCCESS;
        }
        Command::UsageHelp => {
            print!("{}", cli::USAGE_COMMAND);
            return ExitCode::SUCCESS;
        }
        Command::Usage(u) => {
            return match usage(&u) {
                Ok(text) => {
                    print!("{}", text);
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("modelmux usage: {}", e);
                    ExitCode::FAILURE
                }
            }
        }
        Command::Run(o) => *o,
    };
    match run(options) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("modelmux: {}", e);
            ExitCode::FAILURE
        }
    }
}

fn run(o: Options) -> Result<(), String> {
    let defaults = Defaults {
        timeouts: Timeouts {
            connect: o.connect_timeout,
            idle: o.idle_timeout,
        },
        proxy_keys: o.proxy_keys.clone(),
        ca_file: o.ca_file.clone(),
    };
    if o.healthcheck {
        return healthcheck(&o);
    }
    if o.check_config {
        return check_config(&o, defaults);
    }
    // Before any thread exists, so every thread inherits the mask and only one takes signals.
    lifecycle::block_signals();
    simple_logger::SimpleLogger::new()
        .with_level(o.log_level)
        .with_utc_timestamps()
        // Library debug output can carry backend URLs; the access log is ours to shape.
        .with_module_level("ureq", o.log_level.min(log::LevelFilter::Warn))
        .with_module_level("rustls", o.log_level.min(log::LevelFilter::Warn))
        .with_module_level("tiny_http", o.log_level.min(log::LevelFilter::Warn))
        .init()
        .map_err(|e| format!("cannot start logging: {}", e))?;
    lifecycle::raise_fd_limit();
    lifecycle::pin_malloc_thresholds();
    crate::http::access_log::set_format(o.log_format);
    crate::telemetry::init();
    set_client_limits(&o);
    let shared =
        ConfigStore::load(&o.config, defaults, o.workers.min(1024)).map_err(|e| e.to_string())?;
    let live = shared.snapshot();
    for w in &live.config.warnings {
        log::warn!("{}", w);
    }
    // Everything the server needs is opened before the listening line: a failure after it
    // would tell scripts and operators that a server is up when it is not. A ledger another
    // process writes stops the start here, and the limits are seeded from the ledger before the
    // first request can be admitted.
    let policy = Arc::new(Policy::start(&live.config.policy)?);
    let listener = TcpListener::bind((o.host.as_str(), o.port))
        .map_err(|e| format!("cannot listen on {}:{}: {}", o.host, o.port, e))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    lifecycle::deepen_backlog(&listener);
    let models = live.config.endpoints.len();
    // An open proxy is the original's default, but it should never be a surprise.
    let open = if live.config.proxy_keys.is_empty() {
        format!(
            "; no client keys: anyone who reaches {} can use every model",
            addr
        )
    } else {
        String::new()
    };
    drop(live);
    let announce = || {
        // Printed whatever the log level: operators and scripts (tests, bench) need the address.
        eprintln!(
            "modelmux {} listening on http://{} with {} from {} ({} workers){}",
            env!("CARGO_PKG_VERSION"),
            addr,
            plural(models, "model", "models"),
            o.config,
            o.workers,
            open
        );
    };
    let shared = Arc::new(shared);
    let stopper = Arc::new(lifecycle::Stopper::default());
    // The main thread takes the signals and watches the config file while it waits for the
    // stop (`server::serve` waits in `stopper.wait()`).
    stopper.handle_signals(Arc::clone(&shared), o.watch);
    crate::backend::discovery::spawn(Arc::clone(&shared));
    let served = server::serve(
        listener,
        Settings {
            workers: o.workers,
            queue: o.queue,
            max_body: o.max_body,
            admin_key: o.admin_key.clone(),
            drain: o.drain,
        },
        server::Parts {
            shared,
            policy,
            stopper,
        },
        &announce,
    );
    // After the drain: the last requests' spans go out too.
    crate::telemetry::shutdown();
    served
}

/// What tiny_http allows a client: header size and timeouts, and the body of an answer a
/// handler dropped.
fn set_client_limits(o: &Options) {
    // A request a handler dropped unanswered (a bug or a panic) still gets a body an OpenAI
    // client can read.
    tiny_http::limits::set_unanswered_body(
        "application/json",
        crate::http::api_error::ApiError::internal("internal error in modelmux")
            .with_code("internal_error")
            .body(),
    );
    tiny_http::limits::set_header_read_timeout(o.client_timeout);
    tiny_http::limits::set_write_timeout(Some(o.client_write_timeout));
    tiny_http::limits::set_max_header_bytes(o.max_header_bytes);
    tiny_http::limits::set_max_header_line(
        o.max_header_bytes
            .min(tiny_http::limits::DEFAULT_MAX_HEADER_LINE),
    );
}

/// `--check-config`: loads the config as the server would (clients built, CA files read), opens
/// what the server opens at start (the usage ledger, the limits store URL), prints the summary.
/// Exit 0 means the server will start, unless its port is taken (not checked: the running
/// instance may hold it).
fn check_config(o: &Options, defaults: Defaults) -> Result<(), String> {
    let shared = ConfigStore::load(&o.config, defaults, 1).map_err(|e| e.to_string())?;
    let live = shared.snapshot();
    crate::policy::preflight(&live.config.policy)
        .map_err(|e| format!("config {}: {}", o.config, e))?;
    print!("{}", crate::config::summary(&o.config, &live.config));
    // The admin key is not in the file, but it decides who may read /usage and /debug.
    println!(
        "admin key: {}",
        match (&o.admin_key, live.config.proxy_keys.is_empty()) {
            (Some(_), _) => "set: /usage, /debug and /reload need it",
            (None, true) => "not set: /usage answers 403; /debug and /reload are open",
            (None, false) => "not set: /usage, /debug and /reload answer 403",
        }
    );
    Ok(())
}

/// "1 model", "2 models".
fn plural(n: usize, one: &str, many: &str) -> String {
    format!("{} {}", n, if n == 1 { one } else { many })
}

/// `modelmux usage`: totals straight from the ledger files.
fn usage(u: &cli::UsageArgs) -> Result<String, String> {
    let q = crate::policy::query(
        u.since.as_deref(),
        u.until.as_deref(),
        u.by.as_deref(),
        u.user.as_deref(),
    )?;
    if let Some(url) = &u.store {
        return crate::policy::usage_from_store(url, &q, u.json);
    }
    let log = match &u.log {
        Some(l) => std::path::PathBuf::from(l),
        None => crate::config::read_usage_log(&u.config)
            .map_err(|e| e.to_string())?
            .ok_or_else(|| {
                format!(
                    "{} sets no usageLog; name the ledger with --log FILE",
                    u.config
                )
            })?,
    };
    if log == std::path::Path::new(crate::config::STDOUT_LEDGER) {
        return Err(format!(
            "{}'s usageLog is \"-\" (ledger lines go to stdout): save the shipped lines marked \"log\":\"usage\" to a file and name it with --log FILE, or read the shared totals with --store URL",
            u.config
        ));
    }
    // An empty report for a mistyped path would look like "nobody used anything".
    if !log.exists() {
        return Err(format!("no such ledger file: {}", log.display()));
    }
    crate::policy::usage_command(&log, &q, u.json)
}

/// Probes `/health` with a raw request so a `FROM scratch` image needs no curl.
fn healthcheck(o: &Options) -> Result<(), String> {
    use std::io::{Read, Write};
    use std::net::{TcpStream, ToSocketAddrs};
    use std::time::Duration;
    let host = match o.host.as_str() {
        "0.0.0.0" | "" => "127.0.0.1",
        "::" | "[::]" => "::1",
        h => h,
    };
    let addr = (host, o.port)
        .to_socket_addrs()
        .map_err(|e| format!("healthcheck: cannot resolve {}: {}", host, e))?
        .next()
        .ok_or_else(|| format!("healthcheck: no address for {}", host))?;
    let timeout = Duration::from_secs(3);
    let mut s = TcpStream::connect_timeout(&addr, timeout)
        .map_err(|e| format!("healthcheck: {}: {}", addr, e))?;
    s.set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    s.write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .map_err(|e| format!("healthcheck: {}", e))?;
    let mut reply = Vec::new();
    let _ = s.take(64 * 1024).read_to_end(&mut reply);
    let text = String::from_utf8_lossy(&reply);
    if text.starts_with("HTTP/1.1 200") || text.starts_with("HTTP/1.0 200") {
        println!("healthy");
        Ok(())
    } else {
        Err(format!(
            "healthcheck: unhealthy reply from {}: {}",
            addr,
            text.lines().next().unwrap_or("(empty)")
        ))
    }
}
