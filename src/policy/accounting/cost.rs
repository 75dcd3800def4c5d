//! What a request cost, in integer micro-units (millionths of the configured currency): pure
//! functions of its token counts and the model's prices (`config::Pricing`, micro-units per 1M
//! tokens). Each term `tokens × price` is summed exactly (u128) and the sum is divided by 1M
//! once, rounded up: a request never costs less than its tokens at its prices, and a request
//! that used priced tokens never costs 0.

use crate::config::{Pricing, Rates};
use crate::money::MICROS;
use crate::stream::usage::Usage;

/// The tokens a request is billed for, each token in exactly one class.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Billable {
    /// Every prompt token: uncached, read from the cache and written to it (the threshold of
    /// `aboveInputTokens` compares this).
    pub prompt: u64,
    /// Prompt tokens read from the cache.
    pub cached: u64,
    /// Prompt tokens written to a 5-minute cache.
    pub cache_write_5m: u64,
    /// Prompt tokens written to a 1-hour cache.
    pub cache_write_1h: u64,
    /// Completion tokens, reasoning included (never added a second time).
    pub completion: u64,
}

impl Billable {
    /// The ledger's usage: OpenAI-shaped, or the Messages API's as the ledger keeps it (every
    /// prompt token in `prompt`, the cache writes, and their 1-hour part, also apart).
    pub fn of(u: &Usage) -> Billable {
        if u.cache_write == 0 {
            return Billable::openai(u);
        }
        let w1h = u.cache_write_1h.min(u.cache_write);
        let input = u
            .prompt
            .saturating_sub(u.cached)
            .saturating_sub(u.cache_write);
        Billable::anthropic(input, u.cached, u.cache_write - w1h, w1h, u.completion)
    }

    /// OpenAI-shaped usage: `prompt_tokens` includes the cached tokens and
    /// `completion_tokens` includes the reasoning tokens.
    pub fn openai(u: &Usage) -> Billable {
        Billable {
            prompt: u.prompt,
            cached: u.cached,
            completion: u.completion,
            ..Billable::default()
        }
    }

    /// Anthropic-shaped usage (the native Messages API): `input_tokens` leaves out cache reads
    /// and writes, which are counted apart.
    pub fn anthropic(
        input: u64,
        cache_read: u64,
        cache_write_5m: u64,
        cache_write_1h: u64,
        output: u64,
    ) -> Billable {
        Billable {
            prompt: input
                .saturating_add(cache_read)
                .saturating_add(cache_write_5m)
                .saturating_add(cache_write_1h),
            cached: cache_read,
            cache_write_5m,
            cache_write_1h,
            completion: output,
        }
    }

    /// `(prompt − cached − writes)·input + cached·cachedInput + writes_5m·cacheWrite +
    /// writes_1h·cacheWrite1h + completion·output`, exact, in micro-units × 1M. The classes
    /// are clamped into the prompt, so an inconsistent report is never billed twice.
    fn exact(&self, r: &Rates) -> u128 {
        let cached = self.cached.min(self.prompt);
        let w5 = self.cache_write_5m.min(self.prompt - cached);
        let w1 = self.cache_write_1h.min(self.prompt - cached - w5);
        let uncached = self.prompt - cached - w5 - w1;
        [
            (uncached, r.input),
            (cached, r.cached_input),
            (w5, r.cache_write),
            (w1, r.cache_write_1h),
            (self.completion, r.output),
        ]
        .iter()
        .map(|(tokens, price)| u128::from(*tokens) * u128::from(*price))
        .sum()
    }
}

/// A request's cost as recorded: the ledger, the access log and the metrics show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Charge {
    /// Micro-units of `currency`.
    pub micros: u64,
    /// The configured currency when it was recorded.
    pub currency: String,
    /// Computed from estimated usage (the backend reported none).
    pub estimated: bool,
}

impl Charge {
    /// What the ledger's `usage` costs at `p`.
    pub fn of(p: &Pricing, usage: &Usage, currency: &str) -> Charge {
        Charge {
            micros: cost(p, &Billable::of(usage)),
            currency: currency.to_string(),
            estimated: usage.estimated,
        }
    }
}

/// The cost of a request in micro-units: the whole request at the rates its prompt length
/// selects (`aboveInputTokens` re-prices every token of a long request), rounded up.
pub fn cost(p: &Pricing, b: &Billable) -> u64 {
    to_micros(b.exact(p.rates_for(b.prompt)))
}

/// The most a request can cost, for a reservation: the prompt estimate at the input price
/// plus `max_tokens` at the output price (no cache discount is assumed).
// For cost budgets (another branch builds on it).
#[allow(dead_code)]
pub fn worst_case(p: &Pricing, prompt_estimate: u64, max_tokens: u64) -> u64 {
    cost(
        p,
        &Billable {
            prompt: prompt_estimate,
            completion: max_tokens,
            ..Billable::default()
        },
    )
}

/// micro-units × 1M to micro-units, rounded up; saturating (a u64 of micro-units is 18
/// trillion units of the currency).
fn to_micros(exact: u128) -> u64 {
    let per = u128::from(MICROS);
    u64::try_from(exact.div_ceil(per)).unwrap_or(u64::MAX)
}

pub use crate::money::{format, parse};

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Tier;

    /// Prices as written in a config, per 1M tokens.
    fn rates(input: f64, output: f64, cached: f64, w5: f64, w1: f64) -> Rates {
        let m = |p: f64| (p * 1e6).round() as u64;
        Rates {
            input: m(input),
            output: m(output),
            cached_input: m(cached),
            cache_write: m(w5),
            cache_write_1h: m(w1),
        }
    }

    fn flat(r: Rates) -> Pricing {
        Pricing {
            base: r,
            above: None,
        }
    }

    #[test]
    fn openai_cached_tokens_are_billed_once_at_the_cache_rate() {
        // gpt-4o: 2.50 in, 10.00 out, 1.25 cached. 1000 prompt of which 400 cached, 200
        // completion of which 150 reasoning:
        // 600·2.50 + 400·1.25 + 200·10.00 = 1500 + 500 + 2000 = 4000 micro-units × 1M / 1M
        // → 0.004000.
        let p = flat(rates(2.5, 10.0, 1.25, 0.0, 0.0));
        let u = Usage {
            prompt: 1000,
            completion: 200,
            cached: 400,
            reasoning: 150,
            ..Usage::default()
        };
        assert_eq!(cost(&p, &Billable::openai(&u)), 4000);
        assert_eq!(format(cost(&p, &Billable::openai(&u))), "0.004000");
    }

    #[test]
    fn anthropic_cache_writes_are_billed_once_each_at_their_rate() {
        // claude-sonnet: 3 in, 15 out, 0.30 read, 3.75 5m write, 6 1h write.
        // 100 input, 2000 read, 1000 5m, 500 1h, 300 output:
        // 100·3 + 2000·0.30 + 1000·3.75 + 500·6 + 300·15 = 300 + 600 + 3750 + 3000 + 4500
        // = 12150 → 0.012150.
        let p = flat(rates(3.0, 15.0, 0.30, 3.75, 6.0));
        let b = Billable::anthropic(100, 2000, 1000, 500, 300);
        assert_eq!(b.prompt, 3600);
        assert_eq!(cost(&p, &b), 12150);
    }

    #[test]
    fn the_ledger_usage_of_a_messages_answer_is_billed_as_anthropic_usage() {
        // What the ledger keeps of input 100, cache read 2000, cache writes 1500 of which 500
        // for an hour, output 300: the same 12150 as the native counts.
        let p = flat(rates(3.0, 15.0, 0.30, 3.75, 6.0));
        let u = Usage {
            prompt: 3600,
            completion: 300,
            cached: 2000,
            cache_write: 1500,
            cache_write_1h: 500,
            ..Usage::default()
        };
        assert_eq!(
            Billable::of(&u),
            Billable::anthropic(100, 2000, 1000, 500, 300)
        );
        assert_eq!(cost(&p, &Billable::of(&u)), 12150);
    }

    #[test]
    fn above_the_threshold_the_whole_request_is_repriced() {
        let p = Pricing {
            base: rates(3.0, 15.0, 0.30, 3.75, 6.0),
            above: Some(Tier {
                threshold: 200_000,
                rates: rates(6.0, 22.5, 0.60, 7.5, 12.0),
            }),
        };
        // At the threshold: base. 200000·3 + 1000·15 = 615000 → 0.615000.
        let at = Billable::anthropic(200_000, 0, 0, 0, 1000);
        assert_eq!(cost(&p, &at), 615_000);
        // One token over: every token at the tier. 200001·6 + 1000·22.5 = 1200006 + 22500.
        let over = Billable::anthropic(200_001, 0, 0, 0, 1000);
        assert_eq!(cost(&p, &over), 1_222_506);
        // Cache reads count toward the threshold and are re-priced too:
        // 100000·6 + 100001·0.60 + 10·22.5 = 600000 + 60000.6 + 225 = 660225.6 → up 660226.
        let cached = Billable::anthropic(100_000, 100_001, 0, 0, 10);
        assert_eq!(cost(&p, &cached), 660_226);
    }

    #[test]
    fn rounding_is_up_once_per_request() {
        // 1 token at 0.15 per 1M is 0.15 micro-units: 1, never 0.
        let p = flat(rates(0.15, 0.6, 0.075, 0.15, 0.15));
        let u = Usage {
            prompt: 1,
            ..Usage::default()
        };
        assert_eq!(cost(&p, &Billable::openai(&u)), 1);
        // 7 prompt (0.15 each = 1.05) + 3 completion (0.6 each = 1.8) = 2.85 → 3, not 2 + 2.
        let u = Usage {
            prompt: 7,
            completion: 3,
            ..Usage::default()
        };
        assert_eq!(cost(&p, &Billable::openai(&u)), 3);
        assert_eq!(cost(&p, &Billable::default()), 0);
    }

    #[test]
    fn inconsistent_counts_are_clamped_into_the_prompt() {
        let p = flat(rates(2.0, 8.0, 1.0, 2.5, 4.0));
        // 50 cached of a 10-token prompt: 10 at the cache rate, none below zero.
        let u = Usage {
            prompt: 10,
            cached: 50,
            ..Usage::default()
        };
        assert_eq!(cost(&p, &Billable::openai(&u)), 10);
        let huge = Billable::anthropic(u64::MAX, u64::MAX, u64::MAX, u64::MAX, u64::MAX);
        assert!(cost(&p, &huge) > 0);
    }

    #[test]
    fn the_worst_case_is_the_prompt_at_input_and_max_tokens_at_output() {
        // 1000·2.50 + 4096·10 = 2500 + 40960 = 43460.
        let p = flat(rates(2.5, 10.0, 1.25, 2.5, 2.5));
        assert_eq!(worst_case(&p, 1000, 4096), 43_460);
        let tiered = Pricing {
            above: Some(Tier {
                threshold: 500,
                rates: rates(5.0, 20.0, 2.5, 5.0, 5.0),
            }),
            ..p
        };
        assert_eq!(worst_case(&tiered, 1000, 4096), 86_920);
    }
}
