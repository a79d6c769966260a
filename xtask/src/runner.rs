//! The one place that executes plans: prints each command, runs it, times it, reports.
//!
//! Serial steps run one after another (cargo steps share a target dir and its lock);
//! background steps start at their place in the plan and run beside the serial ones with their
//! output buffered, so logs never interleave. Without `--keep-going` the first failing step
//! stops further steps from starting; the final table says which never ran and why.

use std::io::{BufRead, BufReader, IsTerminal, Read, Write};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::plan::{Action, Lane, Plan, Step, Task};
use crate::summary::{RunReport, Status, StepResult};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
pub enum Format {
    Human,
    Json,
    /// SARIF 2.1.0 (only `cargo xtask scan`).
    Sarif,
}

/// How to talk to the person (or machine) on the other end.
#[derive(Clone, Debug)]
pub struct Ui {
    pub format: Format,
    pub color: bool,
    /// stderr is a terminal: show a live spinner instead of streaming logs.
    pub tty: bool,
    pub verbose: bool,
    /// Running under GitHub Actions: fold each step into a log group and write a job summary.
    pub github: bool,
}

impl Ui {
    pub fn from_env(format: Format, verbose: bool) -> Ui {
        let tty = std::io::stderr().is_terminal();
        let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
        let dumb = std::env::var("TERM").is_ok_and(|t| t == "dumb");
        Ui {
            format,
            color: tty && !no_color && !dumb,
            tty: tty && !dumb,
            verbose,
            github: std::env::var("GITHUB_ACTIONS").is_ok_and(|v| v == "true"),
        }
    }

    pub fn paint(&self, ansi: &str, text: &str) -> String {
        if self.color { format!("\x1b[{ansi}m{text}\x1b[0m") } else { text.to_string() }
    }

    fn paint_status(&self, status: &Status, text: &str) -> String {
        match status {
            Status::Passed => self.paint("32", text),
            Status::Failed { .. } => self.paint("1;31", text),
            Status::NotRun { .. } => self.paint("33", text),
        }
    }

    /// Progress and logs go to stderr so stdout stays clean for tables and JSON.
    pub fn info(&self, line: &str) {
        eprintln!("{line}");
    }
}

pub struct Options {
    pub keep_going: bool,
    /// Say nothing about steps that pass (their output is shown when one fails): the steps
    /// before a hand-off, whose tool then speaks for the whole command. `--verbose` overrides.
    pub quiet: bool,
}

/// A finished step and everything it printed.
type Captured = (StepResult, Vec<u8>);

/// Run a plan to the end and report on every step.
pub fn run(plan: &Plan, ui: &Ui, opts: &Options) -> RunReport {
    let started = Instant::now();
    let total = plan.steps.len();
    let mut results: Vec<Option<StepResult>> = vec![None; total];
    let mut background: Vec<(usize, thread::JoinHandle<Captured>)> = Vec::new();
    let mut stopped_by: Option<String> = None;

    for note in &plan.notes {
        ui.info(&format!("{} {note}", ui.paint("2", "note:")));
    }
    for (i, step) in plan.steps.iter().enumerate() {
        if let Some(failed) = &stopped_by
            && !step.always
        {
            results[i] = Some(not_run(step, &format!("not run: {failed} failed (use --keep-going to run every step)")));
            continue;
        }
        let header = format!("[{}/{}] {}: {}", i + 1, total, step.name, step.description);
        if step.lane == Lane::Background {
            ui.info(&format!("{} {header} (in background)", ui.paint("1;36", "▶")));
            ui.info(&format!("  $ {}", step.command_line()));
            let step = step.clone();
            background.push((i, thread::spawn(move || run_captured(&step, None))));
            continue;
        }
        let result = if opts.quiet && !ui.verbose { run_quietly(step, ui) } else { run_serial(step, ui, &header) };
        if matches!(result.status, Status::Failed { .. }) && !opts.keep_going && stopped_by.is_none() {
            stopped_by = Some(step.name.clone());
        }
        results[i] = Some(result);
    }

    for (i, handle) in background {
        let step = &plan.steps[i];
        let (result, output) = handle
            .join()
            .unwrap_or_else(|_| (failed(step, None, "the step's thread panicked".into(), Duration::ZERO), Vec::new()));
        group_start(ui, &format!("{} (background)", step.name));
        let _ = std::io::stderr().write_all(&output);
        group_end(ui);
        report_outcome(ui, &result);
        results[i] = Some(result);
    }

    let steps: Vec<StepResult> = results.into_iter().flatten().collect();
    let report = RunReport::new(&plan.command, steps, started.elapsed());
    write_github_summary(ui, &report);
    report
}

/// Print the report the way the user asked for it.
pub fn print_report(ui: &Ui, report: &RunReport) {
    match ui.format {
        Format::Json | Format::Sarif => println!("{}", serde_json::to_string_pretty(report).unwrap_or_default()),
        Format::Human => {
            ui.info("");
            print!("{}", crate::summary::render_table(report, &|s, t| ui.paint_status(s, t)));
        }
    }
}

fn run_serial(step: &Step, ui: &Ui, header: &str) -> StepResult {
    group_start(ui, header);
    ui.info(&format!("{} {header}", ui.paint("1;36", "▶")));
    ui.info(&format!("  $ {}", step.command_line()));
    // On a terminal, show a spinner and keep the log unless the step fails; elsewhere
    // (CI, pipes, --verbose) stream the child's output as it comes.
    let result = if ui.tty && !ui.verbose && ui.format == Format::Human {
        run_kept(step, true)
    } else {
        run_streaming(step, ui.format == Format::Json)
    };
    group_end(ui);
    report_outcome(ui, &result);
    result
}

fn run_quietly(step: &Step, ui: &Ui) -> StepResult {
    let result = run_kept(step, ui.tty && ui.format == Format::Human);
    if matches!(result.status, Status::Failed { .. }) {
        report_outcome(ui, &result);
    }
    result
}

/// Run `step` with its output kept, under a spinner when asked, and print the output only when
/// the step fails.
fn run_kept(step: &Step, spinner: bool) -> StepResult {
    let bar = spinner.then(|| {
        let bar = indicatif::ProgressBar::new_spinner();
        bar.set_style(
            indicatif::ProgressStyle::with_template("  {spinner} {elapsed:>4} {wide_msg}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
        );
        bar.enable_steady_tick(Duration::from_millis(120));
        bar
    });
    let (result, output) = run_captured(step, bar.as_ref());
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    if matches!(result.status, Status::Failed { .. }) {
        let _ = std::io::stderr().write_all(&output);
    }
    result
}

fn report_outcome(ui: &Ui, result: &StepResult) {
    let took = crate::summary::format_duration(result.duration);
    match &result.status {
        Status::Passed => ui.info(&format!("{} {} ({took})", ui.paint("32", "✓"), result.name)),
        Status::Failed { reason, .. } => {
            ui.info(&format!("{} {} failed: {reason} ({took})", ui.paint("1;31", "✗"), result.name));
            ui.info(&format!("  command: {}", result.command));
            ui.info(&format!("  rerun:   {}", result.reproduce));
            if ui.github {
                ui.info(&format!("::error title={} failed::{reason}; rerun: {}", result.name, result.reproduce));
            }
        }
        Status::NotRun { .. } => {}
    }
}

fn group_start(ui: &Ui, title: &str) {
    if ui.github {
        ui.info(&format!("::group::{title}"));
    }
}

fn group_end(ui: &Ui) {
    if ui.github {
        ui.info("::endgroup::");
    }
}

fn write_github_summary(ui: &Ui, report: &RunReport) {
    if !ui.github {
        return;
    }
    let Some(path) = std::env::var_os("GITHUB_STEP_SUMMARY") else {
        return;
    };
    let appended = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .and_then(|mut f| f.write_all(crate::summary::render_markdown(report).as_bytes()));
    if let Err(e) = appended {
        ui.info(&format!("warning: could not append to $GITHUB_STEP_SUMMARY: {e}"));
    }
}

fn not_run(step: &Step, because: &str) -> StepResult {
    StepResult {
        name: step.name.clone(),
        status: Status::NotRun { because: because.to_string() },
        duration: Duration::ZERO,
        command: step.command_line(),
        reproduce: step.reproduce.clone(),
    }
}

fn failed(step: &Step, code: Option<i32>, reason: String, took: Duration) -> StepResult {
    StepResult {
        name: step.name.clone(),
        status: Status::Failed { exit_code: code, reason },
        duration: took,
        command: step.command_line(),
        reproduce: step.reproduce.clone(),
    }
}

fn passed(step: &Step, took: Duration) -> StepResult {
    StepResult {
        name: step.name.clone(),
        status: Status::Passed,
        duration: took,
        command: step.command_line(),
        reproduce: step.reproduce.clone(),
    }
}

fn check_tools(step: &Step) -> Result<()> {
    for tool in &step.requires {
        tool.require()?;
    }
    Ok(())
}

fn build_command(step: &Step) -> Option<Command> {
    let Action::Exec { program, args, env, cwd } = &step.action else {
        return None;
    };
    let mut cmd = crate::process::Cmd::new(program).args(args).envs(env).current_dir(cwd).to_command();
    cmd.stdin(Stdio::null());
    Some(cmd)
}

fn finish(step: &Step, started: Instant, outcome: Result<std::process::ExitStatus>) -> StepResult {
    let took = started.elapsed();
    match outcome {
        Ok(status) if status.success() => passed(step, took),
        Ok(status) => {
            let reason = match status.code() {
                Some(code) => format!("exit code {code}"),
                None => "killed by a signal".to_string(),
            };
            failed(step, status.code(), reason, took)
        }
        Err(e) => failed(step, None, format!("{e:#}"), took),
    }
}

fn run_internal(step: &Step, task: &dyn Task, log: &mut dyn Write) -> StepResult {
    let started = Instant::now();
    match task.run(log) {
        Ok(()) => passed(step, started.elapsed()),
        Err(e) => failed(step, None, format!("{e:#}"), started.elapsed()),
    }
}

fn run_streaming(step: &Step, stdout_to_stderr: bool) -> StepResult {
    let started = Instant::now();
    if let Err(e) = check_tools(step) {
        return failed(step, None, format!("{e:#}"), started.elapsed());
    }
    let Some(mut cmd) = build_command(step) else {
        let Action::Internal(task) = &step.action else { unreachable!("exec steps build a command") };
        return run_internal(step, task.as_ref(), &mut std::io::stderr());
    };
    if stdout_to_stderr {
        cmd.stdout(Stdio::from(std::io::stderr().lock().as_fd_owned()));
    }
    finish(step, started, cmd.status().with_context(|| format!("could not start {}", step.command_line())))
}

/// Run with stdout and stderr merged into one buffer; with a spinner, show the latest line.
fn run_captured(step: &Step, bar: Option<&indicatif::ProgressBar>) -> Captured {
    let started = Instant::now();
    if let Err(e) = check_tools(step) {
        return (failed(step, None, format!("{e:#}"), started.elapsed()), Vec::new());
    }
    let Some(mut cmd) = build_command(step) else {
        let Action::Internal(task) = &step.action else { unreachable!("exec steps build a command") };
        let mut log = Vec::new();
        let result = run_internal(step, task.as_ref(), &mut log);
        return (result, log);
    };
    if bar.is_some() && std::env::var_os("NO_COLOR").is_none() {
        cmd.env("CARGO_TERM_COLOR", "always");
    }
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = match cmd.spawn() {
        Ok(child) => child,
        Err(e) => {
            let reason = format!("could not start {}: {e}", step.command_line());
            return (failed(step, None, reason, started.elapsed()), Vec::new());
        }
    };
    let log = Arc::new(Mutex::new(Vec::<u8>::new()));
    let readers: Vec<_> = [
        child.stdout.take().map(|s| Box::new(s) as Box<dyn Read + Send>),
        child.stderr.take().map(|s| Box::new(s) as Box<dyn Read + Send>),
    ]
    .into_iter()
    .flatten()
    .map(|stream| {
        let log = Arc::clone(&log);
        let bar = bar.cloned();
        thread::spawn(move || {
            let mut reader = BufReader::new(stream);
            let mut line = Vec::new();
            while reader.read_until(b'\n', &mut line).unwrap_or(0) > 0 {
                if let Some(bar) = &bar {
                    let text = String::from_utf8_lossy(&line);
                    bar.set_message(strip_ansi(text.trim_end()));
                }
                if let Ok(mut log) = log.lock() {
                    log.extend_from_slice(&line);
                }
                line.clear();
            }
        })
    })
    .collect();
    let status = child.wait().context("waiting for the child process");
    for r in readers {
        let _ = r.join();
    }
    let output = log.lock().map(|l| l.clone()).unwrap_or_default();
    (finish(step, started, status), output)
}

fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else if c != '\r' {
            out.push(c);
        }
    }
    out
}

trait AsFdOwned {
    fn as_fd_owned(&self) -> std::os::fd::OwnedFd;
}

impl AsFdOwned for std::io::StderrLock<'_> {
    fn as_fd_owned(&self) -> std::os::fd::OwnedFd {
        use std::os::fd::AsFd;
        self.as_fd().try_clone_to_owned().expect("stderr can be duplicated")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::Step;

    const NO_ARGS: [&str; 0] = [];

    fn ui() -> Ui {
        Ui { format: Format::Human, color: false, tty: false, verbose: false, github: false }
    }

    #[test]
    fn a_failure_stops_later_steps_unless_keep_going() {
        let root = std::env::temp_dir();
        let mut plan = Plan::new("demo");
        plan.push(Step::exec("first", "fails", "false", NO_ARGS, &root));
        plan.push(Step::exec("second", "passes", "true", NO_ARGS, &root));

        let report = run(&plan, &ui(), &Options { keep_going: false, quiet: false });
        assert!(matches!(report.steps[0].status, Status::Failed { exit_code: Some(1), .. }));
        assert!(matches!(report.steps[1].status, Status::NotRun { .. }));

        let report = run(&plan, &ui(), &Options { keep_going: true, quiet: false });
        assert_eq!(report.steps[1].status, Status::Passed);
        assert!(!report.ok);
    }

    #[test]
    fn background_steps_report_in_plan_order() {
        let root = std::env::temp_dir();
        let mut plan = Plan::new("demo");
        plan.push(Step::exec("bg", "sleeps", "sh", ["-c", "sleep 0.2; echo side"], &root).in_background());
        plan.push(Step::exec("fg", "quick", "true", NO_ARGS, &root));
        let report = run(&plan, &ui(), &Options { keep_going: false, quiet: false });
        let names: Vec<_> = report.steps.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["bg", "fg"]);
        assert!(report.ok);
    }

    #[test]
    fn a_missing_program_is_a_failed_step_not_a_crash() {
        let mut plan = Plan::new("demo");
        plan.push(Step::exec("ghost", "nope", "definitely-not-a-program-xyz", NO_ARGS, &std::env::temp_dir()));
        let report = run(&plan, &ui(), &Options { keep_going: false, quiet: false });
        let Status::Failed { reason, .. } = &report.steps[0].status else { panic!("should fail") };
        assert!(reason.contains("could not start"), "{reason}");
    }
}
