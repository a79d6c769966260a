//! `cargo xtask scan`: one security gate, one combined report, one exit code.
//!
//! Scans: cargo-deny (advisories and policy), the built-in secret rules, `trivy fs` (secrets, and
//! vulnerabilities in Cargo.lock when trivy has a DB), `trivy config` on infra/ (Dockerfiles) and
//! on every **rendered** kustomize overlay (trivy cannot read overlays), the built-in compose
//! checks (trivy has no compose scanner), `trivy image` on each
//! image in the build manifest (secrets, image-config misconfigurations, vulnerabilities of the
//! crates cargo-auditable embedded) plus a CycloneDX SBOM per image.
//!
//! Every scanner writes its report under `target/xtask/scan/`; the last step merges them, applies
//! `.scan-ignore.toml`, gates on `--severity`, prints one table and writes JSON and SARIF.
//! Without a vulnerability DB (offline), vulnerability scanning is reported as not run, loudly,
//! and fails the gate under `--require-vuln-db`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use crate::commands::image;
use crate::images::BuildManifest;
use crate::plan::{Plan, Step, Task};
use crate::process::Cmd;
use crate::runner::Format;
use crate::scan::{self, Finding, ScannerStatus, Severity, ignore};
use crate::tools::{CARGO_DENY, TRIVY};
use crate::{Ctx, UsageError};

/// The scans `--skip` can leave out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scan {
    /// cargo-deny: advisories, bans, licences, sources.
    Deny,
    /// The built-in secret rules over git-tracked files.
    Secrets,
    /// `trivy fs`: secrets, and Cargo.lock vulnerabilities when a DB exists.
    Fs,
    /// `trivy config` on Dockerfiles under infra/ and rendered kustomize overlays, and the
    /// built-in compose-file checks.
    Config,
    /// `trivy image` and an SBOM for every image in target/xtask/images.json.
    Images,
}

/// Scan sources, config and images; gate on severity; write one table, JSON and SARIF.
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// Severities that fail the gate (comma list of UNKNOWN, LOW, MEDIUM, HIGH, CRITICAL).
    #[arg(long, default_value = "HIGH,CRITICAL")]
    pub severity: String,
    /// Fail when trivy has no vulnerability DB instead of reporting vulnerability scans as not run.
    #[arg(long, env = "XTASK_REQUIRE_VULN_DB")]
    pub require_vuln_db: bool,
    /// Never try to download trivy's vulnerability DB; use it only if it is already cached.
    #[arg(long)]
    pub offline: bool,
    /// Leave out a scan (repeatable).
    #[arg(long, value_enum, value_name = "SCAN")]
    pub skip: Vec<Scan>,
    /// Scan another checkout of this repository (its sources, infra/ and ignore file).
    #[arg(long, value_name = "PATH")]
    pub repo: Option<PathBuf>,
    /// Local advisory-db copy for cargo-deny (see `cargo xtask deny`).
    #[arg(long, value_name = "PATH", env = "XTASK_ADVISORY_DB")]
    pub advisory_db: Option<PathBuf>,
}

impl Default for Args {
    fn default() -> Args {
        Args {
            severity: "HIGH,CRITICAL".into(),
            require_vuln_db: false,
            offline: false,
            skip: Vec::new(),
            repo: None,
            advisory_db: None,
        }
    }
}

/// Run a scanner and keep the stream that carries its report; its exit code means "findings",
/// which is the report step's business, unless the report never appears.
#[derive(Clone, Debug, Serialize)]
pub struct Capture {
    pub program: String,
    pub args: Vec<String>,
    pub cwd: PathBuf,
    pub stdout_to: Option<PathBuf>,
    pub stderr_to: Option<PathBuf>,
    /// Exit codes that still mean "the scanner ran" (cargo-deny's are a bitset of failed checks).
    pub accept: Vec<i32>,
}

/// Find out whether trivy has a vulnerability DB, fetching one unless offline.
#[derive(Clone, Debug, Serialize)]
pub struct VulnDb {
    pub cache_dir: PathBuf,
    pub state: PathBuf,
    pub try_download: bool,
}

/// One trivy run; `vuln` is added to the scanners only if the DB probe found a DB.
#[derive(Clone, Debug, Serialize)]
pub struct TrivyRun {
    pub args: Vec<String>,
    pub scanners: Vec<String>,
    pub wants_vuln: bool,
    pub vuln_state: PathBuf,
    pub out: PathBuf,
    pub cwd: PathBuf,
}

/// Where one scanner's report is and how to read it.
#[derive(Clone, Debug, Serialize)]
pub struct Input {
    pub source: String,
    pub format: InputFormat,
    pub path: PathBuf,
    /// Does this scan include vulnerabilities (so a missing DB is worth saying)?
    pub vuln: bool,
}

#[derive(Clone, Debug, Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum InputFormat {
    DenyNdjson,
    /// Our own findings JSON (the built-in secret scan, and checks xtask does itself).
    Findings,
    /// Trivy JSON; target paths get this prefix (trivy reports them relative to what it scanned).
    Trivy {
        prefix: String,
    },
    /// The list of per-image trivy reports `scan:images` wrote (one input per image).
    ImageIndex,
}

/// Scan every image the build manifest records, when the step runs.
#[derive(Clone, Debug, Serialize)]
pub struct ImageScans {
    pub manifest: PathBuf,
    pub out: PathBuf,
    pub sbom_dir: PathBuf,
    pub vuln_state: PathBuf,
    /// Under CI, no recorded image is a failure (the image stage should have made them).
    pub require_images: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct IndexedReport {
    source: String,
    path: PathBuf,
    prefix: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct ReportTask {
    pub repo: PathBuf,
    pub out_dir: PathBuf,
    pub inputs: Vec<Input>,
    pub gate: BTreeSet<Severity>,
    pub require_vuln_db: bool,
    pub vuln_state: PathBuf,
    /// Notes from planning that belong in the report (e.g. "no images built").
    pub not_run: Vec<ScannerStatus>,
    pub image_sources: BTreeMap<String, String>,
}

/// The combined report, as written to `target/xtask/scan/report.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ScanReport {
    pub schema: u32,
    pub gate: Vec<Severity>,
    pub passed: bool,
    pub vuln_db: String,
    pub scanners: Vec<ScannerStatus>,
    pub findings: Vec<Finding>,
    pub ignored: Vec<IgnoredFinding>,
    /// Why the gate failed, one line each.
    pub blocking: Vec<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct IgnoredFinding {
    pub finding: Finding,
    pub reason: String,
}

pub fn out_dir(root: &Path) -> PathBuf {
    crate::target_dir(root).join("xtask/scan")
}

/// trivy's cache (its `--cache-dir` default), where the vulnerability DB lives.
fn trivy_cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("TRIVY_CACHE_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir)
        .join("trivy")
}

fn trivy_program() -> String {
    TRIVY.locate().map(|p| p.display().to_string()).unwrap_or_else(|| "trivy".into())
}

/// Flags every trivy run gets: no progress bars, the checks bundled with the pinned trivy.
fn trivy_common() -> Vec<String> {
    ["--quiet", "--skip-check-update", "--format", "json"].map(String::from).to_vec()
}

pub fn run(ctx: &Ctx, args: &Args) -> Result<ExitCode> {
    let plan = plan(ctx, args)?;
    if ctx.dry_run {
        return ctx.execute(&plan);
    }
    // The runner's own report stays human (on stderr); stdout carries the scan's result.
    let ui = crate::runner::Ui { format: Format::Human, ..ctx.ui.clone() };
    let plan = ctx.with_installs(&plan);
    let report = crate::runner::run(&plan, &ui, &crate::runner::Options { keep_going: true, quiet: false });
    let out = out_dir(&ctx.root);
    match ctx.ui.format {
        Format::Human => {
            crate::runner::print_report(&ui, &report);
            if let Ok(bytes) = std::fs::read(out.join("report.json"))
                && let Ok(scan) = serde_json::from_slice::<ScanReport>(&bytes)
            {
                print!("{}", render_table(&scan));
            }
        }
        Format::Json => print_file(&out.join("report.json"))?,
        Format::Sarif => print_file(&out.join("report.sarif"))?,
    }
    Ok(if report.ok { ExitCode::SUCCESS } else { ExitCode::from(crate::EXIT_FAILED) })
}

fn print_file(path: &Path) -> Result<()> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("the scan wrote no {} (see the steps above)", path.display()))?;
    println!("{}", text.trim_end());
    Ok(())
}

pub fn plan(ctx: &Ctx, args: &Args) -> Result<Plan> {
    let gate = scan::parse_severities(&args.severity).map_err(UsageError)?;
    let repo = match &args.repo {
        Some(r) => r.canonicalize().map_err(|e| UsageError(format!("--repo {}: {e}", r.display())))?,
        None => ctx.root.clone(),
    };
    // A bad ignore file is a configuration error: refuse before scanning anything.
    ignore::load(&repo)?;
    let skip: BTreeSet<Scan> = args.skip.iter().copied().collect();
    let out = out_dir(&ctx.root);
    let mut plan = Plan::new("scan");
    let mut inputs = Vec::new();
    let mut not_run = Vec::new();
    let vuln_state = out.join("vuln-db.json");
    let in_ci = crate::in_ci();
    let trivy_needed = [Scan::Fs, Scan::Config, Scan::Images].iter().any(|s| !skip.contains(s));
    let trivy = ctx.will_have(&TRIVY);
    if trivy_needed && !trivy && in_ci {
        return Err(anyhow::anyhow!("CI is set but trivy is not installed; install: {}", TRIVY.install_hint));
    }

    if trivy_needed && trivy {
        plan.push(
            Step::internal(
                "scan:vuln-db",
                "find trivy's vulnerability DB (download it unless --offline)",
                VulnDb { cache_dir: trivy_cache_dir(), state: vuln_state.clone(), try_download: !args.offline },
                "trivy image --download-db-only",
            )
            .requiring(&TRIVY),
        );
    }

    if !skip.contains(&Scan::Deny) {
        let deny_args = crate::commands::deny::Args { advisory_db: args.advisory_db.clone(), ..Default::default() };
        let deny = crate::commands::deny::steps(ctx, &deny_args, crate::commands::deny::DenyOutput::Json)?;
        plan.extend(deny.prep);
        let cargo_args = deny.cargo_args;
        let path = out.join("deny.ndjson");
        plan.push(capture_step(
            "scan:deny",
            "cargo-deny: advisories, bans, licences, sources (JSON)",
            Capture {
                program: crate::cargo_program(),
                args: cargo_args,
                cwd: ctx.root.clone(),
                stdout_to: None,
                stderr_to: Some(path.clone()),
                accept: (0..16).collect(),
            },
            "cargo xtask deny",
            &[&crate::tools::CARGO, &CARGO_DENY],
        ));
        inputs.push(Input { source: "deny".into(), format: InputFormat::DenyNdjson, path, vuln: true });
    }

    if !skip.contains(&Scan::Secrets) {
        let path = out.join("secrets.json");
        let task = SecretScan { repo: repo.clone(), out: path.clone() };
        let about = "built-in secret rules over git-tracked files";
        builtin_scan("secrets", about, task, path, "cargo xtask secrets --no-trivy", &mut plan, &mut inputs);
    }

    let trivy_step = |name: &str, description: &str, run: TrivyRun, reproduce: &str| {
        Step::internal(name, description, run, reproduce).requiring(&TRIVY)
    };
    let skipped_trivy = |source: &str| ScannerStatus {
        source: source.into(),
        status: format!("not run: trivy not installed ({})", TRIVY.install_hint),
        findings: 0,
    };

    if !skip.contains(&Scan::Fs) {
        if trivy {
            let path = out.join("trivy-fs.json");
            let mut args = vec!["fs".to_string()];
            args.extend(trivy_common());
            args.extend(["--skip-dirs", "target", "--skip-dirs", ".git"].map(String::from));
            args.extend(["--output".into(), path.display().to_string(), repo.display().to_string()]);
            plan.push(trivy_step(
                "scan:trivy-fs",
                "trivy fs: secrets, and Cargo.lock vulnerabilities with a DB",
                TrivyRun {
                    args,
                    scanners: vec!["secret".into()],
                    wants_vuln: true,
                    vuln_state: vuln_state.clone(),
                    out: path.clone(),
                    cwd: repo.clone(),
                },
                "cargo xtask scan --skip deny --skip secrets --skip config --skip images",
            ));
            inputs.push(Input {
                source: "trivy-fs".into(),
                format: InputFormat::Trivy { prefix: String::new() },
                path,
                vuln: true,
            });
        } else {
            not_run.push(skipped_trivy("trivy-fs"));
        }
    }

    if !skip.contains(&Scan::Config) {
        config_steps(&repo, &out, trivy, &mut plan, &mut inputs, &mut not_run)?;
    }

    let mut image_sources = BTreeMap::new();
    if !skip.contains(&Scan::Images) {
        let ws = ctx.workspace()?;
        for (name, _) in ws.services() {
            image_sources.insert(name.clone(), ws.members[name].dir.join("Cargo.toml").display().to_string());
        }
        if trivy {
            // Which images exist is read when the step runs: in `ci` the image stage makes them.
            let manifest = image::manifest_path(&ws);
            plan.push(
                Step::internal(
                    "scan:images",
                    &format!("trivy image + CycloneDX SBOM for every image in {}", manifest.display()),
                    ImageScans {
                        manifest,
                        out: out.clone(),
                        sbom_dir: image::output_dir(&ws).join("sbom"),
                        vuln_state: vuln_state.clone(),
                        require_images: in_ci,
                    },
                    "cargo xtask scan --skip deny --skip secrets --skip fs --skip config",
                )
                .requiring(&TRIVY),
            );
            inputs.push(Input {
                source: "images".into(),
                format: InputFormat::ImageIndex,
                path: out.join("images-index.json"),
                vuln: true,
            });
        } else {
            not_run.push(skipped_trivy("images"));
        }
    }
    for s in &skip {
        plan.notes.push(format!("scan: {s:?} skipped (--skip)").to_lowercase());
    }

    plan.push(Step::internal(
        "scan:report",
        &format!("merge, apply {}, gate on {}", ignore::FILE_NAME, gate_text(&gate)),
        ReportTask {
            repo,
            out_dir: out,
            inputs,
            gate,
            require_vuln_db: args.require_vuln_db,
            vuln_state,
            not_run,
            image_sources,
        },
        "cargo xtask scan",
    ));
    Ok(plan)
}

fn gate_text(gate: &BTreeSet<Severity>) -> String {
    gate.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(",")
}

pub fn capture_step(
    name: &str,
    description: &str,
    capture: Capture,
    reproduce: &str,
    tools: &[&'static crate::tools::Tool],
) -> Step {
    let mut step = Step::internal(name, description, capture, reproduce);
    for tool in tools {
        step = step.requiring(tool);
    }
    step
}

/// Dockerfiles and compose files under infra/ (not infra/k8s, whose overlays are only
/// meaningful rendered), then every rendered overlay.
/// One `trivy config DIR` run: its report is `<out>/<source>.json`, its findings' paths get `prefix`.
struct ConfigTarget<'a> {
    source: &'a str,
    dir: &'a Path,
    skip_dirs: &'a [&'a str],
    prefix: &'a str,
}

fn trivy_config(
    t: &ConfigTarget<'_>,
    description: &str,
    repo: &Path,
    out: &Path,
    plan: &mut Plan,
    inputs: &mut Vec<Input>,
) {
    let path = out.join(format!("{}.json", t.source));
    let mut args = vec!["config".to_string()];
    args.extend(trivy_common());
    for skip in t.skip_dirs {
        args.extend(["--skip-dirs".into(), skip.to_string()]);
    }
    args.extend(["--output".into(), path.display().to_string(), t.dir.display().to_string()]);
    let run = TrivyRun {
        args,
        scanners: Vec::new(),
        wants_vuln: false,
        vuln_state: out.join("vuln-db.json"),
        out: path.clone(),
        cwd: repo.to_path_buf(),
    };
    plan.push(
        Step::internal(
            &format!("scan:{}", t.source),
            description,
            run,
            "cargo xtask scan --skip deny --skip secrets --skip fs --skip images",
        )
        .requiring(&TRIVY),
    );
    inputs.push(Input {
        source: t.source.into(),
        format: InputFormat::Trivy { prefix: t.prefix.into() },
        path,
        vuln: false,
    });
}

fn config_steps(
    repo: &Path,
    out: &Path,
    trivy: bool,
    plan: &mut Plan,
    inputs: &mut Vec<Input>,
    not_run: &mut Vec<ScannerStatus>,
) -> Result<()> {
    // trivy has no compose scanner; the deployer (which owns the compose model) checks compose
    // files, with or without trivy.
    if repo.join("infra/compose").is_dir() {
        let path = out.join("compose.json");
        let about = "compose-file checks: privileged, host namespaces, Docker socket, capabilities, root, ports, tags";
        let args = ["run", "--locked", "--quiet", "-p", "deployer", "--", "compose-check", "--repo"]
            .map(String::from)
            .into_iter()
            .chain([repo.display().to_string(), "--out".into(), path.display().to_string()]);
        plan.push(
            Step::cargo("scan:compose", about, args, &crate::project_root())
                .reproduced_by("cargo xtask scan --skip deny --skip secrets --skip fs --skip images"),
        );
        inputs.push(Input { source: "compose".into(), format: InputFormat::Findings, path, vuln: false });
    }
    if !trivy {
        not_run.push(ScannerStatus {
            source: "trivy-config".into(),
            status: format!("not run: trivy not installed ({})", TRIVY.install_hint),
            findings: 0,
        });
        return Ok(());
    }
    let infra = repo.join("infra");
    if infra.is_dir() {
        let target = ConfigTarget { source: "trivy-config", dir: &infra, skip_dirs: &["k8s"], prefix: "infra/" };
        trivy_config(&target, "trivy config: Dockerfiles under infra/", repo, out, plan, inputs);
    }
    let overlays = crate::commands::k8s::overlays(repo);
    if overlays.is_empty() {
        return Ok(());
    }
    let rendered = out.join("rendered");
    for overlay in &overlays {
        let to = rendered.join(format!("{overlay}.yaml"));
        plan.push(crate::commands::k8s::render_step(repo, &format!("scan:render:{overlay}"), overlay, &to));
    }
    let target = ConfigTarget { source: "trivy-k8s", dir: &rendered, skip_dirs: &[], prefix: "rendered overlay " };
    trivy_config(&target, "trivy config: rendered overlays", repo, out, plan, inputs);
    Ok(())
}

/// A scan xtask does itself (`task` writes a findings file at `path`), and its report input.
fn builtin_scan(
    source: &str,
    about: &str,
    task: impl Task + 'static,
    path: PathBuf,
    reproduce: &str,
    plan: &mut Plan,
    inputs: &mut Vec<Input>,
) {
    plan.push(Step::internal(&format!("scan:{source}"), about, task, reproduce));
    inputs.push(Input { source: source.into(), format: InputFormat::Findings, path, vuln: false });
}

fn remove_stale(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("removing the previous {}", path.display())),
    }
}

fn ensure_parent(path: &Path) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    Ok(())
}

impl Task for Capture {
    fn summary(&self) -> String {
        let mut line =
            crate::plan::shell_line(&BTreeMap::new(), crate::plan::display_program(&self.program), &self.args);
        if let Some(p) = &self.stdout_to {
            line.push_str(&format!(" > {}", p.display()));
        }
        if let Some(p) = &self.stderr_to {
            line.push_str(&format!(" 2> {}", p.display()));
        }
        line
    }
    fn describe(&self) -> serde_json::Value {
        crate::plan::described("capture", self)
    }
    fn run(&self, log: &mut dyn std::io::Write) -> Result<()> {
        capture(self, log)
    }
}

impl Task for VulnDb {
    fn summary(&self) -> String {
        format!(
            "look for {}/db/trivy.db{}",
            self.cache_dir.display(),
            if self.try_download { ", else trivy image --download-db-only" } else { " (offline)" }
        )
    }
    fn describe(&self) -> serde_json::Value {
        crate::plan::described("probe-vuln-db", self)
    }
    fn run(&self, log: &mut dyn std::io::Write) -> Result<()> {
        probe_vuln_db(self, log)
    }
}

impl Task for TrivyRun {
    fn summary(&self) -> String {
        format!(
            "trivy {} (scanners: {}{})",
            self.args.join(" "),
            if self.scanners.is_empty() { "default".to_string() } else { self.scanners.join(",") },
            if self.wants_vuln { ", +vuln when the DB is there" } else { "" }
        )
    }
    fn describe(&self) -> serde_json::Value {
        crate::plan::described("trivy", self)
    }
    fn run(&self, log: &mut dyn std::io::Write) -> Result<()> {
        run_trivy(self, log)
    }
}

impl Task for ImageScans {
    fn summary(&self) -> String {
        format!(
            "for each image in {}: trivy image --input TAR (secrets, image config, +vuln with a DB) and --format cyclonedx > {}/SERVICE.cdx.json",
            self.manifest.display(),
            self.sbom_dir.display()
        )
    }
    fn describe(&self) -> serde_json::Value {
        crate::plan::described("scan-images", self)
    }
    fn run(&self, log: &mut dyn std::io::Write) -> Result<()> {
        scan_images(self, log)
    }
}

/// The built-in secret rules into a findings file.
#[derive(Clone, Debug, Serialize)]
pub struct SecretScan {
    pub repo: PathBuf,
    pub out: PathBuf,
}

impl Task for SecretScan {
    fn summary(&self) -> String {
        format!("built-in secret rules over git ls-files in {} > {}", self.repo.display(), self.out.display())
    }
    fn describe(&self) -> serde_json::Value {
        crate::plan::described("secret-scan", self)
    }
    fn run(&self, log: &mut dyn std::io::Write) -> Result<()> {
        secret_scan(&self.repo, &self.out, log)
    }
}

impl Task for ReportTask {
    fn summary(&self) -> String {
        format!(
            "merge {} report(s), apply .scan-ignore.toml, write {}/report.{{json,sarif}}",
            self.inputs.len(),
            self.out_dir.display()
        )
    }
    fn describe(&self) -> serde_json::Value {
        crate::plan::described("scan-report", self)
    }
    fn run(&self, log: &mut dyn std::io::Write) -> Result<()> {
        report(self, log)
    }
}

pub fn capture(task: &Capture, log: &mut dyn std::io::Write) -> Result<()> {
    let cmd = Cmd::new(&task.program).args(&task.args).current_dir(&task.cwd);
    for path in [&task.stdout_to, &task.stderr_to].into_iter().flatten() {
        remove_stale(path)?;
        ensure_parent(path)?;
    }
    let out = cmd.output()?;
    if let Some(path) = &task.stdout_to {
        std::fs::write(path, &out.stdout)?;
    } else {
        log.write_all(&out.stdout)?;
    }
    if let Some(path) = &task.stderr_to {
        std::fs::write(path, &out.stderr)?;
    } else {
        log.write_all(&out.stderr)?;
    }
    let code = out.status.code().unwrap_or(-1);
    if !task.accept.contains(&code) {
        if task.stderr_to.is_some() {
            log.write_all(&out.stderr)?;
        }
        bail!("{} exited with {code}", task.program);
    }
    Ok(())
}

#[derive(Serialize, Deserialize)]
struct VulnDbState {
    available: bool,
    detail: String,
}

fn read_vuln_state(path: &Path) -> VulnDbState {
    std::fs::read(path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or(VulnDbState { available: false, detail: "not checked (trivy not run)".into() })
}

pub fn probe_vuln_db(task: &VulnDb, log: &mut dyn std::io::Write) -> Result<()> {
    let db = task.cache_dir.join("db/trivy.db");
    ensure_parent(&task.state)?;
    let mut state = if db.is_file() {
        VulnDbState { available: true, detail: format!("cached at {}", db.display()) }
    } else {
        VulnDbState { available: false, detail: format!("no DB at {}", db.display()) }
    };
    if !state.available && task.try_download {
        let trivy = TRIVY.require()?;
        let args = ["image", "--quiet", "--download-db-only", "--cache-dir"];
        writeln!(log, "$ {} {} {}", trivy.display(), args.join(" "), task.cache_dir.display())?;
        let out = Cmd::new(&trivy).args(args).arg(&task.cache_dir).output()?;
        if out.status.success() && db.is_file() {
            state = VulnDbState { available: true, detail: format!("downloaded to {}", db.display()) };
        } else {
            let why = String::from_utf8_lossy(&out.stderr);
            let why = why.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("no output").trim();
            state.detail = format!("no DB at {} and the download failed: {why}", db.display());
        }
    }
    writeln!(
        log,
        "vulnerability DB: {}",
        if state.available { state.detail.clone() } else { format!("NOT AVAILABLE ({})", state.detail) }
    )?;
    std::fs::write(&task.state, serde_json::to_vec(&state)?)?;
    Ok(())
}

pub fn run_trivy(task: &TrivyRun, log: &mut dyn std::io::Write) -> Result<()> {
    remove_stale(&task.out)?;
    ensure_parent(&task.out)?;
    let mut scanners = task.scanners.clone();
    if task.wants_vuln && read_vuln_state(&task.vuln_state).available {
        scanners.push("vuln".into());
    }
    let trivy = TRIVY.require()?;
    let mut args = task.args.clone();
    if !scanners.is_empty() {
        args.splice(1..1, ["--scanners".to_string(), scanners.join(",")]);
    }
    if scanners.iter().any(|s| s == "vuln") {
        args.splice(1..1, ["--skip-db-update".to_string()]);
    }
    writeln!(log, "$ {}", crate::plan::shell_line(&BTreeMap::new(), &trivy.display().to_string(), &args))?;
    let out = Cmd::new(&trivy).args(&args).current_dir(&task.cwd).output()?;
    log.write_all(&out.stderr)?;
    if !out.status.success() || !task.out.is_file() {
        bail!("trivy exited with {} and wrote no report", out.status.code().unwrap_or(-1));
    }
    Ok(())
}

pub fn scan_images(task: &ImageScans, log: &mut dyn std::io::Write) -> Result<()> {
    let index_path = task.out.join("images-index.json");
    remove_stale(&index_path)?;
    ensure_parent(&index_path)?;
    let manifest = BuildManifest::read(&task.manifest)?;
    if manifest.images.is_empty() {
        let hint = format!("no images recorded in {}; run `cargo xtask image build` first", task.manifest.display());
        if task.require_images {
            bail!("CI is set but {hint}");
        }
        writeln!(log, "warning: {hint}; image scans not run")?;
    }
    std::fs::create_dir_all(&task.sbom_dir)?;
    let mut index = Vec::new();
    for (service, record) in &manifest.images {
        let tar = record.tar.display().to_string();
        let path = task.out.join(format!("image-{service}.json"));
        let mut args = vec!["image".to_string()];
        args.extend(trivy_common());
        args.extend(["--image-config-scanners".into(), "misconfig,secret".into()]);
        args.extend(["--input".into(), tar.clone(), "--output".into(), path.display().to_string()]);
        let run = TrivyRun {
            args,
            scanners: vec!["secret".into()],
            wants_vuln: true,
            vuln_state: task.vuln_state.clone(),
            out: path.clone(),
            cwd: task.out.clone(),
        };
        run_trivy(&run, log).with_context(|| format!("scanning {}", record.image))?;
        index.push(IndexedReport { source: format!("image:{service}"), path, prefix: format!("{}:", record.image) });

        let sbom = task.sbom_dir.join(format!("{service}.cdx.json"));
        let capture_sbom = Capture {
            program: trivy_program(),
            args: ["image", "--quiet", "--format", "cyclonedx", "--input", &tar].map(String::from).to_vec(),
            cwd: task.out.clone(),
            stdout_to: Some(sbom.clone()),
            stderr_to: None,
            accept: vec![0],
        };
        writeln!(log, "$ {} > {}", capture_sbom.args.join(" "), sbom.display())?;
        capture(&capture_sbom, log).with_context(|| format!("SBOM of {}", record.image))?;
        writeln!(log, "{}: scanned; SBOM in {}", record.image, sbom.display())?;
    }
    std::fs::write(&index_path, serde_json::to_vec_pretty(&index)?)?;
    Ok(())
}

pub fn secret_scan(repo: &Path, out: &Path, log: &mut dyn std::io::Write) -> Result<()> {
    remove_stale(out)?;
    ensure_parent(out)?;
    let tracked = crate::git::tracked_files(repo).with_context(|| format!("listing files in {}", repo.display()))?;
    let (findings, scanned) = crate::secrets::scan_files(repo, &tracked)?;
    // Accepted ones are dropped by the report, through the one ignore file, like every scanner's.
    let findings: Vec<Finding> = findings.iter().map(crate::secrets::Finding::to_finding).collect();
    writeln!(log, "{scanned} files scanned, {} finding(s)", findings.len())?;
    std::fs::write(out, serde_json::to_vec_pretty(&findings)?)?;
    Ok(())
}

/// Expand the image index into one input per image (so each has its own scanner line).
fn expand(input: &Input) -> Vec<Input> {
    let InputFormat::ImageIndex = input.format else { return vec![input.clone()] };
    let index: Option<Vec<IndexedReport>> =
        std::fs::read(&input.path).ok().and_then(|bytes| serde_json::from_slice(&bytes).ok());
    match index {
        Some(reports) => reports
            .into_iter()
            .map(|r| Input {
                source: r.source,
                format: InputFormat::Trivy { prefix: r.prefix },
                path: r.path,
                vuln: true,
            })
            .collect(),
        // No index: the step failed; reading the missing file reports it as such.
        None => vec![Input { format: InputFormat::Findings, ..input.clone() }],
    }
}

fn read_input(input: &Input) -> Result<Vec<Finding>> {
    let text = std::fs::read_to_string(&input.path)
        .with_context(|| format!("no report at {} (its step failed or did not run)", input.path.display()))?;
    match &input.format {
        InputFormat::DenyNdjson => scan::deny::findings(&text),
        InputFormat::Findings => serde_json::from_str(&text).context("reading the findings file"),
        InputFormat::ImageIndex => bail!("image index read as a report"),
        InputFormat::Trivy { prefix } => {
            let report = scan::trivy::parse(&text)?;
            Ok(scan::trivy::findings(&report, &input.source, &|t| format!("{prefix}{t}")))
        }
    }
}

/// The gate: why the scan fails, one line per reason (none: it passes). A scanner that failed,
/// an open finding at a gated severity, an expired ignore entry, and (when required) a missing
/// vulnerability DB each block.
fn gate(
    scanners: &[ScannerStatus],
    applied: &ignore::Applied,
    gate: &BTreeSet<Severity>,
    vuln: &VulnDbState,
    require_vuln_db: bool,
) -> Vec<String> {
    let mut blocking = Vec::new();
    for s in scanners.iter().filter(|s| s.failed()) {
        blocking.push(format!("scanner {} {}", s.source, s.status));
    }
    let open = applied.kept.iter().filter(|f| gate.contains(&f.severity)).count();
    if open > 0 {
        blocking.push(format!("{open} finding(s) at {}", gate_text(gate)));
    }
    for e in &applied.expired {
        blocking.push(format!(
            "{} entry {} expired on {}: fix the finding, or renew the entry with a fresh reason",
            ignore::FILE_NAME,
            e.id,
            e.expires
        ));
    }
    if require_vuln_db && !vuln.available {
        blocking.push(format!("--require-vuln-db: vulnerability scans not run: {}", vuln.detail));
    }
    blocking
}

pub fn report(task: &ReportTask, log: &mut dyn std::io::Write) -> Result<()> {
    let vuln = read_vuln_state(&task.vuln_state);
    let mut scanners = task.not_run.clone();
    let mut findings = Vec::new();
    for input in task.inputs.iter().flat_map(expand) {
        let input = &input;
        match read_input(input) {
            Ok(found) => {
                let status = if input.vuln && input.source != "deny" && !vuln.available {
                    "ok (vulnerabilities: not run: no DB)".to_string()
                } else {
                    "ok".to_string()
                };
                scanners.push(ScannerStatus { source: input.source.clone(), status, findings: found.len() });
                findings.extend(found);
            }
            Err(e) => scanners.push(ScannerStatus {
                source: input.source.clone(),
                status: format!("failed: {e:#}"),
                findings: 0,
            }),
        }
    }
    let entries = ignore::load(&task.repo)?;
    let applied = ignore::apply(findings, &entries, crate::date::today());
    let blocking = gate(&scanners, &applied, &task.gate, &vuln, task.require_vuln_db);
    let vuln_line = if vuln.available {
        format!("available ({})", vuln.detail)
    } else {
        format!("not run: no DB ({})", vuln.detail)
    };
    for e in &applied.unused {
        writeln!(log, "warning: {} entry {} matched nothing; remove it if it is obsolete", ignore::FILE_NAME, e.id)?;
    }
    let mut kept = applied.kept;
    kept.sort_by(|a, b| (b.severity, &a.source, &a.id, &a.target).cmp(&(a.severity, &b.source, &b.id, &b.target)));
    let report = ScanReport {
        schema: 1,
        gate: task.gate.iter().copied().collect(),
        passed: blocking.is_empty(),
        vuln_db: vuln_line,
        scanners,
        findings: kept,
        ignored: applied.ignored.into_iter().map(|(finding, reason)| IgnoredFinding { finding, reason }).collect(),
        blocking: blocking.clone(),
    };
    std::fs::create_dir_all(&task.out_dir)?;
    std::fs::write(task.out_dir.join("report.json"), serde_json::to_vec_pretty(&report)?)?;
    let sarif = scan::sarif::render(&report.findings, &task.image_sources);
    std::fs::write(task.out_dir.join("report.sarif"), serde_json::to_vec_pretty(&sarif)?)?;
    writeln!(log, "wrote {} and report.sarif", task.out_dir.join("report.json").display())?;
    if !report.vuln_db.starts_with("available") {
        writeln!(log, "WARNING: vulnerability scanning {}", report.vuln_db)?;
    }
    if !blocking.is_empty() {
        bail!("gate failed: {}", blocking.join("; "));
    }
    Ok(())
}

/// The findings table people read: by severity, then source.
pub fn render_table(report: &ScanReport) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\nscan findings (gate: {}):",
        report.gate.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(",")
    );
    if report.findings.is_empty() {
        let _ = writeln!(out, "  none");
    } else {
        let w_src = report.findings.iter().map(|f| f.source.len()).max().unwrap_or(6).max(6);
        let w_id = report.findings.iter().map(|f| f.id.len()).max().unwrap_or(2).max(2);
        let _ = writeln!(out, "  {:<9} {:<w_src$} {:<w_id$} where / what", "severity", "source", "id");
        for f in &report.findings {
            let gate = if report.gate.contains(&f.severity) { "" } else { " (below gate)" };
            let _ = writeln!(
                out,
                "  {:<9} {:<w_src$} {:<w_id$} {}: {}{gate}",
                f.severity.as_str(),
                f.source,
                f.id,
                f.location(),
                f.title
            );
        }
    }
    if !report.ignored.is_empty() {
        let _ = writeln!(out, "accepted in {} ({}):", ignore::FILE_NAME, report.ignored.len());
        for i in &report.ignored {
            let _ = writeln!(out, "  {} {}: {}", i.finding.id, i.finding.location(), i.reason);
        }
    }
    let _ = writeln!(out, "scanners:");
    for s in &report.scanners {
        let _ = writeln!(out, "  {:<16} {} ({} finding(s))", s.source, s.status, s.findings);
    }
    let _ = writeln!(out, "vulnerability DB: {}", report.vuln_db);
    let verdict = if report.passed { "PASSED".to_string() } else { format!("FAILED: {}", report.blocking.join("; ")) };
    let _ = writeln!(out, "gate: {verdict}");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scan::Kind;

    fn finding(id: &str, severity: Severity) -> Finding {
        Finding {
            source: "trivy-fs".into(),
            kind: Kind::Vulnerability,
            id: id.into(),
            severity,
            title: "t".into(),
            target: "Cargo.lock".into(),
            line: None,
            detail: String::new(),
            fingerprint: None,
        }
    }

    fn entry(id: &str, expires: &str) -> ignore::Entry {
        let expires_day = crate::date::parse_day(expires).expect("a date");
        ignore::Entry {
            id: id.into(),
            target: None,
            fingerprint: None,
            reason: "r".into(),
            expires: expires.into(),
            expires_day,
        }
    }

    fn ok(source: &str) -> ScannerStatus {
        ScannerStatus { source: source.into(), status: "ok".into(), findings: 0 }
    }

    const DB: VulnDbState = VulnDbState { available: true, detail: String::new() };
    fn high() -> BTreeSet<Severity> {
        [Severity::High, Severity::Critical].into()
    }

    #[test]
    fn a_clean_scan_passes_and_findings_below_the_gate_do_not_block() {
        let applied = ignore::apply(vec![finding("CVE-1", Severity::Medium)], &[], 20_000);
        assert_eq!(gate(&[ok("trivy-fs")], &applied, &high(), &DB, true), Vec::<String>::new());
    }

    #[test]
    fn a_gated_finding_blocks_unless_an_unexpired_entry_accepts_it() {
        let found = || vec![finding("CVE-1", Severity::High), finding("CVE-2", Severity::Critical)];
        let open = gate(&[], &ignore::apply(found(), &[], 20_000), &high(), &DB, false);
        assert_eq!(open, ["2 finding(s) at HIGH,CRITICAL".to_string()].to_vec(), "{open:?}");
        let today = crate::date::parse_day("2026-12-03").expect("date");
        let accepted = [entry("CVE-1", "2027-01-01"), entry("CVE-2", "2027-01-01")];
        assert!(gate(&[], &ignore::apply(found(), &accepted, today), &high(), &DB, false).is_empty());
    }

    #[test]
    fn an_expired_ignore_entry_blocks_and_names_itself() {
        let today = crate::date::parse_day("2026-12-03").expect("date");
        let stale = [entry("CVE-1", "2026-11-30")];
        let applied = ignore::apply(vec![finding("CVE-1", Severity::High)], &stale, today);
        let blocking = gate(&[], &applied, &high(), &DB, false);
        assert!(
            blocking.iter().any(|b| b.contains("entry CVE-1 expired on 2026-11-30") && b.contains("renew")),
            "{blocking:?}"
        );
    }

    #[test]
    fn a_failed_scanner_blocks_even_with_no_findings() {
        let failed = ScannerStatus { source: "trivy-config".into(), status: "failed: no report".into(), findings: 0 };
        let blocking = gate(&[ok("deny"), failed], &ignore::apply(Vec::new(), &[], 20_000), &high(), &DB, false);
        assert_eq!(blocking, ["scanner trivy-config failed: no report".to_string()].to_vec());
    }

    #[test]
    fn a_missing_vulnerability_db_blocks_only_when_required() {
        let none = VulnDbState { available: false, detail: "offline".into() };
        let applied = ignore::apply(Vec::new(), &[], 20_000);
        assert!(gate(&[], &applied, &high(), &none, false).is_empty(), "a warning, not a failure");
        let blocking = gate(&[], &applied, &high(), &none, true);
        assert_eq!(blocking, ["--require-vuln-db: vulnerability scans not run: offline".to_string()].to_vec());
    }
}
