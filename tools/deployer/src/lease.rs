//! The deploy lock of a Kubernetes environment, kept in the cluster so two CI runners, or a
//! laptop and CI, never change one environment at once: a `coordination.k8s.io/v1` Lease
//! (`xtask-deploy` in the environment's namespace) naming its holder (the CI run, or
//! user@host) with a duration, renewed while the deploy runs and deleted when it ends.
//!
//! Taking it is `kubectl create` (the API server refuses a second create: AlreadyExists); a lease
//! whose holder stopped renewing it is taken over with `kubectl replace` carrying the
//! resourceVersion read, so two takers of one expired lease cannot both win (Conflict). A held
//! lease refuses the deploy naming the holder and when it expires; `deploy unlock --force`
//! deletes it. See https://kubernetes.io/docs/concepts/architecture/leases/.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, Result};
use serde::Deserialize;
use xtask_kit::UsageError;
use xtask_kit::date::{now_epoch, parse_rfc3339, rfc3339_utc};

use crate::kube::Kube;

pub const LEASE: &str = "xtask-deploy";
/// How long a lease lasts unless renewed; it is renewed every third of that.
const SECONDS: i64 = 30;

/// Who holds the lock: the CI run, or the person and machine.
pub fn identity() -> String {
    let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    if let (Some(repo), Some(run)) = (var("GITHUB_REPOSITORY"), var("GITHUB_RUN_ID")) {
        let attempt = var("GITHUB_RUN_ATTEMPT").unwrap_or_else(|| "1".into());
        return format!("github-actions {repo} run {run} attempt {attempt}");
    }
    let user = var("USER").or_else(|| var("LOGNAME")).unwrap_or_else(|| "someone".into());
    let host = std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .or_else(|| var("HOSTNAME"))
        .unwrap_or_else(|| "unknown-host".into());
    format!("{user}@{host} pid {}", std::process::id())
}

#[derive(Deserialize, Debug, Default)]
#[serde(default, rename_all = "camelCase")]
struct LeaseSpec {
    holder_identity: String,
    lease_duration_seconds: i64,
    renew_time: String,
}

#[derive(Deserialize, Debug, Default)]
#[serde(default, rename_all = "camelCase")]
struct LeaseMeta {
    resource_version: String,
}

#[derive(Deserialize, Debug, Default)]
#[serde(default)]
struct Lease {
    metadata: LeaseMeta,
    spec: LeaseSpec,
}

impl Lease {
    /// When it runs out (seconds since the epoch); an unreadable time counts as expired.
    fn expires(&self) -> i64 {
        parse_rfc3339(&self.spec.renew_time).map_or(0, |t| t + self.spec.lease_duration_seconds.max(1))
    }
}

/// The Lease as JSON; `resource_version` makes a replace conditional on nobody else's change.
fn document(namespace: &str, holder: &str, acquired: i64, resource_version: Option<&str>) -> String {
    let micro = |t: i64| rfc3339_utc(t).replace('Z', ".000000Z");
    let mut doc = serde_json::json!({
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {"name": LEASE, "namespace": namespace, "labels": {"app.kubernetes.io/managed-by": "xtask"}},
        "spec": {
            "holderIdentity": holder,
            "leaseDurationSeconds": SECONDS,
            "acquireTime": micro(acquired),
            "renewTime": micro(now_epoch()),
        },
    });
    if let Some(rv) = resource_version {
        doc["metadata"]["resourceVersion"] = rv.into();
    }
    serde_json::to_string_pretty(&doc).expect("JSON values serialise")
}

fn read(kube: &Kube, namespace: &str) -> Result<Option<Lease>> {
    kube.get(
        &["get", "lease", LEASE, "-n", namespace, "-o", "json"],
        &format!("the deploy lock (Lease {LEASE} in {namespace})"),
    )
}

/// A held lock: renewed in the background, deleted on drop.
pub struct Held {
    kube: Kube,
    namespace: String,
    holder: String,
    stop: Arc<AtomicBool>,
    renewer: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Held {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(renewer) = self.renewer.take() {
            let _ = renewer.join();
        }
        // Only our own lease is deleted: one taken over after ours expired stays.
        if let Ok(Some(lease)) = read(&self.kube, &self.namespace)
            && lease.spec.holder_identity == self.holder
        {
            let _ = self.kube.cmd(&["delete", "lease", LEASE, "-n", &self.namespace]).output();
            eprintln!("released the deploy lock of {}", self.namespace);
        }
    }
}

/// Take the environment's deploy lock, or refuse (usage error) naming who holds it.
pub fn acquire(kube: &Kube, namespace: &str, env: &str, dir: &Path) -> Result<Held> {
    let holder = identity();
    let acquired = now_epoch();
    let file = dir.join("lease.json");
    std::fs::write(&file, document(namespace, &holder, acquired, None))?;
    let path = file.display().to_string();
    let args = ["create", "-f", &path, "-n", namespace];
    kube.announce(&args);
    let out = kube.cmd(&args).output()?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr).trim().to_string();
        if !err.contains("AlreadyExists") {
            anyhow::bail!("cannot take the deploy lock of {env} (Lease {LEASE} in {namespace}): {err}");
        }
        let lease = read(kube, namespace)?.context("the deploy lock vanished while it was read; try again")?;
        if lease.expires() > now_epoch() {
            return Err(UsageError(format!(
                "{env} is being deployed by {} (Lease {LEASE} in {namespace}, held until {} unless renewed); wait for it, or if that deploy is gone: cargo xtask deploy unlock --env {env} --force",
                lease.spec.holder_identity,
                rfc3339_utc(lease.expires())
            ))
            .into());
        }
        eprintln!(
            "the deploy lock of {env} held by {} expired at {}: taking it over",
            lease.spec.holder_identity,
            rfc3339_utc(lease.expires())
        );
        std::fs::write(&file, document(namespace, &holder, acquired, Some(&lease.metadata.resource_version)))?;
        kube.checked(&["replace", "-f", &path, "-n", namespace]).map_err(|e| {
            UsageError(format!(
                "{env}: another deploy took the expired lock first ({}); nothing was applied",
                crate::one_line(&format!("{e:#}"))
            ))
        })?;
    }
    eprintln!("took the deploy lock of {env} (Lease {LEASE} in {namespace}) as {holder}");
    let stop = Arc::new(AtomicBool::new(false));
    let renewer = {
        let (kube, namespace, holder, stop, file) =
            (kube.clone(), namespace.to_string(), holder.clone(), stop.clone(), dir.join("lease-renew.json"));
        std::thread::spawn(move || renew(&kube, &namespace, &holder, acquired, &stop, &file))
    };
    Ok(Held { kube: kube.clone(), namespace: namespace.to_string(), holder, stop, renewer: Some(renewer) })
}

/// Every third of the lease's duration: renew it while it is still ours.
fn renew(kube: &Kube, namespace: &str, holder: &str, acquired: i64, stop: &AtomicBool, file: &PathBuf) {
    let every = Duration::from_secs((SECONDS / 3) as u64);
    loop {
        let started = std::time::Instant::now();
        while started.elapsed() < every {
            if stop.load(Ordering::SeqCst) {
                return;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        match read(kube, namespace) {
            Ok(Some(lease)) if lease.spec.holder_identity == holder => {
                let doc = document(namespace, holder, acquired, Some(&lease.metadata.resource_version));
                let path = file.display().to_string();
                if std::fs::write(file, doc).is_err()
                    || !kube.cmd(&["replace", "-f", &path, "-n", namespace]).succeeds()
                {
                    eprintln!("warning: renewing the deploy lock of {namespace} failed; retrying");
                }
            }
            Ok(other) => {
                let who = other.map_or("nobody (deleted)".to_string(), |l| l.spec.holder_identity);
                eprintln!(
                    "warning: the deploy lock of {namespace} is now held by {who}; this deploy no longer holds it"
                );
                return;
            }
            Err(e) => eprintln!("warning: reading the deploy lock of {namespace}: {e:#}"),
        }
    }
}

/// `deploy unlock --env ENV --force`: delete the lock whoever holds it.
pub fn unlock(kube: &Kube, namespace: &str, env: &str, force: bool) -> Result<()> {
    let Some(lease) = read(kube, namespace)? else {
        eprintln!("{env} is not locked (no Lease {LEASE} in {namespace})");
        return Ok(());
    };
    let expired = lease.expires() <= now_epoch();
    let state = if expired { "expired" } else { "held" };
    if !force {
        return Err(UsageError(format!(
            "{env}'s deploy lock is {state} by {} (until {}); deleting it while that deploy runs lets two deploys change {env} at once: pass --force to delete it anyway",
            lease.spec.holder_identity,
            rfc3339_utc(lease.expires())
        ))
        .into());
    }
    kube.checked(&["delete", "lease", LEASE, "-n", namespace])?;
    eprintln!("deleted the deploy lock of {env}, {state} by {}", lease.spec.holder_identity);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_runs_out_its_duration_after_its_last_renewal() {
        let doc: serde_json::Value = serde_json::from_str(&document("ns", "me", 0, Some("7"))).expect("JSON");
        assert_eq!(doc["metadata"]["resourceVersion"], "7", "a replace is conditional");
        assert!(doc["spec"]["renewTime"].as_str().is_some_and(|t| t.ends_with(".000000Z")), "MicroTime: {doc}");
        let lease: Lease = serde_json::from_value(doc).expect("reads back");
        let renewed = parse_rfc3339(&lease.spec.renew_time).expect("time");
        assert_eq!(lease.expires(), renewed + SECONDS);
        assert_eq!(Lease::default().expires(), 0, "no renewal time: long expired");
    }
}
