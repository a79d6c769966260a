//! One duration grammar for every flag and file xtask reads: `90s`, `5m`, `1m30s`, `2h`, `500ms`
//! (Go's and compose's form, integer parts). A bare number is seconds, as the `--timeout` flags
//! always took it.

use std::time::Duration;

/// Parse `1m30s`-style text; `None` when it is not one.
pub fn parse(text: &str) -> Option<Duration> {
    let text = text.trim();
    if !text.starts_with(|c: char| c.is_ascii_digit()) {
        return None;
    }
    if let Ok(secs) = text.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let mut total = Duration::ZERO;
    let mut rest = text;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
        let n: u64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let unit = rest.find(|c: char| c.is_ascii_digit()).unwrap_or(rest.len());
        let part = match &rest[..unit] {
            "h" => Duration::from_secs(n.checked_mul(3600)?),
            "m" => Duration::from_secs(n.checked_mul(60)?),
            "s" => Duration::from_secs(n),
            "ms" => Duration::from_millis(n),
            _ => return None,
        };
        total = total.checked_add(part)?;
        rest = &rest[unit..];
    }
    Some(total)
}

/// clap's value parser for duration flags: one line naming the value and the grammar. The
/// waits these flags bound count whole seconds, so a duration must be at least 1s.
pub fn flag(text: &str) -> Result<Duration, String> {
    let d = parse(text)
        .ok_or_else(|| format!("`{text}` is not a duration (e.g. 90s, 5m, 1m30s; a bare number is seconds)"))?;
    if d < Duration::from_secs(1) {
        return Err(format!("`{text}` is shorter than the 1s these waits count in"));
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_with_units_and_bare_numbers_are_seconds() {
        let secs = |s| Some(Duration::from_secs(s));
        assert_eq!(parse("90s"), secs(90));
        assert_eq!(parse("5m"), secs(300));
        assert_eq!(parse("1m30s"), secs(90));
        assert_eq!(parse("2h"), secs(7200));
        assert_eq!(parse("300"), secs(300));
        assert_eq!(parse("1s500ms"), Some(Duration::from_millis(1500)));
        for bad in ["", "s", "1x", "1.5s", "m5", "-3s", "5 m", "+5", "18446744073709551615s1s", "99999999999999999h"] {
            assert_eq!(parse(bad), None, "{bad:?}");
        }
        assert!(flag("soon").expect_err("not a duration").contains("e.g. 90s"));
        assert!(flag("500ms").expect_err("under a second").contains("1s"));
        assert_eq!(flag("1m"), Ok(Duration::from_secs(60)));
    }
}
