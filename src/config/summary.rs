//! The `--check-config` report: every model, each of its backends with its weight, and its
//! fallbacks; URLs without credentials and keys only as set or not.

use super::{Backend, Config, Endpoint};
use crate::redact;

/// The report for a valid config loaded from `path`, warnings first, one line each.
pub fn summary(path: &str, config: &Config) -> String {
    let mut out = String::new();
    for w in &config.warnings {
        out.push_str(&format!("warning: {}\n", w));
    }
    out.push_str(&format!(
        "{}: OK, {}\n",
        path,
        count(config.endpoints.len(), "model", "models")
    ));
    for e in &config.endpoints {
        out.push_str(&endpoint_line(e));
        for b in &e.backends {
            out.push_str(&backend_line(e, b));
        }
    }
    out
}

fn endpoint_line(e: &Endpoint) -> String {
    let fallbacks = if e.fallbacks.is_empty() {
        String::new()
    } else {
        format!(", then fallbacks {}", e.fallbacks.join(", "))
    };
    let wildcard = match &e.wildcard {
        Some(w) if w.discover => format!(", discovers models every {} s", w.interval.as_secs_f64()),
        Some(w) => format!(", serves every id starting with \"{}\"", w.prefix),
        None => String::new(),
    };
    let probe = match e.probe_interval {
        Some(d) => format!(", health probe every {} s", d.as_secs_f64()),
        None => String::new(),
    };
    format!(
        "  {} ({}): {}{}{}{}\n",
        e.id,
        e.display_name,
        count(e.backends.len(), "backend", "backends"),
        wildcard,
        probe,
        fallbacks
    )
}

fn backend_line(e: &Endpoint, b: &Backend) -> String {
    let model = match &e.wildcard {
        Some(w) => format!("<the id after \"{}\">", w.prefix),
        None => b.actual_model_name.clone(),
    };
    let via = match &b.via_proxy {
        Some(p) => format!(", via proxy {}", redact::url(p)),
        None => String::new(),
    };
    format!(
        "    {} as {}, weight {}, {}{}\n",
        redact::url(&b.url),
        model,
        b.weight,
        if b.api_key.is_empty() {
            "no key"
        } else {
            "key set"
        },
        via
    )
}

/// "1 model", "2 models".
fn count(n: usize, one: &str, many: &str) -> String {
    format!("{} {}", n, if n == 1 { one } else { many })
}

#[cfg(test)]
mod tests {
    use super::summary;
    use crate::config::{parse, Defaults};

    #[test]
    fn every_backend_with_weight_key_status_and_fallbacks() {
        let env = |name: &str| (name == "HTTPS_PROXY").then(|| "http://u:p@proxy:3128".to_string());
        let text = r#"{"endpoints":{
            "big":{"displayName":"Big","apiKey":"sk-secret-inherited-0000","actualModelName":"big-real",
                   "backends":[{"url":"http://a:1","weight":2},
                               {"url":"https://user:pw@b:2/v1","apiKey":"","actualModelName":"big-b"}],
                   "fallbacks":["small"]},
            "small":{"url":"http://c:3","insecureSkipVerify":true}}}"#;
        let config = parse("c.json", text, &Defaults::default(), &env).unwrap();
        assert_eq!(
            summary("c.json", &config),
            "warning: c.json: endpoints.small: insecureSkipVerify is on: the backend's TLS certificate is NOT verified\n\
             c.json: OK, 2 models\n\
             \x20 big (Big): 2 backends, then fallbacks small\n\
             \x20   http://a:1 as big-real, weight 2, key set\n\
             \x20   https://****@b:2/v1 as big-b, weight 1, no key, via proxy http://****@proxy:3128\n\
             \x20 small (small): 1 backend\n\
             \x20   http://c:3 as small, weight 1, no key\n"
        );
        let one = parse(
            "c.json",
            r#"{"endpoints":{"m":{"url":"http://h"}}}"#,
            &Defaults::default(),
            &|_| None,
        )
        .unwrap();
        assert!(summary("c.json", &one).starts_with("c.json: OK, 1 model\n"));
        let wild = parse(
            "c.json",
            r#"{"endpoints":{"ollama/*":{"url":"http://o","discoverIntervalSecs":60,
                "health":{"probeIntervalSecs":15}}}}"#,
            &Defaults::default(),
            &|_| None,
        )
        .unwrap();
        assert!(summary("c.json", &wild).contains(
            "  ollama/* (ollama/*): 1 backend, discovers models every 60 s, health probe every 15 s\n"
        ));
    }
}
