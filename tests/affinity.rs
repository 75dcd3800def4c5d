//! Issue 23, items 5 and 6: conversation affinity. A conversation's requests go to the backend
//! its key's weighted rendezvous order puts first, computed here independently from the hash
//! the README documents; when that backend is cooling down, held off or at its maxConcurrent,
//! to the next in the same order, and back once it recovers.

mod support;

use serde_json::{json, Value};
use std::time::Duration;
use support::mock_backend::{Behavior, MockBackend};
use support::*;

// ----- the documented hash, written out again: FNV-1a 64 of the key and of
// `url + "\n" + actualModelName`, XOR-ed, SplitMix64's finalizer, u from the top 53 bits,
// score -weight / ln(u), highest first.

fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

fn splitmix_finish(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Backend indices in the rendezvous order of `key`, for backends `(url, actualModelName,
/// weight)`.
fn rendezvous(key: &str, backends: &[(String, String, u32)]) -> Vec<usize> {
    let mut scored: Vec<(f64, usize)> = backends
        .iter()
        .enumerate()
        .map(|(i, (url, model, weight))| {
            let x = splitmix_finish(
                fnv1a(key.as_bytes()) ^ fnv1a(format!("{}\n{}", url, model).as_bytes()),
            );
            let u = ((x >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
            (-f64::from(*weight) / u.ln(), i)
        })
        .collect();
    scored.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    scored.into_iter().map(|(_, i)| i).collect()
}

// ----- the setup

/// Mock backends and a proxy whose model `m` has them as backends `real-0`, `real-1`, ...
struct Setup {
    mocks: Vec<MockBackend>,
    backends: Vec<(String, String, u32)>,
    proxy: Proxy,
}

/// Model `m` over `weights.len()` mock backends with `affinity` as given (and the entries'
/// `extra` fields), plus top-level fields.
fn setup(weights: &[u32], affinity: Value, entry: Value, top: Value) -> Setup {
    let mocks: Vec<MockBackend> = weights
        .iter()
        .map(|_| MockBackend::start(Behavior::default()))
        .collect();
    let backends: Vec<(String, String, u32)> = mocks
        .iter()
        .zip(weights)
        .enumerate()
        .map(|(i, (m, w))| (m.url(), format!("real-{}", i), *w))
        .collect();
    let list: Vec<Value> = backends
        .iter()
        .map(|(url, model, weight)| {
            let mut e = json!({"url": url, "actualModelName": model, "weight": weight});
            merge(&mut e, entry.clone());
            e
        })
        .collect();
    let mut config = json!({"endpoints": {"m": {"backends": list, "affinity": affinity}}});
    merge(&mut config, top);
    Setup {
        mocks,
        backends,
        proxy: Proxy::start(&config.to_string()),
    }
}

impl Setup {
    /// Sends one chat turn with these headers; returns the index of the backend that answered.
    fn turn(&self, headers: &[(&str, &str)], body: &str) -> usize {
        let mut all = vec![("Content-Type", "application/json")];
        all.extend_from_slice(headers);
        let r = request(
            self.proxy.addr,
            "POST",
            "/v1/chat/completions",
            &all,
            body.as_bytes(),
        );
        assert_eq!(r.status, 200, "{}", r.text());
        let model = r.json()["model"].as_str().unwrap_or_default().to_string();
        self.backends
            .iter()
            .position(|(_, m, _)| *m == model)
            .unwrap_or_else(|| panic!("answered by an unknown backend: {}", r.text()))
    }

    fn chat(&self, chat_id: &str) -> usize {
        self.turn(
            &[("X-OpenWebUI-Chat-Id", chat_id)],
            &chat_body("m", "hi", false),
        )
    }

    fn order(&self, key: &str) -> Vec<usize> {
        rendezvous(key, &self.backends)
    }

    /// Waits until backend `b` has nothing in flight: a request's slot is given back a moment
    /// after its client has the whole answer, and with `maxConcurrent: 1` the next turn must
    /// not find it still taken.
    fn idle(&self, b: usize) {
        wait_until(
            "the backend's slot to be free",
            Duration::from_secs(5),
            || {
                get(self.proxy.addr, "/health?backends=1").json()["backends"]["m"][b]["inFlight"]
                    == 0
            },
        );
    }

    fn served(&self) -> Vec<usize> {
        self.mocks.iter().map(|m| m.requests().len()).collect()
    }
}

/// 30 requests spread by least in flight and round-robin (a response's in-flight count may
/// still be held a moment after the client read it, so not always exactly 10 each), where
/// affinity would have put all 30 on one backend.
fn assert_balanced(counts: &[usize]) {
    assert!(counts.iter().all(|c| (7..=13).contains(c)), "{:?}", counts);
}

fn failing(status: u16, extra_headers: &[(&str, &str)]) -> Behavior {
    Behavior {
        status: Some((status, r#"{"error":{"message":"busy"}}"#.to_string())),
        extra_headers: extra_headers
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect(),
        ..Behavior::default()
    }
}

#[test]
fn a_conversation_stays_on_its_backend_and_conversations_spread_by_weight() {
    let weights = [1, 2, 1];
    let s = setup(&weights, json!(true), json!({}), json!({}));
    let n = 1000;
    let ids: Vec<String> = (0..n).map(|i| format!("chat-{}", i)).collect();
    let counts = std::sync::Mutex::new(vec![0usize; 3]);
    std::thread::scope(|scope| {
        for part in ids.chunks(n / 4) {
            let (s, counts) = (&s, &counts);
            scope.spawn(move || {
                for id in part {
                    let got = s.chat(id);
                    assert_eq!(got, s.order(id)[0], "conversation {} on its backend", id);
                    counts.lock().unwrap()[got] += 1;
                }
            });
        }
    });
    let counts = counts.into_inner().unwrap();
    // The pure ranking is held to ±10% over 1,000 conversations with fixed backend URLs (the
    // unit tests); these URLs carry random ports, so their spread gets more room to never
    // flake (±20% is over 3.5 standard deviations).
    for (c, w) in counts.iter().zip(weights) {
        let want = (n * w as usize / 4) as f64;
        assert!(
            (*c as f64 - want).abs() <= 0.2 * want,
            "spread {:?} against weights {:?}",
            counts,
            weights
        );
    }
    // Later turns, from the Claude Code header too, stay where the conversation is.
    for id in ids.iter().take(30) {
        assert_eq!(s.chat(id), s.order(id)[0]);
        let claude = s.turn(
            &[("X-Claude-Code-Session-Id", id)],
            &chat_body("m", "more", false),
        );
        assert_eq!(claude, s.order(id)[0]);
    }
    // The key is personal data: it is hashed, never logged.
    s.proxy
        .wait_logs("every access log line", Duration::from_secs(5), |logs| {
            logs.iter()
                .filter(|l| l.contains("outcome=complete"))
                .count()
                >= n + 60
        });
    let keys: Vec<&str> = ids.iter().map(String::as_str).take(50).collect();
    s.proxy.assert_no_secret_logged(&keys);
}

#[test]
fn the_user_is_the_key_when_no_header_names_the_conversation_and_no_key_balances_as_before() {
    let s = setup(&[1, 1, 1], json!({}), json!({}), json!({}));
    // No client keys: the body's `user` names the user.
    for user in ["ann", "bob", "carol", "dave"] {
        let body =
            json!({"model": "m", "user": user, "messages": [{"role": "user", "content": "hi"}]});
        for _ in 0..3 {
            assert_eq!(s.turn(&[], &body.to_string()), s.order(user)[0], "{}", user);
        }
    }
    // The header wins over the user.
    let body =
        json!({"model": "m", "user": "ann", "messages": [{"role": "user", "content": "hi"}]});
    let chat = "chat-of-ann";
    assert_eq!(
        s.turn(&[("X-OpenWebUI-Chat-Id", chat)], &body.to_string()),
        s.order(chat)[0]
    );
    // No key at all: least in flight, then weighted round-robin, as without affinity.
    let before = s.served();
    for _ in 0..30 {
        s.turn(&[], &chat_body("m", "hi", false));
    }
    let after: Vec<usize> = s.served().iter().zip(&before).map(|(a, b)| a - b).collect();
    assert_balanced(&after);
    s.proxy.assert_no_secret_logged(&["carol", "chat-of-ann"]);

    // `byUser: false`: the user is no key, so the same user's requests are balanced.
    let s = setup(&[1, 1, 1], json!({"byUser": false}), json!({}), json!({}));
    let body =
        json!({"model": "m", "user": "ann", "messages": [{"role": "user", "content": "hi"}]});
    for _ in 0..30 {
        s.turn(&[], &body.to_string());
    }
    assert_balanced(&s.served());
}

#[test]
fn a_cooling_backend_hands_the_conversation_to_the_next_in_order_until_it_recovers() {
    let s = setup(
        &[1, 1, 1],
        json!(true),
        json!({}),
        json!({"health": {"failureThreshold": 1, "cooldownSecs": 2}, "retry": {"maxAttempts": 3, "backoffMs": 1}}),
    );
    let id = "chat-failover";
    let order = s.order(id);
    assert_eq!(s.chat(id), order[0]);
    // The first fails: the request fails over to the second in order, not to any backend.
    s.mocks[order[0]].set_behavior(failing(503, &[]));
    assert_eq!(s.chat(id), order[1]);
    let tries = s.served();
    // Cooling down: the next turns go straight to the second.
    for _ in 0..3 {
        assert_eq!(s.chat(id), order[1]);
    }
    assert_eq!(
        s.served()[order[0]],
        tries[order[0]],
        "no turn tried the first"
    );
    // The second fails too: the third takes it.
    s.mocks[order[1]].set_behavior(failing(502, &[]));
    assert_eq!(s.chat(id), order[2]);
    // Both recover; once the first's cool-down ends the conversation is back on it.
    s.mocks[order[0]].set_behavior(Behavior::default());
    s.mocks[order[1]].set_behavior(Behavior::default());
    wait_until(
        "the first backend's cool-down to end",
        Duration::from_secs(5),
        || {
            get(s.proxy.addr, "/health?backends=1").json()["backends"]["m"][order[0]]["coolingDown"]
                == false
        },
    );
    for _ in 0..3 {
        assert_eq!(s.chat(id), order[0]);
    }
}

#[test]
fn a_held_off_or_full_backend_hands_the_conversation_to_the_next_in_order() {
    let s = setup(
        &[1, 1, 1],
        json!(true),
        json!({"maxConcurrent": 1}),
        json!({"health": {"failureThreshold": 100}, "retry": {"maxAttempts": 3, "backoffMs": 1}}),
    );
    let id = "chat-busy";
    let order = s.order(id);
    // At its maxConcurrent: one turn holds the first backend's only slot.
    s.mocks[order[0]].set_behavior(Behavior {
        first_byte_delay: Duration::from_millis(1500),
        ..Behavior::default()
    });
    std::thread::scope(|scope| {
        let slow = scope.spawn(|| s.chat(id));
        wait_until(
            "the first turn to reach its backend",
            Duration::from_secs(5),
            || s.mocks[order[0]].requests().len() == 1,
        );
        assert_eq!(
            s.chat(id),
            order[1],
            "the next in order while the first is full"
        );
        s.idle(order[1]);
        assert_eq!(s.chat(id), order[1]);
        assert_eq!(slow.join().unwrap(), order[0]);
    });
    s.mocks[order[0]].set_behavior(Behavior::default());
    s.idle(order[0]);
    assert_eq!(s.chat(id), order[0], "back once its slot is free");
    // Held off (429 with Retry-After): the next in order until the hold-off ends.
    s.mocks[order[0]].set_behavior(failing(429, &[("Retry-After", "2")]));
    s.idle(order[0]);
    assert_eq!(s.chat(id), order[1]);
    let asked = s.mocks[order[0]].requests().len();
    s.mocks[order[0]].set_behavior(Behavior::default());
    s.idle(order[1]);
    assert_eq!(s.chat(id), order[1]);
    assert_eq!(
        s.mocks[order[0]].requests().len(),
        asked,
        "left alone while held off"
    );
    wait_until("the hold-off to end", Duration::from_secs(5), || {
        get(s.proxy.addr, "/health?backends=1").json()["backends"]["m"][order[0]]["heldOff"]
            == false
    });
    s.idle(order[0]);
    assert_eq!(s.chat(id), order[0]);
}

#[test]
fn a_configured_header_list_replaces_the_default() {
    let s = setup(
        &[1, 1, 1],
        json!({"headers": ["X-Conversation"], "byUser": false}),
        json!({}),
        json!({}),
    );
    for c in ["a", "b", "c", "d", "e", "f"] {
        for _ in 0..2 {
            let got = s.turn(&[("X-Conversation", c)], &chat_body("m", "hi", false));
            assert_eq!(got, s.order(c)[0]);
        }
    }
    // The default headers are not read any more: 30 requests with one chat id are balanced.
    let before = s.served();
    for _ in 0..30 {
        s.chat("same-chat");
    }
    let after: Vec<usize> = s.served().iter().zip(&before).map(|(a, b)| a - b).collect();
    assert_balanced(&after);
}

#[test]
fn with_affinity_every_later_turn_finds_its_prefix_cache() {
    // The bench's premise, through the proxy: the prefix cache mock, three backends.
    let run = |affinity: Value| -> (usize, usize) {
        let s = setup(&[1, 1, 1], affinity, json!({}), json!({}));
        for m in &s.mocks {
            m.set_behavior(Behavior {
                prefix_cache: Some(support::mock_backend::PrefixCache {
                    hit: Duration::ZERO,
                    miss: Duration::ZERO,
                }),
                ..Behavior::default()
            });
        }
        let (mut hits, mut later) = (0, 0);
        for c in 0..12 {
            let id = format!("conversation-{}", c);
            let mut messages = vec![json!({"role": "user", "content": format!("{} turn 0", id)})];
            for turn in 0..4 {
                let body = json!({"model": "m", "messages": messages}).to_string();
                let r = request(
                    s.proxy.addr,
                    "POST",
                    "/v1/chat/completions",
                    &[
                        ("Content-Type", "application/json"),
                        ("X-OpenWebUI-Chat-Id", &id),
                    ],
                    body.as_bytes(),
                );
                assert_eq!(r.status, 200, "{}", r.text());
                let outcome = r.header("x-mock-prefix-cache").unwrap_or_default();
                if turn == 0 {
                    assert_eq!(outcome, "miss", "a first turn has nothing cached");
                }
                if turn > 0 {
                    later += 1;
                    hits += usize::from(outcome == "hit");
                }
                messages.push(json!({"role": "assistant", "content": format!("answer {}", turn)}));
                messages.push(json!({"role": "user", "content": format!("turn {}", turn + 1)}));
            }
        }
        (hits, later)
    };
    assert_eq!(run(json!(true)), (36, 36));
    // Without it, turns are spread round-robin: a later turn rarely finds its backend.
    let (hits, later) = run(json!(false));
    assert!(
        hits < later / 2,
        "{} of {} hit without affinity",
        hits,
        later
    );
}
