//! The background side of discovery and active health: one scheduler thread per process reads
//! the current config each round, starts a short-lived probe thread for every backend that is
//! due (never two for the same backend), and sleeps until the next one is due or a reload or a
//! finished probe wakes it. Results go to the catalog (model lists) and the balancer (up/down).

use crate::backend::balance::ProbeMark;
use crate::backend::catalog::{TargetKey, TargetState};
use crate::backend::live::ConfigStore;
use crate::backend::probe::Prober;
use crate::config::Config;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How long the scheduler sleeps when nothing is due (a reload wakes it earlier).
const IDLE_WAIT: Duration = Duration::from_secs(3600);
/// The first retry after a failed probe; it doubles per failure up to the interval.
const BACKOFF_BASE: Duration = Duration::from_secs(1);
/// How many model names a log line names before it says "and N more".
const NAMES_IN_LOG: usize = 10;

/// One backend of one endpoint to probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// (endpoint id, backend URL).
    pub key: TargetKey,
    /// Refresh interval while the backend answers.
    pub interval: Duration,
    /// The answer's model list is kept (a discovering wildcard), not only its success.
    pub discover: bool,
}

/// What to probe for a config: every backend of a discovering wildcard (at the smaller of its
/// discovery and probe intervals) and every backend of an endpoint with a probe interval.
pub fn plan(config: &Config) -> Vec<Plan> {
    let mut out: Vec<Plan> = Vec::new();
    for e in &config.endpoints {
        let discover = e
            .wildcard
            .as_ref()
            .filter(|w| w.discover)
            .map(|w| w.interval);
        let interval = match (discover, e.probe_interval) {
            (Some(d), Some(p)) => d.min(p),
            (Some(d), None) => d,
            (None, Some(p)) => p,
            (None, None) => continue,
        };
        for b in &e.backends {
            let key = (e.id.clone(), b.url.clone());
            if !out.iter().any(|p| p.key == key) {
                out.push(Plan {
                    key,
                    interval,
                    discover: discover.is_some(),
                });
            }
        }
    }
    out
}

/// When a target is next due: at once when never probed; `interval` after a success; after a
/// failure, a backoff doubling from one second, never longer than `interval`.
pub fn due_at(state: &TargetState, interval: Duration, now: Instant) -> Instant {
    let Some(last) = state.last_attempt else {
        return now;
    };
    if state.failures == 0 {
        return last + interval;
    }
    let backoff = BACKOFF_BASE.saturating_mul(1 << (state.failures - 1).min(16));
    last + backoff.min(interval)
}

/// Starts the scheduler thread, now if the config probes or discovers anything, else on the
/// first reload that makes it (an idle process without probes has no thread waiting for
/// nothing); once started, it lives as long as the process.
pub fn spawn(store: Arc<ConfigStore>) {
    let weak = Arc::downgrade(&store);
    store.on_reload(Box::new(move || {
        if let Some(store) = weak.upgrade() {
            start_when_needed(&store);
        }
    }));
    start_when_needed(&store);
}

fn start_when_needed(store: &Arc<ConfigStore>) {
    if plan(&store.snapshot().config).is_empty() || !store.claim_scheduler() {
        return;
    }
    let prober = Arc::new(Prober::default());
    let store = Arc::clone(store);
    let spawned = std::thread::Builder::new()
        .name("discovery".into())
        .spawn(move || loop {
            let wait = schedule_round(&store, &prober);
            store.catalog.wait(wait);
        });
    if let Err(e) = spawned {
        log::error!("cannot start the discovery thread: {}", e);
    }
}

/// One round: forget backends the config no longer has, start the due probes, and return how
/// long to sleep until the next one is due.
fn schedule_round(store: &Arc<ConfigStore>, prober: &Arc<Prober>) -> Duration {
    let live = store.snapshot();
    let plans = plan(&live.config);
    for e in &live.config.endpoints {
        for b in &e.backends {
            if !plans.iter().any(|p| p.key.0 == e.id && p.key.1 == b.url) {
                live.balancer.clear_probe(&e.id, &b.url);
            }
        }
    }
    drop(live);
    let now = Instant::now();
    let mut wait = IDLE_WAIT;
    let mut due = Vec::new();
    {
        let mut s = store.catalog.schedule();
        let all = s.take_refresh_all();
        let targets = s.targets();
        targets.retain(|k, _| plans.iter().any(|p| &p.key == k));
        for p in &plans {
            let t = targets.entry(p.key.clone()).or_default();
            if t.in_flight {
                continue;
            }
            let at = if all { now } else { due_at(t, p.interval, now) };
            if at <= now {
                t.in_flight = true;
                t.last_attempt = Some(now);
                due.push(p.clone());
            } else {
                wait = wait.min(at - now);
            }
        }
    }
    for p in due {
        let key = p.key.clone();
        let (thread_store, prober) = (Arc::clone(store), Arc::clone(prober));
        let spawned = std::thread::Builder::new()
            .name("probe".into())
            .spawn(move || probe(&thread_store, &prober, &p));
        if let Err(e) = spawned {
            log::error!("cannot start a probe thread: {}", e);
            store.catalog.update(&key, |t| t.in_flight = false);
        }
    }
    wait
}

/// Probes one backend and records the answer.
fn probe(store: &ConfigStore, prober: &Prober, plan: &Plan) {
    let live = store.snapshot();
    let (id, url) = &plan.key;
    let found = live.config.endpoint(id).and_then(|e| {
        let b = e.backends.iter().find(|b| &b.url == url)?;
        Some((e, b))
    });
    let Some((endpoint, backend)) = found else {
        store.catalog.update(&plan.key, |t| t.in_flight = false);
        return;
    };
    let result = prober.list_models(endpoint, backend);
    let at = unix_now();
    let host = crate::redact::host(url).to_string();
    let before = store.catalog.update(&plan.key, |t| {
        let before = t.clone();
        t.in_flight = false;
        t.probed_at = Some(at);
        match &result {
            Ok(models) => {
                t.failures = 0;
                t.error = None;
                if plan.discover {
                    t.models = Some(models.clone());
                    t.listed_at = Some(at);
                }
            }
            Err(e) => {
                t.failures = t.failures.saturating_add(1);
                t.error = Some(e.clone());
            }
        }
        before
    });
    let Some(before) = before else { return };
    let mark = ProbeMark {
        up: result.is_ok(),
        at,
        error: result.as_ref().err().cloned(),
    };
    // The config may have been reloaded during the probe: mark the backend in the current one.
    store.snapshot().balancer.probed(id, url, &mark);
    match &result {
        Err(e) if before.failures == 0 => log::warn!(
            "probe of {} for model {} failed: {}; marked down{}, retrying with backoff",
            host,
            id,
            e,
            if before.models.is_some() {
                ", keeping its last model list"
            } else {
                ""
            }
        ),
        Err(e) => log::debug!("probe of {} for model {} failed again: {}", host, id, e),
        Ok(_) if before.failures > 0 => {
            log::info!("probe of {} for model {} succeeded: marked up", host, id)
        }
        Ok(_) => {}
    }
    if let (Ok(models), true) = (&result, plan.discover) {
        log_list_change(&live.config, id, &host, before.models.as_deref(), models);
    }
}

/// Says what a refresh changed, and warns about discovered ids a configured model hides.
fn log_list_change(
    config: &Config,
    id: &str,
    host: &str,
    before: Option<&[String]>,
    now: &[String],
) {
    let old = before.unwrap_or(&[]);
    let wildcard = config.endpoint(id).and_then(|e| e.wildcard.as_ref());
    // Ids that discoverInclude/discoverExclude filter out are never served: naming them would
    // suggest they are.
    let served = |m: &&String| wildcard.is_none_or(|w| w.accepts(m));
    let listed: Vec<&String> = now.iter().filter(served).collect();
    let added: Vec<&String> = listed
        .iter()
        .copied()
        .filter(|m| !old.contains(m))
        .collect();
    let removed: Vec<&String> = old
        .iter()
        .filter(served)
        .filter(|m| !now.contains(m))
        .collect();
    if before.is_some() && added.is_empty() && removed.is_empty() {
        return;
    }
    let filtered = now.len() - listed.len();
    log::info!(
        "discovery for {} at {}: {} {}{}{}{}",
        id,
        host,
        listed.len(),
        if listed.len() == 1 { "model" } else { "models" },
        if filtered > 0 {
            format!(
                " ({} more filtered out by discoverInclude/discoverExclude)",
                filtered
            )
        } else {
            String::new()
        },
        names(" added: ", &added),
        names(" removed: ", &removed)
    );
    let Some(w) = wildcard else {
        return;
    };
    for m in added.iter().filter(|m| w.accepts(m)) {
        let public = w.public_id(m);
        if config.is_configured(&public) {
            log::warn!(
                "discovered model {} at {} yields to the configured model of the same id",
                public,
                host
            );
        }
    }
}

fn names(label: &str, list: &[&String]) -> String {
    if list.is_empty() {
        return String::new();
    }
    let shown: Vec<&str> = list.iter().take(NAMES_IN_LOG).map(|s| s.as_str()).collect();
    let more = list.len().saturating_sub(NAMES_IN_LOG);
    let tail = if more > 0 {
        format!(" and {} more", more)
    } else {
        String::new()
    };
    format!(";{}{}{}", label, shown.join(", "), tail)
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_cover_discovering_and_probed_backends_once() {
        let text = r#"{"health":{"probeIntervalSecs":30},"endpoints":{
            "plain":{"url":"http://a","health":{"probeIntervalSecs":0}},
            "probed":{"backends":[{"url":"http://b"},{"url":"http://b","actualModelName":"x"}]},
            "ollama/*":{"url":"http://o","discoverIntervalSecs":60},
            "fast/*":{"url":"http://f","discoverIntervalSecs":60,"health":{"probeIntervalSecs":5}},
            "route-only/*":{"url":"http://r","discover":false,"health":{"probeIntervalSecs":0}}}}"#;
        let c = crate::config::parse("c", text, &Default::default(), &|_| None).unwrap();
        let plans = plan(&c);
        let got: Vec<(&str, &str, u64, bool)> = plans
            .iter()
            .map(|p| {
                (
                    p.key.0.as_str(),
                    p.key.1.as_str(),
                    p.interval.as_secs(),
                    p.discover,
                )
            })
            .collect();
        assert_eq!(
            got,
            vec![
                ("probed", "http://b", 30, false),
                ("ollama/*", "http://o", 30, true),
                ("fast/*", "http://f", 5, true),
            ]
        );
    }

    #[test]
    fn due_times_back_off_after_failures() {
        let now = Instant::now();
        let interval = Duration::from_secs(300);
        let state = |failures, last: Option<Instant>| TargetState {
            failures,
            last_attempt: last,
            ..TargetState::default()
        };
        assert_eq!(due_at(&state(0, None), interval, now), now);
        assert_eq!(due_at(&state(0, Some(now)), interval, now), now + interval);
        let secs = |f| (due_at(&state(f, Some(now)), interval, now) - now).as_secs();
        assert_eq!([1, 2, 3, 9, 10, 40].map(secs), [1, 2, 4, 256, 300, 300]);
        assert_eq!(
            due_at(&state(5, Some(now)), Duration::from_secs(1), now) - now,
            Duration::from_secs(1)
        );
    }
}
