//! Issue 20 items 6 to 8, budgets in money, through real HTTP: `costPerDay` and `costTotal`
//! refusals with their exact messages (and `Retry-After` to the window's end, none for a total),
//! the bound under concurrent requests, a restart that rebuilds the spend from the ledger's
//! `cost`, two replicas on one redis-server, `/usage?user=` spent and remaining, `warnAt`'s log
//! line and metric, an unpriced model under a cost budget, and mistyped budgets at load.
//!
//! Prices: 500 per 1M input tokens and 800 per 1M output tokens, so a prompt token costs 500
//! micro-units and a completion token 800. The mock backend echoes: prompt tokens = words of the
//! user message, completion tokens = the same count. A request reserves its worst case: its body
//! bytes / 4 (rounded up) at the input price plus its `max_tokens` at the output price.

mod support;

use serde_json::{json, Value};
use std::time::Duration;
use support::mock_backend::{Behavior, MockBackend};
use support::redis::RedisServer;
use support::*;

const KEY: &str = "sk-cost-budgets-backend-2b3c4d";
const ADMIN: (&str, &str) = (
    "CM_OPEN_WEBUI_PROXY_ADMIN_KEY",
    "mm-cost-budgets-admin-9a8b",
);
const TEN_WORDS: &str = "one two three four five six seven eight nine ten";
/// What a request of `TEN_WORDS` costs once answered: 10 × 500 + 10 × 800 micro-units.
const COST: u64 = 13_000;

/// Model `m` (priced) and `free` (no price) on `url`, plus `top` fields.
fn config(url: &str, top: Value) -> String {
    let mut root = json!({
        "endpoints": {
            "m": {"url": url, "apiKey": KEY, "actualModelName": "real-m",
                  "pricing": {"input": 500, "output": 800}},
            "free": {"url": url, "apiKey": KEY, "actualModelName": "real-free"},
        },
    });
    merge(&mut root, top);
    root.to_string()
}

fn start(cfg: &str) -> Proxy {
    Proxy::start_with(cfg, &[ADMIN], &[])
}

fn body(model: &str, user: &str) -> String {
    json!({"model": model, "user": user, "max_tokens": 10,
           "messages": [{"role": "user", "content": TEN_WORDS}]})
    .to_string()
}

/// The worst case a body reserves, in micro-units.
fn worst(body: &str) -> u64 {
    (body.len() as u64).div_ceil(4) * 500 + 10 * 800
}

fn chat(p: &Proxy, body: &str) -> Resp {
    request(
        p.addr,
        "POST",
        "/v1/chat/completions",
        &[("Content-Type", "application/json")],
        body.as_bytes(),
    )
}

/// Micro-units as the refusal words them: two decimals at least, up to six.
fn money(m: u64) -> String {
    let mut frac = format!("{:06}", m % 1_000_000);
    while frac.len() > 2 && frac.ends_with('0') {
        frac.pop();
    }
    format!("{}.{}", m / 1_000_000, frac)
}

/// How many requests in a row a budget admits when each reserves `worst` and costs `cost`.
fn admitted_in_a_row(budget: u64, worst: u64, cost: u64) -> u64 {
    let (mut spent, mut n) = (0, 0);
    while spent + worst <= budget {
        spent += cost;
        n += 1;
    }
    n
}

/// `YYYY-MM-DD` of a day number since 1970-01-01.
fn date(days: u64) -> String {
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{:04}-{:02}-{:02}", y, m, d)
}

fn usage_limits(p: &Proxy, user: &str) -> Value {
    let auth = format!("Bearer {}", ADMIN.1);
    let r = request(
        p.addr,
        "GET",
        &format!("/usage?user={}", user),
        &[("Authorization", &auth)],
        b"",
    );
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["limits"].clone()
}

fn metric(p: &Proxy, series: &str) -> Option<f64> {
    let auth = format!("Bearer {}", ADMIN.1);
    let r = request(p.addr, "GET", "/metrics", &[("Authorization", &auth)], b"");
    r.text().lines().find_map(|l| {
        l.strip_prefix(series)
            .and_then(|rest| rest.strip_prefix(' '))
            .and_then(|v| v.trim().parse().ok())
    })
}

/// Sends `user`'s `body` until an answer is not 200 (at most `max`), each once the one before
/// settled (`already`: what the user had spent before); returns how many were 200 and the last.
fn spend_until_refused(p: &Proxy, body: &str, user: &str, already: u64, max: u64) -> (u64, Resp) {
    for i in 0..max {
        let r = chat(p, body);
        if r.status != 200 {
            return (i, r);
        }
        wait_spent(p, user, already + COST * (i + 1));
    }
    panic!("{} requests were all admitted", max);
}

/// Waits until `/usage` shows `user`'s first cost budget spent as `spent` (a settle lands a
/// moment after its answer).
fn wait_spent(p: &Proxy, user: &str, spent: u64) {
    let want = format!("{}.{:06}", spent / 1_000_000, spent % 1_000_000);
    wait_until(
        "the settled spend in /usage",
        Duration::from_secs(5),
        || {
            usage_limits(p, user)
                .as_array()
                .and_then(|a| a.iter().find(|l| l["currency"].is_string()))
                .is_some_and(|l| l["spent"] == want)
        },
    );
}

#[test]
fn cost_per_day_refuses_with_the_budget_and_what_is_left_and_a_restart_keeps_it() {
    let a = MockBackend::start(Behavior::default());
    let dir = TempDir::new();
    let cfg = config(
        &a.url(),
        json!({"currency": "EUR",
               "usageLog": dir.0.join("usage.jsonl").display().to_string(),
               "limits": [{"match": {"user": "*"}, "costPerDay": 0.05}]}),
    );
    let p = start(&cfg);
    let b = body("m", "ann");
    let (w, budget) = (worst(&b), 50_000);
    let expect = admitted_in_a_row(budget, w, COST);
    assert!(
        expect >= 2,
        "the test wants a few requests, worst case {}",
        w
    );
    for i in 0..expect {
        let r = chat(&p, &b);
        assert_eq!(r.status, 200, "request {}: {}", i, r.text());
        wait_spent(&p, "ann", COST * (i + 1));
    }
    let spent = COST * expect;
    let refusal = |p: &Proxy| {
        let r = chat(p, &b);
        let e = r.error(429);
        assert_eq!(
            (&e["code"], &e["type"]),
            (&json!("insufficient_quota"), &json!("insufficient_quota"))
        );
        let now = now_secs();
        let tomorrow = date(now / 86_400 + 1);
        assert_eq!(
            e["message"],
            format!(
                "Budget exceeded: limits[0] (each user) has a budget of 0.05 EUR per day, {} EUR \
                 left, and this request may cost up to {} EUR (its prompt and max_tokens at the \
                 model's prices); it resets at {}T00:00:00Z.",
                money(budget - spent),
                money(w),
                tomorrow
            )
        );
        let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
        assert!(retry.abs_diff(86_400 - now % 86_400) <= 3, "{}", retry);
    };
    refusal(&p);
    // Another user has a budget of their own.
    assert_eq!(chat(&p, &body("m", "bob")).status, 200);
    let l = usage_limits(&p, "ann");
    assert_eq!(
        l[0],
        json!({"rule": 0, "limit": "cost_per_day", "currency": "EUR", "max": "0.050000",
               "spent": format!("0.{:06}", spent), "remaining": format!("0.{:06}", budget - spent),
               "reset_secs": l[0]["reset_secs"]}),
        "{}",
        l
    );
    assert!(l[0]["reset_secs"].as_u64().unwrap() <= 86_400);
    assert_eq!(
        metric(&p, "modelmux_limit_refusals_total{limit=\"cost_per_day\"}"),
        Some(1.0)
    );
    // The spend is rebuilt from the ledger's cost at start.
    drop(p);
    let p = start(&cfg);
    refusal(&p);
    assert_eq!(
        usage_limits(&p, "ann")[0]["spent"],
        format!("0.{:06}", spent)
    );
    assert_eq!(a.requests().len() as u64, expect + 1);
}

#[test]
fn a_prepaid_total_refuses_without_retry_after_and_survives_a_restart() {
    let a = MockBackend::start(Behavior::default());
    let dir = TempDir::new();
    let cfg = config(
        &a.url(),
        json!({"usageLog": dir.0.join("usage.jsonl").display().to_string(),
               "limits": [{"match": {"user": "*"}, "costTotal": 0.04}]}),
    );
    let p = start(&cfg);
    let b = body("m", "kid");
    let w = worst(&b);
    let expect = admitted_in_a_row(40_000, w, COST);
    let (served, _) = spend_until_refused(&p, &b, "kid", 0, 10);
    assert_eq!(served, expect);
    let check = |p: &Proxy| {
        wait_spent(p, "kid", COST * expect);
        let r = chat(p, &b);
        let e = r.error(429);
        assert_eq!(e["code"], "insufficient_quota");
        assert_eq!(
            e["message"],
            format!(
                "Budget exceeded: limits[0] (each user) has a budget of 0.04 USD in total, {} USD \
                 left, and this request may cost up to {} USD (its prompt and max_tokens at the \
                 model's prices); it does not reset.",
                money(40_000 - COST * expect),
                money(w)
            )
        );
        assert_eq!(
            r.header("retry-after"),
            None,
            "no time helps a prepaid budget"
        );
        let l = usage_limits(p, "kid");
        assert_eq!(
            (&l[0]["limit"], &l[0]["reset_secs"]),
            (&json!("cost_total"), &Value::Null)
        );
    };
    check(&p);
    drop(p);
    let p = start(&cfg);
    check(&p);
    assert_eq!(a.requests().len() as u64, expect);
}

#[test]
fn concurrent_requests_never_spend_past_the_budget() {
    let a = MockBackend::start(Behavior {
        first_byte_delay: Duration::from_millis(1500),
        ..Behavior::default()
    });
    let budget = 100_000;
    let p = start(&config(
        &a.url(),
        json!({"limits": [{"match": {"user": "*"}, "costPerDay": 0.1}]}),
    ));
    let b = body("m", "racer");
    let w = worst(&b);
    let gate = std::sync::Arc::new(std::sync::Barrier::new(12));
    let threads: Vec<_> = (0..12)
        .map(|_| {
            let (addr, b, gate) = (p.addr, b.clone(), gate.clone());
            std::thread::spawn(move || {
                gate.wait();
                request(
                    addr,
                    "POST",
                    "/v1/chat/completions",
                    &[("Content-Type", "application/json")],
                    b.as_bytes(),
                )
            })
        })
        .collect();
    let answers: Vec<Resp> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    let ok = answers.iter().filter(|r| r.status == 200).count() as u64;
    // Every admitted request held its worst case until it settled: at most budget / worst
    // of them were in flight together.
    assert!(
        (1..=budget / w).contains(&ok),
        "{} admitted; a budget of {} holds {} reservations of {}",
        ok,
        budget,
        budget / w,
        w
    );
    for r in answers.iter().filter(|r| r.status != 200) {
        assert_eq!(r.error(429)["code"], "insufficient_quota");
    }
    assert_eq!(a.requests().len() as u64, ok);
    // Spent to the end, one at a time: the settled spend stays within the budget, and what
    // is left is less than one request's worst case.
    a.set_behavior(Behavior::default());
    wait_spent(&p, "racer", COST * ok);
    let (more, _) = spend_until_refused(&p, &b, "racer", COST * ok, 20);
    let spent = COST * (ok + more);
    wait_spent(&p, "racer", spent);
    assert!(spent <= budget, "settled {} of {}", spent, budget);
    assert!(budget - spent < w, "settled {} of {}", spent, budget);
}

#[test]
fn two_replicas_share_one_budget_through_redis() {
    let redis = RedisServer::start();
    let a = MockBackend::start(Behavior::default());
    let replica = |dir: &TempDir| {
        start(&config(
            &a.url(),
            json!({"limitsStore": redis.url(), "limitsStoreTimeoutMs": 3000,
                   "usageLog": dir.0.join("usage.jsonl").display().to_string(),
                   "limits": [{"match": {"user": "*"}, "costPerMonth": 0.05}]}),
        ))
    };
    let (d1, d2) = (TempDir::new(), TempDir::new());
    let (p1, p2) = (replica(&d1), replica(&d2));
    let b = body("m", "ann");
    let w = worst(&b);
    let expect = admitted_in_a_row(50_000, w, COST);
    let mut served = 0;
    // One at a time, alternating, each settled before the next is sent.
    loop {
        let p = if served % 2 == 0 { &p1 } else { &p2 };
        let r = chat(p, &b);
        if r.status != 200 {
            let e = r.error(429);
            assert!(
                e["message"]
                    .as_str()
                    .unwrap()
                    .contains(&format!("{} USD left", money(50_000 - COST * served))),
                "{}",
                e
            );
            break;
        }
        served += 1;
        wait_spent(&p1, "ann", COST * served);
        wait_spent(&p2, "ann", COST * served);
    }
    assert_eq!(served, expect, "both replicas spend one budget");
    // The other replica refuses too, and another user is untouched.
    let other = if served % 2 == 0 { &p2 } else { &p1 };
    assert_eq!(chat(other, &b).status, 429);
    assert_eq!(chat(other, &body("m", "bob")).status, 200);
    // A replica restarted against the same Redis keeps the spend (Redis keeps the counters).
    drop(p1);
    let p1 = replica(&d1);
    assert_eq!(chat(&p1, &b).status, 429);
}

#[test]
fn warn_at_logs_once_per_window_and_counts_a_metric() {
    let a = MockBackend::start(Behavior::default());
    let p = start(&config(
        &a.url(),
        json!({"limits": [{"match": {"user": "*"}, "costPerDay": 0.06, "warnAt": 0.4}]}),
    ));
    let b = body("m", "ann");
    let series = "modelmux_budget_warnings_total{rule=\"0\",window=\"day\"}";
    // The threshold is 0.024: the first request (0.013) stays below it, the second passes it.
    assert_eq!(chat(&p, &b).status, 200);
    wait_spent(&p, "ann", COST);
    assert_eq!(metric(&p, series), None);
    assert_eq!(chat(&p, &b).status, 200);
    wait_until("the warning", Duration::from_secs(5), || {
        metric(&p, series) == Some(1.0)
    });
    let line = p
        .wait_log("past warnAt", Duration::from_secs(5))
        .expect("a warning line");
    assert!(
        line.contains(
            "limits[0]: \"u=ann\" has spent 0.026 USD of its budget of 0.06 USD per day \
             (43%, past warnAt)"
        ),
        "{}",
        line
    );
    // Once per window: a third request in the same day warns no more.
    assert_eq!(chat(&p, &b).status, 200);
    wait_spent(&p, "ann", 3 * COST);
    assert_eq!(metric(&p, series), Some(1.0));
    assert_eq!(p.count_logs("past warnAt"), 1);
    // Another user has warnings of their own.
    chat(&p, &body("m", "bob"));
    chat(&p, &body("m", "bob"));
    wait_until("bob's warning", Duration::from_secs(5), || {
        metric(&p, series) == Some(2.0)
    });
}

#[test]
fn an_unpriced_model_under_a_cost_budget_is_refused_and_a_model_outside_it_is_not() {
    let a = MockBackend::start(Behavior::default());
    let p = start(&config(
        &a.url(),
        json!({"limits": [{"match": {"user": "*", "model": "free"}, "costPerDay": 1},
                          {"match": {"user": "*", "model": "m"}, "costPerDay": 1}]}),
    ));
    let r = chat(&p, &body("free", "ann"));
    let e = r.error(403);
    assert_eq!(e["code"], "model_unpriced");
    assert_eq!(
        e["message"],
        "limits[0] (each user, model \"free\") is a budget in USD, and model \"free\" has no \
         price, so what it costs cannot be counted; the operator must give its backends a \
         \"pricing\" (0 to make it free)."
    );
    assert!(a.requests().is_empty(), "never sent on");
    assert_eq!(chat(&p, &body("m", "ann")).status, 200);
    // Without a cost rule for it, an unpriced model needs no price.
    let p = start(&config(
        &a.url(),
        json!({"limits": [{"match": {"user": "*", "model": "m"}, "costPerDay": 1}]}),
    ));
    assert_eq!(chat(&p, &body("free", "ann")).status, 200);
}

#[test]
fn a_mistyped_budget_stops_the_start_naming_the_field() {
    for (limit, location, says) in [
        (
            json!({"costPerMonth": -20}),
            "limits[0].costPerMonth",
            "expected an amount of the currency from 0.000001 to 1000000000 (e.g. 20 or 0.5), got -20",
        ),
        (json!({"costPerDay": "5"}), "limits[0].costPerDay", "got \"5\""),
        (
            json!({"costPermonth": 20}),
            "limits[0].costPermonth",
            "unknown field; did you mean \"costPerMonth\"?",
        ),
        (
            json!({"costTotal": 5, "warnAt": 90}),
            "limits[0].warnAt",
            "expected a share of the budget above 0 and at most 1 (e.g. 0.9), got 90",
        ),
    ] {
        let mut rule = json!({"match": {"user": "*"}});
        merge(&mut rule, limit);
        let cfg = config("http://127.0.0.1:9", json!({"limits": [rule]}));
        let logs = Proxy::try_start(&cfg, &[], &[])
            .err()
            .expect("must not start");
        assert!(
            logs.iter()
                .any(|l| l.contains(&format!("{}: ", location)) && l.contains(says)),
            "{}",
            logs.join("\n")
        );
    }
}

/// A prepaid balance a restart would forget is refused at start (fail closed): `costTotal`
/// needs a ledger file or the shared store; a ledger on stdout is not read back.
#[test]
fn a_prepaid_total_without_a_ledger_file_or_store_stops_the_start() {
    let total = json!([{"match": {"user": "*"}, "costTotal": 5}]);
    for top in [
        json!({"limits": total}),
        json!({"limits": total, "usageLog": "-"}),
    ] {
        let cfg = config("http://127.0.0.1:9", top);
        let logs = Proxy::try_start(&cfg, &[], &[])
            .err()
            .expect("must not start");
        assert!(
            logs.iter().any(|l| l.contains(
                "limits: costTotal (a prepaid budget that never resets) needs usageLog (a file, read back at start) or store (Redis)"
            )),
            "{}",
            logs.join("\n")
        );
    }
}
