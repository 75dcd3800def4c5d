//! Hides the stream usage modelmux asked a backend for: when a client streams without
//! `stream_options.include_usage`, modelmux asks for it anyway (to count tokens exactly) and
//! must give the client the bytes it would have had without asking: the usage-only chunk is
//! dropped and the `"usage":null` member OpenAI adds to every other chunk is removed.

use memchr::memmem::Finder;
use std::sync::OnceLock;

/// Rewrites an SSE byte stream event by event; bytes of an unfinished event wait for its end.
#[derive(Debug, Default)]
pub struct UsageStrip {
    pending: Vec<u8>,
}

impl UsageStrip {
    /// Takes the next bytes from the backend; appends the bytes to send now (complete events)
    /// to `out`.
    pub fn feed(&mut self, data: &[u8], out: &mut Vec<u8>) {
        // With nothing waiting, the complete events are read where they are and only an
        // unfinished last one is kept: most pieces end on an event's end.
        if self.pending.is_empty() {
            let done = strip_events(data, out);
            self.pending.extend_from_slice(&data[done..]);
            return;
        }
        self.pending.extend_from_slice(data);
        let done = strip_events(&self.pending, out);
        self.pending.drain(..done);
    }

    /// Like `feed`, but when the bytes to send now are all of `data`, unchanged (nothing held
    /// back before it or at its end, nothing cut), writes nothing and returns true: the caller
    /// sends `data` itself. Most pieces of a stream whose backend sends no `"usage"` member
    /// until its usage chunk are relayed so, without a copy.
    pub fn feed_unchanged(&mut self, data: &[u8], out: &mut Vec<u8>) -> bool {
        if !self.pending.is_empty() {
            self.feed(data, out);
            return false;
        }
        let (done, written) = changed_events(data, out);
        if written == 0 && done == data.len() {
            return true;
        }
        out.extend_from_slice(&data[written..done]);
        self.pending.extend_from_slice(&data[done..]);
        false
    }

    /// The bytes of an event the stream ended in the middle of, as they came.
    pub fn finish(self) -> Vec<u8> {
        self.pending
    }
}

/// Writes the complete events at the start of `buf` to `out`, stripped; returns their length.
fn strip_events(buf: &[u8], out: &mut Vec<u8>) -> usize {
    let (done, written) = changed_events(buf, out);
    out.extend_from_slice(&buf[written..done]);
    done
}

/// Goes through the complete events at the start of `buf`, writing to `out` only up to the end
/// of the last one that holds the member's name (the bytes before it as they are, it
/// stripped); returns the complete events' length and how much of them was written. The name
/// is searched for across the events, not in each: a stream's events without it cost a
/// newline search each.
fn changed_events(buf: &[u8], out: &mut Vec<u8>) -> (usize, usize) {
    let usage = &needles().usage;
    let name = usage.needle().len();
    let mut start = 0;
    let mut written = 0;
    // The first occurrence of the name at or after `start`.
    let mut next = usage.find(buf);
    while let Some(len) = event_end(&buf[start..]) {
        let end = start + len;
        match next {
            // Wholly inside this event: what `strip_event`'s own search finds.
            Some(at) if at + name <= end => {
                out.extend_from_slice(&buf[written..start]);
                strip_event(&buf[start..end], out);
                written = end;
            }
            Some(_) | None => {}
        }
        if next.is_some_and(|at| at < end) {
            next = usage.find(&buf[end..]).map(|at| end + at);
        }
        start = end;
    }
    (start, written)
}

/// The length of the first complete event (through its blank line), if there is one.
fn event_end(buf: &[u8]) -> Option<usize> {
    let mut from = 0;
    while let Some(at) = memchr::memchr(b'\n', &buf[from..]) {
        let i = from + at;
        match buf.get(i + 1) {
            Some(b'\n') => return Some(i + 2),
            Some(b'\r') if buf.get(i + 2) == Some(&b'\n') => return Some(i + 3),
            _ => {}
        }
        from = i + 1;
    }
    None
}

/// Writes `event` to `out`, without it when it only carries usage, else without `"usage":null`.
fn strip_event(event: &[u8], out: &mut Vec<u8>) {
    // Without the member's name anywhere there is no member to remove: most events of a
    // stream, copied without a scan of their JSON.
    let needles = needles();
    if needles.usage.find(event).is_none() {
        out.extend_from_slice(event);
        return;
    }
    let Some(data_at) = needles.data.find(event) else {
        out.extend_from_slice(event);
        return;
    };
    let json_start = data_at
        + 5
        + event[data_at + 5..]
            .iter()
            .take_while(|b| **b == b' ')
            .count();
    let line_end =
        memchr::memchr2(b'\n', b'\r', &event[json_start..]).map_or(event.len(), |p| json_start + p);
    let json = &event[json_start..line_end];
    let Some(usage) = member(json, "usage") else {
        out.extend_from_slice(event);
        return;
    };
    let value = &json[usage.value.clone()];
    if value != b"null" {
        // The usage chunk: empty `choices` (chat, completions) and usage: nothing else for
        // the client, so the whole event goes.
        if member(json, "choices").is_some_and(|c| is_empty_array(&json[c.value])) {
            return;
        }
    }
    out.extend_from_slice(&event[..json_start]);
    out.extend_from_slice(&json[..usage.remove.start]);
    out.extend_from_slice(&json[usage.remove.end..]);
    out.extend_from_slice(&event[line_end..]);
}

struct Needles {
    usage: Finder<'static>,
    data: Finder<'static>,
}

/// Built once: a searcher built per search was a tenth of a relay's time.
fn needles() -> &'static Needles {
    static NEEDLES: OnceLock<Needles> = OnceLock::new();
    NEEDLES.get_or_init(|| Needles {
        usage: crate::stream::usage::json_finder(b"\"usage\""),
        data: Finder::new(b"data:"),
    })
}

/// Where a top-level member sits in a JSON object's text.
struct Span {
    /// Its value.
    value: std::ops::Range<usize>,
    /// What to cut to remove the member: key, colon, value and one separating comma.
    remove: std::ops::Range<usize>,
}

/// Finds top-level member `key` of the object `json` by scanning (no parse, no reformatting).
fn member(json: &[u8], key: &str) -> Option<Span> {
    let key = key.as_bytes();
    let mut depth = 0usize;
    let mut i = 0;
    // Start of the current member at depth 1 (after `{` or `,`), and the comma before it.
    let mut member_start = 0;
    let mut comma_before: Option<usize> = None;
    while i < json.len() {
        match json[i] {
            b'"' => {
                let end = string_end(json, i)?;
                if depth == 1 && end == i + key.len() + 2 && &json[i + 1..end - 1] == key {
                    let mut j = end;
                    while json.get(j).is_some_and(|b| b.is_ascii_whitespace()) {
                        j += 1;
                    }
                    if json.get(j) == Some(&b':') {
                        let mut v = j + 1;
                        while json.get(v).is_some_and(|b| b.is_ascii_whitespace()) {
                            v += 1;
                        }
                        let v_end = value_end(json, v)?;
                        let mut after = v_end;
                        while json.get(after).is_some_and(|b| b.is_ascii_whitespace()) {
                            after += 1;
                        }
                        let remove = match (comma_before, json.get(after)) {
                            (Some(c), _) => c..v_end,
                            (None, Some(b',')) => {
                                let mut next = after + 1;
                                while json.get(next).is_some_and(|b| b.is_ascii_whitespace()) {
                                    next += 1;
                                }
                                member_start..next
                            }
                            (None, _) => member_start..v_end,
                        };
                        return Some(Span {
                            value: v..v_end,
                            remove,
                        });
                    }
                }
                i = end;
                continue;
            }
            b'{' | b'[' => {
                depth += 1;
                if depth == 1 {
                    member_start = i + 1;
                    while json
                        .get(member_start)
                        .is_some_and(|b| b.is_ascii_whitespace())
                    {
                        member_start += 1;
                    }
                }
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            b',' if depth == 1 => {
                comma_before = Some(i);
                member_start = i + 1;
            }
            _ => {}
        }
        i += 1;
    }
    None
}

/// The index just past the string starting at `start` (a `"`).
fn string_end(json: &[u8], start: usize) -> Option<usize> {
    let mut i = start + 1;
    while i < json.len() {
        i += memchr::memchr2(b'\\', b'"', &json[i..])?;
        match json[i] {
            b'\\' => i += 2,
            _ => return Some(i + 1),
        }
    }
    None
}

/// The index just past the JSON value starting at `start`.
fn value_end(json: &[u8], start: usize) -> Option<usize> {
    match json.get(start)? {
        b'"' => string_end(json, start),
        b'{' | b'[' => {
            let mut depth = 0usize;
            let mut i = start;
            while i < json.len() {
                match json[i] {
                    b'"' => {
                        i = string_end(json, i)?;
                        continue;
                    }
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth -= 1;
                        if depth == 0 {
                            return Some(i + 1);
                        }
                    }
                    _ => {}
                }
                i += 1;
            }
            None
        }
        _ => Some(
            start
                + json[start..]
                    .iter()
                    .position(|b| matches!(b, b',' | b'}' | b']') || b.is_ascii_whitespace())
                    .unwrap_or(json.len() - start),
        ),
    }
}

fn is_empty_array(v: &[u8]) -> bool {
    v.first() == Some(&b'[')
        && v.last() == Some(&b']')
        && v[1..v.len() - 1].iter().all(u8::is_ascii_whitespace)
}

#[cfg(test)]
mod tests {
    use super::UsageStrip;

    fn strip(pieces: &[&str]) -> String {
        let mut s = UsageStrip::default();
        let mut out = Vec::new();
        for p in pieces {
            s.feed(p.as_bytes(), &mut out);
        }
        out.extend(s.finish());
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn removes_what_include_usage_added_and_nothing_else() {
        let with = [
            "data: {\"id\":\"c\",\"choices\":[{\"delta\":{\"content\":\"Hi\"}}],\"usage\":null}\n\n",
            "data: {\"id\":\"c\",\"usage\":null,\"choices\":[{\"delta\":{}}]}\n\n",
            "data: {\"usage\": null, \"id\": \"c\", \"choices\": []}\n\n",
            "data: {\"id\":\"c\",\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":1}}\n\n",
            "data: [DONE]\n\n",
        ];
        let without = [
            "data: {\"id\":\"c\",\"choices\":[{\"delta\":{\"content\":\"Hi\"}}]}\n\n",
            "data: {\"id\":\"c\",\"choices\":[{\"delta\":{}}]}\n\n",
            "data: {\"id\": \"c\", \"choices\": []}\n\n",
            "data: [DONE]\n\n",
        ];
        assert_eq!(strip(&with), without.concat());
        // Split anywhere, the same bytes come out.
        let all = with.concat();
        for cut in 1..all.len() {
            assert_eq!(
                strip(&[&all[..cut], &all[cut..]]),
                without.concat(),
                "cut {}",
                cut
            );
        }
    }

    #[test]
    fn usage_inside_a_content_chunk_is_removed_not_the_chunk() {
        assert_eq!(
            strip(&[
                "data: {\"choices\":[{\"text\":\"a\"}],\"usage\":{\"prompt_tokens\":1}}\r\n\r\n"
            ]),
            "data: {\"choices\":[{\"text\":\"a\"}]}\r\n\r\n"
        );
        // Strings that mention usage are not members.
        let s = "data: {\"choices\":[{\"delta\":{\"content\":\"\\\"usage\\\":null\"}}]}\n\n";
        assert_eq!(strip(&[s]), s);
        assert_eq!(
            strip(&[": comment\n\n", "data: {\"a\":1}"]),
            ": comment\n\ndata: {\"a\":1}"
        );
    }

    /// The relay's way: `feed_unchanged`, the piece itself sent when it says so.
    fn relayed(pieces: &[&[u8]]) -> Vec<u8> {
        let mut s = UsageStrip::default();
        let mut sent = Vec::new();
        for p in pieces {
            let mut out = Vec::new();
            if s.feed_unchanged(p, &mut out) {
                assert!(out.is_empty());
                sent.extend_from_slice(p);
            } else {
                sent.extend_from_slice(&out);
            }
        }
        sent.extend(s.finish());
        sent
    }

    /// What stripping each complete event on its own gives (the old way, event by event).
    fn event_by_event(all: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut start = 0;
        while let Some(end) = super::event_end(&all[start..]) {
            super::strip_event(&all[start..start + end], &mut out);
            start += end;
        }
        out.extend_from_slice(&all[start..]);
        out
    }

    #[test]
    fn one_search_per_piece_strips_what_event_by_event_stripping_does() {
        let events: [&str; 12] = [
            // `"usage":null` on a content chunk, LF and CRLF.
            "data: {\"id\":\"c\",\"choices\":[{\"delta\":{\"content\":\"Hi\"}}],\"usage\":null}\n\n",
            "data: {\"usage\":null,\"choices\":[{\"delta\":{\"content\":\"a\"}}]}\r\n\r\n",
            // No usage at all.
            "data: {\"id\":\"c\",\"choices\":[{\"delta\":{\"content\":\"plain\"}}]}\n\n",
            // The name inside a string value, with escaped quotes around it: not a member.
            "data: {\"choices\":[{\"delta\":{\"content\":\"\\\"usage\\\":{\\\"prompt_tokens\\\":1}\"}}]}\n\n",
            "data: {\"choices\":[{\"delta\":{\"content\":\"say \\\"usage\\\" \\\\\"}}],\"usage\":null}\n\n",
            // A comment, and an event with other fields.
            ": keep-alive\n\n",
            "event: chunk\nid: 7\ndata: {\"choices\":[{\"delta\":{}}],\"usage\":null}\n\n",
            // Multi-line data: the usage on the second line is not the first line's JSON.
            "data: {\"choices\":[{\"delta\":{\"content\":\"x\"}}],\ndata: \"usage\":null}\n\n",
            // The usage chunk: gone; usage beside content: the member goes.
            "data: {\"id\":\"c\",\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":1}}\r\n\r\n",
            "data: {\"choices\":[{\"text\":\"a\"}],\"usage\":{\"prompt_tokens\":1}}\n\n",
            "data: [DONE]\n\n",
            // An unfinished last event, held back and sent as it came.
            "data: {\"usage\":null",
        ];
        let all = events.concat();
        let want = event_by_event(all.as_bytes());
        let want_text = String::from_utf8(want.clone()).unwrap();
        assert!(want_text.starts_with(
            "data: {\"id\":\"c\",\"choices\":[{\"delta\":{\"content\":\"Hi\"}}]}\n\n\
             data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}]}\r\n\r\n"
        ));
        assert!(!want_text.contains("\"completion_tokens\":1"));
        assert!(want_text.contains("\\\"usage\\\":{\\\"prompt_tokens\\\":1}"));
        assert!(want_text.contains(
            ": keep-alive\n\nevent: chunk\nid: 7\ndata: {\"choices\":[{\"delta\":{}}]}\n\n"
        ));
        assert!(want_text.contains("data: \"usage\":null}\n\n"));
        assert!(want_text.ends_with("data: [DONE]\n\ndata: {\"usage\":null"));
        assert_eq!(relayed(&[all.as_bytes()]), want);
        assert_eq!(strip(&[&all]).into_bytes(), want);
        // Cut anywhere into two or three reads (names and events split across them).
        let b = all.as_bytes();
        for cut in 1..b.len() {
            assert_eq!(relayed(&[&b[..cut], &b[cut..]]), want, "cut {}", cut);
            let third = (cut + 7).min(b.len());
            assert_eq!(
                relayed(&[&b[..cut], &b[cut..third], &b[third..]]),
                want,
                "cuts {} {}",
                cut,
                third
            );
        }
        // Events that need nothing cut pass as read, whole pieces.
        let plain = [events[2], events[5], events[10]].concat();
        let mut s = UsageStrip::default();
        let mut out = Vec::new();
        assert!(s.feed_unchanged(plain.as_bytes(), &mut out));
        assert!(out.is_empty());
        assert!(!s.feed_unchanged(events[0].as_bytes(), &mut out));
    }
}
