//! Open WebUI's signed user token (`X-OpenWebUI-User-Jwt`): HS256 only, verified with the
//! operator's `openWebUI.jwtSecret`.

use ring::hmac;

/// Clock difference tolerated on `exp` and `iat`.
const LEEWAY_SECS: i64 = 60;

/// The claims modelmux uses from a verified token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claims {
    /// `sub`: Open WebUI's user id.
    pub sub: String,
    /// `email`, when present.
    pub email: Option<String>,
}

/// Verifies `token` (compact JWS) and returns its claims; the error says why, without echoing
/// the token.
pub fn verify(token: &str, secret: &[u8], now_secs: i64) -> Result<Claims, &'static str> {
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
    let num = |k: &str| claims.get(k).and_then(|v| v.as_i64());
    if let Some(exp) = num("exp") {
        if now_secs > exp + LEEWAY_SECS {
            return Err("the token has expired");
        }
    }
    if let Some(iat) = num("iat") {
        if iat > now_secs + LEEWAY_SECS {
            return Err("the token was issued in the future");
        }
    }
    if let Some(iss) = claims.get("iss") {
        if iss.as_str() != Some("open-webui") {
            return Err("the token was not issued by open-webui");
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
            verify(&good, b"s3cret", now),
            Ok(Claims {
                sub: "u-1".into(),
                email: Some("a@b.c".into())
            })
        );
        assert_eq!(
            verify(&good, b"other", now),
            Err("the signature does not match")
        );
        assert_eq!(
            verify(&good, b"s3cret", now + 400),
            Err("the token has expired")
        );
        assert!(verify(&good, b"s3cret", now + 350).is_ok(), "leeway");
        let none = format!(
            "{}.",
            sign(r#"{"alg":"none"}"#, &claims, b"")
                .rsplit_once('.')
                .unwrap()
                .0
        );
        assert_eq!(
            verify(&none, b"s3cret", now),
            Err("the token is not signed with HS256")
        );
        let hs512 = sign(r#"{"alg":"HS512"}"#, &claims, b"s3cret");
        assert!(verify(&hs512, b"s3cret", now).is_err());
        let mut tampered = good.clone();
        tampered.insert(good.find('.').unwrap() + 3, 'A');
        assert!(verify(&tampered, b"s3cret", now).is_err());
        assert!(verify("a.b", b"s3cret", now).is_err());
        let other_iss = sign(HS, r#"{"sub":"u","iss":"someone"}"#, b"k");
        assert!(verify(&other_iss, b"k", now).is_err());
        let no_sub = sign(HS, r#"{"email":"x"}"#, b"k");
        assert!(verify(&no_sub, b"k", now).is_err());
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
