//! W3C Trace Context: the `traceparent` header read and written, and fresh ids.

/// One span's place in a trace, as `traceparent` carries it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpanContext {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub sampled: bool,
}

/// Reads a `traceparent`; `None` for anything the W3C spec says to ignore (then a new trace
/// starts and the header is not forwarded).
pub fn parse_traceparent(v: &str) -> Option<SpanContext> {
    let v = v.trim_matches([' ', '\t']);
    let b = v.as_bytes();
    if b.len() < 55 || !v.is_ascii() {
        return None;
    }
    let version = hex_bytes::<1>(&v[0..2])?[0];
    // Version ff is invalid; 00 has exactly these fields; a later version may append more
    // after a dash, and its first four fields are read as 00's.
    if version == 0xff || (version == 0 && b.len() != 55) || (b.len() > 55 && b[55] != b'-') {
        return None;
    }
    if b[2] != b'-' || b[35] != b'-' || b[52] != b'-' {
        return None;
    }
    let trace_id = hex_bytes::<16>(&v[3..35])?;
    let span_id = hex_bytes::<8>(&v[36..52])?;
    let flags = hex_bytes::<1>(&v[53..55])?[0];
    if trace_id == [0; 16] || span_id == [0; 8] {
        return None;
    }
    Some(SpanContext {
        trace_id,
        span_id,
        sampled: flags & 1 == 1,
    })
}

/// The `traceparent` naming `ctx` as the parent.
pub fn format_traceparent(ctx: &SpanContext) -> String {
    format!(
        "00-{}-{}-{}",
        hex(&ctx.trace_id),
        hex(&ctx.span_id),
        if ctx.sampled { "01" } else { "00" }
    )
}

/// A `tracestate` worth forwarding: the spec's limit of 512 characters, printable ASCII.
pub fn valid_tracestate(v: &str) -> bool {
    v.len() <= 512 && v.bytes().all(|c| (0x20..0x7f).contains(&c))
}

/// Lowercase hex, as OTLP/JSON and `traceparent` write ids.
pub fn hex(b: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(b.len() * 2);
    for x in b {
        s.push(DIGITS[usize::from(x >> 4)] as char);
        s.push(DIGITS[usize::from(x & 15)] as char);
    }
    s
}

/// Exactly `N` bytes of lowercase hex (the spec forbids uppercase).
fn hex_bytes<const N: usize>(s: &str) -> Option<[u8; N]> {
    let b = s.as_bytes();
    if b.len() != N * 2 {
        return None;
    }
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    let mut out = [0u8; N];
    for (i, o) in out.iter_mut().enumerate() {
        *o = digit(b[2 * i])? << 4 | digit(b[2 * i + 1])?;
    }
    Some(out)
}

/// Random bytes, never all zero (an all-zero id is invalid).
pub fn random_id<const N: usize>() -> [u8; N] {
    use ring::rand::SecureRandom;
    let rng = ring::rand::SystemRandom::new();
    let mut out = [0u8; N];
    loop {
        if rng.fill(&mut out).is_err() {
            // No system randomness: a clock and counter mix is still unique enough for ids.
            fallback(&mut out);
        }
        if out != [0u8; N] {
            return out;
        }
    }
}

fn fallback(out: &mut [u8]) {
    use std::hash::{BuildHasher, Hasher};
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(1);
    for chunk in out.chunks_mut(8) {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0),
        );
        let v = h.finish().to_be_bytes();
        chunk.copy_from_slice(&v[..chunk.len()]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn round_trip() {
        let c = parse_traceparent(GOOD).unwrap();
        assert!(c.sampled);
        assert_eq!(hex(&c.span_id), "00f067aa0ba902b7");
        assert_eq!(format_traceparent(&c), GOOD);
        let c = parse_traceparent(&GOOD.replace("-01", "-00")).unwrap();
        assert!(!c.sampled);
        // A later version with more fields: the known ones are read.
        assert!(parse_traceparent(&format!("{}-extra", GOOD.replacen("00", "cc", 1))).is_some());
    }

    #[test]
    fn malformed_is_refused() {
        for bad in [
            "",
            "garbage",
            &GOOD.to_uppercase(),
            &GOOD.replacen("00", "ff", 1),
            &format!("{}-extra", GOOD),
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0g",
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-600f067aa0ba902b7-01",
        ] {
            assert!(parse_traceparent(bad).is_none(), "{}", bad);
        }
    }

    #[test]
    fn ids_are_random_and_not_zero() {
        let a = random_id::<16>();
        let b = random_id::<16>();
        assert_ne!(a, b);
        assert_ne!(a, [0; 16]);
        let mut f = [0u8; 16];
        fallback(&mut f);
        assert_ne!(f, [0; 16]);
    }
}
