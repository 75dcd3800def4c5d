//! Issue 21, item 4, with real parts: three modelmux replicas behind nginx (round robin, as a
//! Kubernetes Service spreads requests) on one redis-server. A requests-per-minute budget and a
//! token budget hold exactly across the replicas under concurrent load; `/usage` from any replica
//! shows the same totals, the sum of the three ledgers; Redis restarted mid-run keeps the
//! documented failure mode (admitted open, `/usage` 503) and counting resumes; killing a replica
//! mid-stream loses no ledger line of a finished request.
//!
//! Needs `redis-server` and nginx (Debian packages `redis-server`, `nginx-light`; `.ci/run`
//! installs both): the test fails, not skips, without them. No assertion on timing: waits are
//! for conditions, with bounds generous enough for a loaded 2-core machine.

mod support;

use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use support::mock_backend::{Behavior, MockBackend};
use support::redis::{free_port, RedisServer};
use support::*;

const KEY: &str = "sk-replicas-backend-key-7c6d";
const ADMIN: &str = "admin-key-replicas-4e3f2a";
/// Requests a minute per user on model `capped`, across all replicas.
const RPM: usize = 10;
/// Tokens a day for user `tok`, across all replicas.
const TOKENS: u64 = 3000;
const PATIENT: Duration = Duration::from_secs(30);

/// nginx in front of the replicas: one process (`master_process off`, so the pid this test holds
/// is the one serving), round robin over `upstream`, no buffering (streams pass as they come).
struct Nginx {
    child: Child,
    addr: SocketAddr,
    _dir: TempDir,
}

impl Nginx {
    fn start(replicas: &[SocketAddr]) -> Nginx {
        let binary = ["/usr/sbin/nginx", "/usr/bin/nginx", "/usr/local/sbin/nginx"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())
            .expect("nginx is needed: apt-get install -y nginx-light (.ci/run does)");
        let dir = TempDir::new();
        let d = dir.0.display().to_string();
        let port = free_port();
        let servers: String = replicas
            .iter()
            .map(|a| format!("        server {};\n", a))
            .collect();
        let conf = format!(
            "daemon off;\nmaster_process off;\nworker_processes 1;\npid {d}/nginx.pid;\n\
             error_log {d}/error.log warn;\nevents {{ worker_connections 1024; }}\nhttp {{\n\
             \x20   access_log off;\n    client_body_temp_path {d}/body;\n\
             \x20   proxy_temp_path {d}/proxy;\n    fastcgi_temp_path {d}/fastcgi;\n\
             \x20   uwsgi_temp_path {d}/uwsgi;\n    scgi_temp_path {d}/scgi;\n\
             \x20   upstream modelmux {{\n{servers}        keepalive 16;\n    }}\n\
             \x20   server {{\n        listen 127.0.0.1:{port};\n        location / {{\n\
             \x20           proxy_pass http://modelmux;\n            proxy_http_version 1.1;\n\
             \x20           proxy_set_header Connection \"\";\n            proxy_buffering off;\n\
             \x20           proxy_read_timeout 120s;\n        }}\n    }}\n}}\n"
        );
        let path = dir.0.join("nginx.conf");
        std::fs::write(&path, conf).unwrap();
        let child = Command::new(binary)
            .arg("-p")
            .arg(&dir.0)
            .arg("-c")
            .arg(&path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nginx");
        let mut n = Nginx {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            _dir: dir,
        };
        wait_until("nginx answers /health", PATIENT, || {
            if let Ok(Some(status)) = n.child.try_wait() {
                let log = std::fs::read_to_string(n._dir.0.join("error.log")).unwrap_or_default();
                panic!("nginx exited ({}): {}", status, log);
            }
            TcpStream::connect(n.addr).is_ok() && get(n.addr, "/health").status == 200
        });
        n
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A replica named `name`: models `m` (no budget) and `capped` on `backend`, the shared store,
/// its own ledger file.
fn replica(name: &str, backend: &str, redis: &str, ledger: &std::path::Path) -> Proxy {
    let cfg = json!({
        "endpoints": {
            "m": {"url": backend, "apiKey": KEY},
            "capped": {"url": backend, "apiKey": KEY},
        },
        "store": redis,
        "usageLog": ledger.display().to_string(),
        // A loaded test machine can stall a debug build longer than the 250 ms default, and a
        // timeout would admit a request unchecked.
        "limitsStoreTimeoutMs": 3000,
        "limitsStoreRetrySecs": 1,
        "limits": [
            {"match": {"user": "*", "model": "capped"}, "requestsPerMinute": RPM},
            {"match": {"user": "tok"}, "tokensPerDay": TOKENS},
        ],
    });
    let env = [
        ("CM_OPEN_WEBUI_PROXY_ADMIN_KEY", ADMIN),
        ("CM_OPEN_WEBUI_PROXY_REPLICA", name),
        ("CM_OPEN_WEBUI_PROXY_LOG_LEVEL", "warn"),
    ];
    Proxy::start_with(&cfg.to_string(), &env, &[])
}

fn body(model: &str, user: &str, content: &str, extra: Value) -> String {
    let mut b = json!({"model": model, "user": user,
                       "messages": [{"role": "user", "content": content}]});
    if let (Value::Object(b), Value::Object(extra)) = (&mut b, extra) {
        b.extend(extra);
    }
    b.to_string()
}

fn chat(addr: SocketAddr, id: &str, body: &str) -> Resp {
    request(
        addr,
        "POST",
        "/v1/chat/completions",
        &[("Content-Type", "application/json"), ("X-Request-Id", id)],
        body.as_bytes(),
    )
}

fn admin_get(addr: SocketAddr, path: &str) -> Resp {
    request(
        addr,
        "GET",
        path,
        &[("Authorization", &format!("Bearer {}", ADMIN))],
        b"",
    )
}

fn metric(p: &Proxy, series: &str) -> Option<f64> {
    get(p.addr, "/metrics").text().lines().find_map(|l| {
        l.strip_prefix(series)
            .and_then(|rest| rest.strip_prefix(' '))
            .and_then(|v| v.trim().parse().ok())
    })
}

/// `n` requests at once through `addr`; their statuses in order.
fn burst(addr: SocketAddr, n: usize, make: impl Fn(usize) -> (String, String) + Sync) -> Vec<u16> {
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..n)
            .map(|i| {
                let make = &make;
                s.spawn(move || {
                    let (id, b) = make(i);
                    chat(addr, &id, &b).status
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

struct Cluster {
    redis: RedisServer,
    replicas: Vec<Proxy>,
    ledgers: Vec<std::path::PathBuf>,
    nginx: Nginx,
    _backend: MockBackend,
    _dir: TempDir,
}

impl Cluster {
    fn start() -> Cluster {
        let redis = RedisServer::start();
        // Streams take a while (killed mid-way below); plain answers are immediate.
        let backend = MockBackend::start(Behavior {
            chunk_delay: Duration::from_millis(20),
            ..Behavior::default()
        });
        let dir = TempDir::new();
        let ledgers: Vec<_> = (1..=3)
            .map(|i| dir.0.join(format!("usage-r{}.jsonl", i)))
            .collect();
        let replicas: Vec<Proxy> = (0..3)
            .map(|i| {
                replica(
                    &format!("r{}", i + 1),
                    &backend.url(),
                    &redis.url(),
                    &ledgers[i],
                )
            })
            .collect();
        let addrs: Vec<SocketAddr> = replicas.iter().map(|p| p.addr).collect();
        let nginx = Nginx::start(&addrs);
        Cluster {
            redis,
            replicas,
            ledgers,
            nginx,
            _backend: backend,
            _dir: dir,
        }
    }

    /// Every ledger line of the three replicas, each checked to be whole JSON.
    fn lines(&self) -> Vec<Value> {
        self.ledgers.iter().flat_map(|l| ledger(l)).collect()
    }

    /// Waits for `n` ledger lines and for every one of them in the shared totals (the settle
    /// that corrects a request's tokens adds it to the totals in the same script).
    fn settled(&self, n: usize) -> Vec<Value> {
        let lines = self.wait_lines(n);
        let want = usage_by_user(&lines);
        wait_until("the shared totals are the ledgers' sum", PATIENT, || {
            admin_get(self.replicas[0].addr, "/usage?by=user").json() == want
        });
        lines
    }

    fn wait_lines(&self, n: usize) -> Vec<Value> {
        wait_until(
            "every answered request has its ledger line",
            PATIENT,
            || self.lines().len() >= n,
        );
        let lines = self.lines();
        assert_eq!(lines.len(), n, "one line per request");
        lines
    }
}

#[test]
fn three_replicas_behind_nginx_share_budgets_and_usage_through_one_redis() {
    let c = Cluster::start();
    let front = c.nginx.addr;
    room_in_this_minute(40);

    // A requests-per-minute budget, 3x over-asked at once through the round robin: exactly the
    // budget is served, wherever each request lands.
    let statuses = burst(front, 3 * RPM, |i| {
        let b = body("capped", "rpm", "hi", json!({}));
        (format!("rpm-{}", i), b)
    });
    assert_eq!(
        statuses.iter().filter(|&&s| s == 200).count(),
        RPM,
        "{:?}",
        statuses
    );
    assert_eq!(
        statuses.iter().filter(|&&s| s == 429).count(),
        2 * RPM,
        "{:?}",
        statuses
    );
    let mut sent = statuses.len();
    let lines = c.wait_lines(sent);
    for r in ["r1", "r2", "r3"] {
        assert!(
            lines.iter().any(|l| l["replica"] == r),
            "round robin reached {}",
            r
        );
    }

    // A token budget: a burst, then one request at a time until one is refused. What was
    // served never passes the budget, and once nothing is in flight the budget is used up to
    // less than one request's reservation: not overspent, not lost to stale reservations.
    let content = vec!["w"; 20].join(" ");
    let tok = body("m", "tok", &content, json!({"max_tokens": 30}));
    let estimate = (tok.len() as u64).div_ceil(4) + 30;
    let statuses = burst(front, 24, |i| (format!("tok-{}", i), tok.clone()));
    assert!(
        statuses.iter().all(|&s| s == 200 || s == 429),
        "{:?}",
        statuses
    );
    sent += statuses.len();
    // A refusal can come while an answered request has not settled yet (its settle lands just
    // after its answer, with its estimate still reserved): then, once everything has settled,
    // there is room for one more, which must be served.
    let spent_of = |lines: &[Value]| -> u64 {
        lines
            .iter()
            .filter(|l| l["user"] == "tok" && l["outcome"] == "complete")
            .map(|l| {
                l["prompt_tokens"].as_u64().unwrap() + l["completion_tokens"].as_u64().unwrap()
            })
            .sum()
    };
    let mut spent = 0;
    for i in 0..200 {
        let r = chat(front, &format!("tok-seq-{}", i), &tok);
        sent += 1;
        match r.status {
            200 => continue,
            429 => assert_eq!(r.error(429)["code"], "insufficient_quota"),
            other => panic!("{}: {}", other, r.text()),
        }
        spent = spent_of(&c.settled(sent));
        assert!(spent <= TOKENS, "spent {} of {}", spent, TOKENS);
        if TOKENS - spent < estimate {
            break;
        }
    }
    assert!(
        TOKENS - spent < estimate,
        "spent {} of {}, a request reserves {}",
        spent,
        TOKENS,
        estimate
    );
    let lines = c.settled(sent);
    // Every replica reports the same budget left: the ledgers' sum, settled.
    for p in &c.replicas {
        let u = admin_get(p.addr, "/usage?user=tok").json();
        let left = u["limits"]
            .as_array()
            .unwrap()
            .iter()
            .find(|b| b["limit"] == "tokens_per_day")
            .map(|b| b["remaining"].as_u64().unwrap());
        assert_eq!(left, Some(TOKENS - spent), "{}", u);
    }

    // /usage from any replica (and through nginx): the same totals, the three ledgers' sum.
    let want = usage_by_user(&lines);
    for addr in [
        c.replicas[0].addr,
        c.replicas[1].addr,
        c.replicas[2].addr,
        front,
    ] {
        assert_eq!(admin_get(addr, "/usage?by=user").json(), want);
    }

    let mut c = c;
    let sent = redis_restarted_mid_run(&mut c, sent);
    killed_mid_stream(c, sent);
}

/// Redis stops and comes back empty while requests keep coming through nginx: they are
/// admitted open (the default `limitsStoreFailure`), `/usage` says 503 rather than answer one
/// replica's share, and once Redis is back, budgets hold across the replicas again and the
/// totals count every request again. Returns the requests sent so far.
fn redis_restarted_mid_run(c: &mut Cluster, mut sent: usize) -> usize {
    let front = c.nginx.addr;
    let stop = std::sync::atomic::AtomicBool::new(false);
    let steady = std::thread::scope(|s| {
        let load = s.spawn(|| {
            let mut statuses = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let b = body("m", "steady", "hi", json!({}));
                let id = format!("steady-{}", statuses.len());
                statuses.push(chat(front, &id, &b).status);
            }
            statuses
        });
        std::thread::sleep(Duration::from_millis(300));
        c.redis.stop();
        // Down: /usage on every replica says so.
        for p in &c.replicas {
            let r = admin_get(p.addr, "/usage?by=user");
            assert_eq!(r.error(503)["code"], "usage_store_unavailable");
        }
        std::thread::sleep(Duration::from_millis(700));
        c.redis.restart();
        // Back: each replica's breaker closes at its next request after the retry interval.
        for p in &c.replicas {
            wait_until("the replica uses Redis again", PATIENT, || {
                metric(p, "modelmux_limits_store_breaker_open") == Some(0.0)
            });
        }
        std::thread::sleep(Duration::from_millis(300));
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        load.join().unwrap()
    });
    assert!(steady.len() > 3, "{:?}", steady);
    assert!(
        steady.iter().all(|&s| s == 200),
        "admitted open: {:?}",
        steady
    );
    sent += steady.len();
    room_in_this_minute(20);
    let statuses = burst(front, 3 * RPM, |i| {
        (
            format!("after-{}", i),
            body("capped", "after", "hi", json!({})),
        )
    });
    assert_eq!(
        statuses.iter().filter(|&&s| s == 200).count(),
        RPM,
        "{:?}",
        statuses
    );
    sent += statuses.len();
    let lines = c.wait_lines(sent);
    // Counting resumed: the new user's totals are exactly its ledger lines; the requests of the
    // outage are in the ledgers only; what Redis held before it restarted (without its
    // append-only file) is gone.
    let of = |user: &str| -> Vec<Value> {
        lines
            .iter()
            .filter(|l| l["user"] == user)
            .cloned()
            .collect()
    };
    let want_after = usage_by_user(&of("after"))["data"][0].clone();
    wait_until("the totals count the new requests", PATIENT, || {
        let u = admin_get(front, "/usage?by=user").json();
        u["data"].as_array().unwrap().contains(&want_after)
    });
    let u = admin_get(c.replicas[2].addr, "/usage?by=user").json();
    let rows = u["data"].as_array().unwrap();
    assert!(
        rows.iter()
            .all(|r| r["user"] != "tok" && r["user"] != "rpm"),
        "{}",
        u
    );
    let steady_counted = rows
        .iter()
        .find(|r| r["user"] == "steady")
        .map_or(0, |r| r["requests"].as_u64().unwrap());
    assert!(
        steady_counted <= of("steady").len() as u64,
        "{} counted, {} in the ledgers",
        steady_counted,
        of("steady").len()
    );
    sent
}

/// A replica killed (SIGKILL) while it relays a stream: every request answered before has its
/// ledger line, whole, in its replica's file; the other replicas' streams finish and are
/// recorded; the cut stream, never finished, has no line.
fn killed_mid_stream(mut c: Cluster, mut sent: usize) {
    let front = c.nginx.addr;
    for i in 0..9 {
        let r = chat(
            front,
            &format!("fin-{}", i),
            &body("m", "fin", "hi", json!({})),
        );
        assert_eq!(r.status, 200, "{}", r.text());
        sent += 1;
    }
    let words = vec!["w"; 150].join(" ");
    let stream_body = body("m", "streamer", &words, json!({"stream": true}));
    let mut streams = Vec::new();
    // Through the round robin until the third replica relays one.
    for i in 0..9 {
        streams.push(open_stream(front, &format!("stream-{}", i), &stream_body));
        let busy = |p: &Proxy| metric(p, "modelmux_in_flight_requests").unwrap_or(0.0) >= 1.0;
        if c.replicas.iter().all(busy) {
            break;
        }
    }
    assert!(
        metric(&c.replicas[2], "modelmux_in_flight_requests").unwrap_or(0.0) >= 1.0,
        "a stream on r3"
    );
    let victim = c.replicas.pop().unwrap();
    // SAFETY: a signal to the child process this test started.
    unsafe {
        libc::kill(victim.pid() as libc::pid_t, libc::SIGKILL);
    }
    let opened = streams.len();
    let finished: Vec<String> = streams
        .into_iter()
        .filter_map(|(id, mut s)| read_to_done(&mut s).then_some(id))
        .collect();
    assert!(!finished.is_empty(), "the other replicas' streams finish");
    assert!(
        finished.len() < opened,
        "the killed replica's stream was cut"
    );
    sent += finished.len();
    let lines = c.wait_lines(sent);
    let ids: Vec<&str> = lines
        .iter()
        .map(|l| l["request_id"].as_str().unwrap())
        .collect();
    for i in 0..9 {
        let id = format!("fin-{}", i);
        assert_eq!(ids.iter().filter(|x| **x == id).count(), 1, "{}", id);
    }
    assert!(
        ledger(&c.ledgers[2]).iter().any(|l| l["user"] == "fin"),
        "r3 served some of them before it was killed"
    );
    for id in &finished {
        assert!(ids.contains(&id.as_str()), "{}", id);
    }
    drop(victim);
}

/// Sends a streamed request and reads its head and first event; the open connection.
fn open_stream(addr: SocketAddr, id: &str, body: &str) -> (String, BufReader<TcpStream>) {
    let mut s = connect(addr);
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\
         Content-Type: application/json\r\nX-Request-Id: {}\r\nContent-Length: {}\r\n\r\n",
        id,
        body.len()
    );
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(body.as_bytes()).unwrap();
    let mut r = BufReader::new(s);
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    assert!(line.starts_with("HTTP/1.1 200"), "{}", line);
    while line != "\r\n" && !line.is_empty() {
        line.clear();
        r.read_line(&mut line).unwrap();
    }
    // The first event is through: the stream is under way.
    while !line.starts_with("data:") {
        line.clear();
        if r.read_line(&mut line).unwrap() == 0 {
            panic!("the stream ended before its first event");
        }
    }
    (id.to_string(), r)
}

/// Reads a stream to its end: true when it ended with `data: [DONE]`.
fn read_to_done(r: &mut BufReader<TcpStream>) -> bool {
    let mut rest = Vec::new();
    let _ = r.read_to_end(&mut rest);
    String::from_utf8_lossy(&rest).contains("data: [DONE]")
}
