//! Optional client authentication: proxy keys with model allow-lists, and the admin key.

pub use crate::config::ProxyKey;
use crate::http::api_error::ApiError;

/// Who is calling, after authentication.
#[derive(Debug, Clone, Copy)]
pub enum Caller<'a> {
    /// No proxy keys are configured: the seed's open behaviour.
    Open,
    /// A valid proxy key.
    Key(&'a ProxyKey),
}

impl Caller<'_> {
    /// True when the caller may see and use this model.
    pub fn may_use(&self, model: &str) -> bool {
        match self {
            Caller::Open => true,
            Caller::Key(k) => k
                .models
                .as_ref()
                .map(|m| crate::glob::any(m, model))
                .unwrap_or(true),
        }
    }
}

/// The client's key: the token of an `Authorization: Bearer` header or, when no Bearer token
/// came, Anthropic's `x-api-key` header (what the Anthropic SDKs and Claude Code send).
pub fn bearer(headers: &tiny_http::HeaderList) -> Option<&str> {
    let bearer = headers.get("Authorization").and_then(|v| {
        let (scheme, token) = v.trim().split_once(' ')?;
        scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
    });
    bearer.or_else(|| {
        headers
            .get("x-api-key")
            .map(str::trim)
            .filter(|t| !t.is_empty())
    })
}

/// Checks the caller's token against the proxy keys (every key is compared, in constant time).
pub fn authenticate<'a>(keys: &'a [ProxyKey], token: Option<&str>) -> Result<Caller<'a>, ApiError> {
    if keys.is_empty() {
        return Ok(Caller::Open);
    }
    let token = token.unwrap_or("");
    let mut found = None;
    for k in keys {
        if ct_eq(k.key.as_bytes(), token.as_bytes()) && found.is_none() {
            found = Some(k);
        }
    }
    found.map(Caller::Key).ok_or_else(unauthorized)
}

/// Gate for the admin endpoints. `/usage` (`personal_data`) always needs the admin key.
/// `/debug` and `/reload` need it when it is set; with client keys but no admin key they are
/// refused; with neither they are open (the original proxy's behaviour). A valid client key
/// that is not the admin key is known, so it gets 403, not 401.
pub fn admin(
    admin_key: Option<&str>,
    proxy_keys: &[ProxyKey],
    token: Option<&str>,
    personal_data: bool,
) -> Result<(), ApiError> {
    match admin_key {
        Some(k) if ct_eq(k.as_bytes(), token.unwrap_or("").as_bytes()) => Ok(()),
        Some(_) if !proxy_keys.is_empty() && authenticate(proxy_keys, token).is_ok() => {
            Err(forbidden(
                "admin only: this endpoint needs the admin key (CM_OPEN_WEBUI_PROXY_ADMIN_KEY), not a client key.",
                "admin_only",
            ))
        }
        Some(_) => Err(unauthorized()),
        None if personal_data => Err(forbidden(
            "/usage shows personal data and needs the admin key: set CM_OPEN_WEBUI_PROXY_ADMIN_KEY and send it as `Authorization: Bearer <key>`. `modelmux usage` reads the ledger locally without a server.",
            "admin_key_not_set",
        )),
        None if !proxy_keys.is_empty() => Err(forbidden(
            "Admin endpoints are disabled: proxy keys are configured but CM_OPEN_WEBUI_PROXY_ADMIN_KEY is not.",
            "admin_disabled",
        )),
        None => Ok(()),
    }
}

/// True when `token` is one of `keys` (compared in constant time); a key that is not set never
/// matches.
pub fn is_one_of(keys: &[Option<&str>], token: Option<&str>) -> bool {
    let token = token.unwrap_or("").as_bytes();
    keys.iter()
        .flatten()
        .fold(false, |hit, k| ct_eq(k.as_bytes(), token) | hit)
}

fn forbidden(message: &str, code: &'static str) -> ApiError {
    let mut e = ApiError::invalid_request(message).with_code(code);
    e.status = 403;
    e
}

fn unauthorized() -> ApiError {
    let mut e = ApiError::invalid_request(
        "Incorrect or missing API key. Send `Authorization: Bearer <key>`.",
    )
    .with_code("invalid_api_key");
    e.status = 401;
    e
}

/// Compares without an early exit on the first differing byte.
fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = (a.len() ^ b.len()) as u64;
    for i in 0..a.len().max(b.len()) {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0);
        diff |= u64::from(x ^ y);
    }
    diff == 0 && !a.is_empty()
}

/// Parses `CM_OPEN_WEBUI_PROXY_API_KEYS`: `key1,key2=modelA|modelB`.
pub fn parse_env_keys(s: &str) -> Vec<ProxyKey> {
    s.split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .map(|entry| match entry.split_once('=') {
            Some((k, models)) => ProxyKey {
                key: k.trim().to_string(),
                name: String::new(),
                trust_user_headers: false,
                priority: crate::config::Priority::Normal,
                models: Some(
                    models
                        .split('|')
                        .map(|m| m.trim().to_string())
                        .filter(|m| !m.is_empty())
                        .collect(),
                ),
            },
            None => ProxyKey {
                name: String::new(),
                trust_user_headers: false,
                priority: crate::config::Priority::Normal,
                key: entry.to_string(),
                models: None,
            },
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys() {
        let keys = parse_env_keys("aaa, bbb=m1|m2 ,");
        assert_eq!(keys.len(), 2);
        assert!(matches!(
            authenticate(&keys, Some("aaa")),
            Ok(Caller::Key(_))
        ));
        assert_eq!(authenticate(&keys, Some("aab")).unwrap_err().status, 401);
        assert_eq!(authenticate(&keys, None).unwrap_err().status, 401);
        let c = authenticate(&keys, Some("bbb")).unwrap();
        assert!(c.may_use("m2") && !c.may_use("m3"));
        let keys = parse_env_keys("ccc=ollama/llama*|gpt-4o");
        let c = authenticate(&keys, Some("ccc")).unwrap();
        assert!(c.may_use("ollama/llama3:8b") && c.may_use("gpt-4o"));
        assert!(!c.may_use("ollama/qwen2") && !c.may_use("gpt-4o-mini"));
        assert!(!ct_eq(b"", b""));
        let status = |admin_key, keys: &[ProxyKey], token, usage| {
            admin(admin_key, keys, token, usage).map_err(|e| (e.status, e.code))
        };
        let none: &[ProxyKey] = &[];
        assert_eq!(
            status(None, &keys, None, false),
            Err((403, Some("admin_disabled")))
        );
        assert_eq!(status(None, none, None, false), Ok(()));
        assert_eq!(
            status(None, none, None, true),
            Err((403, Some("admin_key_not_set")))
        );
        assert_eq!(status(Some("adm"), &keys, Some("adm"), true), Ok(()));
        assert_eq!(status(Some("adm"), none, Some("adm"), false), Ok(()));
        assert_eq!(
            status(Some("adm"), &keys, Some("ccc"), true),
            Err((403, Some("admin_only")))
        );
        assert_eq!(
            status(Some("adm"), &keys, Some("ccx"), false),
            Err((401, Some("invalid_api_key")))
        );
        assert_eq!(
            status(Some("adm"), none, Some("ccc"), false),
            Err((401, Some("invalid_api_key")))
        );
    }
}
