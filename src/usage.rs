//! Token counts from what backends report in `usage` (never by counting text): the body of a
//! JSON reply, or the final SSE chunk when the client asked for `stream_options.include_usage`,
//! or a Responses API stream's `response.completed` event.

/// Largest non-stream reply kept for reading `usage`; larger replies are not counted.
const MAX_JSON: usize = 4 * 1024 * 1024;
/// Longest SSE line kept while looking for `usage`.
const MAX_LINE: usize = 256 * 1024;

/// Watches response bytes as they pass and keeps the last usage seen.
#[derive(Debug, Default)]
pub struct UsageTap {
    sse: bool,
    buf: Vec<u8>,
    overflow: bool,
    found: Option<(u64, u64)>,
}

impl UsageTap {
    /// A tap for an SSE (`true`) or JSON (`false`) body.
    pub fn new(sse: bool) -> UsageTap {
        UsageTap {
            sse,
            ..UsageTap::default()
        }
    }

    /// Feeds the next piece of the body.
    pub fn feed(&mut self, data: &[u8]) {
        if !self.sse {
            if self.buf.len() + data.len() > MAX_JSON {
                self.overflow = true;
                self.buf = Vec::new();
            } else if !self.overflow {
                self.buf.extend_from_slice(data);
            }
            return;
        }
        for &b in data {
            if b == b'\n' {
                self.line_done();
            } else if self.buf.len() < MAX_LINE {
                self.buf.push(b);
            } else {
                self.overflow = true;
            }
        }
    }

    fn line_done(&mut self) {
        let line = std::mem::take(&mut self.buf);
        let overflowed = std::mem::replace(&mut self.overflow, false);
        if overflowed {
            return;
        }
        let Some(payload) = line.strip_prefix(b"data:") else {
            return;
        };
        if find(payload, b"\"usage\"").is_none() {
            return;
        }
        if let Some(u) = usage_of(payload) {
            self.found = Some(u);
        }
    }

    /// (prompt, completion) tokens, once the body has ended.
    pub fn finish(mut self) -> Option<(u64, u64)> {
        if self.sse {
            if !self.buf.is_empty() {
                self.line_done();
            }
            return self.found;
        }
        if self.overflow {
            return None;
        }
        usage_of(&self.buf)
    }
}

/// `usage` of a chat/completions body or chunk, or of a Responses API response, also inside
/// its `response.completed` event (`{"response": {"usage": {"input_tokens", "output_tokens"}}}`).
fn usage_of(json: &[u8]) -> Option<(u64, u64)> {
    let v: serde_json::Value = serde_json::from_slice(json).ok()?;
    let u = v
        .get("usage")
        .filter(|u| u.is_object())
        .or_else(|| v.get("response")?.get("usage"))?;
    let count = |a: &str, b: &str| {
        u.get(a)
            .or_else(|| u.get(b))
            .and_then(|x| x.as_u64())
            .unwrap_or(0)
    };
    let prompt = count("prompt_tokens", "input_tokens");
    let completion = count("completion_tokens", "output_tokens");
    (prompt > 0 || completion > 0).then_some((prompt, completion))
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::UsageTap;

    #[test]
    fn reads_usage_from_json_and_split_sse() {
        let mut t = UsageTap::new(false);
        t.feed(br#"{"usage":{"prompt_tokens":3,"#);
        t.feed(br#""completion_tokens":5}}"#);
        assert_eq!(t.finish(), Some((3, 5)));
        let mut t = UsageTap::new(true);
        t.feed(b"data: {\"choices\":[{\"delta\":{\"content\":\"usage\"}}]}\n\ndata: {\"choices\":[],\"us");
        t.feed(b"age\":{\"prompt_tokens\":7,\"completion_tokens\":2}}\n\ndata: [DONE]\n\n");
        assert_eq!(t.finish(), Some((7, 2)));
    }

    #[test]
    fn reads_responses_api_usage() {
        let mut t = UsageTap::new(false);
        t.feed(br#"{"object":"response","usage":{"input_tokens":4,"output_tokens":9}}"#);
        assert_eq!(t.finish(), Some((4, 9)));
        let mut t = UsageTap::new(true);
        t.feed(b"event: response.created\ndata: {\"response\":{\"usage\":null}}\n\n");
        t.feed(b"event: response.completed\ndata: {\"type\":\"response.completed\",\"response\":");
        t.feed(b"{\"usage\":{\"input_tokens\":3,\"output_tokens\":5}}}\n\n");
        assert_eq!(t.finish(), Some((3, 5)));
    }
}
