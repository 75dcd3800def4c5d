use ascii::AsciiString;

use std::io::Error as IoError;
use std::io::Result as IoResult;
use std::io::{BufRead, BufReader, BufWriter, ErrorKind, Read, Write};

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::common::{HTTPVersion, Method};
use crate::framing::Refusal;
use crate::util::RefinedTcpStream;
use crate::util::{ClosableReader, CloseSignal};
use crate::util::{SequentialReader, SequentialReaderBuilder, SequentialWriterBuilder};
use crate::Request;

// modelmux: the connection's read side goes through a `ClosableReader`, so that an abandoned
// request body (see `CloseSignal`) makes all later reads fail instead of being parsed as the
// next request.
type SourceReader = ClosableReader<BufReader<RefinedTcpStream>>;

/// A ClientConnection is an object that will store a socket to a client
/// and return Request objects.
pub struct ClientConnection {
    // address of the client
    remote_addr: IoResult<Option<SocketAddr>>,

    // sequence of Readers to the stream, so that the data is not read in
    //  the wrong order
    source: SequentialReaderBuilder<SourceReader>,

    // sequence of Writers to the stream, to avoid writing response #2 before
    //  response #1
    sink: SequentialWriterBuilder<BufWriter<RefinedTcpStream>>,

    // Reader to read the next header from
    next_header_source: SequentialReader<SourceReader>,

    // set to true if we know that the previous request is the last one
    no_more_requests: bool,

    // true if the connection goes through SSL
    secure: bool,

    // modelmux: triggered by a request body abandoned before its end; closes the connection
    close_signal: CloseSignal,

    // modelmux: the last request was refused; close once its answer is written
    linger: bool,

    // modelmux: a duplicate of the socket, handed to each request (see `ConnectionHandle`)
    handle: Option<std::sync::Arc<crate::ConnectionHandle>>,

    // modelmux: the buffer each line of a request head is read into, and the head collected
    // from those lines; both reused for every request of the connection (see `HeaderList`)
    line: Vec<u8>,
    head: crate::header_list::HeadBuilder,

    // modelmux: when the first byte of the request head being read arrived (`None` while
    // waiting for a request), for the total header-read timeout and to tell a timed-out
    // partial request (408) from an idle keep-alive connection (closed silently)
    head_started: Option<Instant>,

    // modelmux: the last line of the head read so far used up the buffered bytes, so the
    // next ones come from the socket, perhaps after a wait: only then is the clock read for
    // the header-read timeout (bytes already buffered took no time to arrive; a clock read
    // per header line was about 1% of a request's CPU)
    head_drained: bool,
}

/// modelmux: bounds of the request head being read, taken from `crate::limits`.
struct HeadLimits {
    max_line: usize,
    remaining_bytes: usize,
    timeout: Option<Duration>,
}

/// modelmux: why reading one line of the request head failed.
enum LineError {
    Io(IoError),
    /// the line is longer than `max_line`
    LineTooLong,
    /// the head is bigger than `max_header_bytes`
    HeadTooLarge,
}

/// Error that can happen when reading a request.
#[derive(Debug)]
enum ReadError {
    /// modelmux: the head was read but is refused (malformed, ambiguous framing, unknown
    /// `Expect`, HTTP/2), with its request line when that much was understood
    Refused(Refusal, Option<(Method, String, HTTPVersion)>),
    ReadIoError(IoError),
    /// modelmux: request line longer than the line limit (414)
    RequestLineTooLong,
    /// modelmux: header line or whole head bigger than the limits (431)
    HeadersTooLarge(HTTPVersion),
}

impl ClientConnection {
    /// Creates a new `ClientConnection` that takes ownership of the `TcpStream`.
    pub fn new(
        write_socket: RefinedTcpStream,
        mut read_socket: RefinedTcpStream,
        handle: Option<std::sync::Arc<crate::ConnectionHandle>>,
    ) -> ClientConnection {
        let remote_addr = read_socket.peer_addr();
        let secure = read_socket.secure();

        let close_signal = CloseSignal::new();
        let mut source = SequentialReaderBuilder::new(ClosableReader::new(
            BufReader::with_capacity(1024, read_socket),
            close_signal.clone(),
        ));
        let first_header = source.next().unwrap();

        ClientConnection {
            source,
            sink: SequentialWriterBuilder::new(BufWriter::with_capacity(1024, write_socket)),
            remote_addr,
            next_header_source: first_header,
            no_more_requests: false,
            secure,
            close_signal,
            linger: false,
            head_started: None,
            head_drained: true,
            handle,
            line: Vec::with_capacity(256),
            head: Default::default(),
        }
    }

    /// true if the connection is HTTPS
    pub fn secure(&self) -> bool {
        self.secure
    }

    /// Reads the next line from self.next_header_source.
    ///
    /// Reads until `CRLF` is reached. The next read will start
    ///  at the first byte of the new line.
    ///
    /// modelmux: bounded by `limits` (line length, total head size, total time since the
    /// first byte of the request head); upstream read lines of any length for any time.
    /// The bytes are scanned in the connection's read buffer (upstream read them one by one
    /// through four layers of `Read`), and the clock is read only when the bytes may have
    /// come from a wait on the socket (patch 21), instead of once per byte.
    /// modelmux: the line goes into `buf` (cleared first), one buffer for every line of a
    /// head: upstream grew a new `Vec` byte by byte for each line (several allocations a line).
    fn read_next_line(
        &mut self,
        limits: &mut HeadLimits,
        buf: &mut Vec<u8>,
    ) -> Result<(), LineError> {
        buf.clear();
        let mut prev_byte_was_cr = false;

        loop {
            let available = self.next_header_source.fill_buf().map_err(LineError::Io)?;
            if available.is_empty() {
                return Err(LineError::Io(IoError::new(
                    ErrorKind::ConnectionAborted,
                    "Unexpected EOF",
                )));
            }

            // modelmux: the whole head must arrive within the header-read timeout
            if self.head_drained {
                match self.head_started {
                    None => self.head_started = Some(Instant::now()),
                    Some(started) => {
                        if limits.timeout.is_some_and(|t| started.elapsed() > t) {
                            return Err(LineError::Io(IoError::new(
                                ErrorKind::TimedOut,
                                "request head not received within the header-read timeout",
                            )));
                        }
                    }
                }
            }

            // modelmux: the line's end is searched with `memchr` and its bytes copied whole
            // (a byte-by-byte loop with three checks per byte was ~4% of a proxied request's
            // instructions). The same outcomes as checking each byte: only CRLF ends a line
            // (a bare LF is a byte of the line: `framing` decides), at most
            // `remaining_bytes` are taken for the head (CRLFs included), and a line longer than
            // `max_line` (its CR not counted) is refused.
            let room = limits.remaining_bytes.min(available.len());
            let scan = &available[..room];
            let mut from = 0;
            let line_end = loop {
                match memchr::memchr(b'\n', &scan[from..]) {
                    None => break None,
                    Some(i) => {
                        let at = from + i;
                        let cr_before = match at {
                            0 => prev_byte_was_cr,
                            _ => scan[at - 1] == b'\r',
                        };
                        if cr_before {
                            break Some(at);
                        }
                        from = at + 1;
                    }
                }
            };
            let (used, outcome) = match line_end {
                Some(at) => {
                    buf.extend_from_slice(&scan[..at]);
                    buf.pop(); // removing the '\r'
                    let outcome = if buf.len() > limits.max_line {
                        Err(LineError::LineTooLong)
                    } else {
                        Ok(())
                    };
                    (at + 1, Some(outcome))
                }
                None => {
                    buf.extend_from_slice(scan);
                    if let Some(&last) = scan.last() {
                        prev_byte_was_cr = last == b'\r';
                    }
                    let outcome = if buf.len() - usize::from(prev_byte_was_cr) > limits.max_line {
                        Some(Err(LineError::LineTooLong))
                    } else if room < available.len() {
                        Some(Err(LineError::HeadTooLarge))
                    } else {
                        None
                    };
                    (room, outcome)
                }
            };
            limits.remaining_bytes -= used;
            self.head_drained = used == available.len();
            self.next_header_source.consume(used);
            match outcome {
                Some(Ok(())) => return Ok(()),
                Some(Err(e)) => return Err(e),
                None => {}
            }
        }
    }

    /// Reads a request from the stream.
    /// Blocks until the header has been read.
    fn read(&mut self) -> Result<Request, ReadError> {
        // modelmux: limits for this request head
        self.head_started = None;
        self.head_drained = true;
        let mut limits = HeadLimits {
            max_line: crate::limits::max_header_line(),
            remaining_bytes: crate::limits::max_header_bytes(),
            timeout: crate::limits::header_read_timeout(),
        };

        // modelmux: one line buffer for the whole head (see `read_next_line`), kept by the
        // connection; taken out while lines are read into it
        let mut line = std::mem::take(&mut self.line);
        let result = self.read_head(&mut limits, &mut line);
        self.line = line;
        let (method, version, raw_te) = result?;

        // modelmux: how the body is delimited, refusing any ambiguous framing, before any
        // byte of the body is read
        let refuse = |r| {
            let path = self.head.target().to_string();
            ReadError::Refused(r, Some((method.clone(), path, version.clone())))
        };
        let framing =
            crate::framing::body_framing(&version, self.head.pairs(), &raw_te).map_err(refuse)?;
        let expects_continue =
            crate::framing::expects_continue(self.head.get("Expect")).map_err(refuse)?;
        let headers = self.head.finish();

        // building the writer for the request
        let writer = self.sink.next().unwrap();

        // follow-up for next potential request
        let mut data_source = self.source.next().unwrap();
        std::mem::swap(&mut self.next_header_source, &mut data_source);

        // building the next reader
        let mut request = crate::request::new_request(
            self.secure,
            method,
            version,
            headers,
            framing,
            expects_continue,
            *self.remote_addr.as_ref().unwrap(),
            data_source,
            writer,
            Some(self.close_signal.clone()), // modelmux
        )
        .map_err(ReadError::ReadIoError)?;

        // modelmux: let the application close this connection
        request.set_connection_handle(self.handle.clone());

        // return the request
        Ok(request)
    }

    /// modelmux: reads the request line and the headers into `self.head`: the method, the
    /// version and the raw value of each `Transfer-Encoding` line (for `body_framing`).
    fn read_head(
        &mut self,
        limits: &mut HeadLimits,
        line: &mut Vec<u8>,
    ) -> Result<(Method, HTTPVersion, Vec<Vec<u8>>), ReadError> {
        // reading the request line
        // modelmux: RFC 9112 section 2.2 lets a server skip empty lines before the request
        // line (clients sometimes send a stray CRLF after a body); a few, not forever.
        for _ in 0..4 {
            self.read_next_line(limits, line).map_err(|e| match e {
                LineError::Io(e) => ReadError::ReadIoError(e),
                LineError::LineTooLong => ReadError::RequestLineTooLong,
                LineError::HeadTooLarge => ReadError::HeadersTooLarge(HTTPVersion(1, 1)),
            })?;
            if !line.is_empty() {
                break;
            }
        }
        // modelmux: strict parsing (see `framing`); upstream trimmed the line and split it
        // on any number of spaces
        let (method, path, version) =
            crate::framing::parse_request_line(line).map_err(|r| ReadError::Refused(r, None))?;
        self.head.start(path);

        // getting all headers
        // modelmux: the raw value of each Transfer-Encoding line, for `body_framing`
        let mut raw_te = Vec::new();
        // modelmux: the first refusal is kept but the head is still read to its end, so
        // the refused request's response is not sent while the client is mid-head
        let mut refused = None;
        loop {
            self.read_next_line(limits, line).map_err(|e| match e {
                LineError::Io(e) => ReadError::ReadIoError(e),
                LineError::LineTooLong | LineError::HeadTooLarge => {
                    ReadError::HeadersTooLarge(version.clone())
                }
            })?;

            if line.is_empty() {
                break;
            };
            if refused.is_some() {
                continue;
            }
            match crate::framing::parse_header_line(line) {
                Ok((name, value)) => {
                    if name.eq_ignore_ascii_case(b"Transfer-Encoding") {
                        raw_te.push(line[name.len() + 1..].to_vec());
                    }
                    self.head.push(name, value);
                }
                Err(r) => refused = Some(r),
            }
        }
        if let Some(r) = refused {
            let path = self.head.target().to_string();
            return Err(ReadError::Refused(r, Some((method, path, version))));
        }
        Ok((method, version, raw_te))
    }

    /// modelmux: a request refused while its head was read, handed to the application like any
    /// other (so it answers in its own format, logs and counts it); the connection reads no
    /// further request and closes once the answer is sent (see `linger_and_close`).
    fn refused_request(
        &mut self,
        refusal: Refusal,
        line: Option<(Method, String, HTTPVersion)>,
    ) -> Request {
        let (method, path, version) = line.unwrap_or_else(|| {
            (
                Method::NonStandard(AsciiString::from_ascii("-").unwrap_or_default()),
                String::new(),
                HTTPVersion(1, 1),
            )
        });
        // An HTTP/2 request line is answered in HTTP/1.1, the only framing we speak.
        let version = if version > (1, 1) || version < (1, 0) {
            HTTPVersion(1, 1)
        } else {
            version
        };
        self.no_more_requests = true;
        self.linger = true;
        let writer = self.sink.next().unwrap();
        let mut request = crate::request::new_refused_request(
            self.secure,
            method,
            path,
            version,
            refusal,
            *self.remote_addr.as_ref().unwrap(),
            writer,
        );
        request.set_connection_handle(self.handle.clone());
        request
    }

    /// modelmux: waits until the refused request's answer is written, sends FIN, then discards
    /// (bounded in bytes and time, each read under a short timeout) what the client may still be
    /// sending, so that closing a socket with unread data (which makes the kernel send a RST)
    /// does not destroy the answer before the client has read it. Upstream waited here on the
    /// socket's header-read timeout (30 s) after every 414 and 431.
    fn linger_and_close(&mut self) {
        const LINGER_MAX_BYTES: usize = 64 * 1024;
        const LINGER_MAX_TIME: Duration = Duration::from_secs(1);
        const LINGER_READ_TIMEOUT: Duration = Duration::from_millis(100);

        // A writer's first flush waits for every earlier writer (the answer) to be dropped.
        let mut writer = self.sink.next().unwrap();
        writer.flush().ok();
        drop(writer);
        if let Some(handle) = &self.handle {
            handle.shutdown_write();
            handle.set_read_timeout(Some(LINGER_READ_TIMEOUT));
        }

        let started = Instant::now();
        let mut discarded = 0;
        // modelmux: on the heap: an 8 KiB array here made every call of `next()` (which
        // inlines this) probe, and so keep resident, two more pages of each connection
        // thread's stack
        let mut buf = vec![0u8; 8 * 1024];
        while discarded < LINGER_MAX_BYTES && started.elapsed() < LINGER_MAX_TIME {
            match self.next_header_source.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => discarded += n,
            }
        }
    }
}

impl Iterator for ClientConnection {
    type Item = Request;

    /// Blocks until the next Request is available.
    /// Returns None when no new Requests will come from the client.
    fn next(&mut self) -> Option<Request> {
        // modelmux: the last request was refused: close once its answer is out
        if self.linger {
            self.linger = false;
            self.linger_and_close();
            return None;
        }

        // the client sent a "connection: close" header in this previous request
        //  or is using HTTP 1.0, meaning that no new request will come
        if self.no_more_requests {
            return None;
        }

        // modelmux: `getpeername` failed in `new` (e.g. the client reset the connection right
        // after it was accepted); upstream unwrapped this error in `read` and panicked (process
        // abort with `panic = "abort"`). The connection is unusable: close it.
        if self.remote_addr.is_err() {
            return None;
        }

        let rq = match self.read() {
            // modelmux: every refusal goes to the application (upstream answered some itself
            // with empty bodies, none logged, and never answered HTTP/2 request lines: its 505
            // waited forever on the writer the request still held)
            Err(ReadError::Refused(r, line)) => return Some(self.refused_request(r, line)),

            // modelmux: a socket read timeout is `WouldBlock` on Unix (`TimedOut` on
            // Windows, and for the total header-read timeout). Upstream only matched
            // `TimedOut` and never set a timeout.
            Err(ReadError::ReadIoError(ref err))
                if err.kind() == ErrorKind::TimedOut || err.kind() == ErrorKind::WouldBlock =>
            {
                // modelmux: nothing of a new request was received: idle keep-alive
                // connection, close it without a response
                self.head_started?;
                let r = Refusal::new(
                    408,
                    "request_timeout",
                    "The request head did not arrive within the client timeout.",
                );
                return Some(self.refused_request(r, None));
            }

            // modelmux: limits of the request head exceeded
            Err(ReadError::RequestLineTooLong) => {
                let r = Refusal::new(
                    414,
                    "uri_too_long",
                    "The request line is longer than the limit.",
                );
                return Some(self.refused_request(r, None));
            }

            Err(ReadError::HeadersTooLarge(ver)) => {
                let r = Refusal::new(
                    431,
                    "request_header_fields_too_large",
                    "The request headers are larger than the limit.",
                );
                return Some(self.refused_request(r, Some((Method::Get, String::new(), ver))));
            }

            Err(ReadError::ReadIoError(_)) => return None,

            Ok(rq) => rq,
        };

        // updating the status of the connection
        // modelmux: looked up in the request's `HeaderList` (its `headers()` would copy them all)
        let connection_header = rq.header_list().get("Connection");

        // modelmux: compared ignoring case without a lowercase copy (an allocation for every
        // request of a client that sends `Connection: keep-alive`)
        let mentions = |token: &str| connection_header.is_some_and(|v| contains_ignore_case(v, token));

        // modelmux: an `Upgrade` offer is ignored (RFC 9110 section 7.8): the connection stays
        // an HTTP/1.1 one. Upstream ended it and read the body to the end of the stream.
        match connection_header {
            Some(_) if mentions("close") => self.no_more_requests = true,
            Some(_) if !mentions("keep-alive") && *rq.http_version() == HTTPVersion(1, 0) => {
                self.no_more_requests = true
            }
            None if *rq.http_version() == HTTPVersion(1, 0) => self.no_more_requests = true,
            _ => (),
        };

        // returning the request
        Some(rq)
    }
}

/// modelmux: `haystack.to_ascii_lowercase().contains(needle)` for a lowercase `needle`, without
/// the copy.
fn contains_ignore_case(haystack: &str, needle: &str) -> bool {
    haystack
        .as_bytes()
        .windows(needle.len())
        .any(|w| w.eq_ignore_ascii_case(needle.as_bytes()))
}
