//! Limits: the quota rules applied to counters per user, key and model (`quota`), kept over
//! fixed UTC windows (`windows`) in a store, in this process or in Redis behind a breaker
//! (`store`, `redis_store`, `breaker`, `counts`), and checked at start (`preflight`).

pub mod breaker;
pub mod counts;
pub mod preflight;
pub mod quota;
pub mod redis_store;
pub mod reservation;
pub mod status;
pub mod store;
pub mod windows;

use crate::clock;
use crate::config::Subject;
use crate::policy::accounting::ledger::{Entry, Ledger};
use quota::{Charge, Quotas};
use std::collections::HashMap;
use std::fmt::Write as _;
use windows::Windows;

/// Rebuilds the local quota counters from the ledger lines of every window still open (this
/// month's and this week's, or every line when a rule has a `costTotal`, a budget that never
/// resets); returns the lines counted and skipped. Lines are summed first by subject and by which
/// of now's windows they fall in, then recorded once per sum: memory by subjects, not lines,
/// and one rule lookup per sum rather than per line.
pub fn seed_quotas(
    ledger: &Ledger,
    quotas: &Quotas,
    now: u64,
    cost_of: impl Fn(&Entry) -> u64,
) -> Result<(u64, usize), String> {
    let since = (!quotas.has_total()).then(|| oldest_open_day(now));
    let w = Windows::at(now);
    // (user, key, model, same minute, same day, same week, same month)
    //   → (tokens, cost, a line's time, lines)
    type Cell = (String, String, String, [bool; 4]);
    let mut sums: HashMap<Cell, (u64, u64, u64, u64)> = HashMap::new();
    let mut read = 0u64;
    let skipped = crate::policy::accounting::ledger::scan(ledger.sources()?, since, None, |e| {
        read += 1;
        // A refusal never counted against a limit.
        if e.outcome == crate::policy::accounting::REFUSED {
            return;
        }
        let Some(ts) = clock::parse_rfc3339_secs(&e.ts) else {
            return;
        };
        let ts = ts as u64;
        let at = Windows::at(ts);
        let same = [
            at.minute == w.minute,
            at.day == w.day,
            at.week == w.week,
            at.month == w.month,
        ];
        let tokens = e.usage.prompt.saturating_add(e.usage.completion);
        let cost = cost_of(&e);
        let sum = sums
            .entry((e.user, e.key, e.model, same))
            .or_insert((0, 0, ts, 0));
        sum.0 = sum.0.saturating_add(tokens);
        sum.1 = sum.1.saturating_add(cost);
        sum.3 += 1;
    })?;
    for ((user, key, model, same), (tokens, cost, ts, lines)) in sums {
        let s = subject(&user, &key, &model);
        quotas.record_past(&s, Charge { tokens, cost }, ts, now);
        // Requests are counted per minute only: each line of this minute is one.
        if same[0] {
            for _ in 1..lines {
                quotas.record_past(&s, 0, ts, now);
            }
        }
    }
    Ok((read, skipped))
}

/// The first day of the oldest window still open at `now` other than the total: the month's
/// first, or the week's Monday when the week began last month.
pub fn oldest_open_day(now: u64) -> i64 {
    let (y, m, _) = clock::civil_from_days((now / 86_400) as i64);
    let month = clock::days_from_civil(y, m, 1);
    let monday = (windows::window_end(windows::Span::Week, now) / 86_400) as i64 - 7;
    month.min(monday)
}

/// The quota subject of a request.
pub fn subject<'a>(user: &'a str, key: &'a str, model: &'a str) -> Subject<'a> {
    Subject { user, key, model }
}

/// Lines for /metrics: the local store's tracked identities and the store's failures.
pub fn metrics_text(quotas: &Quotas, out: &mut String) {
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
}
