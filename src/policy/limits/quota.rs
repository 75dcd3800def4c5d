//! Admission against the `"limits"` rules: a request reserves its estimated tokens in every
//! window of every matching rule at once (all or nothing), then settles to what it really used.
//!
//! Decisions a caller relies on:
//! - A released reservation (the request failed, e.g. the backend refused it) gives its tokens
//!   back but still counts as a request: `requestsPerMinute` is there to stop floods, and a flood
//!   of failing requests is still a flood.
//! - A refused reservation (modelmux said no before asking any backend, e.g. a 503 after the
//!   queue wait) gives back its tokens and its request: a refusal uses up no budget.
//! - A reservation dropped without `settle` or `release` (a panic, a forgotten path) frees its
//!   concurrency slots but keeps its estimate: work may have been done, and over-counting is the
//!   side that cannot be abused.
//! - `concurrent` counts in-flight requests in this process only, even with Redis: a replica that
//!   dies would leave its in-flight counts in Redis until they expired, locking users out.
//! - While the store fails or its breaker keeps requests off it, `limitsStoreFailure` decides:
//!   admitted open, a request reserves nothing and is never charged; a reservation whose answer
//!   was lost is taken back by the store (`redis_store`), so the two never disagree.

use crate::config::{FailureMode, Limit, Rule, Subject, WINDOWED};
use crate::policy::limits::store::{
    increments, Ask, Health, Outcome, ReserveError, Store, StoreError, SPANS,
};
use crate::policy::limits::windows::{reset_secs, Windows};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

/// A refusal by a rule, shaped for a 429 with `Retry-After`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denied {
    /// Index of the rule in `"limits"`.
    pub rule: usize,
    /// `requests_per_minute`, `tokens_per_minute`, `tokens_per_day`, `tokens_per_month` or
    /// `concurrent`.
    pub limit: &'static str,
    /// Seconds until the window resets (1 for `concurrent`); at least 1.
    pub retry_after_secs: u64,
    /// OpenAI error code: `rate_limit_exceeded` or `insufficient_quota`.
    pub code: &'static str,
    /// For the client: the rule and what it limits, never anyone's usage.
    pub message: String,
}

/// Why `reserve` did not admit a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// A rule's limit would be exceeded: answer 429.
    Limited(Denied),
    /// The limits store is unreachable and `limitsStoreFailure` is `closed`: answer 503.
    Unavailable {
        /// Seconds before trying again is worthwhile.
        retry_after_secs: u64,
    },
    /// The local store already tracks `limitsMaxTracked` identities in open windows and this
    /// request is from a new one: answer 503 (whatever `limitsStoreFailure` says, since admitting
    /// it uncounted is what someone minting identities wants).
    Full {
        /// The cap.
        max: usize,
        /// Seconds until the first tracked identity's windows end.
        retry_after_secs: u64,
    },
}

/// One limit of a rule as it stands now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    /// Which kind of limit.
    pub kind: Limit,
    /// The configured limit.
    pub limit: u64,
    /// What is left in the current window.
    pub remaining: u64,
    /// Seconds until the window resets.
    pub reset_secs: u64,
}

/// The windowed budgets of one matching rule (`concurrent` is not a budget and is left out).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleStatus {
    /// Index of the rule in `"limits"`.
    pub rule: usize,
    /// Its budgets, in `requestsPerMinute`, `tokensPerMinute`, `tokensPerDay`,
    /// `tokensPerMonth` order, only those the rule sets.
    pub budgets: Vec<Budget>,
}

/// The rules, the store and the in-flight counts of one process.
#[derive(Debug)]
pub struct Quotas {
    rules: Vec<Rule>,
    failure: FailureMode,
    shared: Arc<Shared>,
}

/// What outlives a config reload and each reservation.
#[derive(Debug)]
struct Shared {
    store: Store,
    inflight: Mutex<HashMap<String, u64>>,
    /// Unix minute of the last logged store failure.
    logged_minute: AtomicU64,
}

impl Shared {
    fn inflight(&self) -> MutexGuard<'_, HashMap<String, u64>> {
        self.inflight.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Logs a store failure if none was logged this minute (the store counts them).
    fn note_failure(&self, e: &StoreError, consequence: &str) {
        let minute = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs() / 60)
            .unwrap_or(0);
        if first_in_minute(&self.logged_minute, minute) {
            log::warn!("limits store: {}; {}", e, consequence);
        }
    }
}

/// True for the first call in each `minute`: store failures come in bursts of every request.
fn first_in_minute(last: &AtomicU64, minute: u64) -> bool {
    last.swap(minute, Ordering::Relaxed) != minute
}

/// The distinct buckets a subject counts in, and which rule uses which.
struct Plan {
    /// (rule index, bucket index) for each matching rule.
    rules: Vec<(usize, usize)>,
    buckets: Vec<PlanBucket>,
}

struct PlanBucket {
    name: String,
    /// The smallest windowed limits of the rules sharing the bucket.
    limits: [Option<u64>; 4],
    concurrent: bool,
}

fn min_limit(a: Option<u64>, b: Option<u64>) -> Option<u64> {
    match (a, b) {
        (Some(x), Some(y)) => Some(x.min(y)),
        (x, y) => x.or(y),
    }
}

impl Quotas {
    /// Limits by `rules`, counted in `store`; `failure` says what a store outage does.
    pub fn new(rules: Vec<Rule>, store: Store, failure: FailureMode) -> Quotas {
        Quotas {
            rules,
            failure,
            shared: Arc::new(Shared {
                store,
                inflight: Mutex::default(),
                logged_minute: AtomicU64::new(u64::MAX),
            }),
        }
    }

    /// New rules after a config reload, keeping the counters, in-flight counts and failure
    /// count (buckets name traffic, not rule positions, so the counts stay meaningful).
    pub fn reloaded(&self, rules: Vec<Rule>, failure: FailureMode) -> Quotas {
        Quotas {
            rules,
            failure,
            shared: Arc::clone(&self.shared),
        }
    }

    /// True when there are no rules (nothing to check or report).
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Sets the most identities (buckets) the local store tracks at once.
    pub fn set_max_tracked(&self, max: usize) {
        self.shared.store.set_max_tracked(max);
    }

    /// How many identities (buckets) the local store tracks now; `None` with Redis.
    pub fn tracked(&self) -> Option<usize> {
        self.shared.store.tracked()
    }

    /// Store failures since start and the breaker's state, for /metrics.
    pub fn store_health(&self) -> Health {
        self.shared.store.health()
    }

    fn plan(&self, s: &Subject) -> Plan {
        let mut plan = Plan {
            rules: Vec::new(),
            buckets: Vec::new(),
        };
        for (ri, rule) in self.rules.iter().enumerate() {
            if !rule.matches(s) {
                continue;
            }
            let name = rule.bucket(s);
            let bi = match plan.buckets.iter().position(|b| b.name == name) {
                Some(bi) => bi,
                None => {
                    plan.buckets.push(PlanBucket {
                        name,
                        limits: [None; 4],
                        concurrent: false,
                    });
                    plan.buckets.len() - 1
                }
            };
            let b = &mut plan.buckets[bi];
            for i in 0..4 {
                b.limits[i] = min_limit(b.limits[i], rule.windowed[i]);
            }
            b.concurrent |= rule.concurrent.is_some();
            plan.rules.push((ri, bi));
        }
        plan
    }

    /// Admits a request that may use up to `estimated_tokens` (prompt plus max tokens): counts
    /// it and reserves the tokens in every window of every matching rule, or in none.
    pub fn reserve(
        &self,
        s: &Subject,
        estimated_tokens: u64,
        now: u64,
    ) -> Result<Reservation, Refusal> {
        let plan = self.plan(s);
        let mut r = Reservation {
            shared: Arc::clone(&self.shared),
            inflight: Vec::new(),
            held: None,
            status: Vec::new(),
        };
        {
            let mut inflight = self.shared.inflight();
            for &(ri, bi) in &plan.rules {
                let Some(limit) = self.rules[ri].concurrent else {
                    continue;
                };
                if inflight.get(&plan.buckets[bi].name).copied().unwrap_or(0) >= limit {
                    return Err(Refusal::Limited(self.denied(
                        ri,
                        Limit::Concurrent,
                        1,
                        None,
                    )));
                }
            }
            for b in plan.buckets.iter().filter(|b| b.concurrent) {
                *inflight.entry(b.name.clone()).or_insert(0) += 1;
                r.inflight.push(b.name.clone());
            }
        }
        // From here on, returning early drops `r`, which frees the slots just taken.
        let mut ask_of = vec![None; plan.buckets.len()];
        let mut asks = Vec::new();
        for (bi, b) in plan.buckets.iter().enumerate() {
            if b.limits.iter().any(Option::is_some) {
                ask_of[bi] = Some(asks.len());
                asks.push(Ask {
                    bucket: b.name.clone(),
                    limits: b.limits,
                });
            }
        }
        if asks.is_empty() {
            return Ok(r);
        }
        match self.shared.store.reserve(&asks, estimated_tokens, now) {
            Ok(o) if o.admitted => {
                r.status = self.status_after(&plan, &ask_of, &o, estimated_tokens);
                r.held = Some(Held {
                    buckets: asks.into_iter().map(|a| a.bucket).collect(),
                    windows: o.windows,
                    estimate: estimated_tokens,
                });
                Ok(r)
            }
            Ok(o) => Err(Refusal::Limited(self.explain(
                &plan,
                &ask_of,
                &o,
                estimated_tokens,
            ))),
            Err(ReserveError::Full {
                max,
                retry_after_secs,
            }) => Err(Refusal::Full {
                max,
                retry_after_secs,
            }),
            Err(ReserveError::Store(e)) => match self.failure {
                FailureMode::Open => {
                    self.shared
                        .note_failure(&e, "admitting requests without quota checks meanwhile");
                    Ok(r)
                }
                FailureMode::Closed => {
                    self.shared
                        .note_failure(&e, "refusing requests with 503 meanwhile");
                    Err(Refusal::Unavailable {
                        retry_after_secs: self.shared.store.health().retry_after_secs.max(1),
                    })
                }
            },
        }
    }

    /// The budgets of the windowed rules once this reservation is added, from the counts the
    /// store judged it on: the same as reading them back, without another round trip.
    fn status_after(
        &self,
        plan: &Plan,
        ask_of: &[Option<usize>],
        o: &Outcome,
        tokens: u64,
    ) -> Vec<RuleStatus> {
        let add = increments(tokens);
        let mut out = Vec::new();
        for &(ri, bi) in &plan.rules {
            let Some(used) = ask_of[bi].and_then(|ai| o.before.get(ai)) else {
                continue;
            };
            let budgets: Vec<Budget> = (0..4)
                .filter_map(|i| {
                    self.rules[ri].windowed[i].map(|limit| Budget {
                        kind: WINDOWED[i],
                        limit,
                        remaining: limit.saturating_sub(used[i].saturating_add(add[i])),
                        reset_secs: reset_secs(SPANS[i], o.now),
                    })
                })
                .collect();
            if !budgets.is_empty() {
                out.push(RuleStatus { rule: ri, budgets });
            }
        }
        out
    }

    /// Which rule refused: of all the limits that would be exceeded, the one that lasts
    /// longest, since the request cannot pass before that one resets.
    fn explain(&self, plan: &Plan, ask_of: &[Option<usize>], o: &Outcome, tokens: u64) -> Denied {
        let add = increments(tokens);
        let mut worst: Option<(usize, Limit, u64)> = None;
        for &(ri, bi) in &plan.rules {
            let Some(used) = ask_of[bi].and_then(|ai| o.before.get(ai)) else {
                continue;
            };
            for i in 0..4 {
                let Some(limit) = self.rules[ri].windowed[i] else {
                    continue;
                };
                if used[i].saturating_add(add[i]) <= limit {
                    continue;
                }
                let retry = reset_secs(SPANS[i], o.now);
                if worst.is_none_or(|(_, _, r)| retry > r) {
                    worst = Some((ri, WINDOWED[i], retry));
                }
            }
        }
        match worst {
            Some((ri, kind, retry)) => self.denied(ri, kind, retry, Some(tokens)),
            // The store refused on counts no rule objects to: only a store answering
            // inconsistently gets here. Name the first rule rather than admit.
            None => {
                let ri = plan.rules.first().map(|r| r.0).unwrap_or(0);
                let retry = reset_secs(SPANS[0], o.now);
                self.denied(ri, Limit::RequestsPerMinute, retry, None)
            }
        }
    }

    fn denied(&self, ri: usize, kind: Limit, retry: u64, tokens: Option<u64>) -> Denied {
        let rule = &self.rules.get(ri);
        let limit = rule.and_then(|r| r.limit(kind)).unwrap_or(0);
        let scope = rule.map(|r| r.scope()).unwrap_or_default();
        let head = format!(
            "limits[{}] ({}) allows {} {}",
            ri,
            scope,
            limit,
            kind.describe()
        );
        let message = match (kind, tokens) {
            (Limit::Concurrent, _) => {
                format!("Rate limit reached: {}; retry when one has finished.", head)
            }
            (Limit::TokensPerMinute | Limit::TokensPerDay | Limit::TokensPerMonth, Some(t))
                if t > limit =>
            {
                format!(
                    "{}, and this request may use up to {} tokens (its prompt plus max_tokens); \
                     lower max_tokens.",
                    head, t
                )
            }
            (Limit::TokensPerDay | Limit::TokensPerMonth, _) => format!(
                "Quota exceeded: {}; it resets in {}.",
                head,
                format_reset(retry)
            ),
            _ => format!(
                "Rate limit reached: {}; try again in {}.",
                head,
                format_reset(retry)
            ),
        };
        Denied {
            rule: ri,
            limit: kind.name(),
            retry_after_secs: retry.max(1),
            code: kind.code(),
            message,
        }
    }

    /// The budgets of every matching rule that sets a windowed limit, for the `x-ratelimit-*`
    /// headers and `/usage`.
    pub fn status(&self, s: &Subject, now: u64) -> Result<Vec<RuleStatus>, StoreError> {
        let plan = self.plan(s);
        let names: Vec<String> = plan.buckets.iter().map(|b| b.name.clone()).collect();
        let windowed: Vec<&(usize, usize)> = plan
            .rules
            .iter()
            .filter(|(ri, _)| self.rules[*ri].windowed.iter().any(Option::is_some))
            .collect();
        if windowed.is_empty() {
            return Ok(Vec::new());
        }
        let snap = self.shared.store.read(&names, now).inspect_err(|e| {
            self.shared
                .note_failure(e, "quota headers and /usage budgets are left out");
        })?;
        let mut out = Vec::new();
        for &&(ri, bi) in &windowed {
            let used = snap.counts.get(bi).copied().unwrap_or_default();
            let budgets = (0..4)
                .filter_map(|i| {
                    self.rules[ri].windowed[i].map(|limit| Budget {
                        kind: WINDOWED[i],
                        limit,
                        remaining: limit.saturating_sub(used[i]),
                        reset_secs: reset_secs(SPANS[i], snap.now),
                    })
                })
                .collect();
            out.push(RuleStatus { rule: ri, budgets });
        }
        Ok(out)
    }

    /// Seeds the counters with a request from the usage ledger (`ts`: when it finished) so a
    /// restart keeps today's and this month's spending; windows already over are skipped.
    pub fn record_past(&self, s: &Subject, tokens: u64, ts: u64, now: u64) {
        let plan = self.plan(s);
        let asks: Vec<Ask> = plan
            .buckets
            .into_iter()
            .filter(|b| b.limits.iter().any(Option::is_some))
            .map(|b| Ask {
                bucket: b.name,
                limits: b.limits,
            })
            .collect();
        if !asks.is_empty() {
            self.shared.store.record(&asks, tokens, ts, now);
        }
    }
}

/// An admitted request's hold on its quotas, until it settles.
#[derive(Debug)]
#[must_use = "settle or release the reservation when the request ends"]
pub struct Reservation {
    shared: Arc<Shared>,
    /// Buckets whose in-flight count this request holds.
    inflight: Vec<String>,
    /// The reserved tokens; `None` when nothing was reserved (no windowed rule, or the store
    /// was down and the request admitted open).
    held: Option<Held>,
    /// The windowed budgets once this request was counted (empty when nothing was reserved).
    status: Vec<RuleStatus>,
}

#[derive(Debug)]
struct Held {
    buckets: Vec<String>,
    windows: Windows,
    estimate: u64,
}

impl Reservation {
    /// The budgets of the rules that counted this request, for the `x-ratelimit-*` headers.
    pub fn status(&self) -> &[RuleStatus] {
        &self.status
    }

    /// Replaces the estimate with the tokens the backend reported, in the windows the
    /// reservation was made in (a window that has ended since is left alone).
    pub fn settle(mut self, actual_tokens: u64) {
        if let Some(h) = self.held.take() {
            let delta = i64::try_from(actual_tokens)
                .unwrap_or(i64::MAX)
                .saturating_sub(i64::try_from(h.estimate).unwrap_or(i64::MAX));
            self.adjust(&h, delta);
        }
    }

    /// Gives the reserved tokens back (the request failed before a backend did any work); the
    /// request itself stays counted.
    pub fn release(mut self) {
        if let Some(h) = self.held.take() {
            self.adjust(&h, -i64::try_from(h.estimate).unwrap_or(i64::MAX));
        }
    }

    /// Gives back the reserved tokens and the request itself: modelmux refused the request
    /// before asking any backend.
    pub fn refuse(mut self) {
        if let Some(h) = self.held.take() {
            self.adjust(&h, -i64::try_from(h.estimate).unwrap_or(i64::MAX));
            if let Err(e) = self.shared.store.unrequest(&h.buckets, h.windows) {
                self.shared
                    .note_failure(&e, "a refused request stays counted this minute");
            }
        }
    }

    fn adjust(&self, h: &Held, delta: i64) {
        if delta == 0 {
            return;
        }
        if let Err(e) = self.shared.store.adjust(&h.buckets, h.windows, delta) {
            self.shared
                .note_failure(&e, "a request's token count was not corrected");
        }
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if self.inflight.is_empty() {
            return;
        }
        let mut inflight = self.shared.inflight();
        for b in self.inflight.drain(..) {
            if let Some(n) = inflight.get_mut(&b) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    inflight.remove(&b);
                }
            }
        }
    }
}

/// OpenAI's `x-ratelimit-*` headers from the most restrictive budget of each kind: the one
/// with the least remaining (on a tie, the one that resets last). Token budgets of every window
/// compete, since a day budget can bind before a minute one.
pub fn ratelimit_headers(statuses: &[RuleStatus]) -> Vec<(&'static str, String)> {
    let pick = |tokens: bool| {
        statuses
            .iter()
            .flat_map(|s| s.budgets.iter())
            .filter(|b| (b.kind != Limit::RequestsPerMinute) == tokens)
            .min_by_key(|b| (b.remaining, std::cmp::Reverse(b.reset_secs)))
    };
    let mut out = Vec::new();
    if let Some(b) = pick(false) {
        out.push(("x-ratelimit-limit-requests", b.limit.to_string()));
        out.push(("x-ratelimit-remaining-requests", b.remaining.to_string()));
        out.push(("x-ratelimit-reset-requests", format_reset(b.reset_secs)));
    }
    if let Some(b) = pick(true) {
        out.push(("x-ratelimit-limit-tokens", b.limit.to_string()));
        out.push(("x-ratelimit-remaining-tokens", b.remaining.to_string()));
        out.push(("x-ratelimit-reset-tokens", format_reset(b.reset_secs)));
    }
    out
}

/// A duration the way OpenAI's reset headers write it: `1s`, `6m0s`, `23h59m59s`.
pub fn format_reset(secs: u64) -> String {
    let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
    if h > 0 {
        format!("{}h{}m{}s", h, m, s)
    } else if m > 0 {
        format!("{}m{}s", m, s)
    } else {
        format!("{}s", s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse_rules;
    use serde_json::json;
    use serde_json::Value;

    /// 2024-03-14 12:00:00 UTC: mid-month, on a minute boundary.
    const NOON: u64 = 1_710_417_600;

    fn quotas(rules: Value) -> Quotas {
        Quotas::new(
            parse_rules(&rules).unwrap(),
            Store::local(),
            FailureMode::Open,
        )
    }

    fn who(user: &str, key: &str, model: &str) -> Subject {
        Subject {
            user: user.into(),
            key: key.into(),
            model: model.into(),
        }
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
        let q = quotas(
            json!([{"match": {"user": "*"}, "requestsPerMinute": 1, "tokensPerMinute": 100}]),
        );
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
                    remaining: 19,
                    reset_secs: 50
                },
                Budget {
                    kind: Limit::TokensPerMinute,
                    limit: 40000,
                    remaining: 39400,
                    reset_secs: 50
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
}
