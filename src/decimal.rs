//! Unsigned integers in decimal digits, as `{}` writes them (and in hex, as `{:x}` does),
//! without the formatting machinery: the ledger line, the `x-ratelimit-*` values, translated
//! stream events, chunk size lines and request ids write one or more per request or chunk.

/// `v`'s decimal digits, written at the end of `buf` (20 bytes hold every `u64`), as bytes:
/// every caller writes bytes, so no UTF-8 check of what is ASCII. Two digits per division,
/// from a table: the ledger line and the `x-ratelimit-*` values write several numbers of up
/// to 16 digits per request.
pub fn bytes(mut v: u64, buf: &mut [u8; 20]) -> &[u8] {
    const PAIRS: &[u8; 200] = b"0001020304050607080910111213141516171819\
2021222324252627282930313233343536373839\
4041424344454647484950515253545556575859\
6061626364656667686970717273747576777879\
8081828384858687888990919293949596979899";
    let mut at = buf.len();
    while v >= 100 {
        let pair = (v % 100) as usize * 2;
        v /= 100;
        at -= 2;
        // Two stores, not a two-byte copy (a call at this opt-level).
        buf[at] = PAIRS[pair];
        buf[at + 1] = PAIRS[pair + 1];
    }
    if v >= 10 {
        let pair = v as usize * 2;
        at -= 2;
        buf[at] = PAIRS[pair];
        buf[at + 1] = PAIRS[pair + 1];
    } else {
        at -= 1;
        buf[at] = b'0' + v as u8;
    }
    &buf[at..]
}

/// `v`'s lowercase hex digits, as `{:x}` writes them, at the end of `buf` (16 bytes hold every
/// `u64`).
pub fn hex(mut v: u64, buf: &mut [u8; 16]) -> &[u8] {
    let mut at = buf.len();
    loop {
        at -= 1;
        buf[at] = b"0123456789abcdef"[(v & 15) as usize];
        v >>= 4;
        if v == 0 {
            break;
        }
    }
    &buf[at..]
}

#[cfg(test)]
mod tests {
    #[test]
    fn hex_digits_read_as_format_wrote_them() {
        for v in [
            0,
            1,
            9,
            10,
            15,
            16,
            255,
            4096,
            0xabcdef,
            u64::MAX >> 8,
            u64::MAX,
        ] {
            assert_eq!(super::hex(v, &mut [0u8; 16]), format!("{:x}", v).as_bytes());
        }
    }

    #[test]
    fn digits_read_as_format_wrote_them() {
        for v in [0, 1, 9, 10, 99, 100, 12_345, u32::MAX as u64, u64::MAX] {
            assert_eq!(super::bytes(v, &mut [0u8; 20]), v.to_string().as_bytes());
        }
        // Every length, and every two-digit pair at every place.
        let mut v = 0u64;
        for _ in 0..20 {
            for last in 0..100 {
                let n = v.saturating_add(last);
                assert_eq!(super::bytes(n, &mut [0u8; 20]), n.to_string().as_bytes());
            }
            v = v.saturating_mul(10).saturating_add(7);
        }
        for n in (0..100_000).chain(u64::MAX - 1000..=u64::MAX) {
            assert_eq!(super::bytes(n, &mut [0u8; 20]), n.to_string().as_bytes());
        }
    }
}
