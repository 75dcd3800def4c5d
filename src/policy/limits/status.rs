//! What quotas answer: a refusal shaped for a 429 or 503, the budgets that still stand, and
//! OpenAI's `x-ratelimit-*` headers made from them.

use crate::config::{Limit, WINDOWED};
use crate::policy::limits::counts::{Counts, N, SPANS};
use crate::policy::limits::windows::{reset_secs, Span};
use std::sync::Arc;

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
    ratelimits(statuses).to_vec()
}

/// The same headers held inline (`RateLimits`).
pub fn ratelimits(statuses: &[RuleStatus]) -> RateLimits {
    ratelimits_of(statuses.iter().flat_map(|s| s.budgets.iter().copied()))
}

/// The headers from budgets in rule order, each rule's in `WINDOWED` order.
fn ratelimits_of(budgets: impl Iterator<Item = Budget>) -> RateLimits {
    // The first of the least (remaining, then latest reset) of each kind, in one pass.
    let key = |b: &Budget| (b.remaining, std::cmp::Reverse(b.reset_secs));
    let (mut requests, mut tokens): (Option<Budget>, Option<Budget>) = (None, None);
    // Money has no OpenAI header: cost budgets are in `/usage` and the 429's message.
    for b in budgets.filter(|b| !b.kind.is_cost()) {
        let least = if b.kind == Limit::RequestsPerMinute {
            &mut requests
        } else {
            &mut tokens
        };
        if least.is_none_or(|l| key(&b) < key(&l)) {
            *least = Some(b);
        }
    }
    let mut out = RateLimits::default();
    if let Some(b) = requests {
        out.push("x-ratelimit-limit-requests", Value::number(b.limit));
        out.push("x-ratelimit-remaining-requests", Value::number(b.remaining));
        out.push(
            "x-ratelimit-reset-requests",
            Value::reset(b.reset_secs.unwrap_or(0)),
        );
    }
    if let Some(b) = tokens {
        out.push("x-ratelimit-limit-tokens", Value::number(b.limit));
        out.push("x-ratelimit-remaining-tokens", Value::number(b.remaining));
        out.push(
            "x-ratelimit-reset-tokens",
            Value::reset(b.reset_secs.unwrap_or(0)),
        );
    }
    out
}

/// The windowed limits of one rule that matches a subject, and which of the subject's asked
/// buckets counts it: made once per plan, not per request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleLimits {
    /// Index of the rule in `"limits"`.
    pub rule: usize,
    /// Its bucket's place among the asked ones (the store's counts are in that order).
    pub ask: usize,
    /// Its limits, in `WINDOWED` order.
    pub windowed: [Option<u64>; N],
}

/// Where the rules that counted a request stand: their limits and the counts of their buckets,
/// read only when asked (for the answer's `x-ratelimit-*` headers, inline; as `RuleStatus`es
/// for a 429 or a test), not built into lists per request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Standing {
    /// The windowed rules that matched, in rule order.
    pub rules: Arc<[RuleLimits]>,
    /// Each asked bucket's counts.
    pub counts: Vec<Counts>,
    /// The clock the windows were read at.
    pub now: u64,
}

impl Standing {
    /// Each rule's budgets, in rule order and each rule's in `WINDOWED` order.
    fn budgets(&self) -> impl Iterator<Item = (usize, Budget)> + '_ {
        self.rules.iter().flat_map(move |r| {
            let used = self.counts.get(r.ask).copied().unwrap_or_default();
            (0..N).filter_map(move |i| {
                r.windowed[i].map(|limit| {
                    (
                        r.rule,
                        Budget {
                            kind: WINDOWED[i],
                            limit,
                            spent: used[i],
                            remaining: limit.saturating_sub(used[i]),
                            reset_secs: (SPANS[i] != Span::Total)
                                .then(|| reset_secs(SPANS[i], self.now)),
                        },
                    )
                })
            })
        })
    }

    /// The budgets by rule (rules without a windowed limit left out).
    pub fn statuses(&self) -> Vec<RuleStatus> {
        let mut out: Vec<RuleStatus> = Vec::new();
        for (rule, b) in self.budgets() {
            match out.last_mut() {
                Some(last) if last.rule == rule => last.budgets.push(b),
                _ => out.push(RuleStatus {
                    rule,
                    budgets: vec![b],
                }),
            }
        }
        out
    }

    /// The `x-ratelimit-*` headers, as `ratelimits(&self.statuses())` makes them.
    pub fn ratelimits(&self) -> RateLimits {
        ratelimits_of(self.budgets().map(|(_, b)| b))
    }
}

/// The `x-ratelimit-*` headers of one answer (at most six), their values held inline: the
/// answer's head is written from them as they are, with no `String` per value or per copy.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RateLimits {
    items: [(&'static str, Value); 6],
    len: usize,
}

impl RateLimits {
    fn push(&mut self, name: &'static str, value: Value) {
        if let Some(slot) = self.items.get_mut(self.len) {
            *slot = (name, value);
            self.len += 1;
        }
    }

    /// The headers, in the order they are sent.
    pub fn iter(&self) -> impl Iterator<Item = (&'static str, &str)> + '_ {
        self.items[..self.len].iter().map(|(n, v)| (*n, v.as_str()))
    }

    /// The headers' names, in the order they are sent.
    pub fn names(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.items[..self.len].iter().map(|(n, _)| *n)
    }

    /// True when `name` is one of these headers', ignoring case. Every name starts with
    /// `x-ratelimit-`: a backend's other headers are told apart by that alone.
    pub fn has_name(&self, name: &str) -> bool {
        const PREFIX: &str = "x-ratelimit-";
        name.get(..PREFIX.len())
            .is_some_and(|p| p.eq_ignore_ascii_case(PREFIX))
            && self.names().any(|n| n.eq_ignore_ascii_case(name))
    }

    /// True when no rule set a budget these headers report.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The headers as owned pairs (a refusal's error carries them so).
    pub fn to_vec(&self) -> Vec<(&'static str, String)> {
        self.iter().map(|(n, v)| (n, v.to_string())).collect()
    }
}

/// One header value: a decimal or a reset duration, at most 23 ASCII bytes (`u64::MAX` seconds
/// is `5124095576030431h0m15s`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Value {
    buf: [u8; 24],
    len: u8,
}

impl Value {
    /// `v` as `to_string` writes it.
    fn number(v: u64) -> Value {
        let mut out = Value::default();
        out.push_decimal(v);
        out
    }

    /// A duration the way OpenAI's reset headers write it: `1s`, `6m0s`, `23h59m59s`.
    fn reset(secs: u64) -> Value {
        let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
        let mut out = Value::default();
        if h > 0 {
            out.push_decimal(h);
            out.push(b"h");
        }
        if h > 0 || m > 0 {
            out.push_decimal(m);
            out.push(b"m");
        }
        out.push_decimal(s);
        out.push(b"s");
        out
    }

    fn push_decimal(&mut self, v: u64) {
        self.push(crate::decimal::bytes(v, &mut [0u8; 20]));
    }

    fn push(&mut self, bytes: &[u8]) {
        let at = usize::from(self.len);
        // Never past the buffer: the longest value is 23 bytes (see the type's comment).
        if let Some(dst) = self.buf.get_mut(at..at + bytes.len()) {
            dst.copy_from_slice(bytes);
            self.len += bytes.len() as u8;
        }
    }

    fn as_str(&self) -> &str {
        // ASCII digits and unit letters only: never the default.
        std::str::from_utf8(&self.buf[..usize::from(self.len)]).unwrap_or_default()
    }
}

/// A duration the way OpenAI's reset headers write it: `1s`, `6m0s`, `23h59m59s`.
pub fn format_reset(secs: u64) -> String {
    Value::reset(secs).as_str().to_string()
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
            assert_eq!(Value::number(v).as_str(), v.to_string());
        }
    }

    #[test]
    fn inline_headers_are_the_owned_ones_in_order() {
        let budget = |kind, limit, remaining, reset_secs| Budget {
            kind,
            limit,
            spent: limit - remaining,
            remaining,
            reset_secs,
        };
        let statuses = [
            RuleStatus {
                rule: 0,
                budgets: vec![
                    budget(Limit::RequestsPerMinute, u64::MAX, u64::MAX - 1, Some(59)),
                    budget(Limit::TokensPerMinute, 1000, 10, Some(59)),
                ],
            },
            RuleStatus {
                rule: 1,
                budgets: vec![budget(Limit::TokensPerDay, 5000, 10, Some(u64::MAX))],
            },
        ];
        let h = ratelimits(&statuses);
        let pairs: Vec<(&str, &str)> = h.iter().collect();
        assert_eq!(
            pairs,
            [
                ("x-ratelimit-limit-requests", "18446744073709551615"),
                ("x-ratelimit-remaining-requests", "18446744073709551614"),
                ("x-ratelimit-reset-requests", "59s"),
                ("x-ratelimit-limit-tokens", "5000"),
                ("x-ratelimit-remaining-tokens", "10"),
                ("x-ratelimit-reset-tokens", "5124095576030431h0m15s"),
            ]
        );
        assert_eq!(
            h.to_vec(),
            pairs
                .iter()
                .map(|(n, v)| (*n, v.to_string()))
                .collect::<Vec<_>>()
        );
        assert!(h.names().eq(pairs.iter().map(|(n, _)| *n)));
        for (n, _) in &pairs {
            assert!(h.has_name(n) && h.has_name(&n.to_ascii_uppercase()));
        }
        for other in [
            "x-ratelimit-",
            "x-ratelimit-limit",
            "content-type",
            "x-ratelimit-reset-tokenz",
            "é",
        ] {
            assert!(!h.has_name(other), "{}", other);
        }
        let requests_only = ratelimits(&statuses[..1]);
        assert!(!ratelimits(&[]).has_name("x-ratelimit-limit-requests"));
        assert!(requests_only.has_name("X-RateLimit-Limit-Requests"));
        let none = ratelimits(&[]);
        assert!(none.is_empty() && none.iter().next().is_none());
    }
}
