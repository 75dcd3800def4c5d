//! Token counts from what backends report in `usage` (never by counting text, except for an
//! estimate marked as such when a backend reports nothing): the body of a JSON reply, or the
//! SSE event that carries it (chat and completions' usage chunk, the Responses API's
//! `response.completed`), gzip-compressed or not.

use flate2::write::GzDecoder;
use memchr::arch::all::packedpair::HeuristicFrequencyRank;
use memchr::memmem::{Finder, FinderBuilder};
use std::io::Write;
use std::sync::OnceLock;

/// Largest non-stream reply kept for reading `usage`; larger replies are not counted.
const MAX_JSON: usize = 4 * 1024 * 1024;
/// Longest SSE line kept while looking for `usage`.
const MAX_LINE: usize = 256 * 1024;
/// Largest token count believed from a backend, per field of one request. No model reads or
/// writes a billion tokens in one request; a larger count is a broken or hostile backend (2^64-1
/// would wrap a sum to a charge of 1), so the request is estimated instead (`plausible`).
pub const MAX_PLAUSIBLE_TOKENS: u64 = 1_000_000_000;

/// Tokens one request used.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Prompt (input) tokens.
    pub prompt: u64,
    /// Completion (output) tokens.
    pub completion: u64,
    /// Prompt tokens served from the backend's cache.
    pub cached: u64,
    /// Completion tokens spent on reasoning.
    pub reasoning: u64,
    /// Prompt tokens written to the backend's cache (Anthropic's `cache_creation_input_tokens`,
    /// inside `prompt`), billed apart from plain input.
    pub cache_write: u64,
    /// The part of `cache_write` kept for an hour (`cache_creation.ephemeral_1h_input_tokens`),
    /// billed higher than the 5-minute rest.
    pub cache_write_1h: u64,
    /// Not reported by the backend: estimated from the text's length.
    pub estimated: bool,
}

impl Usage {
    /// True when no count is above `MAX_PLAUSIBLE_TOKENS`.
    pub fn plausible(&self) -> bool {
        [
            self.prompt,
            self.completion,
            self.cached,
            self.reasoning,
            self.cache_write,
            self.cache_write_1h,
        ]
        .iter()
        .all(|n| *n <= MAX_PLAUSIBLE_TOKENS)
    }

    /// Prompt plus completion tokens, never wrapping.
    pub fn total(&self) -> u64 {
        self.prompt.saturating_add(self.completion)
    }
}

/// A response body cut the way a usage reader reads it, gzip undone on the way: SSE lines one
/// by one (a line longer than `MAX_LINE` is skipped whole), or a whole JSON body (none past
/// `MAX_JSON`). Shared by the OpenAI reader here and the Messages API's (`messages_usage`).
pub struct BodyFramer {
    sse: bool,
    gzip: Option<GzDecoder<Vec<u8>>>,
    buf: Vec<u8>,
    overflow: bool,
}

impl BodyFramer {
    /// A framer for an SSE (`true`) or JSON (`false`) body, compressed with gzip or not.
    pub fn new(sse: bool, gzip: bool) -> BodyFramer {
        BodyFramer {
            sse,
            gzip: gzip.then(|| GzDecoder::new(Vec::new())),
            buf: Vec::new(),
            overflow: false,
        }
    }

    /// Feeds the next piece of the body, as sent on the wire; `line` gets each complete SSE
    /// line that was kept whole.
    pub fn feed(&mut self, data: &[u8], line: &mut dyn FnMut(&[u8])) {
        match self.gzip.as_mut() {
            None => self.feed_plain(data, line),
            Some(d) => {
                // A corrupt stream just stops the counting; the client gets the bytes as sent.
                if d.write_all(data).is_err() {
                    self.gzip = None;
                    self.overflow = true;
                    return;
                }
                let plain = std::mem::take(d.get_mut());
                self.feed_plain(&plain, line);
            }
        }
    }

    fn feed_plain(&mut self, data: &[u8], line: &mut dyn FnMut(&[u8])) {
        if !self.sse {
            if self.buf.len() + data.len() > MAX_JSON {
                self.overflow = true;
                self.buf = Vec::new();
            } else if !self.overflow {
                self.buf.extend_from_slice(data);
            }
            return;
        }
        // Line by line (not byte by byte): this runs on every piece of every stream.
        let mut rest = data;
        loop {
            let end = memchr::memchr(b'\n', rest);
            // A whole line of `data` with nothing kept before it is read where it is: no copy.
            if let Some(at) =
                end.filter(|at| self.buf.is_empty() && !self.overflow && *at <= MAX_LINE)
            {
                line(&rest[..at]);
                rest = &rest[at + 1..];
                continue;
            }
            let part = &rest[..end.unwrap_or(rest.len())];
            let room = MAX_LINE - self.buf.len().min(MAX_LINE);
            self.buf.extend_from_slice(&part[..part.len().min(room)]);
            if part.len() > room {
                self.overflow = true;
            }
            match end {
                Some(at) => {
                    self.line_done(line);
                    rest = &rest[at + 1..];
                }
                None => break,
            }
        }
    }

    fn line_done(&mut self, line: &mut dyn FnMut(&[u8])) {
        let overflowed = std::mem::replace(&mut self.overflow, false);
        if !overflowed {
            line(&self.buf);
        }
        // Cleared, not replaced: the line buffer is reused for the next line.
        self.buf.clear();
    }

    /// True for an SSE body.
    pub fn sse(&self) -> bool {
        self.sse
    }

    /// True for an SSE body that is not compressed: the lines are slices of the pieces fed.
    pub fn plain_sse(&self) -> bool {
        self.sse && self.gzip.is_none()
    }

    /// Once the body has ended: an SSE body's last line goes to `line`; a JSON body is
    /// returned whole (`None` for a stream, or a body too large or corrupt to read).
    pub fn finish(&mut self, line: &mut dyn FnMut(&[u8])) -> Option<&[u8]> {
        if let Some(mut d) = self.gzip.take() {
            if d.try_finish().is_ok() {
                let rest = std::mem::take(d.get_mut());
                self.feed_plain(&rest, line);
            }
        }
        if self.sse {
            if !self.buf.is_empty() {
                self.line_done(line);
            }
            return None;
        }
        (!self.overflow).then_some(self.buf.as_slice())
    }
}

/// Watches response bytes as they pass and keeps the last usage seen.
pub struct UsageTap {
    body: BodyFramer,
    found: Option<Usage>,
    /// Characters of generated text seen in SSE deltas, for an estimate.
    content_chars: u64,
}

impl UsageTap {
    /// A tap for an SSE (`true`) or JSON (`false`) body, compressed with gzip or not.
    pub fn new(sse: bool, gzip: bool) -> UsageTap {
        UsageTap {
            body: BodyFramer::new(sse, gzip),
            found: None,
            content_chars: 0,
        }
    }

    /// Feeds the next piece of the body, as sent on the wire.
    pub fn feed(&mut self, data: &[u8]) {
        let (found, chars) = (&mut self.found, &mut self.content_chars);
        // The rarer names searched for once in the whole piece: a line of it before the name's
        // first occurrence cannot hold it, and is not searched for it. (Most stream pieces hold
        // many events and never name `text`, `reasoning` or, until the usage chunk, `usage`.
        // `content` and `delta` are in nearly every line: searching the piece for them first
        // would only add a search.)
        // Only in a piece of several events: in a piece of one (events that come apart), these
        // searches would be the line's own searches again, plus the bookkeeping.
        let several = data.len() >= PREFILTER_MIN;
        let first = (self.body.plain_sse() && several).then(|| first_occurrences(data));
        let within = data.as_ptr_range();
        self.body.feed(data, &mut |l| {
            let names = match first {
                // A line read where it is in `data` (not put together in the line buffer).
                Some(first) if within.contains(&l.as_ptr()) => {
                    let end = l.as_ptr() as usize - within.start as usize + l.len();
                    first.map(|at| at.is_some_and(|at| at < end))
                }
                _ => [true; NAMES],
            };
            sse_line(found, chars, l, names)
        });
    }

    /// Once the body has ended: the usage the backend reported, and the characters of
    /// generated text the body carried (for an estimate when it reported none).
    pub fn finish(mut self) -> (Option<Usage>, u64) {
        let sse = self.body.sse;
        let (found, chars) = (&mut self.found, &mut self.content_chars);
        let json = self
            .body
            .finish(&mut |l| sse_line(found, chars, l, [true; NAMES]));
        if sse {
            return (self.found, self.content_chars);
        }
        let Some(json) = json else {
            return (None, 0);
        };
        match usage_of(json) {
            Some(u) if u.plausible() => (Some(u), 0),
            // A whole JSON answer without usage (or with counts not to be believed): its
            // generated text, for the estimate.
            u => (u, delta_chars(json)),
        }
    }
}

/// The least piece whose lines are searched for the rarer names all at once (a chat chunk's
/// event is about 200 bytes).
const PREFILTER_MIN: usize = 1024;

/// The names an SSE line is searched for: the four of `delta_chars`, then `"usage"`.
const NAMES: usize = 5;

/// Where each of the `NAMES` first occurs in `data` (`Some(0)` for `content` and `delta`,
/// which are not searched for here: "maybe from the start").
fn first_occurrences(data: &[u8]) -> [Option<usize>; NAMES] {
    let n = needles();
    let mut first = [Some(0); NAMES];
    for (k, name) in [(1, &n.text), (3, &n.reasoning), (4, &n.usage)] {
        first[k] = name.find(data);
    }
    first
}

/// One SSE line of an OpenAI-shaped stream: its text counted, its usage kept. Only the names
/// `names` says the line may hold are searched for.
fn sse_line(found: &mut Option<Usage>, chars: &mut u64, line: &[u8], names: [bool; NAMES]) {
    if let Some(payload) = line.strip_prefix(b"data:") {
        *chars += text_chars(payload, [names[0], names[1], names[2], names[3]]);
        if names[4] && needles().usage.find(payload).is_some() {
            if let Some(u) = usage_of(payload) {
                *found = Some(u);
            }
        }
    }
}

/// An estimate for a request whose backend reported no usage: about four characters a token.
pub fn estimate(prompt_bytes: usize, completion_chars: u64) -> Usage {
    Usage {
        prompt: (prompt_bytes as u64).div_ceil(4),
        completion: completion_chars.div_ceil(4),
        estimated: true,
        ..Usage::default()
    }
}

/// `usage` (chat, completions, embeddings) or `response.usage` (Responses API), either naming.
fn usage_of(json: &[u8]) -> Option<Usage> {
    let c = super::usage_json::counts(json)?;
    Some(Usage {
        prompt: c.prompt,
        completion: c.completion,
        cached: c.cached,
        reasoning: c.reasoning,
        ..Usage::default()
    })
}

/// Characters of the JSON string values of `"content"`, `"text"`, `"delta"`,
/// `"reasoning_content"` and `"reasoning"` members in one SSE payload (or JSON answer), escapes
/// counted as one, whitespace around the colon allowed (Python's `json.dumps` writes
/// `"content": "x"`): a cheap scan, no parse, for the estimate.
fn delta_chars(payload: &[u8]) -> u64 {
    text_chars(payload, [true; 4])
}

/// `delta_chars`, searching only for the names `search` marks (`content`, `text`, `delta`,
/// `reasoning`): the others are known to be absent.
fn text_chars(payload: &[u8], search: [bool; 4]) -> u64 {
    let mut total = 0;
    let n = needles();
    // Four scans, not five: `"reasoning` finds both `reasoning` and `reasoning_content` (this
    // runs on every line of every stream).
    let keys = [&n.content, &n.text, &n.delta, &n.reasoning];
    for key in keys.iter().zip(search).filter(|(_, s)| *s).map(|(k, _)| *k) {
        let mut rest = payload;
        while let Some(at) = key.find(rest) {
            rest = &rest[at + key.needle().len()..];
            if key.needle() == n.reasoning.needle() {
                match [&b"\""[..], b"_content\""]
                    .iter()
                    .find(|end| rest.starts_with(end))
                {
                    Some(end) => rest = &rest[end.len()..],
                    None => continue,
                }
            }
            // A member name is followed by a colon; the same word as a value is not.
            let Some(value) = string_value_start(rest) else {
                continue;
            };
            rest = &rest[value..];
            let mut end = rest.len();
            let mut i = 0;
            while i < rest.len() {
                match rest[i] {
                    // An escape is one character: `\n`, `\"`, `\u00e9`.
                    b'\\' => {
                        total += 1;
                        i += if rest.get(i + 1) == Some(&b'u') { 6 } else { 2 };
                        continue;
                    }
                    b'"' => {
                        end = i;
                        break;
                    }
                    // UTF-8 continuation bytes belong to the character before them.
                    0x80..=0xbf => {}
                    _ => total += 1,
                }
                i += 1;
            }
            rest = &rest[end.min(rest.len())..];
        }
    }
    total
}

/// After a member name: the offset of its string value's first character, when the name is
/// followed by optional whitespace, a colon, optional whitespace and an opening quote.
fn string_value_start(rest: &[u8]) -> Option<usize> {
    let ws = |from: usize| {
        rest[from.min(rest.len())..]
            .iter()
            .position(|b| !matches!(b, b' ' | b'\t' | b'\r' | b'\n'))
            .map(|p| from + p)
    };
    let colon = ws(0)?;
    if rest[colon] != b':' {
        return None;
    }
    let quote = ws(colon + 1)?;
    (rest[quote] == b'"').then_some(quote + 1)
}

/// The searchers for the members every SSE line is scanned for, built once.
struct Needles {
    usage: Finder<'static>,
    content: Finder<'static>,
    text: Finder<'static>,
    delta: Finder<'static>,
    /// Without its closing quote: `reasoning` and `reasoning_content`.
    reasoning: Finder<'static>,
}

fn needles() -> &'static Needles {
    static NEEDLES: OnceLock<Needles> = OnceLock::new();
    NEEDLES.get_or_init(|| Needles {
        usage: json_finder(b"\"usage\""),
        content: json_finder(b"\"content\""),
        text: json_finder(b"\"text\""),
        delta: json_finder(b"\"delta\""),
        reasoning: json_finder(b"\"reasoning"),
    })
}

/// A substring searcher for JSON text: the same matches as `Finder::new`, found faster.
pub fn json_finder(needle: &'static [u8]) -> Finder<'static> {
    FinderBuilder::new().build_forward_with_ranker(JsonRank, needle)
}

/// How common a byte is in JSON, for the searcher's choice of the needle's rarest two bytes
/// (the candidates it compares in full). Its default table (for prose and code) takes `"` as
/// rare; in JSON every name and string has two, and each name searched for starts with one, so
/// the search stopped to compare at most quotes: about one instruction per byte searched.
struct JsonRank;

impl HeuristicFrequencyRank for JsonRank {
    fn rank(&self, byte: u8) -> u8 {
        match byte {
            b'"' | b':' | b',' | b'{' | b'}' | b'[' | b']' | b' ' | b'0'..=b'9' => 255,
            b'e' | b't' | b'a' | b'o' | b'i' | b'n' | b's' | b'r' => 240,
            b'h' | b'l' | b'd' | b'c' | b'u' | b'm' => 220,
            b'_' | b'f' | b'p' | b'g' | b'w' | b'y' | b'b' | b'.' | b'-' => 200,
            b'v' | b'k' => 180,
            b'x' | b'j' | b'q' | b'z' => 150,
            _ => 128,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tap(sse: bool, pieces: &[&[u8]]) -> Option<Usage> {
        let mut t = UsageTap::new(sse, false);
        for p in pieces {
            t.feed(p);
        }
        t.finish().0
    }

    #[test]
    fn reads_usage_from_json_and_split_sse() {
        let u = tap(
            false,
            &[
                br#"{"usage":{"prompt_tokens":3,"#,
                br#""completion_tokens":5,"prompt_tokens_details":{"cached_tokens":2},"completion_tokens_details":{"reasoning_tokens":1}}}"#,
            ],
        );
        assert_eq!(
            u,
            Some(Usage {
                prompt: 3,
                completion: 5,
                cached: 2,
                reasoning: 1,
                ..Usage::default()
            })
        );
        let u = tap(
            true,
            &[
                b"data: {\"choices\":[{\"delta\":{\"content\":\"usage\"}}]}\n\ndata: {\"choices\":[],\"us",
                b"age\":{\"prompt_tokens\":7,\"completion_tokens\":2}}\n\ndata: [DONE]\n\n",
            ],
        );
        assert_eq!(u.map(|u| (u.prompt, u.completion)), Some((7, 2)));
        // Chunks with `"usage":null` are not usage.
        assert_eq!(tap(true, &[b"data: {\"usage\":null}\n\n"]), None);
    }

    #[test]
    fn reads_responses_api_usage() {
        let body = br#"{"object":"response","usage":{"input_tokens":11,"input_tokens_details":{"cached_tokens":4},"output_tokens":6,"output_tokens_details":{"reasoning_tokens":3},"total_tokens":17}}"#;
        let want = Some(Usage {
            prompt: 11,
            completion: 6,
            cached: 4,
            reasoning: 3,
            ..Usage::default()
        });
        assert_eq!(tap(false, &[body]), want);
        let mut sse =
            b"event: response.completed\ndata: {\"type\":\"response.completed\",\"response\":"
                .to_vec();
        sse.extend_from_slice(body);
        sse.extend_from_slice(b"}\n\n");
        assert_eq!(tap(true, &[&sse]), want);
    }

    #[test]
    fn reads_gzip_bodies() {
        let plain = br#"{"usage":{"prompt_tokens":9,"completion_tokens":4}}"#;
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        enc.write_all(plain).unwrap();
        let gz = enc.finish().unwrap();
        let mut t = UsageTap::new(false, true);
        for piece in gz.chunks(7) {
            t.feed(piece);
        }
        assert_eq!(t.finish().0.map(|u| (u.prompt, u.completion)), Some((9, 4)));
    }

    #[test]
    fn counts_delta_text_for_estimates() {
        let mut t = UsageTap::new(true, false);
        t.feed(b"data: {\"choices\":[{\"delta\":{\"content\":\"Hello \\\"w\\u00e9\"}}]}\n\n");
        t.feed("data: {\"choices\":[{\"delta\":{\"content\":\"é!\"}}]}\n\n".as_bytes());
        assert_eq!(t.finish(), (None, 9 + 2));
        assert_eq!(estimate(40, 12).prompt, 10);
        assert_eq!(estimate(40, 13).completion, 4);
    }

    #[test]
    fn counts_spaced_json_and_reasoning_text_for_estimates() {
        let compact = b"data: {\"choices\":[{\"delta\":{\"reasoning_content\":\"hmm\",\"content\":\"ab\"}}]}\n";
        let spaced = b"data: {\"choices\": [{\"delta\": {\"reasoning\" : \"hmm\", \"content\":  \"ab\"}}]}\n";
        for body in [&compact[..], &spaced[..]] {
            let mut t = UsageTap::new(true, false);
            t.feed(body);
            assert_eq!(t.finish(), (None, 5), "{}", String::from_utf8_lossy(body));
        }
        // The same words as values, and a reasoning object, are not text.
        assert_eq!(
            delta_chars(br#"{"role": "content", "reasoning": {"effort": "low"}, "text" :"xy"}"#),
            2
        );
        // A whole JSON answer without usage is counted too.
        let mut t = UsageTap::new(false, false);
        t.feed(br#"{"choices": [{"message": {"role": "assistant", "content": "four"}}]}"#);
        assert_eq!(t.finish(), (None, 4));
    }

    #[test]
    fn implausible_counts_are_flagged_and_sums_saturate() {
        let huge = Usage {
            prompt: 12,
            completion: u64::MAX,
            ..Usage::default()
        };
        assert!(!huge.plausible());
        assert_eq!(huge.total(), u64::MAX);
        let edge = Usage {
            prompt: MAX_PLAUSIBLE_TOKENS,
            ..Usage::default()
        };
        assert!(edge.plausible());
    }

    #[test]
    fn names_searched_once_per_piece_count_what_each_line_searched_does() {
        let body: &[u8] = b": hi\r\n\
            data: {\"choices\":[{\"delta\":{\"content\":\"a\\\"b\"}}],\"usage\":null}\r\n\r\n\
            data: {\"choices\":[{\"text\":\"usage\",\"delta\":{\"reasoning_content\":\"hm\"}}]}\n\n\
            data: {\"choices\":[{\"delta\":{\"reasoning\":\"r\",\"content\":\"\\\"usage\\\":{}\"}}]}\n\n\
            data: {\"choices\":[],\"usage\":{\"prompt_tokens\":4,\"completion_tokens\":2}}\n\n\
            data: [DONE]\n\n";
        let fed = |pieces: &[&[u8]]| {
            let mut t = UsageTap::new(true, false);
            for p in pieces {
                t.feed(p);
            }
            t.finish()
        };
        let want = (
            Some(Usage {
                prompt: 4,
                completion: 2,
                ..Usage::default()
            }),
            3 + 5 + 2 + 1 + 10,
        );
        // Byte by byte every line is put together in the line buffer and searched in full.
        let bytes: Vec<&[u8]> = body.chunks(1).collect();
        assert_eq!(fed(&bytes), want);
        assert_eq!(fed(&[body]), want);
        for cut in 1..body.len() {
            assert_eq!(fed(&[&body[..cut], &body[cut..]]), want, "cut {}", cut);
        }
    }
}
