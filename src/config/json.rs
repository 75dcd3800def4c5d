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

/// Places a located problem inside `parent`, for `map_err`.
pub(super) fn under(parent: &str) -> impl FnOnce(FieldError) -> FieldError + '_ {
    move |e| e.within(parent)
}

/// Fails on the first field of `obj` (file order) that is not in `known`, located at the field.
/// Every object of the config is checked against its list: a mistyped name must not silently
/// turn off what it was meant to set. Keys starting with `_` are comments, allowed anywhere
/// (`remove_comments` drops them before parsing; skipped here too for objects read alone).
pub(super) fn check_fields(obj: &Map<String, Value>, known: &[&str]) -> Result<(), FieldError> {
    match obj
        .keys()
        .find(|k| !k.starts_with('_') && !known.contains(&k.as_str()))
    {
        Some(k) => Err(FieldError::new(k.as_str(), unknown_field(k, known))),
        None => Ok(()),
    }
}

/// "unknown field; did you mean \"proxyKeys\"?" for a near miss (the same name in another case,
/// an edit distance of 2 or less, or the name without its unit suffix such as `Secs`), else the
/// list of known fields.
pub(crate) fn unknown_field(field: &str, known: &[&str]) -> String {
    match suggestion(field, known) {
        Some(s) => format!("unknown field; did you mean \"{}\"?", s),
        None => format!("unknown field; expected {}", one_of(known)),
    }
}

fn suggestion<'a>(field: &str, known: &[&'a str]) -> Option<&'a str> {
    if let Some(k) = known.iter().find(|k| k.eq_ignore_ascii_case(field)) {
        return Some(k);
    }
    let lower = field.to_ascii_lowercase();
    let best = known
        .iter()
        .map(|k| (edit_distance(&lower, &k.to_ascii_lowercase()), *k))
        .min_by_key(|(d, _)| *d)
        .filter(|(d, _)| *d <= 2)
        .map(|(_, k)| k);
    best.or_else(|| {
        known.iter().copied().find(|k| {
            ["Secs", "Ms", "Bytes"]
                .iter()
                .any(|unit| k.eq_ignore_ascii_case(&format!("{}{}", field, unit)))
        })
    })
}

/// Levenshtein distance over characters.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = (above + 1)
                .min(row[j] + 1)
                .min(diagonal + usize::from(ca != *cb));
            diagonal = above;
        }
    }
    row[b.len()]
}

/// "a, b or c".
fn one_of(names: &[&str]) -> String {
    match names {
        [] => "none".to_string(),
        [one] => one.to_string(),
        [rest @ .., last] => format!("{} or {}", rest.join(", "), last),
    }
}

/// Drops every object key that starts with `_` (`"_comment"`), at any depth, so people can
/// annotate the file; nothing reads them, not even `${VAR}` substitution.
pub(super) fn remove_comments(v: &mut Value) {
    match v {
        Value::Object(m) => {
            m.retain(|k, _| !k.starts_with('_'));
            m.values_mut().for_each(remove_comments);
        }
        Value::Array(items) => items.iter_mut().for_each(remove_comments),
        _ => {}
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

/// A wrong value as the message shows it: numbers and short strings as written (`"1"`, so a
/// quoted number is visible), else its kind.
pub(super) fn shown(v: &Value) -> String {
    match v {
        Value::Number(n) => n.to_string(),
        Value::String(s) if s.is_empty() => "an empty string".to_string(),
        Value::String(s) if s.chars().count() <= 40 => format!("\"{}\"", s),
        other => type_name(other).to_string(),
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

/// Reads a small settings object whose fields are all numbers in a range, e.g. `retry`;
/// returns the values in `spec` order (`None` where absent). `spec` is the object's whole list
/// of fields: any other is an error, located at the field.
pub(super) fn number_fields(
    v: &Value,
    example: &str,
    spec: &[(&str, f64, f64)],
) -> Result<Vec<Option<f64>>, FieldError> {
    let obj = v.as_object().ok_or_else(|| {
        FieldError::new(
            "",
            format!("expected an object like {}, got {}", example, type_name(v)),
        )
    })?;
    let names: Vec<&str> = spec.iter().map(|(n, _, _)| *n).collect();
    check_fields(obj, &names)?;
    spec.iter()
        .map(|(name, min, max)| match obj.get(*name) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v
                .as_f64()
                .filter(|n| n >= min && n <= max)
                .map(Some)
                .ok_or_else(|| {
                    FieldError::new(*name, format!("expected a number from {} to {}", min, max))
                }),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::{check_fields, remove_comments, unknown_field, FieldError};
    use serde_json::json;

    #[test]
    fn near_misses_get_a_suggestion() {
        let known = [
            "proxyKeys",
            "openWebUI",
            "usageLog",
            "maxQueueWaitSecs",
            "name",
        ];
        for (typo, meant) in [
            ("proxyKey", "proxyKeys"),
            ("openWebUi", "openWebUI"),
            ("OPENWEBUI", "openWebUI"),
            ("usagelog", "usageLog"),
            ("nmae", "name"),
            ("maxQueueWait", "maxQueueWaitSecs"),
        ] {
            assert_eq!(
                unknown_field(typo, &known),
                format!("unknown field; did you mean \"{}\"?", meant)
            );
        }
        assert_eq!(
            unknown_field("colour", &["url", "apiKey", "weight"]),
            "unknown field; expected url, apiKey or weight"
        );
    }

    #[test]
    fn comments_are_dropped_at_any_depth() {
        let mut v = json!({"_c": "${NOPE}", "a": [{"_x": 1, "b": 2}], "o": {"_y": {}}});
        remove_comments(&mut v);
        assert_eq!(v, json!({"a": [{"b": 2}], "o": {}}));
        let obj = json!({"url": "u", "_note": 1, "wieght": 2});
        let e = check_fields(obj.as_object().unwrap(), &["url", "weight"]).unwrap_err();
        assert_eq!(
            (e.location.as_str(), e.message.as_str()),
            ("wieght", "unknown field; did you mean \"weight\"?")
        );
    }

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
