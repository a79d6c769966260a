//! Plans: what a command is going to do, as data, before anything runs.
//!
//! Every command builds a [`Plan`] of [`Step`]s; `--dry-run` prints it and the runner executes it.
//! Keeping plans as plain data is what lets them be tested without spawning processes.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Serialize;

use crate::tools::Tool;

/// Whether a step may overlap with others.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Lane {
    /// Runs in order, one at a time: cargo steps share the target dir and its lock.
    Serial,
    /// Touches nothing the serial steps touch (no target dir), so it may run beside them.
    Background,
}

/// Work done inside xtask itself rather than by an external program. Each command defines its
/// own tasks beside it; the engine only shows and runs them, and knows none by name.
pub trait Task: std::fmt::Debug + Send + Sync {
    /// One line saying what it does, for plans and "running" lines.
    fn summary(&self) -> String;
    /// Its inputs as JSON for `--dry-run --format json` (`plan::described` adds its name).
    fn describe(&self) -> serde_json::Value;
    /// Do the work, writing what a person should see into `log`.
    fn run(&self, log: &mut dyn std::io::Write) -> anyhow::Result<()>;
}

/// A task's inputs as JSON with its name under `task`, the shape `--dry-run --format json` shows.
pub fn described<T: Serialize>(task: &str, inputs: &T) -> serde_json::Value {
    // Through the pretty text serializer that `--format json` already instantiates for every
    // type, not `to_value` (a second serializer per task type, seconds of xtask's cold build).
    let text = serde_json::to_string_pretty(inputs).unwrap_or_default();
    let mut value: serde_json::Value = serde_json::from_str(&text).unwrap_or(serde_json::Value::Null);
    match &mut value {
        serde_json::Value::Object(map) => {
            map.insert("task".into(), task.into());
            value
        }
        _ => serde_json::json!({ "task": task, "inputs": value }),
    }
}

fn serialize_task<S: serde::Serializer>(task: &Arc<dyn Task>, s: S) -> Result<S::Ok, S::Error> {
    task.describe().serialize(s)
}

#[derive(Clone, Debug, Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Action {
    Exec {
        program: String,
        args: Vec<String>,
        /// Variables set for the child, on top of the cleaned environment.
        env: BTreeMap<String, String>,
        cwd: PathBuf,
    },
    Internal(#[serde(serialize_with = "serialize_task")] Arc<dyn Task>),
}

#[derive(Clone, Debug, Serialize)]
pub struct Step {
    /// Short stable name (`lint`, `test`): used in tables, `--skip` and workflow job ids.
    pub name: String,
    pub description: String,
    pub action: Action,
    /// Tools that must be on PATH for this step; checked just before it runs.
    #[serde(serialize_with = "serialize_tools")]
    pub requires: Vec<&'static Tool>,
    pub lane: Lane,
    /// Runs even when an earlier step failed (cleanup, e.g. stopping test servers).
    pub always: bool,
    /// What a person types to rerun exactly this step.
    pub reproduce: String,
}

fn serialize_tools<S: serde::Serializer>(tools: &[&'static Tool], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(tools.iter().map(|t| t.name))
}

impl Step {
    pub fn exec<S: AsRef<str>>(
        name: &str,
        description: &str,
        program: &str,
        args: impl IntoIterator<Item = S>,
        cwd: &Path,
    ) -> Step {
        let args: Vec<String> = args.into_iter().map(|a| a.as_ref().to_string()).collect();
        let reproduce = shell_line(&BTreeMap::new(), display_program(program), &args);
        Step {
            name: name.to_string(),
            description: description.to_string(),
            action: Action::Exec { program: program.to_string(), args, env: BTreeMap::new(), cwd: cwd.to_path_buf() },
            requires: Vec::new(),
            lane: Lane::Serial,
            always: false,
            reproduce,
        }
    }

    /// A `cargo` invocation through `$CARGO`, shown to people as plain `cargo`.
    pub fn cargo<S: AsRef<str>>(name: &str, description: &str, args: impl IntoIterator<Item = S>, cwd: &Path) -> Step {
        Step::exec(name, description, &crate::cargo_program(), args, cwd).requiring(&crate::tools::CARGO)
    }

    pub fn internal(name: &str, description: &str, task: impl Task + 'static, reproduce: &str) -> Step {
        Step {
            name: name.to_string(),
            description: description.to_string(),
            action: Action::Internal(Arc::new(task)),
            requires: Vec::new(),
            lane: Lane::Serial,
            always: false,
            reproduce: reproduce.to_string(),
        }
    }

    pub fn requiring(mut self, tool: &'static Tool) -> Step {
        if !self.requires.iter().any(|t| t.name == tool.name) {
            self.requires.push(tool);
        }
        self
    }

    pub fn with_env(mut self, key: &str, value: &str) -> Step {
        if let Action::Exec { env, program, args, .. } = &mut self.action {
            env.insert(key.to_string(), value.to_string());
            self.reproduce = shell_line(env, display_program(program), args);
        }
        self
    }

    pub fn always(mut self) -> Step {
        self.always = true;
        self
    }

    pub fn in_background(mut self) -> Step {
        self.lane = Lane::Background;
        self
    }

    /// Override what people are told to run, when the step is the inside of a friendlier command.
    pub fn reproduced_by(mut self, command: &str) -> Step {
        self.reproduce = command.to_string();
        self
    }

    /// The command line as it will run (full program path, env prefix), for "running:" lines.
    pub fn command_line(&self) -> String {
        match &self.action {
            Action::Exec { program, args, env, .. } => shell_line(env, display_program(program), args),
            Action::Internal(task) => format!("(built-in) {}", task.summary()),
        }
    }
}

/// `$CARGO` is usually an absolute toolchain path; people know it as `cargo`.
pub fn display_program(program: &str) -> &str {
    if program == crate::cargo_program() { "cargo" } else { program }
}

/// Quote a command line the way a POSIX shell would read it back.
pub fn shell_line(env: &BTreeMap<String, String>, program: &str, args: &[String]) -> String {
    let mut out = String::new();
    for (k, v) in env {
        let _ = write!(out, "{k}={} ", shell_quote(v));
    }
    out.push_str(&shell_quote(program));
    for a in args {
        out.push(' ');
        out.push_str(&shell_quote(a));
    }
    out
}

pub use xtask_kit::process::shell_quote;

#[derive(Clone, Debug, Default, Serialize)]
pub struct Plan {
    pub command: String,
    /// Lines that explain choices made while planning (e.g. which packages `--changed` picked).
    pub notes: Vec<String>,
    pub steps: Vec<Step>,
}

impl Plan {
    pub fn new(command: &str) -> Plan {
        Plan { command: command.to_string(), ..Plan::default() }
    }

    pub fn push(&mut self, step: Step) {
        self.steps.push(step);
    }

    pub fn extend(&mut self, other: Plan) {
        self.notes.extend(other.notes);
        self.steps.extend(other.steps);
    }

    /// The dry-run text: one numbered line per step with the exact command.
    pub fn render_human(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "plan for `cargo xtask {}` ({} steps):", self.command, self.steps.len());
        for note in &self.notes {
            let _ = writeln!(out, "  note: {note}");
        }
        for (i, step) in self.steps.iter().enumerate() {
            let lane = if step.lane == Lane::Background { " [background]" } else { "" };
            let _ = writeln!(out, "  {:>2}. {}{lane}: {}", i + 1, step.name, step.description);
            let _ = writeln!(out, "      $ {}", step.command_line());
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_round_trips_awkward_arguments() {
        assert_eq!(shell_quote("plain-arg"), "plain-arg");
        assert_eq!(shell_quote("two words"), "'two words'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote(""), "''");
    }

    #[test]
    fn env_is_part_of_the_reproduce_line() {
        let step = Step::exec("t", "d", "tool", ["a b"], Path::new("/")).with_env("K", "v 1");
        assert_eq!(step.reproduce, "K='v 1' tool 'a b'");
    }
}
