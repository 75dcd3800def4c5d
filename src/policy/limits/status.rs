//! What quotas answer: a refusal shaped for a 429 or 503, the budgets that still stand, and
//! OpenAI's `x-ratelimit-*` headers made from them.

use crate::config::Limit;

/// A refusal by a rule, shaped for a 429 with `Retry-After`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denied {
    /// Index of the rule in `"limits"`.
    pub rule: usize,
    /// `requests_per_minute`, `tokens_per_minute`, `tokens_per_day`, `tokens_per_month`,
    /// `concurrent`, `cost_per_day`, `cost_per_week`, `cost_per_month` or `cost_total`.
    pub limit: &'static str,
    /// Seconds until the window resets (1 for `concurrent`); at least 1, except 0 for a
    /// `costTotal` budget, which never resets (no `Retry-After`).
    pub retry_after_secs: u64,
    /// OpenAI error code: `rate_limit_exceeded` or `insufficient_quota`.
    pub code: &'static str,
    /// For the client: the rule and what it limits; never anyone's usage, except what is left
    /// of a cost budget (the budget's spend is what the client is told to plan with).
    pub message: String,
    /// The windowed budgets as the store judged the request (nothing of it added), for the
    /// 429's `x-ratelimit-*` headers without reading them again; `None` when the store was not
    /// asked (a `concurrent` refusal).
    pub status: Option<Vec<RuleStatus>>,
}

/// Why `reserve` did not admit a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// A rule's limit would be exceeded: answer 429.
    Limited(Denied),
    /// A rule with a cost budget matches and the request's cost cannot be computed (its model
    /// has a backend without a price): answer 403, since it would be unlimited spend.
    Unpriced {
        /// For the client: the rule and the model.
        message: String,
    },
    /// The limits store is unreachable and `limitsStoreFailure` is `closed`: answer 503.
    Unavailable {
        /// Seconds before trying again is worthwhile.
        retry_after_secs: u64,
    },
    /// The local store already tracks `limitsMaxTracked` identities in open windows and this
    /// request is from a new one: answer 503 (whatever `limitsStoreFailure` says, since admitting
    /// it uncounted is what someone minting identities wants).
    Full {
        /// The cap.
        max: usize,
        /// Seconds until the first tracked identity's windows end.
        retry_after_secs: u64,
    },
}

/// One limit of a rule as it stands now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    /// Which kind of limit.
    pub kind: Limit,
    /// The configured limit (micro-units for a cost budget).
    pub limit: u64,
    /// What is used (settled and reserved) in the current window.
    pub spent: u64,
    /// What is left in the current window.
    pub remaining: u64,
    /// Seconds until the window resets; `None` for `costTotal`, which never does.
    pub reset_secs: Option<u64>,
}

/// The windowed budgets of one matching rule (`concurrent` is not a budget and is left out).
/// A rule's budgets are in `RequestsPerMinute` .. `CostTotal` order, only those it sets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleStatus {
    /// Index of the rule in `"limits"`.
    pub rule: usize,
    /// Its budgets, in `requestsPerMinute`, `tokensPerMinute`, `tokensPerDay`,
    /// `tokensPerMonth` order, only those the rule sets.
    pub budgets: Vec<Budget>,
}

/// OpenAI's `x-ratelimit-*` headers from the most restrictive budget of each kind: the one
/// with the least remaining (on a tie, the one that resets last). Token budgets of every window
/// compete, since a day budget can bind before a minute one.
pub fn ratelimit_headers(statuses: &[RuleStatus]) -> Vec<(&'static str, String)> {
    // Money has no OpenAI header: cost budgets are in `/usage` and the 429's message.
    let pick = |tokens: bool| {
        statuses
            .iter()
            .flat_map(|s| s.budgets.iter())
            .filter(|b| !b.kind.is_cost() && (b.kind != Limit::RequestsPerMinute) == tokens)
            .min_by_key(|b| (b.remaining, std::cmp::Reverse(b.reset_secs)))
    };
    let mut out = Vec::with_capacity(6);
    if let Some(b) = pick(false) {
        out.push(("x-ratelimit-limit-requests", number(b.limit)));
        out.push(("x-ratelimit-remaining-requests", number(b.remaining)));
        out.push((
            "x-ratelimit-reset-requests",
            format_reset(b.reset_secs.unwrap_or(0)),
        ));
    }
    if let Some(b) = pick(true) {
        out.push(("x-ratelimit-limit-tokens", number(b.limit)));
        out.push(("x-ratelimit-remaining-tokens", number(b.remaining)));
        out.push((
            "x-ratelimit-reset-tokens",
            format_reset(b.reset_secs.unwrap_or(0)),
        ));
    }
    out
}

/// A duration the way OpenAI's reset headers write it: `1s`, `6m0s`, `23h59m59s`.
/// Written by hand: two of these go with every answer under a quota rule.
pub fn format_reset(secs: u64) -> String {
    let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
    let mut out = String::with_capacity(24);
    if h > 0 {
        push_decimal(&mut out, h);
        out.push('h');
    }
    if h > 0 || m > 0 {
        push_decimal(&mut out, m);
        out.push('m');
    }
    push_decimal(&mut out, s);
    out.push('s');
    out
}

/// `v` as `to_string` writes it, without the formatting machinery.
fn number(v: u64) -> String {
    let mut out = String::with_capacity(20);
    push_decimal(&mut out, v);
    out
}

fn push_decimal(out: &mut String, v: u64) {
    out.push_str(crate::decimal::digits(v, &mut [0u8; 20]));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resets_and_numbers_read_as_format_wrote_them() {
        let reference = |secs: u64| {
            let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
            if h > 0 {
                format!("{}h{}m{}s", h, m, s)
            } else if m > 0 {
                format!("{}m{}s", m, s)
            } else {
                format!("{}s", s)
            }
        };
        for secs in [
            0,
            1,
            59,
            60,
            61,
            3599,
            3600,
            3601,
            86_399,
            2_678_400,
            u64::MAX,
        ] {
            assert_eq!(format_reset(secs), reference(secs));
        }
        for v in [0, 9, 10, 1_000_000_000_000_000, u64::MAX] {
            assert_eq!(number(v), v.to_string());
        }
    }
}
