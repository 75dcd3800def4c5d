//! The models that exist right now: the configured ones plus what wildcard endpoints discovered
//! on their backends, and which endpoint serves a requested id. Discovery (`discovery.rs`)
//! writes the lists in the background; `/models` and routing only read the last good ones, so
//! they never wait on a backend.

use crate::backend::balance::Pick;
use crate::config::{Backend, Config, Endpoint};
use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// One backend of one endpoint: (endpoint id, backend URL).
pub type TargetKey = (String, String);

/// What discovery knows about one backend of one endpoint.
#[derive(Debug, Clone, Default)]
pub struct TargetState {
    /// The backend's last good model list (discovering endpoints only).
    pub models: Option<Vec<String>>,
    /// Unix seconds of the last good list.
    pub listed_at: Option<u64>,
    /// Unix seconds of the last probe, good or not.
    pub probed_at: Option<u64>,
    /// Why the last probe failed; while set, `models` is stale.
    pub error: Option<String>,
    /// Failed probes in a row, for the retry backoff.
    pub failures: u32,
    /// When the last probe started.
    pub last_attempt: Option<Instant>,
    /// A probe of this target is running now.
    pub in_flight: bool,
}

/// Every target's state, by key.
pub type Targets = HashMap<TargetKey, TargetState>;

/// The shared discovery state: one per process, kept across reloads.
#[derive(Debug, Default)]
pub struct Catalog {
    inner: Mutex<Inner>,
    changed: Condvar,
}

#[derive(Debug, Default)]
struct Inner {
    targets: Targets,
    /// A reload happened: every target is due at once.
    refresh_all: bool,
    /// Something the scheduler must look at happened since it last looked.
    dirty: bool,
}

/// The scheduler's view while it holds the lock.
pub struct Schedule<'a> {
    guard: MutexGuard<'a, Inner>,
}

impl Schedule<'_> {
    /// Every target's state.
    pub fn targets(&mut self) -> &mut Targets {
        &mut self.guard.targets
    }

    /// True (once) when a reload asked for every target to be refreshed now.
    pub fn take_refresh_all(&mut self) -> bool {
        std::mem::take(&mut self.guard.refresh_all)
    }
}

impl Catalog {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `f` on every target's state under the lock (readers: keep it short).
    pub fn read<R>(&self, f: impl FnOnce(&Targets) -> R) -> R {
        f(&self.lock().targets)
    }

    /// Changes one target's state, if it is still tracked; wakes the scheduler.
    pub fn update<R>(&self, key: &TargetKey, f: impl FnOnce(&mut TargetState) -> R) -> Option<R> {
        let mut g = self.lock();
        let r = g.targets.get_mut(key).map(f);
        g.dirty = true;
        self.changed.notify_all();
        r
    }

    /// The scheduler's exclusive view.
    pub fn schedule(&self) -> Schedule<'_> {
        Schedule { guard: self.lock() }
    }

    /// A reload: refresh every target now.
    pub fn refresh_all(&self) {
        let mut g = self.lock();
        g.refresh_all = true;
        g.dirty = true;
        self.changed.notify_all();
    }

    /// Waits until something changed or `timeout` passed.
    pub fn wait(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let mut g = self.lock();
        while !g.dirty {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            g = match self.changed.wait_timeout(g, left) {
                Ok((g, _)) => g,
                Err(p) => p.into_inner().0,
            };
        }
        g.dirty = false;
    }
}

/// One entry of `/models`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    /// The public model id.
    pub id: String,
    /// What chat UIs show.
    pub display_name: String,
}

/// Where a requested model id goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    /// The endpoint serving it.
    pub index: usize,
    /// For a wildcard: the backend model name, the part of the id after the prefix.
    pub backend_model: Option<String>,
    /// The id is configured or in a discovered list (only such ids become metric labels).
    pub listed: bool,
    /// Backends of the endpoint not to try: those whose list lacks the model while another's
    /// has it.
    pub skip: Vec<usize>,
    /// The id is one of the endpoint's `aliases`: the request counts as the endpoint's own id.
    pub alias: bool,
}

impl Resolved {
    /// The backend one attempt goes to; a wildcard's backends are asked for the requested model.
    pub fn backend<'e>(&self, endpoint: &'e Endpoint, pick: Pick) -> Option<Cow<'e, Backend>> {
        let b = endpoint.backends.get(pick.1)?;
        Some(match &self.backend_model {
            Some(m) if pick.0 == self.index => Cow::Owned(Backend {
                actual_model_name: m.clone(),
                ..b.clone()
            }),
            _ => Cow::Borrowed(b),
        })
    }

    /// Backends of the model not to try, as picks.
    pub fn skipped(&self) -> Vec<Pick> {
        self.skip.iter().map(|b| (self.index, *b)).collect()
    }
}

/// The models `/models` shows, in config order: a discovering wildcard's models where the
/// wildcard stands, sorted by id. A discovered id equal to a configured one, or to one an
/// earlier wildcard listed, is left out.
pub fn list(config: &Config, targets: &Targets) -> Vec<Listed> {
    let mut seen: HashSet<String> = HashSet::new();
    let mut out = Vec::new();
    for e in &config.endpoints {
        match &e.wildcard {
            None => {
                if seen.insert(e.id.clone()) {
                    out.push(Listed {
                        id: e.id.clone(),
                        display_name: e.display_name.clone(),
                    });
                }
            }
            Some(w) if w.discover => {
                for m in discovered(e, targets) {
                    let id = w.public_id(&m);
                    if config.is_configured(&id) || !seen.insert(id.clone()) {
                        continue;
                    }
                    out.push(Listed {
                        display_name: display_name(e, &id, &m),
                        id,
                    });
                }
            }
            Some(_) => {}
        }
    }
    out
}

/// The backend models a wildcard endpoint's backends listed, filtered, sorted, once each.
pub fn discovered(e: &Endpoint, targets: &Targets) -> Vec<String> {
    let Some(w) = e.wildcard.as_ref().filter(|w| w.discover) else {
        return Vec::new();
    };
    let mut all: Vec<String> = e
        .backends
        .iter()
        .filter_map(|b| targets.get(&(e.id.clone(), b.url.clone())))
        .filter_map(|t| t.models.as_ref())
        .flatten()
        .filter(|m| w.accepts(m))
        .cloned()
        .collect();
    all.sort();
    all.dedup();
    all
}

/// `displayName` with `{model}` replaced by the backend model; the id when none was configured.
fn display_name(e: &Endpoint, id: &str, backend_model: &str) -> String {
    if e.display_name == e.id {
        id.to_string()
    } else {
        e.display_name.replace("{model}", backend_model)
    }
}

/// The endpoint that serves `id`: a configured model of that id; else a wildcard whose backends
/// list it; else an endpoint's alias (exact, then the most specific glob); else the wildcard
/// with the longest prefix that accepts it (a model pulled a minute ago is served before the
/// next refresh lists it). `None`: no such model.
pub fn resolve(config: &Config, targets: &Targets, id: &str) -> Option<Resolved> {
    if let Some(index) = config
        .endpoints
        .iter()
        .position(|e| e.wildcard.is_none() && e.id == id)
    {
        return Some(Resolved {
            index,
            backend_model: None,
            listed: true,
            skip: Vec::new(),
            alias: false,
        });
    }
    let candidates: Vec<(usize, &Endpoint, &str)> = config
        .endpoints
        .iter()
        .enumerate()
        .filter_map(|(i, e)| Some((i, e, e.wildcard.as_ref()?.backend_model(id)?)))
        .collect();
    let having = |e: &Endpoint, m: &str| -> Vec<usize> {
        e.backends
            .iter()
            .enumerate()
            .filter(|(_, b)| {
                targets
                    .get(&(e.id.clone(), b.url.clone()))
                    .and_then(|t| t.models.as_ref())
                    .is_some_and(|list| list.iter().any(|x| x == m))
            })
            .map(|(j, _)| j)
            .collect()
    };
    let listed = candidates.iter().find_map(|(i, e, m)| {
        let has = having(e, m);
        (!has.is_empty() && e.wildcard.as_ref().is_some_and(|w| w.discover)).then(|| {
            let skip = (0..e.backends.len()).filter(|j| !has.contains(j)).collect();
            (*i, *m, skip)
        })
    });
    if let Some((index, m, skip)) = listed {
        return Some(Resolved {
            index,
            backend_model: Some(m.to_string()),
            listed: true,
            skip,
            alias: false,
        });
    }
    if let Some(index) = config.alias(id) {
        return Some(Resolved {
            index,
            backend_model: None,
            listed: true,
            skip: Vec::new(),
            alias: true,
        });
    }
    // Longest prefix first; `max_by_key` keeps the last of equals, so reverse to keep the first.
    let (index, _, m) = candidates
        .iter()
        .rev()
        .max_by_key(|(_, e, _)| e.wildcard.as_ref().map_or(0, |w| w.prefix.len()))?;
    Some(Resolved {
        index: *index,
        backend_model: Some(m.to_string()),
        listed: false,
        skip: Vec::new(),
        alias: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(text: &str) -> Config {
        crate::config::parse("c", text, &Default::default(), &|_| None).unwrap()
    }

    fn targets(lists: &[(&str, &str, &[&str])]) -> Targets {
        lists
            .iter()
            .map(|(id, url, models)| {
                (
                    (id.to_string(), url.to_string()),
                    TargetState {
                        models: Some(models.iter().map(|m| m.to_string()).collect()),
                        ..TargetState::default()
                    },
                )
            })
            .collect()
    }

    const TEXT: &str = r#"{"endpoints":{
        "gpt-4o":{"url":"http://openai"},
        "ollama/*":{"backends":[{"url":"http://o1"},{"url":"http://o2"}],
                    "displayName":"{model} (Ollama)","discoverExclude":["*embed*"]},
        "ollama/llama3":{"url":"http://pinned","displayName":"Pinned"},
        "ollama/big/*":{"url":"http://big"},
        "*":{"url":"http://catchall","discover":false}}}"#;

    #[test]
    fn listing_puts_discovered_models_where_the_wildcard_stands() {
        let c = config(TEXT);
        let t = targets(&[
            ("ollama/*", "http://o1", &["qwen2", "llama3", "nomic-embed"]),
            ("ollama/*", "http://o2", &["qwen2", "mistral"]),
            ("ollama/big/*", "http://big", &["x", "qwen2"]),
        ]);
        let got: Vec<(String, String)> = list(&c, &t)
            .into_iter()
            .map(|l| (l.id, l.display_name))
            .collect();
        let want = [
            ("gpt-4o", "gpt-4o"),
            ("ollama/mistral", "mistral (Ollama)"),
            ("ollama/qwen2", "qwen2 (Ollama)"),
            ("ollama/llama3", "Pinned"),
            ("ollama/big/qwen2", "ollama/big/qwen2"),
            ("ollama/big/x", "ollama/big/x"),
        ];
        let want: Vec<(String, String)> = want
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn resolve_table() {
        let c = config(TEXT);
        let t = targets(&[
            ("ollama/*", "http://o1", &["qwen2", "llama3"]),
            ("ollama/*", "http://o2", &["mistral"]),
            ("ollama/big/*", "http://big", &["x"]),
        ]);
        let idx = |id: &str| c.endpoints.iter().position(|e| e.id == id).unwrap();
        let r = |index, m: Option<&str>, listed, skip: &[usize]| {
            Some(Resolved {
                index,
                backend_model: m.map(str::to_string),
                listed,
                skip: skip.to_vec(),
                alias: false,
            })
        };
        let cases = [
            ("gpt-4o", r(idx("gpt-4o"), None, true, &[])),
            // configured beats discovered
            ("ollama/llama3", r(idx("ollama/llama3"), None, true, &[])),
            // listed by one backend only: the other is skipped
            (
                "ollama/qwen2",
                r(idx("ollama/*"), Some("qwen2"), true, &[1]),
            ),
            (
                "ollama/mistral",
                r(idx("ollama/*"), Some("mistral"), true, &[0]),
            ),
            // not listed yet: every backend, not a metric label
            ("ollama/new", r(idx("ollama/*"), Some("new"), false, &[])),
            // excluded by the filter: the catch-all takes it (it would be 404 without one)
            (
                "ollama/nomic-embed",
                r(idx("*"), Some("ollama/nomic-embed"), false, &[]),
            ),
            // the longer prefix wins when nothing lists the id
            (
                "ollama/big/y",
                r(idx("ollama/big/*"), Some("y"), false, &[]),
            ),
            ("ollama/big/x", r(idx("ollama/big/*"), Some("x"), true, &[])),
            ("other", r(idx("*"), Some("other"), false, &[])),
        ];
        for (id, want) in cases {
            assert_eq!(resolve(&c, &t, id), want, "{}", id);
        }
        let no_catchall = config(
            r#"{"endpoints":{"ollama/*":{"url":"http://o1","discoverExclude":["*embed*"]}}}"#,
        );
        assert_eq!(resolve(&no_catchall, &t, "ollama/nomic-embed"), None);
        assert_eq!(resolve(&no_catchall, &t, "ollama/"), None);
        assert_eq!(resolve(&no_catchall, &t, "gpt-4o"), None);
    }

    #[test]
    fn aliases_come_after_listed_ids_and_before_wildcard_prefixes() {
        let c = config(
            r#"{"endpoints":{
            "local":{"url":"http://l","aliases":["claude-*","ollama/qwen2","ollama/n*"]},
            "ollama/*":{"url":"http://o1"},
            "*":{"url":"http://catchall","discover":false}}}"#,
        );
        let t = targets(&[("ollama/*", "http://o1", &["qwen2"])]);
        let got = |id: &str| {
            let r = resolve(&c, &t, id).unwrap();
            (c.endpoints[r.index].id.as_str(), r.alias, r.listed)
        };
        assert_eq!(got("local"), ("local", false, true));
        assert_eq!(got("claude-sonnet-4-5"), ("local", true, true));
        // listed by discovery: a public id, which beats an exact alias
        assert_eq!(got("ollama/qwen2"), ("ollama/*", false, true));
        // not listed: the alias beats the wildcard's prefix, and the catch-all
        assert_eq!(got("ollama/new"), ("local", true, true));
        assert_eq!(got("ollama/other"), ("ollama/*", false, false));
        assert_eq!(got("gpt-4o"), ("*", false, false));
    }
}
