//! Policy: who is asking and what they used. The request path calls it at two points:
//! `admit` once the request is read (identity, refusals) and `complete` once it is answered
//! (the usage ledger, totals, per-user metrics).

mod clock;
mod identity;
mod jwt;
mod ledger;
mod totals;

pub use identity::Identity;
pub use totals::Query;

use crate::api_error::ApiError;
use crate::auth::Caller;
use crate::config::PolicySettings;
use crate::metrics::Metrics;
use crate::usage::{self, Usage};
use identity::Asking;
use ledger::{Entry, Ledger};
use std::sync::Mutex;
use std::time::Duration;
use totals::Totals;

/// Process-wide accounting state: the ledger and the totals rebuilt from it.
pub struct Policy {
    ledger: Option<Ledger>,
    totals: Mutex<Totals>,
}

/// A request let in: who it is for, and what an estimate would need.
#[derive(Debug, Clone)]
pub struct Admission {
    /// Who is asking.
    pub identity: Identity,
    /// The request body's size, for an estimate when the backend reports no usage.
    prompt_bytes: usize,
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
    /// Opens the ledger (if configured) and rebuilds the totals from it.
    pub fn start(settings: &PolicySettings) -> Result<Policy, String> {
        let mut totals = Totals::default();
        let ledger = match &settings.usage_log {
            None => None,
            Some(path) => {
                let (entries, skipped) = ledger::read_all(path)?;
                for e in &entries {
                    totals.add(e);
                }
                if skipped > 0 {
                    log::warn!(
                        "usage ledger {}: {} unreadable lines skipped",
                        path.display(),
                        skipped
                    );
                }
                log::info!(
                    "usage ledger {}: {} requests read",
                    path.display(),
                    entries.len()
                );
                Some(Ledger::open(path, settings.usage_log_max_bytes)?)
            }
        };
        Ok(Policy {
            ledger,
            totals: Mutex::new(totals),
        })
    }

    /// Identifies the request; a refusal is the client's answer and never reaches a backend.
    pub fn admit(
        &self,
        settings: &PolicySettings,
        headers: &[(String, String)],
        caller: &Caller,
        body_user: Option<String>,
        prompt_bytes: usize,
    ) -> Result<Admission, ApiError> {
        let asking = Asking {
            headers,
            caller,
            body_user,
        };
        let identity = identity::identify(
            &asking,
            settings.jwt_secret.as_ref(),
            clock::now_ms() / 1000,
        )?;
        Ok(Admission {
            identity,
            prompt_bytes,
        })
    }

    /// Records a finished request: ledger line, totals, per-user metrics.
    pub fn complete(&self, admission: &Admission, done: &Done, per_user: bool, metrics: &Metrics) {
        let usage = match done.usage {
            Some(u) => u,
            // Only answered token-bearing requests get an estimate: an error used nothing.
            None if (200..300).contains(&done.status) && bears_tokens(done.path) => {
                usage::estimate(admission.prompt_bytes, done.content_chars)
            }
            None => Usage::default(),
        };
        let entry = Entry {
            ts: clock::rfc3339(clock::now_ms()),
            request_id: done.request_id.to_string(),
            user: admission.identity.user.clone(),
            key: admission.identity.key.clone(),
            model: done.model.to_string(),
            backend: done.backend.map(str::to_string),
            path: done.path.to_string(),
            status: done.status,
            usage,
            duration_ms: done.duration.as_millis() as u64,
            ttfb_ms: done.ttfb.map(|t| t.as_millis() as u64),
            outcome: done.outcome.to_string(),
        };
        if let Some(l) = &self.ledger {
            if !l.append(&entry) {
                metrics.ledger_failure();
            }
        }
        self.totals
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .add(&entry);
        if per_user {
            metrics.user(&entry.user, usage.prompt, usage.completion);
        }
    }

    /// `GET /usage`: the totals for `q` as an OpenAI-style list.
    pub fn report(&self, q: &Query) -> serde_json::Value {
        let rows = self
            .totals
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .query(q);
        totals::to_json(&rows, &q.by)
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

/// `modelmux usage`: the same totals read straight from the ledger files, as a table or JSON.
pub fn usage_command(log: &std::path::Path, q: &Query, json: bool) -> Result<String, String> {
    let (entries, _) = ledger::read_all(log)?;
    let mut t = Totals::default();
    for e in &entries {
        t.add(e);
    }
    let rows = t.query(q);
    Ok(if json {
        format!("{}\n", totals::to_json(&rows, &q.by))
    } else {
        totals::to_table(&rows, &q.by)
    })
}
