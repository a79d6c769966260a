//! Our deploy policy over typed objects: what every workload must declare before it may run.
//! Each rule has a stable id (used in messages, tests and fixtures); `rules()` lists them.

use crate::schema::{Document, Object};
use k8s_openapi::api::core::v1::{Container, PodSpec, PodTemplateSpec};
use k8s_openapi::api::networking::v1::{NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub rule: &'static str,
    pub object: String,
    pub message: String,
}

/// Every rule: id and what it holds.
pub fn rules() -> &'static [(&'static str, &'static str)] {
    &[
        ("schema", "every document is a known kind of the pinned API version, with no unknown fields"),
        ("probes", "every container has a liveness and a readiness probe"),
        ("resources", "every container requests and limits cpu and memory"),
        ("non-root", "pods run as non-root (runAsNonRoot, non-zero runAsUser)"),
        ("read-only-root", "every container's root filesystem is read-only"),
        ("privilege", "no privileged containers, no privilege escalation, all capabilities dropped"),
        ("host-namespaces", "no hostNetwork, hostPID or hostIPC"),
        ("image-tag", "images name a tag or digest, never `latest`"),
        ("image-digest", "images are pinned by digest (deploy only)"),
        ("no-secrets", "Secrets are referenced, never rendered from the repository"),
        ("pdb", "outside dev, every Deployment is covered by a PodDisruptionBudget"),
        ("network-policy", "outside dev, every Deployment's pods are selected by a NetworkPolicy"),
        (
            "namespace",
            "every namespace the render uses is rendered as a Namespace; outside dev it enforces Pod Security `restricted`",
        ),
        ("hpa-replicas", "a Deployment an HPA scales sets no `replicas` (the HPA owns the count)"),
        (
            "pdb-drain",
            "a PodDisruptionBudget lets at least one pod go (never minAvailable at the minimum replicas, never maxUnavailable 0)",
        ),
        ("ingress-tls", "outside dev, every Ingress serves TLS for each of its hosts"),
        (
            "quota-fits",
            "the namespace's ResourceQuota holds the render at full scale (HPA maxima, rollout surge, StatefulSets, volumes) and no container exceeds the LimitRange max",
        ),
        (
            "needs-egress",
            "every dependency a service `needs` is reachable: its pods in the render, or an ipBlock annotated `xtask/egress-to` (a real CIDR outside dev)",
        ),
        (
            "deployer-role",
            "the deployer's Role (`xtask-deployer`, given with the render) grants exactly the render's kinds and what a deploy reads besides",
        ),
    ]
}

/// What the checks need to know about where the render goes.
#[derive(Debug, Clone, Copy, Default)]
pub struct Context {
    /// staging, prod and anything but dev: PDBs and NetworkPolicies are required.
    pub production_like: bool,
    /// deploy: images must be pinned by digest.
    pub require_digests: bool,
}

fn labels_match(selector: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    let exact = selector.match_labels.iter().flatten().all(|(k, v)| labels.get(k) == Some(v));
    let expressions = selector.match_expressions.iter().flatten().all(|e| {
        let value = labels.get(&e.key);
        let values = e.values.as_deref().unwrap_or_default();
        match e.operator.as_str() {
            "In" => value.is_some_and(|v| values.contains(v)),
            "NotIn" => value.is_none_or(|v| !values.contains(v)),
            "Exists" => value.is_some(),
            "DoesNotExist" => value.is_none(),
            _ => false,
        }
    });
    exact && expressions
}

/// A workload of the render (Deployment or StatefulSet): its document, name and pod template.
struct Workload<'a> {
    doc: &'a Document,
    name: &'a str,
    template: &'a PodTemplateSpec,
}

impl Workload<'_> {
    /// The labels its pods get.
    fn labels(&self) -> BTreeMap<String, String> {
        self.template.metadata.as_ref().and_then(|m| m.labels.clone()).unwrap_or_default()
    }

    /// The ports its containers serve: (number, name).
    fn ports(&self) -> Vec<(i32, Option<&str>)> {
        let spec = self.template.spec.as_ref();
        let containers = spec.map(|s| s.containers.iter()).into_iter().flatten();
        containers.flat_map(|c| c.ports.iter().flatten().map(|p| (p.container_port, p.name.as_deref()))).collect()
    }
}

fn workloads(docs: &[Document]) -> impl Iterator<Item = Workload<'_>> {
    docs.iter().filter_map(|doc| {
        let (meta, template) = match &doc.object {
            Object::Deployment(d) => (&d.metadata, &d.spec.as_ref()?.template),
            Object::StatefulSet(s) => (&s.metadata, &s.spec.as_ref()?.template),
            _ => return None,
        };
        Some(Workload { doc, name: meta.name.as_deref().unwrap_or_default(), template })
    })
}

fn containers(spec: &PodSpec) -> impl Iterator<Item = &Container> {
    spec.init_containers.iter().flatten().chain(spec.containers.iter())
}

fn check_pod(object: &str, spec: &PodSpec, ctx: Context, out: &mut Vec<Violation>) {
    let mut fail =
        |rule: &'static str, message: String| out.push(Violation { rule, object: object.to_string(), message });
    for (flag, name) in [(spec.host_network, "hostNetwork"), (spec.host_pid, "hostPID"), (spec.host_ipc, "hostIPC")] {
        if flag == Some(true) {
            fail("host-namespaces", format!("{name} is true; pods must not share the node's namespaces"));
        }
    }
    let pod_sc = spec.security_context.as_ref();
    for c in containers(spec) {
        let who = format!("container `{}`", c.name);
        // Init containers run to completion: probes do not apply to them.
        if spec.containers.iter().any(|m| m.name == c.name) {
            if c.liveness_probe.is_none() {
                fail("probes", format!("{who} has no livenessProbe"));
            }
            if c.readiness_probe.is_none() {
                fail("probes", format!("{who} has no readinessProbe"));
            }
        }
        let resources = c.resources.as_ref();
        for (part, map) in [
            ("requests", resources.and_then(|r| r.requests.as_ref())),
            ("limits", resources.and_then(|r| r.limits.as_ref())),
        ] {
            for key in ["cpu", "memory"] {
                if map.is_none_or(|m| !m.contains_key(key)) {
                    fail("resources", format!("{who} has no resources.{part}.{key}"));
                }
            }
        }
        let sc = c.security_context.as_ref();
        let non_root = sc.and_then(|s| s.run_as_non_root).or(pod_sc.and_then(|p| p.run_as_non_root));
        if non_root != Some(true) {
            fail("non-root", format!("{who}: runAsNonRoot is not true (set it on the pod or the container)"));
        }
        let user = sc.and_then(|s| s.run_as_user).or(pod_sc.and_then(|p| p.run_as_user));
        if user == Some(0) {
            fail("non-root", format!("{who}: runAsUser is 0 (root)"));
        }
        if sc.and_then(|s| s.read_only_root_filesystem) != Some(true) {
            fail("read-only-root", format!("{who}: securityContext.readOnlyRootFilesystem is not true"));
        }
        if sc.and_then(|s| s.privileged) == Some(true) {
            fail("privilege", format!("{who} is privileged"));
        }
        if sc.and_then(|s| s.allow_privilege_escalation) != Some(false) {
            fail("privilege", format!("{who}: allowPrivilegeEscalation is not false"));
        }
        let drops_all = sc
            .and_then(|s| s.capabilities.as_ref())
            .and_then(|c| c.drop.as_ref())
            .is_some_and(|d| d.iter().any(|c| c == "ALL"));
        if !drops_all {
            fail("privilege", format!("{who}: capabilities.drop does not include ALL"));
        }
        let image = c.image.as_deref().unwrap_or("");
        let (name_part, digest) = match image.split_once('@') {
            Some((n, d)) => (n, Some(d)),
            None => (image, None),
        };
        // A tag follows the last `:` after the last `/` (a registry port is not a tag).
        let tag = name_part.rsplit('/').next().and_then(|last| last.split_once(':')).map(|(_, t)| t);
        if image.is_empty() {
            fail("image-tag", format!("{who} has no image"));
        } else if tag == Some("latest") {
            fail("image-tag", format!("{who}: image `{image}` uses `latest`; name a version or pin a digest"));
        } else if tag.is_none() && digest.is_none() {
            fail("image-tag", format!("{who}: image `{image}` has neither tag nor digest (it would mean `latest`)"));
        }
        if ctx.require_digests && !digest.is_some_and(|d| d.starts_with("sha256:") && d.len() == 71) {
            fail("image-digest", format!("{who}: image `{image}` is not pinned by digest (`name@sha256:...`)"));
        }
    }
}

/// The Pod Security level a namespace enforces.
const ENFORCE: &str = "pod-security.kubernetes.io/enforce";

/// Namespaces: each one used is rendered, and enforces `restricted` outside dev.
fn check_namespaces(docs: &[Document], ctx: Context, out: &mut Vec<Violation>) {
    let rendered: BTreeMap<&str, Option<&str>> = docs
        .iter()
        .filter_map(|d| match &d.object {
            Object::Namespace(n) => {
                let name = n.metadata.name.as_deref()?;
                Some((name, n.metadata.labels.as_ref().and_then(|l| l.get(ENFORCE)).map(String::as_str)))
            }
            _ => None,
        })
        .collect();
    let used: std::collections::BTreeSet<&str> = docs.iter().filter_map(|d| d.namespace.as_deref()).collect();
    for ns in used {
        match rendered.get(ns) {
            None => out.push(Violation {
                rule: "namespace",
                object: format!("Namespace/{ns}"),
                message:
                    "is used but not rendered: a first deploy into a fresh cluster would fail (add it to the overlay)"
                        .into(),
            }),
            Some(level) if ctx.production_like && *level != Some("restricted") => out.push(Violation {
                rule: "namespace",
                object: format!("Namespace/{ns}"),
                message: format!(
                    "enforces Pod Security `{}`; outside dev it must enforce `restricted` (label {ENFORCE})",
                    level.unwrap_or("nothing")
                ),
            }),
            Some(_) => {}
        }
    }
}

/// Deployments an HPA scales: (namespace, name) -> the HPA's minReplicas.
fn scaled(docs: &[Document]) -> BTreeMap<(Option<&str>, &str), i32> {
    docs.iter()
        .filter_map(|d| match &d.object {
            Object::HorizontalPodAutoscaler(h) => {
                let spec = h.spec.as_ref()?;
                (spec.scale_target_ref.kind == "Deployment").then(|| {
                    ((d.namespace.as_deref(), spec.scale_target_ref.name.as_str()), spec.min_replicas.unwrap_or(1))
                })
            }
            _ => None,
        })
        .collect()
}

/// HPAs own replicas; budgets allow a drain.
fn check_scaling(docs: &[Document], out: &mut Vec<Violation>) {
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
    let hpas = scaled(docs);
    for doc in docs {
        let Object::Deployment(d) = &doc.object else { continue };
        let name = d.metadata.name.as_deref().unwrap_or_default();
        let replicas = d.spec.as_ref().and_then(|s| s.replicas);
        if let (Some(r), Some(_)) = (replicas, hpas.get(&(doc.namespace.as_deref(), name))) {
            out.push(Violation {
                rule: "hpa-replicas",
                object: doc.id.clone(),
                message: format!(
                    "sets replicas: {r} while a HorizontalPodAutoscaler scales it: every deploy would reset the HPA's count; remove `replicas` from the render"
                ),
            });
        }
        // The fewest pods it runs: the HPA's floor, else its own count (the API's default is 1).
        let floor = hpas.get(&(doc.namespace.as_deref(), name)).copied().or(replicas).unwrap_or(1);
        let labels = d
            .spec
            .as_ref()
            .and_then(|s| s.template.metadata.as_ref())
            .and_then(|m| m.labels.clone())
            .unwrap_or_default();
        for other in docs.iter().filter(|o| o.namespace == doc.namespace) {
            let Object::PodDisruptionBudget(p) = &other.object else { continue };
            let Some(spec) = p.spec.as_ref() else { continue };
            if !spec.selector.as_ref().is_some_and(|s| labels_match(s, &labels)) {
                continue;
            }
            let blocks = match (&spec.min_available, &spec.max_unavailable) {
                (Some(IntOrString::Int(min)), _) => *min >= floor,
                (Some(IntOrString::String(pct)), _) => pct.trim() == "100%",
                (_, Some(IntOrString::Int(max))) => *max == 0,
                (_, Some(IntOrString::String(pct))) => pct.trim_end_matches('%').trim() == "0",
                (None, None) => false,
            };
            if blocks {
                out.push(Violation {
                    rule: "pdb-drain",
                    object: other.id.clone(),
                    message: format!(
                        "lets no pod of {} go at its minimum of {floor}: a node drain would block; use maxUnavailable: 1",
                        doc.id
                    ),
                });
            }
        }
    }
}

/// Every Ingress outside dev: a `tls` entry with a certificate Secret for each rule's host.
fn check_ingress_tls(docs: &[Document], ctx: Context, out: &mut Vec<Violation>) {
    if !ctx.production_like {
        return;
    }
    for doc in docs {
        let Object::Ingress(ingress) = &doc.object else { continue };
        let spec = ingress.spec.as_ref();
        let tls = spec.and_then(|s| s.tls.as_ref()).cloned().unwrap_or_default();
        let covered: Vec<&str> = tls
            .iter()
            .filter(|t| t.secret_name.as_deref().is_some_and(|n| !n.is_empty()))
            .flat_map(|t| t.hosts.iter().flatten().map(String::as_str))
            .collect();
        let hosts = spec.and_then(|s| s.rules.as_ref()).into_iter().flatten().filter_map(|r| r.host.as_deref());
        for host in hosts {
            if !covered.contains(&host) {
                out.push(Violation {
                    rule: "ingress-tls",
                    object: doc.id.clone(),
                    message: format!(
                        "serves {host} without TLS: add it to spec.tls with a secretName (cert-manager issues it)"
                    ),
                });
            }
        }
    }
}

/// The annotation that says which `needs` entry an ipBlock egress rule stands for.
pub const EGRESS_TO: &str = "xtask/egress-to";

/// The documentation ranges (RFC 5737): a placeholder, never a real endpoint.
const DOC_RANGES: &[&str] = &["192.0.2.", "198.51.100.", "203.0.113."];

/// Does `spec` restrict this direction? (`policyTypes` unset: Ingress always, Egress when the
/// policy has egress rules, as the API defaults it.)
fn restricts(policy: &NetworkPolicy, direction: &str) -> bool {
    let Some(spec) = policy.spec.as_ref() else { return false };
    match &spec.policy_types {
        Some(types) => types.iter().any(|t| t == direction),
        None => direction == "Ingress" || spec.egress.is_some(),
    }
}

/// Do the rule's ports let traffic to one of `ports` through? (No ports: all of them.)
fn ports_allow(rule_ports: Option<&Vec<NetworkPolicyPort>>, ports: &[(i32, Option<&str>)]) -> bool {
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
    let Some(rule_ports) = rule_ports.filter(|p| !p.is_empty()) else { return true };
    rule_ports.iter().any(|p| match &p.port {
        None => true,
        Some(IntOrString::Int(n)) => ports.iter().any(|(port, _)| (*n..=p.end_port.unwrap_or(*n)).contains(port)),
        Some(IntOrString::String(name)) => ports.iter().any(|(_, n)| *n == Some(name.as_str())),
    })
}

/// Does the peer list select pods with `labels` in the policy's own namespace? (No peers: all.)
fn peers_select(peers: Option<&Vec<NetworkPolicyPeer>>, labels: &BTreeMap<String, String>) -> bool {
    let Some(peers) = peers.filter(|p| !p.is_empty()) else { return true };
    peers.iter().any(|peer| {
        peer.namespace_selector.is_none()
            && peer.ip_block.is_none()
            && peer.pod_selector.as_ref().is_some_and(|s| labels_match(s, labels))
    })
}

/// Every dependency a service `needs` can be reached: out of the service's pods (egress) and,
/// when the dependency runs in the render, into its pods (ingress).
fn check_needs(docs: &[Document], ctx: Context, needs: &BTreeMap<String, Vec<String>>, out: &mut Vec<Violation>) {
    let all: Vec<Workload<'_>> = workloads(docs).collect();
    let policies: Vec<(&Document, &NetworkPolicy)> = docs
        .iter()
        .filter_map(|d| match &d.object {
            Object::NetworkPolicy(n) => Some((d, &**n)),
            _ => None,
        })
        .collect();
    // The policies in `ns` selecting pods with `labels` that restrict `direction`.
    let governing = |ns: &Option<String>, labels: &BTreeMap<String, String>, direction: &str| {
        policies
            .iter()
            .filter(|(d, p)| {
                d.namespace == *ns
                    && restricts(p, direction)
                    && p.spec.as_ref().is_some_and(|s| s.pod_selector.as_ref().is_none_or(|s| labels_match(s, labels)))
            })
            .map(|(d, p)| (*d, *p))
            .collect::<Vec<_>>()
    };
    for (service, deps) in needs {
        let Some(client) = all.iter().find(|w| w.name == service) else {
            out.push(Violation {
                rule: "needs-egress",
                object: format!("services/{service}"),
                message: format!(
                    "needs {} but the render has no workload `{service}`: add its Kubernetes base (infra/k8s/base/{service})",
                    deps.join(", ")
                ),
            });
            continue;
        };
        let ns = &client.doc.namespace;
        let labels = client.labels();
        let egress = governing(ns, &labels, "Egress");
        for dep in deps {
            let mut fail =
                |message: String| out.push(Violation { rule: "needs-egress", object: client.doc.id.clone(), message });
            let target = all.iter().find(|w| w.name == dep && w.doc.namespace == *ns);
            if let Some(target) = target {
                let (target_labels, ports) = (target.labels(), target.ports());
                let out_ok = egress.is_empty()
                    || egress.iter().any(|(_, p)| {
                        p.spec.as_ref().and_then(|s| s.egress.as_ref()).into_iter().flatten().any(|r| {
                            peers_select(r.to.as_ref(), &target_labels) && ports_allow(r.ports.as_ref(), &ports)
                        })
                    });
                if !out_ok {
                    fail(format!(
                        "needs {dep}, but no NetworkPolicy lets its pods reach the pods of {dep} on {}: add an egress rule to them",
                        ports.iter().map(|(p, _)| p.to_string()).collect::<Vec<_>>().join(", ")
                    ));
                }
                let ingress = governing(ns, &target_labels, "Ingress");
                let in_ok =
                    ingress.is_empty()
                        || ingress.iter().any(|(_, p)| {
                            p.spec.as_ref().and_then(|s| s.ingress.as_ref()).into_iter().flatten().any(|r| {
                                peers_select(r.from.as_ref(), &labels) && ports_allow(r.ports.as_ref(), &ports)
                            })
                        });
                if !in_ok {
                    fail(format!(
                        "needs {dep}, but {dep}'s NetworkPolicy admits no traffic from {service}'s pods: add them to its ingress `from`"
                    ));
                }
                continue;
            }
            // Outside the render: an ipBlock rule in a policy that says it is for `dep`.
            let external: Vec<(&Document, String)> = egress
                .iter()
                .filter(|(d, _)| {
                    let annotations = match &d.object {
                        Object::NetworkPolicy(n) => n.metadata.annotations.as_ref(),
                        _ => None,
                    };
                    annotations.and_then(|a| a.get(EGRESS_TO)).is_some_and(|v| v.split(',').any(|n| n.trim() == dep))
                })
                .flat_map(|(d, p)| {
                    let rules = p.spec.as_ref().and_then(|s| s.egress.as_ref()).into_iter().flatten();
                    rules
                        .filter(|r| r.ports.as_ref().is_some_and(|p| !p.is_empty()))
                        .flat_map(|r| r.to.iter().flatten().filter_map(|peer| peer.ip_block.as_ref()))
                        .map(move |b| (*d, b.cidr.clone()))
                })
                .collect();
            if egress.is_empty() {
                continue;
            }
            match external.first() {
                None => fail(format!(
                    "needs {dep}, which the render does not run, and no NetworkPolicy annotated `{EGRESS_TO}: {dep}` lets its pods reach an ipBlock with its port (infra/k8s/components/backing-external)"
                )),
                Some(_) if ctx.production_like => {
                    for (policy, cidr) in external.iter().filter(|(_, c)| DOC_RANGES.iter().any(|r| c.starts_with(r))) {
                        fail(format!(
                            "reaches {dep} at {cidr} ({}), a documentation placeholder: set the endpoint's real CIDR in the overlay",
                            policy.id
                        ));
                    }
                }
                Some(_) => {}
            }
        }
    }
}

/// A Kubernetes quantity (`500m`, `2`, `256Mi`, `1G`, `1e3`) as a number of units (cores,
/// bytes); `None` when it is not one.
pub fn quantity(text: &str) -> Option<f64> {
    let text = text.trim();
    let suffixes: &[(&str, f64)] = &[
        ("Ki", 1024.0),
        ("Mi", 1024f64.powi(2)),
        ("Gi", 1024f64.powi(3)),
        ("Ti", 1024f64.powi(4)),
        ("Pi", 1024f64.powi(5)),
        ("Ei", 1024f64.powi(6)),
        ("m", 1e-3),
        ("k", 1e3),
        ("M", 1e6),
        ("G", 1e9),
        ("T", 1e12),
        ("P", 1e15),
        ("E", 1e18),
    ];
    let (number, factor) =
        suffixes.iter().find_map(|(s, f)| text.strip_suffix(s).map(|n| (n, *f))).unwrap_or((text, 1.0));
    let value: f64 = number.parse().ok()?;
    (value.is_finite() && value >= 0.0).then_some(value * factor)
}

/// What one pod of a template asks for: resource (`requests.cpu`, `limits.memory`, ...) -> amount,
/// with the LimitRange's defaults for a container that names none.
fn pod_resources(spec: &PodSpec, defaults: &BTreeMap<String, f64>) -> BTreeMap<String, f64> {
    let mut total = BTreeMap::new();
    for c in &spec.containers {
        let resources = c.resources.as_ref();
        for (part, map) in [
            ("requests", resources.and_then(|r| r.requests.as_ref())),
            ("limits", resources.and_then(|r| r.limits.as_ref())),
        ] {
            for name in ["cpu", "memory"] {
                let key = format!("{part}.{name}");
                let amount = map
                    .and_then(|m| m.get(name))
                    .and_then(|q| quantity(&q.0))
                    .or_else(|| defaults.get(&key).copied())
                    .unwrap_or(0.0);
                *total.entry(key).or_insert(0.0) += amount;
            }
        }
    }
    total
}

/// Human units for a resource amount.
fn amount(resource: &str, value: f64) -> String {
    if resource.ends_with("memory") {
        format!("{:.2}Gi", value / 1024f64.powi(3))
    } else {
        format!("{}", (value * 1000.0).round() / 1000.0)
    }
}

/// The namespace's ResourceQuota holds the render at full scale (every HPA at maxReplicas plus
/// every rollout's surge, StatefulSets and their volumes, Service types), and no container
/// asks for more than the LimitRange's max: otherwise pods are refused at creation, after the
/// release was applied, and the HPA cannot scale at a peak.
fn check_quota(docs: &[Document], out: &mut Vec<Violation>) {
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
    let namespaces: std::collections::BTreeSet<&Option<String>> = docs.iter().map(|d| &d.namespace).collect();
    let maxima: BTreeMap<(Option<&str>, &str), i32> = docs
        .iter()
        .filter_map(|d| match &d.object {
            Object::HorizontalPodAutoscaler(h) => {
                let spec = h.spec.as_ref()?;
                Some(((d.namespace.as_deref(), spec.scale_target_ref.name.as_str()), spec.max_replicas))
            }
            _ => None,
        })
        .collect();
    for ns in namespaces {
        let in_ns = || docs.iter().filter(move |d| &d.namespace == ns);
        // The LimitRange's container defaults and maxima.
        let mut defaults = BTreeMap::new();
        let mut max: Vec<(String, String, f64)> = Vec::new();
        for doc in in_ns() {
            let Object::LimitRange(lr) = &doc.object else { continue };
            for item in lr.spec.iter().flat_map(|s| s.limits.iter()).filter(|l| l.type_ == "Container") {
                for (part, map) in [("limits", item.default.as_ref()), ("requests", item.default_request.as_ref())] {
                    for (name, q) in map.into_iter().flatten() {
                        if let Some(v) = quantity(&q.0) {
                            defaults.insert(format!("{part}.{name}"), v);
                        }
                    }
                }
                for (name, q) in item.max.iter().flatten() {
                    if let Some(v) = quantity(&q.0) {
                        max.push((doc.id.clone(), name.clone(), v));
                    }
                }
            }
        }
        let mut used: BTreeMap<String, f64> = BTreeMap::new();
        let mut add = |key: &str, v: f64| *used.entry(key.to_string()).or_insert(0.0) += v;
        for w in workloads(docs).filter(|w| &w.doc.namespace == ns) {
            let Some(spec) = w.template.spec.as_ref() else { continue };
            for c in &spec.containers {
                let limits = c.resources.as_ref().and_then(|r| r.limits.as_ref());
                for (limit_range, name, most) in &max {
                    let asked = limits.and_then(|l| l.get(name)).and_then(|q| quantity(&q.0));
                    if let Some(asked) = asked.filter(|a| a > most) {
                        out.push(Violation {
                            rule: "quota-fits",
                            object: w.doc.id.clone(),
                            message: format!(
                                "container `{}` limits {name} to {}, above the {} max of {limit_range}: its pods would be refused at creation",
                                c.name,
                                amount(name, asked),
                                amount(name, *most)
                            ),
                        });
                    }
                }
            }
            let (pods, claims) = match &w.doc.object {
                Object::Deployment(d) => {
                    let spec = d.spec.as_ref();
                    let base = maxima
                        .get(&(w.doc.namespace.as_deref(), w.name))
                        .copied()
                        .or(spec.and_then(|s| s.replicas))
                        .unwrap_or(1);
                    // A rolling update's surge: maxSurge (25% when unset, as the API defaults it).
                    let strategy = spec.and_then(|s| s.strategy.as_ref());
                    let percent = |pct: f64| (f64::from(base) * pct / 100.0).ceil() as i32;
                    let surge = match strategy
                        .and_then(|s| s.rolling_update.as_ref())
                        .and_then(|r| r.max_surge.as_ref())
                    {
                        _ if strategy.and_then(|s| s.type_.as_deref()) == Some("Recreate") => 0,
                        Some(IntOrString::Int(n)) => *n,
                        Some(IntOrString::String(pct)) => percent(pct.trim_end_matches('%').parse().unwrap_or(25.0)),
                        None => percent(25.0),
                    };
                    (base + surge, 0)
                }
                Object::StatefulSet(s) => {
                    let spec = s.spec.as_ref();
                    let replicas = spec.and_then(|s| s.replicas).unwrap_or(1);
                    let templates = spec.and_then(|s| s.volume_claim_templates.as_ref()).map_or(0, Vec::len);
                    (replicas, replicas * i32::try_from(templates).unwrap_or(i32::MAX))
                }
                _ => continue,
            };
            add("pods", f64::from(pods));
            add("persistentvolumeclaims", f64::from(claims));
            for (key, v) in pod_resources(spec, &defaults) {
                add(&key, v * f64::from(pods));
            }
        }
        for doc in in_ns() {
            let Object::Service(s) = &doc.object else { continue };
            match s.spec.as_ref().and_then(|s| s.type_.as_deref()) {
                Some("LoadBalancer") => add("services.loadbalancers", 1.0),
                Some("NodePort") => add("services.nodeports", 1.0),
                _ => {}
            }
        }
        for doc in in_ns() {
            let Object::ResourceQuota(q) = &doc.object else { continue };
            for (name, hard) in q.spec.iter().flat_map(|s| s.hard.iter().flatten()) {
                let Some(hard) = quantity(&hard.0) else { continue };
                // `cpu` and `memory` in a quota mean the requests.
                let key = match name.as_str() {
                    "cpu" | "memory" => format!("requests.{name}"),
                    other => other.to_string(),
                };
                let Some(need) = used.get(&key).copied() else { continue };
                if need > hard + 1e-9 {
                    out.push(Violation {
                        rule: "quota-fits",
                        object: doc.id.clone(),
                        message: format!(
                            "{name} at full scale (every HPA at maxReplicas, every rollout surging, StatefulSets and their volumes) is {}, above the hard {}: raise the quota or lower the bounds",
                            amount(&key, need),
                            amount(&key, hard)
                        ),
                    });
                }
            }
        }
    }
}

/// The deployer's Role (infra/k8s/deployer), checked when it is given with the render.
pub const DEPLOYER_ROLE: &str = "xtask-deployer";
/// What applying and pruning a kind takes.
const APPLY_VERBS: &[&str] = &["get", "list", "create", "patch", "delete"];
/// What a deploy reads or keeps besides the render: (group, resource, verbs).
const DEPLOY_EXTRAS: &[(&str, &str, &[&str])] = &[
    ("", "pods", &["get", "list", "watch"]),
    ("", "secrets", &["list"]),
    ("", "services/proxy", &["get"]),
    ("coordination.k8s.io", "leases", &["get", "create", "update", "delete"]),
];

/// A namespaced kind of ours as RBAC names it: (API group, resource).
fn rbac_resource(api_version: &str, kind: &str) -> (String, String) {
    let group = api_version.rsplit_once('/').map_or("", |(g, _)| g).to_string();
    let plural = match kind {
        "NetworkPolicy" => "networkpolicies".to_string(),
        "Ingress" => "ingresses".to_string(),
        other => format!("{}s", other.to_ascii_lowercase()),
    };
    (group, plural)
}

fn check_deployer_role(docs: &[Document], kinds: &[(String, String, bool)], out: &mut Vec<Violation>) {
    let Some((id, role)) = docs.iter().find_map(|d| match &d.object {
        Object::Role(r) if r.metadata.name.as_deref() == Some(DEPLOYER_ROLE) => Some((&d.id, r)),
        _ => None,
    }) else {
        return;
    };
    let mut granted: BTreeMap<(String, String), std::collections::BTreeSet<String>> = BTreeMap::new();
    let mut fail = |message: String| out.push(Violation { rule: "deployer-role", object: id.clone(), message });
    for rule in role.rules.iter().flatten() {
        if rule.resource_names.as_ref().is_some_and(|n| !n.is_empty()) || rule.non_resource_urls.is_some() {
            fail("grants by resourceNames or URLs, which the deploy never needs".into());
        }
        for group in rule.api_groups.iter().flatten() {
            for resource in rule.resources.iter().flatten() {
                if group == "*" || resource == "*" || rule.verbs.iter().any(|v| v == "*") {
                    fail(format!("grants a wildcard (`{group}` `{resource}`); name each kind"));
                }
                granted.entry((group.clone(), resource.clone())).or_default().extend(rule.verbs.iter().cloned());
            }
        }
    }
    let mut needed: BTreeMap<(String, String), Vec<&str>> = BTreeMap::new();
    for (api_version, kind, namespaced) in kinds {
        if *namespaced {
            needed.insert(rbac_resource(api_version, kind), APPLY_VERBS.to_vec());
        }
    }
    // Rollouts are watched.
    if let Some(v) = needed.get_mut(&("apps".to_string(), "deployments".to_string())) {
        v.push("watch");
    }
    for (group, resource, verbs) in DEPLOY_EXTRAS {
        needed.entry((group.to_string(), resource.to_string())).or_default().extend(verbs.iter());
    }
    for ((group, resource), verbs) in &needed {
        let have = granted.get(&(group.clone(), resource.clone()));
        let missing: Vec<&str> = verbs.iter().copied().filter(|v| !have.is_some_and(|h| h.contains(*v))).collect();
        if !missing.is_empty() {
            let g = if group.is_empty() { "core" } else { group };
            fail(format!("does not grant {} on {g} {resource}, which the deploy needs", missing.join(", ")));
        }
    }
    for ((group, resource), verbs) in &granted {
        let g = if group.is_empty() { "core" } else { group };
        match needed.get(&(group.clone(), resource.clone())) {
            None => {
                fail(format!("grants {g} {resource}, which the render does not contain and the deploy does not use"))
            }
            Some(need) => {
                let extra: Vec<&str> = verbs.iter().map(String::as_str).filter(|v| !need.contains(v)).collect();
                if !extra.is_empty() {
                    fail(format!("grants {} on {g} {resource}, more than the deploy needs", extra.join(", ")));
                }
            }
        }
    }
}

/// Checks a whole render (one environment). `needs`: service -> what its metadata says it needs
/// (`services/*/Cargo.toml`); empty when the caller does not know them.
pub fn check(docs: &[Document], ctx: Context, needs: &BTreeMap<String, Vec<String>>) -> Vec<Violation> {
    let mut out = Vec::new();
    // The deployer's own identity (checked beside the render it deploys) is not what it deploys.
    let own = |d: &&Document| {
        matches!(d.kind.as_str(), "Role" | "RoleBinding") && d.id.split(['/', ' ']).nth(1) == Some(DEPLOYER_ROLE)
    };
    let kinds: Vec<(String, String, bool)> = docs
        .iter()
        .filter(|d| !own(d))
        .map(|d| (d.api_version.clone(), d.kind.clone(), d.namespace.is_some()))
        .collect();
    check_namespaces(docs, ctx, &mut out);
    check_scaling(docs, &mut out);
    check_ingress_tls(docs, ctx, &mut out);
    check_deployer_role(docs, &kinds, &mut out);
    check_needs(docs, ctx, needs, &mut out);
    check_quota(docs, &mut out);
    for w in workloads(docs) {
        if let Some(spec) = w.template.spec.as_ref() {
            check_pod(&w.doc.id, spec, ctx, &mut out);
        } else {
            out.push(Violation {
                rule: "schema",
                object: w.doc.id.clone(),
                message: "has no pod template spec".into(),
            });
        }
    }
    for doc in docs.iter().filter(|d| matches!(d.object, Object::Secret)) {
        out.push(Violation {
            rule: "no-secrets",
            object: doc.id.clone(),
            message: "a Secret is rendered from the repository; supply it with External Secrets or sealed-secrets (infra/k8s/README.md)".into(),
        });
    }
    if ctx.production_like {
        for w in workloads(docs) {
            let doc = w.doc;
            let labels = w.labels();
            let same_ns = |other: &Document| other.namespace == doc.namespace;
            let has_pdb = docs.iter().filter(|o| same_ns(o)).any(|o| match &o.object {
                Object::PodDisruptionBudget(p) => {
                    p.spec.as_ref().and_then(|s| s.selector.as_ref()).is_some_and(|s| labels_match(s, &labels))
                }
                _ => false,
            });
            if !has_pdb && matches!(doc.object, Object::Deployment(_)) {
                out.push(Violation {
                    rule: "pdb",
                    object: doc.id.clone(),
                    message: "no PodDisruptionBudget selects its pods".into(),
                });
            }
            let has_policy = docs.iter().filter(|o| same_ns(o)).any(|o| match &o.object {
                Object::NetworkPolicy(n) => {
                    n.spec.as_ref().is_some_and(|s| s.pod_selector.as_ref().is_none_or(|p| labels_match(p, &labels)))
                }
                _ => false,
            });
            if !has_policy {
                out.push(Violation {
                    rule: "network-policy",
                    object: doc.id.clone(),
                    message: "no NetworkPolicy selects its pods".into(),
                });
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::quantity;

    #[test]
    fn quantities_read_as_kubernetes_writes_them() {
        for (text, want) in [
            ("500m", 0.5),
            ("2", 2.0),
            ("1.5", 1.5),
            ("256Mi", 256.0 * 1024.0 * 1024.0),
            ("2Gi", 2.0 * 1024f64.powi(3)),
            ("1G", 1e9),
            ("64k", 64e3),
        ] {
            assert_eq!(quantity(text), Some(want), "{text}");
        }
        for bad in ["", "lots", "-1", "1Xi"] {
            assert_eq!(quantity(bad), None, "{bad}");
        }
    }
}
