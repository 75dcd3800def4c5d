use std::io::Error as IoError;
use std::io::{self, Cursor, ErrorKind, Read, Write};

use std::fmt;
use std::net::SocketAddr;

use std::sync::mpsc::Sender;
use std::sync::OnceLock;

use crate::header_list::{HeadBuilder, HeaderList};

use crate::framing::{BodyFraming, ChunkedDecoder, Refusal};
use crate::util::{CloseSignal, CloseUnlessEof, EqualReader, FusedReader};
use crate::{HTTPVersion, Header, Method, Response, StatusCode};

/// Represents an HTTP request made by a client.
///
/// A `Request` object is what is produced by the server, and is your what
/// your code must analyse and answer.
///
/// This object implements the `Send` trait, therefore you can dispatch your requests to
/// worker threads.
///
/// # Pipelining
///
/// If a client sends multiple requests in a row (without waiting for the response), then you will
/// get multiple `Request` objects simultaneously. This is called *requests pipelining*.
/// Tiny-http automatically reorders the responses so that you don't need to worry about the order
/// in which you call `respond` or `into_writer`.
///
/// This mechanic is disabled if:
///
///  - The body of a request is large enough (handling requires pipelining requires storing the
///    body of the request in a buffer ; if the body is too big, tiny-http will avoid doing that)
///  - A request sends a `Expect: 100-continue` header (which means that the client waits to
///    know whether its body will be processed before sending it)
///  - A request sends a `Connection: close` header or `Connection: upgrade` header (used for
///    websockets), which indicates that this is the last request that will be received on this
///    connection
///
/// # Automatic cleanup
///
/// If a `Request` object is destroyed without `into_writer` or `respond` being called,
/// an empty response with a 500 status code (internal server error) will automatically be
/// sent back to the client.
/// This means that if your code fails during the handling of a request, this "internal server
/// error" response will automatically be sent during the stack unwinding.
///
/// # Testing
///
/// If you want to build fake requests to test your server, use [`TestRequest`](crate::test::TestRequest).
pub struct Request {
    // where to read the body from
    // modelmux: a `BodyReader`, which knows whether anything is left on the socket
    data_reader: Option<BodyReader>,

    // if this writer is empty, then the request has been answered
    response_writer: Option<Box<dyn Write + Send + 'static>>,

    remote_addr: Option<SocketAddr>,

    // true if HTTPS, false if HTTP
    secure: bool,

    method: Method,

    http_version: HTTPVersion,

    // modelmux: the target and headers in one shared text (two allocations per request instead
    // of two per header and one for the target); upstream's `Vec<Header>` is built only if
    // `headers()` is called
    head: HeaderList,
    headers: OnceLock<Vec<Header>>,

    body_length: Option<usize>,

    // true if a `100 Continue` response must be sent when `as_reader()` is called
    must_send_continue: bool,

    // If Some, a message must be sent after responding
    notify_when_responded: Option<Sender<()>>,

    // modelmux: connection-level signal, triggered when this request's body is abandoned
    // (see `Drop for Request`); `None` for requests not read from a connection.
    close_signal: Option<CloseSignal>,

    // modelmux: see `ConnectionHandle`
    handle: Option<std::sync::Arc<crate::ConnectionHandle>>,

    // modelmux: set when the request was refused while its head was read
    refusal: Option<Refusal>,
}

/// modelmux: a request body that remembers whether unread bytes of it may still be on the
/// socket, so that dropping a request whose body was read to its end (or was small enough to be
/// read with the head) needs no drain, and no read-timeout change around one.
struct BodyReader {
    inner: Body,
    /// all of it is in memory (or it is empty), or it was read to its end
    done: bool,
}

/// modelmux: an empty body and one read with the head are not boxed (upstream boxed every body
/// reader: one allocation per request, two with the in-memory body's `Cursor`).
enum Body {
    Empty,
    Memory(Cursor<Vec<u8>>),
    Stream(Box<dyn Read + Send + 'static>),
}

impl BodyReader {
    fn new(inner: Body, on_socket: bool) -> BodyReader {
        BodyReader {
            inner,
            done: !on_socket,
        }
    }
}

impl Read for BodyReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = match &mut self.inner {
            Body::Empty => 0,
            Body::Memory(c) => c.read(buf)?,
            Body::Stream(r) => r.read(buf)?,
        };
        if n == 0 && !buf.is_empty() {
            self.done = true;
        }
        Ok(n)
    }
}

struct NotifyOnDrop<R> {
    sender: Sender<()>,
    inner: R,
}

impl<R: Read> Read for NotifyOnDrop<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.inner.read(buf)
    }
}
impl<R: Write> Write for NotifyOnDrop<R> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.inner.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}
impl<R> Drop for NotifyOnDrop<R> {
    fn drop(&mut self) {
        self.sender.send(()).unwrap();
    }
}

/// Builds a new request.
///
/// After the request line and headers have been read from the socket, a new `Request` object
/// is built.
///
/// You must pass a `Read` that will allow the `Request` object to read from the incoming data.
/// It is the responsibility of the `Request` to read only the data of the request and not further.
///
/// The `Write` object will be used by the `Request` to write the response.
///
/// modelmux: `framing` and `expects_continue` are decided by `crate::framing` (strictly, before
/// any body byte is read); `close_signal` is the connection's signal to trigger when the body
/// is abandoned before its end (`None` when there is no connection, e.g. `TestRequest`).
#[allow(clippy::too_many_arguments)]
pub(crate) fn new_request<R, W>(
    secure: bool,
    method: Method,
    version: HTTPVersion,
    headers: HeaderList,
    framing: BodyFraming,
    expects_continue: bool,
    remote_addr: Option<SocketAddr>,
    mut source_data: R,
    writer: W,
    close_signal: Option<CloseSignal>,
) -> Result<Request, IoError>
where
    R: Read + Send + 'static,
    W: Write + Send + 'static,
{
    // we wrap `source_data` around a reading whose nature depends on the transfer-encoding and
    // content-length headers
    // modelmux: an `Upgrade` offer no longer makes the body "the rest of the stream": upgrades
    // are ignored (RFC 9110 section 7.8) and the body is framed like any other.
    let content_length = match framing {
        BodyFraming::Length(n) => Some(n),
        BodyFraming::None => Some(0),
        BodyFraming::Chunked => None,
    };
    let on_socket = match framing {
        BodyFraming::None => false,
        BodyFraming::Length(n) => n > 1024 || expects_continue,
        BodyFraming::Chunked => true,
    };
    let reader = match framing {
        BodyFraming::None => Body::Empty,
        BodyFraming::Length(content_length) if content_length <= 1024 && !expects_continue => {
            // if the content-length is small enough, we just read everything into a buffer

            let mut buffer = vec![0; content_length];
            let mut offset = 0;

            while offset != content_length {
                let read = source_data.read(&mut buffer[offset..])?;
                if read == 0 {
                    // the socket returned EOF, but we were before the expected content-length
                    // aborting
                    let info = "Connection has been closed before we received enough data";
                    return Err(IoError::new(ErrorKind::ConnectionAborted, info));
                }

                offset += read;
            }

            Body::Memory(Cursor::new(buffer))
        }
        BodyFraming::Length(content_length) => {
            // modelmux: give the reader the connection's close signal (bounded drain on drop)
            let (data_reader, _) = EqualReader::new(source_data, content_length); // TODO:
            let data_reader = data_reader.with_close_signal(close_signal.clone());
            Body::Stream(Box::new(FusedReader::new(data_reader)))
        }
        BodyFraming::Chunked => {
            // modelmux: a chunked body dropped before its end leaves chunk data on the wire
            // that upstream parsed as the next request; `CloseUnlessEof` closes the connection
            // instead. The decoder is strict (see `crate::framing::ChunkedDecoder`).
            let decoder =
                CloseUnlessEof::new(ChunkedDecoder::new(source_data), close_signal.clone());
            Body::Stream(Box::new(FusedReader::new(decoder)))
        }
    };

    Ok(Request {
        data_reader: Some(BodyReader::new(reader, on_socket)),
        response_writer: Some(Box::new(writer) as Box<dyn Write + Send + 'static>),
        remote_addr,
        secure,
        method,
        http_version: version,
        head: headers,
        headers: OnceLock::new(),
        body_length: content_length,
        must_send_continue: expects_continue,
        notify_when_responded: None,
        close_signal,
        handle: None,
        refusal: None,
    })
}

/// modelmux: a request refused while its head was read (see `crate::framing`): no headers, no
/// body, only a way to answer. The connection closes after the answer.
pub(crate) fn new_refused_request<W>(
    secure: bool,
    method: Method,
    path: String,
    version: HTTPVersion,
    refusal: Refusal,
    remote_addr: Option<SocketAddr>,
    writer: W,
) -> Request
where
    W: Write + Send + 'static,
{
    Request {
        data_reader: Some(BodyReader::new(Body::Empty, false)),
        response_writer: Some(Box::new(writer) as Box<dyn Write + Send + 'static>),
        remote_addr,
        secure,
        method,
        http_version: version,
        head: HeadBuilder::build(&path, std::iter::empty()),
        headers: OnceLock::new(),
        body_length: Some(0),
        must_send_continue: false,
        notify_when_responded: None,
        close_signal: None,
        handle: None,
        refusal: Some(refusal),
    }
}

impl Request {
    /// Returns true if the request was made through HTTPS.
    #[inline]
    pub fn secure(&self) -> bool {
        self.secure
    }

    /// Returns the method requested by the client (eg. `GET`, `POST`, etc.).
    #[inline]
    pub fn method(&self) -> &Method {
        &self.method
    }

    /// modelmux: why this request was refused before reaching the application, if it was.
    ///
    /// A refused request has no headers and no body; answer it with `refusal.status` (the
    /// connection closes after the answer, whatever the answer says).
    #[inline]
    pub fn refusal(&self) -> Option<&Refusal> {
        self.refusal.as_ref()
    }

    /// Returns the resource requested by the client.
    #[inline]
    pub fn url(&self) -> &str {
        self.head.target()
    }

    /// Returns a list of all headers sent by the client.
    ///
    /// modelmux: built on the first call (two allocations per header): prefer `header_list`.
    #[inline]
    pub fn headers(&self) -> &[Header] {
        self.headers.get_or_init(|| self.head.to_headers())
    }

    /// modelmux: the headers sent by the client, without a copy; clone it to keep them past
    /// the request (a clone shares them).
    #[inline]
    pub fn header_list(&self) -> &HeaderList {
        &self.head
    }

    /// Returns the HTTP version of the request.
    #[inline]
    pub fn http_version(&self) -> &HTTPVersion {
        &self.http_version
    }

    /// Returns the length of the body in bytes.
    ///
    /// Returns `None` if the length is unknown.
    #[inline]
    pub fn body_length(&self) -> Option<usize> {
        self.body_length
    }

    /// Returns the address of the client that sent this request.
    ///
    /// The address is always `Some` for TCP listeners, but always `None` for UNIX listeners
    /// (as the remote address of a UNIX client is almost always unnamed).
    ///
    /// Note that this is gathered from the socket. If you receive the request from a proxy,
    /// this function will return the address of the proxy and not the address of the actual
    /// user.
    #[inline]
    pub fn remote_addr(&self) -> Option<&SocketAddr> {
        self.remote_addr.as_ref()
    }

    /// Sends a response with a `Connection: upgrade` header, then turns the `Request` into a `Stream`.
    ///
    /// The main purpose of this function is to support websockets.
    /// If you detect that the request wants to use some kind of protocol upgrade, you can
    ///  call this function to obtain full control of the socket stream.
    ///
    /// If you call this on a non-websocket request, tiny-http will wait until this `Stream` object
    ///  is destroyed before continuing to read or write on the socket. Therefore you should always
    ///  destroy it as soon as possible.
    pub fn upgrade<R: Read>(
        mut self,
        protocol: &str,
        response: Response<R>,
    ) -> Box<dyn ReadWrite + Send> {
        use crate::util::CustomStream;

        response
            .raw_print_te(
                self.response_writer.as_mut().unwrap().by_ref(),
                self.http_version.clone(),
                self.head.get("TE"),
                false,
                Some(protocol),
            )
            .ok(); // TODO: unused result

        self.response_writer.as_mut().unwrap().flush().ok(); // TODO: unused result

        let stream = CustomStream::new(self.extract_reader_impl(), self.extract_writer_impl());
        if let Some(sender) = self.notify_when_responded.take() {
            let stream = NotifyOnDrop {
                sender,
                inner: stream,
            };
            Box::new(stream) as Box<dyn ReadWrite + Send>
        } else {
            Box::new(stream) as Box<dyn ReadWrite + Send>
        }
    }

    /// Allows to read the body of the request.
    ///
    /// # Example
    ///
    /// ```no_run
    /// # extern crate rustc_serialize;
    /// # extern crate tiny_http;
    /// # use rustc_serialize::json::Json;
    /// # use std::io::Read;
    /// # fn get_content_type(_: &tiny_http::Request) -> &'static str { "" }
    /// # fn main() {
    /// # let server = tiny_http::Server::http("0.0.0.0:0").unwrap();
    /// let mut request = server.recv().unwrap();
    ///
    /// if get_content_type(&request) == "application/json" {
    ///     let mut content = String::new();
    ///     request.as_reader().read_to_string(&mut content).unwrap();
    ///     let json: Json = content.parse().unwrap();
    /// }
    /// # }
    /// ```
    ///
    /// If the client sent a `Expect: 100-continue` header with the request, calling this
    ///  function will send back a `100 Continue` response.
    #[inline]
    pub fn as_reader(&mut self) -> &mut dyn Read {
        if self.must_send_continue {
            let msg = Response::new_empty(StatusCode(100));
            msg.raw_print_te(
                self.response_writer.as_mut().unwrap().by_ref(),
                self.http_version.clone(),
                self.head.get("TE"),
                true,
                None,
            )
            .ok();
            self.response_writer.as_mut().unwrap().flush().ok();
            self.must_send_continue = false;
        }

        self.data_reader.as_mut().unwrap()
    }

    /// modelmux: the whole body, when it was read with the head (small enough, see
    /// `new_request`) and none of it has been read since: handed over without a copy. `None`
    /// otherwise (read it with `as_reader`).
    pub fn take_read_body(&mut self) -> Option<Vec<u8>> {
        let reader = self.data_reader.as_mut()?;
        match &mut reader.inner {
            Body::Memory(c) if c.position() == 0 => {
                let body = std::mem::take(c.get_mut());
                reader.inner = Body::Empty;
                Some(body)
            }
            _ => None,
        }
    }

    /// Turns the `Request` into a writer.
    ///
    /// The writer has a raw access to the stream to the user.
    /// This function is useful for things like CGI.
    ///
    /// Note that the destruction of the `Writer` object may trigger
    /// some events. For exemple if a client has sent multiple requests and the requests
    /// have been processed in parallel, the destruction of a writer will trigger
    /// the writing of the next response.
    /// Therefore you should always destroy the `Writer` as soon as possible.
    #[inline]
    pub fn into_writer(mut self) -> Box<dyn Write + Send + 'static> {
        let writer = self.extract_writer_impl();
        if let Some(sender) = self.notify_when_responded.take() {
            let writer = NotifyOnDrop {
                sender,
                inner: writer,
            };
            Box::new(writer) as Box<dyn Write + Send + 'static>
        } else {
            writer
        }
    }

    /// Extract the response `Writer` object from the Request, dropping this `Writer` has the same side effects
    /// as the object returned by `into_writer` above.
    ///
    /// This may only be called once on a single request.
    fn extract_writer_impl(&mut self) -> Box<dyn Write + Send + 'static> {
        use std::mem;

        assert!(self.response_writer.is_some());

        let mut writer = None;
        mem::swap(&mut self.response_writer, &mut writer);
        writer.unwrap()
    }

    /// Extract the body `Reader` object from the Request.
    ///
    /// This may only be called once on a single request.
    fn extract_reader_impl(&mut self) -> Box<dyn Read + Send + 'static> {
        use std::mem;

        assert!(self.data_reader.is_some());

        let mut reader = None;
        mem::swap(&mut self.data_reader, &mut reader);
        Box::new(reader.unwrap())
    }

    /// Sends a response to this request.
    #[inline]
    pub fn respond<R>(mut self, response: Response<R>) -> Result<(), IoError>
    where
        R: Read,
    {
        let res = self.respond_impl(response);
        if let Some(sender) = self.notify_when_responded.take() {
            sender.send(()).unwrap();
        }
        res
    }

    fn respond_impl<R>(&mut self, response: Response<R>) -> Result<(), IoError>
    where
        R: Read,
    {
        let mut writer = self.extract_writer_impl();

        let do_not_send_body = self.method == Method::Head;

        // modelmux: only the request's `TE` header matters to the response
        Self::ignore_client_closing_errors(response.raw_print_te(
            writer.by_ref(),
            self.http_version.clone(),
            self.head.get("TE"),
            do_not_send_body,
            None,
        ))?;

        Self::ignore_client_closing_errors(writer.flush())
    }

    fn ignore_client_closing_errors(result: io::Result<()>) -> io::Result<()> {
        result.or_else(|err| match err.kind() {
            ErrorKind::BrokenPipe => Ok(()),
            ErrorKind::ConnectionAborted => Ok(()),
            ErrorKind::ConnectionRefused => Ok(()),
            ErrorKind::ConnectionReset => Ok(()),
            _ => Err(err),
        })
    }

    pub(crate) fn with_notify_sender(mut self, sender: Sender<()>) -> Self {
        self.notify_when_responded = Some(sender);
        self
    }
}

impl fmt::Debug for Request {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> Result<(), fmt::Error> {
        write!(
            formatter,
            "Request({} {} from {:?})",
            self.method,
            self.url(),
            self.remote_addr
        )
    }
}

impl Request {
    /// modelmux: the handle that can close this request's connection (None for test requests,
    /// or when no descriptor was left to make one).
    pub fn connection_handle(&self) -> Option<std::sync::Arc<crate::ConnectionHandle>> {
        self.handle.clone()
    }

    pub(crate) fn set_connection_handle(
        &mut self,
        handle: Option<std::sync::Arc<crate::ConnectionHandle>>,
    ) {
        self.handle = handle;
    }
}

/// modelmux: while a body nobody read is being discarded, a silent client gets this long per
/// read instead of the full header-read timeout, so the thread that drops the request (often
/// one that must answer others quickly) is not held for half a minute.
const DRAIN_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_millis(200);

impl Drop for Request {
    fn drop(&mut self) {
        // modelmux: discard the unread body now, under a short read timeout, then restore the
        // connection's normal timeout for the next request.
        // A client still waiting for `100 Continue` will not send its body: that case closes
        // the connection below instead.
        let unread = self.data_reader.as_ref().is_some_and(|r| !r.done);
        if self.body_length != Some(0) && unread && !self.must_send_continue {
            if let Some(handle) = &self.handle {
                handle.set_read_timeout(Some(DRAIN_READ_TIMEOUT));
                drop(self.data_reader.take());
                handle.set_read_timeout(crate::limits::header_read_timeout());
            }
        }

        // modelmux: the client sent `Expect: 100-continue` and the body was never asked for
        // (no `100 Continue` was sent), so the client may never send it: do not wait for it
        // in the body drain (which would block this thread up to the socket read timeout),
        // close the connection after the response instead (RFC 9110 section 10.1.1).
        if self.must_send_continue && self.data_reader.is_some() && self.body_length != Some(0) {
            if let Some(signal) = &self.close_signal {
                signal.trigger();
            }
        }

        if self.response_writer.is_some() {
            // modelmux: the application may set the body of this 500 (see
            // `limits::set_unanswered_body`); upstream always sent it empty.
            let (content_type, body) = match crate::limits::unanswered_body() {
                Some((t, b)) => (Some(t.as_str()), b.clone()),
                None => (None, Vec::new()),
            };
            let mut response = Response::from_data(body).with_status_code(500);
            if let Some(t) = content_type {
                if let Ok(h) = crate::Header::from_bytes(&b"Content-Type"[..], t.as_bytes()) {
                    response.add_header(h);
                }
            }
            let _ = self.respond_impl(response); // ignoring any potential error
            if let Some(sender) = self.notify_when_responded.take() {
                sender.send(()).unwrap();
            }
        }
    }
}

/// Dummy trait that regroups the `Read` and `Write` traits.
///
/// Automatically implemented on all types that implement both `Read` and `Write`.
pub trait ReadWrite: Read + Write {}
impl<T> ReadWrite for T where T: Read + Write {}

#[cfg(test)]
mod tests {
    use super::Request;

    // modelmux: the 500 for a request dropped unanswered carries the application's body.
    #[test]
    fn unanswered_requests_get_the_configured_500() {
        use crate::framing::BodyFraming;
        use crate::{HTTPVersion, Method};
        use std::sync::{Arc, Mutex};
        #[derive(Clone)]
        struct Shared(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Shared {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        crate::limits::set_unanswered_body("application/json", b"{\"e\":1}".to_vec());
        let out = Shared(Arc::new(Mutex::new(Vec::new())));
        let rq = super::new_request(
            false,
            Method::Get,
            HTTPVersion(1, 1),
            crate::header_list::HeadBuilder::build("/", std::iter::empty()),
            BodyFraming::None,
            false,
            None,
            std::io::empty(),
            out.clone(),
            None,
        )
        .unwrap();
        drop(rq);
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        assert!(text.starts_with("HTTP/1.1 500"), "{}", text);
        assert!(text.contains("Content-Type: application/json"), "{}", text);
        assert!(text.ends_with("{\"e\":1}"), "{}", text);
    }

    #[test]
    fn must_be_send() {
        #![allow(dead_code)]
        fn f<T: Send>(_: &T) {}
        fn bar(rq: &Request) {
            f(rq);
        }
    }
}
