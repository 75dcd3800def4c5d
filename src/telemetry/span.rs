//! A finished span and its OTLP/JSON form.

use super::context::{hex, SpanContext};
use std::io::Write as _;

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

    /// Appends this span in OTLP/JSON (written directly: a `serde_json::Value` tree per span
    /// cost several times the serialization itself).
    fn write(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"{\"traceId\":\"");
        out.extend_from_slice(hex(&self.ctx.trace_id).as_bytes());
        out.extend_from_slice(b"\",\"spanId\":\"");
        out.extend_from_slice(hex(&self.ctx.span_id).as_bytes());
        out.push(b'"');
        if let Some(p) = &self.parent {
            out.extend_from_slice(b",\"parentSpanId\":\"");
            out.extend_from_slice(hex(p).as_bytes());
            out.push(b'"');
        }
        out.extend_from_slice(b",\"name\":");
        string(out, &self.name);
        // uint64 is a string in the protobuf JSON mapping.
        let _ = write!(
            out,
            ",\"kind\":{},\"startTimeUnixNano\":\"{}\",\"endTimeUnixNano\":\"{}\",\"attributes\":",
            self.kind as i32,
            self.start_ns,
            self.end_ns.max(self.start_ns)
        );
        attributes(out, self.attrs.iter().map(|(k, v)| (*k, v)));
        if let Some(e) = &self.error {
            out.extend_from_slice(b",\"status\":{\"code\":2,\"message\":");
            string(out, e);
            out.push(b'}');
        }
        out.push(b'}');
    }
}

/// A JSON string, escaped by serde_json.
fn string(out: &mut Vec<u8>, s: &str) {
    let _ = serde_json::to_writer(&mut *out, s);
}

fn any_value(out: &mut Vec<u8>, v: &Value) {
    match v {
        Value::Str(s) => {
            out.extend_from_slice(b"{\"stringValue\":");
            string(out, s);
        }
        Value::Int(n) => {
            let _ = write!(out, "{{\"intValue\":\"{}\"", n);
        }
        Value::F64(f) if f.is_finite() => {
            out.extend_from_slice(b"{\"doubleValue\":");
            let _ = serde_json::to_writer(&mut *out, f);
        }
        Value::F64(f) => {
            out.extend_from_slice(b"{\"stringValue\":");
            string(out, &f.to_string());
        }
        Value::Bool(b) => {
            let _ = write!(out, "{{\"boolValue\":{}", b);
        }
        Value::Strs(l) => {
            out.extend_from_slice(b"{\"arrayValue\":{\"values\":[");
            for (i, s) in l.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                out.extend_from_slice(b"{\"stringValue\":");
                string(out, s);
                out.push(b'}');
            }
            out.extend_from_slice(b"]}");
        }
    }
    out.push(b'}');
}

fn attributes<'a>(out: &mut Vec<u8>, attrs: impl Iterator<Item = (&'a str, &'a Value)>) {
    out.push(b'[');
    for (i, (k, v)) in attrs.enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(b"{\"key\":");
        string(out, k);
        out.extend_from_slice(b",\"value\":");
        any_value(out, v);
        out.push(b'}');
    }
    out.push(b']');
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
    let mut out = Vec::with_capacity(512 + spans.len() * 1024);
    out.extend_from_slice(b"{\"resourceSpans\":[{\"resource\":{\"attributes\":");
    attributes(&mut out, res.iter().map(|(k, v)| (*k, v)));
    out.extend_from_slice(b"},\"scopeSpans\":[{\"scope\":{\"name\":\"modelmux\",\"version\":");
    string(&mut out, env!("CARGO_PKG_VERSION"));
    out.extend_from_slice(b"},\"spans\":[");
    for (i, s) in spans.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        s.write(&mut out);
    }
    out.extend_from_slice(b"]}]}]}");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn export_body_is_otlp_json_with_every_value_kind_escaped() {
        let mut s = Span {
            ctx: SpanContext {
                trace_id: [1; 16],
                span_id: [2; 8],
                sampled: true,
            },
            parent: Some([3; 8]),
            name: "chat \"q\"\n".into(),
            kind: Kind::Client,
            start_ns: 10,
            end_ns: 5,
            attrs: Vec::new(),
            error: Some("bad \\ thing".into()),
        };
        s.set("s", "x\"y");
        s.set("i", u64::MAX);
        s.set("f", 0.5);
        s.set("nan", f64::NAN);
        s.set("b", true);
        s.set("l", Value::Strs(vec!["stop".into(), "len\"gth".into()]));
        s.set("s", "replaced");
        let body = export_body("svc", &[("k".into(), "v".into())], &[s.clone(), s]);
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        let rs = &v["resourceSpans"][0];
        assert_eq!(
            rs["resource"]["attributes"][0]["value"]["stringValue"],
            "svc"
        );
        assert_eq!(rs["resource"]["attributes"][4]["key"], "k");
        let spans = rs["scopeSpans"][0]["spans"].as_array().unwrap();
        assert_eq!(spans.len(), 2);
        let sp = &spans[0];
        assert_eq!(sp["traceId"], "01010101010101010101010101010101");
        assert_eq!(sp["parentSpanId"], "0303030303030303");
        assert_eq!(sp["name"], "chat \"q\"\n");
        assert_eq!(sp["kind"], 3);
        // An end before the start (clock steps) is clamped to the start.
        assert_eq!(sp["endTimeUnixNano"], "10");
        assert_eq!(sp["status"]["message"], "bad \\ thing");
        let attrs = sp["attributes"].as_array().unwrap();
        let val = |k: &str| &attrs.iter().find(|a| a["key"] == k).unwrap()["value"];
        assert_eq!(attrs.len(), 6);
        assert_eq!(val("s")["stringValue"], "replaced");
        assert_eq!(val("i")["intValue"], i64::MAX.to_string());
        assert_eq!(val("f")["doubleValue"], 0.5);
        assert_eq!(val("nan")["stringValue"], "NaN");
        assert_eq!(val("b")["boolValue"], true);
        assert_eq!(
            val("l")["arrayValue"]["values"][1]["stringValue"],
            "len\"gth"
        );
    }
}
