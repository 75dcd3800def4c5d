//! `POST /v1/messages` on an endpoint with `messagesApi: "translate"`: the Messages request
//! goes to the backend as a chat completion, and its answer (JSON or stream) comes back as a
//! Message. The translators themselves are pure (`translate::anthropic`); this is their I/O.

use super::answer::Source;
use super::inbound::Inbound;
use super::translation::Translation;
use super::{Ctx, Summary};
use crate::backend::catalog::Resolved;
use crate::backend::upstream::{self, Outgoing};
use crate::config::{Backend, Config, Endpoint, MessagesApi};
use crate::http::anthropic_error::AnthropicError;
use crate::http::route::Target;
use crate::stream::relay::{self, ClientSide, Head, Outcome};
use crate::stream::usage::Usage;
use crate::translate::anthropic::request::{self, Options};
use crate::translate::anthropic::response::{self, Reply, Tokens};
use crate::translate::anthropic::stream::{from_completion, StreamTranslator, PING};
use serde_json::Value;
use std::borrow::Cow;
use std::io::{self, Read};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tiny_http::Request;

/// `event: ping` after this much backend silence when the endpoint sets no `sseKeepaliveSecs`.
const DEFAULT_PING: Duration = Duration::from_secs(15);

/// Largest non-stream backend answer translated.
const MAX_ANSWER: u64 = 16 * 1024 * 1024;

/// True when this request is a Messages request this endpoint's backend gets translated.
pub fn translated(target: &Target, endpoint: &Endpoint) -> bool {
    target.path == "/messages" && endpoint.messages_api == MessagesApi::Translate
}

/// `POST /v1/messages/count_tokens` for a translated backend: 404, never a guess (a wrong
/// count breaks a client's automatic compaction).
fn count_tokens_refusal(target: &Target, endpoint: &Endpoint) -> Option<AnthropicError> {
    (target.path == "/messages/count_tokens" && endpoint.messages_api == MessagesApi::Translate)
        .then(|| {
            AnthropicError::new(
                404,
                format!(
                    "Token counting is not available for model `{}`: its backend speaks only chat completions.",
                    crate::http::api_error::clip(&endpoint.id, 200)
                ),
            )
        })
}

/// The Messages API's body-level user, `metadata.user_id`.
pub fn metadata_user(target: &Target, inbound: &Inbound) -> Option<String> {
    if target.path != "/messages" {
        return None;
    }
    let metadata: Value = serde_json::from_str(inbound.json.as_ref()?.get("metadata")?).ok()?;
    let id = metadata
        .get("user_id")
        .and_then(Value::as_str)
        .filter(|u| !u.is_empty())?;
    Some(claude_code_user(id).unwrap_or_else(|| id.to_string()))
}

/// Claude Code puts the device, the account and the session in one `metadata.user_id`: a JSON
/// object in 2.x (`{"device_id":…,"account_uuid":…,"session_id":…}`), `user_<device>_account_
/// <account>_session_<session>` before. Whole, it is longer than a user id may be (so every
/// request would be refused) and new with every session (so quotas would never add up): the
/// account names the user, or the device when there is no account.
fn claude_code_user(id: &str) -> Option<String> {
    let (device, account) = if id.starts_with('{') {
        let v: Value = serde_json::from_str(id).ok()?;
        let field = |k: &str| v.get(k).and_then(Value::as_str).unwrap_or("").to_string();
        (field("device_id"), field("account_uuid"))
    } else {
        let rest = id.strip_prefix("user_")?;
        let (ids, _session) = rest.split_once("_session_")?;
        let (device, account) = ids.split_once("_account_")?;
        (device.to_string(), account.to_string())
    };
    [account, device].into_iter().find(|s| !s.is_empty())
}

/// What a Messages request needs before any backend is asked: a `count_tokens` for a
/// translated backend is refused, and a request some backend in the model's order gets
/// translated is translated once (a block no chat completions backend can take is refused).
pub fn translation(
    target: &Target,
    inbound: &Inbound,
    resolved: &Resolved,
    config: &Config,
) -> Result<Option<Translation>, AnthropicError> {
    if let Some(e) = count_tokens_refusal(target, &config.endpoints[resolved.index]) {
        return Err(e);
    }
    // The model order is looked at (and built) only for a Messages request.
    if target.path == "/messages"
        && super::choose::model_order(config, resolved.index)
            .iter()
            .any(|i| translated(target, &config.endpoints[*i]))
    {
        return prepare(inbound).map(Some);
    }
    Ok(None)
}

/// Translates the client's body; a block no chat completions backend can take is refused.
fn prepare(inbound: &Inbound) -> Result<Translation, AnthropicError> {
    let req: Value = serde_json::from_slice(inbound.body())
        .map_err(|e| AnthropicError::invalid_request(format!("The body is not JSON: {}.", e)))?;
    Ok(Translation {
        chat: request::to_chat(&req, Options::default())?,
        reply: Reply::for_request(&req, inbound.body().len()),
        stream: inbound.streaming(),
    })
}

/// The chat completion request for one backend.
pub fn outgoing(
    tr: &Translation,
    inbound: &Inbound,
    endpoint: &Endpoint,
    backend: &Backend,
    request_id: &str,
) -> Outgoing<'static> {
    let mut chat = tr.chat.clone();
    if let Value::Object(m) = &mut chat {
        m.insert(
            "model".into(),
            Value::String(backend.actual_model_name.clone()),
        );
        for f in &endpoint.drop_fields {
            m.remove(f);
        }
    }
    // Anthropic's version and beta headers mean nothing to (and could confuse) an OpenAI
    // backend; the answer is parsed here, so it must come uncompressed.
    let client = tiny_http::HeaderList::from_pairs(inbound.headers.iter().filter(|(n, _)| {
        let n = n.to_ascii_lowercase();
        !n.starts_with("anthropic-") && n != "accept-encoding"
    }));
    Outgoing {
        method: "POST",
        path: "/chat/completions",
        query: None,
        headers: upstream::forward_headers(&client, tr.stream, endpoint, backend, request_id),
        body: Some(chat.to_string().into_bytes()),
    }
}

/// Sends modelmux's own refusal of a Messages request in Anthropic's shape.
pub fn refuse(request: Request, e: &AnthropicError, ctx: &Ctx, mut summary: Summary) -> Summary {
    summary.status = e.status;
    summary.outcome = "error";
    summary.refused = Some(e.kind);
    summary.bytes = crate::http::reply::json(request, e.status, e.body(), &[], ctx.request_id);
    summary
}

/// Sends the backend's answer, translated (`from.translation`), to the client; the backend
/// stays counted in flight until it is done.
pub fn relay(
    request: Request,
    response: ureq::Response,
    from: Source,
    ctx: &Ctx,
    summary: Summary,
) -> Summary {
    let Some(tr) = from.translation else {
        return super::answer::relay(request, response, from, ctx, summary);
    };
    let is_sse = response.header("content-type").is_some_and(|v| {
        v.trim_start()
            .to_ascii_lowercase()
            .starts_with("text/event-stream")
    });
    if response.status() >= 300 {
        backend_error(request, response, ctx, summary)
    } else if !is_sse {
        whole(request, response, (&from, tr), ctx, summary)
    } else {
        streamed(request, response, (&from, tr), ctx, summary)
    }
}

/// The backend's error, in Anthropic's shape; its retry hints go with it.
fn backend_error(
    request: Request,
    response: ureq::Response,
    ctx: &Ctx,
    mut summary: Summary,
) -> Summary {
    let status = response.status();
    let mut headers: Vec<(&str, String)> = Vec::new();
    for name in ["retry-after", "x-should-retry"] {
        if let Some(v) = response.header(name) {
            headers.push((name, v.to_string()));
        }
    }
    let body = read_bounded(response);
    let e = AnthropicError::from_backend(status, &body);
    summary.status = e.status;
    summary.outcome = "complete";
    summary.bytes = crate::http::reply::json(request, e.status, e.body(), &headers, ctx.request_id);
    summary
}

/// A chat completion answered whole: a Message, or the stream the client asked for when the
/// backend ignored `stream`.
fn whole(
    request: Request,
    response: ureq::Response,
    (from, tr): (&Source, &Translation),
    ctx: &Ctx,
    mut summary: Summary,
) -> Summary {
    let body = read_bounded(response);
    let chat: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(_) => {
            let e = AnthropicError::new(502, "The backend's answer is not a chat completion.");
            summary.status = 502;
            summary.outcome = "upstream_failed";
            summary.bytes = crate::http::reply::json(request, 502, e.body(), &[], ctx.request_id);
            return summary;
        }
    };
    let message = response::to_message(&chat, &tr.reply);
    let reported = chat.get("usage").and_then(Tokens::from_openai);
    summary.usage = reported.map(ledger_usage);
    summary.content_chars = text_chars(&message);
    summary.status = 200;
    if tr.stream {
        // The backend ignored `stream`: the client still gets the stream it asked for.
        let events = from_completion(&chat, tr.reply.clone());
        let stats = send_stream(request, Box::new(io::Cursor::new(events)), from, ctx);
        summary.bytes = stats.bytes;
        summary.ttfb = stats.ttfb;
        summary.outcome = match stats.outcome {
            Outcome::Complete => "complete",
            _ => "client_gone",
        };
        return summary;
    }
    summary.outcome = "complete";
    summary.ttfb = Some(ctx.started.elapsed());
    let headers = from.extra_headers.to_vec();
    let body = message.to_string().into_bytes();
    summary.bytes = crate::http::reply::json(request, 200, body, &headers, ctx.request_id);
    summary
}

/// A chat completion stream, translated chunk by chunk as it arrives.
fn streamed(
    request: Request,
    response: ureq::Response,
    (from, tr): (&Source, &Translation),
    ctx: &Ctx,
    mut summary: Summary,
) -> Summary {
    let translator = Arc::new(Mutex::new(StreamTranslator::new(tr.reply.clone())));
    let body = Box::new(Translating {
        inner: response.into_reader(),
        translator: translator.clone(),
        chunk: vec![0u8; 16 * 1024],
        out: Vec::new(),
        at: 0,
        ended: false,
        rest_unread: false,
    });
    let stats = send_stream(request, body, from, ctx);
    summary.status = 200;
    summary.bytes = stats.bytes;
    summary.ttfb = stats.ttfb;
    let t = lock(&translator);
    let (tokens, estimated) = t.tokens();
    summary.usage = (!estimated).then(|| ledger_usage(tokens));
    summary.content_chars = tokens.output.saturating_mul(4);
    summary.outcome = match stats.outcome {
        Outcome::ClientGone => "client_gone",
        Outcome::Complete if !t.failed() => "complete",
        _ => {
            ctx.metrics
                .upstream_error(&from.endpoint.id, &from.host, "mid_stream");
            ctx.live.balancer.failure(from.pick);
            "upstream_failed"
        }
    };
    summary
}

/// Sends an Anthropic event stream to the client as it is read from `body`.
fn send_stream(
    request: Request,
    body: Box<dyn Read + Send>,
    from: &Source,
    ctx: &Ctx,
) -> relay::Stats {
    let mut headers = vec![
        (
            Cow::Borrowed("Content-Type"),
            Cow::Borrowed("text/event-stream"),
        ),
        (Cow::Borrowed("X-Request-Id"), Cow::Borrowed(ctx.request_id)),
    ];
    headers.extend(
        from.extra_headers
            .iter()
            .map(|(n, v)| (Cow::Borrowed(n), Cow::Borrowed(v))),
    );
    if crate::http::reply::wants_close(&request) {
        headers.push((Cow::Borrowed("Connection"), Cow::Borrowed("close")));
    }
    let head = Head {
        status: 200,
        reason: "OK".to_string(),
        headers,
        content_length: None,
    };
    let client = ClientSide {
        http10: *request.http_version() == (1, 0),
        head_only: false,
        // On by default here: Anthropic's clients expect pings during a long silence.
        sse_keepalive: from.endpoint.sse_keepalive.or(Some(DEFAULT_PING)),
        strip_usage: false,
        messages_usage: false,
        // The translator has the counts (`streamed`, `whole`): the events it wrote need no reading.
        read_usage: false,
        keepalive: PING,
    };
    let connection = request.connection_handle();
    let mut writer = request.into_writer();
    let stats = relay::relay(ctx.started, &mut *writer, head, body, &client);
    drop(writer);
    if stats.close_connection {
        if let Some(c) = connection {
            c.close();
        }
    }
    stats
}

/// Anthropic's counts as the ledger's: the prompt includes the cached tokens.
fn ledger_usage(t: Tokens) -> Usage {
    Usage {
        prompt: t.input.saturating_add(t.cache_read),
        completion: t.output,
        cached: t.cache_read,
        ..Usage::default()
    }
}

/// Characters of generated text in a Message, for an estimate when the backend counted none.
fn text_chars(message: &Value) -> u64 {
    let mut n = 0;
    for b in message["content"].as_array().into_iter().flatten() {
        for k in ["text", "thinking"] {
            n += b
                .get(k)
                .and_then(Value::as_str)
                .map_or(0, |s| s.chars().count() as u64);
        }
        if let Some(i) = b.get("input") {
            n += i.to_string().chars().count() as u64;
        }
    }
    n
}

fn read_bounded(response: ureq::Response) -> Vec<u8> {
    let mut body = Vec::new();
    // A body cut short or too long is judged by its parse.
    let _ = response
        .into_reader()
        .take(MAX_ANSWER)
        .read_to_end(&mut body);
    body
}

fn lock(m: &Mutex<StreamTranslator>) -> MutexGuard<'_, StreamTranslator> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The backend's stream, read through the translator: what the relay reads are Anthropic
/// events. A backend failure becomes an `error` event and the end of the stream.
struct Translating {
    inner: Box<dyn Read + Send + Sync + 'static>,
    translator: Arc<Mutex<StreamTranslator>>,
    chunk: Vec<u8>,
    out: Vec<u8>,
    at: usize,
    ended: bool,
    /// The translation ended before the backend's body did (its `[DONE]` came before the
    /// chunked body's end): the rest is read before the end, so the connection goes back to
    /// the pool instead of being closed.
    rest_unread: bool,
}

/// At most this much of a backend's body after its `[DONE]` is read to keep its connection.
const MAX_REST: u64 = 64 * 1024;

impl Read for Translating {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.at >= self.out.len() {
            if self.ended {
                if std::mem::take(&mut self.rest_unread) {
                    // The client already has every event; only the end of the body waits
                    // for the backend's end (as a plain relay's does). A failure just closes.
                    let _ = io::copy(&mut (&mut self.inner).take(MAX_REST), &mut io::sink());
                }
                return Ok(0);
            }
            let read = self.inner.read(&mut self.chunk);
            if matches!(&read, Err(e) if e.kind() == io::ErrorKind::Interrupted) {
                continue;
            }
            // Locked only after the read: the relay looks at the translator once it is done,
            // while a reader thread may still wait on the backend.
            let mut t = lock(&self.translator);
            self.out = match read {
                Ok(0) => {
                    self.ended = true;
                    t.finish()
                }
                Ok(n) => {
                    // The same buffer for every piece: no allocation per read.
                    let mut out = std::mem::take(&mut self.out);
                    out.clear();
                    t.feed_into(&self.chunk[..n], &mut out);
                    out
                }
                Err(e) => {
                    self.ended = true;
                    let message = if upstream::is_timeout(&e) {
                        AnthropicError::new(
                            504,
                            "The backend went silent longer than the idle timeout.",
                        )
                    } else {
                        AnthropicError::new(
                            502,
                            format!(
                                "The backend connection failed mid-response ({:?}).",
                                e.kind()
                            ),
                        )
                    };
                    t.fail(&message)
                }
            };
            self.at = 0;
            if t.is_done() && !self.ended {
                self.ended = true;
                self.rest_unread = true;
            }
        }
        let n = buf.len().min(self.out.len() - self.at);
        buf[..n].copy_from_slice(&self.out[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::claude_code_user;

    #[test]
    fn claude_code_user_ids_name_the_account_else_the_device() {
        let device = "b6614501403b1a5bf3d0b07b3af84124e5bcf1de57311bc53a71916bca223b60";
        let session = "bfccb1a3-db91-4b17-b6ef-dd7d2fc1ae54";
        let json = format!(
            r#"{{"device_id":"{}","account_uuid":"","session_id":"{}"}}"#,
            device, session
        );
        assert_eq!(claude_code_user(&json).as_deref(), Some(device));
        let with_account = json.replace(r#""account_uuid":"""#, r#""account_uuid":"acct-1""#);
        assert_eq!(claude_code_user(&with_account).as_deref(), Some("acct-1"));
        let old = format!("user_{}_account__session_{}", device, session);
        assert_eq!(claude_code_user(&old).as_deref(), Some(device));
        let old = format!("user_{}_account_acct-2_session_{}", device, session);
        assert_eq!(claude_code_user(&old).as_deref(), Some("acct-2"));
        for other in ["ada", "user_ada", "{not json", r#"{"session_id":"s"}"#] {
            assert_eq!(claude_code_user(other), None, "{}", other);
        }
    }
}
