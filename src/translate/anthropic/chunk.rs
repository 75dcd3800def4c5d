//! The bulk of a chat completions stream, read without building a JSON tree: a chunk whose
//! first choice carries text or reasoning and nothing else to act on. Its strings are borrowed
//! from the line (copied only when they hold escapes). Any other chunk (a usage or finish
//! chunk, tool calls, an error, not JSON, a member of an unexpected type) is `None`, and the
//! stream translator reads it as a `serde_json::Value`, the general way: so this reader only
//! has to agree with that way on the chunks it accepts (the last of duplicate members wins, as
//! in a `Value`).

use crate::stream::usage_json::Text;
use serde::de::{Deserialize, Deserializer, Error, IgnoredAny, MapAccess, SeqAccess, Visitor};
use std::borrow::Cow;
use std::fmt;

/// A text or reasoning chunk.
pub struct Simple<'a> {
    /// The chunk's `id`.
    pub id: Option<Cow<'a, str>>,
    /// The `delta` of the first choice whose `index` is 0 (or absent), if it has one.
    pub delta: Option<Delta<'a>>,
}

/// What a simple chunk's delta says.
#[derive(Default)]
pub struct Delta<'a> {
    pub content: Option<Cow<'a, str>>,
    pub reasoning_content: Option<Cow<'a, str>>,
    pub reasoning: Option<Cow<'a, str>>,
}

impl Delta<'_> {
    /// The reasoning text, read as `response::reasoning_of` reads it.
    pub fn reasoning(&self) -> Option<&str> {
        self.reasoning_content
            .as_deref()
            .or(self.reasoning.as_deref())
            .filter(|s| !s.is_empty())
    }
}

/// The chunk in `payload` if it is a simple one.
pub fn simple(payload: &[u8]) -> Option<Simple<'_>> {
    serde_json::from_slice::<Chunk>(payload).ok().map(|c| c.0)
}

/// Fails the read: the chunk is not a simple one.
fn general<E: Error>() -> E {
    E::custom("not a simple chunk")
}

/// A string or null.
fn text<'de, A: MapAccess<'de>>(map: &mut A) -> Result<Option<Cow<'de, str>>, A::Error> {
    Ok(map.next_value::<Option<Text<'de>>>()?.map(|t| t.0))
}

/// A member that must be null (or the chunk is not a simple one).
fn null<'de, A: MapAccess<'de>>(map: &mut A) -> Result<(), A::Error> {
    match map.next_value::<Option<IgnoredAny>>()? {
        None => Ok(()),
        Some(_) => Err(general()),
    }
}

struct Chunk<'a>(Simple<'a>);

impl<'de> Deserialize<'de> for Chunk<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Chunk<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a chunk")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Chunk<'de>, A::Error> {
                let mut id = None;
                let mut choices: Option<Choices> = None;
                while let Some(key) = map.next_key::<Text>()? {
                    match &*key.0 {
                        "id" => id = text(&mut map)?,
                        "choices" => choices = Some(map.next_value()?),
                        "usage" => null(&mut map)?,
                        _ => {
                            map.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                // Without choices a chunk may be an error: the general way reads it.
                let choices = choices.ok_or_else(general)?;
                Ok(Chunk(Simple {
                    id,
                    delta: choices.0.and_then(|c| c.delta),
                }))
            }
        }
        d.deserialize_map(V)
    }
}

/// The first choice with index 0; every choice must be a simple one.
struct Choices<'a>(Option<Choice<'a>>);

impl<'de> Deserialize<'de> for Choices<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Choices<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("choices")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Choices<'de>, A::Error> {
                let mut first = None;
                while let Some(c) = seq.next_element::<Choice>()? {
                    if first.is_none() && c.index.unwrap_or(0) == 0 {
                        first = Some(c);
                    }
                }
                Ok(Choices(first))
            }
        }
        d.deserialize_seq(V)
    }
}

struct Choice<'a> {
    index: Option<u64>,
    delta: Option<Delta<'a>>,
}

impl<'de> Deserialize<'de> for Choice<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Choice<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a choice")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Choice<'de>, A::Error> {
                let mut c = Choice {
                    index: None,
                    delta: None,
                };
                while let Some(key) = map.next_key::<Text>()? {
                    match &*key.0 {
                        "index" => c.index = map.next_value()?,
                        "delta" => c.delta = map.next_value()?,
                        // A finish is read the general way.
                        "finish_reason" => null(&mut map)?,
                        _ => {
                            map.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                Ok(c)
            }
        }
        d.deserialize_map(V)
    }
}

impl<'de> Deserialize<'de> for Delta<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Delta<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a delta")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Delta<'de>, A::Error> {
                let mut d = Delta::default();
                while let Some(key) = map.next_key::<Text>()? {
                    match &*key.0 {
                        "content" => d.content = text(&mut map)?,
                        "reasoning_content" => d.reasoning_content = text(&mut map)?,
                        "reasoning" => d.reasoning = text(&mut map)?,
                        // Tool calls are read the general way.
                        "tool_calls" => null(&mut map)?,
                        _ => {
                            map.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                Ok(d)
            }
        }
        d.deserialize_map(V)
    }
}

#[cfg(test)]
mod tests {
    use super::simple;

    #[test]
    fn text_and_reasoning_chunks_are_simple_others_are_not() {
        let c = simple(br#"{"id":"x","choices":[{"index":0,"delta":{"content":"a\"b","reasoning":null},"finish_reason":null}],"usage":null}"#).unwrap();
        assert_eq!(c.id.as_deref(), Some("x"));
        let d = c.delta.unwrap();
        assert_eq!(d.content.as_deref(), Some("a\"b"));
        assert_eq!(d.reasoning(), None);
        let c = simple(br#"{"choices":[{"index":1,"delta":{"content":"no"}},{"delta":{"reasoning_content":"","reasoning":"r"}}]}"#).unwrap();
        // An empty reasoning_content hides reasoning, as `reasoning_of` reads it.
        assert_eq!(c.delta.unwrap().reasoning(), None);
        for general in [
            &br#"{"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}"#[..],
            br#"{"choices":[],"usage":{"prompt_tokens":1}}"#,
            br#"{"choices":[{"delta":{"tool_calls":[]}}]}"#,
            br#"{"error":{"message":"x"}}"#,
            br#"{"choices":null}"#,
            br#"{"id":1,"choices":[]}"#,
            br#"{"choices":[{"index":-1,"delta":{}}]}"#,
            br#"{"choices":[{"delta":"text"}]}"#,
            br#"{"choices":[{"delta":{"content":5}}]}"#,
            br#"{"choices":[]} x"#,
            b"[DONE]",
        ] {
            assert!(
                simple(general).is_none(),
                "{}",
                String::from_utf8_lossy(general)
            );
        }
    }
}
