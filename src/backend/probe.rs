//! One probe of a backend: `GET {url}/v1/models` with the backend's key and the endpoint's
//! headers, bounded in time and size. Never a completion: probes that generate cost money and
//! load models.

use crate::config::{Backend, ClientKey, Endpoint};
use std::io::Read;
use std::sync::Mutex;
use std::time::Duration;

/// The longest a probe waits between bytes (the endpoint's `idleSecs` when shorter).
const PROBE_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest a whole probe may take, so a backend that trickles bytes cannot hold it.
const PROBE_TOTAL_TIMEOUT: Duration = Duration::from_secs(20);
/// The largest model list read.
const MAX_LIST_BYTES: u64 = 4 * 1024 * 1024;
/// The most models kept from one list.
const MAX_MODELS: usize = 10_000;
/// The longest model name kept.
const MAX_NAME: usize = 256;

/// HTTP clients for probes, one per client key, built once.
#[derive(Default)]
pub struct Prober {
    agents: Mutex<Vec<(ClientKey, ureq::Agent)>>,
}

impl Prober {
    /// Lists the models a backend serves; the error says why not, without secrets.
    pub fn list_models(
        &self,
        endpoint: &Endpoint,
        backend: &Backend,
    ) -> Result<Vec<String>, String> {
        let agent = self.agent(endpoint.client_key(backend))?;
        let mut headers = crate::backend::upstream::forward_headers(
            &tiny_http::HeaderList::default(),
            false,
            endpoint,
            backend,
            &crate::http::access_log::request_id(None),
        );
        if let Some((name, value)) = crate::backend::prepared::key_header(backend) {
            crate::backend::upstream::set_header(&mut headers, name, value);
        }
        // Anthropic's API lists its models only for a request that names a version.
        if backend.key_header == crate::config::KeyHeader::XApiKey {
            let version = crate::backend::upstream::ANTHROPIC_VERSION;
            headers.push(("anthropic-version".into(), version.into()));
        }
        let mut req = agent
            .get(&crate::backend::prepared::url(
                &backend.url,
                "/models",
                None,
            ))
            .timeout(PROBE_TOTAL_TIMEOUT);
        for (n, v) in &headers {
            req = req.set(n, v);
        }
        let resp = match req.call() {
            Ok(r) => r,
            Err(ureq::Error::Status(status, _)) => {
                return Err(format!("GET /v1/models answered {}", status))
            }
            Err(ureq::Error::Transport(t)) => return Err(describe(&t)),
        };
        if !(200..300).contains(&resp.status()) {
            return Err(format!("GET /v1/models answered {}", resp.status()));
        }
        let mut body = Vec::new();
        resp.into_reader()
            .take(MAX_LIST_BYTES + 1)
            .read_to_end(&mut body)
            .map_err(|e| format!("reading the model list failed ({:?})", e.kind()))?;
        if body.len() as u64 > MAX_LIST_BYTES {
            return Err(format!(
                "the model list is larger than {} bytes",
                MAX_LIST_BYTES
            ));
        }
        parse_model_list(&body)
    }

    fn agent(&self, mut key: ClientKey) -> Result<ureq::Agent, String> {
        key.timeouts.idle = key.timeouts.idle.min(PROBE_READ_TIMEOUT);
        let mut agents = self.agents.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, a)) = agents.iter().find(|(k, _)| *k == key) {
            return Ok(a.clone());
        }
        let a = crate::backend::upstream::agent(&key, 2)?;
        agents.push((key, a.clone()));
        Ok(a)
    }
}

/// A transport failure in a few words, naming no host or secret.
fn describe(t: &ureq::Transport) -> String {
    let io = std::error::Error::source(t)
        .and_then(|s| s.downcast_ref::<std::io::Error>())
        .map(|e| e.kind());
    match io {
        Some(std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock) => {
            "no answer in time".to_string()
        }
        Some(kind) => format!("{} ({:?})", t.kind(), kind),
        None => t.kind().to_string(),
    }
}

/// The model ids of an OpenAI list object, `{"data": [{"id": "..."}]}`, in order, once each;
/// ids that are empty, too long or hold control characters are left out.
pub fn parse_model_list(body: &[u8]) -> Result<Vec<String>, String> {
    let v: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| format!("the model list is not JSON ({})", e))?;
    let data = v
        .get("data")
        .and_then(|d| d.as_array())
        .ok_or("the model list has no \"data\" array")?;
    let mut out: Vec<String> = Vec::new();
    for id in data.iter().filter_map(|m| m.get("id")?.as_str()) {
        let sane = !id.is_empty() && id.len() <= MAX_NAME && !id.chars().any(char::is_control);
        if sane && !out.iter().any(|o| o == id) {
            out.push(id.to_string());
        }
        if out.len() >= MAX_MODELS {
            break;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::parse_model_list;

    #[test]
    fn model_lists() {
        let ok = br#"{"object":"list","data":[{"id":"llama3:8b"},{"id":"qwen2"},{"id":"llama3:8b"},
            {"id":""},{"id":"bad\nname"},{"id":7},{"name":"no-id"}]}"#;
        assert_eq!(parse_model_list(ok).unwrap(), vec!["llama3:8b", "qwen2"]);
        assert_eq!(
            parse_model_list(br#"{"data":[]}"#).unwrap(),
            Vec::<String>::new()
        );
        assert!(parse_model_list(b"<html>")
            .unwrap_err()
            .contains("not JSON"));
        assert!(parse_model_list(br#"{"models":[]}"#)
            .unwrap_err()
            .contains("no \"data\""));
    }
}
