//! Usage totals by day, user, key and model: kept in memory from the ledger, and summed over a
//! date range by any of user, key and model for `/usage` and `modelmux usage`.

use super::ledger::Entry;
use crate::clock;
use std::borrow::Cow;
use std::collections::BTreeMap;

/// What a group of requests used.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// Requests.
    pub requests: u64,
    /// Prompt tokens.
    pub prompt: u64,
    /// Completion tokens.
    pub completion: u64,
    /// Cached prompt tokens.
    pub cached: u64,
    /// Prompt tokens written to a prompt cache (billed apart), the 1-hour ones included.
    pub cache_write: u64,
    /// The part of `cache_write` kept for an hour (billed higher).
    pub cache_write_1h: u64,
    /// Reasoning tokens.
    pub reasoning: u64,
    /// Requests by the ledger's `outcome`, in `OUTCOMES` order (other values are not counted).
    pub outcomes: [u64; 5],
    /// Requests with a cost.
    pub priced: u64,
    /// Requests that used tokens and have no cost (no price for their backend): the cost is
    /// incomplete by them, never to be read as free.
    pub unpriced: u64,
    /// The sum of the costs, micro-units of `currency`.
    pub cost: u64,
    /// The part of `cost` computed from estimated usage.
    pub estimated_cost: u64,
    /// The currency of the costs.
    pub currency: Currency,
}

/// The currency of a group's costs: costs in two currencies are never summed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Currency {
    /// No cost yet.
    #[default]
    None,
    /// Every cost is in this one (3 capital letters).
    One([u8; 3]),
    /// Costs in more than one currency (after a change of `currency`): no sum is shown.
    Mixed,
}

impl Currency {
    /// A ledger line's currency; anything but 3 capital letters mixes with everything.
    fn of(s: &str) -> Currency {
        match <[u8; 3]>::try_from(s.as_bytes()) {
            Ok(c) if c.iter().all(u8::is_ascii_uppercase) => Currency::One(c),
            _ => Currency::Mixed,
        }
    }

    fn and(self, o: Currency) -> Currency {
        match (self, o) {
            (Currency::None, x) | (x, Currency::None) => x,
            (a, b) if a == b => a,
            _ => Currency::Mixed,
        }
    }

    /// `USD`, `mixed`, or empty for none.
    pub fn name(&self) -> &str {
        match self {
            Currency::None => "",
            // Built from 3 ASCII capitals only.
            Currency::One(c) => std::str::from_utf8(c).unwrap_or("?"),
            Currency::Mixed => "mixed",
        }
    }

    /// `format`'s text of `micros` in this currency; `None` for no cost or mixed currencies.
    fn amount(&self, micros: u64) -> Option<String> {
        matches!(self, Currency::One(_)).then(|| crate::money::format(micros))
    }
}

/// The ledger's outcomes, as `/usage` counts them.
pub const OUTCOMES: [&str; 5] = [
    "complete",
    "client_gone",
    "upstream_failed",
    "error",
    "refused",
];

impl Counters {
    fn add(&mut self, o: &Counters) {
        // A ledger line can carry any count (a backend's nonsense, a hand edit): never wrap.
        self.requests = self.requests.saturating_add(o.requests);
        self.prompt = self.prompt.saturating_add(o.prompt);
        self.completion = self.completion.saturating_add(o.completion);
        self.cached = self.cached.saturating_add(o.cached);
        self.cache_write = self.cache_write.saturating_add(o.cache_write);
        self.cache_write_1h = self.cache_write_1h.saturating_add(o.cache_write_1h);
        self.reasoning = self.reasoning.saturating_add(o.reasoning);
        for (a, b) in self.outcomes.iter_mut().zip(o.outcomes) {
            *a = a.saturating_add(b);
        }
        self.priced = self.priced.saturating_add(o.priced);
        self.unpriced = self.unpriced.saturating_add(o.unpriced);
        self.cost = self.cost.saturating_add(o.cost);
        self.estimated_cost = self.estimated_cost.saturating_add(o.estimated_cost);
        self.currency = self.currency.and(o.currency);
    }

    /// Refused requests (admission said no; nothing reached a backend).
    pub fn refused(&self) -> u64 {
        self.outcomes[4]
    }
}

/// What one ledger line adds.
fn entry_counters(e: &Entry) -> Counters {
    let mut outcomes = [0; 5];
    if let Some(i) = OUTCOMES.iter().position(|o| *o == e.outcome) {
        outcomes[i] = 1;
    }
    Counters {
        requests: 1,
        prompt: e.usage.prompt,
        completion: e.usage.completion,
        cached: e.usage.cached,
        cache_write: e.usage.cache_write,
        cache_write_1h: e.usage.cache_write_1h,
        reasoning: e.usage.reasoning,
        outcomes,
        priced: u64::from(e.cost.is_some()),
        unpriced: u64::from(e.cost.is_none() && e.usage.total() > 0),
        cost: e.cost.unwrap_or(0),
        estimated_cost: e.cost.filter(|_| e.usage.estimated).unwrap_or(0),
        currency: match e.cost {
            Some(_) => Currency::of(&e.currency),
            None => Currency::None,
        },
    }
}

/// Names of the counters the shared store keeps per day and identity (hash fields), besides
/// one per outcome (`outcome:<name>`).
const FIELDS: [&str; 7] = [
    "requests",
    "prompt",
    "completion",
    "cached",
    "reasoning",
    "cache_write",
    "cache_write_1h",
];
const OUTCOME_FIELDS: [&str; 5] = [
    "outcome:complete",
    "outcome:client_gone",
    "outcome:upstream_failed",
    "outcome:error",
    "outcome:refused",
];

/// What one ledger line adds to the shared store's totals, by field name (whole numbers: the
/// store adds with `HINCRBY`); zero counters are left out (an absent field reads 0). A cost is
/// kept in micro-units under a name that carries its currency (`cost:USD`), so that costs in
/// two currencies are never summed there either.
pub fn store_fields(e: &Entry) -> Vec<(Cow<'static, str>, u64)> {
    let c = entry_counters(e);
    let mut out: Vec<(Cow<'static, str>, u64)> = FIELDS
        .iter()
        .chain(OUTCOME_FIELDS.iter())
        .chain(["priced", "unpriced"].iter())
        .map(|f| Cow::Borrowed(*f))
        .zip(
            [
                c.requests,
                c.prompt,
                c.completion,
                c.cached,
                c.reasoning,
                c.cache_write,
                c.cache_write_1h,
            ]
            .into_iter()
            .chain(c.outcomes)
            .chain([c.priced, c.unpriced]),
        )
        .collect();
    if e.cost.is_some() {
        let currency = c.currency.name();
        out.push((format!("cost:{}", currency).into(), c.cost));
        out.push((
            format!("estimated_cost:{}", currency).into(),
            c.estimated_cost,
        ));
    }
    out.retain(|f| f.1 > 0);
    out
}

/// The counters of the shared store's fields; fields this version does not know (written by a
/// newer one) are left out.
pub fn counters_of(fields: &[(String, u64)]) -> Counters {
    let mut c = Counters::default();
    for (name, n) in fields {
        let n = *n;
        let slot = match name.as_str() {
            "requests" => &mut c.requests,
            "prompt" => &mut c.prompt,
            "completion" => &mut c.completion,
            "cached" => &mut c.cached,
            "reasoning" => &mut c.reasoning,
            "cache_write" => &mut c.cache_write,
            "cache_write_1h" => &mut c.cache_write_1h,
            "priced" => &mut c.priced,
            "unpriced" => &mut c.unpriced,
            other if other.starts_with("cost:") || other.starts_with("estimated_cost:") => {
                let (kind, currency) = other.split_once(':').unwrap_or_default();
                c.currency = c.currency.and(Currency::of(currency));
                let slot = match kind {
                    "cost" => &mut c.cost,
                    _ => &mut c.estimated_cost,
                };
                *slot = slot.saturating_add(n);
                continue;
            }
            other => match OUTCOME_FIELDS.iter().position(|o| *o == other) {
                Some(i) => &mut c.outcomes[i],
                None => continue,
            },
        };
        *slot = slot.saturating_add(n);
    }
    c
}

/// A grouping dimension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dim {
    /// By user.
    User,
    /// By client key name.
    Key,
    /// By model.
    Model,
}

impl Dim {
    /// The JSON field and column name.
    pub fn name(self) -> &'static str {
        match self {
            Dim::User => "user",
            Dim::Key => "key",
            Dim::Model => "model",
        }
    }
}

/// `user`, `key`, `model` or a comma list of them (`user,model`).
pub fn parse_by(s: &str) -> Result<Vec<Dim>, String> {
    let mut dims = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let d = match part {
            "user" => Dim::User,
            "key" => Dim::Key,
            "model" => Dim::Model,
            other => {
                return Err(format!(
                    "cannot group by `{}`: use user, key, model or a comma list of them",
                    crate::http::api_error::clip(other, 32)
                ))
            }
        };
        if !dims.contains(&d) {
            dims.push(d);
        }
    }
    if dims.is_empty() {
        dims.push(Dim::User);
    }
    Ok(dims)
}

/// A question about usage: a day range (since inclusive, until exclusive), a grouping, and
/// optionally one user.
#[derive(Debug, Clone, Default)]
pub struct Query {
    /// First day counted.
    pub since: Option<i64>,
    /// First day not counted.
    pub until: Option<i64>,
    /// Grouping, in column order.
    pub by: Vec<Dim>,
    /// Only this user.
    pub user: Option<String>,
}

/// One answer row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    /// The group's value for each dimension of the query, in order.
    pub group: Vec<String>,
    /// What it used.
    pub counters: Counters,
}

/// The answer to one query, built from ledger entries streamed through it: memory by the
/// number of groups in the answer, not by the number of lines or of days.
#[derive(Debug)]
pub struct Totals {
    q: Query,
    groups: BTreeMap<Vec<String>, Counters>,
}

impl Totals {
    /// Empty totals for `q`.
    pub fn new(q: &Query) -> Totals {
        Totals {
            q: q.clone(),
            groups: BTreeMap::new(),
        }
    }

    /// Counts one ledger entry if the query covers it (entries whose time cannot be read are
    /// skipped).
    pub fn add(&mut self, e: &Entry) {
        let Some(day) = clock::parse_day(&e.ts) else {
            return;
        };
        self.add_sum(day, [&e.user, &e.key, &e.model], &entry_counters(e));
    }

    /// Counts the sum of a day's requests of one identity (`[user, key, model]`) if the query
    /// covers it: the shared store's totals are kept so.
    pub fn add_sum(&mut self, day: i64, who: [&str; 3], add: &Counters) {
        let q = &self.q;
        if q.since.is_some_and(|s| day < s) || q.until.is_some_and(|u| day >= u) {
            return;
        }
        if q.user.as_ref().is_some_and(|u| u != who[0]) {
            return;
        }
        let group: Vec<String> =
            q.by.iter()
                .map(|d| match d {
                    Dim::User => who[0].to_string(),
                    Dim::Key => who[1].to_string(),
                    Dim::Model => who[2].to_string(),
                })
                .collect();
        self.groups.entry(group).or_default().add(add);
    }

    /// The rows, sorted by group.
    pub fn rows(self) -> Vec<Row> {
        self.groups
            .into_iter()
            .map(|(group, counters)| Row { group, counters })
            .collect()
    }
}

/// True when some request of the answer has a cost: then every row shows one (`null` for a
/// group without), else the answer is as it was before prices existed.
fn priced(rows: &[Row]) -> bool {
    rows.iter().any(|r| r.counters.priced > 0)
}

/// True when some request of the answer wrote to a prompt cache: then every row shows the
/// cache-write counts, else the answer is as it was before they were summed.
fn cache_writes(rows: &[Row]) -> bool {
    rows.iter().any(|r| r.counters.cache_write > 0)
}

/// `{"object":"list","data":[{"user":..,"requests":..,"prompt_tokens":..,...}]}`; with
/// prices, each row also has `cost`, `estimated_cost` (decimal strings, `null` when unpriced
/// or in mixed currencies), `currency` and `unpriced_requests`; with prompt-cache writes,
/// `cache_write_tokens` and its part `cache_write_1h_tokens`.
pub fn to_json(rows: &[Row], by: &[Dim]) -> serde_json::Value {
    let priced = priced(rows);
    let cache_writes = cache_writes(rows);
    let data: Vec<serde_json::Value> = rows
        .iter()
        .map(|r| {
            let mut m = serde_json::Map::new();
            for (d, v) in by.iter().zip(&r.group) {
                m.insert(d.name().into(), v.clone().into());
            }
            let c = r.counters;
            m.insert("requests".into(), c.requests.into());
            m.insert("prompt_tokens".into(), c.prompt.into());
            m.insert("completion_tokens".into(), c.completion.into());
            m.insert("cached_tokens".into(), c.cached.into());
            m.insert("reasoning_tokens".into(), c.reasoning.into());
            if cache_writes {
                m.insert("cache_write_tokens".into(), c.cache_write.into());
                m.insert("cache_write_1h_tokens".into(), c.cache_write_1h.into());
            }
            let by_outcome: serde_json::Map<String, serde_json::Value> = OUTCOMES
                .iter()
                .zip(c.outcomes)
                .map(|(o, n)| (o.to_string(), n.into()))
                .collect();
            m.insert("requests_by_outcome".into(), by_outcome.into());
            if priced {
                let cur = c.currency;
                m.insert("cost".into(), cur.amount(c.cost).into());
                m.insert("estimated_cost".into(), cur.amount(c.estimated_cost).into());
                let name = Some(cur.name()).filter(|n| !n.is_empty());
                m.insert("currency".into(), name.into());
                m.insert("unpriced_requests".into(), c.unpriced.into());
            }
            serde_json::Value::Object(m)
        })
        .collect();
    serde_json::json!({"object": "list", "data": data})
}

/// The rows as an aligned text table with a header line; with prices, `cost` (`unpriced`
/// for a group without, `+` when some of its requests are unpriced), `currency`; with
/// prompt-cache writes, `cache_write_tokens` (the 1-hour ones included).
pub fn to_table(rows: &[Row], by: &[Dim]) -> String {
    let priced = priced(rows);
    let cache_writes = cache_writes(rows);
    let mut lines: Vec<Vec<String>> = vec![by
        .iter()
        .map(|d| d.name().to_string())
        .chain(
            [
                "requests",
                "refused",
                "prompt_tokens",
                "completion_tokens",
                "cached_tokens",
                "reasoning_tokens",
            ]
            .iter()
            .map(|s| s.to_string()),
        )
        .chain(
            ["cache_write_tokens"]
                .iter()
                .filter(|_| cache_writes)
                .map(|s| s.to_string()),
        )
        .chain(
            ["cost", "currency"]
                .iter()
                .filter(|_| priced)
                .map(|s| s.to_string()),
        )
        .collect()];
    for r in rows {
        let c = r.counters;
        let mut line: Vec<String> = r.group.iter().map(|v| escape(v)).collect();
        line.extend(
            [
                c.requests,
                c.refused(),
                c.prompt,
                c.completion,
                c.cached,
                c.reasoning,
            ]
            .iter()
            .map(u64::to_string),
        );
        if cache_writes {
            line.push(c.cache_write.to_string());
        }
        if priced {
            line.push(cost_cell(&c));
            line.push(c.currency.name().to_string());
        }
        lines.push(line);
    }
    let widths: Vec<usize> = (0..lines[0].len())
        .map(|i| {
            lines
                .iter()
                .map(|l| l[i].chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for l in &lines {
        let cells: Vec<String> = l
            .iter()
            .enumerate()
            .map(|(i, v)| {
                // Names left-aligned, numbers right-aligned.
                if i < by.len() {
                    format!("{:<w$}", v, w = widths[i])
                } else {
                    format!("{:>w$}", v, w = widths[i])
                }
            })
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// A group's cost for the table: `unpriced` when nothing of it has a cost, the sum with `+`
/// when some of it has none (at least that much), `mixed` for costs in two currencies.
fn cost_cell(c: &Counters) -> String {
    match (c.priced, c.currency.amount(c.cost)) {
        (0, _) => "unpriced".to_string(),
        (_, None) => "mixed".to_string(),
        (_, Some(a)) if c.unpriced > 0 => format!("{}+", a),
        (_, Some(a)) => a,
    }
}

/// Characters that must not reach a terminal as they are: controls (C0, DEL, C1: escape
/// sequences, newlines that forge rows), bidi marks, embeddings, overrides and isolates (they
/// reorder what is shown), zero-width characters and line separators.
fn unsafe_char(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{061C}' | '\u{200B}'..='\u{200F}' | '\u{2028}'..='\u{202E}' | '\u{2060}'..='\u{2069}' | '\u{FEFF}')
}

/// A ledger string for a table cell: `\\`, `\n`, `\r`, `\t` and `\u{…}` for every unsafe
/// character, so what is shown is what is stored, unambiguously.
pub fn escape(s: &str) -> String {
    if !s.chars().any(|c| c == '\\' || unsafe_char(c)) {
        return s.to_string();
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if unsafe_char(c) => out.push_str(&format!("\\u{{{:04x}}}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

/// JSON text with every unsafe character that serde_json leaves raw (DEL, C1 controls, bidi
/// and zero-width marks) written as a `\uXXXX` escape: the same JSON value, safe to print.
pub fn json_for_terminal(json: &str) -> String {
    let mut out = String::with_capacity(json.len());
    for c in json.chars() {
        if unsafe_char(c) {
            // Every such character is in the Basic Multilingual Plane: one escape.
            out.push_str(&format!("\\u{:04x}", c as u32));
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stream::usage::Usage;

    /// The shared store keeps a cost under a name carrying its currency, and reads it back
    /// with the priced/unpriced counts; two currencies stay apart (mixed, never summed).
    #[test]
    fn store_fields_carry_cost_and_currency_and_read_back() {
        let priced = Entry {
            cost: Some(12_150),
            currency: "EUR".into(),
            ..e("2026-12-04T10:00:00.000Z", "a", "m", 10, 5)
        };
        let owned = |e: &Entry| -> Vec<(String, u64)> {
            store_fields(e)
                .into_iter()
                .map(|(k, n)| (k.into_owned(), n))
                .collect()
        };
        let fields = owned(&priced);
        assert!(
            fields.contains(&("cost:EUR".to_string(), 12_150)),
            "{:?}",
            fields
        );
        assert!(fields.contains(&("priced".to_string(), 1)), "{:?}", fields);
        assert!(!fields.iter().any(|f| f.0.starts_with("estimated_cost")));
        let mut all = fields.clone();
        all.extend(owned(&e("2026-12-04T10:00:00.000Z", "a", "m", 3, 1)));
        let c = counters_of(&all);
        assert_eq!(
            (c.requests, c.priced, c.unpriced, c.cost, c.currency.name()),
            (2, 1, 1, 12_150, "EUR")
        );
        let dollars = Entry {
            cost: Some(1),
            currency: "USD".into(),
            ..e("2026-12-04T10:00:00.000Z", "a", "m", 1, 1)
        };
        all.extend(owned(&dollars));
        assert_eq!(counters_of(&all).currency.name(), "mixed");
    }

    /// Prompt-cache writes reach the shared store and come back summed; answers show them
    /// only when some request wrote to a cache, so answers without any keep their bytes.
    #[test]
    fn cache_writes_are_summed_and_shown_only_when_there_are_some() {
        let mut cached = e("2026-12-04T10:00:00.000Z", "a", "m", 10, 5);
        cached.usage.cache_write = 1500;
        cached.usage.cache_write_1h = 500;
        let fields: Vec<(String, u64)> = store_fields(&cached)
            .into_iter()
            .chain(store_fields(&cached))
            .map(|(k, n)| (k.into_owned(), n))
            .collect();
        let c = counters_of(&fields);
        assert_eq!((c.cache_write, c.cache_write_1h), (3000, 1000));

        let q = Query {
            since: None,
            until: None,
            by: vec![Dim::User],
            user: None,
        };
        let mut t = Totals::new(&q);
        t.add(&e("2026-12-04T10:00:00.000Z", "b", "m", 1, 1));
        let plain = to_json(&t.rows(), &q.by);
        assert!(
            plain["data"][0].get("cache_write_tokens").is_none(),
            "{}",
            plain
        );
        assert!(!to_table(&Totals::new(&q).rows(), &q.by).contains("cache_write"));
        let mut t = Totals::new(&q);
        t.add(&cached);
        t.add(&e("2026-12-04T10:00:00.000Z", "b", "m", 1, 1));
        let rows = t.rows();
        let json = to_json(&rows, &q.by);
        assert_eq!(
            (
                &json["data"][0]["cache_write_tokens"],
                &json["data"][0]["cache_write_1h_tokens"],
                &json["data"][1]["cache_write_tokens"]
            ),
            (
                &serde_json::json!(1500),
                &serde_json::json!(500),
                &serde_json::json!(0)
            ),
            "{}",
            json
        );
        let table = to_table(&rows, &q.by);
        assert!(
            table
                .lines()
                .next()
                .unwrap_or("")
                .contains("cache_write_tokens"),
            "{}",
            table
        );
        assert!(table.contains("1500"), "{}", table);
    }

    fn e(ts: &str, user: &str, model: &str, p: u64, c: u64) -> Entry {
        Entry {
            ts: ts.into(),
            outcome: "complete".into(),
            user: user.into(),
            key: "k".into(),
            model: model.into(),
            usage: Usage {
                prompt: p,
                completion: c,
                ..Usage::default()
            },
            ..Entry::default()
        }
    }

    #[test]
    fn sums_by_range_and_group() {
        let entries = [
            e("2026-10-31T23:59:59.999Z", "a", "m1", 100, 100),
            e("2026-11-01T00:00:00.000Z", "a", "m1", 1, 2),
            e("2026-11-15T10:00:00.000Z", "a", "m2", 3, 4),
            e("2026-11-30T23:00:00.000Z", "b", "m1", 5, 6),
            e("2026-12-01T00:00:00.000Z", "b", "m1", 1000, 1000),
        ];
        let q = |by: &str| Query {
            since: clock::parse_day("2026-11-01"),
            until: clock::parse_day("2026-12-01"),
            by: parse_by(by).unwrap(),
            user: None,
        };
        let run = |q: &Query| {
            let mut t = Totals::new(q);
            for x in &entries {
                t.add(x);
            }
            t.rows()
        };
        let rows = run(&q("user"));
        assert_eq!(rows.len(), 2);
        assert_eq!(
            (
                rows[0].group[0].as_str(),
                rows[0].counters.requests,
                rows[0].counters.prompt
            ),
            ("a", 2, 4)
        );
        assert_eq!(
            (rows[1].group[0].as_str(), rows[1].counters.completion),
            ("b", 6)
        );
        let rows = run(&q("user,model"));
        assert_eq!(rows.len(), 3);
        let json = to_json(&rows, &parse_by("user,model").unwrap());
        assert_eq!(json["data"][1]["model"], "m2");
        assert_eq!(
            json["data"][1]["requests_by_outcome"],
            serde_json::json!({"complete": 1, "client_gone": 0, "upstream_failed": 0,
                               "error": 0, "refused": 0})
        );
        let table = to_table(&rows, &parse_by("user,model").unwrap());
        assert!(
            table.starts_with("user  model  requests  refused"),
            "{}",
            table
        );
        assert!(parse_by("team").is_err());
    }

    #[test]
    fn costs_sum_per_currency_and_unpriced_requests_are_never_free() {
        let priced = |cost: u64, cur: &str, estimated: bool| Entry {
            cost: Some(cost),
            currency: cur.into(),
            usage: Usage {
                estimated,
                ..e("2026-11-02T00:00:00.000Z", "a", "m", 1, 1).usage
            },
            ..e("2026-11-02T00:00:00.000Z", "a", "m", 1, 1)
        };
        let q = Query {
            by: parse_by("user").unwrap(),
            ..Query::default()
        };
        let run = |entries: &[Entry]| {
            let mut t = Totals::new(&q);
            entries.iter().for_each(|x| t.add(x));
            t.rows()
        };
        let by = parse_by("user").unwrap();
        // Without any priced line the answer is as it was.
        let plain = run(&[e("2026-11-02T00:00:00.000Z", "a", "m", 1, 1)]);
        assert!(to_json(&plain, &by)["data"][0].get("cost").is_none());
        let rows = run(&[
            priced(1_500_000, "USD", false),
            priced(250, "USD", true),
            e("2026-11-02T00:00:00.000Z", "a", "m", 3, 3),
            e("2026-11-02T00:00:00.000Z", "b", "m", 3, 3),
        ]);
        let json = to_json(&rows, &by);
        assert_eq!(
            json["data"][0],
            serde_json::json!({"user":"a","requests":3,"prompt_tokens":5,"completion_tokens":5,
                "cached_tokens":0,"reasoning_tokens":0,
                "requests_by_outcome":{"complete":3,"client_gone":0,"upstream_failed":0,"error":0,"refused":0},
                "cost":"1.500250","estimated_cost":"0.000250","currency":"USD","unpriced_requests":1})
        );
        assert_eq!(
            (
                &json["data"][1]["cost"],
                &json["data"][1]["currency"],
                &json["data"][1]["unpriced_requests"]
            ),
            (
                &serde_json::Value::Null,
                &serde_json::Value::Null,
                &serde_json::json!(1)
            )
        );
        let table = to_table(&rows, &by);
        let cells: Vec<Vec<&str>> = table
            .lines()
            .map(|l| l.split_whitespace().collect())
            .collect();
        assert_eq!(cells[1][7..], ["1.500250+", "USD"], "{}", table);
        assert_eq!(cells[2][7..], ["unpriced"], "{}", table);
        // Two currencies are never summed.
        let mixed = run(&[priced(1, "USD", false), priced(2, "EUR", false)]);
        let json = to_json(&mixed, &by);
        assert_eq!(
            (&json["data"][0]["cost"], &json["data"][0]["currency"]),
            (&serde_json::Value::Null, &serde_json::json!("mixed"))
        );
    }

    #[test]
    fn ledger_strings_reach_a_terminal_escaped() {
        let nasty = "a\u{1b}[31mred\nforged  9  9\u{202e}cba\u{2066}\u{7f}\u{85}\\z";
        assert_eq!(
            escape(nasty),
            "a\\u{001b}[31mred\\nforged  9  9\\u{202e}cba\\u{2066}\\u{007f}\\u{0085}\\\\z"
        );
        assert_eq!(escape("plain-ü-名"), "plain-ü-名");
        let json = serde_json::json!({"user": nasty}).to_string();
        let safe = json_for_terminal(&json);
        assert!(safe.chars().all(|c| !unsafe_char(c)), "{}", safe);
        let back: serde_json::Value = serde_json::from_str(&safe).unwrap();
        assert_eq!(back["user"], nasty);
    }
}
