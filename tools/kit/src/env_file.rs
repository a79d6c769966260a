//! The one `.env` reader: compose's variable files (infra/compose/.env for the dev stack,
//! infra/compose/env/ENV.env for the Docker deploy target).

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Result;

use crate::UsageError;

/// Every `KEY=VALUE` line of an env file (`#` comments, blank lines, optional quotes).
pub fn parse(text: &str, file: &Path) -> Result<BTreeMap<String, String>> {
    let mut vars = BTreeMap::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            return Err(UsageError(format!("{}:{}: expected KEY=VALUE, got {line:?}", file.display(), n + 1)).into());
        };
        let key = key.trim();
        if key.is_empty() || !key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(UsageError(format!("{}:{}: {key:?} is not a variable name", file.display(), n + 1)).into());
        }
        let value = value.trim();
        let value = value
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .or_else(|| value.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')))
            .unwrap_or(value);
        vars.insert(key.to_string(), value.to_string());
    }
    Ok(vars)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_files_parse_and_say_where_they_are_wrong() {
        let file = Path::new("staging.env");
        let vars = parse("# c\n\nA=1\nB = \"two words\"\nC='x'\nD=\n", file).expect("parses");
        assert_eq!(vars["A"], "1");
        assert_eq!(vars["B"], "two words");
        assert_eq!(vars["C"], "x");
        assert_eq!(vars["D"], "");
        let err = parse("A=1\nnot a line\n", file).expect_err("bad line").to_string();
        assert_eq!(err, "staging.env:2: expected KEY=VALUE, got \"not a line\"");
    }
}
