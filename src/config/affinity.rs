//! `"affinity"`: keep a conversation's requests on one backend (the one holding its prompt
//! cache); what the conversation key is read from.

use super::json::{check_fields, string_list, type_name, FieldError};
use serde_json::Value;

/// Where an endpoint reads a request's conversation key from, first found wins.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Affinity {
    /// Request headers, in order (`headers`; default `X-OpenWebUI-Chat-Id`,
    /// `X-Claude-Code-Session-Id`).
    pub headers: Vec<String>,
    /// Then the user the request names (`byUser`, default on).
    pub by_user: bool,
}

/// The headers read when `affinity` does not list its own: Open WebUI's chat id and Claude
/// Code's session id, both stable over a conversation's turns.
pub const DEFAULT_HEADERS: &[&str] = &["X-OpenWebUI-Chat-Id", "X-Claude-Code-Session-Id"];

const FIELDS: &[&str] = &["headers", "byUser"];

/// `"affinity": true | false | {"headers": [...], "byUser": bool}`; absent, null or false is
/// off. The error is located inside `affinity`.
pub(super) fn parse_affinity(v: Option<&Value>) -> Result<Option<Affinity>, FieldError> {
    let obj = match v {
        None | Some(Value::Null) | Some(Value::Bool(false)) => return Ok(None),
        Some(Value::Bool(true)) => return Ok(Some(default_affinity())),
        Some(Value::Object(obj)) => obj,
        Some(v) => {
            return Err(FieldError::new(
                "",
                format!(
                    "expected true, false or an object like {{\"headers\": [\"X-OpenWebUI-Chat-Id\"], \"byUser\": true}}, got {}",
                    type_name(v)
                ),
            ))
        }
    };
    check_fields(obj, FIELDS)?;
    let headers = match string_list(obj.get("headers"), "header names")
        .map_err(|m| FieldError::new("headers", m))?
    {
        Some(list) => list,
        None => default_affinity().headers,
    };
    if let Some(bad) = headers
        .iter()
        .position(|h| !crate::http::headers::is_valid_name(h))
    {
        return Err(FieldError::new(
            format!("headers[{}]", bad),
            "not a valid HTTP header name",
        ));
    }
    let by_user = match obj.get("byUser") {
        None | Some(Value::Null) => true,
        Some(Value::Bool(b)) => *b,
        Some(v) => {
            return Err(FieldError::new(
                "byUser",
                format!("expected true or false, got {}", type_name(v)),
            ))
        }
    };
    if headers.is_empty() && !by_user {
        return Err(FieldError::new(
            "",
            "no conversation key left: list at least one header or leave byUser on (or set affinity to false)",
        ));
    }
    Ok(Some(Affinity { headers, by_user }))
}

fn default_affinity() -> Affinity {
    Affinity {
        headers: DEFAULT_HEADERS.iter().map(|h| h.to_string()).collect(),
        by_user: true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// The parse, or the error's location and a piece of its message.
    type Want = Result<Option<Affinity>, (&'static str, &'static str)>;

    #[test]
    fn affinity_table() {
        let on = |headers: &[&str], by_user| -> Want {
            Ok(Some(Affinity {
                headers: headers.iter().map(|h| h.to_string()).collect(),
                by_user,
            }))
        };
        let cases: Vec<(Value, Want)> = vec![
            (json!(null), Ok(None)),
            (json!(false), Ok(None)),
            (json!(true), on(DEFAULT_HEADERS, true)),
            (json!({}), on(DEFAULT_HEADERS, true)),
            (json!({"byUser": false}), on(DEFAULT_HEADERS, false)),
            (json!({"headers": ["X-Chat"]}), on(&["X-Chat"], true)),
            (json!({"headers": []}), on(&[], true)),
            (
                json!({"headers": [], "byUser": false}),
                Err(("", "no conversation key")),
            ),
            (
                json!({"header": ["X-Chat"]}),
                Err(("header", "did you mean \"headers\"?")),
            ),
            (
                json!({"byuser": true}),
                Err(("byuser", "did you mean \"byUser\"?")),
            ),
            (
                json!({"byUser": "yes"}),
                Err(("byUser", "expected true or false")),
            ),
            (
                json!({"headers": "X-Chat"}),
                Err(("headers", "expected an array")),
            ),
            (
                json!({"headers": ["ok", "a b"]}),
                Err(("headers[1]", "not a valid HTTP header")),
            ),
            (json!("on"), Err(("", "expected true, false or an object"))),
            (json!(1), Err(("", "got a number"))),
        ];
        for (i, (v, want)) in cases.into_iter().enumerate() {
            let got = parse_affinity(Some(&v));
            match (got, want) {
                (Ok(got), Ok(want)) => assert_eq!(got, want, "case {}", i),
                (Err(e), Err((location, message))) => {
                    assert_eq!(e.location, location, "case {}", i);
                    assert!(e.message.contains(message), "case {}: {}", i, e.message);
                }
                (got, want) => panic!("case {}: got {:?}, want {:?}", i, got, want),
            }
        }
        assert_eq!(parse_affinity(None), Ok(None));
    }
}
