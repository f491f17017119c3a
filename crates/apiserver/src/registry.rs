//! The resources the server serves: the built-in kinds the system needs, and custom
//! resources read from CustomResourceDefinitions.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use std::sync::{Arc, RwLock};

use serde_json::{Value, json};

/// How bodies of a resource are checked on the way in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// kubevirt.io kinds: strict typed parsing, conversion and validation (the api crate).
    Kubevirt,
    /// Everything else: a JSON object of the right kind with a valid name.
    Generic,
}

/// JSONPaths (`.spec.replicas`) of a scale subresource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScalePaths {
    pub spec_replicas: String,
    pub status_replicas: String,
    pub label_selector: Option<String>,
}

/// One served resource type.
#[derive(Debug, Clone, PartialEq)]
pub struct Resource {
    pub group: String,
    /// Served versions; the storage version first.
    pub versions: Vec<String>,
    pub kind: String,
    pub plural: String,
    pub singular: String,
    pub short_names: Vec<String>,
    pub categories: Vec<String>,
    pub namespaced: bool,
    pub status_subresource: bool,
    /// The `scale` subresource: where the replicas and the selector live.
    pub scale: Option<ScalePaths>,
    /// `additionalPrinterColumns` of the storage version.
    pub columns: Vec<Value>,
    /// Field selectors this resource accepts beyond `metadata.name` and
    /// `metadata.namespace`.
    pub fields: Vec<String>,
    /// The `openAPIV3Schema` of the storage version.
    pub schema: Option<Arc<Value>>,
    pub admission: Admission,
    /// The CRD's conversion webhook (`spec.conversion.webhook`) when its strategy is
    /// `Webhook`; without one, versions differ only in their label.
    pub conversion: Option<Arc<Value>>,
    /// Built into Kubernetes: strategic merge patches are accepted (as merge patches).
    pub builtin: bool,
}

impl Resource {
    pub fn storage_version(&self) -> &str {
        &self.versions[0]
    }

    pub fn api_version(&self, version: &str) -> String {
        if self.group.is_empty() {
            version.to_owned()
        } else {
            format!("{}/{version}", self.group)
        }
    }

    /// The store key of an object, or the prefix of a namespace's (or all) objects.
    pub fn key(&self, namespace: Option<&str>, name: Option<&str>) -> String {
        let group = if self.group.is_empty() {
            "core"
        } else {
            &self.group
        };
        let mut key = format!("/{group}/{}/", self.plural);
        if let Some(ns) = namespace.filter(|_| self.namespaced) {
            key.push_str(ns);
            key.push('/');
        }
        if let Some(n) = name {
            key.push_str(n);
        }
        key
    }

    pub fn from_crd(crd: &CustomResourceDefinition) -> Self {
        let spec = &crd.spec;
        let mut versions: Vec<_> = spec.versions.iter().filter(|v| v.served).collect();
        versions.sort_by_key(|v| !v.storage);
        let storage = versions.first();
        Self {
            group: spec.group.clone(),
            versions: versions.iter().map(|v| v.name.clone()).collect(),
            kind: spec.names.kind.clone(),
            plural: spec.names.plural.clone(),
            singular: spec
                .names
                .singular
                .clone()
                .unwrap_or_else(|| spec.names.kind.to_lowercase()),
            short_names: spec.names.short_names.clone().unwrap_or_default(),
            categories: spec.names.categories.clone().unwrap_or_default(),
            namespaced: spec.scope == "Namespaced",
            status_subresource: storage
                .and_then(|v| v.subresources.as_ref())
                .is_some_and(|s| s.status.is_some()),
            scale: storage
                .and_then(|v| v.subresources.as_ref())
                .and_then(|s| s.scale.as_ref())
                .map(|s| ScalePaths {
                    spec_replicas: s.spec_replicas_path.clone(),
                    status_replicas: s.status_replicas_path.clone(),
                    label_selector: s.label_selector_path.clone(),
                }),
            columns: storage
                .and_then(|v| v.additional_printer_columns.as_ref())
                .map(|cols| {
                    cols.iter()
                        .filter_map(|c| serde_json::to_value(c).ok())
                        .collect()
                })
                .unwrap_or_default(),
            fields: storage
                .and_then(|v| v.selectable_fields.as_ref())
                .map(|f| {
                    f.iter()
                        .map(|f| f.json_path.trim_start_matches('.').to_owned())
                        .collect()
                })
                .unwrap_or_default(),
            // kubevirt kinds are checked by their types; their large schemas stay in the
            // store until an OpenAPI document asks for them.
            schema: storage
                .filter(|_| !spec.group.ends_with("kubevirt.io"))
                .and_then(|v| v.schema.as_ref())
                .and_then(|s| s.open_api_v3_schema.as_ref())
                .and_then(|s| serde_json::to_value(s).ok())
                .map(Arc::new),
            admission: if spec.group.ends_with("kubevirt.io") {
                Admission::Kubevirt
            } else {
                Admission::Generic
            },
            conversion: spec
                .conversion
                .as_ref()
                .filter(|c| c.strategy == "Webhook")
                .and_then(|c| c.webhook.as_ref())
                .and_then(|w| serde_json::to_value(w).ok())
                .map(Arc::new),
            builtin: false,
        }
    }

    /// A built-in kind.
    fn builtin(group: &str, kind: &str, plural: &str, namespaced: bool) -> Self {
        Self {
            group: group.to_owned(),
            versions: vec!["v1".to_owned()],
            kind: kind.to_owned(),
            plural: plural.to_owned(),
            singular: kind.to_lowercase(),
            short_names: Vec::new(),
            categories: Vec::new(),
            namespaced,
            status_subresource: false,
            scale: None,
            columns: Vec::new(),
            fields: Vec::new(),
            schema: None,
            admission: Admission::Generic,
            conversion: None,
            builtin: true,
        }
    }

    fn short(mut self, names: &[&str]) -> Self {
        self.short_names = names.iter().map(|n| (*n).to_owned()).collect();
        self
    }

    fn with_status(mut self) -> Self {
        self.status_subresource = true;
        self
    }

    fn fields(mut self, fields: &[&str]) -> Self {
        self.fields = fields.iter().map(|n| (*n).to_owned()).collect();
        self
    }

    /// Printer columns as (name, type, JSONPath, priority).
    fn columns(mut self, columns: &[(&str, &str, &str, u8)]) -> Self {
        self.columns = columns
            .iter()
            .map(|(name, ty, path, priority)| {
                json!({"name": name, "type": ty, "jsonPath": path, "priority": priority})
            })
            .collect();
        self
    }
}

const AGE: (&str, &str, &str, u8) = ("Age", "date", ".metadata.creationTimestamp", 0);

/// The built-in kinds the system needs, with the columns `kubectl get` shows for them.
pub fn builtins() -> Vec<Resource> {
    vec![
        Resource::builtin("", "Namespace", "namespaces", false)
            .short(&["ns"])
            .with_status()
            .fields(&["status.phase"])
            .columns(&[("Status", "string", ".status.phase", 0), AGE]),
        Resource::builtin("", "Pod", "pods", true)
            .short(&["po"])
            .with_status()
            .fields(&["spec.nodeName", "status.phase", "spec.serviceAccountName"])
            .columns(&[
                ("Status", "string", ".status.phase", 0),
                AGE,
                ("IP", "string", ".status.podIP", 1),
                ("Node", "string", ".spec.nodeName", 1),
            ]),
        Resource::builtin("", "Node", "nodes", false)
            .short(&["no"])
            .with_status()
            .columns(&[
                ("Status", "string", crate::table::NODE_STATUS, 0),
                AGE,
                ("Version", "string", ".status.nodeInfo.kubeletVersion", 0),
                (
                    "Internal-IP",
                    "string",
                    ".status.addresses[?(@.type=='InternalIP')].address",
                    1,
                ),
            ]),
        Resource::builtin("", "Event", "events", true)
            .short(&["ev"])
            .fields(&[
                "involvedObject.kind",
                "involvedObject.namespace",
                "involvedObject.name",
                "involvedObject.uid",
                "involvedObject.apiVersion",
                "involvedObject.resourceVersion",
                "involvedObject.fieldPath",
                "reason",
                "reportingComponent",
                "source",
                "type",
            ])
            .columns(&[
                ("Last Seen", "date", ".lastTimestamp", 0),
                ("Type", "string", ".type", 0),
                ("Reason", "string", ".reason", 0),
                ("Object", "string", ".involvedObject.name", 0),
                ("Message", "string", ".message", 0),
            ]),
        Resource::builtin("", "ConfigMap", "configmaps", true)
            .short(&["cm"])
            .columns(&[AGE]),
        Resource::builtin("", "Secret", "secrets", true)
            .fields(&["type"])
            .columns(&[("Type", "string", ".type", 0), AGE]),
        Resource::builtin("", "Service", "services", true)
            .short(&["svc"])
            .with_status()
            .columns(&[
                ("Type", "string", ".spec.type", 0),
                ("Cluster-IP", "string", ".spec.clusterIP", 0),
                AGE,
                ("Selector", "string", ".spec.selector", 1),
            ]),
        Resource::builtin("", "ServiceAccount", "serviceaccounts", true)
            .short(&["sa"])
            .columns(&[AGE]),
        Resource::builtin("coordination.k8s.io", "Lease", "leases", true)
            .columns(&[("Holder", "string", ".spec.holderIdentity", 0), AGE]),
        Resource::builtin(
            "apiextensions.k8s.io",
            "CustomResourceDefinition",
            "customresourcedefinitions",
            false,
        )
        .short(&["crd", "crds"])
        .with_status()
        .columns(&[("Created At", "string", ".metadata.creationTimestamp", 0)]),
        Resource::builtin(
            "admissionregistration.k8s.io",
            "MutatingWebhookConfiguration",
            "mutatingwebhookconfigurations",
            false,
        )
        .columns(&[AGE]),
        Resource::builtin(
            "admissionregistration.k8s.io",
            "ValidatingWebhookConfiguration",
            "validatingwebhookconfigurations",
            false,
        )
        .columns(&[AGE]),
        Resource::builtin(crate::rbac::GROUP, "ClusterRole", "clusterroles", false).columns(&[(
            "Created At",
            "string",
            ".metadata.creationTimestamp",
            0,
        )]),
        Resource::builtin(crate::rbac::GROUP, "Role", "roles", true).columns(&[(
            "Created At",
            "string",
            ".metadata.creationTimestamp",
            0,
        )]),
        Resource::builtin(
            crate::rbac::GROUP,
            "ClusterRoleBinding",
            "clusterrolebindings",
            false,
        )
        .columns(&[("Role", "string", ".roleRef.name", 0), AGE]),
        Resource::builtin(crate::rbac::GROUP, "RoleBinding", "rolebindings", true)
            .columns(&[("Role", "string", ".roleRef.name", 0), AGE]),
        Resource::builtin("apiregistration.k8s.io", "APIService", "apiservices", false)
            .with_status()
            .columns(&[
                ("Service", "string", ".spec.service.name", 0),
                (
                    "Available",
                    "string",
                    ".status.conditions[?(@.type=='Available')].status",
                    0,
                ),
                AGE,
            ]),
    ]
}

/// A stored CRD, read for serving. The kubevirt CRDs' schemas are skipped: their objects
/// are checked by the api crate's types, and those schemas (hundreds of kilobytes) are
/// read from the store only when an OpenAPI document needs them.
pub fn read_crd(bytes: &[u8]) -> Result<CustomResourceDefinition, serde_json::Error> {
    #[derive(serde::Deserialize)]
    struct Head {
        spec: HeadSpec,
    }
    #[derive(serde::Deserialize)]
    struct HeadSpec {
        group: String,
    }
    #[derive(serde::Deserialize)]
    struct Skimmed {
        metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
        spec: SkimmedSpec,
    }
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct SkimmedSpec {
        group: String,
        names: k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinitionNames,
        scope: String,
        conversion: Option<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceConversion>,
        versions: Vec<SkimmedVersion>,
    }
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct SkimmedVersion {
        name: String,
        served: bool,
        storage: bool,
        deprecated: Option<bool>,
        deprecation_warning: Option<String>,
        subresources: Option<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceSubresources>,
        additional_printer_columns: Option<Vec<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceColumnDefinition>>,
        selectable_fields: Option<Vec<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::SelectableField>>,
        #[allow(dead_code)]
        schema: Option<serde::de::IgnoredAny>,
    }
    let head: Head = serde_json::from_slice(bytes)?;
    if !head.spec.group.ends_with("kubevirt.io") {
        return serde_json::from_slice(bytes);
    }
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1 as ext;
    let s: Skimmed = serde_json::from_slice(bytes)?;
    Ok(CustomResourceDefinition {
        metadata: s.metadata,
        spec: ext::CustomResourceDefinitionSpec {
            group: s.spec.group,
            names: s.spec.names,
            scope: s.spec.scope,
            conversion: s.spec.conversion,
            preserve_unknown_fields: None,
            versions: s
                .spec
                .versions
                .into_iter()
                .map(|v| ext::CustomResourceDefinitionVersion {
                    name: v.name,
                    served: v.served,
                    storage: v.storage,
                    deprecated: v.deprecated,
                    deprecation_warning: v.deprecation_warning,
                    subresources: v.subresources,
                    additional_printer_columns: v.additional_printer_columns,
                    selectable_fields: v.selectable_fields,
                    schema: None,
                })
                .collect(),
        },
        status: None,
    })
}

/// Every served resource: the built-in kinds, and one resource per established CRD. The
/// CRD part changes while the server runs; readers get cheap shared snapshots.
#[derive(Debug, Default)]
pub struct Registry {
    resources: RwLock<Arc<Vec<Arc<Resource>>>>,
}

impl Registry {
    /// The built-in kinds plus `crds`.
    pub fn new(crds: &[CustomResourceDefinition]) -> Self {
        let r = Self::default();
        r.set_crds(crds);
        r
    }

    /// The built-in kinds plus the kubevirt.io and instancetype.kubevirt.io resources from
    /// the api crate.
    pub fn kubevirt() -> Self {
        Self::new(&api::crd::installed())
    }

    /// Serves `crds` (their served versions) beside the built-in kinds, and nothing else.
    pub fn set_crds(&self, crds: &[CustomResourceDefinition]) {
        let mut resources: Vec<Arc<Resource>> = builtins().into_iter().map(Arc::new).collect();
        for crd in crds {
            let r = Resource::from_crd(crd);
            if !r.versions.is_empty() {
                resources.push(Arc::new(r));
            }
        }
        *self.resources.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(resources);
    }

    /// A snapshot of every served resource.
    pub fn resources(&self) -> Arc<Vec<Arc<Resource>>> {
        self.resources
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn find(&self, group: &str, version: &str, plural: &str) -> Option<Arc<Resource>> {
        self.resources()
            .iter()
            .find(|r| {
                r.group == group && r.plural == plural && r.versions.iter().any(|v| v == version)
            })
            .cloned()
    }

    /// The resource whose objects live under `key`.
    pub fn for_key(&self, key: &str) -> Option<Arc<Resource>> {
        self.resources()
            .iter()
            .find(|r| key.starts_with(&r.key(None, None)))
            .cloned()
    }

    /// Groups with their served versions, preferred (storage) first.
    pub fn groups(&self) -> Vec<(String, Vec<String>)> {
        let mut groups: Vec<(String, Vec<String>)> = Vec::new();
        for r in self.resources().iter() {
            match groups.iter_mut().find(|(g, _)| *g == r.group) {
                Some((_, versions)) => {
                    for v in &r.versions {
                        if !versions.contains(v) {
                            versions.push(v.clone());
                        }
                    }
                }
                None => groups.push((r.group.clone(), r.versions.clone())),
            }
        }
        groups
    }
}
