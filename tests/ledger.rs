//! Issue 24, items 5, 6, 13 and 15: the usage ledger over rotation and restarts, one writer per
//! ledger file, memory that does not grow with the ledger, and `modelmux usage` output that a
//! terminal shows as stored.

mod support;

use serde_json::{json, Value};
use std::io::Write;
use std::path::Path;
use std::time::Duration;
use support::mock_backend::{Behavior, MockBackend};
use support::*;

const ADMIN: &str = "admin-key-ledger-3c2b1a";

fn usage(p: &Proxy, query: &str) -> Value {
    let r = request(
        p.addr,
        "GET",
        &format!("/usage?{}", query),
        &[("Authorization", &format!("Bearer {}", ADMIN))],
        b"",
    );
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()
}

fn chat(p: &Proxy, content: &str) -> Resp {
    let body = json!({"model": "m", "max_tokens": 5,
                      "messages": [{"role": "user", "content": content}]});
    request(
        p.addr,
        "POST",
        "/v1/chat/completions",
        &[("Content-Type", "application/json")],
        body.to_string().as_bytes(),
    )
}

fn lines(path: &Path) -> usize {
    std::fs::read_to_string(path)
        .map(|t| t.lines().count())
        .unwrap_or(0)
}

fn numbered(path: &Path, i: usize) -> std::path::PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(format!(".{}", i));
    s.into()
}

/// Lines in the ledger and every rotated file.
fn all_lines(path: &Path) -> usize {
    lines(path) + (1..100).map(|i| lines(&numbered(path, i))).sum::<usize>()
}

/// Item 5: with the smallest `usageLogMaxBytes` the ledger rotates many times past the three
/// files it always keeps; a restart still knows the whole month: the budget stays spent and
/// `/usage` answers exactly as before the restart.
#[test]
fn a_restart_after_many_rotations_keeps_the_month_budget_and_usage_complete() {
    let a = MockBackend::start(Behavior::default());
    let dir = TempDir::new();
    let log = dir.0.join("usage.jsonl");
    let cfg = json!({
        "endpoints": {"m": {"url": a.url(), "apiKey": "sk-ledger-backend-1"}},
        "usageLog": log.display().to_string(),
        "usageLogMaxBytes": 4096,
        "limits": [{"match": {"user": "*"}, "tokensPerMonth": 1000}],
    })
    .to_string();
    let env = [("CM_OPEN_WEBUI_PROXY_ADMIN_KEY", ADMIN)];
    let p = Proxy::start_with(&cfg, &env, &[]);
    // Five words: the mock answers 5 prompt and 5 completion tokens. A request settles just
    // after its answer, so each waits for the one before to settle: the budget is judged on
    // what was used, not on a reservation still held.
    let remaining = |p: &Proxy| usage(p, "user=anonymous")["limits"][0]["remaining"].clone();
    let mut served = 0u64;
    loop {
        wait_until("the last request settled", Duration::from_secs(5), || {
            remaining(&p) == json!(1000 - 10 * served)
        });
        let r = chat(&p, "one two three four five");
        if r.status == 429 {
            assert_eq!(r.error(429)["code"], "insufficient_quota", "{}", r.text());
            break;
        }
        assert_eq!(r.status, 200, "{}", r.text());
        served += 1;
        assert!(served < 200, "the month budget never ran out");
    }
    let q = "by=user,model&since=2000-01-01";
    // Settled: (a line for the refusal, should one be written, is in too).
    let mut before = usage(&p, q);
    wait_until("/usage to settle", Duration::from_secs(5), || {
        std::thread::sleep(Duration::from_millis(100));
        let now = usage(&p, q);
        std::mem::replace(&mut before, now) == before
    });
    assert_eq!(
        before["data"][0]["prompt_tokens"],
        json!(5 * served),
        "{}",
        before
    );
    assert_eq!(before["data"][0]["completion_tokens"], json!(5 * served));
    drop(p);

    let p = Proxy::start_with(&cfg, &env, &[]);
    let r = chat(&p, "one two three four five");
    assert_eq!(
        r.status,
        429,
        "the spent month budget was granted again: {}",
        r.text()
    );
    assert_eq!(remaining(&p), json!(1000 - 10 * served), "{:#?}", p.logs());
    // The refusal after the restart is in the ledger too: one more request, refused.
    let mut after = before.clone();
    let row = &mut after["data"][0];
    row["requests"] = json!(row["requests"].as_u64().unwrap() + 1);
    let refused = &mut row["requests_by_outcome"]["refused"];
    *refused = json!(refused.as_u64().unwrap() + 1);
    let got = usage(&p, q);
    wait_until("the refusal in /usage", Duration::from_secs(5), || {
        usage(&p, q) == after
    });
    assert_eq!(usage(&p, q), after, "/usage after the restart: {}", got);
    // Far more rotations than the three rotated files kept before.
    assert!(
        numbered(&log, 5).exists(),
        "only {} lines, {} served: too few rotations",
        all_lines(&log),
        served
    );
    assert_eq!(r.error(429)["code"], "insufficient_quota");
    assert_eq!(a.requests().len() as u64, served);
}

/// Item 6: a second process on the same `usageLog` refuses to start with one clear line; the
/// lock goes with the first process, even when it is killed.
#[test]
fn a_second_process_on_the_same_ledger_fails_at_start_with_one_line() {
    let a = MockBackend::start(Behavior::default());
    let dir = TempDir::new();
    let log = dir.0.join("usage.jsonl");
    let cfg = json!({
        "endpoints": {"m": {"url": a.url(), "apiKey": "sk-ledger-backend-2"}},
        "usageLog": log.display().to_string(),
    })
    .to_string();
    let first = Proxy::start(&cfg);
    assert_eq!(chat(&first, "hello").status, 200);
    let started = std::time::Instant::now();
    let logs = match Proxy::try_start(&cfg, &[], &[]) {
        Ok(_) => panic!("a second writer started on {}", log.display()),
        Err(logs) => logs,
    };
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "it exits at once"
    );
    let expected = format!(
        "modelmux: usage ledger {} is already written by another process (it holds {}.lock); give each modelmux process its own usageLog",
        log.display(),
        log.display()
    );
    assert_eq!(logs, vec![expected]);
    // The first one is unaffected and keeps writing.
    assert_eq!(chat(&first, "hello again").status, 200);
    wait_until("two lines", Duration::from_secs(5), || lines(&log) == 2);
    drop(first); // kill -9: the kernel drops the lock with the process
    let second = Proxy::start(&cfg);
    assert_eq!(chat(&second, "third").status, 200);
    wait_until("three lines", Duration::from_secs(5), || lines(&log) == 3);
}

/// Item 6: a ledger file moved away or deleted under a running proxy is reopened at its path,
/// so no line goes to a file nobody reads.
#[test]
fn a_moved_or_deleted_ledger_is_reopened_at_its_path() {
    let a = MockBackend::start(Behavior::default());
    let dir = TempDir::new();
    let log = dir.0.join("usage.jsonl");
    let moved = dir.0.join("moved.jsonl");
    let cfg = json!({
        "endpoints": {"m": {"url": a.url(), "apiKey": "sk-ledger-backend-3"}},
        "usageLog": log.display().to_string(),
    })
    .to_string();
    let p = Proxy::start(&cfg);
    assert_eq!(chat(&p, "first").status, 200);
    wait_until("the first line", Duration::from_secs(5), || {
        lines(&log) == 1
    });
    std::fs::rename(&log, &moved).unwrap();
    assert_eq!(chat(&p, "second").status, 200);
    wait_until(
        "the second line at the path",
        Duration::from_secs(5),
        || lines(&log) == 1,
    );
    assert_eq!(lines(&moved), 1, "nothing more went to the moved file");
    std::fs::remove_file(&log).unwrap();
    assert_eq!(chat(&p, "third").status, 200);
    wait_until("the third line at the path", Duration::from_secs(5), || {
        lines(&log) == 1
    });
    let line: Value = serde_json::from_str(std::fs::read_to_string(&log).unwrap().trim()).unwrap();
    assert_eq!(line["prompt_tokens"], 1);
    p.wait_logs("two reopenings", Duration::from_secs(5), |logs| {
        logs.iter()
            .filter(|l| l.contains("the path no longer names the open file"))
            .count()
            == 2
    });
}

/// `VmHWM` (peak resident set) of a process, in KiB.
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", pid)).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// The documented bound (README, "The ledger"): a proxy that reads a 64 MiB ledger at start
/// and answers `/usage` over it peaks under this many MiB of resident memory.
const LEDGER_RSS_BOUND_MIB: u64 = 32;

/// Item 13: a full default-size ledger (64 MiB, about 190,000 lines of this month, 500 users)
/// is read as a stream at start (to seed the limits) and for `/usage`: the proxy's peak
/// resident memory stays under a fixed bound, not one that grows with the ledger.
#[test]
fn a_64_mib_ledger_is_read_at_start_and_for_usage_in_bounded_memory() {
    let a = MockBackend::start(Behavior::default());
    let dir = TempDir::new();
    let log = dir.0.join("usage.jsonl");
    let ts = {
        // Today, so every line counts toward this month's and today's windows.
        let day = now_secs() / 86_400 * 86_400;
        let out = std::process::Command::new("date")
            .args(["-u", "-d", &format!("@{}", day), "+%Y-%m-%dT00:00:01.000Z"])
            .output()
            .unwrap();
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    };
    let mut w = std::io::BufWriter::new(std::fs::File::create(&log).unwrap());
    let mut written = 0usize;
    let mut n = 0u64;
    while written < 64 * 1024 * 1024 {
        let line = json!({"ts": ts, "request_id": format!("mm-{:016x}", n),
            "user": format!("user-{:03}@example.org", n % 500), "key": "openwebui",
            "model": format!("model-{}", n % 4), "backend": "gpu-a.internal:8000",
            "path": "/chat/completions", "status": 200, "prompt_tokens": 812,
            "completion_tokens": 397, "cached_tokens": 0, "reasoning_tokens": 0,
            "estimated": false, "duration_ms": 5312, "ttfb_ms": 412, "outcome": "complete"})
        .to_string();
        w.write_all(line.as_bytes()).unwrap();
        w.write_all(b"\n").unwrap();
        written += line.len() + 1;
        n += 1;
    }
    w.flush().unwrap();
    drop(w);
    let cfg = json!({
        "endpoints": {"m": {"url": a.url(), "apiKey": "sk-ledger-backend-4"}},
        "usageLog": log.display().to_string(),
        "limits": [{"match": {"user": "*"}, "tokensPerDay": 1_000_000_000u64}],
    })
    .to_string();
    let env = [("CM_OPEN_WEBUI_PROXY_ADMIN_KEY", ADMIN)];
    let p = Proxy::start_with(&cfg, &env, &[]);
    // Every line was read (to seed the limits) before the proxy listened.
    assert!(
        p.wait_log(&format!(": {} requests", n), Duration::from_secs(60))
            .is_some(),
        "{:#?}",
        p.logs()
    );
    let at_start = peak_rss_kib(p.pid());
    let all = usage(&p, "by=user,model");
    // n % 500 fixes n % 4: 500 (user, model) groups.
    assert_eq!(all["data"].as_array().unwrap().len(), 500);
    let total: u64 = all["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["requests"].as_u64().unwrap())
        .sum();
    assert_eq!(total, n);
    let one = usage(&p, "by=model&user=user-007@example.org");
    assert_eq!(one["data"].as_array().unwrap().len(), 1, "{}", one);
    let peak = peak_rss_kib(p.pid());
    eprintln!(
        "{} lines ({} MiB): peak RSS {} KiB after start, {} KiB after /usage",
        n,
        written >> 20,
        at_start,
        peak
    );
    assert!(
        peak < LEDGER_RSS_BOUND_MIB * 1024,
        "peak RSS {} KiB over {} MiB",
        peak,
        LEDGER_RSS_BOUND_MIB
    );
    // `modelmux usage` over the same ledger, its resident memory sampled while it reads.
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_modelmux"))
        .args(["usage", "--by", "user,model", "--json", "--log"])
        .arg(&log)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = cmd.id();
    let sampler = std::thread::spawn(move || {
        let mut peak = 0;
        while let Ok(status) = std::fs::read_to_string(format!("/proc/{}/status", pid)) {
            if !status.contains("State:\tZ") {
                if let Some(kib) = status
                    .lines()
                    .find_map(|l| l.strip_prefix("VmHWM:"))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
                {
                    peak = peak.max(kib);
                }
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        peak
    });
    let mut stdout = Vec::new();
    std::io::Read::read_to_end(cmd.stdout.as_mut().unwrap(), &mut stdout).unwrap();
    assert!(cmd.wait().unwrap().success());
    let command_peak_kib = sampler.join().unwrap();
    assert!(command_peak_kib > 0, "the command was sampled");
    let v: Value = serde_json::from_slice(&stdout).unwrap();
    assert_eq!(v, all, "the command agrees with /usage");
    eprintln!("modelmux usage: peak RSS {} KiB", command_peak_kib);
    assert!(
        command_peak_kib < LEDGER_RSS_BOUND_MIB * 1024,
        "modelmux usage peaked at {} KiB",
        command_peak_kib
    );
}

/// Item 15: `modelmux usage` shows ledger strings escaped: an escape sequence, a newline that
/// would forge a row, bidi overrides and isolates, as stored and unambiguous.
#[test]
fn modelmux_usage_prints_ledger_strings_escaped() {
    let dir = TempDir::new();
    let log = dir.0.join("usage.jsonl");
    let user = "ann\u{1b}[2J\nmallory  999\u{202e}txt.exe\u{2066}\u{7f}";
    let line = json!({"ts": "2026-11-02T10:00:00.000Z", "request_id": "r1", "user": user,
        "key": "k", "model": "m\u{200f}", "status": 200, "prompt_tokens": 3,
        "completion_tokens": 4});
    std::fs::write(&log, format!("{}\n", line)).unwrap();
    let cmd = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_modelmux"))
            .arg("usage")
            .arg("--log")
            .arg(&log)
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "{:?}", out);
        String::from_utf8(out.stdout).unwrap()
    };
    let table = cmd(&["--by", "user,model"]);
    assert_eq!(
        table,
        concat!(
            "user                                                         model      requests  refused  prompt_tokens  completion_tokens  cached_tokens  reasoning_tokens\n",
            "ann\\u{001b}[2J\\nmallory  999\\u{202e}txt.exe\\u{2066}\\u{007f}  m\\u{200f}         1        0              3                  4              0                 0\n",
        )
    );
    let out = cmd(&["--by", "user,model", "--json"]);
    assert!(
        out.chars()
            .all(|c| c == '\n' || (!c.is_control() && !('\u{2000}'..'\u{2070}').contains(&c))),
        "{:?}",
        out
    );
    assert_eq!(
        out,
        "{\"object\":\"list\",\"data\":[{\"user\":\"ann\\u001b[2J\\nmallory  999\\u202etxt.exe\\u2066\\u007f\",\"model\":\"m\\u200f\",\"requests\":1,\"prompt_tokens\":3,\"completion_tokens\":4,\"cached_tokens\":0,\"reasoning_tokens\":0,\"requests_by_outcome\":{\"complete\":0,\"client_gone\":0,\"upstream_failed\":0,\"error\":0,\"refused\":0}}]}\n"
    );
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["data"][0]["user"], user, "the same value, escaped");
}

/// Issue 21, item 2: `"usageLog": "-"` writes each ledger line to stdout, marked
/// `"log":"usage"`, beside the JSON access log on the same stdout: under concurrent requests
/// every line stays whole, each request has one of each, and the shipped usage lines saved to
/// a file are a ledger `modelmux usage` reads.
#[test]
fn a_ledger_on_stdout_is_marked_and_never_interleaves_with_the_json_access_log() {
    let a = MockBackend::start(Behavior::default());
    let cfg = json!({
        "endpoints": {"m": {"url": a.url(), "apiKey": "sk-ledger-stdout-backend-1a2b"}},
        "usageLog": "-",
        // A per-user budget without a shared store: the start warns that it is not restart-safe.
        "limits": [{"match": {"user": "*"}, "tokensPerDay": 1000000}],
    });
    let env = [
        ("CM_OPEN_WEBUI_PROXY_LOG_FORMAT", "json"),
        ("CM_OPEN_WEBUI_PROXY_REPLICA", "stdout-1"),
    ];
    let p = Proxy::start_with(&cfg.to_string(), &env, &[]);
    assert!(
        p.count_logs("the ledger goes to stdout and is not read back") == 1,
        "{:#?}",
        p.logs()
    );
    let (threads, each) = (8, 25);
    std::thread::scope(|s| {
        for t in 0..threads {
            let p = &p;
            s.spawn(move || {
                for i in 0..each {
                    let words = vec!["w"; 1 + (t * each + i) % 7].join(" ");
                    assert_eq!(chat(p, &words).status, 200);
                }
            });
        }
    });
    let n = threads * each;
    let json_lines = |p: &Proxy| -> Vec<Value> {
        p.logs()
            .iter()
            .filter(|l| l.starts_with('{'))
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("torn {:?}: {}", l, e)))
            .collect()
    };
    wait_until("every line is out", Duration::from_secs(10), || {
        json_lines(&p).len() >= 2 * n
    });
    let all = json_lines(&p);
    assert_eq!(all.len(), 2 * n, "one access line and one usage line each");
    let usage_lines: Vec<&Value> = all.iter().filter(|l| l["log"] == "usage").collect();
    assert_eq!(usage_lines.len(), n);
    for l in &usage_lines {
        let fields: Vec<&String> = l.as_object().unwrap().keys().collect();
        assert_eq!(fields[..3], ["log", "ts", "request_id"], "{}", l);
        assert_eq!(
            (&l["replica"], &l["outcome"]),
            (&json!("stdout-1"), &json!("complete"))
        );
    }
    assert!(all
        .iter()
        .filter(|l| l["log"] != "usage")
        .all(|l| l["method"] == "POST"));
    // The shipped lines, saved as they came, are a ledger for `modelmux usage`.
    let dir = TempDir::new();
    let saved = dir.0.join("shipped.jsonl");
    let text: String = p
        .logs()
        .iter()
        .filter(|l| l.starts_with("{\"log\":\"usage\","))
        .map(|l| format!("{}\n", l))
        .collect();
    std::fs::write(&saved, text).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_modelmux"))
        .args(["usage", "--json", "--log", &saved.display().to_string()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{:?}", out);
    let totals: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(totals["data"][0]["requests"], n as u64, "{}", totals);
}
