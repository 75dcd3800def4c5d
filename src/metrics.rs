//! Prometheus metrics, kept in memory and written by hand in the text exposition format.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// Histogram bucket bounds in seconds: LLM requests range from milliseconds to minutes.
const BUCKETS: &[f64] = &[
    0.005, 0.025, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
];

#[derive(Debug, Default, Clone)]
struct Histogram {
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    fn observe(&mut self, v: f64) {
        if self.counts.is_empty() {
            self.counts = vec![0; BUCKETS.len()];
        }
        for (i, b) in BUCKETS.iter().enumerate() {
            if v <= *b {
                self.counts[i] += 1;
            }
        }
        self.sum += v;
        self.count += 1;
    }
}

#[derive(Debug, Default)]
struct Data {
    /// By model, backend and status class (nested: a request looks its series up by `&str`
    /// and allocates a label only the first time it is seen).
    requests: BTreeMap<String, BTreeMap<String, BTreeMap<String, u64>>>,
    duration: BTreeMap<String, Histogram>,
    ttfb: BTreeMap<String, Histogram>,
    upstream_errors: BTreeMap<(String, String, String), u64>,
    retries: BTreeMap<(String, String), u64>,
    /// By model, direction and whether the count is an estimate.
    tokens: BTreeMap<String, BTreeMap<(&'static str, bool), u64>>,
    refused: BTreeMap<(u16, &'static str), u64>,
    limit_refusals: BTreeMap<&'static str, u64>,
    /// Cost budgets' `warnAt` passed, by rule index and window.
    budget_warnings: BTreeMap<(usize, &'static str), u64>,
    /// The same per user, for users who have series of their own (`metrics.perUser`).
    user_budget_warnings: BTreeMap<(String, usize, &'static str), u64>,
    queue_wait: BTreeMap<String, Histogram>,
    /// The first `metrics.maxUsers` users seen since start, each with series of their own.
    users: BTreeMap<String, UserCounts>,
    /// Everyone after them, summed: a client inventing users cannot grow this map.
    other_users: UserCounts,
    /// Whether `other_users` has counted anything (its series appear from then on).
    any_other: bool,
    /// Micro-units by model and currency.
    cost: BTreeMap<(String, String), u64>,
    /// Micro-units by user (those in `users`) and currency.
    user_cost: BTreeMap<(String, String), u64>,
    /// Micro-units of the users beyond `users`, by currency.
    other_cost: BTreeMap<String, u64>,
}

/// One user's (or the summed others') requests, and tokens by direction and by whether they
/// were estimated (`[prompt, completion][reported, estimated]`).
#[derive(Debug, Default, Clone, Copy)]
struct UserCounts {
    requests: u64,
    tokens: [[u64; 2]; 2],
    /// Which of reported / estimated has been seen, so only those series appear.
    seen: [bool; 2],
}

impl UserCounts {
    fn add(&mut self, prompt: u64, completion: u64, estimated: bool) {
        let e = usize::from(estimated);
        self.requests += 1;
        self.seen[e] = true;
        self.tokens[0][e] = self.tokens[0][e].saturating_add(prompt);
        self.tokens[1][e] = self.tokens[1][e].saturating_add(completion);
    }

    /// `(direction, estimated, tokens)` for each series this user has.
    fn series(&self) -> impl Iterator<Item = (&'static str, bool, u64)> + '_ {
        [("prompt", 0), ("completion", 1)]
            .into_iter()
            .flat_map(move |(dir, d)| {
                [false, true]
                    .into_iter()
                    .filter(move |e| self.seen[usize::from(*e)])
                    .map(move |e| (dir, e, self.tokens[d][usize::from(e)]))
            })
    }
}

/// The value under `key`, inserted (and the key copied) only the first time `key` is seen.
fn series<'m, V: Default>(map: &'m mut BTreeMap<String, V>, key: &str) -> &'m mut V {
    if !map.contains_key(key) {
        map.insert(key.to_string(), V::default());
    }
    // Present: inserted just above if it was not (no input reaches this `expect`).
    map.get_mut(key).expect("the series was just inserted")
}

/// `2xx` and the like, written into `buf` (no allocation per request).
fn status_class(status: u16, buf: &mut [u8; 8]) -> &str {
    let mut w = std::io::Cursor::new(&mut buf[..]);
    let _ = std::io::Write::write_fmt(&mut w, format_args!("{}xx", status / 100));
    let n = w.position() as usize;
    std::str::from_utf8(&buf[..n]).unwrap_or("?xx")
}

/// Process-wide metrics; they survive config reloads.
#[derive(Debug, Default)]
pub struct Metrics {
    data: Mutex<Data>,
    in_flight: AtomicI64,
    ledger_failures: AtomicU64,
    invalid_usage: AtomicU64,
}

/// What one finished request contributes.
pub struct RequestRecord<'a> {
    /// Public model id, or `-`.
    pub model: &'a str,
    /// Backend host, or `-`.
    pub backend: &'a str,
    /// Status sent to the client.
    pub status: u16,
    /// Total time.
    pub duration: Duration,
    /// Time to the first body byte.
    pub ttfb: Option<Duration>,
    /// Tokens recorded (prompt, completion, estimated): the backend's `usage`, else the
    /// estimate the ledger has.
    pub tokens: Option<(u64, u64, bool)>,
    /// Its cost as the ledger has it (micro-units, currency); `None`: unpriced.
    pub cost: Option<(u64, &'a str)>,
}

impl Metrics {
    /// Counts a request entering the proxy until the guard drops.
    pub fn in_flight(&self) -> InFlightGuard<'_> {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlightGuard(self)
    }

    /// Records a finished request.
    pub fn request(&self, r: &RequestRecord) {
        let mut class_buf = [0u8; 8];
        let class = status_class(r.status, &mut class_buf);
        let mut d = self.data.lock().unwrap_or_else(|p| p.into_inner());
        let by_backend = series(&mut d.requests, r.model);
        *series(series(by_backend, r.backend), class) += 1;
        series(&mut d.duration, r.model).observe(r.duration.as_secs_f64());
        if let Some(t) = r.ttfb {
            series(&mut d.ttfb, r.model).observe(t.as_secs_f64());
        }
        if let Some((p, c, est)) = r.tokens {
            let by_dir = series(&mut d.tokens, r.model);
            for (dir, n) in [("prompt", p), ("completion", c)] {
                let v = by_dir.entry((dir, est)).or_default();
                *v = v.saturating_add(n);
            }
        }
        if let Some((micros, currency)) = r.cost {
            let v = d
                .cost
                .entry((r.model.to_string(), currency.to_string()))
                .or_default();
            *v = v.saturating_add(micros);
        }
    }

    /// Records an upstream failure by cause (`connect`, `timeout`, `status_5xx`, `status_429`, `mid_stream`).
    pub fn upstream_error(&self, model: &str, backend: &str, cause: &str) {
        let mut d = self.data.lock().unwrap_or_else(|p| p.into_inner());
        *d.upstream_errors
            .entry((model.to_string(), backend.to_string(), cause.to_string()))
            .or_default() += 1;
    }

    /// Records a request modelmux answered with an error of its own, by status and code.
    pub fn refused(&self, status: u16, code: &'static str) {
        let mut d = self.data.lock().unwrap_or_else(|p| p.into_inner());
        *d.refused.entry((status, code)).or_default() += 1;
    }

    /// Records a user's request and tokens (only with `metrics.perUser`: label cardinality).
    /// Once `max_users` users have series, any other user is counted with the others: first
    /// come rather than top-N, so a series never disappears or goes backwards.
    pub fn user(
        &self,
        user: &str,
        max_users: usize,
        prompt: u64,
        completion: u64,
        estimated: bool,
    ) {
        let mut d = self.data.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = d.users.get_mut(user) {
            c.add(prompt, completion, estimated);
        } else if d.users.len() < max_users {
            d.users
                .entry(user.to_string())
                .or_default()
                .add(prompt, completion, estimated);
        } else {
            d.other_users.add(prompt, completion, estimated);
            d.any_other = true;
        }
    }

    /// Records a user's cost (after `user` counted the request, so the user's place among
    /// the first `max_users` is already settled).
    pub fn user_cost(&self, user: &str, max_users: usize, micros: u64, currency: &str) {
        let mut d = self.data.lock().unwrap_or_else(|p| p.into_inner());
        let v = if d.users.contains_key(user) || d.users.len() < max_users {
            d.user_cost
                .entry((user.to_string(), currency.to_string()))
                .or_default()
        } else {
            d.other_cost.entry(currency.to_string()).or_default()
        };
        *v = v.saturating_add(micros);
    }

    /// Records a backend's usage report with counts too large to believe.
    pub fn invalid_usage(&self) {
        self.invalid_usage.fetch_add(1, Ordering::Relaxed);
    }

    /// Records a request a quota rule (or an unreachable limits store) refused.
    pub fn limit_refusal(&self, limit: &'static str) {
        let mut d = self.data.lock().unwrap_or_else(|p| p.into_inner());
        *d.limit_refusals.entry(limit).or_default() += 1;
    }

    /// Records a subject passing a cost budget's `warnAt` (once per window); `per_user`: the
    /// user and `metrics.maxUsers` under `metrics.perUser`.
    pub fn budget_warning(
        &self,
        rule: usize,
        window: &'static str,
        per_user: Option<(&str, usize)>,
    ) {
        let mut d = self.data.lock().unwrap_or_else(|p| p.into_inner());
        *d.budget_warnings.entry((rule, window)).or_default() += 1;
        // Only users who already have series: the same first `maxUsers` as the token series.
        if let Some((user, _)) = per_user.filter(|(u, _)| d.users.contains_key(*u)) {
            *d.user_budget_warnings
                .entry((user.to_string(), rule, window))
                .or_default() += 1;
        }
    }

    /// Records how long a request waited for a backend below its cap.
    pub fn queue_wait(&self, model: &str, waited: Duration) {
        let mut d = self.data.lock().unwrap_or_else(|p| p.into_inner());
        d.queue_wait
            .entry(model.to_string())
            .or_default()
            .observe(waited.as_secs_f64());
    }

    /// Records a usage line the ledger could not write.
    pub fn ledger_failure(&self) {
        self.ledger_failures.fetch_add(1, Ordering::Relaxed);
    }

    /// Records a retry on another backend, by the cause of the failure before it.
    pub fn retry(&self, model: &str, cause: &str) {
        let mut d = self.data.lock().unwrap_or_else(|p| p.into_inner());
        *d.retries
            .entry((model.to_string(), cause.to_string()))
            .or_default() += 1;
    }

    /// The text exposition; `queued` is the worker queue depth at scrape time. Per-user series
    /// only when `personal` (the scraper showed the admin or metrics key): they name people.
    pub fn render(&self, queued: usize, personal: bool) -> String {
        let d = self.data.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = String::with_capacity(4096);
        render_traffic(&d, &mut out);
        render_costs(&d, &mut out);
        if personal {
            render_users(&d, &mut out);
        }
        render_limits(&d, &mut out);
        drop(d);
        self.render_gauges(queued, &mut out);
        out
    }

    /// Counters kept outside the lock, and the gauges read at scrape time.
    fn render_gauges(&self, queued: usize, out: &mut String) {
        header(
            out,
            "modelmux_usage_ledger_write_failures_total",
            "counter",
            "Usage lines the ledger could not write (full disk...); traffic is not affected.",
        );
        let _ = writeln!(
            out,
            "modelmux_usage_ledger_write_failures_total {}",
            self.ledger_failures.load(Ordering::Relaxed)
        );
        header(
            out,
            "modelmux_invalid_usage_total",
            "counter",
            "Backend usage reports with a count above 1e9 tokens, not believed (the request was estimated).",
        );
        let _ = writeln!(
            out,
            "modelmux_invalid_usage_total {}",
            self.invalid_usage.load(Ordering::Relaxed)
        );
        header(
            out,
            "modelmux_in_flight_requests",
            "gauge",
            "Requests being handled now.",
        );
        let _ = writeln!(
            out,
            "modelmux_in_flight_requests {}",
            self.in_flight.load(Ordering::Relaxed).max(0)
        );
        header(
            out,
            "modelmux_queue_depth",
            "gauge",
            "Requests waiting for a worker.",
        );
        let _ = writeln!(out, "modelmux_queue_depth {}", queued);
    }
}

/// Requests, durations, backend errors, retries, tokens and refusals.
fn render_traffic(d: &Data, out: &mut String) {
    header(
        out,
        "modelmux_requests_total",
        "counter",
        "Requests answered, by model, backend and status class.",
    );
    let requests = d.requests.iter().flat_map(|(m, by_backend)| {
        by_backend
            .iter()
            .flat_map(move |(b, by_class)| by_class.iter().map(move |(c, v)| (m, b, c, v)))
    });
    for (m, b, c, v) in requests {
        let _ = writeln!(
            out,
            "modelmux_requests_total{{model=\"{}\",backend=\"{}\",status_class=\"{}\"}} {}",
            esc(m),
            esc(b),
            c,
            v
        );
    }
    histogram(
        out,
        "modelmux_request_duration_seconds",
        "Time from request to the end of the response, by model.",
        &d.duration,
    );
    histogram(
        out,
        "modelmux_time_to_first_byte_seconds",
        "Time from request to the first body byte sent, by model.",
        &d.ttfb,
    );
    header(
        out,
        "modelmux_upstream_errors_total",
        "counter",
        "Backend failures, by model, backend and cause.",
    );
    for ((m, b, c), v) in &d.upstream_errors {
        let _ = writeln!(
            out,
            "modelmux_upstream_errors_total{{model=\"{}\",backend=\"{}\",cause=\"{}\"}} {}",
            esc(m),
            esc(b),
            esc(c),
            v
        );
    }
    header(
        out,
        "modelmux_retries_total",
        "counter",
        "Retries on another backend or fallback model, by model and cause.",
    );
    for ((m, c), v) in &d.retries {
        let _ = writeln!(
            out,
            "modelmux_retries_total{{model=\"{}\",cause=\"{}\"}} {}",
            esc(m),
            esc(c),
            v
        );
    }
    header(
        out,
        "modelmux_tokens_total",
        "counter",
        "Tokens by model and direction, as the ledger records them: reported by backends (estimated=\"false\") or estimated when a backend reported none (estimated=\"true\").",
    );
    let tokens = d
        .tokens
        .iter()
        .flat_map(|(m, by_dir)| by_dir.iter().map(move |((dir, est), v)| (m, dir, est, v)));
    for (m, dir, est, v) in tokens {
        let _ = writeln!(
            out,
            "modelmux_tokens_total{{model=\"{}\",direction=\"{}\",estimated=\"{}\"}} {}",
            esc(m),
            dir,
            est,
            v
        );
    }
    header(
        out,
        "modelmux_refused_requests_total",
        "counter",
        "Requests modelmux answered with an error of its own (bad framing, headers or body, unknown model, keys, overload), by status and code.",
    );
    for ((status, code), v) in &d.refused {
        let _ = writeln!(
            out,
            "modelmux_refused_requests_total{{status=\"{}\",code=\"{}\"}} {}",
            status, code, v
        );
    }
}

/// What requests cost, by model (unpriced ones are not in it).
fn render_costs(d: &Data, out: &mut String) {
    if !d.cost.is_empty() {
        header(
            out,
            "modelmux_cost_total",
            "counter",
            "Cost of requests by model, in the configured currency, as the ledger records it (estimated usage included; unpriced backends are not counted).",
        );
        for ((m, cur), v) in &d.cost {
            let _ = writeln!(
                out,
                "modelmux_cost_total{{model=\"{}\",currency=\"{}\"}} {}",
                esc(m),
                esc(cur),
                crate::money::format(*v)
            );
        }
    }
}

/// Per-user series (they name people: only for the admin or metrics key).
/// Per-user budget warnings (only for users with series of their own).
fn render_user_warnings(d: &Data, out: &mut String) {
    if !d.user_budget_warnings.is_empty() {
        header(
            out,
            "modelmux_user_budget_warnings_total",
            "counter",
            "Cost budgets whose warnAt a user passed, by user, rule and window (metrics.perUser; the first metrics.maxUsers users).",
        );
        for ((u, rule, window), v) in &d.user_budget_warnings {
            let _ = writeln!(
                out,
                "modelmux_user_budget_warnings_total{{user=\"{}\",rule=\"{}\",window=\"{}\"}} {}",
                esc(u),
                rule,
                window,
                v
            );
        }
    }
}

fn render_users(d: &Data, out: &mut String) {
    render_user_warnings(d, out);
    if !d.users.is_empty() {
        header(
            out,
            "modelmux_user_requests_total",
            "counter",
            "Proxied requests per user (metrics.perUser; the first metrics.maxUsers users).",
        );
        for (u, c) in &d.users {
            let _ = writeln!(
                out,
                "modelmux_user_requests_total{{user=\"{}\"}} {}",
                esc(u),
                c.requests
            );
        }
        header(
            out,
            "modelmux_user_tokens_total",
            "counter",
            "Tokens per user and direction (metrics.perUser; the first metrics.maxUsers users), reported or estimated as in modelmux_tokens_total.",
        );
        for (u, c) in &d.users {
            for (dir, est, v) in c.series() {
                let _ = writeln!(
                    out,
                    "modelmux_user_tokens_total{{user=\"{}\",direction=\"{}\",estimated=\"{}\"}} {}",
                    esc(u),
                    dir,
                    est,
                    v
                );
            }
        }
    }
    if !d.user_cost.is_empty() {
        header(
            out,
            "modelmux_user_cost_total",
            "counter",
            "Cost per user in the configured currency (metrics.perUser; the first metrics.maxUsers users).",
        );
        for ((u, cur), v) in &d.user_cost {
            let _ = writeln!(
                out,
                "modelmux_user_cost_total{{user=\"{}\",currency=\"{}\"}} {}",
                esc(u),
                esc(cur),
                crate::money::format(*v)
            );
        }
    }
    if !d.other_cost.is_empty() {
        header(
            out,
            "modelmux_user_other_cost_total",
            "counter",
            "Cost of users beyond metrics.maxUsers, summed, in the configured currency.",
        );
        for (cur, v) in &d.other_cost {
            let _ = writeln!(
                out,
                "modelmux_user_other_cost_total{{currency=\"{}\"}} {}",
                esc(cur),
                crate::money::format(*v)
            );
        }
    }
    if d.any_other {
        let o = d.other_users;
        header(
            out,
            "modelmux_user_other_requests_total",
            "counter",
            "Proxied requests of users beyond metrics.maxUsers, summed.",
        );
        let _ = writeln!(out, "modelmux_user_other_requests_total {}", o.requests);
        header(
            out,
            "modelmux_user_other_tokens_total",
            "counter",
            "Tokens of users beyond metrics.maxUsers, summed, by direction, reported or estimated.",
        );
        for (dir, est, v) in o.series() {
            let _ = writeln!(
                out,
                "modelmux_user_other_tokens_total{{direction=\"{}\",estimated=\"{}\"}} {}",
                dir, est, v
            );
        }
    }
}

/// Quota refusals and the wait for capped backends.
fn render_limits(d: &Data, out: &mut String) {
    header(
        out,
        "modelmux_limit_refusals_total",
        "counter",
        "Requests refused by a quota rule, by the kind of limit (store_unavailable: the limits store was down in closed mode).",
    );
    for (limit, v) in &d.limit_refusals {
        let _ = writeln!(
            out,
            "modelmux_limit_refusals_total{{limit=\"{}\"}} {}",
            limit, v
        );
    }
    header(
        out,
        "modelmux_budget_warnings_total",
        "counter",
        "Subjects (users, keys, models a rule counts apart) that passed a cost budget's warnAt, once per window, by rule index and window (day, week, month, total).",
    );
    for ((rule, window), v) in &d.budget_warnings {
        let _ = writeln!(
            out,
            "modelmux_budget_warnings_total{{rule=\"{}\",window=\"{}\"}} {}",
            rule, window, v
        );
    }
    histogram(
        out,
        "modelmux_backend_queue_wait_seconds",
        "Time requests waited for a backend below its maxConcurrent, by model.",
        &d.queue_wait,
    );
}

/// Decrements the in-flight gauge on drop.
pub struct InFlightGuard<'a>(&'a Metrics);

impl Drop for InFlightGuard<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {} {}\n# TYPE {} {}", name, help, name, kind);
}

fn histogram(out: &mut String, name: &str, help: &str, by_model: &BTreeMap<String, Histogram>) {
    header(out, name, "histogram", help);
    for (m, h) in by_model {
        for (i, b) in BUCKETS.iter().enumerate() {
            let _ = writeln!(
                out,
                "{}_bucket{{model=\"{}\",le=\"{}\"}} {}",
                name,
                esc(m),
                b,
                h.counts.get(i).copied().unwrap_or(0)
            );
        }
        let _ = writeln!(
            out,
            "{}_bucket{{model=\"{}\",le=\"+Inf\"}} {}",
            name,
            esc(m),
            h.count
        );
        let _ = writeln!(out, "{}_sum{{model=\"{}\"}} {}", name, esc(m), h.sum);
        let _ = writeln!(out, "{}_count{{model=\"{}\"}} {}", name, esc(m), h.count);
    }
}

/// Escapes a label value as the exposition format requires.
pub fn esc(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}
