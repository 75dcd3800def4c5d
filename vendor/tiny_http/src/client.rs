use ascii::AsciiString;

use std::io::Error as IoError;
use std::io::Result as IoResult;
use std::io::{BufReader, BufWriter, ErrorKind, Read, Write};

use std::net::SocketAddr;
use std::str::FromStr;
use std::time::{Duration, Instant};

use crate::common::{HTTPVersion, Method};
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

    // modelmux: a duplicate of the socket, handed to each request (see `ConnectionHandle`)
    handle: Option<std::sync::Arc<crate::ConnectionHandle>>,

    // modelmux: when the first byte of the request head being read arrived (`None` while
    // waiting for a request), for the total header-read timeout and to tell a timed-out
    // partial request (408) from an idle keep-alive connection (closed silently)
    head_started: Option<Instant>,
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
    WrongRequestLine,
    WrongHeader(HTTPVersion),
    /// the client sent an unrecognized `Expect` header
    ExpectationFailed(HTTPVersion),
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
            head_started: None,
            handle,
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
    fn read_next_line(&mut self, limits: &mut HeadLimits) -> Result<AsciiString, LineError> {
        let mut buf = Vec::new();
        let mut prev_byte_was_cr = false;

        loop {
            let byte = self.next_header_source.by_ref().bytes().next();

            let byte = match byte {
                Some(b) => b.map_err(LineError::Io)?,
                None => {
                    return Err(LineError::Io(IoError::new(
                        ErrorKind::ConnectionAborted,
                        "Unexpected EOF",
                    )))
                }
            };

            // modelmux: the whole head must arrive within the header-read timeout
            let started = *self.head_started.get_or_insert_with(Instant::now);
            if let Some(timeout) = limits.timeout {
                if started.elapsed() > timeout {
                    return Err(LineError::Io(IoError::new(
                        ErrorKind::TimedOut,
                        "request head not received within the header-read timeout",
                    )));
                }
            }

            // modelmux: total size of the head, CRLFs included
            if limits.remaining_bytes == 0 {
                return Err(LineError::HeadTooLarge);
            }
            limits.remaining_bytes -= 1;

            if byte == b'\n' && prev_byte_was_cr {
                buf.pop(); // removing the '\r'
                return AsciiString::from_ascii(buf).map_err(|_| {
                    LineError::Io(IoError::new(
                        ErrorKind::InvalidInput,
                        "Header is not in ASCII",
                    ))
                });
            }

            prev_byte_was_cr = byte == b'\r';

            buf.push(byte);

            // modelmux: length of one line, the CR of a possible CRLF not counted
            if buf.len() - usize::from(prev_byte_was_cr) > limits.max_line {
                return Err(LineError::LineTooLong);
            }
        }
    }

    /// Reads a request from the stream.
    /// Blocks until the header has been read.
    fn read(&mut self) -> Result<Request, ReadError> {
        // modelmux: limits for this request head
        self.head_started = None;
        let mut limits = HeadLimits {
            max_line: crate::limits::max_header_line(),
            remaining_bytes: crate::limits::max_header_bytes(),
            timeout: crate::limits::header_read_timeout(),
        };

        let (method, path, version, headers) = {
            // reading the request line
            let (method, path, version) = {
                let line = self.read_next_line(&mut limits).map_err(|e| match e {
                    LineError::Io(e) => ReadError::ReadIoError(e),
                    LineError::LineTooLong => ReadError::RequestLineTooLong,
                    LineError::HeadTooLarge => ReadError::HeadersTooLarge(HTTPVersion(1, 1)),
                })?;

                parse_request_line(
                    line.as_str().trim(), // TODO: remove this conversion
                )?
            };

            // getting all headers
            let headers = {
                let mut headers = Vec::new();
                loop {
                    let line = self.read_next_line(&mut limits).map_err(|e| match e {
                        LineError::Io(e) => ReadError::ReadIoError(e),
                        LineError::LineTooLong | LineError::HeadTooLarge => {
                            ReadError::HeadersTooLarge(version.clone())
                        }
                    })?;

                    if line.is_empty() {
                        break;
                    };
                    headers.push(match FromStr::from_str(line.as_str().trim()) {
                        // TODO: remove this conversion
                        Ok(h) => h,
                        _ => return Err(ReadError::WrongHeader(version)),
                    });
                }

                headers
            };

            (method, path, version, headers)
        };

        // building the writer for the request
        let writer = self.sink.next().unwrap();

        // follow-up for next potential request
        let mut data_source = self.source.next().unwrap();
        std::mem::swap(&mut self.next_header_source, &mut data_source);

        // building the next reader
        let request = crate::request::new_request(
            self.secure,
            method,
            path,
            version.clone(),
            headers,
            *self.remote_addr.as_ref().unwrap(),
            data_source,
            writer,
            Some(self.close_signal.clone()), // modelmux
        )
        .map_err(|e| {
            use crate::request;
            match e {
                request::RequestCreationError::CreationIoError(e) => ReadError::ReadIoError(e),
                request::RequestCreationError::ExpectationFailed => {
                    ReadError::ExpectationFailed(version)
                }
            }
        })?;

        // modelmux: let the application close this connection
        let mut request = request;
        request.set_connection_handle(self.handle.clone());

        // return the request
        Ok(request)
    }
}

impl ClientConnection {
    /// modelmux: sends an empty error response with `Connection: close`, flushes it, then
    /// discards (bounded) what the client may still be sending, so that closing a socket with
    /// unread data (which makes the kernel send a RST) does not destroy the response before
    /// the client has read it. The caller then returns `None`, closing the connection.
    fn respond_and_close(&mut self, status: crate::StatusCode, version: HTTPVersion) {
        const LINGER_MAX_BYTES: usize = 64 * 1024;
        const LINGER_MAX_TIME: Duration = Duration::from_secs(1);

        let mut writer = self.sink.next().unwrap();
        let response = crate::Response::new_empty(status).with_connection_close();
        if response
            .raw_print(writer.by_ref(), version, &[], false, None)
            .is_ok()
        {
            writer.flush().ok();
        }
        drop(writer);

        let started = Instant::now();
        let mut discarded = 0;
        let mut buf = [0u8; 8 * 1024];
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
        use crate::{Response, StatusCode};

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

        loop {
            let rq = match self.read() {
                Err(ReadError::WrongRequestLine) => {
                    let writer = self.sink.next().unwrap();
                    let response = Response::new_empty(StatusCode(400));
                    response
                        .raw_print(writer, HTTPVersion(1, 1), &[], false, None)
                        .ok();
                    return None; // we don't know where the next request would start,
                                 // se we have to close
                }

                Err(ReadError::WrongHeader(ver)) => {
                    let writer = self.sink.next().unwrap();
                    let response = Response::new_empty(StatusCode(400));
                    response.raw_print(writer, ver, &[], false, None).ok();
                    return None; // we don't know where the next request would start,
                                 // se we have to close
                }

                // modelmux: a socket read timeout is `WouldBlock` on Unix (`TimedOut` on
                // Windows, and for the total header-read timeout). Upstream only matched
                // `TimedOut` and never set a timeout.
                Err(ReadError::ReadIoError(ref err))
                    if err.kind() == ErrorKind::TimedOut || err.kind() == ErrorKind::WouldBlock =>
                {
                    // modelmux: nothing of a new request was received: idle keep-alive
                    // connection, close it without a response
                    self.head_started?;
                    // request timeout
                    self.respond_and_close(StatusCode(408), HTTPVersion(1, 1));
                    return None; // closing the connection
                }

                // modelmux: limits of the request head exceeded
                Err(ReadError::RequestLineTooLong) => {
                    self.respond_and_close(StatusCode(414), HTTPVersion(1, 1));
                    return None;
                }

                Err(ReadError::HeadersTooLarge(ver)) => {
                    self.respond_and_close(StatusCode(431), ver);
                    return None;
                }

                Err(ReadError::ExpectationFailed(ver)) => {
                    let writer = self.sink.next().unwrap();
                    let response = Response::new_empty(StatusCode(417));
                    response.raw_print(writer, ver, &[], true, None).ok();
                    return None; // TODO: should be recoverable, but needs handling in case of body
                }

                Err(ReadError::ReadIoError(_)) => return None,

                Ok(rq) => rq,
            };

            // checking HTTP version
            if *rq.http_version() > (1, 1) {
                let writer = self.sink.next().unwrap();
                let response = Response::from_string(
                    "This server only supports HTTP versions 1.0 and 1.1".to_owned(),
                )
                .with_status_code(StatusCode(505));
                response
                    .raw_print(writer, HTTPVersion(1, 1), &[], false, None)
                    .ok();
                continue;
            }

            // updating the status of the connection
            let connection_header = rq
                .headers()
                .iter()
                .find(|h| h.field.equiv("Connection"))
                .map(|h| h.value.as_str());

            let lowercase = connection_header.map(|h| h.to_ascii_lowercase());

            match lowercase {
                Some(ref val) if val.contains("close") => self.no_more_requests = true,
                Some(ref val) if val.contains("upgrade") => self.no_more_requests = true,
                Some(ref val)
                    if !val.contains("keep-alive") && *rq.http_version() == HTTPVersion(1, 0) =>
                {
                    self.no_more_requests = true
                }
                None if *rq.http_version() == HTTPVersion(1, 0) => self.no_more_requests = true,
                _ => (),
            };

            // returning the request
            return Some(rq);
        }
    }
}

/// Parses a "HTTP/1.1" string.
fn parse_http_version(version: &str) -> Result<HTTPVersion, ReadError> {
    let (major, minor) = match version {
        "HTTP/0.9" => (0, 9),
        "HTTP/1.0" => (1, 0),
        "HTTP/1.1" => (1, 1),
        "HTTP/2.0" => (2, 0),
        "HTTP/3.0" => (3, 0),
        _ => return Err(ReadError::WrongRequestLine),
    };

    Ok(HTTPVersion(major, minor))
}

/// Parses the request line of the request.
/// eg. GET / HTTP/1.1
fn parse_request_line(line: &str) -> Result<(Method, String, HTTPVersion), ReadError> {
    let mut parts = line.split(' ');

    let method = parts.next().and_then(|w| w.parse().ok());
    let path = parts.next().map(ToOwned::to_owned);
    let version = parts.next().and_then(|w| parse_http_version(w).ok());

    method
        .and_then(|method| Some((method, path?, version?)))
        .ok_or(ReadError::WrongRequestLine)
}

#[cfg(test)]
mod test {
    #[test]
    fn test_parse_request_line() {
        let (method, path, ver) = super::parse_request_line("GET /hello HTTP/1.1").unwrap();

        assert!(method == crate::Method::Get);
        assert!(path == "/hello");
        assert!(ver == crate::common::HTTPVersion(1, 1));

        assert!(super::parse_request_line("GET /hello").is_err());
        assert!(super::parse_request_line("qsd qsd qsd").is_err());
    }
}
