//! `deploy access --env ENV`: what a CI runner needs to reach the environment, from secrets in
//! its environment, written where ssh and kubectl look for them, never printed.
//!
//! - Docker target with `DOCKER_HOST=ssh://[user@]host[:port]`: `DEPLOY_SSH_KEY` (a private key)
//!   goes to `~/.ssh/xtask-deploy-key` (0600), `DEPLOY_SSH_KNOWN_HOSTS` (the host's key lines) to
//!   `~/.ssh/known_hosts`, and a `Host` block in `~/.ssh/config` uses that key for that host with
//!   strict host key checking, so the docker CLI's ssh transport connects unattended and only to
//!   the host whose key was given.
//! - Kubernetes target: `KUBECONFIG_DATA` (a kubeconfig) goes to `$KUBECONFIG`, else
//!   `~/.kube/config` (0600); the deploy's context guard then checks it names the environment's
//!   context.
//!
//! A missing secret the target needs is one line naming it, exit 2.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use xtask_kit::UsageError;
use xtask_kit::handoff::Target;

/// `ssh://[user@]host[:port]` -> (user, host, port).
fn ssh_target(docker_host: &str) -> Option<(Option<String>, String, Option<u16>)> {
    let rest = docker_host.strip_prefix("ssh://")?.trim_end_matches('/');
    let (user, host_port) = match rest.split_once('@') {
        Some((u, h)) => (Some(u.to_string()), h),
        None => (None, rest),
    };
    let (host, port) = match host_port.rsplit_once(':') {
        Some((h, p)) => (h.to_string(), Some(p.parse().ok()?)),
        None => (host_port.to_string(), None),
    };
    (!host.is_empty()).then_some((user, host, port))
}

/// Writes `text` to `path` with `mode`, making its folder (0700).
fn write_private(path: &Path, text: &str, mode: u32) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("creating {}", dir.display()))?;
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    file.write_all(text.as_bytes())?;
    if !text.ends_with('\n') {
        file.write_all(b"\n")?;
    }
    // An existing file keeps its mode on open: set it.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    Ok(())
}

/// `~/.ssh/config` with our block for `host` (replacing an earlier one of ours).
fn ssh_config(existing: &str, host: &str, user: Option<&str>, port: Option<u16>, key: &Path) -> String {
    let begin = format!("# xtask deploy access: {host}");
    let end = "# end xtask deploy access";
    let mut out = String::new();
    let mut skipping = false;
    for line in existing.lines() {
        if line == begin {
            skipping = true;
        } else if skipping && line == end {
            skipping = false;
        } else if !skipping {
            out.push_str(line);
            out.push('\n');
        }
    }
    out.push_str(&format!(
        "{begin}\nHost {host}\n  IdentityFile {}\n  IdentitiesOnly yes\n  StrictHostKeyChecking yes\n",
        key.display()
    ));
    if let Some(user) = user {
        out.push_str(&format!("  User {user}\n"));
    }
    if let Some(port) = port {
        out.push_str(&format!("  Port {port}\n"));
    }
    out.push_str(end);
    out.push('\n');
    out
}

fn home() -> Result<PathBuf> {
    std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(PathBuf::from)
        .ok_or_else(|| UsageError("deploy access: HOME is not set".into()).into())
}

fn secret(name: &str, why: &str) -> Result<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty()).ok_or_else(|| {
        UsageError(format!("{name} is not set: {why} (in the release workflow: an environment secret)")).into()
    })
}

pub fn run(target: Target, env: &str) -> Result<()> {
    match target {
        Target::Docker => {
            let docker_host = std::env::var("DOCKER_HOST").unwrap_or_default();
            let Some((user, host, port)) = ssh_target(&docker_host) else {
                if docker_host.starts_with("ssh://") {
                    return Err(UsageError(format!("DOCKER_HOST={docker_host} is not ssh://[user@]host[:port]")).into());
                }
                let what = if docker_host.is_empty() { "the local engine".to_string() } else { docker_host };
                eprintln!("{env}: DOCKER_HOST is {what}, not ssh://: no access to set up");
                return Ok(());
            };
            let key = secret("DEPLOY_SSH_KEY", &format!("the private key that logs in to {host}"))?;
            let known = secret(
                "DEPLOY_SSH_KNOWN_HOSTS",
                &format!("{host}'s host key lines (`ssh-keyscan {host}`, checked), so no other host is trusted"),
            )?;
            let ssh = home()?.join(".ssh");
            let key_file = ssh.join("xtask-deploy-key");
            write_private(&key_file, &key, 0o600)?;
            let hosts_file = ssh.join("known_hosts");
            let mut hosts = std::fs::read_to_string(&hosts_file).unwrap_or_default();
            for line in known.lines().filter(|l| !l.trim().is_empty()) {
                if !hosts.lines().any(|h| h == line) {
                    hosts.push_str(line);
                    hosts.push('\n');
                }
            }
            write_private(&hosts_file, &hosts, 0o644)?;
            let config_file = ssh.join("config");
            let existing = std::fs::read_to_string(&config_file).unwrap_or_default();
            write_private(&config_file, &ssh_config(&existing, &host, user.as_deref(), port, &key_file), 0o600)?;
            eprintln!(
                "{env}: ssh to {host} uses {} with strict host key checking ({} known host line(s))",
                key_file.display(),
                known.lines().filter(|l| !l.trim().is_empty()).count()
            );
        }
        Target::K8s => {
            let config = secret("KUBECONFIG_DATA", "the kubeconfig of the cluster this environment deploys to")?;
            let path = std::env::var_os("KUBECONFIG")
                .filter(|k| !k.is_empty())
                .map(PathBuf::from)
                .map_or_else(|| home().map(|h| h.join(".kube/config")), Ok)?;
            write_private(&path, &config, 0o600)?;
            eprintln!("{env}: kubeconfig written to {}", path.display());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ssh_docker_hosts_parse_and_the_config_block_is_ours_alone() {
        assert_eq!(
            ssh_target("ssh://deploy@prod-host:2222"),
            Some((Some("deploy".into()), "prod-host".into(), Some(2222)))
        );
        assert_eq!(ssh_target("ssh://host"), Some((None, "host".into(), None)));
        assert_eq!(ssh_target("tcp://host:2375"), None);
        assert_eq!(ssh_target("ssh://host:port"), None);
        let key = Path::new("/h/.ssh/xtask-deploy-key");
        let once = ssh_config("Host other\n  User me\n", "prod-host", Some("deploy"), None, key);
        let twice = ssh_config(&once, "prod-host", Some("deploy"), Some(22), key);
        assert!(twice.starts_with("Host other\n  User me\n"), "{twice}");
        assert_eq!(twice.matches("Host prod-host").count(), 1, "replaced, not repeated: {twice}");
        assert!(twice.contains("  StrictHostKeyChecking yes\n") && twice.contains("  Port 22\n"), "{twice}");
    }
}
