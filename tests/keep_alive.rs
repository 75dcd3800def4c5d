//! Connections are independent: an accepted connection is served at once, whatever the other
//! open (idle, keep-alive) connections do.

mod support;

use std::io::{BufReader, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};
use support::*;

/// Rounds of simultaneous connections that each send `GET /health` and then stay open and idle.
/// A connection's thread is busy for as long as the connection is open, so a connection handed to
/// a worker that is already taken (tiny_http's task pool queued two connections for one waking
/// worker) is answered only when another connection closes: here, never within the round.
#[test]
fn simultaneous_idle_keep_alive_connections_are_each_answered_at_once() {
    raise_fd_limit();
    let p = Proxy::start(&config_for(&[("m", "http://127.0.0.1:9", "k", "m")]));
    const ROUNDS: usize = 300;
    const CONNS: usize = 32;
    // Generous against a loaded machine; a lost wake-up waits until the round ends (forever).
    let within = Duration::from_secs(5);
    let start = Instant::now();
    let mut previous: Vec<TcpStream> = Vec::new();
    for round in 0..ROUNDS {
        // Each new connection is opened right after one of the previous round is closed, so the
        // pool has few idle workers (those just freed) while connections arrive back to back.
        let mut closing = std::mem::take(&mut previous).into_iter();
        let mut conns: Vec<TcpStream> = (0..CONNS)
            .map(|_| {
                drop(closing.next());
                TcpStream::connect(p.addr).unwrap()
            })
            .collect();
        for c in &mut conns {
            c.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
                .unwrap();
        }
        let sent = Instant::now();
        for (i, c) in conns.iter().enumerate() {
            let left = within
                .saturating_sub(sent.elapsed())
                .max(Duration::from_millis(1));
            c.set_read_timeout(Some(left)).unwrap();
            let resp = read_response(&mut BufReader::new(c), false).unwrap_or_else(|e| {
                panic!(
                    "round {}: connection {} of {} unanswered after {:?} while the others stay open: {}",
                    round,
                    i,
                    CONNS,
                    sent.elapsed(),
                    e
                )
            });
            assert_eq!(resp.status, 200, "round {} connection {}", round, i);
        }
        // Every connection stays open (idle, keep-alive) until all of the round are answered.
        previous = conns;
    }
    eprintln!(
        "{} rounds of {} connections in {:?}",
        ROUNDS,
        CONNS,
        start.elapsed()
    );
}
