//! `POST /chat/completions` and every passthrough path, step by step: read the client's request
//! and the model it names (`inbound`, `choose`), try the model's backends and then its
//! fallbacks until one answers (`outbound`, `upstream`), and relay that answer (`answer`).

mod answer;
mod choose;
mod inbound;
mod outbound;
mod select;

use crate::api_error::ApiError;
use crate::auth::Caller;
use crate::balance::Pick;
use crate::catalog::Resolved;
use crate::headers;
use crate::live::Live;
use crate::metrics::Metrics;
use crate::policy::{Admission, Asked, Done, Identity, Policy, REFUSED};
use crate::route::{Route, Target};
use crate::telemetry;
use crate::upstream::{self, Failure};
use std::time::{Duration, Instant};
use tiny_http::Request;

/// What the access log and metrics need to know about one request.
#[derive(Debug, Default)]
pub struct Summary {
    /// The public model id, when one was found.
    pub model: Option<String>,
    /// Backend host:port of the last attempt.
    pub backend: Option<String>,
    /// Status sent to the client.
    pub status: u16,
    /// Body bytes sent to the client.
    pub bytes: u64,
    /// Time to the first body byte sent to the client.
    pub ttfb: Option<Duration>,
    /// Tokens the backend reported; once the ledger has the request, what it recorded (an
    /// estimate is marked `estimated`).
    pub usage: Option<crate::usage::Usage>,
    /// Characters of generated text a stream carried (for an estimate).
    pub content_chars: u64,
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
}

/// Handles a chat completion or passthrough request end to end.
pub fn handle(
    mut request: Request,
    target: &Target,
    route: &Route,
    ctx: &Ctx,
    started: Instant,
) -> Summary {
    let mut summary = Summary {
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
    summary.model = Some(inbound.model.clone());
    let body_user = inbound
        .json
        .as_ref()
        .and_then(|j| j.get_str("user"))
        .filter(|u| !u.is_empty());
    let refusal = Refusal {
        // An unknown model id is the client's text: the ledger keeps a bounded piece of it.
        model: crate::api_error::clip(&inbound.model, 200),
        target,
        started,
    };
    let identity =
        match ctx
            .policy
            .identify(&config.policy, &inbound.headers, ctx.caller, body_user)
        {
            Ok(i) => i,
            Err(e) => {
                let who = crate::policy::key_only(ctx.caller);
                return refusal.answer(request, &who, e, ctx, summary);
            }
        };
    // A model the caller's key may not use looks exactly like one that does not exist.
    let Some(resolved) = ctx
        .live
        .resolve(&inbound.model)
        .filter(|_| ctx.caller.may_use(&inbound.model))
    else {
        let e = ApiError::model_not_found(&inbound.model);
        return refusal.answer(request, &identity, e, ctx, summary);
    };
    summary.routed = resolved.listed;
    let endpoint = &config.endpoints[resolved.index];
    // A backend may honour any of the max tokens fields, so the largest is reserved, once per
    // completion asked for (`n`); a generating request without one reserves a default rather
    // than nothing.
    let json = inbound.json.as_ref();
    let max_tokens = match target.path.as_str() {
        "/chat/completions" | "/completions" | "/responses" => {
            let named = json.and_then(|j| j.max_tokens());
            let per_choice = named
                .or(endpoint.default_max_tokens)
                .unwrap_or(crate::policy::DEFAULT_MAX_TOKENS);
            if named.is_none() && json.is_some() {
                inbound.unnamed_max_tokens = Some(per_choice);
            }
            per_choice.saturating_mul(json.map_or(1, |j| j.choices()))
        }
        _ => 0,
    };
    let asked = Asked {
        headers: &inbound.headers,
        caller: ctx.caller,
        prompt_bytes: inbound.body.len(),
        model: &inbound.model,
        max_tokens,
    };
    let admission = match ctx
        .policy
        .admit(&config.policy, &identity, &asked, ctx.metrics)
    {
        Ok(a) => a,
        Err(e) => return refusal.answer(request, &identity, e, ctx, summary),
    };
    let mut summary = attempt(
        request, &inbound, &resolved, &admission, target, ctx, summary, started,
    );
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
            duration: started.elapsed(),
            ttfb: summary.ttfb,
            outcome: summary.outcome,
        },
        config
            .policy
            .metrics_per_user
            .then_some(config.policy.metrics_max_users),
        ctx.metrics,
    );
    if summary.usage.is_some() || recorded.estimated {
        summary.usage = Some(recorded);
    }
    summary
}

/// What recording a refusal needs to know about the request.
struct Refusal<'a> {
    model: String,
    target: &'a Target,
    started: Instant,
}

impl Refusal<'_> {
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
        let mut summary = fail(request, e, ctx, summary);
        summary.outcome = REFUSED;
        ctx.policy.refused(
            who,
            &Done {
                request_id: ctx.request_id,
                model: &self.model,
                backend: None,
                path: &self.target.path,
                status: summary.status,
                usage: None,
                content_chars: 0,
                duration: self.started.elapsed(),
                ttfb: None,
                outcome: REFUSED,
            },
            ctx.metrics,
        );
        summary
    }
}

/// Tries the model's backends, then its fallbacks' (at most `retry.maxAttempts` in all),
/// until one answers; relays that answer, or the last failure.
#[allow(clippy::too_many_arguments)]
fn attempt(
    request: Request,
    inbound: &inbound::Inbound,
    resolved: &Resolved,
    admission: &Admission,
    target: &Target,
    ctx: &Ctx,
    mut summary: Summary,
    started: Instant,
) -> Summary {
    let live = ctx.live;
    let config = &live.config;
    let model = &inbound.model;
    // Ids a wildcard serves but no list names yet are counted as `unknown`: a client must not
    // be able to mint label values.
    let label = if resolved.listed { model } else { "unknown" };
    let order = choose::model_order(config, resolved.index);
    let skip = resolved.skipped();
    // Looked at only while the request waits for a capped backend.
    let connection = request.connection_handle();
    let gone = || {
        connection
            .as_deref()
            .is_some_and(crate::lifecycle::client_gone)
    };
    let select = select::Select {
        live,
        order: &order,
        skip: &skip,
        admission,
        metrics: ctx.metrics,
        policy: ctx.policy,
        model,
        label,
        gone: &gone,
    };
    let next_pick = |tried: &[Pick]| select.next(tried);
    let mut tried: Vec<Pick> = Vec::new();
    telemetry::server_admitted(&admission.identity.user);
    let asked_at = Instant::now();
    let first = next_pick(&tried);
    telemetry::server_queue_wait(asked_at.elapsed());
    let (mut pick, mut permit) = match first {
        Ok(Some(p)) => p,
        // Refusals: no backend was asked, so the request uses up no budget.
        Ok(None) => {
            // Every backend asked to be left alone (429/503 with Retry-After): say until when.
            return fail_refused(admission, request, select.none_left(), ctx, summary);
        }
        // The wait for a capped backend ran out (503 overloaded).
        Err(select::Stop::Refused(e)) => return fail_refused(admission, request, e, ctx, summary),
        Err(select::Stop::ClientGone) => return client_left(admission, request, summary),
    };
    loop {
        tried.push(pick);
        let endpoint = &config.endpoints[pick.0];
        let Some(backend) = resolved.backend(endpoint, pick) else {
            let e = ApiError::internal("no such backend");
            return fail_released(admission, request, e, ctx, summary);
        };
        let backend = &*backend;
        let host = crate::redact::host(&backend.url).to_string();
        summary.backend = Some(host.clone());
        let Some(agent) = live.agent(endpoint, backend) else {
            let e = ApiError::internal("no HTTP client for this backend");
            return fail_released(admission, request, e, ctx, summary);
        };
        let in_flight = live.balancer.start(pick);
        let mut outgoing = outbound::outgoing(inbound, target, endpoint, backend, ctx.request_id);
        let span = telemetry::client_begin(&telemetry::Attempt {
            method: inbound.method,
            path: &target.path,
            model: &backend.actual_model_name,
            provider: &endpoint.provider_name,
            url: &backend.url,
            body: inbound.json.as_ref(),
        });
        span.inject(&mut outgoing.headers);
        let from = answer::Source {
            endpoint,
            pick,
            host: &host,
            strip_usage: outbound::injects_usage(inbound, target, endpoint),
            extra_headers: &admission.headers,
        };
        // A 429 or 5xx is a complete answer, kept to relay if no other backend is left.
        let (failure, kept) = match upstream::send(agent, outgoing, model) {
            Ok(r) if r.status() == 429 || r.status() >= 500 => {
                // A backend that says when to come back is left alone until then.
                if let Some(secs) = r
                    .header("retry-after")
                    .filter(|_| matches!(r.status(), 429 | 503))
                    .and_then(|v| headers::retry_after_secs(v, now_unix()))
                {
                    live.balancer.hold_off(pick, secs);
                }
                span.fail(&r.status().to_string(), Some(r.status()));
                (Failure::Status(r.status()), Some(r))
            }
            Ok(r) => {
                live.balancer.success(pick);
                let s = answer::relay(request, r, &from, in_flight, ctx, summary, started);
                let usage = s
                    .usage
                    .filter(|u| !u.estimated)
                    .map(|u| [u.prompt, u.completion, u.cached, u.reasoning]);
                span.finish(s.status, s.outcome, usage, s.ttfb.map(|t| started + t));
                return s;
            }
            Err(f) => {
                span.fail(f.cause(), None);
                (f, None)
            }
        };
        if !failure.is_backend_fault() {
            return fail_released(
                admission,
                request,
                failure.to_api_error(model),
                ctx,
                summary,
            );
        }
        let cause = failure.cause();
        ctx.metrics.upstream_error(label, &host, cause);
        if live.balancer.failure(pick) {
            log::warn!(
                "backend {} of model {} cools down after repeated failures",
                host,
                endpoint.id
            );
        }
        // The slot of a backend that failed is free for others while we look further.
        drop(permit.take());
        let next = if (tried.len() as u32) < config.retry.max_attempts {
            match next_pick(&tried) {
                Ok(n) => n,
                Err(select::Stop::Refused(e)) => {
                    return fail_released(admission, request, e, ctx, summary)
                }
                Err(select::Stop::ClientGone) => return client_left(admission, request, summary),
            }
        } else {
            None
        };
        match (next, kept) {
            (Some((n, p)), _) => {
                drop(in_flight);
                permit = p;
                log::info!(
                    "model {}: backend {} failed ({}); retrying on another backend",
                    crate::access_log::shown(model),
                    host,
                    cause
                );
                ctx.metrics.retry(label, cause);
                summary.retries += 1;
                std::thread::sleep(config.retry.backoff * summary.retries);
                pick = n;
            }
            // Several backends, each asked to be left alone: say when the first may be tried.
            (None, Some(_)) if tried.len() > 1 && select.all_held() => {
                return fail_released(admission, request, select.none_left(), ctx, summary);
            }
            // Nothing left to try: the last backend's own answer goes back as it is.
            (None, Some(r)) => {
                return answer::relay(request, r, &from, in_flight, ctx, summary, started)
            }
            (None, None) => {
                return fail_released(
                    admission,
                    request,
                    failure.to_api_error(model),
                    ctx,
                    summary,
                )
            }
        }
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
    summary.bytes = crate::reply::error(request, &e, ctx.request_id);
    summary
}
