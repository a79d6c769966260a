//! The one place xtask and its tools start processes: a command builder with a cleaned
//! environment, run / read / read-json, allowed exit codes and one error format. Typed wrappers
//! (xtask's git.rs and compose model, the deployer's `Kube` and `Docker`) build on it and print
//! the commands that change something before they run.
//!
//! Every failure reads the same way: the command line as a shell would take it, how it ended,
//! and the last line it wrote to stderr, e.g.
//! ``docker image inspect api:abc` failed (exit 1): Error: No such image: api:abc`.
//! A tidy test keeps `Command::new` out of every other file.

use std::ffi::{OsStr, OsString};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Output, Stdio};

use anyhow::{Context, Result, bail};
use serde::de::DeserializeOwned;

/// Variables cargo sets for the crate it runs (xtask). Passed on, they make child cargo
/// invocations see a changed environment and rebuild crates whose build scripts watch them.
pub fn is_cargo_injected(key: &str) -> bool {
    const PREFIXES: &[&str] = &["CARGO_PKG_", "CARGO_MANIFEST_", "CARGO_CFG_", "CARGO_BIN_EXE_"];
    const EXACT: &[&str] = &[
        "CARGO_CRATE_NAME",
        "CARGO_BIN_NAME",
        "CARGO_PRIMARY_PACKAGE",
        "CARGO_TARGET_TMPDIR",
        "CARGO_RUSTC_CURRENT_DIR",
    ];
    PREFIXES.iter().any(|p| key.starts_with(p)) || EXACT.contains(&key)
}

/// `s` as a POSIX shell reads it back: bare when that is unambiguous, else single-quoted.
pub fn shell_quote(s: &str) -> String {
    let safe = !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%^".contains(c));
    if safe { s.to_string() } else { format!("'{}'", s.replace('\'', r"'\''")) }
}

/// One external command, built up and then run one of a few ways.
#[derive(Clone, Debug)]
pub struct Cmd {
    program: OsString,
    args: Vec<OsString>,
    env: Vec<(OsString, OsString)>,
    cwd: Option<PathBuf>,
    ok_codes: Vec<i32>,
}

impl Cmd {
    pub fn new(program: impl AsRef<OsStr>) -> Cmd {
        Cmd {
            program: program.as_ref().to_os_string(),
            args: Vec::new(),
            env: Vec::new(),
            cwd: None,
            ok_codes: vec![0],
        }
    }

    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> Cmd {
        self.args.push(arg.as_ref().to_os_string());
        self
    }

    pub fn args<I, S>(mut self, args: I) -> Cmd
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.args.extend(args.into_iter().map(|a| a.as_ref().to_os_string()));
        self
    }

    pub fn env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Cmd {
        self.env.push((key.as_ref().to_os_string(), value.as_ref().to_os_string()));
        self
    }

    pub fn envs<I, K, V>(mut self, vars: I) -> Cmd
    where
        I: IntoIterator<Item = (K, V)>,
        K: AsRef<OsStr>,
        V: AsRef<OsStr>,
    {
        for (k, v) in vars {
            self = self.env(k, v);
        }
        self
    }

    pub fn current_dir(mut self, dir: impl AsRef<Path>) -> Cmd {
        self.cwd = Some(dir.as_ref().to_path_buf());
        self
    }

    /// Exit codes that count as success besides 0 (cargo-deny's bitset, `diff`'s 1, ...).
    pub fn ok_codes(mut self, codes: &[i32]) -> Cmd {
        self.ok_codes = codes.to_vec();
        self
    }

    /// The command line as a POSIX shell would read it back (for echo lines and errors).
    pub fn line(&self) -> String {
        let mut parts = vec![shell_quote(&self.program.to_string_lossy())];
        parts.extend(self.args.iter().map(|a| shell_quote(&a.to_string_lossy())));
        parts.join(" ")
    }

    /// The std command with the cargo-injected variables removed, for callers that need to
    /// wire its streams themselves (the plan runner, long-running children).
    pub fn to_command(&self) -> Command {
        let mut cmd = Command::new(&self.program);
        for (key, _) in std::env::vars_os() {
            if let Some(k) = key.to_str()
                && is_cargo_injected(k)
            {
                cmd.env_remove(k);
            }
        }
        cmd.args(&self.args);
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)));
        if let Some(dir) = &self.cwd {
            cmd.current_dir(dir);
        }
        cmd
    }

    /// Run to completion with its output captured, whatever its exit code (probes, and callers
    /// that read both streams); fails only when it cannot start.
    pub fn output(&self) -> Result<Output> {
        let mut cmd = self.to_command();
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        cmd.stdin(Stdio::null());
        cmd.output().with_context(|| self.could_not_start())
    }

    /// Run with captured output; an exit code outside `ok_codes` is an error in the one format.
    pub fn checked_output(&self) -> Result<Output> {
        let out = self.output()?;
        self.check(out.status, &out.stderr)?;
        Ok(out)
    }

    /// Run to completion, its output captured and returned only in the error.
    pub fn run(&self) -> Result<()> {
        self.checked_output().map(|_| ())
    }

    /// Run with captured output, copying both streams into `log` (for plan steps).
    pub fn run_logged(&self, log: &mut dyn Write) -> Result<Output> {
        let out = self.output()?;
        log.write_all(&out.stdout)?;
        log.write_all(&out.stderr)?;
        self.check(out.status, &out.stderr)?;
        Ok(out)
    }

    /// Run with the terminal's streams and hand back how it ended, unchecked (exit codes passed through).
    pub fn status(&self) -> Result<ExitStatus> {
        self.to_command().status().with_context(|| self.could_not_start())
    }

    /// Its stdout as text, checked.
    pub fn read(&self) -> Result<String> {
        let out = self.checked_output()?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Its stdout parsed as JSON into `T`, checked.
    pub fn read_json<T: DeserializeOwned>(&self) -> Result<T> {
        let text = self.read()?;
        serde_json::from_str(&text).with_context(|| format!("`{}` printed JSON that cannot be read", self.line()))
    }

    /// Whether it ran and exited 0 (a yes/no probe: `docker image inspect X`).
    pub fn succeeds(&self) -> bool {
        self.output().is_ok_and(|o| o.status.success())
    }

    fn could_not_start(&self) -> String {
        format!("could not start `{}`", self.line())
    }

    fn check(&self, status: ExitStatus, stderr: &[u8]) -> Result<()> {
        if status.code().is_some_and(|c| self.ok_codes.contains(&c)) {
            return Ok(());
        }
        bail!("{}", failure(&self.line(), status, stderr))
    }
}

/// The one wording of a failed command: line, how it ended, the last thing it said on stderr.
pub fn failure(line: &str, status: ExitStatus, stderr: &[u8]) -> String {
    let ended = match status.code() {
        Some(code) => format!("exit {code}"),
        None => "killed by a signal".to_string(),
    };
    let text = String::from_utf8_lossy(stderr);
    match text.lines().map(str::trim).rfind(|l| !l.is_empty()) {
        Some(last) => format!("`{line}` failed ({ended}): {last}"),
        None => format!("`{line}` failed ({ended})"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cargo_injected_variables_are_recognised() {
        assert!(is_cargo_injected("CARGO_PKG_NAME"));
        assert!(is_cargo_injected("CARGO_MANIFEST_DIR"));
        assert!(!is_cargo_injected("CARGO_HOME"));
        assert!(!is_cargo_injected("CARGO_TARGET_DIR"));
        assert!(!is_cargo_injected("CARGO"));
    }

    #[test]
    fn a_failure_names_the_line_the_exit_code_and_the_last_stderr_line() {
        let err =
            Cmd::new("sh").args(["-c", "echo first >&2; echo 'the reason' >&2; exit 3"]).run().expect_err("fails");
        assert_eq!(
            format!("{err:#}"),
            "`sh -c 'echo first >&2; echo '\\''the reason'\\'' >&2; exit 3'` failed (exit 3): the reason"
        );
        let quiet = Cmd::new("false").run().expect_err("fails");
        assert_eq!(format!("{quiet:#}"), "`false` failed (exit 1)");
    }

    #[test]
    fn allowed_exit_codes_are_success() {
        assert!(Cmd::new("sh").args(["-c", "exit 2"]).ok_codes(&[0, 2]).run().is_ok());
        assert!(Cmd::new("sh").args(["-c", "exit 1"]).ok_codes(&[0, 2]).run().is_err());
    }

    #[test]
    fn read_json_parses_and_names_unreadable_output() {
        let v: Vec<u32> = Cmd::new("echo").arg("[1, 2]").read_json().expect("json");
        assert_eq!(v, [1, 2]);
        let err = Cmd::new("echo").arg("nope").read_json::<Vec<u32>>().expect_err("not json");
        assert!(format!("{err:#}").starts_with("`echo nope` printed JSON that cannot be read"), "{err:#}");
    }

    #[test]
    fn a_missing_program_is_an_error_naming_it() {
        let err = Cmd::new("definitely-not-a-program-xyz").run().expect_err("missing");
        assert!(format!("{err:#}").contains("could not start `definitely-not-a-program-xyz`"), "{err:#}");
    }

    #[test]
    fn the_child_environment_drops_what_cargo_set_for_xtask() {
        // cargo test and nextest set it for the test process, as `cargo run` does for xtask.
        assert!(std::env::var_os("CARGO_PKG_NAME").is_some(), "the test runner sets CARGO_PKG_NAME");
        let out = Cmd::new("sh").args(["-c", "echo ${CARGO_PKG_NAME:-unset}"]).read().expect("sh");
        assert_eq!(out.trim(), "unset", "cargo sets CARGO_PKG_NAME for xtask's tests; children must not see it");
    }
}
