//! Abstractions of Tcp and Unix socket types

#[cfg(unix)]
use std::os::unix::net as unix_net;
use std::{
    net::{Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs},
    path::PathBuf,
};

/// Unified listener. Either a [`TcpListener`] or [`std::os::unix::net::UnixListener`]
pub enum Listener {
    Tcp(TcpListener),
    #[cfg(unix)]
    Unix(unix_net::UnixListener),
}
impl Listener {
    pub(crate) fn local_addr(&self) -> std::io::Result<ListenAddr> {
        match self {
            Self::Tcp(l) => l.local_addr().map(ListenAddr::from),
            #[cfg(unix)]
            Self::Unix(l) => l.local_addr().map(ListenAddr::from),
        }
    }

    pub(crate) fn accept(&self) -> std::io::Result<(Connection, Option<SocketAddr>)> {
        match self {
            Self::Tcp(l) => l
                .accept()
                .map(|(conn, addr)| (Connection::from(conn), Some(addr))),
            #[cfg(unix)]
            Self::Unix(l) => l.accept().map(|(conn, _)| (Connection::from(conn), None)),
        }
    }
}
impl From<TcpListener> for Listener {
    fn from(s: TcpListener) -> Self {
        Self::Tcp(s)
    }
}
#[cfg(unix)]
impl From<unix_net::UnixListener> for Listener {
    fn from(s: unix_net::UnixListener) -> Self {
        Self::Unix(s)
    }
}

/// Unified connection. Either a [`TcpStream`] or [`std::os::unix::net::UnixStream`].
#[derive(Debug)]
pub(crate) enum Connection {
    Tcp(TcpStream),
    #[cfg(unix)]
    Unix(unix_net::UnixStream),
}
/// modelmux: runs a receive or send again while it fails with `Interrupted` (EINTR). Linux
/// makes a blocking receive or send on a socket with a timeout (SO_RCVTIMEO, SO_SNDTIMEO, which
/// every connection has, see `apply_socket_limits`) fail with EINTR when the process was
/// stopped and continued (SIGSTOP or Ctrl-Z, then SIGCONT; a debugger or `strace -p`
/// attaching), even with no signal handler installed (signal(7)). Upstream passed the error up,
/// and every reader above (request head, bodies, the linger) took it for a broken connection:
/// an idle keep-alive connection was closed, a request body read failed. Retried here, under
/// every reader and writer of the connection (TLS included), nothing above ever sees it. The
/// retry waits a whole socket timeout again; only a stop of this process causes EINTR here,
/// so a peer cannot use that to keep a connection open.
fn retry_interrupted<T>(mut op: impl FnMut() -> std::io::Result<T>) -> std::io::Result<T> {
    loop {
        match op() {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            result => return result,
        }
    }
}

impl std::io::Read for Connection {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        // modelmux: EINTR retried (see `retry_interrupted`)
        retry_interrupted(|| match self {
            Self::Tcp(s) => s.read(buf),
            #[cfg(unix)]
            Self::Unix(s) => s.read(buf),
        })
    }
}
impl std::io::Write for Connection {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        // modelmux: EINTR retried (see `retry_interrupted`)
        retry_interrupted(|| match self {
            Self::Tcp(s) => s.write(buf),
            #[cfg(unix)]
            Self::Unix(s) => s.write(buf),
        })
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Self::Tcp(s) => s.flush(),
            #[cfg(unix)]
            Self::Unix(s) => s.flush(),
        }
    }
}
impl Connection {
    /// Gets the peer's address. Some for TCP, None for Unix sockets.
    pub(crate) fn peer_addr(&mut self) -> std::io::Result<Option<SocketAddr>> {
        match self {
            Self::Tcp(s) => s.peer_addr().map(Some),
            #[cfg(unix)]
            Self::Unix(_) => Ok(None),
        }
    }

    pub(crate) fn shutdown(&self, how: Shutdown) -> std::io::Result<()> {
        match self {
            Self::Tcp(s) => s.shutdown(how),
            #[cfg(unix)]
            Self::Unix(s) => s.shutdown(how),
        }
    }

    /// modelmux: applies the socket options from `crate::limits` to a freshly accepted
    /// connection: TCP_NODELAY (TCP only), a read timeout (the header-read timeout) and a write
    /// timeout (if configured). Upstream set none of these, so a silent or slow client could
    /// hold a connection thread forever. Failures are logged and otherwise ignored.
    pub(crate) fn apply_socket_limits(&self) {
        let read_timeout = crate::limits::header_read_timeout();
        let write_timeout = crate::limits::write_timeout();
        let result = match self {
            Self::Tcp(s) => s
                .set_nodelay(true)
                .and_then(|_| s.set_read_timeout(read_timeout))
                .and_then(|_| s.set_write_timeout(write_timeout)),
            #[cfg(unix)]
            Self::Unix(s) => s
                .set_read_timeout(read_timeout)
                .and_then(|_| s.set_write_timeout(write_timeout)),
        };
        if let Err(e) = result {
            log::debug!("Could not set socket options on accepted connection: {}", e);
        }
    }

    pub(crate) fn try_clone(&self) -> std::io::Result<Self> {
        match self {
            Self::Tcp(s) => s.try_clone().map(Self::from),
            #[cfg(unix)]
            Self::Unix(s) => s.try_clone().map(Self::from),
        }
    }
}
impl From<TcpStream> for Connection {
    fn from(s: TcpStream) -> Self {
        Self::Tcp(s)
    }
}
#[cfg(unix)]
impl From<unix_net::UnixStream> for Connection {
    fn from(s: unix_net::UnixStream) -> Self {
        Self::Unix(s)
    }
}

#[derive(Debug, Clone)]
pub enum ConfigListenAddr {
    IP(Vec<SocketAddr>),
    #[cfg(unix)]
    // TODO: use SocketAddr when bind_addr is stabilized
    Unix(std::path::PathBuf),
}
impl ConfigListenAddr {
    pub fn from_socket_addrs<A: ToSocketAddrs>(addrs: A) -> std::io::Result<Self> {
        addrs.to_socket_addrs().map(|it| Self::IP(it.collect()))
    }

    #[cfg(unix)]
    pub fn unix_from_path<P: Into<PathBuf>>(path: P) -> Self {
        Self::Unix(path.into())
    }

    pub(crate) fn bind(&self) -> std::io::Result<Listener> {
        match self {
            Self::IP(a) => TcpListener::bind(a.as_slice()).map(Listener::from),
            #[cfg(unix)]
            Self::Unix(a) => unix_net::UnixListener::bind(a).map(Listener::from),
        }
    }
}

/// Unified listen socket address. Either a [`SocketAddr`] or [`std::os::unix::net::SocketAddr`].
#[derive(Debug, Clone)]
pub enum ListenAddr {
    IP(SocketAddr),
    #[cfg(unix)]
    Unix(unix_net::SocketAddr),
}
impl ListenAddr {
    pub fn to_ip(self) -> Option<SocketAddr> {
        match self {
            Self::IP(s) => Some(s),
            #[cfg(unix)]
            Self::Unix(_) => None,
        }
    }

    /// Gets the Unix socket address.
    ///
    /// This is also available on non-Unix platforms, for ease of use, but always returns `None`.
    #[cfg(unix)]
    pub fn to_unix(self) -> Option<unix_net::SocketAddr> {
        match self {
            Self::IP(_) => None,
            Self::Unix(s) => Some(s),
        }
    }
    #[cfg(not(unix))]
    pub fn to_unix(self) -> Option<SocketAddr> {
        None
    }
}
impl From<SocketAddr> for ListenAddr {
    fn from(s: SocketAddr) -> Self {
        Self::IP(s)
    }
}
#[cfg(unix)]
impl From<unix_net::SocketAddr> for ListenAddr {
    fn from(s: unix_net::SocketAddr) -> Self {
        Self::Unix(s)
    }
}
impl std::fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::IP(s) => s.fmt(f),
            #[cfg(unix)]
            Self::Unix(s) => std::fmt::Debug::fmt(s, f),
        }
    }
}

/// modelmux: a handle on an accepted client connection (a duplicate of its socket), so the
/// application can close it after a response whose framing needs the close to end it (an
/// HTTP/1.0 body, a body cut short by a failing backend). Upstream offered no way to do this:
/// after `into_writer`, the connection stayed open for the next request.
#[derive(Debug)]
pub struct ConnectionHandle(Connection);

impl ConnectionHandle {
    pub(crate) fn new(conn: Connection) -> ConnectionHandle {
        ConnectionHandle(conn)
    }

    /// Shuts the connection down in both directions: the client sees the end of the stream and
    /// the connection's reader thread stops waiting for another request.
    pub fn close(&self) {
        let _ = self.0.shutdown(Shutdown::Both);
    }

    /// Ends the sending direction (FIN) while the connection can still read what the client
    /// sends, so a final answer is not destroyed by a reset.
    pub(crate) fn shutdown_write(&self) {
        let _ = self.0.shutdown(Shutdown::Write);
    }

    /// Sets the socket's read timeout (shared by every handle on the socket).
    pub(crate) fn set_read_timeout(&self, timeout: Option<std::time::Duration>) {
        let _ = match &self.0 {
            Connection::Tcp(s) => s.set_read_timeout(timeout),
            #[cfg(unix)]
            Connection::Unix(s) => s.set_read_timeout(timeout),
        };
    }
}

// modelmux: the application looks at the socket (a non-blocking `MSG_PEEK`) to learn whether a
// client whose request waits in a queue has hung up, so that request is dropped instead of being
// sent to a backend for nobody.
#[cfg(unix)]
impl std::os::unix::io::AsRawFd for ConnectionHandle {
    fn as_raw_fd(&self) -> std::os::unix::io::RawFd {
        match &self.0 {
            Connection::Tcp(s) => std::os::unix::io::AsRawFd::as_raw_fd(s),
            Connection::Unix(s) => std::os::unix::io::AsRawFd::as_raw_fd(s),
        }
    }
}
