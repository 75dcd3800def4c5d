//! Policy: who is asking, what they used and what they may use. The request path calls it at
//! two points: `admit` once the request is read (identity, quotas, refusals) and `complete`
//! once it is answered (the usage ledger, totals, settling quotas, per-user metrics). Quotas
//! per user, key and model are counted in a `store`, locally or in Redis (`quota`, `rules`,
//! `windows`, `redis_store`); per-backend concurrency caps wait fairly (`backend_gate`).

mod backend_gate;
mod breaker;
mod clock;
mod identity;
mod jwt;
mod ledger;
mod preflight;
mod quota;
mod redis_store;
mod rules;
mod store;
mod totals;
mod windows;

pub use backend_gate::{Permit, Priority, Unserved, DEFAULT_MAX_QUEUE_WAIT};
pub use clock::secs_until_http_date;
pub use identity::{key_only, Identity};
pub use preflight::preflight;
pub use quota::FailureMode;
pub use rules::{parse_rules, Rule};
pub use store::DEFAULT_MAX_TRACKED;
pub use totals::Query;

use crate::api_error::ApiError;
use crate::auth::Caller;
use crate::config::PolicySettings;
use crate::metrics::Metrics;
use crate::usage::{self, Usage};
pub use backend_gate::ModelGate;
use identity::Asking;
use ledger::{Entry, Ledger};
use quota::{Quotas, Reservation};
use rules::Subject;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use store::Store;
use totals::Totals;

/// Process-wide policy state: the ledger, the quotas and the per-model backend gates. Usage
/// totals are not kept in memory: `/usage` reads them from the ledger when asked.
pub struct Policy {
    ledger: Option<Ledger>,
    quotas: Mutex<QuotaState>,
    gates: Mutex<HashMap<String, GateEntry>>,
}

/// The quotas and the settings they were built from (rebuilt when a reload changes them).
struct QuotaState {
    rules: Vec<Rule>,
    failure: FailureMode,
    max_tracked: usize,
    quotas: Arc<Quotas>,
}

/// A model's gate and the caps it was built with.
struct GateEntry {
    caps: Vec<Option<usize>>,
    wait: Duration,
    gate: Arc<ModelGate>,
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
                    let (read, skipped) = seed_quotas(&ledger, &quotas, now)?;
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
            gates: Mutex::new(HashMap::new()),
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

    /// The gate of a model whose backends have concurrency caps (`None` when none has one).
    pub fn gate(
        &self,
        model: &str,
        caps: Vec<Option<usize>>,
        wait: Duration,
    ) -> Option<Arc<ModelGate>> {
        if caps.iter().all(Option::is_none) {
            return None;
        }
        let mut gates = self.gates.lock().unwrap_or_else(|p| p.into_inner());
        let entry = gates.entry(model.to_string()).or_insert_with(|| GateEntry {
            caps: caps.clone(),
            wait,
            gate: Arc::new(ModelGate::new(caps.clone(), wait)),
        });
        // A reload that changed the caps gets a new gate; requests waiting on the old one
        // finish there.
        if entry.caps != caps || entry.wait != wait {
            *entry = GateEntry {
                caps: caps.clone(),
                wait,
                gate: Arc::new(ModelGate::new(caps, wait)),
            };
        }
        Some(Arc::clone(&entry.gate))
    }

    /// Lines for /metrics: queue depth per model and limits store failures.
    pub fn metrics_text(&self) -> String {
        use std::fmt::Write as _;
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# HELP modelmux_backend_queue_depth Requests waiting for a backend below its maxConcurrent, by model.\n# TYPE modelmux_backend_queue_depth gauge"
        );
        let gates = self.gates.lock().unwrap_or_else(|p| p.into_inner());
        let mut models: Vec<&String> = gates.keys().collect();
        models.sort();
        for m in models {
            let _ = writeln!(
                out,
                "modelmux_backend_queue_depth{{model=\"{}\"}} {}",
                crate::metrics::esc(m),
                gates[m].gate.depth()
            );
        }
        drop(gates);
        let quotas = Arc::clone(&self.quotas.lock().unwrap_or_else(|p| p.into_inner()).quotas);
        let health = quotas.store_health();
        if let Some(n) = quotas.tracked() {
            let _ = writeln!(
                out,
                "# HELP modelmux_limits_tracked_identities Identities (users, keys, models a rule counts apart) the local limits store holds counters for now (at most limitsMaxTracked).\n# TYPE modelmux_limits_tracked_identities gauge\nmodelmux_limits_tracked_identities {}",
                n
            );
        }
        let _ = writeln!(
            out,
            "# HELP modelmux_limits_store_failures_total Limits store operations that failed (Redis unreachable, timed out or erring).\n# TYPE modelmux_limits_store_failures_total counter\nmodelmux_limits_store_failures_total {}",
            health.failures
        );
        let _ = writeln!(
            out,
            "# HELP modelmux_limits_store_skipped_total Limits store operations not tried because the breaker was open after a failure.\n# TYPE modelmux_limits_store_skipped_total counter\nmodelmux_limits_store_skipped_total {}",
            health.skipped
        );
        let _ = writeln!(
            out,
            "# HELP modelmux_limits_store_breaker_open 1 while requests go without the limits store after a failure (limitsStoreFailure decides what they get).\n# TYPE modelmux_limits_store_breaker_open gauge\nmodelmux_limits_store_breaker_open {}",
            u8::from(health.breaker_open)
        );
        let _ = writeln!(
            out,
            "# HELP modelmux_limits_store_pending_cancels Reservations whose answer was lost, waiting to be taken back in the limits store.\n# TYPE modelmux_limits_store_pending_cancels gauge\nmodelmux_limits_store_pending_cancels {}",
            health.pending_cancels
        );
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
        let entry = self.entry(&admission.identity, done, usage);
        self.record(&entry, metrics);
        if let (Some(max_users), false) = (per_user, done.outcome == REFUSED) {
            metrics.user(
                &entry.user,
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
        let entry = self.entry(identity, done, Usage::default());
        self.record(&entry, metrics);
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

    fn record(&self, entry: &Entry, metrics: &Metrics) {
        if let Some(l) = &self.ledger {
            if !l.append(entry) {
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

/// The ledger's `outcome` of a request modelmux refused before asking any backend.
pub const REFUSED: &str = "refused";

/// Rebuilds the local quota counters from this month's ledger lines; returns the lines counted
/// and skipped. Lines are summed first by subject and by which of now's windows (minute, day,
/// month) they fall in, then recorded once per sum: memory by subjects, not lines, and one
/// rule lookup per sum rather than per line.
fn seed_quotas(ledger: &Ledger, quotas: &Quotas, now: u64) -> Result<(u64, usize), String> {
    let (y, m, _) = clock::civil_from_days((now / 86_400) as i64);
    let month = clock::days_from_civil(y, m, 1);
    let w = windows::Windows::at(now);
    // (user, key, model, same minute, same day, same month) → (tokens, a line's time, lines)
    type Cell = (String, String, String, [bool; 3]);
    let mut sums: HashMap<Cell, (u64, u64, u64)> = HashMap::new();
    let mut read = 0u64;
    let skipped = ledger::scan(ledger.sources()?, Some(month), None, |e| {
        read += 1;
        // A refusal never counted against a limit.
        if e.outcome == REFUSED {
            return;
        }
        let Some(ts) = clock::parse_rfc3339_secs(&e.ts) else {
            return;
        };
        let ts = ts as u64;
        let at = windows::Windows::at(ts);
        let same = [at.minute == w.minute, at.day == w.day, at.month == w.month];
        let tokens = e.usage.prompt.saturating_add(e.usage.completion);
        let sum = sums
            .entry((e.user, e.key, e.model, same))
            .or_insert((0, ts, 0));
        sum.0 = sum.0.saturating_add(tokens);
        sum.2 += 1;
    })?;
    for ((user, key, model, same), (tokens, ts, lines)) in sums {
        let s = subject(&user, &key, &model);
        quotas.record_past(&s, tokens, ts, now);
        // Requests are counted per minute only: each line of this minute is one.
        if same[0] {
            for _ in 1..lines {
                quotas.record_past(&s, 0, ts, now);
            }
        }
    }
    Ok((read, skipped))
}

/// The quota subject of a request.
fn subject(user: &str, key: &str, model: &str) -> Subject {
    Subject {
        user: user.to_string(),
        key: key.to_string(),
        model: model.to_string(),
    }
}

/// Paths whose answers carry tokens (others, such as audio or files, count requests only).
fn bears_tokens(path: &str) -> bool {
    matches!(
        path,
        "/chat/completions" | "/completions" | "/responses" | "/embeddings"
    )
}

/// Parses `since`/`until` (`YYYY-MM-DD` or an RFC 3339 time) and `by` into a query.
pub fn query(
    since: Option<&str>,
    until: Option<&str>,
    by: Option<&str>,
    user: Option<&str>,
) -> Result<Query, String> {
    let day = |name: &str, v: Option<&str>| -> Result<Option<i64>, String> {
        v.map(|s| {
            clock::parse_day(s).ok_or_else(|| {
                format!(
                    "`{}` must be a date such as 2026-11-01, got `{}`",
                    name,
                    crate::api_error::clip(s, 40)
                )
            })
        })
        .transpose()
    };
    Ok(Query {
        since: day("since", since)?,
        until: day("until", until)?,
        by: totals::parse_by(by.unwrap_or("user"))?,
        user: user.map(str::to_string),
    })
}

/// `modelmux usage`: the same totals read straight from the ledger files, as a table or JSON,
/// with every control, bidi and zero-width character of a ledger string escaped.
pub fn usage_command(log: &std::path::Path, q: &Query, json: bool) -> Result<String, String> {
    let mut t = Totals::new(q);
    ledger::scan(ledger::open_sources(log)?, q.since, q.until, |e| t.add(&e))?;
    let rows = t.rows();
    Ok(if json {
        format!(
            "{}\n",
            totals::json_for_terminal(&totals::to_json(&rows, &q.by).to_string())
        )
    } else {
        totals::to_table(&rows, &q.by)
    })
}
