//! Where quota counters live: in this process (`Local`) or in Redis shared by replicas.
//!
//! A store knows buckets and windowed counters, not rules: `quota` turns rules into `Ask`s.
//! Every bucket keeps four counters, in the order of `rules::WINDOWED`: requests this minute,
//! tokens this minute, tokens today, tokens this month.

use crate::policy::redis_store::RedisStore;
pub use crate::policy::redis_store::Timing;
use crate::policy::windows::{Span, Windows};
use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};

/// The four counters of one bucket, in `rules::WINDOWED` order.
pub type Counts = [u64; 4];

/// The window each counter is kept over.
pub const SPANS: [Span; 4] = [Span::Minute, Span::Minute, Span::Day, Span::Month];

/// One bucket to check and, if every bucket fits, add to; `limits` are the smallest of the
/// rules that share the bucket (`None`: unlimited).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ask {
    /// The bucket name from `Rule::bucket`.
    pub bucket: String,
    /// Per counter, the limit the bucket must stay within.
    pub limits: [Option<u64>; 4],
}

/// The answer to a reservation: whether it was recorded, and the counts it was judged on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// True when the request and its tokens were added to every bucket.
    pub admitted: bool,
    /// The clock the windows were taken from (the Redis server's for `Redis`).
    pub now: u64,
    /// The windows the counts were added to.
    pub windows: Windows,
    /// Each asked bucket's counts before this request, in `asks` order.
    pub before: Vec<Counts>,
}

/// The current counts of some buckets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// The clock the windows were taken from.
    pub now: u64,
    /// Counts in the order the buckets were asked.
    pub counts: Vec<Counts>,
}

/// The store could not be reached or answered nonsense; the text names no secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreError(pub String);

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Store failures since start and the breaker's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Health {
    /// Operations tried that failed (timeout, refused connection, error reply).
    pub failures: u64,
    /// Operations not tried because the breaker was open.
    pub skipped: u64,
    /// True while requests go without the store.
    pub breaker_open: bool,
    /// Seconds until the store is tried again.
    pub retry_after_secs: u64,
    /// Reservations whose answer was lost, not yet cancelled in the store.
    pub pending_cancels: usize,
}

/// What one request adds to each counter.
pub fn increments(tokens: u64) -> Counts {
    [1, tokens, tokens, tokens]
}

/// Whether one more request with `tokens` fits within `limits` on top of `used`.
pub fn fits(used: &Counts, limits: &[Option<u64>; 4], tokens: u64) -> bool {
    let add = increments(tokens);
    (0..4).all(|i| limits[i].is_none_or(|l| used[i].saturating_add(add[i]) <= l))
}

/// The counter store, cheap to clone; clones share the counters (so a reload can keep them).
#[derive(Debug, Clone)]
pub enum Store {
    /// Counters in this process.
    Local(Arc<LocalStore>),
    /// Counters in Redis, shared by every replica.
    Redis(Arc<RedisStore>),
}

impl Store {
    /// An empty in-memory store.
    pub fn local() -> Store {
        Store::Local(Arc::default())
    }

    /// A store in Redis at `"limitsStore"` (`redis://` or `rediss://`, `[:password@]host
    /// [:port][/db]`), trusting only the PEM bundle `ca_file` for TLS when given. The
    /// connection is made on first use, so a Redis that is down at start is a runtime failure.
    pub fn redis(url: &str, ca_file: Option<&str>, timing: Timing) -> Result<Store, StoreError> {
        RedisStore::open(url, ca_file, timing).map(|s| Store::Redis(Arc::new(s)))
    }

    /// How the store is doing, for /metrics and `Retry-After` (the local store never fails).
    pub fn health(&self) -> Health {
        match self {
            Store::Local(_) => Health::default(),
            Store::Redis(s) => {
                let (failures, skipped) = s.failures();
                Health {
                    failures,
                    skipped,
                    breaker_open: s.breaker_open(),
                    retry_after_secs: s.retry_after_secs(),
                    pending_cancels: s.pending_cancels(),
                }
            }
        }
    }

    /// Checks every bucket and, only if all fit, adds one request and `tokens` to each.
    pub fn reserve(&self, asks: &[Ask], tokens: u64, now: u64) -> Result<Outcome, StoreError> {
        match self {
            Store::Local(s) => Ok(s.reserve(asks, tokens, now)),
            Store::Redis(s) => s.reserve(asks, tokens),
        }
    }

    /// Adds `delta` (negative: gives back) to the token counters of `windows`; a window that
    /// has already ended is left alone.
    pub fn adjust(
        &self,
        buckets: &[String],
        windows: Windows,
        delta: i64,
    ) -> Result<(), StoreError> {
        match self {
            Store::Local(s) => {
                s.adjust(buckets, windows, delta);
                Ok(())
            }
            Store::Redis(s) => s.adjust(buckets, windows, delta),
        }
    }

    /// The current counts of `buckets`.
    pub fn read(&self, buckets: &[String], now: u64) -> Result<Snapshot, StoreError> {
        match self {
            Store::Local(s) => Ok(s.read(buckets, now)),
            Store::Redis(s) => s.read(buckets),
        }
    }

    /// Counts a request finished at `ts` into the windows still current at `now` (from the
    /// usage ledger at start). Redis keeps its counters over a restart itself, and every
    /// replica replaying the ledger into it would count each request again, so it skips this.
    pub fn record(&self, buckets: &[String], tokens: u64, ts: u64, now: u64) {
        match self {
            Store::Local(s) => s.record(buckets, tokens, ts, now),
            Store::Redis(_) => {}
        }
    }
}

/// (window number, count) per counter.
type Slots = [(u64, u64); 4];

/// In-memory counters behind one lock, so check-and-add is atomic.
#[derive(Debug, Default)]
pub struct LocalStore {
    data: Mutex<LocalData>,
}

#[derive(Debug, Default)]
struct LocalData {
    buckets: HashMap<String, Slots>,
    /// The minute of the last sweep of month-old buckets.
    swept: u64,
}

impl LocalData {
    /// Forgets buckets whose month has passed, at most once a minute.
    fn sweep(&mut self, w: &Windows) {
        if self.swept != w.minute {
            self.swept = w.minute;
            self.buckets.retain(|_, s| s[3].0 >= w.month);
        }
    }

    fn slots(&mut self, bucket: &str, w: &Windows) -> &mut Slots {
        let slots = self.buckets.entry(bucket.to_string()).or_default();
        for (i, slot) in slots.iter_mut().enumerate() {
            let current = w.of(SPANS[i]);
            // A newer window starts from zero; an older clock than the slot's (time set back)
            // keeps counting into the slot rather than forgetting what was spent.
            if slot.0 < current {
                *slot = (current, 0);
            }
        }
        slots
    }
}

fn counts(slots: Option<&Slots>, w: &Windows) -> Counts {
    let mut out = [0; 4];
    if let Some(s) = slots {
        for i in 0..4 {
            if s[i].0 >= w.of(SPANS[i]) {
                out[i] = s[i].1;
            }
        }
    }
    out
}

impl LocalStore {
    fn lock(&self) -> MutexGuard<'_, LocalData> {
        // A panic while holding the lock leaves whole numbers behind; keep counting with them.
        self.data.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn reserve(&self, asks: &[Ask], tokens: u64, now: u64) -> Outcome {
        let w = Windows::at(now);
        let mut d = self.lock();
        d.sweep(&w);
        let before: Vec<Counts> = asks
            .iter()
            .map(|a| counts(d.buckets.get(&a.bucket), &w))
            .collect();
        let admitted = asks
            .iter()
            .zip(&before)
            .all(|(a, used)| fits(used, &a.limits, tokens));
        if admitted {
            let add = increments(tokens);
            for a in asks {
                let slots = d.slots(&a.bucket, &w);
                for i in 0..4 {
                    slots[i].1 = slots[i].1.saturating_add(add[i]);
                }
            }
        }
        Outcome {
            admitted,
            now,
            windows: w,
            before,
        }
    }

    fn adjust(&self, buckets: &[String], w: Windows, delta: i64) {
        let mut d = self.lock();
        for b in buckets {
            if let Some(slots) = d.buckets.get_mut(b) {
                for i in 1..4 {
                    if slots[i].0 == w.of(SPANS[i]) {
                        slots[i].1 = slots[i].1.saturating_add_signed(delta);
                    }
                }
            }
        }
    }

    fn read(&self, buckets: &[String], now: u64) -> Snapshot {
        let w = Windows::at(now);
        let d = self.lock();
        Snapshot {
            now,
            counts: buckets
                .iter()
                .map(|b| counts(d.buckets.get(b), &w))
                .collect(),
        }
    }

    fn record(&self, buckets: &[String], tokens: u64, ts: u64, now: u64) {
        let (w, past) = (Windows::at(now), Windows::at(ts));
        let add = increments(tokens);
        let mut d = self.lock();
        d.sweep(&w);
        for b in buckets {
            let slots = d.slots(b, &w);
            for i in 0..4 {
                if past.of(SPANS[i]) == w.of(SPANS[i]) {
                    slots[i].1 = slots[i].1.saturating_add(add[i]);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ask(bucket: &str, limits: [Option<u64>; 4]) -> Ask {
        Ask {
            bucket: bucket.into(),
            limits,
        }
    }

    #[test]
    fn adds_only_when_every_bucket_fits() {
        let s = LocalStore::default();
        let asks = [
            ask("a", [None, Some(100), None, None]),
            ask("b", [Some(2), None, None, None]),
        ];
        assert!(s.reserve(&asks, 60, 1000).admitted);
        // "a" would reach 120 tokens: nothing is added to "b" either.
        let o = s.reserve(&asks, 60, 1001);
        assert!(!o.admitted);
        assert_eq!(o.before, vec![[1, 60, 60, 60], [1, 60, 60, 60]]);
        let snap = s.read(&["a".into(), "b".into()], 1002);
        assert_eq!(snap.counts, vec![[1, 60, 60, 60], [1, 60, 60, 60]]);
        assert!(s.reserve(&asks, 40, 1003).admitted);
        assert!(
            !s.reserve(&asks, 0, 1004).admitted,
            "third request in the minute"
        );
    }

    #[test]
    fn windows_roll_over_independently() {
        let s = LocalStore::default();
        let day_start = 86_400 * 20_000;
        let asks = [ask("a", [None, None, None, None])];
        s.reserve(&asks, 10, day_start + 59);
        let names = ["a".to_string()];
        assert_eq!(s.read(&names, day_start + 60).counts, vec![[0, 0, 10, 10]]);
        assert_eq!(
            s.read(&names, day_start + 86_400).counts,
            vec![[0, 0, 0, 10]]
        );
        // A later write in the next minute starts that minute from zero, keeps the day.
        s.reserve(&asks, 5, day_start + 61);
        assert_eq!(s.read(&names, day_start + 62).counts, vec![[1, 5, 15, 15]]);
    }

    #[test]
    fn adjust_skips_windows_that_ended() {
        let s = LocalStore::default();
        let asks = [ask("a", [None; 4])];
        let o = s.reserve(&asks, 100, 120);
        let names = ["a".to_string()];
        s.adjust(&names, o.windows, -30);
        assert_eq!(s.read(&names, 130).counts, vec![[1, 70, 70, 70]]);
        // In the next minute the minute counter belongs to another window.
        s.reserve(&asks, 1, 185);
        s.adjust(&names, o.windows, 1000);
        assert_eq!(s.read(&names, 186).counts, vec![[1, 1, 1071, 1071]]);
        // Never below zero.
        s.adjust(&names, Windows::at(186), -1_000_000);
        assert_eq!(s.read(&names, 186).counts, vec![[1, 0, 0, 0]]);
    }

    #[test]
    fn record_counts_only_windows_still_current() {
        let s = LocalStore::default();
        let now = 86_400 * 20_000 + 3_630; // 2024-10-04 01:00:30
        let names = ["a".to_string()];
        s.record(&names, 7, now - 10, now); // same minute
        s.record(&names, 5, now - 120, now); // same day
        s.record(&names, 3, now - 7_200, now); // yesterday, same month
        s.record(&names, 1, now - 86_400 * 40, now); // another month
        assert_eq!(s.read(&names, now).counts, vec![[1, 7, 12, 15]]);
    }

    #[test]
    fn month_old_buckets_are_swept() {
        let s = LocalStore::default();
        s.reserve(&[ask("old", [None; 4])], 1, 0);
        s.reserve(&[ask("new", [None; 4])], 1, 86_400 * 40);
        let d = s.lock();
        assert!(!d.buckets.contains_key("old"));
        assert!(d.buckets.contains_key("new"));
    }
}
