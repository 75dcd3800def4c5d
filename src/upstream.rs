//! Calls a backend: URL rule, header filtering, the ureq agent and its error mapping.

use crate::api_error::ApiError;
use crate::config::{Backend, ClientKey, Endpoint};
use std::io;

/// Headers never forwarded in either direction (RFC 9110 hop-by-hop, plus framing we redo).
pub fn is_hop_by_hop(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    matches!(
        n.as_str(),
        "connection"
            | "keep-alive"
            | "transfer-encoding"
            | "te"
            | "trailer"
            | "trailers"
            | "upgrade"
            | "host"
            | "content-length"
    ) || n.starts_with("proxy-")
}

/// Builds a pooled HTTP client with the given timeouts; redirects and status errors are off
/// because a proxy hands the backend's answer back as it is.
pub fn agent(key: &ClientKey, max_idle_per_host: usize) -> Result<ureq::Agent, String> {
    let timeouts = &key.timeouts;
    let mut builder = ureq::AgentBuilder::new()
        // Proxies come from our own reading of the environment (with NO_PROXY), not ureq's.
        .try_proxy_from_env(false);
    if let Some(tls) = crate::tls::client_config(&key.tls)? {
        builder = builder.tls_config(tls);
    }
    if let Some(p) = &key.via_proxy {
        let proxy = ureq::Proxy::new(p)
            .map_err(|e| format!("invalid proxy URL from the environment ({})", e.kind()))?;
        builder = builder.proxy(proxy);
    }
    Ok(builder
        .timeout_connect(timeouts.connect)
        // A per-read socket timeout: the longest silence between bytes, not a cap on the stream.
        .timeout_read(timeouts.idle)
        .timeout_write(timeouts.idle)
        .redirects(0)
        .max_idle_connections(max_idle_per_host.saturating_mul(4))
        .max_idle_connections_per_host(max_idle_per_host)
        .user_agent(concat!("modelmux/", env!("CARGO_PKG_VERSION")))
        .build())
}

/// The backend URL for an OpenAI path such as `/chat/completions`.
///
/// `http://h:8000` → `http://h:8000/v1/chat/completions`;
/// `http://h:8000/v1` → `http://h:8000/v1/chat/completions`;
/// `https://h/openai` → `https://h/openai/v1/chat/completions`.
pub fn url(base: &str, path: &str, query: Option<&str>) -> String {
    let base = base.trim_end_matches('/');
    let mut u = if base.ends_with("/v1") {
        format!("{}{}", base, path)
    } else {
        format!("{}/v1{}", base, path)
    };
    if let Some(q) = query.filter(|q| !q.is_empty()) {
        u.push('?');
        u.push_str(q);
    }
    u
}

/// One outgoing request, ready to send.
pub struct Outgoing<'a> {
    /// HTTP method as the client sent it.
    pub method: &'a str,
    /// Full backend URL.
    pub url: String,
    /// Client headers to forward (already filtered).
    pub headers: Vec<(String, String)>,
    /// Rewritten body; `None` for body-less requests.
    pub body: Option<Vec<u8>>,
}

/// The headers sent to a backend: the client's (not Authorization, hop-by-hop or Host), the
/// endpoint's extra ones, this request's id and the backend's key.
pub fn forward_headers(
    client: &[(String, String)],
    endpoint: &Endpoint,
    backend: &Backend,
    request_id: &str,
) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = client
        .iter()
        .filter(|(n, _)| {
            !is_hop_by_hop(n)
                && !n.eq_ignore_ascii_case("authorization")
                && !n.eq_ignore_ascii_case("expect")
        })
        .cloned()
        .collect();
    // Later settings replace earlier ones: the endpoint's headers, then the proxy's own.
    let mut set = |name: &str, value: &str| {
        out.retain(|(o, _)| !o.eq_ignore_ascii_case(name));
        out.push((name.to_string(), value.to_string()));
    };
    for (n, v) in &endpoint.headers {
        set(n, v);
    }
    set("X-Request-Id", request_id);
    if !backend.api_key.is_empty() {
        set("Authorization", &format!("Bearer {}", backend.api_key));
    }
    out
}

/// Sends the request; any HTTP status is a response, only transport failures are errors.
pub fn send(agent: &ureq::Agent, out: Outgoing, model: &str) -> Result<ureq::Response, ApiError> {
    let mut req = agent.request(out.method, &out.url);
    for (n, v) in &out.headers {
        req = req.set(n, v);
    }
    let result = match out.body {
        Some(body) => req.send_bytes(&body),
        None => req.call(),
    };
    match result {
        Ok(resp) => Ok(resp),
        Err(ureq::Error::Status(_, resp)) => Ok(resp),
        Err(ureq::Error::Transport(t)) => Err(transport_error(&t, model, &out.url)),
    }
}

/// Maps a transport failure to 502/504 with a message that names the host but no secret.
fn transport_error(t: &ureq::Transport, model: &str, url: &str) -> ApiError {
    let host = crate::redact::host(url);
    let io_kind = std::error::Error::source(t)
        .and_then(|s| s.downcast_ref::<io::Error>())
        .map(|e| e.kind());
    let timed_out = matches!(
        io_kind,
        Some(io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock)
    );
    let detail = match (tls_error(t), t.kind(), io_kind) {
        // A certificate problem deserves its name: it is the first thing an operator checks.
        (Some(tls), _, _) => format!("TLS: {}", tls),
        (None, _, Some(k)) => format!("{:?}", k),
        (None, k, None) => format!("{:?}", k),
    };
    log::warn!(
        "upstream {} for model {} failed: {} ({})",
        host,
        model,
        t.kind(),
        detail
    );
    if matches!(
        t.kind(),
        ureq::ErrorKind::BadHeader | ureq::ErrorKind::InvalidUrl | ureq::ErrorKind::UnknownScheme
    ) {
        // The request could not even be written: a config or request problem, not the backend.
        ApiError::internal(format!(
            "The request for model `{}` could not be sent ({:?}); check the endpoint's url and headers.",
            model,
            t.kind()
        ))
    } else if timed_out {
        ApiError::gateway_timeout(format!(
            "The backend for model `{}` did not answer in time.",
            model
        ))
    } else {
        ApiError::bad_gateway(format!(
            "The backend for model `{}` could not be reached ({}).",
            model, detail
        ))
    }
}

/// The rustls error behind a transport failure, if any (certificate or handshake problems).
fn tls_error(t: &ureq::Transport) -> Option<String> {
    let mut source = std::error::Error::source(t);
    while let Some(e) = source {
        if let Some(tls) = e.downcast_ref::<rustls::Error>() {
            return Some(tls.to_string());
        }
        if let Some(io) = e.downcast_ref::<io::Error>() {
            if let Some(tls) = io
                .get_ref()
                .and_then(|inner| inner.downcast_ref::<rustls::Error>())
            {
                return Some(tls.to_string());
            }
        }
        source = e.source();
    }
    None
}

/// True when an I/O error from reading a backend body is a timeout.
pub fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn url_rule() {
        assert_eq!(
            super::url("http://h:8000", "/chat/completions", None),
            "http://h:8000/v1/chat/completions"
        );
        assert_eq!(
            super::url("http://h:8000/v1/", "/models", Some("a=1")),
            "http://h:8000/v1/models?a=1"
        );
        assert_eq!(
            super::url("https://h/openai", "/embeddings", None),
            "https://h/openai/v1/embeddings"
        );
    }
}
