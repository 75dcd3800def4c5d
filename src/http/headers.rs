//! Which headers cross the proxy: hop-by-hop and reserved names, the syntax HTTP allows, and
//! the filters applied to a client's request and a backend's response.

/// Headers never forwarded in either direction (RFC 9110 section 7.6.1 hop-by-hop, plus the
/// framing and `Host` that modelmux sets itself).
pub fn is_hop_by_hop(name: &str) -> bool {
    // Compared without lowercasing a copy: this runs for every header of every message.
    const NAMES: [&str; 10] = [
        "connection",
        "keep-alive",
        "transfer-encoding",
        "te",
        "trailer",
        "trailers",
        "upgrade",
        "host",
        "content-length",
        "http2-settings",
    ];
    NAMES.iter().any(|n| name.eq_ignore_ascii_case(n))
        || name
            .get(..6)
            .is_some_and(|p| p.eq_ignore_ascii_case("proxy-"))
}

/// Headers modelmux sets for the backend itself: a configured or forwarded one could
/// desynchronize the backend connection or replace the backend's key.
pub fn is_reserved(name: &str) -> bool {
    is_hop_by_hop(name)
        || name.eq_ignore_ascii_case("authorization")
        || name.eq_ignore_ascii_case("expect")
}

/// RFC 9110 section 5.1: a field name is a non-empty token.
pub fn is_valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// A field value modelmux sends: visible ASCII, spaces and tabs (what the HTTP client accepts).
pub fn is_valid_value(value: &str) -> bool {
    value
        .bytes()
        .all(|b| b == b' ' || b == b'\t' || (0x21..=0x7e).contains(&b))
}

/// The names a `Connection` header lists: hop-by-hop for this message only (RFC 9110 7.6.1).
/// Borrowed, and without the names dropped anyway (`keep-alive`): a message with the usual
/// `Connection: keep-alive` lists nothing, and nothing is allocated.
fn connection_listed<'a>(headers: impl Iterator<Item = (&'a str, &'a str)>) -> Vec<&'a str> {
    headers
        .filter(|(n, _)| n.eq_ignore_ascii_case("connection"))
        .flat_map(|(_, v)| v.split(','))
        .map(str::trim)
        .filter(|t| !t.is_empty() && !is_hop_by_hop(t))
        .collect()
}

fn owned<'a>(pairs: impl Iterator<Item = (&'a str, &'a str)>) -> Vec<(String, String)> {
    pairs.map(|(n, v)| (n.to_string(), v.to_string())).collect()
}

/// The end-to-end headers `keep` accepts, borrowed.
fn end_to_end_where<'a, I>(
    pairs: impl Fn() -> I,
    keep: impl Fn(&str) -> bool + Clone + 'a,
) -> impl Iterator<Item = (&'a str, &'a str)> + Clone
where
    I: Iterator<Item = (&'a str, &'a str)> + Clone,
{
    let listed = connection_listed(pairs());
    pairs().filter(move |(n, _)| {
        !is_hop_by_hop(n) && !listed.iter().any(|l| l.eq_ignore_ascii_case(n)) && keep(n)
    })
}

/// The end-to-end headers of a message, borrowed: not hop-by-hop, not named by its
/// `Connection` header.
pub fn end_to_end<'a, I>(pairs: impl Fn() -> I) -> impl Iterator<Item = (&'a str, &'a str)>
where
    I: Iterator<Item = (&'a str, &'a str)> + Clone,
{
    end_to_end_where(pairs, |_| true)
}

/// Seconds a `Retry-After` value asks for: delay-seconds or an HTTP date (RFC 9110 10.2.3).
pub fn retry_after_secs(value: &str, now_unix: i64) -> Option<u64> {
    let v = value.trim();
    if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) {
        return v.parse().ok();
    }
    crate::clock::secs_until_http_date(v, now_unix)
}

/// Open WebUI's user headers and signed user token: personal data.
pub fn is_user_identity(name: &str) -> bool {
    name.len() > 17 && name[..17].eq_ignore_ascii_case("x-openwebui-user-")
}

/// The client headers a backend may see: end-to-end ones minus the reserved, and minus Open
/// WebUI's user headers unless the endpoint forwards them.
///
/// On a streaming request `Accept-Encoding` is dropped too: a compressed event stream is
/// buffered by the compressor (tokens arrive late) and cannot carry keep-alive comments.
pub fn from_client(
    headers: &tiny_http::HeaderList,
    streaming: bool,
    forward_user: bool,
) -> Vec<(String, String)> {
    owned(from_client_pairs(headers, streaming, forward_user))
}

/// `from_client`, borrowed from the request's headers: for a caller that writes them out
/// without keeping copies.
pub fn from_client_pairs(
    headers: &tiny_http::HeaderList,
    streaming: bool,
    forward_user: bool,
) -> impl Iterator<Item = (&str, &str)> + Clone {
    // Dropped: reserved names, the client's key for modelmux Anthropic style (never the
    // backend's business), and the two that depend on the request and endpoint.
    let dropped = move |n: &str| {
        is_reserved(n)
            || n.eq_ignore_ascii_case("x-api-key")
            || (streaming && n.eq_ignore_ascii_case("accept-encoding"))
            || (!forward_user && is_user_identity(n))
    };
    end_to_end_where(|| headers.iter(), move |n| !dropped(n))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect()
    }

    fn list(pairs: &[(&str, &str)]) -> tiny_http::HeaderList {
        tiny_http::HeaderList::from_pairs(pairs.iter().copied())
    }

    #[test]
    fn connection_listed_headers_are_dropped() {
        let input = list(&[
            ("Connection", "Upgrade, HTTP2-Settings, X-Hop"),
            ("Upgrade", "h2c"),
            ("HTTP2-Settings", "AAMA"),
            ("X-Hop", "1"),
            ("X-Keep", "2"),
            ("Authorization", "Bearer client"),
            ("Accept-Encoding", "gzip"),
        ]);
        assert_eq!(
            from_client(&input, false, false),
            h(&[("X-Keep", "2"), ("Accept-Encoding", "gzip")])
        );
        assert_eq!(from_client(&input, true, false), h(&[("X-Keep", "2")]));
        let pairs = [
            ("X-OpenWebUI-User-Id", "u"),
            ("x-openwebui-user-jwt", "t"),
            ("X-OpenWebUI-Chat-Id", "c"),
        ];
        let user = list(&pairs);
        assert_eq!(
            from_client(&user, false, false),
            h(&[("X-OpenWebUI-Chat-Id", "c")])
        );
        assert_eq!(from_client(&user, false, true), h(&pairs));
    }

    #[test]
    fn syntax() {
        assert!(is_valid_name("X-Model-Id"));
        assert!(!is_valid_name("X Model"));
        assert!(!is_valid_name(""));
        assert!(is_valid_value("a b\tc"));
        assert!(!is_valid_value("caf\u{e9}"));
        assert!(!is_valid_value("a\u{1}"));
    }
}
