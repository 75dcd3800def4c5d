//! Which backend the next attempt goes to: the first of the request's models (itself, then its
//! fallbacks) with an untried backend that did not ask to be left alone; where the model's
//! backends have concurrency caps, a slot on one of them, waited for fairly.

use crate::backend::affinity::KeyHash;
use crate::backend::balance::Pick;
use crate::backend::live::Live;
use crate::http::api_error::{clip, ApiError};
use crate::metrics::Metrics;
use crate::policy::{Admission, Permit, Policy, Unserved};
use std::time::Instant;

/// What choosing needs, for one request.
pub struct Select<'a> {
    /// The config and balancer the request runs on.
    pub live: &'a Live,
    /// The models to try, in order.
    pub order: &'a [usize],
    /// For each model of `order`, the request's conversation key where the model has
    /// `affinity` and the request carries one (empty when no model has `affinity`).
    pub keys: &'a [Option<KeyHash>],
    /// Backends never to try (a wildcard's backends whose list lacks the model).
    pub skip: &'a [Pick],
    /// Who asks, and how urgently.
    pub admission: &'a Admission,
    /// For queue wait times.
    pub metrics: &'a Metrics,
    /// The per-model gates.
    pub policy: &'a Policy,
    /// The public model id, for messages.
    pub model: &'a str,
    /// Its metric label.
    pub label: &'a str,
    /// Whether the client hung up (asked while the request waits for a capped backend).
    pub gone: &'a dyn Fn() -> bool,
}

/// Why no backend was chosen.
pub enum Stop {
    /// An error to answer (503 when a capped model's wait ran out).
    Refused(ApiError),
    /// The client hung up while the request waited: nothing to send, to anyone.
    ClientGone,
}

impl Select<'_> {
    /// The next backend to try (with its concurrency slot, where the model caps them); `None`
    /// when no backend is left; `Err` when a capped model's wait ran out (503) or the client
    /// hung up while waiting.
    pub fn next(&self, tried: &[Pick]) -> Result<Option<(Pick, Option<Permit>)>, Stop> {
        let avoid = [tried, self.skip].concat();
        let balancer = &self.live.balancer;
        for (i, &m) in self.order.iter().enumerate() {
            let key = self.keys.get(i).copied().flatten();
            let e = &self.live.config.endpoints[m];
            let untried = |b: &usize| !avoid.contains(&(m, *b));
            if !(0..e.backends.len()).any(|b| untried(&b))
                || balancer.all_held(&[m], &avoid).is_some()
            {
                continue;
            }
            // Lists are built only for a model with concurrency caps (a gate): without one
            // (`gate` would say `None`) this is one pick and no allocation.
            let capped = e.backends.iter().any(|b| b.max_concurrent.is_some());
            let gate = capped
                .then(|| {
                    let caps = e.backends.iter().map(|b| b.max_concurrent).collect();
                    self.policy.gates().gate(&e.id, caps, e.max_queue_wait)
                })
                .flatten();
            let Some(gate) = gate else {
                match balancer.pick_in(m, &avoid, None, key) {
                    Some(p) => return Ok(Some((p, None))),
                    None => continue,
                }
            };
            let eligible: Vec<usize> = (0..e.backends.len()).filter(untried).collect();
            // Every backend at its cap: wait, holding no backend connection, served by
            // priority and in turn between users.
            let asked_at = Instant::now();
            let deadline = asked_at + gate.max_queue_wait();
            let choose = |free: &[usize]| balancer.pick_in(m, &avoid, Some(free), key).map(|p| p.1);
            let user = &self.admission.identity.user;
            let priority = self.admission.priority;
            return match gate
                .acquire_unless_gone(user, priority, &eligible, choose, deadline, self.gone)
            {
                Ok(permit) => {
                    self.metrics.queue_wait(self.label, permit.waited());
                    Ok(Some(((m, permit.backend()), Some(permit))))
                }
                Err(Unserved::ClientGone) => {
                    self.metrics.queue_wait(self.label, asked_at.elapsed());
                    Err(Stop::ClientGone)
                }
                Err(Unserved::Overloaded(o)) => {
                    self.metrics.queue_wait(self.label, asked_at.elapsed());
                    let mut e = ApiError::overloaded(o.retry_after_secs);
                    e.message = format!(
                        "Every backend of model `{}` is at its maxConcurrent and the wait passed maxQueueWaitSecs; retry shortly.",
                        clip(self.model, 200)
                    );
                    Err(Stop::Refused(e))
                }
            };
        }
        Ok(None)
    }

    /// True when every backend of every model asked to be left alone.
    pub fn all_held(&self) -> bool {
        self.live.balancer.all_held(self.order, self.skip).is_some()
    }

    /// The answer when no backend is left: 429 with the soonest recovery when they all asked
    /// to be left alone (429/503 with `Retry-After`), else a 500 (a model with no backend).
    pub fn none_left(&self) -> ApiError {
        match self.live.balancer.all_held(self.order, self.skip) {
            Some(left) => ApiError::rate_limited(
                "rate_limit_exceeded",
                format!(
                    "Every backend of model `{}` is rate limited; retry after the time in Retry-After.",
                    clip(self.model, 200)
                ),
                left.as_secs_f64().ceil() as u64,
            ),
            None => ApiError::internal("no backend configured for this model"),
        }
    }
}
