//! Process lifecycle: signals (drain on SIGTERM/SIGINT, reload on SIGHUP), config file watching,
//! the descriptor limit, and the other libc calls (listen backlog, a peek at a client socket,
//! heap trim, the usage ledger's writer lock).

use crate::backend::live::ConfigStore;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant, SystemTime};

/// Tells the server to stop accepting and drain.
#[derive(Default)]
pub struct Stopper {
    stopping: AtomicBool,
    server: Mutex<Option<Arc<tiny_http::Server>>>,
    stopped: Condvar,
    /// What the thread in `wait` does meanwhile: take the signals and watch the config file.
    duty: Mutex<Option<Duty>>,
}

/// The signals and the config file, looked after by the thread that waits for the stop (the
/// main thread) instead of two threads of their own: an idle process has two threads fewer.
struct Duty {
    shared: Arc<ConfigStore>,
    /// How often the config file is looked at; zero: never.
    watch: Duration,
}

impl Stopper {
    /// Registers the server whose `recv()` must be woken on stop.
    pub fn attach(&self, server: Arc<tiny_http::Server>) {
        if let Ok(mut g) = self.server.lock() {
            *g = Some(server);
        }
    }

    /// Makes `wait` take SIGTERM/SIGINT (a drain) and SIGHUP (a reload), and reload the config
    /// when its file's modification time or size changes, looked at every `watch` (zero:
    /// never), so a Kubernetes ConfigMap update takes effect without a restart. Signals must
    /// be blocked in every thread (`block_signals` before any is spawned).
    pub fn handle_signals(&self, shared: Arc<ConfigStore>, watch: Duration) {
        if let Ok(mut g) = self.duty.lock() {
            *g = Some(Duty { shared, watch });
        }
    }

    /// Starts a graceful stop.
    pub fn stop(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        if let Ok(g) = self.server.lock() {
            if let Some(s) = g.as_ref() {
                s.stop_accepting();
                s.unblock();
            }
            self.stopped.notify_all();
        }
    }

    /// Blocks until `stop` has been called (with `handle_signals`: until a stop signal).
    pub fn wait(&self) {
        let duty = self.duty.lock().ok().and_then(|mut g| g.take());
        if let Some(duty) = duty {
            self.serve_signals(&duty);
        }
        let Ok(mut g) = self.server.lock() else {
            return;
        };
        while !self.stopping() {
            g = match self.stopped.wait(g) {
                Ok(g) => g,
                Err(_) => return,
            };
        }
    }

    /// Reloads on SIGHUP and on a changed config file until SIGTERM or SIGINT stops the server.
    fn serve_signals(&self, duty: &Duty) {
        let set = signal_set();
        let watching = !duty.watch.is_zero();
        let mut last = stamp(&duty.shared.path);
        let mut next_look = Instant::now() + duty.watch;
        while !self.stopping() {
            let wait = watching.then(|| next_look.saturating_duration_since(Instant::now()));
            match next_signal(&set, wait) {
                Some(libc::SIGHUP) => {
                    log::info!("SIGHUP: reloading {}", duty.shared.path);
                    reload_and_log(&duty.shared);
                }
                Some(sig) if sig == libc::SIGTERM || sig == libc::SIGINT => {
                    log::info!(
                        "signal {}: no longer accepting; draining in-flight requests",
                        sig
                    );
                    self.stop();
                }
                _ => {}
            }
            if watching && Instant::now() >= next_look {
                next_look = Instant::now() + duty.watch;
                let now = stamp(&duty.shared.path);
                if now.is_some() && now != last {
                    log::info!(
                        "config file {} changed on disk: reloading",
                        duty.shared.path
                    );
                    reload_and_log(&duty.shared);
                    last = now;
                }
            }
        }
    }

    /// True once a stop was requested.
    pub fn stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }
}

/// The config file's modification time and size, if it can be read.
fn stamp(path: &str) -> Option<(SystemTime, u64)> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len()))
}

/// The next blocked signal of `set` taken, waiting at most `timeout` (`None`: for ever);
/// `None` when the time ran out or the wait was interrupted.
fn next_signal(set: &libc::sigset_t, timeout: Option<Duration>) -> Option<libc::c_int> {
    let mut sig: libc::c_int = 0;
    let rc = match timeout {
        // SAFETY: waits on a valid set; writes the signal number into `sig`.
        None => unsafe { libc::sigwait(set, &mut sig) },
        Some(t) => {
            // Whole seconds capped where every time_t (32-bit on some targets) holds them.
            let ts = libc::timespec {
                tv_sec: t.as_secs().min(i32::MAX as u64) as _,
                tv_nsec: t.subsec_nanos() as _,
            };
            // SAFETY: waits on a valid set with a valid timeout; no siginfo is asked for.
            let n = unsafe { libc::sigtimedwait(set, std::ptr::null_mut(), &ts) };
            sig = n;
            if n < 0 {
                -1
            } else {
                0
            }
        }
    };
    (rc == 0).then_some(sig)
}

fn signal_set() -> libc::sigset_t {
    // SAFETY: sigemptyset/sigaddset only write the set we own.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGHUP);
        set
    }
}

/// Blocks SIGTERM, SIGINT and SIGHUP in this thread and every thread it spawns later, so that
/// one thread (the one in `Stopper::wait`) can take them with `sigwait` (no
/// async-signal-safety pitfalls).
/// Call before spawning any thread.
pub fn block_signals() {
    let set = signal_set();
    // SAFETY: plain libc call on a valid set.
    unsafe {
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
}

fn reload_and_log(shared: &ConfigStore) {
    if let Err(e) = shared.reload() {
        log::error!("reload failed, keeping the old config: {}", e);
    }
}

/// Raises the listen backlog: std listens with 128, and a burst of clients (a UI reconnecting
/// hundreds of streams) would overflow it and see resets. Linux lets listen() raise it in place.
pub fn deepen_backlog(listener: &std::net::TcpListener) {
    use std::os::fd::AsRawFd;
    // SAFETY: listen() on a socket we own; failure just keeps the old backlog.
    unsafe {
        libc::listen(listener.as_raw_fd(), 4096);
    }
}

/// The host's name (a Kubernetes pod's name), if it has one.
pub fn hostname() -> Option<String> {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname writes at most that many bytes.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    let len = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    let name = String::from_utf8_lossy(&buf[..len]).trim().to_string();
    (rc == 0 && !name.is_empty()).then_some(name)
}

/// Raises the soft descriptor limit to the hard limit: each stream holds two sockets.
pub fn raise_fd_limit() {
    // SAFETY: getrlimit/setrlimit on a struct we own.
    unsafe {
        let mut lim: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            let old = lim.rlim_cur;
            lim.rlim_cur = lim.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) == 0 {
                log::debug!(
                    "raised the open-file limit from {} to {}",
                    old,
                    lim.rlim_cur
                );
            }
        }
    }
}

/// True when the client of this connection closed its side (EOF) or reset it: a request that
/// waits for a capped backend is then dropped instead of sent for nobody. Looks with a
/// non-blocking `MSG_PEEK`, so a byte the client sent (a pipelined next request) stays for the
/// connection to read, and a client that is simply waiting costs one system call. A client that
/// half-closes its sending side after a complete request counts as gone.
pub fn client_gone(connection: &tiny_http::ConnectionHandle) -> bool {
    use std::os::fd::AsRawFd;
    let mut byte = 0u8;
    // SAFETY: recv() into a one-byte buffer we own, on a descriptor `connection` keeps open.
    let n = unsafe {
        libc::recv(
            connection.as_raw_fd(),
            (&mut byte as *mut u8).cast(),
            1,
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    match n {
        0 => true,
        n if n > 0 => false,
        _ => !matches!(
            std::io::Error::last_os_error().kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted
        ),
    }
}

/// The size from which glibc serves a block with its own `mmap` (returned to the system when
/// freed): its starting value, kept fixed.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const MMAP_THRESHOLD: libc::c_int = 128 * 1024;

/// Keeps glibc from moving large blocks into its heaps for good. By default, freeing an
/// `mmap`ed block raises the threshold to that block's size (and the heap trim threshold to
/// twice it): once the limits store's table of 100,000 identities (about 12 MiB) was freed when
/// a minute ended under load, the next such table came from a thread's heap, and a thread heap's
/// free top is returned neither by `free` (below the raised trim threshold) nor by
/// `malloc_trim`, so a burst of invented identities left ~12 MiB resident for good. Setting the
/// threshold turns that adjustment off: big blocks always go back when freed, and heaps shrink
/// once 128 KiB is free at their top. Called at start, before any large block is freed.
pub fn pin_malloc_thresholds() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets a tunable of the allocator; a rejected value leaves the default.
    unsafe {
        if libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD) != 1 {
            log::warn!("mallopt(M_MMAP_THRESHOLD) refused; freed memory may stay with the process");
        }
    }
}

/// glibc keeps freed small blocks for reuse and returns pages to the system only from the top of
/// each heap; after a burst of identities is forgotten, ask it to return every free page (musl
/// returns them itself).
pub fn trim_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks the allocator's own free lists.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Takes an exclusive advisory lock (`flock`) on `file` without waiting: `Ok(false)` when
/// another open file holds it. The lock lasts until the file is closed, and ends with the
/// process however it ends (even `kill -9`), so no stale lock is ever left behind.
pub fn try_lock_exclusive(file: &std::fs::File) -> std::io::Result<bool> {
    use std::os::fd::AsRawFd;
    // SAFETY: flock() on a descriptor we own, kept open by the caller.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc == 0 {
        return Ok(true);
    }
    let e = std::io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
        Ok(false)
    } else {
        Err(e)
    }
}

/// Tells, without a system call that walks the path, whether a file opened at a path may no
/// longer be the one the path names: an inotify watch on the file for a move, a change of its
/// link count (deleted, or replaced by a rename over it) or its removal. The kernel queues the
/// event before `rename`/`unlink` returns, so a check after those calls sees it. A `stat` per
/// check would cost a path walk and, on file systems with fine-grained timestamps, make the
/// next append update the inode (a journal entry) every time.
pub struct FileWatch(std::os::fd::OwnedFd);

impl FileWatch {
    /// Watches the file `path` names now; `None` when inotify is not available (the caller
    /// then looks at the path itself).
    #[cfg(target_os = "linux")]
    pub fn new(path: &std::path::Path) -> Option<FileWatch> {
        use std::os::fd::FromRawFd;
        use std::os::unix::ffi::OsStrExt;
        let c_path = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
        // SAFETY: inotify_init1 returns a new descriptor (or -1), owned by the OwnedFd below.
        let fd = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
        if fd < 0 {
            return None;
        }
        // SAFETY: `fd` is a descriptor we just opened and own from here on.
        let owned = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
        let mask = libc::IN_MOVE_SELF | libc::IN_ATTRIB | libc::IN_DELETE_SELF;
        // SAFETY: a NUL-terminated path and a descriptor we own.
        let wd = unsafe { libc::inotify_add_watch(fd, c_path.as_ptr(), mask) };
        (wd >= 0).then_some(FileWatch(owned))
    }

    #[cfg(not(target_os = "linux"))]
    pub fn new(_path: &std::path::Path) -> Option<FileWatch> {
        None
    }

    /// True when an event came since the last call (or the watch cannot be read): the caller
    /// looks at the path then. Reads every queued event, without waiting.
    pub fn fired(&self) -> bool {
        use std::os::fd::AsRawFd;
        let mut buf = [0u8; 512];
        let mut fired = false;
        loop {
            // SAFETY: read() into a buffer we own, on a descriptor we own.
            let n = unsafe { libc::read(self.0.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if n > 0 {
                fired = true;
                continue;
            }
            if n == 0 {
                return true;
            }
            let e = std::io::Error::last_os_error();
            return match e.kind() {
                std::io::ErrorKind::WouldBlock => fired,
                std::io::ErrorKind::Interrupted => continue,
                _ => true,
            };
        }
    }
}
