//! modelmux: strict reading of a request head (RFC 9112 sections 2-7, RFC 9110 section 5).
//!
//! A proxy must frame every message exactly once and the way every other hop reads it. Upstream
//! tiny_http trimmed lines, split the request line on any number of spaces, accepted obs-fold
//! continuation lines as headers of their own, let `Transfer-Encoding` of any value mean
//! chunked, took the first of several `Content-Length` headers and read a malformed one as "no
//! body". Each of those lets a request hidden in a body run on the same connection. Here any
//! head that two parsers could read differently is refused; the caller answers it and closes
//! the connection.

use crate::common::{HTTPVersion, Method};
use std::convert::TryFrom;
use std::io::{self, Read};

/// Why a request was refused before it reached the application (status, code and message).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// HTTP status to answer with (400, 408, 414, 417, 431 or 505).
    pub status: u16,
    /// A machine-readable code, e.g. `invalid_framing`.
    pub code: &'static str,
    /// A message for the client; never echoes raw client bytes.
    pub message: String,
}

impl Refusal {
    pub(crate) fn new(status: u16, code: &'static str, message: impl Into<String>) -> Refusal {
        Refusal {
            status,
            code,
            message: message.into(),
        }
    }

    fn framing(message: impl Into<String>) -> Refusal {
        Refusal::new(400, "invalid_framing", message)
    }

    fn header(message: impl Into<String>) -> Refusal {
        Refusal::new(400, "invalid_header", message)
    }
}

/// How the request body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BodyFraming {
    /// No body.
    None,
    /// Exactly this many bytes.
    Length(usize),
    /// `Transfer-Encoding: chunked`.
    Chunked,
}

/// RFC 9110 section 5.6.2 `tchar`.
pub(crate) fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Parses `method SP request-target SP HTTP-version` with exactly one space between parts.
///
/// `Err` carries the refusal; a version other than 1.0 or 1.1 is a 505.
pub(crate) fn parse_request_line(line: &[u8]) -> Result<(Method, &str, HTTPVersion), Refusal> {
    let bad = |what: &str| Refusal::new(400, "invalid_request_line", what.to_string());
    let mut parts = line.split(|b| *b == b' ');
    let (method, target, version) =
        match (parts.next(), parts.next(), parts.next(), parts.next()) {
            (Some(m), Some(t), Some(v), None) => (m, t, v),
            _ => return Err(bad(
                "The request line must be `METHOD target HTTP/1.1`, separated by single spaces.",
            )),
        };
    if method.is_empty() || !method.iter().all(|b| is_tchar(*b)) {
        return Err(bad("The request method is not a valid token."));
    }
    if target.is_empty() || !target.iter().all(|b| (0x21..=0x7e).contains(b)) {
        return Err(bad(
            "The request target holds bytes outside visible ASCII; percent-encode them.",
        ));
    }
    let version = match version {
        b"HTTP/1.1" => HTTPVersion(1, 1),
        b"HTTP/1.0" => HTTPVersion(1, 0),
        [b'H', b'T', b'T', b'P', b'/', major, b'.', minor]
            if major.is_ascii_digit() && minor.is_ascii_digit() =>
        {
            return Err(Refusal::new(
                505,
                "http_version_not_supported",
                "Only HTTP/1.0 and HTTP/1.1 are served here (no HTTP/2 over cleartext).",
            ));
        }
        _ => return Err(bad("The request line's HTTP version is malformed.")),
    };
    // Both are ASCII: checked above.
    let method = std::str::from_utf8(method)
        .ok()
        .and_then(|m| m.parse::<Method>().ok())
        .ok_or_else(|| bad("The request method is not a valid token."))?;
    // modelmux: borrowed from the line (the connection copies it into the request's one head
    // text, see `HeaderList`)
    let target = std::str::from_utf8(target).map_err(|_| bad("bad request target"))?;
    Ok((method, target, version))
}

/// Parses one `name: value` header line (without its CRLF).
pub(crate) fn parse_header_line(line: &[u8]) -> Result<(&[u8], &[u8]), Refusal> {
    if matches!(line.first(), Some(b' ' | b'\t')) {
        return Err(Refusal::framing(
            "A header line starts with whitespace (obs-fold line folding), which is not accepted.",
        ));
    }
    let colon = line
        .iter()
        .position(|b| *b == b':')
        .ok_or_else(|| Refusal::header("A header line has no `:`."))?;
    let (name, value) = (&line[..colon], &line[colon + 1..]);
    if name.is_empty() || !name.iter().all(|b| is_tchar(*b)) {
        return Err(Refusal::header(
            "A header name holds a byte that is not allowed in a field name (no spaces, no control bytes, no space before the colon).",
        ));
    }
    // modelmux: the name is copied into a `String` only for a refusal's message (it was copied
    // for every header); the name and value are returned as slices of the line, which the
    // connection appends to the request's one header text (see `HeaderList`).
    let name_str = || String::from_utf8_lossy(name).into_owned();
    let value = trim_ows(value);
    if value.iter().any(|b| *b >= 0x80) {
        return Err(Refusal::header(format!(
            "Header `{}` holds non-ASCII bytes; percent-encode its value.",
            clip(&name_str(), 64)
        )));
    }
    if value
        .iter()
        .any(|b| (*b < 0x20 && *b != b'\t') || *b == 0x7f)
    {
        return Err(Refusal::header(format!(
            "Header `{}` holds control characters.",
            clip(&name_str(), 64)
        )));
    }
    Ok((name, value))
}

/// Decides how the body is delimited, refusing every ambiguous combination (RFC 9112 6.1-6.3).
///
/// `raw_te` holds the raw bytes after the colon of each `Transfer-Encoding` line (before OWS
/// was trimmed), because whitespace games around the coding are a known smuggling vector.
pub(crate) fn body_framing<'a>(
    version: &HTTPVersion,
    headers: impl Iterator<Item = (&'a str, &'a str)>,
    raw_te: &[Vec<u8>],
) -> Result<BodyFraming, Refusal> {
    // modelmux: one pass and no list of the Content-Length headers (a `Vec` per request)
    let (mut lengths, mut length, mut has_te, mut hosts) = (0, None, false, 0);
    for (name, value) in headers {
        if name.eq_ignore_ascii_case("Content-Length") {
            lengths += 1;
            length.get_or_insert(value);
        } else if name.eq_ignore_ascii_case("Transfer-Encoding") {
            has_te = true;
        } else if name.eq_ignore_ascii_case("Host") {
            hosts += 1;
        }
    }
    if hosts > 1 {
        return Err(Refusal::framing(
            "The request has more than one Host header.",
        ));
    }
    if has_te {
        if *version == HTTPVersion(1, 0) {
            return Err(Refusal::framing(
                "Transfer-Encoding is not allowed on an HTTP/1.0 request.",
            ));
        }
        if lengths > 0 {
            return Err(Refusal::framing(
                "The request has both Transfer-Encoding and Content-Length.",
            ));
        }
        let exact = |raw: &Vec<u8>| {
            let raw = raw.strip_prefix(b" ").unwrap_or(raw);
            raw.eq_ignore_ascii_case(b"chunked")
        };
        if raw_te.len() != 1 || !exact(&raw_te[0]) {
            return Err(Refusal::framing(
                "Transfer-Encoding must be exactly `chunked` (one header, no other coding).",
            ));
        }
        return Ok(BodyFraming::Chunked);
    }
    match (lengths, length) {
        (0, _) | (_, None) => Ok(BodyFraming::None),
        (1, Some(one)) => {
            let v = one.as_bytes();
            if v.is_empty() || !v.iter().all(u8::is_ascii_digit) {
                return Err(Refusal::framing(
                    "Content-Length must be a plain decimal number.",
                ));
            }
            one.parse::<u64>()
                .ok()
                .and_then(|n| usize::try_from(n).ok())
                .map(|n| {
                    if n == 0 {
                        BodyFraming::None
                    } else {
                        BodyFraming::Length(n)
                    }
                })
                .ok_or_else(|| Refusal::framing("Content-Length is too large."))
        }
        _ => Err(Refusal::framing(
            "The request has more than one Content-Length header.",
        )),
    }
}

/// Whether the client waits for `100 Continue`; any other expectation is a 417 (RFC 9110 10.1.1).
pub(crate) fn expects_continue(expect: Option<&str>) -> Result<bool, Refusal> {
    match expect {
        None => Ok(false),
        Some(v) if v.eq_ignore_ascii_case("100-continue") => Ok(true),
        Some(_) => Err(Refusal::new(
            417,
            "expectation_failed",
            "Only `Expect: 100-continue` is supported.",
        )),
    }
}

/// A strict `Transfer-Encoding: chunked` body reader (RFC 9112 section 7.1).
///
/// The crate upstream used (`chunked_transfer`) trimmed whitespace around the chunk size and
/// accepted a `+` sign, both read differently by other parsers. Here the size is 1*HEXDIG,
/// every line ends in CRLF, extensions and trailers are bounded and discarded, and anything
/// else is an `InvalidData` error (the connection then closes: see `CloseUnlessEof`).
pub(crate) struct ChunkedDecoder<R> {
    source: R,
    /// Bytes left in the current chunk; `None` between chunks.
    remaining: Option<usize>,
    done: bool,
}

/// Longest chunk-size line (size and extensions) and trailer section accepted.
const MAX_CHUNK_LINE: usize = 4096;
const MAX_TRAILERS: usize = 16 * 1024;

impl<R: Read> ChunkedDecoder<R> {
    pub(crate) fn new(source: R) -> ChunkedDecoder<R> {
        ChunkedDecoder {
            source,
            remaining: None,
            done: false,
        }
    }

    fn byte(&mut self) -> io::Result<u8> {
        let mut b = [0u8; 1];
        loop {
            match self.source.read(&mut b) {
                Ok(0) => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "chunked body ended early",
                    ))
                }
                Ok(_) => return Ok(b[0]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// One line without its CRLF; a bare CR or LF is an error.
    fn line(&mut self, max: usize) -> io::Result<Vec<u8>> {
        let mut line = Vec::new();
        loop {
            match self.byte()? {
                b'\r' => {
                    return if self.byte()? == b'\n' {
                        Ok(line)
                    } else {
                        Err(malformed("a CR not followed by LF"))
                    }
                }
                b'\n' => return Err(malformed("a bare LF")),
                b => line.push(b),
            }
            if line.len() > max {
                return Err(malformed("a chunk line or trailer section too long"));
            }
        }
    }

    fn chunk_size(&mut self) -> io::Result<usize> {
        let line = self.line(MAX_CHUNK_LINE)?;
        let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
        if digits == 0 || digits > 15 {
            return Err(malformed("a chunk size that is not 1 to 15 hex digits"));
        }
        let ext = &line[digits..];
        if !ext.is_empty() {
            let rest = trim_ows(ext);
            if rest.first() != Some(&b';')
                || rest
                    .iter()
                    .any(|b| (*b < 0x20 && *b != b'\t') || *b >= 0x7f)
            {
                return Err(malformed(
                    "bytes after the chunk size that are not an extension",
                ));
            }
        }
        let text = std::str::from_utf8(&line[..digits]).map_err(|_| malformed("chunk size"))?;
        usize::from_str_radix(text, 16).map_err(|_| malformed("chunk size"))
    }
}

fn malformed(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("malformed chunked body: {}", what),
    )
}

impl<R: Read> Read for ChunkedDecoder<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.done || buf.is_empty() {
            return Ok(0);
        }
        let remaining = match self.remaining {
            Some(n) => n,
            None => {
                let size = self.chunk_size()?;
                if size == 0 {
                    // Trailer fields are read and dropped, bounded in size.
                    let mut budget = MAX_TRAILERS;
                    loop {
                        let line = self.line(budget)?;
                        if line.is_empty() {
                            break;
                        }
                        budget = budget.saturating_sub(line.len() + 2);
                    }
                    self.done = true;
                    return Ok(0);
                }
                size
            }
        };
        let want = buf.len().min(remaining);
        let n = self.source.read(&mut buf[..want])?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "chunked body ended early",
            ));
        }
        if remaining - n == 0 {
            if self.line(0)?.is_empty() {
                self.remaining = None;
            } else {
                return Err(malformed("chunk data longer than its size"));
            }
        } else {
            self.remaining = Some(remaining - n);
        }
        Ok(n)
    }
}

fn trim_ows(mut v: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = v {
        v = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = v {
        v = rest;
    }
    v
}

fn clip(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(line: &str) -> (&str, &str) {
        let (n, v) = parse_header_line(line.as_bytes()).unwrap();
        (
            std::str::from_utf8(n).unwrap(),
            std::str::from_utf8(v).unwrap(),
        )
    }

    fn framing(version: HTTPVersion, lines: &[&str]) -> Result<BodyFraming, Refusal> {
        let headers: Vec<(&str, &str)> = lines.iter().map(|l| h(l)).collect();
        let raw_te: Vec<Vec<u8>> = lines
            .iter()
            .filter(|l| l.to_ascii_lowercase().starts_with("transfer-encoding:"))
            .map(|l| l.as_bytes()["transfer-encoding:".len()..].to_vec())
            .collect();
        body_framing(&version, headers.iter().copied(), &raw_te)
    }

    #[test]
    fn request_lines() {
        let (m, t, v) = parse_request_line(b"GET /hello HTTP/1.1").unwrap();
        assert_eq!((m, t, v), (Method::Get, "/hello", HTTPVersion(1, 1)));
        for bad in [
            &b"GET /hello"[..],
            b"GET  /hello HTTP/1.1",
            b"GET /hello HTTP/1.1 x",
            b" GET /hello HTTP/1.1",
            b"GET /h\xc3\xa9 HTTP/1.1",
            b"GET /h\x01 HTTP/1.1",
            b"G@T / HTTP/1.1",
            b"GET / HTTP/1.x",
            b"GET / http/1.1",
        ] {
            assert_eq!(
                parse_request_line(bad).unwrap_err().status,
                400,
                "{:?}",
                bad
            );
        }
        for v2 in [&b"GET / HTTP/2.0"[..], b"PRI * HTTP/2.0", b"GET / HTTP/0.9"] {
            assert_eq!(parse_request_line(v2).unwrap_err().status, 505);
        }
    }

    #[test]
    fn header_lines() {
        let x = h("X-A:  v  w \t");
        assert_eq!(x.1, "v  w");
        for bad in [
            &b" Transfer-Encoding: chunked"[..],
            b"\tX: y",
            b"X-Bad\x01Name: 1",
            b"X-A : 1",
            b": 1",
            b"NoColon",
            b"X-Name: Jos\xc3\xa9",
            b"X-A: a\x00b",
        ] {
            assert_eq!(parse_header_line(bad).unwrap_err().status, 400, "{:?}", bad);
        }
        let e = parse_header_line(b"X-OpenWebUI-User-Name: Jos\xc3\xa9").unwrap_err();
        assert!(e.message.contains("X-OpenWebUI-User-Name"));
    }

    #[test]
    fn framing_table() {
        let v11 = HTTPVersion(1, 1);
        let ok = [
            (vec![], BodyFraming::None),
            (vec!["Content-Length: 31"], BodyFraming::Length(31)),
            (vec!["Content-Length: 0"], BodyFraming::None),
            (vec!["Transfer-Encoding: chunked"], BodyFraming::Chunked),
            (vec!["Transfer-Encoding:chunked"], BodyFraming::Chunked),
            (vec!["transfer-encoding: Chunked"], BodyFraming::Chunked),
        ];
        for (lines, want) in ok {
            assert_eq!(framing(v11.clone(), &lines), Ok(want), "{:?}", lines);
        }
        let refused: [&[&str]; 15] = [
            &["Content-Length: 31", "Transfer-Encoding: chunked"],
            &["Transfer-Encoding: xchunked"],
            &["Transfer-Encoding: chunked, identity"],
            &["Transfer-Encoding: gzip, chunked"],
            &["Transfer-Encoding:  chunked"],
            &["Transfer-Encoding:\tchunked"],
            &["Transfer-Encoding: chunked", "Transfer-Encoding: chunked"],
            &["Content-Length: 31", "Content-Length: 31"],
            &["Content-Length: 31", "Content-Length: 5"],
            &["Content-Length: 31, 31"],
            &["Content-Length: -1"],
            &["Content-Length: +31"],
            &["Content-Length: 0x1f"],
            &["Content-Length: 99999999999999999999"],
            &["Host: a", "Host: b"],
        ];
        for lines in refused {
            let e = framing(v11.clone(), lines).unwrap_err();
            assert_eq!((e.status, e.code), (400, "invalid_framing"), "{:?}", lines);
        }
        assert!(framing(HTTPVersion(1, 0), &["Transfer-Encoding: chunked"]).is_err());
    }

    fn dechunk(raw: &[u8]) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        ChunkedDecoder::new(raw).read_to_end(&mut out)?;
        Ok(out)
    }

    #[test]
    fn chunked_bodies() {
        let ok: [(&[u8], &[u8]); 4] = [
            (
                b"3\r\nhel\r\nb\r\nlo world!!!\r\n0\r\n\r\n",
                b"hello world!!!",
            ),
            (b"3;x=1\r\nhel\r\n0\r\n\r\n", b"hel"),
            (b"A\r\n0123456789\r\n0\r\nX-T: 1\r\n\r\n", b"0123456789"),
            (b"0\r\n\r\nGET / HTTP/1.1\r\n", b""),
        ];
        for (raw, want) in ok {
            assert_eq!(dechunk(raw).unwrap(), want, "{:?}", raw);
        }
        for bad in [
            &b"+3\r\nhel\r\n0\r\n\r\n"[..],
            b" 3\r\nhel\r\n0\r\n\r\n",
            b"3 \r\nhel\r\n0\r\n\r\n",
            b"0x3\r\nhel\r\n0\r\n\r\n",
            b"3\nhel\r\n0\r\n\r\n",
            b"3\r\nhello\r\n0\r\n\r\n",
            b"ffffffffffffffffff\r\n",
            b"3\r\nhe",
        ] {
            assert!(dechunk(bad).is_err(), "{:?}", bad);
        }
    }
}
