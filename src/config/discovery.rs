//! Wildcard endpoints (`"ollama/*"`) and their discovery settings, and active health probing.

use super::json::{at, number_fields, string_list, type_name, FieldError};
use serde_json::{Map, Value};
use std::time::Duration;

/// How often a discovering wildcard lists its backends when `discoverIntervalSecs` is absent.
pub const DEFAULT_DISCOVER_INTERVAL: Duration = Duration::from_secs(300);

/// A wildcard endpoint: every id `prefix` + `m` is served by its backends as backend model `m`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wildcard {
    /// The id up to its final `*`, e.g. `ollama/`; may be empty (a catch-all).
    pub prefix: String,
    /// List the backends' `GET /v1/models` and show what they serve in `/models`.
    pub discover: bool,
    /// Backend model names to list; empty means all.
    pub include: Vec<String>,
    /// Backend model names never listed nor routed.
    pub exclude: Vec<String>,
    /// How often the backends are listed.
    pub interval: Duration,
}

impl Wildcard {
    /// True when a backend model name passes `discoverInclude` and `discoverExclude`.
    pub fn accepts(&self, backend_model: &str) -> bool {
        !backend_model.is_empty()
            && (self.include.is_empty() || crate::glob::any(&self.include, backend_model))
            && !crate::glob::any(&self.exclude, backend_model)
    }

    /// The backend model a public id names, when this wildcard serves that id.
    pub fn backend_model<'a>(&self, id: &'a str) -> Option<&'a str> {
        id.strip_prefix(self.prefix.as_str())
            .filter(|m| self.accepts(m))
    }

    /// The public id of a backend model.
    pub fn public_id(&self, backend_model: &str) -> String {
        format!("{}{}", self.prefix, backend_model)
    }
}

/// Endpoint fields that only a wildcard id may carry.
const WILDCARD_FIELDS: &[&str] = &[
    "discover",
    "discoverInclude",
    "discoverExclude",
    "discoverIntervalSecs",
];

/// The wildcard settings of an endpoint whose id ends in `*`; `None` for any other id, which
/// must then carry none of the discovery fields.
pub(super) fn parse_wildcard(
    id: &str,
    obj: &Map<String, Value>,
) -> Result<Option<Wildcard>, FieldError> {
    let Some(prefix) = id.strip_suffix('*') else {
        if id.contains('*') {
            return Err(FieldError::new(
                "",
                "a wildcard model id has one `*`, at its end (e.g. \"ollama/*\")",
            ));
        }
        if let Some(field) = WILDCARD_FIELDS.iter().find(|f| obj.contains_key(**f)) {
            return Err(FieldError::new(
                *field,
                "only a wildcard model id ending in `*` (e.g. \"ollama/*\") discovers models",
            ));
        }
        return Ok(None);
    };
    if prefix.contains('*') {
        return Err(FieldError::new(
            "",
            "a wildcard model id has one `*`, at its end (e.g. \"ollama/*\")",
        ));
    }
    // The backend model name is the part of the requested id after the prefix.
    if obj.contains_key("actualModelName") {
        return Err(FieldError::new(
            "actualModelName",
            "a wildcard endpoint takes the backend model name from the requested id; remove actualModelName",
        ));
    }
    if let Some(Value::Array(items)) = obj.get("backends") {
        if let Some(i) = items
            .iter()
            .position(|b| b.get("actualModelName").is_some())
        {
            return Err(FieldError::new(
                format!("backends[{}].actualModelName", i),
                "a wildcard endpoint takes the backend model name from the requested id; remove actualModelName",
            ));
        }
    }
    let discover = match obj.get("discover") {
        None | Some(Value::Null) => true,
        Some(Value::Bool(b)) => *b,
        Some(v) => {
            return Err(FieldError::new(
                "discover",
                format!("expected true or false, got {}", type_name(v)),
            ))
        }
    };
    let globs = |field: &str| -> Result<Vec<String>, FieldError> {
        Ok(string_list(obj.get(field), "glob patterns")
            .map_err(at(field))?
            .unwrap_or_default())
    };
    let interval = match obj.get("discoverIntervalSecs") {
        None | Some(Value::Null) => DEFAULT_DISCOVER_INTERVAL,
        Some(v) => v
            .as_f64()
            .filter(|s| (1.0..=86_400.0).contains(s))
            .map(Duration::from_secs_f64)
            .ok_or_else(|| {
                FieldError::new(
                    "discoverIntervalSecs",
                    "expected a number of seconds from 1 to 86400",
                )
            })?,
    };
    Ok(Some(Wildcard {
        prefix: prefix.to_string(),
        discover,
        include: globs("discoverInclude")?,
        exclude: globs("discoverExclude")?,
        interval,
    }))
}

/// An endpoint's `"health": {"probeIntervalSecs": 30}`: `Some(None)` turns probing off for this
/// endpoint (0), `None` when the endpoint does not say (the top level decides).
pub(super) fn parse_endpoint_probe(
    v: Option<&Value>,
) -> Result<Option<Option<Duration>>, FieldError> {
    let Some(v) = v else { return Ok(None) };
    let n = number_fields(
        v,
        r#"{"probeIntervalSecs": 30} (failureThreshold, cooldownSecs and maxHoldOffSecs are top-level settings)"#,
        &[("probeIntervalSecs", 0.0, 86_400.0)],
    )
    .map_err(|e| e.within("health"))?;
    Ok(n[0].map(probe_interval))
}

/// Seconds to a probe interval; 0 is off.
pub(super) fn probe_interval(secs: f64) -> Option<Duration> {
    (secs > 0.0).then(|| Duration::from_secs_f64(secs.max(1.0)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wildcard(id: &str, extra: &str) -> Result<Option<Wildcard>, FieldError> {
        let v: Value = serde_json::from_str(&format!(r#"{{"url":"http://h"{}}}"#, extra)).unwrap();
        parse_wildcard(id, v.as_object().unwrap())
    }

    #[test]
    fn wildcard_ids_and_their_fields() {
        let w = wildcard(
            "ollama/*",
            r#","discoverInclude":["llama*","qwen*"],"discoverExclude":["*embed*"],"discoverIntervalSecs":5"#,
        )
        .unwrap()
        .unwrap();
        assert_eq!(w.prefix, "ollama/");
        assert!(w.discover);
        assert_eq!(w.interval, Duration::from_secs(5));
        assert_eq!(w.backend_model("ollama/llama3:8b"), Some("llama3:8b"));
        assert_eq!(w.backend_model("ollama/nomic-embed-text"), None);
        assert_eq!(w.backend_model("ollama/qwen-embed"), None);
        assert_eq!(w.backend_model("ollama/mistral"), None);
        assert_eq!(w.backend_model("ollama/"), None);
        assert_eq!(w.backend_model("vllm/llama3"), None);
        assert_eq!(w.public_id("llama3"), "ollama/llama3");
        let all = wildcard("*", "").unwrap().unwrap();
        assert_eq!(
            (all.prefix.as_str(), all.interval),
            ("", DEFAULT_DISCOVER_INTERVAL)
        );
        assert_eq!(all.backend_model("anything"), Some("anything"));
        assert!(wildcard("plain", "").unwrap().is_none());
    }

    #[test]
    fn wildcard_errors() {
        let cases = [
            ("a*b", "", ""),
            ("a**", "", ""),
            ("plain", r#","discover":true"#, "discover"),
            (
                "plain",
                r#","discoverIntervalSecs":5"#,
                "discoverIntervalSecs",
            ),
            ("w/*", r#","actualModelName":"x""#, "actualModelName"),
            (
                "w/*",
                r#","backends":[{"url":"http://a"},{"actualModelName":"x"}]"#,
                "backends[1].actualModelName",
            ),
            ("w/*", r#","discover":"yes""#, "discover"),
            ("w/*", r#","discoverInclude":"llama*""#, "discoverInclude"),
            (
                "w/*",
                r#","discoverIntervalSecs":0"#,
                "discoverIntervalSecs",
            ),
        ];
        for (id, extra, location) in cases {
            let e = wildcard(id, extra).unwrap_err();
            assert_eq!(e.location, location, "{} {}: {:?}", id, extra, e);
        }
    }

    #[test]
    fn endpoint_probe_setting() {
        let parse = |s: &str| parse_endpoint_probe(Some(&serde_json::from_str(s).unwrap()));
        assert_eq!(parse_endpoint_probe(None).unwrap(), None);
        assert_eq!(
            parse(r#"{"probeIntervalSecs":30}"#).unwrap(),
            Some(Some(Duration::from_secs(30)))
        );
        assert_eq!(parse(r#"{"probeIntervalSecs":0}"#).unwrap(), Some(None));
        assert_eq!(parse(r#"{}"#).unwrap(), None);
        assert_eq!(
            parse(r#"{"cooldownSecs":3}"#).unwrap_err().location,
            "health.cooldownSecs"
        );
    }
}
