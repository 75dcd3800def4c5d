//! Unsigned integers in decimal digits, as `{}` writes them, without the formatting machinery:
//! the ledger line, the `x-ratelimit-*` values and translated stream events write one or more
//! per request or chunk.

/// `v`'s digits, written at the end of `buf` (20 bytes hold every `u64`).
pub fn digits(mut v: u64, buf: &mut [u8; 20]) -> &str {
    let mut at = buf.len();
    loop {
        at -= 1;
        buf[at] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    // ASCII digits only: never the default.
    std::str::from_utf8(&buf[at..]).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    #[test]
    fn digits_read_as_format_wrote_them() {
        for v in [0, 1, 9, 10, 99, 100, 12_345, u32::MAX as u64, u64::MAX] {
            assert_eq!(super::digits(v, &mut [0u8; 20]), v.to_string());
        }
    }
}
