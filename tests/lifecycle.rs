//! Reloads (file watch, SIGHUP, `POST /reload`) and the drain after SIGTERM.

mod support;

use std::net::TcpStream;
use std::time::{Duration, Instant};
use support::mock_backend::{echo_stream_bytes, Behavior, MockBackend};
use support::*;

/// The backend key of model `m`; the secret scan checks it never reaches a log.
const KEY: &str = "sk-hardening-key-9f8e7d6c5b4a";

fn signal(p: &Proxy, sig: i32) {
    unsafe {
        libc::kill(p.pid() as i32, sig);
    }
}

#[test]
fn sighup_and_file_changes_reload_the_config() {
    let a = MockBackend::start(Behavior::default());
    let p = Proxy::start_with(
        &config_for(&[("m", &a.url(), KEY, "real-m")]),
        &[("CM_OPEN_WEBUI_PROXY_WATCH_SECS", "1")],
        &[],
    );
    let two_models = config_for(&[
        ("m", &a.url(), KEY, "real-m"),
        ("n", &a.url(), KEY, "real-n"),
    ]);
    p.write_config(&two_models);
    let mut written = Instant::now();
    wait_until(
        "the file change to be picked up",
        Duration::from_secs(10),
        || {
            if get(p.addr, "/health").json()["endpoints"] == 2 {
                return true;
            }
            // The watcher stamps the file as it starts, just after the listening line: a write
            // before that is its baseline, not a change. Writing again (a new mtime) makes one.
            if written.elapsed() > Duration::from_millis(1500) {
                p.write_config(&two_models);
                written = Instant::now();
            }
            false
        },
    );
    // An invalid file keeps the old config and logs one clear line.
    let failed_before = p.count_logs("reload failed");
    p.write_config("{\"endpoints\": 7}");
    p.wait_logs(
        "a failed reload of the invalid file",
        Duration::from_secs(5),
        |logs| logs.iter().filter(|l| l.contains("reload failed")).count() > failed_before,
    );
    let failed = p.logs().into_iter().rfind(|l| l.contains("reload failed"));
    assert!(
        failed.as_deref().is_some_and(|l| l.contains("endpoints")),
        "{:?}",
        failed
    );
    assert_eq!(get(p.addr, "/health").json()["endpoints"], 2);
    // SIGHUP reloads like POST /reload (watcher off here to isolate the signal).
    let q = Proxy::start_with(
        &config_for(&[("m", &a.url(), KEY, "real-m")]),
        &[("CM_OPEN_WEBUI_PROXY_WATCH_SECS", "0")],
        &[],
    );
    q.write_config(&config_for(&[
        ("m", &a.url(), KEY, "real-m"),
        ("z", &a.url(), KEY, "real-z"),
    ]));
    signal(&q, libc::SIGHUP);
    let deadline = Instant::now() + Duration::from_secs(5);
    while get(q.addr, "/health").json()["endpoints"] != 2 {
        assert!(Instant::now() < deadline, "SIGHUP did not reload");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn sigterm_drains_in_flight_streams_then_exits_zero() {
    let a = MockBackend::start(Behavior {
        chunk_delay: Duration::from_millis(200),
        ..Behavior::default()
    });
    let mut p = one_model_proxy(&a.url(), KEY, &[]);
    let addr = p.addr;
    let stream = std::thread::spawn(move || {
        post_json(
            addr,
            "/v1/chat/completions",
            &chat_body("m", "one two three four five", true),
        )
    });
    wait_until("the stream at the backend", Duration::from_secs(5), || {
        !a.requests().is_empty()
    });
    signal(&p, libc::SIGTERM);
    // While the stream drains, the listener is already closed.
    let deadline = Instant::now() + Duration::from_secs(2);
    while TcpStream::connect(addr).is_ok() {
        assert!(
            Instant::now() < deadline,
            "still accepting new connections after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        !stream.is_finished(),
        "the stream should still be running during the drain"
    );
    let r = stream.join().unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(
        r.body,
        echo_stream_bytes("real-m", "one two three four five", false)
    );
    let status = p
        .wait_exit(Duration::from_secs(5))
        .expect("exited after draining");
    assert_eq!(status, Some(0));
    assert!(
        TcpStream::connect(addr).is_err(),
        "still accepting after SIGTERM"
    );
}

#[test]
fn fifty_reloads_during_a_hundred_streams_break_nothing() {
    raise_fd_limit();
    let a = MockBackend::start(Behavior {
        chunk_delay: Duration::from_millis(30),
        ..Behavior::default()
    });
    let p = one_model_proxy(&a.url(), KEY, &[("CM_OPEN_WEBUI_PROXY_LOG_LEVEL", "warn")]);
    let addr = p.addr;
    let content = "tokens keep flowing while the config changes under us";
    let streams: Vec<_> = (0..100)
        .map(|_| {
            std::thread::spawn(move || {
                post_json(addr, "/v1/chat/completions", &chat_body("m", content, true))
            })
        })
        .collect();
    for i in 0..50 {
        // Each generation names both models after itself; a reader must see one generation whole.
        let cfg = format!(
            r#"{{"endpoints":{{"m":{{"displayName":"gen-{i}","url":"{u}","apiKey":"{k}","actualModelName":"real-m"}},"extra-{i}":{{"displayName":"gen-{i}","url":"{u}"}}}}}}"#,
            i = i,
            u = a.url(),
            k = KEY
        );
        p.write_config(&cfg);
        let r = request(p.addr, "POST", "/reload", &[], b"");
        assert_eq!(r.status, 200, "{}", r.text());
        let models = get(p.addr, "/v1/models").json();
        let data = models["data"].as_array().unwrap();
        assert_eq!(data.len(), 2);
        assert_eq!(
            data[0]["name"], data[1]["name"],
            "two generations mixed: {}",
            models
        );
        assert_eq!(
            data[1]["id"].as_str().unwrap().replace("extra-", "gen-"),
            data[1]["name"].as_str().unwrap()
        );
    }
    for s in streams {
        let r = s.join().unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.body, echo_stream_bytes("real-m", content, false));
    }
}
