//! Prices per 1M tokens: `pricing` on an endpoint or a backend entry, top-level defaults by
//! model glob, the top-level `currency`, and a LiteLLM-format `pricesFile`. Every price is
//! checked at load and kept as integer micro-units (millionths of the currency unit) per 1M
//! tokens, so costs are computed and summed without floats.

use super::json::{check_fields, shown, type_name, FieldError};
use serde_json::{Map, Value};
use std::collections::HashMap;
use std::sync::Arc;

/// The highest price per 1M tokens accepted without `"allowHighPrices": true`: above it is
/// almost always a price per token entered where a price per 1M tokens belongs.
pub const HIGH_PRICE: f64 = 1000.0;
/// The highest price per 1M tokens accepted at all, so that a cost always fits in a u64.
const MAX_PRICE: f64 = 1_000_000.0;

/// One set of prices, in micro-units per 1M tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rates {
    /// Prompt tokens neither read from nor written to a cache.
    pub input: u64,
    /// Completion tokens (reasoning included).
    pub output: u64,
    /// Prompt tokens read from the cache (`cachedInput`, default `input`).
    pub cached_input: u64,
    /// Prompt tokens written to a 5-minute cache (`cacheWrite`, default `input`).
    pub cache_write: u64,
    /// Prompt tokens written to a 1-hour cache (`cacheWrite1h`, default `cacheWrite`).
    pub cache_write_1h: u64,
}

/// A model's prices: the base rates, and the rates of the whole request when its prompt is
/// longer than a threshold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pricing {
    /// Rates of a request whose prompt is at most the threshold (or of every request).
    pub base: Rates,
    /// `aboveInputTokens`: a prompt of more than `threshold` tokens is priced at these rates.
    pub above: Option<Tier>,
}

/// `aboveInputTokens`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tier {
    /// Prompt tokens (cached and cache writes included) above which `rates` apply.
    pub threshold: u64,
    /// The rates of the whole request past the threshold.
    pub rates: Rates,
}

impl Pricing {
    /// The rates a request with this many prompt tokens is billed at.
    pub fn rates_for(&self, prompt: u64) -> &Rates {
        match &self.above {
            Some(t) if prompt > t.threshold => &t.rates,
            _ => &self.base,
        }
    }
}

/// Every price setting of the file but the inline ones, which live on each backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prices {
    /// `currency` (default `USD`): the unit of every price, cost and budget.
    pub currency: String,
    /// Top-level `pricing`: model glob -> prices, matched against a backend's actual model
    /// name, first match in file order.
    pub defaults: Vec<(String, Pricing)>,
    /// `pricesFile`, read at load.
    pub file: Option<Arc<PriceFile>>,
}

impl Default for Prices {
    fn default() -> Prices {
        Prices {
            currency: "USD".to_string(),
            defaults: Vec::new(),
            file: None,
        }
    }
}

impl Prices {
    /// The prices of a request to `model` (the backend's actual model name) on a backend with
    /// `inline` prices: inline prices, else the first matching top-level glob, else the price
    /// file's entry for exactly that name; `None` is unpriced (never free).
    pub fn lookup<'a>(&'a self, inline: Option<&'a Pricing>, model: &str) -> Option<&'a Pricing> {
        inline
            .or_else(|| {
                self.defaults
                    .iter()
                    .find(|(glob, _)| crate::glob::matches(glob, model))
                    .map(|(_, p)| p)
            })
            .or_else(|| {
                self.file
                    .as_ref()
                    .and_then(|f| f.entries.get(model))
                    .and_then(|e| e.as_ref().ok())
            })
    }

    /// True without top-level prices and without a price file (inline prices are on the
    /// backends).
    pub fn is_empty(&self) -> bool {
        self.defaults.is_empty() && self.file.is_none()
    }
}

/// A price file in LiteLLM's `model_prices_and_context_window.json` format: model name ->
/// prices per token. An entry with a bad price is kept as its error, reported at load when a
/// configured backend uses it, and unpriced for a model only a wildcard serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PriceFile {
    /// The path as configured (resolved against the config file's folder).
    pub path: String,
    entries: HashMap<String, Result<Pricing, String>>,
}

impl PriceFile {
    /// The entry for exactly `model`: `None` when the file has no usable price for it.
    pub fn entry(&self, model: &str) -> Option<&Result<Pricing, String>> {
        self.entries.get(model)
    }

    /// Entries with token prices (bad ones included).
    pub fn len(&self) -> usize {
        self.entries.len()
    }
}

/// Top-level `currency`: a code of 3 capital letters such as `USD` or `EUR`.
pub(super) fn parse_currency(v: Option<&Value>) -> Result<String, FieldError> {
    match v {
        None | Some(Value::Null) => Ok("USD".to_string()),
        Some(Value::String(s)) if s.len() == 3 && s.bytes().all(|b| b.is_ascii_uppercase()) => {
            Ok(s.clone())
        }
        Some(v) => Err(FieldError::new(
            "currency",
            format!(
                "expected a currency code of 3 capital letters such as \"USD\" or \"EUR\", got {}",
                shown(v)
            ),
        )),
    }
}

/// Every field of a `pricing` object.
const PRICING_FIELDS: &[&str] = &[
    "input",
    "output",
    "cachedInput",
    "cacheWrite",
    "cacheWrite1h",
    "aboveInputTokens",
    "allowHighPrices",
];
/// Every field of `aboveInputTokens`.
const TIER_FIELDS: &[&str] = &[
    "threshold",
    "input",
    "output",
    "cachedInput",
    "cacheWrite",
    "cacheWrite1h",
];

/// A `pricing` object of an endpoint or backend entry (`None` when absent or null), located
/// from the object holding it.
pub(super) fn parse_inline(
    obj: &Map<String, Value>,
    currency: &str,
) -> Result<Option<Pricing>, FieldError> {
    match obj.get("pricing") {
        None | Some(Value::Null) => Ok(None),
        Some(v) => parse_pricing(v, currency)
            .map(Some)
            .map_err(|e| e.within("pricing")),
    }
}

/// One pricing object, located from itself.
fn parse_pricing(v: &Value, currency: &str) -> Result<Pricing, FieldError> {
    let obj = v.as_object().ok_or_else(|| {
        FieldError::new(
            "",
            format!(
                "expected an object of prices per 1M tokens like {{\"input\": 2.5, \"output\": 10}}, got {}",
                type_name(v)
            ),
        )
    })?;
    check_fields(obj, PRICING_FIELDS)?;
    let allow_high = match obj.get("allowHighPrices") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(v) => {
            return Err(FieldError::new(
                "allowHighPrices",
                format!("expected true or false, got {}", type_name(v)),
            ))
        }
    };
    let unit = Unit {
        currency,
        allow_high,
    };
    let base = parse_rates(obj, &unit)?;
    let above = match obj.get("aboveInputTokens") {
        None | Some(Value::Null) => None,
        Some(v) => Some(parse_tier(v, &unit).map_err(|e| e.within("aboveInputTokens"))?),
    };
    Ok(Pricing { base, above })
}

/// How a price is read: its currency (for messages) and whether a high price is allowed.
struct Unit<'a> {
    currency: &'a str,
    allow_high: bool,
}

fn parse_tier(v: &Value, unit: &Unit) -> Result<Tier, FieldError> {
    let obj = v.as_object().ok_or_else(|| {
        FieldError::new(
            "",
            format!(
                "expected an object like {{\"threshold\": 200000, \"input\": 5, \"output\": 20}}, got {}",
                type_name(v)
            ),
        )
    })?;
    check_fields(obj, TIER_FIELDS)?;
    let threshold =
        match obj.get("threshold") {
            Some(v) => v.as_u64().filter(|n| *n >= 1).ok_or_else(|| {
                FieldError::new(
                    "threshold",
                    format!(
                        "expected a whole number of prompt tokens, at least 1, got {}",
                        shown(v)
                    ),
                )
            })?,
            None => return Err(FieldError::new(
                "threshold",
                "missing: expected the prompt tokens above which these prices apply, e.g. 200000",
            )),
        };
    Ok(Tier {
        threshold,
        rates: parse_rates(obj, unit)?,
    })
}

/// `input` and `output` (required) and the cache prices (defaulting as `Rates` says).
fn parse_rates(obj: &Map<String, Value>, unit: &Unit) -> Result<Rates, FieldError> {
    let price = |name: &str| -> Result<Option<u64>, FieldError> {
        obj.get(name)
            .map(|v| per_million(v, unit).map_err(|m| FieldError::new(name, m)))
            .transpose()
    };
    let required = |name: &str| -> Result<u64, FieldError> {
        price(name)?.ok_or_else(|| {
            FieldError::new(
                name,
                format!(
                    "missing: expected a price in {} per 1M tokens",
                    unit.currency
                ),
            )
        })
    };
    let input = required("input")?;
    let output = required("output")?;
    let cache_write = price("cacheWrite")?.unwrap_or(input);
    Ok(Rates {
        input,
        output,
        cached_input: price("cachedInput")?.unwrap_or(input),
        cache_write,
        cache_write_1h: price("cacheWrite1h")?.unwrap_or(cache_write),
    })
}

/// A price per 1M tokens as micro-units per 1M tokens.
fn per_million(v: &Value, unit: &Unit) -> Result<u64, String> {
    let upper = if unit.allow_high {
        MAX_PRICE
    } else {
        HIGH_PRICE
    };
    match v.as_f64() {
        Some(p) if p.is_finite() && (0.0..=upper).contains(&p) => Ok((p * 1e6).round() as u64),
        Some(p) if p > HIGH_PRICE && p <= MAX_PRICE => Err(format!(
            "{} per 1M tokens is above the sanity bound of {} (a price per token where a price per 1M tokens belongs?); expected a number from 0 to {}, or \"allowHighPrices\": true for a real outlier",
            shown(v), HIGH_PRICE, HIGH_PRICE
        )),
        _ => Err(format!(
            "expected a number of {} per 1M tokens from 0 to {}, got {}",
            unit.currency,
            upper,
            shown(v)
        )),
    }
}

/// Top-level `pricing`: `{"<model glob>": {<pricing>}, ...}`, in file order.
pub(super) fn parse_defaults(
    v: Option<&Value>,
    currency: &str,
) -> Result<Vec<(String, Pricing)>, FieldError> {
    let map = match v {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Object(m)) => m,
        Some(v) => {
            return Err(FieldError::new(
                "pricing",
                format!(
                    "expected an object of model glob -> prices, like {{\"gpt-4o*\": {{\"input\": 2.5, \"output\": 10}}}}, got {}",
                    type_name(v)
                ),
            ))
        }
    };
    map.iter()
        .map(|(glob, value)| {
            if value.is_number() && PRICING_FIELDS.contains(&glob.as_str()) {
                return Err(FieldError::new(
                    format!("pricing.{}", glob),
                    "the top-level \"pricing\" maps model globs to prices, like {\"gpt-4o*\": {\"input\": 2.5, \"output\": 10}}; prices of one model go in its endpoint's \"pricing\"",
                ));
            }
            let p = parse_pricing(value, currency)
                .map_err(|e| e.within(&format!("pricing.{}", glob)))?;
            Ok((glob.clone(), p))
        })
        .collect()
}

/// `pricesFile`: reads and parses the file, resolved against the config file's folder.
pub(super) fn parse_prices_file(
    v: Option<&Value>,
    config_file: &str,
) -> Result<Option<PriceFile>, FieldError> {
    let path = match v {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::String(s)) if !s.is_empty() => super::beside(config_file, s),
        Some(v) => {
            return Err(FieldError::new(
                "pricesFile",
                format!(
                    "expected a file path such as \"model_prices_and_context_window.json\", got {}",
                    shown(v)
                ),
            ))
        }
    };
    let shown_path = path.display().to_string();
    let fail = |m: String| FieldError::new("pricesFile", format!("{}: {}", shown_path, m));
    let text =
        std::fs::read_to_string(&path).map_err(|e| fail(format!("cannot read file: {}", e)))?;
    let root: Value =
        serde_json::from_str(&text).map_err(|e| fail(format!("invalid JSON: {}", e)))?;
    let map = root.as_object().ok_or_else(|| {
        fail("expected a JSON object of model name -> prices (LiteLLM's model_prices_and_context_window.json format)".to_string())
    })?;
    let entries = map
        .iter()
        .filter_map(|(model, v)| Some((model.clone(), litellm_entry(model, v.as_object()?)?)))
        .collect();
    Ok(Some(PriceFile {
        path: shown_path,
        entries,
    }))
}

/// One LiteLLM entry (prices per token): `None` when it has no `input_cost_per_token` (not a
/// token-priced model); an error names the entry and the field.
fn litellm_entry(model: &str, obj: &Map<String, Value>) -> Option<Result<Pricing, String>> {
    obj.get("input_cost_per_token")?;
    Some(read_litellm(obj).map_err(|(field, v)| {
        format!(
            "\"{}\".{}: expected a number of currency units per token, at least 0, got {}",
            model,
            field,
            shown(v)
        )
    }))
}

fn read_litellm(obj: &Map<String, Value>) -> Result<Pricing, (String, &Value)> {
    let price = |field: &str| -> Result<Option<u64>, (String, &Value)> {
        match obj.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => match v.as_f64() {
                Some(p) if p.is_finite() && p >= 0.0 && p * 1e6 <= MAX_PRICE => {
                    Ok(Some((p * 1e12).round() as u64))
                }
                _ => Err((field.to_string(), v)),
            },
        }
    };
    // A tier's missing price is the base price, as LiteLLM reads its file.
    let rates = |suffix: &str, base: Option<&Rates>| -> Result<Option<Rates>, (String, &Value)> {
        let Some(input) = price(&format!("input_cost_per_token{}", suffix))? else {
            return Ok(None);
        };
        let or_base =
            |p: Option<u64>, pick: fn(&Rates) -> u64, own: u64| p.or(base.map(pick)).unwrap_or(own);
        let output = or_base(
            price(&format!("output_cost_per_token{}", suffix))?,
            |r| r.output,
            0,
        );
        let cached_input = or_base(
            price(&format!("cache_read_input_token_cost{}", suffix))?,
            |r| r.cached_input,
            input,
        );
        let cache_write = or_base(
            price(&format!("cache_creation_input_token_cost{}", suffix))?,
            |r| r.cache_write,
            input,
        );
        let cache_write_1h = match base {
            None => price("cache_creation_input_token_cost_above_1hr")?.unwrap_or(cache_write),
            Some(b) => b.cache_write_1h,
        };
        Ok(Some(Rates {
            input,
            output,
            cached_input,
            cache_write,
            cache_write_1h,
        }))
    };
    let base =
        rates("", None)?.ok_or_else(|| ("input_cost_per_token".to_string(), &Value::Null))?;
    // `input_cost_per_token_above_200k_tokens` (LiteLLM also has 128k tiers): the lowest
    // threshold the entry prices.
    let mut above: Option<Tier> = None;
    for key in obj.keys() {
        let Some(k) = key
            .strip_prefix("input_cost_per_token_above_")
            .and_then(|r| r.strip_suffix("k_tokens"))
            .and_then(|n| n.parse::<u64>().ok())
        else {
            continue;
        };
        if let Some(rates) = rates(&format!("_above_{}k_tokens", k), Some(&base))? {
            if above.is_none_or(|a| k * 1000 < a.threshold) {
                above = Some(Tier {
                    threshold: k * 1000,
                    rates,
                });
            }
        }
    }
    Ok(Pricing { base, above })
}

#[cfg(test)]
mod tests {
    use super::super::{parse, Defaults};
    use super::*;

    fn load(text: &str) -> Result<super::super::Config, String> {
        parse("c.json", text, &Defaults::default(), &|_| None).map_err(|e| e.to_string())
    }

    fn rates(input: u64, output: u64, cached: u64, w5: u64, w1: u64) -> Rates {
        Rates {
            input,
            output,
            cached_input: cached,
            cache_write: w5,
            cache_write_1h: w1,
        }
    }

    #[test]
    fn inline_prices_are_micro_units_per_million_and_backends_inherit_them() {
        let c = load(
            r#"{"currency":"EUR","endpoints":{"m":{"url":"http://h",
                "pricing":{"input":2.5,"output":10,"cachedInput":1.25,
                  "aboveInputTokens":{"threshold":200000,"input":5,"output":20}},
                "backends":[{},{"pricing":{"input":0.15,"output":0.6,"cacheWrite":0.2}}]}}}"#,
        )
        .unwrap();
        assert_eq!(c.prices.currency, "EUR");
        let b = &c.endpoints[0].backends;
        assert_eq!(
            b[0].pricing,
            Some(Pricing {
                base: rates(2_500_000, 10_000_000, 1_250_000, 2_500_000, 2_500_000),
                above: Some(Tier {
                    threshold: 200_000,
                    rates: rates(5_000_000, 20_000_000, 5_000_000, 5_000_000, 5_000_000),
                }),
            })
        );
        assert_eq!(
            b[1].pricing.unwrap().base,
            rates(150_000, 600_000, 150_000, 200_000, 200_000)
        );
        assert_eq!(
            load(r#"{"endpoints":{"m":{"url":"http://h"}}}"#)
                .unwrap()
                .prices
                .currency,
            "USD"
        );
    }

    #[test]
    fn inline_wins_over_globs_which_win_over_the_file() {
        let dir = env!("CARGO_MANIFEST_DIR");
        let c = load(&format!(
            r#"{{"pricesFile":"{}/tests/fixtures/litellm_prices.json",
                "pricing":{{"fixture-c*":{{"input":1,"output":2}},"*":{{"input":9,"output":9}}}},
                "endpoints":{{"m":{{"url":"http://h","actualModelName":"fixture-chat","pricing":{{"input":7,"output":7}}}}}}}}"#,
            dir
        ))
        .unwrap();
        let p = &c.prices;
        let inline = c.endpoints[0].backends[0].pricing.as_ref();
        assert_eq!(
            p.lookup(inline, "fixture-chat").unwrap().base.input,
            7_000_000
        );
        assert_eq!(
            p.lookup(None, "fixture-chat").unwrap().base.input,
            1_000_000
        );
        assert_eq!(p.lookup(None, "other").unwrap().base.input, 9_000_000);
        let file_only = Prices {
            defaults: Vec::new(),
            ..p.clone()
        };
        assert_eq!(
            file_only.lookup(None, "fixture-chat").unwrap().base,
            rates(2_500_000, 10_000_000, 1_250_000, 2_500_000, 2_500_000)
        );
        assert_eq!(file_only.lookup(None, "fixture-image"), None);
        assert_eq!(file_only.lookup(None, "fixture-broken"), None);
        assert_eq!(file_only.lookup(None, "sample_spec").unwrap().base.input, 0);
    }

    #[test]
    fn the_litellm_file_gives_cache_writes_and_the_200k_tier() {
        let dir = env!("CARGO_MANIFEST_DIR");
        let f = parse_prices_file(
            Some(&Value::String(format!(
                "{}/tests/fixtures/litellm_prices.json",
                dir
            ))),
            "c.json",
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            f.entry("fixture-claude"),
            Some(&Ok(Pricing {
                base: rates(3_000_000, 15_000_000, 300_000, 3_750_000, 6_000_000),
                above: Some(Tier {
                    threshold: 200_000,
                    rates: rates(6_000_000, 22_500_000, 600_000, 7_500_000, 6_000_000),
                }),
            }))
        );
        assert_eq!(
            f.entry("fixture-broken"),
            Some(&Err("\"fixture-broken\".input_cost_per_token: expected a number of currency units per token, at least 0, got \"0.000001\"".to_string()))
        );
    }

    /// Every price check, with the exact line the operator sees.
    #[test]
    fn every_bad_price_is_a_load_error_naming_the_field() {
        let ep = |pricing: &str| {
            format!(
                r#"{{"endpoints":{{"m":{{"url":"http://h","pricing":{}}}}}}}"#,
                pricing
            )
        };
        let dir = env!("CARGO_MANIFEST_DIR");
        let cases = [
            (ep(r#"{"input":-1,"output":1}"#), "config c.json: endpoints.m.pricing.input: expected a number of USD per 1M tokens from 0 to 1000, got -1"),
            (ep(r#"{"input":1,"output":"10"}"#), "config c.json: endpoints.m.pricing.output: expected a number of USD per 1M tokens from 0 to 1000, got \"10\""),
            (ep(r#"{"input":2500,"output":1}"#), "config c.json: endpoints.m.pricing.input: 2500 per 1M tokens is above the sanity bound of 1000 (a price per token where a price per 1M tokens belongs?); expected a number from 0 to 1000, or \"allowHighPrices\": true for a real outlier"),
            (ep(r#"{"input":1,"output":1,"cachedInput":1001}"#), "config c.json: endpoints.m.pricing.cachedInput: 1001 per 1M tokens is above the sanity bound of 1000 (a price per token where a price per 1M tokens belongs?); expected a number from 0 to 1000, or \"allowHighPrices\": true for a real outlier"),
            (ep(r#"{"input":1,"output":1,"allowHighPrices":true,"cacheWrite":2000000}"#), "config c.json: endpoints.m.pricing.cacheWrite: expected a number of USD per 1M tokens from 0 to 1000000, got 2000000"),
            (ep(r#"{"input":1}"#), "config c.json: endpoints.m.pricing.output: missing: expected a price in USD per 1M tokens"),
            (ep(r#"{"input":1,"output":1,"cachedinput":1}"#), "config c.json: endpoints.m.pricing.cachedinput: unknown field; did you mean \"cachedInput\"?"),
            (ep(r#"{"input":1,"output":1,"allowHighPrices":"yes"}"#), "config c.json: endpoints.m.pricing.allowHighPrices: expected true or false, got a string"),
            (ep(r#"2.5"#), "config c.json: endpoints.m.pricing: expected an object of prices per 1M tokens like {\"input\": 2.5, \"output\": 10}, got a number"),
            (ep(r#"{"input":1,"output":1,"aboveInputTokens":{"input":2,"output":2}}"#), "config c.json: endpoints.m.pricing.aboveInputTokens.threshold: missing: expected the prompt tokens above which these prices apply, e.g. 200000"),
            (ep(r#"{"input":1,"output":1,"aboveInputTokens":{"threshold":0.5,"input":2,"output":2}}"#), "config c.json: endpoints.m.pricing.aboveInputTokens.threshold: expected a whole number of prompt tokens, at least 1, got 0.5"),
            (ep(r#"{"input":1,"output":1,"aboveInputTokens":{"threshold":9,"input":2,"output":2,"treshold":1}}"#), "config c.json: endpoints.m.pricing.aboveInputTokens.treshold: unknown field; did you mean \"threshold\"?"),
            (ep(r#"{"input":1,"output":1,"aboveInputTokens":{"threshold":9,"input":2,"output":-2}}"#), "config c.json: endpoints.m.pricing.aboveInputTokens.output: expected a number of USD per 1M tokens from 0 to 1000, got -2"),
            (r#"{"endpoints":{"m":{"url":"http://h","backends":[{"pricing":{"input":1,"output":1e9}}]}}}"#.to_string(), "config c.json: endpoints.m.backends[0].pricing.output: expected a number of USD per 1M tokens from 0 to 1000, got 1000000000.0"),
            (r#"{"currency":"usd","endpoints":{"m":{"url":"http://h"}}}"#.to_string(), "config c.json: currency: expected a currency code of 3 capital letters such as \"USD\" or \"EUR\", got \"usd\""),
            (r#"{"pricing":{"input":2.5,"output":10},"endpoints":{"m":{"url":"http://h"}}}"#.to_string(), "config c.json: pricing.input: the top-level \"pricing\" maps model globs to prices, like {\"gpt-4o*\": {\"input\": 2.5, \"output\": 10}}; prices of one model go in its endpoint's \"pricing\""),
            (r#"{"pricing":{"gpt-*":{"input":1,"output":-0.5}},"endpoints":{"m":{"url":"http://h"}}}"#.to_string(), "config c.json: pricing.gpt-*.output: expected a number of USD per 1M tokens from 0 to 1000, got -0.5"),
            (r#"{"pricing":[],"endpoints":{"m":{"url":"http://h"}}}"#.to_string(), "config c.json: pricing: expected an object of model glob -> prices, like {\"gpt-4o*\": {\"input\": 2.5, \"output\": 10}}, got an array"),
            (r#"{"pricesFile":5,"endpoints":{"m":{"url":"http://h"}}}"#.to_string(), "config c.json: pricesFile: expected a file path such as \"model_prices_and_context_window.json\", got 5"),
            (r#"{"pricesFile":"/nonexistent/prices.json","endpoints":{"m":{"url":"http://h"}}}"#.to_string(), "config c.json: pricesFile: /nonexistent/prices.json: cannot read file: No such file or directory (os error 2)"),
            (format!(r#"{{"pricesFile":"{}/Cargo.toml","endpoints":{{"m":{{"url":"http://h"}}}}}}"#, dir), &*format!("config c.json: pricesFile: {}/Cargo.toml: invalid JSON: expected value at line 1 column 2", dir)),
            (format!(r#"{{"pricesFile":"{}/tests/fixtures/litellm_prices.json","endpoints":{{"m":{{"url":"http://h","actualModelName":"fixture-broken"}}}}}}"#, dir), &*format!("config c.json: pricesFile: {}/tests/fixtures/litellm_prices.json: \"fixture-broken\".input_cost_per_token: expected a number of currency units per token, at least 0, got \"0.000001\" (the price of endpoints.m)", dir)),
        ];
        for (text, expected) in &cases {
            assert_eq!(load(text).unwrap_err(), *expected, "{}", text);
        }
        let ok = load(&ep(r#"{"input":2500,"output":1,"allowHighPrices":true}"#)).unwrap();
        assert_eq!(
            ok.endpoints[0].backends[0].pricing.unwrap().base.input,
            2_500_000_000
        );
    }

    #[test]
    fn an_unpriced_model_beside_priced_ones_is_a_warning() {
        let c = load(
            r#"{"endpoints":{"m":{"url":"http://h","pricing":{"input":1,"output":1}},"n":{"url":"http://h"}}}"#,
        )
        .unwrap();
        assert_eq!(
            c.warnings,
            vec!["c.json: endpoints.n: no price for backend model \"n\": its requests are unpriced (no cost)"]
        );
        assert!(load(r#"{"endpoints":{"n":{"url":"http://h"}}}"#)
            .unwrap()
            .warnings
            .is_empty());
    }
}
