//! Compose service to `docker run` spec: what a container is (image, options, command, health
//! check, grace), kept in its labels so a rollback can run it again exactly; the edge that holds
//! a published port; dependency order. Pure but for the image health lookup, so every rule is a
//! table test.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use anyhow::{Result, bail};
use serde::{Deserialize, Serialize};
use xtask_kit::UsageError;
use xtask_kit::images::BuildManifest;
use xtask_kit::process::shell_quote;

use crate::compose::{ComposeService, OneOrMany, Port, parse_port, scalar, unescape, volume_arg};
use crate::env::DockerEnv;

/// How long an old container gets to drain after SIGTERM before Docker kills it.
pub const DEFAULT_STOP_GRACE: u64 = 30;

/// Version of the run spec kept in the labels.
pub const SPEC_VERSION: u32 = 1;

/// What a container is: image and `docker run` arguments (without name, labels, networks).
/// Kept as JSON in the container's labels so a rollback can run it again exactly.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunSpec {
    pub version: u32,
    pub service: String,
    /// What `docker run` is given: an image ID, or a digest reference when pushed.
    pub image: String,
    /// For people: `api:1a2b3c4d5e6f`.
    pub image_name: String,
    pub env: BTreeMap<String, String>,
    pub options: Vec<String>,
    pub command: Vec<String>,
    /// Has a health check to gate on (else: running is enough).
    pub healthcheck: bool,
    pub stop_grace: u64,
    /// Edge only: the ports it holds.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<Port>,
    /// Services this one needs first (a rollback replaces in this order too).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub depends_on: Vec<String>,
}

impl RunSpec {
    pub fn hash(&self) -> String {
        use sha2::Digest;
        let json = serde_json::to_vec(self).expect("specs serialise");
        let digest = sha2::Sha256::digest(&json);
        digest.iter().take(8).map(|b| format!("{b:02x}")).collect()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Ours: rolled beside the old one.
    App,
    /// Stateful or third-party: created once, never replaced by deploy.
    Dependency,
    /// Holds a published port in front of an app.
    Edge,
}

impl Role {
    pub fn label(self) -> &'static str {
        match self {
            Role::App => "app",
            Role::Dependency => "dependency",
            Role::Edge => "edge",
        }
    }
}

/// What deploy will run for one service.
#[derive(Clone, Debug)]
pub struct Planned {
    pub service: String,
    pub role: Role,
    pub spec: RunSpec,
    /// Published ports (apps: held by an edge when the service is in DEPLOY_PUBLISH).
    pub ports: Vec<Port>,
}

impl Planned {
    /// One of our services, as a release recorded it.
    pub fn app(spec: RunSpec) -> Planned {
        Planned { service: spec.service.clone(), role: Role::App, spec, ports: Vec::new() }
    }
}

/// Dependency order: every service after what it depends on (names outside the map are taken
/// as there already); ties by name.
pub fn order(needs: &BTreeMap<String, Vec<String>>) -> Result<Vec<String>> {
    let mut done: Vec<String> = Vec::new();
    let mut left: BTreeSet<String> = needs.keys().cloned().collect();
    while !left.is_empty() {
        let ready: Vec<String> = left
            .iter()
            .filter(|s| needs[*s].iter().all(|d| done.contains(d) || !needs.contains_key(d)))
            .cloned()
            .collect();
        if ready.is_empty() {
            bail!("the services' depends_on form a cycle: {}", left.into_iter().collect::<Vec<_>>().join(", "));
        }
        for s in ready {
            left.remove(&s);
            done.push(s);
        }
    }
    Ok(done)
}

/// Our image for a service: the pushed digest reference when there is one, else Docker's ID.
pub fn app_image(manifest: &BuildManifest, manifest_path: &Path, service: &str) -> Result<(String, String)> {
    let Some(record) = manifest.images.get(service) else {
        return Err(UsageError(format!(
            "{} has no image for `{service}`; run `cargo xtask image build` first",
            manifest_path.display()
        ))
        .into());
    };
    if record.dirty {
        eprintln!("warning: `{service}` was built from a tree with uncommitted changes ({})", record.image);
    }
    Ok((record.pushed.clone().unwrap_or_else(|| record.id.clone()), record.image.clone()))
}

/// Turn one compose service into a run spec.
/// The image's own health check test (`["CMD", ...]`), if it has one: a fact about the Docker
/// host, looked up for `plan_service` (by Docker when deploying, by a table in tests).
pub type ImageHealth<'a> = &'a dyn Fn(&str) -> Result<Option<Vec<String>>>;

/// Compose's description of one service as the `docker run` spec deploy runs it with. Pure but
/// for `image_health`, so every translation rule is a table test.
pub fn plan_service(
    image_health: ImageHealth<'_>,
    env: &DockerEnv,
    name: &str,
    svc: ComposeService,
    ours: Option<(String, String)>,
) -> Result<Planned> {
    if svc.entrypoint.is_some() {
        return Err(UsageError(format!(
            "service {name}: `entrypoint` is not supported by deploy --target docker; set it in the image"
        ))
        .into());
    }
    let role = if ours.is_some() { Role::App } else { Role::Dependency };
    let (image, image_name) = match ours {
        Some(pair) => pair,
        None => {
            let image = svc.image.clone().ok_or_else(|| UsageError(format!("service {name} has no image")))?;
            (image.clone(), image)
        }
    };
    let mut options: Vec<String> = Vec::new();
    let mut push = |flag: &str, value: String| {
        options.push(flag.to_string());
        options.push(value);
    };
    if let Some(r) = &svc.restart {
        push("--restart", r.clone());
    }
    if let Some(u) = &svc.user {
        push("--user", u.clone());
    }
    for c in &svc.cap_drop {
        push("--cap-drop", c.clone());
    }
    for c in &svc.cap_add {
        push("--cap-add", c.clone());
    }
    for s in &svc.security_opt {
        push("--security-opt", s.clone());
    }
    for t in svc.tmpfs.clone().map(OneOrMany::into_vec).unwrap_or_default() {
        push("--tmpfs", t);
    }
    if let Some(m) = &svc.mem_limit {
        push("--memory", scalar(m));
    }
    if let Some(c) = &svc.cpus {
        push("--cpus", scalar(c));
    }
    for v in &svc.volumes {
        push("--volume", volume_arg(v, &env.project, name)?);
    }
    let mut healthcheck = false;
    match &svc.healthcheck {
        Some(h) if h.disable => push("--no-healthcheck", String::new()),
        Some(h) => {
            let test = h.test.clone().map(OneOrMany::into_vec).unwrap_or_default();
            let test: Vec<String> = test.iter().map(|w| unescape(w)).collect();
            match test.first().map(String::as_str) {
                Some("NONE") => push("--no-healthcheck", String::new()),
                Some("CMD-SHELL") => {
                    push("--health-cmd", test[1..].join(" "));
                    healthcheck = true;
                }
                Some("CMD") => {
                    // `docker run` can only say CMD-SHELL; an image without a shell (ours are
                    // FROM scratch) keeps its own exec-form check when it is the same one.
                    let same = image_health(&image)?.is_some_and(|own| own == test);
                    if !same {
                        let words: Vec<String> = test[1..].iter().map(|w| shell_quote(w)).collect();
                        push("--health-cmd", words.join(" "));
                    }
                    healthcheck = true;
                }
                Some(other) if test.len() == 1 => {
                    push("--health-cmd", other.to_string());
                    healthcheck = true;
                }
                _ => healthcheck = image_health(&image)?.is_some(),
            }
            if let Some(v) = &h.interval {
                push("--health-interval", v.clone());
            }
            if let Some(v) = &h.timeout {
                push("--health-timeout", v.clone());
            }
            if let Some(v) = h.retries {
                push("--health-retries", v.to_string());
            }
            if let Some(v) = &h.start_period {
                push("--health-start-period", v.clone());
            }
        }
        None => healthcheck = image_health(&image)?.is_some_and(|t| t.first().is_some_and(|w| w != "NONE")),
    }
    if svc.read_only {
        options.push("--read-only".into());
    }
    options.retain(|o| !o.is_empty());
    let ports = svc.ports.iter().map(|p| parse_port(p, name)).collect::<Result<Vec<_>>>()?;
    let stop_grace =
        // Docker counts whole seconds: a part-second grace rounds up rather than to no grace.
        svc.stop_grace_period.as_deref().and_then(xtask_kit::duration::parse).map_or(DEFAULT_STOP_GRACE, |d| {
            d.as_secs() + u64::from(d.subsec_nanos() > 0)
        });
    if role == Role::App && !healthcheck {
        return Err(UsageError(format!(
            "service {name} has no health check; deploy --target docker switches traffic only to a healthy container (add `healthcheck:` in compose)"
        ))
        .into());
    }
    Ok(Planned {
        service: name.to_string(),
        role,
        spec: RunSpec {
            version: SPEC_VERSION,
            service: name.to_string(),
            image,
            image_name,
            env: svc.environment.iter().map(|(k, v)| (k.clone(), scalar(v))).collect(),
            options,
            command: svc
                .command
                .clone()
                .map(OneOrMany::into_vec)
                .unwrap_or_default()
                .iter()
                .map(|w| unescape(w))
                .collect(),
            healthcheck,
            stop_grace,
            ports: Vec::new(),
            depends_on: svc.depends_on.keys().cloned().collect(),
        },
        ports,
    })
}

/// The edge in front of a published app: the gateway binary routing `/` to the service.
pub fn edge_spec(gateway_image: &(String, String), app: &Planned, port: &Port) -> RunSpec {
    let env = BTreeMap::from([
        ("GATEWAY_ROUTES".to_string(), format!("/=http://{}:{}", app.service, port.container_port)),
        ("PORT".to_string(), port.container_port.to_string()),
        ("SHUTDOWN_DELAY".to_string(), "1s".to_string()),
        ("RUST_LOG".to_string(), "info".to_string()),
    ]);
    let options = [
        "--restart",
        "unless-stopped",
        "--user",
        "65532:65532",
        "--cap-drop",
        "ALL",
        "--security-opt",
        "no-new-privileges:true",
        "--read-only",
        "--health-interval",
        "2s",
        "--health-timeout",
        "3s",
        "--health-retries",
        "15",
    ]
    .map(str::to_string)
    .to_vec();
    RunSpec {
        version: SPEC_VERSION,
        service: format!("edge-{}-{}", app.service, port.container_port),
        image: gateway_image.0.clone(),
        image_name: gateway_image.1.clone(),
        env,
        options,
        command: Vec::new(),
        healthcheck: true,
        stop_grace: 10,
        ports: vec![port.clone()],
        depends_on: vec![app.service.clone()],
    }
}

/// The edge's identity for deciding whether it must be recreated: routing and ports, not the
/// image (a new gateway image alone does not justify the gap a recreate costs).
pub fn edge_identity(spec: &RunSpec) -> (BTreeMap<String, String>, Vec<Port>) {
    (spec.env.clone(), spec.ports.clone())
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    fn env() -> DockerEnv {
        DockerEnv {
            name: "staging".into(),
            project: "xtask-staging".into(),
            file: PathBuf::from("staging.env"),
            vars: BTreeMap::new(),
            compose_files: Vec::new(),
            services: None,
            publish: Vec::new(),
        }
    }

    fn service(yaml: &str) -> ComposeService {
        serde_yaml::from_str(yaml).unwrap_or_else(|e| panic!("compose service {yaml}: {e}"))
    }

    /// Images as a table: `api:v1` carries our binary's exec-form check, `redis:7` none.
    fn image_health(image: &str) -> Result<Option<Vec<String>>> {
        Ok(match image {
            "sha256:api" => Some(vec!["CMD".into(), "/usr/local/bin/api".into(), "healthcheck".into()]),
            _ => None,
        })
    }

    fn planned(name: &str, yaml: &str, ours: bool) -> Result<Planned> {
        let ours = ours.then(|| ("sha256:api".to_string(), "api:v1".to_string()));
        plan_service(&image_health, &env(), name, service(yaml), ours)
    }

    /// Compose service -> `docker run` spec, rule by rule.
    #[test]
    fn compose_services_become_run_specs() {
        let cases: &[(&str, &str, &[&str])] = &[
            (
                "restart and user",
                "{image: redis:7, restart: unless-stopped, user: \"999\"}",
                &["--restart", "unless-stopped", "--user", "999"],
            ),
            (
                "capabilities",
                "{image: redis:7, cap_drop: [ALL], cap_add: [NET_BIND_SERVICE]}",
                &["--cap-drop", "ALL", "--cap-add", "NET_BIND_SERVICE"],
            ),
            (
                "security options and tmpfs",
                "{image: redis:7, security_opt: [\"no-new-privileges:true\"], tmpfs: /tmp}",
                &["--security-opt", "no-new-privileges:true", "--tmpfs", "/tmp"],
            ),
            ("limits", "{image: redis:7, mem_limit: 256m, cpus: 0.5}", &["--memory", "256m", "--cpus", "0.5"]),
            (
                "a named volume is the project's",
                "{image: redis:7, volumes: [\"data:/data\"]}",
                &["--volume", "xtask-staging_data:/data"],
            ),
            ("read-only root", "{image: redis:7, read_only: true}", &["--read-only"]),
            (
                "shell-form check",
                "{image: redis:7, healthcheck: {test: [CMD-SHELL, redis-cli ping], interval: 5s, retries: 3}}",
                &["--health-cmd", "redis-cli ping", "--health-interval", "5s", "--health-retries", "3"],
            ),
            ("a disabled check", "{image: redis:7, healthcheck: {disable: true}}", &["--no-healthcheck"]),
        ];
        for (what, yaml, options) in cases {
            let p = planned("redis", yaml, false).unwrap_or_else(|e| panic!("{what}: {e:#}"));
            assert_eq!(p.role, Role::Dependency, "{what}");
            assert_eq!(p.spec.options, options.iter().map(|o| o.to_string()).collect::<Vec<_>>(), "{what}");
        }
    }

    #[test]
    fn our_images_keep_their_own_exec_form_check_and_others_get_it_in_shell_form() {
        let same = "{healthcheck: {test: [CMD, /usr/local/bin/api, healthcheck]}}";
        let p = planned("api", same, true).expect("plans");
        assert_eq!((p.role, p.spec.healthcheck), (Role::App, true));
        assert!(p.spec.options.is_empty(), "the image's own check is kept: {:?}", p.spec.options);
        assert_eq!((p.spec.image.as_str(), p.spec.image_name.as_str()), ("sha256:api", "api:v1"));

        let other = "{healthcheck: {test: [CMD, /usr/local/bin/api, healthcheck, --path, /ready z]}}";
        let p = planned("api", other, true).expect("plans");
        assert_eq!(p.spec.options, ["--health-cmd", "/usr/local/bin/api healthcheck --path '/ready z'"]);

        let inherited = planned("api", "{}", true).expect("the image's check counts");
        assert!(inherited.spec.healthcheck);
    }

    #[test]
    fn environment_command_ports_grace_and_dependencies_are_carried() {
        let yaml = "{image: redis:7, environment: {A: \"1\", B: two}, command: [redis-server, --save, \"\"], \
                    ports: [\"127.0.0.1:16379:6379\"], stop_grace_period: 1m30s, depends_on: {postgres: {condition: service_healthy}}}";
        let p = planned("redis", yaml, false).expect("plans");
        assert_eq!(p.spec.env.get("B").map(String::as_str), Some("two"));
        assert_eq!(p.spec.command, ["redis-server", "--save", ""]);
        assert_eq!(p.ports.len(), 1);
        assert_eq!(p.spec.stop_grace, 90);
        assert_eq!(p.spec.depends_on, ["postgres"]);
        assert!(!p.spec.healthcheck, "no check anywhere: running is enough for a dependency");
    }

    #[test]
    fn what_deploy_cannot_honour_is_refused_by_name() {
        let no_check = planned("api", "{healthcheck: {test: [NONE]}}", true).expect_err("an app without a check");
        assert!(format!("{no_check:#}").contains("service api has no health check"), "{no_check:#}");
        let entry = planned("redis", "{image: redis:7, entrypoint: [sh]}", false).expect_err("entrypoint");
        assert!(format!("{entry:#}").contains("`entrypoint` is not supported"), "{entry:#}");
        let no_image = planned("redis", "{}", false).expect_err("no image");
        assert!(format!("{no_image:#}").contains("service redis has no image"), "{no_image:#}");
        assert!(
            serde_yaml::from_str::<ComposeService>("{image: x, privileged: true}").is_err(),
            "unknown keys refused"
        );
    }

    #[test]
    fn dependency_order_and_cycles() {
        let mk = |name: &str, deps: &[&str]| Planned {
            service: name.into(),
            role: Role::App,
            spec: RunSpec {
                version: 1,
                service: name.into(),
                image: "i".into(),
                image_name: "i".into(),
                env: BTreeMap::new(),
                options: Vec::new(),
                command: Vec::new(),
                healthcheck: true,
                stop_grace: 1,
                ports: Vec::new(),
                depends_on: deps.iter().map(|d| d.to_string()).collect(),
            },
            ports: Vec::new(),
        };
        let needs = |planned: BTreeMap<String, Planned>| -> BTreeMap<String, Vec<String>> {
            planned.into_iter().map(|(k, p)| (k, p.spec.depends_on)).collect()
        };
        let planned: BTreeMap<String, Planned> = [
            mk("gateway", &["api"]),
            mk("worker", &["api", "postgres"]),
            mk("api", &["postgres", "redis"]),
            mk("postgres", &[]),
            mk("redis", &[]),
        ]
        .into_iter()
        .map(|p| (p.service.clone(), p))
        .collect();
        assert_eq!(order(&needs(planned)).expect("test input"), ["postgres", "redis", "api", "gateway", "worker"]);
        let cyclic: BTreeMap<String, Planned> =
            [mk("a", &["b"]), mk("b", &["a"])].into_iter().map(|p| (p.service.clone(), p)).collect();
        assert!(order(&needs(cyclic)).expect_err("refused").to_string().contains("cycle: a, b"));
    }
}
