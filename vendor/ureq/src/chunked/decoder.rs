// Copyright 2015 The tiny-http Contributors
// Copyright 2015 The rust-chunked-transfer Contributors
// Forked into ureq, 2024, from https://github.com/frewsxcv/rust-chunked-transfer
// Forked under dual MIT and Apache 2.0 license (see adjacent LICENSE-MIT and LICENSE-APACHE file)

use std::error::Error;
use std::fmt;
use std::io::Error as IoError;
use std::io::ErrorKind;
use std::io::Read;
use std::io::Result as IoResult;

/// Reads HTTP chunks and sends back real data.
///
/// # Example
///
/// ```no_compile
/// use chunked_transfer::Decoder;
/// use std::io::Read;
///
/// let encoded = b"3\r\nhel\r\nb\r\nlo world!!!\r\n0\r\n\r\n";
/// let mut decoded = String::new();
///
/// let mut decoder = Decoder::new(encoded as &[u8]);
/// decoder.read_to_string(&mut decoded);
///
/// assert_eq!(decoded, "hello world!!!");
/// ```
pub struct Decoder<R> {
    // where the chunks come from
    source: R,

    // remaining size of the chunk being read
    // none if we are not in a chunk
    remaining_chunks_size: Option<usize>,

    // modelmux: the last chunk was consumed while coalescing (see `Read for Decoder`)
    finished: bool,
}

/// modelmux: bytes already received from the connection and buffered, readable without a
/// system call. The decoder goes on with the next chunks only while they are wholly in here,
/// so that coalescing never waits for the network.
pub(crate) trait Buffered {
    fn buffered(&self) -> &[u8];

    /// modelmux: drops the first `n` bytes of `buffered()` (`n` at most its length), as read.
    fn consume_buffered(&mut self, n: usize);

    /// modelmux: when nothing is buffered, receives what there is (the one read the first byte
    /// read would do); false at the end of the input.
    fn fill_buffered(&mut self) -> IoResult<bool>;
}

impl Buffered for &[u8] {
    fn buffered(&self) -> &[u8] {
        self
    }

    fn consume_buffered(&mut self, n: usize) {
        *self = &self[n..];
    }

    fn fill_buffered(&mut self) -> IoResult<bool> {
        Ok(!self.is_empty())
    }
}

impl Buffered for std::io::Cursor<Vec<u8>> {
    fn buffered(&self) -> &[u8] {
        let pos = (self.position() as usize).min(self.get_ref().len());
        &self.get_ref()[pos..]
    }

    fn consume_buffered(&mut self, n: usize) {
        self.set_position(self.position() + n as u64);
    }

    fn fill_buffered(&mut self) -> IoResult<bool> {
        Ok(!self.buffered().is_empty())
    }
}

/// modelmux: the length of the next chunk (size line, data and CRLF, or the last chunk with the
/// CRLF that ends the body) if all of it is in `buffered`.
fn whole_chunk_len(buffered: &[u8]) -> Option<(usize, usize)> {
    let line_end = buffered.iter().position(|b| *b == b'\n')?;
    let line = &buffered[..line_end];
    let line = line.strip_suffix(b"\r")?;
    let digits = line.split(|b| *b == b';').next()?;
    let size = match hex_digits(digits) {
        Some(size) => size,
        None => usize::from_str_radix(std::str::from_utf8(digits).ok()?.trim(), 16).ok()?,
    };
    // a chunk's data and CRLF; after the last chunk, the CRLF that ends the (trailer-less) body
    let total = (line_end + 1).checked_add(size)?.checked_add(2)?;
    (buffered.len() >= total).then_some((size, total))
}

/// modelmux: the value of 1 to 15 hex digits and nothing else (what a size line nearly always
/// is), without the `str` checks, trimming and radix parsing `whole_chunk_len` does for any other
/// line (which give the same value for these).
fn hex_digits(digits: &[u8]) -> Option<usize> {
    // At most 15 digits on a 64-bit target: the value cannot overflow.
    if digits.is_empty() || digits.len() >= (usize::BITS / 4) as usize {
        return None;
    }
    digits.iter().try_fold(0usize, |n, b| {
        let d = (*b as char).to_digit(16)?;
        Some(n << 4 | d as usize)
    })
}

/// modelmux: the bytes of a chunk's size line up to `\r` or `;`: in an array, and only past
/// its length (padding) in a Vec.
#[derive(Default)]
struct SizeLine {
    short: [u8; 24],
    len: usize,
    long: Vec<u8>,
}

impl SizeLine {
    fn push(&mut self, byte: u8) {
        if self.long.is_empty() && self.len < self.short.len() {
            self.short[self.len] = byte;
            self.len += 1;
            return;
        }
        if self.long.is_empty() {
            self.long.extend_from_slice(&self.short);
        }
        self.long.push(byte);
    }

    fn bytes(&self) -> &[u8] {
        if self.long.is_empty() {
            &self.short[..self.len]
        } else {
            &self.long
        }
    }
}

impl<R> Decoder<R>
where
    R: Read,
{
    pub fn new(source: R) -> Decoder<R> {
        Decoder {
            source,
            remaining_chunks_size: None,
            finished: false,
        }
    }

    /// Unwraps the Decoder into its inner `Read` source.
    pub fn into_inner(self) -> R {
        self.source
    }

    fn read_chunk_size(&mut self) -> IoResult<usize> {
        // modelmux: the size line in an array on the stack, not a new Vec per chunk
        let mut chunk_size_bytes = SizeLine::default();
        let mut has_ext = false;

        loop {
            let byte = match self.source.by_ref().bytes().next() {
                Some(b) => b?,
                None => return Err(IoError::new(ErrorKind::InvalidInput, DecoderError)),
            };

            if byte == b'\r' {
                break;
            }

            if byte == b';' {
                has_ext = true;
                break;
            }

            chunk_size_bytes.push(byte);
        }

        // Ignore extensions for now
        if has_ext {
            loop {
                let byte = match self.source.by_ref().bytes().next() {
                    Some(b) => b?,
                    None => return Err(IoError::new(ErrorKind::InvalidInput, DecoderError)),
                };
                if byte == b'\r' {
                    break;
                }
            }
        }

        self.read_line_feed()?;

        // modelmux: `str::from_utf8` of the array, where upstream had `String::from_utf8`
        let chunk_size = std::str::from_utf8(chunk_size_bytes.bytes())
            .ok()
            .and_then(|c| usize::from_str_radix(c.trim(), 16).ok())
            .ok_or_else(|| IoError::new(ErrorKind::InvalidInput, DecoderError))?;

        Ok(chunk_size)
    }

    fn read_carriage_return(&mut self) -> IoResult<()> {
        match self.source.by_ref().bytes().next() {
            Some(Ok(b'\r')) => Ok(()),
            _ => Err(IoError::new(ErrorKind::InvalidInput, DecoderError)),
        }
    }

    fn read_line_feed(&mut self) -> IoResult<()> {
        match self.source.by_ref().bytes().next() {
            Some(Ok(b'\n')) => Ok(()),
            _ => Err(IoError::new(ErrorKind::InvalidInput, DecoderError)),
        }
    }

    // Sometimes the last \r\n is missing.
    fn read_end(&mut self) -> IoResult<()> {
        fn expect_or_end(
            bytes: &mut impl Iterator<Item = IoResult<u8>>,
            expected: u8,
        ) -> IoResult<()> {
            match bytes.next() {
                Some(Ok(c)) => {
                    if c == expected {
                        Ok(())
                    } else {
                        Err(IoError::new(ErrorKind::InvalidInput, DecoderError))
                    }
                }
                Some(Err(e)) => {
                    match e.kind() {
                        // Closed connections are ok.
                        ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted => Ok(()),
                        _ => Err(IoError::new(ErrorKind::InvalidInput, DecoderError)),
                    }
                }
                None => Ok(()), // End of iterator is ok
            }
        }

        let mut bytes = self.source.by_ref().bytes();

        expect_or_end(&mut bytes, b'\r')?;
        expect_or_end(&mut bytes, b'\n')?;

        Ok(())
    }
}

impl<R> Read for Decoder<R>
where
    R: Read + Buffered,
{
    /// modelmux: after the chunk (or part of a chunk) upstream's decoder returned, the chunks
    /// that are already wholly buffered are decoded into the rest of `buf` too, so a relay
    /// copies many small chunks (SSE events sent back to back) with one read and one write
    /// instead of one of each per chunk. Nothing more is read from the network for them.
    fn read(&mut self, buf: &mut [u8]) -> IoResult<usize> {
        if self.finished {
            return Ok(0);
        }
        // The next chunk's size line is read first: receive now what reading its first byte
        // would, so that a chunk that comes whole is copied out of the buffer too. The same
        // receive, and the same error, as that first byte's read.
        if self.remaining_chunks_size.is_none() && self.source.buffered().is_empty() {
            match self.source.fill_buffered() {
                Ok(true) => {}
                // What `read_chunk_size` answers when the input ends before a size line.
                Ok(false) => return Err(IoError::new(ErrorKind::InvalidInput, DecoderError)),
                // Retried by the byte read, as `Bytes` does.
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        let mut total = match self.read_buffered(buf) {
            Some(n) => n,
            None => self.read_one(buf)?,
        };
        if total == 0 {
            return Ok(0);
        }
        while total < buf.len() && self.remaining_chunks_size.is_none() {
            if let Some(n) = self.read_buffered(&mut buf[total..]) {
                total += n;
                continue;
            }
            let Some((size, _)) = whole_chunk_len(self.source.buffered()) else {
                break;
            };
            if size == 0 {
                // The last chunk: consumed now, EOF at the next read.
                self.read_chunk_size()?;
                self.read_end()?;
                self.finished = true;
                break;
            }
            if size > buf.len() - total {
                break;
            }
            total += self.read_one(&mut buf[total..])?;
        }
        Ok(total)
    }
}

impl<R> Decoder<R>
where
    R: Read + Buffered,
{
    /// modelmux: the next chunk's data copied straight out of the connection's buffer when all
    /// of it is there, it fits in `buf` and it is framed just as `read_one` expects (one `\r`,
    /// ending the size line; CRLF after the data); else `None`, and `read_one` reads (or
    /// rejects) it as before. `read_one` reads a size line a byte at a time through three
    /// layers of `Read`: a quarter of a relayed SSE event's instructions.
    fn read_buffered(&mut self, buf: &mut [u8]) -> Option<usize> {
        if self.remaining_chunks_size.is_some() {
            return None;
        }
        let buffered = self.source.buffered();
        let (size, total) = whole_chunk_len(buffered)?;
        let data = total - size - 2;
        if size == 0
            || size > buf.len()
            || buffered[..data - 2].contains(&b'\r')
            || &buffered[total - 2..total] != b"\r\n"
        {
            return None;
        }
        buf[..size].copy_from_slice(&buffered[data..data + size]);
        self.source.consume_buffered(total);
        Some(size)
    }
}

impl<R> Decoder<R>
where
    R: Read,
{
    // modelmux: upstream's `read`, one chunk (or part of one) at a time
    fn read_one(&mut self, buf: &mut [u8]) -> IoResult<usize> {
        let remaining_chunks_size = match self.remaining_chunks_size {
            Some(c) => c,
            None => {
                // first possibility: we are not in a chunk, so we'll attempt to determine
                // the chunks size
                let chunk_size = self.read_chunk_size()?;

                // if the chunk size is 0, we are at EOF
                if chunk_size == 0 {
                    self.read_end()?;
                    return Ok(0);
                }

                chunk_size
            }
        };

        // second possibility: we continue reading from a chunk
        if buf.len() < remaining_chunks_size {
            let read = self.source.read(buf)?;
            self.remaining_chunks_size = Some(remaining_chunks_size - read);
            return Ok(read);
        }

        // third possibility: the read request goes further than the current chunk
        // we simply read until the end of the chunk and return
        assert!(buf.len() >= remaining_chunks_size);

        let buf = &mut buf[..remaining_chunks_size];
        let read = self.source.read(buf)?;

        self.remaining_chunks_size = if read == remaining_chunks_size {
            self.read_carriage_return()?;
            self.read_line_feed()?;
            None
        } else {
            Some(remaining_chunks_size - read)
        };

        Ok(read)
    }
}

#[derive(Debug, Copy, Clone)]
struct DecoderError;

impl fmt::Display for DecoderError {
    fn fmt(&self, fmt: &mut fmt::Formatter<'_>) -> Result<(), fmt::Error> {
        write!(fmt, "Error while decoding chunks")
    }
}

impl Error for DecoderError {
    fn description(&self) -> &str {
        "Error while decoding chunks"
    }
}

#[cfg(test)]
mod test {
    use super::Decoder;
    use std::io;
    use std::io::Read;

    /// This unit test is taken from from Hyper
    /// https://github.com/hyperium/hyper
    /// Copyright (c) 2014 Sean McArthur
    #[test]
    fn test_read_chunk_size() {
        fn read(s: &str, expected: usize) {
            let mut decoded = Decoder::new(s.as_bytes());
            let actual = decoded.read_chunk_size().unwrap();
            assert_eq!(expected, actual);
        }

        fn read_err(s: &str) {
            let mut decoded = Decoder::new(s.as_bytes());
            let err_kind = decoded.read_chunk_size().unwrap_err().kind();
            assert_eq!(err_kind, io::ErrorKind::InvalidInput);
        }

        read("1\r\n", 1);
        read("01\r\n", 1);
        read("0\r\n", 0);
        read("00\r\n", 0);
        read("A\r\n", 10);
        read("a\r\n", 10);
        read("Ff\r\n", 255);
        read("Ff   \r\n", 255);
        // Missing LF or CRLF
        read_err("F\rF");
        read_err("F");
        // Invalid hex digit
        read_err("X\r\n");
        read_err("1X\r\n");
        read_err("-\r\n");
        read_err("-1\r\n");
        // Acceptable (if not fully valid) extensions do not influence the size
        read("1;extension\r\n", 1);
        read("a;ext name=value\r\n", 10);
        read("1;extension;extension2\r\n", 1);
        read("1;;;  ;\r\n", 1);
        read("2; extension...\r\n", 2);
        read("3   ; extension=123\r\n", 3);
        read("3   ;\r\n", 3);
        read("3   ;   \r\n", 3);
        // modelmux: a size line longer than `SizeLine`'s array
        read("00000000000000000000000000000000000003   \r\n", 3);
        read("1                                   \r\n", 1);
        read_err("1                                   x\r\n");
        // Invalid extensions cause an error
        read_err("1 invalid extension\r\n");
        read_err("1 A\r\n");
        read_err("1;no CRLF");
    }

    #[test]
    fn test_valid_chunk_decode() {
        let source = io::Cursor::new(
            "3\r\nhel\r\nb\r\nlo world!!!\r\n0\r\n\r\n"
                .to_string()
                .into_bytes(),
        );
        let mut decoded = Decoder::new(source);

        let mut string = String::new();
        decoded.read_to_string(&mut string).unwrap();

        assert_eq!(string, "hello world!!!");
    }

    // modelmux: chunks wholly buffered are decoded in one read
    #[test]
    fn buffered_chunks_are_coalesced_up_to_the_end() {
        let mut d = Decoder::new(b"3\r\nhel\r\n2\r\nlo\r\n0\r\n\r\n" as &[u8]);
        let mut buf = [0u8; 64];
        assert_eq!(d.read(&mut buf).unwrap(), 5);
        assert_eq!(&buf[..5], b"hello");
        assert_eq!(d.read(&mut buf).unwrap(), 0);
        assert_eq!(d.read(&mut buf).unwrap(), 0);
    }

    // modelmux: a chunk not wholly buffered, or bigger than the room left, waits for the next read
    #[test]
    fn coalescing_stops_at_a_partial_chunk_or_a_full_buffer() {
        let mut d = Decoder::new(b"3\r\nhel\r\n5\r\nwo" as &[u8]);
        let mut buf = [0u8; 64];
        assert_eq!(d.read(&mut buf).unwrap(), 3);
        assert_eq!(d.read(&mut buf).unwrap(), 2);
        assert_eq!(&buf[..2], b"wo");

        let mut d = Decoder::new(b"3\r\nhel\r\n2\r\nlo\r\n0\r\n\r\n" as &[u8]);
        let mut small = [0u8; 4];
        assert_eq!(d.read(&mut small).unwrap(), 3);
        assert_eq!(d.read(&mut small).unwrap(), 2);
        assert_eq!(d.read(&mut small).unwrap(), 0);

        // a chunk extension and the last chunk in a later read
        let mut d = Decoder::new(b"3;x=1\r\nhel\r\n0\r\n" as &[u8]);
        assert_eq!(d.read(&mut buf).unwrap(), 3);
        assert_eq!(d.read(&mut buf).unwrap(), 0);
    }

    #[test]
    fn test_decode_zero_length() {
        let mut decoder = Decoder::new(b"0\r\n\r\n" as &[u8]);

        let mut decoded = String::new();
        decoder.read_to_string(&mut decoded).unwrap();

        assert_eq!(decoded, "");
    }

    #[test]
    fn test_decode_invalid_chunk_length() {
        let mut decoder = Decoder::new(b"m\r\n\r\n" as &[u8]);

        let mut decoded = String::new();
        assert!(decoder.read_to_string(&mut decoded).is_err());
    }

    #[test]
    fn invalid_input1() {
        let source = io::Cursor::new(
            "2\r\nhel\r\nb\r\nlo world!!!\r\n0\r\n"
                .to_string()
                .into_bytes(),
        );
        let mut decoded = Decoder::new(source);

        let mut string = String::new();
        assert!(decoded.read_to_string(&mut string).is_err());
    }

    #[test]
    fn invalid_input2() {
        let source = io::Cursor::new(
            "3\rhel\r\nb\r\nlo world!!!\r\n0\r\n"
                .to_string()
                .into_bytes(),
        );
        let mut decoded = Decoder::new(source);

        let mut string = String::new();
        assert!(decoded.read_to_string(&mut string).is_err());
    }

    #[test]
    fn test_decode_end_missing_last_crlf() {
        // This has been observed in the wild.
        // See https://github.com/algesten/ureq/issues/325

        // Missing last \r\n
        let source = io::Cursor::new(
            "3\r\nhel\r\nb\r\nlo world!!!\r\n0\r\n"
                .to_string()
                .into_bytes(),
        );
        let mut decoded = Decoder::new(source);

        let mut string = String::new();
        decoded.read_to_string(&mut string).unwrap();

        assert_eq!(string, "hello world!!!");
    }

    // modelmux: a source that never shows its buffer, so the decoder reads every chunk the
    // byte-at-a-time way (no coalescing, no copy out of the buffer)
    struct Unbuffered<'a>(&'a [u8]);

    impl Read for Unbuffered<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            self.0.read(buf)
        }
    }

    impl super::Buffered for Unbuffered<'_> {
        fn buffered(&self) -> &[u8] {
            &[]
        }

        fn consume_buffered(&mut self, _: usize) {
            unreachable!("nothing is shown as buffered")
        }

        fn fill_buffered(&mut self) -> io::Result<bool> {
            Ok(!self.0.is_empty())
        }
    }

    fn decode_all<R: Read + super::Buffered>(d: &mut Decoder<R>, room: usize) -> (Vec<u8>, bool) {
        let mut out = Vec::new();
        let mut buf = vec![0u8; room];
        loop {
            match d.read(&mut buf) {
                Ok(0) => return (out, true),
                Ok(n) => out.extend_from_slice(&buf[..n]),
                Err(_) => return (out, false),
            }
        }
    }

    // modelmux: chunks copied straight out of the buffer give the same bytes and the same
    // errors as chunks read a byte at a time, framing faults included
    #[test]
    fn buffered_chunks_decode_like_unbuffered_ones() {
        let bodies: [&[u8]; 15] = [
            b"A\r\n0123456789\r\nfF\r\n0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcde\r\n0\r\n\r\n",
            b"+3\r\nabc\r\n0\r\n\r\n",
            b"ffffffffffffffffff\r\nabc\r\n0\r\n\r\n",
            b"3\r\nhel\r\nb\r\nlo world!!!\r\n0\r\n\r\n",
            b"3;x=1\r\nhel\r\n2 \r\nlo\r\n0\r\n\r\n",
            b"3\r\nhelXY2\r\nlo\r\n0\r\n\r\n",
            b"3\r\nhel\n2\r\nlo\r\n0\r\n\r\n",
            b"3;a\rb\r\nhel\r\n0\r\n\r\n",
            b"3\rx\r\nhel\r\n0\r\n\r\n",
            b"3\n\r\nhel\r\n0\r\n\r\n",
            b"zz\r\nhel\r\n0\r\n\r\n",
            b"3\r\nhel\r\n5\r\nwor",
            b"10\r\n0123456789abcdef\r\n1\r\n!\r\n0\r\n",
            b"00000000000000000000000000000000000003   \r\nabc\r\n0\r\n\r\n",
            b"1\r\na\r\n1\r\nb\r\n1\r\nc\r\n0\r\n\r\n",
        ];
        for body in bodies {
            for room in [1, 2, 3, 5, 16, 64] {
                let want = decode_all(&mut Decoder::new(Unbuffered(body)), room);
                let got = decode_all(&mut Decoder::new(body), room);
                assert_eq!(got, want, "{:?} room {}", String::from_utf8_lossy(body), room);
                let cursor = io::Cursor::new(body.to_vec());
                assert_eq!(decode_all(&mut Decoder::new(cursor), room), want);
            }
        }
    }
}
