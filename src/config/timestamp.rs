//! RFC 3339 timestamps ("2026-11-22T12:00:00Z", "2026-11-22T13:00:00.5+01:00") to Unix epoch
//! milliseconds, by hand: the one date format the configuration takes (`approvedUntil`).

/// Parses `YYYY-MM-DDTHH:MM:SS[.frac](Z|+HH:MM|-HH:MM)` (RFC 3339 section 5.6; `t` and `z`
/// accepted as the RFC allows). Fractions below a millisecond are dropped. Refuses everything
/// else, including leap seconds (`:60`) and times before 1970.
pub fn parse_rfc3339_ms(text: &str) -> Option<u64> {
    let b = text.as_bytes();
    let digits = |from: usize, len: usize| -> Option<u64> {
        let part = b.get(from..from + len)?;
        part.iter().try_fold(0u64, |acc, c| {
            c.is_ascii_digit().then(|| acc * 10 + u64::from(c - b'0'))
        })
    };
    let sep = |at: usize, c: &[u8]| b.get(at).is_some_and(|x| c.contains(x));
    if !(sep(4, b"-") && sep(7, b"-") && sep(10, b"Tt") && sep(13, b":") && sep(16, b":")) {
        return None;
    }
    let (year, month, day) = (digits(0, 4)?, digits(5, 2)?, digits(8, 2)?);
    let (hour, minute, second) = (digits(11, 2)?, digits(14, 2)?, digits(17, 2)?);
    if !(1..=12).contains(&month) || day == 0 || day > days_in_month(year, month) {
        return None;
    }
    if hour > 23 || minute > 59 || second > 59 {
        return None;
    }
    let mut at = 19;
    let mut millis = 0;
    if sep(at, b".") {
        let len = b
            .get(at + 1..)?
            .iter()
            .take_while(|c| c.is_ascii_digit())
            .count();
        if len == 0 {
            return None;
        }
        // First three digits are milliseconds; pad "5" to "500".
        millis = digits(at + 1, len.min(3))? * 10u64.pow(3 - len.min(3) as u32);
        at += 1 + len;
    }
    let offset_min: i64 = match b.get(at..)? {
        [b'Z' | b'z'] => 0,
        [sign @ (b'+' | b'-'), _, _, b':', _, _] => {
            let (h, m) = (digits(at + 1, 2)?, digits(at + 4, 2)?);
            if h > 23 || m > 59 {
                return None;
            }
            let minutes = (h * 60 + m) as i64;
            if *sign == b'+' {
                minutes
            } else {
                -minutes
            }
        }
        _ => return None,
    };
    let days = days_from_civil(year as i64, month as i64, day as i64);
    let local_s = days * 86_400 + (hour * 3600 + minute * 60 + second) as i64;
    // Local time minus its offset is UTC.
    let utc_s = local_s - offset_min * 60;
    u64::try_from(utc_s).ok().map(|s| s * 1000 + millis)
}

fn is_leap(year: u64) -> bool {
    year.is_multiple_of(4) && (!year.is_multiple_of(100) || year.is_multiple_of(400))
}

fn days_in_month(year: u64, month: u64) -> u64 {
    match month {
        2 if is_leap(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's `days_from_civil`).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12; // March = 0
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_times_give_epoch_milliseconds() {
        assert_eq!(parse_rfc3339_ms("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(
            parse_rfc3339_ms("2026-11-22T12:00:00Z"),
            Some(1_795_348_800_000)
        );
        assert_eq!(
            parse_rfc3339_ms("2000-03-01T00:00:00Z"),
            Some(951_868_800_000)
        );
        assert_eq!(
            parse_rfc3339_ms("9999-12-31T23:59:59Z"),
            Some(253_402_300_799_000)
        );
        assert_eq!(
            parse_rfc3339_ms("2026-11-22t12:00:00z"),
            parse_rfc3339_ms("2026-11-22T12:00:00Z"),
            "the RFC allows lower-case t and z"
        );
    }

    #[test]
    fn fractions_keep_milliseconds() {
        let base = parse_rfc3339_ms("2026-11-22T12:00:00Z").unwrap();
        assert_eq!(parse_rfc3339_ms("2026-11-22T12:00:00.5Z"), Some(base + 500));
        assert_eq!(parse_rfc3339_ms("2026-11-22T12:00:00.000Z"), Some(base));
        assert_eq!(
            parse_rfc3339_ms("2026-11-22T12:00:00.123456789Z"),
            Some(base + 123)
        );
        assert_eq!(parse_rfc3339_ms("2026-11-22T12:00:00.Z"), None);
    }

    #[test]
    fn offsets_are_subtracted() {
        let utc = parse_rfc3339_ms("2026-11-22T12:00:00Z").unwrap();
        assert_eq!(parse_rfc3339_ms("2026-11-22T13:30:00+01:30"), Some(utc));
        assert_eq!(parse_rfc3339_ms("2026-11-22T07:00:00-05:00"), Some(utc));
        assert_eq!(parse_rfc3339_ms("2026-11-22T12:00:00-00:00"), Some(utc));
        // Across a day boundary.
        assert_eq!(parse_rfc3339_ms("2026-11-23T00:00:00+12:00"), Some(utc));
    }

    #[test]
    fn leap_days() {
        assert!(parse_rfc3339_ms("2024-02-29T00:00:00Z").is_some());
        assert!(
            parse_rfc3339_ms("2000-02-29T00:00:00Z").is_some(),
            "divisible by 400"
        );
        assert_eq!(parse_rfc3339_ms("2026-02-29T00:00:00Z"), None);
        assert_eq!(
            parse_rfc3339_ms("2100-02-29T00:00:00Z"),
            None,
            "divisible by 100"
        );
        assert_eq!(
            parse_rfc3339_ms("2024-03-01T00:00:00Z").unwrap()
                - parse_rfc3339_ms("2024-02-28T00:00:00Z").unwrap(),
            2 * 86_400_000
        );
    }

    #[test]
    fn refuses_everything_else() {
        for bad in [
            "",
            "2026-11-22",
            "2026-11-22T12:00:00",
            "2026-11-22 12:00:00Z",
            "2026-11-22T12:00Z",
            "2026-11-22T12:00:00UTC",
            "2026-11-22T12:00:00+0100",
            "2026-11-22T12:00:00+01",
            "2026-11-22T12:00:00+24:00",
            "2026-11-22T12:00:00+01:60",
            "2026-13-01T00:00:00Z",
            "2026-00-01T00:00:00Z",
            "2026-04-31T00:00:00Z",
            "2026-11-00T00:00:00Z",
            "2026-11-22T24:00:00Z",
            "2026-11-22T12:60:00Z",
            "2016-12-31T23:59:60Z",
            "+2026-11-22T12:00:00Z",
            "26-11-22T12:00:00Z",
            "2026-1-22T12:00:00Z",
            "2026-11-22T12:00:00Z ",
            " 2026-11-22T12:00:00Z",
            "2026-11-22T12:00:00ZZ",
            "2026-11-22T1a:00:00Z",
            "1969-12-31T23:59:59Z",
            "1970-01-01T00:30:00+01:00",
            "1763371200",
            "２026-11-22T12:00:00Z",
        ] {
            assert_eq!(parse_rfc3339_ms(bad), None, "{bad:?}");
        }
    }
}
