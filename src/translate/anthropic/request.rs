//! A Messages API request turned into a chat completions request for a backend that speaks only
//! OpenAI's API. Only fields chat completions can carry are sent: what Anthropic's beta headers
//! gate, `cache_control` and server tools never reach such a backend. A block the backend cannot
//! take is refused by name, never dropped.

use crate::http::anthropic_error::AnthropicError;
use serde_json::{json, Map, Value};

/// Claude Code's attribution line: the first system block when it starts so. It changes between
/// Claude Code versions, so it is removed before a backend whose prefix cache it would defeat.
const ATTRIBUTION: &str = "x-anthropic-billing-header:";

/// What the backend takes beyond plain chat completions.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Options {
    /// Fields outside OpenAI's API are accepted (vLLM, llama.cpp): `top_k` is passed on.
    pub extra_fields: bool,
    /// `reasoning_effort` is accepted: `thinking` becomes an effort. Without it `thinking` is
    /// dropped, since OpenAI refuses the field on models that do not reason.
    pub reasoning_effort: bool,
}

/// The chat completions body for an Anthropic Messages body.
pub fn to_chat(req: &Value, opts: Options) -> Result<Value, AnthropicError> {
    let req = req.as_object().ok_or_else(|| {
        AnthropicError::invalid_request("The request body must be a JSON object.")
    })?;
    let mut out = Map::new();
    if let Some(m) = req.get("model") {
        out.insert("model".into(), m.clone());
    }
    let mut messages = Vec::new();
    if let Some(system) = system_text(req.get("system"))? {
        messages.push(json!({"role": "system", "content": system}));
    }
    let turns = match req.get("messages") {
        Some(Value::Array(a)) => a,
        _ => {
            return Err(AnthropicError::invalid_request(
                "messages: an array of messages is required.",
            ))
        }
    };
    for (i, turn) in turns.iter().enumerate() {
        translate_turn(i, turn, &mut messages)?;
    }
    out.insert("messages".into(), Value::Array(messages));

    for (from, to) in [
        ("max_tokens", "max_tokens"),
        ("temperature", "temperature"),
        ("top_p", "top_p"),
    ] {
        if let Some(v) = req.get(from).filter(|v| !v.is_null()) {
            out.insert(to.into(), v.clone());
        }
    }
    if opts.extra_fields {
        if let Some(v) = req.get("top_k").filter(|v| !v.is_null()) {
            out.insert("top_k".into(), v.clone());
        }
    }
    match req.get("stop_sequences") {
        Some(Value::Array(a)) if !a.is_empty() => {
            out.insert("stop".into(), Value::Array(a.clone()));
        }
        Some(Value::Array(_)) | Some(Value::Null) | None => {}
        Some(_) => {
            return Err(AnthropicError::invalid_request(
                "stop_sequences: must be an array of strings.",
            ))
        }
    }
    if req.get("stream").and_then(Value::as_bool) == Some(true) {
        out.insert("stream".into(), Value::Bool(true));
        // The usage chunk is what message_delta's real counts come from.
        out.insert("stream_options".into(), json!({"include_usage": true}));
    }
    let tools = translate_tools(req.get("tools"))?;
    let has_tools = !tools.is_empty();
    if has_tools {
        out.insert("tools".into(), Value::Array(tools));
    }
    if let Some(tc) = req.get("tool_choice").filter(|v| !v.is_null()) {
        let (choice, parallel) = translate_tool_choice(tc)?;
        // OpenAI refuses tool_choice without tools (e.g. when every tool was a server tool).
        if has_tools {
            out.insert("tool_choice".into(), choice);
            if parallel == Some(false) {
                out.insert("parallel_tool_calls".into(), Value::Bool(false));
            }
        }
    }
    if opts.reasoning_effort {
        if let Some(effort) = reasoning_effort(req.get("thinking")) {
            out.insert("reasoning_effort".into(), Value::String(effort.into()));
        }
    }
    if let Some(user) = req
        .get("metadata")
        .and_then(|m| m.get("user_id"))
        .and_then(Value::as_str)
    {
        out.insert("user".into(), Value::String(user.into()));
    }
    Ok(Value::Object(out))
}

/// `system` as one string: a string as it is, text blocks joined with `\n` in order, Claude
/// Code's attribution block left out. `None` when nothing remains.
fn system_text(system: Option<&Value>) -> Result<Option<String>, AnthropicError> {
    let blocks = match system {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::String(s)) => return Ok((!s.is_empty()).then(|| s.clone())),
        Some(Value::Array(a)) => a,
        Some(_) => {
            return Err(AnthropicError::invalid_request(
                "system: must be a string or an array of text blocks.",
            ))
        }
    };
    let mut parts = Vec::new();
    for (i, b) in blocks.iter().enumerate() {
        let text = match (block_type(b), b.get("text").and_then(Value::as_str)) {
            (Some("text"), Some(t)) => t,
            (t, _) => {
                return Err(AnthropicError::invalid_request(format!(
                    "system.{}: a `{}` block cannot be a system prompt; only text blocks can.",
                    i,
                    t.unwrap_or("untyped")
                )))
            }
        };
        if i == 0 && text.starts_with(ATTRIBUTION) {
            continue;
        }
        parts.push(text);
    }
    Ok((!parts.is_empty()).then(|| parts.join("\n")))
}

fn block_type(b: &Value) -> Option<&str> {
    b.get("type").and_then(Value::as_str)
}

/// A block the backend cannot take: 400 naming it and where it is.
fn refuse(at: &str, kind: &str, why: &str) -> AnthropicError {
    AnthropicError::invalid_request(format!(
        "{}: a `{}` block cannot be sent to this model's backend, which speaks only OpenAI chat completions{}.",
        at, kind, why
    ))
}

fn translate_turn(i: usize, turn: &Value, out: &mut Vec<Value>) -> Result<(), AnthropicError> {
    let role = turn.get("role").and_then(Value::as_str);
    let content = turn.get("content");
    let blocks = match content {
        Some(Value::String(s)) => {
            return match role {
                Some(r @ ("user" | "assistant" | "system")) => {
                    out.push(json!({"role": r, "content": s}));
                    Ok(())
                }
                _ => Err(bad_role(i)),
            }
        }
        Some(Value::Array(a)) => a,
        _ => {
            return Err(AnthropicError::invalid_request(format!(
                "messages.{}.content: must be a string or an array of content blocks.",
                i
            )))
        }
    };
    match role {
        Some("user") => user_turn(i, blocks, out),
        Some("assistant") => assistant_turn(i, blocks, out),
        Some("system") => system_turn(i, blocks, out),
        _ => Err(bad_role(i)),
    }
}

fn bad_role(i: usize) -> AnthropicError {
    AnthropicError::invalid_request(format!(
        "messages.{}.role: must be \"user\", \"assistant\" or \"system\".",
        i
    ))
}

/// A system message inside the conversation (Claude Code 2.1 sends its environment so, after
/// the first user turn) stays where it is, as a chat `system` message: chat completions take
/// system messages at any position.
fn system_turn(i: usize, blocks: &[Value], out: &mut Vec<Value>) -> Result<(), AnthropicError> {
    let mut texts = Vec::new();
    for (j, b) in blocks.iter().enumerate() {
        match (block_type(b), b.get("text").and_then(Value::as_str)) {
            (Some("text"), Some(t)) => texts.push(t),
            (t, _) => {
                return Err(AnthropicError::invalid_request(format!(
                    "messages.{}.content.{}: a `{}` block cannot be in a system message; only text blocks can.",
                    i,
                    j,
                    t.unwrap_or("untyped")
                )))
            }
        }
    }
    out.push(json!({"role": "system", "content": texts.join("\n")}));
    Ok(())
}

/// Tool results first (as `role: tool` messages, which must follow the assistant's tool calls),
/// then the rest of the turn as one user message.
fn user_turn(i: usize, blocks: &[Value], out: &mut Vec<Value>) -> Result<(), AnthropicError> {
    let mut parts = Vec::new();
    let mut tool_messages = Vec::new();
    for (j, b) in blocks.iter().enumerate() {
        let at = format!("messages.{}.content.{}", i, j);
        match block_type(b) {
            Some("text") => parts.push(text_part(&at, b)?),
            Some("image") => parts.push(image_part(&at, b)?),
            Some("tool_result") => tool_messages.push(tool_message(&at, b, &mut parts)?),
            // Thinking is the model's own; it has no place in a chat completions history.
            Some("thinking" | "redacted_thinking") => {}
            Some(other) => return Err(refuse(&at, other, "")),
            None => return Err(refuse(&at, "untyped", "")),
        }
    }
    out.extend(tool_messages);
    if !parts.is_empty() {
        out.push(json!({"role": "user", "content": parts}));
    }
    Ok(())
}

fn text_part(at: &str, b: &Value) -> Result<Value, AnthropicError> {
    match b.get("text").and_then(Value::as_str) {
        Some(t) => Ok(json!({"type": "text", "text": t})),
        None => Err(AnthropicError::invalid_request(format!(
            "{}.text: a string is required.",
            at
        ))),
    }
}

fn image_part(at: &str, b: &Value) -> Result<Value, AnthropicError> {
    let source = b.get("source");
    let field = |k: &str| source.and_then(|s| s.get(k)).and_then(Value::as_str);
    let url = match field("type") {
        Some("base64") => match (field("media_type"), field("data")) {
            (Some(mt), Some(data)) => format!("data:{};base64,{}", mt, data),
            _ => {
                return Err(AnthropicError::invalid_request(format!(
                    "{}.source: a base64 image needs media_type and data.",
                    at
                )))
            }
        },
        Some("url") => match field("url") {
            Some(u) => u.to_string(),
            None => {
                return Err(AnthropicError::invalid_request(format!(
                    "{}.source.url: a string is required.",
                    at
                )))
            }
        },
        other => {
            return Err(refuse(
                at,
                "image",
                &format!(
                    " (source type `{}`; only base64 and url images can be)",
                    other.unwrap_or("none")
                ),
            ))
        }
    };
    Ok(json!({"type": "image_url", "image_url": {"url": url}}))
}

/// A `tool_result` as a `role: tool` message with its text. Its images cannot ride in a tool
/// message, so they go to the user message that follows, in order.
fn tool_message(at: &str, b: &Value, images: &mut Vec<Value>) -> Result<Value, AnthropicError> {
    let id = b
        .get("tool_use_id")
        .and_then(Value::as_str)
        .ok_or_else(|| {
            AnthropicError::invalid_request(format!("{}.tool_use_id: a string is required.", at))
        })?;
    let mut text = Vec::new();
    match b.get("content") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) => text.push(s.clone()),
        Some(Value::Array(a)) => {
            for (k, c) in a.iter().enumerate() {
                let at = format!("{}.content.{}", at, k);
                match block_type(c) {
                    Some("text") => {
                        if let Value::Object(p) = text_part(&at, c)? {
                            text.push(p["text"].as_str().unwrap_or_default().to_string());
                        }
                    }
                    Some("image") => images.push(image_part(&at, c)?),
                    Some(other) => return Err(refuse(&at, other, " inside a tool result")),
                    None => return Err(refuse(&at, "untyped", " inside a tool result")),
                }
            }
        }
        Some(_) => {
            return Err(AnthropicError::invalid_request(format!(
                "{}.content: must be a string or an array of blocks.",
                at
            )))
        }
    }
    let mut content = text.join("\n");
    if b.get("is_error").and_then(Value::as_bool) == Some(true) {
        content = format!("The tool failed with this error: {}", content);
    }
    Ok(json!({"role": "tool", "tool_call_id": id, "content": content}))
}

fn assistant_turn(i: usize, blocks: &[Value], out: &mut Vec<Value>) -> Result<(), AnthropicError> {
    let mut text = Vec::new();
    let mut calls = Vec::new();
    for (j, b) in blocks.iter().enumerate() {
        let at = format!("messages.{}.content.{}", i, j);
        match block_type(b) {
            Some("text") => {
                if let Value::Object(p) = text_part(&at, b)? {
                    text.push(p["text"].as_str().unwrap_or_default().to_string());
                }
            }
            Some("tool_use") => {
                let (id, name) = match (
                    b.get("id").and_then(Value::as_str),
                    b.get("name").and_then(Value::as_str),
                ) {
                    (Some(id), Some(name)) => (id, name),
                    _ => {
                        return Err(AnthropicError::invalid_request(format!(
                            "{}: a tool_use block needs id and name.",
                            at
                        )))
                    }
                };
                let input = b.get("input").cloned().unwrap_or_else(|| json!({}));
                calls.push(json!({
                    "id": id,
                    "type": "function",
                    "function": {"name": name, "arguments": input.to_string()},
                }));
            }
            Some("thinking" | "redacted_thinking") => {}
            Some(other) => return Err(refuse(&at, other, "")),
            None => return Err(refuse(&at, "untyped", "")),
        }
    }
    // A turn that was only thinking leaves nothing to send.
    if text.is_empty() && calls.is_empty() {
        return Ok(());
    }
    let mut m = Map::new();
    m.insert("role".into(), json!("assistant"));
    m.insert(
        "content".into(),
        if text.is_empty() {
            Value::Null
        } else {
            Value::String(text.join("\n"))
        },
    );
    if !calls.is_empty() {
        m.insert("tool_calls".into(), Value::Array(calls));
    }
    out.push(Value::Object(m));
    Ok(())
}

/// Client tools as function tools. Anthropic's own tools (a `type` such as
/// `web_search_20250305`) run on Anthropic's servers or need its built-in schemas; no OpenAI
/// backend has them, so they are left out.
fn translate_tools(tools: Option<&Value>) -> Result<Vec<Value>, AnthropicError> {
    let list = match tools {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(a)) => a,
        Some(_) => return Err(AnthropicError::invalid_request("tools: must be an array.")),
    };
    let mut out = Vec::new();
    for (i, t) in list.iter().enumerate() {
        if !matches!(block_type(t), None | Some("custom")) {
            continue;
        }
        let name = t.get("name").and_then(Value::as_str).ok_or_else(|| {
            AnthropicError::invalid_request(format!("tools.{}.name: a string is required.", i))
        })?;
        let mut f = Map::new();
        f.insert("name".into(), json!(name));
        if let Some(d) = t.get("description").and_then(Value::as_str) {
            f.insert("description".into(), json!(d));
        }
        f.insert(
            "parameters".into(),
            t.get("input_schema")
                .cloned()
                .unwrap_or_else(|| json!({"type": "object", "properties": {}})),
        );
        out.push(json!({"type": "function", "function": f}));
    }
    Ok(out)
}

/// OpenAI's `tool_choice`, and `parallel_tool_calls` when the client set
/// `disable_parallel_tool_use`.
fn translate_tool_choice(tc: &Value) -> Result<(Value, Option<bool>), AnthropicError> {
    let choice = match block_type(tc) {
        Some("auto") => json!("auto"),
        Some("any") => json!("required"),
        Some("none") => json!("none"),
        Some("tool") => match tc.get("name").and_then(Value::as_str) {
            Some(name) => json!({"type": "function", "function": {"name": name}}),
            None => {
                return Err(AnthropicError::invalid_request(
                    "tool_choice.name: a string is required.",
                ))
            }
        },
        _ => {
            return Err(AnthropicError::invalid_request(
                "tool_choice.type: must be \"auto\", \"any\", \"tool\" or \"none\".",
            ))
        }
    };
    let parallel = tc
        .get("disable_parallel_tool_use")
        .and_then(Value::as_bool)
        .map(|disable| !disable);
    Ok((choice, parallel))
}

/// `thinking` as an OpenAI reasoning effort: a budget under 4096 tokens is low, under 16384
/// medium, more high; `adaptive` leaves the depth to the model, medium. Disabled: none.
fn reasoning_effort(thinking: Option<&Value>) -> Option<&'static str> {
    let t = thinking?;
    match block_type(t)? {
        "enabled" => Some(
            match t.get("budget_tokens").and_then(Value::as_u64).unwrap_or(0) {
                0..=4095 => "low",
                4096..=16383 => "medium",
                _ => "high",
            },
        ),
        "adaptive" => Some("medium"),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chat(req: Value) -> Value {
        to_chat(&req, Options::default()).expect("translates")
    }

    #[test]
    fn system_blocks_join_in_order_without_attribution_and_cache_control() {
        let out = chat(json!({
            "model": "claude-sonnet-4-5", "max_tokens": 100,
            "system": [
                {"type": "text", "text": "x-anthropic-billing-header: cc_version=2.0.14; cc_entrypoint=cli"},
                {"type": "text", "text": "You are Claude Code.", "cache_control": {"type": "ephemeral"}},
                {"type": "text", "text": "Be brief."}
            ],
            "messages": [{"role": "user", "content": "hi"}]
        }));
        assert_eq!(
            out,
            json!({"model": "claude-sonnet-4-5", "messages": [
                {"role": "system", "content": "You are Claude Code.\nBe brief."},
                {"role": "user", "content": "hi"}
            ], "max_tokens": 100})
        );
        // Only the first block is attribution; the same text later is the user's own.
        let out = chat(
            json!({"system": [{"type": "text", "text": "a"}, {"type": "text", "text": "x-anthropic-billing-header: z"}],
            "messages": []}),
        );
        assert_eq!(
            out["messages"][0]["content"],
            "a\nx-anthropic-billing-header: z"
        );
        let out = chat(json!({"system": "plain", "messages": []}));
        assert_eq!(
            out["messages"][0],
            json!({"role": "system", "content": "plain"})
        );
    }

    #[test]
    fn text_and_images_become_parts() {
        let out = chat(json!({"messages": [{"role": "user", "content": [
            {"type": "text", "text": "what is this?", "cache_control": {"type": "ephemeral"}},
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBOR"}},
            {"type": "image", "source": {"type": "url", "url": "https://example.com/a.jpg"}}
        ]}]}));
        assert_eq!(
            out["messages"],
            json!([{"role": "user", "content": [
                {"type": "text", "text": "what is this?"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBOR"}},
                {"type": "image_url", "image_url": {"url": "https://example.com/a.jpg"}}
            ]}])
        );
    }

    #[test]
    fn tool_loop_translates_both_ways_of_the_turn() {
        let out = chat(json!({"messages": [
            {"role": "user", "content": "weather in Paris and Rome?"},
            {"role": "assistant", "content": [
                {"type": "thinking", "thinking": "two calls", "signature": "abc"},
                {"type": "text", "text": "Checking."},
                {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}},
                {"type": "tool_use", "id": "toolu_2", "name": "get_weather", "input": {"city": "Rome"}}
            ]},
            {"role": "user", "content": [
                {"type": "text", "text": "here you go"},
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": "18C"},
                {"type": "tool_result", "tool_use_id": "toolu_2", "is_error": true,
                 "content": [{"type": "text", "text": "timeout"}, {"type": "text", "text": "retry later"}]}
            ]}
        ]}));
        assert_eq!(
            out["messages"],
            json!([
                {"role": "user", "content": "weather in Paris and Rome?"},
                {"role": "assistant", "content": "Checking.", "tool_calls": [
                    {"id": "toolu_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}},
                    {"id": "toolu_2", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Rome\"}"}}
                ]},
                {"role": "tool", "tool_call_id": "toolu_1", "content": "18C"},
                {"role": "tool", "tool_call_id": "toolu_2", "content": "The tool failed with this error: timeout\nretry later"},
                {"role": "user", "content": [{"type": "text", "text": "here you go"}]}
            ])
        );
    }

    #[test]
    fn tool_result_images_follow_the_tool_message() {
        let out = chat(json!({"messages": [{"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "t", "content": [
                {"type": "text", "text": "screenshot:"},
                {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AA"}}
            ]}
        ]}]}));
        assert_eq!(
            out["messages"],
            json!([
                {"role": "tool", "tool_call_id": "t", "content": "screenshot:"},
                {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,AA"}}]}
            ])
        );
    }

    #[test]
    fn tools_choice_and_sampling_fields() {
        let req = json!({
            "model": "m", "max_tokens": 64, "temperature": 0.2, "top_p": 0.9, "top_k": 40, "stream": true,
            "stop_sequences": ["###", "END"],
            "metadata": {"user_id": "user_42"},
            "thinking": {"type": "enabled", "budget_tokens": 8000},
            "tools": [
                {"name": "get_weather", "description": "Weather", "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
                 "cache_control": {"type": "ephemeral"}},
                {"type": "web_search_20250305", "name": "web_search", "max_uses": 5}
            ],
            "tool_choice": {"type": "tool", "name": "get_weather", "disable_parallel_tool_use": true},
            "messages": [{"role": "user", "content": "x"}]
        });
        let plain = to_chat(&req, Options::default()).unwrap();
        assert_eq!(
            plain,
            json!({
                "model": "m",
                "messages": [{"role": "user", "content": "x"}],
                "max_tokens": 64, "temperature": 0.2, "top_p": 0.9,
                "stop": ["###", "END"],
                "stream": true, "stream_options": {"include_usage": true},
                "tools": [{"type": "function", "function": {"name": "get_weather", "description": "Weather",
                    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}],
                "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
                "parallel_tool_calls": false,
                "user": "user_42"
            })
        );
        let extra = to_chat(
            &req,
            Options {
                extra_fields: true,
                reasoning_effort: true,
            },
        )
        .unwrap();
        assert_eq!(extra["top_k"], 40);
        assert_eq!(extra["reasoning_effort"], "medium");
        for (tc, want) in [
            (json!({"type": "auto"}), json!("auto")),
            (json!({"type": "any"}), json!("required")),
            (json!({"type": "none"}), json!("none")),
        ] {
            let mut r = req.clone();
            r["tool_choice"] = tc;
            let out = to_chat(&r, Options::default()).unwrap();
            assert_eq!(out["tool_choice"], want);
            assert!(out.get("parallel_tool_calls").is_none());
        }
    }

    #[test]
    fn tool_choice_without_client_tools_is_left_out() {
        let out = chat(
            json!({"tools": [{"type": "web_search_20250305", "name": "web_search"}],
            "tool_choice": {"type": "any"}, "messages": []}),
        );
        assert!(
            out.get("tools").is_none() && out.get("tool_choice").is_none(),
            "{}",
            out
        );
    }

    #[test]
    fn blocks_the_backend_cannot_take_are_refused_by_name() {
        let e = to_chat(
            &json!({"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": [
                {"type": "text", "text": "summarize"},
                {"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBER"}}
            ]}]}),
            Options::default(),
        )
        .unwrap_err();
        assert_eq!(e.status, 400);
        assert_eq!(e.kind, "invalid_request_error");
        assert_eq!(
            e.message,
            "messages.1.content.1: a `document` block cannot be sent to this model's backend, which speaks only OpenAI chat completions."
        );
        for (req, needle) in [
            (
                json!({"messages": [{"role": "assistant", "content": [{"type": "server_tool_use", "id": "s", "name": "web_search", "input": {}}]}]}),
                "`server_tool_use`",
            ),
            (
                json!({"messages": [{"role": "user", "content": [{"type": "image", "source": {"type": "file", "file_id": "f"}}]}]}),
                "source type `file`",
            ),
            (
                json!({"messages": [{"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t", "content": [{"type": "document"}]}]}]}),
                "messages.0.content.0.content.0: a `document` block",
            ),
            (
                json!({"system": [{"type": "image"}], "messages": []}),
                "system.0: a `image` block",
            ),
            (
                json!({"messages": [{"role": "developer", "content": "x"}]}),
                "messages.0.role",
            ),
            (json!({"messages": "x"}), "messages: an array"),
        ] {
            let e = to_chat(&req, Options::default()).unwrap_err();
            assert!(e.message.contains(needle), "{} in {}", needle, e.message);
        }
    }

    #[test]
    fn thinking_only_assistant_turn_and_thinking_disabled() {
        let out = to_chat(
            &json!({"thinking": {"type": "disabled"}, "messages": [
                {"role": "assistant", "content": [{"type": "redacted_thinking", "data": "zz"}]},
                {"role": "assistant", "content": [{"type": "tool_use", "id": "t", "name": "f", "input": {}}]}
            ]}),
            Options { extra_fields: true, reasoning_effort: true },
        )
        .unwrap();
        assert_eq!(
            out,
            json!({"messages": [{"role": "assistant", "content": null, "tool_calls": [
                {"id": "t", "type": "function", "function": {"name": "f", "arguments": "{}"}}]}]})
        );
        assert_eq!(
            reasoning_effort(Some(&json!({"type": "enabled", "budget_tokens": 1024}))),
            Some("low")
        );
        assert_eq!(
            reasoning_effort(Some(&json!({"type": "enabled", "budget_tokens": 32000}))),
            Some("high")
        );
        assert_eq!(
            reasoning_effort(Some(&json!({"type": "adaptive"}))),
            Some("medium")
        );
    }
}

#[cfg(test)]
mod fuzz {
    use super::*;
    use proptest::prelude::*;

    /// JSON values shaped like (and often not quite like) Messages requests.
    fn value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(|n| json!(n)),
            prop::sample::select(vec![
                "text",
                "image",
                "tool_use",
                "tool_result",
                "document",
                "thinking",
                "user",
                "assistant",
                "base64",
                "url",
                "auto",
                "any",
                "tool",
                "none",
                "enabled",
                "x",
            ])
            .prop_map(|s| json!(s)),
        ];
        leaf.prop_recursive(4, 48, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::vec(
                    (
                        prop::sample::select(vec![
                            "type",
                            "role",
                            "content",
                            "text",
                            "source",
                            "media_type",
                            "data",
                            "url",
                            "id",
                            "name",
                            "input",
                            "tool_use_id",
                            "is_error",
                            "messages",
                            "system",
                            "tools",
                            "tool_choice",
                            "input_schema",
                            "stop_sequences",
                            "metadata",
                            "user_id",
                            "thinking",
                            "budget_tokens",
                        ]),
                        inner
                    ),
                    0..5
                )
                .prop_map(|kv| Value::Object(
                    kv.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
                )),
            ]
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 500, ..ProptestConfig::default() })]

        /// Any body is translated or refused with a 400, never a panic.
        #[test]
        fn any_body_translates_or_is_refused(v in value(), extra in any::<bool>()) {
            let opts = Options { extra_fields: extra, reasoning_effort: extra };
            if let Err(e) = to_chat(&v, opts) {
                prop_assert_eq!(e.status, 400);
            }
            let _ = super::super::response::to_message(&v, &super::super::response::Reply::default());
        }
    }
}
