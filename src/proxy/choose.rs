//! Which model a request names and in which order its models are tried: pure functions of the
//! request's parts and the config.

use crate::config::Config;
use crate::http::api_error::{clip, ApiError};

/// Every place a request can name its model, each already read.
#[derive(Debug, Default)]
pub struct Named {
    /// The route is `/chat/completions`: only the JSON body's `model` counts.
    pub chat: bool,
    /// An `X-Model-Id` header.
    pub header: Option<String>,
    /// A `model` query parameter.
    pub query: Option<String>,
    /// The JSON body's `model`; `Err` for a `model` that is not a string.
    pub json: Option<Result<Option<String>, ApiError>>,
    /// A multipart `model` form field.
    pub multipart: Option<String>,
    /// The config's `defaultModel`.
    pub default: Option<String>,
}

/// The model a request names, in the original proxy's order: header, query, JSON body, then
/// multipart, then the config's default. Chat completions take only the body's `model`.
pub fn model_name(named: Named, path: &str) -> Result<String, ApiError> {
    let missing = |message: String| {
        ApiError::invalid_request(message)
            .with_param("model")
            .with_code("missing_required_parameter")
    };
    if named.chat {
        return named
            .json
            .unwrap_or(Ok(None))?
            .ok_or_else(|| missing("Missing required parameter: `model`.".to_string()));
    }
    let non_empty = |s: Option<String>| s.filter(|s| !s.is_empty());
    if let Some(m) = non_empty(named.header).or_else(|| non_empty(named.query)) {
        return Ok(m);
    }
    if let Some(m) = named.json.transpose()?.flatten() {
        return Ok(m);
    }
    named
        .multipart
        .or(named.default)
        .ok_or_else(|| missing(no_model_message(path)))
}

/// Why a request that names no model is refused, and how to name one.
fn no_model_message(path: &str) -> String {
    // A stored response lives on the backend that created it, and these requests have no body
    // to name it in.
    if path.starts_with("/responses/") {
        return format!(
            "{} carries no model: name the model that created the response with an `X-Model-Id` header or a `?model=` query parameter.",
            clip(path, 200)
        );
    }
    format!(
        "No model named for {}: send it as the JSON body's `model`, a `model` form field, a `model` query parameter or an `X-Model-Id` header.",
        clip(path, 200)
    )
}

/// The models to try for model `index`, in order: itself, then each of its fallbacks that is
/// configured (once each).
pub fn model_order(config: &Config, index: usize) -> Vec<usize> {
    let mut order = vec![index];
    for f in &config.endpoints[index].fallbacks {
        if let Some(i) = config.endpoints.iter().position(|e| &e.id == f) {
            if !order.contains(&i) {
                order.push(i);
            }
        }
    }
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &str) -> Option<String> {
        Some(v.to_string())
    }

    #[test]
    fn model_name_table() {
        let bad_type = || Some(Err(ApiError::invalid_request("model must be a string")));
        let cases: Vec<(Named, Result<&str, u16>)> = vec![
            (
                Named {
                    chat: true,
                    json: Some(Ok(s("a"))),
                    header: s("h"),
                    ..Named::default()
                },
                Ok("a"),
            ),
            (
                Named {
                    chat: true,
                    json: Some(Ok(None)),
                    ..Named::default()
                },
                Err(400),
            ),
            (
                Named {
                    chat: true,
                    default: s("d"),
                    ..Named::default()
                },
                Err(400),
            ),
            (
                Named {
                    chat: true,
                    json: bad_type(),
                    ..Named::default()
                },
                Err(400),
            ),
            (
                Named {
                    header: s("h"),
                    query: s("q"),
                    json: Some(Ok(s("j"))),
                    ..Named::default()
                },
                Ok("h"),
            ),
            (
                Named {
                    header: s(""),
                    query: s("q"),
                    json: Some(Ok(s("j"))),
                    ..Named::default()
                },
                Ok("q"),
            ),
            (
                Named {
                    json: Some(Ok(s("j"))),
                    multipart: s("f"),
                    ..Named::default()
                },
                Ok("j"),
            ),
            (
                Named {
                    json: Some(Ok(None)),
                    multipart: s("f"),
                    ..Named::default()
                },
                Ok("f"),
            ),
            (
                Named {
                    header: s("h"),
                    json: bad_type(),
                    ..Named::default()
                },
                Ok("h"),
            ),
            (
                Named {
                    json: bad_type(),
                    multipart: s("f"),
                    ..Named::default()
                },
                Err(400),
            ),
            (
                Named {
                    default: s("d"),
                    ..Named::default()
                },
                Ok("d"),
            ),
            (Named::default(), Err(400)),
        ];
        for (i, (named, want)) in cases.into_iter().enumerate() {
            let got = model_name(named, "/x").map_err(|e| e.status);
            assert_eq!(got.as_deref().map_err(|e| *e), want, "case {}", i);
        }
    }

    #[test]
    fn a_stored_response_request_without_a_model_says_how_to_name_one() {
        let e = model_name(Named::default(), "/responses/resp_1/input_items").unwrap_err();
        assert_eq!(
            (e.status, e.code, e.param),
            (400, Some("missing_required_parameter"), Some("model"))
        );
        assert!(e.message.contains("X-Model-Id") && e.message.contains("?model="));
        let e = model_name(Named::default(), "/files/f").unwrap_err();
        assert!(e.message.contains("JSON body"));
    }

    #[test]
    fn model_order_table() {
        let text = r#"{"endpoints":{
            "a":{"url":"http://a","fallbacks":["b","c","b"]},
            "b":{"url":"http://b"},
            "c":{"url":"http://c","fallbacks":["a"]}}}"#;
        let c = crate::config::parse("c", text, &Default::default(), &|_| None).unwrap();
        let idx = |id: &str| c.endpoints.iter().position(|e| e.id == id).unwrap();
        let cases = [
            ("a", vec!["a", "b", "c"]),
            ("b", vec!["b"]),
            ("c", vec!["c", "a"]),
        ];
        for (model, want) in cases {
            let want: Vec<usize> = want.iter().map(|m| idx(m)).collect();
            assert_eq!(model_order(&c, idx(model)), want, "{}", model);
        }
    }
}
