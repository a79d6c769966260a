//! Durations and rates as people write them in scenarios and SLOs: a number and a required unit.

use std::time::Duration;

/// Parses `250us`, `10ms`, `1.5s`, `2m`, `1h`: the unit is required, so `25` alone is an error
/// (a bare number in an SLO is the classic way to gate on the wrong unit).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    if number.is_empty() {
        return Err(format!("`{text}` is not a duration; write a number and a unit, e.g. `25ms`"));
    }
    let value: f64 = number.parse().map_err(|_| format!("`{number}` in `{text}` is not a number"))?;
    let nanos_per_unit = match unit.trim() {
        "ns" => 1.0,
        "us" | "µs" => 1e3,
        "ms" => 1e6,
        "s" => 1e9,
        "m" | "min" => 60e9,
        "h" => 3600e9,
        "" => return Err(format!("`{text}` has no unit; write e.g. `{text}ms` or `{text}s`")),
        other => return Err(format!("unknown time unit `{other}` in `{text}`; use ns, us, ms, s, m or h")),
    };
    let nanos = value * nanos_per_unit;
    if !nanos.is_finite() || nanos > u64::MAX as f64 {
        return Err(format!("`{text}` is too large"));
    }
    Ok(Duration::from_nanos(nanos.round() as u64))
}

/// A duration for people: `850µs`, `12.3ms`, `1.20s`.
pub fn format_nanos(nanos: f64) -> String {
    if nanos < 1e3 {
        format!("{nanos:.0}ns")
    } else if nanos < 1e6 {
        format!("{:.0}µs", nanos / 1e3)
    } else if nanos < 1e9 {
        format!("{:.2}ms", nanos / 1e6)
    } else {
        format!("{:.2}s", nanos / 1e9)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_need_units() {
        assert_eq!(parse_duration("25ms"), Ok(Duration::from_millis(25)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("250us"), Ok(Duration::from_micros(250)));
        assert_eq!(parse_duration("250µs"), Ok(Duration::from_micros(250)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("25").expect_err("error").contains("no unit"));
        assert!(parse_duration("25 parsecs").expect_err("error").contains("unknown time unit"));
        assert!(parse_duration("ms").expect_err("error").contains("not a duration"));
    }

    #[test]
    fn formatting_picks_a_readable_unit() {
        assert_eq!(format_nanos(850.0), "850ns");
        assert_eq!(format_nanos(12_300_000.0), "12.30ms");
        assert_eq!(format_nanos(1_200_000_000.0), "1.20s");
    }
}
