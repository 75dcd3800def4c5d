use std::io::Read;
use std::io::Result as IoResult;
use std::sync::mpsc::channel;
use std::sync::mpsc::{Receiver, Sender};
use std::time::{Duration, Instant};

use crate::util::CloseSignal;

// modelmux: bounds for discarding an unread body in `Drop` (see there).
const DRAIN_BUF_SIZE: usize = 8 * 1024;
const MAX_DRAIN_BYTES: usize = 64 * 1024;
const MAX_DRAIN_TIME: Duration = Duration::from_secs(2);

/// A `Reader` that reads exactly the number of bytes from a sub-reader.
///
/// If the limit is reached, it returns EOF. If the limit is not reached
/// when the destructor is called, the remaining bytes will be read and
/// thrown away (modelmux: at most 64 KiB / 2 s of them; if more remains, the
/// `CloseSignal` is triggered so that the connection is closed).
pub struct EqualReader<R>
where
    R: Read,
{
    reader: R,
    size: usize,
    last_read_signal: Sender<IoResult<()>>,
    // modelmux: triggered when the body is abandoned before its end
    close_signal: Option<CloseSignal>,
}

impl<R> EqualReader<R>
where
    R: Read,
{
    pub fn new(reader: R, size: usize) -> (EqualReader<R>, Receiver<IoResult<()>>) {
        let (tx, rx) = channel();

        let r = EqualReader {
            reader,
            size,
            last_read_signal: tx,
            close_signal: None,
        };

        (r, rx)
    }

    /// modelmux: the signal to trigger if the body cannot be fully discarded on drop.
    pub fn with_close_signal(mut self, close_signal: Option<CloseSignal>) -> EqualReader<R> {
        self.close_signal = close_signal;
        self
    }
}

impl<R> Read for EqualReader<R>
where
    R: Read,
{
    fn read(&mut self, buf: &mut [u8]) -> IoResult<usize> {
        if self.size == 0 {
            return Ok(0);
        }

        let buf = if buf.len() < self.size {
            buf
        } else {
            &mut buf[..self.size]
        };

        match self.reader.read(buf) {
            Ok(len) => {
                self.size -= len;
                Ok(len)
            }
            err @ Err(_) => err,
        }
    }
}

impl<R> Drop for EqualReader<R>
where
    R: Read,
{
    // modelmux: upstream allocated `vec![0; remaining]` here, so a request with
    // `Content-Length: 99999999999999` whose body the handler did not read aborted the
    // process on allocation failure, and any big unread body was read to the end. Now the
    // rest is discarded through a fixed 8 KiB buffer, at most 64 KiB and for at most ~2 s
    // (checked between reads; one read is bounded by the socket read timeout). If anything
    // remains after that (or the read failed / hit EOF), the close signal is triggered: the
    // next bytes on the connection are body bytes, so the connection must not be parsed for
    // another request and is closed instead.
    fn drop(&mut self) {
        if self.size == 0 {
            return;
        }

        // modelmux: on the heap, so the frame of whatever this is inlined into stays small
        let mut buf = vec![0u8; DRAIN_BUF_SIZE];
        let mut drained = 0;
        let started = Instant::now();

        while self.size > 0 && drained < MAX_DRAIN_BYTES && started.elapsed() < MAX_DRAIN_TIME {
            let want = self.size.min(DRAIN_BUF_SIZE).min(MAX_DRAIN_BYTES - drained);

            match self.reader.read(&mut buf[..want]) {
                Err(ref e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    self.last_read_signal.send(Err(e)).ok();
                    break;
                }
                Ok(0) => {
                    self.last_read_signal.send(Ok(())).ok();
                    break;
                }
                Ok(other) => {
                    self.size -= other;
                    drained += other;
                }
            }
        }

        if self.size > 0 {
            if let Some(signal) = &self.close_signal {
                signal.trigger();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::EqualReader;
    use std::io::Read;

    #[test]
    fn test_limit() {
        use std::io::Cursor;

        let mut org_reader = Cursor::new("hello world".to_string().into_bytes());

        {
            let (mut equal_reader, _) = EqualReader::new(org_reader.by_ref(), 5);

            let mut string = String::new();
            equal_reader.read_to_string(&mut string).unwrap();
            assert_eq!(string, "hello");
        }

        let mut string = String::new();
        org_reader.read_to_string(&mut string).unwrap();
        assert_eq!(string, " world");
    }

    // modelmux: a huge declared size must not allocate it; at most 64 KiB are discarded and
    // the close signal is triggered.
    #[test]
    fn test_huge_size_bounded_drain() {
        use crate::util::CloseSignal;
        use std::io::{Cursor, Read};

        let data = vec![b'x'; 200 * 1024];
        let mut org_reader = Cursor::new(data);
        let signal = CloseSignal::new();
        {
            let (equal_reader, _) = EqualReader::new(org_reader.by_ref(), 99_999_999_999_999);
            let _equal_reader = equal_reader.with_close_signal(Some(signal.clone()));
        }
        assert!(signal.is_triggered());
        assert_eq!(org_reader.position(), 64 * 1024);
    }

    // modelmux: a small unread rest is discarded and the connection stays usable.
    #[test]
    fn test_small_rest_drained() {
        use crate::util::CloseSignal;
        use std::io::Cursor;

        let mut org_reader = Cursor::new(vec![b'y'; 20_000]);
        let signal = CloseSignal::new();
        {
            let (equal_reader, _) = EqualReader::new(org_reader.by_ref(), 19_000);
            let _equal_reader = equal_reader.with_close_signal(Some(signal.clone()));
        }
        assert!(!signal.is_triggered());
        assert_eq!(org_reader.position(), 19_000);
    }

    #[test]
    fn test_not_enough() {
        use std::io::Cursor;

        let mut org_reader = Cursor::new("hello world".to_string().into_bytes());

        {
            let (mut equal_reader, _) = EqualReader::new(org_reader.by_ref(), 5);

            let mut vec = [0];
            equal_reader.read_exact(&mut vec).unwrap();
            assert_eq!(vec[0], b'h');
        }

        let mut string = String::new();
        org_reader.read_to_string(&mut string).unwrap();
        assert_eq!(string, " world");
    }
}
