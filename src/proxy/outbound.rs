//! What one backend receives: its URL, its key, its model name in the body, query and headers.

use super::inbound::Inbound;
use crate::body;
use crate::config::{Backend, Endpoint};
use crate::route::Target;
use crate::upstream::{self, Outgoing};

/// The request for one backend.
pub fn outgoing(
    inbound: &Inbound,
    target: &Target,
    endpoint: &Endpoint,
    backend: &Backend,
    request_id: &str,
) -> Outgoing<'static> {
    let actual = &backend.actual_model_name;
    let body = if let Some(obj) = &inbound.json {
        obj.rewrite(actual, &endpoint.drop_fields)
    } else if let Some(b) = &inbound.boundary {
        body::replace_multipart_field(&inbound.body, b, "model", actual)
            .unwrap_or_else(|| inbound.body.clone())
    } else {
        inbound.body.clone()
    };
    let query = target.query.as_deref().map(|q| {
        if body::query_param(q, "model").is_some() {
            body::replace_query_param(q, "model", actual)
        } else {
            q.to_string()
        }
    });
    let headers = upstream::forward_headers(
        &inbound.headers,
        inbound.streaming(),
        endpoint,
        backend,
        request_id,
    );
    let has_body = !body.is_empty() || matches!(inbound.method, "POST" | "PUT" | "PATCH");
    Outgoing {
        method: inbound.method,
        url: upstream::url(&backend.url, &target.path, query.as_deref()),
        headers,
        body: has_body.then_some(body),
    }
}
