//! Money as integer micro-units (millionths of a currency unit) and its one text form, a
//! decimal string with 6 decimals, shared by the ledger, `/usage`, the access log and
//! `/metrics`. Imports nothing: every layer may use it.

/// Micro-units in one unit of the currency.
pub const MICROS: u64 = 1_000_000;

/// Micro-units as the decimal string the ledger, `/usage` and the access log show: always 6
/// decimals, e.g. `"0.012345"`.
pub fn format(micros: u64) -> String {
    format!("{}.{:06}", micros / MICROS, micros % MICROS)
}

/// Reads `format`'s string back (also fewer decimals, e.g. `"1.5"`); `None` for anything else
/// (a sign, an exponent, more than 6 decimals).
pub fn parse(s: &str) -> Option<u64> {
    let (whole, frac) = s.split_once('.').unwrap_or((s, ""));
    let digits = |t: &str| t.bytes().all(|b| b.is_ascii_digit());
    if whole.is_empty() || frac.len() > 6 || !digits(whole) || !digits(frac) {
        return None;
    }
    let whole: u64 = whole.parse().ok()?;
    let frac: u64 = if frac.is_empty() {
        0
    } else {
        frac.parse::<u64>().ok()? * 10u64.pow(6 - frac.len() as u32)
    };
    whole.checked_mul(MICROS)?.checked_add(frac)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amounts_read_back_as_written() {
        for (m, s) in [
            (0, "0.000000"),
            (1, "0.000001"),
            (12_150, "0.012150"),
            (20_000_000, "20.000000"),
        ] {
            assert_eq!(format(m), s);
            assert_eq!(parse(s), Some(m));
        }
        assert_eq!(parse("1.5"), Some(1_500_000));
        assert_eq!(parse("20"), Some(20_000_000));
        for bad in ["", "-1", "1e3", "0.0000001", ".5", "1.2.3", "1,5", " 1"] {
            assert_eq!(parse(bad), None, "{}", bad);
        }
    }
}
