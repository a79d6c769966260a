//! k8s-policy: checks rendered Kubernetes manifests offline, before anything touches a
//! cluster: every document parses into the pinned API version's types (unknown fields are
//! errors) and holds to our policy. `cargo xtask k8s validate` and `cargo xtask deploy` run it.
//!
//! Exit codes: 0 every render passes, 1 violations, 2 a render could not be read.

mod policy;
mod schema;

use clap::{Parser, Subcommand};
use std::path::PathBuf;

#[derive(Parser)]
#[command(name = "k8s-policy", version, about = "Offline schema and policy checks for rendered Kubernetes manifests")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Check renders: `--env prod=target/xtask/k8s/prod.yaml` (repeatable).
    Check {
        /// ENV=FILE: a rendered overlay and the environment it is for (`dev` is held to less).
        #[arg(long = "env", value_name = "ENV=FILE", required = true)]
        envs: Vec<String>,
        /// Require images pinned by digest (what deploy applies).
        #[arg(long)]
        require_digests: bool,
        /// SERVICE=DEP,DEP: what a service's metadata says it needs (repeatable); each must be
        /// reachable under the render's NetworkPolicies (rule `needs-egress`).
        #[arg(long = "needs", value_name = "SERVICE=DEPS")]
        needs: Vec<String>,
        #[arg(long, value_enum, default_value = "human")]
        format: Format,
    },
    /// List the rules.
    Rules,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Format {
    Human,
    Json,
}

#[derive(serde::Serialize)]
struct Finding {
    env: String,
    object: String,
    rule: String,
    message: String,
}

fn main() {
    let cli = Cli::parse();
    let code = match cli.command {
        Command::Rules => {
            for (id, what) in policy::rules() {
                println!("{id:<16} {what}");
            }
            0
        }
        Command::Check { envs, require_digests, needs, format } => {
            match check(&envs, require_digests, &needs, format) {
                Ok(code) => code,
                Err(message) => {
                    eprintln!("error: {message}");
                    2
                }
            }
        }
    };
    std::process::exit(code);
}

/// `--needs api=postgres,redis` -> {api: [postgres, redis]}.
fn parse_needs(specs: &[String]) -> Result<std::collections::BTreeMap<String, Vec<String>>, String> {
    let mut needs = std::collections::BTreeMap::new();
    for spec in specs {
        let (service, deps) =
            spec.split_once('=').ok_or_else(|| format!("--needs `{spec}` needs SERVICE=DEP[,DEP...]"))?;
        let deps: Vec<String> = deps.split(',').map(str::trim).filter(|d| !d.is_empty()).map(str::to_string).collect();
        if service.is_empty() || needs.insert(service.to_string(), deps).is_some() {
            return Err(format!("--needs `{spec}`: name each service once, as SERVICE=DEP[,DEP...]"));
        }
    }
    Ok(needs)
}

fn check(envs: &[String], require_digests: bool, needs: &[String], format: Format) -> Result<i32, String> {
    let needs = parse_needs(needs)?;
    let mut findings = Vec::new();
    let mut summary = Vec::new();
    for spec in envs {
        let (env, file) = spec.split_once('=').ok_or_else(|| format!("--env `{spec}` needs ENV=FILE"))?;
        let path = PathBuf::from(file);
        let text =
            std::fs::read_to_string(&path).map_err(|e| format!("{}: cannot read the render: {e}", path.display()))?;
        let (docs, errors) = schema::parse(&text);
        let ctx = policy::Context { production_like: env != "dev", require_digests };
        let before = findings.len();
        for (object, message) in errors {
            findings.push(Finding { env: env.into(), object, rule: "schema".into(), message });
        }
        for v in policy::check(&docs, ctx, &needs) {
            findings.push(Finding { env: env.into(), object: v.object, rule: v.rule.into(), message: v.message });
        }
        summary.push((env.to_string(), docs.len(), findings.len() - before));
    }
    match format {
        Format::Json => println!("{}", serde_json::to_string_pretty(&findings).map_err(|e| e.to_string())?),
        Format::Human => {
            for f in &findings {
                println!("{}: {}: [{}] {}", f.env, f.object, f.rule, f.message);
            }
            for (env, objects, problems) in &summary {
                let verdict = if *problems == 0 { "ok".to_string() } else { format!("{problems} violation(s)") };
                println!(
                    "{env}: {objects} objects checked against Kubernetes 1.33 types and {} rules: {verdict}",
                    policy::rules().len()
                );
            }
        }
    }
    Ok(if findings.is_empty() { 0 } else { 1 })
}
