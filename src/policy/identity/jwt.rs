//! Open WebUI's signed user token (`X-OpenWebUI-User-Jwt`): HS256 only, verified with the
//! operator's `openWebUI.jwtSecret`.

use ring::hmac;

/// Clock difference tolerated on `exp`, `nbf` and `iat`.
const LEEWAY_SECS: i64 = 60;

/// The claims modelmux uses from a verified token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claims {
    /// `sub`: Open WebUI's user id.
    pub sub: String,
    /// `email`, when present.
    pub email: Option<String>,
}

/// What a token must also say beyond a valid signature, from `openWebUI`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Expect<'a> {
    /// `jwtAudience`: `aud` must be, or (as an array) contain, this.
    pub audience: Option<&'a str>,
    /// `jwtIssuer`: `iss` must be this. Unset, a present `iss` must be `open-webui`.
    pub issuer: Option<&'a str>,
}

/// Verifies `token` (compact JWS) and returns its claims; the error says why, without echoing
/// the token.
pub fn verify(
    token: &str,
    secret: &[u8],
    expect: Expect,
    now_secs: i64,
) -> Result<Claims, &'static str> {
    let mut parts = token.trim().split('.');
    let (Some(h), Some(p), Some(sig), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err("not a signed token (expected three dot-separated parts)");
    };
    let header: serde_json::Value =
        serde_json::from_slice(&b64url(h).ok_or("the header is not base64url")?)
            .map_err(|_| "the header is not JSON")?;
    // Only HS256: a token naming `none` or another algorithm is refused before any check.
    if header.get("alg").and_then(|a| a.as_str()) != Some("HS256") {
        return Err("the token is not signed with HS256");
    }
    let sig = b64url(sig).ok_or("the signature is not base64url")?;
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
    let signed = &token.trim()[..h.len() + 1 + p.len()];
    hmac::verify(&key, signed.as_bytes(), &sig).map_err(|_| "the signature does not match")?;
    let claims: serde_json::Value =
        serde_json::from_slice(&b64url(p).ok_or("the claims are not base64url")?)
            .map_err(|_| "the claims are not JSON")?;
    // NumericDate (RFC 7519) is a JSON number, whole or not; a string or anything else is a
    // malformed token, not a claim to skip (a token that never expires is worth stealing).
    let time = |k: &str, bad: &'static str| -> Result<Option<f64>, &'static str> {
        match claims.get(k) {
            None => Ok(None),
            Some(v) => v.as_f64().map(Some).ok_or(bad),
        }
    };
    let now = now_secs as f64;
    let leeway = LEEWAY_SECS as f64;
    let exp =
        time("exp", "the expiry (exp) is not a number")?.ok_or("the token has no expiry (exp)")?;
    if now > exp + leeway {
        return Err("the token has expired");
    }
    if let Some(nbf) = time("nbf", "the start (nbf) is not a number")? {
        if nbf > now + leeway {
            return Err("the token is not valid yet (nbf)");
        }
    }
    if let Some(iat) = time("iat", "the issue time (iat) is not a number")? {
        if iat > now + leeway {
            return Err("the token was issued in the future");
        }
    }
    match (expect.issuer, claims.get("iss")) {
        (Some(want), iss) if iss.and_then(|v| v.as_str()) != Some(want) => {
            return Err("the token was not issued by the configured jwtIssuer");
        }
        (None, Some(iss)) if iss.as_str() != Some("open-webui") => {
            return Err("the token was not issued by open-webui");
        }
        _ => {}
    }
    if let Some(want) = expect.audience {
        let ok = match claims.get("aud") {
            Some(serde_json::Value::String(a)) => a == want,
            Some(serde_json::Value::Array(list)) => list.iter().any(|a| a.as_str() == Some(want)),
            _ => false,
        };
        if !ok {
            return Err("the token is not meant for this audience (aud)");
        }
    }
    let sub = claims
        .get("sub")
        .and_then(|v| v.as_str())
        .filter(|s| !s.is_empty())
        .ok_or("the token names no user (sub)")?;
    Ok(Claims {
        sub: sub.to_string(),
        email: claims
            .get("email")
            .and_then(|v| v.as_str())
            .map(str::to_string),
    })
}

/// Decodes unpadded base64url (RFC 4648 section 5); `None` for anything else.
fn b64url(s: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in s.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'-' => 62,
            b'_' => 63,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    // Leftover bits must be zero padding of the last character (at most 4 of them).
    (bits < 6 && acc & ((1 << bits) - 1) == 0).then_some(out)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn b64(data: &[u8]) -> String {
        const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let mut out = String::new();
        for chunk in data.chunks(3) {
            let n = chunk
                .iter()
                .enumerate()
                .fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
            for i in 0..=chunk.len() {
                out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
            }
        }
        out
    }

    /// A token as Open WebUI makes it.
    pub fn sign(header: &str, claims: &str, secret: &[u8]) -> String {
        let signed = format!("{}.{}", b64(header.as_bytes()), b64(claims.as_bytes()));
        let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
        let tag = hmac::sign(&key, signed.as_bytes());
        format!("{}.{}", signed, b64(tag.as_ref()))
    }

    const HS: &str = r#"{"alg":"HS256","typ":"JWT"}"#;
    const NONE: Expect = Expect {
        audience: None,
        issuer: None,
    };
    const NOW: i64 = 1_800_000_000;

    /// Verifies a token signed with `k` whose claims are `claims` at `NOW`.
    fn check(claims: &str, expect: Expect) -> Result<Claims, &'static str> {
        verify(&sign(HS, claims, b"k"), b"k", expect, NOW)
    }

    #[test]
    fn exp_is_required_and_a_number_whole_or_not() {
        let ok = |c: &str| check(c, NONE).map(|c| c.sub);
        assert_eq!(ok(r#"{"sub":"u"}"#), Err("the token has no expiry (exp)"));
        assert_eq!(
            ok(r#"{"sub":"u","exp":null}"#),
            Err("the expiry (exp) is not a number")
        );
        assert_eq!(
            ok(r#"{"sub":"u","exp":"1800000300"}"#),
            Err("the expiry (exp) is not a number")
        );
        assert_eq!(ok(r#"{"sub":"u","exp":1800000300}"#), Ok("u".into()));
        assert_eq!(ok(r#"{"sub":"u","exp":1800000000.5}"#), Ok("u".into()));
        // A float in the past expires like an integer (it used to never expire).
        assert_eq!(
            ok(r#"{"sub":"u","exp":1799990000.5}"#),
            Err("the token has expired")
        );
        assert_eq!(
            ok(r#"{"sub":"u","exp":1.7e9}"#),
            Err("the token has expired")
        );
        assert_eq!(
            ok(r#"{"sub":"u","exp":1800000300,"iat":"0"}"#),
            Err("the issue time (iat) is not a number")
        );
    }

    #[test]
    fn nbf_is_honoured_with_leeway() {
        let ok = |nbf: &str| {
            check(
                &format!(r#"{{"sub":"u","exp":1800000300,"nbf":{}}}"#, nbf),
                NONE,
            )
        };
        assert_eq!(ok("1800000100"), Err("the token is not valid yet (nbf)"));
        assert_eq!(ok("1800000060.5"), Err("the token is not valid yet (nbf)"));
        assert!(ok("1800000060").is_ok(), "60 s leeway");
        assert!(ok("1799999000").is_ok());
        assert_eq!(ok("\"1799999000\""), Err("the start (nbf) is not a number"));
    }

    #[test]
    fn aud_and_iss_are_checked_when_configured() {
        let aud = Expect {
            audience: Some("modelmux"),
            issuer: None,
        };
        let c = |extra: &str| format!(r#"{{"sub":"u","exp":1800000300{}}}"#, extra);
        let refused = Err("the token is not meant for this audience (aud)");
        assert!(check(&c(r#","aud":"modelmux""#), aud).is_ok());
        assert!(check(&c(r#","aud":["other","modelmux"]"#), aud).is_ok());
        assert_eq!(check(&c(r#","aud":"other""#), aud), refused);
        assert_eq!(check(&c(r#","aud":["other"]"#), aud), refused);
        assert_eq!(check(&c(r#","aud":1"#), aud), refused);
        assert_eq!(check(&c(""), aud), refused, "aud required once configured");
        // Not configured: aud is not looked at.
        assert!(check(&c(r#","aud":"other""#), NONE).is_ok());
        let iss = Expect {
            audience: None,
            issuer: Some("https://chat.example.org"),
        };
        assert!(check(&c(r#","iss":"https://chat.example.org""#), iss).is_ok());
        let wrong = Err("the token was not issued by the configured jwtIssuer");
        assert_eq!(check(&c(r#","iss":"open-webui""#), iss), wrong);
        assert_eq!(check(&c(""), iss), wrong, "iss required once configured");
        // Not configured: absent is fine, present must be open-webui.
        assert!(check(&c(""), NONE).is_ok());
        assert!(check(&c(r#","iss":"open-webui""#), NONE).is_ok());
        assert_eq!(
            check(&c(r#","iss":"someone""#), NONE),
            Err("the token was not issued by open-webui")
        );
    }

    #[test]
    fn verifies_hs256_and_refuses_the_rest() {
        let now = 1_800_000_000;
        let claims = format!(
            r#"{{"sub":"u-1","email":"a@b.c","name":"A","role":"user","iss":"open-webui","iat":{},"exp":{}}}"#,
            now - 10,
            now + 300
        );
        let good = sign(HS, &claims, b"s3cret");
        assert_eq!(
            verify(&good, b"s3cret", NONE, now),
            Ok(Claims {
                sub: "u-1".into(),
                email: Some("a@b.c".into())
            })
        );
        assert_eq!(
            verify(&good, b"other", NONE, now),
            Err("the signature does not match")
        );
        assert_eq!(
            verify(&good, b"s3cret", NONE, now + 400),
            Err("the token has expired")
        );
        assert!(verify(&good, b"s3cret", NONE, now + 350).is_ok(), "leeway");
        let none = format!(
            "{}.",
            sign(r#"{"alg":"none"}"#, &claims, b"")
                .rsplit_once('.')
                .unwrap()
                .0
        );
        assert_eq!(
            verify(&none, b"s3cret", NONE, now),
            Err("the token is not signed with HS256")
        );
        let hs512 = sign(r#"{"alg":"HS512"}"#, &claims, b"s3cret");
        assert!(verify(&hs512, b"s3cret", NONE, now).is_err());
        let mut tampered = good.clone();
        tampered.insert(good.find('.').unwrap() + 3, 'A');
        assert!(verify(&tampered, b"s3cret", NONE, now).is_err());
        assert!(verify("a.b", b"s3cret", NONE, now).is_err());
        let other_iss = sign(HS, r#"{"sub":"u","iss":"someone"}"#, b"k");
        assert!(verify(&other_iss, b"k", NONE, now).is_err());
        let no_sub = sign(HS, r#"{"email":"x"}"#, b"k");
        assert!(verify(&no_sub, b"k", NONE, now).is_err());
    }

    #[test]
    fn base64url() {
        for data in [&b""[..], b"f", b"fo", b"foo", b"foob", b"\xff\xfe\x00"] {
            assert_eq!(b64url(&b64(data)).as_deref(), Some(data));
        }
        assert_eq!(b64url("Zg=="), None);
        assert_eq!(b64url("Zh"), None, "non-zero padding bits");
    }
}
