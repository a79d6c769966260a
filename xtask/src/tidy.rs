//! Repository rules, checked by `cargo test` (and so by `cargo xtask test` and CI).
//!
//! Each test names the rule it enforces and, on failure, what to run or change.

use std::path::{Path, PathBuf};

use crate::commands::ci::STAGES;
use crate::commands::workflows::{CI_WORKFLOW, WORKFLOWS};
use crate::project_root;

fn read(rel: &str) -> String {
    std::fs::read_to_string(project_root().join(rel)).unwrap_or_else(|e| panic!("reading {rel}: {e}"))
}

fn files_under(dir: &Path, ext: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("reading {}: {e}", dir.display())).flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(files_under(&path, ext));
        } else if path.extension().is_some_and(|e| e == ext) {
            out.push(path);
        }
    }
    out.sort();
    out
}

/// `run:` commands of a workflow file (single-line form; block scalars are rejected).
fn run_lines(yaml: &str) -> Vec<String> {
    yaml.lines()
        .filter_map(|l| l.trim_start().trim_start_matches("- ").strip_prefix("run:"))
        .map(|r| r.trim().to_string())
        .collect()
}

#[test]
fn the_top_level_layout_is_complete() {
    let root = project_root();
    for path in [
        "Cargo.toml",
        "Cargo.lock",
        "xtask",
        "services",
        "crates",
        "tools",
        "infra",
        ".github/workflows",
        ".cargo/config.toml",
        "rust-toolchain.toml",
        "Makefile",
        "deny.toml",
        "tests",
        "README.md",
        "ARCHITECTURE.md",
        "BENCHMARKS.md",
        ".ci/run",
    ] {
        assert!(root.join(path).exists(), "{path} is missing from the repository root");
    }
    assert!(
        read(".cargo/config.toml").contains(r#"xtask = "run --package xtask --""#),
        "the cargo xtask alias is gone"
    );
}

#[test]
fn the_workflows_are_generated() {
    for (path, render) in WORKFLOWS {
        assert!(read(path) == render(), "{path} is out of date: run `cargo xtask workflows` and commit it");
    }
}

#[test]
fn workflows_run_only_cargo_xtask_commands() {
    for file in files_under(&project_root().join(".github/workflows"), "yml") {
        let yaml = std::fs::read_to_string(&file).expect("readable workflow");
        for run in run_lines(&yaml) {
            assert!(
                run.starts_with("cargo xtask ")
                    && !run.contains("&&")
                    && !run.contains(';')
                    && !run.starts_with("cargo xtask |"),
                "{}: `run: {run}` is not a single `cargo xtask` command; put the logic in xtask so it runs locally too",
                file.display()
            );
        }
    }
}

#[test]
fn every_ci_stage_has_a_workflow_job_and_every_step_belongs_to_a_stage() {
    let runs = run_lines(&read(CI_WORKFLOW));
    for stage in STAGES {
        let wanted = format!("cargo xtask {}", stage.command);
        assert!(runs.contains(&wanted), "ci stage `{}` has no workflow step `run: {wanted}`", stage.name);
    }
    let plan = crate::commands::ci::plan(&crate::test_ctx(), &Default::default()).expect("ci plan");
    for step in &plan.steps {
        let stage = step.name.split(':').next().unwrap_or_default();
        assert!(STAGES.iter().any(|s| s.name == stage), "ci step {} belongs to no stage (so has no CI job)", step.name);
    }
}

#[test]
fn every_xtask_source_file_says_what_it_is_for() {
    let dirs = ["xtask/src", "tools/kit/src", "tools/deployer/src"].map(|d| project_root().join(d));
    for file in dirs.iter().filter(|d| d.is_dir()).flat_map(|d| files_under(d, "rs")) {
        let text = std::fs::read_to_string(&file).expect("readable source");
        assert!(text.starts_with("//!"), "{} must open with a `//!` comment saying what it does", file.display());
    }
}

#[test]
fn every_member_uses_the_workspace_lints() {
    let ws = crate::workspace::Workspace::load(&project_root()).expect("workspace");
    for m in ws.members.values() {
        let manifest = std::fs::read_to_string(project_root().join(&m.dir).join("Cargo.toml")).expect("manifest");
        let parsed: toml::Table = toml::from_str(&manifest).expect("valid manifest");
        let inherits = parsed.get("lints").and_then(|l| l.get("workspace")).and_then(|w| w.as_bool()) == Some(true);
        assert!(inherits, "{}: add `[lints] workspace = true`", m.dir.display());
    }
}

#[test]
fn xtask_never_depends_on_service_crates() {
    let ws = crate::workspace::Workspace::load(&project_root()).expect("workspace");
    let xtask = &ws.members["xtask"];
    // Not even as dev-dependencies: the end-to-end tests are their own package (tests/), so
    // `cargo test -p xtask` compiles no sqlx or tokio. The one workspace crate it links is the
    // kit it shares with its tools, which links none.
    let others: Vec<&String> = xtask.deps.iter().filter(|d| *d != KIT).collect();
    assert!(
        others.is_empty() && xtask.build_deps.iter().all(|d| d == KIT),
        "xtask depends on workspace crates {others:?}: keep it thin, hand off instead (end-to-end tests go in tests/)"
    );
    let kit = &ws.members[KIT];
    assert!(kit.deps.is_empty(), "{KIT} depends on workspace crates {:?}: xtask links it, keep it light", kit.deps);
}

/// The library xtask and its tools share (tools/kit).
const KIT: &str = "xtask-kit";

#[test]
fn the_makefile_is_a_thin_shim() {
    let makefile = read("Makefile");
    let mut targets = Vec::new();
    let mut current: Option<String> = None;
    for line in makefile.lines() {
        if let Some(recipe) = line.strip_prefix('\t') {
            let target = current.clone().unwrap_or_else(|| panic!("Makefile: recipe line outside a target: {line}"));
            let cmd = recipe.trim_start_matches('@');
            assert!(
                cmd.starts_with("cargo xtask"),
                "Makefile target {target}: `{recipe}` is not a `cargo xtask` command"
            );
        } else if let Some((name, _)) = line.split_once(':')
            && !line.starts_with('#')
            && !line.starts_with('.')
            && !name.contains(' ')
            && !name.is_empty()
        {
            current = Some(name.to_string());
            targets.push(name.to_string());
        }
    }
    for wanted in ["help", "ci", "test", "lint", "fmt"] {
        assert!(targets.iter().any(|t| t == wanted), "Makefile lacks a `{wanted}` target");
    }
    for target in &targets {
        let recipes = makefile.split(&format!("\n{target}:")).nth(1).unwrap_or_default();
        let count = recipes.lines().skip(1).take_while(|l| l.starts_with('\t')).count();
        assert_eq!(count, 1, "Makefile target {target} must be exactly one `cargo xtask` line");
    }
}

#[test]
fn the_readme_leads_with_the_two_commands_that_matter() {
    let readme = read("README.md");
    let first_commands: Vec<&str> =
        readme.lines().filter(|l| l.trim_start().starts_with("cargo xtask")).take(2).map(str::trim).collect();
    assert_eq!(
        first_commands,
        ["cargo xtask ci", "cargo xtask test"],
        "README must open with `cargo xtask ci` then the test command"
    );
    let ci_run = read(".ci/run");
    assert!(ci_run.contains("cargo xtask test"), ".ci/run must run the README's test command");
}

#[test]
fn the_by_hand_benchmark_baseline_runs_what_ci_runs() {
    let script = read("xtask/bench/ci-by-hand.sh");
    let plan = crate::commands::ci::plan(&crate::test_ctx(), &Default::default()).expect("ci plan");
    for step in &plan.steps {
        let crate::plan::Action::Exec { program, args, .. } = &step.action else {
            continue;
        };
        if program != &crate::cargo_program() {
            continue;
        }
        // The script sets its own ports and names the target dir through a variable: compare
        // the command without its environment, from the target dir on.
        let line = crate::plan::shell_line(&Default::default(), "cargo", args);
        let line = line.split("/target/").map(|s| s.to_string()).collect::<Vec<_>>();
        let wanted = line.last().expect("non-empty");
        assert!(
            script.lines().any(|l| l.ends_with(wanted.as_str())),
            "xtask/bench/ci-by-hand.sh lacks `{}` from the ci plan",
            step.command_line()
        );
    }
}

#[test]
fn every_service_crate_declares_itself_and_its_code_agrees() {
    let root = project_root();
    let ws = crate::workspace::Workspace::load(&root).expect("workspace");
    let mut found = 0;
    for entry in std::fs::read_dir(root.join("services")).expect("services/").flatten() {
        let dir = entry.path();
        if !dir.join("Cargo.toml").is_file() {
            continue;
        }
        found += 1;
        let rel = dir.strip_prefix(&root).expect("inside root").to_path_buf();
        let member = ws.members.values().find(|m| m.dir == rel);
        let member = member.unwrap_or_else(|| panic!("{}: not a workspace member", rel.display()));
        let meta = member.service.as_ref().unwrap_or_else(|| {
            panic!(
                "{}: a crate under services/ needs [package.metadata.service] (see services/README.md)",
                rel.display()
            )
        });
        let main = std::fs::read_to_string(dir.join("src/main.rs")).expect("src/main.rs");
        for (what, wanted) in
            [("port", format!("port: {}", meta.port)), ("health", format!("health_path: \"{}\"", meta.health))]
        {
            assert!(
                main.contains(&wanted),
                "{}/src/main.rs: its ServiceInfo must say `{wanted}`, as its Cargo.toml declares ({what})",
                rel.display()
            );
        }
        assert!(meta.ready == "/readyz", "{}: the service kit serves readiness on /readyz", rel.display());
    }
    assert!(found > 0, "no service crates found under services/");
}

#[test]
fn tests_that_start_other_binaries_declare_it() {
    let root = project_root();
    let ws = crate::workspace::Workspace::load(&root).expect("workspace");
    for m in ws.members.values() {
        let tests = root.join(&m.dir).join("tests");
        if !tests.is_dir() {
            continue;
        }
        for file in files_under(&tests, "rs") {
            let text = std::fs::read_to_string(&file).expect("readable test");
            for started in text.split("workspace_binary(\"").skip(1).filter_map(|s| s.split('"').next()) {
                assert!(
                    m.runs.contains(started),
                    "{}: starts the `{started}` binary; declare it (service `needs` or [package.metadata.tests] starts) so `ci --changed` reruns these tests when {started} changes",
                    file.display()
                );
            }
        }
    }
}

/// The docker builder compiles with the host builder's flags (with its target dir at
/// /src/target), so both builders make the same kind of binary.
#[test]
fn the_dockerfiles_build_with_the_host_builders_flags() {
    let flags = crate::commands::image::image_rustflags(Path::new("/src/target")).expect("flags");
    let wanted = format!("ENV CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUSTFLAGS=\"{flags}\"");
    for file in ["infra/docker/Dockerfile", "infra/docker/Dockerfile.buildkit"] {
        let text = read(file);
        assert!(text.lines().any(|l| l == wanted), "{file} must set `{wanted}`");
        let profile = format!("--profile {}", crate::commands::image::PROFILE);
        assert_eq!(text.matches(&profile).count(), 2, "{file}: cook and build both use `{profile}`");
    }
}

/// The BuildKit Dockerfile is the legacy one plus cache mounts: nothing else may drift.
#[test]
fn the_buildkit_dockerfile_differs_only_in_cache_mounts() {
    let instructions = |file: &str| -> Vec<String> {
        read(file)
            .lines()
            .filter(|l| !l.trim_start().starts_with('#'))
            .map(|l| {
                let mut line = l.trim().to_string();
                while let Some(start) = line.find("--mount=") {
                    let end = line[start..].find(' ').map_or(line.len(), |e| start + e + 1);
                    line.replace_range(start..end, "");
                }
                line.trim_end_matches('\\').trim().to_string()
            })
            .filter(|l| !l.is_empty())
            .collect()
    };
    let legacy = instructions("infra/docker/Dockerfile");
    let buildkit = instructions("infra/docker/Dockerfile.buildkit");
    assert!(legacy.iter().all(|l| !l.contains("--mount")), "the legacy builder rejects RUN --mount");
    assert!(read("infra/docker/Dockerfile.buildkit").contains("--mount=type=cache"), "no cache mounts");
    // `RUN --mount... \` becomes a bare `RUN` line; join it to the command that follows.
    let joined: Vec<String> = buildkit.iter().fold(Vec::new(), |mut acc, l| {
        match acc.last_mut() {
            Some(last) if last == "RUN" => *last = format!("RUN {l}"),
            _ => acc.push(l.clone()),
        }
        acc
    });
    assert_eq!(legacy, joined, "infra/docker/Dockerfile and Dockerfile.buildkit drifted apart");
}

/// Every service is in the dev stack: a compose entry whose health check is its own
/// `healthcheck` subcommand, a Prometheus scrape job, and a Grafana dashboard. And the stack
/// publishes nothing beyond loopback.
#[test]
fn every_service_is_in_the_dev_stack_with_health_metrics_and_a_dashboard() {
    let compose = read("infra/compose/docker-compose.yml");
    let prometheus = read("infra/monitoring/prometheus.yml");
    let ws = crate::workspace::Workspace::load(&project_root()).expect("workspace");
    for (name, meta) in ws.services() {
        assert!(compose.contains(&format!("\n  {name}:\n")), "infra/compose: no `{name}` service");
        assert!(
            compose.contains(&format!("\"/usr/local/bin/{name}\", \"healthcheck\"")),
            "infra/compose: {name}'s health check must run its own `healthcheck` subcommand"
        );
        let var = crate::commands::dev::port_var(name);
        assert!(
            compose.contains(&format!("\"127.0.0.1:${{{var}:-{port}}}:{port}\"]", port = meta.port)),
            "infra/compose: {name} must publish its port {} on 127.0.0.1:${{{var}:-{}}} (dev reads {var} from .env)",
            meta.port,
            meta.port
        );
        assert!(prometheus.contains(&format!("\"{name}:{}\"", meta.port)), "prometheus.yml does not scrape {name}");
        let dashboard = project_root().join(format!("infra/monitoring/grafana/dashboards/{name}.json"));
        assert!(dashboard.is_file(), "no Grafana dashboard for {name} at {}", dashboard.display());
    }
    for line in compose.lines().filter(|l| l.contains("ports:")) {
        assert!(line.contains("\"127.0.0.1:"), "infra/compose publishes beyond loopback: {}", line.trim());
    }
    assert!(!compose.contains("privileged"), "no privileged containers in the dev stack");
}

/// Every service has a kustomize base whose probes and port agree with its metadata.
#[test]
fn every_service_has_a_k8s_base_that_agrees_with_its_metadata() {
    let ws = crate::workspace::Workspace::load(&project_root()).expect("workspace");
    let bases = read("infra/k8s/base/kustomization.yaml");
    for (name, meta) in ws.services() {
        let deployment = read(&format!("infra/k8s/base/{name}/deployment.yaml"));
        assert!(bases.contains(&format!("  - {name}\n")), "infra/k8s/base/kustomization.yaml lacks {name}");
        assert!(
            deployment.contains(&format!("containerPort: {}", meta.port)),
            "{name}: containerPort != {}",
            meta.port
        );
        assert!(deployment.contains(&format!("path: {}", meta.health)), "{name}: no probe on {}", meta.health);
        assert!(
            deployment.contains(&format!("readinessProbe:\n            httpGet: {{path: {}", meta.ready)),
            "{name}: readiness must probe {}",
            meta.ready
        );
        for required in [
            "runAsNonRoot: true",
            "readOnlyRootFilesystem: true",
            "allowPrivilegeEscalation: false",
            "drop: [ALL]",
            "RuntimeDefault",
            "limits:",
            "startupProbe:",
        ] {
            assert!(deployment.contains(required), "{name}: deployment lacks `{required}`");
        }
        for kind in ["service", "serviceaccount", "configmap", "pdb", "hpa", "networkpolicy"] {
            assert!(
                project_root().join(format!("infra/k8s/base/{name}/{kind}.yaml")).is_file(),
                "{name}: no {kind}.yaml"
            );
        }
    }
}

/// One process layer: `process.rs` is the only file that builds a `std::process::Command`, so
/// every child gets the cleaned environment and every failure reads the same way.
#[test]
fn only_the_process_layer_starts_processes() {
    let root = project_root();
    let layer = root.join("tools/kit/src/process.rs");
    assert!(layer.is_file(), "the process layer is tools/kit/src/process.rs");
    // Spelled in two halves so this file does not match itself.
    let needle = concat!("Command", "::new");
    let mut offenders = Vec::new();
    let sources = ["xtask/src", "tools/kit/src", "tools/deployer/src"]
        .iter()
        .map(|dir| root.join(dir))
        .filter(|dir| dir.is_dir())
        .flat_map(|dir| files_under(&dir, "rs"));
    for file in sources {
        if file == layer {
            continue;
        }
        let text = std::fs::read_to_string(&file).expect("readable source");
        for (i, line) in text.lines().enumerate() {
            let spawns = line
                .match_indices(needle)
                .any(|(at, _)| !line[..at].chars().next_back().is_some_and(|c| c.is_alphanumeric() || c == '_'));
            if spawns {
                offenders.push(format!("{}:{}", file.strip_prefix(&root).unwrap_or(&file).display(), i + 1));
            }
        }
    }
    assert!(offenders.is_empty(), "start processes through process::Cmd, not std's {needle}: {}", offenders.join(", "));
}

/// The engine knows no command: plans, the runner, the process layer, reports and installs
/// never name `commands::` (commands define their internal steps as `plan::Task` values).
#[test]
fn the_engine_never_imports_a_command() {
    for file in ["plan.rs", "runner.rs", "summary.rs", "install.rs", "tools.rs"] {
        let text = read(&format!("xtask/src/{file}"));
        let named = text.lines().position(|l| l.contains(concat!("commands", "::")));
        assert!(named.is_none(), "xtask/src/{file}:{}: the engine names a command module", named.unwrap_or(0) + 1);
    }
}

/// Tool binaries (tools/) stay apart from what the services link: no service or library under
/// crates/ depends on a tools/ member, and every tools/ member is a binary xtask hands off to.
#[test]
fn tools_are_handed_off_to_never_linked() {
    let ws = crate::workspace::Workspace::load(&project_root()).expect("workspace");
    let tools: Vec<&str> =
        ws.members.values().filter(|m| m.dir.starts_with("tools")).map(|m| m.name.as_str()).collect();
    assert!(!tools.is_empty(), "tools/ holds the hand-off binaries (loadgen, k8s-policy)");
    for m in ws.members.values().filter(|m| m.dir.starts_with("services") || m.dir.starts_with("crates")) {
        let linked: Vec<_> = m.build_deps.iter().filter(|d| tools.contains(&d.as_str())).collect();
        assert!(linked.is_empty(), "{} links the tool(s) {linked:?}: move shared code to crates/", m.dir.display());
    }
    for m in ws.members.values().filter(|m| m.dir.starts_with("tools") && m.name != KIT) {
        let main = project_root().join(&m.dir).join("src/main.rs");
        assert!(main.is_file(), "{}: a tool is a binary (src/main.rs)", m.dir.display());
    }
}

/// ARCHITECTURE.md's invariants are enforced: each bracketed name in its "Invariants" section is
/// a test in this file.
#[test]
fn every_invariant_architecture_md_states_is_a_tidy_test() {
    let doc = read("ARCHITECTURE.md");
    let section = doc.split("\n## Invariants\n").nth(1).expect("ARCHITECTURE.md has an Invariants section");
    let section = section.split("\n## ").next().unwrap_or(section);
    let named: Vec<&str> = section.split("[`").skip(1).filter_map(|s| s.split("`]").next()).collect();
    assert!(named.len() >= 10, "the Invariants section names its tidy tests as [`name`]");
    let tidy = read("xtask/src/tidy.rs");
    for name in named {
        assert!(
            tidy.contains(&format!("#[test]\nfn {name}()")),
            "ARCHITECTURE.md names `{name}` as the test of an invariant, but xtask/src/tidy.rs has no such test"
        );
    }
}
