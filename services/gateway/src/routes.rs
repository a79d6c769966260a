//! The route table: `GATEWAY_ROUTES="/v1/jobs=http://api:8081 timeout=2s, /=http://web:80"`.
//! A request goes to the route with the longest prefix that matches whole path segments.

use std::time::Duration;

use service_runtime::ConfigError;
use service_runtime::config::parse_duration;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    /// Path prefix, `/` or `/a/b` (no trailing slash).
    pub prefix: String,
    /// `http://host:port`, no path.
    pub upstream: String,
    pub timeout: Duration,
}

fn error(problem: String) -> ConfigError {
    ConfigError { variable: "GATEWAY_ROUTES".into(), problem }
}

pub fn parse(text: &str, default_timeout: Duration) -> Result<Vec<Route>, ConfigError> {
    let mut routes: Vec<Route> = Vec::new();
    for entry in text.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let mut words = entry.split_whitespace();
        let target = words.next().unwrap_or_default();
        let Some((prefix, upstream)) = target.split_once('=') else {
            return Err(error(format!("expected PREFIX=http://HOST:PORT, got {entry:?}")));
        };
        if !prefix.starts_with('/') {
            return Err(error(format!("route prefix {prefix:?} must start with /")));
        }
        let prefix = if prefix == "/" { "/".to_string() } else { prefix.trim_end_matches('/').to_string() };
        let Some(authority) = upstream.strip_prefix("http://") else {
            return Err(error(format!("upstream {upstream:?} must start with http://")));
        };
        let authority = authority.trim_end_matches('/');
        let has_port =
            authority.rsplit_once(':').is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
        if authority.contains('/') || !has_port {
            return Err(error(format!("upstream {upstream:?} must be http://HOST:PORT with no path")));
        }
        let mut timeout = default_timeout;
        for option in words {
            match option.split_once('=') {
                Some(("timeout", value)) => {
                    timeout = parse_duration(value).ok_or_else(|| {
                        error(format!("timeout {value:?} on route {prefix}: use a duration like 500ms or 5s"))
                    })?;
                }
                _ => return Err(error(format!("unknown route option {option:?} (known: timeout=DURATION)"))),
            }
        }
        if routes.iter().any(|r| r.prefix == prefix) {
            return Err(error(format!("prefix {prefix} is routed twice")));
        }
        routes.push(Route { prefix, upstream: format!("http://{authority}"), timeout });
    }
    if routes.is_empty() {
        return Err(error("no routes; expected e.g. /v1/jobs=http://127.0.0.1:8081".into()));
    }
    // Longest prefix first, so the first match is the most specific.
    routes.sort_by_key(|r| std::cmp::Reverse(r.prefix.len()));
    Ok(routes)
}

/// Does `prefix` cover `path` on a segment boundary (`/v1/jobs` covers `/v1/jobs/7`, not `/v1/jobsx`)?
pub fn covers(prefix: &str, path: &str) -> bool {
    prefix == "/" || path == prefix || path.strip_prefix(prefix).is_some_and(|rest| rest.starts_with('/'))
}

/// The index of the route serving `path` (routes are sorted longest prefix first).
pub fn find(routes: &[Route], path: &str) -> Option<usize> {
    routes.iter().position(|r| covers(&r.prefix, path))
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Duration = Duration::from_secs(10);

    #[test]
    fn routes_parse_with_per_route_timeouts() {
        let routes = parse("/v1/jobs=http://api:8081 timeout=2s, /=http://web:80/", T).expect("valid");
        assert_eq!(
            routes[0],
            Route { prefix: "/v1/jobs".into(), upstream: "http://api:8081".into(), timeout: Duration::from_secs(2) }
        );
        assert_eq!(routes[1], Route { prefix: "/".into(), upstream: "http://web:80".into(), timeout: T });
    }

    #[test]
    fn the_longest_matching_prefix_wins_on_segment_boundaries() {
        let routes = parse("/=http://a:1, /v1=http://b:2, /v1/jobs=http://c:3", T).expect("valid");
        let upstream = |path| find(&routes, path).map(|i| routes[i].upstream.as_str());
        assert_eq!(upstream("/v1/jobs/42"), Some("http://c:3"));
        assert_eq!(upstream("/v1/jobsx"), Some("http://b:2"));
        assert_eq!(upstream("/other"), Some("http://a:1"));
        let no_root = parse("/v1=http://b:2", T).expect("valid");
        assert!(find(&no_root, "/v2").is_none());
    }

    #[test]
    fn bad_route_tables_are_rejected_with_the_reason() {
        for (text, expected) in [
            ("", "no routes"),
            ("v1=http://a:1", "must start with /"),
            ("/v1=https://a:1", "must start with http://"),
            ("/v1=http://a", "HOST:PORT"),
            ("/v1=http://a:1/base", "no path"),
            ("/v1=http://a:1 timeout=fast", "timeout \"fast\""),
            ("/v1=http://a:1 retries=3", "unknown route option"),
            ("/v1=http://a:1,/v1/=http://b:2", "routed twice"),
        ] {
            let err = parse(text, T).expect_err(text).to_string();
            assert!(err.starts_with("config error: GATEWAY_ROUTES:") && err.contains(expected), "{text}: {err}");
        }
    }
}
