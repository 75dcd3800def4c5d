//! `${VAR}` references in config strings, filled from the environment at (re)load.

use super::json::FieldError;
use serde_json::Value;

/// Replaces `${VAR}` in every string of the tree; the error names the location and the variable,
/// or every unset variable at once (fixing them one start at a time is tedious).
pub(super) fn substitute_env(
    v: &mut Value,
    loc: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<(), FieldError> {
    let mut missing = Vec::new();
    substitute(v, loc, env, &mut missing)?;
    match missing.as_slice() {
        [] => Ok(()),
        [(loc, name)] => Err(FieldError::new(
            loc.as_str(),
            format!("environment variable {} is not set", name),
        )),
        all => Err(FieldError::new(
            "",
            format!(
                "environment variables not set: {}",
                all.iter()
                    .map(|(loc, name)| format!("{} (at {})", name, loc))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )),
    }
}

/// The walk of `substitute_env`; unset variables go to `missing` as (location, name).
fn substitute(
    v: &mut Value,
    loc: &str,
    env: &dyn Fn(&str) -> Option<String>,
    missing: &mut Vec<(String, String)>,
) -> Result<(), FieldError> {
    match v {
        Value::String(s) if s.contains("${") => match expand(s, env) {
            Ok(Expanded::Done(out)) => *s = out,
            Ok(Expanded::Unset(names)) => {
                missing.extend(names.into_iter().map(|n| (loc.to_string(), n)))
            }
            Err(m) => return Err(FieldError::new(loc, m)),
        },
        Value::Array(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                substitute(item, &format!("{}[{}]", loc, i), env, missing)?;
            }
        }
        Value::Object(m) => {
            for (k, item) in m.iter_mut() {
                let child = if loc.is_empty() {
                    k.clone()
                } else {
                    format!("{}.{}", loc, k)
                };
                substitute(item, &child, env, missing)?;
            }
        }
        _ => {}
    }
    Ok(())
}

/// A string with its references filled in, or the variables it names that are not set.
enum Expanded {
    Done(String),
    Unset(Vec<String>),
}

/// One string with every `${VAR}` replaced.
fn expand(s: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<Expanded, String> {
    let mut out = String::with_capacity(s.len());
    let mut unset = Vec::new();
    let mut rest = s;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find('}')
            .ok_or_else(|| "unterminated ${...} reference".to_string())?;
        let name = &after[..end];
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            return Err(format!(
                "invalid environment variable name in ${{{}}}",
                name
            ));
        }
        match env(name) {
            Some(value) => out.push_str(&value),
            None => unset.push(name.to_string()),
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(if unset.is_empty() {
        Expanded::Done(out)
    } else {
        Expanded::Unset(unset)
    })
}

#[cfg(test)]
mod tests {
    use super::substitute_env;
    use serde_json::json;

    #[test]
    fn every_unset_variable_is_named_at_once() {
        let env = |n: &str| (n == "SET").then(|| "v".to_string());
        let mut v = json!({"a": {"apiKey": "${ONE}"}, "b": ["${SET}-${TWO}"]});
        let e = substitute_env(&mut v, "", &env).unwrap_err();
        assert_eq!(
            (e.location.as_str(), e.message.as_str()),
            (
                "",
                "environment variables not set: ONE (at a.apiKey), TWO (at b[0])"
            )
        );
        let mut v = json!({"a": "${SET}/${ONE}"});
        let e = substitute_env(&mut v, "", &env).unwrap_err();
        assert_eq!(
            (e.location.as_str(), e.message.as_str()),
            ("a", "environment variable ONE is not set")
        );
        let mut v = json!({"a": "x${SET}y"});
        substitute_env(&mut v, "", &env).unwrap();
        assert_eq!(v, json!({"a": "xvy"}));
    }
}
