//! Quota counters in Redis or Valkey, so every replica enforces one budget.
//!
//! Check-and-add is one Lua script over every key of every matching bucket, and the windows come
//! from the server's clock (`TIME`), so replicas with skewed clocks still agree on them. Counter
//! keys are `modelmux:quota:<bucket>:<counter>:<window>` and expire a minute after their window.
//! Only the synchronous client, no cluster: the scripts build key names from the server's time,
//! which a cluster (keys declared up front) would not route.

use crate::policy::store::{Ask, Counts, Outcome, Snapshot, StoreError};
use crate::policy::windows::Windows;
use redis::{Connection, ConnectionLike, RedisResult, Script};
use std::fmt;
use std::sync::Mutex;
use std::time::Duration;

/// Connect, read and write timeout: a slow store must not stall requests for long.
const TIMEOUT: Duration = Duration::from_secs(2);
/// Connections kept open for reuse.
const MAX_IDLE: usize = 8;
const PREFIX: &str = "modelmux:quota:";
/// Counter key parts in `store::Counts` order; the window number follows.
const NAMES: [&str; 4] = ["req:m:", "tok:m:", "tok:d:", "tok:mo:"];

/// The UTC windows of a unix time, the same arithmetic as `windows.rs` (tested against it).
const WINDOWS_LUA: &str = r#"
local function idiv(a, b) return (a - a % b) / b end
local function windows(now)
  local day = idiv(now, 86400)
  local z = day + 719468
  local era = idiv(z, 146097)
  local doe = z - era * 146097
  local yoe = idiv(doe - idiv(doe, 1460) + idiv(doe, 36524) - idiv(doe, 146096), 365)
  local doy = doe - (365 * yoe + idiv(yoe, 4) - idiv(yoe, 100))
  local mp = idiv(5 * doy + 2, 153)
  local m = mp < 10 and mp + 3 or mp - 9
  local y = yoe + era * 400
  if m <= 2 then y = y + 1 end
  local ny, nm = y, m + 1
  if nm > 12 then ny, nm = y + 1, 1 end
  local yy = ny
  if nm <= 2 then yy = yy - 1 end
  local era2 = idiv(yy, 400)
  local yoe2 = yy - era2 * 400
  local mp2 = nm > 2 and nm - 3 or nm + 9
  local doe2 = yoe2 * 365 + idiv(yoe2, 4) - idiv(yoe2, 100) + idiv(153 * mp2 + 2, 5)
  return idiv(now, 60), day, y * 12 + m - 1, (era2 * 146097 + doe2 - 719468) * 86400
end
local NAMES = {'req:m:', 'tok:m:', 'tok:d:', 'tok:mo:'}
local function clock()
  local t = redis.call('TIME')
  local now = tonumber(t[1])
  local minute, day, month, month_end = windows(now)
  local e = (minute + 1) * 60
  return now, {minute, minute, day, month}, {e, e, (day + 1) * 86400, month_end}
end
"#;

/// KEYS: bucket key prefixes; ARGV[1]: tokens; then 4 limits per bucket (-1: none).
/// Returns {admitted, now, minute, day, month, counts before (4 per bucket)...}.
const RESERVE_LUA: &str = r#"
if redis.replicate_commands then redis.replicate_commands() end
local now, ids, ends = clock()
local tokens = tonumber(ARGV[1])
local adds = {1, tokens, tokens, tokens}
local out = {0, now, ids[1], ids[3], ids[4]}
local fits = true
for i, base in ipairs(KEYS) do
  for k = 1, 4 do
    local used = tonumber(redis.call('GET', base .. ':' .. NAMES[k] .. ids[k]) or '0')
    out[#out + 1] = used
    local limit = tonumber(ARGV[1 + (i - 1) * 4 + k])
    if limit >= 0 and used + adds[k] > limit then fits = false end
  end
end
if fits then
  out[1] = 1
  for _, base in ipairs(KEYS) do
    for k = 1, 4 do
      local key = base .. ':' .. NAMES[k] .. ids[k]
      redis.call('INCRBY', key, adds[k])
      redis.call('EXPIREAT', key, ends[k] + 60)
    end
  end
end
return out
"#;

/// KEYS: token counter keys of one reservation; ARGV[1]: signed delta. A key that expired
/// (its window ended) is not brought back; no counter goes below zero.
const ADJUST_LUA: &str = r#"
for _, key in ipairs(KEYS) do
  if redis.call('EXISTS', key) == 1 then
    local v = redis.call('INCRBY', key, ARGV[1])
    if v < 0 then redis.call('INCRBY', key, -v) end
  end
end
return 0
"#;

/// KEYS: bucket key prefixes. Returns {now, minute, day, month, counts (4 per bucket)...}.
const READ_LUA: &str = r#"
local now, ids = clock()
local out = {now, ids[1], ids[3], ids[4]}
for _, base in ipairs(KEYS) do
  for k = 1, 4 do
    out[#out + 1] = tonumber(redis.call('GET', base .. ':' .. NAMES[k] .. ids[k]) or '0')
  end
end
return out
"#;

/// A Redis-backed counter store with a few reusable connections.
pub struct RedisStore {
    client: redis::Client,
    /// host:port, for messages (the URL may hold a password).
    addr: String,
    idle: Mutex<Vec<Connection>>,
    reserve: Script,
    adjust: Script,
    read: Script,
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStore")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl RedisStore {
    /// A store for `redis://` or `rediss://` (TLS) `[user][:password@]host[:port][/db]`;
    /// connects on first use. TLS trusts the bundled web roots, or only the PEM bundle
    /// `ca_file` when given (a private Redis usually has its own CA).
    pub fn open(url: &str, ca_file: Option<&str>) -> Result<RedisStore, StoreError> {
        // The parser's messages do not repeat the URL, which may hold a password.
        let bad_url = |e: redis::RedisError| StoreError(format!("limitsStore: {}", e));
        let client = match ca_file {
            None => redis::Client::open(url).map_err(bad_url)?,
            Some(path) => {
                let pem = std::fs::read(path).map_err(|e| {
                    StoreError(format!(
                        "cannot read the limits store CA file {}: {}",
                        path, e
                    ))
                })?;
                let certs = redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(pem),
                };
                redis::Client::build_with_tls(url, certs).map_err(bad_url)?
            }
        };
        let addr = client.get_connection_info().addr().to_string();
        let script = |body: &str| Script::new(&format!("{}{}", WINDOWS_LUA, body));
        Ok(RedisStore {
            client,
            addr,
            idle: Mutex::new(Vec::new()),
            reserve: script(RESERVE_LUA),
            adjust: Script::new(ADJUST_LUA),
            read: script(READ_LUA),
        })
    }

    fn connect(&self) -> RedisResult<Connection> {
        let con = self.client.get_connection_with_timeout(TIMEOUT)?;
        con.set_read_timeout(Some(TIMEOUT))?;
        con.set_write_timeout(Some(TIMEOUT))?;
        Ok(con)
    }

    /// Runs `f` on a pooled or new connection. A pooled connection the server has dropped
    /// (e.g. Redis restarted) is retried once on a new one: the command never reached a live
    /// server, so running it again cannot count twice.
    fn with_conn<T>(&self, f: impl Fn(&mut Connection) -> RedisResult<T>) -> Result<T, StoreError> {
        let pooled = {
            let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
            std::iter::from_fn(|| idle.pop()).find(|c| c.is_open())
        };
        let result = match pooled {
            Some(mut con) => match f(&mut con) {
                Err(e) if e.is_connection_dropped() => self.fresh(&f),
                other => other.map(|v| (v, con)),
            },
            None => self.fresh(&f),
        };
        match result {
            Ok((v, con)) => {
                let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
                if idle.len() < MAX_IDLE && con.is_open() {
                    idle.push(con);
                }
                Ok(v)
            }
            Err(e) => Err(StoreError(format!("redis at {}: {}", self.addr, e))),
        }
    }

    fn fresh<T>(
        &self,
        f: &impl Fn(&mut Connection) -> RedisResult<T>,
    ) -> RedisResult<(T, Connection)> {
        let mut con = self.connect()?;
        f(&mut con).map(|v| (v, con))
    }

    /// Checks every bucket and, only if all fit, adds one request and `tokens` to each, in
    /// the windows of the server's clock.
    pub fn reserve(&self, asks: &[Ask], tokens: u64) -> Result<Outcome, StoreError> {
        let reply: Vec<i64> = self.with_conn(|con| {
            let mut call = self.reserve.prepare_invoke();
            call.arg(tokens);
            for a in asks {
                call.key(format!("{}{}", PREFIX, a.bucket));
                for l in a.limits {
                    call.arg(l.map_or(-1, |l| i64::try_from(l).unwrap_or(i64::MAX)));
                }
            }
            call.invoke(con)
        })?;
        let (head, counts) = split(&reply, 5, asks.len())?;
        Ok(Outcome {
            admitted: head[0] == 1,
            now: unsigned(head[1]),
            windows: windows(&head[2..5]),
            before: counts,
        })
    }

    /// Adds `delta` to the token counters of `buckets` in `windows`.
    pub fn adjust(&self, buckets: &[String], w: Windows, delta: i64) -> Result<(), StoreError> {
        let ids = [w.minute, w.minute, w.day, w.month];
        self.with_conn(|con| {
            let mut call = self.adjust.prepare_invoke();
            for b in buckets {
                for k in 1..4 {
                    call.key(format!("{}{}:{}{}", PREFIX, b, NAMES[k], ids[k]));
                }
            }
            call.arg(delta);
            call.invoke::<i64>(con)
        })
        .map(|_| ())
    }

    /// Takes one request off the minute counters of `buckets` in `windows` (the adjust script:
    /// an expired counter stays gone, none goes below zero).
    pub fn unrequest(&self, buckets: &[String], w: Windows) -> Result<(), StoreError> {
        self.with_conn(|con| {
            let mut call = self.adjust.prepare_invoke();
            for b in buckets {
                call.key(format!("{}{}:{}{}", PREFIX, b, NAMES[0], w.minute));
            }
            call.arg(-1);
            call.invoke::<i64>(con)
        })
        .map(|_| ())
    }

    /// The current counts of `buckets` by the server's clock.
    pub fn read(&self, buckets: &[String]) -> Result<Snapshot, StoreError> {
        let reply: Vec<i64> = self.with_conn(|con| {
            let mut call = self.read.prepare_invoke();
            for b in buckets {
                call.key(format!("{}{}", PREFIX, b));
            }
            call.invoke(con)
        })?;
        let (head, counts) = split(&reply, 4, buckets.len())?;
        Ok(Snapshot {
            now: unsigned(head[0]),
            counts,
        })
    }
}

fn unsigned(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

fn windows(ids: &[i64]) -> Windows {
    Windows {
        minute: unsigned(ids[0]),
        day: unsigned(ids[1]),
        month: unsigned(ids[2]),
    }
}

/// Splits a script reply into its `head` fields and 4 counts per bucket.
fn split(reply: &[i64], head: usize, buckets: usize) -> Result<(&[i64], Vec<Counts>), StoreError> {
    if reply.len() != head + 4 * buckets {
        return Err(StoreError(format!(
            "redis script answered {} numbers, expected {}",
            reply.len(),
            head + 4 * buckets
        )));
    }
    let counts = reply[head..]
        .chunks(4)
        .map(|c| {
            [
                unsigned(c[0]),
                unsigned(c[1]),
                unsigned(c[2]),
                unsigned(c[3]),
            ]
        })
        .collect();
    Ok((&reply[..head], counts))
}

#[cfg(test)]
#[path = "../../tests/support/redis.rs"]
mod test_server;

#[cfg(test)]
mod tests {
    use super::test_server::RedisServer;
    use super::*;
    use crate::policy::quota::{FailureMode, Quotas, Refusal};
    use crate::policy::rules::{parse_rules, Subject};
    use crate::policy::store::Store;
    use crate::policy::windows::{days_from_civil, window_end, Span};
    use serde_json::json;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;
    use std::time::{SystemTime, UNIX_EPOCH};

    fn ask(bucket: &str, limits: [Option<u64>; 4]) -> Ask {
        Ask {
            bucket: bucket.into(),
            limits,
        }
    }

    fn unix_now() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    fn who(user: &str) -> Subject {
        Subject {
            user: user.into(),
            key: "k".into(),
            model: "m".into(),
        }
    }

    /// Minutes end during a test now and then; retries once in a fresh minute.
    fn in_one_minute<T>(f: impl Fn() -> Option<T>) -> T {
        f().or_else(f).expect("two minute rollovers in a row")
    }

    #[test]
    fn lua_windows_agree_with_rust() {
        let server = RedisServer::start();
        let store = RedisStore::open(&server.url(), None).unwrap();
        let probe = Script::new(&format!(
            "{}local a, b, c, d = windows(tonumber(ARGV[1])) return {{a, b, c, d}}",
            WINDOWS_LUA
        ));
        let mut times = vec![0, 59, 60, 86_399, 86_400];
        for (y, m, d) in [
            (1970, 1, 1),
            (1972, 2, 29),
            (2000, 2, 29),
            (2000, 3, 1),
            (2023, 12, 31),
            (2024, 1, 1),
            (2024, 2, 29),
            (2024, 3, 1),
            (2025, 12, 31),
            (2100, 2, 28),
            (2100, 3, 1),
            (2400, 2, 29),
        ] {
            let t = days_from_civil(y, m, d) as u64 * 86_400;
            times.extend([t.saturating_sub(1), t, t + 1, t + 86_399]);
        }
        // Every month start over 30 years, and one second before it.
        let mut day = days_from_civil(2000, 1, 1);
        while day < days_from_civil(2030, 1, 1) {
            let t = day as u64 * 86_400;
            times.extend([t - 1, t]);
            day = (window_end(Span::Month, t) / 86_400) as i64;
        }
        for t in times {
            let got: Vec<i64> = store.with_conn(|con| probe.arg(t).invoke(con)).unwrap();
            let w = Windows::at(t);
            let want = [w.minute, w.day, w.month, window_end(Span::Month, t)];
            let want: Vec<i64> = want.iter().map(|v| *v as i64).collect();
            assert_eq!(got, want, "unix time {}", t);
        }
    }

    #[test]
    fn reserve_adjust_and_read_against_real_redis() {
        let server = RedisServer::start();
        let store = RedisStore::open(&server.url(), None).unwrap();
        let asks = [
            ask("u=ann", [Some(2), Some(100), None, None]),
            ask("all", [None, None, Some(1000), None]),
        ];
        in_one_minute(|| {
            server.command(&["FLUSHALL"]);
            let o = store.reserve(&asks, 60).unwrap();
            assert!(o.admitted);
            assert!(o.now.abs_diff(unix_now()) < 5, "the server's clock");
            assert_eq!(o.windows, Windows::at(o.now));
            assert_eq!(o.before, vec![[0; 4], [0; 4]]);
            // 60 + 60 > 100: nothing is added anywhere.
            let o2 = store.reserve(&asks, 60).unwrap();
            assert!(!o2.admitted);
            assert_eq!(o2.before, vec![[1, 60, 60, 60], [1, 60, 60, 60]]);
            if o2.windows != o.windows {
                return None;
            }
            store
                .adjust(&["u=ann".into(), "all".into()], o.windows, -20)
                .unwrap();
            let snap = store
                .read(&["u=ann".into(), "all".into(), "none".into()])
                .unwrap();
            if Windows::at(snap.now) != o.windows {
                return None;
            }
            assert_eq!(snap.counts, vec![[1, 40, 40, 40], [1, 40, 40, 40], [0; 4]]);
            // Never below zero.
            store.adjust(&["all".into()], o.windows, -1_000).unwrap();
            assert_eq!(
                store.read(&["all".into()]).unwrap().counts,
                vec![[1, 0, 0, 0]]
            );
            // A refusal takes its request back, once.
            store.unrequest(&["u=ann".into()], o.windows).unwrap();
            store.unrequest(&["u=ann".into()], o.windows).unwrap();
            assert_eq!(
                store.read(&["u=ann".into()]).unwrap().counts,
                vec![[0, 40, 40, 40]]
            );
            Some(())
        });
    }

    #[test]
    fn keys_expire_after_their_window_and_ended_windows_are_not_revived() {
        let server = RedisServer::start();
        let store = RedisStore::open(&server.url(), None).unwrap();
        let o = store.reserve(&[ask("u=ann", [None; 4])], 5).unwrap();
        let ttl = |key: String| -> i64 {
            let reply = server.command(&["TTL", &key]);
            reply.trim_start_matches(':').parse().unwrap()
        };
        let key = |name: &str, id: u64| format!("{}u=ann:{}{}", PREFIX, name, id);
        let minute = ttl(key("req:m:", o.windows.minute));
        assert!((1..=120).contains(&minute), "minute key ttl {}", minute);
        let day = ttl(key("tok:d:", o.windows.day));
        assert!((1..=86_460).contains(&day), "day key ttl {}", day);
        let month = ttl(key("tok:mo:", o.windows.month));
        assert!(
            (1..=31 * 86_400 + 60).contains(&month),
            "month key ttl {}",
            month
        );
        // Settling into a window whose keys are gone does not bring them back without a TTL.
        let old = Windows {
            minute: o.windows.minute - 10,
            day: o.windows.day - 10,
            month: o.windows.month - 10,
        };
        store.adjust(&["u=ann".into()], old, 50).unwrap();
        assert_eq!(server.command(&["EXISTS", &key("tok:d:", old.day)]), ":0");
    }

    #[test]
    fn two_replicas_enforce_one_budget() {
        let server = RedisServer::start();
        let rules = json!([{"match": {"user": "*"}, "tokensPerDay": 2000}]);
        let replica = || {
            Arc::new(Quotas::new(
                parse_rules(&rules).unwrap(),
                Store::redis(&server.url(), None).unwrap(),
                FailureMode::Closed,
            ))
        };
        let (a, b) = (replica(), replica());
        let admitted = Arc::new(AtomicU64::new(0));
        let threads: Vec<_> = (0..16)
            .map(|i| {
                let q = if i % 2 == 0 {
                    Arc::clone(&a)
                } else {
                    Arc::clone(&b)
                };
                let admitted = Arc::clone(&admitted);
                std::thread::spawn(move || {
                    for _ in 0..15 {
                        let est = 13 + i * 7;
                        match q.reserve(&who("ann"), est, 0) {
                            Ok(r) => {
                                admitted.fetch_add(est, Ordering::SeqCst);
                                r.settle(est);
                            }
                            Err(Refusal::Limited(d)) => assert_eq!(d.limit, "tokens_per_day"),
                            Err(other) => panic!("{:?}", other),
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let total = admitted.load(Ordering::SeqCst);
        assert!(total <= 2000, "two replicas admitted {} of 2000", total);
        // Every thread kept trying, so what is left is below the largest estimate (118).
        assert!(
            total > 2000 - 118,
            "the budget should be nearly used, got {}",
            total
        );
        let left = a.status(&who("ann"), 0).unwrap()[0].budgets[0].remaining;
        assert_eq!(left, 2000 - total, "both replicas see the same counters");
        assert_eq!(
            b.status(&who("ann"), 0).unwrap()[0].budgets[0].remaining,
            left
        );
        // Another user is untouched.
        b.reserve(&who("bob"), 2000, 0).unwrap().settle(1);
    }

    #[test]
    fn settle_and_release_through_quotas() {
        let server = RedisServer::start();
        let q = Quotas::new(
            parse_rules(&json!([{"match": {"user": "*"}, "tokensPerMonth": 1000}])).unwrap(),
            Store::redis(&server.url(), None).unwrap(),
            FailureMode::Open,
        );
        let remaining = || q.status(&who("ann"), 0).unwrap()[0].budgets[0].remaining;
        let r = q.reserve(&who("ann"), 400, 0).unwrap();
        assert_eq!(remaining(), 600);
        r.settle(100);
        assert_eq!(remaining(), 900);
        q.reserve(&who("ann"), 300, 0).unwrap().release();
        assert_eq!(remaining(), 900);
        q.reserve(&who("ann"), 10, 0).unwrap().settle(500);
        assert_eq!(remaining(), 400);
        match q.reserve(&who("ann"), 401, 0) {
            Err(Refusal::Limited(d)) => {
                assert_eq!(
                    (d.limit, d.code),
                    ("tokens_per_month", "insufficient_quota")
                );
                let left = window_end(Span::Month, unix_now()) - unix_now();
                assert!(d.retry_after_secs.abs_diff(left) < 5, "{:?}", d);
            }
            other => panic!("{:?}", other),
        }
        assert_eq!(q.store_failures(), 0);
    }

    #[test]
    fn redis_down_is_an_error_value_and_it_recovers() {
        let mut server = RedisServer::start();
        let store = RedisStore::open(&server.url(), None).unwrap();
        let asks = [ask("u=ann", [None, None, Some(100), None])];
        assert!(store.reserve(&asks, 10).unwrap().admitted);
        server.stop();
        let e = store.reserve(&asks, 10).unwrap_err();
        assert!(
            e.0.starts_with(&format!("redis at 127.0.0.1:{}: ", server.port())),
            "{}",
            e
        );
        assert!(store.read(&["u=ann".into()]).is_err());
        server.restart();
        // The pooled connection died with the old server; the store reconnects by itself.
        let o = store.reserve(&asks, 10).unwrap();
        assert!(o.admitted);
        assert_eq!(
            o.before,
            vec![[0; 4]],
            "a restarted Redis without persistence is empty"
        );
    }

    #[test]
    fn failure_modes_open_admits_and_closed_refuses() {
        let mut server = RedisServer::start();
        let rules =
            parse_rules(&json!([{"match": {"user": "*"}, "tokensPerDay": 100, "concurrent": 1}]))
                .unwrap();
        let open = Quotas::new(
            rules.clone(),
            Store::redis(&server.url(), None).unwrap(),
            FailureMode::Open,
        );
        let closed = Quotas::new(
            rules,
            Store::redis(&server.url(), None).unwrap(),
            FailureMode::Closed,
        );
        server.stop();
        // Open: admitted without a quota check, but concurrency (local) still holds.
        let r = open.reserve(&who("ann"), 1_000, 0).unwrap();
        match open.reserve(&who("ann"), 1, 0) {
            Err(Refusal::Limited(d)) => assert_eq!(d.limit, "concurrent"),
            other => panic!("{:?}", other),
        }
        // Admitted open, it reserved nothing, so settling has nothing to send.
        r.settle(1_000);
        assert_eq!(open.store_failures(), 1);
        assert!(open.status(&who("ann"), 0).is_err());
        // Closed: 503 with Retry-After, and no concurrency slot is kept.
        for _ in 0..2 {
            assert_eq!(
                closed.reserve(&who("ann"), 1, 0).unwrap_err(),
                Refusal::Unavailable {
                    retry_after_secs: 5
                }
            );
        }
        assert_eq!(closed.store_failures(), 2);
        server.restart();
        closed.reserve(&who("ann"), 100, 0).unwrap().settle(100);
        open.reserve(&who("ann"), 1, 0).unwrap_err();
    }

    #[test]
    fn password_from_the_url_and_no_secret_in_errors() {
        let server = RedisServer::start_with(&["--requirepass", "s3cret-pw"]);
        let with = format!("redis://:s3cret-pw@127.0.0.1:{}/0", server.port());
        let store = RedisStore::open(&with, None).unwrap();
        assert!(store.reserve(&[ask("all", [None; 4])], 1).unwrap().admitted);
        let wrong = format!("redis://:wrong-pw@127.0.0.1:{}/0", server.port());
        let e = RedisStore::open(&wrong, None)
            .unwrap()
            .reserve(&[], 1)
            .unwrap_err();
        assert!(!e.0.contains("wrong-pw"), "{}", e);
        let none = RedisStore::open(&server.url(), None)
            .unwrap()
            .reserve(&[], 1)
            .unwrap_err();
        assert!(none.0.contains("127.0.0.1"), "{}", none);
        assert!(!format!("{:?}", store).contains("s3cret"));
        let bad = RedisStore::open("http://:s3cret-pw@host/", None).unwrap_err();
        assert!(!bad.0.contains("s3cret"), "{}", bad);
    }

    #[test]
    fn rediss_with_a_private_ca() {
        let cert = rcgen::generate_simple_self_signed(vec![
            "localhost".to_string(),
            "127.0.0.1".to_string(),
        ])
        .unwrap();
        let server = RedisServer::start_tls(&cert.cert.pem(), &cert.key_pair.serialize_pem());
        let ca = server.cert_file().unwrap().to_str().unwrap();
        let store = RedisStore::open(&server.url(), Some(ca)).unwrap();
        assert!(
            store
                .reserve(&[ask("all", [Some(5); 4])], 1)
                .unwrap()
                .admitted
        );
        assert_eq!(store.read(&["all".into()]).unwrap().counts, vec![[1; 4]]);
        // The bundled web roots do not trust a private CA: the handshake fails, as a value.
        let untrusted = RedisStore::open(&server.url(), None).unwrap();
        let e = untrusted.reserve(&[], 1).unwrap_err();
        assert!(e.0.starts_with("redis at localhost:"), "{}", e);
        let missing = RedisStore::open(&server.url(), Some("/nonexistent/ca.pem")).unwrap_err();
        assert!(missing.0.contains("/nonexistent/ca.pem"), "{}", missing);
    }
}
