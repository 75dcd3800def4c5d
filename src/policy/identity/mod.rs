//! Who is asking, per request, first match wins: Open WebUI's signed user token, its plain user
//! headers and the OpenAI body's `user` (both only from a key trusted to name users, or when
//! no keys are configured), else the client key's name (or `anonymous` when no keys are
//! configured). The body `user` of a key not trusted to name users is kept as the end user's
//! label beside the key's identity: budgets and fairness never see it.

pub mod auth;
pub mod jwt;

use crate::config::Secret;
use crate::http::api_error::ApiError;
use crate::policy::identity::auth::Caller;

/// The user a request is accounted to, and the client key's name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The user id (never a secret; personal data kept out of logs).
    pub user: String,
    /// The client key's name, or `anonymous`.
    pub key: String,
    /// The body's `user` sent with a key not trusted to name users: the ledger records it as
    /// `end_user`, but quotas and the fair queue count the request under `user` (the key).
    pub label: Option<String>,
    /// The client's conversation, Claude Code's `x-claude-code-session-id` (see `session`).
    pub session: Option<String>,
}

/// What identification reads from a request.
pub struct Asking<'a> {
    /// The client's headers.
    pub headers: &'a tiny_http::HeaderList,
    /// The authenticated caller.
    pub caller: &'a Caller<'a>,
    /// The JSON body's `user`, if it is a string.
    pub body_user: Option<String>,
}

/// Longest user id accepted, in characters; a longer one is refused rather than cut, since cut
/// ids that share their first 128 characters would be one user.
const MAX_USER: usize = 128;

/// Identifies the caller. A present but invalid signed token is a 401 and an over-long id a
/// 400; neither reaches a backend.
pub fn identify(
    asking: &Asking,
    jwt: Option<(&Secret, jwt::Expect)>,
    now_secs: i64,
) -> Result<Identity, ApiError> {
    let key = key_name(asking.caller);
    let header = |name: &str| asking.headers.get(name).filter(|v| !v.trim().is_empty());
    let body_user = asking.body_user.as_deref().filter(|u| !u.is_empty());
    let mut label = None;
    let user = if let (Some(token), Some((secret, expect))) = (header("x-openwebui-user-jwt"), jwt)
    {
        let claims = jwt::verify(token, secret.0.as_bytes(), expect, now_secs).map_err(|why| {
            let mut e = ApiError::invalid_request(format!(
                "The X-OpenWebUI-User-Jwt token was refused: {}.",
                why
            ))
            .with_code("invalid_user_token");
            e.status = 401;
            e
        })?;
        checked(claims.sub, "The X-OpenWebUI-User-Jwt token's sub", None)?
    } else if let Some((name, id)) = trusted(asking.caller)
        .then(|| {
            // Open WebUI percent-encodes them (names and emails may hold non-ASCII).
            ["X-OpenWebUI-User-Id", "X-OpenWebUI-User-Email"]
                .into_iter()
                .find_map(|n| header(n).map(|v| (n, crate::http::route::percent_decode_lossy(v))))
        })
        .flatten()
    {
        checked(id, &format!("The {} header", name), None)?
    } else if let Some(u) = body_user {
        let u = checked(u.to_string(), "The body's user", Some("user"))?;
        if names_users(asking.caller) {
            u
        } else {
            label = Some(u);
            key.clone()
        }
    } else {
        key.clone()
    };
    Ok(Identity {
        user,
        key,
        label,
        session: session(asking.headers),
    })
}

/// Who a request is for when its user could not be told (its signed token was refused): the
/// client key alone, so the refusal is still accounted to someone.
pub fn key_only(caller: &Caller) -> Identity {
    let key = key_name(caller);
    Identity {
        user: key.clone(),
        key,
        label: None,
        session: None,
    }
}

fn key_name(caller: &Caller) -> String {
    match caller {
        Caller::Open => "anonymous".to_string(),
        Caller::Key(k) => k.name.clone(),
    }
}

/// Longest session id kept, in bytes.
const MAX_SESSION: usize = 128;

/// Claude Code's `x-claude-code-session-id` (a UUID), recorded in the ledger as `session`. It is
/// an identifier, never content: one of at most 128 letters, digits, `-`, `_`, `.` and `:` is
/// kept, anything else dropped whole (a cleaned value would be another id).
fn session(headers: &tiny_http::HeaderList) -> Option<String> {
    let v = headers.get("x-claude-code-session-id")?;
    let v = v.trim();
    let plain = |b: u8| b.is_ascii_alphanumeric() || b"-_.:".contains(&b);
    (!v.is_empty() && v.len() <= MAX_SESSION && v.bytes().all(plain)).then(|| v.to_string())
}

/// Keys with `trustUserHeaders` may name the user (a header or the body's `user`).
fn trusted(caller: &Caller) -> bool {
    matches!(caller, Caller::Key(k) if k.trust_user_headers)
}

/// Who may name the user in the body: a trusted key, or anyone when no keys are configured
/// (nothing is authenticated then, so there is no key identity to count under).
fn names_users(caller: &Caller) -> bool {
    matches!(caller, Caller::Open) || trusted(caller)
}

/// The id without control characters, or a 400 naming `what` when it is longer than
/// `MAX_USER` characters.
fn checked(s: String, what: &str, param: Option<&'static str>) -> Result<String, ApiError> {
    let clean: String = s.chars().filter(|c| !c.is_control()).collect();
    if clean.chars().count() > MAX_USER {
        let mut e =
            ApiError::invalid_request(format!("{} is longer than {} characters.", what, MAX_USER))
                .with_code("user_too_long");
        e.param = param;
        return Err(e);
    }
    Ok(clean)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::identity::auth::ProxyKey;

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

    fn list(pairs: &[(String, String)]) -> tiny_http::HeaderList {
        tiny_http::HeaderList::from_pairs(pairs.iter().map(|(n, v)| (n.as_str(), v.as_str())))
    }

    #[test]
    fn first_match_wins() {
        let secret = Secret("k".into());
        let now = 1_800_000_000;
        let token = super::jwt::tests::sign(
            r#"{"alg":"HS256"}"#,
            r#"{"sub":"jwt-user","iss":"open-webui","exp":1800000300}"#,
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
            // An untrusted key's body user is only a label: the key is the user.
            (
                &plain,
                Caller::Key(&untrusted),
                Some("body"),
                None,
                "other",
                "other",
            ),
            (
                &[],
                Caller::Key(&trusted),
                Some("body"),
                None,
                "body",
                "owui",
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
                headers: &list(headers),
                caller: &caller,
                body_user: body_user.map(str::to_string),
            };
            let jwt = secret.map(|s| (s, jwt::Expect::default()));
            let id = identify(&asking, jwt, now).unwrap();
            let label = (key == "other" && body_user.is_some()).then(|| "body".to_string());
            assert_eq!(id.label, label, "case {}", i);
            assert_eq!(
                (id.user.as_str(), id.key.as_str()),
                (user, key),
                "case {}",
                i
            );
        }
    }

    #[test]
    fn session_ids_are_kept_only_when_they_look_like_identifiers() {
        let cases = [
            (
                "0b6c1f5e-7d1a-4c39-9a57-3f0b2a4d9e11",
                Some("0b6c1f5e-7d1a-4c39-9a57-3f0b2a4d9e11"),
            ),
            (" sess_1.a:b ", Some("sess_1.a:b")),
            ("", None),
            ("has space", None),
            ("quote\"", None),
            ("caf\u{e9}", None),
            ("line\nbreak", None),
        ];
        for (v, want) in cases {
            let headers = h(&[("X-Claude-Code-Session-Id", v)]);
            assert_eq!(super::session(&list(&headers)).as_deref(), want, "{:?}", v);
        }
        let long = "a".repeat(129);
        assert_eq!(
            super::session(&list(&h(&[("x-claude-code-session-id", &long)]))),
            None
        );
        let max = "a".repeat(128);
        assert_eq!(
            super::session(&list(&h(&[("x-claude-code-session-id", &max)]))),
            Some(max)
        );
        assert_eq!(super::session(&list(&h(&[("x-other", "s")]))), None);
    }

    #[test]
    fn a_bad_token_is_a_401() {
        let headers = h(&[("X-OpenWebUI-User-Jwt", "a.b.c")]);
        let asking = Asking {
            headers: &list(&headers),
            caller: &Caller::Open,
            body_user: None,
        };
        let secret = Secret("k".into());
        let e = identify(&asking, Some((&secret, jwt::Expect::default())), 0).unwrap_err();
        assert_eq!((e.status, e.code), (401, Some("invalid_user_token")));
    }

    #[test]
    fn ids_over_128_characters_are_refused_not_cut() {
        let trusted = key("owui", true);
        let untrusted = key("other", false);
        let long = "é".repeat(129);
        let max = "é".repeat(128);
        let run = |headers: &[(String, String)], caller: &Caller, body: Option<&str>| {
            let asking = Asking {
                headers: &list(headers),
                caller,
                body_user: body.map(str::to_string),
            };
            identify(&asking, None, 0)
        };
        let ok = run(&[], &Caller::Key(&trusted), Some(&max)).unwrap();
        assert_eq!(ok.user, max, "128 characters (256 bytes) are kept whole");
        for (headers, caller, body) in [
            (vec![], Caller::Key(&trusted), Some(long.as_str())),
            (vec![], Caller::Key(&untrusted), Some(long.as_str())),
            (vec![], Caller::Open, Some(long.as_str())),
            (
                h(&[("X-OpenWebUI-User-Id", &long)]),
                Caller::Key(&trusted),
                None,
            ),
        ] {
            let e = run(&headers, &caller, body).unwrap_err();
            assert_eq!((e.status, e.code), (400, Some("user_too_long")), "{:?}", e);
        }
        // An untrusted key's over-long header is not an id at all: ignored, not refused.
        let id = run(
            &h(&[("X-OpenWebUI-User-Id", &long)]),
            &Caller::Key(&untrusted),
            None,
        );
        assert_eq!(id.unwrap().user, "other");
    }
}
