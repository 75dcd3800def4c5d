//! Quota counters in Redis or Valkey, so every replica enforces one budget.
//!
//! Check-and-add is one Lua script over every key of every matching bucket, and the windows come
//! from the server's clock (`TIME`), so replicas with skewed clocks still agree on them. Counter
//! keys are `modelmux:quota:<bucket>:<counter>:<window>` and expire a minute after their window
//! (`cost:all:0`, a prepaid budget's, never does).
//! Only the synchronous client, no cluster: the scripts build key names from the server's time,
//! which a cluster (keys declared up front) would not route.
//!
//! A stalled store must not stall requests: every operation has a short timeout, and after a
//! failure the `Breaker` keeps requests off the store for a while. A reservation whose reply
//! was lost may still land (a paused Redis runs what is in its socket buffer when it resumes),
//! so each reservation carries a random id: the script leaves a short-lived marker
//! `modelmux:reservation:<id>` saying what it added, and a background thread later sends a
//! cancel that takes exactly that back, or leaves a tombstone that makes a late reservation a
//! no-op. A request whose reservation failed is never charged for it.

use crate::policy::limits::breaker::Breaker;
use crate::policy::limits::counts::{
    Ask, Charge, Counts, Outcome, Settle, Snapshot, StoreError, UsageAdd, UsageSum, N,
};
use crate::policy::limits::windows::Windows;
use redis::{Connection, ConnectionLike, RedisResult, Script};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Connections kept open for reuse.
const MAX_IDLE: usize = 8;
const PREFIX: &str = "modelmux:quota:";
/// Reservation markers and tombstones: `<MARKER><id>`.
const MARKER: &str = "modelmux:reservation:";
/// A tombstone outlives any reservation that could still be on its way (TCP gives up
/// retransmitting long before a day).
const TOMBSTONE_SECS: u64 = 86_400;
/// Cancels waiting for the store; past this the oldest are dropped (and stay charged).
const MAX_PENDING_CANCELS: usize = 10_000;
/// Usage totals: one hash per UTC day, `<USAGE><day>`, field `<counter> <identity>`.
const USAGE: &str = "modelmux:usage:";
/// Days a day's usage totals are kept after the day ends (a year and a month's margin, so a
/// yearly report still finds every day).
pub const USAGE_KEEP_DAYS: i64 = 400;

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
local NAMES = {'req:m:', 'tok:m:', 'tok:d:', 'tok:mo:', 'cost:d:', 'cost:w:', 'cost:mo:', 'cost:all:'}
-- The window of each counter and when it ends (false: never, a prepaid budget).
local function clock()
  local t = redis.call('TIME')
  local now = tonumber(t[1])
  local minute, day, month, month_end = windows(now)
  local week = idiv(day + 3, 7)
  local e, de, we = (minute + 1) * 60, (day + 1) * 86400, ((week + 1) * 7 - 3) * 86400
  return now, {minute, minute, day, month, day, week, month, 0},
    {e, e, de, month_end, de, we, month_end, false}
end
"#;

/// KEYS[1]: the reservation's marker, then bucket key prefixes; ARGV[1]: tokens, ARGV[2]: the
/// marker's lifetime, ARGV[3]: cost; then 8 limits per bucket (-1: none). Returns {admitted,
/// now, minute, day, month, week, counts before (8 per bucket)...}, or {-1} for an id seen
/// before (cancelled: its client gave up on it, so it must add nothing).
const RESERVE_LUA: &str = r#"
if redis.replicate_commands then redis.replicate_commands() end
if redis.call('EXISTS', KEYS[1]) == 1 then return {-1} end
local now, ids, ends = clock()
local tokens, cost = tonumber(ARGV[1]), tonumber(ARGV[3])
local adds = {1, tokens, tokens, tokens, cost, cost, cost, cost}
local out = {0, now, ids[1], ids[3], ids[4], ids[6]}
local fits = true
for i = 2, #KEYS do
  local base = KEYS[i]
  for k = 1, 8 do
    local used = tonumber(redis.call('GET', base .. ':' .. NAMES[k] .. ids[k]) or '0')
    out[#out + 1] = used
    local limit = tonumber(ARGV[3 + (i - 2) * 8 + k])
    if limit >= 0 and used + adds[k] > limit and not (k > 4 and adds[k] == 0) then fits = false end
  end
end
if fits then
  out[1] = 1
  for i = 2, #KEYS do
    for k = 1, 8 do
      if adds[k] ~= 0 then
        local key = KEYS[i] .. ':' .. NAMES[k] .. ids[k]
        redis.call('INCRBY', key, adds[k])
        if ends[k] then redis.call('EXPIREAT', key, ends[k] + 60) end
      end
    end
  end
  redis.call('SET', KEYS[1], ids[1] .. ':' .. ids[3] .. ':' .. ids[4] .. ':' .. ids[6] .. ':' .. tokens .. ':' .. cost, 'EX', ARGV[2])
end
return out
"#;

/// KEYS[1]: a reservation's marker, then its bucket key prefixes; ARGV[1]: the tombstone's
/// lifetime. Takes back what the reservation added (windows that ended are left alone, no
/// counter below zero) and leaves a tombstone, so cancelling twice or before the reservation
/// lands adds and takes nothing more. Returns 1 when something was taken back.
const CANCEL_LUA: &str = r#"
local m = redis.call('GET', KEYS[1])
redis.call('SET', KEYS[1], 'x', 'EX', ARGV[1])
if not m or m == 'x' then return 0 end
local minute, day, month, week, tokens, cost =
  string.match(m, '^(%d+):(%d+):(%d+):(%d+):(%d+):(%d+)$')
if not minute then return 0 end
local NAMES = {'req:m:', 'tok:m:', 'tok:d:', 'tok:mo:', 'cost:d:', 'cost:w:', 'cost:mo:', 'cost:all:'}
local ids = {minute, minute, day, month, day, week, month, 0}
local subs = {1, tokens, tokens, tokens, cost, cost, cost, cost}
for i = 2, #KEYS do
  for k = 1, 8 do
    local key = KEYS[i] .. ':' .. NAMES[k] .. ids[k]
    if redis.call('EXISTS', key) == 1 then
      local v = redis.call('DECRBY', key, subs[k])
      if v < 0 then redis.call('INCRBY', key, -v) end
    end
  end
end
return 1
"#;

/// Everything a finished request sends, in one round trip. KEYS: the reservation's bucket key
/// prefixes (none when it reserved nothing), then the usage totals hash of its day when it has
/// usage to add. ARGV: token delta, 1 to take its request back (a refusal), its minute, day and
/// month, the number of bucket prefixes, the usage hash's expiry (unix time), cost delta, its
/// week, then (field, amount) pairs for the usage hash. A counter key that expired (its window
/// ended) is not brought back; no counter goes below zero; a prepaid total never expires, so
/// it is always there to correct.
const SETTLE_LUA: &str = r#"
local NAMES = {'req:m:', 'tok:m:', 'tok:d:', 'tok:mo:', 'cost:d:', 'cost:w:', 'cost:mo:', 'cost:all:'}
local delta, cost = tonumber(ARGV[1]), tonumber(ARGV[8])
local ids = {ARGV[3], ARGV[3], ARGV[4], ARGV[5], ARGV[4], ARGV[9], ARGV[5], '0'}
local nb = tonumber(ARGV[6])
local function add(key, by)
  if redis.call('EXISTS', key) == 1 then
    local v = redis.call('INCRBY', key, by)
    if v < 0 then redis.call('INCRBY', key, -v) end
  end
end
for i = 1, nb do
  if delta ~= 0 then
    for k = 2, 4 do add(KEYS[i] .. ':' .. NAMES[k] .. ids[k], delta) end
  end
  if cost ~= 0 then
    for k = 5, 8 do add(KEYS[i] .. ':' .. NAMES[k] .. ids[k], cost) end
  end
  if ARGV[2] == '1' then add(KEYS[i] .. ':' .. NAMES[1] .. ids[1], -1) end
end
if #KEYS > nb then
  local key = KEYS[nb + 1]
  for j = 10, #ARGV, 2 do redis.call('HINCRBY', key, ARGV[j], ARGV[j + 1]) end
  redis.call('EXPIREAT', key, ARGV[7])
end
return 0
"#;

/// KEYS: bucket key prefixes. Returns {now, minute, day, month, week, counts (8 per bucket)...}.
const READ_LUA: &str = r#"
local now, ids = clock()
local out = {now, ids[1], ids[3], ids[4], ids[6]}
for _, base in ipairs(KEYS) do
  for k = 1, 8 do
    out[#out + 1] = tonumber(redis.call('GET', base .. ':' .. NAMES[k] .. ids[k]) or '0')
  end
end
return out
"#;

/// How long one operation may take, and how long the store is left alone after a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// Connect, read and write timeout of each operation (`limitsStoreTimeoutMs`).
    pub timeout: Duration,
    /// The breaker's interval (`limitsStoreRetrySecs`).
    pub retry: Duration,
}

impl Default for Timing {
    fn default() -> Timing {
        Timing {
            timeout: Duration::from_millis(250),
            retry: Duration::from_secs(5),
        }
    }
}

/// An operation that failed, whether its command may have reached the server, and whether
/// only its reply was lost to a stop of this process ([`interrupted`]: the server is fine and
/// runs the command).
#[derive(Debug)]
struct Failed {
    error: StoreError,
    sent: bool,
    interrupted: bool,
}

/// Runs `op` once more when its reply was interrupted; for commands that only read.
fn again_if_interrupted<T>(op: impl Fn() -> Result<T, Failed>) -> Result<T, Failed> {
    match op() {
        Err(f) if f.interrupted => op(),
        result => result,
    }
}

/// A Redis-backed counter store with a few reusable connections.
pub struct RedisStore {
    client: redis::Client,
    /// host:port, for messages (the URL may hold a password).
    addr: String,
    timing: Timing,
    idle: Mutex<Vec<Connection>>,
    reserve: Script,
    settle: Script,
    read: Script,
    breaker: Breaker,
    /// Operations that were tried and failed.
    failures: AtomicU64,
    /// Operations not tried because the breaker was open.
    skipped: AtomicU64,
    /// Reservation ids: this process's random prefix and a count.
    id_prefix: String,
    next_id: AtomicU64,
    cancels: Arc<Canceller>,
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStore")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

fn connect(client: &redis::Client, timeout: Duration) -> RedisResult<Connection> {
    let con = client.get_connection_with_timeout(timeout)?;
    con.set_read_timeout(Some(timeout))?;
    con.set_write_timeout(Some(timeout))?;
    Ok(con)
}

/// True when `e` is a receive or send on the Redis socket interrupted (EINTR): Linux fails a
/// blocking one on a socket with a timeout (every connection here has one) when this process
/// is stopped and continued (Ctrl-Z and `fg`, `kill -STOP`/`-CONT`, a debugger or `strace -p`
/// attaching; signal(7)), and the redis client gives up on the command. Nothing is wrong with
/// the server, so it must not count as a failure that opens the breaker.
fn interrupted(e: &redis::RedisError) -> bool {
    use std::error::Error;
    // The client keeps an I/O error as an `Arc<dyn Error>`, its source.
    e.source()
        .and_then(|s| s.downcast_ref::<Arc<dyn Error + Send + Sync>>())
        .and_then(|inner| inner.downcast_ref::<std::io::Error>())
        .is_some_and(|io| io.kind() == std::io::ErrorKind::Interrupted)
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// 16 random hex digits, so replicas never share a reservation id.
fn random_prefix() -> String {
    use ring::rand::SecureRandom;
    let mut b = [0u8; 8];
    if ring::rand::SystemRandom::new().fill(&mut b).is_err() {
        // Not secret, only unique: the pid and the clock do when the system RNG does not.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        b = (nanos ^ u64::from(std::process::id()) << 32).to_be_bytes();
    }
    b.iter().map(|x| format!("{:02x}", x)).collect()
}

impl RedisStore {
    /// A store for `redis://` or `rediss://` (TLS) `[user][:password@]host[:port][/db]`;
    /// connects on first use. TLS trusts the bundled web roots, or only the PEM bundle
    /// `ca_file` when given (a private Redis usually has its own CA).
    pub fn open(
        url: &str,
        ca_file: Option<&str>,
        timing: Timing,
    ) -> Result<RedisStore, StoreError> {
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
            cancels: Arc::new(Canceller {
                client: client.clone(),
                addr: addr.clone(),
                timing,
                script: Script::new(CANCEL_LUA),
                queue: Mutex::new(VecDeque::new()),
                running: AtomicBool::new(false),
            }),
            client,
            addr,
            timing,
            idle: Mutex::new(Vec::new()),
            reserve: script(RESERVE_LUA),
            settle: Script::new(SETTLE_LUA),
            read: script(READ_LUA),
            breaker: Breaker::new(timing.retry),
            failures: AtomicU64::new(0),
            skipped: AtomicU64::new(0),
            id_prefix: random_prefix(),
            next_id: AtomicU64::new(0),
        })
    }

    /// Operations tried that failed, and operations not tried because the breaker was open.
    pub fn failures(&self) -> (u64, u64) {
        (
            self.failures.load(Ordering::Relaxed),
            self.skipped.load(Ordering::Relaxed),
        )
    }

    /// True while the breaker keeps requests off the store.
    pub fn breaker_open(&self) -> bool {
        self.breaker.is_open(Instant::now())
    }

    /// Seconds until the store is tried again (a `Retry-After` while it is down).
    pub fn retry_after_secs(&self) -> u64 {
        self.breaker.retry_after_secs(Instant::now())
    }

    /// Reservations whose cancel has not reached the store yet.
    pub fn pending_cancels(&self) -> usize {
        lock(&self.cancels.queue).len()
    }

    /// Runs `op` unless the breaker is open, and tells the breaker how it went.
    fn guarded<T>(&self, op: impl FnOnce() -> Result<T, Failed>) -> Result<T, Failed> {
        if !self.breaker.allow(Instant::now()) {
            self.skipped.fetch_add(1, Ordering::Relaxed);
            return Err(Failed {
                error: StoreError(format!(
                    "redis at {}: not tried for {} s after a failure",
                    self.addr,
                    self.timing.retry.as_secs()
                )),
                sent: false,
                interrupted: false,
            });
        }
        let result = op();
        match &result {
            Ok(_) => self.breaker.success(),
            // Not the store's fault: no failure, the breaker stays as it is.
            Err(f) if f.interrupted => {}
            Err(_) => {
                self.failures.fetch_add(1, Ordering::Relaxed);
                self.breaker.failure(Instant::now());
            }
        }
        result
    }

    /// Runs `f` on a pooled or new connection. A pooled connection the server has dropped
    /// (e.g. Redis restarted) is retried once on a new one: a reservation's id makes a repeat
    /// add nothing, and since the server may have run the command before it closed, a failed
    /// retry counts as sent. A connection whose command failed is not reused (a late reply
    /// would answer the next command).
    fn with_conn<T>(&self, f: impl Fn(&mut Connection) -> RedisResult<T>) -> Result<T, Failed> {
        let pooled = {
            let mut idle = lock(&self.idle);
            std::iter::from_fn(|| idle.pop()).find(|c| c.is_open())
        };
        let result = match pooled {
            Some(mut con) => match f(&mut con) {
                Err(e) if e.is_connection_dropped() => self.fresh(&f).map_err(|(e, _)| (e, true)),
                other => other.map(|v| (v, con)).map_err(|e| (e, true)),
            },
            None => self.fresh(&f),
        };
        match result {
            Ok((v, con)) => {
                let mut idle = lock(&self.idle);
                if idle.len() < MAX_IDLE && con.is_open() {
                    idle.push(con);
                }
                Ok(v)
            }
            Err((e, sent)) => Err(Failed {
                error: StoreError(format!("redis at {}: {}", self.addr, e)),
                sent,
                interrupted: interrupted(&e),
            }),
        }
    }

    /// `f` on a new connection; the error says whether the command was sent.
    fn fresh<T>(
        &self,
        f: &impl Fn(&mut Connection) -> RedisResult<T>,
    ) -> Result<(T, Connection), (redis::RedisError, bool)> {
        let mut con = connect(&self.client, self.timing.timeout).map_err(|e| (e, false))?;
        f(&mut con).map(|v| (v, con)).map_err(|e| (e, true))
    }

    /// Checks every bucket and, only if all fit, adds one request and `tokens` to each, in
    /// the windows of the server's clock. When the answer is lost the reservation is
    /// cancelled in the background: a failed reserve never stays charged.
    pub fn reserve(&self, asks: &[Ask], charge: impl Into<Charge>) -> Result<Outcome, StoreError> {
        let charge = charge.into();
        self.reserve_as(self.new_marker(), asks, charge)
    }

    /// A new reservation id: this process's random prefix and the next number.
    fn new_marker(&self) -> String {
        let n = self.next_id.fetch_add(1, Ordering::Relaxed);
        format!("{}{}-{:x}", MARKER, self.id_prefix, n)
    }

    fn reserve_as(
        &self,
        mut marker: String,
        asks: &[Ask],
        charge: impl Into<Charge>,
    ) -> Result<Outcome, StoreError> {
        let charge = charge.into();
        let mut result = self.reserve_once(&marker, asks, charge);
        if matches!(&result, Err(f) if f.interrupted) {
            // Redis runs this reservation (if it was sent) but its answer was lost to a stop of
            // this process: take it back now (its tombstone keeps it from landing later), then
            // ask again under a new id, so the request is neither refused nor charged twice.
            let cancel = self.cancel_of(&marker, asks);
            let taken = self.guarded(|| {
                again_if_interrupted(|| self.with_conn(|con| self.cancels.invoke(con, &cancel)))
            });
            if taken.is_ok() {
                marker = self.new_marker();
                result = self.reserve_once(&marker, asks, charge);
            }
        }
        result.map_err(|f| {
            if f.sent {
                self.cancels.push(self.cancel_of(&marker, asks));
            }
            f.error
        })
    }

    fn cancel_of(&self, marker: &str, asks: &[Ask]) -> Cancel {
        Cancel {
            marker: marker.to_string(),
            buckets: asks
                .iter()
                .map(|a| format!("{}{}", PREFIX, a.bucket))
                .collect(),
        }
    }

    fn reserve_once(&self, marker: &str, asks: &[Ask], charge: Charge) -> Result<Outcome, Failed> {
        let marker_secs = marker_secs(self.timing);
        self.guarded(|| {
            let reply: Vec<i64> = self.with_conn(|con| {
                let mut call = self.reserve.prepare_invoke();
                call.key(marker);
                call.arg(charge.tokens).arg(marker_secs).arg(charge.cost);
                for a in asks {
                    call.key(format!("{}{}", PREFIX, a.bucket));
                    for l in a.limits {
                        call.arg(l.map_or(-1, |l| i64::try_from(l).unwrap_or(i64::MAX)));
                    }
                }
                call.invoke(con)
            })?;
            let (head, counts) = split(&reply, 6, asks.len()).map_err(|error| Failed {
                error,
                sent: true,
                interrupted: false,
            })?;
            Ok(Outcome {
                admitted: head[0] == 1,
                now: unsigned(head[1]),
                windows: windows(&head[2..6]),
                before: counts,
            })
        })
    }

    /// Settles a reservation (`held`) and adds a finished request's usage to the shared totals,
    /// in one round trip; `None` of both sends nothing.
    pub fn settle(
        &self,
        held: Option<&Settle>,
        usage: Option<&UsageAdd>,
    ) -> Result<(), StoreError> {
        let usage = usage.filter(|u| u.counters.iter().any(|c| c.1 > 0));
        let held = held.filter(|h| !h.delta.is_zero() || h.unrequest);
        if held.is_none() && usage.is_none() {
            return Ok(());
        }
        self.guarded(|| {
            self.with_conn(|con| {
                let mut call = self.settle.prepare_invoke();
                match held {
                    Some(h) => {
                        let w = h.windows;
                        call.arg(h.delta.tokens).arg(u8::from(h.unrequest));
                        call.arg(w.minute).arg(w.day).arg(w.month);
                        call.arg(h.buckets.len());
                        for b in h.buckets {
                            call.key(format!("{}{}", PREFIX, b));
                        }
                    }
                    None => {
                        call.arg(0).arg(0).arg(0).arg(0).arg(0).arg(0);
                    }
                }
                match usage {
                    Some(u) => {
                        call.key(usage_key(u.day));
                        call.arg(usage_expiry(u.day));
                    }
                    None => {
                        call.arg(0);
                    }
                }
                match held {
                    Some(h) => call.arg(h.delta.cost).arg(h.windows.week),
                    None => call.arg(0).arg(0),
                };
                if let Some(u) = usage {
                    let who = usage_identity(u);
                    for (name, n) in u.counters.iter().filter(|c| c.1 > 0) {
                        call.arg(format!("{} {}", name, who)).arg(n);
                    }
                }
                call.invoke::<i64>(con)
            })
            .or_else(|f| match f.interrupted {
                // Sent, and Redis runs it; only its reply (nothing the caller uses) was lost.
                true => Ok(0),
                false => Err(f),
            })
        })
        .map(|_| ())
        .map_err(|f| f.error)
    }

    /// The shared usage totals of the days from `first` to before `end`, in one round trip
    /// (a pipeline of one `HGETALL` per day). A field that is not `<counter> <identity>` (not
    /// written by modelmux) is skipped.
    pub fn usage(&self, first: i64, end: i64) -> Result<Vec<UsageSum>, StoreError> {
        let days: Vec<i64> = (first..end).collect();
        if days.is_empty() {
            return Ok(Vec::new());
        }
        let maps: Vec<HashMap<String, u64>> = self
            .guarded(|| {
                again_if_interrupted(|| {
                    self.with_conn(|con| {
                        let mut pipe = redis::pipe();
                        for &d in &days {
                            pipe.cmd("HGETALL").arg(usage_key(d));
                        }
                        pipe.query(con)
                    })
                })
            })
            .map_err(|f| f.error)?;
        type Fields = Vec<(String, u64)>;
        let mut sums: BTreeMap<(i64, [String; 3]), Fields> = BTreeMap::new();
        for (&day, map) in days.iter().zip(maps) {
            for (field, n) in map {
                let Some((counter, who)) = field.split_once(' ') else {
                    continue;
                };
                let Ok(who) = serde_json::from_str::<[String; 3]>(who) else {
                    continue;
                };
                sums.entry((day, who))
                    .or_default()
                    .push((counter.to_string(), n));
            }
        }
        Ok(sums
            .into_iter()
            .map(|((day, who), fields)| UsageSum { day, who, fields })
            .collect())
    }

    /// The current counts of `buckets` by the server's clock.
    pub fn read(&self, buckets: &[String]) -> Result<Snapshot, StoreError> {
        let reply: Vec<i64> = self
            .guarded(|| {
                again_if_interrupted(|| {
                    self.with_conn(|con| {
                        let mut call = self.read.prepare_invoke();
                        for b in buckets {
                            call.key(format!("{}{}", PREFIX, b));
                        }
                        call.invoke(con)
                    })
                })
            })
            .map_err(|f| f.error)?;
        let (head, counts) = split(&reply, 5, buckets.len())?;
        Ok(Snapshot {
            now: unsigned(head[0]),
            counts,
        })
    }
}

/// The usage totals hash of `day`.
fn usage_key(day: i64) -> String {
    format!("{}{}", USAGE, day)
}

/// When the totals of `day` expire: `USAGE_KEEP_DAYS` after the day ends.
fn usage_expiry(day: i64) -> i64 {
    (day + 1 + USAGE_KEEP_DAYS) * 86_400
}

/// The identity part of a usage field: `["user","key","model"]` as JSON, so any string (a
/// space, a quote) reads back as it was written.
fn usage_identity(u: &UsageAdd) -> String {
    serde_json::json!([u.user, u.key, u.model]).to_string()
}

fn unsigned(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

/// Minute, day, month, week, as the scripts answer them.
fn windows(ids: &[i64]) -> Windows {
    Windows {
        minute: unsigned(ids[0]),
        day: unsigned(ids[1]),
        month: unsigned(ids[2]),
        week: unsigned(ids[3]),
    }
}

/// Splits a script reply into its `head` fields and `N` counts per bucket.
fn split(reply: &[i64], head: usize, buckets: usize) -> Result<(&[i64], Vec<Counts>), StoreError> {
    if reply.len() != head + N * buckets {
        return Err(StoreError(format!(
            "redis script answered {} numbers, expected {}",
            reply.len(),
            head + N * buckets
        )));
    }
    let counts = reply[head..]
        .chunks(N)
        .map(|c| {
            let mut out = [0; N];
            for (o, v) in out.iter_mut().zip(c) {
                *o = unsigned(*v);
            }
            out
        })
        .collect();
    Ok((&reply[..head], counts))
}

/// How long a reservation's marker lives: long enough for the cancel of a lost reply to
/// arrive (the canceller retries every `retry`), short enough that markers of the replies
/// that did arrive cost little.
fn marker_secs(t: Timing) -> u64 {
    (4 * (t.retry + 2 * t.timeout).as_secs()).max(60)
}

/// A reservation whose reply was lost: its marker and bucket key prefixes.
#[derive(Debug, Clone)]
struct Cancel {
    marker: String,
    buckets: Vec<String>,
}

/// Sends the cancels of lost reservations from a thread of its own (started when there is
/// one, gone when none is left), every `retry`, until the store takes them.
struct Canceller {
    client: redis::Client,
    addr: String,
    timing: Timing,
    script: Script,
    queue: Mutex<VecDeque<Cancel>>,
    /// True while a thread is draining the queue.
    running: AtomicBool,
}

impl Canceller {
    fn push(self: &Arc<Self>, c: Cancel) {
        {
            let mut q = lock(&self.queue);
            if q.len() >= MAX_PENDING_CANCELS {
                q.pop_front();
                log::warn!(
                    "limits store redis at {}: over {} lost reservations waiting to be cancelled; the oldest stays charged",
                    self.addr,
                    MAX_PENDING_CANCELS
                );
            }
            q.push_back(c);
        }
        if !self.running.swap(true, Ordering::AcqRel) {
            let me = Arc::clone(self);
            let spawned = std::thread::Builder::new()
                .name("limits-cancel".into())
                .spawn(move || me.run());
            if let Err(e) = spawned {
                self.running.store(false, Ordering::Release);
                log::warn!("limits store: cannot start the cancel thread: {}", e);
            }
        }
    }

    fn run(&self) {
        loop {
            std::thread::sleep(self.timing.retry);
            self.drain();
            if lock(&self.queue).is_empty() {
                self.running.store(false, Ordering::Release);
                // A push between the check and the store found `running` still set and left
                // its cancel to this thread: take it back, unless a new thread already has.
                if lock(&self.queue).is_empty() || self.running.swap(true, Ordering::AcqRel) {
                    return;
                }
            }
        }
    }

    /// Runs the cancel script for `c`: 1 when something was taken back.
    fn invoke(&self, con: &mut Connection, c: &Cancel) -> RedisResult<i64> {
        let mut call = self.script.prepare_invoke();
        call.key(&c.marker);
        for b in &c.buckets {
            call.key(b);
        }
        call.arg(TOMBSTONE_SECS);
        call.invoke::<i64>(con)
    }

    /// Sends queued cancels on one connection until one fails (the rest wait for the next
    /// round).
    fn drain(&self) {
        let Ok(mut con) = connect(&self.client, self.timing.timeout) else {
            return;
        };
        loop {
            let Some(c) = lock(&self.queue).front().cloned() else {
                return;
            };
            match self.invoke(&mut con, &c) {
                Ok(taken) => {
                    if taken == 1 {
                        log::info!(
                            "limits store: a reservation whose answer was lost landed late and was taken back"
                        );
                    }
                    lock(&self.queue).retain(|q| q.marker != c.marker);
                }
                Err(_) => return,
            }
        }
    }
}

#[cfg(test)]
#[path = "../../../tests/support/redis.rs"]
mod test_server;

#[cfg(test)]
mod tests {
    use super::test_server::RedisServer;
    use super::*;
    use crate::config::{parse_rules, FailureMode, Subject};
    use crate::policy::limits::counts::Delta;
    use crate::policy::limits::quota::{Quotas, Refusal};
    use crate::policy::limits::store::Store;
    use crate::policy::limits::windows::{days_from_civil, window_end, Span};
    use serde_json::json;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;
    use std::time::{Instant, SystemTime, UNIX_EPOCH};

    #[test]
    fn an_interrupted_receive_is_told_from_other_errors() {
        let io = |kind| redis::RedisError::from(std::io::Error::from(kind));
        assert!(interrupted(&io(std::io::ErrorKind::Interrupted)));
        assert!(!interrupted(&io(std::io::ErrorKind::WouldBlock)));
        assert!(!interrupted(&io(std::io::ErrorKind::ConnectionReset)));
        assert!(!interrupted(&redis::RedisError::from((
            redis::ErrorKind::Io,
            "no socket"
        ))));
    }

    /// A bucket limited in the token counters only.
    fn ask(bucket: &str, limits: [Option<u64>; 4]) -> Ask<'_> {
        let mut all = [None; N];
        all[..4].copy_from_slice(&limits);
        Ask {
            bucket,
            limits: all,
        }
    }

    /// The token counters of each bucket (the cost counters are tested on their own).
    fn first4(counts: Vec<Counts>) -> Vec<[u64; 4]> {
        counts.iter().map(|c| [c[0], c[1], c[2], c[3]]).collect()
    }

    fn unix_now() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    fn who(user: &str) -> Subject<'_> {
        Subject {
            user,
            key: "k",
            model: "m",
        }
    }

    /// The settle script with only a token delta or only a request taken back, as the
    /// tests of the windows need them.
    impl RedisStore {
        fn adjust(
            &self,
            buckets: &[String],
            windows: Windows,
            delta: impl Into<Delta>,
        ) -> Result<(), StoreError> {
            let (delta, unrequest) = (delta.into(), false);
            self.settle(
                Some(&Settle {
                    buckets,
                    windows,
                    delta,
                    unrequest,
                }),
                None,
            )
        }

        fn unrequest(&self, buckets: &[String], windows: Windows) -> Result<(), StoreError> {
            let (delta, unrequest) = (Delta::default(), true);
            self.settle(
                Some(&Settle {
                    buckets,
                    windows,
                    delta,
                    unrequest,
                }),
                None,
            )
        }
    }

    /// Minutes end during a test now and then; retries once in a fresh minute.
    fn in_one_minute<T>(f: impl Fn() -> Option<T>) -> T {
        f().or_else(f).expect("two minute rollovers in a row")
    }

    #[test]
    fn lua_windows_agree_with_rust() {
        let server = RedisServer::start();
        let store = RedisStore::open(&server.url(), None, patient()).unwrap();
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
        let store = RedisStore::open(&server.url(), None, patient()).unwrap();
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
            assert_eq!(first4(o.before), vec![[0; 4], [0; 4]]);
            // 60 + 60 > 100: nothing is added anywhere.
            let o2 = store.reserve(&asks, 60).unwrap();
            assert!(!o2.admitted);
            assert_eq!(first4(o2.before), vec![[1, 60, 60, 60], [1, 60, 60, 60]]);
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
            assert_eq!(
                first4(snap.counts),
                vec![[1, 40, 40, 40], [1, 40, 40, 40], [0; 4]]
            );
            // Never below zero.
            store.adjust(&["all".into()], o.windows, -1_000).unwrap();
            assert_eq!(
                first4(store.read(&["all".into()]).unwrap().counts),
                vec![[1, 0, 0, 0]]
            );
            // A refusal takes its request back, once.
            store.unrequest(&["u=ann".into()], o.windows).unwrap();
            store.unrequest(&["u=ann".into()], o.windows).unwrap();
            assert_eq!(
                first4(store.read(&["u=ann".into()]).unwrap().counts),
                vec![[0, 40, 40, 40]]
            );
            Some(())
        });
    }

    #[test]
    fn cost_counters_week_and_total_against_real_redis() {
        let server = RedisServer::start();
        let store = RedisStore::open(&server.url(), None, patient()).unwrap();
        let mut limits = [None; N];
        limits[5] = Some(1_000); // per week
        limits[7] = Some(1_500); // in total
        let asks = [Ask {
            bucket: "u=ann",
            limits,
        }];
        let names = ["u=ann".to_string()];
        let c = |tokens, cost| Charge { tokens, cost };
        in_one_minute(|| {
            server.command(&["FLUSHALL"]);
            let o = store.reserve(&asks, c(10, 600)).unwrap();
            assert!(o.admitted);
            assert_eq!(
                o.windows,
                Windows::at(o.now),
                "the week is the server's too"
            );
            assert!(!store.reserve(&asks, c(1, 401)).unwrap().admitted);
            store
                .adjust(
                    &names,
                    o.windows,
                    Delta {
                        tokens: -4,
                        cost: -100,
                    },
                )
                .unwrap();
            let snap = store.read(&names).unwrap();
            if Windows::at(snap.now) != o.windows {
                return None;
            }
            assert_eq!(snap.counts, vec![[1, 6, 6, 6, 500, 500, 500, 500]]);
            let ttl = |name: &str| server.command(&["TTL", &format!("{}u=ann:{}", PREFIX, name)]);
            assert_eq!(ttl("cost:all:0"), ":-1", "a prepaid budget never expires");
            let week_ttl: i64 = ttl(&format!("cost:w:{}", o.windows.week))
                .trim_start_matches(':')
                .parse()
                .unwrap();
            assert!((1..=7 * 86_400 + 60).contains(&week_ttl), "{}", week_ttl);
            // A lost reservation's cancel takes back its cost too.
            let m = format!("{}lost", MARKER);
            store.reserve_as(m.clone(), &asks, c(1, 300)).unwrap();
            let mut call = store.cancels.script.prepare_invoke();
            call.key(&m)
                .key(format!("{}u=ann", PREFIX))
                .arg(TOMBSTONE_SECS);
            let taken: i64 = store.with_conn(|con| call.invoke(con)).unwrap();
            assert_eq!(taken, 1);
            let snap = store.read(&names).unwrap();
            if Windows::at(snap.now) != o.windows {
                return None;
            }
            assert_eq!(snap.counts, vec![[1, 6, 6, 6, 500, 500, 500, 500]]);
            // Overspent (a backend wrote past max_tokens): only a free request still passes.
            store
                .adjust(
                    &names,
                    o.windows,
                    Delta {
                        tokens: 0,
                        cost: 2_000,
                    },
                )
                .unwrap();
            assert!(!store.reserve(&asks, c(1, 1)).unwrap().admitted);
            assert!(store.reserve(&asks, c(1, 0)).unwrap().admitted);
            Some(())
        });
    }

    #[test]
    fn keys_expire_after_their_window_and_ended_windows_are_not_revived() {
        let server = RedisServer::start();
        let store = RedisStore::open(&server.url(), None, patient()).unwrap();
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
            week: o.windows.week - 10,
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
                Store::redis(&server.url(), None, patient()).unwrap(),
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
            Store::redis(&server.url(), None, patient()).unwrap(),
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
        assert_eq!(q.store_health().failures, 0);
    }

    /// For tests not about timeouts: a loaded test machine can stall a debug build for longer
    /// than the 250 ms default, and a timeout would admit a request unchecked.
    fn patient() -> Timing {
        Timing {
            timeout: Duration::from_secs(5),
            retry: Duration::from_secs(5),
        }
    }

    /// A breaker interval short enough for tests to wait out.
    fn quick() -> Timing {
        Timing {
            timeout: Duration::from_millis(1000),
            retry: Duration::from_millis(400),
        }
    }

    fn wait_out(t: Timing) {
        std::thread::sleep(t.retry + Duration::from_millis(50));
    }

    #[test]
    fn redis_down_is_an_error_value_and_it_recovers() {
        let mut server = RedisServer::start();
        let store = RedisStore::open(&server.url(), None, quick()).unwrap();
        let asks = [ask("u=ann", [None, None, Some(100), None])];
        assert!(store.reserve(&asks, 10).unwrap().admitted);
        server.stop();
        let e = store.reserve(&asks, 10).unwrap_err();
        assert!(
            e.0.starts_with(&format!("redis at 127.0.0.1:{}: ", server.port())),
            "{}",
            e
        );
        // The breaker is open: not even tried.
        let e = store.read(&["u=ann".into()]).unwrap_err();
        assert!(e.0.ends_with("not tried for 0 s after a failure"), "{}", e);
        assert_eq!(store.failures(), (1, 1));
        assert!(store.breaker_open());
        server.restart();
        wait_out(quick());
        // The pooled connection died with the old server; the store reconnects by itself.
        let o = store.reserve(&asks, 10).unwrap();
        assert!(o.admitted);
        assert_eq!(
            first4(o.before),
            vec![[0; 4]],
            "a restarted Redis without persistence is empty"
        );
        assert!(!store.breaker_open());
        // The command on the dropped connection may have run: it is cancelled all the same
        // (a tombstone only), and the cancel goes through once Redis is back.
        let deadline = Instant::now() + Duration::from_secs(5);
        while store.pending_cancels() > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(store.pending_cancels(), 0);
        assert_eq!(store.read(&["u=ann".into()]).unwrap().counts[0][2], 10);
    }

    #[test]
    fn failure_modes_open_admits_and_closed_refuses() {
        let mut server = RedisServer::start();
        let rules =
            parse_rules(&json!([{"match": {"user": "*"}, "tokensPerDay": 100, "concurrent": 1}]))
                .unwrap();
        let open = Quotas::new(
            rules.clone(),
            Store::redis(&server.url(), None, quick()).unwrap(),
            FailureMode::Open,
        );
        let closed = Quotas::new(
            rules,
            Store::redis(&server.url(), None, quick()).unwrap(),
            FailureMode::Closed,
        );
        server.stop();
        // Open: admitted without a quota check, but concurrency (local) still holds.
        let r = open.reserve(&who("ann"), 1_000, 0).unwrap();
        assert!(r.status().is_empty(), "no budgets to report");
        match open.reserve(&who("ann"), 1, 0) {
            Err(Refusal::Limited(d)) => assert_eq!(d.limit, "concurrent"),
            other => panic!("{:?}", other),
        }
        // Admitted open, it reserved nothing, so settling has nothing to send.
        r.settle(1_000);
        assert_eq!(open.store_health().failures, 1);
        assert!(open.status(&who("ann"), 0).is_err());
        assert_eq!(open.store_health().skipped, 1);
        // Closed: 503 with Retry-After, and no concurrency slot is kept.
        for _ in 0..2 {
            assert_eq!(
                closed.reserve(&who("ann"), 1, 0).unwrap_err(),
                Refusal::Unavailable {
                    retry_after_secs: 1
                }
            );
        }
        let h = closed.store_health();
        assert_eq!((h.failures, h.skipped, h.breaker_open), (1, 1, true));
        server.restart();
        wait_out(quick());
        let r = closed.reserve(&who("ann"), 100, 0).unwrap();
        assert_eq!(r.status()[0].budgets[0].remaining, 0);
        r.settle(100);
        wait_out(quick());
        open.reserve(&who("ann"), 1, 0).unwrap_err();
    }

    #[test]
    fn a_paused_store_costs_one_timeout_per_interval_and_lost_reservations_are_taken_back() {
        let server = RedisServer::start();
        let t = quick();
        let asks = [ask("u=ann", [Some(100), None, None, None])];
        let names = ["u=ann".to_string()];
        in_one_minute(|| {
            // A store of its own per try: a retry after a minute rollover must not start with
            // the first try's failure counts, breaker, pooled connections and cancel thread.
            let store = RedisStore::open(&server.url(), None, t).unwrap();
            server.command(&["FLUSHALL"]);
            let first = store.reserve(&asks, 7).unwrap();
            server.pause();
            let started = Instant::now();
            let e = store.reserve(&asks, 7).unwrap_err();
            let took = started.elapsed();
            assert!(
                took >= t.timeout && took < t.timeout * 3,
                "{:?}: {}",
                took,
                e
            );
            // Within the interval nothing waits for the store.
            let started = Instant::now();
            for _ in 0..20 {
                store.reserve(&asks, 7).unwrap_err();
            }
            assert!(started.elapsed() < t.timeout, "{:?}", started.elapsed());
            assert_eq!(store.failures(), (1, 20));
            assert_eq!(store.pending_cancels(), 1, "the lost reply may have landed");
            server.resume();
            // The buffered reservation ran on resume; the cancel takes it back.
            let deadline = Instant::now() + Duration::from_secs(10);
            while store.pending_cancels() > 0 && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            assert_eq!(store.pending_cancels(), 0);
            wait_out(t);
            let snap = store.read(&names).unwrap();
            if Windows::at(snap.now) != first.windows {
                return None;
            }
            assert_eq!(
                first4(snap.counts),
                vec![[1, 7, 7, 7]],
                "only the answered one counts"
            );
            Some(())
        });
    }

    #[test]
    fn a_cancel_before_its_reservation_lands_makes_it_a_no_op() {
        let server = RedisServer::start();
        let store = RedisStore::open(&server.url(), None, quick()).unwrap();
        let asks = [
            ask("u=ann", [None; 4]),
            ask("all", [Some(5), None, None, None]),
        ];
        let names = ["u=ann".to_string(), "all".to_string()];
        let cancel = |marker: &str| -> i64 {
            let mut call = store.cancels.script.prepare_invoke();
            call.key(marker);
            for a in &asks {
                call.key(format!("{}{}", PREFIX, a.bucket));
            }
            call.arg(TOMBSTONE_SECS);
            store.with_conn(|con| call.invoke(con)).unwrap()
        };
        in_one_minute(|| {
            server.command(&["FLUSHALL"]);
            // Landed, then cancelled: taken back exactly, once.
            let o = store.reserve_as(format!("{}a", MARKER), &asks, 9).unwrap();
            assert!(o.admitted);
            assert_eq!(
                first4(store.read(&names).unwrap().counts),
                vec![[1, 9, 9, 9]; 2]
            );
            assert_eq!(cancel(&format!("{}a", MARKER)), 1);
            assert_eq!(
                cancel(&format!("{}a", MARKER)),
                0,
                "a second cancel takes nothing"
            );
            assert_eq!(first4(store.read(&names).unwrap().counts), vec![[0; 4]; 2]);
            // Cancelled before it landed: the late reservation adds nothing.
            assert_eq!(cancel(&format!("{}b", MARKER)), 0);
            let ttl = server.command(&["TTL", &format!("{}b", MARKER)]);
            let ttl: u64 = ttl.trim_start_matches(':').parse().unwrap();
            assert!(ttl > 86_000, "the tombstone lasts a day: {}", ttl);
            store
                .reserve_as(format!("{}b", MARKER), &asks, 9)
                .unwrap_err();
            // An answer that makes no sense counts as a failure, so wait the breaker out.
            wait_out(quick());
            let snap = store.read(&names).unwrap();
            if Windows::at(snap.now) != o.windows {
                return None;
            }
            assert_eq!(first4(snap.counts), vec![[0; 4]; 2]);
            // A marker of an answered reservation is short-lived.
            store.reserve_as(format!("{}c", MARKER), &asks, 1).unwrap();
            let ttl = server.command(&["TTL", &format!("{}c", MARKER)]);
            let ttl: u64 = ttl.trim_start_matches(':').parse().unwrap();
            assert!((1..=60).contains(&ttl), "{}", ttl);
            Some(())
        });
    }

    #[test]
    fn password_from_the_url_and_no_secret_in_errors() {
        let server = RedisServer::start_with(&["--requirepass", "s3cret-pw"]);
        let with = format!("redis://:s3cret-pw@127.0.0.1:{}/0", server.port());
        let store = RedisStore::open(&with, None, patient()).unwrap();
        assert!(store.reserve(&[ask("all", [None; 4])], 1).unwrap().admitted);
        let wrong = format!("redis://:wrong-pw@127.0.0.1:{}/0", server.port());
        let e = RedisStore::open(&wrong, None, patient())
            .unwrap()
            .reserve(&[], 1)
            .unwrap_err();
        assert!(!e.0.contains("wrong-pw"), "{}", e);
        let none = RedisStore::open(&server.url(), None, patient())
            .unwrap()
            .reserve(&[], 1)
            .unwrap_err();
        assert!(none.0.contains("127.0.0.1"), "{}", none);
        assert!(!format!("{:?}", store).contains("s3cret"));
        let bad = RedisStore::open("http://:s3cret-pw@host/", None, patient()).unwrap_err();
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
        let store = RedisStore::open(&server.url(), Some(ca), patient()).unwrap();
        assert!(
            store
                .reserve(&[ask("all", [Some(5); 4])], 1)
                .unwrap()
                .admitted
        );
        assert_eq!(
            first4(store.read(&["all".into()]).unwrap().counts),
            vec![[1; 4]]
        );
        // The bundled web roots do not trust a private CA: the handshake fails, as a value.
        let untrusted = RedisStore::open(&server.url(), None, patient()).unwrap();
        let e = untrusted.reserve(&[], 1).unwrap_err();
        assert!(e.0.starts_with("redis at localhost:"), "{}", e);
        let missing =
            RedisStore::open(&server.url(), Some("/nonexistent/ca.pem"), patient()).unwrap_err();
        assert!(missing.0.contains("/nonexistent/ca.pem"), "{}", missing);
    }
}
