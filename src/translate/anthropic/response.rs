//! A chat completion turned into an Anthropic Message, and the pieces the stream shares with
//! it: stop reasons, usage and ids.

use serde_json::{json, Value};
use std::sync::atomic::{AtomicU64, Ordering};

/// What the answer needs from the request it answers.
#[derive(Debug, Clone, Default)]
pub struct Reply {
    /// The model id the client asked for (answers name it, not the backend's name).
    pub model: String,
    /// The request's `stop_sequences`, to tell which one a backend says it stopped at.
    pub stop_sequences: Vec<String>,
    /// Input tokens estimated from the request, for when the backend reports no usage.
    pub input_estimate: u64,
}

impl Reply {
    /// The context for answering `req`, a Messages request of `request_bytes` bytes.
    pub fn for_request(req: &Value, request_bytes: usize) -> Reply {
        Reply {
            model: req
                .get("model")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string(),
            stop_sequences: req
                .get("stop_sequences")
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(|s| s.as_str().map(String::from))
                        .collect()
                })
                .unwrap_or_default(),
            input_estimate: crate::stream::usage::estimate(request_bytes, 0).prompt,
        }
    }
}

/// Token counts of one answer in Anthropic's terms (its `input_tokens` excludes cached ones).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tokens {
    pub input: u64,
    pub output: u64,
    pub cache_read: u64,
}

impl Tokens {
    /// OpenAI usage (`prompt_tokens` counts cached tokens, Anthropic's `input_tokens` does not).
    pub fn from_openai(usage: &Value) -> Option<Tokens> {
        let n = |v: Option<&Value>| v.and_then(Value::as_u64);
        let prompt = n(usage.get("prompt_tokens"))?;
        let cached = n(usage
            .get("prompt_tokens_details")
            .and_then(|d| d.get("cached_tokens")))
        .unwrap_or(0)
        .min(prompt);
        Some(Tokens {
            input: prompt - cached,
            output: n(usage.get("completion_tokens")).unwrap_or(0),
            cache_read: cached,
        })
    }

    /// The `usage` object of a Message or a `message_delta`.
    pub fn to_json(self) -> Value {
        json!({
            "input_tokens": self.input,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": self.cache_read,
            "output_tokens": self.output,
        })
    }
}

/// Anthropic's `stop_reason` and `stop_sequence` for a choice's `finish_reason`. vLLM names the
/// stop string it matched in `stop_reason`; it counts when it is one the client asked for.
pub fn stop_reason(
    finish: Option<&str>,
    backend_stop: Option<&Value>,
    stops: &[String],
    used_tools: bool,
) -> (&'static str, Option<String>) {
    match finish {
        Some("length") => ("max_tokens", None),
        Some("tool_calls" | "function_call") => ("tool_use", None),
        Some("content_filter") => ("refusal", None),
        // Some servers (Ollama) say "stop" after tool calls; the client must run them.
        _ if used_tools => ("tool_use", None),
        _ => match backend_stop.and_then(Value::as_str) {
            Some(s) if stops.iter().any(|x| x == s) => ("stop_sequence", Some(s.to_string())),
            _ => ("end_turn", None),
        },
    }
}

/// A Message id: the backend's completion id under Anthropic's `msg_` prefix, or a fresh one.
pub fn message_id(backend_id: Option<&str>) -> String {
    match backend_id.filter(|s| !s.is_empty()) {
        Some(id) if id.starts_with("msg_") => id.to_string(),
        Some(id) => format!("msg_{}", id),
        None => {
            static NEXT: AtomicU64 = AtomicU64::new(0);
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(0);
            format!(
                "msg_{:016x}{:04x}",
                nanos,
                NEXT.fetch_add(1, Ordering::Relaxed) & 0xffff
            )
        }
    }
}

/// A tool call's arguments as the `input` object; `{}` when they are not a JSON object.
pub fn tool_input(arguments: Option<&Value>) -> Value {
    match arguments {
        Some(Value::String(s)) => match serde_json::from_str::<Value>(s) {
            Ok(v @ Value::Object(_)) => v,
            _ => json!({}),
        },
        // Some servers send the arguments as an object already.
        Some(v @ Value::Object(_)) => v.clone(),
        _ => json!({}),
    }
}

/// The reasoning text of a message or delta: `reasoning_content` (vLLM, DeepSeek) or
/// `reasoning` (Ollama, OpenRouter).
pub fn reasoning_of(m: &Value) -> Option<&str> {
    m.get("reasoning_content")
        .and_then(Value::as_str)
        .or_else(|| m.get("reasoning").and_then(Value::as_str))
        .filter(|s| !s.is_empty())
}

/// The Message for a non-stream chat completion: blocks in order thinking, text, tool_use.
pub fn to_message(chat: &Value, ctx: &Reply) -> Value {
    let choice = chat.get("choices").and_then(|c| c.get(0));
    let msg = choice.and_then(|c| c.get("message"));
    let mut content = Vec::new();
    let mut chars = 0u64;
    if let Some(r) = msg.and_then(reasoning_of) {
        chars += r.chars().count() as u64;
        content.push(json!({"type": "thinking", "thinking": r, "signature": ""}));
    }
    if let Some(t) = msg
        .and_then(|m| m.get("content"))
        .and_then(Value::as_str)
        .filter(|t| !t.is_empty())
    {
        chars += t.chars().count() as u64;
        content.push(json!({"type": "text", "text": t}));
    }
    let calls = msg
        .and_then(|m| m.get("tool_calls"))
        .and_then(Value::as_array);
    let mut used_tools = false;
    for (i, call) in calls.into_iter().flatten().enumerate() {
        let f = call.get("function");
        let args = f.and_then(|f| f.get("arguments"));
        if let Some(Value::String(a)) = args {
            chars += a.chars().count() as u64;
        }
        let id = match call
            .get("id")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
        {
            Some(id) => id.to_string(),
            None => format!("toolu_{}", i),
        };
        used_tools = true;
        content.push(json!({
            "type": "tool_use",
            "id": id,
            "name": f.and_then(|f| f.get("name")).and_then(Value::as_str).unwrap_or_default(),
            "input": tool_input(args),
        }));
    }
    let (reason, sequence) = stop_reason(
        choice
            .and_then(|c| c.get("finish_reason"))
            .and_then(Value::as_str),
        choice.and_then(|c| c.get("stop_reason")),
        &ctx.stop_sequences,
        used_tools,
    );
    let tokens = chat
        .get("usage")
        .and_then(Tokens::from_openai)
        .unwrap_or(Tokens {
            input: ctx.input_estimate,
            output: chars.div_ceil(4),
            cache_read: 0,
        });
    json!({
        "id": message_id(chat.get("id").and_then(Value::as_str)),
        "type": "message",
        "role": "assistant",
        "model": ctx.model,
        "content": content,
        "stop_reason": reason,
        "stop_sequence": sequence,
        "usage": tokens.to_json(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx() -> Reply {
        Reply {
            model: "claude-sonnet-4-5".into(),
            stop_sequences: vec!["###".into()],
            input_estimate: 9,
        }
    }

    #[test]
    fn full_answer_in_block_order_with_cached_usage() {
        let chat = json!({
            "id": "chatcmpl-1", "object": "chat.completion", "model": "qwen3",
            "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
                "role": "assistant", "content": "Let me check.", "reasoning_content": "need weather",
                "tool_calls": [
                    {"id": "call_a", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}},
                    {"id": "call_b", "type": "function", "function": {"name": "get_time", "arguments": "not json"}}
                ]
            }}],
            "usage": {"prompt_tokens": 14, "completion_tokens": 20, "total_tokens": 34,
                      "prompt_tokens_details": {"cached_tokens": 11}}
        });
        assert_eq!(
            to_message(&chat, &ctx()).to_string(),
            json!({
                "id": "msg_chatcmpl-1", "type": "message", "role": "assistant", "model": "claude-sonnet-4-5",
                "content": [
                    {"type": "thinking", "thinking": "need weather", "signature": ""},
                    {"type": "text", "text": "Let me check."},
                    {"type": "tool_use", "id": "call_a", "name": "get_weather", "input": {"city": "Paris"}},
                    {"type": "tool_use", "id": "call_b", "name": "get_time", "input": {}}
                ],
                "stop_reason": "tool_use", "stop_sequence": null,
                "usage": {"input_tokens": 3, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 11, "output_tokens": 20}
            })
            .to_string()
        );
    }

    #[test]
    fn finish_reasons_map_and_stop_sequence_is_always_present() {
        let answer = |finish: Value, stop: Value| {
            to_message(
                &json!({"choices": [{"finish_reason": finish, "stop_reason": stop, "message": {"content": "x"}}]}),
                &ctx(),
            )
        };
        let cases = [
            (json!("stop"), Value::Null, "end_turn", Value::Null),
            (json!("length"), Value::Null, "max_tokens", Value::Null),
            (json!("content_filter"), Value::Null, "refusal", Value::Null),
            (json!("stop"), json!("###"), "stop_sequence", json!("###")),
            // vLLM's EOS token id, and a string the client never asked for, are plain ends.
            (json!("stop"), json!(151645), "end_turn", Value::Null),
            (json!("stop"), json!("</s>"), "end_turn", Value::Null),
            (Value::Null, Value::Null, "end_turn", Value::Null),
        ];
        for (finish, stop, reason, seq) in cases {
            let m = answer(finish.clone(), stop);
            assert_eq!(m["stop_reason"], reason, "{}", finish);
            assert_eq!(m.get("stop_sequence"), Some(&seq));
        }
        // Ollama: tool calls with finish_reason "stop".
        let m = to_message(
            &json!({"choices": [{"finish_reason": "stop", "message": {"content": null,
                "tool_calls": [{"function": {"name": "f", "arguments": {"a": 1}}}]}}]}),
            &ctx(),
        );
        assert_eq!(m["stop_reason"], "tool_use");
        assert_eq!(
            m["content"],
            json!([{"type": "tool_use", "id": "toolu_0", "name": "f", "input": {"a": 1}}])
        );
    }

    #[test]
    fn no_usage_gives_an_estimate_not_zero() {
        let m = to_message(
            &json!({"choices": [{"finish_reason": "stop", "message": {"content": "twelve chars"}}]}),
            &ctx(),
        );
        assert_eq!(
            m["usage"],
            json!({"input_tokens": 9, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0, "output_tokens": 3})
        );
        assert!(m["id"].as_str().unwrap().starts_with("msg_"));
    }

    #[test]
    fn reply_context_from_request() {
        let r = Reply::for_request(
            &json!({"model": "claude-x", "stop_sequences": ["a", 1, "b"]}),
            400,
        );
        assert_eq!(r.model, "claude-x");
        assert_eq!(r.stop_sequences, vec!["a".to_string(), "b".to_string()]);
        assert_eq!(r.input_estimate, 100);
    }
}
