//! The forward proxy for a backend, from `HTTPS_PROXY`, `HTTP_PROXY`, `ALL_PROXY` and `NO_PROXY`.

/// The forward proxy for a backend URL from the usual environment variables, honouring NO_PROXY
/// (`*`, exact hosts, and domain suffixes with or without a leading dot).
pub fn proxy_for(url: &str, env: &dyn Fn(&str) -> Option<String>) -> Option<String> {
    let get = |names: &[&str]| {
        names
            .iter()
            .find_map(|n| env(n).filter(|v| !v.trim().is_empty()))
    };
    let https = url.starts_with("https://");
    let proxy = if https {
        get(&["HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"])
    } else {
        get(&["HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"])
    }?;
    let authority = crate::redact::host(url);
    let host = match authority.rfind(':') {
        Some(i) if !authority.ends_with(']') => &authority[..i],
        _ => authority,
    }
    .trim_matches(['[', ']'])
    .to_ascii_lowercase();
    let no_proxy = get(&["NO_PROXY", "no_proxy"]).unwrap_or_default();
    if no_proxy.trim() == "*" {
        return None;
    }
    for entry in no_proxy.split(',').map(|e| e.trim().to_ascii_lowercase()) {
        let entry = entry
            .split(':')
            .next()
            .unwrap_or("")
            .trim_start_matches('*');
        if entry.is_empty() {
            continue;
        }
        let bare = entry.trim_start_matches('.');
        if host == bare || host.ends_with(&format!(".{}", bare)) {
            return None;
        }
    }
    Some(proxy)
}
