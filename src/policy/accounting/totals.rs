//! Usage totals by day, user, key and model: kept in memory from the ledger, and summed over a
//! date range by any of user, key and model for `/usage` and `modelmux usage`.

use super::ledger::Entry;
use crate::clock;
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
    /// Reasoning tokens.
    pub reasoning: u64,
    /// Requests by the ledger's `outcome`, in `OUTCOMES` order (other values are not counted).
    pub outcomes: [u64; 5],
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
        self.reasoning = self.reasoning.saturating_add(o.reasoning);
        for (a, b) in self.outcomes.iter_mut().zip(o.outcomes) {
            *a = a.saturating_add(b);
        }
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
        reasoning: e.usage.reasoning,
        outcomes,
    }
}

/// Names of the counters the shared store keeps per day and identity (hash fields), besides
/// one per outcome (`outcome:<name>`).
const FIELDS: [&str; 5] = ["requests", "prompt", "completion", "cached", "reasoning"];
const OUTCOME_FIELDS: [&str; 5] = [
    "outcome:complete",
    "outcome:client_gone",
    "outcome:upstream_failed",
    "outcome:error",
    "outcome:refused",
];

/// What one ledger line adds to the shared store's totals, by field name. A cost is one more
/// field here once requests have one (a whole number, e.g. micro-units: the store adds with
/// `HINCRBY`), and one more arm in `counters_of`; zero counters are left out (an absent field
/// reads 0).
pub fn store_fields(e: &Entry) -> Vec<(&'static str, u64)> {
    let c = entry_counters(e);
    let mut out: Vec<(&'static str, u64)> = FIELDS
        .iter()
        .copied()
        .zip([c.requests, c.prompt, c.completion, c.cached, c.reasoning])
        .collect();
    out.extend(OUTCOME_FIELDS.iter().copied().zip(c.outcomes));
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

/// `{"object":"list","data":[{"user":..,"requests":..,"prompt_tokens":..,...}]}`.
pub fn to_json(rows: &[Row], by: &[Dim]) -> serde_json::Value {
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
            let by_outcome: serde_json::Map<String, serde_json::Value> = OUTCOMES
                .iter()
                .zip(c.outcomes)
                .map(|(o, n)| (o.to_string(), n.into()))
                .collect();
            m.insert("requests_by_outcome".into(), by_outcome.into());
            serde_json::Value::Object(m)
        })
        .collect();
    serde_json::json!({"object": "list", "data": data})
}

/// The rows as an aligned text table with a header line.
pub fn to_table(rows: &[Row], by: &[Dim]) -> String {
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
