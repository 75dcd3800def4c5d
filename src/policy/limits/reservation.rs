//! An admitted request's hold on its quotas, and what it shares with the `Quotas` that made it:
//! the store, the in-flight counts and the once-a-minute failure log.

use crate::config::Limit;
#[cfg(test)]
use crate::policy::limits::status::RuleStatus;
use crate::policy::limits::status::{RateLimits, Standing};
use crate::policy::limits::store::{Charge, Delta, Settle, Store, StoreError, UsageAdd};
use crate::policy::limits::windows::Windows;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

/// What outlives a config reload and each reservation.
#[derive(Debug)]
pub struct Shared {
    pub store: Store,
    pub inflight: Mutex<HashMap<String, u64>>,
    /// Unix minute of the last logged store failure.
    pub logged_minute: AtomicU64,
    /// Cost budgets whose `warnAt` was passed (bucket, rule, counter) → the window it was in:
    /// a subject is warned once per window.
    pub warned: Mutex<HashMap<String, u64>>,
}

/// Most warned budgets remembered; past it, those of ended windows are forgotten (and, if
/// none ended, all: a repeated warning is better than unbounded memory).
const MAX_WARNED: usize = 100_000;

impl Shared {
    /// True the first time `w` is passed in its window.
    fn first_warning(&self, w: &Watch) -> bool {
        let mut warned = self.warned.lock().unwrap_or_else(|e| e.into_inner());
        if warned.get(&w.key) == Some(&w.window) {
            return false;
        }
        if warned.len() >= MAX_WARNED {
            // Windows only grow: an entry older than this one's window is likely over.
            warned.retain(|_, window| *window >= w.window);
            if warned.len() >= MAX_WARNED {
                warned.clear();
            }
        }
        warned.insert(w.key.clone(), w.window);
        true
    }
}

/// A cost budget with a `warnAt` that a reservation may pass when it settles.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Watch {
    /// bucket#rule#counter.
    pub key: String,
    /// The bucket.
    pub bucket: String,
    /// Index of the rule in `"limits"`.
    pub rule: usize,
    /// Which cost budget.
    pub kind: Limit,
    /// The window the reservation was counted in.
    pub window: u64,
    /// `warnAt` of the budget, in micro-units.
    pub threshold: u64,
    /// What was spent (settled and reserved) before this request.
    pub before: u64,
    /// The budget.
    pub limit: u64,
}

/// A subject passed a cost budget's `warnAt` for the first time in its window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warning {
    /// Who: the bucket, naming what the rule counts apart (`u=ann`, `k=web|m=gpt-4o`).
    pub subject: String,
    /// Index of the rule in `"limits"`.
    pub rule: usize,
    /// Which cost budget.
    pub kind: Limit,
    /// Spent, counting this request, in micro-units.
    pub spent: u64,
    /// The budget, in micro-units.
    pub limit: u64,
}

impl Shared {
    pub fn inflight(&self) -> MutexGuard<'_, HashMap<String, u64>> {
        self.inflight.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Logs a store failure if none was logged this minute (the store counts them).
    pub fn note_failure(&self, e: &StoreError, consequence: &str) {
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
pub fn first_in_minute(last: &AtomicU64, minute: u64) -> bool {
    last.swap(minute, Ordering::Relaxed) != minute
}

/// An admitted request's hold on its quotas, until it settles.
#[derive(Debug)]
#[must_use = "settle or release the reservation when the request ends"]
pub struct Reservation {
    pub shared: Arc<Shared>,
    /// Buckets whose in-flight count this request holds.
    pub inflight: Vec<String>,
    /// The reserved tokens; `None` when nothing was reserved (no windowed rule, or the store
    /// was down and the request admitted open).
    pub held: Option<Held>,
    /// The windowed budgets once this request was counted (none when nothing was reserved).
    pub status: Standing,
}

#[derive(Debug)]
pub struct Held {
    /// The asked buckets' names, shared with the plan that named them.
    pub buckets: Arc<[String]>,
    pub windows: Windows,
    pub estimate: Charge,
    /// The cost budgets with a `warnAt` it counts in.
    pub watch: Vec<Watch>,
}

impl Reservation {
    /// The budgets of the rules that counted this request.
    #[cfg(test)]
    pub fn status(&self) -> Vec<RuleStatus> {
        self.status.statuses()
    }

    /// OpenAI's `x-ratelimit-*` headers from those budgets, read without listing them.
    pub fn ratelimits(&self) -> RateLimits {
        self.status.ratelimits()
    }

    /// Replaces the estimate with the tokens and cost the backend reported, in the windows the
    /// reservation was made in (a window that has ended since is left alone). Returns the cost
    /// budgets whose `warnAt` this request passed, each once per window and subject.
    #[cfg(test)]
    pub fn settle(self, used: impl Into<Charge>) -> Vec<Warning> {
        self.finish(Some(used.into()), None)
    }

    /// Gives the reserved tokens back (the request failed before a backend did any work); the
    /// request itself stays counted.
    pub fn release(self) {
        self.finish(None, None);
    }

    /// Settles to `used` (`None`: gives the estimate back, as `release`) and adds the
    /// request's `usage` to the shared totals, in one store operation. Returns the cost
    /// budgets whose `warnAt` this request passed, each once per window and subject.
    pub fn finish(mut self, used: Option<Charge>, usage: Option<&UsageAdd>) -> Vec<Warning> {
        let held = self.held.take();
        let settle = held.as_ref().map(|h| Settle {
            buckets: &h.buckets,
            windows: h.windows,
            delta: Delta::between(h.estimate, used.unwrap_or_default()),
            unrequest: false,
        });
        if let Err(e) = self.shared.store.settle(settle.as_ref(), usage) {
            self.shared
                .note_failure(&e, "a request's token count was not corrected");
        }
        let (Some(h), Some(used)) = (held, used) else {
            return Vec::new();
        };
        h.watch
            .iter()
            .filter_map(|w| {
                let spent = w.before.saturating_add(used.cost);
                (used.cost > 0 && spent >= w.threshold && self.shared.first_warning(w)).then_some(
                    Warning {
                        subject: w.bucket.clone(),
                        rule: w.rule,
                        kind: w.kind,
                        spent,
                        limit: w.limit,
                    },
                )
            })
            .collect()
    }

    /// Gives back the reserved tokens and the request itself: modelmux refused the request
    /// before asking any backend.
    pub fn refuse(mut self) {
        if let Some(h) = self.held.take() {
            let settle = Settle {
                buckets: &h.buckets,
                windows: h.windows,
                delta: Delta::between(h.estimate, Charge::default()),
                unrequest: true,
            };
            if let Err(e) = self.shared.store.settle(Some(&settle), None) {
                self.shared
                    .note_failure(&e, "a refused request stays counted this minute");
            }
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
