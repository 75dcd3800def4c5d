//! Per-backend concurrency caps (`maxConcurrent`) for one model, with a fair, prioritised queue.
//!
//! A request takes a free slot on one of its eligible backends at once if there is one;
//! otherwise it waits (holding no backend connection) until a slot is handed to it. Freed slots
//! are handed over directly, in service order: priority first (High, Normal, Low), and within a
//! priority round-robin between the users who are waiting, so one user's batch of 50 cannot keep
//! everyone else waiting. Caps are per process: a shared count in Redis would outlive a replica
//! that died holding slots, and a backend's capacity is usually split between replicas anyway.

pub use crate::config::Priority;
#[cfg(test)]
use crate::config::DEFAULT_MAX_QUEUE_WAIT;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Lane index of a priority, highest priority first.
fn lane(p: Priority) -> usize {
    match p {
        Priority::High => 0,
        Priority::Normal => 1,
        Priority::Low => 2,
    }
}

/// No slot became free before the deadline: answer 503 `overloaded` with `Retry-After`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Overloaded {
    /// Seconds until a slot is likely to be free (the usual time a slot is held), at least 1.
    pub retry_after_secs: u64,
}

/// Why a waiting request got no slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unserved {
    /// The wait ran out.
    Overloaded(Overloaded),
    /// The client hung up while waiting (or when its turn came): the request left the queue
    /// and must not reach a backend.
    ClientGone,
}

/// How often a waiting request looks whether its client is still there.
const GONE_POLL: Duration = Duration::from_millis(100);

/// The concurrency caps of one model's backends and the requests waiting for them.
#[derive(Debug)]
pub struct ModelGate {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    state: Mutex<State>,
    max_queue_wait: Duration,
}

#[derive(Debug)]
struct Waiter {
    eligible: Vec<usize>,
    granted: Option<usize>,
    wake: Arc<Condvar>,
}

#[derive(Debug)]
struct State {
    caps: Vec<Option<usize>>,
    busy: Vec<usize>,
    waiters: HashMap<u64, Waiter>,
    /// Per priority lane (High, Normal, Low): the waiting users in the order they are next
    /// served, each with their tickets oldest first.
    lanes: [VecDeque<(String, VecDeque<u64>)>; 3],
    next_ticket: u64,
    /// Moving average of how long a slot is held, for Retry-After.
    hold_avg_ms: u64,
}

impl State {
    fn free(&self, b: usize) -> bool {
        match (self.caps.get(b), self.busy.get(b)) {
            (Some(Some(cap)), Some(busy)) => busy < cap,
            (Some(None), Some(_)) => true,
            _ => false,
        }
    }

    /// Takes the ticket out of its lane; the user leaves the rotation when it was their last.
    fn unqueue(&mut self, ticket: u64) {
        for lane in &mut self.lanes {
            if let Some(ui) = lane.iter().position(|(_, t)| t.contains(&ticket)) {
                lane[ui].1.retain(|t| *t != ticket);
                if lane[ui].1.is_empty() {
                    lane.remove(ui);
                }
                return;
            }
        }
    }

    /// A slot of backend `b` that was handed to a request which will not use it: free again,
    /// and at once handed to the next waiter (not counted in how long slots are held).
    fn give_back(&mut self, b: usize) {
        if let Some(n) = self.busy.get_mut(b) {
            *n = n.saturating_sub(1);
        }
        self.dispatch(b);
    }

    /// Hands a free slot of backend `b` to the first waiter in service order that may use it.
    fn dispatch(&mut self, b: usize) {
        if !self.free(b) {
            return;
        }
        let waiters = &self.waiters;
        let found = self.lanes.iter().enumerate().find_map(|(li, lane)| {
            lane.iter().enumerate().find_map(|(ui, (_, tickets))| {
                tickets
                    .iter()
                    .position(|t| waiters.get(t).is_some_and(|w| w.eligible.contains(&b)))
                    .map(|ti| (li, ui, ti))
            })
        });
        let Some((li, ui, ti)) = found else {
            return;
        };
        let lane = &mut self.lanes[li];
        let Some((user, mut tickets)) = lane.remove(ui) else {
            return;
        };
        let Some(ticket) = tickets.remove(ti) else {
            return;
        };
        // Served: the user goes to the back of the rotation if they have more waiting.
        if !tickets.is_empty() {
            lane.push_back((user, tickets));
        }
        if let Some(w) = self.waiters.get_mut(&ticket) {
            self.busy[b] += 1;
            w.granted = Some(b);
            w.wake.notify_one();
        }
    }
}

impl ModelGate {
    /// A gate for backends with these caps (`None`: unlimited), in backend index order.
    pub fn new(caps: Vec<Option<usize>>, max_queue_wait: Duration) -> ModelGate {
        let busy = vec![0; caps.len()];
        ModelGate {
            inner: Arc::new(Inner {
                state: Mutex::new(State {
                    caps,
                    busy,
                    waiters: HashMap::new(),
                    lanes: Default::default(),
                    next_ticket: 0,
                    hold_avg_ms: 1000,
                }),
                max_queue_wait,
            }),
        }
    }

    /// `maxQueueWaitSecs`: how long a request may wait, for the caller's deadline.
    pub fn max_queue_wait(&self) -> Duration {
        self.inner.max_queue_wait
    }

    /// Requests waiting for a slot now.
    pub fn depth(&self) -> usize {
        self.inner
            .lock()
            .waiters
            .values()
            .filter(|w| w.granted.is_none())
            .count()
    }

    /// `acquire_unless_gone` for a client that never hangs up.
    #[cfg(test)]
    pub fn acquire(
        &self,
        user: &str,
        priority: Priority,
        eligible: &[usize],
        choose: impl Fn(&[usize]) -> Option<usize>,
        deadline: Instant,
    ) -> Result<Permit, Overloaded> {
        match self.acquire_unless_gone(user, priority, eligible, choose, deadline, &|| false) {
            Ok(p) => Ok(p),
            Err(Unserved::Overloaded(o)) => Err(o),
            Err(Unserved::ClientGone) => unreachable!("the client never goes"),
        }
    }

    /// Slots in use per backend now.
    #[cfg(test)]
    pub fn in_use(&self) -> Vec<usize> {
        self.inner.lock().busy.clone()
    }

    /// A slot on one of `eligible` (the backends this request may still try, already without
    /// any it must not use): at once on a free backend picked by `choose` (given the free ones;
    /// `None` means wait), else the next slot freed on any of them, in service order. Gives up
    /// at `deadline`, or when `gone` (a cheap check of the client's socket, called without the
    /// lock held) says the client hung up: asked every `GONE_POLL` while waiting and once more
    /// when a slot is handed over. A request whose client is gone leaves the queue (a slot it
    /// was handed goes to the next waiter), so nobody waits behind it and no backend generates
    /// for nobody.
    pub fn acquire_unless_gone(
        &self,
        user: &str,
        priority: Priority,
        eligible: &[usize],
        choose: impl Fn(&[usize]) -> Option<usize>,
        deadline: Instant,
        gone: &dyn Fn() -> bool,
    ) -> Result<Permit, Unserved> {
        let start = Instant::now();
        let mut st = self.inner.lock();
        let free: Vec<usize> = eligible.iter().copied().filter(|b| st.free(*b)).collect();
        if let Some(b) = choose(&free).filter(|b| free.contains(b)) {
            st.busy[b] += 1;
            return Ok(self.permit(b, start));
        }
        let eligible: Vec<usize> = eligible
            .iter()
            .copied()
            .filter(|b| *b < st.caps.len())
            .collect();
        if eligible.is_empty() {
            return Err(Unserved::Overloaded(Overloaded {
                retry_after_secs: retry_after(&st, self.inner.max_queue_wait),
            }));
        }
        let ticket = st.next_ticket;
        st.next_ticket += 1;
        let wake = Arc::new(Condvar::new());
        st.waiters.insert(
            ticket,
            Waiter {
                eligible,
                granted: None,
                wake: Arc::clone(&wake),
            },
        );
        let lane = &mut st.lanes[lane(priority)];
        match lane.iter_mut().find(|(u, _)| u == user) {
            Some((_, tickets)) => tickets.push_back(ticket),
            None => lane.push_back((user.to_string(), VecDeque::from([ticket]))),
        }
        let mut next_look = start + GONE_POLL;
        loop {
            if let Some(b) = st.waiters.get(&ticket).and_then(|w| w.granted) {
                st.waiters.remove(&ticket);
                drop(st);
                // Its turn came: the last chance not to send a request nobody waits for.
                if gone() {
                    self.inner.lock().give_back(b);
                    return Err(Unserved::ClientGone);
                }
                return Ok(self.permit(b, start));
            }
            let now = Instant::now();
            if now >= deadline {
                st.unqueue(ticket);
                st.waiters.remove(&ticket);
                return Err(Unserved::Overloaded(Overloaded {
                    retry_after_secs: retry_after(&st, self.inner.max_queue_wait),
                }));
            }
            if now >= next_look {
                drop(st);
                let left = gone();
                st = self.inner.lock();
                next_look = Instant::now() + GONE_POLL;
                if left {
                    // A slot may have been handed over meanwhile: it goes to the next waiter.
                    let granted = st.waiters.remove(&ticket).and_then(|w| w.granted);
                    match granted {
                        Some(b) => st.give_back(b),
                        None => st.unqueue(ticket),
                    }
                    return Err(Unserved::ClientGone);
                }
                continue;
            }
            st = wake
                .wait_timeout(st, deadline.min(next_look) - now)
                .map(|(g, _)| g)
                .unwrap_or_else(|e| e.into_inner().0);
        }
    }

    fn permit(&self, backend: usize, start: Instant) -> Permit {
        let now = Instant::now();
        Permit {
            inner: Arc::clone(&self.inner),
            backend,
            waited: now - start,
            acquired: now,
        }
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        // The state holds plain counts and queues; a panic elsewhere does not make them wrong.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn retry_after(st: &State, max_wait: Duration) -> u64 {
    st.hold_avg_ms
        .div_ceil(1000)
        .clamp(1, max_wait.as_secs().max(1))
}

/// A slot on one backend, given back (and handed to the next waiter) on drop.
#[derive(Debug)]
pub struct Permit {
    inner: Arc<Inner>,
    backend: usize,
    waited: Duration,
    acquired: Instant,
}

impl Permit {
    /// The backend index the slot is on.
    pub fn backend(&self) -> usize {
        self.backend
    }

    /// How long the request waited for the slot, for the wait-time metric.
    pub fn waited(&self) -> Duration {
        self.waited
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let held = u64::try_from(self.acquired.elapsed().as_millis()).unwrap_or(u64::MAX);
        let mut st = self.inner.lock();
        st.hold_avg_ms = (st.hold_avg_ms / 8 * 7).saturating_add(held / 8);
        if let Some(n) = st.busy.get_mut(self.backend) {
            *n = n.saturating_sub(1);
        }
        st.dispatch(self.backend);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::thread;

    fn first(free: &[usize]) -> Option<usize> {
        free.first().copied()
    }

    fn soon(secs: u64) -> Instant {
        Instant::now() + Duration::from_secs(secs)
    }

    fn gate(caps: Vec<Option<usize>>) -> Arc<ModelGate> {
        Arc::new(ModelGate::new(caps, DEFAULT_MAX_QUEUE_WAIT))
    }

    /// Waits (bounded) until `n` requests are queued, so the test controls the queue order.
    fn wait_depth(gate: &ModelGate, n: usize) {
        let end = Instant::now() + Duration::from_secs(10);
        while gate.depth() != n {
            assert!(Instant::now() < end, "queue depth never reached {}", n);
            thread::sleep(Duration::from_millis(1));
        }
    }

    /// Queues a request on backend 0 from another thread and returns once it waits; when
    /// served it writes `name` to `order` and gives the slot back at once.
    fn queue(
        gate: &Arc<ModelGate>,
        order: &Arc<Mutex<Vec<String>>>,
        user: &str,
        name: String,
        priority: Priority,
    ) -> thread::JoinHandle<()> {
        let depth = gate.depth();
        let (g, order, user) = (Arc::clone(gate), Arc::clone(order), user.to_string());
        let t = thread::spawn(move || {
            let p = g.acquire(&user, priority, &[0], first, soon(20)).unwrap();
            order.lock().unwrap().push(name);
            drop(p);
        });
        wait_depth(gate, depth + 1);
        t
    }

    #[test]
    fn caps_hold_under_contention() {
        let caps = vec![Some(2), Some(1), Some(3)];
        let g = gate(caps.clone());
        let now: Arc<Vec<AtomicUsize>> = Arc::new((0..3).map(|_| AtomicUsize::new(0)).collect());
        let peak: Arc<Vec<AtomicUsize>> = Arc::new((0..3).map(|_| AtomicUsize::new(0)).collect());
        let threads: Vec<_> = (0..24)
            .map(|i| {
                let (g, now, peak) = (Arc::clone(&g), Arc::clone(&now), Arc::clone(&peak));
                thread::spawn(move || {
                    for _ in 0..25 {
                        let user = format!("u{}", i % 5);
                        let p = g.acquire(&user, Priority::Normal, &[0, 1, 2], first, soon(20));
                        let p = p.unwrap();
                        let b = p.backend();
                        let n = now[b].fetch_add(1, Ordering::SeqCst) + 1;
                        peak[b].fetch_max(n, Ordering::SeqCst);
                        thread::yield_now();
                        now[b].fetch_sub(1, Ordering::SeqCst);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        for (b, cap) in caps.iter().enumerate() {
            let p = peak[b].load(Ordering::SeqCst);
            assert!(
                p <= cap.unwrap(),
                "backend {} had {} at once, cap {:?}",
                b,
                p,
                cap
            );
            assert!(p >= 1);
        }
        assert_eq!(g.in_use(), vec![0, 0, 0]);
        assert_eq!(g.depth(), 0);
    }

    #[test]
    fn users_are_served_round_robin_not_first_come() {
        let g = gate(vec![Some(1)]);
        let order = Arc::new(Mutex::new(Vec::new()));
        let hold = g
            .acquire("x", Priority::Normal, &[0], first, soon(1))
            .unwrap();
        let mut threads: Vec<_> = (0..20)
            .map(|i| queue(&g, &order, "a", format!("a{}", i), Priority::Normal))
            .collect();
        threads.push(queue(&g, &order, "b", "b0".into(), Priority::Normal));
        drop(hold);
        for t in threads {
            t.join().unwrap();
        }
        let order = order.lock().unwrap().clone();
        let pos = |name: &str| order.iter().position(|n| n == name).unwrap();
        assert!(
            pos("b0") < pos("a2"),
            "b was served after a's third: {:?}",
            order
        );
        assert_eq!(&order[..3], ["a0", "b0", "a1"]);
        // One user's own requests keep their order.
        let a: Vec<&String> = order.iter().filter(|n| n.starts_with('a')).collect();
        let expected: Vec<String> = (0..20).map(|i| format!("a{}", i)).collect();
        assert_eq!(a, expected.iter().collect::<Vec<_>>());
    }

    #[test]
    fn priority_comes_before_arrival() {
        let g = gate(vec![Some(1)]);
        let order = Arc::new(Mutex::new(Vec::new()));
        let hold = g
            .acquire("x", Priority::Normal, &[0], first, soon(1))
            .unwrap();
        let threads = vec![
            queue(&g, &order, "titles", "low".into(), Priority::Low),
            queue(&g, &order, "ann", "normal".into(), Priority::Normal),
            queue(&g, &order, "bob", "high".into(), Priority::High),
        ];
        drop(hold);
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(*order.lock().unwrap(), ["high", "normal", "low"]);
    }

    #[test]
    fn prefers_a_free_backend_and_lets_the_balancer_choose() {
        let g = gate(vec![Some(1), Some(1), None]);
        let last = |free: &[usize]| free.last().copied();
        let p1 = g
            .acquire("a", Priority::Normal, &[0, 1], last, soon(1))
            .unwrap();
        assert_eq!(p1.backend(), 1);
        let p0 = g
            .acquire("a", Priority::Normal, &[0, 1], last, soon(1))
            .unwrap();
        assert_eq!(p0.backend(), 0);
        assert!(p0.waited() < Duration::from_secs(1));
        // An unlimited backend never queues.
        let many: Vec<Permit> = (0..50)
            .map(|_| {
                g.acquire("a", Priority::Low, &[0, 1, 2], last, soon(1))
                    .unwrap()
            })
            .collect();
        assert!(many.iter().all(|p| p.backend() == 2));
        assert_eq!(g.in_use(), vec![1, 1, 50]);
    }

    #[test]
    fn a_freed_slot_goes_only_to_a_waiter_that_may_use_it() {
        let g = gate(vec![Some(1), Some(1)]);
        let p0 = g
            .acquire("x", Priority::Normal, &[0], first, soon(1))
            .unwrap();
        let p1 = g
            .acquire("x", Priority::Normal, &[1], first, soon(1))
            .unwrap();
        let g2 = Arc::clone(&g);
        // This request already tried backend 0: only backend 1 will do.
        let t = thread::spawn(move || {
            let p = g2
                .acquire("a", Priority::High, &[1], first, soon(20))
                .unwrap();
            (p.backend(), p.waited())
        });
        wait_depth(&g, 1);
        drop(p0);
        assert_eq!(g.depth(), 1, "backend 0 must not be handed to it");
        assert_eq!(g.in_use(), vec![0, 1]);
        drop(p1);
        let (backend, waited) = t.join().unwrap();
        assert_eq!(backend, 1);
        assert!(waited > Duration::ZERO);
        assert_eq!(g.depth(), 0);
    }

    #[test]
    fn timeout_gives_overloaded_and_leaves_the_queue() {
        let g = Arc::new(ModelGate::new(vec![Some(1)], Duration::from_secs(30)));
        let hold = g
            .acquire("x", Priority::Normal, &[0], first, soon(1))
            .unwrap();
        let start = Instant::now();
        let deadline = start + Duration::from_millis(150);
        let e = g
            .acquire("a", Priority::Normal, &[0], first, deadline)
            .unwrap_err();
        assert!(start.elapsed() >= Duration::from_millis(150));
        assert!((1..=30).contains(&e.retry_after_secs), "{:?}", e);
        assert_eq!(g.depth(), 0);
        // A deadline already past fails at once; nothing eligible fails at once.
        let past = Instant::now();
        assert!(g.acquire("a", Priority::High, &[0], first, past).is_err());
        assert!(g.acquire("a", Priority::High, &[], first, soon(5)).is_err());
        assert!(g
            .acquire("a", Priority::High, &[7], first, soon(5))
            .is_err());
        drop(hold);
        assert!(g.acquire("a", Priority::Low, &[0], first, past).is_ok());
    }

    #[test]
    fn drop_hands_the_slot_to_a_waiter_without_polling() {
        let g = gate(vec![Some(1)]);
        let hold = g
            .acquire("x", Priority::Normal, &[0], first, soon(1))
            .unwrap();
        let g2 = Arc::clone(&g);
        let t = thread::spawn(move || {
            g2.acquire("a", Priority::Normal, &[0], first, soon(20))
                .map(|p| p.waited())
        });
        wait_depth(&g, 1);
        let released = Instant::now();
        drop(hold);
        let waited = t.join().unwrap().unwrap();
        assert!(released.elapsed() < Duration::from_secs(5));
        assert!(waited > Duration::ZERO);
        assert_eq!(g.in_use(), vec![0]);
    }

    #[test]
    fn retry_after_follows_how_long_slots_are_held() {
        let g = ModelGate::new(vec![Some(1)], Duration::from_secs(10));
        let st = g.inner.lock();
        assert_eq!(retry_after(&st, Duration::from_secs(10)), 1);
        drop(st);
        g.inner.lock().hold_avg_ms = 4_200;
        assert_eq!(retry_after(&g.inner.lock(), Duration::from_secs(10)), 5);
        g.inner.lock().hold_avg_ms = 600_000;
        assert_eq!(retry_after(&g.inner.lock(), Duration::from_secs(10)), 10);
    }

    /// Queues `user` on backend 0 from another thread, with a client that hangs up once `gone`
    /// is set; returns whether it got a slot (given back at once) or saw its client gone.
    fn queue_gone(
        gate: &Arc<ModelGate>,
        user: &str,
        gone: &Arc<std::sync::atomic::AtomicBool>,
    ) -> thread::JoinHandle<Result<(), Unserved>> {
        let depth = gate.depth();
        let (g, gone, user) = (Arc::clone(gate), Arc::clone(gone), user.to_string());
        let t = thread::spawn(move || {
            let check = || gone.load(Ordering::SeqCst);
            g.acquire_unless_gone(&user, Priority::Normal, &[0], first, soon(20), &check)
                .map(drop)
        });
        wait_depth(gate, depth + 1);
        t
    }

    #[test]
    fn a_waiter_whose_client_hung_up_leaves_the_queue_at_once() {
        let g = gate(vec![Some(1)]);
        let held = g
            .acquire("a", Priority::Normal, &[0], first, soon(5))
            .unwrap();
        let gone = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let b = queue_gone(&g, "b", &gone);
        let order = Arc::new(Mutex::new(Vec::new()));
        let c = queue(&g, &order, "c", "c".into(), Priority::Normal);
        gone.store(true, Ordering::SeqCst);
        let t = Instant::now();
        assert_eq!(b.join().unwrap(), Err(Unserved::ClientGone));
        assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
        assert_eq!(g.depth(), 1, "only c still waits");
        assert_eq!(g.in_use(), vec![1], "a still holds the slot");
        drop(held);
        c.join().unwrap();
        assert_eq!(*order.lock().unwrap(), ["c"]);
        assert_eq!(g.in_use(), vec![0]);
    }

    #[test]
    fn a_slot_handed_to_a_gone_client_goes_to_the_next_waiter() {
        for _ in 0..20 {
            let g = gate(vec![Some(1)]);
            let held = g
                .acquire("a", Priority::Normal, &[0], first, soon(5))
                .unwrap();
            let gone = Arc::new(std::sync::atomic::AtomicBool::new(false));
            let b = queue_gone(&g, "b", &gone);
            let order = Arc::new(Mutex::new(Vec::new()));
            let c = queue(&g, &order, "c", "c".into(), Priority::Normal);
            // Gone just as its turn comes: seen by the poll or when the slot is handed over.
            gone.store(true, Ordering::SeqCst);
            drop(held);
            assert_eq!(b.join().unwrap(), Err(Unserved::ClientGone));
            c.join().unwrap();
            assert_eq!(*order.lock().unwrap(), ["c"]);
            assert_eq!((g.depth(), g.in_use()), (0, vec![0]));
        }
    }
}
