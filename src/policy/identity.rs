//! Who is asking, per request, first match wins: Open WebUI's signed user token, its plain user
//! headers (only from a key trusted to send them), the OpenAI body's `user`, else the client
//! key's name (or `anonymous` when no keys are configured).

use super::jwt;
use crate::api_error::ApiError;
use crate::auth::Caller;
use crate::config::Secret;

/// The user a request is accounted to, and the client key's name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The user id (never a secret; personal data kept out of logs).
    pub user: String,
    /// The client key's name, or `anonymous`.
    pub key: String,
}

/// What identification reads from a request.
pub struct Asking<'a> {
    /// The client's headers.
    pub headers: &'a [(String, String)],
    /// The authenticated caller.
    pub caller: &'a Caller<'a>,
    /// The JSON body's `user`, if it is a string.
    pub body_user: Option<String>,
}

/// Longest user id kept; a longer one is cut (ids land in the ledger and perhaps in metrics).
const MAX_USER: usize = 128;

/// Identifies the caller; a present but invalid signed token is a 401 that never reaches a
/// backend.
pub fn identify(
    asking: &Asking,
    jwt_secret: Option<&Secret>,
    now_secs: i64,
) -> Result<Identity, ApiError> {
    let key = key_name(asking.caller);
    let header = |name: &str| {
        asking
            .headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .filter(|v| !v.trim().is_empty())
    };
    let user = if let (Some(token), Some(secret)) = (header("x-openwebui-user-jwt"), jwt_secret) {
        let claims = jwt::verify(token, secret.0.as_bytes(), now_secs).map_err(|why| {
            let mut e = ApiError::invalid_request(format!(
                "The X-OpenWebUI-User-Jwt token was refused: {}.",
                why
            ))
            .with_code("invalid_user_token");
            e.status = 401;
            e
        })?;
        claims.sub
    } else if let Some(id) = trusted(asking.caller)
        .then(|| {
            header("x-openwebui-user-id")
                .or_else(|| header("x-openwebui-user-email"))
                .map(percent_decode)
        })
        .flatten()
    {
        id
    } else if let Some(u) = asking.body_user.clone().filter(|u| !u.is_empty()) {
        u
    } else {
        key.clone()
    };
    Ok(Identity {
        user: clip(&user),
        key,
    })
}

/// Who a request is for when its user could not be told (its signed token was refused): the
/// client key alone, so the refusal is still accounted to someone.
pub fn key_only(caller: &Caller) -> Identity {
    let key = key_name(caller);
    Identity {
        user: key.clone(),
        key,
    }
}

fn key_name(caller: &Caller) -> String {
    match caller {
        Caller::Open => "anonymous".to_string(),
        Caller::Key(k) => k.name.clone(),
    }
}

fn trusted(caller: &Caller) -> bool {
    matches!(caller, Caller::Key(k) if k.trust_user_headers)
}

fn clip(s: &str) -> String {
    let clean: String = s.chars().filter(|c| !c.is_control()).collect();
    crate::api_error::clip(&clean, MAX_USER)
        .trim_end_matches('…')
        .to_string()
}

/// Open WebUI percent-encodes its user headers (names and emails may hold non-ASCII).
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        if b[i] == b'%' && i + 2 < b.len() {
            if let (Some(hi), Some(lo)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push((hi * 16 + lo) as u8);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::ProxyKey;

    fn key(name: &str, trust: bool) -> ProxyKey {
        ProxyKey {
            key: "sk-secret-value".into(),
            models: None,
            name: name.into(),
            trust_user_headers: trust,
            priority: crate::policy::Priority::Normal,
        }
    }

    fn h(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn first_match_wins() {
        let secret = Secret("k".into());
        let now = 1_800_000_000;
        let token = super::jwt::tests::sign(
            r#"{"alg":"HS256"}"#,
            r#"{"sub":"jwt-user","iss":"open-webui"}"#,
            b"k",
        );
        let trusted = key("owui", true);
        let untrusted = key("other", false);
        let plain = h(&[
            ("X-OpenWebUI-User-Id", "hdr%20user"),
            ("X-OpenWebUI-User-Email", "a@b"),
        ]);
        let with_jwt = {
            let mut v = plain.clone();
            v.push(("X-OpenWebUI-User-Jwt".into(), token.clone()));
            v
        };
        // (headers, caller, body user, secret, expected user, expected key)
        type Case<'a> = (
            &'a [(String, String)],
            Caller<'a>,
            Option<&'a str>,
            Option<&'a Secret>,
            &'a str,
            &'a str,
        );
        let cases: Vec<Case> = vec![
            (
                &with_jwt,
                Caller::Key(&trusted),
                Some("body"),
                Some(&secret),
                "jwt-user",
                "owui",
            ),
            // Without a secret the token cannot be checked: it is ignored.
            (
                &with_jwt,
                Caller::Key(&trusted),
                None,
                None,
                "hdr user",
                "owui",
            ),
            (
                &plain,
                Caller::Key(&trusted),
                Some("body"),
                Some(&secret),
                "hdr user",
                "owui",
            ),
            (
                &plain,
                Caller::Key(&untrusted),
                Some("body"),
                None,
                "body",
                "other",
            ),
            (
                &plain,
                Caller::Key(&untrusted),
                None,
                None,
                "other",
                "other",
            ),
            (&plain, Caller::Open, None, None, "anonymous", "anonymous"),
            (&[], Caller::Open, Some("u7"), None, "u7", "anonymous"),
        ];
        for (i, (headers, caller, body_user, secret, user, key)) in cases.into_iter().enumerate() {
            let asking = Asking {
                headers,
                caller: &caller,
                body_user: body_user.map(str::to_string),
            };
            let id = identify(&asking, secret, now).unwrap();
            assert_eq!(
                (id.user.as_str(), id.key.as_str()),
                (user, key),
                "case {}",
                i
            );
        }
    }

    #[test]
    fn a_bad_token_is_a_401() {
        let headers = h(&[("X-OpenWebUI-User-Jwt", "a.b.c")]);
        let asking = Asking {
            headers: &headers,
            caller: &Caller::Open,
            body_user: None,
        };
        let e = identify(&asking, Some(&Secret("k".into())), 0).unwrap_err();
        assert_eq!((e.status, e.code), (401, Some("invalid_user_token")));
    }
}
