//! What one backend receives: its URL, its key, its model name in the body, query and headers.

use super::inbound::Inbound;
use crate::backend::upstream::{self, Outgoing};
use crate::config::{Backend, Endpoint, KeyHeader, MessagesApi};
use crate::http::route::Target;
use crate::stream::body;

/// True when modelmux asks this backend for a stream's usage chunk the client did not ask for
/// (and so must hide it from the client): streamed chat and completions, unless the endpoint
/// turns it off for a server that rejects `stream_options`.
pub fn injects_usage(inbound: &Inbound, target: &Target, endpoint: &Endpoint) -> bool {
    endpoint.inject_stream_usage
        && matches!(target.path.as_str(), "/chat/completions" | "/completions")
        && inbound.streaming()
        && inbound
            .json
            .as_ref()
            .is_some_and(|j| !j.wants_stream_usage())
}

/// A native Messages request to a backend that takes `x-api-key` (Anthropic's API, which
/// requires the version header) gets `anthropic-version` when the client sent none. Servers
/// that take Bearer keys (vLLM, Ollama, llama.cpp) need none and get only what the client sent.
fn default_anthropic_version(
    headers: &mut Vec<(String, String)>,
    target: &Target,
    endpoint: &Endpoint,
    backend: &Backend,
) {
    let messages = target.path == "/messages" || target.path.starts_with("/messages/");
    if messages
        && endpoint.messages_api == MessagesApi::Native
        && backend.key_header == KeyHeader::XApiKey
        && !headers
            .iter()
            .any(|(n, _)| n.eq_ignore_ascii_case("anthropic-version"))
    {
        headers.push((
            "anthropic-version".into(),
            upstream::ANTHROPIC_VERSION.into(),
        ));
    }
}

/// The request for one backend.
pub fn outgoing<'t>(
    inbound: &Inbound,
    target: &'t Target,
    endpoint: &Endpoint,
    backend: &Backend,
    request_id: &str,
) -> Outgoing<'t> {
    let actual = &backend.actual_model_name;
    let body = if let Some(obj) = &inbound.json {
        let mut set: Vec<(&str, String)> = if injects_usage(inbound, target, endpoint) {
            vec![("stream_options", obj.stream_options_with_usage())]
        } else {
            Vec::new()
        };
        // An opt-in: a backend that honours the field cannot write more than was reserved.
        if let (Some(field), Some(n)) = (endpoint.cap_max_tokens, inbound.unnamed_max_tokens) {
            let field = if target.path == "/responses" {
                "max_output_tokens"
            } else {
                field
            };
            set.push((field, n.to_string()));
        }
        obj.rewrite(actual, &endpoint.drop_fields, &set)
    } else if let Some(b) = &inbound.boundary {
        body::replace_multipart_field(inbound.body(), b, "model", actual)
            .unwrap_or_else(|| inbound.body().to_vec())
    } else {
        inbound.body().to_vec()
    };
    let query = target.query.as_deref().map(|q| {
        if body::query_param(q, "model").is_some() {
            body::replace_query_param(q, "model", actual)
        } else {
            q.to_string()
        }
    });
    let mut headers = upstream::forward_headers(
        &inbound.headers,
        inbound.streaming(),
        endpoint,
        backend,
        request_id,
    );
    default_anthropic_version(&mut headers, target, endpoint, backend);
    let has_body = !body.is_empty() || matches!(inbound.method, "POST" | "PUT" | "PATCH");
    Outgoing {
        method: inbound.method,
        path: &target.path,
        query,
        headers,
        body: has_body.then_some(body),
    }
}
