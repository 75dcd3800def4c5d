//! The `usage` of a JSON answer or SSE payload, read member by member: nothing but the few
//! numbers wanted is kept, and no JSON tree is built (this runs on every answer). Reads what
//! `serde_json::Value` lookups read: the last of duplicate members, a count only when it is a
//! whole JSON number that fits u64, a member that is not an object as absent.

use serde::de::{Deserialize, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use std::fmt;

/// The counts of `usage` (chat, completions, embeddings) or `response.usage` (Responses API),
/// either naming: prompt (required), completion, cached and reasoning tokens.
pub fn counts(json: &[u8]) -> Option<Counted> {
    let top: Top = serde_json::from_slice(json).ok()?;
    let u = top
        .usage
        .flatten()
        .or_else(|| top.response.flatten().and_then(|r| r.usage.flatten()))?;
    Some(Counted {
        prompt: u.prompt_tokens.or(u.input_tokens)?,
        completion: u.completion_tokens.or(u.output_tokens).unwrap_or(0),
        cached: u
            .prompt_details
            .flatten()
            .and_then(|d| d.cached_tokens)
            .or_else(|| u.input_details.flatten().and_then(|d| d.cached_tokens))
            .unwrap_or(0),
        reasoning: u
            .completion_details
            .flatten()
            .and_then(|d| d.reasoning_tokens)
            .or_else(|| u.output_details.flatten().and_then(|d| d.reasoning_tokens))
            .unwrap_or(0),
    })
}

/// The counts a backend reported.
#[derive(Debug, PartialEq, Eq)]
pub struct Counted {
    pub prompt: u64,
    pub completion: u64,
    pub cached: u64,
    pub reasoning: u64,
}

/// The answer's members that can hold usage. `Some(None)`: present, not an object.
#[derive(Default)]
struct Top {
    usage: Option<Option<Counts>>,
    response: Option<Option<Response>>,
}

#[derive(Default)]
struct Response {
    usage: Option<Option<Counts>>,
}

#[derive(Default, Clone, Copy)]
struct Counts {
    prompt_tokens: Option<u64>,
    input_tokens: Option<u64>,
    completion_tokens: Option<u64>,
    output_tokens: Option<u64>,
    prompt_details: Option<Option<Details>>,
    input_details: Option<Option<Details>>,
    completion_details: Option<Option<Details>>,
    output_details: Option<Option<Details>>,
}

#[derive(Default, Clone, Copy)]
struct Details {
    cached_tokens: Option<u64>,
    reasoning_tokens: Option<u64>,
}

/// A JSON object read by `fill`, one member at a time; any other value reads as `None`.
trait Members: Default {
    const WHAT: &'static str;
    fn fill<'de, A: MapAccess<'de>>(&mut self, key: &str, map: &mut A) -> Result<(), A::Error>;
}

/// An object (`Some`) or another value (`None`), the other value consumed whole.
struct ObjectOr<T>(Option<T>);

impl<'de, T: Members> Deserialize<'de> for ObjectOr<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ObjectVisitor(std::marker::PhantomData))
    }
}

struct ObjectVisitor<T>(std::marker::PhantomData<T>);

/// A JSON string (a member name or a value), borrowed from the input, or its unescaped copy
/// when it holds escapes. Also the translated stream's chunk reader's strings.
pub struct Text<'a>(pub std::borrow::Cow<'a, str>);

impl<'de> Deserialize<'de> for Text<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct TextVisitor;
        impl<'de> Visitor<'de> for TextVisitor {
            type Value = Text<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Text<'de>, E> {
                Ok(Text(std::borrow::Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Text<'de>, E> {
                // Only a string with escapes comes here (serde_json unescapes it into scratch).
                Ok(Text(std::borrow::Cow::Owned(v.to_string())))
            }
        }
        d.deserialize_str(TextVisitor)
    }
}

impl<'de, T: Members> Visitor<'de> for ObjectVisitor<T> {
    type Value = ObjectOr<T>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(T::WHAT)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut out = T::default();
        while let Some(key) = map.next_key::<Text>()? {
            out.fill(&key.0, &mut map)?;
        }
        Ok(ObjectOr(Some(out)))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(ObjectOr(None))
    }

    fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
        Ok(ObjectOr(None))
    }

    fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
        Ok(ObjectOr(None))
    }

    fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
        Ok(ObjectOr(None))
    }

    fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
        Ok(ObjectOr(None))
    }

    fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
        Ok(ObjectOr(None))
    }

    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(ObjectOr(None))
    }
}

/// A count as `Value::as_u64` reads it: a whole number in u64's range, else `None`.
struct Whole(Option<u64>);

impl<'de> Deserialize<'de> for Whole {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct WholeVisitor;
        impl<'de> Visitor<'de> for WholeVisitor {
            type Value = Whole;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON value")
            }
            fn visit_u64<E>(self, v: u64) -> Result<Whole, E> {
                Ok(Whole(Some(v)))
            }
            fn visit_i64<E>(self, v: i64) -> Result<Whole, E> {
                Ok(Whole(u64::try_from(v).ok()))
            }
            fn visit_f64<E>(self, _: f64) -> Result<Whole, E> {
                Ok(Whole(None))
            }
            fn visit_bool<E>(self, _: bool) -> Result<Whole, E> {
                Ok(Whole(None))
            }
            fn visit_str<E>(self, _: &str) -> Result<Whole, E> {
                Ok(Whole(None))
            }
            fn visit_unit<E>(self) -> Result<Whole, E> {
                Ok(Whole(None))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Whole, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(Whole(None))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Whole, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(Whole(None))
            }
        }
        d.deserialize_any(WholeVisitor)
    }
}

fn whole<'de, A: MapAccess<'de>>(map: &mut A) -> Result<Option<u64>, A::Error> {
    Ok(map.next_value::<Whole>()?.0)
}

fn object<'de, T: Members, A: MapAccess<'de>>(map: &mut A) -> Result<Option<Option<T>>, A::Error> {
    Ok(Some(map.next_value::<ObjectOr<T>>()?.0))
}

impl Members for Top {
    const WHAT: &'static str = "a JSON answer";
    fn fill<'de, A: MapAccess<'de>>(&mut self, key: &str, map: &mut A) -> Result<(), A::Error> {
        match key {
            "usage" => self.usage = object(map)?,
            "response" => self.response = object(map)?,
            _ => {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(())
    }
}

impl Members for Response {
    const WHAT: &'static str = "a response object";
    fn fill<'de, A: MapAccess<'de>>(&mut self, key: &str, map: &mut A) -> Result<(), A::Error> {
        match key {
            "usage" => self.usage = object(map)?,
            _ => {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(())
    }
}

impl Members for Counts {
    const WHAT: &'static str = "a usage object";
    fn fill<'de, A: MapAccess<'de>>(&mut self, key: &str, map: &mut A) -> Result<(), A::Error> {
        match key {
            "prompt_tokens" => self.prompt_tokens = whole(map)?,
            "input_tokens" => self.input_tokens = whole(map)?,
            "completion_tokens" => self.completion_tokens = whole(map)?,
            "output_tokens" => self.output_tokens = whole(map)?,
            "prompt_tokens_details" => self.prompt_details = object(map)?,
            "input_tokens_details" => self.input_details = object(map)?,
            "completion_tokens_details" => self.completion_details = object(map)?,
            "output_tokens_details" => self.output_details = object(map)?,
            _ => {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(())
    }
}

impl Members for Details {
    const WHAT: &'static str = "a token details object";
    fn fill<'de, A: MapAccess<'de>>(&mut self, key: &str, map: &mut A) -> Result<(), A::Error> {
        match key {
            "cached_tokens" => self.cached_tokens = whole(map)?,
            "reasoning_tokens" => self.reasoning_tokens = whole(map)?,
            _ => {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(())
    }
}

impl<'de> Deserialize<'de> for Top {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // Not an object at the top: no usage (as a tree's lookups would find none).
        Ok(ObjectOr::<Top>::deserialize(d)?.0.unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the reader replaced: a whole tree, then lookups.
    fn from_a_tree(json: &[u8]) -> Option<Counted> {
        let v: serde_json::Value = serde_json::from_slice(json).ok()?;
        let u = v
            .get("usage")
            .filter(|u| u.is_object())
            .or_else(|| v.get("response")?.get("usage"))
            .filter(|u| u.is_object())?;
        let n = |path: &[&str]| {
            path.iter()
                .try_fold(u, |v, k| v.get(k))
                .and_then(serde_json::Value::as_u64)
        };
        Some(Counted {
            prompt: n(&["prompt_tokens"]).or_else(|| n(&["input_tokens"]))?,
            completion: n(&["completion_tokens"])
                .or_else(|| n(&["output_tokens"]))
                .unwrap_or(0),
            cached: n(&["prompt_tokens_details", "cached_tokens"])
                .or_else(|| n(&["input_tokens_details", "cached_tokens"]))
                .unwrap_or(0),
            reasoning: n(&["completion_tokens_details", "reasoning_tokens"])
                .or_else(|| n(&["output_tokens_details", "reasoning_tokens"]))
                .unwrap_or(0),
        })
    }

    #[test]
    fn reads_what_a_tree_reads() {
        let cases: &[&str] = &[
            r#"{"id":"x","choices":[{"message":{"content":"hi"}}],"usage":{"prompt_tokens":3,"completion_tokens":2,"total_tokens":5}}"#,
            r#"{"usage":{"prompt_tokens":3,"completion_tokens":2,"prompt_tokens_details":{"cached_tokens":1},"completion_tokens_details":{"reasoning_tokens":4}}}"#,
            r#"{"response":{"id":"r","usage":{"input_tokens":7,"output_tokens":8,"input_tokens_details":{"cached_tokens":2},"output_tokens_details":{"reasoning_tokens":3}}}}"#,
            r#"{"usage":null,"response":{"usage":{"input_tokens":1}}}"#,
            r#"{"usage":"x","response":{"usage":{"input_tokens":1}}}"#,
            r#"{"usage":{"prompt_tokens":1},"usage":null}"#,
            r#"{"usage":null,"usage":{"prompt_tokens":9}}"#,
            r#"{"usage":{"prompt_tokens":1,"prompt_tokens":2}}"#,
            r#"{"usage":{"prompt_tokens":1.0,"input_tokens":4}}"#,
            r#"{"usage":{"prompt_tokens":-1,"input_tokens":4}}"#,
            r#"{"usage":{"prompt_tokens":1e2}}"#,
            r#"{"usage":{"prompt_tokens":18446744073709551615,"completion_tokens":18446744073709551616}}"#,
            r#"{"usage":{"prompt_tokens":"3","input_tokens":[1],"completion_tokens":{"a":1}}}"#,
            r#"{"usage":{"prompt_tokens":3,"prompt_tokens_details":[1],"input_tokens_details":{"cached_tokens":5}}}"#,
            r#"{"usage":{"prompt_tokens":3,"prompt_tokens_details":{"cached_tokens":null},"input_tokens_details":{"cached_tokens":5}}}"#,
            r#"{"usage":{"prompt_tokens":3,"completion_tokens_details":{"reasoning_tokens":true}}}"#,
            r#"{"usage":{"pr\u006fmpt_tokens":6}}"#,
            r#"{"\u0075sage":{"prompt_tokens":6}}"#,
            r#"{"usage":{"completion_tokens":2}}"#,
            r#"{"response":"x"}"#,
            r#"[{"usage":{"prompt_tokens":1}}]"#,
            r#""usage""#,
            r#"3"#,
            r#"{"usage":{"prompt_tokens":1}} x"#,
            r#"{"usage":{"prompt_tokens":1}"#,
            r#"{"usage":{"prompt_tokens":1},"other":[1,{"a":[null,true,"\n"]}]}"#,
            r#" { "usage" : { "prompt_tokens" : 4 } } "#,
            "",
        ];
        for c in cases {
            assert_eq!(counts(c.as_bytes()), from_a_tree(c.as_bytes()), "{}", c);
        }
    }
}
