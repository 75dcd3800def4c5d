//! Test harness: starts the real modelmux binary on port 0 against mock backends and talks to it
//! over raw sockets.
#![allow(dead_code)]

pub mod fake_backend;
pub mod mock_backend;
pub mod redis;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// Every response this test process read from a proxy (head and body), for the secret scan.
static SEEN: Mutex<Vec<String>> = Mutex::new(Vec::new());

fn remember(resp: &Resp) {
    let mut text = format!("{} {:?}\n", resp.status, resp.headers);
    text.push_str(&String::from_utf8_lossy(&resp.body));
    if let Ok(mut seen) = SEEN.lock() {
        seen.push(text);
    }
}

/// Raises this test process's soft descriptor limit to the hard limit (many sockets per test).
pub fn raise_fd_limit() {
    unsafe {
        let mut lim: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

/// A scratch directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new() -> TempDir {
        let p = std::env::temp_dir().join(format!(
            "modelmux-test-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A running modelmux process.
pub struct Proxy {
    child: Child,
    pub addr: SocketAddr,
    logs: Arc<Mutex<Vec<String>>>,
    pub config_path: PathBuf,
    secrets: Vec<String>,
    _dir: TempDir,
}

/// Every string that must never leave the proxy: apiKey values and header values in a config.
pub fn secrets_of(config: &str) -> Vec<String> {
    let v: serde_json::Value = serde_json::from_str(config).unwrap_or(serde_json::Value::Null);
    let mut out = Vec::new();
    if let Some(keys) = v.get("proxyKeys").and_then(|k| k.as_array()) {
        for k in keys {
            if let Some(k) = k.as_str().or_else(|| k.get("key").and_then(|k| k.as_str())) {
                out.push(k.to_string());
            }
        }
    }
    if let Some(eps) = v.get("endpoints").and_then(|e| e.as_object()) {
        for ep in eps.values() {
            if let Some(k) = ep.get("apiKey").and_then(|k| k.as_str()) {
                if k.len() >= 8 && !k.contains("${") {
                    out.push(k.to_string());
                }
            }
        }
    }
    out
}

impl Proxy {
    pub fn start(config: &str) -> Proxy {
        Proxy::start_with(config, &[], &[])
    }

    pub fn start_with(config: &str, env: &[(&str, &str)], args: &[&str]) -> Proxy {
        Proxy::try_start(config, env, args)
            .unwrap_or_else(|logs| panic!("proxy did not start:\n{}", logs.join("\n")))
    }

    /// Starts the binary; `Err` carries its output if it exits or stays silent.
    pub fn try_start(
        config: &str,
        env: &[(&str, &str)],
        args: &[&str],
    ) -> Result<Proxy, Vec<String>> {
        let dir = TempDir::new();
        let config_path = dir.0.join("config.json");
        std::fs::write(&config_path, config).unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_modelmux"));
        cmd.args(["--host", "127.0.0.1", "--port", "0", "--config"])
            .arg(&config_path)
            .args(args)
            .env_remove("CM_OPEN_WEBUI_PROXY_PORT")
            .env_remove("CM_OPEN_WEBUI_PROXY_CONFIG_FILE")
            // The sandbox or CI may set proxies; tests talk to loopback backends directly.
            .env_remove("HTTP_PROXY")
            .env_remove("http_proxy")
            .env_remove("HTTPS_PROXY")
            .env_remove("https_proxy")
            .env_remove("ALL_PROXY")
            .env_remove("all_proxy")
            .env("CM_OPEN_WEBUI_PROXY_LOG_LEVEL", "debug")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn modelmux");
        let logs = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel();
        let readers: Vec<_> = [
            Box::new(child.stderr.take().unwrap()) as Box<dyn Read + Send>,
            Box::new(child.stdout.take().unwrap()) as Box<dyn Read + Send>,
        ]
        .into_iter()
        .map(|stream| {
            let logs = Arc::clone(&logs);
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines() {
                    let Ok(line) = line else { break };
                    if let Some(rest) = line.split("listening on http://").nth(1) {
                        let addr = rest.split_whitespace().next().unwrap_or("").to_string();
                        let _ = tx.send(addr);
                    }
                    logs.lock().unwrap().push(line);
                }
            })
        })
        .collect();
        drop(tx);
        let addr = match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(a) => a.parse().expect("listen address"),
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                // The readers end at the pipes' EOF: then every line the process printed is in.
                for r in readers {
                    let _ = r.join();
                }
                return Err(logs.lock().unwrap().clone());
            }
        };
        Ok(Proxy {
            child,
            addr,
            logs,
            config_path,
            secrets: secrets_of(config)
                .into_iter()
                .chain(
                    env.iter()
                        .filter(|(k, _)| k.ends_with("_KEY") || k.ends_with("_KEYS"))
                        .flat_map(|(_, v)| {
                            v.split(',')
                                .filter_map(|e| e.split('=').next())
                                .map(|k| k.trim().to_string())
                                .filter(|k| k.len() >= 8)
                                .collect::<Vec<_>>()
                        }),
                )
                .collect(),
            _dir: dir,
        })
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn logs(&self) -> Vec<String> {
        self.logs.lock().unwrap().clone()
    }

    /// Waits until a log line containing `needle` appears.
    pub fn wait_log(&self, needle: &str, within: Duration) -> Option<String> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Some(l) = self.logs().into_iter().find(|l| l.contains(needle)) {
                return Some(l);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        None
    }

    /// Waits until the log lines seen so far satisfy `done`; panics naming `what` after `within`.
    pub fn wait_logs(&self, what: &str, within: Duration, done: impl Fn(&[String]) -> bool) {
        wait_until(what, within, || done(&self.logs()));
    }

    /// How many log lines so far contain `needle`.
    pub fn count_logs(&self, needle: &str) -> usize {
        self.logs().iter().filter(|l| l.contains(needle)).count()
    }

    pub fn write_config(&self, config: &str) {
        std::fs::write(&self.config_path, config).unwrap();
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for the process to exit; `Some(code)` (None inside if killed by a signal).
    pub fn wait_exit(&mut self, within: Duration) -> Option<Option<i32>> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status.code());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// Asserts no configured secret appears in anything the proxy printed.
    pub fn assert_no_secret_logged(&self, extra: &[&str]) {
        let logs = self.logs();
        for s in self
            .secrets
            .iter()
            .map(String::as_str)
            .chain(extra.iter().copied())
        {
            for l in &logs {
                assert!(!l.contains(s), "secret leaked into log line: {}", l);
            }
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if !std::thread::panicking() {
            self.assert_no_secret_logged(&[]);
        }
    }
}

/// Polls `done` every 10 ms until it holds; panics naming `what` once `within` has passed.
/// Tests wait on the condition they need instead of sleeping a fixed time and hoping.
pub fn wait_until(what: &str, within: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !done() {
        assert!(
            Instant::now() < deadline,
            "gave up after {:?} waiting for {}",
            within,
            what
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A proxy serving one model `m` (backend model `real-m`, backend key `key`) on `backend_url`.
pub fn one_model_proxy(backend_url: &str, key: &str, env: &[(&str, &str)]) -> Proxy {
    Proxy::start_with(&config_for(&[("m", backend_url, key, "real-m")]), env, &[])
}

/// A parsed HTTP response.
#[derive(Debug, Clone)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    /// Body with chunked framing removed.
    pub body: Vec<u8>,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({}): {}", e, String::from_utf8_lossy(&self.body)))
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    /// Asserts the OpenAI error shape and returns the error object.
    pub fn error(&self, status: u16) -> serde_json::Value {
        assert_eq!(self.status, status, "body: {}", self.text());
        let v = self.json();
        let e = v
            .get("error")
            .unwrap_or_else(|| panic!("no error object: {}", v))
            .clone();
        for k in ["message", "type", "param", "code"] {
            assert!(e.get(k).is_some(), "error lacks {}: {}", k, e);
        }
        assert!(e["message"]
            .as_str()
            .map(|m| !m.is_empty())
            .unwrap_or(false));
        e
    }
}

/// Reads one response from a stream (Content-Length, chunked, or until close).
pub fn read_response(stream: &mut dyn BufRead, head_only: bool) -> std::io::Result<Resp> {
    let mut line = String::new();
    stream.read_line(&mut line)?;
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("bad status line {:?}", line),
            )
        })?;
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        stream.read_line(&mut h)?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((n, v)) = h.split_once(':') {
            headers.push((n.trim().to_string(), v.trim().to_string()));
        }
    }
    let get = |name: &str| {
        headers
            .iter()
            .find(|(n, _): &&(String, String)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
    };
    let mut body = Vec::new();
    if head_only || status == 204 || status == 304 || (100..200).contains(&status) {
    } else if get("transfer-encoding")
        .map(|v| v.eq_ignore_ascii_case("chunked"))
        .unwrap_or(false)
    {
        loop {
            let mut size = String::new();
            stream.read_line(&mut size)?;
            let n = usize::from_str_radix(size.trim().split(';').next().unwrap_or(""), 16)
                .map_err(|_| {
                    std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        format!("bad chunk size {:?}", size),
                    )
                })?;
            if n == 0 {
                let mut end = String::new();
                stream.read_line(&mut end)?;
                break;
            }
            let mut chunk = vec![0; n + 2];
            stream.read_exact(&mut chunk)?;
            body.extend_from_slice(&chunk[..n]);
        }
    } else if let Some(len) = get("content-length") {
        let n: usize = len.parse().unwrap();
        body.resize(n, 0);
        stream.read_exact(&mut body)?;
    } else {
        stream.read_to_end(&mut body)?;
    }
    Ok(Resp {
        status,
        headers,
        body,
    })
}

/// Opens a connection with a generous read timeout so a hung proxy fails the test.
pub fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s
}

/// Sends one request (with `Connection: close`) and reads the response.
pub fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Resp {
    let mut s = connect(addr);
    let mut text = format!(
        "{} {} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n",
        method, path, addr
    );
    for (n, v) in headers {
        text.push_str(&format!("{}: {}\r\n", n, v));
    }
    if !body.is_empty() || method == "POST" {
        text.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    text.push_str("\r\n");
    s.write_all(text.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    read_response(&mut BufReader::new(s), method == "HEAD").unwrap()
}

pub fn get(addr: SocketAddr, path: &str) -> Resp {
    request(addr, "GET", path, &[], b"")
}

pub fn post_json(addr: SocketAddr, path: &str, body: &str) -> Resp {
    request(
        addr,
        "POST",
        path,
        &[
            ("Content-Type", "application/json"),
            ("Authorization", "Bearer client-token-XYZ"),
        ],
        body.as_bytes(),
    )
}

/// A chat request body with one user message.
pub fn chat_body(model: &str, content: &str, stream: bool) -> String {
    serde_json::json!({"model": model, "messages": [{"role": "user", "content": content}], "stream": stream}).to_string()
}

/// Config JSON for (id, url, key, actual) tuples.
pub fn config_for(eps: &[(&str, &str, &str, &str)]) -> String {
    let mut m = serde_json::Map::new();
    for (id, url, key, actual) in eps {
        m.insert(
            id.to_string(),
            serde_json::json!({"displayName": format!("{} (display)", id), "url": url, "apiKey": key, "actualModelName": actual}),
        );
    }
    serde_json::json!({"endpoints": m}).to_string()
}

/// Seconds since the Unix epoch now.
pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Waits until more than `need` seconds are left in the current UTC minute, so every request
/// of a test falls in one fixed window (day and month windows end on a minute too).
pub fn room_in_this_minute(need: u64) {
    assert!(need < 50);
    wait_until(
        "room in the current UTC minute",
        Duration::from_secs(need + 2),
        || 60 - now_secs() % 60 > need,
    );
}

/// Adds `extra`'s fields to the object `into` (a config under construction).
pub fn merge(into: &mut serde_json::Value, extra: serde_json::Value) {
    if let (serde_json::Value::Object(into), serde_json::Value::Object(extra)) = (into, extra) {
        into.extend(extra);
    }
}

/// The usage ledger's lines, parsed (none when the file is not there yet).
pub fn ledger(path: &std::path::Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("torn line {:?}: {}", l, e)))
        .collect()
}

/// What `GET /usage?by=user` answers for these ledger lines (of any number of ledgers): the
/// totals per user, sorted by user, in its exact shape.
pub fn usage_by_user(lines: &[serde_json::Value]) -> serde_json::Value {
    use std::collections::BTreeMap;
    const OUTCOMES: [&str; 5] = [
        "complete",
        "client_gone",
        "upstream_failed",
        "error",
        "refused",
    ];
    let mut users: BTreeMap<String, [u64; 10]> = BTreeMap::new();
    for l in lines {
        let user = l["user"].as_str().expect("a ledger line names its user");
        let sums = users.entry(user.to_string()).or_default();
        sums[0] += 1;
        for (i, f) in [
            "prompt_tokens",
            "completion_tokens",
            "cached_tokens",
            "reasoning_tokens",
        ]
        .iter()
        .enumerate()
        {
            sums[1 + i] += l[f].as_u64().unwrap_or(0);
        }
        if let Some(i) = OUTCOMES.iter().position(|o| l["outcome"] == *o) {
            sums[5 + i] += 1;
        }
    }
    let data: Vec<serde_json::Value> = users
        .into_iter()
        .map(|(user, s)| {
            let by_outcome: serde_json::Map<String, serde_json::Value> = OUTCOMES
                .iter()
                .enumerate()
                .map(|(i, o)| (o.to_string(), s[5 + i].into()))
                .collect();
            serde_json::json!({"user": user, "requests": s[0], "prompt_tokens": s[1],
                "completion_tokens": s[2], "cached_tokens": s[3], "reasoning_tokens": s[4],
                "requests_by_outcome": by_outcome})
        })
        .collect();
    serde_json::json!({"object": "list", "data": data})
}
