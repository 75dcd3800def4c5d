//! Relaying a backend's answer: its head filtered and re-framed, its body streamed through.

use super::{Ctx, Summary};
use crate::backend::balance::{InFlight, Pick};
use crate::config::Endpoint;
use crate::policy::RateLimits;
use crate::stream::relay::{self, ClientSide, Head, Outcome};
use std::borrow::Cow;
use tiny_http::{Method, Request};

/// Where the answer comes from.
pub struct Source<'a> {
    /// The model whose backend answered.
    pub endpoint: &'a Endpoint,
    /// That backend.
    pub pick: Pick,
    /// Its host, for logs and metrics.
    pub host: std::sync::Arc<str>,
    /// modelmux asked it for the stream's usage chunk: hide that from the client.
    pub strip_usage: bool,
    /// Headers modelmux adds (OpenAI's `x-ratelimit-*` when a quota rule applies).
    pub extra_headers: &'a RateLimits,
    /// The backend stays counted in flight until the answer is relayed.
    pub in_flight: InFlight<'a>,
    /// A native Messages API answer (`POST /v1/messages`): usage is read its way.
    pub messages_usage: bool,
    /// A Messages request this backend got as a chat completion: its answer is translated back.
    pub translation: Option<&'a super::translation::Translation>,
}

/// Sends `response` to the client; the backend stays counted in flight until it is done.
pub fn relay(
    request: Request,
    response: ureq::Response,
    from: Source,
    ctx: &Ctx,
    mut summary: Summary,
) -> Summary {
    let Source {
        endpoint,
        pick,
        host,
        strip_usage,
        extra_headers,
        in_flight,
        messages_usage,
        translation: _,
    } = from;
    // Transfer-Encoding wins over Content-Length (RFC 9112 section 6.3): the HTTP client has
    // already de-chunked such a body, so its Content-Length describes nothing we send.
    let chunked = response.header("transfer-encoding").is_some();
    let content_length = if chunked {
        None
    } else {
        response
            .header("content-length")
            .and_then(|v| v.trim().parse().ok())
    };
    let mut headers = end_to_end_headers(&response);
    // Ours replace the backend's own of the same names (one pass over its headers), and are
    // borrowed into the head, not copied.
    if !extra_headers.is_empty() {
        headers.retain(|(h, _)| !extra_headers.has_name(h));
        headers.extend(
            extra_headers
                .iter()
                .map(|(n, v)| (Cow::Borrowed(n), Cow::Borrowed(v))),
        );
    }
    headers.push((Cow::Borrowed("X-Request-Id"), Cow::Borrowed(ctx.request_id)));
    if crate::http::reply::wants_close(&request) {
        headers.push((Cow::Borrowed("Connection"), Cow::Borrowed("close")));
    }
    let head = Head {
        status: response.status(),
        reason: sanitize_reason(response.status_text()),
        headers,
        content_length,
    };
    summary.status = head.status;
    let client = ClientSide {
        http10: *request.http_version() == (1, 0),
        head_only: *request.method() == Method::Head,
        sse_keepalive: endpoint.sse_keepalive,
        strip_usage,
        messages_usage,
        read_usage: true,
        keepalive: relay::KEEPALIVE_COMMENT,
    };
    let connection = request.connection_handle();
    let mut writer = request.into_writer();
    let stats = relay::relay(
        ctx.started,
        &mut *writer,
        head,
        response.into_reader(),
        &client,
    );
    drop(writer);
    if stats.close_connection {
        if let Some(c) = connection {
            c.close();
        }
    }
    drop(in_flight);
    summary.bytes = stats.bytes;
    summary.ttfb = stats.ttfb;
    summary.usage = stats.usage;
    summary.content_chars = stats.content_chars;
    summary.outcome = match stats.outcome {
        Outcome::Complete => "complete",
        Outcome::ClientGone => "client_gone",
        Outcome::UpstreamFailed(msg) => {
            log::warn!("model {} backend {}: {}", endpoint.id, host, msg);
            ctx.metrics
                .upstream_error(&endpoint.id, &host, "mid_stream");
            ctx.live.balancer.failure(pick);
            "upstream_failed"
        }
    };
    summary
}

/// Keeps a backend's reason phrase from breaking our status line.
fn sanitize_reason(reason: &str) -> String {
    let clean: String = reason
        .chars()
        .filter(|c| *c == ' ' || c.is_ascii_graphic())
        .collect();
    if clean.is_empty() {
        "Status".to_string()
    } else {
        clean
    }
}

/// The backend's end-to-end headers, each copied once (name lowercased, value) in the order
/// received, repeated ones each on their own: hop-by-hop ones and those its `Connection` header
/// names are left out. Read from the response in place, not through an owned copy of them all.
fn end_to_end_headers(response: &ureq::Response) -> Vec<(Cow<'static, str>, Cow<'static, str>)> {
    let kept = crate::http::headers::end_to_end(|| response.header_pairs());
    // Room for the few headers `relay` adds after these.
    let mut out = Vec::with_capacity(16);
    for (name, value) in kept {
        // Our id names this request; the backend's own id is kept under another name.
        let name = if name.eq_ignore_ascii_case("x-request-id") {
            Cow::Borrowed("X-Upstream-Request-Id")
        } else {
            Cow::Owned(name.to_ascii_lowercase())
        };
        out.push((name, Cow::Owned(value.to_string())));
    }
    out
}
