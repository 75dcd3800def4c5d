//! modelmux: a request's target and headers in one shared text, each header a pair of ranges
//! into it.
//!
//! Upstream kept every header as two owned strings (`Header { field, value }`) plus the target
//! as a `String`: with the line buffers, some ten heap allocations for a three-header request.
//! Here the connection collects the head into buffers it reuses, and a request gets one
//! allocation for its text (the ranges of up to 16 headers are kept inline, more in a second
//! one), reference-counted so that the application can keep the headers past the `Request`
//! (a clone bumps a counter and copies the inline ranges).

use std::sync::Arc;

use crate::common::{Header, HeaderField};

/// Where one header's name and value are in the text.
#[derive(Debug, Clone, Copy, Default)]
struct Field {
    name: (u32, u32),
    value: (u32, u32),
}

fn at(text: &str, (start, end): (u32, u32)) -> &str {
    &text[start as usize..end as usize]
}

/// A request's headers in the order received, names as sent (compare them ignoring case).
/// Values are visible ASCII, spaces and tabs, trimmed of surrounding whitespace (see
/// `framing::parse_header_line`).
#[derive(Debug, Clone)]
pub struct HeaderList {
    text: Arc<str>,
    fields: Fields,
    /// The text starts with the request target, this long (0 when built from pairs).
    target_len: u32,
}

/// Up to `INLINE_FIELDS` headers' ranges are kept in the list itself (one allocation per
/// request, the text's, for a typical head); more are shared on the heap.
const INLINE_FIELDS: usize = 16;

#[derive(Debug, Clone)]
enum Fields {
    Inline([Field; INLINE_FIELDS], u8),
    Shared(Arc<[Field]>),
}

impl Fields {
    fn as_slice(&self) -> &[Field] {
        match self {
            Fields::Inline(f, n) => &f[..usize::from(*n)],
            Fields::Shared(f) => f,
        }
    }
}

impl Default for HeaderList {
    fn default() -> HeaderList {
        HeaderList::from_pairs(std::iter::empty())
    }
}

impl HeaderList {
    /// Headers from name/value pairs (tests, and requests built by the application).
    pub fn from_pairs<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> HeaderList {
        HeadBuilder::build("", pairs)
    }

    /// Each header as `(name, value)`, in the order received.
    pub fn iter(
        &self,
    ) -> impl DoubleEndedIterator<Item = (&str, &str)> + ExactSizeIterator + Clone {
        self.fields
            .as_slice()
            .iter()
            .map(move |f| (at(&self.text, f.name), at(&self.text, f.value)))
    }

    /// The value of the first header named `name` (ignoring case).
    pub fn get(&self, name: &str) -> Option<&str> {
        self.iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    }

    /// How many headers there are.
    pub fn len(&self) -> usize {
        self.fields.as_slice().len()
    }

    /// True when there is none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Upstream's representation, for `Request::headers` (two allocations per header).
    pub fn to_headers(&self) -> Vec<Header> {
        self.iter()
            .filter_map(|(n, v)| {
                Some(Header {
                    field: HeaderField::from_bytes(n.as_bytes()).ok()?,
                    value: ascii::AsciiString::from_ascii(v.as_bytes()).ok()?,
                })
            })
            .collect()
    }

    /// The request target the text starts with.
    pub(crate) fn target(&self) -> &str {
        &self.text[..self.target_len as usize]
    }
}

/// Collects a head; kept by the connection and cleared for each request, so its buffers are
/// allocated once per connection, not per request.
#[derive(Debug, Default)]
pub(crate) struct HeadBuilder {
    text: String,
    fields: Vec<Field>,
    target_len: u32,
}

impl HeadBuilder {
    /// A head of a target and these headers (requests not read from a connection).
    pub(crate) fn build<'a>(
        target: &str,
        pairs: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> HeaderList {
        let mut b = HeadBuilder::default();
        b.start(target);
        for (n, v) in pairs {
            b.push(n.as_bytes(), v.as_bytes());
        }
        b.finish()
    }

    /// The request target of the head being collected.
    pub(crate) fn target(&self) -> &str {
        &self.text[..self.target_len as usize]
    }

    /// Starts a new head with its request target.
    pub(crate) fn start(&mut self, target: &str) {
        self.text.clear();
        self.fields.clear();
        self.text.push_str(target);
        self.target_len = target.len() as u32;
    }

    fn append(&mut self, bytes: &[u8]) -> (u32, u32) {
        let start = self.text.len() as u32;
        // Bytes already checked to be ASCII by `framing::parse_header_line`; anything else would
        // be a bug, and is replaced rather than trusted.
        self.text.push_str(&String::from_utf8_lossy(bytes));
        (start, self.text.len() as u32)
    }

    /// Adds one header (its name and value already validated).
    pub(crate) fn push(&mut self, name: &[u8], value: &[u8]) {
        let name = self.append(name);
        let value = self.append(value);
        self.fields.push(Field { name, value });
    }

    /// The value of the first header named `name` collected so far.
    pub(crate) fn get(&self, name: &str) -> Option<&str> {
        self.fields
            .iter()
            .map(|f| (at(&self.text, f.name), at(&self.text, f.value)))
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    }

    /// Each header collected so far.
    pub(crate) fn pairs(&self) -> impl Iterator<Item = (&str, &str)> {
        self.fields
            .iter()
            .map(move |f| (at(&self.text, f.name), at(&self.text, f.value)))
    }

    /// The head as a request keeps it: one allocation (two beyond `INLINE_FIELDS` headers).
    pub(crate) fn finish(&self) -> HeaderList {
        let fields = if self.fields.len() <= INLINE_FIELDS {
            let mut inline = [Field::default(); INLINE_FIELDS];
            inline[..self.fields.len()].copy_from_slice(&self.fields);
            Fields::Inline(inline, self.fields.len() as u8)
        } else {
            Fields::Shared(Arc::from(self.fields.as_slice()))
        };
        HeaderList {
            text: Arc::from(self.text.as_str()),
            fields,
            target_len: self.target_len,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_in_order_inline_and_shared() {
        for count in [0, 3, INLINE_FIELDS, INLINE_FIELDS + 5] {
            let names: Vec<String> = (0..count).map(|i| format!("X-H{}", i)).collect();
            let values: Vec<String> = (0..count).map(|i| format!("v {}", i)).collect();
            let list = HeadBuilder::build(
                "/v1/x?y=1",
                names
                    .iter()
                    .map(String::as_str)
                    .zip(values.iter().map(String::as_str)),
            );
            assert_eq!(list.target(), "/v1/x?y=1");
            assert_eq!(list.len(), count);
            let got: Vec<(String, String)> = list
                .clone()
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect();
            let want: Vec<(String, String)> = names.into_iter().zip(values).collect();
            assert_eq!(got, want);
            if count > 2 {
                assert_eq!(list.get("x-h2"), Some("v 2"));
            }
            assert_eq!(list.get("x-none"), None);
            assert_eq!(list.to_headers().len(), count);
        }
        let dup = HeaderList::from_pairs([("A", "1"), ("a", "2")]);
        assert_eq!(dup.get("A"), Some("1"));
    }
}
