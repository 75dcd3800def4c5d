//! What every request to one backend shares, built once per config load and swapped with it
//! (inside `Live`): its HTTP client, its URLs for the API paths already parsed, and its key
//! header ready to send. Both the URL and the key come from the same load, so a request never
//! pairs one config's URL with another's key.

use crate::config::{Backend, KeyHeader};
use crate::http::headers;
use std::sync::Arc;
use url::Url;

/// The API paths whose backend URL is parsed at load time: the requests modelmux relays with
/// a body. Any other path, or one with a query, gets its URL built and parsed per request.
const PATHS: [&str; 5] = [
    "/chat/completions",
    "/completions",
    "/embeddings",
    "/messages",
    "/responses",
];

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

/// The header that carries the backend's key, if it has one. The client's own Authorization
/// and x-api-key never reach a backend (`headers::from_client`).
pub fn key_header(backend: &Backend) -> Option<(&'static str, String)> {
    if backend.api_key.is_empty() {
        return None;
    }
    Some(match backend.key_header {
        KeyHeader::Bearer => ("Authorization", format!("Bearer {}", backend.api_key)),
        KeyHeader::XApiKey => ("x-api-key", backend.api_key.clone()),
    })
}

/// One backend's parts, for one loaded config.
pub struct Prepared {
    /// The pooled HTTP client (shared by every backend with the same client key).
    pub agent: ureq::Agent,
    /// The backend's URL as configured.
    base: String,
    /// Its host (and port), for logs, metrics and the ledger: shared by every request's
    /// summary instead of cut out of the URL and copied per request.
    pub host: Arc<str>,
    urls: Vec<(&'static str, Arc<Url>)>,
    key: Key,
}

/// The backend's key header.
enum Key {
    None,
    Ready(ureq::PreparedHeader),
    /// A key HTTP cannot carry (a control or non-ASCII character): every request is refused as
    /// unsendable, naming only the header.
    Unsendable(&'static str),
}

/// The backend's URL for one request: parsed at load time (shared by its requests), or text to
/// parse now.
pub enum BackendUrl<'a> {
    Parsed(&'a Arc<Url>),
    Text(String),
}

impl Prepared {
    /// The parts of `backend`, sent through `agent`.
    pub fn new(backend: &Backend, agent: ureq::Agent) -> Prepared {
        let urls = PATHS
            .iter()
            .filter_map(|path| {
                let url = Url::parse(&url(&backend.url, path, None)).ok()?;
                // ureq refuses a URL without a host: left to the text path, which reports it.
                url.has_host().then(|| (*path, Arc::new(url)))
            })
            .collect();
        let key = match key_header(backend) {
            None => Key::None,
            Some((name, value)) if headers::is_valid_value(&value) => {
                match ureq::PreparedHeader::new(name, &value) {
                    Ok(h) => Key::Ready(h),
                    Err(_) => Key::Unsendable(name),
                }
            }
            Some((name, _)) => Key::Unsendable(name),
        };
        Prepared {
            agent,
            base: backend.url.clone(),
            host: crate::redact::host(&backend.url).into(),
            urls,
            key,
        }
    }

    /// The URL of an API path such as `/chat/completions` on this backend.
    pub fn url(&self, path: &str, query: Option<&str>) -> BackendUrl<'_> {
        // A query is appended to the text: only a query-less path has a parsed URL.
        let parsed = match query {
            Some(q) if !q.is_empty() => None,
            _ => self.urls.iter().find(|(p, _)| *p == path),
        };
        match parsed {
            Some((_, url)) => BackendUrl::Parsed(url),
            None => BackendUrl::Text(url(&self.base, path, query)),
        }
    }

    /// The key header to send: `Ok(None)` for a backend without a key, `Err(name)` for a key
    /// HTTP cannot carry.
    pub fn key(&self) -> Result<Option<&ureq::PreparedHeader>, &'static str> {
        match &self.key {
            Key::None => Ok(None),
            Key::Ready(h) => Ok(Some(h)),
            Key::Unsendable(name) => Err(name),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backend(url: &str, key: &str) -> Backend {
        let cfg = format!(
            r#"{{"endpoints":{{"m":{{"url":"{}","apiKey":"{}"}}}}}}"#,
            url, key
        );
        let config = crate::config::parse("c", &cfg, &Default::default(), &|_| None).unwrap();
        config.endpoints[0].backends[0].clone()
    }

    #[test]
    fn known_paths_are_parsed_once_and_others_are_text() {
        let p = Prepared::new(
            &backend("http://h:8000/v1/", ""),
            ureq::AgentBuilder::new().build(),
        );
        match p.url("/chat/completions", None) {
            BackendUrl::Parsed(u) => assert_eq!(u.as_str(), "http://h:8000/v1/chat/completions"),
            BackendUrl::Text(t) => panic!("not parsed: {}", t),
        }
        match p.url("/chat/completions", Some("a=1")) {
            BackendUrl::Text(t) => assert_eq!(t, "http://h:8000/v1/chat/completions?a=1"),
            BackendUrl::Parsed(u) => panic!("a query must be kept: {}", u),
        }
        match p.url("/models/x", None) {
            BackendUrl::Text(t) => assert_eq!(t, "http://h:8000/v1/models/x"),
            BackendUrl::Parsed(u) => panic!("unexpected: {}", u),
        }
        assert!(matches!(p.key(), Ok(None)));
    }

    #[test]
    fn the_key_header_hides_its_value() {
        let p = Prepared::new(
            &backend("http://h:8000", "sk-secret-123"),
            ureq::AgentBuilder::new().build(),
        );
        let h = p.key().unwrap().unwrap();
        assert_eq!(h.name(), "Authorization");
        assert!(!format!("{:?}", h).contains("sk-secret"));
    }

    #[test]
    fn url_rule() {
        assert_eq!(
            url("http://h:8000", "/chat/completions", None),
            "http://h:8000/v1/chat/completions"
        );
        assert_eq!(
            url("http://h:8000/v1/", "/models", Some("a=1")),
            "http://h:8000/v1/models?a=1"
        );
        assert_eq!(
            url("https://h/openai", "/embeddings", None),
            "https://h/openai/v1/embeddings"
        );
    }
}
