//! loadgen: an HTTP load generator that gates CI on SLOs. Open model by default (latency from
//! the intended send time, so coordinated omission cannot hide a stall), closed model on request,
//! HdrHistograms merged exactly, everything validated before the first request.
//!
//! Exit codes: 0 pass, 1 SLO breached, 2 configuration error, 3 invalid run (the generator could
//! not keep its promised rate), 130 interrupted.

mod engine;
mod http1;
mod merge;
mod plan;
mod report;
mod scenario;
mod slo;
mod stats;
mod units;

use clap::{Parser, Subcommand};
use report::{ReportView, RunResults, SecondReport, exit};
use scenario::{ConfigError, Overrides, Scenario};
use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

#[derive(Parser)]
#[command(name = "loadgen", version, about = "HTTP load generator with SLO gating")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a scenario (or the one-URL case from flags) and judge it.
    Run(Box<RunArgs>),
    /// Merge reports of runs made side by side into one (histograms add exactly) and judge the
    /// SLOs again on the merged figures.
    Merge {
        #[arg(required = true, num_args = 2..)]
        reports: Vec<PathBuf>,
        /// Directory for the merged report.json, junit.xml and summary.md.
        #[arg(long)]
        out: Option<PathBuf>,
        #[arg(long, value_enum, default_value = "human")]
        format: Format,
    },
    /// Validate scenario files and their SLOs without sending anything.
    Check {
        #[arg(required = true)]
        scenarios: Vec<PathBuf>,
    },
}

#[derive(clap::Args)]
struct RunArgs {
    /// Scenario file (TOML); without one, --url and --rps/--connections describe the run.
    scenario: Option<PathBuf>,
    #[command(flatten)]
    overrides: Overrides,
    /// A previous JSON report for `baseline.` SLOs.
    #[arg(long)]
    baseline: Option<PathBuf>,
    /// Generator cores (one single-threaded runtime each). Default: all available.
    #[arg(long)]
    cores: Option<usize>,
    /// Directory for report.json, junit.xml and summary.md.
    #[arg(long)]
    out: Option<PathBuf>,
    /// What to print on stdout at the end.
    #[arg(long, value_enum, default_value = "human")]
    format: Format,
    /// Allow a target that is not loopback (load tests aim at 127.0.0.1 by default).
    #[arg(long)]
    allow_remote: bool,
    /// No progress lines.
    #[arg(long, short)]
    quiet: bool,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Format {
    Human,
    Json,
}

fn main() {
    let cli = Cli::parse();
    let code = match cli.command {
        Command::Check { scenarios } => check(&scenarios),
        Command::Merge { reports, out, format } => exit_code(merge_reports(&reports, out.as_deref(), format)),
        Command::Run(args) => exit_code(run(*args)),
    };
    std::process::exit(code);
}

fn exit_code(result: Result<i32, Failure>) -> i32 {
    match result {
        Ok(code) => code,
        Err(Failure::Config(e)) => {
            eprintln!("error: {e}");
            exit::CONFIG
        }
        Err(Failure::Run(e)) => {
            eprintln!("error: {e:#}");
            1
        }
    }
}

enum Failure {
    Config(String),
    Run(anyhow::Error),
}

impl From<ConfigError> for Failure {
    fn from(e: ConfigError) -> Self {
        Failure::Config(e.0)
    }
}

fn check(paths: &[PathBuf]) -> i32 {
    let mut code = exit::PASS;
    for path in paths {
        match Scenario::load(Some(path), &Overrides::default()) {
            Ok(s) => println!("ok: {} ({} endpoints, {} SLOs)", path.display(), s.endpoints.len(), s.slos.len()),
            Err(e) => {
                eprintln!("error: {e}");
                code = exit::CONFIG;
            }
        }
    }
    code
}

/// Resolves the target once, and refuses anything but loopback unless told otherwise.
fn resolve(scenario: &Scenario, allow_remote: bool) -> Result<SocketAddr, Failure> {
    let t = &scenario.target;
    let addrs: Vec<SocketAddr> = (t.host.as_str(), t.port)
        .to_socket_addrs()
        .map_err(|e| Failure::Config(format!("target `{}` does not resolve: {e}", t.authority)))?
        .collect();
    let first =
        *addrs.first().ok_or_else(|| Failure::Config(format!("target `{}` resolves to no address", t.authority)))?;
    if !allow_remote && let Some(remote) = addrs.iter().find(|a| !a.ip().is_loopback()) {
        return Err(Failure::Config(format!(
            "target `{}` resolves to {}, which is not loopback; load tests aim at 127.0.0.1 (pass --allow-remote if you own that host)",
            t.authority,
            remote.ip()
        )));
    }
    Ok(first)
}

fn run(args: RunArgs) -> Result<i32, Failure> {
    let overrides = args.overrides;
    let scenario = Arc::new(Scenario::load(args.scenario.as_deref(), &overrides)?);
    let baseline = match &args.baseline {
        Some(path) => Some(ReportView::read(path).map_err(Failure::Config)?),
        None => None,
    };
    let names: Vec<String> = scenario.endpoints.iter().map(|e| e.name.clone()).collect();
    for slo in &scenario.slos {
        slo.check_baseline(&names, baseline.as_ref().map(|b| b as &dyn slo::Observations))
            .map_err(|e| Failure::Config(format!("slo `{}`: {e}", slo.text)))?;
    }
    let addr = resolve(&scenario, args.allow_remote)?;
    let cores = match args.cores {
        Some(0) => return Err(Failure::Config("--cores must be at least 1".into())),
        Some(n) => n,
        None => std::thread::available_parallelism().map_or(1, |n| n.get()),
    };
    if let Some(out) = &args.out {
        std::fs::create_dir_all(out)
            .map_err(|e| Failure::Config(format!("--out {}: cannot create it: {e}", out.display())))?;
    }

    let stop = Arc::new(AtomicBool::new(false));
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let setup = engine::RunSetup { scenario: Arc::clone(&scenario), addr, cores, stop: Arc::clone(&stop) };
    let runner = std::thread::Builder::new()
        .name("loadgen-run".into())
        .spawn(move || engine::run(setup, tx))
        .map_err(|e| Failure::Run(e.into()))?;
    let progress = Progress::new(args.quiet, scenario_length(&scenario));
    let (timeseries, interrupted) = aggregate(rx, cores, &stop, progress).map_err(Failure::Run)?;
    let output = runner
        .join()
        .map_err(|_| Failure::Run(anyhow::anyhow!("the generator panicked")))?
        .map_err(|e| Failure::Run(anyhow::Error::from(e).context("running the load")))?;

    let results = RunResults::new(&scenario, &output);
    let verdict = report::judge(&results, baseline.as_ref().map(|b| b as &dyn slo::Observations), interrupted);
    let report = report::build(&results, &output, &verdict, timeseries, cores, interrupted);
    emit(&report, args.out.as_deref(), args.format)?;
    Ok(report.exit_code)
}

fn merge_reports(paths: &[PathBuf], out: Option<&Path>, format: Format) -> Result<i32, Failure> {
    let mut parts = Vec::new();
    for path in paths {
        let view = ReportView::read(path).map_err(Failure::Config)?;
        parts.push((path.display().to_string(), view.report));
    }
    let merged = merge::merge(&parts).map_err(Failure::Config)?;
    emit(&merged, out, format)?;
    Ok(merged.exit_code)
}

/// Prints the report and writes its files: the end of a run and of a merge alike.
fn emit(report: &report::Report, out: Option<&Path>, format: Format) -> Result<(), Failure> {
    let json = serde_json::to_string_pretty(report).map_err(|e| Failure::Run(e.into()))?;
    match format {
        Format::Human => print!("{}", report::human(report)),
        Format::Json => println!("{json}"),
    }
    if let Some(out) = out {
        std::fs::create_dir_all(out)
            .map_err(|e| Failure::Config(format!("--out {}: cannot create it: {e}", out.display())))?;
        write_file(&out.join("report.json"), &json)?;
        write_file(&out.join("junit.xml"), &report::junit(report))?;
        write_file(&out.join("summary.md"), &report::markdown(report))?;
        eprintln!("reports: {}", out.display());
    }
    if let Some(path) = std::env::var_os("GITHUB_STEP_SUMMARY") {
        let appended = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(&path)
            .and_then(|mut f| f.write_all(report::markdown(report).as_bytes()));
        if let Err(e) = appended {
            eprintln!("warning: could not append to $GITHUB_STEP_SUMMARY: {e}");
        }
    }
    Ok(())
}

fn write_file(path: &Path, text: &str) -> Result<(), Failure> {
    std::fs::write(path, text).map_err(|e| Failure::Run(anyhow::anyhow!("cannot write {}: {e}", path.display())))
}

fn scenario_length(s: &Scenario) -> Duration {
    match &s.load {
        scenario::Load::Open { start_rps, stages } => plan::RatePlan::new(*start_rps, stages).duration(),
        scenario::Load::Closed { duration, .. } => *duration,
    }
}

/// Progress on stderr: a live line each second on a terminal, a plain line every 5 s otherwise.
struct Progress {
    quiet: bool,
    tty: bool,
    length: Duration,
}

impl Progress {
    fn new(quiet: bool, length: Duration) -> Progress {
        Progress { quiet, tty: std::io::stderr().is_terminal(), length }
    }

    fn show(&self, row: &SecondReport, in_flight: u64) {
        if self.quiet || (!self.tty && !(row.t + 1).is_multiple_of(5)) {
            return;
        }
        let line = format!(
            "[{:>4}s/{}s] {:>8} req/s  p50 {:>8}  p99 {:>8}  errors {:>5}  in flight {:>4}",
            row.t + 1,
            self.length.as_secs(),
            row.completed,
            units::format_nanos(row.p50_us.unwrap_or(0.0) * 1e3),
            units::format_nanos(row.p99_us.unwrap_or(0.0) * 1e3),
            row.errors,
            in_flight
        );
        if self.tty {
            eprint!("\r\x1b[2K{line}");
        } else {
            eprintln!("{line}");
        }
    }

    fn finish(&self) {
        if self.tty && !self.quiet {
            eprintln!();
        }
    }
}

/// The aggregator: merges the cores' seconds into the time series and watches for Ctrl-C.
fn aggregate(
    mut rx: tokio::sync::mpsc::UnboundedReceiver<stats::IntervalStats>,
    cores: usize,
    stop: &AtomicBool,
    progress: Progress,
) -> anyhow::Result<(Vec<SecondReport>, bool)> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async {
        let mut pending: BTreeMap<u64, (usize, stats::IntervalStats)> = BTreeMap::new();
        let mut rows = Vec::new();
        let mut interrupted = false;
        let finish_row = |iv: &stats::IntervalStats| SecondReport {
            t: iv.second,
            completed: iv.completed,
            errors: iv.failed,
            p50_us: Some(iv.latency.value_at_quantile(0.5) as f64 / 1e3),
            p99_us: Some(iv.latency.value_at_quantile(0.99) as f64 / 1e3),
        };
        let ctrl_c = tokio::signal::ctrl_c();
        tokio::pin!(ctrl_c);
        loop {
            tokio::select! {
                next = rx.recv() => {
                    let Some(iv) = next else { break };
                    let entry = pending.entry(iv.second).or_insert_with(|| (0, stats::IntervalStats::new(iv.second)));
                    entry.0 += 1;
                    entry.1.completed += iv.completed;
                    entry.1.failed += iv.failed;
                    entry.1.in_flight += iv.in_flight;
                    let _ = entry.1.latency.add(&iv.latency);
                    if entry.0 == cores {
                        let (_, done) = pending.remove(&iv.second).expect("present");
                        let row = finish_row(&done);
                        progress.show(&row, done.in_flight);
                        rows.push(row);
                    }
                }
                _ = &mut ctrl_c, if !interrupted => {
                    interrupted = true;
                    stop.store(true, Ordering::Relaxed);
                    if !progress.quiet {
                        eprintln!("\ninterrupted: stopping the load and writing what was measured");
                    }
                }
            }
        }
        // Seconds some cores did not finish (the end of the run).
        rows.extend(pending.values().map(|(_, iv)| finish_row(iv)));
        rows.sort_by_key(|r| r.t);
        progress.finish();
        Ok((rows, interrupted))
    })
}
