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

pub use accounting::{query, usage_command};
pub use backend_gate::{Permit, Priority, Unserved};
pub use identity::{key_only, Identity};
pub use preflight::preflight;
pub use totals::Query;

use crate::clock;
use crate::config::{FailureMode, PolicySettings, Rule};
use crate::http::api_error::ApiError;
use crate::metrics::Metrics;
use crate::policy::identity::auth::Caller;
use crate::stream::usage::{self, Usage};
use identity::Asking;
use ledger::{Entry, Ledger};
use quota::{Quotas, Reservation};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use store::Store;
use totals::Totals;

/// Process-wide policy state: the ledger, the quotas and the per-model backend gates. Usage
/// totals are not kept in memory: `/usage` reads them from the ledger when asked.
pub struct Policy {
    ledger: Option<Ledger>,
    quotas: Mutex<QuotaState>,
    gates: admission::Gates,
}

/// The quotas and the settings they were built from (rebuilt when a reload changes them).
struct QuotaState {
    rules: Vec<Rule>,
    failure: FailureMode,
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
    pub headers: Vec<(&'static str, String)>,
    /// The request body's size, for an estimate when the backend reports no usage.
    prompt_bytes: usize,
    reservation: Mutex<Option<Reservation>>,
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
    pub headers: &'a [(String, String)],
    /// The authenticated caller.
    pub caller: &'a Caller<'a>,
    /// The request body's size.
    pub prompt_bytes: usize,
    /// The public model id.
    pub model: &'a str,
    /// The completion tokens it may use (the largest max tokens field, else the default).
    pub max_tokens: u64,
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
        store::spawn_sweeper(&store);
        let quotas = Quotas::new(
            settings.limits.clone(),
            store,
            settings.limits_store_failure,
        );
        let now = (clock::now_ms() / 1000) as u64;
        let ledger = match &settings.usage_log {
            None => None,
            Some(path) => {
                // The lock first: a second process on this ledger stops here, before reading.
                let ledger = Ledger::open(path, settings.usage_log_max_bytes)?;
                // Redis keeps its own counters; only local ones are rebuilt.
                if !quotas.is_empty() && settings.limits_store.is_none() {
                    let (read, skipped) = limits::seed_quotas(&ledger, &quotas, now)?;
                    if skipped > 0 {
                        log::warn!(
                            "usage ledger {}: {} unreadable lines skipped",
                            path.display(),
                            skipped
                        );
                    }
                    log::info!(
                        "usage ledger {}: {} requests of this month read for the limits",
                        path.display(),
                        read
                    );
                }
                Some(ledger)
            }
        };
        Ok(Policy {
            ledger,
            quotas: Mutex::new(QuotaState {
                rules: settings.limits.clone(),
                failure: settings.limits_store_failure,
                max_tracked: settings.limits_max_tracked,
                quotas: Arc::new(quotas),
            }),
            gates: admission::Gates::default(),
        })
    }

    /// The quotas for these settings: the same counters, with rules a reload changed.
    fn quotas(&self, settings: &PolicySettings) -> Arc<Quotas> {
        let mut st = self.quotas.lock().unwrap_or_else(|p| p.into_inner());
        if st.rules != settings.limits || st.failure != settings.limits_store_failure {
            st.quotas = Arc::new(
                st.quotas
                    .reloaded(settings.limits.clone(), settings.limits_store_failure),
            );
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
        headers: &[(String, String)],
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
        let task = asked
            .headers
            .iter()
            .any(|(n, v)| n.eq_ignore_ascii_case(&settings.task_header) && !v.trim().is_empty());
        let priority = match asked.caller {
            _ if task => Priority::Low,
            Caller::Key(k) => k.priority,
            Caller::Open => Priority::Normal,
        };
        let quotas = self.quotas(settings);
        let (reservation, headers) = if quotas.is_empty() {
            (None, Vec::new())
        } else {
            let s = subject(&identity.user, &identity.key, asked.model);
            let now = (clock::now_ms() / 1000) as u64;
            let estimate = (asked.prompt_bytes as u64)
                .div_ceil(4)
                .saturating_add(asked.max_tokens);
            match quotas.reserve(&s, estimate, now) {
                Ok(r) => {
                    let headers = quota::ratelimit_headers(r.status());
                    (Some(r), headers)
                }
                Err(quota::Refusal::Limited(d)) => {
                    metrics.limit_refusal(d.limit);
                    let mut e = ApiError::rate_limited(d.code, d.message, d.retry_after_secs);
                    // OpenAI sends its x-ratelimit-* headers on 429s too.
                    let status = quotas.status(&s, now).unwrap_or_default();
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
        let quotas = Arc::clone(&self.quotas.lock().unwrap_or_else(|p| p.into_inner()).quotas);
        limits::metrics_text(&quotas, &mut out);
        out
    }

    /// The remaining budgets of the rules that match `user` (by user only), for `/usage`.
    pub fn budgets(&self, settings: &PolicySettings, user: &str) -> serde_json::Value {
        let quotas = self.quotas(settings);
        let now = (clock::now_ms() / 1000) as u64;
        let status = quotas
            .status(&subject(user, "", ""), now)
            .unwrap_or_default();
        let rows: Vec<serde_json::Value> = status
            .iter()
            .flat_map(|s| {
                s.budgets.iter().map(move |b| {
                    serde_json::json!({"rule": s.rule, "limit": b.kind.name(), "max": b.limit,
                                       "remaining": b.remaining, "reset_secs": b.reset_secs})
                })
            })
            .collect();
        serde_json::Value::Array(rows)
    }

    /// Records a finished request: ledger line, totals, quotas settled, per-user metrics.
    /// `per_user`: `metrics.maxUsers` when `metrics.perUser` is on.
    /// Returns the usage recorded (the backend's, else an estimate).
    pub fn complete(
        &self,
        admission: Admission,
        done: &Done,
        per_user: Option<usize>,
        metrics: &Metrics,
    ) -> Usage {
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
        self.record(&admission.identity, done, usage, metrics);
        if let (Some(max_users), false) = (per_user, done.outcome == REFUSED) {
            metrics.user(
                &admission.identity.user,
                max_users,
                usage.prompt,
                usage.completion,
                usage.estimated,
            );
        }
        let reservation = admission
            .reservation
            .into_inner()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(r) = reservation {
            match usage.total() {
                // Nothing was used (a refusal, a failed backend): give the estimate back.
                0 => r.release(),
                n => r.settle(n),
            }
        }
        usage
    }

    /// Records a request refused at or after identification and before admission (a 401
    /// token, an unknown model, a quota 429): a ledger line and totals with 0 tokens and
    /// outcome `refused`. Nothing was reserved, so no budget is touched.
    pub fn refused(&self, identity: &Identity, done: &Done, metrics: &Metrics) {
        self.record(identity, done, Usage::default(), metrics);
    }

    fn entry(&self, identity: &Identity, done: &Done, usage: Usage) -> Entry {
        Entry {
            ts: clock::rfc3339(clock::now_ms()),
            request_id: done.request_id.to_string(),
            user: identity.user.clone(),
            key: identity.key.clone(),
            end_user: identity.label.clone(),
            model: done.model.to_string(),
            backend: done.backend.map(str::to_string),
            path: done.path.to_string(),
            status: done.status,
            usage,
            duration_ms: done.duration.as_millis() as u64,
            ttfb_ms: done.ttfb.map(|t| t.as_millis() as u64),
            outcome: done.outcome.to_string(),
        }
    }

    /// The ledger line, built (its time and strings) only when there is a ledger.
    fn record(&self, identity: &Identity, done: &Done, usage: Usage, metrics: &Metrics) {
        if let Some(l) = &self.ledger {
            if !l.append(&self.entry(identity, done, usage)) {
                metrics.ledger_failure();
            }
        }
    }

    /// `GET /usage`: the totals for `q` as an OpenAI-style list, streamed from the ledger files
    /// (what is on disk is the record; nothing per user is kept in memory between queries).
    pub fn report(&self, q: &Query) -> Result<serde_json::Value, String> {
        let mut t = Totals::new(q);
        if let Some(l) = &self.ledger {
            ledger::scan(l.sources()?, q.since, q.until, |e| t.add(&e))?;
        }
        Ok(totals::to_json(&t.rows(), &q.by))
    }
}

pub use accounting::REFUSED;

/// Paths whose answers carry tokens (others, such as audio or files, count requests only).
fn bears_tokens(path: &str) -> bool {
    matches!(
        path,
        "/chat/completions" | "/completions" | "/responses" | "/embeddings"
    )
}
