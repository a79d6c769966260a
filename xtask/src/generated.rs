//! Files xtask renders and the repository checks in (the GitHub workflows, the SLO alert rules):
//! written when they are stale, compared with a fresh rendering by `--check`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use serde::Serialize;

use crate::Ctx;
use crate::plan::Task;

/// One rendered file: its path relative to the repository root, and its content.
pub type Rendered = (String, String);

/// Write every stale file (with `--dry-run`: print them instead), saying which were current;
/// with `--format json`, one object `{ key: [{path, up_to_date, written|content}] }` on stdout.
pub fn write(ctx: &Ctx, files: &[Rendered], key: &str) -> Result<ExitCode> {
    let json = ctx.ui.format == crate::runner::Format::Json;
    let mut reports = Vec::new();
    for (rel, wanted) in files {
        let path = ctx.root.join(rel);
        let up_to_date = std::fs::read_to_string(&path).unwrap_or_default() == *wanted;
        let mut report = serde_json::json!({ "path": rel, "up_to_date": up_to_date });
        if ctx.dry_run {
            if json {
                report["content"] = wanted.as_str().into();
            } else {
                print!("{wanted}");
            }
        } else if !up_to_date {
            std::fs::create_dir_all(path.parent().context("a generated file's directory")?)?;
            std::fs::write(&path, wanted).with_context(|| format!("writing {}", path.display()))?;
            report["written"] = true.into();
            if !json {
                println!("wrote {rel}");
            }
        } else if !json {
            println!("{rel} is up to date");
        }
        reports.push(report);
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&serde_json::json!({ key: reports }))?);
    }
    Ok(ExitCode::SUCCESS)
}

/// The checked-in files are what xtask renders (`--check`).
#[derive(Clone, Debug, Serialize)]
pub struct Current {
    /// The task's name in `--format json` plans.
    pub task: &'static str,
    /// The command that renders them, named in the failure.
    pub regenerate: &'static str,
    pub root: PathBuf,
    /// Described by their paths (the contents are what `--dry-run` of the command prints).
    #[serde(serialize_with = "paths_only")]
    pub files: Vec<Rendered>,
}

fn paths_only<S: serde::Serializer>(files: &[Rendered], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(files.iter().map(|(path, _)| path))
}

impl Task for Current {
    fn summary(&self) -> String {
        let paths: Vec<&str> = self.files.iter().map(|(p, _)| p.as_str()).collect();
        format!("compare {} with what `{}` renders", paths.join(", "), self.regenerate)
    }
    fn describe(&self) -> serde_json::Value {
        crate::plan::described(self.task, self)
    }
    fn run(&self, log: &mut dyn std::io::Write) -> Result<()> {
        let stale: Vec<&str> = self
            .files
            .iter()
            .filter(|(path, text)| std::fs::read_to_string(self.root.join(path)).unwrap_or_default() != *text)
            .map(|(path, _)| path.as_str())
            .collect();
        if !stale.is_empty() {
            bail!("{} out of date; run `{}` and commit the result", stale.join(", "), self.regenerate);
        }
        writeln!(log, "{} generated file(s) up to date", self.files.len())?;
        Ok(())
    }
}
