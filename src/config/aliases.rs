//! `aliases`: other names a model answers to, exact ids or globs (`"claude-sonnet-*"`), so a
//! client that sends its own model ids (Claude Code sends `claude-…` ids) lands on a local model.
//! Which endpoint an id goes to, first match wins: a model id (configured, or listed by a
//! discovering wildcard), an exact alias, the most specific glob alias (most characters other
//! than `*`; equal ones in file order), a wildcard's prefix.

use super::endpoint::Endpoint;
use super::json::FieldError;

/// True when an alias is a pattern: `*` matches any run of characters, `?` exactly one.
pub fn is_glob(alias: &str) -> bool {
    alias.contains(['*', '?'])
}

/// No alias is a configured model id (it would never be used), and no two endpoints claim the
/// same alias (which one a request goes to would depend on file order).
pub(super) fn check_aliases(endpoints: &[Endpoint]) -> Result<(), FieldError> {
    for (n, ep) in endpoints.iter().enumerate() {
        for (i, alias) in ep.aliases.iter().enumerate() {
            let at = || format!("endpoints.{}.aliases[{}]", ep.id, i);
            if endpoints
                .iter()
                .any(|e| e.wildcard.is_none() && &e.id == alias)
            {
                return Err(FieldError::new(
                    at(),
                    format!("\"{}\" is a configured model id, not an alias", alias),
                ));
            }
            if let Some(other) = endpoints[..n].iter().find(|e| e.aliases.contains(alias)) {
                return Err(FieldError::new(
                    at(),
                    format!(
                        "\"{}\" is already an alias of model \"{}\"; an alias names one model",
                        alias, other.id
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// The endpoint an alias names: an exact alias first, then the most specific glob.
pub fn lookup(endpoints: &[Endpoint], id: &str) -> Option<usize> {
    if let Some(i) = endpoints
        .iter()
        .position(|e| e.aliases.iter().any(|a| !is_glob(a) && a == id))
    {
        return Some(i);
    }
    let mut best: Option<(usize, usize)> = None;
    for (i, e) in endpoints.iter().enumerate() {
        for a in e.aliases.iter().filter(|a| is_glob(a)) {
            let literal = a.chars().filter(|c| *c != '*').count();
            // Strictly more specific only: of equals, the first in the file stays.
            if best.is_none_or(|(_, b)| literal > b) && crate::glob::matches(a, id) {
                best = Some((i, literal));
            }
        }
    }
    best.map(|(i, _)| i)
}

#[cfg(test)]
mod tests {
    fn config(text: &str) -> Result<crate::config::Config, String> {
        crate::config::parse("c", text, &Default::default(), &|_| None).map_err(|e| e.to_string())
    }

    #[test]
    fn lookup_order() {
        let c = config(
            r#"{"endpoints":{
                "a":{"url":"http://a","aliases":["claude-*","exact-b-too?"]},
                "b":{"url":"http://b","aliases":["claude-opus-*","claude-opus-4"]},
                "c":{"url":"http://c","aliases":["claude-opus-4-*","*"]},
                "d":{"url":"http://d","aliases":["claude-?aiku*"]}}}"#,
        )
        .unwrap();
        let cases = [
            ("claude-sonnet-4-5", Some(0)),
            ("claude-opus-3", Some(1)),
            // exact beats a more specific glob
            ("claude-opus-4", Some(1)),
            ("claude-opus-4-1", Some(2)),
            // `claude-?aiku*` (12 literal characters) beats `claude-*` (7)
            ("claude-haiku-4-5", Some(3)),
            ("anything", Some(2)),
            ("a", Some(2)),
        ];
        for (id, want) in cases {
            assert_eq!(super::lookup(&c.endpoints, id), want, "{}", id);
        }
        let c = config(r#"{"endpoints":{"a":{"url":"http://a","aliases":["x-*"]}}}"#).unwrap();
        assert_eq!(super::lookup(&c.endpoints, "y-1"), None);
    }

    #[test]
    fn load_errors_name_the_field() {
        let cases = [
            (
                r#"{"endpoints":{"a":{"url":"http://a","aliases":"claude-*"}}}"#,
                "config c: endpoints.a.aliases: expected an array of model ids or globs (e.g. [\"claude-sonnet-*\"]), got a string",
            ),
            (
                r#"{"endpoints":{"a":{"url":"http://a","aliases":["x",3]}}}"#,
                "config c: endpoints.a.aliases[1]: expected a model id or glob as a string, got a number",
            ),
            (
                r#"{"endpoints":{"a":{"url":"http://a","aliases":[""]}}}"#,
                "config c: endpoints.a.aliases[0]: expected a model id or glob, got an empty string",
            ),
            (
                r#"{"endpoints":{"a":{"url":"http://a","aliases":["x","x"]}}}"#,
                "config c: endpoints.a.aliases[1]: \"x\" is listed twice",
            ),
            (
                r#"{"endpoints":{"a":{"url":"http://a","aliases":["x"]},"b":{"url":"http://b","aliases":["y","x"]}}}"#,
                "config c: endpoints.b.aliases[1]: \"x\" is already an alias of model \"a\"; an alias names one model",
            ),
            (
                r#"{"endpoints":{"a":{"url":"http://a","aliases":["b"]},"b":{"url":"http://b"}}}"#,
                "config c: endpoints.a.aliases[0]: \"b\" is a configured model id, not an alias",
            ),
            (
                r#"{"endpoints":{"o/*":{"url":"http://a","aliases":["c-*"]}}}"#,
                "config c: endpoints.o/*.aliases: a wildcard endpoint serves many models; put aliases on a model with one id",
            ),
        ];
        for (text, want) in cases {
            assert_eq!(config(text).unwrap_err(), want);
        }
    }
}
