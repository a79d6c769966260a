//! The generated release workflow, run as GitHub would run it, on this machine: its job graph
//! in order (`needs:`), each job in a fresh clone of the repository, its `run:` steps through
//! bash with the job's `env:`, artifacts handed from job to job through a folder (what
//! `upload-artifact` / `download-artifact` do), and a GitHub environment's approval given by the
//! test (`approved`). The repository's settings are the test's: `REGISTRY` is a real registry on
//! 127.0.0.1, `DEPLOY_TARGET` is the local Docker engine, and the environments' files in each
//! clone name this test's own projects and ports (as the repository's own would name real hosts).
//!
//! It ends with prod running exactly the digests staging verified, both verified by their SLOs
//! against their real Prometheus. The clones are of HEAD: uncommitted changes are not in them.
//!
//! Each clone is made at one path (`target/release-workflow/checkout`) with the commit's time on
//! every file, and its `target/` links to `target/release-workflow/target` (what the workflow's
//! cache step restores; never this workspace's own target directory, whose binaries other tests
//! run), so a later job reuses what an earlier one compiled, as a warm cache does on a runner.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use test_support::free_port;

mod common;
use common::{Registry, docker, docker_ok, root, target_dir, text, xtask};

const WORKFLOW: &str = ".github/workflows/release.yml";

/// One job of the workflow, as far as running it here needs.
struct Job {
    name: String,
    needs: Vec<String>,
    condition: Option<String>,
    environment: Option<String>,
    env: BTreeMap<String, String>,
    steps: Vec<serde_yaml::Value>,
}

fn jobs(workflow: &serde_yaml::Value) -> Vec<Job> {
    let mut out = Vec::new();
    for (name, job) in workflow["jobs"].as_mapping().expect("jobs") {
        let needs = match &job["needs"] {
            serde_yaml::Value::String(one) => vec![one.clone()],
            serde_yaml::Value::Sequence(many) => many.iter().filter_map(|n| n.as_str().map(String::from)).collect(),
            _ => Vec::new(),
        };
        out.push(Job {
            name: name.as_str().expect("job name").to_string(),
            needs,
            condition: job["if"].as_str().map(String::from),
            environment: job["environment"].as_str().map(String::from),
            env: strings(&job["env"]),
            steps: job["steps"].as_sequence().expect("steps").clone(),
        });
    }
    out
}

fn strings(map: &serde_yaml::Value) -> BTreeMap<String, String> {
    map.as_mapping()
        .map(|m| {
            m.iter()
                .map(|(k, v)| {
                    let value = match v {
                        serde_yaml::Value::String(s) => s.clone(),
                        other => serde_yaml::to_string(other).expect("scalar").trim().to_string(),
                    };
                    (k.as_str().expect("key").to_string(), value)
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The jobs a push runs, in an order that honours `needs:` (GitHub's, less the parallelism).
fn push_order(all: &[Job]) -> Vec<&Job> {
    let runs_on_push = |j: &Job| j.condition.as_deref().is_none_or(|c| c.contains("'push'"));
    let mut done: Vec<&Job> = Vec::new();
    let mut left: Vec<&Job> = all.iter().filter(|j| runs_on_push(j)).collect();
    while !left.is_empty() {
        let ready = left.iter().position(|j| j.needs.iter().all(|n| done.iter().any(|d| &d.name == n)));
        let next = left.remove(ready.unwrap_or_else(|| panic!("a job needs one that never runs on push")));
        done.push(next);
    }
    done
}

/// `${{ vars.X }}`, `${{ secrets.X }}` and `${{ github.X }}` as this test's repository has them;
/// an expression it does not know is a loud failure (the test must learn it).
fn expand(value: &str, settings: &BTreeMap<&str, String>) -> Option<String> {
    let Some(start) = value.find("${{") else { return Some(value.to_string()) };
    let end = value[start..].find("}}").expect("closed expression") + start;
    let expr = value[start + 3..end].trim();
    let known = settings.get(expr).unwrap_or_else(|| panic!("the test has no value for `{expr}`"));
    // An empty secret is an unset variable on a runner as far as the tools go.
    (!known.is_empty()).then(|| format!("{}{known}{}", &value[..start], &value[end + 2..]))
}

/// The repository at the commit under test, cloned afresh at `dir`, every file dated at the
/// commit, with the test's environment settings written over the committed ones.
fn fresh_clone(dir: &Path, settings: &Settings) {
    let _ = std::fs::remove_dir_all(dir);
    let out = Command::new("git").arg("clone").arg("--quiet").arg(root()).arg(dir).output().expect("git clone");
    assert!(out.status.success(), "git clone: {}", text(&out.stderr));
    let when =
        text(&Command::new("git").args(["log", "-1", "--format=@%ct"]).current_dir(dir).output().expect("git").stdout);
    let out = Command::new("find")
        .arg(dir)
        .args(["-not", "-path", "*/.git/*", "-exec", "touch", "-h", "-d", when.trim(), "{}", "+"])
        .output()
        .expect("find");
    assert!(out.status.success(), "dating the clone: {}", text(&out.stderr));
    // The job's `target/` is the cache every job shares (see the top of this file).
    let cache = dir.parent().expect("the checkout sits in the cache's directory").join("target");
    std::fs::create_dir_all(&cache).expect("shared target directory");
    std::os::unix::fs::symlink(&cache, dir.join("target")).expect("target linked");
    for (env, s) in [("staging", &settings.staging), ("prod", &settings.prod)] {
        let file = dir.join(format!("infra/compose/env/{env}.env"));
        let mut body = std::fs::read_to_string(&file).expect("env file");
        body.push_str(&format!(
            "\n# This test's settings.\nDEPLOY_PROJECT={}\nDEPLOY_SERVICES=postgres,redis,api,worker,gateway,prometheus\nDEPLOY_COMPOSE_FILES=docker-compose.yml,docker-compose.offline.yml\nGATEWAY_PORT={}\nPOSTGRES_PORT={}\nREDIS_PORT={}\nPROMETHEUS_PORT={}\n",
            s.project, s.gateway, s.postgres, s.redis, s.prometheus
        ));
        std::fs::write(&file, body).expect("env file written");
        let slo = dir.join(format!("infra/slo/{env}.toml"));
        let body = std::fs::read_to_string(&slo).expect("SLO file").replace("window = \"2m\"", "window = \"15s\"");
        std::fs::write(&slo, body).expect("SLO file written");
    }
}

struct EnvSettings {
    project: String,
    gateway: u16,
    prometheus: u16,
    postgres: u16,
    redis: u16,
}

impl EnvSettings {
    fn new(project: String) -> EnvSettings {
        EnvSettings {
            project,
            gateway: free_port(),
            prometheus: free_port(),
            postgres: free_port(),
            redis: free_port(),
        }
    }
}

struct Settings {
    staging: EnvSettings,
    prod: EnvSettings,
}

/// Everything this test created on the Docker host goes when it ends.
impl Drop for Settings {
    fn drop(&mut self) {
        for project in [&self.staging.project, &self.prod.project] {
            for label in ["xtask.project", "xtask.release-of"] {
                let ids = docker(&["ps", "-aq", "--filter", &format!("label={label}={project}")]);
                for id in text(&ids.stdout).split_whitespace() {
                    let _ = docker(&["rm", "-f", "-v", id]);
                }
            }
            for net in [project.clone(), format!("{project}-serving")] {
                let _ = docker(&["network", "rm", &net]);
            }
            for vol in ["pgdata", "redisdata", "promdata"] {
                let _ = docker(&["volume", "rm", &format!("{project}_{vol}")]);
            }
        }
    }
}

/// Run one job's steps in `checkout`; artifacts go to and come from `artifacts/NAME`.
fn run_job(
    job: &Job,
    checkout: &Path,
    artifacts: &Path,
    env: &BTreeMap<String, String>,
    repository: &BTreeMap<&str, String>,
) {
    for step in &job.steps {
        if let Some(uses) = step["uses"].as_str() {
            let with = strings(&step["with"]);
            let action = uses.split('@').next().expect("action");
            match action {
                // The clone is the checkout; the shared target directory is the cache.
                "actions/checkout" | "actions/cache" => {}
                "actions/upload-artifact" => {
                    let from = checkout.join(&with["path"]);
                    let dir = artifacts.join(&with["name"]);
                    std::fs::create_dir_all(&dir).expect("artifact dir");
                    assert!(from.is_file(), "{}: upload-artifact: {} was not written", job.name, with["path"]);
                    std::fs::copy(&from, dir.join(from.file_name().expect("file"))).expect("artifact kept");
                }
                "actions/download-artifact" => {
                    let into = checkout.join(&with["path"]);
                    std::fs::create_dir_all(&into).expect("download dir");
                    let dir = artifacts.join(&with["name"]);
                    let entries =
                        std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: no artifact {dir:?}: {e}", job.name));
                    for entry in entries.flatten() {
                        std::fs::copy(entry.path(), into.join(entry.file_name())).expect("artifact fetched");
                    }
                }
                other => panic!("{}: the test does not know what `{other}` does", job.name),
            }
            continue;
        }
        let run = step["run"].as_str().unwrap_or_else(|| panic!("{}: a step with neither uses nor run", job.name));
        eprintln!("[{}] $ {run}", job.name);
        // A step's own `env:` (its secrets) on top of the job's.
        let mut env = env.clone();
        for (k, v) in strings(&step["env"]) {
            match expand(&v, repository) {
                Some(v) => env.insert(k, v),
                None => env.remove(&k),
            };
        }
        let out = Command::new("bash")
            .args(["-e", "-c", run])
            .current_dir(checkout)
            .env_clear()
            .envs(&env)
            .output()
            .expect("bash runs");
        assert!(out.status.success(), "{}: `{run}` failed:\n{}\n{}", job.name, text(&out.stdout), text(&out.stderr));
    }
}

/// What a Docker environment's apps run: service -> the image reference their spec was given.
fn running_images(project: &str) -> BTreeMap<String, String> {
    let ids = docker_ok(&[
        "ps",
        "-q",
        "--filter",
        &format!("label=xtask.project={project}"),
        "--filter",
        "label=xtask.role=app",
    ]);
    ids.split_whitespace()
        .map(|id| {
            let spec = docker_ok(&["inspect", "--format", "{{index .Config.Labels \"xtask.spec\"}}", id]);
            let spec: serde_json::Value = serde_json::from_str(&spec).expect("run spec");
            (spec["service"].as_str().expect("service").to_string(), spec["image"].as_str().expect("image").to_string())
        })
        .collect()
}

#[test]
fn a_push_to_main_reaches_prod_with_the_digests_staging_verified() {
    // The Docker host's prerequisites: the dependency images (Postgres, Redis, Prometheus), as
    // any Docker target needs them.
    let base = xtask(&["dev", "base"]);
    assert!(base.status.success(), "dev base: {}", text(&base.stderr));
    let registry = Registry::start();
    let pid = std::process::id();
    let settings = Settings {
        staging: EnvSettings::new(format!("xtask-test-release-{pid}-staging")),
        prod: EnvSettings::new(format!("xtask-test-release-{pid}-prod")),
    };
    let commit =
        text(&Command::new("git").args(["rev-parse", "HEAD"]).current_dir(root()).output().expect("git").stdout)
            .trim()
            .to_string();
    let workflow: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(root().join(WORKFLOW)).expect("workflow")).expect("YAML");
    let all = jobs(&workflow);
    let order = push_order(&all);
    assert_eq!(order.iter().map(|j| j.name.as_str()).collect::<Vec<_>>(), ["build", "staging", "prod"]);

    // One checkout path for every job and every run: what cargo compiled for it stays valid.
    let checkout = target_dir().join("release-workflow/checkout");
    let repository: BTreeMap<&str, String> = BTreeMap::from([
        ("vars.REGISTRY", format!("127.0.0.1:{}", registry.port)),
        ("vars.DEPLOY_TARGET", "docker".to_string()),
        ("secrets.DOCKER_HOST", String::new()),
        ("secrets.POSTGRES_PASSWORD", "test-only-password".to_string()),
        // Where an Alertmanager would send alerts (this test's hosts run none).
        ("secrets.ALERT_WEBHOOK_URL", "https://alerts.example.invalid/hook".to_string()),
        // The test's registry asks for no credentials; `image login` stores these all the same.
        ("secrets.REGISTRY_USERNAME", "ci".to_string()),
        ("secrets.REGISTRY_PASSWORD", "test-only-registry-password".to_string()),
        ("github.workspace", checkout.display().to_string()),
        // A local Docker engine: no ssh key or kubeconfig to set up.
        ("secrets.DEPLOY_SSH_KEY", String::new()),
        ("secrets.DEPLOY_SSH_KNOWN_HOSTS", String::new()),
        ("secrets.KUBECONFIG_DATA", String::new()),
    ]);
    // What GitHub approves: the test approves both environments, as their reviewers would.
    let approved = ["staging", "production"];
    let work = tempfile::tempdir().expect("tempdir");
    let artifacts = work.path().join("artifacts");
    let home = std::env::var("HOME").expect("HOME");
    let path = std::env::var("PATH").expect("PATH");
    for job in order {
        if let Some(environment) = &job.environment {
            assert!(approved.contains(&environment.as_str()), "{} waits for {environment}'s approval", job.name);
        }
        fresh_clone(&checkout, &settings);
        let mut env: BTreeMap<String, String> = BTreeMap::from([
            ("HOME".to_string(), home.clone()),
            ("PATH".to_string(), path.clone()),
            ("CI".to_string(), "true".to_string()),
            ("GITHUB_SHA".to_string(), commit.clone()),
        ]);
        for (k, v) in strings(&workflow["env"]).into_iter().chain(job.env.clone()) {
            match expand(&v, &repository) {
                Some(v) => env.insert(k, v),
                None => env.remove(&k),
            };
        }
        run_job(job, &checkout, &artifacts, &env, &repository);
    }

    // Prod runs exactly what staging runs, which is what the build pushed, by digest.
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(artifacts.join("release-manifest/images.json")).expect("the artifact"))
            .expect("JSON");
    let staging = running_images(&settings.staging.project);
    let prod = running_images(&settings.prod.project);
    assert_eq!(staging.len(), 3, "api, worker and gateway run in staging: {staging:?}");
    assert_eq!(prod, staging, "prod runs the digests staging runs");
    for (service, image) in &prod {
        assert_eq!(
            Some(image.as_str()),
            manifest["images"][service]["pushed"].as_str(),
            "{service}: the pushed digest"
        );
        assert!(image.starts_with(&format!("127.0.0.1:{}/{service}@sha256:", registry.port)), "{image}");
    }
    // Both verified by their SLOs; prod's release records the commit that was promoted.
    for (env, project) in [("staging", &settings.staging.project), ("prod", &settings.prod.project)] {
        let record = docker_ok(&[
            "ps",
            "-a",
            "--filter",
            &format!("label=xtask.release-of={project}"),
            "--format",
            "{{.Label \"xtask.release\"}}",
        ]);
        let newest: serde_json::Value = record
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("release record"))
            .max_by_key(|r| r["id"].as_u64())
            .expect("a release");
        assert_eq!(newest["state"], "verified", "{env}: {newest:#}");
        assert_eq!(newest["commit"], commit.as_str(), "{env}: {newest:#}");
    }
}
