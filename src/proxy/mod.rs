//! `POST /chat/completions` and every passthrough path, step by step: read the client's request
//! and the model it names (`inbound`, `choose`), try the model's backends and then its
//! fallbacks until one answers (`outbound`, `upstream`), and relay that answer (`answer`).

mod answer;
mod choose;
mod conversation;
mod inbound;
mod messages;
mod outbound;
mod select;
mod translation;
mod worst_cost;

use translation::Translation;

use crate::backend::balance::Pick;
use crate::backend::catalog::Resolved;
use crate::backend::live::Live;
use crate::backend::upstream::{self, Failure};
use crate::config::{Backend, Endpoint};
use crate::http::api_error::ApiError;
use crate::http::headers;
use crate::http::route::{Route, Target};
use crate::metrics::Metrics;
use crate::policy::identity::auth::Caller;
use crate::policy::{Admission, Asked, Done, Identity, Permit, Policy, REFUSED};
use crate::telemetry;
use std::time::{Duration, Instant};
use tiny_http::Request;

/// What the access log and metrics need to know about one request.
#[derive(Debug, Default)]
pub struct Summary {
    /// The public model id, when one was found.
    pub model: Option<String>,
    /// Backend host:port of the last attempt (shared with the attempt's `Source`: one copy).
    pub backend: Option<std::sync::Arc<str>>,
    /// Status sent to the client.
    pub status: u16,
    /// Body bytes sent to the client.
    pub bytes: u64,
    /// Time to the first body byte sent to the client.
    pub ttfb: Option<Duration>,
    /// Tokens the backend reported; once the ledger has the request, what it recorded (an
    /// estimate is marked `estimated`).
    pub usage: Option<crate::stream::usage::Usage>,
    /// Characters of generated text a stream carried (for an estimate).
    pub content_chars: u64,
    /// The prices of the backend asked last (`None`: unpriced or none asked).
    pub price: Option<crate::config::Pricing>,
    /// What the ledger recorded it cost.
    pub charge: Option<crate::policy::Charge>,
    /// Retries on other backends or fallback models.
    pub retries: u32,
    /// `complete`, `client_gone`, `upstream_failed`, `error` or `refused`.
    pub outcome: &'static str,
    /// The model is a configured one (only those become metric labels: a client must not be
    /// able to mint label values).
    pub routed: bool,
    /// The code of an error modelmux answered itself because of the request (not a backend
    /// failure), counted in `modelmux_refused_requests_total`.
    pub refused: Option<&'static str>,
}

/// Everything a proxied request needs from the server.
pub struct Ctx<'a> {
    /// The config this request runs on, start to end.
    pub live: &'a Live,
    /// Who is calling.
    pub caller: &'a Caller<'a>,
    /// Largest request body accepted, in bytes.
    pub max_body: usize,
    /// Process metrics.
    pub metrics: &'a Metrics,
    /// This request's id, forwarded upstream and returned to the client.
    pub request_id: &'a str,
    /// Identity and accounting.
    pub policy: &'a Policy,
    /// When the request arrived: its duration and time to first byte count from here.
    pub started: Instant,
}

/// Handles a chat completion or passthrough request end to end.
pub fn handle(mut request: Request, target: &Target, route: &Route, ctx: &Ctx) -> Summary {
    let summary = Summary {
        outcome: "error",
        ..Summary::default()
    };
    let config = &ctx.live.config;
    let mut inbound = match inbound::read(
        &mut request,
        target,
        route,
        ctx.max_body,
        config.default_model.as_deref(),
    ) {
        Ok(i) => i,
        Err(e) => return fail(request, e, ctx, summary),
    };
    let mut summary = understood(request, &mut inbound, target, ctx, summary);
    // The model (an alias resolved to its model's id) is the summary's from here: moved.
    summary.model = Some(std::mem::take(&mut inbound.model));
    summary
}

/// Handles a request whose model is known: identity, admission, the backends, the answer.
fn understood(
    request: Request,
    inbound: &mut inbound::Inbound,
    target: &Target,
    ctx: &Ctx,
    mut summary: Summary,
) -> Summary {
    let config = &ctx.live.config;
    let body_user = inbound
        .json
        .as_ref()
        .and_then(|j| j.get_str("user"))
        .filter(|u| !u.is_empty())
        .or_else(|| messages::metadata_user(target, inbound));
    let identity =
        match ctx
            .policy
            .identify(&config.policy, &inbound.headers, ctx.caller, body_user)
        {
            Ok(i) => i,
            Err(e) => {
                let who = crate::policy::key_only(ctx.caller);
                return Refusal::of(inbound, target).answer(request, &who, e, ctx, summary);
            }
        };
    // A model the caller's key may not use looks exactly like one that does not exist. An
    // alias is another name of its model: the key's list, quotas, the ledger and metrics see
    // the model's id, so an alias opens nothing its model's id does not.
    let Some(resolved) = ctx.live.resolve(&inbound.model).filter(|r| {
        let public = match r.alias {
            true => &config.endpoints[r.index].id,
            false => &inbound.model,
        };
        ctx.caller.may_use(public)
    }) else {
        let e = ApiError::model_not_found(&inbound.model);
        return Refusal::of(inbound, target).answer(request, &identity, e, ctx, summary);
    };
    if resolved.alias {
        inbound.model = config.endpoints[resolved.index].id.clone();
    }
    summary.routed = resolved.listed;
    let max_tokens = reserved_tokens(target, &config.endpoints[resolved.index], inbound);
    let asked = Asked {
        headers: &inbound.headers,
        caller: ctx.caller,
        prompt_bytes: inbound.body().len(),
        model: &inbound.model,
        max_tokens,
        max_cost: worst_cost::worst_cost(config, &resolved, inbound.body().len(), max_tokens),
    };
    let admission = match ctx
        .policy
        .admit(&config.policy, &identity, &asked, ctx.metrics)
    {
        Ok(a) => a,
        Err(e) => return Refusal::of(inbound, target).answer(request, &identity, e, ctx, summary),
    };
    let translation = match messages::translation(target, inbound, &resolved, config) {
        Ok(t) => t,
        Err(e) => {
            admission.refuse();
            let mut summary = messages::refuse(request, &e, ctx, summary);
            summary.outcome = REFUSED;
            return complete(admission, inbound, target, ctx, summary);
        }
    };
    let a = Attempt {
        inbound,
        resolved: &resolved,
        admission: &admission,
        target,
        ctx,
        label: if resolved.listed {
            &inbound.model
        } else {
            "unknown"
        },
        translation: translation.as_ref(),
    };
    let summary = attempt(request, &a, summary);
    complete(admission, inbound, target, ctx, summary)
}

/// The completion tokens a request reserves. A backend may honour any of the max tokens
/// fields, so the largest is reserved, once per completion asked for (`n`); a generating
/// request without one reserves a default rather than nothing.
fn reserved_tokens(target: &Target, endpoint: &Endpoint, inbound: &mut inbound::Inbound) -> u64 {
    let json = inbound.json.as_ref();
    match target.path.as_str() {
        "/chat/completions" | "/completions" | "/responses" | "/messages" => {
            let named = json.and_then(|j| j.max_tokens());
            let per_choice = named
                .or(endpoint.default_max_tokens)
                .unwrap_or(crate::policy::DEFAULT_MAX_TOKENS);
            let choices = json.map_or(1, |j| j.choices());
            if named.is_none() && json.is_some() {
                inbound.unnamed_max_tokens = Some(per_choice);
            }
            per_choice.saturating_mul(choices)
        }
        _ => 0,
    }
}

/// Records the finished request with policy (ledger, quotas settled, per-user metrics).
fn complete(
    admission: Admission,
    inbound: &inbound::Inbound,
    target: &Target,
    ctx: &Ctx,
    mut summary: Summary,
) -> Summary {
    let config = &ctx.live.config;
    let recorded = ctx.policy.complete(
        admission,
        &Done {
            request_id: ctx.request_id,
            model: &inbound.model,
            backend: summary.backend.as_deref(),
            path: &target.path,
            status: summary.status,
            usage: summary.usage,
            content_chars: summary.content_chars,
            duration: ctx.started.elapsed(),
            ttfb: summary.ttfb,
            outcome: summary.outcome,
            price: summary.price.as_ref(),
            currency: &config.prices.currency,
        },
        config
            .policy
            .metrics_per_user
            .then_some(config.policy.metrics_max_users),
        ctx.metrics,
    );
    if summary.usage.is_some() || recorded.usage.estimated {
        summary.usage = Some(recorded.usage);
    }
    summary.charge = recorded.charge;
    summary
}

/// What recording a refusal needs to know about the request.
struct Refusal<'a> {
    model: &'a str,
    target: &'a Target,
}

impl<'a> Refusal<'a> {
    fn of(inbound: &'a inbound::Inbound, target: &'a Target) -> Refusal<'a> {
        Refusal {
            model: &inbound.model,
            target,
        }
    }

    /// Answers a request refused once its identity was known and before it was admitted (a
    /// 401 token, an unknown model, a quota 429), and records it in the ledger as `refused`.
    fn answer(
        &self,
        request: Request,
        who: &Identity,
        e: ApiError,
        ctx: &Ctx,
        summary: Summary,
    ) -> Summary {
        // An unknown model id is the client's text: the ledger keeps a bounded piece of it.
        // Clipped only here, on the refused path.
        let model = crate::http::api_error::clip(self.model, 200);
        let mut summary = fail(request, e, ctx, summary);
        summary.outcome = REFUSED;
        ctx.policy.refused(
            who,
            &Done {
                request_id: ctx.request_id,
                model: &model,
                backend: None,
                path: &self.target.path,
                status: summary.status,
                usage: None,
                content_chars: 0,
                duration: ctx.started.elapsed(),
                ttfb: None,
                outcome: REFUSED,
                price: None,
                currency: "",
            },
            ctx.metrics,
        );
        summary
    }
}

/// What travels with an admitted request through the failover loop.
struct Attempt<'a> {
    inbound: &'a inbound::Inbound,
    resolved: &'a Resolved,
    admission: &'a Admission,
    target: &'a Target,
    ctx: &'a Ctx<'a>,
    /// The model's metric label: ids a wildcard serves but no list names yet are counted as
    /// `unknown`, so a client cannot mint label values.
    label: &'a str,
    /// A Messages request, translated once for the backends that get it as a chat completion.
    translation: Option<&'a translation::Translation>,
}

/// How the failover loop ends.
// One per request, moved a few times: boxing the response would add an allocation per call.
#[allow(clippy::large_enum_variant)]
enum End<'a> {
    /// A backend's answer to relay: a success, or the last backend's own 429 or 5xx; with
    /// the attempt's trace span, ended once the answer is relayed.
    Relay(ureq::Response, answer::Source<'a>, telemetry::Client),
    /// Failed after admission: the reservation goes back, the request stays counted.
    Released(ApiError),
    /// Refused before any backend was asked: nothing is charged.
    Refused(ApiError),
    /// The client hung up while the request waited for a capped backend.
    ClientGone,
}

/// How the loop ended, with what it holds until the answer is written: after a failed call,
/// that backend's source (its in-flight count), and the slot of a capped backend.
struct Ending<'a> {
    end: End<'a>,
    held: Option<answer::Source<'a>>,
    permit: Option<Permit>,
}

impl<'a> End<'a> {
    fn holding(self, held: Option<answer::Source<'a>>, permit: Option<Permit>) -> Ending<'a> {
        Ending {
            end: self,
            held,
            permit,
        }
    }
}

/// A backend asked that failed.
struct Failed<'a> {
    failure: Failure,
    /// A 429 or 5xx is a complete answer, kept to relay if no other backend is left.
    kept: Option<ureq::Response>,
    from: answer::Source<'a>,
}

/// Tries the model's backends, then its fallbacks' (at most `retry.maxAttempts` in all),
/// until one answers; relays that answer, or the last failure.
fn attempt(request: Request, a: &Attempt, summary: Summary) -> Summary {
    let live = a.ctx.live;
    // A model without fallbacks (the usual case) is tried alone: no list to build.
    let with_fallbacks;
    let order: &[usize] = if live.config.endpoints[a.resolved.index].fallbacks.is_empty() {
        std::slice::from_ref(&a.resolved.index)
    } else {
        with_fallbacks = choose::model_order(&live.config, a.resolved.index);
        &with_fallbacks
    };
    let skip = a.resolved.skipped();
    let keys = conversation::keys(
        &live.config,
        order,
        &a.inbound.headers,
        &a.admission.identity,
    );
    // Looked at only while the request waits for a capped backend.
    let connection = request.connection_handle();
    let gone = || {
        connection
            .as_deref()
            .is_some_and(crate::lifecycle::client_gone)
    };
    let select = select::Select {
        live,
        order,
        keys: &keys,
        skip: &skip,
        admission: a.admission,
        metrics: a.ctx.metrics,
        policy: a.ctx.policy,
        model: &a.inbound.model,
        label: a.label,
        gone: &gone,
    };
    let mut summary = summary;
    telemetry::server_admitted(&a.admission.identity.user);
    let asked_at = Instant::now();
    let first = select.next(&[]);
    telemetry::server_queue_wait(asked_at.elapsed());
    let ending = match first {
        Ok(Some(first)) => a.failover(&select, first, &mut summary),
        // Refusals: no backend was asked, so the request uses up no budget.
        // Every backend asked to be left alone (429/503 with Retry-After): say until when.
        Ok(None) => End::Refused(select.none_left()).holding(None, None),
        // The wait for a capped backend ran out (503 overloaded).
        Err(select::Stop::Refused(e)) => End::Refused(e).holding(None, None),
        Err(select::Stop::ClientGone) => End::ClientGone.holding(None, None),
    };
    a.answer(request, ending, summary)
}

impl<'a> Attempt<'a> {
    /// The loop: call the picked backend, classify its failure, pick the next one and hold
    /// off before retrying, until a backend answers or none is left.
    fn failover(
        &self,
        select: &select::Select,
        first: (Pick, Option<Permit>),
        summary: &mut Summary,
    ) -> Ending<'a> {
        let (mut pick, mut permit) = first;
        let mut tried: Vec<Pick> = Vec::new();
        loop {
            let failed = match self.call(pick, summary) {
                Ok(end) => return end.holding(None, permit),
                Err(f) => f,
            };
            // Listed once it failed: a request served by its first backend builds no list.
            tried.push(pick);
            if !failed.failure.is_backend_fault() {
                let e = failed.failure.to_api_error(&self.inbound.model);
                return End::Released(e).holding(Some(failed.from), permit);
            }
            let cause = self.classify(pick, &failed);
            // The slot of a backend that failed is free for others while we look further.
            drop(permit.take());
            let next = if (tried.len() as u32) < self.ctx.live.config.retry.max_attempts {
                match select.next(&tried) {
                    Ok(n) => n,
                    Err(select::Stop::Refused(e)) => {
                        return End::Released(e).holding(Some(failed.from), permit)
                    }
                    Err(select::Stop::ClientGone) => {
                        return End::ClientGone.holding(Some(failed.from), permit)
                    }
                }
            } else {
                None
            };
            match next {
                Some((n, p)) => {
                    let host = failed.from.host.clone();
                    drop(failed.from);
                    permit = p;
                    self.retry(&host, cause, summary);
                    pick = n;
                }
                // Several backends, each asked to be left alone: say when the first may be tried.
                None if failed.kept.is_some() && tried.len() > 1 && select.all_held() => {
                    return End::Released(select.none_left()).holding(Some(failed.from), permit);
                }
                // Nothing left to try: the last backend's own answer goes back as it is.
                None => return self.last(failed, permit),
            }
        }
    }

    /// The call: the picked backend is sent the request; its answer is relayed, or kept as a
    /// failure to classify.
    // The failure keeps the backend's answer to relay: see `End`.
    #[allow(clippy::result_large_err)]
    fn call(&self, pick: Pick, summary: &mut Summary) -> Result<End<'a>, Failed<'a>> {
        let live: &'a Live = self.ctx.live;
        let endpoint = &live.config.endpoints[pick.0];
        let Some(backend) = self.resolved.backend(endpoint, pick) else {
            return Ok(End::Released(ApiError::internal("no such backend")));
        };
        let Some(to) = live.prepared(pick) else {
            let e = ApiError::internal("no HTTP client for this backend");
            return Ok(End::Released(e));
        };
        let host = to.host.clone();
        summary.backend = Some(host.clone());
        summary.price = live
            .config
            .prices
            .lookup(backend.pricing.as_ref(), &backend.actual_model_name)
            .copied();
        let in_flight = live.balancer.start(pick);
        let translating = self
            .translation
            .filter(|_| messages::translated(self.target, endpoint));
        let (outgoing, span) = self.outgoing(endpoint, &backend, translating);
        let from = answer::Source {
            endpoint,
            pick,
            host,
            strip_usage: outbound::injects_usage(self.inbound, self.target, endpoint),
            extra_headers: &self.admission.headers,
            in_flight,
            messages_usage: self.target.path == "/messages",
            translation: translating,
        };
        match upstream::send(to, outgoing, &self.inbound.model) {
            Ok(r) if r.status() == 429 || r.status() >= 500 => {
                self.hold_off(pick, &r);
                span.fail(&r.status().to_string(), Some(r.status()));
                let failure = Failure::Status(r.status());
                Err(Failed {
                    failure,
                    kept: Some(r),
                    from,
                })
            }
            Ok(r) => {
                live.balancer.success(pick);
                Ok(End::Relay(r, from, span))
            }
            Err(failure) => {
                span.fail(failure.cause(), None);
                Err(Failed {
                    failure,
                    kept: None,
                    from,
                })
            }
        }
    }

    /// The request for this backend (translated when it gets a Messages request as a chat
    /// completion), and its trace span, whose context the backend is sent.
    fn outgoing(
        &self,
        endpoint: &Endpoint,
        backend: &Backend,
        translating: Option<&Translation>,
    ) -> (upstream::Outgoing<'a>, telemetry::Client) {
        let request_id = self.ctx.request_id;
        let mut outgoing = match translating {
            Some(t) => messages::outgoing(t, self.inbound, endpoint, backend, request_id),
            None => outbound::outgoing(self.inbound, self.target, endpoint, backend, request_id),
        };
        let params = self.inbound.json.as_ref().map(|j| {
            move || telemetry::RequestParams {
                stream: j.stream(),
                max_tokens: j.max_tokens(),
                temperature: j.get_f64("temperature"),
                top_p: j.get_f64("top_p"),
            }
        });
        let span = telemetry::client_begin(&telemetry::Attempt {
            method: self.inbound.method,
            path: &self.target.path,
            model: &backend.actual_model_name,
            provider: &endpoint.provider_name,
            url: &backend.url,
            body: params
                .as_ref()
                .map(|f| f as &dyn Fn() -> telemetry::RequestParams),
        });
        span.inject(&mut outgoing.headers);
        (outgoing, span)
    }

    /// A backend that says when to come back (429 or 503 with Retry-After) is left alone
    /// until then.
    fn hold_off(&self, pick: Pick, r: &ureq::Response) {
        if let Some(secs) = r
            .header("retry-after")
            .filter(|_| matches!(r.status(), 429 | 503))
            .and_then(|v| headers::retry_after_secs(v, now_unix()))
        {
            self.ctx.live.balancer.hold_off(pick, secs);
        }
    }

    /// Classifies a backend's fault: counted by cause, and the backend cools down after
    /// repeated failures.
    fn classify(&self, pick: Pick, failed: &Failed) -> &'static str {
        let cause = failed.failure.cause();
        let host = &failed.from.host;
        self.ctx.metrics.upstream_error(self.label, host, cause);
        if self.ctx.live.balancer.failure(pick) {
            log::warn!(
                "backend {} of model {} cools down after repeated failures",
                host,
                failed.from.endpoint.id
            );
        }
        cause
    }

    /// Counts a retry and waits the backoff before the next backend is called.
    fn retry(&self, host: &str, cause: &str, summary: &mut Summary) {
        log::info!(
            "model {}: backend {} failed ({}); retrying on another backend",
            crate::http::access_log::shown(&self.inbound.model),
            host,
            cause
        );
        self.ctx.metrics.retry(self.label, cause);
        summary.retries += 1;
        std::thread::sleep(self.ctx.live.config.retry.backoff * summary.retries);
    }

    /// No backend is left: the last one's own 429 or 5xx goes back as it is, else its failure.
    fn last(&self, failed: Failed<'a>, permit: Option<Permit>) -> Ending<'a> {
        match failed.kept {
            Some(r) => End::Relay(r, failed.from, telemetry::Client::none()).holding(None, permit),
            None => {
                let e = failed.failure.to_api_error(&self.inbound.model);
                End::Released(e).holding(Some(failed.from), permit)
            }
        }
    }

    /// The answer: a backend's relayed, or modelmux's own error.
    fn answer(&self, request: Request, ending: Ending, summary: Summary) -> Summary {
        let Ending { end, held, permit } = ending;
        let summary = match end {
            End::Relay(r, from, span) => {
                let s = messages::relay(request, r, from, self.ctx, summary);
                let usage = s
                    .usage
                    .filter(|u| !u.estimated)
                    .map(|u| [u.prompt, u.completion, u.cached, u.reasoning]);
                let first_byte = s.ttfb.map(|t| self.ctx.started + t);
                span.finish(s.status, s.outcome, usage, first_byte);
                s
            }
            End::Released(e) => fail_released(self.admission, request, e, self.ctx, summary),
            End::Refused(e) => fail_refused(self.admission, request, e, self.ctx, summary),
            End::ClientGone => client_left(self.admission, request, summary),
        };
        drop(held);
        drop(permit);
        summary
    }
}

fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// `fail` for an admitted request that no backend served: its reservation goes back first.
fn fail_released(
    admission: &Admission,
    request: Request,
    e: ApiError,
    ctx: &Ctx,
    summary: Summary,
) -> Summary {
    admission.release();
    fail(request, e, ctx, summary)
}

/// The client hung up while its request waited for a backend: nothing was sent upstream and
/// nothing is answered; logged as 499 (nginx's "client closed request"), charged nothing.
fn client_left(admission: &Admission, request: Request, mut summary: Summary) -> Summary {
    // Nothing reached a backend: no budget, not even the request, is used.
    admission.refuse();
    let connection = request.connection_handle();
    // Taking the writer means no answer is written (a dropped request would send a 500).
    drop(request.into_writer());
    if let Some(c) = connection {
        c.close();
    }
    summary.status = 499;
    summary.outcome = "client_gone";
    summary
}

/// `fail` for an admitted request modelmux refused before asking any backend: its reservation
/// goes back whole, request included, and the ledger says `refused`.
fn fail_refused(
    admission: &Admission,
    request: Request,
    e: ApiError,
    ctx: &Ctx,
    summary: Summary,
) -> Summary {
    admission.refuse();
    let mut summary = fail(request, e, ctx, summary);
    summary.outcome = REFUSED;
    summary
}

fn fail(request: Request, e: ApiError, ctx: &Ctx, mut summary: Summary) -> Summary {
    summary.status = e.status;
    summary.outcome = "error";
    if e.status < 500 {
        summary.refused = Some(e.code.unwrap_or(e.kind));
    }
    summary.bytes = crate::http::reply::error(request, &e, ctx.request_id);
    summary
}
