//! A circuit breaker for the limits store: after a failure the store is not tried again for
//! `retry`, then one request probes it while the others still go without. A store that is
//! down or stalled so costs one timeout per interval, not one per request.

use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy)]
enum State {
    /// The store answers: every operation tries it.
    Closed,
    /// It failed: nothing tries it before `until`.
    Open { until: Instant },
    /// One operation is probing it; the others wait for its verdict until `until` (a probe
    /// that never reports, e.g. a panic, does not keep the store shut for good).
    Probing { until: Instant },
}

/// Whether to try the store now, shared by every request of the process.
#[derive(Debug)]
pub struct Breaker {
    retry: Duration,
    state: Mutex<State>,
}

impl Breaker {
    /// A closed breaker that stays open for `retry` after each failure.
    pub fn new(retry: Duration) -> Breaker {
        Breaker {
            retry,
            state: Mutex::new(State::Closed),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// True when an operation at `now` may try the store; once the interval is over, only
    /// the first caller gets to (the probe).
    pub fn allow(&self, now: Instant) -> bool {
        let mut s = self.state();
        match *s {
            State::Closed => true,
            State::Open { until } | State::Probing { until } if now >= until => {
                *s = State::Probing {
                    until: now + self.retry,
                };
                true
            }
            State::Open { .. } | State::Probing { .. } => false,
        }
    }

    /// The store answered.
    pub fn success(&self) {
        *self.state() = State::Closed;
    }

    /// The store failed at `now`: leave it alone for the interval.
    pub fn failure(&self, now: Instant) {
        *self.state() = State::Open {
            until: now + self.retry,
        };
    }

    /// True while operations go without the store.
    pub fn is_open(&self, now: Instant) -> bool {
        match *self.state() {
            State::Closed => false,
            State::Open { until } | State::Probing { until } => now < until,
        }
    }

    /// Whole seconds (at least 1) until the store is tried again: a `Retry-After`.
    pub fn retry_after_secs(&self, now: Instant) -> u64 {
        let left = match *self.state() {
            State::Closed => self.retry,
            State::Open { until } | State::Probing { until } => {
                until.saturating_duration_since(now)
            }
        };
        left.as_secs_f64().ceil().max(1.0) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_probe_per_interval_and_closed_on_success() {
        let b = Breaker::new(Duration::from_secs(5));
        let t0 = Instant::now();
        assert!(b.allow(t0) && b.allow(t0), "closed: everyone tries");
        b.failure(t0);
        assert!(b.is_open(t0));
        assert!(!b.allow(t0 + Duration::from_millis(4_999)));
        assert_eq!(b.retry_after_secs(t0 + Duration::from_millis(1_500)), 4);
        let t1 = t0 + Duration::from_secs(5);
        assert!(b.allow(t1), "the probe");
        assert!(!b.allow(t1), "only one probe at a time");
        assert!(!b.allow(t1 + Duration::from_secs(1)));
        // The probe failed: another interval.
        b.failure(t1 + Duration::from_secs(1));
        assert!(!b.allow(t1 + Duration::from_secs(5)));
        assert!(b.allow(t1 + Duration::from_secs(6)));
        b.success();
        assert!(!b.is_open(t1 + Duration::from_secs(6)));
        assert!(b.allow(t1 + Duration::from_secs(6)) && b.allow(t1 + Duration::from_secs(6)));
    }

    #[test]
    fn a_probe_that_never_reports_does_not_shut_the_store_for_good() {
        let b = Breaker::new(Duration::from_secs(5));
        let t0 = Instant::now();
        b.failure(t0);
        assert!(b.allow(t0 + Duration::from_secs(5)));
        assert!(!b.allow(t0 + Duration::from_secs(9)));
        assert!(b.allow(t0 + Duration::from_secs(10)), "a new probe");
    }
}
