//! `cargo xtask doctor`: which tools this machine has, their versions, and what each is needed for.

use std::process::ExitCode;

use anyhow::Result;
use serde::Serialize;

use crate::runner::Format;
use crate::tools::{ALL, Requirement, Tool};
use crate::{Ctx, EXIT_FAILED};

/// List every tool xtask uses: found or not, version, whether it meets the pin, who needs it.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct Args {}

#[derive(Serialize)]
struct ToolReport {
    name: &'static str,
    found: bool,
    path: Option<String>,
    version: Option<String>,
    wanted: String,
    ok: bool,
    needed_by: &'static [&'static str],
    install_hint: &'static str,
}

fn inspect(tool: &'static Tool) -> ToolReport {
    let path = tool.locate();
    let version = path.as_ref().and_then(|p| tool.version(p).ok());
    let ok = version.as_deref().is_some_and(|v| matches!(tool.check(v), Requirement::Met(_)));
    ToolReport {
        name: tool.name,
        found: path.is_some(),
        path: path.map(|p| p.display().to_string()),
        version,
        wanted: tool.wanted(),
        ok,
        needed_by: tool.needed_by,
        install_hint: tool.install_hint,
    }
}

pub fn run(ctx: &Ctx, _args: &Args) -> Result<ExitCode> {
    let reports: Vec<ToolReport> = ALL.iter().map(|t| inspect(t)).collect();
    let compose = crate::tools::compose_v2();
    // Tools every engineer needs for `cargo xtask ci`; the rest only matter for their commands.
    let core_missing: Vec<&str> =
        reports.iter().filter(|r| !r.ok && r.needed_by.contains(&"ci")).map(|r| r.name).collect();

    if ctx.ui.format == Format::Json {
        let doc = serde_json::json!({
            "ok": core_missing.is_empty(),
            "tools": reports,
            "docker_compose_v2": compose,
        });
        println!("{}", serde_json::to_string_pretty(&doc)?);
    } else {
        let w = reports.iter().map(|r| r.name.len()).max().unwrap_or(4);
        println!("{:<w$}  {:<7}  {:<10}  {:<10}  {:<55}  path", "tool", "status", "version", "wanted", "needed by");
        for r in &reports {
            let status = match (r.found, r.ok) {
                (false, _) => ctx.ui.paint("1;31", "missing"),
                (true, false) => ctx.ui.paint("33", "wrong  "),
                (true, true) => ctx.ui.paint("32", "ok     "),
            };
            println!(
                "{:<w$}  {status}  {:<10}  {:<10}  {:<55}  {}",
                r.name,
                r.version.as_deref().unwrap_or("-"),
                r.wanted,
                r.needed_by.join(", "),
                r.path.as_deref().unwrap_or("-")
            );
        }
        let v2 =
            compose.as_deref().map_or("not available (dev uses docker-compose v1)".to_string(), |v| format!("ok {v}"));
        println!("docker compose (v2 plugin): {v2}");
        for r in reports.iter().filter(|r| !r.ok) {
            println!("  {}: {}", r.name, r.install_hint);
        }
        if core_missing.is_empty() {
            println!("doctor: everything `cargo xtask ci` needs is here");
        } else {
            println!(
                "doctor: `cargo xtask ci` cannot pass until these are fixed: {} (try `cargo xtask setup`)",
                core_missing.join(", ")
            );
        }
    }
    Ok(if core_missing.is_empty() { ExitCode::SUCCESS } else { ExitCode::from(EXIT_FAILED) })
}
