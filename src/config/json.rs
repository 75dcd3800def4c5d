//! Typed reads of JSON values whose errors say what was expected.

use serde_json::{Map, Value};

pub(super) type FieldError = (String, String);

/// An optional array of strings (`None` when absent or null); the error says what was expected.
pub(super) fn string_list(v: Option<&Value>, what: &str) -> Result<Option<Vec<String>>, String> {
    let expected = || format!("expected an array of {}", what);
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Array(items)) => items
            .iter()
            .map(|item| item.as_str().map(str::to_string).ok_or_else(expected))
            .collect::<Result<Vec<_>, _>>()
            .map(Some),
        Some(other) => Err(format!("{}, got {}", expected(), type_name(other))),
    }
}

pub(super) fn opt_string(
    obj: &Map<String, Value>,
    field: &str,
) -> Result<Option<String>, FieldError> {
    match obj.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(v) => Err((
            field.to_string(),
            format!("expected a string, got {}", type_name(v)),
        )),
    }
}

pub(super) fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}
