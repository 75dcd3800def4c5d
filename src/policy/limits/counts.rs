//! What a limits store is asked and answers, shared by the local and the Redis store: a bucket's
//! four counters (in the order of `rules::WINDOWED`: requests this minute, tokens this minute,
//! tokens today, tokens this month), the asks, the outcomes and the error.

use crate::policy::limits::windows::{Span, Windows};
use std::fmt;

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

/// What one finished request adds to the shared usage totals (Redis only: the local ledger is
/// the record of a single replica): its UTC day by the ledger line's time, its identity as the
/// ledger names it, and counters by name. A counter is a hash field added when present, so a
/// new one (a cost) needs no change to the store; absent fields read as zero.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct UsageAdd {
    /// Days since 1970-01-01 (UTC) of the ledger line's `ts`.
    pub day: i64,
    /// The ledger's `user`.
    pub user: String,
    /// The ledger's `key`.
    pub key: String,
    /// The ledger's `model`.
    pub model: String,
    /// (counter, amount); zero amounts are left out of the store.
    pub counters: Vec<(String, u64)>,
}

/// The shared usage totals of one day and identity, as the store keeps them: counters by
/// field name (including any a newer version added).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct UsageSum {
    /// Days since 1970-01-01 (UTC).
    pub day: i64,
    /// `[user, key, model]` as the ledger names them.
    pub who: [String; 3],
    /// (field, total).
    pub fields: Vec<(String, u64)>,
}

/// A settled reservation: what to take back or add to its token counters, in the windows it
/// was made in, and whether its request is taken back too (a refusal).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settle<'a> {
    /// The reservation's bucket names.
    pub buckets: &'a [String],
    /// The windows it was counted in.
    pub windows: Windows,
    /// Tokens to add (negative: give back).
    pub delta: i64,
    /// Take back its request from the minute counter.
    pub unrequest: bool,
}

/// The store could not be reached or answered nonsense; the text names no secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreError(pub String);

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
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
