//! Reads `gen_ai.response.id`, `.model` and `.finish_reasons` out of a relayed answer, as its
//! bytes go by: a JSON body (buffered up to a bound) or SSE `data:` lines (the first that names
//! an id, then only lines that carry a finish reason). Compressed bodies are left alone.

use memchr::memmem;
use serde_json::Value;

/// A JSON answer larger than this is not read (its attributes are left out).
const MAX_JSON: usize = 1 << 20;
/// An SSE line larger than this is skipped.
const MAX_LINE: usize = 64 * 1024;

#[derive(Debug, Default)]
pub struct ResponseTap {
    mode: Mode,
    buf: Vec<u8>,
    overflow: bool,
    pub id: Option<String>,
    pub model: Option<String>,
    pub finish_reasons: Vec<String>,
}

#[derive(Debug, Default, PartialEq)]
enum Mode {
    #[default]
    Unknown,
    Json,
    Sse,
    Off,
}

impl ResponseTap {
    pub fn feed(&mut self, data: &[u8]) {
        if self.mode == Mode::Unknown {
            self.mode = match data.iter().find(|b| !b.is_ascii_whitespace()) {
                None => return,
                Some(b'{') => Mode::Json,
                Some(b'd' | b':' | b'e' | b'i' | b'r') => Mode::Sse,
                Some(_) => Mode::Off,
            };
        }
        match self.mode {
            Mode::Json => {
                if self.buf.len() + data.len() > MAX_JSON {
                    self.mode = Mode::Off;
                    self.buf = Vec::new();
                } else {
                    self.buf.extend_from_slice(data);
                }
            }
            Mode::Sse => self.feed_sse(data),
            Mode::Unknown | Mode::Off => {}
        }
    }

    fn feed_sse(&mut self, data: &[u8]) {
        let mut rest = data;
        loop {
            let end = memchr::memchr(b'\n', rest);
            let part = &rest[..end.unwrap_or(rest.len())];
            if self.buf.len() + part.len() > MAX_LINE {
                self.overflow = true;
            } else if !self.overflow {
                self.buf.extend_from_slice(part);
            }
            match end {
                Some(at) => {
                    if !std::mem::replace(&mut self.overflow, false) {
                        self.line();
                    }
                    self.buf.clear();
                    rest = &rest[at + 1..];
                }
                None => break,
            }
        }
    }

    fn line(&mut self) {
        let Some(payload) = self.buf.strip_prefix(b"data:") else {
            return;
        };
        // Most chunks carry neither a first id nor a finish reason: no parse for them.
        let finishing = memmem::find(payload, b"\"finish_reason\":\"").is_some()
            || memmem::find(payload, b"\"finish_reason\": \"").is_some();
        if self.id.is_some() && !finishing {
            return;
        }
        if let Ok(v) = serde_json::from_slice::<Value>(payload) {
            self.take(&v);
        }
    }

    fn take(&mut self, v: &Value) {
        let text = |k: &str| {
            v.get(k)
                .and_then(Value::as_str)
                .map(|s| clip(s).to_string())
        };
        if self.id.is_none() {
            self.id = text("id");
        }
        if self.model.is_none() {
            self.model = text("model");
        }
        for c in v
            .get("choices")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if let Some(r) = c.get("finish_reason").and_then(Value::as_str) {
                if self.finish_reasons.len() < 16 {
                    self.finish_reasons.push(clip(r).to_string());
                }
            }
        }
    }

    /// Once the body has ended.
    pub fn finish(mut self) -> ResponseTap {
        if self.mode == Mode::Json {
            if let Ok(v) = serde_json::from_slice::<Value>(&std::mem::take(&mut self.buf)) {
                self.take(&v);
            }
        } else if self.mode == Mode::Sse && !self.buf.is_empty() && !self.overflow {
            self.line();
        }
        self.buf = Vec::new();
        self
    }
}

/// A backend's strings are bounded before they become attributes.
fn clip(s: &str) -> &str {
    let mut end = s.len().min(200);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(pieces: &[&[u8]]) -> ResponseTap {
        let mut t = ResponseTap::default();
        for p in pieces {
            t.feed(p);
        }
        t.finish()
    }

    #[test]
    fn json_bodies() {
        let t = read(&[
            b"{\"id\":\"chatcmpl-1\",\"model\":\"llama\",",
            b"\"choices\":[{\"finish_reason\":\"stop\"},{\"finish_reason\":\"length\"}]}",
        ]);
        assert_eq!(t.id.as_deref(), Some("chatcmpl-1"));
        assert_eq!(t.model.as_deref(), Some("llama"));
        assert_eq!(t.finish_reasons, ["stop", "length"]);
    }

    #[test]
    fn sse_lines_split_anywhere() {
        let body = "data: {\"id\":\"c-2\",\"model\":\"m\",\"choices\":[{\"delta\":{\"content\":\"hi\"},\"finish_reason\":null}]}\n\n\
                    data: {\"id\":\"c-2\",\"model\":\"m\",\"choices\":[{\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n\
                    data: [DONE]\n\n";
        for cut in [1, 7, 50, 120] {
            let (a, b) = body.as_bytes().split_at(cut);
            let t = read(&[a, b]);
            assert_eq!(t.id.as_deref(), Some("c-2"));
            assert_eq!(t.model.as_deref(), Some("m"));
            assert_eq!(t.finish_reasons, ["stop"], "cut at {}", cut);
        }
    }

    #[test]
    fn other_bodies_are_left_alone() {
        let t = read(&[&[0x1f, 0x8b, 8, 0], b"{\"id\":\"x\"}"]);
        assert_eq!(t.id, None);
        let t = read(&[b"not json"]);
        assert_eq!(t.id, None);
    }
}
