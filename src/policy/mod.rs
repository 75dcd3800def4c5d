//! Policy: who is asking, what they used and what they may use. The request path calls it at
//! two points: `admit` once the request is read (identity, quotas, refusals) and `complete`
//! once it is answered (the usage ledger, settling quotas, per-user metrics). Each concern has
//! its folder: `identity/` (client keys, JWT, user headers, body user), `accounting/` (the
//! ledger and the `/usage` totals), `limits/` (quota rules over windows, in a local or Redis
//! store) and `admission/` (per-backend concurrency caps with a fair queue).

mod accounting;
mod admission;
pub mod identity;
mod limits;

use accounting::{ledger, totals};
use admission::backend_gate;
use identity::jwt;
use limits::{preflight, quota, store, subject};

pub use accounting::cost::worst_case;
pub use accounting::cost::Charge;
pub use accounting::{query, usage_command};
pub use backend_gate::{Permit, Priority, Unserved};
pub use identity::{key_only, Identity};
pub use preflight::preflight;
pub use quota::RateLimits;
pub use totals::Query;

use crate::clock;
use crate::config::{FailureMode, Limit, PolicySettings, Pricing, Rule};
use crate::http::api_error::ApiError;
use crate::metrics::Metrics;
use crate::policy::identity::auth::Caller;
use crate::stream::usage::{self, Usage};
use identity::Asking;
use ledger::{Entry, Ledger, Line};
use quota::{Quotas, Reservation};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use store::Store;
use totals::Totals;

/// Process-wide policy state: the ledger, the quotas and the per-model backend gates. Usage
/// totals are not kept in memory: `/usage` reads them from the ledger when asked, or from the
/// shared store, which every replica adds each ledger line to when it settles the request.
pub struct Policy {
    ledger: Option<Ledger>,
    /// This replica's name in ledger lines.
    replica: String,
    quotas: Mutex<QuotaState>,
    gates: admission::Gates,
}

/// The quotas and the settings they were built from (rebuilt when a reload changes them).
struct QuotaState {
    rules: Vec<Rule>,
    failure: FailureMode,
    currency: String,
    max_tracked: usize,
    quotas: Arc<Quotas>,
}

/// The completion tokens a request that names no max tokens field reserves on a generating path
/// (chat, completions, Responses) when its endpoint sets no `defaultMaxTokens`. Without it such a
/// request reserved only its prompt, and a budget was overspent by whole answers.
pub const DEFAULT_MAX_TOKENS: u64 = 4096;

/// A request let in: who it is for, what it holds of its quotas, and what an estimate needs.
pub struct Admission {
    /// Who is asking.
    pub identity: Identity,
    /// How soon it is served when its backends are at their caps.
    pub priority: Priority,
    /// OpenAI's `x-ratelimit-*` headers for its answer, when a quota rule applies.
    pub headers: RateLimits,
    /// The request body's size, for an estimate when the backend reports no usage.
    prompt_bytes: usize,
    reservation: Mutex<Option<Reservation>>,
    /// The quotas it was admitted under, for its completion: no second trip through the
    /// policy's lock (a reload keeps the store, so these settle as the live ones would).
    quotas: Arc<Quotas>,
}

impl Admission {
    /// Gives the reserved tokens back now: the request failed before any backend did work.
    /// Called before the failure is answered, so a client that retries at once finds its budget
    /// as it was.
    pub fn release(&self) {
        if let Some(r) = self
            .reservation
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            r.release();
        }
    }

    /// Gives the reserved tokens and the request back: modelmux refused it before asking any
    /// backend (a refusal uses up no budget, not even `requestsPerMinute`).
    pub fn refuse(&self) {
        if let Some(r) = self
            .reservation
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            r.refuse();
        }
    }
}

/// What admission needs to know about a request.
pub struct Asked<'a> {
    /// The client's headers.
    pub headers: &'a tiny_http::HeaderList,
    /// The authenticated caller.
    pub caller: &'a Caller<'a>,
    /// The request body's size.
    pub prompt_bytes: usize,
    /// The public model id.
    pub model: &'a str,
    /// The completion tokens it may use (the largest max tokens field, else the default).
    pub max_tokens: u64,
    /// What it may cost at most, in micro-units, from the prompt estimate and `max_tokens` at
    /// the prices of the dearest backend that may serve it; `None` when one has no price.
    pub max_cost: Option<u64>,
}

/// How a request ended, for the ledger.
pub struct Done<'a> {
    /// The request id.
    pub request_id: &'a str,
    /// The public model id.
    pub model: &'a str,
    /// The backend host that answered last.
    pub backend: Option<&'a str>,
    /// The normalized path.
    pub path: &'a str,
    /// Status sent to the client.
    pub status: u16,
    /// What the backend reported.
    pub usage: Option<Usage>,
    /// Characters of generated text a stream carried.
    pub content_chars: u64,
    /// Total time.
    pub duration: Duration,
    /// Time to the first body byte.
    pub ttfb: Option<Duration>,
    /// How it ended.
    pub outcome: &'a str,
    /// The prices of the backend asked last; `None`: unpriced, or no backend was asked.
    pub price: Option<&'a Pricing>,
    /// The configured currency.
    pub currency: &'a str,
}

/// What `complete` recorded.
pub struct Recorded {
    /// The backend's usage, else an estimate (marked).
    pub usage: Usage,
    /// Its cost, when the backend has prices.
    pub charge: Option<Charge>,
}

impl Policy {
    /// Opens the ledger (if configured) and sets up the quotas, their local counters seeded
    /// from this month's ledger lines, so a restart keeps the spending of every open window.
    pub fn start(settings: &PolicySettings) -> Result<Policy, String> {
        let store = match &settings.limits_store {
            None => Store::local(),
            // The store's own message starts with `limitsStore:`.
            Some(url) => Store::redis(
                &url.0,
                None,
                store::Timing {
                    timeout: settings.limits_store_timeout,
                    retry: settings.limits_store_retry,
                },
            )
            .map_err(|e| e.0)?,
        };
        store.set_max_tracked(settings.limits_max_tracked);
        let quotas = Quotas::new(
            settings.limits.clone(),
            store,
            settings.limits_store_failure,
        )
        .with_currency(&settings.currency);
        let now = (clock::now_ms() / 1000) as u64;
        let ledger = match &settings.usage_log {
            None => None,
            Some(path) => {
                // The lock first: a second process on this ledger stops here, before reading.
                let ledger = Ledger::open(path, settings.usage_log_max_bytes)?;
                ledger.keep_all(quotas.has_total());
                let stdout = path == std::path::Path::new(crate::config::STDOUT_LEDGER);
                if stdout && !quotas.is_empty() && settings.limits_store.is_none() {
                    log::warn!(
                        "usageLog \"-\": the ledger goes to stdout and is not read back, so a restart forgets this month's spending on the limits; set store (Redis) for quotas that survive restarts"
                    );
                }
                // Redis keeps its own counters; only local ones are rebuilt.
                if !quotas.is_empty() && settings.limits_store.is_none() && !stdout {
                    let (read, skipped) = limits::seed_quotas(&ledger, &quotas, now, settled_cost)?;
                    if skipped > 0 {
                        log::warn!(
                            "usage ledger {}: {} unreadable lines skipped",
                            path.display(),
                            skipped
                        );
                    }
                    log::info!(
                        "usage ledger {}: {} requests of the open windows read for the limits",
                        path.display(),
                        read
                    );
                }
                Some(ledger)
            }
        };
        Ok(Policy {
            ledger,
            replica: accounting::replica_name(std::env::var("CM_OPEN_WEBUI_PROXY_REPLICA").ok()),
            quotas: Mutex::new(QuotaState {
                rules: settings.limits.clone(),
                failure: settings.limits_store_failure,
                currency: settings.currency.clone(),
                max_tracked: settings.limits_max_tracked,
                quotas: Arc::new(quotas),
            }),
            gates: admission::Gates::default(),
        })
    }

    /// The quotas for these settings: the same counters, with rules a reload changed.
    fn quotas(&self, settings: &PolicySettings) -> Arc<Quotas> {
        let mut st = self.quotas.lock().unwrap_or_else(|p| p.into_inner());
        if st.rules != settings.limits
            || st.failure != settings.limits_store_failure
            || st.currency != settings.currency
        {
            if let Some(l) = &self.ledger {
                l.keep_all(
                    settings
                        .limits
                        .iter()
                        .any(|r| r.limit(Limit::CostTotal).is_some()),
                );
            }
            st.quotas = Arc::new(
                st.quotas
                    .reloaded(settings.limits.clone(), settings.limits_store_failure)
                    .with_currency(&settings.currency),
            );
            st.currency = settings.currency.clone();
            st.rules = settings.limits.clone();
            st.failure = settings.limits_store_failure;
        }
        if st.max_tracked != settings.limits_max_tracked {
            st.quotas.set_max_tracked(settings.limits_max_tracked);
            st.max_tracked = settings.limits_max_tracked;
        }
        Arc::clone(&st.quotas)
    }

    /// Who the request is for; a present but invalid signed token is a 401 (record it with
    /// `refused` under `key_only`).
    pub fn identify(
        &self,
        settings: &PolicySettings,
        headers: &tiny_http::HeaderList,
        caller: &Caller,
        body_user: Option<String>,
    ) -> Result<Identity, ApiError> {
        let asking = Asking {
            headers,
            caller,
            body_user,
        };
        let expect = jwt::Expect {
            audience: settings.jwt_audience.as_deref(),
            issuer: settings.jwt_issuer.as_deref(),
        };
        identity::identify(
            &asking,
            settings.jwt_secret.as_ref().map(|s| (s, expect)),
            clock::now_ms() / 1000,
        )
    }

    /// Reserves the request's quotas; a refusal (429, 503) is the client's answer, never
    /// reaches a backend, and is recorded with `refused`.
    pub fn admit(
        &self,
        settings: &PolicySettings,
        identity: &Identity,
        asked: &Asked,
        metrics: &Metrics,
    ) -> Result<Admission, ApiError> {
        let task = asked.headers.iter().any(|(n, v)| {
            (n.eq_ignore_ascii_case(&settings.task_header) && !v.trim().is_empty())
                || (n.eq_ignore_ascii_case("x-claude-code-request-class") && background_class(v))
        });
        let priority = match asked.caller {
            _ if task => Priority::Low,
            Caller::Key(k) => k.priority,
            Caller::Open => Priority::Normal,
        };
        let quotas = self.quotas(settings);
        let (reservation, headers) = if quotas.is_empty() {
            (None, RateLimits::default())
        } else {
            let s = subject(&identity.user, &identity.key, asked.model);
            let now = (clock::now_ms() / 1000) as u64;
            let estimate = (asked.prompt_bytes as u64)
                .div_ceil(4)
                .saturating_add(asked.max_tokens);
            let estimate = quota::Estimate {
                tokens: estimate,
                cost: asked.max_cost,
            };
            match quotas.reserve(&s, estimate, now) {
                Ok(r) => {
                    let headers = r.ratelimits();
                    (Some(r), headers)
                }
                Err(quota::Refusal::Limited(d)) => {
                    metrics.limit_refusal(d.limit);
                    let mut e = ApiError::rate_limited(d.code, d.message, d.retry_after_secs);
                    if d.retry_after_secs == 0 {
                        // A prepaid budget never resets: no time would help.
                        e.headers.retain(|(n, _)| *n != "Retry-After");
                    }
                    // OpenAI sends its x-ratelimit-* headers on 429s too: as the store judged
                    // the request, read again only for a refusal the store was not asked about.
                    let status = match d.status {
                        Some(status) => status,
                        None => quotas.status(&s, now).unwrap_or_default(),
                    };
                    e.headers.extend(quota::ratelimit_headers(&status));
                    return Err(e);
                }
                Err(quota::Refusal::Full {
                    max,
                    retry_after_secs,
                }) => {
                    metrics.limit_refusal("tracked_identities");
                    let mut e =
                        ApiError::overloaded(retry_after_secs).with_code("limits_tracking_full");
                    e.message = format!(
                        "The limits store already tracks {} identities in open windows \
                         (limitsMaxTracked) and cannot count a new one; retry after the time in Retry-After.",
                        max
                    );
                    return Err(e);
                }
                Err(quota::Refusal::Unpriced { message }) => {
                    metrics.limit_refusal("unpriced");
                    let mut e = ApiError::invalid_request(message).with_code("model_unpriced");
                    e.status = 403;
                    return Err(e);
                }
                Err(quota::Refusal::Unavailable { retry_after_secs }) => {
                    metrics.limit_refusal("store_unavailable");
                    let mut e =
                        ApiError::overloaded(retry_after_secs).with_code("limits_unavailable");
                    e.message = "The limits store is unreachable and limitsStoreFailure is closed; retry shortly.".into();
                    return Err(e);
                }
            }
        };
        Ok(Admission {
            identity: identity.clone(),
            priority,
            headers,
            prompt_bytes: asked.prompt_bytes,
            reservation: Mutex::new(reservation),
            quotas,
        })
    }

    /// The per-model gates of capped backends.
    pub fn gates(&self) -> &admission::Gates {
        &self.gates
    }

    /// Lines for /metrics: queue depth per model and limits store failures.
    pub fn metrics_text(&self) -> String {
        let mut out = String::new();
        self.gates.metrics_text(&mut out);
        limits::metrics_text(&self.live_quotas(), &mut out);
        out
    }

    /// The remaining budgets of the rules that match `user` (by user only), for `/usage`: a
    /// cost budget in the currency (6-decimal strings, as costs are), with what was spent
    /// (settled and reserved) in its window.
    pub fn budgets(&self, settings: &PolicySettings, user: &str) -> serde_json::Value {
        let quotas = self.quotas(settings);
        let now = (clock::now_ms() / 1000) as u64;
        let status = quotas
            .status(&subject(user, "", ""), now)
            .unwrap_or_default();
        // The one text form of money, as the ledger and the usage totals write it.
        let money = crate::money::format;
        let rows: Vec<serde_json::Value> = status
            .iter()
            .flat_map(|s| {
                s.budgets.iter().map(|b| {
                    if b.kind.is_cost() {
                        serde_json::json!({"rule": s.rule, "limit": b.kind.name(),
                                           "currency": quotas.currency(), "max": money(b.limit),
                                           "spent": money(b.spent),
                                           "remaining": money(b.remaining),
                                           "reset_secs": b.reset_secs})
                    } else {
                        serde_json::json!({"rule": s.rule, "limit": b.kind.name(), "max": b.limit,
                                           "remaining": b.remaining, "reset_secs": b.reset_secs})
                    }
                })
            })
            .collect();
        serde_json::Value::Array(rows)
    }

    /// Records a finished request: ledger line, totals, quotas settled, per-user metrics.
    /// `per_user`: `metrics.maxUsers` when `metrics.perUser` is on.
    /// Returns the usage recorded (the backend's, else an estimate) and its cost.
    pub fn complete(
        &self,
        admission: Admission,
        done: &Done,
        per_user: Option<usize>,
        metrics: &Metrics,
    ) -> Recorded {
        let usage = match done.usage {
            Some(u) if u.plausible() => u,
            // Only answered token-bearing requests get an estimate: an error used nothing.
            reported if (200..300).contains(&done.status) && bears_tokens(done.path) => {
                if let Some(u) = reported {
                    metrics.invalid_usage();
                    log::warn!(
                        "model {} backend {}: usage counts above {} (prompt {}, completion {}, cached {}, reasoning {}) are not believed; the request is estimated",
                        done.model,
                        done.backend.unwrap_or("-"),
                        usage::MAX_PLAUSIBLE_TOKENS,
                        u.prompt,
                        u.completion,
                        u.cached,
                        u.reasoning
                    );
                }
                usage::estimate(admission.prompt_bytes, done.content_chars)
            }
            _ => Usage::default(),
        };
        let charge = done.price.map(|p| Charge::of(p, &usage, done.currency));
        let quotas = Arc::clone(&admission.quotas);
        // The time and strings only when a ledger or the shared store takes them; owned only
        // for the shared store, the ledger's line borrows them.
        let entry = if quotas.shared_store() {
            let ts = clock::stamp(clock::now_ms());
            let entry = self
                .line(
                    &admission.identity,
                    done,
                    usage,
                    ts.as_str(),
                    charge.as_ref(),
                )
                .to_entry();
            self.record(&entry.line(), metrics);
            Some(entry)
        } else {
            if self.ledger.is_some() {
                let ts = clock::stamp(clock::now_ms());
                let line = self.line(
                    &admission.identity,
                    done,
                    usage,
                    ts.as_str(),
                    charge.as_ref(),
                );
                self.record(&line, metrics);
            }
            None
        };
        if let (Some(max_users), false) = (per_user, done.outcome == REFUSED) {
            metrics.user(
                &admission.identity.user,
                max_users,
                usage.prompt,
                usage.completion,
                usage.estimated,
            );
            if let Some(c) = &charge {
                metrics.user_cost(&admission.identity.user, max_users, c.micros, &c.currency);
            }
        }
        let reservation = admission
            .reservation
            .into_inner()
            .unwrap_or_else(|p| p.into_inner());
        let shared = entry.as_ref().and_then(|e| shared_usage(&quotas, e));
        match reservation {
            Some(r) => {
                // Nothing was used (a refusal, a failed backend): the estimate is given back.
                let used = Some(usage.total())
                    .filter(|&n| n > 0)
                    .map(|n| quota::Charge {
                        tokens: n,
                        cost: charge.as_ref().map_or(0, |c| c.micros),
                    });
                let user = per_user.map(|max| (admission.identity.user.as_str(), max));
                let warnings = r.finish(used, shared.as_ref());
                let currency = charge.as_ref().map_or("", |c| c.currency.as_str());
                warn_budgets(&warnings, currency, user, metrics);
            }
            None => {
                if let Some(u) = &shared {
                    quotas.add_usage(u);
                }
            }
        }
        Recorded { usage, charge }
    }

    /// Records a request refused at or after identification and before admission (a 401
    /// token, an unknown model, a quota 429): a ledger line and totals with 0 tokens and
    /// outcome `refused`. Nothing was reserved, so no budget is touched.
    pub fn refused(&self, identity: &Identity, done: &Done, metrics: &Metrics) {
        let quotas = self.live_quotas();
        // The time and strings only when a ledger or the shared store takes them.
        if self.ledger.is_none() && !quotas.shared_store() {
            return;
        }
        let ts = clock::stamp(clock::now_ms());
        let line = self.line(identity, done, Usage::default(), ts.as_str(), None);
        self.record(&line, metrics);
        if quotas.shared_store() {
            if let Some(u) = shared_usage(&quotas, &line.to_entry()) {
                quotas.add_usage(&u);
            }
        }
    }

    /// The quotas as last built (no reload check: for the completion of a request).
    fn live_quotas(&self) -> Arc<Quotas> {
        Arc::clone(&self.quotas.lock().unwrap_or_else(|p| p.into_inner()).quotas)
    }

    /// The ledger line of a finished request, borrowed from it; `ts`: when it finished.
    fn line<'a>(
        &'a self,
        identity: &'a Identity,
        done: &'a Done,
        usage: Usage,
        ts: &'a str,
        charge: Option<&'a Charge>,
    ) -> Line<'a> {
        Line {
            ts,
            request_id: done.request_id,
            replica: Some(&self.replica),
            user: &identity.user,
            key: &identity.key,
            end_user: identity.label.as_deref(),
            session: identity.session.as_deref(),
            model: done.model,
            backend: done.backend,
            path: done.path,
            status: done.status,
            usage,
            duration_ms: done.duration.as_millis() as u64,
            ttfb_ms: done.ttfb.map(|t| t.as_millis() as u64),
            outcome: done.outcome,
            cost: charge.map(|c| c.micros),
            currency: charge.map_or("", |c| c.currency.as_str()),
        }
    }

    fn record(&self, line: &Line, metrics: &Metrics) {
        if let Some(l) = &self.ledger {
            if !l.append(line) {
                metrics.ledger_failure();
            }
        }
    }

    /// `GET /usage`: the totals for `q` as an OpenAI-style list. With a shared store, the
    /// totals every replica added to it; else streamed from this process's ledger files (what
    /// is on disk is the record; nothing per user is kept in memory between queries).
    pub fn report(&self, q: &Query) -> Result<serde_json::Value, ReportError> {
        let mut t = Totals::new(q);
        let quotas = self.live_quotas();
        if quotas.shared_store() {
            add_store_totals(&mut t, q, |first, end| quotas.usage(first, end))
                .map_err(ReportError::Store)?;
        } else if let Some(l) = &self.ledger {
            ledger::scan(
                l.sources().map_err(ReportError::Ledger)?,
                q.since,
                q.until,
                |e| t.add(&e),
            )
            .map_err(ReportError::Ledger)?;
        }
        Ok(totals::to_json(&t.rows(), &q.by))
    }
}

/// Why `/usage` has no answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReportError {
    /// The ledger files could not be read.
    Ledger(String),
    /// The shared store could not be reached.
    Store(String),
}

/// What a finished request adds to the shared usage totals; `None` without a shared store.
fn shared_usage(quotas: &Quotas, entry: &Entry) -> Option<store::UsageAdd> {
    if !quotas.shared_store() {
        return None;
    }
    Some(store::UsageAdd {
        day: clock::parse_day(&entry.ts)?,
        user: entry.user.clone(),
        key: entry.key.clone(),
        model: entry.model.clone(),
        counters: totals::store_fields(entry),
    })
}

/// Adds the shared store's totals of the days `q` covers, within the days the store keeps
/// (`redis_store::USAGE_KEEP_DAYS` after each day, and tomorrow for a clock ahead of ours).
fn add_store_totals(
    t: &mut Totals,
    q: &Query,
    read: impl Fn(i64, i64) -> Option<Result<Vec<store::UsageSum>, store::StoreError>>,
) -> Result<(), String> {
    let today = clock::now_ms().div_euclid(86_400_000);
    let first = q
        .since
        .unwrap_or(i64::MIN)
        .max(today - limits::redis_store::USAGE_KEEP_DAYS - 1);
    let end = q.until.unwrap_or(i64::MAX).min(today + 2);
    let sums = match read(first, end) {
        None => return Ok(()),
        Some(r) => r.map_err(|e| e.0)?,
    };
    for s in sums {
        let who = [s.who[0].as_str(), s.who[1].as_str(), s.who[2].as_str()];
        t.add_sum(s.day, who, &totals::counters_of(&s.fields));
    }
    Ok(())
}

/// `modelmux usage --store URL`: the totals every replica added to the shared store, as a
/// table or as `/usage` answers.
pub fn usage_from_store(url: &str, q: &Query, json: bool) -> Result<String, String> {
    let timing = store::Timing {
        timeout: Duration::from_secs(5),
        retry: Duration::from_secs(5),
    };
    let s = Store::redis(url, None, timing).map_err(|e| e.0)?;
    let mut t = Totals::new(q);
    add_store_totals(&mut t, q, |first, end| s.usage(first, end))?;
    Ok(accounting::render(t, q, json))
}

pub use accounting::REFUSED;

/// What a finished request cost, in micro-units, for its cost budgets (0 when unpriced: such
/// a request was only admitted where no cost budget applies).
fn settled_cost(entry: &Entry) -> u64 {
    entry.cost.unwrap_or(0)
}

/// Logs and counts the cost budgets a request passed the `warnAt` of (each once per window and
/// subject): the hook for an alert. `per_user`: the user and `metrics.maxUsers` under
/// `metrics.perUser`.
fn warn_budgets(
    warnings: &[quota::Warning],
    currency: &str,
    per_user: Option<(&str, usize)>,
    metrics: &Metrics,
) {
    for w in warnings {
        log::warn!(
            "limits[{}]: {:?} has spent {} {} of its budget of {} {} {} ({}%, past warnAt)",
            w.rule,
            w.subject,
            crate::config::format_money(w.spent),
            currency,
            crate::config::format_money(w.limit),
            currency,
            w.kind.describe(),
            (u128::from(w.spent) * 100 / u128::from(w.limit.max(1)))
        );
        metrics.budget_warning(w.rule, w.kind.window(), per_user);
    }
}

/// Claude Code's background requests (titles, summaries, compaction of a long conversation):
/// served after everything else, as Open WebUI's tasks are.
fn background_class(v: &str) -> bool {
    let v = v.trim();
    v.eq_ignore_ascii_case("auxiliary") || v.eq_ignore_ascii_case("compaction")
}

/// Paths whose answers carry tokens (others, such as audio or files, count requests only).
fn bears_tokens(path: &str) -> bool {
    matches!(
        path,
        "/chat/completions" | "/completions" | "/responses" | "/embeddings" | "/messages"
    )
}
