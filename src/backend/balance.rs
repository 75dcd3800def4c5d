//! Choosing a backend: weighted round-robin that prefers the fewest requests in flight, passive
//! health (a backend failing N times in a row is skipped for a cool-down) and active health (a
//! backend whose `/models` probe failed is skipped until a probe succeeds) and `Retry-After`
//! hold-offs (capped, lifted by a successful probe and by a reload). A request with a
//! conversation key on an endpoint with `affinity` goes instead to the first backend of the
//! key's rendezvous order that the same checks let through.

use super::affinity::{self, KeyHash};
use crate::config::{Config, HealthPolicy};
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Live counters of one backend.
#[derive(Debug, Default)]
pub struct BackendState {
    in_flight: AtomicUsize,
    consecutive_failures: AtomicU32,
    cooldown_until: Mutex<Option<Instant>>,
    probe: Mutex<Option<ProbeMark>>,
    /// The backend asked to be left alone until then (a 429 or 503 with `Retry-After`).
    held_until: Mutex<Option<Instant>>,
}

/// The result of the last active health probe of a backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeMark {
    /// The probe succeeded; a failed one takes the backend out of selection until one succeeds.
    pub up: bool,
    /// Unix seconds of the probe.
    pub at: u64,
    /// Why it failed.
    pub error: Option<String>,
}

/// Live state of one model's backends.
#[derive(Debug)]
pub struct ModelPool {
    weights: Vec<i64>,
    /// Each backend's `affinity::backend_hash`, for the rendezvous order.
    hashes: Vec<u64>,
    // ConfigStore with the previous config's pool for backends that a reload kept, so in-flight
    // counts and cool-downs survive reloads (a file watch may reload often).
    states: Vec<Arc<BackendState>>,
    keys: Vec<(String, String)>,
    // Smooth weighted round-robin (as nginx does it): even spread, no bursts.
    current: Mutex<Vec<i64>>,
}

/// Every model's pool, in config order.
#[derive(Debug)]
pub struct Balancer {
    pools: Vec<ModelPool>,
    policy: HealthPolicy,
}

/// A backend picked for one attempt: (model index, backend index).
pub type Pick = (usize, usize);

/// What a backend's state looks like from outside, for `/health?backends=1`.
#[derive(Debug, Clone)]
pub struct BackendView {
    /// Requests now in flight.
    pub in_flight: usize,
    /// Failures in a row.
    pub consecutive_failures: u32,
    /// Time left in the cool-down, if cooling down.
    pub cooldown_left: Option<Duration>,
    /// The last active health probe, if any ran.
    pub probe: Option<ProbeMark>,
    /// Time left in a hold-off the backend asked for with `Retry-After`, if held off.
    pub held_left: Option<Duration>,
}

impl Balancer {
    /// State for a config, carrying over the state of backends `previous` already had (same
    /// model id, URL and backend model name).
    pub fn new(config: &Config, previous: Option<&Balancer>) -> Balancer {
        let pools = config
            .endpoints
            .iter()
            .map(|e| {
                let keys: Vec<(String, String)> = e
                    .backends
                    .iter()
                    .map(|b| (pool_key(&e.id, &b.url), b.actual_model_name.clone()))
                    .collect();
                let states = keys
                    .iter()
                    .map(|k| match previous.and_then(|p| p.find_state(k)) {
                        Some(s) => {
                            // A reload is the operator's way to say "try it again now": a
                            // hold-off the backend asked for does not outlive it.
                            *s.held_until.lock().unwrap_or_else(|p| p.into_inner()) = None;
                            s
                        }
                        None => Arc::new(BackendState::default()),
                    })
                    .collect();
                ModelPool {
                    weights: e.backends.iter().map(|b| i64::from(b.weight)).collect(),
                    hashes: e
                        .backends
                        .iter()
                        .map(|b| affinity::backend_hash(&b.url, &b.actual_model_name))
                        .collect(),
                    states,
                    keys,
                    current: Mutex::new(vec![0; e.backends.len()]),
                }
            })
            .collect();
        Balancer {
            pools,
            policy: config.health,
        }
    }

    /// `pick_in` among all backends, without a conversation key.
    #[cfg(test)]
    pub fn pick(&self, m: usize, tried: &[Pick]) -> Option<Pick> {
        self.pick_in(m, tried, None, None)
    }

    /// Picks a backend of model `m` not in `tried`, among the backends `allowed` only (those
    /// below their concurrency cap) when given: healthy ones first; among them the lowest
    /// in-flight per weight, ties broken by smooth weighted round-robin. When every untried
    /// backend is cooling down, one of them is still returned: trying beats refusing. A
    /// backend that asked to be left alone (`hold_off`) is never picked. With a conversation
    /// `key`, the first of the key's rendezvous order that is left and not cooling down (a
    /// cooling one only when nothing else is left), so a conversation stays on its backend and
    /// moves, while that one cannot serve, always to the same next one.
    pub fn pick_in(
        &self,
        m: usize,
        tried: &[Pick],
        allowed: Option<&[usize]>,
        key: Option<KeyHash>,
    ) -> Option<Pick> {
        let pool = self.pools.get(m)?;
        let now = Instant::now();
        // One snapshot of the state: other threads change it while we decide. On the stack for
        // the usual few backends (no allocation per request), on the heap beyond.
        let snapshot = (0..pool.states.len())
            .filter(|b| !tried.contains(&(m, *b)))
            .filter(|b| allowed.is_none_or(|a| a.contains(b)))
            .filter(|b| pool.held_for(*b, now).is_none())
            .map(|b| Candidate {
                index: b,
                in_flight: pool.states[b].in_flight.load(Ordering::Relaxed) as i64,
                weight: pool.weights[b],
                cooling: pool.cooling(b, now),
            });
        let mut inline = [Candidate::default(); INLINE_CANDIDATES];
        let heap: Vec<Candidate>;
        let candidates: &[Candidate] = if pool.states.len() <= INLINE_CANDIDATES {
            let mut n = 0;
            for c in snapshot {
                inline[n] = c;
                n += 1;
            }
            &inline[..n]
        } else {
            heap = snapshot.collect();
            &heap
        };
        if let Some(key) = key {
            return choose_ranked(candidates, &pool.rank(key)).map(|b| (m, b));
        }
        let mut current = pool.current.lock().unwrap_or_else(|p| p.into_inner());
        choose(candidates, &mut current).map(|b| (m, b))
    }

    /// Leaves a backend alone for `secs` (it answered 429 or 503 with `Retry-After`), at most
    /// `health.maxHoldOffSecs`: one answer asking for a day must not shut the model for a day.
    pub fn hold_off(&self, pick: Pick, secs: u64) {
        let held = Duration::from_secs(secs).min(self.policy.max_hold_off);
        if held.is_zero() {
            return;
        }
        if let Some(s) = self.state(pick) {
            *s.held_until.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now() + held);
        }
    }

    /// When every backend of `models` not in `tried` is held off: the time until the first
    /// one may be tried again.
    pub fn all_held(&self, models: &[usize], tried: &[Pick]) -> Option<Duration> {
        let now = Instant::now();
        let mut soonest: Option<Duration> = None;
        for &m in models {
            let pool = self.pools.get(m)?;
            for b in (0..pool.states.len()).filter(|b| !tried.contains(&(m, *b))) {
                let left = pool.held_for(b, now)?;
                soonest = Some(soonest.map_or(left, |s| s.min(left)));
            }
        }
        soonest
    }

    /// Marks a request as in flight on a backend until the guard drops.
    pub fn start(&self, pick: Pick) -> InFlight<'_> {
        if let Some(s) = self.state(pick) {
            s.in_flight.fetch_add(1, Ordering::Relaxed);
        }
        InFlight {
            balancer: self,
            pick,
        }
    }

    /// Records a success: the failure streak ends.
    pub fn success(&self, pick: Pick) {
        if let Some(s) = self.state(pick) {
            s.consecutive_failures.store(0, Ordering::Relaxed);
            *s.cooldown_until.lock().unwrap_or_else(|p| p.into_inner()) = None;
        }
    }

    /// Records a failure; the Nth in a row starts a cool-down. Returns true when it did.
    pub fn failure(&self, pick: Pick) -> bool {
        let Some(s) = self.state(pick) else {
            return false;
        };
        let n = s.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
        if n >= self.policy.failure_threshold {
            *s.cooldown_until.lock().unwrap_or_else(|p| p.into_inner()) =
                Some(Instant::now() + self.policy.cooldown);
            // The streak restarts, so after the cool-down one more failure does not re-trip at once
            // unless the threshold is 1.
            s.consecutive_failures.store(0, Ordering::Relaxed);
            return true;
        }
        false
    }

    /// Records an active health probe of every backend of model `id` at `url`; returns how
    /// many backends it applied to.
    pub fn probed(&self, id: &str, url: &str, mark: &ProbeMark) -> usize {
        let key = pool_key(id, url);
        let mut n = 0;
        for pool in &self.pools {
            for (k, s) in pool.keys.iter().zip(&pool.states) {
                if k.0 == key {
                    *s.probe.lock().unwrap_or_else(|p| p.into_inner()) = Some(mark.clone());
                    // A backend that answers its probe is back: its `Retry-After` hold-off ends.
                    if mark.up {
                        *s.held_until.lock().unwrap_or_else(|p| p.into_inner()) = None;
                    }
                    n += 1;
                }
            }
        }
        n
    }

    /// Forgets the probe result of every backend of model `id` at `url`: its probing was turned
    /// off, and a down mark nothing will lift must not keep it out of selection.
    pub fn clear_probe(&self, id: &str, url: &str) {
        let key = pool_key(id, url);
        for pool in &self.pools {
            for (k, s) in pool.keys.iter().zip(&pool.states) {
                if k.0 == key {
                    *s.probe.lock().unwrap_or_else(|p| p.into_inner()) = None;
                }
            }
        }
    }

    /// A snapshot of one backend's state.
    pub fn view(&self, pick: Pick) -> Option<BackendView> {
        let s = self.state(pick)?;
        let until = *s.cooldown_until.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        Some(BackendView {
            in_flight: s.in_flight.load(Ordering::Relaxed),
            consecutive_failures: s.consecutive_failures.load(Ordering::Relaxed),
            cooldown_left: until.and_then(|u| u.checked_duration_since(now)),
            probe: s.probe.lock().unwrap_or_else(|p| p.into_inner()).clone(),
            held_left: self.pools.get(pick.0)?.held_for(pick.1, now),
        })
    }

    fn state(&self, (m, b): Pick) -> Option<&BackendState> {
        self.pools.get(m)?.states.get(b).map(|s| &**s)
    }

    fn find_state(&self, key: &(String, String)) -> Option<Arc<BackendState>> {
        self.pools.iter().find_map(|p| {
            p.keys
                .iter()
                .position(|k| k == key)
                .map(|i| Arc::clone(&p.states[i]))
        })
    }
}

/// Backends of a model whose candidates `pick_in` keeps on the stack.
const INLINE_CANDIDATES: usize = 16;

/// One untried backend as `choose` sees it.
#[derive(Debug, Clone, Copy, Default)]
struct Candidate {
    index: usize,
    in_flight: i64,
    weight: i64,
    cooling: bool,
}

/// The backend to try among `candidates`: healthy ones first (a cooling one only when nothing
/// else is left: trying beats refusing); among them the lowest in-flight per weight, ties broken
/// by smooth weighted round-robin over `current` (as nginx does it: even spread, no bursts).
fn choose(candidates: &[Candidate], current: &mut [i64]) -> Option<usize> {
    // Filters instead of lists: this runs for every request.
    let any_healthy = candidates.iter().any(|c| !c.cooling);
    let pool = || {
        candidates
            .iter()
            .filter(move |c| !any_healthy || !c.cooling)
    };
    // Lowest in_flight/weight, compared without division.
    let least = pool().min_by(|a, b| (a.in_flight * b.weight).cmp(&(b.in_flight * a.weight)))?;
    let tied = || pool().filter(|c| c.in_flight * least.weight == least.in_flight * c.weight);
    let total: i64 = tied().map(|c| c.weight).sum();
    let mut best = least.index;
    let mut first = true;
    for c in tied() {
        if first {
            best = c.index;
            first = false;
        }
        current[c.index] += c.weight;
        if current[c.index] > current[best] {
            best = c.index;
        }
    }
    current[best] -= total;
    Some(best)
}

/// The first of `rank` among `candidates` that is not cooling down; when all are, the first
/// of them: trying beats refusing, and the next request of the conversation tries the same one.
fn choose_ranked(candidates: &[Candidate], rank: &[usize]) -> Option<usize> {
    let first = |healthy: bool| {
        rank.iter().copied().find(|b| {
            candidates
                .iter()
                .any(|c| c.index == *b && (!healthy || !c.cooling))
        })
    };
    first(true).or_else(|| first(false))
}

/// Identifies a backend of a model across reloads (with its backend model name).
fn pool_key(id: &str, url: &str) -> String {
    format!("{}\n{}", id, url)
}

impl ModelPool {
    fn rank(&self, key: KeyHash) -> Vec<usize> {
        let backends: Vec<(u64, i64)> = self
            .hashes
            .iter()
            .copied()
            .zip(self.weights.iter().copied())
            .collect();
        affinity::rank(key, &backends)
    }

    /// How long the backend still asked to be left alone for, if it did.
    fn held_for(&self, b: usize, now: Instant) -> Option<Duration> {
        let until = *self.states[b]
            .held_until
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        until
            .and_then(|u| u.checked_duration_since(now))
            .filter(|d| !d.is_zero())
    }

    /// Out of selection: cooling down after failures, or its last health probe failed.
    fn cooling(&self, b: usize, now: Instant) -> bool {
        let s = &self.states[b];
        let until = *s.cooldown_until.lock().unwrap_or_else(|p| p.into_inner());
        let probe_down = s
            .probe
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .is_some_and(|m| !m.up);
        probe_down || until.map(|u| now < u).unwrap_or(false)
    }
}

/// Decrements the in-flight count when the request is done with the backend.
pub struct InFlight<'a> {
    balancer: &'a Balancer,
    pick: Pick,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if let Some(s) = self.balancer.state(self.pick) {
            s.in_flight.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn balancer(weights: &[u32]) -> Balancer {
        let backends: Vec<String> = weights
            .iter()
            .enumerate()
            .map(|(i, w)| format!(r#"{{"url":"http://h{}","weight":{}}}"#, i, w))
            .collect();
        let text = format!(
            r#"{{"endpoints":{{"m":{{"backends":[{}]}}}},"health":{{"failureThreshold":2,"cooldownSecs":60}}}}"#,
            backends.join(",")
        );
        let c = crate::config::parse("c", &text, &Default::default(), &|_| None).unwrap();
        Balancer::new(&c, None)
    }

    #[test]
    fn choose_table() {
        let c = |index, in_flight, weight, cooling| Candidate {
            index,
            in_flight,
            weight,
            cooling,
        };
        // (candidates, expected picks over successive calls)
        let cases: Vec<(Vec<Candidate>, Vec<usize>)> = vec![
            (vec![], vec![]),
            (vec![c(0, 0, 1, false), c(1, 0, 1, false)], vec![0, 1, 0, 1]),
            (
                vec![c(0, 0, 1, false), c(1, 0, 2, false)],
                vec![1, 0, 1, 1, 0, 1],
            ),
            // least in flight per weight beats the rotation
            (vec![c(0, 1, 1, false), c(1, 0, 1, false)], vec![1, 1, 1]),
            (vec![c(0, 1, 1, false), c(1, 1, 2, false)], vec![1, 1]),
            // a cooling backend only when nothing else is left
            (vec![c(0, 0, 1, true), c(1, 5, 1, false)], vec![1, 1]),
            (vec![c(0, 3, 1, true), c(1, 0, 1, true)], vec![1, 1]),
            // untried subset: indices need not start at 0
            (vec![c(2, 0, 1, false)], vec![2, 2]),
        ];
        for (i, (candidates, want)) in cases.into_iter().enumerate() {
            let mut current = vec![0i64; 3];
            let got: Vec<usize> = (0..want.len().max(1))
                .filter_map(|_| choose(&candidates, &mut current))
                .collect();
            assert_eq!(got, want, "case {}", i);
        }
    }

    #[test]
    fn weighted_spread_and_cooldown() {
        let b = balancer(&[1, 2, 3]);
        let mut counts = [0; 3];
        for _ in 0..600 {
            counts[b.pick(0, &[]).unwrap().1] += 1;
        }
        assert_eq!(counts, [100, 200, 300]);
        assert!(!b.failure((0, 2)));
        assert!(b.failure((0, 2)));
        assert!((0..60).all(|_| b.pick(0, &[]).unwrap().1 != 2));
        // Least in flight wins over the rotation.
        let _busy = b.start((0, 1));
        let _busy2 = b.start((0, 0));
        // (backend 2 cools down; 0 has 1 in flight at weight 1, 1 has 1 at weight 2: 1 is less loaded)
        assert_eq!(b.pick(0, &[]), Some((0, 1)));
        assert_eq!(
            b.pick(0, &[(0, 0), (0, 1)]),
            Some((0, 2)),
            "cooling backend still tried when nothing else is left"
        );
    }

    #[test]
    fn a_failed_probe_skips_the_backend_until_a_probe_succeeds() {
        let b = balancer(&[1, 1]);
        let mark = |up| ProbeMark {
            up,
            at: 1,
            error: None,
        };
        assert_eq!(b.probed("m", "http://h0", &mark(false)), 1);
        assert_eq!(b.probed("m", "http://nowhere", &mark(false)), 0);
        assert!((0..10).all(|_| b.pick(0, &[]) == Some((0, 1))));
        // A request's success ends a passive cool-down, not a failed probe.
        b.success((0, 0));
        assert_eq!(b.pick(0, &[]), Some((0, 1)));
        assert_eq!(b.pick(0, &[(0, 1)]), Some((0, 0)), "still tried when alone");
        b.probed("m", "http://h0", &mark(true));
        let picks: Vec<usize> = (0..4).map(|_| b.pick(0, &[]).unwrap().1).collect();
        assert!(picks.contains(&0), "{:?}", picks);
        assert_eq!(b.view((0, 0)).unwrap().probe, Some(mark(true)));
        b.probed("m", "http://h0", &mark(false));
        b.clear_probe("m", "http://h0");
        assert_eq!(b.view((0, 0)).unwrap().probe, None);
        let picks: Vec<usize> = (0..4).map(|_| b.pick(0, &[]).unwrap().1).collect();
        assert!(picks.contains(&0), "{:?}", picks);
    }

    #[test]
    fn a_conversation_follows_its_rendezvous_order_and_returns() {
        let b = balancer(&[1, 1, 1]);
        let key = affinity::key_hash("chat-7");
        let order = b.pools[0].rank(key);
        let pick = |tried: &[Pick], allowed: Option<&[usize]>| {
            b.pick_in(0, tried, allowed, Some(key)).map(|p| p.1)
        };
        // Load does not move it: in flight on its backend, it stays.
        let _busy = b.start((0, order[0]));
        assert!((0..10).all(|_| pick(&[], None) == Some(order[0])));
        // Tried (failover within a request), at its cap, held off, cooling: the next in order.
        assert_eq!(pick(&[(0, order[0])], None), Some(order[1]));
        assert_eq!(pick(&[(0, order[0]), (0, order[1])], None), Some(order[2]));
        assert_eq!(pick(&[], Some(&[order[1], order[2]])), Some(order[1]));
        assert_eq!(pick(&[], Some(&[order[2], order[0]])), Some(order[0]));
        b.hold_off((0, order[0]), 30);
        assert_eq!(pick(&[], None), Some(order[1]));
        b.failure((0, order[1]));
        b.failure((0, order[1]));
        assert_eq!(
            pick(&[], None),
            Some(order[2]),
            "held first, cooling second"
        );
        // Every one left cooling: the first of them, still in order.
        b.failure((0, order[2]));
        b.failure((0, order[2]));
        assert_eq!(pick(&[], None), Some(order[1]));
        // Recovery brings it back to the first.
        b.probed(
            "m",
            &format!("http://h{}", order[0]),
            &ProbeMark {
                up: true,
                at: 1,
                error: None,
            },
        );
        assert_eq!(pick(&[], None), Some(order[0]));
        b.success((0, order[1]));
        assert_eq!(pick(&[(0, order[0])], None), Some(order[1]));
    }

    #[test]
    fn choose_ranked_table() {
        let c = |index, cooling| Candidate {
            index,
            in_flight: 0,
            weight: 1,
            cooling,
        };
        let cases: Vec<(Vec<Candidate>, Vec<usize>, Option<usize>)> = vec![
            (vec![], vec![2, 0, 1], None),
            (
                vec![c(0, false), c(1, false), c(2, false)],
                vec![2, 0, 1],
                Some(2),
            ),
            (vec![c(0, false), c(1, false)], vec![2, 0, 1], Some(0)),
            (
                vec![c(0, true), c(1, false), c(2, true)],
                vec![2, 0, 1],
                Some(1),
            ),
            (vec![c(0, true), c(2, true)], vec![1, 2, 0], Some(2)),
        ];
        for (i, (candidates, rank, want)) in cases.into_iter().enumerate() {
            assert_eq!(choose_ranked(&candidates, &rank), want, "case {}", i);
        }
    }
}
