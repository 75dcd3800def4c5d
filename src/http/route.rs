//! Maps a request path to what modelmux does with it.

/// What a path asks for; `/v1` and bare paths map to the same route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// `GET /health`: liveness, answered without a worker.
    Health,
    /// `GET /metrics`: Prometheus text, answered without a worker.
    Metrics,
    /// `GET /debug`: the effective config, keys masked.
    Debug,
    /// `POST /reload`: re-read the config file.
    Reload,
    /// `GET /usage`: usage totals from the ledger (admin key).
    Usage,
    /// `HEAD /api/hello`: Claude Code's connectivity probe, answered like `/health`.
    Hello,
    /// `GET /models`: the model list.
    Models,
    /// `GET /models/{id}`: one model.
    Model(String),
    /// `POST /chat/completions`: routed by the body's `model`.
    ChatCompletions,
    /// Any other OpenAI path, proxied to the backend of the model the request names.
    Passthrough,
}

/// A request target split into the normalized OpenAI path (no `/v1`, no `//`) and the raw query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Path as the backend sees it after `/v1`, e.g. `/chat/completions`; always starts with `/`.
    pub path: String,
    /// Query string without `?`, if any.
    pub query: Option<String>,
}

/// Splits and normalizes a request target such as `//v1//models?x=1`.
pub fn parse_target(raw: &str) -> Target {
    let (path, query) = match raw.split_once('?') {
        Some((p, q)) => (p, Some(q.to_string())),
        None => (raw, None),
    };
    let path = path.split('#').next().unwrap_or("");
    let mut collapsed = String::with_capacity(path.len() + 1);
    for segment in path.split('/').filter(|s| !s.is_empty()) {
        collapsed.push('/');
        collapsed.push_str(segment);
    }
    // `/v1` is dropped in place: the path is built with one allocation.
    if collapsed == "/v1" {
        collapsed.truncate(1);
    } else if collapsed.starts_with("/v1/") {
        collapsed.replace_range(..3, "");
    }
    if collapsed.is_empty() {
        collapsed.push('/');
    }
    Target {
        path: collapsed,
        query,
    }
}

/// False when the path could climb out of a backend's base URL once a backend decodes it:
/// a `.` or `..` segment, literal or percent-encoded, or a backslash.
pub fn is_safe_path(path: &str) -> bool {
    let plain = |p: &str| !p.contains('\\') && p.split('/').all(|seg| seg != "." && seg != "..");
    // Without an escape the decoded path is the path: nothing to decode (or allocate).
    if !path.contains('%') {
        return plain(path);
    }
    let decoded = percent_decode(path);
    !decoded.contains('\\')
        && !path.contains('\\')
        && decoded
            .split('/')
            .chain(path.split('/'))
            .all(|seg| seg != "." && seg != "..")
}

/// The route for a normalized path.
pub fn route(path: &str) -> Route {
    match path {
        "/health" => Route::Health,
        "/metrics" => Route::Metrics,
        "/debug" => Route::Debug,
        "/reload" => Route::Reload,
        "/usage" => Route::Usage,
        "/api/hello" => Route::Hello,
        "/models" => Route::Models,
        "/chat/completions" => Route::ChatCompletions,
        _ => match path.strip_prefix("/models/") {
            Some(id) => Route::Model(percent_decode(id)),
            None => Route::Passthrough,
        },
    }
}

/// Decodes `%XX` escapes; invalid escapes and non-UTF-8 results are kept as they came.
pub fn percent_decode(s: &str) -> String {
    String::from_utf8(percent_decode_bytes(s)).unwrap_or_else(|_| s.to_string())
}

/// Decodes `%XX` escapes; bytes that are not UTF-8 become U+FFFD (for header values such as
/// Open WebUI's user names, and OTLP header and resource values, where a near value beats none).
pub fn percent_decode_lossy(s: &str) -> String {
    String::from_utf8_lossy(&percent_decode_bytes(s)).into_owned()
}

fn percent_decode_bytes(s: &str) -> Vec<u8> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                out.push(h * 16 + l);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    out
}

/// Encodes a query value so it survives as one `key=value` pair.
pub fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{:02X}", b));
        }
    }
    out
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes() {
        assert_eq!(
            parse_target("//v1//chat/completions").path,
            "/chat/completions"
        );
        assert_eq!(parse_target("/v1").path, "/");
        assert_eq!(parse_target("/v1beta/x").path, "/v1beta/x");
        assert_eq!(
            parse_target("/models?model=a").query.as_deref(),
            Some("model=a")
        );
        assert_eq!(
            route("/models/meta-llama%2FLlama-3"),
            Route::Model("meta-llama/Llama-3".into())
        );
        assert_eq!(route("/models/org/name"), Route::Model("org/name".into()));
        assert_eq!(percent_decode("a%2"), "a%2");
    }
}
