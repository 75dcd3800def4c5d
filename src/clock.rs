//! UTC calendar arithmetic without a date crate: RFC 3339 timestamps for the ledger and the
//! `YYYY-MM-DD` dates `/usage` and `modelmux usage` take.

use std::time::{SystemTime, UNIX_EPOCH};

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
pub fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = i64::from((m + 9) % 12);
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date of a day number from `days_from_civil`.
pub fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// Milliseconds since the Unix epoch now.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// `2026-11-27T05:15:02.123Z` for milliseconds since the epoch.
pub fn rfc3339(ms: i64) -> String {
    stamp(ms).as_str().to_string()
}

/// An RFC 3339 time held on the stack: the ledger writes one per line, and a `String` each was
/// an allocation per request.
pub struct Stamp {
    buf: [u8; 40],
    len: usize,
}

impl Stamp {
    /// The text, as `rfc3339` writes it.
    pub fn as_str(&self) -> &str {
        // Only ASCII digits and separators are ever written.
        std::str::from_utf8(&self.buf[..self.len]).unwrap_or_default()
    }
}

/// `rfc3339(ms)` without an allocation, its digits written by hand (the ledger writes one per
/// line; the formatting machinery cost more than the rest of the line).
pub fn stamp(ms: i64) -> Stamp {
    // The text up to the second is the same for every line written in that second: kept per
    // thread (the years of four digits, whose text is 20 bytes), only the milliseconds written.
    thread_local! {
        static SECOND: std::cell::Cell<(i64, [u8; 20])> =
            const { std::cell::Cell::new((i64::MIN, [0; 20])) };
    }
    let secs = ms.div_euclid(1000);
    let mut buf = [0u8; 40];
    let cached = SECOND.with(|c| Some(c.get()).filter(|(s, _)| *s == secs));
    let len = match cached {
        Some((_, text)) => {
            buf[..20].copy_from_slice(&text);
            20
        }
        None => {
            let len = to_second(&mut buf, secs);
            if len == 20 && secs != i64::MIN {
                let mut text = [0u8; 20];
                text.copy_from_slice(&buf[..20]);
                SECOND.with(|c| c.set((secs, text)));
            }
            len
        }
    };
    let len = digits(&mut buf, len, ms.rem_euclid(1000) as u64, 3);
    buf[len] = b'Z';
    Stamp { buf, len: len + 1 }
}

/// Writes `secs` as `YYYY-MM-DDTHH:MM:SS.` at the start of `buf`; returns the end.
fn to_second(buf: &mut [u8; 40], secs: i64) -> usize {
    let (y, m, d) = civil_from_days(secs.div_euclid(86_400));
    let rem = secs.rem_euclid(86_400);
    let mut len = 0;
    if (0..10_000).contains(&y) {
        len = digits(buf, len, y as u64, 4);
    } else {
        // Years `{:04}` writes otherwise (a sign, or more digits): rare enough for `write!`.
        use std::io::Write as _;
        let mut cur = &mut buf[..];
        let _ = write!(cur, "{:04}", y);
        len = 40 - cur.len();
    }
    for (sep, v) in [
        (b'-', u64::from(m)),
        (b'-', u64::from(d)),
        (b'T', (rem / 3600) as u64),
        (b':', (rem % 3600 / 60) as u64),
        (b':', (rem % 60) as u64),
    ] {
        buf[len] = sep;
        len = digits(buf, len + 1, v, 2);
    }
    buf[len] = b'.';
    len + 1
}

/// Writes `v` (below 10^width) zero-padded to `width` digits at `at`; returns the end.
fn digits(buf: &mut [u8; 40], at: usize, mut v: u64, width: usize) -> usize {
    for i in (at..at + width).rev() {
        buf[i] = b'0' + (v % 10) as u8;
        v /= 10;
    }
    at + width
}

/// Seconds since the epoch of an RFC 3339 UTC time as the ledger writes it
/// (`2026-11-27T05:15:02.123Z`).
pub fn parse_rfc3339_secs(s: &str) -> Option<i64> {
    let day = parse_day(s)?;
    let t = s.get(11..19)?.as_bytes();
    if t[2] != b':' || t[5] != b':' {
        return None;
    }
    let n = |a: usize| -> Option<i64> { std::str::from_utf8(&t[a..a + 2]).ok()?.parse().ok() };
    Some(day * 86_400 + n(0)? * 3600 + n(3)? * 60 + n(6)?)
}

/// Seconds from now until an HTTP date (`Sun, 06 Nov 1994 08:49:37 GMT`), 0 if past.
pub fn secs_until_http_date(s: &str, now_secs: i64) -> Option<u64> {
    let mut p = s.split_whitespace();
    let (_, d, m, y, hms) = (p.next()?, p.next()?, p.next()?, p.next()?, p.next()?);
    let month = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ]
    .iter()
    .position(|x| *x == m)? as u32
        + 1;
    let mut t = hms.split(':').map(|x| x.parse::<i64>().ok());
    let (h, mi, se) = (t.next()??, t.next()??, t.next()??);
    let at =
        days_from_civil(y.parse().ok()?, month, d.parse().ok()?) * 86_400 + h * 3600 + mi * 60 + se;
    Some(u64::try_from(at - now_secs).unwrap_or(0))
}

/// The day number of a `YYYY-MM-DD` date, or of the date part of an RFC 3339 timestamp.
pub fn parse_day(s: &str) -> Option<i64> {
    let date = s.get(..10)?;
    let rest = &s[10..];
    if !(rest.is_empty() || rest.starts_with('T') || rest.starts_with(' ')) {
        return None;
    }
    let b = date.as_bytes();
    if b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    let y: i64 = date[..4].parse().ok()?;
    let m: u32 = date[5..7].parse().ok()?;
    let d: u32 = date[8..10].parse().ok()?;
    if !(1..=12).contains(&m) || d == 0 || d > days_in_month(y, m) {
        return None;
    }
    Some(days_from_civil(y, m, d))
}

fn days_in_month(y: i64, m: u32) -> u32 {
    match m {
        4 | 6 | 9 | 11 => 30,
        2 if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        2 => 28,
        _ => 31,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The hand-written digits are what `format!` wrote, years outside 0..=9999 included.
    #[test]
    fn stamps_are_written_as_format_wrote_them() {
        let reference = |ms: i64| {
            let secs = ms.div_euclid(1000);
            let (y, m, d) = civil_from_days(secs.div_euclid(86_400));
            let rem = secs.rem_euclid(86_400);
            format!(
                "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
                y,
                m,
                d,
                rem / 3600,
                rem % 3600 / 60,
                rem % 60,
                ms.rem_euclid(1000)
            )
        };
        for ms in [
            0,
            1,
            -1,
            999,
            1_795_324_502_123,
            86_399_999,
            253_402_300_799_999,
            253_402_300_800_000,
            -62_167_219_200_001,
            i64::MAX,
            i64::MIN,
        ] {
            assert_eq!(stamp(ms).as_str(), reference(ms), "{}", ms);
        }
        // The same second again (its text kept), the next, a far one and back, and seconds
        // whose years are not four digits between them.
        for ms in [
            1_795_324_502_000,
            1_795_324_502_999,
            1_795_324_503_000,
            1_795_324_502_500,
            -1_000,
            -999,
            1_795_324_503_001,
            253_402_300_800_000,
            253_402_300_800_001,
            i64::MIN,
            i64::MIN + 1,
            0,
            999,
        ] {
            assert_eq!(stamp(ms).as_str(), reference(ms), "{}", ms);
        }
    }

    #[test]
    fn calendar() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        for (y, m, d) in [
            (2024, 2, 29),
            (2026, 12, 31),
            (2027, 1, 1),
            (2000, 3, 1),
            (1969, 12, 31),
        ] {
            assert_eq!(civil_from_days(days_from_civil(y, m, d)), (y, m, d));
        }
        assert_eq!(rfc3339(1_795_324_502_123), "2026-11-22T05:15:02.123Z");
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(parse_day("2026-11-01"), Some(days_from_civil(2026, 11, 1)));
        assert_eq!(
            parse_rfc3339_secs(&rfc3339(1_795_324_502_123)),
            Some(1_795_324_502)
        );
        let now = 784_111_777; // Sun, 06 Nov 1994 08:49:37 GMT
        assert_eq!(
            secs_until_http_date("Sun, 06 Nov 1994 08:50:07 GMT", now),
            Some(30)
        );
        assert_eq!(
            secs_until_http_date("Sun, 06 Nov 1994 08:00:00 GMT", now),
            Some(0)
        );
        assert_eq!(secs_until_http_date("tomorrow", now), None);
        assert_eq!(
            parse_day("2026-11-01T10:00:00Z"),
            Some(days_from_civil(2026, 11, 1))
        );
        for bad in [
            "2026-02-29",
            "2026-13-01",
            "2026/11/01",
            "26-11-01",
            "2026-11-01x",
            "",
        ] {
            assert_eq!(parse_day(bad), None, "{}", bad);
        }
    }
}
