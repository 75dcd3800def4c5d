//! modelmux: per-connection "stop reading requests" signal (not part of upstream tiny_http).
//!
//! When the body of a request is abandoned before its end (the handler did not read it and
//! more than a bounded amount remains, the drain failed, or a chunked body was dropped
//! half-way), the next bytes on the connection are body bytes, not a request. Upstream would
//! parse them as the next request. Instead the body reader triggers this signal, and every
//! later read through the connection's `ClosableReader` fails, so the `ClientConnection`
//! stops (returns `None`) and the connection is closed.

use std::io::{BufRead, Error as IoError, ErrorKind, Read, Result as IoResult};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Shared flag: once triggered, the connection must not be read any more.
#[derive(Clone, Default)]
pub struct CloseSignal(Arc<AtomicBool>);

impl CloseSignal {
    pub fn new() -> CloseSignal {
        CloseSignal::default()
    }

    /// Marks the connection as unusable for further requests.
    pub fn trigger(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    pub fn is_triggered(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// Reader that fails with `ConnectionAborted` once its `CloseSignal` is triggered.
pub struct ClosableReader<R> {
    inner: R,
    signal: CloseSignal,
}

impl<R: Read> ClosableReader<R> {
    pub fn new(inner: R, signal: CloseSignal) -> ClosableReader<R> {
        ClosableReader { inner, signal }
    }
}

fn abandoned() -> IoError {
    IoError::new(
        ErrorKind::ConnectionAborted,
        "connection closed: a request body was abandoned before its end",
    )
}

impl<R: Read> Read for ClosableReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> IoResult<usize> {
        if self.signal.is_triggered() {
            return Err(abandoned());
        }
        self.inner.read(buf)
    }
}

// modelmux: request heads are scanned straight in the connection's buffer (see
// `ClientConnection::read_next_line`), not read byte by byte through `Read`.
impl<R: BufRead> BufRead for ClosableReader<R> {
    fn fill_buf(&mut self) -> IoResult<&[u8]> {
        if self.signal.is_triggered() {
            return Err(abandoned());
        }
        self.inner.fill_buf()
    }

    fn consume(&mut self, amt: usize) {
        self.inner.consume(amt)
    }
}

/// Reader wrapper (used for chunked bodies) that triggers the `CloseSignal` if it is dropped
/// before its inner reader reported EOF.
pub struct CloseUnlessEof<R> {
    inner: R,
    signal: Option<CloseSignal>,
    eof: bool,
}

impl<R: Read> CloseUnlessEof<R> {
    pub fn new(inner: R, signal: Option<CloseSignal>) -> CloseUnlessEof<R> {
        CloseUnlessEof {
            inner,
            signal,
            eof: false,
        }
    }
}

impl<R: Read> Read for CloseUnlessEof<R> {
    fn read(&mut self, buf: &mut [u8]) -> IoResult<usize> {
        let n = self.inner.read(buf)?;
        if n == 0 && !buf.is_empty() {
            self.eof = true;
        }
        Ok(n)
    }
}

impl<R> Drop for CloseUnlessEof<R> {
    fn drop(&mut self) {
        if !self.eof {
            if let Some(signal) = &self.signal {
                signal.trigger();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{ClosableReader, CloseSignal, CloseUnlessEof};
    use std::io::Read;

    #[test]
    fn closable_reader_fails_after_trigger() {
        let signal = CloseSignal::new();
        let mut r = ClosableReader::new(&b"hello"[..], signal.clone());
        let mut b = [0u8; 2];
        assert_eq!(r.read(&mut b).unwrap(), 2);
        signal.trigger();
        assert!(r.read(&mut b).is_err());
    }

    #[test]
    fn close_unless_eof() {
        let signal = CloseSignal::new();
        {
            let mut r = CloseUnlessEof::new(&b"ab"[..], Some(signal.clone()));
            let mut s = String::new();
            r.read_to_string(&mut s).unwrap();
        }
        assert!(!signal.is_triggered());
        {
            let mut r = CloseUnlessEof::new(&b"ab"[..], Some(signal.clone()));
            let mut b = [0u8; 1];
            r.read_exact(&mut b).unwrap();
        }
        assert!(signal.is_triggered());
    }
}
