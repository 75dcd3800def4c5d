//! Finds the model a request names and rewrites the body for the backend, byte-faithfully.
//!
//! JSON bodies are split into top-level members whose values are kept as raw text, so every
//! field but `model` (and configured `dropFields`) reaches the backend exactly as sent, in order.

use crate::http::api_error::ApiError;
use crate::http::route::{percent_decode, percent_encode};
use serde::de::{Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;
use std::fmt;

/// A JSON object body as its top-level members, values untouched: the body's text and where
/// each member's name and value are in it (no copy of either per member).
#[derive(Debug)]
pub struct JsonObject {
    /// The body itself (taken over by `parse_owned`, not copied).
    text: String,
    members: Vec<Member>,
}

#[derive(Debug)]
struct Member {
    /// The name, as written between its quotes when it has no escapes, else unescaped.
    name: Name,
    /// The value's raw JSON text.
    value: std::ops::Range<usize>,
}

#[derive(Debug)]
enum Name {
    At(std::ops::Range<usize>),
    Unescaped(Box<str>),
}

/// Where a piece borrowed from `text` sits in it.
fn span(text: &str, piece: &str) -> std::ops::Range<usize> {
    let start = piece.as_ptr() as usize - text.as_ptr() as usize;
    start..start + piece.len()
}

struct MembersVisitor<'t>(&'t str);

/// A member name as the parser saw it: borrowed from the text, or unescaped into a copy.
struct NameSeed<'t>(&'t str);

impl<'de> serde::de::DeserializeSeed<'de> for NameSeed<'de> {
    type Value = Name;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Name, D::Error> {
        struct NameVisitor<'t>(&'t str);
        impl<'de> Visitor<'de> for NameVisitor<'de> {
            type Value = Name;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a member name")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Name, E> {
                Ok(Name::At(span(self.0, v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Name, E> {
                Ok(Name::Unescaped(v.into()))
            }
        }
        d.deserialize_str(NameVisitor(self.0))
    }
}

impl<'de> Visitor<'de> for MembersVisitor<'de> {
    type Value = Vec<Member>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut members = Vec::with_capacity(8);
        while let Some(name) = map.next_key_seed(NameSeed(self.0))? {
            let value: &'de RawValue = map.next_value()?;
            members.push(Member {
                name,
                value: span(self.0, value.get()),
            });
        }
        Ok(members)
    }
}

impl JsonObject {
    /// Parses a body that must be a JSON object; the error is the client-facing 400.
    #[cfg(test)]
    pub fn parse(body: &[u8]) -> Result<JsonObject, ApiError> {
        JsonObject::parse_owned(body.to_vec())
    }

    /// Parses a body that must be a JSON object, kept as the object's text (not copied); the
    /// error is the client-facing 400.
    pub fn parse_owned(body: Vec<u8>) -> Result<JsonObject, ApiError> {
        let Ok(text) = String::from_utf8(body) else {
            return Err(ApiError::invalid_request(
                "Request body is not valid UTF-8.",
            ));
        };
        let body = text.as_bytes();
        let trimmed = body.iter().position(|b| !b.is_ascii_whitespace());
        match trimmed.map(|i| body[i]) {
            None => {
                return Err(ApiError::invalid_request(
                    "Request body is empty; expected a JSON object.",
                ))
            }
            Some(b'{') => {}
            Some(_) => {
                // Still validate so "not JSON" and "JSON but not an object" get distinct messages.
                return Err(
                    match serde_json::from_slice::<serde::de::IgnoredAny>(body) {
                        Ok(_) => ApiError::invalid_request("Request body must be a JSON object."),
                        Err(e) => invalid_json(&e),
                    },
                );
            }
        }
        if nesting_depth(body) > MAX_DEPTH {
            return Err(ApiError::invalid_request(format!(
                "Request body is not valid JSON (nested too deeply: more than {} levels).",
                MAX_DEPTH
            ))
            .with_code("invalid_json"));
        }
        let mut de = serde_json::Deserializer::from_str(&text);
        let members = de
            .deserialize_map(MembersVisitor(&text))
            .and_then(|m| de.end().map(|_| m))
            .map_err(|e| invalid_json(&e))?;
        Ok(JsonObject { text, members })
    }

    /// The body as received.
    pub fn text(&self) -> &str {
        &self.text
    }

    fn name<'a>(&'a self, m: &'a Member) -> &'a str {
        match &m.name {
            Name::At(r) => &self.text[r.clone()],
            Name::Unescaped(s) => s,
        }
    }

    /// A top-level member's raw JSON value (the last of that name, as JSON parsers read it).
    pub fn get(&self, key: &str) -> Option<&str> {
        self.members
            .iter()
            .rev()
            .find(|m| self.name(m) == key)
            .map(|m| &self.text[m.value.clone()])
    }

    /// The `model` member: `Ok(None)` when absent, 400 when it is not a string.
    pub fn model(&self) -> Result<Option<String>, ApiError> {
        match self.get("model") {
            None => Ok(None),
            Some(raw) => match serde_json::from_str::<String>(raw) {
                Ok(s) => Ok(Some(s)),
                Err(_) => Err(ApiError::invalid_request("`model` must be a string.")
                    .with_param("model")
                    .with_code("invalid_type")),
            },
        }
    }

    /// A top-level member's value when it is a whole, non-negative number (`100`, and also
    /// `1e2` or `100.0`, which lax validators such as pydantic's take as 100).
    pub fn get_u64(&self, key: &str) -> Option<u64> {
        whole(self.get(key)?)
    }

    /// A top-level member's value when it is a JSON number.
    pub fn get_f64(&self, key: &str) -> Option<f64> {
        serde_json::from_str::<f64>(self.get(key)?).ok()
    }

    /// A top-level member's value when it is a JSON string.
    pub fn get_str(&self, key: &str) -> Option<String> {
        serde_json::from_str::<String>(self.get(key)?).ok()
    }

    /// The largest of `max_tokens`, `max_completion_tokens` and `max_output_tokens` present:
    /// a backend may honour any one of them, so a reservation must cover the largest.
    pub fn max_tokens(&self) -> Option<u64> {
        MAX_TOKENS_FIELDS
            .iter()
            .filter_map(|k| self.get_u64(k))
            .max()
    }

    /// How many completions the request asks for: the larger of `n` and the legacy
    /// completions' `best_of` (each may be as long as the max tokens field allows), at least 1.
    pub fn choices(&self) -> u64 {
        ["n", "best_of"]
            .iter()
            .filter_map(|k| self.get_u64(k))
            .max()
            .unwrap_or(1)
            .max(1)
    }

    /// Refuses, as OpenAI does (400 `invalid_type`), a mistyped member that decides how the
    /// request is routed or accounted: `stream` not a boolean (a lax backend would stream
    /// while modelmux expects a JSON answer), `stream_options` not an object, a max tokens
    /// field (or `n`, `best_of`) not a whole number, `messages` (chat) not an array. `null`
    /// is accepted where OpenAI accepts it.
    pub fn check_types(&self, chat: bool) -> Result<(), ApiError> {
        let checks = [("stream", Kind::Boolean), ("stream_options", Kind::Object)]
            .into_iter()
            .chain(
                MAX_TOKENS_FIELDS
                    .iter()
                    .chain(&["n", "best_of"])
                    .map(|k| (*k, Kind::Integer)),
            )
            .chain(chat.then_some(("messages", Kind::Array)));
        for (name, want) in checks {
            let Some(raw) = self.get(name) else {
                continue;
            };
            let got = kind_of(raw);
            if got == Kind::Null || got == want {
                continue;
            }
            return Err(ApiError::invalid_request(format!(
                "Invalid type for '{}': expected {}, but got {} instead.",
                name,
                want.article(),
                got.found()
            ))
            .with_param(name)
            .with_code("invalid_type"));
        }
        Ok(())
    }

    /// True when the body asks for a streamed reply (`"stream": true`).
    pub fn stream(&self) -> bool {
        self.get("stream").is_some_and(|v| v == "true")
    }

    /// True when the client asked for the stream's usage chunk itself.
    pub fn wants_stream_usage(&self) -> bool {
        self.get("stream_options")
            .and_then(|v| serde_json::from_str::<serde_json::Value>(v).ok())
            .and_then(|v| v.get("include_usage")?.as_bool())
            .unwrap_or(false)
    }

    /// The client's `stream_options` (if an object) with `include_usage: true`, as JSON.
    pub fn stream_options_with_usage(&self) -> String {
        let mut opts = self
            .get("stream_options")
            .and_then(|v| serde_json::from_str::<serde_json::Value>(v).ok())
            .filter(serde_json::Value::is_object)
            .unwrap_or_else(|| serde_json::json!({}));
        opts["include_usage"] = true.into();
        opts.to_string()
    }

    /// Serializes with `model` replaced (when present), `drop` fields removed and each `set`
    /// member's raw JSON replacing the member of that name (or appended when absent).
    pub fn rewrite(&self, actual_model: &str, drop: &[String], set: &[(&str, String)]) -> Vec<u8> {
        let dropped = |m: &Member| drop.iter().any(|d| d == self.name(m));
        if set.is_empty() && !self.members.iter().any(dropped) {
            return self.splice_model(actual_model);
        }
        let mut out = Vec::with_capacity(self.text.len() + actual_model.len() + 64);
        out.push(b'{');
        let mut first = true;
        for m in &self.members {
            if dropped(m) {
                continue;
            }
            if !first {
                out.push(b',');
            }
            first = false;
            let k = self.name(m);
            json_string(&mut out, k);
            out.push(b':');
            if k == "model" {
                json_string(&mut out, actual_model);
            } else if let Some((_, raw)) = set.iter().find(|(name, _)| *name == k) {
                out.extend_from_slice(raw.as_bytes());
            } else {
                out.extend_from_slice(&self.text.as_bytes()[m.value.clone()]);
            }
        }
        for (name, raw) in set {
            if !self.members.iter().any(|m| self.name(m) == *name) {
                if !first {
                    out.push(b',');
                }
                first = false;
                json_string(&mut out, name);
                out.push(b':');
                out.extend_from_slice(raw.as_bytes());
            }
        }
        out.push(b'}');
        out
    }

    /// The body as sent with each `model` value replaced in place: every other byte (spacing
    /// included) stays as the client wrote it, and nothing is re-serialized.
    fn splice_model(&self, actual_model: &str) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.text.len() + actual_model.len() + 8);
        let mut at = 0;
        for m in self.members.iter().filter(|m| self.name(m) == "model") {
            out.extend_from_slice(&self.text.as_bytes()[at..m.value.start]);
            json_string(&mut out, actual_model);
            at = m.value.end;
        }
        out.extend_from_slice(&self.text.as_bytes()[at..]);
        out
    }
}

/// A JSON string, escaped as `serde_json` escapes it.
fn json_string(out: &mut Vec<u8>, s: &str) {
    // Writing to a Vec cannot fail, and a str always serializes.
    let _ = serde_json::to_writer(out, s);
}

/// The members that bound a request's completion tokens (the Responses API's last).
const MAX_TOKENS_FIELDS: [&str; 3] = ["max_tokens", "max_completion_tokens", "max_output_tokens"];

/// A JSON value's type, as OpenAI's `invalid_type` messages name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Null,
    Boolean,
    Integer,
    Number,
    String,
    Array,
    Object,
}

impl Kind {
    fn article(self) -> &'static str {
        match self {
            Kind::Null => "null",
            Kind::Boolean => "a boolean",
            Kind::Integer => "a non-negative integer",
            Kind::Number => "a number",
            Kind::String => "a string",
            Kind::Array => "an array",
            Kind::Object => "an object",
        }
    }

    /// As a value found: `1` is an integer, whether or not one was expected.
    fn found(self) -> &'static str {
        match self {
            Kind::Integer => "an integer",
            other => other.article(),
        }
    }
}

/// A raw JSON number's value when it is whole, non-negative and fits in 64 bits.
fn whole(raw: &str) -> Option<u64> {
    if let Ok(n) = raw.parse::<u64>() {
        return Some(n);
    }
    let f = raw.parse::<f64>().ok()?;
    // 2^64 as f64; a float at or above it does not fit.
    (f.is_finite() && f >= 0.0 && f.fract() == 0.0 && f < 18_446_744_073_709_551_616.0)
        .then_some(f as u64)
}

/// The type of a raw JSON value (already validated by the parse) from its first byte; a number
/// is an integer only when it is `whole`.
fn kind_of(raw: &str) -> Kind {
    match raw.as_bytes().first() {
        Some(b'n') => Kind::Null,
        Some(b't' | b'f') => Kind::Boolean,
        Some(b'"') => Kind::String,
        Some(b'[') => Kind::Array,
        Some(b'{') => Kind::Object,
        _ if whole(raw).is_some() => Kind::Integer,
        _ => Kind::Number,
    }
}

/// Deepest nesting accepted; raw values skip serde_json's own recursion limit, so check here.
const MAX_DEPTH: usize = 128;

/// The deepest `[`/`{` nesting outside strings.
fn nesting_depth(body: &[u8]) -> usize {
    let (mut depth, mut max, mut in_string, mut escaped) = (0usize, 0usize, false, false);
    for &b in body {
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                max = max.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    max
}

fn invalid_json(e: &serde_json::Error) -> ApiError {
    let what = if e.to_string().contains("recursion limit") {
        "nested too deeply".to_string()
    } else {
        format!("line {} column {}", e.line(), e.column())
    };
    ApiError::invalid_request(format!("Request body is not valid JSON ({}).", what))
        .with_code("invalid_json")
}

/// The value of `name` in a query string, percent-decoded.
pub fn query_param(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (percent_decode(&k.replace('+', " ")) == name).then(|| percent_decode(&v.replace('+', " ")))
    })
}

/// The query string with `name`'s value replaced.
pub fn replace_query_param(query: &str, name: &str, value: &str) -> String {
    query
        .split('&')
        .map(|pair| {
            let k = pair.split_once('=').map(|(k, _)| k).unwrap_or(pair);
            if percent_decode(&k.replace('+', " ")) == name {
                format!("{}={}", k, percent_encode(value))
            } else {
                pair.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("&")
}

/// The boundary of a `multipart/form-data` content type.
pub fn multipart_boundary(content_type: &str) -> Option<String> {
    let (mime, params) = content_type.split_once(';')?;
    if !mime.trim().eq_ignore_ascii_case("multipart/form-data") {
        return None;
    }
    params.split(';').find_map(|p| {
        let (k, v) = p.trim().split_once('=')?;
        k.trim()
            .eq_ignore_ascii_case("boundary")
            .then(|| v.trim().trim_matches('"').to_string())
            .filter(|b| !b.is_empty())
    })
}

/// Byte range of the value of the form field `name` in a multipart body.
fn multipart_field_span(body: &[u8], boundary: &str, name: &str) -> Option<(usize, usize)> {
    let delimiter = format!("--{}", boundary);
    let next_delimiter = format!("\r\n--{}", boundary);
    let wanted = format!("name=\"{}\"", name);
    let mut pos = find(body, delimiter.as_bytes(), 0)?;
    loop {
        let part_start = pos + delimiter.len();
        if body.get(part_start..part_start + 2) == Some(b"--") {
            return None;
        }
        let headers_end = find(body, b"\r\n\r\n", part_start)?;
        let value_start = headers_end + 4;
        let value_end = find(body, next_delimiter.as_bytes(), value_start)?;
        let headers = String::from_utf8_lossy(&body[part_start..headers_end]);
        let is_field = headers.lines().any(|line| {
            let lower = line.to_ascii_lowercase();
            lower.starts_with("content-disposition:") && line.split(';').any(|p| p.trim() == wanted)
        });
        if is_field {
            return Some((value_start, value_end));
        }
        pos = value_end + 2;
    }
}

/// The text value of the form field `name` in a multipart body.
pub fn multipart_field(body: &[u8], boundary: &str, name: &str) -> Option<String> {
    let (s, e) = multipart_field_span(body, boundary, name)?;
    String::from_utf8(body[s..e].to_vec()).ok()
}

/// The multipart body with field `name`'s value replaced; `None` when the field is absent.
pub fn replace_multipart_field(
    body: &[u8],
    boundary: &str,
    name: &str,
    value: &str,
) -> Option<Vec<u8>> {
    let (s, e) = multipart_field_span(body, boundary, name)?;
    let mut out = Vec::with_capacity(body.len() + value.len());
    out.extend_from_slice(&body[..s]);
    out.extend_from_slice(value.as_bytes());
    out.extend_from_slice(&body[e..]);
    Some(out)
}

fn find(haystack: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    if from > haystack.len() || needle.is_empty() {
        return None;
    }
    haystack[from..]
        .windows(needle.len())
        .position(|w| w == needle)
        .map(|i| i + from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rewrite_keeps_everything_else_byte_exact() {
        let body = br#"{"temperature":0.70,"model":"pub","messages":[{"role":"user","content":"hi"}],"n":1e2}"#;
        let obj = JsonObject::parse(body).unwrap();
        assert_eq!(obj.model().unwrap().as_deref(), Some("pub"));
        assert_eq!(
            String::from_utf8(obj.rewrite("real", &[], &[])).unwrap(),
            r#"{"temperature":0.70,"model":"real","messages":[{"role":"user","content":"hi"}],"n":1e2}"#
        );
        assert_eq!(
            String::from_utf8(obj.rewrite("real", &["n".to_string()], &[])).unwrap(),
            r#"{"temperature":0.70,"model":"real","messages":[{"role":"user","content":"hi"}]}"#
        );
    }

    #[test]
    fn max_tokens_fields_and_their_types() {
        let obj = JsonObject::parse(
            br#"{"max_tokens":1,"max_completion_tokens":4e3,"max_output_tokens":30,"n":2}"#,
        )
        .unwrap();
        assert_eq!((obj.max_tokens(), obj.choices()), (Some(4000), 2));
        assert!(obj.check_types(true).is_ok());
        for (raw, kind) in [
            ("100", Kind::Integer),
            ("1e2", Kind::Integer),
            ("100.0", Kind::Integer),
            ("1.5", Kind::Number),
            ("-1", Kind::Number),
            ("1e30", Kind::Number),
            ("\"1\"", Kind::String),
            ("null", Kind::Null),
            ("false", Kind::Boolean),
        ] {
            assert_eq!(kind_of(raw), kind, "{}", raw);
        }
    }

    #[test]
    fn rejects_bad_bodies() {
        assert_eq!(
            JsonObject::parse(b"[1]").unwrap_err().message,
            "Request body must be a JSON object."
        );
        assert!(JsonObject::parse(b"{\"a\":").is_err());
        assert!(JsonObject::parse(b"{} x").is_err());
        let deep = format!("{{\"a\":{}{}}}", "[".repeat(1000), "]".repeat(1000));
        assert!(JsonObject::parse(deep.as_bytes())
            .unwrap_err()
            .message
            .contains("nested too deeply"));
        assert_eq!(
            JsonObject::parse(br#"{"model":3}"#)
                .unwrap()
                .model()
                .unwrap_err()
                .param,
            Some("model")
        );
    }

    #[test]
    fn multipart() {
        let body = b"--XX\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.wav\"\r\n\r\nRIFF\r\n--XX\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\nwhisper\r\n--XX--\r\n";
        let b = multipart_boundary("multipart/form-data; boundary=XX").unwrap();
        assert_eq!(
            multipart_field(body, &b, "model").as_deref(),
            Some("whisper")
        );
        let out = replace_multipart_field(body, &b, "model", "large-v3").unwrap();
        assert_eq!(
            multipart_field(&out, &b, "model").as_deref(),
            Some("large-v3")
        );
    }

    #[test]
    fn query() {
        assert_eq!(
            query_param("a=1&model=x%2Fy", "model").as_deref(),
            Some("x/y")
        );
        assert_eq!(
            replace_query_param("a=1&model=x", "model", "r/s"),
            "a=1&model=r%2Fs"
        );
    }
}
