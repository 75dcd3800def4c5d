//! Issue 22 (items 1-4, 7): OpenTelemetry traces through a real OTLP receiver that parses each
//! export with the official protobuf definitions (tests/support/otlp_receiver.py, the
//! `opentelemetry-proto` Python package; `.ci/run` installs it). Without python3 and that
//! package these tests fail, they do not skip.

mod support;

use serde_json::{json, Value};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use support::mock_backend::{Behavior, MockBackend};
use support::*;

/// The receiver process this test started; killed by its PID on drop.
struct Receiver {
    child: Child,
    url: String,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Receiver {
    fn start(mode: &str) -> Receiver {
        let script =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/otlp_receiver.py");
        let mut child = Command::new("python3")
            .arg(script)
            .arg(mode)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("python3 runs the OTLP receiver");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port: u16 = line.trim().parse().unwrap_or_else(|_| {
            panic!("the OTLP receiver did not start (pip install opentelemetry-proto protobuf)")
        });
        Receiver {
            child,
            url: format!("http://127.0.0.1:{}", port),
        }
    }

    fn state(&self) -> Value {
        let text = ureq::get(&format!("{}/spans", self.url))
            .call()
            .unwrap()
            .into_string()
            .unwrap();
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["errors"], json!([]), "malformed OTLP/JSON exported");
        v
    }

    fn spans(&self) -> Vec<Value> {
        self.state()["spans"].as_array().unwrap().clone()
    }

    fn wait_spans(&self, n: usize) -> Vec<Value> {
        wait_until(
            &format!("{} spans at the receiver", n),
            Duration::from_secs(10),
            || self.spans().len() >= n,
        );
        self.spans()
    }
}

const SERVER: u64 = 2;
const CLIENT: u64 = 3;

fn attr<'a>(span: &'a Value, key: &str) -> &'a Value {
    &span["attributes"][key]
}

fn chat(
    p: &Proxy,
    model: &str,
    stream: bool,
    extra: Value,
    headers: &[(&str, &str)],
) -> support::Resp {
    let mut body = json!({
        "model": model, "stream": stream,
        "messages": [{"role": "user", "content": "secret words here"}]
    });
    if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
        b.extend(e.clone());
    }
    let mut h = vec![("Content-Type", "application/json")];
    h.extend_from_slice(headers);
    request(
        p.addr,
        "POST",
        "/v1/chat/completions",
        &h,
        body.to_string().as_bytes(),
    )
}

fn dropped(p: &Proxy) -> f64 {
    let text = get(p.addr, "/metrics").text();
    text.lines()
        .find_map(|l| l.strip_prefix("modelmux_trace_spans_dropped_total "))
        .expect("modelmux_trace_spans_dropped_total in /metrics")
        .parse()
        .unwrap()
}

fn dead_url() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    format!("http://{}", l.local_addr().unwrap())
}

const INCOMING: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

#[test]
fn spans_follow_a_request_from_the_caller_into_the_backend() {
    let rx = Receiver::start("ok");
    let backend = MockBackend::start(Behavior {
        include_usage_chunk: true,
        ..Behavior::default()
    });
    let cfg = json!({"endpoints": {
        "llama": {"url": backend.url(), "apiKey": "sk-backend-secret-1",
                  "actualModelName": "llama-70b", "providerName": "vllm",
                  "pricing": {"input": 1, "output": 2}},
        "pair": {"backends": [{"url": dead_url(), "weight": 1000}, {"url": backend.url()}],
                 "actualModelName": "pair-real"}
    }});
    let p = Proxy::start_with(
        &cfg.to_string(),
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &rx.url),
            ("OTEL_BSP_SCHEDULE_DELAY", "50"),
            ("OTEL_SERVICE_NAME", "modelmux-test"),
            ("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment=test"),
            (
                "OTEL_EXPORTER_OTLP_HEADERS",
                "x-collector-key=collector-secret",
            ),
        ],
        &[],
    );
    // (a) A streamed chat continuing the caller's trace, from an Open WebUI chat.
    let a = chat(
        &p,
        "llama",
        true,
        json!({"max_tokens": 50, "temperature": 0.5, "top_p": 0.9,
               "stream_options": {"include_usage": true}}),
        &[
            ("traceparent", INCOMING),
            ("tracestate", "vendor=abc"),
            ("X-OpenWebUI-Chat-Id", "chat-42"),
        ],
    );
    assert_eq!(a.status, 200);
    let a_id = a.header("x-request-id").unwrap().to_string();
    // (b) A new trace whose first backend refuses the connection: two attempts.
    assert_eq!(chat(&p, "pair", false, json!({}), &[]).status, 200);
    // (c) A malformed traceparent: a new trace, and the header is not passed on.
    let bad = "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01";
    assert_eq!(
        chat(
            &p,
            "llama",
            false,
            json!({}),
            &[("traceparent", bad), ("tracestate", "x=y")]
        )
        .status,
        200
    );
    let spans = rx.wait_spans(7);
    assert_eq!(spans.len(), 7, "{:#?}", spans);
    let text = serde_json::to_string(&spans).unwrap();
    assert!(!text.contains("secret words"), "message content in a span");
    assert!(!text.contains("sk-backend-secret-1"), "a key in a span");

    // (a): the SERVER span continues the caller's trace; the CLIENT span is its child.
    let server = spans
        .iter()
        .find(|s| s["kind"] == SERVER && s["parentSpanId"] == "00f067aa0ba902b7")
        .expect("server span under the caller's");
    assert_eq!(server["traceId"], "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(server["name"], "POST /v1/chat/completions");
    assert_eq!(attr(server, "http.request.method"), "POST");
    assert_eq!(attr(server, "http.route"), "/v1/chat/completions");
    assert_eq!(attr(server, "http.response.status_code"), 200);
    assert_eq!(attr(server, "modelmux.request_id"), a_id.as_str());
    assert_eq!(attr(server, "modelmux.model"), "llama");
    assert_eq!(attr(server, "gen_ai.conversation.id"), "chat-42");
    assert_eq!(attr(server, "modelmux.quota.decision"), "admitted");
    assert!(attr(server, "modelmux.queue_wait_seconds").is_number());
    // Identity is personal data: only with CM_OPEN_WEBUI_PROXY_TRACE_USERS.
    assert!(attr(server, "user.id").is_null());
    assert_eq!(server["resource"]["service.name"], "modelmux-test");
    assert_eq!(server["resource"]["deployment.environment"], "test");
    assert_eq!(server["scope"], "modelmux");
    let client = spans
        .iter()
        .find(|s| s["parentSpanId"] == server["spanId"])
        .expect("client span under the server span");
    assert_eq!(client["kind"], CLIENT);
    assert_eq!(client["traceId"], server["traceId"]);
    assert_eq!(client["name"], "chat llama-70b");
    // The cost the ledger records (1 and 2 per 1M tokens: 1 and 2 micro-units a token), in
    // the ledger's text; unpriced requests carry none.
    let tokens = |k: &str| attr(client, k).as_u64().expect(k);
    let micros = tokens("gen_ai.usage.input_tokens") + 2 * tokens("gen_ai.usage.output_tokens");
    assert_eq!(
        attr(server, "modelmux.cost"),
        format!("0.{:06}", micros).as_str()
    );
    assert_eq!(attr(server, "modelmux.cost.currency"), "USD");
    let unpriced = spans
        .iter()
        .filter(|s| s["kind"] == SERVER && attr(s, "modelmux.model") == "pair");
    for s in unpriced {
        assert!(attr(s, "modelmux.cost").is_null(), "{}", s);
    }
    assert_eq!(attr(client, "gen_ai.operation.name"), "chat");
    assert_eq!(attr(client, "gen_ai.provider.name"), "vllm");
    assert_eq!(attr(client, "gen_ai.request.model"), "llama-70b");
    assert_eq!(attr(client, "gen_ai.request.stream"), true);
    assert_eq!(attr(client, "gen_ai.request.max_tokens"), 50);
    assert_eq!(attr(client, "gen_ai.request.temperature"), 0.5);
    assert_eq!(attr(client, "gen_ai.request.top_p"), 0.9);
    assert_eq!(attr(client, "gen_ai.usage.input_tokens"), 3);
    assert_eq!(attr(client, "gen_ai.usage.output_tokens"), 3);
    assert_eq!(attr(client, "gen_ai.usage.cache_read.input_tokens"), 0);
    assert_eq!(attr(client, "gen_ai.usage.reasoning.output_tokens"), 0);
    assert_eq!(attr(client, "server.address"), "127.0.0.1");
    let port = backend
        .url()
        .rsplit(':')
        .next()
        .unwrap()
        .parse::<u64>()
        .unwrap();
    assert_eq!(attr(client, "server.port"), port);
    assert_eq!(attr(client, "http.response.status_code"), 200);
    // Read from the relayed stream.
    assert_eq!(attr(client, "gen_ai.response.id"), "chatcmpl-mock");
    assert_eq!(attr(client, "gen_ai.response.model"), "llama-70b");
    assert_eq!(
        attr(client, "gen_ai.response.finish_reasons"),
        &json!(["stop"])
    );
    assert!(
        attr(client, "modelmux.time_to_first_chunk_seconds")
            .as_f64()
            .unwrap()
            > 0.0
    );
    assert!(attr(client, "error.type").is_null());
    assert_eq!(client["status"]["code"], 0);
    let n = |s: &Value, k: &str| s[k].as_u64().unwrap();
    assert!(n(client, "start") >= n(server, "start") && n(client, "end") <= n(server, "end"));
    // The backend got our CLIENT span as its parent, and the caller's tracestate.
    let reqs = backend.requests();
    assert_eq!(reqs.len(), 3);
    assert_eq!(
        reqs[0].header("traceparent").unwrap(),
        format!(
            "00-4bf92f3577b34da6a3ce929d0e0e4736-{}-01",
            client["spanId"].as_str().unwrap()
        )
    );
    assert_eq!(reqs[0].header("tracestate"), Some("vendor=abc"));

    // (b): a root SERVER span and one CLIENT span per attempt, the failed one with its error.
    let pair: Vec<&Value> = spans
        .iter()
        .filter(|s| s["name"] == "chat pair-real")
        .collect();
    assert_eq!(pair.len(), 2, "{:#?}", spans);
    let root = spans
        .iter()
        .find(|s| s["spanId"] == pair[0]["parentSpanId"])
        .unwrap();
    assert_eq!(root["kind"], SERVER);
    assert_eq!(root["parentSpanId"], "");
    assert_ne!(root["traceId"], "4bf92f3577b34da6a3ce929d0e0e4736");
    let failed = pair.iter().find(|s| s["status"]["code"] == 2).unwrap();
    let ok = pair.iter().find(|s| s["status"]["code"] == 0).unwrap();
    assert_eq!(attr(failed, "error.type"), "connect");
    assert!(attr(failed, "gen_ai.response.id").is_null());
    // Read from the relayed JSON body.
    assert_eq!(attr(ok, "gen_ai.response.id"), "chatcmpl-mock");
    assert_eq!(attr(ok, "gen_ai.response.model"), "pair-real");
    assert_eq!(attr(ok, "gen_ai.response.finish_reasons"), &json!(["stop"]));
    assert_eq!(ok["parentSpanId"], root["spanId"]);
    assert_eq!(ok["traceId"], root["traceId"]);
    assert!(n(failed, "end") <= n(ok, "start"));
    assert_eq!(
        reqs[1].header("traceparent").unwrap(),
        format!(
            "00-{}-{}-01",
            root["traceId"].as_str().unwrap(),
            ok["spanId"].as_str().unwrap()
        )
    );
    assert_eq!(reqs[1].header("tracestate"), None);

    // (c): the malformed header started a new trace and went no further.
    let c = &reqs[2];
    let sent = c.header("traceparent").unwrap();
    assert_ne!(sent, bad);
    assert!(
        !sent.contains("4bf92f3577b34da6a3ce929d0e0e4736"),
        "{}",
        sent
    );
    assert_eq!(c.header("tracestate"), None);
    let c_client = spans
        .iter()
        .find(|s| sent.contains(s["spanId"].as_str().unwrap()))
        .unwrap();
    let c_server = spans
        .iter()
        .find(|s| s["spanId"] == c_client["parentSpanId"])
        .unwrap();
    assert_eq!(c_server["parentSpanId"], "");
    assert_eq!(c_client["name"], "chat llama-70b");

    // The collector's headers went with every export.
    let state = rx.state();
    for h in state["headers"].as_array().unwrap() {
        assert_eq!(h["x-collector-key"], "collector-secret");
        assert_eq!(h["content-type"], "application/json");
    }
    p.assert_no_secret_logged(&["collector-secret"]);
}

#[test]
fn samplers_decide_what_is_exported_and_the_context_still_propagates() {
    let rx = Receiver::start("ok");
    let backend = MockBackend::start(Behavior::default());
    let cfg = config_for(&[("m", &backend.url(), "", "real-m")]);
    // always_off: nothing exported, but the backend still joins the caller's trace.
    let mut p = Proxy::start_with(
        &cfg,
        &[
            (
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                &format!("{}/v1/traces", rx.url),
            ),
            ("OTEL_BSP_SCHEDULE_DELAY", "20"),
            ("OTEL_TRACES_SAMPLER", "always_off"),
        ],
        &[],
    );
    assert_eq!(
        chat(&p, "m", false, json!({}), &[("traceparent", INCOMING)]).status,
        200
    );
    assert_eq!(chat(&p, "m", false, json!({}), &[]).status, 200);
    let sent = backend.requests()[0]
        .header("traceparent")
        .unwrap()
        .to_string();
    assert!(
        sent.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-") && sent.ends_with("-00"),
        "{}",
        sent
    );
    assert!(!sent.contains("00f067aa0ba902b7"));
    // The drain flushes the queue: after exit, anything recorded would have been sent.
    unsafe { libc::kill(p.pid() as i32, libc::SIGTERM) };
    assert!(p.wait_exit(Duration::from_secs(10)).is_some());
    assert_eq!(rx.state()["posts"], 0);

    // parentbased_always_off: a sampled caller is followed, a new trace is not recorded.
    let p = Proxy::start_with(
        &cfg,
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &rx.url),
            ("OTEL_BSP_SCHEDULE_DELAY", "20"),
            ("OTEL_TRACES_SAMPLER", "parentbased_always_off"),
            ("CM_OPEN_WEBUI_PROXY_TRACE_USERS", "true"),
        ],
        &[],
    );
    assert_eq!(chat(&p, "m", false, json!({}), &[]).status, 200);
    assert_eq!(
        chat(&p, "m", false, json!({}), &[("traceparent", INCOMING)]).status,
        200
    );
    let unsampled = INCOMING.replace("-01", "-00");
    assert_eq!(
        chat(&p, "m", false, json!({}), &[("traceparent", &unsampled)]).status,
        200
    );
    let spans = rx.wait_spans(2);
    std::thread::sleep(Duration::from_millis(200));
    let spans_after = rx.spans();
    assert_eq!(spans_after.len(), 2, "{:#?}", spans_after);
    assert!(spans
        .iter()
        .all(|s| s["traceId"] == "4bf92f3577b34da6a3ce929d0e0e4736"));
    // The opt-in puts the user on the SERVER span.
    let server = spans.iter().find(|s| s["kind"] == SERVER).unwrap();
    assert_eq!(attr(server, "user.id"), "anonymous");
    let reqs = backend.requests();
    assert!(reqs[2].header("traceparent").unwrap().ends_with("-00"));
    assert!(reqs[3].header("traceparent").unwrap().ends_with("-01"));
    assert!(reqs[4].header("traceparent").unwrap().ends_with("-00"));
}

#[test]
fn spans_are_flushed_on_sigterm_after_the_drain() {
    let rx = Receiver::start("ok");
    let backend = MockBackend::start(Behavior {
        chunk_delay: Duration::from_millis(100),
        ..Behavior::default()
    });
    let cfg = config_for(&[("m", &backend.url(), "", "real-m")]);
    // A batch would wait ten minutes: only the flush at exit sends it.
    let mut p = Proxy::start_with(
        &cfg,
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &rx.url),
            ("OTEL_BSP_SCHEDULE_DELAY", "600000"),
        ],
        &[],
    );
    assert_eq!(chat(&p, "m", false, json!({}), &[]).status, 200);
    // A stream still running when the signal comes: its spans come after the drain.
    let addr = p.addr;
    let streaming = std::thread::spawn(move || {
        let body = json!({"model": "m", "stream": true,
                          "messages": [{"role": "user", "content": "a b c d e"}]});
        request(
            addr,
            "POST",
            "/v1/chat/completions",
            &[("Content-Type", "application/json")],
            body.to_string().as_bytes(),
        )
        .status
    });
    wait_until("the stream started", Duration::from_secs(5), || {
        backend.requests().len() == 2
    });
    assert_eq!(rx.state()["posts"], 0);
    unsafe { libc::kill(p.pid() as i32, libc::SIGTERM) };
    assert_eq!(streaming.join().unwrap(), 200);
    assert_eq!(p.wait_exit(Duration::from_secs(10)), Some(Some(0)));
    let spans = rx.spans();
    assert_eq!(spans.len(), 4, "{:#?}", spans);
    assert_eq!(rx.state()["posts"], 1);
}

/// Sends `n` chats one after another; returns the slowest.
fn slowest_of(p: &Proxy, n: usize) -> Duration {
    (0..n)
        .map(|_| {
            let t = Instant::now();
            assert_eq!(chat(p, "m", false, json!({}), &[]).status, 200);
            t.elapsed()
        })
        .max()
        .unwrap()
}

fn small_queue(endpoint: &str, timeout_ms: &str) -> Vec<(String, String)> {
    [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint),
        ("OTEL_BSP_SCHEDULE_DELAY", "20"),
        ("OTEL_BSP_MAX_QUEUE_SIZE", "4"),
        ("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "2"),
        ("OTEL_EXPORTER_OTLP_TIMEOUT", timeout_ms),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

/// One worker: spans end after the answer is sent, so a span push that waited for the
/// exporter would show as the next request waiting for the worker.
fn start_traced(backend: &MockBackend, env: &[(String, String)]) -> Proxy {
    let cfg = config_for(&[("m", &backend.url(), "", "real-m")]);
    let mut env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    env.push(("CM_OPEN_WEBUI_PROXY_WORKERS", "1"));
    Proxy::start_with(&cfg, &env, &[])
}

#[test]
fn a_collector_answering_503_with_retry_after_is_retried_and_never_blocks_requests() {
    let rx = Receiver::start("503");
    let backend = MockBackend::start(Behavior::default());
    let p = start_traced(&backend, &small_queue(&rx.url, "2000"));
    // The exporter sleeps two seconds per Retry-After while the requests go on: a request
    // that waited for it would take that long.
    let slowest = slowest_of(&p, 40);
    assert!(slowest < Duration::from_secs(1), "{:?}", slowest);
    wait_until("spans dropped", Duration::from_secs(10), || {
        dropped(&p) > 0.0
    });
    // Retried after the Retry-After seconds, then given up.
    wait_until("retries", Duration::from_secs(15), || {
        rx.state()["posts"].as_u64().unwrap() >= 3
    });
    // Once the collector is back, spans arrive again.
    ureq::post(&format!("{}/mode", rx.url))
        .send_string("ok")
        .unwrap();
    assert!(slowest_of(&p, 1) < Duration::from_secs(1));
    wait_until(
        "spans after the collector is back",
        Duration::from_secs(20),
        || !rx.spans().is_empty(),
    );
    // One warning for all those lost batches (at most once a minute).
    assert_eq!(p.count_logs("spans dropped"), 1, "{:#?}", p.logs());
}

#[test]
fn a_collector_down_or_too_slow_costs_requests_nothing_and_drops_are_counted() {
    let backend = MockBackend::start(Behavior::default());
    // Down: nothing listens.
    let p = start_traced(&backend, &small_queue(&dead_url(), "500"));
    let slowest = slowest_of(&p, 30);
    assert!(slowest < Duration::from_secs(1), "{:?}", slowest);
    wait_until("spans dropped", Duration::from_secs(10), || {
        dropped(&p) >= 60.0
    });
    assert!(p.count_logs("spans dropped") == 1, "{:#?}", p.logs());
    drop(p);

    // Slow: the receiver takes 3 s, the POST timeout is 2 s; a request that waited for the
    // exporter would take that long.
    let rx = Receiver::start("slow");
    let p = start_traced(&backend, &small_queue(&rx.url, "2000"));
    let slowest = slowest_of(&p, 30);
    assert!(slowest < Duration::from_secs(1), "{:?}", slowest);
    wait_until("spans dropped", Duration::from_secs(20), || {
        dropped(&p) >= 60.0
    });
    assert!(rx.state()["posts"].as_u64().unwrap() >= 1);
}

#[test]
fn a_provider_name_that_is_not_a_short_word_is_a_config_error() {
    let cfg = json!({"endpoints": {"m": {"url": "http://127.0.0.1:9", "providerName": "v llm"}}});
    let logs = Proxy::try_start(&cfg.to_string(), &[], &[])
        .err()
        .expect("refused");
    assert!(
        logs.iter()
            .any(|l| l.contains("providerName") && l.contains("expected a short name")),
        "{:#?}",
        logs
    );
    let cfg = json!({"endpoints": {"m": {"url": "http://127.0.0.1:9", "providerNmae": "vllm"}}});
    assert!(Proxy::try_start(&cfg.to_string(), &[], &[]).is_err());
}
