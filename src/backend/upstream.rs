//! Calls a backend: header filtering, the ureq agent and its error mapping (the URL rule and
//! the key header are `prepared`'s).

use crate::backend::prepared::{BackendUrl, Prepared};
use crate::config::{Backend, ClientKey, Endpoint};
use crate::http::api_error::ApiError;
use crate::http::headers;
use std::io;
use std::sync::Arc;

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

/// One outgoing request, ready to send.
pub struct Outgoing<'a> {
    /// HTTP method as the client sent it.
    pub method: &'a str,
    /// The OpenAI path, such as `/chat/completions`; `send` makes it the backend's URL.
    pub path: &'a str,
    /// The query to send, if any.
    pub query: Option<String>,
    /// Client headers to forward (already filtered); `send` adds the backend's key.
    pub headers: Vec<(String, String)>,
    /// Rewritten body; `None` for body-less requests.
    pub body: Option<Vec<u8>>,
}

/// Anthropic's API answers a request without `anthropic-version` with a 400: the version sent
/// to a backend that takes `x-api-key` when the client named none (a client's own is forwarded
/// as it is).
pub const ANTHROPIC_VERSION: &str = "2023-06-01";

/// The headers sent to a backend: the client's (not Authorization, hop-by-hop or Host), the
/// endpoint's extra ones and this request's id. The backend's key (`prepared::key_header`) is added by
/// the sender, replacing an endpoint header of the same name.
pub fn forward_headers(
    client: &tiny_http::HeaderList,
    streaming: bool,
    endpoint: &Endpoint,
    backend: &Backend,
    request_id: &str,
) -> Vec<(String, String)> {
    let mut out = headers::from_client(client, streaming, endpoint.forward_user_headers);
    let named_model = out
        .iter()
        .any(|(n, _)| n.eq_ignore_ascii_case("x-model-id"));
    // Later settings replace earlier ones: the endpoint's headers, then the proxy's own.
    for (n, v) in &endpoint.headers {
        set_header(&mut out, n, v.clone());
    }
    set_header(&mut out, "X-Request-Id", request_id.to_string());
    // The README's promise: the model is named by its backend name wherever the client named it.
    if named_model {
        set_header(&mut out, "X-Model-Id", backend.actual_model_name.clone());
    }
    out
}

/// Sets a header, replacing any of the same name.
pub fn set_header(out: &mut Vec<(String, String)>, name: &str, value: String) {
    out.retain(|(o, _)| !o.eq_ignore_ascii_case(name));
    out.push((name.to_string(), value));
}

/// Why one attempt on a backend failed; the retry and failover decision matches on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// Our own request could not be written (a URL or header from the config that HTTP cannot
    /// carry): not the backend's fault, so no failover and no strike against its health.
    Unsendable(String),
    /// No connection, or it broke before an answer (refused, DNS, reset).
    Connect(String),
    /// The TLS handshake or the backend's certificate failed.
    Tls(String),
    /// No answer within the connect or idle timeout.
    Timeout,
    /// An answer HTTP cannot relay: a malformed head, too many headers, an unrequested
    /// `101 Switching Protocols`.
    BadResponse(String),
    /// A complete answer whose status says "try elsewhere" (429, 5xx).
    Status(u16),
}

impl Failure {
    /// The metric label for this failure.
    pub fn cause(&self) -> &'static str {
        match self {
            Failure::Unsendable(_) => "unsendable",
            Failure::Connect(_) => "connect",
            Failure::Tls(_) => "tls",
            Failure::Timeout => "timeout",
            Failure::BadResponse(_) => "bad_response",
            Failure::Status(429) => "status_429",
            Failure::Status(_) => "status_5xx",
        }
    }

    /// True when the backend is at fault: another backend may be tried and this one is marked.
    pub fn is_backend_fault(&self) -> bool {
        !matches!(self, Failure::Unsendable(_))
    }

    /// The error the client gets when no other backend is left.
    pub fn to_api_error(&self, model: &str) -> ApiError {
        match self {
            Failure::Unsendable(detail) => ApiError::internal(format!(
                "The request for model `{}` could not be sent ({}); check the endpoint's url and headers.",
                model, detail
            )),
            Failure::Timeout => ApiError::gateway_timeout(format!(
                "The backend for model `{}` did not answer in time.",
                model
            )),
            Failure::Connect(detail) | Failure::Tls(detail) => ApiError::bad_gateway(format!(
                "The backend for model `{}` could not be reached ({}).",
                model, detail
            )),
            Failure::BadResponse(detail) => ApiError::bad_gateway(format!(
                "The backend for model `{}` sent an answer that cannot be relayed ({}).",
                model, detail
            )),
            Failure::Status(status) => ApiError::bad_gateway(format!(
                "The backend for model `{}` answered {}.",
                model, status
            )),
        }
    }
}

/// Sends the request to the backend `to` with its key. Any final status is a response;
/// transport failures and answers HTTP cannot relay are a `Failure`.
pub fn send(to: &Prepared, mut out: Outgoing, model: &str) -> Result<ureq::Response, Failure> {
    let unsendable = |name: &str| {
        format!(
            "header `{}` cannot be sent",
            crate::http::api_error::clip(name, 64)
        )
    };
    let key = to
        .key()
        .map_err(|name| Failure::Unsendable(unsendable(name)))?;
    if let Some(key) = key {
        out.headers
            .retain(|(n, _)| !n.eq_ignore_ascii_case(key.name()));
    }
    // Checked here with ureq's own rules, so that a `BadHeader` from ureq can only describe
    // the backend's answer, never our request.
    if let Some((name, _)) = out
        .headers
        .iter()
        .find(|(n, v)| !headers::is_valid_name(n) || !headers::is_valid_value(v))
    {
        return Err(Failure::Unsendable(unsendable(name)));
    }
    let mut req = match to.url(out.path, out.query.as_deref()) {
        BackendUrl::Parsed(url) => to.agent.request_shared(out.method, Arc::clone(url)),
        BackendUrl::Text(url) => to.agent.request(out.method, &url),
    };
    // Handed over: ureq builds each header line in the name's buffer.
    for (n, v) in out.headers {
        req = req.set_owned(n, v);
    }
    // Built at load time; each request shares its line.
    if let Some(key) = key {
        req = req.set_prepared(key);
    }
    let result = match out.body {
        Some(body) => req.send_bytes(&body),
        None => req.call(),
    };
    let failure = match result {
        Ok(resp) | Err(ureq::Error::Status(_, resp)) if resp.status() == 101 => {
            Failure::BadResponse(
                "101 Switching Protocols to a request that asked for no upgrade".into(),
            )
        }
        Ok(resp) => return Ok(resp),
        Err(ureq::Error::Status(_, resp)) => return Ok(resp),
        Err(ureq::Error::Transport(t)) => transport_failure(&t),
    };
    log::warn!(
        "upstream {} for model {} failed: {} ({:?})",
        to.host,
        crate::http::access_log::shown(model),
        failure.cause(),
        failure
    );
    Err(failure)
}

/// Names a transport failure; the detail names no host, URL or secret.
fn transport_failure(t: &ureq::Transport) -> Failure {
    let io_kind = std::error::Error::source(t)
        .and_then(|s| s.downcast_ref::<io::Error>())
        .map(|e| e.kind());
    if let Some(tls) = tls_error(t) {
        // A certificate problem deserves its name: it is the first thing an operator checks.
        return Failure::Tls(format!("TLS: {}", tls));
    }
    if matches!(
        io_kind,
        Some(io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock)
    ) {
        return Failure::Timeout;
    }
    match t.kind() {
        // `send` checked every header, so these describe the backend's answer.
        ureq::ErrorKind::BadHeader | ureq::ErrorKind::BadStatus => {
            Failure::BadResponse(format!("{}", t.kind()))
        }
        ureq::ErrorKind::InvalidUrl | ureq::ErrorKind::UnknownScheme => {
            Failure::Unsendable(format!("{:?}", t.kind()))
        }
        k => Failure::Connect(match io_kind {
            Some(io) => format!("{:?}", io),
            None => format!("{:?}", k),
        }),
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
