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
//! - A cost budget counts money in micro-units, reserved at the worst case (the prompt estimate
//!   at the input price plus the max tokens at the output price, of the dearest backend that may
//!   serve it) and settled to the actual cost. A request under a cost budget whose cost cannot
//!   be computed (a backend without a price) is refused: an unpriced request would otherwise be
//!   unlimited spend.

use crate::config::{format_money, FailureMode, Limit, Rule, Subject, FIRST_COST, WINDOWED};
use crate::policy::limits::reservation::{Held, Shared, Watch};
pub use crate::policy::limits::reservation::{Reservation, Warning};
pub use crate::policy::limits::status::{
    format_reset, ratelimit_headers, Budget, Denied, RateLimits, Refusal, RuleStatus,
};
use crate::policy::limits::status::{RuleLimits, Standing};
pub use crate::policy::limits::store::Charge;
use crate::policy::limits::store::{
    increments, Ask, Health, Outcome, ReserveError, Store, StoreError, UsageAdd, UsageSum, N, SPANS,
};
use crate::policy::limits::windows::{reset_secs, window_end, Span};
use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// What a request may use at most, reserved at admission: its tokens, and its cost at the
/// prices of the backends that may serve it (`None`: some of them have no price, so a cost
/// budget cannot count it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Estimate {
    /// Prompt estimate plus max tokens.
    pub tokens: u64,
    /// Micro-units of the currency, the worst case; `None` when unpriced.
    pub cost: Option<u64>,
}

/// Tokens only, and no price: enough for rules without a cost budget.
impl From<u64> for Estimate {
    fn from(tokens: u64) -> Estimate {
        Estimate { tokens, cost: None }
    }
}

/// The rules, the store and the in-flight counts of one process.
#[derive(Debug)]
pub struct Quotas {
    rules: Vec<Rule>,
    /// Which rules these are, for the plans cached per thread: each `new` and `reloaded` gets
    /// its own.
    id: u64,
    failure: FailureMode,
    /// The currency cost budgets are in, for messages.
    currency: String,
    shared: Arc<Shared>,
}

/// The distinct buckets a subject counts in, and which rule uses which.
struct Plan {
    /// (rule index, bucket index) for each matching rule.
    rules: Vec<(usize, usize)>,
    /// The buckets' names, by bucket index.
    names: Vec<String>,
    buckets: Vec<PlanBucket>,
    /// Per bucket, its place among the asked ones (those with a windowed limit).
    ask_of: Vec<Option<usize>>,
    /// The asked buckets' names, in order, shared with the reservations that hold them.
    asked: Arc<[String]>,
    /// The matching rules with a windowed limit, for the budgets a reservation reports.
    limits: Arc<[RuleLimits]>,
}

/// Every `Quotas` made, numbered: a cached plan names the one it was made by.
static QUOTAS_MADE: AtomicU64 = AtomicU64::new(0);

fn next_id() -> u64 {
    QUOTAS_MADE.fetch_add(1, Ordering::Relaxed)
}

/// A plan with what it was made for: the rules' id and the subject (user, key, model).
type CachedPlan = (u64, [String; 3], Arc<Plan>);

thread_local! {
    /// The last plan made in this thread, by the rules' id and the subject (user, key, model):
    /// a connection's requests are usually one subject's, and a plan is rules walked and bucket
    /// names built, the same every time.
    static LAST_PLAN: RefCell<Option<CachedPlan>> = const { RefCell::new(None) };
}

struct PlanBucket {
    /// The smallest windowed limits of the rules sharing the bucket.
    limits: [Option<u64>; N],
    concurrent: bool,
}

impl Plan {
    /// What the store is asked for: the buckets with a windowed limit, in order.
    fn asks(&self) -> Vec<Ask<'_>> {
        self.buckets
            .iter()
            .zip(&self.names)
            .filter(|(b, _)| b.limits.iter().any(Option::is_some))
            .map(|(b, name)| Ask {
                bucket: name,
                limits: b.limits,
            })
            .collect()
    }
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
            id: next_id(),
            failure,
            currency: "USD".to_string(),
            shared: Arc::new(Shared {
                store,
                inflight: Mutex::default(),
                logged_minute: AtomicU64::new(u64::MAX),
                warned: Mutex::default(),
            }),
        }
    }

    /// The same, with cost budgets in `currency` (`"currency"` of the config; USD by default).
    pub fn with_currency(mut self, currency: &str) -> Quotas {
        self.currency = currency.to_string();
        self
    }

    /// New rules after a config reload, keeping the counters, in-flight counts and failure
    /// count (buckets name traffic, not rule positions, so the counts stay meaningful).
    pub fn reloaded(&self, rules: Vec<Rule>, failure: FailureMode) -> Quotas {
        Quotas {
            rules,
            id: next_id(),
            failure,
            currency: self.currency.clone(),
            shared: Arc::clone(&self.shared),
        }
    }

    /// True when a rule sets `costTotal`: its spend is the whole ledger's, not this month's.
    pub fn has_total(&self) -> bool {
        self.rules
            .iter()
            .any(|r| r.limit(Limit::CostTotal).is_some())
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

    /// The plan of `s`, the one this thread made last when it is the same subject's under
    /// the same rules.
    fn cached_plan(&self, s: &Subject) -> Arc<Plan> {
        let hit = |(id, who, _): &CachedPlan| {
            *id == self.id && who[0] == s.user && who[1] == s.key && who[2] == s.model
        };
        let cached = LAST_PLAN.with(|last| {
            let last = last.try_borrow().ok()?;
            last.as_ref().filter(|c| hit(c)).map(|c| Arc::clone(&c.2))
        });
        if let Some(plan) = cached {
            return plan;
        }
        let plan = Arc::new(self.plan(s));
        LAST_PLAN.with(|last| {
            if let Ok(mut last) = last.try_borrow_mut() {
                let who = [s.user.to_string(), s.key.to_string(), s.model.to_string()];
                *last = Some((self.id, who, Arc::clone(&plan)));
            }
        });
        plan
    }

    fn plan(&self, s: &Subject) -> Plan {
        let mut plan = Plan {
            rules: Vec::new(),
            names: Vec::new(),
            buckets: Vec::new(),
            ask_of: Vec::new(),
            asked: Arc::new([]),
            limits: Arc::new([]),
        };
        for (ri, rule) in self.rules.iter().enumerate() {
            if !rule.matches(s) {
                continue;
            }
            let name = rule.bucket(s);
            let bi = match plan.names.iter().position(|b| *b == name) {
                Some(bi) => bi,
                None => {
                    plan.names.push(name);
                    plan.buckets.push(PlanBucket {
                        limits: [None; N],
                        concurrent: false,
                    });
                    plan.buckets.len() - 1
                }
            };
            let b = &mut plan.buckets[bi];
            for i in 0..N {
                b.limits[i] = min_limit(b.limits[i], rule.windowed[i]);
            }
            b.concurrent |= rule.concurrent.is_some();
            plan.rules.push((ri, bi));
        }
        let mut asked = Vec::new();
        for (b, name) in plan.buckets.iter().zip(&plan.names) {
            let windowed = b.limits.iter().any(Option::is_some);
            plan.ask_of.push(windowed.then_some(asked.len()));
            if windowed {
                asked.push(name.clone());
            }
        }
        plan.asked = asked.into();
        plan.limits = plan
            .rules
            .iter()
            .filter_map(|&(ri, bi)| {
                let windowed = self.rules[ri].windowed;
                let ask = plan.ask_of[bi]?;
                windowed.iter().any(Option::is_some).then_some(RuleLimits {
                    rule: ri,
                    ask,
                    windowed,
                })
            })
            .collect();
        plan
    }

    /// Admits a request that may use up to `estimate` (prompt plus max tokens, and their worst
    /// cost): counts it and reserves them in every window of every matching rule, or in none.
    pub fn reserve(
        &self,
        s: &Subject,
        estimate: impl Into<Estimate>,
        now: u64,
    ) -> Result<Reservation, Refusal> {
        let estimate = estimate.into();
        let plan = self.cached_plan(s);
        if estimate.cost.is_none() {
            if let Some(&(ri, _)) = plan.rules.iter().find(|(ri, _)| self.rules[*ri].has_cost()) {
                return Err(Refusal::Unpriced {
                    message: self.unpriced(ri, s.model),
                });
            }
        }
        let charge = Charge {
            tokens: estimate.tokens,
            cost: estimate.cost.unwrap_or(0),
        };
        let mut r = Reservation {
            shared: Arc::clone(&self.shared),
            inflight: Vec::new(),
            held: None,
            status: Standing::default(),
        };
        self.hold_inflight(&plan, &mut r)?;
        // From here on, returning early drops `r`, which frees the slots just taken.
        if plan.asked.is_empty() {
            return Ok(r);
        }
        let asks: Vec<Ask> = plan.asks();
        let reserved = self.shared.store.reserve(&asks, charge, now);
        drop(asks);
        let ask_of = &plan.ask_of;
        match reserved {
            Ok(o) if o.admitted => Ok(self.admitted(&plan, o, charge, r)),
            Ok(o) => {
                let mut d = self.explain(&plan, ask_of, &o, charge);
                // As the store judged it: nothing of it added.
                let standing = Standing {
                    rules: Arc::clone(&plan.limits),
                    counts: o.before,
                    now: o.now,
                };
                d.status = Some(standing.statuses());
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

    /// `r` holding what the store added for it, and the budgets it leaves.
    fn admitted(&self, plan: &Plan, o: Outcome, charge: Charge, mut r: Reservation) -> Reservation {
        let watch = self.watch(plan, &plan.ask_of, &o);
        r.held = Some(Held {
            watch,
            buckets: Arc::clone(&plan.asked),
            windows: o.windows,
            estimate: charge,
        });
        // The counts the store judged it on, with it added: the same as reading them back,
        // without another round trip.
        let add = increments(charge);
        let mut counts = o.before;
        for c in &mut counts {
            for (n, a) in c.iter_mut().zip(add) {
                *n = n.saturating_add(a);
            }
        }
        r.status = Standing {
            rules: Arc::clone(&plan.limits),
            counts,
            now: o.now,
        };
        r
    }

    /// Takes an in-flight slot in each bucket a `concurrent` rule counts, or refuses when one
    /// is full; the in-flight counts' lock only when a rule counts them.
    fn hold_inflight(&self, plan: &Plan, r: &mut Reservation) -> Result<(), Refusal> {
        if !plan.buckets.iter().any(|b| b.concurrent) {
            return Ok(());
        }
        let mut inflight = self.shared.inflight();
        for &(ri, bi) in &plan.rules {
            let Some(limit) = self.rules[ri].concurrent else {
                continue;
            };
            if inflight.get(&plan.names[bi]).copied().unwrap_or(0) >= limit {
                return Err(Refusal::Limited(self.denied(
                    ri,
                    Limit::Concurrent,
                    1,
                    None,
                )));
            }
        }
        for (b, name) in plan.buckets.iter().zip(&plan.names) {
            if b.concurrent {
                *inflight.entry(name.clone()).or_insert(0) += 1;
                r.inflight.push(name.clone());
            }
        }
        Ok(())
    }

    /// Rule `ri`'s budgets with `used` counted.
    fn budgets(&self, ri: usize, used: &[u64; N], now: u64) -> Vec<Budget> {
        (0..N)
            .filter_map(|i| {
                self.rules[ri].windowed[i].map(|limit| Budget {
                    kind: WINDOWED[i],
                    limit,
                    spent: used[i],
                    remaining: limit.saturating_sub(used[i]),
                    reset_secs: resets(SPANS[i], now),
                })
            })
            .collect()
    }

    /// The cost budgets with a `warnAt` this reservation may pass: for each, the threshold and
    /// what was spent (settled and reserved) before it.
    fn watch(&self, plan: &Plan, ask_of: &[Option<usize>], o: &Outcome) -> Vec<Watch> {
        let mut out = Vec::new();
        for &(ri, bi) in &plan.rules {
            let rule = &self.rules[ri];
            let (Some(share), Some(used)) =
                (rule.warn_at, ask_of[bi].and_then(|ai| o.before.get(ai)))
            else {
                continue;
            };
            for i in FIRST_COST..N {
                let Some(limit) = rule.windowed[i] else {
                    continue;
                };
                let threshold = u64::try_from(u128::from(limit) * u128::from(share) / 1_000_000)
                    .unwrap_or(u64::MAX);
                out.push(Watch {
                    key: format!("{}#{}#{}", plan.names[bi], ri, i),
                    bucket: plan.names[bi].clone(),
                    rule: ri,
                    kind: WINDOWED[i],
                    window: o.windows.of(SPANS[i]),
                    threshold,
                    before: used[i],
                    limit,
                });
            }
        }
        out
    }

    /// Which rule refused: of all the limits that would be exceeded, the one that lasts
    /// longest, since the request cannot pass before that one resets.
    fn explain(&self, plan: &Plan, ask_of: &[Option<usize>], o: &Outcome, c: Charge) -> Denied {
        let add = increments(c);
        let mut worst: Option<(usize, usize, u64)> = None;
        for &(ri, bi) in &plan.rules {
            let Some(used) = ask_of[bi].and_then(|ai| o.before.get(ai)) else {
                continue;
            };
            for i in 0..N {
                let Some(limit) = self.rules[ri].windowed[i] else {
                    continue;
                };
                if used[i].saturating_add(add[i]) <= limit || (i >= FIRST_COST && add[i] == 0) {
                    continue;
                }
                let end = window_end(SPANS[i], o.now);
                if worst.is_none_or(|(_, _, e)| end > e) {
                    worst = Some((ri, i, end));
                }
            }
        }
        match worst {
            Some((ri, i, _)) if WINDOWED[i].is_cost() => {
                let used = ask_of[plan.rules.iter().find(|r| r.0 == ri).map_or(0, |r| r.1)]
                    .and_then(|ai| o.before.get(ai))
                    .map_or(0, |u| u[i]);
                self.over_budget(ri, WINDOWED[i], used, c.cost, o.now)
            }
            Some((ri, i, end)) => {
                let retry = end.saturating_sub(o.now).max(1);
                self.denied(ri, WINDOWED[i], retry, Some(c.tokens))
            }
            // The store refused on counts no rule objects to: only a store answering
            // inconsistently gets here. Name the first rule rather than admit.
            None => {
                let ri = plan.rules.first().map(|r| r.0).unwrap_or(0);
                let retry = reset_secs(SPANS[0], o.now);
                self.denied(ri, Limit::RequestsPerMinute, retry, None)
            }
        }
    }

    /// A cost budget's refusal: the budget, what is left and what this request may cost, in
    /// the currency; `Retry-After` to the window's end, none for a budget that never resets.
    fn over_budget(&self, ri: usize, kind: Limit, used: u64, cost: u64, now: u64) -> Denied {
        let rule = self.rules.get(ri);
        let limit = rule.and_then(|r| r.limit(kind)).unwrap_or(0);
        let scope = rule.map(|r| r.scope()).unwrap_or_default();
        let money = |m: u64| format!("{} {}", format_money(m), self.currency);
        let span = SPANS[WINDOWED.iter().position(|k| *k == kind).unwrap_or(N - 1)];
        let head = format!(
            "Budget exceeded: limits[{}] ({}) has a budget of {} {}",
            ri,
            scope,
            money(limit),
            kind.describe()
        );
        let asks = format!(
            "this request may cost up to {} (its prompt and max_tokens at the model's prices)",
            money(cost)
        );
        let message = match resets(span, now) {
            _ if cost > limit => format!("{}, and {}; lower max_tokens.", head, asks),
            Some(secs) => format!(
                "{}, {} left, and {}; it resets at {}.",
                head,
                money(limit.saturating_sub(used)),
                asks,
                crate::clock::rfc3339(now.saturating_add(secs) as i64 * 1000).replace(".000Z", "Z")
            ),
            None => format!(
                "{}, {} left, and {}; it does not reset.",
                head,
                money(limit.saturating_sub(used)),
                asks
            ),
        };
        Denied {
            rule: ri,
            limit: kind.name(),
            retry_after_secs: resets(span, now).unwrap_or(0),
            code: kind.code(),
            message,
            status: None,
        }
    }

    /// Why a request under a cost budget is refused when its model has no price.
    fn unpriced(&self, ri: usize, model: &str) -> String {
        let scope = self.rules.get(ri).map(|r| r.scope()).unwrap_or_default();
        format!(
            "limits[{}] ({}) is a budget in {}, and model \"{}\" has no price, so what it \
             costs cannot be counted; the operator must give its backends a \"pricing\" \
             (0 to make it free).",
            ri,
            scope,
            self.currency,
            crate::http::api_error::clip(model, 200)
        )
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
        let windowed: Vec<&(usize, usize)> = plan
            .rules
            .iter()
            .filter(|(ri, _)| self.rules[*ri].windowed.iter().any(Option::is_some))
            .collect();
        if windowed.is_empty() {
            return Ok(Vec::new());
        }
        let snap = self.shared.store.read(&plan.names, now).inspect_err(|e| {
            self.shared
                .note_failure(e, "quota headers and /usage budgets are left out");
        })?;
        let mut out = Vec::new();
        for &&(ri, bi) in &windowed {
            let used = snap.counts.get(bi).copied().unwrap_or_default();
            let budgets = self.budgets(ri, &used, snap.now);
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
        // Asked at every completion: by the store's kind, not `tracked` (the local store's lock).
        matches!(self.shared.store, Store::Redis(_))
    }

    /// The currency of the cost budgets.
    pub fn currency(&self) -> &str {
        &self.currency
    }

    /// Seeds the counters with a request from the usage ledger (`ts`: when it finished) so a
    /// restart keeps today's and this month's spending; windows already over are skipped.
    pub fn record_past(&self, s: &Subject, used: impl Into<Charge>, ts: u64, now: u64) {
        let used = used.into();
        let plan = self.plan(s);
        let asks: Vec<Ask> = plan.asks();
        if !asks.is_empty() {
            self.shared.store.record(&asks, used, ts, now);
        }
    }
}

/// Seconds until the `span` window resets; `None` for a budget that never does.
fn resets(span: Span, now: u64) -> Option<u64> {
    (span != Span::Total).then(|| reset_secs(span, now))
}

#[cfg(test)]
#[path = "quota_tests.rs"]
mod tests;
