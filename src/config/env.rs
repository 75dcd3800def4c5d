//! `${VAR}` references in config strings, filled from the environment at (re)load.

use super::json::FieldError;
use serde_json::Value;

/// Replaces `${VAR}` in every string of the tree; the error names the location and the variable.
pub(super) fn substitute_env(
    v: &mut Value,
    loc: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<(), FieldError> {
    match v {
        Value::String(s) if s.contains("${") => {
            *s = expand(s, env).map_err(|m| FieldError::new(loc, m))?;
        }
        Value::Array(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                substitute_env(item, &format!("{}[{}]", loc, i), env)?;
            }
        }
        Value::Object(m) => {
            for (k, item) in m.iter_mut() {
                let child = if loc.is_empty() {
                    k.clone()
                } else {
                    format!("{}.{}", loc, k)
                };
                substitute_env(item, &child, env)?;
            }
        }
        _ => {}
    }
    Ok(())
}

/// One string with every `${VAR}` replaced.
fn expand(s: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(s.len());
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
        let value = env(name).ok_or_else(|| format!("environment variable {} is not set", name))?;
        out.push_str(&value);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}
