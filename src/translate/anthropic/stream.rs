//! An OpenAI chat completions stream turned into Anthropic's Messages stream as it arrives:
//! each backend piece is fed in (split anywhere) and the Anthropic events it completes come
//! out at once, so nothing waits in a buffer beyond the end of the line that carries it.
//!
//! The events always follow Anthropic's grammar: one `message_start`, then per block a
//! `content_block_start`, deltas of the block's own type and a `content_block_stop`, then
//! `message_delta` and `message_stop`, and nothing after. Every tool argument fragment is an
//! `input_json_delta` (a tool's input is never only in `content_block_start`).

use super::chunk;
use super::response::{message_id, reasoning_of, stop_reason, Reply, Tokens};
use crate::http::anthropic_error::AnthropicError;
use serde_json::{json, Value};

/// Longest backend SSE line kept; a longer one ends the stream with an error event.
const MAX_LINE: usize = 8 * 1024 * 1024;

/// Sent between events while the backend is silent, so clients and proxies keep the stream.
pub const PING: &[u8] = b"event: ping\ndata: {\"type\":\"ping\"}\n\n";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Thinking,
    Text,
    /// A tool call, by its position in `StreamTranslator::tools`.
    Tool(usize),
}

/// A tool call of the backend's stream.
#[derive(Debug, Default)]
struct Tool {
    /// The backend's `index` of the call.
    backend_index: u64,
    id: Option<String>,
    name: Option<String>,
    /// The block index, once its `content_block_start` went out.
    block: Option<usize>,
    /// Argument fragments that came before the call's name (the block cannot start yet).
    pending: String,
    /// An argument fragment went out.
    sent_args: bool,
    stopped: bool,
}

/// The translation state of one stream.
#[derive(Debug)]
pub struct StreamTranslator {
    ctx: Reply,
    line: Vec<u8>,
    overflow: bool,
    started: bool,
    done: bool,
    failed: bool,
    open: Option<(Kind, usize)>,
    next_block: usize,
    tools: Vec<Tool>,
    finish: Option<String>,
    backend_stop: Option<Value>,
    tokens: Option<Tokens>,
    /// Characters of generated text, for an output estimate when the backend reports none.
    chars: u64,
}

impl StreamTranslator {
    /// A translator for the answer to the request `ctx` describes.
    pub fn new(ctx: Reply) -> StreamTranslator {
        StreamTranslator {
            ctx,
            line: Vec::new(),
            overflow: false,
            started: false,
            done: false,
            failed: false,
            open: None,
            next_block: 0,
            tools: Vec::new(),
            finish: None,
            backend_stop: None,
            tokens: None,
            chars: 0,
        }
    }

    /// True once `message_stop` or an `error` event went out: nothing more will.
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// True once the stream ended with an `error` event.
    pub fn failed(&self) -> bool {
        self.failed
    }

    /// The counts `message_delta` carries (or would carry now): the backend's, or an estimate
    /// (`true`) when it reported none.
    pub fn tokens(&self) -> (Tokens, bool) {
        match self.tokens {
            Some(t) => (t, false),
            None => (
                Tokens {
                    input: self.ctx.input_estimate,
                    output: self.chars.div_ceil(4),
                    cache_read: 0,
                },
                true,
            ),
        }
    }

    /// The next piece of the backend's body; returns the Anthropic SSE bytes to send now.
    pub fn feed(&mut self, data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        self.feed_into(data, &mut out);
        out
    }

    /// `feed`, the bytes to send appended to `out` (a buffer the caller reuses).
    pub fn feed_into(&mut self, data: &[u8], out: &mut Vec<u8>) {
        let mut rest = data;
        while !rest.is_empty() && !self.done {
            let end = memchr::memchr(b'\n', rest);
            let part = &rest[..end.unwrap_or(rest.len())];
            if self.line.len() + part.len() > MAX_LINE {
                self.overflow = true;
            } else if !self.overflow {
                self.line.extend_from_slice(part);
            }
            match end {
                Some(at) => {
                    self.line_done(out);
                    rest = &rest[at + 1..];
                }
                None => break,
            }
        }
    }

    /// The backend's body ended. A stream that said why it finished (or sent `[DONE]`) ends
    /// with `message_delta` and `message_stop`; one cut short ends with an `error` event.
    pub fn finish(&mut self) -> Vec<u8> {
        let mut out = Vec::new();
        if !self.line.is_empty() || self.overflow {
            self.line_done(&mut out);
        }
        if self.done {
            return out;
        }
        if self.finish.is_some() {
            self.end_message(&mut out);
        } else {
            out.extend(self.fail(&AnthropicError::new(
                502,
                "The backend's stream ended before the answer was complete.",
            )));
        }
        out
    }

    /// The backend failed after the stream began: an `error` event, and the stream is over.
    pub fn fail(&mut self, e: &AnthropicError) -> Vec<u8> {
        if self.done {
            return Vec::new();
        }
        self.done = true;
        self.failed = true;
        e.sse_event()
    }

    fn line_done(&mut self, out: &mut Vec<u8>) {
        let mut buf = std::mem::take(&mut self.line);
        if std::mem::replace(&mut self.overflow, false) {
            out.extend(self.fail(&AnthropicError::new(
                502,
                format!("The backend sent a stream line over {} bytes.", MAX_LINE),
            )));
            return;
        }
        let line = buf.strip_suffix(b"\r").unwrap_or(&buf);
        // OpenAI-compatible servers put each chunk on one `data:` line; other fields (event,
        // id, comments) carry nothing for the translation.
        if let Some(payload) = line.strip_prefix(b"data:") {
            let payload = payload.strip_prefix(b" ").unwrap_or(payload);
            self.chunk(payload, out);
        }
        // The buffer's allocation is reused for the next line.
        buf.clear();
        self.line = buf;
    }

    fn chunk(&mut self, payload: &[u8], out: &mut Vec<u8>) {
        if payload == b"[DONE]" {
            self.end_message(out);
            return;
        }
        // Most chunks carry a piece of text and nothing else: read without a JSON tree.
        if let Some(c) = chunk::simple(payload) {
            self.simple(c, out);
            return;
        }
        let v: Value = match serde_json::from_slice(payload) {
            Ok(v) => v,
            // Not a chunk (a keep-alive or a server's own line): nothing to translate.
            Err(_) => return,
        };
        if v.get("choices").is_none() {
            if let Some(err) = v.get("error").filter(|e| !e.is_null()) {
                let status = err
                    .get("code")
                    .and_then(Value::as_u64)
                    .filter(|c| (400..600).contains(c))
                    .unwrap_or(500) as u16;
                out.extend(self.fail(&AnthropicError::from_backend(status, payload)));
                return;
            }
        }
        self.start(v.get("id").and_then(Value::as_str), out);
        if let Some(u) = v.get("usage").filter(|u| u.is_object()) {
            if let Some(t) = Tokens::from_openai(u) {
                self.tokens = Some(t);
            }
        }
        // One answer: the first choice (`n` > 1 has no Messages equivalent).
        let choice = match v.get("choices").and_then(|c| c.as_array()).and_then(|c| {
            c.iter()
                .find(|c| c.get("index").and_then(Value::as_u64).unwrap_or(0) == 0)
        }) {
            Some(c) => c,
            None => return,
        };
        if let Some(delta) = choice.get("delta") {
            self.text_deltas(
                reasoning_of(delta),
                delta.get("content").and_then(Value::as_str),
                out,
            );
            // An empty `tool_calls: []` beside content is no tool call.
            if let Some(calls) = delta.get("tool_calls").and_then(Value::as_array) {
                for (pos, call) in calls.iter().enumerate() {
                    self.tool_delta(pos, call, out);
                }
            }
        }
        if let Some(f) = choice.get("finish_reason").and_then(Value::as_str) {
            self.finish = Some(f.to_string());
            self.backend_stop = choice.get("stop_reason").cloned();
            self.close_all(out);
        }
    }

    /// A chunk `chunk::simple` read: what `chunk` does with it, in the same order.
    fn simple(&mut self, c: chunk::Simple, out: &mut Vec<u8>) {
        self.start(c.id.as_deref(), out);
        if let Some(d) = &c.delta {
            self.text_deltas(d.reasoning(), d.content.as_deref(), out);
        }
    }

    /// A delta's reasoning, then its text (an empty text is none).
    fn text_deltas(&mut self, reasoning: Option<&str>, content: Option<&str>, out: &mut Vec<u8>) {
        if let Some(r) = reasoning {
            self.chars += r.chars().count() as u64;
            self.delta(Kind::Thinking, r, out);
        }
        if let Some(t) = content.filter(|t| !t.is_empty()) {
            self.chars += t.chars().count() as u64;
            self.delta(Kind::Text, t, out);
        }
    }

    fn start(&mut self, backend_id: Option<&str>, out: &mut Vec<u8>) {
        if self.started {
            return;
        }
        self.started = true;
        let usage = Tokens {
            // An estimate, never 0: the real count comes in message_delta.
            input: self.ctx.input_estimate.max(1),
            ..Tokens::default()
        };
        event(
            out,
            "message_start",
            &json!({"type": "message_start", "message": {
                "id": message_id(backend_id),
                "type": "message",
                "role": "assistant",
                "model": self.ctx.model,
                "content": [],
                "stop_reason": null,
                "stop_sequence": null,
                "usage": usage.to_json(),
            }}),
        );
    }

    /// A text or thinking delta, in a block of its kind (opened when another kind is open).
    fn delta(&mut self, kind: Kind, text: &str, out: &mut Vec<u8>) {
        let index = match self.open {
            Some((k, i)) if k == kind => i,
            _ => {
                self.close_open(out);
                let block = match kind {
                    Kind::Thinking => json!({"type": "thinking", "thinking": "", "signature": ""}),
                    _ => json!({"type": "text", "text": ""}),
                };
                self.open_block(kind, block, out)
            }
        };
        text_delta_event(out, index, kind, text);
    }

    fn tool_delta(&mut self, pos: usize, call: &Value, out: &mut Vec<u8>) {
        let backend_index = call
            .get("index")
            .and_then(Value::as_u64)
            .unwrap_or(pos as u64);
        let t = match self
            .tools
            .iter()
            .position(|t| t.backend_index == backend_index)
        {
            Some(t) => t,
            None => {
                self.tools.push(Tool {
                    backend_index,
                    ..Tool::default()
                });
                self.tools.len() - 1
            }
        };
        let f = call.get("function");
        let text = |v: Option<&Value>| {
            v.and_then(Value::as_str)
                .filter(|s| !s.is_empty())
                .map(String::from)
        };
        let tool = &mut self.tools[t];
        if tool.id.is_none() {
            tool.id = text(call.get("id"));
        }
        if tool.name.is_none() {
            tool.name = text(f.and_then(|f| f.get("name")));
        }
        let args = match f.and_then(|f| f.get("arguments")) {
            Some(Value::String(s)) => s.clone(),
            // Some servers send the whole arguments as an object.
            Some(v @ Value::Object(_)) => v.to_string(),
            _ => String::new(),
        };
        self.chars += args.chars().count() as u64;
        if tool.block.is_none() {
            tool.pending.push_str(&args);
            if tool.name.is_some() {
                self.start_tool(t, out);
            }
            return;
        }
        self.args_delta(t, args, out);
    }

    fn start_tool(&mut self, t: usize, out: &mut Vec<u8>) {
        self.close_open(out);
        let tool = &self.tools[t];
        let id = tool
            .id
            .clone()
            .unwrap_or_else(|| format!("toolu_{}_{}", self.next_block, tool.backend_index));
        let block = json!({"type": "tool_use", "id": id, "name": tool.name.clone().unwrap_or_default(), "input": {}});
        let index = self.open_block(Kind::Tool(t), block, out);
        self.tools[t].block = Some(index);
        let pending = std::mem::take(&mut self.tools[t].pending);
        self.args_delta(t, pending, out);
    }

    fn args_delta(&mut self, t: usize, args: String, out: &mut Vec<u8>) {
        if args.is_empty() {
            return;
        }
        let tool = &mut self.tools[t];
        tool.sent_args = true;
        // A fragment of a call whose block already closed (a backend interleaving parallel
        // calls) still goes out, at that block's index: losing arguments is worse.
        let index = tool.block.unwrap_or_default();
        delta_event(
            out,
            index,
            json!({"type": "input_json_delta", "partial_json": args}),
        );
    }

    fn open_block(&mut self, kind: Kind, block: Value, out: &mut Vec<u8>) -> usize {
        let index = self.next_block;
        self.next_block += 1;
        self.open = Some((kind, index));
        event(
            out,
            "content_block_start",
            &json!({"type": "content_block_start", "index": index, "content_block": block}),
        );
        index
    }

    fn close_open(&mut self, out: &mut Vec<u8>) {
        let Some((kind, index)) = self.open.take() else {
            return;
        };
        if let Kind::Tool(t) = kind {
            let tool = &mut self.tools[t];
            tool.stopped = true;
            if !tool.sent_args {
                // A call without arguments: its input is still said in a delta.
                tool.sent_args = true;
                delta_event(
                    out,
                    index,
                    json!({"type": "input_json_delta", "partial_json": "{}"}),
                );
            }
        }
        event(
            out,
            "content_block_stop",
            &json!({"type": "content_block_stop", "index": index}),
        );
    }

    /// Closes the open block and gives calls that never got a name a block of their own, so
    /// their arguments reach the client.
    fn close_all(&mut self, out: &mut Vec<u8>) {
        self.close_open(out);
        for t in 0..self.tools.len() {
            if self.tools[t].block.is_none() {
                self.start_tool(t, out);
                self.close_open(out);
            }
        }
    }

    fn end_message(&mut self, out: &mut Vec<u8>) {
        if self.done {
            return;
        }
        self.start(None, out);
        self.close_all(out);
        let used_tools = !self.tools.is_empty();
        let (reason, sequence) = stop_reason(
            self.finish.as_deref(),
            self.backend_stop.as_ref(),
            &self.ctx.stop_sequences,
            used_tools,
        );
        let (tokens, _) = self.tokens();
        event(
            out,
            "message_delta",
            &json!({"type": "message_delta",
                "delta": {"stop_reason": reason, "stop_sequence": sequence},
                "usage": tokens.to_json()}),
        );
        event(out, "message_stop", &json!({"type": "message_stop"}));
        self.done = true;
    }
}

/// The whole event stream for a non-stream chat completion, for a client that asked for a
/// stream from a backend that answered in one piece: the message as one chunk.
pub fn from_completion(chat: &Value, ctx: Reply) -> Vec<u8> {
    let choice = chat.get("choices").and_then(|c| c.get(0));
    let mut delta = choice
        .and_then(|c| c.get("message"))
        .cloned()
        .unwrap_or_else(|| json!({}));
    // A message's tool calls carry no `index`; their position is it.
    if let Some(calls) = delta.get_mut("tool_calls").and_then(Value::as_array_mut) {
        for (i, c) in calls.iter_mut().enumerate() {
            if let Some(c) = c.as_object_mut() {
                c.entry("index").or_insert(json!(i));
            }
        }
    }
    let field = |k: &str| {
        choice
            .and_then(|c| c.get(k))
            .cloned()
            .unwrap_or(Value::Null)
    };
    let mut one = json!({"choices": [{"index": 0, "delta": delta,
        "finish_reason": field("finish_reason"), "stop_reason": field("stop_reason")}]});
    for k in ["id", "usage"] {
        if let Some(v) = chat.get(k) {
            one[k] = v.clone();
        }
    }
    let mut t = StreamTranslator::new(ctx);
    let mut out = t.feed(format!("data: {}\n\ndata: [DONE]\n\n", one).as_bytes());
    out.extend(t.finish());
    out
}

fn event(out: &mut Vec<u8>, name: &str, data: &Value) {
    out.extend_from_slice(b"event: ");
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b"\ndata: ");
    // Writing a Value to a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, data);
    out.extend_from_slice(b"\n\n");
}

/// The event `delta_event` writes for `json!({"type": "text_delta", "text": text})` (or
/// `thinking_delta` and `thinking`), written directly: one for nearly every backend chunk.
fn text_delta_event(out: &mut Vec<u8>, index: usize, kind: Kind, text: &str) {
    let (delta, field) = match kind {
        Kind::Thinking => ("thinking_delta", "thinking"),
        _ => ("text_delta", "text"),
    };
    out.extend_from_slice(
        b"event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":",
    );
    out.extend_from_slice(crate::decimal::bytes(index as u64, &mut [0u8; 20]));
    out.extend_from_slice(b",\"delta\":{\"type\":\"");
    out.extend_from_slice(delta.as_bytes());
    out.extend_from_slice(b"\",\"");
    out.extend_from_slice(field.as_bytes());
    out.extend_from_slice(b"\":");
    // serde_json's own string escaping, as the Value form had it.
    let _ = serde_json::to_writer(&mut *out, text);
    out.extend_from_slice(b"}}\n\n");
}

fn delta_event(out: &mut Vec<u8>, index: usize, delta: Value) {
    event(
        out,
        "content_block_delta",
        &json!({"type": "content_block_delta", "index": index, "delta": delta}),
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ctx() -> Reply {
        Reply {
            model: "claude-sonnet-4-5".into(),
            stop_sequences: vec!["###".into()],
            input_estimate: 25,
        }
    }

    /// An OpenAI stream of these chunks, ended by `[DONE]`.
    fn sse(chunks: &[Value]) -> Vec<u8> {
        let mut s = String::new();
        for c in chunks {
            s.push_str(&format!("data: {}\n\n", c));
        }
        s.push_str("data: [DONE]\n\n");
        s.into_bytes()
    }

    fn chunk(delta: Value, finish: Value) -> Value {
        json!({"id": "chatcmpl-9", "object": "chat.completion.chunk", "model": "qwen3",
               "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
    }

    fn usage_chunk(prompt: u64, completion: u64, cached: u64) -> Value {
        json!({"id": "chatcmpl-9", "object": "chat.completion.chunk", "choices": [],
               "usage": {"prompt_tokens": prompt, "completion_tokens": completion,
                         "prompt_tokens_details": {"cached_tokens": cached}}})
    }

    fn translate_whole(input: &[u8]) -> Vec<u8> {
        let mut t = StreamTranslator::new(ctx());
        let mut out = t.feed(input);
        out.extend(t.finish());
        out
    }

    /// The events of an Anthropic stream, checked against its grammar.
    fn events(out: &[u8]) -> Vec<(String, Value)> {
        let text = std::str::from_utf8(out).expect("utf-8");
        assert!(
            text.is_empty() || text.ends_with("\n\n"),
            "ends mid-event: {:?}",
            text
        );
        let evs: Vec<(String, Value)> = text
            .split_terminator("\n\n")
            .map(|e| {
                let (name, data) = e
                    .strip_prefix("event: ")
                    .and_then(|e| e.split_once("\ndata: "))
                    .unwrap_or_else(|| panic!("not an event: {:?}", e));
                let v: Value = serde_json::from_str(data).expect("data is JSON");
                assert_eq!(v["type"], name, "event name and type agree");
                (name.to_string(), v)
            })
            .collect();
        check_grammar(&evs);
        evs
    }

    fn check_grammar(evs: &[(String, Value)]) {
        let names: Vec<&str> = evs.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names.iter().filter(|n| **n == "message_start").count(),
            1.min(names.len()),
            "{:?}",
            names
        );
        if names.last() == Some(&"error") {
            assert_eq!(names.iter().filter(|n| **n == "error").count(), 1);
            return;
        }
        assert_eq!(names.first(), Some(&"message_start"), "{:?}", names);
        assert_eq!(
            &names[names.len() - 2..],
            ["message_delta", "message_stop"],
            "{:?}",
            names
        );
        let mut open: Option<(u64, String)> = None;
        let mut next = 0;
        let mut tool_has_delta = false;
        for (name, v) in &evs[1..evs.len() - 2] {
            match name.as_str() {
                "content_block_start" => {
                    assert!(
                        open.is_none(),
                        "block started while another is open: {:?}",
                        names
                    );
                    assert_eq!(v["index"], next);
                    let kind = v["content_block"]["type"].as_str().unwrap().to_string();
                    if kind == "tool_use" {
                        assert_eq!(
                            v["content_block"]["input"],
                            json!({}),
                            "input only in deltas"
                        );
                    }
                    open = Some((next, kind));
                    tool_has_delta = false;
                    next += 1;
                }
                "content_block_delta" => {
                    let (index, kind) = open.clone().expect("delta inside a block");
                    assert_eq!(v["index"], index);
                    let want = match kind.as_str() {
                        "text" => "text_delta",
                        "thinking" => "thinking_delta",
                        _ => "input_json_delta",
                    };
                    assert_eq!(v["delta"]["type"], want, "delta matches its block");
                    tool_has_delta = true;
                }
                "content_block_stop" => {
                    let (index, kind) = open.take().expect("stop of an open block");
                    assert_eq!(v["index"], index);
                    assert!(
                        kind != "tool_use" || tool_has_delta,
                        "a tool's input came in no delta"
                    );
                }
                other => panic!("unexpected {} inside the message: {:?}", other, names),
            }
        }
        assert!(open.is_none(), "block left open");
    }

    /// The Message a client SDK builds from the events.
    fn accumulate(evs: &[(String, Value)]) -> Value {
        let mut msg = Value::Null;
        let mut json_parts: Vec<String> = Vec::new();
        for (name, v) in evs {
            match name.as_str() {
                "message_start" => msg = v["message"].clone(),
                "content_block_start" => {
                    msg["content"]
                        .as_array_mut()
                        .unwrap()
                        .push(v["content_block"].clone());
                    json_parts.push(String::new());
                }
                "content_block_delta" => {
                    let i = v["index"].as_u64().unwrap() as usize;
                    let d = &v["delta"];
                    let b = &mut msg["content"][i];
                    match d["type"].as_str().unwrap() {
                        "text_delta" => {
                            b["text"] = json!(format!(
                                "{}{}",
                                b["text"].as_str().unwrap(),
                                d["text"].as_str().unwrap()
                            ))
                        }
                        "thinking_delta" => {
                            b["thinking"] = json!(format!(
                                "{}{}",
                                b["thinking"].as_str().unwrap(),
                                d["thinking"].as_str().unwrap()
                            ))
                        }
                        _ => json_parts[i].push_str(d["partial_json"].as_str().unwrap()),
                    }
                }
                "content_block_stop" => {
                    let i = v["index"].as_u64().unwrap() as usize;
                    if msg["content"][i]["type"] == "tool_use" {
                        msg["content"][i]["input"] =
                            serde_json::from_str(&json_parts[i]).expect("input is JSON");
                    }
                }
                "message_delta" => {
                    msg["stop_reason"] = v["delta"]["stop_reason"].clone();
                    msg["stop_sequence"] = v["delta"]["stop_sequence"].clone();
                    msg["usage"] = v["usage"].clone();
                }
                _ => {}
            }
        }
        msg
    }

    /// Thinking, text, then two parallel tool calls: the first with its arguments over many
    /// chunks, the second with all of them in the final chunk beside `finish_reason`.
    fn tool_stream() -> Vec<u8> {
        sse(&[
            chunk(
                json!({"role": "assistant", "content": "", "reasoning_content": "Two cities"}),
                Value::Null,
            ),
            chunk(json!({"reasoning_content": ", two calls."}), Value::Null),
            chunk(
                json!({"content": "Checking", "tool_calls": []}),
                Value::Null,
            ),
            chunk(json!({"content": " both."}), Value::Null),
            chunk(
                json!({"tool_calls": [{"index": 0, "id": "call_p", "type": "function", "function": {"name": "get_weather", "arguments": ""}}]}),
                Value::Null,
            ),
            chunk(
                json!({"tool_calls": [{"index": 0, "function": {"arguments": "{\"ci"}}]}),
                Value::Null,
            ),
            chunk(
                json!({"tool_calls": [{"index": 0, "function": {"arguments": "ty\": \"Par"}}]}),
                Value::Null,
            ),
            chunk(
                json!({"tool_calls": [{"index": 0, "function": {"arguments": "is\"}"}}]}),
                Value::Null,
            ),
            chunk(
                json!({"tool_calls": [{"index": 1, "id": "call_r", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\": \"Rome\"}"}}]}),
                json!("tool_calls"),
            ),
            usage_chunk(30, 40, 0),
        ])
    }

    #[test]
    fn plain_text_stream_exact_bytes_with_first_delta_and_cached_usage() {
        let input = sse(&[
            chunk(json!({"role": "assistant", "content": "Hel"}), Value::Null),
            chunk(json!({"content": "lo"}), Value::Null),
            chunk(json!({}), json!("stop")),
            usage_chunk(14, 2, 11),
        ]);
        let out = String::from_utf8(translate_whole(&input)).unwrap();
        assert_eq!(
            out,
            concat!(
                "event: message_start\n",
                "data: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_chatcmpl-9\",\"type\":\"message\",\"role\":\"assistant\",\"model\":\"claude-sonnet-4-5\",\"content\":[],\"stop_reason\":null,\"stop_sequence\":null,\"usage\":{\"input_tokens\":25,\"cache_creation_input_tokens\":0,\"cache_read_input_tokens\":0,\"output_tokens\":0}}}\n\n",
                "event: content_block_start\n",
                "data: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n",
                "event: content_block_delta\n",
                "data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hel\"}}\n\n",
                "event: content_block_delta\n",
                "data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"lo\"}}\n\n",
                "event: content_block_stop\n",
                "data: {\"type\":\"content_block_stop\",\"index\":0}\n\n",
                "event: message_delta\n",
                "data: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\",\"stop_sequence\":null},\"usage\":{\"input_tokens\":3,\"cache_creation_input_tokens\":0,\"cache_read_input_tokens\":11,\"output_tokens\":2}}\n\n",
                "event: message_stop\n",
                "data: {\"type\":\"message_stop\"}\n\n",
            )
        );
        events(out.as_bytes());
    }

    #[test]
    fn tool_arguments_split_and_in_one_final_chunk_all_arrive_as_deltas() {
        let out = translate_whole(&tool_stream());
        let evs = events(&out);
        let names: Vec<&str> = evs.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names.iter().filter(|n| **n == "message_start").count(), 1);
        let msg = accumulate(&evs);
        assert_eq!(
            msg["content"],
            json!([
                {"type": "thinking", "thinking": "Two cities, two calls.", "signature": ""},
                {"type": "text", "text": "Checking both."},
                {"type": "tool_use", "id": "call_p", "name": "get_weather", "input": {"city": "Paris"}},
                {"type": "tool_use", "id": "call_r", "name": "get_weather", "input": {"city": "Rome"}}
            ])
        );
        assert_eq!(msg["stop_reason"], "tool_use");
        // Every argument fragment is its own delta.
        let fragments: Vec<&str> = evs
            .iter()
            .filter(|(_, v)| v["delta"]["type"] == "input_json_delta")
            .map(|(_, v)| v["delta"]["partial_json"].as_str().unwrap())
            .collect();
        assert_eq!(
            fragments,
            ["{\"ci", "ty\": \"Par", "is\"}", "{\"city\": \"Rome\"}"]
        );
        assert_eq!(
            msg["usage"],
            json!({"input_tokens": 30, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0, "output_tokens": 40})
        );
    }

    #[test]
    fn content_beside_empty_tool_calls_is_text() {
        let out = translate_whole(&sse(&[
            chunk(
                json!({"role": "assistant", "content": "Hi", "tool_calls": []}),
                Value::Null,
            ),
            chunk(json!({"content": "!", "tool_calls": []}), json!("stop")),
        ]));
        let msg = accumulate(&events(&out));
        assert_eq!(msg["content"], json!([{"type": "text", "text": "Hi!"}]));
        assert_eq!(msg["stop_reason"], "end_turn");
    }

    #[test]
    fn stop_sequence_named_by_the_backend() {
        let out = translate_whole(&sse(&[
            chunk(json!({"content": "a"}), Value::Null),
            json!({"id": "x", "choices": [{"index": 0, "delta": {}, "finish_reason": "stop", "stop_reason": "###"}]}),
        ]));
        let msg = accumulate(&events(&out));
        assert_eq!(
            (&msg["stop_reason"], &msg["stop_sequence"]),
            (&json!("stop_sequence"), &json!("###"))
        );
        let out = translate_whole(&sse(&[chunk(json!({"content": "a"}), json!("length"))]));
        assert_eq!(accumulate(&events(&out))["stop_reason"], "max_tokens");
    }

    #[test]
    fn nothing_after_message_stop() {
        let mut t = StreamTranslator::new(ctx());
        let out = t.feed(&sse(&[chunk(json!({"content": "a"}), json!("stop"))]));
        assert!(t.is_done());
        assert!(out.ends_with(b"event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n"));
        assert!(t
            .feed(&sse(&[chunk(json!({"content": "late"}), json!("stop"))]))
            .is_empty());
        assert!(t.finish().is_empty());
        assert!(t.fail(&AnthropicError::new(502, "x")).is_empty());
    }

    #[test]
    fn backend_error_mid_stream_is_an_error_event_and_the_end() {
        let mut t = StreamTranslator::new(ctx());
        let first = format!(
            "data: {}\n\n",
            chunk(json!({"content": "partial"}), Value::Null)
        );
        let mut out = t.feed(&first.as_bytes()[..60]);
        out.extend(t.feed(&first.as_bytes()[60..]));
        out.extend(
            t.feed(b"data: {\"error\":{\"message\":\"CUDA out of memory\",\"code\":500}}\n\n"),
        );
        out.extend(t.feed(b"data: [DONE]\n\n"));
        out.extend(t.finish());
        let evs = events(&out);
        let (name, v) = evs.last().unwrap();
        assert_eq!(name, "error");
        assert_eq!(
            v["error"],
            json!({"type": "api_error", "message": "CUDA out of memory"})
        );
        assert_eq!(evs.iter().filter(|(n, _)| n == "message_stop").count(), 0);
    }

    #[test]
    fn stream_cut_short_ends_with_an_error_and_fail_after_start() {
        let mut t = StreamTranslator::new(ctx());
        let mut out =
            t.feed(b"data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"a\"}}]}\n\n");
        out.extend(t.finish());
        let evs = events(&out);
        assert_eq!(evs.last().unwrap().1["error"]["type"], "api_error");

        let mut t = StreamTranslator::new(ctx());
        let mut out =
            t.feed(b"data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"a\"}}]}\n\n");
        out.extend(t.fail(&AnthropicError::new(504, "The backend went silent.")));
        assert!(t.is_done());
        assert_eq!(
            events(&out).last().unwrap().1["error"]["type"],
            "timeout_error"
        );
    }

    #[test]
    fn finish_reason_without_done_ends_normally_with_an_estimate() {
        let mut t = StreamTranslator::new(ctx());
        let mut out = t.feed(b"data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"abcdefgh\"},\"finish_reason\":\"stop\"}]}");
        out.extend(t.finish());
        let msg = accumulate(&events(&out));
        assert_eq!(msg["usage"]["input_tokens"], 25);
        assert_eq!(msg["usage"]["output_tokens"], 2);
        assert!(t.tokens().1, "marked as an estimate");
        assert!(msg["id"].as_str().unwrap().starts_with("msg_"));
    }

    #[test]
    fn arguments_before_the_name_and_calls_without_arguments() {
        let out = translate_whole(&sse(&[
            chunk(
                json!({"tool_calls": [{"index": 0, "function": {"arguments": "{\"q\":"}}]}),
                Value::Null,
            ),
            chunk(
                json!({"tool_calls": [{"index": 0, "id": "c1", "function": {"name": "search", "arguments": "1}"}}]}),
                Value::Null,
            ),
            chunk(
                json!({"tool_calls": [{"index": 1, "id": "c2", "function": {"name": "now"}}]}),
                json!("tool_calls"),
            ),
        ]));
        let msg = accumulate(&events(&out));
        assert_eq!(
            msg["content"],
            json!([
                {"type": "tool_use", "id": "c1", "name": "search", "input": {"q": 1}},
                {"type": "tool_use", "id": "c2", "name": "now", "input": {}}
            ])
        );
    }

    #[test]
    fn crlf_lines_and_data_without_space() {
        let input = b"data:{\"id\":\"a\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"x\"}}]}\r\n\r\n: keep-alive\r\n\r\ndata: {\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\r\n\r\ndata: [DONE]\r\n\r\n";
        let msg = accumulate(&events(&translate_whole(input)));
        assert_eq!(msg["content"], json!([{"type": "text", "text": "x"}]));
        assert_eq!(msg["id"], "msg_a");
    }

    #[test]
    fn output_comes_as_soon_as_a_line_is_complete() {
        let mut t = StreamTranslator::new(ctx());
        assert!(t
            .feed(b"data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"x\"}}]}")
            .is_empty());
        let out = String::from_utf8(t.feed(b"\n")).unwrap();
        assert!(
            out.contains("message_start") && out.contains("\"text\":\"x\""),
            "{}",
            out
        );
    }

    #[test]
    fn a_completion_in_one_piece_becomes_the_same_events() {
        let chat = json!({"id": "chatcmpl-1", "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
            "role": "assistant", "content": "Sure.", "reasoning_content": "think",
            "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{\"a\":1}"}}]}}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 5}});
        let msg = accumulate(&events(&from_completion(&chat, ctx())));
        let mut want = crate::translate::anthropic::response::to_message(&chat, &ctx());
        want["id"] = msg["id"].clone();
        assert_eq!(msg, want);
    }

    #[test]
    fn ping_is_one_event() {
        assert_eq!(PING, b"event: ping\ndata: {\"type\":\"ping\"}\n\n");
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

        /// Wherever the backend's pieces split, the client gets the same events.
        #[test]
        fn any_split_gives_the_same_events(mut cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..40)) {
            let input = tool_stream();
            let whole = translate_whole(&input);
            let mut points: Vec<usize> = cuts.drain(..).map(|c| c.index(input.len() + 1)).collect();
            points.sort_unstable();
            let mut t = StreamTranslator::new(ctx());
            let mut out = Vec::new();
            let mut from = 0;
            for p in points {
                out.extend(t.feed(&input[from..p]));
                from = p;
            }
            out.extend(t.feed(&input[from..]));
            out.extend(t.finish());
            prop_assert_eq!(String::from_utf8(out).unwrap(), String::from_utf8(whole).unwrap());
        }

        /// A text or reasoning chunk gives the same bytes read without a JSON tree
        /// (`chunk::simple`) as read as a `Value` (forced here by an empty `tool_calls`, which
        /// says nothing).
        #[test]
        fn simple_chunks_read_as_values_read(steps in proptest::collection::vec((0u8..4, "(\\PC|[\"\\\\\n\u{1}\u{7f}]){0,8}", any::<bool>()), 1..12)) {
            let mut fast = String::new();
            let mut general = String::new();
            for (kind, text, extra) in &steps {
                let mut delta = match kind {
                    0 => json!({"content": text}),
                    1 => json!({"reasoning_content": text}),
                    2 => json!({"role": "assistant", "reasoning": text, "content": null}),
                    _ => json!({"content": text, "reasoning_content": ""}),
                };
                let mut c = json!({"id": "chatcmpl-7", "object": "chat.completion.chunk",
                    "choices": [{"index": 0, "delta": delta.clone(), "finish_reason": null}]});
                if *extra {
                    c["usage"] = Value::Null;
                    c["choices"] = json!([{"index": 1, "delta": {"content": "other"}}, c["choices"][0].clone()]);
                }
                prop_assert!(chunk::simple(c.to_string().as_bytes()).is_some());
                fast.push_str(&format!("data: {}\n\n", c));
                delta["tool_calls"] = json!([]);
                let last = c["choices"].as_array().unwrap().len() - 1;
                c["choices"][last]["delta"] = delta;
                prop_assert!(chunk::simple(c.to_string().as_bytes()).is_none());
                general.push_str(&format!("data: {}\n\n", c));
            }
            let end = format!("data: {}\n\ndata: [DONE]\n\n", chunk(json!({}), json!("stop")));
            fast.push_str(&end);
            general.push_str(&end);
            let fast = translate_whole(fast.as_bytes());
            prop_assert_eq!(String::from_utf8(fast).unwrap(), String::from_utf8(translate_whole(general.as_bytes())).unwrap());
        }

        /// Random chunk sequences never break the grammar.
        #[test]
        fn random_chunks_keep_the_grammar(steps in proptest::collection::vec((0u8..5, "[a-z\"{} ]{0,6}", 0u64..2), 0..25), done in any::<bool>()) {
            let mut chunks = Vec::new();
            // Backends send one call's fragments together, before the next call's: the index
            // only grows, and a call interrupted by text is not continued.
            let mut call = 0;
            let mut in_call = false;
            for (kind, s, next) in steps {
                let kind = if kind == 3 && !in_call { 2 } else { kind };
                if kind == 2 {
                    call += if in_call { next } else { 1 };
                }
                in_call = kind == 2 || kind == 3;
                let i = call;
                chunks.push(match kind {
                    0 => chunk(json!({"content": s}), Value::Null),
                    1 => chunk(json!({"reasoning_content": s}), Value::Null),
                    2 => chunk(json!({"tool_calls": [{"index": i, "id": format!("c{}", i), "function": {"name": "f", "arguments": s}}]}), Value::Null),
                    3 => chunk(json!({"tool_calls": [{"index": i, "function": {"arguments": s}}]}), Value::Null),
                    _ => chunk(json!({"content": s, "tool_calls": []}), Value::Null),
                });
            }
            chunks.push(chunk(json!({}), json!("stop")));
            let mut input = sse(&chunks);
            if !done {
                input.truncate(input.len() - b"data: [DONE]\n\n".len());
            }
            let mut t = StreamTranslator::new(ctx());
            let mut out = Vec::new();
            for b in input.chunks(7) {
                out.extend(t.feed(b));
            }
            out.extend(t.finish());
            let evs = events(&out);
            prop_assert_eq!(evs.last().map(|(n, _)| n.as_str()), Some("message_stop"));
        }
    }
}
