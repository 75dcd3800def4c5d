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
///
/// The lost wake-up needs a few idle workers and a burst of connections: a fresh proxy's pool
/// (4 idle threads) or one back from a quiet spell (idle threads beyond 4 exit after 5 s). So
/// each of several proxies starts with a burst of 32; its later rounds open each connection right
/// after closing one of the round before, so few workers are idle as connections arrive.
#[test]
fn simultaneous_idle_keep_alive_connections_are_each_answered_at_once() {
    raise_fd_limit();
    const PROXIES: usize = 10;
    const ROUNDS: usize = 30;
    const CONNS: usize = 32;
    // Generous against a loaded machine; a lost wake-up waits until the round ends (forever).
    let within = Duration::from_secs(5);
    let start = Instant::now();
    let config = config_for(&[("m", "http://127.0.0.1:9", "k", "m")]);
    for proxy in 0..PROXIES {
        let p = Proxy::start(&config);
        let mut previous: Vec<TcpStream> = Vec::new();
        for round in 0..ROUNDS {
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
                        "proxy {} round {}: connection {} of {} unanswered after {:?} while the others stay open: {}",
                        proxy,
                        round,
                        i,
                        CONNS,
                        sent.elapsed(),
                        e
                    )
                });
                assert_eq!(
                    resp.status, 200,
                    "proxy {} round {} connection {}",
                    proxy, round, i
                );
            }
            // Every connection stays open (idle, keep-alive) until all of the round are answered.
            previous = conns;
        }
    }
    eprintln!(
        "{} rounds of {} connections in {:?}",
        PROXIES * ROUNDS,
        CONNS,
        start.elapsed()
    );
}
