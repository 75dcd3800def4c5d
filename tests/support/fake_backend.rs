//! A raw-TCP fake backend for answers the mock backend cannot give: exact bytes (malformed,
//! interim, compressed) and pauses, scripted per request.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// One request the fake backend read.
#[derive(Clone, Debug)]
pub struct FakeReq {
    /// The request line, e.g. `POST /v1/chat/completions HTTP/1.1`.
    pub line: String,
    pub body: Vec<u8>,
}

impl FakeReq {
    /// The first message's content of a chat request ("" otherwise).
    pub fn content(&self) -> String {
        serde_json::from_slice::<serde_json::Value>(&self.body)
            .ok()
            .and_then(|v| v["messages"][0]["content"].as_str().map(str::to_string))
            .unwrap_or_default()
    }
}

/// What the fake backend does after reading a request.
pub enum Step {
    /// Write these bytes.
    Send(Vec<u8>),
    /// Wait this long.
    Pause(Duration),
}

pub type Script = dyn Fn(&FakeReq) -> Vec<Step> + Send + Sync;

/// A raw-TCP backend: per connection, reads requests (head and Content-Length body) one after
/// another and answers each with the steps its script returns. Connections stay open
/// (keep-alive) until the peer closes them.
pub struct FakeBackend {
    pub url: String,
    requests: Arc<Mutex<Vec<FakeReq>>>,
}

impl FakeBackend {
    pub fn start(script: impl Fn(&FakeReq) -> Vec<Step> + Send + Sync + 'static) -> FakeBackend {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", l.local_addr().unwrap());
        let requests = Arc::new(Mutex::new(Vec::new()));
        let script: Arc<Script> = Arc::new(script);
        let recorded = Arc::clone(&requests);
        std::thread::spawn(move || {
            for s in l.incoming().flatten() {
                let script = Arc::clone(&script);
                let recorded = Arc::clone(&recorded);
                std::thread::spawn(move || serve(s, &*script, &recorded));
            }
        });
        FakeBackend { url, requests }
    }

    pub fn requests(&self) -> Vec<FakeReq> {
        self.requests.lock().unwrap().clone()
    }
}

fn serve(s: TcpStream, script: &Script, recorded: &Mutex<Vec<FakeReq>>) {
    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
    let _ = s.set_nodelay(true);
    let mut w = match s.try_clone() {
        Ok(w) => w,
        Err(_) => return,
    };
    let mut r = BufReader::new(s);
    while let Some(req) = read_request(&mut r) {
        recorded.lock().unwrap().push(req.clone());
        for step in script(&req) {
            match step {
                Step::Send(bytes) => {
                    if w.write_all(&bytes).and_then(|_| w.flush()).is_err() {
                        return;
                    }
                }
                Step::Pause(d) => std::thread::sleep(d),
            }
        }
    }
}

pub fn read_request(r: &mut impl BufRead) -> Option<FakeReq> {
    let mut line = String::new();
    if r.read_line(&mut line).ok()? == 0 {
        return None;
    }
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        if r.read_line(&mut h).ok()? == 0 {
            return None;
        }
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        let (n, v) = h.split_once(':')?;
        headers.push((n.trim().to_ascii_lowercase(), v.trim().to_string()));
    }
    let len: usize = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0; len];
    r.read_exact(&mut body).ok()?;
    Some(FakeReq {
        line: line.trim_end().to_string(),
        body,
    })
}

pub fn chunk(data: &[u8]) -> Vec<u8> {
    [format!("{:x}\r\n", data.len()).as_bytes(), data, b"\r\n"].concat()
}
