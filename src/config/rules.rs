//! The `"limits"` rules of the config: whom each rule covers and what it allows.

use crate::config::type_name;
use crate::money::MICROS;
use serde_json::{Map, Value};
use std::fmt;

/// Largest limit accepted; counters in Redis's Lua are doubles, exact up to 2^53.
const MAX_LIMIT: u64 = 1_000_000_000_000_000;

/// Largest cost budget accepted, in currency units (in micro-units still below 2^53).
const MAX_MONEY: f64 = 1_000_000_000.0;

/// Who is asking: the caller's identity, the client key's name (never its secret) and the model.
/// An empty string means "not known"; `"*"` puts all unknown callers into one shared budget.
/// Borrowed from the request: admission builds one per request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subject<'a> {
    /// The user the request is for.
    pub user: &'a str,
    /// The name of the client key it came with.
    pub key: &'a str,
    /// The public model id it asked for.
    pub model: &'a str,
}

/// One match field of a rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Field {
    /// Absent: any value, all counted together.
    Any,
    /// `"*"`: any value, each distinct value counted separately.
    Each,
    /// A literal: only this value.
    Only(String),
}

/// A kind of limit a rule may set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// Requests started per UTC minute.
    RequestsPerMinute,
    /// Tokens (prompt plus completion) per UTC minute.
    TokensPerMinute,
    /// Tokens per UTC day.
    TokensPerDay,
    /// Tokens per UTC calendar month.
    TokensPerMonth,
    /// Requests in flight at once, per process.
    Concurrent,
    /// Money (micro-units of the configured currency) per UTC day.
    CostPerDay,
    /// Money per UTC week (Monday to Sunday).
    CostPerWeek,
    /// Money per UTC calendar month.
    CostPerMonth,
    /// Money in total, never reset: a prepaid budget.
    CostTotal,
}

/// The limits kept in windowed counters, in counter order (see `store::Counts`).
pub const WINDOWED: [Limit; 8] = [
    Limit::RequestsPerMinute,
    Limit::TokensPerMinute,
    Limit::TokensPerDay,
    Limit::TokensPerMonth,
    Limit::CostPerDay,
    Limit::CostPerWeek,
    Limit::CostPerMonth,
    Limit::CostTotal,
];

/// The first cost counter in `WINDOWED` order; the cost counters follow it.
pub const FIRST_COST: usize = 4;

impl Limit {
    /// The name in `Denied.limit`, logs and metrics, e.g. `tokens_per_day`.
    pub fn name(self) -> &'static str {
        match self {
            Limit::RequestsPerMinute => "requests_per_minute",
            Limit::TokensPerMinute => "tokens_per_minute",
            Limit::TokensPerDay => "tokens_per_day",
            Limit::TokensPerMonth => "tokens_per_month",
            Limit::Concurrent => "concurrent",
            Limit::CostPerDay => "cost_per_day",
            Limit::CostPerWeek => "cost_per_week",
            Limit::CostPerMonth => "cost_per_month",
            Limit::CostTotal => "cost_total",
        }
    }

    /// The config field that sets it.
    pub fn field(self) -> &'static str {
        match self {
            Limit::RequestsPerMinute => "requestsPerMinute",
            Limit::TokensPerMinute => "tokensPerMinute",
            Limit::TokensPerDay => "tokensPerDay",
            Limit::TokensPerMonth => "tokensPerMonth",
            Limit::Concurrent => "concurrent",
            Limit::CostPerDay => "costPerDay",
            Limit::CostPerWeek => "costPerWeek",
            Limit::CostPerMonth => "costPerMonth",
            Limit::CostTotal => "costTotal",
        }
    }

    /// What it counts, for messages: "tokens per day".
    pub fn describe(self) -> &'static str {
        match self {
            Limit::RequestsPerMinute => "requests per minute",
            Limit::TokensPerMinute => "tokens per minute",
            Limit::TokensPerDay => "tokens per day",
            Limit::TokensPerMonth => "tokens per month",
            Limit::Concurrent => "concurrent requests",
            Limit::CostPerDay => "per day",
            Limit::CostPerWeek => "per week",
            Limit::CostPerMonth => "per month",
            Limit::CostTotal => "in total",
        }
    }

    /// The window's name in `modelmux_budget_warnings_total{window}`: `day`, `week`, `month`,
    /// `total` (and `minute` for the per-minute limits).
    pub fn window(self) -> &'static str {
        match self {
            Limit::RequestsPerMinute | Limit::TokensPerMinute | Limit::Concurrent => "minute",
            Limit::TokensPerDay | Limit::CostPerDay => "day",
            Limit::CostPerWeek => "week",
            Limit::TokensPerMonth | Limit::CostPerMonth => "month",
            Limit::CostTotal => "total",
        }
    }

    /// True for the money budgets (counted in micro-units of the currency).
    pub fn is_cost(self) -> bool {
        matches!(
            self,
            Limit::CostPerDay | Limit::CostPerWeek | Limit::CostPerMonth | Limit::CostTotal
        )
    }

    /// The OpenAI error code of a refusal: budgets that last a day or more are "quota".
    pub fn code(self) -> &'static str {
        match self {
            Limit::TokensPerDay | Limit::TokensPerMonth => "insufficient_quota",
            k if k.is_cost() => "insufficient_quota",
            _ => "rate_limit_exceeded",
        }
    }

    /// A limit's value in words: `200000 tokens per day`, `20.00 USD per month`.
    pub fn amount(self, value: u64, currency: &str) -> String {
        if self.is_cost() {
            format!("{} {} {}", format_money(value), currency, self.describe())
        } else {
            format!("{} {}", value, self.describe())
        }
    }
}

/// Micro-units as currency for people: two decimals at least, up to six when they matter
/// (`20.00`, `0.31`, `0.0045`).
pub fn format_money(micros: u64) -> String {
    let (units, frac) = (micros / MICROS, micros % MICROS);
    let mut digits = format!("{:06}", frac);
    while digits.len() > 2 && digits.ends_with('0') {
        digits.pop();
    }
    format!("{}.{}", units, digits)
}

const ALL_LIMITS: [Limit; 9] = [
    Limit::RequestsPerMinute,
    Limit::TokensPerMinute,
    Limit::TokensPerDay,
    Limit::TokensPerMonth,
    Limit::Concurrent,
    Limit::CostPerDay,
    Limit::CostPerWeek,
    Limit::CostPerMonth,
    Limit::CostTotal,
];

/// One entry of `"limits"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// Which callers.
    pub user: Field,
    /// Which client keys (by name).
    pub key: Field,
    /// Which models.
    pub model: Field,
    /// `requestsPerMinute`, `tokensPerMinute`, `tokensPerDay`, `tokensPerMonth`, then
    /// `costPerDay`, `costPerWeek`, `costPerMonth`, `costTotal` in micro-units (counter order).
    pub windowed: [Option<u64>; 8],
    /// `concurrent`.
    pub concurrent: Option<u64>,
    /// `warnAt`: the share of each cost budget past which a subject is warned about, in
    /// millionths (900000 for 0.9).
    pub warn_at: Option<u64>,
}

impl Rule {
    /// Whether the rule covers this request.
    pub fn matches(&self, s: &Subject) -> bool {
        let ok = |f: &Field, v: &str| match f {
            Field::Only(want) => want == v,
            Field::Any | Field::Each => true,
        };
        ok(&self.user, s.user) && ok(&self.key, s.key) && ok(&self.model, s.model)
    }

    /// The counter set this request counts in under this rule. It names the traffic, not the
    /// rule, so two rules over the same traffic share counters (`{"user": "*"}` and
    /// `{"user": "ann"}` for ann) and a config reload that reorders rules keeps its counts.
    pub fn bucket(&self, s: &Subject) -> String {
        let parts = [
            ("u", &self.user, s.user),
            ("k", &self.key, s.key),
            ("m", &self.model, s.model),
        ];
        // Sized once (each escape adds two bytes): built per request, it grew several times.
        let len: usize = parts
            .iter()
            .filter(|(_, field, _)| **field != Field::Any)
            .map(|(_, _, v)| {
                3 + v.len() + 2 * v.bytes().filter(|b| *b == b'%' || *b == b'|').count()
            })
            .sum();
        let mut out = String::with_capacity(len.max(3));
        for (tag, field, value) in parts {
            if *field == Field::Any {
                continue;
            }
            if !out.is_empty() {
                out.push('|');
            }
            out.push_str(tag);
            out.push('=');
            // Escaped so no value can imitate the separator and land in someone else's bucket;
            // the runs between escapes copied whole, not character by character.
            let mut rest = value;
            while let Some(at) = rest.find(['%', '|']) {
                out.push_str(&rest[..at]);
                out.push_str(if rest.as_bytes()[at] == b'%' {
                    "%25"
                } else {
                    "%7C"
                });
                rest = &rest[at + 1..];
            }
            out.push_str(rest);
        }
        if out.is_empty() {
            out.push_str("all");
        }
        out
    }

    /// The value of one kind of limit, if the rule sets it.
    pub fn limit(&self, kind: Limit) -> Option<u64> {
        match kind {
            Limit::RequestsPerMinute => self.windowed[0],
            Limit::TokensPerMinute => self.windowed[1],
            Limit::TokensPerDay => self.windowed[2],
            Limit::TokensPerMonth => self.windowed[3],
            Limit::CostPerDay => self.windowed[4],
            Limit::CostPerWeek => self.windowed[5],
            Limit::CostPerMonth => self.windowed[6],
            Limit::CostTotal => self.windowed[7],
            Limit::Concurrent => self.concurrent,
        }
    }

    /// True when the rule sets a cost budget.
    pub fn has_cost(&self) -> bool {
        self.windowed[FIRST_COST..].iter().any(Option::is_some)
    }

    /// The rule in words as a 429 words it, every limit it sets:
    /// `limits[0] (each user) allows 20 requests per minute, 200000 tokens per day`.
    pub fn in_words(&self, index: usize, currency: &str) -> String {
        let limits: Vec<String> = ALL_LIMITS
            .iter()
            .filter_map(|l| self.limit(*l).map(|n| l.amount(n, currency)))
            .collect();
        format!(
            "limits[{}] ({}) allows {}",
            index,
            self.scope(),
            limits.join(", ")
        )
    }

    /// Whom the rule covers, for messages: `each user, key "openwebui"`. Only config values.
    pub fn scope(&self) -> String {
        let parts: Vec<String> = [
            ("user", &self.user),
            ("key", &self.key),
            ("model", &self.model),
        ]
        .into_iter()
        .filter_map(|(name, f)| match f {
            Field::Any => None,
            Field::Each => Some(format!("each {}", name)),
            Field::Only(v) => Some(format!("{} \"{}\"", name, v)),
        })
        .collect();
        if parts.is_empty() {
            "all requests together".to_string()
        } else {
            parts.join(", ")
        }
    }
}

/// A mistake in `"limits"`, located like `limits[2].tokensPerDay`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleError {
    /// Where, from the top of the config.
    pub location: String,
    /// What is wrong and what was expected.
    pub message: String,
}

impl fmt::Display for RuleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.location, self.message)
    }
}

fn err(location: String, message: impl Into<String>) -> RuleError {
    RuleError {
        location,
        message: message.into(),
    }
}

/// Reads the config's top-level `"limits"` value (absent or null: no rules).
pub fn parse_rules(v: &Value) -> Result<Vec<Rule>, RuleError> {
    match v {
        Value::Null => Ok(Vec::new()),
        Value::Array(items) => items
            .iter()
            .enumerate()
            .map(|(i, item)| parse_rule(item, &format!("limits[{}]", i)))
            .collect(),
        other => Err(err(
            "limits".to_string(),
            format!("expected an array of rules, got {}", type_name(other)),
        )),
    }
}

fn parse_rule(v: &Value, at: &str) -> Result<Rule, RuleError> {
    let obj = v.as_object().ok_or_else(|| {
        err(
            at.to_string(),
            format!(
                "expected a rule like {{\"match\": {{\"user\": \"*\"}}, \"tokensPerDay\": 200000}}, got {}",
                type_name(v)
            ),
        )
    })?;
    let fields: Vec<&str> = ["match", "warnAt"]
        .into_iter()
        .chain(ALL_LIMITS.iter().map(|l| l.field()))
        .collect();
    unknown_field(obj, &fields, at)?;
    let (user, key, model) = match obj.get("match") {
        None | Some(Value::Null) => (Field::Any, Field::Any, Field::Any),
        Some(m) => parse_match(m, &format!("{}.match", at))?,
    };
    let limit = |kind: Limit| {
        let here = format!("{}.{}", at, kind.field());
        if kind.is_cost() {
            money(obj.get(kind.field()), &here)
        } else {
            number(obj.get(kind.field()), &here)
        }
    };
    let mut windowed = [None; 8];
    for (slot, kind) in windowed.iter_mut().zip(WINDOWED) {
        *slot = limit(kind)?;
    }
    let rule = Rule {
        user,
        key,
        model,
        windowed,
        concurrent: limit(Limit::Concurrent)?,
        warn_at: share(obj.get("warnAt"), &format!("{}.warnAt", at))?,
    };
    if rule.warn_at.is_some() && !rule.has_cost() {
        return Err(err(
            format!("{}.warnAt", at),
            "warns about cost budgets, and the rule sets none (costPerDay, costPerWeek, costPerMonth or costTotal)",
        ));
    }
    if ALL_LIMITS.iter().all(|l| rule.limit(*l).is_none()) {
        let names: Vec<&str> = ALL_LIMITS.iter().map(|l| l.field()).collect();
        return Err(err(
            at.to_string(),
            format!("a rule needs at least one limit: {}", names.join(", ")),
        ));
    }
    Ok(rule)
}

fn parse_match(v: &Value, at: &str) -> Result<(Field, Field, Field), RuleError> {
    let obj = v.as_object().ok_or_else(|| {
        err(
            at.to_string(),
            format!(
                "expected an object like {{\"user\": \"*\", \"model\": \"gpt-4o\"}}, got {}",
                type_name(v)
            ),
        )
    })?;
    unknown_field(obj, &["user", "key", "model"], at)?;
    let field = |name: &str| -> Result<Field, RuleError> {
        let here = || format!("{}.{}", at, name);
        match obj.get(name) {
            None | Some(Value::Null) => Ok(Field::Any),
            Some(Value::String(s)) if s == "*" => Ok(Field::Each),
            Some(Value::String(s)) if !s.is_empty() => Ok(Field::Only(s.clone())),
            Some(other) => Err(err(
                here(),
                format!(
                    "expected \"*\" (each {} separately) or a {} name, got {}",
                    name,
                    name,
                    describe(other)
                ),
            )),
        }
    };
    Ok((field("user")?, field("key")?, field("model")?))
}

fn number(v: Option<&Value>, at: &str) -> Result<Option<u64>, RuleError> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(n) => n
            .as_u64()
            .filter(|n| (1..=MAX_LIMIT).contains(n))
            .map(Some)
            .ok_or_else(|| {
                err(
                    at.to_string(),
                    format!(
                        "expected a whole number from 1 to {}, got {}",
                        MAX_LIMIT,
                        describe(n)
                    ),
                )
            }),
    }
}

/// A cost budget: a positive amount of the configured currency, kept in micro-units.
fn money(v: Option<&Value>, at: &str) -> Result<Option<u64>, RuleError> {
    let Some(v) = v.filter(|v| !v.is_null()) else {
        return Ok(None);
    };
    let micros = v
        .as_f64()
        .filter(|x| x.is_finite() && *x > 0.0 && *x <= MAX_MONEY)
        .map(|x| (x * MICROS as f64).round() as u64)
        .filter(|m| *m >= 1);
    micros.map(Some).ok_or_else(|| {
        err(
            at.to_string(),
            format!(
                "expected an amount of the currency from 0.000001 to {} (e.g. 20 or 0.5), got {}",
                MAX_MONEY,
                describe(v)
            ),
        )
    })
}

/// `warnAt`: a share above 0, at most 1, in millionths.
fn share(v: Option<&Value>, at: &str) -> Result<Option<u64>, RuleError> {
    let Some(v) = v.filter(|v| !v.is_null()) else {
        return Ok(None);
    };
    v.as_f64()
        .filter(|x| *x > 0.0 && *x <= 1.0)
        .map(|x| Some(((x * MICROS as f64).round() as u64).max(1)))
        .ok_or_else(|| {
            err(
                at.to_string(),
                format!(
                    "expected a share of the budget above 0 and at most 1 (e.g. 0.9), got {}",
                    describe(v)
                ),
            )
        })
}

/// The config's rule for unknown fields (`_` comments allowed), with its "did you mean".
fn unknown_field(obj: &Map<String, Value>, known: &[&str], at: &str) -> Result<(), RuleError> {
    match obj
        .keys()
        .find(|k| !k.starts_with('_') && !known.contains(&k.as_str()))
    {
        Some(k) => Err(err(
            format!("{}.{}", at, k),
            crate::config::unknown_field(k, known),
        )),
        None => Ok(()),
    }
}

/// A short rendering of a wrong value: numbers and short strings as written, else the type.
fn describe(v: &Value) -> String {
    match v {
        Value::Number(n) => n.to_string(),
        Value::String(s) if s.is_empty() => "an empty string".to_string(),
        Value::String(s) if s.len() <= 40 => format!("\"{}\"", s),
        other => type_name(other).to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn subject<'a>(user: &'a str, key: &'a str, model: &'a str) -> Subject<'a> {
        Subject { user, key, model }
    }

    #[test]
    fn parses_a_full_rule() {
        let rules = parse_rules(&json!([{
            "match": {"user": "*", "key": "openwebui", "model": "gpt-4o"},
            "requestsPerMinute": 20, "tokensPerMinute": 40000, "tokensPerDay": 200000,
            "tokensPerMonth": 3000000, "concurrent": 4
        }]))
        .unwrap();
        assert_eq!(
            rules,
            vec![Rule {
                user: Field::Each,
                key: Field::Only("openwebui".into()),
                model: Field::Only("gpt-4o".into()),
                windowed: [
                    Some(20),
                    Some(40000),
                    Some(200000),
                    Some(3000000),
                    None,
                    None,
                    None,
                    None
                ],
                concurrent: Some(4),
                warn_at: None,
            }]
        );
        assert_eq!(
            rules[0].scope(),
            "each user, key \"openwebui\", model \"gpt-4o\""
        );
        assert_eq!(
            rules[0].in_words(3, "USD"),
            "limits[3] (each user, key \"openwebui\", model \"gpt-4o\") allows 20 requests per minute, \
             40000 tokens per minute, 200000 tokens per day, 3000000 tokens per month, 4 concurrent requests"
        );
    }

    #[test]
    fn match_fields_are_optional() {
        let rules =
            parse_rules(&json!([{"tokensPerDay": 5}, {"match": {}, "concurrent": 1}])).unwrap();
        for r in &rules {
            assert_eq!(
                (&r.user, &r.key, &r.model),
                (&Field::Any, &Field::Any, &Field::Any)
            );
            assert_eq!(r.scope(), "all requests together");
        }
        assert_eq!(parse_rules(&Value::Null).unwrap(), vec![]);
    }

    #[test]
    fn errors_name_the_field_and_what_was_expected() {
        let cases = [
            (
                json!(1),
                "limits",
                "expected an array of rules, got a number",
            ),
            (
                json!([{"tokensPerDay": 1}, 3]),
                "limits[1]",
                "expected a rule like",
            ),
            (
                json!([{}, {}, {"tokensPerDay": -5}]),
                "limits[0]",
                "a rule needs at least one limit: requestsPerMinute, tokensPerMinute",
            ),
            (
                json!([{"tokensPerDay": 1}, {"tokensPerDay": 1}, {"tokensPerDay": -5}]),
                "limits[2].tokensPerDay",
                "expected a whole number from 1 to 1000000000000000, got -5",
            ),
            (
                json!([{"tokensPerDay": 1.5}]),
                "limits[0].tokensPerDay",
                "got 1.5",
            ),
            (json!([{"concurrent": 0}]), "limits[0].concurrent", "got 0"),
            (
                json!([{"concurrent": "4"}]),
                "limits[0].concurrent",
                "got \"4\"",
            ),
            (
                json!([{"tokensPerday": 5}]),
                "limits[0].tokensPerday",
                "unknown field; did you mean \"tokensPerDay\"?",
            ),
            (
                json!([{"match": {"team": "x"}, "concurrent": 1}]),
                "limits[0].match.team",
                "unknown field; expected user, key or model",
            ),
            (
                json!([{"match": {"user": ""}, "concurrent": 1}]),
                "limits[0].match.user",
                "expected \"*\" (each user separately) or a user name, got an empty string",
            ),
            (
                json!([{"match": {"model": ["a"]}, "concurrent": 1}]),
                "limits[0].match.model",
                "got an array",
            ),
            (
                json!([{"match": "gpt-4o", "concurrent": 1}]),
                "limits[0].match",
                "expected an object",
            ),
        ];
        for (v, location, message) in cases {
            let e = parse_rules(&v).unwrap_err();
            assert_eq!(e.location, location, "{}", e);
            assert!(e.message.contains(message), "{}", e);
        }
    }

    #[test]
    fn literal_matches_only_its_value_and_star_matches_all() {
        let rules = parse_rules(&json!([
            {"match": {"user": "*"}, "concurrent": 1},
            {"match": {"user": "ann", "model": "gpt-4o"}, "concurrent": 1},
            {"match": {"key": "*"}, "concurrent": 1}
        ]))
        .unwrap();
        let ann = subject("ann", "web", "gpt-4o");
        let bob = subject("bob", "web", "gpt-4o");
        let ann_mini = subject("ann", "web", "mini");
        let hits = |s: &Subject| -> Vec<bool> { rules.iter().map(|r| r.matches(s)).collect() };
        assert_eq!(hits(&ann), [true, true, true]);
        assert_eq!(hits(&bob), [true, false, true]);
        assert_eq!(hits(&ann_mini), [true, false, true]);
    }

    #[test]
    fn buckets_separate_star_values_and_pool_absent_fields() {
        let rules = parse_rules(&json!([
            {"match": {"user": "*"}, "concurrent": 1},
            {"match": {"user": "ann"}, "concurrent": 1},
            {"concurrent": 1},
            {"match": {"user": "*", "model": "*"}, "concurrent": 1}
        ]))
        .unwrap();
        let ann = subject("ann", "k1", "m1");
        let ann2 = subject("ann", "k2", "m2");
        let bob = subject("bob", "k1", "m1");
        assert_eq!(rules[0].bucket(&ann), "u=ann");
        assert_eq!(rules[0].bucket(&ann2), "u=ann");
        assert_ne!(rules[0].bucket(&bob), rules[0].bucket(&ann));
        // The same traffic under a literal shares the counters.
        assert_eq!(rules[1].bucket(&ann), rules[0].bucket(&ann));
        assert_eq!(rules[2].bucket(&ann), "all");
        assert_eq!(rules[2].bucket(&bob), "all");
        assert_eq!(rules[3].bucket(&ann), "u=ann|m=m1");
        // A user name holding the separator cannot reach another bucket.
        let sneaky = subject("ann|m=m1", "k", "x");
        assert_eq!(rules[3].bucket(&sneaky), "u=ann%7Cm=m1|m=x");
        assert_ne!(rules[0].bucket(&sneaky), rules[3].bucket(&ann));
    }

    #[test]
    fn bucket_names_escape_every_separator_and_percent_sign() {
        let rules =
            parse_rules(&json!([{"match": {"user": "*", "model": "*"}, "concurrent": 1}])).unwrap();
        let s = subject("%a|b%%|", "k", "é|%");
        assert_eq!(rules[0].bucket(&s), "u=%25a%7Cb%25%25%7C|m=é%7C%25");
    }

    #[test]
    fn cost_budgets_are_micro_units_and_warn_at_a_share() {
        let rules = parse_rules(&json!([{
            "match": {"user": "*"}, "costPerDay": 1.5, "costPerWeek": 5, "costPerMonth": 20,
            "costTotal": 0.000001, "warnAt": 0.9
        }]))
        .unwrap();
        assert_eq!(
            rules[0].windowed[FIRST_COST..],
            [Some(1_500_000), Some(5_000_000), Some(20_000_000), Some(1)]
        );
        assert_eq!(rules[0].warn_at, Some(900_000));
        assert_eq!(
            rules[0].in_words(0, "EUR"),
            "limits[0] (each user) allows 1.50 EUR per day, 5.00 EUR per week, \
             20.00 EUR per month, 0.000001 EUR in total"
        );
        assert_eq!(format_money(310_000), "0.31");
        assert_eq!(format_money(4_500), "0.0045");
        assert_eq!(format_money(20_000_000), "20.00");
        assert_eq!(Limit::CostTotal.code(), "insufficient_quota");
    }

    #[test]
    fn cost_budget_mistakes_are_load_errors_naming_the_field() {
        let cases = [
            (
                json!([{"costPerDay": -1}]),
                "limits[0].costPerDay",
                "got -1",
            ),
            (
                json!([{"costPerMonth": "20"}]),
                "limits[0].costPerMonth",
                "got \"20\"",
            ),
            (
                json!([{"costTotal": 0}]),
                "limits[0].costTotal",
                "from 0.000001",
            ),
            (
                json!([{"costTotal": 0.0000001}]),
                "limits[0].costTotal",
                "got 1e-7",
            ),
            (
                json!([{"costPerWeek": 2e9}]),
                "limits[0].costPerWeek",
                "got 2000000000",
            ),
            (
                json!([{"costPerMonht": 20}]),
                "limits[0].costPerMonht",
                "did you mean \"costPerMonth\"?",
            ),
            (
                json!([{"costPerDay": 1, "warnAt": 1.5}]),
                "limits[0].warnAt",
                "above 0 and at most 1 (e.g. 0.9), got 1.5",
            ),
            (
                json!([{"costPerDay": 1, "warnAt": 0}]),
                "limits[0].warnAt",
                "got 0",
            ),
            (
                json!([{"costPerDay": 1, "warnAt": "90%"}]),
                "limits[0].warnAt",
                "got \"90%\"",
            ),
            (
                json!([{"tokensPerDay": 1, "warnAt": 0.9}]),
                "limits[0].warnAt",
                "the rule sets none",
            ),
        ];
        for (v, location, message) in cases {
            let e = parse_rules(&v).unwrap_err();
            assert_eq!(e.location, location, "{}", e);
            assert!(e.message.contains(message), "{}", e);
        }
    }

    #[test]
    fn limit_kinds_have_codes() {
        assert_eq!(Limit::TokensPerDay.code(), "insufficient_quota");
        assert_eq!(Limit::TokensPerMonth.code(), "insufficient_quota");
        assert_eq!(Limit::TokensPerMinute.code(), "rate_limit_exceeded");
        assert_eq!(Limit::RequestsPerMinute.code(), "rate_limit_exceeded");
        assert_eq!(Limit::Concurrent.code(), "rate_limit_exceeded");
    }
}
