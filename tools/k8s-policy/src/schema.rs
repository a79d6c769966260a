//! Rendered YAML into typed Kubernetes objects of the pinned API version, with every field the
//! types do not know reported (a misspelt `readinesProbe` would otherwise vanish silently).

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{ConfigMap, LimitRange, Namespace, ResourceQuota, Secret, Service, ServiceAccount};
use k8s_openapi::api::networking::v1::{Ingress, NetworkPolicy};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use serde::Deserialize;
use serde::de::DeserializeOwned;

/// The kinds our overlays may render, each in the one API version we pin.
#[derive(Debug, Clone)]
pub enum Object {
    Deployment(Box<Deployment>),
    StatefulSet(Box<StatefulSet>),
    PodDisruptionBudget(Box<PodDisruptionBudget>),
    NetworkPolicy(Box<NetworkPolicy>),
    HorizontalPodAutoscaler(Box<HorizontalPodAutoscaler>),
    Namespace(Box<Namespace>),
    Ingress(Box<Ingress>),
    Role(Box<Role>),
    ResourceQuota(Box<ResourceQuota>),
    LimitRange(Box<LimitRange>),
    Service(Box<Service>),
    Secret,
    /// Checked against its type, and no rule looks further.
    Other,
}

/// The Prometheus Operator's `monitoring.coreos.com/v1` ServiceMonitor: not a Kubernetes API
/// type, so the fields our optional component may use are typed here (others are reported as
/// unknown, as for the built-in kinds).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
#[allow(dead_code)] // Read only to type-check the document.
pub struct ServiceMonitor {
    api_version: String,
    kind: String,
    metadata: ObjectMeta,
    spec: ServiceMonitorSpec,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
#[allow(dead_code)]
struct ServiceMonitorSpec {
    selector: LabelSelector,
    endpoints: Vec<ServiceMonitorEndpoint>,
    namespace_selector: Option<MonitorNamespaceSelector>,
    job_label: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
#[allow(dead_code)]
struct ServiceMonitorEndpoint {
    port: Option<String>,
    path: Option<String>,
    scheme: Option<String>,
    interval: Option<String>,
    scrape_timeout: Option<String>,
    honor_labels: Option<bool>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
#[allow(dead_code)]
struct MonitorNamespaceSelector {
    any: Option<bool>,
    match_names: Option<Vec<String>>,
}

/// One document of the render, with what identifies it in messages.
#[derive(Debug, Clone)]
pub struct Document {
    /// `Deployment/api` (namespace added when set).
    pub id: String,
    pub namespace: Option<String>,
    pub api_version: String,
    pub kind: String,
    pub object: Object,
}

/// A document that is not a valid object of the pinned API: `(id, message)`.
pub type SchemaError = (String, String);

const KNOWN: &str = "apps/v1 Deployment/StatefulSet, v1 Service/ServiceAccount/ConfigMap/Secret/Namespace/ResourceQuota/LimitRange, policy/v1 PodDisruptionBudget, autoscaling/v2 HorizontalPodAutoscaler, networking.k8s.io/v1 NetworkPolicy/Ingress, rbac.authorization.k8s.io/v1 Role/RoleBinding, monitoring.coreos.com/v1 ServiceMonitor";

/// `spec.template.spec.containers[0].readinesProbe`: the path as people write it in YAML.
fn field_path(path: &serde_ignored::Path<'_>) -> String {
    use serde_ignored::Path;
    match path {
        Path::Root => String::new(),
        Path::Seq { parent, index } => format!("{}[{index}]", field_path(parent)),
        Path::Map { parent, key } => match field_path(parent) {
            p if p.is_empty() => key.to_string(),
            p => format!("{p}.{key}"),
        },
        Path::Some { parent } | Path::NewtypeStruct { parent } | Path::NewtypeVariant { parent } => field_path(parent),
    }
}

fn typed<T: DeserializeOwned>(value: serde_yaml::Value, unknown: &mut Vec<String>) -> Result<T, String> {
    serde_ignored::deserialize(value, |path| unknown.push(field_path(&path))).map_err(|e| e.to_string())
}

/// Parses every document; returns the objects and every schema problem found.
pub fn parse(text: &str) -> (Vec<Document>, Vec<SchemaError>) {
    let mut docs = Vec::new();
    let mut errors = Vec::new();
    for (index, de) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let value = match <serde_yaml::Value as serde::Deserialize>::deserialize(de) {
            Ok(serde_yaml::Value::Null) => continue,
            Ok(v) => v,
            Err(e) => {
                errors.push((format!("document {}", index + 1), format!("not YAML: {e}")));
                continue;
            }
        };
        let field = |name: &str| value.get(name).and_then(serde_yaml::Value::as_str).unwrap_or("").to_string();
        let (api_version, kind) = (field("apiVersion"), field("kind"));
        let meta = value.get("metadata");
        let name =
            meta.and_then(|m| m.get("name")).and_then(serde_yaml::Value::as_str).unwrap_or("<unnamed>").to_string();
        let namespace = meta.and_then(|m| m.get("namespace")).and_then(serde_yaml::Value::as_str).map(str::to_string);
        let id = match &namespace {
            Some(ns) => format!("{kind}/{name} (namespace {ns})"),
            None => format!("{kind}/{name}"),
        };
        let mut unknown = Vec::new();
        let object = match (api_version.as_str(), kind.as_str()) {
            ("apps/v1", "Deployment") => typed(value, &mut unknown).map(|o| Object::Deployment(Box::new(o))),
            ("apps/v1", "StatefulSet") => typed(value, &mut unknown).map(|o| Object::StatefulSet(Box::new(o))),
            ("monitoring.coreos.com/v1", "ServiceMonitor") => {
                typed::<ServiceMonitor>(value, &mut unknown).map(|_| Object::Other)
            }
            ("v1", "Service") => typed(value, &mut unknown).map(|o| Object::Service(Box::new(o))),
            ("v1", "ServiceAccount") => typed::<ServiceAccount>(value, &mut unknown).map(|_| Object::Other),
            ("v1", "ConfigMap") => typed::<ConfigMap>(value, &mut unknown).map(|_| Object::Other),
            ("v1", "Secret") => typed::<Secret>(value, &mut unknown).map(|_| Object::Secret),
            ("v1", "Namespace") => typed(value, &mut unknown).map(|o| Object::Namespace(Box::new(o))),
            ("v1", "ResourceQuota") => typed(value, &mut unknown).map(|o| Object::ResourceQuota(Box::new(o))),
            ("v1", "LimitRange") => typed(value, &mut unknown).map(|o| Object::LimitRange(Box::new(o))),
            ("policy/v1", "PodDisruptionBudget") => {
                typed(value, &mut unknown).map(|o| Object::PodDisruptionBudget(Box::new(o)))
            }
            ("autoscaling/v2", "HorizontalPodAutoscaler") => {
                typed(value, &mut unknown).map(|o| Object::HorizontalPodAutoscaler(Box::new(o)))
            }
            ("networking.k8s.io/v1", "NetworkPolicy") => {
                typed(value, &mut unknown).map(|o| Object::NetworkPolicy(Box::new(o)))
            }
            ("networking.k8s.io/v1", "Ingress") => typed(value, &mut unknown).map(|o| Object::Ingress(Box::new(o))),
            ("rbac.authorization.k8s.io/v1", "Role") => typed(value, &mut unknown).map(|o| Object::Role(Box::new(o))),
            ("rbac.authorization.k8s.io/v1", "RoleBinding") => {
                typed::<RoleBinding>(value, &mut unknown).map(|_| Object::Other)
            }
            _ => Err(format!("`{api_version}` `{kind}` is not a kind this policy knows ({KNOWN})")),
        };
        for path in unknown {
            errors.push((id.clone(), format!("unknown field `{path}` (not in the pinned Kubernetes API; misspelt?)")));
        }
        match object {
            Ok(object) => {
                docs.push(Document { id, namespace, api_version: api_version.clone(), kind: kind.clone(), object })
            }
            Err(message) => errors.push((id, message)),
        }
    }
    (docs, errors)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typed_documents_and_unknown_fields() {
        let text = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\ndata: {x: y}\n---\n\
                    apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: b, namespace: n}\nspec:\n  selector: {matchLabels: {a: b}}\n  replicass: 2\n  template:\n    spec:\n      containers: [{name: c, image: i, readinesProbe: {}}]\n---\n\
                    apiVersion: batch/v1\nkind: Job\nmetadata: {name: c}\n";
        let (docs, errors) = parse(text);
        assert_eq!(docs.len(), 2);
        assert_eq!(docs[1].id, "Deployment/b (namespace n)");
        let messages: Vec<String> = errors.iter().map(|(id, m)| format!("{id}: {m}")).collect();
        assert!(
            messages.iter().any(|m| m.contains("Deployment/b (namespace n): unknown field `spec.replicass`")),
            "{messages:?}"
        );
        assert!(
            messages.iter().any(|m| m.contains("unknown field `spec.template.spec.containers[0].readinesProbe`")),
            "{messages:?}"
        );
        assert!(messages.iter().any(|m| m.starts_with("Job/c: `batch/v1` `Job` is not a kind")), "{messages:?}");
    }

    #[test]
    fn wrong_types_are_errors_not_panics() {
        let (docs, errors) = parse(
            "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: x}\nspec: {replicas: many, selector: {}, template: {}}\n",
        );
        assert!(docs.is_empty());
        assert_eq!(errors.len(), 1, "{errors:?}");
    }
}
