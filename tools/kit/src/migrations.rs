//! Expand/contract: a migration must leave the schema usable by the code it replaces, because
//! that code keeps running during a rolling deploy and comes back on a rollback. Statements that
//! break the running code are refused unless the migration says, beside the statement, which
//! rule it breaks and why that is safe now:
//!
//! ```sql
//! -- allow: drop-column (reason: nothing reads jobs.legacy_note since release 41)
//! ALTER TABLE jobs DROP COLUMN legacy_note;
//! ```
//!
//! `cargo xtask migrations check` (a `ci` stage) checks every migration; `deploy` checks the ones
//! added since the release it replaces before it changes anything.

use std::path::{Path, PathBuf};

/// Every rule: id, and why the running code breaks.
pub const RULES: &[(&str, &str)] = &[
    ("drop-table", "DROP TABLE removes a table the running code reads"),
    ("drop-column", "DROP COLUMN removes a column the running code reads or writes"),
    ("rename", "RENAME changes a name the running code uses"),
    ("type-change", "changing a column's type can break the running code's reads and writes"),
    ("not-null", "SET NOT NULL makes the running code's inserts without the column fail"),
    ("not-null-without-default", "a NOT NULL column without a DEFAULT makes the running code's inserts fail"),
    ("truncate", "TRUNCATE deletes the data a rollback would need"),
];

/// One refused statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub file: PathBuf,
    /// 1-based line of the statement's first keyword.
    pub line: usize,
    pub rule: &'static str,
    pub statement: String,
}

impl Violation {
    /// One line naming the file, the statement, the rule and the two fixes.
    pub fn line(&self) -> String {
        let why = RULES.iter().find(|(id, _)| *id == self.rule).map_or("", |(_, why)| why);
        format!(
            "{}:{}: `{}`: {why}; split it (expand in this release, contract in a later one) or mark it: `-- allow: {} (reason: ...)`",
            self.file.display(),
            self.line,
            self.statement,
            self.rule
        )
    }
}

/// A statement of a migration: its text (comments removed, whitespace collapsed), its first
/// line, and the comments just before it.
struct Statement {
    text: String,
    line: usize,
    comments: Vec<String>,
}

/// Splits SQL into statements at `;`, outside comments, quotes and dollar-quoted bodies.
fn statements(sql: &str) -> Vec<Statement> {
    let chars: Vec<char> = sql.chars().collect();
    let mut out = Vec::new();
    let (mut text, mut comments) = (String::new(), Vec::new());
    let (mut line, mut start_line) = (1, None::<usize>);
    let mut i = 0;
    let mut push = |text: &mut String, comments: &mut Vec<String>, start: &mut Option<usize>| {
        let collapsed = text.split_whitespace().collect::<Vec<_>>().join(" ");
        if !collapsed.is_empty() {
            out.push(Statement { text: collapsed, line: start.unwrap_or(1), comments: std::mem::take(comments) });
        } else {
            comments.clear();
        }
        text.clear();
        *start = None;
    };
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        if c == '-' && next == Some('-') {
            let end = chars[i..].iter().position(|&c| c == '\n').map_or(chars.len(), |p| i + p);
            let comment: String = chars[i + 2..end].iter().collect();
            if start_line.is_none() {
                comments.push(comment.trim().to_string());
            }
            i = end;
            continue;
        }
        if c == '/' && next == Some('*') {
            let rest: String = chars[i..].iter().collect();
            let len = rest.find("*/").map_or(rest.chars().count(), |p| rest[..p + 2].chars().count());
            line += chars[i..i + len].iter().filter(|&&c| c == '\n').count();
            i += len;
            text.push(' ');
            continue;
        }
        if c == '\n' {
            line += 1;
        }
        if !c.is_whitespace() && start_line.is_none() && c != ';' {
            start_line = Some(line);
        }
        match c {
            ';' => {
                push(&mut text, &mut comments, &mut start_line);
                i += 1;
            }
            '\'' | '"' => {
                // A quoted literal or identifier: copied as is, up to its closing quote.
                let end = chars[i + 1..].iter().position(|&q| q == c).map_or(chars.len(), |p| i + 1 + p + 1);
                line += chars[i..end].iter().filter(|&&c| c == '\n').count();
                text.extend(&chars[i..end]);
                i = end;
            }
            '$' => {
                // $tag$ ... $tag$: a function body; `;` inside it does not end the statement.
                let tag_end = chars[i + 1..].iter().position(|&t| t == '$').map(|p| i + 1 + p);
                match tag_end.filter(|&e| chars[i + 1..e].iter().all(|t| t.is_alphanumeric() || *t == '_')) {
                    Some(e) => {
                        let tag: String = chars[i..=e].iter().collect();
                        let rest: String = chars[e + 1..].iter().collect();
                        let body = rest.find(&tag).map_or(rest.chars().count(), |p| rest[..p].chars().count());
                        let end = (e + 1 + body + tag.chars().count()).min(chars.len());
                        line += chars[i..end].iter().filter(|&&c| c == '\n').count();
                        text.extend(&chars[i..end]);
                        i = end;
                    }
                    None => {
                        text.push(c);
                        i += 1;
                    }
                }
            }
            _ => {
                text.push(c);
                i += 1;
            }
        }
    }
    push(&mut text, &mut comments, &mut start_line);
    out
}

/// The rules one statement breaks.
fn broken(statement: &str) -> Vec<&'static str> {
    // Quoted parts (literals, identifiers) never name a rule.
    let upper: String = statement
        .split('\'')
        .step_by(2)
        .collect::<Vec<_>>()
        .join(" ")
        .to_ascii_uppercase()
        .replace(['(', ')', ','], " ");
    let words: Vec<&str> = upper.split_whitespace().collect();
    let has = |seq: &[&str]| words.windows(seq.len()).any(|w| w == seq);
    let mut rules = Vec::new();
    if has(&["DROP", "TABLE"]) {
        rules.push("drop-table");
    }
    if has(&["DROP", "COLUMN"])
        || (has(&["ALTER", "TABLE"])
            && has(&["DROP"])
            && !has(&["DROP", "CONSTRAINT"])
            && !has(&["DROP", "DEFAULT"])
            && !has(&["DROP", "NOT", "NULL"]))
    {
        rules.push("drop-column");
    }
    if has(&["RENAME"]) {
        rules.push("rename");
    }
    if has(&["ALTER", "COLUMN"]) && (has(&["TYPE"]) || has(&["SET", "DATA", "TYPE"])) {
        rules.push("type-change");
    }
    if has(&["SET", "NOT", "NULL"]) {
        rules.push("not-null");
    }
    if has(&["ALTER", "TABLE"])
        && has(&["ADD"])
        && has(&["NOT", "NULL"])
        && !has(&["DEFAULT"])
        && !has(&["ADD", "CONSTRAINT"])
    {
        rules.push("not-null-without-default");
    }
    if words.first() == Some(&"TRUNCATE") {
        rules.push("truncate");
    }
    rules
}

/// `-- allow: RULE (reason: WHY)` among the comments: the rules allowed, each with a reason.
/// A marker without a reason allows nothing.
fn allowed(comments: &[String]) -> Vec<String> {
    comments
        .iter()
        .filter_map(|c| c.strip_prefix("allow:"))
        .filter_map(|rest| {
            let (rule, reason) = rest.split_once("(reason:")?;
            let reason = reason.trim().trim_end_matches(')').trim();
            (!reason.is_empty()).then(|| rule.trim().to_string())
        })
        .collect()
}

/// The statements of one migration that break the running code without a reasoned marker.
pub fn check(file: &Path, sql: &str) -> Vec<Violation> {
    let mut out = Vec::new();
    for s in statements(sql) {
        let allowed = allowed(&s.comments);
        for rule in broken(&s.text) {
            if !allowed.iter().any(|a| a == rule) {
                let mut statement = s.text.clone();
                if statement.chars().count() > 80 {
                    statement = statement.chars().take(77).collect::<String>() + "...";
                }
                out.push(Violation { file: file.to_path_buf(), line: s.line, rule, statement });
            }
        }
    }
    out
}

/// The `.sql` files directly in `dir`, sorted.
pub fn sql_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().and_then(|e| e.to_str()) == Some("sql"))
        .collect();
    found.sort();
    Ok(found)
}

/// The migration files of the repository, relative to `root`: every `migrations/*.sql` of a
/// member under `crates/` or `services/`, sorted.
pub fn files(root: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut found = Vec::new();
    for top in ["crates", "services"] {
        let Ok(members) = std::fs::read_dir(root.join(top)) else { continue };
        for member in members.flatten() {
            let dir = member.path().join("migrations");
            if dir.is_dir() {
                found.extend(sql_files(&dir)?.into_iter().map(|p| p.strip_prefix(root).unwrap_or(&p).to_path_buf()));
            }
        }
    }
    found.sort();
    Ok(found)
}

/// Before a deploy changes anything: every migration of the checkout is expand-only or marked.
/// Otherwise one line per statement on stderr and a usage error (exit 2): nothing is deployed.
pub fn preflight(root: &Path) -> anyhow::Result<()> {
    let mut found = Vec::new();
    for file in files(root)? {
        let path = root.join(&file);
        let sql = std::fs::read_to_string(&path).map_err(|e| anyhow::anyhow!("reading {}: {e}", path.display()))?;
        found.extend(check(&file, &sql));
    }
    for v in &found {
        eprintln!("{}", v.line());
    }
    if !found.is_empty() {
        return Err(crate::UsageError(format!(
            "{} migration statement(s) would break the running release (above); nothing was deployed",
            found.len()
        ))
        .into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(sql: &str) -> Vec<&'static str> {
        check(Path::new("m.sql"), sql).into_iter().map(|v| v.rule).collect()
    }

    #[test]
    fn statements_split_outside_comments_quotes_and_bodies() {
        let sql = "-- a\nCREATE TABLE a (x TEXT DEFAULT ';');\n/* b; */\nCREATE FUNCTION f() RETURNS int AS $$ SELECT 1; $$ LANGUAGE sql;\n\n  INSERT INTO a VALUES ('x;y')";
        let found = statements(sql);
        let lines: Vec<usize> = found.iter().map(|s| s.line).collect();
        assert_eq!(found.len(), 3, "{:?}", found.iter().map(|s| &s.text).collect::<Vec<_>>());
        assert_eq!(lines, [2, 4, 6]);
        assert_eq!(found[0].comments, ["a"]);
    }

    #[test]
    fn each_rule_is_named_on_its_statement() {
        for (sql, rule) in [
            ("DROP TABLE jobs", "drop-table"),
            ("ALTER TABLE jobs DROP COLUMN result", "drop-column"),
            ("alter table jobs drop result", "drop-column"),
            ("ALTER TABLE jobs RENAME COLUMN result TO outcome", "rename"),
            ("ALTER TABLE jobs RENAME TO tasks", "rename"),
            ("ALTER TABLE jobs ALTER COLUMN attempts TYPE BIGINT", "type-change"),
            ("ALTER TABLE jobs ALTER COLUMN attempts SET DATA TYPE BIGINT", "type-change"),
            ("ALTER TABLE jobs ALTER COLUMN kind SET NOT NULL", "not-null"),
            ("ALTER TABLE jobs ADD COLUMN owner TEXT NOT NULL", "not-null-without-default"),
            ("TRUNCATE jobs", "truncate"),
        ] {
            assert_eq!(rules(sql), [rule], "{sql}");
        }
    }

    #[test]
    fn additive_statements_pass() {
        for sql in [
            "CREATE TABLE t (id UUID PRIMARY KEY, name TEXT NOT NULL)",
            "ALTER TABLE jobs ADD COLUMN owner TEXT",
            "ALTER TABLE jobs ADD COLUMN priority INTEGER NOT NULL DEFAULT 0",
            "CREATE INDEX CONCURRENTLY jobs_owner ON jobs (owner)",
            "ALTER TABLE jobs ALTER COLUMN kind DROP NOT NULL",
            "ALTER TABLE jobs ALTER COLUMN priority DROP DEFAULT",
            "ALTER TABLE jobs DROP CONSTRAINT jobs_kind_check",
            "INSERT INTO settings VALUES ('drop table', 'rename')",
            "ALTER TABLE jobs ADD CONSTRAINT owner_set CHECK (owner IS NOT NULL) NOT VALID",
        ] {
            assert_eq!(rules(sql), Vec::<&str>::new(), "{sql}");
        }
    }

    #[test]
    fn a_reasoned_marker_allows_its_rule_on_its_statement_only() {
        let marked = "-- allow: drop-column (reason: nothing reads result since release 41)\nALTER TABLE jobs DROP COLUMN result;\nALTER TABLE jobs DROP COLUMN last_error;";
        let found = check(Path::new("m.sql"), marked);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!((found[0].line, found[0].rule), (3, "drop-column"));
        assert_eq!(
            rules("-- allow: drop-column (reason: )\nALTER TABLE jobs DROP COLUMN result"),
            ["drop-column"],
            "no reason"
        );
        assert_eq!(
            rules("-- allow: rename (reason: x)\nALTER TABLE jobs DROP COLUMN result"),
            ["drop-column"],
            "another rule"
        );
        let line = found[0].line();
        assert!(line.starts_with("m.sql:3: `ALTER TABLE jobs DROP COLUMN last_error`: DROP COLUMN"), "{line}");
        assert!(line.ends_with("`-- allow: drop-column (reason: ...)`"), "{line}");
    }

    #[test]
    fn a_deploy_is_refused_by_an_unmarked_destructive_migration() {
        let root = std::env::temp_dir().join(format!("migrations-preflight-{}", std::process::id()));
        let dir = root.join("crates/queue/migrations");
        std::fs::create_dir_all(&dir).expect("dir");
        std::fs::write(dir.join("0001_jobs.sql"), "CREATE TABLE jobs (id UUID PRIMARY KEY, note TEXT);")
            .expect("write");
        assert!(preflight(&root).is_ok(), "additive");
        std::fs::write(dir.join("0002_drop.sql"), "ALTER TABLE jobs DROP COLUMN note;").expect("write");
        let err = preflight(&root).expect_err("destructive");
        assert!(err.downcast_ref::<crate::UsageError>().is_some(), "{err}");
        assert!(err.to_string().contains("1 migration statement(s)"), "{err}");
        std::fs::remove_dir_all(&root).expect("clean up");
    }

    #[test]
    fn the_fixtures_refuse_exactly_their_rule_and_accept_the_rest() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/migrations");
        for (rule, _) in RULES {
            let file = dir.join(format!("refused-{rule}.sql"));
            let sql = std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
            let found: Vec<&str> = check(&file, &sql).into_iter().map(|v| v.rule).collect();
            assert_eq!(found, [*rule], "{}", file.display());
        }
        let accepted: Vec<PathBuf> = std::fs::read_dir(&dir)
            .expect("fixtures")
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("accepted-")))
            .collect();
        assert!(accepted.len() >= 2, "additive and marked fixtures");
        for file in accepted {
            let sql = std::fs::read_to_string(&file).expect("read");
            assert_eq!(check(&file, &sql), Vec::new(), "{}", file.display());
        }
    }
}
