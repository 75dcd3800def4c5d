//! The exporter's settings, from the standard `OTEL_*` variables (read once at start).
//!
//! As the OpenTelemetry spec asks, a value that cannot be read is warned about and its default
//! used: traces are diagnostics, and a typo in them must not stop a gateway.

use std::time::Duration;

/// How a trace is chosen for recording.
#[derive(Debug, Clone, PartialEq)]
pub enum Sampler {
    AlwaysOn,
    AlwaysOff,
    /// A share of new traces, decided from the trace id (so every service agrees).
    Ratio(f64),
    /// Follow the caller's sampled flag; a new trace asks the inner sampler.
    ParentBased(Box<Sampler>),
}

impl Sampler {
    /// Whether to record a span of this trace: `parent` is the incoming sampled flag.
    pub fn sample(&self, trace_id: &[u8; 16], parent: Option<bool>) -> bool {
        match self {
            Sampler::AlwaysOn => true,
            Sampler::AlwaysOff => false,
            Sampler::Ratio(r) => {
                let mut low = [0u8; 8];
                low.copy_from_slice(&trace_id[8..]);
                // The spec's TraceIdRatioBased: the low 8 bytes against ratio * 2^64.
                (u64::from_be_bytes(low) as f64) < r * 18_446_744_073_709_551_616.0
            }
            Sampler::ParentBased(root) => match parent {
                Some(sampled) => sampled,
                None => root.sample(trace_id, None),
            },
        }
    }
}

/// Everything the exporter and the spans need.
#[derive(Debug, Clone)]
pub struct TraceConfig {
    /// The full URL spans are POSTed to.
    pub endpoint: String,
    /// Extra headers for the collector (often a key: never logged).
    pub headers: Vec<(String, String)>,
    /// Per-POST timeout.
    pub timeout: Duration,
    pub service_name: String,
    /// `OTEL_RESOURCE_ATTRIBUTES`, `service.name` excluded.
    pub resource: Vec<(String, String)>,
    pub sampler: Sampler,
    /// Spans waiting for export at most; more are dropped and counted.
    pub max_queue: usize,
    pub max_batch: usize,
    /// How long a span may wait for a batch to fill.
    pub delay: Duration,
    /// The user's identity on SERVER spans (personal data: an opt-in).
    pub users: bool,
}

/// The settings, or `None` when tracing is off (no endpoint, or `OTEL_SDK_DISABLED=true`),
/// and warnings about values that were ignored.
pub fn from_env(get: &dyn Fn(&str) -> Option<String>) -> (Option<TraceConfig>, Vec<String>) {
    let mut warnings = Vec::new();
    let get = |k: &str| {
        get(k)
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
    };
    if get("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true")) {
        return (None, warnings);
    }
    let endpoint = match (
        get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"),
        get("OTEL_EXPORTER_OTLP_ENDPOINT"),
    ) {
        (Some(e), _) => e,
        (None, Some(base)) => format!("{}/v1/traces", base.trim_end_matches('/')),
        (None, None) => return (None, warnings),
    };
    if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
        warnings.push(format!(
            "traces: the OTLP endpoint must be an http:// or https:// URL; tracing is off (got {})",
            crate::redact::host(&endpoint)
        ));
        return (None, warnings);
    }
    if let Some(p) =
        get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL").or(get("OTEL_EXPORTER_OTLP_PROTOCOL"))
    {
        if p != "http/json" {
            warnings.push(format!(
                "traces: OTLP protocol {} is not supported; sending http/json",
                p
            ));
        }
    }
    let headers = get("OTEL_EXPORTER_OTLP_TRACES_HEADERS")
        .or(get("OTEL_EXPORTER_OTLP_HEADERS"))
        .map(|h| parse_headers(&h, &mut warnings))
        .unwrap_or_default();
    // A whole number above 0 (`unit` names it in the warning).
    let mut number = |name: &str, unit: &str, default: u64| -> u64 {
        match get(name).map(|v| v.parse::<u64>()) {
            None => default,
            Some(Ok(n)) if n > 0 => n,
            Some(_) => {
                warnings.push(format!(
                    "traces: {} must be a whole number of {} above 0; using {}",
                    name, unit, default
                ));
                default
            }
        }
    };
    let timeout = Duration::from_millis(match get("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT") {
        Some(_) => number("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "milliseconds", 10_000),
        None => number("OTEL_EXPORTER_OTLP_TIMEOUT", "milliseconds", 10_000),
    });
    let delay = Duration::from_millis(number("OTEL_BSP_SCHEDULE_DELAY", "milliseconds", 5_000));
    // Bounded so a typo cannot make the queue a memory hog.
    let max_queue = number("OTEL_BSP_MAX_QUEUE_SIZE", "spans", 2048).min(1 << 16) as usize;
    let max_batch =
        (number("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "spans", 512) as usize).min(max_queue);
    let (service_name, resource) = resource(
        get("OTEL_SERVICE_NAME"),
        get("OTEL_RESOURCE_ATTRIBUTES"),
        &mut warnings,
    );
    let sampler = sampler(
        get("OTEL_TRACES_SAMPLER").as_deref(),
        get("OTEL_TRACES_SAMPLER_ARG").as_deref(),
        &mut warnings,
    );
    let users = trace_users(
        get("CM_OPEN_WEBUI_PROXY_TRACE_USERS").as_deref(),
        &mut warnings,
    );
    let config = TraceConfig {
        endpoint,
        headers,
        timeout,
        service_name,
        resource,
        sampler,
        max_queue,
        max_batch,
        delay,
        users,
    };
    (Some(config), warnings)
}

/// The service name (`OTEL_SERVICE_NAME` over the resource's `service.name`, default
/// `modelmux`) and the other resource attributes.
fn resource(
    service: Option<String>,
    attrs: Option<String>,
    warnings: &mut Vec<String>,
) -> (String, Vec<(String, String)>) {
    let mut resource = Vec::new();
    let mut service_name = None;
    if let Some(attrs) = attrs {
        for (k, v) in parse_pairs(&attrs, "OTEL_RESOURCE_ATTRIBUTES", warnings) {
            if k == "service.name" {
                service_name = Some(v);
            } else {
                resource.push((k, v));
            }
        }
    }
    let name = service
        .or(service_name)
        .unwrap_or_else(|| "modelmux".to_string());
    (name, resource)
}

/// Personal data: anything but a clear yes leaves users out of spans.
fn trace_users(v: Option<&str>, warnings: &mut Vec<String>) -> bool {
    match v {
        None | Some("false") | Some("0") => false,
        Some("true") | Some("1") => true,
        Some(_) => {
            warnings.push(
                "traces: CM_OPEN_WEBUI_PROXY_TRACE_USERS must be true or false; users are left out"
                    .to_string(),
            );
            false
        }
    }
}

fn sampler(name: Option<&str>, arg: Option<&str>, warnings: &mut Vec<String>) -> Sampler {
    let mut ratio = || match arg.map(str::parse::<f64>) {
        None => 1.0,
        Some(Ok(r)) if (0.0..=1.0).contains(&r) => r,
        Some(_) => {
            warnings.push(
                "traces: OTEL_TRACES_SAMPLER_ARG must be a ratio from 0 to 1; using 1".to_string(),
            );
            1.0
        }
    };
    match name.unwrap_or("parentbased_always_on") {
        "always_on" => Sampler::AlwaysOn,
        "always_off" => Sampler::AlwaysOff,
        "traceidratio" => Sampler::Ratio(ratio()),
        "parentbased_always_on" => Sampler::ParentBased(Box::new(Sampler::AlwaysOn)),
        "parentbased_always_off" => Sampler::ParentBased(Box::new(Sampler::AlwaysOff)),
        "parentbased_traceidratio" => Sampler::ParentBased(Box::new(Sampler::Ratio(ratio()))),
        other => {
            warnings.push(format!(
                "traces: OTEL_TRACES_SAMPLER {} is not supported; using parentbased_always_on",
                crate::http::api_error::clip(other, 40)
            ));
            Sampler::ParentBased(Box::new(Sampler::AlwaysOn))
        }
    }
}

/// `key=value,key2=value2` with percent-encoded values (the W3C Baggage format the spec uses).
fn parse_pairs(text: &str, what: &str, warnings: &mut Vec<String>) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for item in text.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        match item.split_once('=') {
            Some((k, v)) if !k.trim().is_empty() => out.push((
                k.trim().to_string(),
                crate::http::route::percent_decode_lossy(v.trim()),
            )),
            // The value may be a secret: name the variable, not the text.
            _ => warnings.push(format!(
                "traces: {} has an entry without key=value; ignored",
                what
            )),
        }
    }
    out
}

fn parse_headers(text: &str, warnings: &mut Vec<String>) -> Vec<(String, String)> {
    parse_pairs(text, "OTEL_EXPORTER_OTLP_HEADERS", warnings)
        .into_iter()
        .filter(|(k, v)| {
            let ok =
                crate::http::headers::is_valid_name(k) && crate::http::headers::is_valid_value(v);
            if !ok {
                warnings.push(
                    "traces: OTEL_EXPORTER_OTLP_HEADERS has a header HTTP cannot carry; ignored"
                        .to_string(),
                );
            }
            ok
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> (Option<TraceConfig>, Vec<String>) {
        let pairs: Vec<(String, String)> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        from_env(&move |k| pairs.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone()))
    }

    #[test]
    fn off_without_an_endpoint_or_when_disabled() {
        assert!(env(&[]).0.is_none());
        assert!(env(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
            ("OTEL_SDK_DISABLED", "true")
        ])
        .0
        .is_none());
    }

    #[test]
    fn endpoints_headers_resource_and_defaults() {
        let (c, w) = env(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318/"),
            ("OTEL_EXPORTER_OTLP_HEADERS", "x-key=a%20b, tenant=t1"),
            (
                "OTEL_RESOURCE_ATTRIBUTES",
                "deployment.environment=prod,service.name=gw",
            ),
        ]);
        let c = c.unwrap();
        assert!(w.is_empty(), "{:?}", w);
        assert_eq!(c.endpoint, "http://c:4318/v1/traces");
        assert_eq!(
            c.headers,
            [
                ("x-key".into(), "a b".into()),
                ("tenant".into(), "t1".into())
            ]
        );
        assert_eq!(c.service_name, "gw");
        assert_eq!(
            c.resource,
            [("deployment.environment".into(), "prod".into())]
        );
        assert_eq!(c.timeout, Duration::from_secs(10));
        assert_eq!((c.max_queue, c.max_batch), (2048, 512));
        assert_eq!(c.delay, Duration::from_secs(5));
        assert_eq!(c.sampler, Sampler::ParentBased(Box::new(Sampler::AlwaysOn)));
        let (c, _) = env(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://t:1/x"),
            ("OTEL_SERVICE_NAME", "svc"),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "250"),
            ("OTEL_TRACES_SAMPLER", "traceidratio"),
            ("OTEL_TRACES_SAMPLER_ARG", "0.25"),
        ]);
        let c = c.unwrap();
        assert_eq!(c.endpoint, "http://t:1/x");
        assert_eq!(c.service_name, "svc");
        assert_eq!(c.timeout, Duration::from_millis(250));
        assert_eq!(c.sampler, Sampler::Ratio(0.25));
    }

    #[test]
    fn bad_values_warn_and_default_without_echoing_secrets() {
        let (c, w) = env(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
            ("OTEL_EXPORTER_OTLP_HEADERS", "sk-secret-token"),
            ("OTEL_TRACES_SAMPLER", "jaeger_remote"),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "soon"),
        ]);
        let c = c.unwrap();
        assert_eq!(w.len(), 3, "{:?}", w);
        assert!(!w.join(" ").contains("sk-secret"));
        assert!(c.headers.is_empty());
        assert_eq!(c.timeout, Duration::from_secs(10));
        assert_eq!(c.sampler, Sampler::ParentBased(Box::new(Sampler::AlwaysOn)));
    }

    #[test]
    fn samplers() {
        let low = [0u8; 16];
        let mut high = [0u8; 16];
        high[8] = 0xff;
        assert!(Sampler::Ratio(0.5).sample(&low, None));
        assert!(!Sampler::Ratio(0.5).sample(&high, None));
        assert!(!Sampler::Ratio(0.0).sample(&low, None));
        let pb = Sampler::ParentBased(Box::new(Sampler::AlwaysOff));
        assert!(pb.sample(&low, Some(true)));
        assert!(!pb.sample(&low, None));
        let pb = Sampler::ParentBased(Box::new(Sampler::AlwaysOn));
        assert!(!pb.sample(&low, Some(false)));
        assert!(!Sampler::AlwaysOff.sample(&low, Some(true)));
    }
}
