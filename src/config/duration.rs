//! Go-style duration strings ("500ms", "1s", "1m30s", "1.5h"), as Flagger and Kubernetes write them.

/// Parses a duration into whole milliseconds (rounded down). Units: ns, us, µs, ms, s, m, h.
pub fn parse_millis(text: &str) -> Result<u64, String> {
    let s = text.trim();
    if s.is_empty() {
        return Err("empty duration".into());
    }
    if s == "0" {
        return Ok(0);
    }
    let mut rest = s;
    let mut total_ns: f64 = 0.0;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let (num, tail) = rest.split_at(num_len);
        if num.is_empty() || num == "." {
            return Err(format!(
                "{text:?} is not a duration (expected e.g. \"500ms\", \"1s\", \"1m\")"
            ));
        }
        let value: f64 = num
            .parse()
            .map_err(|_| format!("{text:?} has a bad number {num:?}"))?;
        let unit_len = tail
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(tail.len());
        let (unit, next) = tail.split_at(unit_len);
        let scale = match unit {
            "ns" => 1.0,
            "us" | "µs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            "" => return Err(format!("{text:?} lacks a unit (ms, s, m, h)")),
            other => return Err(format!("{text:?} has an unknown unit {other:?}")),
        };
        total_ns += value * scale;
        rest = next;
    }
    // Bounded well below u64::MAX milliseconds: a year is plenty for any analysis window.
    if total_ns > 365.0 * 24.0 * 3600e9 {
        return Err(format!("{text:?} is too long"));
    }
    Ok((total_ns / 1e6) as u64)
}

#[cfg(test)]
mod tests {
    use super::parse_millis;

    #[test]
    fn parses_flagger_durations() {
        assert_eq!(parse_millis("500ms"), Ok(500));
        assert_eq!(parse_millis("1s"), Ok(1000));
        assert_eq!(parse_millis("1m"), Ok(60_000));
        assert_eq!(parse_millis("1m30s"), Ok(90_000));
        assert_eq!(parse_millis("1.5h"), Ok(5_400_000));
        assert_eq!(parse_millis("0"), Ok(0));
        assert_eq!(parse_millis("2500us"), Ok(2));
    }

    #[test]
    fn rejects_malformed_durations() {
        for bad in ["", "10", "1x", "ms", "1s2", ".s", "-1s", "9999999h"] {
            assert!(parse_millis(bad).is_err(), "{bad} should be rejected");
        }
    }
}
