//! Issue 11: who used what. Identity from Open WebUI's signed token and trusted headers, exact
//! token accounting on every path (stream usage asked for and hidden byte for byte, gzip, the
//! Responses API), the usage ledger across kill -9 and restart, `/usage` and `modelmux usage`.

mod support;

use ring::hmac;
use serde_json::{json, Value};
use std::io::Write;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use support::fake_backend::{chunk, FakeBackend, Step};
use support::mock_backend::{echo_stream_bytes, Behavior, MockBackend};
use support::*;

const KEY: &str = "sk-accounting-backend-key-71b2c3";
const SECRET: &str = "owui-jwt-secret-5f4e3d2c1b";
const ADMIN: &str = "admin-key-accounting-9a8b7c";

fn b64url(data: &[u8]) -> String {
    const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for c in data.chunks(3) {
        let n = c
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..=c.len() {
            out.push(A[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

/// A token as Open WebUI signs it with FORWARD_USER_INFO_HEADER_JWT_SECRET.
fn jwt(header: &Value, claims: &Value, secret: &str) -> String {
    let signed = format!(
        "{}.{}",
        b64url(header.to_string().as_bytes()),
        b64url(claims.to_string().as_bytes())
    );
    let tag = hmac::sign(
        &hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes()),
        signed.as_bytes(),
    );
    format!("{}.{}", signed, b64url(tag.as_ref()))
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn claims(sub: &str, exp_in: i64) -> Value {
    json!({"sub": sub, "email": format!("{}@example.org", sub), "name": "Ada", "role": "user",
           "iss": "open-webui", "iat": now() - 5, "exp": now() + exp_in})
}

/// The ledger's lines, parsed.
fn ledger(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("torn line {:?}: {}", l, e)))
        .collect()
}

/// Waits until the ledger holds `n` lines.
fn ledger_lines(path: &Path, n: usize) -> Vec<Value> {
    wait_until("the ledger lines", Duration::from_secs(5), || {
        ledger(path).len() >= n
    });
    ledger(path)
}

fn config(backend: &str, dir: &TempDir, extra_top: &str, extra_ep: &str) -> String {
    format!(
        r#"{{"endpoints":{{"m":{{"url":"{}","apiKey":"{}","actualModelName":"real-m"{}}}}},
            "usageLog":"{}"{}}}"#,
        backend,
        KEY,
        extra_ep,
        dir.0.join("usage.jsonl").display(),
        extra_top
    )
}

fn chat(p: &Proxy, headers: &[(&str, &str)], body: &str) -> Resp {
    let mut h = vec![("Content-Type", "application/json")];
    h.extend_from_slice(headers);
    request(p.addr, "POST", "/v1/chat/completions", &h, body.as_bytes())
}

#[test]
fn open_webui_tokens_are_verified_and_bad_ones_never_reach_a_backend() {
    let a = MockBackend::start(Behavior::default());
    let dir = TempDir::new();
    let p = Proxy::start(&config(
        &a.url(),
        &dir,
        &format!(r#","openWebUI":{{"jwtSecret":"{}"}}"#, SECRET),
        "",
    ));
    let hs = json!({"alg": "HS256", "typ": "JWT"});
    let good = jwt(&hs, &claims("user-ada", 300), SECRET);
    let r = chat(
        &p,
        &[("X-OpenWebUI-User-Jwt", &good)],
        &chat_body("m", "one two", false),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        a.requests()[0].header("x-openwebui-user-jwt"),
        None,
        "personal data stays here"
    );
    let forged = jwt(&hs, &claims("user-ada", 300), "not-the-secret");
    let expired = jwt(&hs, &claims("user-ada", -3600), SECRET);
    let none = format!(
        "{}.{}.",
        b64url(br#"{"alg":"none","typ":"JWT"}"#),
        b64url(claims("user-ada", 300).to_string().as_bytes())
    );
    let hs512 = jwt(&json!({"alg": "HS512"}), &claims("user-ada", 300), SECRET);
    let with = |k: &str, v: Value| {
        let mut c = claims("user-ada", 300);
        c[k] = v;
        jwt(&hs, &c, SECRET)
    };
    let no_exp = {
        let mut c = claims("user-ada", 300);
        c.as_object_mut().unwrap().remove("exp");
        jwt(&hs, &c, SECRET)
    };
    let string_exp = with("exp", json!((now() + 300).to_string()));
    let float_expired = with("exp", json!(now() as f64 - 3600.5));
    let not_yet = with("nbf", json!(now() + 3600));
    let long_sub = with("sub", json!("u".repeat(129)));
    for (what, token) in [
        ("forged", &forged),
        ("expired", &expired),
        ("alg none", &none),
        ("HS512", &hs512),
        ("no exp", &no_exp),
        ("string exp", &string_exp),
        ("float exp in the past", &float_expired),
        ("nbf in the future", &not_yet),
    ] {
        let r = chat(
            &p,
            &[("X-OpenWebUI-User-Jwt", token)],
            &chat_body("m", "x", false),
        );
        let e = r.error(401);
        assert_eq!(e["code"], "invalid_user_token", "{}", what);
        assert!(
            !r.text().contains(token.as_str()),
            "the token is not echoed"
        );
    }
    let r = chat(
        &p,
        &[("X-OpenWebUI-User-Jwt", &long_sub)],
        &chat_body("m", "x", false),
    );
    assert_eq!(
        r.text(),
        r#"{"error":{"message":"The X-OpenWebUI-User-Jwt token's sub is longer than 128 characters.","type":"invalid_request_error","param":null,"code":"user_too_long"}}"#
    );
    assert_eq!(r.status, 400);
    assert_eq!(
        a.requests().len(),
        1,
        "refused tokens never reach the backend"
    );
    // One served, eight bad tokens (401) and one over-long id (400), each recorded.
    let lines = ledger_lines(&dir.0.join("usage.jsonl"), 10);
    assert_eq!(lines.len(), 10);
    // Lines are written as requests finish: the served one may land after a refusal.
    let (served, refused): (Vec<&Value>, Vec<&Value>) =
        lines.iter().partition(|l| l["status"] == 200);
    assert_eq!(served.len(), 1, "{:?}", lines);
    assert_eq!(served[0]["user"], "user-ada");
    assert_eq!(served[0]["key"], "anonymous");
    assert_eq!(served[0]["prompt_tokens"], 2);
    assert_eq!(served[0]["completion_tokens"], 2);
    assert_eq!(served[0]["outcome"], "complete");
    // Refused tokens are recorded as refusals, under the key (their user is unknown), with 0
    // tokens.
    assert_eq!(
        refused.iter().filter(|l| l["status"] == 400).count(),
        1,
        "the over-long id"
    );
    for l in refused {
        let status = if l["status"] == 400 { 400 } else { 401 };
        assert_eq!(
            (&l["user"], &l["key"], &l["status"], &l["outcome"]),
            (
                &json!("anonymous"),
                &json!("anonymous"),
                &json!(status),
                &json!("refused")
            ),
            "{}",
            l
        );
        assert_eq!(
            (&l["prompt_tokens"], &l["completion_tokens"]),
            (&json!(0), &json!(0))
        );
    }
    p.assert_no_secret_logged(&[SECRET, &good]);
}

#[test]
fn only_trusted_keys_may_name_users_in_plain_headers() {
    let a = MockBackend::start(Behavior::default());
    let dir = TempDir::new();
    let keys = r#","proxyKeys":[{"key":"sk-owui-key-111111","name":"openwebui","trustUserHeaders":true},{"key":"sk-script-key-222222","name":"scripts"},"sk-bare-key-333333"]"#;
    let p = Proxy::start(&config(&a.url(), &dir, keys, ""));
    let who = [
        ("Bearer sk-owui-key-111111", None),
        ("Bearer sk-script-key-222222", None),
        ("Bearer sk-script-key-222222", Some("bob")),
        ("Bearer sk-bare-key-333333", None),
    ];
    for (auth, body_user) in who {
        let mut body: Value = serde_json::from_str(&chat_body("m", "hi", false)).unwrap();
        if let Some(u) = body_user {
            body["user"] = u.into();
        }
        let r = chat(
            &p,
            &[
                ("Authorization", auth),
                ("X-OpenWebUI-User-Id", "alice%20w"),
                ("X-OpenWebUI-User-Name", "Alice%20W%C3%A9"),
            ],
            &body.to_string(),
        );
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let lines = ledger_lines(&dir.0.join("usage.jsonl"), 4);
    // Lines are in the order requests finish: a request's line is written after its answer,
    // so the next request (on another connection) may finish first.
    let mut got: Vec<(&str, &str)> = lines
        .iter()
        .map(|l| (l["user"].as_str().unwrap(), l["key"].as_str().unwrap()))
        .collect();
    got.sort();
    assert_eq!(
        got,
        [
            ("alice w", "openwebui"),
            ("key-1", "key-1"),
            ("scripts", "scripts"),
            ("scripts", "scripts"),
        ]
    );
    // The untrusted key's body user is kept only as the end user's label.
    let labels: Vec<&Value> = lines.iter().map(|l| &l["end_user"]).collect();
    assert_eq!(
        labels.iter().filter(|l| **l == "bob").count(),
        1,
        "{:?}",
        labels
    );
    assert_eq!(
        labels.iter().filter(|l| l.is_null()).count(),
        3,
        "{:?}",
        labels
    );
    for l in &lines {
        let text = l.to_string();
        assert!(!text.contains("sk-"), "no key in the ledger: {}", text);
        assert!(!text.contains("\"hi\""), "no message content: {}", text);
    }
}

#[test]
fn stream_usage_is_asked_for_and_hidden_from_clients_that_did_not_ask() {
    let a = MockBackend::start(Behavior {
        include_usage_chunk: true,
        ..Behavior::default()
    });
    let dir = TempDir::new();
    let p = Proxy::start(&config(&a.url(), &dir, "", ""));
    let r = chat(&p, &[], &chat_body("m", "alpha beta gamma", true));
    assert_eq!(r.status, 200);
    assert_eq!(
        r.body,
        echo_stream_bytes("real-m", "alpha beta gamma", false),
        "byte for byte what the client gets without injection"
    );
    let sent = a.requests()[0].json().unwrap();
    assert_eq!(sent["stream_options"]["include_usage"], true);
    // A client that asked for usage gets the chunk.
    let asked = json!({"model":"m","stream":true,"stream_options":{"include_usage":true},
                       "messages":[{"role":"user","content":"alpha beta gamma"}]});
    let r = chat(&p, &[], &asked.to_string());
    assert_eq!(
        r.body,
        echo_stream_bytes("real-m", "alpha beta gamma", true)
    );
    let lines = ledger_lines(&dir.0.join("usage.jsonl"), 2);
    for l in &lines {
        assert_eq!(
            (
                &l["prompt_tokens"],
                &l["completion_tokens"],
                &l["estimated"]
            ),
            (&json!(3), &json!(3), &json!(false))
        );
    }
}

/// An OpenAI-like stream: with include_usage every chunk carries `"usage":null` and a last
/// chunk carries the usage with empty choices.
fn openai_like_stream(with_usage: bool) -> Vec<u8> {
    let u = |s: &str| {
        if with_usage {
            s.replace("}]}", "}],\"usage\":null}")
        } else {
            s.to_string()
        }
    };
    let mut out = String::new();
    out += &format!(
        "data: {}\n\n",
        u(
            r#"{"id":"c1","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":"Hel"}}]}"#
        )
    );
    out += &format!(
        "data: {}\n\n",
        u(
            r#"{"id":"c1","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":"lo"},"finish_reason":"stop"}]}"#
        )
    );
    if with_usage {
        out += "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"choices\":[],\"usage\":{\"prompt_tokens\":12,\"completion_tokens\":2,\"prompt_tokens_details\":{\"cached_tokens\":8},\"completion_tokens_details\":{\"reasoning_tokens\":1}}}\n\n";
    }
    out += "data: [DONE]\n\n";
    out.into_bytes()
}

#[test]
fn openai_style_usage_null_members_and_usage_chunk_are_removed_exactly() {
    let f = FakeBackend::start(|req| {
        let v: Value = serde_json::from_slice(&req.body).unwrap_or_default();
        let with = v["stream_options"]["include_usage"] == true;
        let body = openai_like_stream(with);
        // Split mid-event so the filter must hold an unfinished event back.
        let (x, y) = body.split_at(body.len() / 2 + 3);
        vec![
            Step::Send(
                b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
                    .to_vec(),
            ),
            Step::Send(chunk(x)),
            Step::Pause(Duration::from_millis(50)),
            Step::Send(chunk(y)),
            Step::Send(b"0\r\n\r\n".to_vec()),
        ]
    });
    let dir = TempDir::new();
    let p = Proxy::start(&config(&f.url, &dir, "", ""));
    let r = chat(&p, &[], &chat_body("m", "hi", true));
    assert_eq!(r.status, 200);
    assert_eq!(
        String::from_utf8_lossy(&r.body),
        String::from_utf8_lossy(&openai_like_stream(false))
    );
    let l = &ledger_lines(&dir.0.join("usage.jsonl"), 1)[0];
    assert_eq!(
        (
            &l["prompt_tokens"],
            &l["completion_tokens"],
            &l["cached_tokens"],
            &l["reasoning_tokens"]
        ),
        (&json!(12), &json!(2), &json!(8), &json!(1))
    );
}

#[test]
fn without_injection_or_reported_usage_tokens_are_estimated_and_marked() {
    let a = MockBackend::start(Behavior::default());
    let dir = TempDir::new();
    let p = Proxy::start(&config(&a.url(), &dir, "", r#","injectStreamUsage":false"#));
    let r = chat(&p, &[], &chat_body("m", "one two three four", true));
    assert_eq!(r.status, 200);
    assert!(a.requests()[0]
        .json()
        .unwrap()
        .get("stream_options")
        .is_none());
    let l = &ledger_lines(&dir.0.join("usage.jsonl"), 1)[0];
    assert_eq!(l["estimated"], true);
    // "one two three four" is 18 characters: about 5 tokens.
    assert_eq!(l["completion_tokens"], 5);
    assert!(l["prompt_tokens"].as_u64().unwrap() > 0);
}

/// A gzip member holding `data` (stored blocks: no compressor needed in the test).
fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

#[test]
fn gzip_answers_and_the_responses_api_are_counted() {
    let completed = json!({"id":"resp_1","object":"response","status":"completed",
        "usage":{"input_tokens":21,"input_tokens_details":{"cached_tokens":5},
                 "output_tokens":9,"output_tokens_details":{"reasoning_tokens":4},"total_tokens":30}});
    let completed_for_fake = completed.clone();
    let f = FakeBackend::start(move |req| {
        let (ctype, body, gz) = if req.line.contains("/v1/embeddings") {
            let b = json!({"object":"list","data":[],"usage":{"prompt_tokens":7,"total_tokens":7}});
            ("application/json", b.to_string().into_bytes(), true)
        } else if req.body.windows(14).any(|w| w == b"\"stream\":true") {
            let ev = format!(
                "event: response.created\ndata: {{\"type\":\"response.created\"}}\n\nevent: response.output_text.delta\ndata: {{\"type\":\"response.output_text.delta\",\"delta\":\"Hi\"}}\n\nevent: response.completed\ndata: {}\n\n",
                json!({"type":"response.completed","response":completed_for_fake})
            );
            ("text/event-stream", ev.into_bytes(), false)
        } else {
            (
                "application/json",
                completed_for_fake.to_string().into_bytes(),
                false,
            )
        };
        let body = if gz { gzip(&body) } else { body };
        let head = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: {}\r\n{}Content-Length: {}\r\n\r\n",
            ctype,
            if gz { "Content-Encoding: gzip\r\n" } else { "" },
            body.len()
        );
        vec![Step::Send([head.into_bytes(), body].concat())]
    });
    let dir = TempDir::new();
    let p = Proxy::start(&config(&f.url, &dir, "", ""));
    let emb = request(
        p.addr,
        "POST",
        "/v1/embeddings",
        &[
            ("Content-Type", "application/json"),
            ("Accept-Encoding", "gzip"),
        ],
        br#"{"model":"m","input":"hello"}"#,
    );
    assert_eq!(emb.status, 200);
    assert_eq!(emb.header("content-encoding"), Some("gzip"));
    let mut plain = Vec::new();
    std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&emb.body[..]), &mut plain)
        .unwrap();
    assert_eq!(
        serde_json::from_slice::<Value>(&plain).unwrap()["usage"]["prompt_tokens"],
        7
    );
    for stream in [false, true] {
        let body = json!({"model":"m","input":"hi","stream":stream}).to_string();
        let r = request(
            p.addr,
            "POST",
            "/v1/responses",
            &[("Content-Type", "application/json")],
            body.as_bytes(),
        );
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let mut lines = ledger_lines(&dir.0.join("usage.jsonl"), 3);
    // In the order requests finish (see only_trusted_keys_may_name_users_in_plain_headers).
    let at = lines
        .iter()
        .position(|l| l["path"] == "/embeddings")
        .expect("the embeddings line");
    let embeddings = lines.remove(at);
    assert_eq!(embeddings["prompt_tokens"], json!(7));
    for l in &lines {
        assert_eq!(l["path"], "/responses");
        assert_eq!(
            (
                &l["prompt_tokens"],
                &l["completion_tokens"],
                &l["cached_tokens"],
                &l["reasoning_tokens"],
                &l["estimated"]
            ),
            (&json!(21), &json!(9), &json!(5), &json!(4), &json!(false))
        );
    }
}

fn kill9(p: &Proxy) {
    // SAFETY: a signal to the child process this test started.
    unsafe {
        libc::kill(p.pid() as libc::pid_t, libc::SIGKILL);
    }
}

#[test]
fn the_ledger_survives_kill_9_and_usage_agrees_with_the_backend_and_the_command() {
    let a = MockBackend::start(Behavior::default());
    let dir = TempDir::new();
    let log = dir.0.join("usage.jsonl");
    let keys =
        r#","proxyKeys":[{"key":"sk-owui-key-444444","name":"openwebui","trustUserHeaders":true}]"#;
    let cfg = config(&a.url(), &dir, keys, "");
    let env = [("CM_OPEN_WEBUI_PROXY_ADMIN_KEY", ADMIN)];
    let p = Proxy::start_with(&cfg, &env, &[]);
    // (user, words in the prompt): the mock echoes, so completion tokens equal prompt tokens.
    let traffic = [("ann", 2), ("ann", 3), ("ben", 4), ("ann", 1), ("ben", 5)];
    for (user, words) in traffic {
        let content = vec!["w"; words].join(" ");
        let r = chat(
            &p,
            &[
                ("Authorization", "Bearer sk-owui-key-444444"),
                ("X-OpenWebUI-User-Id", user),
            ],
            &chat_body("m", &content, false),
        );
        assert_eq!(r.status, 200);
    }
    ledger_lines(&log, traffic.len());
    kill9(&p);
    drop(p);
    let lines = ledger(&log);
    assert_eq!(lines.len(), traffic.len(), "no line lost, none torn");
    // Restart on the same ledger: the totals are rebuilt from it.
    let p = Proxy::start_with(&cfg, &env, &[]);
    let r = request(
        p.addr,
        "GET",
        "/usage?by=user,model&since=2000-01-01&until=2999-01-01",
        &[("Authorization", &format!("Bearer {}", ADMIN))],
        b"",
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let usage = r.json();
    assert_eq!(
        usage,
        json!({"object":"list","data":[
            {"user":"ann","model":"m","requests":3,"prompt_tokens":6,"completion_tokens":6,"cached_tokens":0,"reasoning_tokens":0,
             "requests_by_outcome":{"complete":3,"client_gone":0,"upstream_failed":0,"error":0,"refused":0}},
            {"user":"ben","model":"m","requests":2,"prompt_tokens":9,"completion_tokens":9,"cached_tokens":0,"reasoning_tokens":0,
             "requests_by_outcome":{"complete":2,"client_gone":0,"upstream_failed":0,"error":0,"refused":0}}
        ]})
    );
    // The same totals from the command, without a server, as JSON and as a table.
    let cmd = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_modelmux"))
            .arg("usage")
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "{:?}", out);
        String::from_utf8(out.stdout).unwrap()
    };
    let log_arg = log.display().to_string();
    let json_out: Value =
        serde_json::from_str(&cmd(&["--log", &log_arg, "--by", "user,model", "--json"])).unwrap();
    assert_eq!(json_out, usage);
    let table = cmd(&["--log", &log_arg, "--by", "user"]);
    let rows: Vec<Vec<&str>> = table
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(
        rows[0][..4],
        ["user", "requests", "refused", "prompt_tokens"]
    );
    assert_eq!(rows[1][..5], ["ann", "3", "0", "6", "6"]);
    assert_eq!(rows[2][..5], ["ben", "2", "0", "9", "9"]);
    // A date range outside the traffic is empty; a malformed one is a 400.
    let r = request(
        p.addr,
        "GET",
        "/usage?until=2000-01-01",
        &[("Authorization", &format!("Bearer {}", ADMIN))],
        b"",
    );
    assert_eq!(r.json()["data"], json!([]));
    let r = request(
        p.addr,
        "GET",
        "/usage?since=yesterday",
        &[("Authorization", &format!("Bearer {}", ADMIN))],
        b"",
    );
    r.error(400);
    // /usage is an admin endpoint: a client key is known but not allowed.
    let r = request(
        p.addr,
        "GET",
        "/usage",
        &[("Authorization", "Bearer sk-owui-key-444444")],
        b"",
    );
    assert_eq!(r.error(403)["code"], "admin_only");
}

#[test]
fn per_user_metrics_are_opt_in_and_a_full_disk_never_stops_traffic() {
    let a = MockBackend::start(Behavior::default());
    let cfg = format!(
        r#"{{"endpoints":{{"m":{{"url":"{}","apiKey":"{}"}}}},"usageLog":"/dev/full","metrics":{{"perUser":true,"key":"sk-metrics-reader-31"}}}}"#,
        a.url(),
        KEY
    );
    let p = Proxy::start(&cfg);
    // Per-user series name people: only the metrics key (or the admin key) sees them.
    let scrape = || {
        request(
            p.addr,
            "GET",
            "/metrics",
            &[("Authorization", "Bearer sk-metrics-reader-31")],
            b"",
        )
    };
    for _ in 0..3 {
        let mut body: Value = serde_json::from_str(&chat_body("m", "a b", false)).unwrap();
        body["user"] = "carol".into();
        assert_eq!(chat(&p, &[], &body.to_string()).status, 200);
    }
    wait_until("per-user metrics", Duration::from_secs(5), || {
        scrape()
            .text()
            .contains("modelmux_user_requests_total{user=\"carol\"} 3")
    });
    let m = scrape().text();
    assert!(
        m.contains(
            "modelmux_user_tokens_total{user=\"carol\",direction=\"prompt\",estimated=\"false\"} 6"
        ),
        "{}",
        m
    );
    assert!(
        m.contains("modelmux_usage_ledger_write_failures_total 3"),
        "{}",
        m
    );
    assert_eq!(
        p.count_logs("usage ledger /dev/full: cannot write"),
        1,
        "logged once a minute, not per request"
    );
    // Off by default.
    let p = Proxy::start(&config_for(&[("m", &a.url(), KEY, "real-m")]));
    let mut body: Value = serde_json::from_str(&chat_body("m", "a", false)).unwrap();
    body["user"] = "dave".into();
    assert_eq!(chat(&p, &[], &body.to_string()).status, 200);
    assert!(!get(p.addr, "/metrics").text().contains("dave"));
}

#[test]
fn configured_audience_and_issuer_are_required_and_long_ids_are_refused() {
    let a = MockBackend::start(Behavior::default());
    let dir = TempDir::new();
    let p = Proxy::start(&config(
        &a.url(),
        &dir,
        &format!(
            r#","openWebUI":{{"jwtSecret":"{}","jwtAudience":"modelmux","jwtIssuer":"https://chat.example.org"}},"proxyKeys":[{{"key":"sk-owui-key-555555","name":"openwebui","trustUserHeaders":true}},{{"key":"sk-script-key-666666","name":"scripts"}}]"#,
            SECRET
        ),
        "",
    ));
    let hs = json!({"alg": "HS256", "typ": "JWT"});
    let token = |aud: Value, iss: &str| {
        let mut c = claims("user-ada", 300);
        c["iss"] = iss.into();
        if !aud.is_null() {
            c["aud"] = aud;
        }
        jwt(&hs, &c, SECRET)
    };
    let iss = "https://chat.example.org";
    let owui = ("Authorization", "Bearer sk-owui-key-555555");
    for (aud, issuer, status) in [
        (json!("modelmux"), iss, 200),
        (json!(["other", "modelmux"]), iss, 200),
        (json!("other"), iss, 401),
        (Value::Null, iss, 401),
        (json!("modelmux"), "open-webui", 401),
    ] {
        let t = token(aud.clone(), issuer);
        let r = chat(
            &p,
            &[owui, ("X-OpenWebUI-User-Jwt", &t)],
            &chat_body("m", "x", false),
        );
        assert_eq!(r.status, status, "aud {} iss {}: {}", aud, issuer, r.text());
        if status == 401 {
            assert_eq!(r.error(401)["code"], "invalid_user_token");
        }
    }
    // Over-long ids are refused whole, not cut to 128 characters and merged.
    let long = "x".repeat(129);
    let mut body: Value = serde_json::from_str(&chat_body("m", "x", false)).unwrap();
    body["user"] = long.clone().into();
    for auth in [owui, ("Authorization", "Bearer sk-script-key-666666")] {
        let r = chat(&p, &[auth], &body.to_string());
        assert_eq!(r.status, 400);
        assert_eq!(
            r.text(),
            r#"{"error":{"message":"The body's user is longer than 128 characters.","type":"invalid_request_error","param":"user","code":"user_too_long"}}"#
        );
    }
    let r = chat(
        &p,
        &[owui, ("X-OpenWebUI-User-Id", &long)],
        &chat_body("m", "x", false),
    );
    assert_eq!(r.error(400)["code"], "user_too_long");
    body["user"] = "y".repeat(128).into();
    assert_eq!(
        chat(&p, &[owui], &body.to_string()).status,
        200,
        "128 is fine"
    );
    assert_eq!(a.requests().len(), 3, "refusals never reach the backend");
    let lines = ledger_lines(&dir.0.join("usage.jsonl"), 9);
    let served: Vec<&Value> = lines.iter().filter(|l| l["status"] == 200).collect();
    assert_eq!(served.len(), 3, "{:?}", lines);
    assert!(served.iter().any(|l| l["user"] == "y".repeat(128)));
}
