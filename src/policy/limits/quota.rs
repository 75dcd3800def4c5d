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
pub use crate::policy::limits::reservation::Reservation;
use crate::policy::limits::reservation::{Held, Shared};
pub use crate::policy::limits::status::{
    format_reset, ratelimit_headers, Budget, Denied, Refusal, RuleStatus,
};
use crate::policy::limits::store::{
    increments, Ask, Health, Outcome, ReserveError, Store, StoreError, UsageAdd, UsageSum, SPANS,
};
use crate::policy::limits::windows::reset_secs;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

/// The rules, the store and the in-flight counts of one process.
#[derive(Debug)]
pub struct Quotas {
    rules: Vec<Rule>,
    failure: FailureMode,
    shared: Arc<Shared>,
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
                r.status = self.status_after(&plan, &ask_of, &o, Some(estimated_tokens));
                r.held = Some(Held {
                    buckets: asks.into_iter().map(|a| a.bucket).collect(),
                    windows: o.windows,
                    estimate: estimated_tokens,
                });
                Ok(r)
            }
            Ok(o) => {
                let mut d = self.explain(&plan, &ask_of, &o, estimated_tokens);
                d.status = Some(self.status_after(&plan, &ask_of, &o, None));
                Err(Refusal::Limited(d))
            }
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

    /// The budgets of the windowed rules once this reservation is added (`added`: its tokens;
    /// `None` when it was refused and added nothing), from the counts the store judged it on:
    /// the same as reading them back, without another round trip.
    fn status_after(
        &self,
        plan: &Plan,
        ask_of: &[Option<usize>],
        o: &Outcome,
        added: Option<u64>,
    ) -> Vec<RuleStatus> {
        let add = added.map_or([0; 4], increments);
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
            status: None,
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

    /// Adds a finished request that holds no reservation to the shared usage totals (nothing
    /// with the local store).
    pub fn add_usage(&self, usage: &UsageAdd) {
        if let Err(e) = self.shared.store.settle(None, Some(usage)) {
            self.shared
                .note_failure(&e, "a request is missing from the shared usage totals");
        }
    }

    /// The shared usage totals of the days from `first` to before `end`; `None` without a
    /// shared store.
    pub fn usage(&self, first: i64, end: i64) -> Option<Result<Vec<UsageSum>, StoreError>> {
        self.shared.store.usage(first, end)
    }

    /// True when counters (and usage totals) are shared with other replicas.
    pub fn shared_store(&self) -> bool {
        self.shared.store.tracked().is_none()
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

#[cfg(test)]
#[path = "quota_tests.rs"]
mod tests;
