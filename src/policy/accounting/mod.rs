//! Accounting: the usage ledger (one JSON line per finished request) and the totals that
//! `/usage` and `modelmux usage` read back from it.

pub mod cost;
pub mod ledger;
pub mod totals;

/// The ledger's `outcome` of a request modelmux refused before asking any backend.
pub const REFUSED: &str = "refused";

use crate::clock;
use totals::{Query, Totals};

/// Parses `since`/`until` (`YYYY-MM-DD` or an RFC 3339 time) and `by` into a query.
pub fn query(
    since: Option<&str>,
    until: Option<&str>,
    by: Option<&str>,
    user: Option<&str>,
) -> Result<Query, String> {
    let day = |name: &str, v: Option<&str>| -> Result<Option<i64>, String> {
        v.map(|s| {
            clock::parse_day(s).ok_or_else(|| {
                format!(
                    "`{}` must be a date such as 2026-11-01, got `{}`",
                    name,
                    crate::http::api_error::clip(s, 40)
                )
            })
        })
        .transpose()
    };
    Ok(Query {
        since: day("since", since)?,
        until: day("until", until)?,
        by: totals::parse_by(by.unwrap_or("user"))?,
        user: user.map(str::to_string),
    })
}

/// `modelmux usage`: the same totals read straight from the ledger files, as a table or JSON,
/// with every control, bidi and zero-width character of a ledger string escaped.
pub fn usage_command(log: &std::path::Path, q: &Query, json: bool) -> Result<String, String> {
    let mut t = Totals::new(q);
    ledger::scan(ledger::open_sources(log)?, q.since, q.until, |e| t.add(&e))?;
    let rows = t.rows();
    Ok(if json {
        format!(
            "{}\n",
            totals::json_for_terminal(&totals::to_json(&rows, &q.by).to_string())
        )
    } else {
        totals::to_table(&rows, &q.by)
    })
}
