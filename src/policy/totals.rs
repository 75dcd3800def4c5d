//! Usage totals by day, user, key and model: kept in memory from the ledger, and summed over a
//! date range by any of user, key and model for `/usage` and `modelmux usage`.

use super::clock;
use super::ledger::Entry;
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
        // Saturating: a ledger line may hold any number a backend reported.
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
                    crate::api_error::clip(other, 32)
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

/// Totals per (day, user, key, model).
#[derive(Debug, Default)]
pub struct Totals {
    cells: BTreeMap<(i64, String, String, String), Counters>,
}

impl Totals {
    /// Counts one ledger entry (entries whose time cannot be read are skipped).
    pub fn add(&mut self, e: &Entry) {
        let Some(day) = clock::parse_day(&e.ts) else {
            return;
        };
        let c = self
            .cells
            .entry((day, e.user.clone(), e.key.clone(), e.model.clone()))
            .or_default();
        let mut outcomes = [0; 5];
        if let Some(i) = OUTCOMES.iter().position(|o| *o == e.outcome) {
            outcomes[i] = 1;
        }
        c.add(&Counters {
            requests: 1,
            prompt: e.usage.prompt,
            completion: e.usage.completion,
            cached: e.usage.cached,
            reasoning: e.usage.reasoning,
            outcomes,
        });
    }

    /// The answer to `q`, rows sorted by group.
    pub fn query(&self, q: &Query) -> Vec<Row> {
        let mut groups: BTreeMap<Vec<String>, Counters> = BTreeMap::new();
        for ((day, user, key, model), c) in &self.cells {
            if q.since.is_some_and(|s| *day < s) || q.until.is_some_and(|u| *day >= u) {
                continue;
            }
            if q.user.as_ref().is_some_and(|u| u != user) {
                continue;
            }
            let group =
                q.by.iter()
                    .map(|d| match d {
                        Dim::User => user.clone(),
                        Dim::Key => key.clone(),
                        Dim::Model => model.clone(),
                    })
                    .collect();
            groups.entry(group).or_default().add(c);
        }
        groups
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
        let mut line = r.group.clone();
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::usage::Usage;

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
        let mut t = Totals::default();
        t.add(&e("2026-10-31T23:59:59.999Z", "a", "m1", 100, 100));
        t.add(&e("2026-11-01T00:00:00.000Z", "a", "m1", 1, 2));
        t.add(&e("2026-11-15T10:00:00.000Z", "a", "m2", 3, 4));
        t.add(&e("2026-11-30T23:00:00.000Z", "b", "m1", 5, 6));
        t.add(&e("2026-12-01T00:00:00.000Z", "b", "m1", 1000, 1000));
        let q = |by: &str| Query {
            since: clock::parse_day("2026-11-01"),
            until: clock::parse_day("2026-12-01"),
            by: parse_by(by).unwrap(),
            user: None,
        };
        let rows = t.query(&q("user"));
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
        let rows = t.query(&q("user,model"));
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
}
