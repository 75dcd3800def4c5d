//! The unit tests of `quota`.

use super::*;
use crate::config::parse_rules;
use crate::policy::limits::reservation::first_in_minute;
use serde_json::json;
use serde_json::Value;
use std::sync::atomic::{AtomicU64, Ordering};

/// 2024-03-14 12:00:00 UTC: mid-month, on a minute boundary.
const NOON: u64 = 1_710_417_600;

fn quotas(rules: Value) -> Quotas {
    Quotas::new(
        parse_rules(&rules).unwrap(),
        Store::local(),
        FailureMode::Open,
    )
}

fn who<'a>(user: &'a str, key: &'a str, model: &'a str) -> Subject<'a> {
    Subject { user, key, model }
}

fn denied(r: Result<Reservation, Refusal>) -> Denied {
    match r {
        Err(Refusal::Limited(d)) => d,
        other => panic!("expected a refusal by a rule, got {:?}", other),
    }
}

#[test]
fn requests_per_minute() {
    let q = quotas(json!([{"match": {"user": "*"}, "requestsPerMinute": 2}]));
    let ann = who("ann", "k", "m");
    q.reserve(&ann, 0, NOON).unwrap().settle(0);
    q.reserve(&ann, 0, NOON + 1).unwrap().release();
    let d = denied(q.reserve(&ann, 0, NOON + 20));
    assert_eq!(
        (d.rule, d.limit, d.code, d.retry_after_secs),
        (0, "requests_per_minute", "rate_limit_exceeded", 40)
    );
    assert_eq!(
        d.message,
        "Rate limit reached: limits[0] (each user) allows 2 requests per minute; try again in 40s."
    );
    // Another user has a budget of their own; the next minute starts afresh.
    q.reserve(&who("bob", "k", "m"), 0, NOON + 20)
        .unwrap()
        .settle(0);
    q.reserve(&ann, 0, NOON + 60).unwrap().settle(0);
}

#[test]
fn tokens_per_minute_day_and_month() {
    let q = quotas(json!([
        {"match": {"user": "*"}, "tokensPerMinute": 100},
        {"match": {"user": "*"}, "tokensPerDay": 250},
        {"match": {"user": "*"}, "tokensPerMonth": 400}
    ]));
    let ann = who("ann", "k", "m");
    q.reserve(&ann, 100, NOON).unwrap().settle(100);
    let d = denied(q.reserve(&ann, 1, NOON + 30));
    assert_eq!(
        (d.rule, d.limit, d.retry_after_secs),
        (0, "tokens_per_minute", 30)
    );
    q.reserve(&ann, 100, NOON + 60).unwrap().settle(100);
    // 200 today: 60 more would pass the minute but not the day.
    let d = denied(q.reserve(&ann, 60, NOON + 120));
    assert_eq!(
        (d.rule, d.limit, d.code),
        (1, "tokens_per_day", "insufficient_quota")
    );
    assert_eq!(d.retry_after_secs, 12 * 3600 - 120);
    assert_eq!(
        d.message,
        "Quota exceeded: limits[1] (each user) allows 250 tokens per day; it resets in 11h58m0s."
    );
    // Next day: the day is fresh, the month has 200 of 400.
    let tomorrow = NOON + 86_400;
    q.reserve(&ann, 100, tomorrow).unwrap().settle(100);
    q.reserve(&ann, 100, tomorrow + 60).unwrap().settle(100);
    let d = denied(q.reserve(&ann, 1, tomorrow + 120));
    assert_eq!(
        (d.rule, d.limit, d.code),
        (2, "tokens_per_month", "insufficient_quota")
    );
    // From 2024-03-15 12:02 the month resets at 2024-04-01 00:00.
    assert_eq!(d.retry_after_secs, 16 * 86_400 + 12 * 3600 - 120);
}

#[test]
fn a_refused_reservation_gives_back_its_request_and_tokens() {
    let q =
        quotas(json!([{"match": {"user": "*"}, "requestsPerMinute": 1, "tokensPerMinute": 100}]));
    let ann = who("ann", "k", "m");
    q.reserve(&ann, 90, NOON).unwrap().refuse();
    q.reserve(&ann, 90, NOON + 1).unwrap().settle(90);
    assert_eq!(
        denied(q.reserve(&ann, 0, NOON + 2)).limit,
        "requests_per_minute"
    );
}

#[test]
fn concurrent_is_released_by_settle_release_and_drop() {
    let q = quotas(json!([{"match": {"key": "*"}, "concurrent": 2}]));
    let s = who("ann", "web", "m");
    let a = q.reserve(&s, 10, NOON).unwrap();
    let b = q.reserve(&s, 10, NOON).unwrap();
    let d = denied(q.reserve(&s, 10, NOON));
    assert_eq!(
        (d.limit, d.code, d.retry_after_secs),
        ("concurrent", "rate_limit_exceeded", 1)
    );
    assert!(d
        .message
        .contains("limits[0] (each key) allows 2 concurrent requests"));
    // Another key is not affected.
    drop(q.reserve(&who("ann", "cli", "m"), 10, NOON).unwrap());
    a.settle(5);
    let c = q.reserve(&s, 10, NOON).unwrap();
    b.release();
    drop(c); // neither settled nor released
    let _x = q.reserve(&s, 10, NOON).unwrap();
    let _y = q.reserve(&s, 10, NOON).unwrap();
    assert!(q.shared.inflight().get("k=web").copied() == Some(2));
    drop((_x, _y));
    assert!(q.shared.inflight().is_empty(), "no count is leaked");
}

#[test]
fn literal_rules_only_bind_their_value_and_all_matching_rules_apply() {
    let q = quotas(json!([
        {"match": {"model": "gpt-4o"}, "requestsPerMinute": 1},
        {"match": {"user": "ann"}, "requestsPerMinute": 3}
    ]));
    q.reserve(&who("bob", "k", "gpt-4o"), 0, NOON)
        .unwrap()
        .settle(0);
    // gpt-4o is shared by everyone under rule 0.
    assert_eq!(
        denied(q.reserve(&who("ann", "k", "gpt-4o"), 0, NOON)).rule,
        0
    );
    for _ in 0..3 {
        q.reserve(&who("ann", "k", "mini"), 0, NOON)
            .unwrap()
            .settle(0);
    }
    assert_eq!(denied(q.reserve(&who("ann", "k", "mini"), 0, NOON)).rule, 1);
    q.reserve(&who("bob", "k", "mini"), 0, NOON)
        .unwrap()
        .settle(0);
}

#[test]
fn all_or_nothing_across_rules() {
    let q = quotas(json!([
        {"match": {"user": "*"}, "tokensPerMinute": 1000},
        {"match": {"model": "small"}, "tokensPerMinute": 100}
    ]));
    let ann = who("ann", "k", "small");
    q.reserve(&ann, 80, NOON).unwrap().settle(80);
    // Rule 1 (the model's budget) refuses; rule 0 must not have been charged the 50.
    assert_eq!(denied(q.reserve(&ann, 50, NOON)).rule, 1);
    // Had rule 0 been charged, these 920 would not fit in its 1000.
    q.reserve(&who("ann", "k", "big"), 920, NOON)
        .unwrap()
        .settle(920);
    let st = q.status(&ann, NOON).unwrap();
    assert_eq!(st[0].budgets[0].remaining, 0);
    assert_eq!(st[1].budgets[0].remaining, 20);
}

#[test]
fn estimate_larger_than_the_limit_says_so() {
    let q = quotas(json!([{"tokensPerMinute": 100}]));
    let d = denied(q.reserve(&who("a", "k", "m"), 500, NOON + 10));
    assert_eq!(
        d.message,
        "limits[0] (all requests together) allows 100 tokens per minute, and this request may \
         use up to 500 tokens (its prompt plus max_tokens); lower max_tokens."
    );
    assert_eq!(d.retry_after_secs, 50);
}

#[test]
fn the_longest_reset_is_reported_when_several_limits_refuse() {
    let q = quotas(json!([
        {"tokensPerMinute": 10},
        {"tokensPerDay": 10}
    ]));
    let s = who("a", "k", "m");
    q.reserve(&s, 10, NOON).unwrap().settle(10);
    let d = denied(q.reserve(&s, 5, NOON + 1));
    assert_eq!((d.rule, d.limit), (1, "tokens_per_day"));
}

#[test]
fn settle_lowers_and_raises_usage() {
    let q = quotas(json!([{"match": {"user": "*"}, "tokensPerDay": 1000}]));
    let s = who("ann", "k", "m");
    let remaining = |q: &Quotas| q.status(&s, NOON + 5).unwrap()[0].budgets[0].remaining;
    let r = q.reserve(&s, 500, NOON).unwrap();
    assert_eq!(remaining(&q), 500);
    r.settle(120);
    assert_eq!(remaining(&q), 880);
    q.reserve(&s, 100, NOON).unwrap().settle(700); // the estimate was too low
    assert_eq!(remaining(&q), 180);
    q.reserve(&s, 150, NOON).unwrap().release();
    assert_eq!(remaining(&q), 180);
    drop(q.reserve(&s, 150, NOON).unwrap()); // forgotten: the estimate stays
    assert_eq!(remaining(&q), 30);
    assert_eq!(denied(q.reserve(&s, 31, NOON)).limit, "tokens_per_day");
}

#[test]
fn a_settle_after_the_window_ended_leaves_the_new_window_alone() {
    let q = quotas(json!([{"tokensPerMinute": 100}]));
    let s = who("a", "k", "m");
    let r = q.reserve(&s, 90, NOON + 59).unwrap();
    q.reserve(&s, 50, NOON + 60).unwrap().settle(50);
    r.settle(10); // belongs to the previous minute
    let st = q.status(&s, NOON + 61).unwrap();
    assert_eq!(st[0].budgets[0].remaining, 50);
}

#[test]
fn the_reservation_race_never_overspends() {
    let q = Arc::new(quotas(
        json!([{"match": {"user": "*"}, "tokensPerMinute": 1000}]),
    ));
    let admitted = Arc::new(AtomicU64::new(0));
    let threads: Vec<_> = (0..32)
        .map(|i| {
            let (q, admitted) = (Arc::clone(&q), Arc::clone(&admitted));
            std::thread::spawn(move || {
                for _ in 0..20 {
                    let est = 7 + i % 5 * 11;
                    if let Ok(r) = q.reserve(&who("ann", "k", "m"), est, NOON) {
                        admitted.fetch_add(est, Ordering::SeqCst);
                        // Hold the reservation across a yield so others race with it.
                        std::thread::yield_now();
                        drop(r);
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let total = admitted.load(Ordering::SeqCst);
    assert!(
        total <= 1000,
        "admitted {} tokens on a budget of 1000",
        total
    );
    // Every thread kept trying, so what is left is less than the largest estimate (51).
    assert!(
        total > 949,
        "the budget should be nearly used, got {}",
        total
    );
}

#[test]
fn status_and_headers() {
    let q = quotas(json!([
        {"match": {"user": "*"}, "requestsPerMinute": 20, "tokensPerMinute": 40000},
        {"match": {"user": "*"}, "tokensPerDay": 1000},
        {"match": {"user": "*"}, "concurrent": 3}
    ]));
    let s = who("ann", "k", "m");
    q.reserve(&s, 600, NOON).unwrap().settle(600);
    let st = q.status(&s, NOON + 10).unwrap();
    assert_eq!(st.len(), 2, "a concurrency-only rule has no budget");
    assert_eq!(
        st[0].budgets,
        vec![
            Budget {
                kind: Limit::RequestsPerMinute,
                limit: 20,
                spent: 1,
                remaining: 19,
                reset_secs: Some(50)
            },
            Budget {
                kind: Limit::TokensPerMinute,
                limit: 40000,
                spent: 600,
                remaining: 39400,
                reset_secs: Some(50)
            }
        ]
    );
    assert_eq!(
        ratelimit_headers(&st),
        vec![
            ("x-ratelimit-limit-requests", "20".to_string()),
            ("x-ratelimit-remaining-requests", "19".to_string()),
            ("x-ratelimit-reset-requests", "50s".to_string()),
            ("x-ratelimit-limit-tokens", "1000".to_string()),
            ("x-ratelimit-remaining-tokens", "400".to_string()),
            ("x-ratelimit-reset-tokens", "11h59m50s".to_string()),
        ]
    );
    assert!(ratelimit_headers(&[]).is_empty());
    assert!(q.status(&s, NOON).unwrap().iter().all(|r| r.rule != 2));
}

#[test]
fn resets_are_written_like_openai() {
    assert_eq!(format_reset(1), "1s");
    assert_eq!(format_reset(59), "59s");
    assert_eq!(format_reset(360), "6m0s");
    assert_eq!(format_reset(3600), "1h0m0s");
    assert_eq!(format_reset(86_399), "23h59m59s");
}

#[test]
fn record_past_survives_a_restart() {
    let rules = json!([{"match": {"user": "*"}, "tokensPerDay": 1000, "requestsPerMinute": 5}]);
    let q = quotas(rules);
    let s = who("ann", "k", "m");
    let now = NOON + 30;
    q.record_past(&s, 300, now - 3600, now); // earlier today
    q.record_past(&s, 200, NOON + 10, now); // this minute
    q.record_past(&s, 999, now - 86_400, now); // yesterday: gone
    q.record_past(&who("bob", "k", "m"), 100, NOON + 10, now);
    let st = q.status(&s, now).unwrap();
    assert_eq!(st[0].budgets[0].remaining, 4, "one request this minute");
    assert_eq!(st[0].budgets[1].remaining, 500);
}

#[test]
fn reload_keeps_counters_and_inflight() {
    let q = quotas(json!([{"match": {"user": "*"}, "tokensPerDay": 100, "concurrent": 1}]));
    let s = who("ann", "k", "m");
    let held = q.reserve(&s, 60, NOON).unwrap();
    // Reordered rules, the same traffic.
    let rules = parse_rules(&json!([
        {"match": {"model": "x"}, "concurrent": 9},
        {"match": {"user": "*"}, "tokensPerDay": 100, "concurrent": 1}
    ]))
    .unwrap();
    let q2 = q.reloaded(rules, FailureMode::Open);
    assert_eq!(denied(q2.reserve(&s, 10, NOON)).limit, "concurrent");
    held.settle(60);
    assert_eq!(denied(q2.reserve(&s, 50, NOON)).limit, "tokens_per_day");
    q2.reserve(&s, 40, NOON).unwrap().settle(40);
}

#[test]
fn no_rules_means_nothing_is_held() {
    let q = quotas(json!([{"match": {"user": "ann"}, "concurrent": 1}]));
    let r = q.reserve(&who("bob", "k", "m"), 10, NOON).unwrap();
    assert!(r.inflight.is_empty() && r.held.is_none());
    assert!(q.status(&who("bob", "k", "m"), NOON).unwrap().is_empty());
}

#[test]
fn failure_mode_parses_and_store_failures_log_once_a_minute() {
    assert_eq!(FailureMode::parse(None), Ok(FailureMode::Open));
    assert_eq!(
        FailureMode::parse(Some(&json!("closed"))),
        Ok(FailureMode::Closed)
    );
    assert_eq!(
        FailureMode::parse(Some(&json!("open"))),
        Ok(FailureMode::Open)
    );
    assert_eq!(
        FailureMode::parse(Some(&json!("Closed"))),
        Err("expected \"open\" or \"closed\", got \"Closed\"".to_string())
    );
    let last = AtomicU64::new(u64::MAX);
    assert!(first_in_minute(&last, 100));
    assert!(!first_in_minute(&last, 100));
    assert!(first_in_minute(&last, 101));
}

fn priced(tokens: u64, cost: u64) -> Estimate {
    Estimate {
        tokens,
        cost: Some(cost),
    }
}

fn paid(tokens: u64, cost: u64) -> Charge {
    Charge { tokens, cost }
}

#[test]
fn a_cost_budget_reserves_the_worst_case_and_settles_to_the_cost() {
    let q = quotas(json!([{"match": {"user": "*"}, "costPerDay": 1, "warnAt": 0.5}]))
        .with_currency("EUR");
    let ann = who("ann", "k", "m");
    let r = q.reserve(&ann, priced(100, 700_000), NOON).unwrap();
    // 0.7 reserved: 0.31 more does not fit until the reservation settles.
    let d = denied(q.reserve(&ann, priced(1, 310_000), NOON + 1));
    assert_eq!(
        (d.rule, d.limit, d.code, d.retry_after_secs),
        (0, "cost_per_day", "insufficient_quota", 12 * 3600 - 1)
    );
    assert_eq!(
        d.message,
        "Budget exceeded: limits[0] (each user) has a budget of 1.00 EUR per day, 0.30 EUR left, \
         and this request may cost up to 0.31 EUR (its prompt and max_tokens at the model's \
         prices); it resets at 2024-03-15T00:00:00Z."
    );
    assert_eq!(
        r.settle(paid(50, 200_000)),
        vec![],
        "0.2 of 1.0: below warnAt"
    );
    let st = q.status(&ann, NOON + 2).unwrap();
    assert_eq!(
        (st[0].budgets[0].spent, st[0].budgets[0].remaining),
        (200_000, 800_000)
    );
    let r = q.reserve(&ann, priced(1, 310_000), NOON + 3).unwrap();
    let warned = r.settle(paid(1, 300_000));
    assert_eq!(
        warned,
        vec![Warning {
            subject: "u=ann".into(),
            rule: 0,
            kind: Limit::CostPerDay,
            spent: 500_000,
            limit: 1_000_000
        }]
    );
    // Once per window: not again today, again tomorrow.
    let again = q.reserve(&ann, priced(1, 1), NOON + 4).unwrap();
    assert_eq!(again.settle(paid(1, 1)), vec![]);
    let tomorrow = q.reserve(&ann, priced(1, 600_000), NOON + 86_400).unwrap();
    assert_eq!(tomorrow.settle(paid(1, 600_000)).len(), 1);
    // A released reservation costs nothing.
    q.reserve(&ann, priced(1, 400_000), NOON + 86_401)
        .unwrap()
        .release();
    let d = denied(q.reserve(&ann, priced(1, 2_000_000), NOON + 86_402));
    assert!(
        d.message.ends_with(
            "this request may cost up to 2.00 EUR (its prompt and max_tokens at the model's \
             prices); lower max_tokens."
        ),
        "{}",
        d.message
    );
}

#[test]
fn a_total_budget_never_resets_and_says_so() {
    let q = quotas(json!([{"match": {"key": "*"}, "costTotal": 5}]));
    let s = who("ann", "family", "m");
    q.reserve(&s, priced(1, 4_990_000), NOON)
        .unwrap()
        .settle(paid(1, 4_990_000));
    let d = denied(q.reserve(&s, priced(1, 20_000), NOON + 40 * 86_400));
    assert_eq!((d.limit, d.retry_after_secs), ("cost_total", 0));
    assert_eq!(
        d.message,
        "Budget exceeded: limits[0] (each key) has a budget of 5.00 USD in total, 0.01 USD left, \
         and this request may cost up to 0.02 USD (its prompt and max_tokens at the model's \
         prices); it does not reset."
    );
    let st = q.status(&s, NOON + 40 * 86_400).unwrap();
    assert_eq!(st[0].budgets[0].reset_secs, None);
    assert!(
        ratelimit_headers(&st).is_empty(),
        "money has no OpenAI header"
    );
}

#[test]
fn an_unpriced_model_under_a_cost_budget_is_refused_and_others_are_not() {
    let q = quotas(json!([
        {"match": {"user": "*"}, "tokensPerDay": 1000},
        {"match": {"model": "gpt"}, "costPerMonth": 20}
    ]));
    match q.reserve(&who("ann", "k", "gpt"), 10, NOON) {
        Err(Refusal::Unpriced { message }) => assert_eq!(
            message,
            "limits[1] (model \"gpt\") is a budget in USD, and model \"gpt\" has no price, so \
             what it costs cannot be counted; the operator must give its backends a \"pricing\" \
             (0 to make it free)."
        ),
        other => panic!("{:?}", other),
    }
    // Nothing was counted for the refusal; a model no cost rule covers needs no price.
    q.reserve(&who("ann", "k", "llama"), 10, NOON)
        .unwrap()
        .settle(10);
    let st = q.status(&who("ann", "k", "gpt"), NOON).unwrap();
    assert_eq!(st[0].budgets[0].spent, 10);
    q.reserve(&who("ann", "k", "gpt"), priced(10, 0), NOON)
        .unwrap()
        .settle(paid(10, 0));
}

#[test]
fn record_past_restores_cost_windows() {
    let q = quotas(json!([{"match": {"user": "*"}, "costPerWeek": 1, "costTotal": 2}]));
    let s = who("ann", "k", "m");
    // NOON is a Thursday: Monday's spend counts this week, last Sunday's only in total.
    q.record_past(&s, paid(5, 400_000), NOON - 3 * 86_400, NOON);
    q.record_past(&s, paid(5, 900_000), NOON - 4 * 86_400, NOON);
    let st = q.status(&s, NOON).unwrap();
    let spent: Vec<u64> = st[0].budgets.iter().map(|b| b.spent).collect();
    assert_eq!(spent, vec![400_000, 1_300_000]);
}

#[test]
fn a_free_request_passes_an_overspent_cost_budget() {
    let q = quotas(json!([{"match": {"user": "*"}, "costPerDay": 1}]));
    let ann = who("ann", "k", "m");
    // A backend that wrote past max_tokens overspent the budget.
    q.reserve(&ann, priced(10, 900_000), NOON)
        .unwrap()
        .settle(paid(10, 1_200_000));
    denied(q.reserve(&ann, priced(1, 1), NOON + 1));
    q.reserve(&ann, priced(1, 0), NOON + 2)
        .unwrap()
        .settle(paid(1, 0));
}

/// The buckets a reservation holds.
fn held_buckets(r: &Reservation) -> Vec<String> {
    r.held.as_ref().map_or(Vec::new(), |h| h.buckets.to_vec())
}

#[test]
fn a_plan_kept_for_the_next_request_is_the_same_subjects_under_the_same_rules() {
    let q = quotas(json!([
        {"match": {"user": "*"}, "requestsPerMinute": 100},
        {"match": {"user": "*", "model": "*"}, "tokensPerDay": 1000},
        {"match": {"key": "web"}, "concurrent": 5}
    ]));
    let reserve = |q: &Quotas, s: &Subject| {
        let r = q.reserve(s, 10, NOON).unwrap();
        let b = held_buckets(&r);
        r.settle(0);
        b
    };
    let ann = who("ann", "web", "m1");
    assert_eq!(reserve(&q, &ann), ["u=ann", "u=ann|m=m1"]);
    assert_eq!(reserve(&q, &ann), ["u=ann", "u=ann|m=m1"]);
    // Each field of the subject names another plan.
    assert_eq!(
        reserve(&q, &who("bob", "web", "m1")),
        ["u=bob", "u=bob|m=m1"]
    );
    assert_eq!(
        reserve(&q, &who("bob", "web", "m2")),
        ["u=bob", "u=bob|m=m2"]
    );
    let other_key = who("bob", "cli", "m2");
    assert_eq!(reserve(&q, &other_key), ["u=bob", "u=bob|m=m2"]);
    // The concurrent rule matched key "web" only: no slot is held under "cli".
    let r = q.reserve(&other_key, 10, NOON).unwrap();
    assert!(r.inflight.is_empty());
    r.settle(0);
    let r = q.reserve(&ann, 10, NOON).unwrap();
    assert_eq!(r.inflight, ["k=web"]);
    r.settle(0);
    // Reloaded rules (the same counters) are planned again, not served the old plan.
    let reloaded = q.reloaded(
        parse_rules(&json!([{"match": {"model": "*"}, "tokensPerDay": 1000}])).unwrap(),
        FailureMode::Open,
    );
    assert_eq!(reserve(&reloaded, &ann), ["m=m1"]);
    assert_eq!(reserve(&q, &ann), ["u=ann", "u=ann|m=m1"]);
    // And another thread's requests are planned there.
    std::thread::scope(|t| {
        t.spawn(|| assert_eq!(reserve(&reloaded, &ann), ["m=m1"]));
    });
}

#[test]
fn a_reservations_budgets_and_headers_are_those_read_back_after_it() {
    let q = quotas(json!([
        {"match": {"user": "*"}, "requestsPerMinute": 50, "tokensPerMinute": 5000},
        {"match": {"user": "*"}, "concurrent": 3},
        {"match": {"user": "*", "model": "*"}, "tokensPerDay": 900, "tokensPerMonth": 100000},
        {"match": {"user": "bob"}, "tokensPerDay": 10},
        {"match": {"key": "*"}, "costPerDay": 5, "costTotal": 100},
        {"concurrent": 100}
    ]));
    let ann = who("ann", "k", "m");
    let mut now = NOON;
    for tokens in [100, 7, 300] {
        let r = q
            .reserve(
                &ann,
                Estimate {
                    tokens,
                    cost: Some(40_000),
                },
                now,
            )
            .unwrap();
        let read = q.status(&ann, now).unwrap();
        assert_eq!(r.status(), read);
        assert_eq!(
            r.ratelimits(),
            crate::policy::limits::status::ratelimits(&read)
        );
        assert_eq!(r.ratelimits().to_vec(), ratelimit_headers(&read));
        assert_eq!(r.ratelimits().iter().count(), 6);
        r.settle(Charge {
            tokens: tokens / 2,
            cost: 1,
        });
        now += 7_000;
    }
    // A refusal reports the budgets as the store judged it, nothing of it added.
    let big = Estimate {
        tokens: 1_000,
        cost: Some(1),
    };
    let d = denied(q.reserve(&ann, big, now));
    assert_eq!(d.limit, "tokens_per_day");
    assert_eq!(d.status, Some(q.status(&ann, now).unwrap()));
}
