//! An admitted request's hold on its quotas, and what it shares with the `Quotas` that made it:
//! the store, the in-flight counts and the once-a-minute failure log.

use crate::policy::limits::status::RuleStatus;
use crate::policy::limits::store::{Settle, Store, StoreError, UsageAdd};
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
    /// The windowed budgets once this request was counted (empty when nothing was reserved).
    pub status: Vec<RuleStatus>,
}

#[derive(Debug)]
pub struct Held {
    pub buckets: Vec<String>,
    pub windows: Windows,
    pub estimate: u64,
}

impl Reservation {
    /// The budgets of the rules that counted this request, for the `x-ratelimit-*` headers.
    pub fn status(&self) -> &[RuleStatus] {
        &self.status
    }

    /// Replaces the estimate with the tokens the backend reported, in the windows the
    /// reservation was made in (a window that has ended since is left alone). The request
    /// path uses `finish`, which also carries the shared usage totals.
    #[cfg(test)]
    pub fn settle(self, actual_tokens: u64) {
        self.finish(Some(actual_tokens), None);
    }

    /// Gives the reserved tokens back (the request failed before a backend did any work); the
    /// request itself stays counted.
    pub fn release(self) {
        self.finish(None, None);
    }

    /// Settles to `actual_tokens` (`None`: gives the estimate back, as `release`) and adds the
    /// request's `usage` to the shared totals, in one store operation.
    pub fn finish(mut self, actual_tokens: Option<u64>, usage: Option<&UsageAdd>) {
        let held = self.held.take();
        let settle = held.as_ref().map(|h| {
            let estimate = i64::try_from(h.estimate).unwrap_or(i64::MAX);
            let delta = match actual_tokens {
                Some(n) => i64::try_from(n)
                    .unwrap_or(i64::MAX)
                    .saturating_sub(estimate),
                None => -estimate,
            };
            Settle {
                buckets: &h.buckets,
                windows: h.windows,
                delta,
                unrequest: false,
            }
        });
        if let Err(e) = self.shared.store.settle(settle.as_ref(), usage) {
            self.shared
                .note_failure(&e, "a request's token count was not corrected");
        }
    }

    /// Gives back the reserved tokens and the request itself: modelmux refused the request
    /// before asking any backend.
    pub fn refuse(mut self) {
        if let Some(h) = self.held.take() {
            let settle = Settle {
                buckets: &h.buckets,
                windows: h.windows,
                delta: -i64::try_from(h.estimate).unwrap_or(i64::MAX),
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
