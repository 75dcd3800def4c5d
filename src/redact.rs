//! Keeps secrets out of logs, errors and `/debug`.

/// Masks an API key: keys shorter than 12 characters show nothing, longer ones their last 4.
pub fn api_key(key: &str) -> String {
    if key.is_empty() {
        return String::new();
    }
    let chars: Vec<char> = key.chars().collect();
    if chars.len() < 12 {
        return "****".to_string();
    }
    let tail: String = chars[chars.len() - 4..].iter().collect();
    format!("****{}", tail)
}

/// Removes `user:password@` from a URL so credentials embedded in it are never shown.
pub fn url(url: &str) -> String {
    let (scheme, rest) = match url.find("://") {
        Some(i) => (&url[..i + 3], &url[i + 3..]),
        None => ("", url),
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{}****@{}", scheme, &rest[at + 1..]),
        None => url.to_string(),
    }
}

/// The host (and port) of a URL, for log lines.
pub fn host(url: &str) -> &str {
    let rest = url.find("://").map(|i| &url[i + 3..]).unwrap_or(url);
    let authority = &rest[..rest.find(['/', '?', '#']).unwrap_or(rest.len())];
    match authority.rfind('@') {
        Some(at) => &authority[at + 1..],
        None => authority,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn masks() {
        assert_eq!(super::api_key("short-key"), "****");
        assert_eq!(super::api_key("sk-1234567890abcd"), "****abcd");
        assert_eq!(super::api_key(""), "");
        assert_eq!(super::url("https://u:p@h:1/v1"), "https://****@h:1/v1");
        assert_eq!(super::host("https://u:p@h:1/v1"), "h:1");
    }
}
