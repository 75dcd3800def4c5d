//! What a limits store is asked and answers, shared by the local and the Redis store: a bucket's
//! eight counters (in the order of `rules::WINDOWED`: requests this minute, tokens this minute,
//! tokens today, tokens this month, then cost today, this week, this month and in total, in
//! micro-units), the asks, the outcomes and the error.

use crate::policy::limits::windows::{Span, Windows};
use std::fmt;

/// Counters per bucket.
pub const N: usize = 8;

/// The counters of one bucket, in `rules::WINDOWED` order.
pub type Counts = [u64; N];

/// The window each counter is kept over.
pub const SPANS: [Span; N] = [
    Span::Minute,
    Span::Minute,
    Span::Day,
    Span::Month,
    Span::Day,
    Span::Week,
    Span::Month,
    Span::Total,
];

/// One bucket to check and, if every bucket fits, add to; `limits` are the smallest of the
/// rules that share the bucket (`None`: unlimited).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ask<'a> {
    /// The bucket name from `Rule::bucket` (borrowed: the reservation keeps the names).
    pub bucket: &'a str,
    /// Per counter, the limit the bucket must stay within.
    pub limits: [Option<u64>; N],
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
    pub counters: Vec<(std::borrow::Cow<'static, str>, u64)>,
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
    /// Tokens and cost to add (negative: give back).
    pub delta: Delta,
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

/// What one request, its tokens and its cost (micro-units) are, counted: what a store adds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Charge {
    /// Prompt plus completion tokens.
    pub tokens: u64,
    /// Micro-units of the currency.
    pub cost: u64,
}

/// Tokens only, at no cost.
impl From<u64> for Charge {
    fn from(tokens: u64) -> Charge {
        Charge { tokens, cost: 0 }
    }
}

/// What one request adds to each counter.
pub fn increments(c: Charge) -> Counts {
    let (t, m) = (c.tokens, c.cost);
    [1, t, t, t, m, m, m, m]
}

/// Whether one more request with this charge fits within `limits` on top of `used`. A request
/// that costs nothing (a model priced 0) passes the cost limits even of an overspent budget.
pub fn fits(used: &Counts, limits: &[Option<u64>; N], c: Charge) -> bool {
    let add = increments(c);
    (0..N).all(|i| {
        limits[i].is_none_or(|l| used[i].saturating_add(add[i]) <= l || (i >= 4 && add[i] == 0))
    })
}

/// A correction to a reservation's tokens and cost (negative: given back).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Delta {
    /// Tokens.
    pub tokens: i64,
    /// Micro-units.
    pub cost: i64,
}

/// Tokens only.
impl From<i64> for Delta {
    fn from(tokens: i64) -> Delta {
        Delta { tokens, cost: 0 }
    }
}

impl Delta {
    /// From what was reserved to what was used.
    pub fn between(reserved: Charge, used: Charge) -> Delta {
        let signed = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        Delta {
            tokens: signed(used.tokens).saturating_sub(signed(reserved.tokens)),
            cost: signed(used.cost).saturating_sub(signed(reserved.cost)),
        }
    }

    /// True when nothing changes.
    pub fn is_zero(&self) -> bool {
        self.tokens == 0 && self.cost == 0
    }

    /// The change of counter `i` (the request counter never changes).
    pub fn of(&self, i: usize) -> i64 {
        match i {
            0 => 0,
            1..=3 => self.tokens,
            _ => self.cost,
        }
    }
}
