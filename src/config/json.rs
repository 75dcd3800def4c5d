//! Typed reads of JSON values whose errors say where and what was expected.

use super::ConfigError;
use serde_json::{Map, Value};

/// A problem at a place inside the file, before the file name is attached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct FieldError {
    /// Dotted path from the object being read, e.g. `backends[0].url`; empty for the object.
    pub location: String,
    /// What is wrong and what was expected.
    pub message: String,
}

impl FieldError {
    /// A problem at `location`.
    pub fn new(location: impl Into<String>, message: impl Into<String>) -> FieldError {
        FieldError {
            location: location.into(),
            message: message.into(),
        }
    }

    /// The same problem seen from the enclosing value: `url` inside `backends[0]` becomes
    /// `backends[0].url`.
    pub fn within(self, parent: &str) -> FieldError {
        let location = if self.location.is_empty() {
            parent.to_string()
        } else if parent.is_empty() || self.location.starts_with('[') {
            format!("{}{}", parent, self.location)
        } else {
            format!("{}.{}", parent, self.location)
        };
        FieldError { location, ..self }
    }

    /// The problem as the error the operator sees, naming the file.
    pub fn in_file(self, file: &str) -> ConfigError {
        ConfigError {
            file: file.to_string(),
            location: self.location,
            message: self.message,
        }
    }
}

/// Locates a plain message at `location`, for `map_err`.
pub(super) fn at(location: &str) -> impl FnOnce(String) -> FieldError + '_ {
    move |message| FieldError::new(location, message)
}

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

/// An optional string field of an object (`None` when absent or null).
pub(super) fn opt_string(
    obj: &Map<String, Value>,
    field: &str,
) -> Result<Option<String>, FieldError> {
    match obj.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(v) => Err(FieldError::new(
            field,
            format!("expected a string, got {}", type_name(v)),
        )),
    }
}

/// The kind of a JSON value with its article, for "expected X, got Y" messages.
pub(crate) fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::FieldError;

    #[test]
    fn locations_nest_with_dots_and_brackets() {
        let e = FieldError::new("url", "bad")
            .within("backends[0]")
            .within("endpoints.m");
        assert_eq!(e.location, "endpoints.m.backends[0].url");
        assert_eq!(
            FieldError::new("[2]", "bad").within("fallbacks").location,
            "fallbacks[2]"
        );
        assert_eq!(FieldError::new("", "bad").within("retry").location, "retry");
        assert_eq!(FieldError::new("x", "bad").within("").location, "x");
    }
}
