//! The conversation key a request carries, for endpoints with `affinity`: the first of the
//! configured headers the request has, then the user it names. Only a hash of it leaves here.

use crate::backend::affinity::{key_hash, KeyHash};
use crate::config::{Affinity, Config};
use crate::policy::Identity;
use tiny_http::HeaderList;

/// For each model of `order`: the request's conversation key under that endpoint's `affinity`,
/// `None` where it is off or the request carries no key (then it is balanced as usual). Empty
/// when no model of `order` has `affinity`: nothing is allocated on the usual path.
pub fn keys(
    config: &Config,
    order: &[usize],
    headers: &HeaderList,
    identity: &Identity,
) -> Vec<Option<KeyHash>> {
    let on = |m: &usize| {
        config
            .endpoints
            .get(*m)
            .is_some_and(|e| e.affinity.is_some())
    };
    if !order.iter().any(on) {
        return Vec::new();
    }
    order
        .iter()
        .map(|m| {
            let affinity = config.endpoints.get(*m)?.affinity.as_ref()?;
            key(affinity, headers, identity).map(key_hash)
        })
        .collect()
}

/// The key itself, first found.
fn key<'a>(
    affinity: &Affinity,
    headers: &'a HeaderList,
    identity: &'a Identity,
) -> Option<&'a str> {
    let from_header = affinity.headers.iter().find_map(|name| {
        headers
            .iter()
            .find(|(n, v)| n.eq_ignore_ascii_case(name) && !v.trim().is_empty())
            .map(|(_, v)| v.trim())
    });
    from_header.or_else(|| affinity.by_user.then(|| named_user(identity)).flatten())
}

/// The user the request named (a signed token, a trusted user header or the body's `user`),
/// not the client key a request without one is counted under: every request of one key on one
/// backend would be no conversation's cache and all of that key's load.
fn named_user(identity: &Identity) -> Option<&str> {
    identity
        .label
        .as_deref()
        .or((identity.user != identity.key).then_some(identity.user.as_str()))
        .filter(|u| !u.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_table() {
        let h = |pairs: &[(&str, &str)]| HeaderList::from_pairs(pairs.iter().copied());
        let who = |user: &str, key: &str, label: Option<&str>| Identity {
            user: user.to_string(),
            key: key.to_string(),
            label: label.map(str::to_string),
            session: None,
        };
        let default = Affinity {
            headers: vec![
                "X-OpenWebUI-Chat-Id".to_string(),
                "X-Claude-Code-Session-Id".to_string(),
            ],
            by_user: true,
        };
        let no_user = Affinity {
            by_user: false,
            ..default.clone()
        };
        let anon = who("anonymous", "anonymous", None);
        let cases = [
            (&default, h(&[]), &anon, None),
            (
                &default,
                h(&[("x-openwebui-chat-id", " c1 ")]),
                &anon,
                Some("c1"),
            ),
            (
                &default,
                h(&[
                    ("X-Claude-Code-Session-Id", "s1"),
                    ("X-OpenWebUI-Chat-Id", "c1"),
                ]),
                &anon,
                Some("c1"),
            ),
            (&default, h(&[("X-OpenWebUI-Chat-Id", " ")]), &anon, None),
            (
                &default,
                h(&[("X-Claude-Code-Session-Id", "s1")]),
                &anon,
                Some("s1"),
            ),
            (&default, h(&[]), &who("ann", "owui", None), Some("ann")),
            (
                &default,
                h(&[("X-OpenWebUI-Chat-Id", "c1")]),
                &who("ann", "owui", None),
                Some("c1"),
            ),
            (
                &default,
                h(&[]),
                &who("other", "other", Some("bob")),
                Some("bob"),
            ),
            (&default, h(&[]), &who("app", "app", None), None),
            (&no_user, h(&[]), &who("ann", "owui", None), None),
            (
                &no_user,
                h(&[("X-Claude-Code-Session-Id", "s1")]),
                &anon,
                Some("s1"),
            ),
        ];
        for (i, (affinity, headers, identity, want)) in cases.into_iter().enumerate() {
            assert_eq!(key(affinity, &headers, identity), want, "case {}", i);
        }
    }
}
