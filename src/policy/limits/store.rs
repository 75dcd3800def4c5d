//! Where quota counters live: in this process (`Local`) or in Redis shared by replicas.
//!
//! A store knows buckets and windowed counters, not rules: `quota` turns rules into `Ask`s.
//! Every bucket keeps eight counters, in the order of `rules::WINDOWED`: requests this minute,
//! tokens this minute, today and this month, cost today, this week, this month and in total.

use crate::config::DEFAULT_MAX_TRACKED;
pub use crate::policy::limits::counts::{
    fits, increments, Ask, Charge, Counts, Delta, Outcome, Settle, Snapshot, StoreError, UsageAdd,
    UsageSum, N, SPANS,
};
use crate::policy::limits::redis_store::RedisStore;
pub use crate::policy::limits::redis_store::Timing;
use crate::policy::limits::windows::{window_end, Span, Windows};
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Once};

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

    /// Checks every bucket and, only if all fit, adds one request, its tokens and cost to each.
    pub fn reserve(&self, asks: &[Ask], charge: Charge, now: u64) -> Result<Outcome, ReserveError> {
        match self {
            Store::Local(s) => {
                s.sweeper.call_once(|| spawn_sweeper(self));
                s.reserve(asks, charge, now)
            }
            Store::Redis(s) => s.reserve(asks, charge).map_err(ReserveError::Store),
        }
    }

    /// Sets the most buckets the local store holds at once (Redis keeps its own memory).
    pub fn set_max_tracked(&self, max: usize) {
        if let Store::Local(s) = self {
            s.max.store(max, Ordering::Relaxed);
        }
    }

    /// How many buckets the local store holds now; `None` for Redis.
    pub fn tracked(&self) -> Option<usize> {
        match self {
            Store::Local(s) => Some(s.tracked()),
            Store::Redis(_) => None,
        }
    }

    /// Settles a reservation (`held`: its token delta, and its request taken back for a
    /// refusal; a window that has ended is left alone) and adds a finished request's usage to
    /// the shared totals: one round trip to Redis. The local store keeps no totals (the
    /// ledger is the record of one process).
    pub fn settle(
        &self,
        held: Option<&Settle>,
        usage: Option<&UsageAdd>,
    ) -> Result<(), StoreError> {
        match self {
            Store::Local(s) => {
                if let Some(h) = held {
                    s.adjust(h.buckets, h.windows, h.delta);
                    if h.unrequest {
                        s.unrequest(h.buckets, h.windows);
                    }
                }
                Ok(())
            }
            Store::Redis(s) => s.settle(held, usage),
        }
    }

    /// The shared usage totals of the days from `first` to before `end`; `None` for the local
    /// store, which keeps none (the ledger is the record).
    pub fn usage(&self, first: i64, end: i64) -> Option<Result<Vec<UsageSum>, StoreError>> {
        match self {
            Store::Local(_) => None,
            Store::Redis(s) => Some(s.usage(first, end)),
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
    pub fn record(&self, asks: &[Ask], charge: Charge, ts: u64, now: u64) {
        match self {
            Store::Local(s) => {
                s.sweeper.call_once(|| spawn_sweeper(self));
                s.record(asks, charge, ts, now)
            }
            Store::Redis(_) => {}
        }
    }
}

/// (window number, count) per counter.
type Slots = [(u64, u64); N];

/// Buckets freed since the allocator was last asked to hand memory back, above which the sweeper
/// asks again: a few freed buckets are not worth a pass over the heap.
const TRIM_AFTER_FREED: usize = 1024;

/// Why a store did not answer a reservation with counts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReserveError {
    /// The store could not be reached or answered nonsense.
    Store(StoreError),
    /// The local store holds `max` buckets whose windows are still open and this request would
    /// add another: refused rather than forgetting anyone's spend in an open window.
    Full {
        /// The configured cap (`"limitsMaxTracked"`).
        max: usize,
        /// Seconds until the first tracked bucket's windows end; at least 1.
        retry_after_secs: u64,
    },
}

/// One bucket's counters and which of them any rule limits.
#[derive(Debug, Default)]
struct Bucket {
    slots: Slots,
    /// Bit `i` set: counter `i` has been asked with a limit. Only those keep a bucket alive:
    /// a bucket limited per minute is forgotten when its minute ends, not its month.
    limited: u8,
}

fn limited_mask(limits: &[Option<u64>; N]) -> u8 {
    (0..N)
        .filter(|&i| limits[i].is_some())
        .fold(0, |m, i| m | 1 << i)
}

impl Bucket {
    /// When the last of its limited counters' windows ends, if one is still open at `w`.
    fn open_until(&self, w: &Windows, now: u64) -> Option<u64> {
        (0..N)
            .filter(|&i| self.limited & 1 << i != 0 && self.slots[i].0 >= w.of(SPANS[i]))
            .map(|i| window_end(SPANS[i], now))
            .max()
    }
}

/// In-memory counters behind one lock, so check-and-add is atomic.
#[derive(Debug)]
pub struct LocalStore {
    data: Mutex<LocalData>,
    /// The most buckets held at once (`"limitsMaxTracked"`; a reload may change it).
    max: AtomicUsize,
    /// Buckets freed since the allocator last gave memory back.
    freed: AtomicUsize,
    /// The sweeper thread starts with the first bucket: a process without limits has none.
    sweeper: Once,
}

impl Default for LocalStore {
    fn default() -> LocalStore {
        LocalStore {
            data: Mutex::default(),
            max: AtomicUsize::new(DEFAULT_MAX_TRACKED),
            freed: AtomicUsize::new(0),
            sweeper: Once::new(),
        }
    }
}

#[derive(Debug, Default)]
struct LocalData {
    buckets: HashMap<String, Bucket>,
    /// The minute of the last routine sweep.
    swept: u64,
    /// The second of the last sweep forced by a full store: at most one a second, since each
    /// walks every bucket.
    forced: u64,
    /// From the last sweep: when the first bucket it kept closes its windows.
    next_free: u64,
}

impl LocalData {
    /// Forgets buckets whose limited windows have all ended, at most once a minute.
    fn sweep(&mut self, w: &Windows, now: u64) -> usize {
        if self.swept == w.minute {
            return 0;
        }
        self.swept = w.minute;
        self.sweep_now(w, now)
    }

    /// Forgets buckets whose limited windows have all ended; returns how many.
    fn sweep_now(&mut self, w: &Windows, now: u64) -> usize {
        let before = self.buckets.len();
        let mut next_free = u64::MAX;
        self.buckets.retain(|_, b| match b.open_until(w, now) {
            Some(end) => {
                next_free = next_free.min(end);
                true
            }
            None => false,
        });
        self.next_free = next_free;
        // A table sized for a burst of identities would otherwise stay that size.
        if self.buckets.capacity() > 2 * self.buckets.len() + 1024 {
            self.buckets.shrink_to_fit();
        }
        before - self.buckets.len()
    }

    /// Adds to `bucket`'s counters of the windows at `w` (`add` per counter, 0 to leave one).
    /// Looked up once by the borrowed name: the name is copied only for a new bucket.
    fn add(&mut self, bucket: &str, limits: &[Option<u64>; N], w: &Windows, add: &Counts) {
        match self.buckets.get_mut(bucket) {
            Some(b) => add_to(b, limits, w, add),
            None => {
                let mut b = Bucket::default();
                add_to(&mut b, limits, w, add);
                self.buckets.insert(bucket.to_string(), b);
            }
        }
    }
}

fn add_to(b: &mut Bucket, limits: &[Option<u64>; N], w: &Windows, add: &Counts) {
    b.limited |= limited_mask(limits);
    for ((slot, span), add) in b.slots.iter_mut().zip(SPANS).zip(add) {
        let current = w.of(span);
        // A newer window starts from zero; an older clock than the slot's (time set back)
        // keeps counting into the slot rather than forgetting what was spent.
        if slot.0 < current {
            *slot = (current, 0);
        }
        slot.1 = slot.1.saturating_add(*add);
    }
}

/// Checks `asks`' buckets and, if all fit, adds `charge` to each, through one lookup per
/// bucket; `None` (nothing done) when one is not tracked yet, for the general path. Whether it
/// admitted, and the counts before.
fn reserve_found<const K: usize>(
    d: &mut LocalData,
    asks: [&Ask; K],
    w: &Windows,
    charge: Charge,
) -> Option<(bool, Vec<Counts>)> {
    // A plan's buckets are distinct: no two of these names are the same.
    let found = d.buckets.get_disjoint_mut(asks.map(|a| a.bucket));
    if found.iter().any(Option::is_none) {
        return None;
    }
    // All found: the flattened lists are the buckets in `asks` order.
    let before: Vec<Counts> = found.iter().flatten().map(|b| counts(Some(b), w)).collect();
    let admitted = asks
        .iter()
        .zip(&before)
        .all(|(a, used)| fits(used, &a.limits, charge));
    if admitted {
        let add = increments(charge);
        for (b, a) in found.into_iter().flatten().zip(asks) {
            add_to(b, &a.limits, w, &add);
        }
    }
    Some((admitted, before))
}

fn counts(b: Option<&Bucket>, w: &Windows) -> Counts {
    let mut out = [0; N];
    if let Some(b) = b {
        for i in 0..N {
            if b.slots[i].0 >= w.of(SPANS[i]) {
                out[i] = b.slots[i].1;
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

    fn reserve(&self, asks: &[Ask], charge: Charge, now: u64) -> Result<Outcome, ReserveError> {
        let w = Windows::at(now);
        let mut d = self.lock();
        let freed = d.sweep(&w, now);
        self.freed.fetch_add(freed, Ordering::Relaxed);
        // Names are hashed with SipHash (they hold client-chosen values): a subject's buckets
        // that are all tracked already (every request of it but the first in a while) are
        // found with one lookup each and added to through it.
        let found = match asks {
            [a] => reserve_found(&mut d, [a], &w, charge),
            [a, b] => reserve_found(&mut d, [a, b], &w, charge),
            [a, b, c] => reserve_found(&mut d, [a, b, c], &w, charge),
            _ => None,
        };
        if let Some((admitted, before)) = found {
            return Ok(Outcome {
                admitted,
                now,
                windows: w,
                before,
            });
        }
        // Else one lookup per bucket here and one to add.
        let mut new = 0;
        let before: Vec<Counts> = asks
            .iter()
            .map(|a| {
                let b = d.buckets.get(a.bucket);
                new += usize::from(b.is_none());
                counts(b, &w)
            })
            .collect();
        let admitted = asks
            .iter()
            .zip(&before)
            .all(|(a, used)| fits(used, &a.limits, charge));
        if admitted {
            let max = self.max.load(Ordering::Relaxed);
            if new > 0 && d.buckets.len() + new > max {
                if d.forced != now {
                    d.forced = now;
                    let freed = d.sweep_now(&w, now);
                    self.freed.fetch_add(freed, Ordering::Relaxed);
                }
                if d.buckets.len() + new > max {
                    // Nothing held (a request needing more identities than the cap allows):
                    // no window to wait for; say a minute rather than forever.
                    let free_at = match d.next_free {
                        u64::MAX => window_end(Span::Minute, now),
                        t => t,
                    };
                    return Err(ReserveError::Full {
                        max,
                        retry_after_secs: free_at.saturating_sub(now).max(1),
                    });
                }
            }
            let add = increments(charge);
            for a in asks {
                d.add(a.bucket, &a.limits, &w, &add);
            }
        }
        Ok(Outcome {
            admitted,
            now,
            windows: w,
            before,
        })
    }

    fn adjust(&self, buckets: &[String], w: Windows, delta: Delta) {
        if delta.is_zero() {
            return;
        }
        let mut d = self.lock();
        for b in buckets {
            if let Some(b) = d.buckets.get_mut(b) {
                // Token and cost counters only: the request itself stays counted.
                for (i, (slot, span)) in b.slots.iter_mut().zip(SPANS).enumerate().skip(1) {
                    if slot.0 == w.of(span) {
                        slot.1 = slot.1.saturating_add_signed(delta.of(i));
                    }
                }
            }
        }
    }

    fn unrequest(&self, buckets: &[String], w: Windows) {
        let mut d = self.lock();
        for b in buckets {
            if let Some(b) = d.buckets.get_mut(b) {
                if b.slots[0].0 == w.of(SPANS[0]) {
                    b.slots[0].1 = b.slots[0].1.saturating_sub(1);
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

    /// Ledger replay at start is never refused by the cap: forgetting spend of an open window
    /// would re-grant it; new identities are refused instead until windows end.
    fn record(&self, asks: &[Ask], charge: Charge, ts: u64, now: u64) {
        let (w, past) = (Windows::at(now), Windows::at(ts));
        let mut d = self.lock();
        let freed = d.sweep(&w, now);
        self.freed.fetch_add(freed, Ordering::Relaxed);
        let mut add = increments(charge);
        for (i, a) in add.iter_mut().enumerate() {
            if past.of(SPANS[i]) != w.of(SPANS[i]) {
                *a = 0;
            }
        }
        for a in asks {
            d.add(a.bucket, &a.limits, &w, &add);
        }
    }

    /// Forgets every bucket whose windows have ended (the sweeper, once a minute), and asks the
    /// allocator to return freed memory to the system once enough has been freed.
    pub fn sweep(&self, now: u64) {
        let freed = self.lock().sweep(&Windows::at(now), now);
        if self.freed.fetch_add(freed, Ordering::Relaxed) + freed >= TRIM_AFTER_FREED {
            self.freed.store(0, Ordering::Relaxed);
            crate::lifecycle::trim_heap();
        }
    }

    /// How many buckets are held now.
    pub fn tracked(&self) -> usize {
        self.lock().buckets.len()
    }
}

/// Sweeps `store` a second after each UTC minute begins, so counters of ended windows are freed
/// without waiting for traffic. The thread ends when the store is dropped.
pub fn spawn_sweeper(store: &Store) {
    let Store::Local(local) = store else {
        return;
    };
    let weak = Arc::downgrade(local);
    let spawned = std::thread::Builder::new()
        .name("limits-sweep".into())
        .spawn(move || loop {
            let now_ms = crate::clock::now_ms().max(0) as u64;
            let next = (now_ms / 60_000 + 1) * 60_000 + 1_000;
            std::thread::sleep(std::time::Duration::from_millis(next - now_ms));
            let Some(store) = weak.upgrade() else {
                return;
            };
            store.sweep(next / 1000);
        });
    if let Err(e) = spawned {
        log::warn!(
            "limits: could not start the sweeper thread ({}); ended windows are freed by traffic",
            e
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A bucket limited in the token counters only.
    fn ask(bucket: &str, limits: [Option<u64>; 4]) -> Ask<'_> {
        let mut all = [None; N];
        all[..4].copy_from_slice(&limits);
        Ask {
            bucket,
            limits: all,
        }
    }

    fn tok(tokens: u64) -> Charge {
        Charge { tokens, cost: 0 }
    }

    fn dt(tokens: i64) -> Delta {
        Delta { tokens, cost: 0 }
    }

    /// The token counters of each bucket (the cost counters are tested on their own).
    fn first4(counts: Vec<Counts>) -> Vec<[u64; 4]> {
        counts.iter().map(|c| [c[0], c[1], c[2], c[3]]).collect()
    }

    #[test]
    fn adds_only_when_every_bucket_fits() {
        let s = LocalStore::default();
        let asks = [
            ask("a", [None, Some(100), None, None]),
            ask("b", [Some(2), None, None, None]),
        ];
        assert!(s.reserve(&asks, tok(60), 1000).unwrap().admitted);
        // "a" would reach 120 tokens: nothing is added to "b" either.
        let o = s.reserve(&asks, tok(60), 1001).unwrap();
        assert!(!o.admitted);
        assert_eq!(first4(o.before), vec![[1, 60, 60, 60], [1, 60, 60, 60]]);
        let snap = s.read(&["a".into(), "b".into()], 1002);
        assert_eq!(first4(snap.counts), vec![[1, 60, 60, 60], [1, 60, 60, 60]]);
        assert!(s.reserve(&asks, tok(40), 1003).unwrap().admitted);
        assert!(
            !s.reserve(&asks, tok(0), 1004).unwrap().admitted,
            "third request in the minute"
        );
    }

    #[test]
    fn tracked_and_new_buckets_are_all_or_nothing_however_many() {
        // 1 to 3 tracked buckets take one lookup each, more the general path; a new bucket
        // among them the general path too: the same counts either way.
        for k in 1..=5 {
            let s = LocalStore::default();
            let names: Vec<String> = (0..k).map(|i| format!("b{}", i)).collect();
            let limit = |i: usize| [Some(3), (i + 1 == k).then_some(100), None, None];
            let asks: Vec<Ask> = (0..k).map(|i| ask(&names[i], limit(i))).collect();
            assert!(s.reserve(&asks, tok(60), 1000).unwrap().admitted);
            assert!(s.reserve(&asks, tok(30), 1001).unwrap().admitted);
            // The last bucket would pass 100 tokens: nothing added anywhere.
            let o = s.reserve(&asks, tok(20), 1002).unwrap();
            assert!(!o.admitted, "{} buckets", k);
            assert_eq!(first4(o.before), vec![[2, 90, 90, 90]; k]);
            // With a new bucket in front: refused the same, and the new one not tracked.
            let mut more = vec![ask("new", [Some(3), None, None, None])];
            more.extend(asks.iter().cloned());
            assert!(!s.reserve(&more, tok(20), 1003).unwrap().admitted);
            assert_eq!(s.tracked(), k);
            assert!(s.reserve(&asks, tok(10), 1004).unwrap().admitted);
            // The third request of the minute fills `requestsPerMinute` 3 everywhere.
            assert!(!s.reserve(&asks, tok(0), 1005).unwrap().admitted);
            let snap = s.read(&names, 1006);
            assert_eq!(
                first4(snap.counts),
                vec![[3, 100, 100, 100]; k],
                "{} buckets",
                k
            );
        }
    }

    #[test]
    fn windows_roll_over_independently() {
        let s = LocalStore::default();
        let day_start = 86_400 * 20_000;
        let asks = [ask("a", [None, None, None, Some(1000)])];
        s.reserve(&asks, tok(10), day_start + 59).unwrap();
        let names = ["a".to_string()];
        assert_eq!(
            first4(s.read(&names, day_start + 60).counts),
            vec![[0, 0, 10, 10]]
        );
        assert_eq!(
            first4(s.read(&names, day_start + 86_400).counts),
            vec![[0, 0, 0, 10]]
        );
        // A later write in the next minute starts that minute from zero, keeps the day.
        s.reserve(&asks, tok(5), day_start + 61).unwrap();
        assert_eq!(
            first4(s.read(&names, day_start + 62).counts),
            vec![[1, 5, 15, 15]]
        );
    }

    #[test]
    fn adjust_skips_windows_that_ended() {
        let s = LocalStore::default();
        let asks = [ask("a", [None, None, None, Some(10_000)])];
        let o = s.reserve(&asks, tok(100), 120).unwrap();
        let names = ["a".to_string()];
        s.adjust(&names, o.windows, dt(-30));
        assert_eq!(first4(s.read(&names, 130).counts), vec![[1, 70, 70, 70]]);
        // In the next minute the minute counter belongs to another window.
        s.reserve(&asks, tok(1), 185).unwrap();
        s.adjust(&names, o.windows, dt(1000));
        assert_eq!(first4(s.read(&names, 186).counts), vec![[1, 1, 1071, 1071]]);
        // Never below zero.
        s.adjust(&names, Windows::at(186), dt(-1_000_000));
        assert_eq!(first4(s.read(&names, 186).counts), vec![[1, 0, 0, 0]]);
    }

    #[test]
    fn unrequest_takes_back_one_request_of_its_minute_only() {
        let s = LocalStore::default();
        // A month limit keeps the bucket past its minute (unlimited counters are freed).
        let asks = [ask("a", [None, None, None, Some(1_000)])];
        let o = s.reserve(&asks, tok(5), 120).expect("reserved");
        s.reserve(&asks, tok(5), 121).expect("reserved");
        let names = ["a".to_string()];
        s.unrequest(&names, o.windows);
        assert_eq!(first4(s.read(&names, 122).counts), vec![[1, 10, 10, 10]]);
        s.reserve(&asks, tok(5), 185).expect("reserved");
        s.unrequest(&names, o.windows); // that minute has ended
        assert_eq!(first4(s.read(&names, 186).counts), vec![[1, 5, 15, 15]]);
    }

    #[test]
    fn record_counts_only_windows_still_current() {
        let s = LocalStore::default();
        let now = 86_400 * 20_000 + 3_630; // 2024-10-04 01:00:30
        let names = ["a".to_string()];
        let asks = [ask("a", [Some(9), None, None, Some(100)])];
        s.record(&asks, tok(7), now - 10, now); // same minute
        s.record(&asks, tok(5), now - 120, now); // same day
        s.record(&asks, tok(3), now - 7_200, now); // yesterday, same month
        s.record(&asks, tok(1), now - 86_400 * 40, now); // another month
        assert_eq!(first4(s.read(&names, now).counts), vec![[1, 7, 12, 15]]);
    }

    #[test]
    fn month_old_buckets_are_swept() {
        let s = LocalStore::default();
        let month = [None, None, None, Some(100)];
        s.reserve(&[ask("old", month)], tok(1), 0).unwrap();
        s.reserve(&[ask("new", month)], tok(1), 86_400 * 40)
            .unwrap();
        let d = s.lock();
        assert!(!d.buckets.contains_key("old"));
        assert!(d.buckets.contains_key("new"));
    }

    #[test]
    fn cost_counters_keep_week_and_total_and_a_total_budget_never_frees_its_bucket() {
        let s = LocalStore::default();
        let mut limits = [None; N];
        limits[5] = Some(1_000); // per week
        limits[7] = Some(3_000); // in total
        let asks = [Ask {
            bucket: "u=ann",
            limits,
        }];
        let names = ["u=ann".to_string()];
        let c = |tokens, cost| Charge { tokens, cost };
        // 2024-03-14 is a Thursday; Monday 2024-03-18 starts the next week.
        let o = s.reserve(&asks, c(10, 600), NOON).unwrap();
        assert!(o.admitted);
        assert!(!s.reserve(&asks, c(10, 401), NOON + 1).unwrap().admitted);
        // Settled below the reservation: room again, in the same windows only.
        s.adjust(
            &names,
            o.windows,
            Delta {
                tokens: -5,
                cost: -100,
            },
        );
        assert_eq!(
            s.read(&names, NOON + 2).counts,
            vec![[1, 5, 5, 5, 500, 500, 500, 500]]
        );
        assert!(s.reserve(&asks, c(1, 500), NOON + 3).unwrap().admitted);
        let monday = NOON + 4 * 86_400;
        assert_eq!(
            s.read(&names, monday).counts,
            vec![[0, 0, 0, 6, 0, 0, 1000, 1000]]
        );
        s.sweep(monday + 40 * 86_400);
        assert_eq!(s.tracked(), 1, "a prepaid budget is kept forever");
        assert!(s.reserve(&asks, c(1, 1_000), monday).unwrap().admitted);
        assert!(
            !s.reserve(&asks, c(1, 1_001), monday + 40 * 86_400)
                .unwrap()
                .admitted,
            "the total never resets"
        );
    }

    /// 2024-03-14 12:00:00 UTC: mid-month, on a minute boundary.
    const NOON: u64 = 1_710_417_600;

    #[test]
    fn buckets_are_forgotten_when_their_limited_windows_end() {
        let s = LocalStore::default();
        let minute = [Some(5), None, None, None];
        let day = [None, None, Some(1000), None];
        for i in 0..5000 {
            s.reserve(&[ask(&format!("u=m{}", i), minute)], tok(1), NOON + 1)
                .unwrap();
        }
        s.reserve(&[ask("u=d", day)], tok(1), NOON + 2).unwrap();
        assert_eq!(s.tracked(), 5001);
        // Still the same minute: nothing has ended.
        s.sweep(NOON + 59);
        assert_eq!(s.tracked(), 5001);
        // The minute ended: only the day budget is still open, and its table shrank back.
        s.sweep(NOON + 60);
        assert_eq!(s.tracked(), 1);
        assert!(s.lock().buckets.capacity() < 100);
        assert_eq!(
            first4(s.read(&["u=d".to_string()], NOON + 61).counts),
            vec![[0, 0, 1, 1]]
        );
        s.sweep(NOON + 12 * 3600);
        assert_eq!(s.tracked(), 0, "the day ended");
    }

    #[test]
    fn a_full_store_refuses_new_buckets_until_windows_end() {
        let s = LocalStore::default();
        s.max.store(3, Ordering::Relaxed);
        let minute = [Some(5), None, None, None];
        for b in ["a", "b", "c"] {
            s.reserve(&[ask(b, minute)], tok(1), NOON + 10).unwrap();
        }
        assert_eq!(
            s.reserve(&[ask("d", minute)], tok(1), NOON + 20),
            Err(ReserveError::Full {
                max: 3,
                retry_after_secs: 40
            })
        );
        // Known buckets still count, and nothing of the refused one was kept.
        assert!(
            s.reserve(&[ask("a", minute)], tok(1), NOON + 21)
                .unwrap()
                .admitted
        );
        assert_eq!(
            first4(s.read(&["d".to_string()], NOON + 21).counts),
            vec![[0; 4]]
        );
        // Two new buckets when one would fit: all or nothing.
        s.max.store(4, Ordering::Relaxed);
        assert!(matches!(
            s.reserve(&[ask("d", minute), ask("e", minute)], tok(1), NOON + 22),
            Err(ReserveError::Full { .. })
        ));
        assert_eq!(s.tracked(), 3);
        // A refusal by a limit is reported as such, not as a full store.
        assert!(
            !s.reserve(&[ask("a", [Some(1), None, None, None])], tok(1), NOON + 23)
                .unwrap()
                .admitted
        );
        // The next minute frees the old ones for newcomers.
        assert!(
            s.reserve(&[ask("d", minute)], tok(1), NOON + 60)
                .unwrap()
                .admitted
        );
        assert_eq!(s.tracked(), 1);
    }

    #[test]
    fn a_month_budget_keeps_its_bucket_and_the_retry_names_its_end() {
        let s = LocalStore::default();
        s.max.store(1, Ordering::Relaxed);
        let month = [None, None, None, Some(100)];
        s.reserve(&[ask("a", month)], tok(1), NOON).unwrap();
        // 2024-03-14 12:00 to 2024-04-01 00:00.
        let left = 17 * 86_400 + 12 * 3600 - 120;
        assert_eq!(
            s.reserve(&[ask("b", month)], tok(1), NOON + 120),
            Err(ReserveError::Full {
                max: 1,
                retry_after_secs: left
            })
        );
        s.sweep(NOON + 86_400);
        assert_eq!(s.tracked(), 1, "the month is still open");
        // More new identities than the cap itself: refused, with a finite Retry-After.
        let t = NOON + 40 * 86_400 + 30;
        assert_eq!(
            s.reserve(&[ask("c", month), ask("d", month)], tok(1), t),
            Err(ReserveError::Full {
                max: 1,
                retry_after_secs: 30
            })
        );
    }
}
