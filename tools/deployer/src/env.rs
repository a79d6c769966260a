//! A Docker environment: `infra/compose/env/ENV.env`, the compose variables plus the `DEPLOY_*`
//! keys (which services, which are published, which compose files, the project name). Values in
//! the process environment win over the file, so secrets come from CI, never from the repository.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use xtask_kit::UsageError;
use xtask_kit::handoff::{COMPOSE_DIR, COMPOSE_ENV_DIR};

/// One docker environment: its compose variables and its deploy settings.
#[derive(Clone, Debug)]
pub struct DockerEnv {
    pub name: String,
    pub project: String,
    pub file: PathBuf,
    /// Compose interpolation variables: the file's, then the process environment's over them.
    pub vars: BTreeMap<String, String>,
    pub compose_files: Vec<PathBuf>,
    /// Services to run (`DEPLOY_SERVICES`); `None`: every service without a profile.
    pub services: Option<Vec<String>>,
    /// Our services whose ports are published through an edge (`DEPLOY_PUBLISH`).
    pub publish: Vec<String>,
}

pub fn list(value: Option<&String>) -> Option<Vec<String>> {
    value.map(|v| v.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_string).collect())
}

impl DockerEnv {
    pub fn load(root: &Path, name: &str) -> Result<DockerEnv> {
        let file = root.join(COMPOSE_ENV_DIR).join(format!("{name}.env"));
        let text = match std::fs::read_to_string(&file) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut known: Vec<String> = std::fs::read_dir(root.join(COMPOSE_ENV_DIR))
                    .into_iter()
                    .flatten()
                    .flatten()
                    .filter_map(|e| e.file_name().to_str()?.strip_suffix(".env").map(str::to_string))
                    .collect();
                known.sort();
                return Err(UsageError(format!(
                    "no docker environment `{name}`: create {COMPOSE_ENV_DIR}/{name}.env (known: {})",
                    if known.is_empty() { "none".to_string() } else { known.join(", ") }
                ))
                .into());
            }
            Err(e) => return Err(e).with_context(|| format!("reading {}", file.display())),
        };
        let mut vars = xtask_kit::env_file::parse(&text, &file)?;
        for key in vars.keys().cloned().collect::<Vec<_>>() {
            if let Ok(v) = std::env::var(&key) {
                vars.insert(key, v);
            }
        }
        for (key, value) in std::env::vars() {
            if key.starts_with("DEPLOY_") {
                vars.insert(key, value);
            }
        }
        let project = vars.get("DEPLOY_PROJECT").cloned().unwrap_or_else(|| format!("xtask-{name}"));
        let valid = !project.is_empty()
            && project.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
            && project.starts_with(|c: char| c.is_ascii_alphanumeric());
        if !valid {
            return Err(UsageError(format!(
                "DEPLOY_PROJECT={project}: use lowercase letters, digits, '-' and '_' (it names containers)"
            ))
            .into());
        }
        let compose_files = list(vars.get("DEPLOY_COMPOSE_FILES"))
            .unwrap_or_else(|| vec!["docker-compose.yml".into()])
            .into_iter()
            .map(|f| root.join(COMPOSE_DIR).join(f))
            .collect::<Vec<_>>();
        for f in &compose_files {
            if !f.is_file() {
                return Err(UsageError(format!(
                    "{}: DEPLOY_COMPOSE_FILES names {}, which does not exist",
                    file.display(),
                    f.display()
                ))
                .into());
            }
        }
        Ok(DockerEnv {
            name: name.to_string(),
            services: list(vars.get("DEPLOY_SERVICES")),
            publish: list(vars.get("DEPLOY_PUBLISH")).unwrap_or_default(),
            project,
            file,
            compose_files,
            vars,
        })
    }

    pub fn network(&self) -> String {
        self.project.clone()
    }

    pub fn serving_network(&self) -> String {
        format!("{}-serving", self.project)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_committed_environment_loads() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let dir = root.join(COMPOSE_ENV_DIR);
        let mut seen = 0;
        for entry in std::fs::read_dir(&dir).expect("infra/compose/env exists") {
            let name = entry.expect("test input").file_name().to_string_lossy().into_owned();
            let Some(env) = name.strip_suffix(".env") else { continue };
            let loaded = DockerEnv::load(&root, env).expect("loads");
            assert!(loaded.publish.iter().all(|p| loaded.services.as_ref().is_none_or(|s| s.contains(p))), "{name}");
            seen += 1;
        }
        assert!(seen >= 2, "staging and prod are defined");
    }
}
