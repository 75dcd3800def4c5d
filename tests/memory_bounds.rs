//! Issue 24 item 4: memory must not grow with every identity a client invents. 200,000 requests,
//! each from a user nobody saw before (Open WebUI's plain user header through a key trusted for
//! it) and for a model id nobody saw before (under a wildcard, not yet listed), against a
//! `"*"` rule per user and one per model: the proxy's RSS stays under a bound while they arrive
//! (the local limits store holds at most `limitsMaxTracked` identities and refuses new ones with
//! 503 beyond that; per-user metrics stop at `metrics.maxUsers`), and comes back near where it
//! started once the per-minute windows have ended (their counters are freed by the sweeper).
//!
//! The whole process is held to the bound, so every per-identity structure counts: the quota
//! counters and per-user metrics (checked here), and the per-user totals behind `/usage`, which
//! must not keep a cell per id in memory either (the ledger side of items 4 and 13, with the
//! ledger configured as here).
//!
//! The backend is a few lines of raw TCP answering every request at once, and the clients are
//! raw keep-alive connections, so the 200,000 requests take about a minute in a debug build, and
//! the windows another minute at most to end.

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use support::*;

const CLIENT: &str = "sk-memory-owui-key-3c4d5e";
const READER: &str = "sk-memory-metrics-reader-6f7a";
const IDS: usize = 200_000;
const CONNECTIONS: usize = 8;

/// What the proxy may hold above its warmed-up baseline at any moment: 100,000 tracked
/// identities (about 16 MiB of counters and names, see the README), 1,000 users' metric series,
/// and the buffers and thread stacks of the connections (the baseline was taken with the same
/// connections open).
const PEAK_BOUND_MIB: u64 = 48;
/// What may remain above the baseline once every window has ended.
const SETTLED_BOUND_MIB: u64 = 10;

/// A backend that answers every chat request at once with one token in and out.
fn start_backend() -> String {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            std::thread::spawn(move || {
                let _ = s.set_nodelay(true);
                let mut w = s.try_clone().unwrap();
                let mut r = BufReader::new(s);
                let body = br#"{"id":"c","object":"chat.completion","created":1,"model":"m","choices":[{"index":0,"message":{"role":"assistant","content":"ok"},"finish_reason":"stop"}],"usage":{"prompt_tokens":1,"completion_tokens":1,"total_tokens":2}}"#;
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
                    body.len()
                );
                let answer = [head.as_bytes(), &body[..]].concat();
                while let Some(len) = read_head(&mut r) {
                    let mut b = vec![0; len];
                    if r.read_exact(&mut b).is_err() || w.write_all(&answer).is_err() {
                        return;
                    }
                }
            });
        }
    });
    url
}

/// Reads a request or response head; returns its Content-Length (0 when absent), or `None` at
/// the end of the connection.
fn read_head(r: &mut impl BufRead) -> Option<usize> {
    let mut len = 0;
    let mut first = true;
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).ok()? == 0 {
            return None;
        }
        let line = line.trim_end();
        if line.is_empty() {
            if first {
                continue;
            }
            return Some(len);
        }
        first = false;
        if let Some((n, v)) = line.split_once(':') {
            if n.eq_ignore_ascii_case("content-length") {
                len = v.trim().parse().ok()?;
            }
        }
    }
}

/// A keep-alive client connection that sends chat requests and reads the status of each answer.
struct Client {
    w: TcpStream,
    r: BufReader<TcpStream>,
}

impl Client {
    fn connect(addr: SocketAddr) -> Client {
        let s = TcpStream::connect(addr).unwrap();
        s.set_nodelay(true).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        Client {
            w: s.try_clone().unwrap(),
            r: BufReader::new(s),
        }
    }

    /// Sends one request as `user` for `model`; returns the status and body.
    fn chat(&mut self, user: &str, model: &str) -> (u16, Vec<u8>) {
        let body = format!(
            r#"{{"model":"{}","messages":[{{"role":"user","content":"hi"}}]}}"#,
            model
        );
        let req = format!(
            "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\
             X-OpenWebUI-User-Id: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{}",
            CLIENT,
            user,
            body.len(),
            body
        );
        self.w.write_all(req.as_bytes()).unwrap();
        let mut status_line = String::new();
        self.r.read_line(&mut status_line).unwrap();
        let status = status_line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("bad status line {:?}", status_line));
        // The status line was consumed; read_head skips nothing else and stops at the blank line.
        let len = read_head(&mut self.r).expect("answer head");
        let mut b = vec![0; len];
        self.r.read_exact(&mut b).unwrap();
        (status, b)
    }
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", pid)).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS in /proc/<pid>/status")
}

fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

fn scrape(p: &Proxy) -> String {
    request(
        p.addr,
        "GET",
        "/metrics",
        &[("Authorization", &format!("Bearer {}", READER))],
        b"",
    )
    .text()
}

fn unix_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[test]
fn invented_identities_stay_bounded_and_are_freed_when_their_windows_end() {
    let backend = start_backend();
    let dir = TempDir::new();
    let config = format!(
        r#"{{"endpoints":{{"m":{{"url":"{b}"}},"wild/*":{{"url":"{b}","discover":false}}}},
            "proxyKeys":[{{"key":"{c}","name":"owui","trustUserHeaders":true}}],
            "usageLog":"{log}",
            "metrics":{{"perUser":true,"key":"{r}"}},
            "limits":[{{"match":{{"user":"*"}},"requestsPerMinute":1000}},
                      {{"match":{{"model":"*"}},"requestsPerMinute":1000}}]}}"#,
        b = backend,
        c = CLIENT,
        r = READER,
        log = dir.0.join("usage.jsonl").display()
    );
    let p = Proxy::start_with(&config, &[("CM_OPEN_WEBUI_PROXY_LOG_LEVEL", "warn")], &[]);
    let pid = p.pid();

    // Warm up with the same connections and one known identity each, then take the baseline.
    // One connection at a time, each served before the next opens.
    let clients: Vec<Client> = (0..CONNECTIONS)
        .map(|i| {
            let mut c = Client::connect(p.addr);
            for _ in 0..200 {
                assert_eq!(
                    c.chat(&format!("warm{}", i), &format!("wild/warm{}", i)).0,
                    200
                );
            }
            c
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let baseline = rss_kib(pid);

    let peak = Arc::new(AtomicU64::new(baseline));
    let done = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (peak, done) = (Arc::clone(&peak), Arc::clone(&done));
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                peak.fetch_max(rss_kib(pid), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    let started = Instant::now();
    let refused = Arc::new(AtomicU64::new(0));
    let unexpected: Arc<Mutex<Option<String>>> = Arc::default();
    let workers: Vec<_> = clients
        .into_iter()
        .enumerate()
        .map(|(w, mut c)| {
            let (refused, unexpected) = (Arc::clone(&refused), Arc::clone(&unexpected));
            std::thread::spawn(move || {
                for n in (w..IDS).step_by(CONNECTIONS) {
                    let (status, body) =
                        c.chat(&format!("user-{:06}", n), &format!("wild/model-{:06}", n));
                    let text = String::from_utf8_lossy(&body);
                    match status {
                        200 => {}
                        503 if text.contains("\"code\":\"limits_tracking_full\"") => {
                            refused.fetch_add(1, Ordering::Relaxed);
                        }
                        _ => {
                            unexpected
                                .lock()
                                .unwrap()
                                .get_or_insert(format!("{} {}", status, text));
                        }
                    }
                }
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    let last_request = unix_secs();
    let took = started.elapsed();
    done.store(true, Ordering::Relaxed);
    sampler.join().unwrap();
    let peak = peak.load(Ordering::Relaxed);
    assert_eq!(*unexpected.lock().unwrap(), None);

    let m = scrape(&p);
    let tracked = metric(&m, "modelmux_limits_tracked_identities");
    let refused = refused.load(Ordering::Relaxed);
    eprintln!(
        "{} ids in {:.1}s: baseline {} KiB, peak {} KiB (+{} KiB), {} tracked at the end, {} refused",
        IDS,
        took.as_secs_f64(),
        baseline,
        peak,
        peak - baseline,
        tracked,
        refused
    );
    assert!(tracked <= 100_000, "{}", tracked);
    assert_eq!(
        metric(
            &m,
            "modelmux_limit_refusals_total{limit=\"tracked_identities\"}"
        ),
        refused
    );
    // Per-user series stop at metrics.maxUsers (1,000) plus the warm-up users.
    assert!(m.matches("modelmux_user_requests_total{").count() <= 1000);
    assert!(metric(&m, "modelmux_user_other_requests_total") > 0);
    assert!(
        peak - baseline < PEAK_BOUND_MIB * 1024,
        "peak RSS {} KiB is {} KiB above the baseline {} KiB (is anything kept per id?)",
        peak,
        peak - baseline,
        baseline
    );

    // Every window those requests counted in ends at the next minute; the sweeper runs a second
    // into the minute after that.
    let settle_at = (last_request / 60 + 1) * 60 + 1;
    wait_until(
        "the per-minute windows to end and be swept",
        Duration::from_secs(settle_at.saturating_sub(unix_secs()) + 15),
        || {
            unix_secs() > settle_at
                && metric(&scrape(&p), "modelmux_limits_tracked_identities") == 0
        },
    );
    std::thread::sleep(Duration::from_millis(500));
    let settled = rss_kib(pid);
    eprintln!(
        "after the windows ended: {} KiB ({:+} KiB from the baseline)",
        settled,
        settled as i64 - baseline as i64
    );
    assert!(
        settled < baseline + SETTLED_BOUND_MIB * 1024,
        "RSS {} KiB did not come back near the baseline {} KiB (is anything kept per id?)",
        settled,
        baseline
    );
    // A new identity is admitted again.
    let mut c = Client::connect(p.addr);
    assert_eq!(c.chat("someone-new", "wild/another").0, 200);
}

#[test]
fn a_full_store_refuses_new_identities_with_503_and_serves_known_ones() {
    let backend = start_backend();
    let config = format!(
        r#"{{"endpoints":{{"m":{{"url":"{}"}}}},
            "proxyKeys":[{{"key":"{}","name":"owui","trustUserHeaders":true}}],
            "limitsMaxTracked":2,
            "limits":[{{"match":{{"user":"*"}},"requestsPerMinute":50}}]}}"#,
        backend, CLIENT
    );
    let p = Proxy::start(&config);
    let send = |user: &str| {
        request(
            p.addr,
            "POST",
            "/v1/chat/completions",
            &[
                ("Authorization", &format!("Bearer {}", CLIENT)),
                ("X-OpenWebUI-User-Id", user),
                ("Content-Type", "application/json"),
            ],
            br#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#,
        )
    };
    // Every request below falls in one UTC minute.
    wait_until("room in this minute", Duration::from_secs(12), || {
        60 - unix_secs() % 60 > 8
    });
    assert_eq!(send("ann").status, 200);
    assert_eq!(send("bob").status, 200);
    let r = send("carol");
    let e = r.error(503);
    assert_eq!(
        e,
        serde_json::json!({
            "message": "The limits store already tracks 2 identities in open windows (limitsMaxTracked) and cannot count a new one; retry after the time in Retry-After.",
            "type": "server_error",
            "param": null,
            "code": "limits_tracking_full"
        })
    );
    let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
    let left = 60 - unix_secs() % 60;
    assert!(
        retry <= left + 1 && retry + 2 >= left,
        "{} vs {}",
        retry,
        left
    );
    // Those already counted go on being served (and counted).
    let r = send("ann");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-ratelimit-remaining-requests"), Some("48"));
    let m = get(p.addr, "/metrics").text();
    assert_eq!(metric(&m, "modelmux_limits_tracked_identities"), 2);
    assert_eq!(
        metric(
            &m,
            "modelmux_limit_refusals_total{limit=\"tracked_identities\"}"
        ),
        1
    );
}
