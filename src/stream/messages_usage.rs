//! Token counts of a backend that speaks the Messages API natively, read from its answer as it
//! passes (stream or body, gzip-compressed or not). A stream says `input_tokens` in
//! `message_start` and `output_tokens` (and, from newer servers, the input counts again) in
//! `message_delta`; each count is cumulative, so the last one seen wins. Anthropic's
//! `input_tokens` leaves out cached tokens: the prompt is input + cache reads + cache writes.

use crate::stream::usage::{BodyFramer, Usage, UsageTap};
use memchr::memmem;
use serde_json::Value;

/// One answer's counts in Anthropic's terms.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AnthropicUsage {
    /// Input tokens neither read from nor written to the prompt cache.
    pub input: u64,
    pub output: u64,
    pub cache_read: u64,
    pub cache_creation: u64,
    /// The part of `cache_creation` written for an hour rather than five minutes.
    pub cache_creation_1h: u64,
}

impl AnthropicUsage {
    /// The ledger's counts: every prompt token, the cache reads as cached. Cache writes are in
    /// the prompt and also in fields of their own (all of them, and the 1-hour part), since
    /// they are billed apart.
    pub fn to_usage(self) -> Usage {
        Usage {
            prompt: self
                .input
                .saturating_add(self.cache_read)
                .saturating_add(self.cache_creation),
            completion: self.output,
            cached: self.cache_read,
            cache_write: self.cache_creation,
            cache_write_1h: self.cache_creation_1h.min(self.cache_creation),
            ..Usage::default()
        }
    }
}

#[derive(Debug, Default)]
struct Seen {
    input: Option<u64>,
    output: Option<u64>,
    cache_read: Option<u64>,
    cache_creation: Option<u64>,
    cache_5m: Option<u64>,
    cache_1h: Option<u64>,
}

impl Seen {
    /// Takes every count `usage` carries; counts it does not carry keep their last value.
    fn take(&mut self, usage: &Value) {
        let n = |v: &Value, k: &str| v.get(k).and_then(Value::as_u64);
        let split = usage.get("cache_creation").filter(|c| c.is_object());
        for (slot, v) in [
            (&mut self.input, n(usage, "input_tokens")),
            (&mut self.output, n(usage, "output_tokens")),
            (&mut self.cache_read, n(usage, "cache_read_input_tokens")),
            (
                &mut self.cache_creation,
                n(usage, "cache_creation_input_tokens"),
            ),
            (
                &mut self.cache_5m,
                split.and_then(|c| n(c, "ephemeral_5m_input_tokens")),
            ),
            (
                &mut self.cache_1h,
                split.and_then(|c| n(c, "ephemeral_1h_input_tokens")),
            ),
        ] {
            if v.is_some() {
                *slot = v;
            }
        }
    }

    fn result(&self) -> Option<AnthropicUsage> {
        if self.input.is_none() && self.output.is_none() {
            return None;
        }
        let split = self
            .cache_5m
            .unwrap_or(0)
            .saturating_add(self.cache_1h.unwrap_or(0));
        Some(AnthropicUsage {
            input: self.input.unwrap_or(0),
            output: self.output.unwrap_or(0),
            cache_read: self.cache_read.unwrap_or(0),
            // A server that only splits its cache writes by duration still wrote them.
            cache_creation: self.cache_creation.unwrap_or(split),
            cache_creation_1h: self.cache_1h.unwrap_or(0),
        })
    }
}

/// Watches a native Messages answer as it passes and keeps its counts.
pub struct NativeUsageTap {
    body: BodyFramer,
    counts: Counts,
}

/// What a Messages answer said so far.
#[derive(Debug, Default)]
struct Counts {
    seen: Seen,
    /// Characters of generated text, for an estimate when the backend reports nothing.
    chars: u64,
}

impl NativeUsageTap {
    /// A tap for a stream (`true`) or a JSON body, gzip-compressed or not.
    pub fn new(sse: bool, gzip: bool) -> NativeUsageTap {
        NativeUsageTap {
            body: BodyFramer::new(sse, gzip),
            counts: Counts::default(),
        }
    }

    /// The next piece of the body, as sent on the wire.
    pub fn feed(&mut self, data: &[u8]) {
        let counts = &mut self.counts;
        self.body.feed(data, &mut |l| counts.line(l));
    }
}

impl Counts {
    /// One SSE line; only the events that carry counts or text are parsed.
    fn line(&mut self, line: &[u8]) {
        if let Some(payload) = line.strip_prefix(b"data:") {
            let usage = memmem::find(payload, b"\"usage\"").is_some();
            let delta = memmem::find(payload, b"content_block_delta").is_some();
            if usage || delta {
                if let Ok(v) = serde_json::from_slice::<Value>(payload) {
                    self.event(&v);
                }
            }
        }
    }

    fn event(&mut self, v: &Value) {
        match v.get("type").and_then(Value::as_str) {
            Some("message_start") => {
                if let Some(u) = v.get("message").and_then(|m| m.get("usage")) {
                    self.seen.take(u);
                }
            }
            Some("message_delta") => {
                if let Some(u) = v.get("usage") {
                    self.seen.take(u);
                }
            }
            Some("content_block_delta") => {
                let d = v.get("delta");
                for k in ["text", "thinking", "partial_json"] {
                    if let Some(s) = d.and_then(|d| d.get(k)).and_then(Value::as_str) {
                        self.chars += s.chars().count() as u64;
                    }
                }
            }
            _ => {}
        }
    }
}

impl NativeUsageTap {
    /// Once the body has ended: the counts the backend reported, and the characters of
    /// generated text (for an estimate when it reported none).
    pub fn finish(mut self) -> (Option<AnthropicUsage>, u64) {
        let sse = self.body.sse();
        let counts = &mut self.counts;
        let json = self.body.finish(&mut |l| counts.line(l));
        if sse {
            return (self.counts.seen.result(), self.counts.chars);
        }
        let Some(v) = json.and_then(|j| serde_json::from_slice::<Value>(j).ok()) else {
            return (None, 0);
        };
        if let Some(u) = v.get("usage") {
            self.counts.seen.take(u);
        }
        let mut chars = 0;
        for b in v
            .get("content")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            for k in ["text", "thinking"] {
                if let Some(s) = b.get(k).and_then(Value::as_str) {
                    chars += s.chars().count() as u64;
                }
            }
            if let Some(input) = b.get("input") {
                chars += input.to_string().chars().count() as u64;
            }
        }
        (self.counts.seen.result(), chars)
    }
}

/// The usage reader of a relayed answer: OpenAI's `usage`, or the Messages API's counts.
pub enum Tap {
    OpenAi(UsageTap),
    Messages(NativeUsageTap),
}

impl Tap {
    /// A reader for a Messages answer (`messages`) or any other, stream or JSON, gzip or not.
    pub fn new(messages: bool, sse: bool, gzip: bool) -> Tap {
        if messages {
            Tap::Messages(NativeUsageTap::new(sse, gzip))
        } else {
            Tap::OpenAi(UsageTap::new(sse, gzip))
        }
    }

    /// The next piece of the body, as sent on the wire.
    pub fn feed(&mut self, data: &[u8]) {
        match self {
            Tap::OpenAi(t) => t.feed(data),
            Tap::Messages(t) => t.feed(data),
        }
    }

    /// The counts in the ledger's terms, and the characters of generated text.
    pub fn finish(self) -> (Option<Usage>, u64) {
        match self {
            Tap::OpenAi(t) => t.finish(),
            Tap::Messages(t) => {
                let (u, chars) = t.finish();
                (u.map(AnthropicUsage::to_usage), chars)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::io::Write;

    /// A native stream whose input tokens are only in message_start, with prompt-cache reads.
    const STREAM: &str = concat!(
        "event: message_start\n",
        "data: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"type\":\"message\",\"role\":\"assistant\",\"content\":[],\"model\":\"claude-sonnet-4-5\",\"stop_reason\":null,\"stop_sequence\":null,\"usage\":{\"input_tokens\":3,\"cache_creation_input_tokens\":0,\"cache_read_input_tokens\":11,\"output_tokens\":1}}}\n\n",
        "event: content_block_start\n",
        "data: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n",
        "event: ping\n",
        "data: {\"type\": \"ping\"}\n\n",
        "event: content_block_delta\n",
        "data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hello there\"}}\n\n",
        "event: content_block_stop\n",
        "data: {\"type\":\"content_block_stop\",\"index\":0}\n\n",
        "event: message_delta\n",
        "data: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\",\"stop_sequence\":null},\"usage\":{\"output_tokens\":20}}\n\n",
        "event: message_stop\n",
        "data: {\"type\":\"message_stop\"}\n\n",
    );

    fn read(sse: bool, gzip: bool, pieces: &[&[u8]]) -> (Option<AnthropicUsage>, u64) {
        let mut t = NativeUsageTap::new(sse, gzip);
        for p in pieces {
            t.feed(p);
        }
        t.finish()
    }

    #[test]
    fn stream_input_from_message_start_and_cache_reads_in_the_prompt() {
        let (u, chars) = read(true, false, &[STREAM.as_bytes()]);
        let u = u.expect("counts");
        assert_eq!(
            u,
            AnthropicUsage {
                input: 3,
                output: 20,
                cache_read: 11,
                cache_creation: 0,
                cache_creation_1h: 0
            }
        );
        assert_eq!(
            u.to_usage(),
            Usage {
                prompt: 14,
                completion: 20,
                cached: 11,
                ..Usage::default()
            }
        );
        assert_eq!(chars, 11);
    }

    #[test]
    fn message_delta_counts_are_cumulative_and_the_last_wins() {
        let s = STREAM.replace(
            "\"usage\":{\"output_tokens\":20}",
            "\"usage\":{\"input_tokens\":5,\"cache_creation_input_tokens\":7,\"cache_read_input_tokens\":11,\"output_tokens\":20}",
        );
        let s = s.replace(
            "event: message_stop\n",
            "event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{},\"usage\":{\"output_tokens\":22}}\n\nevent: message_stop\n",
        );
        let u = read(true, false, &[s.as_bytes()]).0.unwrap();
        assert_eq!(
            u,
            AnthropicUsage {
                input: 5,
                output: 22,
                cache_read: 11,
                cache_creation: 7,
                cache_creation_1h: 0
            }
        );
        assert_eq!(u.to_usage().prompt, 23);
    }

    #[test]
    fn json_body_and_gzip() {
        let body = br#"{"id":"msg_2","type":"message","role":"assistant","content":[{"type":"text","text":"Hi"},{"type":"tool_use","id":"t","name":"f","input":{"a":1}}],"stop_reason":"tool_use","stop_sequence":null,"usage":{"input_tokens":10,"cache_creation_input_tokens":100,"cache_read_input_tokens":0,"output_tokens":4}}"#;
        let want = AnthropicUsage {
            input: 10,
            output: 4,
            cache_read: 0,
            cache_creation: 100,
            cache_creation_1h: 0,
        };
        assert_eq!(
            read(false, false, &[&body[..30], &body[30..]]).0,
            Some(want)
        );
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(STREAM.as_bytes()).unwrap();
        let gz = gz.finish().unwrap();
        let (u, _) = read(true, true, &[&gz[..10], &gz[10..]]);
        assert_eq!(u.unwrap().to_usage().prompt, 14);
    }

    #[test]
    fn one_hour_cache_writes_are_kept_apart() {
        let body = br#"{"type":"message","content":[],"usage":{"input_tokens":4,"cache_creation_input_tokens":300,"cache_read_input_tokens":50,"cache_creation":{"ephemeral_5m_input_tokens":100,"ephemeral_1h_input_tokens":200},"output_tokens":6}}"#;
        let u = read(false, false, &[body]).0.unwrap();
        assert_eq!(
            u.to_usage(),
            Usage {
                prompt: 354,
                completion: 6,
                cached: 50,
                cache_write: 300,
                cache_write_1h: 200,
                ..Usage::default()
            }
        );
        // Only the split: the writes are its sum.
        let body = br#"{"usage":{"input_tokens":1,"cache_creation":{"ephemeral_5m_input_tokens":10,"ephemeral_1h_input_tokens":5},"output_tokens":1}}"#;
        let u = read(false, false, &[body]).0.unwrap().to_usage();
        assert_eq!((u.prompt, u.cache_write, u.cache_write_1h), (16, 15, 5));
    }

    #[test]
    fn no_usage_gives_none_and_the_text_for_an_estimate() {
        let s: String = STREAM
            .split_inclusive("\n\n")
            .filter(|e| !e.contains("message_start") && !e.contains("message_delta"))
            .collect();
        assert_eq!(read(true, false, &[s.as_bytes()]), (None, 11));
        assert_eq!(
            read(
                false,
                false,
                &[b"{\"content\":[{\"type\":\"text\",\"text\":\"abc\"}]}"]
            ),
            (None, 3)
        );
        assert_eq!(read(false, false, &[b"not json"]), (None, 0));
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 100, ..ProptestConfig::default() })]

        #[test]
        fn any_split_reads_the_same(cut_a in 0usize..2000, cut_b in 0usize..2000) {
            let b = STREAM.as_bytes();
            let (mut x, mut y) = (cut_a.min(b.len()), cut_b.min(b.len()));
            if x > y { std::mem::swap(&mut x, &mut y); }
            let (u, _) = read(true, false, &[&b[..x], &b[x..y], &b[y..]]);
            prop_assert_eq!(u, Some(AnthropicUsage { input: 3, output: 20, cache_read: 11, cache_creation: 0, cache_creation_1h: 0 }));
        }
    }
}
