//! A real `redis-server` for tests (Debian package `redis-server`; `.ci/run` installs it): on a
//! free loopback port, no persistence, in a scratch directory, killed on drop. Shared by the
//! integration tests (`support::redis`) and the unit tests of `src/policy/redis_store.rs`.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A `redis-server` process this test started, and only that one.
pub struct RedisServer {
    port: u16,
    dir: PathBuf,
    args: Vec<String>,
    /// (certificate, key) PEM files when the server speaks only TLS.
    tls: Option<(PathBuf, PathBuf)>,
    child: Option<Child>,
}

impl RedisServer {
    /// Starts a server; panics (failing the test) when `redis-server` is not installed.
    pub fn start() -> RedisServer {
        RedisServer::start_with(&[])
    }

    /// Starts a server with extra arguments, e.g. `["--requirepass", "secret"]`.
    pub fn start_with(args: &[&str]) -> RedisServer {
        RedisServer::launch(args, None)
    }

    /// Starts a server that speaks only TLS (`rediss://`) with this certificate and key (PEM).
    pub fn start_tls(cert_pem: &str, key_pem: &str) -> RedisServer {
        RedisServer::launch(&[], Some((cert_pem, key_pem)))
    }

    fn launch(args: &[&str], tls: Option<(&str, &str)>) -> RedisServer {
        let dir = std::env::temp_dir().join(format!(
            "modelmux-redis-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::create_dir_all(&dir).expect("create the redis scratch directory");
        let tls = tls.map(|(cert, key)| {
            let files = (dir.join("cert.pem"), dir.join("key.pem"));
            std::fs::write(&files.0, cert).expect("write the certificate");
            std::fs::write(&files.1, key).expect("write the key");
            files
        });
        let mut server = RedisServer {
            port: 0,
            dir,
            args: args.iter().map(|a| a.to_string()).collect(),
            tls,
            child: None,
        };
        // Another process may take the port between our probe and redis binding it: try again.
        for _ in 0..5 {
            server.port = free_port();
            if server.spawn() {
                return server;
            }
        }
        panic!("redis-server did not start on a free port after 5 tries");
    }

    /// `redis://127.0.0.1:PORT/0`, or `rediss://localhost:PORT/0` for a TLS server (no
    /// password: add it yourself for `--requirepass`).
    pub fn url(&self) -> String {
        match self.tls {
            None => format!("redis://127.0.0.1:{}/0", self.port),
            Some(_) => format!("rediss://localhost:{}/0", self.port),
        }
    }

    /// The certificate file of a TLS server, to trust as its CA.
    pub fn cert_file(&self) -> Option<&std::path::Path> {
        self.tls.as_ref().map(|(cert, _)| cert.as_path())
    }

    /// The port, which stays the same across `restart`.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Kills the server (SIGKILL to its own pid) and waits for it to be gone.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Freezes the server (SIGSTOP to its own pid): connections are accepted by the kernel
    /// and commands are buffered, but nothing is answered until `resume`.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// Lets a paused server run again (SIGCONT); it then runs what was buffered meanwhile.
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, sig: &str) {
        let pid = self.child.as_ref().expect("the server is running").id();
        let ok = Command::new("kill")
            .args([sig, &pid.to_string()])
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(ok, "kill {} {} failed", sig, pid);
    }

    /// Starts it again on the same port, empty (nothing is saved).
    pub fn restart(&mut self) {
        self.stop();
        assert!(
            self.spawn(),
            "redis-server did not come back on port {}",
            self.port
        );
    }

    /// Runs one command over a raw socket and returns the first line of the reply
    /// (e.g. `+PONG`, `:42`); enough for tests to look at keys.
    pub fn command(&self, parts: &[&str]) -> String {
        let mut req = format!("*{}\r\n", parts.len());
        for p in parts {
            req.push_str(&format!("${}\r\n{}\r\n", p.len(), p));
        }
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).expect("connect to redis");
        s.set_read_timeout(Some(Duration::from_secs(5))).ok();
        s.write_all(req.as_bytes()).expect("write to redis");
        let mut buf = Vec::new();
        let mut byte = [0u8; 1];
        while !buf.ends_with(b"\r\n") {
            match s.read(&mut byte) {
                Ok(1) => buf.push(byte[0]),
                _ => break,
            }
        }
        String::from_utf8_lossy(&buf).trim_end().to_string()
    }

    /// Starts watching every command clients send (`MONITOR`), until `Monitor::stop`.
    pub fn monitor(&self) -> Monitor {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).expect("connect to redis");
        s.set_read_timeout(Some(Duration::from_secs(10))).ok();
        s.write_all(b"MONITOR\r\n").expect("write to redis");
        let mut r = std::io::BufReader::new(s);
        let mut ok = String::new();
        std::io::BufRead::read_line(&mut r, &mut ok).expect("MONITOR answers");
        assert_eq!(ok.trim_end(), "+OK");
        let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = std::sync::Arc::clone(&lines);
        let reader = std::thread::spawn(move || loop {
            let mut line = String::new();
            match std::io::BufRead::read_line(&mut r, &mut line) {
                Ok(0) | Err(_) => panic!("MONITOR ended before its marker"),
                Ok(_) => {}
            }
            if line.contains("\"modelmux-test-monitor-end\"") {
                return;
            }
            // Commands a script runs are not round trips.
            if !line.contains(" lua] ") {
                seen.lock().unwrap().push(line.trim_end().to_string());
            }
        });
        Monitor { reader, lines }
    }

    /// Starts the process and waits until it answers PING; false if it exited first.
    fn spawn(&mut self) -> bool {
        let port = self.port.to_string();
        let dir = self.dir.to_string_lossy().to_string();
        let mut cmd = Command::new("redis-server");
        cmd.args(["--bind", "127.0.0.1", "--dir", &dir]).args([
            "--save",
            "",
            "--appendonly",
            "no",
            "--daemonize",
            "no",
        ]);
        match &self.tls {
            None => cmd.args(["--port", &port]),
            Some((cert, key)) => cmd
                .args([
                    "--port",
                    "0",
                    "--tls-port",
                    &port,
                    "--tls-auth-clients",
                    "no",
                ])
                .arg("--tls-cert-file")
                .arg(cert)
                .arg("--tls-key-file")
                .arg(key)
                .arg("--tls-ca-cert-file")
                .arg(cert),
        };
        cmd.args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => panic!(
                "cannot run redis-server ({}): install the Debian package redis-server \
                 (apt-get install -y redis-server; .ci/run does)",
                e
            ),
        };
        let end = Instant::now() + Duration::from_secs(10);
        while Instant::now() < end {
            if let Ok(Some(_)) = child.try_wait() {
                return false;
            }
            // A TLS server does not answer a plain PING; it listens once it has loaded.
            let up = match self.tls {
                // The port may have been taken meanwhile by another test's server: only our
                // own process counts as up.
                None => answers_as(self.port, child.id()),
                Some(_) => TcpStream::connect(("127.0.0.1", self.port)).is_ok(),
            };
            if up {
                self.child = Some(child);
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        false
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A loopback port nobody listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind a free loopback port")
}

/// True when the server on `port` answers and is the process `pid`.
fn answers_as(port: u16, pid: u32) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    s.set_read_timeout(Some(Duration::from_millis(500))).ok();
    if s.write_all(b"INFO server\r\n").is_err() {
        return false;
    }
    let mut buf = vec![0u8; 8192];
    let mut got = 0;
    let want = format!("process_id:{}\r\n", pid);
    while got < buf.len() {
        match s.read(&mut buf[got..]) {
            Ok(0) | Err(_) => break,
            Ok(n) => got += n,
        }
        let text = String::from_utf8_lossy(&buf[..got]);
        // A server with --requirepass answers -NOAUTH and cannot say who it is; the caller's
        // try_wait has seen our process alive, and another test's server would have a
        // different password.
        if text.starts_with("-NOAUTH") || text.contains(&want) {
            return true;
        }
        if text.contains("process_id:") && text.contains("\r\n\r\n") {
            return false;
        }
    }
    false
}

/// Commands seen by `MONITOR`.
pub struct Monitor {
    reader: std::thread::JoinHandle<()>,
    lines: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl Monitor {
    /// Waits up to `within` for `n` commands from clients (each one round trip), then a moment
    /// for any more, and stops: the commands seen, as MONITOR prints them.
    pub fn stop_after(self, server: &RedisServer, n: usize, within: Duration) -> Vec<String> {
        let end = Instant::now() + within;
        while self.lines.lock().unwrap().len() < n && Instant::now() < end {
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(Duration::from_millis(200));
        server.command(&["ECHO", "modelmux-test-monitor-end"]);
        self.reader.join().expect("the MONITOR reader");
        let lines = self.lines.lock().unwrap().clone();
        lines
    }
}
