//! A finished span and its OTLP/JSON form.

use super::context::{hex, SpanContext};
use serde_json::{json, Value as Json};

/// An attribute value (the OTLP `AnyValue` kinds modelmux uses).
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Str(String),
    Int(i64),
    F64(f64),
    Bool(bool),
    Strs(Vec<String>),
}

impl From<&str> for Value {
    fn from(s: &str) -> Value {
        Value::Str(s.to_string())
    }
}
impl From<String> for Value {
    fn from(s: String) -> Value {
        Value::Str(s)
    }
}
impl From<u64> for Value {
    fn from(n: u64) -> Value {
        Value::Int(i64::try_from(n).unwrap_or(i64::MAX))
    }
}
impl From<bool> for Value {
    fn from(b: bool) -> Value {
        Value::Bool(b)
    }
}
impl From<f64> for Value {
    fn from(f: f64) -> Value {
        Value::F64(f)
    }
}

/// OTLP's `SpanKind` numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Server = 2,
    Client = 3,
}

#[derive(Debug, Clone)]
pub struct Span {
    pub ctx: SpanContext,
    pub parent: Option<[u8; 8]>,
    pub name: String,
    pub kind: Kind,
    pub start_ns: u64,
    pub end_ns: u64,
    pub attrs: Vec<(&'static str, Value)>,
    /// `Some` marks the span failed (OTLP status ERROR) with this message.
    pub error: Option<String>,
}

impl Span {
    pub fn set(&mut self, key: &'static str, v: impl Into<Value>) {
        let v = v.into();
        match self.attrs.iter_mut().find(|(k, _)| *k == key) {
            Some(slot) => slot.1 = v,
            None => self.attrs.push((key, v)),
        }
    }

    fn to_json(&self) -> Json {
        let mut s = json!({
            "traceId": hex(&self.ctx.trace_id),
            "spanId": hex(&self.ctx.span_id),
            "name": self.name,
            "kind": self.kind as i32,
            // uint64 is a string in the protobuf JSON mapping.
            "startTimeUnixNano": self.start_ns.to_string(),
            "endTimeUnixNano": self.end_ns.max(self.start_ns).to_string(),
            "attributes": attributes(self.attrs.iter().map(|(k, v)| (*k, v))),
        });
        if let Some(p) = &self.parent {
            s["parentSpanId"] = json!(hex(p));
        }
        if let Some(e) = &self.error {
            s["status"] = json!({"code": 2, "message": e});
        }
        s
    }
}

fn any_value(v: &Value) -> Json {
    match v {
        Value::Str(s) => json!({ "stringValue": s }),
        Value::Int(n) => json!({ "intValue": n.to_string() }),
        Value::F64(f) if f.is_finite() => json!({ "doubleValue": f }),
        Value::F64(f) => json!({ "stringValue": f.to_string() }),
        Value::Bool(b) => json!({ "boolValue": b }),
        Value::Strs(l) => json!({ "arrayValue": {
            "values": l.iter().map(|s| json!({ "stringValue": s })).collect::<Vec<_>>()
        } }),
    }
}

fn attributes<'a>(attrs: impl Iterator<Item = (&'a str, &'a Value)>) -> Json {
    Json::Array(
        attrs
            .map(|(k, v)| json!({"key": k, "value": any_value(v)}))
            .collect(),
    )
}

/// One `ExportTraceServiceRequest` in OTLP/JSON.
pub fn export_body(service: &str, resource: &[(String, String)], spans: &[Span]) -> Vec<u8> {
    let mut res: Vec<(&str, Value)> = vec![
        ("service.name", service.into()),
        ("telemetry.sdk.name", "modelmux".into()),
        ("telemetry.sdk.language", "rust".into()),
        ("telemetry.sdk.version", env!("CARGO_PKG_VERSION").into()),
    ];
    res.extend(
        resource
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str().into())),
    );
    let body = json!({
        "resourceSpans": [{
            "resource": { "attributes": attributes(res.iter().map(|(k, v)| (*k, v))) },
            "scopeSpans": [{
                "scope": { "name": "modelmux", "version": env!("CARGO_PKG_VERSION") },
                "spans": spans.iter().map(Span::to_json).collect::<Vec<_>>(),
            }],
        }],
    });
    serde_json::to_vec(&body).unwrap_or_default()
}
