use std::io::Result as IoResult;
use std::io::{BufRead, Read, Write};

use std::sync::{Arc, Condvar, Mutex, MutexGuard};

// modelmux: the readers and writers of one connection take turns through one `Turns` per
// connection (a counter under a mutex) instead of a new channel per request and side: upstream's
// `channel()`s cost about four heap allocations per request (each channel, and the block its
// first message allocates). The order is the same: the reader of request k gets the
// connection's read side once reader k-1 is dropped, and writer k writes once the writers before
// it are dropped.

/// Whose turn it is, and the value passed from turn to turn (the read side; nothing for writers).
struct Turns<T> {
    state: Mutex<TurnState<T>>,
    changed: Condvar,
}

struct TurnState<T> {
    value: Option<T>,
    turn: u64,
    /// Threads waiting for their turn: the condvar is signalled only when some wait (no
    /// wake-up system call per request otherwise).
    waiting: usize,
}

impl<T> Turns<T> {
    fn new(value: Option<T>) -> Turns<T> {
        Turns {
            state: Mutex::new(TurnState {
                value,
                turn: 0,
                waiting: 0,
            }),
            changed: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, TurnState<T>> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits for turn `k`, then takes the value.
    fn wait(&self, k: u64) -> MutexGuard<'_, TurnState<T>> {
        let mut s = self.lock();
        while s.turn != k {
            s.waiting += 1;
            s = self.changed.wait(s).unwrap_or_else(|p| p.into_inner());
            s.waiting -= 1;
        }
        s
    }

    /// Ends the current turn, handing `value` (if any) to the next.
    fn pass(&self, mut s: MutexGuard<'_, TurnState<T>>, value: Option<T>) {
        if value.is_some() {
            s.value = value;
        }
        s.turn += 1;
        if s.waiting > 0 {
            self.changed.notify_all();
        }
    }
}

pub struct SequentialReaderBuilder<R>
where
    R: Read + Send,
{
    turns: Arc<Turns<R>>,
    next_turn: u64,
}

pub struct SequentialReader<R>
where
    R: Read + Send,
{
    turns: Arc<Turns<R>>,
    turn: u64,
    /// The read side, once it is this reader's turn and it read.
    reader: Option<R>,
}

pub struct SequentialWriterBuilder<W>
where
    W: Write + Send,
{
    writer: Arc<Mutex<W>>,
    turns: Arc<Turns<()>>,
    next_turn: u64,
}

pub struct SequentialWriter<W>
where
    W: Write + Send,
{
    writer: Arc<Mutex<W>>,
    turns: Arc<Turns<()>>,
    turn: u64,
    /// The writers before this one are done.
    my_turn: bool,
}

impl<R: Read + Send> SequentialReaderBuilder<R> {
    pub fn new(reader: R) -> SequentialReaderBuilder<R> {
        SequentialReaderBuilder {
            turns: Arc::new(Turns::new(Some(reader))),
            next_turn: 0,
        }
    }
}

impl<W: Write + Send> SequentialWriterBuilder<W> {
    pub fn new(writer: W) -> SequentialWriterBuilder<W> {
        SequentialWriterBuilder {
            writer: Arc::new(Mutex::new(writer)),
            turns: Arc::new(Turns::new(None)),
            next_turn: 0,
        }
    }
}

impl<R: Read + Send> Iterator for SequentialReaderBuilder<R> {
    type Item = SequentialReader<R>;

    fn next(&mut self) -> Option<SequentialReader<R>> {
        let turn = self.next_turn;
        self.next_turn += 1;
        Some(SequentialReader {
            turns: Arc::clone(&self.turns),
            turn,
            reader: None,
        })
    }
}

impl<W: Write + Send> Iterator for SequentialWriterBuilder<W> {
    type Item = SequentialWriter<W>;
    fn next(&mut self) -> Option<SequentialWriter<W>> {
        let turn = self.next_turn;
        self.next_turn += 1;
        Some(SequentialWriter {
            writer: Arc::clone(&self.writer),
            turns: Arc::clone(&self.turns),
            turn,
            my_turn: false,
        })
    }
}

impl<R: Read + Send> SequentialReader<R> {
    /// The read side, waiting for the readers before this one to be dropped.
    fn my_turn(&mut self) -> &mut R {
        if self.reader.is_none() {
            let mut s = self.turns.wait(self.turn);
            self.reader = s.value.take();
        }
        self.reader
            .as_mut()
            .expect("the read side is handed from turn to turn")
    }
}

impl<W: Write + Send> SequentialWriter<W> {
    fn wait_turn(&mut self) {
        if !self.my_turn {
            drop(self.turns.wait(self.turn));
            self.my_turn = true;
        }
    }
}

impl<R: Read + Send> Read for SequentialReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> IoResult<usize> {
        self.my_turn().read(buf)
    }
}

impl<W: Write + Send> Write for SequentialWriter<W> {
    fn write(&mut self, buf: &[u8]) -> IoResult<usize> {
        self.wait_turn();
        self.writer.lock().unwrap().write(buf)
    }

    fn flush(&mut self) -> IoResult<()> {
        self.wait_turn();
        self.writer.lock().unwrap().flush()
    }
}

// modelmux: buffered access for reading request heads (see `ClientConnection::read_next_line`).
impl<R: BufRead + Send> BufRead for SequentialReader<R> {
    fn fill_buf(&mut self) -> IoResult<&[u8]> {
        self.my_turn().fill_buf()
    }

    fn consume(&mut self, amt: usize) {
        self.my_turn().consume(amt)
    }
}

impl<R> Drop for SequentialReader<R>
where
    R: Read + Send,
{
    fn drop(&mut self) {
        // modelmux: a reader that never read still waits for its turn, then hands the read
        // side on (as upstream's did through its channels)
        let s = self.turns.wait(self.turn);
        let reader = self.reader.take();
        self.turns.pass(s, reader);
    }
}

impl<W> Drop for SequentialWriter<W>
where
    W: Write + Send,
{
    fn drop(&mut self) {
        // modelmux: the next writer's turn comes once this one and every one before it are
        // done (upstream's waited only for the one before it, even one dropped unused while an
        // earlier answer was still being written)
        let s = self.turns.wait(self.turn);
        self.turns.pass(s, None);
    }
}
