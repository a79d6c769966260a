//! `cargo xtask secrets`: fail when a git-tracked file holds a credential, showing it redacted.
//!
//! Built-in rules always run; trivy's secret scanner runs too when it is installed (and must be
//! when `CI` is set, so CI never silently scans with half its rules). Accepted findings go in
//! `.scan-ignore.toml` like every scanner's, each with a reason and an expiry date; an expired
//! entry fails the run, as it fails `scan`'s gate.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};

use crate::plan::{Plan, Step};
use crate::runner::Format;
use crate::scan::ignore;
use crate::secrets::{self, Finding};
use crate::tools::{GIT, TRIVY};
use crate::{Ctx, EXIT_FAILED, UsageError};

/// Scan every git-tracked file for credentials (built-in rules plus trivy when installed).
#[derive(clap::Args, Debug, Clone, Default)]
pub struct Args {
    /// Scan this git repository instead of the workspace.
    #[arg(long, value_name = "DIR")]
    pub repo: Option<PathBuf>,
    /// Skip trivy even when it is installed (built-in rules only).
    #[arg(long)]
    pub no_trivy: bool,
}

/// How `ci` runs this command: as its own process, beside the cargo steps.
pub fn ci_step(ctx: &Ctx) -> Step {
    let exe = std::env::current_exe().map(|p| p.display().to_string()).unwrap_or_else(|_| "xtask".into());
    // The child refuses installs when this run does.
    let args: &[&str] = if ctx.may_install { &["secrets"] } else { &["--no-install", "secrets"] };
    Step::exec("secrets", "secret scan of tracked files (built-in rules + trivy)", &exe, args, &ctx.root)
        .requiring(&GIT)
        .in_background()
        .reproduced_by("cargo xtask secrets")
}

pub fn run(ctx: &Ctx, args: &Args) -> Result<ExitCode> {
    let repo = args.repo.clone().unwrap_or_else(|| ctx.root.clone());
    let entries = ignore::load(&repo)?;
    if !args.no_trivy {
        ctx.install_now(&TRIVY)?;
    }
    let trivy = if args.no_trivy { None } else { TRIVY.locate() };
    if trivy.is_none() && !args.no_trivy && crate::in_ci() {
        return Err(UsageError(format!(
            "CI is set but trivy is not installed, so only half the secret rules would run; install: {} (or pass --no-trivy knowingly)",
            TRIVY.install_hint
        ))
        .into());
    }

    if ctx.dry_run {
        let mut plan = Plan::new("secrets");
        plan.notes.push(format!(
            "built-in rules over `git ls-files` in {}; ignore file: {}",
            repo.display(),
            ignore::FILE_NAME
        ));
        if let Some(t) = &trivy {
            plan.push(Step::exec(
                "secrets:trivy",
                "trivy secret scanner",
                &t.display().to_string(),
                secrets::trivy::args(&repo),
                &repo,
            ));
        } else if !args.no_trivy && ctx.will_have(&TRIVY) {
            // Installed before the scan when it really runs; the plan shows that install.
            let step = Step::exec("secrets:trivy", "trivy secret scanner", "trivy", secrets::trivy::args(&repo), &repo);
            plan.push(step.requiring(&TRIVY));
        } else if !args.no_trivy {
            plan.notes.push(format!("trivy not installed: built-in rules only ({})", TRIVY.install_hint));
        }
        return ctx.execute(&plan);
    }

    let tracked =
        crate::git::tracked_files(&repo).with_context(|| format!("listing tracked files in {}", repo.display()))?;
    let (mut findings, scanned) = secrets::scan_files(&repo, &tracked)?;
    let trivy_ran = match &trivy {
        Some(path) => {
            let tracked: BTreeSet<String> = tracked.iter().cloned().collect();
            secrets::merge(&mut findings, secrets::trivy::run(path, &repo, &tracked)?);
            true
        }
        None => {
            if !args.no_trivy {
                ctx.ui.info(&format!(
                    "{} trivy not installed: only the built-in rules ran (install: {})",
                    ctx.ui.paint("33", "warning:"),
                    TRIVY.install_hint
                ));
            }
            false
        }
    };
    let applied = ignore::apply_by(findings, Finding::to_finding, &entries, crate::date::today());
    // Entries for other scanners' findings are not this scan's to call unused.
    for e in applied.unused.iter().filter(|e| secrets::rules::is_rule(&e.id)) {
        ctx.ui.info(&format!(
            "warning: {} entry {} matched nothing; remove it if it is obsolete",
            ignore::FILE_NAME,
            e.id
        ));
    }
    let expired: Vec<&ignore::Entry> = applied.expired.iter().filter(|e| secrets::rules::is_rule(&e.id)).collect();
    for e in &expired {
        ctx.ui.info(&format!(
            "{} {} entry {} expired on {}: look at it again (renew `expires` with a reason, or fix the finding)",
            ctx.ui.paint("1;31", "error:"),
            ignore::FILE_NAME,
            e.id,
            e.expires
        ));
    }
    report(ctx, &applied.kept, applied.ignored.len(), scanned, trivy_ran);
    Ok(if applied.kept.is_empty() && expired.is_empty() { ExitCode::SUCCESS } else { ExitCode::from(EXIT_FAILED) })
}

fn report(ctx: &Ctx, kept: &[Finding], ignored: usize, scanned: usize, trivy_ran: bool) {
    if ctx.ui.format == Format::Json {
        let doc = serde_json::json!({
            "ok": kept.is_empty(),
            "files_scanned": scanned,
            "trivy": trivy_ran,
            "ignored": ignored,
            "findings": kept,
        });
        println!("{}", serde_json::to_string_pretty(&doc).unwrap_or_default());
        return;
    }
    for f in kept {
        println!(
            "{}:{}:{}  {:<8}  {}  {}  [{}; found by {}]",
            f.path,
            f.line,
            f.column,
            f.severity.as_str(),
            f.rule,
            f.redacted,
            f.fingerprint,
            f.found_by.join("+")
        );
    }
    let scanners = if trivy_ran { "built-in rules + trivy" } else { "built-in rules" };
    let verdict = if kept.is_empty() {
        ctx.ui.paint("32", "no secrets found")
    } else {
        ctx.ui.paint("1;31", &format!("{} secret(s) found", kept.len()))
    };
    println!("secrets: {verdict} in {scanned} tracked files ({scanners}; {ignored} ignored by {})", ignore::FILE_NAME);
    if !kept.is_empty() {
        println!(
            "fix: remove the value and rotate it (it is in git history); if it is not a secret, add an entry with a reason to {}",
            ignore::FILE_NAME
        );
    }
}
