//! Typed configuration from environment variables.
//!
//! Every getter names the variable and what it expected, so a bad deployment fails at start-up
//! with one line such as `config error: PORT: expected a port number 1-65535, got "80a"`.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub variable: String,
    pub problem: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "config error: {}: {}", self.variable, self.problem)
    }
}

impl std::error::Error for ConfigError {}

/// Where configuration comes from: the process environment, or a map in tests.
#[derive(Clone, Debug)]
pub struct Env {
    vars: HashMap<String, String>,
}

impl Env {
    pub fn process() -> Env {
        Env { vars: std::env::vars().collect() }
    }

    pub fn from_pairs(pairs: &[(&str, &str)]) -> Env {
        Env { vars: pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect() }
    }

    fn raw(&self, name: &str) -> Option<&str> {
        self.vars.get(name).map(String::as_str).filter(|v| !v.trim().is_empty())
    }

    pub(crate) fn error(name: &str, problem: String) -> ConfigError {
        ConfigError { variable: name.to_string(), problem }
    }

    /// A variable that must be set.
    pub fn required(&self, name: &str, expected: &str) -> Result<String, ConfigError> {
        self.raw(name).map(str::to_string).ok_or_else(|| Env::error(name, format!("not set; expected {expected}")))
    }

    pub fn string_or(&self, name: &str, default: &str) -> String {
        self.raw(name).unwrap_or(default).to_string()
    }

    /// Parse a value, or take the default when unset.
    pub fn parse_or<T: FromStr>(&self, name: &str, default: T, expected: &str) -> Result<T, ConfigError> {
        match self.raw(name) {
            None => Ok(default),
            Some(v) => v.trim().parse().map_err(|_| Env::error(name, format!("expected {expected}, got {v:?}"))),
        }
    }

    /// An integer within bounds.
    pub fn int_in<T>(&self, name: &str, default: T, min: T, max: T) -> Result<T, ConfigError>
    where
        T: FromStr + PartialOrd + Copy + fmt::Display,
    {
        let expected = format!("an integer from {min} to {max}");
        let v = self.parse_or(name, default, &expected)?;
        if v < min || v > max {
            return Err(Env::error(name, format!("expected {expected}, got {v}")));
        }
        Ok(v)
    }

    pub fn port_or(&self, name: &str, default: u16) -> Result<u16, ConfigError> {
        self.int_in(name, default, 1, 65535)
    }

    /// A duration written with a unit: `250ms`, `5s`, `2m`.
    pub fn duration_or(&self, name: &str, default: Duration) -> Result<Duration, ConfigError> {
        match self.raw(name) {
            None => Ok(default),
            Some(v) => parse_duration(v)
                .ok_or_else(|| Env::error(name, format!("expected a duration like 250ms, 5s or 2m, got {v:?}"))),
        }
    }

    /// A URL with one of the given schemes, e.g. `postgres://…`.
    pub fn url(&self, name: &str, schemes: &[&str]) -> Result<String, ConfigError> {
        let expected = format!(
            "a URL starting with {}",
            schemes.iter().map(|s| format!("{s}://")).collect::<Vec<_>>().join(" or ")
        );
        let v = self.required(name, &expected)?;
        if schemes.iter().any(|s| v.starts_with(&format!("{s}://"))) {
            Ok(v)
        } else {
            Err(Env::error(name, format!("expected {expected}, got {:?}", redact_url(&v))))
        }
    }
}

/// `250ms`, `5s`, `2m`, `1h`; a bare number is rejected so units are never guessed.
pub fn parse_duration(text: &str) -> Option<Duration> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit())?;
    let (num, unit) = t.split_at(split);
    let n: u64 = num.parse().ok()?;
    match unit {
        "ms" => Some(Duration::from_millis(n)),
        "s" => Some(Duration::from_secs(n)),
        "m" => n.checked_mul(60).map(Duration::from_secs),
        "h" => n.checked_mul(3600).map(Duration::from_secs),
        _ => None,
    }
}

/// Hide a password in `scheme://user:password@host` before printing.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else { return url.to_string() };
    match rest.split_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
            None => url.to_string(),
        },
        None => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_required_variables_name_themselves_and_what_was_expected() {
        let env = Env::from_pairs(&[("EMPTY", "  ")]);
        let err = env.required("DATABASE_URL", "a postgres:// URL").expect_err("missing");
        assert_eq!(err.to_string(), "config error: DATABASE_URL: not set; expected a postgres:// URL");
        assert!(env.required("EMPTY", "x").is_err(), "blank counts as unset");
    }

    #[test]
    fn numbers_are_parsed_and_bounded() {
        let env = Env::from_pairs(&[("PORT", "80a"), ("BIG", "70000"), ("OK", "8080")]);
        assert_eq!(
            env.port_or("PORT", 1).expect_err("bad").to_string(),
            "config error: PORT: expected an integer from 1 to 65535, got \"80a\""
        );
        assert!(env.port_or("BIG", 1).expect_err("too big").to_string().contains("70000"));
        assert_eq!(env.port_or("OK", 1), Ok(8080));
        assert_eq!(env.port_or("UNSET", 9), Ok(9));
    }

    #[test]
    fn durations_need_units() {
        assert_eq!(parse_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_duration("5s"), Some(Duration::from_secs(5)));
        assert_eq!(parse_duration("2m"), Some(Duration::from_secs(120)));
        assert_eq!(parse_duration("5"), None);
        assert_eq!(parse_duration("18446744073709551615h"), None, "overflow is an error, not a wrap");
        assert_eq!(parse_duration("fast"), None);
        let env = Env::from_pairs(&[("T", "5")]);
        assert!(env.duration_or("T", Duration::ZERO).expect_err("no unit").to_string().contains("like 250ms"));
    }

    #[test]
    fn urls_are_checked_and_passwords_never_echoed() {
        let env = Env::from_pairs(&[("DB", "mysql://app:hunter2@db/x"), ("GOOD", "postgres://a@b/c")]);
        let err = env.url("DB", &["postgres", "postgresql"]).expect_err("wrong scheme").to_string();
        assert!(err.contains("postgres://") && err.contains("app:***@db/x") && !err.contains("hunter2"), "{err}");
        assert_eq!(env.url("GOOD", &["postgres"]).as_deref(), Ok("postgres://a@b/c"));
    }
}
